//! Deterministic simulation: three real stores in temp dirs, random local
//! changes, and a network that reorders, duplicates and drops messages,
//! partitions, heals and crashes nodes; every schedule ends healed and
//! quiet, and a checker holds the nodes to what sync promises.
//!
//! `ALKNET_SIM_CASES=N` runs more schedules; `ALKNET_SIM_SEED=S` replays one
//! (a failure prints its seed).

use std::collections::{BTreeMap, BTreeSet};

use alknet_fs::{
    At, BlobHash, BucketPath, Edit, EntryId, Error, Kind, OpId, SET_CONTENT, SetAttr, Store, SyncCommit, Vector,
    conflict_copy_id,
};

use super::{Allowed, Msg, Replica};

const BUCKET: &str = "docs";
const ALL: Allowed = Allowed {
    read: true,
    write: true,
};
const NODES: usize = 3;

/// splitmix64: small, seedable, the same everywhere.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> Option<&'a T> {
        if items.is_empty() {
            None
        } else {
            Some(&items[self.below(items.len())])
        }
    }
}

struct Node {
    dir: tempfile::TempDir,
    store: Store,
    replica: Replica,
}

impl Node {
    fn open(dir: tempfile::TempDir) -> Node {
        let store = Store::open(dir.path()).expect("open store");
        let replica = Replica::new(store.clone(), BUCKET, None);
        Node { dir, store, replica }
    }

    fn main(&self) -> alknet_fs::Tree {
        self.store.tree(BUCKET, "main", &At::Head).expect("main")
    }

    fn vector(&self) -> Vector {
        self.store.sync_vector(BUCKET, "main").expect("vector")
    }
}

/// One content version a node made: a file's bytes, a symlink's target, or
/// a deletion, with the versions its writer had seen.
#[derive(Clone, Debug)]
struct Made {
    eid: EntryId,
    id: OpId,
    kind: Option<Kind>,
    hash: Option<BlobHash>,
    target: Option<String>,
    saw: Vector,
}

/// One visible entry, as the checker compares them.
type Dumped = (String, i64, String, Option<BlobHash>, u64, u32, i64, Option<String>);

fn dump(node: &Node) -> Vec<Dumped> {
    let root = BucketPath::root();
    node.main()
        .walk(&root)
        .expect("walk")
        .into_iter()
        .map(|(p, e)| {
            (
                p.to_string(),
                e.id.0,
                format!("{:?}", e.kind),
                e.hash,
                e.size,
                e.mode,
                e.mtime_ns,
                e.target,
            )
        })
        .collect()
}

struct Sim {
    rng: Rng,
    nodes: Vec<Option<Node>>,
    queues: BTreeMap<(usize, usize), Vec<Msg>>,
    up: [[bool; NODES]; NODES],
    made: Vec<Made>,
    writes: u64,
}

const FILE_NAMES: [&str; 4] = ["x.txt", "y.txt", "notes.md", "z"];
const DIR_NAMES: [&str; 3] = ["a", "b", "c"];

fn ordinary(e: &Error) -> bool {
    matches!(
        e,
        Error::Exists(_)
            | Error::NotFound(_)
            | Error::NotADirectory(_)
            | Error::IsADirectory(_)
            | Error::NotEmpty(_)
            | Error::RenameIntoSelf { .. }
            | Error::InvalidPath { .. }
    )
}

impl Sim {
    fn node(&self, i: usize) -> &Node {
        self.nodes[i].as_ref().expect("node is open")
    }

