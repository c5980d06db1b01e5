//! upload-pack: what `git clone`, `git fetch` and `git ls-remote` talk to,
//! in protocol v0 (stateful, over SSH) and v2 (`ls-refs`, `fetch`).
//!
//! The pack streams: gix-pack copies stored entries (deltas included) as
//! they are, in order, into the side-band writer; nothing is recompressed
//! and the pack is never whole in memory.

use std::collections::HashSet;
use std::io::{BufWriter, Read, Write};

use gix_hash::ObjectId;

use crate::pkt::{self, Band, Pkt, PktReader, SideBand};
use crate::repo::{Forge, Repo};
use crate::walk::{Filter, Request};
use crate::{AGENT, Error};

const V0_CAPS: &str = "multi_ack multi_ack_detailed thin-pack side-band side-band-64k ofs-delta shallow \
                       deepen-since deepen-not deepen-relative no-progress include-tag allow-tip-sha1-in-want \
                       allow-reachable-sha1-in-want filter object-format=sha1";

/// Serves one upload-pack session on `input`/`output`. `v2` when the client
/// asked for protocol version 2 (`GIT_PROTOCOL=version=2`). Over a
/// connection the server speaks first (its advertisement) and v0's
/// negotiation spans rounds; stateless (HTTP), the advertisement was the
/// answer to `info/refs` ([`advertise`]) and this serves one request: a v0
/// round of haves ends at its flush with the ACKs so far, and the client
/// sends everything again in its next request. A missing repository is
/// reported to the client as an `ERR` line.
pub fn upload_pack(
    forge: &Forge,
    repo: &str,
    v2: bool,
    mode: Mode,
    input: impl Read,
    output: impl Write,
) -> Result<(), Error> {
    let mut out = BufWriter::with_capacity(64 * 1024, output);
    let repo = forge.open_or_tell(repo, &mut out)?;
    let mut input = PktReader::new(input);
    let served = match (v2, mode) {
        (true, Mode::Connection) => {
            advertise_v2(&mut out)?;
            serve_v2(&repo, &mut input, &mut out)
        }
        (true, Mode::Stateless) => serve_v2(&repo, &mut input, &mut out),
        (false, Mode::Connection) => {
            advertise_v0(&repo, &mut out, V0_CAPS)?;
            serve_v0(&repo, &mut input, &mut out, false)
        }
        (false, Mode::Stateless) => serve_v0(&repo, &mut input, &mut out, true),
    };
    if let Err(e @ Error::Protocol(_)) = &served {
        // git shows it as "fatal: remote error: …".
        gix_packetline::blocking_io::encode::error_to_write(e.to_string().as_bytes(), &mut out).ok();
        out.flush().ok();
    }
    served
}

/// How a session reaches the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// One connection for the whole session (SSH, QUIC): the server speaks
    /// first, and negotiation goes back and forth on it.
    Connection,
    /// Smart HTTP: the advertisement answers `GET info/refs`, and each
    /// `POST` is one request that the server answers and forgets.
    Stateless,
}

/// The two services.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Service {
    UploadPack,
    ReceivePack,
}

impl Service {
    /// `upload-pack`, `receive-pack`: as git names them (`git-` + this).
    pub fn name(self) -> &'static str {
        match self {
            Service::UploadPack => "upload-pack",
            Service::ReceivePack => "receive-pack",
        }
    }
}

/// What the server says first to a client of `service` (the body of smart
/// HTTP's `GET info/refs`, after its `# service=` line in v0): the refs and
/// capabilities in v0, the capability list in v2 (upload-pack only; a
/// push is v0).
pub fn advertise(forge: &Forge, repo: &str, service: Service, v2: bool, output: impl Write) -> Result<(), Error> {
    let mut out = BufWriter::with_capacity(64 * 1024, output);
    let repo = forge.open_or_tell(repo, &mut out)?;
    match service {
        Service::UploadPack if v2 => advertise_v2(&mut out)?,
        Service::UploadPack => advertise_v0(&repo, &mut out, V0_CAPS)?,
        Service::ReceivePack => advertise_v0(&repo, &mut out, crate::receive::CAPS)?,
    }
    out.flush()?;
    Ok(())
}

