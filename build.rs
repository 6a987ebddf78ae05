//! Generates the server side of etcd's v3 gRPC API from etcd's protobuf definitions in
//! `proto/etcd/` (see the README there for where they come from).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = "proto/etcd";
    println!("cargo:rerun-if-changed={root}");
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(true)
        // Every RPC this server does not implement answers UNIMPLEMENTED.
        .generate_default_stubs(true)
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
    Ok(())
}
