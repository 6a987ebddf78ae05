//! etcd's JSON gateway (`POST /v3/...`) on a 3-node cluster of real `ondisk` processes, driven
//! over HTTP as curl and etcd's gateway documentation drive it.
//!
//! The expected answers are the ones etcd 3.4's own gateway gives for the same requests: keys and
//! values in base64, 64-bit integers as strings, fields named as in etcd's .proto files, zero
//! values left out, refusals as `{"error", "message", "code"}` with grpc-gateway's HTTP status,
//! and one `{"result": ...}` line per message of a stream. The tests compare whole answers
//! where they are stable and the fields that matter where they are not (ids, revisions of other
//! writes).
//!
//! Every wait polls with a deadline; every stream is read by a thread that ends with its
//! connection.

mod common;

use std::io::BufRead;
use std::io::BufReader;
use std::io::Write;
use std::net::TcpStream;
use std::sync::mpsc;
use std::sync::mpsc::Receiver;
use std::thread;
use std::time::Duration;

use serde_json::json;
use serde_json::Value;

use common::http::agent;
use common::http::Answer;
use common::http::REQUEST_TIMEOUT;
use common::Cluster;

/// How long a write may take to reach a watch on another member. Generous: other tests share
/// the CPUs.
const SETTLE: Duration = Duration::from_secs(30);

/// `POST base/v3/path` with `body`, with `token` in the `Authorization` header when given.
fn post(base: &str, path: &str, body: &Value, token: Option<&str>) -> Answer {
    post_raw(
        &format!("{base}/v3/{path}"),
        body.to_string().as_bytes(),
        token,
    )
}

fn post_raw(url: &str, body: &[u8], token: Option<&str>) -> Answer {
    let mut builder = ureq::http::Request::builder().method("POST").uri(url);
    if let Some(token) = token {
        builder = builder.header("Authorization", token);
    }
    let sent = builder.body(body.to_vec()).expect("valid request");
    let mut response = agent(REQUEST_TIMEOUT)
        .run(sent)
        .unwrap_or_else(|e| panic!("POST {url} failed: {e}"));
    Answer {
        status: response.status().as_u16(),
        headers: response.headers().clone(),
        body: response.body_mut().read_to_vec().expect("read the answer"),
    }
}

/// `post` that must succeed; returns the answer's JSON.
fn ok(base: &str, path: &str, body: Value) -> Value {
    let answer = post(base, path, &body, None);
    assert_eq!(answer.status, 200, "/v3/{path} {body}: {}", answer.text());
    answer.json()
}

fn b64(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(text)
}

/// A 3-node cluster started with `extra_args`, once it has a leader, and each member's base URL
/// (`http://HOST:PORT`, member `i` at index `i - 1`).
fn cluster(extra_args: &[&str]) -> (Cluster, Vec<String>) {
    let mut cluster = Cluster::start_with_args(3, extra_args);
    cluster.wait_for_leader();
    let bases = (1..=3)
        .map(|id| format!("http://{}", cluster.http_addr(id)))
        .collect();
    (cluster, bases)
}

/// The revision an answer's header carries (a string, as etcd's gateway writes 64-bit numbers).
fn revision(answer: &Value) -> i64 {
    answer["header"]["revision"]
        .as_str()
        .and_then(|revision| revision.parse().ok())
        .unwrap_or_else(|| panic!("no revision in {answer}"))
}

/// The answer without its header (the member, term and cluster id differ between members).
fn without_header(mut answer: Value) -> Value {
    if let Some(fields) = answer.as_object_mut() {
        fields.remove("header");
    }
    answer
}

/// The lines of a streaming answer, read by a thread as they arrive.
struct Lines {
    lines: Receiver<Value>,
}

