//! The HTTP API: the kv-db / raftexample interface at the root (`PUT /KEY`, `GET /KEY`,
//! `POST /ID`, `DELETE /ID`) and a versioned API under `/v1`: keys with their revisions, range
//! scans at a revision, compare-and-swap, transactions, compaction, watches streamed as
//! newline-delimited JSON, leases, members and status, the administration `ondisk ctl` uses
//! (adding learners and voters, leader transfer, snapshots, backups), plus `/health` and
//! `/metrics`. The routes, parameters and headers are defined in `crate::api::http`.
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
use axum::extract::FromRequestParts;
use axum::extract::Path;
use axum::extract::RawQuery;
use axum::extract::Request;
use axum::extract::State;
use axum::http::header;
use axum::http::request::Parts;
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

use crate::api;
use crate::api::http::header as api_header;
use crate::api::http::param;
use crate::api::http::percent_encode;
use crate::api::http::AddMemberRequest;
use crate::api::http::ErrorBody;
use crate::api::http::HealthAnswer;
use crate::api::http::Member;
use crate::api::http::MembersAnswer;
use crate::api::http::PreconditionFailed;
use crate::api::http::ScanAnswer;
use crate::api::http::ScanItem;
use crate::api::http::SnapshotAnswer;
use crate::api::http::StatusAnswer;
use crate::api::http::TransferLeaderAnswer;
use crate::api::http::TransferLeaderRequest;
use crate::api::http::MAX_SCAN_LIMIT;
use crate::api::AuthError;
use crate::api::Compare;
use crate::api::CompareResult;
use crate::api::CompareTarget;
use crate::api::PutRequest;
use crate::api::RangeRequest;
use crate::api::RequestOp;
use crate::api::ResponseOp;
use crate::api::TxnRequest;
use crate::cli::split_host_port;
use crate::error::Error;
use crate::node::Caller;
use crate::node::Credentials;
use crate::node::MemberInfo;
use crate::node::Node;
use crate::node::Role;
use crate::store;
use crate::telemetry;
use crate::types::ApplyError;

