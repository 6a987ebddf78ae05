//! The native client: ondisk's own binary protocol, the length-prefixed frames nodes exchange on
//! their raft port, for programs that want more than HTTP gives.
//!
//! All of a client's calls to one node share one TCP connection with many requests in flight, so
//! there is no per-request connection, header or text parsing cost. Writes go straight to the
//! leader (the client follows the "not the leader" answers, which name the leader); reads are
//! spread over every endpoint, and a linearizable read on a follower costs it one read-index
//! round with the leader, as in etcd. A watch is a chain of long polls that moves to another
//! endpoint when its node fails, resuming after the last revision it delivered.
//!
//! The whole key-value API is here with the types of [`crate::api`]: [`Client::range`],
//! [`Client::put`], [`Client::delete_range`], [`Client::txn`], [`Client::compact`], the lease
//! calls and [`Client::watch`]; [`Client::get`] and [`Client::delete`] are shorthands for one key.

use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::api;
use crate::api::AuthError;
use crate::error::Error;
use crate::error::Result;
use crate::locks::lock;
use crate::network::CallError;
use crate::network::Peers;
use crate::network::RemoteError;
use crate::network::Request;
use crate::network::Response;
use crate::types::ApplyError;
use crate::types::Command;
use crate::types::CommandResult;

mod watch;

pub use watch::Watch;

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

/// Whether a request that may have reached the leader can be sent again when its answer is lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resend {
    /// A write: sending it twice could apply it twice, so a lost answer is "outcome unknown".
    Never,
    /// A question or a keep-alive: doing it twice changes nothing a caller could tell.
    Freely,
}

/// A connection pool to one cluster's nodes, shared by any number of concurrent callers.
pub struct Client {
    peers: Peers,
    /// Raft addresses (HOST:PORT) of the nodes to try.
    endpoints: Vec<String>,
    /// Where the last leader request succeeded, or where the last refusal said the leader is.
    leader: Mutex<Option<String>>,
    /// Round-robin position for reads and for finding a leader.
    next: AtomicUsize,
    timeout: Duration,
    /// Who the client acts as on a cluster with authentication on (see [`Client::as_user`]).
    login: Option<Login>,
}

/// A user's name and password, and the token they last got.
struct Login {
    name: String,
    password: api::Password,
    token: Mutex<Option<String>>,
}

impl Login {
    fn token(&self) -> Option<String> {
        lock(&self.token).clone()
    }
}

impl Client {
    /// A client for the nodes at `endpoints` (their raft addresses). Nothing connects until the
    /// first call. Each call gives up after `timeout`.
    pub fn new(endpoints: Vec<String>, timeout: Duration) -> Result<Client> {
        Client::with_peers(endpoints, timeout, Peers::default())
    }

    /// A client for nodes whose raft port speaks TLS: the port is shared with the members'
    /// traffic, so the client presents a certificate the peer CA signed (`files.cert`) and
    /// trusts only that CA (`files.trusted_ca`).
    pub fn with_tls(
        endpoints: Vec<String>,
        timeout: Duration,
        files: crate::tls::TlsFiles,
    ) -> Result<Client> {
        let tls = crate::tls::peer_client(files).map_err(|e| Error::Config(e.to_string()))?;
        Client::with_peers(endpoints, timeout, Peers::new(Some(tls)))
    }

    fn with_peers(endpoints: Vec<String>, timeout: Duration, peers: Peers) -> Result<Client> {
        if endpoints.is_empty() {
            return Err(Error::Config(
                "the client needs at least one endpoint".into(),
            ));
        }
        Ok(Client {
            peers,
            endpoints,
            leader: Mutex::new(None),
            next: AtomicUsize::new(0),
            timeout,
            login: None,
        })
    }

    /// This client acting as user `name` (authenticated with `password`) on a cluster with
    /// authentication on: each request carries the user's token and is checked against the
    /// user's permissions. The token is fetched on first use and again when it has expired.
    pub fn as_user(mut self, name: &str, password: &str) -> Client {
        self.login = Some(Login {
            name: name.to_string(),
            password: api::Password(password.to_string()),
            token: Mutex::new(None),
        });
        self
    }

    /// The keys of `request`'s range, from the next endpoint in turn: linearizable unless the
    /// request is `serializable`, which reads that node's state as it is.
    pub async fn range(&self, request: api::RangeRequest) -> Result<api::RangeResponse> {
        match self.read("range", Request::Range(request)).await? {
            Response::Range(response) => Ok(response),
            other => Err(unexpected(other)),
        }
    }

    /// The value of `key`, read with the given consistency from the next endpoint in turn.
    pub async fn get(&self, key: &[u8], consistency: Consistency) -> Result<Option<Vec<u8>>> {
        let request = Request::Get {
            key: key.to_vec(),
            linearizable: consistency == Consistency::Linearizable,
        };
        match self.read("get", request).await? {
            Response::Value(value) => Ok(value),
            other => Err(unexpected(other)),
        }
    }

