//! What the filesystem needs from a store, and the store on this machine.
//!
//! The FUSE adapter (`alknet_mount::Mount`) speaks only [`Backend`]. [`Local`]
//! is a tree of a data directory this process opened; [`crate::Remote`] is
//! a tree on a node, reached through its endpoint — and the node answers a
//! remote mount with a [`Local`] of its own, so both modes run one code path.
//! Errors are errnos: what the kernel gets, and what crosses the wire.

use std::sync::Mutex;
use std::time::Duration;

use crate::Errno;
use alknet_fs::{
    BucketPath, Entry, EntryId, Error, FileReader, OpenOptions, SetAttr, Space, Store, Tree, WriteSession,
};

pub(crate) type Result<T> = std::result::Result<T, Errno>;

/// A tree to mount, addressed as FUSE addresses it: entries by id, names
/// in a directory by the directory's id and the name.
pub trait Backend: Send + Sync + 'static {
    /// Every change is refused (a past version, a git-published branch, a
    /// `read` grant, or asked for).
    fn read_only(&self) -> bool;
    fn entry(&self, id: EntryId) -> Result<Option<Entry>>;
    fn lookup(&self, parent: EntryId, name: &str) -> Result<Option<Entry>>;
    /// Up to `limit` entries of a directory, by name, after `after`.
    fn read_dir(&self, dir: EntryId, after: Option<&str>, limit: usize) -> Result<Vec<Entry>>;
    fn mkdir(&self, parent: EntryId, name: &str, mode: u32) -> Result<Entry>;
    /// A FIFO, socket or device node (`mode` with its file type bits).
    fn mknod(&self, parent: EntryId, name: &str, mode: u32, rdev: u64) -> Result<Entry>;
    fn symlink(&self, parent: EntryId, name: &str, target: &str) -> Result<Entry>;
    fn remove(&self, parent: EntryId, name: &str) -> Result<()>;
    fn rmdir(&self, parent: EntryId, name: &str) -> Result<()>;
    fn rename(&self, from: (EntryId, &str), to: (EntryId, &str), replace: bool) -> Result<()>;
    fn set_attr(&self, id: EntryId, mode: Option<u32>, mtime_ns: Option<i64>) -> Result<Entry>;
    fn truncate(&self, id: EntryId, len: u64) -> Result<Entry>;
    /// Creates an empty file, committed at once, and a writer on it.
    fn create(&self, parent: EntryId, name: &str, mode: u32, exclusive: bool) -> Result<(Entry, Box<dyn Writer>)>;
    /// A writer on an existing file, starting empty if `truncate`.
    fn open_write(&self, id: EntryId, truncate: bool) -> Result<Box<dyn Writer>>;
    /// A reader of a file's content as `e` names it; later commits do not
    /// change what it reads.
    fn open_read(&self, e: &Entry) -> Result<Box<dyn Reader>>;
    fn space(&self) -> Result<Space>;
    /// Names other writers added, removed or moved — (directory, name) —
    /// waiting up to `wait` for some: what the kernel must forget. The
    /// first call starts from the branch's head.
    fn changes(&self, wait: Duration) -> Result<Vec<(EntryId, String)>>;
}

/// A write session: nothing shows until [`Writer::close`]; dropped
/// unclosed, the file stays as it was.
pub trait Writer: Send {
    fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<()>;
    fn read_at(&mut self, offset: u64, len: u32) -> Result<Vec<u8>>;
    fn set_len(&mut self, len: u64) -> Result<()>;
    /// The length of the content as written so far.
    fn size(&self) -> u64;
    fn set_attr(&mut self, mode: Option<u32>, mtime_ns: Option<i64>) -> Result<()>;
    /// Publishes the content. A file unlinked meanwhile is not an error:
    /// as on a disk, its content goes with the last reference.
    fn close(self: Box<Self>) -> Result<()>;
}

/// A reader of one fixed content.
pub trait Reader: Send {
    /// Up to `len` bytes at `offset`; empty at or past the end.
    fn read_at(&mut self, offset: u64, len: u32) -> Result<Vec<u8>>;
}

