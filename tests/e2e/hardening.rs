//! The node under hostile and heavy use: connection floods, giant writes,
//! local snooping. Each test here failed on the node before its fix.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::util::{Node, Server, Via, client_key, sftp_batch};

/// A node with an admin `alice` (her key returned) and a bucket `b`.
fn admin_node() -> (Node, std::path::PathBuf) {
    let node = Node::new();
    let key = client_key(&node, "alice");
    let public = format!("{}.pub", key.display());
    node.ok(&["user", "add", "alice", "--key", &public, "--admin"]);
    node.ok(&["bucket", "create", "b"]);
    (node, key)
}

/// Appends a `[limits]` table to the node's settings.
fn set_limits(node: &Node, lines: &str) {
    let path = node.data.join("alknet.toml");
    let mut text = std::fs::read_to_string(&path).expect("alknet.toml");
    let start = text.find("[limits]").expect("a [limits] table");
    text.truncate(start);
    text.push_str("[limits]\n");
    text.push_str(lines);
    std::fs::write(&path, text).expect("write alknet.toml");
}

/// Reads until the server closes `conn`; the time that took, or `None` if
/// it stayed open for `within`.
fn closed_within(conn: &mut TcpStream, within: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        let left = within.checked_sub(start.elapsed())?;
        conn.set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .expect("timeout");
        match conn.read(&mut buf) {
            Ok(0) => return Some(start.elapsed()),
            Ok(_) => continue,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                if start.elapsed() >= within {
                    return None;
                }
            }
            // A reset is a close too.
            Err(_) => return Some(start.elapsed()),
        }
    }
}

/// Idle connections that never log in, many more than the server's
/// open-file limit, neither stop it nor stay open: the ones over the limits
/// are closed at once, the others at the login deadline, and a real client
/// logs in afterwards (and during).
#[test]
fn idle_connections_do_not_stop_the_server() {
    let (node, key) = admin_node();
    set_limits(&node, "max_startups = 40\nlogin_grace_secs = 3\n");
    // A hard limit of 256 open files: without the limits, 600 connections
    // ended the server ("Too many open files").
    let mut server = Server::start_under(&node, &["prlimit", "--nofile=256:256", "--"]);
    let addr = format!("127.0.0.1:{}", server.ssh_port);

    // Under max_startups, idle connections leave room for a real login.
    let mut conns: Vec<TcpStream> = (0..20)
        .map(|_| TcpStream::connect(&addr).expect("the listener takes connections"))
        .collect();
    // One peer sends its version and then stalls in the key exchange.
    conns[0].write_all(b"SSH-2.0-stalled\r\n").expect("send version");
    let (ok, out) = sftp_batch(&node, &server, &key, Via::Tcp, "ls /\n");
    assert!(
        ok && out.contains('b'),
        "a real client logs in beside the idle ones:\n{out}"
    );

    // A flood: over the limits, connections are closed as they arrive.
    conns.extend((0..580).map(|_| TcpStream::connect(&addr).expect("the listener takes connections")));

    let grace = Duration::from_secs(3);
    let mut late = 0;
    for (i, conn) in conns.iter_mut().enumerate() {
        let took = closed_within(conn, Duration::from_secs(20))
            .unwrap_or_else(|| panic!("connection {i} is still open 20 s later"));
        if took + Duration::from_millis(500) >= grace {
            late += 1;
        }
    }
    assert!(server.alive(), "the server is still running");
    assert!(
        late <= 40,
        "at most max_startups connections waited for the deadline, {late} did"
    );
    let log = std::fs::read_to_string(node.work.join("serve.log")).expect("serve log");
    assert!(log.contains("no login within 3 s"), "{log}");
    assert!(log.contains("limits.max_"), "{log}");

    let (ok, out) = sftp_batch(&node, &server, &key, Via::Tcp, "ls /\n");
    assert!(ok && out.contains('b'), "and after them:\n{out}");
    assert!(server.stop(), "a clean stop");
}

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).expect("stat").permissions().mode() & 0o777
}

