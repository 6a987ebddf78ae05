//! The key-value API's one home: the typed requests and answers for range, put, delete, txn,
//! compaction, watch, leases and authentication that every front end (REPL, HTTP, `ondisk ctl`, the native
//! client, later gRPC) speaks, and the HTTP contract (route names, query parameters, headers)
//! that the server and its clients share.
//!
//! The shapes follow etcd's v3 API (`etcdserverpb`, `mvccpb`) field for field, so a gRPC front end
//! maps onto them one to one, and revisions, versions, lease ids and TTLs are `i64` as in etcd: a
//! negative one is refused with a clear error rather than wrapped around.
//!
//! The same types travel in Raft log entries and native frames (bincode) and in HTTP bodies
//! (JSON); [`bytes`] makes keys and values readable text in JSON whenever they are UTF-8.

mod auth;
pub mod bytes;
pub mod etcdpb;
pub mod http;
mod kv;
mod lease;
mod watch;

pub use auth::*;
pub use kv::*;
pub use lease::*;
pub use watch::*;
