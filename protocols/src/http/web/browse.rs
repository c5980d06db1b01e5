//! Buckets, the file browser, file views, downloads, uploads and the
//! changes a visitor makes from a page (each one commit, like any other).

use std::cmp::Ordering;

use alknet_fs::{Address, BucketPath, Entry, Kind, Level, Store, Tree};
use askama::Template;
use axum::Router;
use axum::extract::{DefaultBodyLimit, Form, Multipart, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use serde::Deserialize;

use super::{Nav, Visitor, Web, WebError, back, check_csrf, render, seg, signed_in, size, upath, when};
use crate::http::api::{ApiError, App, blocking, download};

/// Entries per page of a listing.
pub(super) const PAGE: usize = 200;
/// The most bytes of a text file a page shows.
const PREVIEW_MAX: u64 = 512 * 1024;
/// Files one upload may carry.
const MAX_UPLOAD_FILES: usize = 10_000;

pub(super) fn routes() -> Router<App> {
    Router::new()
        .route("/-/buckets", post(bucket_action))
        .route("/-/b/{spec}", get(browse_root))
        .route("/-/b/{spec}/", get(browse_root))
        .route("/-/b/{spec}/{*path}", get(browse))
        .route("/-/upload/{spec}", post(upload).layer(DefaultBodyLimit::disable()))
        .route("/-/do/{spec}", post(action))
        .route("/-/events/{spec}", get(events))
}

// ---- addresses ------------------------------------------------------------------

/// `bucket@branch[@version]` of a URL, as the one address rule reads it.
pub(super) struct Spec {
    pub(super) bucket: String,
    /// The branch and, after `@`, a version or snapshot.
    pub(super) branch: String,
}

impl Spec {
    pub(super) fn parse(spec: &str) -> Web<Spec> {
        let (bucket, branch) = spec.split_once('@').unwrap_or((spec, alknet_fs::DEFAULT_BRANCH));
        // Checked by the address parser, so the rule stays in one place.
        Address::parse(&format!("{bucket}@{branch}")).map_err(WebError::from)?;
        Ok(Spec {
            bucket: bucket.to_owned(),
            branch: branch.to_owned(),
        })
    }

    /// `path` in this tree, as an address.
    pub(super) fn address(&self, path: &str) -> Result<Address, ApiError> {
        let path = path.trim_start_matches('/');
        Ok(Address::parse(&format!("{}@{}:/{path}", self.bucket, self.branch))?)
    }

    /// Opens `path` in this tree for `who`, needing `need`.
    pub(super) fn open(
        &self,
        store: &Store,
        v: &Visitor,
        path: &str,
        need: Level,
    ) -> Result<(Tree, BucketPath), ApiError> {
        let a = self.address(path)?;
        let tree = store.open_as(&v.who, &a.bucket, &a.branch, &a.at, need)?;
        Ok((tree, a.path))
    }
}

/// The spec of a tree as it was opened (`bucket@branch`, `@V` if a version).
pub(super) fn spec_of(tree: &Tree) -> String {
    match tree.at() {
        Some(v) => format!("{}@{}@{}", tree.bucket(), tree.branch(), v.0),
        None => format!("{}@{}", tree.bucket(), tree.branch()),
    }
}

/// The page of `path` in the tree `spec`.
pub(super) fn href(spec: &str, path: &str) -> String {
    format!("/-/b/{}/{}", seg(spec), upath(path))
}

pub(super) struct Crumb {
    pub(super) name: String,
    pub(super) href: String,
}

/// Breadcrumbs: the root (shown as `root_name`), then each directory.
pub(super) fn crumbs(root_name: &str, path: &BucketPath, link: impl Fn(&str) -> String) -> Vec<Crumb> {
    let mut out = vec![Crumb {
        name: root_name.to_owned(),
        href: link("/"),
    }];
    let mut at = String::new();
    for part in path.as_str().split('/').filter(|p| !p.is_empty()) {
        at.push('/');
        at.push_str(part);
        out.push(Crumb {
            name: part.to_owned(),
            href: link(&format!("{at}/")),
        });
    }
    out
}

// ---- home: buckets and repositories ------------------------------------------------

struct BucketRow {
    name: String,
    kind: String,
    level: String,
    branches: u64,
    bytes: String,
    quota: String,
    href: String,
}

#[derive(Template)]
#[template(path = "home.html")]
struct HomePage {
    title: &'static str,
    nav: Nav,
    buckets: Vec<BucketRow>,
    repos: Vec<String>,
}

pub(super) async fn home(State(app): State<App>, headers: HeaderMap, uri: Uri) -> Web {
    let v = signed_in(&app, &headers, &uri).await?;
    let store = app.store.clone();
    let who = v.who.clone();
    let (buckets, repos) = blocking(move || {
        let mut rows = Vec::new();
        let mut repos = Vec::new();
        for b in store.list_buckets()? {
            let Some(level) = who.level(&store, &b.name)? else {
                continue;
            };
            if b.kind == alknet_fs::REPO_KIND {
                repos.push(b.name.clone());
            }
            let bytes = store.head_bytes(&b.name, alknet_fs::DEFAULT_BRANCH).unwrap_or(0);
            rows.push(BucketRow {
                href: href(&b.name, "/"),
                kind: b.kind,
                level: level.to_string(),
                branches: b.branches,
                bytes: size(bytes),
                quota: b.quota.map(size).unwrap_or_default(),
                name: b.name,
            });
        }
        Ok((rows, repos))
    })
    .await?;
    render(&HomePage {
        title: "Buckets",
        nav: Nav::of(&v),
        buckets,
        repos,
    })
}

#[derive(Deserialize)]
struct BucketForm {
    #[serde(default)]
    csrf: String,
    op: String,
    name: String,
    #[serde(default)]
    quota: String,
    #[serde(default)]
    confirm: String,
}

/// An admin creates or deletes a bucket, or sets its quota.
async fn bucket_action(State(app): State<App>, headers: HeaderMap, uri: Uri, Form(f): Form<BucketForm>) -> Web {
    let v = signed_in(&app, &headers, &uri).await?;
    check_csrf(&v, &f.csrf)?;
    if !v.admin || v.who.read_only {
        return Err(WebError::new(
            StatusCode::FORBIDDEN,
            "Only an admin with a token that may change things manages buckets.",
        ));
    }
    let store = app.store.clone();
    blocking(move || {
        match f.op.as_str() {
            // Repositories are made with their git side (`alknet repo create`).
            "create" => store.create_bucket(&f.name, "drive")?,
            "delete" if f.confirm == f.name => store.delete_bucket(&f.name)?,
            "delete" => {
                return Err(ApiError::bad("type the bucket's name to confirm its deletion"));
            }
            "quota" => {
                let quota = match f.quota.trim() {
                    "" | "none" => None,
                    q => Some(alknet_fs::parse_size(q)?),
                };
                store.set_quota(&f.name, quota)?;
            }
            _ => return Err(ApiError::bad("no such action")),
        }
        Ok(())
    })
    .await?;
    Ok(back("/"))
}

// ---- the browser ------------------------------------------------------------------

#[derive(Deserialize, Default)]
pub(super) struct BrowseQuery {
    pub(super) after: Option<String>,
    pub(super) sort: Option<String>,
    pub(super) desc: Option<String>,
    /// `1`: the bytes (inline where that is safe); `download`: as a file.
    pub(super) raw: Option<String>,
    /// `tar`: a directory as a streamed tar archive.
    pub(super) archive: Option<String>,
}

pub(super) struct Row {
    pub(super) name: String,
    pub(super) href: String,
    pub(super) kind: &'static str,
    pub(super) size: String,
    pub(super) mtime: String,
    pub(super) target: String,
}

pub(super) fn row(e: &Entry, link: String) -> Row {
    Row {
        name: e.name.clone(),
        kind: match e.kind {
            Kind::Dir => "dir",
            Kind::File => "file",
            Kind::Symlink => "link",
            _ => "special",
        },
        size: if e.is_dir() { String::new() } else { size(e.size) },
        mtime: when(e.mtime_ns / 1_000_000),
        target: e.target.clone().unwrap_or_default(),
        href: link,
    }
}

/// How a listing is sorted.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Sort {
    Name,
    Size,
    Mtime,
}

