//! SFTP (version 3, with OpenSSH's extensions) over the storage core.
//!
//! The namespace: `/` lists the buckets the user may read; `/NAME/…` is branch
//! `main` of bucket NAME, `/NAME@BRANCH/…` another branch, and
//! `/NAME@BRANCH@VERSION/…` a past version or named snapshot (read-only).
//! A branch name may contain `/` (git's `feature/x`): the longest existing
//! branch the path spells wins (`Store::locate`, the namespace's one rule).
//!
//! Requests are answered in order, one connection at a time, like OpenSSH's
//! sftp-server; responses are flushed when no further request is waiting, so
//! a client's pipelined reads and writes cost one flush per burst. Files open
//! for writing are `alknet_fs::WriteSession`s: the new content appears
//! atomically at close, and a dropped connection leaves the old file.
//!
//! Packets are parsed with russh-sftp's protocol types, but the loop is ours:
//! a packet longer than [`MAX_PACKET`] or one that does not parse ends the
//! session (russh-sftp's own loop would carry on reading mid-packet).

use std::collections::HashMap;

use alknet_fs::{BucketPath, Entry, Error as FsError, Kind, OpenOptions, SetAttr, Store, Tree};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use russh_sftp::protocol::{
    Attrs, Data, ExtendedReply, File, FileAttributes, Handle, Name, OpenFlags, Packet, Status, StatusCode, Version,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use alknet_fs::Level;

/// The largest request accepted: a 256 KiB write plus its header. Larger
/// packets end the session.
pub(crate) const MAX_PACKET: u32 = 256 * 1024 + 1024;
/// The largest read answered (clients ask for 32–256 KiB).
const MAX_READ: u32 = 256 * 1024;
/// Directory entries per READDIR reply.
const DIR_PAGE: usize = 128;
/// Open handles per session.
const MAX_HANDLES: usize = 1024;
/// Cleared from the mode of files and directories created over SFTP, as the
/// umask of OpenSSH's sftp-server would (clients send 0777 for `mkdir`).
const UMASK: u32 = 0o022;

/// Who is on the other end, and what they may touch.
#[derive(Clone)]
pub(crate) struct Context {
    pub(crate) store: Store,
    pub(crate) user: String,
    /// uid/gid reported for every file: the owner of the data directory.
    pub(crate) owner: (u32, u32),
}

/// Serves one SFTP session on `stream` until the client leaves or misbehaves.
/// Returns the buckets it touched, for the session log line.
pub(crate) async fn serve<S>(stream: S, ctx: Context) -> Result<Vec<String>, String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut rx, tx) = tokio::io::split(stream);
    let (queue_tx, mut queue) = tokio::sync::mpsc::channel::<Result<Bytes, String>>(64);
    let reader = tokio::spawn(async move {
        loop {
            let packet = read_packet(&mut rx).await;
            let stop = packet.is_err();
            if queue_tx.send(packet).await.is_err() || stop {
                break;
            }
        }
    });
    let mut out = tokio::io::BufWriter::with_capacity(512 * 1024, tx);
    let mut session = Session {
        ctx,
        handles: HashMap::new(),
        next_handle: 0,
        touched: Vec::new(),
    };
    let result = loop {
        let Some(packet) = queue.recv().await else { break Ok(()) };
        let mut bytes = match packet {
            Ok(b) => b,
            Err(e) if e.is_empty() => break Ok(()),
            Err(e) => break Err(e),
        };
        let kind = bytes.first().copied();
        let id = bytes.get(1..5).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
        let reply = match (Packet::try_from(&mut bytes), kind, id) {
            (Ok(request), ..) => session.handle(request).await,
            // A request of a type SFTP v3 does not define: say so, as
            // OpenSSH does, and go on with the session.
            (Err(_), Some(kind), Some(id)) if !is_v3_type(kind) => Packet::Status(Status {
                id,
                status_code: StatusCode::OpUnsupported,
                error_message: format!("unknown SFTP request type {kind}"),
                language_tag: "en-US".into(),
            }),
            (Err(e), ..) => break Err(format!("malformed packet: {e}")),
        };
        let encoded = match Bytes::try_from(reply) {
            Ok(b) => b,
            Err(e) => break Err(format!("cannot encode a reply: {e}")),
        };
        if let Err(e) = out.write_all(&encoded).await {
            break Err(format!("write: {e}"));
        }
        if queue.is_empty()
            && let Err(e) = out.flush().await
        {
            break Err(format!("write: {e}"));
        }
    };
    reader.abort();
    out.flush().await.ok();
    out.shutdown().await.ok();
    // Open write sessions are dropped here: their staging files go, nothing is published.
    drop(session.handles);
    result.map(|()| session.touched)
}

/// Whether `kind` is a packet type of SFTP v3 (draft 02): INIT to
/// SYMLINK, their replies, and the EXTENDED pair.
fn is_v3_type(kind: u8) -> bool {
    matches!(kind, 1..=20 | 101..=105 | 200 | 201)
}

