//! The clients: concurrent threads sending random puts (of unique values), linearizable gets,
//! compare-and-swaps and deletes on a few keys, and txns over two keys of their own, to random
//! nodes, recording every operation.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use base64::Engine;
use ondisk::api::{
    Compare, CompareResult, CompareTarget, PutRequest, RangeRequest, RequestOp, ResponseOp,
    TxnRequest, TxnResponse,
};

use super::history::{Call, Guard, Op, Outcome, ReadAt, ReadKv, Recorder};
use super::rng::Rng;
use super::tls::Transport;
use crate::common::http::{request, Answer};

/// How long a client waits for an answer: above the nodes' own 2 s timeout, so a node that is up
/// answers (perhaps with 503) before the client gives up; a paused node makes it give up.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest pause between two operations of one client, so the load stays moderate on two cores.
const MAX_THINK: Duration = Duration::from_millis(20);
/// The keys only txns touch: a txn changes both at one revision, so they are checked together
/// (by revisions) rather than each on its own.
pub const TXN_KEYS: [&str; 2] = ["t0", "t1"];
/// The history's key for txns, which span [`TXN_KEYS`].
pub const TXN_GROUP: &str = "txn";

/// What the clients work on.
#[derive(Debug, Clone)]
pub struct Workload {
    pub clients: usize,
    pub keys: usize,
    /// Base URL of each node's HTTP API, index `id - 1`.
    pub nodes: Vec<String>,
    /// How to reach them.
    pub transport: Transport,
}

/// Running clients; [`Clients::stop`] waits until each has finished its current operation.
pub struct Clients {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Clients {
    /// Starts `workload.clients` threads; client `c` of a run with `seed` draws from its own
    /// stream. `first_client` numbers them, so rounds of clients in one history stay distinct.
    pub fn start(
        workload: &Workload,
        seed: u64,
        first_client: usize,
        recorder: &Recorder,
    ) -> Clients {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (first_client..first_client + workload.clients)
            .map(|client| {
                let mut worker = Client {
                    id: client,
                    rng: Rng::new(seed ^ (client as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)),
                    workload: workload.clone(),
                    recorder: recorder.clone(),
                    agent: workload.transport.agent(CLIENT_TIMEOUT),
                    seq: 0,
                    last_seen: vec![None; workload.keys],
                    last_txn_seen: None,
                };
                let stop = stop.clone();
                thread::Builder::new()
                    .name(format!("client-{client}"))
                    .spawn(move || {
                        while !stop.load(Ordering::SeqCst) {
                            worker.one_operation();
                            thread::sleep(worker.rng.duration_below(MAX_THINK));
                        }
                    })
                    .expect("spawn a client thread")
            })
            .collect();
        Clients { stop, threads }
    }

    /// Stops the clients and waits for them (each finishes its operation, at most
    /// [`CLIENT_TIMEOUT`]).
    pub fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        for thread in self.threads {
            thread.join().expect("a client thread panicked");
        }
    }
}

struct Client {
    id: usize,
    rng: Rng,
    workload: Workload,
    recorder: Recorder,
    agent: ureq::Agent,
    /// Operations issued, for unique values.
    seq: u64,
    /// The last value this client saw per key: what its compare-and-swaps expect.
    last_seen: Vec<Option<String>>,
    /// What this client last saw of the first txn key: what its txns' guards expect.
    last_txn_seen: Option<ReadKv>,
}

impl Client {
    fn one_operation(&mut self) {
        match self.rng.below(100) {
            0..=11 => self.txn_operation(),
            _ => self.key_operation(),
        }
    }

