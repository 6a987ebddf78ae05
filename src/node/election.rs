//! When this node campaigns: openraft's election timing for the user's `-election-timeout`, and a
//! restarted member's campaigns soon after start-up instead of a whole election timeout later.

use std::sync::Arc;
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;

use super::millis;
use super::Node;
use crate::error::Error;
use crate::error::Result;

/// How many heartbeats must fit in an election timeout (etcd refuses less than 5 as well): fewer,
/// and a follower would start elections whenever one or two heartbeats are late.
const MIN_HEARTBEATS_PER_ELECTION: u32 = 5;

/// openraft's election settings for the user's `-election-timeout` E: a follower that has heard
/// nothing from a leader for 7E/6 to 4E/3 (at random) starts an election, and a vote request may
/// take E/2 to be answered.
///
/// openraft counts from the leader's lease: a follower first waits it out (openraft sets it to
/// `election_timeout_max` and every heartbeat renews it; meanwhile the follower refuses to vote
/// for anyone else), then a timeout drawn from `[election_timeout_min, election_timeout_max)`,
/// so an election starts between `min + max` and `2 * max` after the last heartbeat; a vote
/// request is given `min` to be answered, and the voter's fsync of its vote is part of that.
/// Handing openraft E as its minimum and 2E as its maximum, as ondisk did, meant 3E to 4E: 3 to
/// 4 seconds without a leader after a crash at the default 1 s. min = E/2 and max = 2E/3 give
/// 1.17 to 1.33 s (etcd: E to 2E), a window wide enough that two followers rarely campaign at
/// once, and a vote that survives a disk whose fsync takes hundreds of milliseconds (with
/// min = E/3, vote answers came too late while other processes loaded this machine's disk, and
/// the followers campaigned in vain for seconds).
///
/// Timing decides only how soon an election starts, never whether a write is safe: votes and
/// commits are decided by quorums, and linearizable reads confirm leadership with a quorum
/// (ReadIndex) instead of trusting a lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ElectionTiming {
    pub(super) min_ms: u64,
    pub(super) max_ms: u64,
}

impl ElectionTiming {
    /// Refuses an election timeout that does not span [`MIN_HEARTBEATS_PER_ELECTION`] heartbeats.
    pub(super) fn new(heartbeat: Duration, election_timeout: Duration) -> Result<Self> {
        if election_timeout < heartbeat * MIN_HEARTBEATS_PER_ELECTION {
            return Err(Error::Config(format!(
                "-election-timeout ({election_timeout:?}) must be at least \
                 {MIN_HEARTBEATS_PER_ELECTION} times -heartbeat ({heartbeat:?})"
            )));
        }
        let election_ms = millis(election_timeout);
        Ok(ElectionTiming {
            min_ms: election_ms / 2,
            max_ms: election_ms * 2 / 3,
        })
    }
}

impl Node {
    /// After a restart, campaigns, Pre-Vote first, every one to two heartbeats (at random) until
    /// a leader of a newer term is known, for at most one election timeout; a round is skipped
    /// when the term has risen since the previous one (an election is under way).
    ///
    /// openraft gives a node restarted without a leader a whole election timeout before it
    /// campaigns, so a cluster restarted at once served nothing for 0.5 to 0.7 s at the default E
    /// of 1 s (a new cluster's founding members campaign as they initialize, and are not delayed).
    /// Campaigning early disturbs no one: a Pre-Vote round is refused by every voter that still
    /// hears from a leader (and not even sent while this node does), so a node restarted into a
    /// working cluster raises no term. The delay is random so that members started together
    /// rarely campaign at the same moment, and at least a heartbeat, so a live leader is usually
    /// heard first. A risen term means a member has campaigned: this node voted in that election,
    /// may not have heard from its winner yet, and would depose it; only a round that passes with
    /// neither a new leader nor a new term shows that election failed (all members campaigned at
    /// once and split the vote), and then this node tries again. The leader this node knew
    /// before the restart is no evidence: it is restored from the vote on disk. After one
    /// election timeout openraft's own timer, which runs all along, is left in charge; a node
    /// that is not a voter ignores the trigger.
    pub(super) fn campaign_soon_after_restart(
        self: &Arc<Self>,
        heartbeat: Duration,
        election_timeout: Duration,
    ) {
        let node = Arc::downgrade(self);
        let give_up_at = tokio::time::Instant::now() + election_timeout;
        let term_at_start = self.raft.metrics().borrow_watched().current_term;
        tokio::spawn(async move {
            let mut term_seen = term_at_start;
            loop {
                tokio::time::sleep(heartbeat.mul_f64(rand::random_range(1.0..2.0))).await;
                if tokio::time::Instant::now() >= give_up_at {
                    return;
                }
                let Some(node) = node.upgrade() else { return };
                let (leader, term) = {
                    let metrics = node.raft.metrics();
                    let metrics = metrics.borrow_watched();
                    (metrics.current_leader, metrics.current_term)
                };
                if leader.is_some() && term > term_at_start {
                    return;
                }
                if term > term_seen {
                    term_seen = term;
                    continue;
                }
                if let Err(e) = node.raft.trigger().elect(true).await {
                    tracing::debug!("no early campaign: raft has stopped ({e})");
                    return;
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// openraft starts an election `min + max` to `2 * max` after the last heartbeat (its lease,
    /// `max`, then a timeout drawn from `[min, max)`) and gives a vote `min`: that must be 7E/6
    /// to 4E/3, and E/2.
    #[test]
    fn an_election_starts_seven_sixths_to_four_thirds_election_timeouts_after_the_last_heartbeat() {
        for (heartbeat, election) in [(100, 1200), (50, 600), (10, 60), (200, 3000)] {
            let timing = ElectionTiming::new(
                Duration::from_millis(heartbeat),
                Duration::from_millis(election),
            )
            .unwrap_or_else(|e| panic!("{heartbeat}/{election}: {e}"));
            assert_eq!(
                timing.min_ms + timing.max_ms,
                election * 7 / 6,
                "{timing:?}"
            );
            assert_eq!(2 * timing.max_ms, election * 4 / 3, "{timing:?}");
            assert_eq!(timing.min_ms, election / 2, "{timing:?}");
            assert!(timing.min_ms > heartbeat, "{timing:?}");
        }
    }

    #[test]
    fn an_election_timeout_shorter_than_five_heartbeats_is_refused() {
        let refused = ElectionTiming::new(Duration::from_millis(100), Duration::from_millis(499));
        let message = refused.map(drop).map_err(|e| e.to_string());
        assert_eq!(
            message,
            Err("-election-timeout (499ms) must be at least 5 times -heartbeat (100ms)".into())
        );
    }
}