/// One length-prefixed packet; `Err("")` at a clean end of stream.
async fn read_packet<R: AsyncRead + Unpin>(rx: &mut R) -> Result<Bytes, String> {
    let len = match rx.read_u32().await {
        Ok(n) => n,
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(String::new()),
        Err(e) => return Err(format!("read: {e}")),
    };
    if len == 0 || len > MAX_PACKET {
        return Err(format!("packet of {len} bytes (limit {MAX_PACKET})"));
    }
    let mut buf = vec![0u8; len as usize];
    rx.read_exact(&mut buf).await.map_err(|e| format!("read: {e}"))?;
    Ok(Bytes::from(buf))
}

enum OpenHandle {
    Read {
        tree: Tree,
        path: BucketPath,
        entry: Entry,
        reader: alknet_fs::FileReader,
    },
    Write {
        tree: Tree,
        session: alknet_fs::WriteSession,
        append: bool,
    },
    Dir(Listing),
}

enum Listing {
    /// The root: one page with every bucket the user may read.
    Buckets(Option<Vec<File>>),
    Tree {
        tree: Tree,
        path: BucketPath,
        after: Option<String>,
        done: bool,
    },
}

/// Where an SFTP path points.
enum Place {
    Root,
    /// `path` has the symlinks among its directories followed; `prefix` is
    /// the client's name for the tree (`/docs`, `/docs@edit`).
    Bucket {
        tree: Tree,
        path: BucketPath,
        prefix: String,
    },
}

/// An SFTP error status with its message.
struct Fail(StatusCode, String);

impl Fail {
    fn new(code: StatusCode, msg: impl Into<String>) -> Fail {
        Fail(code, msg.into())
    }
    fn denied(msg: impl Into<String>) -> Fail {
        Fail(StatusCode::PermissionDenied, msg.into())
    }
    fn unsupported(msg: impl Into<String>) -> Fail {
        Fail(StatusCode::OpUnsupported, msg.into())
    }
}

impl From<FsError> for Fail {
    fn from(e: FsError) -> Fail {
        let code = match &e {
            FsError::NotFound(_)
            | FsError::NoSuchBucket(_)
            | FsError::NoSuchBranch { .. }
            | FsError::NoSuchVersion { .. } => StatusCode::NoSuchFile,
            FsError::ReadOnly(_) | FsError::Denied { .. } => StatusCode::PermissionDenied,
            _ => StatusCode::Failure,
        };
        if e.is_user_error() {
            tracing::debug!("sftp: {e}");
            Fail(code, e.to_string())
        } else {
            tracing::error!("sftp: {e}");
            Fail(code, "internal error in the store".into())
        }
    }
}

struct Session {
    ctx: Context,
    handles: HashMap<String, OpenHandle>,
    next_handle: u64,
    touched: Vec<String>,
}

type Reply = Result<Packet, Fail>;

fn status_ok(id: u32) -> Packet {
    Packet::Status(Status {
        id,
        status_code: StatusCode::Ok,
        error_message: "Success".into(),
        language_tag: "en-US".into(),
    })
}

impl Session {
    async fn handle(&mut self, request: Packet) -> Packet {
        let id = request.get_request_id();
        let reply = match request {
            Packet::Init(_) => Ok(Packet::Version(version())),
            Packet::Open(r) => self.open(r.id, &r.filename, r.pflags, r.attrs).await,
            Packet::Close(r) => self.close(r.id, &r.handle).await,
            Packet::Read(r) => self.read(r.id, &r.handle, r.offset, r.len).await,
            Packet::Write(r) => self.write(r.id, &r.handle, r.offset, &r.data).await,
            Packet::Lstat(r) => self.stat(r.id, &r.path, false),
            Packet::Stat(r) => self.stat(r.id, &r.path, true),
            Packet::Fstat(r) => self.fstat(r.id, &r.handle),
            Packet::SetStat(r) => self.setstat(r.id, &r.path, &r.attrs).await,
            Packet::FSetStat(r) => self.fsetstat(r.id, &r.handle, &r.attrs).await,
            Packet::OpenDir(r) => self.opendir(r.id, &r.path),
            Packet::ReadDir(r) => self.readdir(r.id, &r.handle),
            Packet::Remove(r) => self.remove(r.id, &r.filename),
            Packet::MkDir(r) => self.mkdir(r.id, &r.path, &r.attrs),
            Packet::RmDir(r) => self.rmdir(r.id, &r.path),
            Packet::RealPath(r) => Ok(name_reply(r.id, &normalize(&r.path), None)),
            Packet::Rename(r) => self.rename(r.id, &r.oldpath, &r.newpath, false),
            Packet::ReadLink(r) => self.readlink(r.id, &r.path),
            // OpenSSH sends SYMLINK's two paths in the opposite order to the
            // draft (target first); every common client follows OpenSSH.
            Packet::Symlink(r) => self.symlink(r.id, &r.targetpath, &r.linkpath),
            Packet::Extended(r) => self.extended(r.id, &r.request, r.data).await,
            _ => Err(Fail::new(StatusCode::BadMessage, "not a request")),
        };
        reply.unwrap_or_else(|Fail(code, msg)| {
            Packet::Status(Status {
                id,
                status_code: code,
                error_message: msg,
                language_tag: "en-US".into(),
            })
        })
    }

    // ---- paths and access ------------------------------------------------

