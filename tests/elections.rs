//! Elections happen when a leader is gone, and only then. A node that comes back after being cut
//! off or paused, or a leader that stalls for less than an election timeout, must not make the
//! cluster elect again: every election is a stretch without writes. Each test checks behaviour
//! (the leader and term every node reports), never how long anything took.
//!
//! The clusters run in network namespaces (the fault-injection suite's, see docs/TESTING.md), so a
//! partition cuts real packets; this needs root, as that suite does.

#[allow(dead_code)]
#[path = "chaos/cluster.rs"]
mod cluster;
mod common;
#[allow(dead_code)]
#[path = "chaos/netns.rs"]
mod netns;
#[allow(dead_code)]
#[path = "chaos/tls.rs"]
mod tls;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use cluster::ChaosCluster;
use common::{poll_until, LEADER_TIMEOUT, NODE_ELECTION_TIMEOUT, POLL_INTERVAL};

/// The tests run one at a time: each counts on its nodes getting the CPU when their timers fire,
/// which several clusters sharing two cores at once would put at risk.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// How long nodes must agree again after a fault is healed.
const AGREE_TIMEOUT: Duration = Duration::from_secs(20);

/// The nodes' election timeout: a follower that hears nothing from a leader for 7/6 to 4/3 of
/// this starts an election.
fn election_timeout() -> Duration {
    humantime::parse_duration(NODE_ELECTION_TIMEOUT).expect("the harness's election timeout")
}

/// How long a fault that should provoke elections is held: several times the longest a follower
/// waits before it campaigns, so a node that would raise its term does so more than once.
fn long_fault() -> Duration {
    election_timeout() * 6
}

/// How long the cluster is watched after a fault is healed: three times the longest a follower
/// waits before it campaigns, so an election the fault provoked cannot go unseen.
fn watch_window() -> Duration {
    election_timeout() * 4
}

/// `(leader, term)` as node `id` reports them, if it answers and knows a leader.
fn view(cluster: &ChaosCluster, id: usize) -> Option<(usize, u64)> {
    let status = cluster.status(id)?;
    let leader = usize::try_from(status["leader"].as_u64()?).ok()?;
    Some((leader, status["term"].as_u64()?))
}

/// Waits until every node in `ids` names the same leader, one of them that reports itself as
/// leading, and returns `(leader, term)`.
fn agreed(cluster: &ChaosCluster, ids: &[usize], within: Duration, what: &str) -> (usize, u64) {
    let found = poll_until(within, || {
        let views: Vec<(usize, u64)> = ids
            .iter()
            .map(|&id| view(cluster, id))
            .collect::<Option<_>>()?;
        let first = views[0];
        let leads = ids.contains(&first.0)
            && cluster
                .status(first.0)
                .is_some_and(|s| s["state"] == "Leader");
        (leads && views.iter().all(|&v| v == first)).then_some(first)
    });
    found.unwrap_or_else(|| {
        panic!(
            "{what}: nodes {ids:?} did not agree on a leader within {within:?}\n{}",
            statuses(cluster)
        )
    })
}

