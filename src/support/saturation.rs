//! Is this replica's runtime starved? A probe task asks to wake every
//! `TICK` and records how late it woke. Lateness is time a ready task spent
//! waiting for a worker thread: our own queue, not any dependency's.
//!
//! Two readers: admission sheds new requests while the runtime lags beyond
//! its bound (overload is answered at once instead of queued), and the
//! circuit breakers do not blame a dependency for a timeout that ran while
//! the runtime was starved (a busy replica is not a down database).

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

/// How often the probe asks to wake.
const TICK: Duration = Duration::from_millis(5);
/// Weight of the newest sample in the smoothed lag (per tick).
const SMOOTHING: f64 = 0.2;
/// Lateness is remembered as the worst per span of this length...
const SPAN_US: u64 = 50_000;
/// ...for this many spans (3.2 s).
const SPANS: usize = 64;

pub struct Saturation {
    started: Instant,
    /// Microseconds since `started` of the probe's last wake-up.
    last_tick_us: AtomicU64,
    /// Per span slot: which span it holds, and its worst lateness (µs).
    span_ids: [AtomicU64; SPANS],
    span_worst_us: [AtomicU64; SPANS],
    /// Smoothed lateness in microseconds (an f64's bits).
    lag_us: AtomicU64,
}

impl Saturation {
    /// Starts the probe on the current runtime; it stops when the last
    /// handle is dropped.
    pub fn start() -> Arc<Saturation> {
        let saturation = Arc::new(Saturation {
            started: Instant::now(),
            last_tick_us: AtomicU64::new(0),
            span_ids: std::array::from_fn(|_| AtomicU64::new(u64::MAX)),
            span_worst_us: std::array::from_fn(|_| AtomicU64::new(0)),
            lag_us: AtomicU64::new(0f64.to_bits()),
        });
        let weak = Arc::downgrade(&saturation);
        tokio::spawn(async move {
            let mut expected = Instant::now() + TICK;
            loop {
                tokio::time::sleep_until(expected.into()).await;
                let Some(saturation) = weak.upgrade() else {
                    return;
                };
                let now = Instant::now();
                saturation.record(now, now.saturating_duration_since(expected));
                expected = now + TICK;
            }
        });
        saturation
    }

    fn micros(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.started).as_micros() as u64
    }

    /// Only the probe task records, so plain loads and stores suffice.
    fn record(&self, now: Instant, late: Duration) {
        let now_us = self.micros(now);
        self.last_tick_us.store(now_us, Ordering::Release);
        let late_us = late.as_micros() as u64;
        let span = now_us / SPAN_US;
        let slot = (span % SPANS as u64) as usize;
        if self.span_ids[slot].load(Ordering::Acquire) != span {
            self.span_worst_us[slot].store(late_us, Ordering::Release);
            self.span_ids[slot].store(span, Ordering::Release);
        } else if late_us > self.span_worst_us[slot].load(Ordering::Acquire) {
            self.span_worst_us[slot].store(late_us, Ordering::Release);
        }
        let previous = f64::from_bits(self.lag_us.load(Ordering::Acquire));
        let sample = late.as_micros() as f64;
        let smoothed = previous + SMOOTHING * (sample - previous);
        self.lag_us.store(smoothed.to_bits(), Ordering::Release);
    }

    /// The runtime's smoothed scheduling lag; also counts a probe that has
    /// not run for longer than that (it is itself waiting for a thread).
    pub fn lag(&self) -> Duration {
        let smoothed =
            Duration::from_micros(f64::from_bits(self.lag_us.load(Ordering::Acquire)) as u64);
        let since_tick = Duration::from_micros(
            self.micros(Instant::now())
                .saturating_sub(self.last_tick_us.load(Ordering::Acquire)),
        )
        .saturating_sub(TICK);
        smoothed.max(since_tick)
    }

    /// Whether a ready task waited at least `by` for a thread at some point
    /// since `since` (or does now): a timeout of about twice that in this
    /// time went to our own queue, not to the dependency.
    pub fn starved_since(&self, since: Instant, by: Duration) -> bool {
        let by_us = by.as_micros() as u64;
        let (first, last) = (
            self.micros(since) / SPAN_US,
            self.micros(Instant::now()) / SPAN_US,
        );
        let recorded = (0..SPANS).any(|slot| {
            let span = self.span_ids[slot].load(Ordering::Acquire);
            (first..=last).contains(&span)
                && self.span_worst_us[slot].load(Ordering::Acquire) >= by_us
        });
        recorded || self.lag() >= by
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn a_blocked_runtime_shows_as_starved() {
        let saturation = Saturation::start();
        tokio::time::sleep(Duration::from_millis(30)).await;
        let before = Instant::now();
        // Keep the only worker thread busy: the probe cannot run.
        std::thread::sleep(Duration::from_millis(60));
        let by = Duration::from_millis(40);
        assert!(saturation.lag() >= by, "lag {:?}", saturation.lag());
        tokio::time::sleep(Duration::from_millis(15)).await;
        assert!(
            saturation.starved_since(before, by),
            "the late wake-up is remembered"
        );
        assert!(
            !saturation.starved_since(before, Duration::from_secs(1)),
            "but not as later than it was"
        );
    }
}
