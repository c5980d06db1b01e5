//! The mount over a node's endpoint: [`Remote`] (the client side of
//! [`Backend`]) and [`serve`] (the node's side, which answers with a
//! [`Local`] under the user's grant).
//!
//! The wire is a byte stream (an SSH channel, subsystem `alknet-fs`, over
//! TCP or QUIC) of frames: a 4-byte big-endian length, then a postcard
//! message. The client tags each request with an id and may have many in
//! flight; the node answers each as it finishes. The first request is
//! `Hello`, naming the tree. Metadata goes by request, every time (the
//! kernel caches it for the attribute TTL); file contents go by BLAKE3 hash
//! into the local [`Cache`], so a second read of a blob never crosses the
//! network. Writes go to a write session on the node: as locally, nothing
//! shows until close, and a mount that dies leaves the old content.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use alknet_fs::{BlobHash, BucketPath, Entry, EntryId, Space};
use fuser::Errno;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

use crate::backend::{Backend, Local, Reader, Result, Writer};
use crate::cache::Cache;

/// The SSH subsystem that carries the protocol.
pub const SUBSYSTEM: &str = "alknet-fs";

/// The largest frame either side accepts: a 1 MiB write and its header.
const MAX_FRAME: usize = (1 << 20) + 4096;
/// Bytes per read request while filling the cache.
const CHUNK: u32 = 1 << 20;
/// Read requests in flight while filling the cache.
const FILL_DEPTH: usize = 8;
/// Handles one connection may hold open on the node.
const MAX_HANDLES: usize = 4096;

#[derive(Debug, Serialize, Deserialize)]
enum Op {
    Hello {
        addr: String,
        read_only: bool,
    },
    Entry(EntryId),
    PathOf(EntryId),
    Lookup(EntryId, String),
    Stat(String),
    ReadDir(EntryId, Option<String>, u32),
    Mkdir(String, u32),
    Mknod(String, u32, u64),
    Symlink(String, String),
    Remove(String),
    Rmdir(String),
    Rename(String, String, bool),
    SetAttr(String, Option<u32>, Option<i64>),
    Truncate(String, u64),
    Create(String, u32, bool),
    OpenWrite(String, bool),
    /// A reader of the file with this id as the node has it now.
    OpenRead(EntryId),
    /// Handle, offset, length: from a reader or a writer.
    Read(u64, u64, u32),
    Write(u64, u64, Vec<u8>),
    SetLen(u64, u64),
    SetAttrOf(u64, Option<u32>, Option<i64>),
    /// Publishes a writer and ends it.
    Close(u64),
    /// Ends a handle: a reader, or a writer without publishing.
    Forget(u64),
    Space,
    /// Waits up to this many milliseconds for changed paths.
    Changes(u32),
}

#[derive(Debug, Serialize, Deserialize)]
enum Reply {
    Done,
    Hello {
        read_only: bool,
    },
    Entry(Option<Entry>),
    Entries(Vec<Entry>),
    Path(Option<String>),
    /// A writer: its handle and length.
    Writer(u64, u64),
    /// A reader: its handle and the entry it reads.
    Reader(u64, Entry),
    Bytes(Vec<u8>),
    Space(Space),
    Paths(Vec<String>),
}

/// An errno and, for the first request, a sentence for the user.
type WireResult = std::result::Result<Reply, (i32, String)>;

async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("a frame of {len} bytes (at most {MAX_FRAME})"),
        ));
    }
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf).await?;
    Ok(Some(buf))
}

fn frame<T: Serialize>(msg: &T) -> Vec<u8> {
    let mut out = vec![0u8; 4];
    // Serialising our own types into a Vec cannot fail.
    out = postcard::to_extend(msg, out).unwrap_or_default();
    let len = (out.len() - 4) as u32;
    out[..4].copy_from_slice(&len.to_be_bytes());
    out
}

/// Writes queued frames to `tx` until the queue closes, flushing once per
/// batch of frames that are ready together (fewer packets).
async fn pump(mut tx: impl AsyncWrite + Unpin, mut queue: mpsc::UnboundedReceiver<Vec<u8>>) -> std::io::Result<()> {
    while let Some(f) = queue.recv().await {
        tx.write_all(&f).await?;
        while let Ok(f) = queue.try_recv() {
            tx.write_all(&f).await?;
        }
        tx.flush().await?;
    }
    Ok(())
}

fn bad_data(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string())
}