/// The data directory holds every stored byte: other local accounts cannot
/// enter it, and one made readable is tightened at the next open.
#[test]
fn data_directory_is_private() {
    let fresh = tempfile::tempdir().expect("tempdir");
    let out = Command::new(crate::util::bin())
        .arg("--data")
        .arg(fresh.path().join("data"))
        .arg("init")
        .env("HOME", fresh.path())
        .output()
        .expect("init");
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "a new data directory needs no tightening: {out:?}"
    );
    let node = Node::new();
    node.ok(&["bucket", "create", "b"]);
    // Large enough to be a file of its own (small blobs live inside blobs.db).
    let secret = crate::util::pattern(100_000, 7);
    node.ok_stdin(&["put", "-", "b:/secret.bin"], &secret);
    assert_eq!(mode(&node.data), 0o700);
    assert_eq!(mode(&node.data.join("blobs")), 0o700);
    assert_eq!(mode(&node.data.join("tmp")), 0o700);
    assert_eq!(mode(&node.data.join("alknet.db")), 0o600);

    let blob = node.blob_file(&secret);
    assert!(blob.exists(), "{} is stored inline or elsewhere", blob.display());
    let nobody = |path: &std::path::Path| {
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "cat"])
            .arg(path)
            .output()
            .expect("setpriv")
    };
    // The temp dir of the test is 0700 too; open the way to the data
    // directory so only its own mode stands in the way.
    let mut up = node.data.parent();
    while let Some(dir) = up {
        if dir == std::path::Path::new("/") {
            break;
        }
        let m = mode(dir);
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(m | 0o711)).expect("chmod parent");
        up = dir.parent();
    }
    let out = nobody(&blob);
    assert!(!out.status.success(), "another account read a blob: {out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
        "{out:?}"
    );

    std::fs::set_permissions(&node.data, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    std::fs::set_permissions(node.data.join("alknet.db"), std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let out = node.cmd(&["ls", "b"]).output().expect("run");
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("readable by other local users"), "a warning: {err}");
    assert_eq!(mode(&node.data), 0o700);
    assert_eq!(mode(&node.data.join("alknet.db")), 0o600);
    assert!(!nobody(&blob).status.success());
}

/// Du of the data directory, in bytes actually allocated.
fn allocated(dir: &std::path::Path) -> u64 {
    let out = Command::new("du").args(["-s", "-B1"]).arg(dir).output().expect("du");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .expect("du prints a size")
}

/// The script for [`giant_writes_are_refused_at_once`]: one byte at 2^40, a
/// truncate to 2^40, and (with a small max_file_size) a 2 MiB upload.
const GIANT_WRITES: &str = r#"
start = time.time()
f = sftp.open('/b/sparse', 'w')
f.seek(2**40)
try:
    f.write(b'x')
    sys.exit('a write at 2^40 was taken')
except IOError as e:
    print('write refused:', e)
# paramiko's close swallows the refusal it gets; stat shows nothing was published.
f.close()
try:
    sftp.truncate('/b/sparse', 2**40)
    sys.exit('a truncate to 2^40 was taken')
except IOError as e:
    print('truncate refused:', e)
assert sftp.stat('/b/sparse').st_size == 0
try:
    sftp.putfo(io.BytesIO(b'a' * (2 << 20)), '/b/big')
    print('2 MiB stored')
except IOError as e:
    print('upload refused:', e)
print('big is', sftp.stat('/b/big').st_size, 'bytes')
sftp.remove('/b/big')
sftp.putfo(io.BytesIO(b'small'), '/b/small')
assert sftp.open('/b/small').read() == b'small'
print('took', time.time() - start)
"#;

