//! Leases over HTTP, with real processes: a lease kept alive outlives a crash of the leader, a
//! lease left alone expires (also across a leader crash) and takes its keys with it on every node
//! in one revision, and time-to-live, revoke and unknown leases answer as documented.

mod common;

use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::sync::Mutex;
use std::thread;
use std::time::Duration;
use std::time::Instant;

use common::http::{events, http, http_json, Answer, Watch};
use common::Cluster;
use ondisk::api::http::header;
use ondisk::api::{
    EventKind, LeaseGrantRequest, LeaseGrantResponse, LeaseLeasesResponse, LeaseTimeToLiveResponse,
};

/// TTL of the leases these tests leave alone or keep alive: a few election timeouts, so a failover
/// fits well inside it.
const TTL: i64 = 3;
/// How long a lease left alone may take to expire at most, after its TTL: the leader checks
/// every 100 ms and revokes through the log; an election may come first. Generous for a machine
/// whose few cores are shared by several clusters.
const EXPIRY_SLACK: Duration = Duration::from_secs(2);
/// How long a test waits for an expiry before giving up (the bound itself is asserted after).
const EXPIRY_TIMEOUT: Duration = Duration::from_secs(60);

/// The election timeout every test node runs with.
fn election_timeout() -> Duration {
    humantime::parse_duration(common::NODE_ELECTION_TIMEOUT).expect("a duration")
}

/// The latest a lease left alone since `since` may expire: its TTL, an election timeout for the
/// election a leader's crash may need, one more for the revoke's commit, and [`EXPIRY_SLACK`].
fn expiry_bound(ttl: i64) -> Duration {
    Duration::from_secs(ttl as u64) + 2 * election_timeout() + EXPIRY_SLACK
}

/// Node `id`'s URL for `path`.
fn url(cluster: &Cluster, id: usize, path: &str) -> String {
    format!("http://{}{}", cluster.http_addr(id), path)
}

/// Grants a lease through node `id`; panics unless it answers 200.
fn grant(cluster: &Cluster, id: usize, request: LeaseGrantRequest) -> LeaseGrantResponse {
    let answer = http_json("POST", &url(cluster, id, "/v1/leases"), &request);
    assert_eq!(answer.status, 200, "grant: {}", answer.text());
    serde_json::from_slice(&answer.body).expect("a LeaseGrantResponse")
}

/// Grants a lease of `ttl` seconds with an id the cluster chooses; its id.
fn grant_ttl(cluster: &Cluster, id: usize, ttl: i64) -> i64 {
    let granted = grant(cluster, id, LeaseGrantRequest { ttl, id: 0 });
    assert_eq!(granted.ttl, ttl, "{granted:?}");
    granted.id
}

/// Puts `key` (its own name as the value) attached to `lease`.
fn put_with_lease(cluster: &Cluster, id: usize, key: &str, lease: i64) -> Answer {
    http(
        "PUT",
        &url(cluster, id, &format!("/v1/kv/{key}?lease={lease}")),
        key.as_bytes(),
    )
}

/// A linearizable read of `key` on node `id`.
fn get(cluster: &Cluster, id: usize, key: &str) -> Answer {
    http("GET", &url(cluster, id, &format!("/v1/kv/{key}")), b"")
}

/// One keep-alive of `lease` through node `id`.
fn keep_alive(cluster: &Cluster, id: usize, lease: i64) -> Answer {
    http(
        "POST",
        &url(cluster, id, &format!("/v1/leases/{lease}/keep-alive")),
        b"",
    )
}

/// Polls node `id` until `key` is gone; the time that took, from `since`.
fn wait_gone(cluster: &Cluster, id: usize, key: &str, since: Instant) -> Duration {
    common::poll_until(EXPIRY_TIMEOUT, || {
        let answer = get(cluster, id, key);
        (answer.status == 404).then(|| since.elapsed())
    })
    .unwrap_or_else(|| {
        panic!(
            "{key} still on node {id} after {EXPIRY_TIMEOUT:?}\n{}",
            cluster.diagnostics()
        )
    })
}

