//! velro-authz: Velro's policy decision point.
//!
//! Levels, top to bottom; a level imports only levels below it:
//!
//! * `app`: start-up and wiring (settings, the layer stack's order, the
//!   server, CLI commands, demo data);
//! * `api`: the wire faces (gRPC handlers, ext_authz, the ops port, input
//!   validation, the transport guard, the one error-status table);
//! * `layers` and `cache`: the ten authorization layers with their
//!   machinery, and the permission-set tiers with their freshness;
//! * `engine`: the decision loop, the `Layer` trait, permission sets;
//! * `store`, `auth`, `audit`: the database, authentication, the audit log;
//! * `support`, `model`, `error`, `proto`: plumbing, domain types, the one
//!   error type and the generated wire types.
//!
//! `loadgen` is the load generator's library (a client of the wire API).

pub mod api;
pub mod app;
pub mod audit;
pub mod auth;
pub mod cache;
pub mod engine;
pub mod error;
pub mod layers;
pub mod loadgen;
pub mod model;
pub mod proto;
pub mod store;
pub mod support;
