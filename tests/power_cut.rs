//! Power cuts, not just SIGKILL: every node's data directory lives on its own `powercut-fs`
//! fixture, which drops everything not fsynced when the power is cut.
//!
//! A SIGKILL keeps the page cache, so a build that never fsyncs its log passes every SIGKILL test.
//! These tests show that acknowledged writes survive a power cut of the whole cluster (and of a
//! single node), and that the fixture bites: a build acknowledging appends without their fsync
//! (`--test-fault unsynced-appends`) loses acknowledged writes at a cut, while SIGKILL alone does
//! not catch it.

mod common;

use common::http::{agent, request, REQUEST_TIMEOUT};
use common::power_cut::PowerCutFs;
use common::Cluster;

/// Acknowledged writes per round.
const WRITES: usize = 60;

/// How the nodes are stopped between the writes and the reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Crash {
    /// SIGKILL of every node: the page cache survives.
    Kill,
    /// SIGKILL of every node, then a power cut of every fixture.
    PowerCut,
}

/// A cluster whose every node keeps its data on its own fixture.
struct PowerCutCluster {
    // Declared first: the nodes die before their file systems are unmounted.
    cluster: Cluster,
    fixtures: Vec<PowerCutFs>,
}

impl PowerCutCluster {
    fn start(nodes: usize, extra_args: &[&str]) -> PowerCutCluster {
        let fixtures: Vec<PowerCutFs> = (0..nodes).map(|_| PowerCutFs::start()).collect();
        let root = tempfile::Builder::new()
            .prefix("ondisk-test-")
            .tempdir()
            .expect("create temporary directory");
        let data_dirs = fixtures.iter().map(PowerCutFs::data_dir).collect();
        let mut cluster = Cluster::start_in(root, data_dirs, extra_args);
        cluster.wait_for_leader();
        PowerCutCluster { cluster, fixtures }
    }

    fn url(&self, id: usize, key: &str) -> String {
        format!("http://{}/v1/kv/{key}", self.cluster.http_addr(id))
    }

    /// Puts `count` new keys, each through the next node in turn; returns the acknowledged
    /// (204) pairs. Anything else is reported and left out.
    fn write(&mut self, first: usize, count: usize) -> Vec<(String, String)> {
        self.write_values(first, count, |i| format!("value{i}"))
    }

    /// [`PowerCutCluster::write`] with the `i`th key's value made by `value`.
    fn write_values(
        &mut self,
        first: usize,
        count: usize,
        value: impl Fn(usize) -> String,
    ) -> Vec<(String, String)> {
        let client = agent(REQUEST_TIMEOUT);
        let size = self.cluster.size();
        let mut acknowledged = Vec::new();
        for i in first..first + count {
            let (key, value) = (format!("key{i}"), value(i));
            let url = self.url(1 + i % size, &key);
            match request(&client, "PUT", &url, value.as_bytes()) {
                Ok(answer) if answer.status == 204 => acknowledged.push((key, value)),
                Ok(answer) => eprintln!("PUT {url}: {} {}", answer.status, answer.text()),
                Err(e) => eprintln!("PUT {url}: {e}"),
            }
        }
        acknowledged
    }

    /// SIGKILLs every node, cuts the power if asked, restarts them all and waits for a leader.
    fn crash_and_restart(&mut self, crash: Crash) {
        self.cluster.kill_all();
        if crash == Crash::PowerCut {
            for fixture in &mut self.fixtures {
                let report = fixture.cut();
                eprintln!(
                    "power cut of {}: dropped {} bytes, {} directory entries",
                    fixture.data_dir().display(),
                    report.bytes,
                    report.entries
                );
            }
        }
        self.cluster.restart_all();
        self.cluster.wait_for_leader();
    }

    /// The acknowledged writes a linearizable read (through every node in turn) does not return.
    fn lost(&self, acknowledged: &[(String, String)]) -> Vec<String> {
        let client = agent(REQUEST_TIMEOUT);
        let size = self.cluster.size();
        let mut lost = Vec::new();
        for (i, (key, value)) in acknowledged.iter().enumerate() {
            let url = self.url(1 + i % size, key);
            let answer =
                request(&client, "GET", &url, b"").unwrap_or_else(|e| panic!("GET {url}: {e}"));
            match answer.status {
                200 if answer.text() == *value => {}
                200 | 404 => lost.push(format!(
                    "{key} (read {}, {} bytes)",
                    answer.status,
                    answer.text().len()
                )),
                other => panic!("GET {url}: unexpected {other} {}", answer.text()),
            }
        }
        lost
    }

    /// Whether some node's Raft log has written over a recycled WAL file (RocksDB's info log
    /// beside it says so).
    fn log_reused_a_wal_file(&self) -> bool {
        self.fixtures
            .iter()
            .zip(self.cluster.ids())
            .any(|(fixture, id)| {
                let info_log = fixture.data_dir().join(format!("node{id}/raft-log/LOG"));
                std::fs::read_to_string(info_log).is_ok_and(|text| text.contains("reusing log"))
            })
    }
}

/// Writes, crashes the way asked, and reads back, for `rounds` rounds; returns how many writes
/// were acknowledged and which of them were lost.
fn writes_lost(
    nodes: usize,
    extra_args: &[&str],
    crash: Crash,
    rounds: usize,
) -> (usize, Vec<String>) {
    let mut cluster = PowerCutCluster::start(nodes, extra_args);
    let mut acknowledged = Vec::new();
    let mut lost = Vec::new();
    for round in 0..rounds {
        acknowledged.extend(cluster.write(round * WRITES, WRITES));
        cluster.crash_and_restart(crash);
        lost = cluster.lost(&acknowledged);
        if !lost.is_empty() {
            break;
        }
    }
    (acknowledged.len(), lost)
}

