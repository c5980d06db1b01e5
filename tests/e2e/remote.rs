//! The CLI against a remote node (`alknet --node URL`, or `ALKNET_NODE` and
//! `ALKNET_TOKEN`): over HTTP, QUIC and TLS, with the caller's grants, and
//! with the output the same commands print on the data directory itself.

use std::process::{Command, Output};

use crate::http::{add_admin, token};
use crate::node::{Step, assert_same, run_with, step};
use crate::util::{Node, Server, combined};

/// `alknet ARGS` run in `client`'s work directory against `url` with `token`.
fn remote(client: &Node, url: &str, token: &str, args: &[&str]) -> Command {
    let mut cmd = client.cmd(args);
    cmd.env("ALKNET_NODE", url).env("ALKNET_TOKEN", token);
    cmd
}

/// Asserts `out` failed with exit status 1 and `text` in its stderr.
fn fails_saying(out: &Output, text: &str) {
    assert_eq!(out.status.code(), Some(1), "{}", combined(out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(text),
        "{text:?}: {}",
        combined(out)
    );
}

fn remote_out(client: &Node, url: &str, token: &str, args: &[&str]) -> Output {
    remote(client, url, token, args).output().expect("run alknet")
}

/// Every command that runs against a remote node prints the same bytes and
/// exits the same way as on a data directory: two nodes take the same
/// steps, one through its own CLI, one through another node's HTTP API with
/// an admin's token.
#[test]
fn every_command_answers_the_same_against_a_remote_node() {
    let direct = Node::new();
    let served = Node::new();
    for node in [&direct, &served] {
        add_admin(node);
        std::fs::write(node.work.join("local.txt"), b"local bytes\n").expect("local file");
        std::fs::create_dir_all(node.work.join("outdir")).expect("outdir");
        crate::util::add_user(node, "alice");
    }
    let server = Server::start(&served);
    let admin = token(&served, "admin", &[]);
    // The client is a third directory: nothing of the node's is at hand.
    let client = Node::new();
    std::fs::write(client.work.join("local.txt"), b"local bytes\n").expect("local file");
    std::fs::create_dir_all(client.work.join("outdir")).expect("outdir");
    let big = crate::util::pattern(3 << 20, 7);
    std::fs::write(client.work.join("big.bin"), &big).expect("big");
    std::fs::write(direct.work.join("big.bin"), &big).expect("big");

    let steps = vec![
        step(&["bucket", "create", "docs"]),
        step(&["bucket", "create", "docs"]),
        step(&["--json", "bucket", "list"]),
        step(&["put", "local.txt", "docs:/"]),
        step(&["--json", "put", "local.txt", "docs:/copy.txt"]),
        Step {
            args: vec!["put".into(), "-".into(), "docs:/stdin.txt".into()],
            stdin: b"from stdin\n",
        },
        step(&["put", "big.bin", "docs:/big.bin"]),
        step(&["put", "missing.txt", "docs:/"]),
        step(&["put", "local.txt", "docs:/no/such/dir/x"]),
        step(&["cat", "docs:/local.txt"]),
        step(&["cat", "docs:/nope"]),
        step(&["--json", "cat", "docs:/nope"]),
        step(&["get", "docs:/stdin.txt", "-o", "outdir"]),
        step(&["get", "docs:/local.txt", "-o", "-"]),
        step(&["get", "docs:/big.bin", "-o", "big.copy"]),
        step(&["mkdir", "docs:/d"]),
        step(&["mkdir", "-p", "docs:/d/e/f"]),
        step(&["mkdir", "docs:/d"]),
        step(&["ls", "docs:/"]),
        step(&["ls", "-l", "docs:/d"]),
        step(&["ls", "-R", "docs:/"]),
        step(&["--json", "ls", "-R", "docs:/d"]),
        step(&["ls", "docs:/local.txt"]),
        step(&["stat", "docs:/local.txt"]),
        step(&["--json", "stat", "docs:/d"]),
        step(&["mv", "docs:/copy.txt", "docs:/d"]),
        step(&["cp", "docs:/local.txt", "docs:/d/e"]),
        step(&["mv", "docs:/d/copy.txt", "other:/x"]),
        step(&["ln", "-s", "../local.txt", "docs:/d/link"]),
        step(&["cat", "docs:/d/link"]),
        step(&["rm", "docs:/d"]),
        step(&["rm", "-r", "docs:/d/e"]),
        step(&["rm", "docs:/."]),
        step(&["snapshot", "docs", "first"]),
        step(&["--json", "snapshot", "docs"]),
        step(&["snapshots", "docs"]),
        step(&["cat", "docs@main@first:/local.txt"]),
        step(&["ls", "docs:/", "--at", "2"]),
        step(&["put", "local.txt", "docs@main@first:/x"]),
        step(&["branch", "create", "docs", "dev", "--from", "main@first"]),
        step(&["branch", "list", "docs"]),
        step(&["put", "local.txt", "docs@dev:/only-on-dev"]),
        step(&["diff", "docs", "docs@dev"]),
        step(&["diff", "docs@main@2", "docs:/d"]),
        step(&["--json", "log", "docs@dev", "-n", "3"]),
        step(&["log", "docs:/d"]),
        step(&["bucket", "quota", "docs", "1MiB"]),
        step(&["bucket", "quota", "docs", "none"]),
        step(&["grant", "alice", "docs", "read"]),
        step(&["grant", "alice", "docs", "sideways"]),
        step(&["user", "list"]),
        step(&["revoke", "alice", "docs"]),
        step(&["prune", "docs", "--before", "first"]),
        step(&["branch", "delete", "docs", "dev"]),
        step(&["gc"]),
        step(&["fsck"]),
        step(&["bucket", "delete", "docs"]),
        step(&["ls", "docs:/"]),
        step(&["bucket", "list"]),
    ];
    for s in &steps {
        let args: Vec<&str> = s.args.iter().map(String::as_str).collect();
        let a = run_with(direct.cmd(&args), s.stdin);
        let b = run_with(remote(&client, &server.http, &admin, &args), s.stdin);
        assert_same(s, (&a, &direct.work), (&b, &client.work));
    }
    // What `get` fetched landed in the client's directory, whole.
    assert_eq!(
        std::fs::read(client.work.join("outdir/stdin.txt")).expect("got"),
        b"from stdin\n"
    );
    assert_eq!(std::fs::read(client.work.join("big.copy")).expect("got"), big);
    assert!(server.stop(), "the server stops cleanly");
}

/// The remote CLI signs in with a token and gets exactly the token's
/// grants, over HTTP, QUIC and TLS; what it may not see it cannot tell
/// from what does not exist; commands that need the data directory say so.
#[test]
fn the_remote_cli_keeps_to_its_tokens_grants() {
    let node = Node::new();
    add_admin(&node);
    for bucket in ["docs", "secret"] {
        node.ok(&["bucket", "create", bucket]);
    }
    crate::util::add_user(&node, "bob");
    node.ok(&["grant", "bob", "docs", "read"]);
    node.ok_stdin(&["put", "-", "docs:/f"], b"for bob");
    let server = Server::start(&node);
    let bob = token(&node, "bob", &["--name", "bobs"]);
    let client = Node::new();

    let ls = remote_out(&client, &server.http, &bob, &["ls", "docs"]);
    assert!(ls.status.success(), "{}", combined(&ls));
    assert_eq!(String::from_utf8_lossy(&ls.stdout), "f\n");
    // The same over QUIC, where the handshake proves the node's id.
    let cat = remote_out(&client, &server.quic, &bob, &["cat", "docs:/f"]);
    assert!(cat.status.success(), "{}", combined(&cat));
    assert_eq!(cat.stdout, b"for bob");
    // `--node` on the command line wins over ALKNET_NODE.
    let mut cmd = remote(
        &client,
        "http://127.0.0.1:1",
        &bob,
        &["--node", &server.http, "ls", "docs"],
    );
    let out = cmd.output().expect("run");
    assert!(out.status.success(), "{}", combined(&out));

    // Read access: no writes.
    let put = remote(&client, &server.http, &bob, &["put", "-", "docs:/g"]);
    let put = run_with(put, b"nope");
    assert_eq!(put.status.code(), Some(1));
    let denied = String::from_utf8_lossy(&put.stderr).to_string();
    assert!(denied.starts_with("alknet: ") && denied.contains("docs"), "{denied}");
    assert!(node.fails(&["cat", "docs:/g"]).contains("no such file"));
    // A bucket bob may not read looks like one that does not exist.
    let hidden = remote_out(&client, &server.http, &bob, &["ls", "secret"]);
    let missing = remote_out(&client, &server.http, &bob, &["ls", "nosuch"]);
    assert_eq!(hidden.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&hidden.stderr).replace("secret", "B"),
        String::from_utf8_lossy(&missing.stderr).replace("nosuch", "B"),
    );
    // Admin work needs an admin's token.
    let gc = remote_out(&client, &server.http, &bob, &["gc"]);
    fails_saying(&gc, "admin");
    // `--json` errors carry the node's kind.
    let json = remote_out(&client, &server.http, &bob, &["--json", "cat", "docs:/nope"]);
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).expect("json error");
    assert_eq!(v["error"]["kind"], "not_found", "{v}");

    // No token, a wrong one, a revoked one: each told apart, none let in.
    let none = remote_out(&client, &server.http, "", &["ls", "docs"]);
    fails_saying(&none, "set ALKNET_TOKEN");
    let wrong = remote_out(&client, &server.http, "alk_0000", &["ls", "docs"]);
    fails_saying(&wrong, "refused the token");
    let revoked = remote_out(&client, &server.http, &bob, &["token", "revoke", "bobs"]);
    assert!(revoked.status.success(), "{}", combined(&revoked));
    let after = remote_out(&client, &server.http, &bob, &["ls", "docs"]);
    fails_saying(&after, "refused the token");

    // What only runs on the data directory says so, and a mount is pointed
    // at its own --node.
    let admin = token(&node, "admin", &[]);
    for args in [
        &["put", "-r", ".", "docs:/"][..],
        &["get", "-r", "docs:/", "-o", "x"],
        &["repo", "create", "code"],
        &["user", "add", "carol", "--key", "k.pub"],
    ] {
        fails_saying(
            &remote_out(&client, &server.http, &admin, args),
            "does not run against a remote node",
        );
    }
    std::fs::create_dir_all(client.work.join("mnt")).expect("mountpoint");
    let mount = remote_out(&client, &server.http, &admin, &["mount", "docs", "mnt"]);
    fails_saying(&mount, "over SSH, not HTTP");
    // A node that is not there fails at once with where it looked.
    let gone = remote_out(&client, "http://127.0.0.1:1", &admin, &["ls", "docs"]);
    fails_saying(&gone, "127.0.0.1:1");
    assert!(server.stop());
}

