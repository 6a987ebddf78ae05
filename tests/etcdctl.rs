//! etcd's own command-line client, the real `etcdctl` 3.4 (`ETCDCTL_API=3`), against 3-node
//! clusters of real `ondisk` processes, pointed at their HTTP (client) ports where ondisk serves
//! etcd's v3 gRPC API.
//!
//! etcdctl is a client no one here wrote: it proves the API is etcd's for the programs people
//! already run, not only for our own reading of the protobuf files. The tests check what
//! etcdctl PRINTS (its simple output byte for byte where it is stable, its `-w json` output
//! parsed otherwise), not just its exit status, because etcdctl turns many server mistakes (an
//! absent field, a wrong header, a wrong error string) into wrong output rather than a failure.
//! Covered: put/get/del in their variants, transactions read from stdin, watches served by
//! other nodes than the one written to, leases, compaction, membership with a real joining node,
//! endpoint status/health/hashkv, leader transfer, defragmentation, snapshot save restored with
//! `ondisk restore`, and the lock and election recipes (client-side in etcdctl 3.4: sessions,
//! transactions, sorted ranges and watches).
//!
//! Each test starts its own cluster on fresh ports; every etcdctl process is owned by a guard
//! that kills and reaps it, whatever happens; every wait polls with a deadline.

mod common;

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fs;
use std::io::Read;
use std::io::Write;
use std::path::Path;
use std::process::Child;
use std::process::Command;
use std::process::ExitStatus;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::MutexGuard;
use std::thread;
use std::thread::JoinHandle;
use std::time::Duration;
use std::time::Instant;

use base64::Engine;
use serde_json::Value;

use common::poll_until;
use common::Cluster;
use common::Node;
use common::NodeSpec;
use common::BIN;

/// The client under test (Debian's etcd-client package; `make test` installs it).
const ETCDCTL: &str = "etcdctl";
/// etcdctl's own limit on a short command, above the nodes' 2 s request timeout so that the
/// node's answer is what a test sees (etcdctl's default, 5 s, is tight on a loaded machine).
const COMMAND_TIMEOUT_FLAG: &str = "--command-timeout=20s";
/// etcdctl's limit on connecting (default 2 s), raised for loaded machines.
const DIAL_TIMEOUT_FLAG: &str = "--dial-timeout=10s";
/// The longest one etcdctl run may take before the test kills it and fails.
const RUN_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a change may take to show everywhere (a follower applying, a watch delivering, a
/// member joining). Generous: other tests share the CPUs.
const SETTLE: Duration = Duration::from_secs(45);

// ---------------------------------------------------------------------------
// Running etcdctl
// ---------------------------------------------------------------------------

/// Locks a mutex even if a reader thread panicked: the output it guards stays meaningful.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Copies everything `pipe` yields into `into`, on its own thread, so a child never blocks on a
/// full pipe and a test can look at the output so far while the child runs.
fn capture(mut pipe: impl Read + Send + 'static, into: Arc<Mutex<Vec<u8>>>) -> JoinHandle<()> {
    thread::spawn(move || {
        let mut buf = [0u8; 8192];
        loop {
            match pipe.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => lock(&into).extend_from_slice(&buf[..n]),
            }
        }
    })
}

/// One etcdctl process. Owning it is what guarantees cleanup: dropping it (also while a failed
/// test unwinds) kills the process and reaps it, so no etcdctl outlives its test.
struct Etcdctl {
    /// The command line, for messages.
    what: String,
    child: Child,
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    /// The output readers and the stdin writer; joined once the process has exited.
    threads: Vec<JoinHandle<()>>,
    status: Option<ExitStatus>,
}

impl Etcdctl {
    /// Starts `etcdctl --endpoints=ENDPOINTS ARGS` with `ETCDCTL_API=3`, feeding `stdin` (then
    /// closing it) if given. Global flags go before `ARGS`, so `ARGS` may end with `-- cmd ...`.
    fn spawn(endpoints: &str, args: &[&str], stdin: Option<Vec<u8>>) -> Etcdctl {
        let what = format!("etcdctl --endpoints={endpoints} {}", args.join(" "));
        let mut child = Command::new(ETCDCTL)
            .env("ETCDCTL_API", "3")
            // The flags below decide; an operator's environment must not add to them.
            .env_remove("ETCDCTL_ENDPOINTS")
            .env_remove("ETCDCTL_WRITE_OUT")
            .env_remove("ETCDCTL_COMMAND_TIMEOUT")
            .env_remove("ETCDCTL_DIAL_TIMEOUT")
            .arg(format!("--endpoints={endpoints}"))
            .arg(COMMAND_TIMEOUT_FLAG)
            .arg(DIAL_TIMEOUT_FLAG)
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run `{what}` ({e}); `make test` installs etcdctl (Debian's etcd-client)")
            });
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let mut threads = vec![
            capture(child.stdout.take().expect("piped stdout"), stdout.clone()),
            capture(child.stderr.take().expect("piped stderr"), stderr.clone()),
        ];
        if let Some(bytes) = stdin {
            let mut pipe = child.stdin.take().expect("piped stdin");
            // A thread, because a large input fills the pipe before etcdctl reads it.
            threads.push(thread::spawn(move || {
                let _ = pipe.write_all(&bytes);
            }));
        }
        Etcdctl {
            what,
            child,
            stdout,
            stderr,
            threads,
            status: None,
        }
    }

    /// Everything printed on stdout so far.
    fn stdout(&self) -> String {
        String::from_utf8_lossy(&lock(&self.stdout)).into_owned()
    }

    /// Everything printed on stderr so far.
    fn stderr(&self) -> String {
        String::from_utf8_lossy(&lock(&self.stderr)).into_owned()
    }

    /// The complete stdout lines so far (a line still being written is left out).
    fn stdout_lines(&self) -> Vec<String> {
        let out = self.stdout();
        match out.rfind('\n') {
            Some(end) => out[..end].split('\n').map(str::to_string).collect(),
            None => Vec::new(),
        }
    }

    /// The exit status if the process has exited (without blocking).
    fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            if let Ok(Some(status)) = self.child.try_wait() {
                self.status = Some(status);
            }
        }
        self.status
    }

    /// Waits for the output threads, once the process is gone, so its output is complete.
    fn join_threads(&mut self) {
        for handle in self.threads.drain(..) {
            let _ = handle.join();
        }
    }

    /// The process, its status and its whole output so far, for failure messages.
    fn describe(&self) -> String {
        format!(
            "`{}` (status {:?})\n  stdout: {:?}\n  stderr: {:?}",
            self.what,
            self.status,
            self.stdout(),
            self.stderr()
        )
    }

    /// Waits until the process exits and its output is complete; kills it and fails the test
    /// after `timeout`.
    fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        match poll_until(timeout, || self.try_status()) {
            Some(status) => {
                self.join_threads();
                status
            }
            None => {
                self.kill();
                panic!(
                    "still running after {timeout:?}, killed: {}",
                    self.describe()
                )
            }
        }
    }

    /// Polls `probe` over the stdout lines until it answers; fails the test (with the output)
    /// after `timeout`, or as soon as the process exits without the probe answering.
    fn wait_for<T>(
        &mut self,
        timeout: Duration,
        what: &str,
        mut probe: impl FnMut(&[String]) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            let exited = self.try_status().is_some();
            if exited {
                self.join_threads();
            }
            if let Some(found) = probe(&self.stdout_lines()) {
                return found;
            }
            if exited {
                panic!("exited before {what}: {}", self.describe());
            }
            if Instant::now() >= deadline {
                panic!(
                    "timed out after {timeout:?} waiting until {what}: {}",
                    self.describe()
                );
            }
            thread::sleep(common::POLL_INTERVAL);
        }
    }

    /// Sends a signal by name (`INT`, ...) with the `kill` command. The process has not been
    /// reaped while `try_status` says it runs, so its pid cannot belong to anyone else.
    fn signal(&mut self, name: &str) {
        if self.try_status().is_none() {
            let sent = Command::new("kill")
                .arg(format!("-{name}"))
                .arg(self.child.id().to_string())
                .status()
                .expect("run the kill command");
            assert!(
                sent.success(),
                "kill -{name} failed for {}",
                self.describe()
            );
        }
    }

    /// SIGKILLs the process (if it still runs) and reaps it.
    fn kill(&mut self) {
        if self.try_status().is_none() {
            let _ = self.child.kill();
            if let Ok(status) = self.child.wait() {
                self.status = Some(status);
            }
        }
    }

    /// Waits for the process to end (see [`Etcdctl::wait_exit`]) and returns what it did.
    fn finish(mut self) -> Ran {
        let status = self.wait_exit(RUN_TIMEOUT);
        Ran {
            what: self.what.clone(),
            status,
            stdout: self.stdout(),
            stderr: self.stderr(),
        }
    }
}

impl Drop for Etcdctl {
    /// Never leave an etcdctl behind, whatever happened in the test. Output threads are not
    /// joined here: a grandchild (a lock's command) could still hold the pipes for a moment.
    fn drop(&mut self) {
        self.kill();
    }
}

