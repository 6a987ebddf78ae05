//! The vocabulary shared by every layer: what a client asks the replicated state machine to do,
//! what it answers, how a member is addressed, and openraft's type configuration tying them together.

use std::fmt;

use serde::Deserialize;
use serde::Serialize;

/// A member's identity in the Raft group. Stable for the life of the node's data directory.
pub type NodeId = u64;

/// How to reach a member. Stored in the replicated membership, so every node learns every other
/// node's addresses from the log rather than from its own command line.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Address of the node-to-node transport (`host:port`).
    pub raft_addr: String,
    /// Address of the client-facing HTTP API (`host:port`), empty when unknown.
    pub http_addr: String,
}

impl fmt::Display for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.raft_addr)
    }
}

/// A change to the key-value state, proposed through Raft and applied on every member in log order.
///
/// Keys and values are arbitrary bytes: nothing below the REPL or HTTP layer assumes UTF-8.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Set `key` to `value`, unconditionally.
    Put { key: Vec<u8>, value: Vec<u8> },
    /// Remove `key`; removing an absent key is not an error.
    Delete { key: Vec<u8> },
    /// Set `key` to `value` only if the current state matches `expected`: `Some(v)` means the key
    /// must currently hold exactly `v`, `None` means the key must be absent (create-only).
    CompareAndSwap {
        key: Vec<u8>,
        expected: Option<Vec<u8>>,
        value: Vec<u8>,
    },
    /// Marks learner `id` to stay a learner (`keep`), or clears the mark so that the leader
    /// promotes it once it has caught up. A log entry, so every later leader honours it.
    KeepLearner { id: NodeId, keep: bool },
}

impl Command {
    /// The bytes the client sent: what `-max-request-bytes` limits. Every front end and the
    /// leader measure a request this way, so they agree on what is too large.
    pub fn request_bytes(&self) -> u64 {
        let len = |bytes: &[u8]| bytes.len() as u64;
        match self {
            Command::Put { key, value } => len(key) + len(value),
            Command::Delete { key } => len(key),
            Command::CompareAndSwap {
                key,
                expected,
                value,
            } => len(key) + expected.as_deref().map_or(0, len) + len(value),
            Command::KeepLearner { .. } => 0,
        }
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Log lines show the shape of a command, never the (possibly large, possibly binary) value.
        match self {
            Command::Put { key, value } => {
                write!(
                    f,
                    "put({}, {} bytes)",
                    String::from_utf8_lossy(key),
                    value.len()
                )
            }
            Command::Delete { key } => write!(f, "delete({})", String::from_utf8_lossy(key)),
            Command::CompareAndSwap { key, value, .. } => {
                write!(
                    f,
                    "cas({}, {} bytes)",
                    String::from_utf8_lossy(key),
                    value.len()
                )
            }
            Command::KeepLearner { id, keep } => write!(f, "keep_learner({id}, {keep})"),
        }
    }
}

/// What applying a [`Command`] produced, returned to the proposer once the entry is applied.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandResult {
    /// The command took effect (or, for a blank or membership entry, there was nothing to do).
    #[default]
    Applied,
    /// A compare-and-swap whose condition did not hold; carries the value the key held instead.
    PreconditionFailed { current: Option<Vec<u8>> },
}

openraft::declare_raft_types!(
    /// openraft's type configuration for ondisk: u64 node ids, [`Member`] addresses, and
    /// [`Command`]s as the application payload. Everything else is openraft's default.
    pub TypeConfig:
        D = Command,
        R = CommandResult,
        NodeId = NodeId,
        Node = Member,
);

/// The openraft handle specialised to ondisk's types and state machine.
pub type Raft = openraft::Raft<TypeConfig, crate::store::StateMachineStore>;
/// A log entry as stored and replicated.
pub type Entry = openraft::alias::EntryOf<TypeConfig>;
/// The identity (term, leader, index) of a log entry.
pub type LogId = openraft::alias::LogIdOf<TypeConfig>;
/// A membership: voters and learners with their addresses.
pub type Membership = openraft::Membership<NodeId, Member>;
/// The membership as persisted with the log id of the entry that set it.
pub type StoredMembership = openraft::alias::StoredMembershipOf<TypeConfig>;
/// Snapshot metadata: last included log id and membership.
pub type SnapshotMeta = openraft::alias::SnapshotMetaOf<TypeConfig>;
/// A durable vote.
pub type Vote = openraft::alias::VoteOf<TypeConfig>;
/// A snapshot as openraft passes it around: metadata plus ondisk's snapshot data.
pub type Snapshot = openraft::alias::SnapshotOf<TypeConfig, crate::store::SnapshotData>;