/// Pairs a scan page holds when the request names no `limit`.
const DEFAULT_SCAN_LIMIT: usize = 1000;
/// Bytes of keys and values a scan page (or a `/v1/range` answer) holds at most past its first
/// key, whatever its count limit: the answer and its JSON copy stay a few MiB however large the
/// values, and a client reads any range page by page with flat memory on both sides.
const SCAN_PAGE_BYTES: usize = 4 << 20;
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
        .route(api::http::KV, get(scan))
        .route("/v1/kv/{*key}", get(v1_get).put(v1_put).delete(v1_delete))
        .route(api::http::RANGE, post(range))
        .route(api::http::TXN, post(txn))
        .route(api::http::COMPACT, post(compact))
        .route(api::http::WATCH, get(watch))
        .route("/v1/watch/{*key}", get(watch))
        .route(api::http::LEASES, get(leases).post(lease_grant))
        .route(
            "/v1/leases/{id}",
            get(lease_time_to_live).delete(lease_revoke),
        )
        .route("/v1/leases/{id}/keep-alive", post(lease_keep_alive))
        .route(api::http::MEMBERS, get(members).post(add_member))
        .route("/v1/members/{id}", delete(remove_member))
        .route(api::http::TRANSFER_LEADER, post(transfer_leader))
        .route(api::http::SNAPSHOT, post(snapshot))
        .route(api::http::BACKUP, get(backup))
        .route(api::http::STATUS, get(status))
        .route(api::http::HEALTH, get(health))
        .route(api::http::AUTHENTICATE, post(authenticate))
        .route(api::http::AUTH, post(change_auth))
        .route(api::http::AUTH_USERS, get(users))
        .route("/v1/auth/users/{name}", get(user))
        .route(api::http::AUTH_ROLES, get(roles))
        .route("/v1/auth/roles/{name}", get(role))
        .route("/metrics", get(render_metrics))
        .fallback(kvdb)
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(ApiState { node, metrics })
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
            let error = ErrorBody {
                error: message,
                compact_revision: None,
            };
            (status, Json(error)).into_response()
        };
        match self {
            ApiError::BadRequest(message) => body(StatusCode::BAD_REQUEST, message),
            ApiError::NotFound => body(StatusCode::NOT_FOUND, "key not found".into()),
            ApiError::PreconditionFailed(current) => (
                StatusCode::PRECONDITION_FAILED,
                Json(PreconditionFailed::new(current.as_deref())),
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
            ApiError::Node(Error::Request(ApplyError::Auth(refusal))) => {
                let status = if refusal.is_unauthenticated() {
                    StatusCode::UNAUTHORIZED
                } else if refusal == AuthError::PermissionDenied {
                    StatusCode::FORBIDDEN
                } else if refusal == AuthError::TooManyAttempts {
                    StatusCode::TOO_MANY_REQUESTS
                } else {
                    StatusCode::PRECONDITION_FAILED
                };
                let mut response = body(status, refusal.to_string());
                if status == StatusCode::UNAUTHORIZED {
                    response.headers_mut().insert(
                        header::WWW_AUTHENTICATE,
                        HeaderValue::from_static("Basic realm=\"ondisk\""),
                    );
                }
                response
            }
            ApiError::Node(Error::Request(refusal)) => {
                let status = match &refusal {
                    ApplyError::LeaseNotFound(_) | ApplyError::KeyNotFound => StatusCode::NOT_FOUND,
                    ApplyError::LeaseExists(_) => StatusCode::CONFLICT,
                    ApplyError::Compacted { .. } => StatusCode::GONE,
                    ApplyError::FutureRevision { .. }
                    | ApplyError::InvalidRequest(_)
                    | ApplyError::TooManyTxnOps { .. }
                    | ApplyError::DuplicateKeyInTxn => StatusCode::BAD_REQUEST,
                    ApplyError::Auth(_) => StatusCode::FORBIDDEN,
                };
                let compact_revision = match &refusal {
                    ApplyError::Compacted { compact_revision } => Some(*compact_revision),
                    _ => None,
                };
                let error = ErrorBody {
                    error: refusal.to_string(),
                    compact_revision,
                };
                (status, Json(error)).into_response()
            }
            ApiError::Node(e) => {
                let status = match &e {
                    Error::Timeout { .. } | Error::ShuttingDown | Error::OutcomeUnknown { .. } => {
                        StatusCode::SERVICE_UNAVAILABLE
                    }
                    Error::RequestTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
                    Error::Refused(_) | Error::Busy(_) => StatusCode::CONFLICT,
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

/// Who sent a request, from its `Authorization` header: a token (`Bearer`) or a name and
/// password (`Basic`); anonymous without one. Bad credentials are refused with 401 before the
/// handler runs.
struct Who(Caller);

impl FromRequestParts<ApiState> for Who {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, api: &ApiState) -> Result<Self, Response> {
        let credentials = match parts.headers.get(header::AUTHORIZATION) {
            None => Credentials::None,
            Some(value) => credentials(value).map_err(IntoResponse::into_response)?,
        };
        let caller = api.node.caller(credentials).await.map_err(ApiError::Node);
        caller.map(Who).map_err(IntoResponse::into_response)
    }
}

/// The credentials an `Authorization` header carries.
fn credentials(value: &HeaderValue) -> Result<Credentials, ApiError> {
    let malformed = || ApiError::Node(AuthError::InvalidToken.into());
    let value = value.to_str().map_err(|_| malformed())?;
    if let Some(token) = value.strip_prefix(api::http::BEARER) {
        return Ok(Credentials::Token(token.trim().to_string()));
    }
    let pair = value
        .strip_prefix(api::http::BASIC)
        .and_then(|encoded| {
            base64::engine::general_purpose::STANDARD
                .decode(encoded.trim())
                .ok()
        })
        .and_then(|decoded| String::from_utf8(decoded).ok())
        .ok_or_else(malformed)?;
    let (name, password) = pair.split_once(':').ok_or_else(malformed)?;
    Ok(Credentials::Password {
        name: name.to_string(),
        password: password.to_string(),
    })
}

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

fn put_request(key: Vec<u8>, value: Vec<u8>) -> PutRequest {
    PutRequest {
        key,
        value,
        ..PutRequest::default()
    }
}

/// Sets `key` to `value` if it holds `expected` now (`None`: if it is absent), as a transaction
/// that reads the key when the condition fails, to report what it holds instead.
fn compare_and_swap(key: Vec<u8>, expected: Option<Vec<u8>>, value: Vec<u8>) -> TxnRequest {
    let target = match expected {
        Some(expected) => CompareTarget::Value(expected),
        None => CompareTarget::CreateRevision(0),
    };
    TxnRequest {
        compare: vec![Compare {
            key: key.clone(),
            range_end: Vec::new(),
            target,
            result: CompareResult::Equal,
        }],
        success: vec![RequestOp::Put(put_request(key.clone(), value))],
        failure: vec![RequestOp::Range(RangeRequest {
            key,
            ..RangeRequest::default()
        })],
    }
}

fn raw_value(value: Vec<u8>) -> Response {
    ([(header::CONTENT_TYPE, "application/octet-stream")], value).into_response()
}

fn no_content() -> Response {
    StatusCode::NO_CONTENT.into_response()
}

/// The answer to a write on the versioned API: no body, and the revision the write left the
/// store at (a client orders its writes by it, or reads at it).
fn written_at(revision: i64) -> Response {
    let mut response = no_content();
    response
        .headers_mut()
        .insert(api_header::REVISION, revision.into());
    response
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

    /// A whole number, if given.
    fn number(&self, name: &str) -> Result<Option<i64>, ApiError> {
        self.text(name)?
            .map(|text| {
                text.parse::<i64>().map_err(|_| {
                    ApiError::BadRequest(format!("{name} must be a number, not {text:?}"))
                })
            })
            .transpose()
    }

    /// `true` or `false` (absent: false).
    fn flag(&self, name: &str) -> Result<bool, ApiError> {
        match self.text(name)? {
            None | Some("false") => Ok(false),
            Some("true") | Some("") => Ok(true),
            Some(other) => Err(ApiError::BadRequest(format!(
                "{name} must be true or false, not {other:?}"
            ))),
        }
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
    Who(caller): Who,
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
                    .get(&caller, &key)
                    .await?
                    .map(raw_value)
                    .ok_or(ApiError::NotFound)
            }
            Method::PUT => {
                let key = key_from_path(uri.path(), "/")?;
                api.node
                    .put(&caller, put_request(key, body.to_vec()))
                    .await?;
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
                    api.node.add_member(&caller, id, addr.to_string()).await?;
                } else {
                    api.node.remove_member(&caller, id).await?;
                }
                Ok(no_content())
            }
            _ => Err(ApiError::MethodNotAllowed(KVDB_METHODS)),
        }
    })
    .await
}

