//! The REST API: one table of routes ([`ROUTES`]) builds both the router
//! and the OpenAPI document, so the two cannot drift apart.
//!
//! Every handler is a thin adapter: it checks the caller (a token, see
//! `alknet_fs::Principal`), asks the store for the bucket's level, and
//! calls `alknet-fs` on a blocking thread. Errors are JSON
//! `{"error": {"code", "message"}}`. A bucket the caller may not read is
//! answered exactly like one that does not exist (404); one it may read
//! but not change gets 403.

use std::sync::Arc;
use std::time::Instant;

use alknet_forge::Forge;
use alknet_fs::{
    Address, BlobHash, BucketPath, Entry, Expect, Kind, Level, OpenOptions, Principal, Store, Tree, Version,
};
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, MethodRouter, on};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::Metrics;

/// Entries per page of a listing, by default and at most.
const PAGE: usize = 1000;
const MAX_PAGE: usize = 10_000;

#[derive(Clone)]
pub(super) struct App {
    pub(super) store: Store,
    pub(super) forge: Forge,
    pub(super) metrics: Arc<Metrics>,
    metrics_public: bool,
    pub(super) site: Arc<super::Site>,
}

/// One route: what the router serves and what the document says.
pub struct Route {
    pub method: &'static str,
    /// axum's syntax: `{name}` for a segment, `{*name}` for the rest.
    pub path: &'static str,
    pub summary: &'static str,
    /// Who may call it: `public`, `token`, `read`, `write` or `admin`.
    pub access: &'static str,
    /// The request body: `json` or `bytes`.
    pub body: Option<&'static str>,
    /// What a success returns: `json`, `bytes`, `sse` or `text`.
    pub answer: &'static str,
}

const fn r(
    method: &'static str,
    path: &'static str,
    summary: &'static str,
    access: &'static str,
    body: Option<&'static str>,
    answer: &'static str,
) -> Route {
    Route {
        method,
        path,
        summary,
        access,
        body,
        answer,
    }
}

const B: &str = "/api/v1/buckets/{bucket}";
const BR: &str = "/api/v1/buckets/{bucket}/branches/{branch}";

/// Every route of the API.
pub const ROUTES: &[Route] = &[
    r("GET", "/api/v1/openapi.json", "This document.", "public", None, "json"),
    r(
        "GET",
        "/api/v1/whoami",
        "The caller: user, admin, read-only token.",
        "token",
        None,
        "json",
    ),
    r(
        "GET",
        "/api/v1/buckets",
        "Buckets the caller may read.",
        "token",
        None,
        "json",
    ),
    r(
        "POST",
        "/api/v1/buckets",
        "Create a bucket {name, kind: drive|repo}.",
        "admin",
        Some("json"),
        "json",
    ),
    r(
        "DELETE",
        B,
        "Delete a bucket (or repository) and its history.",
        "admin",
        None,
        "json",
    ),
    r(
        "PUT",
        "/api/v1/buckets/{bucket}/quota",
        "Set the quota {quota: bytes|null}.",
        "admin",
        Some("json"),
        "json",
    ),
    r(
        "GET",
        "/api/v1/repos",
        "Repositories the caller may read: HEAD, refs, packs, LFS objects and bytes.",
        "token",
        None,
        "json",
    ),
    r(
        "GET",
        "/api/v1/buckets/{bucket}/branches",
        "The bucket's branches.",
        "read",
        None,
        "json",
    ),
    r(
        "POST",
        "/api/v1/buckets/{bucket}/branches",
        "Fork a branch {name, from: BRANCH[@VERSION]}.",
        "write",
        Some("json"),
        "json",
    ),
    r(
        "DELETE",
        BR,
        "Delete a branch no other branch was forked from.",
        "write",
        None,
        "json",
    ),
    r(
        "GET",
        "/api/v1/buckets/{bucket}/branches/{branch}/snapshots",
        "The branch's snapshots.",
        "read",
        None,
        "json",
    ),
    r(
        "POST",
        "/api/v1/buckets/{bucket}/branches/{branch}/snapshots",
        "Record a snapshot {name?}.",
        "write",
        Some("json"),
        "json",
    ),
    r(
        "GET",
        "/api/v1/buckets/{bucket}/branches/{branch}/log",
        "Commits, newest first (?limit, ?before=VERSION).",
        "read",
        None,
        "json",
    ),
    r(
        "GET",
        "/api/v1/buckets/{bucket}/branches/{branch}/diff",
        "Changes from this branch to ?to=BRANCH[@VERSION].",
        "read",
        None,
        "json",
    ),
    r(
        "GET",
        "/api/v1/buckets/{bucket}/branches/{branch}/watch",
        "Commits as Server-Sent Events, from ?from=VERSION or Last-Event-ID.",
        "read",
        None,
        "sse",
    ),
    r(
        "POST",
        "/api/v1/buckets/{bucket}/branches/{branch}/mkdir",
        "Create a directory {path, parents?}.",
        "write",
        Some("json"),
        "json",
    ),
    r(
        "POST",
        "/api/v1/buckets/{bucket}/branches/{branch}/move",
        "Move or rename {from, to} (replaces a file at to).",
        "write",
        Some("json"),
        "json",
    ),
    r(
        "POST",
        "/api/v1/buckets/{bucket}/branches/{branch}/copy",
        "Copy a file {from, to} without copying its bytes.",
        "write",
        Some("json"),
        "json",
    ),
    r(
        "POST",
        "/api/v1/buckets/{bucket}/branches/{branch}/symlink",
        "Create a symlink {path, target}.",
        "write",
        Some("json"),
        "json",
    ),
    r(
        "POST",
        "/api/v1/buckets/{bucket}/branches/{branch}/prune",
        "Forget the history before {before: VERSION|SNAPSHOT}.",
        "admin",
        Some("json"),
        "json",
    ),
    r(
        "GET",
        "/api/v1/b/{bucket}/{branch}",
        "The root directory's listing (?after, ?limit).",
        "read",
        None,
        "json",
    ),
    r(
        "GET",
        "/api/v1/b/{bucket}/{branch}/{*path}",
        "A file's bytes (Range, If-None-Match), a directory's listing (?after, ?limit), or with ?stat an entry (?stat=follow: a symlink's target).",
        "read",
        None,
        "bytes",
    ),
    r(
        "PUT",
        "/api/v1/b/{bucket}/{branch}/{*path}",
        "Write a file from the body (streamed; If-Match, If-None-Match: *; ?mode, ?parents).",
        "write",
        Some("bytes"),
        "json",
    ),
    r(
        "DELETE",
        "/api/v1/b/{bucket}/{branch}/{*path}",
        "Remove a file, symlink or (?recursive) directory.",
        "write",
        None,
        "json",
    ),
    r(
        "POST",
        "/api/v1/gc",
        "Reclaim blobs no version references.",
        "admin",
        None,
        "json",
    ),
    r(
        "POST",
        "/api/v1/fsck",
        "Check the database and every blob.",
        "admin",
        None,
        "json",
    ),
    r("GET", "/api/v1/stats", "Counts and sizes.", "admin", None, "json"),
    r(
        "GET",
        "/api/v1/users",
        "Users, their keys and grants.",
        "admin",
        None,
        "json",
    ),
    r(
        "PUT",
        "/api/v1/users/{user}/grants/{bucket}",
        "Grant {level: read|write|admin}.",
        "admin",
        Some("json"),
        "json",
    ),
    r(
        "DELETE",
        "/api/v1/users/{user}/grants/{bucket}",
        "Take a grant away.",
        "admin",
        None,
        "json",
    ),
    r(
        "GET",
        "/api/v1/tokens",
        "Tokens (the caller's; every one for an admin).",
        "token",
        None,
        "json",
    ),
    r(
        "POST",
        "/api/v1/tokens",
        "Make a token {user?, name?, expires_days?, read_only?}; its text is in the answer only.",
        "token",
        Some("json"),
        "json",
    ),
    r(
        "DELETE",
        "/api/v1/tokens/{token}",
        "Revoke a token by id, name or prefix.",
        "token",
        None,
        "json",
    ),
    r(
        "GET",
        "/api/v1/shares",
        "The caller's share links (never their secrets).",
        "token",
        None,
        "json",
    ),
    r(
        "POST",
        "/api/v1/shares",
        "Make a share link {address, expires?, password?} of a file or directory at a fixed version (the head's if the address has none); its secret and URL are in the answer only.",
        "read",
        Some("json"),
        "json",
    ),
    r(
        "DELETE",
        "/api/v1/shares/{share}",
        "Revoke one of the caller's share links by id or prefix.",
        "token",
        None,
        "json",
    ),
    r(
        "GET",
        "/api/v1/peers",
        "Peers (other nodes this one syncs with), their grants and synced buckets.",
        "admin",
        None,
        "json",
    ),
    r(
        "GET",
        "/api/v1/sync",
        "Per peer and bucket: connected, commits behind, blobs missing and their bytes, the last error.",
        "admin",
        None,
        "json",
    ),
    r(
        "GET",
        "/metrics",
        "Prometheus metrics (an admin token unless http.metrics_public).",
        "admin",
        None,
        "text",
    ),
];

