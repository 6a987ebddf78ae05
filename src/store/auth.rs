//! The replicated users, roles and permissions, and the one question every check asks of them:
//! may this user touch these keys this way? Kept as one small record in the meta family, written
//! in the same batch as the change that made it, so it travels with snapshots and backups and
//! every member decides a check the same way.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::fmt;

use serde::Deserialize;
use serde::Serialize;

use crate::api;
use crate::api::AuthError;
use crate::api::KeyAccess;
use crate::api::KeySpan;
use crate::api::Permission;
use crate::api::RequestOp;
use crate::api::ROOT_ROLE;
use crate::api::ROOT_USER;
use crate::types::AuthChange;
use crate::types::Command;

/// Users, roles and the switch, as applied so far.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthState {
    pub enabled: bool,
    /// Counts the changes applied. A write checked against an older state is checked again
    /// when it is applied (`Command::AsUser`), so a revoked permission stops every write
    /// committed after the revocation, whichever member checked it first.
    pub revision: u64,
    /// The key tokens are signed with. A new one comes with every enable, so turning
    /// authentication off and on again ends every token issued before.
    pub token_key: Vec<u8>,
    pub users: BTreeMap<String, User>,
    /// Each role's permissions, kept sorted by key.
    pub roles: BTreeMap<String, Vec<Permission>>,
}

/// A user as stored: the password only as an argon2 hash.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// A PHC string (argon2id, salted); None for a user that cannot log in with a password.
    pub password_hash: Option<String>,
    pub roles: BTreeSet<String>,
    /// The auth revision that set the password: tokens carry it, so changing a password ends
    /// the tokens issued with the old one.
    pub password_revision: u64,
}

