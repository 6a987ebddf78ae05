//! The HTTP side of `ondisk ctl`: requests to the first reachable endpoint, answers read into the
//! contract's types (`crate::api`, `crate::api::http`), and a node's error answers turned into
//! [`CtlError`]s that keep what a command may act on (a lease or key not found, a compacted
//! revision).

use std::io;
use std::path::Path;
use std::path::PathBuf;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::api::http::ErrorBody;
use crate::api::http::PreconditionFailed;

use super::CtlError;
use super::Result;

/// How long connecting to one endpoint may take before the next is tried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// A complete answer.
pub(super) struct Answer {
    pub(super) endpoint: String,
    pub(super) body: Vec<u8>,
}

impl Answer {
    /// The body as the JSON document `T`.
    pub(super) fn parse<T: DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_slice(&self.body).map_err(|e| CtlError::BadAnswer {
            endpoint: self.endpoint.clone(),
            reason: format!("not the JSON expected: {e}"),
        })
    }
}

/// A response whose body is still to be read (a backup, a watch stream).
pub(super) type Streaming = ureq::http::Response<ureq::Body>;

/// `--cacert`, `--cert` and `--key`: how endpoints are reached over TLS.
#[derive(Debug, Default)]
pub(super) struct TlsFlags {
    pub(super) cacert: Option<PathBuf>,
    pub(super) cert: Option<PathBuf>,
    pub(super) key: Option<PathBuf>,
}

impl TlsFlags {
    /// ureq's TLS settings: trust only `--cacert` when given, present `--cert` when given.
    fn config(&self) -> Result<ureq::tls::TlsConfig> {
        let mut config = ureq::tls::TlsConfig::builder();
        if let Some(cacert) = &self.cacert {
            let roots = read_pem("--cacert", cacert, |pem| {
                ureq::tls::Certificate::from_pem(pem)
            })?;
            config = config.root_certs(ureq::tls::RootCerts::new_with_certs(&[roots]));
        }
        if let (Some(cert), Some(key)) = (&self.cert, &self.key) {
            let chain = read_pem("--cert", cert, |pem| ureq::tls::Certificate::from_pem(pem))?;
            let key = read_pem("--key", key, |pem| ureq::tls::PrivateKey::from_pem(pem))?;
            config = config.client_cert(Some(ureq::tls::ClientCert::new_with_certs(&[chain], key)));
        }
        Ok(config.build())
    }

    fn any(&self) -> bool {
        self.cacert.is_some() || self.cert.is_some()
    }
}

/// One PEM object from the file a flag names.
fn read_pem<T>(
    flag: &str,
    path: &Path,
    parse: impl FnOnce(&[u8]) -> std::result::Result<T, ureq::Error>,
) -> Result<T> {
    let bytes = std::fs::read(path)
        .map_err(|e| CtlError::Input(format!("cannot read {flag} {}: {e}", path.display())))?;
    parse(&bytes).map_err(|e| CtlError::Input(format!("{flag} {}: {e}", path.display())))
}

/// Talks to the cluster through the first endpoint that accepts a connection. Cheap to clone, so
/// a background thread (a lease's keep-alive) can have its own.
#[derive(Clone)]
pub(super) struct Client {
    pub(super) endpoints: Vec<String>,
    /// `https` when TLS flags are given or an endpoint says `https://`, `http` otherwise.
    scheme: &'static str,
    agent: ureq::Agent,
    /// For streams: no limit on the whole transfer, only on waiting for the answer to start.
    streaming_agent: ureq::Agent,
    /// Sent as `Authorization` with every request (`--user`).
    authorization: Option<String>,
}

