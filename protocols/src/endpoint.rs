//! The network side: the TCP listener and the QUIC endpoint, both carrying
//! the same SSH server, and the client bridge (`alknet proxy`).

use std::future::Future;
use std::net::SocketAddr;

use iroh::endpoint::{Connection, PortmapperConfig, QuicTransportConfig, presets};
use iroh::protocol::{AcceptError, ProtocolHandler, Router};
use iroh::{Endpoint, EndpointAddr, RelayMode, SecretKey};
use tokio::net::TcpListener;

use crate::http::{ALPN_HTTP, HttpServer};
use crate::ssh::SshServer;

/// How long `proxy` waits for a node to answer before giving up.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

/// How long an accept loop waits after a failed accept, first and at most.
const ACCEPT_BACKOFF_MIN: std::time::Duration = std::time::Duration::from_millis(10);
const ACCEPT_BACKOFF_MAX: std::time::Duration = std::time::Duration::from_secs(1);

/// What every accept loop (SSH, HTTP, the node's socket) does when an
/// accept fails — out of file descriptors, most likely, or another passing
/// fault: log, wait (10 ms, doubling to 1 s while failures go on), and keep
/// serving.
#[derive(Debug)]
pub struct AcceptBackoff(std::time::Duration);

impl Default for AcceptBackoff {
    fn default() -> Self {
        AcceptBackoff(ACCEPT_BACKOFF_MIN)
    }
}

impl AcceptBackoff {
    /// An accept succeeded: the next failure waits the least again.
    pub fn reset(&mut self) {
        self.0 = ACCEPT_BACKOFF_MIN;
    }

    /// An accept on `listener` failed with `e`: waits before the next.
    pub async fn failed(&mut self, listener: &str, e: &std::io::Error) {
        tracing::warn!(
            "{listener}: accepting a connection failed: {e}; trying again in {} ms",
            self.0.as_millis()
        );
        tokio::time::sleep(self.0).await;
        self.0 = (self.0 * 2).min(ACCEPT_BACKOFF_MAX);
    }
}

/// A peer that sends nothing for this long is gone (QUIC has no reset: a
/// node killed mid-session is found by silence). Both sides send a
/// keep-alive after `KEEP_ALIVE` of quiet, so a live but idle connection
/// always has traffic; three missed in a row end it.
const IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(6);
const KEEP_ALIVE: std::time::Duration = std::time::Duration::from_secs(2);

/// ALPN of SSH over one QUIC bi-stream.
pub const ALPN_SSH: &[u8] = b"alknet/ssh";

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("cannot bind the QUIC endpoint on {addr}: {reason}")]
    Bind { addr: SocketAddr, reason: String },
    #[error("invalid node address {0:?}: expected NODE_ID@HOST:PORT")]
    BadNodeAddr(String),
    #[error("cannot connect to {addr}: {reason}")]
    Connect { addr: String, reason: String },
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

/// Binds a QUIC endpoint with relays and discovery off: peers reach it by
/// direct address (`NODE_ID@HOST:PORT`).
pub async fn bind_quic(secret: SecretKey, addr: SocketAddr) -> Result<Endpoint, Error> {
    let bad = |e: &dyn std::fmt::Display| Error::Bind {
        addr,
        reason: e.to_string(),
    };
    let idle = IDLE_TIMEOUT.try_into().map_err(|e| bad(&e))?;
    let transport = QuicTransportConfig::builder()
        .max_idle_timeout(Some(idle))
        .keep_alive_interval(KEEP_ALIVE)
        .default_path_max_idle_timeout(IDLE_TIMEOUT)
        .default_path_keep_alive_interval(KEEP_ALIVE)
        .build();
    Endpoint::builder(presets::Minimal)
        .secret_key(secret)
        .transport_config(transport)
        .relay_mode(RelayMode::Disabled)
        .clear_address_lookup()
        .portmapper_config(PortmapperConfig::Disabled)
        .clear_ip_transports()
        .bind_addr(addr)
        .map_err(|e| bad(&e))?
        .bind()
        .await
        .map_err(|e| bad(&e))
}

