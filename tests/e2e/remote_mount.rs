//! The mount against a running node (`alknet mount --node`): the same
//! filesystem over the node's SSH endpoint (QUIC or TCP), with the user's
//! key and grants, file contents cached by hash. Cross-frontend checks go
//! through OpenSSH's sftp against the same server.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::mount::{Mounted, is_mounted, kill_mid_write, run_fsx};
use crate::util::{Node, Server, Via, client_key, combined, junk_on_subsystem, pattern, sftp_batch};

/// A node with bucket `photos` holding `files`, a running server, and
/// users alice (write) and bob (read), each with a key in the work dir.
struct Setup {
    node: Node,
    server: Server,
    alice: PathBuf,
    bob: PathBuf,
}

fn setup(files: &[(&str, &[u8])]) -> Setup {
    let node = Node::new();
    node.ok(&["bucket", "create", "photos"]);
    // Before the server starts: it holds the blob store while it runs.
    for (path, data) in files {
        node.ok_stdin(&["put", "-", &format!("photos:{path}")], data);
    }
    let alice = client_key(&node, "alice");
    let bob = client_key(&node, "bob");
    for (name, key, level) in [("alice", &alice, "write"), ("bob", &bob, "read")] {
        node.ok(&["user", "add", name, "--key", &format!("{}.pub", key.display())]);
        node.ok(&["grant", name, "photos", level]);
    }
    let server = Server::start(&node);
    Setup {
        node,
        server,
        alice,
        bob,
    }
}

/// `alknet mount ADDR <work>/NAME --node NODE -i KEY --cache-dir <work>/NAME.cache`.
fn remote_mount(node: &Node, addr: &str, name: &str, at: &str, key: &Path) -> Command {
    let dir = Mounted::mountpoint(node, name);
    let cache = node.work.join(format!("{name}.cache"));
    let mut cmd = node.cmd(&["mount", addr, dir.to_str().expect("utf-8 path"), "--node", at]);
    cmd.arg("-i").arg(key).arg("--cache-dir").arg(cache);
    cmd
}

/// The BLAKE3 of `data`, as the cache names it.
fn hash_hex(data: &[u8]) -> String {
    blake3::hash(data).to_hex().to_string()
}

/// errno of a write to a read-only filesystem (Linux).
const EROFS: i32 = 30;

/// errno of an I/O error (Linux).
const EIO: i32 = 5;

/// The SSH and QUIC socket addresses `server` listens on, to start it again there.
fn addresses(server: &Server) -> (String, String) {
    (
        format!("127.0.0.1:{}", server.ssh_port),
        server.quic.split_once('@').expect("NODE_ID@ADDR").1.to_owned(),
    )
}

fn wait_for(what: &str, ok: impl FnMut() -> bool) {
    wait_up_to(Duration::from_secs(5), what, ok);
}

