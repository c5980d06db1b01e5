//! Publishing: the tree of a pushed branch becomes the fs branch
//! `repo@branch`, readable through SFTP and the mount. Each publish applies
//! only what changed since the commit last published (recorded in the ref
//! `alknet/published/<branch>`), as one fs commit; file contents go into the
//! blob store by BLAKE3, so a file pushed with git and one uploaded over SFTP
//! with the same bytes are one blob. A Git LFS pointer whose object the
//! repository has is published as the object's bytes: SFTP, the mount and
//! the REST API show the real file.

use std::collections::BTreeMap;

use alknet_fs::{BucketPath, DEFAULT_BRANCH, Edit, RefUpdate, check_branch_name};
use gix_hash::ObjectId;
use gix_object::Kind;
use gix_object::tree::EntryMode;

use crate::Error;
use crate::pack::{EntryKind, Packs};
use crate::repo::{PUBLISHED_PREFIX, Repo};

/// Imports kept in flight while publishing.
const IMPORTS_IN_FLIGHT: usize = 16;
/// Blobs larger than this are streamed from their pack into the blob store
/// (in chunks, on a blocking thread) rather than read whole.
const STREAM_ABOVE: u64 = 1 << 20;
/// Chunks in flight per streamed blob.
const STREAM_CHUNKS: usize = 4;

/// A change found by comparing two git trees.
enum Change {
    Remove(BucketPath),
    File { path: BucketPath, id: ObjectId, mode: u32 },
    Symlink { path: BucketPath, id: ObjectId },
}

