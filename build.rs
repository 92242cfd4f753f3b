//! Compiles `proto/` with a vendored `protoc`, so a fresh machine needs no
//! system package, and copies the Envoy descriptor set that `envoy-types`
//! ships (but does not export) so reflection can describe ext_authz.

use std::{env, error::Error, path::PathBuf};

/// Where cargo unpacked `envoy-types` (the registry source of the version in use).
fn envoy_descriptor() -> Option<PathBuf> {
    if let Some(path) = env::var_os("VELRO_ENVOY_DESCRIPTOR") {
        return Some(PathBuf::from(path));
    }
    let home = env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))?;
    let wanted = format!("envoy-types-{}", ENVOY_TYPES_VERSION);
    let registries = std::fs::read_dir(home.join("registry").join("src")).ok()?;
    registries
        .filter_map(|r| r.ok())
        .map(|r| r.path().join(&wanted).join("src/generated/types.bin"))
        .find(|p| p.exists())
}

/// Keep in step with Cargo.lock (a mismatch only drops Envoy from reflection).
const ENVOY_TYPES_VERSION: &str = "0.7.7";

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

    let envoy = out_dir.join("envoy_descriptor.bin");
    match envoy_descriptor() {
        Some(path) => {
            std::fs::copy(&path, &envoy)?;
        }
        None => {
            println!(
                "cargo:warning=envoy-types' descriptor set not found; ext_authz works but reflection will not list it (set VELRO_ENVOY_DESCRIPTOR)"
            );
            std::fs::write(&envoy, [])?;
        }
    }
    println!("cargo:rerun-if-env-changed=VELRO_ENVOY_DESCRIPTOR");
    Ok(())
}
