//! [`Tree`]: the file tree of one `bucket@branch`, live or at a past version.
//!
//! Reads resolve a path one component at a time, each step one query over the
//! branch's *chain*: the branch itself up to its read limit, then its parent
//! up to the fork version, and so on to the root branch. The nearest level that
//! has a row for `(parent entry, name)` wins; a tombstone there hides the name.
//!
//! Every mutation is one [`commit`](Tree::commit): it allocates a version,
//! inserts new rows (rows are never updated), and `notify()`s in the same
//! transaction.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use rusqlite::{Connection, OptionalExtension, Row, params};

use crate::error::{Error, Result};
use crate::name::BucketPath;
use crate::store::Inner;
use crate::types::{BlobHash, Change, Entry, EntryId, Kind, Version};

/// Read limit of a live branch: every version.
const HEAD: i64 = i64::MAX;

/// Entries one page of [`Walk`] reads.
const WALK_PAGE: usize = 1000;

/// The iterator of [`Tree::walk_iter`].
pub struct Walk<'t> {
    tree: &'t Tree,
    stack: Vec<WalkLevel>,
}

struct WalkLevel {
    path: BucketPath,
    dir: EntryId,
    /// The name the next page starts after.
    after: Option<String>,
    page: std::collections::VecDeque<Entry>,
    done: bool,
}

impl Iterator for Walk<'_> {
    type Item = Result<(BucketPath, Entry)>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let level = self.stack.last_mut()?;
            if let Some(e) = level.page.pop_front() {
                let path = level.path.join(&e.name);
                if e.is_dir() {
                    self.stack.push(WalkLevel {
                        path: path.clone(),
                        dir: e.id,
                        after: None,
                        page: Default::default(),
                        done: false,
                    });
                }
                return Some(Ok((path, e)));
            }
            if level.done {
                self.stack.pop();
                continue;
            }
            match self.tree.read_dir_of(level.dir, level.after.as_deref(), WALK_PAGE) {
                Ok(page) => {
                    level.done = page.is_empty();
                    level.after = page.last().map(|e| e.name.clone());
                    level.page = page.into();
                }
                Err(e) => {
                    self.stack.clear();
                    return Some(Err(e));
                }
            }
        }
    }
}

/// Symlinks one path may pass through (Linux's `MAXSYMLINKS`).
pub(crate) const MAX_SYMLINKS: usize = 40;

/// `(branch_id, read limit)` per level of a chain, nearest first.
pub(crate) type Levels = Arc<[(i64, i64)]>;

/// The honker channel every commit notifies on.
pub const EVENT_CHANNEL: &str = "alknet/fs";

/// A view of one branch of one bucket. Cheap to clone. A tree at the head
/// sees commits made after it was opened; a tree at a version never changes
/// and refuses writes.
#[derive(Clone)]
pub struct Tree {
    pub(crate) inner: Arc<Inner>,
    pub(crate) bucket: String,
    pub(crate) branch: String,
    pub(crate) branch_id: i64,
    /// `[[branch_id, limit], …]`, nearest first, as JSON for `json_each`.
    pub(crate) chain: Arc<str>,
    /// The same chain, for queries that run once per level.
    pub(crate) levels: Levels,
    pub(crate) at: Option<Version>,
    /// Published by another part of the system (a git push): frontends read
    /// it, only [`Store::publish_tree`] hands out a writable handle.
    pub(crate) published: bool,
}

/// Attribute changes for [`Tree::set_attr`]; `None` keeps the value.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub mtime_ns: Option<i64>,
}

impl SetAttr {
    pub fn new(mode: Option<u32>, mtime_ns: Option<i64>) -> Self {
        SetAttr { mode, mtime_ns }
    }

    pub fn mode(mode: u32) -> Self {
        SetAttr {
            mode: Some(mode),
            ..Default::default()
        }
    }

    pub fn mtime_ns(mtime_ns: i64) -> Self {
        SetAttr {
            mtime_ns: Some(mtime_ns),
            ..Default::default()
        }
    }
}

/// The columns [`entry_from_row`] reads, as a literal for `concat!`.
macro_rules! columns {
    () => {
        "n.eid, n.parent, n.name, n.kind, n.hash, n.size, n.mode, n.mtime_ns, n.target, n.version, \
         coalesce(n.ctime_ns, n.mtime_ns)"
    };
}

