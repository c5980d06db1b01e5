//! Git LFS objects on the store: each is a blob attached to its
//! repository's bucket as `lfs/OID` (the object's SHA-256), so GC keeps it
//! while the repository does, fsck re-hashes it like any blob, and the same
//! bytes pushed to two repositories (or also written to a bucket) are stored
//! once, by their BLAKE3 hash. An upload is hashed with SHA-256 as it
//! arrives and attached only if that hash is its oid and its size the size
//! declared; otherwise nothing is attached and GC reclaims the bytes.

use alknet_fs::{Attachment, Blob};
use bytes::Bytes;
use sha2::Digest;

use crate::Error;
use crate::repo::Forge;

/// Attachment names of LFS objects start with this.
const PREFIX: &str = "lfs/";

/// Chunks of an upload in flight to the blob store.
const DEPTH: usize = 8;

/// Whether `oid` is an LFS object id: 64 lower-case hex digits (SHA-256).
pub fn valid_oid(oid: &str) -> bool {
    oid.len() == 64 && oid.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// An upload in progress: feed it with [`LfsUpload::write`], end it with
/// [`LfsUpload::finish`]. Dropped unfinished, it keeps nothing.
pub struct LfsUpload {
    forge: Forge,
    repo: String,
    oid: String,
    sha: sha2::Sha256,
    len: u64,
    /// The repository's quota and what its packs and objects may still take.
    quota: Option<(u64, u64)>,
    tx: Option<tokio::sync::mpsc::Sender<std::io::Result<Bytes>>>,
    import: tokio::task::JoinHandle<alknet_fs::Result<Blob>>,
}

impl LfsUpload {
    /// Adds the next bytes; past the repository's quota, `max_file_size` or
    /// the disk's room, the upload is refused (and keeps nothing).
    pub async fn write(&mut self, chunk: Bytes) -> Result<(), Error> {
        let grown = self.len + chunk.len() as u64;
        if let Some((quota, left)) = self.quota
            && grown > left
        {
            return Err(alknet_fs::Error::Quota {
                path: format!("LFS object {}", self.oid),
                bucket: self.repo.clone(),
                quota,
            }
            .into());
        }
        self.forge
            .store()
            .check_growth(&format!("LFS object {}", self.oid), self.len, grown)?;
        self.sha.update(&chunk);
        self.len = grown;
        let tx = self
            .tx
            .as_ref()
            .ok_or_else(|| Error::Protocol("the upload is over".into()))?;
        if tx.send(Ok(chunk)).await.is_err() {
            // The import ended early: its error says why.
            return Err(self.failed().await);
        }
        Ok(())
    }

    async fn failed(&mut self) -> Error {
        self.tx = None;
        match (&mut self.import).await {
            Ok(Err(e)) => Error::Store(e),
            Ok(Ok(_)) => Error::Protocol("the blob store stopped reading the upload".into()),
            Err(e) => Error::Protocol(format!("the upload's import failed: {e}")),
        }
    }

    /// Keeps the object if its bytes hash to its oid and, when `size` is
    /// given, there are that many of them.
    pub async fn finish(mut self, size: Option<u64>) -> Result<Attachment, Error> {
        self.tx = None;
        let blob = (&mut self.import)
            .await
            .map_err(|e| Error::Protocol(format!("the upload's import failed: {e}")))??;
        let got = hex(&self.sha.clone().finalize());
        if got != self.oid {
            return Err(Error::Protocol(format!(
                "the uploaded bytes hash to {got}, not to {}; nothing was kept",
                self.oid
            )));
        }
        if let Some(size) = size
            && size != self.len
        {
            return Err(Error::Protocol(format!(
                "{} bytes arrived, not the {size} declared; nothing was kept",
                self.len
            )));
        }
        let store = self.forge.store().clone();
        store.sync_blobs().await?;
        let name = format!("{PREFIX}{}", self.oid);
        let (hash, size) = (blob.hash(), blob.size());
        let repo = self.repo.clone();
        let attached = name.clone();
        // SQLite off the async threads; the blob stays held until attached.
        tokio::task::spawn_blocking(move || store.attach(&repo, &attached, &blob))
            .await
            .map_err(|e| Error::Protocol(format!("attaching the object failed: {e}")))??;
        Ok(Attachment { name, hash, size })
    }
}

impl Drop for LfsUpload {
    fn drop(&mut self) {
        if let Some(tx) = self.tx.take() {
            // An upload that broke off: the import ends with an error, and
            // its bytes are left to GC.
            tx.try_send(Err(std::io::Error::other("the upload broke off"))).ok();
        }
    }
}

/// The object a Git LFS pointer file names: `(oid, size)`. A pointer is
/// `version https://git-lfs.github.com/spec/v1`, `oid sha256:OID`, `size N`,
/// one key per line, under 1024 bytes.
pub(crate) fn pointer(bytes: &[u8]) -> Option<(String, u64)> {
    if bytes.len() >= 1024 {
        return None;
    }
    let text = std::str::from_utf8(bytes).ok()?;
    let mut lines = text.lines();
    if !lines.next()?.starts_with("version https://git-lfs.github.com/spec/") {
        return None;
    }
    let (mut oid, mut size) = (None, None);
    for line in lines {
        let (key, value) = line.split_once(' ')?;
        match key {
            "oid" => {
                oid = value
                    .strip_prefix("sha256:")
                    .filter(|o| valid_oid(o))
                    .map(str::to_owned)
            }
            "size" => size = value.parse().ok(),
            _ => {}
        }
    }
    Some((oid?, size?))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Forge {
    /// The LFS object `oid` of `repo`, if the repository has it.
    pub fn lfs_object(&self, repo: &str, oid: &str) -> Result<Option<Attachment>, Error> {
        if !valid_oid(oid) {
            return Ok(None);
        }
        Ok(self.store().attachment(repo, &format!("{PREFIX}{oid}"))?)
    }

    /// The oid of the LFS object of `repo` whose bytes are blob `hash` (what
    /// a published file checked out from an LFS pointer holds), if any.
    pub fn lfs_oid_of(&self, repo: &str, hash: &alknet_fs::BlobHash) -> Result<Option<String>, Error> {
        Ok(self
            .store()
            .attachment_holding(repo, PREFIX, hash)?
            .map(|name| name.trim_start_matches(PREFIX).to_owned()))
    }

    /// What the repository's quota still lets its packs and LFS objects
    /// take; `None` without a quota.
    pub fn lfs_headroom(&self, repo: &str) -> Result<Option<u64>, Error> {
        Ok(self.store().attachment_headroom(repo)?.map(|(_, left)| left))
    }

    /// The repository's LFS objects: how many, and their bytes.
    pub fn lfs_usage(&self, repo: &str) -> Result<(u64, u64), Error> {
        let all = self.store().attachments(repo, PREFIX)?;
        Ok((all.len() as u64, all.iter().map(|a| a.size).sum()))
    }

    /// Starts an upload of object `oid` into `repo`.
    pub async fn lfs_upload(&self, repo: &str, oid: &str) -> Result<LfsUpload, Error> {
        if !valid_oid(oid) {
            return Err(Error::Protocol(format!(
                "{oid:?} is not an LFS object id (64 hex digits)"
            )));
        }
        // SQLite off the async threads.
        let (store, name) = (self.store().clone(), repo.to_owned());
        let quota = tokio::task::spawn_blocking(move || store.attachment_headroom(&name))
            .await
            .map_err(|e| Error::Protocol(format!("reading the quota failed: {e}")))??;
        let (tx, rx) = tokio::sync::mpsc::channel(DEPTH);
        let store = self.store().clone();
        let import = tokio::spawn(async move { store.import_stream(rx).await });
        Ok(LfsUpload {
            forge: self.clone(),
            repo: repo.to_owned(),
            oid: oid.to_owned(),
            sha: sha2::Sha256::new(),
            len: 0,
            quota,
            tx: Some(tx),
            import,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pointers_parse_as_the_spec_writes_them() {
        let oid = "4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393";
        let text = format!("version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize 12345\n");
        assert_eq!(pointer(text.as_bytes()), Some((oid.to_owned(), 12345)));
        assert_eq!(pointer(b"hello\n"), None);
        let short = text.replace(oid, "abc");
        assert_eq!(pointer(short.as_bytes()), None);
        assert!(valid_oid(oid));
        assert!(!valid_oid(&oid.to_uppercase()));
        assert!(!valid_oid(&oid[1..]));
    }
}
