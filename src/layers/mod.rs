//! One module per authorization layer. Their order lives in
//! `engine::stack::layer_stack`.

pub mod cache;
pub mod ownership;
pub mod team;
pub mod visibility;