    /// One random local change on node `i`, recorded for the checker.
    async fn local(&mut self, i: usize) {
        let tree = self.node(i).main();
        let entries = tree.walk(&BucketPath::root()).expect("walk");
        let mut dirs = vec![BucketPath::root()];
        let mut files = Vec::new();
        for (p, e) in &entries {
            match e.kind {
                Kind::Dir => dirs.push(p.clone()),
                _ => files.push(p.clone()),
            }
        }
        let before = self.node(i).vector();
        self.writes += 1;
        let content = format!("node {i} write {}", self.writes);
        let r = self.rng.below(11);
        let store = self.node(i).store.clone();
        let done: Result<(), Error> = async {
            match r {
                0 | 1 => {
                    let dir = self.rng.pick(&dirs).expect("root").clone();
                    let path = dir.join(self.rng.pick(&FILE_NAMES).expect("names"));
                    let blob = store.import_bytes(content.into_bytes()).await?;
                    tree.put_blobs(&BucketPath::root(), &[(path, blob)]).await.map(drop)
                }
                2 | 10 => match self.rng.pick(&files) {
                    Some(path) => {
                        let blob = store.import_bytes(content.into_bytes()).await?;
                        tree.put_blobs(&BucketPath::root(), &[(path.clone(), blob)])
                            .await
                            .map(drop)
                    }
                    None => Ok(()),
                },
                3 => {
                    let dir = self.rng.pick(&dirs).expect("root").clone();
                    tree.mkdir(&dir.join(self.rng.pick(&DIR_NAMES).expect("names")), None)
                        .map(drop)
                }
                4 => match self.rng.pick(&files) {
                    Some(from) => {
                        let dir = self.rng.pick(&dirs).expect("root").clone();
                        let to = dir.join(self.rng.pick(&FILE_NAMES).expect("names"));
                        tree.rename(from, &to, false).map(drop)
                    }
                    None => Ok(()),
                },
                5 => {
                    let (Some(from), Some(to)) = (self.rng.pick(&dirs[1..]), self.rng.pick(&dirs)) else {
                        return Ok(());
                    };
                    let name = from.file_name().expect("not the root");
                    tree.rename(from, &to.join(name), false).map(drop)
                }
                6 => match self.rng.pick(&files) {
                    Some(path) => tree.remove(path),
                    None => Ok(()),
                },
                7 => match self.rng.pick(&dirs[1..]) {
                    Some(path) => tree.remove_all(path),
                    None => Ok(()),
                },
                8 => match self.rng.pick(&entries) {
                    Some((path, _)) => {
                        let mode = *self.rng.pick(&[0o600, 0o644, 0o755]).expect("modes");
                        tree.set_attr(path, &SetAttr::mode(mode)).map(drop)
                    }
                    None => Ok(()),
                },
                _ => {
                    let dir = self.rng.pick(&dirs).expect("root").clone();
                    let path = dir.join("link");
                    tree.apply(&[Edit::Symlink { path, target: content }]).map(drop)
                }
            }
        }
        .await;
        if let Err(e) = done
            && !ordinary(&e)
        {
            panic!("local change {r} on node {i} failed: {e}");
        }
        // After every commit the rows are the view its ops give.
        let shown = dump(self.node(i));
        let again = self.node(i).store.sync_refresh(BUCKET, "main").expect("refresh");
        assert!(
            again.is_none() && dump(self.node(i)) == shown,
            "local change {r} on node {i} left rows that are not the view"
        );
        self.record(i, &before);
    }

    /// Notes the content versions of the commit node `i` just made, if any.
    fn record(&mut self, i: usize, before: &Vector) {
        let node = self.node(i);
        let origin = node.store.origin();
        let after = node.vector();
        let Some(&seq) = after.get(&origin) else { return };
        if before.get(&origin) == Some(&seq) {
            return;
        }
        let mut have = after.clone();
        have.insert(origin, seq - 1);
        let commits = node
            .store
            .sync_export(BUCKET, "main", &have, usize::MAX)
            .expect("export");
        let commit = commits
            .iter()
            .find(|c| c.origin == origin && c.oseq == seq)
            .expect("the new commit");
        for op in &commit.ops {
            if op.flags & SET_CONTENT != 0 {
                self.made.push(Made {
                    eid: op.eid,
                    id: (origin, seq),
                    kind: op.kind,
                    hash: op.hash,
                    target: op.target.clone(),
                    saw: before.clone(),
                });
            }
        }
    }

    fn send(&mut self, from: usize, to: usize, msgs: Vec<Msg>) {
        if self.up[from][to] {
            self.queues.entry((from, to)).or_default().extend(msgs);
        }
    }

    fn hello(&mut self, from: usize, to: usize) {
        let msgs = self.node(from).replica.hello().expect("hello");
        self.send(from, to, msgs);
    }

    /// Delivers one message of the link, the oldest or a random one.
    fn deliver(&mut self, from: usize, to: usize, oldest: bool) -> bool {
        let Some(queue) = self.queues.get_mut(&(from, to)).filter(|q| !q.is_empty()) else {
            return false;
        };
        let at = if oldest { 0 } else { self.rng.below(queue.len()) };
        let msg = queue.remove(at);
        if !self.up[from][to] {
            return true;
        }
        let replies = self.node(to).replica.handle(msg, ALL).expect("handle").replies;
        self.send(to, from, replies);
        true
    }

