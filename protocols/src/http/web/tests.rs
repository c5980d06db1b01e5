//! The web handlers through the router, without a socket.

use std::sync::Arc;

use alknet_forge::Forge;
use alknet_fs::{At, BucketPath, OpenOptions, Store};
use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use tower::ServiceExt;

use crate::Metrics;

struct App {
    _dir: tempfile::TempDir,
    store: Store,
    router: Router,
    cookie: String,
}

async fn app() -> App {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("store");
    store.create_bucket("b", "drive").expect("bucket");
    store.add_user("ann", "ssh-ed25519 AAAA ann", false).expect("user");
    store.grant("ann", "b", alknet_fs::Level::Write).expect("grant");
    let (_, token) = store.create_token("ann", None, None, false).expect("token");
    let tree = store.tree("b", "main", &At::Head).expect("tree");
    let mut w = tree
        .open_write(
            &BucketPath::parse("/<img src=x>").expect("path"),
            OpenOptions::replace(),
        )
        .await
        .expect("write");
    w.write_at(0, b"<b>bold</b>").await.expect("write");
    w.close().await.expect("close");
    let forge = Forge::new(store.clone(), alknet_forge::ForgeConfig::default());
    let router = crate::http::api::router(forge, Arc::new(Metrics::default()), false, crate::http::Site::default());
    App {
        _dir: dir,
        store,
        router,
        cookie: format!("alknet_session={token}"),
    }
}

async fn send(app: &App, request: Request<Body>) -> (StatusCode, axum::http::HeaderMap, String) {
    let response = app.router.clone().oneshot(request).await.expect("answer");
    let (parts, body) = response.into_parts();
    let bytes = body.collect().await.expect("body").to_bytes();
    (
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&bytes).into_owned(),
    )
}

fn get(uri: &str, cookie: Option<&str>) -> Request<Body> {
    let mut r = Request::get(uri).header(header::HOST, "127.0.0.1:1");
    if let Some(c) = cookie {
        r = r.header(header::COOKIE, c);
    }
    r.body(Body::empty()).expect("request")
}

fn post(uri: &str, cookie: &str, form: &str) -> Request<Body> {
    Request::post(uri)
        .header(header::HOST, "127.0.0.1:1")
        .header(header::COOKIE, cookie)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from(form.to_owned()))
        .expect("request")
}

fn csrf_of(page: &str) -> String {
    let at = page.find("name=\"csrf\" value=\"").expect("a csrf field") + 19;
    page[at..at + 32].to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn pages_ask_to_sign_in_and_sign_in_sets_the_session() {
    let app = app().await;
    let (status, headers, _) = send(&app, get("/-/b/b/", None)).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(headers[header::LOCATION], "/-/login?next=%2F-%2Fb%2Fb%2F");
    let token = app.cookie.trim_start_matches("alknet_session=");
    let request = Request::post("/-/login")
        .header(header::HOST, "localhost:1")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from(format!("token={token}&next=/-/b/b/")))
        .expect("request");
    let (status, headers, _) = send(&app, request).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let cookie = headers[header::SET_COOKIE].to_str().expect("text");
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict") && cookie.contains("Secure"));
    let (status, _, page) = send(&app, get("/", Some(&app.cookie))).await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("href=\"/-/b/b/\""), "{page}");
}

#[tokio::test(flavor = "multi_thread")]
async fn names_and_text_are_escaped() {
    let app = app().await;
    let (status, headers, page) = send(&app, get("/-/b/b/", Some(&app.cookie))).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        headers[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .expect("csp")
            .contains("script-src 'self'")
    );
    assert!(
        page.contains("&#60;img src=x&#62;") || page.contains("&lt;img src=x&gt;"),
        "{page}"
    );
    assert!(!page.contains("<img src=x>"));
    let (status, _, page) = send(&app, get("/-/b/b/%3Cimg%20src=x%3E", Some(&app.cookie))).await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("&lt;b&gt;bold&lt;/b&gt;"), "{page}");
    assert!(!page.contains("<b>bold"));
}