/// The address a peer uses to reach `ep`: `NODE_ID@HOST:PORT` per socket.
pub fn node_addrs(ep: &Endpoint) -> Vec<String> {
    ep.bound_sockets().iter().map(|s| format!("{}@{s}", ep.id())).collect()
}

#[derive(Debug, Clone)]
struct SshOverQuic(SshServer);

impl ProtocolHandler for SshOverQuic {
    async fn accept(&self, conn: Connection) -> Result<(), AcceptError> {
        let peer = format!("quic:{}", conn.remote_id().fmt_short());
        // A connection that never opens its stream is held no longer than
        // one that never logs in.
        let Ok(stream) = tokio::time::timeout(self.0.login_grace(), conn.accept_bi()).await else {
            conn.close(0u32.into(), b"no stream in time");
            return Ok(());
        };
        let (send, recv) = stream?;
        self.0.run_connection(tokio::io::join(recv, send), peer).await;
        conn.close(0u32.into(), b"bye");
        Ok(())
    }
}

#[derive(Clone)]
struct HttpOverQuic(HttpServer);

impl std::fmt::Debug for HttpOverQuic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HttpOverQuic")
    }
}

impl ProtocolHandler for HttpOverQuic {
    async fn accept(&self, conn: Connection) -> Result<(), AcceptError> {
        self.0.serve_quic(conn).await;
        Ok(())
    }
}

/// The HTTP side of a node: its server, and the TCP listener (with TLS or
/// not) it also answers on besides QUIC.
pub struct HttpFront {
    pub server: HttpServer,
    pub tcp: Option<(TcpListener, Option<std::sync::Arc<rustls::ServerConfig>>)>,
}

/// Serves SSH (and HTTP, if given; and sync, with the QUIC endpoint) on every listener given until `shutdown`
/// resolves. SSH connections in flight are dropped with the runtime; their
/// open writes abort (the old files stay) and nothing committed is lost.
/// HTTP connections finish the request in progress first, for a while.
pub async fn serve(
    server: SshServer,
    tcp: Option<TcpListener>,
    quic: Option<(Endpoint, Option<crate::sync::SyncFront>)>,
    http: Option<HttpFront>,
    shutdown: impl Future<Output = ()>,
) {
    let mut links = None;
    let router = quic.map(|(ep, sync)| {
        let mut builder = Router::builder(ep).accept(ALPN_SSH, SshOverQuic(server.clone()));
        if let Some(h) = &http {
            builder = builder.accept(ALPN_HTTP, HttpOverQuic(h.server.clone()));
        }
        if let Some(sync) = sync {
            links = Some(AbortOnDrop(tokio::spawn(sync.service.clone().run_links())));
            builder = builder
                .accept(crate::sync::ALPN_SYNC, sync.service)
                .accept(iroh_blobs::ALPN, sync.blobs);
        }
        builder.spawn()
    });
    let (stop_http, http_stopped) = tokio::sync::watch::channel(false);
    let http_task = http
        .and_then(|h| h.tcp.map(|(listener, tls)| (h.server, listener, tls)))
        .map(|(server, listener, tls)| {
            let mut stopped = http_stopped.clone();
            tokio::spawn(server.serve_tcp(listener, tls, async move {
                stopped.wait_for(|s| *s).await.ok();
            }))
        });
    let accept = async {
        let Some(tcp) = tcp else {
            return std::future::pending::<()>().await;
        };
        let mut backoff = AcceptBackoff::default();
        loop {
            let (socket, peer) = match tcp.accept().await {
                Ok(accepted) => {
                    backoff.reset();
                    accepted
                }
                Err(e) => {
                    backoff.failed("ssh", &e).await;
                    continue;
                }
            };
            socket.set_nodelay(true).ok();
            let server = server.clone();
            tokio::spawn(async move { server.run_connection(socket, peer.to_string()).await });
        }
    };
    tokio::select! {
        () = accept => {}
        () = shutdown => {}
    };
    stop_http.send(true).ok();
    if let Some(task) = http_task {
        task.await.ok();
    }
    drop(links);
    if let Some(router) = router {
        router.shutdown().await.ok();
    }
}

