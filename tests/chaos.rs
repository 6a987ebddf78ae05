//! The fault-injection suite: real `ondisk` processes, real faults (SIGKILL, SIGSTOP, network
//! partitions, power cuts), recorded client histories, and a checker that can say "not
//! linearizable".
//!
//! A run starts a cluster in private network namespaces, lets concurrent clients hammer a few
//! keys over HTTP while the nemesis injects faults on a seeded schedule, heals everything, and
//! then checks that (1) the history is linearizable, (2) no acknowledged write was lost (final
//! reads on every node fit the history), (3) a leader is elected and writes succeed within a
//! bounded time, (4) every node holds the same data, and (5) the committed history (a watch from
//! revision 1) holds every acknowledged write at its revision, explains every txn and read, and
//! is exactly what every watcher saw. A failing run saves its history, the nodes' logs and the
//! report in a folder it names, with the seed to replay it.
//!
//! A run can also go over mutual TLS (`tls.rs`): each node on its own certificate, made for the
//! run by `ondisk ctl certs`, on the raft port and the client port, and every client of the
//! harness on HTTPS with a client certificate. CI runs one shorter seed that way, beside the
//! plaintext runs.
//!
//! Settings come from the environment (see docs/TESTING.md): `ONDISK_CHAOS_SEED`,
//! `ONDISK_CHAOS_DURATION`, `ONDISK_CHAOS_RUNS`, `ONDISK_CHAOS_NODES`, `ONDISK_CHAOS_CLIENTS`,
//! `ONDISK_CHAOS_KEYS`, `ONDISK_CHAOS_WATCHERS`; `ONDISK_CHAOS_TLS=1` runs over mutual TLS, and
//! `ONDISK_CHAOS_FAULTS` (fault names, comma-separated) limits the kinds the nemesis deals.

#[path = "chaos/checker.rs"]
mod checker;
#[path = "chaos/cluster.rs"]
mod cluster;
mod common;
#[path = "chaos/history.rs"]
mod history;
#[path = "chaos/nemesis.rs"]
mod nemesis;
#[path = "chaos/netns.rs"]
mod netns;
#[path = "chaos/report.rs"]
mod report;
#[path = "chaos/revisions.rs"]
mod revisions;
#[path = "chaos/rng.rs"]
mod rng;
#[path = "chaos/tls.rs"]
mod tls;
#[path = "chaos/watchers.rs"]
mod watchers;
#[path = "chaos/workload.rs"]
mod workload;

use std::panic::{self, AssertUnwindSafe};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use checker::Verdict;
use cluster::ChaosCluster;
use history::{Call, Op, Outcome, Recorder};
use nemesis::{Fault, Nemesis};
use report::CheckLine;
use revisions::Committed;
use tls::Security;
use watchers::{WatcherLog, Watchers};
use workload::{Clients, Workload, TXN_GROUP, TXN_KEYS};

