//! AppendEntries to one follower, where new entries never wait behind a request without any.
//!
//! openraft hands the network a stream of AppendEntries requests for each follower (each one
//! carrying the entries appended since the last or, with none to send, only the new commit
//! point) and takes the answers back in the same order; heartbeats come in a stream of their
//! own, through here too. Sent strictly one at a time, a write that arrives while the request
//! announcing the previous write's commit is out waits for that request's round trip before its
//! entry even leaves: with one client writing, that is every write. Here a request carrying
//! entries leaves at once when all that is out carries none. Entries still wait behind entries,
//! so that under load each request carries everything appended during the round before it, as
//! many entries per follower fsync as before.
//!
//! The connection keeps requests in order and the follower hands each to openraft as it
//! arrives, so a request always finds the entries of the one before it in the follower's log;
//! were one ever refused for a gap, openraft would treat it as any conflict and send again from
//! the follower's last entry.

use std::collections::VecDeque;

use futures::stream::FuturesOrdered;
use futures::Stream;
use futures::StreamExt;
use openraft::base::BoxFuture;
use openraft::base::BoxStream;
use openraft::error::NetworkError;
use openraft::error::RPCError;
use openraft::network::RPCOption;
use openraft::raft::AppendEntriesRequest;
use openraft::raft::AppendEntriesResponse;
use openraft::raft::StreamAppendError;
use openraft::raft::StreamAppendResult;

use super::raft_network::PeerNetwork;
use crate::types::LogId;
use crate::types::TypeConfig;

/// AppendEntries requests of one stream that may be unanswered at once: at most one of them
/// carries entries, so two lets entries leave while a request without any is out.
const APPENDS_IN_FLIGHT: usize = 2;

/// What openraft takes back for each request, in the order it sent them.
pub(super) type Answer = Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>>;

/// An answer, and whether the requests after it may still be answered (openraft ends a stream
/// at the first refusal or error, and at an append the follower took only part of).
type Answered = (Answer, bool);

/// Sends the requests of `input` to `network`'s follower as the module describes, and yields
/// the answers in order until the first one after which no more can follow.
pub(super) fn pipelined<'s, S>(
    network: &'s PeerNetwork,
    input: S,
    option: RPCOption,
) -> BoxStream<'s, Answer>
where
    S: Stream<Item = AppendEntriesRequest<TypeConfig>> + Send + Unpin + 'static,
{
    let pipeline = Pipeline {
        network,
        input: Some(input),
        in_flight: FuturesOrdered::new(),
        carrying_entries: VecDeque::new(),
        option,
    };
    Box::pin(futures::stream::unfold(
        Some(pipeline),
        |pipeline| async move {
            let mut pipeline = pipeline?;
            let (answer, more) = pipeline.next_answer().await?;
            Some((answer, more.then_some(pipeline)))
        },
    ))
}

struct Pipeline<'s, S> {
    network: &'s PeerNetwork,
    /// `None` once openraft has no more requests for this stream.
    input: Option<S>,
    in_flight: FuturesOrdered<BoxFuture<'s, Answered>>,
    /// Whether each request in `in_flight`, oldest first, carries entries.
    carrying_entries: VecDeque<bool>,
    option: RPCOption,
}

impl<'s, S> Pipeline<'s, S>
where
    S: Stream<Item = AppendEntriesRequest<TypeConfig>> + Send + Unpin + 'static,
{
    /// Sends what openraft has while there is room, and returns the oldest request's answer as
    /// soon as it is in; `None` when every request has been answered and no more will come.
    async fn next_answer(&mut self) -> Option<Answered> {
        loop {
            let room =
                self.in_flight.len() < APPENDS_IN_FLIGHT && !self.carrying_entries.contains(&true);
            let Pipeline {
                input,
                in_flight,
                carrying_entries,
                ..
            } = self;
            let next_request = match input {
                Some(input) if room && in_flight.is_empty() => input.next().await,
                Some(input) if room => tokio::select! {
                    biased;
                    answered = in_flight.next() => {
                        carrying_entries.pop_front();
                        return answered;
                    }
                    next_request = input.next() => next_request,
                },
                _ => {
                    let answered = in_flight.next().await;
                    carrying_entries.pop_front();
                    return answered;
                }
            };
            match next_request {
                Some(request) => self.send(request),
                None => self.input = None,
            }
        }
    }

    fn send(&mut self, request: AppendEntriesRequest<TypeConfig>) {
        let prev = request.prev_log_id;
        let last = request.entries.last().map(|entry| entry.log_id).or(prev);
        let network = self.network;
        let option = self.option.clone();
        self.carrying_entries.push_back(!request.entries.is_empty());
        self.in_flight.push_back(Box::pin(async move {
            let response = network.send_append(request, option).await;
            answered(response, prev, last)
        }));
    }
}

