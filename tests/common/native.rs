//! The native client (`ondisk::client`) as tests use it: a small runtime to drive it from a
//! plain test, and a client of some of a cluster's nodes.

use std::time::Duration;

use ondisk::api;
use ondisk::client::Client;

use super::Cluster;

/// Long enough for an election on a loaded machine, so a client call never fails on one.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(20);

/// A current-thread runtime for `block_on` in a synchronous test.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a test runtime")
}

/// A native client that knows the raft addresses of nodes `ids`.
pub fn client_of(cluster: &Cluster, ids: &[usize]) -> Client {
    let endpoints = ids
        .iter()
        .map(|&id| cluster.raft_addr(id).to_string())
        .collect();
    Client::new(endpoints, CLIENT_TIMEOUT).expect("a client")
}

/// A plain put of `value` at `key`, as most tests write.
pub fn put_request(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> api::PutRequest {
    api::PutRequest {
        key: key.into(),
        value: value.into(),
        ..api::PutRequest::default()
    }
}