fn wait_up_to(limit: Duration, what: &str, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_remote_mount_reads_and_writes_through_the_node() {
    let s = setup(&[]);
    let node = &s.node;
    // A 16 MiB cache: blobs up to 4 MiB are cached whole, larger ones read by range.
    let mut cmd = remote_mount(node, "photos", "m", &s.server.quic, &s.alice);
    cmd.args(["--cache-mib", "16"]);
    let m = Mounted::spawn(node, "m", cmd);

    // Written through the mount, read over SFTP once closed.
    let written = pattern(300_000, 1);
    std::fs::write(m.path("from-mount.bin"), &written).expect("write through the mount");
    let back = node.work.join("back.bin");
    let (ok, out) = sftp_batch(
        node,
        &s.server,
        &s.alice,
        Via::Tcp,
        &format!("get /photos/from-mount.bin {}\n", back.display()),
    );
    assert!(ok, "{out}");
    assert_eq!(std::fs::read(&back).expect("read back"), written);

    // Put over SFTP, seen in the mount without remounting.
    let put = pattern(3 << 20, 2);
    let local = node.write_local("from-sftp.bin", &put);
    let (ok, out) = sftp_batch(
        node,
        &s.server,
        &s.alice,
        Via::Quic,
        &format!("put {} /photos/from-sftp.bin\n", local.display()),
    );
    assert!(ok, "{out}");
    wait_for("the SFTP upload to show in the mount", || {
        m.path("from-sftp.bin").exists()
    });

    // The first read fetches the blob into the cache by hash; the second
    // is served from there (the node's log counts the bytes it sent).
    assert_eq!(std::fs::read(m.path("from-sftp.bin")).expect("first read"), put);
    let cached = node.work.join("m.cache").join(hash_hex(&put));
    assert_eq!(std::fs::metadata(&cached).expect("cached blob").len(), put.len() as u64);
    assert_eq!(std::fs::read(m.path("from-sftp.bin")).expect("second read"), put);

    // A file over a quarter of the cache is read by range, every time.
    let large = pattern(6 << 20, 4);
    std::fs::write(m.path("large.bin"), &large).expect("write a large file");
    for _ in 0..2 {
        assert_eq!(std::fs::read(m.path("large.bin")).expect("read by range"), large);
    }
    assert!(!node.work.join("m.cache").join(hash_hex(&large)).exists());

    // Directories, renames, symlinks, removal: seen over SFTP.
    std::fs::create_dir(m.path("album")).expect("mkdir");
    std::fs::rename(m.path("from-mount.bin"), m.path("album/moved.bin")).expect("rename");
    std::os::unix::fs::symlink("album/moved.bin", m.path("link")).expect("symlink");
    std::fs::write(m.path("gone"), b"x").expect("write");
    std::fs::remove_file(m.path("gone")).expect("unlink");
    let (ok, out) = sftp_batch(
        node,
        &s.server,
        &s.alice,
        Via::Tcp,
        "ls -l /photos\nls -l /photos/album\n",
    );
    assert!(ok, "{out}");
    assert!(
        out.contains("moved.bin") && out.contains("link") && !out.contains("gone"),
        "{out}"
    );
    assert_eq!(
        std::fs::read_link(m.path("link")).expect("readlink"),
        Path::new("album/moved.bin")
    );
    assert!(m.stop(), "a remote mount unmounts cleanly on SIGTERM");

    // The node logs the session once it sees the connection close.
    let session_line = || {
        let log = std::fs::read_to_string(node.work.join("serve.log")).expect("serve log");
        log.lines()
            .find(|l| l.contains("remote mount") && l.contains("addr=photos"))
            .map(str::to_owned)
    };
    wait_for("the node to log the mount session", || session_line().is_some());
    let line = session_line().expect("the session line");
    assert!(
        line.contains(&format!("sent={}", put.len() + 2 * large.len())),
        "the node sent the 3 MiB file once, the 6 MiB one twice, nothing else: {line}"
    );
    // from-mount.bin, large.bin and the one byte of "gone".
    assert!(
        line.contains(&format!("received={}", written.len() + large.len() + 1)),
        "{line}"
    );

    // With the server gone, the CLI reads what the mount wrote; fsck is clean.
    assert!(s.server.stop());
    assert_eq!(node.bytes(&["cat", "photos:/album/moved.bin"]), written);
    let fsck = node.ok(&["fsck"]);
    assert!(fsck.contains("no problems"), "{fsck}");
}

#[test]
fn remote_mounts_follow_keys_and_grants() {
    let s = setup(&[("/f", b"content")]);
    let node = &s.node;

    // bob holds a read grant: the mount is read-only and refuses writes.
    let m = Mounted::spawn(
        node,
        "as-bob",
        remote_mount(node, "photos", "as-bob", &s.server.quic, &s.bob),
    );
    assert_eq!(std::fs::read(m.path("f")).expect("bob reads"), b"content");
    let err = std::fs::write(m.path("new"), b"x").expect_err("bob cannot write");
    assert_eq!(err.raw_os_error(), Some(EROFS), "{err}");
    let err = std::fs::remove_file(m.path("f")).expect_err("bob cannot delete");
    assert_eq!(err.raw_os_error(), Some(EROFS), "{err}");
    assert!(m.stop());
    let log = std::fs::read_to_string(node.work.join("as-bob.log")).expect("mount log");
    assert!(log.contains("read_only=true"), "{log}");

    // A key the node does not know, a user without a grant, a bucket that
    // does not exist: refused with the reason, nothing mounted.
    let carol = client_key(node, "carol");
    let dave = client_key(node, "dave");
    node.ok(&["user", "add", "dave", "--key", &format!("{}.pub", dave.display())]);
    for (key, addr, why) in [
        (&carol, "photos", "refused the key"),
        (&dave, "photos", "photos: no such bucket"),
        (&s.alice, "nothing", "nothing: no such bucket"),
        (&s.alice, "photos:/sub", "not a path inside it"),
    ] {
        let out = remote_mount(node, addr, "refused", &s.server.quic, key)
            .output()
            .expect("run alknet mount");
        let text = combined(&out);
        assert!(!out.status.success(), "{text}");
        assert!(text.contains(why), "expected {why:?} in:\n{text}");
        assert!(!is_mounted(&node.work.join("refused")));
    }

    // Over TCP the node's host key must be known, as with OpenSSH.
    let home = node.work.join("home");
    std::fs::create_dir_all(home.join(".ssh")).expect("home");
    let tcp = format!("127.0.0.1:{}", s.server.ssh_port);
    let out = remote_mount(node, "photos", "tcp", &tcp, &s.alice)
        .env("HOME", &home)
        .output()
        .expect("run alknet mount");
    let text = combined(&out);
    assert!(!out.status.success() && text.contains("known_hosts"), "{text}");
    let scan = Command::new("ssh-keyscan")
        .args(["-p", &s.server.ssh_port.to_string(), "127.0.0.1"])
        .output()
        .expect("run ssh-keyscan");
    assert!(scan.status.success() && !scan.stdout.is_empty(), "{}", combined(&scan));
    std::fs::write(home.join(".ssh/known_hosts"), &scan.stdout).expect("known_hosts");
    let mut cmd = remote_mount(node, "photos", "tcp", &tcp, &s.alice);
    cmd.env("HOME", &home);
    let m = Mounted::spawn(node, "tcp", cmd);
    assert_eq!(std::fs::read(m.path("f")).expect("read over TCP"), b"content");
    std::fs::write(m.path("f"), b"changed over TCP").expect("alice writes");
    assert!(m.stop());
    let (ok, text) = sftp_batch(node, &s.server, &s.alice, Via::Tcp, "get /photos/f tcp-check\n");
    assert!(ok, "{text}");
    assert_eq!(
        std::fs::read(node.work.join("tcp-check")).expect("read"),
        b"changed over TCP"
    );
}

/// A node killed without a word (no FIN over QUIC, only silence): the
/// mount finds it gone within the QUIC idle timeout (6 s), then answers
/// EIO at once, and reconnects when the node is back.
#[test]
fn a_killed_node_fails_requests_with_eio_then_comes_back() {
    let s = setup(&[("/f", b"before")]);
    let node = &s.node;
    let m = Mounted::spawn(node, "m", remote_mount(node, "photos", "m", &s.server.quic, &s.alice));
    assert_eq!(std::fs::read(m.path("f")).expect("read"), b"before");
    let (ssh, quic) = addresses(&s.server);
    crate::util::sigkill(s.server.pid());
    let killed = Instant::now();
    let list = || std::fs::read_dir(m.path("")).and_then(|d| d.collect::<std::io::Result<Vec<_>>>());
    let err = list().expect_err("the node is gone");
    assert_eq!(err.raw_os_error(), Some(EIO), "{err}");
    let first = killed.elapsed();
    assert!(first < Duration::from_secs(12), "the first failure took {first:?}");
    // Now known to be gone: each request fails at once.
    let again = Instant::now();
    assert!(list().is_err());
    assert!(std::fs::metadata(m.path("g")).is_err());
    assert!(again.elapsed() < Duration::from_secs(2), "took {:?}", again.elapsed());
    drop(s.server);
    let server = Server::start_at(node, &ssh, &quic);
    wait_up_to(Duration::from_secs(20), "the mount to reach the node again", || {
        list().is_ok()
    });
    assert_eq!(std::fs::read(m.path("f")).expect("read"), b"before");
    assert!(m.stop());
    drop(server);
}

#[test]
fn a_remote_mount_reconnects_when_the_node_comes_back() {
    let s = setup(&[("/f", b"before")]);
    let node = &s.node;
    let m = Mounted::spawn(node, "m", remote_mount(node, "photos", "m", &s.server.quic, &s.alice));
    assert_eq!(std::fs::read(m.path("f")).expect("read"), b"before");
    let (ssh, quic) = addresses(&s.server);
    assert!(s.server.stop());
    // The node restarts at the same address (same data directory: same id).
    let server = Server::start_at(node, &ssh, &quic);
    // A dial that began while the node was down may wait out its timeout.
    wait_up_to(Duration::from_secs(20), "the mount to reach the node again", || {
        std::fs::write(m.path("after"), b"written after the restart").is_ok()
    });
    let (ok, out) = sftp_batch(node, &server, &s.alice, Via::Tcp, "get /photos/after after\n");
    assert!(ok, "{out}");
    assert_eq!(
        std::fs::read(node.work.join("after")).expect("read"),
        b"written after the restart"
    );
    assert!(m.stop());
    let log = std::fs::read_to_string(node.work.join("m.log")).expect("mount log");
    assert!(log.contains("reconnected to the node"), "{log}");
}

#[test]
fn a_killed_remote_mount_leaves_the_old_content() {
    let s = setup(&[("/f", b"old content")]);
    let node = &s.node;
    let m = Mounted::spawn(node, "m", remote_mount(node, "photos", "m", &s.server.quic, &s.alice));
    let dir = kill_mid_write(m, "f");
    node.ok(&["umount", dir.to_str().expect("utf-8")]);
    assert!(!is_mounted(&dir));
    // The node dropped the dead mount's write session: the old file stays.
    let (ok, out) = sftp_batch(node, &s.server, &s.alice, Via::Tcp, "get /photos/f after-kill\n");
    assert!(ok, "{out}");
    assert_eq!(
        std::fs::read(node.work.join("after-kill")).expect("read"),
        b"old content"
    );
    assert!(s.server.stop());
    let fsck = node.ok(&["fsck"]);
    assert!(fsck.contains("no problems"), "{fsck}");
}

#[test]
fn fsx_finds_no_mismatch_on_a_remote_mount() {
    let s = setup(&[]);
    let node = &s.node;
    let m = Mounted::spawn(node, "m", remote_mount(node, "photos", "m", &s.server.quic, &s.alice));
    run_fsx(&node.work, &m.path("fsx.file"), 10_000, 11);
    assert!(m.stop());
}

#[test]
fn malformed_requests_end_only_that_connection() {
    let s = setup(&[("/f", b"content")]);
    let node = &s.node;
    // Raw frames on the `alknet-fs` subsystem: a length over the limit,
    // bytes that decode to nothing, a first request that is not Hello, and
    // garbage after a good Hello.
    let hello = r"b'\x00\x00\x00\x0a\x01\x00\x06photos\x00'";
    for junk in [
        r"b'\xff\xff\xff\xff' + b'x' * 64".to_owned(),
        r"b'\x00\x00\x00\x03\xff\xff\xff'".to_owned(),
        r"b'\x00\x00\x00\x02\x01\x17'".to_owned(),
        format!(r"{hello} + b'\x00\x00\x00\x04\x02\xff\xff\xff'"),
    ] {
        let (closed, text) = junk_on_subsystem(&s.server, &s.alice, "alknet-fs", &junk);
        assert!(closed, "{junk}: the connection must end:\n{text}");
    }
    let log = std::fs::read_to_string(node.work.join("serve.log")).expect("serve log");
    assert!(log.contains("remote mount ended by the server"), "{log}");
    let m = Mounted::spawn(node, "m", remote_mount(node, "photos", "m", &s.server.quic, &s.alice));
    assert_eq!(
        std::fs::read(m.path("f")).expect("a good mount still works"),
        b"content"
    );
    assert!(m.stop());
}

/// A read-only user floods the node with long polls for changes (each once
/// held a blocking thread for 5 s, so 2,000 of them starved every other
/// mount): another mount still lists and reads at once.
#[test]
fn a_flood_of_long_polls_starves_no_one() {
    let s = setup(&[("/f", b"content")]);
    let node = &s.node;
    // Hello for photos, then 2,000 `Changes(5000)` frames (id k, variant 22).
    let script = format!(
        r#"
import socket, struct, sys, time, paramiko
key = paramiko.Ed25519Key.from_private_key_file('{key}')
t = paramiko.Transport(socket.create_connection(('127.0.0.1', {port})))
t.connect(username='bob', pkey=key)
ch = t.open_session()
ch.invoke_subsystem('alknet-fs')
def frame(body): return struct.pack('>I', len(body)) + body
def varint(n):
    out = b''
    while True:
        b = n & 0x7f
        n >>= 7
        if n: out += bytes([b | 0x80])
        else: return out + bytes([b])
ch.sendall(frame(b'\x01\x00\x06photos\x00'))
ch.recv(4096)
ch.sendall(b''.join(frame(varint(k) + b'\x16' + varint(5000)) for k in range(2, 2002)))
print('flooding', flush=True)
time.sleep(30)
"#,
        key = s.bob.display(),
        port = s.server.ssh_port
    );
    let mut flood = Command::new("/usr/bin/python3")
        .args(["-c", &script])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    crate::util::wait_for_line(&mut flood, "flooding");

    let m = Mounted::spawn(node, "m", remote_mount(node, "photos", "m", &s.server.quic, &s.alice));
    let start = Instant::now();
    let names: Vec<_> = std::fs::read_dir(&m.dir)
        .expect("list")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("f")]);
    assert_eq!(std::fs::read(m.path("f")).expect("read"), b"content");
    let took = start.elapsed();
    // Each long poll lasts 5 s: a mount starved behind them waits longer.
    assert!(
        took < Duration::from_secs(4),
        "another mount waited {took:?} behind the flood"
    );
    assert!(m.stop());
    flood.kill().ok();
    flood.wait().ok();
}

