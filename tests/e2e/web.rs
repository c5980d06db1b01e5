//! The web interface: a real browser (headless Chromium, driven by
//! `web_browser.py` through Debian's chromedriver and python3-selenium)
//! against a real `alknet serve`, and the security rules checked with curl.
//! Screenshots of each page land in `target/tmp/web-screenshots/`.

use std::process::Command;

use crate::http::{add_admin, curl, token};
use crate::util::{Node, Server, combined};

/// A node with bucket `docs` (a markup-named file, a 1,000-entry
/// directory, a larger file), repository `proj` with two commits pushed
/// over HTTP, the admin's token and `bob`'s, who may read `docs`.
fn setup() -> (Node, Server, String, String) {
    let node = Node::new();
    add_admin(&node);
    node.ok(&["bucket", "create", "docs"]);
    crate::util::add_user(&node, "bob");
    node.ok(&["grant", "bob", "docs", "read"]);
    let many = node.work.join("many");
    std::fs::create_dir_all(&many).expect("dir");
    for i in 0..1000 {
        std::os::unix::fs::symlink("t", many.join(format!("e{i:04}"))).expect("symlink");
    }
    node.ok(&["put", "-r", many.to_str().expect("utf-8"), "docs:/"]);
    let evil = node.write_local("evil", b"<script>alert(2)</script>");
    node.ok(&["put", evil.to_str().expect("utf-8"), "docs:/<script>alert(1)</script>"]);
    node.ok(&[
        "put",
        evil.to_str().expect("utf-8"),
        "docs:/<img src=x onerror=alert(1)>",
    ]);
    let big = node.write_local("big", &crate::util::pattern(100_000, 3));
    node.ok(&["put", big.to_str().expect("utf-8"), "docs:/big.bin"]);
    let readme = node.write_local("readme", b"# Docs\n\nA second line.\n");
    node.ok(&["put", readme.to_str().expect("utf-8"), "docs:/readme.md"]);
    node.ok(&["repo", "create", "proj"]);
    let server = Server::start(&node);
    let admin = token(&node, "admin", &[]);
    let bob = token(&node, "bob", &[]);
    push_two_commits(&node, &server, &admin);
    (node, server, admin, bob)
}

fn push_two_commits(node: &Node, server: &Server, admin: &str) {
    let src = node.work.join("proj-src");
    std::fs::create_dir_all(src.join("src")).expect("dir");
    let git = |args: &[&str]| {
        let out = Command::new("git")
            .args(["-c", "init.defaultBranch=main"])
            .args(args)
            .current_dir(&src)
            .env("GIT_AUTHOR_NAME", "A U Thor")
            .env("GIT_AUTHOR_EMAIL", "author@example.com")
            .env("GIT_COMMITTER_NAME", "C O Mitter")
            .env("GIT_COMMITTER_EMAIL", "committer@example.com")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("HOME", &node.work)
            .output()
            .expect("run git");
        assert!(out.status.success(), "git {args:?}: {}", combined(&out));
    };
    git(&["init", "-q"]);
    std::fs::write(src.join("README"), "proj\n").expect("write");
    git(&["add", "."]);
    git(&["commit", "-qm", "First commit"]);
    std::fs::write(src.join("src/lib.rs"), "pub fn two() -> u8 { 2 }\n").expect("write");
    git(&["add", "."]);
    git(&["commit", "-qm", "Second commit"]);
    let url = server.http.replace("http://", &format!("http://admin:{admin}@"));
    git(&["push", "-q", &format!("{url}/proj.git"), "main"]);
}

/// The session cookie and CSRF token of a signed-in visitor, as curl arguments.
fn session(server: &Server, token: &str) -> (String, String) {
    let page = curl(
        None,
        &["-b", &format!("alknet_session={token}")],
        &format!("{}/", server.http),
    );
    assert_eq!(page.status, 200, "{}", page.text());
    let text = page.text();
    let at = text.find("name=\"csrf\" value=\"").expect("a csrf field") + 19;
    let csrf = text[at..at + 32].to_owned();
    (format!("alknet_session={token}"), csrf)
}

