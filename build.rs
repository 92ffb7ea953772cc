//! Compiles `proto/` into Rust (prost messages, tonic clients and servers)
//! and a file descriptor set for the reflection service, with `protox`, so
//! that no `protoc` is needed on the build machine.

use std::{env, fs, path::PathBuf};

use prost::Message;

const PROTO_ROOT: &str = "proto";
const PROTOS: &[&str] = &[
    "proto/syncstore/v1/sync.proto",
    "proto/syncstore/v1/replication.proto",
    "proto/syncstore/v1/admin.proto",
    "proto/syncstore/v1/history.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    let fds = protox::Compiler::new([PROTO_ROOT])?
        .include_imports(true)
        .include_source_info(true)
        .open_files(PROTOS)?
        .file_descriptor_set();

    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(out_dir.join("syncstore_descriptor.bin"), fds.encode_to_vec())?;

    tonic_prost_build::configure().build_server(true).build_client(true).compile_fds(fds)?;
    Ok(())
}
