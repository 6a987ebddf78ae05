//! The watchers: threads that each stream `GET /v1/watch/?prefix=true` (every key) from a random
//! node, and on any error, end of stream or their own random connection timeout reconnect to
//! another node from the revision after the last event they saw, as etcd's clients resume. They
//! record every response with events; `revisions.rs` holds what they saw to the committed history.
//!
//! Each connection lives at most a few seconds (the agent's global timeout), so a watcher resumes
//! many times per run, on nodes that were killed, paused, cut off or power-cut in between.

use std::io::{BufRead, BufReader};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use ondisk::api::{EventKind, WatchResponse};

use super::history::Recorder;
use super::rng::Rng;
use super::tls::Transport;

/// Bounds of one watch connection's life, drawn anew for each.
const CONNECTION_LIFE: (Duration, Duration) = (Duration::from_secs(2), Duration::from_secs(6));
/// Pause after a refused connection, so a down node is not hammered.
const BACKOFF: Duration = Duration::from_millis(100);

/// One event as a watcher saw it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Seen {
    /// The event's `kv.mod_revision`: the revision that made the change.
    pub revision: i64,
    pub key: String,
    /// The value put, `None` for a delete.
    pub value: Option<String>,
}

/// One response with events.
#[derive(Debug, Clone)]
pub struct Response {
    /// The node that sent it.
    pub node: usize,
    /// Which of the watcher's connections it came on (from 1).
    pub connection: usize,
    pub events: Vec<Seen>,
}

/// What one watcher saw.
#[derive(Debug, Clone)]
pub struct WatcherLog {
    pub id: usize,
    /// The revision its first connection started from.
    pub start_revision: i64,
    pub responses: Vec<Response>,
    /// Connections opened (every one after the first is a resume).
    pub connections: usize,
    /// The revision it would resume from next.
    pub next_revision: i64,
}

/// When the watchers should stop: once past `revision`, or at `deadline` regardless.
#[derive(Debug, Clone, Copy)]
struct Finish {
    revision: i64,
    deadline: Instant,
}

/// Running watchers.
pub struct Watchers {
    finish: Arc<Mutex<Option<Finish>>>,
    threads: Vec<JoinHandle<WatcherLog>>,
}

impl Watchers {
    /// Starts `count` watchers over the nodes at `nodes` (base URLs, index `id - 1`, reached
    /// through `transport`), each from revision 1, drawing from streams of `seed`.
    pub fn start(
        nodes: &[String],
        transport: &Transport,
        count: usize,
        seed: u64,
        recorder: &Recorder,
    ) -> Watchers {
        let finish = Arc::new(Mutex::new(None));
        let threads = (0..count)
            .map(|id| {
                let mut watcher = Watcher {
                    log: WatcherLog {
                        id,
                        start_revision: 1,
                        responses: Vec::new(),
                        connections: 0,
                        next_revision: 1,
                    },
                    rng: Rng::new(seed ^ (id as u64 + 1).wrapping_mul(0xd1b5_4a32_d192_ed03)),
                    nodes: nodes.to_vec(),
                    transport: transport.clone(),
                    recorder: recorder.clone(),
                    finish: finish.clone(),
                };
                thread::Builder::new()
                    .name(format!("watcher-{id}"))
                    .spawn(move || {
                        watcher.run();
                        watcher.log
                    })
                    .expect("spawn a watcher thread")
            })
            .collect();
        Watchers { finish, threads }
    }

    /// Lets the watchers go on until each has seen every revision up to `revision` or `timeout`
    /// has passed, and returns what they saw.
    pub fn finish(self, revision: i64, timeout: Duration) -> Vec<WatcherLog> {
        *self.finish.lock().unwrap_or_else(|e| e.into_inner()) = Some(Finish {
            revision,
            deadline: Instant::now() + timeout,
        });
        self.threads
            .into_iter()
            .map(|thread| thread.join().expect("a watcher thread panicked"))
            .collect()
    }
}

/// One watcher thread's state: what it saw so far, and what it needs to go on.
struct Watcher {
    log: WatcherLog,
    rng: Rng,
    nodes: Vec<String>,
    transport: Transport,
    recorder: Recorder,
    finish: Arc<Mutex<Option<Finish>>>,
}

impl Watcher {
    /// Watches, connection after connection, each on another node than the last, until told to
    /// finish.
    fn run(&mut self) {
        let mut node = 1 + self.rng.below(self.nodes.len() as u64) as usize;
        while !self.finished() {
            self.log.connections += 1;
            let life = self
                .rng
                .duration_between(CONNECTION_LIFE.0, CONNECTION_LIFE.1);
            let url = watch_url(&self.nodes[node - 1], self.log.next_revision);
            match open(&self.transport, &url, life) {
                Ok(lines) => self.follow(node, lines),
                Err(refusal) => {
                    if let Some(anomaly) = refusal.undocumented {
                        self.recorder.anomaly(format!(
                            "watcher {} via node {node}: {anomaly}",
                            self.log.id
                        ));
                    }
                    thread::sleep(BACKOFF);
                }
            }
            if self.nodes.len() > 1 {
                let other = 1 + self.rng.below(self.nodes.len() as u64 - 1) as usize;
                node = if other >= node { other + 1 } else { other };
            }
        }
    }

