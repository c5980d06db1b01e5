//! Peers: other nodes this one syncs with (decision 24). A peer is a name
//! and a node id — the Ed25519 key that authenticates it on the QUIC
//! endpoint — and an address to dial. Like a user, a peer may do nothing
//! until granted: per bucket, `read` (it may be sent this node's commits and
//! blobs) or `write` (this node applies its commits). A sync link says this
//! node keeps a bucket in sync with a peer, dialing it.

use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

use crate::access::Level;
use crate::db::now_ms;
use crate::error::{Error, Result};
use crate::store::Store;
use crate::types::BlobHash;

/// A peer, its grants and the buckets this node syncs with it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    pub name: String,
    pub node_id: String,
    /// `HOST:PORT` of its QUIC endpoint.
    pub addr: String,
    pub grants: Vec<(String, Level)>,
    pub syncs: Vec<String>,
}

/// One bucket this node keeps in sync with one peer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncLink {
    pub peer: String,
    pub node_id: String,
    pub addr: String,
    pub bucket: String,
    /// The branches synced; `None`: all of them.
    pub branches: Option<Vec<String>>,
}

/// How one bucket's sync with one peer stands (`alknet sync status`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkStatus {
    pub peer: String,
    pub bucket: String,
    pub connected: bool,
    /// Commits the peer said it holds that this node does not yet.
    pub versions_behind: u64,
    /// Blobs this node's history of the bucket names but does not hold
    /// (filled in by the caller: [`Store::missing_in`]).
    pub blobs_missing: u64,
    pub bytes_to_fetch: u64,
    pub last_error: Option<String>,
    /// When the session last changed state (ms since the epoch).
    pub updated_ms: i64,
}

/// A peer's name: what a user name may be (letters, digits, `.-_`).
pub fn check_peer_name(name: &str) -> Result<()> {
    crate::access::check_user_name(name).map_err(|_| Error::InvalidName {
        what: "peer name",
        value: name.to_owned(),
        reason: "use 1 to 64 lowercase letters, digits, '.', '-' or '_', starting with a letter or digit",
    })
}

/// Git repositories do not sync yet: their refs and packs live outside
/// the tree, and a replicated tree would part from them.
pub(crate) fn refuse_repo(c: &Connection, bucket: &str) -> Result<()> {
    let kind: Option<String> = c
        .query_row("SELECT kind FROM buckets WHERE name = ?1", [bucket], |r| r.get(0))
        .optional()?;
    if kind.as_deref() == Some(crate::store::REPO_KIND) {
        return Err(Error::InvalidName {
            what: "bucket to sync",
            value: bucket.to_owned(),
            reason: "it is a git repository, and repositories do not sync yet",
        });
    }
    Ok(())
}

fn peer_id(c: &Connection, name: &str) -> Result<i64> {
    c.query_row("SELECT id FROM peers WHERE name = ?1", [name], |r| r.get(0))
        .optional()?
        .ok_or_else(|| Error::NoSuchPeer(name.to_owned()))
}

impl Store {
    /// Adds a peer: `node_id` as the endpoint prints it, `addr` its `HOST:PORT`.
    pub fn add_peer(&self, name: &str, node_id: &str, addr: &str) -> Result<()> {
        check_peer_name(name)?;
        self.inner.db.write(|tx| {
            let taken: Option<String> = tx
                .query_row(
                    "SELECT name FROM peers WHERE name = ?1 OR node_id = ?2",
                    params![name, node_id],
                    |r| r.get(0),
                )
                .optional()?;
            if let Some(other) = taken {
                return Err(Error::PeerExists(if other == name {
                    format!("{name:?}")
                } else {
                    format!("{other:?} has node id {node_id}")
                }));
            }
            tx.execute(
                "INSERT INTO peers (name, node_id, addr, created_ms) VALUES (?1, ?2, ?3, ?4)",
                params![name, node_id, addr, now_ms()],
            )?;
            Ok(())
        })
    }

    /// Removes a peer with its grants and sync links.
    pub fn remove_peer(&self, name: &str) -> Result<()> {
        self.inner.db.write(|tx| {
            let id = peer_id(tx, name)?;
            tx.execute("DELETE FROM peer_grants WHERE peer_id = ?1", [id])?;
            tx.execute("DELETE FROM sync_links WHERE peer_id = ?1", [id])?;
            tx.execute("DELETE FROM sync_status WHERE peer = ?1", [name])?;
            tx.execute("DELETE FROM peers WHERE id = ?1", [id])?;
            Ok(())
        })
    }

