//! `alknet mount` and `alknet umount`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use alknet_fs::{Address, Store};
use anyhow::{Context, Result, bail};

/// Mounts `addr` of the data directory at `mountpoint` and serves it until
/// it is unmounted or the process gets SIGINT or SIGTERM (then it unmounts).
pub(crate) async fn run(
    store: &Store,
    cache: &CacheOptions,
    addr: &str,
    mountpoint: &Path,
    read_only: bool,
) -> Result<u8> {
    let address = checked(addr, mountpoint)?;
    let tree = store.tree(&address.bucket, &address.branch, &address.at)?;
    // Mount only once the blob store is ours. If another process has just
    // taken it (a node starting, or a second mount started at the same
    // moment), go through that node's socket instead of waiting for it.
    if !store.try_claim_blobs().await? {
        if crate::node::socket_comes(store.dir()).await? {
            return run_beside(store.dir(), cache, addr, mountpoint, read_only).await;
        }
        store.claim_blobs().await?;
    }
    let owner = owner_of(store.dir())?;
    // This process holds the store now: later commands and mounts on the
    // data directory go through it (decision 18).
    let socket = crate::node::Listener::bind(store)?;
    let backend = alknet_mount_protocol::Local::new(store, tree, read_only);
    let out = serve(Arc::new(backend), addr, &address, mountpoint, owner).await;
    // Mounts and commands that come through this process keep it alive
    // (and serving) until they end, or until another SIGINT or SIGTERM.
    tokio::select! {
        () = socket.close_when_idle() => {}
        () = crate::server::shutdown_signal() => {}
    }
    out
}

/// How to reach a node for `alknet mount --node`.
pub(crate) struct RemoteOptions {
    pub node: String,
    pub identity: Option<PathBuf>,
}

/// Where a mount from a node keeps file contents.
pub(crate) struct CacheOptions {
    pub dir: Option<PathBuf>,
    pub bytes: u64,
}

impl CacheOptions {
    fn open(&self) -> Result<alknet_mount_protocol::Cache> {
        let dir = match &self.dir {
            Some(p) => p.clone(),
            None => std::env::home_dir()
                .context("no home directory for the cache: give one with --cache-dir")?
                .join(".cache/alknet/blobs"),
        };
        alknet_mount_protocol::Cache::open(&dir, self.bytes).with_context(|| format!("cache at {}", dir.display()))
    }
}

/// Mounts `addr` of a data directory through the node that holds it (its
/// socket).
pub(crate) async fn run_beside(
    data: &Path,
    cache: &CacheOptions,
    addr: &str,
    mountpoint: &Path,
    read_only: bool,
) -> Result<u8> {
    let address = checked(addr, mountpoint)?;
    // Redials come from this directory, whatever the mount's working directory is.
    let data = std::path::absolute(data)?;
    let dial = SocketDial { data: data.clone() };
    let remote = alknet_mount_protocol::Remote::connect(dial, addr, read_only, Arc::new(cache.open()?))
        .await
        .with_context(|| format!("mounting {addr} through the node on {}", data.display()))?;
    let owner = owner_of(&data)?;
    serve(Arc::new(remote), addr, &address, mountpoint, owner).await
}

/// Connects to the node's socket for a mount session.
struct SocketDial {
    data: PathBuf,
}

impl alknet_mount_protocol::Dial for SocketDial {
    fn dial(&self) -> alknet_mount_protocol::Dialing<'_> {
        Box::pin(async move {
            let conn = crate::node::dial_mount(&self.data).await?;
            Ok(Box::pin(conn) as alknet_mount_protocol::Stream)
        })
    }
}

