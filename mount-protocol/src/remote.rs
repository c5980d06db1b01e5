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
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use alknet_fs::{BlobHash, Entry, EntryId, Space};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

use crate::Errno;
use crate::backend::{Backend, Local, Reader, Result, Writer};
use crate::cache::Cache;

/// The SSH subsystem that carries the protocol.
pub const SUBSYSTEM: &str = "alknet-fs";

/// The largest frame either side accepts: a 1 MiB write and its header.
const MAX_FRAME: usize = (1 << 20) + 4096;
/// Bytes per read request while filling the cache.
const CHUNK: u32 = 1 << 20;
/// Read requests in flight while filling the cache or reading in order.
const FILL_DEPTH: usize = 8;
/// How long a reconnection may take.
const DIAL_TIMEOUT: Duration = Duration::from_secs(5);
/// Handles one connection may hold open on the node.
const MAX_HANDLES: usize = 4096;
/// Requests one connection may have running on the node; the node stops
/// reading from a connection that has this many (TCP pushes back).
const MAX_IN_FLIGHT: usize = 64;
/// Requests all connections together may have running on the node.
static NODE_IN_FLIGHT: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(512);
/// Bytes of entries in one directory page on the wire (names, targets):
/// well under [`MAX_FRAME`], whatever the entries hold.
const PAGE_BYTES: usize = 512 << 10;
/// How often a long poll for changes looks again.
const CHANGES_POLL: Duration = Duration::from_millis(100);

#[derive(Debug, Serialize, Deserialize)]
enum Op {
    Hello {
        addr: String,
        read_only: bool,
    },
    Entry(EntryId),
    Lookup(EntryId, String),
    ReadDir(EntryId, Option<String>, u32),
    Mkdir(EntryId, String, u32),
    Mknod(EntryId, String, u32, u64),
    Symlink(EntryId, String, String),
    Remove(EntryId, String),
    Rmdir(EntryId, String),
    Rename(EntryId, String, EntryId, String, bool),
    SetAttr(EntryId, Option<u32>, Option<i64>),
    Truncate(EntryId, u64),
    Create(EntryId, String, u32, bool),
    OpenWrite(EntryId, bool),
    /// A reader of the file with this id as the node has it now.
    OpenRead(EntryId),
    /// Handle, offset, length: from a reader or a writer.
    Read(u64, u64, u32),
    Write(u64, u64, #[serde(with = "serde_bytes")] Vec<u8>),
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
    /// A writer: its handle and length.
    Writer(u64, u64),
    /// A created file and a writer on it.
    Created(Entry, u64),
    /// A reader: its handle and the entry it reads.
    Reader(u64, Entry),
    Bytes(#[serde(with = "serde_bytes")] Vec<u8>),
    Space(Space),
    Names(Vec<(EntryId, String)>),
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

// ---------------------------------------------------------------- node side

enum Open {
    Read(Box<dyn Reader>),
    Write(Box<dyn Writer>),
}

struct Session {
    backend: Local,
    /// Open handles.
    handles: Mutex<HashMap<u64, Slot>>,
    /// Answers, to the connection.
    out: mpsc::UnboundedSender<Vec<u8>>,
    this: std::sync::Weak<Session>,
    next: AtomicU64,
    /// File content bytes sent and received.
    sent: AtomicU64,
    received: AtomicU64,
    /// The client hung up: long polls end without an answer.
    gone: std::sync::atomic::AtomicBool,
}

/// One open handle on the node.
struct Slot {
    /// The reader or writer; `None` once closed (a request racing the
    /// close finds nothing).
    open: Arc<Mutex<Option<Open>>>,
    /// Its queue: its requests run one at a time, in the order they came,
    /// so a client may send writes without waiting. Bounded by the permits
    /// each request holds.
    lane: mpsc::UnboundedSender<(u64, Op, Permits)>,
}

/// A request's place among those running on the node, held until answered.
struct Permits {
    _connection: tokio::sync::OwnedSemaphorePermit,
    _node: tokio::sync::SemaphorePermit<'static>,
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
        // An open that finishes after the client left must not add a handle:
        // its lane would hold the session, and the session its lane, forever
        // (`serve` sets `gone` before it clears the handles under this lock).
        if self.gone.load(Ordering::Relaxed) {
            return Err(Errno::EIO);
        }
        if handles.len() >= MAX_HANDLES {
            return Err(Errno::EMFILE);
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let (lane, queue) = mpsc::unbounded_channel();
        let open = Arc::new(Mutex::new(Some(open)));
        handles.insert(n, Slot { open, lane });
        if let Some(session) = self.this.upgrade() {
            self.backend.runtime().spawn(session.lane(queue));
        }
        Ok(n)
    }

    /// Runs one request (a blocking call) and sends its answer.
    fn answer(&self, id: u64, op: Op) {
        // A panic answers EIO: the client must never wait for nothing.
        let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.run(op)));
        let reply: WireResult = run.unwrap_or(Err(Errno::EIO)).map_err(|e| (e.code(), String::new()));
        self.out.send(frame(&(id, reply))).ok();
    }

    /// Runs a handle's requests in order until the handle is gone.
    async fn lane(self: Arc<Self>, mut queue: mpsc::UnboundedReceiver<(u64, Op, Permits)>) {
        while let Some((id, op, permits)) = queue.recv().await {
            let session = self.clone();
            tokio::task::spawn_blocking(move || session.answer(id, op)).await.ok();
            drop(permits);
        }
    }

    /// Answers `Changes`: looks for changes now and again every
    /// [`CHANGES_POLL`] until there are some or `wait_ms` has passed. The
    /// waiting is async; no blocking thread is held between looks.
    async fn long_poll(self: Arc<Self>, id: u64, wait_ms: u32) {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(wait_ms.min(5_000).into());
        loop {
            let session = self.clone();
            let looked = tokio::task::spawn_blocking(move || session.backend.changes(Duration::ZERO)).await;
            let reply: WireResult = match looked {
                Ok(Ok(names)) if names.is_empty() && tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(CHANGES_POLL).await;
                    if self.gone.load(Ordering::Relaxed) {
                        return;
                    }
                    continue;
                }
                Ok(Ok(names)) => Ok(Reply::Names(names)),
                Ok(Err(e)) => Err((e.code(), String::new())),
                Err(_) => Err((libc::EIO, String::new())),
            };
            self.out.send(frame(&(id, reply))).ok();
            return;
        }
    }

