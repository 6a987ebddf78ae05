//! End-to-end specification of the `ondisk` REPL on a real 3-node cluster:
//! replication, forwarding, failover, crash recovery, loss of quorum, input
//! handling, shutdown and startup errors.
//!
//! Every test starts its own processes on fresh ports and a fresh temporary
//! data directory, so tests can run in parallel.

mod common;

use std::cell::{Cell, RefCell};
use std::ffi::OsString;
use std::fs;
use std::net::TcpListener;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

/// `Some(bytes)` of a string, for comparing `get` results.
fn some(v: &str) -> Option<&[u8]> {
    Some(v.as_bytes())
}

// ---------------------------------------------------------------------------
// Startup banner and status format
// ---------------------------------------------------------------------------

#[test]
fn startup_prints_addresses_and_status_has_documented_fields() {
    let mut c = Cluster::start3();
    for id in c.ids() {
        let raft = format!("node address: {}", c.raft_addr(id));
        let http = format!("http address: {}", c.http_addr(id));
        let stdout: Vec<String> = c.node(id).stdout_lines().iter().map(|l| lossy(l)).collect();
        assert!(
            stdout.contains(&raft),
            "node {id} should print {raft:?}; stdout: {stdout:#?}"
        );
        assert!(
            stdout.contains(&http),
            "node {id} should print {http:?}; stdout: {stdout:#?}"
        );
    }

    let leader = c.wait_for_leader();
    for id in c.ids() {
        let status = c.node(id).status();
        for key in [
            "id",
            "state",
            "leader",
            "term",
            "last_log",
            "committed",
            "applied",
            "applied_this_run",
            "snapshot",
            "purged",
        ] {
            assert!(
                status.contains_key(key),
                "status of node {id} lacks {key}=: {status:?}"
            );
        }
        assert_eq!(status["id"], id.to_string());
        assert_eq!(status["leader"], leader.to_string());
        let expected_state = if id == leader { "Leader" } else { "Follower" };
        assert_eq!(status["state"], expected_state, "node {id}: {status:?}");
    }

    // `help` prints usage on stdout, and the REPL keeps answering afterwards.
    let reply = c.node(1).command("help");
    assert!(
        matches!(reply, Reply::Stdout(_)),
        "help should print usage on stdout, got {reply}"
    );
    c.node(1).sync();
    c.must_put(1, "after-help", "still works");
    c.assert_get(1, "after-help", some("still works"));
}

/// Linux's numbers for the two policies `--cpu-scheduling` chooses between (sched(7)).
const SCHED_OTHER: u32 = 0;
const SCHED_BATCH: u32 = 3;

/// Every thread of a node, the ones RocksDB and tokio start late included, runs under
/// SCHED_BATCH unless told otherwise, and under the kernel's default with
/// `--cpu-scheduling normal`; the node serves either way.
#[test]
fn every_thread_of_a_node_runs_under_the_chosen_cpu_scheduling_policy() {
    for (args, expected) in [
        (&[][..], SCHED_BATCH),
        (&["--cpu-scheduling", "normal"][..], SCHED_OTHER),
    ] {
        let mut c = Cluster::start_with_args(1, args);
        c.wait_for_leader();
        c.must_put(1, "scheduled", "yes");
        c.assert_get(1, "scheduled", some("yes"));
        let threads = thread_policies(c.node(1).pid());
        assert!(
            threads.len() >= 4,
            "a node runs its own, RocksDB's and the log syncer's threads: {threads:?}"
        );
        let others: Vec<_> = threads.iter().filter(|(_, p)| *p != expected).collect();
        assert!(
            others.is_empty(),
            "with {args:?} every thread should have policy {expected}; these do not: {others:?}"
        );
    }
}

/// Each thread of process `pid` with its scheduling policy, from `/proc/PID/task/*/sched`.
fn thread_policies(pid: u32) -> Vec<(String, u32)> {
    let tasks = fs::read_dir(format!("/proc/{pid}/task")).expect("list the node's threads");
    tasks
        .filter_map(|task| {
            let task = task.ok()?.path();
            let name = fs::read_to_string(task.join("comm")).ok()?;
            let sched = fs::read_to_string(task.join("sched")).ok()?;
            let policy = sched
                .lines()
                .find(|line| line.starts_with("policy"))?
                .rsplit(':')
                .next()?
                .trim()
                .parse()
                .ok()?;
            Some((name.trim().to_string(), policy))
        })
        .collect()
}