impl Lines {
    /// Posts `body` to the streaming route `path` and reads its answer line by line.
    fn open(base: &str, path: &str, body: &str) -> Lines {
        let stream_agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(REQUEST_TIMEOUT))
            .timeout_recv_response(Some(REQUEST_TIMEOUT))
            .max_idle_connections(0)
            .build()
            .into();
        let response = stream_agent
            .post(format!("{base}/v3/{path}"))
            .send(body.as_bytes())
            .unwrap_or_else(|e| panic!("POST /v3/{path} failed: {e}"));
        assert_eq!(response.status().as_u16(), 200, "/v3/{path}");
        let reader = BufReader::new(response.into_body().into_reader());
        Lines::reading(reader.lines().map_while(Result::ok))
    }

    /// `lines`, each parsed as JSON, read by a thread until they end or no one listens.
    fn reading(lines: impl Iterator<Item = String> + Send + 'static) -> Lines {
        let (sender, receiver) = mpsc::channel();
        thread::spawn(move || {
            for line in lines {
                let parsed = serde_json::from_str(&line)
                    .unwrap_or_else(|e| json!({"unparsable": line, "why": e.to_string()}));
                if sender.send(parsed).is_err() {
                    return;
                }
            }
        });
        Lines { lines: receiver }
    }

    fn next(&self) -> Value {
        self.lines
            .recv_timeout(SETTLE)
            .unwrap_or_else(|e| panic!("no line within {SETTLE:?}: {e}"))
    }
}

#[test]
fn keys_written_and_read_through_the_gateway_answer_as_etcds_gateway_does() {
    let (_cluster, bases) = cluster(&[]);
    let (one, two) = (&bases[0], &bases[1]);

    let put = ok(
        one,
        "kv/put",
        json!({"key": b64("foo"), "value": b64("bar")}),
    );
    let first = revision(&put);
    let header = &put["header"];
    assert_eq!(header["member_id"], "1", "{put}");
    assert!(header["cluster_id"].is_string() && header["raft_term"].is_string());

    let replaced = ok(
        one,
        "kv/put",
        json!({"key": b64("foo"), "value": b64("baz"), "prev_kv": true}),
    );
    assert_eq!(
        without_header(replaced),
        json!({"prev_kv": {"key": b64("foo"), "create_revision": first.to_string(),
            "mod_revision": first.to_string(), "version": "1", "value": b64("bar")}})
    );

    // Read on another member, linearizably: the second write is there.
    let second = (first + 1).to_string();
    let range = ok(two, "kv/range", json!({"key": b64("foo")}));
    assert_eq!(range["header"]["member_id"], "2");
    assert_eq!(
        without_header(range),
        json!({"kvs": [{"key": b64("foo"), "create_revision": first.to_string(),
            "mod_revision": second, "version": "2", "value": b64("baz")}], "count": "1"})
    );
    // etcd's JSON names are accepted as well as the .proto's; unknown fields are skipped; an
    // integer may come as a number or a string.
    let keys_only = ok(
        two,
        "kv/range",
        json!({"key": b64("foo"), "keysOnly": true, "bogus": 1, "revision": first}),
    );
    assert_eq!(
        without_header(keys_only),
        json!({"kvs": [{"key": b64("foo"), "create_revision": first.to_string(),
            "mod_revision": first.to_string(), "version": "1"}], "count": "1"})
    );
    let absent = ok(two, "kv/range", json!({"key": b64("none")}));
    assert_eq!(without_header(absent), json!({}));

    let txn = ok(
        one,
        "kv/txn",
        json!({"compare": [{"key": b64("foo"), "target": "VALUE", "result": "EQUAL",
                "value": b64("baz")}],
               "success": [{"request_put": {"key": b64("other"), "value": b64("x")}}],
               "failure": [{"request_range": {"key": b64("foo")}}]}),
    );
    assert_eq!(txn["succeeded"], true, "{txn}");
    assert!(txn["responses"][0]["response_put"].is_object(), "{txn}");

    let deleted = ok(
        one,
        "kv/deleterange",
        json!({"key": b64("foo"), "prev_kv": true}),
    );
    assert_eq!(deleted["deleted"], "1", "{deleted}");
    assert_eq!(deleted["prev_kvs"][0]["value"], b64("baz"), "{deleted}");

    let grant = ok(one, "lease/grant", json!({"TTL": 30}));
    let lease = grant["ID"]
        .as_str()
        .expect("lease id as a string")
        .to_string();
    assert_eq!(grant["TTL"], "30", "{grant}");
    ok(
        one,
        "kv/put",
        json!({"key": b64("leased"), "value": b64("v"), "lease": lease}),
    );
    let alive = ok(two, "lease/timetolive", json!({"ID": lease, "keys": true}));
    assert_eq!(alive["keys"], json!([b64("leased")]), "{alive}");
    assert_eq!(alive["grantedTTL"], "30", "{alive}");
    let leases = ok(two, "kv/lease/leases", json!({}));
    assert_eq!(leases["leases"], json!([{"ID": lease}]), "{leases}");
    let kept = Lines::open(one, "lease/keepalive", &format!("{{\"ID\": \"{lease}\"}}"));
    let kept = kept.next();
    assert_eq!(kept["result"]["ID"], lease, "{kept}");
    assert_eq!(kept["result"]["TTL"], "30", "{kept}");
    ok(one, "lease/revoke", json!({"ID": lease}));
    let gone = post(one, "lease/revoke", &json!({"ID": lease}), None);
    assert_eq!(gone.status, 404, "{}", gone.text());
    assert_eq!(
        gone.json(),
        json!({"error": "etcdserver: requested lease not found",
               "message": "etcdserver: requested lease not found", "code": 5})
    );

    let members = ok(two, "cluster/member/list", json!({}));
    let ids: Vec<&Value> = members["members"]
        .as_array()
        .expect("members")
        .iter()
        .map(|member| &member["ID"])
        .collect();
    assert_eq!(ids, [&json!("1"), &json!("2"), &json!("3")], "{members}");
    let status = ok(two, "maintenance/status", json!({}));
    assert_eq!(status["version"], "3.4.0", "{status}");
    assert!(status["leader"].is_string() && status["raftIndex"].is_string());

    // The 3.4 prefix answers too.
    let beta = post_raw(
        &format!("{two}/v3beta/kv/range"),
        json!({"key": b64("other")}).to_string().as_bytes(),
        None,
    );
    assert_eq!(beta.status, 200, "{}", beta.text());
    assert_eq!(beta.json()["kvs"][0]["value"], b64("x"));
}