/// A finished etcdctl run.
struct Ran {
    what: String,
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Ran {
    /// Asserts success and returns stdout.
    fn ok(self) -> String {
        assert!(
            self.status.success(),
            "`{}` failed ({})\n  stdout: {:?}\n  stderr: {:?}",
            self.what,
            self.status,
            self.stdout,
            self.stderr
        );
        self.stdout
    }

    /// Asserts success and parses stdout as one JSON document (`-w json`).
    fn json(self) -> Value {
        let what = self.what.clone();
        let stdout = self.ok();
        serde_json::from_str(&stdout)
            .unwrap_or_else(|e| panic!("`{what}` did not print JSON ({e}): {stdout:?}"))
    }

    /// Asserts a failure whose stderr contains `reason` (etcd's error string, which etcdctl
    /// prints as `Error: REASON`), and returns stderr.
    fn fails(self, reason: &str) -> String {
        assert!(
            !self.status.success() && self.stderr.contains(reason),
            "`{}` should fail with {reason:?}, but: status {}\n  stdout: {:?}\n  stderr: {:?}",
            self.what,
            self.status,
            self.stdout,
            self.stderr
        );
        self.stderr
    }
}

/// Runs `etcdctl --endpoints=ENDPOINTS ARGS` to completion (bounded by [`RUN_TIMEOUT`]).
fn etcdctl(endpoints: &str, args: &[&str]) -> Ran {
    Etcdctl::spawn(endpoints, args, None).finish()
}

/// [`etcdctl`] with `stdin` fed to the process (a transaction, a value).
fn etcdctl_in(endpoints: &str, args: &[&str], stdin: &[u8]) -> Ran {
    Etcdctl::spawn(endpoints, args, Some(stdin.to_vec())).finish()
}

/// Starts a long-running etcdctl (watch, lock, elect) and hands it back to the test.
fn background(endpoints: &str, args: &[&str]) -> Etcdctl {
    Etcdctl::spawn(endpoints, args, None)
}

// ---------------------------------------------------------------------------
// Endpoints and etcdctl's JSON
// ---------------------------------------------------------------------------

/// Node `id`'s client endpoint as etcdctl takes it: its HTTP address, where gRPC is served too.
fn ep(c: &Cluster, id: usize) -> String {
    c.http_addr(id).to_string()
}

/// Several nodes' endpoints, comma-separated, as `--endpoints` takes them.
fn eps(c: &Cluster, ids: &[usize]) -> String {
    ids.iter()
        .map(|&id| ep(c, id))
        .collect::<Vec<_>>()
        .join(",")
}

/// A signed number from etcdctl's JSON. etcd's Go JSON omits zero values, so absent is 0.
fn num(v: &Value) -> i64 {
    v.as_i64().unwrap_or(0)
}

/// An unsigned number (ids) from etcdctl's JSON; absent is 0, as for [`num`].
fn unum(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

/// A key or value from etcdctl's JSON, where bytes are base64; absent (an empty value) is "".
fn text(v: &Value) -> String {
    let Some(encoded) = v.as_str() else {
        return String::new();
    };
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .unwrap_or_else(|e| panic!("{encoded:?} is not base64 ({e})"));
    String::from_utf8_lossy(&bytes).into_owned()
}

/// The (key, value) pairs of a range answer's `kvs`, in the order given.
fn pairs(doc: &Value) -> Vec<(String, String)> {
    doc["kvs"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|kv| (text(&kv["key"]), text(&kv["value"])))
        .collect()
}

/// The keys of a range answer's `kvs`, in the order given.
fn keys(doc: &Value) -> Vec<String> {
    pairs(doc).into_iter().map(|(k, _)| k).collect()
}

/// Owned (key, value) pairs from string literals, for comparisons with [`pairs`].
fn kv(expected: &[(&str, &str)]) -> Vec<(String, String)> {
    expected
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Puts through `endpoint` and returns the revision the put created (its header's), so tests
/// name exact revisions instead of assuming where ondisk's revisions start.
fn put_rev(endpoint: &str, key: &str, value: &str) -> i64 {
    let doc = etcdctl(endpoint, &["put", key, value, "-w", "json"]).json();
    num(&doc["header"]["revision"])
}

/// Deletes through `endpoint` and returns the revision of the deletion.
fn del_rev(endpoint: &str, key: &str) -> i64 {
    let doc = etcdctl(endpoint, &["del", key, "-w", "json"]).json();
    assert_eq!(num(&doc["deleted"]), 1, "del {key}: {doc}");
    num(&doc["header"]["revision"])
}

/// `get PREFIX --prefix -w json` through `endpoint`: how many keys it counts.
fn count_prefix(endpoint: &str, prefix: &str) -> i64 {
    let doc = etcdctl(endpoint, &["get", prefix, "--prefix", "-w", "json"]).json();
    num(&doc["count"])
}

/// One watch event as `etcdctl watch -w json` prints it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Event {
    kind: &'static str,
    key: String,
    value: String,
    /// The event's revision (its kv's mod_revision, for a delete too).
    revision: i64,
    /// The previous value, present only in a `--prev-kv` watch and when there was one.
    prev: Option<String>,
}

impl Event {
    fn new(kind: &'static str, key: &str, value: &str, revision: i64, prev: Option<&str>) -> Self {
        Event {
            kind,
            key: key.into(),
            value: value.into(),
            revision,
            prev: prev.map(String::from),
        }
    }
}

/// Every event in the JSON lines a watch printed so far (one line per watch response). A
/// canceled response fails the test: none of these watches should end.
fn events(lines: &[String]) -> Vec<Event> {
    let mut found = Vec::new();
    for line in lines.iter().filter(|l| !l.trim().is_empty()) {
        let doc: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("a watch printed a line that is not JSON ({e}): {line:?}"));
        assert!(
            doc["Canceled"] != Value::Bool(true),
            "the watch was canceled: {line}"
        );
        for ev in doc["Events"].as_array().into_iter().flatten() {
            found.push(Event {
                kind: if num(&ev["type"]) == 1 {
                    "DELETE"
                } else {
                    "PUT"
                },
                key: text(&ev["kv"]["key"]),
                value: text(&ev["kv"]["value"]),
                revision: num(&ev["kv"]["mod_revision"]),
                prev: ev.get("prev_kv").map(|p| text(&p["value"])),
            });
        }
    }
    found
}

/// A member as `member list -w json` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Member {
    learner: bool,
    peer_urls: Vec<String>,
    client_urls: Vec<String>,
}

/// `member list -w json` through `endpoint`, by id; `None` if etcdctl failed (a node still
/// starting, say), for polling.
fn members(endpoint: &str) -> Option<BTreeMap<u64, Member>> {
    let ran = etcdctl(endpoint, &["member", "list", "-w", "json"]);
    if !ran.status.success() {
        return None;
    }
    let doc: Value = serde_json::from_str(&ran.stdout).ok()?;
    let urls = |v: &Value| -> Vec<String> {
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|u| u.as_str().map(String::from))
            .collect()
    };
    Some(
        doc["members"]
            .as_array()?
            .iter()
            .map(|m| {
                (
                    unum(&m["ID"]),
                    Member {
                        learner: m["isLearner"] == Value::Bool(true),
                        peer_urls: urls(&m["peerURLs"]),
                        client_urls: urls(&m["clientURLs"]),
                    },
                )
            })
            .collect(),
    )
}

/// The host:port of a URL as etcd lists them (`http://127.0.0.1:2380`).
fn host_port(url: &str) -> &str {
    url.strip_prefix("http://")
        .unwrap_or(url)
        .trim_end_matches('/')
}

/// Polls until `member list` through each of `endpoints` shows exactly `expected` (id →
/// learner); fails with what was last seen.
fn wait_for_roles(endpoints: &[String], expected: &[(u64, bool)]) {
    let expected: BTreeMap<u64, bool> = expected.iter().copied().collect();
    let mut last = BTreeMap::new();
    let settled = poll_until(SETTLE, || {
        for endpoint in endpoints {
            let seen = members(endpoint).map(|m| {
                m.into_iter()
                    .map(|(id, member)| (id, member.learner))
                    .collect::<BTreeMap<_, _>>()
            });
            let matches = seen.as_ref() == Some(&expected);
            last.insert(endpoint.clone(), seen);
            if !matches {
                return None;
            }
        }
        Some(())
    });
    assert!(
        settled.is_some(),
        "members (id → learner) never became {expected:?} on {endpoints:?}; last seen: {last:?}"
    );
}

