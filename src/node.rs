//! The node host: owns this node's Raft instance and storage, serves peers, and offers the client
//! operations (propose, linearizable read, stale read, status) that the REPL and HTTP API share.
//!
//! Any node accepts any request. A follower forwards writes to the leader over the node transport
//! and, for a linearizable read, asks the leader for a read index and then reads its own state
//! machine once it has applied that far (openraft's ReadIndex protocol, served from a follower).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use openraft::async_runtime::WatchReceiver;
use openraft::error::ClientWriteError;
use openraft::error::Fatal;
use openraft::error::LinearizableReadError;
use openraft::error::RaftError;
use openraft::ReadPolicy;
use openraft::ServerState;
use openraft::Snapshot;
use openraft::SnapshotPolicy;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::error::Error;
use crate::error::Outcome;
use crate::error::Result;
use crate::locks;
use crate::network;
use crate::network::CallError;
use crate::network::NetworkFactory;
use crate::network::Peers;
use crate::network::RemoteError;
use crate::network::Request;
use crate::network::Response;
use crate::network::RpcHandler;
use crate::network::SnapshotChunk;
use crate::store;
use crate::store::AppendSync;
use crate::store::DataDir;
use crate::store::LogStore;
use crate::store::SnapshotData;
use crate::store::SnapshotReceiver;
use crate::store::StateMachineStore;
use crate::store::StateReader;
use crate::types::Command;
use crate::types::CommandResult;
use crate::types::Member;
use crate::types::NodeId;
use crate::types::Raft;
use crate::types::SnapshotMeta;
use crate::types::TypeConfig;
use election::ElectionTiming;
use read_index::ReadRounds;

mod auth;
mod compaction;
mod election;
mod kv;
mod lease;
mod maintenance;
mod membership;
mod read_index;
mod recipes;
mod startup;
mod watch;

pub use auth::Caller;
pub use auth::Credentials;
pub use auth::Need;
pub use auth::DEFAULT_TOKEN_TTL;
pub use compaction::AutoCompaction;
pub use maintenance::KeySpaceHash;
pub use watch::StoreFigures;
pub use watch::WatchStream;

pub use membership::MemberInfo;
pub use membership::Role;
pub use recipes::LeaderKey;
pub use recipes::RecipeError;

/// Bytes of keys and values a native client's range answer holds at most (past its first key):
/// an answer is one frame.
const MAX_NATIVE_RANGE_BYTES: usize = 16 << 20;

/// Longest pause between attempts to reach a leader; a leader change ends the pause early.
const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// openraft's pause policy for a replication stream whose sends fail (its syntax: the first
/// delay, doubling, capped at the value after `..`).
const REPLICATION_BACKOFF: &str = "50ms ..200ms";

/// Everything needed to start a node.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub id: NodeId,
    /// This node's own addresses, as recorded in the membership.
    pub member: Member,
    /// The members a brand-new cluster starts with; ignored once the node has state on disk.
    pub initial_members: BTreeMap<NodeId, Member>,
    pub data_dir: DataDir,
    /// Deadline for a proposal or a linearizable read.
    pub timeout: Duration,
    pub heartbeat: Duration,
    /// Minimum election timeout; the maximum is twice this.
    pub election_timeout: Duration,
    /// Applied entries between snapshots (log compaction points).
    pub snapshot_entries: u64,
    /// Log entries kept behind a snapshot point, so slightly lagging followers catch up from the
    /// log rather than needing a snapshot.
    pub compaction_overhead: u64,
    /// Start as a new member of an existing cluster (added with `add`): never bootstrap.
    pub join: bool,
    /// The largest request (key and values, see [`Command::request_bytes`]) this node proposes.
    pub max_request_bytes: u64,
    /// The most comparisons, and operations per branch, a transaction may hold.
    pub max_txn_ops: usize,
    /// How long a watch that asked for progress notifications stays idle before it gets one.
    pub watch_progress_interval: std::time::Duration,
    /// What the leader compacts the history to, if anything (`-auto-compaction-*`).
    pub auto_compaction: Option<AutoCompaction>,
    /// The cluster's id, reported in every answer's header.
    pub cluster_id: u64,
    /// `None` except in tests of the test suite itself.
    pub fault: Option<InjectedFault>,
    /// TLS on the raft port, both for accepting and for connecting; plaintext without.
    pub peer_tls: Option<Arc<crate::tls::PeerTls>>,
    /// How long a token from `authenticate` is good for (`-auth-token-ttl`).
    pub auth_token_ttl: Duration,
}

/// A deliberate violation of ondisk's guarantees, switched on only by tests (`--test-fault`) to
/// show that the fault-injection suite's checker detects it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum InjectedFault {
    /// Serve `get` from the local state machine without confirming a read index.
    StaleReads,
    /// Acknowledge a write once the leader has accepted it, before it is committed.
    AckBeforeCommit,
    /// Report log appends durable without fsyncing the write-ahead log: survives SIGKILL, not a
    /// power cut.
    UnsyncedAppends,
}

