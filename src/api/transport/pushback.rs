//! Pushback for clients that retry before the time they were given.
//!
//! A shed login is refused at once with a time to retry (RetryInfo). A
//! client that honours it, or a new one, is always answered at once. A
//! client that comes back on the same connection before that time (ghz, a
//! retry loop without backoff) is still judged at once, and served if there
//! is room; only its refusal is held until the time it was given (at most
//! `password_max_wait`, never past its deadline). Without this, 64 such
//! clients turned each refusal straight into the next request: about
//! 10,000 refusals a second, every one decoded, audited and written on the
//! same cores as the decisions, and Authorize answered half as many
//! requests with a p99 half again as long as while the same logins queued.

use std::{sync::Mutex, time::Duration};

use prometheus_client::metrics::counter::Counter;
use tokio::{sync::Semaphore, time::Instant};

use crate::{error::AuthzError, support::deadline};

/// Refusals held at once on this replica; beyond it, answered at once.
const MAX_HELD: usize = 1_024;

/// What a connection was last told: from when, until when to wait.
#[derive(Clone, Copy)]
struct Window {
    given: Instant,
    until: Instant,
}

/// The retry time last given on one connection.
#[derive(Default)]
pub struct GivenRetry(Mutex<Option<Window>>);

impl GivenRetry {
    /// The end of the window `arrived` fell in: a request sent after a
    /// refusal was answered and before its retry time.
    fn early_until(&self, arrived: Instant) -> Option<Instant> {
        let window = (*self.0.lock().ok()?)?;
        (window.given <= arrived && arrived < window.until).then_some(window.until)
    }

    /// Records a refusal answered at `given` with `retry_after` (a window
    /// that ends later is kept).
    fn give(&self, given: Instant, retry_after: Duration) {
        let until = given + retry_after;
        if let Ok(mut window) = self.0.lock()
            && window.is_none_or(|w| w.until < until)
        {
            *window = Some(Window { given, until });
        }
    }
}

/// Holds refusals answered to early retries (see the module's doc).
pub struct Pushback {
    held: Semaphore,
    /// Also the longest window recorded, so the longest hold.
    max_hold: Duration,
    counted: Counter,
}

impl Pushback {
    pub fn new(max_hold: Duration, counted: Counter) -> Self {
        Pushback {
            held: Semaphore::new(MAX_HELD),
            max_hold,
            counted,
        }
    }

    /// Passes `result` on; a refusal with a time to retry (a shed login)
    /// is recorded on `conn`, and held first if the request that got it
    /// arrived early.
    pub async fn answer<T>(
        &self,
        conn: Option<&GivenRetry>,
        arrived: Instant,
        result: Result<T, AuthzError>,
    ) -> Result<T, AuthzError> {
        let (Some(conn), Err(AuthzError::Overloaded { retry_after, .. })) = (conn, &result) else {
            return result;
        };
        let hold = conn.early_until(arrived).map_or(Duration::ZERO, |until| {
            // A tenth of the time left is kept, so that the answer is this
            // refusal and not DEADLINE_EXCEEDED.
            let left = deadline::remaining().map_or(self.max_hold, |d| d.mul_f64(0.9));
            until.saturating_duration_since(Instant::now()).min(left)
        });
        let permit = match hold.is_zero() {
            true => None,
            false => self.held.try_acquire().ok(),
        };
        if permit.is_some() {
            self.counted.inc();
            tokio::time::sleep(hold).await;
        }
        conn.give(Instant::now(), (*retry_after).min(self.max_hold));
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused() -> Result<(), AuthzError> {
        Err(AuthzError::Overloaded {
            message: "busy".into(),
            retry_after: Duration::from_millis(100),
        })
    }

    #[tokio::test(start_paused = true)]
    async fn only_a_refusal_to_an_early_retry_is_held_and_never_past_the_time_given() {
        let pushback = Pushback::new(Duration::from_millis(60), Counter::default());
        let conn = GivenRetry::default();
        // The first refusal on a connection: at once.
        let t0 = Instant::now();
        let _ = pushback.answer(Some(&conn), t0, refused()).await;
        assert_eq!(pushback.counted.get(), 0);
        // A request sent after it and before its time (60 ms, the cap):
        // served at once when admitted, its refusal held until then.
        tokio::time::advance(Duration::from_millis(10)).await;
        let early = Instant::now();
        assert!(pushback.answer(Some(&conn), early, Ok(())).await.is_ok());
        assert_eq!(pushback.counted.get(), 0);
        let _ = pushback.answer(Some(&conn), early, refused()).await;
        assert_eq!(pushback.counted.get(), 1);
        let waited = Instant::now() - t0;
        assert!(
            waited >= Duration::from_millis(59) && waited <= Duration::from_millis(61),
            "{waited:?}"
        );
        // One sent when its time had come: at once.
        tokio::time::advance(Duration::from_millis(70)).await;
        let on_time = Instant::now();
        let _ = pushback.answer(Some(&conn), on_time, refused()).await;
        assert_eq!(pushback.counted.get(), 1);
        assert_eq!(Instant::now(), on_time);
        // One sent before the last refusal was answered (concurrent, not a
        // retry): at once.
        let _ = pushback
            .answer(Some(&conn), on_time - Duration::from_millis(1), refused())
            .await;
        assert_eq!(pushback.counted.get(), 1);
    }
}