/// Renews a lease every TTL/3 from a thread of its own, through whichever node answers, until
/// dropped. A renewal refused with 404 (the lease is gone) is recorded as a failure.
struct KeepAlive {
    stop: Arc<AtomicBool>,
    failures: Arc<Mutex<Vec<String>>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl KeepAlive {
    fn start(cluster: &Cluster, lease: i64) -> KeepAlive {
        /// Bounds the thread even if a test forgets to stop it.
        const MAX_RUN: Duration = Duration::from_secs(120);
        /// Between rounds in which no node renewed the lease (during an election).
        const RETRY: Duration = Duration::from_millis(100);
        let urls: Vec<String> = cluster
            .ids()
            .into_iter()
            .map(|id| url(cluster, id, &format!("/v1/leases/{lease}/keep-alive")))
            .collect();
        let stop = Arc::new(AtomicBool::new(false));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let thread = {
            let (stop, failures) = (stop.clone(), failures.clone());
            let period = Duration::from_secs(TTL as u64) / 3;
            let agent = common::http::agent(period);
            thread::spawn(move || {
                let started = Instant::now();
                let mut next = Instant::now();
                while !stop.load(Ordering::Relaxed) && started.elapsed() < MAX_RUN {
                    if Instant::now() < next {
                        thread::sleep(common::POLL_INTERVAL);
                        continue;
                    }
                    // A node that is down or between leaders does not answer 200; another may.
                    let renewed = urls.iter().any(|url| {
                        match common::http::request(&agent, "POST", url, b"") {
                            Ok(answer) if answer.status == 200 => true,
                            Ok(answer) if answer.status == 404 => {
                                failures.lock().unwrap().push(answer.text());
                                false
                            }
                            _ => false,
                        }
                    });
                    next = Instant::now() + if renewed { period } else { RETRY };
                }
            })
        };
        KeepAlive {
            stop,
            failures,
            thread: Some(thread),
        }
    }

    /// Stops renewing; panics if a renewal was ever refused because the lease was gone.
    fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.join().expect("keep-alive thread");
        }
        let failures = self.failures.lock().unwrap();
        assert!(failures.is_empty(), "keep-alives refused: {failures:?}");
    }
}

impl Drop for KeepAlive {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[test]
fn a_lease_kept_alive_outlives_a_crash_of_the_leader() {
    let mut cluster = Cluster::start3();
    let leader = cluster.wait_for_leader();
    let lease = grant_ttl(&cluster, leader, TTL);
    assert_eq!(put_with_lease(&cluster, leader, "kept", lease).status, 204);
    let keeper = KeepAlive::start(&cluster, lease);

    cluster.kill(leader);
    let new_leader = cluster.wait_for_leader();
    let watched_until = Instant::now() + 2 * Duration::from_secs(TTL as u64);
    while Instant::now() < watched_until {
        let answer = get(&cluster, new_leader, "kept");
        assert_eq!(
            answer.status,
            200,
            "the kept-alive lease's key went: {}\n{}",
            answer.text(),
            cluster.diagnostics()
        );
        thread::sleep(common::POLL_INTERVAL);
    }
    keeper.stop();
    let answer = get(&cluster, new_leader, "kept");
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.number_header(header::LEASE), lease);
}

#[test]
fn a_lease_left_alone_expires_in_time_and_its_keys_go_everywhere_in_one_revision() {
    let mut cluster = Cluster::start3();
    let leader = cluster.wait_for_leader();
    let watch = Watch::open(&url(&cluster, 3, "/v1/watch/gone/?prefix=true"));
    let lease = grant_ttl(&cluster, leader, TTL);
    let keys = ["gone/a", "gone/b", "gone/c"];
    for key in keys {
        assert_eq!(put_with_lease(&cluster, 1, key, lease).status, 204);
    }
    let stay = http("PUT", &url(&cluster, 2, "/v1/kv/gone/stay"), b"stays");
    assert_eq!(stay.status, 204);
    let renewed = keep_alive(&cluster, 2, lease);
    assert_eq!(renewed.status, 200, "{}", renewed.text());
    let renewed_at = Instant::now();

    let took = wait_gone(&cluster, leader, "gone/a", renewed_at);
    assert!(
        took <= expiry_bound(TTL),
        "the lease expired {took:?} after its last keep-alive (TTL {TTL} s)"
    );
    assert!(
        took >= Duration::from_secs(TTL as u64 - 1),
        "the lease expired early, {took:?} after its last keep-alive (TTL {TTL} s)"
    );
    for id in cluster.ids() {
        for key in keys {
            let answer = get(&cluster, id, key);
            assert_eq!(answer.status, 404, "{key} on node {id}: {}", answer.text());
        }
        assert_eq!(get(&cluster, id, "gone/stay").text(), "stays");
    }
    let answer = http(
        "GET",
        &url(&cluster, 1, &format!("/v1/leases/{lease}")),
        b"",
    );
    assert_eq!(answer.status, 404, "an expired lease: {}", answer.text());

    // Every change up to a later put, so a second delete would have been reported before it.
    assert_eq!(
        http("PUT", &url(&cluster, 1, "/v1/kv/gone/zz-last"), b"").status,
        204
    );
    let responses = watch.until(Duration::from_secs(15), |r| {
        events(r).iter().any(|e| e.kv.key == b"gone/zz-last")
    });
    let deletes: Vec<_> = events(&responses)
        .into_iter()
        .filter(|e| e.kind == EventKind::Delete)
        .collect();
    let mut deleted: Vec<&[u8]> = deletes.iter().map(|e| e.kv.key.as_slice()).collect();
    deleted.sort();
    assert_eq!(
        deleted,
        keys.map(str::as_bytes),
        "each key deleted exactly once"
    );
    let revision = deletes[0].kv.mod_revision;
    assert!(
        deletes.iter().all(|e| e.kv.mod_revision == revision),
        "the deletes are not one revision: {deletes:?}"
    );
    assert!(
        responses.iter().any(|r| r
            .events
            .iter()
            .filter(|e| e.kind == EventKind::Delete)
            .count()
            == 3),
        "the deletes came in separate lines: {responses:?}"
    );
}

