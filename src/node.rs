//! The node's local socket, `DATA/alknet.sock` (decision 18).
//!
//! The process that holds a data directory's blob store (`alknet serve`, or
//! the first `alknet mount` without a node) listens here, so that every
//! other command on that data directory runs in it instead of waiting for
//! the store. A request is one frame — a 4-byte big-endian length and a
//! JSON [`Request`] — and then:
//!
//! - `cli`: the frame carries the client's stdin, stdout and stderr (as
//!   OpenSSH's ControlMaster passes them), its arguments and its directory.
//!   The node runs the very command the client parsed, with `commands.rs`,
//!   writing straight to the client's streams, and answers with one byte:
//!   the exit status. Output, `--json` and exit codes are the same as
//!   without a node because the same code prints them. A client that hangs
//!   up (killed, Ctrl-C) cancels its command.
//! - `mount`: the connection becomes a remote-mount session
//!   (`alknet_mount_protocol::serve`) on a tree of this data directory.
//!
//! Only the data directory's owner (or root) may connect: the socket is
//! mode 0600, and each peer's uid is checked (`SO_PEERCRED`). The owner is
//! the data directory's admin, as for every other command run on it.

use std::io::{IoSlice, IoSliceMut, Read, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStringExt;
use std::os::unix::net::UnixStream as StdStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use alknet_fs::Store;
use anyhow::{Context, Result, bail};
use clap::Parser;
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer, SendAncillaryMessage, SendFlags,
};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

use crate::stdio::Stdio;

/// The socket's name in the data directory.
pub(crate) const SOCKET: &str = "alknet.sock";

/// The largest request frame.
const MAX_FRAME: usize = 1 << 20;

/// Connections served at once; more wait in the listen backlog.
const MAX_CLIENTS: usize = 256;

/// How long a client may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Request {
    /// Run a command line; the frame carries stdin, stdout and stderr.
    Cli {
        /// The arguments after the program name, as bytes.
        argv: Vec<Vec<u8>>,
        /// The client's working directory.
        cwd: Vec<u8>,
    },
    /// Become a remote-mount session.
    Mount,
}

/// A connection to the node that holds `data`, if one runs. A socket left
/// behind by a killed node is removed (when no process holds the store: a
/// node listens only while it holds it), and `None` says to open the data
/// directory directly.
pub(crate) fn connect(data: &Path) -> Result<Option<StdStream>> {
    let path = data.join(SOCKET);
    match StdStream::connect(&path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            if !alknet_fs::blobs_held(data)? {
                tracing::info!("removing {}: the node that made it is gone", path.display());
                std::fs::remove_file(&path).ok();
            }
            Ok(None)
        }
        Err(e) => Err(e).with_context(|| format!("connecting to the node at {}", path.display())),
    }
}