    fn place(&mut self, raw: &str, need: Level) -> Result<Place, Fail> {
        let norm = normalize(raw);
        let addr = match self.ctx.store.locate(&norm) {
            Ok(Some(addr)) => addr,
            Ok(None) => return Ok(Place::Root),
            Err(alknet_fs::Error::NoSuchBucket(_)) => {
                return Err(Fail::new(StatusCode::NoSuchFile, format!("{norm}: no such bucket")));
            }
            // A first component that is no address names nothing there.
            Err(e @ (alknet_fs::Error::InvalidAddress { .. } | alknet_fs::Error::InvalidName { .. })) => {
                return Err(Fail::new(StatusCode::NoSuchFile, e.to_string()));
            }
            Err(e) => return Err(Fail::from(e)),
        };
        let who = alknet_fs::Principal::user(&self.ctx.user);
        let tree = self
            .ctx
            .store
            .open_as(&who, &addr.bucket, &addr.branch, &addr.at, need)
            .map_err(|e| match e {
                alknet_fs::Error::NoSuchBucket(b) => Fail::new(StatusCode::NoSuchFile, format!("/{b}: no such bucket")),
                e => Fail::from(e),
            })?;
        let path = addr.path.clone();
        let prefix = tree_prefix(&norm, &path);
        // A symlinked directory on the way is passed through, as on a disk.
        let path = tree.follow_dirs(&path)?;
        if !self.touched.contains(&addr.bucket) {
            self.touched.push(addr.bucket.clone());
        }
        Ok(Place::Bucket { tree, path, prefix })
    }

    /// The user's level on a bucket; no grant reads as "no such bucket".
    fn level(&self, bucket: &str) -> Result<Level, Fail> {
        match self.ctx.store.level(&self.ctx.user, bucket) {
            Ok(Some(l)) => Ok(l),
            Ok(None) => Err(Fail::new(StatusCode::NoSuchFile, format!("/{bucket}: no such bucket"))),
            Err(e) => {
                tracing::error!("sftp: access check: {e}");
                Err(Fail::new(StatusCode::Failure, "access check failed"))
            }
        }
    }

    fn in_bucket(&mut self, raw: &str, need: Level) -> Result<(Tree, BucketPath), Fail> {
        self.in_bucket_named(raw, need).map(|(tree, path, _)| (tree, path))
    }

    /// [`Self::in_bucket`] with the client's name for the tree.
    fn in_bucket_named(&mut self, raw: &str, need: Level) -> Result<(Tree, BucketPath, String), Fail> {
        match self.place(raw, need)? {
            Place::Root => Err(Fail::denied("/: the root holds buckets only")),
            Place::Bucket { tree, path, prefix } => Ok((tree, path, prefix)),
        }
    }

    fn new_handle(&mut self, h: OpenHandle) -> Result<String, Fail> {
        if self.handles.len() >= MAX_HANDLES {
            return Err(Fail::new(
                StatusCode::Failure,
                format!("too many open handles (limit {MAX_HANDLES})"),
            ));
        }
        self.next_handle += 1;
        let name = self.next_handle.to_string();
        self.handles.insert(name.clone(), h);
        Ok(name)
    }

    fn attrs(&self, e: &Entry) -> FileAttributes {
        entry_attrs(e, self.ctx.owner)
    }

    // ---- files -------------------------------------------------------------

    async fn open(&mut self, id: u32, filename: &str, flags: OpenFlags, attrs: FileAttributes) -> Reply {
        let writes = flags.intersects(OpenFlags::WRITE | OpenFlags::APPEND | OpenFlags::CREATE | OpenFlags::TRUNCATE);
        let (tree, path) = self.in_bucket(filename, if writes { Level::Write } else { Level::Read })?;
        let handle = if writes {
            let mut opts = OpenOptions::modify()
                .create(flags.contains(OpenFlags::CREATE))
                .create_visible(true)
                .exclusive(flags.contains(OpenFlags::EXCLUDE))
                .truncate(flags.contains(OpenFlags::TRUNCATE));
            if let Some(mode) = attrs.permissions {
                opts = opts.mode(mode & 0o7777 & !UMASK);
            }
            let session = tree.open_write(&path, opts).await?;
            OpenHandle::Write {
                tree,
                session,
                append: flags.contains(OpenFlags::APPEND),
            }
        } else {
            let entry = tree.follow(&path, true)?.1;
            if entry.kind == Kind::Dir {
                return Err(Fail::new(StatusCode::Failure, format!("{path}: is a directory")));
            }
            let reader = tree.open_read(&entry).await?;
            OpenHandle::Read {
                tree,
                path,
                entry,
                reader,
            }
        };
        Ok(Packet::Handle(Handle {
            id,
            handle: self.new_handle(handle)?,
        }))
    }

    async fn close(&mut self, id: u32, handle: &str) -> Reply {
        match self.handles.remove(handle) {
            None => Err(Fail::new(StatusCode::Failure, "no such handle")),
            Some(OpenHandle::Write { session, .. }) => {
                let started = std::time::Instant::now();
                let published = session.close().await;
                tracing::debug!(
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "sftp: published a write"
                );
                match published {
                    // Removed while open: like POSIX, its last writes vanish and close succeeds.
                    Ok(_) | Err(FsError::NotFound(_)) => Ok(status_ok(id)),
                    Err(e) => Err(e.into()),
                }
            }
            Some(_) => Ok(status_ok(id)),
        }
    }

