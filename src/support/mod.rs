//! Plumbing every level may use and that uses nothing above it: circuit
//! breakers, request deadlines, metrics, the Redis connection, the clock,
//! durations as written in settings, percent-decoding and boxed futures.

pub mod admission;
pub mod breaker;
pub mod clock;
pub mod deadline;
pub mod duration;
pub mod foreground;
pub mod futures;
pub mod metrics;
pub mod percent;
pub mod redis_conn;
pub mod saturation;
pub mod secrets;
pub mod telemetry;
