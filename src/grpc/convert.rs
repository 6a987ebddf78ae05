//! Between etcd's protobuf messages (`api::etcdpb`) and this crate's API types (`api`), which
//! follow etcd's shapes field for field. Requests are checked on the way in (etcd's own checks:
//! an empty key, a value or lease given where the request says to keep the current one, an
//! unknown enum value); answers are plain copies on the way out.

use tonic::Status;

use crate::api;
use crate::api::etcdpb::etcdserverpb as pb;
use crate::api::etcdpb::etcdserverpb::compare::CompareResult as PbCompareResult;
use crate::api::etcdpb::etcdserverpb::compare::CompareTarget as PbCompareTarget;
use crate::api::etcdpb::etcdserverpb::compare::TargetUnion;
use crate::api::etcdpb::etcdserverpb::request_op::Request as PbRequest;
use crate::api::etcdpb::etcdserverpb::response_op::Response as PbResponse;
use crate::api::etcdpb::mvccpb;

use super::shape::OpShape;
use super::shape::RangeShape;
use super::shape::TxnShape;
use super::status::EMPTY_KEY;
use super::status::LEASE_PROVIDED;
use super::status::VALUE_PROVIDED;

pub fn header(header: api::ResponseHeader) -> Option<pb::ResponseHeader> {
    Some(pb::ResponseHeader {
        cluster_id: header.cluster_id,
        member_id: header.member_id,
        revision: header.revision,
        raft_term: header.raft_term,
    })
}

pub fn key_value(kv: api::KeyValue) -> mvccpb::KeyValue {
    mvccpb::KeyValue {
        key: kv.key,
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
        version: kv.version,
        value: kv.value,
        lease: kv.lease,
    }
}

/// The part of a range etcd's storage answers; sorting and the revision filters are applied to
/// its answer (`shape`).
pub fn range_request(request: &pb::RangeRequest) -> Result<api::RangeRequest, Status> {
    non_empty_key(&request.key)?;
    Ok(api::RangeRequest {
        key: request.key.clone(),
        range_end: request.range_end.clone(),
        limit: request.limit,
        revision: request.revision,
        serializable: request.serializable,
        keys_only: request.keys_only,
        count_only: request.count_only,
    })
}

pub fn range_response(response: api::RangeResponse) -> pb::RangeResponse {
    pb::RangeResponse {
        header: header(response.header),
        kvs: response.kvs.into_iter().map(key_value).collect(),
        more: response.more,
        count: response.count,
    }
}

pub fn put_request(request: pb::PutRequest) -> Result<api::PutRequest, Status> {
    non_empty_key(&request.key)?;
    if request.ignore_value && !request.value.is_empty() {
        return Err(Status::invalid_argument(VALUE_PROVIDED));
    }
    if request.ignore_lease && request.lease != 0 {
        return Err(Status::invalid_argument(LEASE_PROVIDED));
    }
    Ok(api::PutRequest {
        key: request.key,
        value: request.value,
        lease: request.lease,
        prev_kv: request.prev_kv,
        ignore_value: request.ignore_value,
        ignore_lease: request.ignore_lease,
    })
}

pub fn put_response(response: api::PutResponse) -> pb::PutResponse {
    pb::PutResponse {
        header: header(response.header),
        prev_kv: response.prev_kv.map(key_value),
    }
}

pub fn delete_request(request: pb::DeleteRangeRequest) -> Result<api::DeleteRangeRequest, Status> {
    non_empty_key(&request.key)?;
    Ok(api::DeleteRangeRequest {
        key: request.key,
        range_end: request.range_end,
        prev_kv: request.prev_kv,
    })
}

pub fn delete_response(response: api::DeleteRangeResponse) -> pb::DeleteRangeResponse {
    pb::DeleteRangeResponse {
        header: header(response.header),
        deleted: response.deleted,
        prev_kvs: response.prev_kvs.into_iter().map(key_value).collect(),
    }
}

