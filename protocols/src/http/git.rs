//! git's smart HTTP protocol on the node's HTTP server: `GET
//! /REPO[.git]/info/refs?service=git-upload-pack|git-receive-pack` answers
//! with the advertisement, and each `POST /REPO[.git]/git-upload-pack` or
//! `git-receive-pack` is one stateless request to the forge's state
//! machines — the same ones SSH runs (`alknet_forge::Mode`). Protocol v2
//! comes with `Git-Protocol: version=2`.
//!
//! Request bodies stream into the forge (gzip inflated when git sends it
//! so, chunked when a push outgrows `http.postBuffer`); answers stream out
//! in 64 KiB chunks, never a flush per pkt-line. Access is the forge's one
//! rule (`Forge::authorize`): no token where one is needed is 401 with
//! `WWW-Authenticate: Basic`, a repository the caller may not read is 404
//! like a missing one, and a push without a `write` grant 403.

use std::io::Write;

use alknet_forge::{Mode, Refusal, Service, advertise, receive_pack, upload_pack};
use alknet_fs::Principal;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::TryStreamExt;
use serde::Deserialize;
use tokio_util::io::{StreamReader, SyncIoBridge};

use super::api::{ApiError, App, blocking, token_of};

/// Bytes of answer gathered before they go out as one chunk.
const CHUNK: usize = 64 * 1024;

pub(super) fn routes() -> Router<App> {
    Router::new()
        .route("/{repo}/info/refs", get(info_refs))
        .route("/{repo}/git-upload-pack", post(upload))
        .route("/{repo}/git-receive-pack", post(receive))
}

#[derive(Deserialize)]
struct InfoQuery {
    service: Option<String>,
}

/// Why a request for a repository is turned away, before any protocol's
/// wording: git's answers are [`ApiError`]s, Git LFS's its own JSON.
pub(super) enum Turned {
    /// No token, a bad one, or nobody signed in asking for what is hidden.
    SignIn,
    NotFound(String),
    Forbidden(String),
    Failed(ApiError),
}

impl From<Turned> for ApiError {
    fn from(t: Turned) -> ApiError {
        match t {
            Turned::SignIn => ApiError::unauthorized(),
            Turned::NotFound(m) => ApiError::new(StatusCode::NOT_FOUND, "not_found", m),
            Turned::Forbidden(m) => ApiError::forbidden(m),
            Turned::Failed(e) => e,
        }
    }
}

/// The repository `path` names and the caller (`None`: nobody signed in),
/// if the caller may use `service` on it — the forge's one rule.
pub(super) async fn allowed(
    app: &App,
    headers: &HeaderMap,
    path: String,
    service: Service,
) -> Result<(String, Option<Principal>), Turned> {
    let who = match token_of(headers) {
        None => None,
        Some(token) => {
            let store = app.store.clone();
            match blocking(move || store.authenticate(&token).map_err(ApiError::from)).await {
                Ok(Some(p)) => Some(p),
                Ok(None) => return Err(Turned::SignIn),
                Err(e) => return Err(Turned::Failed(e)),
            }
        }
    };
    let forge = app.forge.clone();
    let caller = who.clone();
    let decided = blocking(move || Ok(forge.authorize(caller.as_ref(), &path, service)))
        .await
        .map_err(Turned::Failed)?;
    match decided {
        Ok(repo) => Ok((repo, who)),
        Err(Refusal::SignIn) => Err(Turned::SignIn),
        // Nobody signed in learns nothing from a 404: they are asked to sign in.
        Err(Refusal::Hidden(_)) if who.is_none() => Err(Turned::SignIn),
        Err(Refusal::Hidden(m)) => Err(Turned::NotFound(m)),
        Err(Refusal::Denied(m)) => Err(Turned::Forbidden(m)),
    }
}

/// [`allowed`], answered as git's smart HTTP answers.
async fn authorize(app: &App, headers: &HeaderMap, path: String, service: Service) -> Result<String, ApiError> {
    Ok(allowed(app, headers, path, service).await?.0)
}

fn v2(headers: &HeaderMap) -> bool {
    headers
        .get("git-protocol")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(':').any(|p| p.trim() == "version=2"))
}

async fn info_refs(
    State(app): State<App>,
    headers: HeaderMap,
    Path(repo): Path<String>,
    Query(q): Query<InfoQuery>,
) -> Result<Response, ApiError> {
    let service = match q.service.as_deref() {
        Some("git-upload-pack") => Service::UploadPack,
        Some("git-receive-pack") => Service::ReceivePack,
        Some(other) => {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "invalid",
                format!("unknown service {other:?}"),
            ));
        }
        None => {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "invalid",
                "only git's smart protocol is served (git 1.6.6 or newer)",
            ));
        }
    };
    let repo = authorize(&app, &headers, repo, service).await?;
    let v2 = v2(&headers) && service == Service::UploadPack;
    let forge = app.forge.clone();
    let body = stream_out(move |out| {
        if !v2 {
            // v0 answers start by naming the service.
            let line = format!("# service=git-{}\n", service.name());
            write!(out, "{:04x}{line}0000", line.len() + 4)?;
        }
        advertise(&forge, &repo, service, v2, out).map_err(std::io::Error::other)
    });
    Ok(git_response(
        &format!("application/x-git-{}-advertisement", service.name()),
        body,
    ))
}