/// A running node.
pub struct Node {
    id: NodeId,
    member: Member,
    raft: Raft,
    state: StateReader,
    peers: Arc<Peers>,
    timeout: Duration,
    election_timeout: Duration,
    max_request_bytes: u64,
    max_txn_ops: usize,
    watch_progress_interval: Duration,
    cluster_id: u64,
    fault: Option<InjectedFault>,
    data_dir: DataDir,
    incoming_snapshot: tokio::sync::Mutex<Option<IncomingSnapshot>>,
    /// Held while this node, as leader, runs a membership change, so changes never overlap.
    membership_change: tokio::sync::Mutex<()>,
    /// Held while a user's change (add, remove) runs: a second one is refused as busy.
    user_membership_change: tokio::sync::Mutex<()>,
    /// Becomes true once this node learns it has been removed from the cluster.
    removed: Arc<tokio::sync::watch::Sender<bool>>,
    /// Snapshots this node (as leader) has sent and seen installed.
    snapshots_sent: Arc<AtomicU64>,
    /// `https` when members speak TLS on their raft ports, `http` otherwise: the scheme of the
    /// peer URLs etcd's API lists (every member of a cluster is set up alike).
    peer_scheme: &'static str,
    authenticator: auth::Authenticator,
    /// This node's leadership confirmations, shared by the reads that arrive together.
    confirmations: ReadRounds,
    /// Read-index requests to the leader, shared likewise.
    read_index_requests: ReadRounds,
    rpc_server: std::sync::Mutex<Option<JoinHandle<()>>>,
}

/// A snapshot being received from the leader, chunk by chunk, and prepared for installing as it
/// arrives.
struct IncomingSnapshot {
    meta: SnapshotMeta,
    /// Bytes of the stream received so far: the offset the next chunk must start at.
    received: u64,
    receiver: SnapshotReceiver,
    started: std::time::Instant,
}

/// A point-in-time summary of the node, for the REPL's `status` and the HTTP status endpoint.
#[derive(Debug, Clone)]
pub struct Status {
    pub id: NodeId,
    pub state: String,
    pub leader: Option<NodeId>,
    pub term: u64,
    pub last_log_index: Option<u64>,
    pub committed: Option<u64>,
    pub last_applied: Option<u64>,
    pub applied_this_run: u64,
    pub last_snapshot_index: Option<u64>,
    pub purged: Option<u64>,
    pub first_log_index: u64,
    pub snapshots_built: u64,
    pub snapshots_sent: u64,
    pub snapshots_installed: u64,
    pub members: Vec<MemberInfo>,
}

/// Binds a listening socket, naming the address and its purpose in the error a user sees.
pub async fn listen(what: &'static str, addr: &str) -> Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|source| {
        if source.kind() == std::io::ErrorKind::AddrInUse {
            Error::AddrInUse {
                what,
                addr: addr.to_string(),
            }
        } else {
            Error::Bind {
                what,
                addr: addr.to_string(),
                source,
            }
        }
    })
}