/// The newest row for `(parent, name)` over the whole chain, nearest level first.
const LOOKUP_CHAIN: &str = concat!(
    "SELECT ",
    columns!(),
    " FROM json_each(?1) AS c
     JOIN nodes AS n ON n.branch_id = c.value->>0 AND n.parent = ?2 AND n.name = ?3 AND n.version <= c.value->>1
     ORDER BY c.key, n.version DESC, n.seq DESC LIMIT 1"
);

/// The same on a branch with no parent: one index range, no chain to join.
const LOOKUP_ONE: &str = concat!(
    "SELECT ",
    columns!(),
    " FROM nodes AS n WHERE n.branch_id = ?1 AND n.parent = ?2 AND n.name = ?3 AND n.version <= ?4
     ORDER BY n.version DESC, n.seq DESC LIMIT 1"
);

/// The newest row of entry `eid` at one level (branch, up to a version).
const BY_ID_ONE: &str = concat!(
    "SELECT ",
    columns!(),
    " FROM nodes AS n WHERE n.branch_id = ?1 AND n.eid = ?2 AND n.version <= ?3
     ORDER BY n.version DESC, n.seq DESC LIMIT 1"
);

/// One level's live-or-tombstone rows of a directory, in name order.
const CHILDREN_ONE_LEVEL: &str = concat!(
    "SELECT ",
    columns!(),
    " FROM nodes AS n
     WHERE n.branch_id = ?1 AND n.parent = ?2 AND n.name > ?3 AND n.version <= ?4
       AND n.seq = (SELECT m.seq FROM nodes AS m
                    WHERE m.branch_id = ?1 AND m.parent = ?2 AND m.name = n.name AND m.version <= ?4
                    ORDER BY m.version DESC, m.seq DESC LIMIT 1)
     ORDER BY n.name LIMIT ?5"
);

/// Builds an [`Entry`] from a row of `columns!()`; `None` for a tombstone.
fn entry_from_row(row: &Row<'_>) -> rusqlite::Result<Option<Entry>> {
    let Some(kind) = Kind::from_code(row.get(3)?) else {
        return Ok(None);
    };
    let hash: Option<Vec<u8>> = row.get(4)?;
    Ok(Some(Entry {
        id: EntryId(row.get(0)?),
        parent: EntryId(row.get(1)?),
        name: row.get(2)?,
        kind,
        hash: hash.and_then(|h| <[u8; 32]>::try_from(h).ok()).map(BlobHash),
        size: row.get::<_, i64>(5)? as u64,
        mode: row.get::<_, i64>(6)? as u32,
        mtime_ns: row.get(7)?,
        target: row.get(8)?,
        version: Version(row.get::<_, i64>(9)? as u64),
        ctime_ns: row.get(10)?,
    }))
}

impl Tree {
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    pub fn branch(&self) -> &str {
        &self.branch
    }

    /// The version this tree is pinned at, or `None` for the live head.
    pub fn at(&self) -> Option<Version> {
        self.at
    }

    pub fn is_read_only(&self) -> bool {
        self.at.is_some() || self.published
    }

    /// Refuses a write on a past version or a published branch, naming `what`.
    pub(crate) fn check_writable(&self, what: &str) -> Result<()> {
        if let Some(v) = self.at {
            return Err(Error::ReadOnly(format!("{what} (at version {})", v.0)));
        }
        if self.published {
            return Err(Error::ReadOnly(format!(
                "{what} ({}@{} is published from git: push to change it)",
                self.bucket, self.branch
            )));
        }
        Ok(())
    }

    // ---- reads -----------------------------------------------------------

    /// The entry at `path` (symlinks are not followed).
    pub fn stat(&self, path: &BucketPath) -> Result<Entry> {
        self.inner.db.read(|c| self.resolve(c, path))
    }

