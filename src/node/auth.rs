//! Who is asking, and may they: the node turns a front end's credentials (a token, or a name
//! and password) into a [`Caller`], checks each call against the replicated auth state
//! (`store::AuthState`), issues tokens, and proposes changes to users and roles.
//!
//! Tokens are signed (HMAC-SHA256) with a key that is part of the replicated state, so every
//! member accepts a token any member issued, and none needs to remember them. A token carries
//! its user, its expiry and the revision of the password it was issued for: it ends at its TTL,
//! when the user is deleted, when the password changes, and when authentication is switched
//! off and on again (a new key).

use std::collections::HashMap;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use std::time::SystemTime;
use std::time::UNIX_EPOCH;

use argon2::password_hash::PasswordHasher;
use argon2::password_hash::SaltString;
use argon2::Argon2;
use argon2::PasswordHash;
use argon2::PasswordVerifier;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use sha2::Digest;
use sha2::Sha256;
use tokio::sync::Semaphore;

use crate::api;
use crate::api::AuthError;
use crate::api::AuthRequest;
use crate::api::KeyAccess;
use crate::api::KeySpan;
use crate::error::Error;
use crate::error::Result;
use crate::store::AuthState;
use crate::store::StateReader;
use crate::types::AuthChange;
use crate::types::Command;
use crate::types::CommandResult;

use super::Node;

/// etcd's default token TTL (`--auth-token-ttl`).
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(300);
/// Password checks run one at a time per member (each costs an argon2 hash, tens of
/// milliseconds of CPU by design); this many more may wait, and the next is refused at once, so
/// a flood of logins cannot take the member's CPU from the requests it serves.
const MAX_WAITING_PASSWORD_CHECKS: usize = 32;
/// Name-and-password pairs remembered as checked (HTTP basic auth sends them with every
/// request): one hash per pair, not per request. Forgotten all at once when full.
const MAX_REMEMBERED_PASSWORDS: usize = 4096;

/// Who a request comes from, as the node judges it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// The node's own operator (the REPL) or the node itself: never checked.
    Operator,
    /// No credentials: allowed everything while authentication is off, nothing while it is on.
    Anonymous,
    /// An authenticated user.
    User(String),
}

/// What a front end received to say who is asking.
#[derive(Clone)]
pub enum Credentials {
    None,
    /// A token from [`Node::authenticate`].
    Token(String),
    /// A name and password sent with the request itself (HTTP basic auth).
    Password {
        name: String,
        password: String,
    },
}

