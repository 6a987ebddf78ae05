//! Revisions over HTTP, with real processes: reads of past revisions (after a crash of every node
//! and on a node that caught up from a snapshot), compaction by hand and automatically, watches
//! streamed as NDJSON, and transactions.

mod common;

use std::time::Duration;

use common::http::{
    events, http, http_json, wait_for_compaction, wait_for_install, write_keys, Answer, Watch,
};
use common::Cluster;
use ondisk::api::http::header;
use ondisk::api::http::ErrorBody;
use ondisk::api::http::ScanAnswer;
use ondisk::api::{
    Compare, CompareResult, CompareTarget, EventKind, PutRequest, RangeRequest, RequestOp,
    ResponseOp, TxnRequest, TxnResponse,
};

/// How long a watch may take to report a change made elsewhere.
const WATCH_TIMEOUT: Duration = Duration::from_secs(15);

/// Node `id`'s URL for `path`.
fn url(cluster: &Cluster, id: usize, path: &str) -> String {
    format!("http://{}{}", cluster.http_addr(id), path)
}

/// Puts `key` through node `id` and returns the revision the put created.
fn put(cluster: &Cluster, id: usize, key: &str, value: &str) -> i64 {
    let answer = txn(
        cluster,
        id,
        &TxnRequest {
            success: vec![put_op(key, value)],
            ..TxnRequest::default()
        },
    );
    answer.header.revision
}

/// A transaction's put of a UTF-8 pair.
fn put_op(key: &str, value: &str) -> RequestOp {
    RequestOp::Put(PutRequest {
        key: key.into(),
        value: value.into(),
        ..PutRequest::default()
    })
}

/// Runs a transaction through node `id`; panics unless it answers 200.
fn txn(cluster: &Cluster, id: usize, request: &TxnRequest) -> TxnResponse {
    let answer = http_json("POST", &url(cluster, id, "/v1/txn"), request);
    assert_eq!(answer.status, 200, "txn: {}", answer.text());
    serde_json::from_slice(&answer.body).expect("a TxnResponse")
}

/// `GET /v1/kv/KEY?revision=R` on node `id`.
fn get_at(cluster: &Cluster, id: usize, key: &str, revision: i64) -> Answer {
    http(
        "GET",
        &url(cluster, id, &format!("/v1/kv/{key}?revision={revision}")),
        b"",
    )
}

/// The current revision, as node `id` reports it.
fn current_revision(cluster: &Cluster, id: usize) -> i64 {
    let answer = http_json(
        "POST",
        &url(cluster, id, "/v1/range"),
        &RangeRequest {
            key: b"\0".to_vec(),
            range_end: b"\0".to_vec(),
            count_only: true,
            ..RangeRequest::default()
        },
    );
    assert_eq!(answer.status, 200, "range: {}", answer.text());
    answer.json()["header"]["revision"]
        .as_i64()
        .expect("a revision")
}

/// `(key, value)` of every pair of the scan of `prefix` at `revision` on node `id`.
fn scan_at(cluster: &Cluster, id: usize, prefix: &str, revision: i64) -> Vec<(String, String)> {
    let answer = http(
        "GET",
        &url(
            cluster,
            id,
            &format!("/v1/kv/?prefix={prefix}&revision={revision}"),
        ),
        b"",
    );
    assert_eq!(answer.status, 200, "scan at {revision}: {}", answer.text());
    let page: ScanAnswer = serde_json::from_slice(&answer.body).expect("a scan page");
    assert_eq!(page.revision, revision, "the scan's revision");
    page.items.into_iter().map(|i| (i.key, i.value)).collect()
}

/// The compacted-revision error of a 410 answer.
fn compacted(answer: &Answer, what: &str) -> i64 {
    assert_eq!(answer.status, 410, "{what}: {}", answer.text());
    let error: ErrorBody = serde_json::from_slice(&answer.body).expect("an ErrorBody");
    error.compact_revision.expect("compact_revision in a 410")
}

/// A key written three times, with another key written in between: the revisions of the three
/// puts, and of the other key's.
struct History {
    puts: [i64; 3],
    other: i64,
}

