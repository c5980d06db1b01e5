//! Writing a fetch's pack by reusing stored entries, as `git pack-objects`
//! does with `--reuse-object --reuse-delta`: each entry's compressed bytes
//! are copied from its pack as they are (their CRC checked against the
//! index on the way), in bounded memory whatever the object's size. A delta
//! keeps its delta when its base is sent too (as an offset when the base
//! went first and the client reads offsets, else by id); a delta whose base
//! the client does not get is sent whole, inflated and compressed again.

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};

use gix_hash::ObjectId;

use super::{EntryKind, Located, Packs, Region, encode_header};
use crate::Error;
use crate::repo::Repo;

/// What a pack held, for the progress line.
pub(crate) struct Sent {
    pub(crate) objects: usize,
    pub(crate) deltas: usize,
}

/// Everything written is hashed for the trailing checksum.
struct Out<'a, W> {
    out: &'a mut W,
    sum: gix_hash::Hasher,
    offset: u64,
}

impl<W: Write> Out<'_, W> {
    fn put(&mut self, bytes: &[u8]) -> Result<(), Error> {
        self.sum.update(bytes);
        self.out.write_all(bytes)?;
        self.offset += bytes.len() as u64;
        Ok(())
    }
}

/// Writes the pack of `ids` (each once, in this order) to `out`.
pub(crate) fn write_pack(repo: &Repo, ids: &[ObjectId], ofs_delta: bool, out: &mut impl Write) -> Result<Sent, Error> {
    let packs = Packs::open(&repo.objects)?;
    let mut order = Vec::with_capacity(ids.len());
    let mut wanted = HashSet::with_capacity(ids.len());
    for id in ids {
        if wanted.insert(*id) {
            order.push(*id);
        }
    }
    let mut w = Out {
        out,
        sum: gix_hash::hasher(gix_hash::Kind::Sha1),
        offset: 0,
    };
    w.put(b"PACK")?;
    w.put(&2u32.to_be_bytes())?;
    w.put(&(order.len() as u32).to_be_bytes())?;
    let mut sent: HashMap<ObjectId, u64> = HashMap::with_capacity(order.len());
    let mut deltas = 0;
    let mut buf = Vec::new();
    let mut scratch = vec![0u8; super::CHUNK];
    for id in &order {
        let start = w.offset;
        let reused = match packs.locate(id) {
            Some(at) => reuse(&packs, &at, start, ofs_delta, &wanted, &sent, &mut w, &mut scratch)?,
            None => Reused::No,
        };
        match reused {
            Reused::Whole => {}
            Reused::Delta => deltas += 1,
            Reused::No => whole(repo, id, &mut w, &mut buf)?,
        }
        sent.insert(*id, start);
    }
    let sum = super::finish_hash(w.sum)?;
    w.out.write_all(sum.as_bytes())?;
    Ok(Sent {
        objects: order.len(),
        deltas,
    })
}

enum Reused {
    Whole,
    Delta,
    /// A delta on a base the client will not get.
    No,
}

/// Copies the stored entry at `at` if it can be sent as it is.
#[allow(clippy::too_many_arguments)]
fn reuse<W: Write>(
    packs: &Packs,
    at: &Located,
    start: u64,
    ofs_delta: bool,
    wanted: &HashSet<ObjectId>,
    sent: &HashMap<ObjectId, u64>,
    w: &mut Out<'_, W>,
    scratch: &mut [u8],
) -> Result<Reused, Error> {
    let header = packs.header(at)?;
    let rebased = match header.kind {
        EntryKind::Whole(_) => None,
        kind => {
            let base = match kind {
                EntryKind::OfsDelta { distance } => {
                    at.offset.checked_sub(distance).and_then(|o| packs.id_at_offset(at, o))
                }
                EntryKind::RefDelta { base } => Some(base),
                EntryKind::Whole(_) => None,
            };
            let Some(base) = base.filter(|b| wanted.contains(b)) else {
                return Ok(Reused::No);
            };
            Some(match sent.get(&base) {
                Some(&offset) if ofs_delta => EntryKind::OfsDelta {
                    distance: start - offset,
                },
                _ => EntryKind::RefDelta { base },
            })
        }
    };
    let end = packs.entry_end(at);
    let p = &packs.packs[at.pack];
    let mut input = Region {
        file: &p.data,
        pos: at.offset,
        end,
    };
    let mut crc = crc32fast::Hasher::new();
    let mut skip = 0usize;
    if let Some(kind) = rebased {
        let mut bytes = Vec::new();
        encode_header(kind, header.size, &mut bytes);
        w.put(&bytes)?;
        skip = header.len;
    }
    loop {
        let n = input.read(scratch)?;
        if n == 0 {
            break;
        }
        crc.update(&scratch[..n]);
        let from = skip.min(n);
        skip -= from;
        w.put(&scratch[from..n])?;
    }
    if input.pos != end {
        return Err(Error::Objects("a stored pack is shorter than its index says".into()));
    }
    if let Some(expected) = p.index.crc32_at_index(at.index)
        && crc.finalize() != expected
    {
        return Err(Error::Objects(format!(
            "the stored entry of {} is corrupt (its CRC does not match the index)",
            p.index.oid_at_index(at.index)
        )));
    }
    Ok(if rebased.is_some() {
        Reused::Delta
    } else {
        Reused::Whole
    })
}

/// Sends object `id` whole: inflated (resolving its delta chain, in memory:
/// deltas are small objects) and compressed again.
fn whole<W: Write>(repo: &Repo, id: &ObjectId, w: &mut Out<'_, W>, buf: &mut Vec<u8>) -> Result<(), Error> {
    let obj = repo
        .find(id, buf)?
        .ok_or_else(|| Error::Objects(format!("object {id} is missing")))?;
    let mut bytes = Vec::new();
    encode_header(EntryKind::Whole(obj.kind), obj.data.len() as u64, &mut bytes);
    let mut z = gix_zlib::stream::deflate::Write::new(bytes, gix_zlib::Compression::DEFAULT);
    z.write_all(obj.data)?;
    z.flush()?;
    w.put(&z.into_inner())
}