/// What a call needs of its caller, beyond being who it says.
#[derive(Debug)]
pub enum Need<'a> {
    Read(KeySpan<'a>),
    Write(KeySpan<'a>),
    /// Any authenticated user (leases, status, the member list).
    Authenticated,
    /// The root role: users and roles, membership, snapshots, maintenance, compaction.
    Admin,
}

/// The member's side of authentication: token lifetime, and the bounded password checker.
pub(super) struct Authenticator {
    token_ttl: Duration,
    /// One password check at a time (see [`MAX_WAITING_PASSWORD_CHECKS`]).
    checking: Semaphore,
    waiting: AtomicUsize,
    /// SHA-256 of (name, password) checked good, with the password revision they were good for.
    remembered: Mutex<HashMap<[u8; 32], u64>>,
}

impl Authenticator {
    pub(super) fn new(token_ttl: Duration) -> Self {
        Authenticator {
            token_ttl,
            checking: Semaphore::new(1),
            waiting: AtomicUsize::new(0),
            remembered: Mutex::new(HashMap::new()),
        }
    }

    /// Checks `password` against `name`'s hash, one check at a time; refuses at once when too
    /// many wait. A pair checked good before is not hashed again while the password stands.
    /// An unknown user, or one without a password, costs the same hash as a wrong password, so
    /// the time of a refusal does not tell which names exist.
    async fn check_password(&self, auth: &AuthState, name: &str, password: &str) -> Result<()> {
        let user = auth.users.get(name);
        let hash = user.and_then(|user| user.password_hash.clone());
        let fingerprint = fingerprint(name, password);
        if let Some(user) = user.filter(|_| hash.is_some()) {
            if self.remembered().get(&fingerprint) == Some(&user.password_revision) {
                return Ok(());
            }
        }
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= MAX_WAITING_PASSWORD_CHECKS {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(denied(AuthError::TooManyAttempts));
        }
        let permit = self.checking.acquire().await;
        self.waiting.fetch_sub(1, Ordering::AcqRel);
        let _permit = permit.map_err(|_| Error::ShuttingDown)?;
        let password = password.to_string();
        let has_password = hash.is_some();
        let matches = tokio::task::spawn_blocking(move || {
            let hash = hash.as_deref().unwrap_or_else(|| unmatchable_hash());
            PasswordHash::new(hash).is_ok_and(|parsed| {
                Argon2::default()
                    .verify_password(password.as_bytes(), &parsed)
                    .is_ok()
            })
        })
        .await
        .map_err(|e| Error::Raft(format!("password check failed: {e}")))?;
        let Some(user) = user.filter(|_| matches && has_password) else {
            return Err(denied(AuthError::Failed));
        };
        let mut remembered = self.remembered();
        if remembered.len() >= MAX_REMEMBERED_PASSWORDS {
            remembered.clear();
        }
        remembered.insert(fingerprint, user.password_revision);
        Ok(())
    }

    fn remembered(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], u64>> {
        crate::locks::lock(&self.remembered)
    }

    /// A token for `name`, good for the TTL.
    fn issue(&self, auth: &AuthState, name: &str) -> Result<api::AuthenticateResponse> {
        let user = auth.users.get(name).ok_or(denied(AuthError::Failed))?;
        let expires = unix_seconds() + self.token_ttl.as_secs();
        let claims = format!(
            "{}.{expires}.{}",
            URL_SAFE_NO_PAD.encode(name),
            user.password_revision
        );
        let signature = sign(&auth.token_key, &claims);
        Ok(api::AuthenticateResponse {
            token: format!("{claims}.{}", URL_SAFE_NO_PAD.encode(signature)),
            ttl_seconds: self.token_ttl.as_secs(),
        })
    }
}

/// The user a token names, if its signature, expiry and password revision still hold.
fn token_user(auth: &AuthState, token: &str) -> Option<String> {
    let (claims, signature) = token.rsplit_once('.')?;
    let signature = URL_SAFE_NO_PAD.decode(signature).ok()?;
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &auth.token_key);
    ring::hmac::verify(&key, claims.as_bytes(), &signature).ok()?;
    let mut parts = claims.split('.');
    let name = String::from_utf8(URL_SAFE_NO_PAD.decode(parts.next()?).ok()?).ok()?;
    let expires: u64 = parts.next()?.parse().ok()?;
    let password_revision: u64 = parts.next()?.parse().ok()?;
    let user = auth.users.get(&name)?;
    (expires > unix_seconds() && user.password_revision == password_revision).then_some(name)
}

/// A hash no password matches (of random bytes nobody keeps), made once: what a password is
/// checked against when its user has none.
fn unmatchable_hash() -> &'static str {
    static HASH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HASH.get_or_init(|| {
        let secret = URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>());
        SaltString::encode_b64(&rand::random::<[u8; 16]>())
            .ok()
            .and_then(|salt| {
                Argon2::default()
                    .hash_password(secret.as_bytes(), &salt)
                    .map(|hash| hash.to_string())
                    .ok()
            })
            .unwrap_or_default()
    })
}

fn sign(key: &[u8], claims: &str) -> Vec<u8> {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
    ring::hmac::sign(&key, claims.as_bytes()).as_ref().to_vec()
}

fn fingerprint(name: &str, password: &str) -> [u8; 32] {
    let mut digest = Sha256::new();
    digest.update(name.as_bytes());
    digest.update([0]);
    digest.update(password.as_bytes());
    digest.finalize().into()
}

fn unix_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

/// Refuses unless checking is off, `caller` is the operator, or `allowed` says yes for the user
/// it names.
fn check(
    auth: &AuthState,
    caller: &Caller,
    allowed: impl FnOnce(&AuthState, &str) -> bool,
) -> Result<()> {
    if !auth.enabled {
        return Ok(());
    }
    match caller {
        Caller::Operator => Ok(()),
        Caller::Anonymous => Err(denied(AuthError::UserEmpty)),
        Caller::User(user) if !auth.users.contains_key(user) => {
            Err(denied(AuthError::InvalidToken))
        }
        Caller::User(user) if allowed(auth, user) => Ok(()),
        Caller::User(_) => Err(denied(AuthError::PermissionDenied)),
    }
}