#[test]
fn a_watch_streams_history_and_the_writes_made_through_another_member() {
    let (_cluster, bases) = cluster(&[]);
    let (one, three) = (&bases[0], &bases[2]);

    let put = ok(
        one,
        "kv/put",
        json!({"key": b64("app/a"), "value": b64("1")}),
    );
    let first = revision(&put);
    // Two watches on one stream, both created from the one body: the whole prefix from the
    // first write on, and deletes only (`NOPUT`).
    let body = format!(
        "{{\"create_request\": {{\"key\": \"{}\", \"range_end\": \"{}\", \"start_revision\": \"{first}\"}}}}\n\
         {{\"create_request\": {{\"key\": \"{}\", \"range_end\": \"{}\", \"filters\": [\"NOPUT\"], \"prev_kv\": true}}}}",
        b64("app/"),
        b64("app0"),
        b64("app/"),
        b64("app0"),
    );
    let watch = Lines::open(three, "watch", &body);
    let mut created = Vec::new();
    let mut events: Vec<(String, Value)> = Vec::new();
    let read = |created: &mut Vec<String>, events: &mut Vec<(String, Value)>| {
        let line = watch.next();
        let result = &line["result"];
        assert!(result.is_object(), "not a result: {line}");
        // etcd leaves a zero out: the first watch's id is 0.
        let id = result["watch_id"].as_str().unwrap_or("0").to_string();
        if result["created"] == true {
            created.push(id.clone());
        }
        for event in result["events"].as_array().into_iter().flatten() {
            events.push((id.clone(), event.clone()));
        }
    };
    // Both watches exist before the writes, so the one from "now" sees them.
    while created.len() < 2 {
        read(&mut created, &mut events);
    }
    ok(
        one,
        "kv/put",
        json!({"key": b64("app/b"), "value": b64("2")}),
    );
    ok(one, "kv/deleterange", json!({"key": b64("app/a")}));
    while events.len() < 4 {
        read(&mut created, &mut events);
    }
    assert_eq!(created.len(), 2, "{created:?}");
    let of = |watch: &str| -> Vec<(Value, Value, Value)> {
        events
            .iter()
            .filter(|(id, _)| id == watch)
            .map(|(_, e)| {
                (
                    e["type"].clone(),
                    e["kv"]["key"].clone(),
                    e["prev_kv"]["value"].clone(),
                )
            })
            .collect()
    };
    let (everything, deletes) = (&created[0], &created[1]);
    assert_eq!(
        of(everything),
        [
            (Value::Null, json!(b64("app/a")), Value::Null),
            (Value::Null, json!(b64("app/b")), Value::Null),
            (json!("DELETE"), json!(b64("app/a")), Value::Null),
        ],
        "{events:?}"
    );
    assert_eq!(
        of(deletes),
        [(json!("DELETE"), json!(b64("app/a")), json!(b64("1")))],
        "{events:?}"
    );
}