impl Client {
    pub(super) fn new(
        endpoints: &[String],
        timeout: Duration,
        tls: &TlsFlags,
        authorization: Option<String>,
    ) -> Result<Self> {
        let secure = tls.any() || endpoints.iter().any(|e| e.trim().starts_with("https://"));
        let endpoints = endpoints
            .iter()
            .map(|e| {
                let e = e.trim();
                e.strip_prefix("http://")
                    .or_else(|| e.strip_prefix("https://"))
                    .unwrap_or(e)
                    .trim_end_matches('/')
                    .to_string()
            })
            .filter(|e| !e.is_empty())
            .collect();
        let tls_config = tls.config()?;
        let agent = |global: Option<Duration>| -> ureq::Agent {
            ureq::Agent::config_builder()
                .tls_config(tls_config.clone())
                .http_status_as_error(false)
                .timeout_connect(Some(CONNECT_TIMEOUT))
                .timeout_global(global)
                .timeout_recv_response(Some(timeout))
                .max_redirects(0)
                .build()
                .into()
        };
        Ok(Client {
            endpoints,
            scheme: if secure { "https" } else { "http" },
            agent: agent(Some(timeout)),
            streaming_agent: agent(None),
            authorization,
        })
    }

    /// Sends a request to the first endpoint that can be connected to, and fails with the node's
    /// error message unless the answer is a success.
    pub(super) fn call(&self, method: &str, path: &str, body: &[u8]) -> Result<Answer> {
        let mut down = Vec::new();
        for endpoint in &self.endpoints {
            match self.send(&self.agent, endpoint, method, path, body) {
                Ok(response) => return complete(endpoint, response),
                Err(Attempt::Down(reason)) => down.push(format!("{endpoint}: {reason}")),
                Err(Attempt::Failed(e)) => return Err(e),
            }
        }
        Err(CtlError::Unreachable(down.join("; ")))
    }

    /// `GET path`, its answer read as `T`.
    pub(super) fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.call("GET", path, b"")?.parse()
    }

    /// `method path` with `request` as its JSON body, the answer read as `T`.
    pub(super) fn send_json<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        request: &impl Serialize,
    ) -> Result<T> {
        let body = serde_json::to_vec(request)
            .map_err(|e| CtlError::Refused(format!("cannot encode the request: {e}")))?;
        self.call(method, path, &body)?.parse()
    }

    /// Sends a request to `endpoint` alone.
    pub(super) fn call_one(
        &self,
        endpoint: &str,
        method: &str,
        path: &str,
        body: &[u8],
    ) -> Result<Answer> {
        match self.send(&self.agent, endpoint, method, path, body) {
            Ok(response) => complete(endpoint, response),
            Err(Attempt::Down(reason)) => Err(CtlError::Unreachable(reason)),
            Err(Attempt::Failed(e)) => Err(e),
        }
    }

    /// Starts a `GET` whose body is to be streamed, on the first endpoint from position `first`
    /// on (wrapping around) that answers with a success; returns that endpoint's position.
    pub(super) fn open_from(&self, first: usize, path: &str) -> Result<(usize, Streaming)> {
        let mut down = Vec::new();
        let count = self.endpoints.len();
        for position in (0..count).map(|i| (first + i) % count) {
            let endpoint = &self.endpoints[position];
            match self.send(&self.streaming_agent, endpoint, "GET", path, b"") {
                Ok(response) if response.status().is_success() => return Ok((position, response)),
                Ok(response) => return Err(failure(endpoint, response)),
                Err(Attempt::Down(reason)) => down.push(format!("{endpoint}: {reason}")),
                Err(Attempt::Failed(e)) => return Err(e),
            }
        }
        Err(CtlError::Unreachable(down.join("; ")))
    }

    fn send(
        &self,
        agent: &ureq::Agent,
        endpoint: &str,
        method: &str,
        path: &str,
        body: &[u8],
    ) -> std::result::Result<Streaming, Attempt> {
        let mut request = ureq::http::Request::builder()
            .method(method)
            .uri(format!("{}://{endpoint}{path}", self.scheme));
        if let Some(authorization) = &self.authorization {
            request = request.header("authorization", authorization);
        }
        let request = request.body(body.to_vec()).map_err(|e| {
            Attempt::Failed(CtlError::Refused(format!(
                "invalid endpoint {endpoint:?}: {e}"
            )))
        })?;
        agent.run(request).map_err(|e| match e {
            // Nothing reached the node: the next endpoint may be asked instead.
            ureq::Error::ConnectionFailed
            | ureq::Error::HostNotFound
            | ureq::Error::Timeout(ureq::Timeout::Connect | ureq::Timeout::Resolve) => {
                Attempt::Down(e.to_string())
            }
            ureq::Error::Io(io) if io.kind() == io::ErrorKind::ConnectionRefused => {
                Attempt::Down(io.to_string())
            }
            // A handshake that failed sent no request.
            ureq::Error::Rustls(tls) => Attempt::Down(format!(
                "TLS handshake failed: {}",
                crate::tls::explain(&io::Error::other(tls))
            )),
            ureq::Error::Io(io) if crate::tls::is_handshake_failure(&io) => Attempt::Down(
                format!("TLS handshake failed: {}", crate::tls::explain(&io)),
            ),
            ureq::Error::Io(io) if self.scheme == "https" && io.kind() == io::ErrorKind::UnexpectedEof => {
                Attempt::Failed(CtlError::Refused(format!(
                    "{endpoint} closed the connection: if it is a plaintext port, connect without --cacert/--cert and with http:// (a request sent may have taken effect)"
                )))
            }
            other => Attempt::Failed(CtlError::Refused(format!(
                "request to {endpoint} failed (its outcome is unknown): {other}"
            ))),
        })
    }
}

