//! Identity and access: users, their SSH public keys, and per-bucket grants.
//!
//! Stored in `alknet.db` next to the tree (tables `users`, `user_keys`,
//! `grants`). Deny by default: a key that belongs to no user authenticates
//! nobody, and a user sees a bucket only through a grant (or by being admin).

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension, params};
use russh::keys::PublicKey;
use serde::Serialize;

/// What a grant allows, in increasing order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Read,
    Write,
    Admin,
}

impl std::str::FromStr for Level {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        match s {
            "read" => Ok(Level::Read),
            "write" => Ok(Level::Write),
            "admin" => Ok(Level::Admin),
            other => Err(Error::BadLevel(other.to_owned())),
        }
    }
}

impl Level {
    fn as_str(self) -> &'static str {
        match self {
            Level::Read => "read",
            Level::Write => "write",
            Level::Admin => "admin",
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("user {0:?} does not exist")]
    NoSuchUser(String),
    #[error("user {0:?} already exists")]
    UserExists(String),
    #[error("invalid user name {0:?}: use 1-64 of a-z, 0-9, '.', '_', '-', starting with a letter or digit")]
    BadUserName(String),
    #[error("not an OpenSSH public key ({0})")]
    BadKey(String),
    #[error("that key already belongs to user {0:?}")]
    KeyTaken(String),
    #[error("unknown access level {0:?}: use read, write or admin")]
    BadLevel(String),
    #[error("database error: {0}")]
    Db(#[from] rusqlite::Error),
}

/// A user as listed.
#[derive(Clone, Debug, Serialize)]
pub struct User {
    pub name: String,
    pub admin: bool,
    /// `type base64` of each key (no comments).
    pub keys: Vec<String>,
    /// `(bucket, level)` pairs.
    pub grants: Vec<(String, Level)>,
}

/// The users, keys and grants of one data directory.
pub struct Access {
    conn: Mutex<Connection>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS users (
    id         INTEGER PRIMARY KEY,
    name       TEXT NOT NULL UNIQUE,
    admin      INTEGER NOT NULL DEFAULT 0,
    created_ms INTEGER NOT NULL
);
-- key: the OpenSSH public key without its comment ('ssh-ed25519 AAAA…').
CREATE TABLE IF NOT EXISTS user_keys (
    key     TEXT PRIMARY KEY,
    user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE
);
CREATE TABLE IF NOT EXISTS grants (
    user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    bucket  TEXT NOT NULL,
    level   TEXT NOT NULL,
    PRIMARY KEY (user_id, bucket)
);
";

/// The canonical text of a key: algorithm and base64, no comment.
pub(crate) fn key_text(key: &PublicKey) -> Result<String, Error> {
    let mut k = key.clone();
    k.set_comment("");
    Ok(k.to_openssh()
        .map_err(|e| Error::BadKey(e.to_string()))?
        .trim()
        .to_owned())
}

/// Parses one OpenSSH public key line (`ssh-ed25519 AAAA… comment`).
pub fn parse_key(line: &str) -> Result<PublicKey, Error> {
    PublicKey::from_openssh(line.trim()).map_err(|e| Error::BadKey(e.to_string()))
}

fn check_user_name(name: &str) -> Result<(), Error> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Error::BadUserName(name.to_owned()))
    }
}

impl Access {
    /// Opens the access tables in `db` (the data directory's `alknet.db`).
    pub fn open(db: &Path) -> Result<Access, Error> {
        let conn = Connection::open(db)?;
        conn.busy_timeout(std::time::Duration::from_secs(30))?;
        conn.execute_batch("PRAGMA foreign_keys = ON;")?;
        conn.execute_batch(SCHEMA)?;
        Ok(Access { conn: Mutex::new(conn) })
    }

    fn with<T>(&self, f: impl FnOnce(&mut Connection) -> Result<T, Error>) -> Result<T, Error> {
        f(&mut self.conn.lock().expect("access connection poisoned"))
    }

