//! End-to-end tests: the real `alknet` binary, driven as a user drives it.
//!
//! One test binary for the whole workspace (each one links the full stack).
//! Every test gets its own data directory; see `util.rs`.

mod bad_input;
mod cli;
mod concurrency;
mod crash;
mod git;
mod hardening;
mod http;
mod lfs;
mod mount;
mod node;
mod remote;
mod remote_mount;
mod sftp;
mod sync;
mod util;
mod web;
