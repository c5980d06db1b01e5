//! The CLI and local mounts beside a running node: through its socket
//! (`DATA/alknet.sock`), with the same output as without one.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::mount::{Mounted, is_mounted};
use crate::util::{Node, Server, combined, sigkill};

/// One command line and, for `put -`, its standard input.
pub(crate) struct Step {
    pub(crate) args: Vec<String>,
    pub(crate) stdin: &'static [u8],
}

pub(crate) fn step(args: &[&str]) -> Step {
    Step {
        args: args.iter().map(|a| a.to_string()).collect(),
        stdin: b"",
    }
}

fn run(node: &Node, s: &Step) -> Output {
    let args: Vec<&str> = s.args.iter().map(String::as_str).collect();
    run_with(node.cmd(&args), s.stdin)
}

/// Runs `cmd` with `stdin` and collects its output.
pub(crate) fn run_with(mut cmd: Command, stdin: &[u8]) -> Output {
    use std::io::Write;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn alknet");
    child.stdin.take().expect("stdin").write_all(stdin).expect("stdin");
    child.wait_with_output().expect("wait")
}

/// Asserts that step `s` exited the same way and printed the same bytes in
/// two runs, each with the work directory it ran in.
pub(crate) fn assert_same(s: &Step, (a, a_work): (&Output, &Path), (b, b_work): (&Output, &Path)) {
    let what = s.args.join(" ");
    assert_eq!(
        a.status.code(),
        b.status.code(),
        "alknet {what}: exit codes\n{}\n{}",
        combined(a),
        combined(b)
    );
    assert_eq!(
        normalized(&a.stdout, a_work),
        normalized(&b.stdout, b_work),
        "alknet {what}: stdout"
    );
    assert_eq!(
        normalized(&a.stderr, a_work),
        normalized(&b.stderr, b_work),
        "alknet {what}: stderr"
    );
}

/// Output with what differs between two runs of the same steps replaced:
/// wall-clock times (ISO dates, and the long numbers of ms and ns clocks)
/// and the work directory's path.
fn normalized(out: &[u8], work: &Path) -> String {
    let text = String::from_utf8_lossy(out).replace(work.to_str().expect("utf-8"), "WORK");
    let mut norm = String::new();
    let mut digits = String::new();
    for c in text.chars().chain(std::iter::once('\0')) {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        norm.push_str(if digits.len() >= 12 { "N" } else { &digits });
        digits.clear();
        norm.push(c);
    }
    norm.pop();
    // 2026-12-01T13:43:44Z
    let mut out = String::new();
    let bytes = norm.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let iso = bytes.len() >= i + 20
            && bytes[i + 4] == b'-'
            && bytes[i + 10] == b'T'
            && bytes[i + 19] == b'Z'
            && bytes[i..i + 4].iter().all(u8::is_ascii_digit);
        if iso {
            out.push_str("TIME");
            i += 20;
        } else {
            out.push(bytes[i] as char);
            i += 1;
        }
    }
    out
}