    /// `path` with the symlinks on it followed inside this tree — every one
    /// among its directories, and the last component's too if
    /// `follow_last` — and the entry found there. An absolute target is a
    /// path from the tree's root (its one meaning, for every frontend);
    /// `..` stops at the root; at most [`MAX_SYMLINKS`] links.
    pub fn follow(&self, path: &BucketPath, follow_last: bool) -> Result<(BucketPath, Entry)> {
        // A plain path (no link on it: a lookup cannot pass through one)
        // costs one lookup; only a link, or a miss, walks it part by part.
        match self.stat(path) {
            Ok(e) if e.kind != Kind::Symlink || !follow_last => return Ok((path.clone(), e)),
            Ok(_) | Err(Error::NotFound(_) | Error::NotADirectory(_)) => {}
            Err(e) => return Err(e),
        }
        let mut todo: std::collections::VecDeque<String> = path.components().map(str::to_owned).collect();
        let (mut at, mut entry) = (BucketPath::root(), Entry::root());
        let mut hops = 0;
        while let Some(name) = todo.pop_front() {
            match name.as_str() {
                "" | "." => continue,
                ".." => {
                    at = at.split_last().map(|(p, _)| p).unwrap_or_else(BucketPath::root);
                    entry = if at.is_root() { Entry::root() } else { self.stat(&at)? };
                    continue;
                }
                _ => {}
            }
            let next = at.child(&name)?;
            let e = self.stat(&next)?;
            if e.kind == Kind::Symlink && (follow_last || !todo.is_empty()) {
                hops += 1;
                if hops > MAX_SYMLINKS {
                    return Err(Error::InvalidPath {
                        path: path.to_string(),
                        reason: "too many levels of symbolic links",
                    });
                }
                let target = e.target.unwrap_or_default();
                if target.starts_with('/') {
                    (at, entry) = (BucketPath::root(), Entry::root());
                }
                for part in target.split('/').rev() {
                    todo.push_front(part.to_owned());
                }
                continue;
            }
            (at, entry) = (next, e);
        }
        Ok((at, entry))
    }

