//! Share links: a path of a branch at one fixed version, readable by anyone
//! who holds the link, until it expires or is revoked.
//!
//! A link's secret is `shr_` and 64 hex digits (256 random bits), shown once
//! when it is made, like a token's. The store keeps its first 8 hex digits
//! to find it and the SHA-256 of the whole secret to check it. A link reads
//! as its maker with `read` access: it dies with its maker, and it shows
//! nothing once the maker can no longer read the bucket. A password, if
//! set, is kept as an Argon2id hash with a salt of its own.

use std::time::Duration;

use rusqlite::{OptionalExtension, params};
use serde::{Deserialize, Serialize};

use crate::access::{Level, Principal};
use crate::db::now_ms;
use crate::error::{Error, Result};
use crate::name::{Address, At};
use crate::store::Store;
use crate::tokens::{digest, same};
use crate::tree::Tree;
use crate::types::Version;

/// What a share link's secret starts with.
pub const SHARE_PREFIX: &str = "shr_";

/// A share link as listed (never its secret).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ShareInfo {
    pub id: i64,
    /// The first 8 hex digits after `shr_`, to tell links apart.
    pub prefix: String,
    pub user: String,
    pub bucket: String,
    pub branch: String,
    pub version: Version,
    /// The shared file or directory, from the branch's root (`/` for all).
    pub path: String,
    pub password: bool,
    pub created_ms: i64,
    pub expires_ms: Option<i64>,
}

/// What [`Store::create_share`] makes.
pub struct NewShare<'a> {
    /// The maker: the link reads with this user's access.
    pub user: &'a str,
    /// What it shows: the address's version or snapshot, or, for a branch's
    /// head, the newest version at the moment the link is made.
    pub address: &'a Address,
    pub lifetime: Option<Duration>,
    pub password: Option<&'a str>,
}

/// An open share link: what it shows, and the tree to read it from.
pub struct Share {
    pub info: ShareInfo,
    pub tree: Tree,
    /// For a link with a password: the proof that a visitor gave it
    /// (derived from the secret and the stored hash; see [`Store::unlock_share`]).
    unlock: Option<[u8; 32]>,
}

impl Share {
    /// Whether the visitor may see the link: it has no password, or `proof`
    /// is what [`Store::unlock_share`] gave for the right one.
    pub fn unlocked_by(&self, proof: Option<&str>) -> bool {
        match (&self.unlock, proof) {
            (None, _) => true,
            (Some(key), Some(proof)) => same(hex(key).as_bytes(), proof.as_bytes()),
            (Some(_), None) => false,
        }
    }
}

const COLUMNS: &str = "SELECT s.id, s.prefix, u.name, b.name, s.branch, s.version, s.path, s.password IS NOT NULL,
     s.created_ms, s.expires_ms";
const FROM: &str = "FROM shares s JOIN users u ON u.id = s.user_id JOIN buckets b ON b.id = s.bucket_id";

fn share_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ShareInfo> {
    Ok(ShareInfo {
        id: r.get(0)?,
        prefix: r.get(1)?,
        user: r.get(2)?,
        bucket: r.get(3)?,
        branch: r.get(4)?,
        version: Version(r.get::<_, i64>(5)? as u64),
        path: r.get(6)?,
        password: r.get(7)?,
        created_ms: r.get(8)?,
        expires_ms: r.get(9)?,
    })
}

