//! Generated gRPC types of `velro.authz.v1`, and the descriptor set served by
//! reflection.

#![allow(
    clippy::all,
    clippy::pedantic,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

tonic::include_proto!("velro.authz.v1");

pub const FILE_DESCRIPTOR_SET: &[u8] =
    tonic::include_file_descriptor_set!("velro_authz_descriptor");

/// Envoy's descriptor set (from `envoy-types`), for reflection of ext_authz;
/// empty when the build could not find it.
pub const ENVOY_FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/envoy_descriptor.bin"));