/// Runs a membership command until it is not refused for a passing reason: ondisk refuses a
/// change while another one runs (each node records its own addresses in the membership as it
/// starts), and a learner cannot be promoted before it has caught up. Such refusals change
/// nothing, so retrying them is what an operator would do. Returns stdout.
fn membership_command(endpoint: &str, args: &[&str]) -> String {
    const PASSING: [&str; 4] = ["busy", "try again", "too many requests", "in sync"];
    let mut last = None;
    let done = poll_until(SETTLE, || {
        let ran = etcdctl(endpoint, args);
        if ran.status.success() {
            return Some(ran.stdout);
        }
        let passing = PASSING.iter().any(|p| ran.stderr.contains(p));
        if !passing {
            panic!(
                "`{}` failed ({})\n  stdout: {:?}\n  stderr: {:?}",
                ran.what, ran.status, ran.stdout, ran.stderr
            );
        }
        last = Some(ran.stderr);
        None
    });
    done.unwrap_or_else(|| panic!("`etcdctl {args:?}` kept being refused; last: {last:?}"))
}

/// `endpoint status -w json` over `endpoints`: each endpoint with its `Status` object; `Err`
/// with etcdctl's stderr if it failed (for polling across a leader change).
fn try_statuses(endpoints: &str) -> Result<Vec<(String, Value)>, String> {
    let ran = etcdctl(endpoints, &["endpoint", "status", "-w", "json"]);
    if !ran.status.success() {
        return Err(ran.stderr);
    }
    let doc: Value =
        serde_json::from_str(&ran.stdout).map_err(|e| format!("{e}: {}", ran.stdout))?;
    Ok(doc
        .as_array()
        .ok_or_else(|| format!("not an array: {doc}"))?
        .iter()
        .map(|entry| {
            (
                entry["Endpoint"].as_str().unwrap_or_default().to_string(),
                entry["Status"].clone(),
            )
        })
        .collect())
}

/// [`try_statuses`], failing the test if etcdctl fails.
fn statuses(endpoints: &str) -> Vec<(String, Value)> {
    try_statuses(endpoints).unwrap_or_else(|e| panic!("endpoint status on {endpoints} failed: {e}"))
}

/// Polls until every endpoint's `endpoint status` names `leader` as the leader.
fn wait_until_all_report_leader(endpoints: &str, n: usize, leader: u64) {
    let mut last = Err(String::new());
    let agreed = poll_until(SETTLE, || {
        last = try_statuses(endpoints);
        let seen = last.as_ref().ok()?;
        (seen.len() == n && seen.iter().all(|(_, s)| unum(&s["leader"]) == leader)).then_some(())
    });
    assert!(
        agreed.is_some(),
        "not every endpoint reported leader {leader}; last: {last:?}"
    );
}

/// `endpoint hashkv` over all `n` endpoints once they answer at one revision, as (revision,
/// hashes): a hash is only comparable between members that applied the same writes, and a
/// follower applies a moment after the leader.
fn hashes_at_rest(endpoints: &str, n: usize) -> (i64, Vec<u64>) {
    let mut last = None;
    let found = poll_until(SETTLE, || {
        let doc = etcdctl(endpoints, &["endpoint", "hashkv", "-w", "json"]).json();
        let entries = doc.as_array()?.clone();
        let revisions: BTreeSet<i64> = entries
            .iter()
            .map(|e| num(&e["HashKV"]["header"]["revision"]))
            .collect();
        let hashes: Vec<u64> = entries.iter().map(|e| unum(&e["HashKV"]["hash"])).collect();
        last = Some(doc);
        if entries.len() != n || revisions.len() != 1 {
            return None;
        }
        Some((revisions.into_iter().next().unwrap_or_default(), hashes))
    });
    found.unwrap_or_else(|| {
        panic!("the members never answered hashkv at one revision; last: {last:?}")
    })
}

// ---------------------------------------------------------------------------
// Key-value commands
// ---------------------------------------------------------------------------

