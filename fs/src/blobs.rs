//! The blob side of the store: an iroh-blobs `FsStore` under `blobs/`.
//!
//! The store is opened lazily (metadata-only commands never touch it) and is
//! held by one process at a time: its redb file allows no second opener, so a
//! process takes `blobs/alknet.lock` first and waits its turn instead of
//! failing.
//!
//! Garbage collection runs through iroh-blobs' own GC task, which is the only
//! code allowed to delete blobs. Its protect callback refuses to run unless
//! [`Blobs::collect`] asked for a run, and then protects exactly the hashes the
//! tree references. Imports hold a read guard of [`Blobs::gate`] from the first
//! byte until their tree row is committed, and a collection holds the write
//! guard, so a blob can never be swept between its import and its commit.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bao_tree::io::outboard::PreOrderOutboard;
use bao_tree::{BaoTree, BlockSize};
use iroh_blobs::api::TempTag;
use iroh_blobs::api::blobs::{AddPathOptions, AddProgressItem, BlobStatus, ImportMode};
use iroh_blobs::protocol::{ChunkRanges, ChunkRangesExt};
use iroh_blobs::store::fs::FsStore;
use iroh_blobs::store::fs::options::{InlineOptions, Options, PathOptions};
use iroh_blobs::store::{GcConfig, ProtectOutcome};
use iroh_blobs::{BlobFormat, Hash, HashAndFormat};
use n0_future::StreamExt;
use tokio::sync::{OnceCell, OwnedRwLockReadGuard, RwLock, oneshot};

use crate::error::{Error, Result};
use crate::types::BlobHash;

/// How often iroh's GC task asks whether a collection was requested. A request
/// waits at most two of these; an idle check costs one mutex lock.
const GC_POLL: Duration = Duration::from_millis(50);

pub(crate) struct Blobs {
    dir: PathBuf,
    /// Where the store keeps its data files (iroh-blobs' documented layout).
    paths: PathOptions,
    /// Blobs up to this size live inside the store's database, not in files.
    inline_limit: u64,
    store: OnceCell<Opened>,
    /// Read: an import between its first byte and its commit. Write: a GC run.
    gate: Arc<RwLock<()>>,
    /// An import failed since the last sweep of `blobs/temp/`.
    temp_dirty: std::sync::atomic::AtomicBool,
    gc: Arc<Mutex<GcState>>,
    /// Blobs sync is fetching from a peer: a read of one waits for it
    /// (up to [`ARRIVAL_WAIT`]) instead of failing at once.
    expected: Mutex<HashSet<BlobHash>>,
    /// Told each time a fetched blob is complete.
    arrived: tokio::sync::Notify,
}

/// How long a read waits for a blob still on its way from a peer.
const ARRIVAL_WAIT: Duration = Duration::from_secs(20);

struct Opened {
    store: FsStore,
    /// Held for the life of the process: the exclusive claim on `blobs/`.
    _lock: std::fs::File,
}

#[derive(Default)]
struct GcState {
    /// Hashes to protect in the next run; `Some` means a run was requested.
    request: Option<HashSet<Hash>>,
    /// Told when the requested run is about to start.
    starting: Option<oneshot::Sender<()>>,
    /// Told when the started run has finished (the callback is called again).
    running: Option<oneshot::Sender<()>>,
}

/// A blob that is in the store and protected from collection until the tree
/// row that references it is committed and this guard is dropped.
pub(crate) struct Imported {
    pub(crate) hash: BlobHash,
    pub(crate) size: u64,
    _tag: TempTag,
    _gate: OwnedRwLockReadGuard<()>,
}

impl Blobs {
    pub(crate) fn new(dir: PathBuf) -> Blobs {
        Blobs {
            paths: PathOptions::new(&dir),
            inline_limit: InlineOptions::default().max_data_inlined,
            dir,
            store: OnceCell::new(),
            gate: Arc::new(RwLock::new(())),
            temp_dirty: std::sync::atomic::AtomicBool::new(false),
            gc: Arc::new(Mutex::new(GcState::default())),
            expected: Mutex::new(HashSet::new()),
            arrived: tokio::sync::Notify::new(),
        }
    }