    /// Reads one connection's responses until it ends or the watcher is done.
    fn follow(&mut self, node: usize, lines: impl BufRead) {
        let anomaly = |what: String| {
            self.recorder
                .anomaly(format!("watcher {} via node {node}: {what}", self.log.id))
        };
        for (index, line) in lines.lines().enumerate() {
            let Ok(line) = line else { return };
            let response: WatchResponse = match serde_json::from_str(&line) {
                Ok(response) => response,
                Err(e) => return anomaly(format!("malformed watch line ({e}): {line}")),
            };
            if response.created != (index == 0) {
                return anomaly(format!(
                    "line {index} of a watch has created={}",
                    response.created
                ));
            }
            if response.canceled {
                return anomaly(format!(
                    "the watch from {} was canceled: {} (compact revision {})",
                    self.log.next_revision, response.cancel_reason, response.compact_revision
                ));
            }
            if let Some(last) = response.events.last() {
                self.log.next_revision = last.kv.mod_revision + 1;
                self.log.responses.push(Response {
                    node,
                    connection: self.log.connections,
                    events: response.events.iter().map(seen_event).collect(),
                });
            }
            if self.finished() {
                return;
            }
        }
    }

    /// Whether [`Watchers::finish`] was called and this watcher is past its revision or deadline.
    fn finished(&self) -> bool {
        let finish = *self.finish.lock().unwrap_or_else(|e| e.into_inner());
        finish.is_some_and(|f| self.log.next_revision > f.revision || Instant::now() >= f.deadline)
    }
}

/// A watch of every key from `start_revision` on the node at `base`.
fn watch_url(base: &str, start_revision: i64) -> String {
    format!("{base}/v1/watch/?prefix=true&start_revision={start_revision}")
}

/// An event as recorded: keys and values are the workload's UTF-8 text.
fn seen_event(event: &ondisk::api::Event) -> Seen {
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    Seen {
        revision: event.kv.mod_revision,
        key: text(&event.kv.key),
        value: (event.kind == EventKind::Put).then(|| text(&event.kv.value)),
    }
}

/// Why a watch could not be opened; `undocumented` when the answer is one the API does not
/// document for a watch (503 and transport errors are expected under faults).
struct Refusal {
    reason: String,
    undocumented: Option<String>,
}

/// Opens a watch through `transport` that the client abandons after `life`; its lines as they
/// come.
fn open(transport: &Transport, url: &str, life: Duration) -> Result<impl BufRead, Refusal> {
    let request = ureq::http::Request::builder()
        .method("GET")
        .uri(url)
        .body(Vec::new())
        .expect("valid request");
    let response = transport.agent(life).run(request).map_err(|e| Refusal {
        reason: e.to_string(),
        undocumented: None,
    })?;
    let status = response.status().as_u16();
    if status != 200 {
        let mut body = response.into_body();
        let text = body.read_to_string().unwrap_or_default();
        let reason = format!("watch {url}: {status} {text}");
        return Err(Refusal {
            undocumented: (status != 503).then(|| reason.clone()),
            reason,
        });
    }
    Ok(BufReader::new(response.into_body().into_reader()))
}

/// The committed history: every event from revision 1 up to `revision`, read with one watch of
/// every key on the node at `base` (through `transport`), which must deliver them all within
/// `timeout`.
pub fn committed_history(
    base: &str,
    transport: &Transport,
    revision: i64,
    timeout: Duration,
) -> Result<Vec<Seen>, String> {
    let url = watch_url(base, 1);
    let lines = open(transport, &url, timeout).map_err(|refusal| refusal.reason)?;
    let mut events = Vec::new();
    for line in lines.lines() {
        let line =
            line.map_err(|e| format!("watch {url} broke after {} events: {e}", events.len()))?;
        let response: WatchResponse = serde_json::from_str(&line)
            .map_err(|e| format!("malformed watch line ({e}): {line}"))?;
        if response.canceled {
            return Err(format!("watch {url} canceled: {}", response.cancel_reason));
        }
        events.extend(response.events.iter().map(seen_event));
        if events.last().is_some_and(|e| e.revision >= revision) {
            return Ok(events);
        }
    }
    Err(format!(
        "watch {url} ended at revision {:?}, before {revision}",
        events.last().map(|e| e.revision)
    ))
}
