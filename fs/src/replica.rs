//! Replication: every commit's origin stamp, the registers each commit set
//! per entry, and the deterministic view of a branch that several nodes
//! wrote to (decision 24 argues the model).
//!
//! The tree's rows (`nodes`) stay what every frontend reads. Beside them,
//! each commit of a branch — made here or received — is a `sync_commits` row
//! stamped `(origin, oseq, hlc)`: the node that made it, its sequence on that
//! node and branch, and a hybrid logical clock. Each entry the commit changed
//! is a `sync_ops` row: the entry's whole state after the commit, which of
//! its three registers the commit set (location, content, attributes), and
//! the content op it superseded (`prev`, the version its writer saw).
//!
//! A branch's version vector is, per origin, the highest `oseq` it holds;
//! commits of one origin are applied in order, so the vector says exactly
//! which commits are here. Local version numbers stay local: a received
//! batch is applied as one local commit (op `sync`).
//!
//! The view is a function of the set of ops alone, so every node that holds
//! the same ops shows the same tree ([`present`]):
//! - content is a multi-value register: the heads of an entry's `prev`
//!   graph. The newest live head wins; every other live head stays visible as
//!   a conflict copy with an id and a name each node derives alike; a
//!   delete loses to a concurrent edit;
//! - location and attributes are last-writer-wins by `(hlc, origin)`;
//! - a live entry under a deleted directory brings the directory back;
//! - a cycle of moves is broken by skipping the newest move in it;
//! - two entries that want one name: a directory keeps it over a file, then
//!   the first to take it; the others show under a conflict name.
//!
//! A branch written only here needs none of that (its view is its rows), so
//! only a branch that holds ops from another origin pays for [`present`].

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use rusqlite::{Connection, OptionalExtension, Transaction, params};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::name::{BucketPath, MAX_COMPONENT};
use crate::store::Store;
use crate::tree::Tree;
use crate::types::{BlobHash, Entry, EntryId, Kind, TOMBSTONE, Version};

/// The op set an entry's location.
pub const SET_LOCATION: u8 = 1;
/// The op set an entry's content (kind, hash, size, target) or deleted it.
pub const SET_CONTENT: u8 = 2;
/// The op set an entry's mode or mtime.
pub const SET_ATTRS: u8 = 4;
const SET_ALL: u8 = SET_LOCATION | SET_CONTENT | SET_ATTRS;

/// Per origin, the highest sequence number a branch holds.
pub type Vector = BTreeMap<u64, u64>;

/// The id of an op: the commit `(origin, oseq)` that made it (an entry has
/// at most one op per commit).
pub type OpId = (u64, u64);

/// One commit as it travels between nodes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncCommit {
    pub origin: u64,
    pub oseq: u64,
    pub hlc: u64,
    pub op: String,
    pub ops: Vec<SyncOp>,
}

/// One entry's state after a commit, and what the commit changed of it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncOp {
    pub eid: EntryId,
    /// The content op this one supersedes: the version its writer saw.
    pub prev: Option<OpId>,
    /// Which registers this op sets: [`SET_LOCATION`], [`SET_CONTENT`], [`SET_ATTRS`].
    pub flags: u8,
    pub parent: EntryId,
    pub name: String,
    /// `None`: the entry was deleted.
    pub kind: Option<Kind>,
    pub hash: Option<BlobHash>,
    pub size: u64,
    pub mode: u32,
    pub mtime_ns: i64,
    pub target: Option<String>,
}

/// What [`Store::sync_apply`] did with a batch.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyReport {
    /// Commits new here, now applied.
    pub applied: usize,
    /// Commits already here.
    pub duplicates: usize,
    /// Commits that do not follow the last one held from their origin
    /// (an earlier one is missing); asked for again later.
    pub out_of_order: usize,
    /// The local version the batch was applied in, if anything was.
    pub version: Option<Version>,
    /// Blobs the new ops name (the caller fetches those not held here:
    /// [`Store::missing_blobs`]).
    pub blobs: Vec<BlobHash>,
}

/// A node's identity in stamps, and its hybrid logical clock.
pub(crate) struct Clock {
    origin: u64,
    last: std::sync::Mutex<u64>,
}

impl Clock {
    /// The store's origin id (made once, kept in `alknet_meta`) and the
    /// newest stamp it holds.
    pub(crate) fn load(db: &crate::db::Db) -> Result<Clock> {
        let (origin, last) = db.write(|tx| {
            let origin: Option<String> = tx
                .query_row("SELECT value FROM alknet_meta WHERE key = 'origin'", [], |r| r.get(0))
                .optional()?;
            let origin = match origin.and_then(|o| u64::from_str_radix(&o, 16).ok()) {
                Some(o) => o,
                None => {
                    // 63 bits: it is stored in SQLite's signed integers.
                    let o = (rand::random::<u64>() >> 1).max(1);
                    tx.execute(
                        "INSERT OR REPLACE INTO alknet_meta (key, value) VALUES ('origin', ?1)",
                        [format!("{o:016x}")],
                    )?;
                    o
                }
            };
            let last: i64 = tx.query_row("SELECT coalesce(max(hlc), 0) FROM sync_commits", [], |r| r.get(0))?;
            Ok((origin, last as u64))
        })?;
        Ok(Clock {
            origin,
            last: std::sync::Mutex::new(last),
        })
    }