fn path(s: &str) -> Result<BucketPath> {
    BucketPath::parse(s).map_err(|_| Errno::EINVAL)
}

// ---------------------------------------------------------------- node side

enum Open {
    Read(Box<dyn Reader>),
    Write(Box<dyn Writer>),
}

struct Session {
    backend: Local,
    /// Open handles; `None` once closed (a request racing the close finds
    /// nothing).
    handles: Mutex<HashMap<u64, Arc<Mutex<Option<Open>>>>>,
    next: AtomicU64,
    /// File content bytes sent and received.
    sent: AtomicU64,
    received: AtomicU64,
}

/// What one remote mount session did, for the node's log.
#[derive(Debug, Default)]
pub struct Summary {
    /// The tree it mounted.
    pub addr: String,
    /// File content bytes read from the node (a cached blob costs nothing).
    pub sent: u64,
    /// File content bytes written to the node.
    pub received: u64,
}

impl Session {
    fn add(&self, open: Open) -> Result<u64> {
        let mut handles = self.handles.lock().unwrap_or_else(|e| e.into_inner());
        if handles.len() >= MAX_HANDLES {
            return Err(Errno::EMFILE);
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        handles.insert(n, Arc::new(Mutex::new(Some(open))));
        Ok(n)
    }

    /// Runs `f` on an open handle.
    fn with<T>(&self, h: u64, f: impl FnOnce(&mut Open) -> Result<T>) -> Result<T> {
        let open = self
            .handles
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&h)
            .cloned()
            .ok_or(Errno::EBADF)?;
        let mut open = open.lock().unwrap_or_else(|e| e.into_inner());
        f(open.as_mut().ok_or(Errno::EBADF)?)
    }

    fn writer<T>(&self, h: u64, f: impl FnOnce(&mut dyn Writer) -> Result<T>) -> Result<T> {
        self.with(h, |open| match open {
            Open::Write(w) => f(w.as_mut()),
            Open::Read(_) => Err(Errno::EBADF),
        })
    }

    /// Ends a handle, after any request still using it.
    fn take(&self, h: u64) -> Result<Open> {
        let open = self
            .handles
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&h)
            .ok_or(Errno::EBADF)?;
        let taken = open.lock().unwrap_or_else(|e| e.into_inner()).take();
        taken.ok_or(Errno::EBADF)
    }

    fn run(&self, op: Op) -> Result<Reply> {
        let b = &self.backend;
        Ok(match op {
            Op::Hello { .. } => return Err(Errno::EPROTO),
            Op::Entry(id) => Reply::Entry(b.entry(id)?),
            Op::PathOf(id) => Reply::Path(b.path_of(id)?.map(|p| p.as_str().to_owned())),
            Op::Lookup(parent, name) => Reply::Entry(b.lookup(parent, &name)?),
            Op::Stat(p) => Reply::Entry(Some(b.stat(&path(&p)?)?)),
            Op::ReadDir(dir, after, limit) => {
                Reply::Entries(b.read_dir(dir, after.as_deref(), limit.min(10_000) as usize)?)
            }
            Op::Mkdir(p, mode) => done(b.mkdir(&path(&p)?, mode))?,
            Op::Mknod(p, mode, rdev) => done(b.mknod(&path(&p)?, mode, rdev))?,
            Op::Symlink(p, target) => done(b.symlink(&path(&p)?, &target))?,
            Op::Remove(p) => done(b.remove(&path(&p)?))?,
            Op::Rmdir(p) => done(b.rmdir(&path(&p)?))?,
            Op::Rename(from, to, replace) => done(b.rename(&path(&from)?, &path(&to)?, replace))?,
            Op::SetAttr(p, mode, mtime) => done(b.set_attr(&path(&p)?, mode, mtime))?,
            Op::Truncate(p, len) => done(b.truncate(&path(&p)?, len))?,
            Op::Create(p, mode, exclusive) => {
                let w = b.create(&path(&p)?, mode, exclusive)?;
                Reply::Writer(self.add(Open::Write(w))?, 0)
            }
            Op::OpenWrite(p, truncate) => {
                let w = b.open_write(&path(&p)?, truncate)?;
                let len = w.size();
                Reply::Writer(self.add(Open::Write(w))?, len)
            }
            Op::OpenRead(id) => {
                let e = b.entry(id)?.ok_or(Errno::ENOENT)?;
                let r = b.open_read(&e)?;
                Reply::Reader(self.add(Open::Read(r))?, e)
            }
            Op::Read(h, offset, len) => {
                let data = self.with(h, |open| match open {
                    Open::Read(r) => r.read_at(offset, len.min(CHUNK)),
                    Open::Write(w) => w.read_at(offset, len.min(CHUNK)),
                })?;
                self.sent.fetch_add(data.len() as u64, Ordering::Relaxed);
                Reply::Bytes(data)
            }
            Op::Write(h, offset, data) => {
                self.writer(h, |w| w.write_at(offset, &data))?;
                self.received.fetch_add(data.len() as u64, Ordering::Relaxed);
                Reply::Done
            }
            Op::SetLen(h, len) => done(self.writer(h, |w| w.set_len(len)))?,
            Op::SetAttrOf(h, mode, mtime) => done(self.writer(h, |w| w.set_attr(mode, mtime)))?,
            Op::Close(h) => match self.take(h)? {
                Open::Write(w) => done(w.close())?,
                Open::Read(_) => Reply::Done,
            },
            Op::Forget(h) => {
                drop(self.take(h)?);
                Reply::Done
            }
            Op::Space => Reply::Space(b.space()?),
            Op::Changes(wait_ms) => {
                let wait = Duration::from_millis(wait_ms.min(5_000).into());
                Reply::Paths(b.changes(wait)?.into_iter().map(|p| p.as_str().to_owned()).collect())
            }
        })
    }
}