/// Waits a moment for the socket of a node that holds `data`'s store but
/// has not bound it yet (it does so right after taking the store); whether
/// it came. A one-shot command that holds the store never binds one.
pub(crate) async fn socket_comes(data: &Path) -> Result<bool> {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while std::time::Instant::now() < deadline && alknet_fs::blobs_held(data)? {
        if connect(data)?.is_some() {
            return Ok(true);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(false)
}

/// Runs this process's command line in the node at the other end of
/// `conn`, with this process's standard streams; its exit status.
pub(crate) fn forward(mut conn: StdStream) -> Result<u8> {
    let request = Request::Cli {
        argv: std::env::args_os().skip(1).map(OsStringExt::into_vec).collect(),
        cwd: std::env::current_dir()
            .context("the current directory")?
            .into_os_string()
            .into_vec(),
    };
    let frame = frame(&request)?;
    let (stdin, stdout, stderr) = (std::io::stdin(), std::io::stdout(), std::io::stderr());
    let fds = [stdin.as_fd(), stdout.as_fd(), stderr.as_fd()];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(3))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    control.push(SendAncillaryMessage::ScmRights(&fds));
    let sent = rustix::net::sendmsg(&conn, &[IoSlice::new(&frame)], &mut control, SendFlags::empty())
        .context("sending the command to the node")?;
    conn.write_all(&frame[sent..])
        .context("sending the command to the node")?;
    let mut status = [0u8; 1];
    match conn.read(&mut status) {
        Ok(1) => Ok(status[0]),
        Ok(_) => bail!("the node ended before the command finished"),
        Err(e) => Err(e).context("waiting for the node"),
    }
}

/// Opens a connection to the node for a mount session (the mount's `Dial`).
pub(crate) async fn dial_mount(data: &Path) -> std::io::Result<UnixStream> {
    let mut conn = UnixStream::connect(data.join(SOCKET)).await?;
    conn.write_all(&frame(&Request::Mount).map_err(std::io::Error::other)?)
        .await?;
    Ok(conn)
}

fn frame(request: &Request) -> Result<Vec<u8>> {
    let body = serde_json::to_vec(request)?;
    let mut frame = (body.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&body);
    Ok(frame)
}

/// The node side: a listening socket and the sessions it serves.
pub(crate) struct Listener {
    path: PathBuf,
    accept: tokio::task::JoinHandle<()>,
    clients: Arc<tokio::sync::Semaphore>,
    sessions: Arc<Sessions>,
}

/// The sessions in progress, and a wake-up when one ends.
#[derive(Default)]
struct Sessions {
    active: std::sync::atomic::AtomicUsize,
    ended: tokio::sync::Notify,
}

/// One session's place in [`Sessions`], given back when it ends.
struct Active(Arc<Sessions>);

impl Active {
    fn new(sessions: &Arc<Sessions>) -> Active {
        sessions.active.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Active(sessions.clone())
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        self.0.ended.notify_waiters();
    }
}

impl Listener {
    /// Listens on the socket of `store`'s data directory. The caller holds
    /// the blob store, so a socket already there was left by a node that
    /// is gone.
    pub(crate) fn bind(store: &Store) -> Result<Listener> {
        use std::os::unix::fs::PermissionsExt;
        let path = store.dir().join(SOCKET);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(e).with_context(|| format!("removing the old {}", path.display()));
            }
            _ => {}
        }
        // Owner only from the start: bind under a umask that leaves no gap.
        let old = rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
        let bound = UnixListener::bind(&path);
        rustix::process::umask(old);
        let listener = bound.with_context(|| format!("listening on {}", path.display()))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        let clients = Arc::new(tokio::sync::Semaphore::new(MAX_CLIENTS));
        let sessions = Arc::new(Sessions::default());
        let accept = tokio::spawn(accept_loop(listener, store.clone(), clients.clone(), sessions.clone()));
        Ok(Listener {
            path,
            accept,
            clients,
            sessions,
        })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Goes on serving while any session lasts, then stops listening and
    /// removes the socket: a mount's process that holds the store after its
    /// own mount ended (decision 18). A command started meanwhile reaches
    /// the store through it instead of waiting for it.
    pub(crate) async fn close_when_idle(self) {
        loop {
            let ended = self.sessions.ended.notified();
            tokio::pin!(ended);
            ended.as_mut().enable();
            let busy = self.sessions.active.load(std::sync::atomic::Ordering::SeqCst);
            if busy == 0 {
                break;
            }
            tracing::info!("serving {busy} sessions of the node's socket until they end");
            ended.await;
        }
        drop(self);
    }

    /// Stops listening and removes the socket; then waits for the sessions
    /// in progress to end, at most `wait` (forever for `None`).
    pub(crate) async fn close(self, wait: Option<Duration>) {
        let clients = self.clients.clone();
        // Stops the accept loop and removes the socket.
        drop(self);
        let busy = MAX_CLIENTS - clients.available_permits();
        if busy > 0 {
            tracing::info!("waiting for {busy} sessions of the node's socket to end");
        }
        let all = clients.acquire_many(MAX_CLIENTS as u32);
        match wait {
            Some(limit) => drop(tokio::time::timeout(limit, all).await),
            None => drop(all.await),
        }
    }
}

impl Drop for Listener {
    /// A node that fails after binding (a port in use) leaves no socket.
    fn drop(&mut self) {
        self.accept.abort();
        std::fs::remove_file(&self.path).ok();
    }
}

async fn accept_loop(
    listener: UnixListener,
    store: Store,
    clients: Arc<tokio::sync::Semaphore>,
    sessions: Arc<Sessions>,
) {
    let me = rustix::process::geteuid();
    let mut backoff = alknet_protocols::AcceptBackoff::default();
    loop {
        let Ok(permit) = clients.clone().acquire_owned().await else {
            return;
        };
        let conn = match listener.accept().await {
            Ok((conn, _)) => {
                backoff.reset();
                conn
            }
            Err(e) => {
                backoff.failed("node socket", &e).await;
                continue;
            }
        };
        match rustix::net::sockopt::socket_peercred(&conn) {
            Ok(cred) if cred.uid == me || cred.uid.is_root() => {}
            Ok(cred) => {
                tracing::warn!(
                    uid = cred.uid.as_raw(),
                    "node socket: refused a client that is not the owner"
                );
                continue;
            }
            Err(e) => {
                tracing::warn!("node socket: cannot tell who connected: {e}");
                continue;
            }
        }
        let store = store.clone();
        let active = Active::new(&sessions);
        tokio::spawn(async move {
            if let Err(e) = session(conn, store).await {
                tracing::warn!("node socket: {e:#}");
            }
            drop(permit);
            drop(active);
        });
    }
}

