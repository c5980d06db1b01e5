//! Indexing a pushed pack as it arrives, as `git index-pack --stdin
//! --fix-thin` does: every byte goes to disk as it comes, whole objects are
//! hashed on the fly (never held), deltas are resolved afterwards base by
//! base (depth-first: memory is one chain, not one level), bases a thin pack
//! leaves out are appended from the repository, and a version 2 `.idx` is
//! written beside the pack.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use gix_hash::ObjectId;
use gix_object::Kind;

use super::{
    EntryKind, Inflater, OID_LEN, Region, apply_delta, encode_header, finish_hash, object_hasher, read_header,
};
use crate::Error;
use crate::repo::Repo;

/// A pack and its index, in the directory they were written to.
pub(crate) struct Indexed {
    pub(crate) pack: PathBuf,
    pub(crate) index: PathBuf,
    pub(crate) objects: u32,
}

struct Entry {
    offset: u64,
    /// Where its compressed data ends (the next entry begins).
    end: u64,
    crc: u32,
    header_len: u32,
    /// Inflated size of the entry's data.
    size: u64,
    kind: EntryKind,
    /// Known at once for a whole object, after resolution for a delta.
    id: Option<(ObjectId, Kind)>,
}

/// The pushed bytes on their way to disk: everything consumed is written to
/// the file, hashed into the pack checksum and the current entry's CRC.
struct Incoming<'a, R> {
    inner: &'a mut R,
    file: BufWriter<File>,
    /// `None` once the checksum itself is being read.
    sum: Option<gix_hash::Hasher>,
    crc: crc32fast::Hasher,
    offset: u64,
    failed: Option<std::io::Error>,
}

impl<R: BufRead> Read for Incoming<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = {
            let have = self.fill_buf()?;
            let n = have.len().min(buf.len());
            buf[..n].copy_from_slice(&have[..n]);
            n
        };
        self.consume(n);
        Ok(n)
    }
}

impl<R: BufRead> BufRead for Incoming<'_, R> {
    fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
        if let Some(e) = self.failed.take() {
            return Err(e);
        }
        self.inner.fill_buf()
    }

    fn consume(&mut self, n: usize) {
        if n == 0 {
            return;
        }
        // The bytes are still in the inner buffer: fill_buf returns them again.
        match self.inner.fill_buf() {
            Ok(buf) => {
                let bytes = &buf[..n];
                if let Some(sum) = &mut self.sum {
                    sum.update(bytes);
                }
                self.crc.update(bytes);
                if let Err(e) = self.file.write_all(bytes)
                    && self.failed.is_none()
                {
                    self.failed = Some(e);
                }
            }
            Err(e) => self.failed = Some(e),
        }
        self.inner.consume(n);
        self.offset += n as u64;
    }
}

impl<R: BufRead> Incoming<'_, R> {
    fn byte(&mut self) -> Result<u8, Error> {
        let b = *self
            .fill_buf()?
            .first()
            .ok_or_else(|| Error::BadPack("the pack ends early".into()))?;
        self.consume(1);
        Ok(b)
    }

    fn exact(&mut self, out: &mut [u8]) -> Result<(), Error> {
        self.read_exact(out).map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => Error::BadPack("the pack ends early".into()),
            _ => e.into(),
        })
    }

    fn check(&mut self) -> Result<(), Error> {
        match self.failed.take() {
            Some(e) => Err(e.into()),
            None => Ok(()),
        }
    }
}

