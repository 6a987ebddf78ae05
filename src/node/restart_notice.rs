//! A restarted member tells its peers it is back, so a leader resumes replicating to it at once
//! instead of when its paused replication stream next tries.
//!
//! While a member is down, the leader's replication stream to it pauses between attempts (up to
//! `REPLICATION_BACKOFF`'s cap) and the peer connection backs off too (`network::client`). A
//! member that comes back would wait out whatever is left of both pauses before the leader sends
//! it anything: 0.1 to 0.25 s of a snapshot catch-up that takes about a second. The notice ends
//! both pauses.

use std::sync::Arc;

use openraft::async_runtime::WatchReceiver;

use super::Node;
use crate::network::RemoteError;
use crate::network::Request;
use crate::network::Response;
use crate::types::NodeId;

impl Node {
    /// Sends [`Request::Restarted`] to every other member, each on its own task; an answer is not
    /// awaited by anyone, and a peer that is down itself is not waited for.
    pub(super) fn announce_restart(self: &Arc<Self>) {
        let others: Vec<String> = self
            .members()
            .into_iter()
            .filter(|member| member.id != self.id)
            .map(|member| member.raft_addr)
            .collect();
        for addr in others {
            let peers = self.peers.clone();
            let request = Request::Restarted { id: self.id };
            let timeout = self.election_timeout;
            tokio::spawn(async move {
                if let Err(e) = peers.call(&addr, request, timeout).await {
                    tracing::debug!("could not tell {addr} this node restarted: {e}");
                }
            });
        }
    }

    /// Answers a member's [`Request::Restarted`]: the connection to it is tried again at once,
    /// and, on a leader, so is the replication stream to it. A node that is not a member is
    /// ignored: anyone can send the notice, and it only ever shortens a pause.
    pub(super) async fn peer_restarted(&self, id: NodeId) -> Result<Response, RemoteError> {
        let addr = {
            let metrics = self.raft.metrics();
            let metrics = metrics.borrow_watched();
            metrics
                .membership_config
                .membership()
                .get_node(&id)
                .map(|member| member.raft_addr.clone())
        };
        let Some(addr) = addr else {
            return Ok(Response::Acknowledged);
        };
        self.peers.forget_failures(&addr).await;
        self.raft
            .trigger()
            .reset_backoff([id])
            .await
            .map_err(|e| RemoteError::Refused(format!("raft stopped: {e}")))?;
        Ok(Response::Acknowledged)
    }
}
