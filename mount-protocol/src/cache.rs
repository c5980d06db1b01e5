//! The content cache of a remote mount: whole blobs by BLAKE3 hash.
//!
//! A hash never changes meaning, so a cached blob never goes stale; bytes
//! enter only after they hash to their name. The cache keeps at most
//! `limit` bytes, dropping the least recently used blobs first (an open
//! reader keeps its file until it closes). Blobs larger than a quarter of
//! the limit are not cached: they are read by range from the node.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use alknet_fs::BlobHash;

pub struct Cache {
    dir: PathBuf,
    limit: u64,
    state: Mutex<State>,
    /// Names fills apart (two readers may fetch one blob at once).
    fills: std::sync::atomic::AtomicU64,
}

#[derive(Default)]
struct State {
    /// Size and last use (a counter) of each cached blob.
    blobs: HashMap<BlobHash, (u64, u64)>,
    total: u64,
    clock: u64,
}

impl Cache {
    /// The cache in `dir` (created if missing), keeping what an earlier
    /// mount left there, up to `limit` bytes.
    pub fn open(dir: &Path, limit: u64) -> std::io::Result<Cache> {
        std::fs::create_dir_all(dir.join("tmp"))?;
        // Fills a killed mount left half done.
        for e in std::fs::read_dir(dir.join("tmp"))? {
            std::fs::remove_file(e?.path()).ok();
        }
        let mut found: Vec<(std::time::SystemTime, BlobHash, u64)> = Vec::new();
        for e in std::fs::read_dir(dir)? {
            let e = e?;
            let name = e.file_name();
            let Some(hash) = name.to_str().and_then(BlobHash::from_hex) else {
                continue;
            };
            let meta = e.metadata()?;
            found.push((meta.modified().unwrap_or(std::time::UNIX_EPOCH), hash, meta.len()));
        }
        // Oldest first, so the clock orders them as they were last used.
        found.sort();
        let cache = Cache {
            dir: dir.to_owned(),
            limit,
            state: Mutex::new(State::default()),
            fills: std::sync::atomic::AtomicU64::new(0),
        };
        {
            let mut st = cache.lock();
            for (_, hash, size) in found {
                st.clock += 1;
                let clock = st.clock;
                st.blobs.insert(hash, (size, clock));
                st.total += size;
            }
        }
        cache.evict();
        Ok(cache)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn path(&self, hash: &BlobHash) -> PathBuf {
        self.dir.join(hash.to_hex())
    }

    /// Whether a blob of `size` bytes is worth fetching whole.
    pub fn takes(&self, size: u64) -> bool {
        size <= self.limit / 4
    }

    /// The cached blob, opened for reading, if it is here.
    pub fn get(&self, hash: &BlobHash) -> Option<File> {
        let mut st = self.lock();
        if !st.blobs.contains_key(hash) {
            return None;
        }
        match File::open(self.path(hash)) {
            Ok(f) => {
                st.clock += 1;
                let clock = st.clock;
                if let Some(b) = st.blobs.get_mut(hash) {
                    b.1 = clock;
                }
                // The file's mtime carries the order over to the next mount.
                f.set_modified(std::time::SystemTime::now()).ok();
                Some(f)
            }
            Err(_) => {
                // Removed behind our back: forget it.
                if let Some((size, _)) = st.blobs.remove(hash) {
                    st.total -= size;
                }
                None
            }
        }
    }

    /// A file to fill with the blob `hash`, then hand to [`Cache::insert`].
    pub fn fill(&self, hash: &BlobHash) -> std::io::Result<Fill> {
        let n = self.fills.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = self.dir.join("tmp").join(format!("{}.{n}", hash.to_hex()));
        let file = File::create(&path)?;
        Ok(Fill {
            path,
            file,
            hasher: blake3::Hasher::new(),
            len: 0,
        })
    }

    /// Verifies a fill against its hash and keeps it; the cached file, opened
    /// for reading. A fill whose bytes hash to anything else is dropped.
    pub fn insert(&self, hash: &BlobHash, mut fill: Fill) -> std::io::Result<File> {
        fill.file.flush()?;
        let len = fill.len;
        let got = BlobHash(*fill.hasher.finalize().as_bytes());
        if got != *hash {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("blob {hash} arrived as {got}: dropped"),
            ));
        }
        std::fs::rename(&fill.path, self.path(hash))?;
        {
            let mut st = self.lock();
            st.clock += 1;
            let clock = st.clock;
            if let Some((old, _)) = st.blobs.insert(*hash, (len, clock)) {
                st.total -= old;
            }
            st.total += len;
        }
        let f = File::open(self.path(hash))?;
        self.evict();
        Ok(f)
    }

    /// Drops least recently used blobs until the cache fits its limit.
    fn evict(&self) {
        let mut st = self.lock();
        while st.total > self.limit {
            let Some((&hash, &(size, _))) = st.blobs.iter().min_by_key(|(_, (_, used))| *used) else {
                break;
            };
            std::fs::remove_file(self.path(&hash)).ok();
            st.blobs.remove(&hash);
            st.total -= size;
        }
    }

    /// Bytes held.
    pub fn used(&self) -> u64 {
        self.lock().total
    }
}

