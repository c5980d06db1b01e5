//! alknet-mount-protocol: what a mount needs from a store, without FUSE.
//!
//! [`Backend`] is the tree a mount shows, addressed as FUSE addresses it
//! (entries by id). [`Local`] is a tree of a data directory this process
//! holds; [`Remote`] is a tree on a node, reached over the remote-mount
//! protocol (decision 13), whose node side is [`serve`] — answering with a
//! [`Local`]. The FUSE adapter (`alknet-mount`) and the node (the SSH
//! subsystem, the local socket) both build on this crate; only the first
//! links fuser. Errors are errnos ([`Errno`]): what the kernel gets, and
//! what crosses the wire.

mod backend;
mod cache;
mod remote;

pub use backend::{Backend, Local, Reader, Writer};
pub use cache::Cache;
pub use remote::{Dial, Dialing, Duplex, Remote, SUBSYSTEM, Stream, Summary, serve};

/// An error number (`libc::ENOENT`, …), as a backend answers and the wire
/// carries it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Errno(i32);

impl Errno {
    pub const EBADF: Errno = Errno(libc::EBADF);
    pub const EDQUOT: Errno = Errno(libc::EDQUOT);
    pub const EEXIST: Errno = Errno(libc::EEXIST);
    pub const EFBIG: Errno = Errno(libc::EFBIG);
    pub const EINVAL: Errno = Errno(libc::EINVAL);
    pub const EIO: Errno = Errno(libc::EIO);
    pub const EISDIR: Errno = Errno(libc::EISDIR);
    pub const EMFILE: Errno = Errno(libc::EMFILE);
    pub const ENAMETOOLONG: Errno = Errno(libc::ENAMETOOLONG);
    pub const ENOENT: Errno = Errno(libc::ENOENT);
    pub const ENOSPC: Errno = Errno(libc::ENOSPC);
    pub const ENOTDIR: Errno = Errno(libc::ENOTDIR);
    pub const ENOTEMPTY: Errno = Errno(libc::ENOTEMPTY);
    pub const ENOTSUP: Errno = Errno(libc::ENOTSUP);
    pub const EPERM: Errno = Errno(libc::EPERM);
    pub const EPROTO: Errno = Errno(libc::EPROTO);
    pub const EROFS: Errno = Errno(libc::EROFS);
    pub const EXDEV: Errno = Errno(libc::EXDEV);

    pub fn from_i32(code: i32) -> Errno {
        Errno(code)
    }

    pub fn code(self) -> i32 {
        self.0
    }
}

impl std::fmt::Display for Errno {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", std::io::Error::from_raw_os_error(self.0))
    }
}

impl std::error::Error for Errno {}

/// The error's errno, or `EIO` for one that has none.
impl From<std::io::Error> for Errno {
    fn from(e: std::io::Error) -> Errno {
        Errno(e.raw_os_error().unwrap_or(libc::EIO))
    }
}