impl Node {
    /// Opens the node's storage, listens on its raft address, starts Raft and the peer server, and
    /// founds the cluster with the initial membership if this node has never been part of one
    /// (see `node/startup.rs`).
    ///
    /// Storage is opened first, so a second process on the same data directory is told so rather
    /// than that the port is taken.
    pub async fn start(config: NodeConfig) -> Result<Arc<Node>> {
        let data_dir = &config.data_dir;
        let append_sync = match config.fault {
            Some(InjectedFault::UnsyncedAppends) => AppendSync::Skip,
            _ => AppendSync::Fsync,
        };
        let log_store = LogStore::open_with(&data_dir.log_db(), append_sync)?;
        let state_machine = StateMachineStore::open(&data_dir.state_db(), data_dir.snapshots())?;
        log_store.drop_tail_conflicting_with(state_machine.applied())?;
        data_dir.sync()?;
        let raft_listener = listen("raft", &config.member.raft_addr).await?;
        let state = state_machine.reader();
        let raft_config = raft_config(&config)?;
        let peer_tls = config.peer_tls.clone();
        let peers = Arc::new(Peers::new(peer_tls.as_ref().map(|tls| tls.client.clone())));
        let removed = Arc::new(tokio::sync::watch::Sender::new(false));
        let snapshots_sent = Arc::new(AtomicU64::new(0));
        let network = NetworkFactory {
            this_node: config.id,
            peers: peers.clone(),
            removed: removed.clone(),
            snapshots_sent: snapshots_sent.clone(),
            append_timeout: config.election_timeout,
        };
        let raft = Raft::new(
            config.id,
            Arc::new(raft_config),
            network,
            log_store,
            state_machine,
        )
        .await
        .map_err(|e| Error::Raft(format!("cannot start raft: {e}")))?;

        let node = Arc::new(Node {
            id: config.id,
            member: config.member.clone(),
            raft,
            state,
            peers,
            timeout: config.timeout,
            election_timeout: config.election_timeout,
            max_request_bytes: config.max_request_bytes,
            max_txn_ops: config.max_txn_ops,
            watch_progress_interval: config.watch_progress_interval,
            cluster_id: config.cluster_id,
            fault: config.fault,
            data_dir: data_dir.clone(),
            incoming_snapshot: tokio::sync::Mutex::default(),
            membership_change: tokio::sync::Mutex::default(),
            user_membership_change: tokio::sync::Mutex::default(),
            removed,
            snapshots_sent,
            peer_scheme: if peer_tls.is_some() { "https" } else { "http" },
            authenticator: auth::Authenticator::new(config.auth_token_ttl),
            confirmations: ReadRounds::default(),
            read_index_requests: ReadRounds::default(),
            rpc_server: std::sync::Mutex::default(),
        });
        let server = tokio::spawn(network::serve(raft_listener, node.clone(), peer_tls));
        *locks::lock(&node.rpc_server) = Some(server);
        let restarted = node
            .raft
            .is_initialized()
            .await
            .map_err(|e| Error::Raft(e.to_string()))?;
        if restarted {
            node.announce_start(node.members().into_iter().map(|member| member.raft_addr));
            node.campaign_soon_after_restart(config.heartbeat, config.election_timeout);
        } else if config.join {
            tracing::info!("joining an existing cluster: waiting to be added by its leader");
            let listed = config.initial_members.values();
            node.announce_start(listed.map(|member| member.raft_addr.clone()));
        } else {
            node.found_cluster(config.initial_members, config.heartbeat * 2)
                .await?;
        }
        node.keep_own_address_current();
        node.promote_caught_up_learners();
        node.watch_for_removal();
        node.expire_leases();
        if let Some(auto_compaction) = config.auto_compaction {
            node.compact_automatically(auto_compaction);
        }
        Ok(node)
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// This node's addresses.
    pub fn member(&self) -> &Member {
        &self.member
    }

    /// The directory of the state machine database in service (it changes when a snapshot is
    /// installed).
    pub fn state_dir(&self) -> PathBuf {
        self.state.dir()
    }

    /// This node's data directory.
    pub fn data_dir(&self) -> &DataDir {
        &self.data_dir
    }

    /// The deadline applied to proposals and linearizable reads.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The scheme of members' peer URLs: `https` when the raft ports speak TLS.
    pub fn peer_scheme(&self) -> &'static str {
        self.peer_scheme
    }

    /// The largest request this node accepts (`-max-request-bytes`); front ends refuse a larger
    /// body before reading all of it.
    pub fn max_request_bytes(&self) -> u64 {
        self.max_request_bytes
    }

    /// The openraft handle, for metrics and membership.
    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    /// Proposes `command` through the leader, wherever it is, and returns what applying it
    /// produced. Fails with [`Error::Timeout`] when it cannot complete within the node's timeout.
    pub async fn propose(&self, op: &'static str, command: Command) -> Result<CommandResult> {
        self.check_size(&command)
            .map_err(|e| e.into_error(op, self.timeout))?;
        let command = self.prepare(command)?;
        let result = self.submit_to_leader(op, Request::Propose(command)).await;
        let outcome = if result.is_ok() { "ok" } else { "error" };
        metrics::counter!("ondisk_proposals_total", "result" => outcome).increment(1);
        result
    }

    /// [`Node::propose`] for `caller`, refused here unless the caller may make the write (see
    /// [`Node::command_for`] for the check made again when it is applied).
    pub async fn propose_as(
        &self,
        caller: &Caller,
        op: &'static str,
        command: Command,
    ) -> Result<CommandResult> {
        let command = self.command_for(caller, command)?;
        self.propose(op, command).await
    }

    /// Runs a leader-only `request` (a proposal or a membership change) on the leader: here if
    /// this node leads, otherwise forwarded. Retries only while the request certainly had no
    /// effect (no leader yet, a stale leader, an unreachable one), within the node's timeout.
    async fn submit_to_leader(&self, op: &'static str, request: Request) -> Result<CommandResult> {
        // Set while a write may have reached the leader: a deadline then leaves its outcome
        // unknown, where before any attempt (or after a refusal) nothing was changed. Membership
        // changes classify their own outcome (they may wait behind another change first).
        let proposed = AtomicBool::new(false);
        let is_write = matches!(request, Request::Propose(_));
        self.with_deadline(op, self.timeout, async {
            loop {
                let (leader, member) = self.wait_for_leader().await?;
                proposed.store(is_write, Ordering::Relaxed);
                let attempt = if leader == self.id {
                    self.submit_locally(request.clone()).await
                } else {
                    self.forward(&member.raft_addr, request.clone()).await
                };
                match attempt {
                    Ok(result) => return Ok(result),
                    Err(RemoteError::NotLeader { .. }) => {
                        proposed.store(false, Ordering::Relaxed);
                        self.pause_unless_leader_changes(Some(leader)).await
                    }
                    Err(other) => return Err(other.into_error(op, self.timeout)),
                }
            }
        })
        .await
        .map_err(|e| {
            if proposed.load(Ordering::Relaxed) {
                e.after_proposal()
            } else {
                e
            }
        })
    }

