//! What one write may take of the data directory's disk: a largest file
//! (`limits.max_file_size`) and a reserve of free space no write may eat
//! into (`limits.disk_reserve`). Both are checked when a file grows — at
//! `write`, `truncate` and `setstat` time, on the file's logical size, so a
//! sparse file is refused before it is ever made dense — never after the
//! bytes are made. Every frontend's writes pass through here
//! ([`crate::WriteSession`], [`crate::Tree::put_file`], git packs through
//! [`crate::Store::check_growth`]).

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, Result};

/// The node's write limits. `Store::set_limits` installs them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Limits {
    /// The largest file anyone may store; `None`: as large as the disk's
    /// free space (less the reserve) allows.
    pub max_file_size: Option<u64>,
    /// Free space on the data directory's disk that writes leave alone, so
    /// the database can always commit and the node keeps running.
    pub disk_reserve: u64,
}

/// The default reserve: 256 MiB.
pub const DEFAULT_DISK_RESERVE: u64 = 256 << 20;

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_file_size: None,
            disk_reserve: DEFAULT_DISK_RESERVE,
        }
    }
}

/// The limits in force, shared by every tree of a store. `u64::MAX`: no
/// largest file.
#[derive(Debug)]
pub(crate) struct Active {
    max_file_size: AtomicU64,
    disk_reserve: AtomicU64,
}

impl Default for Active {
    fn default() -> Active {
        let d = Limits::default();
        Active {
            max_file_size: AtomicU64::new(d.max_file_size.unwrap_or(u64::MAX)),
            disk_reserve: AtomicU64::new(d.disk_reserve),
        }
    }
}

impl Active {
    pub(crate) fn set(&self, l: Limits) {
        self.max_file_size
            .store(l.max_file_size.unwrap_or(u64::MAX), Ordering::Relaxed);
        self.disk_reserve.store(l.disk_reserve, Ordering::Relaxed);
    }

    pub(crate) fn get(&self) -> Limits {
        let max = self.max_file_size.load(Ordering::Relaxed);
        Limits {
            max_file_size: (max != u64::MAX).then_some(max),
            disk_reserve: self.disk_reserve.load(Ordering::Relaxed),
        }
    }

    /// Checks that a file at `path` may grow from `old_len` to `new_len`
    /// bytes on the disk that holds `dir`.
    pub(crate) fn check(&self, dir: &Path, path: &str, old_len: u64, new_len: u64) -> Result<()> {
        self.check_size(path, new_len)?;
        self.check_disk(dir, path, new_len.saturating_sub(old_len))
    }

    /// Checks a file's size against `max_file_size` only (no disk check).
    pub(crate) fn check_size(&self, path: &str, len: u64) -> Result<()> {
        let max = self.max_file_size.load(Ordering::Relaxed);
        if len > max {
            return Err(Error::TooLarge {
                path: path.to_owned(),
                size: len,
                limit: max,
            });
        }
        Ok(())
    }

    /// Checks that the disk holding `dir` can take `grows` more bytes and
    /// keep its reserve.
    pub(crate) fn check_disk(&self, dir: &Path, path: &str, grows: u64) -> Result<()> {
        if grows == 0 {
            return Ok(());
        }
        let reserve = self.disk_reserve.load(Ordering::Relaxed);
        let free = free_bytes(dir)?;
        if grows.saturating_add(reserve) > free {
            return Err(Error::NoSpace {
                path: path.to_owned(),
                detail: format!(
                    ": {} more needed, {} free for files (limits.disk_reserve keeps {})",
                    format_size(grows),
                    format_size(free.saturating_sub(reserve)),
                    format_size(reserve)
                ),
            });
        }
        Ok(())
    }
}

/// Bytes an unprivileged writer may still use on the disk holding `dir`.
pub(crate) fn free_bytes(dir: &Path) -> Result<u64> {
    let st = rustix::fs::statvfs(dir).map_err(|e| Error::io(dir, e.into()))?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

/// Parses a size: bytes, or a number with `K`, `M`, `G`, `T` (powers of
/// 1024, also written `KiB`, `MiB`, … or `KB`, …): `"10GiB"`, `"512M"`.
pub fn parse_size(text: &str) -> Result<u64> {
    let bad = |reason| Error::InvalidSize {
        value: text.to_owned(),
        reason,
    };
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| bad("expected a number of bytes, or one with K, M, G or T"))?;
    let shift = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        _ => return Err(bad("the unit is not one of K, M, G, T")),
    };
    n.checked_mul(1 << shift).ok_or_else(|| bad("too large"))
}

/// A size for people: `1.5 GiB`, `512 B`.
pub fn format_size(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("0").ok(), Some(0));
        assert_eq!(parse_size("512").ok(), Some(512));
        assert_eq!(parse_size("10GiB").ok(), Some(10 << 30));
        assert_eq!(parse_size("3 M").ok(), Some(3 << 20));
        assert_eq!(parse_size("1t").ok(), Some(1 << 40));
        assert!(parse_size("").is_err());
        assert!(parse_size("1.5G").is_err());
        assert!(parse_size("12X").is_err());
        assert!(parse_size("99999999999T").is_err());
        assert_eq!(format_size(1536 << 20), "1.5 GiB");
        assert_eq!(format_size(100), "100 B");
    }

    #[test]
    fn growth_is_checked_on_the_logical_size() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = Active::default();
        a.set(Limits {
            max_file_size: Some(1 << 20),
            disk_reserve: 0,
        });
        assert!(a.check(dir.path(), "/f", 0, 1 << 20).is_ok());
        assert!(matches!(
            a.check(dir.path(), "/f", 0, (1 << 20) + 1),
            Err(Error::TooLarge { .. })
        ));
        a.set(Limits {
            max_file_size: None,
            disk_reserve: 0,
        });
        // A hole of 2^62 bytes is refused though it takes no block yet.
        assert!(matches!(
            a.check(dir.path(), "/f", 0, 1 << 62),
            Err(Error::NoSpace { .. })
        ));
        assert!(
            a.check(dir.path(), "/f", 1 << 62, 1 << 62).is_ok(),
            "no growth, no check"
        );
    }
}
