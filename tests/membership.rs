//! Membership changes, end to end on real `ondisk` processes: adding a node (a learner at once,
//! promoted to voter by the leader once it has caught up), removing one (it shuts itself down),
//! removing the leader, refusals (duplicates, removed ids, the last voter, no quorum, malformed
//! commands), the kv-db `POST /ID` / `DELETE /ID` flow, and growing and shrinking a cluster
//! while clients keep writing.
//!
//! Every test starts its own processes on fresh ports and a fresh temporary data directory, so
//! tests can run in parallel.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::fs;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::http::{agent, http, request, Answer};
use common::*;

/// What a node prints when it stops because it was removed from the cluster.
const REMOVED_MESSAGE: &str = "I've been removed from the cluster! Shutting down.";
/// The REPL's answer to a membership change that took effect.
const CHANGE_OK: &str = "membership change completed successfully";
/// How every refused or failed membership change starts (one stderr line).
const CHANGE_FAILED: &str = "membership change failed, ";
/// The documented, retryable refusal of a change made while another one is in progress.
const BUSY: &str = "busy, try again: another membership change is in progress";
/// How long a membership change may take to show its effects (a promotion, a removed node's
/// exit, every node agreeing on the membership). Generous: other suites may share the CPUs.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(45);

fn join_args() -> Vec<OsString> {
    vec!["--join".into()]
}

// ---------------------------------------------------------------------------
// REPL helpers
// ---------------------------------------------------------------------------

/// Types a membership command (`add ...`, `remove ...`) at node `id`'s REPL: `Ok` on the success
/// line, otherwise `Err` with the stderr line that answered it (a `membership change failed, `
/// line, `invalid input`, or an `error: ` line).
fn membership(c: &mut Cluster, id: usize, line: &str) -> Result<(), String> {
    let (stream, reply) =
        c.node(id)
            .command_until(line, COMMAND_TIMEOUT, |stream, l| match stream {
                Stream::Stdout => true,
                Stream::Stderr => {
                    l.starts_with(CHANGE_FAILED.as_bytes())
                        || l.starts_with(b"invalid input")
                        || l.starts_with(b"error:")
                }
            });
    match (stream, lossy(&reply)) {
        (Stream::Stdout, text) if text == CHANGE_OK => Ok(()),
        (Stream::Stdout, text) => Err(format!("unexpected stdout answer: {text}")),
        (Stream::Stderr, text) => Err(text),
    }
}

/// [`membership`], retried for as long as the answer is the busy refusal, which tells the client
/// to try again. Changes the cluster makes by itself (a node recording its addresses, the leader
/// promoting a learner) can cause it; whether they should is checked on its own by
/// `a_change_issued_while_the_cluster_records_its_own_addresses_is_not_refused_as_busy`.
fn membership_retrying_busy(c: &mut Cluster, id: usize, line: &str) -> Result<(), String> {
    let busy = format!("{CHANGE_FAILED}{BUSY}");
    let mut last = Err(busy.clone());
    poll_until(SETTLE_TIMEOUT, || {
        last = membership(c, id, line);
        (last.as_ref() != Err(&busy)).then_some(())
    });
    last
}

/// A membership command that must succeed (after retrying while busy); panics with every node's
/// diagnostics otherwise.
fn must_change(c: &mut Cluster, id: usize, line: &str) {
    if let Err(e) = membership_retrying_busy(c, id, line) {
        panic!("`{line}` on node {id} failed: {e}\n{}", c.diagnostics());
    }
}

/// A membership command that must be refused with exactly `membership change failed, REASON`
/// (after retrying while busy).
fn must_refuse(c: &mut Cluster, id: usize, line: &str, reason: &str) {
    let expected = format!("{CHANGE_FAILED}{reason}");
    match membership_retrying_busy(c, id, line) {
        Err(got) if got == expected => {}
        other => panic!(
            "`{line}` on node {id}: expected {expected:?}, got {other:?}\n{}",
            c.diagnostics()
        ),
    }
}

/// The lines `members` prints on node `id`.
fn members_lines(c: &mut Cluster, id: usize) -> Vec<String> {
    c.node(id)
        .command_stdout_lines("members")
        .iter()
        .map(|l| lossy(l))
        .collect()
}

// ---------------------------------------------------------------------------
// HTTP helpers
// ---------------------------------------------------------------------------

/// `GET /v1/members` on `http`, or `None` when the node does not answer with JSON.
fn members_json(http: SocketAddr) -> Option<serde_json::Value> {
    let answer = request(
        &agent(Duration::from_secs(5)),
        "GET",
        &format!("http://{http}/v1/members"),
        b"",
    )
    .ok()?;
    (answer.status == 200)
        .then(|| serde_json::from_slice(&answer.body).ok())
        .flatten()
}

/// Every member's role in a `/v1/members` answer: id → voter (`true`) or learner.
fn roles_in(members: &serde_json::Value) -> Option<BTreeMap<u64, bool>> {
    members["members"]
        .as_array()?
        .iter()
        .map(|m| Some((m["id"].as_u64()?, m["voter"].as_bool()?)))
        .collect()
}

/// Whether every member in a `/v1/members` answer has its HTTP address recorded.
fn addresses_in(members: &serde_json::Value) -> bool {
    members["members"].as_array().is_some_and(|all| {
        all.iter()
            .all(|m| m["http_addr"].as_str().is_some_and(|a| !a.is_empty()))
    })
}

/// Every member's role as the node serving `http` sees it: id → voter (`true`) or learner.
fn roles(http: SocketAddr) -> Option<BTreeMap<u64, bool>> {
    roles_in(&members_json(http)?)
}

/// Whether the node serving `http` lists `expected` (id → voter) exactly, and, if `addresses`,
/// every member's HTTP address.
fn lists(http: SocketAddr, expected: &BTreeMap<u64, bool>, addresses: bool) -> bool {
    members_json(http).is_some_and(|members| {
        roles_in(&members).as_ref() == Some(expected) && (!addresses || addresses_in(&members))
    })
}

/// Polls until every node in `on` reports exactly the members `expected` (id → voter).
fn wait_for_roles(c: &mut Cluster, on: &[usize], expected: &[(u64, bool)]) {
    wait_for_members(c, on, expected, false);
}

/// Polls until every node in `on` reports exactly the members `expected` (id → voter) and every
/// member's HTTP address. Each node records its own HTTP address in the membership shortly
/// after it starts or joins, which is itself a membership change; waiting for it lets a test
/// exercise the change it is about on its own. (A change issued before that is covered by
/// `a_change_issued_while_the_cluster_records_its_own_addresses_is_not_refused_as_busy`.)
fn wait_until_settled(c: &mut Cluster, on: &[usize], expected: &[(u64, bool)]) {
    wait_for_members(c, on, expected, true);
}

fn wait_for_members(c: &mut Cluster, on: &[usize], expected: &[(u64, bool)], addresses: bool) {
    let expected: BTreeMap<u64, bool> = expected.iter().copied().collect();
    let what = if addresses {
        format!("nodes {on:?} all report the members {expected:?} (id → voter) with their HTTP addresses")
    } else {
        format!("nodes {on:?} all report the members {expected:?} (id → voter)")
    };
    let on = on.to_vec();
    let mut last_seen = BTreeMap::new();
    if poll_until(SETTLE_TIMEOUT, || {
        for &id in &on {
            let seen = members_json(c.http_addr(id));
            let matches = seen.as_ref().is_some_and(|members| {
                roles_in(members).as_ref() == Some(&expected)
                    && (!addresses || addresses_in(members))
            });
            last_seen.insert(id, seen);
            if !matches {
                return None;
            }
        }
        Some(())
    })
    .is_none()
    {
        panic!(
            "timed out after {SETTLE_TIMEOUT:?} waiting until {what}; last seen: {last_seen:?}\n{}",
            c.diagnostics()
        );
    }
}

