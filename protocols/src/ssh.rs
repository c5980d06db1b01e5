//! The SSH server: public-key authentication against [`Access`], no shell,
//! the `sftp` subsystem, and git's `git-upload-pack` / `git-receive-pack`
//! exec requests, and the remote mount's `alknet-fs` subsystem. The same
//! server runs over TCP and over a QUIC
//! bi-stream ([`crate::endpoint`]).

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use alknet_forge::Forge;
use alknet_fs::{Address, Store};
use russh::keys::PrivateKey;
use russh::server::{Auth, Msg, PublicKeyOffer, Session, VerifiedPublicKey};
use russh::{Channel, ChannelId, MethodKind, MethodSet};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

use crate::{git, sftp};
use alknet_fs::Level;

/// One SSH service shared by every connection. Cheap to clone.
#[derive(Clone)]
pub struct SshServer {
    shared: Arc<Shared>,
}

struct Shared {
    store: Store,
    forge: Forge,
    config: Arc<russh::server::Config>,
    owner: (u32, u32),
    limits: Limits,
    /// One permit per open connection (`Limits::max_connections`).
    connections: Arc<Semaphore>,
    metrics: Arc<crate::Metrics>,
    /// One permit per connection not yet logged in (`Limits::max_startups`).
    startups: Arc<Semaphore>,
    /// Where the node's HTTP API is, for `git-lfs-authenticate`.
    http_url: Option<String>,
}

/// What one node lets the network hold of it. Every connection, over TCP or
/// QUIC, counts against the same limits.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct Limits {
    /// Connections open at once; more are closed as they arrive.
    pub max_connections: usize,
    /// Connections open at once that have not logged in yet (OpenSSH's
    /// `MaxStartups`); more are closed as they arrive.
    pub max_startups: usize,
    /// How long a connection may take to log in before it is closed
    /// (OpenSSH's `LoginGraceTime`).
    pub login_grace: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_connections: 1000,
            max_startups: 100,
            login_grace: Duration::from_secs(120),
        }
    }
}

impl std::fmt::Debug for SshServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SshServer")
    }
}

impl SshServer {
    /// `metrics`: the node's counters (shared with its other frontends).
    /// `http_url`: the node's HTTP API as clients reach it
    /// (`https://files.example.org`), handed out by `git-lfs-authenticate`.
    pub fn new(
        forge: Forge,
        host_key: PrivateKey,
        limits: Limits,
        metrics: Arc<crate::Metrics>,
        http_url: Option<String>,
    ) -> SshServer {
        let store = forge.store().clone();
        let config = russh::server::Config {
            keys: vec![host_key],
            methods: MethodSet::from(&[MethodKind::PublicKey][..]),
            auth_rejection_time: Duration::from_millis(300),
            auth_rejection_time_initial: Some(Duration::ZERO),
            inactivity_timeout: Some(Duration::from_secs(3600)),
            keepalive_interval: Some(Duration::from_secs(60)),
            nodelay: true,
            // Large windows keep a single SFTP stream busy on fast links.
            window_size: 16 * 1024 * 1024,
            ..Default::default()
        };
        let owner = {
            use std::os::unix::fs::MetadataExt;
            std::fs::metadata(store.dir())
                .map(|m| (m.uid(), m.gid()))
                .unwrap_or((0, 0))
        };
        SshServer {
            shared: Arc::new(Shared {
                store,
                forge,
                config: Arc::new(config),
                owner,
                limits,
                connections: Arc::new(Semaphore::new(limits.max_connections)),
                metrics,
                startups: Arc::new(Semaphore::new(limits.max_startups)),
                http_url: http_url.map(|u| u.trim_end_matches('/').to_owned()),
            }),
        }
    }