fn done(r: Result<()>) -> Result<Reply> {
    r.map(|()| Reply::Done)
}

/// Serves one remote mount on `stream`. The first request names the tree;
/// `open(addr, read_only)` gives its backend under the user's grant, or
/// the sentence to refuse it with. Returns what the session did once the
/// client goes; a malformed frame ends the connection with an error, and
/// the client's open writers are dropped unpublished (their files stay as
/// they were).
pub async fn serve<S>(
    stream: S,
    open: impl FnOnce(&str, bool) -> std::result::Result<Local, String>,
) -> std::io::Result<Summary>
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut rx, mut tx) = tokio::io::split(stream);
    let Some(first) = read_frame(&mut rx).await? else {
        return Ok(Summary::default());
    };
    let (id, op): (u64, Op) = postcard::from_bytes(&first).map_err(bad_data)?;
    let Op::Hello { addr, read_only } = op else {
        return Err(bad_data("the first request was not Hello"));
    };
    let backend = match tokio::task::block_in_place(|| open(&addr, read_only)) {
        Ok(b) => b,
        Err(why) => {
            let reply: WireResult = Err((libc::EACCES, why.clone()));
            tx.write_all(&frame(&(id, reply))).await?;
            tx.flush().await?;
            return Err(std::io::Error::other(why));
        }
    };
    let hello: WireResult = Ok(Reply::Hello {
        read_only: backend.read_only(),
    });
    tx.write_all(&frame(&(id, hello))).await?;
    tx.flush().await?;

    let session = Arc::new(Session {
        backend,
        handles: Mutex::new(HashMap::new()),
        next: AtomicU64::new(1),
        sent: AtomicU64::new(0),
        received: AtomicU64::new(0),
    });
    let (out, queue) = mpsc::unbounded_channel::<Vec<u8>>();
    let writer = tokio::spawn(pump(tx, queue));
    let result = loop {
        let buf = match read_frame(&mut rx).await {
            Ok(Some(buf)) => buf,
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        };
        let (id, op): (u64, Op) = match postcard::from_bytes(&buf) {
            Ok(m) => m,
            Err(e) => break Err(bad_data(format!("an undecodable request: {e}"))),
        };
        let session = session.clone();
        let out = out.clone();
        tokio::task::spawn_blocking(move || {
            let reply: WireResult = session.run(op).map_err(|e| (e.code(), String::new()));
            out.send(frame(&(id, reply))).ok();
        });
    };
    drop(out);
    writer.await.ok();
    result.map(|()| Summary {
        addr,
        sent: session.sent.load(Ordering::Relaxed),
        received: session.received.load(Ordering::Relaxed),
    })
}

// -------------------------------------------------------------- client side

/// One connection to a node; requests multiplexed by id.
struct Conn {
    next: AtomicU64,
    pending: Mutex<HashMap<u64, oneshot::Sender<WireResult>>>,
    out: mpsc::UnboundedSender<Vec<u8>>,
    closed: AtomicBool,
    runtime: tokio::runtime::Handle,
}