/// How one endpoint's attempt ended short of an answer.
enum Attempt {
    /// It could not be connected to; nothing was sent.
    Down(String),
    /// It failed in a way another endpoint would not fix.
    Failed(CtlError),
}

/// Reads a response's body; a status other than success becomes the node's error.
fn complete(endpoint: &str, mut response: Streaming) -> Result<Answer> {
    if !response.status().is_success() {
        return Err(failure(endpoint, response));
    }
    let body = response
        .body_mut()
        .with_config()
        .read_to_vec()
        .map_err(|e| CtlError::BadAnswer {
            endpoint: endpoint.to_string(),
            reason: e.to_string(),
        })?;
    Ok(Answer {
        endpoint: endpoint.to_string(),
        body,
    })
}

/// The error a node's unsuccessful answer carries, in the words of its [`ErrorBody`].
fn failure(endpoint: &str, mut response: Streaming) -> CtlError {
    let status = response.status().as_u16();
    let body = response.body_mut().read_to_vec().unwrap_or_default();
    if status == 412 {
        if let Ok(refusal) = serde_json::from_slice::<PreconditionFailed>(&body) {
            let current = match refusal.current {
                Some(current) => match current.encoding {
                    crate::api::http::Encoding::Base64 => format!("{} (base64)", current.value),
                    crate::api::http::Encoding::Utf8 => format!("{:?}", current.value),
                },
                None => "absent".to_string(),
            };
            return CtlError::Refused(format!("{}: the current value is {current}", refusal.error));
        }
    }
    let Ok(error) = serde_json::from_slice::<ErrorBody>(&body) else {
        // Not the API's error document: what answered is not the API (a TLS port reached in
        // plaintext says so in words).
        let text = String::from_utf8_lossy(&body);
        let text = text.trim();
        return if text.is_empty() || text.len() > 200 {
            CtlError::Refused(format!("{endpoint} answered {}", response.status()))
        } else {
            CtlError::Refused(format!("{endpoint} answered {}: {text}", response.status()))
        };
    };
    match (status, error.compact_revision) {
        (404, _) => CtlError::NotFound(error.error),
        (410, Some(compact_revision)) => CtlError::Compacted {
            reason: error.error,
            compact_revision,
        },
        _ => CtlError::Refused(error.error),
    }
}
