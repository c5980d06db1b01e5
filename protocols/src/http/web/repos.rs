//! Repository pages: refs, clone URLs, LFS objects and locks, the commit
//! log, a commit's changes, and the tree at any commit. Access is the
//! forge's one rule (`Forge::authorize`, as for a fetch), so a repository
//! the visitor may not fetch looks like a missing one.

use alknet_forge::{GitCommit, GitEntry, Service};
use alknet_fs::LockQuery;
use askama::Template;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::routing::get;
use serde::Deserialize;

use super::browse::{Crumb, href};
use super::{Nav, Visitor, Web, WebError, render, seg, signed_in, size, upath, when};
use crate::http::api::{App, blocking};

const LOG_PAGE: usize = 50;
/// The most bytes of a blob a page shows.
const BLOB_MAX: u64 = 512 * 1024;

pub(super) fn routes() -> Router<App> {
    Router::new()
        .route("/-/r/{repo}", get(repo))
        .route("/-/r/{repo}/log", get(log))
        .route("/-/r/{repo}/commit/{id}", get(commit))
        .route("/-/r/{repo}/tree/{rev}", get(tree_root))
        .route("/-/r/{repo}/tree/{rev}/", get(tree_root))
        .route("/-/r/{repo}/tree/{rev}/{*path}", get(tree))
}

/// The repository, if the visitor may fetch it.
async fn open(app: &App, v: &Visitor, name: &str) -> Web<alknet_forge::Repo> {
    let forge = app.forge.clone();
    let (who, name) = (v.who.clone(), name.to_owned());
    blocking(move || match forge.authorize(Some(&who), &name, Service::UploadPack) {
        Ok(repo) => Ok(forge.open(&repo)?),
        Err(_) => Err(crate::http::api::ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("repository {name:?} does not exist or you have no access to it"),
        )),
    })
    .await
    .map_err(WebError::from)
}

struct CommitRow {
    short: String,
    summary: String,
    author: String,
    when: String,
    href: String,
}

fn commit_row(repo: &str, c: &GitCommit) -> CommitRow {
    CommitRow {
        short: c.id[..c.id.len().min(10)].to_owned(),
        summary: c.summary().to_owned(),
        author: c.author.clone(),
        when: when(c.time.saturating_mul(1000)),
        href: format!("/-/r/{repo}/commit/{}", c.id),
    }
}

struct RefRow {
    name: String,
    short: String,
    log: String,
    tree: String,
}

struct LockRow {
    path: String,
    owner: String,
    when: String,
}

