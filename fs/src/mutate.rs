//! The write side of [`Tree`]: every method here is one commit.

use rusqlite::{Transaction, params};

use crate::blobs::Imported;
use crate::db::{notify, now_ms, now_ns};
use crate::error::{Error, Result};
use crate::name::{BucketPath, check_entry_name, check_symlink_target};
use crate::quota::Counter;
use crate::tree::{SetAttr, Tree};
use crate::types::{Entry, EntryId, Kind, TOMBSTONE, Version};

/// Mode of a new file when the caller gives none.
pub const DEFAULT_FILE_MODE: u32 = 0o644;
/// Mode of a new directory when the caller gives none.
pub const DEFAULT_DIR_MODE: u32 = 0o755;

/// Imports [`Tree::put_files`] keeps in flight at once.
const IMPORTS_IN_FLIGHT: usize = 16;

/// Inserts the rows of one commit.
pub(crate) struct Rows<'a> {
    pub(crate) tx: &'a Transaction<'a>,
    tree: &'a Tree,
    branch_id: i64,
    version: Version,
    /// The change in the head's file bytes (quota.rs).
    count: Counter,
    /// Directories already given a new mtime in this commit.
    touched: std::cell::RefCell<Vec<EntryId>>,
    /// Entries this commit wrote rows for, as they were before it: what
    /// its replication ops are made of (replica.rs).
    noted: crate::replica::Touched,
}

impl Rows<'_> {
    /// Writes the new state of `e` (its parent, name and attributes) as of
    /// this commit; its ctime becomes the commit's time.
    pub(crate) fn put(&self, e: &mut Entry) -> Result<()> {
        e.ctime_ns = now_ns();
        let before = self.tree.by_id(self.tx, e.id)?;
        self.noted.note(e.id, before.as_ref());
        self.count.change(before.as_ref(), Some(e));
        self.tx
            .prepare_cached(
                "INSERT INTO nodes (branch_id, parent, name, version, eid, kind, hash, size, mode, mtime_ns, target, ctime_ns)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            )?
            .execute(params![
                self.branch_id,
                e.parent.0,
                e.name,
                self.version.0 as i64,
                e.id.0,
                e.kind.code(),
                e.hash.map(|h| h.0.to_vec()),
                e.size as i64,
                e.mode as i64,
                e.mtime_ns,
                e.target,
                e.ctime_ns,
            ])?;
        Ok(())
    }

    /// Gives directory `dir` a new mtime (an entry in it was added, removed
    /// or renamed), once per commit. The root has no row of its own.
    pub(crate) fn touch(&self, tree: &Tree, dir: EntryId) -> Result<()> {
        if dir == EntryId::ROOT || self.touched.borrow().contains(&dir) {
            return Ok(());
        }
        if let Some(mut d) = tree.by_id(self.tx, dir)? {
            d.mtime_ns = now_ns();
            d.version = self.version;
            self.put(&mut d)?;
        }
        self.touched.borrow_mut().push(dir);
        Ok(())
    }

    /// Records that `e` is gone from its current place.
    pub(crate) fn tombstone(&self, e: &Entry) -> Result<()> {
        let before = self.tree.by_id(self.tx, e.id)?;
        self.noted.note(e.id, before.as_ref());
        self.count.change(before.as_ref(), None);
        self.tx
            .prepare_cached(
                "INSERT INTO nodes (branch_id, parent, name, version, eid, kind, size, mode, mtime_ns)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, 0, 0, 0)",
            )?
            .execute(params![
                self.branch_id,
                e.parent.0,
                e.name,
                self.version.0 as i64,
                e.id.0,
                TOMBSTONE
            ])?;
        Ok(())
    }

    pub(crate) fn version(&self) -> Version {
        self.version
    }

    /// Whether this commit wrote any row yet.
    pub(crate) fn wrote_any(&self) -> bool {
        !self.noted.0.borrow().is_empty()
    }

    /// The id of a new directory `name` in `parent`: derived from the two
    /// (so two nodes that make the same directory make one, replica.rs),
    /// unless the branch ever used that id; then a random one.
    pub(crate) fn new_dir_id(&self, parent: EntryId, name: &str) -> Result<EntryId> {
        let id = crate::replica::dir_id(parent, name);
        let mut used = self
            .tx
            .prepare_cached("SELECT EXISTS (SELECT 1 FROM sync_ops WHERE branch_id = ?1 AND eid = ?2)")?
            .query_row(params![self.branch_id, id.0], |r| r.get::<_, bool>(0))?;
        let mut seen = self
            .tx
            .prepare_cached("SELECT EXISTS (SELECT 1 FROM nodes WHERE branch_id = ?1 AND eid = ?2)")?;
        for (branch, _) in self.tree.levels.iter() {
            used = used || seen.query_row(params![branch, id.0], |r| r.get::<_, bool>(0))?;
        }
        Ok(if used { EntryId::random() } else { id })
    }
}

