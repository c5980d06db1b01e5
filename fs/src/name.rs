//! Names and paths: what a bucket, branch or snapshot may be called, how a path
//! inside a bucket is normalised, and the `BUCKET[@BRANCH[@VERSION]][:/PATH]`
//! address every frontend and the CLI share.

use crate::error::{Error, Result};

/// Longest bucket, branch or snapshot name, in bytes.
const MAX_NAME: usize = 200;
/// Longest single path component, in bytes (the POSIX `NAME_MAX` clients expect).
pub const MAX_COMPONENT: usize = 255;
/// Longest path, in bytes (the Linux `PATH_MAX`).
pub const MAX_PATH: usize = 4096;

/// The branch an address means when it names none.
pub const DEFAULT_BRANCH: &str = "main";

/// Checks a bucket name: lowercase ASCII letters, digits, `.`, `_`, `-`,
/// starting with a letter or digit. Buckets become path components in SFTP and
/// repository names in git, so the alphabet is kept narrow.
pub fn check_bucket_name(name: &str) -> Result<()> {
    let bad = |reason| {
        Err(Error::InvalidName {
            what: "bucket name",
            value: name.to_owned(),
            reason,
        })
    };
    if name.is_empty() {
        return bad("it is empty");
    }
    if name.len() > MAX_NAME {
        return bad("it is longer than 200 bytes");
    }
    if !name.as_bytes()[0].is_ascii_alphanumeric() {
        return bad("it must start with a letter or a digit");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
    {
        return bad("only a-z, 0-9, '.', '_' and '-' are allowed");
    }
    Ok(())
}

/// Checks the name of an entry (a file, directory, symlink or special
/// file) inside a tree: the one rule for every frontend, applied where a
/// name enters the tree. Not empty, not `.` or `..`, no `/` or NUL, at
/// most [`MAX_COMPONENT`] bytes. (A `&str` is UTF-8 already: frontends
/// refuse other bytes when they decode a name.)
pub fn check_entry_name(name: &str) -> Result<()> {
    let bad = |reason| {
        Err(Error::InvalidName {
            what: "file name",
            value: name.to_owned(),
            reason,
        })
    };
    match name {
        "" => bad("it is empty"),
        "." | ".." => bad("'.' and '..' name directories already"),
        n if n.len() > MAX_COMPONENT => bad("it is longer than 255 bytes"),
        n if n.contains('/') => bad("it contains '/'"),
        n if n.contains('\0') => bad("it contains a NUL byte"),
        _ => Ok(()),
    }
}

/// Longest symlink target, in bytes (Linux's `PATH_MAX`): a target is
/// returned whole in every listing, so it must stay small.
pub const MAX_SYMLINK_TARGET: usize = 4096;

/// Checks a symlink target: not empty, no NUL, at most [`MAX_SYMLINK_TARGET`] bytes.
pub fn check_symlink_target(target: &str) -> Result<()> {
    let bad = |reason| {
        Err(Error::InvalidName {
            what: "symlink target",
            value: target.chars().take(64).collect(),
            reason,
        })
    };
    match target {
        "" => bad("it is empty"),
        t if t.len() > MAX_SYMLINK_TARGET => bad("it is longer than 4096 bytes"),
        t if t.contains('\0') => bad("it contains a NUL byte"),
        _ => Ok(()),
    }
}

/// Checks a branch or snapshot name: git's ref rules, narrowed to what an
/// address can carry (no `@`, `:` or whitespace).
pub fn check_branch_name(what: &'static str, name: &str) -> Result<()> {
    let bad = |reason| {
        Err(Error::InvalidName {
            what,
            value: name.to_owned(),
            reason,
        })
    };
    if name.is_empty() {
        return bad("it is empty");
    }
    if name.len() > MAX_NAME {
        return bad("it is longer than 200 bytes");
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-/+".contains(&b)) {
        return bad("only letters, digits, '.', '_', '-', '+' and '/' are allowed");
    }
    if name.starts_with(['-', '/', '.']) || name.ends_with(['/', '.']) {
        return bad("it must not start with '-', '/' or '.', nor end with '/' or '.'");
    }
    if name.contains("..") || name.contains("//") {
        return bad("it must not contain '..' or '//'");
    }
    if name.bytes().all(|b| b.is_ascii_digit()) {
        return bad("an all-digit name would read as a version number");
    }
    Ok(())
}

/// A normalised absolute path inside a bucket: `/` or `/a/b`, no `.` or `..`
/// components, no empty components, each component at most 255 bytes.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BucketPath(String);

impl BucketPath {
    /// The bucket root.
    pub fn root() -> Self {
        BucketPath("/".to_owned())
    }

    /// Normalises `raw` lexically. A relative path is taken from the root;
    /// `..` above the root is an error, not clamped: a client that tries to leave
    /// its bucket is told so.
    pub fn parse(raw: &str) -> Result<Self> {
        let bad = |reason| {
            Err(Error::InvalidPath {
                path: raw.to_owned(),
                reason,
            })
        };
        if raw.len() > MAX_PATH {
            return bad("longer than 4096 bytes");
        }
        if raw.contains('\0') {
            return bad("contains a NUL byte");
        }
        let mut parts: Vec<&str> = Vec::new();
        for part in raw.split('/') {
            match part {
                "" | "." => {}
                ".." => {
                    if parts.pop().is_none() {
                        return bad("'..' leaves the bucket root");
                    }
                }
                p if p.len() > MAX_COMPONENT => return bad("a component is longer than 255 bytes"),
                p => parts.push(p),
            }
        }
        Ok(BucketPath(format!("/{}", parts.join("/"))))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_root(&self) -> bool {
        self.0 == "/"
    }

    /// The components, root first; empty for the root.
    pub fn components(&self) -> impl Iterator<Item = &str> {
        self.0.split('/').filter(|p| !p.is_empty())
    }

    /// The parent directory and the last component; `None` for the root.
    pub fn split_last(&self) -> Option<(BucketPath, &str)> {
        if self.is_root() {
            return None;
        }
        let idx = self.0.rfind('/').expect("a normalised path starts with '/'");
        let parent = if idx == 0 { "/" } else { &self.0[..idx] };
        Some((BucketPath(parent.to_owned()), &self.0[idx + 1..]))
    }

    /// The directory that holds this path; `None` for the root.
    pub fn parent(&self) -> Option<BucketPath> {
        self.split_last().map(|(p, _)| p)
    }

    /// The last component; `None` for the root.
    pub fn file_name(&self) -> Option<&str> {
        self.split_last().map(|(_, n)| n)
    }

    /// This path with the entry `name` appended: a name from outside
    /// (a client, a git tree) passes [`check_entry_name`] first.
    pub fn child(&self, name: &str) -> Result<BucketPath> {
        check_entry_name(name)?;
        Ok(self.join(name))
    }

    /// This path with `name` appended; `name` is one already in a tree.
    pub fn join(&self, name: &str) -> BucketPath {
        if self.is_root() {
            BucketPath(format!("/{name}"))
        } else {
            BucketPath(format!("{}/{name}", self.0))
        }
    }

    /// True if `self` is `other` or lies below it.
    pub fn starts_with(&self, other: &BucketPath) -> bool {
        other.is_root()
            || self.0 == other.0
            || (self.0.starts_with(&other.0) && self.0.as_bytes().get(other.0.len()) == Some(&b'/'))
    }
}

impl std::fmt::Display for BucketPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Which point of a branch an address reads: its live head, a version number,
/// or a named snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum At {
    Head,
    Version(u64),
    Snapshot(String),
}

/// `BUCKET[@BRANCH[@VERSION|@SNAPSHOT]][:/PATH]`, parsed and checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Address {
    pub bucket: String,
    pub branch: String,
    pub at: At,
    pub path: BucketPath,
}

