//! The calls behind the commands when they run against a remote node
//! (`alknet --node URL`): each answers the same values the store would, so
//! `commands.rs` prints them the one way it prints everything.

use alknet_fs::{Address, At, BucketPath, Entry};
use alknet_protocols::http_client::{self as http, Chunks, Method, header};
use alknet_protocols::{NodeClient, RemoteError};
use anyhow::{Result, bail};
use serde::Deserialize;
use tokio::io::{AsyncWrite, AsyncWriteExt};

/// Entries asked for per listing page.
const PAGE: usize = 1000;

/// Connects to `url` with the token in `ALKNET_TOKEN`.
pub(crate) async fn connect(url: &str) -> Result<NodeClient> {
    let token = std::env::var("ALKNET_TOKEN").ok().filter(|t| !t.is_empty());
    NodeClient::connect(url, token).await
}

/// `/api/v1/buckets/B/branches/BR[@AT]`: the routes about a branch.
pub(crate) fn branch_api(a: &Address) -> String {
    format!(
        "/api/v1/buckets/{}/branches/{}",
        http::encode_query(&a.bucket),
        branch_segment(a)
    )
}

/// `/api/v1/buckets/B`.
pub(crate) fn bucket_api(bucket: &str) -> String {
    format!("/api/v1/buckets/{}", http::encode_query(bucket))
}

/// `/api/v1/b/B/BR[@AT]/PATH`: a file or directory.
fn file_api(a: &Address, path: &BucketPath) -> String {
    let mut url = format!("/api/v1/b/{}/{}", http::encode_query(&a.bucket), branch_segment(a));
    if !path.is_root() {
        url.push_str(&http::encode_path(path.as_str()));
    }
    url
}

fn branch_segment(a: &Address) -> String {
    let at = match &a.at {
        At::Head => String::new(),
        At::Version(v) => format!("@{v}"),
        At::Snapshot(s) => format!("@{s}"),
    };
    http::encode_query(&format!("{}{at}", a.branch))
}

/// The address `a` with its path replaced.
pub(crate) fn with_path(a: &Address, path: BucketPath) -> Address {
    Address { path, ..a.clone() }
}

fn is_not_found(e: &anyhow::Error) -> bool {
    e.downcast_ref::<RemoteError>().is_some_and(|r| r.status == 404)
}

