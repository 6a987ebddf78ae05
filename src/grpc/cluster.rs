//! etcd's Cluster service, mapped onto ondisk's membership rules: a member's etcd id is its node
//! id, and its peer URL names its raft address. A member added without `is_learner` starts as a
//! learner that the leader promotes once it has caught up (ondisk's rule for every new voter);
//! one added with it stays a learner until promoted. A removed id never comes back, so an added
//! member gets an id above every id ever used, and the node must be started with that id.

use std::sync::Arc;

use tonic::Request;
use tonic::Response;
use tonic::Status;

use crate::api::etcdpb::etcdserverpb as pb;
use crate::api::etcdpb::etcdserverpb::cluster_server::Cluster;
use crate::node::MemberInfo;
use crate::node::Node;
use crate::node::Role;
use crate::types::NodeId;

use super::caller;
use super::convert;
use super::status::status;
use super::status::LEARNER_NOT_READY;
use super::status::MEMBER_NOT_FOUND;
use super::status::NOT_LEARNER;

pub struct ClusterService {
    node: Arc<Node>,
}

impl ClusterService {
    pub fn new(node: Arc<Node>) -> Self {
        ClusterService { node }
    }

    fn members(&self) -> Vec<pb::Member> {
        let scheme = self.node.peer_scheme();
        self.node
            .members()
            .iter()
            .map(|info| member(info, scheme))
            .collect()
    }

    /// The member `id`, or etcd's "member not found".
    fn existing(&self, id: NodeId) -> Result<MemberInfo, Status> {
        self.node
            .members()
            .into_iter()
            .find(|member| member.id == id)
            .ok_or_else(|| Status::not_found(MEMBER_NOT_FOUND))
    }
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_add(
        &self,
        request: Request<pb::MemberAddRequest>,
    ) -> Result<Response<pb::MemberAddResponse>, Status> {
        let caller = caller(&self.node, &request).await?;
        let request = request.into_inner();
        let raft_addr = raft_addr_of(&request.peer_ur_ls)?;
        let id = self.node.unused_member_id();
        let role = if request.is_learner {
            Role::Learner
        } else {
            Role::Voter
        };
        self.node
            .add_node(&caller, id, raft_addr.clone(), role, None)
            .await
            .map_err(status)?;
        // etcd answers once the member asked has the change, so its member list shows it.
        self.node
            .wait_membership(move |members, _| members.contains(&id))
            .await;
        Ok(Response::new(pb::MemberAddResponse {
            header: convert::header(self.node.current_header()),
            member: Some(pb::Member {
                id,
                peer_ur_ls: request.peer_ur_ls,
                is_learner: true,
                ..pb::Member::default()
            }),
            members: self.members(),
        }))
    }

    async fn member_remove(
        &self,
        request: Request<pb::MemberRemoveRequest>,
    ) -> Result<Response<pb::MemberRemoveResponse>, Status> {
        let caller = caller(&self.node, &request).await?;
        let id = request.into_inner().id;
        self.existing(id)?;
        self.node.remove_member(&caller, id).await.map_err(status)?;
        self.node
            .wait_membership(move |members, _| !members.contains(&id))
            .await;
        Ok(Response::new(pb::MemberRemoveResponse {
            header: convert::header(self.node.current_header()),
            members: self.members(),
        }))
    }

    async fn member_update(
        &self,
        request: Request<pb::MemberUpdateRequest>,
    ) -> Result<Response<pb::MemberUpdateResponse>, Status> {
        let caller = caller(&self.node, &request).await?;
        let request = request.into_inner();
        self.existing(request.id)?;
        let raft_addr = raft_addr_of(&request.peer_ur_ls)?;
        self.node
            .update_member_address(&caller, request.id, raft_addr)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::MemberUpdateResponse {
            header: convert::header(self.node.current_header()),
            members: self.members(),
        }))
    }

    async fn member_list(
        &self,
        _request: Request<pb::MemberListRequest>,
    ) -> Result<Response<pb::MemberListResponse>, Status> {
        Ok(Response::new(pb::MemberListResponse {
            header: convert::header(self.node.current_header()),
            members: self.members(),
        }))
    }

    /// Clears a learner's mark so that the leader promotes it, and waits (up to the node's
    /// `-timeout`) until it has: etcd promotes only a learner in sync with the leader, and
    /// answers that it is not ready otherwise. The mark stays cleared either way, so the
    /// learner is still promoted once it has caught up.
    async fn member_promote(
        &self,
        request: Request<pb::MemberPromoteRequest>,
    ) -> Result<Response<pb::MemberPromoteResponse>, Status> {
        let caller = caller(&self.node, &request).await?;
        let id = request.into_inner().id;
        let learner = self.existing(id)?;
        if learner.voter {
            return Err(Status::failed_precondition(NOT_LEARNER));
        }
        self.node
            .add_node(&caller, id, learner.raft_addr, Role::Voter, None)
            .await
            .map_err(status)?;
        let promoted = self
            .node
            .wait_membership(move |_, voters| voters.contains(&id))
            .await;
        if !promoted {
            return Err(Status::failed_precondition(LEARNER_NOT_READY));
        }
        Ok(Response::new(pb::MemberPromoteResponse {
            header: convert::header(self.node.current_header()),
            members: self.members(),
        }))
    }
}

/// A member as etcd lists it. A member that has never started has no client URL yet, and etcd
/// lists such a member without a name (etcdctl shows it "unstarted"); a started one is named
/// `node<ID>`. Peer URLs carry `peer_scheme` (`https` when the raft ports speak TLS).
fn member(info: &MemberInfo, peer_scheme: &str) -> pb::Member {
    let started = !info.http_addr.is_empty();
    pb::Member {
        id: info.id,
        name: if started {
            format!("node{}", info.id)
        } else {
            String::new()
        },
        peer_ur_ls: vec![format!("{peer_scheme}://{}", info.raft_addr)],
        // Without a scheme: etcdctl 3.4's `--cluster` hands a client URL to gRPC as the
        // HTTP/2 authority, and `http://host:port` is not one (grpc-go's server lets it pass,
        // other HTTP/2 servers refuse the request). Every etcd client accepts `host:port`.
        client_ur_ls: if started {
            vec![info.http_addr.clone()]
        } else {
            Vec::new()
        },
        is_learner: !info.voter,
    }
}

/// The raft address a member's peer URLs name: the first URL's `host:port`.
fn raft_addr_of(peer_urls: &[String]) -> Result<String, Status> {
    let url = peer_urls
        .first()
        .ok_or_else(|| Status::invalid_argument("etcdserver: no peer URL given"))?;
    let without_scheme = url.split_once("://").map_or(url.as_str(), |(_, rest)| rest);
    let addr = without_scheme.trim_end_matches('/');
    let valid = addr
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
    if !valid || addr.contains('/') {
        return Err(Status::invalid_argument(format!(
            "etcdserver: peer URL {url:?} is not http://HOST:PORT"
        )));
    }
    Ok(addr.to_string())
}