    async fn read(&mut self, id: u32, handle: &str, offset: u64, len: u32) -> Reply {
        let len = len.min(MAX_READ);
        let data = match self.handles.get(handle) {
            Some(OpenHandle::Read { reader, .. }) => reader.read_at(offset, u64::from(len)).await?,
            Some(OpenHandle::Write { .. }) => {
                let Some(OpenHandle::Write { session, .. }) = self.handles.get_mut(handle) else {
                    unreachable!("matched just above")
                };
                let mut buf = vec![0u8; len as usize];
                let n = session.read_at(offset, &mut buf).await?;
                buf.truncate(n);
                buf
            }
            Some(OpenHandle::Dir(_)) => return Err(Fail::new(StatusCode::Failure, "a directory handle")),
            None => return Err(Fail::new(StatusCode::Failure, "no such handle")),
        };
        if data.is_empty() && len > 0 {
            return Err(Fail::new(StatusCode::Eof, "end of file"));
        }
        Ok(Packet::Data(Data { id, data }))
    }

    async fn write(&mut self, id: u32, handle: &str, offset: u64, data: &[u8]) -> Reply {
        match self.handles.get_mut(handle) {
            Some(OpenHandle::Write { session, append, .. }) => {
                let offset = if *append { session.len()? } else { offset };
                session.write_at(offset, data).await?;
                Ok(status_ok(id))
            }
            Some(_) => Err(Fail::denied("the handle is not open for writing")),
            None => Err(Fail::new(StatusCode::Failure, "no such handle")),
        }
    }

    fn stat(&mut self, id: u32, raw: &str, follow: bool) -> Reply {
        let attrs = match self.place(raw, Level::Read)? {
            Place::Root => dir_attrs(self.ctx.owner),
            Place::Bucket { tree, path, .. } => {
                let e = if follow {
                    tree.follow(&path, true)?.1
                } else {
                    tree.stat(&path)?
                };
                self.attrs(&e)
            }
        };
        Ok(Packet::Attrs(Attrs { id, attrs }))
    }

    fn fstat(&mut self, id: u32, handle: &str) -> Reply {
        let attrs = match self.handles.get(handle) {
            Some(OpenHandle::Read { entry, .. }) => self.attrs(entry),
            Some(OpenHandle::Write { session, tree, .. }) => {
                let mut a = match tree.try_stat(session.path())? {
                    Some(e) => self.attrs(&e),
                    None => file_attrs(0o644, 0, 0, self.ctx.owner),
                };
                a.size = Some(session.len()?);
                a
            }
            Some(OpenHandle::Dir(_)) => dir_attrs(self.ctx.owner),
            None => return Err(Fail::new(StatusCode::Failure, "no such handle")),
        };
        Ok(Packet::Attrs(Attrs { id, attrs }))
    }

    async fn setstat(&mut self, id: u32, raw: &str, attrs: &FileAttributes) -> Reply {
        let (tree, path) = self.in_bucket(raw, Level::Write)?;
        apply_attrs(&tree, &path, attrs).await?;
        Ok(status_ok(id))
    }

    async fn fsetstat(&mut self, id: u32, handle: &str, attrs: &FileAttributes) -> Reply {
        match self.handles.get_mut(handle) {
            Some(OpenHandle::Write { session, .. }) => {
                check_owner_unchanged(attrs)?;
                if let Some(size) = attrs.size {
                    session.set_len(size).await?;
                }
                session.set_attr(
                    attrs.permissions.map(|p| p & 0o7777),
                    attrs.mtime.map(|t| i64::from(t) * 1_000_000_000),
                );
                Ok(status_ok(id))
            }
            Some(OpenHandle::Read { tree, path, .. }) => {
                let (tree, path) = (tree.clone(), path.clone());
                let bucket = tree.bucket().to_owned();
                if self.level(&bucket)? < Level::Write {
                    return Err(Fail::denied(format!("{bucket}: read-only access")));
                }
                apply_attrs(&tree, &path, attrs).await?;
                Ok(status_ok(id))
            }
            Some(OpenHandle::Dir(_)) => Err(Fail::unsupported("attributes of an open directory")),
            None => Err(Fail::new(StatusCode::Failure, "no such handle")),
        }
    }

    // ---- directories ---------------------------------------------------------

    fn opendir(&mut self, id: u32, raw: &str) -> Reply {
        let listing = match self.place(raw, Level::Read)? {
            Place::Root => {
                let mut files = Vec::new();
                let buckets = self.ctx.store.list_buckets()?;
                for b in buckets {
                    if matches!(self.ctx.store.level(&self.ctx.user, &b.name), Ok(Some(_))) {
                        let attrs = dir_attrs(self.ctx.owner);
                        files.push(File {
                            longname: longname(&b.name, &attrs),
                            filename: b.name,
                            attrs,
                        });
                    }
                }
                Listing::Buckets(Some(files))
            }
            Place::Bucket { tree, path, .. } => {
                let (path, e) = tree.follow(&path, true)?;
                if !e.is_dir() {
                    return Err(Fail::new(StatusCode::Failure, format!("{path}: not a directory")));
                }
                Listing::Tree {
                    tree,
                    path,
                    after: None,
                    done: false,
                }
            }
        };
        Ok(Packet::Handle(Handle {
            id,
            handle: self.new_handle(OpenHandle::Dir(listing))?,
        }))
    }

