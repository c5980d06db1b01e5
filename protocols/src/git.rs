//! git over SSH: the `git-upload-pack '<repo>'` and `git-receive-pack
//! '<repo>'` exec requests stock git sends, checked against the same users
//! and grants as SFTP (`read` to fetch, `write` to push), then handed to the
//! forge's blocking state machines on a blocking thread.

use alknet_forge::{Forge, Mode, Service, receive_pack, upload_pack};
use russh::ChannelId;
use russh::server::Handle;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio_util::io::SyncIoBridge;

/// Parses an exec command line: `git-upload-pack '/hello.git'`, also the
/// `git upload-pack` spelling and unquoted paths.
pub(crate) fn parse_command(command: &str) -> Option<(Service, String)> {
    let command = command.trim();
    let (program, rest) = command.split_once(' ')?;
    let (service, rest) = match program {
        "git-upload-pack" => (Service::UploadPack, rest),
        "git-receive-pack" => (Service::ReceivePack, rest),
        "git" => match rest.trim_start().split_once(' ')? {
            ("upload-pack", r) => (Service::UploadPack, r),
            ("receive-pack", r) => (Service::ReceivePack, r),
            _ => return None,
        },
        _ => return None,
    };
    Some((service, unquote(rest.trim())?))
}

/// Parses `PROGRAM 'REPO' download|upload`, how git-lfs runs its two SSH
/// commands (`git-lfs-authenticate`, `git-lfs-transfer`): the repository
/// and the service the operation needs.
pub(crate) fn parse_lfs_command(command: &str, program: &str) -> Option<(String, Service)> {
    let rest = command.trim().strip_prefix(program)?.strip_prefix(' ')?.trim();
    let (repo, operation) = rest.rsplit_once(' ')?;
    let service = match operation {
        "download" => Service::UploadPack,
        "upload" => Service::ReceivePack,
        _ => return None,
    };
    Some((unquote(repo.trim())?, service))
}

/// How long a token `git-lfs-authenticate` hands out lives.
const LFS_TOKEN_LIFETIME: std::time::Duration = std::time::Duration::from_secs(600);

/// The answer to `git-lfs-authenticate`: the repository's LFS API on the
/// node's HTTP URL and a short-lived token for it (read-only for a
/// download), if `user` may use `service` on the repository.
pub(crate) fn lfs_authenticate(
    forge: &Forge,
    http_url: Option<&str>,
    user: &str,
    path: &str,
    service: Service,
) -> Result<serde_json::Value, String> {
    let who = alknet_fs::Principal::user(user);
    let repo = forge.authorize(Some(&who), path, service).map_err(|r| r.to_string())?;
    let Some(url) = http_url else {
        return Err("this node serves no HTTP API, so Git LFS over SSH cannot answer (set http.listen)".into());
    };
    let (_, token) = forge
        .store()
        .create_token_for(
            user,
            "git-lfs-authenticate",
            LFS_TOKEN_LIFETIME,
            service == Service::UploadPack,
        )
        .map_err(|e| e.to_string())?;
    Ok(serde_json::json!({
        "href": format!("{url}/{repo}.git/info/lfs"),
        "header": {"Authorization": format!("Bearer {token}")},
        "expires_in": LFS_TOKEN_LIFETIME.as_secs(),
    }))
}

/// Undoes the shell quoting git applies to the path (`'a'\''b'`).
fn unquote(s: &str) -> Option<String> {
    let mut out = String::new();
    let mut chars = s.chars();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        match c {
            '\'' => quoted = !quoted,
            '\\' if !quoted => out.push(chars.next()?),
            c if c.is_whitespace() && !quoted => return None,
            c => out.push(c),
        }
    }
    (!quoted).then_some(out)
}

/// Everything one git request needs.
pub(crate) struct Request {
    pub(crate) forge: Forge,
    pub(crate) user: String,
    pub(crate) service: Service,
    pub(crate) path: String,
    /// The client asked for protocol v2 (`GIT_PROTOCOL=version=2`).
    pub(crate) v2: bool,
    pub(crate) peer: String,
}

