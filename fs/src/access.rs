//! Who may do what: users, their SSH public keys, and per-bucket grants —
//! tables of the store's own schema, so a grant lives and dies with its
//! bucket (keyed by bucket id, deleted in the bucket's own transaction).
//!
//! Deny by default: a key that belongs to no user authenticates nobody, and
//! a user sees a bucket only through a grant or by being an admin.
//! [`Store::level`] is the whole policy, and [`Store::open_as`] applies it:
//! every frontend opens the trees it serves through it.

use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

use crate::db::now_ms;
use crate::error::{Error, Result};
use crate::store::Store;

/// What a grant allows, in increasing order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Read,
    Write,
    Admin,
}

impl std::str::FromStr for Level {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "read" => Ok(Level::Read),
            "write" => Ok(Level::Write),
            "admin" => Ok(Level::Admin),
            other => Err(Error::InvalidName {
                what: "access level",
                value: other.to_owned(),
                reason: "use read, write or admin",
            }),
        }
    }
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Read => "read",
            Level::Write => "write",
            Level::Admin => "admin",
        }
    }
}

impl std::fmt::Display for Level {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who is asking: a user, and whether they came with a read-only token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    pub user: String,
    pub read_only: bool,
}

impl Principal {
    /// A user signed in with a key or a token that may change things.
    pub fn user(name: &str) -> Principal {
        Principal {
            user: name.to_owned(),
            read_only: false,
        }
    }

    /// The user's level on `bucket`, capped at `read` for a read-only token.
    pub fn level(&self, store: &Store, bucket: &str) -> Result<Option<Level>> {
        Ok(store
            .level(&self.user, bucket)?
            .map(|l| if self.read_only { l.min(Level::Read) } else { l }))
    }
}

/// A user as listed.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[non_exhaustive]
pub struct User {
    pub name: String,
    pub admin: bool,
    /// `type base64` of each key (no comments).
    pub keys: Vec<String>,
    /// `(bucket, level)` pairs.
    pub grants: Vec<(String, Level)>,
}

/// Checks a user name: 1-64 of `a-z 0-9 . _ -`, starting with a letter or digit.
pub fn check_user_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
    if ok {
        return Ok(());
    }
    Err(Error::InvalidName {
        what: "user name",
        value: name.to_owned(),
        reason: "use 1-64 of a-z, 0-9, '.', '_', '-', starting with a letter or digit",
    })
}

impl Store {
    /// Adds a user who logs in with `key` (an OpenSSH public key without its
    /// comment, `ssh-ed25519 AAAA…`).
    pub fn add_user(&self, name: &str, key: &str, admin: bool) -> Result<()> {
        check_user_name(name)?;
        self.inner.db.write(|tx| {
            if let Some(owner) = owner_of(tx, key)? {
                return Err(Error::KeyTaken(owner));
            }
            let n = tx.execute(
                "INSERT OR IGNORE INTO users (name, admin, created_ms) VALUES (?1, ?2, ?3)",
                params![name, admin, now_ms()],
            )?;
            if n == 0 {
                return Err(Error::UserExists(name.to_owned()));
            }
            tx.execute(
                "INSERT INTO user_keys (key, user_id) VALUES (?1, ?2)",
                params![key, tx.last_insert_rowid()],
            )?;
            Ok(())
        })
    }

    /// Gives `user` one more key.
    pub fn add_user_key(&self, user: &str, key: &str) -> Result<()> {
        self.inner.db.write(|tx| {
            let id = user_id(tx, user)?;
            if let Some(owner) = owner_of(tx, key)? {
                return Err(Error::KeyTaken(owner));
            }
            tx.execute("INSERT INTO user_keys (key, user_id) VALUES (?1, ?2)", params![key, id])?;
            Ok(())
        })
    }

    /// Takes a key from `user`; the last one stays (remove the user instead).
    pub fn remove_user_key(&self, user: &str, key: &str) -> Result<()> {
        self.inner.db.write(|tx| {
            let id = user_id(tx, user)?;
            let keys: i64 = tx.query_row("SELECT count(*) FROM user_keys WHERE user_id = ?1", [id], |r| r.get(0))?;
            let has: bool = tx.query_row(
                "SELECT EXISTS (SELECT 1 FROM user_keys WHERE user_id = ?1 AND key = ?2)",
                params![id, key],
                |r| r.get(0),
            )?;
            if !has {
                return Err(Error::NoSuchKey(user.to_owned()));
            }
            if keys == 1 {
                return Err(Error::LastKey(user.to_owned()));
            }
            tx.execute(
                "DELETE FROM user_keys WHERE user_id = ?1 AND key = ?2",
                params![id, key],
            )?;
            Ok(())
        })
    }

    /// Removes a user with their keys and grants.
    pub fn remove_user(&self, name: &str) -> Result<()> {
        self.inner.db.write(|tx| {
            let id = user_id(tx, name)?;
            tx.execute("DELETE FROM grants WHERE user_id = ?1", [id])?;
            tx.execute("DELETE FROM tokens WHERE user_id = ?1", [id])?;
            tx.execute("DELETE FROM locks WHERE user_id = ?1", [id])?;
            tx.execute("DELETE FROM shares WHERE user_id = ?1", [id])?;
            tx.execute("DELETE FROM user_keys WHERE user_id = ?1", [id])?;
            tx.execute("DELETE FROM users WHERE id = ?1", [id])?;
            Ok(())
        })
    }

