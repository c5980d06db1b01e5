//! One function per command, each a few calls on the `alknet-fs` API.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use alknet_fs::{Address, At, BucketPath, Entry, Kind, Store, Tree, Version};
use alknet_protocols::http_client::{self, Method};
use alknet_protocols::{NodeClient, RemoteError};
use anyhow::{Context, Result, bail};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

use crate::remote;
use crate::stdio::Stdio;
use crate::{BranchCmd, BucketCmd, Cli, Command, KeyCmd, LfsCmd, PeerCmd, RepoCmd, SyncCmd, TokenCmd, UserCmd};

/// Transfers smaller than this get no progress bar.
const PROGRESS_MIN: u64 = 16 << 20;

/// Runs the command line `cli`: through the node's socket when a node
/// holds the data directory, else on the data directory itself. Returns
/// the exit status.
/// The one admin of a data directory, whom a local `share` acts as.
fn only_admin(store: &Store) -> Result<String> {
    let admins: Vec<String> = store
        .list_users()?
        .into_iter()
        .filter(|u| u.admin)
        .map(|u| u.name)
        .collect();
    match admins.as_slice() {
        [one] => Ok(one.clone()),
        [] => anyhow::bail!("there is no admin to make the link as: give --as USER"),
        _ => anyhow::bail!("several admins: give --as USER (the link reads with that user's access)"),
    }
}

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
            // A global --node (or ALKNET_NODE) that names a QUIC node serves too:
            // the mount's own protocol runs over SSH there, signed in by key.
            let node = match (node, cli.node) {
                (Some(node), _) => Some(node),
                (None, Some(url)) if url.contains("://") => bail!(
                    "{url}: a mount reaches a node over SSH, not HTTP; \
                     use `alknet mount --node NODE_ID@HOST:PORT` (QUIC) or `--node HOST:PORT` (SSH over TCP)"
                ),
                (None, url) => url,
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
    if let Some(url) = &cli.node {
        let node = remote::connect(url).await?;
        let io = Stdio::process()?;
        let code = execute(On::Node(&node), cli.command, json, &io).await;
        node.close().await;
        return Ok(code);
    }
    if let Some(conn) = crate::node::connect(&cli.data)? {
        return crate::node::forward(conn);
    }
    let store = open_store(&cli.data)?;
    let io = Stdio::process()?;
    let code = execute(On::Store(&store), cli.command, json, &io).await;
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
pub(crate) async fn execute(on: On<'_>, command: Command, json: bool, io: &Stdio) -> u8 {
    let out = dispatch(on, command, json, io).await;
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
        let kind = e.chain().find_map(|c| {
            c.downcast_ref::<alknet_fs::Error>()
                .map(alknet_fs::Error::kind)
                .or_else(|| c.downcast_ref::<RemoteError>().map(|r| r.code.as_str()))
        });
        let kind = kind.unwrap_or("error");
        let report = serde_json::json!({"error": {"kind": kind, "message": format!("{e:#}")}});
        let mut out = io.out();
        writeln!(out, "{report}").and_then(|()| out.flush()).ok();
    } else {
        io.warn(format_args!("{e:#}"));
    }
    1
}

/// Where a command runs: on a data directory (in this process, or in the
/// node for a client of its socket), or against a remote node's HTTP API.
#[derive(Clone, Copy)]
pub(crate) enum On<'a> {
    Store(&'a Store),
    Node(&'a NodeClient),
}

impl<'a> On<'a> {
    /// The store, for what only runs on the data directory itself.
    fn store(self, what: &str) -> Result<&'a Store> {
        match self {
            On::Store(store) => Ok(store),
            On::Node(_) => bail!("{what} does not run against a remote node; run it on the node"),
        }
    }
}

