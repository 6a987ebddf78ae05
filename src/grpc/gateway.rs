//! etcd's JSON gateway: the v3 API as JSON over HTTP (`POST /v3/kv/range`, `/v3/watch`, ...),
//! which etcd serves beside gRPC on its client port for clients without gRPC (curl, scripts,
//! languages without an etcd library).
//!
//! Each route reads its request message in the protobuf JSON mapping with etcd's field names
//! (`{"key": "Zm9v", "range_end": ...}`: bytes in base64, 64-bit integers as strings or
//! numbers, unknown fields skipped; an empty body is the empty message), has the very service
//! the gRPC front end uses answer it, and writes the answer in the same mapping. A refusal is
//! etcd's gateway error, `{"error": ..., "message": ..., "code": <gRPC code>}`, with the HTTP
//! status grpc-gateway gives that code. A token goes in the `Authorization` header, as with
//! etcd's gateway.
//!
//! Streams answer one `{"result": <message>}` line per message (a failure mid-stream is an
//! `{"error": {...}}` line). For Watch and LeaseKeepAlive, whose requests are a stream too, the
//! body holds one or more request messages one after another, each acted on as it arrives (a
//! client may keep the body open and send more, answered as they come; etcd 3.4's gateway, on
//! Go's HTTP/1.1 server, answers only once the body has ended); a watch goes on after the body
//! ends, until the client disconnects. As with grpc-gateway, a first message that is not a
//! request is refused with an error answer, and one later in the body ends the requests.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::PoisonError;
use std::task::ready;
use std::task::Context;
use std::task::Poll;

use axum::body::Body;
use axum::body::Bytes;
use axum::extract::Request;
use axum::extract::State;
use axum::http::header;
use axum::http::HeaderValue;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::response::Response;
use axum::routing::post;
use axum::Router;
use futures::Stream;
use futures::StreamExt;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::codegen::BoxStream;
use tonic::metadata::MetadataValue;
use tonic::Code;
use tonic::Status;

use super::auth::AuthService;
use super::cluster::ClusterService;
use super::kv::KvService;
use super::lease::LeaseService;
use super::maintenance::MaintenanceService;
use super::recipes::ElectionService;
use super::recipes::LockService;
use super::watch::WatchService;
use super::TOKEN_METADATA;
use crate::api::etcdpb::etcdserverpb::auth_server::Auth;
use crate::api::etcdpb::etcdserverpb::cluster_server::Cluster;
use crate::api::etcdpb::etcdserverpb::kv_server::Kv;
use crate::api::etcdpb::etcdserverpb::lease_server::Lease;
use crate::api::etcdpb::etcdserverpb::maintenance_server::Maintenance;
use crate::api::etcdpb::v3electionpb::election_server::Election;
use crate::api::etcdpb::v3lockpb::lock_server::Lock;
use crate::api::AuthError;

/// The path prefixes the gateway serves: etcd 3.4 serves its API under both.
pub(super) const PREFIXES: &[&str] = &["/v3/", "/v3beta/"];

/// The services the gateway's routes call: the same instances the gRPC front end serves.
pub(super) struct Services {
    pub kv: Arc<KvService>,
    pub watch: Arc<WatchService>,
    pub lease: Arc<LeaseService>,
    pub cluster: Arc<ClusterService>,
    pub maintenance: Arc<MaintenanceService>,
    pub auth: Arc<AuthService>,
    pub lock: Arc<LockService>,
    pub election: Arc<ElectionService>,
    /// The largest body read, in bytes: the JSON of the largest message gRPC decodes (base64
    /// makes its bytes a third larger). The services refuse a message over
    /// `-max-request-bytes` as they refuse it over gRPC.
    pub max_body_bytes: usize,
}

/// What every route is handed: the services it calls.
type Gateway = State<Arc<Services>>;

/// A route answering one unary RPC: `unary!(Trait, service, method)`.
macro_rules! unary {
    ($trait:ident, $service:ident, $method:ident) => {
        post(|State(services): Gateway, request: Request| async move {
            match decode_one(request, services.max_body_bytes).await {
                Ok(request) => answer($trait::$method(&*services.$service, request).await),
                Err(refused) => error_response(&refused),
            }
        })
    };
}

/// A route answering one RPC whose answers are a stream: `server_stream!(Trait, service,
/// method)`.
macro_rules! server_stream {
    ($trait:ident, $service:ident, $method:ident) => {
        post(|State(services): Gateway, request: Request| async move {
            match decode_one(request, services.max_body_bytes).await {
                Ok(request) => answer_stream($trait::$method(&*services.$service, request).await),
                Err(refused) => error_response(&refused),
            }
        })
    };
}

