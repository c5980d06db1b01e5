//! Stock SFTP clients against `alknet serve`: OpenSSH sftp, sshfs and
//! paramiko, over TCP and over QUIC through `alknet proxy`.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::util::{Node, Server, Via, client_key, pattern, sftp_batch, ssh_opts};

/// Each scenario runs once over TCP and once over QUIC (through `alknet
/// proxy`): `sftp::<scenario>::over_tcp` and `::over_quic`.
macro_rules! over_tcp_and_quic {
    ($($scenario:ident),* $(,)?) => {$(
        mod $scenario {
            #[test]
            fn over_tcp() {
                super::$scenario(super::Via::Tcp);
            }

            #[test]
            fn over_quic() {
                super::$scenario(super::Via::Quic);
            }
        }
    )*};
}

over_tcp_and_quic!(openssh_sftp, sshfs_workload, paramiko, access_is_enforced);

struct Setup {
    node: Node,
    server: Server,
    /// An admin.
    alice: PathBuf,
    /// `read` on photos only.
    bob: PathBuf,
}

fn setup() -> Setup {
    let node = Node::new();
    node.ok(&["bucket", "create", "photos"]);
    node.ok(&["bucket", "create", "secret"]);
    let alice = client_key(&node, "alice");
    let bob = client_key(&node, "bob");
    node.ok(&[
        "user",
        "add",
        "alice",
        "--key",
        &format!("{}.pub", alice.display()),
        "--admin",
    ]);
    node.ok(&["user", "add", "bob", "--key", &format!("{}.pub", bob.display())]);
    node.ok(&["grant", "bob", "photos", "read"]);
    let server = Server::start(&node);
    Setup {
        node,
        server,
        alice,
        bob,
    }
}

/// The hash the store holds for a file (metadata only: works while serving).
fn stored_hash(node: &Node, addr: &str) -> String {
    node.json(&["stat", addr])["hash"]
        .as_str()
        .expect("a file has a hash")
        .to_owned()
}

fn b3(data: &[u8]) -> String {
    blake3::hash(data).to_hex().to_string()
}

fn openssh_sftp(via: Via) {
    let s = setup();
    let node = &s.node;
    node.ok(&["branch", "create", "photos", "draft"]);
    let snap = node.json(&["snapshot", "photos", "before"])["version"]
        .as_u64()
        .expect("version");
    let small = pattern(1000, 1);
    let big = pattern(100 << 20, 2);
    node.write_local("empty", b"");
    node.write_local("small", &small);
    node.write_local("big", &big);
    let script = "\
put empty /photos/empty
put small /photos/small
put big /photos/big
get /photos/empty got-empty
get /photos/small got-small
get /photos/big got-big
mkdir /photos/dir
put small /photos/dir/a
put empty /photos/dir/b
rename /photos/dir/a /photos/dir/b
ls -l /photos/dir
symlink small /photos/link
chmod 600 /photos/small
df /photos
ln /photos/small /photos/hard
cp /photos/big /photos/big-copy
put small /photos@draft/only-on-draft
ls -l /photos
ls /photos@main@before
ls /
";
    let (ok, out) = sftp_batch(node, &s.server, &s.alice, via, script);
    assert!(ok, "sftp batch over {via:?} failed:\n{out}");
    for (name, want) in [("got-empty", &b""[..]), ("got-small", &small), ("got-big", &big)] {
        assert!(
            std::fs::read(node.work.join(name)).expect("downloaded") == want,
            "{name} differs after a round trip"
        );
    }
    assert_eq!(
        stored_hash(node, "photos:/big"),
        b3(&big),
        "the 100 MiB upload is stored byte for byte"
    );
    assert_eq!(
        stored_hash(node, "photos:/dir/b"),
        b3(&small),
        "posix-rename replaced the existing file"
    );
    assert_eq!(node.ok(&["ls", "photos:/dir"]), "b\n");
    let link = node.json(&["stat", "photos:/link"]);
    assert_eq!(
        (link["kind"].as_str(), link["target"].as_str()),
        (Some("symlink"), Some("small"))
    );
    assert_eq!(node.json(&["stat", "photos:/small"])["mode"], 0o600);
    assert_eq!(stored_hash(node, "photos:/hard"), b3(&small));
    assert_eq!(stored_hash(node, "photos:/big-copy"), b3(&big));
    assert_eq!(stored_hash(node, "photos@draft:/only-on-draft"), b3(&small));
    assert!(
        node.cmd(&["stat", "photos:/only-on-draft"])
            .output()
            .expect("run")
            .status
            .code()
            == Some(1)
    );
    assert!(out.contains("Avail") || out.contains("Size"), "df answered: {out}");
    // The root lists the buckets the user can read: alice is admin, so both.
    assert!(out.contains("photos") && out.contains("secret"), "{out}");

    // A snapshot is readable and refuses writes.
    let (ok, out) = sftp_batch(
        node,
        &s.server,
        &s.alice,
        via,
        &format!("put small /photos@main@{snap}/x\n"),
    );
    assert!(
        !ok && out.contains("Permission denied"),
        "a snapshot path must refuse writes:\n{out}"
    );
    let (ok, out) = sftp_batch(
        node,
        &s.server,
        &s.alice,
        via,
        "get /photos@main@before/small snap-small\n",
    );
    assert!(!ok, "the file did not exist at the snapshot:\n{out}");
}

