//! The `alknet` command: argument parsing, logging and exit codes. The work
//! is done by `commands.rs` on the `alknet-fs` API.

mod commands;
mod config;
mod git_helper;
mod keys;
mod mount;
mod node;
mod remote;
mod server;
mod stdio;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

/// Files and git repositories in one content-addressed, branch-aware store.
///
/// Addresses are BUCKET[@BRANCH[@VERSION|@SNAPSHOT]][:/PATH]; the branch
/// defaults to main and the path to the bucket root.
#[derive(Parser)]
#[command(name = "alknet", version, max_term_width = 100)]
struct Cli {
    /// The data directory.
    #[arg(long, global = true, env = "ALKNET_DATA", default_value = "alknet-data")]
    data: PathBuf,
    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    /// Run the command on a remote node's HTTP API instead of the data
    /// directory: http://HOST:PORT, https://HOST:PORT or NODE_ID@HOST:PORT
    /// (QUIC). The token to sign in with is read from ALKNET_TOKEN.
    #[arg(long, env = "ALKNET_NODE", value_name = "URL")]
    node: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create the data directory, keys, settings and first admin (safe to run again).
    Init {
        /// Public key of the first admin (default: ~/.ssh/id_ed25519.pub, id_ecdsa.pub or id_rsa.pub).
        #[arg(long, value_name = "FILE")]
        admin_key: Option<PathBuf>,
        /// Name of the first admin.
        #[arg(long, default_value = "admin")]
        admin_name: String,
    },
    /// Serve the store: SSH (SFTP and git) and the HTTP API over TCP and QUIC,
    /// and the local socket the CLI and mounts use beside it.
    Serve {
        /// SSH listen address (default: ssh.listen in alknet.toml).
        #[arg(long, value_name = "ADDR")]
        ssh: Option<std::net::SocketAddr>,
        /// QUIC listen address (default: quic.listen in alknet.toml).
        #[arg(long, value_name = "ADDR")]
        quic: Option<std::net::SocketAddr>,
        /// Do not start the QUIC endpoint.
        #[arg(long, conflicts_with = "quic")]
        no_quic: bool,
        /// HTTP API listen address (default: http.listen in alknet.toml).
        #[arg(long, value_name = "ADDR")]
        http: Option<std::net::SocketAddr>,
        /// Do not listen for HTTP over TCP (the API still answers over QUIC).
        #[arg(long, conflicts_with = "http")]
        no_http: bool,
    },
    /// The git remote helper for alknet:// URLs (git runs it as `git-remote-alknet`).
    GitRemoteHelper {
        /// The remote's name (unused).
        remote: String,
        /// alknet://NODE_ID@HOST:PORT/REPO
        url: String,
    },
    /// Join stdin/stdout to a node's SSH (for ssh/sftp ProxyCommand) or HTTP API over QUIC.
    Proxy {
        /// NODE_ID@HOST:PORT, as `alknet serve` prints it.
        node: String,
        /// Join the node's HTTP API instead (one HTTP/1.1 connection).
        #[arg(long)]
        http: bool,
    },
    /// Add, list or remove users.
    #[command(subcommand)]
    User(UserCmd),
    /// Give a user read, write or admin access to a bucket: USER BUCKET
    /// LEVEL; or a peer (--peer NAME BUCKET LEVEL) read (it is sent this
    /// node's changes) or write (its changes are applied here too).
    Grant {
        /// The peer to grant to, instead of a user.
        #[arg(long, value_name = "NAME")]
        peer: Option<String>,
        /// USER BUCKET LEVEL, or BUCKET LEVEL with --peer.
        #[arg(num_args = 2..=3, value_names = ["USER", "BUCKET", "LEVEL"], required = true)]
        args: Vec<String>,
    },
    /// Take a user's (or with --peer, a peer's) access to a bucket away.
    Revoke {
        #[arg(long, value_name = "NAME")]
        peer: Option<String>,
        /// USER BUCKET, or BUCKET with --peer.
        #[arg(num_args = 1..=2, value_names = ["USER", "BUCKET"], required = true)]
        args: Vec<String>,
    },
    /// Add, list or remove peers: other nodes this one syncs with.
    #[command(subcommand)]
    Peer(PeerCmd),
    /// Keep buckets in sync with peers, and see how that stands.
    #[command(subcommand)]
    Sync(SyncCmd),
    /// Print this node's id: what other nodes' `peer add` names it by.
    NodeId,
    /// Create, list or revoke API tokens (HTTP API, git over HTTP).
    #[command(subcommand)]
    Token(TokenCmd),
    /// Create, list or delete buckets.
    #[command(subcommand)]
    Bucket(BucketCmd),
    /// Create, list or delete branches of a bucket.
    #[command(subcommand)]
    Branch(BranchCmd),
    /// Mount BUCKET[@BRANCH[@VERSION]] at a directory (FUSE) until SIGINT, SIGTERM or `alknet umount`.
    Mount {
        /// BUCKET[@BRANCH[@VERSION|@SNAPSHOT]]; a version or snapshot mounts read-only.
        addr: String,
        /// An existing directory.
        mountpoint: PathBuf,
        /// Refuse every change.
        #[arg(long)]
        read_only: bool,
        /// Mount from a running node: NODE_ID@HOST:PORT (QUIC) or HOST:PORT
        /// (SSH over TCP, host key from ~/.ssh/known_hosts). Without it, the
        /// data directory is opened directly.
        #[arg(long)]
        node: Option<String>,
        /// With --node: the private key to sign in with (default ~/.ssh/id_ed25519, id_ecdsa, id_rsa).
        #[arg(long, short = 'i')]
        identity: Option<PathBuf>,
        /// With --node: where file contents are cached by hash (default ~/.cache/alknet/blobs).
        #[arg(long)]
        cache_dir: Option<PathBuf>,
        /// With --node: the most the cache holds, in MiB.
        #[arg(long, default_value_t = 1024)]
        cache_mib: u64,
    },
    /// Unmount a directory mounted by `alknet mount` (also when its process died).
    Umount { mountpoint: PathBuf },
    /// Create, list or delete git repositories.
    #[command(subcommand)]
    Repo(RepoCmd),
    /// Git LFS on the node's repositories.
    #[command(subcommand)]
    Lfs(LfsCmd),
    /// Make a share link of a file or directory at a fixed version: anyone
    /// with the link may read it (web pages under /-/s/), until it expires
    /// or is revoked. Printed once.
    Share {
        /// BUCKET[@BRANCH[@VERSION|@SNAPSHOT]][:/PATH]; without a version, the head's.
        addr: String,
        /// How long it works: 90s, 30m, 12h, 7d, 2w (default: until revoked).
        #[arg(long, value_name = "TIME")]
        expires: Option<String>,
        /// Ask for the password in this file (its first line) before showing anything.
        #[arg(long, value_name = "FILE")]
        password_file: Option<std::path::PathBuf>,
        /// The user whose access the link reads with (on a data directory;
        /// default: the only admin). Against a node, the token's user.
        #[arg(long = "as", value_name = "USER")]
        as_user: Option<String>,
    },
    /// List share links (yours against a node; every one on a data directory).
    Shares,
    /// Revoke a share link by its id or prefix.
    Unshare { share: String },
    /// Store a local file (or stdin with `-`, or a directory with -r) at an address.
    Put {
        /// Local file, `-` for standard input, or a directory with -r.
        local: String,
        /// Where to store it; an existing directory receives the file by name.
        addr: String,
        /// Permission bits of the stored file, in octal (default 644).
        #[arg(long, value_parser = parse_mode)]
        mode: Option<u32>,
        /// Store a directory's files, all in one commit.
        #[arg(short, long)]
        recursive: bool,
    },
    /// Fetch a file to a local path (`-o -` for standard output).
    Get {
        addr: String,
        /// Output file; default: the file's name in the current directory.
        #[arg(short, long)]
        output: Option<String>,
        /// Fetch a directory tree (files, symlinks, directories, modes, mtimes).
        #[arg(short, long)]
        recursive: bool,
        #[command(flatten)]
        at: AtArg,
    },
    /// Write a file to standard output.
    Cat {
        addr: String,
        #[command(flatten)]
        at: AtArg,
    },
    /// List a directory (or show one file).
    Ls {
        addr: String,
        /// Long listing: mode, size, time, name.
        #[arg(short, long)]
        long: bool,
        /// List every entry below, recursively.
        #[arg(short = 'R', long)]
        recursive: bool,
        #[command(flatten)]
        at: AtArg,
    },
    /// Show one entry's attributes.
    Stat {
        addr: String,
        #[command(flatten)]
        at: AtArg,
    },
    /// Create a directory.
    Mkdir {
        addr: String,
        /// Create missing parents; an existing directory is not an error.
        #[arg(short, long)]
        parents: bool,
    },
    /// Remove a file, symlink or (with -r) a directory tree.
    Rm {
        addr: String,
        #[arg(short, long)]
        recursive: bool,
        /// Remove entry ID (as `stat` and `fsck` show it) and everything
        /// below it, wherever it is in ADDR's tree: for names no path can spell.
        #[arg(long, value_name = "ID")]
        entry: Option<i64>,
    },
    /// Move or rename within one bucket@branch (replaces an existing file).
    Mv { from: String, to: String },
    /// Copy a file within one bucket@branch without copying its bytes.
    Cp { from: String, to: String },
    /// Create a symlink at ADDR pointing at TARGET.
    Ln {
        /// Must be given: only symbolic links are stored.
        #[arg(short, long, required = true)]
        symbolic: bool,
        target: String,
        addr: String,
    },
    /// Record a snapshot of a branch, optionally named; prints its version.
    Snapshot { addr: String, name: Option<String> },
    /// List a branch's snapshots.
    Snapshots { addr: String },
    /// Show the history of a branch (or of a path on it), newest first.
    Log {
        addr: String,
        /// Show at most this many commits.
        #[arg(short = 'n', long, default_value_t = 50)]
        limit: usize,
    },
    /// Show what changed from one address to another (branches or versions).
    Diff { from: String, to: String },
    /// Print commits on a branch as JSON lines as they happen.
    Watch {
        /// BUCKET[@BRANCH]
        addr: String,
        /// Start after this version (default: now).
        #[arg(long)]
        from: Option<u64>,
    },
    /// Forget a branch's history before a version (then `gc` reclaims its space).
    Prune {
        /// BUCKET[@BRANCH]
        addr: String,
        /// Keep versions from this one on (a number or a snapshot name).
        #[arg(long, value_name = "VERSION")]
        before: String,
    },
    /// Reclaim blobs that no version of any tree references.
    Gc,
    /// Check the database and every referenced blob's bytes.
    Fsck,
    /// Show counts and sizes.
    Stats,
}

