//! Packs, byte by byte, in bounded memory.
//!
//! gix-pack holds a whole object (compressed and again inflated) while it
//! indexes a pushed pack or copies an entry into a fetch, and reads stored
//! packs through a memory map: a repository with a 2 GiB file took a push
//! to 6 GiB of RSS and a clone to 4 GiB. This module streams instead:
//!
//! - [`index`] reads a pushed pack as it arrives, writing it to disk and
//!   hashing every whole object on the fly; only deltas are inflated into
//!   memory, to resolve them (git delta-compresses no file larger than its
//!   `core.bigFileThreshold`, 512 MiB), and thin packs are completed;
//! - [`send`] writes a fetch's pack by copying each stored entry's bytes as
//!   they are (CRC-checked against the index), re-basing deltas onto objects
//!   sent before them;
//! - [`Packs`] reads stored objects with `pread`, so publishing streams a
//!   whole blob into the blob store, its git id checked on the way.
//!
//! gix still walks commits and trees (small objects) through its own maps.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::OnceLock;

use gix_hash::ObjectId;
use gix_object::Kind;

use crate::Error;

pub(crate) mod index;
pub(crate) mod send;
#[cfg(test)]
mod tests;

/// The bytes of a SHA-1 object id.
const OID_LEN: usize = 20;
/// Bytes read at once from a pack on disk or off the wire.
const CHUNK: usize = 64 * 1024;

/// What a pack entry's header says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum EntryKind {
    Whole(Kind),
    /// A delta on the entry `distance` bytes before this one.
    OfsDelta {
        distance: u64,
    },
    /// A delta on the object with this id (in the pack or, for a thin
    /// pack, in the repository).
    RefDelta {
        base: ObjectId,
    },
}

/// A parsed entry header.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Header {
    pub(crate) kind: EntryKind,
    /// The inflated size: the object's, or a delta's instructions.
    pub(crate) size: u64,
    /// Bytes of header (with the delta base) before the zlib stream.
    pub(crate) len: usize,
}

fn type_id(kind: Kind) -> u8 {
    match kind {
        Kind::Commit => 1,
        Kind::Tree => 2,
        Kind::Blob => 3,
        Kind::Tag => 4,
    }
}

/// Parses a header from `next`, one byte at a time.
pub(crate) fn read_header(mut next: impl FnMut() -> Result<u8, Error>) -> Result<Header, Error> {
    let bad = |what: &str| Error::BadPack(format!("an entry header is {what}"));
    let mut len = 1;
    let mut c = next()?;
    let ty = (c >> 4) & 7;
    let mut size = u64::from(c & 0x0f);
    let mut shift = 4;
    while c & 0x80 != 0 {
        c = next()?;
        len += 1;
        if shift > 57 {
            return Err(bad("too long"));
        }
        size |= u64::from(c & 0x7f) << shift;
        shift += 7;
    }
    let kind = match ty {
        1 => EntryKind::Whole(Kind::Commit),
        2 => EntryKind::Whole(Kind::Tree),
        3 => EntryKind::Whole(Kind::Blob),
        4 => EntryKind::Whole(Kind::Tag),
        6 => {
            let mut c = next()?;
            len += 1;
            let mut distance = u64::from(c & 0x7f);
            while c & 0x80 != 0 {
                c = next()?;
                len += 1;
                if distance > (u64::MAX >> 8) {
                    return Err(bad("an offset too long"));
                }
                distance = ((distance + 1) << 7) | u64::from(c & 0x7f);
            }
            EntryKind::OfsDelta { distance }
        }
        7 => {
            let mut id = [0u8; OID_LEN];
            for b in &mut id {
                *b = next()?;
            }
            len += OID_LEN;
            EntryKind::RefDelta {
                base: ObjectId::from_bytes_or_panic(&id),
            }
        }
        t => return Err(Error::BadPack(format!("an entry has the unknown type {t}"))),
    };
    Ok(Header { kind, size, len })
}