#[test]
fn put_get_del_and_txn_print_what_etcd_prints() {
    let mut c = Cluster::start(3);
    c.wait_for_leader();
    let (e1, e2, e3) = (ep(&c, 1), ep(&c, 2), ep(&c, 3));

    // Writes through every node. Values are chosen so that sorting by key, value, creation and
    // modification each give a different order.
    assert_eq!(etcdctl(&e1, &["put", "p/a", "2"]).ok(), "OK\n");
    let rev_b = put_rev(&e2, "p/b", "3");
    let rev_c = put_rev(&e3, "p/c", "1");
    assert_eq!(etcdctl(&e3, &["put", "q", "9"]).ok(), "OK\n");
    assert_eq!(
        etcdctl(&e1, &["put", "--prev-kv", "p/a", "2"]).ok(),
        "OK\np/a\n2\n",
        "put --prev-kv prints OK, then the previous key and value"
    );
    let head = num(&etcdctl(&e1, &["get", "p/a", "-w", "json"]).json()["header"]["revision"]);
    assert!(rev_b < rev_c && rev_c < head, "{rev_b} {rev_c} {head}");

    // Simple output: key, value, key, value...
    assert_eq!(etcdctl(&e2, &["get", "p/a"]).ok(), "p/a\n2\n");
    assert_eq!(
        etcdctl(&e2, &["get", "p/", "--prefix"]).ok(),
        "p/a\n2\np/b\n3\np/c\n1\n"
    );
    assert_eq!(etcdctl(&e2, &["get", "missing"]).ok(), "");

    // JSON, through node 3: the header names node 3 and the newest revision.
    let doc = etcdctl(&e3, &["get", "p/", "--prefix", "-w", "json"]).json();
    assert_eq!(unum(&doc["header"]["member_id"]), 3, "{doc}");
    assert_ne!(unum(&doc["header"]["cluster_id"]), 0, "{doc}");
    assert!(num(&doc["header"]["raft_term"]) >= 1, "{doc}");
    assert_eq!(num(&doc["header"]["revision"]), head, "{doc}");
    assert_eq!(pairs(&doc), kv(&[("p/a", "2"), ("p/b", "3"), ("p/c", "1")]));
    assert_eq!(num(&doc["count"]), 3, "{doc}");
    assert_ne!(doc["more"], Value::Bool(true), "{doc}");
    let a = &doc["kvs"][0];
    assert_eq!(num(&a["version"]), 2, "{a}");
    assert_eq!(num(&a["mod_revision"]), head, "{a}");
    assert!(num(&a["create_revision"]) < rev_b, "{a}");
    let b = &doc["kvs"][1];
    assert_eq!(
        (
            num(&b["create_revision"]),
            num(&b["mod_revision"]),
            num(&b["version"])
        ),
        (rev_b, rev_b, 1),
        "{b}"
    );

    // --limit: the first keys, `more`, and the count of all.
    let doc = etcdctl(
        &e2,
        &["get", "p/", "--prefix", "--limit", "2", "-w", "json"],
    )
    .json();
    assert_eq!(keys(&doc), ["p/a", "p/b"]);
    assert_eq!(doc["more"], Value::Bool(true), "{doc}");
    assert_eq!(num(&doc["count"]), 3, "{doc}");

    // --keys-only prints each key followed by an empty value line; JSON carries no values.
    let out = etcdctl(&e2, &["get", "p/", "--prefix", "--keys-only"]).ok();
    assert_eq!(out, "p/a\n\np/b\n\np/c\n\n");
    let doc = etcdctl(&e2, &["get", "p/", "--prefix", "--keys-only", "-w", "json"]).json();
    assert_eq!(keys(&doc), ["p/a", "p/b", "p/c"]);
    assert!(
        doc["kvs"]
            .as_array()
            .is_some_and(|kvs| kvs.iter().all(|kv| kv.get("value").is_none())),
        "keys-only answered values: {doc}"
    );
    assert_eq!(
        etcdctl(&e2, &["get", "p/", "--prefix", "--print-value-only"]).ok(),
        "2\n3\n1\n"
    );

    // Sorting by each target, both ways.
    for (target, order, expected) in [
        ("KEY", "DESCEND", ["p/c", "p/b", "p/a"]),
        ("VALUE", "DESCEND", ["p/b", "p/a", "p/c"]),
        ("VALUE", "ASCEND", ["p/c", "p/a", "p/b"]),
        ("CREATE", "ASCEND", ["p/a", "p/b", "p/c"]),
        ("CREATE", "DESCEND", ["p/c", "p/b", "p/a"]),
        ("MODIFY", "ASCEND", ["p/b", "p/c", "p/a"]),
        ("MODIFY", "DESCEND", ["p/a", "p/c", "p/b"]),
    ] {
        let sort = format!("--sort-by={target}");
        let order_flag = format!("--order={order}");
        let doc = etcdctl(
            &e3,
            &["get", "p/", "--prefix", &sort, &order_flag, "-w", "json"],
        )
        .json();
        assert_eq!(keys(&doc), expected, "sorted by {target} {order}");
    }
    // Sorted and limited: the limit applies to the sorted keys.
    let doc = etcdctl(
        &e3,
        &[
            "get",
            "p/",
            "--prefix",
            "--sort-by=VALUE",
            "--order=DESCEND",
            "--limit=1",
            "-w",
            "json",
        ],
    )
    .json();
    assert_eq!(keys(&doc), ["p/b"], "{doc}");

    // --rev reads the past; the header still carries the current revision, as etcd's does.
    let rev_b_flag = format!("--rev={rev_b}");
    let doc = etcdctl(&e2, &["get", "p/", "--prefix", &rev_b_flag, "-w", "json"]).json();
    assert_eq!(pairs(&doc), kv(&[("p/a", "2"), ("p/b", "3")]), "at {rev_b}");
    assert_eq!(num(&doc["header"]["revision"]), head, "{doc}");
    assert_eq!(num(&doc["kvs"][0]["version"]), 1, "p/a at {rev_b}: {doc}");
    let future = format!("--rev={}", head + 1000);
    etcdctl(&e2, &["get", "p/a", &future])
        .fails("etcdserver: mvcc: required revision is a future revision");

    // A serializable read answers from node 3's own state, which has served `head` above.
    let doc = etcdctl(
        &e3,
        &["get", "p/", "--prefix", "--consistency=s", "-w", "json"],
    )
    .json();
    assert_eq!(num(&doc["count"]), 3, "{doc}");
    assert!(num(&doc["header"]["revision"]) >= head, "{doc}");

    // --ignore-value keeps the value and makes a new version; on a missing key it is refused.
    assert_eq!(etcdctl(&e1, &["put", "--ignore-value", "p/c"]).ok(), "OK\n");
    let doc = etcdctl(&e2, &["get", "p/c", "-w", "json"]).json();
    assert_eq!(pairs(&doc), kv(&[("p/c", "1")]));
    assert_eq!(num(&doc["kvs"][0]["version"]), 2, "{doc}");
    etcdctl(&e1, &["put", "--ignore-value", "nokey"]).fails("etcdserver: key not found");

    // A value over the nodes' 1.5 MiB limit (read from stdin, as etcdctl allows) is refused
    // with etcd's message, and nothing is written.
    let big = vec![b'x'; 1_600_000];
    etcdctl_in(&e2, &["put", "big"], &big).fails("etcdserver: request is too large");
    assert_eq!(etcdctl(&e1, &["get", "big"]).ok(), "");

    // del prints how many keys it deleted, then the previous pairs when asked.
    assert_eq!(etcdctl(&e2, &["del", "p/a"]).ok(), "1\n");
    assert_eq!(etcdctl(&e2, &["del", "nothing"]).ok(), "0\n");
    assert_eq!(etcdctl(&e3, &["del", "--prev-kv", "q"]).ok(), "1\nq\n9\n");
    let doc = etcdctl(&e1, &["del", "p/", "--prefix", "--prev-kv", "-w", "json"]).json();
    assert_eq!(num(&doc["deleted"]), 2, "{doc}");
    let prev: Vec<(String, String)> = doc["prev_kvs"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|kv| (text(&kv["key"]), text(&kv["value"])))
        .collect();
    assert_eq!(prev, kv(&[("p/b", "3"), ("p/c", "1")]));
    let doc = etcdctl(&e3, &["get", "p/", "--prefix", "-w", "json"]).json();
    assert_eq!(num(&doc["count"]), 0, "{doc}");
    assert!(pairs(&doc).is_empty(), "{doc}");

    // Transactions in etcdctl's stdin form: compares, blank line, success ops, blank line,
    // failure ops, blank line.
    assert_eq!(etcdctl(&e1, &["put", "tk", "v"]).ok(), "OK\n");
    let success = "value(\"tk\") = \"v\"\nversion(\"tk\") = \"1\"\nmod(\"tk\") > \"0\"\n\n\
                   put ta 1\nput tb 2\n\nput tc 3\n\n";
    assert_eq!(
        etcdctl_in(&e2, &["txn"], success.as_bytes()).ok(),
        "SUCCESS\n\nOK\n\nOK\n"
    );
    assert_eq!(etcdctl(&e3, &["get", "ta"]).ok(), "ta\n1\n");
    assert_eq!(etcdctl(&e3, &["get", "tb"]).ok(), "tb\n2\n");
    assert_eq!(
        etcdctl(&e3, &["get", "tc"]).ok(),
        "",
        "the failure branch did not run"
    );
    let failure = "value(\"tk\") = \"x\"\n\nput ta 10\n\nput tc 3\nget tk\ndel tb\n\n";
    assert_eq!(
        etcdctl_in(&e3, &["txn"], failure.as_bytes()).ok(),
        "FAILURE\n\nOK\n\ntk\nv\n\n1\n"
    );
    assert_eq!(
        etcdctl(&e1, &["get", "ta"]).ok(),
        "ta\n1\n",
        "success branch skipped"
    );
    assert_eq!(etcdctl(&e1, &["get", "tc"]).ok(), "tc\n3\n");
    assert_eq!(etcdctl(&e1, &["get", "tb"]).ok(), "");
    let doc = etcdctl_in(
        &e2,
        &["txn", "-w", "json"],
        b"value(\"tk\") = \"nope\"\n\n\nget tk\n\n",
    )
    .json();
    assert_ne!(doc["succeeded"], Value::Bool(true), "{doc}");
    assert_eq!(
        pairs(&doc["responses"][0]["Response"]["ResponseRange"]),
        kv(&[("tk", "v")]),
        "{doc}"
    );
    etcdctl_in(&e2, &["txn"], b"\nput dk 1\nput dk 2\n\n\n")
        .fails("etcdserver: duplicate key given in txn request");

    // A range inside a transaction is sorted and limited like any other, after the
    // transaction's earlier operations: etcd's lock recipe finds the lock's holder this way (the
    // oldest key under the lock's prefix, in the transaction that queues the caller).
    for (key, value) in [("o/z", "1"), ("o/m", "2"), ("o/a", "3")] {
        assert_eq!(etcdctl(&e1, &["put", key, value]).ok(), "OK\n");
    }
    let doc = etcdctl_in(
        &e2,
        &["txn", "-w", "json"],
        b"\nput o/0 4\nget o/ --prefix --sort-by=CREATE --order=ASCEND --limit=1\n\n\n",
    )
    .json();
    let range = &doc["responses"][1]["Response"]["ResponseRange"];
    assert_eq!(keys(range), ["o/z"], "oldest key under o/: {doc}");
    assert_eq!(num(&range["count"]), 4, "{doc}");
    assert_eq!(range["more"], Value::Bool(true), "{doc}");
    let doc = etcdctl_in(
        &e3,
        &["txn", "-w", "json"],
        b"\nget o/ --prefix --sort-by=MODIFY --order=DESCEND --limit=2\n\n\n",
    )
    .json();
    let range = &doc["responses"][0]["Response"]["ResponseRange"];
    assert_eq!(keys(range), ["o/0", "o/a"], "newest keys under o/: {doc}");
}

// ---------------------------------------------------------------------------
// Watch
// ---------------------------------------------------------------------------

#[test]
fn watches_on_two_nodes_stream_the_puts_and_deletes_made_through_a_third() {
    let mut c = Cluster::start(3);
    c.wait_for_leader();
    let (e1, e2, e3) = (ep(&c, 1), ep(&c, 2), ep(&c, 3));

    let r_old = put_rev(&e1, "w/old", "0");
    assert_eq!(etcdctl(&e1, &["put", "other", "x"]).ok(), "OK\n");

    // Watch A, on node 2, starts in the past (--rev) with previous values (--prev-kv): it
    // replays w/old from the history before anything new is written.
    let rev_flag = format!("--rev={r_old}");
    let mut a = background(
        &e2,
        &[
            "watch",
            "w/",
            "--prefix",
            "--prev-kv",
            &rev_flag,
            "-w",
            "json",
        ],
    );
    a.wait_for(SETTLE, "watch A replays w/old", |lines| {
        events(lines).iter().any(|e| e.key == "w/old").then_some(())
    });

    // Watch B, on node 3, watches from now on. When it is in place is not observable from
    // outside, so w/sync is written (through node 1) until B reports it; what follows is then
    // certainly after B's start.
    let mut b = background(&e3, &["watch", "w/", "--prefix", "-w", "json"]);
    let mut syncs = 0;
    let synced = poll_until(SETTLE, || {
        if events(&b.stdout_lines()).iter().any(|e| e.key == "w/sync") {
            return Some(());
        }
        syncs += 1;
        put_rev(&e1, "w/sync", &syncs.to_string());
        None
    });
    assert!(
        synced.is_some(),
        "watch B never saw w/sync: {}",
        b.describe()
    );

    // The changes, all through node 1, with one outside the prefix.
    let r1 = put_rev(&e1, "w/a", "1");
    let r2 = put_rev(&e1, "w/a", "2");
    let r3 = put_rev(&e1, "w/b", "x");
    let r4 = del_rev(&e1, "w/a");
    assert_eq!(etcdctl(&e1, &["put", "other", "y"]).ok(), "OK\n");
    let r5 = put_rev(&e1, "w/z", "end");
    let with_prev = vec![
        Event::new("PUT", "w/a", "1", r1, None),
        Event::new("PUT", "w/a", "2", r2, Some("1")),
        Event::new("PUT", "w/b", "x", r3, None),
        Event::new("DELETE", "w/a", "", r4, Some("2")),
        Event::new("PUT", "w/z", "end", r5, None),
    ];
    let without_prev: Vec<Event> = with_prev
        .iter()
        .map(|e| Event {
            prev: None,
            ..e.clone()
        })
        .collect();

    let seen_a = a.wait_for(SETTLE, "watch A sees w/z", |lines| {
        let all = events(lines);
        all.iter().any(|e| e.key == "w/z").then_some(all)
    });
    let seen_b = b.wait_for(SETTLE, "watch B sees w/z", |lines| {
        let all = events(lines);
        all.iter().any(|e| e.key == "w/z").then_some(all)
    });
    for (name, seen) in [("A", &seen_a), ("B", &seen_b)] {
        assert!(
            seen.windows(2).all(|w| w[0].revision < w[1].revision),
            "watch {name}: revisions not increasing: {seen:#?}"
        );
        assert!(
            seen.iter().all(|e| e.key.starts_with("w/")),
            "watch {name} reported a key outside its prefix: {seen:#?}"
        );
    }
    let not_sync = |seen: &[Event]| -> Vec<Event> {
        seen.iter().filter(|e| e.key != "w/sync").cloned().collect()
    };
    let mut expected_a = vec![Event::new("PUT", "w/old", "0", r_old, None)];
    expected_a.extend(with_prev);
    assert_eq!(not_sync(&seen_a), expected_a, "watch A (--rev, --prev-kv)");
    assert_eq!(
        seen_a.iter().filter(|e| e.key == "w/sync").count(),
        syncs,
        "watch A saw every w/sync: {seen_a:#?}"
    );
    assert_eq!(
        not_sync(&seen_b),
        without_prev,
        "watch B (live, no prev-kv)"
    );
}

