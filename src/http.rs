//! The HTTP API: the kv-db / raftexample interface at the root (`PUT /KEY`, `GET /KEY`,
//! `POST /ID`, `DELETE /ID`) and a versioned API under `/v1` with compare-and-swap, range scans,
//! stale reads, members and status, the administration `ondisk ctl` uses (adding learners and
//! voters, leader transfer, snapshots, backups), plus `/health` and `/metrics`.
//!
//! Keys come from the raw request path, percent-decoded to bytes, so any key the REPL can hold can
//! be addressed here too. Values travel as raw bodies. Every error is mapped in one place,
//! [`ApiError`], to a status code and a JSON body.

use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use axum::body::Body;
use axum::body::Bytes;
use axum::extract::DefaultBodyLimit;
use axum::extract::FromRequest;
use axum::extract::RawQuery;
use axum::extract::Request;
use axum::extract::State;
use axum::http::header;
use axum::http::HeaderValue;
use axum::http::Method;
use axum::http::StatusCode;
use axum::http::Uri;
use axum::response::IntoResponse;
use axum::response::Response;
use axum::routing::delete;
use axum::routing::get;
use axum::routing::post;
use axum::Json;
use axum::Router;
use base64::Engine;
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;
use tokio::net::TcpListener;

use crate::cli::split_host_port;
use crate::error::Error;
use crate::node::Node;
use crate::node::Role;
use crate::store;
use crate::telemetry;
use crate::types::Command;
use crate::types::CommandResult;

/// Pairs a scan page holds when the request names no `limit`.
const DEFAULT_SCAN_LIMIT: usize = 1000;
/// The largest `limit` a scan accepts; pages are bounded by bytes as well, so a client paging
/// through a range (as `ondisk ctl scan` does) asks for this many and lets the bytes decide.
pub const MAX_SCAN_LIMIT: usize = 100_000;
/// Bytes of keys and values a scan page holds at most (past its first pair), whatever its count
/// limit: the answer and its JSON copy stay a few MiB however large the values, and a client
/// reads any range page by page with flat memory on both sides.
const SCAN_PAGE_BYTES: usize = 4 << 20;
/// The scan query parameter naming the key a page starts at: a previous page's `next`, as is.
pub const SCAN_START_PARAM: &str = "start";
/// `/health` must answer well before a load balancer's own timeout.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(1);
/// Methods the kv-db interface serves at the root, for the `Allow` header of a 405.
const KVDB_METHODS: &str = "GET, PUT, POST, DELETE";

/// What every handler shares.
#[derive(Clone)]
struct ApiState {
    node: Arc<Node>,
    metrics: Option<PrometheusHandle>,
}

/// Builds the API. `metrics` is the process's Prometheus recorder, when one is installed. A body
/// over the node's `-max-request-bytes` is refused with 413 as it streams in, never buffered whole.
pub fn router(node: Arc<Node>, metrics: Option<PrometheusHandle>) -> Router {
    let body_limit = usize::try_from(node.max_request_bytes()).unwrap_or(usize::MAX);
    Router::new()
        .route("/v1/kv/", get(scan))
        .route("/v1/kv/{*key}", get(v1_get).put(v1_put).delete(v1_delete))
        .route("/v1/members", get(members).post(add_member))
        .route("/v1/members/{id}", delete(remove_member))
        .route("/v1/transfer-leader", post(transfer_leader))
        .route("/v1/snapshot", post(snapshot))
        .route("/v1/backup", get(backup))
        .route("/v1/status", get(status))
        .route("/health", get(health))
        .route("/metrics", get(render_metrics))
        .fallback(kvdb)
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(ApiState { node, metrics })
}

/// Serves `router` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}

