//! One function per command, each a few calls on the `alknet-fs` API.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use alknet_fs::{Address, At, BucketPath, Entry, Kind, Store, Tree, Version};
use anyhow::{Context, Result, bail};
use serde::Serialize;
use tokio::io::AsyncWriteExt;

use crate::stdio::Stdio;
use crate::{BranchCmd, BucketCmd, Cli, Command, KeyCmd, RepoCmd, TokenCmd, UserCmd};

/// Transfers smaller than this get no progress bar.
const PROGRESS_MIN: u64 = 16 << 20;

/// Runs the command line `cli`: through the node's socket when a node
/// holds the data directory, else on the data directory itself. Returns
/// the exit status.
pub(crate) async fn run(cli: Cli) -> Result<u8> {
    let json = cli.json;
    match cli.command {
        Command::Init { admin_key, admin_name } => return init(&cli.data, admin_key.as_deref(), &admin_name, json),
        Command::GitRemoteHelper { url, .. } => return crate::git_helper::run(&url),
        Command::Umount { mountpoint } => return crate::mount::umount(&mountpoint),
        Command::Mount {
            addr,
            mountpoint,
            read_only,
            node,
            identity,
            cache_dir,
            cache_mib,
        } => {
            let cache = crate::mount::CacheOptions {
                dir: cache_dir,
                bytes: cache_mib << 20,
            };
            if let Some(node) = node {
                let remote = crate::mount::RemoteOptions { node, identity };
                return crate::mount::run_remote(&remote, &cache, &addr, &mountpoint, read_only).await;
            }
            if crate::node::connect(&cli.data)?.is_some() {
                return crate::mount::run_beside(&cli.data, &cache, &addr, &mountpoint, read_only).await;
            }
            let store = open_store(&cli.data)?;
            let out = crate::mount::run(&store, &cache, &addr, &mountpoint, read_only).await;
            store.close().await?;
            return out;
        }
        Command::Proxy { node, http } => {
            let alpn = if http {
                alknet_protocols::ALPN_HTTP
            } else {
                alknet_protocols::ALPN_SSH
            };
            alknet_protocols::proxy(&node, alpn).await?;
            return Ok(0);
        }
        Command::Serve {
            ssh,
            quic,
            no_quic,
            http,
            no_http,
        } => {
            if crate::node::connect(&cli.data)?.is_some() {
                bail!(
                    "a node already serves {} (alknet serve or alknet mount); stop it first",
                    cli.data.display()
                );
            }
            let store = open_store(&cli.data)?;
            let out = crate::server::run(&store, ssh, quic, no_quic, http, no_http).await;
            store.close().await?;
            return out;
        }
        _ => {}
    }
    if let Some(conn) = crate::node::connect(&cli.data)? {
        return crate::node::forward(conn);
    }
    let store = open_store(&cli.data)?;
    let io = Stdio::process()?;
    let code = execute(&store, cli.command, json, &io).await;
    store.close().await?;
    Ok(code)
}

/// Opens the data directory with the limits of its settings.
fn open_store(data: &Path) -> Result<Store> {
    if !data.join("alknet.db").exists() {
        bail!(
            "no data directory at {} (run `alknet init`, or pass --data / set ALKNET_DATA)",
            data.display()
        );
    }
    let store = Store::open(data).with_context(|| format!("opening {}", data.display()))?;
    // Every writer on this data directory keeps the same limits.
    store.set_limits(crate::config::Config::load(store.dir())?.limits.store()?);
    Ok(store)
}

/// Runs one command on `store` with the streams of `io`, reports a failure
/// there as the CLI does (`alknet: MESSAGE` on stderr, or a JSON error on
/// stdout under `--json`), and returns the exit status. The same for a
/// command run in this process and one a node runs for a client.
pub(crate) async fn execute(store: &Store, command: Command, json: bool, io: &Stdio) -> u8 {
    let out = dispatch(store, command, json, io).await;
    let flushed = io.finish();
    match out.and_then(|code| flushed.map(|()| code).map_err(anyhow::Error::from)) {
        Ok(code) => code,
        Err(e) => report(&e, json, io),
    }
}

/// Reports a failed command on `io` and returns its exit status: nothing for
/// a reader that went away (`alknet cat big | head`), a JSON error on
/// stdout (where the answer goes) under `--json`, else `alknet: MESSAGE`
/// on stderr.
pub(crate) fn report(e: &anyhow::Error, json: bool, io: &Stdio) -> u8 {
    if crate::is_broken_pipe(e) {
        return 0;
    }
    if json {
        let kind = e
            .chain()
            .find_map(|c| c.downcast_ref::<alknet_fs::Error>())
            .map_or("error", alknet_fs::Error::kind);
        let report = serde_json::json!({"error": {"kind": kind, "message": format!("{e:#}")}});
        let mut out = io.out();
        writeln!(out, "{report}").and_then(|()| out.flush()).ok();
    } else {
        io.warn(format_args!("{e:#}"));
    }
    1
}