impl Conn {
    async fn call(&self, op: Op) -> std::result::Result<Reply, (i32, String)> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending.lock().unwrap_or_else(|e| e.into_inner()).insert(id, tx);
        if self.closed.load(Ordering::Relaxed) || self.out.send(frame(&(id, op))).is_err() {
            self.pending.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
            return Err((libc::EIO, "the connection to the node is gone".into()));
        }
        rx.await
            .unwrap_or_else(|_| Err((libc::EIO, "the connection to the node is gone".into())))
    }

    fn call_blocking(&self, op: Op) -> Result<Reply> {
        self.runtime
            .block_on(self.call(op))
            .map_err(|(code, _)| Errno::from_i32(code))
    }

    /// A request whose answer nobody waits for.
    fn send(&self, op: Op) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.out.send(frame(&(id, op))).ok();
    }

    fn fail_all(&self) {
        self.closed.store(true, Ordering::Relaxed);
        for (_, tx) in self.pending.lock().unwrap_or_else(|e| e.into_inner()).drain() {
            tx.send(Err((libc::EIO, "the connection to the node is gone".into())))
                .ok();
        }
    }
}

/// A tree on a node, reached over a stream to its `alknet-fs` service.
pub struct Remote {
    conn: Arc<Conn>,
    cache: Arc<Cache>,
    read_only: bool,
}

fn unexpected(r: Reply) -> Errno {
    tracing::warn!("mount: the node answered {r:?} unexpectedly");
    Errno::EPROTO
}

