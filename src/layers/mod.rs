//! One module per authorization layer. Their order lives in
//! `engine::stack::layer_stack`.

pub mod cache;
pub mod inheritance;
pub mod media_access;
pub mod ownership;
pub mod security_context;
pub mod team;
pub mod visibility;
