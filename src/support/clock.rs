//! Wall-clock time as stored and signed (tokens, audit events, URLs).

/// Unix time in milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Unix time in whole seconds.
pub fn now_unix() -> u64 {
    (now_ms() / 1000).max(0) as u64
}
