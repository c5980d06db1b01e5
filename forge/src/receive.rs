//! receive-pack: what `git push` talks to.
//!
//! The pushed pack is indexed into a quarantine directory (thin packs are
//! completed from the repository), every object the new refs reach is
//! checked to be present and well-formed, and only then is the pack attached
//! to the bucket and linked into place. Ref updates are compare-and-swaps in
//! one store transaction (all of them for `--atomic`), so of two pushes
//! racing on one ref exactly one wins. A refused push leaves the repository
//! as it was.

use std::collections::HashSet;
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};

use alknet_fs::RefUpdate;
use gix_hash::ObjectId;
use gix_object::Kind;

use crate::pkt::{self, Band, Pkt, PktReader, SideBand};
use crate::repo::{Forge, Odb, PACK_PREFIX, Repo};
use crate::upload::{Mode, advertise_v0};
use crate::{Error, null_oid};

pub(crate) const CAPS: &str = "report-status report-status-v2 delete-refs side-band-64k quiet atomic ofs-delta \
                    push-options object-format=sha1";

/// One ref update a client asked for.
#[derive(Debug)]
pub(crate) struct Command {
    pub(crate) old: ObjectId,
    pub(crate) new: ObjectId,
    pub(crate) name: String,
    /// `None`: accepted so far; `Some(reason)`: refused.
    pub(crate) error: Option<String>,
}

/// What one push did, for the log.
#[derive(Debug, Default)]
pub struct PushOutcome {
    pub updated: Vec<String>,
    pub refused: Vec<(String, String)>,
    pub objects: u32,
}

/// Serves one receive-pack session on `input`/`output` for `pusher` (whose
/// locks do not stop them): over a connection the advertisement comes
/// first; stateless (HTTP), it answered `info/refs` and the request is the
/// commands and the pack.
pub fn receive_pack(
    forge: &Forge,
    repo: &str,
    pusher: &str,
    mode: Mode,
    input: impl Read,
    output: impl Write,
) -> Result<PushOutcome, Error> {
    let mut out = std::io::BufWriter::new(output);
    let repo = forge.open_or_tell(repo, &mut out)?;
    if mode == Mode::Connection {
        advertise_v0(&repo, &mut out, CAPS)?;
    }
    let mut input = PktReader::new(input);
    let mut commands = Vec::new();
    let mut caps = HashSet::new();
    loop {
        match input.next()? {
            None if commands.is_empty() => return Ok(PushOutcome::default()),
            None => return Err(Error::Protocol("the client hung up during the commands".into())),
            Some(Pkt::Flush) => break,
            Some(Pkt::Line(line)) => {
                let (line, line_caps) = match line.iter().position(|b| *b == 0) {
                    Some(nul) => (&line[..nul], String::from_utf8_lossy(&line[nul + 1..]).into_owned()),
                    None => (&line[..], String::new()),
                };
                caps.extend(line_caps.split(' ').filter(|c| !c.is_empty()).map(str::to_owned));
                commands.push(parse_command(line)?);
            }
            Some(other) => return Err(Error::Protocol(format!("unexpected {other:?} in the commands"))),
        }
    }
    if commands.is_empty() {
        return Ok(PushOutcome::default());
    }
    if caps.contains("push-options") {
        loop {
            match input.expect("the push options")? {
                Pkt::Flush => break,
                Pkt::Line(_) => {}
                other => return Err(Error::Protocol(format!("unexpected {other:?} in the push options"))),
            }
        }
    }
    let band = if caps.contains("side-band-64k") {
        Band::Large
    } else {
        Band::None
    };
    let atomic = caps.contains("atomic");
    let mut outcome = PushOutcome::default();

    let started = std::time::Instant::now();
    let needs_pack = commands.iter().any(|c| !c.new.is_null());
    let quarantine = Quarantine(
        repo.objects
            .parent()
            .unwrap_or(&repo.objects)
            .join("incoming")
            .join(crate::repo::quarantine_name()),
    );
    let unpacked = if needs_pack {
        receive_objects(&repo, input.raw(), &quarantine.0, &commands)
    } else {
        Ok(None)
    };
    let unpack_status = match &unpacked {
        Ok(_) => "unpack ok\n".to_owned(),
        Err(e) => {
            for c in commands.iter_mut() {
                c.error = Some("unpacker error".into());
            }
            format!("unpack {}\n", one_line(&e.to_string()))
        }
    };
    if let Ok(Some((_, objects))) = &unpacked {
        outcome.objects = *objects;
    }
    let checked = started.elapsed();
    if unpacked.is_ok() {
        let received = match &unpacked {
            Ok(Some((r, _))) => Some(&r.objects),
            _ => None,
        };
        check_commands(&repo, received, &mut commands)?;
        crate::locks::check(&repo, received, pusher, &mut commands)?;
        if atomic && commands.iter().any(|c| c.error.is_some()) {
            for c in commands.iter_mut().filter(|c| c.error.is_none()) {
                c.error = Some("atomic push failed".into());
            }
        }
        let keep = commands.iter().any(|c| c.error.is_none() && !c.new.is_null());
        if keep
            && let Ok(Some((pack, _))) = &unpacked
            && let Err(e) = accept_pack(&repo, pack)
        {
            for c in commands.iter_mut() {
                c.error
                    .get_or_insert_with(|| format!("storing the pack failed: {}", one_line(&e.to_string())));
            }
        }
        update_refs(&repo, &mut commands, atomic)?;
        let pushed: Vec<&str> = commands
            .iter()
            .filter(|c| c.error.is_none() && !c.new.is_null())
            .map(|c| c.name.as_str())
            .collect();
        if let Err(e) = repo.adopt_head(&pushed) {
            tracing::warn!(repo = repo.name(), "pointing HEAD at a pushed branch failed: {e}");
        }
        tracing::debug!(repo = repo.name(), ?checked, stored = ?started.elapsed(), "push received");
        for c in commands.iter().filter(|c| c.error.is_none()) {
            let new = (!c.new.is_null()).then_some(c.new);
            if let Err(e) = repo.publish(&c.name, new) {
                tracing::warn!(repo = repo.name(), "publishing {} failed: {e}", c.name);
            }
        }
    }
    drop(quarantine);
    tracing::debug!(repo = repo.name(), total = ?started.elapsed(), "push done");

    // The report: unpack status, then ok/ng per ref.
    let mut report = Vec::new();
    pkt::text(&mut report, &unpack_status)?;
    for c in &commands {
        match &c.error {
            None => {
                pkt::text(&mut report, &format!("ok {}\n", c.name))?;
                outcome.updated.push(c.name.clone());
            }
            Some(reason) => {
                pkt::text(&mut report, &format!("ng {} {}\n", c.name, one_line(reason)))?;
                outcome.refused.push((c.name.clone(), reason.clone()));
            }
        }
    }
    pkt::flush(&mut report)?;
    if caps.contains("report-status") || caps.contains("report-status-v2") {
        if band == Band::None {
            out.write_all(&report)?;
        } else {
            let mut sb = SideBand::new(&mut out, band, false);
            sb.write_all(&report)?;
            pkt::flush(sb.inner())?;
        }
    } else if band != Band::None {
        pkt::flush(&mut out)?;
    }
    out.flush()?;
    match unpacked {
        Err(e) => Err(e),
        Ok(_) => Ok(outcome),
    }
}

fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

fn parse_command(line: &[u8]) -> Result<Command, Error> {
    let text = String::from_utf8_lossy(line);
    let mut parts = text.splitn(3, ' ');
    let (Some(old), Some(new), Some(name)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(Error::Protocol(format!("malformed command {text:?}")));
    };
    let oid =
        |s: &str| ObjectId::from_hex(s.as_bytes()).map_err(|_| Error::Protocol(format!("malformed command {text:?}")));
    Ok(Command {
        old: oid(old)?,
        new: oid(new)?,
        name: name.to_owned(),
        error: None,
    })
}

/// The directory a pushed pack is indexed into; removed however the push
/// ends (once accepted, the pack lives on in the blob store).
struct Quarantine(PathBuf);

impl Drop for Quarantine {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.0).ok();
    }
}

/// A pack received and indexed in quarantine.
struct Received {
    pack: PathBuf,
    index: PathBuf,
    /// Its objects, readable before they join the repository.
    objects: Odb,
}

/// Reads the pack that follows the commands into `quarantine`, then checks
/// that every new ref tip reaches only objects that exist and decode.
fn receive_objects(
    repo: &Repo,
    input: &mut impl Read,
    quarantine: &Path,
    commands: &[Command],
) -> Result<Option<(Received, u32)>, Error> {
    let packs = quarantine.join("pack");
    std::fs::create_dir_all(&packs)?;
    let store = repo.store().clone();
    let refusal = std::sync::Mutex::new(None);
    let mut reader = BufReader::with_capacity(
        64 * 1024,
        Guarded {
            inner: input,
            store: &store,
            quota: store.attachment_headroom(&repo.name)?,
            bucket: &repo.name,
            read: 0,
            refusal: &refusal,
        },
    );
    let indexed =
        crate::pack::index::index_pack(repo, &mut reader, &packs, pack_alloc_limit(&store)).map_err(
            |e| match refusal.lock().unwrap_or_else(|p| p.into_inner()).take() {
                // The limits stopped it: say which, not how the cut looked.
                Some(limit) => Error::Store(limit),
                None => match e {
                    Error::BadPack(why) => Error::BadPack(format!("the pack is unusable: {why}")),
                    e => e,
                },
            },
        )?;
    let tips: Vec<ObjectId> = commands.iter().filter(|c| !c.new.is_null()).map(|c| c.new).collect();
    let Some(indexed) = indexed else {
        // No objects: every new tip must be in the repository already.
        if let Some(tip) = tips.iter().find(|t| !repo.contains(t)) {
            return Err(Error::BadPack(format!(
                "missing object {tip}: the pack is empty and the repository lacks it"
            )));
        }
        return Ok(None);
    };
    let new = crate::repo::open_odb(quarantine)?;
    check_connected(repo, &new, &tips)?;
    let received = Received {
        pack: indexed.pack,
        index: indexed.index,
        objects: new,
    };
    Ok(Some((received, indexed.objects)))
}