/// Reads the pack on `input` into `dir`; `repo` supplies the bases a thin
/// pack leaves out; no object larger than `limit` is held to resolve a
/// delta. `None`: the pack holds no objects.
pub(crate) fn index_pack(
    repo: &Repo,
    input: &mut impl BufRead,
    dir: &Path,
    limit: u64,
) -> Result<Option<Indexed>, Error> {
    let tmp = dir.join(format!("tmp_pack_{:016x}", rand::random::<u64>()));
    let file = File::options().read(true).write(true).create_new(true).open(&tmp)?;
    let mut written = Written { path: tmp, keep: false };
    let mut incoming = Incoming {
        inner: input,
        file: BufWriter::with_capacity(super::CHUNK, file),
        sum: Some(gix_hash::hasher(gix_hash::Kind::Sha1)),
        crc: crc32fast::Hasher::new(),
        offset: 0,
        failed: None,
    };
    let mut head = [0u8; 12];
    incoming.exact(&mut head)?;
    if &head[..4] != b"PACK" {
        return Err(Error::BadPack("what was sent is not a pack".into()));
    }
    let version = u32::from_be_bytes([head[4], head[5], head[6], head[7]]);
    if version != 2 && version != 3 {
        return Err(Error::BadPack(format!("pack version {version} is not supported")));
    }
    let count = u32::from_be_bytes([head[8], head[9], head[10], head[11]]);
    // The count is the sender's claim: memory grows with what arrives.
    let mut entries: Vec<Entry> = Vec::with_capacity((count as usize).min(1 << 16));
    let mut inflater = Inflater::new();
    for _ in 0..count {
        let offset = incoming.offset;
        incoming.crc = crc32fast::Hasher::new();
        let header = read_header(|| incoming.byte())?;
        if let EntryKind::OfsDelta { distance } = header.kind
            && (distance == 0 || distance > offset - 12)
        {
            return Err(Error::BadPack("a delta's base lies outside the pack".into()));
        }
        let id = match header.kind {
            EntryKind::Whole(kind) => {
                let mut h = object_hasher(kind, header.size);
                inflater.inflate(&mut incoming, header.size, |b| {
                    h.update(b);
                    Ok(())
                })?;
                Some((finish_hash(h)?, kind))
            }
            _ => {
                inflater.inflate(&mut incoming, header.size, |_| Ok(()))?;
                None
            }
        };
        incoming.check()?;
        let crc = std::mem::replace(&mut incoming.crc, crc32fast::Hasher::new()).finalize();
        entries.push(Entry {
            offset,
            end: incoming.offset,
            crc,
            header_len: header.len as u32,
            size: header.size,
            kind: header.kind,
            id,
        });
    }
    let sum = finish_hash(incoming.sum.take().expect("the checksum is read once"))?;
    let mut trailer = [0u8; OID_LEN];
    incoming.exact(&mut trailer)?;
    incoming.check()?;
    if trailer != sum.as_bytes() {
        return Err(Error::BadPack("the pack's checksum does not match its bytes".into()));
    }
    let file = incoming.file.into_inner().map_err(|e| e.into_error())?;
    if entries.is_empty() {
        return Ok(None);
    }
    let appended = Resolver {
        repo,
        file: &file,
        end: incoming.offset - OID_LEN as u64,
        limit,
        entries: &mut entries,
        inflater,
    }
    .run()?;
    let sum = if appended.is_empty() {
        sum
    } else {
        complete_thin(&file, &mut entries, &appended)?
    };
    file.sync_all()?;
    let name = format!("pack-{}", sum.to_hex());
    let index = dir.join(format!("{name}.idx"));
    write_index(&index, &entries, &sum)?;
    let pack = dir.join(format!("{name}.pack"));
    std::fs::rename(&written.path, &pack)?;
    written.keep = true;
    Ok(Some(Indexed {
        pack,
        index,
        objects: entries.len() as u32,
    }))
}

/// The temporary pack, removed unless it became the indexed one.
struct Written {
    path: PathBuf,
    keep: bool,
}

impl Drop for Written {
    fn drop(&mut self) {
        if !self.keep {
            std::fs::remove_file(&self.path).ok();
        }
    }
}

struct Resolver<'a> {
    repo: &'a Repo,
    file: &'a File,
    /// Where the entries end (the checksum follows).
    end: u64,
    limit: u64,
    entries: &'a mut Vec<Entry>,
    inflater: Inflater,
}

/// A base and the deltas on it still to resolve.
struct Frame {
    data: Vec<u8>,
    kind: Kind,
    children: Vec<usize>,
    next: usize,
}

