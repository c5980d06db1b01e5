//! Sync between real nodes on loopback: peers, grants, the `alknet/sync`
//! protocol and blobs over iroh-blobs, as a user sets them up.

use std::time::Duration;

use crate::util::{Node, Server, wait_until};

const SYNC_WAIT: Duration = Duration::from_secs(60);

/// Makes `a` and `b` peers of each other with `level` on `bucket` both
/// ways; `a` dials.
fn pair_up(a: &Node, sa: &Server, b: &Node, sb: &Server, bucket: &str, level: &str) {
    a.ok(&["peer", "add", "b", &sb.quic]);
    b.ok(&["peer", "add", "a", &sa.quic]);
    a.ok(&["grant", "--peer", "b", bucket, level]);
    b.ok(&["grant", "--peer", "a", bucket, level]);
    a.ok(&["sync", "add", bucket, "--peer", "b"]);
}

fn listing(node: &Node, addr: &str) -> String {
    node.ok(&["ls", "-R", addr])
}

#[test]
fn two_nodes_converge_both_ways_with_the_bytes() {
    let (a, b) = (Node::new(), Node::new());
    let (sa, sb) = (Server::start(&a), Server::start(&b));
    a.ok(&["bucket", "create", "docs"]);
    b.ok(&["bucket", "create", "docs"]);
    // 1,000 files in one commit on a, before sync is even set up.
    let tree = a.work.join("tree");
    for d in 0..10 {
        std::fs::create_dir_all(tree.join(format!("d{d}"))).expect("mkdir");
        for f in 0..100 {
            std::fs::write(tree.join(format!("d{d}/f{f}.txt")), format!("file {d}/{f}\n")).expect("write");
        }
    }
    a.ok(&["put", "-r", tree.to_str().expect("utf-8"), "docs:/tree"]);
    b.ok_stdin(&["put", "-", "docs:/from-b.txt"], b"written on b\n");
    pair_up(&a, &sa, &b, &sb, "docs", "write");
    wait_until("b shows a's 1,000 files and a shows b's", SYNC_WAIT, || {
        listing(&b, "docs").lines().filter(|l| l.ends_with(".txt")).count() == 1001
            && listing(&a, "docs").contains("from-b.txt")
    });
    assert_eq!(listing(&a, "docs"), listing(&b, "docs"));
    // A read on b while the bytes may still be on their way waits for them.
    assert_eq!(b.ok(&["cat", "docs:/tree/d9/f99.txt"]), "file 9/99\n");
    // The bytes came along, verified: every file reads back on b.
    wait_until("b holds every blob", SYNC_WAIT, || {
        let status = b.json(&["sync", "status"]);
        status[0]["peer"] == "a" && status[0]["connected"] == true && status[0]["blobs_missing"] == 0
    });
    assert_eq!(b.ok(&["cat", "docs:/tree/d7/f42.txt"]), "file 7/42\n");
    assert_eq!(a.ok(&["cat", "docs:/from-b.txt"]), "written on b\n");
    // A change after the initial sync shows on the other side.
    a.ok(&["mv", "docs:/tree/d0", "docs:/tree/renamed"]);
    a.ok(&["rm", "docs:/tree/d1/f1.txt"]);
    wait_until("b sees the move and the delete", SYNC_WAIT, || {
        let l = listing(&b, "docs");
        l.contains("renamed") && !l.contains("d0") && !l.contains("d1/f1.txt")
    });
    let status = a.json(&["sync", "status"]);
    assert_eq!(status[0]["peer"], "b");
    assert_eq!(status[0]["bucket"], "docs");
    assert_eq!(status[0]["connected"], true, "{status}");
    assert_eq!(status[0]["versions_behind"], 0, "{status}");
    // The same, and the peers, over the HTTP API with an admin token.
    crate::http::add_admin(&a);
    let token = crate::http::token(&a, "admin", &[]);
    let remote = |args: &[&str]| {
        let out = a
            .cmd(args)
            .env("ALKNET_NODE", &sa.http)
            .env("ALKNET_TOKEN", &token)
            .output()
            .expect("run alknet");
        assert!(out.status.success(), "{}", crate::util::combined(&out));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).expect("JSON")
    };
    let over_http = remote(&["--json", "sync", "status"]);
    for field in ["peer", "bucket", "connected", "versions_behind", "blobs_missing"] {
        assert_eq!(over_http[0][field], status[0][field], "{field}: {over_http}");
    }
    assert_eq!(remote(&["--json", "peer", "list"]), a.json(&["peer", "list"]));
}

