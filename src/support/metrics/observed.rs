//! What an operator watches besides requests and decisions: the database
//! pool, Redis calls, the verified-token cache, the audit queue, the change
//! log's lag, trace export and the build. Gauges are set at each scrape.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

/// A pool (the kind of work it serves: `decisions`, `audit`, …).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabels {
    pub pool: &'static str,
}

/// A pool and a state of its connections: `idle` or `in_use`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolStateLabels {
    pub pool: &'static str,
    pub state: &'static str,
}

/// A Redis call: its purpose and how it ended (`ok`, `failed`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RedisLabels {
    pub dependency: &'static str,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    pub version: &'static str,
}

fn seconds() -> Histogram {
    // 50 µs .. ~3.3 s
    Histogram::new(exponential_buckets(0.000_05, 2.0, 17))
}

pub struct ObservedMetrics {
    pub pool_connections: Family<PoolStateLabels, Gauge>,
    pub pool_max: Family<PoolLabels, Gauge>,
    /// Time a decision's query waited for a pooled connection.
    pub pool_acquire: Histogram,
    pub redis_calls: Family<RedisLabels, Histogram, fn() -> Histogram>,
    pub token_cache_entries: Gauge,
    pub token_cache_hits: Counter,
    pub token_cache_misses: Counter,
    pub audit_queue: Gauge,
    /// Milliseconds since the change log was last read.
    pub change_log_lag_ms: Gauge,
    pub spans_dropped: Counter,
    pub spans_exported: Counter,
    pub build: Family<BuildLabels, Gauge>,
    /// The newest revision the read replica was seen to have applied (-1:
    /// unreachable; absent without a replica).
    pub replica_revision: Gauge,
}

impl Default for ObservedMetrics {
    fn default() -> Self {
        let metrics = ObservedMetrics {
            pool_connections: Family::default(),
            pool_max: Family::default(),
            pool_acquire: seconds(),
            redis_calls: Family::new_with_constructor(seconds as fn() -> Histogram),
            token_cache_entries: Gauge::default(),
            token_cache_hits: Counter::default(),
            token_cache_misses: Counter::default(),
            audit_queue: Gauge::default(),
            change_log_lag_ms: Gauge::default(),
            spans_dropped: Counter::default(),
            spans_exported: Counter::default(),
            build: Family::default(),
            replica_revision: Gauge::default(),
        };
        metrics
            .build
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        metrics
    }
}

impl ObservedMetrics {
    pub(super) fn register(&self, registry: &mut Registry) {
        registry.register(
            "db_pool_connections",
            "Pooled database connections by pool (decisions, follower, audit, auth, \
             admin, replica) and state (idle, in_use)",
            self.pool_connections.clone(),
        );
        registry.register(
            "db_pool_max_connections",
            "Each database pool's size limit",
            self.pool_max.clone(),
        );
        registry.register(
            "db_pool_acquire_seconds",
            "Time a decision's query waited for a pooled connection",
            self.pool_acquire.clone(),
        );
        registry.register(
            "db_replica_revision",
            "The change-log revision the read replica was last seen at (-1: unreachable)",
            self.replica_revision.clone(),
        );
        registry.register(
            "redis_call_seconds",
            "Redis calls by purpose (redis_cache, redis_rate_limit) and outcome",
            self.redis_calls.clone(),
        );
        registry.register(
            "token_cache_entries",
            "Verified access tokens held in memory",
            self.token_cache_entries.clone(),
        );
        registry.register(
            "token_cache_hits",
            "Bearer tokens answered from the verified-token cache",
            self.token_cache_hits.clone(),
        );
        registry.register(
            "token_cache_misses",
            "Bearer tokens verified afresh",
            self.token_cache_misses.clone(),
        );
        registry.register(
            "audit_queue_depth",
            "Audit events queued for the writer",
            self.audit_queue.clone(),
        );
        registry.register(
            "change_log_lag_milliseconds",
            "Time since this replica last read the change log",
            self.change_log_lag_ms.clone(),
        );
        registry.register(
            "trace_spans_dropped",
            "Trace spans dropped (export queue full, or refused by the collector)",
            self.spans_dropped.clone(),
        );
        registry.register(
            "trace_spans_exported",
            "Trace spans sent to the collector",
            self.spans_exported.clone(),
        );
        registry.register(
            "build_info",
            "1, labelled with the running version",
            self.build.clone(),
        );
    }

    /// Brings a counter kept elsewhere up to `total`.
    pub fn sync(counter: &Counter, total: u64) {
        counter.inc_by(total.saturating_sub(counter.get()));
    }
}
