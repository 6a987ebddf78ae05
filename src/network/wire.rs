//! What travels between nodes, and how it is framed.
//!
//! A frame is a 4-byte big-endian length followed by that many bytes of bincode. Lengths above
//! [`MAX_FRAME_LEN`] are refused before any allocation, so a garbage or hostile prefix cannot make a
//! node allocate gigabytes.

use std::io;
use std::time::Duration;

use openraft::raft::AppendEntriesRequest;
use openraft::raft::AppendEntriesResponse;
use openraft::raft::SnapshotResponse;
use openraft::raft::TransferLeaderRequest;
use openraft::raft::TransferLeaderResponse;
use openraft::raft::VoteRequest;
use openraft::raft::VoteResponse;

use serde::Deserialize;
use serde::Serialize;
use tokio::io::AsyncRead;
use tokio::io::AsyncReadExt;

use crate::api;
use crate::error::Error;
use crate::types::ApplyError;
use crate::types::Command;
use crate::types::CommandResult;
use crate::types::Member;
use crate::types::NodeId;
use crate::types::SnapshotMeta;
use crate::types::TypeConfig;
use crate::types::Vote;

/// The largest frame a node sends or accepts. Append batches are capped well below it by bytes
/// (the log store's replication reads), and snapshots travel in chunks far smaller.
pub const MAX_FRAME_LEN: u32 = 80 << 20;

/// The highest `-max-request-bytes` a node accepts: one entry of this size, alone in an
/// AppendEntries with its few bytes of header, still fits in a frame.
pub const MAX_REQUEST_BYTES_CEILING: u64 = 64 << 20;

/// A request from one node to another.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Request {
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<TypeConfig>),
    PreVote(VoteRequest<TypeConfig>),
    TransferLeader(TransferLeaderRequest<TypeConfig>),
    /// One piece of a snapshot stream; the last one asks the receiver to install it.
    SnapshotChunk(SnapshotChunk),
    /// A client write forwarded by a follower; the receiver must be the leader.
    Propose(Command),
    /// A membership change forwarded by a follower; the receiver must be the leader.
    Membership(MembershipChange),
    /// Sent by the leader to a node it has just removed from the cluster, which may never
    /// receive the entry that removed it. Anyone can send it and stopping is for good, so the
    /// receiver checks it and has it confirmed before acting on it (see [`RemovalNotice`]).
    Removed(RemovalNotice),
    /// A follower asking the leader for a read index: the log index a linearizable read must wait
    /// for the follower's state machine to reach.
    ReadIndex,
    /// A client reading one key from the receiver's state machine: linearizable (after a read
    /// index round, forwarded to the leader if need be) or as the receiver has it now.
    Get {
        #[serde(with = "crate::api::bytes")]
        key: Vec<u8>,
        linearizable: bool,
    },
    /// Asks whether node `id` has been removed from the cluster, as the receiver's applied state
    /// says: how a node told it was removed confirms it with a member of its own cluster. Last,
    /// so the other requests keep their encoding.
    WasRemoved {
        id: NodeId,
    },
    /// A client's range read, served by the receiver (linearizable unless `serializable`).
    Range(api::RangeRequest),
    /// A lease keep-alive; the receiver must be the leader, which counts expiry.
    LeaseKeepAlive {
        id: i64,
    },
    /// A lease's remaining time and keys; the receiver must be the leader.
    LeaseTimeToLive {
        id: i64,
        keys: bool,
    },
    /// Every lease in force, as the receiver has them after a read barrier.
    Leases,
    /// The next changes of a watch (a native client's long poll): the receiver answers with the
    /// first response the watch produces after its created one, or with a progress response once
    /// `wait_ms` pass without changes.
    WatchPoll {
        request: api::WatchRequest,
        wait_ms: u64,
    },
    /// A native client logging in: the receiver checks the password and answers a token
    /// ([`Response::Token`]) that every member accepts.
    Authenticate {
        name: String,
        password: api::Password,
    },
    /// A native client's `request` made as the user `token` names, checked against that user's
    /// permissions as the client port checks its requests. Only the client requests above
    /// (`Propose`, `Get`, `Range`, the lease requests, `WatchPoll`) may be wrapped.
    AsUser {
        token: String,
        request: Box<Request>,
    },
    /// Node `id` of the cluster `cluster_id` has just started: the receiver stops pausing before
    /// it reaches `id` (its connection's backoff and, on a leader, the replication stream's) and
    /// answers whether it follows a leader of that cluster ([`Response::Started`]).
    Started {
        id: NodeId,
        cluster_id: u64,
    },
}

