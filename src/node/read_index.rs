//! Read indexes shared by the reads waiting for them.
//!
//! A linearizable read needs an index obtained by a question (a leadership confirmation on the
//! leader, a `ReadIndex` request from a follower) asked after the read arrived. Reads that
//! arrive while a question is out cannot use its answer, but they can all use the next one: a
//! round takes every read that arrives until it asks, and asks only once the round before it
//! has been answered. So one question serves every read that arrived in the meantime, instead
//! of one question per read, and no read ever gets an index asked for before it arrived.

use std::sync::Arc;
use std::sync::Mutex;

use futures::future::BoxFuture;
use futures::future::Shared;
use futures::FutureExt;

use crate::locks::lock;
use crate::network::RemoteError;
use crate::types::NodeId;

/// A round's answer: the read index, or why there is none (the reads then retry).
pub(super) type Answer = Result<u64, RemoteError>;
type Round = Shared<BoxFuture<'static, Answer>>;

/// The rounds of one kind of question (this node's own confirmations, or questions to the
/// leader). Cheap to share: every read holds the round it joined, and any of them drives it.
#[derive(Default)]
pub(super) struct ReadRounds {
    slots: Arc<Mutex<Slots>>,
}

#[derive(Default)]
struct Slots {
    /// The round that has not asked yet: reads for the same leader join it.
    open: Option<OpenRound>,
    /// The last round that began to ask; the open round asks once it is answered.
    asking: Option<Round>,
    /// Names rounds, so that a round can tell whether it is still the open one.
    next_id: u64,
}

struct OpenRound {
    id: u64,
    /// The leader the round asks (or confirms, for this node's own rounds).
    leader: NodeId,
    round: Round,
}

impl ReadRounds {
    /// A read index for a read arriving now, from the next round that asks `leader`. `ask`
    /// makes that round's question if this read opens the round; it must not start until it is
    /// polled (an `async` block), since the round polls it only when its turn comes.
    pub(super) async fn next(
        &self,
        leader: NodeId,
        ask: impl FnOnce() -> BoxFuture<'static, Answer>,
    ) -> Answer {
        let round = {
            let mut slots = lock(&self.slots);
            match &slots.open {
                Some(open) if open.leader == leader => open.round.clone(),
                _ => self.open_round(&mut slots, leader, ask()),
            }
        };
        round.await
    }

    /// Opens a round asking `question` of `leader` after the round asking now, in place of any
    /// open round (for another leader, which keeps its reads and still asks).
    fn open_round(
        &self,
        slots: &mut Slots,
        leader: NodeId,
        question: BoxFuture<'static, Answer>,
    ) -> Round {
        let id = slots.next_id;
        slots.next_id += 1;
        let previous = slots.asking.clone();
        let shared_slots = self.slots.clone();
        let round = async move {
            if let Some(previous) = previous {
                let _ = previous.await;
            }
            {
                // From here on this round takes no more reads: they would arrive after its
                // question is asked. It becomes the round the next one waits for.
                let mut slots = lock(&shared_slots);
                if slots.open.as_ref().is_some_and(|open| open.id == id) {
                    slots.asking = slots.open.take().map(|open| open.round);
                }
            }
            question.await
        }
        .boxed()
        .shared();
        slots.open = Some(OpenRound {
            id,
            leader,
            round: round.clone(),
        });
        round
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU64;
    use std::sync::atomic::Ordering;
    use std::sync::Arc;

    use futures::FutureExt;
    use tokio::sync::Notify;

    use super::ReadRounds;

    /// A question that counts itself and answers, once released, how many had been asked.
    fn question(
        asked: &Arc<AtomicU64>,
        release: &Arc<Notify>,
    ) -> super::BoxFuture<'static, super::Answer> {
        let (asked, release) = (asked.clone(), release.clone());
        async move {
            let n = asked.fetch_add(1, Ordering::SeqCst) + 1;
            release.notified().await;
            Ok(n)
        }
        .boxed()
    }

    /// Rounds with one question out: a first read's, counted in `asked` and answered when
    /// `release` is notified. Returns the first read's task.
    struct OneOut {
        rounds: Arc<ReadRounds>,
        asked: Arc<AtomicU64>,
        release: Arc<Notify>,
    }

    impl OneOut {
        async fn start() -> (OneOut, tokio::task::JoinHandle<super::Answer>) {
            let out = OneOut {
                rounds: Arc::new(ReadRounds::default()),
                asked: Arc::new(AtomicU64::new(0)),
                release: Arc::new(Notify::new()),
            };
            let first = out.read();
            out.until_asked(1).await;
            (out, first)
        }

        /// A read of leader 1 on its own task, asking a counted question if it opens a round.
        fn read(&self) -> tokio::task::JoinHandle<super::Answer> {
            let (rounds, asked, release) = (
                self.rounds.clone(),
                self.asked.clone(),
                self.release.clone(),
            );
            tokio::spawn(async move { rounds.next(1, || question(&asked, &release)).await })
        }

        async fn until_asked(&self, questions: u64) {
            while self.asked.load(Ordering::SeqCst) < questions {
                tokio::task::yield_now().await;
            }
        }
    }

    #[tokio::test]
    async fn reads_arriving_while_a_question_is_out_share_the_next_one() {
        // The first read opens a round, which asks at once.
        let (out, first) = OneOut::start().await;
        // Three reads arrive while it is out: they must not get its answer, and they share one
        // question, asked only after the first is answered.
        let later: Vec<_> = (0..3).map(|_| out.read()).collect();
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        assert_eq!(
            out.asked.load(Ordering::SeqCst),
            1,
            "the next round waits its turn"
        );
        out.release.notify_one();
        assert_eq!(first.await.unwrap().ok(), Some(1));
        out.until_asked(2).await;
        out.release.notify_one();
        for read in later {
            assert_eq!(
                read.await.unwrap().ok(),
                Some(2),
                "one question for all three"
            );
        }
        assert_eq!(out.asked.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_read_for_another_leader_does_not_join_the_open_round() {
        let (out, first) = OneOut::start().await;
        // Behind the question that is out: a round for leader 1, then a read for leader 2.
        let mut same = Box::pin(out.rounds.next(1, || async { Ok(10) }.boxed()));
        let mut other = Box::pin(out.rounds.next(2, || async { Ok(20) }.boxed()));
        assert!(futures::poll!(&mut same).is_pending());
        assert!(futures::poll!(&mut other).is_pending());
        out.release.notify_one();
        assert_eq!(first.await.unwrap().ok(), Some(1));
        assert_eq!(same.await.ok(), Some(10));
        assert_eq!(
            other.await.ok(),
            Some(20),
            "leader 2's read got leader 1's answer"
        );
    }
}