    /// `path` with the symlinks among its directories followed (the last
    /// component stays as given: for operations on a link itself, or on a
    /// name not yet made; directories not made yet stay as given too, for
    /// `mkdir -p`). A path whose parent is a plain directory costs one
    /// lookup.
    pub fn follow_dirs(&self, path: &BucketPath) -> Result<BucketPath> {
        let Some((parent, name)) = path.split_last() else {
            return Ok(path.clone());
        };
        if parent.is_root() {
            return Ok(path.clone());
        }
        match self.stat(&parent) {
            Ok(e) if e.is_dir() => Ok(path.clone()),
            Ok(_) | Err(Error::NotFound(_) | Error::NotADirectory(_)) => match self.follow(&parent, true) {
                Ok((dir, _)) => dir.child(name),
                // Some of it is not made yet: follow what is.
                Err(Error::NotFound(_)) => Ok(self.follow_dirs(&parent)?.join(name)),
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        }
    }

    /// Like [`Tree::stat`], but a missing path is `Ok(None)`.
    pub fn try_stat(&self, path: &BucketPath) -> Result<Option<Entry>> {
        match self.stat(path) {
            Ok(e) => Ok(Some(e)),
            Err(Error::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The entry with this id, wherever it now lives.
    pub fn entry(&self, id: EntryId) -> Result<Option<Entry>> {
        if id == EntryId::ROOT {
            return Ok(Some(Entry::root()));
        }
        self.inner.db.read(|c| self.by_id(c, id))
    }

    /// The current path of an entry, walking parent ids to the root.
    pub fn path_of(&self, id: EntryId) -> Result<Option<BucketPath>> {
        self.inner.db.read(|c| {
            let mut names = Vec::new();
            let mut cur = id;
            while cur != EntryId::ROOT {
                match self.by_id(c, cur)? {
                    Some(e) => {
                        names.push(e.name);
                        cur = e.parent;
                    }
                    None => return Ok(None),
                }
                if names.len() > crate::name::MAX_PATH {
                    return Err(Error::Internal(format!("entry {id:?} has a parent cycle")));
                }
            }
            names.reverse();
            Ok(Some(BucketPath::parse(&names.join("/"))?))
        })
    }

    /// The entry `name` in the directory with id `parent`.
    pub fn lookup_in(&self, parent: EntryId, name: &str) -> Result<Option<Entry>> {
        self.inner.db.read(|c| self.lookup(c, parent, name))
    }

    /// [`Tree::read_dir`] of the directory with id `dir`.
    pub fn read_dir_of(&self, dir: EntryId, after: Option<&str>, limit: usize) -> Result<Vec<Entry>> {
        self.inner.db.read(|c| self.children(c, dir, after, limit))
    }

    /// One page of a directory, sorted by name: at most `limit` entries whose
    /// names sort after `after`. Pass the last name of a page to get the next.
    pub fn read_dir(&self, path: &BucketPath, after: Option<&str>, limit: usize) -> Result<Vec<Entry>> {
        self.inner.db.read(|c| {
            let dir = self.resolve(c, path)?;
            if !dir.is_dir() {
                return Err(Error::NotADirectory(path.to_string()));
            }
            self.children(c, dir.id, after, limit)
        })
    }

    /// Every entry below `path` (not `path` itself), parents before children.
    pub fn walk(&self, path: &BucketPath) -> Result<Vec<(BucketPath, Entry)>> {
        self.inner.db.read(|c| {
            let top = self.resolve(c, path)?;
            self.walk_in(c, path, &top)
        })
    }

    /// [`Tree::walk`] as it goes: depth first, parents before children,
    /// each directory in name order, read a page at a time (each page its
    /// own read), so memory is a page per directory on the way down, not the
    /// tree. A file's walk is empty.
    pub fn walk_iter(&self, path: &BucketPath) -> Result<Walk<'_>> {
        let top = self.stat(path)?;
        let mut stack = Vec::new();
        if top.is_dir() {
            stack.push(WalkLevel {
                path: path.clone(),
                dir: top.id,
                after: None,
                page: Default::default(),
                done: false,
            });
        }
        Ok(Walk { tree: self, stack })
    }

    pub(crate) fn walk_in(&self, c: &Connection, path: &BucketPath, top: &Entry) -> Result<Vec<(BucketPath, Entry)>> {
        let mut out = Vec::new();
        if !top.is_dir() {
            return Ok(out);
        }
        let mut stack = vec![(path.clone(), top.id)];
        while let Some((dir_path, dir_id)) = stack.pop() {
            for e in self.children(c, dir_id, None, usize::MAX)? {
                let p = dir_path.join(&e.name);
                if e.is_dir() {
                    stack.push((p.clone(), e.id));
                }
                out.push((p, e));
            }
        }
        Ok(out)
    }

    /// Reads up to `len` bytes of the file at `path` from `offset`.
    pub async fn read(&self, path: &BucketPath, offset: u64, len: u64) -> Result<Vec<u8>> {
        let entry = self.stat(path)?;
        self.read_entry(&entry, offset, len).await
    }

    /// Reads up to `len` bytes of a file entry from `offset`.
    pub async fn read_entry(&self, entry: &Entry, offset: u64, len: u64) -> Result<Vec<u8>> {
        let hash = self.file_hash(entry)?;
        if offset >= entry.size || len == 0 {
            return Ok(Vec::new());
        }
        let len = len.min(entry.size - offset);
        self.inner.noted(self.inner.blobs.read_range(&hash, offset, len).await)
    }

    /// Opens a file entry for repeated reads at offsets (what SFTP and FUSE
    /// do). The entry's content is fixed: later commits do not change what
    /// this reader returns.
    pub async fn open_read(&self, entry: &Entry) -> Result<FileReader> {
        let hash = self.file_hash(entry)?;
        Ok(FileReader {
            tree: self.clone(),
            hash,
            size: entry.size,
        })
    }

    /// Streams a whole file into `out`; `progress(bytes_done)` as it goes.
    /// Streams bytes `range` of the file `entry` (a download: one pass,
    /// with read-ahead, instead of a read per window).
    pub async fn read_stream(&self, entry: &Entry, range: std::ops::Range<u64>) -> Result<ReadStream> {
        let hash = self.file_hash(entry)?;
        self.inner.read_stream(&hash, range).await
    }

    pub async fn copy_to(
        &self,
        entry: &Entry,
        out: &mut (impl tokio::io::AsyncWrite + Unpin),
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<u64> {
        let hash = self.file_hash(entry)?;
        let n = self.inner.noted(self.inner.blobs.copy_to(&hash, out, progress).await)?;
        if n != entry.size {
            return Err(Error::Blobs(format!(
                "{}: read {n} bytes, the tree says {}",
                entry.name, entry.size
            )));
        }
        Ok(n)
    }

    /// Writes a whole file to a local path (replacing it), streaming.
    pub async fn export(&self, entry: &Entry, target: &std::path::Path) -> Result<u64> {
        let hash = self.file_hash(entry)?;
        let target = std::path::absolute(target).map_err(|e| Error::io(target, e))?;
        self.inner.noted(self.inner.blobs.export(&hash, &target).await)
    }

    fn file_hash(&self, entry: &Entry) -> Result<BlobHash> {
        match (entry.kind, entry.hash) {
            (Kind::File, Some(h)) => Ok(h),
            (Kind::Dir, _) => Err(Error::IsADirectory(entry.name.clone())),
            _ => Err(Error::NotFound(entry.name.clone())),
        }
    }

    /// What changed from `self` to `other` (another branch, or another version).
    /// Entries are matched by id, so a move shows as one rename.
    pub fn diff(&self, other: &Tree) -> Result<Vec<Change>> {
        let index = |t: &Tree| -> Result<HashMap<EntryId, (BucketPath, Entry)>> {
            Ok(t.walk(&BucketPath::root())?
                .into_iter()
                .map(|(p, e)| (e.id, (p, e)))
                .collect())
        };
        let (a, b) = (index(self)?, index(other)?);
        let mut out = BTreeMap::new();
        for (id, (pa, ea)) in &a {
            match b.get(id) {
                None => {
                    out.insert(
                        pa.to_string(),
                        Change::Removed {
                            path: pa.to_string(),
                            kind: ea.kind,
                        },
                    );
                }
                Some((pb, eb)) => {
                    let modified = ea.kind != eb.kind
                        || ea.hash != eb.hash
                        || ea.mode != eb.mode
                        || ea.target != eb.target
                        || (ea.kind != Kind::Dir && ea.mtime_ns != eb.mtime_ns);
                    if pa != pb {
                        out.insert(
                            pb.to_string(),
                            Change::Renamed {
                                from: pa.to_string(),
                                to: pb.to_string(),
                                kind: eb.kind,
                                modified,
                            },
                        );
                    } else if modified {
                        out.insert(
                            pb.to_string(),
                            Change::Modified {
                                path: pb.to_string(),
                                kind: eb.kind,
                            },
                        );
                    }
                }
            }
        }
        for (id, (pb, eb)) in &b {
            if !a.contains_key(id) {
                out.insert(
                    pb.to_string(),
                    Change::Added {
                        path: pb.to_string(),
                        kind: eb.kind,
                    },
                );
            }
        }
        Ok(out.into_values().collect())
    }

    // ---- lookups on a given connection (also used inside write transactions)

    pub(crate) fn resolve(&self, c: &Connection, path: &BucketPath) -> Result<Entry> {
        let mut cur = Entry::root();
        let mut walked = BucketPath::root();
        for name in path.components() {
            if !cur.is_dir() {
                return Err(Error::NotADirectory(walked.to_string()));
            }
            walked = walked.join(name);
            cur = self
                .lookup(c, cur.id, name)?
                .ok_or_else(|| Error::NotFound(path.to_string()))?;
        }
        Ok(cur)
    }

    pub(crate) fn lookup(&self, c: &Connection, parent: EntryId, name: &str) -> Result<Option<Entry>> {
        let row = match *self.levels {
            [(branch, upto)] => c
                .prepare_cached(LOOKUP_ONE)?
                .query_row(params![branch, parent.0, name, upto], entry_from_row),
            _ => c
                .prepare_cached(LOOKUP_CHAIN)?
                .query_row(params![&*self.chain, parent.0, name], entry_from_row),
        };
        Ok(row.optional()?.flatten())
    }

    /// The newest row of entry `id`, nearest level first (a tombstone there
    /// hides the levels behind it). One index probe per level: a hot
    /// directory gains a row per change, and a probe stays O(log rows).
    pub(crate) fn by_id(&self, c: &Connection, id: EntryId) -> Result<Option<Entry>> {
        let mut stmt = c.prepare_cached(BY_ID_ONE)?;
        for (branch, upto) in self.levels.iter() {
            if let Some(row) = stmt.query_row(params![branch, id.0, upto], entry_from_row).optional()? {
                return Ok(row);
            }
        }
        Ok(None)
    }

    /// Live children of `dir` named after `after`, in name order, at most
    /// `limit`. Each level of the chain is read in name order with its own
    /// LIMIT (the newest row per name at that level), and the levels are
    /// merged nearest-first; only names up to the smallest "last name" of a
    /// level that filled its batch are certain, so the merge stops there and
    /// reads on. A page costs O(limit) rows per level, not O(directory).
    pub(crate) fn children(
        &self,
        c: &Connection,
        dir: EntryId,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Entry>> {
        // At least a few dozen rows per query, so runs of tombstones pass quickly.
        let batch = limit.clamp(64, 1000);
        let mut stmt = c.prepare_cached(CHILDREN_ONE_LEVEL)?;
        let mut out = Vec::new();
        let mut cursor = after.unwrap_or("").to_owned();
        loop {
            // name -> the nearest level's state of it (None: a tombstone).
            let mut merged: BTreeMap<String, Option<Entry>> = BTreeMap::new();
            let mut cutoff: Option<String> = None;
            for &(branch, upto) in self.levels.iter() {
                let rows = stmt.query_map(params![branch, dir.0, cursor, upto, batch as i64], |r| {
                    Ok((r.get::<_, String>(2)?, entry_from_row(r)?))
                })?;
                let mut n = 0;
                let mut last = None;
                for row in rows {
                    let (name, entry) = row?;
                    n += 1;
                    last = Some(name.clone());
                    merged.entry(name).or_insert(entry);
                }
                if n == batch
                    && let Some(last) = last
                    && cutoff.as_ref().is_none_or(|c| &last < c)
                {
                    cutoff = Some(last);
                }
            }
            for (name, entry) in merged {
                if cutoff.as_ref().is_some_and(|c| &name > c) {
                    break;
                }
                if let Some(e) = entry {
                    out.push(e);
                    if out.len() == limit {
                        return Ok(out);
                    }
                }
            }
            match cutoff {
                Some(c) => cursor = c,
                None => return Ok(out),
            }
        }
    }

    pub(crate) fn has_children(&self, c: &Connection, dir: EntryId) -> Result<bool> {
        Ok(!self.children(c, dir, None, 1)?.is_empty())
    }
}

/// A byte range of a file, read front to back: each window checked against
/// the blob's BLAKE3 tree before it is handed on, the next windows read and
/// checked ahead on the blocking pool. See [`Tree::read_stream`].
pub struct ReadStream {
    inner: Arc<crate::store::Inner>,
    read: crate::blobs::Verified,
}

impl crate::store::Inner {
    pub(crate) async fn read_stream(
        self: &Arc<Self>,
        hash: &BlobHash,
        range: std::ops::Range<u64>,
    ) -> Result<ReadStream> {
        let read = self.noted(self.blobs.read_verified(hash, range).await)?;
        Ok(ReadStream {
            inner: self.clone(),
            read,
        })
    }
}

impl ReadStream {
    /// The next verified bytes; `None` at the end of the range.
    pub async fn next(&mut self) -> Result<Option<bytes::Bytes>> {
        let next = self.read.next().await;
        self.inner.noted(next)
    }
}

/// An open file for reads at any offset. See [`Tree::open_read`].
pub struct FileReader {
    tree: Tree,
    hash: BlobHash,
    size: u64,
}

impl FileReader {
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Up to `len` bytes from `offset`; empty at or past the end. Verified
    /// against the blob's hash tree: corruption is an error, never bytes.
    pub async fn read_at(&self, offset: u64, len: u64) -> Result<Vec<u8>> {
        if offset >= self.size || len == 0 {
            return Ok(Vec::new());
        }
        let len = len.min(self.size - offset);
        let inner = &self.tree.inner;
        inner.noted(inner.blobs.read_range(&self.hash, offset, len).await)
    }
}

/// The chain of a branch: itself up to `limit`, then each ancestor up to the
/// (tightening) fork version. Returned as levels and as JSON for `json_each`.
pub(crate) fn chain(c: &Connection, branch_id: i64, limit: i64) -> Result<(Levels, Arc<str>)> {
    let mut levels = Vec::new();
    let mut cur = Some((branch_id, limit));
    while let Some((id, lim)) = cur {
        levels.push((id, lim));
        let (parent, fork): (Option<i64>, Option<i64>) = c.query_row(
            "SELECT parent_id, fork_version FROM branches WHERE id = ?1",
            [id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        cur = parent.map(|p| (p, fork.unwrap_or(HEAD).min(lim)));
    }
    let json: Vec<String> = levels.iter().map(|(b, l)| format!("[{b},{l}]")).collect();
    Ok((levels.into(), format!("[{}]", json.join(",")).into()))
}

pub(crate) fn head_limit() -> i64 {
    HEAD
}
