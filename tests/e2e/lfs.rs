//! Git LFS over HTTP with Debian's git-lfs: objects pushed and cloned, kept
//! in the one store (published branches show the real bytes), file locks,
//! and bad requests answered clearly.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::http::{curl, token};
use crate::util::{Node, Server, Via, add_user, combined, sftp_batch};

/// A node with repository `hello`, admin `alice` (key and token) and git
/// set up to reach it over HTTP with the token in git's credential store.
struct Lfs {
    node: Node,
    server: Server,
    key: PathBuf,
    token: String,
    home: PathBuf,
}

impl Lfs {
    fn start() -> Lfs {
        let node = Node::new();
        let key = crate::util::client_key(&node, "alice");
        node.ok(&[
            "user",
            "add",
            "alice",
            "--admin",
            "--key",
            &format!("{}.pub", key.display()),
        ]);
        node.ok(&["repo", "create", "hello"]);
        let token = token(&node, "alice", &[]);
        let server = Server::start(&node);
        let home = node.work.join("home");
        std::fs::create_dir_all(&home).expect("home");
        let lfs = Lfs {
            node,
            server,
            key,
            token,
            home,
        };
        lfs.credentials(&lfs.home, "alice", &lfs.token);
        let install = lfs.git(&lfs.home, &["lfs", "install", "--skip-repo"]);
        assert!(install.status.success(), "{}", combined(&install));
        lfs
    }

    /// Puts `user`'s `token` in the credential store of `home`.
    fn credentials(&self, home: &Path, user: &str, token: &str) {
        let port = self.server.http.rsplit(':').next().expect("a port");
        std::fs::write(
            home.join(".git-credentials"),
            format!("http://{user}:{token}@127.0.0.1:{port}\n"),
        )
        .expect("credentials");
    }

    fn url(&self) -> String {
        format!("{}/hello.git", self.server.http)
    }

    /// git with `home` as HOME (its credentials and LFS filters).
    fn git_in(&self, home: &Path, dir: &Path, args: &[&str]) -> Output {
        Command::new("timeout")
            .arg("300")
            .arg("git")
            .args(["-c", "credential.helper=store", "-c", "lfs.concurrenttransfers=4"])
            .args(args)
            .current_dir(dir)
            .env("HOME", home)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_AUTHOR_NAME", "A U Thor")
            .env("GIT_AUTHOR_EMAIL", "author@example.com")
            .env("GIT_COMMITTER_NAME", "C O Mitter")
            .env("GIT_COMMITTER_EMAIL", "committer@example.com")
            .stdin(Stdio::null())
            .output()
            .expect("run git")
    }

    fn git(&self, dir: &Path, args: &[&str]) -> Output {
        self.git_in(&self.home, dir, args)
    }

    fn ok(&self, dir: &Path, args: &[&str]) -> String {
        let out = self.git(dir, args);
        assert!(out.status.success(), "git {args:?}:\n{}", combined(&out));
        combined(&out)
    }

    fn work(&self, name: &str) -> PathBuf {
        self.node.work.join(name)
    }

    /// A new repository `name` tracking `*.bin` with LFS, origin the node.
    fn repo(&self, name: &str) -> PathBuf {
        let dir = self.work(name);
        self.ok(&self.node.work, &["init", "-q", "-b", "main", name]);
        self.ok(&dir, &["lfs", "track", "*.bin"]);
        self.ok(&dir, &["remote", "add", "origin", &self.url()]);
        dir
    }
}

