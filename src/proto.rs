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
