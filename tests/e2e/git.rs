//! The git forge through stock git: over SSH (TCP), over QUIC (the
//! `git-remote-alknet` helper) and over smart HTTP (a token through git's
//! credential store), each with protocol v0 and v2.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::util::{Node, Server, Via, bin, client_key, combined, sftp_batch, ssh_opts};

/// How git reaches the node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Transport {
    Ssh,
    Quic,
    Http,
}

/// Runs a scenario over every transport and both protocol versions.
macro_rules! each_transport {
    ($($scenario:ident),* $(,)?) => {$(
        mod $scenario {
            use super::Transport;
            #[test]
            fn tcp_v0() {
                super::$scenario(Transport::Ssh, 0);
            }
            #[test]
            fn tcp_v2() {
                super::$scenario(Transport::Ssh, 2);
            }
            #[test]
            fn quic_v0() {
                super::$scenario(Transport::Quic, 0);
            }
            #[test]
            fn quic_v2() {
                super::$scenario(Transport::Quic, 2);
            }
            #[test]
            fn http_v0() {
                super::$scenario(Transport::Http, 0);
            }
            #[test]
            fn http_v2() {
                super::$scenario(Transport::Http, 2);
            }
        }
    )*};
}

each_transport!(
    push_clone_fetch,
    shallow_and_unshallow,
    partial_clones,
    refs_tags_and_atomic
);

/// A server with one repository `hello`, an admin key, and git set up to
/// reach it one way.
struct Forge {
    node: Node,
    server: Server,
    key: PathBuf,
    via: Transport,
    version: u8,
    /// Seconds a git command may take.
    patience: u32,
}

impl Forge {
    fn start(via: Transport, version: u8) -> Forge {
        Self::start_with(via, version, |_| {})
    }

    /// `setup` runs on the node before the server starts (config, users).
    fn start_with(via: Transport, version: u8, setup: impl FnOnce(&Node)) -> Forge {
        let node = Node::new();
        let key = client_key(&node, "alice");
        node.ok(&[
            "user",
            "add",
            "alice",
            "--key",
            &format!("{}.pub", key.display()),
            "--admin",
        ]);
        node.ok(&["repo", "create", "hello"]);
        let token = crate::http::token(&node, "alice", &[]);
        setup(&node);
        // git finds the helper on PATH under its git name.
        let helper_dir = node.work.join("bin");
        std::fs::create_dir_all(&helper_dir).expect("bin dir");
        std::os::unix::fs::symlink(bin(), helper_dir.join("git-remote-alknet")).ok();
        let server = Server::start(&node);
        // git's credential store hands the token to the node over HTTP.
        let port = server.http.rsplit(':').next().expect("a port");
        std::fs::write(
            node.work.join(".git-credentials"),
            format!("http://alice:{token}@127.0.0.1:{port}\n"),
        )
        .expect("credentials");
        Forge {
            node,
            server,
            key,
            via,
            version,
            patience: 120,
        }
    }

    /// A forge on a stopped one's node: a new server, alice's key, TCP, v2.
    fn restart(node: Node) -> Forge {
        Forge {
            server: Server::start(&node),
            key: node.work.join("alice"),
            node,
            via: Transport::Ssh,
            version: 2,
            patience: 120,
        }
    }

    /// Stops the server (SIGTERM, asserting a clean exit); the node stays.
    fn stop(self) -> Node {
        assert!(self.server.stop(), "the server exits cleanly");
        self.node
    }

    fn url(&self, repo: &str) -> String {
        match self.via {
            Transport::Ssh => format!("ssh://alice@127.0.0.1:{}/{repo}", self.server.ssh_port),
            Transport::Quic => format!("alknet://{}/{repo}", self.server.quic),
            Transport::Http => format!("{}/{repo}", self.server.http),
        }
    }