#[tokio::test(flavor = "multi_thread")]
async fn forms_need_the_sessions_csrf_token() {
    let app = app().await;
    let (_, _, page) = send(&app, get("/-/b/b/", Some(&app.cookie))).await;
    let csrf = csrf_of(&page);
    let (status, _, _) = send(&app, post("/-/do/b", &app.cookie, "op=mkdir&path=/&name=d")).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _, _) = send(
        &app,
        post("/-/do/b", &app.cookie, &format!("op=mkdir&path=/&name=d&csrf={csrf}")),
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let tree = app.store.tree("b", "main", &At::Head).expect("tree");
    assert!(
        tree.stat(&BucketPath::parse("/d").expect("path"))
            .expect("made")
            .is_dir()
    );
    // A past version refuses changes whoever asks.
    let (status, _, page) = send(
        &app,
        post(
            "/-/do/b%40main%401",
            &app.cookie,
            &format!("op=mkdir&path=/&name=e&csrf={csrf}"),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{page}");
}

#[tokio::test(flavor = "multi_thread")]
async fn paths_that_climb_out_are_refused() {
    let app = app().await;
    for uri in [
        "/-/b/b/../../etc/passwd",
        "/-/b/b/%2e%2e/x",
        "/-/b/b%40..%2F..%2F/",
        "/-/s/..%2F..%2Fetc/",
    ] {
        let (status, _, _) = send(&app, get(uri, Some(&app.cookie))).await;
        assert!(
            matches!(status, StatusCode::BAD_REQUEST | StatusCode::NOT_FOUND),
            "{uri}: {status}"
        );
    }
}

fn multipart(cookie: &str, uri: &str, parts: &[(&str, Option<&str>, &[u8])]) -> Request<Body> {
    let mut body = Vec::new();
    for (name, file, data) in parts {
        body.extend_from_slice(b"--XyZ\r\n");
        match file {
            Some(f) => body.extend_from_slice(
                format!("Content-Disposition: form-data; name=\"{name}\"; filename=\"{f}\"\r\n\r\n").as_bytes(),
            ),
            None => {
                body.extend_from_slice(format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n").as_bytes())
            }
        }
        body.extend_from_slice(data);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(b"--XyZ--\r\n");
    Request::post(uri)
        .header(header::HOST, "127.0.0.1:1")
        .header(header::COOKIE, cookie)
        .header(header::CONTENT_TYPE, "multipart/form-data; boundary=XyZ")
        .header(header::CONTENT_LENGTH, body.len())
        .body(Body::from(body))
        .expect("request")
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upload_of_several_files_is_one_commit_and_a_refused_one_commits_nothing() {
    let app = app().await;
    let (_, _, page) = send(&app, get("/-/b/b/", Some(&app.cookie))).await;
    let csrf = csrf_of(&page);
    let tree = app.store.tree("b", "main", &At::Head).expect("tree");
    let before = app.store.log(&tree, 1).expect("log")[0].version;
    let uri = format!("/-/upload/b?dir=/in&csrf={csrf}");
    let parts: &[(&str, Option<&str>, &[u8])] = &[
        ("file", Some("a.txt"), b"alpha"),
        ("path", None, b"deep/er/b.txt"),
        ("file", Some("b.txt"), b"beta"),
    ];
    let (status, _, page) = send(&app, multipart(&app.cookie, &uri, parts)).await;
    assert_eq!(status, StatusCode::SEE_OTHER, "{page}");
    let log = app.store.log(&tree, 5).expect("log");
    assert_eq!(log[1].version, before, "one commit for both files");
    assert_eq!(log[0].op, "write");
    let read = |p: &str| {
        let tree = tree.clone();
        let p = BucketPath::parse(p).expect("path");
        async move { tree.read(&p, 0, 100).await.expect("read") }
    };
    assert_eq!(read("/in/a.txt").await, b"alpha");
    assert_eq!(read("/in/deep/er/b.txt").await, b"beta");
    // Past the size limit: 413, and the file that came before it is not committed either.
    let mut limits = alknet_fs::Limits::default();
    limits.max_file_size = Some(8);
    app.store.set_limits(limits);
    let parts: &[(&str, Option<&str>, &[u8])] = &[
        ("file", Some("small.txt"), b"ok"),
        ("file", Some("big.txt"), b"far too many bytes"),
    ];
    let (status, _, _) = send(&app, multipart(&app.cookie, &uri, parts)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(app.store.log(&tree, 1).expect("log")[0].version, log[0].version);
    assert!(
        tree.try_stat(&BucketPath::parse("/in/small.txt").expect("path"))
            .expect("stat")
            .is_none()
    );
    // A path that climbs out is refused.
    let parts: &[(&str, Option<&str>, &[u8])] = &[("path", None, b"../../x"), ("file", Some("x"), b"x")];
    let (status, _, _) = send(&app, multipart(&app.cookie, &uri, parts)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}
