//! The one error type of the storage core.
//!
//! Variants a frontend must map to its own protocol (SFTP status, errno, pkt-line
//! `ERR`) are distinct; internal faults carry their source. "database is locked"
//! is never one of them: [`crate::db`] waits and retries instead.

use std::path::PathBuf;

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
    /// A ref update found the ref changed since it was read.
    #[error("ref {name} changed meanwhile (now {})", current.as_deref().unwrap_or("absent"))]
    RefChanged { name: String, current: Option<String> },
    #[error("database error: {0}")]
    Db(#[from] rusqlite::Error),
    #[error("blob store error: {0}")]
    Blobs(String),
    /// A fault inside the store that the caller cannot fix (a newer schema,
    /// another process holding the database for minutes).
    #[error("{0}")]
    Internal(String),
    #[error("I/O error on {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("I/O error: {0}")]
    Stream(#[from] std::io::Error),
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn blobs(e: impl std::fmt::Display) -> Self {
        Error::Blobs(e.to_string())
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
                | Error::Internal(_)
        )
    }
}

impl From<honker_core::Error> for Error {
    fn from(e: honker_core::Error) -> Self {
        match e {
            honker_core::Error::Sqlite(e) => Error::Db(e),
        }
    }
}
