//! API tokens: how HTTP clients (and git over HTTP) sign in as a user.
//!
//! A token is `alk_` and 64 hex digits (256 random bits), shown once when
//! it is made. The store keeps its first 8 hex digits to find it and the
//! SHA-256 of the whole token to check it, never the token itself. A token
//! acts as its user, with the user's grants ([`Store::open_as`]); a
//! read-only token never gets more than `read`. A token dies with its
//! user, when it expires, or when it is revoked.

use rusqlite::{OptionalExtension, params};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::access::Principal;
use crate::db::now_ms;
use crate::error::{Error, Result};
use crate::store::Store;

/// What a token's text starts with.
pub const TOKEN_PREFIX: &str = "alk_";

/// A token as listed (never its secret).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[non_exhaustive]
pub struct TokenInfo {
    pub id: i64,
    pub user: String,
    pub name: String,
    /// The first 8 hex digits after `alk_`, to tell tokens apart.
    pub prefix: String,
    pub read_only: bool,
    pub created_ms: i64,
    pub expires_ms: Option<i64>,
}

impl Store {
    /// Makes a token for `user`; returns it as listed and its secret text,
    /// which is not kept and cannot be shown again.
    pub fn create_token(
        &self,
        user: &str,
        name: Option<&str>,
        expires_days: Option<u32>,
        read_only: bool,
    ) -> Result<(TokenInfo, String)> {
        let lifetime = expires_days.map(|d| std::time::Duration::from_secs(u64::from(d) * 86_400));
        self.make_token(user, name, lifetime, read_only)
    }

    /// A token that lives for `lifetime` only, for a service to hand out
    /// (`git-lfs-authenticate`); expired ones of the same user and name go
    /// as it is made, so they do not pile up.
    pub fn create_token_for(
        &self,
        user: &str,
        name: &str,
        lifetime: std::time::Duration,
        read_only: bool,
    ) -> Result<(TokenInfo, String)> {
        self.make_token(user, Some(name), Some(lifetime), read_only)
    }

    fn make_token(
        &self,
        user: &str,
        name: Option<&str>,
        lifetime: Option<std::time::Duration>,
        read_only: bool,
    ) -> Result<(TokenInfo, String)> {
        let secret: [u8; 32] = rand::random();
        let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
        let text = format!("{TOKEN_PREFIX}{hex}");
        let prefix = hex[..8].to_owned();
        let created_ms = now_ms();
        let expires_ms = lifetime.map(|l| created_ms.saturating_add(i64::try_from(l.as_millis()).unwrap_or(i64::MAX)));
        let name = name.map(str::to_owned).unwrap_or_else(|| format!("token-{prefix}"));
        if name.is_empty() || name.len() > 128 || name.chars().any(char::is_control) {
            return Err(Error::InvalidName {
                what: "token name",
                value: name,
                reason: "use 1-128 printable characters",
            });
        }
        let id = self.inner.db.write(|tx| {
            let uid: i64 = tx
                .prepare_cached("SELECT id FROM users WHERE name = ?1")?
                .query_row([user], |r| r.get(0))
                .optional()?
                .ok_or_else(|| Error::NoSuchUser(user.to_owned()))?;
            tx.execute(
                "DELETE FROM tokens WHERE user_id = ?1 AND name = ?2 AND expires_ms < ?3",
                params![uid, name, created_ms],
            )?;
            tx.execute(
                "INSERT INTO tokens (user_id, name, prefix, hash, read_only, created_ms, expires_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    uid,
                    name,
                    prefix,
                    digest(&text).as_slice(),
                    read_only,
                    created_ms,
                    expires_ms
                ],
            )?;
            Ok(tx.last_insert_rowid())
        })?;
        let info = TokenInfo {
            id,
            user: user.to_owned(),
            name,
            prefix,
            read_only,
            created_ms,
            expires_ms,
        };
        Ok((info, text))
    }

    /// Every token (of `user` only, if given), oldest first.
    pub fn list_tokens(&self, user: Option<&str>) -> Result<Vec<TokenInfo>> {
        self.inner.db.read(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT t.id, u.name, t.name, t.prefix, t.read_only, t.created_ms, t.expires_ms
                 FROM tokens t JOIN users u ON u.id = t.user_id
                 WHERE ?1 IS NULL OR u.name = ?1 ORDER BY t.id",
            )?;
            let rows = stmt
                .query_map([user], |r| {
                    Ok(TokenInfo {
                        id: r.get(0)?,
                        user: r.get(1)?,
                        name: r.get(2)?,
                        prefix: r.get(3)?,
                        read_only: r.get(4)?,
                        created_ms: r.get(5)?,
                        expires_ms: r.get(6)?,
                    })
                })?
                .collect::<rusqlite::Result<_>>()?;
            Ok(rows)
        })
    }

    /// Revokes the token with id, name or prefix `which` (of `user` only, if
    /// given); returns it. Several tokens with that name: an error naming
    /// their ids.
    pub fn revoke_token(&self, which: &str, user: Option<&str>) -> Result<TokenInfo> {
        let found: Vec<TokenInfo> = self
            .list_tokens(user)?
            .into_iter()
            .filter(|t| t.id.to_string() == which || t.name == which || t.prefix == which)
            .collect();
        let token = match found.as_slice() {
            [] => {
                return Err(Error::InvalidName {
                    what: "token",
                    value: which.to_owned(),
                    reason: "no such token (see `alknet token list`)",
                });
            }
            [one] => one.clone(),
            _ => {
                return Err(Error::InvalidName {
                    what: "token",
                    value: which.to_owned(),
                    reason: "several tokens match: give its id",
                });
            }
        };
        self.inner
            .db
            .write(|tx| Ok(tx.execute("DELETE FROM tokens WHERE id = ?1", [token.id])?))?;
        Ok(token)
    }

    /// Who `text` signs in as: `None` for anything but a live token.
    pub fn authenticate(&self, text: &str) -> Result<Option<Principal>> {
        let Some(hex) = text.strip_prefix(TOKEN_PREFIX) else {
            return Ok(None);
        };
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(None);
        }
        let want = digest(text);
        let now = now_ms();
        self.inner.db.read(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT t.hash, u.name, t.read_only, t.expires_ms FROM tokens t JOIN users u ON u.id = t.user_id
                 WHERE t.prefix = ?1",
            )?;
            let rows = stmt.query_map([&hex[..8]], |r| {
                Ok((
                    r.get::<_, Vec<u8>>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, bool>(2)?,
                    r.get::<_, Option<i64>>(3)?,
                ))
            })?;
            for row in rows {
                let (hash, user, read_only, expires) = row?;
                if same(&hash, &want) && expires.is_none_or(|e| e > now) {
                    return Ok(Some(Principal { user, read_only }));
                }
            }
            Ok(None)
        })
    }
}

/// The SHA-256 a secret is kept as (tokens, share links).
pub(crate) fn digest(text: &str) -> [u8; 32] {
    Sha256::digest(text.as_bytes()).into()
}

/// Compares two hashes in time that does not depend on where they differ.
pub(crate) fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
