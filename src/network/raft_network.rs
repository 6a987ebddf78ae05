//! openraft's network traits over [`Peers`]: each Raft RPC is one request/answer on the shared
//! connection to the target, and a snapshot is streamed as a sequence of bounded chunks.

use std::future::Future;
use std::io;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use openraft::base::BoxFuture;
use openraft::base::BoxStream;
use openraft::error::NetworkError;
use openraft::error::RPCError;
use openraft::error::ReplicationClosed;
use openraft::error::StreamingError;
use openraft::error::Timeout;
use openraft::error::Unreachable;
use openraft::network::RPCOption;
use openraft::raft::AppendEntriesRequest;
use openraft::raft::AppendEntriesResponse;
use openraft::raft::SnapshotResponse;
use openraft::raft::TransferLeaderRequest;
use openraft::raft::TransferLeaderResponse;
use openraft::raft::VoteRequest;
use openraft::raft::VoteResponse;
use openraft::OptionalSend;
use openraft::RPCTypes;
use openraft::RaftNetworkFactory;
use openraft::RaftNetworkV2;
use openraft::Snapshot;

use super::append_pipeline;
use super::client::CallError;
use super::client::Peer;
use super::client::Reachability;
use super::Peers;
use super::RemoteError;
use super::Request;
use super::Response;
use super::SnapshotChunk;
use crate::store::snapshot_chunks;
use crate::store::SnapshotData;
use crate::types::Member;
use crate::types::NodeId;
use crate::types::TypeConfig;
use crate::types::Vote;

/// Bytes of snapshot stream per chunk: large enough to stream at disk speed, small enough that
/// neither side ever holds much of the snapshot in memory.
const SNAPSHOT_CHUNK_LEN: usize = 1 << 20;
/// How long the receiver may take to install a complete snapshot (it rewrites the whole state).
const SNAPSHOT_INSTALL_TIMEOUT: Duration = Duration::from_secs(600);
/// How long a snapshot waits for a target that cannot be reached before the attempt fails.
/// openraft then pauses (at most `REPLICATION_BACKOFF`'s cap) and tries again with its newest
/// snapshot; the wait here, unlike that pause, ends as soon as the target says it has started.
const SNAPSHOT_REACH_WAIT: Duration = Duration::from_secs(10);

/// Hands openraft a client per target, all sharing this node's peer connections.
#[derive(Clone)]
pub struct NetworkFactory {
    pub this_node: NodeId,
    pub peers: Arc<Peers>,
    /// Set when a peer answers that this node has been removed from the cluster (it refuses the
    /// votes of removed nodes), which is how a node removed while it was down finds out.
    pub removed: Arc<tokio::sync::watch::Sender<bool>>,
    /// Snapshots sent to followers and installed by them.
    pub snapshots_sent: Arc<AtomicU64>,
    /// How long an AppendEntries may take before it counts as failed, at least (see
    /// [`PeerNetwork::append_entries`]).
    pub append_timeout: Duration,
}

/// openraft's view of one target node.
pub struct PeerNetwork {
    this_node: NodeId,
    target: NodeId,
    peer: Arc<Peer>,
    removed: Arc<tokio::sync::watch::Sender<bool>>,
    snapshots_sent: Arc<AtomicU64>,
    append_timeout: Duration,
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerNetwork;

    async fn new_client(&mut self, target: NodeId, node: &Member) -> PeerNetwork {
        PeerNetwork {
            this_node: self.this_node,
            target,
            peer: self.peers.get(&node.raft_addr),
            removed: self.removed.clone(),
            snapshots_sent: self.snapshots_sent.clone(),
            append_timeout: self.append_timeout,
        }
    }
}

impl PeerNetwork {
    /// Sends one AppendEntries. openraft allows it one heartbeat interval. A follower that needs
    /// longer to make the entries durable (a busy or slow disk) would then never acknowledge
    /// any: the leader gives up, backs off and sends them again, and commits nothing while it
    /// needs that follower for a quorum, as a new leader of three nodes always does after a
    /// crash. So the answer is awaited for at least `append_timeout` (an election timeout): a
    /// follower that is slow still counts. Heartbeats keep openraft's own, shorter limit.
    pub(super) async fn send_append(
        &self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        match self
            .call(
                RPCTypes::AppendEntries,
                Request::AppendEntries(rpc),
                option.hard_ttl().max(self.append_timeout),
            )
            .await?
        {
            Response::AppendEntries(answer) => Ok(answer),
            other => Err(unexpected(other)),
        }
    }

    async fn call(
        &self,
        action: RPCTypes,
        request: Request,
        timeout: Duration,
    ) -> Result<Response, RPCError<TypeConfig>> {
        self.peer.call(request, timeout).await.map_err(|e| {
            if matches!(e, CallError::Remote(RemoteError::Removed)) {
                self.removed.send_replace(true);
            }
            self.rpc_error(action, timeout, e)
        })
    }

    fn rpc_error(
        &self,
        action: RPCTypes,
        timeout: Duration,
        err: CallError,
    ) -> RPCError<TypeConfig> {
        match err {
            CallError::Timeout { .. } => RPCError::Timeout(Timeout {
                action,
                id: self.this_node,
                target: self.target,
                timeout,
            }),
            CallError::ConnectionLost { .. } => {
                RPCError::Network(NetworkError::new(&io_error(err)))
            }
            CallError::Unreachable { .. } | CallError::Remote(_) => {
                RPCError::Unreachable(Unreachable::new(&io_error(err)))
            }
        }
    }
}