/// A 200 MiB LFS file and 300 small ones go up over HTTP and come back
/// whole in a clone; the published branch holds the real bytes (SFTP reads
/// the file, not its pointer); the objects are counted per repository,
/// survive GC and pass fsck.
#[test]
fn lfs_objects_push_clone_and_publish_as_real_files() {
    let f = Lfs::start();
    let src = f.repo("src");
    let big = crate::util::pattern(200 << 20, 5);
    std::fs::write(src.join("big.bin"), &big).expect("big");
    std::fs::create_dir_all(src.join("small")).expect("small");
    for i in 0..300 {
        std::fs::write(src.join(format!("small/{i:03}.bin")), format!("small object {i}\n")).expect("small");
    }
    std::fs::write(src.join("README"), "not in LFS\n").expect("readme");
    f.ok(&src, &["add", "-A"]);
    f.ok(&src, &["commit", "-q", "-m", "lfs"]);
    f.ok(&src, &["push", "origin", "HEAD:main"]);

    f.ok(&f.node.work, &["clone", "-q", &f.url(), "copy"]);
    let copy = f.work("copy");
    assert!(
        std::fs::read(copy.join("big.bin")).expect("big") == big,
        "the clone smudged the big file"
    );
    assert_eq!(
        std::fs::read_to_string(copy.join("small/123.bin")).expect("small"),
        "small object 123\n"
    );
    let listed = f.ok(&copy, &["lfs", "ls-files"]);
    assert_eq!(listed.lines().count(), 301, "{listed}");

    // The published branch: the real bytes, over SFTP.
    let (ok, out) = sftp_batch(
        &f.node,
        &f.server,
        &f.key,
        Via::Tcp,
        "get /hello@main/big.bin from-sftp.bin\n",
    );
    assert!(ok, "{out}");
    assert!(
        std::fs::read(f.work("from-sftp.bin")).expect("sftp") == big,
        "SFTP reads the object, not the pointer"
    );
    assert_eq!(f.node.bytes(&["cat", "hello@main:/small/007.bin"]), b"small object 7\n");
    // The web page of a published LFS file names its oid beside its BLAKE3.
    let page = crate::http::curl(
        None,
        &["-b", &format!("alknet_session={}", f.token)],
        &format!("{}/-/b/hello/small/007.bin", f.server.http),
    );
    assert_eq!(page.status, 200);
    let oid = sha256_hex(b"small object 7\n");
    assert!(
        page.text()
            .contains(&format!("<code class=\"hash\" id=\"lfs-oid\">{oid}</code>")),
        "{}",
        page.text()
    );
    let repos = f.node.json(&["repo", "list"]);
    assert_eq!(repos[0]["lfs_objects"], 301, "{repos}");
    assert!(repos[0]["lfs_bytes"].as_u64().expect("bytes") > 200 << 20);

    // GC keeps what the repository holds; fsck re-hashes it.
    f.node.ok(&["gc"]);
    f.node.ok(&["fsck"]);
    f.ok(&f.node.work, &["clone", "-q", &f.url(), "again"]);
    assert!(std::fs::read(f.work("again/big.bin")).expect("big") == big);
}

/// Over SSH, git-lfs asks `git-lfs-authenticate` where the LFS API is and
/// gets the node's HTTP URL with a short-lived token: a push and a clone
/// by SSH URL carry LFS objects with no token configured anywhere.
#[test]
fn lfs_over_ssh_through_git_lfs_authenticate() {
    lfs_over_ssh("never", Via::Tcp, 3 << 20, 5);
}

/// The pure-SSH protocol (`git-lfs-transfer`): objects and locks over the
/// SSH channel itself, no HTTP and no token.
#[test]
fn lfs_over_pure_ssh_with_git_lfs_transfer() {
    // The issue's size: a 200 MiB file and 300 small ones.
    let tokens = lfs_over_ssh("always", Via::Tcp, 200 << 20, 300);
    assert!(
        !tokens.contains("git-lfs-authenticate"),
        "no HTTP token was made: {tokens}"
    );
}

/// The same over QUIC: SSH through `alknet proxy` as its ProxyCommand.
#[test]
fn lfs_over_pure_ssh_over_quic() {
    lfs_over_ssh("always", Via::Quic, 3 << 20, 5);
}

