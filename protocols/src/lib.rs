//! alknet-protocols: the endpoint and its frontends.
//!
//! Not built yet. This crate will hold the QUIC endpoint and ALPN routing, the
//! TCP listeners, identity and access (users, keys, grants), the SSH server,
//! SFTP and HTTP — each a thin adapter over `alknet-fs` and `alknet-forge`.
