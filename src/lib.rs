//! ondisk: a replicated key-value store. One Raft group (openraft) whose state machine lives in
//! RocksDB, driven from a REPL and an HTTP API. See `docs/ARCHITECTURE.md` for how the layers fit.

pub mod api;
pub mod cli;
pub mod client;
pub mod client_port;
pub mod ctl;
pub mod error;
pub mod grpc;
pub mod http;
pub mod locks;
pub mod logging;
pub mod network;
pub mod node;
pub mod repl;
pub mod scheduling;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod types;

pub use error::Error;
pub use error::Result;