    /// Runs one SSH connection to its end. `peer` names it in the logs.
    ///
    /// A connection over [`Limits::max_connections`] or
    /// [`Limits::max_startups`] is closed at once; one that has not logged in
    /// within [`Limits::login_grace`] is closed then.
    pub async fn run_connection<S>(&self, stream: S, peer: String)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Some(guard) = self.admit(&peer) else {
            return;
        };
        let (authed_tx, authed_rx) = oneshot::channel();
        let conn = Conn {
            shared: self.shared.clone(),
            peer: peer.clone(),
            user: None,
            startup: Some((guard.startup, authed_tx)),
            channels: HashMap::new(),
            git_protocol: HashMap::new(),
        };
        let grace = tokio::time::sleep(self.shared.limits.login_grace);
        tokio::pin!(grace);
        let cut = tokio_util::sync::CancellationToken::new();
        let stream = Cuttable {
            inner: stream,
            cut: Box::pin(cut.clone().cancelled_owned()),
        };
        let late = || tracing::info!(%peer, "closed: no login within {} s", self.shared.limits.login_grace.as_secs());
        // The version exchange is part of the login: a peer that sends
        // nothing is held no longer than one that stalls later.
        let running = tokio::select! {
            r = russh::server::run_stream(self.shared.config.clone(), stream, conn) => r,
            () = &mut grace => return late(),
        };
        let session = match running {
            Ok(session) => session,
            Err(e) => return tracing::debug!(%peer, "ssh handshake failed: {e}"),
        };
        tokio::pin!(session);
        let ended = tokio::select! {
            r = &mut session => Some(r),
            // Err: the handler is gone, so the session is ending anyway.
            _ = authed_rx => None,
            () = &mut grace => {
                late();
                // A session stalled in its key exchange reads nothing more:
                // its stream fails, the session ends, the socket closes.
                cut.cancel();
                None
            }
        };
        let ended = match ended {
            Some(r) => r,
            None => session.await,
        };
        if let Err(e) = ended {
            tracing::debug!(%peer, "ssh connection ended: {e}");
        }
        drop(guard.connection);
    }

    /// The permits a new connection needs, or `None` (logged) when the node
    /// holds as many as it allows.
    fn admit(&self, peer: &str) -> Option<Admitted> {
        let Ok(connection) = self.shared.connections.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "refused a connection: {} are open (limits.max_connections)", self.shared.limits.max_connections);
            return None;
        };
        let Ok(startup) = self.shared.startups.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "refused a connection: {} are logging in (limits.max_startups)", self.shared.limits.max_startups);
            return None;
        };
        Some(Admitted { connection, startup })
    }

    /// How long a connection may take to log in.
    pub(crate) fn login_grace(&self) -> Duration {
        self.shared.limits.login_grace
    }
}

/// A connection's stream that the server can cut: once `cut` resolves,
/// reads and writes fail, so the session that holds it ends.
struct Cuttable<S> {
    inner: S,
    cut: std::pin::Pin<Box<tokio_util::sync::WaitForCancellationFutureOwned>>,
}

impl<S> Cuttable<S> {
    fn is_cut(&mut self, cx: &mut std::task::Context<'_>) -> bool {
        self.cut.as_mut().poll(cx).is_ready()
    }
}

fn cut_error() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::ConnectionAborted, "closed by the server")
}

impl<S: AsyncRead + Unpin> AsyncRead for Cuttable<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if self.is_cut(cx) {
            return std::task::Poll::Ready(Err(cut_error()));
        }
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Cuttable<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        if self.is_cut(cx) {
            return std::task::Poll::Ready(Err(cut_error()));
        }
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A connection's place in the node's limits, held while it lasts.
struct Admitted {
    connection: OwnedSemaphorePermit,
    startup: OwnedSemaphorePermit,
}

struct Conn {
    shared: Arc<Shared>,
    peer: String,
    /// Set once a key has authenticated.
    user: Option<String>,
    /// Until then: a place among the connections logging in, and the
    /// signal that ends the login deadline.
    startup: Option<(OwnedSemaphorePermit, oneshot::Sender<()>)>,
    /// Session channels opened but not yet given a subsystem.
    channels: HashMap<ChannelId, Channel<Msg>>,
    /// `GIT_PROTOCOL` as set by an env request, per channel.
    git_protocol: HashMap<ChannelId, String>,
}

impl Conn {
    /// The session channel a subsystem or exec request is for, answered
    /// with success; `None` (after a failure reply) if there is none.
    fn take_channel(&mut self, id: ChannelId, session: &mut Session) -> Result<Option<Channel<Msg>>, russh::Error> {
        let Some(channel) = self.channels.remove(&id) else {
            session.channel_failure(id)?;
            return Ok(None);
        };
        session.channel_success(id)?;
        Ok(Some(channel))
    }

    fn lookup(&self, key: &russh::keys::PublicKey) -> Option<String> {
        match crate::access::user_for_key(&self.shared.store, key) {
            Ok(user) => user,
            Err(e) => {
                tracing::error!(peer = %self.peer, "key lookup failed: {e}");
                None
            }
        }
    }
}

impl russh::server::Handler for Conn {
    type Error = russh::Error;