// ---------------------------------------------------------------------------
// Compaction
// ---------------------------------------------------------------------------

#[test]
fn compaction_makes_older_revisions_unreadable_by_get_and_watch() {
    let mut c = Cluster::start(3);
    c.wait_for_leader();
    let (e1, e2, e3) = (ep(&c, 1), ep(&c, 2), ep(&c, 3));

    let r1 = put_rev(&e1, "h", "v1");
    let r2 = put_rev(&e1, "h", "v2");
    let r3 = put_rev(&e2, "h", "v3");
    let r4 = put_rev(&e3, "g", "x");

    let at = |endpoint: &str, rev: i64| -> Ran {
        let flag = format!("--rev={rev}");
        etcdctl(endpoint, &["get", "h", &flag])
    };
    assert_eq!(at(&e2, r1).ok(), "h\nv1\n");
    assert_eq!(at(&e3, r2).ok(), "h\nv2\n");

    assert_eq!(
        etcdctl(&e2, &["compaction", &r3.to_string()]).ok(),
        format!("compacted revision {r3}\n")
    );
    // In force on every member at once (it is a log entry): reads below it fail everywhere.
    const COMPACTED: &str = "etcdserver: mvcc: required revision has been compacted";
    at(&e3, r1).fails(COMPACTED);
    at(&e1, r2).fails(COMPACTED);
    assert_eq!(
        at(&e3, r3).ok(),
        "h\nv3\n",
        "the compacted revision itself stays"
    );
    assert_eq!(at(&e1, r4).ok(), "h\nv3\n");
    assert_eq!(etcdctl(&e2, &["get", "h"]).ok(), "h\nv3\n");
    etcdctl(&e1, &["compaction", &r2.to_string()]).fails(COMPACTED);
    etcdctl(&e1, &["compaction", &(r4 + 100).to_string()])
        .fails("etcdserver: mvcc: required revision is a future revision");

    // A watch from below the compaction is canceled, and etcdctl ends saying why.
    let from_r1 = format!("--rev={r1}");
    let ran = Etcdctl::spawn(&e2, &["watch", "h", &from_r1], None).finish();
    assert!(
        !ran.status.success(),
        "watch below the compaction: {}",
        ran.stdout
    );
    assert!(
        ran.stderr.contains("watch was canceled") && ran.stderr.contains(COMPACTED),
        "watch below the compaction: {:?}",
        ran.stderr
    );
    // From the compacted revision itself, history is still there.
    let from_r3 = format!("--rev={r3}");
    let mut w = background(&e3, &["watch", "h", &from_r3, "-w", "json"]);
    let r5 = put_rev(&e1, "h", "v5");
    let seen = w.wait_for(
        SETTLE,
        "the watch from the compacted revision sees v5",
        |lines| {
            let all = events(lines);
            all.iter().any(|e| e.value == "v5").then_some(all)
        },
    );
    assert_eq!(
        seen,
        [
            Event::new("PUT", "h", "v3", r3, None),
            Event::new("PUT", "h", "v5", r5, None)
        ]
    );
}

// ---------------------------------------------------------------------------
// Leases
// ---------------------------------------------------------------------------

#[test]
fn a_lease_keeps_its_keys_until_revoked_and_is_then_unknown() {
    let mut c = Cluster::start(3);
    c.wait_for_leader();
    let (e1, e2, e3) = (ep(&c, 1), ep(&c, 2), ep(&c, 3));

    let doc = etcdctl(&e2, &["lease", "grant", "60", "-w", "json"]).json();
    let id = unum(&doc["ID"]);
    assert_ne!(id, 0, "{doc}");
    assert_eq!(num(&doc["TTL"]), 60, "{doc}");
    let hex = format!("{id:x}");
    let padded = format!("{id:016x}");

    // The simple form prints the id as 16 hex digits.
    let out = etcdctl(&e1, &["lease", "grant", "30"]).ok();
    let other = out
        .strip_prefix("lease ")
        .and_then(|rest| rest.strip_suffix(" granted with TTL(30s)\n"))
        .unwrap_or_else(|| panic!("lease grant printed {out:?}"));
    assert_eq!(other.len(), 16, "{out:?}");
    assert_ne!(other, padded);

    let lease_flag = format!("--lease={hex}");
    assert_eq!(etcdctl(&e1, &["put", &lease_flag, "lk", "v1"]).ok(), "OK\n");
    assert_eq!(
        etcdctl(&e3, &["put", &lease_flag, "lk2", "v2"]).ok(),
        "OK\n"
    );
    let doc = etcdctl(&e3, &["get", "lk", "-w", "json"]).json();
    assert_eq!(unum(&doc["kvs"][0]["lease"]), id, "{doc}");
    // --ignore-lease keeps the key's lease while changing its value.
    assert_eq!(
        etcdctl(&e2, &["put", "--ignore-lease", "lk2", "v3"]).ok(),
        "OK\n"
    );
    let doc = etcdctl(&e1, &["get", "lk2", "-w", "json"]).json();
    assert_eq!(pairs(&doc), kv(&[("lk2", "v3")]));
    assert_eq!(unum(&doc["kvs"][0]["lease"]), id, "{doc}");

    let doc = etcdctl(&e3, &["lease", "timetolive", &hex, "--keys", "-w", "json"]).json();
    assert_eq!(unum(&doc["id"]), id, "{doc}");
    assert_eq!(num(&doc["granted-ttl"]), 60, "{doc}");
    let ttl = num(&doc["ttl"]);
    assert!(0 < ttl && ttl <= 60, "{doc}");
    let mut attached: Vec<String> = doc["keys"]
        .as_array()
        .into_iter()
        .flatten()
        .map(text)
        .collect();
    attached.sort();
    assert_eq!(attached, ["lk", "lk2"], "{doc}");
    let out = etcdctl(&e3, &["lease", "timetolive", &hex, "--keys"]).ok();
    let prefix = format!("lease {padded} granted with TTL(60s), remaining(");
    assert!(
        out.starts_with(&prefix)
            && (out.ends_with("s), attached keys([lk lk2])\n")
                || out.ends_with("s), attached keys([lk2 lk])\n")),
        "timetolive --keys printed {out:?}"
    );

    assert_eq!(
        etcdctl(&e3, &["lease", "keep-alive", "--once", &hex]).ok(),
        format!("lease {padded} keepalived with TTL(60)\n")
    );
    let out = etcdctl(&e2, &["lease", "list"]).ok();
    let listed: Vec<&str> = out.lines().collect();
    assert_eq!(listed.first().copied(), Some("found 2 leases"), "{out:?}");
    assert!(
        listed.contains(&padded.as_str()) && listed.contains(&other),
        "{out:?}"
    );

    // Revoking deletes the keys, everywhere.
    assert_eq!(
        etcdctl(&e2, &["lease", "revoke", &hex]).ok(),
        format!("lease {padded} revoked\n")
    );
    assert_eq!(etcdctl(&e1, &["get", "lk"]).ok(), "");
    assert_eq!(etcdctl(&e3, &["get", "lk2"]).ok(), "");
    assert_eq!(
        etcdctl(&e1, &["lease", "timetolive", &hex]).ok(),
        format!("lease {padded} already expired\n")
    );
    const NOT_FOUND: &str = "etcdserver: requested lease not found";
    etcdctl(&e1, &["lease", "revoke", &hex]).fails(NOT_FOUND);
    etcdctl(&e3, &["put", &lease_flag, "lk3", "v"]).fails(NOT_FOUND);
    etcdctl(&e2, &["lease", "keep-alive", "--once", &hex]).fails(NOT_FOUND);
    let out = etcdctl(&e3, &["lease", "list"]).ok();
    assert_eq!(out, format!("found 1 leases\n{other}\n"));
}

