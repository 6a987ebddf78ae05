//! What etcd does to a range's answer after reading it from storage: filter by revision, sort,
//! and only then cut to the limit. ondisk's storage reads in key order with a limit, so a range
//! that sorts by anything else or filters is read whole and shaped here, whether it stands alone
//! or is an operation of a transaction (etcd shapes both alike; its lock recipe finds the holder
//! with a sorted range inside a transaction).

use std::cmp::Ordering;

use tonic::Status;

use crate::api;
use crate::api::etcdpb::etcdserverpb as pb;
use crate::api::etcdpb::etcdserverpb::range_request::SortOrder;
use crate::api::etcdpb::etcdserverpb::range_request::SortTarget;

/// How one range's answer is shaped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeShape {
    order: SortOrder,
    target: SortTarget,
    filters: RevisionFilters,
    /// The limit asked for (0: none), applied after sorting.
    limit: i64,
}

impl RangeShape {
    pub fn of(request: &pb::RangeRequest) -> Result<Self, Status> {
        let target = SortTarget::try_from(request.sort_target)
            .map_err(|_| Status::invalid_argument("etcdserver: unknown sort target"))?;
        let mut order = SortOrder::try_from(request.sort_order)
            .map_err(|_| Status::invalid_argument("etcdserver: unknown sort order"))?;
        // etcd sorts ascending when a target other than the key is named without an order.
        if order == SortOrder::None && target != SortTarget::Key {
            order = SortOrder::Ascend;
        }
        Ok(RangeShape {
            order,
            target,
            filters: RevisionFilters::of(request),
            limit: request.limit,
        })
    }

    /// Whether the answer comes in storage's key order.
    fn in_key_order(&self) -> bool {
        self.order == SortOrder::None
            || (self.order, self.target) == (SortOrder::Ascend, SortTarget::Key)
    }

    /// Whether storage must read every key of the range (its limit would cut the wrong ones).
    pub fn reads_all(&self) -> bool {
        !self.in_key_order() || self.filters.any()
    }

    /// Filters, sorts and cuts an answer read whole; `count` stays the number of keys in the
    /// range before filtering, as etcd reports it. An answer storage could limit is left as is.
    pub fn apply(&self, response: &mut api::RangeResponse) {
        if !self.reads_all() {
            return;
        }
        response.kvs.retain(|kv| self.filters.keep(kv));
        if !self.in_key_order() {
            let target = self.target;
            response.kvs.sort_by(|a, b| compare_by(target, a, b));
            if self.order == SortOrder::Descend {
                response.kvs.reverse();
            }
        }
        let limit = usize::try_from(self.limit).unwrap_or(0);
        if limit > 0 && response.kvs.len() > limit {
            response.kvs.truncate(limit);
            response.more = true;
        }
    }
}

/// The shapes of a transaction's ranges, in the positions of its operations, so that its answer
/// can be shaped once it has run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TxnShape {
    pub success: Vec<OpShape>,
    pub failure: Vec<OpShape>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpShape {
    Range(RangeShape),
    Txn(TxnShape),
    /// A put or a delete: nothing to shape.
    Write,
}

impl TxnShape {
    /// Shapes the answers of the branch that ran.
    pub fn apply(&self, response: &mut api::TxnResponse) {
        let branch = if response.succeeded {
            &self.success
        } else {
            &self.failure
        };
        for (shape, answer) in branch.iter().zip(&mut response.responses) {
            match (shape, answer) {
                (OpShape::Range(shape), api::ResponseOp::Range(range)) => shape.apply(range),
                (OpShape::Txn(shape), api::ResponseOp::Txn(txn)) => shape.apply(txn),
                _ => {}
            }
        }
    }
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
#[derive(Debug, Clone, PartialEq, Eq)]
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
    fn a_sorted_limited_range_is_cut_after_sorting() {
        let request = pb::RangeRequest {
            sort_target: SortTarget::Create as i32,
            limit: 1,
            ..pb::RangeRequest::default()
        };
        let shape = RangeShape::of(&request).expect("valid");
        assert!(shape.reads_all());
        let mut response = api::RangeResponse {
            kvs: vec![kv("a", 9, 9), kv("m", 5, 5), kv("z", 2, 7)],
            count: 3,
            ..api::RangeResponse::default()
        };
        shape.apply(&mut response);
        assert_eq!(response.kvs, vec![kv("z", 2, 7)]);
        assert!(response.more);
        assert_eq!(response.count, 3);
    }

    #[test]
    fn a_txn_shapes_the_ranges_of_the_branch_that_ran() {
        let oldest_first = RangeShape::of(&pb::RangeRequest {
            sort_target: SortTarget::Create as i32,
            sort_order: SortOrder::Ascend as i32,
            limit: 1,
            ..pb::RangeRequest::default()
        })
        .expect("valid");
        let shape = TxnShape {
            success: vec![OpShape::Write, OpShape::Range(oldest_first)],
            failure: Vec::new(),
        };
        let mut response = api::TxnResponse {
            succeeded: true,
            responses: vec![
                api::ResponseOp::Put(api::PutResponse::default()),
                api::ResponseOp::Range(api::RangeResponse {
                    kvs: vec![kv("o/0", 9, 9), kv("o/a", 6, 6), kv("o/z", 4, 4)],
                    count: 3,
                    ..api::RangeResponse::default()
                }),
            ],
            ..api::TxnResponse::default()
        };
        shape.apply(&mut response);
        let api::ResponseOp::Range(range) = &response.responses[1] else {
            panic!("a range answer");
        };
        assert_eq!(range.kvs, vec![kv("o/z", 4, 4)]);
    }
}