/// Polls nodes `ids` for `window` and fails as soon as one names another leader or term than
/// `expected`: whatever happened to the cluster, the leader and term stay as they were.
fn assert_steady(
    cluster: &ChaosCluster,
    ids: &[usize],
    expected: (usize, u64),
    window: Duration,
    when: &str,
) {
    let until = Instant::now() + window;
    while Instant::now() < until {
        for &id in ids {
            let seen = view(cluster, id);
            if seen.is_some_and(|seen| seen != expected) {
                panic!(
                    "{when}: node {id} reports (leader, term) {seen:?}, expected {expected:?}: the \
                     cluster elected again\n{}",
                    statuses(cluster)
                );
            }
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// Every node's status, for failure messages.
fn statuses(cluster: &ChaosCluster) -> String {
    cluster
        .ids()
        .into_iter()
        .map(|id| format!("  node {id}: {:?}\n", cluster.status(id)))
        .collect()
}

/// A started 3-node cluster with its leader and term.
fn started() -> (ChaosCluster, usize, u64) {
    let cluster = ChaosCluster::start(3, &[], tls::Security::Plaintext);
    let (leader, term) = agreed(&cluster, &cluster.ids(), LEADER_TIMEOUT, "at start");
    (cluster, leader, term)
}

fn others(cluster: &ChaosCluster, id: usize) -> Vec<usize> {
    cluster
        .ids()
        .into_iter()
        .filter(|&other| other != id)
        .collect()
}

/// How a node is taken away from the others, and brought back.
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// Its packets to and from the others are dropped (both directions).
    Partition,
    /// SIGSTOP, then SIGCONT.
    Pause,
}

impl Fault {
    fn inject(self, cluster: &mut ChaosCluster, id: usize) {
        match self {
            Fault::Partition => {
                let rest = others(cluster, id);
                cluster.network().split(&[id], &rest);
            }
            Fault::Pause => cluster.pause(id),
        }
    }

    fn heal(self, cluster: &mut ChaosCluster, id: usize) {
        match self {
            Fault::Partition => cluster.network().heal(),
            Fault::Pause => cluster.resume(id),
        }
    }
}

/// A follower taken away for several election timeouts comes back as a follower of the same
/// leader, in the same term. Without Pre-Vote it would campaign while away, raise its term, and
/// on its return that term would depose the leader.
fn follower_comes_back(fault: Fault) {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (mut cluster, leader, term) = started();
    let follower = others(&cluster, leader)[0];
    fault.inject(&mut cluster, follower);
    let majority = others(&cluster, follower);
    assert_steady(
        &cluster,
        &majority,
        (leader, term),
        long_fault(),
        &format!("while node {follower} was away ({fault:?})"),
    );
    fault.heal(&mut cluster, follower);
    agreed(
        &cluster,
        &cluster.ids(),
        AGREE_TIMEOUT,
        "after the follower came back",
    );
    assert_steady(
        &cluster,
        &cluster.ids(),
        (leader, term),
        watch_window(),
        &format!("after node {follower} came back ({fault:?})"),
    );
}

/// A leader taken away is replaced; when it comes back it follows the new leader, and nobody
/// elects again.
fn old_leader_comes_back(fault: Fault) {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (mut cluster, old_leader, old_term) = started();
    fault.inject(&mut cluster, old_leader);
    let majority = others(&cluster, old_leader);
    let (leader, term) = agreed(
        &cluster,
        &majority,
        LEADER_TIMEOUT,
        "after the leader went away",
    );
    assert!(
        leader != old_leader && term > old_term,
        "({leader}, {term}) after ({old_leader}, {old_term})"
    );
    assert_steady(
        &cluster,
        &majority,
        (leader, term),
        long_fault(),
        &format!("while node {old_leader} was away ({fault:?})"),
    );
    fault.heal(&mut cluster, old_leader);
    agreed(
        &cluster,
        &cluster.ids(),
        AGREE_TIMEOUT,
        "after the old leader came back",
    );
    assert_steady(
        &cluster,
        &cluster.ids(),
        (leader, term),
        watch_window(),
        &format!("after node {old_leader} came back ({fault:?})"),
    );
}

#[test]
fn a_follower_cut_off_for_several_election_timeouts_does_not_depose_the_leader() {
    follower_comes_back(Fault::Partition);
}

#[test]
fn a_follower_paused_for_several_election_timeouts_does_not_depose_the_leader() {
    follower_comes_back(Fault::Pause);
}

#[test]
fn a_leader_cut_off_and_back_does_not_make_the_others_elect_again() {
    old_leader_comes_back(Fault::Partition);
}

#[test]
fn a_leader_paused_and_resumed_does_not_make_the_others_elect_again() {
    old_leader_comes_back(Fault::Pause);
}

/// A leader that stalls for less than an election timeout (a long garbage-collection-like pause,
/// a slow disk holding its process) is still the leader afterwards, in the same term.
#[test]
fn a_leader_paused_for_less_than_an_election_timeout_stays_leader() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (mut cluster, leader, term) = started();
    let followers = others(&cluster, leader);
    cluster.pause(leader);
    assert_steady(
        &cluster,
        &followers,
        (leader, term),
        election_timeout() * 2 / 5,
        "while the leader was paused",
    );
    cluster.resume(leader);
    assert_steady(
        &cluster,
        &cluster.ids(),
        (leader, term),
        watch_window(),
        "after the leader resumed",
    );
}

/// A founding member that starts for the first time after the others have elected a leader (a
/// user starting three nodes in three terminals, one after the other) follows that leader. If it
/// founded the cluster again, its term-1 candidacy would outrank the term-1 leader's vote (node 3
/// outranks nodes 1 and 2) and depose it.
#[test]
fn a_founding_member_started_after_the_others_elected_a_leader_follows_it() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut cluster = ChaosCluster::start_founders(3, &[1, 2], tls::Security::Plaintext);
    let (leader, term) = agreed(&cluster, &[1, 2], LEADER_TIMEOUT, "nodes 1 and 2");
    cluster.restart(3);
    agreed(
        &cluster,
        &cluster.ids(),
        AGREE_TIMEOUT,
        "after node 3 started",
    );
    assert_steady(
        &cluster,
        &cluster.ids(),
        (leader, term),
        watch_window(),
        "after node 3 started",
    );
}