async fn dispatch(store: &Store, command: Command, json: bool, io: &Stdio) -> Result<u8> {
    match command {
        Command::Init { .. }
        | Command::Proxy { .. }
        | Command::GitRemoteHelper { .. }
        | Command::Umount { .. }
        | Command::Serve { .. }
        | Command::Mount { .. } => bail!("this command does not run through a node"),
        Command::User(UserCmd::Add { name, key, admin }) => {
            store.add_user(&name, &read_key(&io.local(&key))?, admin)?;
            say(io, json, &serde_json::json!({"added": name, "admin": admin}), || {
                format!("added user {name}")
            })?;
        }
        Command::User(UserCmd::List) => {
            let users = store.list_users()?;
            print_list(io, json, &users, |u| {
                let grants: Vec<String> = u.grants.iter().map(|(b, l)| format!("{b}:{l}")).collect();
                format!(
                    "{}{}\t{} keys\t{}",
                    u.name,
                    if u.admin { " (admin)" } else { "" },
                    u.keys.len(),
                    grants.join(" ")
                )
            })?;
        }
        Command::User(UserCmd::Key(KeyCmd::Add { name, key })) => {
            store.add_user_key(&name, &read_key(&io.local(&key))?)?;
            say(io, json, &serde_json::json!({"user": name, "added_key": key}), || {
                format!("added a key to user {name}")
            })?;
        }
        Command::User(UserCmd::Key(KeyCmd::Remove { name, key })) => {
            store.remove_user_key(&name, &read_key(&io.local(&key))?)?;
            say(io, json, &serde_json::json!({"user": name, "removed_key": key}), || {
                format!("removed a key from user {name}")
            })?;
        }
        Command::User(UserCmd::Remove { name }) => {
            store.remove_user(&name)?;
            say(io, json, &serde_json::json!({"removed": name}), || {
                format!("removed user {name}")
            })?;
        }
        Command::Grant { user, bucket, level } => {
            store.grant(&user, &bucket, level.parse()?)?;
            say(
                io,
                json,
                &serde_json::json!({"user": user, "bucket": bucket, "level": level}),
                || format!("{user} has {level} access to {bucket}"),
            )?;
        }
        Command::Revoke { user, bucket } => {
            store.revoke(&user, &bucket)?;
            say(io, json, &serde_json::json!({"user": user, "bucket": bucket}), || {
                format!("revoked {user} on {bucket}")
            })?;
        }
        Command::Token(TokenCmd::Create {
            user,
            name,
            expires,
            read_only,
        }) => {
            let (info, text) = store.create_token(&user, name.as_deref(), expires, read_only)?;
            let mut shown = serde_json::to_value(&info)?;
            shown["token"] = serde_json::json!(text);
            say(io, json, &shown, || {
                format!(
                    "token {} for {user}{}{} (shown once; keep it secret):\n{text}",
                    info.name,
                    if read_only { ", read-only" } else { "" },
                    expires.map(|d| format!(", expires in {d} days")).unwrap_or_default(),
                )
            })?;
        }
        Command::Token(TokenCmd::List) => {
            let tokens = store.list_tokens(None)?;
            print_list(io, json, &tokens, |t| {
                format!(
                    "{}\t{}\t{}\talk_{}…\t{}{}",
                    t.id,
                    t.user,
                    t.name,
                    t.prefix,
                    t.expires_ms
                        .map(|e| format!("expires {}", format_time(e)))
                        .unwrap_or_else(|| "no expiry".into()),
                    if t.read_only { "\tread-only" } else { "" }
                )
            })?;
        }
        Command::Token(TokenCmd::Revoke { token }) => {
            let t = store.revoke_token(&token, None)?;
            say(io, json, &t, || {
                format!("revoked token {} ({}) of {}", t.id, t.name, t.user)
            })?;
        }
        Command::Bucket(BucketCmd::Create { name }) => {
            store.create_bucket(&name, "drive")?;
            say(io, json, &serde_json::json!({"created": name}), || {
                format!("created bucket {name}")
            })?;
        }
        Command::Bucket(BucketCmd::List) => {
            let buckets = store.list_buckets()?;
            print_list(io, json, &buckets, |b| {
                let quota = b.quota.map(|q| format!("\tquota {}", alknet_fs::format_size(q)));
                format!(
                    "{}\t{}\t{} branches{}",
                    b.name,
                    b.kind,
                    b.branches,
                    quota.unwrap_or_default()
                )
            })?;
        }
        Command::Bucket(BucketCmd::Quota { name, size }) => {
            let quota = match size.as_str() {
                "none" => None,
                s => Some(alknet_fs::parse_size(s)?),
            };
            store.set_quota(&name, quota)?;
            let used = store.head_bytes(&name, alknet_fs::DEFAULT_BRANCH)?;
            say(
                io,
                json,
                &serde_json::json!({"bucket": name, "quota": quota, "main_bytes": used}),
                || match quota {
                    Some(q) => format!(
                        "bucket {name}: quota {} per branch head (main holds {})",
                        alknet_fs::format_size(q),
                        alknet_fs::format_size(used)
                    ),
                    None => format!("bucket {name}: no quota"),
                },
            )?;
        }
        Command::Bucket(BucketCmd::Delete { name }) => {
            store.delete_bucket(&name)?;
            say(io, json, &serde_json::json!({"deleted": name}), || {
                format!("deleted bucket {name} (run `alknet gc` to reclaim its space)")
            })?;
        }
        Command::Repo(cmd) => {
            let config = crate::config::Config::load(store.dir())?;
            let forge = alknet_forge::Forge::new(store.clone(), config.git.forge());
            match cmd {
                RepoCmd::Create { name } => {
                    let info = forge.create(&name)?;
                    say(io, json, &info, || {
                        format!(
                            "created repository {} (default branch {})",
                            info.name,
                            info.head.trim_start_matches("refs/heads/")
                        )
                    })?;
                }
                RepoCmd::List => print_list(io, json, &forge.list()?, |r| {
                    format!(
                        "{}\t{}\t{} refs\t{} packs\t{} bytes",
                        r.name,
                        r.head.trim_start_matches("refs/heads/"),
                        r.refs,
                        r.packs,
                        r.pack_bytes
                    )
                })?,
                RepoCmd::Delete { name } => {
                    forge.delete(&name)?;
                    say(io, json, &serde_json::json!({"deleted": name}), || {
                        format!("deleted repository {name} (its space is reclaimed by the next gc)")
                    })?;
                }
                RepoCmd::SetHead { name, branch } => {
                    forge.set_head(&name, &branch)?;
                    say(io, json, &serde_json::json!({"repo": name, "head": branch}), || {
                        format!("HEAD of {name} now names {branch}")
                    })?;
                }
            }
        }
        Command::Branch(BranchCmd::Create { bucket, new, from }) => {
            let src = Address::parse(&format!("{bucket}@{from}"))?;
            let v = store.create_branch(&bucket, &new, &src.branch, &src.at)?;
            say(
                io,
                json,
                &serde_json::json!({"created": new, "from": from, "version": v}),
                || format!("created branch {bucket}@{new} from {from}"),
            )?;
        }
        Command::Branch(BranchCmd::List { bucket }) => {
            let branches = store.list_branches(&bucket)?;
            print_list(io, json, &branches, |b| match (&b.parent, b.fork_version) {
                (Some(p), Some(v)) => format!("{}\tfrom {p}@{v}", b.name),
                _ => b.name.clone(),
            })?;
        }
        Command::Branch(BranchCmd::Delete { bucket, name }) => {
            store.delete_branch(&bucket, &name)?;
            say(io, json, &serde_json::json!({"deleted": name}), || {
                format!("deleted branch {bucket}@{name}")
            })?;
        }
        Command::Put {
            local,
            addr,
            recursive: true,
            ..
        } => put_dir(store, &local, &addr, json, io).await?,
        Command::Put { local, addr, mode, .. } => put(store, &local, &addr, mode, json, io).await?,
        Command::Get {
            addr,
            output,
            recursive: true,
            at,
        } => get_dir(store, &addr, output.as_deref(), at.at.as_deref(), json, io).await?,
        Command::Get { addr, output, at, .. } => {
            get(store, &addr, output.as_deref(), at.at.as_deref(), json, io).await?
        }
        Command::Cat { addr, at } => {
            let (tree, path) = open(store, &addr, at.at.as_deref())?;
            let entry = tree.follow(&path, true)?.1;
            copy_to_stdout(&tree, &entry, io).await?;
        }
        Command::Ls {
            addr,
            long,
            recursive,
            at,
        } => ls(store, &addr, long, recursive, at.at.as_deref(), json, io)?,
        Command::Stat { addr, at } => {
            let (tree, path) = open(store, &addr, at.at.as_deref())?;
            let e = tree.stat(&path)?;
            say(io, json, &e, || {
                format!(
                    "path: {path}\nkind: {:?}\nsize: {}\nmode: {:o}\nmtime: {}\nid: {}\nversion: {}\nhash: {}{}",
                    e.kind,
                    e.size,
                    e.mode,
                    format_time(e.mtime_ns / 1_000_000),
                    e.id.0,
                    e.version,
                    e.hash.map(|h| h.to_hex()).unwrap_or_else(|| "-".into()),
                    e.target.as_ref().map(|t| format!("\ntarget: {t}")).unwrap_or_default(),
                )
            })?;
        }
        Command::Mkdir { addr, parents } => {
            let (tree, path) = open_head(store, &addr)?;
            let e = if parents {
                tree.mkdir_all(&path)?
            } else {
                tree.mkdir(&path, None)?
            };
            say(io, json, &e, || format!("created {path}"))?;
        }
        Command::Rm {
            addr, entry: Some(id), ..
        } => {
            let (tree, _) = open_head(store, &addr)?;
            let path = tree.remove_entry(alknet_fs::EntryId(id))?;
            say(
                io,
                json,
                &serde_json::json!({"removed": path.as_str(), "entry": id}),
                || format!("removed entry {id} ({path})"),
            )?;
        }
        Command::Rm { addr, recursive, .. } => {
            // GNU rm's rule: `.` and `..` name directories already in use.
            let raw = addr.rsplit_once(':').map_or("", |(_, p)| p);
            if raw.rsplit('/').next().is_some_and(|last| last == "." || last == "..") {
                bail!("{addr}: refusing to remove '.' or '..'");
            }
            let (tree, path) = open_head(store, &addr)?;
            match tree.stat(&path)? {
                e if e.is_dir() && !recursive => bail!("{path}: is a directory (use rm -r)"),
                e if e.is_dir() => tree.remove_all(&path)?,
                _ => tree.remove(&path)?,
            }
            say(io, json, &serde_json::json!({"removed": path.as_str()}), || {
                format!("removed {path}")
            })?;
        }
        Command::Mv { from, to } => {
            let (tree, from, to) = same_tree(store, &from, &to)?;
            let e = tree.rename(&from, &to, true)?;
            say(io, json, &e, || {
                format!(
                    "moved {from} to {}",
                    tree.path_of(e.id).ok().flatten().unwrap_or(to.clone())
                )
            })?;
        }
        Command::Cp { from, to } => {
            let (tree, from, to) = same_tree(store, &from, &to)?;
            let e = tree.copy_file(&from, &to)?;
            say(io, json, &e, || {
                format!(
                    "copied {from} to {}",
                    tree.path_of(e.id).ok().flatten().unwrap_or(to.clone())
                )
            })?;
        }
        Command::Ln {
            symbolic: _,
            target,
            addr,
        } => {
            let (tree, path) = open_head(store, &addr)?;
            let e = tree.symlink(&path, &target)?;
            say(io, json, &e, || format!("{path} -> {target}"))?;
        }
        Command::Snapshot { addr, name } => {
            let (tree, _) = open_head(store, &addr)?;
            let v = tree.snapshot(name.as_deref())?;
            say(io, json, &serde_json::json!({"version": v, "name": name}), || {
                let a = format!(
                    "{}@{}@{}",
                    tree.bucket(),
                    tree.branch(),
                    name.as_deref().unwrap_or(&v.to_string())
                );
                format!("snapshot {a} (version {v})")
            })?;
        }
        Command::Snapshots { addr } => {
            let a = Address::parse(&addr)?;
            let snaps = store.snapshots(&a.bucket, &a.branch)?;
            print_list(io, json, &snaps, |s| format!("{}\t{}", s.version, s.name))?;
        }
        Command::Log { addr, limit } => {
            let (tree, path) = open(store, &addr, None)?;
            let commits = if path.is_root() {
                store.log(&tree, limit)?
            } else {
                // The commits that touched the path, read a page at a time.
                let touches = |c: &alknet_fs::Commit| {
                    c.paths
                        .iter()
                        .any(|p| BucketPath::parse(p).is_ok_and(|p| p.starts_with(&path) || path.starts_with(&p)))
                };
                let (mut found, mut before) = (Vec::new(), None);
                while found.len() < limit {
                    let page = store.log_before(&tree, before, 1000)?;
                    let Some(last) = page.last() else { break };
                    before = Some(last.version);
                    found.extend(page.into_iter().filter(touches));
                }
                found.truncate(limit);
                found
            };
            print_list(io, json, &commits, |c| {
                format!(
                    "{}\t{}\t{}\t{}\t{}",
                    c.version,
                    format_time(c.at_ms),
                    c.branch,
                    c.op,
                    c.paths.join(" ")
                )
            })?;
        }
        Command::Diff { from, to } => {
            let (a, scope) = open(store, &from, None)?;
            let (b, _) = open(store, &to, None)?;
            let mut changes = a.diff(&b)?;
            changes.retain(|c| {
                let path = match c {
                    alknet_fs::Change::Added { path, .. }
                    | alknet_fs::Change::Removed { path, .. }
                    | alknet_fs::Change::Modified { path, .. } => path,
                    alknet_fs::Change::Renamed { to, .. } => to,
                };
                BucketPath::parse(path).is_ok_and(|p| p.starts_with(&scope))
            });
            print_list(io, json, &changes, |c| match c {
                alknet_fs::Change::Added { path, .. } => format!("A\t{path}"),
                alknet_fs::Change::Removed { path, .. } => format!("D\t{path}"),
                alknet_fs::Change::Modified { path, .. } => format!("M\t{path}"),
                alknet_fs::Change::Renamed { from, to, modified, .. } => {
                    format!("R{}\t{from} -> {to}", if *modified { "M" } else { "" })
                }
            })?;
        }
        Command::Watch { addr, from } => watch(store, &addr, from, io)?,
        Command::Prune { addr, before } => {
            let a = Address::parse(&addr)?;
            let at = Address::parse(&format!("{}@{}@{before}", a.bucket, a.branch))?.at;
            let version = store.tree(&a.bucket, &a.branch, &at)?.at().unwrap_or(Version(0));
            let r = store.prune(&a.bucket, &a.branch, version)?;
            say(io, json, &r, || {
                format!(
                    "pruned {}@{} before version {version}: {} tree rows and {} commits dropped (run `alknet gc` to reclaim space)",
                    a.bucket, a.branch, r.rows, r.commits
                )
            })?;
        }
        Command::Gc => {
            let r = store.gc().await?;
            say(io, json, &r, || {
                format!(
                    "{} blobs live; {} of {} reclaimed; {} stale write sessions cleared",
                    r.live,
                    r.before - r.after,
                    r.before,
                    r.stale_sessions
                )
            })?;
        }
        Command::Fsck => {
            let r = store.fsck().await?;
            say(io, json, &r, || {
                let mut s = format!(
                    "checked {} blobs ({} bytes) and {} entries",
                    r.blobs_checked, r.bytes_checked, r.entries_checked
                );
                for p in &r.problems {
                    s.push_str(&format!("\nproblem: {p}"));
                }
                if r.problems.is_empty() {
                    s.push_str("; no problems");
                }
                s
            })?;
            if !r.problems.is_empty() {
                return Ok(1);
            }
        }
        Command::Stats => {
            let s = store.stats().await?;
            say(io, json, &s, || {
                format!(
                    "buckets: {}\nbranches: {}\nversions: {}\ntree rows: {}\nblobs: {} ({} bytes)\ndisk: {} bytes\npending jobs: {}\ncorrupt blobs: {}{}",
                    s.buckets,
                    s.branches,
                    s.versions,
                    s.rows,
                    s.blobs,
                    s.blob_bytes,
                    s.disk_bytes,
                    s.pending_jobs,
                    s.corrupt_blobs.len(),
                    s.corrupt_blobs.iter().map(|h| format!("\n  {h}")).collect::<String>()
                )
            })?;
        }
    }
    Ok(0)
}

