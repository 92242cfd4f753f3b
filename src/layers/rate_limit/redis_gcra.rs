//! The distributed limiter: GCRA (the algorithm `governor` runs in process)
//! as one atomic Lua script, so every replica draws from one quota. Time is
//! Redis's own clock, so replicas with skewed clocks still agree.

use std::time::Duration;

use redis::Script;

use crate::support::redis_conn::{Miss, RedisConn};

/// KEYS[1]: the principal's key. ARGV: emission interval (µs), burst.
/// Returns 0 when allowed, else the microseconds until a cell frees up.
const GCRA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local next_tat = tat + interval
local allowed_at = next_tat - interval * burst
if allowed_at > now then
  return allowed_at - now
end
redis.call('SET', KEYS[1], next_tat, 'PX', math.ceil((next_tat - now) / 1000) + 1)
return 0
";

/// Takes one cell: `Ok(None)` allowed, `Ok(Some(wait))` refused.
pub async fn take(
    redis: &RedisConn,
    key: String,
    (interval_us, burst): (u64, u32),
) -> Result<Option<Duration>, Miss> {
    let wait_us: u64 = redis
        .call(|mut c| async move {
            Script::new(GCRA)
                .key(key)
                .arg(interval_us)
                .arg(burst)
                .invoke_async(&mut c)
                .await
        })
        .await?;
    Ok((wait_us > 0).then(|| Duration::from_micros(wait_us)))
}