/// Any `write` user could fill the host's disk with one byte at offset
/// 2^40 (the sparse file was made dense at close). Growth past the limits
/// is refused at the write, with a message that says why.
#[test]
fn giant_writes_are_refused_at_once() {
    let (node, key) = admin_node();

    // No max_file_size: the disk's free space is the limit.
    let server = Server::start(&node);
    let (ok, out) = crate::util::paramiko_sftp(&node, &server, &key, GIANT_WRITES);
    assert!(ok, "{out}");
    assert!(
        out.contains("write refused: /sparse: no space left on the data directory's disk"),
        "{out}"
    );
    assert!(out.contains("truncate refused: /sparse: no space left"), "{out}");
    assert!(
        out.contains("2 MiB stored") && out.contains("big is 2097152 bytes"),
        "{out}"
    );
    let took: f64 = out
        .split("took ")
        .nth(1)
        .and_then(|t| t.trim().parse().ok())
        .expect("time");
    assert!(took < 10.0, "refused at once, not after making the bytes ({took} s)");
    assert!(allocated(&node.data) < 64 << 20, "the data directory stayed small");
    assert!(server.stop());

    // A max_file_size of 1 MiB.
    set_limits(&node, "max_file_size = \"1MiB\"\n");
    let server = Server::start(&node);
    let (ok, out) = crate::util::paramiko_sftp(&node, &server, &key, GIANT_WRITES);
    assert!(ok, "{out}");
    assert!(out.contains("write refused: /sparse: file too large"), "{out}");
    assert!(out.contains("upload refused"), "{out}");
    assert!(
        out.contains("big is 0 bytes"),
        "nothing of a refused upload is published:\n{out}"
    );
    let log = std::fs::read_to_string(node.work.join("serve.log")).expect("serve log");
    assert!(!log.contains("internal error"), "{log}");
    assert!(server.stop());

    // The CLI obeys the same limits.
    let big = node.write_local("big", &vec![7u8; 2 << 20]);
    let err = node.fails(&["put", &big.display().to_string(), "b:/big2"]);
    assert!(err.contains("file too large"), "{err}");
    let err = node.fails(&["put", "-r", &node.work.display().to_string(), "b:/tree"]);
    assert!(err.contains("file too large"), "{err}");
}

const QUOTA_WRITES: &str = r#"
# Two files open at once: the second cannot take what the first holds.
a = sftp.open('/b/a', 'w')
a.write(b'a' * (600 << 10))
b = sftp.open('/b/b', 'w')
try:
    b.write(b'b' * (600 << 10))
    sys.exit('two writers passed the quota together')
except IOError as e:
    print('second writer refused:', e)
b.close()
a.close()
assert sftp.stat('/b/a').st_size == 600 << 10
f = sftp.open('/b/sparse', 'w')
f.seek(2**30)
try:
    f.write(b'x')
    sys.exit('a sparse write past the quota was taken')
except IOError as e:
    print('sparse write refused:', e)
f.close()
# Space freed is space to write again.
sftp.remove('/b/a')
sftp.putfo(io.BytesIO(b'c' * (900 << 10)), '/b/c')
print('c is', sftp.stat('/b/c').st_size, 'bytes')
"#;

/// A bucket's quota bounds what any branch head of it holds, open writes
/// included: a write past it fails at once with a message naming it, for
/// every frontend; a fork starts with its parent's bytes.
#[test]
fn quotas_bound_each_branch_head() {
    let (node, key) = admin_node();
    let err = node.fails(&["bucket", "quota", "nosuch", "1MiB"]);
    assert!(err.contains("nosuch"), "{err}");
    node.ok(&["bucket", "quota", "b", "1MiB"]);
    let list = node.json(&["bucket", "list"]);
    assert_eq!(list[0]["quota"], 1 << 20, "{list}");

    let server = Server::start(&node);
    let (ok, out) = crate::util::paramiko_sftp(&node, &server, &key, QUOTA_WRITES);
    assert!(ok, "{out}");
    // (The file /b of bucket b.)
    assert!(
        out.contains("second writer refused: /b: bucket b is at its quota of 1.0 MiB"),
        "{out}"
    );
    assert!(out.contains("sparse write refused:"), "{out}");
    assert!(out.contains("c is 921600 bytes"), "{out}");
    assert!(server.stop());

    // The CLI: the head holds 900 KiB of the 1 MiB.
    let big = node.write_local("big", &vec![7u8; 200 << 10]);
    let err = node.fails(&["put", &big.display().to_string(), "b:/big"]);
    assert!(err.contains("/big: bucket b is at its quota of 1.0 MiB"), "{err}");
    let json = node
        .cmd(&["--json", "put", &big.display().to_string(), "b:/big"])
        .output()
        .expect("put");
    let err: serde_json::Value = serde_json::from_slice(&json.stdout).expect("a JSON error");
    assert_eq!(err["error"]["kind"], "no_space", "{err}");
    // A fork holds what its parent held at the fork, and is bounded alike.
    node.ok(&["branch", "create", "b", "dev"]);
    let err = node.fails(&["put", &big.display().to_string(), "b@dev:/big"]);
    assert!(err.contains("quota"), "{err}");
    node.ok(&["rm", "b@dev:/c"]);
    node.ok(&["put", &big.display().to_string(), "b@dev:/big"]);
    // No quota, no bound.
    node.ok(&["bucket", "quota", "b", "none"]);
    node.ok(&["put", &big.display().to_string(), "b:/big"]);
}