    /// A txn over [`TXN_KEYS`]: a guarded write of unique values (guarded on the first key's
    /// value or its revision as last seen), or a read of both.
    fn txn_operation(&mut self) {
        let node = 1 + self.rng.below(self.workload.nodes.len() as u64) as usize;
        self.seq += 1;
        let call = if self.rng.below(3) == 0 {
            Call::TxnRead {
                keys: TXN_KEYS.map(String::from).to_vec(),
            }
        } else {
            let seen = self.last_txn_seen.as_ref();
            let guard = if self.rng.below(2) == 0 {
                Guard::ModRevision(seen.map_or(0, |kv| kv.mod_revision))
            } else {
                Guard::Value(seen.and_then(|kv| kv.value.clone()))
            };
            let writes = TXN_KEYS
                .iter()
                .map(|key| (key.to_string(), format!("c{}-{}-{key}", self.id, self.seq)))
                .collect();
            Call::Txn { guard, writes }
        };
        let url = format!("{}/v1/txn", self.workload.nodes[node - 1]);
        let body = serde_json::to_vec(&txn_request(&call)).expect("a txn as JSON");
        let exchange = self.exchange(node, &call, "POST", &url, &body);
        if let Outcome::Txn {
            revision,
            succeeded,
            reads,
        } = &exchange.outcome
        {
            self.last_txn_seen = match (&call, succeeded) {
                (Call::Txn { writes, .. }, true) => Some(ReadKv {
                    key: writes[0].0.clone(),
                    value: Some(writes[0].1.clone()),
                    mod_revision: *revision,
                }),
                _ => reads.first().cloned(),
            };
        }
        self.record(node, TXN_GROUP.to_string(), call, exchange);
    }

    /// An operation on one of the plain keys.
    fn key_operation(&mut self) {
        let key_index = self.rng.below(self.workload.keys as u64) as usize;
        let key = format!("k{key_index}");
        let node = 1 + self.rng.below(self.workload.nodes.len() as u64) as usize;
        self.seq += 1;
        let value = format!("c{}-{}", self.id, self.seq);
        let call = match self.rng.below(100) {
            0..=39 => Call::Get,
            40..=69 => Call::Put { value },
            70..=89 => Call::Cas {
                expected: self.last_seen[key_index].clone(),
                value,
            },
            _ => Call::Delete,
        };
        let url = format!("{}/v1/kv/{key}", self.workload.nodes[node - 1]);
        let (method, url, body) = match &call {
            Call::Get => ("GET", url, ""),
            Call::Put { value } => ("PUT", url, value.as_str()),
            Call::Cas {
                expected: Some(e),
                value,
            } => ("PUT", format!("{url}?prev_value={e}"), value.as_str()),
            Call::Cas {
                expected: None,
                value,
            } => ("PUT", format!("{url}?prev_exist=false"), value.as_str()),
            Call::Delete => ("DELETE", url, ""),
            Call::Txn { .. } | Call::TxnRead { .. } => unreachable!("a txn is not a key operation"),
        };
        let exchange = self.exchange(node, &call, method, &url, body.as_bytes());
        match (&call, &exchange.outcome) {
            (_, Outcome::Read(seen) | Outcome::CasFailed(seen)) => {
                self.last_seen[key_index] = seen.clone()
            }
            (Call::Put { value } | Call::Cas { value, .. }, Outcome::Ok) => {
                self.last_seen[key_index] = Some(value.clone())
            }
            (Call::Delete, Outcome::Ok) => self.last_seen[key_index] = None,
            _ => {}
        }
        self.record(node, key, call, exchange);
    }

    /// Sends one request for `call` to node `node` and reads what its answer means; an answer
    /// the API does not document is reported as an anomaly.
    fn exchange(&self, node: usize, call: &Call, method: &str, url: &str, body: &[u8]) -> Exchange {
        let invoked = self.recorder.now();
        let answer = request(&self.agent, method, url, body);
        let completed = self.recorder.now();
        let (outcome, detail, read_at) = match answer {
            Ok(answer) => match interpret(call, &answer) {
                Ok((outcome, read_at)) => (outcome, status_detail(&answer), read_at),
                Err(anomaly) => {
                    self.recorder
                        .anomaly(format!("client {} via node {node}: {anomaly}", self.id));
                    (no_answer(call), anomaly, None)
                }
            },
            Err(e) => (no_answer(call), e.to_string(), None),
        };
        Exchange {
            outcome,
            detail,
            invoked,
            completed,
            read_at,
        }
    }