impl Address {
    pub fn parse(raw: &str) -> Result<Self> {
        let (head, path) = match raw.split_once(':') {
            Some((head, path)) => {
                if !path.starts_with('/') {
                    return Err(Error::InvalidAddress {
                        addr: raw.to_owned(),
                        reason: "the path after ':' must start with '/'",
                    });
                }
                (head, BucketPath::parse(path)?)
            }
            None => (raw, BucketPath::root()),
        };
        let mut parts = head.split('@');
        let bucket = parts.next().unwrap_or_default().to_owned();
        check_bucket_name(&bucket)?;
        let branch = match parts.next() {
            Some(b) => {
                check_branch_name("branch name", b)?;
                b.to_owned()
            }
            None => DEFAULT_BRANCH.to_owned(),
        };
        let at = match parts.next() {
            None => At::Head,
            Some(v) if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) => {
                At::Version(v.parse().map_err(|_| Error::InvalidAddress {
                    addr: raw.to_owned(),
                    reason: "the version number is too large",
                })?)
            }
            Some(s) => {
                check_branch_name("snapshot name", s)?;
                At::Snapshot(s.to_owned())
            }
        };
        if parts.next().is_some() {
            return Err(Error::InvalidAddress {
                addr: raw.to_owned(),
                reason: "at most two '@' are allowed (BUCKET@BRANCH@VERSION)",
            });
        }
        Ok(Address {
            bucket,
            branch,
            at,
            path,
        })
    }
}

