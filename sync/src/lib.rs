//! alknet-sync: buckets kept in sync between nodes.
//!
//! The storage core records every commit as replication ops with an origin
//! stamp and shows a branch that several nodes wrote to deterministically
//! (`alknet_fs`'s `replica.rs`; decision 24). This crate is the protocol
//! between two nodes, sans IO: a [`Replica`] takes a [`Msg`] from a peer and
//! returns the messages to send back. Whoever moves the bytes (the QUIC
//! endpoint, or the simulation in `tests.rs`) decides when and whether
//! they arrive; any loss, duplication or reordering only delays
//! convergence, because every message is a fact (what one side holds, or
//! commits it holds) and applying it twice changes nothing.
//!
//! The exchange, per branch: one side says what it holds ([`Msg::Have`],
//! its version vector); the other answers with the commits the first lacks
//! ([`Msg::Commits`], a bounded batch, each origin's in order), and with
//! its own vector if the first holds something it lacks. Every applied
//! batch is answered with the new vector, which asks for the next batch and
//! acknowledges this one. Quiet when both vectors are equal.

use alknet_fs::{BlobHash, Error, Result, Store, SyncCommit, Vector};
use serde::{Deserialize, Serialize};

/// Ops one [`Msg::Commits`] carries at most (a commit is never split).
pub const BATCH_OPS: usize = 2000;

/// One message between two replicas of a bucket.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Msg {
    /// What the sender holds of a branch.
    Have { branch: String, vector: Vector },
    /// Commits of a branch the receiver lacked, each origin's in order.
    Commits { branch: String, commits: Vec<SyncCommit> },
}

/// What a peer may do with a bucket here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Allowed {
    /// The peer may be sent this node's commits.
    pub read: bool,
    /// This node applies the peer's commits.
    pub write: bool,
}

/// What handling one message came to.
#[derive(Debug, Default)]
pub struct Handled {
    /// The messages to send back.
    pub replies: Vec<Msg>,
    /// Blobs the applied commits name (fetch those not here).
    pub blobs: Vec<BlobHash>,
}

/// One bucket of a store, as it syncs with peers. Blocking: every call
/// reads or writes SQLite; run it off the async workers.
pub struct Replica {
    store: Store,
    bucket: String,
    branches: Option<Vec<String>>,
}

impl Replica {
    /// Syncs every branch of `bucket`, or only `branches` if given.
    pub fn new(store: Store, bucket: &str, branches: Option<Vec<String>>) -> Replica {
        Replica {
            store,
            bucket: bucket.to_owned(),
            branches,
        }
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    fn synced(&self, branch: &str) -> bool {
        self.branches.as_ref().is_none_or(|b| b.iter().any(|x| x == branch))
    }

    /// What to say first on a link (and again now and then): what this
    /// side holds of each branch.
    pub fn hello(&self) -> Result<Vec<Msg>> {
        let mut out = Vec::new();
        for b in self.store.list_branches(&self.bucket)? {
            if self.synced(&b.name) {
                self.store.sync_seed(&self.bucket, &b.name)?;
                let vector = self.store.sync_vector(&self.bucket, &b.name)?;
                out.push(Msg::Have { branch: b.name, vector });
            }
        }
        Ok(out)
    }

    /// How many commits of `branch` a peer holding `theirs` has that this
    /// side lacks.
    pub fn behind(&self, branch: &str, theirs: &Vector) -> Result<u64> {
        let ours = self.store.sync_vector(&self.bucket, branch)?;
        Ok(theirs
            .iter()
            .map(|(o, s)| s.saturating_sub(ours.get(o).copied().unwrap_or(0)))
            .sum())
    }

    /// Handles one message from a peer: what to send back, and what to fetch.
    pub fn handle(&self, msg: Msg, allowed: Allowed) -> Result<Handled> {
        let mut out = Handled::default();
        match msg {
            Msg::Have { branch, vector } => {
                if !self.synced(&branch) {
                    return Ok(out);
                }
                let ours = self.store.sync_vector(&self.bucket, &branch)?;
                if allowed.read && ours.iter().any(|(o, s)| vector.get(o).is_none_or(|t| t < s)) {
                    let commits = self.store.sync_export(&self.bucket, &branch, &vector, BATCH_OPS)?;
                    out.replies.push(Msg::Commits {
                        branch: branch.clone(),
                        commits,
                    });
                }
                if allowed.write && vector.iter().any(|(o, s)| ours.get(o).is_none_or(|t| t < s)) {
                    out.replies.push(Msg::Have { branch, vector: ours });
                }
            }
            Msg::Commits { branch, commits } => {
                if !allowed.write || !self.synced(&branch) {
                    return Ok(out);
                }
                let report = self.store.sync_apply(&self.bucket, &branch, &commits)?;
                out.blobs = report.blobs;
                if report.applied > 0 || report.out_of_order > 0 {
                    let vector = self.store.sync_vector(&self.bucket, &branch)?;
                    out.replies.push(Msg::Have { branch, vector });
                }
            }
        }
        Ok(out)
    }
}

/// A message that is not one of ours.
pub fn bad_message(why: impl std::fmt::Display) -> Error {
    Error::Internal(format!("sync: a peer sent a message this node cannot read: {why}"))
}

#[cfg(test)]
mod tests;
