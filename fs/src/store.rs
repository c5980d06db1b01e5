//! [`Store`]: a data directory's tree database and blob store, and the
//! operations on buckets and branches.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

use crate::blobs::Blobs;
use crate::db::{Db, notify, now_ms};
use crate::error::{Error, Result};
use crate::name::{At, BucketPath, DEFAULT_BRANCH, check_branch_name, check_bucket_name};
use crate::tree::{Tree, chain, head_limit};
use crate::types::{BlobHash, BranchInfo, BucketInfo, Commit, EntryId, Kind, SnapshotInfo, Version};

/// The kind of a bucket that holds a git repository: its branches are
/// published by pushes and read-only to every other writer.
pub const REPO_KIND: &str = "repo";

/// The honker queue that asks for a garbage collection. Enqueued in the same
/// transaction as a change that frees content (bucket or branch deletion);
/// drained by [`Store::gc`].
pub const GC_QUEUE: &str = "alknet/gc";

/// An open data directory. Cheap to clone; all clones share one writer
/// connection and one blob store.
#[derive(Clone)]
pub struct Store {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) dir: PathBuf,
    pub(crate) db: Db,
    pub(crate) blobs: Blobs,
    /// Staging files of write sessions. Same filesystem as `blobs/`.
    pub(crate) tmp: PathBuf,
    /// This node's origin id and hybrid logical clock (replica.rs).
    pub(crate) clock: crate::replica::Clock,
    /// What a write may take of the disk.
    pub(crate) limits: crate::limits::Active,
    /// Growth open write sessions hold against their bucket's quota.
    pub(crate) reserved: crate::quota::Reserved,
}

impl Inner {
    /// Passes `r` on; a read that met a corrupt blob records it (table
    /// `corrupt_blobs`, shown by `stats`), off this thread. The frontend that
    /// gets the error logs it.
    pub(crate) fn noted<T>(self: &Arc<Self>, r: Result<T>) -> Result<T> {
        if let Err(Error::Corrupt(hash)) = &r {
            let (inner, hash) = (self.clone(), hash.clone());
            let record = move || {
                let done = inner.db.write(|tx| {
                    tx.execute(
                        "INSERT INTO corrupt_blobs (hash, seen_ms) VALUES (?1, ?2) ON CONFLICT (hash) DO NOTHING",
                        params![hash, now_ms()],
                    )?;
                    Ok(())
                });
                if let Err(e) = done {
                    tracing::warn!("could not record corrupt blob {hash}: {e}");
                }
            };
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => drop(rt.spawn_blocking(record)),
                Err(_) => record(),
            }
        }
        r
    }
}

/// What [`Store::gc`] did.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GcReport {
    /// Distinct blobs referenced by some version of some tree.
    pub live: usize,
    /// Blobs in the store before and after.
    pub before: usize,
    pub after: usize,
    /// Stale write sessions whose staging files were removed.
    pub stale_sessions: usize,
}

/// What [`Store::prune`] removed.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PruneReport {
    /// Tree rows no readable version needed any more.
    pub rows: u64,
    /// Commit records dropped from the history.
    pub commits: u64,
}

/// What [`Store::fsck`] found. Clean when `problems` is empty.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FsckReport {
    pub blobs_checked: usize,
    pub bytes_checked: u64,
    /// Entries walked in the heads of all branches.
    pub entries_checked: u64,
    pub problems: Vec<String>,
}

/// Filesystem space under the data directory, as `statvfs` reports it.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct Space {
    pub block_size: u64,
    pub blocks: u64,
    pub blocks_free: u64,
    pub blocks_available: u64,
    pub files: u64,
    pub files_free: u64,
}

/// Counts for `alknet stats`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Stats {
    pub buckets: u64,
    pub branches: u64,
    pub versions: u64,
    pub rows: u64,
    /// Distinct blobs referenced by the trees, and their total size.
    pub blobs: u64,
    pub blob_bytes: u64,
    /// Everything under the data directory, as stored on disk.
    pub disk_bytes: u64,
    pub pending_jobs: u64,
    /// Blobs a read found corrupt (their bytes do not match their hash).
    pub corrupt_blobs: Vec<String>,
}

impl Store {
    /// Opens (creating if needed) the store in `dir`: `alknet.db`, `blobs/`,
    /// `tmp/`. Staging files left by dead processes are removed.
    ///
    /// The directory is the owner's alone (0700, the database 0600): it
    /// holds every stored byte, past all grants. One that others can enter
    /// is tightened, with a warning.
    pub fn open(dir: &Path) -> Result<Store> {
        let dir = &std::path::absolute(dir).map_err(|e| Error::io(dir, e))?;
        let tmp = dir.join("tmp");
        private_dir(dir)?;
        private_dir(&tmp)?;
        private_dir(&dir.join("blobs"))?;
        let db_path = dir.join("alknet.db");
        // A new database is the owner's from its first byte; SQLite gives
        // its -wal and -shm files the same mode.
        {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .open(&db_path)
                .map_err(|e| Error::io(&db_path, e))?;
        }
        let db = Db::open(&db_path)?;
        let clock = crate::replica::Clock::load(&db)?;
        for suffix in ["", "-wal", "-shm"] {
            let path = PathBuf::from(format!("{}{suffix}", db_path.display()));
            tighten(&path, 0o600)?;
        }
        let store = Store {
            inner: Arc::new(Inner {
                dir: dir.to_owned(),
                db,
                blobs: Blobs::new(dir.join("blobs")),
                tmp,
                clock,
                limits: Default::default(),
                reserved: Default::default(),
            }),
        };
        store.clean_stale_sessions()?;
        Ok(store)
    }

