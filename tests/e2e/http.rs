//! The HTTP API, driven with curl and Python's `requests`, as a script
//! would drive it.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::{Node, Server, combined, peak_rss_kib};

/// curl's answer: status, headers (lower-case names) and body.
pub(crate) struct Reply {
    pub(crate) status: u16,
    pub(crate) headers: String,
    body: Vec<u8>,
}

impl Reply {
    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    pub(crate) fn header(&self, name: &str) -> Option<String> {
        self.headers.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
        })
    }

    /// The error code of a JSON error answer.
    fn code(&self) -> String {
        self.json()["error"]["code"].as_str().unwrap_or_default().to_owned()
    }
}

/// Runs curl against `url` with `args` (and the token, if any).
pub(crate) fn curl(token: Option<&str>, args: &[&str], url: &str) -> Reply {
    let dir = tempfile::tempdir().expect("tmp");
    let headers = dir.path().join("h");
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--path-as-is", "-D"]).arg(&headers).args(args);
    if let Some(t) = token {
        cmd.arg("-H").arg(format!("Authorization: Bearer {t}"));
    }
    let out = cmd.arg(url).output().expect("run curl");
    assert!(out.status.success(), "curl {args:?} {url}: {}", combined(&out));
    let headers = std::fs::read_to_string(&headers).unwrap_or_default();
    // The last response's status line (after any 100 Continue).
    let status = headers
        .lines()
        .rfind(|l| l.starts_with("HTTP/"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Reply {
        status,
        headers,
        body: out.stdout,
    }
}

/// Adds the admin user `admin` (the tests' nodes start with no users).
pub(crate) fn add_admin(node: &Node) {
    let key = crate::util::client_key(node, "admin-key");
    node.ok(&[
        "user",
        "add",
        "admin",
        "--admin",
        "--key",
        key.with_extension("pub").to_str().expect("utf-8"),
    ]);
}

pub(crate) fn token(node: &Node, user: &str, extra: &[&str]) -> String {
    let mut args = vec!["token", "create", user];
    args.extend_from_slice(extra);
    let out = node.ok(&args);
    let t = out.lines().last().expect("the token").trim().to_owned();
    assert!(t.starts_with("alk_") && t.len() == 68, "{out}");
    t
}

/// A node with bucket `docs`, the admin's token, and `bob` who may read it.
fn setup() -> (Node, Server, String, String) {
    let node = Node::new();
    add_admin(&node);
    node.ok(&["bucket", "create", "docs"]);
    crate::util::add_user(&node, "bob");
    node.ok(&["grant", "bob", "docs", "read"]);
    let server = Server::start(&node);
    let admin = token(&node, "admin", &[]);
    let bob = token(&node, "bob", &["--name", "bobs"]);
    (node, server, admin, bob)
}

#[test]
fn files_round_trip_with_ranges_etags_and_compare_and_swap() {
    let (node, server, admin, _bob) = setup();
    let base = format!("{}/api/v1/b/docs/main", server.http);
    let data = crate::util::pattern(3 << 20, 7);
    let local = node.write_local("big.bin", &data);
    let up = curl(
        Some(&admin),
        &["-T", local.to_str().expect("utf-8")],
        &format!("{base}/dir/big.bin?parents=true"),
    );
    assert_eq!(up.status, 201, "{}", up.text());
    let hash = blake3::hash(&data).to_hex().to_string();
    assert_eq!(up.json()["hash"], hash.as_str());
    assert_eq!(up.header("etag").as_deref(), Some(format!("\"{hash}\"").as_str()));

    let down = curl(Some(&admin), &[], &format!("{base}/dir/big.bin"));
    assert_eq!(down.status, 200);
    assert!(down.body == data, "the download is the upload");
    assert_eq!(down.header("etag").as_deref(), Some(format!("\"{hash}\"").as_str()));
    // What the CLI sees is what HTTP wrote.
    assert_eq!(node.bytes(&["cat", "docs:/dir/big.bin"]), data);

    let part = curl(Some(&admin), &["-r", "1000-1999"], &format!("{base}/dir/big.bin"));
    assert_eq!(part.status, 206);
    assert!(part.body == data[1000..2000]);
    assert_eq!(
        part.header("content-range").as_deref(),
        Some(format!("bytes 1000-1999/{}", data.len()).as_str())
    );
    let tail = curl(Some(&admin), &["-r", "-10"], &format!("{base}/dir/big.bin"));
    assert!(tail.body == data[data.len() - 10..]);
    let outside = curl(Some(&admin), &["-r", "99999999-"], &format!("{base}/dir/big.bin"));
    assert_eq!(outside.status, 416);
    let cached = curl(
        Some(&admin),
        &["-H", &format!("If-None-Match: \"{hash}\"")],
        &format!("{base}/dir/big.bin"),
    );
    assert_eq!(cached.status, 304);

    // Compare-and-swap: a stale ETag loses, the current one wins.
    let v2 = node.write_local("v2", b"second");
    let stale = "\"0000000000000000000000000000000000000000000000000000000000000000\"";
    let lost = curl(
        Some(&admin),
        &["-T", v2.to_str().expect("utf-8"), "-H", &format!("If-Match: {stale}")],
        &format!("{base}/dir/big.bin"),
    );
    assert_eq!(lost.status, 412, "{}", lost.text());
    assert_eq!(lost.code(), "conflict");
    assert_eq!(
        node.bytes(&["cat", "docs:/dir/big.bin"]),
        data,
        "a lost swap changes nothing"
    );
    let won = curl(
        Some(&admin),
        &[
            "-T",
            v2.to_str().expect("utf-8"),
            "-H",
            &format!("If-Match: \"{hash}\""),
        ],
        &format!("{base}/dir/big.bin"),
    );
    assert_eq!(won.status, 200, "{}", won.text());
    let create_only = curl(
        Some(&admin),
        &["-T", v2.to_str().expect("utf-8"), "-H", "If-None-Match: *"],
        &format!("{base}/dir/big.bin"),
    );
    assert_eq!(create_only.status, 412);
    assert_eq!(node.ok(&["cat", "docs:/dir/big.bin"]), "second");

    // Listing, stat, directory operations, history.
    let api = format!("{}/api/v1/buckets/docs/branches/main", server.http);
    let made = curl(
        Some(&admin),
        &["-X", "POST", "-d", r#"{"path":"/a/b","parents":true}"#],
        &format!("{api}/mkdir"),
    );
    assert_eq!(made.status, 201, "{}", made.text());
    let moved = curl(
        Some(&admin),
        &["-X", "POST", "-d", r#"{"from":"/dir/big.bin","to":"/a/b/moved"}"#],
        &format!("{api}/move"),
    );
    assert_eq!(moved.status, 200, "{}", moved.text());
    let copied = curl(
        Some(&admin),
        &["-X", "POST", "-d", r#"{"from":"/a/b/moved","to":"/copy"}"#],
        &format!("{api}/copy"),
    );
    assert_eq!(copied.status, 201, "{}", copied.text());
    let root = curl(Some(&admin), &[], &base);
    let names: Vec<String> = root.json()["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| e["name"].as_str().expect("name").to_owned())
        .collect();
    assert_eq!(names, ["a", "copy", "dir"]);
    let stat = curl(Some(&admin), &[], &format!("{base}/a/b/moved?stat"));
    assert_eq!(stat.json()["size"], 6);
    let snap = curl(
        Some(&admin),
        &["-X", "POST", "-d", r#"{"name":"s1"}"#],
        &format!("{api}/snapshots"),
    );
    assert_eq!(snap.status, 201, "{}", snap.text());
    let at_snap = curl(
        Some(&admin),
        &[],
        &format!("{}/api/v1/b/docs/main@s1/copy", server.http),
    );
    assert_eq!(at_snap.text(), "second");
    let gone = curl(Some(&admin), &["-X", "DELETE"], &format!("{base}/copy"));
    assert_eq!(gone.status, 200);
    let dir = curl(Some(&admin), &["-X", "DELETE"], &format!("{base}/a"));
    assert_eq!(dir.status, 409, "a directory needs ?recursive");
    let dir = curl(Some(&admin), &["-X", "DELETE"], &format!("{base}/a?recursive=true"));
    assert_eq!(dir.status, 200, "{}", dir.text());
    // A past version is read-only; the file is still there.
    assert_eq!(
        curl(
            Some(&admin),
            &[],
            &format!("{}/api/v1/b/docs/main@s1/copy", server.http)
        )
        .text(),
        "second"
    );
    let frozen = curl(
        Some(&admin),
        &["-X", "DELETE"],
        &format!("{}/api/v1/b/docs/main@s1/copy", server.http),
    );
    assert_eq!(frozen.status, 403);
    let log = curl(Some(&admin), &[], &format!("{api}/log?limit=3"));
    assert_eq!(log.json()["commits"].as_array().expect("commits").len(), 3);
    let branch = curl(
        Some(&admin),
        &["-X", "POST", "-d", r#"{"name":"dev","from":"main@s1"}"#],
        &format!("{}/api/v1/buckets/docs/branches", server.http),
    );
    assert_eq!(branch.status, 201, "{}", branch.text());
    let diff = curl(Some(&admin), &[], &format!("{api}/diff?to=dev"));
    assert!(diff.text().contains("/copy"), "{}", diff.text());
    assert!(server.stop());
}

#[test]
fn who_may_do_what_over_http() {
    let (node, server, admin, bob) = setup();
    let url = |p: &str| format!("{}{p}", server.http);
    node.ok_stdin(&["put", "-", "docs:/f"], b"hello");
    node.ok(&["bucket", "create", "secret"]);

    // No token, a bad one: 401 with a challenge git understands.
    let none = curl(None, &[], &url("/api/v1/buckets"));
    assert_eq!(none.status, 401);
    assert!(none.headers.contains("Basic realm="), "{}", none.headers);
    let bad = curl(
        Some("alk_0000000000000000000000000000000000000000000000000000000000000000"),
        &[],
        &url("/api/v1/buckets"),
    );
    assert_eq!(bad.status, 401);
    // Basic with the token as the password works (git's credential helpers).
    let basic = curl(None, &["-u", &format!("bob:{bob}")], &url("/api/v1/whoami"));
    assert_eq!(basic.json()["user"], "bob");

    // Bob reads docs, may not write it, and cannot tell secret from nothing.
    assert_eq!(curl(Some(&bob), &[], &url("/api/v1/b/docs/main/f")).text(), "hello");
    let listed = curl(Some(&bob), &[], &url("/api/v1/buckets")).json();
    let names: Vec<&str> = listed
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|b| b["name"].as_str())
        .collect();
    assert_eq!(names, ["docs"]);
    let write = curl(Some(&bob), &["-X", "DELETE"], &url("/api/v1/b/docs/main/f"));
    assert_eq!(write.status, 403);
    let hidden = curl(Some(&bob), &[], &url("/api/v1/b/secret/main/f"));
    let missing = curl(Some(&bob), &[], &url("/api/v1/b/nothing/main/f"));
    assert_eq!((hidden.status, missing.status), (404, 404));
    assert_eq!(
        hidden.text().replace("secret", "X"),
        missing.text().replace("nothing", "X"),
        "a hidden bucket answers like a missing one"
    );
    let admin_only = curl(Some(&bob), &["-X", "POST"], &url("/api/v1/gc"));
    assert_eq!(admin_only.status, 403);

    // A read-only token of the admin cannot change anything.
    let ro = token(&node, "admin", &["--read-only"]);
    let refused = curl(Some(&ro), &["-X", "DELETE"], &url("/api/v1/b/docs/main/f"));
    assert_eq!(refused.status, 403);
    assert_eq!(curl(Some(&ro), &[], &url("/api/v1/b/docs/main/f")).text(), "hello");

    // Revoked and expired tokens stop working.
    let list = node.json(&["token", "list"]);
    assert_eq!(list.as_array().expect("tokens").len(), 3);
    node.ok(&["token", "revoke", "bobs"]);
    assert_eq!(curl(Some(&bob), &[], &url("/api/v1/whoami")).status, 401);
    let made = curl(
        Some(&admin),
        &["-X", "POST", "-d", r#"{"user":"bob","expires_days":0}"#],
        &url("/api/v1/tokens"),
    );
    assert_eq!(made.status, 201, "{}", made.text());
    let expired = made.json()["token"].as_str().expect("token").to_owned();
    assert_eq!(curl(Some(&expired), &[], &url("/api/v1/whoami")).status, 401);

    // Bad input: each a clear error; the node keeps serving.
    let junk = curl(
        Some(&admin),
        &["-X", "POST", "-d", "{not json"],
        &url("/api/v1/buckets"),
    );
    assert_eq!((junk.status, junk.code().as_str()), (400, "invalid"), "{}", junk.text());
    let dots = curl(Some(&admin), &[], &url("/api/v1/b/docs/main/a/../../etc/passwd"));
    assert_eq!(dots.status, 400, "{}", dots.text());
    let long = "n".repeat(10_000);
    let long_name = curl(
        Some(&admin),
        &["-T", "/dev/null"],
        &url(&format!("/api/v1/b/docs/main/{long}")),
    );
    assert!(
        matches!(long_name.status, 400 | 414 | 431),
        "{} {}",
        long_name.status,
        long_name.text()
    );
    let no_route = curl(Some(&admin), &[], &url("/api/v1/nope"));
    assert_eq!((no_route.status, no_route.code().as_str()), (404, "no_route"));
    assert_eq!(curl(Some(&admin), &[], &url("/api/v1/b/docs/main/f")).text(), "hello");
    assert!(server.stop());
}

/// Streams 2 GiB up and down; the node's memory stays bounded.
#[test]
fn a_2_gib_upload_and_download_stream_in_bounded_memory() {
    const SIZE: u64 = 2 << 30;
    let (node, server, admin, _) = setup();
    let big = node.work.join("big");
    std::fs::File::create(&big)
        .and_then(|f| f.set_len(SIZE))
        .expect("sparse file");
    let url = format!("{}/api/v1/b/docs/main/big", server.http);
    let up = curl(
        Some(&admin),
        &["-T", big.to_str().expect("utf-8"), "-o", "/dev/null"],
        &url,
    );
    assert_eq!(up.status, 201);
    let down = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "curl -sS -H 'Authorization: Bearer {admin}' {url} | cmp - {}",
            big.display()
        ))
        .output()
        .expect("download");
    assert!(down.status.success(), "the download is the upload: {}", combined(&down));
    let peak = peak_rss_kib(server.pid()).expect("VmHWM");
    assert!(peak < 200 * 1024, "the node peaked at {} MiB", peak / 1024);
    assert!(server.stop());
}

/// A client that sends its request head a byte a second is cut off; the
/// node answers everyone else meanwhile.
#[test]
fn a_slow_loris_client_is_cut_off() {
    let node = Node::new();
    let settings = std::fs::read_to_string(node.data.join("alknet.toml")).expect("settings");
    std::fs::write(
        node.data.join("alknet.toml"),
        settings.replace("header_timeout_secs = 10", "header_timeout_secs = 2"),
    )
    .expect("settings");
    add_admin(&node);
    let server = Server::start(&node);
    let admin = token(&node, "admin", &[]);
    let addr = server.http.trim_start_matches("http://").to_owned();
    let mut slow = std::net::TcpStream::connect(&addr).expect("connect");
    slow.set_nonblocking(true).expect("nonblocking");
    let started = Instant::now();
    let head = b"GET /api/v1/whoami HTTP/1.1\r\nHost: x\r\nX-Slow: ";
    let mut cut = false;
    for b in head.iter().chain(std::iter::repeat(&b'a')).take(30) {
        if slow.write_all(&[*b]).is_err() {
            cut = true;
            break;
        }
        // Meanwhile others are served.
        assert_eq!(
            curl(Some(&admin), &[], &format!("{}/api/v1/whoami", server.http)).status,
            200
        );
        std::thread::sleep(Duration::from_millis(500));
        let mut probe = [0u8; 512];
        match slow.read(&mut probe) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            // An answer (408) or the end of the connection.
            _ => {
                cut = true;
                break;
            }
        }
    }
    assert!(cut, "a client that never finishes its head is cut off");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "cut off after {:?}",
        started.elapsed()
    );
    assert!(server.stop());
}

/// The Python half of the watch test: reads `N` events, hangs up, then
/// reconnects with Last-Event-ID and reads the rest.
const WATCH_SCRIPT: &str = r#"
import json, sys, requests
url, token, first, total = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
h = {"Authorization": "Bearer " + token}
def events(resp):
    ev = {}
    for line in resp.iter_lines(decode_unicode=True):
        if line == "":
            if "data" in ev:
                yield ev
            ev = {}
        elif line.startswith(":"):
            continue
        else:
            k, _, v = line.partition(": ")
            ev[k] = v
seen = []
with requests.get(url + "?from=0", headers=h, stream=True, timeout=30) as r:
    assert r.headers["content-type"].startswith("text/event-stream"), r.headers
    for ev in events(r):
        seen.append(json.loads(ev["data"]))
        if len(seen) == first:
            break
last = seen[-1]["version"]
print("PAUSED", flush=True)
sys.stdin.readline()
with requests.get(url, headers=dict(h, **{"Last-Event-ID": str(last)}), stream=True, timeout=30) as r:
    for ev in events(r):
        seen.append(json.loads(ev["data"]))
        if len(seen) == total:
            break
print(json.dumps([c["paths"] for c in seen]))
"#;

#[test]
fn watch_resumes_after_a_reconnect_with_nothing_missed_or_repeated() {
    let (node, server, admin, _) = setup();
    for i in 0..3 {
        node.ok_stdin(&["put", "-", &format!("docs:/before{i}")], b"x");
    }
    let url = format!("{}/api/v1/buckets/docs/branches/main/watch", server.http);
    // The bucket's creation and three files: four commits, then three more.
    let mut py = Command::new(venv("python"))
        .args(["-c", WATCH_SCRIPT, &url, &admin, "4", "7"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    let mut out = std::io::BufReader::new(py.stdout.take().expect("stdout"));
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).expect("read");
    if line.trim() != "PAUSED" {
        let mut err = String::new();
        py.stderr.take().expect("stderr").read_to_string(&mut err).ok();
        panic!("the watcher did not get its first events: {line}{err}");
    }
    for i in 0..3 {
        node.ok_stdin(&["put", "-", &format!("docs:/while{i}")], b"y");
    }
    py.stdin.take().expect("stdin").write_all(b"go\n").expect("resume");
    let mut rest = String::new();
    out.read_to_string(&mut rest).expect("read");
    let status = py.wait().expect("wait");
    let mut err = String::new();
    py.stderr.take().expect("stderr").read_to_string(&mut err).ok();
    assert!(status.success(), "{err}");
    let paths: Vec<Vec<String>> = serde_json::from_str(rest.trim()).expect("json");
    let flat: Vec<String> = paths.into_iter().flatten().collect();
    assert_eq!(
        flat,
        ["/before0", "/before1", "/before2", "/while0", "/while1", "/while2"]
    );
    assert!(server.stop());
}

/// A program of the Python venv `tests/run` makes (`ALKNET_VENV`, by
/// default /var/cache/alknet-ci/venv): python with `requests`, and
/// openapi-spec-validator.
fn venv(program: &str) -> std::path::PathBuf {
    let venv = std::env::var_os("ALKNET_VENV").unwrap_or_else(|| "/var/cache/alknet-ci/venv".into());
    let bin = std::path::Path::new(&venv).join("bin").join(program);
    assert!(
        bin.exists(),
        "{} is missing: tests/run installs it (pip install requests openapi-spec-validator)",
        bin.display()
    );
    bin
}

#[test]
fn the_openapi_document_validates_and_lists_every_route() {
    let node = Node::new();
    let server = Server::start(&node);
    let doc = curl(None, &[], &format!("{}/api/v1/openapi.json", server.http));
    assert_eq!(doc.status, 200);
    let file = node.work.join("openapi.json");
    std::fs::write(&file, &doc.body).expect("write");
    let out = Command::new(venv("openapi-spec-validator"))
        .arg(&file)
        .output()
        .expect("run the validator");
    assert!(out.status.success(), "{}", combined(&out));
    let v = doc.json();
    assert_eq!(v["openapi"], "3.1.0");
    let ops: usize = v["paths"]
        .as_object()
        .expect("paths")
        .values()
        .map(|p| p.as_object().expect("ops").len())
        .sum();
    assert!(ops >= 30, "{ops} operations");
    for path in [
        "/api/v1/buckets",
        "/api/v1/b/{bucket}/{branch}/{path}",
        "/api/v1/tokens",
        "/metrics",
    ] {
        assert!(v["paths"].get(path).is_some(), "{path} is documented");
    }
    assert!(server.stop());
}

/// `/metrics` is Prometheus text that counts requests as they are made.
#[test]
fn metrics_parse_and_move() {
    let (node, server, admin, bob) = setup();
    let url = format!("{}/metrics", server.http);
    assert_eq!(curl(None, &[], &url).status, 401);
    assert_eq!(curl(Some(&bob), &[], &url).status, 403, "metrics are for admins");
    let parse = |text: &str| -> std::collections::HashMap<String, f64> {
        let mut m = std::collections::HashMap::new();
        for line in text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
            let (name, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("not a sample: {line}"));
            let v: f64 = value.parse().unwrap_or_else(|_| panic!("not a number: {line}"));
            m.insert(name.to_owned(), v);
        }
        m
    };
    let before = parse(&curl(Some(&admin), &[], &url).text());
    let ok = "alknet_http_requests_total{frontend=\"http\",outcome=\"2xx\"}";
    let bytes = "alknet_http_content_bytes_total{direction=\"in\"}";
    let local = node.write_local("m", b"metrics!");
    curl(
        Some(&admin),
        &["-T", local.to_str().expect("utf-8")],
        &format!("{}/api/v1/b/docs/main/m", server.http),
    );
    let after = parse(&curl(Some(&admin), &[], &url).text());
    assert!(after[ok] >= before[ok] + 2.0, "{} -> {}", before[ok], after[ok]);
    assert_eq!(after[bytes] - before[bytes], 8.0);
    assert_eq!(
        after["alknet_http_commit_seconds_count"] - before["alknet_http_commit_seconds_count"],
        1.0
    );
    assert!(after.contains_key("alknet_store_blob_bytes"));
    // SSH frontends count their sessions on the same page.
    let sftp_ok = "alknet_sessions_total{frontend=\"sftp\",outcome=\"ok\"}";
    let bob_key = crate::util::client_key(&node, "bob");
    let (ok, out) = crate::util::sftp_batch(&node, &server, &bob_key, crate::util::Via::Tcp, "ls /docs\n");
    assert!(ok, "{out}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = parse(&curl(Some(&admin), &[], &url).text());
        if now[sftp_ok] == after[sftp_ok] + 1.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the SFTP session was not counted: {}",
            now[sftp_ok]
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(server.stop());
}

/// The same API over the QUIC endpoint (`alknet proxy --http` joins one
/// stream to stdin and stdout) and over TLS.
#[test]
fn the_api_answers_over_quic_and_tls() {
    let (node, server, admin, _) = setup();
    node.ok_stdin(&["put", "-", "docs:/f"], b"over quic");
    let request = format!(
        "GET /api/v1/b/docs/main/f HTTP/1.1\r\nHost: node\r\nAuthorization: Bearer {admin}\r\nConnection: close\r\n\r\n"
    );
    let mut proxy = Command::new(crate::util::bin())
        .args(["proxy", "--http", &server.quic])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("proxy");
    proxy
        .stdin
        .take()
        .expect("stdin")
        .write_all(request.as_bytes())
        .expect("send");
    let out = proxy.wait_with_output().expect("wait");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("HTTP/1.1 200"), "{}", combined(&out));
    assert!(text.ends_with("over quic"), "{text}");
    assert!(server.stop());

    // TLS from a self-signed certificate.
    let cert = node.work.join("cert.pem");
    let key = node.work.join("key.pem");
    self_signed(&cert, &key);
    let settings = std::fs::read_to_string(node.data.join("alknet.toml")).expect("settings");
    let settings = settings.replace(
        "metrics_public = false",
        &format!("metrics_public = false\ntls_cert = {:?}\ntls_key = {:?}", cert, key),
    );
    std::fs::write(node.data.join("alknet.toml"), settings).expect("settings");
    let server = Server::start(&node);
    assert!(server.http.starts_with("https://"), "{}", server.http);
    let got = curl(
        Some(&admin),
        &["--cacert", cert.to_str().expect("utf-8")],
        &format!("{}/api/v1/b/docs/main/f", server.http),
    );
    assert_eq!(got.text(), "over quic");
    assert!(server.stop());
}

/// Makes a self-signed server certificate for 127.0.0.1 and its key.
pub(crate) fn self_signed(cert: &std::path::Path, key: &std::path::Path) {
    let made = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
        ])
        .args(["-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1"])
        // A server's certificate, not a CA's: rustls refuses a CA one.
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .arg("-keyout")
        .arg(key)
        .arg("-out")
        .arg(cert)
        .output()
        .expect("openssl");
    assert!(made.status.success(), "{}", combined(&made));
}

/// A 100,000-entry directory pages by cursor: every name once, in order.
#[test]
fn a_100000_entry_directory_pages_by_cursor() {
    const N: usize = 100_000;
    let node = Node::new();
    node.ok(&["bucket", "create", "docs"]);
    let local = node.work.join("many");
    std::fs::create_dir_all(&local).expect("dir");
    // Symlinks: entries like any other, without 100,000 blob imports.
    for i in 0..N {
        std::os::unix::fs::symlink("t", local.join(format!("e{i:06}"))).expect("symlink");
    }
    node.ok(&["put", "-r", local.to_str().expect("utf-8"), "docs:/"]);
    add_admin(&node);
    let server = Server::start(&node);
    let admin = token(&node, "admin", &[]);
    let mut after: Option<String> = None;
    let (mut count, mut pages) = (0, 0);
    let started = Instant::now();
    loop {
        let mut url = format!("{}/api/v1/b/docs/main/many?limit=5000", server.http);
        if let Some(a) = &after {
            url.push_str(&format!("&after={a}"));
        }
        let page = curl(Some(&admin), &[], &url).json();
        for e in page["entries"].as_array().expect("entries") {
            assert_eq!(e["name"].as_str().expect("name"), format!("e{count:06}"));
            count += 1;
        }
        pages += 1;
        match page["next_after"].as_str() {
            Some(n) => after = Some(n.to_owned()),
            None => break,
        }
    }
    assert_eq!(count, N);
    assert!(pages >= 20, "{pages} pages");
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "listing took {:?}",
        started.elapsed()
    );
    // The web page of the same directory opens at once and pages; a sort by
    // another key than the name scans the directory once per page.
    let cookie = format!("alknet_session={admin}");
    for (query, first, bound) in [
        ("", "e000000", Duration::from_secs(2)),
        ("?after=e099899", "e099900", Duration::from_secs(2)),
        ("?sort=name&desc=1", "e099999", Duration::from_secs(10)),
    ] {
        let started = Instant::now();
        let page = curl(
            None,
            &["-b", &cookie],
            &format!("{}/-/b/docs/many/{query}", server.http),
        );
        let took = started.elapsed();
        assert_eq!(page.status, 200);
        let text = page.text();
        let at = text.find("<tbody>").expect("a listing");
        assert!(
            text[at..].find(first) < text[at..].find("</tr>"),
            "{query}: {first} first"
        );
        assert!(took < bound, "{query}: the page took {took:?}");
    }
    assert!(server.stop());
}
