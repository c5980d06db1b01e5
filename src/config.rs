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

[git]
# The branch HEAD names in a new repository.
default_branch = "main"
# An admin's push to a missing repository creates it.
create_on_push = false
# Repositories that accept non-fast-forward (force) pushes; all others refuse them.
allow_force_push = []
"#;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Config {
    pub(crate) ssh: Listen,
    pub(crate) quic: Listen,
    #[serde(default)]
    pub(crate) git: Git,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct Git {
    pub(crate) default_branch: String,
    pub(crate) create_on_push: bool,
    pub(crate) allow_force_push: Vec<String>,
}

impl Default for Git {
    fn default() -> Self {
        let d = alknet_forge::ForgeConfig::default();
        Git {
            default_branch: d.default_branch,
            create_on_push: d.create_on_push,
            allow_force_push: Vec::new(),
        }
    }
}

impl Git {
    pub(crate) fn forge(&self) -> alknet_forge::ForgeConfig {
        alknet_forge::ForgeConfig {
            default_branch: self.default_branch.clone(),
            create_on_push: self.create_on_push,
            allow_force_push: self
                .allow_force_push
                .iter()
                .map(|r| {
                    alknet_forge::repo_name(r)
                        .map(|n| n.to_string())
                        .unwrap_or_else(|_| r.clone())
                })
                .collect(),
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
