//! A watch over the native protocol: a chain of long polls (`WatchPoll`), each asking a node for
//! the changes from the next revision the watch owes its caller.
//!
//! Every member serves a watch from its own applied history, and a response holds whole
//! revisions, so the watch can move to any other endpoint when its node fails and resume from
//! the revision after the last one it delivered: nothing is lost or delivered twice.

use std::time::Duration;

use tokio::time::Instant;

use super::unexpected;
use super::Client;
use super::MIN_RETRY_PAUSE;
use crate::api;
use crate::error::Error;
use crate::error::Result;
use crate::network::CallError;
use crate::network::RemoteError;
use crate::network::Request;
use crate::network::Response;

/// How long a node holds one poll without changes before answering with its progress: short
/// enough that a node gone silent (not closed, e.g. partitioned) is noticed within seconds.
const POLL_WAIT: Duration = Duration::from_secs(1);
/// What a poll's answer may take beyond its wait: the node allows its watch twice the wait and
/// a second to catch up before answering, and the answer has to travel back.
const POLL_SLACK: Duration = Duration::from_secs(2);

/// The responses of one watch, in revision order, from the start revision on, across node
/// failures. Progress responses (no events) are delivered only if the request asked for
/// `progress_notify`. The watch ends with a canceled response (its start had been compacted, or
/// the node could not go on); [`Watch::next`] answers `None` after it.
pub struct Watch<'c> {
    client: &'c Client,
    /// The request, with `start_revision` always the next revision owed to the caller.
    request: api::WatchRequest,
    /// Round-robin position of the endpoint being polled.
    at: usize,
    ended: bool,
}

impl<'c> Watch<'c> {
    pub(super) fn new(client: &'c Client, request: api::WatchRequest, at: usize) -> Self {
        Watch {
            client,
            request,
            at,
            ended: false,
        }
    }

    /// The raft address of the node the watch polls now (it moves when that node fails).
    pub fn endpoint(&self) -> &str {
        self.client.endpoint(self.at)
    }

    /// The revision the watch resumes from: every change before it has been delivered.
    pub fn next_revision(&self) -> i64 {
        self.request.start_revision
    }

    /// The next response: events of one or more whole revisions, a progress response (when
    /// asked for), or the final canceled one; `Ok(None)` once the watch has ended. Fails when no
    /// endpoint answers for the client's timeout, or when the request itself is refused.
    pub async fn next(&mut self) -> Result<Option<api::WatchResponse>> {
        if self.ended {
            return Ok(None);
        }
        let mut deadline = Instant::now() + self.client.timeout;
        let mut pause = MIN_RETRY_PAUSE;
        loop {
            let failure = match self.poll().await {
                Ok(Response::Watch(response)) => {
                    if let Some(response) = self.take(response) {
                        return Ok(Some(response));
                    }
                    deadline = Instant::now() + self.client.timeout;
                    pause = MIN_RETRY_PAUSE;
                    continue;
                }
                Ok(other) => return Err(unexpected(other)),
                Err(CallError::Remote(RemoteError::Request(refusal))) => {
                    self.ended = true;
                    return Err(Error::Request(refusal));
                }
                Err(failure) => failure,
            };
            self.at = self.at.wrapping_add(1);
            pause = self
                .client
                .pause_before_retry("watch", pause, deadline, failure)
                .await?;
        }
    }

    /// Records how far `response` takes the watch; returns it if the caller is to see it.
    fn take(&mut self, response: api::WatchResponse) -> Option<api::WatchResponse> {
        if response.canceled {
            self.ended = true;
            return Some(response);
        }
        // A node behind the watch (just moved to) reports progress below where it stands.
        self.request.start_revision = self.request.start_revision.max(response.resume_revision());
        let wanted = !response.events.is_empty() || self.request.progress_notify;
        wanted.then_some(response)
    }

    async fn poll(&self) -> std::result::Result<Response, CallError> {
        let request = Request::WatchPoll {
            request: self.request.clone(),
            wait_ms: POLL_WAIT.as_millis() as u64,
        };
        self.client
            .call_within(self.endpoint(), request, POLL_WAIT * 2 + POLL_SLACK)
            .await
    }
}