impl Sort {
    pub(super) fn of(q: &BrowseQuery) -> (Sort, bool) {
        let sort = match q.sort.as_deref() {
            Some("size") => Sort::Size,
            Some("mtime") => Sort::Mtime,
            _ => Sort::Name,
        };
        (sort, q.desc.as_deref() == Some("1"))
    }

    fn key(self, e: &Entry) -> i128 {
        match self {
            Sort::Name => 0,
            Sort::Size => i128::from(e.size),
            Sort::Mtime => i128::from(e.mtime_ns),
        }
    }
}

/// One page of directory `dir`: by name ascending straight from the
/// store's index; any other order by one pass over the directory that keeps
/// only the best `limit` entries past the cursor (memory is a page, time
/// one scan). The cursor is `KEY/NAME` (just `NAME` by name).
pub(super) fn page(
    tree: &Tree,
    dir: &Entry,
    sort: Sort,
    desc: bool,
    after: Option<&str>,
    limit: usize,
) -> alknet_fs::Result<(Vec<Entry>, Option<String>)> {
    let cursor_of = |e: &Entry| match sort {
        Sort::Name => e.name.clone(),
        _ => format!("{}/{}", sort.key(e), e.name),
    };
    if sort == Sort::Name && !desc {
        let entries = tree.read_dir_of(dir.id, after, limit)?;
        let next = (entries.len() == limit)
            .then(|| entries.last().map(cursor_of))
            .flatten();
        return Ok((entries, next));
    }
    let cursor: Option<(i128, String)> = after.map(|a| match sort {
        Sort::Name => (0, a.to_owned()),
        _ => {
            let (k, n) = a.split_once('/').unwrap_or(("0", a));
            (k.parse().unwrap_or(0), n.to_owned())
        }
    });
    let order = |a: &Entry, b: &Entry| {
        let o = sort.key(a).cmp(&sort.key(b)).then_with(|| a.name.cmp(&b.name));
        if desc { o.reverse() } else { o }
    };
    let past = |e: &Entry| match &cursor {
        None => true,
        Some((k, n)) => {
            let o = sort.key(e).cmp(k).then_with(|| e.name.as_str().cmp(n));
            (if desc { o.reverse() } else { o }) == Ordering::Greater
        }
    };
    let mut best: Vec<Entry> = Vec::with_capacity(limit * 2 + 1);
    let mut from: Option<String> = None;
    loop {
        let chunk = tree.read_dir_of(dir.id, from.as_deref(), 5000)?;
        let done = chunk.len() < 5000;
        from = chunk.last().map(|e| e.name.clone());
        best.extend(chunk.into_iter().filter(|e| past(e)));
        if best.len() > limit * 2 {
            best.sort_by(order);
            best.truncate(limit + 1);
        }
        if done {
            break;
        }
    }
    best.sort_by(order);
    let more = best.len() > limit;
    best.truncate(limit);
    let next = more.then(|| best.last().map(cursor_of)).flatten();
    Ok((best, next))
}