async fn session(mut conn: UnixStream, store: Store) -> Result<()> {
    let Some((request, fds)) = tokio::time::timeout(REQUEST_TIMEOUT, receive(&mut conn))
        .await
        .context("the client sent no request in time")??
    else {
        // A client that only looked whether a node runs (`connect`).
        return Ok(());
    };
    match request {
        Request::Mount => {
            let summary = alknet_mount_protocol::serve(conn, |addr, read_only| {
                alknet_protocols::mount_tree(&store, None, addr, read_only)
            })
            .await
            .context("local mount")?;
            tracing::info!(addr = %summary.addr, sent = summary.sent, received = summary.received, "local mount ended");
            Ok(())
        }
        Request::Cli { argv, cwd } => {
            let fds: [OwnedFd; 3] = fds
                .try_into()
                .map_err(|_| anyhow::anyhow!("a command came without its three standard streams"))?;
            let gone = Arc::new(AtomicBool::new(false));
            let io = Stdio::new(PathBuf::from(std::ffi::OsString::from_vec(cwd)), fds, gone.clone());
            let (hung_up, mut hangup) = tokio::sync::watch::channel(false);
            let runtime = tokio::runtime::Handle::current();
            // The commands call the blocking `fs` API: they run on a thread of their own.
            let mut run = tokio::task::spawn_blocking(move || {
                runtime.block_on(async {
                    tokio::select! {
                        code = run_cli(&store, argv, &io) => code,
                        _ = hangup.wait_for(|gone| *gone) => 1,
                    }
                })
            });
            let mut byte = [0u8; 1];
            let code = tokio::select! {
                code = &mut run => code.unwrap_or(1),
                _ = conn.read(&mut byte) => {
                    // The client sends nothing after its request: this is its end.
                    gone.store(true, Ordering::Relaxed);
                    hung_up.send(true).ok();
                    run.await.ok();
                    return Ok(());
                }
            };
            conn.write_all(&[code]).await.ok();
            Ok(())
        }
    }
}

/// Parses and runs a client's command line.
async fn run_cli(store: &Store, argv: Vec<Vec<u8>>, io: &Stdio) -> u8 {
    let args =
        std::iter::once(std::ffi::OsString::from("alknet")).chain(argv.into_iter().map(std::ffi::OsString::from_vec));
    match crate::Cli::try_parse_from(args) {
        Ok(cli) => crate::commands::execute(crate::commands::On::Store(store), cli.command, cli.json, io).await,
        Err(e) => {
            // The client parsed these arguments already; this is a version mismatch at most.
            io.warn(format_args!("{}", e.to_string().trim_end()));
            2
        }
    }
}

/// Reads a request frame and the descriptors that came with it; `None` if
/// the client hung up without a word. Reads no byte past the frame: what
/// follows belongs to the session (a mount's first request).
async fn receive(conn: &mut UnixStream) -> Result<Option<(Request, Vec<OwnedFd>)>> {
    let mut head = [0u8; 4];
    // The descriptors arrive with the first bytes of the frame.
    let (got, fds) = conn
        .async_io(tokio::io::Interest::READABLE, || {
            let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(3))];
            let mut control = RecvAncillaryBuffer::new(&mut space);
            let msg = rustix::net::recvmsg(
                &*conn,
                &mut [IoSliceMut::new(&mut head)],
                &mut control,
                RecvFlags::CMSG_CLOEXEC,
            )?;
            let mut fds = Vec::new();
            for m in control.drain() {
                if let RecvAncillaryMessage::ScmRights(passed) = m {
                    fds.extend(passed);
                }
            }
            Ok((msg.bytes, fds))
        })
        .await?;
    if got == 0 {
        return Ok(None);
    }
    if got < head.len() {
        conn.read_exact(&mut head[got..])
            .await
            .context("the client hung up inside its request")?;
    }
    let len = u32::from_be_bytes(head) as usize;
    if len > MAX_FRAME {
        bail!("a request of {len} bytes (the limit is {MAX_FRAME})");
    }
    let mut body = vec![0u8; len];
    conn.read_exact(&mut body)
        .await
        .context("the client hung up inside its request")?;
    Ok(Some((
        serde_json::from_slice(&body).context("an unreadable request")?,
        fds,
    )))
}
