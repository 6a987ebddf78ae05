//! The vocabulary shared by every layer: what a client asks the replicated state machine to do,
//! what it answers, how a member is addressed, and openraft's type configuration tying them together.

use std::fmt;

use serde::Deserialize;
use serde::Serialize;

use crate::api;

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

/// A change to the replicated state, proposed through Raft and applied on every member in log
/// order: the write requests of the key-value API (`crate::api`), compaction, leases, and the
/// member records the cluster keeps beside openraft's membership.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    Put(api::PutRequest),
    DeleteRange(api::DeleteRangeRequest),
    Txn(api::TxnRequest),
    Compact(api::CompactionRequest),
    /// Creates a lease. The proposer chooses the id (when the client did not) and the TTL in
    /// force, so every member applies the same ones.
    LeaseGrant(api::LeaseGrantRequest),
    /// Ends a lease and deletes its keys: asked for by a client, or proposed by the leader when
    /// the lease expired.
    LeaseRevoke {
        id: i64,
    },
    /// Marks learner `id` to stay a learner (`keep`), or clears the mark so that the leader
    /// promotes it once it has caught up. A log entry, so every later leader honours it.
    KeepLearner {
        id: NodeId,
        keep: bool,
    },
    /// A change to users, roles or the authentication switch.
    Auth(AuthChange),
    /// `command` as asked by `user` while authentication is on, checked by the proposer against
    /// auth revision `auth_revision`. Applying checks it again if the auth state has changed
    /// since, so a permission revoked before the command committed is honoured on every member.
    AsUser {
        user: String,
        auth_revision: u64,
        command: Box<Command>,
    },
}

/// A change to the replicated auth state, as applied: passwords only as argon2 hashes (the
/// proposer hashed them), and the enabling carries the key tokens will be signed with, so every
/// member signs and checks with the same one.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AuthChange {
    Enable {
        token_key: Vec<u8>,
    },
    Disable,
    UserAdd {
        name: String,
        password_hash: Option<String>,
    },
    UserDelete {
        name: String,
    },
    UserChangePassword {
        name: String,
        password_hash: String,
    },
    UserGrantRole {
        user: String,
        role: String,
    },
    UserRevokeRole {
        user: String,
        role: String,
    },
    RoleAdd {
        name: String,
    },
    RoleDelete {
        name: String,
    },
    RoleGrantPermission {
        role: String,
        permission: api::Permission,
    },
    RoleRevokePermission {
        role: String,
        key: Vec<u8>,
        range_end: Vec<u8>,
    },
}

impl fmt::Debug for AuthChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The log's debug lines show which change, never a hash or the token key.
        let what = match self {
            AuthChange::Enable { .. } => "enable",
            AuthChange::Disable => "disable",
            AuthChange::UserAdd { .. } => "user add",
            AuthChange::UserDelete { .. } => "user delete",
            AuthChange::UserChangePassword { .. } => "user change password",
            AuthChange::UserGrantRole { .. } => "user grant role",
            AuthChange::UserRevokeRole { .. } => "user revoke role",
            AuthChange::RoleAdd { .. } => "role add",
            AuthChange::RoleDelete { .. } => "role delete",
            AuthChange::RoleGrantPermission { .. } => "role grant permission",
            AuthChange::RoleRevokePermission { .. } => "role revoke permission",
        };
        write!(f, "AuthChange({what})")
    }
}

impl Command {
    /// The bytes the client sent (keys, values, compared values): what `-max-request-bytes`
    /// limits. Every front end and the leader measure a request this way, so they agree on what
    /// is too large.
    pub fn request_bytes(&self) -> u64 {
        match self {
            Command::Put(put) => put_bytes(put),
            Command::DeleteRange(delete) => len(&delete.key) + len(&delete.range_end),
            Command::Txn(txn) => txn_bytes(txn),
            Command::AsUser { command, .. } => command.request_bytes(),
            Command::Compact(_)
            | Command::LeaseGrant(_)
            | Command::LeaseRevoke { .. }
            | Command::KeepLearner { .. }
            | Command::Auth(_) => 0,
        }
    }
}

fn len(bytes: &[u8]) -> u64 {
    bytes.len() as u64
}

fn put_bytes(put: &api::PutRequest) -> u64 {
    len(&put.key) + len(&put.value)
}