    pub fn add_user(&self, name: &str, key: &PublicKey, admin: bool) -> Result<(), Error> {
        check_user_name(name)?;
        let text = key_text(key)?;
        self.with(|c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            if let Some(owner) = owner_of(&tx, &text)? {
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
                params![text, tx.last_insert_rowid()],
            )?;
            tx.commit()?;
            Ok(())
        })
    }

    pub fn remove_user(&self, name: &str) -> Result<(), Error> {
        self.with(|c| {
            if c.execute("DELETE FROM users WHERE name = ?1", [name])? == 0 {
                return Err(Error::NoSuchUser(name.to_owned()));
            }
            Ok(())
        })
    }

    pub fn list_users(&self) -> Result<Vec<User>, Error> {
        self.with(|c| {
            let mut users = Vec::new();
            let mut stmt = c.prepare("SELECT id, name, admin FROM users ORDER BY name")?;
            let rows: Vec<(i64, String, bool)> = stmt
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect::<Result<_, _>>()?;
            for (id, name, admin) in rows {
                let keys = c
                    .prepare("SELECT key FROM user_keys WHERE user_id = ?1 ORDER BY key")?
                    .query_map([id], |r| r.get(0))?
                    .collect::<Result<_, _>>()?;
                let grants = c
                    .prepare("SELECT bucket, level FROM grants WHERE user_id = ?1 ORDER BY bucket")?
                    .query_map([id], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?
                    .collect::<Result<Vec<_>, _>>()?
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

    /// Gives `user` `level` on `bucket` (replacing an earlier grant).
    pub fn grant(&self, user: &str, bucket: &str, level: Level) -> Result<(), Error> {
        self.with(|c| {
            let id = user_id(c, user)?;
            c.execute(
                "INSERT INTO grants (user_id, bucket, level) VALUES (?1, ?2, ?3)
                 ON CONFLICT (user_id, bucket) DO UPDATE SET level = excluded.level",
                params![id, bucket, level.as_str()],
            )?;
            Ok(())
        })
    }

    pub fn revoke(&self, user: &str, bucket: &str) -> Result<(), Error> {
        self.with(|c| {
            let id = user_id(c, user)?;
            c.execute(
                "DELETE FROM grants WHERE user_id = ?1 AND bucket = ?2",
                params![id, bucket],
            )?;
            Ok(())
        })
    }

    /// The user a verified key belongs to, if any.
    pub fn user_for_key(&self, key: &PublicKey) -> Result<Option<String>, Error> {
        let text = key_text(key)?;
        self.with(|c| owner_of(c, &text))
    }

    /// What `user` may do on `bucket`: admins everything, others their grant.
    pub fn level(&self, user: &str, bucket: &str) -> Result<Option<Level>, Error> {
        self.with(|c| {
            let row: Option<(bool, Option<String>)> = c
                .query_row(
                    "SELECT u.admin, g.level FROM users u
                     LEFT JOIN grants g ON g.user_id = u.id AND g.bucket = ?2 WHERE u.name = ?1",
                    params![user, bucket],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            Ok(match row {
                None => None,
                Some((true, _)) => Some(Level::Admin),
                Some((false, level)) => level.and_then(|l| l.parse().ok()),
            })
        })
    }

    pub fn is_admin(&self, user: &str) -> Result<bool, Error> {
        self.with(|c| {
            Ok(
                c.query_row("SELECT admin FROM users WHERE name = ?1", [user], |r| r.get(0))
                    .optional()?
                    .unwrap_or(false),
            )
        })
    }

    pub fn user_count(&self) -> Result<u64, Error> {
        self.with(|c| Ok(c.query_row("SELECT count(*) FROM users", [], |r| r.get::<_, i64>(0))? as u64))
    }
}

fn owner_of(c: &Connection, key: &str) -> Result<Option<String>, Error> {
    Ok(c.query_row(
        "SELECT u.name FROM user_keys k JOIN users u ON u.id = k.user_id WHERE k.key = ?1",
        [key],
        |r| r.get(0),
    )
    .optional()?)
}

fn user_id(c: &Connection, name: &str) -> Result<i64, Error> {
    c.query_row("SELECT id FROM users WHERE name = ?1", [name], |r| r.get(0))
        .optional()?
        .ok_or_else(|| Error::NoSuchUser(name.to_owned()))
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