/// The entry at `a` (`follow`: what a symlink there leads to); `None` if
/// nothing is there.
pub(crate) async fn try_stat(node: &NodeClient, a: &Address, follow: bool) -> Result<Option<Entry>> {
    let query = if follow { "?stat=follow" } else { "?stat" };
    match node
        .json(Method::GET, &format!("{}{query}", file_api(a, &a.path)), None)
        .await
    {
        Ok(e) => Ok(Some(e)),
        Err(e) if is_not_found(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The entry at `a`, which must exist.
pub(crate) async fn stat(node: &NodeClient, a: &Address, follow: bool) -> Result<Entry> {
    let query = if follow { "?stat=follow" } else { "?stat" };
    node.json(Method::GET, &format!("{}{query}", file_api(a, &a.path)), None)
        .await
}

#[derive(Deserialize)]
struct Listing {
    entries: Vec<Entry>,
}

/// One page of the directory at `a`, after the name `after`.
pub(crate) async fn list_page(node: &NodeClient, a: &Address, after: Option<&str>) -> Result<Vec<Entry>> {
    let mut url = format!("{}?limit={PAGE}", file_api(a, &a.path));
    if let Some(after) = after {
        url.push_str(&format!("&after={}", http::encode_query(after)));
    }
    let listing: Listing = node.json(Method::GET, &url, None).await?;
    Ok(listing.entries)
}

/// Writes the file `entry` (at `a`) to `out`, checking the bytes against
/// its BLAKE3 hash as they arrive; `progress` hears the bytes so far.
/// Returns the bytes written.
pub(crate) async fn download(
    node: &NodeClient,
    a: &Address,
    entry: &Entry,
    out: &mut (impl AsyncWrite + Unpin),
    progress: &(dyn Fn(u64) + Sync),
) -> Result<u64> {
    let response = node
        .send(Method::GET, &file_api(a, &a.path), &[], http::empty())
        .await?;
    let etag = response
        .headers()
        .get(header::ETAG)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim_matches('"').to_owned());
    let expected = entry.hash.map(|h| h.to_hex());
    if etag.is_none() || etag != expected {
        bail!("{a}: changed while it was read; run the command again");
    }
    let mut hasher = blake3::Hasher::new();
    let mut body = Chunks::of(response);
    let mut written = 0u64;
    while let Some(chunk) = body.next().await? {
        hasher.update(&chunk);
        out.write_all(&chunk).await?;
        written += chunk.len() as u64;
        progress(written);
    }
    out.flush().await?;
    if Some(hasher.finalize().to_hex().to_string()) != expected || written != entry.size {
        bail!("{a}: the bytes that arrived do not match the file's hash");
    }
    Ok(written)
}

/// Stores `body` as the file at `a` (replacing one there, making its
/// parent directories).
pub(crate) async fn upload(node: &NodeClient, a: &Address, body: http::Body, mode: Option<u32>) -> Result<Entry> {
    // As `put` on the store: missing parent directories are made.
    let mut url = format!("{}?parents=true", file_api(a, &a.path));
    if let Some(m) = mode {
        url.push_str(&format!("&mode={m:o}"));
    }
    let response = node.send(Method::PUT, &url, &[], body).await?;
    http::read_json(response).await
}

/// Removes the entry at `a`: a directory only with `recursive`.
pub(crate) async fn remove(node: &NodeClient, a: &Address, recursive: bool) -> Result<()> {
    let url = format!("{}?recursive={recursive}", file_api(a, &a.path));
    node.json::<serde_json::Value>(Method::DELETE, &url, None).await?;
    Ok(())
}

/// A POST of `body` to `BRANCH_API/what`.
pub(crate) async fn branch_post<T: serde::de::DeserializeOwned>(
    node: &NodeClient,
    a: &Address,
    what: &str,
    body: serde_json::Value,
) -> Result<T> {
    node.json(Method::POST, &format!("{}/{what}", branch_api(a)), Some(&body))
        .await
}

/// Commits on `a`'s branch before version `before`, newest first.
pub(crate) async fn log_page(
    node: &NodeClient,
    a: &Address,
    before: Option<alknet_fs::Version>,
    limit: usize,
) -> Result<Vec<alknet_fs::Commit>> {
    #[derive(Deserialize)]
    struct Page {
        commits: Vec<alknet_fs::Commit>,
    }
    let mut url = format!("{}/log?limit={limit}", branch_api(a));
    if let Some(v) = before {
        url.push_str(&format!("&before={v}"));
    }
    let page: Page = node.json(Method::GET, &url, None).await?;
    Ok(page.commits)
}

/// Commits on `a`'s branch after version `from` (default: now), as they
/// happen, each handed to `each`, until the stream ends.
pub(crate) async fn watch(
    node: &NodeClient,
    a: &Address,
    from: Option<u64>,
    mut each: impl FnMut(alknet_fs::Commit) -> Result<()>,
) -> Result<()> {
    let mut url = format!("{}/watch", branch_api(a));
    if let Some(v) = from {
        url.push_str(&format!("?from={v}"));
    }
    let response = node.send(Method::GET, &url, &[], http::empty()).await?;
    let mut body = Chunks::of(response);
    let mut pending = Vec::new();
    while let Some(chunk) = body.next().await? {
        pending.extend_from_slice(&chunk);
        // Events end with a blank line.
        while let Some(end) = pending.windows(2).position(|w| w == b"\n\n") {
            let event: Vec<u8> = pending.drain(..end + 2).collect();
            let event = String::from_utf8_lossy(&event);
            let field = |name: &str| {
                event
                    .lines()
                    .find_map(|l| l.strip_prefix(name).map(|v| v.trim_start().to_owned()))
            };
            match field("event:").as_deref() {
                Some("commit") => {
                    let data = field("data:").unwrap_or_default();
                    each(serde_json::from_str(&data)?)?;
                }
                Some("error") => {
                    let data: serde_json::Value = serde_json::from_str(&field("data:").unwrap_or_default())?;
                    bail!("{}", data["message"].as_str().unwrap_or("the node ended the watch"));
                }
                _ => {}
            }
        }
    }
    bail!("the node ended the watch")
}