fn txn_bytes(txn: &api::TxnRequest) -> u64 {
    let compares: u64 = txn
        .compare
        .iter()
        .map(|compare| {
            let value = match &compare.target {
                api::CompareTarget::Value(value) => len(value),
                _ => 0,
            };
            len(&compare.key) + len(&compare.range_end) + value
        })
        .sum();
    let ops: u64 = txn
        .success
        .iter()
        .chain(&txn.failure)
        .map(|op| match op {
            api::RequestOp::Range(range) => len(&range.key) + len(&range.range_end),
            api::RequestOp::Put(put) => put_bytes(put),
            api::RequestOp::DeleteRange(delete) => len(&delete.key) + len(&delete.range_end),
            api::RequestOp::Txn(inner) => txn_bytes(inner),
        })
        .sum();
    compares + ops
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Log lines show the shape of a command, never the (possibly large, possibly binary) value.
        match self {
            Command::Put(put) => write!(
                f,
                "put({}, {} bytes)",
                String::from_utf8_lossy(&put.key),
                put.value.len()
            ),
            Command::DeleteRange(delete) => {
                write!(f, "delete({})", String::from_utf8_lossy(&delete.key))
            }
            Command::Txn(txn) => write!(
                f,
                "txn({} compares, {}/{} ops)",
                txn.compare.len(),
                txn.success.len(),
                txn.failure.len()
            ),
            Command::Compact(compact) => write!(f, "compact({})", compact.revision),
            Command::LeaseGrant(grant) => write!(f, "lease_grant({}, {}s)", grant.id, grant.ttl),
            Command::LeaseRevoke { id } => write!(f, "lease_revoke({id})"),
            Command::KeepLearner { id, keep } => write!(f, "keep_learner({id}, {keep})"),
            Command::Auth(change) => write!(f, "{change:?}"),
            Command::AsUser { user, command, .. } => write!(f, "{command} as {user}"),
        }
    }
}

/// A refusal decided while applying, from the replicated state alone, so every member decides
/// the same; nothing was changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ApplyError {
    #[error("requested lease not found: {0}")]
    LeaseNotFound(i64),
    #[error("lease {0} already exists")]
    LeaseExists(i64),
    #[error("key not found")]
    KeyNotFound,
    #[error("required revision has been compacted (compacted at {compact_revision})")]
    Compacted { compact_revision: i64 },
    #[error("required revision is a future revision (the newest is {revision})")]
    FutureRevision { revision: i64 },
    #[error("{0}")]
    InvalidRequest(String),
    #[error("too many operations in txn request (at most {max} comparisons and {max} operations per branch)")]
    TooManyTxnOps { max: usize },
    #[error("duplicate key given in txn request")]
    DuplicateKeyInTxn,
    #[error(transparent)]
    Auth(#[from] api::AuthError),
}

impl From<api::InvalidTxn> for ApplyError {
    fn from(invalid: api::InvalidTxn) -> Self {
        match invalid {
            api::InvalidTxn::TooManyOps { max } => ApplyError::TooManyTxnOps { max },
            api::InvalidTxn::DuplicateKey => ApplyError::DuplicateKeyInTxn,
            api::InvalidTxn::Malformed(reason) => ApplyError::InvalidRequest(reason),
        }
    }
}

/// What applying a [`Command`] produced, returned to the proposer once the entry is applied.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandResult {
    /// A blank, membership or member-record entry: nothing to answer.
    #[default]
    Applied,
    Put(api::PutResponse),
    DeleteRange(api::DeleteRangeResponse),
    Txn(api::TxnResponse),
    Compacted(api::CompactionResponse),
    LeaseGranted(api::LeaseGrantResponse),
    LeaseRevoked,
    /// A change to users, roles or the authentication switch was applied.
    AuthChanged,
    Refused(ApplyError),
}

impl CommandResult {
    /// Sets the revision in the answer's header: the store's revision after the command.
    pub fn set_revision(&mut self, revision: i64) {
        let header = match self {
            CommandResult::Put(put) => &mut put.header,
            CommandResult::DeleteRange(delete) => &mut delete.header,
            CommandResult::Txn(txn) => {
                set_txn_revision(txn, revision);
                return;
            }
            CommandResult::Compacted(compacted) => &mut compacted.header,
            CommandResult::LeaseGranted(granted) => &mut granted.header,
            CommandResult::Applied
            | CommandResult::LeaseRevoked
            | CommandResult::AuthChanged
            | CommandResult::Refused(_) => return,
        };
        header.revision = revision;
    }
}

fn set_txn_revision(txn: &mut api::TxnResponse, revision: i64) {
    txn.header.revision = revision;
    for response in &mut txn.responses {
        match response {
            api::ResponseOp::Range(range) => range.header.revision = revision,
            api::ResponseOp::Put(put) => put.header.revision = revision,
            api::ResponseOp::DeleteRange(delete) => delete.header.revision = revision,
            api::ResponseOp::Txn(inner) => set_txn_revision(inner, revision),
        }
    }
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