// ---------------------------------------------------------------------------
// Replication and forwarding
// ---------------------------------------------------------------------------

#[test]
fn put_on_node1_is_visible_to_get_on_node3() {
    let mut c = Cluster::start3();
    c.wait_for_leader();
    assert_eq!(c.node(1).put("greeting", "hello world"), Ok(()));
    c.assert_get(3, "greeting", some("hello world"));
}

#[test]
fn put_on_a_follower_is_forwarded_and_visible_on_leader_and_other_follower() {
    let mut c = Cluster::start3();
    let leader = c.wait_for_leader();
    let followers = c.followers(leader);
    let (f1, f2) = (followers[0], followers[1]);

    c.must_put(f1, "forwarded", "via follower");
    c.assert_get(leader, "forwarded", some("via follower"));
    c.assert_get(f2, "forwarded", some("via follower"));
    c.assert_get(f1, "forwarded", some("via follower"));

    // Overwrites through the other follower are seen everywhere too.
    c.must_put(f2, "forwarded", "overwritten");
    for id in c.ids() {
        c.assert_get(id, "forwarded", some("overwritten"));
    }
}

#[test]
fn delete_removes_a_key_and_get_of_a_missing_key_prints_not_found() {
    let mut c = Cluster::start3();
    c.wait_for_leader();

    let reply = c.node(2).command("get never-written");
    assert_eq!(
        reply,
        Reply::Stdout(b"query key: never-written, not found".to_vec()),
        "got {reply}"
    );

    c.must_put(1, "doomed", "value");
    c.assert_get(3, "doomed", some("value"));
    let reply = c.node(2).command("delete doomed");
    assert_eq!(reply, Reply::Stdout(b"OK".to_vec()), "got {reply}");
    for id in c.ids() {
        c.assert_get(id, "doomed", None);
    }
    let reply = c.node(1).command("get doomed");
    assert_eq!(
        reply,
        Reply::Stdout(b"query key: doomed, not found".to_vec()),
        "got {reply}"
    );
}

// ---------------------------------------------------------------------------
// Failover and crash recovery
// ---------------------------------------------------------------------------

#[test]
fn killing_the_leader_elects_a_new_one_and_the_restarted_node_has_every_acknowledged_value() {
    survives_a_leader_kill(Cluster::start3());
}

/// The default runs each node's tasks on one thread; a node given more threads must keep every
/// guarantee too.
#[test]
fn nodes_on_several_runtime_threads_keep_every_acknowledged_value_across_a_leader_kill() {
    survives_a_leader_kill(Cluster::start_with_args(3, &["--runtime-threads", "2"]));
}

/// Writes through every node, kills the leader, writes through the survivors, restarts the old
/// leader and checks that it has every acknowledged value.
fn survives_a_leader_kill(mut c: Cluster) {
    let old_leader = c.wait_for_leader();

    let mut acknowledged: Vec<(String, String)> = Vec::new();
    for i in 0..10 {
        let (k, v) = (format!("before-{i}"), format!("value before {i}"));
        c.must_put(1 + i % 3, &k, &v);
        acknowledged.push((k, v));
    }

    c.kill(old_leader);
    let new_leader = c.wait_for_leader();
    assert_ne!(new_leader, old_leader, "a killed node cannot stay leader");

    let survivors = c.running_ids();
    assert_eq!(survivors.len(), 2);
    for i in 0..10 {
        let writer = survivors[i % 2];
        let reader = survivors[(i + 1) % 2];
        let (k, v) = (format!("after-{i}"), format!("value after {i}"));
        c.must_put(writer, &k, &v);
        c.assert_get(reader, &k, some(&v));
        acknowledged.push((k, v));
    }
    for (k, v) in &acknowledged[..10] {
        c.assert_get(new_leader, k, some(v));
    }

    c.restart(old_leader);
    c.wait_for_leader();
    for (k, v) in &acknowledged {
        c.assert_get(old_leader, k, some(v));
    }
}

