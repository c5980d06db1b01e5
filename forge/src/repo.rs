//! A repository: a bucket of kind `repo`, its refs in the store, its packs
//! attached to the bucket and linked into `git/<name>/objects/pack/`.
//!
//! The attachments are the truth; the directory is where gix-pack reads them.
//! [`Forge::open`] makes the directory match (links a missing pack from the
//! blob store, removes one the bucket no longer lists), so a node that got a
//! repository's packs by hash, or lost its `git/` directory, serves it again.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use alknet_fs::{REPO_KIND, RefUpdate, Store, check_bucket_name};
use gix_hash::ObjectId;
use serde::{Deserialize, Serialize};

use crate::Error;

/// Prefix of the attachments that hold a repository's packs and indexes.
pub(crate) const PACK_PREFIX: &str = "pack/";
/// The ref that records a repository's default branch.
const HEAD: &str = "HEAD";
/// Refs under this prefix record which commit each fs branch was published
/// from; they are not git refs and are never advertised.
pub(crate) const PUBLISHED_PREFIX: &str = "alknet/published/";
/// The ref whose presence makes a repository public (`repo create --public`,
/// `repo set-public`); `git.public` in the settings does the same.
const PUBLIC_REF: &str = "alknet/public";

/// Settings of the forge (`[git]` in alknet.toml).
#[derive(Clone, Debug)]
pub struct ForgeConfig {
    /// The branch HEAD names in a new repository.
    pub default_branch: String,
    /// An admin pushing to a missing repository creates it.
    pub create_on_push: bool,
    /// Repositories that accept non-fast-forward pushes.
    pub allow_force_push: HashSet<String>,
    /// Repositories anyone may fetch, signed in or not (over HTTP).
    pub public: HashSet<String>,
}

impl Default for ForgeConfig {
    fn default() -> Self {
        ForgeConfig {
            default_branch: "main".into(),
            create_on_push: false,
            allow_force_push: HashSet::new(),
            public: HashSet::new(),
        }
    }
}

/// The repositories of one store.
#[derive(Clone)]
pub struct Forge {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    root: PathBuf,
    config: ForgeConfig,
    runtime: tokio::runtime::Handle,
    /// One lock per repository, held while a push publishes its branches.
    publishing: Mutex<HashMap<String, Arc<Mutex<()>>>>,
}

/// A repository as listed.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RepoInfo {
    pub name: String,
    pub head: String,
    pub refs: usize,
    pub packs: usize,
    pub pack_bytes: u64,
    /// Git LFS objects kept for the repository, and their bytes.
    pub lfs_objects: u64,
    pub lfs_bytes: u64,
    /// Anyone may clone and fetch it without signing in.
    pub public: bool,
}

/// The repository a path from a git client names: `/hello.git`, `hello`,
/// `~/hello/` all name `hello`.
pub fn repo_name(path: &str) -> Result<String, Error> {
    let name = path.trim_start_matches("~/").trim_matches('/');
    let name = name.strip_suffix(".git").unwrap_or(name);
    check_bucket_name(name).map_err(|_| Error::BadRepoName(path.to_owned()))?;
    Ok(name.to_owned())
}

impl Forge {
    /// The forge of `store`; blocking calls reach the store's async side
    /// through the current tokio runtime.
    /// The forge of `store`. Quarantines that a dead process left (a server
    /// killed mid-push) are removed here.
    pub fn new(store: Store, config: ForgeConfig) -> Forge {
        remove_dead_quarantines(&store.dir().join("git"));
        Forge {
            inner: Arc::new(Inner {
                root: store.dir().join("git"),
                store,
                config,
                runtime: tokio::runtime::Handle::current(),
                publishing: Mutex::new(HashMap::new()),
            }),
        }
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    pub fn config(&self) -> &ForgeConfig {
        &self.inner.config
    }

    pub(crate) fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.inner.runtime.block_on(f)
    }

    /// Creates an empty repository whose HEAD names the default branch.
    pub fn create(&self, name: &str) -> Result<RepoInfo, Error> {
        let name = repo_name(name)?;
        let store = &self.inner.store;
        store.create_bucket(&name, REPO_KIND)?;
        let dir = self.inner.root.join(&name);
        // A directory left by a bucket deleted behind the forge's back.
        std::fs::remove_dir_all(&dir).ok();
        std::fs::create_dir_all(dir.join("objects/pack"))?;
        store.update_refs(
            &name,
            &[RefUpdate {
                name: HEAD.into(),
                old: None,
                new: Some(format!("ref: refs/heads/{}", self.inner.config.default_branch)),
            }],
        )?;
        self.info(&name)
    }

