//! Git LFS over HTTP (git-lfs's `docs/api/`): the batch API, the `basic`
//! transfer (downloads with `Range`, uploads streamed and hashed as they
//! arrive), `verify`, and file locks, under `/REPO.git/info/lfs/`. Objects
//! are the forge's (`alknet_forge::LfsUpload`, attachments `lfs/OID`);
//! access is the forge's one rule: `read` to download and list locks,
//! `write` to upload and lock. A download needs a read grant on a
//! repository that has the object: naming an oid is never enough.

use alknet_forge::{Service, valid_oid};
use alknet_fs::{LockQuery, Principal};
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::{Value, json};

use super::api::{App, blocking, download};
use super::git::{Turned, allowed};

/// LFS's media type.
const MEDIA: &str = "application/vnd.git-lfs+json";
/// The most objects one batch may name (git-lfs sends 100 at a time).
const MAX_BATCH: usize = 1000;
/// The most bytes of a JSON request.
const MAX_JSON: usize = 4 << 20;
/// What `expires_in` says of the actions handed out (they carry the
/// client's own credentials, which outlive this).
const EXPIRES_IN: u64 = 3600;
/// Locks per page.
const LOCK_PAGE: usize = 100;

pub(super) fn routes() -> Router<App> {
    Router::new()
        .route("/{repo}/info/lfs/objects/batch", post(batch))
        .route("/{repo}/info/lfs/objects/{oid}", get(fetch).put(upload))
        .route("/{repo}/info/lfs/verify", post(verify))
        .route("/{repo}/info/lfs/locks", get(list_locks).post(create_lock))
        .route("/{repo}/info/lfs/locks/verify", post(verify_locks))
        .route("/{repo}/info/lfs/locks/{id}/unlock", post(unlock))
}

/// An LFS error answer: `{"message"}` in LFS's media type; a 401 also
/// names the scheme in `LFS-Authenticate`, as git-lfs expects.
struct LfsError {
    status: StatusCode,
    message: String,
    extra: Option<(&'static str, Value)>,
}

impl LfsError {
    fn new(status: StatusCode, message: impl Into<String>) -> LfsError {
        LfsError {
            status,
            message: message.into(),
            extra: None,
        }
    }
}

impl From<Turned> for LfsError {
    fn from(t: Turned) -> LfsError {
        match t {
            Turned::SignIn => LfsError::new(StatusCode::UNAUTHORIZED, "a token is needed (as the password)"),
            Turned::NotFound(m) => LfsError::new(StatusCode::NOT_FOUND, m),
            Turned::Forbidden(m) => LfsError::new(StatusCode::FORBIDDEN, m),
            Turned::Failed(e) => {
                let response = e.into_response();
                LfsError::new(response.status(), "the request failed")
            }
        }
    }
}

impl From<alknet_fs::Error> for LfsError {
    fn from(e: alknet_fs::Error) -> LfsError {
        let status = match e.kind() {
            "not_found" => StatusCode::NOT_FOUND,
            "denied" => StatusCode::FORBIDDEN,
            "conflict" | "exists" => StatusCode::CONFLICT,
            "invalid" => StatusCode::UNPROCESSABLE_ENTITY,
            "no_space" => StatusCode::INSUFFICIENT_STORAGE,
            "too_large" => StatusCode::PAYLOAD_TOO_LARGE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if status.is_server_error() {
            tracing::warn!("lfs: {e}");
        }
        LfsError::new(status, e.to_string())
    }
}

impl From<alknet_forge::Error> for LfsError {
    fn from(e: alknet_forge::Error) -> LfsError {
        match e {
            alknet_forge::Error::Store(e) => e.into(),
            alknet_forge::Error::Protocol(m) => LfsError::new(StatusCode::UNPROCESSABLE_ENTITY, m),
            e => {
                tracing::warn!("lfs: {e}");
                LfsError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
            }
        }
    }
}

impl From<super::api::ApiError> for LfsError {
    fn from(e: super::api::ApiError) -> LfsError {
        Turned::Failed(e).into()
    }
}

impl IntoResponse for LfsError {
    fn into_response(self) -> Response {
        let mut body = json!({"message": self.message});
        if let Some((key, value)) = self.extra {
            body[key] = value;
        }
        let mut response = lfs_json(self.status, &body);
        if self.status == StatusCode::UNAUTHORIZED {
            let h = response.headers_mut();
            h.insert("lfs-authenticate", HeaderValue::from_static("Basic realm=\"alknet\""));
            h.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"alknet\""),
            );
        }
        response
    }
}

type Answer = Result<Response, LfsError>;

