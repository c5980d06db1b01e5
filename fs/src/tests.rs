//! Unit tests of the storage core on a real SQLite file and a real blob store.

use std::time::Duration;

use crate::{At, BucketPath, Change, Error, Kind, OpenOptions, SetAttr, Store, Tree, Version};

fn p(s: &str) -> BucketPath {
    BucketPath::parse(s).expect("test paths are valid")
}

fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open(dir.path()).expect("open store");
    store.create_bucket("b", "drive").expect("create bucket");
    (dir, store)
}

fn head(store: &Store, branch: &str) -> Tree {
    store.tree("b", branch, &At::Head).expect("open tree")
}

async fn put(t: &Tree, path: &str, data: &[u8]) {
    let mut w = t
        .open_write(&p(path), OpenOptions::replace())
        .await
        .expect("open for write");
    w.write_at(0, data).await.expect("write");
    w.close().await.expect("close");
}

async fn get(t: &Tree, path: &str) -> Vec<u8> {
    t.read(&p(path), 0, u64::MAX).await.expect("read")
}

fn missing(t: &Tree, path: &str) -> bool {
    matches!(t.stat(&p(path)), Err(Error::NotFound(_)))
}

#[tokio::test(flavor = "multi_thread")]
async fn fork_is_a_snapshot_in_both_directions() {
    let (_d, store) = store();
    let main = head(&store, "main");
    put(&main, "/a", b"one").await;
    store.create_branch("b", "dev", "main", &At::Head).expect("fork");
    let dev = head(&store, "dev");
    assert_eq!(
        get(&dev, "/a").await,
        b"one",
        "the fork sees the parent's state at the fork"
    );

    put(&main, "/a", b"two").await;
    put(&main, "/new-on-main", b"x").await;
    assert_eq!(
        get(&dev, "/a").await,
        b"one",
        "a parent write after the fork must not show on the child"
    );
    assert!(missing(&dev, "/new-on-main"));

    put(&dev, "/a", b"three").await;
    put(&dev, "/new-on-dev", b"y").await;
    assert_eq!(
        get(&main, "/a").await,
        b"two",
        "a child write must not show on the parent"
    );
    assert!(missing(&main, "/new-on-dev"));
}

#[tokio::test(flavor = "multi_thread")]
async fn fork_of_a_fork_and_from_a_past_version() {
    let (_d, store) = store();
    let main = head(&store, "main");
    put(&main, "/f", b"v1").await;
    let v1 = main.stat(&p("/f")).expect("stat").version;
    put(&main, "/f", b"v2").await;
    store
        .create_branch("b", "old", "main", &At::Version(v1.0))
        .expect("fork at v1");
    assert_eq!(get(&head(&store, "old"), "/f").await, b"v1");
    store
        .create_branch("b", "deep", "old", &At::Head)
        .expect("fork of a fork");
    assert_eq!(get(&head(&store, "deep"), "/f").await, b"v1");
}

#[tokio::test(flavor = "multi_thread")]
async fn read_at_a_past_version_after_later_writes() {
    let (_d, store) = store();
    let main = head(&store, "main");
    put(&main, "/f", b"first").await;
    let snap = main.snapshot(Some("before")).expect("snapshot");
    put(&main, "/f", b"second").await;
    main.remove(&p("/f")).expect("remove");
    assert!(missing(&main, "/f"));

    let past = store.tree("b", "main", &At::Version(snap.0)).expect("tree at version");
    assert_eq!(get(&past, "/f").await, b"first");
    let named = store
        .tree("b", "main", &At::Snapshot("before".into()))
        .expect("tree at snapshot");
    assert_eq!(get(&named, "/f").await, b"first");
    assert!(
        matches!(past.mkdir(&p("/x"), None), Err(Error::ReadOnly(_))),
        "a past version is read-only"
    );
    assert!(matches!(
        store.tree("b", "main", &At::Version(999_999)),
        Err(Error::NoSuchVersion { .. })
    ));
}

#[tokio::test(flavor = "multi_thread")]
async fn tombstone_on_child_hides_parent_file() {
    let (_d, store) = store();
    let main = head(&store, "main");
    main.mkdir(&p("/d"), None).expect("mkdir");
    put(&main, "/d/f", b"data").await;
    store.create_branch("b", "dev", "main", &At::Head).expect("fork");
    let dev = head(&store, "dev");
    dev.remove(&p("/d/f")).expect("remove on child");
    assert!(missing(&dev, "/d/f"));
    assert!(dev.read_dir(&p("/d"), None, 100).expect("readdir").is_empty());
    assert_eq!(get(&main, "/d/f").await, b"data", "the parent keeps its file");
    dev.rmdir(&p("/d")).expect("the child's directory is now empty");
    assert!(main.stat(&p("/d")).is_ok());
}

#[tokio::test(flavor = "multi_thread")]
async fn rename_keeps_the_entry_id_and_moves_subtrees() {
    let (_d, store) = store();
    let main = head(&store, "main");
    main.mkdir(&p("/d"), None).expect("mkdir");
    main.mkdir(&p("/d/sub"), None).expect("mkdir");
    put(&main, "/d/sub/f", b"deep").await;
    let file_id = main.stat(&p("/d/sub/f")).expect("stat").id;
    let dir_id = main.stat(&p("/d")).expect("stat").id;

    let before = store.stats().await.expect("stats").rows;
    main.rename(&p("/d"), &p("/e"), false).expect("rename dir");
    let after = store.stats().await.expect("stats").rows;
    assert_eq!(
        after - before,
        2,
        "a directory rename writes one tombstone and one row, whatever is below it"
    );
    assert_eq!(main.stat(&p("/e")).expect("stat").id, dir_id);
    assert_eq!(main.stat(&p("/e/sub/f")).expect("stat").id, file_id);
    assert_eq!(get(&main, "/e/sub/f").await, b"deep");
    assert!(missing(&main, "/d"));

    main.rename(&p("/e/sub/f"), &p("/g"), false).expect("rename file");
    assert_eq!(main.stat(&p("/g")).expect("stat").id, file_id);
    assert_eq!(main.path_of(file_id).expect("path_of"), Some(p("/g")));
    let by_id = main.entry(file_id).expect("entry").expect("still there");
    assert_eq!(
        (by_id.name.as_str(), by_id.parent),
        ("g", crate::EntryId::ROOT),
        "lookup by id follows the move"
    );

    assert!(matches!(
        main.rename(&p("/e"), &p("/e/sub/x"), false),
        Err(Error::RenameIntoSelf { .. })
    ));
    put(&main, "/h", b"other").await;
    assert!(matches!(main.rename(&p("/g"), &p("/h"), false), Err(Error::Exists(_))));
    main.rename(&p("/g"), &p("/h"), true).expect("replace");
    assert_eq!(get(&main, "/h").await, b"deep");
    assert_eq!(main.stat(&p("/h")).expect("stat").id, file_id);
    assert!(matches!(
        main.rename(&p("/h"), &p("/e"), true),
        Err(Error::IsADirectory(_))
    ));
}