/// A transaction, with every nested operation and comparison checked, and the shapes of its
/// ranges (see `shape`), which it reads whole when they sort or filter: its answer is shaped
/// once it has run.
pub fn txn_request(request: pb::TxnRequest) -> Result<(api::TxnRequest, TxnShape), Status> {
    let (success, success_shapes) = request_ops(request.success)?;
    let (failure, failure_shapes) = request_ops(request.failure)?;
    let txn = api::TxnRequest {
        compare: request
            .compare
            .into_iter()
            .map(compare)
            .collect::<Result<_, _>>()?,
        success,
        failure,
    };
    let shape = TxnShape {
        success: success_shapes,
        failure: failure_shapes,
    };
    Ok((txn, shape))
}

fn request_ops(ops: Vec<pb::RequestOp>) -> Result<(Vec<api::RequestOp>, Vec<OpShape>), Status> {
    let mut requests = Vec::with_capacity(ops.len());
    let mut shapes = Vec::with_capacity(ops.len());
    for op in ops {
        let (request, shape) = match op.request {
            Some(PbRequest::RequestRange(range)) => {
                let shape = RangeShape::of(&range)?;
                let mut request = range_request(&range)?;
                if shape.reads_all() {
                    request.limit = 0;
                }
                (api::RequestOp::Range(request), OpShape::Range(shape))
            }
            Some(PbRequest::RequestPut(put)) => {
                (api::RequestOp::Put(put_request(put)?), OpShape::Write)
            }
            Some(PbRequest::RequestDeleteRange(delete)) => (
                api::RequestOp::DeleteRange(delete_request(delete)?),
                OpShape::Write,
            ),
            Some(PbRequest::RequestTxn(txn)) => {
                let (txn, shape) = txn_request(txn)?;
                (api::RequestOp::Txn(txn), OpShape::Txn(shape))
            }
            None => {
                return Err(Status::invalid_argument(
                    "etcdserver: a transaction operation names no request",
                ))
            }
        };
        requests.push(request);
        shapes.push(shape);
    }
    Ok((requests, shapes))
}

fn compare(compare: pb::Compare) -> Result<api::Compare, Status> {
    let result = match PbCompareResult::try_from(compare.result) {
        Ok(PbCompareResult::Equal) => api::CompareResult::Equal,
        Ok(PbCompareResult::NotEqual) => api::CompareResult::NotEqual,
        Ok(PbCompareResult::Greater) => api::CompareResult::Greater,
        Ok(PbCompareResult::Less) => api::CompareResult::Less,
        Err(_) => return Err(unknown_enum("compare result", compare.result)),
    };
    // etcd reads the operand the target names; an operand of another kind (or none) counts as
    // that kind's zero.
    let union = compare.target_union;
    let number = |pick: fn(&TargetUnion) -> Option<i64>| union.as_ref().and_then(pick).unwrap_or(0);
    let target = match PbCompareTarget::try_from(compare.target) {
        Ok(PbCompareTarget::Version) => api::CompareTarget::Version(number(|u| match u {
            TargetUnion::Version(v) => Some(*v),
            _ => None,
        })),
        Ok(PbCompareTarget::Create) => api::CompareTarget::CreateRevision(number(|u| match u {
            TargetUnion::CreateRevision(v) => Some(*v),
            _ => None,
        })),
        Ok(PbCompareTarget::Mod) => api::CompareTarget::ModRevision(number(|u| match u {
            TargetUnion::ModRevision(v) => Some(*v),
            _ => None,
        })),
        Ok(PbCompareTarget::Lease) => api::CompareTarget::Lease(number(|u| match u {
            TargetUnion::Lease(v) => Some(*v),
            _ => None,
        })),
        Ok(PbCompareTarget::Value) => api::CompareTarget::Value(match union {
            Some(TargetUnion::Value(value)) => value,
            _ => Vec::new(),
        }),
        Err(_) => return Err(unknown_enum("compare target", compare.target)),
    };
    Ok(api::Compare {
        key: compare.key,
        range_end: compare.range_end,
        target,
        result,
    })
}

pub fn txn_response(response: api::TxnResponse) -> pb::TxnResponse {
    pb::TxnResponse {
        header: header(response.header),
        succeeded: response.succeeded,
        responses: response
            .responses
            .into_iter()
            .map(|op| pb::ResponseOp {
                response: Some(match op {
                    api::ResponseOp::Range(range) => {
                        PbResponse::ResponseRange(range_response(range))
                    }
                    api::ResponseOp::Put(put) => PbResponse::ResponsePut(put_response(put)),
                    api::ResponseOp::DeleteRange(delete) => {
                        PbResponse::ResponseDeleteRange(delete_response(delete))
                    }
                    api::ResponseOp::Txn(txn) => PbResponse::ResponseTxn(txn_response(txn)),
                }),
            })
            .collect(),
    }
}

