//! The one error type of the library. Every failure a user or a peer can cause ends up here and is
//! printed as a single line by the binary; nothing on those paths panics.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

/// Failures of the node host and the layers below it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The data directory holds files that ondisk did not write; we refuse to touch them.
    #[error(
        "data directory {path} was not created by ondisk (no {marker} file); refusing to use it"
    )]
    ForeignDataDir { path: PathBuf, marker: &'static str },

    /// The data directory belongs to a different node id or format version.
    #[error("data directory {path} {reason}")]
    IncompatibleDataDir { path: PathBuf, reason: String },

    /// RocksDB's LOCK file is held: another ondisk process runs on the same data directory.
    #[error("data directory {path} is in use by another process")]
    DataDirLocked { path: PathBuf },

    /// RocksDB reported corruption or another failure while opening or using a database.
    #[error("storage error in {path}: {message}")]
    Storage { path: PathBuf, message: String },

    /// A listening address is taken.
    #[error("{what} address {addr} is already in use")]
    AddrInUse { what: &'static str, addr: String },

    /// A listening address cannot be bound for another reason (bad host, permissions).
    #[error("cannot listen on {what} address {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: String,
        source: io::Error,
    },

    /// A proposal or read could not complete in time, most often because no quorum is reachable.
    #[error("{op} timed out after {} (is a quorum of nodes up?)", humantime::format_duration(*.after))]
    Timeout { op: &'static str, after: Duration },

    /// A client reached its deadline while its last attempt could not reach a node at all:
    /// `reason` is that attempt's (a refused connection, a TLS handshake a node refused), so
    /// the cause is in the error rather than a guess about the quorum.
    #[error("{op} timed out after {}: no node could be reached (last: {reason})", humantime::format_duration(*.after))]
    Unreachable {
        op: &'static str,
        after: Duration,
        reason: String,
    },

    /// A proposal or read could not complete in time because storage is waiting for disk space.
    /// Nothing is lost: the node resumes by itself once space is freed, and a write already
    /// proposed (`outcome` unknown) may then still be applied.
    #[error("{op} timed out after {}: the disk is full (no space left on device); it resumes once space is freed{}", humantime::format_duration(*.after), outcome.consequence())]
    DiskFull {
        op: &'static str,
        after: Duration,
        outcome: Outcome,
    },

    /// The request may or may not have taken effect: the leader changed or was lost between
    /// accepting it and confirming it. Retrying blindly could apply it twice.
    #[error("{op} outcome unknown: {reason}")]
    OutcomeUnknown { op: &'static str, reason: String },

    /// The request is larger than `-max-request-bytes`, checked before it reaches Raft: an entry
    /// that large could make a replication message exceed what the transport carries.
    #[error("{}", too_large(*.size, *.limit))]
    RequestTooLarge {
        /// The request's size in bytes, when known (a streamed HTTP body is cut off unread).
        size: Option<u64>,
        limit: u64,
    },

    /// The request reached a node that is shutting down or whose Raft core has stopped.
    #[error("the node is shutting down")]
    ShuttingDown,

    /// The cluster refused the request (a membership rule); nothing was changed.
    #[error("{0}")]
    Refused(String),

    /// The cluster refused the request because another of its kind is in progress (a membership
    /// change); nothing was changed, and sending it again once that one is done may succeed.
    #[error("busy, try again: {0}")]
    Busy(String),

    /// The request was refused for what it asks: a malformed request, an unknown lease, a
    /// compacted or future revision. Nothing was changed; sending it again changes nothing.
    #[error(transparent)]
    Request(#[from] crate::types::ApplyError),

    /// This node has been removed from the cluster.
    #[error("this node has been removed from the cluster")]
    Removed,

    /// Raft failed in a way that is neither a refusal nor a timeout.
    #[error("{0}")]
    Raft(String),

    /// The command line or configuration is unusable.
    #[error("{0}")]
    Config(String),

    /// Any other I/O failure.
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// What is known about a request that failed: whether it may still take effect, which decides
/// whether sending it again blindly is safe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It certainly had no effect (it never reached a leader): retrying is safe.
    NotApplied,
    /// It may have been proposed and may still be applied: a blind retry could apply it twice.
    Unknown,
}

impl Outcome {
    /// The words a message adds for this outcome.
    fn consequence(self) -> &'static str {
        match self {
            Outcome::NotApplied => "",
            Outcome::Unknown => "; this write may then still be applied (outcome unknown)",
        }
    }
}

/// The message of [`Error::RequestTooLarge`]; the size is named when it is known.
fn too_large(size: Option<u64>, limit: u64) -> String {
    let what = size.map_or_else(
        || "request".to_string(),
        |size| format!("request of {size} bytes"),
    );
    format!("{what} is over the limit of {limit} bytes (-max-request-bytes)")
}

/// Shorthand used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Whether the failed request certainly had no effect and may be sent again as it is: what an
    /// HTTP `Retry-After` promises. A request whose outcome is unknown must not invite a retry.
    pub fn retry_is_safe(&self) -> bool {
        match self {
            Error::Timeout { .. } | Error::ShuttingDown => true,
            Error::DiskFull { outcome, .. } => *outcome == Outcome::NotApplied,
            Error::Busy(_) => true,
            _ => false,
        }
    }

    /// The error a write's deadline gives once the write may have been proposed: a timeout no
    /// longer means "nothing was changed", as the entry may still commit.
    pub fn after_proposal(self) -> Self {
        match self {
            Error::Timeout { op, after } => Error::OutcomeUnknown {
                op,
                reason: format!(
                    "timed out after {} (is a quorum of nodes up?); the write may still be applied",
                    humantime::format_duration(after)
                ),
            },
            Error::DiskFull { op, after, .. } => Error::DiskFull {
                op,
                after,
                outcome: Outcome::Unknown,
            },
            other => other,
        }
    }

    /// Maps a RocksDB error raised while opening `path` to the most specific variant, so the user
    /// reads "in use by another process" rather than RocksDB's wording about LOCK files.
    pub fn from_rocksdb(path: impl Into<PathBuf>, err: rocksdb::Error) -> Self {
        let path = path.into();
        let message = err.into_string();
        if message.contains("LOCK") && (message.contains("lock") || message.contains("Resource")) {
            Error::DataDirLocked { path }
        } else {
            Error::Storage { path, message }
        }
    }
}

impl From<crate::api::AuthError> for Error {
    /// An authentication or authorization refusal: a refusal of the request, like any other.
    fn from(refusal: crate::api::AuthError) -> Self {
        Error::Request(refusal.into())
    }
}