pub(crate) struct AbortOnDrop(pub(crate) tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Splits `NODE_ID@HOST:PORT` into the node id and `HOST:PORT` (a host name
/// or an IP literal; IPv6 in brackets), checking both.
pub fn parse_node_addr(s: &str) -> Result<(iroh::EndpointId, &str), Error> {
    let bad = || Error::BadNodeAddr(s.to_owned());
    let (id, host_port) = s.split_once('@').ok_or_else(bad)?;
    let id: iroh::EndpointId = id.parse().map_err(|_| bad())?;
    let (host, port) = host_port.rsplit_once(':').ok_or_else(bad)?;
    if host.is_empty() || port.parse::<u16>().is_err() {
        return Err(bad());
    }
    Ok((id, host_port))
}

/// Resolves `NODE_ID@HOST:PORT` to the node's addresses of one family —
/// IPv4 when the name has any, so one local socket reaches them all
/// (`localhost` names `::1` too, where a node on 127.0.0.1 is not).
async fn resolve_node_addr(s: &str) -> Result<EndpointAddr, Error> {
    let (id, host_port) = parse_node_addr(s)?;
    let found: Vec<SocketAddr> = tokio::net::lookup_host(host_port)
        .await
        .map_err(|e| connect_error(s, &format!("cannot resolve {host_port}: {e}")))?
        .collect();
    let v4 = found.iter().any(SocketAddr::is_ipv4);
    let addr = found
        .iter()
        .filter(|a| a.is_ipv4() == v4)
        .fold(EndpointAddr::new(id), |addr, a| addr.with_ip_addr(*a));
    if addr.ip_addrs().next().is_none() {
        return Err(connect_error(s, &format!("{host_port} has no address")));
    }
    Ok(addr)
}

/// Connects to the `alknet/ssh` service of the node at `addr`
/// (`NODE_ID@HOST:PORT`) from a fresh endpoint; keep the endpoint as long as
/// the connection.
pub(crate) async fn connect_quic(addr: &str, alpn: &[u8]) -> Result<(Endpoint, Connection), Error> {
    let target = resolve_node_addr(addr).await?;
    let local: SocketAddr = if target.ip_addrs().any(|a| a.is_ipv6()) {
        "[::]:0"
    } else {
        "0.0.0.0:0"
    }
    .parse()
    .expect("a literal socket address");
    let ep = bind_quic(SecretKey::generate(), local).await?;
    let conn = tokio::time::timeout(CONNECT_TIMEOUT, ep.connect(target, alpn))
        .await
        .map_err(|_| connect_error(addr, &format!("no answer within {} s", CONNECT_TIMEOUT.as_secs())))?
        .map_err(|e| connect_error(addr, &e))?;
    Ok((ep, conn))
}

pub(crate) fn connect_error(addr: &str, e: &dyn std::fmt::Display) -> Error {
    Error::Connect {
        addr: addr.to_owned(),
        reason: e.to_string(),
    }
}

/// Joins stdin and stdout to a stream of the service `alpn` on the node at
/// `addr`: `alknet/ssh`, so OpenSSH can use `ProxyCommand='alknet proxy
/// NODE_ID@HOST:PORT'`, or `alknet/http`, one HTTP/1.1 connection.
pub async fn proxy(addr: &str, alpn: &[u8]) -> Result<(), Error> {
    let (ep, conn) = connect_quic(addr, alpn).await?;
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| connect_error(addr, &e))?;
    let up = async {
        tokio::io::copy(&mut tokio::io::stdin(), &mut send).await?;
        send.finish().ok();
        Ok::<_, std::io::Error>(())
    };
    let down = async {
        let mut stdout = tokio::io::stdout();
        tokio::io::copy(&mut recv, &mut stdout).await?;
        tokio::io::AsyncWriteExt::flush(&mut stdout).await
    };
    // The session is over when the server's side ends.
    tokio::select! {
        r = down => r?,
        r = async { up.await?; std::future::pending::<std::io::Result<()>>().await } => r?,
    }
    conn.close(0u32.into(), b"bye");
    ep.close().await;
    Ok(())
}