/// The errno for a store error.
pub(crate) fn errno(e: &Error) -> Errno {
    match e {
        Error::NotFound(_) | Error::NoSuchBucket(_) | Error::NoSuchBranch { .. } => Errno::ENOENT,
        Error::Exists(_) => Errno::EEXIST,
        Error::NotADirectory(_) => Errno::ENOTDIR,
        Error::IsADirectory(_) => Errno::EISDIR,
        Error::NotEmpty(_) => Errno::ENOTEMPTY,
        Error::ReadOnly(_) => Errno::EROFS,
        Error::RenameIntoSelf { .. } => Errno::EINVAL,
        Error::TooLarge { .. } => Errno::EFBIG,
        Error::NoSpace { .. } => Errno::ENOSPC,
        Error::Quota { .. } => Errno::EDQUOT,
        // As symlink(2): an empty target is ENOENT, a long one ENAMETOOLONG.
        Error::InvalidName {
            what: "symlink target",
            value,
            ..
        } => {
            if value.is_empty() {
                Errno::ENOENT
            } else {
                Errno::ENAMETOOLONG
            }
        }
        Error::InvalidName { value, .. } | Error::InvalidPath { path: value, .. }
            if value.len() > alknet_fs::MAX_COMPONENT =>
        {
            Errno::ENAMETOOLONG
        }
        Error::InvalidName { .. } | Error::InvalidPath { .. } => Errno::EINVAL,
        other => {
            tracing::warn!("mount: {other}");
            Errno::EIO
        }
    }
}

fn fail(e: Error) -> Errno {
    errno(&e)
}

/// A tree of a data directory this process has open.
pub struct Local {
    store: Store,
    tree: Tree,
    runtime: tokio::runtime::Handle,
    read_only: bool,
    /// Follows the branch for [`Backend::changes`]; opened at the first call.
    watch: Mutex<Option<alknet_fs::Watch>>,
}

impl Local {
    /// `tree` of `store`; `read_only` refuses every change (a tree at a
    /// past version refuses them anyway). Blocking calls run on the current
    /// tokio runtime.
    pub fn new(store: &Store, tree: Tree, read_only: bool) -> Local {
        Local {
            store: store.clone(),
            read_only: read_only || tree.is_read_only(),
            tree,
            runtime: tokio::runtime::Handle::current(),
            watch: Mutex::new(None),
        }
    }

    /// The runtime its blocking calls run on.
    pub(crate) fn runtime(&self) -> &tokio::runtime::Handle {
        &self.runtime
    }

    fn writable(&self) -> Result<()> {
        if self.read_only { Err(Errno::EROFS) } else { Ok(()) }
    }

    fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.runtime.block_on(f)
    }

    fn writer(&self, session: WriteSession) -> Box<dyn Writer> {
        Box::new(LocalWriter {
            session,
            runtime: self.runtime.clone(),
        })
    }
}

impl Local {
    fn path(&self, id: EntryId) -> Result<BucketPath> {
        self.tree.path_of(id).map_err(fail)?.ok_or(Errno::ENOENT)
    }

    fn child(&self, parent: EntryId, name: &str) -> Result<BucketPath> {
        self.path(parent)?.child(name).map_err(fail)
    }
}

impl Backend for Local {
    fn read_only(&self) -> bool {
        self.read_only
    }

    fn entry(&self, id: EntryId) -> Result<Option<Entry>> {
        self.tree.entry(id).map_err(fail)
    }

    fn lookup(&self, parent: EntryId, name: &str) -> Result<Option<Entry>> {
        self.tree.lookup_in(parent, name).map_err(fail)
    }

    fn read_dir(&self, dir: EntryId, after: Option<&str>, limit: usize) -> Result<Vec<Entry>> {
        self.tree.read_dir_of(dir, after, limit).map_err(fail)
    }

    fn mkdir(&self, parent: EntryId, name: &str, mode: u32) -> Result<Entry> {
        self.writable()?;
        self.tree.mkdir(&self.child(parent, name)?, Some(mode)).map_err(fail)
    }

    fn mknod(&self, parent: EntryId, name: &str, mode: u32, rdev: u64) -> Result<Entry> {
        self.writable()?;
        self.tree.mknod(&self.child(parent, name)?, mode, rdev).map_err(fail)
    }

    fn symlink(&self, parent: EntryId, name: &str, target: &str) -> Result<Entry> {
        self.writable()?;
        self.tree.symlink(&self.child(parent, name)?, target).map_err(fail)
    }

    fn remove(&self, parent: EntryId, name: &str) -> Result<()> {
        self.writable()?;
        self.tree.remove(&self.child(parent, name)?).map_err(fail)
    }

    fn rmdir(&self, parent: EntryId, name: &str) -> Result<()> {
        self.writable()?;
        self.tree.rmdir(&self.child(parent, name)?).map_err(fail)
    }

    fn rename(&self, from: (EntryId, &str), to: (EntryId, &str), replace: bool) -> Result<()> {
        self.writable()?;
        let (from, to) = (self.child(from.0, from.1)?, self.child(to.0, to.1)?);
        self.tree.rename(&from, &to, replace).map(drop).map_err(fail)
    }

