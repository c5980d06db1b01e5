//! alknet-sync: replication of buckets between nodes.
//!
//! Not built yet. Tree state will travel as an automerge document keyed by
//! stable entry ids; bytes travel by BLAKE3 hash over iroh-blobs.
