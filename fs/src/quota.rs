//! Per-bucket quotas (`alknet bucket quota NAME SIZE|none`): the file bytes
//! at any branch head of the bucket, plus what this process's open write
//! sessions on that branch are adding, may not pass the bucket's quota.
//! Forking a branch costs nothing (it shares the parent's rows); each head
//! is limited on its own.
//!
//! The count is kept per commit: `versions.bytes` is the branch's file bytes
//! after that commit. [`Counter`] carries it forward as [`crate::mutate`]
//! inserts rows — every row goes through `Rows::put` or `Rows::tombstone`,
//! each adding the difference to the entry's visible state before it, so a
//! move counts nothing and a removed subtree subtracts each file. A branch
//! whose newest commit predates the count is walked once.
//!
//! Checked where a file grows, beside the write limits ([`crate::limits`]):
//! `WriteSession::write_at`/`set_len` and `Tree::put_file(s)`. A
//! repository's quota bounds its packs instead (the bucket's attachments):
//! the forge checks a pushed pack against [`crate::Store::attachment_headroom`].

use std::collections::HashMap;
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension, params};

use crate::error::{Error, Result};
use crate::name::BucketPath;
use crate::tree::Tree;
use crate::types::{Entry, Kind};

/// The bytes an entry's state puts at the head.
pub(crate) fn bytes_of(e: Option<&Entry>) -> i64 {
    match e {
        Some(e) if e.kind == Kind::File => e.size as i64,
        _ => 0,
    }
}

/// Growth that open write sessions have reserved, per branch id, so two
/// sessions cannot each take the last of a quota.
#[derive(Debug, Default)]
pub(crate) struct Reserved(Mutex<HashMap<i64, u64>>);

impl Reserved {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i64, u64>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn get(&self, branch: i64) -> u64 {
        self.lock().get(&branch).copied().unwrap_or(0)
    }

    pub(crate) fn add(&self, branch: i64, n: u64) {
        *self.lock().entry(branch).or_default() += n;
    }

    pub(crate) fn release(&self, branch: i64, n: u64) {
        let mut map = self.lock();
        if let Some(v) = map.get_mut(&branch) {
            *v = v.saturating_sub(n);
            if *v == 0 {
                map.remove(&branch);
            }
        }
    }
}

/// The newest recorded count of `branch`, if any commit has one.
fn recorded(c: &Connection, branch: i64) -> Result<Option<i64>> {
    Ok(c.query_row(
        "SELECT bytes FROM versions WHERE branch_id = ?1 ORDER BY version DESC LIMIT 1",
        [branch],
        |r| r.get::<_, Option<i64>>(0),
    )
    .optional()?
    .flatten())
}

impl Tree {
    /// The file bytes at this branch's head, as `c` sees it.
    pub(crate) fn head_bytes(&self, c: &Connection) -> Result<u64> {
        if let Some(n) = recorded(c, self.branch_id)? {
            return Ok(n.max(0) as u64);
        }
        // From before the count: walk the head once (the next commit records it).
        let total: u64 = self
            .walk_in(c, &BucketPath::root(), &Entry::root())?
            .iter()
            .map(|(_, e)| bytes_of(Some(e)) as u64)
            .sum();
        Ok(total)
    }

    /// The bucket's quota, if it has one.
    pub(crate) fn quota(&self, c: &Connection) -> Result<Option<u64>> {
        Ok(
            c.query_row("SELECT quota FROM buckets WHERE name = ?1", [&self.bucket], |r| {
                r.get::<_, Option<i64>>(0)
            })
            .optional()?
            .flatten()
            .map(|q| q.max(0) as u64),
        )
    }

    /// Refuses `growth` more bytes at `path` if the head, what open sessions
    /// reserved and the growth would pass the bucket's quota.
    pub(crate) fn check_quota(&self, path: &str, growth: u64) -> Result<()> {
        if growth == 0 {
            return Ok(());
        }
        match self.inner.db.read(|c| self.quota(c))? {
            Some(quota) => self.check_against(path, growth, quota),
            None => Ok(()),
        }
    }

    /// [`Tree::check_quota`] with the quota already read.
    pub(crate) fn check_against(&self, path: &str, growth: u64, quota: u64) -> Result<()> {
        let used = self.inner.db.read(|c| self.head_bytes(c))?;
        let pending = self.inner.reserved.get(self.branch_id);
        if used.saturating_add(pending).saturating_add(growth) > quota {
            return Err(Error::Quota {
                path: path.to_owned(),
                bucket: self.bucket.clone(),
                quota,
            });
        }
        Ok(())
    }
}

impl crate::Store {
    /// `(quota, what more bucket's attachments may take)`: a repository's
    /// packs count against its quota, and a push checks its pack against
    /// this as the pack arrives. `None` without a quota.
    pub fn attachment_headroom(&self, bucket: &str) -> Result<Option<(u64, u64)>> {
        self.inner.db.read(|c| {
            let (quota, used): (Option<i64>, i64) = c
                .query_row(
                    "SELECT b.quota, (SELECT coalesce(sum(size), 0) FROM attachments WHERE bucket_id = b.id)
                     FROM buckets b WHERE b.name = ?1",
                    [bucket],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?
                .ok_or_else(|| Error::NoSuchBucket(bucket.to_owned()))?;
            Ok(quota.map(|q| {
                let q = q.max(0) as u64;
                (q, q.saturating_sub(used.max(0) as u64))
            }))
        })
    }
}

/// The running count of one commit (see the module docs).
#[derive(Debug, Default)]
pub(crate) struct Counter(std::cell::Cell<i64>);

impl Counter {
    pub(crate) fn change(&self, before: Option<&Entry>, after: Option<&Entry>) {
        self.0.set(self.0.get() + bytes_of(after) - bytes_of(before));
    }

    /// Records the branch's count after the commit `version`.
    pub(crate) fn record(&self, c: &Connection, before: u64, version: i64) -> Result<()> {
        let after = (before as i64 + self.0.get()).max(0);
        c.execute(
            "UPDATE versions SET bytes = ?1 WHERE version = ?2",
            params![after, version],
        )?;
        Ok(())
    }
}
