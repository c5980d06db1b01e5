//! The client side of the node's HTTP API, for `alknet --node URL`: one
//! HTTP/1.1 connection at a time over TCP, TLS or a QUIC bi-stream (ALPN
//! `alknet/http`), reopened when the node closes it. Bodies stream both
//! ways; only JSON answers are read whole, and those are capped.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full, Limited};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::endpoint::{connect_error, connect_quic};

pub use hyper::{Method, header};

/// A request body: streamed, or empty.
pub type Body = BoxBody<Bytes, std::io::Error>;

/// The most a JSON answer may hold.
const MAX_JSON: usize = 64 << 20;

/// An error the node answered with (`{"error": {"code", "message"}}`).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct RemoteError {
    pub status: u16,
    /// The error's kind, as the store names it (`not_found`, `denied`, …).
    pub code: String,
    pub message: String,
}

/// Where the node's API is.
enum Target {
    Tcp {
        host_port: String,
        tls: Option<(Arc<rustls::ClientConfig>, String)>,
    },
    Quic {
        node: String,
        conn: iroh::endpoint::Connection,
        endpoint: iroh::Endpoint,
    },
}

/// A connection to one node's API, signed in with a token.
pub struct NodeClient {
    target: Target,
    /// What the `Host` header says.
    authority: String,
    token: Option<String>,
    conn: tokio::sync::Mutex<Option<SendRequest<Body>>>,
}

impl NodeClient {
    /// The node's base URL for people (what a browser opens): the
    /// `http(s)://HOST:PORT` connected to, or for QUIC a placeholder host.
    pub fn base_url(&self) -> String {
        match &self.target {
            Target::Tcp { tls: None, .. } => format!("http://{}", self.authority),
            Target::Tcp { tls: Some(_), .. } => format!("https://{}", self.authority),
            Target::Quic { .. } => "http://NODE".to_owned(),
        }
    }

    /// `url`: `http://HOST:PORT`, `https://HOST:PORT` (checked against the
    /// system's roots and `SSL_CERT_FILE`), or `NODE_ID@HOST:PORT` (QUIC;
    /// the handshake proves the node's id). `token`: sent as a bearer token.
    pub async fn connect(url: &str, token: Option<String>) -> anyhow::Result<NodeClient> {
        let url = url.trim_end_matches('/');
        let (target, authority) = if let Some(rest) = url.strip_prefix("http://") {
            let host_port = with_port(rest, 80);
            (
                Target::Tcp {
                    host_port: host_port.clone(),
                    tls: None,
                },
                host_port,
            )
        } else if let Some(rest) = url.strip_prefix("https://") {
            let host_port = with_port(rest, 443);
            let host = host_of(&host_port).to_owned();
            (
                Target::Tcp {
                    host_port: host_port.clone(),
                    tls: Some((tls_config()?, host)),
                },
                host_port,
            )
        } else {
            let node = url.strip_prefix("quic://").unwrap_or(url);
            crate::parse_node_addr(node)?;
            let (endpoint, conn) = connect_quic(node, crate::ALPN_HTTP).await?;
            (
                Target::Quic {
                    node: node.to_owned(),
                    conn,
                    endpoint,
                },
                "alknet".to_owned(),
            )
        };
        let client = NodeClient {
            target,
            authority,
            token,
            conn: tokio::sync::Mutex::new(None),
        };
        // Connect now, so a wrong address fails before any work starts.
        *client.conn.lock().await = Some(client.open().await?);
        Ok(client)
    }

    async fn open(&self) -> anyhow::Result<SendRequest<Body>> {
        match &self.target {
            Target::Tcp { host_port, tls } => {
                let tcp = tokio::net::TcpStream::connect(host_port)
                    .await
                    .map_err(|e| connect_error(host_port, &e))?;
                tcp.set_nodelay(true).ok();
                match tls {
                    None => handshake(tcp).await,
                    Some((config, host)) => {
                        let name = rustls::pki_types::ServerName::try_from(host.clone())
                            .map_err(|e| connect_error(host_port, &e))?;
                        let stream = tokio_rustls::TlsConnector::from(config.clone())
                            .connect(name, tcp)
                            .await
                            .map_err(|e| connect_error(host_port, &e))?;
                        handshake(stream).await
                    }
                }
            }
            Target::Quic { node, conn, .. } => {
                let (send, recv) = conn.open_bi().await.map_err(|e| connect_error(node, &e))?;
                handshake(tokio::io::join(recv, send)).await
            }
        }
    }