/// One entry of a local tree for [`Tree::put_files`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum LocalEntry {
    /// A regular file, imported from `local`.
    File {
        local: std::path::PathBuf,
        mode: u32,
        mtime_ns: i64,
    },
    /// A directory (created if missing, empty or not).
    Dir {
        mode: u32,
        mtime_ns: i64,
    },
    Symlink {
        target: String,
    },
}

/// How [`Tree::write_file`] treats parents and an existing file.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Place {
    pub(crate) create_parents: bool,
    pub(crate) mode: Option<u32>,
    pub(crate) mtime_ns: Option<i64>,
    /// What the file must hold when the commit runs (compare-and-swap).
    pub(crate) expect: Option<Expect>,
}

/// A write's precondition on the file it replaces, checked inside the
/// commit's transaction: HTTP's `If-Match` and `If-None-Match: *`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// No entry at the path.
    Absent,
    /// A file with this content.
    Hash(crate::types::BlobHash),
}

impl Expect {
    fn check(self, path: &str, existing: Option<&Entry>) -> Result<()> {
        let holds = match (self, existing) {
            (Expect::Absent, None) => true,
            (Expect::Hash(want), Some(e)) => e.kind == Kind::File && e.hash == Some(want),
            _ => false,
        };
        if holds {
            Ok(())
        } else {
            Err(Error::Changed(path.to_owned()))
        }
    }
}

