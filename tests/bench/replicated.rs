//! What a commit costs on a branch that syncs, against the same commit on a
//! branch only this node wrote (issue 13). On a branch that holds another
//! node's commits, a delete or a move re-derives the view (`present`,
//! which reads all of the branch's ops); a create or an edit in place does
//! not. This measures both at 1,000, 10,000 and 100,000 entries.
//! Run: `cargo bench --bench replicated`.

use std::time::{Duration, Instant};

use alknet_fs::{At, BucketPath, Edit, Store, Vector};

// Even: the moves end where they started.
const COMMITS: usize = 16;

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

/// The median time of one small commit on `store`: an edit in place of one
/// symlink, or (`moving`) a rename of it back and forth.
fn commit_time(store: &Store, moving: bool) -> anyhow::Result<Duration> {
    let main = store.tree("b", "main", &At::Head)?;
    let (here, there) = (BucketPath::parse("/d000/e000001")?, BucketPath::parse("/d000/moved")?);
    let mut times = Vec::new();
    for k in 0..COMMITS {
        let t = Instant::now();
        if moving {
            let (from, to) = if k % 2 == 0 { (&here, &there) } else { (&there, &here) };
            main.rename(from, to, false)?;
        } else {
            main.apply(&[Edit::Symlink {
                path: here.clone(),
                target: format!("changed {k}"),
            }])?;
        }
        times.push(t.elapsed());
    }
    times.sort();
    Ok(times[times.len() / 2])
}

fn main() -> anyhow::Result<()> {
    for n in [1_000, 10_000, 100_000] {
        let dir = tempfile::tempdir()?;
        let alone = filled(&dir.path().join("alone"), n)?;
        let (ref_edit, ref_move) = (commit_time(&alone, false)?, commit_time(&alone, true)?);
        // A second store that received `alone`'s commits: its branch is
        // replicated.
        let synced = Store::open(&dir.path().join("synced"))?;
        synced.create_bucket("b", "drive")?;
        let all = alone.sync_export("b", "main", &Vector::new(), usize::MAX)?;
        let t = Instant::now();
        synced.sync_apply("b", "main", &all)?;
        let applied = t.elapsed();
        let (edit, moved) = (commit_time(&synced, false)?, commit_time(&synced, true)?);
        let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64();
        println!(
            "{n:>7} entries, synced vs written here only: edit {edit:>9.2?} vs {ref_edit:>9.2?} ({:.1}x), \
             rename {moved:>9.2?} vs {ref_move:>9.2?} ({:.1}x); all {n} applied from the other node in {applied:.2?}",
            ratio(edit, ref_edit),
            ratio(moved, ref_move)
        );
    }
    Ok(())
}