    /// Adds the operation to the history, as this client's.
    fn record(&self, node: usize, key: String, call: Call, exchange: Exchange) {
        self.recorder.record(Op {
            client: self.id,
            node,
            key,
            call,
            outcome: exchange.outcome,
            invoked: exchange.invoked,
            completed: exchange.completed,
            detail: exchange.detail,
            read_at: exchange.read_at,
        });
    }
}

/// What one request brought back, ready to be recorded.
struct Exchange {
    outcome: Outcome,
    detail: String,
    invoked: u64,
    completed: u64,
    read_at: Option<ReadAt>,
}

/// What an answer means for `call`, with the revisions of a read that found its key. A status
/// the API does not document for it is an anomaly the run reports (the harness sends only
/// well-formed requests); the operation then counts as telling nothing (a read) or as having an
/// unknown effect (a write).
pub fn interpret(call: &Call, answer: &Answer) -> Result<(Outcome, Option<ReadAt>), String> {
    if call.is_txn() {
        return Ok((txn_outcome(call, answer)?, None));
    }
    let outcome = outcome(call, answer)?;
    let read_at = match outcome {
        Outcome::Read(Some(_)) => Some(read_revisions(answer)?),
        _ => None,
    };
    Ok((outcome, read_at))
}

/// The request a txn call sends.
pub fn txn_request(call: &Call) -> TxnRequest {
    let range = |key: &str| {
        RequestOp::Range(RangeRequest {
            key: key.as_bytes().to_vec(),
            ..RangeRequest::default()
        })
    };
    match call {
        Call::TxnRead { keys } => TxnRequest {
            success: keys.iter().map(|key| range(key)).collect(),
            ..TxnRequest::default()
        },
        Call::Txn { guard, writes } => {
            let (target, result) = match guard {
                Guard::ModRevision(revision) => {
                    (CompareTarget::ModRevision(*revision), CompareResult::Equal)
                }
                Guard::Value(Some(value)) => (
                    CompareTarget::Value(value.clone().into_bytes()),
                    CompareResult::Equal,
                ),
                Guard::Value(None) => (CompareTarget::CreateRevision(0), CompareResult::Equal),
            };
            TxnRequest {
                compare: vec![Compare {
                    key: writes[0].0.clone().into_bytes(),
                    range_end: Vec::new(),
                    target,
                    result,
                }],
                success: writes
                    .iter()
                    .map(|(key, value)| {
                        RequestOp::Put(PutRequest {
                            key: key.clone().into_bytes(),
                            value: value.clone().into_bytes(),
                            ..PutRequest::default()
                        })
                    })
                    .collect(),
                failure: writes.iter().map(|(key, _)| range(key)).collect(),
            }
        }
        other => panic!("{other:?} is not a txn"),
    }
}