impl fmt::Debug for AuthState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Neither the token key nor any hash belongs in a log line.
        f.debug_struct("AuthState")
            .field("enabled", &self.enabled)
            .field("revision", &self.revision)
            .field("users", &self.users.keys().collect::<Vec<_>>())
            .field("roles", &self.roles.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl AuthState {
    /// Applies `change`, or refuses it as etcd does and leaves the state as it was.
    pub fn change(&mut self, change: &AuthChange) -> Result<(), AuthError> {
        match change {
            AuthChange::Enable { token_key } => {
                let root = self
                    .users
                    .get(ROOT_USER)
                    .ok_or(AuthError::RootUserNotExist)?;
                if !root.roles.contains(ROOT_ROLE) {
                    return Err(AuthError::RootRoleNotExist);
                }
                if !self.enabled {
                    self.enabled = true;
                    self.token_key.clone_from(token_key);
                }
            }
            AuthChange::Disable => self.enabled = false,
            AuthChange::UserAdd {
                name,
                password_hash,
            } => {
                if name.is_empty() {
                    return Err(AuthError::UserEmpty);
                }
                if self.users.contains_key(name) {
                    return Err(AuthError::UserAlreadyExist);
                }
                let user = User {
                    password_hash: password_hash.clone(),
                    roles: BTreeSet::new(),
                    password_revision: self.revision + 1,
                };
                self.users.insert(name.clone(), user);
            }
            AuthChange::UserDelete { name } => {
                if self.enabled && name == ROOT_USER {
                    return Err(AuthError::InvalidManagement);
                }
                self.users.remove(name).ok_or(AuthError::UserNotFound)?;
            }
            AuthChange::UserChangePassword {
                name,
                password_hash,
            } => {
                let revision = self.revision + 1;
                let user = self.user_mut(name)?;
                user.password_hash = Some(password_hash.clone());
                user.password_revision = revision;
            }
            AuthChange::UserGrantRole { user, role } => {
                if !self.roles.contains_key(role) {
                    return Err(AuthError::RoleNotFound);
                }
                self.user_mut(user)?.roles.insert(role.clone());
            }
            AuthChange::UserRevokeRole { user, role } => {
                if self.enabled && user == ROOT_USER && role == ROOT_ROLE {
                    return Err(AuthError::InvalidManagement);
                }
                if !self.user_mut(user)?.roles.remove(role) {
                    return Err(AuthError::RoleNotGranted);
                }
            }
            AuthChange::RoleAdd { name } => {
                if name.is_empty() {
                    return Err(AuthError::RoleEmpty);
                }
                if self.roles.contains_key(name) {
                    return Err(AuthError::RoleAlreadyExist);
                }
                self.roles.insert(name.clone(), Vec::new());
            }
            AuthChange::RoleDelete { name } => {
                if self.enabled && name == ROOT_ROLE {
                    return Err(AuthError::InvalidManagement);
                }
                self.roles.remove(name).ok_or(AuthError::RoleNotFound)?;
                for user in self.users.values_mut() {
                    user.roles.remove(name);
                }
            }
            AuthChange::RoleGrantPermission { role, permission } => {
                let permissions = self.roles.get_mut(role).ok_or(AuthError::RoleNotFound)?;
                permissions.retain(|held| {
                    (&held.key, &held.range_end) != (&permission.key, &permission.range_end)
                });
                permissions.push(permission.clone());
                permissions.sort_by(|a, b| (&a.key, &a.range_end).cmp(&(&b.key, &b.range_end)));
            }
            AuthChange::RoleRevokePermission {
                role,
                key,
                range_end,
            } => {
                let permissions = self.roles.get_mut(role).ok_or(AuthError::RoleNotFound)?;
                let before = permissions.len();
                permissions.retain(|held| (&held.key, &held.range_end) != (key, range_end));
                if permissions.len() == before {
                    return Err(AuthError::PermissionNotGranted);
                }
            }
        }
        self.revision += 1;
        Ok(())
    }

    fn user_mut(&mut self, name: &str) -> Result<&mut User, AuthError> {
        self.users.get_mut(name).ok_or(AuthError::UserNotFound)
    }

    /// Whether `user` exists and holds the root role: may do anything, including manage users,
    /// roles and the cluster.
    pub fn is_root(&self, user: &str) -> bool {
        self.users
            .get(user)
            .is_some_and(|found| found.roles.contains(ROOT_ROLE))
    }

    /// Whether `user` may `access` every key of `span`: the permissions of all its roles
    /// together must cover the span (etcd merges them the same way).
    pub fn permits(&self, user: &str, span: &KeySpan<'_>, access: KeyAccess) -> bool {
        let Some(found) = self.users.get(user) else {
            return false;
        };
        if found.roles.contains(ROOT_ROLE) {
            return true;
        }
        let mut granted: Vec<Interval> = found
            .roles
            .iter()
            .filter_map(|role| self.roles.get(role))
            .flatten()
            .filter(|permission| permission.kind.allows(access))
            .map(|permission| Interval::of(&permission.span()))
            .collect();
        granted.sort_by(|a, b| a.start.cmp(&b.start));
        covers(&granted, &Interval::of(span))
    }

    /// Whether `user` may make the write `command` asks for, judged from this state alone (the
    /// keys a lease revocation deletes are judged by the caller, who can read them).
    pub fn permits_command(&self, user: &str, command: &Command) -> bool {
        match command {
            Command::Put(put) => self.permits_put(user, put),
            Command::DeleteRange(delete) => self.permits_delete(user, delete),
            Command::Txn(txn) => self.permits_txn(user, txn),
            Command::LeaseGrant(_) | Command::LeaseRevoke { .. } => self.users.contains_key(user),
            Command::Compact(_) | Command::Auth(_) | Command::KeepLearner { .. } => {
                self.is_root(user)
            }
            Command::AsUser { .. } => false,
        }
    }

    fn permits_put(&self, user: &str, put: &api::PutRequest) -> bool {
        let key = KeySpan::One(&put.key);
        self.permits(user, &key, KeyAccess::Write)
            && (!put.prev_kv || self.permits(user, &key, KeyAccess::Read))
    }

    fn permits_delete(&self, user: &str, delete: &api::DeleteRangeRequest) -> bool {
        let span = KeySpan::new(&delete.key, &delete.range_end);
        self.permits(user, &span, KeyAccess::Write)
            && (!delete.prev_kv || self.permits(user, &span, KeyAccess::Read))
    }

    /// A txn needs read permission on what it compares and whatever each operation of either
    /// branch needs: which branch runs is known only when it is applied.
    pub fn permits_txn(&self, user: &str, txn: &api::TxnRequest) -> bool {
        let compares = txn.compare.iter().all(|compare| {
            let span = KeySpan::new(&compare.key, &compare.range_end);
            self.permits(user, &span, KeyAccess::Read)
        });
        compares
            && txn.success.iter().chain(&txn.failure).all(|op| match op {
                RequestOp::Range(range) => {
                    let span = KeySpan::new(&range.key, &range.range_end);
                    self.permits(user, &span, KeyAccess::Read)
                }
                RequestOp::Put(put) => self.permits_put(user, put),
                RequestOp::DeleteRange(delete) => self.permits_delete(user, delete),
                RequestOp::Txn(inner) => self.permits_txn(user, inner),
            })
    }
}

/// Keys `[start, end)`, `end` None for no end: a permission or a request as one shape.
#[derive(Debug)]
struct Interval {
    start: Vec<u8>,
    end: Option<Vec<u8>>,
}

impl Interval {
    fn of(span: &KeySpan<'_>) -> Self {
        match span {
            KeySpan::One(key) => {
                let mut end = key.to_vec();
                end.push(0);
                Interval {
                    start: key.to_vec(),
                    end: Some(end),
                }
            }
            KeySpan::Range { start, end } => Interval {
                start: start.to_vec(),
                end: end.map(<[u8]>::to_vec),
            },
        }
    }
}

/// Whether the union of `granted` (sorted by start) covers all of `wanted`.
fn covers(granted: &[Interval], wanted: &Interval) -> bool {
    if wanted.end.as_ref().is_some_and(|end| *end <= wanted.start) {
        return true;
    }
    let mut reached = wanted.start.clone();
    for interval in granted {
        if interval.start > reached {
            break;
        }
        match &interval.end {
            None => return true,
            Some(end) if *end > reached => reached.clone_from(end),
            Some(_) => {}
        }
        if wanted.end.as_ref().is_some_and(|end| reached >= *end) {
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::PermissionKind;

    fn grant(state: &mut AuthState, change: AuthChange) {
        state.change(&change).expect("the change applies");
    }

    fn permission(kind: PermissionKind, key: &str, range_end: &[u8]) -> Permission {
        Permission {
            kind,
            key: key.as_bytes().to_vec(),
            range_end: range_end.to_vec(),
        }
    }

    /// A user `app` whose role may read and write `app/` and read `shared`.
    fn app_user() -> AuthState {
        let mut state = AuthState::default();
        let name = |s: &str| s.to_string();
        grant(&mut state, AuthChange::RoleAdd { name: name("app") });
        grant(
            &mut state,
            AuthChange::UserAdd {
                name: name("app"),
                password_hash: None,
            },
        );
        grant(
            &mut state,
            AuthChange::RoleGrantPermission {
                role: name("app"),
                permission: permission(PermissionKind::ReadWrite, "app/", b"app0"),
            },
        );
        grant(
            &mut state,
            AuthChange::RoleGrantPermission {
                role: name("app"),
                permission: permission(PermissionKind::Read, "shared", b""),
            },
        );
        grant(
            &mut state,
            AuthChange::UserGrantRole {
                user: name("app"),
                role: name("app"),
            },
        );
        state
    }

    #[test]
    fn a_user_reaches_exactly_the_keys_its_roles_cover() {
        let state = app_user();
        let one = |key: &'static [u8]| KeySpan::One(key);
        assert!(state.permits("app", &one(b"app/x"), KeyAccess::Write));
        assert!(state.permits("app", &KeySpan::new(b"app/", b"app0"), KeyAccess::Read));
        assert!(!state.permits("app", &KeySpan::new(b"app/", b"app1"), KeyAccess::Read));
        assert!(!state.permits("app", &KeySpan::new(b"", b"\0"), KeyAccess::Read));
        assert!(!state.permits("app", &one(b"other"), KeyAccess::Read));
        assert!(state.permits("app", &one(b"shared"), KeyAccess::Read));
        assert!(!state.permits("app", &one(b"shared"), KeyAccess::Write));
        assert!(!state.permits("nobody", &one(b"app/x"), KeyAccess::Read));
    }

    #[test]
    fn adjacent_permissions_of_different_roles_cover_a_span_together() {
        let mut state = app_user();
        let name = |s: &str| s.to_string();
        grant(&mut state, AuthChange::RoleAdd { name: name("next") });
        grant(
            &mut state,
            AuthChange::RoleGrantPermission {
                role: name("next"),
                permission: permission(PermissionKind::Read, "app0", b"\0"),
            },
        );
        let span = KeySpan::new(b"app/", b"\0");
        assert!(!state.permits("app", &span, KeyAccess::Read));
        grant(
            &mut state,
            AuthChange::UserGrantRole {
                user: name("app"),
                role: name("next"),
            },
        );
        assert!(state.permits("app", &span, KeyAccess::Read));
        assert!(!state.permits("app", &span, KeyAccess::Write));
    }

    #[test]
    fn enabling_needs_root_with_the_root_role_and_root_cannot_then_be_removed() {
        let mut state = AuthState::default();
        let enable = AuthChange::Enable {
            token_key: vec![7; 32],
        };
        assert_eq!(state.change(&enable), Err(AuthError::RootUserNotExist));
        grant(
            &mut state,
            AuthChange::UserAdd {
                name: ROOT_USER.into(),
                password_hash: None,
            },
        );
        assert_eq!(state.change(&enable), Err(AuthError::RootRoleNotExist));
        grant(
            &mut state,
            AuthChange::RoleAdd {
                name: ROOT_ROLE.into(),
            },
        );
        grant(
            &mut state,
            AuthChange::UserGrantRole {
                user: ROOT_USER.into(),
                role: ROOT_ROLE.into(),
            },
        );
        let before = state.revision;
        grant(&mut state, enable);
        assert!(state.enabled && state.revision == before + 1);
        let refused = state.change(&AuthChange::UserDelete {
            name: ROOT_USER.into(),
        });
        assert_eq!(refused, Err(AuthError::InvalidManagement));
        assert_eq!(state.revision, before + 1, "a refusal changes nothing");
        assert!(state.permits(ROOT_USER, &KeySpan::new(b"", b"\0"), KeyAccess::Write));
    }

    #[test]
    fn a_txn_needs_every_key_of_both_branches() {
        let state = app_user();
        let put = |key: &str| {
            RequestOp::Put(api::PutRequest {
                key: key.as_bytes().to_vec(),
                ..api::PutRequest::default()
            })
        };
        let mut txn = api::TxnRequest {
            success: vec![put("app/a")],
            failure: vec![put("app/b")],
            ..api::TxnRequest::default()
        };
        assert!(state.permits_txn("app", &txn));
        txn.failure.push(put("elsewhere"));
        assert!(!state.permits_txn("app", &txn));
    }

    #[test]
    fn deleting_a_role_takes_it_from_every_user() {
        let mut state = app_user();
        grant(&mut state, AuthChange::RoleDelete { name: "app".into() });
        assert!(!state.permits("app", &KeySpan::One(b"app/x"), KeyAccess::Read));
        assert!(state.users["app"].roles.is_empty());
    }
}
