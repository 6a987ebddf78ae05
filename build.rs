//! Generates the server side of etcd's v3 gRPC API from etcd's protobuf definitions in
//! `proto/etcd/` (see the README there for where they come from), and the JSON forms of its
//! messages that etcd's gateway (`/v3/...`) speaks: the protobuf JSON mapping with etcd's field
//! names, as etcd's gateway writes them.

use std::path::PathBuf;

/// etcd's protobuf packages, all of which the gateway's messages reach.
const PACKAGES: &[&str] = &[
    ".mvccpb",
    ".authpb",
    ".etcdserverpb",
    ".v3lockpb",
    ".v3electionpb",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = "proto/etcd";
    println!("cargo:rerun-if-changed={root}");
    let descriptors = PathBuf::from(std::env::var("OUT_DIR")?).join("etcd_descriptors.bin");
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(true)
        // Every RPC this server does not implement answers UNIMPLEMENTED.
        .generate_default_stubs(true)
        .file_descriptor_set_path(&descriptors)
        .compile_protos(
            &[
                "proto/etcd/kv.proto",
                "proto/etcd/auth.proto",
                "proto/etcd/rpc.proto",
                "proto/etcd/v3lock.proto",
                "proto/etcd/v3election.proto",
            ],
            &[root],
        )?;
    pbjson_build::Builder::new()
        .register_descriptors(&std::fs::read(&descriptors)?)?
        // etcd's gateway names fields as the .proto files do (`create_revision`, `ID`, `TTL`)
        // and, like any protobuf JSON reader, skips fields it does not know.
        .preserve_proto_field_names()
        .ignore_unknown_fields()
        .build(PACKAGES)?;
    Ok(())
}