impl History {
    fn write(cluster: &Cluster, id: usize) -> History {
        let first = put(cluster, id, "h/key", "v1");
        let other = put(cluster, id, "h/other", "o1");
        let second = put(cluster, id, "h/key", "v2");
        let third = put(cluster, id, "h/key", "v3");
        History {
            puts: [first, second, third],
            other,
        }
    }

    /// Every past version of the key, with its revisions in the headers, and scans at past
    /// revisions, as node `id` answers them.
    fn assert_readable(&self, cluster: &Cluster, id: usize) {
        let [first, second, third] = self.puts;
        for (version, (revision, value)) in [(first, "v1"), (second, "v2"), (third, "v3")]
            .into_iter()
            .enumerate()
        {
            let answer = get_at(cluster, id, "h/key", revision);
            assert_eq!(
                answer.status,
                200,
                "node {id} at {revision}: {}",
                answer.text()
            );
            assert_eq!(answer.text(), value, "node {id} at {revision}");
            assert_eq!(answer.number_header(header::MOD_REVISION), revision);
            assert_eq!(answer.number_header(header::CREATE_REVISION), first);
            assert_eq!(answer.number_header(header::VERSION), version as i64 + 1);
            assert!(
                answer.number_header(header::REVISION) >= third,
                "the store's revision"
            );
        }
        let before = get_at(cluster, id, "h/key", first - 1);
        assert_eq!(
            before.status,
            404,
            "node {id} before the key: {}",
            before.text()
        );
        let pair = |k: &str, v: &str| (k.to_string(), v.to_string());
        assert_eq!(scan_at(cluster, id, "h/", first), vec![pair("h/key", "v1")]);
        assert_eq!(
            scan_at(cluster, id, "h/", self.other),
            vec![pair("h/key", "v1"), pair("h/other", "o1")]
        );
        assert_eq!(
            scan_at(cluster, id, "h/", second),
            vec![pair("h/key", "v2"), pair("h/other", "o1")]
        );
    }
}

/// Values of the writes that push the log past a snapshot point.
fn filler(i: usize) -> Vec<u8> {
    format!("filler-{i}").into_bytes()
}

#[test]
fn past_revisions_read_the_same_after_a_crash_of_every_node_and_on_a_node_restored_from_a_snapshot()
{
    let mut cluster = Cluster::start_with_args(
        3,
        &["--snapshot-entries", "200", "--compaction-overhead", "20"],
    );
    let leader = cluster.wait_for_leader();
    let behind = cluster.followers(leader)[0];
    cluster.kill(behind);

    let history = History::write(&cluster, leader);
    history.assert_readable(&cluster, leader);
    write_keys(&cluster, leader, "fill-", 400, filler);
    wait_for_compaction(&cluster, leader);

    cluster.restart(behind);
    wait_for_install(&cluster, behind);
    history.assert_readable(&cluster, behind);

    cluster.kill_all();
    cluster.restart_all();
    cluster.wait_for_leader();
    for id in cluster.ids() {
        history.assert_readable(&cluster, id);
    }
}

#[test]
fn compaction_refuses_older_reads_and_watches_with_410_and_keeps_the_rest() {
    let mut cluster = Cluster::start(3);
    cluster.wait_for_leader();
    let history = History::write(&cluster, 1);
    let [first, second, third] = history.puts;

    let answer = http_json(
        "POST",
        &url(&cluster, 2, "/v1/compact"),
        &serde_json::json!({ "revision": second }),
    );
    assert_eq!(answer.status, 200, "compact: {}", answer.text());

    for id in cluster.ids() {
        assert_eq!(
            compacted(&get_at(&cluster, id, "h/key", first), "old get"),
            second
        );
        let scan = http(
            "GET",
            &url(&cluster, id, &format!("/v1/kv/?prefix=h/&revision={first}")),
            b"",
        );
        assert_eq!(compacted(&scan, "old scan"), second);
        for (revision, value) in [(second, "v2"), (third, "v3")] {
            let answer = get_at(&cluster, id, "h/key", revision);
            assert_eq!(
                answer.status,
                200,
                "node {id} at {revision}: {}",
                answer.text()
            );
            assert_eq!(answer.text(), value);
        }
    }

    let watch = Watch::open(&url(
        &cluster,
        3,
        &format!("/v1/watch/h/?prefix=true&start_revision={first}"),
    ));
    let end = watch.next(WATCH_TIMEOUT);
    assert!(end.canceled, "a watch from a compacted revision: {end:?}");
    assert_eq!(end.compact_revision, second, "{end:?}");
    assert!(end.events.is_empty(), "{end:?}");
}