/// Every way a request can fail, and the one place that turns each into a response.
#[derive(Debug)]
enum ApiError {
    BadRequest(String),
    NotFound,
    PreconditionFailed(Option<Vec<u8>>),
    NotImplemented(String),
    MethodNotAllowed(&'static str),
    Node(Error),
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        ApiError::Node(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = |status: StatusCode, message: String| {
            (status, Json(json!({ "error": message }))).into_response()
        };
        match self {
            ApiError::BadRequest(message) => body(StatusCode::BAD_REQUEST, message),
            ApiError::NotFound => body(StatusCode::NOT_FOUND, "key not found".into()),
            ApiError::PreconditionFailed(current) => (
                StatusCode::PRECONDITION_FAILED,
                Json(json!({
                    "error": "precondition failed",
                    "current": current.map(|value| encoded(&value)),
                })),
            )
                .into_response(),
            ApiError::NotImplemented(message) => body(StatusCode::NOT_IMPLEMENTED, message),
            ApiError::MethodNotAllowed(allow) => {
                let mut response =
                    body(StatusCode::METHOD_NOT_ALLOWED, "method not allowed".into());
                response
                    .headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static(allow));
                response
            }
            ApiError::Node(e) => {
                let status = match &e {
                    Error::Timeout { .. } | Error::ShuttingDown | Error::OutcomeUnknown { .. } => {
                        StatusCode::SERVICE_UNAVAILABLE
                    }
                    Error::RequestTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
                    Error::Refused(_) => StatusCode::CONFLICT,
                    Error::DiskFull { .. } => StatusCode::INSUFFICIENT_STORAGE,
                    Error::Removed => StatusCode::GONE,
                    Error::Config(_) => StatusCode::BAD_REQUEST,
                    _ => StatusCode::INTERNAL_SERVER_ERROR,
                };
                let mut response = body(status, e.to_string());
                if e.retry_is_safe() {
                    response
                        .headers_mut()
                        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                }
                response
            }
        }
    }
}

type ApiResult = Result<Response, ApiError>;

/// A request body. One over the node's `-max-request-bytes` is refused with the same error as
/// any other request over the limit, rather than with the framework's own wording.
struct RequestBody(Bytes);

impl FromRequest<ApiState> for RequestBody {
    type Rejection = Response;

    async fn from_request(request: Request, api: &ApiState) -> Result<Self, Self::Rejection> {
        let announced = request
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|len| len.to_str().ok()?.parse::<u64>().ok());
        match Bytes::from_request(request, api).await {
            Ok(bytes) => Ok(RequestBody(bytes)),
            Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                Err(ApiError::Node(Error::RequestTooLarge {
                    size: announced,
                    limit: api.node.max_request_bytes(),
                })
                .into_response())
            }
            Err(rejection) => Err(rejection.into_response()),
        }
    }
}

/// Runs a handler, recording its outcome and latency under `op`.
async fn timed(op: &'static str, work: impl std::future::Future<Output = ApiResult>) -> Response {
    let started = Instant::now();
    let response = work.await.unwrap_or_else(IntoResponse::into_response);
    telemetry::record_request(op, response.status().as_u16(), started.elapsed());
    response
}

/// A value as JSON: UTF-8 text as is, anything else as base64, with the encoding named.
fn encoded(bytes: &[u8]) -> serde_json::Value {
    match std::str::from_utf8(bytes) {
        Ok(text) => json!({ "value": text, "encoding": Encoding::Utf8 }),
        Err(_) => json!({
            "value": base64::engine::general_purpose::STANDARD.encode(bytes),
            "encoding": Encoding::Base64,
        }),
    }
}

fn raw_value(value: Vec<u8>) -> Response {
    ([(header::CONTENT_TYPE, "application/octet-stream")], value).into_response()
}

fn no_content() -> Response {
    StatusCode::NO_CONTENT.into_response()
}

/// The key addressed by `path` after `prefix`, percent-decoded to bytes.
fn key_from_path(path: &str, prefix: &str) -> Result<Vec<u8>, ApiError> {
    let raw = path.strip_prefix(prefix).unwrap_or("");
    if raw.is_empty() {
        return Err(ApiError::BadRequest("missing key in the path".into()));
    }
    Ok(percent_encoding::percent_decode_str(raw).collect())
}

