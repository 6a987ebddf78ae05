//! Keys, revisions and the requests that read and change them: range, put, delete-range, txn and
//! compaction, as etcd's v3 KV service defines them.

use serde::Deserialize;
use serde::Serialize;

/// What every answer carries: who answered, and the store's revision the answer reflects.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResponseHeader {
    /// The cluster's id, the same on every member.
    pub cluster_id: u64,
    /// The member that answered.
    pub member_id: u64,
    /// The store's revision when the answer was made: for a write, the revision it created (or
    /// the current one, when it changed nothing); for a read, the current one, even when it read
    /// an older revision (etcd's rule).
    pub revision: i64,
    /// The Raft term the answering member knew.
    pub raft_term: u64,
}

/// A key as stored at some revision.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyValue {
    #[serde(with = "crate::api::bytes")]
    pub key: Vec<u8>,
    /// The revision that created the key (after its last deletion, if any).
    pub create_revision: i64,
    /// The revision of the key's last change.
    pub mod_revision: i64,
    /// Changes since the key was created: 1 after the creating put.
    pub version: i64,
    #[serde(with = "crate::api::bytes")]
    pub value: Vec<u8>,
    /// The lease the key is attached to, 0 for none.
    pub lease: i64,
}

/// Reads a key, or every key in `[key, range_end)`.
///
/// `range_end` follows etcd: empty means the single key `key`; `[0]` means every key from `key`
/// on; [`prefix_end`] of a prefix selects every key under it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RangeRequest {
    #[serde(with = "crate::api::bytes")]
    pub key: Vec<u8>,
    #[serde(with = "crate::api::bytes")]
    pub range_end: Vec<u8>,
    /// At most this many keys; 0 for no limit.
    pub limit: i64,
    /// Read the store as it was at this revision; 0 for the current one. Refused once compacted.
    pub revision: i64,
    /// Serve from this member's state as it is, without confirming with the leader (may be stale).
    pub serializable: bool,
    /// Return keys and revisions without values.
    pub keys_only: bool,
    /// Return only the count.
    pub count_only: bool,
}

/// The keys found, in key order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeResponse {
    pub header: ResponseHeader,
    pub kvs: Vec<KeyValue>,
    /// More keys matched than `limit` let through.
    pub more: bool,
    /// How many keys matched in all.
    pub count: i64,
}

/// Sets a key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PutRequest {
    #[serde(with = "crate::api::bytes")]
    pub key: Vec<u8>,
    #[serde(with = "crate::api::bytes")]
    pub value: Vec<u8>,
    /// Attach the key to this lease (0: none); the key is deleted when the lease ends.
    pub lease: i64,
    /// Answer with the key as it was before.
    pub prev_kv: bool,
    /// Keep the current value (the key must exist).
    pub ignore_value: bool,
    /// Keep the current lease (the key must exist).
    pub ignore_lease: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutResponse {
    pub header: ResponseHeader,
    /// The key before the put, when asked for and it existed.
    pub prev_kv: Option<KeyValue>,
}

/// Deletes a key, or every key in a range (as [`RangeRequest`] selects them).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeleteRangeRequest {
    #[serde(with = "crate::api::bytes")]
    pub key: Vec<u8>,
    #[serde(with = "crate::api::bytes")]
    pub range_end: Vec<u8>,
    /// Answer with the deleted keys.
    pub prev_kv: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteRangeResponse {
    pub header: ResponseHeader,
    /// Keys deleted.
    pub deleted: i64,
    pub prev_kvs: Vec<KeyValue>,
}

/// One operation of a transaction branch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestOp {
    Range(RangeRequest),
    Put(PutRequest),
    DeleteRange(DeleteRangeRequest),
    Txn(TxnRequest),
}

/// The answer to one [`RequestOp`], in the same position.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResponseOp {
    Range(RangeResponse),
    Put(PutResponse),
    DeleteRange(DeleteRangeResponse),
    Txn(TxnResponse),
}