    /// Passes a request on a handle to its lane; gives it back if it is on
    /// no handle, or on one that is not (or no longer) open.
    fn route(&self, id: u64, op: Op, permits: Permits) -> std::result::Result<(), (u64, Op, Permits)> {
        let h = match &op {
            Op::Read(h, ..)
            | Op::Write(h, ..)
            | Op::SetLen(h, _)
            | Op::SetAttrOf(h, ..)
            | Op::Close(h)
            | Op::Forget(h) => *h,
            _ => return Err((id, op, permits)),
        };
        let handles = self.handles.lock().unwrap_or_else(|e| e.into_inner());
        match handles.get(&h) {
            Some(slot) => slot.lane.send((id, op, permits)).map_err(|e| e.0),
            // Unknown or closed: `run` answers EBADF.
            None => Err((id, op, permits)),
        }
    }

    /// Runs `f` on an open handle.
    fn with<T>(&self, h: u64, f: impl FnOnce(&mut Open) -> Result<T>) -> Result<T> {
        let open = self
            .handles
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&h)
            .map(|slot| slot.open.clone())
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

    /// Ends a handle, after any request still using it. Requests already
    /// in its lane find nothing (EBADF), then the lane ends.
    fn take(&self, h: u64) -> Result<Open> {
        let slot = self
            .handles
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&h)
            .ok_or(Errno::EBADF)?;
        let taken = slot.open.lock().unwrap_or_else(|e| e.into_inner()).take();
        taken.ok_or(Errno::EBADF)
    }

    fn run(&self, op: Op) -> Result<Reply> {
        let b = &self.backend;
        Ok(match op {
            Op::Hello { .. } => return Err(Errno::EPROTO),
            Op::Entry(id) => Reply::Entry(b.entry(id)?),
            Op::Lookup(parent, name) => Reply::Entry(b.lookup(parent, &name)?),
            Op::ReadDir(dir, after, limit) => {
                let mut page = b.read_dir(dir, after.as_deref(), limit.min(10_000) as usize)?;
                // A page fits a frame whatever its entries hold; the client
                // asks again after the last one until a page comes back empty.
                let mut bytes = 0;
                let fit = page
                    .iter()
                    .position(|e| {
                        bytes += 128 + e.name.len() + e.target.as_ref().map_or(0, String::len);
                        bytes > PAGE_BYTES
                    })
                    .unwrap_or(page.len())
                    .max(1);
                page.truncate(fit);
                Reply::Entries(page)
            }
            Op::Mkdir(parent, name, mode) => Reply::Entry(Some(b.mkdir(parent, &name, mode)?)),
            Op::Mknod(parent, name, mode, rdev) => Reply::Entry(Some(b.mknod(parent, &name, mode, rdev)?)),
            Op::Symlink(parent, name, target) => Reply::Entry(Some(b.symlink(parent, &name, &target)?)),
            Op::Remove(parent, name) => done(b.remove(parent, &name))?,
            Op::Rmdir(parent, name) => done(b.rmdir(parent, &name))?,
            Op::Rename(parent, name, to, to_name, replace) => done(b.rename((parent, &name), (to, &to_name), replace))?,
            Op::SetAttr(id, mode, mtime) => Reply::Entry(Some(b.set_attr(id, mode, mtime)?)),
            Op::Truncate(id, len) => Reply::Entry(Some(b.truncate(id, len)?)),
            Op::Create(parent, name, mode, exclusive) => {
                let (e, w) = b.create(parent, &name, mode, exclusive)?;
                Reply::Created(e, self.add(Open::Write(w))?)
            }
            Op::OpenWrite(id, truncate) => {
                let w = b.open_write(id, truncate)?;
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
            // Long polls are answered by `long_poll`, off the blocking pool.
            Op::Changes(_) => Reply::Names(b.changes(Duration::ZERO)?),
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

    let (out, queue) = mpsc::unbounded_channel::<Vec<u8>>();
    let writer = tokio::spawn(pump(tx, queue));
    let in_flight = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
    let session = Arc::new_cyclic(|this| Session {
        backend,
        handles: Mutex::new(HashMap::new()),
        out,
        this: this.clone(),
        next: AtomicU64::new(1),
        sent: AtomicU64::new(0),
        received: AtomicU64::new(0),
        gone: std::sync::atomic::AtomicBool::new(false),
    });
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
        // Wait for room before reading on: a client cannot queue more work
        // on the node than these bounds.
        let (Ok(connection), Ok(node)) = (in_flight.clone().acquire_owned().await, NODE_IN_FLIGHT.acquire().await)
        else {
            break Ok(());
        };
        let permits = Permits {
            _connection: connection,
            _node: node,
        };
        if let Op::Changes(wait_ms) = op {
            let session = session.clone();
            tokio::spawn(async move {
                session.long_poll(id, wait_ms).await;
                drop(permits);
            });
            continue;
        }
        if let Err((id, op, permits)) = session.route(id, op, permits) {
            let session = session.clone();
            tokio::task::spawn_blocking(move || {
                session.answer(id, op);
                drop(permits);
            });
        }
    };
    // The client is gone: its lanes end, its unpublished writers are dropped
    // (their files stay as they were) once requests still running finish.
    session.gone.store(true, Ordering::Relaxed);
    session.handles.lock().unwrap_or_else(|e| e.into_inner()).clear();
    let (sent, received) = (
        session.sent.load(Ordering::Relaxed),
        session.received.load(Ordering::Relaxed),
    );
    // The session holds the last sender of the answer queue.
    drop(session);
    writer.await.ok();
    result.map(|()| Summary { addr, sent, received })
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
    /// Sends a request; the answer comes through the returned future.
    fn start(&self, op: Op) -> impl std::future::Future<Output = WireResult> + use<> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending.lock().unwrap_or_else(|e| e.into_inner()).insert(id, tx);
        let sent = !self.closed.load(Ordering::Relaxed) && self.out.send(frame(&(id, op))).is_ok();
        if !sent {
            self.pending.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
        }
        async move {
            let gone = || Err((libc::EIO, "the connection to the node is gone".to_owned()));
            if !sent {
                return gone();
            }
            rx.await.unwrap_or_else(|_| gone())
        }
    }

    fn call_blocking(&self, op: Op) -> Result<Reply> {
        self.runtime
            .block_on(self.start(op))
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
    link: Arc<Link>,
    cache: Arc<Cache>,
    read_only: bool,
}

/// The connection in use and what it takes to make a new one.
struct Link {
    /// Replaced when it is gone.
    conn: Mutex<Arc<Conn>>,
    dial: Box<dyn Dial>,
    addr: String,
    /// What the user asked for (`--read-only`), for each Hello.
    asked_read_only: bool,
    /// The tree's read-only state at mount time.
    read_only: bool,
    /// A reconnection is under way.
    dialing: AtomicBool,
    /// When the last reconnection began: at most one a second.
    last_dial: Mutex<std::time::Instant>,
}

/// How long a node may take to answer a mount's first request.
const HELLO_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// A byte stream to a node's `alknet-fs` service.
pub trait Duplex: AsyncRead + AsyncWrite + Send {}

impl<T: AsyncRead + AsyncWrite + Send> Duplex for T {}

/// An open stream to the node.
pub type Stream = std::pin::Pin<Box<dyn Duplex>>;

/// A connection being opened.
pub type Dialing<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = std::io::Result<Stream>> + Send + 'a>>;

/// Opens connections to a node (the first, and again after one is lost).
pub trait Dial: Send + Sync + 'static {
    fn dial(&self) -> Dialing<'_>;
}

/// Starts the client side of a connection on `stream` and sends Hello;
/// the connection and whether the tree is read-only.
async fn open_conn(stream: Stream, addr: &str, read_only: bool) -> std::io::Result<(Arc<Conn>, bool)> {
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
        tracing::warn!("mount: {end}; requests fail with EIO until the node answers again");
        reader.fail_all();
    });
    let hello = conn.start(Op::Hello {
        addr: addr.to_owned(),
        read_only,
    });
    // A node that takes the connection but never answers is as good as none.
    let Ok(hello) = tokio::time::timeout(HELLO_TIMEOUT, hello).await else {
        conn.fail_all();
        return Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("the node did not answer within {} s", HELLO_TIMEOUT.as_secs()),
        ));
    };
    match hello {
        Ok(Reply::Hello { read_only }) => Ok((conn, read_only)),
        Ok(other) => Err(std::io::Error::other(format!("unexpected answer {other:?}"))),
        Err((_, why)) => Err(std::io::Error::other(why)),
    }
}

