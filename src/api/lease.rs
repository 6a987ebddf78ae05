//! Leases: a time to live that keys can be attached to, kept alive by its holder; when it ends
//! (revoked, or not kept alive for its TTL) every key attached to it is deleted, in one revision.

use serde::Deserialize;
use serde::Serialize;

use super::ResponseHeader;

/// The longest TTL a lease may ask for, in seconds (etcd's limit).
pub const MAX_LEASE_TTL: i64 = 9_000_000_000;

/// Creates a lease.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LeaseGrantRequest {
    /// Seconds the lease lives unless kept alive: 1 to [`MAX_LEASE_TTL`]. A TTL shorter than the
    /// cluster's minimum (about an election timeout and a half) is raised to it.
    pub ttl: i64,
    /// The id wanted; 0 lets the cluster choose.
    pub id: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseGrantResponse {
    pub header: ResponseHeader,
    pub id: i64,
    /// The TTL granted, in seconds.
    pub ttl: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRevokeResponse {
    pub header: ResponseHeader,
}

/// The answer to one keep-alive: the TTL the lease has again.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseKeepAliveResponse {
    pub header: ResponseHeader,
    pub id: i64,
    pub ttl: i64,
}

/// A lease's remaining time and, when asked for, its keys.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseTimeToLiveResponse {
    pub header: ResponseHeader,
    pub id: i64,
    /// Seconds left, as the leader counts them.
    pub ttl: i64,
    /// The TTL the lease was granted with.
    pub granted_ttl: i64,
    #[serde(with = "crate::api::bytes::list")]
    pub keys: Vec<Vec<u8>>,
}

/// One lease of a [`LeaseLeasesResponse`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseStatus {
    pub id: i64,
}

/// Every lease in force.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseLeasesResponse {
    pub header: ResponseHeader,
    pub leases: Vec<LeaseStatus>,
}
