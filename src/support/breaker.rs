//! A circuit breaker per dependency (the database, Redis for the cache
//! tier, Redis for the rate limiter): closed -> open after `TRIP_AFTER`
//! failures in a row -> half-open after the cool-off (one call probes;
//! success closes, failure reopens). Its state is a metric:
//! `velro_authz_breaker_state{dependency}` 0 closed, 1 open, 2 half-open.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU32, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use crate::support::metrics::Metrics;

/// Consecutive failures that open a breaker.
const TRIP_AFTER: u32 = 3;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

pub struct Breaker {
    dependency: &'static str,
    cool_off: Duration,
    failures: AtomicU32,
    /// Milliseconds since `started` until which calls are refused; 0 when
    /// closed.
    open_until_ms: AtomicU64,
    started: Instant,
    metrics: Arc<Metrics>,
}

impl Breaker {
    pub fn new(dependency: &'static str, cool_off: Duration, metrics: Arc<Metrics>) -> Breaker {
        metrics.record_breaker(dependency, 0);
        Breaker {
            dependency,
            cool_off,
            failures: AtomicU32::new(0),
            open_until_ms: AtomicU64::new(0),
            started: Instant::now(),
            metrics,
        }
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Whether a call may go through now. Half-open: the first caller after
    /// the cool-off probes, the others keep being refused until it reports.
    pub fn allows(&self) -> bool {
        let until = self.open_until_ms.load(Ordering::Acquire);
        if until == 0 {
            return true;
        }
        let now = self.now_ms();
        let probe = now >= until
            && self
                .open_until_ms
                .compare_exchange(
                    until,
                    now + self.cool_off.as_millis() as u64,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .is_ok();
        if probe {
            self.metrics.record_breaker(self.dependency, 2);
        }
        probe
    }

    pub fn success(&self) {
        self.failures.store(0, Ordering::Release);
        if self.open_until_ms.swap(0, Ordering::AcqRel) != 0 {
            tracing::info!(dependency = self.dependency, "circuit breaker closed");
            self.metrics.record_breaker(self.dependency, 0);
        }
    }

    pub fn failure(&self) {
        let failures = self.failures.fetch_add(1, Ordering::AcqRel) + 1;
        if failures >= TRIP_AFTER {
            let until = (self.now_ms() + self.cool_off.as_millis() as u64).max(1);
            if self.open_until_ms.swap(until, Ordering::AcqRel) == 0 {
                tracing::warn!(dependency = self.dependency, "circuit breaker opened");
            }
            self.metrics.record_breaker(self.dependency, 1);
        }
    }

    pub fn state(&self) -> BreakerState {
        let until = self.open_until_ms.load(Ordering::Acquire);
        match until {
            0 => BreakerState::Closed,
            _ if self.now_ms() >= until => BreakerState::HalfOpen,
            _ => BreakerState::Open,
        }
    }

    pub fn dependency(&self) -> &'static str {
        self.dependency
    }

    pub fn is_open(&self) -> bool {
        self.state() != BreakerState::Closed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_failures_probes_after_cool_off_and_closes_on_success() {
        let b = Breaker::new("test", Duration::from_millis(30), Arc::new(Metrics::new()));
        assert!(b.allows());
        b.failure();
        b.failure();
        assert_eq!(
            b.state(),
            BreakerState::Closed,
            "two failures are not a trend"
        );
        b.failure();
        assert_eq!(b.state(), BreakerState::Open);
        assert!(!b.allows());
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert!(b.allows(), "one probe");
        assert!(!b.allows(), "only one");
        b.failure();
        assert_eq!(b.state(), BreakerState::Open, "a failed probe reopens");
        std::thread::sleep(Duration::from_millis(40));
        assert!(b.allows());
        b.success();
        assert_eq!(b.state(), BreakerState::Closed);
        assert!(b.allows());
    }
}