fn unexpected(r: Reply) -> Errno {
    tracing::warn!("mount: the node answered {r:?} unexpectedly");
    Errno::EPROTO
}

impl Remote {
    /// Opens the tree `addr` (`bucket[@branch[@version]]`) on the node at
    /// the other end of `stream`, its contents cached in `cache`. Fails with
    /// the node's reason (no such bucket, no grant).
    pub async fn connect(dial: impl Dial, addr: &str, read_only: bool, cache: Arc<Cache>) -> std::io::Result<Remote> {
        let (conn, tree_read_only) = open_conn(dial.dial().await?, addr, read_only).await?;
        Ok(Remote {
            link: Arc::new(Link {
                conn: Mutex::new(conn),
                dial: Box::new(dial),
                addr: addr.to_owned(),
                asked_read_only: read_only,
                read_only: tree_read_only,
                dialing: AtomicBool::new(false),
                last_dial: Mutex::new(std::time::Instant::now()),
            }),
            cache,
            read_only: tree_read_only,
        })
    }

    /// The connection to use: the current one, even if it is gone — its
    /// requests then fail at once with EIO — while a reconnection runs in
    /// the background (one at a time, at most one a second, for at most
    /// `DIAL_TIMEOUT`). Files open on a lost connection stay failed: their
    /// node-side sessions went with it, so unpublished writes are lost as
    /// in a crash.
    fn conn(&self) -> Arc<Conn> {
        let current = self.link.conn.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if !current.closed.load(Ordering::Relaxed) || self.link.dialing.load(Ordering::Relaxed) {
            return current;
        }
        {
            let mut last = self.link.last_dial.lock().unwrap_or_else(|e| e.into_inner());
            if last.elapsed() < Duration::from_secs(1) || self.link.dialing.swap(true, Ordering::AcqRel) {
                return current;
            }
            *last = std::time::Instant::now();
        }
        let link = self.link.clone();
        current.runtime.spawn(async move {
            let dial = async {
                let stream = link.dial.dial().await?;
                open_conn(stream, &link.addr, link.asked_read_only).await
            };
            match tokio::time::timeout(DIAL_TIMEOUT, dial).await {
                Ok(Ok((fresh, read_only))) => {
                    if read_only != link.read_only {
                        tracing::warn!("mount: the tree is now read-only={read_only}; remount to follow");
                    }
                    tracing::info!("mount: reconnected to the node");
                    *link.conn.lock().unwrap_or_else(|e| e.into_inner()) = fresh;
                }
                Ok(Err(e)) => tracing::warn!("mount: reconnecting: {e}"),
                Err(_) => tracing::warn!("mount: reconnecting: no answer within {} s", DIAL_TIMEOUT.as_secs()),
            }
            link.dialing.store(false, Ordering::Release);
        });
        current
    }