    /// Sets a key; returns once the write is committed and applied on the leader. The answer's
    /// header carries the revision of the write.
    pub async fn put(&self, request: api::PutRequest) -> Result<api::PutResponse> {
        match self.propose("put", Command::Put(request)).await? {
            CommandResult::Put(response) => Ok(response),
            other => Err(unexpected(other)),
        }
    }

    /// Deletes a key or a range of keys, once committed and applied on the leader.
    pub async fn delete_range(
        &self,
        request: api::DeleteRangeRequest,
    ) -> Result<api::DeleteRangeResponse> {
        match self
            .propose("delete", Command::DeleteRange(request))
            .await?
        {
            CommandResult::DeleteRange(response) => Ok(response),
            other => Err(unexpected(other)),
        }
    }

    /// Deletes `key`; returns once the delete is committed and applied on the leader.
    pub async fn delete(&self, key: Vec<u8>) -> Result<()> {
        let request = api::DeleteRangeRequest {
            key,
            ..api::DeleteRangeRequest::default()
        };
        self.delete_range(request).await.map(drop)
    }

    /// Runs a transaction (its comparisons, then one branch) atomically, at one revision.
    pub async fn txn(&self, request: api::TxnRequest) -> Result<api::TxnResponse> {
        match self.propose("txn", Command::Txn(request)).await? {
            CommandResult::Txn(response) => Ok(response),
            other => Err(unexpected(other)),
        }
    }

    /// Forgets the history before a revision, once committed and applied.
    pub async fn compact(
        &self,
        request: api::CompactionRequest,
    ) -> Result<api::CompactionResponse> {
        match self.propose("compact", Command::Compact(request)).await? {
            CommandResult::Compacted(response) => Ok(response),
            other => Err(unexpected(other)),
        }
    }

    /// Creates a lease (the leader chooses its id when the request leaves it 0).
    pub async fn lease_grant(
        &self,
        request: api::LeaseGrantRequest,
    ) -> Result<api::LeaseGrantResponse> {
        match self
            .propose("lease grant", Command::LeaseGrant(request))
            .await?
        {
            CommandResult::LeaseGranted(response) => Ok(response),
            other => Err(unexpected(other)),
        }
    }

    /// Ends a lease and deletes its keys, once committed and applied. The log entry carries no
    /// revision back, so the answer's header is empty.
    pub async fn lease_revoke(&self, id: i64) -> Result<api::LeaseRevokeResponse> {
        match self
            .propose("lease revoke", Command::LeaseRevoke { id })
            .await?
        {
            CommandResult::LeaseRevoked => Ok(api::LeaseRevokeResponse::default()),
            other => Err(unexpected(other)),
        }
    }

    /// Renews a lease for its full TTL, at the leader (which counts expiry). Sent again freely
    /// when an answer is lost: a second renewal only renews.
    pub async fn lease_keep_alive(&self, id: i64) -> Result<api::LeaseKeepAliveResponse> {
        match self
            .ask_leader(
                "lease keep-alive",
                Request::LeaseKeepAlive { id },
                Resend::Freely,
            )
            .await?
        {
            Response::LeaseKeepAlive(response) => Ok(response),
            other => Err(unexpected(other)),
        }
    }

    /// A lease's remaining seconds as the leader counts them, and with `keys` its keys.
    pub async fn lease_time_to_live(
        &self,
        id: i64,
        keys: bool,
    ) -> Result<api::LeaseTimeToLiveResponse> {
        match self
            .ask_leader(
                "lease time-to-live",
                Request::LeaseTimeToLive { id, keys },
                Resend::Freely,
            )
            .await?
        {
            Response::LeaseTimeToLive(response) => Ok(response),
            other => Err(unexpected(other)),
        }
    }

    /// Every lease in force, from the next endpoint in turn (after its read barrier).
    pub async fn leases(&self) -> Result<api::LeaseLeasesResponse> {
        match self.read("leases", Request::Leases).await? {
            Response::Leases(response) => Ok(response),
            other => Err(unexpected(other)),
        }
    }

