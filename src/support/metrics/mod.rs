//! The service's Prometheus metrics. Each server instance owns its registry,
//! so several servers in one process (tests) do not mix their counts.

pub mod observed;
pub mod transport;

use std::time::Duration;

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::gauge::Gauge,
    metrics::{
        counter::Counter,
        family::Family,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RpcLabels {
    pub rpc: &'static str,
    /// `allow`, `deny`, `ok` (batches) or the gRPC code name of an error.
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    pub decision: &'static str,
    pub decided_by: &'static str,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CacheLabels {
    pub tier: &'static str,
    pub result: &'static str,
}

/// A security alert (`kind`) or a flag raised on an allowed request (`kind`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: &'static str,
}

/// A dependency behind a circuit breaker (`database`, `redis_cache`,
/// `redis_rate_limit`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DependencyLabels {
    pub dependency: &'static str,
}

/// A rate-limit refusal: the principal's tier and which limiter refused.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimitLabels {
    pub tier: String,
    pub limiter: &'static str,
}

/// A guard's denial that was not enforced (shadow or outside the rollout).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ShadowLabels {
    pub layer: &'static str,
    pub reason: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 25 µs .. ~6.5 s
    Histogram::new(exponential_buckets(0.000_025, 2.0, 19))
}

pub struct Metrics {
    registry: Registry,
    pub rpc_requests: Family<RpcLabels, Counter>,
    pub rpc_latency: HistogramFamily<RpcLabels>,
    pub decisions: Family<DecisionLabels, Counter>,
    pub cache_lookups: Family<CacheLabels, Counter>,
    /// One per database round trip that computes a permission set.
    pub permission_computations: Counter,
    /// Change-log entries applied to the cache's freshness map.
    pub invalidations: Counter,
    /// Newest change-log revision read, and the one applied without gaps:
    /// their difference is the revision lag.
    pub seen_revision: Gauge,
    pub applied_revision: Gauge,
    /// Security alerts by kind (data-integrity faults, threats).
    pub security_alerts: Family<KindLabels, Counter>,
    /// Flags raised on requests that were let through (`allow and flag`).
    pub flags: Family<KindLabels, Counter>,
    /// Layers 8-10: audit pipeline, breakers, limits, kill switches.
    pub ops: OpsMetrics,
    /// Connections, admission, shedding.
    pub transport: transport::TransportMetrics,
    /// Pools, Redis, token cache, audit queue, change log, traces, build.
    pub observed: observed::ObservedMetrics,
}

/// The operational layers' metrics (audit, emergency, rate limiting).
#[derive(Default)]
pub struct OpsMetrics {
    pub audit_written: Counter,
    /// Events the JetStream stream stored (duplicates of a retry not counted).
    pub audit_published: Counter,
    pub audit_spilled: Counter,
    pub audit_replayed: Counter,
    pub audit_lost: Counter,
    /// Events the database refused for their content (or unreadable spill
    /// lines), kept in the dead-letter file.
    pub audit_dead_lettered: Counter,
    pub breaker_state: Family<DependencyLabels, Gauge>,
    pub rate_limited: Family<LimitLabels, Counter>,
    /// Rate-limit checks answered in process because Redis was skipped or failed.
    pub rate_limit_fallbacks: Counter,
    pub kill_switches_active: Gauge,
    /// Would-be denials of guards in shadow mode or outside their rollout.
    pub shadow_denials: Family<ShadowLabels, Counter>,
    /// 1 while the replica serves degraded (database unreachable).
    pub degraded: Gauge,
}

