//! Bounds that keep a node available whatever its clients send: requests over
//! `-max-request-bytes` are refused on every interface, a follower catches up on entries too large
//! to send many at once, and a client flooding the raft port is held back instead of growing the
//! node's memory.

mod common;

use std::io::Read;
use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use common::http::http;
use common::native::client_of;
use common::native::put_request;
use common::native::runtime;
use common::native::CLIENT_TIMEOUT;
use common::Cluster;
use ondisk::client::Consistency;
use ondisk::network::Request;

/// The default `-max-request-bytes`: 1.5 MiB, as etcd.
const DEFAULT_LIMIT: usize = 3 << 19;
fn kv_url(cluster: &Cluster, id: usize, key: &str) -> String {
    format!("http://{}/v1/kv/{key}", cluster.http_addr(id))
}

/// A value that makes a request of `key` exactly `total` bytes.
fn value_for(key: &str, total: usize, fill: u8) -> Vec<u8> {
    vec![fill; total - key.len()]
}

#[test]
fn a_request_just_over_max_request_bytes_is_refused_on_every_interface_and_the_node_keeps_serving()
{
    let mut cluster = Cluster::start(3);
    let leader = cluster.wait_for_leader();
    let follower = cluster.followers(leader)[0];

    // HTTP, on the leader and on a follower (which checks before forwarding): a request of exactly
    // the limit is stored, one byte more is refused with 413 and the flag's name.
    for id in [leader, follower] {
        let key = format!("http-{id}");
        let at_limit = value_for(&key, DEFAULT_LIMIT, b'a');
        let stored = http("PUT", &kv_url(&cluster, id, &key), &at_limit);
        assert_eq!(
            stored.status,
            204,
            "at the limit on node {id}: {}",
            stored.text()
        );
        let over = value_for(&key, DEFAULT_LIMIT + 1, b'b');
        let refused = http("PUT", &kv_url(&cluster, id, &key), &over);
        assert_eq!(refused.status, 413, "over the limit on node {id}");
        let error = refused.json()["error"].as_str().unwrap_or("").to_string();
        assert!(
            error.contains(&format!("request of {} bytes", DEFAULT_LIMIT + 1))
                && error.contains("-max-request-bytes"),
            "{error}"
        );
        let kept = http("GET", &kv_url(&cluster, id, &key), b"");
        assert!(kept.body == at_limit, "the refused write changed {key}");
    }
    // A body alone over the limit is cut off as it streams in, with the same error.
    let body_over = vec![b'c'; DEFAULT_LIMIT + 1];
    let refused = http("PUT", &kv_url(&cluster, leader, "k"), &body_over);
    assert_eq!(refused.status, 413);
    assert!(refused.json()["error"]
        .as_str()
        .is_some_and(|e| e.contains("-max-request-bytes")));

    // The REPL answers one error line and carries on.
    let repl_over = value_for("repl", DEFAULT_LIMIT + 1, b'd');
    let error = cluster
        .node(follower)
        .put("repl", &repl_over)
        .expect_err("a REPL put over the limit");
    assert!(
        error.starts_with("error: ") && error.contains("-max-request-bytes"),
        "{error}"
    );

    // The native client gets the refusal and its reason at once, not a timeout after retries: for
    // a request over the nodes' limit, and for one too large for the wire itself (~80 MiB, which
    // used to wedge replication when it was accepted).
    let runtime = runtime();
    let client = client_of(&cluster, &cluster.ids());
    let native_over = value_for("native", DEFAULT_LIMIT + 1, b'e');
    match runtime.block_on(client.put(put_request(b"native".to_vec(), native_over))) {
        Err(ondisk::Error::RequestTooLarge { limit, .. }) => {
            assert_eq!(limit, DEFAULT_LIMIT as u64)
        }
        other => panic!("a native put over the limit answered {other:?}"),
    }
    let huge = vec![b'f'; 81 << 20];
    let error = runtime
        .block_on(client.put(put_request(b"huge".to_vec(), huge)))
        .expect_err("an 81 MiB native put");
    assert!(
        matches!(error, ondisk::Error::Refused(_)) && error.to_string().contains("exceeds"),
        "{error}"
    );

    // Every node still commits and serves, through every interface.
    runtime
        .block_on(client.put(put_request(b"after".to_vec(), b"native".to_vec())))
        .expect("a native put after the refusals");
    cluster.must_put(follower, "after-repl", "repl");
    let stored = http("PUT", &kv_url(&cluster, leader, "after-http"), b"http");
    assert_eq!(stored.status, 204, "{}", stored.text());
    for id in cluster.ids() {
        cluster.assert_get(id, "after", Some(b"native"));
        cluster.assert_get(id, "after-repl", Some(b"repl"));
        cluster.assert_get(id, "after-http", Some(b"http"));
    }
    for key in ["repl", "native", "huge"] {
        cluster.assert_get(leader, key, None);
    }
}

/// Applied index of node `id`, and the leader's commit index, from their REPL status.
fn applied_and_committed(cluster: &mut Cluster, id: usize, leader: usize) -> (u64, u64) {
    let applied = common::status_u64(&cluster.node(id).status(), "applied").unwrap_or(0);
    let committed = common::status_u64(&cluster.node(leader).status(), "committed").unwrap_or(0);
    (applied, committed)
}