#[test]
fn revision_mode_auto_compaction_compacts_on_its_own() {
    const RETENTION: i64 = 5;
    let mut cluster = Cluster::start_with_args(
        1,
        &[
            "--auto-compaction-mode",
            "revision",
            "--auto-compaction-retention",
            &RETENTION.to_string(),
        ],
    );
    cluster.wait_for_leader();
    let first = put(&cluster, 1, "auto", "0");
    let mut last = first;
    for i in 1..=2 * RETENTION {
        last = put(&cluster, 1, "auto", &i.to_string());
    }

    let compact_revision = common::poll_until(Duration::from_secs(30), || {
        let answer = get_at(&cluster, 1, "auto", first);
        (answer.status == 410).then(|| compacted(&answer, "auto-compacted get"))
    })
    .unwrap_or_else(|| {
        panic!(
            "revision {first} never compacted\n{}",
            cluster.diagnostics()
        )
    });
    assert!(
        compact_revision > first && compact_revision <= last - RETENTION + 1,
        "compacted to {compact_revision}, first {first}, last {last}"
    );
    let newest = get_at(&cluster, 1, "auto", last);
    assert_eq!(newest.status, 200, "{}", newest.text());
    assert_eq!(newest.text(), (2 * RETENTION).to_string());
}

#[test]
fn watches_over_http_see_changes_made_elsewhere_whole_revisions_history_and_progress() {
    let mut cluster = Cluster::start_with_args(3, &["--watch-progress-notify-interval", "1s"]);
    cluster.wait_for_leader();
    let watch = Watch::open(&url(&cluster, 2, "/v1/watch/w/?prefix=true&prev_kv=true"));

    let first = put(&cluster, 1, "w/a", "1");
    let both = txn(
        &cluster,
        1,
        &TxnRequest {
            success: vec![put_op("w/b", "2"), put_op("w/c", "3")],
            ..TxnRequest::default()
        },
    )
    .header
    .revision;
    put(&cluster, 1, "elsewhere", "x");
    let last = put(&cluster, 1, "w/a", "4");

    let responses = watch.until(WATCH_TIMEOUT, |r| events(r).len() >= 4);
    let seen: Vec<(EventKind, String, String, i64)> = events(&responses)
        .into_iter()
        .map(|e| {
            (
                e.kind,
                String::from_utf8_lossy(&e.kv.key).into_owned(),
                String::from_utf8_lossy(&e.kv.value).into_owned(),
                e.kv.mod_revision,
            )
        })
        .collect();
    let put_event = |k: &str, v: &str, r| (EventKind::Put, k.to_string(), v.to_string(), r);
    assert_eq!(
        seen,
        vec![
            put_event("w/a", "1", first),
            put_event("w/b", "2", both),
            put_event("w/c", "3", both),
            put_event("w/a", "4", last),
        ]
    );
    assert!(
        responses.iter().any(|r| r
            .events
            .iter()
            .filter(|e| e.kv.mod_revision == both)
            .count()
            == 2),
        "the transaction's two puts came in separate lines: {responses:?}"
    );
    let last_event = events(&responses)[3];
    let prev = last_event
        .prev_kv
        .as_ref()
        .expect("prev_kv on the second put of w/a");
    assert_eq!(
        (prev.value.as_slice(), prev.mod_revision),
        (&b"1"[..], first)
    );

    let replay = Watch::open(&url(
        &cluster,
        3,
        &format!("/v1/watch/w/?prefix=true&start_revision={first}"),
    ));
    let replayed = replay.until(WATCH_TIMEOUT, |r| events(r).len() >= 4);
    let replayed: Vec<_> = events(&replayed)
        .into_iter()
        .map(|e| {
            (
                e.kind,
                e.kv.key.clone(),
                e.kv.value.clone(),
                e.kv.mod_revision,
            )
        })
        .collect();
    let live: Vec<_> = events(&responses)
        .into_iter()
        .map(|e| {
            (
                e.kind,
                e.kv.key.clone(),
                e.kv.value.clone(),
                e.kv.mod_revision,
            )
        })
        .collect();
    assert_eq!(
        replayed, live,
        "a watch from the past replays the same events"
    );

    let progress = Watch::open(&url(
        &cluster,
        3,
        "/v1/watch/w/?prefix=true&progress_notify=true",
    ));
    let note = progress.next(WATCH_TIMEOUT);
    assert!(note.events.is_empty() && !note.canceled, "{note:?}");
    assert_eq!(
        note.header.revision,
        current_revision(&cluster, 3),
        "{note:?}"
    );
    assert_eq!(note.header.revision, last);
}

