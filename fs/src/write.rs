//! Write sessions: "branch on write, merge on close".
//!
//! An open file is private staging. While every write lands at the end of
//! what was written (an upload, `cp`, a stream), the bytes go straight into
//! the blob store's import, hashed as they arrive: one pass, no copy. The
//! first write elsewhere, read-back or truncation turns the session into a
//! sparse staging file under `tmp/` (the bytes so far are copied into it),
//! which takes writes at any offset in any order. Staging files are
//! registered in `write_sessions` so a crashed process's leftovers are found
//! and removed (a streamed import leaves nothing of ours behind).
//! Nothing is visible to readers until [`WriteSession::close`] commits the new
//! entry in one transaction. Abort, drop or a crash leaves the old file
//! exactly as it was.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use bytes::Bytes;
use rusqlite::params;
use tokio::sync::mpsc;

use crate::blobs::Imported;

use crate::db::now_ms;
use crate::error::{Error, Result};
use crate::mutate::Place;
use crate::name::BucketPath;
use crate::tree::Tree;
use crate::types::{Entry, EntryId, Kind};

/// How [`Tree::open_write`] opens a file.
#[derive(Clone, Copy, Debug, Default)]
#[non_exhaustive]
pub struct OpenOptions {
    /// Create the file if it is missing (its parent must exist).
    pub create: bool,
    /// Fail if the file exists.
    pub exclusive: bool,
    /// Start from empty content instead of the current content.
    pub truncate: bool,
    /// Mode of a new file.
    pub mode: Option<u32>,
    /// Commit a new, empty file at open, as POSIX `open(O_CREAT)` does, so
    /// other requests see it before close (SFTP and FUSE clients stat what
    /// they just created). Without it a new file appears only at close.
    pub create_visible: bool,
    /// Make missing parent directories, in the commit that publishes the
    /// file (not with `create_visible`).
    pub parents: bool,
}

impl OpenOptions {
    /// Create or replace: `O_WRONLY|O_CREAT|O_TRUNC`.
    pub fn replace() -> Self {
        OpenOptions {
            create: true,
            truncate: true,
            ..Default::default()
        }
    }

    /// Modify an existing file in place: `O_RDWR`.
    pub fn modify() -> Self {
        OpenOptions::default()
    }

    pub fn create(mut self, yes: bool) -> Self {
        self.create = yes;
        self
    }

    pub fn exclusive(mut self, yes: bool) -> Self {
        self.exclusive = yes;
        self
    }

    pub fn truncate(mut self, yes: bool) -> Self {
        self.truncate = yes;
        self
    }

    pub fn mode(mut self, mode: u32) -> Self {
        self.mode = Some(mode);
        self
    }

    pub fn create_visible(mut self, yes: bool) -> Self {
        self.create_visible = yes;
        self
    }

    pub fn parents(mut self, yes: bool) -> Self {
        self.parents = yes;
        self
    }
}

/// An open file being written. See the module docs.
pub struct WriteSession {
    tree: Tree,
    /// The path given at open (for messages and for a file not yet created).
    path: BucketPath,
    /// The entry being written, once it exists: close publishes to wherever
    /// it lives then, so a rename while open is followed like an inode.
    entry: Option<EntryId>,
    /// Where the random-access staging file goes, if one is needed.
    staging: PathBuf,
    staged: Staged,
    /// The `write_sessions` row that lets a later process remove the staging
    /// file after a crash; only a session with a staging file has one.
    registration: Option<i64>,
    mode: Option<u32>,
    mtime_ns: Option<i64>,
    /// Make missing parents when the file is published.
    parents: bool,
    /// Set by close or abort; until then, drop cleans up.
    finished: bool,
    /// The first write or truncate that failed (refused by the limits, or
    /// the disk): the client's bytes did not all land, so close publishes
    /// nothing and reports this — the old content stays.
    refused: Option<Error>,
    /// The bucket's quota, read at the first growth (`Some(None)`: none).
    quota: Option<Option<u64>>,
    /// Growth this session holds against the quota until it ends.
    reserved: u64,
    /// What the file must hold when close commits (`expect`).
    expect: Option<crate::mutate::Expect>,
}

