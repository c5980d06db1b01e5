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
    let peers = a.json(&["peer", "list"]);
    assert_eq!(peers[0]["name"], "b");
    assert_eq!(peers[0]["grants"][0][1], "read");
    drop(sc);
}