#[test]
fn a_user_signs_in_browses_uploads_downloads_compares_and_shares_in_a_browser() {
    let (node, server, admin, bob) = setup();
    let shots = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("web-screenshots");
    std::fs::remove_dir_all(&shots).ok();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e/web_browser.py");
    let out = Command::new("timeout")
        .arg("300")
        .arg("/usr/bin/python3")
        .arg(&script)
        .args([&server.http, &admin, &bob])
        .arg(&shots)
        .arg(&node.work)
        .env("HOME", &node.work)
        .output()
        .expect("run the browser test");
    let text = combined(&out);
    println!("{text}");
    assert!(out.status.success(), "the browser test failed:\n{text}");
    assert!(
        text.contains("ok: a fresh browser opens the share link without a token"),
        "{text}"
    );
    // What the browser did is in the store, as every other frontend sees it.
    assert_eq!(
        node.bytes(&["get", "docs:/photo-notes.txt", "-o", "-"]),
        "notes from the browser\n".repeat(2000).into_bytes()
    );
    let branches = node.ok(&["branch", "list", "docs"]);
    assert!(branches.contains("draft"), "{branches}");
    let shot_count = std::fs::read_dir(&shots).expect("screenshots").count();
    assert!(shot_count >= 15, "{shot_count} screenshots");
    assert!(server.stop());
}

#[test]
fn forms_need_this_sessions_csrf_token_and_this_origin() {
    let (_node, server, admin, _bob) = setup();
    let (cookie, csrf) = session(&server, &admin);
    let mkdir = |fields: &str, extra: &[&str]| {
        let mut args = vec!["-b", cookie.as_str(), "-X", "POST", "--data", fields];
        args.extend_from_slice(extra);
        curl(None, &args, &format!("{}/-/do/docs", server.http))
    };
    assert_eq!(mkdir("op=mkdir&path=/&name=a", &[]).status, 403, "no CSRF token");
    assert_eq!(
        mkdir("op=mkdir&path=/&name=a&csrf=00000000000000000000000000000000", &[]).status,
        403
    );
    let other = mkdir(
        &format!("op=mkdir&path=/&name=a&csrf={csrf}"),
        &["-H", "Origin: http://evil.example"],
    );
    assert_eq!(other.status, 403, "another site's form");
    assert!(other.text().contains("another site"), "{}", other.text());
    let made = mkdir(&format!("op=mkdir&path=/&name=a&csrf={csrf}"), &[]);
    assert_eq!(made.status, 303, "{}", made.text());
    // Another session's token does not fit this one.
    let (_, bob_csrf) = session(&server, &_bob);
    assert_ne!(bob_csrf, csrf);
    assert_eq!(
        mkdir(&format!("op=mkdir&path=/&name=b&csrf={bob_csrf}"), &[]).status,
        403
    );
    // Signing out ends nothing but the cookie; a revoked token ends the session.
    let list = curl(None, &["-b", &cookie], &format!("{}/-/b/docs/", server.http));
    assert_eq!(list.status, 200);
    _node.ok(&["token", "revoke", &admin[4..12]]);
    let after = curl(None, &["-b", &cookie], &format!("{}/-/b/docs/", server.http));
    assert_eq!(after.status, 303, "a revoked token's session sends to sign-in");
    assert!(after.header("location").unwrap_or_default().starts_with("/-/login"));
    assert!(server.stop());
}

#[test]
fn sign_in_sets_a_strict_http_only_cookie_and_bad_tokens_are_refused() {
    let (_node, server, admin, _bob) = setup();
    let bad = curl(
        None,
        &["--data", "token=alk_nope&next=/"],
        &format!("{}/-/login", server.http),
    );
    assert_eq!(bad.status, 401);
    assert!(bad.text().contains("not valid"), "{}", bad.text());
    let good = curl(
        None,
        &["--data", &format!("token={admin}&next=/-/b/docs/")],
        &format!("{}/-/login", server.http),
    );
    assert_eq!(good.status, 303);
    assert_eq!(good.header("location").as_deref(), Some("/-/b/docs/"));
    let cookie = good.header("set-cookie").expect("a cookie");
    for attr in ["HttpOnly", "SameSite=Strict", "Secure", "Path=/"] {
        assert!(cookie.contains(attr), "{cookie} lacks {attr}");
    }
    // A `next` off this site is not followed.
    let away = curl(
        None,
        &["--data", &format!("token={admin}&next=//evil.example/")],
        &format!("{}/-/login", server.http),
    );
    assert_eq!(away.header("location").as_deref(), Some("/"));
    assert!(server.stop());
}

