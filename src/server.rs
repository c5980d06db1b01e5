//! `alknet serve`: binds the listeners the settings and flags ask for,
//! prints where they are, and runs until SIGINT or SIGTERM.

use std::net::SocketAddr;

use alknet_fs::Store;
use anyhow::{Context, Result};

use crate::config::Config;

/// How often the server looks for queued garbage collections.
const GC_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// How long a shutdown waits for commands that came through the socket.
const SOCKET_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

pub(crate) async fn run(
    store: &Store,
    ssh: Option<SocketAddr>,
    quic: Option<SocketAddr>,
    no_quic: bool,
    http: Option<SocketAddr>,
    no_http: bool,
) -> Result<u8> {
    let config = Config::load(store.dir())?;
    // The server owns the blob store from the start (one process may hold
    // it): a mount or CLI command waits for it, not the other way round.
    store.claim_blobs().await?;
    // From now on commands and mounts on this data directory come through the
    // node's socket: bound at once, so that one started a moment after the
    // node does not find the store held and no socket yet.
    let socket = crate::node::Listener::bind(store)?;
    let ssh_addr = ssh.unwrap_or(config.ssh.listen);
    let quic_addr = (!no_quic).then(|| quic.unwrap_or(config.quic.listen));

    let keys = store.dir().join("keys");
    let host_key = alknet_protocols_host_key(&keys.join("ssh_host_ed25519_key"))?;
    let node_key = crate::keys::node_secret(&keys.join("node.key"))?;
    if store.user_count()? == 0 {
        tracing::warn!("there are no users yet: nobody can log in (alknet user add NAME --key FILE --admin)");
    }
    let forge = alknet_forge::Forge::new(store.clone(), config.git.forge());
    let limits = config.limits.connections(raise_open_file_limit());
    // One set of counters for every frontend, served at /metrics.
    let metrics = std::sync::Arc::new(alknet_protocols::Metrics::default());
    let tls = match (&config.http.tls_cert, &config.http.tls_key) {
        (Some(cert), Some(key)) => Some(alknet_protocols::load_tls(cert, key)?),
        (None, None) => None,
        _ => anyhow::bail!("alknet.toml: http.tls_cert and http.tls_key go together"),
    };
    let http_tcp = match (!no_http).then(|| http.unwrap_or(config.http.listen)) {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} (http)"))?,
        ),
        None => None,
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let bound_url = match &http_tcp {
        Some(l) => Some(format!("{scheme}://{}", l.local_addr()?)),
        None => None,
    };
    // What git-lfs-authenticate and the web pages hand out: the URL clients use, if set.
    let public_url = config.http.url.clone().or_else(|| bound_url.clone());
    let tcp = tokio::net::TcpListener::bind(ssh_addr)
        .await
        .with_context(|| format!("cannot listen on {ssh_addr} (ssh)"))?;
    let endpoint = match quic_addr {
        Some(addr) => Some(alknet_protocols::bind_quic(node_key, addr).await?),
        None => None,
    };
    let site = alknet_protocols::Site {
        url: public_url.clone(),
        ssh_port: Some(tcp.local_addr()?.port()),
        quic: endpoint.as_ref().map(alknet_protocols::node_addrs).unwrap_or_default(),
    };
    let http_server = alknet_protocols::HttpServer::new(
        forge.clone(),
        config.http.limits(),
        metrics.clone(),
        config.http.metrics_public,
        site,
    );
    let server = alknet_protocols::SshServer::new(forge, host_key, limits, metrics, public_url);
    // One write, and a reader that went away is no reason to stop serving.
    let mut banner = format!(
        "alknet serving {}\nsocket: {}\nssh: {}\n",
        store.dir().display(),
        socket.path().display(),
        tcp.local_addr()?
    );
    if let Some(url) = &bound_url {
        banner.push_str(&format!("http: {url}\n"));
    }
    if let Some(ep) = &endpoint {
        for a in alknet_protocols::node_addrs(ep) {
            banner.push_str(&format!("quic: {a}\n"));
        }
    }
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    out.write_all(banner.as_bytes()).and_then(|()| out.flush()).ok();
    drop(out);

    // Deletions queue a collection; this process holds the blob store, so it runs them.
    let gc = tokio::spawn(store.clone().gc_task(GC_EVERY));
    let http = alknet_protocols::HttpFront {
        server: http_server,
        tcp: http_tcp.map(|l| (l, tls)),
    };
    let quic = match endpoint {
        Some(ep) => {
            let sync = alknet_protocols::SyncFront::new(store.clone(), ep.clone()).await?;
            Some((ep, Some(sync)))
        }
        None => None,
    };
    alknet_protocols::serve(server, Some(tcp), quic, Some(http), shutdown_signal()).await;
    gc.abort();
    // Commands in progress get a moment to finish; a watch or mount is cut.
    socket.close(Some(SOCKET_GRACE)).await;
    tracing::info!("shut down");
    Ok(0)
}

fn alknet_protocols_host_key(path: &std::path::Path) -> Result<russh_keys::PrivateKey> {
    russh_keys::load_secret_key(path, None).with_context(|| format!("loading the SSH host key {}", path.display()))
}

use russh::keys as russh_keys;

/// Raises the soft limit on open files to the hard limit (a service's
/// default soft limit, often 1024, is far below what a busy node needs);
/// returns the limit now in force.
fn raise_open_file_limit() -> Option<u64> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        limit.current = limit.maximum;
        if let Err(e) = setrlimit(Resource::Nofile, limit) {
            tracing::warn!("cannot raise the open-file limit: {e}");
        }
    }
    getrlimit(Resource::Nofile).current
}

pub(crate) async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
    }
}