/// The handler of each route, in [`ROUTES`] order.
fn handler(i: usize) -> MethodRouter<App> {
    let filter = |m: &str| match m {
        "GET" => MethodFilter::GET,
        "POST" => MethodFilter::POST,
        "PUT" => MethodFilter::PUT,
        "DELETE" => MethodFilter::DELETE,
        other => unreachable!("no routes use {other}"),
    };
    let f = filter(ROUTES[i].method);
    match i {
        0 => on(f, openapi),
        1 => on(f, whoami),
        2 => on(f, list_buckets),
        3 => on(f, create_bucket),
        4 => on(f, delete_bucket),
        5 => on(f, set_quota),
        6 => on(f, list_repos),
        7 => on(f, list_branches),
        8 => on(f, create_branch),
        9 => on(f, delete_branch),
        10 => on(f, list_snapshots),
        11 => on(f, create_snapshot),
        12 => on(f, log),
        13 => on(f, diff),
        14 => on(f, watch),
        15 => on(f, mkdir),
        16 => on(f, move_entry),
        17 => on(f, copy_entry),
        18 => on(f, symlink),
        19 => on(f, prune),
        20 => on(f, get_root),
        21 => on(f, get_file),
        22 => on(f, put_file),
        23 => on(f, delete_file),
        24 => on(f, gc),
        25 => on(f, fsck),
        26 => on(f, stats),
        27 => on(f, list_users),
        28 => on(f, grant),
        29 => on(f, revoke),
        30 => on(f, list_tokens),
        31 => on(f, create_token),
        32 => on(f, revoke_token),
        33 => on(f, list_shares),
        34 => on(f, create_share),
        35 => on(f, revoke_share),
        36 => on(f, list_peers),
        37 => on(f, sync_status),
        38 => on(f, metrics),
        _ => unreachable!("one handler per route"),
    }
}

pub(crate) fn router(forge: Forge, metrics: Arc<Metrics>, metrics_public: bool, site: super::Site) -> Router {
    let app = App {
        store: forge.store().clone(),
        forge,
        metrics: metrics.clone(),
        metrics_public,
        site: Arc::new(site),
    };
    let routes = (0..ROUTES.len()).fold(Router::new(), |router, i| router.route(ROUTES[i].path, handler(i)));
    routes
        .merge(super::git::routes())
        .merge(super::lfs::routes())
        .merge(super::web::routes())
        .fallback(|uri: axum::http::Uri| async move {
            if uri.path().starts_with("/api/") {
                ApiError::new(StatusCode::NOT_FOUND, "no_route", "no such API route").into_response()
            } else {
                super::web::not_found().into_response()
            }
        })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method",
                "that method is not allowed here",
            )
        })
        .layer(axum::middleware::from_fn_with_state(app.clone(), count))
        .with_state(app)
}

/// Counts each answer by its status class.
async fn count(State(app): State<App>, request: Request, next: Next) -> Response {
    let frontend = request.extensions().get::<Frontend>().map_or("http", |f| f.0);
    let response = next.run(request).await;
    app.metrics.request(frontend, response.status().as_u16());
    response
}

/// Which listener a request came in on (set by the connection).
#[derive(Clone, Copy)]
pub(crate) struct Frontend(pub(crate) &'static str);

// ---- errors ---------------------------------------------------------------

/// An error answer: a status and `{"error": {"code", "message"}}`.
#[derive(Debug)]
pub(crate) struct ApiError {
    pub(super) status: StatusCode,
    pub(super) code: &'static str,
    pub(super) message: String,
}

impl ApiError {
    pub(super) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    pub(super) fn bad(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid", message)
    }

    pub(super) fn unauthorized() -> ApiError {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid token is needed: Authorization: Bearer alk_…",
        )
    }

    pub(super) fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, "denied", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::warn!(status = %self.status, "http: {}", self.message);
        }
        let body = json!({"error": {"code": self.code, "message": self.message}});
        let mut response = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            let h = response.headers_mut();
            h.append(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"alknet\""),
            );
            h.append(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"alknet\""),
            );
        }
        response
    }
}

