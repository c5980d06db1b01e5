//! `alknet.toml`: the node's settings, written with defaults by `init`.
//! Every setting can be overridden by a flag of `alknet serve`.

use std::net::SocketAddr;
use std::path::Path;

use anyhow::{Context, Result};
use serde::Deserialize;

pub(crate) const FILE: &str = "alknet.toml";

pub(crate) const DEFAULT: &str = r#"# Alknet node settings. Each one can be overridden by a flag of `alknet serve`.

[ssh]
# Where the SSH server (SFTP) listens for stock clients (flag: --ssh).
listen = "127.0.0.1:2222"

[quic]
# Where the QUIC endpoint listens (flag: --quic). Clients reach it as
# NODE_ID@HOST:PORT through `alknet proxy`; relays and discovery are off.
listen = "127.0.0.1:2223"

[http]
# Where the HTTP API listens (flags: --http, --no-http). The same API answers
# on the QUIC endpoint under ALPN alknet/http.
listen = "127.0.0.1:8080"
# Serve HTTPS instead: a PEM certificate chain and its private key.
# tls_cert = "/etc/alknet/cert.pem"
# tls_key = "/etc/alknet/key.pem"
# The URL clients reach this listener by (behind a proxy, or listening on
# 0.0.0.0), handed out to Git LFS over SSH; default: the address listened on.
# url = "https://files.example.org"
# Serve /metrics without a token.
metrics_public = false
# Seconds a client may take to send a request's head (slow clients are cut off).
header_timeout_secs = 10
# HTTP connections open at once (TCP and QUIC streams).
max_connections = 512

[git]
# The branch HEAD names in a new repository.
default_branch = "main"
# An admin's push to a missing repository creates it.
create_on_push = false
# Repositories that accept non-fast-forward (force) pushes; all others refuse them.
allow_force_push = []
# Repositories anyone may clone and fetch over HTTP without a token.
public = []

[limits]
# Connections open at once (SSH over TCP and QUIC); more are closed as they
# arrive. Never more than the open-file limit allows.
max_connections = 1000
# Connections open at once that have not logged in yet (OpenSSH: MaxStartups).
max_startups = 100
# Seconds a connection may take to log in (OpenSSH: LoginGraceTime).
login_grace_secs = 120
# The largest file anyone may store, e.g. "100GiB"; "none": as large as
# the disk's free space allows. Checked as a file grows, before its bytes are made.
max_file_size = "none"
# Free space on the data directory's disk that writes never use, so the
# node can always commit and keep serving.
disk_reserve = "256MiB"
"#;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Config {
    pub(crate) ssh: Listen,
    pub(crate) quic: Listen,
    #[serde(default)]
    pub(crate) http: Http,
    #[serde(default)]
    pub(crate) git: Git,
    #[serde(default)]
    pub(crate) limits: Limits,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct Limits {
    pub(crate) max_connections: usize,
    pub(crate) max_startups: usize,
    pub(crate) login_grace_secs: u64,
    pub(crate) max_file_size: String,
    pub(crate) disk_reserve: String,
}

impl Default for Limits {
    fn default() -> Self {
        let d = alknet_protocols::Limits::default();
        Limits {
            max_connections: d.max_connections,
            max_startups: d.max_startups,
            login_grace_secs: d.login_grace.as_secs(),
            max_file_size: "none".into(),
            disk_reserve: format!("{}MiB", alknet_fs::DEFAULT_DISK_RESERVE >> 20),
        }
    }
}

/// File descriptors kept back from connections for the store, the blob
/// store, git packs and the QUIC socket.
const FDS_KEPT: u64 = 128;

impl Limits {
    /// The write limits of the store.
    pub(crate) fn store(&self) -> Result<alknet_fs::Limits> {
        let mut l = alknet_fs::Limits::default();
        l.max_file_size = match self.max_file_size.trim() {
            "none" => None,
            size => Some(alknet_fs::parse_size(size).context("limits.max_file_size in alknet.toml")?),
        };
        l.disk_reserve = alknet_fs::parse_size(&self.disk_reserve).context("limits.disk_reserve in alknet.toml")?;
        Ok(l)
    }