    /// Asks the leader something only it can answer (a keep-alive, a lease's time left): here if
    /// this node leads, otherwise forwarded. Asking twice does no harm, so any failure to reach a
    /// leader is retried within the node's timeout.
    async fn ask_leader(&self, op: &'static str, request: Request) -> Result<Response> {
        self.with_deadline(op, self.timeout, async {
            loop {
                let (leader, member) = self.wait_for_leader().await?;
                let attempt = if leader == self.id {
                    self.answer_as_leader(request.clone()).await
                } else {
                    match self
                        .peers
                        .call(&member.raft_addr, request.clone(), self.timeout)
                        .await
                    {
                        Ok(response) => Ok(response),
                        Err(CallError::Remote(remote)) => Err(remote),
                        Err(other) => {
                            Err(RemoteError::NotLeader { leader: None }.with_cause(other))
                        }
                    }
                };
                match attempt {
                    Ok(response) => return Ok(response),
                    Err(RemoteError::NotLeader { .. } | RemoteError::TimedOut) => {
                        self.pause_unless_leader_changes(Some(leader)).await
                    }
                    Err(other) => return Err(other.into_error(op, self.timeout)),
                }
            }
        })
        .await
    }

    /// Answers a question only the leader can, on this node, which believes it leads.
    async fn answer_as_leader(
        &self,
        request: Request,
    ) -> std::result::Result<Response, RemoteError> {
        match request {
            Request::LeaseKeepAlive { id } => self.keep_alive_as_leader(id).await,
            Request::LeaseTimeToLive { id, keys } => self.time_to_live_as_leader(id, keys).await,
            other => Err(RemoteError::Refused(format!(
                "{other:?} is not a question for the leader"
            ))),
        }
    }

    /// Refuses a command over `-max-request-bytes` before it reaches Raft. Checked where a
    /// command enters (a front end, a native client, a forwarding follower), so a leader never
    /// appends an entry too large to replicate whatever its followers are configured with.
    fn check_size(&self, command: &Command) -> std::result::Result<(), RemoteError> {
        let size = command.request_bytes();
        if size > self.max_request_bytes {
            return Err(RemoteError::TooLarge {
                size,
                limit: self.max_request_bytes,
            });
        }
        Ok(())
    }

    /// Sends a leader-only request to the node at `leader_addr`.
    async fn forward(
        &self,
        leader_addr: &str,
        request: Request,
    ) -> std::result::Result<CommandResult, RemoteError> {
        match self.peers.call(leader_addr, request, self.timeout).await {
            Ok(Response::Proposed(result)) => Ok(result),
            Ok(other) => Err(RemoteError::Refused(format!("unexpected answer {other:?}"))),
            Err(CallError::Remote(remote)) => Err(remote),
            Err(other) if other.certainly_not_applied() => {
                Err(RemoteError::NotLeader { leader: None }.with_cause(other))
            }
            Err(other) => Err(RemoteError::Unknown(other.to_string())),
        }
    }

    /// Runs a leader-only request on this node, which believes it is the leader.
    async fn submit_locally(
        &self,
        request: Request,
    ) -> std::result::Result<CommandResult, RemoteError> {
        let written = match request {
            Request::Propose(command) if self.fault == Some(InjectedFault::AckBeforeCommit) => {
                return match self.raft.client_write_ff(command, None).await {
                    Ok(()) => Ok(CommandResult::Applied),
                    Err(fatal) => Err(RemoteError::Unknown(format!("raft stopped: {fatal}"))),
                };
            }
            Request::Propose(command) => self.raft.client_write(command).await,
            Request::Membership(change) => return self.change_membership_locally(change).await,
            other => {
                return Err(RemoteError::Refused(format!(
                    "{other:?} is not a leader request"
                )))
            }
        };
        written.map(|written| written.data).map_err(write_error)
    }

    /// A read of this node's state machine as it is now, without asking the leader: fast, and
    /// possibly behind the cluster.
    pub async fn get_stale(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let key = key.to_vec();
        self.read_state(move |state| state.get(&key)).await
    }