/// Query parameters, percent-decoded to bytes (no `+`-as-space: a `+` is a `+`). Unknown names
/// are refused so a typo never silently changes a request's meaning.
struct Query(Vec<(String, Vec<u8>)>);

impl Query {
    fn parse(raw: Option<String>, allowed: &[&str]) -> Result<Self, ApiError> {
        let mut pairs = Vec::new();
        for part in raw
            .as_deref()
            .unwrap_or("")
            .split('&')
            .filter(|p| !p.is_empty())
        {
            let (name, value) = part.split_once('=').unwrap_or((part, ""));
            let name = percent_encoding::percent_decode_str(name)
                .decode_utf8_lossy()
                .into_owned();
            if !allowed.contains(&name.as_str()) {
                return Err(ApiError::BadRequest(format!(
                    "unknown query parameter {name:?}"
                )));
            }
            pairs.push((name, percent_encoding::percent_decode_str(value).collect()));
        }
        Ok(Query(pairs))
    }

    fn get(&self, name: &str) -> Option<&[u8]> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }

    fn text(&self, name: &str) -> Result<Option<&str>, ApiError> {
        self.get(name)
            .map(|v| {
                std::str::from_utf8(v)
                    .map_err(|_| ApiError::BadRequest(format!("{name} is not UTF-8")))
            })
            .transpose()
    }

    /// `consistency=linearizable` (the default) or `consistency=stale`.
    fn stale(&self) -> Result<bool, ApiError> {
        match self.text("consistency")? {
            None | Some("linearizable") => Ok(false),
            Some("stale") => Ok(true),
            Some(other) => Err(ApiError::BadRequest(format!(
                "consistency must be linearizable or stale, not {other:?}"
            ))),
        }
    }
}

/// The kv-db / raftexample interface: everything not matched by a more specific route.
async fn kvdb(
    State(api): State<ApiState>,
    method: Method,
    uri: Uri,
    RequestBody(body): RequestBody,
) -> Response {
    let op = match method {
        Method::GET => "get",
        Method::PUT => "put",
        Method::POST => "add_member",
        Method::DELETE => "remove_member",
        _ => "other",
    };
    timed(op, async move {
        match method {
            Method::GET => {
                let key = key_from_path(uri.path(), "/")?;
                api.node
                    .get(&key)
                    .await?
                    .map(raw_value)
                    .ok_or(ApiError::NotFound)
            }
            Method::PUT => {
                let key = key_from_path(uri.path(), "/")?;
                api.node.put(key, body.to_vec()).await?;
                Ok(no_content())
            }
            Method::POST | Method::DELETE => {
                let id = uri.path().trim_start_matches('/');
                let id: u64 = id.parse().map_err(|_| {
                    ApiError::BadRequest(format!("node id must be a number, not {id:?}"))
                })?;
                if method == Method::POST {
                    let url = std::str::from_utf8(&body)
                        .map_err(|_| ApiError::BadRequest("the peer URL is not UTF-8".into()))?
                        .trim();
                    let addr = url
                        .strip_prefix("http://")
                        .unwrap_or(url)
                        .trim_end_matches('/');
                    split_host_port(addr).map_err(|e| ApiError::BadRequest(e.to_string()))?;
                    api.node.add_member(id, addr.to_string()).await?;
                } else {
                    api.node.remove_member(id).await?;
                }
                Ok(no_content())
            }
            _ => Err(ApiError::MethodNotAllowed(KVDB_METHODS)),
        }
    })
    .await
}

async fn v1_get(State(api): State<ApiState>, uri: Uri, RawQuery(query): RawQuery) -> Response {
    timed("get", async move {
        let key = key_from_path(uri.path(), "/v1/kv/")?;
        let query = Query::parse(query, &["consistency"])?;
        let value = if query.stale()? {
            api.node.get_stale(&key).await?
        } else {
            api.node.get(&key).await?
        };
        value.map(raw_value).ok_or(ApiError::NotFound)
    })
    .await
}

