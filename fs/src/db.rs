//! The SQLite side of the store: schema, one writer, a pool of readers.
//!
//! Every connection gets honker's SQL functions (they are registered per
//! connection). Writes run in `BEGIN IMMEDIATE` transactions so that two
//! processes never deadlock on a lock upgrade; `SQLITE_BUSY` is waited out here
//! and never reaches a caller.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rusqlite::{Connection, ErrorCode, Transaction, TransactionBehavior};

use crate::error::{Error, Result};

/// Version of the schema below. History:
/// - 1: buckets, branches (parent + fork version), versions, nodes (MVCC rows
///   keyed by parent entry id and name), snapshots, write sessions.
/// - 2: `branches.pruned_before`: versions of a branch older than this were
///   pruned and can no longer be read (except protected ones).
/// - 3: `refs` (named values with compare-and-swap updates) and `attachments`
///   (named blobs outside the tree), per bucket. Created by `SCHEMA` itself.
/// - 4: `nodes.ctime_ns`: when the row was written (the entry's ctime);
///   NULL in older rows, which read as their mtime.
/// - 5: `users`, `user_keys`, `grants` join the schema (they were kept by the
///   SSH frontend on a connection of its own); grants are keyed by bucket id,
///   and grants on buckets that no longer exist are dropped; `corrupt_blobs`.
/// - 7: `tokens` (API tokens: a SHA-256 of each, never the token).
/// - 8: `locks` (Git LFS file locks: a path of a bucket, its owner).
/// - 9: `shares` (share links: a hash of each link's secret, never the secret).
/// - 10: `sync_commits`, `sync_ops`, `sync_heads`, `sync_seeded`
///   (replication, replica.rs); `peers`, `peer_grants`, `sync_links`
///   (peers.rs). Entries from before are seeded as ops when
///   their branch first replicates.
pub(crate) const SCHEMA_VERSION: i64 = 10;