/// A blob being fetched into the cache: written in order, hashed as it goes.
pub struct Fill {
    path: PathBuf,
    file: File,
    hasher: blake3::Hasher,
    len: u64,
}

impl Fill {
    pub fn push(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.file.write_all(data)?;
        self.hasher.update(data);
        self.len += data.len() as u64;
        Ok(())
    }
}

impl Drop for Fill {
    fn drop(&mut self) {
        // Not inserted (an error on the way, a bad hash): leave nothing
        // behind. After an insert the path is gone and this does nothing.
        std::fs::remove_file(&self.path).ok();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(cache: &Cache, data: &[u8]) -> std::io::Result<File> {
        let hash = BlobHash::of(data);
        let mut fill = cache.fill(&hash)?;
        fill.push(data)?;
        cache.insert(&hash, fill)
    }

    #[test]
    fn only_bytes_that_match_their_hash_enter() {
        let dir = tempfile::tempdir().expect("temp dir");
        let cache = Cache::open(dir.path(), 1 << 20).expect("open");
        put(&cache, b"good").expect("insert");
        assert!(cache.get(&BlobHash::of(b"good")).is_some());

        let claimed = BlobHash::of(b"expected");
        let mut fill = cache.fill(&claimed).expect("fill");
        fill.push(b"something else").expect("push");
        let err = cache.insert(&claimed, fill).expect_err("a wrong hash is refused");
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
        assert!(cache.get(&claimed).is_none());
        assert_eq!(std::fs::read_dir(dir.path().join("tmp")).expect("tmp").count(), 0);
        assert_eq!(cache.used(), 4);
    }

    #[test]
    fn the_least_recently_used_blob_goes_first_and_a_reopen_keeps_the_rest() {
        let dir = tempfile::tempdir().expect("temp dir");
        let cache = Cache::open(dir.path(), 2500).expect("open");
        let (a, b, c) = (vec![1u8; 1000], vec![2u8; 1000], vec![3u8; 1000]);
        put(&cache, &a).expect("a");
        put(&cache, &b).expect("b");
        // a is used again, so b is the oldest when c arrives.
        assert!(cache.get(&BlobHash::of(&a)).is_some());
        put(&cache, &c).expect("c");
        assert!(cache.get(&BlobHash::of(&b)).is_none());
        assert!(cache.get(&BlobHash::of(&a)).is_some());
        assert!(cache.get(&BlobHash::of(&c)).is_some());
        assert_eq!(cache.used(), 2000);
        assert!(cache.takes(625) && !cache.takes(626));
        drop(cache);

        let again = Cache::open(dir.path(), 2500).expect("reopen");
        assert_eq!(again.used(), 2000);
        let mut read = String::new();
        use std::io::Read;
        again
            .get(&BlobHash::of(&c))
            .expect("c survives")
            .read_to_string(&mut read)
            .expect("read");
        assert_eq!(read.as_bytes(), &c[..]);
    }
}
