//! The clients: concurrent threads sending random puts (of unique values), linearizable gets,
//! compare-and-swaps and deletes on a few keys to random nodes, recording every operation.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use base64::Engine;

use super::history::{Call, Op, Outcome, Recorder};
use super::rng::Rng;
use crate::common::http::{agent, request, Answer};

/// How long a client waits for an answer: above the nodes' own 2 s timeout, so a node that is up
/// answers (perhaps with 503) before the client gives up; a paused node makes it give up.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest pause between two operations of one client, so the load stays moderate on two cores.
const MAX_THINK: Duration = Duration::from_millis(20);

/// What the clients work on.
#[derive(Debug, Clone)]
pub struct Workload {
    pub clients: usize,
    pub keys: usize,
    /// Base URL of each node's HTTP API, index `id - 1`.
    pub nodes: Vec<String>,
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
                    agent: agent(CLIENT_TIMEOUT),
                    seq: 0,
                    last_seen: vec![None; workload.keys],
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
}

impl Client {
    fn one_operation(&mut self) {
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
        };
        let invoked = self.recorder.now();
        let answer = request(&self.agent, method, &url, body.as_bytes());
        let completed = self.recorder.now();
        let (outcome, detail) = match answer {
            Ok(answer) => match outcome(&call, &answer) {
                Ok(outcome) => (outcome, status_detail(&answer)),
                Err(anomaly) => {
                    self.recorder
                        .anomaly(format!("client {} via node {node}: {anomaly}", self.id));
                    (no_answer(&call), anomaly)
                }
            },
            Err(e) => (no_answer(&call), e.to_string()),
        };
        match (&call, &outcome) {
            (_, Outcome::Read(seen) | Outcome::CasFailed(seen)) => {
                self.last_seen[key_index] = seen.clone()
            }
            (Call::Put { value } | Call::Cas { value, .. }, Outcome::Ok) => {
                self.last_seen[key_index] = Some(value.clone())
            }
            (Call::Delete, Outcome::Ok) => self.last_seen[key_index] = None,
            _ => {}
        }
        self.recorder.record(Op {
            client: self.id,
            node,
            key,
            call,
            outcome,
            invoked,
            completed,
            detail,
        });
    }
}

/// What an answer means for `call`. A status the API does not document for it is an anomaly the
/// run reports (the harness sends only well-formed requests); the operation then counts as
/// telling nothing (a read) or as having an unknown effect (a write).
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
        Call::Get => Outcome::NoInfo,
        _ => Outcome::Unknown,
    }
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
