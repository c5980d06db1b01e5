//! What a commit costs on a branch that syncs, against the same commit on a
//! branch only this node wrote (issue 13). A branch that holds another
//! node's commits shows its view through `present` after every commit,
//! which reads all of the branch's ops: this measures that, at 1,000,
//! 10,000 and 100,000 entries. Run: `cargo bench --bench replicated`.

use std::time::{Duration, Instant};

use alknet_fs::{At, BucketPath, Edit, Store, Vector};

const COMMITS: usize = 15;

/// A bucket of `n` symlinks in directories of 1,000 (no blob traffic: the
/// cost under test is the rows').
fn filled(dir: &std::path::Path, n: usize) -> anyhow::Result<Store> {
    let store = Store::open(dir)?;
    store.create_bucket("b", "drive")?;
    let main = store.tree("b", "main", &At::Head)?;
    for start in (0..n).step_by(10_000) {
        let edits: Vec<Edit<'_>> = (start..(start + 10_000).min(n))
            .map(|i| {
                Ok(Edit::Symlink {
                    path: BucketPath::parse(&format!("/d{:03}/e{i:06}", i / 1000))?,
                    target: format!("t{i}"),
                })
            })
            .collect::<alknet_fs::Result<_>>()?;
        main.apply(&edits)?;
    }
    Ok(store)
}

/// The median time of one small commit (one symlink changed) on `store`.
fn commit_time(store: &Store) -> anyhow::Result<Duration> {
    let main = store.tree("b", "main", &At::Head)?;
    let mut times = Vec::new();
    for k in 0..COMMITS {
        let edit = Edit::Symlink {
            path: BucketPath::parse("/d000/e000001")?,
            target: format!("changed {k}"),
        };
        let t = Instant::now();
        main.apply(&[edit])?;
        times.push(t.elapsed());
    }
    times.sort();
    Ok(times[times.len() / 2])
}

fn main() -> anyhow::Result<()> {
    for n in [1_000, 10_000, 100_000] {
        let dir = tempfile::tempdir()?;
        let alone = filled(&dir.path().join("alone"), n)?;
        let reference = commit_time(&alone)?;
        // A second store that received `alone`'s commits: its branch is
        // replicated, and its own commits pay for the view.
        let synced = Store::open(&dir.path().join("synced"))?;
        synced.create_bucket("b", "drive")?;
        let all = alone.sync_export("b", "main", &Vector::new(), usize::MAX)?;
        let t = Instant::now();
        synced.sync_apply("b", "main", &all)?;
        let applied = t.elapsed();
        let ours = commit_time(&synced)?;
        println!(
            "{n:>7} entries: commit on a synced branch {ours:>10.2?}, on a branch written here only {reference:>10.2?}, \
             ratio {:.1}x; applying all {n} from the other node {applied:.2?}",
            ours.as_secs_f64() / reference.as_secs_f64()
        );
    }
    Ok(())
}