#[test]
fn without_a_quorum_put_and_get_time_out_and_work_again_once_a_node_returns() {
    let mut c = Cluster::start3();
    c.wait_for_leader();
    c.must_put(3, "before", "quorum");
    let pid = c.node(3).pid();

    c.kill(1);
    c.kill(2);

    let started = Instant::now();
    let err = c
        .node(3)
        .put("lonely", "no quorum")
        .expect_err("a put without a quorum must fail");
    let took = started.elapsed();
    assert!(err.starts_with("error: "), "{err:?}");
    assert!(err.contains("timed out"), "{err:?}");
    assert!(err.contains("quorum"), "{err:?}");
    assert!(
        took >= Duration::from_millis(1500),
        "the put should fail only after the 2s --timeout, it failed after {took:?}: {err:?}"
    );

    let err = c
        .node(3)
        .get("before")
        .expect_err("a linearizable get without a quorum must fail");
    assert!(err.starts_with("error: get timed out"), "{err:?}");
    assert!(err.contains("quorum"), "{err:?}");

    // The REPL is still usable after the errors.
    assert!(c.node(3).is_running());
    c.node(3).status();

    c.restart(1);
    c.wait_until(
        Duration::from_secs(40),
        "a put on node 3 succeeds once node 1 is back",
        |c| c.node(3).put("recovered", "quorum again").is_ok(),
    );
    assert_eq!(c.node(3).pid(), pid, "node 3 must not have been restarted");
    c.assert_get(3, "recovered", some("quorum again"));
    c.assert_get(3, "before", some("quorum"));
    c.assert_get(1, "recovered", some("quorum again"));
}

#[test]
fn every_acknowledged_put_survives_killing_all_nodes() {
    const N: usize = 50;
    let mut c = Cluster::start3();
    c.wait_for_leader();
    for i in 0..N {
        c.must_put(1 + i % 3, &format!("durable-{i}"), format!("value {i}"));
    }

    c.kill_all();
    c.restart_all();
    c.wait_for_leader();

    for i in 0..N {
        c.assert_get(
            1 + i % 3,
            &format!("durable-{i}"),
            some(&format!("value {i}")),
        );
    }
}

/// Members restarted without a leader campaign soon after start-up, and again while no new
/// leader emerges, instead of waiting out an election timeout. Restarted with an election timeout
/// of ten minutes, no member's own timer can fire before the deadline here, so a cluster
/// restarted all at once that agrees on a leader and serves a linearizable read owes it to those
/// early campaigns. (The cluster is founded with the usual timing: founders campaign once as they
/// initialize, and a founder that initializes late can spoil that first term, which then only
/// the election timer mends.)
#[test]
fn a_cluster_restarted_at_once_elects_a_leader_without_waiting_out_its_election_timeout() {
    let mut c = Cluster::start3();
    let leader = c.wait_for_leader();
    c.must_put(leader, "before", "the restart");

    c.kill_all();
    for id in c.ids() {
        c.spec_mut(id).extra_args = ["--election-timeout", "10m"].map(OsString::from).to_vec();
    }
    c.restart_all();
    let leader = c.wait_for_leader_within(Duration::from_secs(60));
    c.assert_get(leader, "before", some("the restart"));
    c.must_put(leader, "after", "the restart");
}

