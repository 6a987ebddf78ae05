//! etcd's Lease service: grant and revoke go through the log, keep-alives and time-to-live are
//! answered by the leader (forwarded from any member), as `node::lease` does them.

use std::sync::Arc;

use futures::Stream;
use futures::StreamExt;
use tonic::codegen::BoxStream;
use tonic::Request;
use tonic::Response;
use tonic::Status;
use tonic::Streaming;

use crate::api;
use crate::api::etcdpb::etcdserverpb as pb;
use crate::api::etcdpb::etcdserverpb::lease_server::Lease;
use crate::error::Error;
use crate::node::Caller;
use crate::node::Node;
use crate::types::ApplyError;

use super::caller;
use super::convert;
use super::status::status;
use super::StreamBudget;

/// Keep-alives of one stream answered at once at most: the Go client sends every lease's
/// keep-alives on one stream, so one slow answer (a leader change) must not hold up the others,
/// yet a client cannot make the node run an unbounded number of them.
const KEEP_ALIVES_IN_FLIGHT: usize = 64;
/// etcd's error for a TTL over its maximum.
const TTL_TOO_LARGE: &str = "etcdserver: too large lease TTL";

pub struct LeaseService {
    node: Arc<Node>,
    streams: StreamBudget,
}

impl LeaseService {
    pub fn new(node: Arc<Node>, streams: StreamBudget) -> Self {
        LeaseService { node, streams }
    }

    /// Serves a LeaseKeepAlive stream whose requests are `request`'s stream (a gRPC stream's
    /// messages, or a JSON gateway request's): one answer per request, in the order they are
    /// ready, until the requests end.
    pub async fn keep_alive_stream<S>(
        &self,
        request: Request<S>,
    ) -> Result<Response<BoxStream<pb::LeaseKeepAliveResponse>>, Status>
    where
        S: Stream<Item = Result<pb::LeaseKeepAliveRequest, Status>> + Send + 'static,
    {
        let caller = Arc::new(caller(&self.node, &request).await?);
        let place = self.streams.open()?;
        let node = self.node.clone();
        let answers = request
            .into_inner()
            .map(move |request| {
                // The stream's place in the budget lives as long as the stream.
                let _place = &place;
                let node = node.clone();
                let caller = caller.clone();
                async move { keep_alive(&node, &caller, request?.id).await }
            })
            .buffer_unordered(KEEP_ALIVES_IN_FLIGHT);
        Ok(Response::new(Box::pin(answers)))
    }
}

#[tonic::async_trait]
impl Lease for LeaseService {
    async fn lease_grant(
        &self,
        request: Request<pb::LeaseGrantRequest>,
    ) -> Result<Response<pb::LeaseGrantResponse>, Status> {
        let caller = caller(&self.node, &request).await?;
        let request = request.into_inner();
        if request.ttl > api::MAX_LEASE_TTL {
            return Err(Status::out_of_range(TTL_TOO_LARGE));
        }
        // etcd raises any shorter TTL, zero and below included, to its minimum.
        let grant = api::LeaseGrantRequest {
            ttl: request.ttl.max(1),
            id: request.id,
        };
        let response = self
            .node
            .lease_grant(&caller, grant)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::LeaseGrantResponse {
            header: convert::header(response.header),
            id: response.id,
            ttl: response.ttl,
            error: String::new(),
        }))
    }

    async fn lease_revoke(
        &self,
        request: Request<pb::LeaseRevokeRequest>,
    ) -> Result<Response<pb::LeaseRevokeResponse>, Status> {
        let caller = caller(&self.node, &request).await?;
        let response = self
            .node
            .lease_revoke(&caller, request.into_inner().id)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::LeaseRevokeResponse {
            header: convert::header(response.header),
        }))
    }

    async fn lease_keep_alive(
        &self,
        request: Request<Streaming<pb::LeaseKeepAliveRequest>>,
    ) -> Result<Response<BoxStream<pb::LeaseKeepAliveResponse>>, Status> {
        self.keep_alive_stream(request).await
    }

    async fn lease_time_to_live(
        &self,
        request: Request<pb::LeaseTimeToLiveRequest>,
    ) -> Result<Response<pb::LeaseTimeToLiveResponse>, Status> {
        let caller = caller(&self.node, &request).await?;
        let request = request.into_inner();
        let answer = self
            .node
            .lease_time_to_live(&caller, request.id, request.keys)
            .await;
        let response = match answer {
            Ok(response) => pb::LeaseTimeToLiveResponse {
                header: convert::header(response.header),
                id: response.id,
                ttl: response.ttl,
                granted_ttl: response.granted_ttl,
                keys: response.keys,
            },
            // etcd answers an unknown lease with a TTL of -1 rather than an error.
            Err(Error::Request(ApplyError::LeaseNotFound(_))) => pb::LeaseTimeToLiveResponse {
                header: convert::header(self.node.current_header()),
                id: request.id,
                ttl: -1,
                ..pb::LeaseTimeToLiveResponse::default()
            },
            Err(e) => return Err(status(e)),
        };
        Ok(Response::new(response))
    }

    async fn lease_leases(
        &self,
        request: Request<pb::LeaseLeasesRequest>,
    ) -> Result<Response<pb::LeaseLeasesResponse>, Status> {
        let caller = caller(&self.node, &request).await?;
        let response = self.node.leases(&caller).await.map_err(status)?;
        Ok(Response::new(pb::LeaseLeasesResponse {
            header: convert::header(response.header),
            leases: response
                .leases
                .into_iter()
                .map(|lease| pb::LeaseStatus { id: lease.id })
                .collect(),
        }))
    }
}

/// One keep-alive. etcd answers a lease that is gone with a TTL of 0 (the client then stops
/// keeping it alive), not with an error that would end the stream for every lease on it.
async fn keep_alive(
    node: &Node,
    caller: &Caller,
    id: i64,
) -> Result<pb::LeaseKeepAliveResponse, Status> {
    match node.lease_keep_alive(caller, id).await {
        Ok(response) => Ok(pb::LeaseKeepAliveResponse {
            header: convert::header(response.header),
            id: response.id,
            ttl: response.ttl,
        }),
        Err(Error::Request(ApplyError::LeaseNotFound(_))) => Ok(pb::LeaseKeepAliveResponse {
            header: convert::header(node.current_header()),
            id,
            ttl: 0,
        }),
        Err(e) => Err(status(e)),
    }
}
