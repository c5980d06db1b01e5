//! What automerge 0.12 costs as a file tree's store, at the sizes a bucket
//! has: N entries as one flat map `entry id → row` (the model the research
//! note measured), then
//!
//! 1. an empty peer syncing the whole document (message count and sizes,
//!    the process's peak RSS),
//! 2. edits of a document loaded from disk, in key order and in random
//!    order (time and RSS as they go).
//!
//! Usage: `automerge-bench ENTRIES EDITS` (defaults 1000000 50). Prints
//! one line per figure; RSS from /proc/self/status. Run each size in its
//! own process (peaks do not reset): see tests/bench/automerge.sh.

use std::time::Instant;

use automerge::sync::{State, SyncDoc};
use automerge::transaction::Transactable;
use automerge::{AutoCommit, ROOT};

fn status(field: &str) -> u64 {
    let text = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|kib| kib.parse::<u64>().ok())
        .map_or(0, |kib| kib / 1024)
}

/// A row as the store keeps one: parent, name, kind, hash, size, mode, mtime.
fn row(i: u64) -> Vec<u8> {
    let mut r = Vec::with_capacity(72);
    r.extend_from_slice(&(i / 100).to_le_bytes());
    r.extend_from_slice(format!("file-{i:08}").as_bytes());
    r.push(1);
    r.extend_from_slice(blake3_like(i).as_slice());
    r.extend_from_slice(&(i * 4096).to_le_bytes());
    r.extend_from_slice(&0o644u32.to_le_bytes());
    r
}

fn blake3_like(i: u64) -> [u8; 32] {
    let mut out = [0u8; 32];
    let mut x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for b in &mut out {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    out
}

fn key(i: u64) -> String {
    format!("{:016x}", i)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let n: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(1_000_000);
    let edits: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(50);
    let mode = args.next().unwrap_or_else(|| "all".into());

    let started = Instant::now();
    let mut doc = AutoCommit::new();
    for i in 0..n {
        doc.put(ROOT, key(i), row(i)).expect("put");
        if i % 10_000 == 9_999 {
            doc.commit();
        }
    }
    doc.commit();
    let saved = doc.save();
    println!(
        "entries={n} build_s={:.1} saved_mb={:.1} rss_mib={}",
        started.elapsed().as_secs_f64(),
        saved.len() as f64 / 1e6,
        status("VmRSS:")
    );

    if mode == "all" || mode == "sync" {
        // An empty peer: messages both ways until neither has one.
        let before = status("VmHWM:");
        let started = Instant::now();
        let mut peer = AutoCommit::new();
        let (mut ours, mut theirs) = (State::new(), State::new());
        let (mut messages, mut largest, mut total) = (0u64, 0usize, 0usize);
        loop {
            let mut moved = false;
            if let Some(m) = doc.sync().generate_sync_message(&mut ours) {
                let bytes = m.encode();
                (messages, largest, total) = (messages + 1, largest.max(bytes.len()), total + bytes.len());
                let m = automerge::sync::Message::decode(&bytes).expect("decode");
                peer.sync().receive_sync_message(&mut theirs, m).expect("receive");
                moved = true;
            }
            if let Some(m) = peer.sync().generate_sync_message(&mut theirs) {
                let bytes = m.encode();
                (messages, largest, total) = (messages + 1, largest.max(bytes.len()), total + bytes.len());
                let m = automerge::sync::Message::decode(&bytes).expect("decode");
                doc.sync().receive_sync_message(&mut ours, m).expect("receive");
                moved = true;
            }
            if !moved {
                break;
            }
        }
        println!(
            "sync_to_empty_peer s={:.1} messages={messages} largest_mb={:.1} total_mb={:.1} peak_rss_mib={} (before {before})",
            started.elapsed().as_secs_f64(),
            largest as f64 / 1e6,
            total as f64 / 1e6,
            status("VmHWM:")
        );
        drop(peer);
    }

    if mode == "all" || mode == "edit" {
        drop(doc);
        for (order, label) in [(false, "ascending"), (true, "random")] {
            let mut loaded = AutoCommit::load(&saved).expect("load");
            let base = status("VmRSS:");
            let started = Instant::now();
            let mut x = 0x2545_F491_4F6C_DD1Du64;
            for e in 0..edits {
                let i = if order {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x % n
                } else {
                    e * (n / edits.max(1))
                };
                loaded.put(ROOT, key(i), row(i + 1)).expect("edit");
                loaded.commit();
                if (e + 1) % (edits / 5).max(1) == 0 {
                    println!(
                        "edit_loaded order={label} edits={} ms_per_edit={:.1} rss_mib={} (after load {base})",
                        e + 1,
                        started.elapsed().as_secs_f64() * 1000.0 / (e + 1) as f64,
                        status("VmRSS:")
                    );
                }
            }
        }
    }
}