    pub fn list_users(&self) -> Result<Vec<User>> {
        self.inner.db.read(|c| {
            let mut users = Vec::new();
            let mut stmt = c.prepare("SELECT id, name, admin FROM users ORDER BY name")?;
            let rows: Vec<(i64, String, bool)> = stmt
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect::<rusqlite::Result<_>>()?;
            for (id, name, admin) in rows {
                let keys = c
                    .prepare_cached("SELECT key FROM user_keys WHERE user_id = ?1 ORDER BY key")?
                    .query_map([id], |r| r.get(0))?
                    .collect::<rusqlite::Result<_>>()?;
                let grants = c
                    .prepare_cached(
                        "SELECT b.name, g.level FROM grants g JOIN buckets b ON b.id = g.bucket_id
                         WHERE g.user_id = ?1 ORDER BY b.name",
                    )?
                    .query_map([id], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?
                    .collect::<rusqlite::Result<Vec<_>>>()?
                    .into_iter()
                    .filter_map(|(b, l)| Some((b, l.parse().ok()?)))
                    .collect();
                users.push(User {
                    name,
                    admin,
                    keys,
                    grants,
                });
            }
            Ok(users)
        })
    }

    /// Gives `user` `level` on the existing `bucket` (replacing an earlier grant).
    pub fn grant(&self, user: &str, bucket: &str, level: Level) -> Result<()> {
        self.inner.db.write(|tx| {
            let uid = user_id(tx, user)?;
            let bid = Self::bucket_id(tx, bucket)?;
            tx.execute(
                "INSERT INTO grants (user_id, bucket_id, level) VALUES (?1, ?2, ?3)
                 ON CONFLICT (user_id, bucket_id) DO UPDATE SET level = excluded.level",
                params![uid, bid, level.as_str()],
            )?;
            Ok(())
        })
    }

    /// Takes `user`'s grant on `bucket` away; an error if there was none.
    pub fn revoke(&self, user: &str, bucket: &str) -> Result<()> {
        self.inner.db.write(|tx| {
            let uid = user_id(tx, user)?;
            let bid = Self::bucket_id(tx, bucket)?;
            let n = tx.execute(
                "DELETE FROM grants WHERE user_id = ?1 AND bucket_id = ?2",
                params![uid, bid],
            )?;
            if n == 0 {
                return Err(Error::NoSuchGrant {
                    user: user.to_owned(),
                    bucket: bucket.to_owned(),
                });
            }
            Ok(())
        })
    }

    /// The user `key` (as for [`Store::add_user`]) belongs to, if any.
    pub fn user_for_key(&self, key: &str) -> Result<Option<String>> {
        self.inner.db.read(|c| owner_of(c, key))
    }

    /// What `user` may do on `bucket`: admins everything, others their
    /// grant, nobody anything on a bucket that does not exist.
    pub fn level(&self, user: &str, bucket: &str) -> Result<Option<Level>> {
        self.inner.db.read(|c| {
            let row: Option<(bool, Option<String>)> = c
                .prepare_cached(
                    "SELECT u.admin, g.level FROM users u
                     LEFT JOIN buckets b ON b.name = ?2
                     LEFT JOIN grants g ON g.user_id = u.id AND g.bucket_id = b.id
                     WHERE u.name = ?1",
                )?
                .query_row(params![user, bucket], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?;
            Ok(match row {
                None => None,
                Some((true, _)) => Some(Level::Admin),
                Some((false, level)) => level.and_then(|l| l.parse().ok()),
            })
        })
    }

    /// Checks that `who` has `need` on `bucket`, for what is not a tree
    /// (branches, snapshots); their level. The grant half of
    /// [`Store::open_as`].
    pub fn check_as(&self, who: &Principal, bucket: &str, need: Level) -> Result<Level> {
        let Some(level) = who.level(self, bucket)? else {
            return Err(Error::NoSuchBucket(bucket.to_owned()));
        };
        if level < need {
            return Err(Error::Denied {
                user: who.user.clone(),
                bucket: bucket.to_owned(),
                has: level,
                needs: need,
                token: who.read_only,
            });
        }
        Ok(level)
    }

    /// The tree `bucket@branch` at `at`, opened for `who`, who must have
    /// `need` on the bucket — the one access rule every frontend calls. A
    /// bucket `who` may not see is [`Error::NoSuchBucket`], exactly as if it
    /// did not exist; too low a level is [`Error::Denied`]; a change to a
    /// past version or a branch published from git is [`Error::ReadOnly`].
    pub fn open_as(
        &self,
        who: &Principal,
        bucket: &str,
        branch: &str,
        at: &crate::At,
        need: Level,
    ) -> Result<crate::Tree> {
        self.check_as(who, bucket, need)?;
        let tree = self.tree(bucket, branch, at)?;
        if need >= Level::Write {
            tree.check_writable(&format!("{bucket}@{branch}"))?;
        }
        Ok(tree)
    }

    pub fn is_admin(&self, user: &str) -> Result<bool> {
        self.inner.db.read(|c| {
            Ok(c.prepare_cached("SELECT admin FROM users WHERE name = ?1")?
                .query_row([user], |r| r.get(0))
                .optional()?
                .unwrap_or(false))
        })
    }

    pub fn user_count(&self) -> Result<u64> {
        self.inner
            .db
            .read(|c| Ok(c.query_row("SELECT count(*) FROM users", [], |r| r.get::<_, i64>(0))? as u64))
    }
}

fn owner_of(c: &Connection, key: &str) -> Result<Option<String>> {
    Ok(
        c.prepare_cached("SELECT u.name FROM user_keys k JOIN users u ON u.id = k.user_id WHERE k.key = ?1")?
            .query_row([key], |r| r.get(0))
            .optional()?,
    )
}

fn user_id(c: &Connection, name: &str) -> Result<i64> {
    c.prepare_cached("SELECT id FROM users WHERE name = ?1")?
        .query_row([name], |r| r.get(0))
        .optional()?
        .ok_or_else(|| Error::NoSuchUser(name.to_owned()))
}
