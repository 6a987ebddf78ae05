//! Bad input of every kind a node can meet, each answered without a panic and without losing
//! anything: garbage on the raft port, malformed and oversized HTTP requests and gRPC messages,
//! damaged data directories, and a disk that fills up.

mod common;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::http::http;
use common::{Cluster, Node, NodeSpec, Tmpfs};
use ondisk::api::http::{ErrorBody, ScanAnswer};
use ondisk::api::LeaseLeasesResponse;

/// How long a raw socket waits for the node to answer or close.
const SOCKET_TIMEOUT: Duration = Duration::from_secs(10);

/// A seeded generator for garbage bytes (SplitMix64).
struct Garbage(u64);

impl Garbage {
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n)
            .map(|_| {
                self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
                let mut z = self.0;
                z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
                (z ^ (z >> 31)) as u8
            })
            .collect()
    }
}

/// Connects to `addr`, sends `bytes`, half-closes, and returns whatever comes back until the
/// node closes the connection (or [`SOCKET_TIMEOUT`] passes).
fn send_raw(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    exchange(addr, bytes, true)
}

/// Sends `bytes` to `addr` and reads the answer: until the node closes the connection, or, when
/// `half_close` is false (the request is left unfinished on purpose), until the end of the
/// answer's headers. Bounded by [`SOCKET_TIMEOUT`].
fn exchange(addr: SocketAddr, bytes: &[u8], half_close: bool) -> Vec<u8> {
    let mut stream = TcpStream::connect_timeout(&addr, SOCKET_TIMEOUT)
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    stream
        .set_read_timeout(Some(SOCKET_TIMEOUT))
        .expect("set a read timeout");
    // The node may close the connection before reading everything; that is a fine answer.
    let _ = stream.write_all(bytes);
    if half_close {
        let _ = stream.shutdown(Shutdown::Write);
    }
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n @ 1..) = stream.read(&mut buf) {
        answer.extend_from_slice(&buf[..n]);
        if !half_close && answer.windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    answer
}

/// Asserts that no process of the cluster panicked: not on stderr, not in its log.
fn assert_no_panic(cluster: &mut Cluster) {
    for id in cluster.ids() {
        let node = cluster.node(id);
        let stderr = node
            .stderr_lines()
            .iter()
            .any(|l| common::lossy(l).contains("panicked"));
        assert!(
            !stderr && !node.log_contents().contains("panicked"),
            "node {id} panicked\n{}",
            node.diagnostics()
        );
    }
}

/// Asserts every node is running and the cluster still commits a write and reads it back
/// everywhere.
fn assert_cluster_serves(cluster: &mut Cluster, key: &str) {
    for id in cluster.ids() {
        assert!(
            cluster.is_running(id),
            "node {id} died\n{}",
            cluster.diagnostics()
        );
    }
    cluster.wait_for_leader();
    cluster.must_put(1, key, b"still serving");
    for id in cluster.ids() {
        cluster.assert_get(id, key, Some(b"still serving"));
    }
    assert_no_panic(cluster);
}

#[test]
fn garbage_truncated_and_oversized_frames_on_the_raft_port_leave_the_cluster_serving() {
    let mut cluster = Cluster::start3();
    let leader = cluster.wait_for_leader();
    let mut garbage = Garbage(0x0bad_f00d);
    // A partial frame whose sender never finishes, held open while the others are sent.
    let mut stalled = TcpStream::connect(cluster.raft_addr(leader)).expect("connect");
    stalled
        .write_all(&[0, 0, 1, 0, 1, 2, 3])
        .expect("send a partial frame");

    for id in cluster.ids() {
        let addr = cluster.raft_addr(id);
        let mut payloads: Vec<(&str, Vec<u8>)> = vec![
            (
                "an oversized length prefix",
                vec![0xff, 0xff, 0xff, 0xff, 1, 2, 3, 4],
            ),
            ("a length just over the limit", {
                let mut frame = ((80u32 << 20) + 1).to_be_bytes().to_vec();
                frame.extend(garbage.bytes(64));
                frame
            }),
            ("a truncated frame", {
                let mut frame = 1000u32.to_be_bytes().to_vec();
                frame.extend(garbage.bytes(10));
                frame
            }),
            ("an undecodable body", {
                let mut frame = 16u32.to_be_bytes().to_vec();
                frame.extend(garbage.bytes(16));
                frame
            }),
            ("a zero-length frame", vec![0, 0, 0, 0]),
            ("a truncated length prefix", vec![0, 0]),
            (
                "an HTTP request",
                b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            ),
        ];
        for round in 0..20 {
            payloads.push(("random bytes", garbage.bytes(1 + round * 200)));
        }
        for (what, bytes) in &payloads {
            let answer = send_raw(addr, bytes);
            assert!(
                answer.is_empty(),
                "node {id} answered {what} with {} bytes",
                answer.len()
            );
        }
        for _ in 0..50 {
            drop(TcpStream::connect(addr).expect("connect and hang up"));
        }
    }
    assert_cluster_serves(&mut cluster, "after-raft-garbage");
    drop(stalled);
    assert_cluster_serves(&mut cluster, "after-stalled-frame");
}

