//! Share links: `/-/s/SECRET[/PATH]` shows a file or directory at the
//! version the link was made for, read-only, to anyone holding the link
//! (and its password, if it has one); `/-/shares` lists a visitor's links
//! and revokes them. The rules (who may make one, expiry, the password,
//! the fixed version, the maker's grant) are the store's (`alknet_fs`'s
//! `shares.rs`); this file only renders.

use alknet_fs::{BucketPath, Kind, ShareInfo};
use askama::Template;
use axum::Router;
use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;

use super::browse::{BrowseQuery, Crumb, Preview, Row, Sort, crumbs, page, preview, raw, row};
use super::{Nav, Web, WebError, back, check_csrf, cookie, render, set_cookie, signed_in, size, upath, when};
use crate::http::api::{App, blocking};

pub(super) fn routes() -> Router<App> {
    Router::new()
        .route("/-/shares", get(list).post(revoke))
        .route("/-/s/{secret}", get(open_root).post(unlock))
        .route("/-/s/{secret}/", get(open_root))
        .route("/-/s/{secret}/{*path}", get(open))
}

/// The link's address for people to open: the node's public URL, else the
/// host the visitor used.
pub(super) fn link(app: &App, headers: &HeaderMap, secret: &str) -> String {
    let base = match &app.site.url {
        Some(url) => url.trim_end_matches('/').to_owned(),
        None => {
            let host = headers
                .get(header::HOST)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("localhost");
            format!("http://{host}")
        }
    };
    format!("{base}/-/s/{secret}/")
}

struct ShareRow {
    id: i64,
    prefix: String,
    what: String,
    created: String,
    expires: String,
    password: bool,
}

#[derive(Template)]
#[template(path = "shares.html")]
struct SharesPage {
    title: &'static str,
    nav: Nav,
    new_link: Option<String>,
    shares: Vec<ShareRow>,
}

fn share_rows(shares: Vec<ShareInfo>) -> Vec<ShareRow> {
    shares
        .into_iter()
        .map(|s| ShareRow {
            id: s.id,
            what: format!("{}@{}@{}:{}", s.bucket, s.branch, s.version.0, s.path),
            created: when(s.created_ms),
            expires: s.expires_ms.map(when).unwrap_or_else(|| "never".into()),
            password: s.password,
            prefix: s.prefix,
        })
        .collect()
}

/// The page shown once after a link is made: the link itself (it cannot
/// be shown again), and the visitor's other links.
pub(super) async fn made(app: &App, headers: &HeaderMap, nav: Nav, info: &ShareInfo, secret: &str) -> Web {
    let store = app.store.clone();
    let user = info.user.clone();
    let shares = blocking(move || Ok(store.list_shares(Some(&user))?)).await?;
    render(&SharesPage {
        title: "Share links",
        nav,
        new_link: Some(link(app, headers, secret)),
        shares: share_rows(shares),
    })
}

async fn list(State(app): State<App>, headers: HeaderMap, uri: Uri) -> Web {
    let v = signed_in(&app, &headers, &uri).await?;
    let store = app.store.clone();
    let user = v.who.user.clone();
    let shares = blocking(move || Ok(store.list_shares(Some(&user))?)).await?;
    render(&SharesPage {
        title: "Share links",
        nav: Nav::of(&v),
        new_link: None,
        shares: share_rows(shares),
    })
}

#[derive(Deserialize)]
struct RevokeForm {
    #[serde(default)]
    csrf: String,
    id: String,
}

async fn revoke(State(app): State<App>, headers: HeaderMap, uri: Uri, Form(f): Form<RevokeForm>) -> Web {
    let v = signed_in(&app, &headers, &uri).await?;
    check_csrf(&v, &f.csrf)?;
    let store = app.store.clone();
    blocking(move || Ok(store.revoke_share(&f.id, Some(&v.who.user))?)).await?;
    Ok(back("/-/shares"))
}

// ---- visiting a link ----------------------------------------------------------

