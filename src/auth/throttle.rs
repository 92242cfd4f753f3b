//! Login throttling: after a few free failures, each further failure for an
//! account (or a client IP) doubles the wait before the next attempt is
//! heard, up to a cap. No permanent lockout, so a stranger cannot lock a
//! user out for good; a success clears the account's record.

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

use moka::sync::Cache;

use crate::error::AuthzError;

#[derive(Clone, Copy, Debug)]
pub struct ThrottlePolicy {
    /// Failures allowed before any delay.
    pub free_failures: u32,
    /// The first delay; each further failure doubles it.
    pub base_delay: Duration,
    pub max_delay: Duration,
}

#[derive(Clone, Copy, Debug)]
struct Record {
    failures: u32,
    last: Instant,
}

/// Failure records per key (an account or an IP), bounded and forgotten
/// after an hour without failures.
pub struct Throttle {
    policy: ThrottlePolicy,
    records: Cache<String, Record>,
    /// Serialises read-modify-write of one record (cheap: no I/O inside).
    update: Mutex<()>,
    what: &'static str,
}

impl Throttle {
    pub fn new(policy: ThrottlePolicy, what: &'static str) -> Throttle {
        Throttle {
            policy,
            records: Cache::builder()
                .max_capacity(100_000)
                .time_to_idle(Duration::from_secs(3600))
                .build(),
            update: Mutex::new(()),
            what,
        }
    }

    fn delay(&self, failures: u32) -> Duration {
        let over = failures.saturating_sub(self.policy.free_failures);
        if over == 0 {
            return Duration::ZERO;
        }
        let factor = 2u32.saturating_pow(over.min(20) - 1);
        self.policy
            .base_delay
            .saturating_mul(factor)
            .min(self.policy.max_delay)
    }

    /// RESOURCE_EXHAUSTED while `key` must still wait.
    pub fn check(&self, key: &str) -> Result<(), AuthzError> {
        let Some(record) = self.records.get(key) else {
            return Ok(());
        };
        let wait = self.delay(record.failures);
        let elapsed = record.last.elapsed();
        if elapsed < wait {
            let retry = (wait - elapsed).as_secs_f64().ceil().max(1.0);
            return Err(AuthzError::ResourceExhausted(format!(
                "too many failed logins for this {}; retry in {retry:.0} s",
                self.what
            )));
        }
        Ok(())
    }

    pub fn failed(&self, key: &str) {
        let _guard = self.update.lock();
        let failures = self.records.get(key).map_or(0, |r| r.failures) + 1;
        self.records.insert(
            key.to_owned(),
            Record {
                failures,
                last: Instant::now(),
            },
        );
    }

    pub fn succeeded(&self, key: &str) {
        self.records.invalidate(key);
    }
}