/// `GET /v1/kv/KEY`: the value as the body, the key's revisions and the store's revision in
/// headers (`crate::api::http::header`); `?revision=R` reads the key as it was at R.
async fn v1_get(
    State(api): State<ApiState>,
    Who(caller): Who,
    uri: Uri,
    RawQuery(query): RawQuery,
) -> Response {
    timed("get", async move {
        let key = key_from_path(uri.path(), api::http::KV)?;
        let query = Query::parse(query, &[param::CONSISTENCY, param::REVISION])?;
        let request = api::RangeRequest {
            key,
            revision: query.number(param::REVISION)?.unwrap_or(0),
            serializable: query.stale()?,
            ..api::RangeRequest::default()
        };
        let answer = api.node.range(&caller, request, usize::MAX).await?;
        let revision = answer.header.revision;
        let kv = answer.kvs.into_iter().next().ok_or(ApiError::NotFound)?;
        let mut response = raw_value(kv.value);
        let headers = response.headers_mut();
        for (name, number) in [
            (api_header::REVISION, revision),
            (api_header::CREATE_REVISION, kv.create_revision),
            (api_header::MOD_REVISION, kv.mod_revision),
            (api_header::VERSION, kv.version),
            (api_header::LEASE, kv.lease),
        ] {
            headers.insert(name, number.into());
        }
        Ok(response)
    })
    .await
}