/// Chunks of a streamed write in flight to the blob store at once.
const STREAM_DEPTH: usize = 16;

enum Staged {
    /// Only appends so far: the bytes are already on their way into the store.
    Stream {
        /// `None` once the stream is ended.
        tx: Option<mpsc::Sender<std::io::Result<Bytes>>>,
        import: tokio::task::JoinHandle<Result<Imported>>,
        len: u64,
    },
    /// Random access: the sparse staging file.
    File(File),
    /// Exactly the content of an existing blob (a server-side copy), held
    /// until close; any change first turns it into a staging file.
    Blob(Imported),
    /// Its content handed to the commit.
    Closed,
}

impl Tree {
    /// Opens `path` for writing. With `truncate` unset, the session starts
    /// from the file's current content.
    pub async fn open_write(&self, path: &BucketPath, opts: OpenOptions) -> Result<WriteSession> {
        self.check_writable(path.as_str())?;
        let (parent_path, _) = path.split_last().ok_or_else(|| Error::IsADirectory("/".into()))?;
        let mut existing = self.try_stat(path)?;
        match &existing {
            Some(e) if e.kind == Kind::Dir => return Err(Error::IsADirectory(path.to_string())),
            Some(e) if e.kind != Kind::File => return Err(Error::Exists(path.to_string())),
            Some(_) if opts.exclusive => return Err(Error::Exists(path.to_string())),
            Some(_) => {}
            None if !opts.create => return Err(Error::NotFound(path.to_string())),
            None => {
                match self.try_stat(&parent_path)? {
                    Some(parent) if !parent.is_dir() => {
                        return Err(Error::NotADirectory(parent_path.to_string()));
                    }
                    Some(_) => {}
                    None if opts.parents && !opts.create_visible => {}
                    None => return Err(Error::NotFound(parent_path.to_string())),
                }
                if opts.create_visible {
                    existing = Some(self.create_empty(path, opts.mode)?);
                }
            }
        }
        let staging = self.inner.tmp.join(format!("write-{:016x}", rand::random::<u64>()));
        // A file created just above is empty: it streams like a truncation.
        let keep = existing.as_ref().filter(|e| !opts.truncate && e.size > 0);
        let (staged, registration) = match keep {
            None => (self.stream(), None),
            Some(e) => {
                let id = self.register(&staging)?;
                match self.staging_from(e, &staging).await {
                    Ok(file) => (Staged::File(file), Some(id)),
                    Err(err) => {
                        std::fs::remove_file(&staging).ok();
                        self.unregister(id);
                        return Err(err);
                    }
                }
            }
        };
        let session = WriteSession {
            tree: self.clone(),
            path: path.clone(),
            entry: existing.as_ref().map(|e| e.id),
            staging,
            staged,
            registration,
            mode: opts.mode,
            mtime_ns: None,
            parents: opts.parents,
            finished: false,
            refused: None,
            quota: None,
            reserved: 0,
            expect: None,
        };
        Ok(session)
    }

    /// Records a staging file so the next process can remove it after a crash.
    fn register(&self, staging: &std::path::Path) -> Result<i64> {
        self.inner.db.write(|tx| {
            Ok(tx.query_row(
                "INSERT INTO write_sessions (staging, pid, created_ms) VALUES (?1, ?2, ?3) RETURNING id",
                params![staging.to_string_lossy(), std::process::id(), now_ms()],
                |r| r.get(0),
            )?)
        })
    }

    fn unregister(&self, id: i64) {
        if let Err(e) = self.inner.db.write(|tx| {
            tx.execute("DELETE FROM write_sessions WHERE id = ?1", [id])?;
            Ok(())
        }) {
            tracing::warn!("could not forget write session {id}: {e}");
        }
    }