    fn readdir(&mut self, id: u32, handle: &str) -> Reply {
        let owner = self.ctx.owner;
        let files = match self.handles.get_mut(handle) {
            Some(OpenHandle::Dir(Listing::Buckets(files))) => files.take().unwrap_or_default(),
            Some(OpenHandle::Dir(Listing::Tree {
                tree,
                path,
                after,
                done,
            })) => {
                if *done {
                    Vec::new()
                } else {
                    let page = tree.read_dir(path, after.as_deref(), DIR_PAGE)?;
                    *done = page.is_empty();
                    *after = page.last().map(|e| e.name.clone());
                    page.into_iter()
                        .map(|e| {
                            let attrs = entry_attrs(&e, owner);
                            File {
                                longname: longname(&e.name, &attrs),
                                filename: e.name,
                                attrs,
                            }
                        })
                        .collect()
                }
            }
            Some(_) => return Err(Fail::new(StatusCode::Failure, "not a directory handle")),
            None => return Err(Fail::new(StatusCode::Failure, "no such handle")),
        };
        if files.is_empty() {
            return Err(Fail::new(StatusCode::Eof, "end of directory"));
        }
        Ok(Packet::Name(Name { id, files }))
    }

    fn remove(&mut self, id: u32, raw: &str) -> Reply {
        let (tree, path) = self.in_bucket(raw, Level::Write)?;
        tree.remove(&path)?;
        Ok(status_ok(id))
    }

    fn mkdir(&mut self, id: u32, raw: &str, attrs: &FileAttributes) -> Reply {
        let norm = normalize(raw);
        if norm.matches('/').count() == 1 && norm != "/" {
            // A new top-level directory is a new bucket: admins only.
            let name = &norm[1..];
            if !self.ctx.store.is_admin(&self.ctx.user).unwrap_or(false) {
                return Err(Fail::denied("only an admin can create buckets"));
            }
            self.ctx.store.create_bucket(name, "drive")?;
            return Ok(status_ok(id));
        }
        let (tree, path) = self.in_bucket(raw, Level::Write)?;
        tree.mkdir(&path, attrs.permissions.map(|p| p & 0o7777 & !UMASK))?;
        Ok(status_ok(id))
    }

    fn rmdir(&mut self, id: u32, raw: &str) -> Reply {
        let (tree, path) = self.in_bucket(raw, Level::Write)?;
        if path.is_root() {
            return Err(Fail::denied(
                "a bucket is deleted with `alknet bucket delete`, not rmdir",
            ));
        }
        tree.rmdir(&path)?;
        Ok(status_ok(id))
    }

    fn same_tree(&mut self, from: &str, to: &str) -> Result<(Tree, BucketPath, BucketPath), Fail> {
        let (a, pa) = self.in_bucket(from, Level::Write)?;
        let (b, pb) = self.in_bucket(to, Level::Write)?;
        if (a.bucket(), a.branch()) != (b.bucket(), b.branch()) {
            return Err(Fail::new(
                StatusCode::Failure,
                "source and target are in different buckets or branches",
            ));
        }
        Ok((a, pa, pb))
    }

    fn rename(&mut self, id: u32, from: &str, to: &str, replace: bool) -> Reply {
        let (tree, from, to) = self.same_tree(from, to)?;
        tree.rename(&from, &to, replace)?;
        Ok(status_ok(id))
    }

    /// A symlink's target as the client sees it: an absolute target is
    /// rooted at the link's own bucket@branch, so it gets that tree's prefix
    /// (`/d/a` in bucket `docs` reads as `/docs/d/a`).
    fn readlink(&mut self, id: u32, raw: &str) -> Reply {
        let (tree, path, prefix) = self.in_bucket_named(raw, Level::Read)?;
        let e = tree.stat(&path)?;
        match e.target {
            Some(t) if e.kind == Kind::Symlink => {
                let shown = match t.strip_prefix('/') {
                    Some(rest) => format!("{prefix}/{rest}").trim_end_matches('/').to_owned(),
                    None => t,
                };
                Ok(name_reply(id, &shown, None))
            }
            _ => Err(Fail::new(StatusCode::Failure, format!("{path}: not a symlink"))),
        }
    }

    /// Creates a symlink; an absolute target must lie in the link's own
    /// bucket@branch and is stored from that tree's root (the one meaning an
    /// absolute target has in the store: SFTP, the CLI and git all agree).
    fn symlink(&mut self, id: u32, link: &str, target: &str) -> Reply {
        let (tree, path, prefix) = self.in_bucket_named(link, Level::Write)?;
        let stored = if target.starts_with('/') {
            let full = normalize(target);
            match full.strip_prefix(prefix.as_str()) {
                Some("") => "/".to_owned(),
                Some(rest) if rest.starts_with('/') => rest.to_owned(),
                _ => {
                    return Err(Fail::new(
                        StatusCode::Failure,
                        format!("{target}: an absolute symlink target must be inside {prefix} (or use a relative one)"),
                    ));
                }
            }
        } else {
            target.to_owned()
        };
        tree.symlink(&path, &stored)?;
        Ok(status_ok(id))
    }