/// A membership change as a user asks for it; the leader checks it against the cluster's rules
/// before handing it to openraft.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum MembershipChange {
    /// Add a node as a learner. A `voter` is promoted by the leader once it has caught up; any
    /// other learner stays one. With `prev_index`, refused unless the membership in force is still
    /// the one set at that log index, so a change decided on a stale view never applies.
    Add {
        id: NodeId,
        member: Member,
        voter: bool,
        prev_index: Option<u64>,
    },
    /// Remove a voter or a learner.
    Remove { id: NodeId },
    /// Record a member's current addresses.
    UpdateAddresses { id: NodeId, member: Member },
    /// Hand leadership to voter `to` (openraft's leader transfer). Runs with the membership
    /// changes so a transfer never overlaps one.
    TransferLeader { to: NodeId },
}

/// What a leader tells a node it has removed, so that the receiver can tell a notice meant for it,
/// from its own cluster and current, from one meant for a node that had its address before, from
/// another cluster, stale, or forged.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RemovalNotice {
    /// The node removed; any other node at its address refuses the notice.
    pub target: NodeId,
    /// The sender's vote: its term, and its id, which the receiver looks up in its own
    /// membership to confirm the removal with that member at the address the cluster recorded.
    pub vote: Vote,
}

/// A piece of a snapshot stream in transit.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SnapshotChunk {
    /// The sender's vote, which the receiver hands to openraft with the complete snapshot.
    pub vote: Vote,
    pub meta: SnapshotMeta,
    /// Where `data` starts in the snapshot stream; a transfer always starts at 0.
    pub offset: u64,
    #[serde(with = "crate::api::bytes")]
    pub data: Vec<u8>,
    /// True on the last chunk.
    pub done: bool,
}

/// A successful answer, matching the request's kind.
#[derive(Debug, Serialize, Deserialize)]
pub enum Response {
    AppendEntries(AppendEntriesResponse<TypeConfig>),
    Vote(VoteResponse<TypeConfig>),
    TransferLeader(TransferLeaderResponse<TypeConfig>),
    SnapshotChunkStored,
    SnapshotInstalled(SnapshotResponse<TypeConfig>),
    Proposed(CommandResult),
    ReadIndex(u64),
    Acknowledged,
    /// The value a [`Request::Get`] found, if any.
    Value(#[serde(with = "crate::api::bytes::option")] Option<Vec<u8>>),
    /// Whether the node a [`Request::WasRemoved`] asked about has been removed.
    WasRemoved(bool),
    Range(api::RangeResponse),
    LeaseKeepAlive(api::LeaseKeepAliveResponse),
    LeaseTimeToLive(api::LeaseTimeToLiveResponse),
    Leases(api::LeaseLeasesResponse),
    Watch(api::WatchResponse),
    Token(api::AuthenticateResponse),
    /// The answer to [`Request::Started`]: whether the receiver follows a leader (or is one) of
    /// the sender's cluster.
    Started {
        follows_leader: bool,
    },
}

/// Why the remote node did not serve a request.
#[derive(Debug, Clone, Serialize, Deserialize, thiserror::Error)]
pub enum RemoteError {
    /// The request needs the leader and the receiver is not it; carries its best knowledge of who
    /// is. Nothing was done, so the request may be retried elsewhere.
    #[error("node is not the leader")]
    NotLeader { leader: Option<(NodeId, Member)> },
    /// The request was refused or failed and was not applied.
    #[error("{0}")]
    Refused(String),
    /// The leader could not do it in time (typically no quorum), and did nothing.
    #[error("timed out; nothing was changed")]
    TimedOut,
    /// The sender has been removed from the cluster and must stop.
    #[error("this node has been removed from the cluster")]
    Removed,
    /// The request may or may not have taken effect (e.g. the entry was appended and the leader
    /// changed before it committed).
    #[error("outcome unknown: {0}")]
    Unknown(String),
    /// The request is over the receiver's `-max-request-bytes` and was not proposed.
    #[error("request of {size} bytes is over the limit of {limit} bytes")]
    TooLarge { size: u64, limit: u64 },
    /// The request was refused for what it asks (an unknown lease, a compacted revision, a
    /// malformed request); nothing was changed.
    #[error(transparent)]
    Request(ApplyError),
    /// The request was refused because another of its kind is in progress (a membership
    /// change); nothing was changed, and the same request may succeed once that one is done.
    #[error("busy, try again: {0}")]
    Busy(String),
}

impl RemoteError {
    /// The library error that a remote failure of `op` becomes once the caller stops retrying
    /// (`timeout` is the caller's deadline, for the message).
    pub fn into_error(self, op: &'static str, timeout: Duration) -> Error {
        match self {
            RemoteError::NotLeader { .. } | RemoteError::TimedOut => {
                Error::Timeout { op, after: timeout }
            }
            RemoteError::Refused(reason) => Error::Refused(reason),
            RemoteError::Removed => Error::Removed,
            RemoteError::Unknown(reason) => Error::OutcomeUnknown { op, reason },
            RemoteError::TooLarge { size, limit } => Error::RequestTooLarge {
                size: Some(size),
                limit,
            },
            RemoteError::Request(refusal) => Error::Request(refusal),
            RemoteError::Busy(reason) => Error::Busy(reason),
        }
    }
}

/// A request with the id its answer will carry.
#[derive(Debug, Serialize, Deserialize)]
pub struct RequestFrame {
    pub id: u64,
    pub request: Request,
}

/// An answer to the request with the same id.
#[derive(Debug, Serialize, Deserialize)]
pub struct ResponseFrame {
    pub id: u64,
    pub response: Result<Response, RemoteError>,
}

/// Serializes `message` into a frame, length prefix included.
pub fn encode_frame<T: Serialize>(message: &T) -> io::Result<Vec<u8>> {
    let len = bincode::serialized_size(message)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    if len > u64::from(MAX_FRAME_LEN) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("message of {len} bytes exceeds the {MAX_FRAME_LEN}-byte frame limit"),
        ));
    }
    let mut frame = Vec::with_capacity(4 + len as usize);
    frame.extend_from_slice(&(len as u32).to_be_bytes());
    bincode::serialize_into(&mut frame, message)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    Ok(frame)
}

