//! What a bucket keeps beside its tree: named refs (compare-and-swap, for git
//! branches and tags) and attachments (named blobs outside the tree, for git
//! packs and LFS objects), and the published trees a push writes.
//!
//! The store gives these no meaning; the forge does. What the store promises:
//! a ref update is a compare-and-swap committed with its event, so two racing
//! updates of one ref never both win; an attached blob is protected from GC
//! for as long as the attachment exists.

use std::path::Path;

use rusqlite::{OptionalExtension, params};

use crate::blobs::Imported;
use crate::db::{notify, now_ns};
use crate::error::{Error, Result};
use crate::name::{BucketPath, check_branch_name};
use crate::store::Store;
use crate::tree::Tree;
use crate::types::{BlobHash, Entry, EntryId, Kind, Version};

/// A blob in the store, protected from collection until this is dropped;
/// reference it (an attachment, a published file) before letting go.
pub struct Blob(pub(crate) Imported);

impl Blob {
    pub fn hash(&self) -> BlobHash {
        self.0.hash
    }

    pub fn size(&self) -> u64 {
        self.0.size
    }
}

/// One compare-and-swap of a ref: from `old` (`None`: must not exist) to
/// `new` (`None`: delete).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefUpdate {
    pub name: String,
    pub old: Option<String>,
    pub new: Option<String>,
}

/// A named blob kept by a bucket outside its tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attachment {
    pub name: String,
    pub hash: BlobHash,
    pub size: u64,
}

/// One change to a published tree (see [`Tree::apply`]).
pub enum Edit<'a> {
    /// Removes whatever is at the path, with everything under it.
    Remove(BucketPath),
    /// A file with this content and mode (parents are created).
    File {
        path: BucketPath,
        blob: &'a Blob,
        mode: u32,
    },
    Symlink {
        path: BucketPath,
        target: String,
    },
}

impl Store {
    /// The bucket's refs, by name.
    pub fn refs(&self, bucket: &str) -> Result<Vec<(String, String)>> {
        self.inner.db.read(|c| {
            let id = Self::bucket_id(c, bucket)?;
            let mut stmt = c.prepare_cached("SELECT name, value FROM refs WHERE bucket_id = ?1 ORDER BY name")?;
            let rows = stmt.query_map([id], |r| Ok((r.get(0)?, r.get(1)?)))?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })
    }

    /// Applies every update or none, in one transaction with one event. An
    /// update whose `old` does not match fails the whole call with
    /// [`Error::RefChanged`] naming it.
    pub fn update_refs(&self, bucket: &str, updates: &[RefUpdate]) -> Result<()> {
        self.inner.db.write(|tx| {
            let id = Self::bucket_id(tx, bucket)?;
            for u in updates {
                let current: Option<String> = tx
                    .query_row(
                        "SELECT value FROM refs WHERE bucket_id = ?1 AND name = ?2",
                        params![id, u.name],
                        |r| r.get(0),
                    )
                    .optional()?;
                if current != u.old {
                    return Err(Error::RefChanged {
                        name: u.name.clone(),
                        current,
                    });
                }
                match &u.new {
                    Some(v) => tx.execute(
                        "INSERT INTO refs (bucket_id, name, value) VALUES (?1, ?2, ?3)
                         ON CONFLICT (bucket_id, name) DO UPDATE SET value = excluded.value",
                        params![id, u.name, v],
                    )?,
                    None => tx.execute(
                        "DELETE FROM refs WHERE bucket_id = ?1 AND name = ?2",
                        params![id, u.name],
                    )?,
                };
            }
            let refs: Vec<_> = updates
                .iter()
                .map(|u| serde_json::json!({"name": u.name, "old": u.old, "new": u.new}))
                .collect();
            notify(tx, &serde_json::json!({"op": "refs", "bucket": bucket, "refs": refs}))
        })
    }

    /// Imports bytes held in memory.
    pub async fn import_bytes(&self, bytes: impl Into<bytes::Bytes>) -> Result<Blob> {
        Ok(Blob(self.inner.blobs.import_bytes(bytes.into()).await?))
    }