#[test]
fn a_lease_left_alone_still_expires_when_its_leader_crashes() {
    let mut cluster = Cluster::start3();
    let leader = cluster.wait_for_leader();
    let lease = grant_ttl(&cluster, leader, TTL);
    assert_eq!(
        put_with_lease(&cluster, leader, "orphan", lease).status,
        204
    );

    cluster.kill(leader);
    let new_leader = cluster.wait_for_leader();
    let elected_by = Instant::now();
    // The new leader counts the lease's TTL afresh from its election, not from the grant.
    let answer = get(&cluster, new_leader, "orphan");
    assert_eq!(
        answer.status,
        200,
        "expired at the election: {}",
        answer.text()
    );
    let took = wait_gone(&cluster, new_leader, "orphan", elected_by);
    assert!(
        took <= expiry_bound(TTL),
        "the lease expired {took:?} after the new leader was seen (TTL {TTL} s)"
    );

    cluster.restart(leader);
    let answer = get(&cluster, leader, "orphan");
    assert_eq!(answer.status, 404, "the old leader: {}", answer.text());
}

#[test]
fn time_to_live_lists_a_leases_keys_revoke_deletes_them_and_unknown_leases_answer_404() {
    const LEASE: i64 = 4242;
    let mut cluster = Cluster::start3();
    cluster.wait_for_leader();
    let granted = grant(&cluster, 2, LeaseGrantRequest { ttl: 60, id: LEASE });
    assert_eq!((granted.id, granted.ttl), (LEASE, 60));
    let again = http_json(
        "POST",
        &url(&cluster, 1, "/v1/leases"),
        &LeaseGrantRequest { ttl: 60, id: LEASE },
    );
    assert_eq!(
        again.status,
        409,
        "a second grant of one id: {}",
        again.text()
    );
    for key in ["l/b", "l/a"] {
        assert_eq!(put_with_lease(&cluster, 3, key, LEASE).status, 204);
    }
    assert_eq!(get(&cluster, 1, "l/a").number_header(header::LEASE), LEASE);

    let answer = http(
        "GET",
        &url(&cluster, 3, &format!("/v1/leases/{LEASE}?keys=true")),
        b"",
    );
    assert_eq!(answer.status, 200, "{}", answer.text());
    let ttl: LeaseTimeToLiveResponse = serde_json::from_slice(&answer.body).expect("a TTL answer");
    assert_eq!((ttl.id, ttl.granted_ttl), (LEASE, 60));
    assert!((1..=60).contains(&ttl.ttl), "{ttl:?}");
    assert_eq!(ttl.keys, vec![b"l/a".to_vec(), b"l/b".to_vec()]);
    let all: LeaseLeasesResponse =
        serde_json::from_slice(&http("GET", &url(&cluster, 1, "/v1/leases"), b"").body)
            .expect("a leases answer");
    assert_eq!(all.leases.iter().map(|l| l.id).collect::<Vec<_>>(), [LEASE]);

    let revoked = http(
        "DELETE",
        &url(&cluster, 1, &format!("/v1/leases/{LEASE}")),
        b"",
    );
    assert_eq!(revoked.status, 200, "{}", revoked.text());
    for id in cluster.ids() {
        for key in ["l/a", "l/b"] {
            assert_eq!(get(&cluster, id, key).status, 404, "{key} on node {id}");
        }
    }
    let lease_path = format!("/v1/leases/{LEASE}");
    for (what, answer) in [
        (
            "time-to-live",
            http("GET", &url(&cluster, 2, &lease_path), b""),
        ),
        (
            "revoke",
            http("DELETE", &url(&cluster, 2, &lease_path), b""),
        ),
        ("keep-alive", keep_alive(&cluster, 3, LEASE)),
        ("put", put_with_lease(&cluster, 1, "l/c", LEASE)),
        (
            "put, never granted",
            put_with_lease(&cluster, 2, "l/d", 777),
        ),
    ] {
        assert_eq!(
            answer.status,
            404,
            "{what} of a revoked lease: {}",
            answer.text()
        );
    }
    for key in ["l/c", "l/d"] {
        assert_eq!(get(&cluster, 1, key).status, 404, "{key} was stored");
    }
}