    fn set_attr(&self, id: EntryId, mode: Option<u32>, mtime_ns: Option<i64>) -> Result<Entry> {
        self.writable()?;
        self.tree
            .set_attr(&self.path(id)?, &SetAttr::new(mode, mtime_ns))
            .map_err(fail)
    }

    fn truncate(&self, id: EntryId, len: u64) -> Result<Entry> {
        self.writable()?;
        self.block_on(self.tree.truncate(&self.path(id)?, len)).map_err(fail)
    }

    fn create(&self, parent: EntryId, name: &str, mode: u32, exclusive: bool) -> Result<(Entry, Box<dyn Writer>)> {
        self.writable()?;
        let path = self.child(parent, name)?;
        let opts = OpenOptions::replace()
            .create(true)
            .exclusive(exclusive)
            .mode(mode)
            .create_visible(true);
        let session = self.block_on(self.tree.open_write(&path, opts)).map_err(fail)?;
        let e = self.tree.stat(&path).map_err(fail)?;
        Ok((e, self.writer(session)))
    }

    fn open_write(&self, id: EntryId, truncate: bool) -> Result<Box<dyn Writer>> {
        self.writable()?;
        let opts = OpenOptions::modify().truncate(truncate);
        let session = self
            .block_on(self.tree.open_write(&self.path(id)?, opts))
            .map_err(fail)?;
        Ok(self.writer(session))
    }

    fn open_read(&self, e: &Entry) -> Result<Box<dyn Reader>> {
        let reader = self.block_on(self.tree.open_read(e)).map_err(fail)?;
        Ok(Box::new(LocalReader {
            reader,
            runtime: self.runtime.clone(),
        }))
    }

    fn space(&self) -> Result<Space> {
        self.store.space().map_err(fail)
    }

    fn changes(&self, wait: Duration) -> Result<Vec<(EntryId, String)>> {
        if self.tree.at().is_some() {
            // A past version never changes.
            std::thread::sleep(wait);
            return Ok(Vec::new());
        }
        let mut watch = self.watch.lock().unwrap_or_else(|e| e.into_inner());
        if watch.is_none() {
            let head = self
                .store
                .list_branches(self.tree.bucket())
                .map_err(fail)?
                .into_iter()
                .find(|b| b.name == self.tree.branch())
                .and_then(|b| b.head)
                .unwrap_or(alknet_fs::Version(0));
            *watch = Some(
                self.store
                    .watch(self.tree.bucket(), self.tree.branch(), head)
                    .map_err(fail)?,
            );
        }
        let commits = watch.as_mut().ok_or(Errno::EIO)?.next(wait).map_err(fail)?;
        drop(watch);
        let mut names = Vec::new();
        // Content and attribute changes are left to the attribute TTL.
        for c in commits
            .iter()
            .filter(|c| !matches!(c.op.as_str(), "write" | "setattr" | "snapshot"))
        {
            for p in &c.paths {
                // A directory gone since has nothing cached to forget.
                if let Ok(path) = BucketPath::parse(p)
                    && let Some((parent, name)) = path.split_last()
                    && let Ok(dir) = self.tree.stat(&parent)
                {
                    names.push((dir.id, name.to_owned()));
                }
            }
        }
        Ok(names)
    }
}

struct LocalWriter {
    session: WriteSession,
    runtime: tokio::runtime::Handle,
}

impl Writer for LocalWriter {
    fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        self.runtime.block_on(self.session.write_at(offset, data)).map_err(fail)
    }

    fn read_at(&mut self, offset: u64, len: u32) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; len as usize];
        let n = self
            .runtime
            .block_on(self.session.read_at(offset, &mut buf))
            .map_err(fail)?;
        buf.truncate(n);
        Ok(buf)
    }

    fn set_len(&mut self, len: u64) -> Result<()> {
        self.runtime.block_on(self.session.set_len(len)).map_err(fail)
    }

    fn size(&self) -> u64 {
        self.session.len().unwrap_or(0)
    }

    fn set_attr(&mut self, mode: Option<u32>, mtime_ns: Option<i64>) -> Result<()> {
        self.session.set_attr(mode, mtime_ns);
        Ok(())
    }

    fn close(self: Box<Self>) -> Result<()> {
        match self.runtime.block_on(self.session.close()) {
            Ok(_) | Err(Error::NotFound(_)) => Ok(()),
            Err(e) => Err(errno(&e)),
        }
    }
}

struct LocalReader {
    reader: FileReader,
    runtime: tokio::runtime::Handle,
}

impl Reader for LocalReader {
    fn read_at(&mut self, offset: u64, len: u32) -> Result<Vec<u8>> {
        self.runtime
            .block_on(self.reader.read_at(offset, len.into()))
            .map_err(fail)
    }
}
