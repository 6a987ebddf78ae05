//! Snapshots, log compaction and catch-up, with real processes: a follower too far behind (or a
//! new node) catches up by installing a snapshot streamed from the leader, a kill in the middle of
//! an install is harmless, binary data survives the trip, and the log stays bounded.

mod common;

use std::fs;
use std::path::Path;
use std::thread;
use std::time::Duration;
use std::time::Instant;

use common::http::{
    http, node_status as status, status_field as field, wait_for_compaction, wait_for_install,
    write_keys,
};
use common::Cluster;

/// A snapshot every 200 applied entries, keeping 20 behind it: small enough that a few hundred
/// writes compact the log several times over.
const SNAPSHOT_ARGS: &[&str] = &["--snapshot-entries", "200", "--compaction-overhead", "20"];
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(60);

fn url(cluster: &Cluster, id: usize, path: &str) -> String {
    format!("http://{}{}", cluster.http_addr(id), path)
}

fn small_value(i: usize) -> Vec<u8> {
    format!("value-{i}").into_bytes()
}

/// Every pair on node `id`, as the scan API returns them (binary data base64-encoded), read
/// locally: comparing two nodes' digests compares their state machines.
fn digest(cluster: &Cluster, id: usize) -> serde_json::Value {
    serde_json::Value::Array(common::http::scan_all(&url(
        cluster,
        id,
        "/v1/kv/?prefix=&limit=100000&consistency=stale",
    )))
}

/// Waits until node `id` has applied everything the leader has committed, then checks that
/// both hold exactly the same pairs.
fn assert_converged(cluster: &Cluster, leader: usize, id: usize) {
    let target = field(&status(cluster, leader), "committed");
    let caught_up = common::poll_until(CONVERGE_TIMEOUT, || {
        (field(&status(cluster, id), "last_applied") >= target).then_some(())
    });
    assert!(
        caught_up.is_some(),
        "node {id} never applied up to {target}: {}",
        status(cluster, id)
    );
    let expected = digest(cluster, leader);
    let found = digest(cluster, id);
    assert!(
        expected == found,
        "node {id} differs from the leader: {} pairs vs {}",
        found.as_array().map_or(0, Vec::len),
        expected.as_array().map_or(0, Vec::len)
    );
}

#[test]
fn a_follower_that_missed_several_snapshots_catches_up_by_installing_one_and_keeps_binary_data() {
    let mut cluster = Cluster::start_with_args(3, SNAPSHOT_ARGS);
    let leader = cluster.wait_for_leader();
    let follower = cluster.followers(leader)[0];
    cluster.kill(follower);

    write_keys(&cluster, leader, "key-", 600, small_value);
    for (path, value) in [
        ("/v1/kv/%FF%00binary-key", &b"\xfe\x00binary value"[..]),
        ("/v1/kv/utf8-key", &b"\xc3\xa9t\xc3\xa9"[..]),
    ] {
        assert_eq!(http("PUT", &url(&cluster, leader, path), value).status, 204);
    }
    wait_for_compaction(&cluster, leader);

    cluster.restart(follower);
    wait_for_install(&cluster, follower);
    assert_converged(&cluster, leader, follower);
    let binary = http(
        "GET",
        &url(
            &cluster,
            follower,
            "/v1/kv/%FF%00binary-key?consistency=stale",
        ),
        b"",
    );
    assert_eq!(binary.body, b"\xfe\x00binary value");
    assert!(field(&status(&cluster, leader), "snapshots_sent") >= 1);

    // Restart without replay still holds after compaction: alone (no quorum, nothing new can
    // commit), the node resumes at its applied index from disk and applies nothing.
    let applied = field(&status(&cluster, follower), "last_applied");
    cluster.kill_all();
    cluster.restart(follower);
    let resumed = status(&cluster, follower);
    assert!(field(&resumed, "last_applied") >= applied, "{resumed}");
    assert_eq!(field(&resumed, "applied_this_run"), 0, "{resumed}");
}