/// Whether `caller` may read `key` by the auth state `state` has applied now: a watch's filter.
pub(super) fn may_read(state: &StateReader, caller: &Caller, key: &[u8]) -> bool {
    check(&state.auth(), caller, |auth, user| {
        auth.permits(user, &KeySpan::One(key), KeyAccess::Read)
    })
    .is_ok()
}

/// An auth refusal as the node's error.
fn denied(refusal: AuthError) -> Error {
    Error::Request(refusal.into())
}

/// An argon2id hash of `password` with a fresh salt, as a PHC string.
async fn hash_password(password: String) -> Result<String> {
    tokio::task::spawn_blocking(move || {
        let salt = SaltString::encode_b64(&rand::random::<[u8; 16]>())
            .map_err(|e| Error::Raft(format!("hashing the password failed: {e}")))?;
        Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map(|hash| hash.to_string())
            .map_err(|e| Error::Raft(format!("hashing the password failed: {e}")))
    })
    .await
    .map_err(|e| Error::Raft(format!("hashing the password failed: {e}")))?
}

impl Node {
    /// Who `credentials` say is asking. With authentication off everyone is anonymous and
    /// allowed; with it on, a bad token or password is refused here.
    pub async fn caller(&self, credentials: Credentials) -> Result<Caller> {
        let auth = self.state.auth();
        if !auth.enabled {
            return Ok(Caller::Anonymous);
        }
        match credentials {
            Credentials::None => Ok(Caller::Anonymous),
            Credentials::Token(token) => token_user(&auth, &token)
                .map(Caller::User)
                .ok_or(denied(AuthError::InvalidToken)),
            Credentials::Password { name, password } => {
                self.authenticator
                    .check_password(&auth, &name, &password)
                    .await?;
                Ok(Caller::User(name))
            }
        }
    }

    /// Refuses the call unless `caller` has what it `need`s, by the auth state applied here.
    pub fn authorize(&self, caller: &Caller, need: Need<'_>) -> Result<()> {
        check(&self.state.auth(), caller, |auth, user| match &need {
            Need::Read(span) => auth.permits(user, span, KeyAccess::Read),
            Need::Write(span) => auth.permits(user, span, KeyAccess::Write),
            Need::Authenticated => true,
            Need::Admin => auth.is_root(user),
        })
    }

    /// `command` checked for `caller` and made ready to propose: a user's command is wrapped
    /// with the auth revision it was checked at, so applying it checks again if that changed.
    pub(super) fn command_for(&self, caller: &Caller, command: Command) -> Result<Command> {
        let auth = self.state.auth();
        check(&auth, caller, |auth, user| {
            auth.permits_command(user, &command)
        })?;
        Ok(match caller {
            Caller::User(user) if auth.enabled => Command::AsUser {
                user: user.clone(),
                auth_revision: auth.revision,
                command: Box::new(command),
            },
            _ => command,
        })
    }

    /// Checks `name`'s password and issues a token. The check follows a read barrier, so a user
    /// or password just changed anywhere in the cluster is already in force.
    pub async fn authenticate(
        &self,
        name: &str,
        password: &str,
    ) -> Result<api::AuthenticateResponse> {
        self.read_barrier("authenticate").await?;
        let auth = self.state.auth();
        if !auth.enabled {
            return Err(denied(AuthError::NotEnabled));
        }
        self.authenticator
            .check_password(&auth, name, password)
            .await?;
        self.authenticator.issue(&auth, name)
    }