/// Mounts `addr` on a running node, signed in with the user's key; file
/// contents are cached by hash in a local directory.
pub(crate) async fn run_remote(
    opts: &RemoteOptions,
    cache: &CacheOptions,
    addr: &str,
    mountpoint: &Path,
    read_only: bool,
) -> Result<u8> {
    let address = checked(addr, mountpoint)?;
    let identity = match &opts.identity {
        Some(p) => p.clone(),
        None => alknet_protocols::default_identity()
            .context("no SSH key in ~/.ssh (id_ed25519, id_ecdsa, id_rsa): give one with --identity")?,
    };
    let cache = cache.open()?;
    let dial = NodeDial {
        node: opts.node.clone(),
        identity,
        link: Arc::new(Mutex::new(None)),
    };
    let link = dial.link.clone();
    let remote = alknet_mount_protocol::Remote::connect(dial, addr, read_only, Arc::new(cache))
        .await
        .with_context(|| format!("mounting {addr} from {}", opts.node))?;
    let owner = owner_of(mountpoint)?;
    let result = serve(Arc::new(remote), addr, &address, mountpoint, owner).await;
    let last = link.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(link) = last {
        link.close().await;
    }
    result
}

/// Connects to the node's `alknet-fs` service with the user's key; keeps the
/// SSH session (and QUIC endpoint) of the connection in use, to close it
/// politely at the end.
struct NodeDial {
    node: String,
    identity: PathBuf,
    link: Arc<Mutex<Option<alknet_protocols::Link>>>,
}

impl alknet_mount_protocol::Dial for NodeDial {
    fn dial(&self) -> alknet_mount_protocol::Dialing<'_> {
        Box::pin(async move {
            let channel =
                alknet_protocols::open_subsystem(&self.node, &self.identity, alknet_mount_protocol::SUBSYSTEM)
                    .await
                    .map_err(std::io::Error::other)?;
            let old = self
                .link
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .replace(channel.link);
            if let Some(old) = old {
                old.close().await;
            }
            Ok(Box::pin(channel.stream) as alknet_mount_protocol::Stream)
        })
    }
}

fn checked(addr: &str, mountpoint: &Path) -> Result<Address> {
    let address = Address::parse(addr)?;
    if !address.path.is_root() {
        bail!("{addr}: mount a bucket or branch, not a path inside it");
    }
    if !mountpoint.is_dir() {
        bail!("{}: not a directory", mountpoint.display());
    }
    Ok(address)
}

/// Ownership is not stored: every entry shows the owner of `path`.
fn owner_of(path: &Path) -> Result<(u32, u32)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).with_context(|| format!("{}", path.display()))?;
    Ok((m.uid(), m.gid()))
}

/// Mounts `backend` and serves it until it is unmounted or the process gets
/// SIGINT or SIGTERM (then it unmounts).
async fn serve(
    backend: Arc<dyn alknet_mount_protocol::Backend>,
    addr: &str,
    address: &Address,
    mountpoint: &Path,
    owner: (u32, u32),
) -> Result<u8> {
    let fs = alknet_mount::Mount::new(backend, owner);
    let ro = fs.is_read_only();
    let name = format!("alknet:{}@{}", address.bucket, address.branch);
    let mounted = tokio::task::block_in_place(|| alknet_mount::mount(fs, mountpoint, &name))
        .with_context(|| format!("mounting at {}", mountpoint.display()))?;
    println!(
        "mounted {addr} at {}{}",
        mountpoint.display(),
        if ro { " (read-only)" } else { "" }
    );
    use std::io::Write;
    std::io::stdout().flush()?;
    tracing::info!(%addr, mountpoint = %mountpoint.display(), read_only = ro, "mounted");

    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = tokio::time::sleep(Duration::from_millis(200)) => {
                if mounted.is_finished() {
                    tracing::info!("unmounted from outside");
                    return Ok(0);
                }
            }
        }
    }
    tokio::task::block_in_place(|| mounted.unmount()).context("unmounting")?;
    tracing::info!("unmounted");
    Ok(0)
}

pub(crate) fn umount(mountpoint: &Path) -> Result<u8> {
    alknet_mount::unmount(mountpoint)?;
    Ok(0)
}