fn sshfs_workload(via: Via) {
    let s = setup();
    let node = &s.node;
    let mnt = node.work.join("mnt");
    std::fs::create_dir_all(&mnt).expect("mountpoint");
    let mut cmd = Command::new("timeout");
    cmd.arg("30").arg("sshfs");
    for pair in ssh_opts(&s.server, &s.alice, via).chunks(2) {
        match pair[0].as_str() {
            "-o" => {
                cmd.arg("-o").arg(&pair[1]);
            }
            "-i" => {
                cmd.arg("-o").arg(format!("IdentityFile={}", pair[1]));
            }
            other => panic!("unexpected ssh option {other}"),
        }
    }
    let st = cmd
        .arg("alice@127.0.0.1:/photos")
        .arg(&mnt)
        .status()
        .expect("run sshfs");
    assert!(st.success(), "sshfs mounted");
    let _unmount = Unmount(mnt.clone());
    let data = pattern(300_000, 5);
    std::fs::write(mnt.join("new.bin"), &data).expect("write through sshfs");
    std::fs::create_dir(mnt.join("sub")).expect("mkdir through sshfs");
    std::fs::rename(mnt.join("new.bin"), mnt.join("sub/moved.bin")).expect("rename through sshfs");
    std::fs::write(mnt.join("gone.txt"), b"x").expect("write");
    std::fs::remove_file(mnt.join("gone.txt")).expect("unlink through sshfs");
    assert_eq!(std::fs::read(mnt.join("sub/moved.bin")).expect("read back"), data);
    let mut names: Vec<String> = std::fs::read_dir(&mnt)
        .expect("readdir")
        .map(|e| e.expect("entry").file_name().into_string().expect("utf-8"))
        .collect();
    names.sort();
    assert_eq!(names, ["sub"]);
    drop(_unmount);
    assert_eq!(
        stored_hash(node, "photos:/sub/moved.bin"),
        b3(&data),
        "checked through the CLI"
    );
    assert_eq!(node.ok(&["ls", "photos"]), "sub\n");
}

/// Unmounts at drop, forcing it if the mount hangs.
struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let ok = Command::new("timeout")
            .args(["10", "fusermount3", "-u"])
            .arg(&self.0)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            Command::new("umount").arg("-l").arg(&self.0).status().ok();
        }
    }
}