/// Every command a user runs prints the same bytes and exits the same way
/// whether it opens the data directory itself or a running node does the
/// work: two data directories take the same steps, one with `alknet serve`
/// running.
#[test]
fn every_command_answers_the_same_through_a_running_node() {
    let direct = Node::new();
    let beside = Node::new();
    let server = Server::start(&beside);
    let socket = beside.data.join("alknet.sock");
    assert!(socket.exists(), "the node listens on its socket");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&socket).expect("socket").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "only the owner may use the socket");

    for node in [&direct, &beside] {
        std::fs::write(node.work.join("local.txt"), b"local bytes\n").expect("local file");
        std::fs::create_dir_all(node.work.join("tree/sub")).expect("local tree");
        std::fs::write(node.work.join("tree/a"), b"a").expect("a");
        std::fs::write(node.work.join("tree/sub/b"), b"bb").expect("b");
        std::fs::create_dir_all(node.work.join("outdir")).expect("outdir");
    }
    let key = crate::util::client_key(&direct, "alice");
    std::fs::copy(key.with_extension("pub"), beside.work.join("alice.pub")).expect("key");
    std::fs::copy(&key, beside.work.join("alice")).expect("key");
    let mut steps = vec![
        step(&["bucket", "create", "docs"]),
        step(&["bucket", "create", "docs"]),
        step(&["--json", "bucket", "list"]),
        step(&["put", "local.txt", "docs:/"]),
        step(&["--json", "put", "local.txt", "docs:/copy.txt"]),
        Step {
            args: vec!["put".into(), "-".into(), "docs:/stdin.txt".into()],
            stdin: b"from stdin\n",
        },
        step(&["put", "-r", "tree", "docs:/"]),
        step(&["put", "missing.txt", "docs:/"]),
        step(&["cat", "docs:/local.txt"]),
        step(&["cat", "docs:/nope"]),
        step(&["--json", "cat", "docs:/nope"]),
        step(&["get", "docs:/stdin.txt", "-o", "outdir"]),
        step(&["get", "docs:/local.txt", "-o", "-"]),
        step(&["get", "-r", "docs:/tree", "-o", "got-tree"]),
        step(&["ls", "docs:/"]),
        step(&["ls", "-R", "docs:/"]),
        step(&["--json", "ls", "docs:/tree"]),
        step(&["stat", "docs:/tree/a"]),
        step(&["mkdir", "docs:/d"]),
        step(&["mkdir", "-p", "docs:/d/e/f"]),
        step(&["mv", "docs:/copy.txt", "docs:/d"]),
        step(&["cp", "docs:/local.txt", "docs:/d/e"]),
        step(&["ln", "-s", "../local.txt", "docs:/d/link"]),
        step(&["cat", "docs:/d/link"]),
        step(&["rm", "docs:/d"]),
        step(&["rm", "-r", "docs:/d/e"]),
        step(&["snapshot", "docs", "first"]),
        step(&["snapshots", "docs"]),
        step(&["branch", "create", "docs", "dev", "--from", "main@first"]),
        step(&["branch", "list", "docs"]),
        step(&["put", "local.txt", "docs@dev:/only-on-dev"]),
        step(&["diff", "docs", "docs@dev"]),
        step(&["--json", "log", "docs@dev", "-n", "3"]),
        step(&["log", "docs:/tree"]),
        step(&["bucket", "quota", "docs", "1MiB"]),
        step(&["user", "add", "alice", "--key", "alice.pub"]),
        step(&["grant", "alice", "docs", "read"]),
        step(&["user", "list"]),
        step(&["revoke", "alice", "docs"]),
        step(&["repo", "create", "code"]),
        step(&["repo", "list"]),
        step(&["prune", "docs", "--before", "first"]),
        step(&["branch", "delete", "docs", "dev"]),
        step(&["gc"]),
        step(&["fsck"]),
        step(&["bucket", "delete", "docs"]),
        step(&["ls", "docs:/"]),
    ];
    steps.push(step(&["bucket", "list"]));
    for s in &steps {
        assert_same(s, (&run(&direct, s), &direct.work), (&run(&beside, s), &beside.work));
    }
    // The files `get` wrote landed in the client's directory, not the node's.
    assert_eq!(
        std::fs::read(beside.work.join("outdir/stdin.txt")).expect("got"),
        b"from stdin\n"
    );
    assert_eq!(std::fs::read(beside.work.join("got-tree/sub/b")).expect("got"), b"bb");
    assert!(server.stop(), "the server stops cleanly");
    assert!(!socket.exists(), "a node that stops removes its socket");
}

/// A node killed with SIGKILL leaves its socket behind; the next command
/// sees nobody answers, removes it, and opens the data directory itself.
#[test]
fn a_killed_node_leaves_a_socket_the_cli_removes() {
    let node = Node::new();
    node.ok(&["bucket", "create", "b"]);
    node.ok_stdin(&["put", "-", "b:/f"], b"kept\n");
    let server = Server::start(&node);
    let socket = node.data.join("alknet.sock");
    assert_eq!(node.ok(&["cat", "b:/f"]), "kept\n");
    sigkill(server.pid());
    drop(server);
    assert!(socket.exists(), "SIGKILL leaves the socket");
    let started = Instant::now();
    assert_eq!(node.ok(&["cat", "b:/f"]), "kept\n");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the CLI does not wait for a dead node"
    );
    assert!(!socket.exists(), "the stale socket is removed");
    node.ok_stdin(&["put", "-", "b:/g"], b"after\n");
    // And a new node starts on the same data directory.
    let server = Server::start(&node);
    assert_eq!(node.ok(&["cat", "b:/g"]), "after\n");
    assert!(server.stop());
}

