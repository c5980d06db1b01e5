//! The pack format pieces, and a structure-aware garbage harness for pack
//! ingest: packs whose zlib streams and checksums are right but whose
//! headers, counts, delta bases and delta instructions are noise, so the
//! rounds reach delta resolution instead of stopping at the checksum.

use std::io::{Cursor, Write};

use gix_object::Kind;

use super::index::index_pack;
use super::{EntryKind, apply_delta, encode_header, read_header};
use crate::tests::garbage::{Noise, rounds};
use crate::{Forge, ForgeConfig};

fn parse(bytes: &[u8]) -> super::Header {
    let mut i = 0;
    read_header(|| {
        let b = bytes[i];
        i += 1;
        Ok(b)
    })
    .expect("a header")
}

#[test]
fn headers_round_trip() {
    let base = gix_hash::ObjectId::from_hex(b"0123456789abcdef0123456789abcdef01234567").expect("hex");
    for size in [0u64, 15, 16, 127, 128, 1 << 20, (1 << 31) + 7, u64::MAX >> 4] {
        for kind in [
            EntryKind::Whole(Kind::Blob),
            EntryKind::Whole(Kind::Commit),
            EntryKind::OfsDelta { distance: 1 },
            EntryKind::OfsDelta { distance: 127 },
            EntryKind::OfsDelta { distance: 128 },
            EntryKind::OfsDelta { distance: 16511 },
            EntryKind::OfsDelta { distance: 1 << 40 },
            EntryKind::RefDelta { base },
        ] {
            let mut bytes = Vec::new();
            encode_header(kind, size, &mut bytes);
            let h = parse(&bytes);
            assert_eq!((h.kind, h.size, h.len), (kind, size, bytes.len()), "{kind:?} {size}");
        }
    }
}

/// A delta in git's encoding: copies from the base and inserts.
fn delta(base_len: usize, ops: &[Result<(u32, u32), &[u8]>], result_len: usize) -> Vec<u8> {
    let mut d = Vec::new();
    for mut v in [base_len as u64, result_len as u64] {
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            d.push(if v == 0 { b } else { b | 0x80 });
            if v == 0 {
                break;
            }
        }
    }
    for op in ops {
        match op {
            Ok((offset, len)) => {
                let mut cmd = 0x80u8;
                let mut args = Vec::new();
                for i in 0..4 {
                    let b = (offset >> (8 * i)) as u8;
                    if b != 0 {
                        cmd |= 1 << i;
                        args.push(b);
                    }
                }
                for i in 0..3 {
                    let b = (len >> (8 * i)) as u8;
                    if b != 0 {
                        cmd |= 0x10 << i;
                        args.push(b);
                    }
                }
                d.push(cmd);
                d.extend_from_slice(&args);
            }
            Err(insert) => {
                d.push(insert.len() as u8);
                d.extend_from_slice(insert);
            }
        }
    }
    d
}

#[test]
fn deltas_apply_and_refuse_what_is_wrong() {
    let base = b"hello, world";
    let good = delta(base.len(), &[Ok((7, 5)), Err(b"! "), Ok((0, 5))], 12);
    assert_eq!(apply_delta(base, &good, 1 << 20).expect("applies"), b"world! hello");
    // A copy of size 0 means 0x10000 bytes.
    let big = vec![7u8; 0x10000];
    let whole = delta(big.len(), &[Ok((0, 0))], 0x10000);
    assert_eq!(apply_delta(&big, &whole, 1 << 20).expect("applies"), big);
    for (why, bad, limit) in [
        ("past the base", delta(base.len(), &[Ok((8, 5))], 5), 1 << 20),
        ("wrong base size", delta(3, &[Ok((0, 3))], 3), 1 << 20),
        ("short result", delta(base.len(), &[Ok((0, 3))], 5), 1 << 20),
        ("long result", delta(base.len(), &[Ok((0, 5))], 3), 1 << 20),
        ("over the limit", delta(base.len(), &[Ok((0, 5))], 5), 4),
        ("reserved 0", [delta(base.len(), &[], 1), vec![0]].concat(), 1 << 20),
        (
            "cut insert",
            [delta(base.len(), &[], 5), vec![5, b'a']].concat(),
            1 << 20,
        ),
    ] {
        assert!(apply_delta(base, &bad, limit).is_err(), "{why}");
    }
}

fn deflate(data: &[u8]) -> Vec<u8> {
    let mut z = gix_zlib::stream::deflate::Write::new(Vec::new(), gix_zlib::Compression::BEST_SPEED);
    z.write_all(data).expect("deflate");
    z.flush().expect("deflate");
    z.into_inner()
}