    // ---- extensions ------------------------------------------------------------

    async fn extended(&mut self, id: u32, request: &str, data: Vec<u8>) -> Reply {
        let mut data = Bytes::from(data);
        match request {
            "posix-rename@openssh.com" => {
                let (from, to) = (get_string(&mut data)?, get_string(&mut data)?);
                self.rename(id, &from, &to, true)
            }
            "hardlink@openssh.com" => {
                // Content-addressed: a "link" is a second entry sharing the blob.
                let (from, to) = (get_string(&mut data)?, get_string(&mut data)?);
                let (tree, from, to) = self.same_tree(&from, &to)?;
                if tree.try_stat(&to)?.is_some() {
                    return Err(Fail::new(StatusCode::Failure, format!("{to}: file exists")));
                }
                tree.copy_file(&from, &to)?;
                Ok(status_ok(id))
            }
            "statvfs@openssh.com" => {
                let path = get_string(&mut data)?;
                self.place(&path, Level::Read)?;
                self.statvfs(id)
            }
            "fstatvfs@openssh.com" => {
                let handle = get_string(&mut data)?;
                if !self.handles.contains_key(&handle) {
                    return Err(Fail::new(StatusCode::Failure, "no such handle"));
                }
                self.statvfs(id)
            }
            "fsync@openssh.com" => {
                let handle = get_string(&mut data)?;
                match self.handles.get(&handle) {
                    Some(OpenHandle::Write { session, .. }) => session.sync()?,
                    Some(_) => {}
                    None => return Err(Fail::new(StatusCode::Failure, "no such handle")),
                }
                Ok(status_ok(id))
            }
            "limits@openssh.com" => {
                let mut b = BytesMut::new();
                b.put_u64(u64::from(MAX_PACKET));
                b.put_u64(u64::from(MAX_READ));
                b.put_u64(u64::from(MAX_READ));
                b.put_u64(MAX_HANDLES as u64);
                Ok(Packet::ExtendedReply(ExtendedReply { id, data: b.to_vec() }))
            }
            "expand-path@openssh.com" => {
                let path = get_string(&mut data)?;
                let path = path.strip_prefix('~').unwrap_or(&path);
                Ok(name_reply(id, &normalize(path), None))
            }
            "copy-data" => self.copy_data(id, &mut data).await,
            // paramiko sends "check-file" on a handle.
            "check-file-name" | "check-file-handle" | "check-file" => {
                let target = get_string(&mut data)?;
                let algorithms = get_string(&mut data)?;
                let (start, length, block) = (get_u64(&mut data)?, get_u64(&mut data)?, get_u32(&mut data)?);
                if !algorithms.split(',').any(|a| a == "blake3") {
                    return Err(Fail::unsupported("only blake3 is answered (from the stored hash)"));
                }
                let entry = if request == "check-file-name" {
                    let (tree, path) = self.in_bucket(&target, Level::Read)?;
                    tree.follow(&path, true)?.1
                } else {
                    match self.handles.get(&target) {
                        Some(OpenHandle::Read { entry, .. }) => entry.clone(),
                        _ => return Err(Fail::unsupported("check-file-handle needs a handle open for reading")),
                    }
                };
                let whole = start == 0
                    && (length == 0 || length == entry.size)
                    && (block == 0 || u64::from(block) >= entry.size);
                let (Some(hash), true) = (entry.hash, whole) else {
                    return Err(Fail::unsupported("only the hash of a whole file is stored"));
                };
                let mut b = BytesMut::new();
                put_string(&mut b, b"check-file");
                put_string(&mut b, b"blake3");
                b.put_slice(&hash.0);
                Ok(Packet::ExtendedReply(ExtendedReply { id, data: b.to_vec() }))
            }
            other => Err(Fail::unsupported(format!("extension {other:?} is not supported"))),
        }
    }

    fn statvfs(&self, id: u32) -> Reply {
        let s = self.ctx.store.space()?;
        let mut b = BytesMut::new();
        for v in [
            s.block_size,
            s.block_size,
            s.blocks,
            s.blocks_free,
            s.blocks_available,
            s.files,
            s.files_free,
            s.files_free,
            0,
            0,
            alknet_fs::MAX_COMPONENT as u64,
        ] {
            b.put_u64(v);
        }
        Ok(Packet::ExtendedReply(ExtendedReply { id, data: b.to_vec() }))
    }