fn lfs_json(status: StatusCode, body: &Value) -> Response {
    let mut response = (status, body.to_string()).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(MEDIA));
    response
}

/// A JSON request body (LFS's media type, a `charset` tolerated, or plain
/// JSON), at most [`MAX_JSON`] bytes.
async fn json_body<T: serde::de::DeserializeOwned>(headers: &HeaderMap, body: Body) -> Result<T, LfsError> {
    let kind = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or("").trim().to_ascii_lowercase());
    if let Some(kind) = kind
        && kind != MEDIA
        && kind != "application/json"
    {
        return Err(LfsError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("send {MEDIA}, not {kind}"),
        ));
    }
    let bytes = axum::body::to_bytes(body, MAX_JSON)
        .await
        .map_err(|_| LfsError::new(StatusCode::PAYLOAD_TOO_LARGE, "the request is too large"))?;
    serde_json::from_slice(&bytes).map_err(|e| {
        LfsError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("the request is not valid: {e}"),
        )
    })
}

/// `scheme://host/REPO/info/lfs`, for the actions handed out.
fn base(headers: &HeaderMap, frontend: Option<&super::api::Frontend>, repo: &str) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("localhost");
    let scheme = if frontend.is_some_and(|f| f.0 == "https") {
        "https"
    } else {
        "http"
    };
    format!("{scheme}://{host}/{repo}/info/lfs")
}

#[derive(Deserialize)]
struct BatchRequest {
    operation: String,
    #[serde(default)]
    transfers: Vec<String>,
    objects: Vec<Value>,
    #[serde(default)]
    hash_algo: Option<String>,
}

async fn batch(
    State(app): State<App>,
    headers: HeaderMap,
    frontend: Option<axum::Extension<super::api::Frontend>>,
    Path(path): Path<String>,
    body: Body,
) -> Answer {
    let req: BatchRequest = json_body(&headers, body).await?;
    let service = match req.operation.as_str() {
        "download" => Service::UploadPack,
        "upload" => Service::ReceivePack,
        other => {
            return Err(LfsError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("operation {other:?}: use download or upload"),
            ));
        }
    };
    let (repo, _) = allowed(&app, &headers, path.clone(), service).await?;
    if req.hash_algo.as_deref().is_some_and(|h| h != "sha256") {
        return Err(LfsError::new(StatusCode::CONFLICT, "only sha256 object ids are served"));
    }
    if !req.transfers.is_empty() && !req.transfers.iter().any(|t| t == "basic") {
        return Err(LfsError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "only the basic transfer is served",
        ));
    }
    if req.objects.len() > MAX_BATCH {
        return Err(LfsError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("{} objects in one batch; at most {MAX_BATCH}", req.objects.len()),
        ));
    }
    let base = base(&headers, frontend.as_ref().map(|f| &f.0), &path);
    // The actions carry the credentials this request came with.
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let action = move |href: String| {
        let mut a = json!({"href": href, "expires_in": EXPIRES_IN});
        if let Some(auth) = &auth {
            a["header"] = json!({"Authorization": auth});
        }
        a
    };
    let forge = app.forge.clone();
    let upload = service == Service::ReceivePack;
    let objects = blocking(move || {
        let mut out = Vec::with_capacity(req.objects.len());
        for object in req.objects {
            let oid = object["oid"].as_str().unwrap_or_default().to_owned();
            let size = object["size"].as_i64();
            let error = |code: u16, message: &str| json!({"oid": oid, "size": size, "error": {"code": code, "message": message}});
            let Some(size) = size.filter(|s| *s >= 0) else {
                out.push(error(422, "the size must be a number of bytes, 0 or more"));
                continue;
            };
            if !valid_oid(&oid) {
                out.push(error(422, "the oid must be 64 lower-case hex digits (SHA-256)"));
                continue;
            }
            let have = forge.lfs_object(&repo, &oid).map_err(super::api::ApiError::from)?;
            let mut answer = json!({"oid": oid, "size": size, "authenticated": true});
            match (upload, have) {
                (true, Some(_)) => {}
                (true, None) => {
                    answer["actions"] = json!({
                        "upload": action(format!("{base}/objects/{oid}")),
                        "verify": action(format!("{base}/verify")),
                    });
                }
                (false, Some(a)) if a.size == size as u64 => {
                    answer["actions"] = json!({"download": action(format!("{base}/objects/{oid}"))});
                }
                (false, Some(_)) => {
                    out.push(error(422, "the object has a different size here"));
                    continue;
                }
                (false, None) => {
                    out.push(error(404, "object does not exist"));
                    continue;
                }
            }
            out.push(answer);
        }
        // The objects still to upload must fit the repository's quota.
        let wanted: u64 = out
            .iter()
            .filter(|o| o["actions"]["upload"].is_object())
            .filter_map(|o| o["size"].as_u64())
            .sum();
        let full = match forge.lfs_headroom(&repo).map_err(super::api::ApiError::from)? {
            Some(left) if upload && wanted > left => Some(left),
            _ => None,
        };
        Ok((out, full))
    })
    .await?;
    let (objects, full) = objects;
    if let Some(left) = full {
        return Err(LfsError::new(
            StatusCode::INSUFFICIENT_STORAGE,
            format!("the repository's quota has room for {left} more bytes"),
        ));
    }
    Ok(lfs_json(
        StatusCode::OK,
        &json!({"transfer": "basic", "objects": objects, "hash_algo": "sha256"}),
    ))
}

