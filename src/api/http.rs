//! The HTTP API's contract: route paths, query parameters, headers and the JSON shapes that only
//! HTTP uses, in one place for the server (`crate::http`) and every client (`ondisk ctl`, the
//! tests). Request and answer bodies are the API's own types (`crate::api`) as JSON.
//!
//! | route | method | body | answer |
//! | --- | --- | --- | --- |
//! | `/v1/kv/KEY` | GET | | the value (raw), revisions in headers; `?revision=R`, `?consistency=stale` |
//! | `/v1/kv/KEY` | PUT | the value (raw) | 204; `?lease=ID`, `?prev_value=V`, `?prev_exist=false` |
//! | `/v1/kv/KEY` | DELETE | | 204 |
//! | `/v1/kv/?prefix=P` | GET | | [`ScanAnswer`]: one page; `start`, `limit`, `revision`, `consistency` |
//! | `/v1/range` | POST | `RangeRequest` | `RangeResponse` |
//! | `/v1/txn` | POST | `TxnRequest` | `TxnResponse` |
//! | `/v1/compact` | POST | `CompactionRequest` | `CompactionResponse` |
//! | `/v1/watch/KEY` | GET | | newline-delimited `WatchResponse`s, as they happen; `?prefix=true`, `start_revision`, `prev_kv`, `progress_notify`, `filters` |
//! | `/v1/leases` | POST | `LeaseGrantRequest` | `LeaseGrantResponse` |
//! | `/v1/leases` | GET | | `LeaseLeasesResponse` |
//! | `/v1/leases/ID` | GET | | `LeaseTimeToLiveResponse`; `?keys=true` |
//! | `/v1/leases/ID` | DELETE | | `LeaseRevokeResponse` |
//! | `/v1/leases/ID/keep-alive` | POST | | `LeaseKeepAliveResponse` |
//! | `/v1/members` | GET | | [`MembersAnswer`] |
//! | `/v1/members` | POST | [`AddMemberRequest`] | 204 |
//! | `/v1/members/ID` | DELETE | | 204 |
//! | `/v1/transfer-leader` | POST | [`TransferLeaderRequest`] | [`TransferLeaderAnswer`] |
//! | `/v1/snapshot` | POST | | [`SnapshotAnswer`] |
//! | `/v1/backup` | GET | | the snapshot stream; its log id in [`header::BACKUP_INDEX`], [`header::BACKUP_TERM`] |
//! | `/v1/status` | GET | | [`StatusAnswer`] |
//! | `/health` | GET | | [`HealthAnswer`], 200 or 503 |
//!
//! Every error is a JSON [`ErrorBody`] with a status code: 400 a malformed request, 404 a key or
//! lease not found, 410 a compacted revision, 413 too large, 503 no quorum in time (with
//! `Retry-After` when nothing was changed).

use base64::Engine;
use serde::Deserialize;
use serde::Serialize;

/// The key-value routes: `KV` followed by the percent-encoded key; `KV` alone scans.
pub const KV: &str = "/v1/kv/";
pub const RANGE: &str = "/v1/range";
pub const TXN: &str = "/v1/txn";
pub const COMPACT: &str = "/v1/compact";
/// The watch route: `WATCH` followed by the percent-encoded key (or prefix, with `prefix=true`).
pub const WATCH: &str = "/v1/watch/";
pub const LEASES: &str = "/v1/leases";
pub const MEMBERS: &str = "/v1/members";
pub const TRANSFER_LEADER: &str = "/v1/transfer-leader";
pub const SNAPSHOT: &str = "/v1/snapshot";
pub const BACKUP: &str = "/v1/backup";
pub const STATUS: &str = "/v1/status";
pub const HEALTH: &str = "/health";
/// `POST` an [`AuthenticateRequest`] for a token ([`crate::api::AuthenticateResponse`]).
pub const AUTHENTICATE: &str = "/v1/auth/authenticate";
/// `POST` a [`crate::api::AuthRequest`]: a change to users, roles or the switch.
pub const AUTH: &str = "/v1/auth";
/// `GET` every user's name; `AUTH_USERS/NAME` a user ([`crate::api::UserInfo`]).
pub const AUTH_USERS: &str = "/v1/auth/users";
/// `GET` every role's name; `AUTH_ROLES/NAME` a role ([`crate::api::RoleInfo`]).
pub const AUTH_ROLES: &str = "/v1/auth/roles";
/// The scheme of an `Authorization` header carrying a token from [`AUTHENTICATE`]; `Basic`
/// (a name and password) is accepted as well.
pub const BEARER: &str = "Bearer ";
pub const BASIC: &str = "Basic ";
/// The last segment of a lease's keep-alive route.
pub const KEEP_ALIVE: &str = "keep-alive";

/// The body of [`AUTHENTICATE`].
#[derive(Clone, Serialize, Deserialize)]
pub struct AuthenticateRequest {
    pub name: String,
    pub password: String,
}