/// Edits on both sides while the link is down become one tree with both
/// versions once it is back: the newer at the name, the other as a
/// conflict copy, on both nodes.
#[test]
fn edits_made_apart_come_together_with_a_conflict_copy() {
    let (a, b) = (Node::new(), Node::new());
    let (sa, sb) = (Server::start(&a), Server::start(&b));
    for n in [&a, &b] {
        n.ok(&["bucket", "create", "notes"]);
    }
    a.ok_stdin(&["put", "-", "notes:/plan.txt"], b"v1\n");
    pair_up(&a, &sa, &b, &sb, "notes", "write");
    wait_until("b has plan.txt", SYNC_WAIT, || {
        b.cmd(&["cat", "notes:/plan.txt"])
            .output()
            .is_ok_and(|o| o.stdout == b"v1\n")
    });
    a.ok(&["sync", "remove", "notes", "--peer", "b"]);
    wait_until("the session is down", SYNC_WAIT, || {
        a.json(&["sync", "status"])
            .as_array()
            .is_some_and(|s| s.iter().all(|l| l["connected"] == false))
    });
    a.ok_stdin(&["put", "-", "notes:/plan.txt"], b"edited on a\n");
    b.ok_stdin(&["put", "-", "notes:/plan.txt"], b"edited on b\n");
    a.ok(&["sync", "add", "notes", "--peer", "b"]);
    wait_until("both show the conflict", SYNC_WAIT, || {
        let (la, lb) = (listing(&a, "notes"), listing(&b, "notes"));
        la == lb && la.contains("plan.sync-conflict-")
    });
    let l = listing(&a, "notes");
    let copy = l
        .lines()
        .find(|n| n.contains("plan.sync-conflict-"))
        .expect("a conflict copy")
        .trim_start_matches('/')
        .to_owned();
    let winner = a.ok(&["cat", "notes:/plan.txt"]);
    let loser = a.ok(&["cat", &format!("notes:/{copy}")]);
    let mut both = vec![winner.clone(), loser];
    both.sort();
    assert_eq!(both, ["edited on a\n", "edited on b\n"], "both versions are kept");
    assert_eq!(
        b.ok(&["cat", "notes:/plan.txt"]),
        winner,
        "both nodes pick the same winner"
    );
}

/// Deny by default: a node that is not a peer is refused, and a peer with
/// read access is sent changes but cannot make any.
#[test]
fn grants_decide_what_a_peer_may_do() {
    let (a, b, c) = (Node::new(), Node::new(), Node::new());
    let (sa, sb, sc) = (Server::start(&a), Server::start(&b), Server::start(&c));
    for n in [&a, &b, &c] {
        n.ok(&["bucket", "create", "docs"]);
    }
    a.ok_stdin(&["put", "-", "docs:/by-a.txt"], b"a\n");
    // c knows a, a does not know c.
    c.ok(&["peer", "add", "a", &sa.quic]);
    c.ok(&["grant", "--peer", "a", "docs", "write"]);
    c.ok(&["sync", "add", "docs", "--peer", "a"]);
    wait_until("c's link reports the refusal", SYNC_WAIT, || {
        c.json(&["sync", "status"])[0]["last_error"]
            .as_str()
            .is_some_and(|e| !e.is_empty())
    });
    assert!(!listing(&c, "docs").contains("by-a.txt"), "nothing reached c");
    // b may only read a's bucket: a sends, b's changes stay on b.
    a.ok(&["peer", "add", "b", &sb.quic]);
    b.ok(&["peer", "add", "a", &sa.quic]);
    a.ok(&["grant", "--peer", "b", "docs", "read"]);
    b.ok(&["grant", "--peer", "a", "docs", "write"]);
    b.ok_stdin(&["put", "-", "docs:/by-b.txt"], b"b\n");
    b.ok(&["sync", "add", "docs", "--peer", "a"]);
    wait_until("b has a's file", SYNC_WAIT, || listing(&b, "docs").contains("by-a.txt"));
    assert!(
        !listing(&a, "docs").contains("by-b.txt"),
        "a read-only peer's change was applied"
    );
    // Git repositories do not sync yet: said plainly.
    a.ok(&["repo", "create", "code"]);
    let refused = a.fails(&["sync", "add", "code", "--peer", "b"]);
    assert!(refused.contains("repositories do not sync yet"), "{refused}");
    let peers = a.json(&["peer", "list"]);
    assert_eq!(peers[0]["name"], "b");
    assert_eq!(peers[0]["grants"][0][1], "read");
    drop(sc);
}