#[derive(Args)]
struct AtArg {
    /// Read at this version or snapshot instead of the address's.
    #[arg(long = "at", value_name = "VERSION")]
    at: Option<String>,
}

#[derive(Subcommand)]
enum PeerCmd {
    /// Add a peer: NODE_ID@HOST:PORT as its `alknet serve` prints it (quic: …).
    Add { name: String, node: String },
    /// List peers, their grants and the buckets synced with them.
    List,
    /// Remove a peer with its grants and sync links.
    Remove { name: String },
}

#[derive(Subcommand)]
enum SyncCmd {
    /// Keep BUCKET in sync with a peer, continuously, both ways where grants allow.
    Add {
        bucket: String,
        #[arg(long, value_name = "NAME")]
        peer: String,
        /// Only these branches (default: all).
        #[arg(long = "branch", value_name = "BRANCH")]
        branches: Vec<String>,
    },
    /// Stop syncing BUCKET with a peer.
    Remove {
        bucket: String,
        #[arg(long, value_name = "NAME")]
        peer: String,
    },
    /// Per peer and bucket: connected, versions behind, blobs missing, last error.
    Status,
}

#[derive(Subcommand)]
enum TokenCmd {
    /// Make a token that signs in as USER; it is printed once, never again.
    Create {
        user: String,
        /// A name to tell it apart (default: token-PREFIX).
        #[arg(long)]
        name: Option<String>,
        /// Days until it stops working (default: never).
        #[arg(long, value_name = "DAYS")]
        expires: Option<u32>,
        /// Never more than read access, whatever the user's grants.
        #[arg(long)]
        read_only: bool,
    },
    /// List tokens (never their secrets).
    List,
    /// Revoke a token by its id, name or prefix.
    Revoke { token: String },
}