    /// Sends one request; an answer that is not 2xx or 304 becomes a
    /// [`RemoteError`]. `path` starts with `/` and is already encoded.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(header::HeaderName, String)],
        body: Body,
    ) -> anyhow::Result<Response<Incoming>> {
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, &self.authority)
            .header(header::USER_AGENT, concat!("alknet/", env!("CARGO_PKG_VERSION")));
        if let Some(t) = &self.token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        for (name, value) in headers {
            request = request.header(name, value);
        }
        let request = request.body(body)?;
        let mut slot = self.conn.lock().await;
        if slot.as_ref().is_none_or(SendRequest::is_closed) {
            *slot = Some(self.open().await?);
        }
        let sender = slot.as_mut().expect("just opened");
        sender.ready().await?;
        let response = sender.send_request(request).await?;
        drop(slot);
        let status = response.status();
        if status.is_success() || status == StatusCode::NOT_MODIFIED {
            return Ok(response);
        }
        let bytes = Limited::new(response.into_body(), MAX_JSON)
            .collect()
            .await
            .map_err(|e| anyhow::anyhow!("reading the node's answer: {e}"))?
            .to_bytes();
        let parsed: Option<serde_json::Value> = serde_json::from_slice(&bytes).ok();
        let field = |name: &str| {
            parsed
                .as_ref()
                .and_then(|v| v["error"][name].as_str())
                .map(str::to_owned)
        };
        let mut message = field("message").unwrap_or_else(|| format!("the node answered {status}"));
        if status == StatusCode::UNAUTHORIZED {
            message = match self.token {
                None => "the node wants a token and none was given (set ALKNET_TOKEN)".into(),
                Some(_) => "the node refused the token (revoked, expired or mistyped)".into(),
            };
        }
        Err(RemoteError {
            status: status.as_u16(),
            code: field("code").unwrap_or_else(|| "error".into()),
            message,
        }
        .into())
    }

    /// A request with an optional JSON body whose answer is JSON.
    pub async fn json<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> anyhow::Result<T> {
        let (headers, body) = match body {
            Some(v) => (
                vec![(header::CONTENT_TYPE, "application/json".to_owned())],
                full(serde_json::to_vec(v)?),
            ),
            None => (Vec::new(), empty()),
        };
        let response = self.send(method, path, &headers, body).await?;
        read_json(response).await
    }

    /// Closes the connection and, over QUIC, the endpoint.
    pub async fn close(self) {
        drop(self.conn.into_inner());
        if let Target::Quic { conn, endpoint, .. } = self.target {
            conn.close(0u32.into(), b"bye");
            endpoint.close().await;
        }
    }
}

/// Reads a JSON answer (at most 64 MiB).
pub async fn read_json<T: DeserializeOwned>(response: Response<Incoming>) -> anyhow::Result<T> {
    let bytes = Limited::new(response.into_body(), MAX_JSON)
        .collect()
        .await
        .map_err(|e| anyhow::anyhow!("reading the node's answer: {e}"))?
        .to_bytes();
    serde_json::from_slice(&bytes).map_err(|e| anyhow::anyhow!("the node's answer is not what was expected: {e}"))
}

/// An answer's body, read a chunk at a time as it arrives.
pub struct Chunks(Incoming);

impl Chunks {
    pub fn of(response: Response<Incoming>) -> Chunks {
        Chunks(response.into_body())
    }

    /// The next chunk of data; `None` at the end.
    pub async fn next(&mut self) -> anyhow::Result<Option<Bytes>> {
        while let Some(frame) = self.0.frame().await {
            let frame = frame.map_err(|e| anyhow::anyhow!("the node's answer broke off: {e}"))?;
            if let Ok(data) = frame.into_data() {
                return Ok(Some(data));
            }
        }
        Ok(None)
    }
}

/// An empty request body.
pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed()
}

/// A request body held in memory (small JSON).
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).map_err(|never| match never {}).boxed()
}

/// A request body streamed from `reader`, 1 MiB at a time.
pub fn stream(reader: impl AsyncRead + Send + Sync + 'static) -> Body {
    use futures_util::TryStreamExt;
    let chunks = tokio_util::io::ReaderStream::with_capacity(reader, 1 << 20).map_ok(hyper::body::Frame::data);
    http_body_util::StreamBody::new(chunks).boxed()
}

/// `s` percent-encoded for a URL path: every byte but the unreserved ones
/// and `/`.
pub fn encode_path(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/@".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `s` percent-encoded for a query value (like [`encode_path`], `/` too).
pub fn encode_query(s: &str) -> String {
    encode_path(s).replace('/', "%2F")
}

async fn handshake<S: AsyncRead + AsyncWrite + Send + Unpin + 'static>(io: S) -> anyhow::Result<SendRequest<Body>> {
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!("http client connection: {e}");
        }
    });
    Ok(sender)
}

fn with_port(host: &str, port: u16) -> String {
    let bracketed_v6 = host.starts_with('[') && host.ends_with(']');
    if host.rsplit_once(':').is_some_and(|(_, p)| p.parse::<u16>().is_ok()) && !bracketed_v6 {
        host.to_owned()
    } else {
        format!("{host}:{port}")
    }
}

fn host_of(host_port: &str) -> &str {
    let host = host_port.rsplit_once(':').map_or(host_port, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}

/// TLS as a client: the system's roots (and `SSL_CERT_FILE`), ring only.
fn tls_config() -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    for cert in found.certs {
        roots.add(cert).ok();
    }
    if roots.is_empty() {
        anyhow::bail!("no trusted TLS roots found (install ca-certificates, or set SSL_CERT_FILE)");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_encode_every_byte_a_url_would_misread() {
        assert_eq!(encode_path("a b/c#d?e%f"), "a%20b/c%23d%3Fe%25f");
        assert_eq!(encode_path("snap@main@3/é"), "snap@main@3/%C3%A9");
        assert_eq!(encode_query("a/b&c"), "a%2Fb%26c");
    }

    #[test]
    fn ports_default_by_scheme() {
        assert_eq!(with_port("example.org", 443), "example.org:443");
        assert_eq!(with_port("example.org:8443", 443), "example.org:8443");
        assert_eq!(with_port("[::1]", 80), "[::1]:80");
        assert_eq!(with_port("[::1]:81", 80), "[::1]:81");
        assert_eq!(host_of("[::1]:81"), "::1");
        assert_eq!(host_of("example.org:8443"), "example.org");
    }
}
