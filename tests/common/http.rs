//! A minimal HTTP client for the API tests and the fault-injection clients.
//!
//! HTTP status codes are answers, not errors: every request returns the status, headers and body
//! whatever the status. Connections are never pooled, so a request to a node that was killed and
//! restarted never runs into a dead kept-alive socket, and nothing is retried behind the caller's
//! back (a retried write would blur what a history records).

use std::io::BufRead;
use std::io::BufReader;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::sync::mpsc::Receiver;
use std::sync::mpsc::RecvTimeoutError;
use std::sync::Arc;
use std::thread;
use std::time::Duration;
use std::time::Instant;

use ondisk::api::Event;
use ondisk::api::WatchResponse;

/// Generous per-request cap for tests that expect an answer: well above the nodes' own 2 s
/// timeout, so a node's answer (even a timeout error) is what a test sees.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);

/// One HTTP answer, read completely.
pub struct Answer {
    pub status: u16,
    pub headers: ureq::http::HeaderMap,
    pub body: Vec<u8>,
}

impl Answer {
    /// The body as (lossy) text, for messages.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// A header holding a number; panics with the body if it is absent or not a number.
    pub fn number_header(&self, name: &str) -> i64 {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok()?.parse().ok())
            .unwrap_or_else(|| panic!("no numeric {name} header: {}", self.text()))
    }

    /// The body as JSON; panics with the body if it is not JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.text()))
    }
}

/// An agent that gives up on a request after `timeout` (connecting after at most `timeout` too),
/// never pools connections and reports every status as an answer.
pub fn agent(timeout: Duration) -> ureq::Agent {
    agent_config(timeout).build().into()
}

/// [`agent`]'s settings, for agents that add their own (see [`tls_agent`]).
fn agent_config(timeout: Duration) -> ureq::config::ConfigBuilder<ureq::typestate::AgentScope> {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(timeout))
        .max_idle_connections(0)
        .max_idle_connections_per_host(0)
        .max_redirects(0)
}

/// Sends `method url` with `body`; `Err` only when no complete answer arrived (connection refused
/// or reset, timeout).
pub fn request(
    agent: &ureq::Agent,
    method: &str,
    url: &str,
    body: &[u8],
) -> Result<Answer, ureq::Error> {
    let request = ureq::http::Request::builder()
        .method(method)
        .uri(url)
        .body(body.to_vec())
        .expect("valid request");
    let mut response = agent.run(request)?;
    Ok(Answer {
        status: response.status().as_u16(),
        headers: response.headers().clone(),
        body: response.body_mut().read_to_vec()?,
    })
}

/// Sends `method url` with `body` and returns the answer whatever its status; panics if no answer
/// arrives within [`REQUEST_TIMEOUT`].
pub fn http(method: &str, url: &str, body: &[u8]) -> Answer {
    request(&agent(REQUEST_TIMEOUT), method, url, body)
        .unwrap_or_else(|e| panic!("{method} {url} failed: {e}"))
}

/// Every item of the scan `url` (`http://HOST:PORT/v1/kv/?QUERY`, without `start`), following
/// each page's `next`; panics on an answer other than 200.
pub fn scan_all(url: &str) -> Vec<serde_json::Value> {
    const MAX_PAGES: usize = 10_000;
    let mut items = Vec::new();
    let mut page_url = url.to_string();
    for _ in 0..MAX_PAGES {
        let answer = http("GET", &page_url, b"");
        assert_eq!(answer.status, 200, "scan {page_url}: {}", answer.text());
        let mut page = answer.json();
        if let Some(page_items) = page["items"].as_array_mut() {
            items.append(page_items);
        }
        match page["next"].as_str() {
            Some(next) => page_url = format!("{url}&start={next}"),
            None => return items,
        }
    }
    panic!("scan {url} did not end within {MAX_PAGES} pages");
}

/// How long a node may take to build, send or install a snapshot, or to catch up.
pub const CONVERGE_TIMEOUT: Duration = Duration::from_secs(60);

