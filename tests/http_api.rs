//! The HTTP API, driven with a real HTTP client against real `ondisk` processes: the kv-db README
//! flows, the versioned API, errors, compare-and-swap races, scans, and health and metrics.

mod common;

use std::collections::HashSet;
use std::ffi::OsString;
use std::sync::Arc;
use std::sync::Barrier;
use std::thread;
use std::time::Duration;

use common::http::{http, Answer};
use common::Cluster;
use common::Node;

fn url(cluster: &Cluster, id: usize, path: &str) -> String {
    format!("http://{}{}", cluster.http_addr(id), path)
}

fn get(cluster: &Cluster, id: usize, path: &str) -> Answer {
    http("GET", &url(cluster, id, path), b"")
}

fn put(cluster: &Cluster, id: usize, path: &str, body: &[u8]) -> Answer {
    http("PUT", &url(cluster, id, path), body)
}

fn assert_status(answer: &Answer, expected: u16, what: &str) {
    assert_eq!(answer.status, expected, "{what}: body {}", answer.text());
}

fn three_nodes() -> (Cluster, usize) {
    let mut cluster = Cluster::start(3);
    let leader = cluster.wait_for_leader();
    (cluster, leader)
}

#[test]
fn a_single_node_started_with_the_kv_db_flags_serves_put_and_get() {
    let dir = tempfile::tempdir().expect("tempdir");
    let raft = common::free_addr();
    let http_port = common::free_port();
    let args: Vec<OsString> = [
        "--id".to_string(),
        "1".into(),
        "--cluster".into(),
        format!("http://{raft}"),
        "--port".into(),
        http_port.to_string(),
        "--data-dir".into(),
        dir.path().display().to_string(),
    ]
    .into_iter()
    .map(OsString::from)
    .collect();
    let mut node = Node::launch_args(1, args, Some(common::node_log_path(dir.path(), 1)));
    node.wait_ready(common::STARTUP_TIMEOUT)
        .expect("node starts");
    let base = format!("http://127.0.0.1:{http_port}");

    let stored = common::poll_until(Duration::from_secs(30), || {
        let answer = http("PUT", &format!("{base}/my-key"), b"hello");
        (answer.status == 204).then_some(answer)
    });
    assert!(
        stored.is_some(),
        "PUT never succeeded on a one-node cluster"
    );
    let answer = http("GET", &format!("{base}/my-key"), b"");
    assert_status(&answer, 200, "GET /my-key");
    assert_eq!(answer.body, b"hello");
}

#[test]
fn a_write_on_one_node_is_read_on_the_others_and_followers_forward_writes() {
    let (cluster, leader) = three_nodes();
    let follower = cluster
        .ids()
        .into_iter()
        .find(|id| *id != leader)
        .expect("a follower");

    assert_status(&put(&cluster, 1, "/my-key", b"hello"), 204, "PUT on node 1");
    for id in [2, 3] {
        let answer = get(&cluster, id, "/my-key");
        assert_status(&answer, 200, "GET on another node");
        assert_eq!(answer.body, b"hello");
    }

    assert_status(
        &put(&cluster, follower, "/v1/kv/forwarded", b"via follower"),
        204,
        "PUT on a follower",
    );
    let answer = get(&cluster, leader, "/v1/kv/forwarded");
    assert_status(&answer, 200, "GET on the leader");
    assert_eq!(answer.body, b"via follower");
}

#[test]
fn a_stopped_node_catches_up_on_writes_made_while_it_was_down() {
    let (mut cluster, _) = three_nodes();
    assert_status(&put(&cluster, 1, "/my-key", b"foo"), 204, "first PUT");
    cluster.kill(2);
    // Node 2 may have been the leader: writes resume once the others have elected a new one.
    cluster.wait_for_leader();
    assert_status(
        &put(&cluster, 1, "/my-key", b"bar"),
        204,
        "PUT with node 2 down",
    );
    assert_eq!(get(&cluster, 3, "/my-key").body, b"bar");

    cluster.restart(2);
    let answer = get(&cluster, 2, "/my-key");
    assert_status(&answer, 200, "GET on the restarted node");
    assert_eq!(answer.body, b"bar");
}