    async fn store(&self) -> Result<&FsStore> {
        self.open(true)
            .await?
            .ok_or_else(|| Error::Internal("the blob store was not claimed".into()))
    }

    /// The store, opened at the first call: waiting for another process that
    /// holds it if `wait`, else `None` while one does.
    async fn open(&self, wait: bool) -> Result<Option<&FsStore>> {
        if let Some(opened) = self.store.get() {
            return Ok(Some(&opened.store));
        }
        let opened = self
            .store
            .get_or_try_init(|| async {
                let dir = self.dir.clone();
                let lock = tokio::task::spawn_blocking(move || {
                    let Some(lock) = claim(&dir, wait)? else {
                        return Ok::<_, Error>(None);
                    };
                    clear_temp(&dir.join("temp"))?;
                    Ok(Some(lock))
                })
                .await
                .map_err(Error::blobs)??;
                let Some(lock) = lock else {
                    return Err(Error::Internal(HELD.into()));
                };
                let mut opts = Options::new(&self.dir);
                let gc = self.gc.clone();
                opts.gc = Some(GcConfig {
                    interval: GC_POLL,
                    add_protected: Some(Arc::new(move |live| {
                        let outcome = gc_callback(&gc, live);
                        Box::pin(async move { outcome })
                    })),
                });
                let store = FsStore::load_with_opts(self.dir.join("blobs.db"), opts)
                    .await
                    .map_err(Error::blobs)?;
                Ok::<_, Error>(Opened { store, _lock: lock })
            })
            .await;
        match opened {
            Ok(opened) => Ok(Some(&opened.store)),
            Err(Error::Internal(why)) if why == HELD => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Opens the store now if no other process holds it; whether it did.
    pub(crate) async fn try_open_now(&self) -> Result<bool> {
        Ok(self.open(false).await?.is_some())
    }

    /// Opens the store now rather than at the first use (waiting, with a
    /// message, while another process holds it).
    pub(crate) async fn open_now(&self) -> Result<()> {
        self.store().await.map(drop)
    }

    /// Copies the file at `path` into the store, hashing it as it streams.
    /// `progress(done, total)` is called now and then; the import copies the
    /// bytes, then hashes them, so `total` is twice the file size.
    pub(crate) async fn import_file(&self, path: &Path, progress: &(dyn Fn(u64, u64) + Sync)) -> Result<Imported> {
        let path = &std::path::absolute(path).map_err(|e| Error::io(path, e))?;
        let gate = self.gate.clone().read_owned().await;
        let store = self.store().await?;
        let events = store
            .blobs()
            .add_path_with_opts(AddPathOptions {
                path: path.to_owned(),
                format: BlobFormat::Raw,
                mode: ImportMode::Copy,
            })
            .stream()
            .await;
        self.swept_after(finish_import(events, gate, progress, &path.display()).await)
    }

    /// Imports the bytes arriving on `chunks`, in order, hashing as they
    /// come. An `Err` item (or a dropped sender after one) aborts the import.
    pub(crate) async fn import_stream(
        &self,
        chunks: tokio::sync::mpsc::Receiver<std::io::Result<bytes::Bytes>>,
    ) -> Result<Imported> {
        let gate = self.gate.clone().read_owned().await;
        let store = self.store().await?;
        let stream = n0_future::stream::unfold(chunks, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) });
        let events = store.blobs().add_stream(stream).await.stream().await;
        self.swept_after(finish_import(events, gate, &|_, _| {}, &"a stream").await)
    }