impl From<alknet_fs::Error> for ApiError {
    fn from(e: alknet_fs::Error) -> ApiError {
        use alknet_fs::Error as E;
        let status = match &e {
            E::Changed(_) => StatusCode::PRECONDITION_FAILED,
            e => match e.kind() {
                "not_found" => StatusCode::NOT_FOUND,
                "denied" => StatusCode::FORBIDDEN,
                "exists" | "conflict" => StatusCode::CONFLICT,
                "invalid" => StatusCode::BAD_REQUEST,
                "read_only" => StatusCode::FORBIDDEN,
                "expired" => StatusCode::GONE,
                "too_large" => StatusCode::PAYLOAD_TOO_LARGE,
                "no_space" => StatusCode::INSUFFICIENT_STORAGE,
                "unavailable" => StatusCode::SERVICE_UNAVAILABLE,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            },
        };
        ApiError::new(status, e.kind(), e.to_string())
    }
}

impl From<alknet_forge::Error> for ApiError {
    fn from(e: alknet_forge::Error) -> ApiError {
        match e {
            alknet_forge::Error::Store(e) => e.into(),
            alknet_forge::Error::BadRepoName(_) => ApiError::bad(e.to_string()),
            alknet_forge::Error::NoSuchRepo(_) => ApiError::new(StatusCode::NOT_FOUND, "not_found", e.to_string()),
            e => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()),
        }
    }
}

type Answer<T = axum::Json<Value>> = Result<T, ApiError>;

/// Runs blocking store work off the async threads.
pub(super) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
}

fn to_json<T: Serialize>(value: &T) -> axum::Json<Value> {
    axum::Json(serde_json::to_value(value).unwrap_or(Value::Null))
}

// ---- who is calling -------------------------------------------------------

/// The caller named by `Authorization: Bearer TOKEN` or Basic with the
/// token as the password (what git's credential helpers send).
pub(super) fn token_of(headers: &HeaderMap) -> Option<String> {
    use base64::Engine;
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, rest) = value.split_once(' ')?;
    match scheme.to_ascii_lowercase().as_str() {
        "bearer" => Some(rest.trim().to_owned()),
        "basic" => {
            let decoded = base64::engine::general_purpose::STANDARD.decode(rest.trim()).ok()?;
            let text = String::from_utf8(decoded).ok()?;
            // The token as the password, or as the user name with none.
            match text.split_once(':')? {
                (user, "") => Some(user.to_owned()),
                (_, password) => Some(password.to_owned()),
            }
        }
        _ => None,
    }
}

async fn caller(app: &App, headers: &HeaderMap) -> Result<Principal, ApiError> {
    let token = token_of(headers).ok_or_else(ApiError::unauthorized)?;
    let store = app.store.clone();
    blocking(move || store.authenticate(&token).map_err(ApiError::from))
        .await?
        .ok_or_else(ApiError::unauthorized)
}

/// The caller, who must be an admin (with a token that may change things,
/// unless `read` suffices).
async fn admin(app: &App, headers: &HeaderMap, read: bool) -> Result<Principal, ApiError> {
    let who = caller(app, headers).await?;
    let store = app.store.clone();
    let name = who.user.clone();
    if !blocking(move || store.is_admin(&name).map_err(ApiError::from)).await? {
        return Err(ApiError::forbidden("an admin's token is needed"));
    }
    if who.read_only && !read {
        return Err(ApiError::forbidden("a read-only token cannot change anything"));
    }
    Ok(who)
}

/// The tree `bucket@branch` (`branch` may carry `@VERSION` or
/// `@SNAPSHOT`) and `path` in it, parsed by the one address rule and opened
/// by the one access rule.
fn open_tree(
    store: &Store,
    who: &Principal,
    bucket: &str,
    branch: &str,
    path: &str,
    need: Level,
) -> Result<(Tree, BucketPath), ApiError> {
    let a = Address::parse(&format!("{bucket}@{branch}:/{path}"))?;
    let tree = store.open_as(who, &a.bucket, &a.branch, &a.at, need)?;
    Ok((tree, a.path))
}

/// A path inside a branch, as a JSON body gives it.
fn path_of(raw: &str) -> Result<BucketPath, ApiError> {
    Ok(BucketPath::parse(&format!("/{}", raw.trim_start_matches('/')))?)
}

// ---- handlers -------------------------------------------------------------

async fn openapi() -> axum::Json<Value> {
    axum::Json(document())
}

async fn whoami(State(app): State<App>, headers: HeaderMap) -> Answer {
    let who = caller(&app, &headers).await?;
    let store = app.store.clone();
    let name = who.user.clone();
    let admin = blocking(move || store.is_admin(&name).map_err(ApiError::from)).await?;
    Ok(axum::Json(
        json!({"user": who.user, "admin": admin, "read_only": who.read_only}),
    ))
}

async fn list_buckets(State(app): State<App>, headers: HeaderMap) -> Answer {
    let who = caller(&app, &headers).await?;
    let store = app.store.clone();
    blocking(move || {
        let mut out = Vec::new();
        for b in store.list_buckets()? {
            if let Some(level) = who.level(&store, &b.name)? {
                let mut v = serde_json::to_value(&b).unwrap_or(Value::Null);
                v["level"] = json!(level);
                out.push(v);
            }
        }
        Ok(axum::Json(Value::Array(out)))
    })
    .await
}

#[derive(Deserialize)]
struct NewBucket {
    name: String,
    #[serde(default)]
    kind: Option<String>,
}

async fn create_bucket(State(app): State<App>, headers: HeaderMap, body: Bytes) -> Answer<Response> {
    admin(&app, &headers, false).await?;
    let req: NewBucket = parse(&body)?;
    blocking(move || {
        match req.kind.as_deref().unwrap_or("drive") {
            "drive" => app.store.create_bucket(&req.name, "drive")?,
            "repo" => {
                app.forge.create(&req.name)?;
            }
            other => return Err(ApiError::bad(format!("kind {other:?}: use drive or repo"))),
        }
        Ok((StatusCode::CREATED, axum::Json(json!({"created": req.name}))).into_response())
    })
    .await
}

async fn delete_bucket(State(app): State<App>, headers: HeaderMap, Path(bucket): Path<String>) -> Answer {
    admin(&app, &headers, false).await?;
    blocking(move || {
        let repo = app
            .store
            .list_buckets()?
            .into_iter()
            .find(|b| b.name == bucket)
            .is_some_and(|b| b.kind == alknet_fs::REPO_KIND);
        if repo {
            app.forge.delete(&bucket)?;
        } else {
            app.store.delete_bucket(&bucket)?;
        }
        Ok(axum::Json(json!({"deleted": bucket})))
    })
    .await
}

#[derive(Deserialize)]
struct Quota {
    quota: Option<u64>,
}

