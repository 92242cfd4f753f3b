//! Admission by expected wait: work for a pool of `workers` (database
//! connections, hashing threads) is admitted only if it can start within
//! its budget, judged from the measured service time and the work already
//! ahead of it. What cannot start in time is refused at once, with the wait
//! as the time to retry, instead of queueing until its deadline passes.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

/// Weight of the newest service-time sample.
const SMOOTHING: f64 = 0.1;

pub struct ExpectedWait {
    workers: usize,
    /// Admitted and not finished: waiting for a worker or being served.
    in_flight: AtomicUsize,
    /// Smoothed service time in microseconds (an f64's bits).
    service_us: AtomicU64,
    /// Smoothed mean deviation of the service time (microseconds, an
    /// f64's bits), as TCP smooths its round-trip time's variation.
    deviation_us: AtomicU64,
    /// How many deviations are added to each piece ahead when judging a
    /// wait (0: the mean alone).
    spread: f64,
    /// Refusals in the current second (`refusal_second` since `epoch`):
    /// demand that waits outside, which a retry time has to make room for.
    epoch: Instant,
    refusal_second: AtomicU64,
    refusals: AtomicU64,
}

/// Refused: the work would wait about this long before it starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TooLong {
    pub expected_wait: Duration,
    pub ahead: usize,
    /// When to come back: the expected wait plus the time to serve those
    /// refused in the last second, so that refused clients return spread
    /// out instead of all at once.
    pub retry_after: Duration,
}

/// The longest retry time handed out.
const MAX_RETRY: Duration = Duration::from_secs(60);

/// An admitted piece of work; dropping it frees its place.
pub struct Ticket {
    gate: Arc<ExpectedWait>,
    admitted: Instant,
    /// Whether it could start at once (only then is its time a clean
    /// service-time sample).
    unqueued: bool,
}

impl ExpectedWait {
    pub fn new(workers: usize, initial_service: Duration) -> Arc<ExpectedWait> {
        ExpectedWait::with_spread(workers, initial_service, 0.0)
    }

    /// Judges waits by each piece ahead taking its mean service time plus
    /// `deviations` of its measured variation: for work whose time varies
    /// (a hash on a contended core), so that the real wait stays within
    /// the budget and not only the average one.
    pub fn with_spread(
        workers: usize,
        initial_service: Duration,
        deviations: f64,
    ) -> Arc<ExpectedWait> {
        Arc::new(ExpectedWait {
            workers: workers.max(1),
            in_flight: AtomicUsize::new(0),
            service_us: AtomicU64::new((initial_service.as_micros() as f64).to_bits()),
            deviation_us: AtomicU64::new(0f64.to_bits()),
            spread: deviations.max(0.0),
            epoch: Instant::now(),
            refusal_second: AtomicU64::new(0),
            refusals: AtomicU64::new(0),
        })
    }

    pub fn service_time(&self) -> Duration {
        Duration::from_micros(f64::from_bits(self.service_us.load(Ordering::Acquire)) as u64)
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// The measured variation of the service time (smoothed mean deviation).
    pub fn service_deviation(&self) -> Duration {
        Duration::from_micros(f64::from_bits(self.deviation_us.load(Ordering::Acquire)) as u64)
    }

    /// How long new work would wait now.
    pub fn expected_wait(&self) -> Duration {
        self.wait_behind(self.in_flight())
    }

    /// How long new work would wait with `ahead` pieces already admitted.
    fn wait_behind(&self, ahead: usize) -> Duration {
        let queued = (ahead + 1).saturating_sub(self.workers);
        // Each worker serves one piece per service time (padded by its
        // variation when the gate has a spread).
        let each = self.service_time() + self.service_deviation().mul_f64(self.spread);
        each.mul_f64(queued as f64 / self.workers as f64)
    }

    /// Admits the work if it can start within `budget`.
    pub fn admit(self: &Arc<Self>, budget: Duration) -> Result<Ticket, TooLong> {
        let ahead = self.in_flight.fetch_add(1, Ordering::AcqRel);
        let expected_wait = self.wait_behind(ahead);
        if expected_wait > budget {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            let waiting_outside = self.refused();
            let make_room = self
                .service_time()
                .mul_f64(waiting_outside as f64 / self.workers as f64);
            return Err(TooLong {
                expected_wait,
                ahead,
                retry_after: (expected_wait + make_room).min(MAX_RETRY),
            });
        }
        Ok(Ticket {
            gate: self.clone(),
            admitted: Instant::now(),
            unqueued: ahead < self.workers,
        })
    }

    /// Counts a refusal; returns the refusals of the current second.
    fn refused(&self) -> u64 {
        let second = self.epoch.elapsed().as_secs();
        if self.refusal_second.swap(second, Ordering::AcqRel) != second {
            self.refusals.store(0, Ordering::Release);
        }
        self.refusals.fetch_add(1, Ordering::AcqRel) + 1
    }

    fn sample(&self, took: Duration) {
        let previous = f64::from_bits(self.service_us.load(Ordering::Acquire));
        let sample = took.as_micros() as f64;
        let next = previous + SMOOTHING * (sample - previous);
        self.service_us.store(next.to_bits(), Ordering::Release);
        let deviation = f64::from_bits(self.deviation_us.load(Ordering::Acquire));
        let next = deviation + SMOOTHING * ((sample - previous).abs() - deviation);
        self.deviation_us.store(next.to_bits(), Ordering::Release);
    }
}

impl Ticket {
    /// When the work was admitted.
    pub fn admitted_at(&self) -> Instant {
        self.admitted
    }