/// Node options for every run besides the harness's defaults (2 s timeout, 50 ms heartbeat,
/// 500 ms election timeout): frequent snapshots and a short log tail, so that nodes brought back
/// after a fault often catch up through a snapshot transfer rather than the log.
const NODE_ARGS: [&str; 4] = ["--snapshot-entries", "200", "--compaction-overhead", "20"];
/// How long a fresh cluster may take to elect its first leader.
const FIRST_LEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on each post-run check that waits for the healed cluster (liveness, final reads,
/// convergence).
const HEALED_TIMEOUT: Duration = Duration::from_secs(30);
/// Upper bound of the random quiet time between two faults.
const QUIET: Duration = Duration::from_secs(2);
/// However long faults take, a run stops injecting this long after its planned end.
const OVERRUN: Duration = Duration::from_secs(300);
/// How long a deliberately broken build may go uncaught before that test fails.
const CATCH_BUDGET: Duration = Duration::from_secs(120);
/// Client ids from here on are the final readers (one per node).
const FINAL_READER: usize = 10_000;
/// The fault kinds of the bounded TLS run. Each breaks the members' connections another way, so
/// every path by which the TLS transport must recover is taken: a peer's process gone and a new
/// one to handshake with (kill-node, kill-leader), a peer that stops reading mid-stream
/// (pause-leader), and connections that stall on links cut both ways or one way, then heal
/// (isolate-leader, split-minority, one-way-cut); and one deck of them fits in about 20 s. The
/// other kinds test storage and the same handshakes again; the plaintext runs and
/// `ONDISK_CHAOS_TLS=1 make chaos` deal them all.
const TLS_RUN_FAULTS: [Fault; 6] = [
    Fault::KillNode,
    Fault::KillLeader,
    Fault::PauseLeader,
    Fault::IsolateLeader,
    Fault::SplitMinority,
    Fault::OneWayCut,
];
/// Planned length of the bounded TLS run: about what one deck of [`TLS_RUN_FAULTS`] takes, so
/// it adds little to the suite's time.
const TLS_RUN_DURATION: Duration = Duration::from_secs(20);

/// A run's settings, from the environment with defaults fit for CI.
#[derive(Debug, Clone)]
struct Settings {
    seed: u64,
    duration: Duration,
    runs: u64,
    nodes: usize,
    clients: usize,
    keys: usize,
    watchers: usize,
    /// Plaintext, or mutual TLS on both ports.
    security: Security,
    /// The kinds the nemesis deals (those needing the power-cut fixture are left out where it is
    /// not available).
    faults: Vec<Fault>,
}

impl Settings {
    /// Reads the settings; `duration` is the default run length, `faults` the default kinds.
    fn from_env(duration: Duration, faults: &[Fault]) -> Settings {
        let seed = env("ONDISK_CHAOS_SEED").map_or_else(fresh_seed, |s| {
            s.parse()
                .unwrap_or_else(|_| panic!("ONDISK_CHAOS_SEED must be a number, not {s:?}"))
        });
        let duration = env("ONDISK_CHAOS_DURATION").map_or(duration, |d| {
            humantime::parse_duration(&d)
                .unwrap_or_else(|e| panic!("ONDISK_CHAOS_DURATION {d:?}: {e} (try 40s or 30m)"))
        });
        let number = |name: &str, default: u64| {
            env(name).map_or(default, |v| {
                v.parse()
                    .unwrap_or_else(|_| panic!("{name} must be a number, not {v:?}"))
            })
        };
        Settings {
            seed,
            duration,
            runs: number("ONDISK_CHAOS_RUNS", 3),
            nodes: number("ONDISK_CHAOS_NODES", 3) as usize,
            clients: number("ONDISK_CHAOS_CLIENTS", 6) as usize,
            keys: number("ONDISK_CHAOS_KEYS", 4) as usize,
            watchers: number("ONDISK_CHAOS_WATCHERS", 3) as usize,
            security: env("ONDISK_CHAOS_TLS").map_or(Security::Plaintext, |v| {
                match v.trim().to_ascii_lowercase().as_str() {
                    "1" | "true" | "yes" => Security::MutualTls,
                    "0" | "false" | "no" => Security::Plaintext,
                    _ => panic!("ONDISK_CHAOS_TLS must be 1 or 0, not {v:?}"),
                }
            }),
            faults: env("ONDISK_CHAOS_FAULTS")
                .map_or_else(|| faults.to_vec(), |v| parse_faults(&v)),
        }
    }

    fn workload(&self, cluster: &ChaosCluster) -> Workload {
        Workload {
            clients: self.clients,
            keys: self.keys,
            nodes: cluster
                .ids()
                .into_iter()
                .map(|id| cluster.base_url(id))
                .collect(),
            transport: cluster.transport().clone(),
        }
    }

    /// What runs are called in messages and reports.
    fn run_name(&self) -> &'static str {
        match self.security {
            Security::Plaintext => "chaos run",
            Security::MutualTls => "chaos run over mutual TLS",
        }
    }

    /// The command that replays the run with `seed`: `make chaos` with every setting the
    /// schedule depends on.
    fn replay(&self, seed: u64) -> String {
        let mut command = Vec::new();
        if self.security == Security::MutualTls {
            command.push("ONDISK_CHAOS_TLS=1".to_string());
        }
        if self.faults != Fault::ALL {
            let names: Vec<&str> = self.faults.iter().map(|f| f.name()).collect();
            command.push(format!("ONDISK_CHAOS_FAULTS={}", names.join(",")));
        }
        command.push(format!(
            "make chaos SEED={seed} DURATION={}",
            humantime::format_duration(self.duration)
        ));
        command.join(" ")
    }
}

/// The fault kinds named in `list` (comma-separated, as the report names them).
fn parse_faults(list: &str) -> Vec<Fault> {
    let faults: Vec<Fault> = list
        .split(',')
        .map(str::trim)
        .filter(|name| !name.is_empty())
        .map(|name| {
            Fault::ALL
                .into_iter()
                .find(|f| f.name() == name)
                .unwrap_or_else(|| {
                    let known: Vec<&str> = Fault::ALL.iter().map(|f| f.name()).collect();
                    panic!("ONDISK_CHAOS_FAULTS: no fault kind {name:?} (known: {known:?})")
                })
        })
        .collect();
    assert!(
        !faults.is_empty(),
        "ONDISK_CHAOS_FAULTS names no fault kind"
    );
    faults
}