/// A grant belongs to the bucket it was given on, not to its name: it goes
/// with the bucket, and a new bucket of that name starts with none.
#[test]
fn grants_die_with_their_bucket() {
    let node = Node::new();
    let bob = client_key(&node, "bob");
    node.ok(&["user", "add", "bob", "--key", &format!("{}.pub", bob.display())]);
    node.ok(&["bucket", "create", "photos"]);
    node.ok(&["grant", "bob", "photos", "read"]);
    let users = node.json(&["user", "list"]);
    assert_eq!(users[0]["grants"], serde_json::json!([["photos", "read"]]), "{users}");

    node.ok(&["bucket", "delete", "photos"]);
    node.ok(&["bucket", "create", "photos"]);
    let users = node.json(&["user", "list"]);
    assert_eq!(
        users[0]["grants"],
        serde_json::json!([]),
        "the old grant went with the old bucket: {users}"
    );
    let server = Server::start(&node);
    let (ok, out) = sftp_batch(&node, &server, &bob, Via::Tcp, "ls /photos\n");
    assert!(!ok, "bob cannot read the new bucket:\n{out}");

    let err = node.fails(&["grant", "bob", "nosuchbucket", "read"]);
    assert!(err.contains("bucket \"nosuchbucket\" does not exist"), "{err}");
    let err = node.fails(&["revoke", "bob", "photos"]);
    assert!(err.contains("has no grant on bucket"), "{err}");
    let err = node.fails(&["grant", "nobody", "photos", "read"]);
    assert!(err.contains("user \"nobody\" does not exist"), "{err}");
}

/// A second key logs in as the same user; a key taken away no longer does;
/// a refused login is logged with the key's fingerprint and the address.
#[test]
fn users_have_several_keys_and_failed_logins_are_logged() {
    let node = Node::new();
    let (first, second, stranger) = (
        client_key(&node, "k1"),
        client_key(&node, "k2"),
        client_key(&node, "k3"),
    );
    let pubkey = |k: &std::path::Path| format!("{}.pub", k.display());
    node.ok(&["user", "add", "carol", "--key", &pubkey(&first), "--admin"]);
    node.ok(&["user", "key", "add", "carol", "--key", &pubkey(&second)]);
    let err = node.fails(&["user", "key", "add", "carol", "--key", &pubkey(&second)]);
    assert!(err.contains("already belongs to user \"carol\""), "{err}");
    node.ok(&["bucket", "create", "b"]);
    let server = Server::start(&node);
    for key in [&first, &second] {
        let (ok, out) = sftp_batch(&node, &server, key, Via::Tcp, "ls /\n");
        assert!(ok && out.contains('b'), "{out}");
    }
    node.ok(&["user", "key", "remove", "carol", "--key", &pubkey(&first)]);
    let (ok, _) = sftp_batch(&node, &server, &first, Via::Tcp, "ls /\n");
    assert!(!ok, "a removed key no longer logs in");
    let err = node.fails(&["user", "key", "remove", "carol", "--key", &pubkey(&second)]);
    assert!(err.contains("last key"), "{err}");
    let (ok, _) = sftp_batch(&node, &server, &stranger, Via::Tcp, "ls /\n");
    assert!(!ok);

    let fingerprint = Command::new("ssh-keygen")
        .args(["-l", "-E", "sha256", "-f"])
        .arg(pubkey(&stranger))
        .output()
        .expect("ssh-keygen");
    let fingerprint = String::from_utf8_lossy(&fingerprint.stdout)
        .split_whitespace()
        .nth(1)
        .expect("a fingerprint")
        .to_owned();
    let log = std::fs::read_to_string(node.work.join("serve.log")).expect("serve log");
    let refused = log
        .lines()
        .find(|l| l.contains("login refused") && l.contains(&fingerprint))
        .unwrap_or_else(|| panic!("no refusal logged for {fingerprint}:\n{log}"));
    assert!(refused.contains("peer=127.0.0.1:"), "{refused}");

    // init with another admin key on a node that has users says so.
    let err = node.fails(&["init", "--admin-key", &pubkey(&stranger)]);
    assert!(err.contains("already has users"), "{err}");
}

