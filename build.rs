//! Compiles `proto/` with a vendored `protoc`, so a fresh machine needs no system package.

use std::{env, error::Error, path::PathBuf};

fn main() -> Result<(), Box<dyn Error>> {
    let protoc = match env::var_os("PROTOC") {
        Some(path) => PathBuf::from(path),
        None => protoc_bin_vendored::protoc_bin_path()?,
    };
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("velro_authz_descriptor.bin"))
        .compile_with_config(config, &["proto/velro/authz/v1/authz.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
