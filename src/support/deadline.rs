//! The request's deadline, carried with the request's task: the transport
//! sets it (the server's `request_timeout`, or the client's `grpc-timeout`
//! when shorter), the engine stops between layers once it has passed, and
//! database and Redis calls get only the remaining budget.

use std::{future::Future, time::Duration};

use tokio::time::Instant;

use crate::error::AuthzError;

tokio::task_local! {
    static DEADLINE: Instant;
}

/// Runs `work` with `deadline` as its request deadline.
pub async fn scope<F: Future>(deadline: Instant, work: F) -> F::Output {
    DEADLINE.scope(deadline, work).await
}

/// Time left, if the current task carries a deadline.
pub fn remaining() -> Option<Duration> {
    DEADLINE
        .try_with(|d| d.saturating_duration_since(Instant::now()))
        .ok()
}

/// `limit`, or the time left when that is shorter.
pub fn budget(limit: Duration) -> Duration {
    remaining().map_or(limit, |left| left.min(limit))
}

/// Fails once the deadline has passed: an expired request does no more work.
pub fn check() -> Result<(), AuthzError> {
    match remaining() {
        Some(left) if left.is_zero() => Err(expired()),
        _ => Ok(()),
    }
}

pub fn expired() -> AuthzError {
    AuthzError::DeadlineExceeded(
        "the request deadline passed before a decision was reached; retry with a longer \
         grpc-timeout"
            .into(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn budget_is_the_shorter_of_limit_and_time_left() {
        assert_eq!(budget(Duration::from_secs(1)), Duration::from_secs(1));
        assert!(check().is_ok(), "no deadline, no expiry");
        let soon = Instant::now() + Duration::from_millis(50);
        scope(soon, async {
            assert!(budget(Duration::from_secs(1)) <= Duration::from_millis(50));
            assert!(check().is_ok());
            tokio::time::sleep(Duration::from_millis(60)).await;
            assert!(matches!(check(), Err(AuthzError::DeadlineExceeded(_))));
        })
        .await;
    }
}