/// A pack of noise with a right checksum: whole objects, deltas on earlier
/// entries (by offset and by id) with instructions that are sometimes
/// right and sometimes noise, sizes that sometimes lie.
fn noisy_pack(n: &mut Noise) -> Vec<u8> {
    let mut pack = b"PACK\0\0\0\x02".to_vec();
    let entries = n.below(8);
    let claimed = match n.below(8) {
        0 => u32::MAX,
        1 => entries as u32 + 1,
        _ => entries as u32,
    };
    pack.extend_from_slice(&claimed.to_be_bytes());
    let mut offsets = Vec::new();
    let mut ids: Vec<(gix_hash::ObjectId, usize)> = Vec::new();
    for _ in 0..entries {
        let offset = pack.len() as u64;
        let (kind, data) = match n.below(4) {
            0 | 1 => {
                let kind = [Kind::Blob, Kind::Tree, Kind::Commit, Kind::Tag][n.below(4)];
                let len = n.below(64);
                let data = n.bytes(len);
                let mut h = super::object_hasher(kind, data.len() as u64);
                h.update(&data);
                ids.push((h.try_finalize().expect("sha1"), data.len()));
                (EntryKind::Whole(kind), data)
            }
            other => {
                let base_len = ids.last().map_or(n.below(8), |(_, l)| *l);
                let ops_len = n.below(4);
                let ops: Vec<Result<(u32, u32), &[u8]>> = (0..ops_len)
                    .map(|_| {
                        if n.below(2) == 0 {
                            Ok((n.below(base_len + 2) as u32, n.below(base_len + 2) as u32))
                        } else {
                            Err(&b"inserted"[..n.below(8) + 1])
                        }
                    })
                    .collect();
                let mut data = delta(base_len, &ops, n.below(32));
                if n.below(4) == 0 {
                    let len = n.below(16);
                    data = n.bytes(len);
                }
                let kind = if other == 2 && !offsets.is_empty() {
                    let base: u64 = offsets[n.below(offsets.len())];
                    EntryKind::OfsDelta {
                        distance: offset - base,
                    }
                } else if let Some((id, _)) = ids.get(n.below(ids.len() + 1)) {
                    EntryKind::RefDelta { base: *id }
                } else {
                    EntryKind::RefDelta {
                        base: gix_hash::ObjectId::from_bytes_or_panic(&n.bytes(20)),
                    }
                };
                (kind, data)
            }
        };
        let size = if n.below(10) == 0 {
            n.below(100) as u64
        } else {
            data.len() as u64
        };
        encode_header(kind, size, &mut pack);
        pack.extend_from_slice(&deflate(&data));
        offsets.push(offset);
    }
    let mut h = gix_hash::hasher(gix_hash::Kind::Sha1);
    h.update(&pack);
    pack.extend_from_slice(h.try_finalize().expect("sha1").as_bytes());
    match n.below(10) {
        0 => {
            let at = n.below(pack.len());
            pack[at] ^= 1 << n.below(8);
        }
        1 => pack.truncate(n.below(pack.len())),
        _ => {}
    }
    pack
}

#[tokio::test(flavor = "multi_thread")]
async fn pack_ingest_ends_cleanly_on_garbage() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = alknet_fs::Store::open(&dir.path().join("store")).expect("store");
    let forge = Forge::new(store, ForgeConfig::default());
    forge.create("r").expect("repo");
    let rounds = rounds(2000);
    let out = dir.path().join("out");
    let ran = tokio::task::spawn_blocking(move || {
        let repo = forge.open("r").expect("open");
        let mut n = Noise(0x51_7cc1_b727_220a);
        let mut indexed = 0u64;
        for round in 0..rounds {
            std::fs::create_dir_all(&out).expect("out dir");
            let pack = noisy_pack(&mut n);
            let outcome = index_pack(&repo, &mut Cursor::new(&pack), &out, 1 << 20);
            if let Ok(Some(done)) = outcome {
                // What was accepted is a pack git's readers take.
                let index = gix_pack::index::File::at(&done.index, gix_hash::Kind::Sha1)
                    .unwrap_or_else(|e| panic!("round {round}: the index is unreadable: {e}"));
                assert!(index.num_objects() <= done.objects, "round {round}");
                indexed += 1;
            }
            std::fs::remove_dir_all(&out).expect("clear");
        }
        indexed
    });
    let indexed = ran.await.expect("no round panicked");
    // The harness reaches the end: some noise is a valid pack.
    assert!(indexed > 0, "no round produced a valid pack");
}
