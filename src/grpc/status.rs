//! Errors as etcd's gRPC API reports them: its status codes and, where etcd has one, its exact
//! message, since clients match on the message (the Go client's `rpctypes`, etcdctl's output).

use tonic::Status;

use crate::api::AuthError;
use crate::error::Error;
use crate::types::ApplyError;

pub const EMPTY_KEY: &str = "etcdserver: key is not provided";
pub const VALUE_PROVIDED: &str = "etcdserver: value is provided";
pub const LEASE_PROVIDED: &str = "etcdserver: lease is provided";
pub const LEASE_NOT_FOUND: &str = "etcdserver: requested lease not found";
pub const LEASE_EXISTS: &str = "etcdserver: lease already exists";
pub const COMPACTED: &str = "etcdserver: mvcc: required revision has been compacted";
pub const FUTURE_REVISION: &str = "etcdserver: mvcc: required revision is a future revision";
pub const REQUEST_TOO_LARGE: &str = "etcdserver: request is too large";
pub const TOO_MANY_OPS: &str = "etcdserver: too many operations in txn request";
pub const DUPLICATE_KEY: &str = "etcdserver: duplicate key given in txn request";
pub const TIMEOUT: &str = "etcdserver: request timed out";
pub const LEADER_FAILED: &str =
    "etcdserver: request timed out, possibly due to previous leader failure";
pub const STOPPED: &str = "etcdserver: server stopped";
pub const NO_SPACE: &str = "etcdserver: mvcc: database space exceeded";
pub const MEMBER_NOT_FOUND: &str = "etcdserver: member not found";
pub const NOT_LEARNER: &str = "etcdserver: can only promote a learner member";
pub const LEARNER_NOT_READY: &str =
    "etcdserver: can only promote a learner member which is in sync with leader";
pub const BAD_TRANSFEREE: &str = "etcdserver: bad leader transferee";

/// The status etcd would answer for `error`. A refusal keeps this crate's own wording where etcd
/// has no message for it (a range end before its key, a negative revision), prefixed as etcd's
/// are.
pub fn status(error: Error) -> Status {
    match error {
        Error::Request(refusal) => refused(refusal),
        Error::Timeout { .. } => Status::unavailable(TIMEOUT),
        Error::OutcomeUnknown { reason, .. } => {
            Status::unavailable(format!("{LEADER_FAILED} ({reason})"))
        }
        Error::ShuttingDown => Status::unavailable(STOPPED),
        Error::RequestTooLarge { .. } => Status::invalid_argument(REQUEST_TOO_LARGE),
        Error::DiskFull { .. } => Status::resource_exhausted(NO_SPACE),
        busy @ Error::Busy(_) => Status::unavailable(busy.to_string()),
        Error::Refused(reason) => Status::failed_precondition(reason),
        Error::Removed => Status::unavailable(
            "etcdserver: the member has been permanently removed from the cluster",
        ),
        Error::Config(reason) => Status::invalid_argument(reason),
        other => Status::internal(other.to_string()),
    }
}

fn refused(refusal: ApplyError) -> Status {
    match refusal {
        ApplyError::LeaseNotFound(_) => Status::not_found(LEASE_NOT_FOUND),
        ApplyError::LeaseExists(_) => Status::failed_precondition(LEASE_EXISTS),
        ApplyError::KeyNotFound => Status::invalid_argument("etcdserver: key not found"),
        ApplyError::Compacted { .. } => Status::out_of_range(COMPACTED),
        ApplyError::FutureRevision { .. } => Status::out_of_range(FUTURE_REVISION),
        ApplyError::TooManyTxnOps { .. } => Status::invalid_argument(TOO_MANY_OPS),
        ApplyError::DuplicateKeyInTxn => Status::invalid_argument(DUPLICATE_KEY),
        ApplyError::InvalidRequest(reason) => {
            Status::invalid_argument(format!("etcdserver: {reason}"))
        }
        ApplyError::Auth(refusal) => auth_refused(refusal),
    }
}

/// etcd's codes for its auth errors; the message is already etcd's.
fn auth_refused(refusal: AuthError) -> Status {
    let message = refusal.to_string();
    match refusal {
        AuthError::InvalidToken => Status::unauthenticated(message),
        AuthError::PermissionDenied => Status::permission_denied(message),
        AuthError::Failed | AuthError::UserEmpty | AuthError::RoleEmpty => {
            Status::invalid_argument(message)
        }
        AuthError::TooManyAttempts => Status::resource_exhausted(message),
        AuthError::NotEnabled
        | AuthError::RootUserNotExist
        | AuthError::RootRoleNotExist
        | AuthError::UserAlreadyExist
        | AuthError::UserNotFound
        | AuthError::RoleAlreadyExist
        | AuthError::RoleNotFound
        | AuthError::PermissionNotGiven
        | AuthError::RoleNotGranted
        | AuthError::PermissionNotGranted
        | AuthError::InvalidManagement => Status::failed_precondition(message),
    }
}