    /// Starts a watch of `request`'s keys (see [`Watch`]). A start revision of 0 means "changes
    /// after now": it is pinned here to the cluster's current revision, so that the watch misses
    /// nothing written after this call returns, whichever node serves it.
    pub async fn watch(&self, mut request: api::WatchRequest) -> Result<Watch<'_>> {
        if request.start_revision == 0 {
            let now = api::RangeRequest {
                key: request.key.clone(),
                range_end: request.range_end.clone(),
                count_only: true,
                ..api::RangeRequest::default()
            };
            request.start_revision = self.range(now).await?.header.revision + 1;
        }
        let first = self.next.fetch_add(1, Ordering::Relaxed);
        Ok(Watch::new(self, request, first))
    }

    /// Sends a request any node can answer to the next endpoint in turn, trying the others until
    /// one answers or the deadline passes; sending it again is safe since it changes nothing.
    async fn read(&self, op: &'static str, request: Request) -> Result<Response> {
        let deadline = Instant::now() + self.timeout;
        let mut pause = MIN_RETRY_PAUSE;
        loop {
            let addr = self.next_endpoint();
            let failure = match self.call(addr, request.clone(), deadline).await {
                Ok(response) => return Ok(response),
                Err(CallError::Remote(RemoteError::Refused(reason))) => {
                    return Err(Error::Refused(reason))
                }
                Err(CallError::Remote(RemoteError::Busy(reason))) => {
                    return Err(Error::Busy(reason))
                }
                Err(CallError::Remote(RemoteError::Request(refusal))) => {
                    return Err(Error::Request(refusal))
                }
                Err(failure) => failure,
            };
            pause = self
                .pause_before_retry(op, pause, deadline, failure)
                .await?;
        }
    }

    /// Sends `command` to the leader, following redirects, and returns what applying it produced.
    /// Retries only while the command certainly had no effect.
    async fn propose(&self, op: &'static str, command: Command) -> Result<CommandResult> {
        match self
            .ask_leader(op, Request::Propose(command), Resend::Never)
            .await?
        {
            Response::Proposed(CommandResult::Refused(refusal)) => Err(Error::Request(refusal)),
            Response::Proposed(result) => Ok(result),
            other => Err(unexpected(other)),
        }
    }

    /// Sends `request` to the leader, following redirects, until it answers or the deadline
    /// passes. `resend` says whether a request that may have reached it is sent again.
    async fn ask_leader(
        &self,
        op: &'static str,
        request: Request,
        resend: Resend,
    ) -> Result<Response> {
        let deadline = Instant::now() + self.timeout;
        let mut pause = MIN_RETRY_PAUSE;
        loop {
            let addr = self.leader_or_next();
            let failure = match self.call(&addr, request.clone(), deadline).await {
                Ok(response) => {
                    self.remember_leader(Some(addr));
                    return Ok(response);
                }
                Err(CallError::Remote(RemoteError::NotLeader {
                    leader: Some((_, member)),
                })) if member.raft_addr != addr => {
                    self.remember_leader(Some(member.raft_addr));
                    continue;
                }
                // A refusal is the cluster's answer, not a failure to reach it: retrying the same
                // request would only be refused again, and the caller needs the reason.
                Err(CallError::Remote(
                    refusal @ (RemoteError::Refused(_)
                    | RemoteError::Busy(_)
                    | RemoteError::TooLarge { .. }
                    | RemoteError::Request(_)),
                )) => return Err(refusal.into_error(op, self.timeout)),
                Err(failure) if failure.certainly_not_applied() || resend == Resend::Freely => {
                    failure
                }
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
        self.call_within(addr, request, left).await
    }

    /// Sends `request` to `addr`, as the client's user when it has one: logs in first if it
    /// has no token, and once more if the token has expired.
    pub(crate) async fn call_within(
        &self,
        addr: &str,
        request: Request,
        within: Duration,
    ) -> std::result::Result<Response, CallError> {
        let Some(login) = &self.login else {
            return self.peers.call(addr, request, within).await;
        };
        let mut logged_in_now = false;
        loop {
            let token = match login.token() {
                Some(token) => token,
                None => {
                    logged_in_now = true;
                    self.log_in(addr, login, within).await?
                }
            };
            let as_user = Request::AsUser {
                token,
                request: Box::new(request.clone()),
            };
            match self.peers.call(addr, as_user, within).await {
                Err(CallError::Remote(RemoteError::Request(ApplyError::Auth(
                    AuthError::InvalidToken,
                )))) if !logged_in_now => *lock(&login.token) = None,
                answer => return answer,
            }
        }
    }

    async fn log_in(
        &self,
        addr: &str,
        login: &Login,
        within: Duration,
    ) -> std::result::Result<String, CallError> {
        let request = Request::Authenticate {
            name: login.name.clone(),
            password: login.password.clone(),
        };
        match self.peers.call(addr, request, within).await? {
            Response::Token(issued) => {
                *lock(&login.token) = Some(issued.token.clone());
                Ok(issued.token)
            }
            other => Err(CallError::Remote(RemoteError::Refused(format!(
                "unexpected answer to a login: {other:?}"
            )))),
        }
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
            return Err(match failure {
                CallError::Unreachable { .. } => Error::Unreachable {
                    op,
                    after: self.timeout,
                    reason: failure.to_string(),
                },
                _ => Error::Timeout {
                    op,
                    after: self.timeout,
                },
            });
        }
        tokio::time::sleep(pause).await;
        Ok((pause * 2).min(MAX_RETRY_PAUSE))
    }

    fn next_endpoint(&self) -> &str {
        let at = self.next.fetch_add(1, Ordering::Relaxed);
        self.endpoint(at)
    }

    /// The endpoint at round-robin position `at`.
    fn endpoint(&self, at: usize) -> &str {
        &self.endpoints[at % self.endpoints.len()]
    }

    fn leader_or_next(&self) -> String {
        let known = lock(&self.leader).clone();
        known.unwrap_or_else(|| self.next_endpoint().to_string())
    }

    fn remember_leader(&self, addr: Option<String>) {
        *lock(&self.leader) = addr;
    }
}

fn unexpected(answer: impl std::fmt::Debug) -> Error {
    Error::Raft(format!("unexpected answer {answer:?}"))
}
