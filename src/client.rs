//! The native client: ondisk's own binary protocol, the length-prefixed frames nodes exchange on
//! their raft port, for programs that want more than HTTP gives.
//!
//! All of a client's calls to one node share one TCP connection with many requests in flight, so
//! there is no per-request connection, header or text parsing cost. Writes go straight to the
//! leader (the client follows the "not the leader" answers, which name the leader); reads are
//! spread over every endpoint, and a linearizable read on a follower costs it one read-index
//! round with the leader, as in etcd.

use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::api;
use crate::error::Error;
use crate::error::Result;
use crate::network::CallError;
use crate::network::Peers;
use crate::network::RemoteError;
use crate::network::Request;
use crate::network::Response;
use crate::types::Command;
use crate::types::CommandResult;

/// First pause before retrying after no node could take a request; doubles up to
/// [`MAX_RETRY_PAUSE`]. Short, because an election takes about one election timeout.
const MIN_RETRY_PAUSE: Duration = Duration::from_millis(10);
const MAX_RETRY_PAUSE: Duration = Duration::from_millis(200);

/// How a read sees the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consistency {
    /// Reflects every write acknowledged before the read began.
    Linearizable,
    /// The answering node's state machine as it is now: fastest, possibly behind.
    Stale,
}

/// A connection pool to one cluster's nodes, shared by any number of concurrent callers.
pub struct Client {
    peers: Peers,
    /// Raft addresses (HOST:PORT) of the nodes to try.
    endpoints: Vec<String>,
    /// Where the last write succeeded, or where the last refusal said the leader is.
    leader: Mutex<Option<String>>,
    /// Round-robin position for reads and for finding a leader.
    next: AtomicUsize,
    timeout: Duration,
}

impl Client {
    /// A client for the nodes at `endpoints` (their raft addresses). Nothing connects until the
    /// first call. Each call gives up after `timeout`.
    pub fn new(endpoints: Vec<String>, timeout: Duration) -> Result<Client> {
        if endpoints.is_empty() {
            return Err(Error::Config(
                "the client needs at least one endpoint".into(),
            ));
        }
        Ok(Client {
            peers: Peers::default(),
            endpoints,
            leader: Mutex::new(None),
            next: AtomicUsize::new(0),
            timeout,
        })
    }

    /// Sets `key` to `value`; returns once the write is committed and applied on the leader.
    pub async fn put(&self, key: Vec<u8>, value: Vec<u8>) -> Result<()> {
        let put = api::PutRequest {
            key,
            value,
            ..api::PutRequest::default()
        };
        self.propose("put", Command::Put(put)).await.map(drop)
    }

    /// Deletes `key`; returns once the delete is committed and applied on the leader.
    pub async fn delete(&self, key: Vec<u8>) -> Result<()> {
        let delete = api::DeleteRangeRequest {
            key,
            ..api::DeleteRangeRequest::default()
        };
        self.propose("delete", Command::DeleteRange(delete))
            .await
            .map(drop)
    }

    /// The value of `key`, read with the given consistency from the next endpoint in turn;
    /// another endpoint is tried if one fails, since a read changes nothing.
    pub async fn get(&self, key: &[u8], consistency: Consistency) -> Result<Option<Vec<u8>>> {
        let deadline = Instant::now() + self.timeout;
        let mut pause = MIN_RETRY_PAUSE;
        loop {
            let addr = self.next_endpoint();
            let request = Request::Get {
                key: key.to_vec(),
                linearizable: consistency == Consistency::Linearizable,
            };
            let failure = match self.call(addr, request, deadline).await {
                Ok(Response::Value(value)) => return Ok(value),
                Ok(other) => return Err(unexpected(other)),
                Err(CallError::Remote(RemoteError::Refused(reason))) => {
                    return Err(Error::Refused(reason))
                }
                Err(failure) => failure,
            };
            pause = self
                .pause_before_retry("get", pause, deadline, failure)
                .await?;
        }
    }

    /// Sends `command` to the leader, following redirects, and returns what applying it produced.
    /// Retries only while the command certainly had no effect.
    async fn propose(&self, op: &'static str, command: Command) -> Result<CommandResult> {
        let deadline = Instant::now() + self.timeout;
        let mut pause = MIN_RETRY_PAUSE;
        loop {
            let addr = self.leader_or_next();
            let failure = match self
                .call(&addr, Request::Propose(command.clone()), deadline)
                .await
            {
                Ok(Response::Proposed(result)) => {
                    self.remember_leader(Some(addr));
                    return Ok(result);
                }
                Ok(other) => return Err(unexpected(other)),
                Err(CallError::Remote(RemoteError::NotLeader {
                    leader: Some((_, member)),
                })) if member.raft_addr != addr => {
                    self.remember_leader(Some(member.raft_addr));
                    continue;
                }
                // A refusal is the cluster's answer, not a failure to reach it: retrying the same
                // request would only be refused again, and the caller needs the reason.
                Err(CallError::Remote(
                    refusal @ (RemoteError::Refused(_) | RemoteError::TooLarge { .. }),
                )) => return Err(refusal.into_error(op, self.timeout)),
                Err(failure) if failure.certainly_not_applied() => failure,
                Err(CallError::Remote(remote)) => return Err(remote.into_error(op, self.timeout)),
                Err(lost) => {
                    return Err(Error::OutcomeUnknown {
                        op,
                        reason: lost.to_string(),
                    })
                }
            };
            self.remember_leader(None);
            pause = self
                .pause_before_retry(op, pause, deadline, failure)
                .await?;
        }
    }

    async fn call(
        &self,
        addr: &str,
        request: Request,
        deadline: Instant,
    ) -> std::result::Result<Response, CallError> {
        let left = deadline.saturating_duration_since(Instant::now());
        self.peers.call(addr, request, left).await
    }

    /// Waits `pause` before the next attempt, or fails with `Timeout` when that would pass the
    /// deadline. Returns the pause to use after that.
    async fn pause_before_retry(
        &self,
        op: &'static str,
        pause: Duration,
        deadline: Instant,
        failure: CallError,
    ) -> Result<Duration> {
        tracing::debug!("{op} will be retried: {failure}");
        if Instant::now() + pause >= deadline {
            return Err(Error::Timeout {
                op,
                after: self.timeout,
            });
        }
        tokio::time::sleep(pause).await;
        Ok((pause * 2).min(MAX_RETRY_PAUSE))
    }

    fn next_endpoint(&self) -> &str {
        let at = self.next.fetch_add(1, Ordering::Relaxed) % self.endpoints.len();
        &self.endpoints[at]
    }

    fn leader_or_next(&self) -> String {
        let known = self
            .leader
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        known.unwrap_or_else(|| self.next_endpoint().to_string())
    }

    fn remember_leader(&self, addr: Option<String>) {
        *self.leader.lock().unwrap_or_else(|e| e.into_inner()) = addr;
    }
}

fn unexpected(response: Response) -> Error {
    Error::Raft(format!("unexpected answer {response:?}"))
}