    /// A staging file holding the current content of `e`.
    async fn staging_from(&self, e: &Entry, staging: &std::path::Path) -> Result<File> {
        let hash = e
            .hash
            .ok_or_else(|| Error::Internal(format!("file {:?} has no hash", e.name)))?;
        self.inner.noted(self.inner.blobs.export(&hash, staging).await)?;
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(staging)
            .map_err(|e| Error::io(staging, e))
    }

    fn stream(&self) -> Staged {
        let (tx, rx) = mpsc::channel(STREAM_DEPTH);
        let inner = self.inner.clone();
        let import = tokio::spawn(async move { inner.blobs.import_stream(rx).await });
        Staged::Stream {
            tx: Some(tx),
            import,
            len: 0,
        }
    }

    /// Sets a file's length, keeping the bytes before it (one commit).
    pub async fn truncate(&self, path: &BucketPath, len: u64) -> Result<Entry> {
        let mut s = self.open_write(path, OpenOptions::modify()).await?;
        s.set_len(len).await?;
        s.close().await
    }

    /// Stores everything `reader` yields as `path` (created with its parents,
    /// or replaced), streaming through a staging file.
    pub async fn put_reader(
        &self,
        path: &BucketPath,
        reader: &mut (impl tokio::io::AsyncRead + Unpin),
        mode: Option<u32>,
    ) -> Result<Entry> {
        use tokio::io::AsyncReadExt;
        let mut s = self.open_write(path, OpenOptions::replace().parents(true)).await?;
        s.mode = mode;
        let mut buf = vec![0u8; 1 << 20];
        let mut offset = 0u64;
        loop {
            let n = reader.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            s.write_at(offset, &buf[..n]).await?;
            offset += n as u64;
        }
        s.close().await
    }
}

impl WriteSession {
    pub fn path(&self) -> &BucketPath {
        &self.path
    }

