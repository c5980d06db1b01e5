//! The one error type of the storage core.
//!
//! Variants a frontend must map to its own protocol (SFTP status, errno, pkt-line
//! `ERR`) are distinct; internal faults carry their source. "database is locked"
//! is never one of them: [`crate::db`] waits and retries instead.

use std::path::PathBuf;

/// `ENOSPC` on Linux, and how the blob store's errors spell it.
const ENOSPC: i32 = 28;
const ENOSPC_TEXT: &str = "No space left on device";

/// A result of a storage-core call.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the storage core.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A bucket, branch, snapshot or version name is not acceptable.
    #[error("invalid {what} {value:?}: {reason}")]
    InvalidName {
        what: &'static str,
        value: String,
        reason: &'static str,
    },
    /// A path is malformed or leaves the bucket root.
    #[error("invalid path {path:?}: {reason}")]
    InvalidPath { path: String, reason: &'static str },
    /// An address (`BUCKET[@BRANCH[@VERSION]][:/PATH]`) does not parse.
    #[error("invalid address {addr:?}: {reason}")]
    InvalidAddress { addr: String, reason: &'static str },
    #[error("bucket {0:?} does not exist")]
    NoSuchBucket(String),
    #[error("bucket {0:?} already exists")]
    BucketExists(String),
    #[error("branch {branch:?} does not exist in bucket {bucket:?}")]
    NoSuchBranch { bucket: String, branch: String },
    #[error("branch {branch:?} already exists in bucket {bucket:?}")]
    BranchExists { bucket: String, branch: String },
    #[error("branch {branch:?} of bucket {bucket:?} cannot be deleted: {reason}")]
    BranchInUse {
        bucket: String,
        branch: String,
        reason: String,
    },
    #[error("version {version} is not known on {bucket}@{branch}")]
    NoSuchVersion {
        bucket: String,
        branch: String,
        version: String,
    },
    #[error("snapshot {0:?} already exists")]
    SnapshotExists(String),
    /// The path (or one of its parents) does not exist.
    #[error("{0}: no such file or directory")]
    NotFound(String),
    #[error("{0}: file exists")]
    Exists(String),
    #[error("{0}: not a directory")]
    NotADirectory(String),
    #[error("{0}: is a directory")]
    IsADirectory(String),
    #[error("{0}: directory not empty")]
    NotEmpty(String),
    /// A write was attempted on a past version or a read-only branch.
    #[error("{0}: read-only")]
    ReadOnly(String),
    /// A rename would move a directory into itself.
    #[error("cannot move {from} into itself ({to})")]
    RenameIntoSelf { from: String, to: String },
    /// A blob referenced by the tree is not in the blob store.
    #[error("blob {0} is missing from the blob store")]
    MissingBlob(String),
    /// A blob a peer's commits named that sync has not fetched yet.
    #[error("the bytes of blob {0} have not arrived from a peer yet (`alknet sync status` shows what is missing)")]
    NotArrived(String),
    /// A blob's bytes do not match its hash: the read is refused (never
    /// wrong bytes); the store records the blob for `stats` and `fsck`.
    #[error("blob {0} is corrupt: its bytes on disk do not match their BLAKE3 hash (run alknet fsck)")]
    Corrupt(String),
    /// A ref update found the ref changed since it was read.
    #[error("ref {name} changed meanwhile (now {})", current.as_deref().unwrap_or("absent"))]
    RefChanged { name: String, current: Option<String> },
    /// A user may see a bucket but not do this on it (`Store::open_as`).
    #[error("{}", if *token { format!("{bucket}: a read-only token cannot change anything") } else { format!("{bucket}: {user} has {has} access, this needs {needs}") })]
    Denied {
        user: String,
        bucket: String,
        has: crate::access::Level,
        needs: crate::access::Level,
        token: bool,
    },
    /// A compare-and-swap write found the file changed (`WriteSession::expect`).
    #[error("{0}: changed since it was read (the precondition does not hold)")]
    Changed(String),
    /// A path is locked by someone else (Git LFS locks).
    #[error("{path} is locked by {owner} (lock {id})")]
    Locked { path: String, owner: String, id: i64 },
    /// Only a lock's owner (or an admin, forcing) may unlock it.
    #[error("{path} is locked by {owner}, not by you (an admin may force the unlock)")]
    NotLockOwner { path: String, owner: String },
    #[error("user {0:?} does not exist")]
    NoSuchUser(String),
    /// A share link that does not exist or was revoked.
    #[error("no such share link")]
    NoSuchShare,
    /// A share link past its expiry.
    #[error("this share link expired")]
    ShareExpired,
    #[error("user {0:?} already exists")]
    UserExists(String),
    #[error("peer {0:?} does not exist")]
    NoSuchPeer(String),
    /// A peer of that name or node id is there already.
    #[error("peer {0} already exists")]
    PeerExists(String),
    #[error("{peer} does not sync bucket {bucket:?}")]
    NoSuchSync { peer: String, bucket: String },
    #[error("that key already belongs to user {0:?}")]
    KeyTaken(String),
    #[error("user {0:?} has no such key")]
    NoSuchKey(String),
    #[error("that is the last key of user {0:?}: remove the user instead")]
    LastKey(String),
    #[error("user {user:?} has no grant on bucket {bucket:?}")]
    NoSuchGrant { user: String, bucket: String },
    /// A file would be larger than `limits.max_file_size`.
    #[error("{path}: file too large: {} is more than limits.max_file_size ({})", crate::limits::format_size(*size), crate::limits::format_size(*limit))]
    TooLarge { path: String, size: u64, limit: u64 },
    /// A write would eat into the disk's reserve, or the disk is full.
    #[error("{path}: no space left on the data directory's disk{detail}")]
    NoSpace { path: String, detail: String },
    /// A write would take a branch of a bucket past the bucket's quota.
    #[error("{path}: bucket {bucket} is at its quota of {}", crate::limits::format_size(*quota))]
    Quota { path: String, bucket: String, quota: u64 },
    /// A size setting does not parse.
    #[error("invalid size {value:?}: {reason}")]
    InvalidSize { value: String, reason: &'static str },
    #[error("database error: {0}")]
    Db(rusqlite::Error),
    #[error("blob store error: {0}")]
    Blobs(String),
    /// A fault inside the store that the caller cannot fix (a newer schema,
    /// another process holding the database for minutes).
    #[error("{0}")]
    Internal(String),
    #[error("I/O error on {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("I/O error: {0}")]
    Stream(std::io::Error),
}

impl Error {
    /// An I/O error on `path`; a full disk is [`Error::NoSpace`].
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        let path = path.into();
        if source.raw_os_error() == Some(ENOSPC) {
            return Error::no_space(&path.display().to_string());
        }
        Error::Io { path, source }
    }

    /// An error of the blob store; a full disk is [`Error::NoSpace`].
    pub(crate) fn blobs(e: impl std::fmt::Display) -> Self {
        let text = e.to_string();
        if text.contains(ENOSPC_TEXT) {
            return Error::no_space("the blob store");
        }
        Error::Blobs(text)
    }

    /// A copy of a refusal by the write limits, which a write session keeps
    /// to report again at close; `None` for every other error.
    pub(crate) fn refusal(&self) -> Option<Error> {
        match self {
            Error::TooLarge { path, size, limit } => Some(Error::TooLarge {
                path: path.clone(),
                size: *size,
                limit: *limit,
            }),
            Error::NoSpace { path, detail } => Some(Error::NoSpace {
                path: path.clone(),
                detail: detail.clone(),
            }),
            Error::Quota { path, bucket, quota } => Some(Error::Quota {
                path: path.clone(),
                bucket: bucket.clone(),
                quota: *quota,
            }),
            _ => None,
        }
    }

    /// The disk is full (the write hit `ENOSPC`).
    pub(crate) fn no_space(what: &str) -> Self {
        Error::NoSpace {
            path: what.to_owned(),
            detail: String::new(),
        }
    }

    /// A word for the kind of error, for machine-readable output (`--json`):
    /// `not_found`, `exists`, `invalid`, `read_only`, `too_large`,
    /// `no_space`, `corrupt`, `conflict`, `denied`, `expired`, `unavailable`
    /// (bytes still on their way from a peer) or `internal`.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::NotFound(_)
            | Error::NoSuchBucket(_)
            | Error::NoSuchBranch { .. }
            | Error::NoSuchVersion { .. }
            | Error::NoSuchUser(_)
            | Error::NoSuchShare
            | Error::NoSuchKey(_)
            | Error::NoSuchGrant { .. }
            | Error::NoSuchPeer(_)
            | Error::NoSuchSync { .. }
            | Error::MissingBlob(_) => "not_found",
            Error::NotArrived(_) => "unavailable",
            Error::Exists(_)
            | Error::BucketExists(_)
            | Error::BranchExists { .. }
            | Error::SnapshotExists(_)
            | Error::UserExists(_)
            | Error::PeerExists(_)
            | Error::KeyTaken(_) => "exists",
            Error::InvalidName { .. }
            | Error::InvalidPath { .. }
            | Error::InvalidAddress { .. }
            | Error::InvalidSize { .. }
            | Error::NotADirectory(_)
            | Error::IsADirectory(_)
            | Error::NotEmpty(_)
            | Error::RenameIntoSelf { .. }
            | Error::BranchInUse { .. }
            | Error::LastKey(_) => "invalid",
            Error::ReadOnly(_) => "read_only",
            Error::ShareExpired => "expired",
            Error::Denied { .. } => "denied",
            Error::TooLarge { .. } => "too_large",
            Error::NoSpace { .. } | Error::Quota { .. } => "no_space",
            Error::Corrupt(_) => "corrupt",
            Error::RefChanged { .. } | Error::Changed(_) | Error::Locked { .. } => "conflict",
            Error::NotLockOwner { .. } => "denied",
            Error::Db(_) | Error::Blobs(_) | Error::Internal(_) | Error::Io { .. } | Error::Stream(_) => "internal",
        }
    }

    /// True for errors caused by the caller's request (bad name, missing path, …)
    /// rather than by a fault of the store; frontends log these at debug level.
    pub fn is_user_error(&self) -> bool {
        !matches!(
            self,
            Error::Db(_)
                | Error::Blobs(_)
                | Error::Io { .. }
                | Error::Stream(_)
                | Error::MissingBlob(_)
                | Error::Corrupt(_)
                | Error::Internal(_)
        )
    }
}

impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Self {
        if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull) {
            return Error::no_space("the database");
        }
        Error::Db(e)
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        if e.raw_os_error() == Some(ENOSPC) {
            return Error::no_space("a stream");
        }
        Error::Stream(e)
    }
}

impl From<honker_core::Error> for Error {
    fn from(e: honker_core::Error) -> Self {
        match e {
            honker_core::Error::Sqlite(e) => Error::from(e),
        }
    }
}
