//! Which commits and objects a fetch sends: a walk from the wants that stops
//! at what the client has, at the depth, date or refs it asked to stop at,
//! and at its shallow boundary; then the trees and blobs those commits add,
//! minus what the client's commits already hold, minus what its filter omits.

use std::collections::{HashSet, VecDeque};

use gix_hash::ObjectId;
use gix_object::Kind;

use crate::Error;
use crate::repo::Repo;

/// An object filter (`git clone --filter=…`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum Filter {
    #[default]
    None,
    /// `blob:none`
    NoBlobs,
    /// `blob:limit=N`: blobs of at least N bytes are omitted.
    BlobLimit(u64),
    /// `tree:N`: trees and blobs N or more levels below a root tree omitted.
    TreeDepth(u64),
}

impl Filter {
    pub(crate) fn parse(spec: &str) -> Result<Filter, Error> {
        let bad = || {
            Error::Protocol(format!(
                "filter {spec:?} is not supported (blob:none, blob:limit=N, tree:N are)"
            ))
        };
        if spec == "blob:none" {
            return Ok(Filter::NoBlobs);
        }
        if let Some(n) = spec.strip_prefix("blob:limit=") {
            let (digits, unit) = match n.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
                Some((i, _)) => n.split_at(i),
                None => (n, ""),
            };
            let base: u64 = digits.parse().map_err(|_| bad())?;
            let scale: u64 = match unit.to_ascii_lowercase().as_str() {
                "" => 1,
                "k" => 1 << 10,
                "m" => 1 << 20,
                "g" => 1 << 30,
                _ => return Err(bad()),
            };
            return Ok(Filter::BlobLimit(base.saturating_mul(scale)));
        }
        if let Some(n) = spec.strip_prefix("tree:") {
            return Ok(Filter::TreeDepth(n.parse().map_err(|_| bad())?));
        }
        Err(bad())
    }
}

/// What the client asked for, parsed.
#[derive(Debug, Default)]
pub(crate) struct Request {
    pub(crate) wants: Vec<ObjectId>,
    /// The client's haves that we have too.
    pub(crate) common: Vec<ObjectId>,
    /// Commits the client has without their parents.
    pub(crate) client_shallow: HashSet<ObjectId>,
    pub(crate) depth: Option<u32>,
    /// `depth` counts from the client's shallow boundary, not from the wants.
    pub(crate) relative: bool,
    /// Unix seconds: commits older than this are not sent.
    pub(crate) since: Option<i64>,
    /// Commits reachable from these are not sent.
    pub(crate) not: Vec<ObjectId>,
    pub(crate) filter: Filter,
}

impl Request {
    pub(crate) fn deepens(&self) -> bool {
        self.depth.is_some() || self.since.is_some() || !self.not.is_empty()
    }
}

/// The outcome: the objects of the pack, and the client's new shallow
/// boundary.
#[derive(Debug, Default)]
pub(crate) struct Plan {
    pub(crate) objects: Vec<ObjectId>,
    pub(crate) commits: usize,
    /// Sent commits whose parents were not sent: the client's new boundary.
    pub(crate) shallow: Vec<ObjectId>,
    /// Commits of the client's old boundary whose parents are now sent.
    pub(crate) unshallow: Vec<ObjectId>,
}

pub(crate) struct CommitInfo {
    pub(crate) tree: ObjectId,
    pub(crate) parents: Vec<ObjectId>,
    pub(crate) time: i64,
}

impl Repo {
    /// A commit's tree, parents and time; `None` if `id` is no commit here.
    pub(crate) fn commit_info(&self, id: &ObjectId, buf: &mut Vec<u8>) -> Result<Option<CommitInfo>, Error> {
        let Some(data) = self.find(id, buf)? else {
            return Ok(None);
        };
        if data.kind != Kind::Commit {
            return Ok(None);
        }
        let c = gix_object::CommitRef::from_bytes(data.data, gix_hash::Kind::Sha1).map_err(Error::objects)?;
        Ok(Some(CommitInfo {
            tree: c.tree(),
            parents: c.parents().collect(),
            time: c.time().map(|t| t.seconds).unwrap_or(0),
        }))
    }