/// A QUIC node address takes a host name as well as an IP literal.
#[test]
fn quic_addresses_take_host_names() {
    let (node, key) = admin_node();
    let mut server = Server::start(&node);
    server.quic = server.quic.replace("@127.0.0.1:", "@localhost:");
    let (ok, out) = sftp_batch(&node, &server, &key, Via::Quic, "ls /\n");
    assert!(ok && out.contains('b'), "{}: {out}", server.quic);
    let bad = Command::new(crate::util::bin())
        .args(["proxy", "not-a-node@localhost:1"])
        .output()
        .expect("run");
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("expected NODE_ID@HOST:PORT"),
        "{bad:?}"
    );
}

/// One flipped byte in a blob file: every read of it fails — the CLI with a
/// non-zero exit, SFTP with a failure — instead of handing out wrong bytes,
/// and `stats` names the blob. Other files still read.
#[test]
fn corrupt_bytes_are_never_served() {
    let (node, key) = admin_node();
    let data = crate::util::pattern(3 << 20, 11);
    node.ok_stdin(&["put", "-", "b:/victim.bin"], &data);
    node.ok_stdin(&["put", "-", "b:/fine.txt"], b"untouched");
    let blob = node.blob_file(&data);
    let mut bytes = std::fs::read(&blob).expect("read blob");
    bytes[2_000_000] ^= 0x40;
    std::fs::write(&blob, &bytes).expect("corrupt it");

    let out = node.cmd(&["cat", "b:/victim.bin"]).output().expect("run");
    assert!(!out.status.success(), "cat of a corrupt file fails");
    assert!(String::from_utf8_lossy(&out.stderr).contains("is corrupt"), "{out:?}");
    assert!(out.stdout.len() < 2_000_000, "nothing past the bad group came out");
    let target = node.work.join("victim.out");
    let err = node.fails(&["get", "b:/victim.bin", "-o", &target.display().to_string()]);
    assert!(err.contains("is corrupt"), "{err}");
    assert!(!target.exists(), "a failed get leaves no partial file");
    assert_eq!(node.ok(&["cat", "b:/fine.txt"]), "untouched");

    let server = Server::start(&node);
    let (ok, out) = sftp_batch(&node, &server, &key, Via::Tcp, "get /b/victim.bin v\n");
    assert!(!ok, "sftp get of a corrupt file fails:\n{out}");
    let (ok, out) = sftp_batch(&node, &server, &key, Via::Tcp, "get /b/fine.txt f\n");
    assert!(ok, "{out}");
    assert!(server.stop());

    let stats = node.json(&["stats"]);
    let hash = blake3::hash(&data).to_hex().to_string();
    assert_eq!(stats["corrupt_blobs"], serde_json::json!([hash]), "{stats}");
    let fsck = node.cmd(&["--json", "fsck"]).output().expect("fsck");
    assert!(!fsck.status.success());
    let report: serde_json::Value = serde_json::from_slice(&fsck.stdout).expect("fsck --json");
    assert!(report["problems"].to_string().contains(&hash), "{report}");
}

/// An SFTP request of a type the protocol does not define gets
/// `SSH_FX_OP_UNSUPPORTED` and the session goes on (it used to end).
#[test]
fn an_unknown_sftp_request_type_is_unsupported_not_fatal() {
    let (node, key) = admin_node();
    let server = Server::start(&node);
    let (ok, out) = crate::util::paramiko_sftp(
        &node,
        &server,
        &key,
        r#"
import struct
ch = t.open_session()
ch.invoke_subsystem('sftp')
def send(kind, body): ch.sendall(struct.pack('>IB', len(body) + 1, kind) + body)
def recv():
    head = b''
    while len(head) < 5: head += ch.recv(5 - len(head))
    n, kind = struct.unpack('>IB', head)
    body = b''
    while len(body) < n - 1: body += ch.recv(n - 1 - len(body))
    return kind, body
send(1, struct.pack('>I', 3))
assert recv()[0] == 2
send(99, struct.pack('>I', 7) + b'whatever')
kind, body = recv()
rid, code = struct.unpack('>II', body[:8])
print('reply', kind, rid, code)
send(16, struct.pack('>I', 8) + struct.pack('>I', 1) + b'/')
kind, body = recv()
print('realpath reply', kind)
"#,
    );
    assert!(ok, "{out}");
    assert!(out.contains("reply 101 7 8"), "STATUS, id 7, OP_UNSUPPORTED:\n{out}");
    assert!(out.contains("realpath reply 104"), "the session goes on:\n{out}");
}