/// How a link that does not open answers: 410 once expired, else 404 (an
/// unknown, revoked or broken link tells a visitor nothing more).
fn refused(e: crate::http::api::ApiError) -> WebError {
    if e.status == StatusCode::GONE {
        WebError::new(StatusCode::GONE, "This share link has expired.")
    } else {
        WebError::not_found()
    }
}

fn unlock_cookie(info: &ShareInfo) -> String {
    format!("alknet_unlock_{}", info.prefix)
}

#[derive(Template)]
#[template(path = "share_password.html")]
struct PasswordPage {
    title: &'static str,
    nav: Nav,
    action: String,
    wrong: bool,
}

#[derive(Template)]
#[template(path = "share_dir.html")]
struct ShareDirPage {
    title: String,
    nav: Nav,
    crumbs: Vec<Crumb>,
    entries: Vec<Row>,
    next: Option<String>,
    tar: String,
    version: u64,
    expires: String,
}

#[derive(Template)]
#[template(path = "share_file.html")]
struct ShareFilePage {
    title: String,
    nav: Nav,
    crumbs: Vec<Crumb>,
    name: String,
    size: String,
    mtime: String,
    hash: String,
    version: u64,
    raw: String,
    download: String,
    preview: Preview,
    expires: String,
}

async fn open_root(
    State(app): State<App>,
    headers: HeaderMap,
    Path(secret): Path<String>,
    Query(q): Query<BrowseQuery>,
) -> Web {
    open_at(app, headers, secret, String::new(), q).await
}

async fn open(
    State(app): State<App>,
    headers: HeaderMap,
    Path((secret, path)): Path<(String, String)>,
    Query(q): Query<BrowseQuery>,
) -> Web {
    open_at(app, headers, secret, path, q).await
}

async fn open_at(app: App, headers: HeaderMap, secret: String, sub: String, q: BrowseQuery) -> Web {
    let store = app.store.clone();
    let text = secret.clone();
    let share = blocking(move || Ok(store.open_share(&text)?)).await.map_err(refused)?;
    let mut response = share_page(&app, &headers, &secret, share, sub, q).await?;
    // The secret is in the address: never hand it on to another site.
    response.headers_mut().insert(
        header::REFERRER_POLICY,
        axum::http::HeaderValue::from_static("no-referrer"),
    );
    Ok(response)
}

