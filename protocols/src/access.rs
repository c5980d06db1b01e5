//! The SSH side of identity: OpenSSH public keys as the store keeps them.
//! Users, keys and grants themselves — and the policy, [`Store::level`] —
//! live in `alknet-fs`; this adds only what needs a key parser.

use alknet_fs::Store;
use russh::keys::PublicKey;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("not an OpenSSH public key ({0})")]
    BadKey(String),
    #[error(transparent)]
    Store(#[from] alknet_fs::Error),
}

/// The canonical text of a key: algorithm and base64, no comment.
pub fn key_text(key: &PublicKey) -> Result<String, Error> {
    let mut k = key.clone();
    k.set_comment("");
    Ok(k.to_openssh()
        .map_err(|e| Error::BadKey(e.to_string()))?
        .trim()
        .to_owned())
}

/// Parses one OpenSSH public key line (`ssh-ed25519 AAAA… comment`) into
/// the text the store keeps.
pub fn parse_key(line: &str) -> Result<String, Error> {
    let key = PublicKey::from_openssh(line.trim()).map_err(|e| Error::BadKey(e.to_string()))?;
    key_text(&key)
}

/// The user a verified key belongs to, if any.
pub(crate) fn user_for_key(store: &Store, key: &PublicKey) -> Result<Option<String>, Error> {
    Ok(store.user_for_key(&key_text(key)?)?)
}
