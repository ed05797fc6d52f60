//! Generates the gRPC code from proto/internal.proto with protox (a .proto compiler in Rust), so
//! building roomcast needs no `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Read when the script runs, not when it was compiled: a target directory shared by two
    // checkouts must not send one checkout's build to the other's files.
    let dir = format!("{}/../../proto", std::env::var("CARGO_MANIFEST_DIR")?);
    let dir = dir.as_str();
    let fds = protox::compile([format!("{dir}/internal.proto")], [dir])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // The wire type the gateway already encodes for clients: no conversion on the way.
        .extern_path(".roomcast.v1.RoomMsg", "::roomcast_proto::body::RoomMsg")
        // Encoded batches are shared between gateways, not copied.
        .bytes(".roomcast.internal.v1.PushRequest.batches")
        .compile_fds(fds)?;
    println!("cargo:rerun-if-changed={dir}/internal.proto");
    println!("cargo:rerun-if-changed={dir}/roomcast.proto");
    Ok(())
}
