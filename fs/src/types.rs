//! The identifiers and records the store hands out.

use serde::{Deserialize, Serialize};

/// A BLAKE3 hash of a blob's bytes; also its name in the blob store.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlobHash(pub [u8; 32]);

impl BlobHash {
    /// The hash of `data`.
    pub fn of(data: &[u8]) -> BlobHash {
        BlobHash(*blake3::hash(data).as_bytes())
    }

    pub fn to_hex(&self) -> String {
        blake3::Hash::from_bytes(self.0).to_hex().to_string()
    }

    pub fn from_hex(s: &str) -> Option<BlobHash> {
        blake3::Hash::from_hex(s).ok().map(|h| BlobHash(*h.as_bytes()))
    }
}

impl std::fmt::Display for BlobHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl std::fmt::Debug for BlobHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BlobHash({})", self.to_hex())
    }
}

impl Serialize for BlobHash {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for BlobHash {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let hex = String::deserialize(d)?;
        BlobHash::from_hex(&hex).ok_or_else(|| serde::de::Error::custom(format!("not a BLAKE3 hash: {hex:?}")))
    }
}

/// A stable identity of a file, directory or symlink within a bucket. It
/// survives rename and is shared by a branch and its forks; sync matches
/// entries by it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EntryId(pub i64);

impl EntryId {
    /// The root directory of every branch.
    pub const ROOT: EntryId = EntryId(0);

    pub(crate) fn random() -> EntryId {
        // 62 random bits: positive, never ROOT, unique in practice across nodes.
        EntryId((rand::random::<u64>() >> 2) as i64 + 1)
    }
}

/// A committed mutation's number. Versions are global to a data directory and
/// only grow; a branch's state at version `v` is every change it committed up
/// to `v` over its parent's state at the fork point.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Version(pub u64);

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// What an entry is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    File,
    Dir,
    Symlink,
    /// A FIFO, socket or device node: no content; `mode` carries the file
    /// type bits (`S_IFIFO`, …) and `size` the device number.
    Special,
}

impl Kind {
    pub(crate) fn code(self) -> i64 {
        match self {
            Kind::File => 1,
            Kind::Dir => 2,
            Kind::Symlink => 3,
            Kind::Special => 4,
        }
    }

    /// `None` for a tombstone (code 0).
    pub(crate) fn from_code(code: i64) -> Option<Kind> {
        match code {
            1 => Some(Kind::File),
            2 => Some(Kind::Dir),
            3 => Some(Kind::Symlink),
            4 => Some(Kind::Special),
            _ => None,
        }
    }
}

/// Code of a tombstone row: the name was deleted on this branch.
pub(crate) const TOMBSTONE: i64 = 0;

/// One file, directory or symlink as stored at some version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub id: EntryId,
    /// The directory that holds it.
    pub parent: EntryId,
    pub name: String,
    pub kind: Kind,
    /// BLAKE3 of the contents; `None` for directories and symlinks.
    pub hash: Option<BlobHash>,
    /// Bytes of content (files) or of the target (symlinks); 0 for directories.
    pub size: u64,
    /// Permission bits (`0o644`), without the file-type bits.
    pub mode: u32,
    /// Modification time, nanoseconds since the Unix epoch.
    pub mtime_ns: i64,
    /// Change time: when this state of the entry was committed (any change
    /// of content, attributes, name or place), nanoseconds.
    pub ctime_ns: i64,
    /// Symlink target.
    pub target: Option<String>,
    /// The version that wrote this state of the entry.
    pub version: Version,
}

impl Entry {
    /// The root directory, as seen before anything is written.
    pub fn root() -> Entry {
        Entry {
            id: EntryId::ROOT,
            parent: EntryId::ROOT,
            name: String::new(),
            kind: Kind::Dir,
            hash: None,
            size: 0,
            mode: 0o755,
            mtime_ns: 0,
            ctime_ns: 0,
            target: None,
            version: Version(0),
        }
    }

    pub fn is_dir(&self) -> bool {
        self.kind == Kind::Dir
    }
}

/// A bucket as listed.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BucketInfo {
    pub name: String,
    pub kind: String,
    pub created_ms: i64,
    pub branches: u64,
    /// Bytes each branch head may hold; `None`: no quota.
    pub quota: Option<u64>,
}

/// A branch as listed.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BranchInfo {
    pub name: String,
    /// The branch it was forked from, and at which version.
    pub parent: Option<String>,
    pub fork_version: Option<Version>,
    /// The newest version committed on this branch itself.
    pub head: Option<Version>,
    pub created_ms: i64,
}

/// One committed mutation, as listed by `log` and delivered by `watch`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Commit {
    pub version: Version,
    pub bucket: String,
    pub branch: String,
    pub at_ms: i64,
    /// `write`, `mkdir`, `symlink`, `remove`, `rename`, `setattr`, `snapshot`,
    /// `branch`, `bucket`.
    pub op: String,
    pub paths: Vec<String>,
}

/// A named snapshot.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SnapshotInfo {
    pub name: String,
    pub version: Version,
}

/// One difference between two trees.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "change", rename_all = "lowercase")]
pub enum Change {
    Added {
        path: String,
        kind: Kind,
    },
    Removed {
        path: String,
        kind: Kind,
    },
    Modified {
        path: String,
        kind: Kind,
    },
    /// The same entry id at a new path (and maybe new content).
    Renamed {
        from: String,
        to: String,
        kind: Kind,
        modified: bool,
    },
}