/// The value of an `Authorization` header for basic authentication as `name`.
pub fn basic_authorization(name: &str, password: &str) -> String {
    let pair = format!("{name}:{password}");
    format!(
        "{BASIC}{}",
        base64::engine::general_purpose::STANDARD.encode(pair)
    )
}

/// The route of lease `id`.
pub fn lease(id: i64) -> String {
    format!("{LEASES}/{id}")
}

/// The route of member `id` (to remove it).
pub fn member(id: u64) -> String {
    format!("{MEMBERS}/{id}")
}

/// The keep-alive route of lease `id`.
pub fn keep_alive(id: i64) -> String {
    format!("{LEASES}/{id}/{KEEP_ALIVE}")
}

/// Query parameters.
pub mod param {
    /// Read at this revision (a number; 0 or absent: the current one).
    pub const REVISION: &str = "revision";
    /// `linearizable` (the default) or `stale`.
    pub const CONSISTENCY: &str = "consistency";
    /// Attach the key to this lease (a put).
    pub const LEASE: &str = "lease";
    /// A scan's prefix; for a watch, `true` to watch every key under the path's key.
    pub const PREFIX: &str = "prefix";
    /// The key a scan page starts at: a previous page's `next`, as is.
    pub const START: &str = "start";
    pub const LIMIT: &str = "limit";
    /// The first revision a watch reports.
    pub const START_REVISION: &str = "start_revision";
    /// `true`: events carry the previous version of their key.
    pub const PREV_KV: &str = "prev_kv";
    /// `true`: a progress response after the node's progress interval without events.
    pub const PROGRESS_NOTIFY: &str = "progress_notify";
    /// Comma-separated event kinds a watch does not want: `no_put`, `no_delete`.
    pub const FILTERS: &str = "filters";
    /// `true`: a lease's time-to-live answer lists its keys.
    pub const KEYS: &str = "keys";
    /// A compare-and-swap put: the value the key must hold.
    pub const PREV_VALUE: &str = "prev_value";
    /// A compare-and-swap put: `false` for create-only.
    pub const PREV_EXIST: &str = "prev_exist";
}

/// Headers of a single key's answer (`GET /v1/kv/KEY`), whose body is the raw value.
pub mod header {
    /// The store's revision when the read was served; on the answer to a put or delete
    /// (`/v1/kv/KEY`), the revision the write left the store at.
    pub const REVISION: &str = "x-ondisk-revision";
    pub const CREATE_REVISION: &str = "x-ondisk-create-revision";
    pub const MOD_REVISION: &str = "x-ondisk-mod-revision";
    pub const VERSION: &str = "x-ondisk-version";
    pub const LEASE: &str = "x-ondisk-lease";
    /// The log index a backup covers.
    pub const BACKUP_INDEX: &str = "x-ondisk-log-index";
    /// The term of the entry at that index.
    pub const BACKUP_TERM: &str = "x-ondisk-log-term";
}

/// The content type of a watch stream: one JSON `WatchResponse` per line.
pub const WATCH_CONTENT_TYPE: &str = "application/x-ndjson";

/// Every error answer's body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
    /// For a compacted revision: the revision the history starts at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compact_revision: Option<i64>,
}

/// The answer to a compare-and-swap put (`?prev_value=`, `?prev_exist=false`) whose condition
/// failed (412): what the key holds instead, so the client can decide again without a read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreconditionFailed {
    /// Always [`PreconditionFailed::ERROR`], so the body reads as an [`ErrorBody`] too.
    pub error: String,
    /// The key's current value; `null` when it is absent.
    pub current: Option<EncodedValue>,
}

impl PreconditionFailed {
    pub const ERROR: &'static str = "precondition failed";

    pub fn new(current: Option<&[u8]>) -> Self {
        PreconditionFailed {
            error: Self::ERROR.into(),
            current: current.map(EncodedValue::new),
        }
    }
}

/// A value written as [`Encoding`] says, with the encoding named, for answers where a reader
/// shows the value as it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EncodedValue {
    pub value: String,
    pub encoding: Encoding,
}

impl EncodedValue {
    pub fn new(bytes: &[u8]) -> Self {
        match std::str::from_utf8(bytes) {
            Ok(text) => EncodedValue {
                value: text.into(),
                encoding: Encoding::Utf8,
            },
            Err(_) => EncodedValue {
                value: base64::engine::general_purpose::STANDARD.encode(bytes),
                encoding: Encoding::Base64,
            },
        }
    }
}

/// One member of the cluster, as `GET /v1/members` and `GET /v1/status` list it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub id: u64,
    /// Where its peers reach it (its `-addr`).
    pub raft_addr: String,
    /// Its HTTP API, empty when it has not recorded one.
    pub http_addr: String,
    /// A voter, or a learner that does not vote.
    pub voter: bool,
    /// Whether the answering node believes it leads.
    pub leader: bool,
}