impl Repo {
    /// Publishes `git_ref` (a branch) at `new`, or removes its fs branch when
    /// `new` is `None`. Refs outside `refs/heads/` are not published.
    pub(crate) fn publish(&self, git_ref: &str, new: Option<ObjectId>) -> Result<(), Error> {
        let Some(branch) = git_ref.strip_prefix("refs/heads/") else {
            return Ok(());
        };
        if let Err(e) = check_branch_name("branch name", branch) {
            tracing::warn!(repo = self.name(), "not publishing {git_ref}: {e}");
            return Ok(());
        }
        let lock = self.forge.publish_lock(&self.name);
        let _held = lock.lock().unwrap_or_else(|e| e.into_inner());
        let marker = format!("{PUBLISHED_PREFIX}{branch}");
        let published = self.raw_refs()?.into_iter().find(|(n, _)| *n == marker).map(|(_, v)| v);
        let old_commit = published.as_deref().and_then(|v| ObjectId::from_hex(v.as_bytes()).ok());
        let store = self.store();
        let Some(new) = new else {
            if branch == DEFAULT_BRANCH {
                let tree = store.publish_tree(&self.name, branch)?;
                tree.apply(&[Edit::Remove(BucketPath::root())])?;
            } else {
                match store.delete_branch(&self.name, branch) {
                    Ok(()) | Err(alknet_fs::Error::NoSuchBranch { .. }) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            store.update_refs(
                &self.name,
                &[RefUpdate {
                    name: marker,
                    old: published,
                    new: None,
                }],
            )?;
            return Ok(());
        };
        let mut buf = Vec::new();
        let old_tree = match old_commit {
            Some(c) => self.commit_info(&c, &mut buf)?.map(|c| c.tree),
            None => None,
        };
        let new_tree = self
            .commit_info(&new, &mut buf)?
            .map(|c| c.tree)
            .ok_or_else(|| Error::Objects(format!("{git_ref} points at {new}, which is not a commit")))?;
        let mut changes = Vec::new();
        if old_commit.is_none() {
            // First publish: whatever the branch holds goes.
            changes.push(Change::Remove(BucketPath::root()));
        }
        self.diff_trees(old_tree, Some(new_tree), &BucketPath::root(), &mut changes, &mut buf)?;
        let tree = store.publish_tree(&self.name, branch)?;
        self.forge.block_on(self.apply_changes(&tree, changes))?;
        store.update_refs(
            &self.name,
            &[RefUpdate {
                name: marker,
                old: published,
                new: Some(new.to_string()),
            }],
        )?;
        Ok(())
    }

    /// A tree's entries by name (names that are not UTF-8 are skipped).
    pub(crate) fn tree_entries(
        &self,
        tree: Option<ObjectId>,
        buf: &mut Vec<u8>,
    ) -> Result<BTreeMap<String, (EntryMode, ObjectId)>, Error> {
        let mut out = BTreeMap::new();
        let Some(tree) = tree else { return Ok(out) };
        let data = self
            .find(&tree, buf)?
            .ok_or_else(|| Error::Objects(format!("tree {tree} is missing")))?;
        for entry in gix_object::TreeRefIter::from_bytes(data.data, gix_hash::Kind::Sha1) {
            let entry = entry.map_err(Error::objects)?;
            let Ok(name) = std::str::from_utf8(entry.filename) else {
                tracing::warn!(
                    repo = self.name(),
                    "skipping {:?} in tree {tree}: not UTF-8",
                    entry.filename
                );
                continue;
            };
            out.insert(name.to_owned(), (entry.mode, entry.oid.to_owned()));
        }
        Ok(out)
    }

    /// The changes that turn tree `old` into tree `new` at `at`.
    fn diff_trees(
        &self,
        old: Option<ObjectId>,
        new: Option<ObjectId>,
        at: &BucketPath,
        out: &mut Vec<Change>,
        buf: &mut Vec<u8>,
    ) -> Result<(), Error> {
        let old = self.tree_entries(old, buf)?;
        let new = self.tree_entries(new, buf)?;
        for name in old.keys() {
            if !new.contains_key(name)
                && let Some(path) = publishable(at, name)
            {
                out.push(Change::Remove(path));
            }
        }
        for (name, (mode, id)) in &new {
            let Some(path) = publishable(at, name) else {
                tracing::warn!(
                    repo = self.name(),
                    "not publishing {at} / {name:?}: not a name a file may have"
                );
                continue;
            };
            let before = old.get(name);
            if before == Some(&(*mode, *id)) {
                continue;
            }
            if mode.is_tree() {
                let old_sub = before.filter(|(m, _)| m.is_tree()).map(|(_, id)| *id);
                if before.is_some() && old_sub.is_none() {
                    out.push(Change::Remove(path.clone()));
                }
                self.diff_trees(old_sub, Some(*id), &path, out, buf)?;
            } else if mode.is_link() {
                out.push(Change::Symlink { path, id: *id });
            } else if mode.is_blob() {
                let exec = mode.is_executable();
                out.push(Change::File {
                    path,
                    id: *id,
                    mode: if exec { 0o755 } else { 0o644 },
                });
            } else if before.is_some() {
                // A submodule where something was: the fs shows nothing.
                out.push(Change::Remove(path));
            }
        }
        Ok(())
    }

    fn read_blob(&self, id: &ObjectId) -> Result<Vec<u8>, Error> {
        let mut buf = Vec::new();
        let data = self
            .find(id, &mut buf)?
            .ok_or_else(|| Error::Objects(format!("blob {id} is missing")))?;
        if data.kind != Kind::Blob {
            return Err(Error::Objects(format!("{id} is a {}, not a blob", data.kind)));
        }
        Ok(data.data.to_vec())
    }

    /// Streams blob `id` from its pack into the blob store if it is large and
    /// stored whole; `None` otherwise (read it whole: small, or a delta).
    async fn stream_blob(&self, packs: &std::sync::Arc<Packs>, id: ObjectId) -> Result<Option<alknet_fs::Blob>, Error> {
        let Some(at) = packs.locate(&id) else { return Ok(None) };
        let header = packs.header(&at)?;
        if header.size <= STREAM_ABOVE || !matches!(header.kind, EntryKind::Whole(Kind::Blob)) {
            return Ok(None);
        }
        let (tx, rx) = tokio::sync::mpsc::channel(STREAM_CHUNKS);
        let packs = packs.clone();
        let reader = tokio::task::spawn_blocking(move || {
            let sent = packs.stream_whole(&id, |chunk| {
                tx.blocking_send(Ok(bytes::Bytes::copy_from_slice(chunk)))
                    .map_err(|_| Error::Objects("the blob store stopped taking the blob".into()))
            });
            let failure = match &sent {
                Ok(Some(_)) => return sent,
                Ok(None) => format!("blob {id} is no longer stored whole"),
                Err(e) => e.to_string(),
            };
            // The import sees the error and keeps nothing.
            tx.blocking_send(Err(std::io::Error::other(failure))).ok();
            sent
        });
        let imported = self.store().import_stream(rx).await;
        let read = reader
            .await
            .map_err(|e| Error::Objects(format!("reading blob {id}: {e}")))?;
        // The store's refusal (no space, too large) says more than the cut.
        let blob = imported?;
        read?;
        Ok(Some(blob))
    }

    /// Imports the contents the changes need and commits them as one edit.
    async fn apply_changes(&self, tree: &alknet_fs::Tree, changes: Vec<Change>) -> Result<(), Error> {
        use n0_future::{BufferedStreamExt, StreamExt};
        let store = self.store();
        let packs = std::sync::Arc::new(Packs::open(&self.objects)?);
        let mut blobs = Vec::new();
        {
            let mut imports = n0_future::stream::iter(changes.iter().filter_map(|c| match c {
                Change::File { id, .. } => Some(*id),
                _ => None,
            }))
            .map(|id| {
                let packs = packs.clone();
                async move {
                    if let Some(blob) = self.stream_blob(&packs, id).await? {
                        return Ok(blob);
                    }
                    let bytes = self.read_blob(&id)?;
                    // An LFS pointer whose object is here publishes as the object.
                    if let Some((oid, size)) = crate::lfs::pointer(&bytes)
                        && let Some(object) = self.forge.lfs_object(self.name(), &oid)?
                        && object.size == size
                    {
                        return Ok(store.hold_blob(&object.hash, object.size).await?);
                    }
                    Ok::<_, Error>(store.import_bytes(bytes).await?)
                }
            })
            .buffered_ordered(IMPORTS_IN_FLIGHT);
            while let Some(blob) = imports.next().await {
                blobs.push(blob?);
            }
        }
        let mut blobs = blobs.iter();
        let mut edits = Vec::with_capacity(changes.len());
        for change in changes {
            edits.push(match change {
                Change::Remove(path) => Edit::Remove(path),
                Change::File { path, mode, .. } => Edit::File {
                    path,
                    blob: blobs
                        .next()
                        .ok_or_else(|| Error::Objects("an import went missing".into()))?,
                    mode,
                },
                Change::Symlink { path, id } => {
                    let target = String::from_utf8_lossy(&self.read_blob(&id)?).into_owned();
                    if let Err(e) = alknet_fs::check_symlink_target(&target) {
                        tracing::warn!(repo = self.name(), "not publishing {path}: {e}");
                        continue;
                    }
                    Edit::Symlink { path, target }
                }
            });
        }
        if !edits.is_empty() {
            store.sync_blobs().await?;
            tree.apply(&edits)?;
        }
        Ok(())
    }
}

/// The path of tree entry `name` below `at`, if the store's name rule
/// takes it and git would check it out (`.git` is never a file of a work tree).
fn publishable(at: &BucketPath, name: &str) -> Option<BucketPath> {
    if name.eq_ignore_ascii_case(".git") {
        return None;
    }
    at.child(name).ok()
}
