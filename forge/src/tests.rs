//! Unit tests of the forge's parsers; the protocol itself is tested end to
//! end with stock git (tests/e2e/git.rs).

use crate::repo_name;
use crate::walk::Filter;

#[test]
fn repository_names_from_git_paths() {
    for path in ["hello", "/hello", "/hello.git", "~/hello.git", "hello/"] {
        assert_eq!(repo_name(path).expect(path), "hello");
    }
    for bad in ["", "/", "Hello", "a/b", "../x", ".git"] {
        assert!(repo_name(bad).is_err(), "{bad:?} is not a repository name");
    }
}

#[test]
fn filters_parse() {
    assert_eq!(Filter::parse("blob:none").expect("blob:none"), Filter::NoBlobs);
    assert_eq!(Filter::parse("blob:limit=1k").expect("1k"), Filter::BlobLimit(1024));
    assert_eq!(Filter::parse("blob:limit=3").expect("3"), Filter::BlobLimit(3));
    assert_eq!(Filter::parse("blob:limit=2M").expect("2M"), Filter::BlobLimit(2 << 20));
    assert_eq!(Filter::parse("tree:0").expect("tree:0"), Filter::TreeDepth(0));
    for bad in [
        "sparse:oid=abc",
        "blob:limit=",
        "blob:limit=1q",
        "tree:x",
        "combine:a+b",
    ] {
        let e = Filter::parse(bad).expect_err(bad).to_string();
        assert!(e.contains("not supported"), "{bad}: {e}");
    }
}

#[test]
fn ref_names_are_checked() {
    use crate::receive::valid_ref_name;
    for good in ["refs/heads/main", "refs/tags/v1.0", "refs/heads/feature/x-y_z"] {
        assert!(valid_ref_name(good), "{good}");
    }
    for bad in [
        "main",
        "refs/heads/",
        "refs/heads/a..b",
        "refs/heads/a b",
        "refs/heads/x.lock",
        "refs/heads/a~1",
        "refs/heads/a:b",
        "refs//x",
        "refs/heads/@{x}",
    ] {
        assert!(!valid_ref_name(bad), "{bad}");
    }
}

/// Garbage-in harnesses for the parsers that face the network: upload-pack
/// (v0 and v2 commands) and receive-pack (commands and the pack after
/// them), fed pkt-lines built from the protocols' own words, wrong
/// arguments and random bytes. Each round must end — with an answer or an
/// error — without a panic, and move no ref. `ALKNET_FUZZ_ROUNDS` runs
/// more rounds (docs/fuzzing.md has the long runs).
pub(crate) mod garbage {
    use std::io::Cursor;

    use crate::{Forge, ForgeConfig, Mode, receive_pack, upload_pack};

    pub(crate) fn rounds(default: u64) -> u64 {
        std::env::var("ALKNET_FUZZ_ROUNDS")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(default)
    }

    /// xorshift64: reproducible noise without a dependency.
    pub(crate) struct Noise(pub(crate) u64);

    impl Noise {
        pub(crate) fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        pub(crate) fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }

        pub(crate) fn bytes(&mut self, len: usize) -> Vec<u8> {
            (0..len).map(|_| self.next() as u8).collect()
        }

        fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
            from[self.below(from.len())]
        }

        fn oid(&mut self) -> String {
            match self.below(4) {
                0 => "0".repeat(40),
                1 => "f".repeat(39),
                2 => format!("{:040x}", self.next()),
                _ => String::from_utf8_lossy(&self.bytes(40)).into_owned(),
            }
        }
    }

    const WORDS: &[&str] = &[
        "want",
        "have",
        "done",
        "shallow",
        "deepen",
        "deepen-since",
        "deepen-not",
        "deepen-relative",
        "filter",
        "command=fetch",
        "command=ls-refs",
        "command=bogus",
        "agent=x",
        "object-format=sha1",
        "ref-prefix",
        "peel",
        "symrefs",
        "unborn",
        "thin-pack",
        "ofs-delta",
        "no-progress",
        "include-tag",
        "wait-for-done",
        "server-option=x",
        "push-option=x",
        "",
    ];

    fn pkt(out: &mut Vec<u8>, body: &[u8]) {
        out.extend_from_slice(format!("{:04x}", body.len() + 4).as_bytes());
        out.extend_from_slice(body);
    }

    /// One client's worth of pkt-lines: words with arguments, flushes,
    /// delimiters, and now and then a malformed length or raw noise.
    fn pkt_lines(n: &mut Noise, first: Option<String>) -> Vec<u8> {
        let mut out = Vec::new();
        if let Some(first) = first {
            pkt(&mut out, first.as_bytes());
        }
        for _ in 0..n.below(12) {
            match n.below(10) {
                0 => out.extend_from_slice(b"0000"),
                1 => out.extend_from_slice(b"0001"),
                2 => out.extend_from_slice(b"0002"),
                3 => {
                    let len = n.below(16);
                    let junk = n.bytes(len);
                    out.extend_from_slice(&junk);
                }
                4 => out.extend_from_slice(format!("{:04x}", n.below(0x10000)).as_bytes()),
                _ => {
                    let word = n.pick(WORDS);
                    let arg = match n.below(5) {
                        0 => n.oid(),
                        1 => n.next().to_string(),
                        2 => n
                            .pick(&["blob:none", "blob:limit=1k", "tree:0", "sparse:x", "refs/heads/"])
                            .to_owned(),
                        3 => String::new(),
                        _ => {
                            let len = n.below(24);
                            String::from_utf8_lossy(&n.bytes(len)).into_owned()
                        }
                    };
                    pkt(&mut out, format!("{word} {arg}\n").as_bytes());
                }
            }
        }
        if n.below(2) == 0 {
            out.extend_from_slice(b"0000");
        }
        out
    }

    fn forge(dir: &std::path::Path) -> Forge {
        let store = alknet_fs::Store::open(dir).expect("store");
        let forge = Forge::new(store, ForgeConfig::default());
        forge.create("r").expect("repo");
        forge
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn upload_pack_ends_cleanly_on_garbage() {
        let dir = tempfile::tempdir().expect("temp dir");
        let forge = forge(dir.path());
        let mut n = Noise(0x9e37_79b9_7f4a_7c15);
        for round in 0..rounds(400) {
            let v2 = n.below(2) == 0;
            let mode = if n.below(2) == 0 {
                Mode::Connection
            } else {
                Mode::Stateless
            };
            let input = pkt_lines(&mut n, None);
            let forge = forge.clone();
            let ran = tokio::task::spawn_blocking(move || {
                let mut out = Vec::new();
                let _ = upload_pack(&forge, "r", v2, mode, Cursor::new(input), &mut out);
            });
            let ended = tokio::time::timeout(std::time::Duration::from_secs(10), ran).await;
            assert!(
                ended.expect("upload-pack ended").is_ok(),
                "round {round}: upload-pack panicked"
            );
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn receive_pack_ends_cleanly_on_garbage() {
        let dir = tempfile::tempdir().expect("temp dir");
        let forge = forge(dir.path());
        let refs_before = forge.store().refs("r").expect("refs");
        let mut n = Noise(0x2545_f491_4f6c_dd1d);
        for round in 0..rounds(200) {
            let caps = n.pick(&[
                "report-status",
                "report-status side-band-64k",
                "atomic",
                "push-options",
                "",
            ]);
            let name = n.pick(&[
                "refs/heads/main",
                "refs/heads/x",
                "refs/tags/t",
                "HEAD",
                "refs/heads/a..b",
                "main",
            ]);
            let mode = if n.below(2) == 0 {
                Mode::Connection
            } else {
                Mode::Stateless
            };
            let first = format!("{} {} {name}\0{caps}\n", n.oid(), n.oid());
            let mut input = pkt_lines(&mut n, Some(first));
            // A pack header (sometimes lying about its count), then noise.
            if n.below(2) == 0 {
                input.extend_from_slice(b"PACK\0\0\0\x02");
                let count = [0u32, 1, 3, u32::MAX][n.below(4)];
                input.extend_from_slice(&count.to_be_bytes());
            }
            let len = n.below(300);
            let tail = n.bytes(len);
            input.extend_from_slice(&tail);
            let forge = forge.clone();
            let ran = tokio::task::spawn_blocking(move || {
                let mut out = Vec::new();
                let _ = receive_pack(&forge, "r", "fuzzer", mode, Cursor::new(input), &mut out);
            });
            let ended = tokio::time::timeout(std::time::Duration::from_secs(10), ran).await;
            assert!(
                ended.expect("receive-pack ended").is_ok(),
                "round {round}: receive-pack panicked"
            );
        }
        assert_eq!(
            forge.store().refs("r").expect("refs"),
            refs_before,
            "garbage moved no ref"
        );
    }
}