/// Symlinks with long targets (up to 4096 bytes, the most `fs` takes) fill
/// many frames' worth of listing: the node pages by bytes, the mount lists
/// them all; a longer target is refused with ENAMETOOLONG.
#[test]
fn long_symlink_targets_page_by_bytes() {
    let s = setup(&[]);
    let node = &s.node;
    let m = Mounted::spawn(node, "m", remote_mount(node, "photos", "m", &s.server.quic, &s.alice));
    std::fs::create_dir(m.path("links")).expect("mkdir");
    let target = "t".repeat(4000);
    for i in 0..600 {
        std::os::unix::fs::symlink(&target, m.path(&format!("links/l{i:04}"))).expect("symlink");
    }
    let err = std::os::unix::fs::symlink("t".repeat(4097), m.path("links/too-long")).expect_err("refused");
    assert_eq!(err.raw_os_error(), Some(36), "ENAMETOOLONG: {err}");
    assert!(m.stop());
    // A fresh mount lists the directory from the node: 600 × 4 KB is more
    // than a frame holds.
    let m = Mounted::spawn(node, "m2", remote_mount(node, "photos", "m2", &s.server.quic, &s.alice));
    let listed = std::fs::read_dir(m.path("links")).expect("list").count();
    assert_eq!(listed, 600);
    assert_eq!(
        std::fs::read_link(m.path("links/l0599"))
            .expect("readlink")
            .as_os_str()
            .len(),
        4000
    );
    assert!(m.stop());
}