#[derive(Subcommand)]
enum BucketCmd {
    /// Create a bucket with an empty main branch.
    Create { name: String },
    /// List buckets.
    List,
    /// Delete a bucket, its branches and its history.
    Delete { name: String },
    /// Set the bytes each branch head of a bucket may hold (open writes
    /// included), e.g. `10GiB`; `none` removes the quota.
    Quota { name: String, size: String },
}

#[derive(Subcommand)]
enum LfsCmd {
    /// List a repository's file locks: id, path, owner, when.
    Locks { repo: String },
}

#[derive(Subcommand)]
enum RepoCmd {
    /// Create an empty git repository (a bucket of kind repo).
    Create {
        name: String,
        /// Anyone may clone and fetch it over HTTP without a token.
        #[arg(long)]
        public: bool,
    },
    /// List repositories: default branch, refs, packs, LFS objects.
    List,
    /// Let anyone clone and fetch a repository without a token (`on`), or not (`off`).
    SetPublic {
        name: String,
        #[arg(value_parser = ["on", "off"])]
        public: String,
    },

    /// Delete a repository, its refs, packs and published branches.
    Delete { name: String },
    /// Point HEAD (what a clone checks out) at an existing branch.
    SetHead { name: String, branch: String },
}

#[derive(Subcommand)]
enum UserCmd {
    /// Add a user who logs in with the given public key.
    Add {
        name: String,
        /// An OpenSSH public key file (`~/.ssh/id_ed25519.pub`).
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
        /// Full access to every bucket, and bucket creation over SFTP.
        #[arg(long)]
        admin: bool,
    },
    /// List users, their keys and grants.
    List,
    /// Remove a user and their grants.
    Remove { name: String },
    /// Give a user another key, or take one away.
    #[command(subcommand)]
    Key(KeyCmd),
}

