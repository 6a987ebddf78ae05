//! etcd's v3 API messages and service traits, generated from `proto/etcd/` by `build.rs`: the
//! contract of the gRPC front end (`crate::grpc`), which maps them onto this module's siblings.
//! Every message also has the JSON form etcd's gateway speaks (serde, protobuf JSON mapping).
//! The package names (`etcdserverpb`, `mvccpb`, ...) are etcd's, so the generated code's paths
//! between them resolve and the gRPC method names are the ones etcd clients call.

#![allow(clippy::all, clippy::pedantic, missing_docs)]

pub mod mvccpb {
    tonic::include_proto!("mvccpb");
    include!(concat!(env!("OUT_DIR"), "/mvccpb.serde.rs"));
}

pub mod authpb {
    tonic::include_proto!("authpb");
    include!(concat!(env!("OUT_DIR"), "/authpb.serde.rs"));
}

pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
    include!(concat!(env!("OUT_DIR"), "/etcdserverpb.serde.rs"));
}

pub mod v3lockpb {
    tonic::include_proto!("v3lockpb");
    include!(concat!(env!("OUT_DIR"), "/v3lockpb.serde.rs"));
}

pub mod v3electionpb {
    tonic::include_proto!("v3electionpb");
    include!(concat!(env!("OUT_DIR"), "/v3electionpb.serde.rs"));
}