/// Over TLS the node's certificate is checked against the system's roots
/// and `SSL_CERT_FILE`: a self-signed one is refused until it is trusted.
#[test]
fn the_remote_cli_checks_the_nodes_certificate() {
    let node = Node::new();
    add_admin(&node);
    node.ok(&["bucket", "create", "docs"]);
    node.ok_stdin(&["put", "-", "docs:/f"], b"over tls");
    let (cert, key) = (node.work.join("cert.pem"), node.work.join("key.pem"));
    crate::http::self_signed(&cert, &key);
    let settings = std::fs::read_to_string(node.data.join("alknet.toml")).expect("settings");
    let settings = settings.replace(
        "metrics_public = false",
        &format!("metrics_public = false\ntls_cert = {cert:?}\ntls_key = {key:?}"),
    );
    std::fs::write(node.data.join("alknet.toml"), settings).expect("settings");
    let server = Server::start(&node);
    assert!(server.http.starts_with("https://"), "{}", server.http);
    let admin = token(&node, "admin", &[]);
    let client = Node::new();
    let untrusted = remote_out(&client, &server.http, &admin, &["cat", "docs:/f"]);
    fails_saying(&untrusted, "certificate");
    let trusted = remote(&client, &server.http, &admin, &["cat", "docs:/f"])
        .env("SSL_CERT_FILE", &cert)
        .output()
        .expect("run");
    assert!(trusted.status.success(), "{}", combined(&trusted));
    assert_eq!(trusted.stdout, b"over tls");
    assert!(server.stop());
}