async fn v1_put(
    State(api): State<ApiState>,
    Who(caller): Who,
    uri: Uri,
    RawQuery(query): RawQuery,
    RequestBody(body): RequestBody,
) -> Response {
    let query = Query::parse(query, &[param::PREV_VALUE, param::PREV_EXIST, param::LEASE]);
    let conditional = matches!(&query, Ok(q) if q.get(param::PREV_VALUE).is_some() || q.get(param::PREV_EXIST).is_some());
    timed(if conditional { "cas" } else { "put" }, async move {
        let key = key_from_path(uri.path(), api::http::KV)?;
        let query = query?;
        let lease = query.number(param::LEASE)?.unwrap_or(0);
        let expected = match (query.get(param::PREV_VALUE), query.text(param::PREV_EXIST)?) {
            (None, None) => {
                let put = PutRequest {
                    lease,
                    ..put_request(key, body.to_vec())
                };
                let written = api.node.put(&caller, put).await?;
                return Ok(written_at(written.header.revision));
            }
            _ if lease != 0 => {
                return Err(ApiError::BadRequest(
                    "a compare-and-swap put takes no lease: use /v1/txn".into(),
                ))
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
        let answer = api
            .node
            .txn(&caller, compare_and_swap(key, expected, body.to_vec()))
            .await?;
        if answer.succeeded {
            return Ok(written_at(answer.header.revision));
        }
        let current = match answer.responses.into_iter().next() {
            Some(ResponseOp::Range(range)) => range.kvs.into_iter().next().map(|kv| kv.value),
            _ => None,
        };
        Err(ApiError::PreconditionFailed(current))
    })
    .await
}

async fn v1_delete(State(api): State<ApiState>, Who(caller): Who, uri: Uri) -> Response {
    timed("delete", async move {
        let key = key_from_path(uri.path(), api::http::KV)?;
        let delete = crate::api::DeleteRangeRequest {
            key,
            ..crate::api::DeleteRangeRequest::default()
        };
        let deleted = api.node.delete_range(&caller, delete).await?;
        Ok(written_at(deleted.header.revision))
    })
    .await
}

/// `GET /v1/kv/?prefix=P&limit=N&start=K&revision=R`: one page of the pairs under `P` from `K`
/// on, in key order, bounded by count and by [`SCAN_PAGE_BYTES`], with `next` naming where the
/// next page starts and `revision` the revision it was read at (pass it back to read every page
/// at that revision). Each page is read on its own (linearizably unless `consistency=stale`).
async fn scan(
    State(api): State<ApiState>,
    Who(caller): Who,
    RawQuery(query): RawQuery,
) -> Response {
    timed("scan", async move {
        let query = Query::parse(
            query,
            &[
                param::PREFIX,
                param::START,
                param::LIMIT,
                param::CONSISTENCY,
                param::REVISION,
            ],
        )?;
        let prefix = query.get(param::PREFIX).unwrap_or_default();
        let start = query.get(param::START).unwrap_or_default();
        let limit = match query.text(param::LIMIT)? {
            None => DEFAULT_SCAN_LIMIT,
            Some(text) => text
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=MAX_SCAN_LIMIT).contains(n))
                .ok_or_else(|| {
                    ApiError::BadRequest(format!("limit must be 1..={MAX_SCAN_LIMIT}"))
                })?,
        };
        let request = api::RangeRequest {
            key: prefix.max(start).to_vec(),
            range_end: api::prefix_end(prefix),
            limit: i64::try_from(limit).unwrap_or(i64::MAX),
            revision: query.number(param::REVISION)?.unwrap_or(0),
            serializable: query.stale()?,
            ..api::RangeRequest::default()
        };
        let read_at = request.revision;
        let answer = api.node.range(&caller, request, SCAN_PAGE_BYTES).await?;
        // The answer's header holds the store's current revision (etcd's rule), which is not the
        // one a page read at a past revision reflects.
        let revision = if read_at > 0 {
            read_at
        } else {
            answer.header.revision
        };
        // The smallest key after the page's last: where the next page starts.
        let next = answer
            .kvs
            .last()
            .filter(|_| answer.more)
            .map(|kv| [kv.key.as_slice(), &[0]].concat());
        let items: Vec<ScanItem> = answer
            .kvs
            .into_iter()
            .map(|kv| ScanItem::new(kv.key, kv.value))
            .collect();
        Ok(Json(ScanAnswer {
            count: items.len(),
            revision,
            items,
            next: next.map(|key| percent_encode(&key)),
        })
        .into_response())
    })
    .await
}

