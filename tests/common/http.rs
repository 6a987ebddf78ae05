//! A minimal HTTP client for the API tests and the fault-injection clients.
//!
//! HTTP status codes are answers, not errors: every request returns the status, headers and body
//! whatever the status. Connections are never pooled, so a request to a node that was killed and
//! restarted never runs into a dead kept-alive socket, and nothing is retried behind the caller's
//! back (a retried write would blur what a history records).

use std::time::Duration;

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

    /// The body as JSON; panics with the body if it is not JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.text()))
    }
}

/// An agent that gives up on a request after `timeout` (connecting after at most `timeout` too),
/// never pools connections and reports every status as an answer.
pub fn agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(timeout))
        .max_idle_connections(0)
        .max_idle_connections_per_host(0)
        .max_redirects(0)
        .build()
        .into()
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