    /// `git` with this forge's key, protocol version and a fixed identity.
    fn git_as(&self, key: &Path, dir: &Path, args: &[&str]) -> Command {
        let mut opts = ssh_opts(&self.server, key, Via::Tcp);
        // The transport comes from the URL; only the identity options stay.
        opts.truncate(opts.len() - 2);
        let ssh = format!("ssh {}", opts.join(" "));
        let path = format!(
            "{}:{}",
            self.node.work.join("bin").display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let mut c = Command::new("timeout");
        c.arg(self.patience.to_string())
            .arg("git")
            .arg("-c")
            .arg(format!("protocol.version={}", self.version))
            .args(["-c", "credential.helper=store"])
            .args(args)
            .current_dir(dir)
            .env("GIT_SSH_COMMAND", ssh)
            .env("PATH", path)
            .env("GIT_AUTHOR_NAME", "A U Thor")
            .env("GIT_AUTHOR_EMAIL", "author@example.com")
            .env("GIT_COMMITTER_NAME", "C O Mitter")
            .env("GIT_COMMITTER_EMAIL", "committer@example.com")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("HOME", &self.node.work)
            .stdin(Stdio::null());
        c
    }

    fn git(&self, dir: &Path, args: &[&str]) -> Output {
        self.git_as(&self.key, dir, args).output().expect("run git")
    }

    /// Runs git and asserts success; returns stdout + stderr.
    fn ok(&self, dir: &Path, args: &[&str]) -> String {
        let out = self.git(dir, args);
        let text = combined(&out);
        assert!(out.status.success(), "git {args:?} ({:?}) failed:\n{text}", self.via);
        text
    }

    /// Runs git and asserts failure; returns stdout + stderr.
    fn fails(&self, dir: &Path, args: &[&str]) -> String {
        let out = self.git(dir, args);
        let text = combined(&out);
        assert!(!out.status.success(), "git {args:?} should have failed:\n{text}");
        text
    }

    fn work(&self, name: &str) -> PathBuf {
        self.node.work.join(name)
    }

    /// Clones `hello` into `name`.
    fn clone(&self, name: &str, extra: &[&str]) -> PathBuf {
        let mut args = vec!["clone"];
        args.extend_from_slice(extra);
        let url = self.url("hello");
        args.push(&url);
        args.push(name);
        let text = self.ok(&self.node.work, &args);
        assert!(!text.contains("filtering not recognized"), "{text}");
        self.work(name)
    }
}

/// Commits `files` (path, content) in `dir`.
fn commit(f: &Forge, dir: &Path, files: &[(&str, &str)], message: &str) {
    for (path, content) in files {
        let p = dir.join(path);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(p, content).expect("write");
    }
    f.ok(dir, &["add", "-A"]);
    f.ok(dir, &["commit", "-q", "-m", message]);
}

fn stdout(f: &Forge, dir: &Path, args: &[&str]) -> String {
    let out = f.git(dir, args);
    assert!(out.status.success(), "git {args:?}: {}", combined(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn push_clone_fetch(via: Transport, version: u8) {
    let f = Forge::start(via, version);
    let src = f.clone("src", &[]);
    commit(
        &f,
        &src,
        &[
            ("README", "hello\n"),
            ("src/lib.rs", "fn main() {}\n"),
            ("run.sh", "#!/bin/sh\n"),
        ],
        "first",
    );
    std::fs::set_permissions(src.join("run.sh"), std::os::unix::fs::PermissionsExt::from_mode(0o755)).ok();
    commit(&f, &src, &[("src/more.rs", "// more\n")], "second");
    f.ok(&src, &["push", "-q", "origin", "HEAD:main"]);

    // Progress reaches the client over side-band.
    let url = f.url("hello");
    let text = f.ok(&f.node.work, &["clone", "--progress", &url, "copy"]);
    assert!(text.contains("remote: Enumerating objects"), "{text}");
    let copy = f.work("copy");
    f.ok(&copy, &["fsck", "--full", "--strict"]);
    assert_eq!(
        stdout(&f, &copy, &["ls-tree", "-r", "HEAD"]),
        stdout(&f, &src, &["ls-tree", "-r", "HEAD"]),
        "the clone's tree is the pushed tree"
    );

    // More pushes, then an incremental fetch.
    for i in 0..3 {
        commit(
            &f,
            &src,
            &[("src/lib.rs", &format!("fn main() {{ {i} }}\n"))],
            &format!("edit {i}"),
        );
    }
    f.ok(&src, &["push", "-q", "-o", "ci.skip", "origin", "HEAD:main"]);
    f.ok(&copy, &["fetch", "-q"]);
    assert_eq!(
        stdout(&f, &copy, &["rev-parse", "origin/main"]),
        stdout(&f, &src, &["rev-parse", "HEAD"])
    );
    f.ok(&copy, &["fsck", "--full"]);
    let remote = f.url("hello.git");
    let listing = stdout(&f, &copy, &["ls-remote", "--symref", &remote]);
    assert!(listing.contains("ref: refs/heads/main\tHEAD"), "{listing}");
    assert!(listing.contains("\trefs/heads/main"), "{listing}");
}

fn shallow_and_unshallow(via: Transport, version: u8) {
    let f = Forge::start(via, version);
    let src = f.clone("src", &[]);
    for i in 0..5 {
        commit(
            &f,
            &src,
            &[("f.txt", &format!("{i}\n")), (&format!("d{i}/g"), "g\n")],
            &format!("c{i}"),
        );
    }
    f.ok(&src, &["push", "-q", "origin", "HEAD:main"]);

    let shallow = f.clone("shallow", &["--depth", "1"]);
    assert_eq!(stdout(&f, &shallow, &["rev-list", "--count", "HEAD"]).trim(), "1");
    assert!(shallow.join(".git/shallow").exists());
    f.ok(&shallow, &["fsck"]);
    f.ok(&shallow, &["fetch", "-q", "--unshallow"]);
    assert_eq!(stdout(&f, &shallow, &["rev-list", "--count", "HEAD"]).trim(), "5");
    assert!(!shallow.join(".git/shallow").exists());
    f.ok(&shallow, &["fsck", "--full"]);

    // --shallow-since: every commit here is new, so all come.
    let since = f.clone("since", &["--shallow-since", "2001-01-01"]);
    assert_eq!(stdout(&f, &since, &["rev-list", "--count", "HEAD"]).trim(), "5");
    let deep = f.clone("deepen", &["--depth", "2"]);
    f.ok(&deep, &["fetch", "-q", "--deepen", "1"]);
    assert_eq!(stdout(&f, &deep, &["rev-list", "--count", "HEAD"]).trim(), "3");
}

fn partial_clones(via: Transport, version: u8) {
    let f = Forge::start(via, version);
    let src = f.clone("src", &[]);
    commit(
        &f,
        &src,
        &[("big.txt", &"x".repeat(5000)), ("dir/small.txt", "s\n")],
        "one",
    );
    commit(&f, &src, &[("big.txt", &"y".repeat(5000))], "two");
    f.ok(&src, &["push", "-q", "origin", "HEAD:main"]);

    for filter in ["blob:none", "tree:0", "blob:limit=1k"] {
        let name = filter.replace([':', '='], "-");
        let dir = f.clone(&name, &[&format!("--filter={filter}"), "--no-checkout"]);
        let missing = stdout(&f, &dir, &["rev-list", "--objects", "--all", "--missing=print"]);
        assert!(
            missing.lines().any(|l| l.starts_with('?')),
            "--filter={filter} leaves objects out:\n{missing}"
        );
        // A checkout fetches what it needs.
        f.ok(&dir, &["checkout", "-q", "main"]);
        assert_eq!(
            std::fs::read_to_string(dir.join("big.txt")).expect("big"),
            "y".repeat(5000)
        );
        assert_eq!(
            std::fs::read_to_string(dir.join("dir/small.txt")).expect("small"),
            "s\n"
        );
        f.ok(&dir, &["log", "-q", "--oneline", "-p", "-1"]);
    }
}

fn refs_tags_and_atomic(via: Transport, version: u8) {
    let f = Forge::start(via, version);
    let src = f.clone("src", &[]);
    commit(&f, &src, &[("a", "1\n")], "one");
    f.ok(&src, &["push", "-q", "origin", "HEAD:main", "HEAD:refs/heads/topic"]);
    // Tags, lightweight and annotated.
    f.ok(&src, &["tag", "light"]);
    f.ok(&src, &["tag", "-a", "v1", "-m", "version one"]);
    f.ok(&src, &["push", "-q", "origin", "--tags"]);
    let remote = f.url("hello");
    let listing = stdout(&f, &src, &["ls-remote", &remote]);
    assert!(
        listing.contains("refs/tags/light") && listing.contains("refs/tags/v1^{}"),
        "{listing}"
    );
    let copy = f.clone("copy", &[]);
    assert_eq!(stdout(&f, &copy, &["tag"]), "light\nv1\n");
    assert_eq!(stdout(&f, &copy, &["cat-file", "-t", "v1"]).trim(), "tag");

    // Deleting a branch.
    f.ok(&src, &["push", "-q", "origin", ":topic"]);
    let listing = stdout(&f, &src, &["ls-remote", &remote]);
    assert!(!listing.contains("refs/heads/topic"), "{listing}");

    // A history rewrite is refused by the server, even when forced.
    let main_before = stdout(&f, &src, &["rev-parse", "HEAD"]);
    f.ok(&src, &["checkout", "-q", "--orphan", "other"]);
    commit(&f, &src, &[("b", "unrelated\n")], "unrelated");
    let text = f.fails(&src, &["push", "--force", "origin", "other:main"]);
    assert!(text.contains("non-fast-forward"), "{text}");

    // Atomic: main is refused, so the new branch is not created either.
    let text = f.fails(
        &src,
        &[
            "push",
            "--atomic",
            "--force",
            "origin",
            "other:refs/heads/another",
            "other:main",
        ],
    );
    assert!(text.contains("atomic") || text.contains("non-fast-forward"), "{text}");
    let listing = stdout(&f, &src, &["ls-remote", &remote]);
    assert!(
        !listing.contains("refs/heads/another"),
        "an atomic push moved a ref:\n{listing}"
    );
    assert!(
        listing.contains(&format!("{}\trefs/heads/main", main_before.trim())),
        "{listing}"
    );
    // Without --atomic, the good ref goes through and the bad one does not.
    f.fails(
        &src,
        &["push", "--force", "origin", "other:refs/heads/another", "other:main"],
    );
    let listing = stdout(&f, &src, &["ls-remote", &remote]);
    assert!(listing.contains("refs/heads/another"), "{listing}");
    assert!(
        listing.contains(&format!("{}\trefs/heads/main", main_before.trim())),
        "{listing}"
    );
}

#[test]
fn force_push_when_the_repository_allows_it() {
    let f = Forge::start_with(Transport::Ssh, 2, |node| {
        let path = node.data.join("alknet.toml");
        let text = std::fs::read_to_string(&path).expect("settings");
        std::fs::write(
            &path,
            text.replace("allow_force_push = []", "allow_force_push = [\"hello\"]"),
        )
        .expect("write");
    });
    let src = f.clone("src", &[]);
    commit(&f, &src, &[("a", "1\n")], "one");
    commit(&f, &src, &[("a", "2\n")], "two");
    f.ok(&src, &["push", "-q", "origin", "HEAD:main"]);
    let two = stdout(&f, &src, &["rev-parse", "HEAD"]);
    f.ok(&src, &["reset", "-q", "--hard", "HEAD~1"]);
    commit(&f, &src, &[("a", "3\n")], "three");
    // A lease on a stale value is refused; on the right one it goes.
    let text = f.fails(&src, &["push", "--force-with-lease=main:HEAD~1", "origin", "HEAD:main"]);
    assert!(text.contains("stale info"), "{text}");
    f.ok(
        &src,
        &[
            "push",
            &format!("--force-with-lease=main:{}", two.trim()),
            "origin",
            "HEAD:main",
        ],
    );
    let copy = f.clone("copy", &[]);
    assert_eq!(std::fs::read_to_string(copy.join("a")).expect("a"), "3\n");
    f.ok(&copy, &["fsck", "--full"]);
}

#[test]
fn racing_pushes_to_one_ref_have_one_winner() {
    racing_pushes(Transport::Ssh);
}

#[test]
fn racing_pushes_over_http_have_one_winner() {
    racing_pushes(Transport::Http);
}

fn racing_pushes(via: Transport) {
    let f = Forge::start(via, 2);
    let base = f.clone("base", &[]);
    commit(&f, &base, &[("a", "base\n")], "base");
    f.ok(&base, &["push", "-q", "origin", "HEAD:main"]);
    // Eight clones, each with its own commit on main, push at once.
    let racers: Vec<PathBuf> = (0..8)
        .map(|i| {
            let dir = f.clone(&format!("racer{i}"), &[]);
            commit(
                &f,
                &dir,
                &[(&format!("r{i}"), &format!("{i}\n"))],
                &format!("racer {i}"),
            );
            dir
        })
        .collect();
    let children: Vec<_> = racers
        .iter()
        .map(|dir| {
            f.git_as(&f.key, dir, &["push", "origin", "HEAD:main"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn git push")
        })
        .collect();
    let results: Vec<Output> = children
        .into_iter()
        .map(|c| c.wait_with_output().expect("wait"))
        .collect();
    let winners: Vec<usize> = (0..results.len()).filter(|i| results[*i].status.success()).collect();
    assert_eq!(
        winners.len(),
        1,
        "exactly one push wins:\n{}",
        results.iter().map(combined).collect::<Vec<_>>().join("\n---\n")
    );
    let check = f.clone("check", &[]);
    f.ok(&check, &["fsck", "--full"]);
    assert_eq!(
        stdout(&f, &check, &["rev-parse", "HEAD"]),
        stdout(&f, &racers[winners[0]], &["rev-parse", "HEAD"])
    );
}

#[test]
fn a_pushed_branch_reads_as_files_over_sftp() {
    let f = Forge::start(Transport::Ssh, 2);
    let src = f.clone("src", &[]);
    commit(
        &f,
        &src,
        &[
            ("docs/guide.md", "# guide\n"),
            ("data.bin", "bytes\n"),
            ("gone.txt", "soon\n"),
        ],
        "one",
    );
    std::os::unix::fs::symlink("docs/guide.md", src.join("link")).expect("symlink");
    f.ok(&src, &["add", "link"]);
    f.ok(&src, &["commit", "-q", "-m", "link"]);
    f.ok(
        &src,
        &["push", "-q", "origin", "HEAD:main", "HEAD:refs/heads/feature/x"],
    );
    commit(&f, &src, &[("docs/guide.md", "# guide, v2\n")], "two");
    std::fs::remove_file(src.join("gone.txt")).expect("rm");
    f.ok(&src, &["commit", "-q", "-am", "three"]);
    f.ok(&src, &["push", "-q", "origin", "HEAD:main"]);

    let (ok, out) = sftp_batch(
        &f.node,
        &f.server,
        &f.key,
        Via::Tcp,
        "get /hello@main/docs/guide.md guide\nget /hello@feature/x/gone.txt gone\nls -l /hello@main/\n",
    );
    assert!(ok, "{out}");
    assert_eq!(
        std::fs::read_to_string(f.work("guide")).expect("guide"),
        stdout(&f, &src, &["show", "main:docs/guide.md"])
    );
    assert_eq!(std::fs::read_to_string(f.work("gone")).expect("gone"), "soon\n");
    let listing = out.split("sftp> ls -l").nth(1).unwrap_or_default();
    assert!(
        !listing.contains("gone.txt"),
        "a file deleted in git is gone from the branch:\n{out}"
    );
    assert!(
        listing.contains("lrwxrwxrwx") && listing.contains("link"),
        "symlinks publish as symlinks:\n{out}"
    );
    let stat = f.node.ok(&["stat", "hello@main:/link"]);
    assert!(stat.contains("docs/guide.md"), "{stat}");
    // Writes are refused.
    f.node.write_local("x", b"x");
    let (ok, out) = sftp_batch(&f.node, &f.server, &f.key, Via::Tcp, "put x /hello@main/x\n");
    assert!(!ok && out.contains("Permission denied"), "{out}");
    // Deleting the git branch deletes the fs branch.
    f.ok(&src, &["push", "-q", "origin", ":feature/x"]);
    let branches = f.node.ok(&["branch", "list", "hello"]);
    assert!(!branches.contains("feature/x"), "{branches}");
}

#[test]
fn refusals_are_clear() {
    let f = Forge::start_with(Transport::Ssh, 2, |node| {
        let bob = client_key(node, "bob");
        node.ok(&["user", "add", "bob", "--key", &format!("{}.pub", bob.display())]);
        node.ok(&["grant", "bob", "hello", "read"]);
        node.ok(&["bucket", "create", "drive"]);
    });
    let src = f.clone("src", &[]);
    commit(&f, &src, &[("a", "1\n")], "one");
    f.ok(&src, &["push", "-q", "origin", "HEAD:main"]);

    let bob = f.work("bob");
    let stranger = client_key(&f.node, "stranger");
    let url = f.url("hello");
    // A reader clones but cannot push.
    let out = f
        .git_as(&bob, &f.node.work, &["clone", "-q", &url, "bobs"])
        .output()
        .expect("git");
    assert!(out.status.success(), "{}", combined(&out));
    let out = f
        .git_as(&bob, &f.work("bobs"), &["push", "origin", "HEAD:refs/heads/b"])
        .output()
        .expect("git");
    let text = combined(&out);
    assert!(!out.status.success() && text.contains("may read"), "{text}");
    // An unknown key, a missing repository, a bucket that is no repository.
    let out = f
        .git_as(&stranger, &f.node.work, &["clone", "-q", &url, "x"])
        .output()
        .expect("git");
    let text = combined(&out);
    assert!(!out.status.success() && text.contains("Permission denied"), "{text}");
    for missing in ["nope", "drive"] {
        let text = f.fails(&f.node.work, &["clone", "-q", &f.url(missing), "y"]);
        assert!(text.contains("does not exist"), "{text}");
    }
    // The server still serves.
    let again = f.clone("again", &[]);
    f.ok(&again, &["fsck"]);
}

/// pkt-line framing of `text`.
fn pkt(text: &[u8]) -> Vec<u8> {
    let mut out = format!("{:04x}", text.len() + 4).into_bytes();
    out.extend_from_slice(text);
    out
}

/// Sends raw receive-pack input over ssh; returns the server's answer.
fn raw_receive_pack(f: &Forge, input: &[u8]) -> String {
    use std::io::Write;
    let mut child = Command::new("timeout")
        .arg("60")
        .arg("ssh")
        .args(ssh_opts(&f.server, &f.key, Via::Tcp))
        .arg("alice@127.0.0.1")
        .arg("git-receive-pack 'hello'")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ssh");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(input).ok();
    drop(stdin);
    let out = child.wait_with_output().expect("wait");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn bad_packs_and_bad_lines_change_nothing() {
    let f = Forge::start(Transport::Ssh, 2);
    let src = f.clone("src", &[]);
    commit(&f, &src, &[("a", "1\n")], "one");
    f.ok(&src, &["push", "-q", "origin", "HEAD:main"]);
    commit(&f, &src, &[("b", &"content ".repeat(500))], "two");
    let head = stdout(&f, &src, &["rev-parse", "HEAD"]).trim().to_owned();
    let tree = stdout(&f, &src, &["rev-parse", "HEAD^{tree}"]).trim().to_owned();
    let remote = f.url("hello");
    let before = stdout(&f, &src, &["ls-remote", &remote]);

    // A good pack of the new objects, then broken variants of it.
    // `git pack-objects --stdout` with `flags`, fed `input` (ids or revs).
    let pack_of = |flags: &[&str], input: &str| {
        let mut child = Command::new("git")
            .args(["pack-objects", "--stdout"])
            .args(flags)
            .current_dir(&src)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("pack-objects");
        use std::io::Write;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("ids");
        child.wait_with_output().expect("wait").stdout
    };
    let blob = stdout(&f, &src, &["rev-parse", "HEAD:b"]).trim().to_owned();
    let good = pack_of(&[], &format!("{head}\n{tree}\n{blob}\n"));
    let mut corrupt = good.clone();
    let mid = corrupt.len() / 2;
    corrupt[mid] ^= 0xff;
    let truncated = good[..good.len() / 2].to_vec();
    let missing_tree = pack_of(&[], &format!("{head}\n"));
    // A thin pack whose delta base is a commit the server never got.
    commit(
        &f,
        &src,
        &[("b", &format!("{}more\n", "content ".repeat(500)))],
        "three",
    );
    let three = stdout(&f, &src, &["rev-parse", "HEAD"]).trim().to_owned();
    let missing_base = pack_of(&["--thin", "--revs"], &format!("{three}\n^{head}\n"));
    // A header that claims 2^32 - 1 objects (the server once asked for
    // ~256 GiB to index it).
    let mut lying = good.clone();
    lying[8..12].copy_from_slice(&[0xff; 4]);

    let command_for = |create: &str, tip: &str| {
        let mut input = pkt(format!(
            "{} {tip} refs/heads/{create}\0report-status side-band-64k\n",
            "0".repeat(40)
        )
        .as_bytes());
        input.extend_from_slice(b"0000");
        input
    };
    let command = |create: &str| command_for(create, &head);
    for (name, pack, tip) in [
        ("corrupt", &corrupt, &head),
        ("truncated", &truncated, &head),
        ("missing", &missing_tree, &head),
        ("thin", &missing_base, &three),
        ("lying", &lying, &head),
    ] {
        let mut input = command_for(name, tip);
        input.extend_from_slice(pack);
        let answer = raw_receive_pack(&f, &input);
        assert!(
            answer.contains("unpack ")
                && !answer.contains("unpack ok")
                && answer.contains(&format!("ng refs/heads/{name}")),
            "{name} pack: {answer}"
        );
    }
    let peak = crate::util::peak_rss_kib(f.server.pid()).expect("VmHWM");
    assert!(peak < 300 << 10, "the server's peak RSS was {peak} KiB");
    // Malformed pkt-lines: the connection ends, nothing else does.
    for garbage in [&b"zzzz"[..], b"0005", b"00ffshort", &[0xffu8; 64]] {
        raw_receive_pack(&f, garbage);
    }
    assert_eq!(
        stdout(&f, &src, &["ls-remote", &remote]),
        before,
        "the refs did not move"
    );
    // The good pack still goes in, and the repository is whole.
    let mut input = command("good");
    input.extend_from_slice(&good);
    let answer = raw_receive_pack(&f, &input);
    assert!(
        answer.contains("unpack ok") && answer.contains("ok refs/heads/good"),
        "{answer}"
    );
    let check = f.clone("check", &["--branch", "good"]);
    f.ok(&check, &["fsck", "--full"]);
    assert_eq!(stdout(&f, &check, &["rev-parse", "HEAD"]).trim(), head);
    // Every blob the store references (packs, published files) is whole.
    let node = f.stop();
    let fsck = node.ok(&["fsck"]);
    assert!(fsck.contains("no problems"), "{fsck}");
}

#[test]
fn repo_commands() {
    let node = Node::new();
    assert!(
        node.ok(&["repo", "create", "site.git"])
            .contains("created repository site")
    );
    let err = node.fails(&["repo", "create", "site"]);
    assert!(err.contains("exists"), "{err}");
    let err = node.fails(&["repo", "create", "Bad Name"]);
    assert!(err.contains("invalid repository name"), "{err}");
    let list = node.json(&["repo", "list"]);
    assert_eq!(list[0]["name"], "site");
    assert_eq!(list[0]["head"], "refs/heads/main");
    node.ok(&["bucket", "create", "photos"]);
    assert_eq!(node.json(&["repo", "list"]).as_array().map(Vec::len), Some(1));
    let err = node.fails(&["repo", "delete", "photos"]);
    assert!(err.contains("not a git repository"), "{err}");
    node.ok(&["repo", "delete", "site.git"]);
    assert_eq!(node.json(&["repo", "list"]).as_array().map(Vec::len), Some(0));
    assert!(!node.data.join("git/site").exists());
}

#[test]
fn packs_live_in_the_store_and_survive_gc() {
    let f = Forge::start(Transport::Ssh, 2);
    let src = f.clone("src", &[]);
    commit(&f, &src, &[("a", &"a".repeat(40_000)), ("b", "b\n")], "one");
    f.ok(&src, &["push", "-q", "origin", "HEAD:main"]);
    commit(&f, &src, &[("b", "b2\n")], "two");
    f.ok(&src, &["push", "-q", "origin", "HEAD:main"]);
    let head = stdout(&f, &src, &["rev-parse", "HEAD"]);
    let node = f.stop();
    let listed = node.json(&["repo", "list"]);
    assert_eq!(listed[0]["packs"], 2, "{listed}");
    node.ok(&["gc"]);
    // The pack directory is only where packs are read: lost, it is rebuilt
    // from the blobs the repository holds.
    std::fs::remove_dir_all(node.data.join("git/hello")).expect("remove git/hello");
    let f = Forge::restart(node);
    let copy = f.clone("copy", &[]);
    f.ok(&copy, &["fsck", "--full"]);
    assert_eq!(stdout(&f, &copy, &["rev-parse", "HEAD"]), head);
}

#[test]
fn an_admins_first_push_creates_the_repository_when_configured() {
    let f = Forge::start_with(Transport::Ssh, 2, |node| {
        let path = node.data.join("alknet.toml");
        let text = std::fs::read_to_string(&path).expect("settings");
        std::fs::write(&path, text.replace("create_on_push = false", "create_on_push = true")).expect("write");
        let bob = client_key(node, "bob");
        node.ok(&["user", "add", "bob", "--key", &format!("{}.pub", bob.display())]);
    });
    let src = f.work("src");
    std::fs::create_dir_all(&src).expect("mkdir");
    f.ok(&src, &["init", "-q", "-b", "main"]);
    commit(&f, &src, &[("a", "1\n")], "one");
    // Not an admin: refused, nothing created.
    let out = f
        .git_as(&f.work("bob"), &src, &["push", &f.url("fresh"), "HEAD:main"])
        .output()
        .expect("git");
    assert!(!out.status.success(), "{}", combined(&out));
    assert!(!f.node.ok(&["repo", "list"]).contains("fresh"));
    // An admin's push creates it.
    f.ok(&src, &["push", "-q", &f.url("fresh.git"), "HEAD:main"]);
    assert!(f.node.ok(&["repo", "list"]).contains("fresh"));
    let out = f.git(&f.node.work, &["clone", "-q", &f.url("fresh"), "copy"]);
    assert!(out.status.success(), "{}", combined(&out));
    assert_eq!(std::fs::read_to_string(f.work("copy/a")).expect("a"), "1\n");
}

/// A tree git would never check out (`.`, `..`, `.git`, `a/b`) is
/// pushed and kept as git objects, but its bad names are not published as
/// files: the published branch holds only what the name rule takes.
#[test]
fn bad_names_in_a_pushed_tree_are_not_published() {
    let f = Forge::start(Transport::Ssh, 2);
    let src = f.clone("src", &[]);
    let blob = {
        let mut c = f.git_as(&f.key, &src, &["hash-object", "-w", "--stdin"]);
        c.stdin(Stdio::piped()).stdout(Stdio::piped());
        let mut child = c.spawn().expect("git hash-object");
        use std::io::Write;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(b"content\n")
            .expect("feed");
        let out = child.wait_with_output().expect("wait");
        String::from_utf8(out.stdout).expect("utf-8").trim().to_owned()
    };
    let raw: Vec<u8> = (0..blob.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&blob[i..i + 2], 16).expect("hex"))
        .collect();
    let mut tree = Vec::new();
    for name in [&b"."[..], b"..", b".git", b"a/b", b"ok"] {
        tree.extend_from_slice(b"100644 ");
        tree.extend_from_slice(name);
        tree.push(0);
        tree.extend_from_slice(&raw);
    }
    let tree_id = {
        let mut c = f.git_as(
            &f.key,
            &src,
            &["hash-object", "-t", "tree", "--literally", "-w", "--stdin"],
        );
        c.stdin(Stdio::piped()).stdout(Stdio::piped());
        let mut child = c.spawn().expect("git hash-object");
        use std::io::Write;
        child.stdin.take().expect("stdin").write_all(&tree).expect("feed");
        let out = child.wait_with_output().expect("wait");
        assert!(out.status.success(), "{}", combined(&out));
        String::from_utf8(out.stdout).expect("utf-8").trim().to_owned()
    };
    let commit = stdout(&f, &src, &["commit-tree", &tree_id, "-m", "bad names"]);
    f.ok(
        &src,
        &["push", "-q", "origin", &format!("{}:refs/heads/main", commit.trim())],
    );
    assert_eq!(
        f.node.ok(&["ls", "hello@main:/"]),
        "ok\n",
        "only the good name is a file"
    );
    let log = std::fs::read_to_string(f.node.work.join("serve.log")).expect("serve log");
    assert!(log.contains("not publishing"), "the skipped names are logged:\n{log}");
    let node = f.stop();
    let fsck = node.json(&["fsck"]);
    assert_eq!(fsck["problems"], serde_json::json!([]), "{fsck}");
}

/// A mirror push of a project whose default branch is `master` into a new
/// repository (HEAD unborn at `main`): HEAD follows the pushed branch, and a
/// clone gets the project. `repo set-head` moves HEAD later; with HEAD
/// dangling, a clone still fetches every branch, as stock git's does.
#[test]
fn a_mirror_push_points_head_at_its_default_branch() {
    let f = Forge::start(Transport::Ssh, 2);
    f.node.ok(&["repo", "create", "rg"]);
    let src = f.work("project");
    std::fs::create_dir_all(&src).expect("mkdir");
    f.ok(&src, &["init", "-q", "-b", "master"]);
    commit(&f, &src, &[("README", "ripgrep-like\n")], "one");
    f.ok(&src, &["branch", "dev"]);
    f.ok(&src, &["tag", "v1"]);
    f.ok(&src, &["push", "-q", "--mirror", &f.url("rg")]);
    let repos = f.node.json(&["repo", "list"]);
    let rg = repos
        .as_array()
        .and_then(|a| a.iter().find(|r| r["name"] == "rg"))
        .expect("rg is listed")
        .clone();
    assert_eq!(rg["head"], "refs/heads/master", "{rg}");

    let out = f.ok(&f.node.work, &["clone", &f.url("rg"), "rg1"]);
    assert!(!out.contains("empty repository"), "{out}");
    assert_eq!(
        std::fs::read_to_string(f.work("rg1/README")).expect("README"),
        "ripgrep-like\n"
    );

    f.node.ok(&["repo", "set-head", "rg", "dev"]);
    let head = stdout(&f, &f.work("rg1"), &["ls-remote", "--symref", &f.url("rg"), "HEAD"]);
    assert!(head.contains("ref: refs/heads/dev\tHEAD"), "{head}");
    let err = f.node.fails(&["repo", "set-head", "rg", "nope"]);
    assert!(err.contains("no branch refs/heads/nope"), "{err}");

    // HEAD dangling: the branch it names is deleted.
    f.ok(&src, &["push", "-q", &f.url("rg"), ":dev"]);
    let out = f.ok(&f.node.work, &["clone", &f.url("rg"), "rg2"]);
    assert!(!out.contains("empty repository"), "{out}");
    let remote = stdout(&f, &f.work("rg2"), &["branch", "-r"]);
    assert!(remote.contains("origin/master"), "every branch is fetched: {remote}");
}

/// A server killed mid-push leaves a partial pack in quarantine; the next
/// start removes it.
#[test]
fn a_push_cut_by_a_kill_leaves_nothing_behind() {
    let mut f = Forge::start(Transport::Ssh, 2);
    let src = f.clone("src", &[]);
    std::fs::write(src.join("big.bin"), crate::util::pattern(48 << 20, 3)).expect("write");
    f.ok(&src, &["add", "big.bin"]);
    f.ok(&src, &["commit", "-q", "-m", "big"]);
    let mut push = f
        .git_as(&f.key, &src, &["push", "-q", "origin", "HEAD:main"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn git push");
    let incoming = f.node.data.join("git/hello/incoming");
    let started = std::time::Instant::now();
    // Kill the server once the pack has started to land.
    let landed = loop {
        let bytes: u64 = walk_files(&incoming)
            .iter()
            .map(|p| p.metadata().map_or(0, |m| m.len()))
            .sum();
        if bytes > 0 {
            break bytes;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(60),
            "the pack never arrived"
        );
        std::thread::yield_now();
    };
    crate::util::sigkill(f.server.pid());
    let status = push.wait().expect("wait for git push");
    assert!(!status.success(), "the push was cut ({landed} bytes had landed)");
    assert!(!walk_files(&incoming).is_empty(), "the kill left a partial pack");

    f.server = Server::start(&f.node);
    assert!(
        walk_files(&incoming).is_empty(),
        "the restart removed it: {:?}",
        walk_files(&incoming)
    );
    let log = std::fs::read_to_string(f.node.work.join("serve.log")).expect("serve log");
    assert!(log.contains("left by a push that never finished"), "{log}");
    // The repository is as before the push, and takes the push again.
    let url = f.url("hello");
    f.ok(&src, &["push", "-q", &url, "HEAD:main"]);
}

/// Every file below `dir` (none if it does not exist).
fn walk_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk_files(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// A push is a file of the store too: one past the write limits is refused
/// while it arrives, with the reason, and changes nothing.
#[test]
fn a_push_past_the_write_limits_is_refused_with_the_reason() {
    let f = Forge::start_with(Transport::Ssh, 2, |node| {
        let path = node.data.join("alknet.toml");
        let text = std::fs::read_to_string(&path).expect("alknet.toml");
        let text = text.replace("max_file_size = \"none\"", "max_file_size = \"1MiB\"");
        std::fs::write(&path, text).expect("write alknet.toml");
    });
    let src = f.clone("src", &[]);
    std::fs::write(src.join("big.bin"), crate::util::pattern(3 << 20, 9)).expect("write");
    f.ok(&src, &["add", "big.bin"]);
    f.ok(&src, &["commit", "-q", "-m", "big"]);
    let out = f.fails(&src, &["push", "origin", "HEAD:main"]);
    assert!(out.contains("file too large"), "{out}");
    let refs = stdout(&f, &src, &["ls-remote", &f.url("hello")]);
    assert!(refs.trim().is_empty(), "nothing moved: {refs}");

    // A quota on the repository bounds its packs.
    let node = f.stop();
    node.ok(&["bucket", "quota", "hello", "200KiB"]);
    let f = Forge::restart(node);
    let src = f.work("src");
    std::fs::write(src.join("big.bin"), crate::util::pattern(300 << 10, 4)).expect("write");
    f.ok(&src, &["commit", "-q", "--amend", "-a", "-m", "300 KiB"]);
    let url = f.url("hello");
    let out = f.fails(&src, &["push", &url, "HEAD:main"]);
    assert!(
        out.contains("the pushed pack: bucket hello is at its quota of 200.0 KiB"),
        "{out}"
    );
    std::fs::write(src.join("big.bin"), crate::util::pattern(100 << 10, 4)).expect("write");
    f.ok(&src, &["commit", "-q", "--amend", "-a", "-m", "100 KiB"]);
    f.ok(&src, &["push", "-q", &url, "HEAD:main"]);
}

/// A 2 GiB file goes in by push, is published, and comes out by clone while
/// the node's peak RSS stays under 300 MiB: packs stream through, no object
/// is held whole.
#[test]
fn a_2_gib_file_is_pushed_and_cloned_in_bounded_memory() {
    use std::io::Write;
    const CHUNK: usize = 64 << 20;
    const CHUNKS: usize = 32;
    let mut f = Forge::start(Transport::Ssh, 2);
    f.patience = 900;
    let src = f.clone("src", &[]);
    let mut hasher = blake3::Hasher::new();
    {
        // Incompressible bytes, made fast: BLAKE3's output stream.
        let mut bytes = blake3::Hasher::new().update(b"2 GiB").finalize_xof();
        let mut chunk = vec![0u8; CHUNK];
        let mut file = std::fs::File::create(src.join("big.bin")).expect("create");
        for _ in 0..CHUNKS {
            bytes.fill(&mut chunk);
            hasher.update(&chunk);
            file.write_all(&chunk).expect("write");
        }
    }
    // Stored, not deflated: the pack on the wire is as large as the file.
    f.ok(&src, &["-c", "core.compression=0", "add", "big.bin"]);
    f.ok(&src, &["commit", "-q", "-m", "2 GiB"]);
    f.ok(&src, &["push", "-q", "origin", "HEAD:main"]);
    let after_push = crate::util::peak_rss_kib(f.server.pid()).expect("VmHWM");
    assert!(
        after_push < 300 << 10,
        "pushing: the server's peak RSS was {after_push} KiB"
    );
    let copy = f.clone("copy", &[]);
    let after_clone = crate::util::peak_rss_kib(f.server.pid()).expect("VmHWM");
    assert!(
        after_clone < 300 << 10,
        "cloning: the server's peak RSS was {after_clone} KiB"
    );
    let same = Command::new("cmp")
        .arg(src.join("big.bin"))
        .arg(copy.join("big.bin"))
        .status()
        .expect("run cmp");
    assert!(same.success(), "the clone holds the pushed bytes");
    std::fs::remove_dir_all(&copy).ok();
    std::fs::remove_dir_all(&src).ok();
    // The published file is the same bytes, and every blob is whole.
    let node = f.stop();
    let stat = node.json(&["stat", "hello:/big.bin"]);
    assert_eq!(stat["size"], (CHUNK * CHUNKS) as u64, "{stat}");
    assert_eq!(stat["hash"], hasher.finalize().to_hex().as_str(), "{stat}");
    let fsck = node.json(&["fsck"]);
    assert_eq!(fsck["problems"], serde_json::json!([]), "{fsck}");
}

/// Runs git with curl's trace of the HTTP headers on; asserts success and
/// returns its output.
fn traced(f: &Forge, dir: &Path, args: &[&str]) -> String {
    let out = f
        .git_as(&f.key, dir, args)
        .env("GIT_TRACE_CURL", "1")
        .env("GIT_TRACE_CURL_NO_DATA", "1")
        .output()
        .expect("run git");
    let trace = combined(&out);
    assert!(out.status.success(), "git {args:?}:\n{trace}");
    trace
}

/// Smart HTTP as git drives it beyond the scenarios: a push streamed in
/// chunks past `http.postBuffer`, a gzipped request, and a strict fsck of
/// what comes back.
#[test]
fn http_pushes_past_the_post_buffer_and_gzipped_requests() {
    let f = Forge::start(Transport::Http, 0);
    let src = f.clone("src", &[]);
    let noise = crate::util::pattern(2 << 20, 3);
    std::fs::write(src.join("noise.bin"), &noise).expect("noise");
    commit(&f, &src, &[("README", "big push\n")], "big");
    for i in 0..300 {
        f.ok(&src, &["tag", &format!("t{i:03}")]);
    }
    // A 4 KiB post buffer: git streams the pack with chunked encoding.
    let trace = traced(
        &f,
        &src,
        &["-c", "http.postBuffer=4096", "push", "origin", "HEAD:main", "--tags"],
    );
    assert!(
        trace.contains("Transfer-Encoding: chunked"),
        "the push was chunked:\n{trace}"
    );
    // 300 wants make a request git gzips.
    let url = f.url("hello");
    let trace = traced(&f, &f.node.work, &["clone", &url, "copy"]);
    assert!(
        trace.contains("Content-Encoding: gzip"),
        "the request was gzipped:\n{trace}"
    );
    let copy = f.work("copy");
    f.ok(&copy, &["fsck", "--full", "--strict"]);
    assert_eq!(std::fs::read(copy.join("noise.bin")).expect("noise"), noise);
    assert_eq!(stdout(&f, &copy, &["tag"]).lines().count(), 300);
}

/// Who may do what over HTTP: no token is 401 with a Basic challenge (so
/// git asks for credentials), a repository the caller may not read is 404
/// exactly like a missing one, a push without `write` is 403, a public
/// repository clones with no token and takes no anonymous push, and bad
/// requests get clear answers while the node goes on serving.
#[test]
fn http_access_follows_the_grants() {
    let f = Forge::start_with(Transport::Http, 2, |node| {
        node.ok(&["repo", "create", "pub"]);
        crate::util::add_user(node, "bob");
        let settings = std::fs::read_to_string(node.data.join("alknet.toml")).expect("settings");
        let settings = settings.replace("public = []", "public = [\"pub\"]");
        std::fs::write(node.data.join("alknet.toml"), settings).expect("settings");
    });
    let src = f.clone("src", &[]);
    commit(&f, &src, &[("a", "1\n")], "one");
    f.ok(&src, &["push", "-q", "origin", "HEAD:main"]);
    f.ok(&src, &["push", "-q", &f.url("pub"), "HEAD:main"]);
    let http = &f.server.http;
    let refs = |repo: &str, service: &str| format!("{http}/{repo}/info/refs?service=git-{service}");

    // Nobody signed in.
    let anon = crate::http::curl(None, &[], &refs("hello", "upload-pack"));
    assert_eq!(anon.status, 401);
    assert!(
        anon.headers.to_ascii_lowercase().contains("www-authenticate: basic"),
        "{}",
        anon.headers
    );
    assert_eq!(crate::http::curl(None, &[], &refs("nope", "upload-pack")).status, 401);
    let no_creds = Command::new("git")
        .args(["ls-remote", &format!("{http}/hello.git")])
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", f.work("nobody"))
        .output()
        .expect("git");
    assert!(!no_creds.status.success());
    // A public repository: anyone clones, nobody pushes anonymously.
    let public = Command::new("git")
        .args(["clone", "-q", &format!("{http}/pub.git"), "anon-pub"])
        .current_dir(&f.node.work)
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", f.work("nobody"))
        .output()
        .expect("git");
    assert!(public.status.success(), "{}", combined(&public));
    assert_eq!(std::fs::read(f.work("anon-pub/a")).expect("a"), b"1\n");
    assert_eq!(crate::http::curl(None, &[], &refs("pub", "receive-pack")).status, 401);
    // Made public from the CLI, and private again.
    f.node.ok(&["repo", "create", "open", "--public"]);
    assert!(
        f.node
            .ok(&["repo", "list"])
            .lines()
            .any(|l| l.starts_with("open\t") && l.ends_with("\tpublic"))
    );
    assert_eq!(crate::http::curl(None, &[], &refs("open", "upload-pack")).status, 200);
    f.node.ok(&["repo", "set-public", "open", "off"]);
    assert_eq!(crate::http::curl(None, &[], &refs("open", "upload-pack")).status, 401);

    // bob has no grant: hello looks missing; with read, no push.
    let bob = crate::http::token(&f.node, "bob", &[]);
    let hidden = crate::http::curl(Some(&bob), &[], &refs("hello", "upload-pack"));
    let missing = crate::http::curl(Some(&bob), &[], &refs("nope", "upload-pack"));
    assert_eq!((hidden.status, missing.status), (404, 404));
    assert_eq!(hidden.text().replace("hello", "R"), missing.text().replace("nope", "R"));
    f.node.ok(&["grant", "bob", "hello", "read"]);
    assert_eq!(
        crate::http::curl(Some(&bob), &[], &refs("hello", "upload-pack")).status,
        200
    );
    assert_eq!(
        crate::http::curl(Some(&bob), &[], &refs("hello", "receive-pack")).status,
        403
    );
    // A read-only token of an admin cannot push either; a bad one is 401.
    let ro = crate::http::token(&f.node, "alice", &["--read-only"]);
    assert_eq!(
        crate::http::curl(Some(&ro), &[], &refs("hello", "receive-pack")).status,
        403
    );
    assert_eq!(
        crate::http::curl(Some("alk_nope"), &[], &refs("hello", "upload-pack")).status,
        401
    );

    // Bad requests: the dumb protocol, an unknown encoding, garbage.
    let alice = crate::http::token(&f.node, "alice", &[]);
    assert_eq!(
        crate::http::curl(Some(&alice), &[], &format!("{http}/hello/info/refs")).status,
        403
    );
    let post = format!("{http}/hello/git-upload-pack");
    let encoded = crate::http::curl(
        Some(&alice),
        &["-H", "Content-Encoding: br", "--data-binary", "x"],
        &post,
    );
    assert_eq!(encoded.status, 415);
    let garbage = crate::http::curl(
        Some(&alice),
        &["--data-binary", "002bwant not-an-object-id-at-all-really-no\n0000"],
        &post,
    );
    assert!(
        garbage.text().contains("ERR") || garbage.status >= 400,
        "{}",
        garbage.text()
    );
    let gz = crate::http::curl(
        Some(&alice),
        &[
            "-H",
            "Content-Encoding: gzip",
            "--data-binary",
            "this body is certainly not a gzip stream",
        ],
        &post,
    );
    assert!(gz.text().contains("ERR"), "a body that is not gzip: {}", gz.text());
    let again = f.clone("again", &[]);
    f.ok(&again, &["fsck", "--full", "--strict"]);
}
