//! alknet-mount: a FUSE filesystem of one `bucket@branch` (fuser 0.18).
//!
//! An adapter from FUSE requests to a [`Backend`] (`alknet-mount-protocol`)
//! — a tree of a data directory this process holds (`Local`), or a tree on
//! a node reached through its endpoint (`Remote`, whose node answers with a
//! `Local`): one code path for both. Inode numbers are entry ids plus one (entry ids
//! survive renames, so the kernel's inodes do too); an open-for-write file
//! is a [`Writer`] session (readers see the old content until the writer's
//! `close` — FUSE `flush` — publishes the new one; a crash leaves the old
//! file); an open-for-read file is a [`Reader`] of one content, so a reader
//! keeps the version it opened.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use alknet_fs::{Entry, EntryId, Kind};

use alknet_mount_protocol::{Backend, Errno, Reader, Writer};
use fuser::{
    FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner, OpenFlags, RenameFlags,
    ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite,
    Request, TimeOrNow, WriteFlags,
};

/// How long the kernel may cache names and attributes. Short: other clients
/// (SFTP, git, another mount) change the tree behind the kernel's back.
const TTL: Duration = Duration::from_secs(1);
/// The largest write (and readahead) the kernel is asked to send at once.
const MAX_IO: u32 = 1 << 20;
/// Directory entries read from the store per page.
const PAGE: usize = 1024;
/// The block size reported to `stat` (and so the size `cp` and friends
/// write in).
const BLOCK: u32 = 128 * 1024;

/// The filesystem of one tree.
pub struct Mount {
    backend: Arc<dyn Backend>,
    /// Owner shown on every entry (ownership is not stored).
    owner: (u32, u32),
    handles: Mutex<HashMap<u64, Arc<Mutex<Handle>>>>,
    /// The write handles open on each file, for sizes before close.
    writers: Mutex<HashMap<EntryId, Vec<Arc<Mutex<Handle>>>>>,
    next_handle: AtomicU64,
    /// The root has no stored mtime: it shows the time of mounting.
    mounted_ns: i64,
    /// Where the tree is mounted (set by [`mount`]): an absolute symlink
    /// target is a path from the tree's root, so the mount shows it below
    /// this and takes one below this back as a tree path.
    root: Option<String>,
}

enum Handle {
    Read(Box<dyn Reader>),
    /// A writer. Its session opens at the first change and closes when
    /// published.
    Write {
        id: EntryId,
        session: Option<Box<dyn Writer>>,
        /// The session holds a change (a write, a truncation) not published.
        changed: bool,
        /// When it last changed: the file's mtime and ctime until published.
        changed_ns: i64,
        /// Bytes were written since the last publish.
        written: bool,
    },
    /// A snapshot of a directory's entries for readdir: name and attributes.
    Dir(Box<Listing>),
}

/// An open directory, listed a page at a time (a directory of a million
/// entries holds one page in memory, not the million). Offsets are 1-based
/// positions: `.` and `..` first, then entries in name order.
struct Listing {
    dir: EntryId,
    dots: [(String, FileAttr); 2],
    /// Index (among the entries, after the dots) of `page[0]`.
    base: u64,
    page: Vec<(String, FileAttr)>,
    /// The name the next page starts after.
    after: Option<String>,
    done: bool,
}

fn ino_of(id: EntryId) -> INodeNo {
    INodeNo(id.0 as u64 + 1)
}

fn id_of(ino: INodeNo) -> EntryId {
    EntryId(ino.0 as i64 - 1)
}

/// Answers a request that returns nothing but success or an errno.
/// The kernel's form of an errno.
fn fuse(e: Errno) -> fuser::Errno {
    fuser::Errno::from_i32(e.code())
}

fn done(reply: ReplyEmpty, result: Result<(), Errno>) {
    match result {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(fuse(e)),
    }
}

fn kind(e: &Entry) -> FileType {
    match e.kind {
        Kind::Dir => FileType::Directory,
        Kind::Symlink => FileType::Symlink,
        Kind::Special => match e.mode & libc::S_IFMT {
            libc::S_IFIFO => FileType::NamedPipe,
            libc::S_IFSOCK => FileType::Socket,
            libc::S_IFCHR => FileType::CharDevice,
            _ => FileType::BlockDevice,
        },
        _ => FileType::RegularFile,
    }
}

