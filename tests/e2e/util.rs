//! The harness: a data directory and the real binary.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// One node's data directory, initialised, removed at drop.
pub(crate) struct Node {
    _dir: tempfile::TempDir,
    pub(crate) data: PathBuf,
    pub(crate) work: PathBuf,
}

impl Node {
    pub(crate) fn new() -> Node {
        let dir = tempfile::tempdir().expect("temp dir");
        let data = dir.path().join("data");
        let work = dir.path().join("work");
        std::fs::create_dir_all(&work).expect("work dir");
        let node = Node { _dir: dir, data, work };
        node.ok(&["init"]);
        node
    }

    /// A command for the binary, on this node, run in the node's work dir.
    pub(crate) fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(bin());
        c.arg("--data")
            .arg(&self.data)
            .args(args)
            .current_dir(&self.work)
            .env_remove("ALKNET_DATA")
            .env_remove("ALKNET_NODE")
            .env_remove("ALKNET_TOKEN");
        c
    }

    /// Runs and asserts success; returns stdout.
    pub(crate) fn ok(&self, args: &[&str]) -> String {
        let out = self.cmd(args).output().expect("run alknet");
        check_ok(args, &out);
        String::from_utf8(out.stdout).expect("utf-8 stdout")
    }

    /// Runs with `input` on stdin and asserts success; returns stdout.
    pub(crate) fn ok_stdin(&self, args: &[&str], input: &[u8]) -> String {
        use std::io::Write;
        let mut child = self
            .cmd(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn alknet");
        child.stdin.take().expect("stdin").write_all(input).expect("feed stdin");
        let out = child.wait_with_output().expect("wait");
        check_ok(args, &out);
        String::from_utf8(out.stdout).expect("utf-8 stdout")
    }

    /// Runs and returns the raw bytes of stdout (asserting success).
    pub(crate) fn bytes(&self, args: &[&str]) -> Vec<u8> {
        let out = self.cmd(args).output().expect("run alknet");
        check_ok(args, &out);
        out.stdout
    }

    /// Runs, asserts failure with one `alknet: …` line on stderr; returns it.
    pub(crate) fn fails(&self, args: &[&str]) -> String {
        let out = self.cmd(args).output().expect("run alknet");
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            !out.status.success(),
            "alknet {args:?} should have failed; stdout:\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "alknet {args:?}: an error is one line, got:\n{stderr}");
        assert!(lines[0].starts_with("alknet: "), "alknet {args:?}: {stderr}");
        lines[0].to_owned()
    }

    /// Runs with `--json` and parses stdout.
    pub(crate) fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        serde_json::from_str(&self.ok(&all)).expect("--json prints JSON")
    }

    pub(crate) fn write_local(&self, name: &str, data: &[u8]) -> PathBuf {
        let p = self.work.join(name);
        std::fs::write(&p, data).expect("write local file");
        p
    }

    pub(crate) fn blob_file(&self, data: &[u8]) -> PathBuf {
        self.data
            .join("blobs/data")
            .join(format!("{}.data", blake3::hash(data).to_hex()))
    }
}