    /// Imports bytes already in memory (small objects: git blobs, metadata).
    pub(crate) async fn import_bytes(&self, bytes: bytes::Bytes) -> Result<Imported> {
        let gate = self.gate.clone().read_owned().await;
        let store = self.store().await?;
        let size = bytes.len() as u64;
        let events = store.blobs().add_bytes(bytes).stream().await;
        let mut imported = self.swept_after(finish_import(events, gate, &|_, _| {}, &"bytes").await)?;
        imported.size = size;
        Ok(imported)
    }

    /// Holds an existing blob for a new reference, as an import would: a temp
    /// tag and the import gate, until the referencing row is committed.
    pub(crate) async fn hold(&self, hash: &BlobHash, size: u64) -> Result<Imported> {
        let gate = self.gate.clone().read_owned().await;
        let store = self.store().await?;
        let tag = store
            .tags()
            .temp_tag(HashAndFormat::raw(Hash::from_bytes(hash.0)))
            .await
            .map_err(Error::blobs)?;
        Ok(Imported {
            hash: *hash,
            size,
            _tag: tag,
            _gate: gate,
        })
    }

    /// Makes the blob store's metadata durable. Called after imports and before
    /// the commit that references them, so a commit never points at a blob a
    /// crash could forget.
    pub(crate) async fn sync(&self) -> Result<()> {
        self.store().await?.sync_db().await.map_err(Error::blobs)
    }

    /// Reads `len` bytes at `offset` (fewer at the end of the blob), verified.
    pub(crate) async fn read_range(&self, hash: &BlobHash, offset: u64, len: u64) -> Result<Vec<u8>> {
        let cap = usize::try_from(len.min(1 << 24)).unwrap_or(1 << 24);
        let mut out = Vec::with_capacity(cap);
        let mut read = self.read_verified(hash, offset..offset.saturating_add(len)).await?;
        while let Some(bytes) = read.next().await? {
            out.extend_from_slice(&bytes);
        }
        Ok(out)
    }

    /// The bytes of `range` of the blob, in order, each checked against the
    /// blob's BLAKE3 tree first (see [`Verified`]).
    pub(crate) async fn read_verified(&self, hash: &BlobHash, range: std::ops::Range<u64>) -> Result<Verified> {
        self.arrival(hash).await?;
        if let Some(disk) = self.on_disk(hash).await? {
            let end = range.end.min(disk.size);
            let start = range.start.min(end);
            return Ok(Verified {
                hash: *hash,
                from: Source::Disk(Ahead {
                    files: Arc::new(disk),
                    scheduled: start,
                    pending: std::collections::VecDeque::new(),
                }),
                next: start,
                end,
            });
        }
        let store = self.store().await?;
        let items = store
            .blobs()
            .export_bao(Hash::from_bytes(hash.0), ChunkRanges::bytes(range.clone()))
            .stream();
        Ok(Verified {
            hash: *hash,
            from: Source::Store(Box::pin(items)),
            next: range.start,
            end: range.end,
        })
    }

    /// The data and outboard files of a complete blob large enough to have
    /// both (iroh-blobs inlines data up to 16 KiB and outboards up to 16 KiB,
    /// that is blobs up to about 4 MiB, in its database).
    async fn on_disk(&self, hash: &BlobHash) -> Result<Option<OnDisk>> {
        let size = match self.complete_size(hash).await? {
            Some(size) if size > self.inline_limit => size,
            _ => return Ok(None),
        };
        let h = Hash::from_bytes(hash.0);
        let open = |path: PathBuf| match std::fs::File::open(&path) {
            Ok(f) => Ok(Some(f)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(path, e)),
        };
        let (Some(data), Some(outboard)) = (open(self.paths.data_path(&h))?, open(self.paths.outboard_path(&h))?)
        else {
            return Ok(None);
        };
        Ok(Some(OnDisk {
            data,
            outboard: PreOrderOutboard {
                root: bao_tree::blake3::Hash::from_bytes(hash.0),
                tree: BaoTree::new(size, BlockSize::from_chunk_log(IROH_CHUNK_LOG)),
                data: outboard,
            },
            size,
        }))
    }

