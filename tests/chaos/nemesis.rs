//! The nemesis: injects one fault at a time on a seeded schedule, holds it, and heals it.
//!
//! The schedule deals the fault kinds like a deck: every kind once, in a shuffled order, then a
//! newly shuffled deck. A run always plays at least one whole deck, so every kind is injected at
//! least once whatever the run's duration.

use std::thread;
use std::time::Duration;

use super::cluster::ChaosCluster;
use super::history::Recorder;
use super::rng::Rng;

/// How long to look for the leader before a leader fault falls back to a random node.
const LEADER_WAIT: Duration = Duration::from_secs(10);

/// The kinds of fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Fault {
    /// SIGKILL of a random node, restarted after a while.
    KillNode,
    /// SIGKILL of the leader, restarted after a while.
    KillLeader,
    /// SIGKILL of every node at once, all restarted together.
    KillAll,
    /// SIGSTOP of a random node for longer than an election timeout, then SIGCONT.
    PauseNode,
    /// SIGSTOP of the leader for longer than an election timeout, then SIGCONT.
    PauseLeader,
    /// The leader cut off from every other node, both ways.
    IsolateLeader,
    /// A random minority cut off from the majority, both ways.
    SplitMinority,
    /// Traffic from one node to another dropped, the other direction intact (the leader is one of
    /// the two when known).
    OneWayCut,
    /// SIGKILL of a random node and a power cut of its file system (everything it did not fsync
    /// is lost), restarted after a while.
    PowerCutNode,
    /// SIGKILL of every node and a power cut of every file system, all restarted together.
    PowerCutAll,
}

impl Fault {
    pub const ALL: [Fault; 10] = [
        Fault::KillNode,
        Fault::KillLeader,
        Fault::KillAll,
        Fault::PauseNode,
        Fault::PauseLeader,
        Fault::IsolateLeader,
        Fault::SplitMinority,
        Fault::OneWayCut,
        Fault::PowerCutNode,
        Fault::PowerCutAll,
    ];

    /// The kinds that need the power-cut fixture.
    pub const POWER_CUTS: [Fault; 2] = [Fault::PowerCutNode, Fault::PowerCutAll];

    pub fn name(self) -> &'static str {
        match self {
            Fault::KillNode => "kill-node",
            Fault::KillLeader => "kill-leader",
            Fault::KillAll => "kill-all",
            Fault::PauseNode => "pause-node",
            Fault::PauseLeader => "pause-leader",
            Fault::IsolateLeader => "isolate-leader",
            Fault::SplitMinority => "split-minority",
            Fault::OneWayCut => "one-way-cut",
            Fault::PowerCutNode => "power-cut-node",
            Fault::PowerCutAll => "power-cut-all",
        }
    }

    /// How long the fault is held: pauses and partitions outlast the election timeout (500 ms to
    /// 1 s) so that the others elect a new leader meanwhile.
    fn hold(self, rng: &mut Rng) -> Duration {
        let ms = Duration::from_millis;
        match self {
            Fault::KillNode | Fault::KillLeader | Fault::PowerCutNode => {
                rng.duration_between(ms(200), ms(2500))
            }
            Fault::KillAll | Fault::PowerCutAll => rng.duration_between(ms(100), ms(1500)),
            Fault::PauseNode | Fault::PauseLeader => rng.duration_between(ms(1500), ms(3500)),
            Fault::IsolateLeader | Fault::SplitMinority | Fault::OneWayCut => {
                rng.duration_between(ms(1500), ms(4000))
            }
        }
    }
}

/// One injected fault, for the report and the saved history.
#[derive(Debug, Clone)]
pub struct FaultEvent {
    pub fault: Fault,
    /// What exactly was done, e.g. "paused node 2 (leader)".
    pub detail: String,
    /// On the history's clock, nanoseconds.
    pub started: u64,
    pub healed: u64,
}

/// The seeded schedule and the faults injected so far.
pub struct Nemesis {
    rng: Rng,
    kinds: Vec<Fault>,
    deck: Vec<Fault>,
    pub events: Vec<FaultEvent>,
}

impl Nemesis {
    /// A schedule over `kinds` (usually [`Fault::ALL`]).
    pub fn new(seed: u64, kinds: &[Fault]) -> Nemesis {
        Nemesis {
            rng: Rng::new(seed),
            kinds: kinds.to_vec(),
            deck: Vec::new(),
            events: Vec::new(),
        }
    }

    /// Whether every kind has been injected at least once.
    pub fn covered_every_kind(&self) -> bool {
        self.kinds
            .iter()
            .all(|k| self.events.iter().any(|e| e.fault == *k))
    }