impl Resolver<'_> {
    /// Resolves every delta; returns the bases a thin pack left out (to be
    /// appended), each as (kind, bytes) of an object from the repository.
    fn run(mut self) -> Result<Vec<(Kind, Vec<u8>)>, Error> {
        let mut by_offset: HashMap<u64, Vec<usize>> = HashMap::new();
        let mut by_id: HashMap<ObjectId, Vec<usize>> = HashMap::new();
        for (i, e) in self.entries.iter().enumerate() {
            match e.kind {
                EntryKind::OfsDelta { distance } => by_offset.entry(e.offset - distance).or_default().push(i),
                EntryKind::RefDelta { base } => by_id.entry(base).or_default().push(i),
                EntryKind::Whole(_) => {}
            }
        }
        let mut children = Children { by_offset, by_id };
        for root in 0..self.entries.len() {
            let Some((id, kind)) = self.entries[root].id else {
                continue;
            };
            if !matches!(self.entries[root].kind, EntryKind::Whole(_)) {
                continue;
            }
            let kids = children.of(self.entries[root].offset, &id);
            if kids.is_empty() {
                continue;
            }
            let data = self.load(root)?;
            self.resolve(&mut children, data, kind, kids)?;
        }
        // What is left waits on bases outside the pack: a thin pack.
        let mut appended = Vec::new();
        let missing: Vec<ObjectId> = children.by_id.keys().copied().collect();
        let mut buf = Vec::new();
        for base in missing {
            let Some(kids) = children.by_id.remove(&base) else {
                continue;
            };
            let Some(obj) = self.repo.find(&base, &mut buf)? else {
                return Err(Error::BadPack(format!(
                    "a delta's base {base} is neither in the pack nor in the repository"
                )));
            };
            if obj.data.len() as u64 > self.limit {
                return Err(Error::BadPack(format!("the delta base {base} is too large to resolve")));
            }
            let (kind, data) = (obj.kind, obj.data.to_vec());
            appended.push((kind, data.clone()));
            self.resolve(&mut children, data, kind, kids)?;
        }
        if !children.by_offset.is_empty() || self.entries.iter().any(|e| e.id.is_none()) {
            return Err(Error::BadPack("some deltas have no base in the pack".into()));
        }
        Ok(appended)
    }

    /// Resolves the deltas on `data` and, depth first, the deltas on those.
    fn resolve(&mut self, children: &mut Children, data: Vec<u8>, kind: Kind, kids: Vec<usize>) -> Result<(), Error> {
        let mut stack = vec![Frame {
            data,
            kind,
            children: kids,
            next: 0,
        }];
        while let Some(top) = stack.last_mut() {
            let Some(&child) = top.children.get(top.next) else {
                stack.pop();
                continue;
            };
            top.next += 1;
            if self.entries[child].id.is_some() {
                continue; // the same object twice in one pack
            }
            let delta = self.load(child)?;
            let data = apply_delta(&top.data, &delta, self.limit)?;
            let kind = top.kind;
            let mut h = object_hasher(kind, data.len() as u64);
            h.update(&data);
            let id = finish_hash(h)?;
            self.entries[child].id = Some((id, kind));
            let kids = children.of(self.entries[child].offset, &id);
            if !kids.is_empty() {
                stack.push(Frame {
                    data,
                    kind,
                    children: kids,
                    next: 0,
                });
            }
        }
        Ok(())
    }

    /// The inflated data of entry `i`, read back from the file (its
    /// compressed bytes only: most entries are a few hundred bytes).
    fn load(&mut self, i: usize) -> Result<Vec<u8>, Error> {
        let e = &self.entries[i];
        let start = e.offset + u64::from(e.header_len);
        let end = e.end.min(self.end);
        let len = usize::try_from(end.saturating_sub(start)).unwrap_or(usize::MAX);
        let mut input = BufReader::with_capacity(
            len.clamp(1, super::CHUNK),
            Region {
                file: self.file,
                pos: start,
                end,
            },
        );
        self.inflater.inflate_to_vec(&mut input, e.size, self.limit)
    }
}

/// Deltas not yet resolved, by where their base is.
struct Children {
    by_offset: HashMap<u64, Vec<usize>>,
    by_id: HashMap<ObjectId, Vec<usize>>,
}

impl Children {
    /// Takes the deltas on the object at `offset` with id `id`.
    fn of(&mut self, offset: u64, id: &ObjectId) -> Vec<usize> {
        let mut kids = self.by_offset.remove(&offset).unwrap_or_default();
        kids.extend(self.by_id.remove(id).unwrap_or_default());
        kids
    }
}