    fn call(&self, op: Op) -> Result<Reply> {
        self.conn().call_blocking(op)
    }

    fn done(&self, op: Op) -> Result<()> {
        match self.call(op)? {
            Reply::Done => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    fn entry_of(&self, op: Op) -> Result<Option<Entry>> {
        match self.call(op)? {
            Reply::Entry(e) => Ok(e),
            other => Err(unexpected(other)),
        }
    }

    /// The entry a change made or touched.
    fn new_entry(&self, op: Op) -> Result<Entry> {
        self.entry_of(op)?.ok_or(Errno::EPROTO)
    }

    fn writer(&self, conn: Arc<Conn>, handle: u64, len: u64) -> Box<dyn Writer> {
        Box::new(RemoteWriter {
            conn,
            handle,
            len,
            open: true,
            in_flight: VecDeque::new(),
        })
    }
}

impl Backend for Remote {
    fn read_only(&self) -> bool {
        self.read_only
    }

    fn entry(&self, id: EntryId) -> Result<Option<Entry>> {
        self.entry_of(Op::Entry(id))
    }

    fn lookup(&self, parent: EntryId, name: &str) -> Result<Option<Entry>> {
        self.entry_of(Op::Lookup(parent, name.to_owned()))
    }

    fn read_dir(&self, dir: EntryId, after: Option<&str>, limit: usize) -> Result<Vec<Entry>> {
        match self.call(Op::ReadDir(dir, after.map(str::to_owned), limit as u32))? {
            Reply::Entries(v) => Ok(v),
            other => Err(unexpected(other)),
        }
    }

    fn mkdir(&self, parent: EntryId, name: &str, mode: u32) -> Result<Entry> {
        self.new_entry(Op::Mkdir(parent, name.to_owned(), mode))
    }

    fn mknod(&self, parent: EntryId, name: &str, mode: u32, rdev: u64) -> Result<Entry> {
        self.new_entry(Op::Mknod(parent, name.to_owned(), mode, rdev))
    }

    fn symlink(&self, parent: EntryId, name: &str, target: &str) -> Result<Entry> {
        self.new_entry(Op::Symlink(parent, name.to_owned(), target.to_owned()))
    }

    fn remove(&self, parent: EntryId, name: &str) -> Result<()> {
        self.done(Op::Remove(parent, name.to_owned()))
    }

    fn rmdir(&self, parent: EntryId, name: &str) -> Result<()> {
        self.done(Op::Rmdir(parent, name.to_owned()))
    }

    fn rename(&self, from: (EntryId, &str), to: (EntryId, &str), replace: bool) -> Result<()> {
        self.done(Op::Rename(from.0, from.1.to_owned(), to.0, to.1.to_owned(), replace))
    }

    fn set_attr(&self, id: EntryId, mode: Option<u32>, mtime_ns: Option<i64>) -> Result<Entry> {
        self.new_entry(Op::SetAttr(id, mode, mtime_ns))
    }

    fn truncate(&self, id: EntryId, len: u64) -> Result<Entry> {
        self.new_entry(Op::Truncate(id, len))
    }

    fn create(&self, parent: EntryId, name: &str, mode: u32, exclusive: bool) -> Result<(Entry, Box<dyn Writer>)> {
        // A handle lives on the connection that opened it.
        let conn = self.conn();
        match conn.call_blocking(Op::Create(parent, name.to_owned(), mode, exclusive))? {
            Reply::Created(e, handle) => Ok((e, self.writer(conn, handle, 0))),
            other => Err(unexpected(other)),
        }
    }

    fn open_write(&self, id: EntryId, truncate: bool) -> Result<Box<dyn Writer>> {
        let conn = self.conn();
        match conn.call_blocking(Op::OpenWrite(id, truncate))? {
            Reply::Writer(handle, len) => Ok(self.writer(conn, handle, len)),
            other => Err(unexpected(other)),
        }
    }

    fn open_read(&self, e: &Entry) -> Result<Box<dyn Reader>> {
        // A cached blob needs no node at all.
        if let Some(file) = e.hash.as_ref().and_then(|h| self.cache.get(h)) {
            return Ok(Box::new(RemoteReader::Cached(file)));
        }
        let conn = self.conn();
        let (handle, e) = match conn.call_blocking(Op::OpenRead(e.id))? {
            Reply::Reader(handle, e) => (handle, e),
            other => return Err(unexpected(other)),
        };
        let hash = e.hash.ok_or(Errno::EIO)?;
        // The node may hold a newer content than the entry the kernel had.
        if let Some(file) = self.cache.get(&hash) {
            conn.send(Op::Forget(handle));
            return Ok(Box::new(RemoteReader::Cached(file)));
        }
        Ok(Box::new(RemoteReader::Node {
            cache: self.cache.clone(),
            hash,
            chunks: Chunks {
                conn,
                handle,
                size: e.size,
                ahead: std::collections::BTreeMap::new(),
                done: VecDeque::new(),
            },
        }))
    }

    fn space(&self) -> Result<Space> {
        match self.call(Op::Space)? {
            Reply::Space(s) => Ok(s),
            other => Err(unexpected(other)),
        }
    }

    fn changes(&self, wait: Duration) -> Result<Vec<(EntryId, String)>> {
        match self.call(Op::Changes(wait.as_millis() as u32))? {
            Reply::Names(v) => Ok(v),
            other => Err(unexpected(other)),
        }
    }
}

/// Writes sent and not yet answered, at most: enough to keep the link busy
/// (the node runs a handle's requests in order).
const WRITES_IN_FLIGHT: usize = 16;

struct RemoteWriter {
    conn: Arc<Conn>,
    handle: u64,
    len: u64,
    /// Not yet closed: dropping it tells the node to forget the session.
    open: bool,
    /// Writes sent, answers to come. A failed one fails the next call on
    /// this writer, and its close publishes nothing.
    in_flight: VecDeque<Answer>,
}

impl RemoteWriter {
    /// Waits for the answers of writes in flight until at most `keep` are
    /// left; the first failure among them.
    fn settle(&mut self, keep: usize) -> Result<()> {
        while self.in_flight.len() > keep {
            let Some(next) = self.in_flight.pop_front() else { break };
            match self.conn.runtime.block_on(next) {
                Ok(Reply::Done) => {}
                Ok(other) => return Err(unexpected(other)),
                Err((code, _)) => {
                    // The session lost a write: it must not be published.
                    self.in_flight.clear();
                    return Err(Errno::from_i32(code));
                }
            }
        }
        Ok(())
    }

    fn done(&mut self, op: Op) -> Result<()> {
        self.settle(0)?;
        match self.conn.call_blocking(op)? {
            Reply::Done => Ok(()),
            other => Err(unexpected(other)),
        }
    }
}

impl Writer for RemoteWriter {
    /// Sends the write without waiting for it: the kernel's next write goes
    /// out while this one crosses the network.
    fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        self.settle(WRITES_IN_FLIGHT - 1)?;
        let answer = self.conn.start(Op::Write(self.handle, offset, data.to_vec()));
        self.in_flight.push_back(Box::pin(answer));
        self.len = self.len.max(offset + data.len() as u64);
        Ok(())
    }

    fn read_at(&mut self, offset: u64, len: u32) -> Result<Vec<u8>> {
        self.settle(0)?;
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
        // Every write must have landed before the content is published.
        self.settle(0)?;
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
        cache: Arc<Cache>,
        hash: BlobHash,
        chunks: Chunks,
    },
}

type Answer = std::pin::Pin<Box<dyn std::future::Future<Output = WireResult> + Send>>;

/// A node reader's content in `CHUNK`-sized pieces, fetched ahead of the
/// reader when it reads in order. The kernel's read-ahead sends reads from
/// several threads, so they may come slightly out of order: a few chunks
/// stay at hand, and nothing asked for is asked again while it is near.
struct Chunks {
    conn: Arc<Conn>,
    handle: u64,
    size: u64,
    /// Chunks asked for, not yet taken.
    ahead: std::collections::BTreeMap<u64, Answer>,
    /// Chunks taken, the most recent last; at most `FILL_DEPTH`.
    done: VecDeque<(u64, Vec<u8>)>,
}

impl Chunks {
    fn held(&self, k: u64) -> Option<usize> {
        self.done.iter().position(|(c, _)| *c == k)
    }

