//! Maintenance on the node: a hash of the key space that members can compare, a full compaction
//! of the state machine database, and what it takes on disk.

use crate::api;
use crate::error::Error;
use crate::error::Result;
use crate::store;
use crate::store::DiskUsage;

use super::Caller;
use super::Need;
use super::Node;

/// Bytes of keys and values read per page while hashing, so memory stays flat however large the
/// key space.
const HASH_PAGE_BYTES: usize = 4 << 20;

/// A hash of the key space at one revision (see [`Node::hash_kv`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeySpaceHash {
    pub hash: u32,
    /// The revision hashed.
    pub revision: i64,
    /// The compacted revision when the hash was taken.
    pub compact_revision: i64,
}

impl Node {
    /// A CRC-32 of every key as it was at `revision` (0: the revision this member has applied),
    /// with its revisions, version, lease and value, read from this member's own state. Members
    /// that applied the same log give the same hash for the same revision, so comparing hashes
    /// at one revision checks that they hold the same data (etcd's HashKV).
    pub async fn hash_kv(&self, caller: &Caller, revision: i64) -> Result<KeySpaceHash> {
        self.authorize(caller, Need::Admin)?;
        let revisions = self.state.revisions()?;
        let revision = if revision == 0 {
            revisions.current
        } else {
            revision
        };
        let mut hasher = crc32fast::Hasher::new();
        let mut from = vec![0];
        loop {
            let page = api::RangeRequest {
                key: from,
                range_end: vec![0],
                revision,
                serializable: true,
                ..api::RangeRequest::default()
            };
            let response = self
                .read_state(move |state| state.range(&page, HASH_PAGE_BYTES))
                .await?
                .map_err(Error::Request)?;
            for kv in &response.kvs {
                for number in [kv.create_revision, kv.mod_revision, kv.version, kv.lease] {
                    hasher.update(&number.to_be_bytes());
                }
                for bytes in [&kv.key, &kv.value] {
                    hasher.update(&(bytes.len() as u64).to_be_bytes());
                    hasher.update(bytes);
                }
            }
            match response.kvs.last() {
                Some(last) if response.more => from = [&last.key[..], &[0]].concat(),
                _ => break,
            }
        }
        Ok(KeySpaceHash {
            hash: hasher.finalize(),
            revision,
            compact_revision: revisions.compacted,
        })
    }

    /// Compacts the state machine database whole, returning the space of old versions to the
    /// file system (see `StateReader::compact_all`).
    pub async fn defragment(&self, caller: &Caller) -> Result<()> {
        self.authorize(caller, Need::Admin)?;
        self.read_state(|state| state.compact_all()).await
    }

    /// What the state machine database takes on disk.
    pub async fn disk_usage(&self) -> Result<DiskUsage> {
        self.read_state(|state| state.disk_usage()).await
    }

    /// Whether this member's storage is waiting for disk space (etcd's NOSPACE alarm).
    pub fn out_of_space(&self) -> bool {
        store::waiting_for_space()
    }
}
