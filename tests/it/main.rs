//! Integration tests: a real server over real gRPC, on PostgreSQL and SQLite.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

mod audit;
mod audit_replay;
mod audit_trail;
mod auth;
mod bad_input;
mod batch;
mod cli;
mod deadlines;
mod emergency;
mod ext_authz;
mod inheritance;
mod invalidation;
mod jetstream;
mod jwks;
mod key_rotation;
mod loadgen;
mod logins;
mod media_urls;
mod overload;
mod pools;
mod prometheus;
mod rate_limit;
mod redis_cluster;
mod reference_model;
mod retention;
mod rollback;
mod rollout;
mod rules;
mod security_context;
mod service;
mod shared_tiers;
mod tls;
mod tls_backends;
mod tokens;
mod tracing;
