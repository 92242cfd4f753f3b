//! The ops HTTP port: Prometheus metrics, liveness, readiness and the JWKS.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use axum::{Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};

use crate::metrics::Metrics;

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
    jwks: Arc<serde_json::Value>,
}

/// `jwks` is the JSON Web Key Set of the token signing keys (fixed at start-up).
pub fn router(
    metrics: Arc<Metrics>,
    readiness: Arc<Readiness>,
    jwks: Arc<serde_json::Value>,
) -> Router {
    Router::new()
        .route("/metrics", get(metrics_text))
        .route("/health", get(|| async { "ok\n" }))
        .route("/ready", get(ready))
        .route("/.well-known/jwks.json", get(jwks_json))
        .with_state(Ops {
            metrics,
            readiness,
            jwks,
        })
}

async fn jwks_json(State(ops): State<Ops>) -> impl IntoResponse {
    (
        StatusCode::OK,
        [
            ("content-type", "application/json"),
            ("cache-control", "public, max-age=300"),
        ],
        ops.jwks.to_string(),
    )
}

async fn metrics_text(State(ops): State<Ops>) -> impl IntoResponse {
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
    if ops.readiness.get() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}
