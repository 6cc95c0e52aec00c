//! Compiles `proto/runnel/v1/*.proto` into Rust with no system `protoc`.
//!
//! `protox` parses the files into a `FileDescriptorSet` (with source info, so the `.proto`
//! comments become doc comments), `tonic-prost-build` generates the messages, clients and
//! servers from it, and the set itself is written to `OUT_DIR/runnel_descriptor.bin` for
//! gRPC reflection, because `compile_fds` writes no descriptor file of its own.

use std::error::Error;
use std::path::{Path, PathBuf};
use std::{env, fs};

use prost::Message as _;

fn main() -> Result<(), Box<dyn Error>> {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    // The protocol lives at the workspace root, shared with non-Rust clients.
    let include_dir = fs::canonicalize(manifest_dir.join("../../proto"))?;
    let proto_dir = include_dir.join("runnel/v1");

    let files = proto_files(&proto_dir)?;
    if files.is_empty() {
        return Err(format!("no .proto files in {}", proto_dir.display()).into());
    }

    // Re-run when a file is added or removed (the directory) or edited (each file).
    println!("cargo:rerun-if-changed={}", proto_dir.display());
    for file in &files {
        println!("cargo:rerun-if-changed={}", file.display());
    }

    let fds = protox::compile(&files, [&include_dir])?;

    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(out_dir.join("runnel_descriptor.bin"), fds.encode_to_vec())?;

    tonic_prost_build::configure()
        // Payloads are `bytes::Bytes` end to end: decoding a batch slices the request buffer
        // instead of copying it into a `Vec<u8>`.
        .bytes(".")
        .compile_fds(fds)?;
    Ok(())
}

/// The `.proto` files directly in `dir`, sorted so the generated output is deterministic.
fn proto_files(dir: &Path) -> Result<Vec<PathBuf>, Box<dyn Error>> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|ext| ext == "proto") {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}
