//! The RPC's span, when traces are exported: a server span per request,
//! continuing the caller's trace from W3C `traceparent`/`tracestate`
//! metadata, named by the RPC; every span of the request (engine, database,
//! Redis) is its child, and log lines inside it carry its trace id. With
//! tracing off it costs one relaxed atomic load.

use std::task::{Context, Poll};

use http::{Request, Response};
use tonic::body::Body;
use tower::{Layer, Service};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::support::{futures::BoxFuture, telemetry};

#[derive(Clone, Default)]
pub struct TraceLayer;

impl<S> Layer<S> for TraceLayer {
    type Service = Traced<S>;

    fn layer(&self, inner: S) -> Traced<S> {
        Traced { inner }
    }
}

#[derive(Clone)]
pub struct Traced<S> {
    inner: S,
}

impl<S, B> Service<Request<B>> for Traced<S>
where
    S: Service<Request<B>, Response = Response<Body>> + Send,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Response<Body>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        if !telemetry::enabled() {
            return Box::pin(self.inner.call(request));
        }
        let path = request.uri().path();
        let (service, method) = path
            .trim_start_matches('/')
            .split_once('/')
            .unwrap_or(("", path));
        let span = tracing::info_span!(
            "rpc",
            otel.name = %path.trim_start_matches('/'),
            otel.kind = "server",
            rpc.system = "grpc",
            rpc.service = %service,
            rpc.method = %method,
            trace_id = tracing::field::Empty,
        );
        let headers = request.headers();
        let parent = telemetry::remote_parent(|key| headers.get(key).and_then(|v| v.to_str().ok()));
        let _ = span.set_parent(parent);
        {
            use opentelemetry::trace::TraceContextExt;
            let context = span.context();
            let ids = context.span().span_context().clone();
            if ids.is_valid() {
                span.record("trace_id", tracing::field::display(ids.trace_id()));
            }
        }
        let response = self.inner.call(request);
        Box::pin(response.instrument(span))
    }
}