    /// Claims the blob store now, waiting (with a message on the log) while
    /// another process holds it. A long-running process that serves reads
    /// (a mount) calls this before it starts, so that it never starts
    /// serving and then blocks its first read.
    pub async fn claim_blobs(&self) -> Result<()> {
        self.inner.blobs.open_now().await
    }

    /// Claims the blob store now if no other process holds it; whether it
    /// did. A process that would rather go through the holder (a mount
    /// beside a node that is starting) asks this instead of waiting.
    pub async fn try_claim_blobs(&self) -> Result<bool> {
        self.inner.blobs.try_open_now().await
    }

    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Installs the write limits every tree of this store obeys.
    pub fn set_limits(&self, limits: crate::limits::Limits) {
        self.inner.limits.set(limits);
    }

    /// The write limits in force.
    pub fn limits(&self) -> crate::limits::Limits {
        self.inner.limits.get()
    }

    /// Checks that a file (`what`, for the message) may grow from `old_len`
    /// to `new_len` bytes: [`Error::TooLarge`] past `max_file_size`,
    /// [`Error::NoSpace`] if the disk cannot hold the growth and the reserve.
    pub fn check_growth(&self, what: &str, old_len: u64, new_len: u64) -> Result<()> {
        self.inner.limits.check(&self.inner.dir, what, old_len, new_len)
    }

    /// Checks that the disk can take `bytes` more (what an upload of several
    /// files declares) and keep its reserve: [`Error::NoSpace`] if not.
    pub fn check_room(&self, what: &str, bytes: u64) -> Result<()> {
        self.inner.limits.check_disk(&self.inner.dir, what, bytes)
    }

    /// Flushes and closes the blob store. Call before the process exits.
    pub async fn close(&self) -> Result<()> {
        self.inner.blobs.close().await
    }

