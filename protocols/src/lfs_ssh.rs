//! Git LFS's pure-SSH protocol: `git-lfs-transfer REPO upload|download`
//! (git-lfs `docs/proposals/ssh_adapter.md`), pkt-lines over the SSH
//! channel: the capability list, then requests — `version`, `batch`,
//! `get-object`, `put-object`, `verify-object`, `lock`, `list-lock` (and
//! `list-locks`, which Debian's git-lfs 3.3 also sends), `unlock`, `quit` —
//! each answered with `status CODE` in HTTP's numbers. Objects and locks
//! are the forge's and the store's, as over HTTP; access is the forge's
//! one rule, checked once for the session's operation.

use alknet_forge::{Forge, Service, valid_oid};
use alknet_fs::{Lock, LockQuery, Principal};
use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The largest pkt-line payload.
const MAX_DATA: usize = 65516;
/// Locks per `list-lock` page.
const LOCK_PAGE: usize = 100;
/// Objects per `batch`.
const MAX_BATCH: usize = 1000;

/// One pkt-line.
#[derive(Debug, PartialEq, Eq)]
enum Pkt {
    Data(Vec<u8>),
    Flush,
    Delim,
}

struct Wire<R, W> {
    input: R,
    output: W,
}

#[derive(Debug)]
struct Refused(u16, String);

type Step<T> = Result<T, Refused>;

impl<R: AsyncRead + Unpin, W: AsyncWrite + Unpin> Wire<R, W> {
    /// The next pkt-line; `None` when the client hung up between requests.
    async fn read(&mut self) -> std::io::Result<Option<Pkt>> {
        let mut len = [0u8; 4];
        match self.input.read_exact(&mut len).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e),
        }
        let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, "malformed pkt-line length");
        let n = usize::from_str_radix(std::str::from_utf8(&len).map_err(|_| bad())?, 16).map_err(|_| bad())?;
        match n {
            0 => Ok(Some(Pkt::Flush)),
            1 => Ok(Some(Pkt::Delim)),
            2 | 3 => Err(bad()),
            n if n > MAX_DATA + 4 => Err(bad()),
            n => {
                let mut data = vec![0u8; n - 4];
                self.input.read_exact(&mut data).await?;
                Ok(Some(Pkt::Data(data)))
            }
        }
    }

    async fn line(&mut self, text: &str) -> std::io::Result<()> {
        self.data(format!("{text}\n").as_bytes()).await
    }

    async fn data(&mut self, data: &[u8]) -> std::io::Result<()> {
        for chunk in data.chunks(MAX_DATA) {
            self.output
                .write_all(format!("{:04x}", chunk.len() + 4).as_bytes())
                .await?;
            self.output.write_all(chunk).await?;
        }
        Ok(())
    }

    async fn flush_pkt(&mut self) -> std::io::Result<()> {
        self.output.write_all(b"0000").await?;
        self.output.flush().await
    }

    async fn delim(&mut self) -> std::io::Result<()> {
        self.output.write_all(b"0001").await
    }

    /// A request: its command, its arguments (to a delim or flush), and
    /// whether a data section follows (a delim came).
    async fn request(&mut self) -> std::io::Result<Option<(String, Vec<String>, bool)>> {
        let command = loop {
            match self.read().await? {
                None => return Ok(None),
                Some(Pkt::Flush) => continue,
                Some(Pkt::Data(d)) => break text(&d),
                Some(Pkt::Delim) => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        "a delim before a command",
                    ));
                }
            }
        };
        let mut args = Vec::new();
        loop {
            match self.read().await? {
                None => return Err(std::io::ErrorKind::UnexpectedEof.into()),
                Some(Pkt::Flush) => return Ok(Some((command, args, false))),
                Some(Pkt::Delim) => return Ok(Some((command, args, true))),
                Some(Pkt::Data(d)) => args.push(text(&d)),
            }
        }
    }

    /// The text lines of a data section, to its flush.
    async fn lines(&mut self, most: usize) -> std::io::Result<Vec<String>> {
        let mut out = Vec::new();
        loop {
            match self.read().await? {
                Some(Pkt::Flush) => return Ok(out),
                Some(Pkt::Data(d)) if out.len() < most => out.push(text(&d)),
                Some(Pkt::Data(_)) => {}
                Some(Pkt::Delim) | None => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            }
        }
    }

    /// `status CODE`, `args`, and (for an error) its message.
    async fn status(&mut self, code: u16, args: &[String], data: Option<&[String]>) -> std::io::Result<()> {
        self.line(&format!("status {code}")).await?;
        for a in args {
            self.line(a).await?;
        }
        if let Some(lines) = data {
            self.delim().await?;
            for l in lines {
                self.line(l).await?;
            }
        }
        self.flush_pkt().await
    }

    async fn refuse(&mut self, r: Refused) -> std::io::Result<()> {
        let message = format!("message {}", r.1.replace('\n', " "));
        self.status(r.0, &[], Some(&[message])).await
    }
}

