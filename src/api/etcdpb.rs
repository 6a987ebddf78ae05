//! etcd's v3 API messages and service traits, generated from `proto/etcd/` by `build.rs`: the
//! contract of the gRPC front end (`crate::grpc`), which maps them onto this module's siblings.
//! The package names (`etcdserverpb`, `mvccpb`, ...) are etcd's, so the generated code's paths
//! between them resolve and the gRPC method names are the ones etcd clients call.

#![allow(clippy::all, clippy::pedantic, missing_docs)]

pub mod mvccpb {
    tonic::include_proto!("mvccpb");
}

pub mod authpb {
    tonic::include_proto!("authpb");
}

pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
}

pub mod v3lockpb {
    tonic::include_proto!("v3lockpb");
}

pub mod v3electionpb {
    tonic::include_proto!("v3electionpb");
}