/// The key in an OpenSSH public key file, as the store keeps it.
fn read_key(file: &Path) -> Result<String> {
    let text = std::fs::read_to_string(file).with_context(|| format!("{}: cannot read", file.display()))?;
    alknet_protocols::parse_key(&text).with_context(|| format!("{}", file.display()))
}

fn init(data: &Path, admin_key: Option<&Path>, admin_name: &str, json: bool) -> Result<u8> {
    let existed = data.join("alknet.db").exists();
    let store = Store::open(data).with_context(|| format!("creating the store in {}", data.display()))?;
    let keys = crate::keys::ensure(&data.join("keys"))?;
    let wrote_config = crate::config::Config::write_default(data)?;
    // The first admin: only while there are no users, so a rerun changes nothing.
    let mut admin = None;
    if store.user_count()? > 0
        && let Some(f) = admin_key
    {
        // A rerun with the same key is fine; another key is not silently dropped.
        let key = read_key(f)?;
        match store.user_for_key(&key)? {
            Some(user) if store.is_admin(&user)? => {}
            Some(user) => bail!(
                "{}: that key belongs to user {user:?}, who is not an admin",
                f.display()
            ),
            None => bail!(
                "{} already has users, so --admin-key is not used: add it with `alknet user add NAME --key {} --admin`",
                data.display(),
                f.display()
            ),
        }
    }
    if store.user_count()? == 0 {
        let key_file = match admin_key {
            Some(f) => Some(f.to_path_buf()),
            None => operator_key(),
        };
        if let Some(f) = key_file {
            store.add_user(admin_name, &read_key(&f)?, true)?;
            admin = Some(format!("{admin_name} (key {})", f.display()));
        }
    }
    let fresh = !existed || keys.created || wrote_config || admin.is_some();
    let verb = if fresh { "initialized" } else { "already initialized" };
    let no_users = store.user_count()? == 0;
    let io = &Stdio::process()?;
    say(
        io,
        json,
        &serde_json::json!({
            "data": data, "node_id": keys.node_id, "ssh_host_key": keys.ssh_fingerprint_line, "admin": admin,
        }),
        || {
            let admin = match &admin {
                Some(a) => format!("\nadmin: {a}"),
                None if no_users => {
                    "\nno users yet: alknet user add NAME --key ~/.ssh/id_ed25519.pub --admin".to_owned()
                }
                None => String::new(),
            };
            format!(
                "{verb} {}\nnode id: {}\nssh host key: {}{admin}",
                data.display(),
                keys.node_id,
                keys.ssh_fingerprint_line
            )
        },
    )?;
    io.finish()?;
    Ok(0)
}

