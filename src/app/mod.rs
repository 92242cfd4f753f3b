//! Start-up and wiring: settings, the layer stack's order, building the
//! service once, the listeners, the command line and demo data.

pub mod assemble;
pub mod auth_setup;
pub mod cli;
pub mod commands;
pub mod config;
pub mod demo;
pub mod output;
pub mod reload;
pub mod server;
pub mod stack;
