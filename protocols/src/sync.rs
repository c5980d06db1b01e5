//! Sync over the QUIC endpoint: the `alknet/sync` ALPN carries the
//! replication protocol of `alknet-sync` (one bi-stream per bucket, frames of
//! a 4-byte big-endian length and a postcard [`Msg`]), and iroh-blobs'
//! protocol on the same endpoint carries the bytes, verified by BLAKE3.
//!
//! Every peer is a node id the store knows (`alknet peer add`); anything
//! else is refused at the door. Per bucket, the store's one rule
//! ([`Store::peer_level`]) says whether the peer may be sent commits
//! (`read`) and whether its commits are applied (`write`); a blob is sent
//! only to a peer that may read a bucket whose history names it. The rule is
//! asked at every message, so a revoked grant stops the next one.
//!
//! A node dials each sync link (`alknet sync add`) and keeps it up,
//! reconnecting with backoff; the peer it dials serves the same session
//! back. Missing blobs are fetched in the background as commits arrive, and
//! all of a bucket's missing ones at each session's start (a fetch cut off
//! resumes where it stopped).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use alknet_fs::{BlobHash, Level, LinkStatus, Store};
use alknet_sync::{Allowed, Msg, Replica};
use iroh::endpoint::{Connection, RecvStream, SendStream};
use iroh::protocol::{AcceptError, ProtocolHandler};
use iroh::{Endpoint, EndpointAddr, EndpointId};
use iroh_blobs::provider::events::{
    AbortReason, ConnectMode, EventMask, EventSender, ObserveMode, ProviderMessage, RequestMode, ThrottleMode,
};
use serde::{Deserialize, Serialize};

/// ALPN of the replication protocol.
pub const ALPN_SYNC: &[u8] = b"alknet/sync";

/// The largest frame a peer may send (a commit is never split; one of a
/// 100,000-file import is ~20 MB).
const MAX_FRAME: usize = 64 << 20;
/// Buckets one connection may sync at once (one stream each).
const MAX_STREAMS: usize = 64;
/// How often a session says what it holds, if that changed.
const TICK: Duration = Duration::from_millis(200);
/// Reconnect waits, first and at most.
const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(15);
/// Blob fetches in flight per session.
const FETCHES: usize = 32;
/// The pause before fetching again after a fetch failed.
const FETCH_RETRY: Duration = Duration::from_secs(2);
/// How long a dial may take.
const DIAL_TIMEOUT: Duration = Duration::from_secs(10);

/// The first frame on a stream: which bucket it syncs.
#[derive(Serialize, Deserialize)]
struct Open {
    bucket: String,
}

/// What [`crate::serve`] runs for sync on the QUIC endpoint.
pub struct SyncFront {
    pub service: SyncService,
    pub blobs: BlobsHandler,
}

impl SyncFront {
    pub async fn new(store: Store, endpoint: Endpoint) -> anyhow::Result<SyncFront> {
        let service = SyncService::new(store, endpoint);
        let blobs = service.blobs().await?;
        Ok(SyncFront { service, blobs })
    }
}

/// The sync service of a node: accepts sessions, dials its links, serves
/// blobs.
#[derive(Clone)]
pub struct SyncService {
    store: Store,
    endpoint: Endpoint,
}

impl std::fmt::Debug for SyncService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SyncService")
    }
}

impl SyncService {
    pub fn new(store: Store, endpoint: Endpoint) -> SyncService {
        SyncService { store, endpoint }
    }

    /// The handler of [`iroh_blobs::ALPN`]: this store's blobs, to peers
    /// that may read them.
    pub async fn blobs(&self) -> anyhow::Result<BlobsHandler> {
        let mask = EventMask {
            connected: ConnectMode::Intercept,
            get: RequestMode::Intercept,
            get_many: RequestMode::Intercept,
            push: RequestMode::Disabled,
            observe: ObserveMode::None,
            throttle: ThrottleMode::None,
        };
        let (events, rx) = EventSender::channel(64, mask);
        tokio::spawn(guard_blobs(self.store.clone(), rx));
        Ok(BlobsHandler(self.store.blob_provider(events).await?))
    }