/// The answer to `GET /v1/members`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembersAnswer {
    /// The leader the answering node knows of, if any.
    pub leader: Option<u64>,
    /// The log index of the entry that set this membership: what `prev_index` must name.
    pub membership_index: u64,
    pub members: Vec<Member>,
}

/// The body of `POST /v1/members`: adds a voter or a learner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddMemberRequest {
    pub id: u64,
    /// The new node's raft address, HOST:PORT.
    pub addr: String,
    /// `voter` (the default: a learner until caught up, then promoted) or `learner`.
    #[serde(default)]
    pub role: Option<String>,
    /// Refuse unless the membership was last set at this log index.
    #[serde(default)]
    pub prev_index: Option<u64>,
}

/// The body of `POST /v1/transfer-leader`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransferLeaderRequest {
    /// The voter to lead.
    pub to: u64,
}

/// The answer to `POST /v1/transfer-leader`, once the answering node sees the new leader lead.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferLeaderAnswer {
    pub leader: u64,
}

/// The answer to `POST /v1/snapshot`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotAnswer {
    /// The log index the snapshot covers.
    pub index: u64,
}

/// The answer to `GET /health`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthAnswer {
    /// Whether the node can serve a linearizable read now.
    pub health: bool,
    /// Why not, when it cannot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The answer to `GET /v1/status`: the answering node's Raft and storage state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusAnswer {
    pub id: u64,
    /// `Leader`, `Follower`, `Candidate` or `Learner`.
    pub state: String,
    pub leader: Option<u64>,
    pub term: u64,
    pub last_log_index: Option<u64>,
    pub committed: Option<u64>,
    pub last_applied: Option<u64>,
    /// Entries applied since the process started.
    pub applied_this_run: u64,
    pub last_snapshot_index: Option<u64>,
    /// The last log index compacted away, if any.
    pub purged: Option<u64>,
    pub first_log_index: u64,
    pub snapshots_built: u64,
    pub snapshots_sent: u64,
    pub snapshots_installed: u64,
    pub members: Vec<Member>,
}

/// The largest `limit` a scan accepts; pages are bounded by bytes as well, so a client paging
/// through a range (as `ondisk ctl scan` does) asks for this many and lets the bytes decide.
pub const MAX_SCAN_LIMIT: usize = 100_000;

/// The answer to a scan: one page, and where the next one starts. Also what `ondisk ctl scan`
/// reads.
#[derive(Debug, Serialize, Deserialize)]
pub struct ScanAnswer {
    /// Pairs in this page.
    pub count: usize,
    /// The revision the page was read at: pass it as [`param::REVISION`] with the next page's
    /// [`param::START`] to list a range consistently, whatever changes meanwhile.
    pub revision: i64,
    /// The pairs, in key order.
    pub items: Vec<ScanItem>,
    /// The [`param::START`] value (percent-encoded) that fetches the next page; `null` on
    /// the last page.
    pub next: Option<String>,
}

/// One pair of a scan page.
#[derive(Debug, Serialize, Deserialize)]
pub struct ScanItem {
    /// The key, written as `encoding` says.
    pub key: String,
    /// The value, written as `encoding` says.
    pub value: String,
    pub encoding: Encoding,
}

/// How bytes are written in JSON: text when they are UTF-8, so answers stay readable, and base64
/// otherwise, so any bytes survive. A scan item uses one encoding for its key and its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Encoding {
    /// UTF-8 text, as is.
    #[serde(rename = "utf-8")]
    Utf8,
    /// Base64 of bytes that are not UTF-8 (for a scan item: of both, when either is not).
    #[serde(rename = "base64")]
    Base64,
}

impl ScanItem {
    /// Takes the pair's buffers over as strings when they are UTF-8, so a page is not copied.
    pub fn new(key: Vec<u8>, value: Vec<u8>) -> Self {
        match (String::from_utf8(key), String::from_utf8(value)) {
            (Ok(key), Ok(value)) => ScanItem {
                key,
                value,
                encoding: Encoding::Utf8,
            },
            (key, value) => {
                let b64 = |text: Result<String, std::string::FromUtf8Error>| {
                    let bytes = text.map_or_else(|e| e.into_bytes(), String::into_bytes);
                    base64::engine::general_purpose::STANDARD.encode(bytes)
                };
                ScanItem {
                    key: b64(key),
                    value: b64(value),
                    encoding: Encoding::Base64,
                }
            }
        }
    }
}

/// Percent-encodes every byte but ASCII letters and digits, so any key survives a URL path or
/// query value (and decodes back exactly, as the API decodes both).
pub fn percent_encode(bytes: &[u8]) -> String {
    percent_encoding::percent_encode(bytes, percent_encoding::NON_ALPHANUMERIC).to_string()
}
