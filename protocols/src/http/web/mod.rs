//! The web interface: server-rendered HTML (askama templates in
//! `protocols/templates/`, checked at compile time) on the node's HTTP server, for people with a browser.
//!
//! Every page lives under `/-/` (a path no bucket or repository can have:
//! their names start with a letter or digit), except the home page `/`.
//! A visitor signs in with a token; the session cookie holds that token
//! (`HttpOnly`, `SameSite=Strict`, `Secure` unless the node is reached over
//! plain HTTP on a non-loopback address), so revoking the token ends the
//! session at the next request, and the grants are the token's, checked by
//! the same `Store::open_as` every frontend calls. Every form that changes
//! something carries a CSRF token derived from the session token (a keyed
//! BLAKE3 no other site can compute) and must come from this origin.
//!
//! Handlers are thin: they call `alknet-fs` and `alknet-forge` on blocking
//! threads, like the REST API's, and render what comes back. Reading works
//! without JavaScript; `alknet.js` adds upload progress, drag and drop and
//! live refresh of listings (Server-Sent Events from the watch stream).

mod archive;
mod browse;
mod highlight;
mod history;
mod repos;
mod share;

use alknet_fs::Principal;
use askama::Template;
use axum::Router;
use axum::extract::{Form, FromRequest, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use serde::Deserialize;

use super::api::{ApiError, App, blocking};

/// The session cookie: the visitor's token.
const COOKIE: &str = "alknet_session";

pub(super) fn routes() -> Router<App> {
    Router::new()
        .route("/", get(browse::home))
        .route("/-/login", get(login_page).post(login))
        .route("/-/logout", axum::routing::post(logout))
        .route("/-/static/{file}", get(asset))
        .route("/-/go", get(go))
        .merge(browse::routes())
        .merge(history::routes())
        .merge(repos::routes())
        .merge(share::routes())
        .layer(axum::middleware::from_fn(guard))
}

/// Headers every page carries, and the origin check of every form.
async fn guard(request: Request, next: Next) -> Response {
    if request.method() == Method::POST && !same_origin(request.headers()) {
        return WebError::new(StatusCode::FORBIDDEN, "This form was sent from another site.").into_response();
    }
    let mut response = next.run(request).await;
    let h = response.headers_mut();
    h.entry(header::CONTENT_SECURITY_POLICY)
        .or_insert(HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; media-src 'self'; \
         frame-src 'self'; connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'self'",
        ));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.entry(header::REFERRER_POLICY)
        .or_insert(HeaderValue::from_static("same-origin"));
    response
}

/// A POST's `Origin` (or, without one, its `Referer`) names this host.
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let from = headers
        .get(header::ORIGIN)
        .or_else(|| headers.get(header::REFERER))
        .and_then(|v| v.to_str().ok());
    match from {
        // A client that sends neither (curl, a test) is not a browser
        // another site could drive; the CSRF token still applies.
        None => true,
        Some(from) => {
            let rest = from
                .strip_prefix("https://")
                .or_else(|| from.strip_prefix("http://"))
                .unwrap_or("");
            rest.split('/').next() == Some(host)
        }
    }
}

// ---- who is visiting --------------------------------------------------------

/// A signed-in visitor.
#[derive(Clone)]
pub(super) struct Visitor {
    pub(super) who: Principal,
    pub(super) admin: bool,
    /// The CSRF token of this session, for its forms.
    pub(super) csrf: String,
}

/// What every page's header shows.
pub(super) struct Nav {
    pub(super) user: Option<String>,
    pub(super) admin: bool,
    pub(super) csrf: String,
}

impl Nav {
    pub(super) fn of(v: &Visitor) -> Nav {
        Nav {
            user: Some(v.who.user.clone()),
            admin: v.admin,
            csrf: v.csrf.clone(),
        }
    }

    pub(super) fn anonymous() -> Nav {
        Nav {
            user: None,
            admin: false,
            csrf: String::new(),
        }
    }
}

pub(super) fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn csrf_of(token: &str) -> String {
    let key = blake3::derive_key("alknet web csrf 2026-12", token.as_bytes());
    key[..16].iter().map(|b| format!("{b:02x}")).collect()
}

/// The visitor the session cookie names, if it still names a live token.
pub(super) async fn visitor(app: &App, headers: &HeaderMap) -> Result<Option<Visitor>, WebError> {
    let Some(token) = cookie(headers, COOKIE).map(str::to_owned) else {
        return Ok(None);
    };
    let store = app.store.clone();
    blocking(move || {
        let Some(who) = store.authenticate(&token)? else {
            return Ok(None);
        };
        let admin = store.is_admin(&who.user)?;
        Ok(Some(Visitor {
            who,
            admin,
            csrf: csrf_of(&token),
        }))
    })
    .await
    .map_err(WebError::from)
}