    pub fn list_peers(&self) -> Result<Vec<Peer>> {
        self.inner.db.read(|c| {
            let mut peers: Vec<(i64, Peer)> = {
                let mut stmt = c.prepare("SELECT id, name, node_id, addr FROM peers ORDER BY name")?;
                stmt.query_map([], |r| {
                    Ok((
                        r.get(0)?,
                        Peer {
                            name: r.get(1)?,
                            node_id: r.get(2)?,
                            addr: r.get(3)?,
                            grants: Vec::new(),
                            syncs: Vec::new(),
                        },
                    ))
                })?
                .collect::<rusqlite::Result<_>>()?
            };
            let mut grants = c.prepare(
                "SELECT b.name, g.level FROM peer_grants g JOIN buckets b ON b.id = g.bucket_id
                 WHERE g.peer_id = ?1 ORDER BY b.name",
            )?;
            let mut syncs = c.prepare(
                "SELECT b.name FROM sync_links s JOIN buckets b ON b.id = s.bucket_id WHERE s.peer_id = ?1 ORDER BY b.name",
            )?;
            for (id, p) in &mut peers {
                for g in grants.query_map([*id], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))? {
                    let (bucket, level) = g?;
                    p.grants.push((bucket, level.parse()?));
                }
                p.syncs = syncs.query_map([*id], |r| r.get(0))?.collect::<rusqlite::Result<_>>()?;
            }
            Ok(peers.into_iter().map(|(_, p)| p).collect())
        })
    }

    /// Lets `peer` read (be sent) or write (have its commits applied to)
    /// `bucket`; `admin` counts as `write`.
    pub fn grant_peer(&self, peer: &str, bucket: &str, level: Level) -> Result<()> {
        self.inner.db.write(|tx| {
            let pid = peer_id(tx, peer)?;
            let bid = Self::bucket_id(tx, bucket)?;
            tx.execute(
                "INSERT INTO peer_grants (peer_id, bucket_id, level) VALUES (?1, ?2, ?3)
                 ON CONFLICT (peer_id, bucket_id) DO UPDATE SET level = excluded.level",
                params![pid, bid, level.min(Level::Write).as_str()],
            )?;
            Ok(())
        })
    }

    pub fn revoke_peer(&self, peer: &str, bucket: &str) -> Result<()> {
        self.inner.db.write(|tx| {
            let pid = peer_id(tx, peer)?;
            let bid = Self::bucket_id(tx, bucket)?;
            if tx.execute(
                "DELETE FROM peer_grants WHERE peer_id = ?1 AND bucket_id = ?2",
                params![pid, bid],
            )? == 0
            {
                return Err(Error::NoSuchGrant {
                    user: format!("peer {peer}"),
                    bucket: bucket.to_owned(),
                });
            }
            Ok(())
        })
    }

    /// What the peer with this node id may do with `bucket`: the one rule
    /// every sync path (commits and blobs) asks. `None`: nothing, or no
    /// such peer.
    pub fn peer_level(&self, node_id: &str, bucket: &str) -> Result<Option<Level>> {
        self.inner.db.read(|c| {
            let level: Option<String> = c
                .query_row(
                    "SELECT g.level FROM peer_grants g JOIN peers p ON p.id = g.peer_id
                     JOIN buckets b ON b.id = g.bucket_id WHERE p.node_id = ?1 AND b.name = ?2",
                    params![node_id, bucket],
                    |r| r.get(0),
                )
                .optional()?;
            level.map(|l| l.parse()).transpose()
        })
    }

    /// The name of the peer with this node id, if it is one.
    pub fn peer_named(&self, node_id: &str) -> Result<Option<String>> {
        self.inner.db.read(|c| {
            Ok(
                c.query_row("SELECT name FROM peers WHERE node_id = ?1", [node_id], |r| r.get(0))
                    .optional()?,
            )
        })
    }

    /// Whether the peer with this node id may read some bucket whose
    /// history names blob `hash`: what it must hold to be sent the blob.
    pub fn peer_may_read_blob(&self, node_id: &str, hash: &BlobHash) -> Result<bool> {
        self.inner.db.read(|c| {
            Ok(c.prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM sync_ops o JOIN branches b ON b.id = o.branch_id
                     JOIN peer_grants g ON g.bucket_id = b.bucket_id JOIN peers p ON p.id = g.peer_id
                     WHERE o.hash = ?1 AND p.node_id = ?2)",
            )?
            .query_row(params![hash.0.to_vec(), node_id], |r| r.get(0))?)
        })
    }

    /// Keeps `bucket` in sync with `peer` (all branches, or only `branches`).
    pub fn add_sync(&self, bucket: &str, peer: &str, branches: Option<&[String]>) -> Result<()> {
        let branches = branches.map(|b| serde_json::to_string(b).expect("a list of names serialises"));
        self.inner.db.write(|tx| {
            let pid = peer_id(tx, peer)?;
            let bid = Self::bucket_id(tx, bucket)?;
            refuse_repo(tx, bucket)?;
            tx.execute(
                "INSERT INTO sync_links (peer_id, bucket_id, branches) VALUES (?1, ?2, ?3)
                 ON CONFLICT (peer_id, bucket_id) DO UPDATE SET branches = excluded.branches",
                params![pid, bid, branches],
            )?;
            Ok(())
        })
    }

    pub fn remove_sync(&self, bucket: &str, peer: &str) -> Result<()> {
        self.inner.db.write(|tx| {
            let pid = peer_id(tx, peer)?;
            let bid = Self::bucket_id(tx, bucket)?;
            if tx.execute(
                "DELETE FROM sync_links WHERE peer_id = ?1 AND bucket_id = ?2",
                params![pid, bid],
            )? == 0
            {
                return Err(Error::NoSuchSync {
                    peer: peer.to_owned(),
                    bucket: bucket.to_owned(),
                });
            }
            Ok(())
        })
    }

    /// Records how a sync session stands.
    pub fn set_sync_status(&self, status: &LinkStatus) -> Result<()> {
        let mut status = status.clone();
        status.updated_ms = now_ms();
        let json = serde_json::to_string(&status).expect("a status serialises");
        self.inner.db.write(|tx| {
            tx.execute(
                "INSERT OR REPLACE INTO sync_status (peer, bucket, status) VALUES (?1, ?2, ?3)",
                params![status.peer, status.bucket, json],
            )?;
            Ok(())
        })
    }

    /// How every sync session stands: one per sync link (connected or
    /// not), and one per bucket a peer syncs with this node.
    pub fn sync_status(&self) -> Result<Vec<LinkStatus>> {
        let links = self.sync_links()?;
        self.inner.db.read(|c| {
            let mut stmt = c.prepare("SELECT status FROM sync_status ORDER BY peer, bucket")?;
            let mut out: Vec<LinkStatus> = stmt
                .query_map([], |r| r.get::<_, String>(0))?
                .filter_map(|s| s.ok().and_then(|s| serde_json::from_str(&s).ok()))
                .collect();
            for l in links {
                if !out.iter().any(|s| s.peer == l.peer && s.bucket == l.bucket) {
                    out.push(LinkStatus {
                        peer: l.peer,
                        bucket: l.bucket,
                        ..Default::default()
                    });
                }
            }
            out.sort_by(|a, b| (&a.peer, &a.bucket).cmp(&(&b.peer, &b.bucket)));
            Ok(out)
        })
    }

    /// Every bucket this node keeps in sync, with the peer it dials.
    pub fn sync_links(&self) -> Result<Vec<SyncLink>> {
        self.inner.db.read(|c| {
            let mut stmt = c.prepare(
                "SELECT p.name, p.node_id, p.addr, b.name, s.branches FROM sync_links s
                 JOIN peers p ON p.id = s.peer_id JOIN buckets b ON b.id = s.bucket_id ORDER BY p.name, b.name",
            )?;
            let rows = stmt.query_map([], |r| {
                let branches: Option<String> = r.get(4)?;
                Ok(SyncLink {
                    peer: r.get(0)?,
                    node_id: r.get(1)?,
                    addr: r.get(2)?,
                    bucket: r.get(3)?,
                    branches: branches.and_then(|b| serde_json::from_str(&b).ok()),
                })
            })?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })
    }
}