/// `POST /v1/range` with a `RangeRequest`: the keys (at most [`SCAN_PAGE_BYTES`] of them past
/// the first; `more` says when there are more).
async fn range(
    State(api): State<ApiState>,
    Who(caller): Who,
    RequestBody(body): RequestBody,
) -> Response {
    timed("range", async move {
        let request: api::RangeRequest = json_body(&body)?;
        Ok(Json(api.node.range(&caller, request, SCAN_PAGE_BYTES).await?).into_response())
    })
    .await
}

/// `POST /v1/txn` with a `TxnRequest`.
async fn txn(
    State(api): State<ApiState>,
    Who(caller): Who,
    RequestBody(body): RequestBody,
) -> Response {
    timed("txn", async move {
        let request: TxnRequest = json_body(&body)?;
        Ok(Json(api.node.txn(&caller, request).await?).into_response())
    })
    .await
}

/// `POST /v1/compact` with a `CompactionRequest`.
async fn compact(
    State(api): State<ApiState>,
    Who(caller): Who,
    RequestBody(body): RequestBody,
) -> Response {
    timed("compact", async move {
        let request: api::CompactionRequest = json_body(&body)?;
        Ok(Json(api.node.compact(&caller, request).await?).into_response())
    })
    .await
}

/// `GET /v1/watch/KEY`: the watch's responses as newline-delimited JSON, as they happen, until the
/// client disconnects (or the watch ends, its last line `canceled`). `?prefix=true` watches every
/// key under KEY (an empty KEY: every key).
async fn watch(
    State(api): State<ApiState>,
    Who(caller): Who,
    uri: Uri,
    RawQuery(query): RawQuery,
) -> Response {
    timed("watch", async move {
        let key: Vec<u8> = percent_encoding::percent_decode_str(
            uri.path().strip_prefix(api::http::WATCH).unwrap_or(""),
        )
        .collect();
        let query = Query::parse(
            query,
            &[
                param::PREFIX,
                param::START_REVISION,
                param::PREV_KV,
                param::PROGRESS_NOTIFY,
                param::FILTERS,
            ],
        )?;
        let prefix = query.flag(param::PREFIX)?;
        if key.is_empty() && !prefix {
            return Err(ApiError::BadRequest(
                "missing key in the path (or prefix=true to watch every key)".into(),
            ));
        }
        let request = api::WatchRequest {
            range_end: if prefix {
                api::prefix_end(&key)
            } else {
                Vec::new()
            },
            key,
            start_revision: query.number(param::START_REVISION)?.unwrap_or(0),
            progress_notify: query.flag(param::PROGRESS_NOTIFY)?,
            filters: watch_filters(query.text(param::FILTERS)?)?,
            prev_kv: query.flag(param::PREV_KV)?,
        };
        let stream = api.node.watch(&caller, request)?;
        let lines = futures::stream::unfold(stream, |mut stream| async move {
            let response = stream.next().await?;
            let mut line = serde_json::to_vec(&response).unwrap_or_default();
            line.push(b'\n');
            Some((Ok::<_, std::io::Error>(line), stream))
        });
        Ok((
            [(header::CONTENT_TYPE, api::http::WATCH_CONTENT_TYPE)],
            Body::from_stream(lines),
        )
            .into_response())
    })
    .await
}

/// `filters=no_put,no_delete`.
fn watch_filters(text: Option<&str>) -> Result<Vec<api::WatchFilter>, ApiError> {
    text.unwrap_or("")
        .split(',')
        .filter(|name| !name.is_empty())
        .map(|name| {
            serde_json::from_value(serde_json::Value::String(name.to_string())).map_err(|_| {
                ApiError::BadRequest(format!("filters are no_put and no_delete, not {name:?}"))
            })
        })
        .collect()
}

/// `POST /v1/leases` with a `LeaseGrantRequest`.
async fn lease_grant(
    State(api): State<ApiState>,
    Who(caller): Who,
    RequestBody(body): RequestBody,
) -> Response {
    timed("lease_grant", async move {
        let request: api::LeaseGrantRequest = json_body(&body)?;
        Ok(Json(api.node.lease_grant(&caller, request).await?).into_response())
    })
    .await
}

/// `GET /v1/leases`: every lease in force.
async fn leases(State(api): State<ApiState>, Who(caller): Who) -> Response {
    timed("leases", async move {
        Ok(Json(api.node.leases(&caller).await?).into_response())
    })
    .await
}