    /// Dials every sync link and keeps it up until the task is dropped;
    /// links added or removed later are picked up within a second.
    pub async fn run_links(self) {
        let mut running: BTreeMap<(String, String), tokio::task::JoinHandle<()>> = BTreeMap::new();
        loop {
            let store = self.store.clone();
            match tokio::task::spawn_blocking(move || store.sync_links()).await {
                Ok(Ok(links)) => {
                    let wanted: Vec<(String, String)> =
                        links.iter().map(|l| (l.peer.clone(), l.bucket.clone())).collect();
                    running.retain(|k, task| {
                        let keep = wanted.contains(k) && !task.is_finished();
                        if !keep {
                            task.abort();
                        }
                        keep
                    });
                    for link in links {
                        let key = (link.peer.clone(), link.bucket.clone());
                        running
                            .entry(key)
                            .or_insert_with(|| tokio::spawn(self.clone().keep_link(link)));
                    }
                }
                Ok(Err(e)) => tracing::warn!("sync: cannot read the sync links: {e}"),
                Err(e) => tracing::warn!("sync: {e}"),
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// One link: dial, run the session, and again after a drop, with backoff.
    async fn keep_link(self, link: alknet_fs::SyncLink) {
        let mut backoff = BACKOFF_MIN;
        loop {
            let started = std::time::Instant::now();
            let outcome = async {
                let id: EndpointId = link
                    .node_id
                    .parse()
                    .map_err(|_| anyhow::anyhow!("peer {}: bad node id {}", link.peer, link.node_id))?;
                let addr = resolve(id, &link.addr).await?;
                let conn = tokio::time::timeout(DIAL_TIMEOUT, self.endpoint.connect(addr.clone(), ALPN_SYNC))
                    .await
                    .map_err(|_| anyhow::anyhow!("{}: no answer within {} s", link.addr, DIAL_TIMEOUT.as_secs()))??;
                let (mut send, recv) = conn.open_bi().await?;
                write_frame(
                    &mut send,
                    &Open {
                        bucket: link.bucket.clone(),
                    },
                )
                .await?;
                let session = Session {
                    store: self.store.clone(),
                    endpoint: self.endpoint.clone(),
                    peer: link.peer.clone(),
                    node_id: link.node_id.clone(),
                    peer_addr: addr,
                    bucket: link.bucket.clone(),
                    branches: link.branches.clone(),
                };
                let out = session.run(send, recv).await;
                conn.close(0u32.into(), b"bye");
                out
            }
            .await;
            let error = match outcome {
                Ok(()) => "the peer ended the session".to_owned(),
                Err(e) => format!("{e:#}"),
            };
            tracing::info!("sync {} with {}: {error}; reconnecting", link.bucket, link.peer);
            let status = LinkStatus {
                peer: link.peer.clone(),
                bucket: link.bucket.clone(),
                connected: false,
                last_error: Some(error),
                ..Default::default()
            };
            record(&self.store, status).await;
            if started.elapsed() > BACKOFF_MAX {
                backoff = BACKOFF_MIN;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }
}

impl ProtocolHandler for SyncService {
    async fn accept(&self, conn: Connection) -> Result<(), AcceptError> {
        let node_id = conn.remote_id().to_string();
        let store = self.store.clone();
        let id = node_id.clone();
        let peer = tokio::task::spawn_blocking(move || store.list_peers())
            .await
            .ok()
            .and_then(Result::ok)
            .and_then(|peers| peers.into_iter().find(|p| p.node_id == id));
        let Some(peer) = peer else {
            tracing::info!(
                "sync: refused {}: not a peer of this node",
                conn.remote_id().fmt_short()
            );
            conn.close(1u32.into(), b"not a peer of this node");
            return Ok(());
        };
        let addr = match resolve(conn.remote_id(), &peer.addr).await {
            Ok(a) => a,
            Err(_) => EndpointAddr::new(conn.remote_id()),
        };
        let streams = Arc::new(tokio::sync::Semaphore::new(MAX_STREAMS));
        loop {
            let Ok((send, mut recv)) = conn.accept_bi().await else {
                return Ok(());
            };
            let Ok(permit) = streams.clone().try_acquire_owned() else {
                tracing::warn!("sync: {} opened more than {MAX_STREAMS} streams", peer.name);
                conn.close(2u32.into(), b"too many streams");
                return Ok(());
            };
            let session = Session {
                store: self.store.clone(),
                endpoint: self.endpoint.clone(),
                peer: peer.name.clone(),
                node_id: node_id.clone(),
                peer_addr: addr.clone(),
                bucket: String::new(),
                branches: None,
            };
            tokio::spawn(async move {
                let _permit = permit;
                let open: Open = match read_frame(&mut recv).await {
                    Ok(Some(open)) => open,
                    _ => return,
                };
                let session = Session {
                    bucket: open.bucket,
                    ..session
                };
                let (peer, bucket) = (session.peer.clone(), session.bucket.clone());
                if let Err(e) = session.run(send, recv).await {
                    tracing::info!("sync {bucket} with {peer} (dialed by it): {e:#}");
                }
            });
        }
    }
}

/// Resolves a peer's `HOST:PORT` to an address of its endpoint.
async fn resolve(id: EndpointId, host_port: &str) -> anyhow::Result<EndpointAddr> {
    let found: Vec<std::net::SocketAddr> = tokio::net::lookup_host(host_port).await?.collect();
    let addr = found.iter().fold(EndpointAddr::new(id), |a, s| a.with_ip_addr(*s));
    if addr.ip_addrs().next().is_none() {
        anyhow::bail!("{host_port} has no address");
    }
    Ok(addr)
}

async fn record(store: &Store, status: LinkStatus) {
    let store = store.clone();
    let done = tokio::task::spawn_blocking(move || store.set_sync_status(&status)).await;
    if let Ok(Err(e)) = done {
        tracing::warn!("sync: cannot record the session's state: {e}");
    }
}

/// One bucket's session with one peer, on one bi-stream; the same on the
/// side that dialed and the side that accepted.
struct Session {
    store: Store,
    endpoint: Endpoint,
    peer: String,
    node_id: String,
    peer_addr: EndpointAddr,
    bucket: String,
    branches: Option<Vec<String>>,
}

impl Session {
    /// What the peer may do with the bucket now.
    async fn allowed(&self) -> anyhow::Result<Allowed> {
        let (store, node, bucket) = (self.store.clone(), self.node_id.clone(), self.bucket.clone());
        let level = tokio::task::spawn_blocking(move || store.peer_level(&node, &bucket)).await??;
        Ok(Allowed {
            read: level.is_some(),
            write: level.is_some_and(|l| l >= Level::Write),
        })
    }

    async fn run(self, mut send: SendStream, mut recv: RecvStream) -> anyhow::Result<()> {
        let allowed = self.allowed().await?;
        if !allowed.read && !allowed.write {
            anyhow::bail!("peer {} has no grant on bucket {}", self.peer, self.bucket);
        }
        let replica = Arc::new(Replica::new(self.store.clone(), &self.bucket, self.branches.clone()));
        let (fetch_tx, fetch_rx) = tokio::sync::mpsc::unbounded_channel::<Vec<BlobHash>>();
        let fetcher = tokio::spawn(fetch_blobs(
            self.store.clone(),
            self.endpoint.clone(),
            self.peer_addr.clone(),
            self.bucket.clone(),
            fetch_rx,
        ));
        let _stop_fetcher = crate::endpoint::AbortOnDrop(fetcher);
        let mut status = LinkStatus {
            peer: self.peer.clone(),
            bucket: self.bucket.clone(),
            connected: true,
            ..Default::default()
        };
        record(&self.store, status.clone()).await;
        let mut theirs: BTreeMap<String, alknet_fs::Vector> = BTreeMap::new();
        let mut behinds: BTreeMap<String, u64> = BTreeMap::new();
        // However the session ends (an error, or the link removed and its
        // task dropped), it is recorded as down.
        let _down = Down(Some((self.store.clone(), self.peer.clone(), self.bucket.clone())));
        let mut said: Option<Vec<Msg>> = None;
        let mut tick = tokio::time::interval(TICK);
        let result: anyhow::Result<()> = loop {
            tokio::select! {
                _ = tick.tick() => {
                    let r = replica.clone();
                    let hello = tokio::task::spawn_blocking(move || r.hello()).await??;
                    if said.as_ref() != Some(&hello) {
                        for m in &hello {
                            write_frame(&mut send, m).await?;
                        }
                        said = Some(hello);
                    }
                }
                frame = read_frame::<Msg>(&mut recv) => {
                    let Some(msg) = frame? else { break Ok(()) };
                    let allowed = self.allowed().await?;
                    let branch = match &msg {
                        Msg::Have { branch, vector } => {
                            if allowed.write {
                                theirs.insert(branch.clone(), vector.clone());
                            }
                            branch.clone()
                        }
                        Msg::Commits { branch, .. } => branch.clone(),
                    };
                    let r = replica.clone();
                    let their = theirs.get(&branch).cloned().unwrap_or_default();
                    let (handled, behind) = tokio::task::spawn_blocking(move || {
                        let handled = r.handle(msg, allowed)?;
                        let behind = r.behind(&branch, &their)?;
                        Ok::<_, alknet_fs::Error>((handled, (branch, behind)))
                    })
                    .await??;
                    for m in &handled.replies {
                        write_frame(&mut send, m).await?;
                    }
                    if !handled.blobs.is_empty() {
                        fetch_tx.send(handled.blobs).ok();
                    }
                    behinds.insert(behind.0, behind.1);
                    let total = behinds.values().sum();
                    if total != status.versions_behind {
                        status.versions_behind = total;
                        record(&self.store, status.clone()).await;
                    }
                }
            }
        };
        send.finish().ok();
        result
    }
}

/// Records a session as not connected when it ends.
struct Down(Option<(Store, String, String)>);

impl Drop for Down {
    fn drop(&mut self) {
        if let Some((store, peer, bucket)) = self.0.take() {
            let mark = move || {
                let mut s = store
                    .sync_status()
                    .ok()
                    .and_then(|all| all.into_iter().find(|s| s.peer == peer && s.bucket == bucket))
                    .unwrap_or_default();
                (s.peer, s.bucket, s.connected) = (peer, bucket, false);
                store.set_sync_status(&s).ok();
            };
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => drop(rt.spawn_blocking(mark)),
                Err(_) => mark(),
            }
        }
    }
}

/// Fetches a bucket's missing blobs from the peer: all of them first, then
/// those that arriving commits name. Verified by iroh-blobs as they come.
async fn fetch_blobs(
    store: Store,
    endpoint: Endpoint,
    peer: EndpointAddr,
    bucket: String,
    mut named: tokio::sync::mpsc::UnboundedReceiver<Vec<BlobHash>>,
) {
    let mut conn: Option<Connection> = None;
    let mut first = true;
    loop {
        let wanted = if first {
            first = false;
            store
                .missing_in(&bucket)
                .await
                .map(|m| m.into_iter().map(|(h, _)| h).collect())
        } else {
            match named.recv().await {
                Some(h) => store.missing_blobs(&h).await,
                None => return,
            }
        };
        let wanted = match wanted {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!("sync {bucket}: {e}");
                continue;
            }
        };
        if wanted.is_empty() {
            continue;
        }
        // Reads of these wait for them (after a restart, too).
        store.expect_blobs(&wanted);
        let c = match &conn {
            Some(c) if c.close_reason().is_none() => c.clone(),
            _ => match endpoint.connect(peer.clone(), iroh_blobs::ALPN).await {
                Ok(c) => {
                    conn = Some(c.clone());
                    c
                }
                Err(e) => {
                    tracing::info!("sync {bucket}: cannot reach the peer's blobs: {e}");
                    first = true;
                    tokio::time::sleep(BACKOFF_MAX).await;
                    continue;
                }
            },
        };
        use n0_future::{BufferedStreamExt, StreamExt};
        let results: Vec<(BlobHash, alknet_fs::Result<()>)> = n0_future::stream::iter(wanted)
            .map(|h| {
                let (store, c) = (store.clone(), c.clone());
                async move { (h, store.fetch_blob(c, &h).await) }
            })
            .buffered_unordered(FETCHES)
            .collect()
            .await;
        let mut failed = false;
        for (h, r) in results {
            if let Err(e) = r {
                tracing::info!("sync {bucket}: fetching {h}: {e}");
                failed = true;
            }
        }
        if failed {
            // Try the whole list again, after a pause (a peer refusing or
            // losing a blob must not make this a busy loop).
            first = true;
            tokio::time::sleep(FETCH_RETRY).await;
        }
    }
}

/// Serves blobs (iroh-blobs' protocol) without shutting the store down
/// with the router: the node closes the store itself, after a last flush.
#[derive(Debug, Clone)]
pub struct BlobsHandler(iroh_blobs::BlobsProtocol);

impl ProtocolHandler for BlobsHandler {
    async fn accept(&self, conn: Connection) -> Result<(), AcceptError> {
        self.0.accept(conn).await
    }
}

/// Answers iroh-blobs' questions: only peers connect, and a peer gets a
/// blob only if it may read a bucket whose history names it.
async fn guard_blobs(store: Store, mut rx: tokio::sync::mpsc::Receiver<ProviderMessage>) {
    let mut who: BTreeMap<u64, String> = BTreeMap::new();
    while let Some(msg) = rx.recv().await {
        match msg {
            ProviderMessage::ClientConnected(m) => {
                let node = m.inner.endpoint_id.map(|e| e.to_string());
                let store = store.clone();
                let peer = match node.clone() {
                    Some(n) => tokio::task::spawn_blocking(move || store.peer_named(&n))
                        .await
                        .ok()
                        .and_then(Result::ok)
                        .flatten(),
                    None => None,
                };
                let answer = match (peer, node) {
                    (Some(_), Some(n)) => {
                        who.insert(m.inner.connection_id, n);
                        Ok(())
                    }
                    _ => Err(AbortReason::Permission),
                };
                m.tx.send(answer).await.ok();
            }
            ProviderMessage::ConnectionClosed(m) => {
                who.remove(&m.inner.connection_id);
            }
            ProviderMessage::GetRequestReceived(m) => {
                let hashes = vec![BlobHash(*m.inner.request.hash.as_bytes())];
                let ok = may_read(&store, who.get(&m.inner.connection_id), hashes).await;
                m.tx.send(if ok { Ok(()) } else { Err(AbortReason::Permission) })
                    .await
                    .ok();
            }
            ProviderMessage::GetManyRequestReceived(m) => {
                let hashes = m.inner.request.hashes.iter().map(|h| BlobHash(*h.as_bytes())).collect();
                let ok = may_read(&store, who.get(&m.inner.connection_id), hashes).await;
                m.tx.send(if ok { Ok(()) } else { Err(AbortReason::Permission) })
                    .await
                    .ok();
            }
            ProviderMessage::PushRequestReceived(m) => {
                m.tx.send(Err(AbortReason::Permission)).await.ok();
            }
            ProviderMessage::ObserveRequestReceived(m) => {
                m.tx.send(Err(AbortReason::Permission)).await.ok();
            }
            ProviderMessage::Throttle(m) => {
                m.tx.send(Ok(())).await.ok();
            }
            _ => {}
        }
    }
}

async fn may_read(store: &Store, node: Option<&String>, hashes: Vec<BlobHash>) -> bool {
    let Some(node) = node.cloned() else { return false };
    let store = store.clone();
    tokio::task::spawn_blocking(move || {
        hashes
            .iter()
            .all(|h| store.peer_may_read_blob(&node, h).unwrap_or(false))
    })
    .await
    .unwrap_or(false)
}

async fn write_frame<T: Serialize>(send: &mut SendStream, msg: &T) -> anyhow::Result<()> {
    let body = postcard::to_stdvec(msg)?;
    anyhow::ensure!(
        body.len() <= MAX_FRAME,
        "a message of {} bytes is over the frame limit",
        body.len()
    );
    send.write_all(&(body.len() as u32).to_be_bytes()).await?;
    send.write_all(&body).await?;
    Ok(())
}

/// The next frame; `None` when the peer finished the stream.
async fn read_frame<T: for<'de> Deserialize<'de>>(recv: &mut RecvStream) -> anyhow::Result<Option<T>> {
    let mut len = [0u8; 4];
    match recv.read_exact(&mut len).await {
        Ok(_) => {}
        Err(iroh::endpoint::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_be_bytes(len) as usize;
    anyhow::ensure!(
        len <= MAX_FRAME,
        "the peer sent a frame of {len} bytes, over the limit of {MAX_FRAME}"
    );
    let mut body = vec![0u8; len];
    recv.read_exact(&mut body).await?;
    Ok(Some(postcard::from_bytes(&body).map_err(alknet_sync::bad_message)?))
}
