//! Membership changes: adding a node (as a learner, promoted by the leader once it has caught up,
//! or kept a learner), removing one, handing leadership to another voter, keeping members'
//! addresses current, and a removed node noticing its removal.
//!
//! Every change runs on the leader, one at a time, after the leader checks it against the rules a
//! user relies on: no duplicate id or address, no re-use of a removed id (the removed ids are
//! replicated state), never removing the last voter.

use std::collections::BTreeSet;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use openraft::error::ChangeMembershipError;
use openraft::error::ClientWriteError;
use openraft::error::PreconditionFailed;
use openraft::error::RaftError;
use openraft::metrics::RaftServerMetrics;
use openraft::raft::ClientWriteResponse;
use openraft::raft::Precondition;
use openraft::ChangeMembers;
use openraft::RaftMetrics;

use super::write_error;
use super::Caller;
use super::Need;
use super::Node;
use super::RETRY_PAUSE;

use crate::error::Error;
use crate::error::Result;
use crate::network::MembershipChange;
use crate::network::RemoteError;
use crate::network::RemovalNotice;
use crate::network::Request;
use crate::network::Response;
use crate::types::Command;
use crate::types::CommandResult;
use crate::types::Member;
use crate::types::NodeId;
use crate::types::StoredMembership;
use crate::types::TypeConfig;

/// A learner within this many entries of the leader's log counts as caught up and is promoted.
const PROMOTION_LAG: u64 = 64;
/// Attempts to tell a removed node it has been removed, and the wait for each answer.
const REMOVAL_NOTICE_ATTEMPTS: u32 = 10;
const REMOVAL_NOTICE_TIMEOUT: Duration = Duration::from_secs(1);
/// The wait for the sender's confirmation of a removal notice: well within the sender's own wait
/// for the notice's answer, so a confirmed notice is acknowledged before the sender gives up.
const REMOVAL_CONFIRM_TIMEOUT: Duration = Duration::from_millis(500);

/// One member as the REPL's `members` and the HTTP API list it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberInfo {
    pub id: NodeId,
    pub raft_addr: String,
    pub http_addr: String,
    pub voter: bool,
    pub leader: bool,
}

/// How a node joins the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A voter, after catching up as a learner (the leader promotes it).
    Voter,
    /// A learner that stays one: it receives the log but never votes.
    Learner,
}

impl Node {
    /// Adds node `id` at raft address `raft_addr` as a learner; the leader promotes it to voter
    /// on its own once it has caught up. Works from any member.
    pub async fn add_member(&self, caller: &Caller, id: NodeId, raft_addr: String) -> Result<()> {
        self.add_node(caller, id, raft_addr, Role::Voter, None)
            .await
    }

    /// Adds node `id` at raft address `raft_addr` in `role`. With `prev_index`, the change is
    /// refused unless the membership in force is still the one set at that log index (see
    /// [`Node::membership_index`]). Works from any member.
    pub async fn add_node(
        &self,
        caller: &Caller,
        id: NodeId,
        raft_addr: String,
        role: Role,
        prev_index: Option<u64>,
    ) -> Result<()> {
        self.authorize(caller, Need::Admin)?;
        let member = Member {
            raft_addr,
            http_addr: String::new(),
        };
        let change = MembershipChange::Add {
            id,
            member,
            voter: role == Role::Voter,
            prev_index,
        };
        self.submit_to_leader("add", Request::Membership(change))
            .await
            .map(drop)
    }

    /// An id no member has and none ever had (removed ids are never used again): one above every
    /// id in the membership and among the removed, for a member added without naming its id.
    pub fn unused_member_id(&self) -> NodeId {
        let members = self.members().into_iter().map(|member| member.id);
        let removed = self.state.removed_ids().into_iter();
        members.chain(removed).max().unwrap_or(0) + 1
    }