/// Encodes an entry header.
pub(crate) fn encode_header(kind: EntryKind, size: u64, out: &mut Vec<u8>) {
    let ty = match kind {
        EntryKind::Whole(k) => type_id(k),
        EntryKind::OfsDelta { .. } => 6,
        EntryKind::RefDelta { .. } => 7,
    };
    let mut size = size;
    let mut c = (ty << 4) | (size & 0x0f) as u8;
    size >>= 4;
    while size != 0 {
        out.push(c | 0x80);
        c = (size & 0x7f) as u8;
        size >>= 7;
    }
    out.push(c);
    match kind {
        EntryKind::Whole(_) => {}
        EntryKind::OfsDelta { distance } => {
            let mut buf = [0u8; 10];
            let mut i = buf.len() - 1;
            let mut d = distance;
            buf[i] = (d & 0x7f) as u8;
            d >>= 7;
            while d != 0 {
                d -= 1;
                i -= 1;
                buf[i] = 0x80 | (d & 0x7f) as u8;
                d >>= 7;
            }
            out.extend_from_slice(&buf[i..]);
        }
        EntryKind::RefDelta { base } => out.extend_from_slice(base.as_bytes()),
    }
}

/// The hasher of a git object's id: `<kind> <size>\0` and then its bytes.
pub(crate) fn object_hasher(kind: Kind, size: u64) -> gix_hash::Hasher {
    let mut h = gix_hash::hasher(gix_hash::Kind::Sha1);
    h.update(kind.as_bytes());
    h.update(format!(" {size}\0").as_bytes());
    h
}

pub(crate) fn finish_hash(h: gix_hash::Hasher) -> Result<ObjectId, Error> {
    h.try_finalize().map_err(|e| Error::BadPack(e.to_string()))
}

/// Applies git delta `delta` to `base`; `limit` bounds the result's size.
pub(crate) fn apply_delta(base: &[u8], delta: &[u8], limit: u64) -> Result<Vec<u8>, Error> {
    let bad = |what: &str| Error::BadPack(format!("a delta is corrupt: {what}"));
    let mut pos = 0usize;
    let varint = |pos: &mut usize| -> Result<u64, Error> {
        let mut v = 0u64;
        let mut shift = 0;
        loop {
            let c = *delta.get(*pos).ok_or_else(|| bad("its header is cut short"))?;
            *pos += 1;
            if shift > 63 {
                return Err(bad("its header is too long"));
            }
            v |= u64::from(c & 0x7f) << shift;
            shift += 7;
            if c & 0x80 == 0 {
                return Ok(v);
            }
        }
    };
    let base_size = varint(&mut pos)?;
    let size = varint(&mut pos)?;
    if base_size != base.len() as u64 {
        return Err(bad("its base has another size"));
    }
    if size > limit {
        return Err(Error::BadPack(format!(
            "a delta makes an object of {size} bytes, more than may be held to resolve it ({limit})"
        )));
    }
    let mut out = Vec::with_capacity(size as usize);
    while pos < delta.len() {
        let cmd = delta[pos];
        pos += 1;
        if cmd & 0x80 != 0 {
            let mut field = |bits: u8, first: u8| -> Result<u64, Error> {
                let mut v = 0u64;
                for i in 0..bits {
                    if cmd & (first << i) != 0 {
                        let b = *delta.get(pos).ok_or_else(|| bad("a copy is cut short"))?;
                        pos += 1;
                        v |= u64::from(b) << (8 * i);
                    }
                }
                Ok(v)
            };
            let offset = field(4, 0x01)?;
            let mut len = field(3, 0x10)?;
            if len == 0 {
                len = 0x10000;
            }
            let end = offset.checked_add(len).filter(|e| *e <= base.len() as u64);
            let Some(end) = end else {
                return Err(bad("a copy reaches past its base"));
            };
            out.extend_from_slice(&base[offset as usize..end as usize]);
        } else if cmd != 0 {
            let end = pos + cmd as usize;
            let insert = delta.get(pos..end).ok_or_else(|| bad("an insert is cut short"))?;
            out.extend_from_slice(insert);
            pos = end;
        } else {
            return Err(bad("it holds the reserved instruction 0"));
        }
        if out.len() as u64 > size {
            return Err(bad("it makes more than it said"));
        }
    }
    if out.len() as u64 != size {
        return Err(bad("it makes less than it said"));
    }
    Ok(out)
}