/// A namespace path made absolute and lexically normal: `.` and empty
/// parts dropped, `..` stopping at `/`.
pub fn normalize_namespace(raw: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for p in raw.split('/') {
        match p {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    format!("/{}", parts.join("/"))
}

impl crate::store::Store {
    /// The address a namespace path spells: `/BUCKET[@BRANCH[@VERSION]]/PATH`,
    /// the one tree of every bucket that SFTP shows. `None` for `/` (the
    /// buckets themselves). A branch name may hold `/` (git's `feature/x`):
    /// `/b@feature/x/f` names the longest existing branch the path spells,
    /// `feature/x` if there is one, else `feature`. `..` stops at `/`.
    pub fn locate(&self, raw: &str) -> Result<Option<Address>> {
        let norm = normalize_namespace(raw);
        let parts: Vec<&str> = norm.split('/').filter(|p| !p.is_empty()).collect();
        let Some((&head, rest)) = parts.split_first() else {
            return Ok(None);
        };
        if head.contains(':') {
            return Err(Error::NoSuchBucket(head.to_owned()));
        }
        let addr = Address::parse(head)?;
        let whole = |addr: Address, rest: &[&str]| -> Result<Option<Address>> {
            let path = BucketPath::parse(&format!("/{}", rest.join("/")))?;
            Ok(Some(Address { path, ..addr }))
        };
        if !head.contains('@') || rest.is_empty() {
            return whole(addr, rest);
        }
        let Ok(branches) = self.list_branches(&addr.bucket) else {
            return whole(addr, rest);
        };
        let prefix = format!("{}/", addr.branch);
        if !branches.iter().any(|b| b.name.starts_with(&prefix)) {
            return whole(addr, rest);
        }
        for k in (1..=rest.len()).rev() {
            let candidate = format!("{head}/{}", rest[..k].join("/"));
            if let Ok(a) = Address::parse(&candidate)
                && a.bucket == addr.bucket
                && branches.iter().any(|b| b.name == a.branch)
            {
                return whole(a, &rest[k..]);
            }
        }
        whole(addr, rest)
    }
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.bucket, self.branch)?;
        match &self.at {
            At::Head => {}
            At::Version(v) => write!(f, "@{v}")?,
            At::Snapshot(s) => write!(f, "@{s}")?,
        }
        if !self.path.is_root() {
            write!(f, ":{}", self.path)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_normalise_and_refuse_escapes() {
        let ok = [
            ("/", "/"),
            ("", "/"),
            ("a/b", "/a/b"),
            ("/a//b/./c/", "/a/b/c"),
            ("/a/../b", "/b"),
        ];
        for (raw, want) in ok {
            assert_eq!(BucketPath::parse(raw).expect(raw).as_str(), want, "{raw}");
        }
        for raw in ["/..", "/a/../../b", "../etc/passwd", "a\0b"] {
            assert!(BucketPath::parse(raw).is_err(), "{raw:?} must be refused");
        }
        let long = "x".repeat(256);
        assert!(BucketPath::parse(&format!("/{long}")).is_err());
    }

    #[test]
    fn split_and_join_round_trip() {
        let p = BucketPath::parse("/a/b/c").expect("valid");
        let (parent, name) = p.split_last().expect("not root");
        assert_eq!((parent.as_str(), name), ("/a/b", "c"));
        assert_eq!(parent.join(name), p);
        let top = BucketPath::parse("/a").expect("valid");
        assert_eq!(top.split_last().expect("not root").0, BucketPath::root());
        assert!(p.starts_with(&top) && !top.starts_with(&p));
        assert!(!BucketPath::parse("/ab").expect("valid").starts_with(&top));
    }

    #[test]
    fn names_are_checked() {
        for good in ["photos", "a", "my-repo.git", "x_1"] {
            check_bucket_name(good).expect(good);
        }
        for bad in ["", "Photos", "-x", "a b", "a/b", "a@b", ".hidden"] {
            assert!(check_bucket_name(bad).is_err(), "{bad:?} must be refused");
        }
        for good in ["main", "feature/x", "v1.2", "fix-3"] {
            check_branch_name("branch name", good).expect(good);
        }
        for bad in ["", "a..b", "/a", "a/", "-a", "a:b", "a@b", "123", "a b"] {
            assert!(
                check_branch_name("branch name", bad).is_err(),
                "{bad:?} must be refused"
            );
        }
    }

    #[test]
    fn entry_names_are_checked() {
        let long = "x".repeat(MAX_COMPONENT);
        for good in ["a", ".hidden", "..x", "a b", "ü", long.as_str()] {
            check_entry_name(good).expect(good);
        }
        let too_long = "x".repeat(MAX_COMPONENT + 1);
        for bad in ["", ".", "..", "a/b", "/", "x\0y", too_long.as_str()] {
            assert!(check_entry_name(bad).is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn addresses_parse() {
        let a = Address::parse("photos").expect("valid");
        assert_eq!(
            (a.bucket.as_str(), a.branch.as_str(), &a.at),
            ("photos", "main", &At::Head)
        );
        let a = Address::parse("photos@dev@42:/x/../y").expect("valid");
        assert_eq!(
            (a.branch.as_str(), &a.at, a.path.as_str()),
            ("dev", &At::Version(42), "/y")
        );
        let a = Address::parse("photos@dev@before-trip:/").expect("valid");
        assert_eq!(a.at, At::Snapshot("before-trip".into()));
        assert_eq!(a.to_string(), "photos@dev@before-trip");
        for bad in ["", "photos:x", "photos@a@b@c", "Photos", "photos:/../x", "photos@:/x"] {
            assert!(Address::parse(bad).is_err(), "{bad:?} must be refused");
        }
    }
}