    /// Records `raft_addr` as member `id`'s raft address (etcd's member update), keeping its HTTP
    /// address. A running member records its own addresses again when they differ from what it
    /// listens on, so this is for a member about to be restarted at the new address.
    pub async fn update_member_address(
        &self,
        caller: &Caller,
        id: NodeId,
        raft_addr: String,
    ) -> Result<()> {
        self.authorize(caller, Need::Admin)?;
        let http_addr = self
            .members()
            .into_iter()
            .find(|member| member.id == id)
            .map(|member| member.http_addr)
            .ok_or_else(|| Error::Refused(format!("node {id} is not a member")))?;
        let member = Member {
            raft_addr,
            http_addr,
        };
        let change = MembershipChange::UpdateAddresses { id, member };
        self.submit_to_leader("update", Request::Membership(change))
            .await
            .map(drop)
    }

    /// Waits, up to the node's `-timeout`, until this node's view of the membership satisfies
    /// `holds` (given the member ids and the voter ids); false if it does not by then. A change
    /// answered by the leader may reach this node a moment later; a client that asks this node
    /// next expects to see it.
    pub async fn wait_membership(
        &self,
        holds: impl Fn(&BTreeSet<NodeId>, &BTreeSet<NodeId>) -> bool + Send + 'static,
    ) -> bool {
        self.raft
            .wait(Some(self.timeout))
            .metrics(
                move |m| {
                    let membership = m.membership_config.membership();
                    let members = membership.nodes().map(|(id, _)| *id).collect();
                    let voters = membership.voter_ids().collect();
                    holds(&members, &voters)
                },
                "membership",
            )
            .await
            .is_ok()
    }

    /// The log index of the entry that set the membership in force, as `--prev-index` expects.
    pub fn membership_index(&self) -> u64 {
        let metrics = self.raft.metrics();
        let m = metrics.borrow_watched();
        m.membership_config
            .log_id()
            .as_ref()
            .map_or(0, |id| id.index)
    }

    /// Makes voter `to` the leader with openraft's leader transfer (the leader stops accepting
    /// writes and tells `to` to campaign at once), and waits until this node sees `to` lead.
    /// Works from any member.
    pub async fn transfer_leader(&self, caller: &Caller, to: NodeId) -> Result<()> {
        self.authorize(caller, Need::Admin)?;
        let change = MembershipChange::TransferLeader { to };
        self.submit_to_leader("transfer-leader", Request::Membership(change))
            .await?;
        self.raft
            .wait(Some(self.timeout))
            .metrics(|m| m.current_leader == Some(to), "leader transfer")
            .await
            .map(drop)
            .map_err(|_| Error::Timeout {
                op: "transfer-leader",
                after: self.timeout,
            })
    }

    /// Removes node `id` (voter or learner). Works from any member; a removed node shuts down.
    pub async fn remove_member(&self, caller: &Caller, id: NodeId) -> Result<()> {
        self.authorize(caller, Need::Admin)?;
        let change = MembershipChange::Remove { id };
        self.submit_to_leader("remove", Request::Membership(change))
            .await
            .map(drop)
    }