/// paramiko: a second, independent SFTP client implementation.
fn paramiko(via: Via) {
    let s = setup();
    let node = &s.node;
    let data = pattern(200_000, 9);
    node.write_local("p.bin", &data);
    let sock = match via {
        Via::Tcp => format!("socket.create_connection(('127.0.0.1', {}))", s.server.ssh_port),
        Via::Quic => format!(
            "paramiko.ProxyCommand('{} proxy {}')",
            crate::util::bin().display(),
            s.server.quic
        ),
    };
    let script = format!(
        r#"
import hashlib, socket, sys, paramiko
key = paramiko.Ed25519Key.from_private_key_file('{key}')
t = paramiko.Transport({sock})
t.connect(username='alice', pkey=key)
sftp = paramiko.SFTPClient.from_transport(t)
sftp.put('p.bin', '/photos/p.bin')
sftp.get('/photos/p.bin', 'p.back')
assert open('p.back', 'rb').read() == open('p.bin', 'rb').read()
sftp.mkdir('/photos/pd')
sftp.rename('/photos/p.bin', '/photos/pd/q.bin')
assert sftp.listdir('/photos/pd') == ['q.bin'], sftp.listdir('/photos/pd')
assert sftp.stat('/photos/pd/q.bin').st_size == {size}
with sftp.open('/photos/pd/q.bin', 'rb') as f:
    digest = f.check('blake3')
print('blake3', digest.hex())
with sftp.open('/photos/pd/w.txt', 'w') as f:
    f.write(b'hello')
    f.seek(10)
    f.write(b'world')
sftp.remove('/photos/pd/w.txt')
try:
    sftp.stat('/photos/nope')
    sys.exit('stat of a missing file succeeded')
except FileNotFoundError:
    pass
print('paramiko ok')
"#,
        key = s.alice.display(),
        size = data.len()
    );
    let out = Command::new("timeout")
        .args(["60", "/usr/bin/python3", "-c", &script])
        .current_dir(&node.work)
        .output()
        .expect("run python3");
    let text = crate::util::combined(&out);
    assert!(
        out.status.success() && text.contains("paramiko ok"),
        "paramiko over {via:?}:\n{text}"
    );
    assert!(
        text.contains(&format!("blake3 {}", b3(&data))),
        "check-file answers the stored BLAKE3:\n{text}"
    );
    assert_eq!(stored_hash(node, "photos:/pd/q.bin"), b3(&data));
}

fn access_is_enforced(via: Via) {
    let s = setup();
    let node = &s.node;
    node.write_local("small", b"data");
    // An unknown key gets nowhere.
    let stranger = client_key(node, "stranger");
    let (ok, out) = sftp_batch(node, &s.server, &stranger, via, "ls /\n");
    assert!(
        !ok && out.contains("Permission denied"),
        "an unknown key is refused:\n{out}"
    );
    // Seed a file as the admin.
    let (ok, out) = sftp_batch(
        node,
        &s.server,
        &s.alice,
        via,
        "put small /photos/f\nput small /secret/s\n",
    );
    assert!(ok, "{out}");
    // bob reads photos, cannot write it, and does not see secret.
    let (ok, out) = sftp_batch(node, &s.server, &s.bob, via, "get /photos/f bob-f\nls /\n");
    assert!(ok, "{out}");
    assert!(
        !out.contains("secret"),
        "bob must not see a bucket he has no grant on:\n{out}"
    );
    for cmd in [
        "put small /photos/g",
        "mkdir /photos/d",
        "rm /photos/f",
        "rename /photos/f /photos/h",
        "chmod 600 /photos/f",
    ] {
        let (ok, out) = sftp_batch(node, &s.server, &s.bob, via, &format!("{cmd}\n"));
        assert!(!ok && out.contains("Permission denied"), "{cmd} as a reader:\n{out}");
    }
    for cmd in [
        "get /secret/s x",
        "get /photos/../secret/s x",
        "get /photos/../../../etc/passwd x",
        "mkdir /newbucket",
    ] {
        let (ok, out) = sftp_batch(node, &s.server, &s.bob, via, &format!("{cmd}\n"));
        assert!(!ok, "{cmd} must fail for bob:\n{out}");
    }
    // A symlink cannot lead out of its bucket.
    let (ok, out) = sftp_batch(node, &s.server, &s.alice, via, "symlink ../../secret/s /photos/esc\n");
    assert!(ok, "{out}");
    // An absolute target outside the link's own tree is refused outright.
    let (ok, out) = sftp_batch(node, &s.server, &s.alice, via, "symlink /etc/passwd /photos/abs\n");
    assert!(!ok, "{out}");
    for path in ["/photos/esc", "/photos/abs"] {
        let (ok, out) = sftp_batch(node, &s.server, &s.bob, via, &format!("get {path} x\n"));
        assert!(!ok, "a symlink escape must fail ({path}):\n{out}");
    }
    assert!(
        !node.work.join("x").exists(),
        "nothing was downloaded through an escape"
    );
    // Admins can make buckets with mkdir at the root.
    let (ok, out) = sftp_batch(node, &s.server, &s.alice, via, "mkdir /fresh\n");
    assert!(ok, "{out}");
    assert!(node.ok(&["bucket", "list"]).contains("fresh"));
}

