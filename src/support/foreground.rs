//! Foreground work that background work yields to: logins in progress are
//! counted here. Predictive warming waits until none is before it computes
//! anything, the audit writer before each insert, and the replay of spilled
//! audit events until logins have paused a while, so background work never
//! takes CPU or a connection from a login that is still being answered.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::sync::Notify;

pub struct Foreground {
    active: AtomicUsize,
    idle: Notify,
    epoch: Instant,
    /// When the last piece of work ended (µs since `epoch`).
    last_end_us: AtomicU64,
}

/// One piece of foreground work; dropping it ends it.
pub struct InProgress(Arc<Foreground>);

impl Drop for InProgress {
    fn drop(&mut self) {
        // Never 0: that means "nothing ended yet".
        let now = (self.0.epoch.elapsed().as_micros() as u64).max(1);
        self.0.last_end_us.fetch_max(now, Ordering::AcqRel);
        if self.0.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl Foreground {
    pub fn new() -> Arc<Foreground> {
        Arc::new(Foreground {
            active: AtomicUsize::new(0),
            idle: Notify::new(),
            epoch: Instant::now(),
            last_end_us: AtomicU64::new(0),
        })
    }

    /// Whether foreground work has paused for `settle`: none in progress
    /// and none ended within it. What deferrable work asks, since
    /// back-to-back logins leave gaps of well under a millisecond, which
    /// `idle` would take for a pause.
    pub fn paused_for(&self, settle: Duration) -> bool {
        let last_end = self.last_end_us.load(Ordering::Acquire);
        let since_end = (self.epoch.elapsed().as_micros() as u64).saturating_sub(last_end);
        self.active() == 0 && (last_end == 0 || Duration::from_micros(since_end) >= settle)
    }

    /// Marks foreground work as in progress until the guard is dropped.
    pub fn enter(self: &Arc<Self>) -> InProgress {
        self.active.fetch_add(1, Ordering::AcqRel);
        InProgress(self.clone())
    }

    pub fn active(&self) -> usize {
        self.active.load(Ordering::Acquire)
    }

    /// Waits until no foreground work is in progress; `false` when that
    /// did not happen within `limit` (the caller gives up its work).
    pub async fn idle(&self, limit: Duration) -> bool {
        if self.active() == 0 {
            return true;
        }
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            // Registered before the check, so a wake-up in between is kept.
            notified.as_mut().enable();
            if self.active() == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.active() == 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn idle_waits_for_the_last_piece_of_work() {
        let foreground = Foreground::new();
        assert!(foreground.idle(Duration::ZERO).await);
        let (first, second) = (foreground.enter(), foreground.enter());
        assert!(!foreground.idle(Duration::from_millis(10)).await);
        let waiter = tokio::spawn({
            let foreground = foreground.clone();
            async move { foreground.idle(Duration::from_secs(30)).await }
        });
        drop(first);
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "one piece of work is still going");
        drop(second);
        assert!(waiter.await.unwrap());
        assert_eq!(foreground.active(), 0);
    }

    #[tokio::test]
    async fn a_pause_is_more_than_a_gap() {
        let foreground = Foreground::new();
        let (long, short) = (Duration::from_secs(3_600), Duration::from_millis(20));
        assert!(foreground.paused_for(long), "never busy");
        drop(foreground.enter());
        // The work just ended: idle, but not paused for an hour.
        assert!(foreground.idle(Duration::ZERO).await);
        assert!(!foreground.paused_for(long));
        tokio::time::sleep(short).await;
        assert!(foreground.paused_for(short));
        // Work in progress: never paused, however short the pause asked.
        let _busy = foreground.enter();
        assert!(!foreground.paused_for(Duration::ZERO));
    }
}