impl Remote {
    /// Opens the tree `addr` (`bucket[@branch[@version]]`) on the node at
    /// the other end of `stream`, its contents cached in `cache`. Fails with
    /// the node's reason (no such bucket, no grant).
    pub async fn connect<S>(stream: S, addr: &str, read_only: bool, cache: Arc<Cache>) -> std::io::Result<Remote>
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (mut rx, tx) = tokio::io::split(stream);
        let (out, queue) = mpsc::unbounded_channel::<Vec<u8>>();
        let conn = Arc::new(Conn {
            next: AtomicU64::new(1),
            pending: Mutex::new(HashMap::new()),
            out,
            closed: AtomicBool::new(false),
            runtime: tokio::runtime::Handle::current(),
        });
        tokio::spawn(pump(tx, queue));
        let reader = conn.clone();
        tokio::spawn(async move {
            let end = loop {
                match read_frame(&mut rx).await {
                    Ok(Some(buf)) => match postcard::from_bytes::<(u64, WireResult)>(&buf) {
                        Ok((id, r)) => {
                            let tx = reader.pending.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
                            if let Some(tx) = tx {
                                tx.send(r).ok();
                            }
                        }
                        Err(e) => break format!("an undecodable answer: {e}"),
                    },
                    Ok(None) => break "the node closed the connection".to_owned(),
                    Err(e) => break e.to_string(),
                }
            };
            tracing::warn!("mount: {end}; every request now fails with EIO");
            reader.fail_all();
        });
        let hello = conn
            .call(Op::Hello {
                addr: addr.to_owned(),
                read_only,
            })
            .await;
        match hello {
            Ok(Reply::Hello { read_only }) => Ok(Remote { conn, cache, read_only }),
            Ok(other) => Err(std::io::Error::other(format!("unexpected answer {other:?}"))),
            Err((_, why)) => Err(std::io::Error::other(why)),
        }
    }

    fn call(&self, op: Op) -> Result<Reply> {
        self.conn.call_blocking(op)
    }

    fn done(&self, op: Op) -> Result<()> {
        match self.call(op)? {
            Reply::Done => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    fn writer(&self, op: Op) -> Result<Box<dyn Writer>> {
        match self.call(op)? {
            Reply::Writer(handle, len) => Ok(Box::new(RemoteWriter {
                conn: self.conn.clone(),
                handle,
                len,
                open: true,
            })),
            other => Err(unexpected(other)),
        }
    }
}

impl Backend for Remote {
    fn read_only(&self) -> bool {
        self.read_only
    }

    fn entry(&self, id: EntryId) -> Result<Option<Entry>> {
        match self.call(Op::Entry(id))? {
            Reply::Entry(e) => Ok(e),
            other => Err(unexpected(other)),
        }
    }

    fn path_of(&self, id: EntryId) -> Result<Option<BucketPath>> {
        match self.call(Op::PathOf(id))? {
            Reply::Path(p) => p.map(|p| path(&p)).transpose(),
            other => Err(unexpected(other)),
        }
    }

    fn lookup(&self, parent: EntryId, name: &str) -> Result<Option<Entry>> {
        match self.call(Op::Lookup(parent, name.to_owned()))? {
            Reply::Entry(e) => Ok(e),
            other => Err(unexpected(other)),
        }
    }

    fn stat(&self, path: &BucketPath) -> Result<Entry> {
        match self.call(Op::Stat(path.as_str().to_owned()))? {
            Reply::Entry(Some(e)) => Ok(e),
            other => Err(unexpected(other)),
        }
    }

    fn read_dir(&self, dir: EntryId, after: Option<&str>, limit: usize) -> Result<Vec<Entry>> {
        match self.call(Op::ReadDir(dir, after.map(str::to_owned), limit as u32))? {
            Reply::Entries(v) => Ok(v),
            other => Err(unexpected(other)),
        }
    }

    fn mkdir(&self, path: &BucketPath, mode: u32) -> Result<()> {
        self.done(Op::Mkdir(path.as_str().to_owned(), mode))
    }

    fn mknod(&self, path: &BucketPath, mode: u32, rdev: u64) -> Result<()> {
        self.done(Op::Mknod(path.as_str().to_owned(), mode, rdev))
    }

    fn symlink(&self, path: &BucketPath, target: &str) -> Result<()> {
        self.done(Op::Symlink(path.as_str().to_owned(), target.to_owned()))
    }

    fn remove(&self, path: &BucketPath) -> Result<()> {
        self.done(Op::Remove(path.as_str().to_owned()))
    }

    fn rmdir(&self, path: &BucketPath) -> Result<()> {
        self.done(Op::Rmdir(path.as_str().to_owned()))
    }

    fn rename(&self, from: &BucketPath, to: &BucketPath, replace: bool) -> Result<()> {
        self.done(Op::Rename(from.as_str().to_owned(), to.as_str().to_owned(), replace))
    }

    fn set_attr(&self, path: &BucketPath, mode: Option<u32>, mtime_ns: Option<i64>) -> Result<()> {
        self.done(Op::SetAttr(path.as_str().to_owned(), mode, mtime_ns))
    }

    fn truncate(&self, path: &BucketPath, len: u64) -> Result<()> {
        self.done(Op::Truncate(path.as_str().to_owned(), len))
    }

    fn create(&self, path: &BucketPath, mode: u32, exclusive: bool) -> Result<Box<dyn Writer>> {
        self.writer(Op::Create(path.as_str().to_owned(), mode, exclusive))
    }

    fn open_write(&self, path: &BucketPath, truncate: bool) -> Result<Box<dyn Writer>> {
        self.writer(Op::OpenWrite(path.as_str().to_owned(), truncate))
    }

    fn open_read(&self, e: &Entry) -> Result<Box<dyn Reader>> {
        // A cached blob needs no node at all.
        if let Some(file) = e.hash.as_ref().and_then(|h| self.cache.get(h)) {
            return Ok(Box::new(RemoteReader::Cached(file)));
        }
        let (handle, e) = match self.call(Op::OpenRead(e.id))? {
            Reply::Reader(handle, e) => (handle, e),
            other => return Err(unexpected(other)),
        };
        let hash = e.hash.ok_or(Errno::EIO)?;
        // The node may hold a newer content than the entry the kernel had.
        if let Some(file) = self.cache.get(&hash) {
            self.conn.send(Op::Forget(handle));
            return Ok(Box::new(RemoteReader::Cached(file)));
        }
        Ok(Box::new(RemoteReader::Node {
            conn: self.conn.clone(),
            cache: self.cache.clone(),
            handle,
            hash,
            size: e.size,
        }))
    }

    fn space(&self) -> Result<Space> {
        match self.call(Op::Space)? {
            Reply::Space(s) => Ok(s),
            other => Err(unexpected(other)),
        }
    }

    fn changes(&self, wait: Duration) -> Result<Vec<BucketPath>> {
        match self.call(Op::Changes(wait.as_millis() as u32))? {
            Reply::Paths(v) => Ok(v.iter().filter_map(|p| path(p).ok()).collect()),
            other => Err(unexpected(other)),
        }
    }
}

struct RemoteWriter {
    conn: Arc<Conn>,
    handle: u64,
    len: u64,
    /// Not yet closed: dropping it tells the node to forget the session.
    open: bool,
}

impl RemoteWriter {
    fn done(&self, op: Op) -> Result<()> {
        match self.conn.call_blocking(op)? {
            Reply::Done => Ok(()),
            other => Err(unexpected(other)),
        }
    }
}

impl Writer for RemoteWriter {
    fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        self.done(Op::Write(self.handle, offset, data.to_vec()))?;
        self.len = self.len.max(offset + data.len() as u64);
        Ok(())
    }

    fn read_at(&mut self, offset: u64, len: u32) -> Result<Vec<u8>> {
        match self.conn.call_blocking(Op::Read(self.handle, offset, len))? {
            Reply::Bytes(b) => Ok(b),
            other => Err(unexpected(other)),
        }
    }

    fn set_len(&mut self, len: u64) -> Result<()> {
        self.done(Op::SetLen(self.handle, len))?;
        self.len = len;
        Ok(())
    }

    fn size(&self) -> u64 {
        self.len
    }

    fn set_attr(&mut self, mode: Option<u32>, mtime_ns: Option<i64>) -> Result<()> {
        self.done(Op::SetAttrOf(self.handle, mode, mtime_ns))
    }

    fn close(mut self: Box<Self>) -> Result<()> {
        self.open = false;
        self.done(Op::Close(self.handle))
    }
}

