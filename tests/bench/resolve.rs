//! Path resolution latency at branch depth 1, 10 and 100, against a stat of
//! the same path on a plain directory. Run: `cargo bench --bench resolve`.
//!
//! A branch at depth d was forked d-1 times; each fork commits a file of its
//! own, so every level of the chain holds rows the lookup must look through.

use std::time::{Duration, Instant};

use alknet_fs::{At, BucketPath, Store};

const PATH: &str = "/photos/2026/trip/day-3/raw/img_0042.jpg";
const SAMPLES: usize = 2000;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn measure(mut f: impl FnMut()) -> (Duration, Duration) {
    for _ in 0..100 {
        f();
    }
    let mut times: Vec<Duration> = (0..SAMPLES)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect();
    times.sort();
    (percentile(&times, 0.5), percentile(&times, 0.99))
}

fn main() -> anyhow::Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    let dir = tempfile::tempdir()?;
    let store = Store::open(&dir.path().join("data"))?;
    store.create_bucket("b", "drive")?;
    let path = BucketPath::parse(PATH)?;
    let main = store.tree("b", "main", &At::Head)?;
    rt.block_on(main.put_reader(&path, &mut &b"jpeg bytes"[..], None))?;

    let plain = dir.path().join("plain");
    let local = plain.join(PATH.trim_start_matches('/'));
    std::fs::create_dir_all(local.parent().expect("has a parent"))?;
    std::fs::write(&local, b"jpeg bytes")?;
    let (ref50, ref99) = measure(|| {
        std::fs::symlink_metadata(&local).expect("stat");
    });
    println!("plain directory stat: p50 {ref50:?} p99 {ref99:?}");

    let mut depth = 1;
    let mut branch = "main".to_owned();
    for target in [1, 10, 100] {
        while depth < target {
            let next = format!("fork{depth}");
            store.create_branch("b", &next, &branch, &At::Head)?;
            let tree = store.tree("b", &next, &At::Head)?;
            rt.block_on(tree.put_reader(&BucketPath::parse(&format!("/level-{depth}"))?, &mut &b"x"[..], None))?;
            branch = next;
            depth += 1;
        }
        let tree = store.tree("b", &branch, &At::Head)?;
        let (p50, p99) = measure(|| {
            tree.stat(&path).expect("resolves");
        });
        println!(
            "alknet resolve, branch depth {target:>3}: p50 {p50:?} p99 {p99:?}  ratio p50 vs plain stat: {:.1}x",
            p50.as_secs_f64() / ref50.as_secs_f64()
        );
    }
    Ok(())
}
