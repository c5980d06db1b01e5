//! Reading a repository's history for people: its refs, a commit log, a
//! commit's changes against its first parent, and the tree and blobs at
//! any commit. Everything is read from the object database a piece at a
//! time; a log page costs the commits walked to reach it.

use std::collections::{BTreeMap, BinaryHeap, HashSet};

use gix_hash::ObjectId;
use gix_object::Kind;
use serde::Serialize;

use crate::error::Error;
use crate::repo::Repo;

/// A ref and the commit it leads to (tags peeled).
#[derive(Clone, Debug, Serialize)]
pub struct GitRef {
    pub name: String,
    pub id: String,
    /// The commit, for an annotated tag; else `id`.
    pub commit: String,
}

/// A commit as a log shows it.
#[derive(Clone, Debug, Serialize)]
pub struct GitCommit {
    pub id: String,
    pub parents: Vec<String>,
    pub author: String,
    pub email: String,
    /// Seconds since the epoch (the committer's time).
    pub time: i64,
    pub message: String,
}

impl GitCommit {
    /// The message's first line.
    pub fn summary(&self) -> &str {
        self.message.lines().next().unwrap_or("")
    }
}

/// One path a commit changed.
#[derive(Clone, Debug, Serialize)]
pub struct TreeChange {
    /// `added`, `removed` or `modified`.
    pub change: &'static str,
    pub path: String,
}

/// One entry of a tree at a commit.
#[derive(Clone, Debug, Serialize)]
pub struct GitEntry {
    pub name: String,
    /// `tree`, `blob`, `link` or `commit` (a submodule).
    pub kind: &'static str,
    pub id: String,
    pub mode: u32,
}

/// A blob at a commit, as a page shows it.
#[derive(Clone, Debug)]
pub struct GitBlob {
    pub size: u64,
    /// Its bytes, if it is no larger than asked for.
    pub bytes: Option<Vec<u8>>,
}

/// Most changes one commit lists.
pub const MAX_CHANGES: usize = 5000;

impl Repo {
    /// The refs under `refs/`, by name.
    pub fn list_refs(&self) -> Result<Vec<GitRef>, Error> {
        Ok(self
            .refs()?
            .into_iter()
            .map(|r| GitRef {
                commit: r.peeled.unwrap_or(r.id).to_string(),
                id: r.id.to_string(),
                name: r.name,
            })
            .collect())
    }

    /// The commit `rev` names: a full object id, a ref (`refs/heads/main`),
    /// a branch or a tag name; `None` if nothing here.
    pub fn resolve(&self, rev: &str) -> Result<Option<ObjectId>, Error> {
        if let Ok(id) = ObjectId::from_hex(rev.as_bytes()) {
            let mut buf = Vec::new();
            return Ok(self.commit_info(&id, &mut buf)?.map(|_| id));
        }
        let refs = self.refs()?;
        let wanted = [rev.to_owned(), format!("refs/heads/{rev}"), format!("refs/tags/{rev}")];
        Ok(wanted
            .iter()
            .find_map(|w| refs.iter().find(|r| &r.name == w))
            .map(|r| r.peeled.unwrap_or(r.id)))
    }

    /// The commit `id`, if it is one.
    pub fn commit(&self, id: &ObjectId) -> Result<Option<GitCommit>, Error> {
        let mut buf = Vec::new();
        let Some(data) = self.find(id, &mut buf)? else {
            return Ok(None);
        };
        if data.kind != Kind::Commit {
            return Ok(None);
        }
        let c = gix_object::CommitRef::from_bytes(data.data, gix_hash::Kind::Sha1).map_err(Error::objects)?;
        let author = c.author().map_err(Error::objects)?;
        Ok(Some(GitCommit {
            id: id.to_string(),
            parents: c.parents().map(|p| p.to_string()).collect(),
            author: author.name.to_string(),
            email: author.email.to_string(),
            time: c.time().map(|t| t.seconds).unwrap_or(0),
            message: String::from_utf8_lossy(c.message).into_owned(),
        }))
    }

    /// Commits reachable from `start`, newest first (by committer time),
    /// skipping the first `skip`: at most `limit`.
    pub fn log(&self, start: ObjectId, skip: usize, limit: usize) -> Result<Vec<GitCommit>, Error> {
        let mut buf = Vec::new();
        let mut seen = HashSet::new();
        let mut queue = BinaryHeap::new();
        let mut push = |id: ObjectId, queue: &mut BinaryHeap<(i64, ObjectId)>, buf: &mut Vec<u8>| {
            if seen.insert(id)
                && let Some(info) = self.commit_info(&id, buf)?
            {
                queue.push((info.time, id));
            }
            Ok::<(), Error>(())
        };
        push(start, &mut queue, &mut buf)?;
        let mut out = Vec::new();
        let mut index = 0;
        while let Some((_, id)) = queue.pop() {
            if out.len() == limit {
                break;
            }
            let Some(info) = self.commit_info(&id, &mut buf)? else {
                continue;
            };
            for p in info.parents {
                push(p, &mut queue, &mut buf)?;
            }
            if index >= skip
                && let Some(c) = self.commit(&id)?
            {
                out.push(c);
            }
            index += 1;
        }
        Ok(out)
    }

    /// What commit `id` changed against its first parent (everything, for a
    /// root commit), path by path, at most [`MAX_CHANGES`].
    pub fn changes(&self, id: &ObjectId) -> Result<Vec<TreeChange>, Error> {
        let mut buf = Vec::new();
        let info = self
            .commit_info(id, &mut buf)?
            .ok_or_else(|| Error::Objects(format!("{id} is not a commit here")))?;
        let old = match info.parents.first() {
            Some(p) => self.commit_info(p, &mut buf)?.map(|c| c.tree),
            None => None,
        };
        let mut out = Vec::new();
        self.changed_paths(old, Some(info.tree), String::new(), &mut out)?;
        Ok(out)
    }

