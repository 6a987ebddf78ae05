//! etcd's Auth service while ondisk has no authentication: answered as etcd answers with auth
//! disabled. Disabling succeeds (it is off); authenticating is refused with etcd's "not enabled";
//! enabling, and managing users and roles, answer UNIMPLEMENTED (the generated defaults).

use tonic::Request;
use tonic::Response;
use tonic::Status;

use crate::api::etcdpb::etcdserverpb as pb;
use crate::api::etcdpb::etcdserverpb::auth_server::Auth;

use super::status::AUTH_NOT_ENABLED;

pub struct AuthService;

#[tonic::async_trait]
impl Auth for AuthService {
    async fn auth_disable(
        &self,
        _request: Request<pb::AuthDisableRequest>,
    ) -> Result<Response<pb::AuthDisableResponse>, Status> {
        Ok(Response::new(pb::AuthDisableResponse::default()))
    }

    async fn authenticate(
        &self,
        _request: Request<pb::AuthenticateRequest>,
    ) -> Result<Response<pb::AuthenticateResponse>, Status> {
        Err(Status::failed_precondition(AUTH_NOT_ENABLED))
    }
}