/// The operator's own public key, if they have one.
fn operator_key() -> Option<std::path::PathBuf> {
    let home = std::env::var_os("HOME")?;
    ["id_ed25519.pub", "id_ecdsa.pub", "id_rsa.pub"]
        .iter()
        .map(|f| Path::new(&home).join(".ssh").join(f))
        .find(|p| p.exists())
}

/// Opens the tree an address names; `at` (from `--at`) overrides its version.
fn open(store: &Store, addr: &str, at: Option<&str>) -> Result<(Tree, BucketPath)> {
    let a = Address::parse(addr)?;
    let at = match at {
        None => a.at.clone(),
        Some(v) => Address::parse(&format!("{}@{}@{v}", a.bucket, a.branch))?.at,
    };
    let tree = store.tree(&a.bucket, &a.branch, &at)?;
    let path = tree.follow_dirs(&a.path)?;
    Ok((tree, path))
}

/// Opens a tree for writing: the address must not name a version.
fn open_head(store: &Store, addr: &str) -> Result<(Tree, BucketPath)> {
    let a = Address::parse(addr)?;
    if a.at != At::Head {
        bail!("{a}: a past version is read-only");
    }
    let tree = store.tree(&a.bucket, &a.branch, &At::Head)?;
    let path = tree.follow_dirs(&a.path)?;
    Ok((tree, path))
}