    /// Imports the chunks arriving on `chunks`, hashing as they come (bounded
    /// memory: the channel's capacity). An `Err` item aborts the import.
    pub async fn import_stream(
        &self,
        chunks: tokio::sync::mpsc::Receiver<std::io::Result<bytes::Bytes>>,
    ) -> Result<Blob> {
        Ok(Blob(self.inner.blobs.import_stream(chunks).await?))
    }

    /// Makes the blob store's state durable: call after imports and before
    /// the commit that references them.
    pub async fn sync_blobs(&self) -> Result<()> {
        self.inner.blobs.sync().await
    }

    /// Imports a local file (copying it), hashing as it streams.
    pub async fn import_file(&self, path: &Path) -> Result<Blob> {
        let blob = self.inner.blobs.import_file(path, &|_, _| {}).await?;
        self.inner.blobs.sync().await?;
        Ok(Blob(blob))
    }

    /// Attaches `blob` to the bucket as `name` (replacing an attachment of
    /// that name). From now on GC keeps it.
    pub fn attach(&self, bucket: &str, name: &str, blob: &Blob) -> Result<()> {
        self.inner.db.write(|tx| {
            let id = Self::bucket_id(tx, bucket)?;
            tx.execute(
                "INSERT INTO attachments (bucket_id, name, hash, size) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (bucket_id, name) DO UPDATE SET hash = excluded.hash, size = excluded.size",
                params![id, name, blob.hash().0.to_vec(), blob.size() as i64],
            )?;
            Ok(())
        })
    }