/// The largest object held in memory to resolve a pushed delta: a file may
/// be this large (git delta-compresses none over 512 MiB by default).
fn pack_alloc_limit(store: &alknet_fs::Store) -> u64 {
    const DEFAULT: u64 = 4 << 30;
    store.limits().max_file_size.unwrap_or(DEFAULT).clamp(64 << 20, DEFAULT)
}

/// A pushed pack as it arrives: each read asks the store's write limits
/// whether the pack may grow by what it brought (a pack is a file of the
/// store: `max_file_size`, and the disk's free space less its reserve), and
/// the repository's quota whether its packs may, so a push cannot fill the
/// disk; a refusal is kept to report instead of the indexer's
/// view of the cut.
struct Guarded<'a, R> {
    inner: R,
    store: &'a alknet_fs::Store,
    /// The repository's quota and what its packs may still take.
    quota: Option<(u64, u64)>,
    bucket: &'a str,
    read: u64,
    refusal: &'a std::sync::Mutex<Option<alknet_fs::Error>>,
}

impl<R: Read> Read for Guarded<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        let grown = self.read + n as u64;
        let quota = match self.quota {
            Some((quota, left)) if grown > left => Err(alknet_fs::Error::Quota {
                path: "the pushed pack".into(),
                bucket: self.bucket.to_owned(),
                quota,
            }),
            _ => Ok(()),
        };
        if let Err(e) = quota.and_then(|()| self.store.check_growth("the pushed pack", self.read, grown)) {
            let text = e.to_string();
            *self.refusal.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
            return Err(std::io::Error::other(text));
        }
        self.read = grown;
        Ok(n)
    }
}

/// Walks from `tips` through the new objects; an object that is neither in
/// the new pack nor already in the repository refuses the push.
fn check_connected(repo: &Repo, new: &Odb, tips: &[ObjectId]) -> Result<(), Error> {
    use gix_object::{Exists, Find};
    let mut seen = HashSet::new();
    // (id, known to be a blob): a blob needs only to exist — indexing the
    // pack already checked that its bytes hash to its name.
    let mut stack: Vec<(ObjectId, bool)> = tips.iter().map(|t| (*t, false)).collect();
    let mut buf = Vec::new();
    while let Some((id, blob)) = stack.pop() {
        if !seen.insert(id) {
            continue;
        }
        if !new.exists(&id) {
            if repo.contains(&id) {
                continue;
            }
            return Err(Error::BadPack(format!(
                "missing object {id}: the pack does not hold it and the repository lacks it"
            )));
        }
        if blob {
            continue;
        }
        let data = new
            .try_find(&id, &mut buf)
            .map_err(|e| Error::BadPack(format!("object {id} cannot be read: {e}")))?
            .ok_or_else(|| Error::BadPack(format!("missing object {id}")))?;
        let corrupt = |e: &dyn std::fmt::Display| Error::BadPack(format!("object {id} is corrupt: {e}"));
        match data.kind {
            Kind::Commit => {
                let c = gix_object::CommitRef::from_bytes(data.data, gix_hash::Kind::Sha1).map_err(|e| corrupt(&e))?;
                stack.push((c.tree(), false));
                stack.extend(c.parents().map(|p| (p, false)));
            }
            Kind::Tree => {
                for entry in gix_object::TreeRefIter::from_bytes(data.data, gix_hash::Kind::Sha1) {
                    let entry = entry.map_err(|e| corrupt(&e))?;
                    if !entry.mode.is_commit() {
                        stack.push((entry.oid.to_owned(), entry.mode.is_blob_or_symlink()));
                    }
                }
            }
            Kind::Tag => {
                let t = gix_object::TagRef::from_bytes(data.data, gix_hash::Kind::Sha1).map_err(|e| corrupt(&e))?;
                stack.push((t.target(), false));
            }
            Kind::Blob => {}
        }
    }
    Ok(())
}

