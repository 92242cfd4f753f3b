//! One module per authorization layer. Their order lives in
//! `engine::stack::layer_stack`.

pub mod audit;
pub mod cache;
pub mod emergency;
pub mod inheritance;
pub mod media_access;
pub mod ownership;
pub mod rate_limit;
pub mod security_context;
pub mod team;
pub mod visibility;