/// A request body kept open, written a message at a time as HTTP/1.1 chunks over a plain
/// socket (the HTTP clients at hand send a whole body before they read the answer), with the
/// answer's JSON lines read by a thread.
struct OpenBody {
    socket: TcpStream,
    lines: Lines,
}

impl OpenBody {
    fn post(base: &str, path: &str) -> OpenBody {
        let address = base.trim_start_matches("http://");
        let mut socket = TcpStream::connect(address).expect("connect to the client port");
        write!(
            socket,
            "POST /v3/{path} HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        .expect("send the request head");
        let answer = BufReader::new(socket.try_clone().expect("clone the socket"));
        // The status line comes first, as `{"status": ...}`; the answer's headers, its chunk
        // sizes and blank lines are skipped, and each JSON line is one chunk of the answer.
        let lines =
            answer
                .lines()
                .map_while(Result::ok)
                .enumerate()
                .filter_map(|(number, line)| match number {
                    0 => Some(json!({ "status": line }).to_string()),
                    _ => line.starts_with('{').then_some(line),
                });
        OpenBody {
            socket,
            lines: Lines::reading(lines),
        }
    }

    fn send(&mut self, message: &Value) {
        let text = message.to_string();
        write!(self.socket, "{:x}\r\n{text}\r\n", text.len()).expect("send a message");
    }

    fn next(&self) -> Value {
        self.lines.next()
    }
}

#[test]
fn a_watch_answers_each_request_of_a_body_still_being_sent() {
    let (_cluster, bases) = cluster(&[]);
    let (one, two) = (&bases[0], &bases[1]);
    let mut watch = OpenBody::post(two, "watch");
    for (key, id) in [("stream/a", "0"), ("stream/b", "1")] {
        // Created before the body ends, and sent the write made through another member.
        watch.send(&json!({"create_request": {"key": b64(key)}}));
        if id == "0" {
            // The answer starts once the first request has arrived.
            assert_eq!(watch.next()["status"], "HTTP/1.1 200 OK");
        }
        let created = watch.next();
        assert_eq!(created["result"]["created"], true, "{created}");
        ok(one, "kv/put", json!({"key": b64(key), "value": b64("1")}));
        let event = watch.next();
        assert_eq!(
            event["result"]["watch_id"].as_str().unwrap_or("0"),
            id,
            "{event}"
        );
        assert_eq!(
            event["result"]["events"][0]["kv"]["key"],
            b64(key),
            "{event}"
        );
    }
    // The body ends; the watches go on.
    watch.socket.write_all(b"0\r\n\r\n").expect("end the body");
    ok(
        one,
        "kv/put",
        json!({"key": b64("stream/a"), "value": b64("2")}),
    );
    let event = watch.next();
    assert_eq!(
        event["result"]["events"][0]["kv"]["value"],
        b64("2"),
        "{event}"
    );
}

/// `-max-request-bytes` of the refusals test: small, so that bodies over it stay small.
const MAX_REQUEST_BYTES: usize = 64 << 10;
/// What the gateway reads of a body at most: the JSON of `-max-request-bytes` and gRPC's framing
/// allowance of 512 KiB, base64 making bytes a third larger.
const BODY_LIMIT: usize = (MAX_REQUEST_BYTES + (512 << 10)) * 4 / 3;

#[test]
fn refusals_are_etcds_gateway_errors_and_tokens_go_in_the_authorization_header() {
    let limit = MAX_REQUEST_BYTES.to_string();
    let (_cluster, bases) = cluster(&["-max-request-bytes", &limit]);
    let base = &bases[0];

    let malformed = post_raw(&format!("{base}/v3/kv/range"), b"{bad", None);
    assert_eq!(malformed.status, 400, "{}", malformed.text());
    assert_eq!(malformed.json()["code"], 3, "{}", malformed.text());
    let no_key = post_raw(&format!("{base}/v3/kv/range"), b"", None);
    assert_eq!(
        (no_key.status, no_key.json()),
        (
            400,
            json!({"error": "etcdserver: key is not provided",
                   "message": "etcdserver: key is not provided", "code": 3})
        )
    );
    let future = post(
        base,
        "kv/range",
        &json!({"key": b64("k"), "revision": 99}),
        None,
    );
    assert_eq!(future.status, 400, "{}", future.text());
    assert_eq!(future.json()["code"], 11);
    // Over the limit, as the node judges the message, and as a body the gateway stops reading.
    let big_value = "x".repeat(MAX_REQUEST_BYTES + 1);
    let big_put = json!({"key": b64("k"), "value": b64(&big_value)});
    let huge_body = vec![b' '; BODY_LIMIT + 1];
    for too_large in [
        post(base, "kv/put", &big_put, None),
        post_raw(&format!("{base}/v3/kv/put"), &huge_body, None),
    ] {
        assert_eq!(too_large.status, 400, "{}", too_large.text());
        assert_eq!(
            too_large.json()["error"],
            "etcdserver: request is too large"
        );
    }
    let unrouted = post(base, "kv/nothing", &json!({}), None);
    assert_eq!(
        (unrouted.status, unrouted.text()),
        (404, "Not Found\n".to_string()),
        "as etcd's gateway answers"
    );
    // Paths under /v3/ are still keys of the raftexample API for every method but POST.
    let as_key = common::http::http("PUT", &format!("{base}/v3/kv/range"), b"a key");
    assert!(as_key.status < 300, "{}", as_key.text());
    let read_back = common::http::http("GET", &format!("{base}/v3/kv/range"), b"");
    assert_eq!(read_back.text(), "a key");

    let not_enabled = post(
        base,
        "auth/authenticate",
        &json!({"name": "root", "password": "pw"}),
        None,
    );
    assert_eq!(not_enabled.status, 412, "{}", not_enabled.text());
    ok(
        base,
        "auth/user/add",
        json!({"name": "root", "password": "pw"}),
    );
    ok(base, "auth/role/add", json!({"name": "root"}));
    ok(
        base,
        "auth/user/grant",
        json!({"user": "root", "role": "root"}),
    );
    ok(base, "auth/enable", json!({}));
    let login = ok(
        base,
        "auth/authenticate",
        json!({"name": "root", "password": "pw"}),
    );
    let token = login["token"].as_str().expect("a token").to_string();
    let anonymous = post(
        base,
        "kv/put",
        &json!({"key": b64("k"), "value": b64("v")}),
        None,
    );
    assert!(
        (400..500).contains(&anonymous.status),
        "{}: {}",
        anonymous.status,
        anonymous.text()
    );
    let signed = post(
        base,
        "kv/put",
        &json!({"key": b64("k"), "value": b64("v")}),
        Some(&token),
    );
    assert_eq!(signed.status, 200, "{}", signed.text());
    let forged = post(base, "kv/range", &json!({"key": b64("k")}), Some("forged"));
    assert_eq!(forged.status, 401, "{}", forged.text());
}