struct SnapRow {
    label: String,
    href: String,
    selected: bool,
}

struct SortLink {
    label: &'static str,
    href: String,
    current: bool,
}

#[derive(Template)]
#[template(path = "dir.html")]
struct DirPage {
    title: String,
    nav: Nav,
    spec: String,
    bucket: String,
    branch: String,
    at: Option<u64>,
    path: String,
    /// The directory's own name (empty at the root).
    name: String,
    crumbs: Vec<Crumb>,
    entries: Vec<Row>,
    next: Option<String>,
    sorts: Vec<SortLink>,
    branches: Vec<String>,
    snapshots: Vec<SnapRow>,
    writable: bool,
    head_spec: String,
    tar: String,
    events: String,
}

#[derive(Template)]
#[template(path = "file.html")]
struct FilePage {
    title: String,
    nav: Nav,
    spec: String,
    path: String,
    crumbs: Vec<Crumb>,
    name: String,
    size: String,
    bytes: u64,
    mode: String,
    mtime: String,
    hash: String,
    /// The Git LFS object id, for a file checked out from an LFS pointer.
    lfs_oid: Option<String>,
    version: u64,
    raw: String,
    download: String,
    preview: Preview,
    writable: bool,
    read_only: bool,
}

/// What a file page shows of the file itself.
pub(super) enum Preview {
    None,
    /// Highlighted lines (already escaped HTML), and whether they were cut.
    Text(String, bool),
    Image,
    Pdf,
    Audio(&'static str),
    Video(&'static str),
}

async fn browse_root(
    State(app): State<App>,
    headers: HeaderMap,
    uri: Uri,
    Path(spec): Path<String>,
    Query(q): Query<BrowseQuery>,
) -> Web {
    browse_at(app, headers, uri, spec, String::new(), q).await
}

async fn browse(
    State(app): State<App>,
    headers: HeaderMap,
    uri: Uri,
    Path((spec, path)): Path<(String, String)>,
    Query(q): Query<BrowseQuery>,
) -> Web {
    browse_at(app, headers, uri, spec, path, q).await
}

async fn browse_at(app: App, headers: HeaderMap, uri: Uri, spec: String, path: String, q: BrowseQuery) -> Web {
    let v = signed_in(&app, &headers, &uri).await?;
    let spec = Spec::parse(&spec)?;
    let store = app.store.clone();
    let visitor = v.clone();
    let forge = app.forge.clone();
    let (tree, path, entry, level, lfs_oid) = blocking(move || {
        let (tree, path) = spec.open(&store, &visitor, &path, Level::Read)?;
        let (path, entry) = tree.follow(&path, true)?;
        let level = visitor.who.level(&store, tree.bucket())?.unwrap_or(Level::Read);
        let lfs_oid = match entry.hash {
            Some(h) if !entry.is_dir() => forge.lfs_oid_of(tree.bucket(), &h)?,
            _ => None,
        };
        Ok((tree, path, entry, level, lfs_oid))
    })
    .await?;
    let writable = level >= Level::Write && !tree.is_read_only();
    if entry.is_dir() {
        if q.archive.as_deref() == Some("tar") {
            return Ok(super::archive::tar(tree, path));
        }
        return dir_page(app, v, tree, path, entry, writable, q).await;
    }
    if entry.kind != Kind::File {
        return Err(WebError::bad(format!("{path} is not a file or a directory")));
    }
    if let Some(how) = q.raw.as_deref() {
        return raw(&app, &headers, &entry, how == "download").await;
    }
    let spec = spec_of(&tree);
    let preview = preview(&tree, &entry).await;
    let page = FilePage {
        title: format!("{} — {}", entry.name, spec),
        nav: Nav::of(&v),
        crumbs: crumbs(&spec, &path.parent().unwrap_or_else(BucketPath::root), |p| {
            href(&spec, p)
        }),
        raw: format!("{}?raw=1", href(&spec, path.as_str())),
        download: format!("{}?raw=download", href(&spec, path.as_str())),
        name: entry.name.clone(),
        size: size(entry.size),
        bytes: entry.size,
        mode: alknet_fs::display::mode_string(entry.kind, entry.mode),
        mtime: when(entry.mtime_ns / 1_000_000),
        hash: entry.hash.map(|h| h.to_hex()).unwrap_or_default(),
        lfs_oid,
        version: entry.version.0,
        path: path.as_str().to_owned(),
        preview,
        writable,
        read_only: tree.is_read_only(),
        spec,
    };
    render(&page)
}

async fn dir_page(
    app: App,
    v: Visitor,
    tree: Tree,
    path: BucketPath,
    entry: Entry,
    writable: bool,
    q: BrowseQuery,
) -> Web {
    let (sort, desc) = Sort::of(&q);
    let store = app.store.clone();
    let after = q.after.clone();
    let (tree, entries, next, branches, snapshots) = blocking(move || {
        let (entries, next) = page(&tree, &entry, sort, desc, after.as_deref(), PAGE)?;
        let branches = store
            .list_branches(tree.bucket())?
            .into_iter()
            .map(|b| b.name)
            .collect();
        let snapshots = store
            .snapshots(tree.bucket(), tree.branch())?
            .into_iter()
            .map(|s| {
                let at = format!("{}@{}@{}", tree.bucket(), tree.branch(), s.version.0);
                SnapRow {
                    label: format!("{} (v{})", s.name, s.version.0),
                    href: format!("{}/", href(&at, "/").trim_end_matches('/')),
                    selected: tree.at() == Some(s.version),
                }
            })
            .collect();
        Ok((tree, entries, next, branches, snapshots))
    })
    .await?;
    let spec = spec_of(&tree);
    let here = href(&spec, &format!("{}/", path.as_str().trim_end_matches('/')));
    let sort_name = |s: Sort| match s {
        Sort::Name => "name",
        Sort::Size => "size",
        Sort::Mtime => "mtime",
    };
    let sorts = [("Name", Sort::Name), ("Size", Sort::Size), ("Modified", Sort::Mtime)]
        .into_iter()
        .map(|(label, s)| {
            let flip = s == sort && !desc;
            SortLink {
                label,
                href: format!("{here}?sort={}{}", sort_name(s), if flip { "&desc=1" } else { "" }),
                current: s == sort,
            }
        })
        .collect();
    let next = next.map(|n| {
        format!(
            "{here}?sort={}{}&after={}",
            sort_name(sort),
            if desc { "&desc=1" } else { "" },
            seg(&n)
        )
    });
    let rows = entries
        .iter()
        .map(|e| {
            let p = path.join(&e.name);
            let link = if e.is_dir() {
                format!("{}/", href(&spec, p.as_str()))
            } else {
                href(&spec, p.as_str())
            };
            row(e, link)
        })
        .collect();
    let page = DirPage {
        title: format!(
            "{}{}",
            spec,
            if path.is_root() {
                String::new()
            } else {
                format!(":{path}")
            }
        ),
        nav: Nav::of(&v),
        crumbs: crumbs(&spec, &path, |p| href(&spec, p)),
        bucket: tree.bucket().to_owned(),
        branch: tree.branch().to_owned(),
        at: tree.at().map(|v| v.0),
        head_spec: format!("{}@{}", tree.bucket(), tree.branch()),
        path: path.as_str().to_owned(),
        name: path.file_name().unwrap_or_default().to_owned(),
        entries: rows,
        next,
        sorts,
        branches,
        snapshots,
        writable,
        tar: format!("{here}?archive=tar"),
        events: format!("/-/events/{}", seg(&spec)),
        spec,
    };
    render(&page)
}

// ---- file contents ------------------------------------------------------------------

/// The media type a file's name suggests, and how a page may show it.
pub(super) fn media_type(name: &str) -> (&'static str, Option<Preview>) {
    let ext = name
        .rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "png" => ("image/png", Some(Preview::Image)),
        "jpg" | "jpeg" => ("image/jpeg", Some(Preview::Image)),
        "gif" => ("image/gif", Some(Preview::Image)),
        "webp" => ("image/webp", Some(Preview::Image)),
        "svg" => ("image/svg+xml", Some(Preview::Image)),
        "pdf" => ("application/pdf", Some(Preview::Pdf)),
        "mp3" => ("audio/mpeg", Some(Preview::Audio("audio/mpeg"))),
        "ogg" | "oga" => ("audio/ogg", Some(Preview::Audio("audio/ogg"))),
        "wav" => ("audio/wav", Some(Preview::Audio("audio/wav"))),
        "flac" => ("audio/flac", Some(Preview::Audio("audio/flac"))),
        "m4a" => ("audio/mp4", Some(Preview::Audio("audio/mp4"))),
        "mp4" | "m4v" => ("video/mp4", Some(Preview::Video("video/mp4"))),
        "webm" => ("video/webm", Some(Preview::Video("video/webm"))),
        "ogv" => ("video/ogg", Some(Preview::Video("video/ogg"))),
        _ => ("application/octet-stream", None),
    }
}

/// What the file page shows: media by type, text if the first bytes are
/// UTF-8 without NULs (highlighted by its extension), else nothing.
pub(super) async fn preview(tree: &Tree, entry: &Entry) -> Preview {
    if let (_, Some(p)) = media_type(&entry.name) {
        return p;
    }
    let want = entry.size.min(PREVIEW_MAX);
    let Ok(bytes) = tree.read_entry(entry, 0, want).await else {
        return Preview::None;
    };
    if bytes.contains(&0) {
        return Preview::None;
    }
    let text = match std::str::from_utf8(&bytes) {
        Ok(t) => t,
        // A cut in the middle of a character at the end of the window.
        Err(e) if e.valid_up_to() + 4 > bytes.len() && entry.size > want => {
            std::str::from_utf8(&bytes[..e.valid_up_to()]).unwrap_or("")
        }
        Err(_) => return Preview::None,
    };
    Preview::Text(super::highlight::highlight(&entry.name, text), entry.size > want)
}

/// A file's bytes: inline for types a browser shows safely (never as HTML,
/// never running script: a sandbox policy), as an attachment otherwise.
pub(super) async fn raw(app: &App, headers: &HeaderMap, entry: &Entry, attachment: bool) -> Web {
    let hash = entry.hash.ok_or_else(|| WebError::bad("a file without content"))?;
    let mut r = download(app, headers, hash, entry.size).await?;
    let (media, preview) = media_type(&entry.name);
    let text = preview.is_none() && !attachment && looks_textual(&entry.name);
    let inline = !attachment && (preview.is_some() || text);
    let h = r.headers_mut();
    let kind = if text { "text/plain; charset=utf-8" } else { media };
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    let name: String = entry
        .name
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let disposition = format!(
        "{}; filename=\"{name}\"; filename*=UTF-8''{}",
        if inline { "inline" } else { "attachment" },
        super::seg(&entry.name)
    );
    if let Ok(v) = HeaderValue::from_str(&disposition) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    // PDFs need the browser's viewer, which a sandbox would block.
    let policy = if media == "application/pdf" {
        "default-src 'none'; object-src 'self'; plugin-types application/pdf"
    } else {
        "sandbox; default-src 'none'; img-src 'self' data:; media-src 'self'; style-src 'unsafe-inline'"
    };
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(policy));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("private, no-cache"));
    Ok(r)
}