    /// Runs a state machine read off the async workers: with a state larger than memory a read
    /// may wait for the disk, and the workers also carry Raft's heartbeats.
    pub(crate) async fn read_state<T: Send + 'static>(
        &self,
        read: impl FnOnce(&StateReader) -> std::io::Result<T> + Send + 'static,
    ) -> Result<T> {
        let state = self.state.clone();
        tokio::task::spawn_blocking(move || read(&state))
            .await
            .map_err(|e| Error::Io(std::io::Error::other(e.to_string())))?
            .map_err(Error::from)
    }

    /// Waits until this node's state machine reflects every write committed before the call, so a
    /// read that follows is linearizable.
    pub async fn read_barrier(&self, op: &'static str) -> Result<()> {
        self.read_barrier_within(op, self.timeout).await
    }

    /// [`Node::read_barrier`] with its own deadline (health checks want a short one).
    pub async fn read_barrier_within(&self, op: &'static str, within: Duration) -> Result<()> {
        self.with_deadline(op, within, async {
            let index = loop {
                let (leader, member) = self.wait_for_leader().await?;
                let attempt = if leader == self.id {
                    self.read_index_locally().await
                } else {
                    self.read_index_from(leader, &member).await
                };
                match attempt {
                    Ok(index) => break index,
                    Err(_) => self.pause_unless_leader_changes(Some(leader)).await,
                }
            };
            self.raft
                .wait(None)
                .applied_index_at_least(Some(index), "linearizable read")
                .await
                .map_err(|_| Error::ShuttingDown)?;
            Ok(())
        })
        .await
    }

    /// Asks `leader` for a read index, in the next round of such requests (see
    /// [`ReadRounds`]): the reads arriving together share one request.
    async fn read_index_from(
        &self,
        leader: NodeId,
        member: &Member,
    ) -> std::result::Result<u64, RemoteError> {
        // Only the read that opens a round makes its question, so only it clones what that needs.
        let ask = || {
            let (peers, raft) = (self.peers.clone(), self.raft.clone());
            let (addr, timeout) = (member.raft_addr.clone(), self.timeout);
            async move { request_read_index(&peers, &raft, leader, &addr, timeout).await }.boxed()
        };
        self.read_index_requests.next(leader, ask).await
    }

    /// Confirms leadership with a quorum (ReadIndex) and returns the index reads must wait for,
    /// in the next round of confirmations (see [`ReadRounds`]).
    async fn read_index_locally(&self) -> std::result::Result<u64, RemoteError> {
        let confirm = || {
            let raft = self.raft.clone();
            async move { confirm_leadership(&raft).await }.boxed()
        };
        self.confirmations.next(self.id, confirm).await
    }

    /// Confirms this node's leadership with a quorum (a read index) and waits until it has applied
    /// everything committed before. What a leader answers from applied state (the membership
    /// rules' removed ids and kept learners, the lease table) must include every entry an earlier
    /// leader committed, and a newly elected leader may still be applying them.
    async fn applied_up_to_read_index(
        &self,
        what: &'static str,
    ) -> std::result::Result<(), RemoteError> {
        let index = self.read_index_locally().await?;
        self.raft
            .wait(None)
            .applied_index_at_least(Some(index), what)
            .await
            .map(drop)
            .map_err(|e| RemoteError::Refused(format!("raft stopped: {e}")))
    }

    /// The current leader and its addresses, waiting for one to be known.
    async fn wait_for_leader(&self) -> Result<(NodeId, Member)> {
        let mut metrics = self.raft.metrics();
        loop {
            {
                let m = metrics.borrow_watched();
                if let Some(leader) = m.current_leader {
                    if let Some(member) = m.membership_config.membership().get_node(&leader) {
                        return Ok((leader, member.clone()));
                    }
                }
            }
            metrics.changed().await.map_err(|_| Error::ShuttingDown)?;
        }
    }

    /// Waits for the leader to change from `previous`, or [`RETRY_PAUSE`], whichever is first:
    /// retrying at once against a dead leader would only spin.
    async fn pause_unless_leader_changes(&self, previous: Option<NodeId>) {
        let _ = self
            .raft
            .wait(Some(RETRY_PAUSE))
            .metrics(|m| m.current_leader != previous, "leader change")
            .await;
    }

    async fn with_deadline<T>(
        &self,
        op: &'static str,
        within: Duration,
        work: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T> {
        tokio::time::timeout(within, work).await.map_err(|_| {
            if store::waiting_for_space() {
                Error::DiskFull {
                    op,
                    after: within,
                    outcome: Outcome::NotApplied,
                }
            } else {
                Error::Timeout { op, after: within }
            }
        })?
    }

    /// Takes a snapshot now (a checkpoint of the state machine, which also lets the log be
    /// compacted) and returns the log index it covers.
    pub async fn snapshot(&self, caller: &Caller) -> Result<u64> {
        self.authorize(caller, Need::Admin)?;
        let target = self
            .raft
            .metrics()
            .borrow_watched()
            .last_applied
            .map(|id| id.index);
        self.raft
            .trigger()
            .snapshot()
            .await
            .map_err(|_| Error::ShuttingDown)?;
        let metrics = self
            .raft
            .wait(Some(self.timeout))
            .metrics(|m| m.snapshot.map(|id| id.index) >= target, "snapshot")
            .await
            .map_err(|_| Error::Timeout {
                op: "snapshot",
                after: self.timeout,
            })?;
        Ok(metrics.snapshot.map_or(0, |id| id.index))
    }

    /// A consistent snapshot of the state machine covering at least everything this node had
    /// applied when called (a fresh checkpoint), to be streamed as a backup.
    pub async fn backup(&self, caller: &Caller) -> Result<crate::types::Snapshot> {
        self.snapshot(caller).await?;
        self.raft
            .get_snapshot()
            .await
            .map_err(|e| Error::Raft(format!("cannot read the snapshot: {e}")))?
            .ok_or_else(|| Error::Raft("the node has no snapshot to back up".into()))
    }

    /// A summary of this node's Raft and storage state.
    pub fn status(&self) -> Status {
        let members = self.members();
        let metrics = self.raft.metrics();
        let m = metrics.borrow_watched();
        Status {
            id: self.id,
            state: state_name(m.state).to_string(),
            leader: m.current_leader,
            term: m.current_term,
            last_log_index: m.last_log_index,
            committed: m.local_committed.map(|id| id.index),
            last_applied: m.last_applied.map(|id| id.index),
            applied_this_run: self.state.applied_this_run(),
            last_snapshot_index: m.snapshot.map(|id| id.index),
            purged: m.purged.map(|id| id.index),
            first_log_index: m.purged.map_or(0, |id| id.index + 1),
            snapshots_built: self.state.snapshots_built(),
            snapshots_sent: self.snapshots_sent.load(Ordering::Relaxed),
            snapshots_installed: self.state.snapshots_installed(),
            members,
        }
    }

    /// Stops Raft and the peer server. Storage is closed when the last handle is dropped; every
    /// acknowledged write is already durable, so nothing needs flushing here.
    pub async fn shutdown(&self) {
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!("raft did not shut down cleanly: {e}");
        }
        if let Some(server) = locks::lock(&self.rpc_server).take() {
            server.abort();
        }
    }

    /// Resolves, with the reason, once openraft's core has stopped by itself: it stops for good on
    /// any storage error, after which the node could only answer that it is shutting down. The
    /// process then exits so that a supervisor restarts it.
    pub async fn raft_stopped(&self) -> Fatal<TypeConfig> {
        let mut metrics = self.raft.metrics();
        loop {
            if let Err(fatal) = &metrics.borrow_watched().running_state {
                return fatal.clone();
            }
            if metrics.changed().await.is_err() {
                // The core's task ended without recording why.
                return Fatal::Stopped;
            }
        }
    }

    /// Takes one chunk of a snapshot being streamed to us into its preparation; on the last one,
    /// waits for the prepared (verified) snapshot and hands it to openraft to install. A chunk out
    /// of sequence, or a stream that fails to prepare, ends the transfer: the leader starts it
    /// again from the beginning.
    async fn receive_snapshot_chunk(
        &self,
        chunk: SnapshotChunk,
    ) -> std::result::Result<Response, RemoteError> {
        let refused =
            |what: &str, e: &dyn std::fmt::Display| RemoteError::Refused(format!("{what}: {e}"));
        let mut incoming = self.incoming_snapshot.lock().await;
        if chunk.offset == 0 {
            tracing::info!("receiving a snapshot at index {}", log_index(&chunk.meta));
            *incoming = Some(IncomingSnapshot {
                meta: chunk.meta.clone(),
                received: 0,
                receiver: SnapshotReceiver::start(self.data_dir.snapshots()),
                started: std::time::Instant::now(),
            });
        }
        let in_sequence = incoming
            .as_ref()
            .is_some_and(|current| current.meta == chunk.meta && current.received == chunk.offset);
        let Some(current) = incoming.as_mut().filter(|_| in_sequence) else {
            *incoming = None;
            return Err(RemoteError::Refused(
                "snapshot chunk out of sequence; restart the transfer".into(),
            ));
        };
        current.received += chunk.data.len() as u64;
        if let Err(e) = current.receiver.push(chunk.data).await {
            *incoming = None;
            return Err(refused("received snapshot is unusable", &e));
        }
        if !chunk.done {
            return Ok(Response::SnapshotChunkStored);
        }
        let Some(complete) = incoming.take() else {
            return Err(RemoteError::Refused("snapshot transfer vanished".into()));
        };
        drop(incoming);
        let prepared = complete
            .receiver
            .finish()
            .await
            .map_err(|e| refused("received snapshot is unusable", &e))?;
        if prepared.meta != complete.meta {
            return Err(RemoteError::Refused(
                "snapshot header does not match the transfer".into(),
            ));
        }
        tracing::info!(
            "received and verified the snapshot at index {}: {} MiB in {:.2?}",
            log_index(&complete.meta),
            complete.received >> 20,
            complete.started.elapsed()
        );
        let snapshot = Snapshot {
            meta: complete.meta,
            snapshot: SnapshotData::Prepared(Box::new(prepared)),
        };
        self.raft
            .install_full_snapshot(chunk.vote, snapshot)
            .await
            .map(Response::SnapshotInstalled)
            .map_err(|e| refused("installing the snapshot failed", &e))
    }
}