fn io_error(err: CallError) -> io::Error {
    io::Error::other(err.to_string())
}

fn unexpected(response: Response) -> RPCError<TypeConfig> {
    RPCError::Network(NetworkError::new(&io::Error::other(format!(
        "unexpected answer {response:?}"
    ))))
}

impl RaftNetworkV2<TypeConfig> for PeerNetwork {
    type SnapshotData = SnapshotData;

    /// One AppendEntries on its own (see [`PeerNetwork::send_append`]).
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.send_append(rpc, option).await
    }

    /// New entries do not wait behind a request without any: see
    /// [`append_pipeline`](super::append_pipeline).
    fn stream_append<'s, S>(
        &'s mut self,
        input: S,
        option: RPCOption,
    ) -> BoxFuture<'s, Result<BoxStream<'s, append_pipeline::Answer>, RPCError<TypeConfig>>>
    where
        S: Stream<Item = AppendEntriesRequest<TypeConfig>> + OptionalSend + Unpin + 'static,
    {
        let network: &'s PeerNetwork = self;
        Box::pin(async move { Ok(append_pipeline::pipelined(network, input, option)) })
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        match self
            .call(RPCTypes::Vote, Request::Vote(rpc), option.hard_ttl())
            .await?
        {
            Response::Vote(answer) => Ok(answer),
            other => Err(unexpected(other)),
        }
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        match self
            .call(RPCTypes::Vote, Request::PreVote(rpc), option.hard_ttl())
            .await?
        {
            Response::Vote(answer) => Ok(answer),
            other => Err(unexpected(other)),
        }
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        match self
            .call(
                RPCTypes::TransferLeader,
                Request::TransferLeader(req),
                option.hard_ttl(),
            )
            .await?
        {
            Response::TransferLeader(answer) => Ok(answer),
            other => Err(unexpected(other)),
        }
    }

    /// Streams the snapshot in chunks, each acknowledged before the next is read, so memory stays
    /// at a few chunks per side whatever the snapshot's size. The receiver verifies the stream's
    /// checksum before installing it. A target that is down is waited for first (see
    /// [`SNAPSHOT_REACH_WAIT`]): a follower that needs a snapshot is usually one that was down
    /// for a while, and it is sent the snapshot the moment it is back.
    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: crate::types::Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let streaming = |e: RPCError<TypeConfig>| match e {
            RPCError::Timeout(t) => StreamingError::Timeout(t),
            RPCError::Unreachable(u) => StreamingError::Unreachable(u),
            RPCError::Network(n) => StreamingError::Network(n),
            RPCError::RemoteError(r) => StreamingError::Unreachable(Unreachable::new(&r)),
        };
        tokio::pin!(cancel);
        let reachability = tokio::select! {
            closed = &mut cancel => return Err(StreamingError::Closed(closed)),
            reachability = self.peer.wait_reachable(SNAPSHOT_REACH_WAIT) => reachability,
        };
        match reachability {
            Reachability::Now => {}
            // The snapshot in hand may be older than the log the leader still keeps. This
            // attempt ends as one that waited its time out: openraft tries again at once (a
            // timeout also clears its pause), with its newest snapshot.
            Reachability::CameBack => {
                return Err(StreamingError::Timeout(Timeout {
                    action: RPCTypes::InstallSnapshot,
                    id: self.this_node,
                    target: self.target,
                    timeout: SNAPSHOT_REACH_WAIT,
                }));
            }
            Reachability::Unreachable => {
                let down = io::Error::other(format!("peer {} is unreachable", self.peer.addr()));
                return Err(StreamingError::Unreachable(Unreachable::new(&down)));
            }
        }
        let Snapshot { meta, snapshot } = snapshot;
        // One chunk read ahead while the previous one is on the wire.
        let mut chunks = snapshot_chunks(snapshot, SNAPSHOT_CHUNK_LEN, 1);
        let chunk_timeout = option.hard_ttl().max(Duration::from_secs(5));
        let mut offset = 0u64;
        loop {
            let data = chunks
                .recv()
                .await
                .unwrap_or_else(|| Err(io::Error::other("the snapshot stream ended early")))
                .map_err(|e| StreamingError::Network(NetworkError::new(&e)))?;
            let done = data.len() < SNAPSHOT_CHUNK_LEN;
            let len = data.len() as u64;
            let chunk = SnapshotChunk {
                vote,
                meta: meta.clone(),
                offset,
                data,
                done,
            };
            let timeout = if done {
                SNAPSHOT_INSTALL_TIMEOUT
            } else {
                chunk_timeout
            };
            let answer = tokio::select! {
                closed = &mut cancel => return Err(StreamingError::Closed(closed)),
                answer = self.call(RPCTypes::InstallSnapshot, Request::SnapshotChunk(chunk), timeout) => answer,
            };
            match answer.map_err(streaming)? {
                Response::SnapshotChunkStored if !done => offset += len,
                Response::SnapshotInstalled(answer) if done => {
                    self.snapshots_sent.fetch_add(1, Ordering::Relaxed);
                    return Ok(answer);
                }
                other => return Err(streaming(unexpected(other))),
            }
        }
    }
}