/// What a txn's answer means; statuses as for a single key's write.
fn txn_outcome(call: &Call, answer: &Answer) -> Result<Outcome, String> {
    match (call, answer.status) {
        (_, 200) => {}
        (Call::TxnRead { .. }, 503) => return Ok(Outcome::NoInfo),
        (_, 503) => return Ok(Outcome::Unknown),
        (Call::Txn { .. }, 500) => return Ok(Outcome::Failed),
        (call, status) => {
            return Err(format!(
                "unexpected answer to {call:?}: {status} {}",
                answer.text()
            ))
        }
    }
    let malformed = |why: &str| format!("malformed txn answer ({why}): {}", answer.text());
    let response: TxnResponse =
        serde_json::from_slice(&answer.body).map_err(|e| malformed(&e.to_string()))?;
    let read_keys: Vec<&String> = match (call, response.succeeded) {
        (Call::TxnRead { keys }, _) => keys.iter().collect(),
        (Call::Txn { writes, .. }, false) => writes.iter().map(|(key, _)| key).collect(),
        _ => Vec::new(),
    };
    let mut reads = Vec::new();
    for (position, op) in response.responses.iter().enumerate() {
        match (op, read_keys.get(position)) {
            (ResponseOp::Range(range), Some(&key)) => reads.push(match range.kvs.as_slice() {
                [] => ReadKv {
                    key: key.clone(),
                    value: None,
                    mod_revision: 0,
                },
                [kv] if kv.key == key.as_bytes() => ReadKv {
                    key: key.clone(),
                    value: Some(String::from_utf8_lossy(&kv.value).into_owned()),
                    mod_revision: kv.mod_revision,
                },
                _ => return Err(malformed(&format!("the range of {key:?} found other keys"))),
            }),
            (ResponseOp::Put(_), None) => {}
            _ => return Err(malformed("answers do not match the branch")),
        }
    }
    if reads.len() != read_keys.len() {
        return Err(malformed("too few answers"));
    }
    Ok(Outcome::Txn {
        revision: response.header.revision,
        succeeded: response.succeeded,
        reads,
    })
}

/// What an answer means for a key operation.
fn outcome(call: &Call, answer: &Answer) -> Result<Outcome, String> {
    Ok(match (call, answer.status) {
        (Call::Get, 200) => Outcome::Read(Some(answer.text())),
        (Call::Get, 404) => Outcome::Read(None),
        (Call::Get, 503) => Outcome::NoInfo,
        (Call::Put { .. } | Call::Cas { .. } | Call::Delete, 204) => Outcome::Ok,
        (Call::Cas { .. }, 412) => Outcome::CasFailed(current_value(answer)?),
        (Call::Put { .. } | Call::Cas { .. } | Call::Delete, 503) => Outcome::Unknown,
        (Call::Put { .. } | Call::Cas { .. } | Call::Delete, 500) => Outcome::Failed,
        (call, status) => {
            return Err(format!(
                "unexpected answer to {call:?}: {status} {}",
                answer.text()
            ))
        }
    })
}

/// No answer at all (timeout, connection refused or reset): a write may or may not have taken
/// effect; a read tells nothing.
fn no_answer(call: &Call) -> Outcome {
    match call {
        Call::Get | Call::TxnRead { .. } => Outcome::NoInfo,
        _ => Outcome::Unknown,
    }
}

/// The revisions in the headers of a `GET` that found its key.
fn read_revisions(answer: &Answer) -> Result<ReadAt, String> {
    let number = |name: &str| {
        answer
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok()?.parse().ok())
            .ok_or_else(|| format!("a read's answer lacks a numeric {name} header"))
    };
    Ok(ReadAt {
        revision: number(ondisk::api::http::header::REVISION)?,
        mod_revision: number(ondisk::api::http::header::MOD_REVISION)?,
    })
}

fn status_detail(answer: &Answer) -> String {
    if answer.status < 300 {
        answer.status.to_string()
    } else {
        format!("{} {}", answer.status, answer.text())
    }
}

/// The `current` value of a 412 answer, decoded from its `encoding`.
fn current_value(answer: &Answer) -> Result<Option<String>, String> {
    let malformed = || format!("malformed 412 answer: {}", answer.text());
    let json: serde_json::Value = serde_json::from_slice(&answer.body).map_err(|_| malformed())?;
    let current = &json["current"];
    if current.is_null() {
        return Ok(None);
    }
    let text = current["value"].as_str().ok_or_else(malformed)?;
    Ok(Some(match current["encoding"].as_str() {
        Some("base64") => String::from_utf8_lossy(
            &base64::engine::general_purpose::STANDARD
                .decode(text)
                .map_err(|_| malformed())?,
        )
        .into_owned(),
        _ => text.to_string(),
    }))
}
