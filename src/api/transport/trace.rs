//! The RPC's span, when traces are exported: a server span per request,
//! continuing the caller's trace from W3C `traceparent`/`tracestate`
//! metadata, named by the RPC; every span of the request (engine, database,
//! Redis) is its child, and log lines inside it carry its trace id. With
//! tracing off it costs one relaxed atomic load.

use http::Request;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::around::{Answer, Around, Inner};
use crate::support::telemetry;

#[derive(Clone, Debug, Default)]
pub struct Trace;

impl Around for Trace {
    fn around<S: Inner<B>, B>(&self, request: Request<B>, inner: &mut S) -> Answer<S::Error> {
        if !telemetry::enabled() {
            return Box::pin(inner.call(request));
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
        let response = inner.call(request);
        Box::pin(response.instrument(span))
    }
}