/// A route answering one RPC whose requests are a stream too, from the messages of the body:
/// `client_stream!(service, method)`.
macro_rules! client_stream {
    ($service:ident, $method:ident) => {
        post(|State(services): Gateway, request: Request| async move {
            match decode_each(request, services.max_body_bytes).await {
                Ok(requests) => answer_stream(services.$service.$method(requests).await),
                Err(refused) => error_response(&refused),
            }
        })
    };
}

/// The gateway's routes, under every one of [`PREFIXES`].
pub(super) fn router(services: Services) -> Router {
    let routes = Router::new()
        .route("/kv/range", unary!(Kv, kv, range))
        .route("/kv/put", unary!(Kv, kv, put))
        .route("/kv/deleterange", unary!(Kv, kv, delete_range))
        .route("/kv/txn", unary!(Kv, kv, txn))
        .route("/kv/compaction", unary!(Kv, kv, compact))
        .route("/watch", client_stream!(watch, open))
        .route("/lease/grant", unary!(Lease, lease, lease_grant))
        .route("/lease/revoke", unary!(Lease, lease, lease_revoke))
        .route("/kv/lease/revoke", unary!(Lease, lease, lease_revoke))
        .route("/lease/keepalive", client_stream!(lease, keep_alive_stream))
        .route(
            "/lease/timetolive",
            unary!(Lease, lease, lease_time_to_live),
        )
        .route(
            "/kv/lease/timetolive",
            unary!(Lease, lease, lease_time_to_live),
        )
        .route("/lease/leases", unary!(Lease, lease, lease_leases))
        .route("/kv/lease/leases", unary!(Lease, lease, lease_leases))
        .route("/cluster/member/add", unary!(Cluster, cluster, member_add))
        .route(
            "/cluster/member/remove",
            unary!(Cluster, cluster, member_remove),
        )
        .route(
            "/cluster/member/update",
            unary!(Cluster, cluster, member_update),
        )
        .route(
            "/cluster/member/list",
            unary!(Cluster, cluster, member_list),
        )
        .route(
            "/cluster/member/promote",
            unary!(Cluster, cluster, member_promote),
        )
        .route(
            "/maintenance/alarm",
            unary!(Maintenance, maintenance, alarm),
        )
        .route(
            "/maintenance/status",
            unary!(Maintenance, maintenance, status),
        )
        .route(
            "/maintenance/defragment",
            unary!(Maintenance, maintenance, defragment),
        )
        .route("/maintenance/hash", unary!(Maintenance, maintenance, hash))
        // etcd 3.4 routes HashKV to `/maintenance/hash` as well, where Hash answers; 3.5 moved
        // it here.
        .route(
            "/maintenance/hashkv",
            unary!(Maintenance, maintenance, hash_kv),
        )
        .route(
            "/maintenance/snapshot",
            server_stream!(Maintenance, maintenance, snapshot),
        )
        .route(
            "/maintenance/transfer-leadership",
            unary!(Maintenance, maintenance, move_leader),
        )
        .route("/auth/enable", unary!(Auth, auth, auth_enable))
        .route("/auth/disable", unary!(Auth, auth, auth_disable))
        .route("/auth/authenticate", unary!(Auth, auth, authenticate))
        .route("/auth/user/add", unary!(Auth, auth, user_add))
        .route("/auth/user/get", unary!(Auth, auth, user_get))
        .route("/auth/user/list", unary!(Auth, auth, user_list))
        .route("/auth/user/delete", unary!(Auth, auth, user_delete))
        .route(
            "/auth/user/changepw",
            unary!(Auth, auth, user_change_password),
        )
        .route("/auth/user/grant", unary!(Auth, auth, user_grant_role))
        .route("/auth/user/revoke", unary!(Auth, auth, user_revoke_role))
        .route("/auth/role/add", unary!(Auth, auth, role_add))
        .route("/auth/role/get", unary!(Auth, auth, role_get))
        .route("/auth/role/list", unary!(Auth, auth, role_list))
        .route("/auth/role/delete", unary!(Auth, auth, role_delete))
        .route(
            "/auth/role/grant",
            unary!(Auth, auth, role_grant_permission),
        )
        .route(
            "/auth/role/revoke",
            unary!(Auth, auth, role_revoke_permission),
        )
        .route("/lock/lock", unary!(Lock, lock, lock))
        .route("/lock/unlock", unary!(Lock, lock, unlock))
        .route("/election/campaign", unary!(Election, election, campaign))
        .route("/election/proclaim", unary!(Election, election, proclaim))
        .route("/election/leader", unary!(Election, election, leader))
        .route(
            "/election/observe",
            server_stream!(Election, election, observe),
        )
        .route("/election/resign", unary!(Election, election, resign))
        .with_state(Arc::new(services));
    PREFIXES
        .iter()
        .fold(Router::new(), |router, prefix| {
            router.nest(prefix.trim_end_matches('/'), routes.clone())
        })
        .fallback(no_such_route)
}

