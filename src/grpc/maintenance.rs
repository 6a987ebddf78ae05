//! etcd's Maintenance service: status, alarms, a key-space hash to compare members, a full
//! compaction for defragment, leader transfer, and a snapshot stream.
//!
//! The snapshot is ondisk's own backup stream (the format `GET /v1/backup` sends), not an etcd
//! bolt database: `etcdctl snapshot save` writes it to a file, and `ondisk restore` (not
//! `etcdctl snapshot restore`) turns it into a node directory.

use std::sync::Arc;

use tokio::sync::mpsc;
use tonic::codegen::BoxStream;
use tonic::Request;
use tonic::Response;
use tonic::Status;

use crate::api::etcdpb::etcdserverpb as pb;
use crate::api::etcdpb::etcdserverpb::alarm_request::AlarmAction;
use crate::api::etcdpb::etcdserverpb::maintenance_server::Maintenance;
use crate::api::etcdpb::etcdserverpb::AlarmType;
use crate::node::Node;
use crate::store;
use crate::store::EtcdSeal;

use super::caller;
use super::convert;
use super::status::status;
use super::status::BAD_TRANSFEREE;

/// The etcd version this API answers as: the release whose v3 API (protobuf definitions and
/// behaviour) it follows, in the form clients parse.
pub const ETCD_VERSION: &str = "3.4.0";
/// Bytes of the snapshot stream per message, and messages read ahead of the client.
const SNAPSHOT_PIECE_BYTES: usize = 1 << 20;
const SNAPSHOT_AHEAD: usize = 2;

pub struct MaintenanceService {
    node: Arc<Node>,
}

impl MaintenanceService {
    pub fn new(node: Arc<Node>) -> Self {
        MaintenanceService { node }
    }