fn check_ok(args: &[&str], out: &Output) {
    assert!(
        out.status.success(),
        "alknet {args:?} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A finished command's stdout then stderr, as text for an assertion message.
pub(crate) fn combined(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

pub(crate) fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_alknet"))
}

/// Deterministic, incompressible-looking test bytes.
pub(crate) fn pattern(len: usize, seed: u8) -> Vec<u8> {
    let mut x = 0x9e37_79b9u32 ^ u32::from(seed);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// Peak resident memory of a live process, in KiB (`VmHWM`).
pub(crate) fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

pub(crate) fn sigkill(pid: u32) {
    let st = Command::new("kill")
        .args(["-s", "KILL", "--", &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(st.success(), "kill -9 {pid}");
}

/// A running `alknet serve` on free loopback ports; stopped (SIGTERM) at drop.
pub(crate) struct Server {
    child: std::process::Child,
    pub(crate) ssh_port: u16,
    /// `NODE_ID@127.0.0.1:PORT`
    pub(crate) quic: String,
    /// `http://127.0.0.1:PORT`
    pub(crate) http: String,
}

impl Server {
    pub(crate) fn start(node: &Node) -> Server {
        Self::start_at(node, "127.0.0.1:0", "127.0.0.1:0")
    }

    /// A server listening for SSH at `ssh` and QUIC at `quic`.
    pub(crate) fn start_at(node: &Node, ssh: &str, quic: &str) -> Server {
        Self::spawn(
            node,
            node.cmd(&["serve", "--ssh", ssh, "--quic", quic, "--http", "127.0.0.1:0"]),
        )
    }

    /// A server on free loopback ports, run by `wrapper` (`prlimit …`).
    pub(crate) fn start_under(node: &Node, wrapper: &[&str]) -> Server {
        Self::start_under_at(node, wrapper, "127.0.0.1:0")
    }

    /// The same with QUIC at `quic` (inside a network namespace, say).
    pub(crate) fn start_under_at(node: &Node, wrapper: &[&str], quic: &str) -> Server {
        let mut cmd = Command::new(wrapper[0]);
        cmd.args(&wrapper[1..])
            .arg(bin())
            .arg("--data")
            .arg(&node.data)
            .args(["serve", "--ssh", "127.0.0.1:0", "--quic", quic, "--http", "127.0.0.1:0"])
            .current_dir(&node.work)
            .env_remove("ALKNET_DATA");
        Self::spawn(node, cmd)
    }

    fn spawn(node: &Node, mut cmd: Command) -> Server {
        use std::io::BufRead;
        let mut child = cmd
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(node.work.join("serve.log")).expect("log file"))
            .spawn()
            .expect("spawn alknet serve");
        let mut lines = std::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
        let (mut ssh_port, mut quic, mut http) = (None, None, None);
        while ssh_port.is_none() || quic.is_none() || http.is_none() {
            let Some(Ok(line)) = lines.next() else {
                let log = std::fs::read_to_string(node.work.join("serve.log")).unwrap_or_default();
                panic!("alknet serve ended before printing its addresses:\n{log}");
            };
            if let Some(addr) = line.strip_prefix("ssh: ") {
                ssh_port = Some(addr.rsplit(':').next().expect("port").parse().expect("a port"));
            } else if let Some(addr) = line.strip_prefix("quic: ") {
                quic = Some(addr.to_owned());
            } else if let Some(url) = line.strip_prefix("http: ") {
                http = Some(url.to_owned());
            }
        }
        Server {
            child,
            ssh_port: ssh_port.expect("ssh port"),
            quic: quic.expect("quic address"),
            http: http.expect("http address"),
        }
    }

    /// Whether the process is still running.
    pub(crate) fn alive(&mut self) -> bool {
        self.child.try_wait().expect("wait").is_none()
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, then wait; returns whether it exited cleanly.
    pub(crate) fn stop(mut self) -> bool {
        let st = Command::new("kill")
            .args(["-s", "TERM", "--", &self.child.id().to_string()])
            .status();
        assert!(st.is_ok_and(|s| s.success()), "send SIGTERM");
        let start = std::time::Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status.success();
            }
            if start.elapsed() > std::time::Duration::from_secs(20) {
                self.child.kill().ok();
                return false;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

/// How a client reaches the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Via {
    Tcp,
    Quic,
}

/// A client key pair made with ssh-keygen in the node's work dir.
/// Adds user `name` with a new key (see [`client_key`]); returns the key.
pub(crate) fn add_user(node: &Node, name: &str) -> PathBuf {
    let key = client_key(node, name);
    node.ok(&[
        "user",
        "add",
        name,
        "--key",
        key.with_extension("pub").to_str().expect("utf-8"),
    ]);
    key
}

pub(crate) fn client_key(node: &Node, name: &str) -> PathBuf {
    let key = node.work.join(name);
    if !key.exists() {
        let st = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
            .arg(&key)
            .status()
            .expect("run ssh-keygen");
        assert!(st.success());
    }
    key
}

/// The `ssh`/`sftp` options that reach `server` with `key` over `via`.
pub(crate) fn ssh_opts(server: &Server, key: &Path, via: Via) -> Vec<String> {
    let mut o: Vec<String> = [
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "LogLevel=ERROR",
        "-o",
        "BatchMode=yes",
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "ConnectTimeout=10",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    o.push("-i".into());
    o.push(key.display().to_string());
    match via {
        Via::Tcp => o.extend(["-o".into(), format!("Port={}", server.ssh_port)]),
        Via::Quic => o.extend([
            "-o".into(),
            format!("ProxyCommand={} proxy {}", bin().display(), server.quic),
        ]),
    }
    o
}

/// Runs an `sftp -b` batch; returns (success, stdout + stderr).
pub(crate) fn sftp_batch(node: &Node, server: &Server, key: &Path, via: Via, script: &str) -> (bool, String) {
    let batch = node.work.join("batch.sftp");
    std::fs::write(&batch, script).expect("write batch");
    let out = Command::new("timeout")
        .arg("120")
        .arg("sftp")
        .args(ssh_opts(server, key, via))
        .arg("-b")
        .arg(&batch)
        .arg("user@127.0.0.1")
        .current_dir(&node.work)
        .output()
        .expect("run sftp");
    let text = combined(&out);
    (out.status.success(), text)
}

/// Sends `junk` (a Python bytes expression) on a fresh SSH session's
/// `subsystem` as `user` with `key`, with paramiko; returns whether the
/// server then closed the channel (within 10 s), and the script's output.
pub(crate) fn junk_on_subsystem(server: &Server, key: &Path, subsystem: &str, junk: &str) -> (bool, String) {
    let script = format!(
        r#"
import socket, paramiko
key = paramiko.Ed25519Key.from_private_key_file('{key}')
t = paramiko.Transport(socket.create_connection(('127.0.0.1', {port})))
t.connect(username='user', pkey=key)
ch = t.open_session()
ch.invoke_subsystem('{subsystem}')
ch.sendall({junk})
ch.settimeout(10)
while ch.recv(4096):
    pass
print('closed by server')
"#,
        key = key.display(),
        port = server.ssh_port
    );
    let out = Command::new("timeout")
        .args(["30", "/usr/bin/python3", "-c", &script])
        .output()
        .expect("python3");
    let text = combined(&out);
    (text.contains("closed by server"), text)
}

/// Runs `body` (Python) with `sftp`, a paramiko SFTP client logged in to
/// `server` over TCP as `user` with `key`; returns (success, output).
pub(crate) fn paramiko_sftp(node: &Node, server: &Server, key: &Path, body: &str) -> (bool, String) {
    let script = format!(
        r#"
import io, socket, sys, time, paramiko
key = paramiko.Ed25519Key.from_private_key_file('{key}')
t = paramiko.Transport(socket.create_connection(('127.0.0.1', {port})))
t.connect(username='user', pkey=key)
sftp = paramiko.SFTPClient.from_transport(t)
{body}
"#,
        key = key.display(),
        port = server.ssh_port
    );
    let out = Command::new("timeout")
        .args(["120", "/usr/bin/python3", "-c", &script])
        .current_dir(&node.work)
        .output()
        .expect("python3");
    (out.status.success(), combined(&out))
}

/// Bytes free for an unprivileged writer on the filesystem holding `path`.
pub(crate) fn free_bytes(path: &Path) -> u64 {
    let out = Command::new("df")
        .args(["--output=avail", "-B1"])
        .arg(path)
        .output()
        .expect("df");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .expect("df prints a size")
}

/// Waits for `child` (spawned with a piped stdout) to print `line`, its
/// sign that it is ready.
pub(crate) fn wait_for_line(child: &mut std::process::Child, line: &str) {
    use std::io::BufRead;
    let mut got = String::new();
    std::io::BufReader::new(child.stdout.as_mut().expect("a piped stdout"))
        .read_line(&mut got)
        .expect("read the child's stdout");
    assert_eq!(got.trim(), line, "the child's first line");
}

/// Polls `done` every 50 ms until it holds; fails the test after `limit`.
pub(crate) fn wait_until(what: &str, limit: std::time::Duration, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + limit;
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {limit:?}: {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
