//! alknet-forge: git repositories on the store.
//!
//! Not built yet. This crate will hold refs (compare-and-swap in SQLite),
//! objects kept content-addressed in the blob store, and upload-pack /
//! receive-pack as transport-agnostic state machines, plus Git LFS. It depends
//! only on `alknet-fs`. See `docs/architecture.md` and `../shared/DESIGN.md`,
//! "Git on the store".
