//! alknet-forge: git repositories on the store.
//!
//! A repository is a bucket of kind [`REPO_KIND`](alknet_fs::REPO_KIND). Its
//! refs are the bucket's refs (compare-and-swap in SQLite, committed with
//! their event); its objects are packs, each attached to the bucket as a blob
//! (content-addressed, so sync can move them by hash and GC keeps them) and
//! linked into `git/<repo>/objects/pack/` where they are read. After a
//! push, the tree of each updated branch is published as the read-only fs
//! branch `repo@branch`, its files sharing blobs with the rest of the store.
//!
//! [`upload_pack`] (clone, fetch, ls-remote; protocol v0 and v2) and
//! [`receive_pack`] (push) are blocking state machines over any `Read` and
//! `Write`: the SSH server runs them on an exec channel (`Mode::Connection`),
//! and smart HTTP runs [`advertise`] for `info/refs` and each `POST` as one
//! stateless request (`Mode::Stateless`).
//!
//! Reading order: `repo.rs` (a repository on disk and in the store),
//! `pkt.rs` (pkt-lines and side-band), `walk.rs` (which commits and objects
//! a fetch sends), `pack/` (packs in bounded memory: indexing a push,
//! writing a fetch, reading a stored blob), `upload.rs`, `receive.rs`,
//! `publish.rs`.

mod access;
mod error;
mod history;
mod lfs;
mod locks;
mod pack;
mod pkt;
mod publish;
mod receive;
mod repo;
mod upload;
mod walk;

pub use access::Refusal;
pub use error::Error;
pub use history::{GitBlob, GitCommit, GitEntry, GitRef, MAX_CHANGES, TreeChange};
pub use lfs::{LfsUpload, valid_oid};
pub use receive::{PushOutcome, receive_pack};
pub use repo::{Forge, ForgeConfig, Repo, RepoInfo, repo_name};
pub use upload::{Mode, Service, advertise, upload_pack};

/// What the server calls itself in capability lists.
pub(crate) const AGENT: &str = concat!("agent=alknet/", env!("CARGO_PKG_VERSION"));

/// The all-zero object id: "no object" in ref updates.
pub(crate) fn null_oid() -> gix_hash::ObjectId {
    gix_hash::ObjectId::null(gix_hash::Kind::Sha1)
}

#[cfg(test)]
mod tests;