    fn changed_paths(
        &self,
        old: Option<ObjectId>,
        new: Option<ObjectId>,
        prefix: String,
        out: &mut Vec<TreeChange>,
    ) -> Result<(), Error> {
        if old == new {
            return Ok(());
        }
        let mut buf = Vec::new();
        let tree = |m: &(gix_object::tree::EntryMode, ObjectId)| (m.0.is_tree(), m.1);
        let a: BTreeMap<String, (bool, ObjectId)> = self
            .tree_entries(old, &mut buf)?
            .into_iter()
            .map(|(k, v)| (k, tree(&v)))
            .collect();
        let b: BTreeMap<String, (bool, ObjectId)> = self
            .tree_entries(new, &mut buf)?
            .into_iter()
            .map(|(k, v)| (k, tree(&v)))
            .collect();
        let names: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
        for name in names {
            if out.len() >= MAX_CHANGES {
                return Ok(());
            }
            let path = format!("{prefix}{name}");
            let (x, y) = (a.get(name), b.get(name));
            match (x, y) {
                (Some(x), Some(y)) if x == y => {}
                (Some((true, x)), Some((true, y))) => {
                    self.changed_paths(Some(*x), Some(*y), format!("{path}/"), out)?
                }
                (Some((false, _)), Some((false, _))) => out.push(TreeChange {
                    change: "modified",
                    path,
                }),
                (x, y) => {
                    // Gone, new, or a file turned directory (or back).
                    match x {
                        Some((true, t)) => self.changed_paths(Some(*t), None, format!("{path}/"), out)?,
                        Some((false, _)) => out.push(TreeChange {
                            change: "removed",
                            path: path.clone(),
                        }),
                        None => {}
                    }
                    match y {
                        Some((true, t)) => self.changed_paths(None, Some(*t), format!("{path}/"), out)?,
                        Some((false, _)) => out.push(TreeChange { change: "added", path }),
                        None => {}
                    }
                }
            }
        }
        Ok(())
    }

    /// The object at `path` (`""`: the root tree) of commit `id`'s tree.
    fn object_at(&self, id: &ObjectId, path: &str) -> Result<Option<(u32, ObjectId)>, Error> {
        let mut buf = Vec::new();
        let Some(info) = self.commit_info(id, &mut buf)? else {
            return Ok(None);
        };
        let mut at = (0o040000, info.tree);
        for part in path.split('/').filter(|p| !p.is_empty()) {
            let data = match self.find(&at.1, &mut buf)? {
                Some(d) if d.kind == Kind::Tree => d,
                _ => return Ok(None),
            };
            let mut found = None;
            for entry in gix_object::TreeRefIter::from_bytes(data.data, gix_hash::Kind::Sha1) {
                let entry = entry.map_err(Error::objects)?;
                if entry.filename == part.as_bytes() {
                    found = Some((u32::from(entry.mode.value()), entry.oid.to_owned()));
                    break;
                }
            }
            match found {
                Some(f) => at = f,
                None => return Ok(None),
            }
        }
        Ok(Some(at))
    }

    /// The entries of the directory `path` in commit `id`'s tree; `None` if
    /// there is no directory there.
    pub fn tree_at(&self, id: &ObjectId, path: &str) -> Result<Option<Vec<GitEntry>>, Error> {
        let Some((mode, tree)) = self.object_at(id, path)? else {
            return Ok(None);
        };
        if mode & 0o170000 != 0o040000 {
            return Ok(None);
        }
        let mut buf = Vec::new();
        let data = self
            .find(&tree, &mut buf)?
            .ok_or_else(|| Error::Objects(format!("tree {tree} is missing")))?;
        let mut out = Vec::new();
        for entry in gix_object::TreeRefIter::from_bytes(data.data, gix_hash::Kind::Sha1) {
            let entry = entry.map_err(Error::objects)?;
            let mode = u32::from(entry.mode.value());
            out.push(GitEntry {
                name: String::from_utf8_lossy(entry.filename).into_owned(),
                kind: if entry.mode.is_tree() {
                    "tree"
                } else if entry.mode.is_commit() {
                    "commit"
                } else if entry.mode.is_link() {
                    "link"
                } else {
                    "blob"
                },
                id: entry.oid.to_string(),
                mode,
            });
        }
        Ok(Some(out))
    }

    /// The blob at `path` in commit `id`'s tree: its size, and its bytes if
    /// it is at most `max` bytes (nothing larger is ever read into memory);
    /// `None` if there is no blob there.
    pub fn blob_at(&self, id: &ObjectId, path: &str, max: u64) -> Result<Option<GitBlob>, Error> {
        let Some((_, blob)) = self.object_at(id, path)? else {
            return Ok(None);
        };
        let header = gix_object::FindHeader::try_header(&self.odb, &blob).map_err(Error::objects)?;
        match header {
            Some(h) if h.kind == Kind::Blob && h.size > max => Ok(Some(GitBlob {
                size: h.size,
                bytes: None,
            })),
            Some(h) if h.kind == Kind::Blob => {
                let mut buf = Vec::new();
                let data = self
                    .find(&blob, &mut buf)?
                    .ok_or_else(|| Error::Objects(format!("blob {blob} is missing")))?;
                Ok(Some(GitBlob {
                    size: h.size,
                    bytes: Some(data.data.to_vec()),
                }))
            }
            _ => Ok(None),
        }
    }
}