/// Steps from each older schema to the next, applied in order.
const MIGRATIONS: &[(i64, &str)] = &[
    (1, "ALTER TABLE branches ADD COLUMN pruned_before INTEGER;"),
    (3, "ALTER TABLE nodes ADD COLUMN ctime_ns INTEGER;"),
    (
        4,
        "CREATE TABLE IF NOT EXISTS users (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE,
             admin INTEGER NOT NULL DEFAULT 0, created_ms INTEGER NOT NULL);
         CREATE TABLE IF NOT EXISTS user_keys (key TEXT PRIMARY KEY, user_id INTEGER NOT NULL);
         CREATE TABLE IF NOT EXISTS grants (user_id INTEGER NOT NULL, bucket TEXT NOT NULL, level TEXT NOT NULL);
         CREATE TABLE grants_by_id (user_id INTEGER NOT NULL, bucket_id INTEGER NOT NULL, level TEXT NOT NULL,
             PRIMARY KEY (user_id, bucket_id));
         INSERT INTO grants_by_id SELECT g.user_id, b.id, g.level FROM grants g JOIN buckets b ON b.name = g.bucket
             JOIN users u ON u.id = g.user_id;
         DROP TABLE grants;
         ALTER TABLE grants_by_id RENAME TO grants;",
    ),
    // Counts from before schema 6 are unknown (NULL): a branch's head is
    // walked once at its next commit.
    (
        5,
        "ALTER TABLE buckets ADD COLUMN quota INTEGER;
         ALTER TABLE versions ADD COLUMN bytes INTEGER;",
    ),
];

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS alknet_meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS buckets (
    id         INTEGER PRIMARY KEY,
    name       TEXT NOT NULL UNIQUE,
    kind       TEXT NOT NULL DEFAULT 'drive',
    created_ms INTEGER NOT NULL,
    -- Bytes a branch head may hold (NULL: no quota); see quota.rs.
    quota      INTEGER
);
-- A branch reads its own rows up to its limit, then its parent's rows up to
-- fork_version: the fork point is fixed, so later parent writes never show.
CREATE TABLE IF NOT EXISTS branches (
    id           INTEGER PRIMARY KEY,
    bucket_id    INTEGER NOT NULL REFERENCES buckets(id) ON DELETE CASCADE,
    name         TEXT NOT NULL,
    parent_id    INTEGER REFERENCES branches(id),
    fork_version INTEGER,
    created_ms   INTEGER NOT NULL,
    pruned_before INTEGER,
    UNIQUE (bucket_id, name)
);
-- One row per committed mutation. AUTOINCREMENT: a version number is never
-- reused, even after the newest rows are deleted with their bucket.
CREATE TABLE IF NOT EXISTS versions (
    version   INTEGER PRIMARY KEY AUTOINCREMENT,
    branch_id INTEGER NOT NULL,
    at_ms     INTEGER NOT NULL,
    op        TEXT NOT NULL,
    paths     TEXT NOT NULL,
    -- The file bytes at the branch's head after this commit (NULL: unknown,
    -- from before schema 6).
    bytes     INTEGER
);
CREATE INDEX IF NOT EXISTS versions_by_branch ON versions (branch_id, version);
-- The tree, as immutable rows: (branch, parent entry, name) at a version.
-- kind 0 is a tombstone. A row is never updated; a change inserts a new row.
CREATE TABLE IF NOT EXISTS nodes (
    seq       INTEGER PRIMARY KEY,
    branch_id INTEGER NOT NULL,
    parent    INTEGER NOT NULL,
    name      TEXT NOT NULL,
    version   INTEGER NOT NULL,
    eid       INTEGER NOT NULL,
    kind      INTEGER NOT NULL,
    hash      BLOB,
    size      INTEGER NOT NULL,
    mode      INTEGER NOT NULL,
    mtime_ns  INTEGER NOT NULL,
    target    TEXT,
    ctime_ns  INTEGER
);
CREATE INDEX IF NOT EXISTS nodes_by_name ON nodes (branch_id, parent, name, version);
CREATE INDEX IF NOT EXISTS nodes_by_eid ON nodes (branch_id, eid, version);
CREATE TABLE IF NOT EXISTS snapshots (
    branch_id INTEGER NOT NULL REFERENCES branches(id) ON DELETE CASCADE,
    name      TEXT NOT NULL,
    version   INTEGER NOT NULL,
    PRIMARY KEY (branch_id, name)
);
-- Open write sessions: their staging files live in tmp/ and are removed when
-- the owning process is gone (see Store::open).
-- Per-bucket refs (git branches and tags: name -> object id).
CREATE TABLE IF NOT EXISTS refs (
    bucket_id INTEGER NOT NULL,
    name      TEXT NOT NULL,
    value     TEXT NOT NULL,
    PRIMARY KEY (bucket_id, name)
);
-- Per-bucket named blobs outside the tree (git packs); GC keeps them.
CREATE TABLE IF NOT EXISTS attachments (
    bucket_id INTEGER NOT NULL,
    name      TEXT NOT NULL,
    hash      BLOB NOT NULL,
    size      INTEGER NOT NULL,
    PRIMARY KEY (bucket_id, name)
);
-- Who may log in, with which keys, and what each may do per bucket.
-- key: the OpenSSH public key without its comment ('ssh-ed25519 AAAA…').
-- Rows go with their user (Store::remove_user) and grants with their bucket
-- (Store::delete_bucket), in the same transaction.
CREATE TABLE IF NOT EXISTS users (
    id         INTEGER PRIMARY KEY,
    name       TEXT NOT NULL UNIQUE,
    admin      INTEGER NOT NULL DEFAULT 0,
    created_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS user_keys (
    key     TEXT PRIMARY KEY,
    user_id INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS grants (
    user_id   INTEGER NOT NULL,
    bucket_id INTEGER NOT NULL,
    level     TEXT NOT NULL,
    PRIMARY KEY (user_id, bucket_id)
);
-- API tokens (tokens.rs): found by prefix, checked by SHA-256; go with their user.
CREATE TABLE IF NOT EXISTS tokens (
    id         INTEGER PRIMARY KEY,
    user_id    INTEGER NOT NULL,
    name       TEXT NOT NULL,
    prefix     TEXT NOT NULL,
    hash       BLOB NOT NULL,
    read_only  INTEGER NOT NULL,
    created_ms INTEGER NOT NULL,
    expires_ms INTEGER
);
CREATE INDEX IF NOT EXISTS tokens_prefix ON tokens (prefix);
-- Locks on paths of a bucket (locks.rs; Git LFS): one per path.
CREATE TABLE IF NOT EXISTS locks (
    id        INTEGER PRIMARY KEY,
    bucket_id INTEGER NOT NULL,
    path      TEXT NOT NULL,
    user_id   INTEGER NOT NULL,
    locked_ms INTEGER NOT NULL,
    UNIQUE (bucket_id, path)
);
-- Share links (shares.rs): a path of a branch at one version, read-only.
CREATE TABLE IF NOT EXISTS shares (
    id         INTEGER PRIMARY KEY,
    prefix     TEXT NOT NULL,
    hash       BLOB NOT NULL,
    user_id    INTEGER NOT NULL,
    bucket_id  INTEGER NOT NULL,
    branch     TEXT NOT NULL,
    version    INTEGER NOT NULL,
    path       TEXT NOT NULL,
    password   BLOB,
    salt       BLOB,
    created_ms INTEGER NOT NULL,
    expires_ms INTEGER
);
CREATE INDEX IF NOT EXISTS shares_prefix ON shares (prefix);
-- Blobs a verified read found corrupt (hex hash), for `stats` and the operator.
CREATE TABLE IF NOT EXISTS corrupt_blobs (
    hash    TEXT PRIMARY KEY,
    seen_ms INTEGER NOT NULL
);
-- Replication (replica.rs): each commit's origin stamp, made here or
-- received; per entry the state a commit left and the registers it set
-- (flags: 1 location, 2 content, 4 attributes; kind 0: deleted) and the
-- content op it superseded; each entry's head here; branches whose older
-- entries became ops.
CREATE TABLE IF NOT EXISTS sync_commits (
    branch_id INTEGER NOT NULL,
    origin    INTEGER NOT NULL,
    oseq      INTEGER NOT NULL,
    hlc       INTEGER NOT NULL,
    op        TEXT NOT NULL,
    PRIMARY KEY (branch_id, origin, oseq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS sync_ops (
    branch_id   INTEGER NOT NULL,
    eid         INTEGER NOT NULL,
    origin      INTEGER NOT NULL,
    oseq        INTEGER NOT NULL,
    hlc         INTEGER NOT NULL,
    prev_origin INTEGER,
    prev_oseq   INTEGER,
    flags       INTEGER NOT NULL,
    parent      INTEGER NOT NULL,
    name        TEXT NOT NULL,
    kind        INTEGER NOT NULL,
    hash        BLOB,
    size        INTEGER NOT NULL,
    mode        INTEGER NOT NULL,
    mtime_ns    INTEGER NOT NULL,
    target      TEXT,
    PRIMARY KEY (branch_id, eid, origin, oseq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS sync_ops_by_commit ON sync_ops (branch_id, origin, oseq);
CREATE TABLE IF NOT EXISTS sync_heads (
    branch_id INTEGER NOT NULL,
    eid       INTEGER NOT NULL,
    origin    INTEGER NOT NULL,
    oseq      INTEGER NOT NULL,
    PRIMARY KEY (branch_id, eid)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS sync_seeded (
    branch_id INTEGER PRIMARY KEY
);
-- What a peer asking for a blob must hold a read grant on (peers.rs).
CREATE INDEX IF NOT EXISTS sync_ops_by_hash ON sync_ops (hash) WHERE hash IS NOT NULL;
-- Other nodes (peers.rs): a name, the node id that authenticates it on the
-- QUIC endpoint, where to reach it; per bucket what it may do here, and
-- which buckets this node keeps in sync with it (branches NULL: all).
CREATE TABLE IF NOT EXISTS peers (
    id         INTEGER PRIMARY KEY,
    name       TEXT NOT NULL UNIQUE,
    node_id    TEXT NOT NULL UNIQUE,
    addr       TEXT NOT NULL,
    created_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS peer_grants (
    peer_id   INTEGER NOT NULL,
    bucket_id INTEGER NOT NULL,
    level     TEXT NOT NULL,
    PRIMARY KEY (peer_id, bucket_id)
);
-- The state of each sync session, as its node last saw it (peers.rs).
CREATE TABLE IF NOT EXISTS sync_status (
    peer       TEXT NOT NULL,
    bucket     TEXT NOT NULL,
    status     TEXT NOT NULL,
    PRIMARY KEY (peer, bucket)
);
CREATE TABLE IF NOT EXISTS sync_links (
    peer_id   INTEGER NOT NULL,
    bucket_id INTEGER NOT NULL,
    branches  TEXT,
    PRIMARY KEY (peer_id, bucket_id)
);
CREATE TABLE IF NOT EXISTS write_sessions (
    id         INTEGER PRIMARY KEY,
    staging    TEXT NOT NULL,
    pid        INTEGER NOT NULL,
    created_ms INTEGER NOT NULL
);
";

/// How long a writer waits for another process's transaction before giving up
/// with an error that names the cause. Writes are short; this only trips when
/// another process hangs holding the database.
const WRITE_WAIT: Duration = Duration::from_secs(120);

/// Readers kept open for reuse; more are opened on demand and dropped after.
const READER_POOL: usize = 8;

pub(crate) struct Db {
    path: PathBuf,
    writer: Mutex<Connection>,
    readers: Mutex<Vec<Connection>>,
}

impl Db {
    pub(crate) fn open(path: &Path) -> Result<Db> {
        let conn = open_conn(path)?;
        let current: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if current > SCHEMA_VERSION {
            return Err(Error::Internal(format!(
                "{} has schema version {current}, newer than this alknet ({SCHEMA_VERSION})",
                path.display()
            )));
        }
        let db = Db {
            path: path.to_owned(),
            writer: Mutex::new(conn),
            readers: Mutex::new(Vec::new()),
        };
        if current == SCHEMA_VERSION {
            return db.writer_waits_in_rust();
        }
        db.write(|tx| {
            // An existing database moves up step by step; a new one is created
            // at the current schema directly.
            let has_tables: bool = tx.query_row(
                "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE name = 'branches')",
                [],
                |r| r.get(0),
            )?;
            if has_tables {
                for (from, step) in MIGRATIONS {
                    if current <= *from {
                        tx.execute_batch(step)?;
                    }
                }
            }
            tx.execute_batch(SCHEMA)?;
            honker_core::bootstrap_honker_schema(tx)?;
            tx.execute_batch(&format!("PRAGMA user_version = {SCHEMA_VERSION}"))?;
            Ok(())
        })?;
        db.writer_waits_in_rust()
    }

    /// From now on the writer never waits inside SQLite (honker's pragmas
    /// give every connection a 5 s busy timeout): [`Db::write`] waits for
    /// another process itself, off the async worker threads.
    fn writer_waits_in_rust(self) -> Result<Db> {
        self.writer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .busy_timeout(Duration::ZERO)?;
        Ok(self)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` on a reader connection. Reads see the last committed state and
    /// never wait for the writer (WAL).
    pub(crate) fn read<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        let conn = self.readers.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let conn = match conn {
            Some(c) => c,
            None => open_conn(&self.path)?,
        };
        let out = f(&conn);
        let mut pool = self.readers.lock().unwrap_or_else(|e| e.into_inner());
        if pool.len() < READER_POOL {
            pool.push(conn);
        }
        out
    }

    /// Runs `f` in one write transaction and commits it. `f` may run more than
    /// once: if another process holds the write lock, the attempt is rolled
    /// back and retried until [`WRITE_WAIT`] has passed.
    ///
    /// The `fs` API is blocking. An uncontended transaction takes
    /// microseconds and runs where it is called; one that has to wait for
    /// another process waits through `block_in_place` when called on a
    /// tokio worker, so the runtime moves its other tasks to another thread
    /// instead of stalling them all (SFTP, git and the mount call in from
    /// async code).
    pub(crate) fn write<T>(&self, mut f: impl FnMut(&Transaction<'_>) -> Result<T>) -> Result<T> {
        let mut attempt = || {
            // A panic inside an earlier `f` poisoned the lock, but its
            // transaction was rolled back as it unwound: the connection is clean.
            let mut conn = self.writer.lock().unwrap_or_else(|e| e.into_inner());
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let out = f(&tx)?;
            tx.commit()?;
            Ok(out)
        };
        match attempt() {
            Err(Error::Db(e)) if is_busy(&e) => {}
            done => return done,
        }
        let mut wait = || self.wait_and_retry(&mut attempt);
        match tokio::runtime::Handle::try_current() {
            Ok(rt) if rt.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(wait)
            }
            _ => wait(),
        }
    }

    /// Retries a busy write until it goes through or [`WRITE_WAIT`] passes.
    fn wait_and_retry<T>(&self, attempt: &mut impl FnMut() -> Result<T>) -> Result<T> {
        let start = Instant::now();
        let mut pause = Duration::from_millis(1);
        loop {
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(100));
            match attempt() {
                Err(Error::Db(e)) if is_busy(&e) && start.elapsed() < WRITE_WAIT => {}
                Err(Error::Db(e)) if is_busy(&e) => {
                    return Err(Error::Internal(format!(
                        "{} stayed locked by another process for {}s",
                        self.path.display(),
                        WRITE_WAIT.as_secs()
                    )));
                }
                other => return other,
            }
        }
    }
}

fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
    )
}

fn open_conn(path: &Path) -> Result<Connection> {
    let conn = Connection::open(path)?;
    honker_core::apply_default_pragmas(&conn)?;
    honker_core::attach_notify(&conn)?;
    honker_core::attach_honker_functions(&conn)?;
    Ok(conn)
}

/// Notifies honker listeners on [`crate::EVENT_CHANNEL`], inside the caller's
/// transaction: the event commits (or not) with the change it describes.
pub(crate) fn notify(tx: &Connection, event: &serde_json::Value) -> Result<()> {
    tx.query_row(
        "SELECT notify(?1, ?2)",
        rusqlite::params![crate::tree::EVENT_CHANNEL, event.to_string()],
        |_| Ok(()),
    )?;
    Ok(())
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

pub(crate) fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_version_1_database_is_migrated() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("alknet.db");
        drop(Db::open(&path).expect("create"));
        let conn = Connection::open(&path).expect("raw connection");
        conn.execute_batch(
            "ALTER TABLE branches DROP COLUMN pruned_before; ALTER TABLE nodes DROP COLUMN ctime_ns;
             ALTER TABLE buckets DROP COLUMN quota; ALTER TABLE versions DROP COLUMN bytes;
             DROP TABLE users; DROP TABLE user_keys; DROP TABLE grants;
             PRAGMA user_version = 1;",
        )
        .expect("make it look like schema 1");
        drop(conn);
        let db = Db::open(&path).expect("open and migrate");
        let (version, has_column): (i64, bool) = db
            .read(|c| {
                Ok((
                    c.query_row("PRAGMA user_version", [], |r| r.get(0))?,
                    c.query_row(
                        "SELECT EXISTS (SELECT 1 FROM pragma_table_info('branches') WHERE name = 'pruned_before')
                            AND EXISTS (SELECT 1 FROM pragma_table_info('nodes') WHERE name = 'ctime_ns')
                            AND EXISTS (SELECT 1 FROM pragma_table_info('versions') WHERE name = 'bytes')
                            AND EXISTS (SELECT 1 FROM pragma_table_info('buckets') WHERE name = 'quota')",
                        [],
                        |r| r.get(0),
                    )?,
                ))
            })
            .expect("read");
        assert_eq!((version, has_column), (SCHEMA_VERSION, true));
    }

    /// A panic inside one write transaction rolls it back and leaves the
    /// database usable for the next (it poisoned the writer's lock once).
    #[test]
    fn a_panic_inside_a_write_leaves_the_writer_usable() {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = Db::open(&dir.path().join("alknet.db")).expect("create");
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            db.write(|tx| -> Result<()> {
                tx.execute("INSERT INTO buckets (name, created_ms) VALUES ('half', 0)", [])?;
                panic!("a bug in the middle of a commit")
            })
        }));
        assert!(panicked.is_err());
        db.write(|tx| {
            tx.execute("INSERT INTO buckets (name, created_ms) VALUES ('next', 0)", [])?;
            Ok(())
        })
        .expect("the next write works");
        let names: Vec<String> = db
            .read(|c| {
                let mut stmt = c.prepare("SELECT name FROM buckets ORDER BY name")?;
                let rows = stmt.query_map([], |r| r.get(0))?;
                Ok(rows.collect::<rusqlite::Result<_>>()?)
            })
            .expect("read");
        assert_eq!(names, vec!["next".to_owned()], "the panicking commit left nothing");
    }

    /// Schema 4 kept grants by bucket name, in tables the SSH frontend made;
    /// schema 5 keys them by bucket id and drops those on missing buckets.
    #[test]
    fn schema_4_grants_move_to_bucket_ids() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("alknet.db");
        drop(Db::open(&path).expect("create"));
        let conn = Connection::open(&path).expect("raw connection");
        conn.execute_batch(
            "DROP TABLE grants;
             ALTER TABLE buckets DROP COLUMN quota; ALTER TABLE versions DROP COLUMN bytes;
             CREATE TABLE grants (user_id INTEGER NOT NULL, bucket TEXT NOT NULL, level TEXT NOT NULL,
                 PRIMARY KEY (user_id, bucket));
             INSERT INTO users (id, name, admin, created_ms) VALUES (1, 'bob', 0, 0);
             INSERT INTO buckets (id, name, created_ms) VALUES (7, 'photos', 0);
             INSERT INTO grants VALUES (1, 'photos', 'read'), (1, 'gone', 'write');
             PRAGMA user_version = 4;",
        )
        .expect("make it look like schema 4");
        drop(conn);
        let db = Db::open(&path).expect("open and migrate");
        let grants: Vec<(i64, i64, String)> = db
            .read(|c| {
                let mut stmt = c.prepare("SELECT user_id, bucket_id, level FROM grants")?;
                let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
                Ok(rows.collect::<rusqlite::Result<_>>()?)
            })
            .expect("read");
        assert_eq!(grants, vec![(1, 7, "read".to_owned())]);
    }
}
