//! etcd's v3 gRPC API as a client no one here wrote sees it: the `etcd-client` crate, against
//! real `ondisk` processes, on each node's HTTP (client) port.
//!
//! What this file proves, each against a fresh three-node cluster:
//! * a watch survives the SIGKILL of the node it was on: resumed on another node from the last
//!   revision it delivered plus one, it yields every written revision once, in order;
//! * a lease kept alive (the crate's keep-alive stream) through a follower outlives a SIGKILL of
//!   the leader, while an unkept lease of the same TTL still expires;
//! * a transaction compares on value, version, create and mod revision, runs the branch its
//!   comparisons choose, answers each operation (a range inside it sees its own writes), and is
//!   one revision whatever it changes;
//! * the Lock service hands a name to a second holder only once the first unlocks, and the
//!   Election service names its leader, follows a proclaim, and passes to the next candidate on a
//!   resignation, which an observer sees in order;
//! * ranges sort, limit (with `more`), count, return keys only, filter on revisions, read the
//!   past and refuse compacted or future revisions; every member answers with its own id and the
//!   same hash of the key space;
//! * bad input is refused with etcd's gRPC codes and words, and leaves the node serving: a
//!   100 MiB put, ranges ending before they start, a negative revision, an unknown lease; watch
//!   streams that never read do not make the node's memory grow, and ten thousand watch streams
//!   over four connections are each opened or refused with a clear status, never left hanging.
//!
//! The harness is synchronous (it blocks while it kills a node or waits for a leader), so each
//! test builds its own multi-threaded runtime rather than using `#[tokio::test]`: the etcd
//! client's connections and the tests' own tasks run on its workers while the test thread
//! blocks in the harness. Every wait is bounded; nothing sleeps to synchronise.

mod common;

use std::future::Future;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use common::lossy;
use common::Cluster;
use etcd_client::Client;
use etcd_client::Compare;
use etcd_client::CompareOp;
use etcd_client::ConnectOptions;
use etcd_client::DeleteOptions;
use etcd_client::Error;
use etcd_client::EventType;
use etcd_client::GetOptions;
use etcd_client::GetResponse;
use etcd_client::LeaseKeepAliveStream;
use etcd_client::LeaseKeeper;
use etcd_client::LeaseTimeToLiveOptions;
use etcd_client::LockOptions;
use etcd_client::ObserveStream;
use etcd_client::ProclaimOptions;
use etcd_client::PutOptions;
use etcd_client::ResignOptions;
use etcd_client::SortOrder;
use etcd_client::SortTarget;
use etcd_client::Txn;
use etcd_client::TxnOp;
use etcd_client::TxnOpResponse;
use etcd_client::WatchOptions;
use etcd_client::WatchResponse;
use etcd_client::WatchStream;
use etcd_client::Watcher;
use futures::StreamExt;
use tokio::runtime::Runtime;
use tonic::Code;

/// Long enough for an election on a loaded machine (so no call fails on one), short enough that
/// a call the server never answers fails the test well inside the file's time budget.
const CALL_TIMEOUT: Duration = Duration::from_secs(20);
/// How long opening a TCP connection to a node may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A generous bound on a node's resident memory under the abuse below: a node that buffered
/// what its clients do not read would pass it within seconds.
const RSS_BOUND: u64 = 500 << 20;
/// etcd's default `--max-request-bytes`, which ondisk shares (1.5 MiB).
const MAX_REQUEST_BYTES: usize = 3 << 19;

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// A runtime with worker threads of its own, so the etcd client's connections (driven by tasks
/// it spawns) and the tests' tasks go on while the test thread blocks in the harness.
fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a test runtime")
}

/// An etcd client of node `id` alone (its HTTP address, where the gRPC API is served), so the
/// test knows which member answers; each request gives up after [`CALL_TIMEOUT`], so a call the
/// node never answers fails instead of hanging.
fn connect(rt: &Runtime, cluster: &Cluster, id: usize) -> Client {
    let options = ConnectOptions::new()
        .with_connect_timeout(CONNECT_TIMEOUT)
        .with_timeout(CALL_TIMEOUT);
    connect_with(rt, cluster, id, options)
}

/// [`connect`] without the per-request timeout, for the tests that bound their calls themselves
/// and must tell the server's refusals from the client giving up.
fn connect_plain(rt: &Runtime, cluster: &Cluster, id: usize) -> Client {
    connect_with(
        rt,
        cluster,
        id,
        ConnectOptions::new().with_connect_timeout(CONNECT_TIMEOUT),
    )
}

/// One client, hence one HTTP/2 connection, to node `id`'s client port.
fn connect_with(rt: &Runtime, cluster: &Cluster, id: usize, options: ConnectOptions) -> Client {
    let endpoint = cluster.http_addr(id).to_string();
    rt.block_on(Client::connect([endpoint], Some(options)))
        .unwrap_or_else(|e| panic!("an etcd client of node {id}: {e}"))
}

/// Awaits `future` for at most [`CALL_TIMEOUT`] and panics naming `what` after that: a stream
/// message or a task the server never completes fails the test instead of hanging the suite.
async fn bounded<F: Future>(what: &str, future: F) -> F::Output {
    match tokio::time::timeout(CALL_TIMEOUT, future).await {
        Ok(output) => output,
        Err(_) => panic!("{what}: nothing within {CALL_TIMEOUT:?}"),
    }
}

/// The gRPC status a call was refused with. Panics (naming `what`) on success or on a failure
/// that is not a status: every refusal this file provokes must be the server's own answer.
fn refusal<T: std::fmt::Debug>(what: &str, result: Result<T, Error>) -> tonic::Status {
    match result {
        Err(Error::GRpcStatus(status)) => status,
        other => panic!("{what}: expected a gRPC status, got {other:?}"),
    }
}

/// Asserts a refusal's code and that its message contains `words`.
fn assert_refused(what: &str, status: &tonic::Status, code: Code, words: &str) {
    assert_eq!(status.code(), code, "{what}: {status:?}");
    assert!(
        status.message().contains(words),
        "{what}: the message should contain {words:?}: {status:?}"
    );
}