/// Pushes and clones LFS objects over SSH with `lfs.sshtransfer=TRANSFER`,
/// over TCP or over QUIC: one file of `big` bytes and `small` small ones;
/// returns `token list` as it was after them.
fn lfs_over_ssh(transfer: &str, via: Via, big: usize, small: usize) -> String {
    let f = Lfs::start();
    // No credentials at all: everything comes through SSH.
    std::fs::remove_file(f.home.join(".git-credentials")).expect("no credentials");
    let mut opts = crate::util::ssh_opts(&f.server, &f.key, via);
    if via == Via::Tcp {
        // The port comes from the URL.
        opts.truncate(opts.len() - 2);
    }
    let quoted: Vec<String> = opts.iter().map(|o| format!("'{o}'")).collect();
    let ssh = format!("ssh {}", quoted.join(" "));
    let url = format!("ssh://alice@127.0.0.1:{}/hello.git", f.server.ssh_port);
    let git = |dir: &Path, args: &[&str]| {
        let out = Command::new("timeout")
            .arg("120")
            .arg("git")
            .arg("-c")
            .arg(format!("lfs.sshtransfer={transfer}"))
            // Debian's git-lfs 3.3 multiplexes badly over one SSH session.
            .args(["-c", "lfs.ssh.automultiplex=false", "-c", "lfs.concurrenttransfers=1"])
            .args(args)
            .current_dir(dir)
            .env("HOME", &f.home)
            .env("GIT_SSH_COMMAND", &ssh)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_AUTHOR_NAME", "A U Thor")
            .env("GIT_AUTHOR_EMAIL", "author@example.com")
            .env("GIT_COMMITTER_NAME", "C O Mitter")
            .env("GIT_COMMITTER_EMAIL", "committer@example.com")
            .stdin(Stdio::null())
            .output()
            .expect("run git");
        assert!(out.status.success(), "git {args:?}:\n{}", combined(&out));
    };
    let src = f.work("ssh-src");
    git(&f.node.work, &["init", "-q", "-b", "main", "ssh-src"]);
    git(&src, &["lfs", "track", "*.bin"]);
    let data = crate::util::pattern(big, 11);
    std::fs::write(src.join("data.bin"), &data).expect("data");
    for i in 0..small {
        std::fs::write(src.join(format!("s{i}.bin")), format!("small {i}\n")).expect("small");
    }
    git(&src, &["add", "-A"]);
    git(&src, &["commit", "-q", "-m", "over ssh"]);
    git(&src, &["remote", "add", "origin", &url]);
    git(&src, &["push", "-q", "origin", "HEAD:main"]);
    git(&f.node.work, &["clone", "-q", &url, "ssh-copy"]);
    assert!(std::fs::read(f.work("ssh-copy/data.bin")).expect("data") == data);
    assert_eq!(std::fs::read(f.work("ssh-copy/s3.bin")).expect("small"), b"small 3\n");
    assert_eq!(f.node.bytes(&["cat", "hello@main:/data.bin"]), data);
    // Locks over the same transport.
    git(&src, &["lfs", "lock", "s1.bin"]);
    let locks = f.node.ok(&["lfs", "locks", "hello"]);
    assert!(locks.contains("\ts1.bin\talice\t"), "{locks}");
    git(&src, &["lfs", "locks"]);
    git(&src, &["lfs", "unlock", "s1.bin"]);
    assert_eq!(f.node.ok(&["lfs", "locks", "hello"]), "");
    let tokens = f.node.ok(&["token", "list"]);
    // The answer itself: the API's URL, a token in a header, its lifetime.
    let out = Command::new("ssh")
        .args(crate::util::ssh_opts(&f.server, &f.key, Via::Tcp))
        .args(["alice@127.0.0.1", "git-lfs-authenticate 'hello.git' download"])
        .output()
        .expect("ssh");
    assert!(out.status.success(), "{}", combined(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["href"], format!("{}/hello.git/info/lfs", f.server.http), "{v}");
    assert!(
        v["header"]["Authorization"]
            .as_str()
            .is_some_and(|a| a.starts_with("Bearer alk_")),
        "{v}"
    );
    assert_eq!(v["expires_in"], 600);
    // A repository alice cannot see is refused like a missing one.
    let out = Command::new("ssh")
        .args(crate::util::ssh_opts(&f.server, &f.key, Via::Tcp))
        .args(["alice@127.0.0.1", "git-lfs-authenticate 'nope' upload"])
        .output()
        .expect("ssh");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("does not exist"),
        "{}",
        combined(&out)
    );
    tokens
}