    /// `copy-data`: copies a byte range between two open handles on the
    /// server, in bounded chunks.
    async fn copy_data(&mut self, id: u32, data: &mut Bytes) -> Reply {
        let from = get_string(data)?;
        let from_offset = get_u64(data)?;
        let length = get_u64(data)?;
        let to = get_string(data)?;
        let to_offset = get_u64(data)?;
        if from == to {
            return Err(Fail::unsupported("copying within one handle"));
        }
        // Take the source out of the table to hold both handles at once.
        let source = self.handles.remove(&from);
        let result = match &source {
            Some(OpenHandle::Read { reader, entry, .. }) => {
                let length = if length == 0 {
                    reader.size().saturating_sub(from_offset)
                } else {
                    length
                };
                self.copy_range(reader, entry, from_offset, length, &to, to_offset)
                    .await
            }
            _ => Err(Fail::new(
                StatusCode::Failure,
                "the source is not a handle open for reading",
            )),
        };
        if let Some(h) = source {
            self.handles.insert(from, h);
        }
        result.map(|()| status_ok(id))
    }

    async fn copy_range(
        &mut self,
        reader: &alknet_fs::FileReader,
        source: &Entry,
        from_offset: u64,
        length: u64,
        to: &str,
        to_offset: u64,
    ) -> Result<(), Fail> {
        let Some(OpenHandle::Write { session, .. }) = self.handles.get_mut(to) else {
            return Err(Fail::new(
                StatusCode::Failure,
                "the target is not a handle open for writing",
            ));
        };
        // A whole file into a fresh one: share the blob, copy nothing.
        if from_offset == 0 && to_offset == 0 && length == source.size && session.copy_from(source).await? {
            return Ok(());
        }
        let mut done = 0u64;
        while done < length {
            let chunk = reader.read_at(from_offset + done, (length - done).min(1 << 20)).await?;
            if chunk.is_empty() {
                break;
            }
            session.write_at(to_offset + done, &chunk).await?;
            done += chunk.len() as u64;
        }
        Ok(())
    }
}

async fn apply_attrs(tree: &Tree, path: &BucketPath, attrs: &FileAttributes) -> Result<(), Fail> {
    check_owner_unchanged(attrs)?;
    if let Some(size) = attrs.size {
        tree.truncate(path, size).await?;
    }
    if attrs.permissions.is_some() || attrs.mtime.is_some() {
        let set = SetAttr::new(
            attrs.permissions.map(|p| p & 0o7777),
            attrs.mtime.map(|t| i64::from(t) * 1_000_000_000),
        );
        tree.set_attr(path, &set)?;
    }
    Ok(())
}

/// Ownership is not stored: a chown is refused rather than silently dropped.
fn check_owner_unchanged(attrs: &FileAttributes) -> Result<(), Fail> {
    if attrs.uid.is_some() || attrs.gid.is_some() {
        return Err(Fail::unsupported(
            "file ownership is not stored; chown is not supported",
        ));
    }
    Ok(())
}

fn version() -> Version {
    let mut v = Version::new();
    for (name, ver) in [
        ("posix-rename@openssh.com", "1"),
        ("statvfs@openssh.com", "2"),
        ("fstatvfs@openssh.com", "2"),
        ("hardlink@openssh.com", "1"),
        ("fsync@openssh.com", "1"),
        ("limits@openssh.com", "1"),
        ("expand-path@openssh.com", "1"),
        ("copy-data", "1"),
        ("check-file", "1"),
    ] {
        v.extensions.insert(name.to_owned(), ver.to_owned());
    }
    v
}

/// The SFTP prefix of the tree that `raw` (a path the client sent) names,
/// `/docs` or `/docs@edit`: `raw`, normalised, less the bucket path.
fn tree_prefix(raw: &str, path: &BucketPath) -> String {
    let full = normalize(raw);
    if path.is_root() {
        return full;
    }
    full.strip_suffix(path.as_str()).unwrap_or(&full).to_owned()
}

/// Makes an SFTP path absolute and lexically normal; `..` stops at `/`.
pub(crate) fn normalize(raw: &str) -> String {
    alknet_fs::normalize_namespace(raw)
}

fn name_reply(id: u32, name: &str, attrs: Option<FileAttributes>) -> Packet {
    Packet::Name(Name {
        id,
        files: vec![File {
            filename: name.to_owned(),
            longname: name.to_owned(),
            attrs: attrs.unwrap_or_default(),
        }],
    })
}

const S_IFREG: u32 = 0o100_000;
const S_IFDIR: u32 = 0o040_000;
const S_IFLNK: u32 = 0o120_000;

fn file_attrs(mode: u32, size: u64, mtime: u32, owner: (u32, u32)) -> FileAttributes {
    FileAttributes {
        size: Some(size),
        uid: Some(owner.0),
        gid: Some(owner.1),
        permissions: Some(mode),
        atime: Some(mtime),
        mtime: Some(mtime),
        ..Default::default()
    }
}

fn entry_attrs(e: &Entry, owner: (u32, u32)) -> FileAttributes {
    let kind = match e.kind {
        Kind::File => S_IFREG,
        Kind::Dir => S_IFDIR,
        Kind::Symlink => S_IFLNK,
        Kind::Special => e.mode & 0o170000,
    };
    let mtime = u32::try_from(e.mtime_ns.div_euclid(1_000_000_000)).unwrap_or(0);
    file_attrs(kind | (e.mode & 0o7777), e.size, mtime, owner)
}

