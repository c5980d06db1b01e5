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
            .env_remove("ALKNET_DATA");
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
