//! Foreground work that background work yields to: logins in progress are
//! counted here, and predictive warming waits until none is before it
//! computes anything, so a warm-up never takes CPU or a connection from a
//! login that is still being answered.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::sync::Notify;

#[derive(Default)]
pub struct Foreground {
    active: AtomicUsize,
    idle: Notify,
}

/// One piece of foreground work; dropping it ends it.
pub struct InProgress(Arc<Foreground>);

impl Drop for InProgress {
    fn drop(&mut self) {
        if self.0.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl Foreground {
    pub fn new() -> Arc<Foreground> {
        Arc::new(Foreground::default())
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
}