impl Store {
    /// Makes a share link of `new.address`, pinned to one version; the maker
    /// must be able to read the bucket, and the path must exist there.
    /// Returns the link as listed and its secret, which is not kept.
    pub fn create_share(&self, new: &NewShare<'_>) -> Result<(ShareInfo, String)> {
        let maker = Principal::user(new.user);
        let a = new.address;
        let tree = self.open_as(&maker, &a.bucket, &a.branch, &a.at, Level::Read)?;
        let version = match tree.at() {
            Some(v) => v,
            None => self.log(&tree, 1)?.first().map_or(Version(0), |c| c.version),
        };
        tree.stat(&a.path)?;
        if let Some(p) = new.password
            && (p.is_empty() || p.len() > 1024)
        {
            return Err(Error::InvalidName {
                what: "share password",
                value: String::new(),
                reason: "use 1-1024 bytes",
            });
        }
        let secret: [u8; 32] = rand::random();
        let text = format!("{SHARE_PREFIX}{}", hex(&secret));
        let prefix = text[SHARE_PREFIX.len()..][..8].to_owned();
        let (password, salt) = match new.password {
            None => (None, None),
            Some(p) => {
                let salt: [u8; 16] = rand::random();
                (Some(stretch(p, &salt)?), Some(salt))
            }
        };
        let created_ms = now_ms();
        let expires_ms = new
            .lifetime
            .map(|l| created_ms.saturating_add(i64::try_from(l.as_millis()).unwrap_or(i64::MAX)));
        let id = self.inner.db.write(|tx| {
            let uid: i64 = tx
                .query_row("SELECT id FROM users WHERE name = ?1", [new.user], |r| r.get(0))
                .optional()?
                .ok_or_else(|| Error::NoSuchUser(new.user.to_owned()))?;
            let bid = Self::bucket_id(tx, tree.bucket())?;
            tx.execute(
                "INSERT INTO shares (prefix, hash, user_id, bucket_id, branch, version, path, password, salt,
                     created_ms, expires_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                params![
                    prefix,
                    digest(&text).as_slice(),
                    uid,
                    bid,
                    tree.branch(),
                    version.0 as i64,
                    a.path.as_str(),
                    password.as_ref().map(|p| p.as_slice()),
                    salt.as_ref().map(|s| s.as_slice()),
                    created_ms,
                    expires_ms,
                ],
            )?;
            Ok(tx.last_insert_rowid())
        })?;
        let info = ShareInfo {
            id,
            prefix,
            user: new.user.to_owned(),
            bucket: tree.bucket().to_owned(),
            branch: tree.branch().to_owned(),
            version,
            path: a.path.as_str().to_owned(),
            password: password.is_some(),
            created_ms,
            expires_ms,
        };
        Ok((info, text))
    }