/// The visitor, or a trip to the sign-in page that comes back to `uri`.
pub(super) async fn signed_in(app: &App, headers: &HeaderMap, uri: &axum::http::Uri) -> Result<Visitor, WebError> {
    match visitor(app, headers).await? {
        Some(v) => Ok(v),
        None => Err(WebError::sign_in(uri)),
    }
}

/// A form's CSRF token must be this session's.
pub(super) fn check_csrf(v: &Visitor, given: &str) -> Result<(), WebError> {
    let (a, b) = (v.csrf.as_bytes(), given.as_bytes());
    let same = a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0;
    if same {
        Ok(())
    } else {
        Err(WebError::new(
            StatusCode::FORBIDDEN,
            "This form has expired or did not come from this site (its CSRF token is missing or wrong). Reload the page and try again.",
        ))
    }
}

/// Whether cookies may be marked `Secure`: the node is reached over TLS,
/// or on a loopback name, which browsers treat as secure.
fn secure_cookie(headers: &HeaderMap, frontend: &str) -> bool {
    if frontend == "https" {
        return true;
    }
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("");
    let name = host
        .rsplit_once(':')
        .map_or(host, |(h, p)| if p.contains(']') { host } else { h });
    matches!(name, "localhost" | "127.0.0.1" | "[::1]") || name.ends_with(".localhost")
}

pub(super) fn frontend_of(parts: &axum::http::Extensions) -> &'static str {
    parts.get::<super::api::Frontend>().map_or("http", |f| f.0)
}

/// A `Set-Cookie` value with the session's attributes.
pub(super) fn set_cookie(name: &str, value: &str, path: &str, max_age: Option<u64>, secure: bool) -> HeaderValue {
    let mut c = format!("{name}={value}; Path={path}; HttpOnly; SameSite=Strict");
    if let Some(age) = max_age {
        c.push_str(&format!("; Max-Age={age}"));
    }
    if secure {
        c.push_str("; Secure");
    }
    HeaderValue::from_str(&c).unwrap_or(HeaderValue::from_static("invalid=1"))
}

// ---- errors -----------------------------------------------------------------

/// An error page (or, for a visitor who is not signed in, a trip to sign in).
#[derive(Debug)]
pub(super) struct WebError {
    status: StatusCode,
    message: String,
    /// Sign in, then come back here.
    sign_in: Option<String>,
}

impl WebError {
    pub(super) fn new(status: StatusCode, message: impl Into<String>) -> WebError {
        WebError {
            status,
            message: message.into(),
            sign_in: None,
        }
    }

    pub(super) fn bad(message: impl Into<String>) -> WebError {
        WebError::new(StatusCode::BAD_REQUEST, message)
    }

    pub(super) fn not_found() -> WebError {
        WebError::new(StatusCode::NOT_FOUND, "There is nothing here, or you may not see it.")
    }

    fn sign_in(uri: &axum::http::Uri) -> WebError {
        let next = uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
        WebError {
            status: StatusCode::SEE_OTHER,
            message: String::new(),
            sign_in: Some(next),
        }
    }
}

impl From<ApiError> for WebError {
    fn from(e: ApiError) -> WebError {
        // A bucket the visitor may not read looks like a missing one.
        WebError::new(e.status, e.message)
    }
}

impl From<alknet_fs::Error> for WebError {
    fn from(e: alknet_fs::Error) -> WebError {
        if matches!(e, alknet_fs::Error::ShareExpired) {
            return WebError::new(StatusCode::GONE, "This share link has expired.");
        }
        ApiError::from(e).into()
    }
}

impl From<alknet_forge::Error> for WebError {
    fn from(e: alknet_forge::Error) -> WebError {
        ApiError::from(e).into()
    }
}

impl From<askama::Error> for WebError {
    fn from(e: askama::Error) -> WebError {
        WebError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("rendering the page: {e}"))
    }
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage<'a> {
    title: &'a str,
    nav: Nav,
    status: u16,
    message: &'a str,
}

impl IntoResponse for WebError {
    fn into_response(self) -> Response {
        if let Some(next) = self.sign_in {
            return Redirect::to(&format!("/-/login?next={}", super::client::encode_query(&next))).into_response();
        }
        if self.status.is_server_error() {
            tracing::warn!(status = %self.status, "web: {}", self.message);
        }
        let title = self.status.canonical_reason().unwrap_or("Error");
        let page = ErrorPage {
            title,
            nav: Nav::anonymous(),
            status: self.status.as_u16(),
            message: &self.message,
        };
        match page.render() {
            Ok(html) => (self.status, Html(html)).into_response(),
            Err(_) => (self.status, self.message).into_response(),
        }
    }
}