/// Resolves two addresses that must name the same bucket@branch. A `to` that
/// is an existing directory receives the source by name, like `mv` and `cp`.
fn same_tree(store: &Store, from: &str, to: &str) -> Result<(Tree, BucketPath, BucketPath)> {
    let (tree, from_path) = open_head(store, from)?;
    let (other, mut to_path) = open_head(store, to)?;
    if (tree.bucket(), tree.branch()) != (other.bucket(), other.branch()) {
        bail!("{from} and {to} are on different branches or buckets; both must name the same bucket@branch");
    }
    if let (Some(dir), Some((_, name))) = (tree.try_stat(&to_path)?, from_path.split_last())
        && dir.is_dir()
    {
        to_path = to_path.join(name);
    }
    Ok((tree, from_path, to_path))
}

async fn put(store: &Store, local: &str, addr: &str, mode: Option<u32>, json: bool, io: &Stdio) -> Result<()> {
    let (tree, mut path) = open_head(store, addr)?;
    let into_dir = path.is_root() || addr.ends_with('/') || tree.try_stat(&path)?.is_some_and(|e| e.is_dir());
    if into_dir {
        if local == "-" {
            bail!("{addr}: is a directory; give a file path to store standard input");
        }
        let name = Path::new(local)
            .file_name()
            .and_then(|n| n.to_str())
            .with_context(|| format!("{local}: has no usable file name"))?;
        path = BucketPath::parse(&format!("{path}/{name}"))?;
    }
    let entry = if local == "-" {
        tree.put_reader(&path, &mut io.stdin()?, mode).await?
    } else {
        let local_path = &io.local(local);
        let md = std::fs::metadata(local_path).with_context(|| format!("{local}: cannot read"))?;
        if md.is_dir() {
            bail!("{local}: is a directory (put stores one file)");
        }
        let bar = progress_bar(io, md.len(), "storing");
        let on_progress = |done: u64, total: u64| {
            if let Some(b) = &bar {
                b.set_length(total.max(1));
                b.set_position(done);
            }
        };
        let e = tree.put_file(&path, local_path, mode, &on_progress).await?;
        if let Some(b) = bar {
            b.finish_and_clear();
        }
        e
    };
    say(io, json, &entry, || {
        format!(
            "stored {}@{}:{path} ({} bytes)",
            tree.bucket(),
            tree.branch(),
            entry.size
        )
    })
}