#[test]
fn a_follower_catches_up_on_more_large_entries_than_one_frame_holds() {
    // 90 entries of 1.9 MiB: any batch openraft forms for the lagging follower, 64 entries when
    // streaming or, after a leader change, a probe from the middle of the gap (45 entries or
    // more), is over 80 MiB, more than a frame holds.
    const ENTRIES: usize = 90;
    let value = vec![b'v'; 1900 << 10];
    // No snapshot within reach, so the follower must catch up from the log.
    let mut cluster = Cluster::start_with_args(
        3,
        &[
            "--max-request-bytes",
            "2097152",
            "--snapshot-entries",
            "1000000",
        ],
    );
    let leader = cluster.wait_for_leader();
    let lagging = cluster.followers(leader)[0];
    cluster.kill(lagging);

    let runtime = runtime();
    let client = client_of(&cluster, &cluster.ids());
    for i in 0..ENTRIES {
        runtime
            .block_on(client.put(put_request(
                format!("large/{i:02}").into_bytes(),
                value.clone(),
            )))
            .unwrap_or_else(|e| panic!("put {i} with one follower down: {e}"));
    }

    cluster.restart(lagging);
    cluster.wait_until(
        Duration::from_secs(120),
        "the restarted follower applied every large entry",
        |c| {
            let (applied, committed) = applied_and_committed(c, lagging, leader);
            applied >= committed
        },
    );
    let last = format!("large/{:02}", ENTRIES - 1);
    let local = http(
        "GET",
        &format!("{}?consistency=stale", kv_url(&cluster, lagging, &last)),
        b"",
    );
    assert_eq!(local.status, 200, "{last} on the caught-up follower");
    assert!(
        local.body == value,
        "{last} differs on the caught-up follower"
    );
    // The cluster still commits with the caught-up follower in it.
    cluster.must_put(lagging, "after", "caught up");
}

/// Resident memory of process `pid` in bytes, from `/proc`.
fn resident_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    let kib = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .expect("VmRSS in /proc status");
    kib * 1024
}

/// One request frame as the raft port reads it: a big-endian length, then the bincode of the
/// request id and the request (the layout of the transport's request frame).
fn request_frame(id: u64, request: &Request) -> Vec<u8> {
    let body = bincode::serialize(&(id, request)).expect("encode a request");
    let mut frame = (body.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&body);
    frame
}

#[test]
fn a_client_flooding_the_raft_port_without_reading_is_held_to_bounded_memory() {
    // 4000 reads of a 256 KiB value: a node that queued every answer would hold at least 1 GiB
    // for this one connection; within bounds it holds at most 256 answers in progress, each
    // copied up to three times (read, encoded, being written), and the allocator keeps freed
    // pages a moment before returning them: 120 to 300 MiB measured. The limit sits halfway
    // between that and the unbounded case.
    const REQUESTS: u64 = 4000;
    const VALUE_BYTES: usize = 256 << 10;
    const GROWTH_LIMIT: u64 = 512 << 20;
    // How long the node's memory is watched: an unbounded node passes the limit within a fraction
    // of it.
    const WATCH: Duration = Duration::from_secs(5);

    let mut cluster = Cluster::start(1);
    cluster.wait_for_leader();
    let value = vec![b'x'; VALUE_BYTES];
    let stored = http("PUT", &kv_url(&cluster, 1, "flood"), &value);
    assert_eq!(stored.status, 204, "{}", stored.text());
    let pid = cluster.node(1).pid();
    let before = resident_bytes(pid);

    let mut flood = TcpStream::connect(cluster.raft_addr(1)).expect("connect to the raft port");
    flood
        .set_write_timeout(Some(CLIENT_TIMEOUT))
        .expect("write timeout");
    let read = Request::Get {
        key: b"flood".to_vec(),
        linearizable: false,
    };
    let frames: Vec<u8> = (0..REQUESTS)
        .flat_map(|id| request_frame(id, &read))
        .collect();
    flood.write_all(&frames).expect("send the flood");

    let mut peak = before;
    let grown = common::poll_until(WATCH, || {
        peak = peak.max(resident_bytes(pid));
        (peak - before >= GROWTH_LIMIT).then_some(peak - before)
    });
    assert!(
        grown.is_none(),
        "the node grew by {} MiB for one connection that reads no answers\n{}",
        (peak - before) >> 20,
        cluster.diagnostics()
    );
    eprintln!(
        "resident memory grew by {} MiB under the flood",
        (peak - before) >> 20
    );

    // The node serves others meanwhile.
    cluster.must_put(1, "meanwhile", "served");
    cluster.assert_get(1, "meanwhile", Some(b"served"));

    // Once the client reads, every request is answered: holding back loses nothing.
    flood
        .set_read_timeout(Some(CLIENT_TIMEOUT))
        .expect("read timeout");
    let mut answers = 0;
    let mut body = Vec::new();
    while answers < REQUESTS {
        let mut len = [0u8; 4];
        flood.read_exact(&mut len).expect("an answer's length");
        body.resize(u32::from_be_bytes(len) as usize, 0);
        flood.read_exact(&mut body).expect("an answer's body");
        answers += 1;
    }
    let native = client_of(&cluster, &cluster.ids());
    let read_back = runtime()
        .block_on(native.get(b"flood", Consistency::Stale))
        .expect("a read after the flood");
    assert_eq!(read_back.map(|v| v.len()), Some(VALUE_BYTES));
}