fn time(ns: i64) -> SystemTime {
    if ns >= 0 {
        UNIX_EPOCH + Duration::from_nanos(ns as u64)
    } else {
        UNIX_EPOCH - Duration::from_nanos(ns.unsigned_abs())
    }
}

fn nanos(t: TimeOrNow) -> i64 {
    let t = match t {
        TimeOrNow::SpecificTime(t) => t,
        TimeOrNow::Now => SystemTime::now(),
    };
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_nanos() as i64,
        Err(e) => -(e.duration().as_nanos() as i64),
    }
}

/// A name to make or find in a directory.
fn child_name(name: &OsStr) -> Result<&str, Errno> {
    let name = name_of(name)?;
    if name.is_empty() || name == "." || name == ".." || name.contains('/') {
        return Err(Errno::EINVAL);
    }
    Ok(name)
}

fn name_of(name: &OsStr) -> Result<&str, Errno> {
    let name = name.to_str().ok_or(Errno::EINVAL)?;
    if name.len() > alknet_fs::MAX_COMPONENT {
        return Err(Errno::ENAMETOOLONG);
    }
    Ok(name)
}

impl Mount {
    /// The filesystem of `backend`'s tree, every entry shown as `owner`'s.
    pub fn new(backend: Arc<dyn Backend>, owner: (u32, u32)) -> Mount {
        Mount {
            backend,
            owner,
            handles: Mutex::new(HashMap::new()),
            writers: Mutex::new(HashMap::new()),
            next_handle: AtomicU64::new(1),
            mounted_ns: nanos(TimeOrNow::Now),
            root: None,
        }
    }

    /// A stored symlink target as the host sees it: an absolute one is a
    /// path from the tree's root, which is the mountpoint here.
    fn shown_target(&self, target: &str) -> String {
        match &self.root {
            Some(root) if target.starts_with('/') => format!("{root}{target}"),
            _ => target.to_owned(),
        }
    }

    /// A target given on the host, as stored: an absolute one must lie in
    /// this mount (the store has no paths outside its tree).
    fn stored_target(&self, target: &str) -> Result<String, Errno> {
        if !target.starts_with('/') {
            return Ok(target.to_owned());
        }
        let Some(root) = &self.root else {
            return Ok(target.to_owned());
        };
        match target.strip_prefix(root.as_str()) {
            Some("") => Ok("/".to_owned()),
            Some(rest) if rest.starts_with('/') => Ok(rest.to_owned()),
            _ => Err(Errno::EXDEV),
        }
    }

    pub fn is_read_only(&self) -> bool {
        self.backend.read_only()
    }

    fn attr(&self, e: &Entry) -> FileAttr {
        let open = if e.kind == Kind::File {
            self.open_state(e.id)
        } else {
            None
        };
        self.attr_as(e, open)
    }

    /// Attributes of `e` with `open`, the state of its open writers.
    fn attr_as(&self, e: &Entry, open: Option<(u64, i64)>) -> FileAttr {
        let mtime_ns = match open {
            _ if e.id == EntryId::ROOT => self.mounted_ns,
            Some((_, changed)) => changed,
            None => e.mtime_ns,
        };
        let size = match e.kind {
            Kind::File => open.map(|(len, _)| len).unwrap_or(e.size),
            Kind::Symlink => e
                .target
                .as_ref()
                .map(|t| self.shown_target(t).len() as u64)
                .unwrap_or(e.size),
            Kind::Dir | Kind::Special => 0,
        };
        let t = time(mtime_ns);
        let ctime = if e.id == EntryId::ROOT || open.is_some() {
            t
        } else {
            time(e.ctime_ns)
        };
        FileAttr {
            ino: ino_of(e.id),
            size,
            blocks: size.div_ceil(512),
            atime: t,
            mtime: t,
            ctime,
            crtime: t,
            kind: kind(e),
            perm: (e.mode & 0o7777) as u16,
            nlink: if e.kind == Kind::Dir { 2 } else { 1 },
            uid: self.owner.0,
            gid: self.owner.1,
            rdev: if e.kind == Kind::Special { e.size as u32 } else { 0 },
            blksize: BLOCK,
            flags: 0,
        }
    }

