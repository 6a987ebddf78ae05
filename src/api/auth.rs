//! Authentication and authorization, etcd's model: users with passwords, roles holding read,
//! write or read-write permissions on a key or a range of keys, a `root` user whose `root` role
//! may do anything, and a switch that turns checking on. These are the requests every front end
//! (gRPC's Auth service, the HTTP API, `ondisk ctl`) sends to the node, and the refusals it
//! answers, worded as etcd words them: etcd's clients recognise an error by its message.

use serde::Deserialize;
use serde::Serialize;

use super::bytes;
use super::KeySpan;

/// The user every permission check lets through, and the only one that may manage users, roles
/// and the cluster. Authentication can be enabled only once it exists with the [`ROOT_ROLE`].
pub const ROOT_USER: &str = "root";
/// The role that grants everything; it holds no key permissions of its own.
pub const ROOT_ROLE: &str = "root";

/// What a permission lets its holder do with its keys (etcd's `authpb.Permission.Type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PermissionKind {
    Read,
    Write,
    ReadWrite,
}

impl PermissionKind {
    /// Whether a permission of this kind allows `access`.
    pub fn allows(self, access: KeyAccess) -> bool {
        matches!(
            (self, access),
            (PermissionKind::ReadWrite, _)
                | (PermissionKind::Read, KeyAccess::Read)
                | (PermissionKind::Write, KeyAccess::Write)
        )
    }
}

/// The two ways a request touches keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyAccess {
    Read,
    Write,
}

/// A role's permission on one key (`range_end` empty), a range `[key, range_end)`, or every key
/// from `key` on (`range_end` = `\0`), as etcd's `Permission`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Permission {
    pub kind: PermissionKind,
    #[serde(with = "bytes")]
    pub key: Vec<u8>,
    #[serde(with = "bytes", default)]
    pub range_end: Vec<u8>,
}

impl Permission {
    /// The keys this permission covers.
    pub fn span(&self) -> KeySpan<'_> {
        KeySpan::new(&self.key, &self.range_end)
    }
}

/// A change to users, roles or the switch, as a client asks for it. Passwords are in clear here
/// and only here: the node hashes them before anything is proposed or logged.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthRequest {
    Enable,
    Disable,
    /// A user; `password` None is a user that cannot authenticate with a password (etcd's
    /// `--no-password`).
    UserAdd {
        name: String,
        password: Option<String>,
    },
    UserDelete {
        name: String,
    },
    UserChangePassword {
        name: String,
        password: String,
    },
    UserGrantRole {
        user: String,
        role: String,
    },
    UserRevokeRole {
        user: String,
        role: String,
    },
    RoleAdd {
        name: String,
    },
    RoleDelete {
        name: String,
    },
    RoleGrantPermission {
        role: String,
        permission: Permission,
    },
    /// Removes the permission on exactly `[key, range_end)`, whatever its kind.
    RoleRevokePermission {
        role: String,
        #[serde(with = "bytes")]
        key: Vec<u8>,
        #[serde(with = "bytes", default)]
        range_end: Vec<u8>,
    },
}

impl std::fmt::Debug for AuthRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never a password, not even in a debug line.
        match self {
            AuthRequest::UserAdd { name, password } => f
                .debug_struct("UserAdd")
                .field("name", name)
                .field("password", &password.as_ref().map(|_| "<hidden>"))
                .finish(),
            AuthRequest::UserChangePassword { name, .. } => f
                .debug_struct("UserChangePassword")
                .field("name", name)
                .finish_non_exhaustive(),
            AuthRequest::Enable => f.write_str("Enable"),
            AuthRequest::Disable => f.write_str("Disable"),
            AuthRequest::UserDelete { name } => write!(f, "UserDelete({name})"),
            AuthRequest::UserGrantRole { user, role } => write!(f, "UserGrantRole({user}, {role})"),
            AuthRequest::UserRevokeRole { user, role } => {
                write!(f, "UserRevokeRole({user}, {role})")
            }
            AuthRequest::RoleAdd { name } => write!(f, "RoleAdd({name})"),
            AuthRequest::RoleDelete { name } => write!(f, "RoleDelete({name})"),
            AuthRequest::RoleGrantPermission { role, permission } => {
                write!(f, "RoleGrantPermission({role}, {permission:?})")
            }
            AuthRequest::RoleRevokePermission { role, .. } => {
                write!(f, "RoleRevokePermission({role})")
            }
        }
    }
}

/// A password in a request: shown as `<hidden>` in any debug output, so logging a request
/// never logs it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Password(pub String);

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<hidden>")
    }
}

/// A user as an administrator sees it: never the password, not even hashed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserInfo {
    pub name: String,
    pub roles: Vec<String>,
}

/// A role as an administrator sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleInfo {
    pub name: String,
    pub permissions: Vec<Permission>,
}

/// The answer to a successful authentication: the token to send with later requests, and how
/// long it is good for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthenticateResponse {
    pub token: String,
    pub ttl_seconds: u64,
}

/// Why an authentication or an authorization failed, or an auth change was refused. The
/// messages are etcd's, word for word (`rpctypes`): etcd's client libraries, etcdctl among
/// them, tell the errors apart by message (etcdctl's `auth enable` reacts to
/// [`AuthError::RootRoleNotExist`] by creating the role).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum AuthError {
    #[error("etcdserver: authentication is not enabled")]
    NotEnabled,
    #[error("etcdserver: authentication failed, invalid user ID or password")]
    Failed,
    #[error("etcdserver: user name is empty")]
    UserEmpty,
    #[error("etcdserver: invalid auth token")]
    InvalidToken,
    #[error("etcdserver: permission denied")]
    PermissionDenied,
    #[error("etcdserver: root user does not exist")]
    RootUserNotExist,
    #[error("etcdserver: root user does not have root role")]
    RootRoleNotExist,
    #[error("etcdserver: user name already exists")]
    UserAlreadyExist,
    #[error("etcdserver: user name not found")]
    UserNotFound,
    #[error("etcdserver: role name already exists")]
    RoleAlreadyExist,
    #[error("etcdserver: role name not found")]
    RoleNotFound,
    #[error("etcdserver: role name is empty")]
    RoleEmpty,
    #[error("etcdserver: permission not given")]
    PermissionNotGiven,
    #[error("etcdserver: role is not granted to the user")]
    RoleNotGranted,
    #[error("etcdserver: permission is not granted to the role")]
    PermissionNotGranted,
    #[error("etcdserver: invalid auth management")]
    InvalidManagement,
    #[error("etcdserver: too many failed authentications, try again in a moment")]
    TooManyAttempts,
}

impl AuthError {
    /// Whether the caller is not known (no name, a bad token or password) rather than known and
    /// not allowed: HTTP's 401 against 403, gRPC's UNAUTHENTICATED where etcd uses it.
    pub fn is_unauthenticated(&self) -> bool {
        matches!(
            self,
            AuthError::Failed | AuthError::UserEmpty | AuthError::InvalidToken
        )
    }
}