impl OpsMetrics {
    fn register(&self, registry: &mut Registry) {
        let counters = [
            (
                "audit_events_written",
                "Audit events written to the audit_log table (to the JetStream stream when it is \
                 the only sink)",
                &self.audit_written,
            ),
            (
                "audit_events_published",
                "Audit events stored by the JetStream stream (a retried duplicate not counted)",
                &self.audit_published,
            ),
            (
                "audit_events_spilled",
                "Audit events written to the local spill file (queue full or database down)",
                &self.audit_spilled,
            ),
            (
                "audit_events_replayed",
                "Spilled audit events later written to the database",
                &self.audit_replayed,
            ),
            (
                "audit_events_dead_lettered",
                "Audit events the database refused for their content (or unreadable spill lines), \
                 kept in the dead-letter file beside the spill file",
                &self.audit_dead_lettered,
            ),
            (
                "audit_events_lost",
                "Audit events that could be written nowhere (also logged as errors)",
                &self.audit_lost,
            ),
            (
                "rate_limit_fallbacks",
                "Rate-limit checks answered in process because Redis was skipped or failed",
                &self.rate_limit_fallbacks,
            ),
        ];
        for (name, help, counter) in counters {
            registry.register(name, help, counter.clone());
        }
        registry.register(
            "shadow_denials",
            "Denials a guard would have made but did not enforce (shadow mode or outside \
             its rollout share), by layer and reason",
            self.shadow_denials.clone(),
        );
        registry.register(
            "breaker_state",
            "Circuit breaker state by dependency: 0 closed, 1 open, 2 half-open",
            self.breaker_state.clone(),
        );
        registry.register(
            "rate_limited",
            "Requests refused by a rate limit, by tier and limiter (in_process, redis, tightened)",
            self.rate_limited.clone(),
        );
        registry.register(
            "kill_switches_active",
            "Kill switches in force on this replica",
            self.kill_switches_active.clone(),
        );
        registry.register(
            "degraded",
            "1 while the replica serves degraded: the database is unreachable",
            self.degraded.clone(),
        );
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("velro_authz");
        let rpc_requests = Family::<RpcLabels, Counter>::default();
        let rpc_latency = HistogramFamily::<RpcLabels>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        let decisions = Family::<DecisionLabels, Counter>::default();
        let cache_lookups = Family::<CacheLabels, Counter>::default();
        let permission_computations = Counter::default();
        registry.register(
            "rpc_requests",
            "gRPC requests by RPC and outcome",
            rpc_requests.clone(),
        );
        registry.register(
            "rpc_duration_seconds",
            "gRPC request latency by RPC and outcome",
            rpc_latency.clone(),
        );
        registry.register(
            "decisions",
            "Decisions (batch items count one each) by decision, deciding layer and reason",
            decisions.clone(),
        );
        registry.register(
            "cache_lookups",
            "Permission-set cache lookups by tier and result (hit or miss)",
            cache_lookups.clone(),
        );
        registry.register(
            "permission_computations",
            "Permission sets computed from the database (one round trip each)",
            permission_computations.clone(),
        );
        let (seen_revision, applied_revision) = (Gauge::default(), Gauge::default());
        registry.register(
            "change_log_seen_revision",
            "Newest change-log revision this replica has read",
            seen_revision.clone(),
        );
        registry.register(
            "change_log_applied_revision",
            "Change-log revision applied without gaps (cached sets are stamped with it)",
            applied_revision.clone(),
        );
        let invalidations = Counter::default();
        registry.register(
            "invalidations",
            "Change-log entries (writes to relationship tables) applied by this replica",
            invalidations.clone(),
        );
        let (security_alerts, flags) = (
            Family::<KindLabels, Counter>::default(),
            Family::<KindLabels, Counter>::default(),
        );
        registry.register(
            "security_alerts",
            "Security alerts by kind (e.g. generation_chain_cycle)",
            security_alerts.clone(),
        );
        registry.register(
            "request_flags",
            "Flags raised on requests a policy let through (e.g. session_network_changed)",
            flags.clone(),
        );
        let ops = OpsMetrics::default();
        ops.register(&mut registry);
        let transport = transport::TransportMetrics::default();
        transport.register(&mut registry);
        transport.known();
        let observed = observed::ObservedMetrics::default();
        observed.register(&mut registry);
        Metrics {
            observed,
            ops,
            transport,
            security_alerts,
            flags,
            seen_revision,
            applied_revision,
            invalidations,
            registry,
            rpc_requests,
            rpc_latency,
            decisions,
            cache_lookups,
            permission_computations,
        }
    }

    pub fn record_rpc(&self, rpc: &'static str, outcome: &'static str, elapsed: Duration) {
        let labels = RpcLabels { rpc, outcome };
        self.rpc_requests.get_or_create(&labels).inc();
        self.rpc_latency
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64());
    }

    pub fn record_decision(&self, allow: bool, decided_by: &'static str, reason: &'static str) {
        let decision = if allow { "allow" } else { "deny" };
        self.decisions
            .get_or_create(&DecisionLabels {
                decision,
                decided_by,
                reason,
            })
            .inc();
    }

    pub fn record_security_alert(&self, kind: &'static str) {
        self.security_alerts
            .get_or_create(&KindLabels { kind })
            .inc();
    }

    /// 0 closed, 1 open, 2 half-open.
    pub fn record_breaker(&self, dependency: &'static str, state: i64) {
        self.ops
            .breaker_state
            .get_or_create(&DependencyLabels { dependency })
            .set(state);
    }

    pub fn record_flag(&self, kind: &'static str) {
        self.flags.get_or_create(&KindLabels { kind }).inc();
    }

    /// One lookup in a tier: `hit`, `miss`, `error` (deadline or failure) or
    /// `skipped` (breaker open).
    pub fn record_tier(&self, tier: &'static str, result: &'static str) {
        self.cache_lookups
            .get_or_create(&CacheLabels { tier, result })
            .inc();
    }

    pub fn record_cache_lookup(&self, tier: &'static str, hit: bool) {
        let result = if hit { "hit" } else { "miss" };
        self.cache_lookups
            .get_or_create(&CacheLabels { tier, result })
            .inc();
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        encode(&mut out, &self.registry)?;
        Ok(out)
    }
}