/// `alknet serve` refuses to start twice on one data directory.
#[test]
fn a_second_node_on_one_data_directory_is_refused() {
    let node = Node::new();
    let server = Server::start(&node);
    let out = node
        .cmd(&["serve", "--ssh", "127.0.0.1:0", "--quic", "127.0.0.1:0"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("a node already serves"),
        "{}",
        combined(&out)
    );
    assert!(server.stop());
}

/// A command whose client goes away ends in the node: a killed `watch`
/// prints nothing more to the terminal it was given.
#[test]
fn a_client_that_goes_away_ends_its_command() {
    let node = Node::new();
    node.ok(&["bucket", "create", "b"]);
    let server = Server::start(&node);
    let out = node.work.join("watch.out");
    let mut watch = node
        .cmd(&["watch", "b"])
        .stdout(std::fs::File::create(&out).expect("out"))
        .stderr(Stdio::null())
        .spawn()
        .expect("watch");
    node.ok_stdin(&["put", "-", "b:/one"], b"1");
    wait_until("the watch prints the first commit", || {
        std::fs::read_to_string(&out).unwrap_or_default().contains("/one")
    });
    sigkill(watch.id());
    watch.wait().ok();
    // The node notices within its one-second poll.
    let gone = Instant::now();
    node.ok_stdin(&["put", "-", "b:/two"], b"2");
    while gone.elapsed() < Duration::from_secs(3) {
        node.ok_stdin(&["put", "-", "b:/three"], b"3");
        std::thread::sleep(Duration::from_millis(200));
    }
    let printed = std::fs::read_to_string(&out).expect("out");
    assert!(
        !printed.contains("/three"),
        "a killed client's command kept writing:\n{printed}"
    );
    assert!(server.stop(), "the node stops cleanly");
}

fn wait_until(what: &str, done: impl FnMut() -> bool) {
    crate::util::wait_until(what, Duration::from_secs(10), done);
}

/// Two local mounts of two branches at once with no server started by
/// hand: the first holds the store and serves the second through its
/// socket, and the CLI beside them goes through it too. Each mount shows
/// its own branch only; the first stays up until the second is gone.
#[test]
fn two_local_mounts_and_the_cli_share_one_data_directory() {
    let node = Node::new();
    node.ok(&["bucket", "create", "b"]);
    node.ok_stdin(&["put", "-", "b:/base"], b"base\n");
    node.ok(&["branch", "create", "b", "dev"]);
    node.ok(&["branch", "create", "b", "third"]);
    let main = Mounted::start(&node, "b", "main", &[]);
    let dev = Mounted::start(&node, "b@dev", "dev", &["--cache-dir", "cache"]);
    assert_eq!(std::fs::read(dev.path("base")).expect("read"), b"base\n");

    std::fs::write(dev.path("dev-only"), b"dev\n").expect("write through the second mount");
    node.ok_stdin(&["put", "-", "b:/main-only"], b"cli\n");
    node.ok_stdin(&["put", "-", "b@third:/third-only"], b"third\n");
    wait_until("the CLI's write shows in its branch's mount", || {
        main.path("main-only").exists()
    });
    assert_eq!(std::fs::read(main.path("main-only")).expect("read"), b"cli\n");
    assert_eq!(node.ok(&["cat", "b@dev:/dev-only"]), "dev\n");
    assert!(!main.path("dev-only").exists(), "dev's file shows on main");
    assert!(!dev.path("main-only").exists(), "main's file shows on dev");
    assert!(!main.path("third-only").exists() && !dev.path("third-only").exists());
    assert_eq!(node.ok(&["ls", "b@third:/"]), "base\nthird-only\n");

    // The first mount's process holds the store: unmounting it leaves its
    // process serving the second mount until that one ends.
    let main_dir = main.dir.clone();
    Command::new(crate::util::bin())
        .args(["umount", main_dir.to_str().expect("utf-8")])
        .status()
        .expect("umount");
    wait_until("the first mount is gone", || !is_mounted(&main_dir));
    std::fs::write(dev.path("after"), b"still served\n").expect("the second mount still works");
    assert_eq!(node.ok(&["cat", "b@dev:/after"]), "still served\n");
    assert!(dev.stop(), "the second mount stops cleanly");
    let log = || std::fs::read_to_string(node.work.join("main.log")).unwrap_or_default();
    assert!(
        main.stop(),
        "the first mount's process ends once nobody uses it:\n{}",
        log()
    );
    assert!(!node.data.join("alknet.sock").exists());
}

/// With `alknet serve` running, a mount goes through it instead of waiting
/// for the store.
#[test]
fn a_mount_beside_the_server_goes_through_it() {
    let node = Node::new();
    node.ok(&["bucket", "create", "b"]);
    node.ok_stdin(&["put", "-", "b:/f"], b"data");
    let server = Server::start(&node);
    let m = Mounted::start(&node, "b", "m", &["--cache-dir", "cache"]);
    assert_eq!(std::fs::read(m.path("f")).expect("read"), b"data");
    std::fs::write(m.path("g"), b"written").expect("write");
    assert_eq!(node.ok(&["cat", "b:/g"]), "written");
    assert!(m.stop());
    assert!(server.stop());
}

/// Two local mounts started at the same moment with no node: whichever takes
/// the store first serves the other, instead of the other waiting for it.
#[test]
fn two_local_mounts_started_together_both_come_up() {
    let node = Node::new();
    node.ok(&["bucket", "create", "b"]);
    node.ok(&["branch", "create", "b", "dev"]);
    let (one, two) = std::thread::scope(|s| {
        let one = s.spawn(|| Mounted::start(&node, "b", "one", &["--cache-dir", "cache1"]));
        let two = s.spawn(|| Mounted::start(&node, "b@dev", "two", &["--cache-dir", "cache2"]));
        (one.join().expect("first mount"), two.join().expect("second mount"))
    });
    std::fs::write(one.path("on-main"), b"1").expect("write through the first");
    std::fs::write(two.path("on-dev"), b"2").expect("write through the second");
    assert_eq!(node.ok(&["ls", "b:/"]), "on-main\n");
    assert_eq!(node.ok(&["ls", "b@dev:/"]), "on-dev\n");
    // Stopped together: the one that came through the other ends at once,
    // the holder once its socket has no session left.
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| one.stop());
        let b = s.spawn(|| two.stop());
        (a.join().expect("stop"), b.join().expect("stop"))
    });
    assert!(a && b, "both mounts stop cleanly");
    assert!(!node.data.join("alknet.sock").exists());
}
