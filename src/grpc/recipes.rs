//! etcd's Lock (`v3lockpb`) and Election (`v3electionpb`) services, answered by the node's
//! recipes (`node::recipes`).

use std::sync::Arc;

use futures::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codegen::BoxStream;
use tonic::Request;
use tonic::Response;
use tonic::Status;

use crate::api::etcdpb::v3electionpb as electionpb;
use crate::api::etcdpb::v3electionpb::election_server::Election;
use crate::api::etcdpb::v3lockpb as lockpb;
use crate::api::etcdpb::v3lockpb::lock_server::Lock;
use crate::node::LeaderKey;
use crate::node::Node;
use crate::node::RecipeError;

use super::caller;
use super::convert;
use super::status::status;
use super::StreamBudget;

/// etcd's error for proclaim or resign without a leader key.
const MISSING_LEADER_KEY: &str = "\"leader\" field must be provided";

pub struct LockService {
    node: Arc<Node>,
}

impl LockService {
    pub fn new(node: Arc<Node>) -> Self {
        LockService { node }
    }
}

#[tonic::async_trait]
impl Lock for LockService {
    async fn lock(
        &self,
        request: Request<lockpb::LockRequest>,
    ) -> Result<Response<lockpb::LockResponse>, Status> {
        let caller = caller(&self.node, &request).await?;
        let request = request.into_inner();
        let (header, key) = self
            .node
            .lock(&caller, &request.name, request.lease)
            .await
            .map_err(recipe_status)?;
        Ok(Response::new(lockpb::LockResponse {
            header: convert::header(header),
            key,
        }))
    }

    async fn unlock(
        &self,
        request: Request<lockpb::UnlockRequest>,
    ) -> Result<Response<lockpb::UnlockResponse>, Status> {
        let caller = caller(&self.node, &request).await?;
        let header = self
            .node
            .unlock(&caller, request.into_inner().key)
            .await
            .map_err(recipe_status)?;
        Ok(Response::new(lockpb::UnlockResponse {
            header: convert::header(header),
        }))
    }
}

pub struct ElectionService {
    node: Arc<Node>,
    streams: StreamBudget,
}

impl ElectionService {
    pub fn new(node: Arc<Node>, streams: StreamBudget) -> Self {
        ElectionService { node, streams }
    }
}

#[tonic::async_trait]
impl Election for ElectionService {
    async fn campaign(
        &self,
        request: Request<electionpb::CampaignRequest>,
    ) -> Result<Response<electionpb::CampaignResponse>, Status> {
        let caller = caller(&self.node, &request).await?;
        let request = request.into_inner();
        let (header, leader) = self
            .node
            .campaign(&caller, &request.name, request.lease, request.value)
            .await
            .map_err(recipe_status)?;
        Ok(Response::new(electionpb::CampaignResponse {
            header: convert::header(header),
            leader: Some(leader_key(leader)),
        }))
    }

    async fn proclaim(
        &self,
        request: Request<electionpb::ProclaimRequest>,
    ) -> Result<Response<electionpb::ProclaimResponse>, Status> {
        let caller = caller(&self.node, &request).await?;
        let request = request.into_inner();
        let leader = given_leader(request.leader)?;
        let header = self
            .node
            .proclaim(&caller, &leader, request.value)
            .await
            .map_err(recipe_status)?;
        Ok(Response::new(electionpb::ProclaimResponse {
            header: convert::header(header),
        }))
    }

    async fn leader(
        &self,
        request: Request<electionpb::LeaderRequest>,
    ) -> Result<Response<electionpb::LeaderResponse>, Status> {
        let caller = caller(&self.node, &request).await?;
        let (header, kv) = self
            .node
            .election_leader(&caller, &request.into_inner().name)
            .await
            .map_err(recipe_status)?;
        Ok(Response::new(electionpb::LeaderResponse {
            header: convert::header(header),
            kv: Some(convert::key_value(kv)),
        }))
    }

    async fn observe(
        &self,
        request: Request<electionpb::LeaderRequest>,
    ) -> Result<Response<BoxStream<electionpb::LeaderResponse>>, Status> {
        let caller = caller(&self.node, &request).await?;
        let place = self.streams.open()?;
        let leaders = self
            .node
            .observe(&caller, &request.into_inner().name)
            .map_err(recipe_status)?;
        let responses = ReceiverStream::new(leaders).map(move |leader| {
            // The stream's place in the budget lives as long as the stream.
            let _place = &place;
            let (header, kv) = leader.map_err(recipe_status)?;
            Ok(electionpb::LeaderResponse {
                header: convert::header(header),
                kv: Some(convert::key_value(kv)),
            })
        });
        Ok(Response::new(Box::pin(responses)))
    }

    async fn resign(
        &self,
        request: Request<electionpb::ResignRequest>,
    ) -> Result<Response<electionpb::ResignResponse>, Status> {
        let caller = caller(&self.node, &request).await?;
        let leader = given_leader(request.into_inner().leader)?;
        let header = self
            .node
            .resign(&caller, &leader)
            .await
            .map_err(recipe_status)?;
        Ok(Response::new(electionpb::ResignResponse {
            header: convert::header(header),
        }))
    }
}

fn leader_key(leader: LeaderKey) -> electionpb::LeaderKey {
    electionpb::LeaderKey {
        name: leader.name,
        key: leader.key,
        rev: leader.rev,
        lease: leader.lease,
    }
}

fn given_leader(leader: Option<electionpb::LeaderKey>) -> Result<LeaderKey, Status> {
    let leader = leader.ok_or_else(|| Status::invalid_argument(MISSING_LEADER_KEY))?;
    Ok(LeaderKey {
        name: leader.name,
        key: leader.key,
        rev: leader.rev,
        lease: leader.lease,
    })
}

/// etcd answers its recipes' own errors with their plain messages (gRPC's UNKNOWN code, as a
/// Go error without a status becomes); the key-value API's errors as everywhere else.
fn recipe_status(error: RecipeError) -> Status {
    match error {
        RecipeError::Node(e) => status(e),
        other => Status::unknown(other.to_string()),
    }
}