/// `truncate -s 1T` through a remote mount fails at the call (it used to
/// succeed while the node refused it in its log), and the file keeps its
/// size: the node's write limits reach the caller as ENOSPC.
#[test]
fn a_giant_truncate_fails_at_the_call() {
    let s = setup(&[("/f", b"small")]);
    let node = &s.node;
    let m = Mounted::spawn(node, "m", remote_mount(node, "photos", "m", &s.server.quic, &s.alice));
    let out = Command::new("truncate")
        .args(["-s", "1T"])
        .arg(m.path("f"))
        .output()
        .expect("truncate");
    assert!(!out.status.success(), "truncate -s 1T succeeded");
    assert!(combined(&out).contains("No space left on device"), "{}", combined(&out));
    let script = format!(
        "import errno, os\nfd = os.open('{}', os.O_RDWR)\ntry:\n    os.ftruncate(fd, 2**40)\n    print('taken')\nexcept OSError as e:\n    print('errno', errno.errorcode[e.errno])\nos.close(fd)\n",
        m.path("f").display()
    );
    let out = Command::new("/usr/bin/python3")
        .args(["-c", &script])
        .output()
        .expect("python3");
    assert!(combined(&out).contains("errno ENOSPC"), "{}", combined(&out));
    assert_eq!(std::fs::metadata(m.path("f")).expect("stat").len(), 5);
    assert_eq!(std::fs::read(m.path("f")).expect("read"), b"small");
    assert!(m.stop());
}