pub(super) type Web<T = Response> = Result<T, WebError>;

/// An HTML answer.
pub(super) struct Html(pub(super) String);

impl IntoResponse for Html {
    fn into_response(self) -> Response {
        let mut r = self.0.into_response();
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        );
        r.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        r
    }
}

pub(super) fn render(t: &impl Template) -> Web {
    Ok(Html(t.render()?).into_response())
}

/// A redirect after a form: back to `to` if it is a path on this site.
pub(super) fn back(to: &str) -> Response {
    let local = to.starts_with('/') && !to.starts_with("//") && !to.contains('\\');
    Redirect::to(if local { to } else { "/" }).into_response()
}

// ---- sign-in ------------------------------------------------------------------

#[derive(Deserialize)]
struct NextQuery {
    next: Option<String>,
}

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage<'a> {
    title: &'a str,
    nav: Nav,
    next: &'a str,
    error: Option<&'a str>,
}

async fn login_page(Query(q): Query<NextQuery>) -> Web {
    render(&LoginPage {
        title: "Sign in",
        nav: Nav::anonymous(),
        next: q.next.as_deref().unwrap_or("/"),
        error: None,
    })
}

#[derive(Deserialize)]
struct LoginForm {
    token: String,
    #[serde(default)]
    next: String,
}

async fn login(State(app): State<App>, request: Request) -> Web {
    let secure = secure_cookie(request.headers(), frontend_of(request.extensions()));
    let Form(form) = Form::<LoginForm>::from_request(request, &())
        .await
        .map_err(|e| WebError::bad(e.body_text()))?;
    let token = form.token.trim().to_owned();
    let store = app.store.clone();
    let check = token.clone();
    let who = blocking(move || Ok(store.authenticate(&check)?)).await?;
    if who.is_none() || token.contains([';', ',', ' ']) {
        let page = LoginPage {
            title: "Sign in",
            nav: Nav::anonymous(),
            next: &form.next,
            error: Some("That token is not valid: it may be mistyped, expired or revoked."),
        };
        let mut r = render(&page)?;
        *r.status_mut() = StatusCode::UNAUTHORIZED;
        return Ok(r);
    }
    let mut r = back(if form.next.is_empty() { "/" } else { &form.next });
    r.headers_mut()
        .insert(header::SET_COOKIE, set_cookie(COOKIE, &token, "/", None, secure));
    Ok(r)
}

#[derive(Deserialize)]
struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

async fn logout(State(app): State<App>, request: Request) -> Web {
    let secure = secure_cookie(request.headers(), frontend_of(request.extensions()));
    let headers = request.headers().clone();
    let Form(form) = Form::<CsrfForm>::from_request(request, &())
        .await
        .map_err(|e| WebError::bad(e.body_text()))?;
    if let Some(v) = visitor(&app, &headers).await? {
        check_csrf(&v, &form.csrf)?;
    }
    let mut r = Redirect::to("/-/login").into_response();
    r.headers_mut()
        .insert(header::SET_COOKIE, set_cookie(COOKIE, "", "/", Some(0), secure));
    Ok(r)
}

#[derive(Deserialize)]
struct GoQuery {
    to: String,
}

/// A picker's choice (branch, snapshot) without JavaScript: a local address.
async fn go(Query(q): Query<GoQuery>) -> Response {
    back(&q.to)
}

// ---- assets -------------------------------------------------------------------

async fn asset(axum::extract::Path(file): axum::extract::Path<String>) -> Response {
    let (body, kind) = match file.as_str() {
        "alknet.css" => (include_str!("static/alknet.css"), "text/css; charset=utf-8"),
        "alknet.js" => (include_str!("static/alknet.js"), "text/javascript; charset=utf-8"),
        _ => return WebError::not_found().into_response(),
    };
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        body,
    )
        .into_response()
}

// ---- formatting helpers for templates ------------------------------------------

/// `2026-12-01 19:36` (UTC) for milliseconds since the epoch.
pub(super) fn when(ms: i64) -> String {
    let t = alknet_fs::display::Utc::from_unix(ms.div_euclid(1000));
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}",
        t.year, t.month, t.day, t.hour, t.minute
    )
}

pub(super) fn size(n: u64) -> String {
    alknet_fs::format_size(n)
}

/// `bucket@branch[@version]` as one URL segment.
pub(super) fn seg(s: &str) -> String {
    super::client::encode_query(s)
}

/// A path inside a branch for a URL (`/` kept, the rest encoded).
pub(super) fn upath(p: &str) -> String {
    super::client::encode_path(p.trim_start_matches('/'))
}

/// The page for an address nothing answers.
pub(super) fn not_found() -> WebError {
    WebError::not_found()
}

#[cfg(test)]
mod tests;
