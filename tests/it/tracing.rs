//! Traces: one Authorize that arrives with a W3C `traceparent` yields spans
//! of that trace, received by an OTLP collector the test runs: the RPC's
//! span is a child of the caller's, the engine's and the database query's
//! spans are its descendants, with their attributes; the audit event carries
//! the trace id. The server is the binary, as an operator runs it: tracing's
//! subscriber is process-wide, so the other tests of this binary cannot race
//! it.

use std::{collections::HashMap, time::Duration};

use opentelemetry_proto::tonic::trace::v1::Span;
use tonic::Request;
use velro_authz::{audit::AuditFilter, proto::Decision};

use crate::common::{
    Db, TestDb, eventually,
    fixture::{World, authorize},
    otlp::{Collector, hex},
    process::Process,
};

const TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
const PARENT: &str = "b7ad6b7169203331";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_authorize_continues_the_callers_trace() {
    let (collector, endpoint) = Collector::start().await;
    let db = TestDb::create(Db::Postgres).await;
    let w = World::new();
    db.store().await.insert_dataset(&w.data).await.unwrap();
    let mut server = Process::start(
        &db.url,
        &["--otlp-endpoint", &endpoint, "--trace-sampling", "0.0"],
    )
    .await;
    let mut request = Request::new(authorize(w.viewer, "read", "project", w.team.project));
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{TRACE}-{PARENT}-01").parse().unwrap(),
    );
    let answer = server.client.authorize(request).await.unwrap();
    assert_eq!(answer.into_inner().decision(), Decision::Allow);

    let spans = eventually(Duration::from_secs(15), "the request's spans", || async {
        let spans: Vec<Span> = collector
            .spans()
            .into_iter()
            .filter(|s| hex(&s.trace_id) == TRACE)
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
    server.child.kill().await.unwrap();
}