/// Another process holds the database's write lock for 20 s. Writers wait
/// for it (as they should); readers — 20 SFTP sessions and a git ls-remote
/// — finish meanwhile: a waiting writer no longer stalls the node's async
/// threads (it did: two waiting uploads froze every session on 2 cores).
#[test]
fn a_long_write_lock_elsewhere_stalls_no_reader() {
    let (node, key) = admin_node();
    node.ok_stdin(&["put", "-", "b:/f"], b"content");
    node.ok(&["repo", "create", "r"]);
    let server = Server::start(&node);
    let db = node.data.join("alknet.db");
    let mut holder = Command::new("/usr/bin/python3")
        .args([
            "-c",
            "import sqlite3, sys, time\n\
             c = sqlite3.connect(sys.argv[1], isolation_level=None)\n\
             c.execute('BEGIN IMMEDIATE')\n\
             print('locked', flush=True)\n\
             time.sleep(20)\n\
             c.execute('COMMIT')\n",
        ])
        .arg(&db)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    crate::util::wait_for_line(&mut holder, "locked");
    let started = Instant::now();

    let sftp = |script: &str, name: &str| {
        let batch = node.work.join(format!("{name}.sftp"));
        std::fs::write(&batch, script).expect("batch");
        Command::new("sftp")
            .args(crate::util::ssh_opts(&server, &key, Via::Tcp))
            .arg("-b")
            .arg(&batch)
            .arg("user@127.0.0.1")
            .current_dir(&node.work)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("sftp")
    };
    node.write_local("up.txt", b"uploaded");
    let writers: Vec<_> = (0..4)
        .map(|i| sftp(&format!("put up.txt /b/up{i}.txt\n"), &format!("w{i}")))
        .collect();
    let readers: Vec<_> = (0..20).map(|i| sftp("ls /b\nget /b/f\n", &format!("r{i}"))).collect();
    // The URL carries the port; the options only the identity.
    let mut opts = crate::util::ssh_opts(&server, &key, Via::Tcp);
    opts.truncate(opts.len() - 2);
    let git = Command::new("git")
        .args(["ls-remote", &format!("ssh://alice@127.0.0.1:{}/r", server.ssh_port)])
        .env("GIT_SSH_COMMAND", format!("ssh {}", opts.join(" ")))
        .output()
        .expect("git ls-remote");
    assert!(git.status.success(), "{}", crate::util::combined(&git));
    for mut r in readers {
        assert!(r.wait().expect("wait").success(), "a reader failed");
    }
    let readers_took = started.elapsed();
    assert!(
        holder.try_wait().expect("wait").is_none(),
        "readers took {readers_took:?}: they finished only once the lock was gone"
    );
    for mut w in writers {
        assert!(w.wait().expect("wait").success(), "a writer failed");
    }
    assert!(holder.wait().expect("wait").success());
    assert!(server.stop());
    for i in 0..4 {
        assert_eq!(node.bytes(&["cat", &format!("b:/up{i}.txt")]), b"uploaded".to_vec());
    }
}

/// Unmounts a tmpfs at drop (lazily, so a leftover process cannot pin it).
struct Tmpfs(std::path::PathBuf);

impl Drop for Tmpfs {
    fn drop(&mut self) {
        Command::new("umount").arg("-l").arg(&self.0).status().ok();
    }
}