// ---------------------------------------------------------------------------
// Membership
// ---------------------------------------------------------------------------

#[test]
fn member_add_as_learner_promote_and_remove_with_the_new_node_running() {
    let mut c = Cluster::start(3);
    c.wait_for_leader();
    let e: Vec<String> = (1..=3).map(|id| ep(&c, id)).collect();

    // Every member listed with its raft address as peer URL and its HTTP address as client
    // URL (each node records the latter itself as it starts: wait for that).
    let expected_urls: BTreeMap<u64, (String, String)> = (1..=3)
        .map(|id| {
            (
                id as u64,
                (c.raft_addr(id).to_string(), c.http_addr(id).to_string()),
            )
        })
        .collect();
    let mut last = None;
    let settled = poll_until(SETTLE, || {
        let listed = members(&e[0]);
        let urls = listed.as_ref().map(|m| {
            m.iter()
                .map(|(&id, member)| {
                    let peer = member
                        .peer_urls
                        .iter()
                        .map(|u| host_port(u))
                        .collect::<Vec<_>>();
                    let client = member
                        .client_urls
                        .iter()
                        .map(|u| host_port(u))
                        .collect::<Vec<_>>();
                    (id, (peer.join(","), client.join(",")))
                })
                .collect::<BTreeMap<_, _>>()
        });
        let ok = urls.as_ref() == Some(&expected_urls)
            && listed
                .as_ref()
                .is_some_and(|m| m.values().all(|m| !m.learner));
        last = listed;
        ok.then_some(())
    });
    assert!(
        settled.is_some(),
        "member list never showed {expected_urls:?} (id → peer, client); last: {last:?}"
    );
    let header = etcdctl(&e[0], &["member", "list", "-w", "json"]).json()["header"].clone();
    let cluster_id = unum(&header["cluster_id"]);
    assert_ne!(cluster_id, 0, "{header}");

    assert_eq!(etcdctl(&e[1], &["put", "m/before", "1"]).ok(), "OK\n");

    // Add node 4 as a learner: etcd's id choice (one above any ever used) gives 4.
    let spec4 = c.next_node_spec(vec!["--join".into()]);
    assert_eq!(spec4.id, 4);
    let peer4 = format!("http://{}", spec4.raft_addr());
    let peer_flag = format!("--peer-urls={peer4}");
    let out = membership_command(&e[0], &["member", "add", "n4", &peer_flag, "--learner"]);
    let mut lines = out.lines();
    assert_eq!(
        lines.next(),
        Some(format!("Member {:>16x} added to cluster {cluster_id:>16x}", 4).as_str()),
        "{out:?}"
    );
    // etcdctl builds ETCD_INITIAL_CLUSTER from a member list it asks of the same member right
    // after the add: etcd answers an add only once the member that took it has applied it, so
    // the new member is in that list.
    assert!(
        out.contains("ETCD_NAME=\"n4\"") && out.contains(&format!("n4={peer4}")),
        "member add printed {out:?}"
    );
    wait_for_roles(&e, &[(1, false), (2, false), (3, false), (4, true)]);
    let listed = members(&e[2]).expect("member list");
    assert_eq!(listed[&4].peer_urls, [peer4.as_str()], "{listed:?}");

    // Start it, as `ondisk -nodeid 4 -join` on that raft address. It catches up, and stays a
    // learner: nothing promotes a member added with --learner.
    assert_eq!(c.launch_node(spec4), 4);
    let e4 = ep(&c, 4);
    let caught_up = poll_until(SETTLE, || {
        let ran = etcdctl(&e4, &["get", "m/before", "--consistency=s"]);
        (ran.status.success() && ran.stdout == "m/before\n1\n").then_some(())
    });
    assert!(
        caught_up.is_some(),
        "node 4 never served m/before\n{}",
        c.diagnostics()
    );
    let status4 = statuses(&e4);
    assert_eq!(status4.len(), 1);
    assert_eq!(unum(&status4[0].1["header"]["member_id"]), 4, "{status4:?}");
    assert_eq!(status4[0].1["isLearner"], Value::Bool(true), "{status4:?}");
    assert!(members(&e[1]).expect("member list")[&4].learner);

    // Promote it (etcdctl takes the id in hex).
    let out = membership_command(&e[1], &["member", "promote", "4"]);
    assert_eq!(
        out,
        format!("Member {:>16x} promoted in cluster {cluster_id:>16x}\n", 4)
    );
    let mut all = e.clone();
    all.push(e4.clone());
    wait_for_roles(&all, &[(1, false), (2, false), (3, false), (4, false)]);
    assert_eq!(etcdctl(&e4, &["put", "m/via4", "2"]).ok(), "OK\n");
    assert_eq!(etcdctl(&e[2], &["get", "m/via4"]).ok(), "m/via4\n2\n");

    // Remove it: it shuts itself down, and the id is gone for good.
    let out = membership_command(&e[2], &["member", "remove", "4"]);
    assert_eq!(
        out,
        format!("Member {:>16x} removed from cluster {cluster_id:>16x}\n", 4)
    );
    let exited = c.node(4).wait_exit_opt(SETTLE);
    assert!(
        exited.is_some_and(|s| s.success()),
        "removed node 4 did not exit with status 0 ({exited:?})\n{}",
        c.diagnostics()
    );
    wait_for_roles(&e, &[(1, false), (2, false), (3, false)]);
    etcdctl(&e[0], &["member", "remove", "4"]).fails("member not found");

    // Added again without --learner, a node gets a new id (5, never 4 again) and is promoted
    // by the leader once it has caught up.
    let spec5 = c.next_node_spec(vec!["--join".into()]);
    assert_eq!(spec5.id, 5);
    let peer5 = format!("http://{}", spec5.raft_addr());
    let peer_flag = format!("--peer-urls={peer5}");
    let out = membership_command(&e[1], &["member", "add", "n5", &peer_flag, "-w", "json"]);
    let doc: Value = serde_json::from_str(&out).expect("member add -w json prints JSON");
    assert_eq!(unum(&doc["member"]["ID"]), 5, "{doc}");
    assert_eq!(
        doc["member"]["peerURLs"][0],
        Value::from(peer5.as_str()),
        "{doc}"
    );
    assert_eq!(c.launch_node(spec5), 5);
    let e5 = ep(&c, 5);
    let mut all = e.clone();
    all.push(e5.clone());
    wait_for_roles(&all, &[(1, false), (2, false), (3, false), (5, false)]);
    assert_eq!(etcdctl(&e5, &["get", "m/via4"]).ok(), "m/via4\n2\n");
}

// ---------------------------------------------------------------------------
// Maintenance
// ---------------------------------------------------------------------------

