//! `alknet mount` and `alknet umount`.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use alknet_fs::{Address, Store};
use anyhow::{Context, Result, bail};

/// Mounts `addr` at `mountpoint` and serves it until it is unmounted or the
/// process gets SIGINT or SIGTERM (then it unmounts).
pub(crate) async fn run(store: &Store, addr: &str, mountpoint: &Path, read_only: bool) -> Result<ExitCode> {
    let address = Address::parse(addr)?;
    if !address.path.is_root() {
        bail!("{addr}: mount a bucket or branch, not a path inside it");
    }
    if !mountpoint.is_dir() {
        bail!("{}: not a directory", mountpoint.display());
    }
    let tree = store.tree(&address.bucket, &address.branch, &address.at)?;
    // Mount only once the blob store is ours: a mount that appeared while
    // `alknet serve` holds the data directory would hang on its first read.
    store.claim_blobs().await?;
    let owner = {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(store.dir()).with_context(|| format!("{}", store.dir().display()))?;
        (m.uid(), m.gid())
    };
    let fs = alknet_mount::Mount::new(store, tree, owner, read_only);
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
                    return Ok(ExitCode::SUCCESS);
                }
            }
        }
    }
    tokio::task::block_in_place(|| mounted.unmount()).context("unmounting")?;
    tracing::info!("unmounted");
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn umount(mountpoint: &Path) -> Result<ExitCode> {
    alknet_mount::unmount(mountpoint)?;
    Ok(ExitCode::SUCCESS)
}
