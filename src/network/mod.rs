//! The node-to-node transport: length-prefixed bincode frames over persistent TCP connections,
//! inside mutual TLS when the node has peer certificates (`crate::tls`).
//!
//! One connection per peer carries every kind of traffic (Raft's append, vote and snapshot RPCs and
//! the client requests followers forward to the leader). Clients of the native protocol
//! ([`crate::client`]) use the same port and frames for their writes and reads. Requests carry ids, so many can be in
//! flight on one connection and answers may come back in any order.
//!
//! - `wire`: the frame format and the messages.
//! - `client`: connections to peers, with per-call timeouts and reconnect backoff.
//! - `duplex`: splitting a plaintext or TLS connection into its reader's and writer's halves.
//! - `server`: the listener that decodes frames and hands requests to a [`RpcHandler`].
//! - `raft_network`: openraft's network traits on top of `client`.
//! - `append_pipeline`: the stream of AppendEntries to one follower, where new entries do not
//!   wait behind a request without any.

mod append_pipeline;
mod client;
mod duplex;
mod raft_network;
mod server;
mod wire;

pub use client::CallError;
pub use client::Peer;
pub use client::PeerTlsClient;
pub use client::Peers;
pub use raft_network::NetworkFactory;
pub use server::serve;
pub use server::RpcHandler;
pub use wire::MembershipChange;
pub use wire::RemoteError;
pub use wire::RemovalNotice;
pub use wire::Request;
pub use wire::Response;
pub use wire::SnapshotChunk;
pub use wire::MAX_FRAME_LEN;
pub use wire::MAX_REQUEST_BYTES_CEILING;