/// Serves one git request on `stream`, then reports the exit status and
/// closes the channel; returns the status.
pub(crate) async fn serve<S>(req: Request, stream: S, handle: Handle, channel: ChannelId) -> u32
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (read, mut write) = tokio::io::split(stream);
    let code = match authorize(&req) {
        Err(message) => {
            tracing::info!(peer = %req.peer, user = %req.user, path = %req.path, "git refused: {message}");
            let mut line = Vec::new();
            // An ERR pkt-line: git prints "fatal: remote error: …".
            let text = format!("ERR {message}");
            line.extend_from_slice(format!("{:04x}", text.len() + 4).as_bytes());
            line.extend_from_slice(text.as_bytes());
            write.write_all(&line).await.ok();
            128
        }
        Ok(repo) => {
            let Request {
                forge,
                user,
                service,
                v2,
                peer,
                ..
            } = req;
            let name = repo.clone();
            let pusher = user.clone();
            let joined = tokio::task::spawn_blocking(move || {
                let input = SyncIoBridge::new(read);
                let mut output = SyncIoBridge::new(write);
                let result = match service {
                    Service::UploadPack => {
                        upload_pack(&forge, &name, v2, Mode::Connection, input, &mut output).map(|()| None)
                    }
                    Service::ReceivePack => {
                        receive_pack(&forge, &name, &pusher, Mode::Connection, input, &mut output).map(Some)
                    }
                };
                (result, output.into_inner())
            })
            .await;
            let (result, back) = match joined {
                Ok(done) => done,
                Err(e) => {
                    // A bug, not the client's doing: end this session only.
                    tracing::error!(%peer, %user, %repo, "git session crashed: {e}");
                    handle.exit_status_request(channel, 1).await.ok();
                    handle.close(channel).await.ok();
                    return 1;
                }
            };
            write = back;
            match result {
                Ok(Some(push)) => {
                    tracing::info!(%peer, %user, %repo, updated = ?push.updated, refused = ?push.refused,
                        objects = push.objects, "git push");
                    0
                }
                Ok(None) => {
                    tracing::info!(%peer, %user, %repo, "git fetch");
                    0
                }
                Err(e) => {
                    tracing::warn!(%peer, %user, %repo, "git {service:?} failed: {e}");
                    1
                }
            }
        }
    };
    write.flush().await.ok();
    handle.exit_status_request(channel, code).await.ok();
    handle.eof(channel).await.ok();
    handle.close(channel).await.ok();
    code
}

/// The repository the request may use, or the message that refuses it.
fn authorize(req: &Request) -> Result<String, String> {
    let who = alknet_fs::Principal::user(&req.user);
    req.forge
        .authorize(Some(&who), &req.path, req.service)
        .map_err(|r| r.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_parse() {
        assert_eq!(
            parse_command("git-upload-pack '/hello.git'"),
            Some((Service::UploadPack, "/hello.git".into()))
        );
        assert_eq!(
            parse_command("git receive-pack 'a'\\''b'"),
            Some((Service::ReceivePack, "a'b".into()))
        );
        assert_eq!(
            parse_command("git-receive-pack hello"),
            Some((Service::ReceivePack, "hello".into()))
        );
        assert_eq!(parse_command("rm -rf /"), None);
        assert_eq!(parse_command("git-upload-pack 'unterminated"), None);
        assert_eq!(parse_command("git-upload-pack a b"), None);
        assert_eq!(
            parse_lfs_command("git-lfs-authenticate 'hello.git' upload", "git-lfs-authenticate"),
            Some(("hello.git".into(), Service::ReceivePack))
        );
        assert_eq!(
            parse_lfs_command("git-lfs-transfer hello download", "git-lfs-transfer"),
            Some(("hello".into(), Service::UploadPack))
        );
        assert_eq!(
            parse_lfs_command("git-lfs-authenticate hello delete", "git-lfs-authenticate"),
            None
        );
        assert_eq!(
            parse_lfs_command("git-lfs-transferx hello upload", "git-lfs-transfer"),
            None
        );
    }
}