#[test]
fn malformed_and_oversized_packets_end_only_that_session() {
    let s = setup();
    let node = &s.node;
    for junk in [
        "b'\\xff\\xff\\xff\\xff' + b'x' * 64",
        // An OPEN cut off after its id (an unknown type would get
        // OP_UNSUPPORTED instead: hardening::an_unknown_sftp_request_type…).
        "b'\\x00\\x00\\x00\\x05\\x03\\x00\\x00\\x00\\x01'",
    ] {
        let (closed, text) = crate::util::junk_on_subsystem(&s.server, &s.alice, "sftp", junk);
        assert!(closed, "the bad session must be closed:\n{text}");
    }
    node.write_local("small", b"still fine");
    let (ok, out) = sftp_batch(node, &s.server, &s.alice, Via::Tcp, "put small /photos/after\n");
    assert!(ok, "other sessions keep working:\n{out}");
    assert_eq!(stored_hash(node, "photos:/after"), b3(b"still fine"));
}

/// Stores "old content" at /photos/f, then starts a rate-limited upload of
/// 64 MiB over it (16 Mbit/s: about half a minute) and returns after 2 s,
/// with the upload still running.
fn slow_upload_over_an_old_file(s: &Setup) -> std::process::Child {
    let node = &s.node;
    node.write_local("old", b"old content");
    let (ok, out) = sftp_batch(node, &s.server, &s.alice, Via::Tcp, "put old /photos/f\n");
    assert!(ok, "{out}");
    node.write_local("big", &pattern(64 << 20, 3));
    std::fs::write(node.work.join("slow.sftp"), "put big /photos/f\n").expect("batch");
    let mut client = Command::new("sftp")
        .args(ssh_opts(&s.server, &s.alice, Via::Tcp))
        .args(["-l", "16384", "-b"])
        .arg(node.work.join("slow.sftp"))
        .arg("alice@127.0.0.1")
        .current_dir(&node.work)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn sftp");
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        client.try_wait().expect("poll").is_none(),
        "the upload finished early; nothing would be tested"
    );
    client
}

#[test]
fn killed_client_mid_upload_leaves_the_old_file() {
    let s = setup();
    let node = &s.node;
    let mut client = slow_upload_over_an_old_file(&s);
    client.kill().expect("kill the client");
    client.wait().ok();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        stored_hash(node, "photos:/f"),
        b3(b"old content"),
        "the old file stands"
    );
    let Setup { node, server, .. } = s;
    assert!(server.stop(), "SIGTERM stops the server cleanly");
    the_old_file_is_whole(&node);
}

/// With the server stopped: the old content, a clean fsck, no staging file.
fn the_old_file_is_whole(node: &Node) {
    assert_eq!(
        node.bytes(&["cat", "photos:/f"]),
        b"old content",
        "nothing half-written was published"
    );
    assert!(node.ok(&["fsck"]).contains("no problems"));
    let staged: Vec<_> = std::fs::read_dir(node.data.join("tmp")).expect("tmp").collect();
    assert!(staged.is_empty(), "no staging file is left: {staged:?}");
}