    /// Every member as this node currently sees the membership, in id order.
    pub fn members(&self) -> Vec<MemberInfo> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow_watched();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        membership
            .nodes()
            .map(|(id, member)| MemberInfo {
                id: *id,
                raft_addr: member.raft_addr.clone(),
                http_addr: member.http_addr.clone(),
                voter: voters.contains(id),
                leader: m.current_leader == Some(*id),
            })
            .collect()
    }

    /// The current leader and its addresses, if one is known.
    pub fn leader(&self) -> Option<(NodeId, Member)> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow_watched();
        let leader = m.current_leader?;
        let member = m.membership_config.membership().get_node(&leader)?.clone();
        Some((leader, member))
    }

    /// Resolves once this node knows it has been removed from the cluster.
    pub async fn wait_removed(&self) {
        let mut removed = self.removed.subscribe();
        let _ = removed.wait_for(|removed| *removed).await;
    }

    /// Records that this node has been removed; `why` goes to the log.
    pub(super) fn learn_removed(&self, why: &str) {
        if !self.removed.send_replace(true) {
            tracing::warn!("this node has been removed from the cluster ({why})");
        }
    }

    /// Acts on a removal notice only if it names this node, is not from an older term than this
    /// node's, and its sender, looked up in this node's own membership, confirms the removal from
    /// its applied state. Stopping is for good and anyone can reach the raft port, so a notice
    /// meant for a node that had this address before, one from another cluster, a stale one and a
    /// forged one are all refused, and the node keeps running. A removed node whose notice is
    /// refused still learns of its removal when it applies it or asks the members for votes.
    pub(super) async fn receive_removal_notice(
        &self,
        notice: RemovalNotice,
    ) -> std::result::Result<Response, RemoteError> {
        let refuse = |why: String| {
            tracing::warn!("refused a removal notice: {why}");
            refused(format!("removal notice refused: {why}"))
        };
        if notice.target != self.id {
            return Err(refuse(format!(
                "it is for node {}, and this is node {}",
                notice.target, self.id
            )));
        }
        let sender = notice.vote.leader_id.node_id;
        let (term, sender_addr) = {
            let metrics = self.raft.metrics();
            let m = metrics.borrow_watched();
            let member = m.membership_config.membership().get_node(&sender);
            (
                m.current_term,
                member.map(|member| member.raft_addr.clone()),
            )
        };
        if notice.vote.leader_id.term < term {
            return Err(refuse(format!(
                "it is from term {}, older than this node's term {term}",
                notice.vote.leader_id.term
            )));
        }
        let Some(addr) = sender_addr else {
            return Err(refuse(format!(
                "its sender, node {sender}, is not a member of this node's cluster"
            )));
        };
        let question = Request::WasRemoved { id: self.id };
        match self
            .peers
            .call(&addr, question, REMOVAL_CONFIRM_TIMEOUT)
            .await
        {
            Ok(Response::WasRemoved(true)) => {
                self.learn_removed(&format!("node {sender} said so and confirmed it"));
                Ok(Response::Acknowledged)
            }
            Ok(Response::WasRemoved(false)) => Err(refuse(format!(
                "node {sender} at {addr} says this node is still a member"
            ))),
            Ok(other) => Err(refuse(format!(
                "node {sender} at {addr} answered {other:?}"
            ))),
            Err(e) => Err(refuse(format!(
                "it cannot be confirmed with node {sender} at {addr}: {e}"
            ))),
        }
    }

    /// Refuses a vote request from a node that has been removed, telling it so.
    pub(super) fn refuse_removed(&self, candidate: NodeId) -> std::result::Result<(), RemoteError> {
        if self.state.removed_ids().contains(&candidate) {
            return Err(RemoteError::Removed);
        }
        Ok(())
    }

    /// Runs a membership change on this node, which believes it is the leader.
    ///
    /// A user's change that finds another user's change in progress is refused (`busy, try
    /// again`); changes the nodes make themselves (address updates, promotions) are waited for.
    /// The change is checked and proposed only once a quorum has confirmed this node's leadership
    /// and, for a check that reads applied state, this node has applied everything committed
    /// before, and the whole attempt is bounded by the node's timeout: a leader cut off from its quorum refuses the change instead of leaving
    /// it in its log to take effect later. Running out of time after the change was handed to
    /// openraft is reported as an unknown outcome: it may still commit.
    pub(super) async fn change_membership_locally(
        &self,
        change: MembershipChange,
    ) -> std::result::Result<CommandResult, RemoteError> {
        let _one_user_change = match change {
            MembershipChange::UpdateAddresses { .. } => None,
            _ => Some(self.user_membership_change.try_lock().map_err(|_| busy())?),
        };
        // A little under the requester's own deadline, so the answer reaches it in time.
        let within = self.timeout.mul_f64(0.9);
        let proposed = AtomicBool::new(false);
        match tokio::time::timeout(
            within,
            self.change_membership_with_quorum(change, &proposed),
        )
        .await
        {
            Ok(outcome) => outcome,
            Err(_) if proposed.load(Ordering::Relaxed) => Err(RemoteError::Unknown(format!(
                "the change was proposed but not confirmed within {}; it may still take effect \
                 (for example once a quorum is back): check the members before retrying",
                humantime::format_duration(within)
            ))),
            Err(_) => Err(RemoteError::TimedOut),
        }
    }

    /// The body of [`Node::change_membership_locally`]; sets `proposed` while openraft may be
    /// appending the change, so that running out of time is not reported as "nothing changed".
    ///
    /// One change at a time on this leader: it confirms leadership (and, for an add, that the
    /// applied state is current), validates the change against the membership in force,
    /// proposes it, and goes round again while openraft is still committing an earlier change.
    async fn change_membership_with_quorum(
        &self,
        change: MembershipChange,
        proposed: &AtomicBool,
    ) -> std::result::Result<CommandResult, RemoteError> {
        loop {
            let one_at_a_time = self.membership_change.lock().await;
            if let Err(e) = self.membership_barrier(&change).await {
                drop(one_at_a_time);
                match e {
                    RemoteError::NotLeader { .. } => return Err(e),
                    _ => {
                        tokio::time::sleep(RETRY_PAUSE).await;
                        continue;
                    }
                }
            }
            let membership = self
                .raft
                .metrics()
                .borrow_watched()
                .membership_config
                .clone();
            let at_index = membership.log_id().as_ref().map_or(0, |id| id.index);
            let plan = self.validate(&change, membership.membership(), at_index)?;
            proposed.store(true, Ordering::Relaxed);
            if let MembershipChange::TransferLeader { to } = change {
                drop(one_at_a_time);
                return self.transfer_leadership(to).await;
            }
            let outcome = match self
                .propose_membership_change(&change, plan.changes, plan.retain, &membership)
                .await?
            {
                Proposed::Written(outcome) => outcome,
                Proposed::Nothing => return Ok(CommandResult::Applied),
            };
            drop(one_at_a_time);
            match outcome.map_err(|e| membership_error(e, at_index)) {
                Ok(written) => {
                    if let Some((id, member)) = plan.removing {
                        self.announce_removal(id, member);
                    }
                    return Ok(written.data);
                }
                // An earlier change is still being committed: it will be shortly, with a quorum.
                // Nothing was appended this time.
                Err(RemoteError::Busy(_)) => {
                    proposed.store(false, Ordering::Relaxed);
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Confirms that this node leads, so the membership it validates against is the one in
    /// force. Only an add's checks read applied state (removed ids, kept learners), so only an
    /// add waits for the state machine to catch up; the others can go ahead on a leader whose
    /// state machine lags, e.g. handing leadership away from a node whose disk is full.
    async fn membership_barrier(
        &self,
        change: &MembershipChange,
    ) -> std::result::Result<(), RemoteError> {
        if matches!(change, MembershipChange::Add { .. }) {
            self.applied_up_to_read_index("membership rules").await
        } else {
            self.read_index_locally().await.map(drop)
        }
    }

    /// Asks openraft for the validated `change`: the membership `changes` when there are any
    /// (keeping removed voters as learners if `retain`), else the add of a learner or the
    /// marking of one as a voter to be. `membership` is the one the change was validated
    /// against.
    async fn propose_membership_change(
        &self,
        change: &MembershipChange,
        changes: Option<ChangeMembers<NodeId, Member>>,
        retain: bool,
        membership: &StoredMembership,
    ) -> std::result::Result<Proposed, RemoteError> {
        if let Some(changes) = changes {
            // Spawned, so that the deadline passing does not cancel openraft's two-step change
            // between its joint and its final entry and leave the joint one in force.
            let raft = self.raft.clone();
            let outcome =
                tokio::spawn(async move { raft.change_membership(changes, retain).await })
                    .await
                    .map_err(|e| RemoteError::Unknown(format!("the change failed: {e}")))?;
            return Ok(Proposed::Written(outcome));
        }
        let MembershipChange::Add {
            id,
            member,
            voter,
            prev_index,
        } = change
        else {
            return Err(refused("nothing to change".into()));
        };
        let outcome = match self.mark_learner(*id, !voter).await {
            Err(e) => Err(e),
            // A learner asked to become a voter: clearing its mark is the whole change; the
            // leader promotes it once it has caught up.
            Ok(marked) if membership.membership().get_node(id).is_some() => match marked {
                Some(written) => Ok(written),
                None => return Ok(Proposed::Nothing),
            },
            Ok(_) => {
                // openraft's own check that the membership is still the one validated, for a
                // `--prev-index` add: the membership lock keeps this leader's other changes
                // out, and this also refuses one that slipped in by any other way.
                let preconditions = match prev_index {
                    Some(_) => vec![Precondition::LastMembershipLogId {
                        last_membership_log_id: *membership.log_id(),
                    }],
                    None => Vec::new(),
                };
                let node = ChangeMembers::AddNodes([(*id, member.clone())].into());
                self.raft
                    .change_membership_if(node, true, preconditions)
                    .await
            }
        };
        Ok(Proposed::Written(outcome))
    }

    /// Hands leadership to `to` (nothing to do when it is this node already).
    async fn transfer_leadership(
        &self,
        to: NodeId,
    ) -> std::result::Result<CommandResult, RemoteError> {
        if to != self.id {
            self.raft
                .trigger()
                .transfer_leader(to)
                .await
                .map_err(|e| RemoteError::Unknown(format!("raft stopped: {e}")))?;
        }
        Ok(CommandResult::Applied)
    }

    /// Records through the log whether learner `id` stays a learner (`keep`), unless that is
    /// already what the applied state says. A log entry rather than this leader's memory, so a
    /// later leader honours it too.
    async fn mark_learner(
        &self,
        id: NodeId,
        keep: bool,
    ) -> std::result::Result<
        Option<ClientWriteResponse<TypeConfig>>,
        RaftError<TypeConfig, ClientWriteError<TypeConfig>>,
    > {
        if self.state.kept_learners().contains(&id) == keep {
            return Ok(None);
        }
        self.raft
            .client_write(Command::KeepLearner { id, keep })
            .await
            .map(Some)
    }

    /// Checks `change` against the rules openraft does not enforce and says what to ask openraft
    /// for.
    fn validate(
        &self,
        change: &MembershipChange,
        membership: &openraft::Membership<NodeId, Member>,
        at_index: u64,
    ) -> std::result::Result<Plan, RemoteError> {
        match change {
            MembershipChange::Add {
                prev_index: Some(prev),
                ..
            } if *prev != at_index => Err(membership_changed(*prev, at_index)),
            MembershipChange::Add {
                id, member, voter, ..
            } => {
                if let Some(existing) = membership.get_node(id) {
                    let learner = !membership.voter_ids().any(|voter_id| voter_id == *id);
                    if *voter && learner && existing.raft_addr == member.raft_addr {
                        return Ok(Plan {
                            changes: None,
                            retain: true,
                            removing: None,
                        });
                    }
                    return Err(refused(format!("node {id} is already a member")));
                }
                if self.state.removed_ids().contains(id) {
                    return Err(refused(format!(
                        "node {id} was removed from the cluster and its id cannot be used again; pick a new id"
                    )));
                }
                if let Some((other, _)) = membership
                    .nodes()
                    .find(|(_, existing)| existing.raft_addr == member.raft_addr)
                {
                    return Err(refused(format!(
                        "address {} is already used by node {other}",
                        member.raft_addr
                    )));
                }
                Ok(Plan {
                    changes: None,
                    retain: true,
                    removing: None,
                })
            }
            MembershipChange::Remove { id } => {
                let Some(member) = membership.get_node(id) else {
                    return Err(refused(format!("node {id} is not a member")));
                };
                let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
                let changes = if voters.contains(id) {
                    if voters.len() == 1 {
                        return Err(refused("cannot remove the last voter".to_string()));
                    }
                    ChangeMembers::RemoveVoters([*id].into())
                } else {
                    ChangeMembers::RemoveNodes([*id].into())
                };
                Ok(Plan {
                    changes: Some(changes),
                    retain: false,
                    removing: Some((*id, member.clone())),
                })
            }
            MembershipChange::UpdateAddresses { id, member } => Ok(Plan {
                changes: Some(ChangeMembers::SetNodes([(*id, member.clone())].into())),
                retain: true,
                removing: None,
            }),
            MembershipChange::TransferLeader { to } => {
                if !membership.voter_ids().any(|voter| voter == *to) {
                    return Err(refused(format!(
                        "node {to} is not a voter; only a voter can lead"
                    )));
                }
                Ok(Plan {
                    changes: None,
                    retain: true,
                    removing: None,
                })
            }
        }
    }

    /// Tells a node it has been removed: it may never receive the entry that removed it, because
    /// the leader stops replicating to it once that entry commits.
    fn announce_removal(&self, id: NodeId, member: Member) {
        if id == self.id {
            self.learn_removed("this node removed itself");
            return;
        }
        let peers = self.peers.clone();
        let notice = RemovalNotice {
            target: id,
            vote: self.raft.metrics().borrow_watched().vote,
        };
        tokio::spawn(async move {
            let mut last_error = None;
            for _ in 0..REMOVAL_NOTICE_ATTEMPTS {
                let notice = Request::Removed(notice.clone());
                match peers
                    .call(&member.raft_addr, notice, REMOVAL_NOTICE_TIMEOUT)
                    .await
                {
                    Ok(_) => return,
                    Err(e) => last_error = Some(e),
                }
                tokio::time::sleep(RETRY_PAUSE).await;
            }
            let why = last_error.map(|e| e.to_string()).unwrap_or_default();
            tracing::info!(
                "node {id} did not acknowledge its removal ({why}); it will learn it when it applies it or asks for votes"
            );
        });
    }

    /// Keeps this node's entry in the replicated membership in step with its actual addresses, so
    /// every member learns its HTTP address (and a raft address given with `-addr`). Runs until
    /// Raft stops.
    pub(super) fn keep_own_address_current(self: &Arc<Self>) {
        let node = self.clone();
        tokio::spawn(async move {
            // The server metrics change with the leader and the membership only, not with every
            // commit as the full metrics do, so this task wakes only when it may have work.
            let mut metrics = node.raft.server_metrics();
            loop {
                let outdated = {
                    let m = metrics.borrow_watched();
                    m.current_leader.is_some()
                        && m.membership_config
                            .membership()
                            .get_node(&node.id)
                            .is_some_and(|recorded| *recorded != node.member)
                };
                if outdated {
                    let change = MembershipChange::UpdateAddresses {
                        id: node.id,
                        member: node.member.clone(),
                    };
                    match node
                        .submit_to_leader("address update", Request::Membership(change))
                        .await
                    {
                        Ok(_) => tracing::info!("recorded this node's addresses in the membership"),
                        Err(e) => {
                            tracing::debug!(
                                "recording this node's addresses failed, will retry: {e}"
                            );
                            tokio::time::sleep(RETRY_PAUSE * 10).await;
                            // Try again now: the server metrics may not change for a long time.
                            continue;
                        }
                    }
                }
                if metrics.changed().await.is_err() {
                    return;
                }
            }
        });
    }

    /// On the leader, promotes each learner to voter once its log is within [`PROMOTION_LAG`]
    /// entries of the leader's. A learner that never starts is never promoted, so it never counts
    /// towards (or against) the quorum. Learners added to stay learners are left alone: that
    /// choice is replicated state (`Command::KeepLearner`), so every later leader honours it.
    pub(super) fn promote_caught_up_learners(self: &Arc<Self>) {
        let node = self.clone();
        tokio::spawn(async move {
            // The server metrics change with the leader and the membership, the records with the
            // kept learners; replication progress (the full metrics, which change at every
            // commit) is followed only while this node leads learners it should promote.
            let mut server = node.raft.server_metrics();
            let mut records = node.state.member_records();
            let mut progress = node.raft.metrics();
            loop {
                let leads = node.leads_learners_to_promote(
                    &server.borrow_watched(),
                    &records.borrow().kept_learners,
                );
                if !leads {
                    tokio::select! {
                        changed = server.changed() => if changed.is_err() { return },
                        changed = records.changed() => if changed.is_err() { return },
                    }
                    continue;
                }
                let ready = node.caught_up_learners(&progress.borrow_watched());
                for id in ready {
                    node.promote(id).await;
                }
                if progress.changed().await.is_err() {
                    return;
                }
            }
        });
    }

    /// Whether this node leads and its membership has a learner not kept as one.
    fn leads_learners_to_promote(
        &self,
        m: &RaftServerMetrics<TypeConfig>,
        kept: &BTreeSet<NodeId>,
    ) -> bool {
        m.current_leader == Some(self.id)
            && m.membership_config
                .membership()
                .learner_ids()
                .any(|id| !kept.contains(&id))
    }

    /// The learners, not kept as such, whose log is within [`PROMOTION_LAG`] of this leader's.
    fn caught_up_learners(&self, m: &RaftMetrics<TypeConfig>) -> Vec<NodeId> {
        let kept = self.state.kept_learners();
        let last_log = m.last_log_index.unwrap_or(0);
        let (Some(replication), true) = (&m.replication, m.current_leader == Some(self.id)) else {
            return Vec::new();
        };
        m.membership_config
            .membership()
            .learner_ids()
            .filter(|id| !kept.contains(id))
            .filter(|id| {
                replication
                    .get(id)
                    .and_then(|matched| matched.as_ref())
                    .is_some_and(|matched| matched.index + PROMOTION_LAG >= last_log)
            })
            .collect()
    }

    async fn promote(&self, id: NodeId) {
        let _one_at_a_time = self.membership_change.lock().await;
        // Whether the learner is kept one is applied state, complete only up to the read index.
        let caught_up = tokio::time::timeout(
            self.timeout,
            self.applied_up_to_read_index("membership rules"),
        )
        .await;
        if !matches!(caught_up, Ok(Ok(()))) {
            tracing::debug!(
                "not promoting node {id} yet: this node's applied state is not known to be current"
            );
            tokio::time::sleep(RETRY_PAUSE).await;
            return;
        }
        if self.state.kept_learners().contains(&id) {
            return;
        }
        let still_learner = {
            let metrics = self.raft.metrics();
            let m = metrics.borrow_watched();
            m.current_leader == Some(self.id)
                && m.membership_config
                    .membership()
                    .learner_ids()
                    .any(|learner| learner == id)
        };
        if !still_learner {
            return;
        }
        match self
            .raft
            .change_membership(ChangeMembers::AddVoterIds([id].into()), true)
            .await
        {
            Ok(_) => tracing::info!("promoted node {id} from learner to voter"),
            Err(e) => {
                tracing::info!("promoting node {id} failed, will retry: {e}");
                tokio::time::sleep(RETRY_PAUSE).await;
            }
        }
    }

    /// Notices this node's own removal in the state it applies (the removed ids are replicated),
    /// including at start-up when it was removed before a restart.
    pub(super) fn watch_for_removal(self: &Arc<Self>) {
        let node = self.clone();
        tokio::spawn(async move {
            let mut records = node.state.member_records();
            loop {
                if records.borrow_and_update().removed.contains(&node.id) {
                    node.learn_removed("its removal has been applied");
                    return;
                }
                if records.changed().await.is_err() {
                    return;
                }
            }
        });
    }
}

/// What a validated membership change asks of openraft.
struct Plan {
    /// The membership change, or `None` for an add, which goes through `add_learner`.
    changes: Option<ChangeMembers<NodeId, Member>>,
    /// Whether removed voters stay on as learners.
    retain: bool,
    /// The node being removed, to be told once the change is committed.
    removing: Option<(NodeId, Member)>,
}

/// What proposing a validated membership change came to.
enum Proposed {
    /// openraft's answer to what was appended.
    Written(
        std::result::Result<
            ClientWriteResponse<TypeConfig>,
            RaftError<TypeConfig, ClientWriteError<TypeConfig>>,
        >,
    ),
    /// The change was already in force: nothing was appended.
    Nothing,
}

fn busy() -> RemoteError {
    RemoteError::Busy("another membership change is in progress".into())
}

fn refused(reason: String) -> RemoteError {
    RemoteError::Refused(reason)
}

/// The refusal of a `--prev-index` change: the membership was last set at `at`, not at `prev`.
fn membership_changed(prev: u64, at: u64) -> RemoteError {
    refused(format!(
        "the membership changed since index {prev}: it was last set at index {at}; \
         check the members and retry with --prev-index {at}"
    ))
}

/// Maps openraft's refusal of a membership change validated against the membership set at
/// `validated_at` to what the requester should do.
fn membership_error(
    e: RaftError<TypeConfig, ClientWriteError<TypeConfig>>,
    validated_at: u64,
) -> RemoteError {
    match e {
        RaftError::APIError(ClientWriteError::ChangeMembershipError(
            ChangeMembershipError::InProgress(_),
        )) => busy(),
        RaftError::APIError(ClientWriteError::PreconditionFailed(
            PreconditionFailed::LastMembershipLogIdMismatch { actual, .. },
        )) => membership_changed(validated_at, actual.map_or(0, |id| id.index)),
        other => write_error(other),
    }
}
