//! The client side of the SSH server, for Alknet's own services (the
//! remote mount): one session channel running a subsystem, over TCP or over
//! the QUIC endpoint, authenticated with the user's key.
//!
//! The node is checked as OpenSSH would: over QUIC its endpoint id is the
//! one asked for (the QUIC handshake proves it); over TCP its host key must
//! be in `~/.ssh/known_hosts`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use russh::ChannelStream;
use russh::client::{self, AuthResult, Handle, Msg};
use russh::keys::{PrivateKeyWithHashAlg, PublicKeyOrCertificate};

use crate::endpoint::{Error, connect_error, connect_quic};

/// An open subsystem channel and what keeps it up.
pub struct Channel {
    pub stream: ChannelStream<Msg>,
    pub link: Link,
}

/// The SSH session and, over QUIC, the endpoint under a [`Channel`].
pub struct Link {
    session: Handle<Checker>,
    endpoint: Option<iroh::Endpoint>,
}

impl Link {
    /// Ends the session and closes the endpoint politely.
    pub async fn close(self) {
        self.session
            .disconnect(russh::Disconnect::ByApplication, "", "")
            .await
            .ok();
        if let Some(ep) = self.endpoint {
            ep.close().await;
        }
    }
}

/// Checks the node's host key; says why it refused one.
struct Checker {
    /// `host:port` to look up in known_hosts; `None` over QUIC.
    tcp: Option<(String, u16)>,
    refusal: Arc<Mutex<Option<String>>>,
}

impl client::Handler for Checker {
    type Error = russh::Error;

    async fn check_server_key(&mut self, key: &PublicKeyOrCertificate) -> Result<bool, Self::Error> {
        let Some((host, port)) = &self.tcp else {
            return Ok(true);
        };
        let PublicKeyOrCertificate::PublicKey { key, .. } = key else {
            *self.refusal.lock().unwrap_or_else(|e| e.into_inner()) = Some(format!(
                "{host}:{port} offered a host certificate; only plain host keys are checked"
            ));
            return Ok(false);
        };
        let why = match russh::keys::check_known_hosts(host, *port, key) {
            Ok(true) => return Ok(true),
            Ok(false) => format!(
                "the host key of {host}:{port} is not in ~/.ssh/known_hosts \
                 (check it, then: ssh-keyscan -p {port} {host} >> ~/.ssh/known_hosts)"
            ),
            Err(e) => format!("the host key of {host}:{port} does not match ~/.ssh/known_hosts: {e}"),
        };
        *self.refusal.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
        Ok(false)
    }
}

/// The key to use when none is given: the first of OpenSSH's defaults that
/// exists.
pub fn default_identity() -> Option<PathBuf> {
    let ssh = std::env::home_dir()?.join(".ssh");
    ["id_ed25519", "id_ecdsa", "id_rsa"]
        .iter()
        .map(|n| ssh.join(n))
        .find(|p| p.exists())
}

/// Opens `subsystem` on the node at `node` — `NODE_ID@HOST:PORT` over QUIC,
/// `HOST:PORT` over TCP — signed in with the private key at `identity`.
pub async fn open_subsystem(node: &str, identity: &Path, subsystem: &str) -> Result<Channel, Error> {
    let fail = |e: &dyn std::fmt::Display| connect_error(node, e);
    let key = russh::keys::load_secret_key(identity, None)
        .map_err(|e| fail(&format!("cannot use the key {}: {e}", identity.display())))?;
    let refusal = Arc::new(Mutex::new(None));
    let mut config = client::Config::default();
    // AES-GCM first: with AES-NI it costs a fraction of ChaCha20-Poly1305,
    // and a mount moves whole files through it.
    config.preferred.cipher = std::borrow::Cow::Borrowed(&[
        russh::cipher::AES_256_GCM,
        russh::cipher::AES_128_GCM,
        russh::cipher::CHACHA20_POLY1305,
    ]);
    // As the server's: room for the reads a mount keeps in flight.
    config.window_size = 16 << 20;
    let config = Arc::new(config);
    let (session, endpoint) = if node.contains('@') {
        let (ep, conn) = connect_quic(node, crate::ALPN_SSH).await?;
        let (send, recv) = conn.open_bi().await.map_err(|e| fail(&e))?;
        let checker = Checker {
            tcp: None,
            refusal: refusal.clone(),
        };
        let session = client::connect_stream(config, tokio::io::join(recv, send), checker).await;
        (session, Some(ep))
    } else {
        let (host, port) = node
            .rsplit_once(':')
            .and_then(|(h, p)| Some((h.trim_start_matches('[').trim_end_matches(']'), p.parse::<u16>().ok()?)))
            .ok_or_else(|| Error::BadNodeAddr(node.to_owned()))?;
        let socket = tokio::net::TcpStream::connect((host, port))
            .await
            .map_err(|e| fail(&e))?;
        socket.set_nodelay(true).ok();
        let checker = Checker {
            tcp: Some((host.to_owned(), port)),
            refusal: refusal.clone(),
        };
        (client::connect_stream(config, socket, checker).await, None)
    };
    let mut session = session.map_err(|e| {
        let why = refusal.lock().unwrap_or_else(|e| e.into_inner()).take();
        fail(&why.unwrap_or_else(|| e.to_string()))
    })?;
    let hash = session.best_supported_rsa_hash().await.map_err(|e| fail(&e))?.flatten();
    let auth = session
        .authenticate_publickey("alknet", PrivateKeyWithHashAlg::new(Arc::new(key), hash))
        .await
        .map_err(|e| fail(&e))?;
    if !matches!(auth, AuthResult::Success) {
        return Err(fail(&format!(
            "the node refused the key {} (is it added with `alknet user add`?)",
            identity.display()
        )));
    }
    let channel = session.channel_open_session().await.map_err(|e| fail(&e))?;
    channel.request_subsystem(true, subsystem).await.map_err(|e| fail(&e))?;
    Ok(Channel {
        stream: channel.into_stream(),
        link: Link { session, endpoint },
    })
}
