//! A directory as a streamed tar archive (POSIX ustar, with PAX records
//! for long names and large sizes): the walk runs on a blocking thread a
//! page at a time, each file streams from the blob store verified, and
//! memory is a few chunks in flight whatever the tree's size.

use alknet_fs::{BucketPath, Entry, Kind, Tree};
use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, header};
use axum::response::Response;

const BLOCK: usize = 512;

/// `dir` of `tree` as `NAME.tar`, its entries under `NAME/`.
pub(super) fn tar(tree: Tree, dir: BucketPath) -> Response {
    let top = dir.file_name().unwrap_or(tree.bucket()).to_owned();
    let (entries_tx, mut entries_rx) = tokio::sync::mpsc::channel::<alknet_fs::Result<(BucketPath, Entry)>>(64);
    let walker = tree.clone();
    let root = dir.clone();
    tokio::task::spawn_blocking(move || {
        let walk = match walker.walk_iter(&root) {
            Ok(w) => w,
            Err(e) => {
                entries_tx.blocking_send(Err(e)).ok();
                return;
            }
        };
        for item in walk {
            let failed = item.is_err();
            if entries_tx.blocking_send(item).is_err() || failed {
                return;
            }
        }
    });
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(8);
    let prefix_len = dir.as_str().trim_end_matches('/').len();
    let top_name = top.clone();
    tokio::spawn(async move {
        let fail = |e: alknet_fs::Error| Err(std::io::Error::other(e.to_string()));
        if tx.send(Ok(header(&top_name, &Entry::root(), None))).await.is_err() {
            return;
        }
        while let Some(item) = entries_rx.recv().await {
            let (path, entry) = match item {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!("web: archiving: {e}");
                    tx.send(fail(e)).await.ok();
                    return;
                }
            };
            let name = format!("{top_name}{}", &path.as_str()[prefix_len..]);
            let target = entry.target.clone();
            if !matches!(entry.kind, Kind::File | Kind::Dir | Kind::Symlink) {
                continue;
            }
            if tx.send(Ok(header(&name, &entry, target.as_deref()))).await.is_err() {
                return;
            }
            if entry.kind != Kind::File || entry.size == 0 {
                continue;
            }
            let mut read = match tree.read_stream(&entry, 0..entry.size).await {
                Ok(r) => r,
                Err(e) => {
                    tx.send(fail(e)).await.ok();
                    return;
                }
            };
            loop {
                match read.next().await {
                    Ok(Some(bytes)) => {
                        if tx.send(Ok(bytes)).await.is_err() {
                            return;
                        }
                    }
                    Ok(None) => break,
                    // Cut short, never wrong bytes: the client sees a broken archive.
                    Err(e) => {
                        tx.send(fail(e)).await.ok();
                        return;
                    }
                }
            }
            let pad = (BLOCK - (entry.size % BLOCK as u64) as usize) % BLOCK;
            if pad > 0 && tx.send(Ok(Bytes::from(vec![0u8; pad]))).await.is_err() {
                return;
            }
        }
        tx.send(Ok(Bytes::from(vec![0u8; BLOCK * 2]))).await.ok();
    });
    let mut r = Response::new(Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx)));
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/x-tar"));
    let ascii: String = top
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-._".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{ascii}.tar\"")) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    r
}

/// The header block(s) of one entry: a PAX record first when the name,
/// link target or size does not fit ustar's fields.
fn header(name: &str, e: &Entry, target: Option<&str>) -> Bytes {
    let name = if e.kind == Kind::Dir {
        format!("{}/", name.trim_end_matches('/'))
    } else {
        name.to_owned()
    };
    let size = if e.kind == Kind::File { e.size } else { 0 };
    let link = target.unwrap_or("");
    let mut out = Vec::with_capacity(BLOCK * 3);
    let mut pax = String::new();
    if name.len() > 100 {
        pax.push_str(&record("path", &name));
    }
    if link.len() > 100 {
        pax.push_str(&record("linkpath", link));
    }
    if size >= 0o777_7777_7777 {
        pax.push_str(&record("size", &size.to_string()));
    }
    if !pax.is_empty() {
        out.extend_from_slice(&ustar("././@PaxHeader", b'x', pax.len() as u64, 0o644, 0, ""));
        out.extend_from_slice(pax.as_bytes());
        out.resize(out.len().div_ceil(BLOCK) * BLOCK, 0);
    }
    let kind = match e.kind {
        Kind::Dir => b'5',
        Kind::Symlink => b'2',
        _ => b'0',
    };
    let mtime = u64::try_from(e.mtime_ns / 1_000_000_000).unwrap_or(0);
    let short = |s: &str| {
        s.char_indices()
            .take_while(|(i, _)| *i < 100)
            .map(|(_, c)| c)
            .collect::<String>()
    };
    // Long names are cut here; the PAX record before holds them whole.
    let h = ustar(
        &short(&name),
        kind,
        size.min(0o777_7777_7777),
        e.mode & 0o7777,
        mtime,
        &short(link),
    );
    out.extend_from_slice(&h);
    Bytes::from(out)
}

/// One PAX record: `LEN key=value\n`, LEN counting itself.
fn record(key: &str, value: &str) -> String {
    let body = format!(" {key}={value}\n");
    let mut len = body.len() + 1;
    while len.to_string().len() + body.len() != len {
        len += 1;
    }
    format!("{len}{body}")
}

fn ustar(name: &str, kind: u8, size: u64, mode: u32, mtime: u64, link: &str) -> [u8; BLOCK] {
    let mut h = [0u8; BLOCK];
    let put = |h: &mut [u8; BLOCK], at: usize, len: usize, bytes: &[u8]| {
        let n = bytes.len().min(len);
        h[at..at + n].copy_from_slice(&bytes[..n]);
    };
    put(&mut h, 0, 100, name.as_bytes());
    put(&mut h, 100, 8, format!("{mode:07o}\0").as_bytes());
    put(&mut h, 108, 8, b"0000000\0");
    put(&mut h, 116, 8, b"0000000\0");
    put(&mut h, 124, 12, format!("{size:011o}\0").as_bytes());
    put(
        &mut h,
        136,
        12,
        format!("{:011o}\0", mtime.min(0o777_7777_7777)).as_bytes(),
    );
    h[148..156].copy_from_slice(b"        ");
    h[156] = kind;
    put(&mut h, 157, 100, link.as_bytes());
    put(&mut h, 257, 6, b"ustar\0");
    put(&mut h, 263, 2, b"00");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    put(&mut h, 148, 8, format!("{sum:06o}\0 ").as_bytes());
    h
}

#[cfg(test)]
mod tests {
    use super::record;

    #[test]
    fn pax_records_count_their_own_length() {
        assert_eq!(record("path", "a"), "9 path=a\n");
        let long = "x".repeat(95);
        let r = record("path", &long);
        assert_eq!(r.len().to_string(), r.split(' ').next().unwrap_or(""));
    }
}