    /// A full exchange between two nodes (if their link is up).
    fn gossip(&mut self, a: usize, b: usize) {
        self.hello(a, b);
        while self.deliver(a, b, true) || self.deliver(b, a, true) {}
    }

    fn partition(&mut self) {
        let alone = self.rng.below(NODES);
        for a in 0..NODES {
            for b in 0..NODES {
                self.up[a][b] = (a == alone) == (b == alone);
            }
        }
        self.queues.retain(|(a, b), _| (*a == alone) == (*b == alone));
    }

    fn heal(&mut self) {
        self.up = [[true; NODES]; NODES];
    }

    async fn crash(&mut self, i: usize) {
        let node = self.nodes[i].take().expect("open");
        node.store.close().await.expect("close");
        let Node { dir, store, replica } = node;
        drop((store, replica));
        self.nodes[i] = Some(Node::open(dir));
        self.queues.retain(|(a, b), _| *a != i && *b != i);
    }

    async fn step(&mut self) {
        let (a, b) = (self.rng.below(NODES), self.rng.below(NODES));
        match self.rng.below(22) {
            0..=6 => self.local(a).await,
            7 | 8 if a != b => self.hello(a, b),
            20 | 21 if a != b => self.gossip(a, b),
            9..=14 => {
                let (from, to) = (a, (a + 1 + b % (NODES - 1)) % NODES);
                self.deliver(from, to, false);
            }
            15 => {
                if let Some(q) = self.queues.get_mut(&(a, b)).filter(|q| !q.is_empty()) {
                    let m = q[self.rng.below(q.len())].clone();
                    q.push(m);
                }
            }
            16 => {
                if let Some(q) = self.queues.get_mut(&(a, b)).filter(|q| !q.is_empty()) {
                    q.remove(self.rng.below(q.len()));
                }
            }
            17 => self.partition(),
            18 => self.heal(),
            _ => self.crash(a).await,
        }
    }

    /// Heals the network and runs the protocol until every node holds the
    /// same commits.
    fn settle(&mut self) -> Result<(), String> {
        self.heal();
        for _round in 0..100 {
            for a in 0..NODES {
                for b in 0..NODES {
                    if a != b {
                        self.hello(a, b);
                    }
                }
            }
            let mut delivered = 0;
            while delivered < 100_000 {
                let mut any = false;
                for a in 0..NODES {
                    for b in 0..NODES {
                        if a != b && self.deliver(a, b, true) {
                            any = true;
                            delivered += 1;
                        }
                    }
                }
                if !any {
                    break;
                }
            }
            let v0 = self.node(0).vector();
            if (1..NODES).all(|i| self.node(i).vector() == v0) {
                return Ok(());
            }
        }
        Err("the nodes did not converge in 100 rounds".into())
    }