/// Refuses what may not happen: names outside `refs/`, deletes of missing
/// refs, updates from a stale value, history rewrites.
fn check_commands(repo: &Repo, received: Option<&Odb>, commands: &mut [Command]) -> Result<(), Error> {
    let current: std::collections::HashMap<String, ObjectId> =
        repo.refs()?.into_iter().map(|r| (r.name, r.id)).collect();
    for c in commands.iter_mut() {
        let now = current.get(&c.name).copied().unwrap_or_else(null_oid);
        c.error = if !valid_ref_name(&c.name) {
            Some("invalid ref name".into())
        } else if c.new.is_null() && now.is_null() {
            Some("no such ref".into())
        } else if now != c.old {
            Some("stale info: the ref changed since you fetched; fetch first".into())
        } else if !c.old.is_null()
            && !c.new.is_null()
            && !repo.allows_force_push()
            && !is_ancestor(repo, received, c.old, c.new)?
        {
            Some("non-fast-forward (history rewrites are refused for this repository)".into())
        } else {
            None
        };
    }
    Ok(())
}

/// Whether `ancestor` is reachable from `tip`, looking in the received
/// objects first, then in the repository.
fn is_ancestor(repo: &Repo, received: Option<&Odb>, ancestor: ObjectId, tip: ObjectId) -> Result<bool, Error> {
    use gix_object::{Exists, Find};
    let mut buf = Vec::new();
    let mut seen = HashSet::new();
    let mut queue = vec![tip];
    while let Some(id) = queue.pop() {
        if id == ancestor {
            return Ok(true);
        }
        if !seen.insert(id) {
            continue;
        }
        let data = match received.filter(|odb| odb.exists(&id)) {
            Some(odb) => odb.try_find(&id, &mut buf).map_err(Error::objects)?,
            None => repo.find(&id, &mut buf)?,
        };
        let Some(data) = data else { continue };
        if data.kind == Kind::Commit {
            let c = gix_object::CommitRef::from_bytes(data.data, gix_hash::Kind::Sha1).map_err(Error::objects)?;
            queue.extend(c.parents());
        }
    }
    Ok(false)
}

pub(crate) fn valid_ref_name(name: &str) -> bool {
    name.starts_with("refs/")
        && !name.ends_with('/')
        && !name.ends_with(".lock")
        && !name.contains("..")
        && !name.contains("//")
        && !name.contains("@{")
        && name.bytes().all(|b| b > 0x20 && b != 0x7f && !b"~^:?*[\\".contains(&b))
}

/// Attaches the received pack and index to the bucket (content-addressed,
/// kept by GC) and links them into the repository's pack directory.
fn accept_pack(repo: &Repo, received: &Received) -> Result<(), Error> {
    let (pack, index) = (&received.pack, &received.index);
    let store = repo.store();
    let dir = repo.objects.join("pack");
    // The pack before its index: gix finds packs through their indexes.
    for file in [pack, index] {
        let name = file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .ok_or_else(|| Error::BadPack("the indexed pack has no file name".into()))?;
        let target = dir.join(&name);
        if target.exists() {
            continue;
        }
        let blob = repo.forge.block_on(store.import_file(file))?;
        store.attach(&repo.name, &format!("{PACK_PREFIX}{name}"), &blob)?;
        let tmp = dir.join(format!("tmp-{name}"));
        std::fs::remove_file(&tmp).ok();
        repo.forge.block_on(store.link_blob(&blob.hash(), &tmp))?;
        std::fs::rename(&tmp, &target)?;
    }
    Ok(())
}

/// Applies the accepted updates: all in one compare-and-swap if atomic,
/// else one by one. A lost race becomes that ref's error.
fn update_refs(repo: &Repo, commands: &mut [Command], atomic: bool) -> Result<(), Error> {
    let update = |c: &Command| RefUpdate {
        name: c.name.clone(),
        old: (!c.old.is_null()).then(|| c.old.to_string()),
        new: (!c.new.is_null()).then(|| c.new.to_string()),
    };
    let lost = |e: alknet_fs::Error| match e {
        alknet_fs::Error::RefChanged { .. } => Ok("failed to update ref: another push changed it meanwhile".to_owned()),
        e => Err(Error::Store(e)),
    };
    if atomic {
        let updates: Vec<RefUpdate> = commands.iter().filter(|c| c.error.is_none()).map(update).collect();
        if updates.is_empty() {
            return Ok(());
        }
        if let Err(e) = repo.store().update_refs(&repo.name, &updates) {
            let reason = lost(e)?;
            for c in commands.iter_mut() {
                c.error.get_or_insert_with(|| reason.clone());
            }
        }
        return Ok(());
    }
    for c in commands.iter_mut().filter(|c| c.error.is_none()) {
        if let Err(e) = repo.store().update_refs(&repo.name, &[update(c)]) {
            c.error = Some(lost(e)?);
        }
    }
    Ok(())
}