const BROKEN: [&str; 2] = ["--test-fault", "unsynced-appends"];

/// Power cuts of `nodes` nodes (all at once) during writes: every acknowledged write is there.
fn assert_power_cuts_lose_nothing(nodes: usize) {
    if !PowerCutFs::available() {
        return;
    }
    let (acknowledged, lost) = writes_lost(nodes, &[], Crash::PowerCut, 2);
    assert!(
        acknowledged >= WRITES,
        "only {acknowledged} writes were acknowledged"
    );
    assert!(
        lost.is_empty(),
        "{} of {acknowledged} acknowledged writes lost: {lost:?}",
        lost.len()
    );
}

#[test]
fn every_acknowledged_write_survives_power_cuts_of_the_whole_cluster() {
    assert_power_cuts_lose_nothing(3);
}

#[test]
fn every_acknowledged_write_survives_power_cuts_of_a_single_node() {
    assert_power_cuts_lose_nothing(1);
}

/// Values put before the cut in the recycled-WAL test: more than three times the WAL a database
/// keeps before switching to a new file (32 MiB), so the log has switched into recycled files
/// by the time the small writes that follow are made.
const WAL_FILLING_VALUES: usize = 100;
const WAL_FILLING_VALUE_BYTES: usize = 1 << 20;

/// The Raft log writes over recycled WAL files (an overwrite's fsync is cheaper than an
/// append's): a power cut while it writes into one, whose older records lie past the new ones,
/// loses no acknowledged write, and the node starts from what remains.
#[test]
fn a_power_cut_while_the_log_writes_over_a_recycled_wal_file_loses_nothing() {
    if !PowerCutFs::available() {
        return;
    }
    let mut c = PowerCutCluster::start(1, &[]);
    let mut acknowledged = c.write_values(0, WAL_FILLING_VALUES, |i| {
        let head = format!("{i}:");
        format!("{head}{}", "x".repeat(WAL_FILLING_VALUE_BYTES - head.len()))
    });
    assert_eq!(acknowledged.len(), WAL_FILLING_VALUES);
    assert!(
        c.log_reused_a_wal_file(),
        "the Raft log never took a recycled WAL file: this test no longer tests what it says"
    );
    acknowledged.extend(c.write(WAL_FILLING_VALUES, WRITES));
    c.crash_and_restart(Crash::PowerCut);
    let lost = c.lost(&acknowledged);
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged writes lost: {lost:?}",
        lost.len(),
        acknowledged.len()
    );
}

/// The fixture bites: appends acknowledged without their fsync are lost at a power cut, and the
/// reads after the restart detect it.
#[test]
fn a_power_cut_catches_a_build_acknowledging_unsynced_appends() {
    if !PowerCutFs::available() {
        return;
    }
    let (acknowledged, lost) = writes_lost(3, &BROKEN, Crash::PowerCut, 1);
    assert!(
        acknowledged >= WRITES,
        "only {acknowledged} writes were acknowledged"
    );
    assert!(
        !lost.is_empty(),
        "a build that never fsyncs its log lost none of {acknowledged} acknowledged writes at a \
         power cut: the fixture does not model lost page caches"
    );
    eprintln!(
        "caught: {} of {acknowledged} acknowledged writes lost",
        lost.len()
    );
}

/// The same broken build survives SIGKILL: the page cache keeps the unsynced writes, which is
/// why the power-cut fixture is needed at all.
#[test]
fn sigkill_alone_cannot_catch_a_build_acknowledging_unsynced_appends() {
    if !PowerCutFs::available() {
        return;
    }
    let (acknowledged, lost) = writes_lost(3, &BROKEN, Crash::Kill, 1);
    assert!(
        acknowledged >= WRITES,
        "only {acknowledged} writes were acknowledged"
    );
    assert!(lost.is_empty(), "SIGKILL alone lost {lost:?}");
}

/// A leader restarted after a power cut has lost its unsynced commit point: it must not serve a
/// linearizable read from there. The old leader comes back first and is asked for the last
/// acknowledged write while the others restart.
#[test]
fn a_leader_restarted_after_a_power_cut_serves_no_stale_read() {
    if !PowerCutFs::available() {
        return;
    }
    let mut c = PowerCutCluster::start(3, &[]);
    let leader = c.cluster.wait_for_leader();
    let client = agent(REQUEST_TIMEOUT);
    let mut last = None;
    for i in 0..WRITES {
        let (key, value) = (format!("key{i}"), format!("value{i}"));
        let answer = request(&client, "PUT", &c.url(leader, &key), value.as_bytes());
        if answer.is_ok_and(|a| a.status == 204) {
            last = Some((key, value));
        }
    }
    let (key, value) = last.expect("an acknowledged write");
    c.cluster.kill_all();
    for fixture in &mut c.fixtures {
        fixture.cut();
    }
    c.cluster.restart(leader);
    let url = c.url(leader, &key);
    let read = std::thread::spawn(move || request(&agent(REQUEST_TIMEOUT), "GET", &url, b""));
    for id in c.cluster.ids().into_iter().filter(|&id| id != leader) {
        c.cluster.restart_in_background(id);
    }
    for id in c.cluster.ids().into_iter().filter(|&id| id != leader) {
        c.cluster.await_restarted(id);
    }
    match read.join().expect("the reader thread") {
        Ok(answer) if answer.status == 200 => assert_eq!(answer.text(), value, "stale read"),
        Ok(answer) if answer.status == 404 => panic!("stale read: {key} not found"),
        other => eprintln!(
            "the read did not succeed (allowed): {:?}",
            other.map(|a| a.status)
        ),
    }
}