#[derive(Template)]
#[template(path = "repo.html")]
struct RepoPage {
    title: String,
    nav: Nav,
    name: String,
    head: String,
    public: bool,
    packs: usize,
    pack_bytes: String,
    lfs_objects: u64,
    lfs_bytes: String,
    clone_urls: Vec<(&'static str, String)>,
    refs: Vec<RefRow>,
    commits: Vec<CommitRow>,
    locks: Vec<LockRow>,
    files: String,
    log: String,
}

/// How clients clone `name`, from the node's addresses (and the host the
/// visitor used, where the node listens on every address).
fn clone_urls(app: &App, headers: &HeaderMap, v: &Visitor, name: &str) -> Vec<(&'static str, String)> {
    let host_header = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    let host = match host_header.rsplit_once(':') {
        Some((h, p)) if !p.contains(']') => h,
        _ => host_header,
    };
    let mut out = Vec::new();
    let http = app.site.url.clone().unwrap_or_else(|| format!("http://{host_header}"));
    out.push(("HTTP", format!("{}/{name}.git", http.trim_end_matches('/'))));
    if let Some(port) = app.site.ssh_port {
        out.push(("SSH", format!("ssh://{}@{host}:{port}/{name}.git", v.who.user)));
    }
    for q in &app.site.quic {
        out.push(("QUIC", format!("alknet://{q}/{name}")));
    }
    out
}

async fn repo(State(app): State<App>, headers: HeaderMap, uri: Uri, Path(name): Path<String>) -> Web {
    let v = signed_in(&app, &headers, &uri).await?;
    let repo = open(&app, &v, &name).await?;
    let forge = app.forge.clone();
    let store = app.store.clone();
    let repo_name = repo.name().to_owned();
    let (info, refs, recent, locks) = blocking(move || {
        let info = forge.info(repo.name())?;
        let refs = repo.list_refs()?;
        let recent = match repo.resolve(&info.head)? {
            Some(head) => repo.log(head, 0, 10)?,
            None => Vec::new(),
        };
        let locks = store.locks(
            repo.name(),
            &LockQuery {
                limit: 100,
                ..Default::default()
            },
        )?;
        Ok((info, refs, recent, locks))
    })
    .await?;
    let head_branch = info.head.trim_start_matches("refs/heads/").to_owned();
    render(&RepoPage {
        title: format!("Repository {repo_name}"),
        nav: Nav::of(&v),
        clone_urls: clone_urls(&app, &headers, &v, &repo_name),
        refs: refs
            .iter()
            .map(|r| RefRow {
                short: r.commit[..r.commit.len().min(10)].to_owned(),
                log: format!("/-/r/{repo_name}/log?rev={}", seg(&r.name)),
                tree: format!("/-/r/{repo_name}/tree/{}/", r.commit),
                name: r.name.clone(),
            })
            .collect(),
        commits: recent.iter().map(|c| commit_row(&repo_name, c)).collect(),
        locks: locks
            .into_iter()
            .map(|l| LockRow {
                path: l.path,
                owner: l.owner,
                when: when(l.locked_ms),
            })
            .collect(),
        files: format!(
            "{}/",
            href(&format!("{repo_name}@{head_branch}"), "/").trim_end_matches('/')
        ),
        log: format!("/-/r/{repo_name}/log"),
        head: info.head,
        public: info.public,
        packs: info.packs,
        pack_bytes: size(info.pack_bytes),
        lfs_objects: info.lfs_objects,
        lfs_bytes: size(info.lfs_bytes),
        name: repo_name,
    })
}

#[derive(Deserialize)]
struct LogQuery {
    rev: Option<String>,
    skip: Option<usize>,
}

#[derive(Template)]
#[template(path = "repo_log.html")]
struct LogPage {
    title: String,
    nav: Nav,
    name: String,
    rev: String,
    commits: Vec<CommitRow>,
    next: Option<String>,
}

async fn log(
    State(app): State<App>,
    headers: HeaderMap,
    uri: Uri,
    Path(name): Path<String>,
    Query(q): Query<LogQuery>,
) -> Web {
    let v = signed_in(&app, &headers, &uri).await?;
    let repo = open(&app, &v, &name).await?;
    let forge = app.forge.clone();
    let skip = q.skip.unwrap_or(0).min(1_000_000);
    let (rev, commits) = blocking(move || {
        let rev = match q.rev {
            Some(r) => r,
            None => forge.info(repo.name())?.head,
        };
        let commits = match repo.resolve(&rev)? {
            Some(start) => repo.log(start, skip, LOG_PAGE)?,
            None => Vec::new(),
        };
        Ok((rev, commits))
    })
    .await?;
    let name = repo_name_of(&name);
    render(&LogPage {
        title: format!("{name}: log of {rev}"),
        nav: Nav::of(&v),
        next: (commits.len() == LOG_PAGE)
            .then(|| format!("/-/r/{name}/log?rev={}&skip={}", seg(&rev), skip + LOG_PAGE)),
        commits: commits.iter().map(|c| commit_row(&name, c)).collect(),
        rev,
        name,
    })
}

fn repo_name_of(path: &str) -> String {
    alknet_forge::repo_name(path).unwrap_or_else(|_| path.to_owned())
}

struct PathChange {
    change: &'static str,
    path: String,
    href: String,
}

#[derive(Template)]
#[template(path = "repo_commit.html")]
struct CommitPage {
    title: String,
    nav: Nav,
    name: String,
    commit: GitCommit,
    when: String,
    parents: Vec<(String, String)>,
    changes: Vec<PathChange>,
    tree: String,
    capped: bool,
}

async fn commit(State(app): State<App>, headers: HeaderMap, uri: Uri, Path((name, id)): Path<(String, String)>) -> Web {
    let v = signed_in(&app, &headers, &uri).await?;
    let repo = open(&app, &v, &name).await?;
    let (commit, changes) = blocking(move || {
        let Some(oid) = repo.resolve(&id)? else {
            return Err(crate::http::api::ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such commit",
            ));
        };
        let commit = repo
            .commit(&oid)?
            .ok_or_else(|| crate::http::api::ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such commit"))?;
        Ok((commit, repo.changes(&oid)?))
    })
    .await?;
    let name = repo_name_of(&name);
    render(&CommitPage {
        title: format!("{name}: {}", commit.summary()),
        nav: Nav::of(&v),
        when: when(commit.time.saturating_mul(1000)),
        parents: commit
            .parents
            .iter()
            .map(|p| (p[..p.len().min(10)].to_owned(), format!("/-/r/{name}/commit/{p}")))
            .collect(),
        capped: changes.len() >= alknet_forge::MAX_CHANGES,
        changes: changes
            .into_iter()
            .map(|c| PathChange {
                href: format!("/-/r/{name}/tree/{}/{}", commit.id, upath(&c.path)),
                change: c.change,
                path: c.path,
            })
            .collect(),
        tree: format!("/-/r/{name}/tree/{}/", commit.id),
        commit,
        name,
    })
}

struct TreeRow {
    name: String,
    kind: &'static str,
    href: String,
}

#[derive(Template)]
#[template(path = "repo_tree.html")]
struct TreePage {
    title: String,
    nav: Nav,
    name: String,
    rev: String,
    crumbs: Vec<Crumb>,
    entries: Vec<TreeRow>,
    /// A blob: its text (highlighted), or why not, and its size.
    blob: Option<(String, String)>,
}

async fn tree_root(
    State(app): State<App>,
    headers: HeaderMap,
    uri: Uri,
    Path((name, rev)): Path<(String, String)>,
) -> Web {
    tree_at(app, headers, uri, name, rev, String::new()).await
}

async fn tree(
    State(app): State<App>,
    headers: HeaderMap,
    uri: Uri,
    Path((name, rev, path)): Path<(String, String, String)>,
) -> Web {
    tree_at(app, headers, uri, name, rev, path).await
}

async fn tree_at(app: App, headers: HeaderMap, uri: Uri, name: String, rev: String, path: String) -> Web {
    let v = signed_in(&app, &headers, &uri).await?;
    let repo = open(&app, &v, &name).await?;
    let path = path.trim_matches('/').to_owned();
    let at = path.clone();
    let (oid, listing, blob) = blocking(move || {
        let oid = repo
            .resolve(&rev)?
            .ok_or_else(|| crate::http::api::ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such commit"))?;
        if let Some(entries) = repo.tree_at(&oid, &at)? {
            return Ok((oid, Some(entries), None));
        }
        let blob = repo
            .blob_at(&oid, &at, BLOB_MAX)?
            .ok_or_else(|| crate::http::api::ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such path"))?;
        Ok((oid, None, Some(blob)))
    })
    .await?;
    let name = repo_name_of(&name);
    let base = format!("/-/r/{name}/tree/{oid}");
    let link = |p: &str| format!("{base}/{}", upath(p));
    let rel = alknet_fs::BucketPath::parse(&format!("/{path}"))?;
    let short = oid.to_string()[..10].to_owned();
    let crumbs = super::browse::crumbs(&short, &rel, |p| format!("{}/", link(p).trim_end_matches('/')));
    let entries = listing
        .unwrap_or_default()
        .into_iter()
        .map(|e: GitEntry| TreeRow {
            href: if e.kind == "tree" {
                format!("{}/", link(&format!("{path}/{}", e.name)))
            } else {
                link(&format!("{path}/{}", e.name))
            },
            kind: e.kind,
            name: e.name,
        })
        .collect();
    let blob = blob.map(|b| {
        let text = b
            .bytes
            .as_deref()
            .filter(|b| !b.contains(&0))
            .and_then(|b| std::str::from_utf8(b).ok());
        let shown = match text {
            Some(t) => super::highlight::highlight(&path, t),
            None => String::new(),
        };
        (shown, size(b.size))
    });
    render(&TreePage {
        title: format!("{name} at {short}: /{path}"),
        nav: Nav::of(&v),
        rev: oid.to_string(),
        crumbs,
        entries,
        blob,
        name,
    })
}