async fn set_quota(State(app): State<App>, headers: HeaderMap, Path(bucket): Path<String>, body: Bytes) -> Answer {
    admin(&app, &headers, false).await?;
    let req: Quota = parse(&body)?;
    blocking(move || {
        app.store.set_quota(&bucket, req.quota)?;
        let used = app.store.head_bytes(&bucket, alknet_fs::DEFAULT_BRANCH)?;
        Ok(axum::Json(
            json!({"bucket": bucket, "quota": req.quota, "main_bytes": used}),
        ))
    })
    .await
}

async fn list_repos(State(app): State<App>, headers: HeaderMap) -> Answer {
    let who = caller(&app, &headers).await?;
    blocking(move || {
        let mut out = Vec::new();
        for repo in app.forge.list()? {
            if who.level(&app.store, &repo.name)?.is_some() {
                out.push(repo);
            }
        }
        Ok(to_json(&out))
    })
    .await
}

async fn list_branches(State(app): State<App>, headers: HeaderMap, Path(bucket): Path<String>) -> Answer {
    let who = caller(&app, &headers).await?;
    blocking(move || {
        app.store.check_as(&who, &bucket, Level::Read)?;
        Ok(to_json(&app.store.list_branches(&bucket)?))
    })
    .await
}

#[derive(Deserialize)]
struct NewBranch {
    name: String,
    #[serde(default)]
    from: Option<String>,
}

async fn create_branch(
    State(app): State<App>,
    headers: HeaderMap,
    Path(bucket): Path<String>,
    body: Bytes,
) -> Answer<Response> {
    let who = caller(&app, &headers).await?;
    let req: NewBranch = parse(&body)?;
    blocking(move || {
        app.store.check_as(&who, &bucket, Level::Write)?;
        let from = req.from.as_deref().unwrap_or(alknet_fs::DEFAULT_BRANCH);
        let src = Address::parse(&format!("{bucket}@{from}"))?;
        let version = app.store.create_branch(&bucket, &req.name, &src.branch, &src.at)?;
        let body = json!({"created": req.name, "from": from, "version": version});
        Ok((StatusCode::CREATED, axum::Json(body)).into_response())
    })
    .await
}

async fn delete_branch(
    State(app): State<App>,
    headers: HeaderMap,
    Path((bucket, branch)): Path<(String, String)>,
) -> Answer {
    let who = caller(&app, &headers).await?;
    blocking(move || {
        app.store.check_as(&who, &bucket, Level::Write)?;
        app.store.delete_branch(&bucket, &branch)?;
        Ok(axum::Json(json!({"deleted": branch})))
    })
    .await
}

async fn list_snapshots(
    State(app): State<App>,
    headers: HeaderMap,
    Path((bucket, branch)): Path<(String, String)>,
) -> Answer {
    let who = caller(&app, &headers).await?;
    blocking(move || {
        let tree = app
            .store
            .open_as(&who, &bucket, &branch, &alknet_fs::At::Head, Level::Read)?;
        Ok(to_json(&app.store.snapshots(tree.bucket(), tree.branch())?))
    })
    .await
}

#[derive(Deserialize, Default)]
struct NewSnapshot {
    #[serde(default)]
    name: Option<String>,
}

async fn create_snapshot(
    State(app): State<App>,
    headers: HeaderMap,
    Path((bucket, branch)): Path<(String, String)>,
    body: Bytes,
) -> Answer<Response> {
    let who = caller(&app, &headers).await?;
    let req: NewSnapshot = if body.is_empty() {
        NewSnapshot::default()
    } else {
        parse(&body)?
    };
    blocking(move || {
        let (tree, _) = open_tree(&app.store, &who, &bucket, &branch, "", Level::Write)?;
        let version = tree.snapshot(req.name.as_deref())?;
        Ok((
            StatusCode::CREATED,
            axum::Json(json!({"version": version, "name": req.name})),
        )
            .into_response())
    })
    .await
}

#[derive(Deserialize)]
struct LogQuery {
    limit: Option<usize>,
    before: Option<u64>,
}

async fn log(
    State(app): State<App>,
    headers: HeaderMap,
    Path((bucket, branch)): Path<(String, String)>,
    Query(q): Query<LogQuery>,
) -> Answer {
    let who = caller(&app, &headers).await?;
    blocking(move || {
        let (tree, _) = open_tree(&app.store, &who, &bucket, &branch, "", Level::Read)?;
        let limit = q.limit.unwrap_or(50).clamp(1, MAX_PAGE);
        let commits = app.store.log_before(&tree, q.before.map(Version), limit)?;
        let next = (commits.len() == limit)
            .then(|| commits.last().map(|c| c.version))
            .flatten();
        Ok(axum::Json(json!({"commits": commits, "next_before": next})))
    })
    .await
}

#[derive(Deserialize)]
struct DiffQuery {
    to: String,
}

async fn diff(
    State(app): State<App>,
    headers: HeaderMap,
    Path((bucket, branch)): Path<(String, String)>,
    Query(q): Query<DiffQuery>,
) -> Answer {
    let who = caller(&app, &headers).await?;
    blocking(move || {
        let (a, _) = open_tree(&app.store, &who, &bucket, &branch, "", Level::Read)?;
        let (b, _) = open_tree(&app.store, &who, &bucket, &q.to, "", Level::Read)?;
        Ok(to_json(&a.diff(&b)?))
    })
    .await
}

#[derive(Deserialize)]
struct WatchQuery {
    from: Option<u64>,
}

/// Server-Sent Events: one `commit` event per commit, its version as the
/// event id, so a client that reconnects with `Last-Event-ID` misses and
/// repeats nothing. A comment every 15 s keeps proxies from timing out.
async fn watch(
    State(app): State<App>,
    headers: HeaderMap,
    Path((bucket, branch)): Path<(String, String)>,
    Query(q): Query<WatchQuery>,
) -> Answer<Response> {
    let who = caller(&app, &headers).await?;
    let store = app.store.clone();
    let tree = blocking(move || Ok(open_tree(&store, &who, &bucket, &branch, "", Level::Read)?.0)).await?;
    watch_stream(&app, &headers, tree, q.from.map(Version)).await
}