/// `put -r DIR ADDR`: like `cp -a`, into `ADDR/DIR` if ADDR is a directory,
/// else as ADDR: files, symlinks and directories (empty ones too), with
/// their modes and mtimes. Special files and names that are not UTF-8 are
/// skipped with a warning.
async fn put_dir(store: &Store, local: &str, addr: &str, json: bool, io: &Stdio) -> Result<()> {
    let (tree, path) = open_head(store, addr)?;
    let src = &io.local(local);
    let top = std::fs::metadata(src).with_context(|| format!("{local}: cannot read"))?;
    if !top.is_dir() {
        bail!("{local}: not a directory (put -r stores a directory)");
    }
    let root = match tree.try_stat(&path)? {
        Some(e) if e.is_dir() => {
            let name = std::path::absolute(src)?
                .file_name()
                .and_then(|n| n.to_str())
                .map(str::to_owned)
                .with_context(|| format!("{local}: has no usable name"))?;
            path.child(&name)?
        }
        Some(_) => bail!("{path}: exists and is not a directory"),
        None => path,
    };
    let mut files = vec![(root.clone(), local_dir(&top))];
    let mut stack = vec![(src.to_path_buf(), root.clone())];
    while let Some((dir, at)) = stack.pop() {
        for entry in std::fs::read_dir(&dir).with_context(|| format!("{}: cannot list", dir.display()))? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else {
                io.warn(format_args!(
                    "skipping {}: the name is not UTF-8",
                    entry.path().display()
                ));
                continue;
            };
            let meta = std::fs::symlink_metadata(entry.path())?;
            let dest = at.child(name)?;
            let ty = meta.file_type();
            if ty.is_dir() {
                files.push((dest.clone(), local_dir(&meta)));
                stack.push((entry.path(), dest));
            } else if ty.is_file() {
                let (mode, mtime_ns) = mode_and_mtime(&meta);
                files.push((
                    dest,
                    alknet_fs::LocalEntry::File {
                        local: entry.path(),
                        mode,
                        mtime_ns,
                    },
                ));
            } else if ty.is_symlink() {
                let target = std::fs::read_link(entry.path())?;
                let Some(target) = target.to_str() else {
                    io.warn(format_args!(
                        "skipping {}: the target is not UTF-8",
                        entry.path().display()
                    ));
                    continue;
                };
                files.push((
                    dest,
                    alknet_fs::LocalEntry::Symlink {
                        target: target.to_owned(),
                    },
                ));
            } else {
                io.warn(format_args!(
                    "skipping {}: not a file, directory or symlink",
                    entry.path().display()
                ));
            }
        }
    }
    files.sort_by(|a, b| a.0.cmp(&b.0));
    let count = files
        .iter()
        .filter(|(_, e)| matches!(e, alknet_fs::LocalEntry::File { .. }))
        .count();
    let bar = bar_with(
        io,
        count > 1000,
        count as u64,
        "storing",
        "{msg} {bar:40} {pos}/{len} files {eta}",
    );
    let on_progress = |done: u64, total: u64| {
        if let Some(b) = &bar {
            b.set_length(total.max(1));
            b.set_position(done);
        }
    };
    let version = tree.put_files(&root, &files, &on_progress).await?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    say(
        io,
        json,
        &serde_json::json!({"path": root.as_str(), "files": count, "entries": files.len(), "version": version}),
        || {
            format!(
                "stored {count} files ({} entries) under {}@{}:{root} (version {version})",
                files.len(),
                tree.bucket(),
                tree.branch()
            )
        },
    )
}

/// Mode bits and mtime (ns) of local metadata.
fn mode_and_mtime(meta: &std::fs::Metadata) -> (u32, i64) {
    use std::os::unix::fs::MetadataExt;
    (meta.mode() & 0o7777, meta.mtime() * 1_000_000_000 + meta.mtime_nsec())
}

fn local_dir(meta: &std::fs::Metadata) -> alknet_fs::LocalEntry {
    let (mode, mtime_ns) = mode_and_mtime(meta);
    alknet_fs::LocalEntry::Dir { mode, mtime_ns }
}