    pub(crate) fn origin(&self) -> u64 {
        self.origin
    }

    /// A new stamp: later than every stamp made or seen here, and than the
    /// wall clock (milliseconds in the high 48 bits, a counter below).
    fn tick(&self) -> u64 {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let wall = (crate::db::now_ms().max(0) as u64) << 16;
        *last = wall.max(*last + 1);
        *last
    }

    /// Moves the clock past a stamp seen from another node.
    fn witness(&self, hlc: u64) {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        *last = (*last).max(hlc);
    }
}

/// The entries a commit wrote rows for, with their state before it.
#[derive(Default)]
pub(crate) struct Touched(pub(crate) std::cell::RefCell<BTreeMap<EntryId, Option<Entry>>>);

impl Touched {
    pub(crate) fn note(&self, id: EntryId, before: Option<&Entry>) {
        self.0.borrow_mut().entry(id).or_insert_with(|| before.cloned());
    }
}

fn i(v: u64) -> i64 {
    v as i64
}

/// Writes the local commit `version` made: its stamp and one op per entry
/// whose state changed. Called inside the commit's transaction.
///
/// Returns whether the commit may change how entries it did not write show
/// (see [`Reach`]).
pub(crate) fn record_local(tx: &Transaction<'_>, tree: &Tree, op: &str, touched: Touched) -> Result<Reach> {
    let touched = touched.0.into_inner();
    let mut ops = Vec::new();
    let mut reach = Reach::OwnRows;
    for (id, before) in touched {
        let after = tree.by_id(tx, id)?;
        let flags = changed(before.as_ref(), after.as_ref());
        if flags == 0 {
            continue;
        }
        if before.is_some() && (after.is_none() || flags & SET_LOCATION != 0) {
            reach = Reach::Others;
        }
        let state = after.as_ref().or(before.as_ref()).expect("one side holds the entry");
        ops.push(SyncOp {
            eid: id,
            prev: None,
            flags,
            parent: state.parent,
            name: state.name.clone(),
            kind: after.as_ref().map(|e| e.kind),
            hash: after.as_ref().and_then(|e| e.hash),
            size: after.as_ref().map(|e| e.size).unwrap_or(0),
            mode: state.mode,
            mtime_ns: state.mtime_ns,
            target: after.as_ref().and_then(|e| e.target.clone()),
        });
    }
    if ops.is_empty() {
        return Ok(Reach::OwnRows);
    }
    let clock = &tree.inner.clock;
    let oseq: i64 = tx.query_row(
        "SELECT coalesce(max(oseq), 0) + 1 FROM sync_commits WHERE branch_id = ?1 AND origin = ?2",
        params![tree.branch_id, i(clock.origin)],
        |r| r.get(0),
    )?;
    let commit = SyncCommit {
        origin: clock.origin,
        oseq: oseq as u64,
        hlc: clock.tick(),
        op: op.to_owned(),
        ops,
    };
    insert_commit(tx, tree.branch_id, &commit, true)?;
    Ok(reach)
}

/// How far a local commit on a replicated branch can change the view.
///
/// A local change is made on the view, and its ops are the newest there
/// are. Creating an entry at a name the view shows free, or changing an
/// entry's content or attributes in place, changes only the rows the
/// commit wrote: no other entry wanted that free name, the edit supersedes
/// the head that showed (its conflict copies stay as they were), and the
/// newest stamp wins every last-writer register. A delete or a move can
/// change others: a freed name goes back to an entry under a conflict name,
/// a directory kept only for a child goes, a skipped move may now fit. Only
/// those pay for [`present`]. The simulation checks the claim: its nodes
/// skip `present` this way, and must show what a fresh store that
/// presents everything shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Reach {
    OwnRows,
    Others,
}

/// Which registers differ between two states of one entry.
fn changed(before: Option<&Entry>, after: Option<&Entry>) -> u8 {
    match (before, after) {
        (None, None) => 0,
        (None, Some(_)) => SET_ALL,
        (Some(_), None) => SET_CONTENT,
        (Some(b), Some(a)) => {
            let mut flags = 0;
            if (b.parent, &b.name) != (a.parent, &a.name) {
                flags |= SET_LOCATION;
            }
            if (b.kind, b.hash, b.size, &b.target) != (a.kind, a.hash, a.size, &a.target) {
                flags |= SET_CONTENT;
            }
            if (b.mode, b.mtime_ns) != (a.mode, a.mtime_ns) {
                flags |= SET_ATTRS;
            }
            flags
        }
    }
}