async fn fetch(State(app): State<App>, headers: HeaderMap, Path((path, oid)): Path<(String, String)>) -> Answer {
    let (repo, _) = allowed(&app, &headers, path, Service::UploadPack).await?;
    let forge = app.forge.clone();
    let lookup = oid.clone();
    let object = blocking(move || Ok(forge.lfs_object(&repo, &lookup)?)).await?;
    let Some(object) = object else {
        return Err(LfsError::new(
            StatusCode::NOT_FOUND,
            format!("object {oid} does not exist"),
        ));
    };
    Ok(download(&app, &headers, object.hash, object.size).await?)
}

async fn upload(
    State(app): State<App>,
    headers: HeaderMap,
    Path((path, oid)): Path<(String, String)>,
    body: Body,
) -> Answer {
    let (repo, _) = allowed(&app, &headers, path, Service::ReceivePack).await?;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let mut upload = app.forge.lfs_upload(&repo, &oid).await?;
    let mut data = body.into_data_stream();
    while let Some(chunk) = data.next().await {
        let chunk: Bytes =
            chunk.map_err(|e| LfsError::new(StatusCode::BAD_REQUEST, format!("the upload broke off: {e}")))?;
        app.metrics.bytes_in(chunk.len() as u64);
        upload.write(chunk).await?;
    }
    let kept = upload.finish(declared).await?;
    tracing::info!(%repo, %oid, size = kept.size, "lfs object stored");
    Ok(StatusCode::OK.into_response())
}

#[derive(Deserialize)]
struct Pointer {
    oid: String,
    size: i64,
}

async fn verify(State(app): State<App>, headers: HeaderMap, Path(path): Path<String>, body: Body) -> Answer {
    let (repo, _) = allowed(&app, &headers, path, Service::ReceivePack).await?;
    let p: Pointer = json_body(&headers, body).await?;
    let forge = app.forge.clone();
    let oid = p.oid.clone();
    let object = blocking(move || Ok(forge.lfs_object(&repo, &oid)?)).await?;
    match object {
        Some(a) if i64::try_from(a.size).ok() == Some(p.size) => Ok(lfs_json(StatusCode::OK, &json!({}))),
        Some(a) => Err(LfsError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("object {} has {} bytes, not {}", p.oid, a.size, p.size),
        )),
        None => Err(LfsError::new(
            StatusCode::NOT_FOUND,
            format!("object {} does not exist", p.oid),
        )),
    }
}

fn lock_json(l: &alknet_fs::Lock) -> Value {
    json!({
        "id": l.id.to_string(),
        "path": l.path,
        "locked_at": alknet_fs::display::utc_timestamp(l.locked_ms),
        "owner": {"name": l.owner},
    })
}

/// The signed-in caller (locks need one: they have an owner).
fn signed_in(who: Option<Principal>) -> Result<Principal, LfsError> {
    who.ok_or_else(|| Turned::SignIn.into())
}

#[derive(Deserialize)]
struct NewLock {
    path: String,
}

async fn create_lock(State(app): State<App>, headers: HeaderMap, Path(path): Path<String>, body: Body) -> Answer {
    let (repo, who) = allowed(&app, &headers, path, Service::ReceivePack).await?;
    let who = signed_in(who)?;
    let req: NewLock = json_body(&headers, body).await?;
    let store = app.store.clone();
    let made = blocking(move || Ok(store.lock(&repo, &req.path, &who.user))).await?;
    match made {
        Ok(lock) => Ok(lfs_json(StatusCode::CREATED, &json!({"lock": lock_json(&lock)}))),
        Err(alknet_fs::Error::Locked { path, owner, id }) => {
            let held = alknet_fs::Lock {
                id,
                path: path.clone(),
                owner: owner.clone(),
                locked_ms: 0,
            };
            let mut e = LfsError::new(StatusCode::CONFLICT, format!("{path} is already locked by {owner}"));
            e.extra = Some(("lock", lock_json(&held)));
            Err(e)
        }
        Err(e) => Err(e.into()),
    }
}

