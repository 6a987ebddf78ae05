//! An async HTTP/1.1 client for ondisk's HTTP API, for the workloads that only it serves over
//! HTTP (watch streams, leases): one task per open stream rather than one thread, so a thousand
//! watchers cost a thousand sockets and nothing more.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use http_body_util::BodyExt;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// How long one request (not a stream) may take before it counts as an error.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// A pooled client: requests reuse idle keep-alive connections, a stream holds its own. Clones
/// share the pool.
#[derive(Clone)]
pub struct HttpClient {
    client: Arc<Client<HttpConnector, Full<Bytes>>>,
}

impl HttpClient {
    /// A client with no connection yet; each is opened on first use.
    pub fn new() -> Self {
        let mut connector = HttpConnector::new();
        // Small requests and stream lines must leave at once, as the servers' own sockets do.
        connector.set_nodelay(true);
        HttpClient {
            client: Arc::new(Client::builder(TokioExecutor::new()).build(connector)),
        }
    }

    /// Sends `body` to `url` with `method` and returns the answer's body, or an error for any
    /// status but 2xx.
    pub async fn send(
        &self,
        method: hyper::Method,
        url: &str,
        body: Vec<u8>,
    ) -> anyhow::Result<Bytes> {
        let exchange = async {
            let response = self.start(method, url, body).await?;
            let bytes = response.collect().await?.to_bytes();
            anyhow::Ok(bytes)
        };
        tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .with_context(|| format!("{url}: no answer within {REQUEST_TIMEOUT:?}"))?
    }

    /// Opens a stream of newline-delimited answers (a watch) at `url`.
    pub async fn lines(&self, url: &str) -> anyhow::Result<Lines> {
        let body = tokio::time::timeout(
            REQUEST_TIMEOUT,
            self.start(hyper::Method::GET, url, Vec::new()),
        )
        .await
        .with_context(|| format!("{url}: no answer within {REQUEST_TIMEOUT:?}"))??;
        Ok(Lines {
            body,
            pending: Vec::new(),
        })
    }

    /// Sends the request and returns the body of a 2xx answer.
    async fn start(
        &self,
        method: hyper::Method,
        url: &str,
        body: Vec<u8>,
    ) -> anyhow::Result<Incoming> {
        let request = hyper::Request::builder()
            .method(method)
            .uri(url)
            .body(Full::new(Bytes::from(body)))?;
        let response = self
            .client
            .request(request)
            .await
            .with_context(|| format!("{url}: request failed"))?;
        let status = response.status();
        if !status.is_success() {
            let body = response.into_body().collect().await?.to_bytes();
            anyhow::bail!("{url}: {status}: {}", String::from_utf8_lossy(&body));
        }
        Ok(response.into_body())
    }
}

/// The lines of a streamed answer, as they arrive.
pub struct Lines {
    body: Incoming,
    /// Bytes received after the last complete line.
    pending: Vec<u8>,
}

impl Lines {
    /// Every complete line that has arrived (at least one, each ending in a newline), or `None` at
    /// the end of the stream. Handing out what has arrived at once lets the reader take a burst in
    /// one go.
    pub async fn next_lines(&mut self) -> anyhow::Result<Option<Vec<u8>>> {
        loop {
            if let Some(last_newline) = self.pending.iter().rposition(|&b| b == b'\n') {
                let rest = self.pending.split_off(last_newline + 1);
                return Ok(Some(std::mem::replace(&mut self.pending, rest)));
            }
            match self.body.frame().await {
                None => return Ok(None),
                Some(frame) => {
                    if let Ok(data) = frame?.into_data() {
                        self.pending.extend_from_slice(&data);
                    }
                }
            }
        }
    }
}