    /// Size and change time of a file as its open writers see it
    /// (unpublished writes).
    fn open_state(&self, id: EntryId) -> Option<(u64, i64)> {
        let writers = self.writers.lock().unwrap_or_else(|e| e.into_inner());
        writers
            .get(&id)?
            .iter()
            .find_map(|h| match &*h.lock().unwrap_or_else(|e| e.into_inner()) {
                Handle::Write {
                    session: Some(s),
                    changed: true,
                    changed_ns,
                    ..
                } => Some((s.size(), *changed_ns)),
                _ => None,
            })
    }

    fn entry(&self, ino: INodeNo) -> Result<Entry, Errno> {
        match self.backend.entry(id_of(ino)) {
            Ok(Some(e)) => Ok(e),
            Ok(None) => Err(Errno::ENOENT),
            Err(e) => Err(e),
        }
    }

    fn add_handle(&self, h: Handle) -> (FileHandle, Arc<Mutex<Handle>>) {
        let n = self.next_handle.fetch_add(1, Ordering::Relaxed);
        let h = Arc::new(Mutex::new(h));
        self.handles
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(n, h.clone());
        (FileHandle(n), h)
    }

    fn handle(&self, fh: FileHandle) -> Result<Arc<Mutex<Handle>>, Errno> {
        self.handles
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&fh.0)
            .cloned()
            .ok_or(Errno::EBADF)
    }

    /// A write handle. `session`, if given, is already open: `changed` says
    /// whether it holds a change to publish (a truncation) or not (a file
    /// just created, already committed empty). Without one, a session opens
    /// at the first change.
    fn open_writer(&self, id: EntryId, session: Option<Box<dyn Writer>>, changed: bool) -> FileHandle {
        let (fh, h) = self.add_handle(Handle::Write {
            id,
            session,
            changed,
            changed_ns: nanos(TimeOrNow::Now),
            written: false,
        });
        self.writers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(id)
            .or_default()
            .push(h);
        fh
    }

    /// Publishes a writer's content. `flush` (every `close`, also of a
    /// duplicated descriptor) publishes written bytes, so what a process
    /// wrote is visible once it closes; `release` (the last close) and
    /// `fsync` publish any change, a bare truncation included. The handle
    /// stays usable: a later change opens a new session.
    fn publish(&self, h: &mut Handle, only_written: bool) -> Result<(), Errno> {
        let Handle::Write {
            session,
            changed,
            written,
            ..
        } = h
        else {
            return Ok(());
        };
        if !*changed || (only_written && !*written) {
            return Ok(());
        }
        if let Some(s) = session.take() {
            s.close()?;
        }
        *changed = false;
        *written = false;
        Ok(())
    }

    /// The session of a write handle, to change the file through it.
    fn session<'h>(&self, h: &'h mut Handle) -> Result<&'h mut Box<dyn Writer>, Errno> {
        let Handle::Write {
            id,
            session,
            changed,
            changed_ns,
            ..
        } = h
        else {
            return Err(Errno::EBADF);
        };
        *changed_ns = nanos(TimeOrNow::Now);
        if session.is_none() {
            *session = Some(self.backend.open_write(*id, false)?);
        }
        *changed = true;
        session.as_mut().ok_or(Errno::EIO)
    }

    /// Hands the entries of directory handle `fh` from `offset` on to `add`
    /// (with the offset of the entry after each) until it says it is full.
    /// Hands `add` the entries of directory handle `fh` from `offset` on,
    /// until it says the reply is full; pages are fetched as needed, and a
    /// rewind (`rewinddir`, `seekdir` back) lists from the start again.
    fn list_from(
        &self,
        fh: FileHandle,
        offset: u64,
        mut add: impl FnMut(u64, &str, &FileAttr) -> bool,
    ) -> Result<(), Errno> {
        let h = self.handle(fh)?;
        let mut h = h.lock().unwrap_or_else(|e| e.into_inner());
        let Handle::Dir(l) = &mut *h else {
            return Err(Errno::EBADF);
        };
        let mut at = offset;
        loop {
            if at < 2 {
                let (name, attr) = &l.dots[at as usize];
                if add(at + 1, name, attr) {
                    return Ok(());
                }
                at += 1;
                continue;
            }
            let k = at - 2;
            if k < l.base {
                (l.base, l.page, l.after, l.done) = (0, Vec::new(), None, false);
            }
            if k >= l.base + l.page.len() as u64 {
                if l.done {
                    return Ok(());
                }
                let page = self.backend.read_dir(l.dir, l.after.as_deref(), PAGE)?;
                l.base += l.page.len() as u64;
                // A page may come back shorter than asked (a node pages by
                // bytes too): only an empty one ends the listing.
                l.done = page.is_empty();
                l.after = page.last().map(|e| e.name.clone()).or(l.after.take());
                l.page = page
                    .into_iter()
                    .map(|e| {
                        let attr = self.attr(&e);
                        (e.name, attr)
                    })
                    .collect();
                continue;
            }
            let (name, attr) = &l.page[(k - l.base) as usize];
            if add(at + 1, name, attr) {
                return Ok(());
            }
            at += 1;
        }
    }

    fn reply_entry(&self, made: Result<Entry, Errno>, reply: ReplyEntry) {
        match made {
            Ok(e) => reply.entry(&TTL, &self.attr(&e), Generation(0)),
            Err(e) => reply.error(fuse(e)),
        }
    }
}