    async fn auth_publickey_offered(&mut self, ssh_user: &str, offer: PublicKeyOffer<'_>) -> Result<Auth, Self::Error> {
        Ok(if self.lookup(offer.public_key).is_some() {
            Auth::Accept
        } else {
            let key = offer.public_key.fingerprint(russh::keys::HashAlg::Sha256);
            tracing::info!(peer = %self.peer, %ssh_user, %key, "login refused: the key belongs to no user");
            Auth::reject()
        })
    }

    async fn auth_publickey(&mut self, ssh_user: &str, key: VerifiedPublicKey<'_>) -> Result<Auth, Self::Error> {
        match self.lookup(key.public_key) {
            Some(user) => {
                tracing::debug!(peer = %self.peer, %ssh_user, %user, "authenticated");
                self.user = Some(user);
                if let Some((_permit, authed)) = self.startup.take() {
                    authed.send(()).ok();
                }
                Ok(Auth::Accept)
            }
            None => {
                let key = key.public_key.fingerprint(russh::keys::HashAlg::Sha256);
                tracing::info!(peer = %self.peer, %ssh_user, %key, "login refused: the key belongs to no user");
                Ok(Auth::reject())
            }
        }
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: russh::server::ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.channels.insert(channel.id(), channel);
        reply.accept().await;
        Ok(())
    }

    async fn subsystem_request(&mut self, id: ChannelId, name: &str, session: &mut Session) -> Result<(), Self::Error> {
        let Some(user) = self.user.clone() else {
            session.channel_failure(id)?;
            return Ok(());
        };
        if name != "sftp" && name != alknet_mount_protocol::SUBSYSTEM {
            session.channel_failure(id)?;
            return Ok(());
        }
        let Some(channel) = self.take_channel(id, session)? else {
            return Ok(());
        };
        let peer = self.peer.clone();
        if name == alknet_mount_protocol::SUBSYSTEM {
            let store = self.shared.store.clone();
            let who = user.clone();
            let open = move |addr: &str, read_only: bool| mount_tree(&store, Some(&who), addr, read_only);
            let shared = self.shared.clone();
            tokio::spawn(async move {
                let counted = shared.metrics.session("mount");
                match alknet_mount_protocol::serve(channel.into_stream(), open).await {
                    Ok(s) => {
                        counted.done(true);
                        tracing::info!(
                            %peer, %user, addr = %s.addr, sent = s.sent, received = s.received, outcome = "ok", "remote mount"
                        )
                    }
                    Err(e) => {
                        counted.done(false);
                        tracing::warn!(%peer, %user, outcome = %e, "remote mount ended by the server")
                    }
                }
            });
            return Ok(());
        }
        let ctx = sftp::Context {
            store: self.shared.store.clone(),
            user: user.clone(),
            owner: self.shared.owner,
        };
        let shared = self.shared.clone();
        tokio::spawn(async move {
            let counted = shared.metrics.session("sftp");
            match sftp::serve(channel.into_stream(), ctx).await {
                Ok(buckets) => {
                    counted.done(true);
                    tracing::info!(%peer, %user, buckets = %buckets.join(","), outcome = "ok", "sftp session")
                }
                Err(e) => {
                    counted.done(false);
                    tracing::warn!(%peer, %user, outcome = %e, "sftp session ended by the server")
                }
            }
        });
        Ok(())
    }

    async fn env_request(
        &mut self,
        id: ChannelId,
        name: &str,
        value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        if name == "GIT_PROTOCOL" {
            self.git_protocol.insert(id, value.to_owned());
            session.channel_success(id)?;
        } else {
            session.channel_failure(id)?;
        }
        Ok(())
    }