#[test]
fn grants_and_users_change_access_for_new_sessions() {
    let s = setup();
    let node = &s.node;
    let (ok, out) = sftp_batch(node, &s.server, &s.bob, Via::Tcp, "ls /photos\n");
    assert!(ok, "{out}");
    node.ok(&["revoke", "bob", "photos"]);
    let (ok, out) = sftp_batch(node, &s.server, &s.bob, Via::Tcp, "ls /photos\n");
    assert!(!ok, "after revoke, bob no longer sees photos:\n{out}");
    node.ok(&["grant", "bob", "photos", "write"]);
    node.write_local("small", b"bob was here");
    let (ok, out) = sftp_batch(node, &s.server, &s.bob, Via::Tcp, "put small /photos/bob.txt\n");
    assert!(ok, "with write access bob can upload:\n{out}");
    let users = node.json(&["user", "list"]);
    let bob = users
        .as_array()
        .expect("list")
        .iter()
        .find(|u| u["name"] == "bob")
        .expect("bob is listed")
        .clone();
    assert_eq!(bob["grants"], serde_json::json!([["photos", "write"]]));
    node.ok(&["user", "remove", "bob"]);
    let (ok, out) = sftp_batch(node, &s.server, &s.bob, Via::Tcp, "ls /\n");
    assert!(
        !ok && out.contains("Permission denied"),
        "a removed user's key is refused:\n{out}"
    );
    assert!(
        node.fails(&["grant", "bob", "photos", "read"])
            .contains("user \"bob\" does not exist")
    );
    assert!(
        node.fails(&["grant", "alice", "photos", "owner"])
            .contains("invalid access level")
    );
}

#[test]
fn bad_settings_are_named_at_start() {
    let node = Node::new();
    std::fs::write(
        node.data.join("alknet.toml"),
        "[ssh]\nlisen = \"127.0.0.1:2222\"\n[quic]\nlisten = \"127.0.0.1:0\"\n",
    )
    .expect("write settings");
    let err = node.fails(&["serve"]);
    assert!(
        err.contains("alknet.toml") && err.contains("lisen"),
        "the error names the file and the key: {err}"
    );
    std::fs::write(
        node.data.join("alknet.toml"),
        "[ssh]\nlisten = \"nowhere\"\n[quic]\nlisten = \"127.0.0.1:0\"\n",
    )
    .expect("write settings");
    let err = node.fails(&["serve"]);
    assert!(err.contains("listen"), "{err}");
}

#[test]
fn the_server_collects_garbage_that_deletions_queue() {
    let s = setup();
    let node = &s.node;
    node.ok(&["bucket", "create", "scratch"]);
    let data = pattern(200_000, 11);
    node.write_local("scratch.bin", &data);
    let (ok, out) = sftp_batch(node, &s.server, &s.alice, Via::Tcp, "put scratch.bin /scratch/s.bin\n");
    assert!(ok, "{out}");
    let blob = node.blob_file(&data);
    assert!(blob.exists(), "the upload is a blob file");
    node.ok(&["bucket", "delete", "scratch"]);
    // The sweep removes the file; the job is acknowledged just after.
    let done = || !blob.exists() && node.json(&["stats"])["pending_jobs"] == 0;
    let start = std::time::Instant::now();
    while !done() && start.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(!blob.exists(), "the running server reclaimed the deleted bucket's blob");
    assert_eq!(
        node.json(&["stats"])["pending_jobs"],
        0,
        "and acknowledged the queued job"
    );
}

