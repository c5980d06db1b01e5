//! Git LFS locks enforced where they matter: a push that changes a path
//! another user has locked is refused, with the lock's owner in the reason
//! (Gitea leaves this to the client's pre-push hook; a client without the
//! hook, or one that skips it, must not get around a lock).

use std::collections::BTreeMap;

use alknet_fs::{Lock, LockQuery};
use gix_hash::ObjectId;
use gix_object::Kind;
use gix_object::tree::EntryMode;

use crate::Error;
use crate::repo::{Odb, Repo};

/// The most locks a push is checked against (more are refused to push at
/// all: the check must not be skipped).
const MAX_LOCKS: usize = 100_000;

/// An object read from the pushed pack first, then the repository.
fn find(repo: &Repo, received: Option<&Odb>, id: &ObjectId) -> Result<Option<(Kind, Vec<u8>)>, Error> {
    use gix_object::{Exists, Find};
    let mut buf = Vec::new();
    let data = match received.filter(|odb| odb.exists(id)) {
        Some(odb) => odb.try_find(id, &mut buf).map_err(Error::objects)?,
        None => repo.find(id, &mut buf)?,
    };
    Ok(data.map(|d| (d.kind, d.data.to_vec())))
}

fn tree_of_commit(repo: &Repo, received: Option<&Odb>, commit: &ObjectId) -> Result<Option<ObjectId>, Error> {
    match find(repo, received, commit)? {
        Some((Kind::Commit, data)) => Ok(Some(
            gix_object::CommitRef::from_bytes(&data, gix_hash::Kind::Sha1)
                .map_err(Error::objects)?
                .tree(),
        )),
        _ => Ok(None),
    }
}

fn entries(
    repo: &Repo,
    received: Option<&Odb>,
    tree: Option<ObjectId>,
) -> Result<BTreeMap<Vec<u8>, (EntryMode, ObjectId)>, Error> {
    let mut out = BTreeMap::new();
    let Some(tree) = tree else { return Ok(out) };
    let Some((Kind::Tree, data)) = find(repo, received, &tree)? else {
        return Ok(out);
    };
    for entry in gix_object::TreeRefIter::from_bytes(&data, gix_hash::Kind::Sha1) {
        let entry = entry.map_err(Error::objects)?;
        out.insert(entry.filename.to_vec(), (entry.mode, entry.oid.to_owned()));
    }
    Ok(out)
}

/// Whether changing tree `old` into `new` (at `prefix`) touches a path
/// `hit` says is locked; the first such path.
fn touched(
    repo: &Repo,
    received: Option<&Odb>,
    old: Option<ObjectId>,
    new: Option<ObjectId>,
    prefix: &str,
    hit: &dyn Fn(&str, bool) -> bool,
) -> Result<Option<String>, Error> {
    let (old, new) = (entries(repo, received, old)?, entries(repo, received, new)?);
    let names: std::collections::BTreeSet<&Vec<u8>> = old.keys().chain(new.keys()).collect();
    for name in names {
        let (a, b) = (old.get(name), new.get(name));
        if a == b {
            continue;
        }
        let path = format!("{prefix}{}", String::from_utf8_lossy(name));
        let tree = |e: Option<&(EntryMode, ObjectId)>| e.filter(|(m, _)| m.is_tree()).map(|(_, id)| *id);
        let (ta, tb) = (tree(a), tree(b));
        if ta.is_some() || tb.is_some() {
            // A file that became a directory (or the other way) changes the path itself.
            let replaced = (a.is_some() && ta.is_none()) || (b.is_some() && tb.is_none());
            if replaced && hit(&path, false) {
                return Ok(Some(path));
            }
            // Only directories that hold a locked path are walked.
            if hit(&path, true)
                && let Some(found) = touched(repo, received, ta, tb, &format!("{path}/"), hit)?
            {
                return Ok(Some(found));
            }
        } else if hit(&path, false) {
            return Ok(Some(path));
        }
    }
    Ok(None)
}

/// Refuses each branch update of `commands` that changes a path someone
/// other than `pusher` has locked. A new branch is compared with HEAD's.
pub(crate) fn check(
    repo: &Repo,
    received: Option<&Odb>,
    pusher: &str,
    commands: &mut [crate::receive::Command],
) -> Result<(), Error> {
    let query = LockQuery {
        limit: MAX_LOCKS + 1,
        ..LockQuery::default()
    };
    let theirs: Vec<Lock> = repo
        .store()
        .locks(repo.name(), &query)?
        .into_iter()
        .filter(|l| l.owner != pusher)
        .collect();
    if theirs.is_empty() {
        return Ok(());
    }
    let owner_of = |path: &str| theirs.iter().find(|l| l.path == path).map(|l| l.owner.clone());
    // `dir`: does a lock lie below `path`? else: is `path` itself locked?
    let hit = |path: &str, dir: bool| {
        if dir {
            let below = format!("{path}/");
            theirs.iter().any(|l| l.path.starts_with(&below))
        } else {
            theirs.iter().any(|l| l.path == path)
        }
    };
    let head = repo.head()?;
    let head_tip = repo.refs()?.into_iter().find(|r| r.name == head).map(|r| r.id);
    for c in commands.iter_mut() {
        if c.error.is_some() || c.new.is_null() || !c.name.starts_with("refs/heads/") {
            continue;
        }
        if theirs.len() > MAX_LOCKS {
            c.error = Some(format!("more than {MAX_LOCKS} locks: unlock some first"));
            continue;
        }
        let base = if c.old.is_null() { head_tip } else { Some(c.old) };
        let old_tree = match base {
            Some(b) => tree_of_commit(repo, received, &b)?,
            None => None,
        };
        let new_tree = tree_of_commit(repo, received, &c.new)?;
        if let Some(path) = touched(repo, received, old_tree, new_tree, "", &hit)? {
            let owner = owner_of(&path).unwrap_or_default();
            c.error = Some(format!("{path} is locked by {owner} (git lfs locks)"));
        }
    }
    Ok(())
}