/// Puts `value` at `key` and returns the revision the cluster gave the put.
async fn put(client: &mut Client, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> i64 {
    let key = key.into();
    let response = client
        .put(key.clone(), value, None)
        .await
        .unwrap_or_else(|e| panic!("put {:?}: {e}", lossy(&key)));
    response
        .header()
        .expect("a put answers a header")
        .revision()
}

/// Grants a lease of `ttl` seconds and returns its id.
async fn grant(client: &mut Client, ttl: i64) -> i64 {
    let granted = client.lease_grant(ttl, None).await.expect("lease grant");
    assert!(granted.id() > 0, "{granted:?}");
    granted.id()
}

/// A linearizable range over every key under `prefix`, through `client`.
async fn range_prefix(client: &mut Client, prefix: &[u8], options: GetOptions) -> GetResponse {
    client
        .get(prefix, Some(options.with_prefix()))
        .await
        .unwrap_or_else(|e| panic!("range over {:?}: {e}", lossy(prefix)))
}

/// The keys of a range's answer, as text (the tests use text keys), in the order given.
fn keys(response: &GetResponse) -> Vec<String> {
    response.kvs().iter().map(|kv| lossy(kv.key())).collect()
}

/// The keys under `prefix` now, read from a synchronous test body (e.g. inside a poll).
fn keys_with_prefix(rt: &Runtime, client: &Client, prefix: &[u8]) -> Vec<Vec<u8>> {
    let mut client = client.clone();
    let response = rt.block_on(range_prefix(
        &mut client,
        prefix,
        GetOptions::new().with_keys_only(),
    ));
    response.kvs().iter().map(|kv| kv.key().to_vec()).collect()
}

/// The events of a watch response as (key, mod revision), after checking the watch goes on:
/// every watch in this file expects puts only, and a cancellation is a failure with its reason.
fn events_of(response: &WatchResponse) -> Vec<(Vec<u8>, i64)> {
    assert!(
        !response.canceled(),
        "the watch was canceled: {:?} (compact revision {})",
        response.cancel_reason(),
        response.compact_revision()
    );
    response
        .events()
        .iter()
        .map(|event| {
            assert_eq!(event.event_type(), EventType::Put, "{event:?}");
            let kv = event.kv().expect("an event carries its key-value");
            (kv.key().to_vec(), kv.mod_revision())
        })
        .collect()
}

/// Reads a watch until `until(seen)` holds, appending its events to `seen`; panics if the watch
/// fails, ends, is canceled, or stalls for [`CALL_TIMEOUT`]. Responses without events (progress
/// notices) are skipped.
async fn watch_until(
    stream: &mut WatchStream,
    seen: &mut Vec<(Vec<u8>, i64)>,
    until: impl Fn(&[(Vec<u8>, i64)]) -> bool,
) {
    while !until(seen) {
        let response = match tokio::time::timeout(CALL_TIMEOUT, stream.message()).await {
            Ok(Ok(Some(response))) => response,
            Ok(other) => panic!("the watch broke after {} events: {other:?}", seen.len()),
            Err(_) => panic!("the watch stalled after {} events: {seen:?}", seen.len()),
        };
        seen.extend(events_of(&response));
    }
}

/// Reads what a watch whose node was killed had already delivered, until its stream breaks, as
/// an application would have processed it before noticing; returns how the stream ended.
async fn drain_until_broken(stream: &mut WatchStream, seen: &mut Vec<(Vec<u8>, i64)>) -> String {
    loop {
        match bounded("the watch on the killed node to break", stream.message()).await {
            Ok(Some(response)) => seen.extend(events_of(&response)),
            Ok(None) => return "the stream ended".into(),
            Err(e) => return e.to_string(),
        }
    }
}

/// Opens a watch of every key under `prefix` from `start_revision` (0: from now on).
async fn watch_prefix(
    client: &mut Client,
    prefix: &str,
    start_revision: i64,
) -> (Watcher, WatchStream) {
    let options = WatchOptions::new()
        .with_prefix()
        .with_start_revision(start_revision);
    bounded("opening a watch", client.watch(prefix, Some(options)))
        .await
        .unwrap_or_else(|e| panic!("a watch of {prefix:?}: {e}"))
}

/// A byte count from `/proc/<pid>/status` (`VmRSS`: resident now; `VmHWM`: the peak so far).
fn proc_status_bytes(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"));
    kib * 1024
}

/// Asserts node `id` still answers a write and a linearizable read of it through a fresh
/// connection: the proof, after each abuse, that the node keeps serving others.
fn assert_serves(rt: &Runtime, cluster: &Cluster, id: usize, key: &str) {
    let mut client = connect(rt, cluster, id);
    rt.block_on(async {
        let revision = put(&mut client, key, "still here").await;
        let read = client.get(key, None).await.expect("a read after the abuse");
        assert_eq!(read.kvs().len(), 1, "node {id}: {read:?}");
        assert_eq!(
            read.kvs()[0].mod_revision(),
            revision,
            "node {id}: {read:?}"
        );
        let header = read.header().expect("a range answers a header");
        assert_eq!(header.member_id(), id as u64, "node {id}: {read:?}");
    });
}

// ---------------------------------------------------------------------------
// Watch resumption after a crash
// ---------------------------------------------------------------------------

/// Writes `w/{i}` through `client` for each `i`, returning each key with its revision.
async fn write_keys(client: &mut Client, keys: std::ops::Range<usize>) -> Vec<(Vec<u8>, i64)> {
    let mut written = Vec::new();
    for i in keys {
        let key = format!("w/{i:02}").into_bytes();
        let revision = put(client, key.clone(), "v").await;
        written.push((key, revision));
    }
    written
}

#[test]
fn a_watch_resumed_on_another_node_after_its_node_is_killed_misses_and_repeats_nothing() {
    let mut cluster = Cluster::start(3);
    let leader = cluster.wait_for_leader();
    // The watch is on a follower and the writes go through the other one, so the kill takes
    // neither the leader nor the writer's node.
    let followers = cluster.followers(leader);
    let (watched, writer_node) = (followers[0], followers[1]);
    let rt = runtime();
    let mut watch_client = connect(&rt, &cluster, watched);
    let mut writer = connect(&rt, &cluster, writer_node);

    let (_watcher, mut stream) = rt.block_on(watch_prefix(&mut watch_client, "w/", 0));
    let mut seen = Vec::new();
    let mut written = rt.block_on(async {
        let written = write_keys(&mut writer, 0..10).await;
        watch_until(&mut stream, &mut seen, |seen| seen.len() >= 10).await;
        written
    });
    // Five more writes the watch may or may not have delivered when its node dies: whichever
    // it did are seen, the rest must come from the resumed watch.
    written.extend(rt.block_on(write_keys(&mut writer, 10..15)));
    cluster.kill(watched);
    written.extend(rt.block_on(write_keys(&mut writer, 15..25)));
    let ended = rt.block_on(drain_until_broken(&mut stream, &mut seen));
    eprintln!(
        "the watch on the killed node {watched} delivered {} events, then: {ended}",
        seen.len()
    );
    assert!(seen.len() >= 10, "{seen:?}");

    // The client watches again on another node from the revision after the last it received.
    let resume_from = seen.last().expect("events before the kill").1 + 1;
    let mut other = connect(&rt, &cluster, writer_node);
    let last = written.last().expect("writes").clone();
    rt.block_on(async {
        let (_watcher, mut resumed) = watch_prefix(&mut other, "w/", resume_from).await;
        watch_until(&mut resumed, &mut seen, |seen| seen.contains(&last)).await;
        // One more write closes the record: an event repeated after the last one would arrive
        // before it.
        let closing = write_keys(&mut writer, 25..26).await;
        written.extend(closing.iter().cloned());
        watch_until(&mut resumed, &mut seen, |seen| seen.contains(&closing[0])).await;
    });
    assert_eq!(seen, written, "events seen (left) vs writes made (right)");
}

// ---------------------------------------------------------------------------
// Lease keep-alive across a leader kill
// ---------------------------------------------------------------------------

/// What a keep-alive loop saw: each answer's arrival and TTL, and each failure of the stream
/// (after which it was opened again, as etcd's own client does).
#[derive(Debug, Default)]
struct KeepAliveLog {
    answers: Vec<(Instant, i64)>,
    reopened: Vec<Instant>,
    failures: Vec<String>,
}

/// Keeps lease `id` alive through `client`'s keep-alive stream, one keep-alive every `every`,
/// until `stop` is set. A broken stream is opened again at the next tick.
async fn keep_alive(
    mut client: Client,
    id: i64,
    every: Duration,
    stop: Arc<AtomicBool>,
) -> KeepAliveLog {
    let mut log = KeepAliveLog::default();
    let mut stream: Option<(LeaseKeeper, LeaseKeepAliveStream)> = None;
    let mut ticks = tokio::time::interval(every);
    while !stop.load(Ordering::SeqCst) {
        ticks.tick().await;
        let Some((keeper, answers)) = stream.as_mut() else {
            // Opening sends a first keep-alive and fails if its answer says the lease is gone.
            match tokio::time::timeout(CALL_TIMEOUT, client.lease_keep_alive(id)).await {
                Ok(Ok(opened)) => {
                    log.reopened.push(Instant::now());
                    stream = Some(opened);
                }
                Ok(Err(e)) => log.failures.push(format!("opening the stream: {e}")),
                Err(_) => log.failures.push("opening the stream: no answer".into()),
            }
            continue;
        };
        let answer = match keeper.keep_alive().await {
            Ok(()) => tokio::time::timeout(CALL_TIMEOUT, answers.message()).await,
            Err(e) => Ok(Err(e)),
        };
        match answer {
            Ok(Ok(Some(answer))) => log.answers.push((Instant::now(), answer.ttl())),
            Ok(Ok(None)) => {
                log.failures.push("the stream ended".into());
                stream = None;
            }
            Ok(Err(e)) => {
                log.failures.push(format!("the stream failed: {e}"));
                stream = None;
            }
            Err(_) => {
                log.failures.push("no answer to a keep-alive".into());
                stream = None;
            }
        }
    }
    log
}

#[test]
fn a_lease_kept_alive_through_a_follower_outlives_a_leader_kill_and_an_unkept_one_expires() {
    // Four times the election timeout the harness gives nodes (500 ms), and above ondisk's
    // minimum (1.5 election timeouts): a kill's election fits well inside it, so surviving
    // means the keep-alives went on, and an unkept lease still expires within seconds.
    const TTL: i64 = 2;
    let mut cluster = Cluster::start(3);
    let leader = cluster.wait_for_leader();
    let followers = cluster.followers(leader);
    let (keeper_node, reader_node) = (followers[0], followers[1]);
    let rt = runtime();
    let mut client = connect(&rt, &cluster, keeper_node);
    let mut reader = connect(&rt, &cluster, reader_node);

    let (kept, unkept) = rt.block_on(async {
        let kept = client.lease_grant(TTL, None).await.expect("grant");
        let header = kept.header().expect("a grant answers a header");
        assert_eq!(header.member_id(), keeper_node as u64, "{kept:?}");
        assert_eq!(kept.ttl(), TTL, "{kept:?}");
        let unkept = grant(&mut client, TTL).await;
        for (key, lease) in [("lease/kept", kept.id()), ("lease/unkept", unkept)] {
            let on_lease = PutOptions::new().with_lease(lease);
            client
                .put(key, "v", Some(on_lease))
                .await
                .expect("a put on a lease");
        }
        (kept.id(), unkept)
    });

    let stop = Arc::new(AtomicBool::new(false));
    let keeper = rt.spawn(keep_alive(
        client.clone(),
        kept,
        Duration::from_millis(TTL as u64 * 1000 / 3),
        stop.clone(),
    ));
    cluster.kill(leader);
    let new_leader = cluster.wait_for_leader();
    assert_ne!(new_leader, leader);
    let elected = Instant::now();

    // From the election on, the new leader counts every lease afresh: the kept key must be
    // there at every look for two TTLs, and the unkept one must go.
    let deadline = Duration::from_secs(2 * TTL as u64) + CALL_TIMEOUT;
    let outcome = common::poll_until(deadline, || {
        let (kept_kvs, unkept_kvs) = rt.block_on(async {
            let kept = reader.get("lease/kept", None).await.expect("get");
            let unkept = reader.get("lease/unkept", None).await.expect("get");
            (kept.kvs().len(), unkept.kvs().len())
        });
        assert_eq!(
            kept_kvs,
            1,
            "the kept lease's key vanished {:?} after the election",
            elected.elapsed()
        );
        (unkept_kvs == 0 && elected.elapsed() >= Duration::from_secs(2 * TTL as u64)).then_some(())
    });
    stop.store(true, Ordering::SeqCst);
    let log = rt
        .block_on(bounded("the keep-alive loop to stop", keeper))
        .expect("the keep-alive task");
    eprintln!(
        "keep-alives: {} answers, stream opened {} times, failures {:?}",
        log.answers.len(),
        log.reopened.len(),
        log.failures
    );
    assert!(outcome.is_some(), "the unkept lease never expired");
    assert!(
        log.answers.iter().all(|&(_, ttl)| ttl == TTL),
        "every keep-alive renews the lease for its TTL: {log:?}"
    );
    assert!(
        log.answers.iter().any(|&(at, _)| at > elected),
        "no keep-alive was answered after the election: {log:?}"
    );

    rt.block_on(async {
        let options = LeaseTimeToLiveOptions::new().with_keys();
        let ttl = reader
            .lease_time_to_live(kept, Some(options))
            .await
            .expect("time to live");
        assert!(ttl.ttl() > 0, "{ttl:?}");
        assert_eq!(ttl.granted_ttl(), TTL, "{ttl:?}");
        assert_eq!(ttl.keys(), [b"lease/kept".to_vec()], "{ttl:?}");
        let leases = reader.leases().await.expect("leases");
        let ids: Vec<i64> = leases.leases().iter().map(|lease| lease.id()).collect();
        assert!(ids.contains(&kept) && !ids.contains(&unkept), "{ids:?}");
        // etcd answers a keep-alive of an unknown lease with a TTL of 0, which the crate turns
        // into this error.
        match reader.lease_keep_alive(unkept).await {
            Err(Error::LeaseKeepAliveError(_)) => {}
            other => panic!("a keep-alive of an expired lease answered {other:?}"),
        }
        reader.lease_revoke(kept).await.expect("revoke");
        let gone = reader.get("lease/kept", None).await.expect("get");
        assert!(
            gone.kvs().is_empty(),
            "a revoked lease's key stays: {gone:?}"
        );
    });
}

// ---------------------------------------------------------------------------
// Transactions
// ---------------------------------------------------------------------------

#[test]
fn a_txn_compares_value_version_and_revisions_and_is_one_revision() {
    let mut cluster = Cluster::start(3);
    let leader = cluster.wait_for_leader();
    let node = cluster.followers(leader)[0];
    let rt = runtime();
    let mut client = connect(&rt, &cluster, node);
    rt.block_on(async {
        let created = put(&mut client, "t/color", "red").await;
        let modified = put(&mut client, "t/color", "red").await;
        let sized = put(&mut client, "t/size", "big").await;

        // Every comparison holds: the success branch runs, in order, at one revision.
        let txn = Txn::new()
            .when([
                Compare::value("t/color", CompareOp::Equal, "red"),
                Compare::version("t/color", CompareOp::Equal, 2),
                Compare::version("t/color", CompareOp::Greater, 1),
                Compare::create_revision("t/color", CompareOp::Equal, created),
                Compare::mod_revision("t/color", CompareOp::Equal, modified),
                Compare::mod_revision("t/size", CompareOp::Less, sized + 1),
                Compare::value("t/size", CompareOp::NotEqual, "small"),
            ])
            .and_then([
                TxnOp::put("t/color", "blue", Some(PutOptions::new().with_prev_key())),
                TxnOp::get("t/color", None),
                TxnOp::delete("t/size", Some(DeleteOptions::new().with_prev_key())),
                TxnOp::put("t/new", "x", None),
            ])
            .or_else([TxnOp::get("t/color", None)]);
        let done = client.txn(txn).await.expect("txn");
        assert!(done.succeeded(), "{done:?}");
        let revision = done.header().expect("a txn answers a header").revision();
        assert_eq!(revision, sized + 1, "the whole txn is one revision: {done:?}");
        match &done.op_responses()[..] {
            [TxnOpResponse::Put(put), TxnOpResponse::Get(get), TxnOpResponse::Delete(delete), TxnOpResponse::Put(_)] =>
            {
                let prev = put.prev_key().expect("prev_kv was asked for");
                assert_eq!((prev.value(), prev.mod_revision()), (&b"red"[..], modified));
                // A range inside the txn sees the txn's own write.
                assert_eq!(get.kvs().len(), 1, "{get:?}");
                let color = &get.kvs()[0];
                assert_eq!(color.value(), b"blue", "{get:?}");
                assert_eq!(color.mod_revision(), revision, "{get:?}");
                assert_eq!(color.version(), 3, "{get:?}");
                assert_eq!(color.create_revision(), created, "{get:?}");
                assert_eq!(delete.deleted(), 1, "{delete:?}");
                assert_eq!(delete.prev_kvs()[0].value(), b"big", "{delete:?}");
            }
            other => panic!("the success branch answered {other:?}"),
        }
        let after = range_prefix(&mut client, b"t/", GetOptions::new()).await;
        assert_eq!(keys(&after), ["t/color", "t/new"], "{after:?}");
        assert!(
            after.kvs().iter().all(|kv| kv.mod_revision() == revision),
            "every change of the txn has its revision: {after:?}"
        );
        // The revision before it still holds the store as it was.
        let before = range_prefix(&mut client, b"t/", GetOptions::new().with_revision(sized)).await;
        assert_eq!(keys(&before), ["t/color", "t/size"], "{before:?}");
        assert_eq!(before.kvs()[0].value(), b"red", "{before:?}");

        // A comparison that fails (the mod revision moved on): the failure branch runs, and
        // its write takes the next revision.
        let stale = Txn::new()
            .when([Compare::mod_revision("t/color", CompareOp::Equal, modified)])
            .and_then([TxnOp::put("t/color", "green", None)])
            .or_else([
                TxnOp::get("t/", Some(GetOptions::new().with_prefix())),
                TxnOp::put("t/failed", "1", None),
            ]);
        let failed = client.txn(stale).await.expect("txn");
        assert!(!failed.succeeded(), "{failed:?}");
        let failed_revision = failed.header().expect("header").revision();
        assert_eq!(failed_revision, revision + 1, "{failed:?}");
        match &failed.op_responses()[..] {
            [TxnOpResponse::Get(get), TxnOpResponse::Put(_)] => {
                assert_eq!(keys(get), ["t/color", "t/new"], "{get:?}");
                assert_eq!(get.kvs()[0].value(), b"blue", "{get:?}");
            }
            other => panic!("the failure branch answered {other:?}"),
        }

        // Create-if-absent: a missing key compares as create revision 0. The second attempt
        // fails, and a failure branch that only reads does not move the revision.
        let create_once = || {
            Txn::new()
                .when([Compare::create_revision("t/once", CompareOp::Equal, 0)])
                .and_then([TxnOp::put("t/once", "first", None)])
                .or_else([TxnOp::get("t/once", None)])
        };
        let first = client.txn(create_once()).await.expect("txn");
        assert!(first.succeeded(), "{first:?}");
        let first_revision = first.header().expect("header").revision();
        assert_eq!(first_revision, failed_revision + 1, "{first:?}");
        let second = client.txn(create_once()).await.expect("txn");
        assert!(!second.succeeded(), "{second:?}");
        assert_eq!(second.header().expect("header").revision(), first_revision);
        match &second.op_responses()[..] {
            [TxnOpResponse::Get(get)] => {
                assert_eq!(get.kvs().len(), 1, "{get:?}");
                assert_eq!(get.kvs()[0].value(), b"first", "{get:?}");
                assert_eq!(get.kvs()[0].create_revision(), first_revision, "{get:?}");
            }
            other => panic!("the failure branch answered {other:?}"),
        }
    });
}

// ---------------------------------------------------------------------------
// Lock and Election services
// ---------------------------------------------------------------------------

/// The cast of the lock and election tests: two participants, each with its own 30 s lease and
/// reaching a 3-node cluster through a different follower, and an observer on the leader.
struct Contenders {
    _cluster: Cluster,
    rt: Runtime,
    first: Client,
    second: Client,
    observer: Client,
    lease1: i64,
    lease2: i64,
}

fn contenders() -> Contenders {
    let mut cluster = Cluster::start(3);
    let leader = cluster.wait_for_leader();
    let followers = cluster.followers(leader);
    let rt = runtime();
    let mut first = connect(&rt, &cluster, followers[0]);
    let mut second = connect(&rt, &cluster, followers[1]);
    let observer = connect(&rt, &cluster, leader);
    let (lease1, lease2) =
        rt.block_on(async { (grant(&mut first, 30).await, grant(&mut second, 30).await) });
    Contenders {
        _cluster: cluster,
        rt,
        first,
        second,
        observer,
        lease1,
        lease2,
    }
}

#[test]
fn a_lock_passes_to_a_second_holder_only_after_the_first_unlocks() {
    const NAME: &str = "locks/printer";
    const UNDER: &[u8] = b"locks/printer/";
    let Contenders {
        _cluster,
        rt,
        mut first,
        mut second,
        mut observer,
        lease1,
        lease2,
    } = contenders();

    let held = rt
        .block_on(first.lock(NAME, Some(LockOptions::new().with_lease(lease1))))
        .expect("the first lock, uncontended");
    let first_key = held.key().to_vec();
    assert!(first_key.starts_with(UNDER), "{:?}", lossy(&first_key));

    // The second holder asks while the first holds it. It records whether the first had let go
    // by the time its own lock was granted, and when.
    let released = Arc::new(AtomicBool::new(false));
    let waiter = {
        let released = released.clone();
        let mut second = second.clone();
        rt.spawn(async move {
            let granted = second
                .lock(NAME, Some(LockOptions::new().with_lease(lease2)))
                .await;
            (granted, released.load(Ordering::SeqCst), Instant::now())
        })
    };
    // A waiting locker queues by writing its own key under the name (with its lease).
    let queued = common::poll_until(CALL_TIMEOUT, || {
        let keys = keys_with_prefix(&rt, &observer, UNDER);
        (keys.len() == 2).then_some(keys)
    })
    .expect("the second locker's key appears under the lock's name");
    let second_key = queued
        .into_iter()
        .find(|key| key != &first_key)
        .expect("a second key");
    assert!(
        !waiter.is_finished(),
        "the second lock was granted while the first was held"
    );

    let unlocking = Instant::now();
    released.store(true, Ordering::SeqCst);
    rt.block_on(first.unlock(first_key.clone()))
        .expect("the first unlock");
    let (granted, released_first, granted_at) = rt
        .block_on(bounded("the second lock", waiter))
        .expect("the waiting task");
    let granted = granted.expect("the second lock");
    assert!(
        released_first,
        "the second lock was granted before the first unlock"
    );
    assert!(granted_at >= unlocking);
    assert_eq!(lossy(granted.key()), lossy(&second_key));
    assert_eq!(
        keys_with_prefix(&rt, &observer, UNDER),
        std::slice::from_ref(&second_key),
        "the first holder's key is gone and the second's stays"
    );
    rt.block_on(async {
        let record = observer.get(second_key.clone(), None).await.expect("get");
        assert_eq!(record.kvs()[0].lease(), lease2, "{record:?}");
        second
            .unlock(second_key.clone())
            .await
            .expect("the second unlock");
    });
    assert!(keys_with_prefix(&rt, &observer, UNDER).is_empty());
}

/// The next leader an observe stream reports, as (key, value).
async fn next_observed(stream: &mut ObserveStream) -> (String, String) {
    let response = bounded("the next observed leader", stream.message())
        .await
        .expect("observe goes on")
        .expect("observe has not ended");
    let kv = response.kv().expect("an observed leader carries its key");
    (lossy(kv.key()), lossy(kv.value()))
}

/// The current leader of election `name`, as (key, value).
async fn current_leader(client: &mut Client, name: &str) -> (String, String) {
    let response = client.leader(name).await.expect("leader");
    let kv = response.kv().expect("a leader answers its key");
    (lossy(kv.key()), lossy(kv.value()))
}

#[test]
fn an_election_names_its_leader_and_observers_see_a_proclaim_and_the_next_leader() {
    const NAME: &str = "elections/db";
    const UNDER: &[u8] = b"elections/db/";
    let Contenders {
        _cluster,
        rt,
        mut first,
        mut second,
        mut observer,
        lease1,
        lease2,
    } = contenders();

    let (first_key, mut observe) = rt.block_on(async {
        let campaign = first
            .campaign(NAME, "one", lease1)
            .await
            .expect("an uncontested campaign");
        let key = campaign
            .leader()
            .expect("a campaign answers its key")
            .clone();
        assert_eq!(key.name(), NAME.as_bytes(), "{key:?}");
        assert!(key.key().starts_with(UNDER), "{key:?}");
        assert_eq!(key.lease(), lease1, "{key:?}");
        let named = lossy(key.key());
        assert_eq!(
            current_leader(&mut observer, NAME).await,
            (named.clone(), "one".into())
        );
        let mut observe = observer.observe(NAME).await.expect("observe");
        assert_eq!(
            next_observed(&mut observe).await,
            (named.clone(), "one".into())
        );
        let proclaim = ProclaimOptions::new().with_leader(key.clone());
        first
            .proclaim("two", Some(proclaim))
            .await
            .expect("proclaim");
        assert_eq!(
            next_observed(&mut observe).await,
            (named.clone(), "two".into())
        );
        assert_eq!(
            current_leader(&mut observer, NAME).await,
            (named, "two".into())
        );
        (key, observe)
    });

    // A second candidate waits while the first leads; it records whether the first had resigned
    // by the time it was elected.
    let resigned = Arc::new(AtomicBool::new(false));
    let candidate = {
        let resigned = resigned.clone();
        let mut second = second.clone();
        rt.spawn(async move {
            let elected = second.campaign(NAME, "three", lease2).await;
            (elected, resigned.load(Ordering::SeqCst))
        })
    };
    common::poll_until(CALL_TIMEOUT, || {
        (keys_with_prefix(&rt, &observer, UNDER).len() == 2).then_some(())
    })
    .expect("the second candidate's key appears under the election's name");
    assert!(
        !candidate.is_finished(),
        "the second candidate was elected while the first led"
    );
    resigned.store(true, Ordering::SeqCst);
    rt.block_on(first.resign(Some(ResignOptions::new().with_leader(first_key.clone()))))
        .expect("resign");
    let (elected, resigned_first) = rt
        .block_on(bounded("the second campaign", candidate))
        .expect("the campaign task");
    assert!(
        resigned_first,
        "the second candidate was elected before the first resigned"
    );
    let second_key = elected
        .expect("the second campaign")
        .leader()
        .expect("a campaign answers its key")
        .clone();
    assert_ne!(second_key.key(), first_key.key());
    assert!(second_key.key().starts_with(UNDER), "{second_key:?}");
    let named = lossy(second_key.key());
    rt.block_on(async {
        assert_eq!(
            next_observed(&mut observe).await,
            (named.clone(), "three".into())
        );
        assert_eq!(
            current_leader(&mut observer, NAME).await,
            (named, "three".into())
        );
        second
            .resign(Some(ResignOptions::new().with_leader(second_key)))
            .await
            .expect("resign");
        let none = refusal(
            "leader() with no candidate left",
            observer.leader(NAME).await,
        );
        assert!(none.message().contains("no leader"), "{none:?}");
    });
}

// ---------------------------------------------------------------------------
// Ranges, revisions, members
// ---------------------------------------------------------------------------

#[test]
fn ranges_sort_limit_count_and_filter_and_every_member_answers_as_itself() {
    let mut cluster = Cluster::start(3);
    let leader = cluster.wait_for_leader();
    let node = cluster.followers(leader)[0];
    let rt = runtime();
    let mut client = connect(&rt, &cluster, node);
    let [c, a, d, b, c2] = rt.block_on(async {
        // Created in an order other than the keys', and `r/c` changed last.
        [
            put(&mut client, "r/c", "3").await,
            put(&mut client, "r/a", "1").await,
            put(&mut client, "r/d", "4").await,
            put(&mut client, "r/b", "2").await,
            put(&mut client, "r/c", "33").await,
        ]
    });
    rt.block_on(async {
        let all = range_prefix(&mut client, b"r/", GetOptions::new()).await;
        assert_eq!(keys(&all), ["r/a", "r/b", "r/c", "r/d"], "{all:?}");
        assert_eq!((all.count(), all.more()), (4, false), "{all:?}");
        let header = all.header().expect("a range answers a header");
        assert_eq!(header.revision(), c2, "{all:?}");
        assert_eq!(header.member_id(), node as u64, "{all:?}");
        let by = |target, order| GetOptions::new().with_sort(target, order);

        let newest_first = range_prefix(
            &mut client,
            b"r/",
            by(SortTarget::Create, SortOrder::Descend),
        )
        .await;
        assert_eq!(keys(&newest_first), ["r/b", "r/d", "r/a", "r/c"]);
        let oldest_first = range_prefix(
            &mut client,
            b"r/",
            by(SortTarget::Create, SortOrder::Ascend),
        )
        .await;
        assert_eq!(keys(&oldest_first), ["r/c", "r/a", "r/d", "r/b"]);
        let by_key_down =
            range_prefix(&mut client, b"r/", by(SortTarget::Key, SortOrder::Descend)).await;
        assert_eq!(keys(&by_key_down), ["r/d", "r/c", "r/b", "r/a"]);
        let by_key = range_prefix(&mut client, b"r/", by(SortTarget::Key, SortOrder::Ascend)).await;
        assert_eq!(keys(&by_key), ["r/a", "r/b", "r/c", "r/d"]);
        let by_mod = range_prefix(&mut client, b"r/", by(SortTarget::Mod, SortOrder::Ascend)).await;
        assert_eq!(keys(&by_mod), ["r/a", "r/d", "r/b", "r/c"]);

        let first_two = range_prefix(&mut client, b"r/", GetOptions::new().with_limit(2)).await;
        assert_eq!(keys(&first_two), ["r/a", "r/b"], "{first_two:?}");
        assert_eq!(
            (first_two.more(), first_two.count()),
            (true, 4),
            "{first_two:?}"
        );
        let all_four = range_prefix(&mut client, b"r/", GetOptions::new().with_limit(4)).await;
        assert_eq!(
            (all_four.kvs().len(), all_four.more()),
            (4, false),
            "{all_four:?}"
        );
        // The sort comes before the limit.
        let newest_two = range_prefix(
            &mut client,
            b"r/",
            by(SortTarget::Create, SortOrder::Descend).with_limit(2),
        )
        .await;
        assert_eq!(keys(&newest_two), ["r/b", "r/d"], "{newest_two:?}");
        assert!(newest_two.more(), "{newest_two:?}");

        let counted = range_prefix(&mut client, b"r/", GetOptions::new().with_count_only()).await;
        assert_eq!(
            (counted.count(), counted.kvs().len()),
            (4, 0),
            "{counted:?}"
        );
        let keys_only = range_prefix(&mut client, b"r/", GetOptions::new().with_keys_only()).await;
        assert_eq!(keys(&keys_only), ["r/a", "r/b", "r/c", "r/d"]);
        assert!(
            keys_only.kvs().iter().all(|kv| kv.value().is_empty()),
            "{keys_only:?}"
        );
        assert_eq!(keys_only.kvs()[2].mod_revision(), c2, "{keys_only:?}");

        let created_between = GetOptions::new()
            .with_min_create_revision(a)
            .with_max_create_revision(d);
        let between = range_prefix(&mut client, b"r/", created_between).await;
        assert_eq!(keys(&between), ["r/a", "r/d"], "{between:?}");
        let changed_since_b = range_prefix(
            &mut client,
            b"r/",
            GetOptions::new().with_min_mod_revision(b),
        )
        .await;
        assert_eq!(
            keys(&changed_since_b),
            ["r/b", "r/c"],
            "{changed_since_b:?}"
        );
        let unchanged_since_a = range_prefix(
            &mut client,
            b"r/",
            GetOptions::new().with_max_mod_revision(a),
        )
        .await;
        assert_eq!(keys(&unchanged_since_a), ["r/a"], "{unchanged_since_a:?}");

        // The past, as it was at `d`: no `r/b` yet, and `r/c` with its first value.
        let then = range_prefix(&mut client, b"r/", GetOptions::new().with_revision(d)).await;
        assert_eq!(keys(&then), ["r/a", "r/c", "r/d"], "{then:?}");
        assert_eq!(then.kvs()[1].value(), b"3", "{then:?}");
        assert_eq!(then.kvs()[1].mod_revision(), c, "{then:?}");
    });

    // Every member answers as itself, serves a serializable read once it has caught up (a
    // linearizable read first makes sure), and hashes the key space alike.
    let mut hashes = Vec::new();
    for id in cluster.ids() {
        let mut member = connect(&rt, &cluster, id);
        rt.block_on(async {
            let fresh = member.get("r/c", None).await.expect("linearizable get");
            assert_eq!(
                fresh.header().expect("header").member_id(),
                id as u64,
                "{fresh:?}"
            );
            let local = member
                .get("r/c", Some(GetOptions::new().with_serializable()))
                .await
                .expect("serializable get");
            assert_eq!(
                local.header().expect("header").member_id(),
                id as u64,
                "{local:?}"
            );
            assert_eq!(local.kvs()[0].value(), b"33", "node {id}: {local:?}");
            let status = member.status().await.expect("status");
            assert_eq!(status.header().expect("header").member_id(), id as u64);
            assert_eq!(status.leader(), leader as u64, "node {id}: {status:?}");
            let hash = member.hash_kv(c2).await.expect("hash_kv");
            assert_eq!(hash.header().expect("header").member_id(), id as u64);
            hashes.push(hash.hash());
        });
    }
    assert!(
        hashes.windows(2).all(|w| w[0] == w[1]),
        "members' hashes differ: {hashes:?}"
    );
    let members = rt.block_on(client.member_list()).expect("member list");
    let mut ids: Vec<u64> = members.members().iter().map(|m| m.id()).collect();
    ids.sort_unstable();
    assert_eq!(ids, [1, 2, 3], "{members:?}");

    // Compaction: the past before it is gone, with etcd's words, and so is a watch from there;
    // a revision not reached yet is refused too.
    rt.block_on(async {
        client.compact(d, None).await.expect("compact");
        let compacted = refusal(
            "a range before the compacted revision",
            client
                .get("r/a", Some(GetOptions::new().with_revision(a)))
                .await,
        );
        assert_refused(
            "a compacted range",
            &compacted,
            Code::OutOfRange,
            "etcdserver: mvcc: required revision has been compacted",
        );
        let again = refusal(
            "compacting again at the same revision",
            client.compact(d, None).await,
        );
        assert_refused(
            "a second compaction",
            &again,
            Code::OutOfRange,
            "etcdserver: mvcc: required revision has been compacted",
        );
        let future = refusal(
            "a range at a future revision",
            client
                .get("r/a", Some(GetOptions::new().with_revision(c2 + 1000)))
                .await,
        );
        assert_refused(
            "a future range",
            &future,
            Code::OutOfRange,
            "etcdserver: mvcc: required revision is a future revision",
        );
        let (_watcher, mut stream) = watch_prefix(&mut client, "r/", a).await;
        let canceled = bounded("the compacted watch's cancellation", stream.message())
            .await
            .expect("the compacted watch answers")
            .expect("the compacted watch answers before it ends");
        assert!(canceled.canceled(), "{canceled:?}");
        assert_eq!(canceled.compact_revision(), d, "{canceled:?}");
    });
}

// ---------------------------------------------------------------------------
// Bad input
// ---------------------------------------------------------------------------

#[test]
fn bad_requests_are_refused_with_etcds_codes_and_the_node_keeps_serving() {
    let mut cluster = Cluster::start(3);
    let leader = cluster.wait_for_leader();
    let node = cluster.followers(leader)[0];
    let rt = runtime();
    let mut client = connect(&rt, &cluster, node);

    // 100 MiB in one put: refused at once (whatever layer says so, it must say why).
    let started = Instant::now();
    let huge = refusal(
        "a 100 MiB put",
        rt.block_on(client.put("huge", vec![b'x'; 100 << 20], None)),
    );
    eprintln!(
        "a 100 MiB put was refused after {:?}: {huge:?}",
        started.elapsed()
    );
    assert!(
        matches!(
            huge.code(),
            Code::InvalidArgument | Code::ResourceExhausted | Code::OutOfRange
        ),
        "{huge:?}"
    );
    let message = huge.message().to_lowercase();
    assert!(
        message.contains("too large") || message.contains("larger than"),
        "{huge:?}"
    );
    // Just over the request limit: etcd's own refusal.
    let over = refusal(
        "a put just over the request limit",
        rt.block_on(client.put("over", vec![b'y'; MAX_REQUEST_BYTES + 4096], None)),
    );
    assert_refused(
        "an oversized put",
        &over,
        Code::InvalidArgument,
        "etcdserver: request is too large",
    );
    assert_serves(&rt, &cluster, node, "after/oversized");

    rt.block_on(async {
        let backwards = refusal(
            "a range whose end is before its key",
            client
                .get("b", Some(GetOptions::new().with_range("a")))
                .await,
        );
        assert_refused(
            "a backwards range",
            &backwards,
            Code::InvalidArgument,
            "range_end",
        );
        let backwards = refusal(
            "a delete whose end is before its key",
            client
                .delete("b", Some(DeleteOptions::new().with_range("a")))
                .await,
        );
        assert_refused(
            "a backwards delete",
            &backwards,
            Code::InvalidArgument,
            "range_end",
        );
        let negative = refusal(
            "a range at a negative revision",
            client
                .get("a", Some(GetOptions::new().with_revision(-1)))
                .await,
        );
        assert_refused(
            "a negative revision",
            &negative,
            Code::InvalidArgument,
            "negative",
        );
        let unknown = refusal(
            "a put on an unknown lease",
            client
                .put(
                    "leased",
                    "v",
                    Some(PutOptions::new().with_lease(0x0bad_1ea5e)),
                )
                .await,
        );
        assert_refused(
            "an unknown lease",
            &unknown,
            Code::NotFound,
            "etcdserver: requested lease not found",
        );
        assert_eq!(unknown.message(), "etcdserver: requested lease not found");
        let revoke = refusal(
            "revoking an unknown lease",
            client.lease_revoke(0x0bad_1ea5e).await,
        );
        assert_refused(
            "an unknown lease",
            &revoke,
            Code::NotFound,
            "etcdserver: requested lease not found",
        );
        let empty = refusal("a put of an empty key", client.put("", "v", None).await);
        assert_refused(
            "an empty key",
            &empty,
            Code::InvalidArgument,
            "etcdserver: key is not provided",
        );
        // None of it wrote anything.
        for key in ["huge", "over", "leased"] {
            let read = client.get(key, None).await.expect("get");
            assert!(read.kvs().is_empty(), "{key}: {read:?}");
        }
    });
    assert_serves(&rt, &cluster, node, "after/refusals");
}

/// Puts `flood/{i}` (with `value`) for each `i` through `client`, `in_flight` at a time, and
/// returns the revisions given.
async fn flood(
    client: &Client,
    keys: std::ops::Range<usize>,
    value: &[u8],
    in_flight: usize,
) -> Vec<i64> {
    futures::stream::iter(keys)
        .map(|i| {
            let mut kv = client.kv_client();
            let value = value.to_vec();
            async move {
                let put = kv
                    .put(format!("flood/{i:05}"), value, None)
                    .await
                    .unwrap_or_else(|e| panic!("put {i}: {e}"));
                put.header().expect("a put answers a header").revision()
            }
        })
        .buffer_unordered(in_flight)
        .collect()
        .await
}

/// The revisions a watch delivers until it has delivered `count` events.
async fn revisions_until(stream: &mut WatchStream, count: usize) -> Vec<i64> {
    let mut seen = Vec::new();
    watch_until(stream, &mut seen, |seen| seen.len() >= count).await;
    seen.into_iter().map(|(_, revision)| revision).collect()
}

#[test]
fn watch_streams_that_never_read_neither_grow_the_node_nor_stop_it_serving() {
    const PUTS: usize = 5_000;
    const CHUNK: usize = 500;
    const IN_FLIGHT: usize = 32;
    /// Streams nobody reads. A node that queued everything they are owed would hold 32 copies
    /// of 5,000 4 KiB events (640 MiB) and break [`RSS_BOUND`]; one that holds a bounded backlog
    /// per stream (a few MiB each, measured) stays far below it.
    const UNREAD: usize = 32;
    const VALUE: usize = 4 << 10;
    /// How much the node may grow over the second half of the puts, by when every unread
    /// stream's bounded backlog is full: half of what queueing all their events would add.
    const LATE_GROWTH: u64 = (UNREAD * (PUTS / 2) * VALUE / 2) as u64;
    let mut cluster = Cluster::start(3);
    let leader = cluster.wait_for_leader();
    let watched = cluster.followers(leader)[0];
    let pid = cluster.node(watched).pid();
    let rt = runtime();
    // HTTP/2 flow control also counts per connection: streams nobody reads would, sharing a
    // connection with the checks, stall them. So the unread streams have connections of their
    // own, and one of them (read at the end) a connection to itself.
    let never = connect_plain(&rt, &cluster, watched);
    let mut lagging = connect_plain(&rt, &cluster, watched);
    let mut reader = connect(&rt, &cluster, watched);
    let writer = connect(&rt, &cluster, watched);

    let (unread, (_lagging_watcher, mut lagging_stream), (_live_watcher, mut live_stream)) = rt
        .block_on(async {
            let mut unread = Vec::new();
            for _ in 1..UNREAD {
                let mut never = never.clone();
                unread.push(watch_prefix(&mut never, "flood/", 0).await);
            }
            let lagging = watch_prefix(&mut lagging, "flood/", 0).await;
            let live = watch_prefix(&mut reader, "flood/", 0).await;
            (unread, lagging, live)
        });
    // A watcher that reads keeps being served throughout.
    let live = rt.spawn(async move { revisions_until(&mut live_stream, PUTS).await });

    let value = vec![b'v'; VALUE];
    let mut revisions = Vec::with_capacity(PUTS);
    // Resident memory after each chunk of puts.
    let mut samples = Vec::new();
    for start in (0..PUTS).step_by(CHUNK) {
        revisions.extend(rt.block_on(flood(&writer, start..start + CHUNK, &value, IN_FLIGHT)));
        let rss = proc_status_bytes(pid, "VmRSS");
        samples.push(rss >> 20);
        assert!(
            rss < RSS_BOUND,
            "node {watched} holds {} MiB after {} puts with {UNREAD} watch streams unread \
             (MiB after each {CHUNK} puts: {samples:?})",
            rss >> 20,
            revisions.len()
        );
    }
    revisions.sort_unstable();
    let live_seen = rt
        .block_on(bounded("the reading watcher", live))
        .expect("the reading watcher's task");
    assert_eq!(
        live_seen, revisions,
        "the reading watcher's revisions vs the puts'"
    );
    assert_serves(&rt, &cluster, watched, "after/unread-watches");
    let high_water = proc_status_bytes(pid, "VmHWM");
    eprintln!(
        "node {watched}: {} MiB peak; MiB after each {CHUNK} puts of {VALUE} bytes with {UNREAD} \
         watch streams unread: {samples:?}",
        high_water >> 20
    );
    assert!(
        high_water < RSS_BOUND,
        "peak resident memory {} MiB",
        high_water >> 20
    );
    let middle = samples[samples.len() / 2 - 1];
    let late_peak = samples[samples.len() / 2..]
        .iter()
        .copied()
        .max()
        .unwrap_or(0);
    assert!(
        late_peak.saturating_sub(middle) < LATE_GROWTH >> 20,
        "node {watched} kept growing with the puts: MiB after each {CHUNK} puts {samples:?}"
    );

    // Read at last, a watcher that fell far behind still gets every put, once, in order.
    drop(unread);
    let lagging_seen = rt.block_on(revisions_until(&mut lagging_stream, PUTS));
    assert_eq!(
        lagging_seen, revisions,
        "the lagging watcher's revisions vs the puts'"
    );
}

#[test]
fn ten_thousand_watch_streams_over_four_connections_are_opened_or_refused_clearly() {
    const STREAMS: usize = 10_000;
    const CONNECTIONS: usize = 4;
    /// Streams opened at once: a wave that stalls stops the test within one [`OPEN_TIMEOUT`].
    const WAVE: usize = 256;
    const OPEN_TIMEOUT: Duration = Duration::from_secs(10);
    let mut cluster = Cluster::start(3);
    let leader = cluster.wait_for_leader();
    let target = cluster.followers(leader)[0];
    let pid = cluster.node(target).pid();
    let rt = runtime();
    let connections: Vec<Client> = (0..CONNECTIONS)
        .map(|_| connect_plain(&rt, &cluster, target))
        .collect();

    let started = Instant::now();
    let mut open = Vec::with_capacity(STREAMS);
    let mut refused: Vec<tonic::Status> = Vec::new();
    let mut broken: Vec<String> = Vec::new();
    let mut stalled = 0;
    rt.block_on(async {
        for wave_start in (0..STREAMS).step_by(WAVE) {
            let wave = (wave_start..(wave_start + WAVE).min(STREAMS)).map(|i| {
                let mut client = connections[i % CONNECTIONS].clone();
                let options = WatchOptions::new().with_prefix();
                async move {
                    tokio::time::timeout(OPEN_TIMEOUT, client.watch("many/", Some(options))).await
                }
            });
            for result in futures::future::join_all(wave).await {
                match result {
                    Ok(Ok(watch)) => open.push(watch),
                    Ok(Err(Error::GRpcStatus(status))) => refused.push(status),
                    Ok(Err(other)) => broken.push(other.to_string()),
                    Err(_) => stalled += 1,
                }
            }
            if stalled > 0 || !broken.is_empty() {
                break;
            }
        }
    });
    let mut messages: Vec<String> = refused
        .iter()
        .map(|status| format!("{:?}: {}", status.code(), status.message()))
        .collect();
    messages.sort();
    messages.dedup();
    eprintln!(
        "{} watch streams opened and {} refused over {CONNECTIONS} connections in {:?}; refusals: {messages:?}",
        open.len(),
        refused.len(),
        started.elapsed()
    );
    // Whatever happened to the calls, the node serves a fresh connection, and every stream it
    // opened is a live watch: one put reaches each.
    assert_serves(&rt, &cluster, target, "many/x");
    rt.block_on(async {
        let deadline = tokio::time::Instant::now() + CALL_TIMEOUT;
        let opened = open.len();
        for (i, (_watcher, stream)) in open.iter_mut().enumerate() {
            let mut seen = Vec::new();
            while seen.is_empty() {
                match tokio::time::timeout_at(deadline, stream.message()).await {
                    Ok(Ok(Some(response))) => seen.extend(events_of(&response)),
                    other => panic!(
                        "watch stream {i} of the {opened} opened did not deliver the put: {other:?}"
                    ),
                }
            }
            assert_eq!(seen.len(), 1, "stream {i}: {seen:?}");
            assert_eq!(seen[0].0, b"many/x", "stream {i}: {seen:?}");
        }
    });
    let rss = proc_status_bytes(pid, "VmRSS");
    eprintln!(
        "node {target} holds {} MiB with {} watch streams open",
        rss >> 20,
        open.len()
    );
    assert!(rss < RSS_BOUND, "node {target} holds {} MiB", rss >> 20);

    assert_eq!(
        stalled,
        0,
        "{stalled} watch() calls neither opened a stream nor failed within {OPEN_TIMEOUT:?}, \
         with {} streams open over {CONNECTIONS} connections: an etcd client waits, not fails, \
         when a server caps concurrent HTTP/2 streams per connection",
        open.len()
    );
    assert!(
        broken.is_empty(),
        "failures other than a gRPC status: {broken:?}"
    );
    assert!(
        refused.iter().all(|status| !status.message().is_empty()),
        "refusals without a reason: {refused:?}"
    );
    assert_eq!(open.len() + refused.len(), STREAMS);

    drop(open);
    assert_serves(&rt, &cluster, target, "after/many-watches");
}