/// What a comparison looks at, and the operand it is compared with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CompareTarget {
    /// The key's version (0 when absent).
    Version(i64),
    /// The revision that created the key (0 when absent: `create_revision == 0` tests absence).
    CreateRevision(i64),
    /// The revision of the key's last change (0 when absent).
    ModRevision(i64),
    /// The key's value (an absent key fails every value comparison, as in etcd).
    Value(#[serde(with = "crate::api::bytes")] Vec<u8>),
    /// The key's lease (0 when none or absent).
    Lease(i64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CompareResult {
    Equal,
    NotEqual,
    Greater,
    Less,
}

/// A condition of a transaction: holds when it holds for every key in the range (for a single
/// key, that key).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Compare {
    #[serde(with = "crate::api::bytes")]
    pub key: Vec<u8>,
    #[serde(default, with = "crate::api::bytes")]
    pub range_end: Vec<u8>,
    pub target: CompareTarget,
    pub result: CompareResult,
}

/// If every comparison holds, the `success` operations run, otherwise the `failure` ones; either
/// way atomically, at one revision.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TxnRequest {
    pub compare: Vec<Compare>,
    pub success: Vec<RequestOp>,
    pub failure: Vec<RequestOp>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnResponse {
    pub header: ResponseHeader,
    /// Whether the comparisons held (so `success` ran).
    pub succeeded: bool,
    pub responses: Vec<ResponseOp>,
}

/// Forgets the history before `revision`: reads and watches from older revisions are refused
/// from then on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CompactionRequest {
    pub revision: i64,
    /// Accepted for etcd's sake; the compacted revision is in force at once either way, and the
    /// space is reclaimed in the background.
    pub physical: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompactionResponse {
    pub header: ResponseHeader,
}

/// The `range_end` selecting every key that starts with `prefix` (etcd's rule: the prefix with
/// its last byte below 0xff incremented; `[0]`, every key, when there is none).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// The key a participant of etcd's lock and election recipes holds under `prefix`: the prefix
/// and its lease id in hex, as etcd's own recipes name it.
pub fn participant_key(prefix: &[u8], lease: i64) -> Vec<u8> {
    [prefix, format!("{lease:x}").as_bytes()].concat()
}

/// The transaction a participant of etcd's recipes joins with: create `key` with `value` under
/// `lease` unless it exists, and read it otherwise. Either way the answer tells the revision that
/// created the key, which orders the participants.
pub fn create_unless_exists(key: &[u8], value: Vec<u8>, lease: i64) -> TxnRequest {
    TxnRequest {
        compare: vec![Compare {
            key: key.to_vec(),
            range_end: Vec::new(),
            target: CompareTarget::CreateRevision(0),
            result: CompareResult::Equal,
        }],
        success: vec![RequestOp::Put(PutRequest {
            key: key.to_vec(),
            value,
            lease,
            ..PutRequest::default()
        })],
        failure: vec![RequestOp::Range(RangeRequest {
            key: key.to_vec(),
            ..RangeRequest::default()
        })],
    }
}

/// The keys a request with `key` and `range_end` selects, in etcd's terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySpan<'a> {
    /// Exactly one key.
    One(&'a [u8]),
    /// `[start, end)`, or from `start` on when `end` is `None`.
    Range {
        start: &'a [u8],
        end: Option<&'a [u8]>,
    },
}

impl<'a> KeySpan<'a> {
    /// Reads etcd's encoding: an empty `range_end` is the single key, `[0]` means no end.
    pub fn new(key: &'a [u8], range_end: &'a [u8]) -> Self {
        match range_end {
            [] => KeySpan::One(key),
            [0] => KeySpan::Range {
                start: key,
                end: None,
            },
            end => KeySpan::Range {
                start: key,
                end: Some(end),
            },
        }
    }

    /// Whether `key` is selected.
    pub fn contains(&self, key: &[u8]) -> bool {
        match self {
            KeySpan::One(one) => *one == key,
            KeySpan::Range { start, end } => *start <= key && end.is_none_or(|end| key < end),
        }
    }

    /// The first key that could be selected.
    pub fn start(&self) -> &'a [u8] {
        match self {
            KeySpan::One(key) => key,
            KeySpan::Range { start, .. } => start,
        }
    }

    /// Whether `key` lies past every selected key (scans stop there).
    pub fn is_past(&self, key: &[u8]) -> bool {
        match self {
            KeySpan::One(one) => key > *one,
            KeySpan::Range { end, .. } => end.is_some_and(|end| key >= end),
        }
    }

    /// Whether the span selects nothing (an end at or before its start).
    pub fn is_empty(&self) -> bool {
        matches!(self, KeySpan::Range { start, end: Some(end) } if end <= start)
    }

    /// Whether this span and `other` share a key.
    pub fn overlaps(&self, other: &KeySpan<'_>) -> bool {
        if self.is_empty() || other.is_empty() {
            return false;
        }
        !self.is_past(other.start()) && !other.is_past(self.start())
    }
}