    /// The alarms in force on this member: NOSPACE while its storage waits for disk space. An
    /// alarm is this member's own state (it clears by itself once space is freed), not a
    /// replicated one as in etcd, so each member reports its own.
    fn alarms(&self) -> Vec<pb::AlarmMember> {
        if self.node.out_of_space() {
            vec![pb::AlarmMember {
                member_id: self.node.id(),
                alarm: AlarmType::Nospace as i32,
            }]
        } else {
            Vec::new()
        }
    }
}

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    /// Lists alarms. Disarming one answers what is in force and changes nothing: NOSPACE ends by
    /// itself when space is freed. Raising one by hand is refused; the node raises its own.
    async fn alarm(
        &self,
        request: Request<pb::AlarmRequest>,
    ) -> Result<Response<pb::AlarmResponse>, Status> {
        let action = request.into_inner().action;
        match AlarmAction::try_from(action) {
            Ok(AlarmAction::Get | AlarmAction::Deactivate) => {
                Ok(Response::new(pb::AlarmResponse {
                    header: convert::header(self.node.current_header()),
                    alarms: self.alarms(),
                }))
            }
            Ok(AlarmAction::Activate) => Err(Status::invalid_argument(
                "etcdserver: alarms are raised by the node itself (NOSPACE when its disk is full)",
            )),
            Err(_) => Err(Status::invalid_argument(format!(
                "etcdserver: unknown alarm action {action}"
            ))),
        }
    }

    async fn status(
        &self,
        _request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let node_status = self.node.status();
        let usage = self.node.disk_usage().await.map_err(status)?;
        let is_learner = node_status
            .members
            .iter()
            .any(|member| member.id == node_status.id && !member.voter);
        let errors = self
            .alarms()
            .iter()
            .map(|_| "NOSPACE: the disk is full; writes wait until space is freed".to_string())
            .collect();
        Ok(Response::new(pb::StatusResponse {
            header: convert::header(self.node.current_header()),
            version: ETCD_VERSION.to_string(),
            db_size: i64::try_from(usage.files).unwrap_or(i64::MAX),
            leader: node_status.leader.unwrap_or(0),
            raft_index: node_status.last_log_index.unwrap_or(0),
            raft_term: node_status.term,
            raft_applied_index: node_status.last_applied.unwrap_or(0),
            errors,
            db_size_in_use: i64::try_from(usage.live).unwrap_or(i64::MAX),
            is_learner,
        }))
    }

    /// A real compaction of the whole state machine database (see `Node::defragment`).
    async fn defragment(
        &self,
        request: Request<pb::DefragmentRequest>,
    ) -> Result<Response<pb::DefragmentResponse>, Status> {
        let caller = caller(&self.node, &request).await?;
        self.node.defragment(&caller).await.map_err(status)?;
        Ok(Response::new(pb::DefragmentResponse {
            header: convert::header(self.node.current_header()),
        }))
    }

    /// etcd hashes its whole database file here; the closest that members can compare is the
    /// key space at the revision each has applied, the same as HashKV at revision 0.
    async fn hash(
        &self,
        request: Request<pb::HashRequest>,
    ) -> Result<Response<pb::HashResponse>, Status> {
        let caller = caller(&self.node, &request).await?;
        let hashed = self.node.hash_kv(&caller, 0).await.map_err(status)?;
        Ok(Response::new(pb::HashResponse {
            header: convert::header(self.node.header(hashed.revision)),
            hash: hashed.hash,
        }))
    }

    async fn hash_kv(
        &self,
        request: Request<pb::HashKvRequest>,
    ) -> Result<Response<pb::HashKvResponse>, Status> {
        let caller = caller(&self.node, &request).await?;
        let hashed = self
            .node
            .hash_kv(&caller, request.into_inner().revision)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::HashKvResponse {
            header: convert::header(self.node.header(hashed.revision)),
            hash: hashed.hash,
            compact_revision: hashed.compact_revision,
        }))
    }

    /// A fresh checkpoint of this member's state in ondisk's backup format, in pieces.
    /// `remaining_bytes` is 0 on the last piece only; before it, it is the next piece's size
    /// (the stream is encoded as it is sent, so its total is not known in advance). The stream
    /// ends with etcd's seal ([`EtcdSeal`]), which etcdctl checks and `ondisk restore` skips.
    async fn snapshot(
        &self,
        request: Request<pb::SnapshotRequest>,
    ) -> Result<Response<BoxStream<pb::SnapshotResponse>>, Status> {
        let caller = caller(&self.node, &request).await?;
        let snapshot = self.node.backup(&caller).await.map_err(status)?;
        let mut pieces =
            store::snapshot_chunks(snapshot.snapshot, SNAPSHOT_PIECE_BYTES, SNAPSHOT_AHEAD);
        let header = convert::header(self.node.current_header());
        let (messages, received) = mpsc::channel(1);
        tokio::spawn(async move {
            let mut seal = EtcdSeal::default();
            let mut previous: Option<Vec<u8>> = None;
            loop {
                let (piece, last) = match pieces.recv().await {
                    Some(Ok(piece)) => {
                        seal.update(&piece);
                        (piece, false)
                    }
                    Some(Err(e)) => {
                        let _ = messages.send(Err(Status::internal(e.to_string()))).await;
                        return;
                    }
                    None => (std::mem::take(&mut seal).finish(), true),
                };
                let remaining = piece.len() as u64;
                if let Some(blob) = previous.replace(piece) {
                    let message = pb::SnapshotResponse {
                        header,
                        remaining_bytes: remaining,
                        blob,
                    };
                    if messages.send(Ok(message)).await.is_err() {
                        return;
                    }
                }
                if last {
                    break;
                }
            }
            if let Some(blob) = previous {
                let message = pb::SnapshotResponse {
                    header,
                    remaining_bytes: 0,
                    blob,
                };
                let _ = messages.send(Ok(message)).await;
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(received),
        )))
    }

    async fn move_leader(
        &self,
        request: Request<pb::MoveLeaderRequest>,
    ) -> Result<Response<pb::MoveLeaderResponse>, Status> {
        let caller = caller(&self.node, &request).await?;
        let target = request.into_inner().target_id;
        let is_voter = self
            .node
            .members()
            .iter()
            .any(|member| member.id == target && member.voter);
        if !is_voter {
            return Err(Status::failed_precondition(BAD_TRANSFEREE));
        }
        self.node
            .transfer_leader(&caller, target)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::MoveLeaderResponse {
            header: convert::header(self.node.current_header()),
        }))
    }
}