#[test]
fn errors_have_the_documented_status_codes() {
    let (cluster, _) = three_nodes();

    assert_status(&get(&cluster, 1, "/absent"), 404, "GET of a missing key");
    assert_status(
        &get(&cluster, 1, "/v1/kv/absent"),
        404,
        "v1 GET of a missing key",
    );

    let answer = http("PATCH", &url(&cluster, 1, "/some-key"), b"x");
    assert_status(&answer, 405, "PATCH");
    let allow = answer
        .headers
        .get("allow")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    assert!(
        allow.contains("PUT") && allow.contains("GET"),
        "Allow header: {allow:?}"
    );

    // The default -max-request-bytes: 1.5 MiB, key included.
    let too_big = vec![b'x'; (3 << 19) - "big".len() + 1];
    assert_status(
        &put(&cluster, 1, "/big", &too_big),
        413,
        "PUT over the request limit",
    );
    assert_status(
        &get(&cluster, 1, "/big"),
        404,
        "the refused value was not stored",
    );

    assert_status(
        &http(
            "POST",
            &url(&cluster, 1, "/not-a-number"),
            b"http://127.0.0.1:1",
        ),
        400,
        "POST with a bad id",
    );
    assert_status(
        &get(&cluster, 1, "/v1/kv/k?consistency=sometimes"),
        400,
        "bad consistency",
    );
    assert_status(
        &get(&cluster, 1, "/v1/kv/k?colour=blue"),
        400,
        "unknown query parameter",
    );
    assert_status(&get(&cluster, 1, "/v1/kv/?limit=0"), 400, "zero scan limit");

    assert_status(
        &put(&cluster, 1, "/v1/kv/cas?prev_exist=false", b"v1"),
        204,
        "create",
    );
    let answer = put(&cluster, 1, "/v1/kv/cas?prev_value=wrong", b"v2");
    assert_status(&answer, 412, "CAS with a wrong previous value");
    assert_eq!(answer.json()["current"]["value"], "v1");
    assert_status(
        &put(&cluster, 1, "/v1/kv/cas?prev_value=v1", b"v2"),
        204,
        "CAS with the right value",
    );
    assert_eq!(get(&cluster, 2, "/v1/kv/cas").body, b"v2");
    let answer = put(&cluster, 1, "/v1/kv/cas?prev_exist=false", b"v3");
    assert_status(&answer, 412, "create of an existing key");
    assert_eq!(answer.json()["current"]["value"], "v2");

    assert_status(
        &http("DELETE", &url(&cluster, 2, "/v1/kv/cas"), b""),
        204,
        "DELETE",
    );
    assert_status(&get(&cluster, 3, "/v1/kv/cas"), 404, "deleted key");
}

#[test]
fn exactly_one_of_many_concurrent_creates_wins() {
    let (cluster, _) = three_nodes();
    const CLIENTS: usize = 8;
    let start = Arc::new(Barrier::new(CLIENTS));
    let urls: Vec<String> = (0..CLIENTS)
        .map(|i| url(&cluster, 1 + i % 3, "/v1/kv/lock?prev_exist=false"))
        .collect();
    let handles: Vec<_> = urls
        .into_iter()
        .enumerate()
        .map(|(i, url)| {
            let start = start.clone();
            thread::spawn(move || {
                start.wait();
                (
                    i,
                    http("PUT", &url, format!("client-{i}").as_bytes()).status,
                )
            })
        })
        .collect();
    let outcomes: Vec<(usize, u16)> = handles
        .into_iter()
        .map(|h| h.join().expect("client thread"))
        .collect();
    let winners: Vec<usize> = outcomes
        .iter()
        .filter(|(_, s)| *s == 204)
        .map(|(i, _)| *i)
        .collect();
    let losers = outcomes.iter().filter(|(_, s)| *s == 412).count();
    assert_eq!(winners.len(), 1, "outcomes: {outcomes:?}");
    assert_eq!(losers, CLIENTS - 1, "outcomes: {outcomes:?}");
    let stored = get(&cluster, 2, "/v1/kv/lock");
    assert_eq!(stored.body, format!("client-{}", winners[0]).as_bytes());
}