    pub fn list(&self) -> Result<Vec<RepoInfo>, Error> {
        let buckets = self.inner.store.list_buckets()?;
        buckets
            .iter()
            .filter(|b| b.kind == REPO_KIND)
            .map(|b| self.info(&b.name))
            .collect()
    }

    pub fn info(&self, name: &str) -> Result<RepoInfo, Error> {
        let name = self.check(name)?;
        let store = &self.inner.store;
        let refs = store.refs(&name)?;
        let packs = store.attachments(&name, PACK_PREFIX)?;
        let (lfs_objects, lfs_bytes) = self.lfs_usage(&name)?;
        let public = self.inner.config.public.contains(&name) || refs.iter().any(|(n, _)| n == PUBLIC_REF);
        Ok(RepoInfo {
            lfs_objects,
            lfs_bytes,
            public,
            head: head_of(&refs, &self.inner.config),
            refs: refs.iter().filter(|(n, _)| n.starts_with("refs/")).count(),
            packs: packs.iter().filter(|a| a.name.ends_with(".pack")).count(),
            pack_bytes: packs.iter().map(|a| a.size).sum(),
            name,
        })
    }

    /// Makes a repository public (anyone may clone and fetch it) or not; a
    /// repository listed in `git.public` stays public either way.
    pub fn set_public(&self, name: &str, public: bool) -> Result<RepoInfo, Error> {
        let name = self.check(name)?;
        let now = self
            .inner
            .store
            .refs(&name)?
            .into_iter()
            .find(|(n, _)| n == PUBLIC_REF)
            .map(|(_, v)| v);
        let new = public.then(|| "yes".to_owned());
        if now.is_some() != new.is_some() {
            self.inner.store.update_refs(
                &name,
                &[RefUpdate {
                    name: PUBLIC_REF.into(),
                    old: now,
                    new,
                }],
            )?;
        }
        self.info(&name)
    }

    /// Whether anyone may fetch repository `name` without signing in.
    pub(crate) fn is_public(&self, name: &str) -> bool {
        self.inner.config.public.contains(name)
            || self
                .inner
                .store
                .refs(name)
                .is_ok_and(|refs| refs.iter().any(|(n, _)| n == PUBLIC_REF))
    }

    /// Deletes a repository: its bucket (refs, packs, published branches)
    /// and its pack directory. The next GC reclaims the blobs.
    /// Points HEAD (the branch a clone checks out) at `branch`, which must exist.
    pub fn set_head(&self, name: &str, branch: &str) -> Result<(), Error> {
        let name = self.check(name)?;
        let target = format!("refs/heads/{}", branch.strip_prefix("refs/heads/").unwrap_or(branch));
        let refs = self.inner.store.refs(&name)?;
        if !refs.iter().any(|(n, _)| *n == target) {
            return Err(Error::NoSuchBranch(target));
        }
        let old = refs.iter().find(|(n, _)| n == HEAD).map(|(_, v)| v.clone());
        self.inner.store.update_refs(
            &name,
            &[RefUpdate {
                name: HEAD.into(),
                old,
                new: Some(format!("ref: {target}")),
            }],
        )?;
        Ok(())
    }