    /// Chunk `k`, with up to `depth` chunks from `k` on asked for.
    fn get(&mut self, k: u64, depth: usize) -> Result<&[u8]> {
        if let Some(i) = self.held(k) {
            return Ok(&self.done[i].1);
        }
        let chunk = u64::from(CHUNK);
        for c in k..k + depth.max(1) as u64 {
            if c * chunk >= self.size {
                break;
            }
            if !self.ahead.contains_key(&c) && self.held(c).is_none() {
                let answer = self.conn.start(Op::Read(self.handle, c * chunk, CHUNK));
                self.ahead.insert(c, Box::pin(answer));
            }
        }
        // Far behind the reader now: a jump left them; their answers are dropped.
        let keep_from = k.saturating_sub(FILL_DEPTH as u64);
        self.ahead.retain(|c, _| *c >= keep_from);
        let Some(answer) = self.ahead.remove(&k) else {
            // At or past the end.
            return Ok(&[]);
        };
        let bytes = match self.conn.runtime.block_on(answer) {
            Ok(Reply::Bytes(b)) => b,
            Ok(other) => return Err(unexpected(other)),
            Err((code, _)) => return Err(Errno::from_i32(code)),
        };
        if self.done.len() >= FILL_DEPTH {
            self.done.pop_front();
        }
        self.done.push_back((k, bytes));
        Ok(self.done.back().map_or(&[][..], |(_, b)| &b[..]))
    }