/// `GET /v1/leases/ID[?keys=true]`: a lease's time left (and keys).
async fn lease_time_to_live(
    State(api): State<ApiState>,
    Who(caller): Who,
    uri: Uri,
    RawQuery(query): RawQuery,
) -> Response {
    timed("lease_time_to_live", async move {
        let id = lease_id_from_path(uri.path())?;
        let keys = Query::parse(query, &[param::KEYS])?.flag(param::KEYS)?;
        Ok(Json(api.node.lease_time_to_live(&caller, id, keys).await?).into_response())
    })
    .await
}

/// `DELETE /v1/leases/ID`: ends the lease and deletes its keys.
async fn lease_revoke(State(api): State<ApiState>, Who(caller): Who, uri: Uri) -> Response {
    timed("lease_revoke", async move {
        let id = lease_id_from_path(uri.path())?;
        Ok(Json(api.node.lease_revoke(&caller, id).await?).into_response())
    })
    .await
}

/// `POST /v1/leases/ID/keep-alive`: the lease's full TTL again.
async fn lease_keep_alive(State(api): State<ApiState>, Who(caller): Who, uri: Uri) -> Response {
    timed("lease_keep_alive", async move {
        let id = lease_id_from_path(uri.path())?;
        Ok(Json(api.node.lease_keep_alive(&caller, id).await?).into_response())
    })
    .await
}

/// The lease id in `/v1/leases/ID[/keep-alive]`.
fn lease_id_from_path(path: &str) -> Result<i64, ApiError> {
    let rest = path
        .strip_prefix(api::http::LEASES)
        .unwrap_or(path)
        .trim_start_matches('/');
    let id = rest.split('/').next().unwrap_or("");
    id.parse::<i64>().ok().filter(|id| *id > 0).ok_or_else(|| {
        ApiError::BadRequest(format!("lease id must be a positive number, not {id:?}"))
    })
}

/// The members, the leader, and the log index of the entry that set the membership (what
/// `prev_index` must name).
async fn members(State(api): State<ApiState>) -> Response {
    timed("members", async move {
        let status = api.node.status();
        Ok(Json(MembersAnswer {
            leader: status.leader,
            membership_index: api.node.membership_index(),
            members: status.members.into_iter().map(member).collect(),
        })
        .into_response())
    })
    .await
}

/// Parses a JSON request body, refusing unknown fields so a typo is never silently ignored.
fn json_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::BadRequest(format!("invalid body: {e}")))
}

/// A member as the API lists it.
fn member(info: MemberInfo) -> Member {
    Member {
        id: info.id,
        raft_addr: info.raft_addr,
        http_addr: info.http_addr,
        voter: info.voter,
        leader: info.leader,
    }
}

/// `POST /v1/members` with `{"id", "addr", "role", "prev_index"}`: adds a voter or a learner.
async fn add_member(
    State(api): State<ApiState>,
    Who(caller): Who,
    RequestBody(body): RequestBody,
) -> Response {
    timed("add_member", async move {
        let add: AddMemberRequest = json_body(&body)?;
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
            .add_node(&caller, add.id, add.addr, role, add.prev_index)
            .await?;
        Ok(no_content())
    })
    .await
}