async fn upload(
    State(app): State<App>,
    headers: HeaderMap,
    Path(repo): Path<String>,
    body: Body,
) -> Result<Response, ApiError> {
    rpc(app, headers, repo, Service::UploadPack, body).await
}

async fn receive(
    State(app): State<App>,
    headers: HeaderMap,
    Path(repo): Path<String>,
    body: Body,
) -> Result<Response, ApiError> {
    rpc(app, headers, repo, Service::ReceivePack, body).await
}

/// One stateless request: the body into the forge, its answer out.
async fn rpc(app: App, headers: HeaderMap, path: String, service: Service, body: Body) -> Result<Response, ApiError> {
    let (repo, who) = allowed(&app, &headers, path, service).await?;
    // A push is never anonymous (the forge's rule); a fetch may be.
    let user = who.map(|w| w.user).unwrap_or_default();
    let gzip = match headers.get(header::CONTENT_ENCODING).and_then(|v| v.to_str().ok()) {
        None | Some("identity") => false,
        Some("gzip" | "x-gzip") => true,
        Some(other) => {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "invalid",
                format!("Content-Encoding {other:?} is not understood"),
            ));
        }
    };
    let v2 = v2(&headers);
    let reader = StreamReader::new(body.into_data_stream().map_err(std::io::Error::other));
    let input = SyncIoBridge::new(reader);
    let forge = app.forge.clone();
    let started = std::time::Instant::now();
    let body = stream_out(move |out| {
        let input: Box<dyn std::io::Read> = if gzip {
            Box::new(flate2::read::GzDecoder::new(input))
        } else {
            Box::new(input)
        };
        let served = match service {
            Service::UploadPack => upload_pack(&forge, &repo, v2, Mode::Stateless, input, &mut *out).map(|()| {
                tracing::debug!(%repo, "git fetch over http");
            }),
            Service::ReceivePack => receive_pack(&forge, &repo, &user, Mode::Stateless, input, &mut *out).map(|push| {
                tracing::info!(%repo, updated = ?push.updated, refused = ?push.refused,
                    objects = push.objects, took = ?started.elapsed(), "git push over http");
            }),
        };
        match served {
            // The client's mistake: the forge told it in an ERR line, and
            // the answer ends cleanly.
            Err(e @ alknet_forge::Error::Protocol(_)) => {
                tracing::info!(%repo, "git {} over http refused: {e}", service.name());
                Ok(())
            }
            Err(alknet_forge::Error::Io(e))
                if gzip
                    && matches!(
                        e.kind(),
                        std::io::ErrorKind::InvalidInput | std::io::ErrorKind::InvalidData
                    ) =>
            {
                tracing::info!(%repo, "git {} over http: the body is not gzip: {e}", service.name());
                let text = format!("ERR the request body is not gzip: {e}\n");
                write!(out, "{:04x}{text}", text.len() + 4)
            }
            Err(e) => {
                tracing::warn!(%repo, "git {} over http failed: {e}", service.name());
                Err(std::io::Error::other(e))
            }
            Ok(()) => Ok(()),
        }
    });
    Ok(git_response(
        &format!("application/x-git-{}-result", service.name()),
        body,
    ))
}

fn git_response(content_type: &str, body: Body) -> Response {
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, content_type.to_owned()),
            (header::CACHE_CONTROL, "no-cache".to_owned()),
        ],
        body,
    )
        .into_response()
}

/// A body written by `write` on a blocking thread, sent in [`CHUNK`]s. An
/// error after the answer started ends the body early (git reports it; the
/// forge has already written its `ERR` line where it could).
fn stream_out(write: impl FnOnce(&mut Chunks) -> std::io::Result<()> + Send + 'static) -> Body {
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(8);
    tokio::task::spawn_blocking(move || {
        let mut out = Chunks {
            tx,
            buf: Vec::with_capacity(CHUNK),
        };
        let written = write(&mut out).and_then(|()| out.send());
        if let Err(e) = written {
            out.tx.blocking_send(Err(e)).ok();
        }
    });
    Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
}

/// The writer behind [`stream_out`]: gathers bytes, hands on full chunks;
/// `flush` sends nothing early (git's pkt-line flushes would make tiny
/// chunks).
struct Chunks {
    tx: tokio::sync::mpsc::Sender<std::io::Result<Bytes>>,
    buf: Vec<u8>,
}

impl Chunks {
    fn send(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK)));
        self.tx
            .blocking_send(Ok(chunk))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the client went away"))
    }
}

impl Write for Chunks {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.send()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