async fn v1_put(
    State(api): State<ApiState>,
    uri: Uri,
    RawQuery(query): RawQuery,
    RequestBody(body): RequestBody,
) -> Response {
    let query = Query::parse(query, &["prev_value", "prev_exist"]);
    let conditional = matches!(&query, Ok(q) if !q.0.is_empty());
    timed(if conditional { "cas" } else { "put" }, async move {
        let key = key_from_path(uri.path(), "/v1/kv/")?;
        let query = query?;
        let expected = match (query.get("prev_value"), query.text("prev_exist")?) {
            (None, None) => {
                api.node.put(key, body.to_vec()).await?;
                return Ok(no_content());
            }
            (Some(value), None | Some("true")) => Some(value.to_vec()),
            (None, Some("false")) => None,
            (Some(_), Some("false")) => {
                return Err(ApiError::BadRequest(
                    "prev_value contradicts prev_exist=false".into(),
                ))
            }
            (None, Some("true")) => {
                return Err(ApiError::BadRequest(
                    "prev_exist=true needs prev_value".into(),
                ))
            }
            (_, Some(other)) => {
                return Err(ApiError::BadRequest(format!(
                    "prev_exist must be true or false, not {other:?}"
                )))
            }
        };
        let command = Command::CompareAndSwap {
            key,
            expected,
            value: body.to_vec(),
        };
        match api.node.propose("cas", command).await? {
            CommandResult::Applied => Ok(no_content()),
            CommandResult::PreconditionFailed { current } => {
                Err(ApiError::PreconditionFailed(current))
            }
        }
    })
    .await
}

async fn v1_delete(State(api): State<ApiState>, uri: Uri) -> Response {
    timed("delete", async move {
        let key = key_from_path(uri.path(), "/v1/kv/")?;
        api.node.delete(key).await?;
        Ok(no_content())
    })
    .await
}

/// `GET /v1/kv/?prefix=P&limit=N&start=K`: one page of the pairs under `P` from `K` on, in key
/// order, bounded by count and by [`SCAN_PAGE_BYTES`], with `next` naming where the next page
/// starts. Each page is read on its own (linearizably unless `consistency=stale`).
async fn scan(State(api): State<ApiState>, RawQuery(query): RawQuery) -> Response {
    timed("scan", async move {
        let query = Query::parse(query, &["prefix", SCAN_START_PARAM, "limit", "consistency"])?;
        let prefix = query.get("prefix").unwrap_or_default();
        let start = query.get(SCAN_START_PARAM).unwrap_or_default();
        let limit = match query.text("limit")? {
            None => DEFAULT_SCAN_LIMIT,
            Some(text) => text
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=MAX_SCAN_LIMIT).contains(n))
                .ok_or_else(|| {
                    ApiError::BadRequest(format!("limit must be 1..={MAX_SCAN_LIMIT}"))
                })?,
        };
        if !query.stale()? {
            api.node.read_barrier("scan").await?;
        }
        let page = api
            .node
            .scan_stale(prefix, start, limit, SCAN_PAGE_BYTES)
            .await?;
        let items: Vec<ScanItem> = page.pairs.into_iter().map(ScanItem::new).collect();
        Ok(Json(ScanAnswer {
            count: items.len(),
            items,
            next: page.next.map(|key| percent_encode(&key)),
        })
        .into_response())
    })
    .await
}

/// The answer to a scan: one page, and where the next one starts. Also what `ondisk ctl scan`
/// reads.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct ScanAnswer {
    /// Pairs in this page.
    pub count: usize,
    /// The pairs, in key order.
    pub items: Vec<ScanItem>,
    /// The [`SCAN_START_PARAM`] value (percent-encoded) that fetches the next page; `null` on
    /// the last page.
    pub next: Option<String>,
}