// ---- three nodes in network namespaces --------------------------------------

/// Network namespaces made for one test: one per node, each joined to a
/// bridge in a namespace of its own by a veth pair; deleted at drop. A
/// partition is a bridge port taken down (`tc netem` is not available
/// here, and a proxy on loopback cannot partition iroh: it learns the
/// direct path).
struct Netns {
    prefix: String,
    nodes: usize,
    /// The third octet of this test's 10.231.X.0/24.
    subnet: u8,
}

impl Netns {
    fn new(nodes: usize) -> Netns {
        let id = std::process::id() % 10_000;
        let net = Netns {
            prefix: format!("alk{id}"),
            nodes,
            subnet: (id % 200) as u8 + 20,
        };
        let br = net.bridge();
        net.ip(&["netns", "add", &br]);
        net.ip(&["-n", &br, "link", "add", "br0", "type", "bridge"]);
        net.ip(&["-n", &br, "link", "set", "br0", "up"]);
        for i in 1..=nodes {
            let ns = net.ns(i);
            let (inside, port) = (format!("{}v{i}", net.prefix), format!("{}b{i}", net.prefix));
            net.ip(&["netns", "add", &ns]);
            net.ip(&[
                "link", "add", &inside, "netns", &ns, "type", "veth", "peer", "name", &port, "netns", &br,
            ]);
            net.ip(&["-n", &ns, "addr", "add", &format!("{}/24", net.addr(i)), "dev", &inside]);
            net.ip(&["-n", &ns, "link", "set", &inside, "up"]);
            net.ip(&["-n", &ns, "link", "set", "lo", "up"]);
            net.ip(&["-n", &br, "link", "set", &port, "master", "br0"]);
            net.ip(&["-n", &br, "link", "set", &port, "up"]);
        }
        net
    }

    fn bridge(&self) -> String {
        format!("{}br", self.prefix)
    }

    fn ns(&self, i: usize) -> String {
        format!("{}n{i}", self.prefix)
    }

    fn addr(&self, i: usize) -> String {
        format!("10.231.{}.{i}", self.subnet)
    }

