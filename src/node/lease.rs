//! Leases on the node: grant and revoke go through the log; keep-alive and time-to-live are
//! answered by the leader, which alone counts expiry (`store::lease`), and the leader revokes
//! expired leases through the log, so every member deletes their keys at the same revision.

use std::sync::Arc;
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use openraft::ServerState;

use crate::api;
use crate::error::Error;
use crate::error::Result;
use crate::network::RemoteError;
use crate::network::Request;
use crate::network::Response;
use crate::types::ApplyError;
use crate::types::Command;
use crate::types::CommandResult;

use super::Caller;
use super::Need;
use super::Node;

/// How often the leader looks for expired leases: an expired lease is revoked within this of its
/// deadline (plus the commit).
const EXPIRY_CHECK: Duration = Duration::from_millis(100);
/// Leases revoked per check at most, so a mass expiry is spread rather than flooding the log.
const REVOKES_PER_CHECK: usize = 256;

impl Node {
    /// The shortest TTL a lease gets, in seconds: one and a half election timeouts (etcd's
    /// rule), so a lease can outlive the election that follows a leader's crash. A shorter TTL
    /// asked for is raised to it.
    pub fn min_lease_ttl(&self) -> i64 {
        let millis = self.election_timeout.as_millis() * 3 / 2;
        i64::try_from(millis.div_ceil(1000))
            .unwrap_or(i64::MAX)
            .max(1)
    }

    /// Checks a grant and completes it: a random id when none was asked for, the TTL raised to
    /// [`Node::min_lease_ttl`].
    pub(super) fn prepare_grant(
        &self,
        mut grant: api::LeaseGrantRequest,
    ) -> std::result::Result<api::LeaseGrantRequest, ApplyError> {
        if !(1..=api::MAX_LEASE_TTL).contains(&grant.ttl) {
            return Err(ApplyError::InvalidRequest(format!(
                "lease TTL must be 1 to {} seconds, not {}",
                api::MAX_LEASE_TTL,
                grant.ttl
            )));
        }
        if grant.id < 0 {
            return Err(ApplyError::InvalidRequest(format!(
                "lease id {} is negative",
                grant.id
            )));
        }
        if grant.id == 0 {
            grant.id = rand::random_range(1..i64::MAX);
        }
        grant.ttl = grant.ttl.max(self.min_lease_ttl());
        Ok(grant)
    }

    /// Creates a lease once committed and applied.
    pub async fn lease_grant(
        &self,
        caller: &Caller,
        request: api::LeaseGrantRequest,
    ) -> Result<api::LeaseGrantResponse> {
        match self
            .propose_as(caller, "lease grant", Command::LeaseGrant(request))
            .await?
        {
            CommandResult::LeaseGranted(mut response) => {
                response.header = self.header(response.header.revision);
                Ok(response)
            }
            other => Err(super::kv::unexpected("lease grant", other)),
        }
    }

    /// Ends a lease and deletes its keys, once committed and applied. A user needs write
    /// permission on every key attached to it (as etcd asks).
    pub async fn lease_revoke(&self, caller: &Caller, id: i64) -> Result<api::LeaseRevokeResponse> {
        if matches!(caller, Caller::User(_)) {
            for key in self.state.lease_keys(id)? {
                self.authorize(caller, Need::Write(api::KeySpan::One(&key)))?;
            }
        }
        match self
            .propose_as(caller, "lease revoke", Command::LeaseRevoke { id })
            .await?
        {
            CommandResult::LeaseRevoked => Ok(api::LeaseRevokeResponse {
                header: self.header(self.revision()?),
            }),
            other => Err(super::kv::unexpected("lease revoke", other)),
        }
    }

    /// Renews a lease for its full TTL, at the leader.
    pub async fn lease_keep_alive(
        &self,
        caller: &Caller,
        id: i64,
    ) -> Result<api::LeaseKeepAliveResponse> {
        self.authorize(caller, Need::Authenticated)?;
        match self
            .ask_leader("lease keep-alive", Request::LeaseKeepAlive { id })
            .await?
        {
            Response::LeaseKeepAlive(response) => Ok(response),
            other => Err(Error::Raft(format!("unexpected answer {other:?}"))),
        }
    }

