//! The git forge through stock git: over SSH (TCP) and over QUIC (the
//! `git-remote-alknet` helper), each with protocol v0 and v2.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::util::{Node, Server, Via, bin, client_key, combined, sftp_batch, ssh_opts};

/// Runs a scenario over both transports and both protocol versions.
macro_rules! each_transport {
    ($($scenario:ident),* $(,)?) => {$(
        mod $scenario {
            use super::Via;
            #[test]
            fn tcp_v0() {
                super::$scenario(Via::Tcp, 0);
            }
            #[test]
            fn tcp_v2() {
                super::$scenario(Via::Tcp, 2);
            }
            #[test]
            fn quic_v0() {
                super::$scenario(Via::Quic, 0);
            }
            #[test]
            fn quic_v2() {
                super::$scenario(Via::Quic, 2);
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
    via: Via,
    version: u8,
}

impl Forge {
    fn start(via: Via, version: u8) -> Forge {
        Self::start_with(via, version, |_| {})
    }

    /// `setup` runs on the node before the server starts (config, users).
    fn start_with(via: Via, version: u8, setup: impl FnOnce(&Node)) -> Forge {
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
        setup(&node);
        // git finds the helper on PATH under its git name.
        let helper_dir = node.work.join("bin");
        std::fs::create_dir_all(&helper_dir).expect("bin dir");
        std::os::unix::fs::symlink(bin(), helper_dir.join("git-remote-alknet")).ok();
        let server = Server::start(&node);
        Forge {
            node,
            server,
            key,
            via,
            version,
        }
    }

    fn url(&self, repo: &str) -> String {
        match self.via {
            Via::Tcp => format!("ssh://alice@127.0.0.1:{}/{repo}", self.server.ssh_port),
            Via::Quic => format!("alknet://{}/{repo}", self.server.quic),
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
        c.arg("120")
            .arg("git")
            .arg("-c")
            .arg(format!("protocol.version={}", self.version))
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

fn push_clone_fetch(via: Via, version: u8) {
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

    let copy = f.clone("copy", &[]);
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
    f.ok(&src, &["push", "-q", "origin", "HEAD:main"]);
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

fn shallow_and_unshallow(via: Via, version: u8) {
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

fn partial_clones(via: Via, version: u8) {
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

fn refs_tags_and_atomic(via: Via, version: u8) {
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
    let f = Forge::start_with(Via::Tcp, 2, |node| {
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