/// The commits of `tree`'s branch as an SSE body, from `Last-Event-ID`,
/// else `from`, else the branch's newest version (only what comes next).
pub(super) async fn watch_stream(
    app: &App,
    headers: &HeaderMap,
    tree: Tree,
    from: Option<Version>,
) -> Answer<Response> {
    let resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Version);
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(16);
    let store = app.store.clone();
    let mut watch = blocking(move || {
        let from = match resume.or(from) {
            Some(v) => v,
            None => store.log(&tree, 1)?.first().map(|c| c.version).unwrap_or(Version(0)),
        };
        Ok(store.watch(tree.bucket(), tree.branch(), from)?)
    })
    .await?;
    tokio::task::spawn_blocking(move || {
        let mut quiet = 0;
        while !tx.is_closed() {
            let commits = match watch.next(std::time::Duration::from_secs(1)) {
                Ok(c) => c,
                Err(e) => {
                    let event = format!("event: error\ndata: {}\n\n", json!({"message": e.to_string()}));
                    tx.blocking_send(Ok(Bytes::from(event))).ok();
                    return;
                }
            };
            if commits.is_empty() {
                quiet += 1;
                if quiet >= 15 {
                    quiet = 0;
                    if tx.blocking_send(Ok(Bytes::from_static(b": keep-alive\n\n"))).is_err() {
                        return;
                    }
                }
                continue;
            }
            for c in commits {
                let data = serde_json::to_string(&c).unwrap_or_default();
                let event = format!("id: {}\nevent: commit\ndata: {data}\n\n", c.version);
                if tx.blocking_send(Ok(Bytes::from(event))).is_err() {
                    return;
                }
            }
        }
    });
    let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    Ok((
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response())
}

#[derive(Deserialize)]
struct MkdirBody {
    path: String,
    #[serde(default)]
    parents: bool,
}

async fn mkdir(
    State(app): State<App>,
    headers: HeaderMap,
    Path((bucket, branch)): Path<(String, String)>,
    body: Bytes,
) -> Answer<Response> {
    let who = caller(&app, &headers).await?;
    let req: MkdirBody = parse(&body)?;
    blocking(move || {
        let (tree, _) = open_tree(&app.store, &who, &bucket, &branch, "", Level::Write)?;
        let path = path_of(&req.path)?;
        let e = if req.parents {
            tree.mkdir_all(&path)?
        } else {
            tree.mkdir(&path, None)?
        };
        Ok((StatusCode::CREATED, to_json(&e)).into_response())
    })
    .await
}

#[derive(Deserialize)]
struct FromTo {
    from: String,
    to: String,
}

async fn move_entry(
    State(app): State<App>,
    headers: HeaderMap,
    Path((bucket, branch)): Path<(String, String)>,
    body: Bytes,
) -> Answer {
    let who = caller(&app, &headers).await?;
    let req: FromTo = parse(&body)?;
    blocking(move || {
        let (tree, _) = open_tree(&app.store, &who, &bucket, &branch, "", Level::Write)?;
        let (from, to) = (path_of(&req.from)?, path_of(&req.to)?);
        Ok(to_json(&tree.rename(&from, &to, true)?))
    })
    .await
}

async fn copy_entry(
    State(app): State<App>,
    headers: HeaderMap,
    Path((bucket, branch)): Path<(String, String)>,
    body: Bytes,
) -> Answer<Response> {
    let who = caller(&app, &headers).await?;
    let req: FromTo = parse(&body)?;
    blocking(move || {
        let (tree, _) = open_tree(&app.store, &who, &bucket, &branch, "", Level::Write)?;
        let (from, to) = (path_of(&req.from)?, path_of(&req.to)?);
        Ok((StatusCode::CREATED, to_json(&tree.copy_file(&from, &to)?)).into_response())
    })
    .await
}

#[derive(Deserialize)]
struct SymlinkBody {
    path: String,
    target: String,
}

async fn symlink(
    State(app): State<App>,
    headers: HeaderMap,
    Path((bucket, branch)): Path<(String, String)>,
    body: Bytes,
) -> Answer<Response> {
    let who = caller(&app, &headers).await?;
    let req: SymlinkBody = parse(&body)?;
    blocking(move || {
        let (tree, _) = open_tree(&app.store, &who, &bucket, &branch, "", Level::Write)?;
        let e = tree.symlink(&path_of(&req.path)?, &req.target)?;
        Ok((StatusCode::CREATED, to_json(&e)).into_response())
    })
    .await
}

#[derive(Deserialize)]
struct PruneBody {
    before: String,
}

async fn prune(
    State(app): State<App>,
    headers: HeaderMap,
    Path((bucket, branch)): Path<(String, String)>,
    body: Bytes,
) -> Answer {
    let who = caller(&app, &headers).await?;
    let req: PruneBody = parse(&body)?;
    blocking(move || {
        app.store.check_as(&who, &bucket, Level::Admin)?;
        let (tree, _) = open_tree(
            &app.store,
            &who,
            &bucket,
            &format!("{branch}@{}", req.before),
            "",
            Level::Read,
        )?;
        let before = tree.at().unwrap_or(Version(0));
        let report = app.store.prune(tree.bucket(), tree.branch(), before)?;
        Ok(axum::Json(
            json!({"before": before, "rows": report.rows, "commits": report.commits}),
        ))
    })
    .await
}

#[derive(Deserialize)]
struct FileQuery {
    after: Option<String>,
    limit: Option<usize>,
    stat: Option<String>,
    mode: Option<String>,
    parents: Option<bool>,
    recursive: Option<bool>,
}

async fn get_root(
    State(app): State<App>,
    headers: HeaderMap,
    Path((bucket, branch)): Path<(String, String)>,
    q: Query<FileQuery>,
) -> Answer<Response> {
    read_path(app, headers, bucket, branch, String::new(), q.0).await
}

async fn get_file(
    State(app): State<App>,
    headers: HeaderMap,
    Path((bucket, branch, path)): Path<(String, String, String)>,
    q: Query<FileQuery>,
) -> Answer<Response> {
    read_path(app, headers, bucket, branch, path, q.0).await
}

/// A file's bytes, a directory's listing, or (`?stat`) an entry.
async fn read_path(
    app: App,
    headers: HeaderMap,
    bucket: String,
    branch: String,
    path: String,
    q: FileQuery,
) -> Answer<Response> {
    let who = caller(&app, &headers).await?;
    let store = app.store.clone();
    // `?stat`: the entry itself; `?stat=follow`: what a symlink leads to.
    let stat = q.stat.is_some();
    let lstat = stat && q.stat.as_deref() != Some("follow");
    let (tree, path, entry) = blocking(move || {
        let (tree, path) = open_tree(&store, &who, &bucket, &branch, &path, Level::Read)?;
        let (path, entry) = if lstat {
            let e = tree.stat(&path)?;
            (path, e)
        } else {
            tree.follow(&path, true)?
        };
        Ok((tree, path, entry))
    })
    .await?;
    if stat {
        return Ok(with_etag(to_json(&entry).into_response(), &entry));
    }
    match entry.kind {
        Kind::Dir => {
            let limit = q.limit.unwrap_or(PAGE).clamp(1, MAX_PAGE);
            blocking(move || {
                let entries = tree.read_dir(&path, q.after.as_deref(), limit)?;
                let next = (entries.len() == limit)
                    .then(|| entries.last().map(|e| e.name.clone()))
                    .flatten();
                Ok(axum::Json(json!({"path": path.as_str(), "entries": entries, "next_after": next})).into_response())
            })
            .await
        }
        Kind::File => {
            let hash = entry
                .hash
                .ok_or_else(|| ApiError::bad(format!("{path}: a file without content")))?;
            download(&app, &headers, hash, entry.size).await
        }
        _ => Err(ApiError::bad(format!("{path}: not a file or directory"))),
    }
}