/// A zlib inflater and its output buffer, reused from one entry to the
/// next (a pack holds many small entries: a fresh state and buffer each
/// would cost more than inflating them).
pub(crate) struct Inflater {
    state: gix_zlib::Decompress,
    out: Vec<u8>,
}

impl Inflater {
    pub(crate) fn new() -> Inflater {
        Inflater {
            state: gix_zlib::Decompress::new(),
            out: vec![0u8; CHUNK],
        }
    }

    /// Inflates one zlib stream from `input` (consuming exactly its bytes),
    /// handing the output to `sink` in chunks; returns the inflated length.
    /// Stops with an error once more than `expected` bytes come out.
    pub(crate) fn inflate(
        &mut self,
        input: &mut impl BufRead,
        expected: u64,
        mut sink: impl FnMut(&[u8]) -> Result<(), Error>,
    ) -> Result<u64, Error> {
        use gix_zlib::{FlushDecompress, Status};
        let Inflater { state, out } = self;
        state.reset();
        loop {
            let (status, consumed, written) = {
                let buf = input.fill_buf()?;
                let (in0, out0) = (state.total_in(), state.total_out());
                let flush = if buf.is_empty() {
                    FlushDecompress::Finish
                } else {
                    FlushDecompress::None
                };
                let status = state
                    .decompress(buf, out, flush)
                    .map_err(|e| Error::BadPack(format!("an entry's compressed data is corrupt: {e}")))?;
                if buf.is_empty() && status != Status::StreamEnd && state.total_out() == out0 {
                    return Err(Error::BadPack("the pack ends inside an entry".into()));
                }
                (
                    status,
                    (state.total_in() - in0) as usize,
                    (state.total_out() - out0) as usize,
                )
            };
            input.consume(consumed);
            if state.total_out() > expected {
                return Err(Error::BadPack("an entry inflates to more than its header says".into()));
            }
            sink(&out[..written])?;
            if status == Status::StreamEnd {
                break;
            }
        }
        if state.total_out() != expected {
            return Err(Error::BadPack("an entry inflates to less than its header says".into()));
        }
        Ok(state.total_out())
    }

    /// Inflates one entry's data whole (a delta, or a delta's base).
    pub(crate) fn inflate_to_vec(&mut self, input: &mut impl BufRead, size: u64, limit: u64) -> Result<Vec<u8>, Error> {
        if size > limit {
            return Err(Error::BadPack(format!(
                "an entry of {size} bytes is more than may be held to resolve deltas ({limit})"
            )));
        }
        let mut v = Vec::with_capacity(size as usize);
        self.inflate(input, size, |b| {
            v.extend_from_slice(b);
            Ok(())
        })?;
        Ok(v)
    }
}

/// `[pos, end)` of a file, read with `pread` (no shared cursor, no map).
pub(crate) struct Region<'a> {
    pub(crate) file: &'a File,
    pub(crate) pos: u64,
    pub(crate) end: u64,
}

impl Read for Region<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let want = buf.len().min((self.end - self.pos) as usize);
        if want == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..want], self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// One stored pack: its index (gix-pack maps the small `.idx`) and its data
/// file, read with `pread`.
struct Stored {
    index: gix_pack::index::File,
    data: File,
    /// The length of the entries (the file less its trailing checksum).
    entries_end: u64,
    /// `(offset, index position)` by offset, made at first need.
    by_offset: OnceLock<Vec<(u64, u32)>>,
}

/// Where an object is stored.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Located {
    pack: usize,
    index: u32,
    pub(crate) offset: u64,
}

/// The packs of a repository, as they are on disk when opened.
pub(crate) struct Packs {
    packs: Vec<Stored>,
}