/// Inserts a commit and its ops. `local`: the ops' `prev` is what the
/// entry's head is here now, and each content op becomes its entry's head.
fn insert_commit(tx: &Connection, branch_id: i64, c: &SyncCommit, local: bool) -> Result<()> {
    tx.prepare_cached("INSERT INTO sync_commits (branch_id, origin, oseq, hlc, op) VALUES (?1, ?2, ?3, ?4, ?5)")?
        .execute(params![branch_id, i(c.origin), i(c.oseq), i(c.hlc), c.op])?;
    let mut insert = tx.prepare_cached(
        "INSERT OR IGNORE INTO sync_ops (branch_id, eid, origin, oseq, hlc, prev_origin, prev_oseq, flags,
             parent, name, kind, hash, size, mode, mtime_ns, target)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
    )?;
    for op in &c.ops {
        let prev = if local {
            head_of(tx, branch_id, op.eid)?
        } else {
            op.prev
        };
        insert.execute(params![
            branch_id,
            op.eid.0,
            i(c.origin),
            i(c.oseq),
            i(c.hlc),
            prev.map(|p| i(p.0)),
            prev.map(|p| i(p.1)),
            op.flags,
            op.parent.0,
            op.name,
            op.kind.map(Kind::code).unwrap_or(TOMBSTONE),
            op.hash.map(|h| h.0.to_vec()),
            i(op.size),
            op.mode as i64,
            op.mtime_ns,
            op.target,
        ])?;
        if local && op.flags & SET_CONTENT != 0 {
            set_head(tx, branch_id, op.eid, (c.origin, c.oseq))?;
        }
    }
    Ok(())
}

fn head_of(c: &Connection, branch_id: i64, eid: EntryId) -> Result<Option<OpId>> {
    Ok(
        c.prepare_cached("SELECT origin, oseq FROM sync_heads WHERE branch_id = ?1 AND eid = ?2")?
            .query_row(params![branch_id, eid.0], |r| {
                Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64))
            })
            .optional()?,
    )
}

fn set_head(c: &Connection, branch_id: i64, eid: EntryId, id: OpId) -> Result<()> {
    c.prepare_cached("INSERT OR REPLACE INTO sync_heads (branch_id, eid, origin, oseq) VALUES (?1, ?2, ?3, ?4)")?
        .execute(params![branch_id, eid.0, i(id.0), i(id.1)])?;
    Ok(())
}

/// Whether the branch holds commits from another node: only then can its
/// view differ from its rows.
pub(crate) fn is_replicated(c: &Connection, branch_id: i64, origin: u64) -> Result<bool> {
    Ok(
        c.prepare_cached("SELECT EXISTS (SELECT 1 FROM sync_commits WHERE branch_id = ?1 AND origin <> ?2)")?
            .query_row(params![branch_id, i(origin)], |r| r.get(0))?,
    )
}

