//! Watches on the node: a watch is served from this member's own state (its history and the
//! changes it applies), so any member serves it and a client resumes on any member from the last
//! revision it saw.

use std::time::Duration;

use tokio::sync::mpsc;

use openraft::async_runtime::WatchReceiver;

use crate::api;
use crate::error::Error;
use crate::error::Result;
use crate::store;
use crate::types::ApplyError;
use crate::types::Raft;

use super::Caller;
use super::Need;
use super::Node;

/// The responses of one watch, in order. Dropping it ends the watch.
pub struct WatchStream {
    responses: mpsc::Receiver<api::WatchResponse>,
    cluster_id: u64,
    member_id: u64,
    raft: Raft,
    /// Whom the events are for: each is checked against the auth state at delivery, so a
    /// permission revoked while the watch is open hides the keys it covered from then on.
    reader: Option<(Caller, store::StateReader)>,
}

impl WatchStream {
    /// The next response; `None` once the watch has ended (after its canceled response).
    pub async fn next(&mut self) -> Option<api::WatchResponse> {
        loop {
            let response = self.responses.recv().await?;
            if let Some(response) = self.deliverable(response) {
                return Some(response);
            }
        }
    }

    /// The next response if one is ready now, without waiting.
    pub fn try_next(&mut self) -> Option<api::WatchResponse> {
        loop {
            let response = self.responses.try_recv().ok()?;
            if let Some(response) = self.deliverable(response) {
                return Some(response);
            }
        }
    }

    /// `response` stamped, without the events its reader may not see; None when that leaves a
    /// response of changes with none (it would read as a progress notification).
    fn deliverable(&self, mut response: api::WatchResponse) -> Option<api::WatchResponse> {
        if let Some((caller, state)) = &self.reader {
            if !response.events.is_empty() {
                response
                    .events
                    .retain(|event| super::auth::may_read(state, caller, &event.kv.key));
                if response.events.is_empty() {
                    return None;
                }
            }
        }
        Some(self.stamp(response))
    }

    /// Fills in who answers: the responses come from the store, which does not know.
    fn stamp(&self, mut response: api::WatchResponse) -> api::WatchResponse {
        response.header.cluster_id = self.cluster_id;
        response.header.member_id = self.member_id;
        response.header.raft_term = self.raft.metrics().borrow_watched().current_term;
        response
    }
}

/// The key space's figures on this member, for metrics.
#[derive(Debug, Clone, Copy, Default)]
pub struct StoreFigures {
    pub revision: i64,
    pub compact_revision: i64,
    pub watches: usize,
    pub leases: usize,
}

impl Node {
    /// The revision counters, watches and leases on this member (zero revisions if the state
    /// cannot be read).
    pub fn store_figures(&self) -> StoreFigures {
        let revisions = self.state.revisions().unwrap_or_default();
        StoreFigures {
            revision: revisions.current,
            compact_revision: revisions.compacted,
            watches: self.state.watch_hub().watches(),
            leases: self.state.leases().len(),
        }
    }

    /// Starts a watch of `request`'s keys from its start revision (see `api::watch` for what it
    /// promises). Progress notifications, when asked for, come after the node's
    /// `-watch-progress-notify-interval` without changes.
    /// A user needs read permission on every key watched, and sees each event only while it may
    /// read that key.
    pub fn watch(&self, caller: &Caller, request: api::WatchRequest) -> Result<WatchStream> {
        self.watch_with(caller, request, self.watch_progress_interval)
    }

    fn watch_with(
        &self,
        caller: &Caller,
        request: api::WatchRequest,
        progress_every: Duration,
    ) -> Result<WatchStream> {
        self.authorize(
            caller,
            Need::Read(api::KeySpan::new(&request.key, &request.range_end)),
        )?;
        if request.start_revision < 0 {
            return Err(Error::Request(ApplyError::InvalidRequest(format!(
                "start revision {} is negative",
                request.start_revision
            ))));
        }
        api::validate_span(&request.key, &request.range_end)
            .map_err(|reason| Error::Request(ApplyError::InvalidRequest(reason)))?;
        let (sender, responses) = mpsc::channel(store::WATCH_QUEUE);
        tokio::spawn(store::run_watch(
            self.state.clone(),
            request,
            sender,
            progress_every,
        ));
        Ok(WatchStream {
            responses,
            cluster_id: self.cluster_id,
            member_id: self.id,
            raft: self.raft.clone(),
            reader: matches!(caller, Caller::User(_)).then(|| (caller.clone(), self.state.clone())),
        })
    }

    /// The next response of a watch from `request.start_revision` (a native client's long poll):
    /// the first one with changes, or the end of the watch, or, after `wait` without changes, a
    /// progress response saying how far this member has seen.
    pub async fn watch_poll(
        &self,
        caller: &Caller,
        mut request: api::WatchRequest,
        wait: Duration,
    ) -> Result<api::WatchResponse> {
        let start = request.start_revision;
        request.progress_notify = true;
        let mut watch = self.watch_with(caller, request, wait)?;
        // A progress response needs the watch to have caught up first; past this, the client is
        // told only that nothing came (it asks again from the same revision).
        let deadline = tokio::time::Instant::now() + wait * 2 + Duration::from_secs(1);
        loop {
            match tokio::time::timeout_at(deadline, watch.next()).await {
                Ok(Some(response)) if response.created => continue,
                Ok(Some(response)) => return Ok(response),
                Ok(None) => return Err(Error::ShuttingDown),
                Err(_) => {
                    return Ok(api::WatchResponse {
                        header: self.header(start.saturating_sub(1)),
                        ..api::WatchResponse::default()
                    })
                }
            }
        }
    }
}