#[test]
fn names_and_contents_are_escaped_and_traversal_is_refused() {
    let (node, server, admin, _bob) = setup();
    let (cookie, _) = session(&server, &admin);
    let get = |path: &str| curl(None, &["-b", &cookie], &format!("{}{path}", server.http));
    let listing = get("/-/b/docs/").text();
    assert!(
        listing.contains("&#60;script&#62;alert(1)&#60;") || listing.contains("&lt;script&gt;alert(1)&lt;"),
        "{listing}"
    );
    assert!(!listing.contains("<script>alert(1)"), "a name became markup");
    assert!(!listing.contains("<img src=x"), "a name became markup");
    let file = get("/-/b/docs/%3Cscript%3Ealert(1)%3C/script%3E");
    assert_eq!(file.status, 200, "{}", file.text());
    assert!(!file.text().contains("<script>alert(2)"), "contents became markup");
    // Raw bytes of a file are never served as HTML, and run nothing.
    for raw in [
        "/-/b/docs/%3Cscript%3Ealert(1)%3C/script%3E?raw=1",
        "/-/b/docs/%3Cimg%20src=x%20onerror=alert(1)%3E?raw=1",
    ] {
        let raw = get(raw);
        assert_eq!(raw.status, 200);
        let kind = raw.header("content-type").unwrap_or_default();
        assert!(
            kind == "text/plain; charset=utf-8" || kind == "application/octet-stream",
            "{kind}"
        );
        assert_eq!(raw.header("x-content-type-options").as_deref(), Some("nosniff"));
        assert!(
            raw.header("content-security-policy")
                .unwrap_or_default()
                .starts_with("sandbox")
        );
    }
    let html = node.write_local("page", b"<html><script>alert(3)</script></html>");
    node.ok(&["put", html.to_str().expect("utf-8"), "docs:/page.html"]);
    let raw = get("/-/b/docs/page.html?raw=1");
    assert_eq!(raw.header("content-type").as_deref(), Some("text/plain; charset=utf-8"));
    for bad in [
        "/-/b/docs/../../../etc/passwd",
        "/-/b/docs/many/%2e%2e/%2e%2e/etc/passwd",
        "/-/b/docs/..%2F..%2Fetc%2Fpasswd",
        "/-/b/docs%40main%40..%2F..%2F/",
    ] {
        let r = get(bad);
        assert!(matches!(r.status, 400 | 404), "{bad}: {} {}", r.status, r.text());
        assert!(!r.text().contains("root:"), "{bad} reached outside the store");
    }
    assert!(server.stop());
}

#[test]
fn a_directory_downloads_as_a_tar_that_tar_reads() {
    let (node, server, admin, _bob) = setup();
    let (cookie, _) = session(&server, &admin);
    let out = node.work.join("docs.tar");
    let r = curl(
        None,
        &["-b", &cookie, "-o", out.to_str().expect("utf-8")],
        &format!("{}/-/b/docs/?archive=tar", server.http),
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type").as_deref(), Some("application/x-tar"));
    let into = node.work.join("untarred");
    std::fs::create_dir_all(&into).expect("dir");
    let tar = Command::new("tar")
        .arg("-xf")
        .arg(&out)
        .arg("-C")
        .arg(&into)
        .output()
        .expect("run tar");
    assert!(tar.status.success(), "{}", combined(&tar));
    let root = into.join("docs");
    assert_eq!(
        std::fs::read(root.join("big.bin")).expect("big.bin"),
        crate::util::pattern(100_000, 3)
    );
    assert_eq!(
        std::fs::read(root.join("readme.md")).expect("readme"),
        b"# Docs\n\nA second line.\n"
    );
    assert_eq!(std::fs::read_dir(root.join("many")).expect("many").count(), 1000);
    assert_eq!(
        std::fs::read_link(root.join("many/e0042")).expect("a symlink"),
        std::path::PathBuf::from("t")
    );
    assert!(server.stop());
}

/// The share link `alknet share` printed, on `server` (whatever base URL
/// the node's configuration gave it).
fn link_on(server: &Server, printed: &str) -> String {
    let link = printed
        .lines()
        .find(|l| l.contains("/-/s/shr_"))
        .expect("a link")
        .trim();
    format!("{}{}", server.http, &link[link.find("/-/s/").expect("path")..])
}

#[test]
fn share_links_expire_with_410_and_revoked_ones_are_gone() {
    let (node, server, admin, _bob) = setup();
    // Long enough to be opened once on a loaded machine, short enough to wait out.
    let made = node.ok(&["share", "docs:/readme.md", "--expires", "3s"]);
    let url = link_on(&server, &made);
    let open = curl(None, &[], &url);
    assert_eq!(open.status, 200, "{}", open.text());
    assert!(open.text().contains("A second line."));
    assert_eq!(open.header("referrer-policy").as_deref(), Some("no-referrer"));
    // Expiry: poll until the second has passed (the store's clock decides).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let gone = loop {
        let r = curl(None, &[], &url);
        if r.status != 200 || std::time::Instant::now() > deadline {
            break r;
        }
        std::thread::park_timeout(std::time::Duration::from_millis(100));
    };
    assert_eq!(gone.status, 410, "{}", gone.text());
    // A password, then revocation.
    let pw = node.write_local("pw", b"sesame\n");
    let made = node.ok(&["share", "docs:/", "--password-file", pw.to_str().expect("utf-8")]);
    let base = link_on(&server, &made);
    let locked = curl(None, &[], &base);
    assert_eq!(locked.status, 401);
    assert!(!locked.text().contains("readme.md"), "a locked link showed its files");
    let wrong = curl(None, &["--data", "password=nope"], base.trim_end_matches('/'));
    assert_eq!(wrong.status, 401);
    let right = curl(None, &["--data", "password=sesame"], base.trim_end_matches('/'));
    assert_eq!(right.status, 303, "{}", right.text());
    let unlock = right.header("set-cookie").expect("cookie");
    let pair = unlock.split(';').next().expect("pair").to_owned();
    let open = curl(None, &["-b", &pair], &base);
    assert_eq!(open.status, 200);
    assert!(open.text().contains("readme.md"));
    // A subpath that climbs out of the share is refused.
    let out = curl(None, &["-b", &pair], &format!("{base}..%2F..%2F"));
    assert!(matches!(out.status, 400 | 404), "{}", out.status);
    let list = node.json(&["shares"]);
    let id = list.as_array().expect("shares").last().expect("one")["id"].to_string();
    node.ok(&["unshare", &id]);
    assert_eq!(curl(None, &["-b", &pair], &base).status, 404);
    let _ = admin;
    assert!(server.stop());
}