    /// Removes the staging files of write sessions whose process is gone.
    fn clean_stale_sessions(&self) -> Result<usize> {
        let stale: Vec<(i64, String)> = self.inner.db.read(|c| {
            let mut stmt = c.prepare("SELECT id, staging, pid FROM write_sessions")?;
            let rows = stmt.query_map([], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?, r.get::<_, i64>(2)?))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (id, staging, pid) = row?;
                if !process_alive(pid as u32) {
                    out.push((id, staging));
                }
            }
            Ok(out)
        })?;
        for (id, staging) in &stale {
            std::fs::remove_file(staging).ok();
            self.inner.db.write(|tx| {
                tx.execute("DELETE FROM write_sessions WHERE id = ?1", [id])?;
                Ok(())
            })?;
        }
        Ok(stale.len())
    }

    // ---- buckets ---------------------------------------------------------

    /// Creates an empty branch with no parent (the first state of a branch a
    /// push publishes).
    pub(crate) fn create_empty_branch(&self, bucket: &str, branch: &str) -> Result<Version> {
        self.inner.db.write(|tx| {
            let bucket_id = Self::bucket_id(tx, bucket)?;
            tx.execute(
                "INSERT INTO branches (bucket_id, name, created_ms) VALUES (?1, ?2, ?3)",
                params![bucket_id, branch, now_ms()],
            )?;
            record(tx, tx.last_insert_rowid(), bucket, branch, "branch")
        })
    }

    /// Creates a bucket with an empty `main` branch.
    pub fn create_bucket(&self, name: &str, kind: &str) -> Result<()> {
        check_bucket_name(name)?;
        self.inner.db.write(|tx| {
            let inserted = tx.execute(
                "INSERT OR IGNORE INTO buckets (name, kind, created_ms) VALUES (?1, ?2, ?3)",
                params![name, kind, now_ms()],
            )?;
            if inserted == 0 {
                return Err(Error::BucketExists(name.to_owned()));
            }
            let bucket_id = tx.last_insert_rowid();
            tx.execute(
                "INSERT INTO branches (bucket_id, name, created_ms) VALUES (?1, ?2, ?3)",
                params![bucket_id, DEFAULT_BRANCH, now_ms()],
            )?;
            record(tx, tx.last_insert_rowid(), name, DEFAULT_BRANCH, "bucket")?;
            Ok(())
        })
    }

    pub fn list_buckets(&self) -> Result<Vec<BucketInfo>> {
        self.inner.db.read(|c| {
            let mut stmt = c.prepare(
                "SELECT b.name, b.kind, b.created_ms, (SELECT count(*) FROM branches WHERE bucket_id = b.id), b.quota
                 FROM buckets b ORDER BY b.name",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok(BucketInfo {
                    name: r.get(0)?,
                    kind: r.get(1)?,
                    created_ms: r.get(2)?,
                    branches: r.get::<_, i64>(3)? as u64,
                    quota: r.get::<_, Option<i64>>(4)?.map(|q| q.max(0) as u64),
                })
            })?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })
    }

    /// Sets (or with `None` removes) the bucket's quota: the file bytes any
    /// one of its branch heads may hold, open writes included (quota.rs).
    /// A head already past a new quota keeps its files; it only cannot grow.
    pub fn set_quota(&self, name: &str, quota: Option<u64>) -> Result<()> {
        check_bucket_name(name)?;
        self.inner.db.write(|tx| {
            let n = tx.execute(
                "UPDATE buckets SET quota = ?1 WHERE name = ?2",
                params![quota.map(|q| q.min(i64::MAX as u64) as i64), name],
            )?;
            if n == 0 {
                return Err(Error::NoSuchBucket(name.to_owned()));
            }
            Ok(())
        })
    }

    /// The file bytes at the head of `bucket@branch` (what its quota counts).
    pub fn head_bytes(&self, bucket: &str, branch: &str) -> Result<u64> {
        let tree = self.tree(bucket, branch, &At::Head)?;
        self.inner.db.read(|c| tree.head_bytes(c))
    }

    /// Deletes a bucket with all its branches, history and snapshots. Its
    /// blobs are reclaimed by the next [`Store::gc`], which this enqueues.
    pub fn delete_bucket(&self, name: &str) -> Result<()> {
        check_bucket_name(name)?;
        self.inner.db.write(|tx| {
            let id: i64 = tx
                .query_row("SELECT id FROM buckets WHERE name = ?1", [name], |r| r.get(0))
                .optional()?
                .ok_or_else(|| Error::NoSuchBucket(name.to_owned()))?;
            let branches = "(SELECT id FROM branches WHERE bucket_id = ?1)";
            tx.execute(&format!("DELETE FROM nodes WHERE branch_id IN {branches}"), [id])?;
            tx.execute(&format!("DELETE FROM versions WHERE branch_id IN {branches}"), [id])?;
            tx.execute(&format!("DELETE FROM snapshots WHERE branch_id IN {branches}"), [id])?;
            crate::replica::forget(tx, branches, id)?;
            // Children first: parent_id references must not dangle mid-delete.
            tx.execute("UPDATE branches SET parent_id = NULL WHERE bucket_id = ?1", [id])?;
            tx.execute("DELETE FROM branches WHERE bucket_id = ?1", [id])?;
            tx.execute("DELETE FROM refs WHERE bucket_id = ?1", [id])?;
            tx.execute("DELETE FROM attachments WHERE bucket_id = ?1", [id])?;
            tx.execute("DELETE FROM locks WHERE bucket_id = ?1", [id])?;
            tx.execute("DELETE FROM shares WHERE bucket_id = ?1", [id])?;
            tx.execute("DELETE FROM grants WHERE bucket_id = ?1", [id])?;
            tx.execute("DELETE FROM peer_grants WHERE bucket_id = ?1", [id])?;
            tx.execute("DELETE FROM sync_links WHERE bucket_id = ?1", [id])?;
            tx.execute("DELETE FROM sync_status WHERE bucket = ?1", [name])?;
            tx.execute("DELETE FROM buckets WHERE id = ?1", [id])?;
            let event = serde_json::json!({"op": "delete-bucket", "bucket": name});
            freed(tx, &event)?;
            Ok(())
        })
    }

    // ---- branches --------------------------------------------------------

    pub(crate) fn bucket_id(c: &Connection, bucket: &str) -> Result<i64> {
        c.query_row("SELECT id FROM buckets WHERE name = ?1", [bucket], |r| r.get(0))
            .optional()?
            .ok_or_else(|| Error::NoSuchBucket(bucket.to_owned()))
    }

    pub(crate) fn branch_id(c: &Connection, bucket: &str, branch: &str) -> Result<i64> {
        let bucket_id = Self::bucket_id(c, bucket)?;
        c.query_row(
            "SELECT id FROM branches WHERE bucket_id = ?1 AND name = ?2",
            params![bucket_id, branch],
            |r| r.get(0),
        )
        .optional()?
        .ok_or_else(|| Error::NoSuchBranch {
            bucket: bucket.to_owned(),
            branch: branch.to_owned(),
        })
    }

    /// The version an `At` means on a branch.
    fn resolve_at(c: &Connection, bucket: &str, branch: &str, branch_id: i64, at: &At) -> Result<Option<Version>> {
        let no_such = |v: String| Error::NoSuchVersion {
            bucket: bucket.to_owned(),
            branch: branch.to_owned(),
            version: v,
        };
        match at {
            At::Head => Ok(None),
            At::Version(v) => {
                let newest: i64 = c
                    .query_row("SELECT seq FROM sqlite_sequence WHERE name = 'versions'", [], |r| {
                        r.get(0)
                    })
                    .optional()?
                    .unwrap_or(0);
                let (created, pruned): (Option<i64>, Option<i64>) = c.query_row(
                    "SELECT (SELECT min(version) FROM versions WHERE branch_id = ?1),
                            (SELECT pruned_before FROM branches WHERE id = ?1)",
                    [branch_id],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )?;
                let v_i = i64::try_from(*v).unwrap_or(i64::MAX);
                // Before its creation the branch did not exist; before its
                // prune point only protected versions are still whole.
                let too_old = created.is_some_and(|c| v_i < c)
                    || (pruned.is_some_and(|p| v_i < p) && !protected_versions(c, branch_id)?.contains(&v_i));
                if *v == 0 || v_i > newest || too_old {
                    return Err(no_such(v.to_string()));
                }
                Ok(Some(Version(*v)))
            }
            At::Snapshot(name) => {
                let v: Option<i64> = c
                    .query_row(
                        "SELECT version FROM snapshots WHERE branch_id = ?1 AND name = ?2",
                        params![branch_id, name],
                        |r| r.get(0),
                    )
                    .optional()?;
                v.map(|v| Some(Version(v as u64))).ok_or_else(|| no_such(name.clone()))
            }
        }
    }

    /// Forgets the history of `bucket@branch` before version `before`: every
    /// tree row that no longer decides what some readable version shows is
    /// deleted, and so are the commit records. Still readable afterwards: the
    /// head, every version from `before` on, the branch's named snapshots, and
    /// the points other branches were forked from. Their blobs stay; the rest
    /// are reclaimed by the GC this queues.
    pub fn prune(&self, bucket: &str, branch: &str, before: Version) -> Result<PruneReport> {
        let before = i64::try_from(before.0).unwrap_or(i64::MAX);
        self.inner.db.write(|tx| {
            let id = Self::branch_id(tx, bucket, branch)?;
            let mut keep_points = protected_versions(tx, id)?;
            keep_points.retain(|p| *p < before);
            keep_points.push(before);
            keep_points.sort_unstable();
            // Newest row first within each (parent, name): the first row at or
            // below a keep point decides that point; every other old row goes.
            let doomed: Vec<i64> = {
                let mut stmt = tx.prepare(
                    "SELECT seq, parent, name, version FROM nodes WHERE branch_id = ?1 AND version < ?2
                     ORDER BY parent, name, version DESC, seq DESC",
                )?;
                let rows = stmt.query_map(params![id, before], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, i64>(3)?,
                    ))
                })?;
                let mut doomed = Vec::new();
                let mut key: Option<(i64, String)> = None;
                // Keep points not yet decided for the current key, highest first.
                let mut open: Vec<i64> = Vec::new();
                for row in rows {
                    let (seq, parent, name, version) = row?;
                    if key.as_ref() != Some(&(parent, name.clone())) {
                        key = Some((parent, name));
                        open = keep_points.clone();
                    }
                    let mut decides = false;
                    while open.last().is_some_and(|p| *p >= version) {
                        open.pop();
                        decides = true;
                    }
                    if !decides {
                        doomed.push(seq);
                    }
                }
                doomed
            };
            let mut del = tx.prepare_cached("DELETE FROM nodes WHERE seq = ?1")?;
            for seq in &doomed {
                del.execute([seq])?;
            }
            // The oldest row anchors the branch; the newest carries the
            // head's byte count (quota.rs).
            let versions = tx.execute(
                "DELETE FROM versions WHERE branch_id = ?1 AND version < ?2
                   AND version NOT IN (SELECT version FROM snapshots WHERE branch_id = ?1)
                   AND version <> (SELECT min(version) FROM versions WHERE branch_id = ?1)
                   AND version <> (SELECT max(version) FROM versions WHERE branch_id = ?1)",
                params![id, before],
            )?;
            tx.execute(
                "UPDATE branches SET pruned_before = max(coalesce(pruned_before, 0), ?2) WHERE id = ?1",
                params![id, before],
            )?;
            freed(
                tx,
                &serde_json::json!({"op": "prune", "bucket": bucket, "branch": branch, "before": before}),
            )?;
            Ok(PruneReport {
                rows: doomed.len() as u64,
                commits: versions as u64,
            })
        })
    }

    /// Forks `new` from `from` at `at` (the head by default) in O(1): one row.
    /// Later commits on either side do not show on the other.
    pub fn create_branch(&self, bucket: &str, new: &str, from: &str, at: &At) -> Result<Version> {
        check_branch_name("branch name", new)?;
        self.inner.db.write(|tx| {
            let parent = Self::branch_id(tx, bucket, from)?;
            let bucket_id = Self::bucket_id(tx, bucket)?;
            let exists: bool = tx.query_row(
                "SELECT EXISTS (SELECT 1 FROM branches WHERE bucket_id = ?1 AND name = ?2)",
                params![bucket_id, new],
                |r| r.get(0),
            )?;
            if exists {
                return Err(Error::BranchExists {
                    bucket: bucket.to_owned(),
                    branch: new.to_owned(),
                });
            }
            let pinned = Self::resolve_at(tx, bucket, from, parent, at)?;
            tx.execute(
                "INSERT INTO branches (bucket_id, name, parent_id, created_ms) VALUES (?1, ?2, ?3, ?4)",
                params![bucket_id, new, parent, now_ms()],
            )?;
            let id = tx.last_insert_rowid();
            // The branch's first version is its creation; everything the parent
            // committed before it (or up to the pinned version) is inherited.
            let v = record(tx, id, bucket, new, "branch")?;
            let fork = pinned.map(|p| p.0 as i64).unwrap_or(v.0 as i64);
            tx.execute("UPDATE branches SET fork_version = ?1 WHERE id = ?2", params![fork, id])?;
            // It starts with the parent's bytes at the fork (quota.rs).
            tx.execute(
                "UPDATE versions SET bytes = (SELECT bytes FROM versions WHERE branch_id = ?1 AND version <= ?2
                     ORDER BY version DESC LIMIT 1) WHERE version = ?3",
                params![parent, fork, v.0 as i64],
            )?;
            Ok(v)
        })
    }

    pub fn list_branches(&self, bucket: &str) -> Result<Vec<BranchInfo>> {
        self.inner.db.read(|c| {
            let bucket_id = Self::bucket_id(c, bucket)?;
            let mut stmt = c.prepare(
                "SELECT b.name, p.name, b.fork_version, (SELECT max(version) FROM versions WHERE branch_id = b.id), b.created_ms
                 FROM branches b LEFT JOIN branches p ON p.id = b.parent_id
                 WHERE b.bucket_id = ?1 ORDER BY b.name",
            )?;
            let rows = stmt.query_map([bucket_id], |r| {
                Ok(BranchInfo {
                    name: r.get(0)?,
                    parent: r.get(1)?,
                    fork_version: r.get::<_, Option<i64>>(2)?.map(|v| Version(v as u64)),
                    head: r.get::<_, Option<i64>>(3)?.map(|v| Version(v as u64)),
                    created_ms: r.get(4)?,
                })
            })?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })
    }

    /// Deletes a branch and its history. `main` and branches that others were
    /// forked from cannot be deleted (their children read through them).
    pub fn delete_branch(&self, bucket: &str, branch: &str) -> Result<()> {
        if branch == DEFAULT_BRANCH {
            return Err(Error::BranchInUse {
                bucket: bucket.to_owned(),
                branch: branch.to_owned(),
                reason: "it is the bucket's main branch; delete the bucket instead".into(),
            });
        }
        self.inner.db.write(|tx| {
            let id = Self::branch_id(tx, bucket, branch)?;
            let children: Vec<String> = {
                let mut stmt = tx.prepare("SELECT name FROM branches WHERE parent_id = ?1 ORDER BY name")?;
                stmt.query_map([id], |r| r.get(0))?.collect::<rusqlite::Result<_>>()?
            };
            if !children.is_empty() {
                return Err(Error::BranchInUse {
                    bucket: bucket.to_owned(),
                    branch: branch.to_owned(),
                    reason: format!("branches {} were forked from it", children.join(", ")),
                });
            }
            tx.execute("DELETE FROM nodes WHERE branch_id = ?1", [id])?;
            tx.execute("DELETE FROM versions WHERE branch_id = ?1", [id])?;
            tx.execute("DELETE FROM snapshots WHERE branch_id = ?1", [id])?;
            crate::replica::forget(tx, "(?1)", id)?;
            tx.execute("DELETE FROM branches WHERE id = ?1", [id])?;
            let event = serde_json::json!({"op": "delete-branch", "bucket": bucket, "branch": branch});
            freed(tx, &event)?;
            Ok(())
        })
    }

    /// The tree of `bucket@branch` at its head or at a past point.
    pub fn tree(&self, bucket: &str, branch: &str, at: &At) -> Result<Tree> {
        self.inner.db.read(|c| {
            let branch_id = Self::branch_id(c, bucket, branch)?;
            let at = Self::resolve_at(c, bucket, branch, branch_id, at)?;
            let limit = at.map(|v| v.0 as i64).unwrap_or_else(head_limit);
            let (levels, chain) = chain(c, branch_id, limit)?;
            let kind: String = c.query_row("SELECT kind FROM buckets WHERE name = ?1", [bucket], |r| r.get(0))?;
            Ok(Tree {
                published: kind == REPO_KIND,
                inner: self.inner.clone(),
                bucket: bucket.to_owned(),
                branch: branch.to_owned(),
                branch_id,
                chain,
                levels,
                at,
            })
        })
    }

    pub fn snapshots(&self, bucket: &str, branch: &str) -> Result<Vec<SnapshotInfo>> {
        self.inner.db.read(|c| {
            let id = Self::branch_id(c, bucket, branch)?;
            let mut stmt = c.prepare("SELECT name, version FROM snapshots WHERE branch_id = ?1 ORDER BY version")?;
            let rows = stmt.query_map([id], |r| {
                Ok(SnapshotInfo {
                    name: r.get(0)?,
                    version: Version(r.get::<_, i64>(1)? as u64),
                })
            })?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })
    }

    // ---- history and events ----------------------------------------------

    /// The commits a tree is made of, newest first: its own, then those of
    /// the branches it was forked from, up to their fork points.
    pub fn log(&self, tree: &Tree, limit: usize) -> Result<Vec<Commit>> {
        self.log_before(tree, None, limit)
    }

    /// [`Store::log`] from below version `before` (a page of a long history).
    pub fn log_before(&self, tree: &Tree, before: Option<Version>, limit: usize) -> Result<Vec<Commit>> {
        self.inner.db.read(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT v.version, bu.name, br.name, v.at_ms, v.op, v.paths
                 FROM json_each(?1) AS ch
                 JOIN versions v ON v.branch_id = ch.value->>0 AND v.version <= ch.value->>1
                 JOIN branches br ON br.id = v.branch_id JOIN buckets bu ON bu.id = br.bucket_id
                 WHERE v.version < ?3
                 ORDER BY v.version DESC LIMIT ?2",
            )?;
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            let before = before.map_or(i64::MAX, |v| v.0 as i64);
            let rows = stmt.query_map(params![&*tree.chain, limit, before], commit_from_row)?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })
    }

    /// The commits on `bucket@branch` after version `from`, oldest first.
    pub fn commits_since(&self, bucket: &str, branch: &str, from: Version, limit: usize) -> Result<Vec<Commit>> {
        self.inner.db.read(|c| {
            let id = Self::branch_id(c, bucket, branch)?;
            let mut stmt = c.prepare_cached(
                "SELECT v.version, bu.name, br.name, v.at_ms, v.op, v.paths
                 FROM versions v JOIN branches br ON br.id = v.branch_id JOIN buckets bu ON bu.id = br.bucket_id
                 WHERE v.branch_id = ?1 AND v.version > ?2 ORDER BY v.version LIMIT ?3",
            )?;
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            let rows = stmt.query_map(params![id, from.0 as i64, limit], commit_from_row)?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })
    }

    /// A stream of the commits on `bucket@branch` after `from`, including
    /// those made by other processes, woken by honker's update watcher.
    pub fn watch(&self, bucket: &str, branch: &str, from: Version) -> Result<Watch> {
        self.tree(bucket, branch, &At::Head)?;
        let watcher = honker_core::SharedUpdateWatcher::new(self.inner.db.path().to_owned());
        let (_, wake) = watcher.subscribe();
        Ok(Watch {
            store: self.clone(),
            bucket: bucket.to_owned(),
            branch: branch.to_owned(),
            last: from,
            _watcher: watcher,
            wake,
        })
    }

    // ---- maintenance -------------------------------------------------------

    /// Deletes every blob that no version of any tree references and no
    /// write in flight holds. History is kept: a blob is live as long as some
    /// version of some branch can still read it.
    pub async fn gc(&self) -> Result<GcReport> {
        let no_imports = self.inner.blobs.gc_guard().await;
        self.gc_holding(no_imports).await
    }

    /// [`Store::gc`] with imports already shut out by `_no_imports`.
    async fn gc_holding(&self, _no_imports: tokio::sync::OwnedRwLockWriteGuard<()>) -> Result<GcReport> {
        let stale_sessions = self.clean_stale_sessions()?;
        let live: HashSet<BlobHash> = self.inner.db.read(|c| {
            let mut stmt =
                c.prepare("SELECT hash FROM nodes WHERE hash IS NOT NULL UNION SELECT hash FROM attachments")?;
            let rows = stmt.query_map([], |r| r.get::<_, Vec<u8>>(0))?;
            let mut out = HashSet::new();
            for h in rows {
                let h = h?;
                out.insert(BlobHash(
                    h.try_into()
                        .map_err(|_| Error::Internal("a stored hash is not 32 bytes".into()))?,
                ));
            }
            Ok(out)
        })?;
        let before = self.inner.blobs.list().await?.len();
        let live_count = live.len();
        self.inner.blobs.collect(live).await?;
        let after = self.inner.blobs.list().await?.len();
        self.inner.db.write(|tx| {
            let claimed: String = tx.query_row("SELECT honker_claim_batch(?1, 'gc', 1000, 60)", [GC_QUEUE], |r| {
                r.get(0)
            })?;
            let ids: Vec<i64> = serde_json::from_str::<Vec<serde_json::Value>>(&claimed)
                .unwrap_or_default()
                .iter()
                .filter_map(|j| j["id"].as_i64())
                .collect();
            for id in ids {
                tx.query_row("SELECT honker_ack(?1, 'gc')", [id], |_| Ok(()))?;
            }
            Ok(())
        })?;
        Ok(GcReport {
            live: live_count,
            before,
            after,
            stale_sessions,
        })
    }

    /// Runs the garbage collections that deletions queue, for as long as the
    /// returned future is polled: every `every`, if a job waits on
    /// [`GC_QUEUE`], collect. For a long-running process that holds the blob
    /// store (where `alknet gc` from another process would wait).
    pub async fn gc_task(self, every: Duration) {
        loop {
            tokio::time::sleep(every).await;
            self.inner.blobs.sweep_temp();
            match self.gc_if_queued().await {
                Ok(Some(r)) => tracing::info!(live = r.live, reclaimed = r.before - r.after, "gc"),
                Ok(None) => {}
                Err(e) => tracing::warn!("gc failed: {e}"),
            }
        }
    }

    async fn gc_if_queued(&self) -> Result<Option<GcReport>> {
        let waiting: i64 = self.inner.db.read(|c| {
            Ok(
                c.query_row("SELECT count(*) FROM _honker_live WHERE queue = ?1", [GC_QUEUE], |r| {
                    r.get(0)
                })?,
            )
        })?;
        if waiting == 0 {
            return Ok(None);
        }
        // Never queue behind a long upload: a waiting collector would hold up
        // every new import until that upload ends. Try again next round.
        let Some(no_imports) = self.inner.blobs.try_gc_guard() else {
            tracing::debug!("gc deferred: imports in flight");
            return Ok(None);
        };
        self.gc_holding(no_imports).await.map(Some)
    }

    /// Checks the database and every referenced blob: present, complete, the
    /// right size, and its bytes hashing to its name.
    pub async fn fsck(&self) -> Result<FsckReport> {
        let mut problems = Vec::new();
        let (integrity, refs): (String, Vec<BlobRef>) = self.inner.db.read(|c| {
            let integrity: String = c.query_row("PRAGMA quick_check", [], |r| r.get(0))?;
            let mut stmt = c.prepare(
                "SELECT n.hash, n.size, bu.name, br.name, n.name FROM nodes n
                 JOIN branches br ON br.id = n.branch_id JOIN buckets bu ON bu.id = br.bucket_id
                 WHERE n.hash IS NOT NULL GROUP BY n.hash
                 UNION ALL
                 SELECT a.hash, a.size, bu.name, 'attachments', a.name FROM attachments a
                 JOIN buckets bu ON bu.id = a.bucket_id",
            )?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))?;
            Ok((integrity, rows.collect::<rusqlite::Result<_>>()?))
        })?;
        if integrity != "ok" {
            problems.push(format!("database: {integrity}"));
        }
        let mut bytes_checked = 0;
        for (hash, size, bucket, branch, name) in &refs {
            let Ok(hash) = <[u8; 32]>::try_from(hash.as_slice()).map(BlobHash) else {
                problems.push(format!("{bucket}@{branch}: entry {name:?} has a malformed hash"));
                continue;
            };
            let whose = format!("blob {hash} (file {name:?} in {bucket}@{branch})");
            match self.inner.blobs.complete_size(&hash).await? {
                None => problems.push(format!("{whose} is missing or incomplete")),
                Some(s) if s != *size as u64 => problems.push(format!("{whose} has {s} bytes, the tree says {size}")),
                Some(_) => match self.inner.blobs.verify(&hash).await {
                    Ok(true) => bytes_checked += *size as u64,
                    Ok(false) => problems.push(format!("{whose} is corrupt: its bytes do not hash to its name")),
                    Err(e) => problems.push(format!("{whose} cannot be read: {e}")),
                },
            }
        }
        let mut entries_checked = 0;
        for bucket in self.list_buckets()? {
            for branch in self.list_branches(&bucket.name)? {
                let tree = self.tree(&bucket.name, &branch.name, &At::Head)?;
                entries_checked += check_tree(&tree, &mut problems)?;
            }
        }
        Ok(FsckReport {
            blobs_checked: refs.len(),
            bytes_checked,
            entries_checked,
            problems,
        })
    }

    /// Space on the filesystem that holds the data directory (for `df`).
    pub fn space(&self) -> Result<Space> {
        let v = rustix::fs::statvfs(&self.inner.dir).map_err(|e| Error::io(&self.inner.dir, e.into()))?;
        Ok(Space {
            block_size: v.f_frsize,
            blocks: v.f_blocks,
            blocks_free: v.f_bfree,
            blocks_available: v.f_bavail,
            files: v.f_files,
            files_free: v.f_ffree,
        })
    }

    pub async fn stats(&self) -> Result<Stats> {
        let mut stats = self.inner.db.read(|c| {
            let count = |sql: &str| -> Result<u64> { Ok(c.query_row(sql, [], |r| r.get::<_, i64>(0))? as u64) };
            Ok(Stats {
                buckets: count("SELECT count(*) FROM buckets")?,
                branches: count("SELECT count(*) FROM branches")?,
                versions: count("SELECT count(*) FROM versions")?,
                rows: count("SELECT count(*) FROM nodes")?,
                blobs: count("SELECT count(DISTINCT hash) FROM nodes WHERE hash IS NOT NULL")?,
                blob_bytes: count(
                    "SELECT coalesce(sum(size), 0) FROM (SELECT max(size) AS size FROM nodes WHERE hash IS NOT NULL GROUP BY hash)",
                )?,
                disk_bytes: 0,
                pending_jobs: count("SELECT count(*) FROM _honker_live")?,
                corrupt_blobs: c
                    .prepare("SELECT hash FROM corrupt_blobs ORDER BY seen_ms")?
                    .query_map([], |r| r.get(0))?
                    .collect::<rusqlite::Result<_>>()?,
            })
        })?;
        stats.disk_bytes = disk_usage(&self.inner.dir);
        Ok(stats)
    }
}