/// The log index a snapshot covers up to, for log lines.
fn log_index(meta: &SnapshotMeta) -> u64 {
    meta.last_log_id.map_or(0, |id| id.index)
}

/// openraft's settings for a node configured by `config`.
fn raft_config(config: &NodeConfig) -> Result<openraft::Config> {
    let election = ElectionTiming::new(config.heartbeat, config.election_timeout)?;
    openraft::Config {
        cluster_name: "ondisk".into(),
        heartbeat_interval: millis(config.heartbeat),
        election_timeout_min: election.min_ms,
        election_timeout_max: election.max_ms,
        // A node that was cut off or paused asks whether it could win before it raises its
        // term, so coming back never deposes a leader the others still follow.
        enable_pre_vote: Some(true),
        install_snapshot_timeout: millis(config.election_timeout).max(1000),
        // Entries per append batch; the log store's replication reads bound a batch by bytes
        // too. openraft keeps one batch in flight per follower, so under load a larger batch
        // means fewer appends, fsyncs and wake-ups per entry on every member (64 → 256: about
        // a tenth less server CPU per put at 256 clients, see BENCHMARKS.md).
        max_payload_entries: 256,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(config.snapshot_entries),
        max_in_snapshot_log_to_keep: config.compaction_overhead,
        // A follower further behind than one snapshot interval catches up from a snapshot.
        replication_lag_threshold: config.snapshot_entries.max(1),
        // A restarted leader must win an election again before it serves anything: its commit
        // point and state machine are not fsynced, so after a power cut they can be behind
        // what it acknowledged, and a leadership restored in place would serve reads from
        // there (openraft documents this with `enable_leader_restore`).
        enable_leader_restore: Some(false),
        // 50, 100, then 200 ms between attempts: openraft's default (200 ms doubling to 1 s)
        // made a restarted follower wait up to a second before the leader sent it anything,
        // and an attempt to reach a stopped peer is refused at once, costing next to nothing.
        backoff: REPLICATION_BACKOFF.to_string(),
        ..Default::default()
    }
    .validate()
    .map_err(|e| Error::Config(format!("invalid raft timing: {e}")))
}