/// A full disk: an upload into a data directory on a 48 MiB tmpfs (with no
/// reserve, so the disk itself fills) fails with a message that names the
/// disk, the client gets its reply, the upload's leftovers go at once, and
/// the node keeps serving: a small upload works right after.
#[test]
fn a_full_disk_is_a_clean_error() {
    let (node, key) = admin_node();
    set_limits(&node, "disk_reserve = \"0\"\n");
    let orig = node.work.join("data.orig");
    std::fs::rename(&node.data, &orig).expect("move the data directory");
    std::fs::create_dir(&node.data).expect("mkdir");
    let st = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=48m", "tmpfs"])
        .arg(&node.data)
        .status()
        .expect("mount");
    assert!(st.success(), "mount a tmpfs (root)");
    let _tmpfs = Tmpfs(node.data.clone());
    let st = Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", orig.display()))
        .arg(&node.data)
        .status()
        .expect("cp");
    assert!(st.success());
    let free = || crate::util::free_bytes(&node.data);
    let before = free();

    let mut server = Server::start(&node);
    let (ok, out) = crate::util::paramiko_sftp(
        &node,
        &server,
        &key,
        r#"
chunk = b'\xa5' * (1 << 20)
f = sftp.open('/b/big', 'w')
f.set_pipelined(True)
try:
    for i in range(64):
        f.write(chunk)
    f.flush()
    sys.exit('64 MiB went onto a 48 MiB disk')
except IOError as e:
    print('refused:', e)
f.close()
"#,
    );
    assert!(ok, "{out}");
    assert!(
        out.contains("refused: ") && out.contains("no space left on the data directory's disk"),
        "{out}\n{}",
        std::fs::read_to_string(node.work.join("serve.log")).unwrap_or_default()
    );
    assert!(server.alive(), "the node keeps serving");
    // The failed upload's bytes are freed (removed by the node, not at a restart).
    let start = Instant::now();
    while free() + (4 << 20) < before {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{} of {before} bytes free again",
            free()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    node.write_local("six.txt", b"6bytes");
    let (ok, out) = sftp_batch(&node, &server, &key, Via::Tcp, "put six.txt /b/six.txt\nls -l /b\n");
    assert!(ok, "a small upload works after the disk was full:\n{out}");
    let log = std::fs::read_to_string(node.work.join("serve.log")).expect("serve log");
    assert!(!log.contains("panicked"), "{log}");
    assert!(server.stop());
    assert_eq!(node.bytes(&["cat", "b:/six.txt"]), b"6bytes");
    assert_eq!(
        node.bytes(&["cat", "b:/big"]),
        b"",
        "the refused upload published nothing"
    );
    let fsck = node.json(&["fsck"]);
    assert_eq!(fsck["problems"], serde_json::json!([]), "{fsck}");
}

/// An absolute symlink target means one thing: a path from the root of the
/// link's bucket@branch. Over SFTP, where paths start with the bucket, a
/// target `/b/d/a` is stored as `/d/a`, reads back as `/b/d/a`, and the link
/// can be followed; a target outside the tree is refused.
#[test]
fn absolute_symlink_targets_are_bucket_rooted() {
    let (node, key) = admin_node();
    node.ok(&["bucket", "create", "other"]);
    let server = Server::start(&node);
    node.write_local("a.txt", b"the target");
    let (ok, out) = sftp_batch(
        &node,
        &server,
        &key,
        Via::Tcp,
        "mkdir /b/d\nput a.txt /b/d/a\nln -s /b/d/a /b/d/link\nget /b/d/link got\nls -l /b/d\n",
    );
    assert!(ok, "{out}");
    assert_eq!(std::fs::read(node.work.join("got")).expect("got"), b"the target");
    assert!(out.contains("link"), "{out}");
    let (ok, out) = crate::util::paramiko_sftp(&node, &server, &key, "print('target', sftp.readlink('/b/d/link'))");
    assert!(
        ok && out.contains("target /b/d/a"),
        "readlink shows the SFTP path:\n{out}"
    );
    let (ok, out) = crate::util::paramiko_sftp(
        &node,
        &server,
        &key,
        "try:\n    sftp.symlink('/other/x', '/b/d/bad')\nexcept IOError as e:\n    print('refused:', e)",
    );
    assert!(
        ok && out.contains("refused: /other/x: an absolute symlink target must be inside /b"),
        "{out}"
    );
    assert!(server.stop());
    let stat = node.ok(&["stat", "b:/d/link"]);
    assert!(stat.contains("target: /d/a"), "stored from the bucket's root: {stat}");
}
