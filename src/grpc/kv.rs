//! etcd's KV service: range, put, delete-range, txn and compaction, answered by the node's
//! key-value API. Range's sorting and revision filters, which etcd applies to what its storage
//! read, are applied here the same way.

use std::cmp::Ordering;
use std::sync::Arc;

use tonic::Request;
use tonic::Response;
use tonic::Status;

use crate::api;
use crate::api::etcdpb::etcdserverpb as pb;
use crate::api::etcdpb::etcdserverpb::kv_server::Kv;
use crate::api::etcdpb::etcdserverpb::range_request::SortOrder;
use crate::api::etcdpb::etcdserverpb::range_request::SortTarget;
use crate::node::Node;

use super::convert;
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
        range(&self.node, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn put(
        &self,
        request: Request<pb::PutRequest>,
    ) -> Result<Response<pb::PutResponse>, Status> {
        let put = convert::put_request(request.into_inner())?;
        let response = self.node.put(put).await.map_err(status)?;
        Ok(Response::new(convert::put_response(response)))
    }

    async fn delete_range(
        &self,
        request: Request<pb::DeleteRangeRequest>,
    ) -> Result<Response<pb::DeleteRangeResponse>, Status> {
        let delete = convert::delete_request(request.into_inner())?;
        let response = self.node.delete_range(delete).await.map_err(status)?;
        Ok(Response::new(convert::delete_response(response)))
    }

    async fn txn(
        &self,
        request: Request<pb::TxnRequest>,
    ) -> Result<Response<pb::TxnResponse>, Status> {
        let txn = convert::txn_request(request.into_inner())?;
        let response = self.node.txn(txn).await.map_err(status)?;
        Ok(Response::new(convert::txn_response(response)))
    }

    async fn compact(
        &self,
        request: Request<pb::CompactionRequest>,
    ) -> Result<Response<pb::CompactionResponse>, Status> {
        let request = request.into_inner();
        let response = self
            .node
            .compact(api::CompactionRequest {
                revision: request.revision,
                physical: request.physical,
            })
            .await
            .map_err(status)?;
        Ok(Response::new(pb::CompactionResponse {
            header: convert::header(response.header),
        }))
    }
}

/// A range as etcd answers it: when it sorts by anything but the key or filters by revision,
/// every matching key is read, filtered, sorted, and only then cut to `limit` (`more` telling
/// whether any were left out); `count` is the number of keys in the range before filtering.
pub async fn range(node: &Node, request: pb::RangeRequest) -> Result<pb::RangeResponse, Status> {
    let mut query = convert::range_request(&request)?;
    let target = SortTarget::try_from(request.sort_target)
        .map_err(|_| Status::invalid_argument("etcdserver: unknown sort target"))?;
    let mut order = SortOrder::try_from(request.sort_order)
        .map_err(|_| Status::invalid_argument("etcdserver: unknown sort order"))?;
    // etcd sorts ascending when a target other than the key is named without an order.
    if order == SortOrder::None && target != SortTarget::Key {
        order = SortOrder::Ascend;
    }
    let filters = RevisionFilters::of(&request);
    let in_key_order =
        order == SortOrder::None || (order, target) == (SortOrder::Ascend, SortTarget::Key);
    let reads_all = !in_key_order || filters.any();
    if reads_all {
        query.limit = 0;
    }
    let mut response = node.range(query, usize::MAX).await.map_err(status)?;
    if reads_all {
        response.kvs.retain(|kv| filters.keep(kv));
        if !in_key_order {
            response.kvs.sort_by(|a, b| compare_by(target, a, b));
            if order == SortOrder::Descend {
                response.kvs.reverse();
            }
        }
        let limit = usize::try_from(request.limit).unwrap_or(0);
        if limit > 0 && response.kvs.len() > limit {
            response.kvs.truncate(limit);
            response.more = true;
        }
    }
    Ok(convert::range_response(response))
}

/// Orders two keys by a sort target; equal targets keep key order (the sort is stable).
fn compare_by(target: SortTarget, a: &api::KeyValue, b: &api::KeyValue) -> Ordering {
    match target {
        SortTarget::Key => a.key.cmp(&b.key),
        SortTarget::Version => a.version.cmp(&b.version),
        SortTarget::Create => a.create_revision.cmp(&b.create_revision),
        SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
        SortTarget::Value => a.value.cmp(&b.value),
    }
}

/// A range's bounds on the revisions of the keys it returns; 0 is no bound.
struct RevisionFilters {
    min_mod: i64,
    max_mod: i64,
    min_create: i64,
    max_create: i64,
}

impl RevisionFilters {
    fn of(request: &pb::RangeRequest) -> Self {
        RevisionFilters {
            min_mod: request.min_mod_revision,
            max_mod: request.max_mod_revision,
            min_create: request.min_create_revision,
            max_create: request.max_create_revision,
        }
    }

    fn any(&self) -> bool {
        self.min_mod != 0 || self.max_mod != 0 || self.min_create != 0 || self.max_create != 0
    }

    fn keep(&self, kv: &api::KeyValue) -> bool {
        let within = |value: i64, min: i64, max: i64| {
            (min == 0 || value >= min) && (max == 0 || value <= max)
        };
        within(kv.mod_revision, self.min_mod, self.max_mod)
            && within(kv.create_revision, self.min_create, self.max_create)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(key: &str, create: i64, modified: i64) -> api::KeyValue {
        api::KeyValue {
            key: key.into(),
            create_revision: create,
            mod_revision: modified,
            ..api::KeyValue::default()
        }
    }

    #[test]
    fn revision_filters_bound_both_ends_and_zero_means_none() {
        let request = pb::RangeRequest {
            min_create_revision: 3,
            max_mod_revision: 8,
            ..pb::RangeRequest::default()
        };
        let filters = RevisionFilters::of(&request);
        assert!(filters.any());
        assert!(filters.keep(&kv("a", 3, 8)));
        assert!(!filters.keep(&kv("a", 2, 5)));
        assert!(!filters.keep(&kv("a", 4, 9)));
        assert!(!RevisionFilters::of(&pb::RangeRequest::default()).any());
    }

    #[test]
    fn sort_targets_order_by_what_they_name() {
        let (a, b) = (kv("b", 1, 9), kv("a", 2, 3));
        assert_eq!(compare_by(SortTarget::Key, &a, &b), Ordering::Greater);
        assert_eq!(compare_by(SortTarget::Create, &a, &b), Ordering::Less);
        assert_eq!(compare_by(SortTarget::Mod, &a, &b), Ordering::Greater);
    }
}