/// What etcd's gateway answers a POST to a path it does not route.
async fn no_such_route() -> (StatusCode, &'static str) {
    (StatusCode::NOT_FOUND, "Not Found\n")
}

/// The request message a body holds, with the caller's token: an empty body is the empty
/// message.
async fn decode_one<T>(request: Request, max_body_bytes: usize) -> Result<tonic::Request<T>, Status>
where
    T: DeserializeOwned + Default,
{
    let (token, body) = read(request, max_body_bytes).await?;
    let message = if body.iter().all(u8::is_ascii_whitespace) {
        T::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| Status::invalid_argument(e.to_string()))?
    };
    with_token(tonic::Request::new(message), token)
}

/// The request messages of a body, as the stream of a streaming RPC, each as soon as it has
/// arrived whole. The first is awaited here, so that a body that does not start with a request
/// is refused as grpc-gateway refuses it; a later one that is not a request ends the stream.
async fn decode_each<T>(
    request: Request,
    max_message_bytes: usize,
) -> Result<tonic::Request<impl Stream<Item = Result<T, Status>> + Send + Unpin + 'static>, Status>
where
    T: DeserializeOwned + Send + Sync + 'static,
{
    let (parts, body) = request.into_parts();
    let token = parts.headers.get(header::AUTHORIZATION).cloned();
    let mut messages = BodyMessages::new(body, max_message_bytes);
    let first = messages.next().await.transpose()?;
    let rest = messages.filter_map(|message| {
        futures::future::ready(match message {
            Ok(message) => Some(Ok(message)),
            Err(refused) => {
                tracing::debug!("gateway: the request stream ends: {}", refused.message());
                None
            }
        })
    });
    let stream = futures::stream::iter(first.map(Ok)).chain(rest);
    with_token(tonic::Request::new(stream), token)
}

/// The JSON messages of a request body one after another, read as the body arrives; the stream
/// ends after the first refusal (not JSON, not the request expected, too large, cut short).
struct BodyMessages<T> {
    /// In a mutex only to be `Sync`, as the services need of a request stream: only ever
    /// reached through `&mut self`, it is never locked.
    body: std::sync::Mutex<axum::body::BodyDataStream>,
    /// Bytes received and not yet parsed: the start of the next message.
    buffered: Vec<u8>,
    /// Where the next message ends in `buffered`, once it has all arrived.
    end: MessageEnd,
    /// Whether the body has ended.
    ended: bool,
    /// Whether the stream has ended (after the last message, or a refusal).
    finished: bool,
    /// The largest message accepted, as etcd bounds a request.
    max_message_bytes: usize,
    message: std::marker::PhantomData<fn() -> T>,
}

impl<T> BodyMessages<T> {
    fn new(body: Body, max_message_bytes: usize) -> Self {
        BodyMessages {
            body: std::sync::Mutex::new(body.into_data_stream()),
            buffered: Vec::new(),
            end: MessageEnd::default(),
            ended: false,
            finished: false,
            max_message_bytes,
            message: std::marker::PhantomData,
        }
    }
}

impl<T: DeserializeOwned> BodyMessages<T> {
    /// The next message if it has arrived whole, `Ok(None)` if the body has ended after the
    /// last, or why there is none; `Pending` while more of the body is needed.
    fn poll_message(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<T>, Status>> {
        loop {
            if let Some(end) = self.end.scan(&self.buffered) {
                let message = serde_json::from_slice(&self.buffered[..end])
                    .map_err(|e| Status::invalid_argument(e.to_string()));
                self.buffered.drain(..end);
                return Poll::Ready(message.map(Some));
            }
            if self.ended {
                if self.buffered.iter().all(u8::is_ascii_whitespace) {
                    return Poll::Ready(Ok(None));
                }
                // Cut short: the parser says where.
                let why = serde_json::from_slice::<T>(&self.buffered)
                    .err()
                    .map_or_else(
                        || "the body ends inside a message".into(),
                        |e| e.to_string(),
                    );
                return Poll::Ready(Err(Status::invalid_argument(why)));
            }
            if self.buffered.len() > self.max_message_bytes {
                return Poll::Ready(Err(Status::invalid_argument(
                    super::status::REQUEST_TOO_LARGE,
                )));
            }
            let body = self.body.get_mut().unwrap_or_else(PoisonError::into_inner);
            match ready!(body.poll_next_unpin(cx)) {
                Some(Ok(chunk)) => self.buffered.extend_from_slice(&chunk),
                Some(Err(e)) => {
                    return Poll::Ready(Err(Status::invalid_argument(format!(
                        "cannot read the request body: {e}"
                    ))))
                }
                None => self.ended = true,
            }
        }
    }
}

impl<T: DeserializeOwned> Stream for BodyMessages<T> {
    type Item = Result<T, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.finished {
            return Poll::Ready(None);
        }
        let next = ready!(this.poll_message(cx)).transpose();
        this.finished = !matches!(next, Some(Ok(_)));
        Poll::Ready(next)
    }
}