/// Appends `bases` to the pack as whole objects, corrects its object count
/// and rewrites its checksum; returns the new checksum.
fn complete_thin(file: &File, entries: &mut Vec<Entry>, bases: &[(Kind, Vec<u8>)]) -> Result<ObjectId, Error> {
    let len = file.metadata()?.len();
    let mut offset = len - OID_LEN as u64;
    file.set_len(offset)?;
    for (kind, data) in bases {
        let mut bytes = Vec::new();
        encode_header(EntryKind::Whole(*kind), data.len() as u64, &mut bytes);
        let header_len = bytes.len() as u32;
        let mut z = gix_zlib::stream::deflate::Write::new(bytes, gix_zlib::Compression::DEFAULT);
        z.write_all(data)?;
        z.flush()?;
        let bytes = z.into_inner();
        file.write_all_at(&bytes, offset)?;
        let mut h = object_hasher(*kind, data.len() as u64);
        h.update(data);
        entries.push(Entry {
            offset,
            end: offset + bytes.len() as u64,
            crc: crc32fast::hash(&bytes),
            header_len,
            size: data.len() as u64,
            kind: EntryKind::Whole(*kind),
            id: Some((finish_hash(h)?, *kind)),
        });
        offset += bytes.len() as u64;
    }
    file.write_all_at(&(entries.len() as u32).to_be_bytes(), 8)?;
    let mut sum = gix_hash::hasher(gix_hash::Kind::Sha1);
    let mut input = Region {
        file,
        pos: 0,
        end: offset,
    };
    let mut buf = vec![0u8; super::CHUNK];
    loop {
        let n = input.read(&mut buf)?;
        if n == 0 {
            break;
        }
        sum.update(&buf[..n]);
    }
    let sum = finish_hash(sum)?;
    file.write_all_at(sum.as_bytes(), offset)?;
    Ok(sum)
}

/// Writes a version 2 pack index for `entries`.
fn write_index(path: &Path, entries: &[Entry], pack_sum: &ObjectId) -> Result<(), Error> {
    let mut sorted: Vec<(ObjectId, u32, u64)> = entries
        .iter()
        .map(|e| (e.id.expect("every entry is resolved").0, e.crc, e.offset))
        .collect();
    sorted.sort_unstable_by_key(|a| a.0);
    sorted.dedup_by(|a, b| a.0 == b.0);
    struct Hashing<W> {
        out: W,
        sum: gix_hash::Hasher,
    }
    impl<W: Write> Hashing<W> {
        fn put(&mut self, bytes: &[u8]) -> std::io::Result<()> {
            self.sum.update(bytes);
            self.out.write_all(bytes)
        }
    }
    let tmp = path.with_extension("idx.tmp");
    let mut w = Hashing {
        out: BufWriter::new(File::create(&tmp)?),
        sum: gix_hash::hasher(gix_hash::Kind::Sha1),
    };
    w.put(b"\xfftOc")?;
    w.put(&2u32.to_be_bytes())?;
    let mut fanout = [0u32; 256];
    for (id, ..) in &sorted {
        fanout[id.as_bytes()[0] as usize] += 1;
    }
    let mut total = 0u32;
    for n in fanout {
        total += n;
        w.put(&total.to_be_bytes())?;
    }
    for (id, ..) in &sorted {
        w.put(id.as_bytes())?;
    }
    for (_, crc, _) in &sorted {
        w.put(&crc.to_be_bytes())?;
    }
    let mut large = Vec::new();
    for (.., offset) in &sorted {
        if *offset < 0x8000_0000 {
            w.put(&(*offset as u32).to_be_bytes())?;
        } else {
            w.put(&(0x8000_0000 | large.len() as u32).to_be_bytes())?;
            large.push(*offset);
        }
    }
    for offset in large {
        w.put(&offset.to_be_bytes())?;
    }
    w.put(pack_sum.as_bytes())?;
    let sum = finish_hash(w.sum)?;
    w.out.write_all(sum.as_bytes())?;
    let file = w.out.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}