#[test]
fn concurrent_compare_and_swap_increments_lose_no_update() {
    let (cluster, _) = three_nodes();
    assert_status(
        &put(&cluster, 1, "/v1/kv/counter", b"0"),
        204,
        "initial value",
    );
    const CLIENTS: usize = 4;
    const INCREMENTS: usize = 5;
    let addrs: Vec<String> = (0..CLIENTS)
        .map(|i| cluster.http_addr(1 + i % 3).to_string())
        .collect();
    let handles: Vec<_> = addrs
        .into_iter()
        .map(|addr| {
            thread::spawn(move || {
                let mut done = 0;
                let mut attempts = 0;
                while done < INCREMENTS {
                    attempts += 1;
                    assert!(attempts < 500, "too many CAS conflicts");
                    let current = http("GET", &format!("http://{addr}/v1/kv/counter"), b"");
                    let n: usize = String::from_utf8_lossy(&current.body)
                        .parse()
                        .expect("a number");
                    let next = (n + 1).to_string();
                    let swap = http(
                        "PUT",
                        &format!("http://{addr}/v1/kv/counter?prev_value={n}"),
                        next.as_bytes(),
                    );
                    match swap.status {
                        204 => done += 1,
                        412 => {}
                        other => panic!("unexpected status {other}: {}", swap.text()),
                    }
                }
            })
        })
        .collect();
    for handle in handles {
        handle.join().expect("client thread");
    }
    let total = get(&cluster, 3, "/v1/kv/counter");
    assert_eq!(total.text(), (CLIENTS * INCREMENTS).to_string());
}

