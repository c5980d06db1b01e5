//! `git-remote-alknet`: the git remote helper that carries git over QUIC.
//!
//! git runs `git-remote-alknet REMOTE alknet://NODE_ID@HOST:PORT/REPO` (the
//! `alknet` binary under that name, through a symlink). The helper offers the
//! `connect` capability; on `connect git-upload-pack` (or receive-pack) it
//! answers that the line is open and hands its stdin and stdout to `ssh`
//! (`$GIT_SSH_COMMAND` if set), whose `ProxyCommand` is `alknet proxy NODE`:
//! the same SSH server, users and grants as over TCP, one QUIC stream.

use std::io::{Read, Write};

use anyhow::{Context, Result, bail};

/// The repository a helper URL names, and the node that serves it.
fn parse_url(url: &str) -> Result<(String, String)> {
    let rest = url
        .strip_prefix("alknet://")
        .with_context(|| format!("{url:?} is not an alknet:// URL (alknet://NODE_ID@HOST:PORT/REPO)"))?;
    let (node, repo) = rest
        .split_once('/')
        .with_context(|| format!("{url:?} names no repository (alknet://NODE_ID@HOST:PORT/REPO)"))?;
    alknet_protocols::parse_node_addr(node).with_context(|| format!("{url:?}"))?;
    let repo = alknet_forge::repo_name(repo)?;
    Ok((node.to_owned(), repo))
}

/// One line from git, read byte by byte: after `connect` the rest of stdin
/// belongs to ssh, so nothing may sit in a buffer here.
fn read_line(input: &mut impl Read) -> Result<Option<String>> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        if input.read(&mut byte)? == 0 {
            return Ok((!line.is_empty()).then(|| String::from_utf8_lossy(&line).into_owned()));
        }
        if byte[0] == b'\n' {
            return Ok(Some(String::from_utf8_lossy(&line).into_owned()));
        }
        line.push(byte[0]);
    }
}

pub(crate) fn run(url: &str) -> Result<u8> {
    let (node, repo) = parse_url(url)?;
    let mut stdin = std::io::stdin().lock();
    let mut stdout = std::io::stdout().lock();
    while let Some(line) = read_line(&mut stdin)? {
        if line == "capabilities" {
            stdout.write_all(b"connect\n\n")?;
            stdout.flush()?;
        } else if let Some(service) = line.strip_prefix("connect ") {
            if service != "git-upload-pack" && service != "git-receive-pack" {
                bail!("git asked for {service:?}; only git-upload-pack and git-receive-pack are served");
            }
            stdout.write_all(b"\n")?;
            stdout.flush()?;
            drop(stdout);
            return ssh(&node, service, &repo);
        } else if line.is_empty() {
            return Ok(0);
        } else {
            bail!("unsupported remote-helper command {line:?}");
        }
    }
    Ok(0)
}

/// Runs the service through ssh over QUIC, stdin and stdout passed through.
fn ssh(node: &str, service: &str, repo: &str) -> Result<u8> {
    let me = std::env::current_exe().context("finding the alknet binary")?;
    let ssh = std::env::var("GIT_SSH_COMMAND").unwrap_or_else(|_| "ssh".into());
    let mut command = std::process::Command::new("sh");
    // git does not tell a `connect` helper which protocol it wants; it
    // follows whatever the server answers. Ask for v2 unless configured off,
    // as git's own ssh transport does.
    if service == "git-upload-pack" && std::env::var_os("GIT_PROTOCOL").is_none() && wants_v2() {
        command.env("GIT_PROTOCOL", "version=2");
    }
    let status = command
        .arg("-c")
        .arg(format!("{ssh} \"$@\""))
        .arg("ssh")
        .arg("-o")
        .arg(format!("ProxyCommand={} proxy {node}", me.display()))
        .args(["-o", "SendEnv=GIT_PROTOCOL", "git@alknet"])
        .arg(format!("{service} '{repo}'"))
        .status()
        .context("running ssh")?;
    Ok(match status.code() {
        Some(0) => 0,
        Some(c) => c.clamp(1, 255) as u8,
        None => 1,
    })
}

/// `protocol.version` from git's configuration (including `git -c`): 2
/// unless set to 0 or 1.
fn wants_v2() -> bool {
    let out = std::process::Command::new("git")
        .args(["config", "--get", "protocol.version"])
        .output();
    match out {
        Ok(o) => !matches!(String::from_utf8_lossy(&o.stdout).trim(), "0" | "1"),
        Err(_) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse() {
        let id = "b4aea0f18eb7278f138a360305d616909e4289f228390c0e35027ca5e96d92d2";
        let (node, repo) = parse_url(&format!("alknet://{id}@127.0.0.1:2223/hello.git")).expect("parses");
        assert_eq!(node, format!("{id}@127.0.0.1:2223"));
        assert_eq!(repo, "hello");
        assert!(parse_url("ssh://x/y").is_err());
        assert!(parse_url(&format!("alknet://{id}@127.0.0.1:2223")).is_err());
        assert!(parse_url("alknet://nonsense/hello").is_err());
    }
}