/// The ref advertisement of v0 (shared with receive-pack): HEAD first, then
/// every ref, tags followed by their peeled `^{}` line; capabilities after a
/// NUL on the first line.
pub(crate) fn advertise_v0(repo: &Repo, out: &mut impl Write, caps: &str) -> Result<(), Error> {
    let refs = repo.refs()?;
    let head = repo.head()?;
    let head_id = refs.iter().find(|r| r.name == head).map(|r| r.id);
    let mut lines: Vec<(ObjectId, String)> = Vec::new();
    if let Some(id) = head_id {
        lines.push((id, "HEAD".into()));
    }
    for r in &refs {
        lines.push((r.id, r.name.clone()));
        if let Some(p) = r.peeled {
            lines.push((p, format!("{}^{{}}", r.name)));
        }
    }
    if lines.is_empty() {
        lines.push((crate::null_oid(), "capabilities^{}".into()));
    }
    for (i, (id, name)) in lines.iter().enumerate() {
        if i == 0 {
            pkt::text(out, &format!("{id} {name}\0{caps} symref=HEAD:{head} {AGENT}\n"))?;
        } else {
            pkt::text(out, &format!("{id} {name}\n"))?;
        }
    }
    pkt::flush(out)?;
    Ok(())
}

fn parse_oid(s: &[u8], what: &str) -> Result<ObjectId, Error> {
    ObjectId::from_hex(s)
        .map_err(|_| Error::Protocol(format!("{what}: {:?} is not an object id", String::from_utf8_lossy(s))))
}

/// Options both protocol versions share.
#[derive(Default)]
struct Fetch {
    req: Request,
    haves: Vec<ObjectId>,
    band: Option<Band>,
    no_progress: bool,
    include_tag: bool,
    /// The client reads deltas on a base by offset.
    ofs_delta: bool,
    done: bool,
}