/// A non-empty environment variable.
fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// A seed for a run nobody asked to replay.
fn fresh_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    rng::Rng::new(nanos ^ u64::from(std::process::id())).next_u64() >> 1
}

/// The bounded run `make test` includes: several seeds, each covering every fault kind.
#[test]
fn ci_bounded_runs_keep_every_promise() {
    let settings = Settings::from_env(Duration::from_secs(40), &Fault::ALL);
    let mut seed = settings.seed;
    for _ in 0..settings.runs {
        chaos_run(&settings, seed);
        seed = rng::Rng::new(seed).next_u64() >> 1;
    }
}

/// The bounded run over mutual TLS that `make test` includes: one seed (`ONDISK_CHAOS_RUNS`
/// does not apply, `ONDISK_CHAOS_TLS` cannot turn TLS off), shorter than the plaintext runs, over
/// [`TLS_RUN_FAULTS`], with every check of a plaintext run.
#[test]
fn a_bounded_run_over_mutual_tls_keeps_every_promise() {
    let settings = Settings {
        security: Security::MutualTls,
        ..Settings::from_env(TLS_RUN_DURATION, &TLS_RUN_FAULTS)
    };
    chaos_run(&settings, settings.seed);
}

/// The long run for people: `make chaos DURATION=30m [SEED=N]`, over mutual TLS with
/// `ONDISK_CHAOS_TLS=1`.
#[test]
#[ignore = "long; run with `make chaos DURATION=30m`"]
fn long_run() {
    let settings = Settings::from_env(Duration::from_secs(30 * 60), &Fault::ALL);
    chaos_run(&settings, settings.seed);
}

/// Checks a history saved by a failed run again: `ONDISK_CHAOS_HISTORY=DIR/history.jsonl`.
#[test]
#[ignore = "needs ONDISK_CHAOS_HISTORY"]
fn recheck_saved_history() {
    let path = PathBuf::from(env("ONDISK_CHAOS_HISTORY").expect("set ONDISK_CHAOS_HISTORY"));
    let ops = history::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let checked = checker::check(&ops);
    eprintln!("{} operations: {:?}", ops.len(), checked);
    assert_eq!(checked.verdict, Verdict::Linearizable);
}

/// Reads served from the local state machine without a read index must be caught.
#[test]
fn a_build_serving_stale_reads_is_caught() {
    assert_caught("stale-reads");
}

/// Writes acknowledged before they commit must be caught.
#[test]
fn a_build_acknowledging_writes_before_commit_is_caught() {
    assert_caught("ack-before-commit");
}

/// Runs a cluster whose nodes all have the hidden `--test-fault` switch on, in rounds of client
/// load around a leader isolation or pause, checking the history after each round, until the
/// checker reports a violation; fails if none is found within [`CATCH_BUDGET`].
fn assert_caught(test_fault: &str) {
    let settings = Settings::from_env(CATCH_BUDGET, &Fault::ALL);
    eprintln!(
        "catching --test-fault {test_fault} with seed {}",
        settings.seed
    );
    let mut args = NODE_ARGS.to_vec();
    args.extend(["--test-fault", test_fault]);
    let mut cluster = ChaosCluster::start(settings.nodes, &args, settings.security);
    if cluster.wait_for_leader(FIRST_LEADER_TIMEOUT).is_none() {
        panic!("no leader elected\n{}", cluster.diagnostics());
    }
    let workload = settings.workload(&cluster);
    let recorder = Recorder::new();
    let mut nemesis = Nemesis::new(settings.seed, &[Fault::IsolateLeader, Fault::PauseLeader]);
    let deadline = Instant::now() + CATCH_BUDGET;
    for round in 0.. {
        let clients = Clients::start(
            &workload,
            settings.seed.wrapping_add(round as u64),
            round * settings.clients,
            &recorder,
        );
        nemesis.step(&mut cluster, &recorder, Duration::from_secs(1));
        clients.stop();
        let ops = recorder.ops();
        let checked = checker::check(&ops);
        if let Verdict::Violation(explanation) = &checked.verdict {
            eprintln!(
                "--test-fault {test_fault} caught after {} rounds, {} operations, checked in {:?}:\n{explanation}",
                round + 1,
                ops.len(),
                checked.elapsed
            );
            return;
        }
        if Instant::now() >= deadline {
            let header = format!("--test-fault {test_fault} NOT caught");
            let report = report::render(&header, &ops, &nemesis.events, &[]);
            panic!(
                "{report}the checker found no violation in {CATCH_BUDGET:?} (seed {}): {:?}",
                settings.seed, checked.verdict
            );
        }
    }
}