fn vector(c: &Connection, branch_id: i64) -> Result<Vector> {
    let mut stmt =
        c.prepare_cached("SELECT origin, max(oseq) FROM sync_commits WHERE branch_id = ?1 GROUP BY origin")?;
    let rows = stmt.query_map([branch_id], |r| {
        Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64))
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Forgets the replication state of branches (they are being deleted).
pub(crate) fn forget(tx: &Connection, branches: &str, arg: i64) -> Result<()> {
    for table in ["sync_commits", "sync_ops", "sync_heads", "sync_seeded"] {
        tx.execute(&format!("DELETE FROM {table} WHERE branch_id IN {branches}"), [arg])?;
    }
    Ok(())
}

impl Store {
    /// This node's origin id: what its commits are stamped with.
    pub fn origin(&self) -> u64 {
        self.inner.clock.origin
    }

    /// The commits `bucket@branch` holds, per origin: the highest sequence.
    pub fn sync_vector(&self, bucket: &str, branch: &str) -> Result<Vector> {
        self.inner.db.read(|c| match Self::branch_id(c, bucket, branch) {
            Ok(id) => vector(c, id),
            Err(Error::NoSuchBranch { .. }) => Ok(Vector::new()),
            Err(e) => Err(e),
        })
    }

    /// Up to about `max_ops` ops' worth of the commits `bucket@branch` holds
    /// beyond `have`, each origin's in order. A branch's entries from before
    /// it first replicated (older data directories, entries inherited from
    /// the branch it was forked from) become one `seed` commit first.
    pub fn sync_export(&self, bucket: &str, branch: &str, have: &Vector, max_ops: usize) -> Result<Vec<SyncCommit>> {
        self.sync_seed(bucket, branch)?;
        self.inner.db.read(|c| {
            let id = Self::branch_id(c, bucket, branch)?;
            let mut out = Vec::new();
            let mut ops = 0;
            let mut commits = c.prepare_cached(
                "SELECT oseq, hlc, op FROM sync_commits WHERE branch_id = ?1 AND origin = ?2 AND oseq > ?3
                 ORDER BY oseq",
            )?;
            for (origin, _) in vector(c, id)?
                .into_iter()
                .filter(|(o, s)| have.get(o).is_none_or(|h| h < s))
            {
                let from = have.get(&origin).copied().unwrap_or(0);
                let rows = commits.query_map(params![id, i(origin), i(from)], |r| {
                    Ok((
                        r.get::<_, i64>(0)? as u64,
                        r.get::<_, i64>(1)? as u64,
                        r.get::<_, String>(2)?,
                    ))
                })?;
                for row in rows {
                    let (oseq, hlc, op) = row?;
                    let commit = SyncCommit {
                        origin,
                        oseq,
                        hlc,
                        op,
                        ops: ops_of(c, id, origin, oseq)?,
                    };
                    ops += commit.ops.len().max(1);
                    out.push(commit);
                    if ops >= max_ops {
                        return Ok(out);
                    }
                }
            }
            Ok(out)
        })
    }

    /// Applies commits from other nodes to `bucket@branch` (made empty if
    /// it is new here) in one local commit, and shows the branch's view.
    /// A commit already here is skipped; one whose predecessor from the same
    /// origin is missing is left for later. Applying a batch twice, or
    /// batches in another order, ends in the same tree. Blocking (SQLite).
    pub fn sync_apply(&self, bucket: &str, branch: &str, commits: &[SyncCommit]) -> Result<ApplyReport> {
        crate::name::check_branch_name("branch name", branch)?;
        self.inner.db.read(|c| crate::peers::refuse_repo(c, bucket))?;
        for c in commits {
            self.check_commit(c)?;
        }
        let exists = |s: &Store| s.inner.db.read(|c| Self::branch_id(c, bucket, branch)).is_ok();
        // A failed create is fine if another apply made the branch meanwhile.
        if !exists(self)
            && let Err(e) = self.create_empty_branch(bucket, branch)
            && !exists(self)
        {
            return Err(e);
        }
        self.sync_seed(bucket, branch)?;
        let mut tree = self.tree(bucket, branch, &crate::At::Head)?;
        tree.published = false;
        let root = BucketPath::root();
        let report = std::cell::RefCell::new(ApplyReport::default());
        let result = tree.commit_as("sync", &[&root], false, |rows| {
            let mut report = report.borrow_mut();
            *report = ApplyReport::default();
            let mut have = vector(rows.tx, tree.branch_id)?;
            let mut blobs = BTreeSet::new();
            for c in commits {
                let held = have.get(&c.origin).copied().unwrap_or(0);
                if c.oseq <= held {
                    report.duplicates += 1;
                    continue;
                }
                if c.origin == self.origin() {
                    // This node has every commit it made.
                    return Err(Error::InvalidName {
                        what: "sync commit",
                        value: format!("{:016x}/{}", c.origin, c.oseq),
                        reason: "it claims to come from this node, which never made it",
                    });
                }
                if c.oseq != held + 1 {
                    report.out_of_order += 1;
                    continue;
                }
                insert_commit(rows.tx, tree.branch_id, c, false)?;
                self.inner.clock.witness(c.hlc);
                have.insert(c.origin, c.oseq);
                report.applied += 1;
                blobs.extend(
                    c.ops
                        .iter()
                        .filter(|o| o.kind == Some(Kind::File))
                        .filter_map(|o| o.hash),
                );
            }
            report.blobs = blobs.into_iter().collect();
            if report.applied == 0 {
                // Nothing new: no commit.
                return Err(Error::Internal(NOTHING_NEW.into()));
            }
            present_into(rows, &tree)
        });
        let mut report = report.into_inner();
        // Reads of what the new rows name wait for it while sync fetches it.
        self.inner.blobs.expect(&report.blobs);
        match result {
            Ok((version, ())) => report.version = Some(version),
            Err(Error::Internal(m)) if m == NOTHING_NEW => {}
            Err(e) => return Err(e),
        }
        Ok(report)
    }

    /// Refuses a commit no node of ours could have made: a stamp of zeros, an op on the root,
    /// a name or symlink target the store would refuse, a file without
    /// content. A peer that sends one is broken or hostile; its batch is
    /// refused whole and nothing of it is applied.
    fn check_commit(&self, c: &SyncCommit) -> Result<()> {
        let stamp = format!("{:016x}/{}", c.origin, c.oseq);
        let bad = |reason: &'static str, value: String| Error::InvalidName {
            what: "sync commit",
            value,
            reason,
        };
        if c.origin == 0 || c.origin > i64::MAX as u64 || c.oseq == 0 || c.oseq > i64::MAX as u64 {
            return Err(bad("its origin or sequence number is out of range", stamp));
        }
        for op in &c.ops {
            let at = || format!("{stamp} entry {}", op.eid.0);
            if op.eid.0 <= 0 || op.parent.0 < 0 || op.flags & !SET_ALL != 0 || op.flags == 0 {
                return Err(bad("an op has an impossible entry id, parent or flags", at()));
            }
            crate::name::check_entry_name(&op.name)?;
            match op.kind {
                Some(Kind::File) if op.hash.is_none() => return Err(bad("a file has no content hash", at())),
                Some(Kind::Symlink) => crate::name::check_symlink_target(op.target.as_deref().unwrap_or(""))?,
                _ => {}
            }
        }
        Ok(())
    }

    /// Derives the view of `bucket@branch` from its ops again and writes
    /// what differs from its rows (nothing, unless a bug or a hand edit put
    /// them apart): what every applied batch does, on demand.
    pub fn sync_refresh(&self, bucket: &str, branch: &str) -> Result<Option<Version>> {
        let mut tree = self.tree(bucket, branch, &crate::At::Head)?;
        tree.published = false;
        let root = BucketPath::root();
        let (version, wrote) = tree.commit_as("sync", &[&root], false, |rows| {
            present_into(rows, &tree)?;
            Ok(rows.wrote_any())
        })?;
        Ok(wrote.then_some(version))
    }

    /// Those of `hashes` the local blob store does not hold whole.
    pub async fn missing_blobs(&self, hashes: &[BlobHash]) -> Result<Vec<BlobHash>> {
        let mut out = Vec::new();
        for h in hashes {
            if !self.inner.blobs.is_whole(h).await? {
                out.push(*h);
            }
        }
        Ok(out)
    }

    /// A handler that serves this store's blobs to other nodes on
    /// iroh-blobs' protocol; `events` decides who may fetch what.
    pub async fn blob_provider(
        &self,
        events: iroh_blobs::provider::events::EventSender,
    ) -> Result<iroh_blobs::BlobsProtocol> {
        self.inner.blobs.provider(events).await
    }

    /// Marks blobs as on their way from a peer: a read of one waits for it
    /// a while rather than failing at once.
    pub fn expect_blobs(&self, hashes: &[BlobHash]) {
        self.inner.blobs.expect(hashes);
    }

    /// Fetches blob `hash` from a peer (iroh-blobs' protocol over `conn`),
    /// verified against its hash as it arrives; resumes a cut-off fetch.
    pub async fn fetch_blob(&self, conn: impl iroh_blobs::api::remote::GetStreamPair, hash: &BlobHash) -> Result<()> {
        self.inner.blobs.fetch(conn, hash).await
    }

    /// The file blobs `bucket`'s history names (every version, not only
    /// the heads) that are not here whole, with their sizes: what is still
    /// to fetch.
    pub async fn missing_in(&self, bucket: &str) -> Result<Vec<(BlobHash, u64)>> {
        let (store, bucket) = (self.clone(), bucket.to_owned());
        let named = tokio::task::spawn_blocking(move || store.blobs_named(&bucket))
            .await
            .map_err(|e| Error::Internal(format!("listing blobs: {e}")))??;
        let mut out = Vec::new();
        for (h, size) in named {
            if !self.inner.blobs.is_whole(&h).await? {
                out.push((h, size));
            }
        }
        Ok(out)
    }

    /// How every sync session stands ([`Store::sync_status`]), with what is
    /// still to fetch as of now.
    pub async fn sync_report(&self) -> Result<Vec<crate::LinkStatus>> {
        let store = self.clone();
        let mut status = tokio::task::spawn_blocking(move || store.sync_status())
            .await
            .map_err(|e| Error::Internal(format!("sync status: {e}")))??;
        for s in &mut status {
            let missing = self.missing_in(&s.bucket).await?;
            s.blobs_missing = missing.len() as u64;
            s.bytes_to_fetch = missing.iter().map(|(_, size)| size).sum();
        }
        Ok(status)
    }

    /// Every file blob `bucket`'s ops name, with its size.
    fn blobs_named(&self, bucket: &str) -> Result<Vec<(BlobHash, u64)>> {
        self.inner.db.read(|c| {
            let mut stmt = c.prepare(
                "SELECT o.hash, max(o.size) FROM sync_ops o JOIN branches b ON b.id = o.branch_id
                 JOIN buckets k ON k.id = b.bucket_id WHERE k.name = ?1 AND o.hash IS NOT NULL AND o.kind = 1
                 GROUP BY o.hash",
            )?;
            let rows = stmt.query_map([bucket], |r| Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, i64>(1)?)))?;
            let mut out = Vec::new();
            for row in rows {
                let (h, size) = row?;
                if let Ok(h) = <[u8; 32]>::try_from(h) {
                    out.push((BlobHash(h), size as u64));
                }
            }
            Ok(out)
        })
    }

    /// Makes the entries of `bucket@branch` that no op describes (written
    /// before this store recorded ops, or inherited from the branch it was
    /// forked from) one local `seed` commit, once per branch. A replica
    /// calls it before it says what a branch holds, so a branch forked here
    /// and not written since still has something to send.
    pub fn sync_seed(&self, bucket: &str, branch: &str) -> Result<()> {
        let seeded = self.inner.db.read(|c| {
            let id = Self::branch_id(c, bucket, branch)?;
            Ok(c.query_row(
                "SELECT EXISTS (SELECT 1 FROM sync_seeded WHERE branch_id = ?1)",
                [id],
                |r| r.get(0),
            )?)
        })?;
        if seeded {
            return Ok(());
        }
        let mut tree = self.tree(bucket, branch, &crate::At::Head)?;
        tree.published = false;
        let root = BucketPath::root();
        self.inner.db.write(|tx| {
            let described: HashSet<i64> = {
                let mut stmt = tx.prepare("SELECT DISTINCT eid FROM sync_ops WHERE branch_id = ?1")?;
                stmt.query_map([tree.branch_id], |r| r.get(0))?
                    .collect::<rusqlite::Result<_>>()?
            };
            let touched = Touched::default();
            for (_, e) in tree.walk_in(tx, &root, &Entry::root())? {
                if !described.contains(&e.id.0) {
                    touched.note(e.id, None);
                }
            }
            record_local(tx, &tree, "seed", touched)?;
            tx.execute(
                "INSERT OR IGNORE INTO sync_seeded (branch_id) VALUES (?1)",
                [tree.branch_id],
            )?;
            Ok(())
        })
    }
}

