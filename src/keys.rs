//! The node's keys, made once by `alknet init` and never overwritten.
//!
//! - `keys/node.key`: the iroh node identity, 32 secret bytes in hex.
//! - `keys/ssh_host_ed25519_key` (+ `.pub`): the SSH host key, in OpenSSH's
//!   own format so `ssh-keygen -l -f` and any SSH library can read it.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use anyhow::{Context, Result};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;

/// What `ensure` found or made.
pub(crate) struct Keys {
    pub(crate) node_id: String,
    pub(crate) ssh_fingerprint_line: String,
    pub(crate) created: bool,
}

/// Creates the keys that are missing; reads back the ones that exist.
pub(crate) fn ensure(dir: &Path) -> Result<Keys> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut created = false;

    let node_path = dir.join("node.key");
    if !node_path.exists() {
        let key = iroh_base::SecretKey::generate();
        write_secret(&node_path, format!("{}\n", hex(&key.to_bytes())).as_bytes())?;
        created = true;
    }
    let node = read_node_key(&node_path)?;

    let ssh_path = dir.join("ssh_host_ed25519_key");
    if !ssh_path.exists() {
        let seed: [u8; 32] = rand::random();
        let public = iroh_base::SecretKey::from_bytes(&seed).public();
        write_secret(
            &ssh_path,
            openssh_private_key(&seed, public.as_bytes(), "alknet-host").as_bytes(),
        )?;
        let pub_line = format!(
            "ssh-ed25519 {} alknet-host\n",
            B64.encode(ssh_public_blob(public.as_bytes()))
        );
        std::fs::write(dir.join("ssh_host_ed25519_key.pub"), pub_line)
            .with_context(|| format!("writing {}.pub", ssh_path.display()))?;
        created = true;
    }
    let ssh_pub = std::fs::read_to_string(dir.join("ssh_host_ed25519_key.pub"))
        .with_context(|| format!("reading {}.pub", ssh_path.display()))?;

    Ok(Keys {
        node_id: node.public().to_string(),
        ssh_fingerprint_line: ssh_pub.trim().to_owned(),
        created,
    })
}

/// The node's iroh identity.
pub(crate) fn node_secret(path: &Path) -> Result<iroh_base::SecretKey> {
    read_node_key(path)
}

fn read_node_key(path: &Path) -> Result<iroh_base::SecretKey> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let bytes = unhex(text.trim()).with_context(|| format!("{} is not 64 hex digits", path.display()))?;
    Ok(iroh_base::SecretKey::from_bytes(&bytes))
}

/// Writes a file readable by its owner only, refusing to replace one.
fn write_secret(path: &Path, contents: &[u8]) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(contents)?;
    f.sync_all()?;
    Ok(())
}

fn put_string(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u32).to_be_bytes());
    out.extend_from_slice(s);
}

fn ssh_public_blob(public: &[u8; 32]) -> Vec<u8> {
    let mut blob = Vec::new();
    put_string(&mut blob, b"ssh-ed25519");
    put_string(&mut blob, public);
    blob
}

/// An unencrypted `openssh-key-v1` private key (PROTOCOL.key in OpenSSH).
fn openssh_private_key(seed: &[u8; 32], public: &[u8; 32], comment: &str) -> String {
    let check: u32 = rand::random();
    let mut private = Vec::new();
    private.extend_from_slice(&check.to_be_bytes());
    private.extend_from_slice(&check.to_be_bytes());
    put_string(&mut private, b"ssh-ed25519");
    put_string(&mut private, public);
    let mut secret = seed.to_vec();
    secret.extend_from_slice(public);
    put_string(&mut private, &secret);
    put_string(&mut private, comment.as_bytes());
    let mut pad = 1u8;
    while private.len() % 8 != 0 {
        private.push(pad);
        pad += 1;
    }
    let mut body = b"openssh-key-v1\0".to_vec();
    put_string(&mut body, b"none");
    put_string(&mut body, b"none");
    put_string(&mut body, b"");
    body.extend_from_slice(&1u32.to_be_bytes());
    put_string(&mut body, &ssh_public_blob(public));
    put_string(&mut body, &private);
    let b64 = B64.encode(body);
    let mut pem = String::from("-----BEGIN OPENSSH PRIVATE KEY-----\n");
    for line in b64.as_bytes().chunks(70) {
        pem.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        pem.push('\n');
    }
    pem.push_str("-----END OPENSSH PRIVATE KEY-----\n");
    pem
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}