    /// A lease's TTL, the seconds left as the leader counts them, and (with `keys`) its keys.
    pub async fn lease_time_to_live(
        &self,
        caller: &Caller,
        id: i64,
        keys: bool,
    ) -> Result<api::LeaseTimeToLiveResponse> {
        self.authorize(caller, Need::Authenticated)?;
        match self
            .ask_leader("lease time-to-live", Request::LeaseTimeToLive { id, keys })
            .await?
        {
            Response::LeaseTimeToLive(response) => Ok(response),
            other => Err(Error::Raft(format!("unexpected answer {other:?}"))),
        }
    }

    /// Every lease in force (after a read barrier).
    pub async fn leases(&self, caller: &Caller) -> Result<api::LeaseLeasesResponse> {
        self.authorize(caller, Need::Authenticated)?;
        self.read_barrier("leases").await?;
        Ok(api::LeaseLeasesResponse {
            header: self.header(self.revision()?),
            leases: self
                .state
                .leases()
                .ids()
                .into_iter()
                .map(|id| api::LeaseStatus { id })
                .collect(),
        })
    }

    /// The revision this member has applied up to.
    pub(super) fn revision(&self) -> Result<i64> {
        Ok(self.state.revisions()?.current)
    }

    /// A keep-alive on this member, which believes it leads: renews the lease in its table, then
    /// confirms with a quorum that it still leads. Renewing first matters: a leader elected after
    /// the confirmation's round started its own count of every lease after it, so the TTL the
    /// client is told about is honoured whoever leads next.
    pub(super) async fn keep_alive_as_leader(
        &self,
        id: i64,
    ) -> std::result::Result<Response, RemoteError> {
        let not_found = || RemoteError::Request(ApplyError::LeaseNotFound(id));
        let ttl = match self.state.leases().renew(id) {
            Some(ttl) => ttl,
            // A leader elected moments ago may not have applied the grant yet: only a lease
            // missing once it has applied everything committed is unknown.
            None => {
                self.applied_up_to_read_index("lease keep-alive").await?;
                self.state.leases().renew(id).ok_or_else(not_found)?
            }
        };
        self.read_index_locally().await?;
        Ok(Response::LeaseKeepAlive(api::LeaseKeepAliveResponse {
            header: self.header(self.revision().map_err(super::read_error)?),
            id,
            ttl,
        }))
    }

    /// A time-to-live question on this member, which believes it leads.
    pub(super) async fn time_to_live_as_leader(
        &self,
        id: i64,
        keys: bool,
    ) -> std::result::Result<Response, RemoteError> {
        tokio::time::timeout(
            self.timeout,
            self.applied_up_to_read_index("lease time-to-live"),
        )
        .await
        .map_err(|_| RemoteError::TimedOut)??;
        let (granted_ttl, ttl) = self
            .state
            .leases()
            .time_to_live(id)
            .ok_or(RemoteError::Request(ApplyError::LeaseNotFound(id)))?;
        let keys = if keys {
            self.read_state(move |state| state.lease_keys(id))
                .await
                .map_err(super::read_error)?
        } else {
            Vec::new()
        };
        Ok(Response::LeaseTimeToLive(api::LeaseTimeToLiveResponse {
            header: self.header(self.revision().map_err(super::read_error)?),
            id,
            ttl,
            granted_ttl,
            keys,
        }))
    }

    /// Runs for the node's life: counts lease expiry while this member leads (every lease's TTL
    /// starts afresh when it becomes leader) and revokes, through the log, the leases whose time
    /// is up.
    pub(super) fn expire_leases(self: &Arc<Self>) {
        let node = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut led_in_term = None;
            let mut ticks = tokio::time::interval(EXPIRY_CHECK);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let Some(node) = node.upgrade() else { return };
                let (state, term) = {
                    let metrics = node.raft.metrics();
                    let m = metrics.borrow_watched();
                    (m.state, m.current_term)
                };
                if state != ServerState::Leader {
                    if led_in_term.take().is_some() {
                        node.state.leases().demote();
                    }
                    continue;
                }
                if led_in_term != Some(term) {
                    node.state.leases().promote();
                    led_in_term = Some(term);
                    continue;
                }
                for id in node.state.leases().expired(REVOKES_PER_CHECK) {
                    match node.lease_revoke(&Caller::Operator, id).await {
                        Ok(_) => tracing::info!("lease {id} expired; its keys are deleted"),
                        Err(Error::Request(ApplyError::LeaseNotFound(_))) => {}
                        Err(e) => {
                            tracing::warn!("lease {id} expired but revoking it failed: {e}");
                            break;
                        }
                    }
                }
            }
        });
    }
}