const NOTHING_NEW: &str = "sync: nothing new to apply";

/// The columns [`op_from_row`] reads.
const OP_COLUMNS: &str = "eid, origin, oseq, hlc, prev_origin, prev_oseq, flags, parent, name, kind, hash, size, mode,
     mtime_ns, target";

fn op_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Op> {
    let prev = match (r.get::<_, Option<i64>>(4)?, r.get::<_, Option<i64>>(5)?) {
        (Some(o), Some(s)) => Some((o as u64, s as u64)),
        _ => None,
    };
    let hash: Option<Vec<u8>> = r.get(10)?;
    Ok(Op {
        id: (r.get::<_, i64>(1)? as u64, r.get::<_, i64>(2)? as u64),
        hlc: r.get::<_, i64>(3)? as u64,
        op: SyncOp {
            eid: EntryId(r.get(0)?),
            prev,
            flags: r.get(6)?,
            parent: EntryId(r.get(7)?),
            name: r.get(8)?,
            kind: Kind::from_code(r.get(9)?),
            hash: hash.and_then(|h| <[u8; 32]>::try_from(h).ok()).map(BlobHash),
            size: r.get::<_, i64>(11)? as u64,
            mode: r.get::<_, i64>(12)? as u32,
            mtime_ns: r.get(13)?,
            target: r.get(14)?,
        },
    })
}