    /// Whether it was admitted to wait behind other work (rather than
    /// to start at once on a free worker).
    pub fn queued(&self) -> bool {
        !self.unqueued
    }

    /// The work finished normally: its duration refines the service time
    /// when it did not queue.
    pub fn done(self) {
        if self.unqueued {
            self.gate.sample(self.admitted.elapsed());
        }
    }

    /// The work finished after being served for `service` (measured by the
    /// worker itself, so queueing does not count).
    pub fn served(self, service: Duration) {
        self.gate.sample(service);
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.gate.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_while_the_work_ahead_fits_the_budget() {
        let gate = ExpectedWait::new(2, Duration::from_millis(10));
        let budget = Duration::from_millis(25);
        // Two start at once; the next ones queue 5, 10, 15, 20, 25 ms.
        let held: Vec<Ticket> = (0..7)
            .map(|i| gate.admit(budget).unwrap_or_else(|e| panic!("{i}: {e:?}")))
            .collect();
        let refused = gate.admit(budget).err();
        assert_eq!(
            refused,
            Some(TooLong {
                expected_wait: Duration::from_millis(30),
                ahead: 7,
                // 30 ms, and room for the one refused (10 ms over 2 workers).
                retry_after: Duration::from_millis(35),
            })
        );
        let again = gate.admit(budget).err().map(|r| r.retry_after);
        assert_eq!(again, Some(Duration::from_millis(40)), "two refused now");
        assert_eq!(gate.in_flight(), 7, "a refusal holds no place");
        drop(held);
        assert_eq!(gate.in_flight(), 0);
        assert!(gate.admit(budget).is_ok());
    }

    #[test]
    fn service_time_follows_unqueued_work_only() {
        let gate = ExpectedWait::new(1, Duration::from_millis(100));
        let first = gate
            .admit(Duration::from_secs(1))
            .unwrap_or_else(|e| panic!("{e:?}"));
        let queued = gate
            .admit(Duration::from_secs(1))
            .unwrap_or_else(|e| panic!("{e:?}"));
        queued.done();
        assert_eq!(gate.service_time(), Duration::from_millis(100));
        first.done();
        assert!(gate.service_time() < Duration::from_millis(100));
    }

    #[test]
    fn a_spread_pads_each_piece_ahead_by_the_measured_variation() {
        let steady = ExpectedWait::with_spread(1, Duration::from_millis(20), 3.0);
        let varied = ExpectedWait::with_spread(1, Duration::from_millis(20), 3.0);
        for i in 0..50 {
            steady.sample(Duration::from_millis(20));
            // Alternating 10 and 30 ms: the same mean, a deviation of 10.
            varied.sample(Duration::from_millis(if i % 2 == 0 { 10 } else { 30 }));
        }
        let budget = Duration::from_millis(100);
        let admitted = |gate: &Arc<ExpectedWait>| {
            let held: Vec<Ticket> = std::iter::from_fn(|| gate.admit(budget).ok())
                .take(100)
                .collect();
            held.len()
        };
        // Steady: 20 ms each, so the one serving and five waiting fit.
        assert_eq!(admitted(&steady), 6);
        // Varied: judged at about 20 + 3 x 10 = 50 ms each, only two wait.
        let varied_admitted = admitted(&varied);
        assert!(
            (2..=4).contains(&varied_admitted),
            "padded by the deviation: {varied_admitted} admitted (deviation {:?})",
            varied.service_deviation()
        );
        // The mean alone (no spread) admits as many as the steady gate.
        let plain = ExpectedWait::new(1, Duration::from_millis(20));
        for i in 0..50 {
            plain.sample(Duration::from_millis(if i % 2 == 0 { 10 } else { 30 }));
        }
        assert!(admitted(&plain) >= 5);
    }
}
