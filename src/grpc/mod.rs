//! etcd's v3 gRPC API, so that etcdctl and etcd's client libraries work against ondisk unchanged.
//!
//! The services (KV, Watch, Lease, Cluster, Maintenance, Auth, and the Lock and Election
//! recipes) are generated from etcd's protobuf definitions (`api::etcdpb`) and answered by the
//! node, as every other front end is. The same services answer etcd's JSON gateway
//! ([`gateway`], `POST /v3/...`). They share the client port with the HTTP API, as etcd serves
//! gRPC and its JSON gateway on one port: [`beside`] sends a request with the
//! `application/grpc` content type, or a POST under `/v3/`, here and any other to the HTTP
//! router. Whatever is not implemented answers UNIMPLEMENTED (the README lists it).

mod auth;
mod cluster;
mod convert;
mod gateway;
mod kv;
mod lease;
mod maintenance;
mod recipes;
mod shape;
mod status;
mod watch;

use std::convert::Infallible;
use std::sync::Arc;
use std::task::Context;
use std::task::Poll;

use axum::extract::Request;
use axum::http::header;
use axum::response::Response;
use axum::Router;
use tokio::sync::OwnedSemaphorePermit;
use tokio::sync::Semaphore;
use tonic::codegen::Service;
use tonic::service::Routes;
use tonic::Status;

use crate::api::etcdpb::etcdserverpb::auth_server::AuthServer;
use crate::api::etcdpb::etcdserverpb::cluster_server::ClusterServer;
use crate::api::etcdpb::etcdserverpb::kv_server::KvServer;
use crate::api::etcdpb::etcdserverpb::lease_server::LeaseServer;
use crate::api::etcdpb::etcdserverpb::maintenance_server::MaintenanceServer;
use crate::api::etcdpb::etcdserverpb::watch_server::WatchServer;
use crate::api::etcdpb::v3electionpb::election_server::ElectionServer;
use crate::api::etcdpb::v3lockpb::lock_server::LockServer;
use crate::api::AuthError;
use crate::node::Caller;
use crate::node::Credentials;
use crate::node::Node;

pub use maintenance::ETCD_VERSION;
pub use watch::MAX_WATCHES_PER_STREAM;

/// Streams (watch, lease keep-alive, election observe) open at once on one member, whatever the
/// number of clients and connections: each holds tasks and bounded queues, so this bounds the
/// memory clients can make a member spend on them. One past it is refused with
/// RESOURCE_EXHAUSTED, and the client can use another member.
pub const MAX_OPEN_STREAMS: usize = 4096;

/// The member's budget of open streams ([`MAX_OPEN_STREAMS`]), shared by every service.
#[derive(Clone)]
struct StreamBudget(Arc<Semaphore>);

impl StreamBudget {
    fn new() -> Self {
        StreamBudget(Arc::new(Semaphore::new(MAX_OPEN_STREAMS)))
    }

    /// A place for one more stream, held for as long as the stream is open.
    fn open(&self) -> Result<OwnedSemaphorePermit, Status> {
        self.0.clone().try_acquire_owned().map_err(|_| {
            Status::resource_exhausted(format!(
                "etcdserver: too many open streams on this member (at most {MAX_OPEN_STREAMS})"
            ))
        })
    }
}

/// Room for a message's protobuf framing beyond `-max-request-bytes` (etcd's gRPC overhead
/// allowance), so a request at the limit decodes and is then judged by the node's own check,
/// which answers etcd's "request is too large". A larger message is refused by gRPC's decoder
/// from its length prefix, before it is buffered.
const GRPC_OVERHEAD_BYTES: usize = 512 << 10;

/// The services of `node` as two routers: gRPC's, and etcd's JSON gateway to the same services.
pub struct Routers {
    grpc: Router,
    gateway: Router,
}