impl Filesystem for Mount {
    fn init(&mut self, _req: &Request, config: &mut fuser::KernelConfig) -> std::io::Result<()> {
        // O_TRUNC arrives with open, so a truncation goes into the write
        // session (published at close) instead of a separate, immediate
        // setattr: a writer that dies leaves the old content.
        if let Err(missing) = config.add_capabilities(fuser::InitFlags::FUSE_ATOMIC_O_TRUNC) {
            tracing::warn!("the kernel lacks {missing:?}: O_TRUNC commits at open");
        }
        // Listings carry attributes (no lookup per entry afterwards).
        config.add_capabilities(fuser::InitFlags::FUSE_DO_READDIRPLUS).ok();
        // Fewer, larger requests for sequential I/O.
        config.set_max_write(MAX_IO).ok();
        config.set_max_readahead(MAX_IO).ok();
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let name = match name_of(name) {
            Ok(n) => n,
            Err(e) => return reply.error(fuse(e)),
        };
        match self.backend.lookup(id_of(parent), name) {
            Ok(Some(e)) => reply.entry(&TTL, &self.attr(&e), Generation(0)),
            Ok(None) => reply.error(fuse(Errno::ENOENT)),
            Err(e) => reply.error(fuse(e)),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        // Writers first: a release publishing now has either not finished
        // (its state shows) or finished (the entry read next shows it).
        let open = self.open_state(id_of(ino));
        match self.entry(ino) {
            Ok(e) if e.kind == Kind::File => reply.attr(&TTL, &self.attr_as(&e, open)),
            Ok(e) => reply.attr(&TTL, &self.attr(&e)),
            Err(e) => reply.error(fuse(e)),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let run = || -> Result<Entry, Errno> {
            // Ownership is not stored: only a no-op chown succeeds.
            if uid.is_some_and(|u| u != self.owner.0) || gid.is_some_and(|g| g != self.owner.1) {
                return Err(Errno::EPERM);
            }
            let mode = mode.map(|m| m & 0o7777);
            let mtime = mtime.map(nanos);
            // The entry as the last commit left it, if one was made.
            let mut committed = None;
            if let Some(len) = size {
                // On an open writer (ftruncate), or as its own commit.
                let writer = match fh {
                    Some(fh) => Some(self.handle(fh)?),
                    None => self
                        .writers
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .get(&id_of(ino))
                        .and_then(|v| v.first().cloned()),
                };
                match writer {
                    Some(h) if matches!(&*h.lock().unwrap_or_else(|e| e.into_inner()), Handle::Write { .. }) => {
                        let mut h = h.lock().unwrap_or_else(|e| e.into_inner());
                        let s = self.session(&mut h)?;
                        s.set_len(len)?;
                        s.set_attr(mode, mtime)?;
                    }
                    _ => committed = Some(self.backend.truncate(id_of(ino), len)?),
                }
            }
            if mode.is_some() || mtime.is_some() {
                committed = Some(self.backend.set_attr(id_of(ino), mode, mtime)?);
                // An open writer publishes these too, or its close would undo them.
                if let Some(v) = self.writers.lock().unwrap_or_else(|e| e.into_inner()).get(&id_of(ino)) {
                    for h in v {
                        if let Handle::Write { session: Some(s), .. } =
                            &mut *h.lock().unwrap_or_else(|e| e.into_inner())
                        {
                            s.set_attr(mode, mtime)?;
                        }
                    }
                }
            }
            committed.map_or_else(|| self.entry(ino), Ok)
        };
        match run() {
            Ok(e) => reply.attr(&TTL, &self.attr(&e)),
            Err(e) => reply.error(fuse(e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.entry(ino) {
            Ok(e) if e.kind == Kind::Symlink => {
                reply.data(self.shown_target(e.target.as_deref().unwrap_or_default()).as_bytes())
            }
            Ok(_) => reply.error(fuse(Errno::EINVAL)),
            Err(e) => reply.error(fuse(e)),
        }
    }

    fn mkdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, reply: ReplyEntry) {
        let run = || -> Result<Entry, Errno> {
            let name = child_name(name)?;
            self.backend.mkdir(id_of(parent), name, mode & !umask & 0o7777)
        };
        self.reply_entry(run(), reply);
    }

    fn mknod(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let run = || -> Result<Entry, Errno> {
            let name = child_name(name)?;
            let perm = mode & !umask & 0o7777;
            if mode & libc::S_IFMT == libc::S_IFREG {
                // The empty file is committed at create; nothing more to write.
                Ok(self.backend.create(id_of(parent), name, perm, true)?.0)
            } else {
                self.backend
                    .mknod(id_of(parent), name, (mode & libc::S_IFMT) | perm, rdev.into())
            }
        };
        self.reply_entry(run(), reply);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let run = || -> Result<(), Errno> { self.backend.remove(id_of(parent), child_name(name)?) };
        done(reply, run());
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let run = || -> Result<(), Errno> { self.backend.rmdir(id_of(parent), child_name(name)?) };
        done(reply, run());
    }

    fn symlink(&self, _req: &Request, parent: INodeNo, link_name: &OsStr, target: &std::path::Path, reply: ReplyEntry) {
        let run = || -> Result<Entry, Errno> {
            let name = child_name(link_name)?;
            let target = self.stored_target(target.to_str().ok_or(Errno::EINVAL)?)?;
            self.backend.symlink(id_of(parent), name, &target)
        };
        self.reply_entry(run(), reply);
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let run = || -> Result<(), Errno> {
            if flags.contains(RenameFlags::RENAME_EXCHANGE) {
                return Err(Errno::EINVAL);
            }
            let from = (id_of(parent), child_name(name)?);
            let to = (id_of(newparent), child_name(newname)?);
            let replace = !flags.contains(RenameFlags::RENAME_NOREPLACE);
            self.backend.rename(from, to, replace)
        };
        done(reply, run());
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let run = || -> Result<FileHandle, Errno> {
            let e = self.entry(ino)?;
            if e.kind == Kind::Dir {
                return Err(Errno::EISDIR);
            }
            if flags.0 & libc::O_ACCMODE == libc::O_RDONLY {
                let reader = self.backend.open_read(&e)?;
                return Ok(self.add_handle(Handle::Read(reader)).0);
            }
            let session = if flags.0 & libc::O_TRUNC != 0 {
                Some(self.backend.open_write(e.id, true)?)
            } else {
                None
            };
            let truncated = session.is_some();
            Ok(self.open_writer(e.id, session, truncated))
        };
        match run() {
            Ok(fh) => reply.opened(fh, FopenFlags::empty()),
            Err(e) => reply.error(fuse(e)),
        }
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let run = || -> Result<(Entry, FileHandle), Errno> {
            let name = child_name(name)?;
            let (e, session) =
                self.backend
                    .create(id_of(parent), name, mode & !umask & 0o7777, flags & libc::O_EXCL != 0)?;
            let fh = self.open_writer(e.id, Some(session), false);
            Ok((e, fh))
        };
        match run() {
            Ok((e, fh)) => reply.created(&TTL, &self.attr(&e), Generation(0), fh, FopenFlags::empty()),
            Err(e) => reply.error(fuse(e)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let run = || -> Result<Vec<u8>, Errno> {
            let h = self.handle(fh)?;
            let mut h = h.lock().unwrap_or_else(|e| e.into_inner());
            match &mut *h {
                Handle::Read(r) => r.read_at(offset, size),
                Handle::Write { session: Some(s), .. } => s.read_at(offset, size),
                Handle::Write { id, .. } => {
                    let e = self.entry(ino_of(*id))?;
                    self.backend.open_read(&e)?.read_at(offset, size)
                }
                Handle::Dir(_) => Err(Errno::EISDIR),
            }
        };
        match run() {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(fuse(e)),
        }
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let run = || -> Result<u32, Errno> {
            let h = self.handle(fh)?;
            let mut h = h.lock().unwrap_or_else(|e| e.into_inner());
            let s = self.session(&mut h)?;
            let offset = if flags.0 & libc::O_APPEND != 0 {
                s.size()
            } else {
                offset
            };
            s.write_at(offset, data)?;
            if let Handle::Write { written, .. } = &mut *h {
                *written = true;
            }
            Ok(data.len() as u32)
        };
        match run() {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(fuse(e)),
        }
    }

    fn flush(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, _lock_owner: LockOwner, reply: ReplyEmpty) {
        let run = || -> Result<(), Errno> {
            let h = self.handle(fh)?;
            let mut h = h.lock().unwrap_or_else(|e| e.into_inner());
            self.publish(&mut h, true)
        };
        done(reply, run());
    }

    fn fsync(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        let run = || -> Result<(), Errno> {
            let h = self.handle(fh)?;
            let mut h = h.lock().unwrap_or_else(|e| e.into_inner());
            self.publish(&mut h, false)
        };
        done(reply, run());
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let removed = self.handles.lock().unwrap_or_else(|e| e.into_inner()).remove(&fh.0);
        let Some(h) = removed else {
            return reply.error(fuse(Errno::EBADF));
        };
        // Publish before leaving the writers, so a stat between close(2)
        // and the end of this release sees the new state, never the old.
        let published = self.publish(&mut h.lock().unwrap_or_else(|e| e.into_inner()), false);
        let mut writers = self.writers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(v) = writers.get_mut(&id_of(ino)) {
            v.retain(|w| !Arc::ptr_eq(w, &h));
            if v.is_empty() {
                writers.remove(&id_of(ino));
            }
        }
        drop(writers);
        done(reply, published);
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let run = || -> Result<FileHandle, Errno> {
            let dir = self.entry(ino)?;
            if dir.kind != Kind::Dir {
                return Err(Errno::ENOTDIR);
            }
            let parent = if dir.id == EntryId::ROOT {
                dir.clone()
            } else {
                self.entry(ino_of(dir.parent))?
            };
            let listing = Listing {
                dir: dir.id,
                dots: [(".".to_owned(), self.attr(&dir)), ("..".to_owned(), self.attr(&parent))],
                base: 0,
                page: Vec::new(),
                after: None,
                done: false,
            };
            Ok(self.add_handle(Handle::Dir(Box::new(listing))).0)
        };
        match run() {
            Ok(fh) => reply.opened(fh, FopenFlags::empty()),
            Err(e) => reply.error(fuse(e)),
        }
    }

    fn readdir(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let listed = self.list_from(fh, offset, |next, name, attr| {
            reply.add(attr.ino, next, attr.kind, name)
        });
        match listed {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(fuse(e)),
        }
    }

    /// readdir with each entry's attributes: `ls -l` of a large directory
    /// needs no lookup per entry.
    fn readdirplus(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: fuser::ReplyDirectoryPlus,
    ) {
        let listed = self.list_from(fh, offset, |next, name, attr| {
            reply.add(attr.ino, next, name, &TTL, attr, Generation(0))
        });
        match listed {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(fuse(e)),
        }
    }

    fn releasedir(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, _flags: OpenFlags, reply: ReplyEmpty) {
        self.handles.lock().unwrap_or_else(|e| e.into_inner()).remove(&fh.0);
        reply.ok();
    }

    fn fsyncdir(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        // Every directory change is already a commit.
        reply.ok();
    }

    fn getxattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, _size: u32, reply: fuser::ReplyXattr) {
        // Extended attributes are not stored; ENOTSUP makes the kernel stop asking.
        reply.error(fuse(Errno::ENOTSUP));
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, _size: u32, reply: fuser::ReplyXattr) {
        reply.error(fuse(Errno::ENOTSUP));
    }

    fn setxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _value: &[u8],
        _flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        reply.error(fuse(Errno::ENOTSUP));
    }

    fn removexattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(fuse(Errno::ENOTSUP));
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match self.backend.space() {
            Ok(s) => reply.statfs(
                s.blocks,
                s.blocks_free,
                s.blocks_available,
                s.files,
                s.files_free,
                s.block_size as u32,
                alknet_fs::MAX_COMPONENT as u32,
                s.block_size as u32,
            ),
            Err(e) => reply.error(fuse(e)),
        }
    }
}

/// A mounted filesystem; unmounted by [`Mounted::unmount`] or when dropped.
pub struct Mounted {
    session: Option<fuser::BackgroundSession>,
    /// Tells the invalidation thread to end.
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl Mounted {
    /// Whether the kernel side went away (an external `umount`).
    pub fn is_finished(&self) -> bool {
        self.session.as_ref().is_none_or(|s| s.guard.is_finished())
    }

    /// Unmounts and waits for the request threads to end.
    pub fn unmount(mut self) -> std::io::Result<()> {
        self.stop.store(true, Ordering::Relaxed);
        match self.session.take().map(|s| s.umount_and_join()) {
            // Unmounted from outside (`alknet umount`) a moment before.
            Some(Err(e)) if e.raw_os_error() == Some(libc::EINVAL) => Ok(()),
            Some(r) => r,
            None => Ok(()),
        }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(s) = self.session.take() {
            s.umount_and_join().ok();
        }
    }
}

/// Mounts `fs` at `mountpoint`; `name` shows as the source in `/proc/mounts`.
pub fn mount(mut fs: Mount, mountpoint: &std::path::Path, name: &str) -> std::io::Result<Mounted> {
    use fuser::MountOption;
    let root = std::fs::canonicalize(mountpoint)?;
    fs.root = Some(
        root.to_str()
            .ok_or_else(|| std::io::Error::other("the mountpoint's path is not UTF-8"))?
            .trim_end_matches('/')
            .to_owned(),
    );
    let mut options = vec![
        MountOption::FSName(name.to_owned()),
        MountOption::Subtype("alknet".into()),
        // The kernel checks permissions against mode, owner and group.
        MountOption::DefaultPermissions,
        // Modes come from the network (SFTP, git, other mounts): a setuid
        // bit or a device node a remote user wrote never takes effect here.
        MountOption::NoSuid,
        MountOption::NoDev,
    ];
    if fs.is_read_only() {
        options.push(MountOption::RO);
    }
    let mut config = fuser::Config::default();
    config.mount_options = options;
    config.n_threads = Some(4);
    let backend = fs.backend.clone();
    let session = fuser::spawn_mount(fs, mountpoint, &config)?;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let notifier = session.notifier();
    let stopped = stop.clone();
    std::thread::Builder::new()
        .name("alknet-invalidate".into())
        .spawn(move || invalidate(&*backend, &notifier, &stopped))?;
    Ok(Mounted {
        session: Some(session),
        stop,
    })
}

/// Follows the branch's commits — by this mount, the CLI, SFTP, a push,
/// another mount — and tells the kernel to forget the names they added,
/// removed or moved, so such changes by other writers show at once rather
/// than after [`TTL`]. Attributes are left to the TTL: dropping them for
/// this mount's own writes would show a published file's times change
/// under a reader.
fn invalidate(backend: &dyn Backend, notifier: &fuser::Notifier, stop: &std::sync::atomic::AtomicBool) {
    let mut failing = false;
    while !stop.load(Ordering::Relaxed) {
        let names = match backend.changes(Duration::from_millis(500)) {
            Ok(names) => {
                if std::mem::take(&mut failing) {
                    tracing::info!("mount: following changes again");
                }
                names
            }
            Err(e) => {
                // A remote node may come back: keep asking, once a second.
                if !std::mem::replace(&mut failing, true) {
                    tracing::warn!("mount: following changes failed ({e:?}); retrying");
                }
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
        };
        for (dir, name) in names {
            // An error means the kernel holds nothing for it: fine.
            notifier.inval_entry(ino_of(dir), OsStr::new(&name)).ok();
        }
    }
}

/// Unmounts whatever is mounted at `mountpoint`, also a mount whose process
/// died (lazily, so a busy mountpoint is detached rather than refused).
pub fn unmount(mountpoint: &std::path::Path) -> std::io::Result<()> {
    let run = |program: &str, args: &[&str]| {
        std::process::Command::new(program)
            .args(args)
            .arg(mountpoint)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if run("fusermount3", &["-u", "-z"]) || run("umount", &["-l"]) {
        Ok(())
    } else {
        Err(std::io::Error::other(format!(
            "{} is not mounted",
            mountpoint.display()
        )))
    }
}