#[derive(Subcommand)]
enum KeyCmd {
    /// Let user NAME also log in with this public key.
    Add {
        name: String,
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
    },
    /// Take a key from user NAME (not their last: remove the user instead).
    Remove {
        name: String,
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
    },
}

#[derive(Subcommand)]
enum BranchCmd {
    /// Fork a branch (instant; later changes on either side stay apart).
    Create {
        bucket: String,
        new: String,
        /// BRANCH[@VERSION|@SNAPSHOT] to fork from.
        #[arg(long, default_value = "main")]
        from: String,
    },
    /// List the branches of a bucket.
    List { bucket: String },
    /// Delete a branch that no other branch was forked from.
    Delete { bucket: String, name: String },
}

fn parse_mode(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s, 8)
        .ok()
        .filter(|m| *m <= 0o7777)
        .ok_or_else(|| format!("{s:?} is not an octal mode such as 644"))
}

fn main() -> ExitCode {
    // Called by git as `git-remote-alknet REMOTE URL` (a symlink to us).
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args
        .first()
        .and_then(|a| std::path::Path::new(a).file_name())
        .is_some_and(|n| n == "git-remote-alknet")
    {
        args.insert(1, "git-remote-helper".into());
    }
    let cli = Cli::parse_from(args);
    // A server logs its sessions; a one-shot command only what went wrong.
    let serving = matches!(cli.command, Command::Serve { .. } | Command::Mount { .. });
    // iroh-blobs reports each idle GC poll at info; fuser each unsupported call.
    let default_level = if serving {
        "info,iroh_blobs=warn,fuser=error"
    } else {
        "warn"
    };
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level)),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false);
    if serving {
        // Long-running: timestamps matter.
        subscriber.init();
    } else {
        subscriber.without_time().init();
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("alknet: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let json = cli.json;
    match runtime.block_on(commands::run(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => match stdio::Stdio::process() {
            Ok(io) => ExitCode::from(commands::report(&e, json, &io)),
            Err(_) => {
                eprintln!("alknet: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

/// `alknet cat big | head` ends with EPIPE: that is the reader's choice, not
/// an error to report.
pub(crate) fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
