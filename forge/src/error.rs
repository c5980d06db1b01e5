//! The forge's errors: each says what went wrong in words a git user reads
//! after `remote: `.

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("repository {0:?} does not exist")]
    NoSuchRepo(String),
    #[error("invalid repository name {0:?}")]
    BadRepoName(String),
    #[error("there is no branch {0}")]
    NoSuchBranch(String),
    #[error("{0:?} is a bucket, not a git repository")]
    NotARepo(String),
    /// The client broke the protocol: a malformed line, an unknown command.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// A pushed pack that cannot be accepted: corrupt, truncated, incomplete.
    #[error("{0}")]
    BadPack(String),
    #[error("{0}")]
    Store(#[from] alknet_fs::Error),
    #[error("reading objects: {0}")]
    Objects(String),
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

impl Error {
    pub(crate) fn objects(e: impl std::fmt::Display) -> Self {
        Error::Objects(e.to_string())
    }
}
