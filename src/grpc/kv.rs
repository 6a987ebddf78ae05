//! etcd's KV service: range, put, delete-range, txn and compaction, answered by the node's
//! key-value API, with ranges' sorting and revision filters applied as etcd applies them
//! (`shape`).

use std::sync::Arc;

use tonic::Request;
use tonic::Response;
use tonic::Status;

use crate::api;
use crate::api::etcdpb::etcdserverpb as pb;
use crate::api::etcdpb::etcdserverpb::kv_server::Kv;
use crate::node::Caller;
use crate::node::Node;

use super::caller;
use super::convert;
use super::shape::RangeShape;
use super::status::status;

pub struct KvService {
    node: Arc<Node>,
}

impl KvService {
    pub fn new(node: Arc<Node>) -> Self {
        KvService { node }
    }
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn range(
        &self,
        request: Request<pb::RangeRequest>,
    ) -> Result<Response<pb::RangeResponse>, Status> {
        let caller = caller(&self.node, &request).await?;
        range(&self.node, &caller, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn put(
        &self,
        request: Request<pb::PutRequest>,
    ) -> Result<Response<pb::PutResponse>, Status> {
        let caller = caller(&self.node, &request).await?;
        let put = convert::put_request(request.into_inner())?;
        let response = self.node.put(&caller, put).await.map_err(status)?;
        Ok(Response::new(convert::put_response(response)))
    }

    async fn delete_range(
        &self,
        request: Request<pb::DeleteRangeRequest>,
    ) -> Result<Response<pb::DeleteRangeResponse>, Status> {
        let caller = caller(&self.node, &request).await?;
        let delete = convert::delete_request(request.into_inner())?;
        let response = self
            .node
            .delete_range(&caller, delete)
            .await
            .map_err(status)?;
        Ok(Response::new(convert::delete_response(response)))
    }

    async fn txn(
        &self,
        request: Request<pb::TxnRequest>,
    ) -> Result<Response<pb::TxnResponse>, Status> {
        let caller = caller(&self.node, &request).await?;
        let (txn, shape) = convert::txn_request(request.into_inner())?;
        let mut response = self.node.txn(&caller, txn).await.map_err(status)?;
        shape.apply(&mut response);
        Ok(Response::new(convert::txn_response(response)))
    }

    async fn compact(
        &self,
        request: Request<pb::CompactionRequest>,
    ) -> Result<Response<pb::CompactionResponse>, Status> {
        let caller = caller(&self.node, &request).await?;
        let request = request.into_inner();
        let response = self
            .node
            .compact(
                &caller,
                api::CompactionRequest {
                    revision: request.revision,
                    physical: request.physical,
                },
            )
            .await
            .map_err(status)?;
        Ok(Response::new(pb::CompactionResponse {
            header: convert::header(response.header),
        }))
    }
}

/// A range as etcd answers it: read (whole, when it sorts by anything but the key or filters by
/// revision), then shaped (see `shape`).
pub async fn range(
    node: &Node,
    caller: &Caller,
    request: pb::RangeRequest,
) -> Result<pb::RangeResponse, Status> {
    let mut query = convert::range_request(&request)?;
    let shape = RangeShape::of(&request)?;
    if shape.reads_all() {
        query.limit = 0;
    }
    let mut response = node
        .range(caller, query, usize::MAX)
        .await
        .map_err(status)?;
    shape.apply(&mut response);
    Ok(convert::range_response(response))
}