    /// The share links `user` made (every link for `None`), oldest first.
    pub fn list_shares(&self, user: Option<&str>) -> Result<Vec<ShareInfo>> {
        self.inner.db.read(|c| {
            let mut stmt = c.prepare_cached(&format!(
                "{COLUMNS} {FROM} WHERE ?1 IS NULL OR u.name = ?1 ORDER BY s.id"
            ))?;
            let rows = stmt.query_map([user], share_row)?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
    }

    /// Revokes the link with id or prefix `which`, if `user` made it (any
    /// link for `None`); returns it as it was.
    pub fn revoke_share(&self, which: &str, user: Option<&str>) -> Result<ShareInfo> {
        let which = which.strip_prefix(SHARE_PREFIX).unwrap_or(which);
        let found: Vec<ShareInfo> = self
            .list_shares(user)?
            .into_iter()
            .filter(|s| s.id.to_string() == which || (which.len() >= 4 && s.prefix.starts_with(which)))
            .collect();
        let share = match found.len() {
            1 => found.into_iter().next().ok_or(Error::NoSuchShare)?,
            0 => return Err(Error::NoSuchShare),
            _ => {
                return Err(Error::InvalidName {
                    what: "share",
                    value: which.to_owned(),
                    reason: "several links match: give its id",
                });
            }
        };
        self.inner
            .db
            .write(|tx| Ok(tx.execute("DELETE FROM shares WHERE id = ?1", [share.id])?))?;
        Ok(share)
    }

    /// The link whose secret is `text`, opened read-only at its version as
    /// its maker: [`Error::NoSuchShare`] for an unknown or revoked one (or
    /// one whose maker can no longer read it), [`Error::ShareExpired`].
    pub fn open_share(&self, text: &str) -> Result<Share> {
        let (info, stored) = self.find_share(text)?;
        if info.expires_ms.is_some_and(|e| e <= now_ms()) {
            return Err(Error::ShareExpired);
        }
        let maker = Principal::user(&info.user);
        let tree = self
            .open_as(
                &maker,
                &info.bucket,
                &info.branch,
                &At::Version(info.version.0),
                Level::Read,
            )
            .map_err(|e| match e.kind() {
                "not_found" | "denied" => Error::NoSuchShare,
                _ => e,
            })?;
        let unlock = stored.map(|hash| unlock_key(text, &hash));
        Ok(Share { info, tree, unlock })
    }

    /// The proof (hex) that a visitor gave link `text`'s password, if
    /// `password` is it; `None` if not (or if the link has none).
    pub fn unlock_share(&self, text: &str, password: &str) -> Result<Option<String>> {
        let (_, stored) = self.find_share(text)?;
        let Some(hash) = stored else {
            return Ok(None);
        };
        let salt: Vec<u8> = self.inner.db.read(|c| {
            Ok(c.query_row(
                "SELECT salt FROM shares WHERE hash = ?1",
                [digest(text).as_slice()],
                |r| r.get::<_, Vec<u8>>(0),
            )?)
        })?;
        let given = stretch(password, &salt)?;
        Ok(same(&given, &hash).then(|| hex(&unlock_key(text, &hash))))
    }

    /// The link `text` names and its stored password hash.
    fn find_share(&self, text: &str) -> Result<(ShareInfo, Option<Vec<u8>>)> {
        let hex = text.strip_prefix(SHARE_PREFIX).ok_or(Error::NoSuchShare)?;
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Error::NoSuchShare);
        }
        let want = digest(text);
        self.inner.db.read(|c| {
            let mut stmt = c.prepare_cached(&format!("{COLUMNS}, s.hash, s.password {FROM} WHERE s.prefix = ?1"))?;
            let rows = stmt.query_map([&hex[..8]], |r| {
                Ok((
                    share_row(r)?,
                    r.get::<_, Vec<u8>>(10)?,
                    r.get::<_, Option<Vec<u8>>>(11)?,
                ))
            });
            for row in rows? {
                let (info, hash, password) = row?;
                if same(&hash, &want) {
                    return Ok((info, password));
                }
            }
            Err(Error::NoSuchShare)
        })
    }
}

/// `7d`, `12h`, `30m`, `2w`, `90s` (a bare number: days): how long a
/// link lives; at most ten years.
pub fn parse_lifetime(text: &str) -> Result<Duration> {
    let bad = || Error::InvalidName {
        what: "expiry",
        value: text.to_owned(),
        reason: "use a number and s, m, h, d or w (7d)",
    };
    let t = text.trim();
    let (n, unit) = t.split_at(t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len()));
    let n: u64 = n.parse().map_err(|_| bad())?;
    let secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" | "" => 86_400,
        "w" => 7 * 86_400,
        _ => return Err(bad()),
    };
    if n == 0 || n > 3650 * 86_400 / secs {
        return Err(bad());
    }
    Ok(Duration::from_secs(n * secs))
}

/// Argon2id of a password (the crate's default cost: 19 MiB, 2 passes).
fn stretch(password: &str, salt: &[u8]) -> Result<[u8; 32]> {
    let mut out = [0u8; 32];
    argon2::Argon2::default()
        .hash_password_into(password.as_bytes(), salt, &mut out)
        .map_err(|e| Error::Internal(format!("hashing a share password: {e}")))?;
    Ok(out)
}

fn unlock_key(text: &str, hash: &[u8]) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key("alknet share unlock 2026-12");
    h.update(text.as_bytes());
    h.update(hash);
    *h.finalize().as_bytes()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