/// One pair of a scan page.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct ScanItem {
    /// The key, written as `encoding` says.
    pub key: String,
    /// The value, written as `encoding` says.
    pub value: String,
    pub encoding: Encoding,
}

/// How bytes are written in JSON: text when they are UTF-8, so answers stay readable, and base64
/// otherwise, so any bytes survive. A scan item uses one encoding for its key and its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Encoding {
    /// UTF-8 text, as is.
    #[serde(rename = "utf-8")]
    Utf8,
    /// Base64 of bytes that are not UTF-8 (for a scan item: of both, when either is not).
    #[serde(rename = "base64")]
    Base64,
}

impl ScanItem {
    /// Takes the pair's buffers over as strings when they are UTF-8, so a page is not copied.
    fn new((key, value): (Vec<u8>, Vec<u8>)) -> Self {
        match (String::from_utf8(key), String::from_utf8(value)) {
            (Ok(key), Ok(value)) => ScanItem {
                key,
                value,
                encoding: Encoding::Utf8,
            },
            (key, value) => {
                let b64 = |text: Result<String, std::string::FromUtf8Error>| {
                    let bytes = text.map_or_else(|e| e.into_bytes(), String::into_bytes);
                    base64::engine::general_purpose::STANDARD.encode(bytes)
                };
                ScanItem {
                    key: b64(key),
                    value: b64(value),
                    encoding: Encoding::Base64,
                }
            }
        }
    }
}

/// Percent-encodes every byte but ASCII letters and digits, so any key survives a URL path or
/// query value (and decodes back exactly, as the API decodes both).
pub fn percent_encode(bytes: &[u8]) -> String {
    percent_encoding::percent_encode(bytes, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// The members, the leader, and the log index of the entry that set the membership (what
/// `prev_index` must name).
async fn members(State(api): State<ApiState>) -> Response {
    timed("members", async move {
        let status = api.node.status();
        Ok(Json(json!({
            "leader": status.leader,
            "membership_index": api.node.membership_index(),
            "members": status.members,
        }))
        .into_response())
    })
    .await
}

/// Parses a JSON request body, refusing unknown fields so a typo is never silently ignored.
fn json_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::BadRequest(format!("invalid body: {e}")))
}

/// The body of `POST /v1/members`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct AddMember {
    id: u64,
    /// The new node's raft address, HOST:PORT.
    addr: String,
    /// `voter` (the default: a learner until caught up, then promoted) or `learner`.
    #[serde(default)]
    role: Option<String>,
    /// Refuse unless the membership was last set at this log index.
    #[serde(default)]
    prev_index: Option<u64>,
}

/// `POST /v1/members` with `{"id", "addr", "role", "prev_index"}`: adds a voter or a learner.
async fn add_member(State(api): State<ApiState>, RequestBody(body): RequestBody) -> Response {
    timed("add_member", async move {
        let add: AddMember = json_body(&body)?;
        let role = match add.role.as_deref() {
            None | Some("voter") => Role::Voter,
            Some("learner") => Role::Learner,
            Some(other) => {
                return Err(ApiError::BadRequest(format!(
                    "role must be voter or learner, not {other:?}"
                )))
            }
        };
        split_host_port(&add.addr).map_err(|e| ApiError::BadRequest(e.to_string()))?;
        api.node
            .add_node(add.id, add.addr, role, add.prev_index)
            .await?;
        Ok(no_content())
    })
    .await
}

/// `DELETE /v1/members/ID`: removes a voter or a learner.
async fn remove_member(State(api): State<ApiState>, uri: Uri) -> Response {
    timed("remove_member", async move {
        let id = node_id_from_path(uri.path(), "/v1/members/")?;
        api.node.remove_member(id).await?;
        Ok(no_content())
    })
    .await
}

/// A node id at the end of `path` after `prefix`.
fn node_id_from_path(path: &str, prefix: &str) -> Result<u64, ApiError> {
    let id = path
        .strip_prefix(prefix)
        .unwrap_or(path)
        .trim_start_matches('/');
    id.parse()
        .map_err(|_| ApiError::BadRequest(format!("node id must be a number, not {id:?}")))
}

