//! etcd's Auth service: users, roles, permissions, the switch, and authentication, answered by
//! the node's auth API (`node::auth`) so `etcdctl user`, `role`, `auth` and every etcd client's
//! login work unchanged. The changes are the root role's once authentication is on.

use std::sync::Arc;

use tonic::Request;
use tonic::Response;
use tonic::Status;

use crate::api;
use crate::api::etcdpb::authpb;
use crate::api::etcdpb::etcdserverpb as pb;
use crate::api::etcdpb::etcdserverpb::auth_server::Auth;
use crate::api::AuthError;
use crate::api::AuthRequest;
use crate::api::PermissionKind;
use crate::node::Node;

use super::caller;
use super::convert;
use super::status::status;

pub struct AuthService {
    node: Arc<Node>,
}

impl AuthService {
    pub fn new(node: Arc<Node>) -> Self {
        AuthService { node }
    }

    /// Applies the change `request` asks for as its sender, answering the header after it.
    async fn change<T>(
        &self,
        request: &Request<T>,
        change: AuthRequest,
    ) -> Result<Option<pb::ResponseHeader>, Status> {
        let caller = caller(&self.node, request).await?;
        let header = self
            .node
            .change_auth(&caller, change)
            .await
            .map_err(status)?;
        Ok(convert::header(header))
    }
}

/// Answers `header` in each of the Auth service's header-only responses.
macro_rules! header_only {
    ($response:ident, $header:expr) => {
        Ok(Response::new(pb::$response { header: $header }))
    };
}

#[tonic::async_trait]
impl Auth for AuthService {
    async fn auth_enable(
        &self,
        request: Request<pb::AuthEnableRequest>,
    ) -> Result<Response<pb::AuthEnableResponse>, Status> {
        let header = self.change(&request, AuthRequest::Enable).await?;
        header_only!(AuthEnableResponse, header)
    }

    async fn auth_disable(
        &self,
        request: Request<pb::AuthDisableRequest>,
    ) -> Result<Response<pb::AuthDisableResponse>, Status> {
        let header = self.change(&request, AuthRequest::Disable).await?;
        header_only!(AuthDisableResponse, header)
    }