/// The most operations a transaction branch (and the most comparisons a transaction) may hold
/// by default: etcd's `--max-txn-ops`.
pub const DEFAULT_MAX_TXN_OPS: usize = 128;

/// Refuses a range that could only be a mistake: a negative revision or limit, an end before its
/// start.
pub fn validate_range(range: &RangeRequest) -> Result<(), String> {
    if range.revision < 0 {
        return Err(format!("revision {} is negative", range.revision));
    }
    if range.limit < 0 {
        return Err(format!("limit {} is negative", range.limit));
    }
    validate_span(&range.key, &range.range_end)
}

/// Refuses a `range_end` before its key (etcd answers such a range with nothing; here it is
/// taken for the mistake it is).
pub fn validate_span(key: &[u8], range_end: &[u8]) -> Result<(), String> {
    if KeySpan::new(key, range_end).is_empty() {
        return Err("range_end is before key".into());
    }
    Ok(())
}

/// Why a transaction is refused before it runs. The first two are etcd's own refusals, which its
/// clients tell apart.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidTxn {
    #[error(
        "too many operations in txn request (at most {max} comparisons and {max} operations per \
         branch)"
    )]
    TooManyOps { max: usize },
    #[error("duplicate key given in txn request")]
    DuplicateKey,
    /// A malformed range in a comparison or an operation.
    #[error("{0}")]
    Malformed(String),
}

/// Refuses a transaction with more than `max_ops` comparisons or operations in a branch, with two
/// changes of one key in a branch (etcd's "duplicate key given in txn request": the outcome would
/// depend on their order), or with a malformed range.
pub fn validate_txn(txn: &TxnRequest, max_ops: usize) -> Result<(), InvalidTxn> {
    if txn.compare.len() > max_ops || txn.success.len() > max_ops || txn.failure.len() > max_ops {
        return Err(InvalidTxn::TooManyOps { max: max_ops });
    }
    for compare in &txn.compare {
        validate_span(&compare.key, &compare.range_end).map_err(InvalidTxn::Malformed)?;
    }
    for branch in [&txn.success, &txn.failure] {
        let mut puts = Vec::new();
        let mut deletes = Vec::new();
        collect_changes(branch, &mut puts, &mut deletes, max_ops)?;
        puts.sort();
        if puts.windows(2).any(|pair| pair[0] == pair[1]) {
            return Err(InvalidTxn::DuplicateKey);
        }
        for (key, range_end) in &deletes {
            let span = KeySpan::new(key, range_end);
            if puts.iter().any(|put| span.contains(put)) {
                return Err(InvalidTxn::DuplicateKey);
            }
        }
    }
    Ok(())
}