async fn dispatch(on: On<'_>, command: Command, json: bool, io: &Stdio) -> Result<u8> {
    use Method as M;
    match command {
        Command::Init { .. }
        | Command::Proxy { .. }
        | Command::GitRemoteHelper { .. }
        | Command::Umount { .. }
        | Command::Serve { .. }
        | Command::Mount { .. } => bail!("this command does not run through a node"),
        Command::User(UserCmd::Add { name, key, admin }) => {
            on.store("user add")?
                .add_user(&name, &read_key(&io.local(&key))?, admin)?;
            say(io, json, &json!({"added": name, "admin": admin}), || {
                format!("added user {name}")
            })?;
        }
        Command::User(UserCmd::List) => {
            let users: Vec<alknet_fs::User> = match on {
                On::Store(store) => store.list_users()?,
                On::Node(node) => node.json(M::GET, "/api/v1/users", None).await?,
            };
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
            on.store("user key add")?
                .add_user_key(&name, &read_key(&io.local(&key))?)?;
            say(io, json, &json!({"user": name, "added_key": key}), || {
                format!("added a key to user {name}")
            })?;
        }
        Command::User(UserCmd::Key(KeyCmd::Remove { name, key })) => {
            on.store("user key remove")?
                .remove_user_key(&name, &read_key(&io.local(&key))?)?;
            say(io, json, &json!({"user": name, "removed_key": key}), || {
                format!("removed a key from user {name}")
            })?;
        }
        Command::User(UserCmd::Remove { name }) => {
            on.store("user remove")?.remove_user(&name)?;
            say(io, json, &json!({"removed": name}), || format!("removed user {name}"))?;
        }
        Command::Grant { peer: Some(peer), args } => {
            let [bucket, level] = &args[..] else {
                bail!("grant --peer NAME takes BUCKET LEVEL");
            };
            let parsed: alknet_fs::Level = level.parse()?;
            on.store("grant --peer")?.grant_peer(&peer, bucket, parsed)?;
            say(
                io,
                json,
                &json!({"peer": peer, "bucket": bucket, "level": level}),
                || format!("peer {peer} has {level} access to {bucket}"),
            )?;
        }
        Command::Grant { peer: None, args } => {
            let [user, bucket, level] = &args[..] else {
                bail!("grant takes USER BUCKET LEVEL (or --peer NAME BUCKET LEVEL)");
            };
            let parsed: alknet_fs::Level = level.parse()?;
            match on {
                On::Store(store) => store.grant(user, bucket, parsed)?,
                On::Node(node) => {
                    let url = format!("/api/v1/users/{}/grants/{}", enc(user), enc(bucket));
                    node.json::<Value>(M::PUT, &url, Some(&json!({"level": level}))).await?;
                }
            }
            say(
                io,
                json,
                &json!({"user": user, "bucket": bucket, "level": level}),
                || format!("{user} has {level} access to {bucket}"),
            )?;
        }
        Command::Revoke { peer: Some(peer), args } => {
            let [bucket] = &args[..] else {
                bail!("revoke --peer NAME takes BUCKET");
            };
            on.store("revoke --peer")?.revoke_peer(&peer, bucket)?;
            say(io, json, &json!({"peer": peer, "bucket": bucket}), || {
                format!("revoked peer {peer} on {bucket}")
            })?;
        }
        Command::Revoke { peer: None, args } => {
            let [user, bucket] = &args[..] else {
                bail!("revoke takes USER BUCKET (or --peer NAME BUCKET)");
            };
            match on {
                On::Store(store) => store.revoke(user, bucket)?,
                On::Node(node) => {
                    let url = format!("/api/v1/users/{}/grants/{}", enc(user), enc(bucket));
                    node.json::<Value>(M::DELETE, &url, None).await?;
                }
            }
            say(io, json, &json!({"user": user, "bucket": bucket}), || {
                format!("revoked {user} on {bucket}")
            })?;
        }
        Command::Peer(PeerCmd::Add { name, node }) => {
            let (id, host_port) = alknet_protocols::parse_node_addr(&node)?;
            on.store("peer add")?.add_peer(&name, &id.to_string(), host_port)?;
            say(
                io,
                json,
                &json!({"peer": name, "node_id": id.to_string(), "addr": host_port}),
                || format!("added peer {name}; grant it buckets with `alknet grant --peer {name} BUCKET read|write`"),
            )?;
        }
        Command::Peer(PeerCmd::List) => {
            let peers: Vec<alknet_fs::Peer> = match on {
                On::Store(store) => store.list_peers()?,
                On::Node(node) => node.json(M::GET, "/api/v1/peers", None).await?,
            };
            print_list(io, json, &peers, |p| {
                let grants: Vec<String> = p.grants.iter().map(|(b, l)| format!("{b}:{}", l.as_str())).collect();
                format!(
                    "{}\t{}@{}\tgrants: {}\tsyncs: {}",
                    p.name,
                    p.node_id,
                    p.addr,
                    if grants.is_empty() {
                        "none".into()
                    } else {
                        grants.join(" ")
                    },
                    if p.syncs.is_empty() {
                        "none".into()
                    } else {
                        p.syncs.join(" ")
                    }
                )
            })?;
        }
        Command::Peer(PeerCmd::Remove { name }) => {
            on.store("peer remove")?.remove_peer(&name)?;
            say(io, json, &json!({"removed": name}), || format!("removed peer {name}"))?;
        }
        Command::Sync(SyncCmd::Add { bucket, peer, branches }) => {
            for b in &branches {
                alknet_fs::check_branch_name("branch name", b)?;
            }
            let only = (!branches.is_empty()).then_some(&branches[..]);
            on.store("sync add")?.add_sync(&bucket, &peer, only)?;
            say(
                io,
                json,
                &json!({"bucket": bucket, "peer": peer, "branches": branches}),
                || format!("{bucket} syncs with {peer} while the node runs"),
            )?;
        }
        Command::Sync(SyncCmd::Remove { bucket, peer }) => {
            on.store("sync remove")?.remove_sync(&bucket, &peer)?;
            say(io, json, &json!({"bucket": bucket, "peer": peer}), || {
                format!("{bucket} no longer syncs with {peer}")
            })?;
        }
        Command::Sync(SyncCmd::Status) => {
            let status: Vec<alknet_fs::LinkStatus> = match on {
                On::Store(store) => store.sync_report().await?,
                On::Node(node) => node.json(M::GET, "/api/v1/sync", None).await?,
            };
            print_list(io, json, &status, |s| {
                format!(
                    "{}\t{}\t{}\tbehind {}\tblobs missing {} ({})\t{}",
                    s.peer,
                    s.bucket,
                    if s.connected { "connected" } else { "not connected" },
                    s.versions_behind,
                    s.blobs_missing,
                    alknet_fs::format_size(s.bytes_to_fetch),
                    s.last_error.as_deref().unwrap_or("")
                )
            })?;
        }
        Command::NodeId => {
            let store = on.store("node-id")?;
            let key = crate::keys::node_secret(&store.dir().join("keys").join("node.key"))?;
            let id = key.public().to_string();
            say(io, json, &json!({"node_id": id}), || id.clone())?;
        }
        Command::Token(TokenCmd::Create {
            user,
            name,
            expires,
            read_only,
        }) => {
            let (info, text) = match on {
                On::Store(store) => store.create_token(&user, name.as_deref(), expires, read_only)?,
                On::Node(node) => {
                    let body = json!({"user": user, "name": name, "expires_days": expires, "read_only": read_only});
                    let mut answer: Value = node.json(M::POST, "/api/v1/tokens", Some(&body)).await?;
                    let text = answer["token"].take().as_str().unwrap_or_default().to_owned();
                    (serde_json::from_value(answer)?, text)
                }
            };
            let info: alknet_fs::TokenInfo = info;
            let mut shown = serde_json::to_value(&info)?;
            shown["token"] = json!(text);
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
            let tokens: Vec<alknet_fs::TokenInfo> = match on {
                On::Store(store) => store.list_tokens(None)?,
                On::Node(node) => node.json(M::GET, "/api/v1/tokens", None).await?,
            };
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
            let t: alknet_fs::TokenInfo = match on {
                On::Store(store) => store.revoke_token(&token, None)?,
                On::Node(node) => {
                    node.json(M::DELETE, &format!("/api/v1/tokens/{}", enc(&token)), None)
                        .await?
                }
            };
            say(io, json, &t, || {
                format!("revoked token {} ({}) of {}", t.id, t.name, t.user)
            })?;
        }
        Command::Bucket(BucketCmd::Create { name }) => {
            match on {
                On::Store(store) => store.create_bucket(&name, "drive")?,
                On::Node(node) => {
                    let body = json!({"name": name, "kind": "drive"});
                    node.json::<Value>(M::POST, "/api/v1/buckets", Some(&body)).await?;
                }
            }
            say(io, json, &json!({"created": name}), || format!("created bucket {name}"))?;
        }
        Command::Bucket(BucketCmd::List) => {
            let buckets: Vec<alknet_fs::BucketInfo> = match on {
                On::Store(store) => store.list_buckets()?,
                On::Node(node) => node.json(M::GET, "/api/v1/buckets", None).await?,
            };
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
            let used = match on {
                On::Store(store) => {
                    store.set_quota(&name, quota)?;
                    store.head_bytes(&name, alknet_fs::DEFAULT_BRANCH)?
                }
                On::Node(node) => {
                    let url = format!("{}/quota", remote::bucket_api(&name));
                    let answer: Value = node.json(M::PUT, &url, Some(&json!({"quota": quota}))).await?;
                    answer["main_bytes"].as_u64().unwrap_or_default()
                }
            };
            say(
                io,
                json,
                &json!({"bucket": name, "quota": quota, "main_bytes": used}),
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
            match on {
                On::Store(store) => store.delete_bucket(&name)?,
                On::Node(node) => {
                    node.json::<Value>(M::DELETE, &remote::bucket_api(&name), None).await?;
                }
            }
            say(io, json, &json!({"deleted": name}), || {
                format!("deleted bucket {name} (run `alknet gc` to reclaim its space)")
            })?;
        }
        Command::Repo(RepoCmd::List) => {
            let repos: Vec<alknet_forge::RepoInfo> = match on {
                On::Store(store) => forge_of(store)?.list()?,
                On::Node(node) => node.json(M::GET, "/api/v1/repos", None).await?,
            };
            print_list(io, json, &repos, |r| {
                format!(
                    "{}\t{}\t{} refs\t{} packs\t{} bytes\t{} LFS objects\t{} LFS bytes{}",
                    r.name,
                    r.head.trim_start_matches("refs/heads/"),
                    r.refs,
                    r.packs,
                    r.pack_bytes,
                    r.lfs_objects,
                    r.lfs_bytes,
                    if r.public { "\tpublic" } else { "" }
                )
            })?;
        }
        Command::Repo(RepoCmd::Create { name, public }) => {
            let forge = forge_of(on.store("repo create")?)?;
            let mut info = forge.create(&name)?;
            if public {
                info = forge.set_public(&name, true)?;
            }
            say(io, json, &info, || {
                format!(
                    "created repository {} (default branch {})",
                    info.name,
                    info.head.trim_start_matches("refs/heads/")
                )
            })?;
        }
        Command::Repo(RepoCmd::SetPublic { name, public }) => {
            let info = forge_of(on.store("repo set-public")?)?.set_public(&name, public == "on")?;
            say(io, json, &info, || {
                if info.public {
                    format!("{} is public: anyone may clone and fetch it", info.name)
                } else {
                    format!("{} is private: a token with a grant is needed", info.name)
                }
            })?;
        }
        Command::Share {
            addr,
            expires,
            password_file,
            as_user,
        } => {
            let password = match &password_file {
                Some(f) => Some(
                    std::fs::read_to_string(f)
                        .with_context(|| format!("reading {}", f.display()))?
                        .lines()
                        .next()
                        .unwrap_or_default()
                        .to_owned(),
                ),
                None => None,
            };
            let answer: Value = match on {
                On::Store(store) => {
                    let user = match as_user {
                        Some(u) => u,
                        None => only_admin(store)?,
                    };
                    let lifetime = expires.as_deref().map(alknet_fs::parse_lifetime).transpose()?;
                    let (info, secret) = store.create_share(&alknet_fs::NewShare {
                        user: &user,
                        address: &Address::parse(&addr)?,
                        lifetime,
                        password: password.as_deref(),
                    })?;
                    let config = crate::config::Config::load(store.dir())?;
                    let base = config
                        .http
                        .url
                        .clone()
                        .unwrap_or_else(|| format!("http://{}", config.http.listen));
                    let mut v = serde_json::to_value(&info)?;
                    v["secret"] = json!(secret);
                    v["url"] = json!(format!("{}/-/s/{secret}/", base.trim_end_matches('/')));
                    v
                }
                On::Node(node) => {
                    let body = json!({"address": addr, "expires": expires, "password": password});
                    let mut v: Value = node.json(M::POST, "/api/v1/shares", Some(&body)).await?;
                    if v.get("url").is_none() {
                        let path = v["link_path"].as_str().unwrap_or_default().to_owned();
                        v["url"] = json!(format!("{}{path}", node.base_url()));
                    }
                    v
                }
            };
            say(io, json, &answer, || {
                format!(
                    "share {} of {}@{}@{}:{}{} (shown once):\n{}",
                    answer["id"],
                    answer["bucket"].as_str().unwrap_or_default(),
                    answer["branch"].as_str().unwrap_or_default(),
                    answer["version"],
                    answer["path"].as_str().unwrap_or_default(),
                    answer["expires_ms"]
                        .as_i64()
                        .map(|e| format!(", expires {}", format_time(e)))
                        .unwrap_or_default(),
                    answer["url"].as_str().unwrap_or_default()
                )
            })?;
        }
        Command::Shares => {
            let shares: Vec<alknet_fs::ShareInfo> = match on {
                On::Store(store) => store.list_shares(None)?,
                On::Node(node) => node.json(M::GET, "/api/v1/shares", None).await?,
            };
            print_list(io, json, &shares, |s| {
                format!(
                    "{}\tshr_{}…\t{}\t{}@{}@{}:{}\t{}{}",
                    s.id,
                    s.prefix,
                    s.user,
                    s.bucket,
                    s.branch,
                    s.version.0,
                    s.path,
                    s.expires_ms
                        .map(|e| format!("expires {}", format_time(e)))
                        .unwrap_or_else(|| "no expiry".into()),
                    if s.password { "\tpassword" } else { "" }
                )
            })?;
        }
        Command::Unshare { share } => {
            let s: alknet_fs::ShareInfo = match on {
                On::Store(store) => store.revoke_share(&share, None)?,
                On::Node(node) => {
                    node.json(M::DELETE, &format!("/api/v1/shares/{}", enc(&share)), None)
                        .await?
                }
            };
            say(io, json, &s, || {
                format!("revoked share {} of {}:{}", s.id, s.bucket, s.path)
            })?;
        }
        Command::Lfs(LfsCmd::Locks { repo }) => {
            let store = on.store("lfs locks")?;
            let repo = alknet_forge::repo_name(&repo)?;
            // Every lock: each is a few dozen bytes.
            let query = alknet_fs::LockQuery {
                limit: 1_000_000,
                ..Default::default()
            };
            let locks = store.locks(&repo, &query)?;
            print_list(io, json, &locks, |l| {
                format!("{}\t{}\t{}\t{}", l.id, l.path, l.owner, format_time(l.locked_ms))
            })?;
        }
        Command::Repo(RepoCmd::Delete { name }) => {
            forge_of(on.store("repo delete")?)?.delete(&name)?;
            say(io, json, &json!({"deleted": name}), || {
                format!("deleted repository {name} (its space is reclaimed by the next gc)")
            })?;
        }
        Command::Repo(RepoCmd::SetHead { name, branch }) => {
            forge_of(on.store("repo set-head")?)?.set_head(&name, &branch)?;
            say(io, json, &json!({"repo": name, "head": branch}), || {
                format!("HEAD of {name} now names {branch}")
            })?;
        }
        Command::Branch(BranchCmd::Create { bucket, new, from }) => {
            let src = Address::parse(&format!("{bucket}@{from}"))?;
            let v: Version = match on {
                On::Store(store) => store.create_branch(&bucket, &new, &src.branch, &src.at)?,
                On::Node(node) => {
                    let url = format!("{}/branches", remote::bucket_api(&bucket));
                    let mut answer: Value = node
                        .json(M::POST, &url, Some(&json!({"name": new, "from": from})))
                        .await?;
                    serde_json::from_value(answer["version"].take())?
                }
            };
            say(io, json, &json!({"created": new, "from": from, "version": v}), || {
                format!("created branch {bucket}@{new} from {from}")
            })?;
        }
        Command::Branch(BranchCmd::List { bucket }) => {
            let branches: Vec<alknet_fs::BranchInfo> = match on {
                On::Store(store) => store.list_branches(&bucket)?,
                On::Node(node) => {
                    let url = format!("{}/branches", remote::bucket_api(&bucket));
                    node.json(M::GET, &url, None).await?
                }
            };
            print_list(io, json, &branches, |b| match (&b.parent, b.fork_version) {
                (Some(p), Some(v)) => format!("{}\tfrom {p}@{v}", b.name),
                _ => b.name.clone(),
            })?;
        }
        Command::Branch(BranchCmd::Delete { bucket, name }) => {
            match on {
                On::Store(store) => store.delete_branch(&bucket, &name)?,
                On::Node(node) => {
                    let a = Address::parse(&format!("{bucket}@{name}"))?;
                    node.json::<Value>(M::DELETE, &remote::branch_api(&a), None).await?;
                }
            }
            say(io, json, &json!({"deleted": name}), || {
                format!("deleted branch {bucket}@{name}")
            })?;
        }
        Command::Put {
            local,
            addr,
            recursive: true,
            ..
        } => put_dir(on.store("put -r")?, &local, &addr, json, io).await?,
        Command::Put { local, addr, mode, .. } => put(on, &local, &addr, mode, json, io).await?,
        Command::Get {
            addr,
            output,
            recursive: true,
            at,
        } => {
            get_dir(
                on.store("get -r")?,
                &addr,
                output.as_deref(),
                at.at.as_deref(),
                json,
                io,
            )
            .await?
        }
        Command::Get { addr, output, at, .. } => get(on, &addr, output.as_deref(), at.at.as_deref(), json, io).await?,
        Command::Cat { addr, at } => match on {
            On::Store(store) => {
                let (tree, path) = open(store, &addr, at.at.as_deref())?;
                let entry = tree.follow(&path, true)?.1;
                copy_to_stdout(&Source::Tree(&tree), &entry, io).await?;
            }
            On::Node(node) => {
                let a = at_address(&addr, at.at.as_deref())?;
                let entry = remote::stat(node, &a, true).await?;
                copy_to_stdout(&Source::Node(node, &a), &entry, io).await?;
            }
        },
        Command::Ls {
            addr,
            long,
            recursive,
            at,
        } => ls(on, &addr, long, recursive, at.at.as_deref(), json, io).await?,
        Command::Stat { addr, at } => {
            let (path, e) = match on {
                On::Store(store) => {
                    let (tree, path) = open(store, &addr, at.at.as_deref())?;
                    let e = tree.stat(&path)?;
                    (path, e)
                }
                On::Node(node) => {
                    let a = at_address(&addr, at.at.as_deref())?;
                    let e = remote::stat(node, &a, false).await?;
                    (a.path, e)
                }
            };
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
            let (path, e) = match on {
                On::Store(store) => {
                    let (tree, path) = open_head(store, &addr)?;
                    let e = if parents {
                        tree.mkdir_all(&path)?
                    } else {
                        tree.mkdir(&path, None)?
                    };
                    (path, e)
                }
                On::Node(node) => {
                    let a = head_address(&addr)?;
                    let body = json!({"path": a.path.as_str(), "parents": parents});
                    let e = remote::branch_post(node, &a, "mkdir", body).await?;
                    (a.path, e)
                }
            };
            say(io, json, &e, || format!("created {path}"))?;
        }
        Command::Rm {
            addr, entry: Some(id), ..
        } => {
            let (tree, _) = open_head(on.store("rm --entry")?, &addr)?;
            let path = tree.remove_entry(alknet_fs::EntryId(id))?;
            say(io, json, &json!({"removed": path.as_str(), "entry": id}), || {
                format!("removed entry {id} ({path})")
            })?;
        }
        Command::Rm { addr, recursive, .. } => {
            // GNU rm's rule: `.` and `..` name directories already in use.
            let raw = addr.rsplit_once(':').map_or("", |(_, p)| p);
            if raw.rsplit('/').next().is_some_and(|last| last == "." || last == "..") {
                bail!("{addr}: refusing to remove '.' or '..'");
            }
            let path = match on {
                On::Store(store) => {
                    let (tree, path) = open_head(store, &addr)?;
                    match tree.stat(&path)? {
                        e if e.is_dir() && !recursive => bail!("{path}: is a directory (use rm -r)"),
                        e if e.is_dir() => tree.remove_all(&path)?,
                        _ => tree.remove(&path)?,
                    }
                    path
                }
                On::Node(node) => {
                    let a = head_address(&addr)?;
                    let e = remote::stat(node, &a, false).await?;
                    if e.is_dir() && !recursive {
                        bail!("{}: is a directory (use rm -r)", a.path);
                    }
                    remote::remove(node, &a, e.is_dir()).await?;
                    a.path
                }
            };
            say(io, json, &json!({"removed": path.as_str()}), || {
                format!("removed {path}")
            })?;
        }
        Command::Mv { from, to } => {
            let (from, to, e) = match on {
                On::Store(store) => {
                    let (tree, from, to) = same_tree(store, &from, &to)?;
                    let e = tree.rename(&from, &to, true)?;
                    let to = tree.path_of(e.id).ok().flatten().unwrap_or(to);
                    (from, to, e)
                }
                On::Node(node) => {
                    let (a, from, to) = same_branch(node, &from, &to).await?;
                    let body = json!({"from": from.as_str(), "to": to.as_str()});
                    (from, to, remote::branch_post(node, &a, "move", body).await?)
                }
            };
            say(io, json, &e, || format!("moved {from} to {to}"))?;
        }
        Command::Cp { from, to } => {
            let (from, to, e) = match on {
                On::Store(store) => {
                    let (tree, from, to) = same_tree(store, &from, &to)?;
                    let e = tree.copy_file(&from, &to)?;
                    let to = tree.path_of(e.id).ok().flatten().unwrap_or(to);
                    (from, to, e)
                }
                On::Node(node) => {
                    let (a, from, to) = same_branch(node, &from, &to).await?;
                    let body = json!({"from": from.as_str(), "to": to.as_str()});
                    (from, to, remote::branch_post(node, &a, "copy", body).await?)
                }
            };
            say(io, json, &e, || format!("copied {from} to {to}"))?;
        }
        Command::Ln {
            symbolic: _,
            target,
            addr,
        } => {
            let (path, e) = match on {
                On::Store(store) => {
                    let (tree, path) = open_head(store, &addr)?;
                    let e = tree.symlink(&path, &target)?;
                    (path, e)
                }
                On::Node(node) => {
                    let a = head_address(&addr)?;
                    let body = json!({"path": a.path.as_str(), "target": target});
                    let e = remote::branch_post(node, &a, "symlink", body).await?;
                    (a.path, e)
                }
            };
            say(io, json, &e, || format!("{path} -> {target}"))?;
        }
        Command::Snapshot { addr, name } => {
            let (a, v) = match on {
                On::Store(store) => {
                    let (tree, _) = open_head(store, &addr)?;
                    let v = tree.snapshot(name.as_deref())?;
                    (format!("{}@{}", tree.bucket(), tree.branch()), v)
                }
                On::Node(node) => {
                    let a = head_address(&addr)?;
                    let mut answer: Value = remote::branch_post(node, &a, "snapshots", json!({"name": name})).await?;
                    (
                        format!("{}@{}", a.bucket, a.branch),
                        serde_json::from_value(answer["version"].take())?,
                    )
                }
            };
            say(io, json, &json!({"version": v, "name": name}), || {
                format!(
                    "snapshot {a}@{} (version {v})",
                    name.as_deref().unwrap_or(&v.to_string())
                )
            })?;
        }
        Command::Snapshots { addr } => {
            let a = Address::parse(&addr)?;
            let snaps: Vec<alknet_fs::SnapshotInfo> = match on {
                On::Store(store) => store.snapshots(&a.bucket, &a.branch)?,
                On::Node(node) => {
                    node.json(M::GET, &format!("{}/snapshots", remote::branch_api(&a)), None)
                        .await?
                }
            };
            print_list(io, json, &snaps, |s| format!("{}\t{}", s.version, s.name))?;
        }
        Command::Log { addr, limit } => {
            let commits = log(on, &addr, limit).await?;
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
            let (scope, mut changes) = match on {
                On::Store(store) => {
                    let (a, scope) = open(store, &from, None)?;
                    let (b, _) = open(store, &to, None)?;
                    (scope, a.diff(&b)?)
                }
                On::Node(node) => {
                    let (a, b) = (Address::parse(&from)?, Address::parse(&to)?);
                    if a.bucket != b.bucket {
                        bail!("{from} and {to}: against a remote node, diff compares two branches of one bucket");
                    }
                    let to = remote::branch_api(&b);
                    let to = to.rsplit('/').next().unwrap_or_default();
                    let url = format!("{}/diff?to={to}", remote::branch_api(&a));
                    (a.path, node.json(M::GET, &url, None).await?)
                }
            };
            changes.retain(|c: &alknet_fs::Change| {
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
        Command::Watch { addr, from } => match on {
            On::Store(store) => watch(store, &addr, from, io)?,
            On::Node(node) => {
                let a = Address::parse(&addr)?;
                remote::watch(node, &a, from, |commit| {
                    print_json(io, &commit)?;
                    Ok(io.out().flush()?)
                })
                .await?;
            }
        },
        Command::Prune { addr, before } => {
            let a = Address::parse(&addr)?;
            let (version, r) = match on {
                On::Store(store) => {
                    let at = Address::parse(&format!("{}@{}@{before}", a.bucket, a.branch))?.at;
                    let version = store.tree(&a.bucket, &a.branch, &at)?.at().unwrap_or(Version(0));
                    (version, store.prune(&a.bucket, &a.branch, version)?)
                }
                On::Node(node) => {
                    let mut answer: Value = remote::branch_post(node, &a, "prune", json!({"before": before})).await?;
                    (
                        serde_json::from_value(answer["before"].take())?,
                        serde_json::from_value(answer)?,
                    )
                }
            };
            let r: alknet_fs::PruneReport = r;
            say(io, json, &r, || {
                format!(
                    "pruned {}@{} before version {version}: {} tree rows and {} commits dropped (run `alknet gc` to reclaim space)",
                    a.bucket, a.branch, r.rows, r.commits
                )
            })?;
        }
        Command::Gc => {
            let r: alknet_fs::GcReport = match on {
                On::Store(store) => store.gc().await?,
                On::Node(node) => node.json(M::POST, "/api/v1/gc", None).await?,
            };
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
            let r: alknet_fs::FsckReport = match on {
                On::Store(store) => store.fsck().await?,
                On::Node(node) => node.json(M::POST, "/api/v1/fsck", None).await?,
            };
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
            let s: alknet_fs::Stats = match on {
                On::Store(store) => store.stats().await?,
                On::Node(node) => node.json(M::GET, "/api/v1/stats", None).await?,
            };
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

/// The forge of the data directory, with its `[git]` settings.
fn forge_of(store: &Store) -> Result<alknet_forge::Forge> {
    let config = crate::config::Config::load(store.dir())?;
    Ok(alknet_forge::Forge::new(store.clone(), config.git.forge()))
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
    let a = at_address(addr, at)?;
    let tree = store.tree(&a.bucket, &a.branch, &a.at)?;
    let path = tree.follow_dirs(&a.path)?;
    Ok((tree, path))
}

/// Opens a tree for writing: the address must not name a version.
fn open_head(store: &Store, addr: &str) -> Result<(Tree, BucketPath)> {
    let a = head_address(addr)?;
    let tree = store.tree(&a.bucket, &a.branch, &At::Head)?;
    let path = tree.follow_dirs(&a.path)?;
    Ok((tree, path))
}

/// ADDR, read at `at` instead of its own version if given.
fn at_address(addr: &str, at: Option<&str>) -> Result<Address> {
    let mut a = Address::parse(addr)?;
    if let Some(v) = at {
        a.at = Address::parse(&format!("{}@{}@{v}", a.bucket, a.branch))?.at;
    }
    Ok(a)
}

/// ADDR, which must name a branch's head (a past version is read-only).
fn head_address(addr: &str) -> Result<Address> {
    let a = Address::parse(addr)?;
    if a.at != At::Head {
        bail!("{a}: a past version is read-only");
    }
    Ok(a)
}

/// A bucket, user or token name as one segment of a URL path.
fn enc(s: &str) -> String {
    http_client::encode_query(s)
}

/// `from` and `to` for `mv` and `cp`: heads of one bucket@branch.
fn one_branch(from: &str, to: &str) -> Result<(Address, Address)> {
    let (a, b) = (head_address(from)?, head_address(to)?);
    if (&a.bucket, &a.branch) != (&b.bucket, &b.branch) {
        bail!("{from} and {to} are on different branches or buckets; both must name the same bucket@branch");
    }
    Ok((a, b))
}

/// Resolves two addresses that must name the same bucket@branch. A `to` that
/// is an existing directory receives the source by name, like `mv` and `cp`.
fn same_tree(store: &Store, from: &str, to: &str) -> Result<(Tree, BucketPath, BucketPath)> {
    let (_, to) = one_branch(from, to)?;
    let (tree, from_path) = open_head(store, from)?;
    let mut to_path = tree.follow_dirs(&to.path)?;
    if let (Some(dir), Some((_, name))) = (tree.try_stat(&to_path)?, from_path.split_last())
        && dir.is_dir()
    {
        to_path = to_path.join(name);
    }
    Ok((tree, from_path, to_path))
}

/// [`same_tree`] against a remote node.
async fn same_branch(node: &NodeClient, from: &str, to: &str) -> Result<(Address, BucketPath, BucketPath)> {
    let (a, b) = one_branch(from, to)?;
    let mut to_path = b.path.clone();
    if let (Some(dir), Some((_, name))) = (remote::try_stat(node, &b, false).await?, a.path.split_last())
        && dir.is_dir()
    {
        to_path = to_path.join(name);
    }
    let from_path = a.path.clone();
    Ok((a, from_path, to_path))
}

async fn put(on: On<'_>, local: &str, addr: &str, mode: Option<u32>, json: bool, io: &Stdio) -> Result<()> {
    let (place, entry) = match on {
        On::Store(store) => {
            let (tree, path) = open_head(store, addr)?;
            let into_dir = tree.try_stat(&path)?.is_some_and(|e| e.is_dir());
            let path = put_path(local, addr, path, into_dir)?;
            let entry = match put_source(local, io)? {
                None => tree.put_reader(&path, &mut io.stdin()?, mode).await?,
                Some((file, len)) => {
                    let bar = progress_bar(io, len, "storing");
                    let on_progress = |done: u64, total: u64| show_progress(&bar, done, total);
                    tree.put_file(&path, &file, mode, &on_progress).await?
                }
            };
            (format!("{}@{}:{path}", tree.bucket(), tree.branch()), entry)
        }
        On::Node(node) => {
            let a = head_address(addr)?;
            let into_dir = remote::try_stat(node, &a, true).await?.is_some_and(|e| e.is_dir());
            let a = remote::with_path(&a, put_path(local, addr, a.path.clone(), into_dir)?);
            let body = match put_source(local, io)? {
                None => http_client::stream(io.stdin()?),
                Some((file, len)) => {
                    let bar = progress_bar(io, len, "storing");
                    let file = tokio::fs::File::open(&file)
                        .await
                        .with_context(|| format!("{local}: cannot read"))?;
                    let mut done = 0;
                    http_client::stream(tokio_util::io::InspectReader::new(file, move |chunk: &[u8]| {
                        done += chunk.len() as u64;
                        show_progress(&bar, done, len);
                    }))
                }
            };
            let entry = remote::upload(node, &a, body, mode).await?;
            (format!("{}@{}:{}", a.bucket, a.branch, a.path), entry)
        }
    };
    say(io, json, &entry, || format!("stored {place} ({} bytes)", entry.size))
}

/// Where `put LOCAL ADDR` stores: ADDR, or `ADDR/NAME` when ADDR is a
/// directory (`into_dir`, the root, or a trailing `/`).
fn put_path(local: &str, addr: &str, path: BucketPath, into_dir: bool) -> Result<BucketPath> {
    if !(into_dir || path.is_root() || addr.ends_with('/')) {
        return Ok(path);
    }
    if local == "-" {
        bail!("{addr}: is a directory; give a file path to store standard input");
    }
    let name = Path::new(local)
        .file_name()
        .and_then(|n| n.to_str())
        .with_context(|| format!("{local}: has no usable file name"))?;
    Ok(BucketPath::parse(&format!("{path}/{name}"))?)
}

/// The local file `put` reads and its size; `None` for standard input.
fn put_source(local: &str, io: &Stdio) -> Result<Option<(std::path::PathBuf, u64)>> {
    if local == "-" {
        return Ok(None);
    }
    let path = io.local(local);
    let md = std::fs::metadata(&path).with_context(|| format!("{local}: cannot read"))?;
    if md.is_dir() {
        bail!("{local}: is a directory (put stores one file)");
    }
    Ok(Some((path, md.len())))
}

fn show_progress(bar: &Option<indicatif::ProgressBar>, done: u64, total: u64) {
    if let Some(b) = bar {
        b.set_length(total.max(1));
        b.set_position(done);
        if done >= total {
            b.finish_and_clear();
        }
    }
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

async fn get(on: On<'_>, addr: &str, output: Option<&str>, at: Option<&str>, json: bool, io: &Stdio) -> Result<()> {
    let (tree, a);
    let (source, path, entry) = match on {
        On::Store(store) => {
            let (t, path) = open(store, addr, at)?;
            tree = t;
            let (path, entry) = tree.follow(&path, true)?;
            (Source::Tree(&tree), path, entry)
        }
        On::Node(node) => {
            a = at_address(addr, at)?;
            let entry = remote::stat(node, &a, true).await?;
            (Source::Node(node, &a), a.path.clone(), entry)
        }
    };
    if entry.kind != Kind::File {
        bail!("{path}: not a regular file");
    }
    let output = match output {
        Some("-") => return copy_to_stdout(&source, &entry, io).await,
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
        let written = match &source {
            Source::Tree(tree) => tree.export(&entry, &tmp).await?,
            Source::Node(node, a) => {
                let mut file = tokio::fs::File::create(&tmp)
                    .await
                    .with_context(|| format!("{}: cannot write", tmp.display()))?;
                let on_progress = |done: u64| show_progress(&bar, done, entry.size);
                let n = remote::download(node, a, &entry, &mut file, &on_progress).await?;
                file.sync_all().await?;
                n
            }
        };
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

/// Where a file's bytes come from: a tree of the store, or a remote node.
enum Source<'a> {
    Tree(&'a Tree),
    Node(&'a NodeClient, &'a Address),
}

async fn copy_to_stdout(source: &Source<'_>, entry: &Entry, io: &Stdio) -> Result<()> {
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
    match source {
        Source::Tree(tree) => tree.copy_to(entry, &mut stdout, &on_progress).await?,
        Source::Node(node, a) => remote::download(node, a, entry, &mut stdout, &on_progress).await?,
    };
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

async fn ls(
    on: On<'_>,
    addr: &str,
    long: bool,
    recursive: bool,
    at: Option<&str>,
    json: bool,
    io: &Stdio,
) -> Result<()> {
    let mut rows = Rows::new(io, long, json)?;
    match on {
        On::Store(store) => {
            let (tree, path) = open(store, addr, at)?;
            let top = tree.stat(&path)?;
            if !top.is_dir() {
                rows.row(&top.name, &top)?;
            } else if recursive {
                // Rows stream out as they are read: a large tree is never held.
                for walked in tree.walk_iter(&path)? {
                    let (p, e) = walked?;
                    rows.row(relative(&path, &p), &e)?;
                }
            } else {
                let mut after: Option<String> = None;
                loop {
                    let page = tree.read_dir(&path, after.as_deref(), 1000)?;
                    let Some(last) = page.last() else { break };
                    after = Some(last.name.clone());
                    for e in &page {
                        rows.row(&e.name, e)?;
                    }
                }
            }
        }
        On::Node(node) => {
            let a = at_address(addr, at)?;
            let top = remote::stat(node, &a, false).await?;
            if !top.is_dir() {
                rows.row(&top.name, &top)?;
            } else {
                // Depth first, each directory in name order, a page per level
                // on the way down: the order and the memory of `walk_iter`.
                let mut stack = vec![(a.path.clone(), None::<String>, Vec::<Entry>::new().into_iter())];
                while let Some((dir, after, mut page)) = stack.pop() {
                    let Some(e) = page.next() else {
                        let at = remote::with_path(&a, dir.clone());
                        let page = remote::list_page(node, &at, after.as_deref()).await?;
                        if let Some(last) = page.last() {
                            let after = Some(last.name.clone());
                            stack.push((dir, after, page.into_iter()));
                        }
                        continue;
                    };
                    let p = dir.join(&e.name);
                    stack.push((dir, after, page));
                    if recursive {
                        rows.row(relative(&a.path, &p), &e)?;
                        if e.is_dir() {
                            stack.push((p, None, Vec::new().into_iter()));
                        }
                    } else {
                        rows.row(&e.name, &e)?;
                    }
                }
            }
        }
    }
    rows.finish()
}

/// `path` below `base`, without a leading `/`.
fn relative<'p>(base: &BucketPath, path: &'p BucketPath) -> &'p str {
    path.as_str()
        .strip_prefix(base.as_str())
        .unwrap_or(path.as_str())
        .trim_start_matches('/')
}

/// `ls` output, written a row at a time: names, long rows, or one JSON array.
struct Rows<'a> {
    out: std::sync::MutexGuard<'a, std::io::BufWriter<crate::stdio::Cut>>,
    long: bool,
    json: bool,
    count: usize,
}

impl<'a> Rows<'a> {
    fn new(io: &'a Stdio, long: bool, json: bool) -> Result<Rows<'a>> {
        let mut out = io.out();
        if json {
            write!(out, "[")?;
        }
        Ok(Rows {
            out,
            long,
            json,
            count: 0,
        })
    }

    fn row(&mut self, name: &str, e: &Entry) -> Result<()> {
        let out = &mut *self.out;
        if self.json {
            if self.count > 0 {
                write!(out, ",")?;
            }
            serde_json::to_writer(&mut *out, &json!({"path": name, "entry": e}))?;
        } else if self.long {
            let target = e.target.as_ref().map(|t| format!(" -> {t}")).unwrap_or_default();
            writeln!(
                out,
                "{} {:>12} {} {name}{target}",
                mode_string(e),
                e.size,
                format_time(e.mtime_ns / 1_000_000)
            )?;
        } else {
            writeln!(out, "{name}")?;
        }
        self.count += 1;
        Ok(())
    }

    fn finish(mut self) -> Result<()> {
        if self.json {
            writeln!(self.out, "]")?;
        }
        Ok(())
    }
}

/// `log ADDR -n LIMIT`: the branch's commits, or those that touched ADDR's
/// path, newest first, read a page at a time.
async fn log(on: On<'_>, addr: &str, limit: usize) -> Result<Vec<alknet_fs::Commit>> {
    enum Branch<'a> {
        Tree(&'a Store, Tree),
        Node(&'a NodeClient, Address),
    }
    let (branch, path) = match on {
        On::Store(store) => {
            let (tree, path) = open(store, addr, None)?;
            if path.is_root() {
                return Ok(store.log(&tree, limit)?);
            }
            (Branch::Tree(store, tree), path)
        }
        On::Node(node) => {
            let a = Address::parse(addr)?;
            let path = a.path.clone();
            (Branch::Node(node, a), path)
        }
    };
    let touches = |c: &alknet_fs::Commit| {
        path.is_root()
            || c.paths
                .iter()
                .any(|p| BucketPath::parse(p).is_ok_and(|p| p.starts_with(&path) || path.starts_with(&p)))
    };
    let (mut found, mut before) = (Vec::new(), None);
    let per_page = if path.is_root() { limit.clamp(1, 1000) } else { 1000 };
    while found.len() < limit {
        let page = match &branch {
            Branch::Tree(store, tree) => store.log_before(tree, before, per_page)?,
            Branch::Node(node, a) => remote::log_page(node, a, before, per_page).await?,
        };
        let Some(last) = page.last() else { break };
        before = Some(last.version);
        found.extend(page.into_iter().filter(touches));
    }
    found.truncate(limit);
    Ok(found)
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
    alknet_fs::display::utc_timestamp(ms)
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