    /// Everything sync promises, on the settled nodes.
    fn check(&mut self) -> Result<(), String> {
        let dumps: Vec<Vec<Dumped>> = (0..NODES).map(|i| dump(self.node(i))).collect();
        for i in 1..NODES {
            if dumps[i] != dumps[0] {
                return Err(format!(
                    "node {i} shows another tree than node 0:\n{:#?}\nvs\n{:#?}",
                    dumps[i], dumps[0]
                ));
            }
        }
        // What each node shows is what its ops give: deriving the view
        // again changes nothing (local changes that skip it are right to).
        for (i, shown) in dumps.iter().enumerate() {
            let again = self
                .node(i)
                .store
                .sync_refresh(BUCKET, "main")
                .map_err(|e| e.to_string())?;
            if again.is_some() || dump(self.node(i)) != *shown {
                return Err(format!("node {i}'s rows were not its view; re-deriving changed them"));
            }
        }
        // Names are unique and every entry hangs off the root.
        let paths: BTreeSet<&String> = dumps[0].iter().map(|d| &d.0).collect();
        if paths.len() != dumps[0].len() {
            return Err(format!("a path shows twice: {:#?}", dumps[0]));
        }
        let ids: BTreeSet<i64> = dumps[0].iter().map(|d| d.1).collect();
        if ids.len() != dumps[0].len() {
            return Err(format!("an entry shows twice: {:#?}", dumps[0]));
        }
        // No lost versions: a version no later change by a node that had
        // seen it replaced shows, at its entry or as its conflict copy.
        for v in self.made.iter().filter(|v| v.kind.is_some()) {
            let copy = conflict_copy_id(v.eid, v.id);
            let superseded = self.made.iter().any(|w| {
                (w.eid == v.eid || w.eid == copy) && w.id != v.id && w.saw.get(&v.id.0).is_some_and(|s| *s >= v.id.1)
            });
            if superseded {
                continue;
            }
            let shown = dumps[0]
                .iter()
                .any(|d| (d.1 == v.eid.0 || d.1 == copy.0) && d.3 == v.hash && d.7 == v.target);
            if !shown {
                return Err(format!("lost version {v:?}; the tree: {:#?}", dumps[0]));
            }
        }
        // Applying everything again changes nothing; applying it all in
        // another order to a new store shows the same tree.
        let all: Vec<SyncCommit> = self
            .node(0)
            .store
            .sync_export(BUCKET, "main", &Vector::new(), usize::MAX)
            .map_err(|e| e.to_string())?;
        let again = self
            .node(0)
            .store
            .sync_apply(BUCKET, "main", &all)
            .map_err(|e| e.to_string())?;
        if again.applied != 0 || dump(self.node(0)) != dumps[0] {
            return Err(format!("applying every commit again changed node 0: {again:?}"));
        }
        let fresh = Node::open(tempfile::tempdir().expect("temp dir"));
        fresh.store.create_bucket(BUCKET, "drive").map_err(|e| e.to_string())?;
        let mut by_origin: BTreeMap<u64, Vec<SyncCommit>> = BTreeMap::new();
        for c in all {
            by_origin.entry(c.origin).or_default().push(c);
        }
        let mut lanes: Vec<std::collections::VecDeque<SyncCommit>> = by_origin.into_values().map(Into::into).collect();
        while lanes.iter().any(|l| !l.is_empty()) {
            let lane = self.rng.below(lanes.len());
            let n = 1 + self.rng.below(3);
            let batch: Vec<SyncCommit> = (0..n).filter_map(|_| lanes[lane].pop_front()).collect();
            fresh
                .store
                .sync_apply(BUCKET, "main", &batch)
                .map_err(|e| e.to_string())?;
        }
        if dump(&fresh) != dumps[0] {
            return Err(format!(
                "the same commits in another order show another tree:\n{:#?}\nvs\n{:#?}",
                dump(&fresh),
                dumps[0]
            ));
        }
        Ok(())
    }
}

/// Prints the seed of a schedule that panics.
struct Seed(u64);

impl Drop for Seed {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("sync simulation failed: replay with ALKNET_SIM_SEED={}", self.0);
        }
    }
}

