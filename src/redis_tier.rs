//! The Redis tier: permission sets shared by all replicas, never on the
//! critical path. Every call has a deadline; failures open a circuit
//! breaker that skips Redis until a probe after the cool-off succeeds.
//! Entries carry the revision they were computed at, and each replica
//! checks them against the change log like its own (versioned entries, no
//! deletes needed: a stale entry is simply not used and is overwritten).

use std::{
    sync::{
        Arc,
        atomic::{AtomicU32, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use redis::aio::ConnectionManager;
use tokio::sync::Mutex;

use crate::{
    engine::permissions::PermissionSet, error::AuthzError, metrics::Metrics, model::PermissionKey,
};

/// Consecutive failures that open the breaker.
const TRIP_AFTER: u32 = 3;
/// How long the breaker stays open before one probe goes through.
const COOL_OFF: Duration = Duration::from_secs(2);

/// closed -> open after `TRIP_AFTER` failures -> half-open after `COOL_OFF`
/// (one call tries; success closes, failure reopens).
pub struct Breaker {
    failures: AtomicU32,
    open_until_ms: AtomicU64,
    started: Instant,
}

impl Breaker {
    fn new() -> Breaker {
        Breaker {
            failures: AtomicU32::new(0),
            open_until_ms: AtomicU64::new(0),
            started: Instant::now(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Whether a call may go to Redis now.
    fn allows(&self) -> bool {
        let until = self.open_until_ms.load(Ordering::Acquire);
        if until == 0 {
            return true;
        }
        let now = self.now_ms();
        // Half-open: the first caller after the cool-off probes, the others
        // keep skipping until it reports.
        now >= until
            && self
                .open_until_ms
                .compare_exchange(
                    until,
                    now + COOL_OFF.as_millis() as u64,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .is_ok()
    }

    fn success(&self) {
        self.failures.store(0, Ordering::Release);
        self.open_until_ms.store(0, Ordering::Release);
    }

    fn failure(&self) {
        let failures = self.failures.fetch_add(1, Ordering::AcqRel) + 1;
        if failures >= TRIP_AFTER {
            let until = self.now_ms() + COOL_OFF.as_millis() as u64;
            self.open_until_ms.store(until.max(1), Ordering::Release);
        }
    }

    pub fn is_open(&self) -> bool {
        self.open_until_ms.load(Ordering::Acquire) != 0
    }
}

pub struct RedisTier {
    client: redis::Client,
    connection: Mutex<Option<ConnectionManager>>,
    prefix: String,
    deadline: Duration,
    ttl: Duration,
    breaker: Breaker,
    metrics: Arc<Metrics>,
}

impl RedisTier {
    /// Parses the URL; connects lazily (a Redis that is down at start-up is
    /// skipped like one that goes down later).
    pub fn new(
        url: &str,
        prefix: &str,
        deadline: Duration,
        ttl: Duration,
        metrics: Arc<Metrics>,
    ) -> Result<RedisTier, AuthzError> {
        let client =
            redis::Client::open(url).map_err(|e| AuthzError::invalid(format!("redis_url: {e}")))?;
        Ok(RedisTier {
            client,
            connection: Mutex::new(None),
            prefix: prefix.to_owned(),
            deadline,
            ttl,
            breaker: Breaker::new(),
            metrics,
        })
    }

    fn key(&self, key: &PermissionKey) -> String {
        format!("{}perm:{}", self.prefix, key)
    }

    async fn connection(&self) -> Option<ConnectionManager> {
        let mut slot = self.connection.lock().await;
        if let Some(c) = slot.as_ref() {
            return Some(c.clone());
        }
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.deadline))
            .set_response_timeout(Some(self.deadline))
            .set_number_of_retries(0);
        let made = tokio::time::timeout(
            self.deadline,
            self.client.get_connection_manager_with_config(config),
        )
        .await;
        match made {
            Ok(Ok(c)) => {
                *slot = Some(c.clone());
                Some(c)
            }
            _ => None,
        }
    }

    /// Runs one command within the deadline, through the breaker; `None`
    /// when Redis was skipped or failed (already counted).
    async fn call<T: redis::FromRedisValue>(&self, command: redis::Cmd) -> Option<T> {
        if !self.breaker.allows() {
            self.metrics.record_tier("redis", "skipped");
            return None;
        }
        let outcome = tokio::time::timeout(self.deadline, async {
            let mut connection = self.connection().await?;
            command.query_async::<T>(&mut connection).await.ok()
        })
        .await;
        let value = match outcome {
            Ok(Some(value)) => {
                self.breaker.success();
                Some(value)
            }
            _ => {
                self.breaker.failure();
                self.metrics.record_tier("redis", "error");
                None
            }
        };
        self.metrics
            .redis_breaker_open
            .set(i64::from(self.breaker.is_open()));
        value
    }

    /// The set and its revision, if Redis has them and answers in time.
    pub async fn get(&self, key: &PermissionKey) -> Option<(PermissionSet, i64)> {
        let mut command = redis::cmd("GET");
        command.arg(self.key(key));
        let text: Option<String> = self.call::<Option<String>>(command).await?;
        // An entry this build cannot read counts as a miss, never an answer.
        let decoded = text.as_deref().and_then(|t| {
            let (revision, set) = t.split_once('@')?;
            Some((PermissionSet::decode(set)?, revision.parse().ok()?))
        });
        self.metrics
            .record_tier("redis", if decoded.is_some() { "hit" } else { "miss" });
        decoded
    }

    /// Stores a set in the background; a slow Redis only loses the write.
    pub fn put(self: &Arc<Self>, key: &PermissionKey, set: &PermissionSet, revision: i64) {
        let mut command = redis::cmd("SET");
        command
            .arg(self.key(key))
            .arg(format!("{revision}@{}", set.encode()))
            .arg("PX")
            .arg(self.ttl.as_millis() as u64);
        let tier = self.clone();
        tokio::spawn(async move {
            let _: Option<()> = tier.call(command).await;
        });
    }
}