/// `DELETE /v1/members/ID`: removes a voter or a learner.
async fn remove_member(State(api): State<ApiState>, Who(caller): Who, uri: Uri) -> Response {
    timed("remove_member", async move {
        let id = node_id_from_path(uri.path(), "/v1/members/")?;
        api.node.remove_member(&caller, id).await?;
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

/// `POST /v1/transfer-leader` with `{"to": ID}`: answers once this node sees `ID` lead.
async fn transfer_leader(
    State(api): State<ApiState>,
    Who(caller): Who,
    RequestBody(body): RequestBody,
) -> Response {
    timed("transfer_leader", async move {
        let TransferLeaderRequest { to } = json_body(&body)?;
        api.node.transfer_leader(&caller, to).await?;
        Ok(Json(TransferLeaderAnswer { leader: to }).into_response())
    })
    .await
}

/// `POST /v1/snapshot`: takes a snapshot on this node now and answers with the index it covers.
async fn snapshot(State(api): State<ApiState>, Who(caller): Who) -> Response {
    timed("snapshot", async move {
        let index = api.node.snapshot(&caller).await?;
        Ok(Json(SnapshotAnswer { index }).into_response())
    })
    .await
}

/// Pieces of a backup stream buffered between the reading thread and the connection.
const BACKUP_QUEUE: usize = 4;
/// Bytes read from the snapshot stream per piece sent.
const BACKUP_PIECE_BYTES: usize = 256 << 10;

/// `GET /v1/backup`: a fresh snapshot of this node's state machine in the snapshot stream format
/// (header with log id and membership, pairs, checksum trailer), streamed as it is read, so memory
/// stays flat whatever the state's size. A failure midway cuts the stream short, which the
/// client's checksum check catches.
async fn backup(State(api): State<ApiState>, Who(caller): Who) -> Response {
    timed("backup", async move {
        let snapshot = api.node.backup(&caller).await?;
        let log_id = snapshot.meta.last_log_id;
        let received = store::snapshot_chunks(snapshot.snapshot, BACKUP_PIECE_BYTES, BACKUP_QUEUE);
        let body = Body::from_stream(tokio_stream_of(received));
        let mut response =
            ([(header::CONTENT_TYPE, "application/octet-stream")], body).into_response();
        let headers = response.headers_mut();
        headers.insert(
            api_header::BACKUP_INDEX,
            log_id.map_or(0, |id| id.index).into(),
        );
        headers.insert(
            api_header::BACKUP_TERM,
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
        let status = api.node.status();
        Ok(Json(StatusAnswer {
            id: status.id,
            state: status.state,
            leader: status.leader,
            term: status.term,
            last_log_index: status.last_log_index,
            committed: status.committed,
            last_applied: status.last_applied,
            applied_this_run: status.applied_this_run,
            last_snapshot_index: status.last_snapshot_index,
            purged: status.purged,
            first_log_index: status.first_log_index,
            snapshots_built: status.snapshots_built,
            snapshots_sent: status.snapshots_sent,
            snapshots_installed: status.snapshots_installed,
            members: status.members.into_iter().map(member).collect(),
        })
        .into_response())
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
                Ok(()) => Json(HealthAnswer {
                    health: true,
                    reason: None,
                })
                .into_response(),
                Err(e) => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    Json(HealthAnswer {
                        health: false,
                        reason: Some(e.to_string()),
                    }),
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

/// `POST /v1/auth/authenticate`: a token for a name and password.
async fn authenticate(State(api): State<ApiState>, RequestBody(body): RequestBody) -> Response {
    timed("authenticate", async move {
        let request: api::http::AuthenticateRequest = json_body(&body)?;
        let issued = api
            .node
            .authenticate(&request.name, &request.password)
            .await?;
        Ok(Json(issued).into_response())
    })
    .await
}

/// `POST /v1/auth`: a change to users, roles or the switch.
async fn change_auth(
    State(api): State<ApiState>,
    Who(caller): Who,
    RequestBody(body): RequestBody,
) -> Response {
    timed("auth", async move {
        let request: api::AuthRequest = json_body(&body)?;
        Ok(Json(api.node.change_auth(&caller, request).await?).into_response())
    })
    .await
}

/// `GET /v1/auth/users`: every user's name.
async fn users(State(api): State<ApiState>, Who(caller): Who) -> Response {
    timed("auth", async move {
        Ok(Json(api.node.users(&caller).await?).into_response())
    })
    .await
}

/// `GET /v1/auth/users/NAME`: a user's roles.
async fn user(State(api): State<ApiState>, Who(caller): Who, Path(name): Path<String>) -> Response {
    timed("auth", async move {
        Ok(Json(api.node.user(&caller, &name).await?).into_response())
    })
    .await
}

/// `GET /v1/auth/roles`: every role's name.
async fn roles(State(api): State<ApiState>, Who(caller): Who) -> Response {
    timed("auth", async move {
        Ok(Json(api.node.roles(&caller).await?).into_response())
    })
    .await
}

/// `GET /v1/auth/roles/NAME`: a role's permissions.
async fn role(State(api): State<ApiState>, Who(caller): Who, Path(name): Path<String>) -> Response {
    timed("auth", async move {
        Ok(Json(api.node.role(&caller, &name).await?).into_response())
    })
    .await
}
