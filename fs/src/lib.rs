//! alknet-fs: the storage core of Alknet. It knows no protocol.
//!
//! A [`Store`] is one data directory: `alknet.db` (SQLite, WAL) holds the
//! trees and their history, `blobs/` (an iroh-blobs store) holds file contents
//! named by their BLAKE3 [`BlobHash`]. A store holds *buckets*; a bucket holds
//! *branches*; [`Store::tree`] opens the [`Tree`] of one `bucket@branch`, live
//! or at a past [`Version`]. A tree hands out [`Entry`]s (kind, hash, size,
//! mode, mtime and an [`EntryId`] that survives rename) and takes mutations,
//! each one commit with its honker event in the same transaction.
//!
//! Reading order: `tree.rs` (how a path resolves through a branch's chain of
//! ancestors), `mutate.rs` (one commit per mutation), `write.rs` (write
//! sessions: stream or stage, then publish on close), `blobs.rs` (the blob
//! store, its lock and GC), `store.rs` (buckets, branches, history, prune,
//! gc, fsck), `replica.rs` (replication: origin stamps, ops, and the one
//! view of a branch several nodes wrote to), `peers.rs` (other nodes and
//! what they may do). `name.rs` parses addresses and paths; `display`
//! formats listings. The design and its alternatives are argued in `fs/DESIGN.md`.
//!
//! ```no_run
//! # async fn demo() -> alknet_fs::Result<()> {
//! use alknet_fs::{At, BucketPath, OpenOptions, Store};
//! let store = Store::open("alknet-data".as_ref())?;
//! store.create_bucket("photos", "drive")?;
//! let main = store.tree("photos", "main", &At::Head)?;
//! let mut w = main.open_write(&BucketPath::parse("/a.txt")?, OpenOptions::replace()).await?;
//! w.write_at(0, b"hello").await?;
//! w.close().await?;
//! store.create_branch("photos", "trip", "main", &At::Head)?;
//! # Ok(()) }
//! ```

mod access;
mod blobs;
mod db;
pub mod display;
mod error;
mod limits;
mod locks;
mod mutate;
mod name;
mod peers;
mod quota;
mod refs;
mod replica;
mod shares;
mod store;
mod tokens;
mod tree;
mod types;
mod write;

pub use access::{Level, Principal, User, check_user_name};
pub use blobs::{blobs_held, read_at};
pub use error::{Error, Result};
pub use limits::{DEFAULT_DISK_RESERVE, Limits, format_size, parse_size};
pub use locks::{Lock, LockQuery};
pub use mutate::{DEFAULT_DIR_MODE, DEFAULT_FILE_MODE, Expect, LocalEntry};
pub use name::{
    Address, At, BucketPath, DEFAULT_BRANCH, MAX_COMPONENT, MAX_PATH, MAX_SYMLINK_TARGET, check_branch_name,
    check_bucket_name, check_entry_name, check_symlink_target, normalize_namespace,
};
pub use peers::{LinkStatus, Peer, SyncLink, check_peer_name};
pub use refs::{Attachment, Blob, Edit, RefUpdate};
pub use replica::{
    ApplyReport, OpId, SET_ATTRS, SET_CONTENT, SET_LOCATION, SyncCommit, SyncOp, Vector, conflict_copy_id,
    conflict_name,
};
pub use shares::{NewShare, SHARE_PREFIX, Share, ShareInfo, parse_lifetime};
pub use store::{FsckReport, GC_QUEUE, GcReport, PruneReport, REPO_KIND, Space, Stats, Store, Watch, process_alive};
pub use tokens::{TOKEN_PREFIX, TokenInfo};
pub use tree::{EVENT_CHANNEL, FileReader, ReadStream, SetAttr, Tree, Walk};
pub use types::{BlobHash, BranchInfo, BucketInfo, Change, Commit, Entry, EntryId, Kind, SnapshotInfo, Version};
pub use write::{OpenOptions, WriteSession};

#[cfg(test)]
mod tests;