/// Node `id`'s `/v1/status` answer.
pub fn node_status(cluster: &super::Cluster, id: usize) -> serde_json::Value {
    http(
        "GET",
        &format!("http://{}/v1/status", cluster.http_addr(id)),
        b"",
    )
    .json()
}

/// A counter of a status answer (0 when absent).
pub fn status_field(status: &serde_json::Value, name: &str) -> u64 {
    status[name].as_u64().unwrap_or(0)
}

/// Waits until every node of `cluster` has applied what node `id` (the leader, for everything
/// acknowledged so far) has committed now. After that, reads that any node answers from its own
/// state (serializable ones, with the auth state that node has applied) see everything written
/// before.
pub fn wait_applied_everywhere(cluster: &super::Cluster, id: usize) {
    let committed = status_field(&node_status(cluster, id), "committed");
    for node in cluster.ids() {
        super::wait_until(
            CONVERGE_TIMEOUT,
            &format!("node {node} applies up to {committed}"),
            || status_field(&node_status(cluster, node), "last_applied") >= committed,
        );
    }
}

/// Writes `count` keys named `{prefix}{i}` through node `id` from several client threads; each
/// value is `value(i)`. Panics if a write is refused (the cluster is healthy throughout).
pub fn write_keys(
    cluster: &super::Cluster,
    id: usize,
    prefix: &str,
    count: usize,
    value: fn(usize) -> Vec<u8>,
) {
    const CLIENTS: usize = 8;
    let next = Arc::new(AtomicUsize::new(0));
    let base = format!("http://{}/v1/kv/", cluster.http_addr(id));
    let handles: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let next = next.clone();
            let base = base.clone();
            let prefix = prefix.to_string();
            thread::spawn(move || loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    return;
                }
                let answer = http("PUT", &format!("{base}{prefix}{i}"), &value(i));
                assert_eq!(answer.status, 204, "PUT {prefix}{i}: {}", answer.text());
            })
        })
        .collect();
    for handle in handles {
        handle.join().expect("writer thread");
    }
}

/// Waits until node `id` has taken a snapshot and purged its log up to it. openraft purges in
/// the background, and not while a replication stream still reads the entries concerned.
pub fn wait_for_compaction(cluster: &super::Cluster, id: usize) {
    let compacted = super::poll_until(CONVERGE_TIMEOUT, || {
        let status = node_status(cluster, id);
        (status_field(&status, "purged") > 0 && status_field(&status, "snapshots_built") >= 1)
            .then_some(())
    });
    assert!(
        compacted.is_some(),
        "node {id} never compacted its log: {}",
        node_status(cluster, id)
    );
}

/// Waits until node `id` has installed a snapshot sent by the leader.
pub fn wait_for_install(cluster: &super::Cluster, id: usize) {
    let installed = super::poll_until(CONVERGE_TIMEOUT, || {
        (status_field(&node_status(cluster, id), "snapshots_installed") >= 1).then_some(())
    });
    assert!(
        installed.is_some(),
        "node {id} never installed a snapshot: {}",
        node_status(cluster, id)
    );
}

/// Sends `value` as a JSON body.
pub fn http_json(method: &str, url: &str, value: &impl serde::Serialize) -> Answer {
    http(
        method,
        url,
        &serde_json::to_vec(value).expect("serializable"),
    )
}

/// A watch stream (`GET /v1/watch/...`) read line by line on a thread of its own, so a test waits
/// for its next response with a deadline. The thread ends when the node closes the stream (it ends
/// the watch, or is killed).
pub struct Watch {
    url: String,
    lines: Receiver<Result<WatchResponse, String>>,
}

/// How long a watch stream waits for the node's first answer (the stream itself has no deadline).
const WATCH_CONNECT_TIMEOUT: Duration = Duration::from_secs(20);