pub fn event(event: api::Event) -> mvccpb::Event {
    let kind = match event.kind {
        api::EventKind::Put => mvccpb::event::EventType::Put,
        api::EventKind::Delete => mvccpb::event::EventType::Delete,
    };
    mvccpb::Event {
        r#type: kind as i32,
        kv: Some(key_value(event.kv)),
        prev_kv: event.prev_kv.map(key_value),
    }
}

/// A watch's selection and start; the filters etcd knows, an unknown one refused.
pub fn watch_request(create: &pb::WatchCreateRequest) -> Result<api::WatchRequest, Status> {
    let filters = create
        .filters
        .iter()
        .map(
            |filter| match pb::watch_create_request::FilterType::try_from(*filter) {
                Ok(pb::watch_create_request::FilterType::Noput) => Ok(api::WatchFilter::NoPut),
                Ok(pb::watch_create_request::FilterType::Nodelete) => {
                    Ok(api::WatchFilter::NoDelete)
                }
                Err(_) => Err(unknown_enum("watch filter", *filter)),
            },
        )
        .collect::<Result<_, _>>()?;
    Ok(api::WatchRequest {
        key: create.key.clone(),
        range_end: create.range_end.clone(),
        start_revision: create.start_revision,
        progress_notify: create.progress_notify,
        filters,
        prev_kv: create.prev_kv,
    })
}

/// etcd refuses a request on an empty key before anything else.
fn non_empty_key(key: &[u8]) -> Result<(), Status> {
    if key.is_empty() {
        return Err(Status::invalid_argument(EMPTY_KEY));
    }
    Ok(())
}

fn unknown_enum(what: &str, value: i32) -> Status {
    Status::invalid_argument(format!("etcdserver: unknown {what} {value}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_comparison_reads_the_operand_its_target_names() {
        let value = pb::Compare {
            key: b"k".to_vec(),
            target: PbCompareTarget::Value as i32,
            result: PbCompareResult::NotEqual as i32,
            target_union: Some(TargetUnion::Value(b"v".to_vec())),
            ..pb::Compare::default()
        };
        let converted = compare(value).expect("valid");
        assert_eq!(converted.target, api::CompareTarget::Value(b"v".to_vec()));
        assert_eq!(converted.result, api::CompareResult::NotEqual);
        // No operand (or one of another kind) is the target's zero, as in etcd.
        let absent = pb::Compare {
            key: b"k".to_vec(),
            target: PbCompareTarget::Create as i32,
            target_union: Some(TargetUnion::Version(4)),
            ..pb::Compare::default()
        };
        let converted = compare(absent).expect("valid");
        assert_eq!(converted.target, api::CompareTarget::CreateRevision(0));
        let unknown = pb::Compare {
            result: 42,
            ..pb::Compare::default()
        };
        assert!(compare(unknown).is_err());
    }

    #[test]
    fn etcds_own_put_checks_are_made() {
        let empty = pb::PutRequest::default();
        assert_eq!(put_request(empty).unwrap_err().message(), EMPTY_KEY);
        let value_and_ignore = pb::PutRequest {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            ignore_value: true,
            ..pb::PutRequest::default()
        };
        assert_eq!(
            put_request(value_and_ignore).unwrap_err().message(),
            VALUE_PROVIDED
        );
        let lease_and_ignore = pb::PutRequest {
            key: b"k".to_vec(),
            lease: 5,
            ignore_lease: true,
            ..pb::PutRequest::default()
        };
        assert_eq!(
            put_request(lease_and_ignore).unwrap_err().message(),
            LEASE_PROVIDED
        );
    }

    #[test]
    fn a_txn_op_without_a_request_is_refused() {
        let txn = pb::TxnRequest {
            success: vec![pb::RequestOp { request: None }],
            ..pb::TxnRequest::default()
        };
        assert!(txn_request(txn).is_err());
    }
}