#[tokio::test(flavor = "multi_thread")]
async fn out_of_order_chunks_assemble() {
    let (_d, store) = store();
    let main = head(&store, "main");
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let mut w = main.open_write(&p("/f"), OpenOptions::replace()).await.expect("open");
    let chunk = 32 * 1024;
    let mut offsets: Vec<usize> = (0..data.len()).step_by(chunk).collect();
    offsets.reverse();
    offsets.swap(1, 3);
    for off in offsets {
        let end = (off + chunk).min(data.len());
        w.write_at(off as u64, &data[off..end]).await.expect("write chunk");
    }
    let e = w.close().await.expect("close");
    assert_eq!(e.size, data.len() as u64);
    assert_eq!(
        e.hash,
        Some(crate::BlobHash::of(&data)),
        "the stored hash is plain BLAKE3 of the bytes"
    );
    assert_eq!(get(&main, "/f").await, data);
    assert_eq!(
        main.read(&p("/f"), 100_000, 10).await.expect("range"),
        &data[100_000..100_010]
    );
    assert!(main.read(&p("/f"), 400_000, 10).await.expect("past the end").is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn readers_see_the_old_content_until_close() {
    let (_d, store) = store();
    let main = head(&store, "main");
    put(&main, "/f", b"old").await;
    let mut w = main.open_write(&p("/f"), OpenOptions::modify()).await.expect("open");
    let mut staged = [0u8; 3];
    assert_eq!(
        w.read_at(0, &mut staged).await.expect("read staged"),
        3,
        "modify starts from the current content"
    );
    assert_eq!(&staged, b"old");
    w.write_at(0, b"NEW content").await.expect("write");
    assert_eq!(get(&main, "/f").await, b"old", "an open write is invisible to readers");
    w.close().await.expect("close");
    assert_eq!(get(&main, "/f").await, b"NEW content");
}

#[tokio::test(flavor = "multi_thread")]
async fn abort_leaves_no_trace() {
    let (d, store) = store();
    let main = head(&store, "main");
    put(&main, "/f", b"kept").await;
    let log_before = store.log(&main, 100).expect("log").len();
    let mut w = main.open_write(&p("/f"), OpenOptions::replace()).await.expect("open");
    w.write_at(0, b"discarded").await.expect("write");
    w.abort();
    let mut w = main.open_write(&p("/g"), OpenOptions::replace()).await.expect("open");
    w.write_at(0, b"dropped").await.expect("write");
    drop(w);
    assert_eq!(get(&main, "/f").await, b"kept");
    assert!(missing(&main, "/g"), "a dropped session publishes nothing");
    assert_eq!(
        store.log(&main, 100).expect("log").len(),
        log_before,
        "no version was committed"
    );
    let staged: Vec<_> = std::fs::read_dir(d.path().join("tmp")).expect("tmp dir").collect();
    assert!(staged.is_empty(), "staging files are removed: {staged:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn two_writers_on_one_path_last_close_wins_whole() {
    let (_d, store) = store();
    let main = head(&store, "main");
    let a = vec![b'a'; 100_000];
    let b = vec![b'b'; 50_000];
    let mut wa = main.open_write(&p("/f"), OpenOptions::replace()).await.expect("open a");
    let mut wb = main.open_write(&p("/f"), OpenOptions::replace()).await.expect("open b");
    wa.write_at(0, &a).await.expect("write a");
    wb.write_at(0, &b).await.expect("write b");
    wb.close().await.expect("close b");
    assert_eq!(get(&main, "/f").await, b);
    wa.close().await.expect("close a");
    assert_eq!(
        get(&main, "/f").await,
        a,
        "each close publishes one whole file; the last one wins"
    );
    let id = main.stat(&p("/f")).expect("stat").id;
    assert_eq!(
        store
            .log(&main, 10)
            .expect("log")
            .iter()
            .filter(|c| c.op == "write")
            .count(),
        2
    );
    assert_eq!(main.stat(&p("/f")).expect("stat").id, id);
}

#[tokio::test(flavor = "multi_thread")]
async fn gc_keeps_referenced_and_reclaims_the_rest_on_disk() {
    let (d, store) = store();
    let main = head(&store, "main");
    // Above iroh-blobs' 16 KiB inline limit, so each blob is a file on disk.
    let kept = vec![1u8; 100_000];
    let gone = vec![2u8; 100_000];
    put(&main, "/kept", &kept).await;
    store.create_bucket("tmp", "drive").expect("bucket");
    put(&store.tree("tmp", "main", &At::Head).expect("tree"), "/gone", &gone).await;
    let data_file = |h: crate::BlobHash| d.path().join("blobs/data").join(format!("{h}.data"));
    let (kh, gh) = (crate::BlobHash::of(&kept), crate::BlobHash::of(&gone));
    assert!(data_file(kh).exists() && data_file(gh).exists());

    store.delete_bucket("tmp").expect("delete bucket");
    assert_eq!(
        store.stats().await.expect("stats").pending_jobs,
        1,
        "the delete queued a gc job"
    );
    let report = store.gc().await.expect("gc");
    assert_eq!(report.live, 1);
    assert!(data_file(kh).exists(), "a referenced blob stays on disk");
    assert!(!data_file(gh).exists(), "an unreferenced blob's bytes are deleted");
    assert_eq!(get(&main, "/kept").await, kept);
    assert_eq!(
        store.stats().await.expect("stats").pending_jobs,
        0,
        "gc drained its queue"
    );
    assert!(store.fsck().await.expect("fsck").problems.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn history_keeps_overwritten_content_alive() {
    let (_d, store) = store();
    let main = head(&store, "main");
    put(&main, "/f", &[7u8; 50_000]).await;
    let v = main.snapshot(None).expect("snapshot");
    put(&main, "/f", &[8u8; 50_000]).await;
    store.gc().await.expect("gc");
    let past = store.tree("b", "main", &At::Version(v.0)).expect("past");
    assert_eq!(get(&past, "/f").await, vec![7u8; 50_000]);
}

#[tokio::test(flavor = "multi_thread")]
async fn readdir_pages_merge_branch_levels() {
    let (_d, store) = store();
    let main = head(&store, "main");
    for i in 0..25 {
        main.mkdir(&p(&format!("/d{i:02}")), None).expect("mkdir");
    }
    store.create_branch("b", "dev", "main", &At::Head).expect("fork");
    let dev = head(&store, "dev");
    dev.rmdir(&p("/d03")).expect("rmdir");
    dev.mkdir(&p("/d03x"), None).expect("mkdir");
    let mut names = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = dev.read_dir(&BucketPath::root(), after.as_deref(), 7).expect("page");
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 7);
        after = page.last().map(|e| e.name.clone());
        names.extend(page.into_iter().map(|e| e.name));
    }
    let mut want: Vec<String> = (0..25).filter(|i| *i != 3).map(|i| format!("d{i:02}")).collect();
    want.push("d03x".into());
    want.sort();
    assert_eq!(names, want);
}

#[tokio::test(flavor = "multi_thread")]
async fn diff_reports_adds_removes_changes_and_renames() {
    let (_d, store) = store();
    let main = head(&store, "main");
    put(&main, "/keep", b"k").await;
    put(&main, "/change", b"1").await;
    put(&main, "/drop", b"d").await;
    put(&main, "/move", b"m").await;
    store.create_branch("b", "dev", "main", &At::Head).expect("fork");
    let dev = head(&store, "dev");
    put(&dev, "/change", b"2").await;
    dev.remove(&p("/drop")).expect("remove");
    dev.rename(&p("/move"), &p("/moved"), false).expect("rename");
    put(&dev, "/add", b"a").await;
    let changes = main.diff(&dev).expect("diff");
    assert_eq!(
        changes,
        vec![
            Change::Added {
                path: "/add".into(),
                kind: Kind::File
            },
            Change::Modified {
                path: "/change".into(),
                kind: Kind::File
            },
            Change::Removed {
                path: "/drop".into(),
                kind: Kind::File
            },
            Change::Renamed {
                from: "/move".into(),
                to: "/moved".into(),
                kind: Kind::File,
                modified: false
            },
        ]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn watch_resumes_from_a_version() {
    let (_d, store) = store();
    let main = head(&store, "main");
    main.mkdir(&p("/a"), None).expect("mkdir");
    let from = main.stat(&p("/a")).expect("stat").version;
    main.mkdir(&p("/b"), None).expect("mkdir");
    let mut watch = store.watch("b", "main", from).expect("watch");
    let first = watch.next(Duration::from_secs(5)).expect("next");
    assert_eq!(
        first.iter().map(|c| c.paths.clone()).collect::<Vec<_>>(),
        vec![vec!["/b".to_string()]]
    );
    let writer = {
        let main = main.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            main.mkdir(&p("/c"), None).expect("mkdir");
        })
    };
    let next = watch.next(Duration::from_secs(10)).expect("next");
    writer.join().expect("writer thread");
    assert_eq!(next.len(), 1);
    assert_eq!(
        (next[0].op.as_str(), next[0].paths.clone()),
        ("mkdir", vec!["/c".to_string()])
    );
    assert!(next[0].version > first[0].version);
}

#[tokio::test(flavor = "multi_thread")]
async fn posix_errors_are_typed() {
    let (_d, store) = store();
    let main = head(&store, "main");
    main.mkdir(&p("/d"), None).expect("mkdir");
    put(&main, "/d/f", b"x").await;
    assert!(matches!(main.mkdir(&p("/d"), None), Err(Error::Exists(_))));
    assert!(matches!(main.mkdir(&p("/nope/x"), None), Err(Error::NotFound(_))));
    assert!(matches!(main.mkdir(&p("/d/f/x"), None), Err(Error::NotADirectory(_))));
    assert!(matches!(main.rmdir(&p("/d")), Err(Error::NotEmpty(_))));
    assert!(matches!(main.remove(&p("/d")), Err(Error::IsADirectory(_))));
    assert!(matches!(
        main.open_write(&p("/d"), OpenOptions::replace()).await,
        Err(Error::IsADirectory(_))
    ));
    assert!(matches!(
        main.open_write(&p("/d/f"), OpenOptions::replace().exclusive(true))
            .await,
        Err(Error::Exists(_))
    ));
    assert!(matches!(
        main.open_write(&p("/none"), OpenOptions::modify()).await,
        Err(Error::NotFound(_))
    ));
    assert!(matches!(
        store.tree("b", "nope", &At::Head),
        Err(Error::NoSuchBranch { .. })
    ));
    assert!(matches!(
        store.tree("nope", "main", &At::Head),
        Err(Error::NoSuchBucket(_))
    ));
    assert!(matches!(store.create_bucket("b", "drive"), Err(Error::BucketExists(_))));
    assert!(matches!(
        store.create_bucket("Bad Name", "drive"),
        Err(Error::InvalidName { .. })
    ));
    store.create_branch("b", "dev", "main", &At::Head).expect("fork");
    assert!(matches!(
        store.delete_branch("b", "main"),
        Err(Error::BranchInUse { .. })
    ));
    store.create_branch("b", "dev2", "dev", &At::Head).expect("fork");
    assert!(matches!(
        store.delete_branch("b", "dev"),
        Err(Error::BranchInUse { .. })
    ));
    store.delete_branch("b", "dev2").expect("a leaf branch can go");
    main.remove_all(&p("/d")).expect("rm -r");
    assert!(missing(&main, "/d") && missing(&main, "/d/f"));
}

#[tokio::test(flavor = "multi_thread")]
async fn symlinks_attrs_copy_and_truncate() {
    let (_d, store) = store();
    let main = head(&store, "main");
    put(&main, "/f", b"0123456789").await;
    let l = main.symlink(&p("/l"), "f").expect("symlink");
    assert_eq!((l.kind, l.target.as_deref(), l.size), (Kind::Symlink, Some("f"), 1));
    let e = main.set_attr(&p("/f"), &SetAttr::mode(0o600)).expect("chmod");
    assert_eq!(e.mode, 0o600);
    let e = main
        .set_attr(&p("/f"), &SetAttr::mtime_ns(1_000_000_000))
        .expect("utimes");
    assert_eq!((e.mode, e.mtime_ns), (0o600, 1_000_000_000));
    let c = main.copy_file(&p("/f"), &p("/c")).expect("copy");
    assert_ne!(c.id, e.id);
    assert_eq!(c.hash, e.hash, "a copy shares the blob");
    let t = main.truncate(&p("/f"), 4).await.expect("truncate");
    assert_eq!((t.size, t.mode), (4, 0o600), "truncate keeps the mode");
    assert_eq!(get(&main, "/f").await, b"0123");
    assert_eq!(get(&main, "/c").await, b"0123456789");
    let e = main
        .put_reader(&p("/x/y/z"), &mut &b"streamed"[..], Some(0o640))
        .await
        .expect("put_reader");
    assert_eq!((e.size, e.mode), (8, 0o640));
}

#[tokio::test(flavor = "multi_thread")]
async fn fsck_finds_a_corrupt_blob() {
    let (d, store) = store();
    let main = head(&store, "main");
    let data = vec![9u8; 100_000];
    put(&main, "/f", &data).await;
    put(&main, "/ok", &[1u8; 100_000]).await;
    assert!(store.fsck().await.expect("fsck").problems.is_empty());
    let file = d
        .path()
        .join("blobs/data")
        .join(format!("{}.data", crate::BlobHash::of(&data)));
    let mut bytes = std::fs::read(&file).expect("blob file");
    bytes[5000] ^= 0xff;
    std::fs::write(&file, bytes).expect("corrupt it");
    let report = store.fsck().await.expect("fsck");
    assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
    assert!(
        report.problems[0].contains("corrupt") && report.problems[0].contains("\"f\""),
        "{:?}",
        report.problems
    );
    assert_eq!(
        get(&main, "/ok").await,
        vec![1u8; 100_000],
        "other files are undisturbed"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn versions_only_grow() {
    let (_d, store) = store();
    let main = head(&store, "main");
    let a = main.mkdir(&p("/a"), None).expect("mkdir").version;
    let b = main.mkdir(&p("/b"), None).expect("mkdir").version;
    assert!(b > a && a > Version(0));
    let log = store.log(&main, 10).expect("log");
    assert!(
        log.windows(2).all(|w| w[0].version > w[1].version),
        "log is newest first"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn streamed_writes_fall_back_to_a_staging_file() {
    let (_d, store) = store();
    let main = head(&store, "main");
    // Appends only: streamed straight into the blob store.
    let mut w = main.open_write(&p("/s"), OpenOptions::replace()).await.expect("open");
    for chunk in [b"hello ".as_slice(), b"streamed ", b"world"] {
        let at = w.len().expect("len");
        w.write_at(at, chunk).await.expect("append");
    }
    assert_eq!(w.len().expect("len"), 20);
    w.close().await.expect("close");
    assert_eq!(get(&main, "/s").await, b"hello streamed world");

    // Appends, then a write in the middle, a read-back and a truncation.
    let mut w = main.open_write(&p("/f"), OpenOptions::replace()).await.expect("open");
    w.write_at(0, b"0123456789").await.expect("append");
    w.write_at(10, b"abcdef").await.expect("append");
    w.write_at(2, b"XY").await.expect("overwrite in the middle");
    let mut buf = [0u8; 16];
    assert_eq!(w.read_at(0, &mut buf).await.expect("read back"), 16);
    assert_eq!(&buf, b"01XY456789abcdef");
    w.set_len(12).await.expect("truncate");
    w.write_at(12, b"!").await.expect("append after the switch");
    w.close().await.expect("close");
    assert_eq!(get(&main, "/f").await, b"01XY456789ab!");

    // An aborted stream publishes nothing and leaves no staging file.
    let mut w = main.open_write(&p("/s"), OpenOptions::replace()).await.expect("open");
    w.write_at(0, b"never").await.expect("append");
    w.abort();
    assert_eq!(get(&main, "/s").await, b"hello streamed world");
}

#[tokio::test(flavor = "multi_thread")]
async fn readdir_pages_through_runs_of_tombstones() {
    let (_d, store) = store();
    let main = head(&store, "main");
    // More than one query batch (64 rows) on each level, so the merge has to
    // stop at a level's last name and read on.
    for i in 0..300 {
        main.mkdir(&p(&format!("/e{i:03}")), None).expect("mkdir");
    }
    store.create_branch("b", "dev", "main", &At::Head).expect("fork");
    let dev = head(&store, "dev");
    for i in 0..300 {
        if i % 100 != 7 {
            dev.rmdir(&p(&format!("/e{i:03}"))).expect("rmdir");
        }
    }
    dev.rename(&p("/e007"), &p("/zz"), false).expect("rename");
    for page_size in [1, 2, 1000] {
        let mut names = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = dev
                .read_dir(&BucketPath::root(), after.as_deref(), page_size)
                .expect("page");
            if page.is_empty() {
                break;
            }
            after = page.last().map(|e| e.name.clone());
            names.extend(page.into_iter().map(|e| e.name));
        }
        assert_eq!(names, ["e107", "e207", "zz"], "pages of {page_size}");
    }
    assert_eq!(
        main.read_dir(&BucketPath::root(), None, 1000).expect("main").len(),
        300,
        "the parent is untouched"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn prune_keeps_what_stays_readable_and_gc_reclaims_the_rest() {
    let (d, store) = store();
    let main = head(&store, "main");
    let content = |i: u8| vec![i; 50_000];
    put(&main, "/x", &content(1)).await;
    let v1 = main.stat(&p("/x")).expect("stat").version;
    store
        .create_branch("b", "child", "main", &At::Head)
        .expect("fork after x1");
    put(&main, "/x", &content(2)).await;
    let snap = main.snapshot(Some("keep")).expect("snapshot of x2");
    put(&main, "/x", &content(3)).await;
    let v3 = main.stat(&p("/x")).expect("stat").version;
    put(&main, "/x", &content(4)).await;
    put(&main, "/gone", b"deleted before the prune point").await;
    main.remove(&p("/gone")).expect("remove");
    let now = main.snapshot(None).expect("head version");

    let report = store.prune("b", "main", now).expect("prune");
    assert!(report.rows >= 2 && report.commits >= 2, "{report:?}");
    assert_eq!(get(&main, "/x").await, content(4), "the head is untouched");
    assert!(missing(&main, "/gone"));
    let at_snap = store
        .tree("b", "main", &At::Snapshot("keep".into()))
        .expect("snapshot stays");
    assert_eq!(get(&at_snap, "/x").await, content(2));
    assert_eq!(
        store.tree("b", "main", &At::Version(snap.0)).map(|_| ()).ok(),
        Some(()),
        "by number too"
    );
    assert_eq!(
        get(&head(&store, "child"), "/x").await,
        content(1),
        "a fork point stays readable"
    );
    assert!(matches!(
        store.tree("b", "main", &At::Version(v3.0)),
        Err(Error::NoSuchVersion { .. })
    ));
    assert!(matches!(
        store.tree("b", "main", &At::Version(v1.0 - 1)),
        Err(Error::NoSuchVersion { .. })
    ));

    store.gc().await.expect("gc");
    let on_disk = |i: u8| {
        d.path()
            .join("blobs/data")
            .join(format!("{}.data", crate::BlobHash::of(&content(i))))
            .exists()
    };
    assert!(
        on_disk(1) && on_disk(2) && on_disk(4),
        "protected and current content stays"
    );
    assert!(!on_disk(3), "content only a pruned version read is reclaimed");
    assert!(store.fsck().await.expect("fsck").problems.is_empty());
    // Pruning again, or below the first prune point, changes nothing.
    assert_eq!(store.prune("b", "main", now).expect("prune again").rows, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_session_can_take_a_whole_blob_without_copying() {
    let (_d, store) = store();
    let main = head(&store, "main");
    let data: Vec<u8> = (0..200_000u32).map(|i| (i % 253) as u8).collect();
    put(&main, "/src", &data).await;
    let src = main.stat(&p("/src")).expect("stat");

    let mut w = main
        .open_write(&p("/copy"), OpenOptions::replace())
        .await
        .expect("open");
    assert!(w.copy_from(&src).await.expect("copy"), "a fresh session takes the blob");
    assert_eq!(w.len().expect("len"), data.len() as u64);
    let copy = w.close().await.expect("close");
    assert_eq!((copy.hash, copy.size), (src.hash, src.size), "the copy shares the blob");
    assert_ne!(copy.id, src.id);

    // A change after the copy works on the bytes, starting from the blob.
    let mut w = main
        .open_write(&p("/edited"), OpenOptions::replace())
        .await
        .expect("open");
    assert!(w.copy_from(&src).await.expect("copy"));
    w.write_at(0, b"EDIT").await.expect("write over the copy");
    w.close().await.expect("close");
    let mut want = data.clone();
    want[..4].copy_from_slice(b"EDIT");
    assert_eq!(get(&main, "/edited").await, want);

    // Not once something was written.
    let mut w = main
        .open_write(&p("/late"), OpenOptions::replace())
        .await
        .expect("open");
    w.write_at(0, b"x").await.expect("write");
    assert!(
        !w.copy_from(&src).await.expect("refused"),
        "only a fresh session can take a blob"
    );
    w.abort();
    assert_eq!(
        store.stats().await.expect("stats").blobs,
        2,
        "src/copy share one blob; edited has its own"
    );
    assert!(store.fsck().await.expect("fsck").problems.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn fsck_finds_an_entry_in_two_places() {
    let (_d, store) = store();
    let main = head(&store, "main");
    put(&main, "/a", b"one").await;
    assert_eq!(store.fsck().await.expect("fsck").entries_checked, 1);
    // Damage the tree behind the API's back: the same entry id at a second name.
    store
        .inner
        .db
        .write(|tx| {
            tx.execute(
                "INSERT INTO nodes (branch_id, parent, name, version, eid, kind, hash, size, mode, mtime_ns)
                 SELECT branch_id, parent, 'b', version, eid, kind, hash, size, mode, mtime_ns FROM nodes WHERE name = 'a'",
                [],
            )?;
            Ok(())
        })
        .expect("raw insert");
    let report = store.fsck().await.expect("fsck");
    assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
    assert!(
        report.problems[0].contains("b@main:/a") && report.problems[0].contains("b@main:/b"),
        "{:?}",
        report.problems
    );
}

#[tokio::test]
async fn refs_update_by_compare_and_swap() {
    use crate::RefUpdate;
    let (_dir, store) = store();
    store.create_bucket("r", crate::REPO_KIND).expect("bucket");
    let set = |old: Option<&str>, new: Option<&str>| RefUpdate {
        name: "refs/heads/main".into(),
        old: old.map(str::to_owned),
        new: new.map(str::to_owned),
    };
    store.update_refs("r", &[set(None, Some("a"))]).expect("create");
    // A stale old value loses, and an all-or-nothing batch changes nothing.
    assert!(matches!(
        store.update_refs("r", &[set(None, Some("b"))]),
        Err(Error::RefChanged { .. })
    ));
    let other = RefUpdate {
        name: "refs/heads/x".into(),
        old: None,
        new: Some("x".into()),
    };
    assert!(store.update_refs("r", &[other, set(Some("zzz"), Some("b"))]).is_err());
    assert_eq!(
        store.refs("r").expect("refs"),
        vec![("refs/heads/main".to_owned(), "a".to_owned())]
    );
    store.update_refs("r", &[set(Some("a"), None)]).expect("delete");
    assert!(store.refs("r").expect("refs").is_empty());
}

#[tokio::test]
async fn attachments_are_kept_by_gc_until_their_bucket_goes() {
    let (_dir, store) = store();
    store.create_bucket("r", crate::REPO_KIND).expect("bucket");
    let data = vec![7u8; 100_000];
    let blob = store.import_bytes(data.clone()).await.expect("import");
    store.attach("r", "pack/p.pack", &blob).expect("attach");
    let hash = blob.hash();
    drop(blob);
    store.gc().await.expect("gc");
    let listed = store.attachments("r", "pack/").expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].hash, hash);
    let target = _dir.path().join("linked");
    store.link_blob(&hash, &target).await.expect("link");
    assert_eq!(std::fs::read(&target).expect("read"), data);
    store.delete_bucket("r").expect("delete");
    store.gc().await.expect("gc");
    assert!(store.inner.blobs.complete_size(&hash).await.expect("status").is_none());
    // The linked copy outlives the store's own name for the blob.
    assert_eq!(std::fs::read(&target).expect("read").len(), data.len());
}

#[tokio::test]
async fn repo_branches_are_read_only_except_to_the_publisher() {
    let (_dir, store) = store();
    store.create_bucket("r", crate::REPO_KIND).expect("bucket");
    let tree = store.tree("r", "main", &At::Head).expect("tree");
    assert!(tree.is_read_only());
    assert!(matches!(tree.mkdir(&p("/x"), None), Err(Error::ReadOnly(_))));
    let blob = store.import_bytes(&b"hello"[..]).await.expect("import");
    let publisher = store.publish_tree("r", "topic").expect("publish");
    publisher
        .apply(&[
            crate::Edit::File {
                path: p("/a/b.txt"),
                blob: &blob,
                mode: 0o755,
            },
            crate::Edit::Symlink {
                path: p("/l"),
                target: "a/b.txt".into(),
            },
        ])
        .expect("apply");
    let read = store.tree("r", "topic", &At::Head).expect("tree");
    assert_eq!(read.read(&p("/a/b.txt"), 0, 100).await.expect("read"), b"hello");
    assert_eq!(read.stat(&p("/a/b.txt")).expect("stat").mode, 0o755);
    publisher.apply(&[crate::Edit::Remove(p("/a"))]).expect("remove");
    assert!(read.try_stat(&p("/a")).expect("stat").is_none());
    assert!(read.try_stat(&p("/l")).expect("stat").is_some());
}

#[tokio::test(flavor = "multi_thread")]
async fn directories_take_a_new_mtime_and_every_change_a_new_ctime() {
    let (_dir, store) = store();
    let t = head(&store, "main");
    t.mkdir(&p("/d"), None).expect("mkdir");
    let before = t.stat(&p("/d")).expect("stat");
    let tick = || std::thread::sleep(Duration::from_millis(5));
    tick();
    put(&t, "/d/f", b"x").await;
    let after_create = t.stat(&p("/d")).expect("stat");
    assert!(
        after_create.mtime_ns > before.mtime_ns,
        "a new entry moves the directory's mtime"
    );
    let f = t.stat(&p("/d/f")).expect("stat");
    tick();
    t.set_attr(&p("/d/f"), &SetAttr::mode(0o600)).expect("chmod");
    let chmodded = t.stat(&p("/d/f")).expect("stat");
    assert_eq!(chmodded.mtime_ns, f.mtime_ns, "chmod keeps mtime");
    assert!(chmodded.ctime_ns > f.ctime_ns, "chmod moves ctime");
    assert_eq!(
        t.stat(&p("/d")).expect("stat").mtime_ns,
        after_create.mtime_ns,
        "chmod leaves the directory"
    );
    tick();
    t.rename(&p("/d/f"), &p("/g"), false).expect("rename");
    assert!(
        t.stat(&p("/d")).expect("stat").mtime_ns > after_create.mtime_ns,
        "a move out moves it"
    );
    let d = t.stat(&p("/d")).expect("stat");
    tick();
    t.remove(&p("/g")).expect("rm");
    assert_eq!(
        t.stat(&p("/d")).expect("stat").mtime_ns,
        d.mtime_ns,
        "other directories stay"
    );
}

#[test]
fn process_alive_tells_running_from_gone() {
    assert!(crate::process_alive(std::process::id()));
    assert!(!crate::process_alive(u32::MAX));
    // A child that exited but was not reaped yet is a zombie: gone.
    let mut child = std::process::Command::new("true").spawn().expect("spawn true");
    let pid = child.id();
    let stat = format!("/proc/{pid}/stat");
    while std::fs::read_to_string(&stat).is_ok_and(|s| !s.contains(") Z")) {
        std::thread::yield_now();
    }
    assert!(!crate::process_alive(pid));
    child.wait().expect("reap");
}

/// A large blob (data and outboard both files) is read window by window:
/// a corrupt byte fails exactly the reads whose 16 KiB group holds it, and
/// is recorded; every other range still reads.
#[tokio::test(flavor = "multi_thread")]
async fn reads_of_a_corrupt_large_blob_fail_only_where_it_is_corrupt() {
    let (d, store) = store();
    let main = head(&store, "main");
    let data: Vec<u8> = (0..(12u32 << 20))
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    put(&main, "/big", &data).await;
    let hash = crate::BlobHash::of(&data);
    let blobs = d.path().join("blobs/data");
    assert!(
        blobs.join(format!("{hash}.obao4")).exists(),
        "the outboard is a file of its own"
    );
    let file = blobs.join(format!("{hash}.data"));
    let mut bytes = std::fs::read(&file).expect("blob file");
    let bad = 9_000_000;
    bytes[bad] ^= 0x01;
    std::fs::write(&file, bytes).expect("corrupt it");

    let e = main.stat(&BucketPath::parse("/big").expect("path")).expect("stat");
    let r = main.open_read(&e).await.expect("open");
    let head_bytes = r.read_at(0, 1 << 20).await.expect("a clean range reads");
    assert_eq!(head_bytes, &data[..1 << 20]);
    let tail = r
        .read_at(10 << 20, 1 << 20)
        .await
        .expect("a clean range after it reads");
    assert_eq!(tail, &data[10 << 20..11 << 20]);
    let group = (bad as u64) & !0x3fff;
    assert!(matches!(r.read_at(group, 100).await, Err(Error::Corrupt(_))));
    assert!(matches!(r.read_at(group - 10, 20).await, Err(Error::Corrupt(_))));
    assert!(r.read_at(group - 10, 10).await.is_ok(), "the group before is fine");
    let mut sink = Vec::new();
    assert!(matches!(
        main.copy_to(&e, &mut sink, &|_| {}).await,
        Err(Error::Corrupt(_))
    ));
    assert!(
        sink.len() <= bad,
        "no byte of the bad group came out ({} bytes did)",
        sink.len()
    );
    // Recorded for stats (off the reader's thread).
    let start = std::time::Instant::now();
    loop {
        let stats = store.stats().await.expect("stats");
        if stats.corrupt_blobs == vec![hash.to_string()] {
            break;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(10),
            "{:?}",
            stats.corrupt_blobs
        );
        tokio::task::yield_now().await;
    }
}

/// The file bytes at a head, as a walk of the whole tree counts them.
fn walked(t: &Tree) -> u64 {
    t.inner
        .db
        .read(|c| {
            Ok(t.walk_in(c, &BucketPath::root(), &crate::types::Entry::root())?
                .iter()
                .filter(|(_, e)| e.kind == Kind::File)
                .map(|(_, e)| e.size)
                .sum())
        })
        .expect("walk")
}

fn counted(t: &Tree) -> u64 {
    t.inner.db.read(|c| t.head_bytes(c)).expect("count")
}

/// The per-commit count of head bytes (what quotas check) agrees with a
/// walk after every kind of change, on a branch and on its fork.
#[tokio::test(flavor = "multi_thread")]
async fn head_bytes_follow_every_change() {
    let (_d, store) = store();
    let t = head(&store, "main");
    put(&t, "/a", &[1u8; 1000]).await;
    assert_eq!((counted(&t), walked(&t)), (1000, 1000));
    put(&t, "/a", &[1u8; 10]).await;
    assert_eq!(counted(&t), 10, "an overwrite replaces the old size");
    t.mkdir_all(&p("/d/e")).expect("mkdir");
    put(&t, "/d/e/f", &[2u8; 300]).await;
    t.copy_file(&p("/d/e/f"), &p("/d/g")).expect("copy");
    assert_eq!((counted(&t), walked(&t)), (610, 610), "after a copy");
    t.rename(&p("/d/g"), &p("/h"), false).expect("rename");
    assert_eq!((counted(&t), walked(&t)), (610, 610), "after a move");
    t.rename(&p("/h"), &p("/d/e/f"), true).expect("rename over");
    assert_eq!((counted(&t), walked(&t)), (310, 310), "after a move over a file");
    t.remove_all(&p("/d")).expect("rm -r");
    assert_eq!((counted(&t), walked(&t)), (10, 10), "after removing a tree");
    let mut w = t.open_write(&p("/sparse"), OpenOptions::replace()).await.expect("open");
    w.set_len(5000).await.expect("truncate up");
    w.close().await.expect("close");
    assert_eq!((counted(&t), walked(&t)), (5010, 5010), "a hole counts");

    store.create_branch("b", "dev", "main", &At::Head).expect("fork");
    let dev = head(&store, "dev");
    assert_eq!(counted(&dev), 5010, "a fork starts with its parent's bytes");
    put(&dev, "/more", &[3u8; 90]).await;
    dev.remove(&p("/a")).expect("rm");
    assert_eq!((counted(&dev), walked(&dev)), (5090, 5090));
    assert_eq!(counted(&t), 5010, "the parent is untouched");

    // Quotas: each head on its own, open writes included.
    store.set_quota("b", Some(6000)).expect("quota");
    let mut w1 = t.open_write(&p("/w1"), OpenOptions::replace()).await.expect("open");
    w1.write_at(0, &[0u8; 500]).await.expect("within the quota");
    let mut w2 = t.open_write(&p("/w2"), OpenOptions::replace()).await.expect("open");
    let e = w2.write_at(0, &[0u8; 600]).await.expect_err("past it with w1's bytes");
    assert!(matches!(e, Error::Quota { .. }), "{e}");
    w2.abort();
    w1.close().await.expect("close");
    assert_eq!(counted(&t), 5510);
    w1 = t.open_write(&p("/w3"), OpenOptions::replace()).await.expect("open");
    w1.write_at(0, &[0u8; 490]).await.expect("the rest of the quota");
    w1.close().await.expect("close");
}

/// The paged walk visits what the whole-tree walk does, parents first and
/// each directory in name order, across page boundaries.
#[tokio::test(flavor = "multi_thread")]
async fn the_paged_walk_sees_the_whole_tree() {
    let (_d, store) = store();
    let t = head(&store, "main");
    t.mkdir_all(&p("/big/sub/deeper")).expect("mkdir");
    for i in 0..1205 {
        t.create_empty(&p(&format!("/big/f{i:04}")), None).expect("create");
    }
    put(&t, "/big/sub/deeper/x", b"x").await;
    put(&t, "/top", b"t").await;
    let paged: Vec<String> = t
        .walk_iter(&BucketPath::root())
        .expect("walk")
        .map(|r| r.expect("entry").0.to_string())
        .collect();
    let mut whole: Vec<String> = t
        .walk(&BucketPath::root())
        .expect("walk")
        .into_iter()
        .map(|(p, _)| p.to_string())
        .collect();
    assert_eq!(paged.len(), whole.len());
    let pos = |s: &str| paged.iter().position(|p| p == s).expect(s);
    assert!(pos("/big") < pos("/big/f0000") && pos("/big/sub") < pos("/big/sub/deeper/x"));
    assert!(pos("/big/f1204") < pos("/big/sub"), "name order within a directory");
    let mut sorted = paged.clone();
    sorted.sort();
    whole.sort();
    assert_eq!(sorted, whole);
    assert_eq!(t.walk_iter(&p("/top")).expect("a file").count(), 0);
}

/// The namespace path `/BUCKET@BRANCH[@V]/PATH`: the longest existing branch
/// a path spells wins, `..` stops at the root, and a first component that is
/// no address is refused.
#[test]
fn namespace_paths_locate_the_longest_existing_branch() {
    let (_dir, store) = store();
    store.create_branch("b", "feature", "main", &At::Head).expect("fork");
    store.create_branch("b", "feature/x", "main", &At::Head).expect("fork");
    let at = |raw: &str| {
        let a = store.locate(raw).expect("locates").expect("an address");
        (a.branch, a.at, a.path.as_str().to_owned())
    };
    assert!(store.locate("/").expect("root").is_none());
    assert!(store.locate("/../..").expect("root").is_none());
    assert_eq!(at("/b"), ("main".into(), At::Head, "/".into()));
    assert_eq!(at("/b/d/f"), ("main".into(), At::Head, "/d/f".into()));
    assert_eq!(at("/b@feature/x/f"), ("feature/x".into(), At::Head, "/f".into()));
    assert_eq!(at("/b@feature/y/f"), ("feature".into(), At::Head, "/y/f".into()));
    assert_eq!(at("/b@main@1/./d/../f"), ("main".into(), At::Version(1), "/f".into()));
    assert!(matches!(store.locate("/b:x/f"), Err(Error::NoSuchBucket(_))));
    assert!(matches!(store.locate("/B A D/f"), Err(Error::InvalidName { .. })));
}

#[tokio::test(flavor = "multi_thread")]
async fn share_links_read_one_version_until_revoked_or_expired() {
    use crate::{Level, NewShare};
    let (_d, store) = store();
    store.add_user("ann", "ssh-ed25519 AAAA ann", false).expect("user");
    store.grant("ann", "b", Level::Read).expect("grant");
    let t = head(&store, "main");
    t.mkdir(&p("/docs"), None).expect("mkdir");
    put(&t, "/docs/a.txt", b"one").await;
    let v = store.log(&t, 1).expect("log")[0].version;
    fn link<'a>(address: &'a crate::Address, lifetime: Option<Duration>, password: Option<&'a str>) -> NewShare<'a> {
        NewShare {
            user: "ann",
            address,
            lifetime,
            password,
        }
    }
    let addr = |a: &str| crate::Address::parse(a).expect("address");
    // The head's address pins the newest version.
    let docs = addr("b:/docs");
    let (info, secret) = store.create_share(&link(&docs, None, None)).expect("share");
    assert!(secret.starts_with(crate::SHARE_PREFIX) && !info.password);
    assert_eq!(info.version, v);
    // A later write does not move the link: it shows its version.
    put(&t, "/docs/a.txt", b"two").await;
    let share = store.open_share(&secret).expect("open");
    assert!(share.unlocked_by(None));
    assert_eq!(share.tree.read(&p("/docs/a.txt"), 0, 10).await.expect("read"), b"one");
    // A wrong secret, a missing path and a revoked link.
    let wrong = format!("{}{}", crate::SHARE_PREFIX, "0".repeat(64));
    assert!(matches!(store.open_share(&wrong), Err(Error::NoSuchShare)));
    assert!(store.create_share(&link(&addr("b:/nope"), None, None)).is_err());
    store.revoke_share(&info.prefix, Some("ann")).expect("revoke");
    assert!(matches!(store.open_share(&secret), Err(Error::NoSuchShare)));
    // An address with a version pins that one; a link whose lifetime is
    // over is expired (a zero lifetime ends as it is made).
    let at_v = addr(&format!("b@main@{}:/docs", v.0));
    let (_, short) = store
        .create_share(&link(&at_v, Some(Duration::ZERO), None))
        .expect("share");
    assert!(matches!(store.open_share(&short), Err(Error::ShareExpired)));
    let (pinned, _) = store.create_share(&link(&at_v, None, None)).expect("share");
    assert_eq!(pinned.version, v);
    // A password: only its proof unlocks.
    let (_, locked) = store.create_share(&link(&docs, None, Some("pw"))).expect("share");
    let share = store.open_share(&locked).expect("open");
    assert!(!share.unlocked_by(None) && !share.unlocked_by(Some("00")));
    assert_eq!(store.unlock_share(&locked, "nope").expect("unlock"), None);
    let proof = store
        .unlock_share(&locked, "pw")
        .expect("unlock")
        .expect("right password");
    assert!(share.unlocked_by(Some(&proof)));
    // The maker losing access ends the link.
    store.revoke("ann", "b").expect("revoke grant");
    assert!(matches!(store.open_share(&locked), Err(Error::NoSuchShare)));
}

#[test]
fn share_lifetimes_parse_with_units() {
    use crate::parse_lifetime;
    assert_eq!(parse_lifetime("90s").expect("s"), Duration::from_secs(90));
    assert_eq!(parse_lifetime("7d").expect("d"), Duration::from_secs(7 * 86_400));
    assert_eq!(parse_lifetime("2w").expect("w"), Duration::from_secs(14 * 86_400));
    assert_eq!(parse_lifetime("3").expect("days"), Duration::from_secs(3 * 86_400));
    for bad in ["", "0d", "d", "7y", "-1h", "99999w"] {
        assert!(parse_lifetime(bad).is_err(), "{bad:?}");
    }
}