    /// Everything reachable from `starts` through parents, not expanding the
    /// parents of `stop` commits.
    fn reachable(&self, starts: &[ObjectId], stop: &HashSet<ObjectId>) -> Result<HashSet<ObjectId>, Error> {
        let mut seen: HashSet<ObjectId> = HashSet::new();
        let mut queue: Vec<ObjectId> = starts.to_vec();
        let mut buf = Vec::new();
        while let Some(id) = queue.pop() {
            if !seen.insert(id) {
                continue;
            }
            if stop.contains(&id) {
                continue;
            }
            if let Some(info) = self.commit_info(&id, &mut buf)? {
                queue.extend(info.parents);
            }
        }
        Ok(seen)
    }

    /// Works out the pack for `req`.
    pub(crate) fn plan(&self, req: &Request) -> Result<Plan, Error> {
        let mut buf = Vec::new();
        // What the client has: the commits its haves reach, down to its
        // shallow boundary (it lacks what lies beyond).
        let had = self.reachable(&req.common, &req.client_shallow)?;
        let excluded = if req.not.is_empty() {
            HashSet::new()
        } else {
            self.reachable(&req.not, &HashSet::new())?
        };
        // A client with a shallow boundary may now want what lies beyond it,
        // reachable only through commits it has: walk through those.
        let walk_through_had = !req.client_shallow.is_empty();

        let mut plan = Plan::default();
        let mut tags = Vec::new();
        let mut commits = Vec::new();
        let mut edges: Vec<ObjectId> = Vec::new();
        let mut visited: HashSet<ObjectId> = HashSet::new();
        let mut queue: VecDeque<(ObjectId, u32)> = VecDeque::new();
        for want in &req.wants {
            // Peel wanted tags: the tag objects go in the pack.
            let mut id = *want;
            while let Some(data) = self.find(&id, &mut buf)? {
                if data.kind != Kind::Tag {
                    break;
                }
                if !tags.contains(&id) {
                    tags.push(id);
                }
                id = gix_object::TagRefIter::from_bytes(data.data, gix_hash::Kind::Sha1)
                    .target_id()
                    .map_err(Error::objects)?;
            }
            match self.find(&id, &mut buf)?.map(|d| d.kind) {
                Some(Kind::Commit) => queue.push_back((id, if req.relative { 0 } else { 1 })),
                Some(_) => plan.objects.push(id),
                None => return Err(Error::Protocol(format!("want {id}: no such object"))),
            }
        }
        while let Some((id, depth)) = queue.pop_front() {
            if !visited.insert(id) {
                continue;
            }
            let is_had = had.contains(&id);
            if is_had && !walk_through_had {
                continue;
            }
            let info = self
                .commit_info(&id, &mut buf)?
                .ok_or_else(|| Error::Objects(format!("commit {id} is missing")))?;
            if !is_had {
                commits.push((id, info.tree));
            }
            // Relative: the client's boundary is depth 1; what lies above it
            // (depth 0) it has already and no limit applies.
            let depth = if req.relative && req.client_shallow.contains(&id) {
                1
            } else {
                depth
            };
            let limit = req.depth.map(|d| if req.relative { d + 1 } else { d });
            let at_depth = depth > 0 && limit.is_some_and(|d| depth >= d);
            let mut cut = at_depth && !info.parents.is_empty();
            if !at_depth {
                for p in &info.parents {
                    if excluded.contains(p) {
                        cut = true;
                        continue;
                    }
                    if let Some(since) = req.since
                        && self.commit_info(p, &mut buf)?.is_some_and(|pi| pi.time < since)
                    {
                        cut = true;
                        continue;
                    }
                    if had.contains(p) && !walk_through_had {
                        edges.push(*p);
                    }
                    queue.push_back((*p, if depth == 0 { 0 } else { depth + 1 }));
                }
            }
            if cut {
                plan.shallow.push(id);
            } else if req.client_shallow.contains(&id) {
                plan.unshallow.push(id);
            }
        }
        plan.commits = commits.len();
        plan.objects.extend(tags);
        plan.objects.extend(commits.iter().map(|(c, _)| *c));
        if req.filter == Filter::TreeDepth(0) {
            return Ok(plan);
        }
        // Trees and blobs: skip everything the client's edge commits hold.
        let mut seen: HashSet<ObjectId> = HashSet::new();
        for edge in edges {
            if let Some(info) = self.commit_info(&edge, &mut buf)? {
                self.mark_tree(info.tree, &mut seen, &mut buf)?;
            }
        }
        for (_, tree) in &commits {
            self.add_tree(*tree, 0, req.filter, &mut seen, &mut plan.objects, &mut buf)?;
        }
        Ok(plan)
    }