#[test]
fn a_prefix_scan_returns_keys_in_order_up_to_the_limit_and_round_trips_binary_data() {
    let (cluster, _) = three_nodes();
    for key in ["user/3", "user/1", "user/2", "usex", "admin/1"] {
        assert_status(
            &put(&cluster, 1, &format!("/v1/kv/{key}"), key.as_bytes()),
            204,
            key,
        );
    }
    assert_status(
        &put(&cluster, 1, "/v1/kv/user/%FF%00bin", b"\xfe\x00value"),
        204,
        "binary key",
    );

    let all = get(&cluster, 2, "/v1/kv/?prefix=user/").json();
    let keys: Vec<&str> = all["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| i["key"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(&keys[..3], &["user/1", "user/2", "user/3"]);
    assert_eq!(all["count"], 4);
    let binary = &all["items"][3];
    assert_eq!(binary["encoding"], "base64");
    assert_eq!(binary["key"], "dXNlci//AGJpbg==");
    assert_eq!(binary["value"], "/gB2YWx1ZQ==");

    let limited = get(
        &cluster,
        3,
        "/v1/kv/?prefix=user/&limit=2&consistency=stale",
    )
    .json();
    assert_eq!(limited["count"], 2);
    assert_eq!(limited["items"][1]["key"], "user/2");

    let raw = get(&cluster, 3, "/v1/kv/user/%FF%00bin");
    assert_status(&raw, 200, "GET of a binary key");
    assert_eq!(raw.body, b"\xfe\x00value");
}

#[test]
fn without_a_quorum_stale_reads_answer_while_linearizable_reads_and_health_fail_with_503() {
    let (mut cluster, _) = three_nodes();
    assert_status(
        &put(&cluster, 1, "/v1/kv/k", b"before"),
        204,
        "PUT with a quorum",
    );
    assert_eq!(get(&cluster, 1, "/health").json()["health"], true);
    // Every node has applied the write once a linearizable read on each of them sees it.
    for id in [1, 2, 3] {
        assert_eq!(get(&cluster, id, "/v1/kv/k").body, b"before");
    }

    cluster.kill(2);
    cluster.kill(3);

    let stale = get(&cluster, 1, "/v1/kv/k?consistency=stale");
    assert_status(&stale, 200, "stale read without a quorum");
    assert_eq!(stale.body, b"before");

    let linearizable = get(&cluster, 1, "/v1/kv/k");
    assert_status(&linearizable, 503, "linearizable read without a quorum");
    assert!(
        linearizable.headers.contains_key("retry-after"),
        "503 should say Retry-After"
    );
    assert!(linearizable.json()["error"]
        .as_str()
        .unwrap_or("")
        .contains("timed out"));

    let write = put(&cluster, 1, "/v1/kv/k", b"after");
    assert_status(&write, 503, "write without a quorum");

    let health = get(&cluster, 1, "/health");
    assert_status(&health, 503, "health without a quorum");
    assert_eq!(health.json()["health"], false);

    cluster.restart(2);
    let healthy = common::poll_until(Duration::from_secs(30), || {
        (get(&cluster, 1, "/health").status == 200).then_some(())
    });
    assert!(
        healthy.is_some(),
        "health never recovered after a quorum returned"
    );
}

/// Pages through `GET /v1/kv/?QUERY` by following `next`, checking each page against `limit`
/// pairs and `max_bytes` of keys and values past its first pair; returns the pages' items.
fn scan_pages(
    cluster: &Cluster,
    query: &str,
    limit: usize,
    max_bytes: usize,
) -> Vec<Vec<serde_json::Value>> {
    let mut pages = Vec::new();
    let mut start: Option<String> = None;
    for _ in 0..100 {
        let path = match &start {
            Some(start) => format!("/v1/kv/?{query}&start={start}"),
            None => format!("/v1/kv/?{query}"),
        };
        let page = get(cluster, 1, &path);
        assert_status(&page, 200, &path);
        let page = page.json();
        let items = page["items"].as_array().expect("items").clone();
        assert_eq!(page["count"], items.len());
        assert!(
            !items.is_empty() && items.len() <= limit,
            "{path}: {} items",
            items.len()
        );
        let text_len = |item: &serde_json::Value, field: &str| {
            let text = item[field].as_str().unwrap_or("");
            if item["encoding"] == "base64" {
                text.len() / 4 * 3
            } else {
                text.len()
            }
        };
        let bytes: usize = items[1..]
            .iter()
            .map(|item| text_len(item, "key") + text_len(item, "value"))
            .sum();
        assert!(
            bytes <= max_bytes,
            "{path}: {bytes} bytes past the first pair"
        );
        pages.push(items);
        match page["next"].as_str() {
            Some(next) => start = Some(next.to_string()),
            None => {
                assert!(page["next"].is_null(), "{path}: next is {}", page["next"]);
                return pages;
            }
        }
    }
    panic!("the scan {query} did not end within 100 pages");
}

fn keys_of(pages: &[Vec<serde_json::Value>]) -> Vec<String> {
    pages
        .iter()
        .flatten()
        .map(|item| item["key"].as_str().unwrap_or("").to_string())
        .collect()
}

#[test]
fn a_scan_pages_through_any_range_bounded_by_bytes_and_count_with_a_next_key() {
    let mut cluster = Cluster::start(1);
    cluster.wait_for_leader();
    // Ten 1 MiB values: far more than one page may hold.
    let big = vec![b'v'; 1 << 20];
    let big_keys: Vec<String> = (0..10).map(|i| format!("big/{i:02}")).collect();
    for key in &big_keys {
        assert_status(&put(&cluster, 1, &format!("/v1/kv/{key}"), &big), 204, key);
    }
    let pages = scan_pages(&cluster, "prefix=big/&limit=100000", 100_000, 4 << 20);
    assert!(pages.len() > 1, "ten 1 MiB values came back in one page");
    assert_eq!(keys_of(&pages), big_keys, "every pair once, in key order");

    // By count too, and `next` carries a binary key to the next request intact.
    for key in ["small/a", "small/b", "small/%FF%00c", "smalt"] {
        assert_status(&put(&cluster, 1, &format!("/v1/kv/{key}"), b"s"), 204, key);
    }
    let pages = scan_pages(&cluster, "prefix=small/&limit=1&consistency=stale", 1, 0);
    assert_eq!(pages.len(), 3);
    let keys = keys_of(&pages);
    assert_eq!(&keys[..2], &["small/a", "small/b"]);
    assert_eq!(pages[2][0]["encoding"], "base64");
    assert_eq!(keys[2], "c21hbGwv/wBj");
}

/// 503 answers to writes: with `Retry-After` only when the write certainly had no effect.
fn assert_write_unavailable(answer: &Answer, retry_safe: bool, words: &str) {
    assert_status(answer, 503, "a write without a quorum");
    let error = answer.json()["error"].as_str().unwrap_or("").to_string();
    assert!(error.contains(words), "{error}");
    assert_eq!(
        answer.headers.contains_key("retry-after"),
        retry_safe,
        "Retry-After on {error:?}"
    );
}

#[test]
fn a_write_that_may_have_been_proposed_reports_an_unknown_outcome_without_retry_after() {
    let (mut cluster, leader) = three_nodes();
    for follower in cluster.followers(leader) {
        cluster.kill(follower);
    }
    // Sent at once, while the leader's lease from its last quorum still holds, the write is
    // appended but cannot commit; it would commit if a follower returned, so the client must not
    // be invited to send it again blindly.
    let answer = put(&cluster, leader, "/v1/kv/k", b"maybe");
    assert_write_unavailable(&answer, false, "outcome unknown");
}

#[test]
fn a_write_that_reached_no_leader_is_refused_with_retry_after() {
    // A node waiting to be added never learns of a leader: nothing is ever proposed.
    let cluster = Cluster::start_with_args(1, &["--join"]);
    let answer = put(&cluster, 1, "/v1/kv/k", b"never");
    assert_write_unavailable(&answer, true, "timed out");
}

#[test]
fn members_and_status_describe_the_cluster() {
    let (cluster, leader) = three_nodes();
    let members = cluster.wait_until_members_have_http_addresses();
    let listed: HashSet<u64> = members["members"]
        .as_array()
        .expect("members")
        .iter()
        .map(|m| m["id"].as_u64().unwrap_or(0))
        .collect();
    assert_eq!(listed, HashSet::from([1, 2, 3]));
    assert_eq!(members["leader"], leader as u64);
    for member in members["members"].as_array().expect("members") {
        let id = member["id"].as_u64().unwrap_or(0) as usize;
        assert_eq!(member["raft_addr"], cluster.raft_addr(id).to_string());
        assert_eq!(member["http_addr"], cluster.http_addr(id).to_string());
        assert_eq!(member["voter"], true);
        assert_eq!(member["leader"], id == leader);
    }

    let status = get(&cluster, leader, "/v1/status").json();
    assert_eq!(status["id"], leader as u64);
    assert_eq!(status["state"], "Leader");
    assert_eq!(status["leader"], leader as u64);
    for field in ["term", "last_log_index", "committed", "last_applied"] {
        assert!(
            status[field].as_u64().is_some(),
            "status.{field} missing: {status}"
        );
    }
    assert!(
        status.get("last_snapshot_index").is_some(),
        "status has no last_snapshot_index: {status}"
    );
}

#[test]
fn metrics_are_valid_prometheus_text_with_the_documented_series() {
    let (cluster, _) = three_nodes();
    assert_status(&put(&cluster, 1, "/v1/kv/m", b"1"), 204, "a write to count");
    assert_status(&get(&cluster, 1, "/v1/kv/m"), 200, "a read to count");
    let answer = get(&cluster, 1, "/metrics");
    assert_status(&answer, 200, "GET /metrics");
    let text = answer.text();
    let samples = parse_prometheus_text(&text);
    for name in [
        "ondisk_http_requests_total",
        "ondisk_http_request_duration_seconds_bucket",
        "ondisk_proposals_total",
        "ondisk_raft_term",
        "ondisk_raft_commit_index",
        "ondisk_raft_applied_index",
        "ondisk_leader_changes_total",
        "ondisk_snapshots_built_total",
        "ondisk_disk_bytes",
    ] {
        assert!(
            samples.iter().any(|(n, _)| n == name),
            "no {name} in:\n{text}"
        );
    }
    let applied = samples
        .iter()
        .find(|(n, _)| n == "ondisk_raft_applied_index")
        .map(|(_, v)| *v);
    assert!(applied.unwrap_or(0.0) >= 1.0, "applied index {applied:?}");
}

/// Parses the Prometheus text exposition format strictly enough to catch malformed output:
/// every line is blank, a `# HELP`/`# TYPE` comment, or `name{labels} value`.
fn parse_prometheus_text(text: &str) -> Vec<(String, f64)> {
    let mut samples = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        if let Some(comment) = line.strip_prefix('#') {
            let words: Vec<&str> = comment.split_whitespace().collect();
            if words.first() == Some(&"TYPE") {
                assert!(
                    matches!(
                        words.get(2),
                        Some(&("counter" | "gauge" | "histogram" | "summary" | "untyped"))
                    ),
                    "bad TYPE line: {line}"
                );
            }
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("no value: {line}"));
        let name = series.split('{').next().unwrap_or("");
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name in: {line}"
        );
        if let Some(labels) = series.strip_prefix(name) {
            assert!(
                labels.is_empty() || (labels.starts_with('{') && labels.ends_with('}')),
                "bad labels: {line}"
            );
        }
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in: {line}"));
        samples.push((name.to_string(), value));
    }
    samples
}

/// The HTTP-side view of a cluster used above.
trait HttpCluster {
    /// Polls `/v1/members` on node 1 until every member's HTTP address is known (each node records
    /// its own address in the membership shortly after it starts).
    fn wait_until_members_have_http_addresses(&self) -> serde_json::Value;
}

impl HttpCluster for Cluster {
    fn wait_until_members_have_http_addresses(&self) -> serde_json::Value {
        common::poll_until(Duration::from_secs(30), || {
            let members = get(self, 1, "/v1/members").json();
            let complete = members["members"].as_array().is_some_and(|all| {
                all.len() == 3
                    && all
                        .iter()
                        .all(|m| m["http_addr"].as_str().is_some_and(|a| !a.is_empty()))
            });
            complete.then_some(members)
        })
        .expect("members never listed every HTTP address")
    }
}