/// Locks: taken, listed, verified as ours and theirs, refused to others,
/// forced away by an admin; a reader may list but not lock.
#[test]
fn lfs_locks_follow_their_owners() {
    let f = Lfs::start();
    let src = f.repo("src");
    std::fs::write(src.join("art.bin"), b"binary art").expect("art");
    f.ok(&src, &["add", "-A"]);
    f.ok(&src, &["commit", "-q", "-m", "art"]);
    f.ok(&src, &["push", "-q", "origin", "HEAD:main"]);
    let locked = f.ok(&src, &["lfs", "lock", "art.bin"]);
    assert!(locked.contains("Locked art.bin"), "{locked}");
    let listed = f.ok(&src, &["lfs", "locks"]);
    assert!(listed.contains("art.bin") && listed.contains("alice"), "{listed}");
    let on_node = f.node.ok(&["lfs", "locks", "hello.git"]);
    assert!(on_node.starts_with("1\tart.bin\talice\t"), "{on_node}");
    let again = f.git(&src, &["lfs", "lock", "art.bin"]);
    assert!(!again.status.success(), "a path is locked once");

    // bob may write: he sees alice's lock as theirs and cannot unlock it.
    add_user(&f.node, "bob");
    f.node.ok(&["grant", "bob", "hello", "write"]);
    let bob_home = f.work("bob-home");
    std::fs::create_dir_all(&bob_home).expect("home");
    f.credentials(&bob_home, "bob", &token(&f.node, "bob", &[]));
    let install = f.git_in(&bob_home, &bob_home, &["lfs", "install", "--skip-repo"]);
    assert!(install.status.success());
    let bobs = f.work("bobs");
    let cloned = f.git_in(&bob_home, &f.node.work, &["clone", "-q", &f.url(), "bobs"]);
    assert!(cloned.status.success(), "{}", combined(&cloned));
    let verify = f.git_in(&bob_home, &bobs, &["lfs", "locks", "--verify"]);
    assert!(
        String::from_utf8_lossy(&verify.stdout).contains("art.bin")
            && !String::from_utf8_lossy(&verify.stdout).starts_with('O'),
        "theirs: {}",
        combined(&verify)
    );
    // The node refuses bob's push of the file alice holds, even with the
    // client's own check (the pre-push hook) skipped; other files go.
    std::fs::write(bobs.join("art.bin"), b"bob's art").expect("edit");
    let commit = f.git_in(&bob_home, &bobs, &["commit", "-qam", "bob edits art"]);
    assert!(commit.status.success(), "{}", combined(&commit));
    let refused = f.git_in(&bob_home, &bobs, &["push", "--no-verify", "origin", "HEAD:main"]);
    assert!(!refused.status.success(), "{}", combined(&refused));
    assert!(
        combined(&refused).contains("art.bin is locked by alice"),
        "{}",
        combined(&refused)
    );
    let undo = f.git_in(&bob_home, &bobs, &["reset", "-q", "--hard", "origin/main"]);
    assert!(undo.status.success());
    std::fs::write(bobs.join("notes.txt"), b"bob's notes").expect("notes");
    f.git_in(&bob_home, &bobs, &["add", "notes.txt"]);
    f.git_in(&bob_home, &bobs, &["commit", "-qm", "notes"]);
    let pushed = f.git_in(&bob_home, &bobs, &["push", "origin", "HEAD:main"]);
    assert!(
        pushed.status.success(),
        "an unlocked path pushes: {}",
        combined(&pushed)
    );
    // alice's own lock does not stop alice.
    f.ok(&src, &["pull", "-q", "--no-rebase", "origin", "main"]);
    std::fs::write(src.join("art.bin"), b"alice's new art").expect("edit");
    f.ok(&src, &["commit", "-qam", "alice edits art"]);
    f.ok(&src, &["push", "-q", "origin", "HEAD:main"]);
    let mine = f.ok(&src, &["lfs", "locks", "--verify"]);
    assert!(mine.starts_with("O art.bin"), "ours: {mine}");
    let steal = f.git_in(&bob_home, &bobs, &["lfs", "unlock", "art.bin"]);
    assert!(!steal.status.success(), "{}", combined(&steal));
    let steal = f.git_in(&bob_home, &bobs, &["lfs", "unlock", "--force", "art.bin"]);
    assert!(!steal.status.success(), "only an admin forces: {}", combined(&steal));
    // carol may only read: she lists, she cannot lock.
    add_user(&f.node, "carol");
    f.node.ok(&["grant", "carol", "hello", "read"]);
    let carol = token(&f.node, "carol", &[]);
    let list = curl(Some(&carol), &[], &format!("{}/info/lfs/locks", f.url()));
    assert_eq!(list.status, 200, "{}", list.text());
    assert!(list.text().contains("art.bin"));
    let lock = curl(
        Some(&carol),
        &[
            "-H",
            "Content-Type: application/vnd.git-lfs+json",
            "--data",
            "{\"path\":\"x.bin\"}",
        ],
        &format!("{}/info/lfs/locks", f.url()),
    );
    assert_eq!(lock.status, 403, "{}", lock.text());
    // The admin forces bob's way clear.
    let bob_lock = f.git_in(&bob_home, &bobs, &["lfs", "lock", "other.bin"]);
    assert!(bob_lock.status.success(), "{}", combined(&bob_lock));
    let forced = f.ok(&src, &["lfs", "unlock", "--force", "other.bin"]);
    assert!(forced.contains("Unlocked other.bin"), "{forced}");
    f.ok(&src, &["lfs", "unlock", "art.bin"]);
    assert_eq!(f.ok(&src, &["lfs", "locks"]).trim(), "");
}