/// The status line of a raw HTTP answer, e.g. `HTTP/1.1 400 Bad Request`; empty if the node
/// closed the connection without answering.
fn status_line(answer: &[u8]) -> String {
    common::lossy(answer)
        .lines()
        .next()
        .unwrap_or("")
        .to_string()
}

/// The status code of a raw HTTP answer; `None` if the node closed without answering.
fn status_code(answer: &[u8]) -> Option<u16> {
    status_line(answer).split_whitespace().nth(1)?.parse().ok()
}

#[test]
fn malformed_and_oversized_http_requests_get_4xx_answers_and_the_node_keeps_serving() {
    let mut cluster = Cluster::start(1);
    cluster.wait_for_leader();
    let addr = cluster.http_addr(1);
    let mut garbage = Garbage(0x4711);
    let huge_header = format!(
        "GET /v1/status HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(2 << 20)
    );
    let many_headers = format!(
        "GET /v1/status HTTP/1.1\r\nHost: x\r\n{}\r\n",
        (0..5000)
            .map(|i| format!("X-H{i}: v\r\n"))
            .collect::<String>()
    );
    let requests: Vec<(&str, Vec<u8>)> = vec![
        ("a garbage request line", b"GARBAGE\r\n\r\n".to_vec()),
        ("a bad method token", b"G@T /v1/status HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        ("a bad version", b"GET /v1/status HTTP/9.9\r\nHost: x\r\n\r\n".to_vec()),
        ("an HTTP/2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec()),
        ("raw non-UTF-8 bytes in the path", b"GET /v1/kv/\xff\xfe HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        ("a header without a colon", b"GET /v1/status HTTP/1.1\r\nHost x\r\n\r\n".to_vec()),
        ("a negative content length", b"PUT /v1/kv/neg HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n".to_vec()),
        ("two content lengths", b"PUT /v1/kv/two HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab".to_vec()),
        ("a huge header", huge_header.into_bytes()),
        ("thousands of headers", many_headers.into_bytes()),
        ("random bytes", garbage.bytes(4096)),
    ];
    for (what, bytes) in &requests {
        let answer = send_raw(addr, bytes);
        let code = status_code(&answer);
        assert!(
            code.is_none_or(|c| (400..500).contains(&c)),
            "{what}: expected a 4xx answer or a closed connection, got {:?}",
            status_line(&answer)
        );
    }

    // A body announced far over the limit is refused once the limit is passed, without waiting
    // for the rest.
    let mut announced =
        b"PUT /v1/kv/huge HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000000\r\n\r\n".to_vec();
    announced.extend(vec![b'x'; 2 << 20]);
    let answer = exchange(addr, &announced, false);
    assert_eq!(
        status_code(&answer),
        Some(413),
        "{}",
        common::lossy(&answer)
    );
    // So is a chunked body that grows over the limit.
    let mut chunked =
        b"PUT /v1/kv/chunked HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..40 {
        chunked.extend(format!("{:x}\r\n", 64 << 10).as_bytes());
        chunked.extend(vec![b'x'; 64 << 10]);
        chunked.extend(b"\r\n");
    }
    chunked.extend(b"0\r\n\r\n");
    assert_eq!(status_code(&send_raw(addr, &chunked)), Some(413));
    // A body cut short is never stored.
    let truncated = send_raw(
        addr,
        b"PUT /v1/kv/truncated HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nonly ten b",
    );
    assert!(
        status_code(&truncated).is_none_or(|c| (400..500).contains(&c)),
        "{}",
        status_line(&truncated)
    );

    let base = format!("http://{addr}");
    for key in ["huge", "chunked", "truncated", "neg", "two"] {
        let answer = http("GET", &format!("{base}/v1/kv/{key}"), b"");
        assert_eq!(answer.status, 404, "{key} was stored: {}", answer.text());
    }

    // Malformed percent-encoding is taken literally, never a server error, and round-trips.
    for path in ["%ZZ", "%", "a%2", "%C3%28", "%00%FF", "%25%", "a/%2F/b"] {
        let url = format!("{base}/v1/kv/{path}");
        let put = http("PUT", &url, path.as_bytes());
        assert_eq!(put.status, 204, "PUT {path}: {}", put.text());
        let got = http("GET", &url, b"");
        assert_eq!(got.status, 200, "GET {path}: {}", got.text());
        assert_eq!(got.body, path.as_bytes(), "GET {path}");
    }
    for query in [
        "prev_value=%G1",
        "prev_value=%",
        "prev_exist=%FF",
        "%=x",
        "prev_value=a&prev_value=b",
    ] {
        let answer = http("PUT", &format!("{base}/v1/kv/q?{query}"), b"v");
        assert!(
            answer.status < 500,
            "PUT ?{query}: {} {}",
            answer.status,
            answer.text()
        );
    }

    assert!(cluster.is_running(1), "{}", cluster.diagnostics());
    assert_eq!(http("GET", &format!("{base}/v1/status"), b"").status, 200);
    assert_cluster_serves(&mut cluster, "after-http-garbage");
}

/// The current revision, every pair and every lease, as node `id` reads them: what a refused
/// request must leave as it was.
fn api_state(cluster: &Cluster, id: usize) -> (i64, Vec<(String, String)>, Vec<i64>) {
    let base = format!("http://{}", cluster.http_addr(id));
    let scan = http("GET", &format!("{base}/v1/kv/?prefix="), b"");
    assert_eq!(scan.status, 200, "scan: {}", scan.text());
    let page: ScanAnswer = serde_json::from_slice(&scan.body).expect("a scan page");
    assert!(page.next.is_none(), "more than one page");
    let leases = http("GET", &format!("{base}/v1/leases"), b"");
    assert_eq!(leases.status, 200, "leases: {}", leases.text());
    let leases: LeaseLeasesResponse = serde_json::from_slice(&leases.body).expect("leases");
    (
        page.revision,
        page.items.into_iter().map(|i| (i.key, i.value)).collect(),
        leases.leases.into_iter().map(|l| l.id).collect(),
    )
}

#[test]
fn malformed_api_requests_are_refused_with_4xx_and_change_nothing() {
    const MAX_REQUEST_BYTES: usize = 1 << 20;
    let mut cluster =
        Cluster::start_with_args(3, &["--max-request-bytes", &MAX_REQUEST_BYTES.to_string()]);
    cluster.wait_for_leader();
    let base = format!("http://{}", cluster.http_addr(1));
    for (key, value) in [("a", "1"), ("b", "2"), ("a", "3")] {
        assert_eq!(
            http("PUT", &format!("{base}/v1/kv/{key}"), value.as_bytes()).status,
            204
        );
    }
    let lease = http(
        "POST",
        &format!("{base}/v1/leases"),
        br#"{"ttl":600,"id":7}"#,
    );
    assert_eq!(lease.status, 200, "{}", lease.text());
    let before = api_state(&cluster, 1);

    let many_ops = format!(
        r#"{{"success":[{}]}}"#,
        vec![r#"{"range":{"key":"a"}}"#; 10_000].join(",")
    );
    let requests: Vec<(&str, &str, Vec<u8>, u16, &str)> = vec![
        ("PUT", "/v1/kv/c?lease=12345", b"v".to_vec(), 404, "lease"),
        ("POST", "/v1/leases", br#"{"ttl":0}"#.to_vec(), 400, "TTL"),
        (
            "POST",
            "/v1/leases",
            br#"{"ttl":1000000000000}"#.to_vec(),
            400,
            "TTL",
        ),
        (
            "POST",
            "/v1/leases",
            br#"{"ttl":60,"id":-4}"#.to_vec(),
            400,
            "negative",
        ),
        (
            "POST",
            "/v1/leases",
            br#"{"ttl":60,"id":7}"#.to_vec(),
            409,
            "7",
        ),
        ("POST", "/v1/txn", many_ops.into_bytes(), 400, "128"),
        (
            "GET",
            "/v1/watch/a?start_revision=-1",
            Vec::new(),
            400,
            "negative",
        ),
        (
            "GET",
            "/v1/watch/a?filters=no_get",
            Vec::new(),
            400,
            "no_get",
        ),
        (
            "POST",
            "/v1/range",
            br#"{"key":"b","range_end":"a"}"#.to_vec(),
            400,
            "range_end",
        ),
        (
            "POST",
            "/v1/range",
            br#"{"key":"a","revision":-1}"#.to_vec(),
            400,
            "negative",
        ),
        ("GET", "/v1/kv/a?revision=-3", Vec::new(), 400, "negative"),
        (
            "GET",
            "/v1/kv/a?revision=1000000",
            Vec::new(),
            400,
            "revision",
        ),
        (
            "POST",
            "/v1/compact",
            br#"{"revision":1000000}"#.to_vec(),
            400,
            "revision",
        ),
        (
            "POST",
            "/v1/compact",
            br#"{"revision":-1}"#.to_vec(),
            400,
            "above 0",
        ),
        ("POST", "/v1/txn", b"{".to_vec(), 400, "invalid body"),
        ("POST", "/v1/txn", b"".to_vec(), 400, "invalid body"),
        (
            "POST",
            "/v1/txn",
            br#"{"compares":[]}"#.to_vec(),
            400,
            "compares",
        ),
        (
            "POST",
            "/v1/txn",
            br#"{"compare":[{"key":"a","target":{"bogus":1},"result":"equal"}]}"#.to_vec(),
            400,
            "invalid body",
        ),
        (
            "POST",
            "/v1/txn",
            br#"{"success":[{"put":{"key":"a","value":"x"}},{"delete_range":{"key":"a"}}]}"#
                .to_vec(),
            400,
            "duplicate key",
        ),
        (
            "POST",
            "/v1/range",
            b"not json".to_vec(),
            400,
            "invalid body",
        ),
        (
            "POST",
            "/v1/leases",
            br#"{"ttl":"#.to_vec(),
            400,
            "invalid body",
        ),
        (
            "POST",
            "/v1/compact",
            br#"{"revision":"5"}"#.to_vec(),
            400,
            "invalid body",
        ),
        ("DELETE", "/v1/leases/abc", Vec::new(), 400, "lease id"),
        (
            "POST",
            "/v1/leases/-7/keep-alive",
            Vec::new(),
            400,
            "lease id",
        ),
    ];
    for (method, path, body, status, names) in &requests {
        let what = format!("{method} {path} ({} bytes)", body.len());
        let answer = http(method, &format!("{base}{path}"), body);
        assert_eq!(answer.status, *status, "{what}: {}", answer.text());
        let error: ErrorBody = serde_json::from_slice(&answer.body)
            .unwrap_or_else(|e| panic!("{what}: not an error body ({e}): {}", answer.text()));
        assert!(error.error.contains(names), "{what}: {}", error.error);
        assert_eq!(api_state(&cluster, 1), before, "{what} changed the store");
    }

    // A compare over the request limit is refused as its body streams in (read raw: the node
    // answers without reading the rest).
    let huge_compare = format!(
        r#"{{"compare":[{{"key":"a","target":{{"value":"{}"}},"result":"equal"}}]}}"#,
        "x".repeat(MAX_REQUEST_BYTES + 1)
    );
    let mut request = format!(
        "POST /v1/txn HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n",
        huge_compare.len()
    )
    .into_bytes();
    request.extend(huge_compare.as_bytes());
    let answer = exchange(cluster.http_addr(1), &request, false);
    assert_eq!(
        status_code(&answer),
        Some(413),
        "{}",
        common::lossy(&answer)
    );

    for id in cluster.ids() {
        assert_eq!(api_state(&cluster, id), before, "node {id}");
    }
    assert_cluster_serves(&mut cluster, "after-bad-api-requests");
}

// ---------------------------------------------------------------------------
// Damaged data directories
// ---------------------------------------------------------------------------

/// Every file under `dir` with its contents, except those a refused start may legitimately
/// touch: ondisk's own log and RocksDB's info logs and lock files.
fn snapshot_files(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut files = BTreeMap::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in fs::read_dir(&dir).expect("read a data directory") {
            let path = entry.expect("a directory entry").path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if path.is_dir() {
                pending.push(path);
            } else if !(name == "ondisk.log" || name == "LOCK" || name.starts_with("LOG")) {
                files.insert(path.clone(), fs::read(&path).expect("read a data file"));
            }
        }
    }
    files
}

/// The first file in `dir` whose name passes `pick`.
fn find_file(dir: &Path, pick: impl Fn(&str) -> bool) -> Option<PathBuf> {
    let mut paths: Vec<PathBuf> = fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(&pick))
        .collect();
    paths.sort();
    paths.into_iter().next()
}

/// How a file is damaged.
#[derive(Debug, Clone, Copy)]
enum Damage {
    /// Cut to half its length.
    Truncate,
    /// Every byte of its middle half flipped.
    Garble,
    /// Emptied.
    Empty,
}

fn damage(path: &Path, how: Damage) {
    let mut bytes = fs::read(path).expect("read the file to damage");
    let len = bytes.len();
    match how {
        Damage::Truncate => bytes.truncate(len / 2),
        Damage::Garble => bytes[len / 4..len * 3 / 4]
            .iter_mut()
            .for_each(|b| *b ^= 0x5a),
        Damage::Empty => bytes.clear(),
    }
    fs::write(path, bytes).expect("write the damaged file");
}

/// Writes values to a one-node cluster, stops it with SIGKILL, damages one RocksDB file, and
/// starts the node again. It must either refuse, with one `error:` line, exit status 1 and the
/// damaged database unchanged, or come up with every acknowledged value. Never a panic.
fn start_after_damage(database: &str, file: fn(&str) -> bool, how: Damage) {
    let mut cluster = Cluster::start(1);
    cluster.wait_for_leader();
    let values: Vec<(String, String)> = (0..50)
        .map(|i| {
            (
                format!("key{i}"),
                format!("value {i} {}", "v".repeat(i * 10)),
            )
        })
        .collect();
    for (key, value) in &values {
        cluster.must_put(1, key, value);
    }
    cluster.kill(1);
    let node_dir = cluster.data_dir().join("node1");
    let target = find_file(&node_dir.join(database), file).unwrap_or_else(|| {
        panic!(
            "no such file in {database}: {:?}",
            fs::read_dir(node_dir.join(database)).map(|d| d.count())
        )
    });
    damage(&target, how);
    // Only the damaged database must stay as it is: the other one is healthy, and RocksDB may
    // legitimately replay its write-ahead log into new files while opening it.
    let damaged_db = node_dir.join(database);
    let before = snapshot_files(&damaged_db);
    let what = format!("{how:?} {}", target.display());

    let mut node = Node::launch(cluster.spec(1));
    let started = common::poll_until(common::STARTUP_TIMEOUT, || {
        if !node.is_running() {
            return Some(false);
        }
        node.stdout_lines()
            .iter()
            .any(|l| l.starts_with(b"node address:"))
            .then_some(true)
    })
    .unwrap_or_else(|| {
        panic!(
            "{what}: the node neither started nor exited\n{}",
            node.diagnostics()
        )
    });
    if started {
        node.wait_ready(common::STARTUP_TIMEOUT)
            .unwrap_or_else(|f| panic!("{what}: {}", f.diagnostics));
        for (key, value) in &values {
            let got = common::poll_until(Duration::from_secs(30), || node.get(key).ok());
            assert_eq!(
                got.flatten().as_deref(),
                Some(value.as_bytes()),
                "{what}: the node started but lost {key}\n{}",
                node.diagnostics()
            );
        }
        eprintln!("{what}: RocksDB recovered and every acknowledged value is there");
    } else {
        node.wait_pipes_closed(Duration::from_secs(5));
        let exited = common::Exited {
            status: node.wait_exit(common::EXIT_TIMEOUT),
            stdout: node.stdout_lines(),
            stderr: node.stderr_lines(),
        };
        let line = exited.expect_single_error_line();
        assert!(!line.contains("panicked"), "{what}: {line}");
        let after = snapshot_files(&damaged_db);
        let changed: Vec<&PathBuf> = before
            .keys()
            .chain(after.keys())
            .filter(|p| before.get(*p) != after.get(*p))
            .collect();
        assert!(
            changed.is_empty(),
            "{what}: the refused start changed files: {changed:#?}"
        );
        eprintln!("{what}: refused with {line:?}");
    }
    let log = node.log_contents();
    assert!(
        !log.contains("panicked"),
        "{what}: panic in the log:\n{log}"
    );
}

fn current(name: &str) -> bool {
    name == "CURRENT"
}

fn manifest(name: &str) -> bool {
    name.starts_with("MANIFEST-")
}

fn wal(name: &str) -> bool {
    name.ends_with(".log")
}

#[test]
fn an_emptied_current_file_is_refused_or_survived() {
    start_after_damage("state", current, Damage::Empty);
    start_after_damage("raft-log", current, Damage::Empty);
}

#[test]
fn a_garbled_or_truncated_manifest_is_refused_or_survived() {
    start_after_damage("state", manifest, Damage::Garble);
    start_after_damage("raft-log", manifest, Damage::Truncate);
}

#[test]
fn a_garbled_or_truncated_write_ahead_log_is_refused_or_survived() {
    start_after_damage("raft-log", wal, Damage::Garble);
    start_after_damage("raft-log", wal, Damage::Truncate);
    start_after_damage("state", wal, Damage::Garble);
}

#[test]
fn a_data_directory_from_another_cluster_is_refused_and_left_untouched() {
    let mut cluster = Cluster::start(1);
    cluster.wait_for_leader();
    cluster.must_put(1, "mine", b"1");
    cluster.kill(1);
    let node_dir = cluster.data_dir().join("node1");
    let before = snapshot_files(&node_dir);
    let mut spec = cluster.spec(1).clone();
    spec.cluster = vec![common::free_addr()];
    let exited = common::run_to_exit(spec.args(), common::EXIT_TIMEOUT);
    let line = exited.expect_single_error_line();
    assert!(line.contains("belongs to"), "{line}");
    assert!(
        snapshot_files(&node_dir) == before,
        "files changed in {}",
        node_dir.display()
    );
    cluster.restart(1);
    cluster.assert_get(1, "mine", Some(b"1"));
}

// ---------------------------------------------------------------------------
// A full disk
// ---------------------------------------------------------------------------

/// A size-limited tmpfs mounted on a temporary directory.
struct SmallDisk {
    // Field order is drop order: unmounted before its mount point is removed.
    tmpfs: Tmpfs,
    _dir: tempfile::TempDir,
}

impl SmallDisk {
    /// `Err` (with the reason) when this machine does not let us mount (not root).
    fn mount(size: &str) -> Result<SmallDisk, String> {
        let dir = tempfile::Builder::new()
            .prefix("ondisk-small-disk-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let tmpfs = Tmpfs::mount(dir.path(), size)?;
        Ok(SmallDisk { tmpfs, _dir: dir })
    }

    fn path(&self) -> &Path {
        self.tmpfs.path()
    }

    /// Fills the remaining space with a ballast file.
    fn fill(&self) -> PathBuf {
        let ballast = self.path().join("ballast");
        let mut file = fs::File::create(&ballast).expect("create the ballast file");
        let chunk = vec![0xaau8; 64 << 10];
        while file.write_all(&chunk).is_ok() {}
        while file.write_all(&chunk[..512]).is_ok() {}
        ballast
    }
}

/// A one-node cluster on a [`SmallDisk`] that was written to until the disk filled up.
struct FullNode {
    // Field order is drop order: the process dies before its disk is unmounted.
    node: Node,
    spec: NodeSpec,
    agent: ureq::Agent,
    ballast: PathBuf,
    /// Every write that was acknowledged, in order.
    acknowledged: Vec<(String, Vec<u8>)>,
    /// The first refused write's status and body.
    refusal: String,
    _disk: SmallDisk,
}

impl FullNode {
    /// Starts the node on a 64 MiB tmpfs, fills the disk, and writes until a write is refused;
    /// `None` when no tmpfs can be mounted here.
    fn start() -> Option<FullNode> {
        let disk = match SmallDisk::mount("64m") {
            Ok(disk) => disk,
            Err(why) => {
                eprintln!("SKIPPED: cannot mount a small tmpfs here ({why}); see docs/TESTING.md");
                return None;
            }
        };
        let spec = NodeSpec {
            id: 1,
            cluster: vec![common::free_addr()],
            http: common::free_addr(),
            data_dir: disk.path().join("data"),
            extra_args: vec![OsString::from("--no-repl")],
        };
        let mut full = FullNode {
            node: Node::launch(&spec),
            spec,
            agent: common::http::agent(Duration::from_secs(10)),
            ballast: PathBuf::new(),
            acknowledged: Vec::new(),
            refusal: String::new(),
            _disk: disk,
        };
        let up = common::poll_until(common::STARTUP_TIMEOUT, || {
            full.put("first", b"1").ok().filter(|a| a.status == 204)
        });
        assert!(
            up.is_some(),
            "the node never accepted a write\n{}",
            full.node.diagnostics()
        );
        full.acknowledged.push(("first".into(), b"1".to_vec()));

        full.ballast = full._disk.fill();
        let value = vec![b'z'; 256 << 10];
        let deadline = Instant::now() + Duration::from_secs(60);
        for i in 0.. {
            let key = format!("full{i}");
            match full.put(&key, &value) {
                Ok(a) if a.status == 204 => full.acknowledged.push((key, value.clone())),
                Ok(a) => {
                    full.refusal = format!("{} {}", a.status, a.text());
                    break;
                }
                Err(e) => panic!(
                    "a write on a full disk got no answer: {e}\n{}",
                    full.node.diagnostics()
                ),
            }
            assert!(
                Instant::now() < deadline,
                "writes kept succeeding on a full disk"
            );
        }
        eprintln!(
            "on a full disk: {} after {} acknowledged writes",
            full.refusal,
            full.acknowledged.len()
        );
        Some(full)
    }

    fn url(&self, key: &str) -> String {
        format!("http://{}/v1/kv/{key}", self.spec.http)
    }

    fn put(&self, key: &str, value: &[u8]) -> Result<common::http::Answer, ureq::Error> {
        common::http::request(&self.agent, "PUT", &self.url(key), value)
    }

    /// Gives the space back.
    fn free_space(&self) {
        fs::remove_file(&self.ballast).expect("remove the ballast");
    }

    /// Polls until a write succeeds; whether one did within 30 s.
    fn accepts_writes_again(&mut self) -> bool {
        let ok = common::poll_until(Duration::from_secs(30), || {
            self.put("after", b"space returned")
                .ok()
                .filter(|a| a.status == 204)
        });
        if ok.is_some() {
            self.acknowledged
                .push(("after".into(), b"space returned".to_vec()));
        }
        ok.is_some()
    }

    /// Asserts every acknowledged value reads back (polling while the node starts up).
    fn assert_nothing_lost(&self, when: &str) {
        for (key, value) in &self.acknowledged {
            let got = common::poll_until(common::STARTUP_TIMEOUT, || {
                common::http::request(&self.agent, "GET", &self.url(key), b"")
                    .ok()
                    .filter(|a| a.status == 200)
            });
            assert_eq!(
                got.map(|a| a.body).as_ref(),
                Some(value),
                "{key} lost {when}\n{}",
                self.node.diagnostics()
            );
        }
        assert!(
            !self.node.log_contents().contains("panicked"),
            "{}",
            self.node.diagnostics()
        );
    }
}

#[test]
fn a_full_disk_fails_writes_clearly_and_loses_nothing_acknowledged() {
    let Some(mut full) = FullNode::start() else {
        return;
    };
    assert!(
        full.refusal.starts_with("507") && full.refusal.contains("the disk is full"),
        "the refusal should be a 507 that names the cause: {}",
        full.refusal
    );
    assert!(
        full.node.is_running(),
        "the node died on a full disk\n{}",
        full.node.diagnostics()
    );
    full.free_space();
    full.node.kill();
    full.node = Node::launch(&full.spec);
    assert!(
        full.accepts_writes_again(),
        "no write after a restart with space\n{}",
        full.node.diagnostics()
    );
    full.assert_nothing_lost("after the disk was full and the node restarted");
}

/// The issue asks that a node recovers once space returns, without a restart.
#[test]
fn a_node_recovers_from_a_full_disk_without_a_restart() {
    let Some(mut full) = FullNode::start() else {
        return;
    };
    full.free_space();
    assert!(
        full.accepts_writes_again(),
        "writes did not recover within 30 s of space returning\n{}",
        full.node.diagnostics()
    );
    full.assert_nothing_lost("after the disk was full");
}

// ---------------------------------------------------------------------------
// Storage failing under a running node
// ---------------------------------------------------------------------------

/// openraft stops its core for good on any storage error. The node must then say why and exit
/// with a failure status, for a supervisor to restart it, instead of staying up answering that it
/// is shutting down. The error here: the snapshot directory replaced by a file, so the next
/// snapshot cannot be written.
#[test]
fn a_node_whose_raft_core_stops_on_a_storage_error_exits_with_a_failure_status() {
    let mut cluster = Cluster::start(1);
    cluster.wait_for_leader();
    cluster.must_put(1, "before", b"1");
    let snapshots = cluster.data_dir().join("node1").join("snapshots");
    fs::remove_dir_all(&snapshots).expect("remove the snapshot directory");
    fs::write(&snapshots, b"not a directory").expect("put a file in its place");

    cluster.node(1).send("snapshot");
    let Some(status) = cluster.node(1).wait_exit_opt(common::EXIT_TIMEOUT) else {
        panic!(
            "the node still runs after failing to write a snapshot\n{}",
            cluster.diagnostics()
        );
    };
    let node = cluster.node(1);
    node.wait_pipes_closed(Duration::from_secs(5));
    assert_eq!(
        status.code(),
        Some(1),
        "a node whose raft core stopped exits with status 1\n{}",
        node.diagnostics()
    );
    let stderr: Vec<String> = node
        .stderr_lines()
        .iter()
        .map(|l| common::lossy(l))
        .collect();
    assert!(
        stderr
            .iter()
            .any(|l| l.starts_with("error: the raft core stopped: ")
                && l.ends_with("; exiting so that a supervisor can restart the node")),
        "the node should say on stderr why it exits: {stderr:#?}\n{}",
        node.diagnostics()
    );
    assert!(
        node.log_contents()
            .contains("shutting down (the raft core stopped: "),
        "the node should log why it exits\n{}",
        node.diagnostics()
    );
    assert_no_panic(&mut cluster);

    // What a supervisor does next: with the directory usable again, the node serves its data.
    fs::remove_file(&snapshots).expect("remove the file in the way");
    cluster.restart(1);
    cluster.wait_for_leader();
    cluster.assert_get(1, "before", Some(b"1"));
}

/// The `grpc-status` a node answers to one gRPC call of `method` carrying `message` (the bytes
/// after the 5-byte length prefix, which `announced_len` may misstate), sent with curl over
/// HTTP/2 as any gRPC client sends it. `curl -i` prints the headers, where an error's status is
/// ("trailers-only"), and the trailers.
fn grpc_status(addr: SocketAddr, method: &str, message: &[u8], announced_len: u32) -> String {
    let mut body = vec![0u8];
    body.extend_from_slice(&announced_len.to_be_bytes());
    body.extend_from_slice(message);
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("body");
    fs::write(&path, &body).expect("write the request body");
    let output = std::process::Command::new("curl")
        .args(["-sS", "-i", "--http2-prior-knowledge", "--max-time", "10"])
        .args(["-H", "content-type: application/grpc", "-H", "te: trailers"])
        .arg("--data-binary")
        .arg(format!("@{}", path.display()))
        .arg(format!("http://{addr}/{method}"))
        .output()
        .expect("run curl");
    let answer = String::from_utf8_lossy(&output.stdout).to_string();
    // A success's status is in the trailers, printed right after the binary message.
    answer
        .split("grpc-status: ")
        .nth(1)
        .map(|rest| rest.chars().take_while(char::is_ascii_digit).collect())
        .unwrap_or_else(|| {
            panic!(
                "no grpc-status in the answer to {method} ({}): {answer}{}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            )
        })
}

/// What a gRPC client (tonic's, as etcd's Rust client uses) gets for a call of `path` with an
/// empty RangeRequest. Not curl: a node answers a method it does not serve without reading the
/// request, and ends the stream with RST_STREAM(NO_ERROR), as HTTP/2 allows, which the curl
/// here sometimes reports as a framing error while still sending the body.
fn unserved_call(addr: SocketAddr, path: &'static str) -> tonic::Status {
    use ondisk::api::etcdpb::etcdserverpb::{RangeRequest, RangeResponse};
    common::native::runtime().block_on(async {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .expect("an endpoint")
            .connect()
            .await
            .expect("connect to the client port");
        let mut client = tonic::client::Grpc::new(channel);
        client.ready().await.expect("a ready channel");
        let codec = tonic_prost::ProstCodec::<RangeRequest, RangeResponse>::default();
        let route = tonic::codegen::http::uri::PathAndQuery::from_static(path);
        let request = tonic::Request::new(RangeRequest::default());
        match client.unary(request, route, codec).await {
            Ok(answer) => panic!("{path} answered {answer:?}"),
            Err(status) => status,
        }
    })
}

#[test]
fn malformed_grpc_messages_get_grpc_errors_and_change_nothing() {
    let mut cluster = Cluster::start(1);
    cluster.wait_for_leader();
    let addr = cluster.http_addr(1);
    let before = api_state(&cluster, 1);
    let put = "etcdserverpb.KV/Put";
    let garbage = Garbage(0x6772).bytes(64);
    // INTERNAL (13) for a message that does not decode, as grpc-go answers.
    assert_eq!(grpc_status(addr, put, &[0xff; 10], 10), "13");
    assert_eq!(grpc_status(addr, put, &garbage, 64), "13");
    // OUT_OF_RANGE (11) for a message announcing 100 MiB, refused from its prefix alone.
    assert_eq!(grpc_status(addr, put, b"short", 100 << 20), "11");
    // INVALID_ARGUMENT (3) for a put without a key, with etcd's message.
    assert_eq!(grpc_status(addr, put, b"", 0), "3");
    // UNIMPLEMENTED for a method or a service that does not exist.
    for path in ["/etcdserverpb.KV/Nope", "/etcdserverpb.Nope/Range"] {
        assert_eq!(unserved_call(addr, path).code(), tonic::Code::Unimplemented);
    }
    assert_eq!(
        api_state(&cluster, 1),
        before,
        "a refused call changed the store"
    );

    // Unknown fields are skipped, as protobuf requires: key "k", value "v", field 99 = 1.
    let with_unknown_field = [0x0a, 1, b'k', 0x12, 1, b'v', 0x98, 0x06, 0x01];
    assert_eq!(grpc_status(addr, put, &with_unknown_field, 9), "0");
    let got = http("GET", &format!("http://{addr}/v1/kv/k"), b"");
    assert_eq!(got.body, b"v", "{}", got.text());
    assert_cluster_serves(&mut cluster, "after-grpc-garbage");
}
