//! Locks on paths of a bucket: Git LFS's file locks (a lock says who is
//! editing a file that cannot be merged). The store keeps them and says who
//! holds what; the forge refuses a push that changes a path someone else
//! holds.

use rusqlite::{OptionalExtension, params};
use serde::{Deserialize, Serialize};

use crate::db::now_ms;
use crate::error::{Error, Result};
use crate::store::Store;

/// One lock.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lock {
    pub id: i64,
    /// The locked path, as the client spelled it (relative to the root).
    pub path: String,
    pub owner: String,
    pub locked_ms: i64,
}

/// Which locks [`Store::locks`] lists.
#[derive(Clone, Debug, Default)]
pub struct LockQuery<'a> {
    pub path: Option<&'a str>,
    pub id: Option<i64>,
    /// Only locks with a greater id (a page's cursor).
    pub after: Option<i64>,
    pub limit: usize,
}

const LOCK_COLUMNS: &str = "SELECT l.id, l.path, u.name, l.locked_ms FROM locks l JOIN users u ON u.id = l.user_id";

fn lock_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Lock> {
    Ok(Lock {
        id: r.get(0)?,
        path: r.get(1)?,
        owner: r.get(2)?,
        locked_ms: r.get(3)?,
    })
}

impl Store {
    /// Locks `path` of `bucket` for `owner`; [`Error::Locked`] if anyone
    /// holds it already (the owner included: a lock is taken once).
    pub fn lock(&self, bucket: &str, path: &str, owner: &str) -> Result<Lock> {
        let path = path.trim_start_matches('/');
        if path.is_empty() || path.len() > 4096 || path.contains('\0') {
            return Err(Error::InvalidPath {
                path: path.to_owned(),
                reason: "a lock needs a file path (at most 4096 bytes, no NUL)",
            });
        }
        self.inner.db.write(|tx| {
            let bucket_id = Self::bucket_id(tx, bucket)?;
            let held: Option<Lock> = tx
                .query_row(
                    &format!("{LOCK_COLUMNS} WHERE l.bucket_id = ?1 AND l.path = ?2"),
                    params![bucket_id, path],
                    lock_row,
                )
                .optional()?;
            if let Some(l) = held {
                return Err(Error::Locked {
                    path: l.path,
                    owner: l.owner,
                    id: l.id,
                });
            }
            let user_id: i64 = tx
                .query_row("SELECT id FROM users WHERE name = ?1", [owner], |r| r.get(0))
                .optional()?
                .ok_or_else(|| Error::NoSuchUser(owner.to_owned()))?;
            let now = now_ms();
            tx.execute(
                "INSERT INTO locks (bucket_id, path, user_id, locked_ms) VALUES (?1, ?2, ?3, ?4)",
                params![bucket_id, path, user_id, now],
            )?;
            Ok(Lock {
                id: tx.last_insert_rowid(),
                path: path.to_owned(),
                owner: owner.to_owned(),
                locked_ms: now,
            })
        })
    }

    /// The bucket's locks that `query` asks for, by id.
    pub fn locks(&self, bucket: &str, query: &LockQuery<'_>) -> Result<Vec<Lock>> {
        self.inner.db.read(|c| {
            let bucket_id = Self::bucket_id(c, bucket)?;
            let mut stmt = c.prepare_cached(&format!(
                "{LOCK_COLUMNS} WHERE l.bucket_id = ?1 AND (?2 IS NULL OR l.path = ?2)
                 AND (?3 IS NULL OR l.id = ?3) AND l.id > ?4 ORDER BY l.id LIMIT ?5"
            ))?;
            let rows = stmt.query_map(
                params![
                    bucket_id,
                    query.path.map(|p| p.trim_start_matches('/')),
                    query.id,
                    query.after.unwrap_or(0),
                    query.limit.max(1) as i64
                ],
                lock_row,
            )?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })
    }

    /// Removes lock `id` of `bucket` for `who`: its owner may, and with
    /// `force` an admin of the bucket may remove anyone's ([`Error::Denied`]
    /// for anyone else who forces) — the one rule every frontend calls.
    pub fn unlock_as(&self, who: &crate::Principal, bucket: &str, id: i64, force: bool) -> Result<Lock> {
        if force {
            self.check_as(who, bucket, crate::Level::Admin)?;
        }
        self.unlock(bucket, id, &who.user, force)
    }

    /// Removes lock `id` of `bucket`: its owner may, anyone else only with
    /// `force`.
    fn unlock(&self, bucket: &str, id: i64, by: &str, force: bool) -> Result<Lock> {
        self.inner.db.write(|tx| {
            let bucket_id = Self::bucket_id(tx, bucket)?;
            let lock = tx
                .query_row(
                    &format!("{LOCK_COLUMNS} WHERE l.bucket_id = ?1 AND l.id = ?2"),
                    params![bucket_id, id],
                    lock_row,
                )
                .optional()?
                .ok_or_else(|| Error::NotFound(format!("lock {id}")))?;
            if lock.owner != by && !force {
                return Err(Error::NotLockOwner {
                    path: lock.path,
                    owner: lock.owner,
                });
            }
            tx.execute("DELETE FROM locks WHERE id = ?1", [id])?;
            Ok(lock)
        })
    }
}