/// rclone's sftp backend: a third client, written in Go.
#[test]
fn rclone_sync_and_check_over_tcp() {
    let s = setup();
    let node = &s.node;
    let src = node.work.join("tree");
    std::fs::create_dir_all(src.join("sub")).expect("dirs");
    let files = [
        ("a.bin", pattern(300_000, 21)),
        ("sub/b.txt", b"rclone".to_vec()),
        ("sub/empty", Vec::new()),
    ];
    for (name, data) in &files {
        std::fs::write(src.join(name), data).expect("write");
    }
    let rclone = |args: &[&str]| {
        let out = Command::new("timeout")
            .arg("120")
            .arg("rclone")
            .args(args)
            .env("RCLONE_CONFIG", "/dev/null")
            .env("RCLONE_CONFIG_ALK_TYPE", "sftp")
            .env("RCLONE_CONFIG_ALK_HOST", "127.0.0.1")
            .env("RCLONE_CONFIG_ALK_PORT", s.server.ssh_port.to_string())
            .env("RCLONE_CONFIG_ALK_USER", "alice")
            .env("RCLONE_CONFIG_ALK_KEY_FILE", &s.alice)
            // No shell on the server: rclone must not try `md5sum` over exec.
            .env("RCLONE_CONFIG_ALK_SHELL_TYPE", "none")
            .env("RCLONE_CONFIG_ALK_DISABLE_HASHCHECK", "true")
            .current_dir(&node.work)
            .output()
            .expect("run rclone");
        let text = crate::util::combined(&out);
        assert!(out.status.success(), "rclone {args:?}:\n{text}");
        text
    };
    let src_arg = src.to_str().expect("utf-8");
    rclone(&["sync", src_arg, "alk:/photos/tree"]);
    rclone(&["check", "--size-only", src_arg, "alk:/photos/tree"]);
    for (name, data) in &files {
        assert_eq!(
            stored_hash(node, &format!("photos:/tree/{name}")),
            b3(data),
            "{name} as stored"
        );
    }
    std::fs::remove_file(src.join("sub/b.txt")).expect("remove locally");
    rclone(&["sync", src_arg, "alk:/photos/tree"]);
    assert_eq!(
        node.ok(&["ls", "photos:/tree/sub"]),
        "empty\n",
        "sync removed the file on the server"
    );
    let back = node.work.join("back");
    rclone(&["copy", "alk:/photos/tree", back.to_str().expect("utf-8")]);
    assert_eq!(std::fs::read(back.join("a.bin")).expect("downloaded"), files[0].1);
}

#[test]
fn sigterm_during_an_upload_keeps_the_old_file() {
    let s = setup();
    let mut client = slow_upload_over_an_old_file(&s);
    let Setup { node, server, .. } = s;
    assert!(server.stop(), "SIGTERM mid-upload still ends the server cleanly");
    let status = client.wait().expect("the client sees the server go");
    assert!(!status.success(), "the interrupted upload must not report success");
    the_old_file_is_whole(&node);
}

/// A symlinked directory is passed through on the way to a file, as on a
/// disk, whether its target is relative or absolute (from the tree's
/// root); a loop ends with an error, not a hang; `..` stops at the tree.
#[test]
fn symlinked_directories_are_passed_through() {
    let s = setup();
    let node = &s.node;
    node.write_local("small", b"through the link");
    let script = "\
mkdir /photos/real
put small /photos/real/f
symlink real /photos/rel
symlink /photos/real /photos/abs
symlink rel /photos/twice
get /photos/rel/f got-rel
get /photos/abs/f got-abs
get /photos/twice/f got-twice
ls /photos/abs/
put small /photos/rel/new
";
    let (ok, out) = sftp_batch(node, &s.server, &s.alice, Via::Tcp, script);
    assert!(ok, "{out}");
    for name in ["got-rel", "got-abs", "got-twice"] {
        assert_eq!(std::fs::read(node.work.join(name)).expect(name), b"through the link");
    }
    assert!(out.contains("/photos/abs/f"), "the listing through the link:\n{out}");
    assert_eq!(stored_hash(node, "photos:/real/new"), b3(b"through the link"));
    let (ok, out) = sftp_batch(
        node,
        &s.server,
        &s.alice,
        Via::Tcp,
        "symlink loop2 /photos/loop1\nsymlink loop1 /photos/loop2\n",
    );
    assert!(ok, "{out}");
    let (ok, out) = crate::util::paramiko_sftp(
        node,
        &s.server,
        &s.alice,
        "try:\n    sftp.stat('/photos/loop1/x')\nexcept IOError as e:\n    print('refused:', e)\n",
    );
    assert!(
        ok && out.contains("refused:") && out.contains("too many levels of symbolic links"),
        "{out}"
    );
    // `..` in a target stops at the tree's root: it never reaches another bucket.
    let (ok, out) = sftp_batch(
        node,
        &s.server,
        &s.alice,
        Via::Tcp,
        "symlink ../../.. /photos/up\nls /photos/up/real\n",
    );
    assert!(ok, "{out}");
    assert!(out.contains("/photos/up/real/f"), "{out}");
}