    /// Marks a tree and everything under it as held by the client.
    fn mark_tree(&self, tree: ObjectId, seen: &mut HashSet<ObjectId>, buf: &mut Vec<u8>) -> Result<(), Error> {
        let mut stack = vec![tree];
        while let Some(id) = stack.pop() {
            if !seen.insert(id) {
                continue;
            }
            let Some(data) = self.find(&id, buf)? else { continue };
            for entry in gix_object::TreeRefIter::from_bytes(data.data, gix_hash::Kind::Sha1) {
                let entry = entry.map_err(Error::objects)?;
                if entry.mode.is_tree() {
                    stack.push(entry.oid.to_owned());
                } else if !entry.mode.is_commit() {
                    seen.insert(entry.oid.to_owned());
                }
            }
        }
        Ok(())
    }

    /// Adds a tree (at `depth` below a root) and what it holds that is not
    /// `seen` and not filtered out.
    fn add_tree(
        &self,
        root: ObjectId,
        depth: u64,
        filter: Filter,
        seen: &mut HashSet<ObjectId>,
        out: &mut Vec<ObjectId>,
        buf: &mut Vec<u8>,
    ) -> Result<(), Error> {
        let mut stack = vec![(root, depth)];
        let mut entries = Vec::new();
        while let Some((id, depth)) = stack.pop() {
            if matches!(filter, Filter::TreeDepth(max) if depth >= max) {
                continue;
            }
            if !seen.insert(id) {
                continue;
            }
            out.push(id);
            let data = self
                .find(&id, buf)?
                .ok_or_else(|| Error::Objects(format!("tree {id} is missing")))?;
            entries.clear();
            for entry in gix_object::TreeRefIter::from_bytes(data.data, gix_hash::Kind::Sha1) {
                let entry = entry.map_err(Error::objects)?;
                entries.push((entry.mode, entry.oid.to_owned()));
            }
            for (mode, oid) in entries.drain(..) {
                if mode.is_tree() {
                    stack.push((oid, depth + 1));
                } else if mode.is_commit() || seen.contains(&oid) {
                    // Submodule commits live elsewhere.
                } else if self.blob_passes(&oid, depth + 1, filter)? {
                    seen.insert(oid);
                    out.push(oid);
                }
            }
        }
        Ok(())
    }

    fn blob_passes(&self, id: &ObjectId, depth: u64, filter: Filter) -> Result<bool, Error> {
        Ok(match filter {
            Filter::None => true,
            Filter::NoBlobs => false,
            Filter::TreeDepth(max) => depth < max,
            Filter::BlobLimit(limit) => {
                use gix_object::FindHeader;
                let header = self.odb.try_header(id).map_err(Error::objects)?;
                header.is_some_and(|h| h.size < limit)
            }
        })
    }
}
