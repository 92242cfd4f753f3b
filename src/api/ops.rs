//! The ops HTTP port: Prometheus metrics, liveness, readiness and the JWKS.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use axum::{Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};

use crate::{
    audit::AuditLog,
    auth::{Authenticator, keys::KeyRing},
    cache::freshness::Freshness,
    store::pools::Stores,
    support::{breaker::Breaker, metrics::Metrics, saturation::Saturation},
    support::{
        metrics::observed::{ObservedMetrics, PoolLabels, PoolStateLabels},
        telemetry,
    },
};

/// What readiness watches besides start-up and draining: a replica that
/// cannot reach the database serves degraded (cached answers only, within
/// `cache_max_lag`) and says so.
#[derive(Clone)]
pub struct Dependencies {
    pub database: Arc<Breaker>,
    pub freshness: Arc<Freshness>,
    pub saturation: Arc<Saturation>,
    pub stores: Stores,
    pub audit: Arc<AuditLog>,
    pub auth: Arc<Authenticator>,
}

impl Dependencies {
    /// Sets the gauges read at each scrape.
    fn observe(&self, metrics: &Metrics) {
        let observed = &metrics.observed;
        for (pool, store) in self.stores.labelled() {
            let (open, idle) = store.pool_state();
            let state = |state| PoolStateLabels { pool, state };
            observed
                .pool_connections
                .get_or_create(&state("idle"))
                .set(i64::from(idle));
            observed
                .pool_connections
                .get_or_create(&state("in_use"))
                .set(i64::from(open.saturating_sub(idle)));
            observed
                .pool_max
                .get_or_create(&PoolLabels { pool })
                .set(i64::from(store.pool_config().max_connections));
        }
        observed
            .token_cache_entries
            .set(i64::try_from(self.auth.token_cache_entries()).unwrap_or(i64::MAX));
        observed
            .audit_queue
            .set(i64::try_from(self.audit.queued()).unwrap_or(i64::MAX));
        observed
            .change_log_lag_ms
            .set(i64::try_from(self.freshness.lag().as_millis()).unwrap_or(i64::MAX));
        let (dropped, exported) = telemetry::counts();
        ObservedMetrics::sync(&observed.spans_dropped, dropped);
        ObservedMetrics::sync(&observed.spans_exported, exported);
        let lag = self.saturation.lag().as_micros();
        metrics
            .transport
            .runtime_lag_us
            .set(i64::try_from(lag).unwrap_or(i64::MAX));
    }
}

impl Dependencies {
    /// Why the replica is degraded, if it is; also sets the
    /// `velro_authz_degraded` gauge (read at each scrape and probe).
    pub fn degraded(&self, metrics: &Metrics) -> Option<&'static str> {
        let why = if self.database.is_open() {
            Some("the database is unreachable (circuit breaker open)")
        } else if !self.freshness.trusted() {
            Some("the change log has not been read within cache_max_lag")
        } else {
            None
        };
        metrics.ops.degraded.set(i64::from(why.is_some()));
        why
    }
}

/// Whether the service should receive traffic: true once migrations ran and
/// pools are up, false again while draining.
#[derive(Default)]
pub struct Readiness(AtomicBool);

impl Readiness {
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::SeqCst);
    }

    pub fn get(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

#[derive(Clone)]
struct Ops {
    metrics: Arc<Metrics>,
    readiness: Arc<Readiness>,
    dependencies: Dependencies,
    keys: Arc<KeyRing>,
}

/// `keys`: the token keys in force, served as a JSON Web Key Set.
pub fn router(
    metrics: Arc<Metrics>,
    readiness: Arc<Readiness>,
    dependencies: Dependencies,
    keys: Arc<KeyRing>,
) -> Router {
    Router::new()
        .route("/metrics", get(metrics_text))
        .route("/health", get(|| async { "ok\n" }))
        .route("/ready", get(ready))
        .route("/.well-known/jwks.json", get(jwks_json))
        .with_state(Ops {
            metrics,
            readiness,
            dependencies,
            keys,
        })
}

async fn jwks_json(State(ops): State<Ops>) -> impl IntoResponse {
    (
        StatusCode::OK,
        [
            ("content-type", "application/json"),
            ("cache-control", "public, max-age=300"),
        ],
        ops.keys.current().jwks().to_string(),
    )
}

async fn metrics_text(State(ops): State<Ops>) -> impl IntoResponse {
    ops.dependencies.degraded(&ops.metrics);
    ops.dependencies.observe(&ops.metrics);
    match ops.metrics.render() {
        Ok(text) => (
            StatusCode::OK,
            [("content-type", "text/plain; version=0.0.4; charset=utf-8")],
            text,
        )
            .into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot render metrics: {e}\n"),
        )
            .into_response(),
    }
}

async fn ready(State(ops): State<Ops>) -> impl IntoResponse {
    let degraded = ops.dependencies.degraded(&ops.metrics);
    match (ops.readiness.get(), degraded) {
        (false, _) => (StatusCode::SERVICE_UNAVAILABLE, "not ready\n".to_owned()),
        (true, Some(why)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("degraded: {why}; cached answers only\n"),
        ),
        (true, None) => (StatusCode::OK, "ready\n".to_owned()),
    }
}