/// Reads one frame. `Ok(None)` is a clean end of stream between frames; a length over the limit,
/// a truncated frame or undecodable bytes are errors, after which the connection must be closed.
pub async fn read_frame<R, T>(input: &mut R) -> io::Result<Option<T>>
where
    R: AsyncRead + Unpin,
    T: serde::de::DeserializeOwned,
{
    match read_frame_len(input).await? {
        Some(len) => read_frame_body(input, len).await.map(Some),
        None => Ok(None),
    }
}

/// Reads a frame's length prefix, refusing one over [`MAX_FRAME_LEN`]. Apart from
/// [`read_frame_body`] so a server can reserve memory for the body before reading it.
pub async fn read_frame_len<R: AsyncRead + Unpin>(input: &mut R) -> io::Result<Option<u32>> {
    let mut len = [0u8; 4];
    // Only an end of stream before the first byte is clean; one inside the prefix is a cut frame.
    if input.read(&mut len[..1]).await? == 0 {
        return Ok(None);
    }
    input.read_exact(&mut len[1..]).await?;
    let len = u32::from_be_bytes(len);
    if len > MAX_FRAME_LEN {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame length {len} exceeds the limit of {MAX_FRAME_LEN}"),
        ));
    }
    Ok(Some(len))
}

/// Reads and decodes the `len` bytes of a frame body whose prefix [`read_frame_len`] read.
pub async fn read_frame_body<R, T>(input: &mut R, len: u32) -> io::Result<T>
where
    R: AsyncRead + Unpin,
    T: serde::de::DeserializeOwned,
{
    let mut body = vec![0u8; len as usize];
    input.read_exact(&mut body).await?;
    decode_body(&body)
}