/// Starts `n` nodes and waits until they have a leader and have settled (see
/// [`wait_until_settled`]). Returns the leader.
fn settled_cluster(n: usize) -> (Cluster, usize) {
    let mut c = Cluster::start(n);
    c.wait_for_leader();
    let ids = c.ids();
    let voters: Vec<(u64, bool)> = ids.iter().map(|&id| (id as u64, true)).collect();
    wait_until_settled(&mut c, &ids, &voters);
    let leader = c.wait_for_leader();
    (c, leader)
}

/// Hands leadership to node `to` unless it leads already, asking the current leader (openraft's
/// leader transfer), and waits until every node sees it lead.
fn make_leader(c: &mut Cluster, to: usize) {
    let body = format!(r#"{{"to":{to}}}"#);
    c.wait_until(SETTLE_TIMEOUT, &format!("node {to} leads"), |c| {
        match c.leader_index() {
            Some(leader) if leader == to => true,
            Some(leader) => {
                let url = format!("http://{}/v1/transfer-leader", c.http_addr(leader));
                let _ = request(&agent(COMMAND_TIMEOUT), "POST", &url, body.as_bytes());
                false
            }
            None => false,
        }
    });
}

fn assert_answer(answer: &Answer, status: u16, what: &str) {
    assert_eq!(
        answer.status,
        status,
        "{what}: expected {status}, got {} with body {}",
        answer.status,
        answer.text()
    );
}

/// Asserts a refusal: 409 with the JSON body `{"error": reason}`.
fn assert_conflict(answer: &Answer, reason: &str, what: &str) {
    assert_answer(answer, 409, what);
    assert_eq!(
        answer.json()["error"],
        reason,
        "{what}: unexpected refusal reason"
    );
}

/// `POST /ID` or `DELETE /ID`, retried for as long as the answer is the busy refusal (409 with
/// `Retry-After`), as that answer asks (see [`membership_retrying_busy`]).
fn membership_http(method: &str, url: &str, body: &[u8]) -> Answer {
    let mut last = None;
    poll_until(SETTLE_TIMEOUT, || {
        let answer = http(method, url, body);
        let busy = answer.status == 409
            && answer.headers.contains_key("retry-after")
            && answer.text().contains(BUSY);
        last = Some(answer);
        (!busy).then_some(())
    });
    last.expect("at least one attempt")
}

// ---------------------------------------------------------------------------
// Process helpers
// ---------------------------------------------------------------------------

/// Waits for node `id` to shut itself down after its removal: exit status 0 and the removal
/// message on stdout.
fn assert_exits_as_removed(c: &mut Cluster, id: usize) {
    let status = match c.node(id).wait_exit_opt(SETTLE_TIMEOUT) {
        Some(status) => status,
        None => panic!(
            "removed node {id} still running {SETTLE_TIMEOUT:?} after its removal\n{}",
            c.diagnostics()
        ),
    };
    assert_removed_exit(c.node(id), status);
}

fn assert_removed_exit(node: &mut Node, status: std::process::ExitStatus) {
    node.wait_pipes_closed(Duration::from_secs(5));
    let stdout: Vec<String> = node.stdout_lines().iter().map(|l| lossy(l)).collect();
    assert!(
        status.success(),
        "a removed node exits with status 0, got {status:?}\n{}",
        node.diagnostics()
    );
    assert!(
        stdout.iter().any(|l| l == REMOVED_MESSAGE),
        "a removed node prints {REMOVED_MESSAGE:?}; stdout: {stdout:#?}\n{}",
        node.diagnostics()
    );
}

/// Starts a 3-node cluster, adds node 4 through node `via`'s REPL, starts it with `--join` and
/// waits until every node sees it as a voter. Returns the leader at the start.
fn three_nodes_plus_a_fourth(via: usize) -> (Cluster, usize) {
    let (mut c, leader) = settled_cluster(3);
    let spec = c.next_node_spec(join_args());
    must_change(&mut c, via, &format!("add {} 4", spec.raft_addr()));
    c.launch_node(spec);
    wait_until_settled(
        &mut c,
        &[1, 2, 3, 4],
        &[(1, true), (2, true), (3, true), (4, true)],
    );
    (c, leader)
}

fn some(v: &str) -> Option<&[u8]> {
    Some(v.as_bytes())
}

// ---------------------------------------------------------------------------
// Adding a node
// ---------------------------------------------------------------------------

#[test]
fn a_node_added_through_the_repl_catches_up_on_data_written_before_and_after_and_becomes_a_voter() {
    let (mut c, leader) = settled_cluster(3);
    let follower = c.followers(leader)[0];
    for i in 0..20 {
        c.must_put(1 + i % 3, &format!("before-{i}"), format!("old value {i}"));
    }

    // Added from a follower's REPL: the change is forwarded to the leader.
    let spec = c.next_node_spec(join_args());
    let addr4 = spec.raft_addr();
    must_change(&mut c, follower, &format!("add {addr4} 4"));

    // Until it runs it cannot catch up, so it stays a learner.
    wait_for_roles(
        &mut c,
        &[1, 2, 3],
        &[(1, true), (2, true), (3, true), (4, false)],
    );
    let listed = members_lines(&mut c, leader);
    let leader_line = format!("member {leader}: {} (voter, leader)", c.raft_addr(leader));
    let learner_line = format!("member 4: {addr4} (learner)");
    assert!(
        listed.contains(&leader_line) && listed.contains(&learner_line),
        "`members` on the leader should list {leader_line:?} and {learner_line:?}: {listed:#?}"
    );
    assert_eq!(listed.len(), 4, "four members expected: {listed:#?}");

    c.launch_node(spec);
    for i in 0..20 {
        c.must_put(1 + i % 4, &format!("after-{i}"), format!("new value {i}"));
    }
    for i in 0..20 {
        c.assert_get(4, &format!("before-{i}"), some(&format!("old value {i}")));
        c.assert_get(4, &format!("after-{i}"), some(&format!("new value {i}")));
    }

    // The leader promotes it by itself once it has caught up; every node agrees, itself too.
    wait_for_roles(
        &mut c,
        &[1, 2, 3, 4],
        &[(1, true), (2, true), (3, true), (4, true)],
    );
    let listed = members_lines(&mut c, 4);
    let voter_line = format!("member 4: {addr4} (voter)");
    assert!(
        listed.contains(&voter_line),
        "`members` on node 4 should list {voter_line:?}: {listed:#?}"
    );
    let leader_now = c.wait_for_leader();
    let reply = c.node(4).command("LEADER");
    assert_eq!(
        reply,
        Reply::Stdout(format!("leader: {leader_now} {}", c.raft_addr(leader_now)).into_bytes()),
        "`leader` on node 4"
    );
    let status = c.node(4).status();
    assert_eq!(status["state"], "Follower", "node 4's status: {status:?}");

    // It serves the HTTP API like any member, and records its HTTP address in the membership.
    let answer = http("GET", &format!("http://{}/before-7", c.http_addr(4)), b"");
    assert_answer(&answer, 200, "GET /before-7 on node 4");
    assert_eq!(answer.body, b"old value 7");
    let answer = http(
        "PUT",
        &format!("http://{}/written-on-4", c.http_addr(4)),
        b"via node 4",
    );
    assert_answer(&answer, 204, "PUT on node 4");
    c.assert_get(2, "written-on-4", some("via node 4"));
    let http4 = c.http_addr(4).to_string();
    let recorded = poll_until(SETTLE_TIMEOUT, || {
        let members = members_json(c.http_addr(1))?;
        let node4 = members["members"]
            .as_array()?
            .iter()
            .find(|m| m["id"] == 4)?
            .clone();
        (node4["http_addr"] == http4.as_str()).then_some(node4)
    });
    assert!(
        recorded.is_some(),
        "node 1 never listed node 4's HTTP address {http4}: {:?}",
        members_json(c.http_addr(1))
    );
}

/// Nodes record their own HTTP addresses in the membership as they start or join, and the leader
/// promotes caught-up learners by itself. A user's change issued meanwhile competes with no
/// other user's change, so it must go through at once rather than be refused as busy.
#[test]
fn a_change_issued_while_the_cluster_records_its_own_addresses_is_not_refused_as_busy() {
    let mut c = Cluster::start3();
    let mut problems = Vec::new();
    // As soon as a leader is elected, as a script setting up a cluster would do.
    c.wait_for_leader();
    let spec = c.next_node_spec(join_args());
    let line = format!("add {} 4", spec.raft_addr());
    if let Err(e) = membership(&mut c, 1, &line) {
        problems.push(format!("`{line}` as soon as a leader was elected: {e}"));
        must_change(&mut c, 1, &line);
    }
    c.launch_node(spec);
    // As soon as the new node serves reads, while it records its address and is promoted.
    c.must_put(2, "k", "v");
    c.assert_get(4, "k", some("v"));
    if let Err(e) = membership(&mut c, 2, "remove 3") {
        problems.push(format!(
            "`remove 3` as soon as the joined node 4 served a read: {e}"
        ));
        must_change(&mut c, 2, "remove 3");
    }
    assert_exits_as_removed(&mut c, 3);
    wait_until_settled(&mut c, &[1, 2, 4], &[(1, true), (2, true), (4, true)]);
    assert!(
        problems.is_empty(),
        "changes refused although no other change was requested:\n  {}\n{}",
        problems.join("\n  "),
        c.diagnostics()
    );
}

#[test]
fn a_node_joining_after_the_log_was_compacted_catches_up_from_a_snapshot_that_keeps_removed_ids() {
    let mut c = Cluster::start3();
    c.wait_for_leader();
    // Snapshot often and keep little log behind each snapshot, so a late joiner cannot catch up
    // from the log alone.
    c.kill_all();
    let compact: Vec<OsString> = ["--snapshot-entries", "20", "--compaction-overhead", "5"]
        .iter()
        .map(OsString::from)
        .collect();
    for id in c.ids() {
        c.set_extra_args(id, compact.clone());
    }
    c.restart_all();
    c.wait_for_leader();
    wait_until_settled(&mut c, &[1, 2, 3], &[(1, true), (2, true), (3, true)]);

    // Node 4 joins and is removed again; its removal is then buried under enough writes that
    // every node compacts its log past it.
    let spec = c.next_node_spec(join_args());
    must_change(&mut c, 1, &format!("add {} 4", spec.raft_addr()));
    c.launch_node(spec);
    wait_until_settled(
        &mut c,
        &[1, 2, 3, 4],
        &[(1, true), (2, true), (3, true), (4, true)],
    );
    must_change(&mut c, 2, "remove 4");
    assert_exits_as_removed(&mut c, 4);
    for i in 0..80 {
        c.must_put(1 + i % 3, &format!("k{i:03}"), format!("v{i}"));
    }
    let removal_purged = |c: &mut Cluster| {
        (1..=3)
            .all(|id| status_u64(&c.node(id).status(), "purged").is_some_and(|purged| purged > 40))
    };
    c.wait_until(
        SETTLE_TIMEOUT,
        "every node has purged its log past the removal of node 4",
        removal_purged,
    );

    // Node 5 can only catch up from a snapshot.
    let spec = c.next_node_spec(join_args());
    must_change(&mut c, 3, &format!("add {} 5", spec.raft_addr()));
    c.launch_node(spec);
    wait_until_settled(
        &mut c,
        &[1, 2, 3, 5],
        &[(1, true), (2, true), (3, true), (5, true)],
    );
    let status = http("GET", &format!("http://{}/v1/status", c.http_addr(5)), b"").json();
    assert!(
        status["snapshots_installed"].as_u64().unwrap_or(0) >= 1,
        "node 5 should have caught up from a snapshot: {status}"
    );
    for i in [0, 41, 79] {
        c.assert_get(5, &format!("k{i:03}"), some(&format!("v{i}")));
    }

    // Shrink the cluster to node 5 alone, so the decision about node 4 is node 5's, whose
    // knowledge of that removal came from the snapshot only.
    for id in 1..=3 {
        must_change(&mut c, 5, &format!("remove {id}"));
        assert_exits_as_removed(&mut c, id);
    }
    wait_for_roles(&mut c, &[5], &[(5, true)]);
    let fresh = free_addr();
    must_refuse(
        &mut c,
        5,
        &format!("add {fresh} 4"),
        "node 4 was removed from the cluster and its id cannot be used again; pick a new id",
    );
    c.assert_get(5, "k079", some("v79"));
}

// ---------------------------------------------------------------------------
// Removing a node
// ---------------------------------------------------------------------------

#[test]
fn a_removed_node_shuts_itself_down_with_status_0_and_again_when_restarted_with_its_data() {
    let (mut c, _) = three_nodes_plus_a_fourth(2);
    c.must_put(4, "seen-by-4", "yes");

    must_change(&mut c, 1, "remove 4");
    assert_exits_as_removed(&mut c, 4);
    wait_for_roles(&mut c, &[1, 2, 3], &[(1, true), (2, true), (3, true)]);
    for id in 1..=3 {
        let listed = members_lines(&mut c, id);
        assert_eq!(
            listed.len(),
            3,
            "node {id} should list three members: {listed:#?}"
        );
        assert!(
            !listed.iter().any(|l| l.starts_with("member 4:")),
            "node {id} still lists node 4: {listed:#?}"
        );
    }

    // Restarted with its old data, it says so again and exits 0 without rejoining.
    let mut again = Node::launch(c.spec(4));
    let status = again.wait_exit(SETTLE_TIMEOUT);
    assert_removed_exit(&mut again, status);

    // The three remaining nodes carry on.
    c.must_put(3, "after-removal", "still writable");
    for id in 1..=3 {
        c.assert_get(id, "after-removal", some("still writable"));
        c.assert_get(id, "seen-by-4", some("yes"));
    }
    wait_for_roles(&mut c, &[1, 2, 3], &[(1, true), (2, true), (3, true)]);
}

#[test]
fn a_node_removed_while_it_was_down_shuts_itself_down_when_it_comes_back() {
    let (mut c, _) = three_nodes_plus_a_fourth(1);
    c.kill(4);
    // With node 4 down, three of four voters are still a quorum.
    must_change(&mut c, 3, "remove 4");
    wait_for_roles(&mut c, &[1, 2, 3], &[(1, true), (2, true), (3, true)]);
    c.must_put(1, "written-after-removal", "x");

    // Back with its old data, which does not record the removal, it must still find out and
    // stop instead of disturbing the cluster.
    let mut back = Node::launch(c.spec(4));
    let status = match back.wait_exit_opt(SETTLE_TIMEOUT) {
        Some(status) => status,
        None => panic!(
            "node 4, removed while down, still runs {SETTLE_TIMEOUT:?} after restarting\n{}\n{}",
            back.diagnostics(),
            c.diagnostics()
        ),
    };
    assert_removed_exit(&mut back, status);
    c.must_put(2, "still-fine", "y");
    c.assert_get(1, "still-fine", some("y"));
}

/// The leader tells a node it removes so over the network, at the node's address. When that node
/// is down and a new node has taken over its address, the notice reaches the new node, which must
/// refuse it (it names another node) and keep running; it can then join as usual.
#[test]
fn a_new_node_on_the_address_of_a_node_removed_while_down_refuses_the_removal_notice() {
    let (mut c, leader) = settled_cluster(3);
    let followers = c.followers(leader);
    let (gone, other) = (followers[0], followers[1]);
    c.kill(gone);
    // The new node is up at the old address before the removal, so the leader's notice finds it.
    let mut spec = c.next_node_spec(join_args());
    spec.cluster[3] = c.raft_addr(gone);
    let new = c.launch_node(spec);
    must_change(&mut c, leader, &format!("remove {gone}"));

    let gave_up = format!("node {gone} did not acknowledge its removal");
    c.wait_until(
        SETTLE_TIMEOUT,
        "the leader stops telling the removed node, or the new node stops",
        |c| !c.is_running(new) || c.node(leader).log_contents().contains(&gave_up),
    );
    assert!(
        c.is_running(new),
        "node {new} stopped on the removal notice meant for node {gone}\n{}",
        c.diagnostics()
    );
    assert!(
        c.node(new).log_contents().contains(&format!(
            "refused a removal notice: it is for node {gone}, and this is node {new}"
        )),
        "node {new} should log that it refused the notice for node {gone}\n{}",
        c.diagnostics()
    );

    let old_addr = c.raft_addr(gone);
    must_change(&mut c, leader, &format!("add {old_addr} {new}"));
    let voters = [leader, other, new].map(|id| (id as u64, true));
    wait_for_roles(&mut c, &[leader, other, new], &voters);
    c.must_put(new, "joined", "yes");
    c.assert_get(leader, "joined", some("yes"));
}

/// Anyone can reach the raft port. A removal notice is acted on only if it names the receiver,
/// is not from an older term, comes from a member of the receiver's cluster, and that member
/// confirms the removal: forged notices, even one right in every field a client can see, are
/// refused with the reason, and the node keeps serving.
#[test]
fn forged_removal_notices_are_refused_and_the_node_keeps_running() {
    use ondisk::network::{CallError, Peers, RemoteError, RemovalNotice, Request};
    use ondisk::types::Vote;

    let (mut c, leader) = settled_cluster(3);
    let target = c.followers(leader)[0];
    let term = status_u64(&c.node(target).status(), "term").expect("a term in the status");
    let notice = |to: usize, term: u64, from: usize| RemovalNotice {
        target: to as u64,
        vote: Vote::new_committed(term, from as u64),
    };
    let forgeries = [
        (notice(target + 10, term, leader), "it is for node"),
        (
            notice(target, term - 1, leader),
            "older than this node's term",
        ),
        (
            notice(target, term, 9),
            "is not a member of this node's cluster",
        ),
        (
            notice(target, term + 1, leader),
            "says this node is still a member",
        ),
    ];
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
    let peers = Peers::default();
    let addr = c.raft_addr(target).to_string();
    for (forged, refusal) in forgeries {
        let what = format!("{forged:?}");
        let answer = runtime.block_on(peers.call(&addr, Request::Removed(forged), COMMAND_TIMEOUT));
        match answer {
            Err(CallError::Remote(RemoteError::Refused(reason))) if reason.contains(refusal) => {}
            other => panic!(
                "the forged notice {what} should be refused ({refusal:?}), got {other:?}\n{}",
                c.diagnostics()
            ),
        }
    }
    assert!(
        c.is_running(target),
        "node {target} stopped on a forged removal notice\n{}",
        c.diagnostics()
    );
    c.must_put(target, "still-here", "yes");
    c.assert_get(target, "still-here", some("yes"));
}

#[test]
fn a_removed_id_is_refused_on_every_node_also_after_the_whole_cluster_restarts() {
    let (mut c, _) = three_nodes_plus_a_fourth(1);
    let old_addr4 = c.raft_addr(4);
    must_change(&mut c, 1, "remove 4");
    assert_exits_as_removed(&mut c, 4);
    wait_for_roles(&mut c, &[1, 2, 3], &[(1, true), (2, true), (3, true)]);

    let reason =
        "node 4 was removed from the cluster and its id cannot be used again; pick a new id";
    // Refused on nodes other than the one that removed it, with a new or its old address.
    must_refuse(&mut c, 2, &format!("add {} 4", free_addr()), reason);
    must_refuse(&mut c, 3, &format!("add {old_addr4} 4"), reason);
    let answer = membership_http(
        "POST",
        &format!("http://{}/4", c.http_addr(3)),
        format!("http://{}", free_addr()).as_bytes(),
    );
    assert_conflict(&answer, reason, "POST /4 on node 3");

    // The removed ids are replicated, durable state: a crash of every node changes nothing.
    c.kill_all();
    for id in 1..=3 {
        c.restart(id);
    }
    c.wait_for_leader();
    for id in [2, 3] {
        must_refuse(&mut c, id, &format!("add {} 4", free_addr()), reason);
    }
    let answer = membership_http(
        "POST",
        &format!("http://{}/4", c.http_addr(2)),
        format!("http://{old_addr4}").as_bytes(),
    );
    assert_conflict(&answer, reason, "POST /4 on node 2 after the restart");
    wait_until_settled(&mut c, &[1, 2, 3], &[(1, true), (2, true), (3, true)]);

    // A new id is welcome.
    must_change(&mut c, 2, &format!("add {} 5", free_addr()));
}

#[test]
fn removing_the_leader_itself_hands_over_to_a_new_leader_and_the_old_one_exits() {
    let (mut c, old_leader) = settled_cluster(3);
    let follower = c.followers(old_leader)[0];
    c.must_put(old_leader, "before", "1");

    must_change(&mut c, follower, &format!("remove {old_leader}"));
    assert_exits_as_removed(&mut c, old_leader);

    let new_leader = c.wait_for_leader();
    assert_ne!(new_leader, old_leader);
    let rest: Vec<usize> = c.running_ids();
    assert_eq!(rest.len(), 2, "two nodes remain: {rest:?}");
    let expected: Vec<(u64, bool)> = rest.iter().map(|&id| (id as u64, true)).collect();
    wait_for_roles(&mut c, &rest, &expected);

    for (i, &id) in rest.iter().enumerate() {
        c.must_put(id, &format!("after-{i}"), format!("written on {id}"));
    }
    for &id in &rest {
        c.assert_get(id, "before", some("1"));
        for (i, &writer) in rest.iter().enumerate() {
            c.assert_get(
                id,
                &format!("after-{i}"),
                some(&format!("written on {writer}")),
            );
        }
    }
}

// ---------------------------------------------------------------------------
// Refusals
// ---------------------------------------------------------------------------

/// Kills two of three nodes (the two followers, or the leader and one follower), tries an `add`
/// and/or a `remove` on the survivor through the REPL and HTTP, then brings the others back and
/// checks that the membership is exactly what it was, also once the next change has been made.
/// Every deviation is collected, then reported together.
fn changes_without_a_quorum_time_out_and_change_nothing(
    survivor_is_leader: bool,
    try_add: bool,
    try_remove: bool,
) {
    let (mut c, leader) = settled_cluster(3);
    let followers = c.followers(leader);
    c.must_put(leader, "before", "1");
    let (survivor, killed) = if survivor_is_leader {
        (leader, followers.clone())
    } else {
        (followers[0], vec![leader, followers[1]])
    };
    for &id in &killed {
        c.kill(id);
    }
    let mut problems: Vec<String> = Vec::new();
    let timed_out =
        |op: &str| format!("{CHANGE_FAILED}{op} timed out after 2s (is a quorum of nodes up?)");

    if try_add {
        let started = Instant::now();
        let outcome = membership(&mut c, survivor, &format!("add {} 5", free_addr()));
        let took = started.elapsed();
        if outcome != Err(timed_out("add")) {
            problems.push(format!(
                "`add ADDR 5` on node {survivor}: expected {:?}, got {outcome:?}",
                timed_out("add")
            ));
        }
        if took < Duration::from_millis(1500) {
            problems.push(format!(
                "`add ADDR 5` failed after {took:?}, before the 2s timeout"
            ));
        }
        let answer = http(
            "POST",
            &format!("http://{}/6", c.http_addr(survivor)),
            format!("http://{}", free_addr()).as_bytes(),
        );
        if answer.status != 503 {
            problems.push(format!(
                "POST /6 on node {survivor}: expected 503, got {} {}",
                answer.status,
                answer.text()
            ));
        }
    }
    if try_remove {
        let line = format!("remove {}", killed[0]);
        let outcome = membership(&mut c, survivor, &line);
        if outcome != Err(timed_out("remove")) {
            problems.push(format!(
                "`{line}` on node {survivor}: expected {:?}, got {outcome:?}",
                timed_out("remove")
            ));
        }
        let answer = http(
            "DELETE",
            &format!("http://{}/{}", c.http_addr(survivor), killed[1]),
            b"",
        );
        if answer.status != 503 {
            problems.push(format!(
                "DELETE /{} on node {survivor}: expected 503, got {} {}",
                killed[1],
                answer.status,
                answer.text()
            ));
        }
    }

    // Bring the others back; once a write has committed in the current term, every entry the
    // survivor may still hold is either committed or gone.
    // The leader may need a few attempts: its connections to the restarted nodes reconnect with
    // backoff, and a put of the same value may safely be repeated.
    c.restart_all();
    let mut now = c.wait_for_leader();
    c.wait_until(
        Duration::from_secs(30),
        "a put commits after the restart",
        |c| {
            now = c.wait_for_leader();
            c.node(now).put("after", "2").is_ok()
        },
    );
    for id in c.ids() {
        c.assert_get(id, "after", some("2"));
    }
    let expected: BTreeSet<String> = (1..=3)
        .map(|m| format!("member {m}: {}", c.raft_addr(m)))
        .collect();
    for id in c.ids() {
        let listed = members_lines(&mut c, id);
        let prefixes: BTreeSet<String> = listed
            .iter()
            .map(|l| l.split(" (").next().unwrap_or("").to_string())
            .collect();
        if prefixes != expected || !listed.iter().all(|l| l.contains("(voter")) {
            problems.push(format!(
                "`members` on node {id} after the failed changes should list the voters 1, 2, 3 only: {listed:?}"
            ));
        }
    }

    // The next change does what it says, and only that: one voter fewer.
    let target = *c
        .ids()
        .iter()
        .find(|&&id| id != now && (!try_remove || id != killed[0]))
        .expect("a node to remove");
    let remaining: BTreeSet<u64> = c
        .ids()
        .into_iter()
        .filter(|&id| id != target)
        .map(|id| id as u64)
        .collect();
    match membership_retrying_busy(&mut c, now, &format!("remove {target}")) {
        Ok(()) => {
            let voters = poll_until(SETTLE_TIMEOUT, || {
                roles(c.http_addr(now))
                    .filter(|r| !r.contains_key(&(target as u64)))
                    .map(|r| {
                        r.into_iter()
                            .filter(|&(_, voter)| voter)
                            .map(|(id, _)| id)
                            .collect::<BTreeSet<u64>>()
                    })
            });
            if voters.as_ref() != Some(&remaining) {
                problems.push(format!(
                    "after `remove {target}` the leader (node {now}) should list the voters {remaining:?}, it lists {voters:?}"
                ));
            }
        }
        Err(e) => problems.push(format!("`remove {target}` after the recovery: {e}")),
    }
    assert!(
        problems.is_empty(),
        "membership changes without a quorum (survivor: node {survivor}, the {}):\n  {}\n{}",
        if survivor_is_leader {
            "leader"
        } else {
            "follower"
        },
        problems.join("\n  "),
        c.diagnostics()
    );
}

#[test]
fn without_a_quorum_an_add_on_the_surviving_leader_times_out_and_changes_nothing() {
    changes_without_a_quorum_time_out_and_change_nothing(true, true, false);
}

#[test]
fn without_a_quorum_a_remove_on_the_surviving_leader_times_out_and_changes_nothing() {
    changes_without_a_quorum_time_out_and_change_nothing(true, false, true);
}

#[test]
fn without_a_quorum_add_and_remove_on_a_surviving_follower_time_out_and_change_nothing() {
    changes_without_a_quorum_time_out_and_change_nothing(false, true, true);
}

/// Removing a voter goes through a joint configuration, which needs a majority of the remaining
/// voters too. With the only other remaining voter down, the leader still confirms its leadership
/// (with the voter being removed) and proposes the change, which then cannot commit in time. The
/// answer must say the outcome is unknown, not that nothing changed: the change completes once
/// the voter is back.
#[test]
fn a_change_that_times_out_after_it_was_proposed_reports_an_unknown_outcome_and_completes_later() {
    let (mut c, leader) = settled_cluster(3);
    let followers = c.followers(leader);
    let (down, removed) = (followers[0], followers[1]);
    c.kill(down);
    let outcome = membership(&mut c, leader, &format!("remove {removed}"));
    let unknown = format!("{CHANGE_FAILED}remove outcome unknown: ");
    assert!(
        matches!(&outcome, Err(line) if line.starts_with(&unknown)),
        "`remove {removed}` without the votes to commit it: expected {unknown:?}..., got {outcome:?}\n{}",
        c.diagnostics()
    );

    c.restart(down);
    wait_for_roles(
        &mut c,
        &[leader, down],
        &[(leader as u64, true), (down as u64, true)],
    );
    assert_exits_as_removed(&mut c, removed);
}

/// The membership rules read applied state (removed ids, learners kept learners), and a newly
/// elected leader may not yet have applied all it has committed. Here one node cannot apply (its
/// state database is on a small disk, with less free space than storage keeps in reserve, so every
/// apply waits) while its log keeps up, and it is made the leader. It must neither re-admit a
/// removed id nor promote a learner that stays one until it has applied what it committed.
#[test]
fn a_new_leader_that_has_not_applied_its_log_does_not_break_the_membership_rules() {
    let (mut c, leader) = settled_cluster(3);
    let lagging = c.followers(leader)[0];
    c.kill(lagging);
    let state = c.data_dir().join(format!("node{lagging}")).join("state");
    let saved = c.root().join("state-before-the-small-disk");
    fs::rename(&state, &saved).expect("move the state database aside");
    fs::create_dir(&state).expect("create the mount point");
    let disk = match Tmpfs::mount(&state, "8m") {
        Ok(disk) => disk,
        Err(why) => {
            eprintln!("SKIPPED: cannot mount a small tmpfs here ({why}); see docs/TESTING.md");
            return;
        }
    };
    for file in fs::read_dir(&saved).expect("list the state database") {
        let file = file.expect("a directory entry");
        fs::copy(file.path(), state.join(file.file_name())).expect("copy a state database file");
    }
    c.restart(lagging);
    let applied = |c: &mut Cluster| status_u64(&c.node(lagging).status(), "applied").unwrap_or(0);
    let committed = |c: &mut Cluster, on: usize| {
        status_u64(&c.node(on).status(), "committed").expect("a commit index")
    };
    // Under load the restarted node may win an election; the setup needs a leader that applies.
    make_leader(&mut c, leader);

    // A removed id, committed while the lagging node applies nothing. Leading, it must wait for
    // its apply before checking an add of that id; checked against stale state, the add would be
    // proposed and commit (its answer then waiting for the stalled apply).
    let removed_addr = free_addr();
    must_change(&mut c, leader, &format!("add {removed_addr} 5"));
    must_change(&mut c, leader, "remove 5");
    let removed_at = committed(&mut c, leader);
    assert!(
        applied(&mut c) < removed_at,
        "node {lagging} applied up to {removed_at} on its small disk: the test cannot show anything\n{}",
        c.diagnostics()
    );
    make_leader(&mut c, lagging);
    let readmitted = membership(&mut c, lagging, &format!("add {removed_addr} 5"));
    let untried = format!("{CHANGE_FAILED}add timed out after 2s (is a quorum of nodes up?)");
    assert_eq!(
        readmitted,
        Err(untried),
        "node {lagging}, leading before it applied the removal of node 5, must not check the add \
         against stale state\n{}",
        c.diagnostics()
    );

    // A learner that stays one (running, so it is caught up), added while the lagging node, no
    // longer leading (handing leadership away needs no applied state), applies nothing. Leading
    // again, it must not promote that learner before it has applied the mark.
    make_leader(&mut c, leader);
    let spec = c.next_node_spec(join_args());
    let body = format!(
        r#"{{"id":4,"addr":"{}","role":"learner"}}"#,
        spec.raft_addr()
    );
    let url = format!("http://{}/v1/members", c.http_addr(leader));
    assert_answer(
        &membership_http("POST", &url, body.as_bytes()),
        204,
        "add-learner 4",
    );
    let learner = c.launch_node(spec);
    let members = [(1, true), (2, true), (3, true), (4, false)];
    wait_for_roles(&mut c, &[leader, lagging, learner], &members);
    make_leader(&mut c, lagging);
    // Once the learner has the lagging leader's first entry, that leader knows it is caught up,
    // which is when it would promote it.
    let led_from = status_u64(&c.node(lagging).status(), "last_log").expect("a last log index");
    c.wait_until(
        SETTLE_TIMEOUT,
        "the learner catches up with the lagging leader",
        |c| status_u64(&c.node(learner).status(), "last_log").is_some_and(|last| last >= led_from),
    );

    let all_committed = committed(&mut c, lagging);
    disk.resize("64m");
    c.wait_until(SETTLE_TIMEOUT, "the lagging node applies its log", |c| {
        applied(c) >= all_committed
    });
    wait_for_roles(&mut c, &[leader, lagging, learner], &members);
    must_refuse(
        &mut c,
        lagging,
        &format!("add {removed_addr} 5"),
        "node 5 was removed from the cluster and its id cannot be used again; pick a new id",
    );
    c.kill(lagging);
}

#[test]
fn duplicate_ids_duplicate_addresses_unknown_ids_and_malformed_commands_are_refused() {
    let (mut c, _) = settled_cluster(3);
    let addr3 = c.raft_addr(3);

    // A refusal is one stderr line and nothing on stdout.
    c.node(1).sync();
    let before = c.node(1).output().len();
    must_refuse(
        &mut c,
        1,
        &format!("add {} 2", free_addr()),
        "node 2 is already a member",
    );
    c.node(1).sync();
    let printed: Vec<(Stream, String)> = c.node(1).output()[before..]
        .iter()
        .filter(|(stream, l)| !(*stream == Stream::Stdout && l.starts_with(b"status:")))
        .map(|(stream, l)| (*stream, lossy(l)))
        .collect();
    assert_eq!(
        printed,
        vec![(
            Stream::Stderr,
            format!("{CHANGE_FAILED}node 2 is already a member")
        )],
        "a refused change prints exactly one stderr line"
    );
    // Command words are case-insensitive.
    must_refuse(
        &mut c,
        2,
        &format!("ADD {} 3", free_addr()),
        "node 3 is already a member",
    );
    must_refuse(
        &mut c,
        3,
        &format!("Add {addr3} 9"),
        &format!("address {addr3} is already used by node 3"),
    );
    match membership_retrying_busy(&mut c, 1, "REMOVE 9") {
        Err(line) if line.starts_with(CHANGE_FAILED) && line.contains('9') => {}
        other => panic!("removing a non-member: {other:?}\n{}", c.diagnostics()),
    }

    for line in [
        "add 4",
        "add localhost:63100 four",
        "add nonsense 4",
        "add localhost:63100",
        "add 127.0.0.1:63100 4 5",
        "remove",
        "remove x",
        "remove 4 5",
        "members now",
    ] {
        let outcome = membership(&mut c, 2, line);
        assert_eq!(
            outcome,
            Err("invalid input".to_string()),
            "{line:?} should be invalid input"
        );
    }
    // The usage that follows `invalid input` lists the membership commands.
    c.node(2).sync();
    let stderr: Vec<String> = c.node(2).stderr_lines().iter().map(|l| lossy(l)).collect();
    for usage in ["add ADDR ID", "remove ID", "members", "leader"] {
        assert!(
            stderr.iter().any(|l| l.trim_start().starts_with(usage)),
            "the usage after `invalid input` should mention {usage:?}: {stderr:#?}"
        );
    }

    // The HTTP form refuses the same way.
    let base = format!("http://{}", c.http_addr(1));
    let answer = membership_http(
        "POST",
        &format!("{base}/2"),
        format!("http://{}", free_addr()).as_bytes(),
    );
    assert_conflict(&answer, "node 2 is already a member", "POST /2");
    let answer = membership_http(
        "POST",
        &format!("{base}/9"),
        format!("http://{addr3}").as_bytes(),
    );
    assert_conflict(
        &answer,
        &format!("address {addr3} is already used by node 3"),
        "POST /9 with node 3's address",
    );
    let answer = http(
        "POST",
        &format!("{base}/four"),
        format!("http://{}", free_addr()).as_bytes(),
    );
    assert_answer(&answer, 400, "POST with a non-numeric id");
    let answer = http("DELETE", &format!("{base}/x"), b"");
    assert_answer(&answer, 400, "DELETE with a non-numeric id");

    // Nothing changed, and the REPL is still usable.
    wait_for_roles(&mut c, &[1, 2, 3], &[(1, true), (2, true), (3, true)]);
    c.must_put(2, "still", "fine");
    c.assert_get(3, "still", some("fine"));
}

#[test]
fn the_last_voter_of_a_one_node_cluster_cannot_be_removed() {
    let (mut c, _) = settled_cluster(1);
    must_refuse(&mut c, 1, "remove 1", "cannot remove the last voter");
    let answer = membership_http("DELETE", &format!("http://{}/1", c.http_addr(1)), b"");
    assert_conflict(&answer, "cannot remove the last voter", "DELETE /1");
    assert!(c.is_running(1), "node 1 must keep running");
    let reply = c.node(1).command("leader");
    assert_eq!(
        reply,
        Reply::Stdout(format!("leader: 1 {}", c.raft_addr(1)).into_bytes())
    );
    c.must_put(1, "alone", "still serving");
    c.assert_get(1, "alone", some("still serving"));
    wait_for_roles(&mut c, &[1], &[(1, true)]);
}

#[test]
fn concurrent_membership_changes_are_each_applied_or_refused_as_busy() {
    let (mut c, _) = settled_cluster(3);
    let targets: Vec<SocketAddr> = c.ids().iter().map(|&id| c.http_addr(id)).collect();
    let ids: Vec<u64> = (10..16).collect();
    let handles: Vec<_> = ids
        .iter()
        .map(|&id| {
            let target = targets[id as usize % targets.len()];
            let peer = format!("http://{}", free_addr());
            thread::spawn(move || {
                (
                    id,
                    http("POST", &format!("http://{target}/{id}"), peer.as_bytes()),
                )
            })
        })
        .collect();
    let mut added = BTreeSet::new();
    for handle in handles {
        let (id, answer) = handle.join().expect("request thread");
        match answer.status {
            204 => {
                added.insert(id);
            }
            409 => {
                let error = answer.json()["error"].as_str().unwrap_or("").to_string();
                assert!(
                    error.starts_with("busy, try again"),
                    "POST /{id}: a concurrent change may only be refused as busy: {error}"
                );
                assert!(
                    answer.headers.contains_key("retry-after"),
                    "POST /{id}: a busy refusal carries Retry-After"
                );
            }
            other => panic!("POST /{id}: unexpected status {other}: {}", answer.text()),
        }
    }
    assert!(
        !added.is_empty(),
        "at least one concurrent add must succeed"
    );
    let mut expected: Vec<(u64, bool)> = vec![(1, true), (2, true), (3, true)];
    expected.extend(added.iter().map(|&id| (id, false)));
    wait_for_roles(&mut c, &[1, 2, 3], &expected);
}

// ---------------------------------------------------------------------------
// The kv-db command line and HTTP membership API
// ---------------------------------------------------------------------------

/// A kv-db style node command line: `--id N --cluster URL,... --port P --data-dir D`, plus the
/// harness's short timings.
fn kvdb_args(
    id: usize,
    cluster: &[SocketAddr],
    port: u16,
    dir: &Path,
    join: bool,
) -> Vec<OsString> {
    let urls: Vec<String> = cluster.iter().map(|a| format!("http://{a}")).collect();
    let mut args: Vec<OsString> = [
        "--id".to_string(),
        id.to_string(),
        "--cluster".into(),
        urls.join(","),
        "--port".into(),
        port.to_string(),
        "--data-dir".into(),
        dir.display().to_string(),
    ]
    .into_iter()
    .chain(common::timing_args().map(String::from))
    .map(OsString::from)
    .collect();
    if join {
        args.push("--join".into());
    }
    args
}

fn launch_kvdb(id: usize, cluster: &[SocketAddr], port: u16, dir: &Path, join: bool) -> Node {
    let mut node = Node::launch_args(
        id,
        kvdb_args(id, cluster, port, dir, join),
        Some(node_log_path(dir, id)),
    );
    if let Err(f) = node.wait_ready(STARTUP_TIMEOUT) {
        panic!("kv-db node {id} did not start\n{}", f.diagnostics);
    }
    node
}

fn all_diagnostics(nodes: &[&Node]) -> String {
    nodes.iter().map(|n| n.diagnostics()).collect()
}

/// Polls `PUT base/key` until it answers 204 (the cluster has a leader and a quorum).
fn put_eventually(base: &str, key: &str, value: &[u8], nodes: &[&Node]) {
    if poll_until(SETTLE_TIMEOUT, || {
        (http("PUT", &format!("{base}/{key}"), value).status == 204).then_some(())
    })
    .is_none()
    {
        panic!(
            "PUT {base}/{key} never succeeded\n{}",
            all_diagnostics(nodes)
        );
    }
}

/// Polls `GET base/key` until it answers 200 with `value`.
fn get_eventually(base: &str, key: &str, value: &[u8], nodes: &[&Node]) {
    let mut last = String::new();
    if poll_until(SETTLE_TIMEOUT, || {
        let answer = http("GET", &format!("{base}/{key}"), b"");
        last = format!("{} {}", answer.status, answer.text());
        (answer.status == 200 && answer.body == value).then_some(())
    })
    .is_none()
    {
        panic!(
            "GET {base}/{key} never answered 200 {:?}; last answer: {last}\n{}",
            lossy(value),
            all_diagnostics(nodes)
        );
    }
}

/// Polls until every node serving one of `https` reports exactly the members `expected`
/// (id → voter), each with its HTTP address recorded.
fn wait_kvdb_settled(https: &[SocketAddr], expected: &[(u64, bool)], nodes: &[&Node]) {
    let expected: BTreeMap<u64, bool> = expected.iter().copied().collect();
    let settled = poll_until(SETTLE_TIMEOUT, || {
        https
            .iter()
            .all(|&h| lists(h, &expected, true))
            .then_some(())
    });
    if settled.is_none() {
        let seen: Vec<_> = https.iter().map(|&h| members_json(h)).collect();
        panic!(
            "the nodes never all listed the members {expected:?} (id → voter) with HTTP addresses; last seen: {seen:?}\n{}",
            all_diagnostics(nodes)
        );
    }
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

#[test]
fn a_single_node_kv_db_cluster_adds_a_node_by_post_and_the_joined_node_serves_the_data() {
    let dir = tempfile::tempdir().expect("tempdir");
    let raft = [free_addr(), free_addr()];
    let ports = [free_port(), free_port()];
    let mut n1 = launch_kvdb(1, &raft[..1], ports[0], dir.path(), false);
    let base1 = format!("http://127.0.0.1:{}", ports[0]);
    put_eventually(&base1, "my-key", b"hello", &[&n1]);
    wait_kvdb_settled(&[local(ports[0])], &[(1, true)], &[&n1]);

    let answer = membership_http(
        "POST",
        &format!("{base1}/2"),
        format!("http://{}", raft[1]).as_bytes(),
    );
    assert_answer(&answer, 204, "POST /2 with node 2's raft URL");
    let mut n2 = launch_kvdb(2, &raft, ports[1], dir.path(), true);
    let base2 = format!("http://127.0.0.1:{}", ports[1]);
    get_eventually(&base2, "my-key", b"hello", &[&n1, &n2]);

    // Node 2 becomes a voter, and both nodes serve writes.
    wait_kvdb_settled(
        &[local(ports[0]), local(ports[1])],
        &[(1, true), (2, true)],
        &[&n1, &n2],
    );
    assert_answer(
        &http("PUT", &format!("{base2}/from-2"), b"two"),
        204,
        "PUT on node 2",
    );
    let answer = http("GET", &format!("{base1}/from-2"), b"");
    assert_answer(&answer, 200, "GET /from-2 on node 1");
    assert_eq!(answer.body, b"two");
    n1.kill();
    n2.kill();
}

#[test]
fn the_kv_db_reconfiguration_walkthrough_adds_node_4_by_post_and_removes_node_3_by_delete() {
    let dir = tempfile::tempdir().expect("tempdir");
    let raft: Vec<SocketAddr> = (0..4).map(|_| free_addr()).collect();
    let ports: Vec<u16> = (0..4).map(|_| free_port()).collect();
    let https: Vec<SocketAddr> = ports.iter().map(|&p| local(p)).collect();
    let base: Vec<String> = https.iter().map(|h| format!("http://{h}")).collect();
    let mut nodes: Vec<Node> = (1..=3)
        .map(|id| launch_kvdb(id, &raft[..3], ports[id - 1], dir.path(), false))
        .collect();
    put_eventually(
        &base[0],
        "my-key",
        b"foo",
        &nodes.iter().collect::<Vec<_>>(),
    );
    wait_kvdb_settled(
        &https[..3],
        &[(1, true), (2, true), (3, true)],
        &nodes.iter().collect::<Vec<_>>(),
    );

    // curl -L http://127.0.0.1:22380/4 -XPOST -d http://127.0.0.1:42379
    let answer = membership_http(
        "POST",
        &format!("{}/4", base[1]),
        format!("http://{}", raft[3]).as_bytes(),
    );
    assert_answer(&answer, 204, "POST /4");
    // ondisk --id 4 --cluster <four URLs> --port 42380 --join
    nodes.push(launch_kvdb(4, &raft, ports[3], dir.path(), true));
    get_eventually(
        &base[3],
        "my-key",
        b"foo",
        &nodes.iter().collect::<Vec<_>>(),
    );
    wait_kvdb_settled(
        &https,
        &[(1, true), (2, true), (3, true), (4, true)],
        &nodes.iter().collect::<Vec<_>>(),
    );

    // curl -L http://127.0.0.1:12380/3 -XDELETE
    let answer = membership_http("DELETE", &format!("{}/3", base[0]), b"");
    assert_answer(&answer, 204, "DELETE /3");
    let status = match nodes[2].wait_exit_opt(SETTLE_TIMEOUT) {
        Some(status) => status,
        None => panic!(
            "node 3 still runs after DELETE /3\n{}",
            all_diagnostics(&nodes.iter().collect::<Vec<_>>())
        ),
    };
    assert_removed_exit(&mut nodes[2], status);

    // The cluster (1, 2, 4) keeps serving writes and reads on every remaining node.
    put_eventually(
        &base[3],
        "my-key",
        b"bar",
        &nodes.iter().collect::<Vec<_>>(),
    );
    for i in [0, 1, 3] {
        get_eventually(
            &base[i],
            "my-key",
            b"bar",
            &nodes.iter().collect::<Vec<_>>(),
        );
    }
    wait_kvdb_settled(
        &[https[0], https[1], https[3]],
        &[(1, true), (2, true), (4, true)],
        &nodes.iter().collect::<Vec<_>>(),
    );
}

// ---------------------------------------------------------------------------
// Growing and shrinking under load; larger clusters
// ---------------------------------------------------------------------------

/// A client that keeps writing unique keys over HTTP until told to stop, moving to the next
/// node whenever one cannot serve the write. Only writes answered 204 are known to be durable;
/// any other outcome is unknown and not checked.
struct Writer {
    stop: Arc<AtomicBool>,
    handle: thread::JoinHandle<WriterReport>,
}

#[derive(Debug, Default)]
struct WriterReport {
    acknowledged: Vec<(String, String)>,
    other_outcomes: usize,
}

/// Upper bounds on the background writer, whatever happens to the test.
const WRITER_MAX_WRITES: usize = 2_000;
const WRITER_MAX_TIME: Duration = Duration::from_secs(90);

impl Writer {
    fn start(targets: Vec<SocketAddr>) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = thread::spawn(move || {
            let client = agent(Duration::from_secs(10));
            let started = Instant::now();
            let mut report = WriterReport::default();
            let mut target = 0;
            for i in 0..WRITER_MAX_WRITES {
                if flag.load(Ordering::SeqCst) || started.elapsed() > WRITER_MAX_TIME {
                    break;
                }
                let key = format!("w{i:05}");
                let value = format!("value {i}");
                let url = format!("http://{}/{key}", targets[target % targets.len()]);
                match request(&client, "PUT", &url, value.as_bytes()) {
                    Ok(answer) if answer.status == 204 => report.acknowledged.push((key, value)),
                    _ => {
                        report.other_outcomes += 1;
                        target += 1;
                    }
                }
            }
            report
        });
        Writer { stop, handle }
    }

    fn finish(self) -> WriterReport {
        self.stop.store(true, Ordering::SeqCst);
        self.handle.join().expect("writer thread")
    }
}

#[test]
fn growing_from_three_to_five_voters_and_back_under_writes_loses_no_acknowledged_write() {
    let (mut c, _) = settled_cluster(3);
    let writer = Writer::start(c.ids().iter().map(|&id| c.http_addr(id)).collect());

    let spec4 = c.next_node_spec(join_args());
    must_change(&mut c, 1, &format!("add {} 4", spec4.raft_addr()));
    c.launch_node(spec4);
    let spec5 = c.next_node_spec(join_args());
    must_change(&mut c, 2, &format!("add {} 5", spec5.raft_addr()));
    c.launch_node(spec5);
    let five: Vec<(u64, bool)> = (1..=5).map(|id| (id, true)).collect();
    wait_until_settled(&mut c, &[1, 2, 3, 4, 5], &five);

    must_change(&mut c, 3, "remove 4");
    assert_exits_as_removed(&mut c, 4);
    must_change(&mut c, 1, "remove 5");
    assert_exits_as_removed(&mut c, 5);
    wait_for_roles(&mut c, &[1, 2, 3], &[(1, true), (2, true), (3, true)]);

    let report = writer.finish();
    assert!(
        report.acknowledged.len() >= 20,
        "the writer should have been acknowledged many writes ({} acknowledged, {} other)",
        report.acknowledged.len(),
        report.other_outcomes
    );
    eprintln!(
        "writer: {} acknowledged, {} other outcomes",
        report.acknowledged.len(),
        report.other_outcomes
    );

    // Every acknowledged write is on every remaining node (linearizable GETs, in parallel).
    let acknowledged = Arc::new(report.acknowledged);
    let checks: Vec<_> = (1..=3)
        .map(|id| {
            let http_addr = c.http_addr(id);
            let acknowledged = acknowledged.clone();
            thread::spawn(move || {
                let client = agent(common::http::REQUEST_TIMEOUT);
                let mut wrong = Vec::new();
                for (key, value) in acknowledged.iter() {
                    let url = format!("http://{http_addr}/{key}");
                    match request(&client, "GET", &url, b"") {
                        Ok(a) if a.status == 200 && a.body == value.as_bytes() => {}
                        Ok(a) => wrong.push(format!("{key}: {} {}", a.status, a.text())),
                        Err(e) => wrong.push(format!("{key}: {e}")),
                    }
                }
                (id, wrong)
            })
        })
        .collect();
    let mut failures = String::new();
    for check in checks {
        let (id, wrong) = check.join().expect("check thread");
        if !wrong.is_empty() {
            failures += &format!(
                "node {id}: {} of {} acknowledged keys wrong, e.g. {:?}\n",
                wrong.len(),
                acknowledged.len(),
                &wrong[..wrong.len().min(5)]
            );
        }
    }
    assert!(
        failures.is_empty(),
        "acknowledged writes missing after growing and shrinking:\n{failures}{}",
        c.diagnostics()
    );
}

#[test]
fn a_seven_voter_cluster_elects_a_leader_and_serves_writes_and_reads() {
    let mut c = Cluster::start(7);
    let leader = c.wait_for_leader();
    let expected: Vec<(u64, bool)> = (1..=7).map(|id| (id, true)).collect();
    wait_for_roles(&mut c, &[leader], &expected);
    c.must_put(7, "seven", "voters");
    c.assert_get(1, "seven", some("voters"));
    c.assert_get(4, "seven", some("voters"));
}
