//! velro-authz: Velro's policy decision point.
//!
//! A request walks an ordered stack of authorization layers (`engine::stack`);
//! the relationship layers' answer is a permission set per `user:resource`,
//! cached read-through (`cache`) and computed from the store (`store`) with
//! one round trip on a miss.

pub mod admin;
pub mod audit;
pub mod auth;
pub mod auth_service;
pub mod breaker;
pub mod cache;
pub mod config;
pub mod control;
pub mod deadline;
pub mod demo;
pub mod emergency;
pub mod engine;
pub mod error;
pub mod ext_authz;
pub mod freshness;
pub mod layers;
pub mod loadgen;
pub mod media_url;
pub mod metrics;
pub mod model;
pub mod ops;
pub mod proto;
pub mod rate_limit;
pub mod redis_conn;
pub mod redis_tier;
pub mod server;
pub mod service;
pub mod store;
pub mod transport;
pub mod validate;
pub mod warming;
pub mod workload;