impl Packs {
    /// Opens every `pack/*.idx` (with its `.pack`) under `objects`.
    pub(crate) fn open(objects: &Path) -> Result<Packs, Error> {
        let mut packs = Vec::new();
        let dir = objects.join("pack");
        let mut names: Vec<_> = match std::fs::read_dir(&dir) {
            Ok(rd) => rd
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("pack-") && n.ends_with(".idx"))
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e.into()),
        };
        names.sort();
        for name in names {
            let data_path = dir.join(format!("{}.pack", &name[..name.len() - 4]));
            let Ok(data) = File::open(&data_path) else { continue };
            let index = gix_pack::index::File::at(dir.join(&name), gix_hash::Kind::Sha1).map_err(Error::objects)?;
            let len = data.metadata()?.len();
            packs.push(Stored {
                index,
                data,
                entries_end: len.saturating_sub(OID_LEN as u64),
                by_offset: OnceLock::new(),
            });
        }
        Ok(Packs { packs })
    }

    pub(crate) fn locate(&self, id: &gix_hash::oid) -> Option<Located> {
        self.packs.iter().enumerate().find_map(|(pack, p)| {
            p.index.lookup(id).map(|index| Located {
                pack,
                index,
                offset: p.index.pack_offset_at_index(index),
            })
        })
    }

    fn by_offset(&self, pack: usize) -> &[(u64, u32)] {
        let p = &self.packs[pack];
        p.by_offset.get_or_init(|| {
            let mut v: Vec<(u64, u32)> = (0..p.index.num_objects())
                .map(|i| (p.index.pack_offset_at_index(i), i))
                .collect();
            v.sort_unstable();
            v
        })
    }

    /// Where the entry at `at` ends: the next entry, or the checksum.
    fn entry_end(&self, at: &Located) -> u64 {
        let sorted = self.by_offset(at.pack);
        let i = sorted.partition_point(|(o, _)| *o <= at.offset);
        sorted.get(i).map_or(self.packs[at.pack].entries_end, |(o, _)| *o)
    }

    /// The id of the entry at `offset` of the same pack as `at`.
    fn id_at_offset(&self, at: &Located, offset: u64) -> Option<ObjectId> {
        let sorted = self.by_offset(at.pack);
        let i = sorted.binary_search_by_key(&offset, |(o, _)| *o).ok()?;
        Some(self.packs[at.pack].index.oid_at_index(sorted[i].1).to_owned())
    }

    pub(crate) fn header(&self, at: &Located) -> Result<Header, Error> {
        let p = &self.packs[at.pack];
        let mut buf = [0u8; 64];
        let n = p.data.read_at(&mut buf, at.offset)?;
        let mut i = 0;
        read_header(|| {
            let b = *buf[..n]
                .get(i)
                .ok_or_else(|| Error::BadPack("a stored entry header is cut short".into()))?;
            i += 1;
            Ok(b)
        })
    }

    /// The zlib stream of the entry at `at`, after its header.
    fn stream(&self, at: &Located, header: &Header) -> BufReader<Region<'_>> {
        let p = &self.packs[at.pack];
        BufReader::with_capacity(
            CHUNK,
            Region {
                file: &p.data,
                pos: at.offset + header.len as u64,
                end: p.entries_end,
            },
        )
    }

    /// Streams stored whole object `id` (not a delta) into `sink`, checking
    /// on the way that its bytes hash to `id`. `None`: not stored whole here.
    pub(crate) fn stream_whole(
        &self,
        id: &ObjectId,
        mut sink: impl FnMut(&[u8]) -> Result<(), Error>,
    ) -> Result<Option<(Kind, u64)>, Error> {
        let Some(at) = self.locate(id) else { return Ok(None) };
        let header = self.header(&at)?;
        let EntryKind::Whole(kind) = header.kind else {
            return Ok(None);
        };
        let mut hasher = object_hasher(kind, header.size);
        Inflater::new().inflate(&mut self.stream(&at, &header), header.size, |b| {
            hasher.update(b);
            sink(b)
        })?;
        let got = finish_hash(hasher)?;
        if got != *id {
            return Err(Error::Objects(format!(
                "object {id} is corrupt on disk (its bytes hash to {got})"
            )));
        }
        Ok(Some((kind, header.size)))
    }
}
