//! alknet-protocols: the endpoint and its frontends.
//!
//! An [`SshServer`] authenticates keys against the store's users (`access.rs`
//! turns OpenSSH keys into the text the store keeps) and serves the `sftp`
//! subsystem (`sftp.rs`, an adapter from SFTP requests to `alknet-fs` calls)
//! and git's exec requests (`git.rs`, an adapter onto `alknet-forge`).
//! [`serve`] runs that server on a TCP listener and on a QUIC endpoint under
//! the ALPN `alknet/ssh`; [`proxy`] is the client side of that bridge.
//! The server also runs the remote mount's `alknet-fs` subsystem (the
//! protocol lives in `alknet-mount-protocol`); [`open_subsystem`] is its client side.
//!
//! Read `sftp.rs` first: it shows how a protocol maps onto the store.

mod access;
mod client;
mod endpoint;
mod git;
mod http;
mod lfs_ssh;
mod metrics;
mod sftp;
mod ssh;
mod sync;

pub use access::{Error as KeyError, key_text, parse_key};
pub use client::{Channel, Link, default_identity, open_subsystem};
pub use endpoint::{
    ALPN_SSH, AcceptBackoff, Error as EndpointError, HttpFront, bind_quic, node_addrs, parse_node_addr, proxy, serve,
};
pub use http::client::{NodeClient, RemoteError};
pub use http::{ALPN_HTTP, HttpLimits, HttpServer, ROUTES, Route, Site, client as http_client, load_tls};
pub use metrics::Metrics;
pub use ssh::{Limits, SshServer, mount_tree};
pub use sync::{ALPN_SYNC, BlobsHandler, SyncFront, SyncService};