    async fn exec_request(&mut self, id: ChannelId, data: &[u8], session: &mut Session) -> Result<(), Self::Error> {
        let command = String::from_utf8_lossy(data);
        if let (Some(user), Some((path, service))) =
            (self.user.clone(), git::parse_lfs_command(&command, "git-lfs-transfer"))
        {
            let Some(channel) = self.take_channel(id, session)? else {
                return Ok(());
            };
            let (shared, handle) = (self.shared.clone(), session.handle());
            let peer = self.peer.clone();
            tokio::spawn(async move {
                let counted = shared.metrics.session("git");
                let served = crate::lfs_ssh::serve(
                    shared.forge.clone(),
                    user.clone(),
                    path.clone(),
                    service,
                    channel.into_stream(),
                )
                .await;
                let code = match served {
                    Ok(code) => code,
                    Err(message) => {
                        tracing::info!(%peer, %user, %path, "git-lfs-transfer refused: {message}");
                        handle
                            .extended_data(id, 1, bytes::Bytes::from(format!("{message}\n")))
                            .await
                            .ok();
                        1
                    }
                };
                counted.done(code == 0);
                handle.exit_status_request(id, code).await.ok();
                handle.eof(id).await.ok();
                handle.close(id).await.ok();
            });
            return Ok(());
        }
        if let (Some(user), Some((path, service))) = (
            self.user.clone(),
            git::parse_lfs_command(&command, "git-lfs-authenticate"),
        ) {
            let Some(channel) = self.take_channel(id, session)? else {
                return Ok(());
            };
            let (shared, handle) = (self.shared.clone(), session.handle());
            let peer = self.peer.clone();
            tokio::spawn(async move {
                // The forge and the token are SQLite: off the async threads.
                let answer = {
                    let (forge, url, user, path) = (
                        shared.forge.clone(),
                        shared.http_url.clone(),
                        user.clone(),
                        path.clone(),
                    );
                    tokio::task::spawn_blocking(move || {
                        git::lfs_authenticate(&forge, url.as_deref(), &user, &path, service)
                    })
                    .await
                    .unwrap_or_else(|e| Err(format!("the server failed: {e}")))
                };
                let (text, code) = match answer {
                    Ok(json) => (format!("{json}\n"), 0),
                    Err(message) => {
                        tracing::info!(%peer, %user, %path, "git-lfs-authenticate refused: {message}");
                        (format!("{message}\n"), 1)
                    }
                };
                let data = bytes::Bytes::from(text.into_bytes());
                if code == 0 {
                    handle.data(id, data).await.ok();
                } else {
                    handle.extended_data(id, 1, data).await.ok();
                }
                handle.exit_status_request(id, code).await.ok();
                handle.eof(id).await.ok();
                handle.close(id).await.ok();
                drop(channel);
            });
            return Ok(());
        }
        let (Some(user), Some((service, path))) = (self.user.clone(), git::parse_command(&command)) else {
            tracing::info!(peer = %self.peer, %command, "refused exec: only git-upload-pack and git-receive-pack run here");
            session.channel_failure(id)?;
            return Ok(());
        };
        let Some(channel) = self.take_channel(id, session)? else {
            return Ok(());
        };
        let v2 = self
            .git_protocol
            .remove(&id)
            .is_some_and(|p| p.split(':').any(|kv| kv == "version=2"));
        let req = git::Request {
            forge: self.shared.forge.clone(),
            user,
            service,
            path,
            v2,
            peer: self.peer.clone(),
        };
        let (shared, handle) = (self.shared.clone(), session.handle());
        tokio::spawn(async move {
            let counted = shared.metrics.session("git");
            let code = git::serve(req, channel.into_stream(), handle, id).await;
            counted.done(code == 0);
        });
        Ok(())
    }

    async fn shell_request(&mut self, id: ChannelId, session: &mut Session) -> Result<(), Self::Error> {
        session.channel_failure(id)?;
        Ok(())
    }
}

/// The tree a remote or local mount asks for, as `user` may use it
/// (`None`: the data directory's owner, through the node's socket, who may
/// do anything): refused without a grant (as "no such bucket", like a
/// missing one), read-only on a `read` grant, a past version or a branch
/// published from git.
pub fn mount_tree(
    store: &Store,
    user: Option<&str>,
    addr: &str,
    read_only: bool,
) -> Result<alknet_mount_protocol::Local, String> {
    let a = Address::parse(addr).map_err(|e| e.to_string())?;
    if !a.path.is_root() {
        return Err(format!("{addr}: mount a bucket or branch, not a path inside it"));
    }
    let Some(user) = user else {
        let tree = store.tree(&a.bucket, &a.branch, &a.at).map_err(|e| e.to_string())?;
        return Ok(alknet_mount_protocol::Local::new(store, tree, read_only));
    };
    let who = alknet_fs::Principal::user(user);
    let tree = store
        .open_as(&who, &a.bucket, &a.branch, &a.at, Level::Read)
        .map_err(|e| match e {
            alknet_fs::Error::NoSuchBucket(b) => format!("{b}: no such bucket"),
            e if e.is_user_error() => e.to_string(),
            e => {
                tracing::error!("remote mount: {e}");
                "access check failed".into()
            }
        })?;
    let writable = store.check_as(&who, &a.bucket, Level::Write).is_ok();
    Ok(alknet_mount_protocol::Local::new(store, tree, read_only || !writable))
}