    /// The connection limits, with `max_connections` brought under what
    /// `open_files` (the process's limit) allows.
    pub(crate) fn connections(&self, open_files: Option<u64>) -> alknet_protocols::Limits {
        let mut l = alknet_protocols::Limits::default();
        l.max_connections = self.max_connections.max(1);
        if let Some(fds) = open_files {
            let fit = usize::try_from(fds.saturating_sub(FDS_KEPT).max(1)).unwrap_or(usize::MAX);
            if fit < l.max_connections {
                tracing::warn!(
                    "limits.max_connections = {} is more than the open-file limit ({fds}) allows: {fit}",
                    l.max_connections
                );
                l.max_connections = fit;
            }
        }
        l.max_startups = self.max_startups.clamp(1, l.max_connections);
        l.login_grace = std::time::Duration::from_secs(self.login_grace_secs.max(1));
        l
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct Http {
    pub(crate) listen: SocketAddr,
    pub(crate) tls_cert: Option<std::path::PathBuf>,
    pub(crate) tls_key: Option<std::path::PathBuf>,
    pub(crate) url: Option<String>,
    pub(crate) metrics_public: bool,
    pub(crate) header_timeout_secs: u64,
    pub(crate) max_connections: usize,
}

impl Default for Http {
    fn default() -> Self {
        let d = alknet_protocols::HttpLimits::default();
        Http {
            listen: "127.0.0.1:8080".parse().expect("a literal address"),
            tls_cert: None,
            tls_key: None,
            url: None,
            metrics_public: false,
            header_timeout_secs: d.header_timeout.as_secs(),
            max_connections: d.max_connections,
        }
    }
}

impl Http {
    pub(crate) fn limits(&self) -> alknet_protocols::HttpLimits {
        alknet_protocols::HttpLimits {
            max_connections: self.max_connections.max(1),
            header_timeout: std::time::Duration::from_secs(self.header_timeout_secs.max(1)),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct Git {
    pub(crate) default_branch: String,
    pub(crate) create_on_push: bool,
    pub(crate) allow_force_push: Vec<String>,
    pub(crate) public: Vec<String>,
}

impl Default for Git {
    fn default() -> Self {
        let d = alknet_forge::ForgeConfig::default();
        Git {
            default_branch: d.default_branch,
            create_on_push: d.create_on_push,
            allow_force_push: Vec::new(),
            public: Vec::new(),
        }
    }
}

impl Git {
    pub(crate) fn forge(&self) -> alknet_forge::ForgeConfig {
        // `name`, `name.git` and `/name.git` all name one repository.
        let names = |list: &[String]| {
            list.iter()
                .map(|r| alknet_forge::repo_name(r).unwrap_or_else(|_| r.clone()))
                .collect()
        };
        alknet_forge::ForgeConfig {
            default_branch: self.default_branch.clone(),
            create_on_push: self.create_on_push,
            allow_force_push: names(&self.allow_force_push),
            public: names(&self.public),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Listen {
    pub(crate) listen: SocketAddr,
}

impl Config {
    /// Reads `alknet.toml` from the data directory; a missing file means the
    /// defaults. A bad file is an error naming the key.
    pub(crate) fn load(data: &Path) -> Result<Config> {
        let path = data.join(FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => DEFAULT.to_owned(),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {}", path.display(), one_line(&text, &e)))
    }

    /// Writes the defaults unless a file is already there.
    pub(crate) fn write_default(data: &Path) -> Result<bool> {
        let path = data.join(FILE);
        if path.exists() {
            return Ok(false);
        }
        std::fs::write(&path, DEFAULT).with_context(|| format!("writing {}", path.display()))?;
        Ok(true)
    }
}

/// A TOML error as one line, quoting the offending line (which names the key).
fn one_line(text: &str, e: &toml::de::Error) -> String {
    let message = e.message().trim_end();
    match e.span() {
        Some(span) => {
            let line_no = text[..span.start.min(text.len())].matches('\n').count() + 1;
            let line = text.lines().nth(line_no - 1).unwrap_or("").trim();
            format!("line {line_no} `{line}`: {message}")
        }
        None => message.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_parse_and_bad_keys_are_named() {
        let c: Config = toml::from_str(DEFAULT).expect("the defaults parse");
        assert_eq!(c.ssh.listen.port(), 2222);
        let written = c.limits.store().expect("the limits parse");
        let missing = Limits::default().store().expect("the default limits parse");
        assert_eq!(written, missing, "a file without [limits] means what init writes");
        assert_eq!(written.disk_reserve, alknet_fs::DEFAULT_DISK_RESERVE);
        assert_eq!(written.max_file_size, None);
        let text = "[ssh]\nlisen = \"x\"\n[quic]\nlisten = \"127.0.0.1:1\"\n";
        let err = toml::from_str::<Config>(text).expect_err("a typo is refused");
        let line = one_line(text, &err);
        assert!(line.contains("lisen") && !line.contains('\n'), "{line}");
        let text = "[ssh]\nlisten = \"nope\"\n[quic]\nlisten = \"127.0.0.1:1\"\n";
        let err = toml::from_str::<Config>(text).expect_err("a bad address is refused");
        let line = one_line(text, &err);
        assert!(line.starts_with("line 2 `listen = \"nope\"`"), "{line}");
    }
}