impl Drop for RemoteWriter {
    fn drop(&mut self) {
        if self.open {
            self.conn.send(Op::Forget(self.handle));
        }
    }
}

enum RemoteReader {
    /// The blob is in the local cache.
    Cached(File),
    /// Not yet: a reader on the node.
    Node {
        conn: Arc<Conn>,
        cache: Arc<Cache>,
        handle: u64,
        hash: BlobHash,
        size: u64,
    },
}

impl RemoteReader {
    /// Fetches the whole blob into the cache, `FILL_DEPTH` chunks in
    /// flight, verifying it as it lands.
    fn fill(conn: &Arc<Conn>, cache: &Cache, handle: u64, hash: &BlobHash, size: u64) -> Result<File> {
        let io = |e: std::io::Error| {
            tracing::warn!("mount: caching {hash}: {e}");
            Errno::EIO
        };
        let mut fill = cache.fill(hash).map_err(io)?;
        conn.runtime.block_on(async {
            let mut inflight = VecDeque::new();
            let mut offset = 0u64;
            loop {
                while inflight.len() < FILL_DEPTH && offset < size {
                    let conn = conn.clone();
                    let at = offset;
                    inflight.push_back(tokio::spawn(
                        async move { conn.call(Op::Read(handle, at, CHUNK)).await },
                    ));
                    offset += u64::from(CHUNK);
                }
                let Some(next) = inflight.pop_front() else { break };
                match next.await {
                    Ok(Ok(Reply::Bytes(b))) => fill.push(&b).map_err(io)?,
                    Ok(Ok(other)) => return Err(unexpected(other)),
                    Ok(Err((code, _))) => return Err(Errno::from_i32(code)),
                    Err(_) => return Err(Errno::EIO),
                }
            }
            Ok(())
        })?;
        cache.insert(hash, fill).map_err(io)
    }
}

impl Reader for RemoteReader {
    fn read_at(&mut self, offset: u64, len: u32) -> Result<Vec<u8>> {
        if let RemoteReader::Node {
            conn,
            cache,
            handle,
            hash,
            size,
        } = self
        {
            if !cache.takes(*size) {
                // Too big to cache: this range only.
                return match conn.call_blocking(Op::Read(*handle, offset, len))? {
                    Reply::Bytes(b) => Ok(b),
                    other => Err(unexpected(other)),
                };
            }
            let file = Self::fill(conn, cache, *handle, hash, *size)?;
            // Dropping the node reader forgets its handle there.
            *self = RemoteReader::Cached(file);
        }
        let RemoteReader::Cached(file) = self else {
            return Err(Errno::EIO);
        };
        let mut buf = vec![0u8; len as usize];
        let mut got = 0;
        while got < buf.len() {
            match file.read_at(&mut buf[got..], offset + got as u64) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        buf.truncate(got);
        Ok(buf)
    }
}

impl Drop for RemoteReader {
    fn drop(&mut self) {
        if let RemoteReader::Node { conn, handle, .. } = self {
            conn.send(Op::Forget(*handle));
        }
    }
}