    /// Up to `len` bytes at `offset`, fetching ahead when reads follow one
    /// another (a random read costs one chunk, not a window).
    fn read_at(&mut self, offset: u64, len: u32) -> Result<Vec<u8>> {
        let end = (offset + u64::from(len)).min(self.size);
        let mut out = Vec::with_capacity(end.saturating_sub(offset) as usize);
        let mut pos = offset;
        while pos < end {
            let k = pos / u64::from(CHUNK);
            let in_order = self.ahead.contains_key(&k) || self.done.iter().any(|(c, _)| *c == k || *c + 1 == k);
            let chunk = self.get(k, if in_order { FILL_DEPTH } else { 1 })?;
            let from = (pos - k * u64::from(CHUNK)) as usize;
            if from >= chunk.len() {
                break;
            }
            let take = (chunk.len() - from).min((end - pos) as usize);
            out.extend_from_slice(&chunk[from..from + take]);
            pos += take as u64;
        }
        Ok(out)
    }
}

impl RemoteReader {
    /// Fetches the whole blob into the cache, `FILL_DEPTH` chunks in
    /// flight, verifying it as it lands.
    fn fill(cache: &Cache, hash: &BlobHash, chunks: &mut Chunks) -> Result<File> {
        let io = |e: std::io::Error| {
            tracing::warn!("mount: caching {hash}: {e}");
            Errno::EIO
        };
        let mut fill = cache.fill(hash).map_err(io)?;
        for k in 0..chunks.size.div_ceil(u64::from(CHUNK)) {
            fill.push(chunks.get(k, FILL_DEPTH)?).map_err(io)?;
        }
        cache.insert(hash, fill).map_err(io)
    }
}

impl Reader for RemoteReader {
    fn read_at(&mut self, offset: u64, len: u32) -> Result<Vec<u8>> {
        if let RemoteReader::Node { cache, hash, chunks } = self {
            if !cache.takes(chunks.size) {
                // Too big to cache: read by range, ahead when in order.
                return chunks.read_at(offset, len);
            }
            let file = Self::fill(cache, hash, chunks)?;
            // Dropping the node reader forgets its handle there.
            *self = RemoteReader::Cached(file);
        }
        let RemoteReader::Cached(file) = self else {
            return Err(Errno::EIO);
        };
        Ok(alknet_fs::read_at(file, offset, len as usize)?)
    }
}

impl Drop for Chunks {
    fn drop(&mut self) {
        self.conn.send(Op::Forget(self.handle));
    }
}

/// Garbage on the wire: after a good Hello, random frames — noise, and
/// requests of every kind with random arguments — end in an answer or a
/// closed connection, never a panic or a hang, and change nothing they may
/// not. `ALKNET_FUZZ_ROUNDS` runs more rounds (docs/fuzzing.md).
#[cfg(test)]
mod garbage {
    use super::*;

