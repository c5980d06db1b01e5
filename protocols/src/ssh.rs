//! The SSH server: public-key authentication against [`Access`], no shell,
//! the `sftp` subsystem, and git's `git-upload-pack` / `git-receive-pack`
//! exec requests, and the remote mount's `alknet-fs` subsystem. The same
//! server runs over TCP and over a QUIC
//! bi-stream ([`crate::endpoint`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use alknet_forge::Forge;
use alknet_fs::{Address, Store};
use russh::keys::PrivateKey;
use russh::server::{Auth, Msg, PublicKeyOffer, Session, VerifiedPublicKey};
use russh::{Channel, ChannelId, MethodKind, MethodSet};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::access::{Access, Level};
use crate::{git, sftp};

/// One SSH service shared by every connection. Cheap to clone.
#[derive(Clone)]
pub struct SshServer {
    shared: Arc<Shared>,
}

struct Shared {
    store: Store,
    forge: Forge,
    access: Arc<Access>,
    config: Arc<russh::server::Config>,
    owner: (u32, u32),
}

impl std::fmt::Debug for SshServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SshServer")
    }
}

impl SshServer {
    pub fn new(forge: Forge, access: Arc<Access>, host_key: PrivateKey) -> SshServer {
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
                access,
                config: Arc::new(config),
                owner,
            }),
        }
    }

    /// Runs one SSH connection to its end. `peer` names it in the logs.
    pub async fn run_connection<S>(&self, stream: S, peer: String)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let conn = Conn {
            shared: self.shared.clone(),
            peer: peer.clone(),
            user: None,
            channels: HashMap::new(),
            git_protocol: HashMap::new(),
        };
        match russh::server::run_stream(self.shared.config.clone(), stream, conn).await {
            Ok(session) => {
                if let Err(e) = session.await {
                    tracing::debug!(%peer, "ssh connection ended: {e}");
                }
            }
            Err(e) => tracing::debug!(%peer, "ssh handshake failed: {e}"),
        }
    }
}

struct Conn {
    shared: Arc<Shared>,
    peer: String,
    /// Set once a key has authenticated.
    user: Option<String>,
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
        match self.shared.access.user_for_key(key) {
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

    async fn auth_publickey_offered(&mut self, _user: &str, offer: PublicKeyOffer<'_>) -> Result<Auth, Self::Error> {
        Ok(if self.lookup(offer.public_key).is_some() {
            Auth::Accept
        } else {
            Auth::reject()
        })
    }

    async fn auth_publickey(&mut self, ssh_user: &str, key: VerifiedPublicKey<'_>) -> Result<Auth, Self::Error> {
        match self.lookup(key.public_key) {
            Some(user) => {
                tracing::debug!(peer = %self.peer, %ssh_user, %user, "authenticated");
                self.user = Some(user);
                Ok(Auth::Accept)
            }
            None => {
                tracing::info!(peer = %self.peer, %ssh_user, "refused an unknown key");
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
        if name != "sftp" && name != alknet_mount::SUBSYSTEM {
            session.channel_failure(id)?;
            return Ok(());
        }
        let Some(channel) = self.take_channel(id, session)? else {
            return Ok(());
        };
        let peer = self.peer.clone();
        if name == alknet_mount::SUBSYSTEM {
            let (store, access) = (self.shared.store.clone(), self.shared.access.clone());
            let who = user.clone();
            let open = move |addr: &str, read_only: bool| mount_tree(&store, &access, &who, addr, read_only);
            tokio::spawn(async move {
                match alknet_mount::serve(channel.into_stream(), open).await {
                    Ok(s) => tracing::info!(
                        %peer, %user, addr = %s.addr, sent = s.sent, received = s.received, outcome = "ok", "remote mount"
                    ),
                    Err(e) => tracing::warn!(%peer, %user, outcome = %e, "remote mount ended by the server"),
                }
            });
            return Ok(());
        }
        let ctx = sftp::Context {
            store: self.shared.store.clone(),
            access: self.shared.access.clone(),
            user: user.clone(),
            owner: self.shared.owner,
        };
        tokio::spawn(async move {
            match sftp::serve(channel.into_stream(), ctx).await {
                Ok(buckets) => {
                    tracing::info!(%peer, %user, buckets = %buckets.join(","), outcome = "ok", "sftp session")
                }
                Err(e) => tracing::warn!(%peer, %user, outcome = %e, "sftp session ended by the server"),
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
            access: self.shared.access.clone(),
            user,
            service,
            path,
            v2,
            peer: self.peer.clone(),
        };
        tokio::spawn(git::serve(req, channel.into_stream(), session.handle(), id));
        Ok(())
    }

    async fn shell_request(&mut self, id: ChannelId, session: &mut Session) -> Result<(), Self::Error> {
        session.channel_failure(id)?;
        Ok(())
    }
}

/// The tree a remote mount asks for, as `user` may use it: refused without
/// a grant (as "no such bucket", like a missing one), read-only on a `read`
/// grant.
fn mount_tree(
    store: &Store,
    access: &Access,
    user: &str,
    addr: &str,
    read_only: bool,
) -> Result<alknet_mount::Local, String> {
    let a = Address::parse(addr).map_err(|e| e.to_string())?;
    if !a.path.is_root() {
        return Err(format!("{addr}: mount a bucket or branch, not a path inside it"));
    }
    let level = match access.level(user, &a.bucket) {
        Ok(Some(level)) => level,
        Ok(None) => return Err(format!("{}: no such bucket", a.bucket)),
        Err(e) => {
            tracing::error!("remote mount: access check: {e}");
            return Err("access check failed".into());
        }
    };
    let tree = store.tree(&a.bucket, &a.branch, &a.at).map_err(|e| e.to_string())?;
    Ok(alknet_mount::Local::new(store, tree, read_only || level < Level::Write))
}