#[test]
fn endpoint_status_health_hashkv_defrag_and_move_leader() {
    let mut c = Cluster::start(3);
    let leader = c.wait_for_leader();
    let all = eps(&c, &[1, 2, 3]);
    let by_endpoint: BTreeMap<String, u64> = (1..=3).map(|id| (ep(&c, id), id as u64)).collect();
    for i in 0..10 {
        assert_eq!(
            etcdctl(
                &ep(&c, 1 + i % 3),
                &["put", &format!("k{i}"), &format!("v{i}")]
            )
            .ok(),
            "OK\n"
        );
    }

    // Status: each endpoint is the member of its own id; all name the same leader.
    wait_until_all_report_leader(&all, 3, leader as u64);
    for (endpoint, status) in statuses(&all) {
        let id = by_endpoint
            .get(&endpoint)
            .unwrap_or_else(|| panic!("status of an unknown endpoint {endpoint:?}"));
        assert_eq!(
            unum(&status["header"]["member_id"]),
            *id,
            "{endpoint}: {status}"
        );
        assert_eq!(status["version"], "3.4.0", "{endpoint}: {status}");
        assert!(num(&status["dbSize"]) > 0, "{endpoint}: {status}");
        assert!(num(&status["raftTerm"]) >= 1, "{endpoint}: {status}");
        assert!(num(&status["raftIndex"]) >= 10, "{endpoint}: {status}");
        assert_ne!(
            status["isLearner"],
            Value::Bool(true),
            "{endpoint}: {status}"
        );
    }

    // Health is printed on stderr, one line per endpoint.
    let ran = etcdctl(&all, &["endpoint", "health"]);
    let stderr = ran.stderr.clone();
    assert_eq!(ran.ok(), "", "endpoint health prints nothing on stdout");
    for endpoint in by_endpoint.keys() {
        assert!(
            stderr.contains(&format!(
                "{endpoint} is healthy: successfully committed proposal"
            )),
            "{endpoint} not reported healthy: {stderr:?}"
        );
    }
    let doc = etcdctl(&all, &["endpoint", "health", "-w", "json"]).json();
    let healthy = doc.as_array().map(|a| {
        a.iter()
            .filter(|h| h["health"] == Value::Bool(true))
            .count()
    });
    assert_eq!(healthy, Some(3), "{doc}");

    // HashKV: equal on every member at rest, and it covers the data (a write changes it).
    let (rev, hashes) = hashes_at_rest(&all, 3);
    assert!(
        hashes.iter().all(|h| *h == hashes[0]),
        "hashes differ at revision {rev}: {hashes:?}"
    );
    assert_eq!(etcdctl(&ep(&c, 2), &["put", "k0", "changed"]).ok(), "OK\n");
    let (rev2, hashes2) = hashes_at_rest(&all, 3);
    assert!(rev2 > rev);
    assert!(
        hashes2.iter().all(|h| *h == hashes2[0]),
        "hashes differ at revision {rev2}: {hashes2:?}"
    );
    assert_ne!(
        hashes2[0], hashes[0],
        "the hash did not change with the data"
    );

    // No alarms; defragmentation reports success per endpoint.
    assert_eq!(etcdctl(&all, &["alarm", "list"]).ok(), "");
    let e2 = ep(&c, 2);
    assert_eq!(
        etcdctl(&e2, &["defrag"]).ok(),
        format!("Finished defragmenting etcd member[{e2}]\n")
    );

    // Leader transfer to a follower (etcdctl finds the leader among the endpoints itself).
    let target = c.followers(leader)[0];
    assert_eq!(
        etcdctl(&all, &["move-leader", &format!("{target:x}")]).ok(),
        format!("Leadership transferred from {leader:x} to {target:x}\n")
    );
    wait_until_all_report_leader(&all, 3, target as u64);
    assert_eq!(c.wait_for_leader(), target);
    assert_eq!(
        etcdctl(&ep(&c, leader), &["put", "after", "move"]).ok(),
        "OK\n"
    );

    // --cluster finds every member's client URL from the member list.
    let doc = etcdctl(
        &ep(&c, 1),
        &["endpoint", "status", "--cluster", "-w", "json"],
    )
    .json();
    let found: BTreeSet<String> = doc
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["Endpoint"].as_str().map(|u| host_port(u).to_string()))
        .collect();
    assert_eq!(
        found,
        by_endpoint.keys().cloned().collect::<BTreeSet<_>>(),
        "{doc}"
    );

    // A transfer to no member is refused with etcd's reason (etcdctl reads the id as hex).
    etcdctl(&all, &["move-leader", &format!("{:x}", 99)])
        .fails("etcdserver: bad leader transferee");
}

#[test]
fn snapshot_save_writes_a_backup_that_ondisk_restore_turns_into_a_serving_node() {
    let mut c = Cluster::start(3);
    c.wait_for_leader();
    let e1 = ep(&c, 1);
    for i in 0..10 {
        assert_eq!(
            etcdctl(&e1, &["put", &format!("s/{i}"), &format!("value {i}")]).ok(),
            "OK\n"
        );
    }

    let work = tempfile::tempdir().expect("temporary directory");
    let file = work.path().join("backup.db");
    let file_arg = file.to_str().expect("UTF-8 path");
    let e2 = ep(&c, 2);
    assert_eq!(
        etcdctl(&e2, &["snapshot", "save", file_arg]).ok(),
        format!("Snapshot saved at {file_arg}\n")
    );
    let size = fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
    assert!(size > 0, "the snapshot file is missing or empty");
    assert!(!Path::new(&format!("{file_arg}.part")).exists());
    drop(c);

    // What etcdctl saved is ondisk's backup format: `ondisk restore` makes a node of it (as
    // tests/ctl.rs restores a backup), which serves the data through etcdctl.
    let data_dir = work.path().join("restored");
    let spec = NodeSpec {
        id: 1,
        cluster: vec![common::free_addr()],
        http: common::free_addr(),
        data_dir: data_dir.clone(),
        extra_args: Vec::new(),
    };
    let mut args: Vec<OsString> = vec!["restore".into(), file.clone().into()];
    args.extend(spec.args().into_iter().take(8));
    let restored = Command::new(BIN)
        .args(&args)
        .stdin(Stdio::null())
        .output()
        .expect("run ondisk restore");
    assert!(
        restored.status.success(),
        "ondisk restore {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&restored.stdout),
        String::from_utf8_lossy(&restored.stderr)
    );
    let mut node = Node::launch(&spec);
    if let Err(f) = node.wait_ready(common::STARTUP_TIMEOUT) {
        panic!("the restored node did not start: {}", f.diagnostics);
    }
    let endpoint = spec.http.to_string();
    let mut last = None;
    let doc = poll_until(SETTLE, || {
        let ran = etcdctl(&endpoint, &["get", "s/", "--prefix", "-w", "json"]);
        if !ran.status.success() {
            last = Some(ran.stderr);
            return None;
        }
        serde_json::from_str::<Value>(&ran.stdout).ok()
    })
    .unwrap_or_else(|| {
        panic!(
            "the restored node never answered get; last: {last:?}\n{}",
            node.diagnostics()
        )
    });
    let expected: Vec<(String, String)> = (0..10)
        .map(|i| (format!("s/{i}"), format!("value {i}")))
        .collect();
    let mut got = pairs(&doc);
    got.sort();
    assert_eq!(got, expected, "{doc}");
    assert_eq!(unum(&doc["header"]["member_id"]), 1, "{doc}");
    assert_eq!(
        etcdctl(&endpoint, &["put", "after", "restore"]).ok(),
        "OK\n"
    );
}

// ---------------------------------------------------------------------------
// Recipes: lock and elect
// ---------------------------------------------------------------------------

#[test]
fn etcdctl_lock_never_lets_two_commands_run_at_once() {
    let mut c = Cluster::start(3);
    c.wait_for_leader();
    let e: Vec<String> = (1..=3).map(|id| ep(&c, id)).collect();
    let work = tempfile::tempdir().expect("temporary directory");
    let log = work.path().join("sections.log");
    let log_arg = log.to_str().expect("UTF-8 path");
    let go = work.path().join("go");
    let go_arg = go.to_str().expect("UTF-8 path");

    // Every command run under the lock logs its start (with the lock key etcdctl hands it) and
    // its end, so overlapping runs show as interleaved lines. The holder's command holds the
    // lock until the test creates the `go` file (polling for it, for at most a minute, so that
    // it ends even if the test does not); a contender's lingers a moment, to give an overlap,
    // if the lock allowed one, time to show.
    const HOLD: &str = "echo \"begin $1 $ETCD_LOCK_KEY\" >> \"$2\"; i=0; \
                        while [ ! -e \"$3\" ] && [ $i -lt 1200 ]; do sleep 0.05; i=$((i+1)); done; \
                        echo \"end $1\" >> \"$2\"";
    const SECTION: &str =
        "echo \"begin $1 $ETCD_LOCK_KEY\" >> \"$2\"; sleep 0.2; echo \"end $1\" >> \"$2\"";
    let mut holder = background(
        &e[0],
        &[
            "lock", "L", "--", "sh", "-c", HOLD, "section", "holder", log_arg, go_arg,
        ],
    );
    let read_log = || fs::read_to_string(&log).unwrap_or_default();
    let held = poll_until(SETTLE, || {
        read_log().starts_with("begin holder ").then_some(())
    });
    assert!(
        held.is_some(),
        "the holder never ran: {}",
        holder.describe()
    );

    // Contenders through every node queue up behind the holder (each has its key under L/).
    let names = ["c1", "c2", "c3", "c4", "c5", "c6", "c7", "c8"];
    let mut contenders: Vec<Etcdctl> = names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            background(
                &e[i % 3],
                &[
                    "lock", "L", "--", "sh", "-c", SECTION, "section", name, log_arg,
                ],
            )
        })
        .collect();
    // Each contender is queued (its key is under L/) or, had the lock let it in beside the
    // holder, already done.
    let mut last = (0, 0);
    let settled = poll_until(SETTLE, || {
        let done = contenders
            .iter_mut()
            .map(|c| c.try_status().is_some())
            .filter(|&done| done)
            .count();
        last = (count_prefix(&e[1], "L/"), done);
        (last.0 + done as i64 == 1 + names.len() as i64).then_some(())
    });
    assert!(
        settled.is_some(),
        "(keys under L/, contenders done) stayed {last:?}:\n{}",
        read_log()
    );

    // The holder lets go; everyone runs, one at a time.
    fs::write(&go, b"").expect("create the go file");
    assert!(holder.wait_exit(SETTLE).success(), "{}", holder.describe());
    for contender in &mut contenders {
        let status = contender.wait_exit(SETTLE);
        assert!(status.success(), "{}", contender.describe());
    }
    let written = read_log();
    let lines: Vec<&str> = written.lines().collect();
    assert_eq!(lines.len(), 2 * (1 + names.len()), "{written}");
    let mut ran = Vec::new();
    let mut lock_keys = BTreeSet::new();
    for pair in lines.chunks(2) {
        let begin: Vec<&str> = pair[0].split(' ').collect();
        assert!(
            begin.len() == 3 && begin[0] == "begin" && begin[2].starts_with("L/"),
            "{written}"
        );
        assert_eq!(
            pair[1],
            format!("end {}", begin[1]),
            "two commands ran under the lock at once:\n{written}"
        );
        ran.push(begin[1].to_string());
        lock_keys.insert(begin[2].to_string());
    }
    assert_eq!(ran[0], "holder", "{written}");
    let contenders_ran: BTreeSet<String> = ran[1..].iter().cloned().collect();
    assert_eq!(
        contenders_ran,
        names.iter().map(|n| n.to_string()).collect(),
        "{written}"
    );
    assert_eq!(
        lock_keys.len(),
        1 + names.len(),
        "lock keys reused: {written}"
    );
    assert_eq!(count_prefix(&e[2], "L/"), 0, "every lock released");
}