    fn ip(&self, args: &[&str]) {
        let out = std::process::Command::new("ip").args(args).output().expect("run ip");
        assert!(
            out.status.success(),
            "ip {args:?} failed (this test needs root for network namespaces): {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Cuts node `i` off the others, or joins it back.
    fn link(&self, i: usize, up: bool) {
        let port = format!("{}b{i}", self.prefix);
        self.ip(&[
            "-n",
            &self.bridge(),
            "link",
            "set",
            &port,
            if up { "up" } else { "down" },
        ]);
    }

    /// `alknet serve` inside node `i`'s namespace, QUIC on `port`.
    fn serve(&self, node: &Node, i: usize, port: u16) -> Server {
        let ns = self.ns(i);
        Server::start_under_at(node, &["ip", "netns", "exec", &ns], &format!("{}:{port}", self.addr(i)))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for ns in (1..=self.nodes).map(|i| self.ns(i)).chain([self.bridge()]) {
            std::process::Command::new("ip")
                .args(["netns", "del", &ns])
                .status()
                .ok();
        }
    }
}

/// What a node shows of a bucket, entry by entry: path, entry id, kind,
/// hash, size, mode, mtime, target (not the local version or ctime).
fn shown(node: &Node, bucket: &str) -> Vec<String> {
    let listed = node.json(&["ls", "-R", bucket]);
    let mut rows: Vec<String> = listed
        .as_array()
        .expect("ls --json prints a list")
        .iter()
        .map(|v| {
            let e = &v["entry"];
            format!(
                "/{} {} {} {} {} {} {} {}",
                v["path"].as_str().expect("a path"),
                e["id"],
                e["kind"],
                e["hash"],
                e["size"],
                e["mode"],
                e["mtime_ns"],
                e["target"]
            )
        })
        .collect();
    rows.sort();
    rows
}

fn quic_port(server: &Server) -> u16 {
    server
        .quic
        .rsplit(':')
        .next()
        .expect("a port")
        .parse()
        .expect("a number")
}

fn settled(nodes: &[&Node], bucket: &str) -> bool {
    let first = shown(nodes[0], bucket);
    nodes[1..].iter().all(|n| shown(n, bucket) == first)
        && nodes.iter().all(|n| {
            n.json(&["sync", "status"])
                .as_array()
                .is_some_and(|s| s.iter().all(|l| l["bucket"] != bucket || l["blobs_missing"] == 0))
        })
}

#[test]
fn three_nodes_in_namespaces_converge_through_a_partition_and_a_crash() {
    let net = Netns::new(3);
    let nodes: Vec<Node> = (0..3).map(|_| Node::new()).collect();
    let mut servers: Vec<Server> = (0..3).map(|i| net.serve(&nodes[i], i + 1, 0)).collect();
    let ports: Vec<u16> = servers.iter().map(quic_port).collect();
    let names = ["n1", "n2", "n3"];
    for (i, node) in nodes.iter().enumerate() {
        node.ok(&["bucket", "create", "docs"]);
        for (j, other) in servers.iter().enumerate() {
            if i != j {
                node.ok(&["peer", "add", names[j], &other.quic]);
                node.ok(&["grant", "--peer", names[j], "docs", "write"]);
            }
        }
    }
    nodes[0].ok(&["sync", "add", "docs", "--peer", "n2"]);
    nodes[0].ok(&["sync", "add", "docs", "--peer", "n3"]);
    nodes[1].ok(&["sync", "add", "docs", "--peer", "n3"]);
    let all: Vec<&Node> = nodes.iter().collect();

    // 1,000 files written on one node reach the other two, bytes and all.
    let tree = nodes[0].work.join("tree");
    for d in 0..10 {
        std::fs::create_dir_all(tree.join(format!("d{d}"))).expect("mkdir");
        for f in 0..100 {
            std::fs::write(tree.join(format!("d{d}/f{f}.txt")), format!("{d}/{f}\n")).expect("write");
        }
    }
    nodes[0].ok(&["put", "-r", tree.to_str().expect("utf-8"), "docs:/tree"]);
    for (path, body) in [("edit", "v1"), ("del", "v1"), ("ren", "v1")] {
        nodes[0].ok_stdin(&["put", "-", &format!("docs:/p/{path}.txt")], body.as_bytes());
    }
    nodes[0].ok(&["mkdir", "-p", "docs:/p/A"]);
    nodes[0].ok(&["mkdir", "-p", "docs:/p/B"]);
    wait_until("three nodes show the 1,000 files", Duration::from_secs(90), || {
        settled(&all, "docs") && shown(&nodes[2], "docs").len() == 1000 + 11 + 3 + 2 + 1
    });
    assert_eq!(nodes[2].ok(&["cat", "docs:/tree/d3/f33.txt"]), "3/33\n");

    // n3 apart: both sides change the same things.
    net.link(3, false);
    let (n1, n3) = (&nodes[0], &nodes[2]);
    n1.ok_stdin(&["put", "-", "docs:/p/edit.txt"], b"edit on n1\n");
    n3.ok_stdin(&["put", "-", "docs:/p/edit.txt"], b"edit on n3\n");
    n1.ok(&["rm", "docs:/p/del.txt"]);
    n3.ok_stdin(&["put", "-", "docs:/p/del.txt"], b"kept by n3\n");
    n1.ok(&["mv", "docs:/p/ren.txt", "docs:/p/ren-n1.txt"]);
    n3.ok(&["mv", "docs:/p/ren.txt", "docs:/p/ren-n3.txt"]);
    n1.ok(&["mv", "docs:/p/A", "docs:/p/B/A"]);
    n3.ok(&["mv", "docs:/p/B", "docs:/p/A/B"]);
    n1.ok_stdin(&["put", "-", "docs:/p/new.txt"], b"new on n1\n");
    n3.ok_stdin(&["put", "-", "docs:/p/new.txt"], b"new on n3\n");
    n1.ok(&["mkdir", "docs:/p/photos"]);
    n3.ok(&["mkdir", "docs:/p/photos"]);
    n1.ok_stdin(&["put", "-", "docs:/p/photos/1.jpg"], b"one");
    n3.ok_stdin(&["put", "-", "docs:/p/photos/2.jpg"], b"two");
    // Long enough apart that the sessions time out: healing takes a redial.
    wait_until("n1 sees n3 gone", Duration::from_secs(60), || {
        n1.json(&["sync", "status"])
            .as_array()
            .is_some_and(|s| s.iter().any(|l| l["peer"] == "n3" && l["connected"] == false))
    });
    assert_ne!(shown(n1, "docs"), shown(n3, "docs"), "the two sides differ while apart");
    net.link(3, true);
    wait_until("the partition heals into one tree", Duration::from_secs(120), || {
        settled(&all, "docs")
    });

    let view = shown(n1, "docs");
    let paths: Vec<String> = view
        .iter()
        .map(|r| r.split(' ').next().expect("path").to_owned())
        .collect();
    let has = |p: &str| paths.iter().any(|x| x == p);
    let like = |prefix: &str| paths.iter().filter(|x| x.starts_with(prefix)).count();
    let mut edits = vec![n1.ok(&["cat", "docs:/p/edit.txt"])];
    let copy = paths
        .iter()
        .find(|p| p.starts_with("/p/edit.sync-conflict-"))
        .expect("a conflict copy");
    edits.push(n1.ok(&["cat", &format!("docs:{copy}")]));
    edits.sort();
    assert_eq!(edits, ["edit on n1\n", "edit on n3\n"], "edit/edit keeps both");
    assert_eq!(
        n1.ok(&["cat", "docs:/p/del.txt"]),
        "kept by n3\n",
        "an edit beats a delete"
    );
    assert_eq!(
        usize::from(has("/p/ren-n1.txt")) + usize::from(has("/p/ren-n3.txt")),
        1,
        "one rename wins: {paths:?}"
    );
    assert!(
        (has("/p/A") && has("/p/A/B")) ^ (has("/p/B") && has("/p/B/A")),
        "one move of the cycle is skipped: {paths:?}"
    );
    assert_eq!(like("/p/new"), 2, "both new files are kept: {paths:?}");
    assert!(
        has("/p/photos/1.jpg") && has("/p/photos/2.jpg"),
        "one photos directory: {paths:?}"
    );

    // n2 killed in the middle of fetching a large file, and back: the fetch
    // resumes, it catches up with what it missed while down, and every
    // node's store checks clean.
    let big = crate::util::pattern(192 << 20, 7);
    let big_hash = blake3::hash(&big).to_hex().to_string();
    nodes[0].ok_stdin(&["put", "-", "docs:/big.bin"], &big);
    wait_until("n2 has the large file's entry", Duration::from_secs(60), || {
        shown(&nodes[1], "docs").iter().any(|r| r.starts_with("/big.bin "))
    });
    crate::util::sigkill(servers[1].pid());
    nodes[0].ok_stdin(&["put", "-", "docs:/after-crash.txt"], b"while n2 was down\n");
    servers[1] = net.serve(&nodes[1], 2, ports[1]);
    wait_until("n2 catches up after its restart", Duration::from_secs(120), || {
        settled(&all, "docs") && shown(&nodes[1], "docs").iter().any(|r| r.contains("after-crash"))
    });
    let stat = nodes[1].ok(&["stat", "docs:/big.bin"]);
    assert!(stat.contains(&format!("hash: {big_hash}")), "{stat}");
    assert_eq!(
        blake3::hash(&nodes[1].bytes(&["cat", "docs:/big.bin"]))
            .to_hex()
            .to_string(),
        big_hash,
        "the resumed fetch holds the right bytes"
    );
    for node in &nodes {
        node.ok(&["fsck"]);
    }
}
