//! A branch's log, a version's changes and the difference between two
//! versions or branches, with line diffs of text files.

use alknet_fs::{BucketPath, Change, Entry, Kind, Level, Tree, Version};
use askama::Template;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Uri};
use axum::routing::get;
use serde::Deserialize;

use super::browse::{Spec, href, spec_of};
use super::{Nav, Web, render, seg, signed_in, when};
use crate::http::api::{App, blocking};

/// Commits per page of a log.
const LOG_PAGE: usize = 50;
/// Text diffs shown on one page, and the largest file diffed.
const MAX_TEXT_DIFFS: usize = 20;
const MAX_DIFF_BYTES: u64 = 512 * 1024;

pub(super) fn routes() -> Router<App> {
    Router::new()
        .route("/-/log/{spec}", get(log))
        .route("/-/diff/{spec}", get(diff))
}

struct LogRow {
    version: u64,
    at: String,
    op: String,
    paths: String,
    open: String,
    changes: Option<String>,
}

#[derive(Template)]
#[template(path = "log.html")]
struct LogPage {
    title: String,
    nav: Nav,
    spec: String,
    browse: String,
    commits: Vec<LogRow>,
    next: Option<String>,
    branches: Vec<String>,
}

#[derive(Deserialize)]
struct LogQuery {
    before: Option<u64>,
}

async fn log(
    State(app): State<App>,
    headers: HeaderMap,
    uri: Uri,
    Path(spec): Path<String>,
    Query(q): Query<LogQuery>,
) -> Web {
    let v = signed_in(&app, &headers, &uri).await?;
    let spec = Spec::parse(&spec)?;
    let store = app.store.clone();
    let visitor = v.clone();
    let (tree, mut commits, branches) = blocking(move || {
        let (tree, _) = spec.open(&store, &visitor, "/", Level::Read)?;
        // One more than a page: the last row's changes need its predecessor.
        let commits = store.log_before(&tree, q.before.map(Version), LOG_PAGE + 1)?;
        let branches = store
            .list_branches(tree.bucket())?
            .into_iter()
            .map(|b| b.name)
            .collect();
        Ok((tree, commits, branches))
    })
    .await?;
    let more = commits.len() > LOG_PAGE;
    let head = format!("{}@{}", tree.bucket(), tree.branch());
    let rows = commits
        .iter()
        .enumerate()
        .take(LOG_PAGE)
        .map(|(i, c)| {
            let at = format!("{head}@{}", c.version.0);
            let shown: Vec<&str> = c.paths.iter().take(3).map(String::as_str).collect();
            let mut paths = shown.join(", ");
            if c.paths.len() > 3 {
                paths.push_str(&format!(" and {} more", c.paths.len() - 3));
            }
            LogRow {
                version: c.version.0,
                at: when(c.at_ms),
                op: c.op.clone(),
                paths,
                open: format!("{}/", href(&at, "/").trim_end_matches('/')),
                changes: commits.get(i + 1).map(|prev| {
                    diff_href(
                        &format!("{head}@{}", prev.version.0),
                        &format!("{}@{}", tree.branch(), c.version.0),
                    )
                }),
            }
        })
        .collect();
    commits.truncate(LOG_PAGE);
    let next = more
        .then(|| {
            commits
                .last()
                .map(|c| format!("/-/log/{}?before={}", seg(&head), c.version.0))
        })
        .flatten();
    render(&LogPage {
        title: format!("History of {head}"),
        nav: Nav::of(&v),
        browse: format!("{}/", href(&spec_of(&tree), "/").trim_end_matches('/')),
        spec: head,
        commits: rows,
        next,
        branches,
    })
}

fn diff_href(from: &str, to: &str) -> String {
    format!("/-/diff/{}?to={}", seg(from), seg(to))
}

// ---- differences ---------------------------------------------------------------------

pub(super) struct Line {
    pub(super) kind: &'static str,
    pub(super) text: String,
}

pub(super) struct Hunk {
    pub(super) header: String,
    pub(super) lines: Vec<Line>,
}

pub(super) struct ChangeRow {
    pub(super) change: &'static str,
    pub(super) path: String,
    pub(super) from: String,
    pub(super) href: Option<String>,
    pub(super) hunks: Vec<Hunk>,
    pub(super) note: String,
}

#[derive(Template)]
#[template(path = "diff.html")]
struct DiffPage {
    title: String,
    nav: Nav,
    from: String,
    to: String,
    changes: Vec<ChangeRow>,
    branches: Vec<String>,
    from_href: String,
    to_href: String,
    from_branch: String,
}

#[derive(Deserialize)]
struct DiffQuery {
    /// The newer side: `BRANCH[@VERSION]` of the same bucket (the address
    /// is the older one).
    to: Option<String>,
    /// Or the older side (the address is the newer one): what a "compare
    /// with" picker sends.
    base: Option<String>,
}