/// openraft's reading of a follower's `response` to the entries after `prev` up to `last`.
fn answered(
    response: Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>>,
    prev: Option<LogId>,
    last: Option<LogId>,
) -> Answered {
    match response {
        Ok(AppendEntriesResponse::Success) => (Ok(Ok(last)), true),
        Ok(AppendEntriesResponse::PartialSuccess(upto)) => (Ok(Ok(upto)), upto == last),
        Ok(AppendEntriesResponse::Conflict) => match prev {
            Some(prev) => (Ok(Err(StreamAppendError::Conflict(prev))), false),
            // Every log agrees on what precedes its first entry: a peer saying otherwise is
            // broken, and the request counts as failed.
            None => (
                Err(RPCError::Network(NetworkError::from_string(
                    "the follower reported a conflict before the first entry",
                ))),
                false,
            ),
        },
        Ok(AppendEntriesResponse::HigherVote(vote)) => {
            (Ok(Err(StreamAppendError::HigherVote(vote))), false)
        }
        Err(e) => (Err(e), false),
    }
}

#[cfg(test)]
mod tests {
    use openraft::testing::log_id;

    use super::*;
    use crate::types::Vote;

    fn ids() -> (Option<LogId>, Option<LogId>) {
        (
            Some(log_id::<TypeConfig>(1, 1, 4)),
            Some(log_id::<TypeConfig>(1, 1, 9)),
        )
    }

    #[test]
    fn a_success_acknowledges_the_last_entry_sent_and_the_stream_goes_on() {
        let (prev, last) = ids();
        let (answer, more) = answered(Ok(AppendEntriesResponse::Success), prev, last);
        assert_eq!(answer.unwrap(), Ok(last));
        assert!(more);
    }

    #[test]
    fn a_request_without_entries_is_acknowledged_up_to_the_entry_before_it() {
        let (prev, _) = ids();
        let (answer, more) = answered(Ok(AppendEntriesResponse::Success), prev, prev);
        assert_eq!(answer.unwrap(), Ok(prev));
        assert!(more);
    }

    #[test]
    fn a_partial_success_ends_the_stream_unless_it_took_everything() {
        let (prev, last) = ids();
        let part = Some(log_id::<TypeConfig>(1, 1, 6));
        let (answer, more) = answered(Ok(AppendEntriesResponse::PartialSuccess(part)), prev, last);
        assert_eq!(answer.unwrap(), Ok(part));
        assert!(
            !more,
            "the requests after it assume entries the follower does not have"
        );
        let (_, more) = answered(Ok(AppendEntriesResponse::PartialSuccess(last)), prev, last);
        assert!(more);
    }

    #[test]
    fn a_conflict_names_the_entry_before_the_request_and_ends_the_stream() {
        let (prev, last) = ids();
        let (answer, more) = answered(Ok(AppendEntriesResponse::Conflict), prev, last);
        assert!(matches!(answer, Ok(Err(StreamAppendError::Conflict(at))) if Some(at) == prev));
        assert!(!more);
    }

    #[test]
    fn a_conflict_claimed_before_the_first_entry_is_a_failed_request() {
        let (_, last) = ids();
        let (answer, more) = answered(Ok(AppendEntriesResponse::Conflict), None, last);
        assert!(matches!(answer, Err(RPCError::Network(_))));
        assert!(!more);
    }

    #[test]
    fn a_higher_vote_ends_the_stream() {
        let (prev, last) = ids();
        let vote = Vote::new(5, 2);
        let (answer, more) = answered(Ok(AppendEntriesResponse::HigherVote(vote)), prev, last);
        assert!(matches!(answer, Ok(Err(StreamAppendError::HigherVote(higher))) if higher == vote));
        assert!(!more);
    }
}
