//! The CLI's everyday flows, checked through its own output.

use crate::util::{Node, pattern};

#[test]
fn init_is_idempotent_and_keeps_keys() {
    let node = Node::new();
    let key = node.data.join("keys/node.key");
    let host = node.data.join("keys/ssh_host_ed25519_key");
    let (k1, h1) = (
        std::fs::read(&key).expect("node key"),
        std::fs::read(&host).expect("host key"),
    );
    let again = node.ok(&["init"]);
    assert!(again.starts_with("already initialized"), "{again}");
    assert_eq!(
        std::fs::read(&key).expect("node key"),
        k1,
        "init must not replace the node key"
    );
    assert_eq!(
        std::fs::read(&host).expect("host key"),
        h1,
        "init must not replace the host key"
    );
    let out = std::process::Command::new("ssh-keygen")
        .arg("-y")
        .arg("-f")
        .arg(&host)
        .output();
    if let Ok(out) = out {
        assert!(
            out.status.success(),
            "ssh-keygen reads the host key: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let public = std::fs::read_to_string(node.data.join("keys/ssh_host_ed25519_key.pub")).expect("pub key");
        assert!(
            public.starts_with(String::from_utf8_lossy(&out.stdout).trim()),
            "the .pub file matches the key"
        );
    }
}

#[test]
fn files_round_trip_byte_for_byte() {
    let node = Node::new();
    node.ok(&["bucket", "create", "docs"]);
    let sizes = [
        0usize,
        1,
        16 * 1024 - 1,
        16 * 1024,
        16 * 1024 + 1,
        1 << 20,
        3 * (1 << 20) + 7,
    ];
    for (i, size) in sizes.into_iter().enumerate() {
        let data = pattern(size, i as u8);
        let local = node.write_local(&format!("in{i}"), &data);
        node.ok(&["put", local.to_str().expect("utf-8"), &format!("docs:/sizes/f{i}")]);
        assert_eq!(
            node.bytes(&["cat", &format!("docs:/sizes/f{i}")]),
            data,
            "size {size} via cat"
        );
        node.ok(&["get", &format!("docs:/sizes/f{i}"), "-o", &format!("out{i}")]);
        assert_eq!(
            std::fs::read(node.work.join(format!("out{i}"))).expect("got file"),
            data,
            "size {size} via get"
        );
        let stat = node.json(&["stat", &format!("docs:/sizes/f{i}")]);
        assert_eq!(stat["size"], size);
        assert_eq!(stat["hash"], blake3::hash(&data).to_hex().as_str());
    }
    std::fs::create_dir(node.work.join("into")).expect("dir");
    node.ok(&["get", "docs:/sizes/f1", "-o", "into"]);
    assert_eq!(
        std::fs::read(node.work.join("into/f1")).expect("got into a directory"),
        pattern(1, 1)
    );
    let streamed = pattern(2 << 20, 42);
    node.ok_stdin(&["put", "-", "docs:/stdin.bin"], &streamed);
    assert_eq!(node.bytes(&["get", "docs:/stdin.bin", "-o", "-"]), streamed);
    assert!(node.ok(&["fsck"]).contains("no problems"));
}

#[test]
fn branches_fork_and_stay_apart() {
    let node = Node::new();
    node.ok(&["bucket", "create", "b"]);
    node.ok_stdin(&["put", "-", "b:/f"], b"one");
    node.ok(&["branch", "create", "b", "dev"]);
    node.ok_stdin(&["put", "-", "b:/f"], b"two");
    node.ok_stdin(&["put", "-", "b@dev:/g"], b"dev only");
    assert_eq!(node.bytes(&["cat", "b@dev:/f"]), b"one");
    assert_eq!(node.bytes(&["cat", "b:/f"]), b"two");
    node.fails(&["cat", "b:/g"]);
    let diff = node.ok(&["diff", "b", "b@dev"]);
    assert_eq!(diff, "M\t/f\nA\t/g\n", "changes are listed by path");
    let branches = node.json(&["branch", "list", "b"]);
    assert_eq!(branches.as_array().map(Vec::len), Some(2));
    node.ok(&["branch", "create", "b", "old", "--from", "main@1"]);
    node.fails(&["cat", "b@old:/f"]);
    node.ok(&["branch", "delete", "b", "old"]);
    node.fails(&["branch", "delete", "b", "main"]);
}

#[test]
fn versions_snapshots_log_and_past_reads() {
    let node = Node::new();
    node.ok(&["bucket", "create", "b"]);
    node.ok_stdin(&["put", "-", "b:/notes.txt"], b"draft");
    let snap = node.json(&["snapshot", "b", "first-draft"]);
    let v = snap["version"].as_u64().expect("version");
    node.ok_stdin(&["put", "-", "b:/notes.txt"], b"final");
    node.ok(&["rm", "b:/notes.txt"]);
    assert_eq!(node.bytes(&["cat", "b@main@first-draft:/notes.txt"]), b"draft");
    assert_eq!(node.bytes(&["cat", &format!("b@main@{v}:/notes.txt")]), b"draft");
    assert_eq!(
        node.bytes(&["get", "b:/notes.txt", "--at", "first-draft", "-o", "-"]),
        b"draft"
    );
    node.fails(&["put", "-", "b@main@first-draft:/x"]);
    let log = node.json(&["log", "b:/notes.txt"]);
    let ops: Vec<&str> = log
        .as_array()
        .expect("array")
        .iter()
        .map(|c| c["op"].as_str().expect("op"))
        .collect();
    assert_eq!(ops, ["remove", "write", "write"]);
    assert!(node.ok(&["snapshots", "b"]).contains("first-draft"));
}

#[test]
fn tree_operations() {
    let node = Node::new();
    node.ok(&["bucket", "create", "b"]);
    node.ok(&["mkdir", "-p", "b:/a/b/c"]);
    node.ok_stdin(&["put", "-", "b:/a/b/c/f"], b"x");
    let id = node.json(&["stat", "b:/a/b/c/f"])["id"].clone();
    node.ok(&["mv", "b:/a", "b:/z"]);
    assert_eq!(
        node.json(&["stat", "b:/z/b/c/f"])["id"],
        id,
        "a move keeps the entry id"
    );
    node.ok(&["cp", "b:/z/b/c/f", "b:/copy"]);
    node.ok(&["ln", "-s", "z/b/c/f", "b:/link"]);
    let ls = node.ok(&["ls", "-l", "b"]);
    assert!(ls.contains("lrwxrwxrwx") && ls.contains("link -> z/b/c/f"), "{ls}");
    assert_eq!(node.ok(&["ls", "-R", "b:/z"]), "b\nb/c\nb/c/f\n");
    // Links are followed as on a disk: the file's, and directories' on the way.
    assert_eq!(node.ok(&["cat", "b:/link"]), "x");
    node.ok(&["ln", "-s", "/z/b", "b:/dirlink"]);
    assert_eq!(node.ok(&["cat", "b:/dirlink/c/f"]), "x");
    node.ok_stdin(&["put", "-", "b:/dirlink/c/g"], b"y");
    assert_eq!(node.ok(&["cat", "b:/z/b/c/g"]), "y");
    node.ok(&["rm", "b:/dirlink"]);
    node.fails(&["rm", "b:/z"]);
    node.ok(&["rm", "-r", "b:/z"]);
    assert_eq!(node.ok(&["ls", "b"]), "copy\nlink\n");
    let stats = node.json(&["stats"]);
    assert_eq!(stats["buckets"], 1);
}

#[test]
fn watch_prints_json_lines_and_resumes() {
    let node = Node::new();
    node.ok(&["bucket", "create", "b"]);
    let v = node.json(&["mkdir", "b:/one"])["version"].as_u64().expect("version");
    node.ok(&["mkdir", "b:/two"]);
    let mut child = node
        .cmd(&["watch", "b", "--from", &v.to_string()])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn watch");
    node.ok(&["mkdir", "b:/three"]);
    use std::io::BufRead;
    let mut lines = std::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut seen = Vec::new();
    for _ in 0..2 {
        let line = lines.next().expect("a line").expect("read");
        let event: serde_json::Value = serde_json::from_str(&line).expect("a JSON line");
        seen.push(event["paths"][0].as_str().expect("path").to_owned());
    }
    child.kill().ok();
    child.wait().ok();
    assert_eq!(
        seen,
        ["/two", "/three"],
        "resumes after --from, then follows live commits"
    );
}

#[test]
fn gc_reclaims_a_deleted_bucket_on_disk() {
    let node = Node::new();
    node.ok(&["bucket", "create", "keep"]);
    node.ok(&["bucket", "create", "drop"]);
    let (kept, gone) = (pattern(200_000, 1), pattern(200_000, 2));
    node.ok_stdin(&["put", "-", "keep:/k"], &kept);
    node.ok_stdin(&["put", "-", "drop:/g"], &gone);
    assert!(node.blob_file(&gone).exists());
    node.ok(&["bucket", "delete", "drop"]);
    let report = node.json(&["gc"]);
    assert_eq!(report["live"], 1);
    assert!(
        !node.blob_file(&gone).exists(),
        "the deleted bucket's bytes are gone from disk"
    );
    assert!(node.blob_file(&kept).exists());
    assert_eq!(node.bytes(&["cat", "keep:/k"]), kept);
}

#[test]
fn init_makes_the_operator_admin_from_their_ssh_key() {
    let dir = tempfile::tempdir().expect("temp dir");
    let home = dir.path();
    std::fs::create_dir_all(home.join(".ssh")).expect(".ssh");
    let st = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(home.join(".ssh/id_ed25519"))
        .status()
        .expect("ssh-keygen");
    assert!(st.success());
    let data = home.join("data");
    let out = std::process::Command::new(crate::util::bin())
        .arg("--data")
        .arg(&data)
        .arg("init")
        .env("HOME", home)
        .output()
        .expect("init");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("admin: admin"), "{text}");
    let users = std::process::Command::new(crate::util::bin())
        .arg("--data")
        .arg(&data)
        .args(["--json", "user", "list"])
        .output()
        .expect("user list");
    let users: serde_json::Value = serde_json::from_slice(&users.stdout).expect("json");
    assert_eq!(users[0]["name"], "admin");
    assert_eq!(users[0]["admin"], true);
    let settings = std::fs::read_to_string(data.join("alknet.toml")).expect("init writes alknet.toml");
    assert!(settings.contains("listen = \"127.0.0.1:2222\""), "{settings}");
}

