//! alknet-mount: a FUSE filesystem of any `bucket@branch`.
//!
//! Not built yet. This crate will adapt the `alknet-fs` tree API (stat, read
//! at offset, write sessions, readdir pages) to fuser, against a local data
//! directory or a remote node with a verified content cache.