/// Versions of a branch that pruning keeps readable: its named snapshots and
/// the points other branches were forked from it.
fn protected_versions(c: &Connection, branch_id: i64) -> Result<Vec<i64>> {
    let mut stmt = c.prepare_cached(
        "SELECT version FROM snapshots WHERE branch_id = ?1
         UNION SELECT fork_version FROM branches WHERE parent_id = ?1 AND fork_version IS NOT NULL",
    )?;
    let rows = stmt.query_map([branch_id], |r| r.get(0))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Checks the head of one branch: every entry has what its kind needs, and no
/// entry id lives in two places. Returns the number of entries walked.
fn check_tree(tree: &Tree, problems: &mut Vec<String>) -> Result<u64> {
    let mut seen: std::collections::HashMap<EntryId, BucketPath> = std::collections::HashMap::new();
    let entries = tree.walk(&BucketPath::root())?;
    let whose = |p: &BucketPath| format!("{}@{}:{p}", tree.bucket(), tree.branch());
    for (path, e) in &entries {
        if let Some(first) = seen.insert(e.id, path.clone()) {
            problems.push(format!(
                "entry {} is at both {} and {}",
                e.id.0,
                whose(&first),
                whose(path)
            ));
        }
        if let Err(err) = crate::name::check_entry_name(&e.name) {
            problems.push(format!(
                "{}: entry {} has a bad name ({err}); remove it with `alknet rm --entry {} {}@{}`",
                whose(path),
                e.id.0,
                e.id.0,
                tree.bucket(),
                tree.branch()
            ));
        }
        match e.kind {
            Kind::File if e.hash.is_none() => problems.push(format!("{}: a file without a hash", whose(path))),
            Kind::Symlink if e.target.is_none() => {
                problems.push(format!("{}: a symlink without a target", whose(path)))
            }
            _ => {}
        }
    }
    Ok(entries.len() as u64)
}

/// One referenced blob as fsck sees it: hash, size, and one place that uses it
/// (bucket, branch, entry name).
type BlobRef = (Vec<u8>, i64, String, String, String);

/// Inserts a commit record without tree rows (bucket and branch creation).
fn record(tx: &Connection, branch_id: i64, bucket: &str, branch: &str, op: &str) -> Result<Version> {
    let v: i64 = tx.query_row(
        // No rows change: the branch's byte count carries over.
        "INSERT INTO versions (branch_id, at_ms, op, paths, bytes) VALUES (?1, ?2, ?3, '[]',
             (SELECT bytes FROM versions WHERE branch_id = ?1 ORDER BY version DESC LIMIT 1)) RETURNING version",
        params![branch_id, now_ms(), op],
        |r| r.get(0),
    )?;
    notify(
        tx,
        &serde_json::json!({"version": v, "bucket": bucket, "branch": branch, "op": op, "paths": []}),
    )?;
    Ok(Version(v as u64))
}

