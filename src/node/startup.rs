//! How a starting node meets a cluster that may already be running: it tells its peers it has
//! started, and a founding member that finds a leader already elected follows it instead of
//! founding the cluster a second time.
//!
//! While a member is down, the leader's replication stream to it pauses between attempts (up to
//! `REPLICATION_BACKOFF`'s cap) and the peer connection backs off too (`network::client`): a
//! member that comes back would wait out whatever is left of both pauses before the leader sent
//! it anything (0.1 to 0.25 s of a snapshot catch-up that takes about a second). The notice ends
//! both pauses, and the wait of a snapshot held for it (`network::raft_network`).
//!
//! A founding member initializes the cluster and campaigns at once. Started after the others
//! have elected a leader (three terminals, one after the other), its term-1 candidacy would
//! outrank that leader's own term-1 vote (openraft orders leader ids by term, then node id), and
//! the leader would step down: the cluster would elect again, without a leader meanwhile. So a
//! founder first asks its peers, and if one of them follows a leader of this same cluster it
//! waits for that leader instead, as a member added with `-join` does.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use openraft::error::InitializeError;
use openraft::error::RaftError;

use super::Node;
use crate::error::Error;
use crate::error::Result;
use crate::network::CallError;
use crate::network::RemoteError;
use crate::network::Request;
use crate::network::Response;
use crate::types::Member;
use crate::types::NodeId;

impl Node {
    /// Tells the nodes at `addrs` (this node's own address aside) that this node has started,
    /// each on its own task, without waiting for the answers: a restarted member knows the
    /// cluster already, and a member added with `-join` waits to be reached anyway.
    pub(super) fn announce_start(self: &Arc<Self>, addrs: impl IntoIterator<Item = String>) {
        for addr in addrs {
            if addr == self.member.raft_addr {
                continue;
            }
            let node = self.clone();
            tokio::spawn(async move {
                if let Err(e) = node.tell_started(&addr, node.election_timeout).await {
                    tracing::debug!("could not tell {addr} this node started: {e}");
                }
            });
        }
    }

    /// Founds the cluster with `members`, unless one of them already follows a leader of this
    /// cluster (asked for at most `ask_within`), in which case this node waits for that leader to
    /// reach it. Every founding member founds with the same membership, which is safe: they all
    /// write the same first log entry. A node that has heard from a leader meanwhile is left
    /// alone.
    pub(super) async fn found_cluster(
        &self,
        members: BTreeMap<NodeId, Member>,
        ask_within: Duration,
    ) -> Result<()> {
        let asked = members
            .iter()
            .filter(|(id, _)| **id != self.id)
            .map(|(_, member)| self.tell_started(&member.raft_addr, ask_within));
        let answers = futures::future::join_all(asked).await;
        if answers.into_iter().any(|answer| answer.unwrap_or(false)) {
            tracing::info!(
                "the other founding members have elected a leader already: following it instead \
                 of founding the cluster"
            );
            return Ok(());
        }
        match self.raft.initialize(members).await {
            Ok(()) => Ok(()),
            Err(RaftError::APIError(InitializeError::NotAllowed(_))) => Ok(()),
            Err(e) => Err(Error::Raft(format!("cannot bootstrap the cluster: {e}"))),
        }
    }

    /// Sends [`Request::Started`] to the member at `addr`; answers whether it follows a leader of
    /// this cluster.
    async fn tell_started(
        &self,
        addr: &str,
        within: Duration,
    ) -> std::result::Result<bool, CallError> {
        let request = Request::Started {
            id: self.id,
            cluster_id: self.cluster_id,
        };
        match self.peers.call(addr, request, within).await? {
            Response::Started { follows_leader } => Ok(follows_leader),
            other => Err(CallError::Remote(RemoteError::Refused(format!(
                "unexpected answer {other:?}"
            )))),
        }
    }

    /// Answers a peer's [`Request::Started`]: the connection to it is tried again at once and,
    /// on a leader, so is the replication stream to it; the answer says whether this node follows
    /// a leader of the sender's cluster. A sender that is not a member changes nothing here:
    /// anyone can send the notice, and it only ever shortens a pause.
    pub(super) async fn peer_started(
        &self,
        id: NodeId,
        cluster_id: u64,
    ) -> std::result::Result<Response, RemoteError> {
        let (addr, leader) = {
            let metrics = self.raft.metrics();
            let metrics = metrics.borrow_watched();
            let addr = metrics
                .membership_config
                .membership()
                .get_node(&id)
                .map(|member| member.raft_addr.clone());
            (addr, metrics.current_leader)
        };
        if let Some(addr) = addr {
            self.peers.forget_failures(&addr).await;
            self.raft
                .trigger()
                .reset_backoff([id])
                .await
                .map_err(|e| RemoteError::Refused(format!("raft stopped: {e}")))?;
        }
        Ok(Response::Started {
            follows_leader: leader.is_some() && cluster_id == self.cluster_id,
        })
    }
}