/// An equality comparison of one key.
fn compare(key: &str, target: CompareTarget) -> Compare {
    Compare {
        key: key.into(),
        range_end: Vec::new(),
        target,
        result: CompareResult::Equal,
    }
}

#[test]
fn transactions_compare_value_version_absence_and_mod_revision_and_commit_at_one_revision() {
    let mut cluster = Cluster::start(3);
    cluster.wait_for_leader();
    let created = put(&cluster, 1, "t/a", "1");

    let applied = txn(
        &cluster,
        2,
        &TxnRequest {
            compare: vec![
                compare("t/a", CompareTarget::Value(b"1".to_vec())),
                compare("t/a", CompareTarget::Version(1)),
                compare("t/a", CompareTarget::ModRevision(created)),
                compare("t/new", CompareTarget::CreateRevision(0)),
            ],
            success: vec![put_op("t/a", "2"), put_op("t/new", "n")],
            failure: vec![put_op("t/failed", "x")],
        },
    );
    assert!(applied.succeeded, "{applied:?}");
    let revision = applied.header.revision;
    for (key, value) in [("t/a", "2"), ("t/new", "n")] {
        let answer = http("GET", &url(&cluster, 3, &format!("/v1/kv/{key}")), b"");
        assert_eq!(answer.text(), value);
        assert_eq!(
            answer.number_header(header::MOD_REVISION),
            revision,
            "{key}"
        );
    }

    let refused = txn(
        &cluster,
        3,
        &TxnRequest {
            compare: vec![compare("t/a", CompareTarget::Value(b"1".to_vec()))],
            success: vec![put_op("t/a", "3")],
            failure: vec![RequestOp::Range(RangeRequest {
                key: b"t/a".to_vec(),
                ..RangeRequest::default()
            })],
        },
    );
    assert!(!refused.succeeded, "{refused:?}");
    match refused.responses.as_slice() {
        [ResponseOp::Range(range)] => assert_eq!(range.kvs[0].value, b"2"),
        other => panic!("the failure branch's answers: {other:?}"),
    }
    assert_eq!(
        refused.header.revision, revision,
        "a read-only branch changes nothing"
    );
    let absent = txn(
        &cluster,
        1,
        &TxnRequest {
            compare: vec![compare("t/new", CompareTarget::CreateRevision(0))],
            success: vec![put_op("t/new", "again")],
            ..TxnRequest::default()
        },
    );
    assert!(
        !absent.succeeded,
        "create_revision == 0 holds only for an absent key"
    );

    let duplicate = http_json(
        "POST",
        &url(&cluster, 1, "/v1/txn"),
        &TxnRequest {
            success: vec![put_op("t/d", "1"), put_op("t/d", "2")],
            ..TxnRequest::default()
        },
    );
    assert_eq!(duplicate.status, 400, "{}", duplicate.text());
    assert!(
        duplicate.text().contains("duplicate key"),
        "{}",
        duplicate.text()
    );
    assert_eq!(current_revision(&cluster, 1), revision);
    assert_eq!(
        http("GET", &url(&cluster, 1, "/v1/kv/t/d"), b"").status,
        404
    );
}