#[test]
fn prune_then_gc_reclaims_old_versions() {
    let node = Node::new();
    node.ok(&["bucket", "create", "b"]);
    let (old, new) = (pattern(100_000, 1), pattern(100_000, 2));
    node.ok_stdin(&["put", "-", "b:/f"], &old);
    let v = node.json(&["snapshot", "b"])["version"].as_u64().expect("version");
    node.ok_stdin(&["put", "-", "b:/f"], &new);
    node.ok(&["snapshot", "b", "now"]);
    assert_eq!(
        node.bytes(&["cat", &format!("b@main@{v}:/f")]),
        old,
        "history is kept until pruned"
    );
    node.ok(&["gc"]);
    assert!(node.blob_file(&old).exists(), "gc alone keeps history");
    let report = node.json(&["prune", "b", "--before", "now"]);
    assert!(report["rows"].as_u64().expect("rows") >= 1);
    node.fails(&["cat", &format!("b@main@{v}:/f")]);
    node.ok(&["gc"]);
    assert!(
        !node.blob_file(&old).exists(),
        "after prune, gc reclaims the old content"
    );
    assert_eq!(node.bytes(&["cat", "b:/f"]), new);
    assert!(node.ok(&["fsck"]).contains("no problems"));
}

/// `put -r` and `get -r` copy a tree as `cp -a` does: files with their modes
/// and mtimes, symlinks, empty directories; a round trip is the same tree.
#[test]
fn put_and_get_recursive_are_faithful() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let node = Node::new();
    node.ok(&["bucket", "create", "b"]);
    let src = node.work.join("src");
    std::fs::create_dir_all(src.join("sub/empty")).expect("mkdir");
    std::fs::write(src.join("run.sh"), b"#!/bin/sh\necho hi\n").expect("write");
    std::fs::set_permissions(src.join("run.sh"), std::fs::Permissions::from_mode(0o750)).expect("chmod");
    std::fs::write(src.join("sub/data.bin"), crate::util::pattern(50_000, 4)).expect("write");
    std::os::unix::fs::symlink("../run.sh", src.join("sub/link")).expect("symlink");
    std::fs::set_permissions(src.join("sub"), std::fs::Permissions::from_mode(0o700)).expect("chmod");
    let old = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_600_000_000);
    for p in ["run.sh", "sub/data.bin", "sub/empty", "sub"] {
        std::fs::File::open(src.join(p))
            .and_then(|f| f.set_modified(old))
            .expect("set mtime");
    }
    node.ok(&["put", "-r", &src.display().to_string(), "b:/"]);
    assert!(node.ok(&["stat", "b:/src/sub/link"]).contains("target: ../run.sh"));
    let out = node.work.join("out");
    node.ok(&["get", "-r", "b:/src", "-o", &out.display().to_string()]);
    for p in ["run.sh", "sub", "sub/data.bin", "sub/empty"] {
        let (a, b) = (
            std::fs::symlink_metadata(src.join(p)).expect("src"),
            std::fs::symlink_metadata(out.join(p)).expect("copy"),
        );
        assert_eq!(a.mode() & 0o7777, b.mode() & 0o7777, "{p}: mode");
        assert_eq!(a.mtime(), b.mtime(), "{p}: mtime");
        assert_eq!(a.is_dir(), b.is_dir(), "{p}: kind");
    }
    assert_eq!(
        std::fs::read_link(out.join("sub/link")).expect("link"),
        std::path::Path::new("../run.sh")
    );
    assert_eq!(
        std::fs::read(out.join("sub/data.bin")).expect("read"),
        crate::util::pattern(50_000, 4)
    );
    assert!(
        std::fs::read_dir(out.join("sub/empty"))
            .expect("empty dir")
            .next()
            .is_none()
    );
}