/// Finds where the JSON value at the start of a byte stream ends, fed as the bytes arrive: each
/// byte is looked at once, and a message is parsed once, whole (parsing the growing text again
/// at every arrival would cost the square of its length).
#[derive(Debug, Default)]
struct MessageEnd {
    /// Objects and arrays open at the scanned point.
    depth: usize,
    in_string: bool,
    /// Whether the previous byte, in a string, was a backslash.
    escaped: bool,
    /// Bytes already scanned.
    scanned: usize,
}

impl MessageEnd {
    /// The length of the first value in `buffered` once it is whole, else `None` (scanning
    /// only what was added since the last call). A number or a literal ends at its first
    /// byte: it is not a request, and the parser says so.
    fn scan(&mut self, buffered: &[u8]) -> Option<usize> {
        for (at, &byte) in buffered.iter().enumerate().skip(self.scanned) {
            if self.in_string {
                match (self.escaped, byte) {
                    (true, _) => self.escaped = false,
                    (false, b'\\') => self.escaped = true,
                    (false, b'"') => self.in_string = false,
                    _ => {}
                }
            } else {
                match byte {
                    b'"' => self.in_string = true,
                    b'{' | b'[' => self.depth += 1,
                    b'}' | b']' => self.depth = self.depth.saturating_sub(1),
                    byte if byte.is_ascii_whitespace() => continue,
                    _ => {}
                }
            }
            if self.depth == 0 && !self.in_string {
                *self = MessageEnd::default();
                return Some(at + 1);
            }
        }
        self.scanned = buffered.len();
        None
    }
}

/// The `Authorization` header and the body of `request`, refused as etcd refuses a request
/// that is too large when the body is over `max_body_bytes`.
async fn read(
    request: Request,
    max_body_bytes: usize,
) -> Result<(Option<HeaderValue>, Bytes), Status> {
    let (parts, body) = request.into_parts();
    let token = parts.headers.get(header::AUTHORIZATION).cloned();
    let body = axum::body::to_bytes(body, max_body_bytes)
        .await
        .map_err(|_| Status::invalid_argument(super::status::REQUEST_TOO_LARGE))?;
    Ok((token, body))
}

/// `request` carrying `token` where the services look for it.
fn with_token<T>(
    mut request: tonic::Request<T>,
    token: Option<HeaderValue>,
) -> Result<tonic::Request<T>, Status> {
    if let Some(token) = token {
        let token = MetadataValue::try_from(token.as_bytes())
            .map_err(|_| super::status::status(AuthError::InvalidToken.into()))?;
        request.metadata_mut().insert(TOKEN_METADATA, token);
    }
    Ok(request)
}

/// A unary answer as JSON, or the refusal as etcd's gateway error.
fn answer<T: Serialize>(answered: Result<tonic::Response<T>, Status>) -> Response {
    match answered.and_then(|response| json(&response.into_inner())) {
        Ok(body) => (StatusCode::OK, JSON_CONTENT, body).into_response(),
        Err(refused) => error_response(&refused),
    }
}

/// A stream's answers, one `{"result": ...}` line each, or the refusal of the whole stream.
fn answer_stream<T>(answered: Result<tonic::Response<BoxStream<T>>, Status>) -> Response
where
    T: Serialize + Send + 'static,
{
    let answers = match answered {
        Ok(response) => response.into_inner(),
        Err(refused) => return error_response(&refused),
    };
    let lines = answers.map(|answer| {
        let line = match answer {
            Ok(message) => json(&StreamResult { result: message }),
            Err(refused) => json(&StreamError {
                error: StreamErrorBody::of(&refused),
            }),
        };
        let mut line = line.unwrap_or_else(|e| e.message().as_bytes().to_vec());
        line.push(b'\n');
        Ok::<_, std::convert::Infallible>(Bytes::from(line))
    });
    (StatusCode::OK, JSON_CONTENT, Body::from_stream(lines)).into_response()
}