#[test]
fn etcdctl_elect_hands_leadership_on_in_order_and_an_observer_sees_each_leader() {
    let mut c = Cluster::start(3);
    c.wait_for_leader();
    let e: Vec<String> = (1..=3).map(|id| ep(&c, id)).collect();

    /// A campaigner's output once elected: the leader key, then its proposal.
    fn elected(lines: &[String], proposal: &str) -> Option<String> {
        (lines.len() >= 2 && lines[1] == proposal && lines[0].starts_with("E/"))
            .then(|| lines[0].clone())
    }
    let mut p1 = background(&e[0], &["elect", "E", "p1"]);
    let key1 = p1.wait_for(SETTLE, "p1 is elected", |l| elected(l, "p1"));
    let mut observer = background(&e[1], &["elect", "-l", "E"]);
    observer.wait_for(SETTLE, "the observer sees p1", |l| {
        l.iter().any(|l| l == "p1").then_some(())
    });
    // Two more campaigners queue up, p2 before p3 (each has its key under E/ before the next).
    let mut p2 = background(&e[2], &["elect", "E", "p2"]);
    let mut waiting = 0;
    assert!(
        poll_until(SETTLE, || {
            waiting = count_prefix(&e[0], "E/");
            (waiting == 2).then_some(())
        })
        .is_some(),
        "{waiting} keys under E/, expected 2"
    );
    let mut p3 = background(&e[1], &["elect", "E", "p3"]);
    assert!(
        poll_until(SETTLE, || {
            waiting = count_prefix(&e[0], "E/");
            (waiting == 3).then_some(())
        })
        .is_some(),
        "{waiting} keys under E/, expected 3"
    );
    assert_eq!(p2.stdout(), "", "p2 elected while p1 leads");
    assert_eq!(p3.stdout(), "", "p3 elected while p1 leads");

    // p1 interrupted resigns: p2, next in line, is elected.
    p1.signal("INT");
    assert!(p1.wait_exit(SETTLE).success(), "{}", p1.describe());
    let key2 = p2.wait_for(SETTLE, "p2 is elected", |l| elected(l, "p2"));
    assert_eq!(p3.stdout(), "", "p3 elected while p2 leads");

    // p2 killed outright cannot resign; its session's lease would expire in 60 s. Revoking the
    // lease (its id is the key's suffix) is what that expiry does, without the wait.
    p2.kill();
    let lease = key2.strip_prefix("E/").expect("an election key");
    assert!(etcdctl(&e[2], &["lease", "revoke", lease])
        .ok()
        .ends_with(" revoked\n"));
    let key3 = p3.wait_for(SETTLE, "p3 is elected", |l| elected(l, "p3"));

    // The observer printed each leader in turn, key then proposal.
    let seen = observer.wait_for(SETTLE, "the observer sees p3", |l| {
        l.iter().any(|l| l == "p3").then(|| l.to_vec())
    });
    assert_eq!(
        seen,
        [key1, "p1".into(), key2, "p2".into(), key3, "p3".into()],
        "observer output"
    );
}

/// etcdctl's arguments acting as `user` (NAME:PASSWORD) before `args`.
fn as_user<'a>(user: &'a str, args: &[&'a str]) -> Vec<&'a str> {
    let mut all = vec!["--user", user];
    all.extend_from_slice(args);
    all
}

/// The keys of the events in a JSON watch's output lines.
fn watched_keys(lines: &[String]) -> Vec<String> {
    events(lines).into_iter().map(|event| event.key).collect()
}

#[test]
fn authentication_through_etcdctl_limits_a_user_to_its_prefix_and_survives_a_restart() {
    let mut c = Cluster::start3();
    c.wait_for_leader();
    let (e1, e2) = (ep(&c, 1), ep(&c, 2));
    let root = "root:rootpw";
    let app = "app:apppw";
    for setup in [
        &["user", "add", root][..],
        &["role", "add", "root"],
        &["user", "grant-role", "root", "root"],
        &["user", "add", app],
        &["role", "add", "app"],
        &[
            "role",
            "grant-permission",
            "app",
            "readwrite",
            "app/",
            "--prefix=true",
        ],
        &["user", "grant-role", "app", "app"],
        &["auth", "enable"],
    ] {
        etcdctl(&e1, setup).ok();
    }

    // Without a user nothing is allowed; with the wrong password nothing either.
    etcdctl(&e2, &["put", "app/a", "1"]).fails("etcdserver: user name is empty");
    etcdctl(&e2, &as_user("app:wrong", &["get", "app/a"])).fails("authentication failed");

    // Inside its prefix the user reads and writes, on any member.
    etcdctl(&e2, &as_user(app, &["put", "app/a", "1"])).ok();
    let got = etcdctl(
        &e1,
        &as_user(app, &["get", "app/", "--prefix", "-w", "json"]),
    )
    .json();
    assert_eq!(pairs(&got), kv(&[("app/a", "1")]));

    // Outside it, every kind of request is refused.
    etcdctl(&e1, &as_user(root, &["put", "secret", "s"])).ok();
    let denied = "etcdserver: permission denied";
    etcdctl(&e2, &as_user(app, &["put", "secret", "x"])).fails(denied);
    etcdctl(&e2, &as_user(app, &["get", "secret"])).fails(denied);
    etcdctl(&e2, &as_user(app, &["get", "", "--prefix"])).fails(denied);
    etcdctl(&e2, &as_user(app, &["del", "secret"])).fails(denied);
    let txn = b"\nput app/b 2\n\nput secret 3\n\n";
    etcdctl_in(&e2, &as_user(app, &["txn"]), txn).fails(denied);
    etcdctl(&e2, &as_user(app, &["user", "list"])).fails(denied);
    etcdctl(&e2, &as_user(app, &["member", "remove", "1"])).fails(denied);
    assert_eq!(
        pairs(&etcdctl(&e1, &as_user(root, &["get", "secret", "-w", "json"])).json()),
        kv(&[("secret", "s")]),
        "a refused request changed nothing"
    );

    // An open watch follows the user's permissions as they change: narrowed to app/public/,
    // it no longer delivers the rest of app/.
    let mut watch = background(
        &e2,
        &as_user(app, &["watch", "app/", "--prefix", "-w", "json"]),
    );
    common::wait_until(SETTLE, "the watch delivers", || {
        etcdctl(&e1, &as_user(root, &["put", "app/seen", "1"])).ok();
        watched_keys(&watch.stdout_lines()).contains(&"app/seen".to_string())
    });
    etcdctl(
        &e1,
        &as_user(
            root,
            &[
                "role",
                "grant-permission",
                "app",
                "readwrite",
                "app/public/",
                "--prefix=true",
            ],
        ),
    )
    .ok();
    etcdctl(
        &e1,
        &as_user(
            root,
            &["role", "revoke-permission", "app", "app/", "--prefix=true"],
        ),
    )
    .ok();
    etcdctl(&e1, &as_user(root, &["put", "app/private", "p"])).ok();
    etcdctl(&e1, &as_user(root, &["put", "app/public/1", "q"])).ok();
    let seen = watch.wait_for(SETTLE, "the public key is delivered", |lines| {
        let keys = watched_keys(lines);
        keys.contains(&"app/public/1".to_string()).then_some(keys)
    });
    assert!(!seen.contains(&"app/private".to_string()), "{seen:?}");
    drop(watch);
    etcdctl(&e2, &as_user(app, &["put", "app/private", "x"])).fails(denied);

    // Users, roles and the switch are replicated state, kept on disk.
    c.kill_all();
    c.restart_all();
    c.wait_for_leader();
    let e3 = ep(&c, 3);
    etcdctl(&e3, &["get", "app/public/1"]).fails("etcdserver: user name is empty");
    let got = etcdctl(&e3, &as_user(app, &["get", "app/public/1", "-w", "json"])).json();
    assert_eq!(pairs(&got), kv(&[("app/public/1", "q")]));
    let roles = etcdctl(&e3, &as_user(root, &["user", "get", "app"])).ok();
    assert!(roles.contains("app"), "{roles}");
}