    async fn authenticate(
        &self,
        request: Request<pb::AuthenticateRequest>,
    ) -> Result<Response<pb::AuthenticateResponse>, Status> {
        let request = request.into_inner();
        let issued = self
            .node
            .authenticate(&request.name, &request.password)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::AuthenticateResponse {
            header: convert::header(self.node.current_header()),
            token: issued.token,
        }))
    }

    async fn user_add(
        &self,
        request: Request<pb::AuthUserAddRequest>,
    ) -> Result<Response<pb::AuthUserAddResponse>, Status> {
        let add = request.get_ref();
        let no_password = add.options.as_ref().is_some_and(|o| o.no_password);
        let change = AuthRequest::UserAdd {
            name: add.name.clone(),
            password: (!no_password).then(|| add.password.clone()),
        };
        let header = self.change(&request, change).await?;
        header_only!(AuthUserAddResponse, header)
    }

    async fn user_get(
        &self,
        request: Request<pb::AuthUserGetRequest>,
    ) -> Result<Response<pb::AuthUserGetResponse>, Status> {
        let caller = caller(&self.node, &request).await?;
        let user = self
            .node
            .user(&caller, &request.get_ref().name)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::AuthUserGetResponse {
            header: convert::header(self.node.current_header()),
            roles: user.roles,
        }))
    }

    async fn user_list(
        &self,
        request: Request<pb::AuthUserListRequest>,
    ) -> Result<Response<pb::AuthUserListResponse>, Status> {
        let caller = caller(&self.node, &request).await?;
        let users = self.node.users(&caller).await.map_err(status)?;
        Ok(Response::new(pb::AuthUserListResponse {
            header: convert::header(self.node.current_header()),
            users,
        }))
    }

    async fn user_delete(
        &self,
        request: Request<pb::AuthUserDeleteRequest>,
    ) -> Result<Response<pb::AuthUserDeleteResponse>, Status> {
        let name = request.get_ref().name.clone();
        let header = self
            .change(&request, AuthRequest::UserDelete { name })
            .await?;
        header_only!(AuthUserDeleteResponse, header)
    }

    async fn user_change_password(
        &self,
        request: Request<pb::AuthUserChangePasswordRequest>,
    ) -> Result<Response<pb::AuthUserChangePasswordResponse>, Status> {
        let change = AuthRequest::UserChangePassword {
            name: request.get_ref().name.clone(),
            password: request.get_ref().password.clone(),
        };
        let header = self.change(&request, change).await?;
        header_only!(AuthUserChangePasswordResponse, header)
    }

    async fn user_grant_role(
        &self,
        request: Request<pb::AuthUserGrantRoleRequest>,
    ) -> Result<Response<pb::AuthUserGrantRoleResponse>, Status> {
        let change = AuthRequest::UserGrantRole {
            user: request.get_ref().user.clone(),
            role: request.get_ref().role.clone(),
        };
        let header = self.change(&request, change).await?;
        header_only!(AuthUserGrantRoleResponse, header)
    }

    async fn user_revoke_role(
        &self,
        request: Request<pb::AuthUserRevokeRoleRequest>,
    ) -> Result<Response<pb::AuthUserRevokeRoleResponse>, Status> {
        let change = AuthRequest::UserRevokeRole {
            user: request.get_ref().name.clone(),
            role: request.get_ref().role.clone(),
        };
        let header = self.change(&request, change).await?;
        header_only!(AuthUserRevokeRoleResponse, header)
    }

    async fn role_add(
        &self,
        request: Request<pb::AuthRoleAddRequest>,
    ) -> Result<Response<pb::AuthRoleAddResponse>, Status> {
        let name = request.get_ref().name.clone();
        let header = self.change(&request, AuthRequest::RoleAdd { name }).await?;
        header_only!(AuthRoleAddResponse, header)
    }

    async fn role_get(
        &self,
        request: Request<pb::AuthRoleGetRequest>,
    ) -> Result<Response<pb::AuthRoleGetResponse>, Status> {
        let caller = caller(&self.node, &request).await?;
        let role = self
            .node
            .role(&caller, &request.get_ref().role)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::AuthRoleGetResponse {
            header: convert::header(self.node.current_header()),
            perm: role.permissions.into_iter().map(permission_pb).collect(),
        }))
    }

    async fn role_list(
        &self,
        request: Request<pb::AuthRoleListRequest>,
    ) -> Result<Response<pb::AuthRoleListResponse>, Status> {
        let caller = caller(&self.node, &request).await?;
        let roles = self.node.roles(&caller).await.map_err(status)?;
        Ok(Response::new(pb::AuthRoleListResponse {
            header: convert::header(self.node.current_header()),
            roles,
        }))
    }

    async fn role_delete(
        &self,
        request: Request<pb::AuthRoleDeleteRequest>,
    ) -> Result<Response<pb::AuthRoleDeleteResponse>, Status> {
        let name = request.get_ref().role.clone();
        let header = self
            .change(&request, AuthRequest::RoleDelete { name })
            .await?;
        header_only!(AuthRoleDeleteResponse, header)
    }

    async fn role_grant_permission(
        &self,
        request: Request<pb::AuthRoleGrantPermissionRequest>,
    ) -> Result<Response<pb::AuthRoleGrantPermissionResponse>, Status> {
        let grant = request.get_ref();
        let permission = grant
            .perm
            .clone()
            .ok_or_else(|| status(AuthError::PermissionNotGiven.into()))?;
        let change = AuthRequest::RoleGrantPermission {
            role: grant.name.clone(),
            permission: permission_of(permission)?,
        };
        let header = self.change(&request, change).await?;
        header_only!(AuthRoleGrantPermissionResponse, header)
    }

    async fn role_revoke_permission(
        &self,
        request: Request<pb::AuthRoleRevokePermissionRequest>,
    ) -> Result<Response<pb::AuthRoleRevokePermissionResponse>, Status> {
        let revoke = request.get_ref();
        let change = AuthRequest::RoleRevokePermission {
            role: revoke.role.clone(),
            key: revoke.key.clone(),
            range_end: revoke.range_end.clone(),
        };
        let header = self.change(&request, change).await?;
        header_only!(AuthRoleRevokePermissionResponse, header)
    }
}

fn permission_of(permission: authpb::Permission) -> Result<api::Permission, Status> {
    use authpb::permission::Type;
    let kind = match Type::try_from(permission.perm_type) {
        Ok(Type::Read) => PermissionKind::Read,
        Ok(Type::Write) => PermissionKind::Write,
        Ok(Type::Readwrite) => PermissionKind::ReadWrite,
        Err(_) => {
            return Err(Status::invalid_argument(format!(
                "etcdserver: unknown permission type {}",
                permission.perm_type
            )))
        }
    };
    api::validate_span(&permission.key, &permission.range_end)
        .map_err(|reason| Status::invalid_argument(format!("etcdserver: {reason}")))?;
    Ok(api::Permission {
        kind,
        key: permission.key,
        range_end: permission.range_end,
    })
}

fn permission_pb(permission: api::Permission) -> authpb::Permission {
    use authpb::permission::Type;
    let kind = match permission.kind {
        PermissionKind::Read => Type::Read,
        PermissionKind::Write => Type::Write,
        PermissionKind::ReadWrite => Type::Readwrite,
    };
    authpb::Permission {
        perm_type: kind as i32,
        key: permission.key,
        range_end: permission.range_end,
    }
}