fn text(d: &[u8]) -> String {
    String::from_utf8_lossy(d.strip_suffix(b"\n").unwrap_or(d)).into_owned()
}

fn arg<'a>(args: &'a [String], key: &str) -> Option<&'a str> {
    args.iter().find_map(|a| a.strip_prefix(key)?.strip_prefix('='))
}

fn from_fs(e: alknet_fs::Error) -> Refused {
    let code = match e.kind() {
        "not_found" => 404,
        "denied" => 403,
        "conflict" | "exists" => 409,
        "invalid" => 422,
        "no_space" => 507,
        "too_large" => 413,
        _ => 500,
    };
    Refused(code, e.to_string())
}

fn from_forge(e: alknet_forge::Error) -> Refused {
    match e {
        alknet_forge::Error::Store(e) => from_fs(e),
        alknet_forge::Error::Protocol(m) => Refused(422, m),
        e => Refused(500, e.to_string()),
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Step<T> + Send + 'static) -> Step<T> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(Refused(500, format!("the server failed: {e}"))))
}

fn lock_args(l: &Lock) -> Vec<String> {
    vec![
        format!("id={}", l.id),
        format!("path={}", l.path),
        format!("locked-at={}", alknet_fs::display::utc_timestamp(l.locked_ms)),
        format!("ownername={}", l.owner),
    ]
}

/// Serves one `git-lfs-transfer` session for `user` on `stream`; returns
/// the exit status, or the message that refuses the session before it
/// starts (for stderr: git-lfs shows it, and falls back to HTTP).
pub(crate) async fn serve<S>(
    forge: Forge,
    user: String,
    path: String,
    service: Service,
    stream: S,
) -> Result<u32, String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let who = Principal::user(&user);
    let decided = {
        let (forge, who, path) = (forge.clone(), who.clone(), path.clone());
        tokio::task::spawn_blocking(move || forge.authorize(Some(&who), &path, service)).await
    };
    let repo = match decided {
        Ok(Ok(repo)) => repo,
        Ok(Err(refusal)) => return Err(refusal.to_string()),
        Err(e) => return Err(format!("the server failed: {e}")),
    };
    let (input, output) = tokio::io::split(stream);
    let mut wire = Wire {
        input: tokio::io::BufReader::with_capacity(1 << 16, input),
        output: tokio::io::BufWriter::with_capacity(1 << 16, output),
    };
    let session = Session {
        forge,
        who,
        repo,
        service,
    };
    match session.run(&mut wire).await {
        Ok(()) => Ok(0),
        Err(e) => {
            tracing::info!(%user, repo = %session.repo, "git-lfs-transfer ended: {e}");
            Ok(1)
        }
    }
}

struct Session {
    forge: Forge,
    who: Principal,
    repo: String,
    service: Service,
}