fn with_etag(mut response: Response, entry: &Entry) -> Response {
    if let Some(h) = entry.hash
        && let Ok(v) = HeaderValue::from_str(&format!("\"{}\"", h.to_hex()))
    {
        response.headers_mut().insert(header::ETAG, v);
    }
    response
}

/// Parses a single `bytes=` range of a `size`-byte file: `Ok(None)` for the
/// whole file (no header, or several ranges), `Err` if unsatisfiable.
fn range(headers: &HeaderMap, size: u64) -> Result<Option<(u64, u64)>, ()> {
    let Some(spec) = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().strip_prefix("bytes="))
    else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None);
    }
    let (start, end) = spec.split_once('-').ok_or(())?;
    let (start, end) = match (start.trim(), end.trim()) {
        ("", suffix) => {
            let n: u64 = suffix.parse().map_err(|_| ())?;
            if n == 0 {
                return Err(());
            }
            (size.saturating_sub(n), size.checked_sub(1).ok_or(())?)
        }
        (s, "") => (s.parse().map_err(|_| ())?, size.checked_sub(1).ok_or(())?),
        (s, e) => {
            let (s, e): (u64, u64) = (s.parse().map_err(|_| ())?, e.parse().map_err(|_| ())?);
            (s, e.min(size.saturating_sub(1)))
        }
    };
    if start >= size || start > end {
        return Err(());
    }
    Ok(Some((start, end)))
}

/// The bytes of blob `hash` (`size` bytes) as an answer: `ETag` (the hash),
/// `If-None-Match`, a single `Range`; a file's, or an LFS object's.
pub(super) async fn download(app: &App, headers: &HeaderMap, hash: BlobHash, size: u64) -> Answer<Response> {
    let etag = format!("\"{}\"", hash.to_hex());
    let not_modified = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let tagged = |mut response: Response| {
        if let Ok(v) = HeaderValue::from_str(&etag) {
            response.headers_mut().insert(header::ETAG, v);
        }
        response
    };
    if not_modified {
        return Ok(tagged(StatusCode::NOT_MODIFIED.into_response()));
    }
    let (status, start, end) = match range(headers, size) {
        Ok(None) => (StatusCode::OK, 0, size),
        Ok(Some((s, e))) => (StatusCode::PARTIAL_CONTENT, s, e + 1),
        Err(()) => {
            let mut r = ApiError::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "range",
                "that range is outside the file",
            )
            .into_response();
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                r.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return Ok(r);
        }
    };
    let read = app.store.read_blob(&hash, start..end).await?;
    let metrics = app.metrics.clone();
    // Each window is checked against the blob's hash tree before it is sent;
    // an error mid-way ends the body early, so the client sees a short
    // transfer, never wrong bytes.
    let chunks = futures_util::stream::unfold(Some(read), move |read| {
        let metrics = metrics.clone();
        async move {
            let mut read = read?;
            match read.next().await {
                Ok(None) => None,
                Ok(Some(bytes)) => {
                    metrics.bytes_out(bytes.len() as u64);
                    Some((Ok(bytes), Some(read)))
                }
                Err(e) => {
                    tracing::warn!("http: reading a file: {e}");
                    Some((Err(std::io::Error::other(e.to_string())), None))
                }
            }
        }
    });
    let mut response = Response::new(Body::from_stream(chunks));
    *response.status_mut() = status;
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(end - start));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if status == StatusCode::PARTIAL_CONTENT
        && let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{}/{size}", end - 1))
    {
        h.insert(header::CONTENT_RANGE, v);
    }
    Ok(tagged(response))
}

async fn put_file(
    State(app): State<App>,
    headers: HeaderMap,
    Path((bucket, branch, path)): Path<(String, String, String)>,
    Query(q): Query<FileQuery>,
    body: Body,
) -> Answer<Response> {
    let who = caller(&app, &headers).await?;
    let expect = precondition(&headers)?;
    let mode = match q.mode.as_deref() {
        None => None,
        Some(m) => Some(
            u32::from_str_radix(m, 8)
                .ok()
                .filter(|m| *m <= 0o7777)
                .ok_or_else(|| ApiError::bad(format!("mode {m:?}: use octal bits such as 644")))?,
        ),
    };
    let store = app.store.clone();
    let parents = q.parents.unwrap_or(false);
    let (tree, path, existed) = blocking(move || {
        let (tree, path) = open_tree(&store, &who, &bucket, &branch, &path, Level::Write)?;
        if path.is_root() {
            return Err(ApiError::bad("a file needs a path below the branch's root"));
        }
        let existed = tree.try_stat(&path)?;
        Ok((tree, path, existed))
    })
    .await?;
    if let Some(e) = &existed
        && e.is_dir()
    {
        return Err(alknet_fs::Error::IsADirectory(path.to_string()).into());
    }
    let mut opts = OpenOptions::replace().parents(parents);
    if let Some(m) = mode {
        opts = opts.mode(m);
    }
    let mut session = tree.open_write(&path, opts).await?;
    if let Some(expect) = expect {
        session.expect(expect);
    }
    let mut data = body.into_data_stream();
    let mut at = 0u64;
    while let Some(chunk) = data.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => {
                session.abort();
                return Err(ApiError::bad(format!("the upload broke off: {e}")));
            }
        };
        if let Err(e) = session.write_at(at, &chunk).await {
            session.abort();
            return Err(e.into());
        }
        at += chunk.len() as u64;
        app.metrics.bytes_in(chunk.len() as u64);
    }
    let started = Instant::now();
    let entry = session.close().await?;
    app.metrics.commit(started.elapsed());
    let status = if existed.is_some() {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok(with_etag((status, to_json(&entry)).into_response(), &entry))
}

/// `If-Match: "HASH"` (replace only that content) or `If-None-Match: *`
/// (create only).
fn precondition(headers: &HeaderMap) -> Result<Option<Expect>, ApiError> {
    if let Some(v) = headers.get(header::IF_NONE_MATCH) {
        return match v.to_str().map(str::trim) {
            Ok("*") => Ok(Some(Expect::Absent)),
            _ => Err(ApiError::bad("If-None-Match on a write takes only *")),
        };
    }
    let Some(v) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    let text = v.to_str().map_err(|_| ApiError::bad("If-Match is not text"))?.trim();
    let hex = text.trim_start_matches("W/").trim_matches('"');
    let hash = alknet_fs::BlobHash::from_hex(hex)
        .ok_or_else(|| ApiError::bad(format!("If-Match {text}: give the ETag, a quoted BLAKE3 hash")))?;
    Ok(Some(Expect::Hash(hash)))
}