/// Bad uploads and batches: a clear error each, nothing kept that should
/// not be, and the node goes on serving.
#[test]
fn lfs_bad_requests_get_clear_answers() {
    let f = Lfs::start();
    let lfs = format!("{}/info/lfs", f.url());
    let media = ["-H", "Content-Type: application/vnd.git-lfs+json; charset=utf-8"];
    let batch = |body: &str| {
        let mut args = media.to_vec();
        args.extend(["--data-binary", body]);
        curl(Some(&f.token), &args, &format!("{lfs}/objects/batch"))
    };
    let oid = "4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393";
    // Per-object errors in a 200 batch: a short oid, a negative size.
    let answer = batch(&format!(
        r#"{{"operation":"upload","objects":[{{"oid":"abc","size":1}},{{"oid":"{oid}","size":-1}},{{"oid":"{oid}","size":12}}]}}"#
    ));
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert!(
        answer
            .header("content-type")
            .is_some_and(|c| c.starts_with("application/vnd.git-lfs+json")),
        "{:?}",
        answer.header("content-type")
    );
    let v = answer.json();
    assert_eq!(v["objects"][0]["error"]["code"], 422, "{v}");
    assert_eq!(v["objects"][1]["error"]["code"], 422, "{v}");
    assert!(v["objects"][2]["actions"]["upload"]["href"].is_string(), "{v}");
    assert!(v["objects"][2]["actions"]["upload"]["expires_in"].is_u64(), "{v}");
    // A missing object to download is a 404 inside the batch.
    let missing = batch(&format!(
        r#"{{"operation":"download","objects":[{{"oid":"{oid}","size":12}}]}}"#
    ))
    .json();
    assert_eq!(missing["objects"][0]["error"]["code"], 404, "{missing}");
    // Too many objects.
    let many: Vec<String> = (0..10_000)
        .map(|i| format!(r#"{{"oid":"{i:064x}","size":1}}"#))
        .collect();
    let body = format!(r#"{{"operation":"upload","objects":[{}]}}"#, many.join(","));
    let file = f.work("many.json");
    std::fs::write(&file, body).expect("body");
    let mut args = media.to_vec();
    let at = format!("@{}", file.display());
    args.extend(["--data-binary", &at]);
    assert_eq!(curl(Some(&f.token), &args, &format!("{lfs}/objects/batch")).status, 413);

    // Bytes that do not hash to their oid are refused and not kept.
    let wrong = curl(
        Some(&f.token),
        &["-X", "PUT", "--data-binary", "not these bytes"],
        &format!("{lfs}/objects/{oid}"),
    );
    assert_eq!(wrong.status, 422, "{}", wrong.text());
    let mut args = media.to_vec();
    let pointer = format!(r#"{{"oid":"{oid}","size":15}}"#);
    args.extend(["--data-binary", &pointer]);
    assert_eq!(curl(Some(&f.token), &args, &format!("{lfs}/verify")).status, 404);
    // The right bytes are kept; verify then says so.
    let data = b"the right bytes";
    let right = sha256_hex(data);
    let put = curl(
        Some(&f.token),
        &["-X", "PUT", "--data-binary", std::str::from_utf8(data).expect("utf-8")],
        &format!("{lfs}/objects/{right}"),
    );
    assert_eq!(put.status, 200, "{}", put.text());
    let mut args = media.to_vec();
    let pointer = format!(r#"{{"oid":"{right}","size":15}}"#);
    args.extend(["--data-binary", &pointer]);
    assert_eq!(curl(Some(&f.token), &args, &format!("{lfs}/verify")).status, 200);
    let got = curl(Some(&f.token), &["-r", "4-8"], &format!("{lfs}/objects/{right}"));
    assert_eq!((got.status, got.text().as_str()), (206, "right"));
    // The same object pushed to a second repository, and the same bytes in
    // a bucket, are one blob; the second repository still needs its own
    // upload (naming the oid is not enough).
    let live = |node: &Node| node.json(&["gc"])["live"].as_u64().expect("live");
    let before = live(&f.node);
    f.node.ok(&["repo", "create", "second"]);
    let second = format!("{}/second.git/info/lfs", f.server.http);
    let elsewhere = curl(Some(&f.token), &[], &format!("{second}/objects/{right}"));
    assert_eq!(elsewhere.status, 404, "not handed out for another repository's object");
    let put = curl(
        Some(&f.token),
        &["-X", "PUT", "--data-binary", std::str::from_utf8(data).expect("utf-8")],
        &format!("{second}/objects/{right}"),
    );
    assert_eq!(put.status, 200, "{}", put.text());
    f.node.ok(&["bucket", "create", "files"]);
    f.node.ok_stdin(&["put", "-", "files:/same.bin"], data);
    assert_eq!(
        live(&f.node),
        before,
        "one blob for both repositories and the bucket file"
    );
    // A wrong-length oid in the path; no token at all.
    let short = curl(
        Some(&f.token),
        &["-X", "PUT", "--data-binary", "x"],
        &format!("{lfs}/objects/abc"),
    );
    assert_eq!(short.status, 422, "{}", short.text());
    let anon = curl(
        None,
        &["-X", "PUT", "--data-binary", "x"],
        &format!("{lfs}/objects/{right}"),
    );
    assert_eq!(anon.status, 401);
    assert!(anon.header("lfs-authenticate").is_some(), "{}", anon.headers);

    // An upload cut at half: nothing is kept, and GC takes its bytes.
    let cut = sha256_hex(&crate::util::pattern(1 << 20, 9));
    let port: u16 = f.server.http.rsplit(':').next().expect("port").parse().expect("port");
    {
        use std::io::Write;
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        write!(
            s,
            "PUT /hello.git/info/lfs/objects/{cut} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Length: {}\r\n\r\n",
            f.token,
            1 << 20
        )
        .expect("head");
        s.write_all(&crate::util::pattern(1 << 19, 9)).expect("half");
    }
    let mut args = media.to_vec();
    let pointer = format!(r#"{{"oid":"{cut}","size":{}}}"#, 1 << 20);
    args.extend(["--data-binary", &pointer]);
    let status = curl(Some(&f.token), &args, &format!("{lfs}/verify")).status;
    assert_eq!(status, 404, "a cut upload is never kept");
    f.node.ok(&["gc"]);
    f.node.ok(&["fsck"]);
    // A full quota: the batch says so, and so does an upload past it.
    f.node.ok(&["bucket", "quota", "hello", "4KiB"]);
    let big = crate::util::pattern(8 << 10, 4);
    let big_oid = sha256_hex(&big);
    let full = batch(&format!(
        r#"{{"operation":"upload","objects":[{{"oid":"{big_oid}","size":{}}}]}}"#,
        big.len()
    ));
    assert_eq!(full.status, 507, "{}", full.text());
    std::fs::write(f.work("big.obj"), &big).expect("big");
    let at = format!("@{}", f.work("big.obj").display());
    let put = curl(
        Some(&f.token),
        &["-X", "PUT", "--data-binary", &at],
        &format!("{lfs}/objects/{big_oid}"),
    );
    assert_eq!(put.status, 507, "{}", put.text());
    f.node.ok(&["bucket", "quota", "hello", "none"]);
    // Still serving.
    let again = batch(&format!(
        r#"{{"operation":"download","objects":[{{"oid":"{right}","size":15}}]}}"#
    ))
    .json();
    assert!(
        again["objects"][0]["actions"]["download"]["href"].is_string(),
        "{again}"
    );
}

/// Bad input on `git-lfs-transfer`: a wrong-hash object is refused with a
/// status and the session goes on; garbage ends the session; the node
/// goes on serving.
#[test]
fn lfs_transfer_refuses_bad_input() {
    let f = Lfs::start();
    let pkt = |text: &str| format!("{:04x}{text}", text.len() + 4);
    let oid = "4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393";
    let session = [
        pkt("version 1\n"),
        "0000".into(),
        pkt(&format!("put-object {oid}\n")),
        pkt("size=5\n"),
        "0001".into(),
        pkt("hello"),
        "0000".into(),
        pkt(&format!("verify-object {oid}\n")),
        pkt("size=5\n"),
        "0000".into(),
        pkt("quit\n"),
        "0000".into(),
    ]
    .concat();
    let run = |input: &[u8]| {
        use std::io::Write;
        let mut child = Command::new("timeout")
            .arg("30")
            .arg("ssh")
            .args(crate::util::ssh_opts(&f.server, &f.key, Via::Tcp))
            .args(["alice@127.0.0.1", "git-lfs-transfer 'hello.git' upload"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("ssh");
        child.stdin.take().expect("stdin").write_all(input).expect("send");
        child.wait_with_output().expect("wait")
    };
    let out = run(session.as_bytes());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", combined(&out));
    assert!(text.contains("version=1") && text.contains("locking"), "{text}");
    assert!(text.contains("status 422"), "a wrong hash is refused: {text}");
    assert!(text.contains("status 404"), "and nothing was kept: {text}");
    assert!(
        text.ends_with("000fstatus 200\n0000"),
        "the session ends with quit: {text}"
    );
    let junk = run(b"zzzz not a pkt-line at all");
    assert!(!junk.status.success(), "{}", combined(&junk));
    let refused = Command::new("ssh")
        .args(crate::util::ssh_opts(&f.server, &f.key, Via::Tcp))
        .args(["alice@127.0.0.1", "git-lfs-transfer 'nope' download"])
        .output()
        .expect("ssh");
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("does not exist"),
        "{}",
        combined(&refused)
    );
    f.node.ok(&["fsck"]);
    f.ok(&f.node.work, &["clone", "-q", &f.url(), "still"]);
}

fn sha256_hex(data: &[u8]) -> String {
    let out = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().expect("stdin").write_all(data)?;
            c.wait_with_output()
        })
        .expect("sha256sum");
    String::from_utf8_lossy(&out.stdout)[..64].to_owned()
}