#[test]
fn repository_pages_show_refs_log_trees_and_hide_from_who_may_not_fetch() {
    let (_node, server, admin, bob) = setup();
    let (cookie, _) = session(&server, &admin);
    let get = |path: &str, cookie: &str| curl(None, &["-b", cookie], &format!("{}{path}", server.http));
    let page = get("/-/r/proj", &cookie).text();
    assert!(page.contains("refs/heads/main") && page.contains("/proj.git"), "{page}");
    let log = get("/-/r/proj/log?rev=main", &cookie).text();
    let (second, first) = (log.find("Second commit"), log.find("First commit"));
    assert!(second.is_some() && second < first, "newest first: {log}");
    let tree = get("/-/r/proj/tree/main/", &cookie).text();
    assert!(tree.contains(">README<") && tree.contains(">src/<"), "{tree}");
    let blob = get("/-/r/proj/tree/main/src/lib.rs", &cookie);
    assert_eq!(blob.status, 200);
    assert!(blob.text().contains("<span class=\"k\">pub</span>"), "{}", blob.text());
    assert_eq!(get("/-/r/proj/tree/main/nope", &cookie).status, 404);
    // Bob has no grant on proj: it is not there for him.
    let (bobs, _) = session(&server, &bob);
    let hidden = get("/-/r/proj", &bobs);
    assert_eq!(hidden.status, 404);
    assert!(!hidden.text().contains("refs/heads"));
    assert!(server.stop());
}

/// `alknet share` against a node's API: the link is the token user's, it
/// works, it lists, and a user who may not read the bucket cannot make one.
#[test]
fn share_links_made_through_a_remote_node_act_as_the_tokens_user() {
    let (node, server, admin, bob) = setup();
    let remote = |token: &str, args: &[&str]| {
        let mut all = vec!["--node", server.http.as_str(), "--json"];
        all.extend_from_slice(args);
        node.cmd(&all).env("ALKNET_TOKEN", token).output().expect("run alknet")
    };
    let out = remote(&bob, &["share", "docs:/readme.md", "--expires", "2h"]);
    assert!(out.status.success(), "{}", combined(&out));
    let made: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(made["user"], "bob");
    let url = made["url"].as_str().expect("url");
    assert!(url.starts_with(&format!("{}/-/s/shr_", server.http)), "{url}");
    let page = curl(None, &[], url);
    assert_eq!(page.status, 200);
    assert!(page.text().contains("A second line."));
    // Bob's list has it; the admin's does not (each sees their own).
    let list = |token: &str| {
        let out = remote(token, &["shares"]);
        assert!(out.status.success(), "{}", combined(&out));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).expect("json")
    };
    assert_eq!(list(&bob).as_array().expect("list").len(), 1);
    assert_eq!(list(&admin).as_array().expect("list").len(), 0);
    // Bob cannot share what he cannot read; nobody revokes another's link.
    node.ok(&["bucket", "create", "secret"]);
    let refused = remote(&bob, &["share", "secret:/"]);
    assert!(!refused.status.success());
    assert!(combined(&refused).contains("does not exist"), "{}", combined(&refused));
    let id = made["id"].to_string();
    assert!(!remote(&admin, &["unshare", &id]).status.success());
    assert!(remote(&bob, &["unshare", &id]).status.success());
    assert_eq!(curl(None, &[], url).status, 404);
    assert!(server.stop());
}