    /// Writes `data` at `offset`; offsets may come in any order and leave holes
    /// (holes read as zeros).
    pub async fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        let r = self.write_at_inner(offset, data).await;
        self.note(r)
    }

    async fn write_at_inner(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        let end = offset.saturating_add(data.len() as u64);
        self.check_growth(end)?;
        if let Staged::Stream { tx: Some(tx), len, .. } = &mut self.staged
            && offset == *len
        {
            if tx.send(Ok(Bytes::copy_from_slice(data))).await.is_ok() {
                *len += data.len() as u64;
                return Ok(());
            }
            // The import ended early: finishing it reports why.
            return match self.finish_stream().await {
                Ok(_) => Err(Error::Internal("the blob store ended an import early".into())),
                Err(e) => Err(e),
            };
        }
        let file = self.file().await?;
        file.write_all_at(data, offset).map_err(|e| Error::io(&self.staging, e))
    }

    /// Reads back staged bytes (a client reading its own unflushed writes).
    pub async fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let staging = self.staging.clone();
        let file = self.file().await?;
        let mut done = 0;
        while done < buf.len() {
            match file.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Error::io(&staging, e)),
            }
        }
        Ok(done)
    }

    pub async fn set_len(&mut self, new_len: u64) -> Result<()> {
        let r = self.set_len_inner(new_len).await;
        self.note(r)
    }

    async fn set_len_inner(&mut self, new_len: u64) -> Result<()> {
        self.check_growth(new_len)?;
        if self.len()? == new_len && !matches!(self.staged, Staged::File(_)) {
            return Ok(());
        }
        let file = self.file().await?;
        file.set_len(new_len).map_err(|e| Error::io(&self.staging, e))
    }

    /// Refuses growth to `new_len` past the store's limits or the bucket's
    /// quota, before any byte of it is made; holds what the quota allowed
    /// until the session ends.
    fn check_growth(&mut self, new_len: u64) -> Result<()> {
        let old_len = self.len()?;
        if new_len <= old_len {
            return Ok(());
        }
        self.tree
            .inner
            .limits
            .check(&self.tree.inner.dir, self.path.as_str(), old_len, new_len)?;
        let quota = match self.quota {
            Some(q) => q,
            None => {
                let q = self.tree.inner.db.read(|c| self.tree.quota(c))?;
                self.quota = Some(q);
                q
            }
        };
        if let Some(quota) = quota {
            let growth = new_len - old_len;
            self.tree.check_against(self.path.as_str(), growth, quota)?;
            self.tree.inner.reserved.add(self.tree.branch_id, growth);
            self.reserved += growth;
        }
        Ok(())
    }

    /// Remembers the first failed write or truncate, so close reports it.
    fn note<T>(&mut self, r: Result<T>) -> Result<T> {
        if let Err(e) = &r
            && self.refused.is_none()
        {
            self.refused = Some(
                e.refusal()
                    .unwrap_or_else(|| Error::Internal(format!("{}: an earlier write failed: {e}", self.path))),
            );
        }
        r
    }

    pub fn len(&self) -> Result<u64> {
        match &self.staged {
            Staged::Stream { len, .. } => Ok(*len),
            Staged::Blob(b) => Ok(b.size),
            Staged::Closed => Ok(0),
            Staged::File(f) => Ok(f.metadata().map_err(|e| Error::io(&self.staging, e))?.len()),
        }
    }

    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }

    /// Mode and mtime to publish at close (a `setattr` on an open file).
    pub fn set_attr(&mut self, mode: Option<u32>, mtime_ns: Option<i64>) {
        self.mode = mode.or(self.mode);
        self.mtime_ns = mtime_ns.or(self.mtime_ns);
    }

    /// Makes the staged bytes durable. The file is still unpublished; a
    /// streamed session has nothing of its own to sync until close.
    pub fn sync(&self) -> Result<()> {
        match &self.staged {
            Staged::Stream { .. } | Staged::Blob(_) | Staged::Closed => Ok(()),
            Staged::File(f) => f.sync_data().map_err(|e| Error::io(&self.staging, e)),
        }
    }

    /// Makes the file's content exactly `source`'s, without copying a byte:
    /// the new version will share the blob. Only for a session nothing was
    /// written to yet; returns `false` (and changes nothing) otherwise.
    pub async fn copy_from(&mut self, source: &Entry) -> Result<bool> {
        let (Staged::Stream { len: 0, .. }, Kind::File, Some(hash)) = (&self.staged, source.kind, source.hash) else {
            return Ok(false);
        };
        let held = self.tree.inner.blobs.hold(&hash, source.size).await?;
        if let Staged::Stream { tx, import, .. } = &mut self.staged {
            // Nothing was sent: fail the empty import so it leaves nothing behind.
            if let Some(tx) = tx.take() {
                tx.try_send(Err(std::io::Error::other("replaced by a copy"))).ok();
            }
            import.abort();
        }
        self.staged = Staged::Blob(held);
        Ok(true)
    }

    /// Ends a streamed import and returns its blob. The session holds no
    /// stream afterwards, whatever the outcome: a failed import is reported
    /// once, and the session is closed.
    async fn finish_stream(&mut self) -> Result<Imported> {
        let Staged::Stream { tx, import, .. } = std::mem::replace(&mut self.staged, Staged::Closed) else {
            return Err(Error::Internal("finish_stream on a file session".into()));
        };
        drop(tx);
        import
            .await
            .map_err(|e| Error::Blobs(format!("the import task failed: {e}")))?
    }

    /// The random-access staging file, made from the streamed bytes so far
    /// if the session was streaming.
    async fn file(&mut self) -> Result<&File> {
        if !matches!(self.staged, Staged::File(_)) {
            self.registration = Some(self.tree.register(&self.staging)?);
            let streamed = match &self.staged {
                Staged::Stream { len, .. } => Some(*len),
                _ => None,
            };
            // Held until the staging file has the bytes.
            let finished = match streamed {
                Some(_) => Some(self.finish_stream().await?),
                None => None,
            };
            let (hash, len) = match (&finished, streamed, &self.staged) {
                (Some(blob), Some(len), _) => (blob.hash, len),
                (None, _, Staged::Blob(blob)) => (blob.hash, blob.size),
                _ => return Err(Error::Internal("a closed write session was used".into())),
            };
            if len > 0 {
                let inner = &self.tree.inner;
                inner.noted(inner.blobs.export(&hash, &self.staging).await)?;
            }
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&self.staging)
                .map_err(|e| Error::io(&self.staging, e))?;
            self.staged = Staged::File(file);
        }
        match &self.staged {
            Staged::File(f) => Ok(f),
            _ => unreachable!("just made a file"),
        }
    }

    /// Publishes the staged content as one new version of the file. If the
    /// file (or, for a file created at close, its directory) was removed
    /// meanwhile, this fails with `NotFound` and nothing changes.
    pub async fn close(mut self) -> Result<Entry> {
        if let Some(refused) = self.refused.take() {
            // Wait for the import to fail and its temp file to be swept, so
            // the space is back before the client hears of the refusal.
            if let Staged::Stream { tx, import, .. } = &mut self.staged
                && let Some(tx) = tx.take()
            {
                tx.send(Err(std::io::Error::other("write session refused"))).await.ok();
                drop(tx);
                import.await.ok();
            }
            self.cleanup();
            return Err(refused);
        }
        let blob = match &self.staged {
            Staged::Stream { .. } => self.finish_stream().await?,
            Staged::File(_) => self.tree.inner.blobs.import_file(&self.staging, &|_, _| {}).await?,
            Staged::Blob(_) => match std::mem::replace(&mut self.staged, Staged::Closed) {
                Staged::Blob(blob) => blob,
                _ => unreachable!("matched just above"),
            },
            Staged::Closed => return Err(Error::Internal("a closed write session was closed again".into())),
        };
        let place = Place {
            create_parents: self.parents,
            mode: self.mode,
            mtime_ns: self.mtime_ns,
            expect: self.expect,
        };
        let result = match self.entry {
            Some(id) => self.tree.write_entry(id, blob, place).await,
            None => self.tree.write_file(&self.path, blob, place).await,
        };
        self.cleanup();
        result
    }

    /// Makes close publish only if the file then holds what `expect` says
    /// (checked in the commit's own transaction); otherwise close fails with
    /// [`Error::Changed`] and the file stays as it is.
    pub fn expect(&mut self, expect: crate::mutate::Expect) {
        self.expect = Some(expect);
    }

    /// Drops the staged content; the file stays as it was.
    pub fn abort(mut self) {
        self.cleanup();
    }

    fn cleanup(&mut self) {
        if self.finished {
            return;
        }
        self.finished = true;
        self.tree
            .inner
            .reserved
            .release(self.tree.branch_id, std::mem::take(&mut self.reserved));
        if let Staged::Stream { tx, .. } = &mut self.staged
            && let Some(tx) = tx.take()
        {
            // Fail the import so the blob store drops the partial bytes. The
            // import task runs on to its end, where it sweeps the temp file
            // the blob store leaves (a full queue just ends the stream: the
            // bytes so far become a blob no row references, for GC).
            tx.try_send(Err(std::io::Error::other("write session aborted"))).ok();
            self.tree.inner.blobs.note_failed_import();
        }
        if self.registration.is_some()
            && let Err(e) = std::fs::remove_file(&self.staging)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!("could not remove staging file {}: {e}", self.staging.display());
        }
        if let Some(id) = self.registration.take() {
            self.tree.unregister(id);
        }
    }
}

impl Drop for WriteSession {
    fn drop(&mut self) {
        self.cleanup();
    }
}
