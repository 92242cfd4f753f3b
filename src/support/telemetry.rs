//! OpenTelemetry traces, off unless `otlp_endpoint` is set: spans of the
//! service's own code (`tracing` spans of this crate) go through
//! `tracing-opentelemetry` to an OTLP/gRPC collector. Export never slows a
//! decision: a finished span is handed to a bounded queue without waiting,
//! one task exports batches, and a span that finds the queue full, or whose
//! batch the collector refuses, is dropped and counted
//! (`velro_authz_trace_spans_dropped_total`).

use std::{
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::Duration,
};

use opentelemetry::{KeyValue, trace::TracerProvider as _};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::{
    Resource,
    error::OTelSdkResult,
    trace::{Sampler, SdkTracerProvider, SpanData, SpanExporter, SpanProcessor},
};
use tokio::sync::mpsc;
use tracing_subscriber::{Layer, filter::Targets};

/// Spans waiting for export, at most.
const QUEUE: usize = 4_096;
/// Spans per export call, at most.
const BATCH: usize = 512;
/// How long a batch may wait before it is sent anyway.
const FLUSH_EVERY: Duration = Duration::from_millis(500);
/// How long one export may take.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(3);

static ENABLED: AtomicBool = AtomicBool::new(false);
static DROPPED: AtomicU64 = AtomicU64::new(0);
static EXPORTED: AtomicU64 = AtomicU64::new(0);

/// Whether spans are exported (so trace ids are worth reading).
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Spans dropped (queue full or refused by the collector) and exported.
pub fn counts() -> (u64, u64) {
    (
        DROPPED.load(Ordering::Relaxed),
        EXPORTED.load(Ordering::Relaxed),
    )
}

/// Where and how much to trace.
#[derive(Clone, Debug)]
pub struct TraceSettings {
    /// An OTLP/gRPC endpoint, e.g. `http://otel-collector:4317`.
    pub endpoint: String,
    /// Share of new traces sampled (a request that arrives with a sampled
    /// parent is always traced, as the caller decided).
    pub sampling: f64,
    pub service_name: String,
    pub instance: String,
}

/// Hands finished spans to the export task without waiting.
#[derive(Debug)]
struct BoundedExport {
    queue: mpsc::Sender<SpanData>,
}

impl SpanProcessor for BoundedExport {
    fn on_start(&self, _span: &mut opentelemetry_sdk::trace::Span, _cx: &opentelemetry::Context) {}

    fn on_end(&self, span: SpanData) {
        if self.queue.try_send(span).is_err() {
            DROPPED.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }
}

/// Exports batches from the queue until every sender is gone.
async fn export(mut queue: mpsc::Receiver<SpanData>, exporter: opentelemetry_otlp::SpanExporter) {
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        let received = tokio::time::timeout(FLUSH_EVERY, queue.recv_many(&mut batch, BATCH)).await;
        if matches!(received, Ok(0)) {
            return;
        }
        if batch.is_empty() {
            continue;
        }
        let spans = std::mem::replace(&mut batch, Vec::with_capacity(BATCH));
        let n = spans.len() as u64;
        match tokio::time::timeout(EXPORT_TIMEOUT, exporter.export(spans)).await {
            Ok(Ok(())) => drop(EXPORTED.fetch_add(n, Ordering::Relaxed)),
            _ => drop(DROPPED.fetch_add(n, Ordering::Relaxed)),
        }
    }
}

/// The tracer provider and the `tracing` layer that feeds it (spans of this
/// crate, at debug level and above). Must run inside a tokio runtime.
pub fn layer<S>(
    settings: &TraceSettings,
) -> Result<(SdkTracerProvider, impl Layer<S> + Send + Sync), String>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a> + Send + Sync,
{
    let resource = Resource::builder()
        .with_service_name(settings.service_name.clone())
        .with_attributes([
            KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
            KeyValue::new("service.instance.id", settings.instance.clone()),
        ])
        .build();
    let mut exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(settings.endpoint.clone())
        .with_timeout(EXPORT_TIMEOUT)
        .build()
        .map_err(|e| format!("otlp_endpoint {}: {e}", settings.endpoint))?;
    exporter.set_resource(&resource);
    let (queue, receiver) = mpsc::channel(QUEUE);
    tokio::spawn(export(receiver, exporter));
    let sampler = Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
        settings.sampling.clamp(0.0, 1.0),
    )));
    let provider = SdkTracerProvider::builder()
        .with_span_processor(BoundedExport { queue })
        .with_sampler(sampler)
        .with_resource(resource)
        .build();
    let tracer = provider.tracer("velro-authz");
    ENABLED.store(true, Ordering::Relaxed);
    let own_spans = Targets::new().with_target("velro_authz", tracing::Level::DEBUG);
    let layer = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_filter(own_spans);
    Ok((provider, layer))
}

/// Reads W3C `traceparent`/`tracestate` from a header map (gRPC metadata,
/// or the HTTP headers inside an Envoy check).
pub struct Headers<'a, F: Fn(&str) -> Option<&'a str>>(pub F);

impl<'a, F: Fn(&str) -> Option<&'a str>> opentelemetry::propagation::Extractor for Headers<'a, F> {
    fn get(&self, key: &str) -> Option<&str> {
        (self.0)(key)
    }

    fn keys(&self) -> Vec<&str> {
        vec!["traceparent", "tracestate"]
    }
}

/// The remote parent a request names, if any.
pub fn remote_parent<'a>(get: impl Fn(&str) -> Option<&'a str>) -> opentelemetry::Context {
    use opentelemetry::propagation::TextMapPropagator;
    opentelemetry_sdk::propagation::TraceContextPropagator::new().extract(&Headers(get))
}

/// The trace id of the current span, when spans are exported.
pub fn current_trace_id() -> Option<String> {
    use opentelemetry::trace::TraceContextExt;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    if !enabled() {
        return None;
    }
    let context = tracing::Span::current().context();
    let span = context.span();
    let ids = span.span_context();
    ids.is_valid().then(|| ids.trace_id().to_string())
}
