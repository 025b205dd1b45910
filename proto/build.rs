//! Compiles `quern/v1/*.proto` with the vendored protoc, so a fresh machine
//! needs nothing installed by hand.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; nothing else reads the
    // environment concurrently.
    unsafe { std::env::set_var("PROTOC", protoc) };
    let include = protoc_bin_vendored::include_path()?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let protos = [
        PathBuf::from("quern/v1/jobs.proto"),
        PathBuf::from("quern/v1/watches.proto"),
    ];
    for p in &protos {
        println!("cargo:rerun-if-changed={}", p.display());
    }
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("quern_descriptor.bin"))
        .compile_protos(&protos, &[PathBuf::from("."), include])?;
    Ok(())
}