    /// Waits a random quiet time, then injects the next fault, holds it, and heals it.
    pub fn step(&mut self, cluster: &mut ChaosCluster, recorder: &Recorder, quiet: Duration) {
        thread::sleep(self.rng.duration_between(quiet / 2, quiet));
        if self.deck.is_empty() {
            self.deck = self.kinds.clone();
            self.rng.shuffle(&mut self.deck);
        }
        let fault = self.deck.pop().expect("a non-empty deck");
        let hold = fault.hold(&mut self.rng);
        let started = recorder.now();
        eprintln!(
            "nemesis: [{:.3}s] {} ...",
            started as f64 / 1e9,
            fault.name()
        );
        let detail = self.inject(cluster, fault, hold);
        let event = FaultEvent {
            fault,
            detail,
            started,
            healed: recorder.now(),
        };
        eprintln!(
            "nemesis: [{:.3}s .. {:.3}s] {}: {}",
            event.started as f64 / 1e9,
            event.healed as f64 / 1e9,
            fault.name(),
            event.detail
        );
        self.events.push(event);
    }

    /// Injects `fault`, holds it for `hold` and heals it; returns what was done.
    fn inject(&mut self, cluster: &mut ChaosCluster, fault: Fault, hold: Duration) -> String {
        let ids = cluster.ids();
        let random = self.rng.pick(&ids);
        let secs = hold.as_secs_f64();
        match fault {
            Fault::KillNode => {
                cluster.kill(random);
                thread::sleep(hold);
                cluster.restart(random);
                format!("killed node {random}, restarted after {secs:.1}s")
            }
            Fault::KillLeader => {
                let (leader, which) = self.leader_or_random(cluster);
                cluster.kill(leader);
                thread::sleep(hold);
                cluster.restart(leader);
                format!("killed node {leader} ({which}), restarted after {secs:.1}s")
            }
            Fault::KillAll => {
                for &id in &ids {
                    cluster.kill(id);
                }
                thread::sleep(hold);
                cluster.restart_all(&ids);
                format!("killed every node, restarted after {secs:.1}s")
            }
            Fault::PowerCutNode => {
                cluster.kill(random);
                let lost = cluster.cut_power(random);
                thread::sleep(hold);
                cluster.restart(random);
                format!(
                    "killed node {random} and cut its power ({lost}), restarted after {secs:.1}s"
                )
            }
            Fault::PowerCutAll => {
                for &id in &ids {
                    cluster.kill(id);
                }
                let lost: Vec<String> = ids.iter().map(|&id| cluster.cut_power(id)).collect();
                thread::sleep(hold);
                cluster.restart_all(&ids);
                format!(
                    "killed every node and cut their power ({}), restarted after {secs:.1}s",
                    lost.join("; ")
                )
            }
            Fault::PauseNode => {
                cluster.pause(random);
                thread::sleep(hold);
                cluster.resume(random);
                format!("paused node {random} for {secs:.1}s")
            }
            Fault::PauseLeader => {
                let (leader, which) = self.leader_or_random(cluster);
                cluster.pause(leader);
                thread::sleep(hold);
                cluster.resume(leader);
                format!("paused node {leader} ({which}) for {secs:.1}s")
            }
            Fault::IsolateLeader => {
                let (leader, which) = self.leader_or_random(cluster);
                let others: Vec<usize> = ids.iter().copied().filter(|&i| i != leader).collect();
                self.partition(cluster, &[leader], &others, hold);
                format!("isolated node {leader} ({which}) for {secs:.1}s")
            }
            Fault::SplitMinority => {
                let mut order = ids.clone();
                self.rng.shuffle(&mut order);
                let (minority, majority) = order.split_at((ids.len() - 1) / 2);
                self.partition(cluster, minority, majority, hold);
                format!("split {minority:?} from {majority:?} for {secs:.1}s")
            }
            Fault::OneWayCut => {
                let (leader, which) = self.leader_or_random(cluster);
                let others: Vec<usize> = ids.iter().copied().filter(|&i| i != leader).collect();
                let other = self.rng.pick(&others);
                let (from, to) = if self.rng.below(2) == 0 {
                    (leader, other)
                } else {
                    (other, leader)
                };
                cluster.network().cut(from, to);
                thread::sleep(hold);
                cluster.network().heal();
                format!("dropped traffic from node {from} to node {to} for {secs:.1}s (node {leader} is the {which})")
            }
        }
    }

    fn partition(&mut self, cluster: &mut ChaosCluster, a: &[usize], b: &[usize], hold: Duration) {
        cluster.network().split(a, b);
        thread::sleep(hold);
        cluster.network().heal();
    }

    /// The leader, or a random node (said so) when the nodes do not agree on one in time.
    fn leader_or_random(&mut self, cluster: &ChaosCluster) -> (usize, &'static str) {
        match cluster.wait_for_leader(LEADER_WAIT) {
            Some(leader) => (leader, "leader"),
            None => (
                self.rng.pick(&cluster.ids()),
                "no agreed leader; a random node",
            ),
        }
    }
}