    fn noise(seed: &mut u64, len: usize) -> Vec<u8> {
        (0..len)
            .map(|_| {
                *seed ^= *seed << 13;
                *seed ^= *seed >> 7;
                *seed ^= *seed << 17;
                *seed as u8
            })
            .collect()
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn random_frames_end_the_session_cleanly() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = alknet_fs::Store::open(dir.path()).expect("store");
        store.create_bucket("b", "drive").expect("bucket");
        let rounds: u64 = std::env::var("ALKNET_FUZZ_ROUNDS")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(300);
        let mut seed = 0x5851_f42d_4c95_7f2d_u64;
        for round in 0..rounds {
            let (client, server) = tokio::io::duplex(1 << 16);
            let s = store.clone();
            let session = tokio::spawn(serve(server, move |addr, read_only| {
                let a = alknet_fs::Address::parse(addr).map_err(|e| e.to_string())?;
                let tree = s.tree(&a.bucket, &a.branch, &a.at).map_err(|e| e.to_string())?;
                Ok(Local::new(&s, tree, read_only))
            }));
            let (mut rx, mut tx) = tokio::io::split(client);
            let hello = frame(&(
                1u64,
                Op::Hello {
                    addr: "b".into(),
                    read_only: round % 2 == 0,
                },
            ));
            tx.write_all(&hello).await.expect("hello");
            for _ in 0..6 {
                let pick = noise(&mut seed, 2);
                let len = usize::from(pick[1]) % 96;
                let mut body = noise(&mut seed, len);
                if !pick[0].is_multiple_of(4) {
                    // A request id, then a real request kind (0..=22) with noise after.
                    body.insert(0, pick[0] % 23);
                    body.insert(0, 7);
                }
                let mut f = (body.len() as u32).to_be_bytes().to_vec();
                f.extend_from_slice(&body);
                if tx.write_all(&f).await.is_err() {
                    break;
                }
            }
            // Hang up (dropping one half of a split stream closes nothing).
            tx.shutdown().await.ok();
            drop(tx);
            let mut sink = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(10), rx.read_to_end(&mut sink)).await;
            let ended = tokio::time::timeout(Duration::from_secs(10), session).await;
            let joined = ended.unwrap_or_else(|_| panic!("round {round}: the session did not end"));
            assert!(joined.is_ok(), "round {round}: the session panicked");
        }
        assert_eq!(
            store.list_buckets().expect("list").len(),
            1,
            "garbage created no bucket"
        );
    }
}