    pub fn delete(&self, name: &str) -> Result<(), Error> {
        let name = self.check(name)?;
        self.inner.store.delete_bucket(&name)?;
        match std::fs::remove_dir_all(self.inner.root.join(&name)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }

    /// The repository's name if it exists and is a repository.
    fn check(&self, name: &str) -> Result<String, Error> {
        let name = repo_name(name)?;
        let bucket = self.inner.store.list_buckets()?.into_iter().find(|b| b.name == name);
        match bucket {
            None => Err(Error::NoSuchRepo(name)),
            Some(b) if b.kind != REPO_KIND => Err(Error::NotARepo(name)),
            Some(_) => Ok(name),
        }
    }

    /// Opens a repository for serving, bringing its pack directory in line
    /// with its attachments. Blocking.
    pub fn open(&self, name: &str) -> Result<Repo, Error> {
        let name = self.check(name)?;
        let dir = self.inner.root.join(&name).join("objects");
        let packs = dir.join("pack");
        std::fs::create_dir_all(&packs)?;
        let store = &self.inner.store;
        let wanted: BTreeMap<String, alknet_fs::BlobHash> = store
            .attachments(&name, PACK_PREFIX)?
            .into_iter()
            .map(|a| (a.name[PACK_PREFIX.len()..].to_owned(), a.hash))
            .collect();
        for entry in std::fs::read_dir(&packs)? {
            let entry = entry?;
            let file = entry.file_name().to_string_lossy().into_owned();
            // tmp-*: a push linking a pack in right now.
            if !wanted.contains_key(&file) && !file.starts_with("tmp-") {
                std::fs::remove_file(entry.path()).ok();
            }
        }
        // Indexes last: gix-pack finds a pack through its index.
        let mut missing: Vec<_> = wanted.iter().filter(|(f, _)| !packs.join(f).exists()).collect();
        missing.sort_by_key(|(f, _)| f.ends_with(".idx"));
        for (file, hash) in missing {
            let tmp = packs.join(format!("tmp-{file}"));
            std::fs::remove_file(&tmp).ok();
            self.block_on(store.link_blob(hash, &tmp))?;
            std::fs::rename(&tmp, packs.join(file))?;
        }
        let odb = open_odb(&dir)?;
        Ok(Repo {
            forge: self.clone(),
            name,
            objects: dir,
            odb,
        })
    }

    /// [`Forge::open`], telling the client why not as an `ERR` pkt-line
    /// (git prints "fatal: remote error: …").
    pub(crate) fn open_or_tell(&self, name: &str, out: &mut impl std::io::Write) -> Result<Repo, Error> {
        self.open(name).or_else(|e| {
            gix_packetline::blocking_io::encode::error_to_write(e.to_string().as_bytes(), &mut *out)?;
            out.flush()?;
            Err(e)
        })
    }

    /// The lock a push holds while it publishes `repo`'s branches.
    pub(crate) fn publish_lock(&self, repo: &str) -> Arc<Mutex<()>> {
        let mut locks = self.inner.publishing.lock().unwrap_or_else(|e| e.into_inner());
        locks.entry(repo.to_owned()).or_default().clone()
    }
}

/// The object database handle gix-pack's generators need: shared, with packs
/// never unloaded while a generation holds an index into them.
pub(crate) type Odb = gix_odb::Cache<gix_odb::store::Handle<Arc<gix_odb::Store>>>;

/// Memory for the delta bases each handle (one per worker thread) keeps.
const DELTA_CACHE_BYTES: usize = 16 << 20;

pub(crate) fn open_odb(objects: &Path) -> Result<Odb, Error> {
    let mut odb = gix_odb::at(objects, gix_hash::Kind::Sha1)?.into_arc()?;
    odb.prevent_pack_unload();
    // Trees and commits are mostly deltas on deltas: without a cache of
    // bases, walking history resolves each chain from its start again.
    odb.set_pack_cache(|| Box::new(gix_pack::cache::lru::StaticLinkedList::<64>::new(DELTA_CACHE_BYTES)));
    Ok(odb)
}

/// The name of a new push quarantine, `git/<repo>/incoming/<pid>-<random>`:
/// the pid tells a later process whether its owner is still alive.
pub(crate) fn quarantine_name() -> String {
    format!("{}-{:016x}", std::process::id(), rand::random::<u64>())
}

/// Removes every `git/*/incoming/*` whose process is gone (or that has no
/// pid in its name: an older alknet's, which never outlives its push).
fn remove_dead_quarantines(git: &Path) {
    let Ok(repos) = std::fs::read_dir(git) else { return };
    for repo in repos.flatten() {
        let Ok(entries) = std::fs::read_dir(repo.path().join("incoming")) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name();
            let pid = name
                .to_string_lossy()
                .split_once('-')
                .and_then(|(p, _)| p.parse::<u32>().ok());
            let alive = pid.is_some_and(alknet_fs::process_alive);
            if alive {
                continue;
            }
            match std::fs::remove_dir_all(e.path()) {
                Ok(()) => tracing::info!("removed {}, left by a push that never finished", e.path().display()),
                Err(err) => tracing::warn!("cannot remove {}: {err}", e.path().display()),
            }
        }
    }
}

fn head_of(refs: &[(String, String)], config: &ForgeConfig) -> String {
    refs.iter()
        .find(|(n, _)| n == HEAD)
        .and_then(|(_, v)| v.strip_prefix("ref: "))
        .map(str::to_owned)
        .unwrap_or_else(|| format!("refs/heads/{}", config.default_branch))
}

