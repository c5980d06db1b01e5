//! Who may fetch from and push to a repository: one rule for git over SSH,
//! QUIC and HTTP (and, later, Git LFS).

use alknet_fs::{Level, Principal};

use crate::repo::{Forge, repo_name};
use crate::upload::Service;

/// Why a git request is refused. A repository the caller may not read is
/// [`Refusal::Hidden`], worded exactly like one that does not exist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No one signed in, and the repository is not public: sign in first.
    SignIn,
    /// Missing, or not readable by the caller (or a bad name).
    Hidden(String),
    /// Readable, but the caller may not push.
    Denied(String),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::SignIn => write!(f, "sign in to use this repository"),
            Refusal::Hidden(m) | Refusal::Denied(m) => write!(f, "{m}"),
        }
    }
}

impl Forge {
    /// The repository `path` names, if `who` (`None`: nobody signed in) may
    /// use `service` on it: `read` to fetch, `write` to push, and anyone may
    /// fetch a public repository (`git.public`, or made public). An admin's push to a
    /// missing repository creates it when `git.create_on_push` is set.
    pub fn authorize(&self, who: Option<&Principal>, path: &str, service: Service) -> Result<String, Refusal> {
        let repo = repo_name(path).map_err(|e| Refusal::Hidden(e.to_string()))?;
        let hidden = || {
            Refusal::Hidden(format!(
                "repository {repo:?} does not exist or you have no access to it"
            ))
        };
        let needed = match service {
            Service::UploadPack => Level::Read,
            Service::ReceivePack => Level::Write,
        };
        let exists = self.info(&repo).is_ok();
        let public = exists && self.is_public(&repo);
        let Some(who) = who else {
            return match (exists && public, service) {
                (true, Service::UploadPack) => Ok(repo),
                _ => Err(Refusal::SignIn),
            };
        };
        let store = self.store();
        if !exists {
            let admin = !who.read_only && store.is_admin(&who.user).unwrap_or(false);
            if service == Service::ReceivePack && admin && self.config().create_on_push {
                self.create(&repo).map_err(|e| Refusal::Hidden(e.to_string()))?;
                tracing::info!(user = %who.user, %repo, "created on first push");
                return Ok(repo);
            }
            return Err(hidden());
        }
        let level = who.level(store, &repo).map_err(|e| Refusal::Hidden(e.to_string()))?;
        let level = if public { level.max(Some(Level::Read)) } else { level };
        match level {
            Some(l) if l >= needed => Ok(repo),
            Some(_) => Err(Refusal::Denied(format!("you may read {repo:?} but not push to it"))),
            None => Err(hidden()),
        }
    }
}