async fn run(seed: u64, steps: usize) -> Result<(), String> {
    let mut sim = Sim {
        rng: Rng(seed),
        nodes: Vec::new(),
        queues: BTreeMap::new(),
        up: [[true; NODES]; NODES],
        made: Vec::new(),
        writes: 0,
    };
    for _ in 0..NODES {
        let node = Node::open(tempfile::tempdir().expect("temp dir"));
        node.store.create_bucket(BUCKET, "drive").expect("bucket");
        sim.nodes.push(Some(node));
    }
    for _ in 0..steps {
        sim.step().await;
    }
    sim.settle()?;
    sim.check()?;
    let shown = dump(sim.node(0));
    let conflicts = shown.iter().filter(|d| d.0.contains(".sync-conflict-")).count();
    let made: BTreeSet<i64> = sim.made.iter().map(|m| m.eid.0).collect();
    let copies = shown.iter().filter(|d| !made.contains(&d.1)).count();
    let commits: u64 = sim.node(0).vector().values().sum();
    eprintln!(
        "seed {seed}: {commits} commits, {} versions made, {} entries shown, {conflicts} under conflict names, {copies} conflict copies",
        sim.made.len(),
        shown.len()
    );
    Ok(())
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

#[test]
fn random_schedules_converge_and_lose_nothing() {
    let rt = runtime();
    let seeds: Vec<u64> = match std::env::var("ALKNET_SIM_SEED") {
        Ok(s) => vec![s.parse().expect("ALKNET_SIM_SEED is a number")],
        Err(_) => {
            let cases: u64 = std::env::var("ALKNET_SIM_CASES")
                .ok()
                .and_then(|c| c.parse().ok())
                .unwrap_or(24);
            (1..=cases).collect()
        }
    };
    for seed in seeds {
        let _seed = Seed(seed);
        if let Err(e) = rt.block_on(run(seed, 200)) {
            panic!("seed {seed}: {e}\nreplay with ALKNET_SIM_SEED={seed}");
        }
    }
}

// ---- the conflict rules, one by one ---------------------------------------

/// Two nodes with the bucket, in sync.
fn pair() -> (Node, Node) {
    let nodes: Vec<Node> = (0..2)
        .map(|_| {
            let n = Node::open(tempfile::tempdir().expect("temp dir"));
            n.store.create_bucket(BUCKET, "drive").expect("bucket");
            n
        })
        .collect();
    let mut it = nodes.into_iter();
    (it.next().expect("a"), it.next().expect("b"))
}

/// Runs the protocol between two nodes until neither has anything to say.
fn exchange(a: &Node, b: &Node) {
    let mut to_b = a.replica.hello().expect("hello");
    let mut to_a = b.replica.hello().expect("hello");
    for _ in 0..1000 {
        if to_a.is_empty() && to_b.is_empty() {
            assert_eq!(a.vector(), b.vector(), "quiet means in sync");
            return;
        }
        let mut next_a = Vec::new();
        for m in to_b.drain(..) {
            next_a.extend(b.replica.handle(m, ALL).expect("b handles").replies);
        }
        let mut next_b = Vec::new();
        for m in to_a.drain(..) {
            next_b.extend(a.replica.handle(m, ALL).expect("a handles").replies);
        }
        to_a = next_a;
        to_b = next_b;
    }
    panic!("the exchange did not end");
}

fn p(s: &str) -> BucketPath {
    BucketPath::parse(s).expect("path")
}

async fn write(n: &Node, path: &str, body: &str) {
    let blob = n.store.import_bytes(body.as_bytes().to_vec()).await.expect("import");
    n.main()
        .put_blobs(&BucketPath::root(), &[(p(path), blob)])
        .await
        .expect("write");
}

/// `(path, hash)` of every entry; the two nodes must agree on it.
fn shown(a: &Node, b: &Node) -> Vec<(String, Option<BlobHash>)> {
    let (da, db) = (dump(a), dump(b));
    assert_eq!(da, db, "both nodes show one tree");
    da.into_iter().map(|d| (d.0, d.3)).collect()
}

fn h(body: &str) -> Option<BlobHash> {
    Some(BlobHash::of(body.as_bytes()))
}

#[test]
fn edit_edit_keeps_the_loser_as_a_conflict_copy() {
    runtime().block_on(async {
        let (a, b) = pair();
        write(&a, "/report.txt", "v1").await;
        exchange(&a, &b);
        write(&a, "/report.txt", "from a").await;
        write(&b, "/report.txt", "from b").await;
        let (winner, loser) = if last_stamp(&b) > last_stamp(&a) {
            ("from b", "from a")
        } else {
            ("from a", "from b")
        };
        exchange(&a, &b);
        let tree = shown(&a, &b);
        assert_eq!(tree.len(), 2, "{tree:?}");
        let copy = tree
            .iter()
            .find(|(p, _)| p.starts_with("/report.sync-conflict-"))
            .expect("copy");
        assert!(copy.0.ends_with(".txt"), "{tree:?}");
        assert_eq!(copy.1, h(loser), "the older write is the copy");
        assert!(tree.contains(&("/report.txt".into(), h(winner))), "{tree:?}");
        // Deleting the copy is an ordinary change that sticks.
        a.main().remove(&p(&copy.0)).expect("remove the copy");
        exchange(&a, &b);
        assert_eq!(shown(&a, &b), vec![("/report.txt".into(), h(winner))]);
    });
}

#[test]
fn the_same_bytes_written_on_both_sides_are_no_conflict() {
    runtime().block_on(async {
        let (a, b) = pair();
        write(&a, "/same.txt", "v1").await;
        exchange(&a, &b);
        write(&a, "/same.txt", "v2 on both").await;
        write(&b, "/same.txt", "v2 on both").await;
        exchange(&a, &b);
        assert_eq!(shown(&a, &b), vec![("/same.txt".into(), h("v2 on both"))]);
    });
}

#[test]
fn an_edit_beats_a_concurrent_delete_and_brings_its_directory_back() {
    runtime().block_on(async {
        let (a, b) = pair();
        write(&a, "/docs/plan.txt", "v1").await;
        write(&a, "/gone.txt", "v1").await;
        exchange(&a, &b);
        a.main().remove_all(&p("/docs")).expect("remove docs");
        a.main().remove(&p("/gone.txt")).expect("remove");
        write(&b, "/docs/plan.txt", "v2 from b").await;
        write(&b, "/docs/new.txt", "made in a deleted dir").await;
        exchange(&a, &b);
        assert_eq!(
            shown(&a, &b),
            vec![
                ("/docs".into(), None),
                ("/docs/new.txt".into(), h("made in a deleted dir")),
                ("/docs/plan.txt".into(), h("v2 from b")),
            ]
        );
    });
}

#[test]
fn rename_rename_takes_the_last_and_keeps_one_entry() {
    runtime().block_on(async {
        let (a, b) = pair();
        write(&a, "/f.txt", "body").await;
        exchange(&a, &b);
        let id = a.main().stat(&p("/f.txt")).expect("stat").id;
        a.main().rename(&p("/f.txt"), &p("/by-a.txt"), false).expect("rename");
        b.main().rename(&p("/f.txt"), &p("/by-b.txt"), false).expect("rename");
        let last = if last_stamp(&b) > last_stamp(&a) {
            "/by-b.txt"
        } else {
            "/by-a.txt"
        };
        exchange(&a, &b);
        assert_eq!(shown(&a, &b), vec![(last.into(), h("body"))]);
        assert_eq!(a.main().stat(&p(last)).expect("stat").id, id);
    });
}

#[test]
fn crossed_moves_do_not_make_a_cycle() {
    runtime().block_on(async {
        let (a, b) = pair();
        a.main().mkdir(&p("/one"), None).expect("mkdir");
        a.main().mkdir(&p("/two"), None).expect("mkdir");
        write(&a, "/two/keep.txt", "k").await;
        exchange(&a, &b);
        a.main().rename(&p("/one"), &p("/two/one"), false).expect("move");
        b.main().rename(&p("/two"), &p("/one/two"), false).expect("move");
        let (by_a, by_b) = (last_stamp(&a), last_stamp(&b));
        exchange(&a, &b);
        // The newer move would close the cycle: it is skipped.
        let tree = shown(&a, &b);
        if by_b > by_a {
            assert_eq!(
                tree,
                vec![
                    ("/two".into(), None),
                    ("/two/keep.txt".into(), h("k")),
                    ("/two/one".into(), None)
                ]
            );
        } else {
            assert_eq!(
                tree,
                vec![
                    ("/one".into(), None),
                    ("/one/two".into(), None),
                    ("/one/two/keep.txt".into(), h("k"))
                ]
            );
        }
    });
}

/// The stamp of the newest commit a node made: what orders concurrent changes.
fn last_stamp(n: &Node) -> (u64, u64) {
    let all = n
        .store
        .sync_export(BUCKET, "main", &Vector::new(), usize::MAX)
        .expect("export");
    all.iter()
        .filter(|c| c.origin == n.store.origin())
        .map(|c| (c.hlc, c.origin))
        .max()
        .expect("a commit")
}

#[test]
fn same_name_creates_keep_both_and_same_name_mkdirs_make_one_directory() {
    runtime().block_on(async {
        let (a, b) = pair();
        write(&a, "/x.txt", "a's").await;
        write(&b, "/x.txt", "b's").await;
        let (first, second) = if last_stamp(&a) < last_stamp(&b) {
            ("a's", "b's")
        } else {
            ("b's", "a's")
        };
        a.main().mkdir(&p("/photos"), None).expect("mkdir");
        write(&a, "/photos/1.jpg", "a's photo").await;
        b.main().mkdir(&p("/photos"), None).expect("mkdir");
        write(&b, "/photos/2.jpg", "b's photo").await;
        exchange(&a, &b);
        let tree = shown(&a, &b);
        let names: BTreeSet<&str> = tree.iter().map(|(p, _)| p.as_str()).collect();
        for one in ["/photos", "/photos/1.jpg", "/photos/2.jpg"] {
            assert!(names.contains(one), "one directory holds both: {tree:?}");
        }
        assert!(
            tree.contains(&("/x.txt".into(), h(first))),
            "the first to create keeps the name: {tree:?}"
        );
        let later = tree
            .iter()
            .find(|(p, _)| p.starts_with("/x.sync-conflict-"))
            .expect("the later one");
        assert_eq!(later.1, h(second));
        assert_eq!(tree.len(), 5, "{tree:?}");
    });
}

#[test]
fn a_branch_made_on_one_node_replicates_with_its_inherited_entries() {
    runtime().block_on(async {
        let (a, b) = pair();
        write(&a, "/base.txt", "base").await;
        a.store.create_branch(BUCKET, "trip", "main", &At::Head).expect("fork");
        let trip = a.store.tree(BUCKET, "trip", &At::Head).expect("trip");
        let blob = a.store.import_bytes(b"on trip".to_vec()).await.expect("import");
        trip.put_blobs(&BucketPath::root(), &[(p("/trip.txt"), blob)])
            .await
            .expect("write");
        exchange(&a, &b);
        let tb = b.store.tree(BUCKET, "trip", &At::Head).expect("trip replicated");
        let names: Vec<String> = tb
            .walk(&BucketPath::root())
            .expect("walk")
            .into_iter()
            .map(|(p, _)| p.to_string())
            .collect();
        assert_eq!(names, ["/base.txt", "/trip.txt"]);
        assert_eq!(shown(&a, &b), vec![("/base.txt".into(), h("base"))]);
        // A fork not written since it was made replicates too.
        a.store
            .create_branch(BUCKET, "untouched", "main", &At::Head)
            .expect("fork");
        exchange(&a, &b);
        let tu = b.store.tree(BUCKET, "untouched", &At::Head).expect("replicated");
        assert_eq!(tu.walk(&BucketPath::root()).expect("walk").len(), 1);
    });
}

#[test]
fn a_batch_no_node_could_have_made_is_refused_whole() {
    runtime().block_on(async {
        let (a, b) = pair();
        write(&a, "/good.txt", "fine").await;
        let good = a
            .store
            .sync_export(BUCKET, "main", &Vector::new(), usize::MAX)
            .expect("export");
        let before = dump(&b);
        let mut cases: Vec<(&str, Vec<SyncCommit>)> = Vec::new();
        let mut bad_name = good.clone();
        bad_name[0].ops[0].name = "../escape".into();
        cases.push(("a name the store refuses", bad_name));
        let mut mine = good.clone();
        mine[0].origin = b.store.origin();
        mine[0].oseq = 1000;
        cases.push(("a commit in the receiver's own name", mine));
        let mut root = good.clone();
        root[0].ops[0].eid = EntryId::ROOT;
        cases.push(("an op on the root", root));
        let mut hashless = good.clone();
        if let Some(op) = hashless[0].ops.iter_mut().find(|o| o.kind == Some(Kind::File)) {
            op.hash = None;
        }
        cases.push(("a file without content", hashless));
        for (what, batch) in cases {
            let mut with_good = good.clone();
            with_good.extend(batch);
            let err = b.store.sync_apply(BUCKET, "main", &with_good).expect_err(what);
            assert!(matches!(err, Error::InvalidName { .. }), "{what}: {err}");
            assert_eq!(dump(&b), before, "{what}: nothing of the batch was applied");
        }
        // The good commits alone still apply.
        assert_eq!(
            b.store.sync_apply(BUCKET, "main", &good).expect("apply").applied,
            good.len()
        );
    });
}

#[test]
fn deleting_the_entry_that_kept_a_name_gives_the_name_back() {
    runtime().block_on(async {
        let (a, b) = pair();
        write(&a, "/x.txt", "a's").await;
        write(&b, "/x.txt", "b's").await;
        exchange(&a, &b);
        let tree = shown(&a, &b);
        assert_eq!(tree.len(), 2, "{tree:?}");
        // Whichever node holds the plain name, that node deletes it.
        let keeper = tree.iter().find(|(p, _)| p == "/x.txt").expect("the plain name").1;
        let other = tree.iter().find(|(p, _)| p != "/x.txt").expect("the conflict name");
        a.main().remove(&p("/x.txt")).expect("remove");
        // At once on the node that deleted it, before any exchange.
        let here = dump(&a);
        assert_eq!(here.len(), 1, "{here:?}");
        assert_eq!(
            (here[0].0.as_str(), here[0].3),
            ("/x.txt", other.1),
            "the other file takes the name"
        );
        assert_ne!(Some(keeper), None);
        exchange(&a, &b);
        assert_eq!(shown(&a, &b), vec![("/x.txt".into(), other.1)]);
    });
}