#[derive(Deserialize)]
struct LocksQuery {
    path: Option<String>,
    id: Option<String>,
    cursor: Option<String>,
    limit: Option<usize>,
}

/// A page of locks and the cursor of the next (empty at the end).
fn page(locks: &[alknet_fs::Lock], limit: usize) -> (Vec<&alknet_fs::Lock>, String) {
    let next = if locks.len() > limit {
        locks[limit - 1].id.to_string()
    } else {
        String::new()
    };
    (locks.iter().take(limit).collect(), next)
}

fn cursor(raw: Option<&str>) -> Result<Option<i64>, LfsError> {
    match raw.filter(|c| !c.is_empty()) {
        None => Ok(None),
        Some(c) => c
            .parse()
            .map(Some)
            .map_err(|_| LfsError::new(StatusCode::UNPROCESSABLE_ENTITY, format!("cursor {c:?} is not ours"))),
    }
}

async fn list_locks(
    State(app): State<App>,
    headers: HeaderMap,
    Path(path): Path<String>,
    Query(q): Query<LocksQuery>,
) -> Answer {
    let (repo, _) = allowed(&app, &headers, path, Service::UploadPack).await?;
    let limit = q.limit.unwrap_or(LOCK_PAGE).clamp(1, LOCK_PAGE);
    let after = cursor(q.cursor.as_deref())?;
    // An id that is no number names no lock.
    let id =
        q.id.as_deref()
            .filter(|i| !i.is_empty())
            .map(|i| i.parse::<i64>().unwrap_or(-1));
    let store = app.store.clone();
    let locks = blocking(move || {
        let query = LockQuery {
            path: q.path.as_deref().filter(|p| !p.is_empty()),
            id,
            after,
            limit: limit + 1,
        };
        Ok(store.locks(&repo, &query)?)
    })
    .await?;
    let (shown, next) = page(&locks, limit);
    let shown: Vec<Value> = shown.into_iter().map(lock_json).collect();
    Ok(lfs_json(StatusCode::OK, &json!({"locks": shown, "next_cursor": next})))
}

#[derive(Deserialize, Default)]
struct VerifyLocks {
    cursor: Option<String>,
    limit: Option<usize>,
}

async fn verify_locks(State(app): State<App>, headers: HeaderMap, Path(path): Path<String>, body: Body) -> Answer {
    let (repo, who) = allowed(&app, &headers, path, Service::ReceivePack).await?;
    let who = signed_in(who)?;
    let req: VerifyLocks = json_body(&headers, body).await?;
    let limit = req.limit.unwrap_or(LOCK_PAGE).clamp(1, LOCK_PAGE);
    let after = cursor(req.cursor.as_deref())?;
    let store = app.store.clone();
    let locks = blocking(move || {
        let query = LockQuery {
            after,
            limit: limit + 1,
            ..LockQuery::default()
        };
        Ok(store.locks(&repo, &query)?)
    })
    .await?;
    let (shown, next) = page(&locks, limit);
    let (ours, theirs): (Vec<_>, Vec<_>) = shown.into_iter().partition(|l| l.owner == who.user);
    let ours: Vec<Value> = ours.into_iter().map(lock_json).collect();
    let theirs: Vec<Value> = theirs.into_iter().map(lock_json).collect();
    Ok(lfs_json(
        StatusCode::OK,
        &json!({"ours": ours, "theirs": theirs, "next_cursor": next}),
    ))
}

#[derive(Deserialize, Default)]
struct Unlock {
    #[serde(default)]
    force: bool,
}

async fn unlock(
    State(app): State<App>,
    headers: HeaderMap,
    Path((path, id)): Path<(String, String)>,
    body: Body,
) -> Answer {
    let (repo, who) = allowed(&app, &headers, path, Service::ReceivePack).await?;
    let who = signed_in(who)?;
    let req: Unlock = json_body(&headers, body).await?;
    let id: i64 = id
        .parse()
        .map_err(|_| LfsError::new(StatusCode::NOT_FOUND, format!("lock {id:?} does not exist")))?;
    let store = app.store.clone();
    let lock = blocking(move || Ok(store.unlock_as(&who, &repo, id, req.force))).await??;
    Ok(lfs_json(StatusCode::OK, &json!({"lock": lock_json(&lock)})))
}