async fn share_page(
    app: &App,
    headers: &HeaderMap,
    secret: &str,
    share: alknet_fs::Share,
    sub: String,
    q: BrowseQuery,
) -> Web {
    let base = format!("/-/s/{secret}");
    if !share.unlocked_by(cookie(headers, &unlock_cookie(&share.info))) {
        let mut r = render(&PasswordPage {
            title: "This link has a password",
            nav: Nav::anonymous(),
            action: base,
            wrong: false,
        })?;
        *r.status_mut() = StatusCode::UNAUTHORIZED;
        return Ok(r);
    }
    let info = share.info.clone();
    let tree = share.tree;
    let root = BucketPath::parse(&info.path)?;
    let expires = info.expires_ms.map(when).unwrap_or_else(|| "never".into());
    let root_name = root.file_name().unwrap_or(info.bucket.as_str()).to_owned();
    let (tree, path, entry) = blocking(move || {
        let sub = sub.trim_matches('/');
        let path = if sub.is_empty() {
            root.clone()
        } else {
            BucketPath::parse(&format!("{}/{sub}", root.as_str().trim_end_matches('/')))?
        };
        // Symlinks are followed, but never out of the shared path.
        let (path, entry) = tree.follow(&path, true)?;
        if !path.starts_with(&root) {
            return Err(alknet_fs::Error::NotFound(path.to_string()).into());
        }
        let rel = path.as_str()[root.as_str().trim_end_matches('/').len()..].to_owned();
        Ok((tree, (path, rel), entry))
    })
    .await
    .map_err(|_| WebError::not_found())?;
    let (path, rel) = path;
    let link = |p: &str| format!("{base}/{}", upath(p));
    let rel_path = BucketPath::parse(if rel.is_empty() { "/" } else { &rel })?;
    if entry.is_dir() {
        if q.archive.as_deref() == Some("tar") {
            return Ok(super::archive::tar(tree, path));
        }
        let (sort, desc) = Sort::of(&q);
        let after = q.after.clone();
        let (entries, next) =
            blocking(move || Ok(page(&tree, &entry, sort, desc, after.as_deref(), super::browse::PAGE)?)).await?;
        let here = format!("{}/", link(rel_path.as_str()).trim_end_matches('/'));
        let rows = entries
            .iter()
            .map(|e| {
                let p = rel_path.join(&e.name);
                let href = if e.is_dir() {
                    format!("{}/", link(p.as_str()))
                } else {
                    link(p.as_str())
                };
                row(e, href)
            })
            .collect();
        return render(&ShareDirPage {
            title: format!(
                "{root_name}{}",
                if rel.is_empty() { String::new() } else { rel.clone() }
            ),
            nav: Nav::anonymous(),
            crumbs: crumbs(&root_name, &rel_path, |p| format!("{}/", link(p).trim_end_matches('/'))),
            entries: rows,
            next: next.map(|n| format!("{here}?after={}", super::seg(&n))),
            tar: format!("{here}?archive=tar"),
            version: info.version.0,
            expires,
        });
    }
    if entry.kind != Kind::File {
        return Err(WebError::not_found());
    }
    if let Some(how) = q.raw.as_deref() {
        return raw(app, headers, &entry, how == "download").await;
    }
    let here = if rel.is_empty() { format!("{base}/") } else { link(&rel) };
    let parent = rel_path.parent().unwrap_or_else(BucketPath::root);
    render(&ShareFilePage {
        title: entry.name.clone(),
        nav: Nav::anonymous(),
        crumbs: if rel.is_empty() {
            Vec::new()
        } else {
            crumbs(&root_name, &parent, |p| format!("{}/", link(p).trim_end_matches('/')))
        },
        preview: preview(&tree, &entry).await,
        name: entry.name.clone(),
        size: size(entry.size),
        mtime: when(entry.mtime_ns / 1_000_000),
        hash: entry.hash.map(|h| h.to_hex()).unwrap_or_default(),
        version: info.version.0,
        raw: format!("{here}?raw=1"),
        download: format!("{here}?raw=download"),
        expires,
    })
}

#[derive(Deserialize)]
struct PasswordForm {
    password: String,
}

/// The password of a protected link: right, and the browser gets the
/// link's proof as a cookie scoped to the link's path.
async fn unlock(
    State(app): State<App>,
    headers: HeaderMap,
    Path(secret): Path<String>,
    request: axum::extract::Request,
) -> Web {
    let secure = super::secure_cookie(&headers, super::frontend_of(request.extensions()));
    let Form(f) = <Form<PasswordForm> as axum::extract::FromRequest<()>>::from_request(request, &())
        .await
        .map_err(|e| WebError::bad(e.body_text()))?;
    let store = app.store.clone();
    let text = secret.clone();
    let (share, proof) = blocking(move || {
        let share = store.open_share(&text)?;
        let proof = store.unlock_share(&text, &f.password)?;
        Ok((share.info, proof))
    })
    .await
    .map_err(refused)?;
    let base = format!("/-/s/{secret}");
    let Some(proof) = proof else {
        let mut r = render(&PasswordPage {
            title: "This link has a password",
            nav: Nav::anonymous(),
            action: base,
            wrong: true,
        })?;
        *r.status_mut() = StatusCode::UNAUTHORIZED;
        return Ok(r);
    };
    let mut r: Response = back(&format!("{base}/"));
    r.headers_mut().insert(
        header::SET_COOKIE,
        set_cookie(&unlock_cookie(&share), &proof, &base, None, secure),
    );
    r.headers_mut().insert(
        header::REFERRER_POLICY,
        axum::http::HeaderValue::from_static("no-referrer"),
    );
    Ok(r.into_response())
}