fn dir_attrs(owner: (u32, u32)) -> FileAttributes {
    file_attrs(S_IFDIR | 0o755, 0, 0, owner)
}

/// An `ls -l` line, as OpenSSH's sftp client prints it.
fn longname(name: &str, a: &FileAttributes) -> String {
    let mode = a.permissions.unwrap_or(0);
    let kind = match mode & 0o170_000 {
        S_IFDIR => Kind::Dir,
        S_IFLNK => Kind::Symlink,
        _ => Kind::File,
    };
    let t = alknet_fs::display::Utc::from_unix(i64::from(a.mtime.unwrap_or(0)));
    format!(
        "{}    1 {:<8} {:<8} {:>8} {} {:>2} {:02}:{:02} {name}",
        alknet_fs::display::mode_string(kind, mode),
        a.uid.unwrap_or(0),
        a.gid.unwrap_or(0),
        a.size.unwrap_or(0),
        t.month_name(),
        t.day,
        t.hour,
        t.minute,
    )
}

fn get_u32(b: &mut Bytes) -> Result<u32, Fail> {
    b.try_get_u32()
        .map_err(|_| Fail::new(StatusCode::BadMessage, "truncated request"))
}

fn get_u64(b: &mut Bytes) -> Result<u64, Fail> {
    b.try_get_u64()
        .map_err(|_| Fail::new(StatusCode::BadMessage, "truncated request"))
}

fn get_string(b: &mut Bytes) -> Result<String, Fail> {
    let len = get_u32(b)? as usize;
    if b.remaining() < len {
        return Err(Fail::new(StatusCode::BadMessage, "truncated request"));
    }
    String::from_utf8(b.split_to(len).to_vec()).map_err(|_| Fail::new(StatusCode::BadMessage, "a path is not UTF-8"))
}

fn put_string(b: &mut BytesMut, s: &[u8]) {
    b.put_u32(s.len() as u32);
    b.put_slice(s);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_stays_at_root() {
        assert_eq!(normalize(""), "/");
        assert_eq!(normalize("."), "/");
        assert_eq!(normalize("../../etc/passwd"), "/etc/passwd");
        assert_eq!(normalize("/b/x/../../../y"), "/y");
        assert_eq!(normalize("b@dev//x/./y/"), "/b@dev/x/y");
    }

    #[test]
    fn longname_looks_like_ls() {
        let a = file_attrs(S_IFREG | 0o644, 1234, 0, (1000, 1000));
        assert_eq!(
            longname("f.txt", &a),
            "-rw-r--r--    1 1000     1000         1234 Jan  1 00:00 f.txt"
        );
    }
}

/// Garbage on the wire: whatever a client sends, the session ends cleanly
/// (an error or an answer), never a panic or a hang.
#[cfg(test)]
mod garbage {
    use super::*;

    fn context(dir: &std::path::Path) -> Context {
        let store = Store::open(dir).expect("store");
        store.create_bucket("b", "drive").expect("bucket");
        let key = crate::access::parse_key(
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIO0rmy+9VgiS8hD/MezGYMcb5RtpK7nsyS4Z2G/LIEdG test",
        )
        .expect("a valid key");
        store.add_user("t", &key, true).expect("user");
        Context {
            store,
            user: "t".into(),
            owner: (0, 0),
        }
    }

    /// xorshift: reproducible noise without a dependency.
    fn noise(seed: &mut u64, len: usize) -> Vec<u8> {
        (0..len)
            .map(|_| {
                *seed ^= *seed << 13;
                *seed ^= *seed >> 7;
                *seed ^= *seed << 17;
                *seed as u8
            })
            .collect()
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn random_packets_end_the_session_cleanly() {
        let dir = tempfile::tempdir().expect("temp dir");
        let ctx = context(dir.path());
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        for round in 0..300 {
            let (client, server) = tokio::io::duplex(1 << 16);
            let session = tokio::spawn(serve(server, ctx.clone()));
            let (mut rx, mut tx) = tokio::io::split(client);
            // A valid INIT first, so later packets reach the request handlers.
            tx.write_all(&[0, 0, 0, 5, 1, 0, 0, 0, 3]).await.expect("init");
            for _ in 0..4 {
                let len = (noise(&mut seed, 1)[0] as usize) % 120;
                let mut body = noise(&mut seed, len);
                if let Some(kind) = body.first_mut() {
                    // Mostly real request types (3..=20, 200), some nonsense.
                    *kind = [
                        3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 200, *kind,
                    ][(*kind as usize) % 20];
                }
                let mut frame = (body.len() as u32).to_be_bytes().to_vec();
                frame.extend_from_slice(&body);
                if tx.write_all(&frame).await.is_err() {
                    break;
                }
            }
            drop(tx);
            let mut sink = Vec::new();
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), rx.read_to_end(&mut sink)).await;
            let ended = tokio::time::timeout(std::time::Duration::from_secs(5), session).await;
            let joined = ended.unwrap_or_else(|_| panic!("round {round}: the session did not end"));
            assert!(joined.is_ok(), "round {round}: the session panicked");
        }
        assert_eq!(
            ctx.store.list_buckets().expect("list").len(),
            1,
            "garbage created no bucket"
        );
    }
}