#[test]
fn applied_index_survives_restart_without_replaying_the_log() {
    const K: u64 = 20;
    let mut c = Cluster::start3();
    let leader = c.wait_for_leader();
    for i in 0..K {
        c.must_put(leader, &format!("applied-{i}"), format!("value {i}"));
    }
    // Puts are acknowledged once applied on the leader.
    let applied_before = status_u64(&c.node(leader).status(), "applied")
        .expect("the leader reports a numeric applied index");
    assert!(
        applied_before >= K,
        "applied={applied_before} after {K} puts"
    );

    c.kill_all();
    // Only one node comes back: no quorum, so nothing new can commit and any
    // applied entries must come from the state machine on disk, not a replay.
    c.restart(leader);

    let mut last = None;
    let reached = poll_until(Duration::from_secs(15), || {
        let status = c.node(leader).status();
        let ok = status_u64(&status, "applied").is_some_and(|a| a >= applied_before);
        last = Some(status.clone());
        ok.then_some(status)
    });
    let status = reached.unwrap_or_else(|| {
        panic!(
            "restarted node never reported applied >= {applied_before}; last status {last:?}\n{}",
            c.diagnostics()
        )
    });
    assert_eq!(
        status.get("applied_this_run").map(String::as_str),
        Some("0"),
        "the restarted node must not re-apply entries: {status:?}\n{}",
        c.diagnostics()
    );

    c.wait_until(
        Duration::from_secs(15),
        "the log file says `state machine opened at applied index`",
        |c| {
            c.node(leader)
                .log_contents()
                .contains("state machine opened at applied index")
        },
    );

    // Still nothing applied by this process.
    let status = c.node(leader).status();
    assert_eq!(
        status.get("applied_this_run").map(String::as_str),
        Some("0"),
        "{status:?}"
    );
    assert!(
        status_u64(&status, "applied").is_some_and(|a| a >= K),
        "{status:?}"
    );
}

// ---------------------------------------------------------------------------
// Input handling
// ---------------------------------------------------------------------------

/// A reproducible line of arbitrary bytes (no newline) that is not a command.
fn random_garbage_line(seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    let mut line = vec![0xfe];
    for _ in 0..48 {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let byte = (state >> 56) as u8;
        line.push(if byte == b'\n' { 0x80 } else { byte });
    }
    line
}

#[test]
fn malformed_repl_lines_print_invalid_input_and_the_repl_keeps_working() {
    let mut c = Cluster::start3();
    c.wait_for_leader();

    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(42);
    let garbage = random_garbage_line(seed);
    let malformed: Vec<Vec<u8>> = vec![
        b"put".to_vec(),
        b"put onlykey".to_vec(),
        b"get".to_vec(),
        b"frobnicate x".to_vec(),
        garbage.clone(),
    ];
    for line in &malformed {
        let reply = c.node(1).command(line);
        assert!(
            matches!(&reply, Reply::Stderr(l) if l.starts_with(b"invalid input")),
            "{:?} (seed {seed}) should print `invalid input` on stderr, got {reply}",
            lossy(line)
        );
    }

    // An empty line is ignored: the next reply belongs to the next command.
    c.node(1).send(b"");
    let reply = c.node(1).command("get no-such-key");
    assert_eq!(
        reply,
        Reply::Stdout(b"query key: no-such-key, not found".to_vec()),
        "after an empty line, got {reply}"
    );

    c.must_put(1, "still", "working");
    c.assert_get(1, "still", some("working"));

    c.node(1).sync();
    let invalid = c
        .node(1)
        .stderr_lines()
        .iter()
        .filter(|l| l.starts_with(b"invalid input"))
        .count();
    assert_eq!(
        invalid,
        malformed.len(),
        "one `invalid input` per malformed line and none for the empty line\n{}",
        c.node(1).diagnostics()
    );
    assert!(c.node(1).is_running());
}

#[test]
fn non_utf8_bytes_in_values_round_trip() {
    let mut c = Cluster::start3();
    c.wait_for_leader();
    let value: &[u8] = b"\xff\xfe\x00x y";
    c.must_put(1, "binary", value);
    for id in c.ids() {
        c.assert_get(id, "binary", Some(value));
    }
}