/// The gRPC services of `node`, and the JSON gateway to them.
pub fn routers(node: Arc<Node>) -> Routers {
    let max_message = usize::try_from(node.max_request_bytes())
        .unwrap_or(usize::MAX)
        .saturating_add(GRPC_OVERHEAD_BYTES);
    let streams = StreamBudget::new();
    let services = gateway::Services {
        kv: Arc::new(kv::KvService::new(node.clone())),
        watch: Arc::new(watch::WatchService::new(node.clone(), streams.clone())),
        lease: Arc::new(lease::LeaseService::new(node.clone(), streams.clone())),
        cluster: Arc::new(cluster::ClusterService::new(node.clone())),
        maintenance: Arc::new(maintenance::MaintenanceService::new(node.clone())),
        auth: Arc::new(auth::AuthService::new(node.clone())),
        lock: Arc::new(recipes::LockService::new(node.clone())),
        election: Arc::new(recipes::ElectionService::new(node, streams)),
        max_body_bytes: max_message.saturating_mul(4) / 3,
    };
    let grpc =
        Routes::new(KvServer::from_arc(services.kv.clone()).max_decoding_message_size(max_message))
            .add_service(
                WatchServer::from_arc(services.watch.clone())
                    .max_decoding_message_size(max_message),
            )
            .add_service(
                LeaseServer::from_arc(services.lease.clone())
                    .max_decoding_message_size(max_message),
            )
            .add_service(
                ClusterServer::from_arc(services.cluster.clone())
                    .max_decoding_message_size(max_message),
            )
            .add_service(
                MaintenanceServer::from_arc(services.maintenance.clone())
                    .max_decoding_message_size(max_message),
            )
            .add_service(
                AuthServer::from_arc(services.auth.clone()).max_decoding_message_size(max_message),
            )
            .add_service(
                LockServer::from_arc(services.lock.clone()).max_decoding_message_size(max_message),
            )
            .add_service(
                ElectionServer::from_arc(services.election.clone())
                    .max_decoding_message_size(max_message),
            )
            .into_axum_router();
    Routers {
        grpc,
        gateway: gateway::router(services),
    }
}

/// The metadata key etcd's clients send their token in.
const TOKEN_METADATA: &str = "token";
/// The metadata key etcd also takes a token from (its gateway's and OpenAPI clients').
const AUTHORIZATION_METADATA: &str = "authorization";

/// Who sent `request`: the user its token names, or anonymous without one. A token that is
/// not good (expired, forged, from before authentication was last enabled) is refused here
/// with UNAUTHENTICATED, which tells etcd's clients to authenticate again.
async fn caller<T>(node: &Node, request: &tonic::Request<T>) -> Result<Caller, Status> {
    let metadata = request.metadata();
    let token = metadata
        .get(TOKEN_METADATA)
        .or_else(|| metadata.get(AUTHORIZATION_METADATA));
    let credentials = match token {
        Some(token) => Credentials::Token(
            token
                .to_str()
                .map_err(|_| status::status(AuthError::InvalidToken.into()))?
                .to_string(),
        ),
        None => Credentials::None,
    };
    node.caller(credentials).await.map_err(status::status)
}

/// One router for the client port: gRPC requests (content type `application/grpc`, with any
/// suffix such as `+proto`) to the gRPC services, POSTs under `/v3/` to the JSON gateway, and
/// everything else to `http`.
pub fn beside(routers: Routers, http: Router) -> Router {
    Router::new().fallback_service(ClientPort {
        grpc: routers.grpc,
        gateway: routers.gateway,
        http,
    })
}

#[derive(Clone)]
struct ClientPort {
    grpc: Router,
    gateway: Router,
    http: Router,
}

impl Service<Request> for ClientPort {
    type Response = Response;
    type Error = Infallible;
    type Future = <Router as Service<Request>>::Future;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // The routers are always ready.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let is_grpc = request
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|content_type| content_type.as_bytes().starts_with(b"application/grpc"));
        if is_grpc {
            self.grpc.call(request)
        } else if gateway::serves(&request) {
            self.gateway.call(request)
        } else {
            self.http.call(request)
        }
    }
}