async fn delete_file(
    State(app): State<App>,
    headers: HeaderMap,
    Path((bucket, branch, path)): Path<(String, String, String)>,
    Query(q): Query<FileQuery>,
) -> Answer {
    let who = caller(&app, &headers).await?;
    blocking(move || {
        let (tree, path) = open_tree(&app.store, &who, &bucket, &branch, &path, Level::Write)?;
        if path.is_root() {
            return Err(ApiError::bad("the root of a branch cannot be removed"));
        }
        match tree.stat(&path)? {
            e if e.is_dir() && q.recursive != Some(true) => {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "invalid",
                    format!("{path}: is a directory (add ?recursive=true)"),
                ));
            }
            e if e.is_dir() => tree.remove_all(&path)?,
            _ => tree.remove(&path)?,
        }
        Ok(axum::Json(json!({"removed": path.as_str()})))
    })
    .await
}

async fn gc(State(app): State<App>, headers: HeaderMap) -> Answer {
    admin(&app, &headers, false).await?;
    let report = app.store.gc().await?;
    app.metrics.gc_run();
    Ok(to_json(&report))
}

async fn fsck(State(app): State<App>, headers: HeaderMap) -> Answer {
    admin(&app, &headers, true).await?;
    Ok(to_json(&app.store.fsck().await?))
}

async fn stats(State(app): State<App>, headers: HeaderMap) -> Answer {
    admin(&app, &headers, true).await?;
    Ok(to_json(&app.store.stats().await?))
}

async fn list_peers(State(app): State<App>, headers: HeaderMap) -> Answer {
    admin(&app, &headers, true).await?;
    blocking(move || Ok(to_json(&app.store.list_peers()?))).await
}

async fn sync_status(State(app): State<App>, headers: HeaderMap) -> Answer {
    admin(&app, &headers, true).await?;
    Ok(to_json(&app.store.sync_report().await?))
}

async fn list_users(State(app): State<App>, headers: HeaderMap) -> Answer {
    admin(&app, &headers, true).await?;
    blocking(move || Ok(to_json(&app.store.list_users()?))).await
}

#[derive(Deserialize)]
struct GrantBody {
    level: String,
}

async fn grant(
    State(app): State<App>,
    headers: HeaderMap,
    Path((user, bucket)): Path<(String, String)>,
    body: Bytes,
) -> Answer {
    admin(&app, &headers, false).await?;
    let req: GrantBody = parse(&body)?;
    blocking(move || {
        app.store.grant(&user, &bucket, req.level.parse()?)?;
        Ok(axum::Json(json!({"user": user, "bucket": bucket, "level": req.level})))
    })
    .await
}

async fn revoke(State(app): State<App>, headers: HeaderMap, Path((user, bucket)): Path<(String, String)>) -> Answer {
    admin(&app, &headers, false).await?;
    blocking(move || {
        app.store.revoke(&user, &bucket)?;
        Ok(axum::Json(json!({"user": user, "bucket": bucket})))
    })
    .await
}

async fn list_tokens(State(app): State<App>, headers: HeaderMap) -> Answer {
    let who = caller(&app, &headers).await?;
    blocking(move || {
        let all = app.store.is_admin(&who.user)?;
        Ok(to_json(&app.store.list_tokens((!all).then_some(who.user.as_str()))?))
    })
    .await
}

#[derive(Deserialize)]
struct NewToken {
    user: Option<String>,
    name: Option<String>,
    expires_days: Option<u32>,
    #[serde(default)]
    read_only: bool,
}

async fn create_token(State(app): State<App>, headers: HeaderMap, body: Bytes) -> Answer<Response> {
    let who = caller(&app, &headers).await?;
    if who.read_only {
        return Err(ApiError::forbidden("a read-only token cannot make tokens"));
    }
    let req: NewToken = parse(&body)?;
    blocking(move || {
        let user = req.user.unwrap_or_else(|| who.user.clone());
        if user != who.user && !app.store.is_admin(&who.user)? {
            return Err(ApiError::forbidden("only an admin makes tokens for other users"));
        }
        let (info, text) = app
            .store
            .create_token(&user, req.name.as_deref(), req.expires_days, req.read_only)?;
        let mut v = serde_json::to_value(&info).unwrap_or(Value::Null);
        v["token"] = json!(text);
        Ok((StatusCode::CREATED, axum::Json(v)).into_response())
    })
    .await
}

async fn revoke_token(State(app): State<App>, headers: HeaderMap, Path(token): Path<String>) -> Answer {
    let who = caller(&app, &headers).await?;
    if who.read_only {
        return Err(ApiError::forbidden("a read-only token cannot revoke tokens"));
    }
    blocking(move || {
        let all = app.store.is_admin(&who.user)?;
        let info = app.store.revoke_token(&token, (!all).then_some(who.user.as_str()))?;
        Ok(to_json(&info))
    })
    .await
}

async fn list_shares(State(app): State<App>, headers: HeaderMap) -> Answer {
    let who = caller(&app, &headers).await?;
    blocking(move || Ok(to_json(&app.store.list_shares(Some(&who.user))?))).await
}

#[derive(Deserialize)]
struct NewShareBody {
    address: String,
    #[serde(default)]
    expires: Option<String>,
    #[serde(default)]
    password: Option<String>,
}

async fn create_share(State(app): State<App>, headers: HeaderMap, body: Bytes) -> Answer<Response> {
    let who = caller(&app, &headers).await?;
    let req: NewShareBody = parse(&body)?;
    let base = app.site.url.clone();
    blocking(move || {
        let lifetime = req.expires.as_deref().map(alknet_fs::parse_lifetime).transpose()?;
        let (info, secret) = app.store.create_share(&alknet_fs::NewShare {
            user: &who.user,
            address: &Address::parse(&req.address)?,
            lifetime,
            password: req.password.as_deref(),
        })?;
        let mut v = serde_json::to_value(&info).unwrap_or(Value::Null);
        v["secret"] = json!(secret);
        v["link_path"] = json!(format!("/-/s/{secret}/"));
        if let Some(base) = base {
            v["url"] = json!(format!("{}/-/s/{secret}/", base.trim_end_matches('/')));
        }
        Ok((StatusCode::CREATED, axum::Json(v)).into_response())
    })
    .await
}

async fn revoke_share(State(app): State<App>, headers: HeaderMap, Path(share): Path<String>) -> Answer {
    let who = caller(&app, &headers).await?;
    blocking(move || Ok(to_json(&app.store.revoke_share(&share, Some(&who.user))?))).await
}