/// Maps openraft's refusal of a write (a proposal or a membership change) to what the requester
/// should do: go to the leader, give up with the reason, or report an unknown outcome.
fn write_error(e: RaftError<TypeConfig, ClientWriteError<TypeConfig>>) -> RemoteError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(forward)) => RemoteError::NotLeader {
            leader: forward.leader_id.zip(forward.leader_node),
        },
        RaftError::APIError(ClientWriteError::LogEntryDiscarded(_)) => {
            RemoteError::Unknown("the leader changed before the entry committed".into())
        }
        RaftError::Fatal(fatal) => RemoteError::Unknown(format!("raft stopped: {fatal}")),
        other => RemoteError::Refused(other.to_string()),
    }
}

impl RemoteError {
    /// Keeps the retry semantics of `self` while logging why the call failed.
    fn with_cause(self, cause: CallError) -> Self {
        tracing::debug!("request to the leader failed, will retry: {cause}");
        self
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

fn state_name(state: ServerState) -> &'static str {
    match state {
        ServerState::Leader => "Leader",
        ServerState::Follower => "Follower",
        ServerState::Candidate => "Candidate",
        ServerState::Learner => "Learner",
        ServerState::Shutdown => "Shutdown",
    }
}

/// How a failed read is reported to a native-protocol client. A read changes nothing, so every
/// failure is safe to retry; only the reason's wording matters.
fn read_error(error: Error) -> RemoteError {
    match error {
        Error::Timeout { .. } => RemoteError::TimedOut,
        Error::Removed => RemoteError::Removed,
        Error::Request(refusal) => RemoteError::Request(refusal),
        other => RemoteError::Refused(other.to_string()),
    }
}

/// Who asks on the raft port: a member, or a native client holding a certificate from the
/// members' CA on a TLS cluster. The port authenticates by that certificate (mutual TLS) and
/// its holders are trusted as members are (they could append entries), so their requests are
/// not checked against users and roles; without peer TLS the port is open to whoever reaches
/// it, as etcd's peer port is.
const RAFT_PORT: Caller = Caller::Operator;

/// Asks `leader` at `addr` for a read index. Asking changes nothing, so any failure may be
/// retried, and the question is dropped as soon as this node hears of another leader: a leader
/// that stopped answering (paused, cut off) would otherwise hold the reads until their deadline,
/// long after the others elected a new one.
async fn request_read_index(
    peers: &Peers,
    raft: &Raft,
    leader: NodeId,
    addr: &str,
    timeout: Duration,
) -> std::result::Result<u64, RemoteError> {
    let asked = peers.call(addr, Request::ReadIndex, timeout);
    let waiter = raft.wait(None);
    let replaced = waiter.metrics(
        |m| m.current_leader.is_some_and(|now| now != leader),
        "another leader",
    );
    tokio::select! {
        answer = asked => match answer {
            Ok(Response::ReadIndex(index)) => Ok(index),
            Ok(other) => Err(RemoteError::Refused(format!("unexpected answer {other:?}"))),
            Err(CallError::Remote(remote)) => Err(remote),
            Err(other) => Err(RemoteError::NotLeader { leader: None }.with_cause(other)),
        },
        _ = replaced => Err(RemoteError::NotLeader { leader: None }),
    }
}

/// Confirms this node's leadership with a quorum (openraft's ReadIndex) and returns the index
/// reads must wait for.
async fn confirm_leadership(raft: &Raft) -> std::result::Result<u64, RemoteError> {
    match raft.get_read_linearizer(ReadPolicy::ReadIndex).await {
        Ok(linearizer) => Ok(linearizer.read_log_id().index()),
        Err(RaftError::APIError(LinearizableReadError::ForwardToLeader(forward))) => {
            Err(RemoteError::NotLeader {
                leader: forward.leader_id.zip(forward.leader_node),
            })
        }
        Err(other) => Err(RemoteError::Refused(other.to_string())),
    }
}

impl RpcHandler for Node {
    async fn handle(&self, request: Request) -> std::result::Result<Response, RemoteError> {
        let raft_failed = |e: RaftError<TypeConfig>| RemoteError::Refused(e.to_string());
        match request {
            Request::AppendEntries(rpc) => self
                .raft
                .append_entries(rpc)
                .await
                .map(Response::AppendEntries)
                .map_err(raft_failed),
            Request::Vote(rpc) => {
                self.refuse_removed(rpc.vote.leader_id.node_id)?;
                self.raft
                    .vote(rpc)
                    .await
                    .map(Response::Vote)
                    .map_err(raft_failed)
            }
            Request::PreVote(rpc) => {
                self.refuse_removed(rpc.vote.leader_id.node_id)?;
                self.raft
                    .pre_vote(rpc)
                    .await
                    .map(Response::Vote)
                    .map_err(raft_failed)
            }
            Request::Removed(notice) => self.receive_removal_notice(notice).await,
            Request::Started { id, cluster_id } => self.peer_started(id, cluster_id).await,
            Request::WasRemoved { id } => {
                Ok(Response::WasRemoved(self.state.removed_ids().contains(&id)))
            }
            Request::TransferLeader(rpc) => self
                .raft
                .handle_transfer_leader(rpc)
                .await
                .map(Response::TransferLeader)
                .map_err(|e| RemoteError::Refused(e.to_string())),
            Request::SnapshotChunk(chunk) => self.receive_snapshot_chunk(chunk).await,
            request @ Request::Membership(_) => {
                self.submit_locally(request).await.map(Response::Proposed)
            }
            Request::ReadIndex => self.read_index_locally().await.map(Response::ReadIndex),
            Request::Authenticate { name, password } => self
                .authenticate(&name, &password.0)
                .await
                .map(Response::Token)
                .map_err(read_error),
            Request::AsUser { token, request } => {
                let caller = self
                    .caller(Credentials::Token(token))
                    .await
                    .map_err(read_error)?;
                self.handle_client(&caller, *request).await
            }
            client_request => self.handle_client(&RAFT_PORT, client_request).await,
        }
    }
}

impl Node {
    /// Serves a native client's request (or a member's forwarded write) for `caller`.
    async fn handle_client(
        &self,
        caller: &Caller,
        request: Request,
    ) -> std::result::Result<Response, RemoteError> {
        match request {
            Request::Propose(command) => {
                self.check_size(&command)?;
                let command = self.command_for(caller, command).map_err(read_error)?;
                let command = self.prepare(command).map_err(RemoteError::Request)?;
                self.submit_locally(Request::Propose(command))
                    .await
                    .map(Response::Proposed)
            }
            Request::Get { key, linearizable } => {
                let value = if linearizable {
                    self.get(caller, &key).await
                } else {
                    self.authorize(caller, Need::Read(crate::api::KeySpan::One(&key)))
                        .map_err(read_error)?;
                    self.get_stale(&key).await
                };
                value.map(Response::Value).map_err(read_error)
            }
            Request::Range(range) => self
                .range(caller, range, MAX_NATIVE_RANGE_BYTES)
                .await
                .map(Response::Range)
                .map_err(read_error),
            request @ (Request::LeaseKeepAlive { .. } | Request::LeaseTimeToLive { .. }) => {
                self.authorize(caller, Need::Authenticated)
                    .map_err(read_error)?;
                self.answer_as_leader(request).await
            }
            Request::Leases => self
                .leases(caller)
                .await
                .map(Response::Leases)
                .map_err(read_error),
            Request::WatchPoll { request, wait_ms } => self
                .watch_poll(caller, request, Duration::from_millis(wait_ms))
                .await
                .map(Response::Watch)
                .map_err(read_error),
            _ => Err(RemoteError::Refused(
                "only a client's request (a write, a read, a lease or a watch poll) can be made as a user"
                    .into(),
            )),
        }
    }
}