impl Fetch {
    /// Takes one argument line (`want X`, `deepen 3`, …); false if unknown.
    fn arg(&mut self, repo: &Repo, line: &[u8]) -> Result<bool, Error> {
        let text = String::from_utf8_lossy(line);
        let (word, rest) = text.split_once(' ').unwrap_or((&text, ""));
        match word {
            "want" => {
                let id = parse_oid(rest.split(' ').next().unwrap_or("").as_bytes(), "want")?;
                if !repo.contains(&id) {
                    return Err(Error::Protocol(format!("want {id}: not our ref")));
                }
                self.req.wants.push(id);
            }
            "have" => self.haves.push(parse_oid(rest.as_bytes(), "have")?),
            "shallow" => {
                self.req.client_shallow.insert(parse_oid(rest.as_bytes(), "shallow")?);
            }
            "deepen" => {
                let depth: u32 = rest
                    .parse()
                    .map_err(|_| Error::Protocol(format!("deepen {rest:?}: not a depth")))?;
                self.req.depth = Some(depth.max(1));
            }
            "deepen-since" => {
                self.req.since = Some(
                    rest.parse()
                        .map_err(|_| Error::Protocol(format!("deepen-since {rest:?}: not a time")))?,
                );
            }
            "deepen-not" => {
                let refs = repo.refs()?;
                let r = refs
                    .iter()
                    .find(|r| {
                        r.name == rest
                            || r.name == format!("refs/heads/{rest}")
                            || r.name == format!("refs/tags/{rest}")
                    })
                    .ok_or_else(|| Error::Protocol(format!("deepen-not {rest}: no such ref")))?;
                self.req.not.push(r.peeled.unwrap_or(r.id));
            }
            "filter" => self.req.filter = Filter::parse(rest)?,
            "no-progress" => self.no_progress = true,
            "include-tag" => self.include_tag = true,
            "done" => self.done = true,
            "deepen-relative" => self.req.relative = true,
            "ofs-delta" => self.ofs_delta = true,
            "thin-pack" | "sideband-all" | "wait-for-done" => {}
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// Capabilities sent on the first want line (v0).
    fn caps(&mut self, caps: &str) {
        for cap in caps.split(' ') {
            match cap {
                "side-band-64k" => self.band = Some(Band::Large),
                "side-band" if self.band.is_none() => self.band = Some(Band::Small),
                "no-progress" => self.no_progress = true,
                "include-tag" => self.include_tag = true,
                "ofs-delta" => self.ofs_delta = true,
                "deepen-relative" => self.req.relative = true,
                _ => {}
            }
        }
    }

    /// The client's new shallow boundary as `shallow` / `unshallow` lines.
    /// It depends on the wants and the deepen request only, not on the
    /// haves (commits only: no trees are walked).
    fn shallow_lines(&self, repo: &Repo, out: &mut impl Write) -> Result<(), Error> {
        let boundary = repo.plan(&Request {
            wants: self.req.wants.clone(),
            client_shallow: self.req.client_shallow.clone(),
            depth: self.req.depth,
            relative: self.req.relative,
            since: self.req.since,
            not: self.req.not.clone(),
            filter: Filter::TreeDepth(0),
            ..Request::default()
        })?;
        for id in &boundary.shallow {
            pkt::text(out, &format!("shallow {id}\n"))?;
        }
        for id in &boundary.unshallow {
            pkt::text(out, &format!("unshallow {id}\n"))?;
        }
        Ok(())
    }

    /// The haves we have as well, as commits.
    fn common(&self, repo: &Repo) -> Vec<ObjectId> {
        self.haves.iter().filter(|h| repo.contains(h)).copied().collect()
    }
}

/// v0 after the advertisement; `stateless`: one request, ending at the
/// first flush of haves (answered with the ACKs so far) or at `done`.
fn serve_v0<R: Read, W: Write>(
    repo: &Repo,
    input: &mut PktReader<R>,
    out: &mut W,
    stateless: bool,
) -> Result<(), Error> {
    let mut fetch = Fetch::default();
    let mut multi_ack = 0;
    // Wants, shallows and deepen lines up to a flush; none at all means the
    // client only wanted the refs (ls-remote, or nothing to fetch).
    loop {
        match input.next()? {
            None => return Ok(()),
            Some(Pkt::Flush) => break,
            Some(Pkt::Line(line)) => {
                let line = if fetch.req.wants.is_empty() && line.starts_with(b"want ") {
                    // The first want carries the capabilities after the id.
                    let text = String::from_utf8_lossy(&line).into_owned();
                    let mut parts = text.splitn(3, ' ');
                    let (_, id, caps) = (parts.next(), parts.next().unwrap_or(""), parts.next().unwrap_or(""));
                    fetch.caps(caps);
                    multi_ack = if caps.split(' ').any(|c| c == "multi_ack_detailed") {
                        2
                    } else {
                        caps.split(' ').any(|c| c == "multi_ack") as u8
                    };
                    format!("want {id}").into_bytes()
                } else {
                    line
                };
                if !fetch.arg(repo, &line)? {
                    return Err(Error::Protocol(format!(
                        "unexpected line {:?}",
                        String::from_utf8_lossy(&line)
                    )));
                }
            }
            Some(other) => return Err(Error::Protocol(format!("unexpected {other:?} in the wants"))),
        }
    }
    if fetch.req.wants.is_empty() {
        return Ok(());
    }
    if fetch.req.deepens() {
        fetch.shallow_lines(repo, out)?;
        pkt::flush(out)?;
    }
    // Negotiation: acknowledge haves until the client says done.
    let mut last_common: Option<ObjectId> = None;
    let mut got_common = false;
    let mut got_other = false;
    loop {
        match input.next()? {
            None => return Ok(()),
            Some(Pkt::Line(line)) if line == b"done" => break,
            Some(Pkt::Line(line)) if line.starts_with(b"have ") => {
                let id = parse_oid(&line[5..], "have")?;
                if repo.contains(&id) {
                    got_common = true;
                    let first = last_common.is_none();
                    last_common = Some(id);
                    fetch.haves.push(id);
                    match multi_ack {
                        2 => pkt::text(out, &format!("ACK {id} common\n"))?,
                        1 => pkt::text(out, &format!("ACK {id} continue\n"))?,
                        _ if first => pkt::text(out, &format!("ACK {id}\n"))?,
                        _ => {}
                    }
                } else {
                    got_other = true;
                    if multi_ack == 2 && last_common.is_some() {
                        pkt::text(out, &format!("ACK {id} ready\n"))?;
                    }
                }
            }
            Some(Pkt::Flush) => {
                if multi_ack == 2
                    && got_common
                    && !got_other
                    && let Some(id) = last_common
                {
                    pkt::text(out, &format!("ACK {id} ready\n"))?;
                }
                if last_common.is_none() || multi_ack > 0 {
                    pkt::text(out, "NAK\n")?;
                }
                out.flush()?;
                if stateless {
                    return Ok(());
                }
                got_common = false;
                got_other = false;
            }
            Some(other) => return Err(Error::Protocol(format!("unexpected {other:?} in the haves"))),
        }
    }
    match last_common {
        Some(id) if multi_ack > 0 => pkt::text(out, &format!("ACK {id}\n"))?,
        Some(_) => {}
        None => pkt::text(out, "NAK\n")?,
    }
    out.flush()?;
    fetch.req.common = fetch.common(repo);
    let band = fetch.band.unwrap_or(Band::None);
    send_pack(repo, &fetch, &mut SideBand::new(&mut *out, band, !fetch.no_progress))?;
    if band != Band::None {
        pkt::flush(out)?;
    }
    out.flush()?;
    Ok(())
}

/// v2's capability advertisement.
fn advertise_v2(out: &mut impl Write) -> Result<(), Error> {
    for line in [
        "version 2",
        AGENT,
        "ls-refs=unborn",
        "fetch=shallow filter",
        "server-option",
        "object-format=sha1",
    ] {
        pkt::text(out, &format!("{line}\n"))?;
    }
    pkt::flush(out)?;
    Ok(())
}

/// v2's commands, after the advertisement (over HTTP, one per request).
fn serve_v2<R: Read, W: Write>(repo: &Repo, input: &mut PktReader<R>, out: &mut W) -> Result<(), Error> {
    loop {
        // command=…, capabilities, [delim, arguments], flush.
        let command = match input.next()? {
            None => return Ok(()),
            Some(Pkt::Flush) => continue,
            Some(Pkt::Line(line)) => match line.strip_prefix(b"command=") {
                Some(c) => String::from_utf8_lossy(c).into_owned(),
                None => {
                    return Err(Error::Protocol(format!(
                        "expected a command, got {:?}",
                        String::from_utf8_lossy(&line)
                    )));
                }
            },
            Some(other) => return Err(Error::Protocol(format!("expected a command, got {other:?}"))),
        };
        let mut args = Vec::new();
        let mut in_args = false;
        loop {
            match input.expect("a command")? {
                Pkt::Flush => break,
                Pkt::Delim => in_args = true,
                Pkt::Line(line) if in_args => args.push(line),
                Pkt::Line(_) => {} // capabilities: agent, object-format, server-option
                Pkt::End => return Err(Error::Protocol("unexpected response-end".into())),
            }
        }
        match command.as_str() {
            "ls-refs" => ls_refs(repo, &args, out)?,
            "fetch" => fetch_v2(repo, &args, out)?,
            other => return Err(Error::Protocol(format!("unknown command {other:?}"))),
        }
        out.flush()?;
    }
}

fn ls_refs(repo: &Repo, args: &[Vec<u8>], out: &mut impl Write) -> Result<(), Error> {
    let mut symrefs = false;
    let mut peel = false;
    let mut unborn = false;
    let mut prefixes = Vec::new();
    for arg in args {
        let arg = String::from_utf8_lossy(arg);
        match arg.as_ref() {
            "symrefs" => symrefs = true,
            "peel" => peel = true,
            "unborn" => unborn = true,
            other => {
                if let Some(p) = other.strip_prefix("ref-prefix ") {
                    prefixes.push(p.to_owned());
                }
            }
        }
    }
    let wanted = |name: &str| prefixes.is_empty() || prefixes.iter().any(|p| name.starts_with(p.as_str()));
    let refs = repo.refs()?;
    let head = repo.head()?;
    if wanted("HEAD") {
        let target = if symrefs {
            format!(" symref-target:{head}")
        } else {
            String::new()
        };
        match refs.iter().find(|r| r.name == head) {
            Some(r) => pkt::text(out, &format!("{} HEAD{target}\n", r.id))?,
            None if unborn => pkt::text(out, &format!("unborn HEAD{target}\n"))?,
            None => {}
        }
    }
    for r in refs.iter().filter(|r| wanted(&r.name)) {
        match r.peeled {
            Some(p) if peel => pkt::text(out, &format!("{} {} peeled:{p}\n", r.id, r.name))?,
            _ => pkt::text(out, &format!("{} {}\n", r.id, r.name))?,
        }
    }
    pkt::flush(out)?;
    Ok(())
}

fn fetch_v2(repo: &Repo, args: &[Vec<u8>], out: &mut impl Write) -> Result<(), Error> {
    let mut fetch = Fetch {
        band: Some(Band::Large),
        ..Fetch::default()
    };
    for arg in args {
        if !fetch.arg(repo, arg)? {
            return Err(Error::Protocol(format!(
                "fetch: unknown argument {:?}",
                String::from_utf8_lossy(arg)
            )));
        }
    }
    fetch.req.common = fetch.common(repo);
    if !fetch.done {
        pkt::text(out, "acknowledgments\n")?;
        for id in &fetch.req.common {
            pkt::text(out, &format!("ACK {id}\n"))?;
        }
        if fetch.req.common.is_empty() {
            pkt::text(out, "NAK\n")?;
            pkt::flush(out)?;
            return Ok(());
        }
        pkt::text(out, "ready\n")?;
        pkt::delim(out)?;
    }
    if fetch.req.deepens() {
        pkt::text(out, "shallow-info\n")?;
        fetch.shallow_lines(repo, out)?;
        pkt::delim(out)?;
    }
    pkt::text(out, "packfile\n")?;
    send_pack(
        repo,
        &fetch,
        &mut SideBand::new(&mut *out, Band::Large, !fetch.no_progress),
    )?;
    pkt::flush(out)?;
    Ok(())
}

/// Plans and streams the pack for `fetch` into `out`.
fn send_pack<W: Write>(repo: &Repo, fetch: &Fetch, out: &mut SideBand<W>) -> Result<(), Error> {
    let started = std::time::Instant::now();
    let plan = match repo.plan(&fetch.req) {
        Ok(p) => p,
        Err(e) => {
            out.error(&e.to_string())?;
            return Err(e);
        }
    };
    let planned = started.elapsed();
    let mut ids = plan.objects;
    if fetch.include_tag {
        let sent: HashSet<ObjectId> = ids.iter().copied().collect();
        for r in repo.refs()? {
            if r.name.starts_with("refs/tags/")
                && let Some(target) = r.peeled
                && sent.contains(&target)
                && !sent.contains(&r.id)
            {
                ids.push(r.id);
            }
        }
    }
    out.progress(&format!("Enumerating objects: {}, done.\n", ids.len()))?;
    let mut buffered = BufWriter::with_capacity(65515, &mut *out);
    let sent = crate::pack::send::write_pack(repo, &ids, fetch.ofs_delta, &mut buffered)?;
    buffered.flush()?;
    drop(buffered);
    let (count, deltas) = (sent.objects, sent.deltas);
    out.progress(&format!(
        "Total {count} (delta {deltas}), reused {count} (delta {deltas}), in {:.1}s\n",
        started.elapsed().as_secs_f64()
    ))?;
    out.inner().flush()?;
    tracing::debug!(
        repo = repo.name(),
        objects = count,
        commits = plan.commits,
        ?planned,
        total = ?started.elapsed(),
        "pack sent"
    );
    Ok(())
}