/// Every answer is JSON, refusals included, as grpc-gateway's are.
const JSON_CONTENT: [(header::HeaderName, &str); 1] = [(header::CONTENT_TYPE, "application/json")];

/// `message` as JSON; a failure (none is expected of the generated mapping) is an INTERNAL
/// refusal rather than a panic.
fn json<T: Serialize>(message: &T) -> Result<Vec<u8>, Status> {
    serde_json::to_vec(message).map_err(|e| Status::internal(e.to_string()))
}

/// grpc-gateway's line for one message of a stream.
#[derive(Serialize)]
struct StreamResult<T> {
    result: T,
}

/// grpc-gateway's body of a refusal.
#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    message: &'a str,
    code: i32,
}

/// grpc-gateway's line for a failure in the middle of a stream.
#[derive(Serialize)]
struct StreamError<'a> {
    error: StreamErrorBody<'a>,
}

/// What [`StreamError`] says of the failure.
#[derive(Serialize)]
struct StreamErrorBody<'a> {
    grpc_code: i32,
    http_code: u16,
    message: &'a str,
    http_status: &'a str,
}

impl<'a> StreamErrorBody<'a> {
    fn of(refused: &'a Status) -> Self {
        let http = http_status(refused.code());
        StreamErrorBody {
            grpc_code: refused.code() as i32,
            http_code: http.as_u16(),
            message: refused.message(),
            http_status: http.canonical_reason().unwrap_or(""),
        }
    }
}

/// The answer to a refused request: grpc-gateway's error body and the HTTP status it gives the
/// code.
fn error_response(refused: &Status) -> Response {
    let body = ErrorBody {
        error: refused.message(),
        message: refused.message(),
        code: refused.code() as i32,
    };
    let body = serde_json::to_vec(&body).unwrap_or_default();
    (http_status(refused.code()), JSON_CONTENT, body).into_response()
}

/// The HTTP status grpc-gateway answers a gRPC `code` with.
fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::Cancelled => StatusCode::REQUEST_TIMEOUT,
        Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::FailedPrecondition => StatusCode::PRECONDITION_FAILED,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// Whether `request` is for the gateway: a POST under one of [`PREFIXES`]. Every other
/// request under them (a GET, a PUT) stays the HTTP API's, where such paths are keys.
pub(super) fn serves<B>(request: &axum::http::Request<B>) -> bool {
    request.method() == axum::http::Method::POST
        && PREFIXES
            .iter()
            .any(|prefix| request.uri().path().starts_with(prefix))
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use serde_json::Value;

    use super::*;

    /// The messages `chunks` make as a request body, or the refusal that ended them.
    async fn messages_of(chunks: Vec<Vec<u8>>) -> Result<Vec<Value>, Status> {
        let body = Body::from_stream(futures::stream::iter(
            chunks.into_iter().map(Ok::<_, std::convert::Infallible>),
        ));
        BodyMessages::<Value>::new(body, 1 << 20)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect()
    }

    #[tokio::test]
    async fn messages_come_out_whole_wherever_the_body_is_cut() {
        let sent = [
            json!({"create_request": {"key": "a2V5", "filters": ["NOPUT"]}}),
            json!({"text": "braces } { ] [, a quote \" and a backslash \\ in a string"}),
            json!({"progress_request": {}}),
        ];
        let body = sent
            .iter()
            .map(Value::to_string)
            .collect::<Vec<_>>()
            .join("\n ");
        let body = body.as_bytes();
        for cut in 0..=body.len() {
            let chunks = vec![body[..cut].to_vec(), body[cut..].to_vec()];
            assert_eq!(messages_of(chunks).await.unwrap(), sent, "cut at {cut}");
        }
        let one_byte_each = body.iter().map(|byte| vec![*byte]).collect();
        assert_eq!(messages_of(one_byte_each).await.unwrap(), sent);
    }

    #[tokio::test]
    async fn a_body_cut_short_or_not_json_is_refused_after_the_messages_before_it() {
        let cut_short = messages_of(vec![b"{\"a\": 1} {\"b\": ".to_vec()]).await;
        assert_eq!(cut_short.unwrap_err().code(), Code::InvalidArgument);
        let not_json = messages_of(vec![b"{\"a\": 1} nonsense".to_vec()]).await;
        assert_eq!(not_json.unwrap_err().code(), Code::InvalidArgument);
        assert!(messages_of(vec![b" \n ".to_vec()])
            .await
            .unwrap()
            .is_empty());
    }
}
