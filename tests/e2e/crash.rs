//! SIGKILL at the worst moments: nothing committed is lost, nothing partial
//! shows, and fsck stays clean.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::{Node, bin, pattern, peak_rss_kib, sigkill};

/// Streams far more than the memory it may use into `put -`, reads its peak
/// RSS, then kills it mid-stream.
#[test]
fn killed_while_streaming_a_large_file() {
    let node = Node::new();
    node.ok(&["bucket", "create", "b"]);
    let old = pattern(300_000, 7);
    node.ok_stdin(&["put", "-", "b:/big"], &old);

    let mut child = node
        .cmd(&["put", "-", "b:/big"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn put");
    let pid = child.id();
    let mut stdin = child.stdin.take().expect("stdin");
    let chunk = pattern(1 << 20, 9);
    let streamed_mib = 768;
    for _ in 0..streamed_mib {
        stdin.write_all(&chunk).expect("the writer is still alive");
    }
    let rss_mib = peak_rss_kib(pid).expect("the writer is still alive") / 1024;
    assert!(
        rss_mib < 200,
        "streaming {streamed_mib} MiB must not hold it in memory: peak RSS {rss_mib} MiB"
    );
    sigkill(pid);
    drop(stdin);
    let out = child.wait_with_output().expect("wait");
    assert!(!out.status.success());
    assert!(out.stdout.is_empty(), "a killed put reported nothing as done");

    assert_eq!(
        node.bytes(&["cat", "b:/big"]),
        old,
        "the old content survives the crash"
    );
    assert!(node.ok(&["fsck"]).contains("no problems"));
    let staged: Vec<_> = std::fs::read_dir(node.data.join("tmp")).expect("tmp").collect();
    assert!(staged.is_empty(), "no staging file is left behind: {staged:?}");
    assert_eq!(
        node.json(&["log", "b:/big"]).as_array().map(Vec::len),
        Some(1),
        "no version was committed"
    );
}

/// Kills `put LOCALFILE` while iroh-blobs is importing it.
#[test]
fn killed_while_importing_a_local_file() {
    let node = Node::new();
    node.ok(&["bucket", "create", "b"]);
    node.ok_stdin(&["put", "-", "b:/big"], b"old");
    let big = node.work.join("big.bin");
    {
        let f = std::fs::File::create(&big).expect("create");
        let mut w = std::io::BufWriter::new(f);
        let chunk = pattern(1 << 20, 3);
        for _ in 0..1024 {
            w.write_all(&chunk).expect("write");
        }
    }
    let mut child = node
        .cmd(&["put", big.to_str().expect("utf-8"), "b:/big"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn put");
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        child.try_wait().expect("poll").is_none(),
        "the 1 GiB import finished within 300 ms, so this test killed nothing"
    );
    sigkill(child.id());
    child.wait().expect("wait");
    assert_eq!(node.bytes(&["cat", "b:/big"]), b"old");
    assert!(node.ok(&["fsck"]).contains("no problems"));
    node.ok(&["gc"]);
    assert!(node.ok(&["fsck"]).contains("no problems"));
    assert_eq!(node.bytes(&["cat", "b:/big"]), b"old");
}

/// A shell loop of small commits, each acknowledged on stdout, killed
/// mid-burst: every acknowledged commit must be there.
#[test]
fn killed_during_a_burst_of_small_commits() {
    let node = Node::new();
    node.ok(&["bucket", "create", "b"]);
    let script = format!(
        "for i in $(seq 1 400); do echo \"content $i\" | '{bin}' --data '{data}' put - b:/burst/f$i >/dev/null && echo \"done $i\"; done",
        bin = bin().display(),
        data = node.data.display()
    );
    let mut child = {
        use std::os::unix::process::CommandExt;
        Command::new("sh")
            .arg("-c")
            .arg(&script)
            .stdout(Stdio::piped())
            .process_group(0)
            .spawn()
            .expect("spawn sh")
    };
    let pgid = child.id();
    let start = Instant::now();
    let mut acked = Vec::new();
    {
        use std::io::BufRead;
        let mut lines = std::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
        while let Some(Ok(line)) = lines.next() {
            acked.push(line.trim_start_matches("done ").parse::<u32>().expect("a number"));
            if acked.len() >= 25 && start.elapsed() > Duration::from_millis(500) {
                // Kill the whole group: the shell and the alknet it is running.
                assert!(pgid > 1, "never signal group {pgid}");
                let group = format!("-{pgid}");
                let st = Command::new("kill")
                    .args(["-s", "KILL", "--", &group])
                    .status()
                    .expect("kill group");
                assert!(st.success(), "kill the process group {pgid}");
                break;
            }
        }
    }
    child.wait().ok();
    assert!(acked.len() < 400, "the burst ended before the kill; nothing was tested");
    for i in &acked {
        assert_eq!(
            node.bytes(&["cat", &format!("b:/burst/f{i}")]),
            format!("content {i}\n").as_bytes(),
            "commit {i} was reported done, so it must be there"
        );
    }
    assert!(node.ok(&["fsck"]).contains("no problems"));
}