#[test]
fn arbitrary_byte_values_round_trip_through_put_and_get() {
    let cluster = RefCell::new(Cluster::start3());
    cluster.borrow_mut().wait_for_leader();
    let counter = Cell::new(0u32);

    // Any bytes except newline, framed by visible markers so that no
    // reasonable whitespace handling at the line's ends is in question.
    let values = proptest::collection::vec(any::<u8>(), 0..64).prop_map(|inner| {
        let mut v = b"<".to_vec();
        v.extend(inner.into_iter().map(|b| if b == b'\n' { 0x85 } else { b }));
        v.push(b'>');
        v
    });
    let mut runner = TestRunner::new(Config {
        cases: 24,
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&values, |value| {
        let mut c = cluster.borrow_mut();
        let key = format!("prop-{}", counter.get());
        counter.set(counter.get() + 1);
        let writer = 1 + counter.get() as usize % 3;
        let reader = 1 + (counter.get() as usize + 1) % 3;
        prop_assert_eq!(c.node(writer).put(&key, &value), Ok(()));
        prop_assert_eq!(c.node(reader).get(&key), Ok(Some(value.clone())));
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}\n{}", cluster.borrow().diagnostics());
    }
}

// ---------------------------------------------------------------------------
// Shutdown
// ---------------------------------------------------------------------------

#[test]
fn exit_command_shuts_the_node_down_with_status_0() {
    let mut c = Cluster::start3();
    c.wait_for_leader();
    c.must_put(2, "before-exit", "x");
    c.node(2).send("exit");
    let status = c.node(2).wait_exit(EXIT_TIMEOUT);
    assert_eq!(
        status.code(),
        Some(0),
        "exit should end the process with status 0\n{}",
        c.node(2).diagnostics()
    );
}

#[test]
fn eof_on_stdin_keeps_the_node_serving_until_sigterm_which_exits_0() {
    let mut c = Cluster::start3();
    c.wait_for_leader();
    c.node(3).close_stdin();

    // The other nodes keep working with node 3 in the cluster.
    c.must_put(1, "after-eof-1", "a");
    c.must_put(2, "after-eof-2", "b");
    c.assert_get(1, "after-eof-2", some("b"));
    assert!(c.is_running(3), "EOF on stdin must not stop the node");

    // With node 1 gone, node 2 can only commit if node 3 still takes part.
    c.kill(1);
    c.wait_until(
        Duration::from_secs(40),
        "a put on node 2 commits with node 3 as the only other live member",
        |c| c.node(2).put("needs-node-3", "yes").is_ok(),
    );
    c.assert_get(2, "needs-node-3", some("yes"));
    assert!(c.is_running(3), "node 3 must still be running");

    c.node(3).terminate();
    let status = c.node(3).wait_exit(EXIT_TIMEOUT);
    assert_eq!(
        status.code(),
        Some(0),
        "SIGTERM should shut down cleanly with status 0\n{}",
        c.node(3).diagnostics()
    );
}

// ---------------------------------------------------------------------------
// Startup errors
// ---------------------------------------------------------------------------

#[test]
fn startup_fails_with_one_error_line_when_the_raft_port_is_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap();
    let spec = NodeSpec {
        id: 1,
        cluster: vec![taken_addr, free_addr(), free_addr()],
        http: free_addr(),
        data_dir: dir.path().to_path_buf(),
        extra_args: Vec::new(),
    };
    let out = run_to_exit(spec.args(), EXIT_TIMEOUT);
    let line = out.expect_single_error_line();
    assert!(
        line.contains(&taken_addr.to_string()),
        "the error should name {taken_addr}: {line:?}"
    );
    drop(taken);
}

#[test]
fn a_second_process_on_the_same_data_dir_and_node_id_fails_and_the_first_keeps_working() {
    let mut c = Cluster::start3();
    c.wait_for_leader();

    let mut spec = c.spec(1).clone();
    spec.cluster[0] = free_addr();
    spec.http = free_addr();
    let out = run_to_exit(spec.args(), EXIT_TIMEOUT);
    out.expect_single_error_line();

    assert!(c.is_running(1), "the first process must be unaffected");
    c.must_put(1, "first-still-owns-dir", "yes");
    c.assert_get(1, "first-still-owns-dir", some("yes"));
}