    /// The bucket's attachments whose names start with `prefix`, by name.
    pub fn attachments(&self, bucket: &str, prefix: &str) -> Result<Vec<Attachment>> {
        self.inner.db.read(|c| {
            let id = Self::bucket_id(c, bucket)?;
            let mut stmt = c.prepare_cached(
                "SELECT name, hash, size FROM attachments
                 WHERE bucket_id = ?1 AND substr(name, 1, length(?2)) = ?2 ORDER BY name",
            )?;
            let rows = stmt.query_map(params![id, prefix], |r| {
                let hash: Vec<u8> = r.get(1)?;
                Ok((r.get(0)?, hash, r.get::<_, i64>(2)?))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (name, hash, size) = row?;
                let hash =
                    <[u8; 32]>::try_from(hash).map_err(|_| Error::Internal("a stored hash is not 32 bytes".into()))?;
                out.push(Attachment {
                    name,
                    hash: BlobHash(hash),
                    size: size as u64,
                });
            }
            Ok(out)
        })
    }

    /// Holds the stored blob `hash` (`size` bytes) for a new reference, as an
    /// import would hand it over: for content that is already here.
    pub async fn hold_blob(&self, hash: &BlobHash, size: u64) -> Result<Blob> {
        Ok(Blob(self.inner.blobs.hold(hash, size).await?))
    }

    /// The name of an attachment of the bucket that starts with `prefix` and
    /// holds blob `hash`, if one does (a scan of the bucket's attachments).
    pub fn attachment_holding(&self, bucket: &str, prefix: &str, hash: &BlobHash) -> Result<Option<String>> {
        self.inner.db.read(|c| {
            let id = Self::bucket_id(c, bucket)?;
            Ok(c.prepare_cached(
                "SELECT name FROM attachments
                 WHERE bucket_id = ?1 AND hash = ?2 AND substr(name, 1, length(?3)) = ?3 LIMIT 1",
            )?
            .query_row(params![id, hash.0.to_vec(), prefix], |r| r.get(0))
            .optional()?)
        })
    }

    /// The attachment `name` of the bucket, if there is one.
    pub fn attachment(&self, bucket: &str, name: &str) -> Result<Option<Attachment>> {
        Ok(self.attachments(bucket, name)?.into_iter().find(|a| a.name == name))
    }

    /// A byte range of a stored blob (an attachment's), read front to back
    /// and verified as it goes, as [`Tree::read_stream`] reads a file.
    pub async fn read_blob(&self, hash: &BlobHash, range: std::ops::Range<u64>) -> Result<crate::ReadStream> {
        self.inner.read_stream(hash, range).await
    }

    /// Makes `target` a file with the blob's bytes: a hard link to the blob
    /// store's file where it has one, else a copy.
    pub async fn link_blob(&self, hash: &BlobHash, target: &Path) -> Result<()> {
        self.inner.blobs.link(hash, target).await
    }

    /// A writable handle on `bucket@branch` even where frontends only read
    /// (the branches of a repository), creating the branch empty if needed.
    pub fn publish_tree(&self, bucket: &str, branch: &str) -> Result<Tree> {
        check_branch_name("branch name", branch)?;
        let exists = self.inner.db.read(|c| {
            let id = Self::bucket_id(c, bucket)?;
            Ok(c.query_row(
                "SELECT EXISTS (SELECT 1 FROM branches WHERE bucket_id = ?1 AND name = ?2)",
                params![id, branch],
                |r| r.get::<_, bool>(0),
            )?)
        })?;
        if !exists {
            self.create_empty_branch(bucket, branch)?;
        }
        let mut tree = self.tree(bucket, branch, &crate::At::Head)?;
        tree.published = false;
        Ok(tree)
    }
}

impl Tree {
    /// Applies `edits` in order as one commit.
    pub fn apply(&self, edits: &[Edit<'_>]) -> Result<Version> {
        let root = BucketPath::root();
        let (version, ()) = self.commit("publish", &[&root], |rows| {
            for edit in edits {
                match edit {
                    Edit::Remove(path) => {
                        if let Some(e) = self.try_resolve(rows.tx, path)? {
                            self.remove_tree_in(rows, path, &e)?;
                        }
                    }
                    Edit::File { path, blob, mode } => {
                        self.place_new(rows, path, Kind::File, Some((blob.hash(), blob.size())), None, *mode)?;
                    }
                    Edit::Symlink { path, target } => {
                        crate::name::check_symlink_target(target)?;
                        self.place_new(rows, path, Kind::Symlink, None, Some(target), 0o777)?;
                    }
                }
            }
            Ok(())
        })?;
        Ok(version)
    }

    fn try_resolve(&self, c: &rusqlite::Connection, path: &BucketPath) -> Result<Option<Entry>> {
        match self.resolve(c, path) {
            Ok(e) => Ok(Some(e)),
            Err(Error::NotFound(_)) | Err(Error::NotADirectory(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Puts a file or symlink at `path`, replacing a file or symlink there
    /// (keeping its entry id) and creating parent directories.
    pub(crate) fn place_new(
        &self,
        rows: &crate::mutate::Rows<'_>,
        path: &BucketPath,
        kind: Kind,
        content: Option<(BlobHash, u64)>,
        target: Option<&str>,
        mode: u32,
    ) -> Result<()> {
        let (parent_path, name) = path.split_last().ok_or_else(|| Error::Exists("/".into()))?;
        let parent = self.mkdir_all_in(rows, &parent_path)?;
        let existing = self.lookup(rows.tx, parent.id, name)?;
        if let Some(e) = &existing
            && e.is_dir()
        {
            self.remove_tree_in(rows, path, e)?;
        }
        let keep = existing.filter(|e| !e.is_dir());
        if keep.is_none() {
            rows.touch(self, parent.id)?;
        }
        rows.put(&mut Entry {
            id: keep.map(|e| e.id).unwrap_or_else(EntryId::random),
            parent: parent.id,
            name: name.to_owned(),
            kind,
            hash: content.map(|c| c.0),
            size: content
                .map(|c| c.1)
                .unwrap_or_else(|| target.map(|t| t.len() as u64).unwrap_or(0)),
            mode: if kind == Kind::File { mode } else { 0o777 },
            mtime_ns: now_ns(),
            ctime_ns: now_ns(),
            target: target.map(str::to_owned),
            version: rows.version(),
        })
    }
}