/// Files shown as plain text when opened raw (by name; the bytes are
/// never sniffed into HTML).
fn looks_textual(name: &str) -> bool {
    super::highlight::language(name).is_some()
        || name.rsplit_once('.').is_none_or(|(_, e)| {
            matches!(
                e.to_ascii_lowercase().as_str(),
                "txt" | "md" | "log" | "csv" | "tsv" | "ini" | "cfg" | "conf" | "lock" | "diff" | "patch"
            )
        })
}

// ---- changes ---------------------------------------------------------------------

#[derive(Deserialize)]
struct UploadQuery {
    dir: String,
    #[serde(default)]
    csrf: String,
}

/// Files (and folders, with their relative paths) from a form, as one
/// commit. Each part streams straight into the blob store (hashed as it
/// comes, a few chunks in memory), within the size limit, after the whole
/// body's `Content-Length` passed the disk check; then all of them go in
/// with `Tree::put_blobs`. A `path` field before a `file` part names where
/// it goes below `dir` (what the page's script sends for folders);
/// otherwise the file's own name. A part that breaks off aborts its import
/// and the commit never happens.
async fn upload(
    State(app): State<App>,
    headers: HeaderMap,
    uri: Uri,
    Path(spec): Path<String>,
    Query(q): Query<UploadQuery>,
    mut form: Multipart,
) -> Web {
    let v = signed_in(&app, &headers, &uri).await?;
    check_csrf(&v, &q.csrf)?;
    let spec = Spec::parse(&spec)?;
    let store = app.store.clone();
    let visitor = v.clone();
    let dir = q.dir.clone();
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let (tree, dir) = blocking(move || {
        let opened = spec.open(&store, &visitor, &dir, Level::Write)?;
        if let Some(len) = declared {
            store.check_room(opened.1.as_str(), len)?;
        }
        Ok(opened)
    })
    .await?;
    let max = app.store.limits().max_file_size;
    let mut files: Vec<(BucketPath, alknet_fs::Blob)> = Vec::new();
    let mut named: Option<String> = None;
    while let Some(mut field) = form
        .next_field()
        .await
        .map_err(|e| WebError::bad(format!("the upload broke off: {e}")))?
    {
        match field.name() {
            Some("path") => {
                // Read a chunk at a time: a name is never more than 4096 bytes.
                let mut text = Vec::new();
                while let Some(chunk) = field.chunk().await.map_err(|e| WebError::bad(e.to_string()))? {
                    text.extend_from_slice(&chunk);
                    if text.len() > 4096 {
                        return Err(WebError::bad("a path in the upload is longer than 4096 bytes"));
                    }
                }
                named = Some(String::from_utf8(text).map_err(|_| WebError::bad("a path in the upload is not UTF-8"))?);
            }
            Some("file") => {
                let rel = named
                    .take()
                    .or_else(|| field.file_name().map(str::to_owned))
                    .unwrap_or_default();
                if rel.is_empty() {
                    // An empty file input sends one nameless part.
                    continue;
                }
                if files.len() >= MAX_UPLOAD_FILES {
                    return Err(WebError::bad(format!(
                        "one upload takes at most {MAX_UPLOAD_FILES} files"
                    )));
                }
                let target = relative(&dir, &rel)?;
                let (tx, rx) = tokio::sync::mpsc::channel(8);
                let store = app.store.clone();
                let import = tokio::spawn(async move { store.import_stream(rx).await });
                let mut written = 0u64;
                let fed: Result<(), WebError> = async {
                    while let Some(chunk) = field
                        .chunk()
                        .await
                        .map_err(|e| WebError::bad(format!("the upload broke off: {e}")))?
                    {
                        written += chunk.len() as u64;
                        if max.is_some_and(|m| written > m) {
                            return Err(WebError::new(
                                StatusCode::PAYLOAD_TOO_LARGE,
                                format!("{target}: larger than this node's file size limit"),
                            ));
                        }
                        app.metrics.bytes_in(chunk.len() as u64);
                        if tx.send(Ok(chunk)).await.is_err() {
                            break;
                        }
                    }
                    Ok(())
                }
                .await;
                if let Err(e) = fed {
                    // The import sees the error and keeps nothing.
                    tx.send(Err(std::io::Error::other("the upload was refused"))).await.ok();
                    drop(tx);
                    import.await.ok();
                    return Err(e);
                }
                drop(tx);
                let blob = import
                    .await
                    .map_err(|e| WebError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
                files.push((target, blob));
            }
            _ => {}
        }
    }
    if files.is_empty() {
        return Err(WebError::bad("choose at least one file to upload"));
    }
    let started = std::time::Instant::now();
    let version = tree.put_blobs(&dir, &files).await?;
    app.metrics.commit(started.elapsed());
    let wants_json = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("application/json"));
    if wants_json {
        let body = serde_json::json!({"version": version, "files": files.len()});
        return Ok(axum::Json(body).into_response());
    }
    let spec = spec_of(&tree);
    Ok(back(&format!("{}/", href(&spec, dir.as_str()).trim_end_matches('/'))))
}