fn ops_of(c: &Connection, branch_id: i64, origin: u64, oseq: u64) -> Result<Vec<SyncOp>> {
    let mut stmt = c.prepare_cached(&format!(
        "SELECT {OP_COLUMNS} FROM sync_ops WHERE branch_id = ?1 AND origin = ?2 AND oseq = ?3 ORDER BY eid"
    ))?;
    let rows = stmt.query_map(params![branch_id, i(origin), i(oseq)], |r| Ok(op_from_row(r)?.op))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

// ---- the view ----------------------------------------------------------

/// One op as [`present`] reads it.
#[derive(Clone, Debug)]
struct Op {
    id: OpId,
    hlc: u64,
    op: SyncOp,
}

impl Op {
    /// The total order every rule uses: clock, then origin, then sequence.
    fn stamp(&self) -> (u64, u64, u64) {
        (self.hlc, self.id.0, self.id.1)
    }

    fn sets(&self, flag: u8) -> bool {
        self.op.flags & flag != 0
    }
}

/// An entry's registers, resolved from its ops.
#[derive(Clone, Debug)]
struct Resolved {
    alive: bool,
    /// The op whose content shows (the newest live head; if none, the newest
    /// live op, for a directory brought back by a live child).
    content: Op,
    /// The entry's head for the next local op.
    head: OpId,
    /// Location ops, newest first; `skip` of them were skipped (cycles).
    locations: Vec<Op>,
    skip: usize,
    attrs: (u32, i64),
}

impl Resolved {
    fn location(&self) -> Option<&Op> {
        self.locations.get(self.skip)
    }

    fn parent(&self) -> Option<EntryId> {
        self.location().map(|o| o.op.parent)
    }

    fn is_dir(&self) -> bool {
        self.content.op.kind == Some(Kind::Dir)
    }
}

/// The id of the conflict copy of `eid`'s losing version `loser`: the same
/// on every node.
pub fn conflict_copy_id(eid: EntryId, loser: OpId) -> EntryId {
    let mut h = blake3::Hasher::new_derive_key("alknet sync conflict copy v1");
    h.update(&eid.0.to_le_bytes());
    h.update(&loser.0.to_le_bytes());
    h.update(&loser.1.to_le_bytes());
    id_from(h.finalize())
}

/// The id `mkdir` gives a new directory `name` in `parent` when that id was
/// never used on the branch: two nodes that make the same directory make
/// one directory.
pub(crate) fn dir_id(parent: EntryId, name: &str) -> EntryId {
    let mut h = blake3::Hasher::new_derive_key("alknet directory id v1");
    h.update(&parent.0.to_le_bytes());
    h.update(name.as_bytes());
    id_from(h.finalize())
}

fn id_from(h: blake3::Hash) -> EntryId {
    let b: [u8; 8] = h.as_bytes()[..8].try_into().expect("8 bytes");
    EntryId((u64::from_le_bytes(b) >> 2) as i64 + 1)
}

/// `report.sync-conflict-20261201-221536-3fa2c1d0.pdf`: the name a losing
/// version shows under; `n` > 1 when that name is taken too.
pub fn conflict_name(name: &str, hlc: u64, origin: u64, n: usize) -> String {
    let when: String = crate::display::utc_timestamp((hlc >> 16) as i64)
        .chars()
        .filter(char::is_ascii_digit)
        .collect();
    let (date, time) = when.split_at(8.min(when.len()));
    let (stem, ext) = match name.rfind('.') {
        Some(dot) if dot > 0 => name.split_at(dot),
        _ => (name, ""),
    };
    let bump = if n > 1 { format!("-{n}") } else { String::new() };
    let suffix = format!(".sync-conflict-{date}-{time}-{:08x}{bump}", (origin >> 32) as u32);
    let room = MAX_COMPONENT.saturating_sub(suffix.len() + ext.len());
    let mut cut = stem.len().min(room);
    while !stem.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}{suffix}{ext}", &stem[..cut])
}

/// Reads every op of a branch, by entry.
fn load_ops(c: &Connection, branch_id: i64) -> Result<BTreeMap<EntryId, Vec<Op>>> {
    let mut stmt = c.prepare_cached(&format!("SELECT {OP_COLUMNS} FROM sync_ops WHERE branch_id = ?1"))?;
    let mut out: BTreeMap<EntryId, Vec<Op>> = BTreeMap::new();
    for row in stmt.query_map([branch_id], op_from_row)? {
        let op = row?;
        out.entry(op.op.eid).or_default().push(op);
    }
    Ok(out)
}