/// `get -r ADDR -o DIR`: like `cp -a` out of the store: the tree at ADDR
/// becomes DIR (or DIR/NAME if DIR exists), with files, symlinks and
/// directories, modes and mtimes. Each file lands whole or not at all.
async fn get_dir(
    store: &Store,
    addr: &str,
    output: Option<&str>,
    at: Option<&str>,
    json: bool,
    io: &Stdio,
) -> Result<()> {
    let (tree, path) = open(store, addr, at)?;
    let top = tree.stat(&path)?;
    if !top.is_dir() {
        bail!("{path}: not a directory (get -r fetches a directory)");
    }
    let name = if path.is_root() {
        tree.bucket().to_owned()
    } else {
        top.name.clone()
    };
    let dest = match output.map(|o| io.local(o)) {
        Some(o) if o.is_dir() => o.join(&name),
        Some(o) => o,
        None => io.local(&name),
    };
    std::fs::create_dir_all(&dest).with_context(|| format!("{}: cannot create", dest.display()))?;
    let (mut files, mut entries) = (0u64, 0u64);
    // Directories are kept for their times (set last); files stream past.
    let mut dirs = vec![(dest.clone(), top.clone())];
    for walked in tree.walk_iter(&path)? {
        let (p, e) = &walked?;
        entries += 1;
        let rel = p
            .as_str()
            .strip_prefix(path.as_str())
            .unwrap_or(p.as_str())
            .trim_start_matches('/');
        let local = dest.join(rel);
        match e.kind {
            Kind::Dir => {
                std::fs::create_dir_all(&local).with_context(|| format!("{}: cannot create", local.display()))?;
                dirs.push((local, e.clone()));
            }
            Kind::File => {
                let tmp = local.with_file_name(format!(".{}.alknet-partial", e.name));
                let written = tree.export(e, &tmp).await;
                match written {
                    Ok(_) => {
                        std::fs::rename(&tmp, &local).with_context(|| format!("{}: cannot write", local.display()))?
                    }
                    Err(err) => {
                        std::fs::remove_file(&tmp).ok();
                        return Err(err).with_context(|| format!("{p}"));
                    }
                }
                set_mode_and_mtime(&local, e)?;
                files += 1;
            }
            Kind::Symlink => {
                std::fs::remove_file(&local).ok();
                std::os::unix::fs::symlink(e.target.as_deref().unwrap_or_default(), &local)
                    .with_context(|| format!("{}: cannot create the symlink", local.display()))?;
            }
            _ => io.warn(format_args!("skipping {p}: a special file")),
        }
    }
    // Directory times last, deepest first: filling a directory changes its mtime.
    dirs.sort_by(|a, b| b.0.cmp(&a.0));
    for (local, e) in &dirs {
        set_mode_and_mtime(local, e)?;
    }
    // Paths as the client gave them, not as this process resolved them.
    let shown = dest.strip_prefix(io.local("")).unwrap_or(&dest).to_path_buf();
    say(
        io,
        json,
        &serde_json::json!({"path": shown, "files": files, "entries": entries}),
        || format!("wrote {} ({files} files, {entries} entries)", shown.display()),
    )
}

/// Gives a local file or directory the mtime and then the mode of `e`.
fn set_mode_and_mtime(local: &Path, e: &Entry) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mtime = std::time::UNIX_EPOCH + Duration::from_nanos(e.mtime_ns.max(0) as u64);
    std::fs::File::open(local)
        .and_then(|f| f.set_modified(mtime))
        .with_context(|| format!("{}: cannot set its mtime", local.display()))?;
    std::fs::set_permissions(local, std::fs::Permissions::from_mode(e.mode & 0o7777))
        .with_context(|| format!("{}: cannot set its mode", local.display()))
}

async fn get(store: &Store, addr: &str, output: Option<&str>, at: Option<&str>, json: bool, io: &Stdio) -> Result<()> {
    let (tree, path) = open(store, addr, at)?;
    let (path, entry) = tree.follow(&path, true)?;
    if entry.kind != Kind::File {
        bail!("{path}: not a regular file");
    }
    let output = match output {
        Some("-") => return copy_to_stdout(&tree, &entry, io).await,
        // Into an existing directory, like cp.
        Some(o) if io.local(o).is_dir() => Path::new(o).join(&entry.name).display().to_string(),
        Some(o) => o.to_owned(),
        None => entry.name.clone(),
    };
    // Write beside the target and rename, so a failed get never leaves half a file.
    let target = &io.local(&output);
    let tmp = target.with_file_name(format!(
        ".{}.alknet-partial",
        target.file_name().and_then(|n| n.to_str()).unwrap_or("get")
    ));
    let result = async {
        let bar = progress_bar(io, entry.size, "fetching");
        if let Some(b) = &bar {
            b.set_position(0);
        }
        let written = tree.export(&entry, &tmp).await?;
        if let Some(b) = bar {
            b.finish_and_clear();
        }
        if written != entry.size {
            bail!("{path}: wrote {written} bytes, expected {}", entry.size);
        }
        tokio::fs::rename(&tmp, target)
            .await
            .with_context(|| format!("{output}: cannot write"))?;
        anyhow::Ok(())
    }
    .await;
    if result.is_err() {
        tokio::fs::remove_file(&tmp).await.ok();
    }
    result?;
    say(io, json, &entry, || format!("wrote {output} ({} bytes)", entry.size))
}

async fn copy_to_stdout(tree: &Tree, entry: &Entry, io: &Stdio) -> Result<()> {
    if entry.kind != Kind::File {
        bail!("{}: not a regular file", entry.name);
    }
    let bar = progress_bar(io, entry.size, "reading");
    let on_progress = |done: u64| {
        if let Some(b) = &bar {
            b.set_position(done);
        }
    };
    let mut stdout = tokio::io::BufWriter::with_capacity(1 << 20, io.stdout()?);
    tree.copy_to(entry, &mut stdout, &on_progress).await?;
    stdout.flush().await?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    Ok(())
}

/// A bar on stderr for a transfer of `size` bytes, if it is a terminal and
/// the transfer is big enough to wait for.
fn progress_bar(io: &Stdio, size: u64, what: &str) -> Option<indicatif::ProgressBar> {
    bar_with(
        io,
        size >= PROGRESS_MIN,
        size,
        what,
        "{msg} {bar:40} {bytes}/{total_bytes} {bytes_per_sec} {eta}",
    )
}

