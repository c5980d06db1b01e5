//! Bad input gets one clear error line and disturbs nothing else.

use crate::util::{Node, pattern};

#[test]
fn bad_names_paths_and_addresses() {
    let node = Node::new();
    node.ok(&["bucket", "create", "b"]);
    node.ok_stdin(&["put", "-", "b:/keep"], b"safe");
    let cases: &[(&[&str], &str)] = &[
        (&["bucket", "create", "Bad Name"], "invalid bucket name"),
        (&["bucket", "create", "../etc"], "invalid bucket name"),
        (&["branch", "create", "b", "a..b"], "invalid branch name"),
        (&["branch", "create", "b", "123"], "version number"),
        (&["cat", "b:/../../etc/passwd"], "leaves the bucket root"),
        (&["put", "-", "b:/a/../../x"], "leaves the bucket root"),
        (&["cat", "b:relative"], "must start with '/'"),
        (&["cat", "b@x@y@z:/keep"], "at most two '@'"),
        (&["cat", "nope:/keep"], "bucket \"nope\" does not exist"),
        (&["cat", "b@nope:/keep"], "branch \"nope\" does not exist"),
        (&["cat", "b:/missing"], "no such file or directory"),
        (&["cat", "b@main@999999:/keep"], "version 999999 is not known"),
        (
            &["cat", "b@main@no-such-snap:/keep"],
            "version no-such-snap is not known",
        ),
        (&["put", "/definitely/not/here", "b:/x"], "cannot read"),
        (&["bucket", "create", "b"], "already exists"),
        (&["mkdir", "b:/keep/sub"], "not a directory"),
        (&["mv", "b:/keep", "other:/keep"], "different branches or buckets"),
        (&["put", "--mode", "999", "-", "b:/x"], "not an octal mode"),
    ];
    for (args, want) in cases {
        let err = if args.first() == Some(&"put") && args.contains(&"--mode") {
            // clap's own usage errors are several lines; check them apart.
            let out = node.cmd(args).output().expect("run");
            assert_eq!(out.status.code(), Some(2), "{args:?}: usage errors exit 2");
            String::from_utf8_lossy(&out.stderr).into_owned()
        } else {
            node.fails(args)
        };
        assert!(err.contains(want), "alknet {args:?}: expected {want:?} in {err:?}");
    }
    assert_eq!(node.bytes(&["cat", "b:/keep"]), b"safe", "nothing else was disturbed");
    assert_eq!(node.ok(&["ls", "b"]), "keep\n");
}

#[test]
fn missing_data_dir_is_a_clear_error() {
    let node = Node::new();
    let out = std::process::Command::new(crate::util::bin())
        .args(["--data", "/nonexistent/alknet-data", "bucket", "list"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no data directory") && err.contains("alknet init"),
        "{err}"
    );
    drop(node);
}

#[test]
fn corrupt_blob_is_reported_and_nothing_else_breaks() {
    let node = Node::new();
    node.ok(&["bucket", "create", "b"]);
    let (bad, good) = (pattern(100_000, 1), pattern(100_000, 2));
    node.ok_stdin(&["put", "-", "b:/bad"], &bad);
    node.ok_stdin(&["put", "-", "b:/good"], &good);
    let file = node.blob_file(&bad);
    let mut bytes = std::fs::read(&file).expect("blob file on disk");
    bytes[1234] ^= 0x55;
    std::fs::write(&file, bytes).expect("corrupt it");

    let out = node.cmd(&["fsck"]).output().expect("run fsck");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "fsck exits 1 on problems: {stdout}");
    assert!(
        stdout.contains("corrupt") && stdout.contains(&blake3::hash(&bad).to_hex().to_string()),
        "{stdout}"
    );
    assert!(
        stdout.contains("\"bad\"") && stdout.contains("b@main"),
        "the report names the file: {stdout}"
    );
    assert!(!stdout.contains(&blake3::hash(&good).to_hex().to_string()));
    assert_eq!(node.bytes(&["cat", "b:/good"]), good, "other files still read");
    node.ok_stdin(&["put", "-", "b:/new"], b"writes still work");
}

#[test]
fn proxy_with_a_bad_node_address_says_so() {
    let node = Node::new();
    for bad in ["127.0.0.1:2223", "not-a-key@127.0.0.1:2223", "00@nowhere"] {
        let err = node.fails(&["proxy", bad]);
        assert!(err.contains("expected NODE_ID@HOST:PORT"), "{bad}: {err}");
    }
}

/// Under `--json`, an error is JSON too: `{"error": {"kind", "message"}}`
/// on stdout, and a non-zero exit.
#[test]
fn errors_are_json_under_json() {
    let node = Node::new();
    node.ok(&["bucket", "create", "b"]);
    for (args, kind) in [
        (&["--json", "cat", "b:/missing"][..], "not_found"),
        (&["--json", "bucket", "create", "b"], "exists"),
        (&["--json", "bucket", "create", "Bad Name"], "invalid"),
        (&["--json", "put", "-", "b@main@1:/x"], "error"),
    ] {
        let out = node.cmd(args).output().expect("run");
        assert!(!out.status.success(), "{args:?}");
        let v: serde_json::Value =
            serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {out:?}"));
        assert_eq!(v["error"]["kind"], kind, "{args:?}: {v}");
        assert!(v["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    }
}