/// One repository, open for a fetch or a push.
pub struct Repo {
    pub(crate) forge: Forge,
    pub(crate) name: String,
    /// `git/<name>/objects`.
    pub(crate) objects: PathBuf,
    pub(crate) odb: Odb,
}

/// A ref as advertised: name, object, and the object it peels to if a tag.
#[derive(Clone, Debug)]
pub(crate) struct AdvertisedRef {
    pub(crate) name: String,
    pub(crate) id: ObjectId,
    pub(crate) peeled: Option<ObjectId>,
}

impl Repo {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn store(&self) -> &Store {
        self.forge.store()
    }

    /// The git refs (`refs/…`), by name, with annotated tags peeled.
    pub(crate) fn refs(&self) -> Result<Vec<AdvertisedRef>, Error> {
        let mut out = Vec::new();
        for (name, value) in self.store().refs(&self.name)? {
            if !name.starts_with("refs/") {
                continue;
            }
            let id = ObjectId::from_hex(value.as_bytes())
                .map_err(|_| Error::Objects(format!("ref {name} holds {value:?}, not an object id")))?;
            let peeled = self.peel_tag(id)?;
            out.push(AdvertisedRef { name, id, peeled });
        }
        Ok(out)
    }

    /// What HEAD names (`refs/heads/main`).
    pub(crate) fn head(&self) -> Result<String, Error> {
        Ok(head_of(&self.store().refs(&self.name)?, self.forge.config()))
    }

    /// Points a HEAD that names a missing branch at one of the branches just
    /// `pushed` — the default branch, else `main`, else `master`, else the
    /// first — as Gitea and GitHub do: a mirror push of a `master` project
    /// into a new repository must not leave it looking empty to a clone.
    pub(crate) fn adopt_head(&self, pushed: &[&str]) -> Result<(), Error> {
        let raw = self.raw_refs()?;
        let head = head_of(&raw, self.forge.config());
        if raw.iter().any(|(n, _)| *n == head) {
            return Ok(());
        }
        let branches: Vec<&str> = pushed
            .iter()
            .copied()
            .filter(|n| n.starts_with("refs/heads/"))
            .collect();
        let default = format!("refs/heads/{}", self.forge.config().default_branch);
        let Some(choice) = [default.as_str(), "refs/heads/main", "refs/heads/master"]
            .into_iter()
            .find(|b| branches.contains(b))
            .or_else(|| branches.first().copied())
        else {
            return Ok(());
        };
        let old = raw.iter().find(|(n, _)| n == HEAD).map(|(_, v)| v.clone());
        match self.store().update_refs(
            &self.name,
            &[RefUpdate {
                name: HEAD.into(),
                old,
                new: Some(format!("ref: {choice}")),
            }],
        ) {
            Ok(()) => {
                tracing::info!(repo = self.name(), "HEAD now names {choice}, the branch pushed first");
                Ok(())
            }
            // Another push or set-head chose meanwhile.
            Err(alknet_fs::Error::RefChanged { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// The raw refs of the store (including HEAD and bookkeeping refs).
    pub(crate) fn raw_refs(&self) -> Result<Vec<(String, String)>, Error> {
        Ok(self.store().refs(&self.name)?)
    }

    /// If `id` is an annotated tag, the non-tag object it finally points at.
    pub(crate) fn peel_tag(&self, id: ObjectId) -> Result<Option<ObjectId>, Error> {
        let mut buf = Vec::new();
        let mut cur = id;
        let mut peeled = None;
        for _ in 0..16 {
            let Some(data) = self.find(&cur, &mut buf)? else {
                return Ok(peeled);
            };
            if data.kind != gix_object::Kind::Tag {
                return Ok(peeled);
            }
            let tag = gix_object::TagRefIter::from_bytes(data.data, gix_hash::Kind::Sha1)
                .target_id()
                .map_err(Error::objects)?;
            peeled = Some(tag);
            cur = tag;
        }
        Ok(peeled)
    }

    pub(crate) fn find<'a>(
        &self,
        id: &gix_hash::oid,
        buf: &'a mut Vec<u8>,
    ) -> Result<Option<gix_object::Data<'a>>, Error> {
        use gix_object::Find;
        self.odb.try_find(id, buf).map_err(Error::objects)
    }

    pub(crate) fn contains(&self, id: &gix_hash::oid) -> bool {
        use gix_object::Exists;
        self.odb.exists(id)
    }

    /// Whether pushes to this repository may rewrite history.
    pub(crate) fn allows_force_push(&self) -> bool {
        self.forge.config().allow_force_push.contains(&self.name)
    }
}