#[test]
fn a_node_added_after_the_log_was_compacted_catches_up_by_snapshot() {
    let mut cluster = Cluster::start_with_args(3, SNAPSHOT_ARGS);
    let leader = cluster.wait_for_leader();
    write_keys(&cluster, leader, "before-", 500, small_value);
    wait_for_compaction(&cluster, leader);

    let mut extra: Vec<std::ffi::OsString> = SNAPSHOT_ARGS.iter().map(Into::into).collect();
    extra.push("--join".into());
    let spec = cluster.next_node_spec(extra);
    let add = format!("add {} {}", spec.raft_addr(), spec.id);
    let reply = cluster.node(1).command(add);
    assert_eq!(
        reply.text(),
        "membership change completed successfully",
        "{reply}"
    );
    let new = cluster.launch_node(spec);

    wait_for_install(&cluster, new);
    write_keys(&cluster, leader, "after-", 50, small_value);
    assert_converged(&cluster, leader, new);
}

#[test]
fn a_follower_killed_in_the_middle_of_an_install_restarts_from_a_whole_state_and_converges() {
    let mut cluster = Cluster::start_with_args(3, SNAPSHOT_ARGS);
    let leader = cluster.wait_for_leader();
    let follower = cluster.followers(leader)[0];
    let follower_dir = cluster.data_dir().join(format!("node{follower}"));
    // Enough state (about 24 MiB) that a transfer and install take a while.
    let big_value = |i: usize| format!("{i:>8}").repeat(512).into_bytes();

    let mut killed_mid_install = false;
    for round in 0..3 {
        cluster.kill(follower);
        write_keys(&cluster, leader, &format!("round{round}-"), 1000, big_value);
        cluster.restart_in_background(follower);
        killed_mid_install = wait_for_install_to_begin(&follower_dir, Duration::from_secs(30));
        if killed_mid_install {
            cluster.kill(follower);
            cluster.restart(follower);
            break;
        }
        cluster.await_restarted(follower);
    }
    assert!(killed_mid_install, "no install was ever caught in progress");
    assert_converged(&cluster, leader, follower);
}

/// Polls `node_dir` until a snapshot is being received or installed there (a partial received
/// file, or a new state generation not yet switched to). Returns false if none appears.
fn wait_for_install_to_begin(node_dir: &Path, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    let current =
        fs::read_to_string(node_dir.join("state.current")).unwrap_or_else(|_| "state".into());
    while Instant::now() < deadline {
        let receiving = fs::read_dir(node_dir.join("snapshots"))
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .any(|e| e.file_name().to_string_lossy().starts_with("receiving-"))
            })
            .unwrap_or(false);
        let new_generation = fs::read_dir(node_dir)
            .map(|entries| {
                entries.filter_map(Result::ok).any(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    name.starts_with("state.")
                        && name != "state.current"
                        && !name.ends_with(".tmp")
                        && name != current
                })
            })
            .unwrap_or(false);
        if receiving || new_generation {
            return true;
        }
        thread::sleep(Duration::from_millis(1));
    }
    false
}

#[test]
fn the_log_stays_bounded_under_a_steady_write_load() {
    const ENTRIES: u64 = 500;
    const OVERHEAD: u64 = 50;
    let mut cluster = Cluster::start_with_args(
        3,
        &["--snapshot-entries", "500", "--compaction-overhead", "50"],
    );
    let leader = cluster.wait_for_leader();
    write_keys(&cluster, leader, "load-", 20_000, small_value);
    for id in cluster.ids() {
        let status = status(&cluster, id);
        let retained = field(&status, "last_log_index") - field(&status, "first_log_index");
        // At most one snapshot interval, the overhead kept behind it, and what was appended
        // while the next snapshot was being built (writes do not wait for it; under this load
        // that is up to about one more interval).
        assert!(
            retained <= 2 * ENTRIES + OVERHEAD,
            "node {id} retains {retained} log entries: {status}"
        );
    }
    let metrics = http("GET", &url(&cluster, leader, "/metrics"), b"").text();
    let log_bytes: f64 = metrics
        .lines()
        .find(|l| l.starts_with("ondisk_disk_bytes{dir=\"raft-log\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .expect("raft-log disk bytes in /metrics");
    assert!(
        log_bytes < 64.0 * 1024.0 * 1024.0,
        "the log uses {log_bytes} bytes on disk"
    );
}