/// One chaos run with `seed`: load, faults, healing, checks, report. Panics, after saving the
/// evidence, if any check fails.
fn chaos_run(settings: &Settings, seed: u64) {
    let name = settings.run_name();
    let replay = settings.replay(seed);
    eprintln!(
        "{name}: seed {seed}, {:?}, {} nodes, {} clients, {} keys (replay: {replay})",
        settings.duration, settings.nodes, settings.clients, settings.keys
    );
    let mut cluster = ChaosCluster::start(settings.nodes, &NODE_ARGS, settings.security);
    let recorder = Recorder::new();
    let kinds: Vec<Fault> = settings
        .faults
        .iter()
        .copied()
        .filter(|kind| cluster.can_cut_power() || !Fault::POWER_CUTS.contains(kind))
        .collect();
    let mut nemesis = Nemesis::new(seed, &kinds);
    let mut checks = Vec::new();

    let first_leader = cluster.wait_for_leader(FIRST_LEADER_TIMEOUT).is_some();
    if !first_leader {
        checks.push(CheckLine {
            name: "first leader",
            passed: false,
            detail: format!("no leader within {FIRST_LEADER_TIMEOUT:?}"),
        });
    }
    let workload = settings.workload(&cluster);
    let watchers = Watchers::start(
        &workload.nodes,
        &workload.transport,
        settings.watchers,
        seed,
        &recorder,
    );
    let faults_survived = first_leader && {
        let clients = Clients::start(&workload, seed, 0, &recorder);
        let deadline = recorder.start() + settings.duration;
        let injected = panic::catch_unwind(AssertUnwindSafe(|| {
            while (Instant::now() < deadline || !nemesis.covered_every_kind())
                && Instant::now() < deadline + OVERRUN
            {
                nemesis.step(&mut cluster, &recorder, QUIET);
            }
        }));
        clients.stop();
        let crashed = cluster.exited();
        checks.push(CheckLine {
            name: "fault injection",
            passed: injected.is_ok() && crashed.is_empty() && nemesis.covered_every_kind(),
            detail: match (&injected, crashed.is_empty()) {
                (Err(panic), _) => format!("the nemesis failed: {}", panic_text(panic.as_ref())),
                (Ok(()), false) => format!("nodes {crashed:?} exited on their own"),
                (Ok(()), true) if !nemesis.covered_every_kind() => {
                    "not every fault kind was injected".into()
                }
                _ => format!("{} faults, every kind at least once", nemesis.events.len()),
            },
        });
        injected.is_ok() && crashed.is_empty()
    };
    checks.push(check_linearizable("linearizable", &recorder.ops()));
    if faults_survived {
        checks.extend(healed_checks(&cluster, settings.keys, &recorder, watchers));
    } else {
        watchers.finish(0, Duration::ZERO);
    }
    let anomalies = recorder.anomalies();
    checks.push(CheckLine {
        name: "documented answers",
        passed: anomalies.is_empty(),
        detail: anomalies.first().cloned().map_or_else(
            || "every answer was one the API documents".into(),
            |first| format!("{} undocumented answers, first: {first}", anomalies.len()),
        ),
    });

    let ops = recorder.ops();
    let header = format!("{name}, seed {seed}, {:?}", settings.duration);
    let report = report::render(&header, &ops, &nemesis.events, &checks);
    eprintln!("{report}");
    let failed: Vec<&str> = checks
        .iter()
        .filter(|c| !c.passed)
        .map(|c| c.name)
        .collect();
    if failed.is_empty() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("ondisk-chaos-{seed}-{}", std::process::id()));
    let saved = save_evidence(&dir, &ops, &nemesis, &report, &cluster);
    let details: String = checks
        .iter()
        .filter(|c| !c.passed)
        .map(|c| format!("{}: {}\n", c.name, c.detail))
        .collect();
    panic!(
        "{name} with seed {seed} failed: {failed:?}\n{details}evidence (history.jsonl, \
         faults.txt, report.txt, node logs): {} {saved}\nreplay: {replay}\nrecheck the history: \
         ONDISK_CHAOS_HISTORY={}/history.jsonl cargo test --release --test chaos -- --ignored \
         recheck_saved_history",
        dir.display(),
        dir.display()
    );
}

fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "(no message)".into())
}

fn check_linearizable(name: &'static str, ops: &[Op]) -> CheckLine {
    let checked = checker::check(ops);
    let figures = format!(
        "{} keys, {} operations searched, {} unknown writes dropped, {} states, {:.2?}",
        checked.keys,
        checked.searched_ops,
        checked.dropped_unknown,
        checked.states,
        checked.elapsed
    );
    match checked.verdict {
        Verdict::Linearizable => CheckLine {
            name,
            passed: true,
            detail: format!("linearizable ({figures})"),
        },
        Verdict::Violation(explanation) => CheckLine {
            name,
            passed: false,
            detail: format!("NOT linearizable ({figures})\n{explanation}"),
        },
        Verdict::Inconclusive(why) => CheckLine {
            name,
            passed: false,
            detail: format!("inconclusive ({figures}): {why}"),
        },
    }
}

/// The checks of the healed cluster, in order: liveness (3), no write lost (2), convergence (4)
/// and the committed history (5), for which the watchers catch up to the final revision and stop.
fn healed_checks(
    cluster: &ChaosCluster,
    keys: usize,
    recorder: &Recorder,
    watchers: Watchers,
) -> Vec<CheckLine> {
    let mut checks = vec![check_liveness(cluster)];
    let final_reads = final_reads(cluster, keys, recorder);
    let mut lost = check_linearizable("no write lost", &recorder.ops());
    if let Err(missing) = &final_reads {
        lost.passed = false;
        lost.detail = missing.clone();
    }
    checks.push(lost);
    checks.push(check_convergence(cluster));
    match final_reads {
        Ok(final_revision) => {
            let logs = watchers.finish(final_revision, HEALED_TIMEOUT);
            checks.extend(check_revisions(
                cluster,
                &recorder.ops(),
                &logs,
                final_revision,
            ));
        }
        Err(_) => drop(watchers.finish(0, Duration::ZERO)),
    }
    checks
}

/// (3) After healing, a leader is elected and a write through every node succeeds in bounded
/// time.
fn check_liveness(cluster: &ChaosCluster) -> CheckLine {
    let started = Instant::now();
    let agent = cluster.agent(Duration::from_secs(5));
    let mut written = cluster.ids();
    let done = common::poll_until(HEALED_TIMEOUT, || {
        written.retain(|&id| {
            let url = format!("{}/v1/kv/liveness", cluster.base_url(id));
            let value = format!("after-heal-via-{id}");
            let ok = common::http::request(&agent, "PUT", &url, value.as_bytes())
                .is_ok_and(|a| a.status == 204);
            !ok
        });
        written.is_empty().then_some(())
    });
    CheckLine {
        name: "liveness",
        passed: done.is_some(),
        detail: match done {
            Some(()) => format!(
                "writes through every node succeeded {:.2?} after healing",
                started.elapsed()
            ),
            None => format!(
                "no successful write through nodes {written:?} within {HEALED_TIMEOUT:?} of \
                 healing (leader: {:?})",
                cluster.leader()
            ),
        },
    }
}