async fn metrics(State(app): State<App>, headers: HeaderMap) -> Answer<Response> {
    if !app.metrics_public {
        admin(&app, &headers, true).await?;
    }
    if let Ok(stats) = app.store.stats().await {
        app.metrics.set_store(stats);
    }
    Ok((
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        app.metrics.render(),
    )
        .into_response())
}

fn parse<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::bad(format!("the JSON body: {e}")))
}

// ---- the OpenAPI document -------------------------------------------------

/// OpenAPI 3.1, generated from [`ROUTES`].
pub(crate) fn document() -> Value {
    let mut paths = serde_json::Map::new();
    for (i, route) in ROUTES.iter().enumerate() {
        let doc_path = route.path.replace("{*", "{");
        let params: Vec<Value> = route
            .path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{')?.strip_suffix('}'))
            .map(|name| {
                let rest = name.starts_with('*');
                let name = name.trim_start_matches('*');
                json!({
                    "name": name, "in": "path", "required": true,
                    "schema": {"type": "string"},
                    "description": if rest { "The rest of the path; may contain /." } else { "" },
                })
            })
            .collect();
        let mut op = json!({
            "operationId": format!("op{i}_{}", route.method.to_lowercase()),
            "summary": route.summary,
            "parameters": params,
            "responses": {
                "200": {"description": "Success.", "content": answer_content(route.answer)},
                "default": {"description": "An error.", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
            },
            "x-access": route.access,
        });
        if route.access != "public" {
            op["security"] = json!([{"bearer": []}, {"basic": []}]);
        }
        if let Some(body) = route.body {
            let content = match body {
                "bytes" => {
                    json!({"application/octet-stream": {"schema": {"type": "string", "contentMediaType": "application/octet-stream"}}})
                }
                _ => json!({"application/json": {"schema": {"type": "object"}}}),
            };
            op["requestBody"] = json!({"required": true, "content": content});
        }
        let item = paths.entry(doc_path).or_insert_with(|| json!({}));
        item[route.method.to_lowercase()] = op;
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Alknet node API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Buckets, branches, files and administration of one Alknet node. Authenticate with a token from `alknet token create`.",
        },
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "basic": {"type": "http", "scheme": "basic", "description": "Any user name; the token as the password."},
            },
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {"error": {"type": "object", "required": ["code", "message"], "properties": {
                        "code": {"type": "string"}, "message": {"type": "string"}}}},
                },
            },
        },
    })
}

fn answer_content(answer: &str) -> Value {
    match answer {
        "bytes" => json!({
            "application/octet-stream": {"schema": {"type": "string", "contentMediaType": "application/octet-stream"}},
            "application/json": {"schema": {"type": "object"}},
        }),
        "sse" => json!({"text/event-stream": {"schema": {"type": "string"}}}),
        "text" => json!({"text/plain": {"schema": {"type": "string"}}}),
        _ => json!({"application/json": {"schema": {}}}),
    }
}

/// Placeholder values for a route's path, to call it in tests.
#[cfg(test)]
fn sample_path(route: &Route) -> String {
    route
        .path
        .split('/')
        .map(|seg| if seg.starts_with('{') { "x" } else { seg })
        .collect::<Vec<_>>()
        .join("/")
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;

    fn app() -> (tempfile::TempDir, Router) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("store");
        let forge = Forge::new(store, alknet_forge::ForgeConfig::default());
        (
            dir,
            router(
                forge,
                Arc::new(Metrics::default()),
                false,
                super::super::Site::default(),
            ),
        )
    }

    /// Every documented route is served (the router answers it with its
    /// handler, not the no-such-route fallback), and the document lists
    /// every route once.
    #[tokio::test(flavor = "multi_thread")]
    async fn the_document_matches_the_routes() {
        let (_dir, router) = app();
        for route in ROUTES {
            let request = axum::http::Request::builder()
                .method(route.method)
                .uri(sample_path(route))
                .body(Body::empty())
                .expect("request");
            let response = router.clone().oneshot(request).await.expect("answer");
            let status = response.status();
            let body = axum::body::to_bytes(response.into_body(), 1 << 20).await.expect("body");
            let text = String::from_utf8_lossy(&body);
            assert!(
                !text.contains("\"no_route\"") && status != StatusCode::METHOD_NOT_ALLOWED,
                "{} {} is documented but not routed: {status} {text}",
                route.method,
                route.path
            );
        }
        let doc = document();
        let count: usize = doc["paths"]
            .as_object()
            .expect("paths")
            .values()
            .map(|item| item.as_object().expect("item").len())
            .sum();
        assert_eq!(count, ROUTES.len());
        // A path nobody documented is not served.
        let request = axum::http::Request::builder()
            .uri("/api/v1/nothing-here")
            .body(Body::empty())
            .expect("request");
        let response = router.oneshot(request).await.expect("answer");
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
    }

    #[test]
    fn ranges_parse_as_rfc_9110_says() {
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert(header::RANGE, HeaderValue::from_str(v).expect("value"));
            m
        };
        assert_eq!(range(&HeaderMap::new(), 10), Ok(None));
        assert_eq!(range(&h("bytes=0-3"), 10), Ok(Some((0, 3))));
        assert_eq!(range(&h("bytes=5-"), 10), Ok(Some((5, 9))));
        assert_eq!(range(&h("bytes=-3"), 10), Ok(Some((7, 9))));
        assert_eq!(range(&h("bytes=-30"), 10), Ok(Some((0, 9))));
        assert_eq!(range(&h("bytes=8-100"), 10), Ok(Some((8, 9))));
        assert_eq!(range(&h("bytes=10-"), 10), Err(()));
        assert_eq!(range(&h("bytes=4-2"), 10), Err(()));
        assert_eq!(range(&h("bytes=0-1,4-5"), 10), Ok(None));
        assert_eq!(range(&h("bytes=0-"), 0), Err(()));
    }

    #[test]
    fn tokens_come_as_bearer_or_as_a_basic_password() {
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert(header::AUTHORIZATION, HeaderValue::from_str(v).expect("value"));
            m
        };
        assert_eq!(token_of(&h("Bearer alk_abc")).as_deref(), Some("alk_abc"));
        // "git:alk_abc"
        assert_eq!(token_of(&h("Basic Z2l0OmFsa19hYmM=")).as_deref(), Some("alk_abc"));
        // "alk_abc:": the token as the user name, no password.
        assert_eq!(token_of(&h("Basic YWxrX2FiYzo=")).as_deref(), Some("alk_abc"));
        assert_eq!(token_of(&h("Digest x")), None);
        assert_eq!(token_of(&HeaderMap::new()), None);
    }
}
