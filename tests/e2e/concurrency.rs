//! Several processes on one data directory at once.

use std::process::Stdio;

use crate::util::{Node, pattern};

#[test]
fn parallel_writers_all_succeed_without_lock_errors() {
    let node = Node::new();
    node.ok(&["bucket", "create", "b"]);
    let procs = 8;
    let per = 6;
    let mut children = Vec::new();
    for p in 0..procs {
        // Metadata-only commands and blob writers interleave.
        let data = pattern(50_000 + p * 1000, p as u8);
        let local = node.write_local(&format!("in{p}"), &data);
        let script = format!(
            "set -e; for i in $(seq 1 {per}); do \"$ALK\" put '{local}' b:/p{p}/f$i >/dev/null; \"$ALK\" mkdir b:/p{p}/d$i >/dev/null; done; \"$ALK\" branch create b br{p} >/dev/null",
            local = local.display()
        );
        let child = std::process::Command::new("sh")
            .arg("-c")
            .arg(script)
            .env("ALK", crate::util::bin())
            .env("ALKNET_DATA", &node.data)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn writer");
        children.push((p, data, child));
    }
    for (p, data, child) in children {
        let out = child.wait_with_output().expect("wait");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "writer {p} failed: {stderr}");
        assert!(!stderr.contains("locked"), "writer {p} saw a lock error: {stderr}");
        for i in 1..=per {
            assert_eq!(node.bytes(&["cat", &format!("b:/p{p}/f{i}")]), data);
        }
    }
    assert_eq!(
        node.json(&["branch", "list", "b"]).as_array().map(Vec::len),
        Some(procs + 1)
    );
    assert!(node.ok(&["fsck"]).contains("no problems"));
}