/// Records a deletion that frees content: its event, and a GC job, both in
/// the deleting transaction.
fn freed(tx: &Connection, event: &serde_json::Value) -> Result<()> {
    notify(tx, event)?;
    enqueue_gc(tx, event)
}

fn enqueue_gc(tx: &Connection, why: &serde_json::Value) -> Result<()> {
    tx.query_row(
        "SELECT honker_enqueue(?1, ?2, NULL, NULL, 0, 3, NULL)",
        params![GC_QUEUE, why.to_string()],
        |_| Ok(()),
    )?;
    Ok(())
}

fn commit_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Commit> {
    let paths: String = r.get(5)?;
    Ok(Commit {
        version: Version(r.get::<_, i64>(0)? as u64),
        bucket: r.get(1)?,
        branch: r.get(2)?,
        at_ms: r.get(3)?,
        op: r.get(4)?,
        paths: serde_json::from_str(&paths).unwrap_or_default(),
    })
}

/// Bytes allocated on disk under `dir` (sparse files count what they use).
fn disk_usage(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let Ok(md) = e.metadata() else { continue };
            if md.is_dir() {
                stack.push(e.path());
            } else {
                total += md.blocks() * 512;
            }
        }
    }
    total
}

/// See [`Store::watch`].
pub struct Watch {
    store: Store,
    bucket: String,
    branch: String,
    last: Version,
    /// Polls `PRAGMA data_version` on its own thread; dropping it stops that.
    _watcher: honker_core::SharedUpdateWatcher,
    wake: std::sync::mpsc::Receiver<()>,
}