/// The keys a branch puts and the spans it deletes, nested transactions included (each of their
/// branches may run).
fn collect_changes<'a>(
    ops: &'a [RequestOp],
    puts: &mut Vec<&'a [u8]>,
    deletes: &mut Vec<(&'a [u8], &'a [u8])>,
    max_ops: usize,
) -> Result<(), InvalidTxn> {
    for op in ops {
        match op {
            RequestOp::Range(range) => validate_range(range).map_err(InvalidTxn::Malformed)?,
            RequestOp::Put(put) => puts.push(&put.key),
            RequestOp::DeleteRange(delete) => {
                validate_span(&delete.key, &delete.range_end).map_err(InvalidTxn::Malformed)?;
                deletes.push((&delete.key, &delete.range_end));
            }
            RequestOp::Txn(inner) => {
                validate_txn(inner, max_ops)?;
                collect_changes(&inner.success, puts, deletes, max_ops)?;
                collect_changes(&inner.failure, puts, deletes, max_ops)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_is_etcds() {
        assert_eq!(prefix_end(b"abc"), b"abd");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
        assert_eq!(prefix_end(b""), vec![0]);
    }

    #[test]
    fn spans_select_as_etcd_does() {
        let one = KeySpan::new(b"k", b"");
        assert!(one.contains(b"k") && !one.contains(b"k1"));
        let prefix_end = prefix_end(b"k/");
        let prefix = KeySpan::new(b"k/", &prefix_end);
        assert!(prefix.contains(b"k/a") && !prefix.contains(b"k0") && prefix.is_past(b"k0"));
        let all = KeySpan::new(b"\0", b"\0");
        assert!(all.contains(b"zzz") && !all.is_past(b"\xff\xff"));
        assert!(KeySpan::new(b"b", b"a").is_empty());
        assert!(prefix.overlaps(&KeySpan::new(b"k/x", b"")));
        assert!(!prefix.overlaps(&KeySpan::new(b"l", b"m")));
        assert!(KeySpan::new(b"a", b"c").overlaps(&KeySpan::new(b"b", b"\0")));
    }

    #[test]
    fn a_txn_reads_as_json() {
        let txn: TxnRequest = serde_json::from_str(
            r#"{"compare":[{"key":"a","target":{"create_revision":0},"result":"equal"}],
                "success":[{"put":{"key":"a","value":"1"}}],
                "failure":[{"range":{"key":"a"}}]}"#,
        )
        .unwrap();
        assert_eq!(txn.compare[0].target, CompareTarget::CreateRevision(0));
        assert!(matches!(&txn.success[0], RequestOp::Put(put) if put.value == b"1"));
        assert!(serde_json::from_str::<TxnRequest>(r#"{"compares":[]}"#).is_err());
    }

    fn put(key: &str) -> RequestOp {
        RequestOp::Put(PutRequest {
            key: key.into(),
            ..PutRequest::default()
        })
    }

    #[test]
    fn txns_that_change_a_key_twice_or_hold_too_many_ops_are_refused() {
        let twice = TxnRequest {
            success: vec![put("a"), put("a")],
            ..TxnRequest::default()
        };
        assert_eq!(validate_txn(&twice, 128), Err(InvalidTxn::DuplicateKey));
        let put_in_delete = TxnRequest {
            failure: vec![
                RequestOp::DeleteRange(DeleteRangeRequest {
                    key: b"a".to_vec(),
                    range_end: b"c".to_vec(),
                    prev_kv: false,
                }),
                put("b"),
            ],
            ..TxnRequest::default()
        };
        assert!(validate_txn(&put_in_delete, 128).is_err());
        let branches = TxnRequest {
            success: vec![put("a")],
            failure: vec![put("a")],
            ..TxnRequest::default()
        };
        assert_eq!(validate_txn(&branches, 128), Ok(()));
        let many = TxnRequest {
            success: (0..129).map(|i| put(&i.to_string())).collect(),
            ..TxnRequest::default()
        };
        assert_eq!(
            validate_txn(&many, 128),
            Err(InvalidTxn::TooManyOps { max: 128 })
        );
    }
}
