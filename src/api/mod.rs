//! The wire faces: gRPC handlers (decisions, authentication, admin), Envoy
//! ext_authz, the ops HTTP port, input validation, the transport guard, and
//! the one table that turns an error into a gRPC and an HTTP status.

pub mod admin;
pub mod authenticate;
pub mod ext_authz;
pub mod ops;
pub mod service;
pub mod status;
pub mod transport;
pub mod validate;