/// The content heads of one entry: content ops no other content op of it
/// supersedes.
fn heads(ops: &[Op]) -> Vec<&Op> {
    let superseded: HashSet<OpId> = ops
        .iter()
        .filter(|o| o.sets(SET_CONTENT))
        .filter_map(|o| o.op.prev)
        .collect();
    ops.iter()
        .filter(|o| o.sets(SET_CONTENT) && !superseded.contains(&o.id))
        .collect()
}

/// The losing live heads of an entry that show as conflict copies (files,
/// symlinks and special files whose content differs from the winner's;
/// two live versions of a directory are one directory).
fn losers(ops: &[Op]) -> Vec<Op> {
    let mut live: Vec<&Op> = heads(ops).into_iter().filter(|o| o.op.kind.is_some()).collect();
    live.sort_by_key(|o| std::cmp::Reverse(o.stamp()));
    let Some(winner) = live.first() else { return Vec::new() };
    let content = |o: &Op| (o.op.kind, o.op.hash, o.op.size, o.op.target.clone());
    let shown = content(winner);
    // The same bytes written on two nodes are one version, not a conflict.
    live.iter()
        .skip(1)
        .filter(|o| o.op.kind != Some(Kind::Dir) && content(o) != shown)
        .map(|o| (*o).clone())
        .collect()
}

fn resolve(ops: &[Op]) -> Option<Resolved> {
    let newest = |it: &mut dyn Iterator<Item = &Op>| it.max_by_key(|o| o.stamp()).cloned();
    let hs = heads(ops);
    let live_head = newest(&mut hs.iter().copied().filter(|o| o.op.kind.is_some()));
    let head = newest(&mut hs.iter().copied())?;
    let alive = live_head.is_some();
    // A dead entry keeps what it last held, for when a live child brings it back.
    let content = live_head.or_else(|| newest(&mut ops.iter().filter(|o| o.op.kind.is_some())))?;
    let mut locations: Vec<Op> = ops.iter().filter(|o| o.sets(SET_LOCATION)).cloned().collect();
    locations.sort_by_key(|o| std::cmp::Reverse(o.stamp()));
    if locations.is_empty() {
        locations.push(content.clone());
    }
    let attrs = newest(&mut ops.iter().filter(|o| o.sets(SET_ATTRS) && o.op.kind.is_some()))
        .map(|o| (o.op.mode, o.op.mtime_ns))
        .unwrap_or((content.op.mode, content.op.mtime_ns));
    Some(Resolved {
        alive,
        head: if alive { content.id } else { head.id },
        content,
        locations,
        skip: 0,
        attrs,
    })
}

/// The view of a branch: every visible entry with the parent and name it
/// shows under. A function of `ops` alone.
fn present(mut ops: BTreeMap<EntryId, Vec<Op>>) -> (BTreeMap<EntryId, Entry>, BTreeMap<EntryId, OpId>) {
    // Conflict copies: each losing live head is the creation of an entry of
    // its own, under a conflict name beside where its writer put it.
    let mut pending: BTreeSet<EntryId> = ops.keys().copied().collect();
    while let Some(eid) = pending.pop_first() {
        for loser in losers(&ops[&eid]) {
            let copy = conflict_copy_id(eid, loser.id);
            let list = ops.entry(copy).or_default();
            if list.iter().any(|o| o.id == loser.id) {
                continue;
            }
            let mut op = loser.op.clone();
            op.eid = copy;
            op.prev = None;
            op.flags = SET_ALL;
            op.name = conflict_name(&loser.op.name, loser.hlc, loser.id.0, 1);
            list.push(Op { op, ..loser });
            pending.insert(copy);
        }
    }
    let mut ents: BTreeMap<EntryId, Resolved> = ops.iter().filter_map(|(e, o)| Some((*e, resolve(o)?))).collect();

    // Bring back deleted directories that hold live entries, and break
    // cycles, until neither changes anything.
    loop {
        let mut changed = false;
        let live: Vec<EntryId> = ents.iter().filter(|(_, r)| r.alive).map(|(e, _)| *e).collect();
        for eid in live {
            let mut cur = eid;
            while let Some(p) = ents.get(&cur).and_then(Resolved::parent) {
                if p == EntryId::ROOT {
                    break;
                }
                match ents.get_mut(&p) {
                    Some(parent) if !parent.alive && parent.is_dir() => {
                        parent.alive = true;
                        changed = true;
                        cur = p;
                    }
                    _ => break,
                }
            }
        }
        for cycle in cycles(&ents) {
            let newest = cycle
                .iter()
                .copied()
                .max_by_key(|e| ents[e].location().map(Op::stamp))
                .expect("a cycle has members");
            ents.get_mut(&newest).expect("a member").skip += 1;
            changed = true;
        }
        if !changed {
            break;
        }
    }

    let mut children: BTreeMap<EntryId, Vec<EntryId>> = BTreeMap::new();
    for (eid, r) in &ents {
        if r.alive
            && let Some(p) = r.parent()
        {
            children.entry(p).or_default().push(*eid);
        }
    }
    let mut shown = BTreeMap::new();
    let mut queue = std::collections::VecDeque::from([EntryId::ROOT]);
    while let Some(dir) = queue.pop_front() {
        let Some(kids) = children.get(&dir) else { continue };
        // A directory keeps a contested name over a file, then the first to
        // take the name keeps it; the others show under a conflict name.
        let mut kids: Vec<(&EntryId, &Resolved)> = kids.iter().map(|e| (e, &ents[e])).collect();
        kids.sort_by_key(|(e, r)| (!r.is_dir(), r.location().map(Op::stamp), **e));
        let mut taken: HashSet<String> = HashSet::new();
        let mut later = Vec::new();
        for (eid, r) in kids {
            let loc = r.location().expect("a placed entry has a location");
            if taken.insert(loc.op.name.clone()) {
                shown.insert(*eid, entry_of(*eid, dir, loc.op.name.clone(), r));
                if r.is_dir() {
                    queue.push_back(*eid);
                }
            } else {
                later.push((eid, r, loc));
            }
        }
        for (eid, r, loc) in later {
            let name = (1..)
                .map(|n| conflict_name(&loc.op.name, loc.hlc, loc.id.0, n))
                .find(|n| !taken.contains(n))
                .expect("some number is free");
            taken.insert(name.clone());
            shown.insert(*eid, entry_of(*eid, dir, name, r));
            if r.is_dir() {
                queue.push_back(*eid);
            }
        }
    }
    let heads = ents.iter().map(|(e, r)| (*e, r.head)).collect();
    (shown, heads)
}