#[test]
fn startup_refuses_a_foreign_data_dir_and_leaves_it_untouched() {
    // A directory that looks like some other RocksDB (a CURRENT file) ...
    let dir = tempfile::tempdir().unwrap();
    let node_dir = dir.path().join("node1");
    fs::create_dir_all(&node_dir).unwrap();
    let current: &[u8] = b"MANIFEST-000042\xff\x00 not an ondisk database\n";
    fs::write(node_dir.join("CURRENT"), current).unwrap();
    let spec = NodeSpec {
        id: 1,
        cluster: vec![free_addr(), free_addr(), free_addr()],
        http: free_addr(),
        data_dir: dir.path().to_path_buf(),
        extra_args: Vec::new(),
    };
    let out = run_to_exit(spec.args(), EXIT_TIMEOUT);
    out.expect_single_error_line();
    assert_eq!(
        fs::read(node_dir.join("CURRENT")).unwrap(),
        current,
        "the foreign CURRENT file must not be modified"
    );

    // ... and a directory holding someone's unrelated file.
    let dir = tempfile::tempdir().unwrap();
    let node_dir = dir.path().join("node1");
    fs::create_dir_all(&node_dir).unwrap();
    let notes: &[u8] = b"precious notes, not a database\n";
    fs::write(node_dir.join("notes.txt"), notes).unwrap();
    let spec = NodeSpec {
        data_dir: dir.path().to_path_buf(),
        ..spec
    };
    let out = run_to_exit(spec.args(), EXIT_TIMEOUT);
    out.expect_single_error_line();
    assert_eq!(
        fs::read(node_dir.join("notes.txt")).unwrap(),
        notes,
        "the foreign file must not be modified"
    );
}

#[test]
fn node_id_4_without_addr_or_cluster_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let args = vec![
        "--nodeid".into(),
        "4".into(),
        "--http".into(),
        free_addr().to_string().into(),
        "--data-dir".into(),
        dir.path().as_os_str().to_owned(),
    ];
    let out = run_to_exit(args, EXIT_TIMEOUT);
    let line = out.expect_single_error_line();
    assert!(
        line.contains("node id must be 1, 2 or 3 when address is not specified"),
        "{line:?}"
    );
}

// ---------------------------------------------------------------------------
// Watches
// ---------------------------------------------------------------------------

/// The `watch: ...` lines node `id` has printed so far, without their `(revision N)` tails, and
/// those revisions.
fn watch_lines(c: &mut Cluster, id: usize) -> (Vec<String>, Vec<i64>) {
    let mut lines = Vec::new();
    let mut revisions = Vec::new();
    for line in c.node(id).stdout_lines() {
        let line = lossy(&line);
        if !line.starts_with("watch: ") {
            continue;
        }
        let (text, revision) = line
            .strip_suffix(')')
            .and_then(|l| l.rsplit_once(" (revision "))
            .unwrap_or_else(|| panic!("a watch line without its revision: {line:?}"));
        revisions.push(revision.parse().expect("a revision"));
        lines.push(text.to_string());
    }
    (lines, revisions)
}

#[test]
fn a_watch_at_one_node_prints_the_changes_typed_at_the_others_as_they_happen() {
    let mut c = Cluster::start3();
    c.wait_for_leader();
    let reply = c.node(2).command("watch greet/");
    let from: i64 = reply
        .text()
        .strip_prefix("watching keys starting with greet/ from revision ")
        .and_then(|revision| revision.parse().ok())
        .unwrap_or_else(|| panic!("watch answered {reply}"));

    c.must_put(1, "greet/one", "hello world");
    c.must_put(3, "greet/two", "from node 3");
    c.must_put(1, "other", "not watched");
    assert_eq!(c.node(3).delete("greet/one"), Ok(()));
    let expected = [
        "watch: PUT greet/one = hello world",
        "watch: PUT greet/two = from node 3",
        "watch: DELETE greet/one",
    ];
    let seen = poll_until(COMMAND_TIMEOUT, || {
        let (lines, revisions) = watch_lines(&mut c, 2);
        (lines.len() >= expected.len()).then_some((lines, revisions))
    });
    let Some((lines, revisions)) = seen else {
        panic!(
            "node 2 printed {:?}\n{}",
            watch_lines(&mut c, 2),
            c.node(2).diagnostics()
        );
    };
    assert_eq!(lines, expected);
    assert!(revisions[0] >= from, "{revisions:?} from {from}");
    assert!(
        revisions.windows(2).all(|pair| pair[0] < pair[1]),
        "{revisions:?}"
    );

    // Once `unwatch` has answered, the watch prints nothing more.
    assert_eq!(c.node(2).command("unwatch").text(), "watch stopped");
    c.must_put(1, "greet/three", "unwatched");
    c.assert_get(2, "greet/three", some("unwatched"));
    assert_eq!(watch_lines(&mut c, 2).0, expected);
    assert_eq!(c.node(2).command("unwatch").text(), "no watch to stop");
}