impl Watch {
    /// Opens the watch `url` (`http://HOST:PORT/v1/watch/KEY?...`) and waits for its created
    /// response, so every change applied after this returns is reported. Panics if the node
    /// answers other than 200 or the first line is not the created one.
    pub fn open(url: &str) -> Watch {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(WATCH_CONNECT_TIMEOUT))
            .timeout_recv_response(Some(WATCH_CONNECT_TIMEOUT))
            .max_idle_connections(0)
            .max_idle_connections_per_host(0)
            .build()
            .into();
        let response = agent
            .get(url)
            .call()
            .unwrap_or_else(|e| panic!("watch {url} failed: {e}"));
        let status = response.status().as_u16();
        if status != 200 {
            let text = response.into_body().read_to_string().unwrap_or_default();
            panic!("watch {url} answered {status}: {text}");
        }
        let (sender, lines) = mpsc::channel();
        let reader = BufReader::new(response.into_body().into_reader());
        thread::spawn(move || {
            for line in reader.lines() {
                let parsed = line.map_err(|e| e.to_string()).and_then(|line| {
                    serde_json::from_str(&line).map_err(|e| format!("{e}: {line}"))
                });
                if sender.send(parsed).is_err() {
                    return;
                }
            }
        });
        let watch = Watch {
            url: url.to_string(),
            lines,
        };
        let created = watch.next(WATCH_CONNECT_TIMEOUT);
        assert!(
            created.created,
            "watch {url}: first line is not created: {created:?}"
        );
        watch
    }

    /// The next response within `timeout`, if one came.
    pub fn try_next(&self, timeout: Duration) -> Option<WatchResponse> {
        match self.lines.recv_timeout(timeout) {
            Ok(Ok(response)) => Some(response),
            Ok(Err(e)) => panic!("watch {}: bad line: {e}", self.url),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => panic!("watch {} ended", self.url),
        }
    }

    /// The next response; panics if none comes within `timeout`.
    pub fn next(&self, timeout: Duration) -> WatchResponse {
        self.try_next(timeout)
            .unwrap_or_else(|| panic!("watch {}: nothing within {timeout:?}", self.url))
    }

    /// Responses until `done` says the ones read so far are enough; panics if that takes longer
    /// than `timeout` in all.
    pub fn until(
        &self,
        timeout: Duration,
        mut done: impl FnMut(&[WatchResponse]) -> bool,
    ) -> Vec<WatchResponse> {
        let deadline = Instant::now() + timeout;
        let mut responses = Vec::new();
        while !done(&responses) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.try_next(left) {
                Some(response) => responses.push(response),
                None => panic!(
                    "watch {}: not done within {timeout:?}; got {responses:?}",
                    self.url
                ),
            }
        }
        responses
    }
}

/// Every event of `responses`, in order.
pub fn events(responses: &[WatchResponse]) -> Vec<&Event> {
    responses.iter().flat_map(|r| &r.events).collect()
}

/// An [`agent`] that also speaks TLS with `tls` (the CA to trust, the client certificate to
/// show) to `https://` URLs: for suites whose nodes serve their client port over TLS.
pub fn tls_agent(timeout: Duration, tls: ureq::tls::TlsConfig) -> ureq::Agent {
    agent_config(timeout).tls_config(tls).build().into()
}

/// Sets up authentication over `base`'s HTTP API (`http://HOST:PORT`) and turns it on: `root`
/// (password `rootpw`) with the root role, and `app` (password `apppw`) whose role may read and
/// write the keys under `app/`.
pub fn enable_auth_with_app_user(base: &str) {
    for change in [
        serde_json::json!({"user_add": {"name": "root", "password": "rootpw"}}),
        serde_json::json!({"role_add": {"name": "root"}}),
        serde_json::json!({"user_grant_role": {"user": "root", "role": "root"}}),
        serde_json::json!({"user_add": {"name": "app", "password": "apppw"}}),
        serde_json::json!({"role_add": {"name": "app"}}),
        serde_json::json!({"role_grant_permission": {"role": "app", "permission":
            {"kind": "readwrite", "key": "app/", "range_end": "app0"}}}),
        serde_json::json!({"user_grant_role": {"user": "app", "role": "app"}}),
        serde_json::json!("enable"),
    ] {
        let answer = http_json("POST", &format!("{base}/v1/auth"), &change);
        assert_eq!(answer.status, 200, "{change}: {}", answer.text());
    }
}
