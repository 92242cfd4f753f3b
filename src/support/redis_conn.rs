//! One Redis connection for one purpose (the cache tier, the distributed
//! rate limiter), never on the critical path for longer than its deadline:
//! connected lazily, every call bounded, failures counted by a circuit
//! breaker that skips Redis until a probe succeeds.

use std::{future::Future, sync::Arc, time::Duration};

use redis::{RedisResult, aio::ConnectionManager};
use tokio::sync::Mutex;
use tracing::Instrument;

use crate::{
    error::AuthzError,
    support::{breaker::Breaker, metrics::Metrics, saturation::Saturation},
};

/// How long a breaker stays open before one probe goes through.
const COOL_OFF: Duration = Duration::from_secs(2);

/// Where Redis is: a `redis://` or `rediss://` (TLS) URL, and the CA that
/// signed the server's certificate when it is not in the system's trust.
#[derive(Clone, Debug)]
pub struct RedisEndpoint {
    pub url: String,
    pub ca_pem: Option<Vec<u8>>,
}

impl RedisEndpoint {
    fn client(&self) -> Result<redis::Client, AuthzError> {
        let bad = |e: redis::RedisError| {
            AuthzError::invalid(format!(
                "redis_url {}: {e}",
                crate::support::secrets::redact_url(&self.url)
            ))
        };
        match &self.ca_pem {
            None => redis::Client::open(self.url.as_str()).map_err(bad),
            Some(ca) => redis::Client::build_with_tls(
                self.url.as_str(),
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(ca.clone()),
                },
            )
            .map_err(bad),
        }
    }
}

/// Why a call gave no answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Miss {
    /// The breaker is open: Redis was not asked.
    Skipped,
    /// Redis failed or did not answer within the deadline.
    Failed,
}

/// What went wrong inside the deadline.
enum Failure {
    NoConnection,
    /// Redis answered with an error, or the connection broke.
    Answered,
}

pub struct RedisConn {
    client: redis::Client,
    connection: Mutex<Option<ConnectionManager>>,
    deadline: Duration,
    pub breaker: Breaker,
    saturation: Arc<Saturation>,
    metrics: Arc<Metrics>,
}

impl RedisConn {
    /// Parses the URL; connects on first use (a Redis that is down at
    /// start-up is skipped like one that goes down later).
    pub fn new(
        endpoint: &RedisEndpoint,
        deadline: Duration,
        dependency: &'static str,
        metrics: Arc<Metrics>,
        saturation: Arc<Saturation>,
    ) -> Result<RedisConn, AuthzError> {
        let client = endpoint.client()?;
        Ok(RedisConn {
            client,
            connection: Mutex::new(None),
            deadline,
            breaker: Breaker::new(dependency, COOL_OFF, metrics.clone()),
            saturation,
            metrics,
        })
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

    /// Runs `call` within the deadline (or the request's remaining budget,
    /// whichever is shorter), through the breaker.
    pub async fn call<T, F, Fut>(&self, call: F) -> Result<T, Miss>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        if !self.breaker.allows() {
            return Err(Miss::Skipped);
        }
        let budget = crate::support::deadline::budget(self.deadline);
        let started = std::time::Instant::now();
        let span = tracing::debug_span!(
            "redis",
            otel.kind = "client",
            dependency = self.breaker.dependency()
        );
        let outcome = tokio::time::timeout(
            budget,
            async {
                let connection = self.connection().await.ok_or(Failure::NoConnection)?;
                call(connection).await.map_err(|_| Failure::Answered)
            }
            .instrument(span),
        )
        .await;
        let took = started.elapsed().as_secs_f64();
        let labels = |outcome| crate::support::metrics::observed::RedisLabels {
            dependency: self.breaker.dependency(),
            outcome,
        };
        let ok = matches!(outcome, Ok(Ok(_)));
        self.metrics
            .observed
            .redis_calls
            .get_or_create(&labels(if ok { "ok" } else { "failed" }))
            .observe(took);
        match outcome {
            Ok(Ok(value)) => {
                self.breaker.success();
                Ok(value)
            }
            // Cut short by the request's own deadline: not Redis's fault.
            Err(_) if budget < self.deadline => Err(Miss::Failed),
            // Out of time while this replica's runtime was starved: the
            // time went to our own queue, not to Redis.
            Err(_) if self.saturation.starved_since(started, budget / 2) => Err(Miss::Failed),
            _ => {
                self.breaker.failure();
                Err(Miss::Failed)
            }
        }
    }
}