async fn diff(
    State(app): State<App>,
    headers: HeaderMap,
    uri: Uri,
    Path(spec): Path<String>,
    Query(q): Query<DiffQuery>,
) -> Web {
    let v = signed_in(&app, &headers, &uri).await?;
    let here = Spec::parse(&spec)?;
    let bucket = here.bucket.clone();
    let other = |side: &str| Spec::parse(&format!("{bucket}@{}", side.trim_start_matches(&format!("{bucket}@"))));
    let (from, to_spec) = match (&q.to, &q.base) {
        (Some(to), _) => (here, other(to)?),
        (None, Some(base)) => (other(base)?, here),
        (None, None) => return Err(super::WebError::bad("compare with what? (?to=BRANCH or ?base=BRANCH)")),
    };
    let store = app.store.clone();
    let visitor = v.clone();
    let (a, b, changes, branches, sides) = blocking(move || {
        let (a, _) = from.open(&store, &visitor, "/", Level::Read)?;
        let (b, _) = to_spec.open(&store, &visitor, "/", Level::Read)?;
        let changes = a.diff(&b)?;
        let branches = store.list_branches(a.bucket())?.into_iter().map(|b| b.name).collect();
        // The two sides of the first modified files, for their line diffs.
        let mut sides = std::collections::HashMap::new();
        for c in &changes {
            let (old, new) = match c {
                Change::Modified { path, kind: Kind::File } => (path, path),
                Change::Renamed {
                    from,
                    to,
                    kind: Kind::File,
                    modified: true,
                } => (from, to),
                _ => continue,
            };
            if sides.len() == MAX_TEXT_DIFFS {
                break;
            }
            let old_entry = a.stat(&BucketPath::parse(old)?)?;
            let new_entry = b.stat(&BucketPath::parse(new)?)?;
            sides.insert(new.clone(), (old_entry, new_entry));
        }
        Ok((a, b, changes, branches, sides))
    })
    .await?;
    let (from, to) = (spec_of(&a), spec_of(&b));
    let from_branch = a.branch().to_owned();
    let mut rows = Vec::with_capacity(changes.len());
    for c in changes {
        let (change, path, old, kind, modified) = match c {
            Change::Added { path, kind } => ("added", path, None, kind, false),
            Change::Removed { path, kind } => ("removed", path, None, kind, false),
            Change::Modified { path, kind } => ("modified", path, None, kind, true),
            Change::Renamed {
                from,
                to,
                kind,
                modified,
            } => ("renamed", to, Some(from), kind, modified),
        };
        let mut row = ChangeRow {
            change,
            href: (change != "removed").then(|| href(&to, &path)),
            from: old.clone().unwrap_or_default(),
            path: path.clone(),
            hunks: Vec::new(),
            note: String::new(),
        };
        if modified && kind == Kind::File {
            match sides.get(&path) {
                Some((old, new)) => match text_diff(&a, old, &b, new).await {
                    Ok(hunks) => row.hunks = hunks,
                    Err(note) => row.note = note,
                },
                None => row.note = format!("(only the first {MAX_TEXT_DIFFS} files are compared line by line)"),
            }
        }
        rows.push(row);
    }
    render(&DiffPage {
        title: format!("{from} → {to}"),
        nav: Nav::of(&v),
        from_href: format!("{}/", href(&from, "/").trim_end_matches('/')),
        to_href: format!("{}/", href(&to, "/").trim_end_matches('/')),
        from,
        to,
        changes: rows,
        branches,
        from_branch,
    })
}

/// The line diff of a text file between two trees, as hunks with three
/// lines of context; `Err` says why there is none (binary, too large).
async fn text_diff(a: &Tree, old: &Entry, b: &Tree, new: &Entry) -> Result<Vec<Hunk>, String> {
    let old = text_of(a, old).await?;
    let new = text_of(b, new).await?;
    let diff = similar::TextDiff::from_lines(&old, &new);
    let mut hunks = Vec::new();
    for group in diff.grouped_ops(3) {
        let (Some(first), Some(last)) = (group.first(), group.last()) else {
            continue;
        };
        let (o, n) = (first.old_range().start, first.new_range().start);
        let (oe, ne) = (last.old_range().end, last.new_range().end);
        let mut lines = Vec::new();
        for op in &group {
            for change in diff.iter_changes(op) {
                let kind = match change.tag() {
                    similar::ChangeTag::Equal => "ctx",
                    similar::ChangeTag::Delete => "del",
                    similar::ChangeTag::Insert => "add",
                };
                let text = change.value().trim_end_matches(['\n', '\r']).to_owned();
                lines.push(Line { kind, text });
            }
        }
        hunks.push(Hunk {
            header: format!("@@ -{},{} +{},{} @@", o + 1, oe - o, n + 1, ne - n),
            lines,
        });
    }
    Ok(hunks)
}

async fn text_of(tree: &Tree, entry: &Entry) -> Result<String, String> {
    if entry.size > MAX_DIFF_BYTES {
        return Err(format!(
            "(larger than {} : not compared line by line)",
            super::size(MAX_DIFF_BYTES)
        ));
    }
    let bytes = tree.read_entry(entry, 0, entry.size).await.map_err(|e| e.to_string())?;
    if bytes.contains(&0) {
        return Err("(binary: not compared line by line)".into());
    }
    String::from_utf8(bytes).map_err(|_| "(not UTF-8 text: not compared line by line)".into())
}