    /// Streams the whole blob into `out`, verified, returning the bytes written.
    pub(crate) async fn copy_to(
        &self,
        hash: &BlobHash,
        out: &mut (impl tokio::io::AsyncWrite + Unpin),
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<u64> {
        use tokio::io::AsyncWriteExt;
        let mut read = self.read_verified(hash, 0..u64::MAX).await?;
        let mut written = 0;
        while let Some(bytes) = read.next().await? {
            out.write_all(&bytes).await?;
            written += bytes.len() as u64;
            progress(written);
        }
        Ok(written)
    }

    /// Writes the blob to a file (streaming, verified).
    pub(crate) async fn export(&self, hash: &BlobHash, target: &Path) -> Result<u64> {
        use tokio::io::AsyncWriteExt;
        let mut out = tokio::fs::File::create(target)
            .await
            .map_err(|e| Error::io(target, e))?;
        let n = self.copy_to(hash, &mut out, &|_| {}).await?;
        out.flush().await.map_err(|e| Error::io(target, e))?;
        Ok(n)
    }

    /// Makes `target` a file holding the blob: a hard link to the store's own
    /// data file when it has one (a complete blob's file never changes, and
    /// GC unlinking the store's name leaves ours), else a copy.
    pub(crate) async fn link(&self, hash: &BlobHash, target: &Path) -> Result<()> {
        if matches!(self.complete_size(hash).await?, Some(size) if size > self.inline_limit) {
            let path = self.paths.data_path(&Hash::from_bytes(hash.0));
            if std::fs::hard_link(&path, target).is_ok() {
                return Ok(());
            }
        }
        self.export(hash, target).await.map(drop)
    }

    /// `Some(size)` if the blob is stored completely.
    pub(crate) async fn complete_size(&self, hash: &BlobHash) -> Result<Option<u64>> {
        let status = self
            .store()
            .await?
            .blobs()
            .status(Hash::from_bytes(hash.0))
            .await
            .map_err(Error::blobs)?;
        Ok(match status {
            BlobStatus::Complete { size } => Some(size),
            _ => None,
        })
    }

    /// Reads the whole blob and checks that its bytes hash to its name: a
    /// verified read of every byte (each group and parent up to the root,
    /// which is the name) is that check.
    pub(crate) async fn verify(&self, hash: &BlobHash) -> Result<bool> {
        match self.copy_to(hash, &mut tokio::io::sink(), &|_| {}).await {
            Ok(_) => Ok(true),
            Err(Error::Corrupt(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Every hash the blob store holds, complete or partial.
    pub(crate) async fn list(&self) -> Result<Vec<BlobHash>> {
        let store = self.store().await?;
        let mut stream = store.blobs().list().stream().await.map_err(Error::blobs)?;
        let mut out = Vec::new();
        while let Some(h) = stream.next().await {
            out.push(BlobHash(*h.map_err(Error::blobs)?.as_bytes()));
        }
        Ok(out)
    }

    /// Deletes every blob not in `live` (nor held by an import in flight).
    /// The caller holds [`Blobs::gc_guard`] from before computing `live` until
    /// this returns.
    pub(crate) async fn collect(&self, live: HashSet<BlobHash>) -> Result<()> {
        self.store().await?;
        let (start_tx, start_rx) = oneshot::channel();
        let (done_tx, done_rx) = oneshot::channel();
        {
            let mut st = self.gc.lock().unwrap_or_else(|e| e.into_inner());
            st.request = Some(live.into_iter().map(|h| Hash::from_bytes(h.0)).collect());
            st.starting = Some(start_tx);
            st.running = Some(done_tx);
        }
        let wait = async {
            start_rx.await.ok();
            done_rx.await.ok();
        };
        tokio::time::timeout(Duration::from_secs(600), wait)
            .await
            .map_err(|_| Error::Blobs("the blob store's collector did not run within 10 minutes".into()))?;
        self.store().await?.sync_db().await.map_err(Error::blobs)?;
        Ok(())
    }

    /// Blocks new imports until dropped: hold it while computing the live set
    /// and running [`Blobs::collect`].
    pub(crate) async fn gc_guard(&self) -> tokio::sync::OwnedRwLockWriteGuard<()> {
        self.gate.clone().write_owned().await
    }

    /// Passes an import's outcome on; after a failed one, sweeps the temp
    /// files it may have left (iroh-blobs leaves a stream import's temp file
    /// behind when the stream fails or the disk fills).
    fn swept_after<T>(&self, r: Result<T>) -> Result<T> {
        if r.is_err() {
            self.note_failed_import();
            self.sweep_temp();
        }
        r
    }

    /// Records that an import ended early: its temp file may be left in
    /// `blobs/temp/` until [`Blobs::sweep_temp`] finds no import in flight.
    pub(crate) fn note_failed_import(&self) {
        self.temp_dirty.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Removes what `blobs/temp/` holds after a failed import, if no import
    /// is in flight now (each holds the gate from its first byte, so nothing
    /// there is in use); otherwise leaves it for a later call (the server's
    /// GC task calls this every round; the next open clears it too).
    pub(crate) fn sweep_temp(&self) {
        use std::sync::atomic::Ordering;
        if !self.temp_dirty.load(Ordering::Relaxed) {
            return;
        }
        let Ok(_no_imports) = self.gate.clone().try_write_owned() else {
            return;
        };
        self.temp_dirty.store(false, Ordering::Relaxed);
        if let Err(e) = clear_temp(&self.dir.join("temp")) {
            tracing::warn!("sweeping the blob store's temp files: {e}");
        }
    }

    /// [`Blobs::gc_guard`] if no import is in flight right now.
    pub(crate) fn try_gc_guard(&self) -> Option<tokio::sync::OwnedRwLockWriteGuard<()>> {
        self.gate.clone().try_write_owned().ok()
    }

    /// Serves this store's blobs on iroh-blobs' protocol, asking `events`
    /// before each connection and request (the caller's access rule).
    pub(crate) async fn provider(
        &self,
        events: iroh_blobs::provider::events::EventSender,
    ) -> Result<iroh_blobs::BlobsProtocol> {
        Ok(iroh_blobs::BlobsProtocol::new(self.store().await?, Some(events)))
    }

    /// Marks blobs as on their way from a peer (see [`Blobs::arrival`]).
    pub(crate) fn expect(&self, hashes: &[BlobHash]) {
        let mut expected = self.expected.lock().unwrap_or_else(|e| e.into_inner());
        expected.extend(hashes.iter().copied());
    }

    /// Whether the store holds `hash` whole; one found whole is no longer
    /// expected from a peer.
    pub(crate) async fn is_whole(&self, hash: &BlobHash) -> Result<bool> {
        let whole = self.complete_size(hash).await?.is_some();
        if whole {
            self.expected.lock().unwrap_or_else(|e| e.into_inner()).remove(hash);
        }
        Ok(whole)
    }

    /// Waits while `hash` is on its way from a peer; an error if it does
    /// not arrive in time. Any other blob passes at once.
    async fn arrival(&self, hash: &BlobHash) -> Result<()> {
        let deadline = tokio::time::Instant::now() + ARRIVAL_WAIT;
        loop {
            let arrived = self.arrived.notified();
            if !self.expected.lock().unwrap_or_else(|e| e.into_inner()).contains(hash) {
                return Ok(());
            }
            if self.is_whole(hash).await? {
                return Ok(());
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                return Err(Error::NotArrived(hash.to_hex()));
            }
        }
    }

    /// Fetches blob `hash` from a peer over `conn` (iroh-blobs' protocol),
    /// verified as it arrives; what is here already is not fetched again,
    /// and a fetch cut off resumes where it stopped.
    pub(crate) async fn fetch(&self, conn: impl iroh_blobs::api::remote::GetStreamPair, hash: &BlobHash) -> Result<()> {
        let _gate = self.gate.clone().read_owned().await;
        self.store()
            .await?
            .remote()
            .fetch(conn, HashAndFormat::raw(Hash::from_bytes(hash.0)))
            .complete()
            .await
            .map_err(|e| Error::blobs(format!("fetching {hash}: {e}")))?;
        self.expected.lock().unwrap_or_else(|e| e.into_inner()).remove(hash);
        self.arrived.notify_waiters();
        Ok(())
    }

    /// Flushes and closes the blob store if this process opened it.
    pub(crate) async fn close(&self) -> Result<()> {
        if let Some(opened) = self.store.get() {
            opened.store.sync_db().await.map_err(Error::blobs)?;
            opened.store.shutdown().await.map_err(Error::blobs)?;
        }
        Ok(())
    }
}

/// Follows an import's progress to its end: the blob, its size (the store
/// reports it once, for certain), and `progress(done, total)` on the way
/// (copying, then hashing, so `total` is twice the size).
async fn finish_import(
    mut events: impl n0_future::Stream<Item = AddProgressItem> + Unpin,
    gate: OwnedRwLockReadGuard<()>,
    progress: &(dyn Fn(u64, u64) + Sync),
    what: &(dyn std::fmt::Display + Sync),
) -> Result<Imported> {
    let fail = |e: &dyn std::fmt::Display| Error::blobs(format!("importing {what}: {e}"));
    let mut size = 0;
    let mut tag = None;
    while let Some(event) = events.next().await {
        match event {
            AddProgressItem::Size(s) => size = s,
            AddProgressItem::CopyProgress(n) => progress(n, 2 * size),
            AddProgressItem::CopyDone => progress(size, 2 * size),
            AddProgressItem::OutboardProgress(n) => progress(size + n, 2 * size),
            AddProgressItem::Done(t) => tag = Some(t),
            AddProgressItem::Error(e) => return Err(fail(&e)),
        }
    }
    let tag: TempTag = tag.ok_or_else(|| fail(&"the import ended without a result"))?;
    Ok(Imported {
        hash: BlobHash(*tag.hash().as_bytes()),
        size,
        _tag: tag,
        _gate: gate,
    })
}

/// Reads up to `len` bytes at `offset` (fewer at the end of the file).
pub fn read_at(file: &std::fs::File, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; len];
    let mut done = 0;
    while done < len {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(done);
    Ok(buf)
}

/// The protect callback: runs before every GC pass of iroh-blobs.
fn gc_callback(gc: &Mutex<GcState>, live: &mut HashSet<Hash>) -> ProtectOutcome {
    let mut st = gc.lock().unwrap_or_else(|e| e.into_inner());
    // Being called again means the previous pass (if ours) has finished.
    if st.starting.is_none()
        && let Some(done) = st.running.take()
    {
        done.send(()).ok();
    }
    match st.request.take() {
        Some(request) => {
            live.extend(request);
            if let Some(start) = st.starting.take() {
                start.send(()).ok();
            }
            ProtectOutcome::Continue
        }
        None => ProtectOutcome::Abort,
    }
}

/// Removes what imports of a crashed process left in the store's temp
/// directory (iroh-blobs does not). Only the lock holder imports, so with the
/// lock held nothing in there is in use.
fn clear_temp(temp: &Path) -> Result<()> {
    let entries = match std::fs::read_dir(temp) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(temp, e)),
    };
    for entry in entries {
        let path = entry.map_err(|e| Error::io(temp, e))?.path();
        let removed = if path.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        if let Err(e) = removed {
            tracing::warn!("could not remove {}: {e}", path.display());
        }
    }
    Ok(())
}

/// Whether a process holds the blob store of the data directory `data`
/// (the one process that may, see `claim`).
pub fn blobs_held(data: &Path) -> Result<bool> {
    let path = data.join("blobs").join("alknet.lock");
    let file = match std::fs::OpenOptions::new().write(true).open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(Error::io(&path, e)),
    };
    match file.try_lock() {
        Ok(()) => Ok(false),
        Err(std::fs::TryLockError::WouldBlock) => Ok(true),
        Err(std::fs::TryLockError::Error(e)) => Err(Error::io(&path, e)),
    }
}

/// What `open` without waiting finds when another process holds the store.
const HELD: &str = "another process holds the blob store";

/// Takes the exclusive claim on the blob directory, waiting for another
/// process to release it if `wait` (else `None` while one holds it).
fn claim(dir: &Path, wait: bool) -> Result<Option<std::fs::File>> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let path = dir.join("alknet.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| Error::io(&path, e))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) if !wait => return Ok(None),
        Err(std::fs::TryLockError::WouldBlock) => {
            tracing::warn!("waiting for another alknet process that holds {}", dir.display());
            file.lock().map_err(|e| Error::io(&path, e))?;
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(Error::io(&path, e)),
    }
    Ok(Some(file))
}

/// A failed validated export as the store's error: a hash mismatch is
/// corruption; anything else a fault of the blob store.
fn encode_error(hash: &BlobHash, e: bao_tree::io::EncodeError) -> Error {
    use bao_tree::io::EncodeError;
    match e {
        EncodeError::ParentHashMismatch(_) | EncodeError::LeafHashMismatch(_) | EncodeError::SizeMismatch => {
            Error::Corrupt(hash.to_string())
        }
        e => Error::blobs(format!("reading {hash}: {e}")),
    }
}

/// iroh-blobs' chunk groups: 2^4 chunks of 1 KiB.
const IROH_CHUNK_LOG: u8 = 4;

/// Bytes a verified read of a blob on disk checks and hands on at a time.
const DISK_WINDOW: u64 = 4 << 20;

/// A blob's data file and its outboard (the BLAKE3 tree above its 16 KiB
/// groups, in pre-order), both files of the blob store.
struct OnDisk {
    data: std::fs::File,
    outboard: PreOrderOutboard<std::fs::File>,
    size: u64,
}

impl OnDisk {
    /// Reads `[offset, offset + len)` after checking every group it touches
    /// (and their parents up to the root) against the outboard: one read of
    /// the groups into memory, hashed there. Blocking.
    fn read_checked(&self, hash: &BlobHash, offset: u64, len: u64) -> Result<Vec<u8>> {
        let group = 1u64 << (IROH_CHUNK_LOG + 10);
        let start = offset - offset % group;
        let end = (offset + len).div_ceil(group).saturating_mul(group).min(self.size);
        let span = usize::try_from(end - start).map_err(|_| Error::Blobs(format!("a {len}-byte read is too large")))?;
        let window = Window {
            base: start,
            bytes: read_at(&self.data, start, span)?,
        };
        if window.bytes.len() != span {
            return Err(Error::Blobs(format!(
                "reading {hash}: the data file is shorter than the blob"
            )));
        }
        let wanted = ChunkRanges::bytes(offset..offset + len);
        let mut valid = ChunkRanges::empty();
        for r in bao_tree::io::sync::valid_ranges(&self.outboard, &window, &wanted) {
            let r = r.map_err(|e| Error::Blobs(format!("checking {hash}: {e}")))?;
            valid |= ChunkRanges::from(r);
        }
        if !valid.is_superset(&wanted) {
            return Err(Error::Corrupt(hash.to_string()));
        }
        let from = (offset - start) as usize;
        let mut bytes = window.bytes;
        bytes.truncate(from + len as usize);
        bytes.drain(..from);
        Ok(bytes)
    }
}

/// Bytes of a blob read into memory at `base`, for bao-tree to hash.
struct Window {
    base: u64,
    bytes: Vec<u8>,
}

impl positioned_io::ReadAt for Window {
    fn read_at(&self, pos: u64, buf: &mut [u8]) -> std::io::Result<usize> {
        let Some(start) = pos.checked_sub(self.base) else {
            return Err(std::io::Error::other("a read before the window"));
        };
        let start = usize::try_from(start).unwrap_or(usize::MAX).min(self.bytes.len());
        let n = buf.len().min(self.bytes.len() - start);
        buf[..n].copy_from_slice(&self.bytes[start..start + n]);
        Ok(n)
    }
}

/// Windows of a blob on disk being checked ahead of the reader.
struct Ahead {
    files: Arc<OnDisk>,
    /// Where the next window to schedule starts.
    scheduled: u64,
    /// Windows scheduled, in order: their length and their check.
    pending: std::collections::VecDeque<(u64, tokio::task::JoinHandle<Result<Vec<u8>>>)>,
}

/// Windows checked at once ahead of the reader (one per core here).
const DISK_AHEAD: usize = 2;

/// Where a verified read gets its bytes.
enum Source {
    /// A large blob: its own files, checked window by window on the blocking
    /// pool (no message to the store's actor per 16 KiB).
    Disk(Ahead),
    /// Anything else: iroh-blobs' validated bao export, which hashes each
    /// group and its parents up to the root before yielding it.
    Store(std::pin::Pin<Box<dyn n0_future::Stream<Item = iroh_blobs::api::blobs::EncodedItem> + Send>>),
}

/// A verified read of a range of one blob: every byte is checked against the
/// blob's BLAKE3 tree, whose root is the blob's name, before it is handed on.
/// A mismatch ends the read with [`Error::Corrupt`]; no byte of a group that
/// fails comes out.
pub(crate) struct Verified {
    hash: BlobHash,
    from: Source,
    /// The next byte to hand on, and the end of the range.
    next: u64,
    end: u64,
}

impl Verified {
    /// The next verified bytes, or `None` at the end of the range (or blob).
    pub(crate) async fn next(&mut self) -> Result<Option<bytes::Bytes>> {
        use iroh_blobs::api::blobs::EncodedItem;
        let items = match &mut self.from {
            Source::Disk(disk) => {
                // Keep windows checked ahead on the blocking pool, so hashing
                // runs on both cores while the caller writes.
                while disk.pending.len() < DISK_AHEAD && disk.scheduled < self.end {
                    let (files, hash, offset) = (disk.files.clone(), self.hash, disk.scheduled);
                    let len = (self.end - offset).min(DISK_WINDOW);
                    disk.scheduled += len;
                    let check = tokio::task::spawn_blocking(move || files.read_checked(&hash, offset, len));
                    disk.pending.push_back((len, check));
                }
                let Some((len, check)) = disk.pending.pop_front() else {
                    return Ok(None);
                };
                let bytes = check.await.map_err(Error::blobs)??;
                if bytes.len() as u64 != len {
                    return Err(Error::Blobs(format!(
                        "reading {}: the data file is shorter than the blob",
                        self.hash
                    )));
                }
                self.next += len;
                return Ok(Some(bytes.into()));
            }
            Source::Store(items) => items,
        };
        while let Some(item) = items.next().await {
            match item {
                EncodedItem::Leaf(leaf) => {
                    let start = leaf.offset;
                    let (from, to) = (start.max(self.next), (start + leaf.data.len() as u64).min(self.end));
                    if from >= to {
                        continue;
                    }
                    if from != self.next {
                        return Err(Error::Blobs(format!(
                            "reading {}: expected offset {}, got {from}",
                            self.hash, self.next
                        )));
                    }
                    self.next = to;
                    return Ok(Some(leaf.data.slice((from - start) as usize..(to - start) as usize)));
                }
                EncodedItem::Error(e) => return Err(encode_error(&self.hash, e)),
                EncodedItem::Size(_) | EncodedItem::Parent(_) => {}
                EncodedItem::Done => break,
            }
        }
        Ok(None)
    }
}