impl Watch {
    /// The next commits after the last one returned, waiting up to `timeout`
    /// for one to happen. Empty if none came.
    pub fn next(&mut self, timeout: Duration) -> Result<Vec<Commit>> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let commits = self.store.commits_since(&self.bucket, &self.branch, self.last, 1000)?;
            if let Some(c) = commits.last() {
                self.last = c.version;
                return Ok(commits);
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Ok(Vec::new());
            }
            // A wake means "something committed"; spurious ones just loop. A
            // watcher that is gone (its database vanished) wakes nobody:
            // poll slowly instead of spinning.
            if let Err(std::sync::mpsc::RecvTimeoutError::Disconnected) =
                self.wake.recv_timeout(left.min(Duration::from_secs(1)))
            {
                std::thread::sleep(left.min(Duration::from_millis(200)));
            }
        }
    }
}

/// Creates `dir` (and its parents) owner-only, or tightens it to 0700.
fn private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| Error::io(dir, e))?;
    tighten(dir, 0o700)
}

/// Takes group and other access away from `path` if it exists and has any
/// (`mode` is what it gets then), with a warning.
fn tighten(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(path, e)),
    };
    let now = meta.permissions().mode() & 0o777;
    if now & 0o077 != 0 {
        tracing::warn!(
            "{} was readable by other local users ({now:o}): now {mode:o}",
            path.display()
        );
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(|e| Error::io(path, e))?;
    }
    Ok(())
}

/// Whether process `pid` still runs (a zombie does not): the test for
/// whether what a process left behind (staging files, push quarantines)
/// may be removed.
pub fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name, which is in parentheses.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}
