//! The node's HTTP server: the REST API under `/api/v1` (`api.rs`),
//! Prometheus metrics at `/metrics`, git's smart HTTP and Git LFS
//! (`git.rs`, `lfs.rs`) and the web interface under `/` (`web/`), on a TCP listener
//! (plain or TLS) and on the QUIC endpoint under ALPN `alknet/http`, one
//! HTTP/1.1 connection per bi-stream.
//!
//! Bodies stream both ways: an upload goes into a write session chunk by
//! chunk and a download is read from the blob a window at a time, so no
//! body is ever held whole; the only size limits are the store's
//! (`limits.max_file_size`, quotas, the disk). Every connection takes a
//! permit of `max_connections`, and a client has `header_timeout` to send
//! each request's head (a slow-loris client is cut off).

mod api;
pub mod client;
mod git;
mod lfs;
mod web;

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use alknet_forge::Forge;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;

pub use api::{ROUTES, Route};

/// ALPN of HTTP/1.1 over QUIC bi-streams.
pub const ALPN_HTTP: &[u8] = b"alknet/http";

/// What the HTTP server allows.
#[derive(Clone, Debug)]
pub struct HttpLimits {
    /// Connections served at once (TCP and QUIC streams together); more
    /// wait in the listen backlog.
    pub max_connections: usize,
    /// How long a client may take to send a request's head.
    pub header_timeout: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            max_connections: 512,
            header_timeout: Duration::from_secs(10),
        }
    }
}

/// How clients reach this node, for the pages that say so (clone URLs,
/// share links).
#[derive(Clone, Debug, Default)]
pub struct Site {
    /// The public base URL of the HTTP listener (`http.url`, else the bound one).
    pub url: Option<String>,
    /// The SSH listener's port.
    pub ssh_port: Option<u16>,
    /// The QUIC endpoint's addresses, `NODE_ID@HOST:PORT`.
    pub quic: Vec<String>,
}

/// The HTTP frontend of one store; cheap to clone.
#[derive(Clone)]
pub struct HttpServer {
    router: axum::Router,
    permits: Arc<tokio::sync::Semaphore>,
    limits: HttpLimits,
    metrics: Arc<crate::Metrics>,
}

impl HttpServer {
    /// `metrics`: the node's counters (shared with its other frontends);
    /// `metrics_public`: serve `/metrics` without a token.
    /// `site`: how clients reach the node, as pages show it.
    pub fn new(
        forge: Forge,
        limits: HttpLimits,
        metrics: Arc<crate::Metrics>,
        metrics_public: bool,
        site: Site,
    ) -> HttpServer {
        let router = api::router(forge, metrics.clone(), metrics_public, site);
        HttpServer {
            router,
            permits: Arc::new(tokio::sync::Semaphore::new(limits.max_connections)),
            limits,
            metrics,
        }
    }

    /// The routes as a tower service, for tests without a socket.
    pub fn router(&self) -> axum::Router {
        self.router.clone()
    }

    /// Accepts connections on `listener` (TLS with `tls`) until `shutdown`;
    /// then asks each connection to end after its request in progress.
    pub async fn serve_tcp(
        self,
        listener: TcpListener,
        tls: Option<Arc<rustls::ServerConfig>>,
        shutdown: impl Future<Output = ()>,
    ) {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let tls = tls.map(tokio_rustls::TlsAcceptor::from);
        let accept = async {
            let mut backoff = crate::AcceptBackoff::default();
            loop {
                let Ok(permit) = self.permits.clone().acquire_owned().await else {
                    return;
                };
                let (socket, peer) = match listener.accept().await {
                    Ok(accepted) => {
                        backoff.reset();
                        accepted
                    }
                    Err(e) => {
                        backoff.failed("http", &e).await;
                        continue;
                    }
                };
                socket.set_nodelay(true).ok();
                let (this, tls, stopped) = (self.clone(), tls.clone(), stopped.clone());
                tokio::spawn(async move {
                    match tls {
                        None => this.serve_connection(socket, "http", stopped).await,
                        Some(tls) => match tokio::time::timeout(this.limits.header_timeout, tls.accept(socket)).await {
                            Ok(Ok(stream)) => this.serve_connection(stream, "https", stopped).await,
                            Ok(Err(e)) => tracing::debug!(%peer, "http: TLS handshake failed: {e}"),
                            Err(_) => tracing::debug!(%peer, "http: no TLS handshake in time"),
                        },
                    }
                    drop(permit);
                });
            }
        };
        tokio::select! {
            () = accept => {}
            () = shutdown => {}
        }
        stop.send(true).ok();
        // Connections finish their requests in progress, for a while.
        let all = self.permits.acquire_many(self.limits.max_connections as u32);
        tokio::time::timeout(Duration::from_secs(5), all).await.ok();
    }

    /// Serves one HTTP/1.1 connection on `stream` until it ends or, after
    /// `stopped` turns true, its request in progress is answered.
    pub(crate) async fn serve_connection<S>(
        &self,
        stream: S,
        frontend: &'static str,
        mut stopped: tokio::sync::watch::Receiver<bool>,
    ) where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let _open = self.metrics.connection(frontend);
        let router = self.router.clone();
        let service = hyper::service::service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
            request.extensions_mut().insert(api::Frontend(frontend));
            tower::ServiceExt::oneshot(router.clone(), request)
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(self.limits.header_timeout)
            // A client may end its side after the request (`nc -N`, a proxy
            // whose stdin ended) and still wait for the answer.
            .half_close(true)
            .serve_connection(TokioIo::new(stream), service);
        tokio::pin!(conn);
        let ended = tokio::select! {
            r = conn.as_mut() => r,
            () = async { stopped.wait_for(|s| *s).await.map(drop).unwrap_or(()) } => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        };
        if let Err(e) = ended {
            tracing::debug!(frontend, "http connection ended: {e}");
        }
    }

    /// Serves the HTTP/1.1 connections a QUIC peer opens, one per
    /// bi-stream, until it closes the connection.
    pub(crate) async fn serve_quic(&self, conn: iroh::endpoint::Connection) {
        let (_stop, stopped) = tokio::sync::watch::channel(false);
        while let Ok((send, recv)) = conn.accept_bi().await {
            let Ok(permit) = self.permits.clone().acquire_owned().await else {
                return;
            };
            let (this, stopped) = (self.clone(), stopped.clone());
            tokio::spawn(async move {
                this.serve_connection(tokio::io::join(recv, send), "quic", stopped)
                    .await;
                drop(permit);
            });
        }
    }
}

/// A TLS configuration from a PEM certificate chain and private key.
pub fn load_tls(cert: &Path, key: &Path) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    use anyhow::Context;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("reading {}", cert.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("reading {}", cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(key).with_context(|| format!("reading {}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("the TLS certificate and key do not fit together")?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