/// (2) A linearizable read of every key on every node (the txn keys by a txn), added to the
/// history as the final operations; the highest revision they were read at (the final revision:
/// the clients have stopped), or `Err` if some node never answered.
fn final_reads(cluster: &ChaosCluster, keys: usize, recorder: &Recorder) -> Result<i64, String> {
    let agent = cluster.agent(Duration::from_secs(5));
    let mut final_revision = 0;
    for id in cluster.ids() {
        let call = Call::TxnRead {
            keys: TXN_KEYS.map(String::from).to_vec(),
        };
        let url = format!("{}/v1/txn", cluster.base_url(id));
        let body = serde_json::to_vec(&workload::txn_request(&call)).expect("a txn as JSON");
        let read = common::poll_until(HEALED_TIMEOUT, || {
            let invoked = recorder.now();
            let answer = common::http::request(&agent, "POST", &url, &body).ok()?;
            let (outcome, _) = workload::interpret(&call, &answer).ok()?;
            Some(Op {
                client: FINAL_READER + id,
                node: id,
                key: TXN_GROUP.to_string(),
                call: call.clone(),
                outcome,
                invoked,
                completed: recorder.now(),
                detail: format!("final read, {}", answer.status),
                read_at: None,
            })
            .filter(|op| matches!(op.outcome, Outcome::Txn { .. }))
        });
        match read {
            Some(op) => {
                if let Outcome::Txn { revision, .. } = op.outcome {
                    final_revision = final_revision.max(revision);
                }
                recorder.record(op);
            }
            None => return Err(format!("node {id} never answered a txn read")),
        }
        for key in (0..keys).map(|k| format!("k{k}")) {
            let url = format!("{}/v1/kv/{key}", cluster.base_url(id));
            let read = common::poll_until(HEALED_TIMEOUT, || {
                let invoked = recorder.now();
                let answer = common::http::request(&agent, "GET", &url, b"").ok()?;
                let (outcome, read_at) = match answer.status {
                    200 | 404 => workload::interpret(&Call::Get, &answer).ok()?,
                    _ => return None,
                };
                Some(Op {
                    client: FINAL_READER + id,
                    node: id,
                    key: key.clone(),
                    call: Call::Get,
                    outcome,
                    invoked,
                    completed: recorder.now(),
                    detail: format!("final read, {}", answer.status),
                    read_at,
                })
            });
            match read {
                Some(op) => recorder.record(op),
                None => return Err(format!("node {id} never answered a read of {key}")),
            }
        }
    }
    Ok(final_revision)
}

/// (5) Reads the committed history from one node and holds the history and the watchers to it
/// (see `revisions.rs`).
fn check_revisions(
    cluster: &ChaosCluster,
    ops: &[Op],
    logs: &[WatcherLog],
    final_revision: i64,
) -> Vec<CheckLine> {
    let node = cluster.leader().unwrap_or(1);
    let committed = watchers::committed_history(
        &cluster.base_url(node),
        cluster.transport(),
        final_revision,
        HEALED_TIMEOUT,
    )
    .and_then(|events| Committed::new(events, final_revision));
    let committed = match committed {
        Ok(committed) => committed,
        Err(why) => {
            return vec![CheckLine {
                name: "committed history",
                passed: false,
                detail: format!("read from node {node}: {why}"),
            }]
        }
    };
    let line = |name, result: Result<String, String>| CheckLine {
        name,
        passed: result.is_ok(),
        detail: result.unwrap_or_else(|e| e),
    };
    vec![
        CheckLine {
            name: "committed history",
            passed: true,
            detail: format!(
                "revisions 2 to {} without a hole, read with a watch on node {node}",
                committed.last_revision()
            ),
        },
        line("writes committed", revisions::check_writes(&committed, ops)),
        line("txns", revisions::check_txns(&committed, ops)),
        line("revision order", revisions::check_order(&committed, ops)),
        line(
            "watchers",
            revisions::check_watchers(&committed, logs, final_revision),
        ),
    ]
}

/// (4) Every node ends up with the same pairs.
fn check_convergence(cluster: &ChaosCluster) -> CheckLine {
    let mut last = Vec::new();
    let converged = common::poll_until(HEALED_TIMEOUT, || {
        last = cluster
            .ids()
            .iter()
            .map(|&id| cluster.local_data(id))
            .collect();
        let first = last.first()?.as_ref()?;
        last.iter()
            .all(|d| d.as_ref() == Some(first))
            .then(|| first.clone())
    });
    CheckLine {
        name: "convergence",
        passed: converged.is_some(),
        detail: match converged {
            Some(data) => {
                let mut crc = crc32fast::Hasher::new();
                for (key, value) in &data {
                    crc.update(format!("{key:?}={value:?}\n").as_bytes());
                }
                format!(
                    "every node holds the same {} pairs (digest {:08x})",
                    data.len(),
                    crc.finalize()
                )
            }
            None => format!("nodes still differ after {HEALED_TIMEOUT:?}: {last:?}"),
        },
    }
}

/// Writes the evidence of a failed run into `dir`; returns a note if something could not be
/// saved.
fn save_evidence(
    dir: &std::path::Path,
    ops: &[Op],
    nemesis: &Nemesis,
    report: &str,
    cluster: &ChaosCluster,
) -> String {
    let result = std::fs::create_dir_all(dir)
        .and_then(|()| history::save(ops, &dir.join("history.jsonl")))
        .and_then(|()| std::fs::write(dir.join("faults.txt"), report::fault_log(&nemesis.events)))
        .and_then(|()| std::fs::write(dir.join("report.txt"), report));
    cluster.save_logs(dir);
    match result {
        Ok(()) => String::new(),
        Err(e) => format!("(saving failed: {e})"),
    }
}