fn entry_of(eid: EntryId, parent: EntryId, name: String, r: &Resolved) -> Entry {
    let c = &r.content.op;
    Entry {
        id: eid,
        parent,
        name,
        kind: c.kind.unwrap_or(Kind::Dir),
        hash: c.hash,
        size: c.size,
        mode: r.attrs.0,
        mtime_ns: r.attrs.1,
        ctime_ns: 0,
        target: c.target.clone(),
        version: Version(0),
    }
}

/// The cycles among live entries' parent links, each as its members.
fn cycles(ents: &BTreeMap<EntryId, Resolved>) -> Vec<Vec<EntryId>> {
    // 0: unknown, 1: on the current walk, 2: done.
    let mut state: HashMap<EntryId, u8> = HashMap::new();
    let mut found = Vec::new();
    for (&start, r) in ents {
        if !r.alive || state.contains_key(&start) {
            continue;
        }
        let mut walk = Vec::new();
        let mut cur = start;
        loop {
            match state.get(&cur) {
                Some(1) => {
                    let at = walk.iter().position(|e| *e == cur).expect("on the walk");
                    found.push(walk[at..].to_vec());
                    break;
                }
                Some(_) => break,
                None => {}
            }
            let Some(r) = ents.get(&cur).filter(|r| r.alive) else {
                break;
            };
            state.insert(cur, 1);
            walk.push(cur);
            match r.parent() {
                Some(p) if p != EntryId::ROOT => cur = p,
                _ => break,
            }
        }
        for e in walk {
            state.insert(e, 2);
        }
    }
    found
}

/// Rewrites the rows of `tree`'s head to show its view, inside a commit.
pub(crate) fn present_into(rows: &crate::mutate::Rows<'_>, tree: &Tree) -> Result<()> {
    let tx = rows.tx;
    let (shown, heads) = present(load_ops(tx, tree.branch_id)?);
    let root = BucketPath::root();
    let now: BTreeMap<EntryId, Entry> = tree
        .walk_in(tx, &root, &Entry::root())?
        .into_iter()
        .map(|(_, e)| (e.id, e))
        .collect();
    let same = |a: &Entry, b: &Entry| {
        (a.parent, &a.name, a.kind, a.hash, a.size, a.mode, a.mtime_ns, &a.target)
            == (b.parent, &b.name, b.kind, b.hash, b.size, b.mode, b.mtime_ns, &b.target)
    };
    // Names first leave their places, then entries take theirs: a name that
    // moves from one entry to another ends with the new owner's row.
    for (eid, e) in &now {
        match shown.get(eid) {
            Some(s) if (s.parent, &s.name) == (e.parent, &e.name) => {}
            _ => rows.tombstone(e)?,
        }
    }
    for (eid, s) in &shown {
        if now.get(eid).is_none_or(|e| !same(e, s)) {
            let mut e = s.clone();
            e.version = rows.version();
            rows.put(&mut e)?;
        }
    }
    let held: HashMap<i64, OpId> = {
        let mut stmt = tx.prepare_cached("SELECT eid, origin, oseq FROM sync_heads WHERE branch_id = ?1")?;
        stmt.query_map([tree.branch_id], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                (r.get::<_, i64>(1)? as u64, r.get::<_, i64>(2)? as u64),
            ))
        })?
        .collect::<rusqlite::Result<_>>()?
    };
    for (eid, head) in heads {
        if held.get(&eid.0) != Some(&head) {
            set_head(tx, tree.branch_id, eid, head)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conflict_names_keep_the_extension_and_fit() {
        let hlc = (1_764_627_336_000u64) << 16;
        let n = conflict_name("report.pdf", hlc, 0x3fa2_c1d0_0000_0001, 1);
        assert!(n.starts_with("report.sync-conflict-2025"), "{n}");
        assert!(n.ends_with("-3fa2c1d0.pdf"), "{n}");
        assert!(conflict_name("Makefile", hlc, 1, 2).ends_with("-2"));
        let long = "é".repeat(127);
        assert!(conflict_name(&long, hlc, 1, 1).len() <= MAX_COMPONENT);
        assert_eq!(conflict_name(".bashrc", hlc, 1, 1).find('.'), Some(0));
    }
}