fn bar_with(io: &Stdio, wanted: bool, len: u64, what: &str, template: &str) -> Option<indicatif::ProgressBar> {
    if !wanted || !io.err_tty() {
        return None;
    }
    let term = io.term().ok()?;
    let bar = indicatif::ProgressBar::with_draw_target(Some(len), indicatif::ProgressDrawTarget::term_like(term));
    bar.set_style(indicatif::ProgressStyle::with_template(template).expect("the template is valid"));
    bar.set_message(what.to_owned());
    Some(bar)
}

fn ls(store: &Store, addr: &str, long: bool, recursive: bool, at: Option<&str>, json: bool, io: &Stdio) -> Result<()> {
    let (tree, path) = open(store, addr, at)?;
    let top = tree.stat(&path)?;
    // Rows stream out as they are read: a large tree is never held.
    let rows: Box<dyn Iterator<Item = Result<(String, Entry)>> + '_> = if !top.is_dir() {
        Box::new(std::iter::once(Ok((top.name.clone(), top))))
    } else if recursive {
        let base = path.clone();
        Box::new(tree.walk_iter(&path)?.map(move |walked| {
            let (p, e) = walked?;
            let rel = p
                .as_str()
                .strip_prefix(base.as_str())
                .unwrap_or(p.as_str())
                .trim_start_matches('/')
                .to_owned();
            Ok((rel, e))
        }))
    } else {
        let (tree, path) = (&tree, path.clone());
        let mut after: Option<String> = None;
        let mut done = false;
        let pages = std::iter::from_fn(move || {
            if done {
                return None;
            }
            match tree.read_dir(&path, after.as_deref(), 1000) {
                Ok(page) if page.is_empty() => {
                    done = true;
                    None
                }
                Ok(page) => {
                    after = page.last().map(|e| e.name.clone());
                    Some(Ok(page))
                }
                Err(e) => {
                    done = true;
                    Some(Err(e))
                }
            }
        });
        Box::new(
            pages.flat_map(|page| -> Box<dyn Iterator<Item = Result<(String, Entry)>>> {
                match page {
                    Ok(page) => Box::new(page.into_iter().map(|e| Ok((e.name.clone(), e)))),
                    Err(e) => Box::new(std::iter::once(Err(e.into()))),
                }
            }),
        )
    };
    let mut out = io.out();
    if json {
        // One JSON array, written entry by entry.
        write!(out, "[")?;
        for (i, row) in rows.enumerate() {
            let (p, e) = row?;
            if i > 0 {
                write!(out, ",")?;
            }
            serde_json::to_writer(&mut *out, &serde_json::json!({"path": p, "entry": e}))?;
        }
        writeln!(out, "]")?;
        return Ok(());
    }
    for row in rows {
        let (name, e) = row?;
        if long {
            let target = e.target.as_ref().map(|t| format!(" -> {t}")).unwrap_or_default();
            writeln!(
                out,
                "{} {:>12} {} {name}{target}",
                mode_string(&e),
                e.size,
                format_time(e.mtime_ns / 1_000_000)
            )?;
        } else {
            writeln!(out, "{name}")?;
        }
    }
    Ok(())
}

fn watch(store: &Store, addr: &str, from: Option<u64>, io: &Stdio) -> Result<()> {
    let a = Address::parse(addr)?;
    let from = match from {
        Some(v) => Version(v),
        None => {
            let tree = store.tree(&a.bucket, &a.branch, &At::Head)?;
            store.log(&tree, 1)?.first().map(|c| c.version).unwrap_or(Version(0))
        }
    };
    let mut watch = store.watch(&a.bucket, &a.branch, from)?;
    // Wakes each second to notice a client of the node that went away.
    while !io.gone() {
        let commits = watch.next(Duration::from_secs(1))?;
        if commits.is_empty() {
            continue;
        }
        let mut out = io.out();
        for commit in commits {
            serde_json::to_writer(&mut *out, &commit)?;
            out.write_all(b"\n")?;
        }
        out.flush()?;
    }
    Ok(())
}

fn mode_string(e: &Entry) -> String {
    alknet_fs::display::mode_string(e.kind, e.mode)
}

/// `YYYY-MM-DDTHH:MM:SSZ` for milliseconds since the epoch (UTC).
fn format_time(ms: i64) -> String {
    let t = alknet_fs::display::Utc::from_unix(ms.div_euclid(1000));
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year, t.month, t.day, t.hour, t.minute, t.second
    )
}

fn say<T: Serialize>(io: &Stdio, json: bool, value: &T, text: impl FnOnce() -> String) -> Result<()> {
    if json {
        print_json(io, value)
    } else {
        let mut out = io.out();
        writeln!(out, "{}", text())?;
        Ok(())
    }
}

fn print_list<T: Serialize>(io: &Stdio, json: bool, items: &[T], line: impl Fn(&T) -> String) -> Result<()> {
    if json {
        return print_json(io, &items);
    }
    let mut out = io.out();
    for item in items {
        writeln!(out, "{}", line(item))?;
    }
    Ok(())
}

fn print_json<T: Serialize + ?Sized>(io: &Stdio, value: &T) -> Result<()> {
    let mut out = io.out();
    serde_json::to_writer(&mut *out, value)?;
    writeln!(out)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::format_time;

    #[test]
    fn times_format_as_utc() {
        assert_eq!(format_time(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_time(951_782_400_000), "2000-02-29T00:00:00Z");
        assert_eq!(format_time(1_795_328_394_000), "2026-11-22T06:19:54Z");
    }
}