/// Decodes a frame body, refusing trailing bytes so a frame means exactly one message.
pub fn decode_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> io::Result<T> {
    use bincode::Options;
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .with_limit(u64::from(MAX_FRAME_LEN))
        .deserialize(body)
        .map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("undecodable frame: {e}"),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn round_trip(request: Request) -> Request {
        let frame = encode_frame(&RequestFrame { id: 7, request }).unwrap();
        let mut input = frame.as_slice();
        let decoded: RequestFrame = read_frame(&mut input).await.unwrap().unwrap();
        assert_eq!(decoded.id, 7);
        decoded.request
    }

    #[tokio::test]
    async fn a_binary_proposal_survives_the_wire() {
        let command = Command::Put(api::PutRequest {
            key: b"\xffkey".to_vec(),
            value: b"\x00\xfe value".to_vec(),
            lease: 7,
            ..api::PutRequest::default()
        });
        match round_trip(Request::Propose(command.clone())).await {
            Request::Propose(decoded) => assert_eq!(decoded, command),
            other => panic!("decoded as {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_removal_notice_keeps_its_target_and_the_senders_vote_on_the_wire() {
        let vote = Vote::new_committed(7, 2);
        match round_trip(Request::Removed(RemovalNotice { target: 3, vote })).await {
            Request::Removed(notice) => {
                assert_eq!(notice.target, 3);
                assert_eq!(notice.vote, vote);
            }
            other => panic!("decoded as {other:?}"),
        }
    }

    #[tokio::test]
    async fn an_oversized_length_prefix_is_refused_without_allocating() {
        let mut input: &[u8] = &[0xff, 0xff, 0xff, 0xff, 1, 2, 3];
        let err = read_frame::<_, RequestFrame>(&mut input).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }

    #[tokio::test]
    async fn garbage_and_truncated_frames_are_errors_not_panics() {
        let mut garbage: &[u8] = &[0, 0, 0, 5, 0xde, 0xad, 0xbe, 0xef, 0x99];
        assert!(read_frame::<_, RequestFrame>(&mut garbage).await.is_err());
        let frame = encode_frame(&RequestFrame {
            id: 1,
            request: Request::ReadIndex,
        })
        .unwrap();
        let mut truncated = &frame[..frame.len() - 1];
        assert!(read_frame::<_, RequestFrame>(&mut truncated).await.is_err());
    }

    #[tokio::test]
    async fn an_end_of_stream_inside_the_length_prefix_is_an_error() {
        let mut cut: &[u8] = &[0, 0];
        assert!(read_frame::<_, RequestFrame>(&mut cut).await.is_err());
    }

    #[tokio::test]
    async fn a_clean_end_of_stream_is_not_an_error() {
        let mut empty: &[u8] = &[];
        assert!(read_frame::<_, RequestFrame>(&mut empty)
            .await
            .unwrap()
            .is_none());
    }

    /// Runs `read_frame` over `bytes` to completion on a one-off runtime.
    fn read_frames(bytes: &[u8]) -> Vec<io::Result<Option<RequestFrame>>> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime.block_on(async {
            let mut input = bytes;
            let mut results = Vec::new();
            loop {
                let result = read_frame::<_, RequestFrame>(&mut input).await;
                let more = matches!(result, Ok(Some(_)));
                results.push(result);
                if !more {
                    return results;
                }
            }
        })
    }

    fn command() -> impl proptest::strategy::Strategy<Value = Command> {
        use proptest::prelude::*;
        let bytes = || proptest::collection::vec(any::<u8>(), 0..48);
        prop_oneof![
            (bytes(), bytes()).prop_map(|(key, value)| Command::Put(api::PutRequest {
                key,
                value,
                ..api::PutRequest::default()
            })),
            (bytes(), bytes()).prop_map(|(key, range_end)| {
                Command::DeleteRange(api::DeleteRangeRequest {
                    key,
                    range_end,
                    prev_kv: true,
                })
            }),
            (bytes(), bytes(), bytes()).prop_map(|(key, expected, value)| {
                Command::Txn(api::TxnRequest {
                    compare: vec![api::Compare {
                        key: key.clone(),
                        range_end: Vec::new(),
                        target: api::CompareTarget::Value(expected),
                        result: api::CompareResult::Equal,
                    }],
                    success: vec![api::RequestOp::Put(api::PutRequest {
                        key,
                        value,
                        ..api::PutRequest::default()
                    })],
                    failure: Vec::new(),
                })
            }),
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

        /// Whatever bytes a peer sends, decoding answers with a frame or an error, never a panic;
        /// with an honest length prefix the body decoder sees every byte.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)) {
            let _ = read_frames(&bytes);
            let _ = decode_body::<RequestFrame>(&bytes);
            let _ = decode_body::<ResponseFrame>(&bytes);
            let mut framed = (bytes.len() as u32).to_be_bytes().to_vec();
            framed.extend_from_slice(&bytes);
            let _ = read_frames(&framed);
        }

        /// A valid frame decodes to what was sent (compared by re-encoding), and back to back
        /// frames are read one by one.
        #[test]
        fn valid_frames_round_trip(id in proptest::prelude::any::<u64>(), command in command(), read_index in proptest::prelude::any::<bool>()) {
            let request = if read_index { Request::ReadIndex } else { Request::Propose(command) };
            let frame = encode_frame(&RequestFrame { id, request }).unwrap();
            let mut two = frame.clone();
            two.extend_from_slice(&frame);
            let results = read_frames(&two);
            proptest::prop_assert_eq!(results.len(), 3);
            for result in &results[..2] {
                let decoded = result.as_ref().unwrap().as_ref().unwrap();
                proptest::prop_assert_eq!(&encode_frame(decoded).unwrap(), &frame);
            }
            proptest::prop_assert!(matches!(results[2], Ok(None)));
        }

        /// A valid frame cut short anywhere after its length prefix is an error (a stream ending
        /// inside the prefix reads as a clean end), and a damaged one is an error or some frame,
        /// never a panic.
        #[test]
        fn truncated_and_damaged_frames_are_errors_not_panics(
            command in command(),
            cut in proptest::prelude::any::<proptest::sample::Index>(),
            flip in proptest::prelude::any::<proptest::sample::Index>(),
            mask in 1u8..=255,
        ) {
            let frame = encode_frame(&RequestFrame { id: 1, request: Request::Propose(command) }).unwrap();
            let cut = 4 + cut.index(frame.len() - 4);
            proptest::prop_assert!(read_frames(&frame[..cut])[0].is_err());
            let mut damaged = frame.clone();
            damaged[flip.index(frame.len())] ^= mask;
            let _ = read_frames(&damaged);
        }
    }
}
