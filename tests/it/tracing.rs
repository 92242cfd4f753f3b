//! Traces: one Authorize that arrives with a W3C `traceparent` yields spans
//! of that trace, received by an OTLP collector the test runs: the RPC's
//! span is a child of the caller's, the engine's and the database query's
//! spans are its descendants, with their attributes; the audit event carries
//! the trace id.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    trace::v1::Span,
};
use tonic::{Request, Response, Status};
use tracing_subscriber::{Registry, layer::SubscriberExt};
use velro_authz::{
    audit::AuditFilter,
    proto::Decision,
    support::telemetry::{self, TraceSettings},
};

use crate::common::{Db, eventually, fixture::authorize, world_server};

#[derive(Clone, Default)]
struct Collector(Arc<Mutex<Vec<Span>>>);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let mut spans = self.0.lock().unwrap();
        for resource in request.into_inner().resource_spans {
            for scope in resource.scope_spans {
                spans.extend(scope.spans);
            }
        }
        Ok(Response::new(ExportTraceServiceResponse::default()))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

const TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
const PARENT: &str = "b7ad6b7169203331";

// One thread: the subscriber that exports is this thread's default, and the
// server's tasks run on it.
#[tokio::test(flavor = "current_thread")]
async fn an_authorize_continues_the_callers_trace() {
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(collector.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let settings = TraceSettings {
        endpoint: format!("http://{addr}"),
        sampling: 1.0,
        service_name: "velro-authz".into(),
        instance: "test".into(),
    };
    let (_provider, layer) = telemetry::layer::<Registry>(&settings).unwrap();
    let _subscriber = tracing::subscriber::set_default(Registry::default().with(layer));

    let (db, w, server) = world_server(Db::Postgres, |_| {}).await;
    let mut request = Request::new(authorize(w.viewer, "read", "project", w.team.project));
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{TRACE}-{PARENT}-01").parse().unwrap(),
    );
    let answer = server.client.clone().authorize(request).await.unwrap();
    assert_eq!(answer.into_inner().decision(), Decision::Allow);

    let spans = eventually(Duration::from_secs(15), "the request's spans", || async {
        let spans: Vec<Span> = collector
            .0
            .lock()
            .unwrap()
            .iter()
            .filter(|s| hex(&s.trace_id) == TRACE)
            .cloned()
            .collect();
        let names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
        match ["decide", "db.permission_facts"]
            .iter()
            .all(|n| names.contains(n))
            && names.iter().any(|n| n.ends_with("/Authorize"))
        {
            true => Ok(spans),
            false => Err(format!("{names:?}")),
        }
    })
    .await;
    let by_id: HashMap<String, &Span> = spans.iter().map(|s| (hex(&s.span_id), s)).collect();
    let rpc = spans
        .iter()
        .find(|s| s.name.ends_with("/Authorize"))
        .unwrap();
    assert_eq!(
        hex(&rpc.parent_span_id),
        PARENT,
        "the caller's span is the parent"
    );
    let attribute = |span: &Span, key: &str| {
        span.attributes
            .iter()
            .find(|a| a.key == key)
            .and_then(|a| a.value.as_ref())
            .map(|v| format!("{v:?}"))
    };
    assert!(attribute(rpc, "rpc.system").is_some_and(|v| v.contains("grpc")));
    assert!(attribute(rpc, "rpc.method").is_some_and(|v| v.contains("Authorize")));
    // Each span hangs under the RPC's.
    let under_rpc = |span: &Span| {
        let mut parent = hex(&span.parent_span_id);
        for _ in 0..10 {
            if parent == hex(&rpc.span_id) {
                return true;
            }
            match by_id.get(&parent) {
                Some(p) => parent = hex(&p.parent_span_id),
                None => return false,
            }
        }
        false
    };
    for name in ["decide", "db.permission_facts"] {
        let span = spans.iter().find(|s| s.name == name).unwrap();
        assert!(under_rpc(span), "{name} is a descendant of the RPC span");
    }
    let facts = spans
        .iter()
        .find(|s| s.name == "db.permission_facts")
        .unwrap();
    assert!(attribute(facts, "resource").is_some(), "{facts:?}");
    // The audit event names the trace.
    let store = db.store().await;
    eventually(
        Duration::from_secs(10),
        "the traced audit event",
        || async {
            let events = store
                .audit_events(&AuditFilter {
                    subject: Some(w.viewer.to_string()),
                    limit: 10,
                    ..AuditFilter::default()
                })
                .await
                .unwrap();
            match events.iter().any(|e| e.trace_id == TRACE) {
                true => Ok(()),
                false => Err(format!(
                    "{:?}",
                    events.iter().map(|e| &e.trace_id).collect::<Vec<_>>()
                )),
            }
        },
    )
    .await;
    server.stop().await;
}