/// `rel` below `dir`, by the store's path rule (no `..`, no empty names).
fn relative(dir: &BucketPath, rel: &str) -> Result<BucketPath, ApiError> {
    let rel = rel.trim_start_matches('/');
    Ok(BucketPath::parse(&format!(
        "{}/{rel}",
        dir.as_str().trim_end_matches('/')
    ))?)
}

#[derive(Deserialize)]
struct ActionForm {
    #[serde(default)]
    csrf: String,
    op: String,
    /// The directory or entry the action is about.
    #[serde(default)]
    path: String,
    /// A new name (mkdir, rename, branch, snapshot).
    #[serde(default)]
    name: String,
    #[serde(default)]
    expires: String,
    #[serde(default)]
    password: String,
}

/// mkdir, rename, delete, branch, snapshot, share: one commit each (a share
/// is a link, not a commit), refused for a `read` visitor and on read-only
/// versions by `Store::open_as`.
async fn action(
    State(app): State<App>,
    headers: HeaderMap,
    uri: Uri,
    Path(spec): Path<String>,
    Form(f): Form<ActionForm>,
) -> Web {
    let v = signed_in(&app, &headers, &uri).await?;
    check_csrf(&v, &f.csrf)?;
    let spec = Spec::parse(&spec)?;
    let store = app.store.clone();
    let nav = Nav::of(&v);
    let done = blocking(move || {
        let path = BucketPath::parse(&format!("/{}", f.path.trim_start_matches('/')))?;
        let parent = |p: &BucketPath| p.parent().unwrap_or_else(BucketPath::root);
        let dir_href =
            |tree: &Tree, p: &BucketPath| format!("{}/", href(&spec_of(tree), p.as_str()).trim_end_matches('/'));
        Ok(Done::Back(match f.op.as_str() {
            "mkdir" => {
                let (tree, _) = spec.open(&store, &v, "/", Level::Write)?;
                let new = relative(&path, &f.name)?;
                tree.mkdir(&new, None)?;
                dir_href(&tree, &path)
            }
            "rename" => {
                let (tree, _) = spec.open(&store, &v, "/", Level::Write)?;
                let to = if f.name.starts_with('/') {
                    BucketPath::parse(&f.name)?
                } else {
                    relative(&parent(&path), &f.name)?
                };
                tree.rename(&path, &to, false)?;
                dir_href(&tree, &parent(&to))
            }
            "delete" => {
                let (tree, _) = spec.open(&store, &v, "/", Level::Write)?;
                if path.is_root() {
                    return Err(ApiError::bad("the root of a branch cannot be deleted"));
                }
                if tree.stat(&path)?.is_dir() {
                    tree.remove_all(&path)?;
                } else {
                    tree.remove(&path)?;
                }
                dir_href(&tree, &parent(&path))
            }
            "branch" => {
                store.check_as(&v.who, &spec.bucket, Level::Write)?;
                let src = Address::parse(&format!("{}@{}", spec.bucket, spec.branch))?;
                store.create_branch(&spec.bucket, &f.name, &src.branch, &src.at)?;
                format!(
                    "{}/",
                    href(&format!("{}@{}", spec.bucket, f.name), "/").trim_end_matches('/')
                )
            }
            "snapshot" => {
                let (tree, _) = spec.open(&store, &v, "/", Level::Write)?;
                let name = Some(f.name.trim()).filter(|n| !n.is_empty());
                let version = tree.snapshot(name)?;
                format!(
                    "{}/",
                    href(&format!("{}@{}@{}", tree.bucket(), tree.branch(), version.0), "/").trim_end_matches('/')
                )
            }
            "share" => {
                let lifetime = match f.expires.trim() {
                    "" | "never" => None,
                    e => Some(alknet_fs::parse_lifetime(e)?),
                };
                let (info, secret) = store.create_share(&alknet_fs::NewShare {
                    user: &v.who.user,
                    address: &spec.address(path.as_str())?,
                    lifetime,
                    password: Some(f.password.as_str()).filter(|p| !p.is_empty()),
                })?;
                return Ok(Done::Shared(info, secret));
            }
            _ => return Err(ApiError::bad(format!("no action {:?}", f.op))),
        }))
    })
    .await?;
    match done {
        Done::Back(to) => Ok(back(&to)),
        Done::Shared(info, secret) => super::share::made(&app, &headers, nav, &info, &secret).await,
    }
}

/// Where an action leads.
enum Done {
    Back(String),
    /// A new share link, shown once.
    Shared(alknet_fs::ShareInfo, String),
}

// ---- live refresh -------------------------------------------------------------------

/// The branch's commits as Server-Sent Events (the REST watch stream),
/// for a listing to refresh itself when another writer changes it.
async fn events(State(app): State<App>, headers: HeaderMap, uri: Uri, Path(spec): Path<String>) -> Web {
    let v = signed_in(&app, &headers, &uri).await?;
    let spec = Spec::parse(&spec)?;
    let store = app.store.clone();
    let tree = blocking(move || Ok(spec.open(&store, &v, "/", Level::Read)?.0)).await?;
    Ok(crate::http::api::watch_stream(&app, &headers, tree, None).await?)
}
