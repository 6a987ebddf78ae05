//! What the clients did and saw: one record per operation, with its invocation and completion on
//! one monotonic clock, saved as JSON lines when a run fails so it can be read and checked again.

use std::fs;
use std::io::{self, Write};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use serde::{Deserialize, Serialize};

/// What a client asked for. Values are text: the workload only writes unique ASCII values, and a
/// read that returns anything else cannot match a write, which is exactly what the checker flags.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "op")]
pub enum Call {
    /// `PUT /v1/kv/KEY` with `value`.
    Put { value: String },
    /// Linearizable `GET /v1/kv/KEY`.
    Get,
    /// `PUT /v1/kv/KEY?prev_value=E` (or `?prev_exist=false` when `expected` is `None`).
    Cas {
        expected: Option<String>,
        value: String,
    },
    /// `DELETE /v1/kv/KEY`.
    Delete,
    /// `POST /v1/txn` on the txn keys: if `guard` holds for the first key of `writes`, put every
    /// pair of `writes`, else read each of their keys.
    Txn {
        guard: Guard,
        writes: Vec<(String, String)>,
    },
    /// `POST /v1/txn` with no comparison that reads each of `keys` (one consistent snapshot).
    TxnRead { keys: Vec<String> },
}

/// What a txn's comparison expects of its first key: the revisions the client saw last, or the
/// value it saw (`None`: that the key is absent, `create_revision == 0`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Guard {
    ModRevision(i64),
    Value(Option<String>),
}

/// One key as a txn read it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadKv {
    pub key: String,
    /// `None`: absent.
    pub value: Option<String>,
    /// The revision of the key's last change, 0 when absent.
    pub mod_revision: i64,
}

/// The revisions a linearizable `GET` answered with (its `x-ondisk-revision` and
/// `x-ondisk-mod-revision` headers), so reads can be held to the committed history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadAt {
    /// The store's revision the read was served at.
    pub revision: i64,
    /// The revision that wrote the value read.
    pub mod_revision: i64,
}

impl Call {
    /// Short name for reports.
    pub fn kind(&self) -> &'static str {
        match self {
            Call::Put { .. } => "put",
            Call::Get => "get",
            Call::Cas { .. } => "cas",
            Call::Delete => "delete",
            Call::Txn { .. } => "txn",
            Call::TxnRead { .. } => "txn-read",
        }
    }

    /// Whether this is one of the txn calls, which span keys and are checked by revisions
    /// (`revisions.rs`) rather than per key.
    pub fn is_txn(&self) -> bool {
        matches!(self, Call::Txn { .. } | Call::TxnRead { .. })
    }
}

/// What came back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "outcome", content = "result")]
pub enum Outcome {
    /// A write took effect (204).
    Ok,
    /// A read's answer: the value, or `None` for 404.
    Read(Option<String>),
    /// A compare-and-swap did not apply (412) and reported the current value.
    CasFailed(Option<String>),
    /// A write whose effect is unknown (503, timeout, connection error): it may take effect at any
    /// point after its invocation, or never.
    Unknown,
    /// A write the node said it refused (500): it must not have taken effect.
    Failed,
    /// A read that produced no information (an error or timeout); the checker ignores it.
    NoInfo,
    /// A txn's answer: the revision of its header (for a txn that wrote, the revision it
    /// created), whether its comparison held, and what it read.
    Txn {
        revision: i64,
        succeeded: bool,
        reads: Vec<ReadKv>,
    },
}

impl Outcome {
    /// Short name for reports.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Read(_) => "ok",
            Outcome::CasFailed(_) => "cas-failed",
            Outcome::Unknown => "unknown",
            Outcome::Failed => "failed",
            Outcome::NoInfo => "no-info",
            Outcome::Txn {
                succeeded: false, ..
            } => "cas-failed",
            Outcome::Txn { .. } => "ok",
        }
    }
}

/// One completed operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Op {
    /// The client (thread) that ran it; a client runs one operation at a time.
    pub client: usize,
    /// The node whose HTTP API it was sent to.
    pub node: usize,
    pub key: String,
    #[serde(flatten)]
    pub call: Call,
    #[serde(flatten)]
    pub outcome: Outcome,
    /// Nanoseconds since the start of the run, just before the request was sent.
    pub invoked: u64,
    /// Nanoseconds since the start of the run, just after the answer (or the error) arrived.
    pub completed: u64,
    /// The HTTP status or the transport error, for a human reading the history.
    pub detail: String,
    /// For a `GET` that found the key: the revisions it was answered with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_at: Option<ReadAt>,
}

/// A history being recorded by concurrent clients, sharing one clock.
#[derive(Clone)]
pub struct Recorder {
    start: Instant,
    ops: Arc<Mutex<Vec<Op>>>,
    anomalies: Arc<Mutex<Vec<String>>>,
}

impl Recorder {
    pub fn new() -> Recorder {
        Recorder {
            start: Instant::now(),
            ops: Arc::default(),
            anomalies: Arc::default(),
        }
    }

    /// Now, on the history's clock.
    pub fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    /// The instant the clock counts from.
    pub fn start(&self) -> Instant {
        self.start
    }

    pub fn record(&self, op: Op) {
        lock(&self.ops).push(op);
    }

    /// Notes an answer the API does not document; any makes the run fail.
    pub fn anomaly(&self, what: String) {
        lock(&self.anomalies).push(what);
    }

    pub fn anomalies(&self) -> Vec<String> {
        lock(&self.anomalies).clone()
    }

    /// A copy of every operation recorded so far.
    pub fn ops(&self) -> Vec<Op> {
        lock(&self.ops).clone()
    }
}

/// Locks even if a client panicked while holding the lock: what was recorded stays meaningful.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Writes `ops` to `path`, one JSON object a line.
pub fn save(ops: &[Op], path: &Path) -> io::Result<()> {
    let mut out = io::BufWriter::new(fs::File::create(path)?);
    for op in ops {
        serde_json::to_writer(&mut out, op)?;
        out.write_all(b"\n")?;
    }
    out.flush()
}

/// Reads a history written by [`save`].
pub fn load(path: &Path) -> io::Result<Vec<Op>> {
    fs::read_to_string(path)?
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).map_err(io::Error::other))
        .collect()
}