impl Tree {
    /// Runs `f` as one commit: allocates the version, lets `f` insert rows,
    /// records the commit and notifies watchers, all in one transaction.
    pub(crate) fn commit<T>(
        &self,
        op: &str,
        paths: &[&BucketPath],
        f: impl FnMut(&Rows<'_>) -> Result<T>,
    ) -> Result<(Version, T)> {
        self.commit_as(op, paths, true, f)
    }

    /// [`Tree::commit`]; `local`: a change made here, recorded as this
    /// node's replication ops. Received changes (`sync_apply`) are not
    /// local: their ops came with them.
    pub(crate) fn commit_as<T>(
        &self,
        op: &str,
        paths: &[&BucketPath],
        local: bool,
        mut f: impl FnMut(&Rows<'_>) -> Result<T>,
    ) -> Result<(Version, T)> {
        self.check_writable(paths.first().map(|p| p.as_str()).unwrap_or("/"))?;
        let paths: Vec<&str> = paths.iter().map(|p| p.as_str()).collect();
        let paths_json = serde_json::to_string(&paths).expect("a list of strings serialises");
        self.inner.db.write(|tx| {
            let before = self.head_bytes(tx)?;
            let version: i64 = tx.query_row(
                "INSERT INTO versions (branch_id, at_ms, op, paths) VALUES (?1, ?2, ?3, ?4) RETURNING version",
                params![self.branch_id, now_ms(), op, paths_json],
                |r| r.get(0),
            )?;
            let mut rows = Rows {
                tx,
                tree: self,
                branch_id: self.branch_id,
                version: Version(version as u64),
                count: Counter::default(),
                touched: Default::default(),
                noted: Default::default(),
            };
            let out = f(&rows)?;
            if local {
                let reach = crate::replica::record_local(tx, self, op, std::mem::take(&mut rows.noted))?;
                // With another node's ops here, a delete or a move may change
                // how other entries show.
                if reach == crate::replica::Reach::Others
                    && crate::replica::is_replicated(tx, self.branch_id, self.inner.clock.origin())?
                {
                    crate::replica::present_into(&rows, self)?;
                }
            }
            rows.count.record(tx, before, version)?;
            notify(
                tx,
                &serde_json::json!({
                    "version": version, "bucket": self.bucket, "branch": self.branch, "op": op, "paths": paths,
                }),
            )?;
            Ok((Version(version as u64), out))
        })
    }

    /// The parent directory of `path` (which must not be the root) and the name.
    fn parent_dir<'p>(&self, rows: &Rows<'_>, path: &'p BucketPath, create: bool) -> Result<(Entry, &'p str)> {
        let (parent_path, name) = path.split_last().ok_or_else(|| Error::Exists("/".into()))?;
        check_entry_name(name)?;
        let parent = if create {
            self.mkdir_all_in(rows, &parent_path)?
        } else {
            self.resolve(rows.tx, &parent_path)?
        };
        if !parent.is_dir() {
            return Err(Error::NotADirectory(parent_path.to_string()));
        }
        Ok((parent, name))
    }

    pub(crate) fn mkdir_all_in(&self, rows: &Rows<'_>, path: &BucketPath) -> Result<Entry> {
        let mut cur = Entry::root();
        let mut walked = BucketPath::root();
        for name in path.components() {
            walked = walked.join(name);
            cur = match self.lookup(rows.tx, cur.id, name)? {
                Some(e) if e.is_dir() => e,
                Some(_) => return Err(Error::NotADirectory(walked.to_string())),
                None => {
                    check_entry_name(name)?;
                    let mut e = new_entry(cur.id, name, Kind::Dir, DEFAULT_DIR_MODE, rows.version());
                    e.id = rows.new_dir_id(cur.id, name)?;
                    rows.put(&mut e)?;
                    rows.touch(self, cur.id)?;
                    e
                }
            };
        }
        Ok(cur)
    }

    /// Creates a directory; its parent must exist.
    pub fn mkdir(&self, path: &BucketPath, mode: Option<u32>) -> Result<Entry> {
        let (_, e) = self.commit("mkdir", &[path], |rows| {
            let (parent, name) = self.parent_dir(rows, path, false)?;
            if self.lookup(rows.tx, parent.id, name)?.is_some() {
                return Err(Error::Exists(path.to_string()));
            }
            let mut e = new_entry(
                parent.id,
                name,
                Kind::Dir,
                mode.unwrap_or(DEFAULT_DIR_MODE),
                rows.version(),
            );
            e.id = rows.new_dir_id(parent.id, name)?;
            rows.put(&mut e)?;
            rows.touch(self, parent.id)?;
            Ok(e)
        })?;
        Ok(e)
    }

    /// Creates a directory and any missing parents; an existing directory is fine.
    pub fn mkdir_all(&self, path: &BucketPath) -> Result<Entry> {
        if let Some(e) = self.try_stat(path)?
            && e.is_dir()
        {
            return Ok(e);
        }
        Ok(self.commit("mkdir", &[path], |rows| self.mkdir_all_in(rows, path))?.1)
    }

    /// Creates a symlink at `path` pointing at `target` (stored verbatim).
    pub fn symlink(&self, path: &BucketPath, target: &str) -> Result<Entry> {
        check_symlink_target(target)?;
        Ok(self
            .commit("symlink", &[path], |rows| {
                let (parent, name) = self.parent_dir(rows, path, false)?;
                if self.lookup(rows.tx, parent.id, name)?.is_some() {
                    return Err(Error::Exists(path.to_string()));
                }
                let mut e = new_entry(parent.id, name, Kind::Symlink, 0o777, rows.version());
                e.size = target.len() as u64;
                e.target = Some(target.to_owned());
                rows.put(&mut e)?;
                rows.touch(self, parent.id)?;
                Ok(e)
            })?
            .1)
    }

    /// Creates a FIFO, socket or device node: `mode` includes its file type
    /// bits (`S_IFIFO`, `S_IFSOCK`, `S_IFCHR`, `S_IFBLK`), `rdev` is kept
    /// for devices. The parent must exist and the name be free.
    pub fn mknod(&self, path: &BucketPath, mode: u32, rdev: u64) -> Result<Entry> {
        let kind_bits = mode & 0o170000;
        if ![0o010000, 0o140000, 0o020000, 0o060000].contains(&kind_bits) {
            return Err(Error::InvalidPath {
                path: path.to_string(),
                reason: "mknod makes FIFOs, sockets and device nodes only",
            });
        }
        Ok(self
            .commit("mknod", &[path], |rows| {
                let (parent, name) = self.parent_dir(rows, path, false)?;
                if self.lookup(rows.tx, parent.id, name)?.is_some() {
                    return Err(Error::Exists(path.to_string()));
                }
                let mut e = new_entry(parent.id, name, Kind::Special, mode & 0o177777, rows.version());
                e.size = rdev;
                rows.put(&mut e)?;
                rows.touch(self, parent.id)?;
                Ok(e)
            })?
            .1)
    }

    /// Removes a file, symlink or special file.
    pub fn remove(&self, path: &BucketPath) -> Result<()> {
        self.commit("remove", &[path], |rows| {
            let e = self.resolve(rows.tx, path)?;
            if e.is_dir() {
                return Err(Error::IsADirectory(path.to_string()));
            }
            rows.tombstone(&e)?;
            rows.touch(self, e.parent)
        })?;
        Ok(())
    }

    /// Removes an empty directory.
    pub fn rmdir(&self, path: &BucketPath) -> Result<()> {
        if path.is_root() {
            return Err(Error::InvalidPath {
                path: "/".into(),
                reason: "the root cannot be removed",
            });
        }
        self.commit("remove", &[path], |rows| {
            let e = self.resolve(rows.tx, path)?;
            if !e.is_dir() {
                return Err(Error::NotADirectory(path.to_string()));
            }
            if self.has_children(rows.tx, e.id)? {
                return Err(Error::NotEmpty(path.to_string()));
            }
            rows.tombstone(&e)?;
            rows.touch(self, e.parent)
        })?;
        Ok(())
    }

    /// Removes `path` and everything below it; on the root, empties the bucket.
    /// Every descendant gets its own tombstone so no entry stays reachable by id.
    pub fn remove_all(&self, path: &BucketPath) -> Result<()> {
        self.commit("remove", &[path], |rows| {
            let top = self.resolve(rows.tx, path)?;
            self.remove_tree_in(rows, path, &top)
        })?;
        Ok(())
    }

    /// Removes entry `id` and everything below it, wherever it is: the way to
    /// remove an entry whose name no path can spell (one stored before the
    /// name rule, that `fsck` reports). Returns where it was.
    pub fn remove_entry(&self, id: EntryId) -> Result<BucketPath> {
        if id == EntryId::ROOT {
            return Err(Error::InvalidPath {
                path: "/".into(),
                reason: "the root cannot be removed",
            });
        }
        let path = self
            .path_of(id)?
            .ok_or_else(|| Error::NotFound(format!("entry {}", id.0)))?;
        self.commit("remove", &[&path], |rows| {
            let top = self
                .by_id(rows.tx, id)?
                .ok_or_else(|| Error::NotFound(format!("entry {}", id.0)))?;
            self.remove_tree_in(rows, &path, &top)
        })?;
        Ok(path)
    }

    /// Tombstones `top` (at `path`) and everything below it; the root stays.
    pub(crate) fn remove_tree_in(&self, rows: &Rows<'_>, path: &BucketPath, top: &Entry) -> Result<()> {
        for (_, e) in self.walk_in(rows.tx, path, top)? {
            rows.tombstone(&e)?;
        }
        if !path.is_root() {
            rows.tombstone(top)?;
            rows.touch(self, top.parent)?;
        }
        Ok(())
    }

    /// Moves `from` to `to` in O(1): one tombstone and one row, whatever the
    /// size of the subtree. An existing `to` is replaced if `replace` (a
    /// directory only by an empty directory), otherwise it is an error.
    pub fn rename(&self, from: &BucketPath, to: &BucketPath, replace: bool) -> Result<Entry> {
        if from.is_root() || to.is_root() {
            return Err(Error::InvalidPath {
                path: "/".into(),
                reason: "the root cannot be moved or replaced",
            });
        }
        if to.starts_with(from) && to != from {
            return Err(Error::RenameIntoSelf {
                from: from.to_string(),
                to: to.to_string(),
            });
        }
        Ok(self
            .commit("rename", &[from, to], |rows| {
                let src = self.resolve(rows.tx, from)?;
                if from == to {
                    return Ok(src);
                }
                let (parent, name) = self.parent_dir(rows, to, false)?;
                if let Some(dst) = self.lookup(rows.tx, parent.id, name)? {
                    if !replace {
                        return Err(Error::Exists(to.to_string()));
                    }
                    match (src.is_dir(), dst.is_dir()) {
                        (true, false) => return Err(Error::NotADirectory(to.to_string())),
                        (false, true) => return Err(Error::IsADirectory(to.to_string())),
                        (true, true) if self.has_children(rows.tx, dst.id)? => {
                            return Err(Error::NotEmpty(to.to_string()));
                        }
                        _ => {}
                    }
                    rows.tombstone(&dst)?;
                }
                rows.tombstone(&src)?;
                let mut moved = Entry {
                    parent: parent.id,
                    name: name.to_owned(),
                    version: rows.version(),
                    ..src
                };
                rows.put(&mut moved)?;
                rows.touch(self, src.parent)?;
                rows.touch(self, parent.id)?;
                Ok(moved)
            })?
            .1)
    }

    /// Changes mode and/or mtime.
    pub fn set_attr(&self, path: &BucketPath, attr: &SetAttr) -> Result<Entry> {
        if path.is_root() {
            // The root has no row: its mode and mtime are fixed. Setting them
            // succeeds and changes nothing, so `tar -x` into a root works.
            self.check_writable("/")?;
            return self.stat(path);
        }
        Ok(self
            .commit("setattr", &[path], |rows| {
                let mut e = self.resolve(rows.tx, path)?;
                if let Some(mode) = attr.mode {
                    // A special file keeps its type bits.
                    e.mode = (e.mode & 0o170000) | (mode & 0o7777);
                }
                if let Some(mtime) = attr.mtime_ns {
                    e.mtime_ns = mtime;
                }
                e.version = rows.version();
                rows.put(&mut e)?;
                Ok(e)
            })?
            .1)
    }

    /// Copies a file to `to` without touching its bytes: the new entry shares
    /// the blob. An existing file at `to` is replaced.
    pub fn copy_file(&self, from: &BucketPath, to: &BucketPath) -> Result<Entry> {
        Ok(self
            .commit("write", &[to], |rows| {
                let src = self.resolve(rows.tx, from)?;
                if src.kind != Kind::File {
                    return Err(Error::IsADirectory(from.to_string()));
                }
                let (parent, name) = self.parent_dir(rows, to, false)?;
                let existing = self.lookup(rows.tx, parent.id, name)?;
                if existing.as_ref().is_some_and(Entry::is_dir) {
                    return Err(Error::IsADirectory(to.to_string()));
                }
                let new = existing.is_none();
                let mut e = Entry {
                    id: existing.map(|e| e.id).unwrap_or_else(EntryId::random),
                    parent: parent.id,
                    name: name.to_owned(),
                    version: rows.version(),
                    ..src
                };
                rows.put(&mut e)?;
                if new {
                    rows.touch(self, parent.id)?;
                }
                Ok(e)
            })?
            .1)
    }

    /// Records a snapshot of the branch as it is now; named if `name` is given.
    pub fn snapshot(&self, name: Option<&str>) -> Result<Version> {
        if let Some(n) = name {
            crate::name::check_branch_name("snapshot name", n)?;
        }
        Ok(self
            .commit("snapshot", &[], |rows| {
                if let Some(n) = name {
                    let inserted = rows.tx.execute(
                        "INSERT OR IGNORE INTO snapshots (branch_id, name, version) VALUES (?1, ?2, ?3)",
                        params![self.branch_id, n, rows.version().0 as i64],
                    )?;
                    if inserted == 0 {
                        return Err(Error::SnapshotExists(n.to_owned()));
                    }
                }
                Ok(())
            })?
            .0)
    }

    /// Publishes an imported blob at `path`, replacing a file that is there and
    /// keeping its entry id. Holds `blob` until the row is committed.
    pub(crate) async fn write_file(&self, path: &BucketPath, blob: Imported, place: Place) -> Result<Entry> {
        self.inner.blobs.sync().await?;
        let (_, entry) = self.commit("write", &[path], |rows| self.place_file(rows, path, &blob, place))?;
        drop(blob);
        Ok(entry)
    }

    /// Publishes an imported blob as the new content of entry `id`, wherever
    /// it lives now; `NotFound` if it was removed.
    pub(crate) async fn write_entry(&self, id: EntryId, blob: Imported, place: Place) -> Result<Entry> {
        self.inner.blobs.sync().await?;
        let path = self
            .path_of(id)?
            .ok_or_else(|| Error::NotFound(format!("entry {}", id.0)))?;
        let (_, entry) = self.commit("write", &[&path], |rows| {
            let mut e = self
                .by_id(rows.tx, id)?
                .ok_or_else(|| Error::NotFound(path.to_string()))?;
            // The entry must still be what its place holds (not a stale row of
            // an entry deleted since, whose name now belongs to another).
            if self.lookup(rows.tx, e.parent, &e.name)?.map(|h| h.id) != Some(id) {
                return Err(Error::NotFound(path.to_string()));
            }
            if let Some(expect) = place.expect {
                expect.check(path.as_str(), Some(&e))?;
            }
            e.hash = Some(blob.hash);
            e.size = blob.size;
            e.mode = place.mode.unwrap_or(e.mode);
            e.mtime_ns = place.mtime_ns.unwrap_or_else(now_ns);
            e.version = rows.version();
            rows.put(&mut e)?;
            Ok(e)
        })?;
        drop(blob);
        Ok(entry)
    }

    /// Commits a new empty file at `path` (parent must exist, name must be free).
    pub(crate) fn create_empty(&self, path: &BucketPath, mode: Option<u32>) -> Result<Entry> {
        let empty = crate::types::BlobHash::of(b"");
        Ok(self
            .commit("write", &[path], |rows| {
                let (parent, name) = self.parent_dir(rows, path, false)?;
                if self.lookup(rows.tx, parent.id, name)?.is_some() {
                    return Err(Error::Exists(path.to_string()));
                }
                let mut e = new_entry(
                    parent.id,
                    name,
                    Kind::File,
                    mode.unwrap_or(DEFAULT_FILE_MODE),
                    rows.version(),
                );
                e.hash = Some(empty);
                rows.put(&mut e)?;
                rows.touch(self, parent.id)?;
                Ok(e)
            })?
            .1)
    }

    /// The row of one file write, inside a commit.
    fn place_file(&self, rows: &Rows<'_>, path: &BucketPath, blob: &Imported, place: Place) -> Result<Entry> {
        let (parent, name) = self.parent_dir(rows, path, place.create_parents)?;
        let existing = self.lookup(rows.tx, parent.id, name)?;
        if let Some(expect) = place.expect {
            expect.check(path.as_str(), existing.as_ref())?;
        }
        if let Some(e) = &existing
            && e.kind != Kind::File
        {
            return Err(match e.kind {
                Kind::Dir => Error::IsADirectory(path.to_string()),
                _ => Error::Exists(path.to_string()),
            });
        }
        let mut e = Entry {
            id: existing.as_ref().map(|e| e.id).unwrap_or_else(EntryId::random),
            parent: parent.id,
            name: name.to_owned(),
            kind: Kind::File,
            hash: Some(blob.hash),
            size: blob.size,
            mode: place
                .mode
                .or(existing.as_ref().map(|e| e.mode))
                .unwrap_or(DEFAULT_FILE_MODE),
            mtime_ns: place.mtime_ns.unwrap_or_else(now_ns),
            ctime_ns: now_ns(),
            target: None,
            version: rows.version(),
        };
        rows.put(&mut e)?;
        if existing.is_none() {
            rows.touch(self, parent.id)?;
        }
        Ok(e)
    }

    /// Stores a local tree in one commit (all or none become visible), as
    /// `cp -a` would copy it: files with their modes and mtimes, symlinks,
    /// and directories — empty ones too — with theirs. Parents are created
    /// as needed. `progress(files_done, files_total)` is called after each
    /// import. The commit records only `root` as its path.
    pub async fn put_files(
        &self,
        root: &BucketPath,
        entries: &[(BucketPath, LocalEntry)],
        progress: &(dyn Fn(u64, u64) + Sync),
    ) -> Result<Version> {
        self.check_writable(root.as_str())?;
        let files: Vec<(&BucketPath, &std::path::Path)> = entries
            .iter()
            .filter_map(|(path, e)| match e {
                LocalEntry::File { local, .. } => Some((path, local.as_path())),
                _ => None,
            })
            .collect();
        let mut total = 0u64;
        for (path, local) in &files {
            let size = std::fs::metadata(local).map_err(|e| Error::io(local, e))?.len();
            self.inner.limits.check_size(path.as_str(), size)?;
            total = total.saturating_add(size);
        }
        // One look at the disk (and the quota) for the whole tree.
        self.inner.limits.check_disk(&self.inner.dir, root.as_str(), total)?;
        self.check_quota(root.as_str(), total)?;
        use n0_future::{BufferedStreamExt, StreamExt};
        // The blob store's actor hashes and stores on its own threads: keep
        // several imports in flight so small files do not wait on round trips.
        // Owned paths: a stream over borrowed pairs makes this future lose
        // `Send` (a higher-ranked lifetime rustc cannot prove), and servers
        // spawn it.
        let blobs = &self.inner.blobs;
        let locals: Vec<std::path::PathBuf> = files.iter().map(|(_, local)| local.to_path_buf()).collect();
        let mut imports = n0_future::stream::iter(locals)
            .map(|local| async move { blobs.import_file(&local, &|_, _| {}).await })
            .buffered_ordered(IMPORTS_IN_FLIGHT);
        let mut blobs = Vec::with_capacity(files.len());
        while let Some(blob) = imports.next().await {
            blobs.push(blob?);
            progress(blobs.len() as u64, files.len() as u64);
        }
        drop(imports);
        self.inner.blobs.sync().await?;
        let (version, ()) = self.commit("write", &[root], |rows| {
            self.mkdir_all_in(rows, root)?;
            let mut blobs = blobs.iter();
            for (path, entry) in entries {
                match entry {
                    LocalEntry::File { mode, mtime_ns, .. } => {
                        let blob = blobs
                            .next()
                            .ok_or_else(|| Error::Internal("an import went missing".into()))?;
                        let place = Place {
                            create_parents: true,
                            mode: Some(*mode),
                            mtime_ns: Some(*mtime_ns),
                            expect: None,
                        };
                        self.place_file(rows, path, blob, place)?;
                    }
                    LocalEntry::Dir { .. } => {
                        self.mkdir_all_in(rows, path)?;
                    }
                    LocalEntry::Symlink { target } => {
                        check_symlink_target(target)?;
                        self.place_new(rows, path, Kind::Symlink, None, Some(target), 0o777)?;
                    }
                }
            }
            // Directory times last: every entry added above touched its parent.
            for (path, entry) in entries {
                if let LocalEntry::Dir { mode, mtime_ns } = entry {
                    let mut e = self.resolve(rows.tx, path)?;
                    e.mode = (e.mode & 0o170000) | (mode & 0o7777);
                    e.mtime_ns = *mtime_ns;
                    e.version = rows.version();
                    rows.put(&mut e)?;
                }
            }
            Ok(())
        })?;
        Ok(version)
    }

    /// Stores blobs already imported (`Store::import_stream`) as files below
    /// `root` in one commit — all or none become visible — with parents
    /// created: what a frontend that streams several files into the blob
    /// store at once (a web form) commits. Limits and the quota are checked
    /// on the blobs' sizes; the commit records only `root` as its path.
    pub async fn put_blobs(&self, root: &BucketPath, files: &[(BucketPath, crate::refs::Blob)]) -> Result<Version> {
        self.check_writable(root.as_str())?;
        let mut total = 0u64;
        for (path, blob) in files {
            self.inner.limits.check_size(path.as_str(), blob.size())?;
            total = total.saturating_add(blob.size());
        }
        self.check_quota(root.as_str(), total)?;
        self.inner.blobs.sync().await?;
        let (version, ()) = self.commit("write", &[root], |rows| {
            self.mkdir_all_in(rows, root)?;
            for (path, blob) in files {
                let place = Place {
                    create_parents: true,
                    ..Place::default()
                };
                self.place_file(rows, path, &blob.0, place)?;
            }
            Ok(())
        })?;
        Ok(version)
    }

    /// Stores the local file at `local` as `path`, streaming it into the blob
    /// store; missing parent directories are created. `progress(done, total)`
    /// is called as the import goes.
    pub async fn put_file(
        &self,
        path: &BucketPath,
        local: &std::path::Path,
        mode: Option<u32>,
        progress: &(dyn Fn(u64, u64) + Sync),
    ) -> Result<Entry> {
        self.check_writable(path.as_str())?;
        let size = std::fs::metadata(local).map_err(|e| Error::io(local, e))?.len();
        self.inner.limits.check(&self.inner.dir, path.as_str(), 0, size)?;
        self.check_quota(path.as_str(), size)?;
        let blob = self.inner.blobs.import_file(local, progress).await?;
        self.write_file(
            path,
            blob,
            Place {
                create_parents: true,
                mode,
                mtime_ns: None,
                expect: None,
            },
        )
        .await
    }
}

fn new_entry(parent: EntryId, name: &str, kind: Kind, mode: u32, version: Version) -> Entry {
    Entry {
        id: EntryId::random(),
        parent,
        name: name.to_owned(),
        kind,
        hash: None,
        size: 0,
        mode,
        mtime_ns: now_ns(),
        ctime_ns: now_ns(),
        target: None,
        version,
    }
}