impl Session {
    async fn run<R, W>(&self, wire: &mut Wire<R, W>) -> std::io::Result<()>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        wire.line("version=1").await?;
        wire.line("locking").await?;
        wire.flush_pkt().await?;
        while let Some((command, args, more)) = wire.request().await? {
            let (word, rest) = command.split_once(' ').unwrap_or((&command, ""));
            let done = match word {
                "version" if rest == "1" => wire.status(200, &[], None).await,
                "version" => {
                    wire.refuse(Refused(400, format!("version {rest} is not spoken here")))
                        .await
                }
                "quit" => {
                    wire.status(200, &[], None).await?;
                    return Ok(());
                }
                "batch" => self.batch(wire, &args, more).await,
                "get-object" => self.get_object(wire, rest).await,
                "put-object" => self.put_object(wire, rest, &args, more).await,
                "verify-object" => self.verify_object(wire, rest, &args).await,
                "lock" => self.lock(wire, &args).await,
                "list-lock" | "list-locks" => self.list_locks(wire, &args).await,
                "unlock" => self.unlock(wire, rest, &args).await,
                other => {
                    if more {
                        wire.lines(usize::MAX).await?;
                    }
                    wire.refuse(Refused(400, format!("unknown command {other:?}"))).await
                }
            };
            done?;
        }
        Ok(())
    }

    fn needs_upload(&self) -> Step<()> {
        match self.service {
            Service::ReceivePack => Ok(()),
            Service::UploadPack => Err(Refused(403, "this session was opened to download".into())),
        }
    }

    async fn batch<R, W>(&self, wire: &mut Wire<R, W>, args: &[String], more: bool) -> std::io::Result<()>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let lines = if more {
            wire.lines(MAX_BATCH + 1).await?
        } else {
            Vec::new()
        };
        if lines.len() > MAX_BATCH {
            return wire
                .refuse(Refused(413, format!("at most {MAX_BATCH} objects per batch")))
                .await;
        }
        if arg(args, "hash-algo").is_some_and(|h| h != "sha256") {
            return wire
                .refuse(Refused(409, "only sha256 object ids are served".into()))
                .await;
        }
        let (forge, repo, upload) = (
            self.forge.clone(),
            self.repo.clone(),
            self.service == Service::ReceivePack,
        );
        let answered = blocking(move || {
            let mut out = Vec::new();
            for line in lines {
                let mut parts = line.split(' ');
                let (oid, size) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
                let Ok(size) = size.parse::<u64>() else {
                    return Err(Refused(422, format!("{line:?}: the size must be a number of bytes")));
                };
                if !valid_oid(oid) {
                    return Err(Refused(422, format!("{oid:?}: not an LFS object id")));
                }
                let have = forge.lfs_object(&repo, oid).map_err(from_forge)?;
                let action = match (upload, have) {
                    (true, Some(_)) => "noop",
                    (true, None) => "upload",
                    (false, Some(a)) if a.size == size => "download",
                    (false, _) => "noop",
                };
                out.push(format!("{oid} {size} {action}"));
            }
            Ok(out)
        })
        .await;
        match answered {
            Ok(lines) => wire.status(200, &[], Some(&lines)).await,
            Err(r) => wire.refuse(r).await,
        }
    }

    async fn get_object<R, W>(&self, wire: &mut Wire<R, W>, oid: &str) -> std::io::Result<()>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let (forge, repo, id) = (self.forge.clone(), self.repo.clone(), oid.to_owned());
        let found = blocking(move || forge.lfs_object(&repo, &id).map_err(from_forge)).await;
        let object = match found {
            Ok(Some(o)) => o,
            Ok(None) => return wire.refuse(Refused(404, format!("object {oid} does not exist"))).await,
            Err(r) => return wire.refuse(r).await,
        };
        let mut read = match self.forge.store().read_blob(&object.hash, 0..object.size).await {
            Ok(r) => r,
            Err(e) => return wire.refuse(from_fs(e)).await,
        };
        wire.line("status 200").await?;
        wire.line(&format!("size={}", object.size)).await?;
        wire.delim().await?;
        loop {
            match read.next().await {
                Ok(Some(bytes)) => wire.data(&bytes).await?,
                Ok(None) => break,
                // Verified reads: a corrupt blob ends the session, never wrong bytes.
                Err(e) => return Err(std::io::Error::other(e.to_string())),
            }
        }
        wire.flush_pkt().await
    }

    async fn put_object<R, W>(
        &self,
        wire: &mut Wire<R, W>,
        oid: &str,
        args: &[String],
        more: bool,
    ) -> std::io::Result<()>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let size = arg(args, "size").and_then(|s| s.parse::<u64>().ok());
        let started = match self.needs_upload() {
            Ok(()) => self.forge.lfs_upload(&self.repo, oid).await.map_err(from_forge),
            Err(r) => Err(r),
        };
        let mut upload = match started {
            Ok(u) => Some(u),
            Err(r) => {
                if more {
                    self.drain(wire).await?;
                }
                return wire.refuse(r).await;
            }
        };
        let mut failed = None;
        if more {
            loop {
                match wire.read().await? {
                    Some(Pkt::Flush) => break,
                    Some(Pkt::Data(d)) => {
                        if let Some(u) = upload.as_mut()
                            && let Err(e) = u.write(Bytes::from(d)).await
                        {
                            failed = Some(from_forge(e));
                            upload = None;
                        }
                    }
                    Some(Pkt::Delim) | None => return Err(std::io::ErrorKind::UnexpectedEof.into()),
                }
            }
        }
        if let Some(r) = failed {
            return wire.refuse(r).await;
        }
        let Some(upload) = upload else {
            return wire.refuse(Refused(500, "the upload was lost".into())).await;
        };
        match upload.finish(size).await {
            Ok(_) => wire.status(200, &[], None).await,
            Err(e) => wire.refuse(from_forge(e)).await,
        }
    }

    /// Reads and drops a data section.
    async fn drain<R, W>(&self, wire: &mut Wire<R, W>) -> std::io::Result<()>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        loop {
            match wire.read().await? {
                Some(Pkt::Flush) => return Ok(()),
                Some(Pkt::Data(_)) => {}
                Some(Pkt::Delim) | None => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            }
        }
    }

    async fn verify_object<R, W>(&self, wire: &mut Wire<R, W>, rest: &str, args: &[String]) -> std::io::Result<()>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let (oid, size) = match rest.split_once(' ') {
            Some((oid, size)) => (oid, size.parse::<u64>().ok()),
            None => (rest, arg(args, "size").and_then(|s| s.parse().ok())),
        };
        let (forge, repo, id) = (self.forge.clone(), self.repo.clone(), oid.to_owned());
        let found = blocking(move || forge.lfs_object(&repo, &id).map_err(from_forge)).await;
        match found {
            Ok(Some(o)) if size.is_none_or(|s| s == o.size) => wire.status(200, &[], None).await,
            Ok(Some(o)) => {
                wire.refuse(Refused(422, format!("object {oid} has {} bytes", o.size)))
                    .await
            }
            Ok(None) => wire.refuse(Refused(404, format!("object {oid} does not exist"))).await,
            Err(r) => wire.refuse(r).await,
        }
    }

    async fn lock<R, W>(&self, wire: &mut Wire<R, W>, args: &[String]) -> std::io::Result<()>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        if let Err(r) = self.needs_upload() {
            return wire.refuse(r).await;
        }
        let Some(path) = arg(args, "path").map(str::to_owned) else {
            return wire.refuse(Refused(400, "lock needs a path".into())).await;
        };
        let (store, repo, user) = (self.forge.store().clone(), self.repo.clone(), self.who.user.clone());
        let made = blocking(move || Ok(store.lock(&repo, &path, &user))).await;
        match made {
            Ok(Ok(lock)) => wire.status(201, &lock_args(&lock), None).await,
            Ok(Err(alknet_fs::Error::Locked { path, owner, id })) => {
                let held = Lock {
                    id,
                    path,
                    owner,
                    locked_ms: 0,
                };
                let message = format!("message {} is already locked by {}", held.path, held.owner);
                wire.status(409, &lock_args(&held), Some(&[message])).await
            }
            Ok(Err(e)) => wire.refuse(from_fs(e)).await,
            Err(r) => wire.refuse(r).await,
        }
    }

    async fn list_locks<R, W>(&self, wire: &mut Wire<R, W>, args: &[String]) -> std::io::Result<()>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let limit = arg(args, "limit")
            .and_then(|l| l.parse().ok())
            .unwrap_or(LOCK_PAGE)
            .clamp(1, LOCK_PAGE);
        let after = arg(args, "cursor").and_then(|c| c.parse::<i64>().ok());
        let id = arg(args, "id").map(|i| i.parse::<i64>().unwrap_or(-1));
        let path = arg(args, "path").map(str::to_owned);
        let (store, repo) = (self.forge.store().clone(), self.repo.clone());
        let found = blocking(move || {
            let query = LockQuery {
                path: path.as_deref(),
                id,
                after,
                limit: limit + 1,
            };
            store.locks(&repo, &query).map_err(from_fs)
        })
        .await;
        let locks = match found {
            Ok(l) => l,
            Err(r) => return wire.refuse(r).await,
        };
        let mut head = Vec::new();
        if locks.len() > limit {
            head.push(format!("next-cursor={}", locks[limit - 1].id));
        }
        let mut lines = Vec::new();
        for l in locks.iter().take(limit) {
            let who = if l.owner == self.who.user { "ours" } else { "theirs" };
            lines.push(format!("lock {}", l.id));
            lines.push(format!("path {} {}", l.id, l.path));
            lines.push(format!(
                "locked-at {} {}",
                l.id,
                alknet_fs::display::utc_timestamp(l.locked_ms)
            ));
            lines.push(format!("ownername {} {}", l.id, l.owner));
            lines.push(format!("owner {} {who}", l.id));
        }
        wire.status(200, &head, Some(&lines)).await
    }

    async fn unlock<R, W>(&self, wire: &mut Wire<R, W>, id: &str, args: &[String]) -> std::io::Result<()>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        if let Err(r) = self.needs_upload() {
            return wire.refuse(r).await;
        }
        let Ok(id) = id.parse::<i64>() else {
            return wire.refuse(Refused(404, format!("lock {id:?} does not exist"))).await;
        };
        let force = arg(args, "force").is_some_and(|f| f == "true");
        let (store, repo, who) = (self.forge.store().clone(), self.repo.clone(), self.who.clone());
        let done = blocking(move || store.unlock_as(&who, &repo, id, force).map_err(from_fs)).await;
        match done {
            Ok(lock) => wire.status(200, &lock_args(&lock), None).await,
            Err(r) => wire.refuse(r).await,
        }
    }
}