    /// Applies a change to users, roles or the switch, asked for by `caller` (the root role once
    /// authentication is on; anyone before). Passwords are hashed here, before the change is
    /// proposed: no log entry, snapshot or backup holds one in clear.
    pub async fn change_auth(
        &self,
        caller: &Caller,
        request: AuthRequest,
    ) -> Result<api::ResponseHeader> {
        let change = match request {
            AuthRequest::Enable => AuthChange::Enable {
                token_key: rand::random::<[u8; 32]>().to_vec(),
            },
            AuthRequest::Disable => AuthChange::Disable,
            AuthRequest::UserAdd { name, password } => AuthChange::UserAdd {
                password_hash: match password {
                    Some(password) => Some(hash_password(password).await?),
                    None => None,
                },
                name,
            },
            AuthRequest::UserDelete { name } => AuthChange::UserDelete { name },
            AuthRequest::UserChangePassword { name, password } => AuthChange::UserChangePassword {
                name,
                password_hash: hash_password(password).await?,
            },
            AuthRequest::UserGrantRole { user, role } => AuthChange::UserGrantRole { user, role },
            AuthRequest::UserRevokeRole { user, role } => AuthChange::UserRevokeRole { user, role },
            AuthRequest::RoleAdd { name } => AuthChange::RoleAdd { name },
            AuthRequest::RoleDelete { name } => AuthChange::RoleDelete { name },
            AuthRequest::RoleGrantPermission { role, permission } => {
                AuthChange::RoleGrantPermission { role, permission }
            }
            AuthRequest::RoleRevokePermission {
                role,
                key,
                range_end,
            } => AuthChange::RoleRevokePermission {
                role,
                key,
                range_end,
            },
        };
        let command = self.command_for(caller, Command::Auth(change))?;
        match self.propose("auth", command).await? {
            CommandResult::AuthChanged => Ok(self.current_header()),
            other => self.unanswered("auth", other),
        }
    }

    /// The auth state as of every change acknowledged before the call, for the root role.
    async fn auth_for_admin(&self, caller: &Caller) -> Result<Arc<AuthState>> {
        self.authorize(caller, Need::Admin)?;
        self.read_barrier("auth").await?;
        Ok(self.state.auth())
    }

    /// Every user's name.
    pub async fn users(&self, caller: &Caller) -> Result<Vec<String>> {
        Ok(self
            .auth_for_admin(caller)
            .await?
            .users
            .keys()
            .cloned()
            .collect())
    }

    /// A user's roles.
    pub async fn user(&self, caller: &Caller, name: &str) -> Result<api::UserInfo> {
        let auth = self.auth_for_admin(caller).await?;
        let user = auth
            .users
            .get(name)
            .ok_or(denied(AuthError::UserNotFound))?;
        Ok(api::UserInfo {
            name: name.to_string(),
            roles: user.roles.iter().cloned().collect(),
        })
    }

    /// Every role's name.
    pub async fn roles(&self, caller: &Caller) -> Result<Vec<String>> {
        Ok(self
            .auth_for_admin(caller)
            .await?
            .roles
            .keys()
            .cloned()
            .collect())
    }

    /// A role's permissions.
    pub async fn role(&self, caller: &Caller, name: &str) -> Result<api::RoleInfo> {
        let auth = self.auth_for_admin(caller).await?;
        let permissions = auth
            .roles
            .get(name)
            .ok_or(denied(AuthError::RoleNotFound))?;
        Ok(api::RoleInfo {
            name: name.to_string(),
            permissions: permissions.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::AuthState;

    fn state_with(name: &str, password_revision: u64) -> AuthState {
        let mut auth = AuthState {
            enabled: true,
            token_key: vec![9; 32],
            ..AuthState::default()
        };
        auth.users.insert(
            name.to_string(),
            crate::store::User {
                password_hash: None,
                roles: Default::default(),
                password_revision,
            },
        );
        auth
    }

    #[test]
    fn a_token_names_its_user_until_the_key_or_the_password_changes() {
        let auth = state_with("a.b", 3);
        let issued = Authenticator::new(DEFAULT_TOKEN_TTL)
            .issue(&auth, "a.b")
            .expect("a token");
        assert_eq!(token_user(&auth, &issued.token).as_deref(), Some("a.b"));
        let mut rekeyed = auth.clone();
        rekeyed.token_key = vec![8; 32];
        assert_eq!(token_user(&rekeyed, &issued.token), None);
        assert_eq!(token_user(&state_with("a.b", 4), &issued.token), None);
        let forged = issued.token.replacen("YS5i", "cm9vdA", 1);
        assert_eq!(token_user(&auth, &forged), None);
        assert_eq!(token_user(&auth, "garbage"), None);
    }

    #[test]
    fn an_expired_token_names_nobody() {
        let auth = state_with("u", 1);
        let issued = Authenticator::new(Duration::ZERO)
            .issue(&auth, "u")
            .expect("a token");
        assert_eq!(token_user(&auth, &issued.token), None);
    }
}
