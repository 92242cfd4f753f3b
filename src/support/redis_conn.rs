//! One Redis connection for one purpose (the cache tier, the distributed
//! rate limiter), never on the critical path for longer than its deadline:
//! connected lazily, every call bounded, failures counted by a circuit
//! breaker that skips Redis until a probe succeeds. One server or a Redis
//! Cluster: the callers see one connection either way (`Link`).

use std::{future::Future, sync::Arc, time::Duration};

use redis::{
    Cmd, Pipeline, RedisFuture, RedisResult, Value,
    aio::{ConnectionLike, ConnectionManager},
    cluster::ClusterClient,
    cluster_async::ClusterConnection,
};
use tokio::sync::Mutex;
use tracing::Instrument;

use crate::{
    error::AuthzError,
    support::{breaker::Breaker, metrics::Metrics, saturation::Saturation},
};

/// How long a breaker stays open before one probe goes through.
const COOL_OFF: Duration = Duration::from_secs(2);

/// Where Redis is: one server, or the seed nodes of a Redis Cluster
/// (`redis://` or `rediss://` URLs), and the CA that signed the servers'
/// certificates when it is not in the system's trust.
#[derive(Clone, Debug)]
pub struct RedisEndpoint {
    pub nodes: RedisNodes,
    pub ca_pem: Option<Vec<u8>>,
}

#[derive(Clone, Debug)]
pub enum RedisNodes {
    Single(String),
    /// Seed nodes: the client learns the rest of the cluster from them and
    /// follows its MOVED and ASK redirections.
    Cluster(Vec<String>),
}

/// A client for either kind of deployment, built once (its size does not
/// matter: one per connection purpose).
#[allow(clippy::large_enum_variant)]
enum Client {
    Single(redis::Client),
    Cluster(ClusterClient),
}

impl RedisEndpoint {
    fn client(&self, deadline: Duration) -> Result<Client, AuthzError> {
        let certificates = |ca: &Vec<u8>| redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(ca.clone()),
        };
        match &self.nodes {
            RedisNodes::Single(url) => {
                let bad = |e: redis::RedisError| {
                    AuthzError::invalid(format!(
                        "redis_url {}: {e}",
                        crate::support::secrets::redact_url(url)
                    ))
                };
                let client = match &self.ca_pem {
                    None => redis::Client::open(url.as_str()),
                    Some(ca) => redis::Client::build_with_tls(url.as_str(), certificates(ca)),
                };
                client.map(Client::Single).map_err(bad)
            }
            RedisNodes::Cluster(urls) => {
                let mut builder = ClusterClient::builder(urls.iter().map(String::as_str))
                    // One retry (a MOVED or ASK costs one); the deadline
                    // bounds the rest.
                    .retries(1)
                    .min_retry_wait(5)
                    .max_retry_wait(50)
                    .connection_timeout(deadline)
                    .response_timeout(deadline);
                if let Some(ca) = &self.ca_pem {
                    builder = builder.certs(certificates(ca));
                }
                builder.build().map(Client::Cluster).map_err(|e| {
                    let shown: Vec<String> = urls
                        .iter()
                        .map(|u| crate::support::secrets::redact_url(u))
                        .collect();
                    AuthzError::invalid(format!("redis_cluster_urls {}: {e}", shown.join(",")))
                })
            }
        }
    }
}

/// A live connection to one server or to a cluster; cheap to clone (both
/// multiplex one socket per node).
#[derive(Clone)]
pub enum Link {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Link {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Link::Single(c) => c.req_packed_command(cmd),
            Link::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Link::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Link::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Link::Single(c) => c.get_db(),
            Link::Cluster(c) => c.get_db(),
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
    client: Client,
    connection: Mutex<Option<Link>>,
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
        let client = endpoint.client(deadline)?;
        Ok(RedisConn {
            client,
            connection: Mutex::new(None),
            deadline,
            breaker: Breaker::new(dependency, COOL_OFF, metrics.clone()),
            saturation,
            metrics,
        })
    }

    async fn connection(&self) -> Option<Link> {
        let mut slot = self.connection.lock().await;
        if let Some(c) = slot.as_ref() {
            return Some(c.clone());
        }
        let made = tokio::time::timeout(self.deadline, self.connect()).await;
        match made {
            Ok(Ok(c)) => {
                *slot = Some(c.clone());
                Some(c)
            }
            _ => None,
        }
    }

    async fn connect(&self) -> RedisResult<Link> {
        match &self.client {
            Client::Single(client) => {
                let config = redis::aio::ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(self.deadline))
                    .set_response_timeout(Some(self.deadline))
                    .set_number_of_retries(0);
                let manager = client.get_connection_manager_with_config(config).await?;
                Ok(Link::Single(manager))
            }
            // The cluster connection reconnects to a node that comes back
            // and refreshes its slot map on MOVED by itself.
            Client::Cluster(client) => Ok(Link::Cluster(client.get_async_connection().await?)),
        }
    }

    /// Runs `call` within the deadline (or the request's remaining budget,
    /// whichever is shorter), through the breaker.
    pub async fn call<T, F, Fut>(&self, call: F) -> Result<T, Miss>
    where
        F: FnOnce(Link) -> Fut,
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