/// The body of `POST /v1/transfer-leader`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct TransferLeader {
    to: u64,
}

/// `POST /v1/transfer-leader` with `{"to": ID}`: answers once this node sees `ID` lead.
async fn transfer_leader(State(api): State<ApiState>, RequestBody(body): RequestBody) -> Response {
    timed("transfer_leader", async move {
        let TransferLeader { to } = json_body(&body)?;
        api.node.transfer_leader(to).await?;
        Ok(Json(json!({ "leader": to })).into_response())
    })
    .await
}

/// `POST /v1/snapshot`: takes a snapshot on this node now and answers with the index it covers.
async fn snapshot(State(api): State<ApiState>) -> Response {
    timed("snapshot", async move {
        let index = api.node.snapshot().await?;
        Ok(Json(json!({ "index": index })).into_response())
    })
    .await
}

/// Header naming the log index a backup covers.
pub const BACKUP_INDEX_HEADER: &str = "x-ondisk-log-index";
/// Header naming the term of the entry at that index.
pub const BACKUP_TERM_HEADER: &str = "x-ondisk-log-term";
/// Pieces of a backup stream buffered between the reading thread and the connection.
const BACKUP_QUEUE: usize = 4;
/// Bytes read from the snapshot stream per piece sent.
const BACKUP_PIECE_BYTES: usize = 256 << 10;

/// `GET /v1/backup`: a fresh snapshot of this node's state machine in the snapshot stream format
/// (header with log id and membership, pairs, checksum trailer), streamed as it is read, so memory
/// stays flat whatever the state's size. A failure midway cuts the stream short, which the
/// client's checksum check catches.
async fn backup(State(api): State<ApiState>) -> Response {
    timed("backup", async move {
        let snapshot = api.node.backup().await?;
        let log_id = snapshot.meta.last_log_id;
        let received = store::snapshot_chunks(snapshot.snapshot, BACKUP_PIECE_BYTES, BACKUP_QUEUE);
        let body = Body::from_stream(tokio_stream_of(received));
        let mut response =
            ([(header::CONTENT_TYPE, "application/octet-stream")], body).into_response();
        let headers = response.headers_mut();
        headers.insert(BACKUP_INDEX_HEADER, log_id.map_or(0, |id| id.index).into());
        headers.insert(
            BACKUP_TERM_HEADER,
            log_id.map_or(0, |id| id.leader_id.term).into(),
        );
        Ok(response)
    })
    .await
}

/// A receiver of stream pieces as a `futures` stream, for a response body.
fn tokio_stream_of(
    mut received: tokio::sync::mpsc::Receiver<std::io::Result<Vec<u8>>>,
) -> impl futures::Stream<Item = std::io::Result<Vec<u8>>> {
    futures::stream::poll_fn(move |cx| received.poll_recv(cx))
}

async fn status(State(api): State<ApiState>) -> Response {
    timed("status", async move {
        Ok(Json(api.node.status()).into_response())
    })
    .await
}

/// 200 while this node can serve a linearizable read (a leader with a quorum is reachable and
/// this node has caught up to its read index), 503 with the reason otherwise.
async fn health(State(api): State<ApiState>) -> Response {
    timed("health", async move {
        let within = HEALTH_TIMEOUT.min(api.node.timeout());
        Ok(
            match api.node.read_barrier_within("health check", within).await {
                Ok(()) => Json(json!({ "health": true })).into_response(),
                Err(e) => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    Json(json!({ "health": false, "reason": e.to_string() })),
                )
                    .into_response(),
            },
        )
    })
    .await
}

async fn render_metrics(State(api): State<ApiState>) -> Response {
    match &api.metrics {
        Some(handle) => (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            telemetry::render(handle, &api.node).await,
        )
            .into_response(),
        None => ApiError::NotImplemented("metrics are not enabled in this process".into())
            .into_response(),
    }
}
