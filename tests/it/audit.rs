//! Layer 8: every decision (batch items and early denials included) is one
//! audit row, also when the queue overflows or the database is cut for a
//! while; bursts of denials raise alerts; events can be queried.

use std::time::Duration;

use futures::future::join_all;
use tonic::Request;
use uuid::Uuid;
use velro_authz::{
    audit::{AuditEvent, AuditFilter},
    proto::{self, Decision},
    support::duration::HumanDuration,
};

use crate::common::{
    Db, TestDb, eventually,
    fixture::{authorize, item},
    proxy::Proxy,
    world_server,
};
use crate::on_both_databases;

/// Every event stored (any kind), once (within 10 s) at least `expected`
/// of them are decisions.
async fn stored(db: &TestDb, expected: usize) -> Vec<AuditEvent> {
    let store = db.store().await;
    let what = format!("{expected} decision rows");
    let events = eventually(Duration::from_secs(10), &what, || async {
        let filter = AuditFilter {
            limit: 100_000,
            ..AuditFilter::default()
        };
        let events = store.audit_events(&filter).await.unwrap();
        match decisions(&events).len() {
            n if n >= expected => Ok(events),
            n => Err(format!("{n} rows")),
        }
    })
    .await;
    store.close().await;
    events
}

fn decisions(events: &[AuditEvent]) -> Vec<&AuditEvent> {
    events.iter().filter(|e| e.kind == "decision").collect()
}

async fn every_decision(kind: Db) {
    let dir = tempfile::tempdir().unwrap();
    let lines = dir.path().join("audit.jsonl");
    let path = lines.display().to_string();
    let (db, w, server) = world_server(kind, |s| {
        s.audit.json_lines = Some(path);
        s.admin_token = Some("audit-admin".into());
        s.security_context.user_agent_deny = vec!["(?i)sqlmap".into()];
    })
    .await;
    let session = Uuid::new_v4().to_string();
    let mut ids = Vec::new();
    for user in [w.viewer, w.editor, w.admin, w.owner, w.creator] {
        let mut request = authorize(user, "read", "project", w.team.project);
        request.context = Some(proto::RequestContext {
            ip: "192.0.2.7".into(),
            user_agent: "app/1".into(),
            request_id: format!("req-{user}"),
            ..Default::default()
        });
        let r = server.decide(request).await;
        assert_eq!(r.decision(), Decision::Allow);
        ids.push(r.decision_id);
    }
    // Denials, one by an early layer (security context).
    for action in ["write", "delete", "share"] {
        let r = server
            .decide(authorize(w.viewer, action, "project", w.team.project))
            .await;
        assert_eq!(r.decision(), Decision::Deny);
        ids.push(r.decision_id);
    }
    let mut scanner = authorize(w.viewer, "read", "project", w.team.project);
    scanner.context = Some(proto::RequestContext {
        user_agent: "sqlmap/1.7".into(),
        session_id: session.clone(),
        ..Default::default()
    });
    let r = server.decide(scanner).await;
    assert_eq!(r.decided_by, "security_context");
    ids.push(r.decision_id);
    // A batch: every valid item is one event; the invalid one is no decision.
    let mut items: Vec<_> = (0..5)
        .map(|_| item(w.outsider, "read", "project", w.public.project))
        .collect();
    items.push(proto::BatchItem {
        action: "read".into(),
        ..Default::default()
    });
    let results = server.batch(items).await;
    for result in &results[..5] {
        match &result.outcome {
            Some(proto::batch_result::Outcome::Response(r)) => ids.push(r.decision_id.clone()),
            other => panic!("{other:?}"),
        }
    }
    let events = stored(&db, ids.len()).await;
    let rows = decisions(&events);
    assert_eq!(rows.len(), ids.len(), "one row per decision: {rows:#?}");
    let mut stored_ids: Vec<String> = rows.iter().map(|e| e.id.to_string()).collect();
    stored_ids.sort();
    let mut sent = ids.clone();
    sent.sort();
    assert_eq!(
        stored_ids, sent,
        "the rows are the decisions, by decision id"
    );

    let first = rows.iter().find(|e| e.id.to_string() == ids[0]).unwrap();
    assert_eq!(first.subject, w.viewer.to_string());
    assert_eq!(
        (first.action.as_ref(), first.resource_type.as_ref()),
        ("read", "project")
    );
    assert_eq!(first.resource_id, w.team.project.to_string());
    assert_eq!(
        (first.decision.as_ref(), first.layer.as_ref()),
        ("allow", "team")
    );
    assert_eq!(first.reason, "TEAM_ROLE");
    assert_eq!(first.request_id, format!("req-{}", w.viewer));
    assert_eq!(first.client_ip, "192.0.2.7");
    assert!(["computed", "in_process"].contains(&first.cache_tier.as_ref()));
    assert!(first.latency_us >= 0 && first.at_ms > 0);
    let early = rows.iter().find(|e| e.id.to_string() == ids[8]).unwrap();
    assert_eq!(
        (
            early.decision.as_ref(),
            early.layer.as_ref(),
            early.reason.as_ref()
        ),
        ("deny", "security_context", "USER_AGENT_DENIED")
    );
    assert_eq!(early.session_id, session);
    assert_eq!(early.cache_tier, "none", "decided before any lookup");

    // The same events as JSON lines for a SIEM.
    let text = std::fs::read_to_string(&lines).unwrap();
    let logged: Vec<AuditEvent> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|e: &AuditEvent| e.kind == "decision")
        .collect();
    assert_eq!(logged.len(), ids.len());

    // And through the admin RPC, newest first.
    let mut request = Request::new(proto::QueryAuditRequest {
        target: Some(proto::query_audit_request::Target::Resource(
            proto::Resource {
                r#type: "project".into(),
                id: w.public.project.to_string(),
            },
        )),
        limit: 3,
        ..Default::default()
    });
    request
        .metadata_mut()
        .insert("x-velro-admin-token", "audit-admin".parse().unwrap());
    let found = server
        .client
        .clone()
        .query_audit(request)
        .await
        .unwrap()
        .into_inner()
        .events;
    assert_eq!(found.len(), 3, "the limit holds");
    assert!(found.windows(2).all(|p| p[0].at_ms >= p[1].at_ms));
    assert!(found.iter().all(|e| e.subject == w.outsider.to_string()));
    server.stop().await;
}
on_both_databases!(every_decision_becomes_one_audit_row, every_decision);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_spills_and_nothing_is_lost() {
    let (db, w, server) = world_server(Db::Sqlite, |s| {
        s.audit.queue = 1;
        s.audit.batch = 1;
        s.audit.replay_every = HumanDuration(Duration::from_millis(100));
    })
    .await;
    let answers = join_all(
        (0..200).map(|_| server.decide(authorize(w.viewer, "read", "project", w.team.project))),
    )
    .await;
    let spilled = server
        .metric("velro_authz_audit_events_spilled_total")
        .await;
    assert!(spilled >= 1.0, "the queue of 1 overflowed");
    let events = stored(&db, answers.len()).await;
    let rows = decisions(&events);
    assert_eq!(rows.len(), 200, "{spilled} spilled, all written once");
    server
        .metric_reaches("velro_authz_audit_events_replayed_total", 1.0)
        .await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_of_a_database_outage_are_replayed_once() {
    let proxy = Proxy::postgres().await;
    let (db, w, server) = world_server(Db::Postgres, |s| {
        s.database_url = proxy.route(&s.database_url);
        s.db_acquire_timeout = HumanDuration(Duration::from_millis(300));
        s.cache_max_lag = HumanDuration(Duration::from_secs(60));
        s.audit.replay_every = HumanDuration(Duration::from_millis(200));
    })
    .await;
    let requests: Vec<_> = [w.viewer, w.editor, w.admin]
        .iter()
        .map(|u| authorize(*u, "read", "project", w.team.project))
        .collect();
    let mut made = 0;
    for request in &requests {
        server.decide(request.clone()).await;
        made += 1;
    }
    assert_eq!(decisions(&stored(&db, made).await).len(), made);

    proxy.cut();
    // Cached answers keep coming; their events cannot reach the database.
    for _ in 0..20 {
        for request in &requests {
            assert_eq!(
                server.decide(request.clone()).await.decision(),
                Decision::Allow
            );
            made += 1;
        }
    }
    server
        .metric_reaches("velro_authz_audit_events_spilled_total", 60.0)
        .await;
    proxy.restore();
    let events = stored(&db, made).await;
    let rows = decisions(&events);
    assert_eq!(rows.len(), made, "every event, exactly once");
    let mut ids: Vec<_> = rows.iter().map(|e| e.id).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), made);
    server
        .metric_reaches("velro_authz_audit_events_replayed_total", 60.0)
        .await;
    assert_eq!(
        server.metric("velro_authz_audit_events_lost_total").await,
        0.0
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_denials_raises_alerts() {
    let (db, w, server) = world_server(Db::Sqlite, |s| {
        s.audit.burst_denials = 5;
        s.audit.burst_window = HumanDuration(Duration::from_secs(60));
    })
    .await;
    for _ in 0..7 {
        let r = server
            .decide(authorize(w.outsider, "read", "project", w.private.project))
            .await;
        assert_eq!(r.decision(), Decision::Deny);
    }
    // Four denials of someone else: below the threshold for them.
    for _ in 0..4 {
        server
            .decide(authorize(w.viewer, "delete", "project", w.team.project))
            .await;
    }
    let alerts = eventually(Duration::from_secs(5), "two alerts", || async {
        let events = stored(&db, 11).await;
        let alerts: Vec<AuditEvent> = events.into_iter().filter(|e| e.kind == "alert").collect();
        match alerts.len() {
            n if n >= 2 => Ok(alerts),
            n => Err(format!("{n} alerts")),
        }
    })
    .await;
    let mut reasons: Vec<&str> = alerts.iter().map(|a| a.reason.as_ref()).collect();
    reasons.sort();
    assert_eq!(reasons, ["DENIAL_BURST_PRINCIPAL", "DENIAL_BURST_RESOURCE"]);
    assert!(alerts.iter().any(|a| a.subject == w.outsider.to_string()));
    assert!(
        alerts
            .iter()
            .any(|a| a.subject == format!("project:{}", w.private.project))
    );
    for kind in ["denial_burst_principal", "denial_burst_resource"] {
        let sample = format!("velro_authz_security_alerts_total{{kind=\"{kind}\"}}");
        assert_eq!(server.metric(&sample).await, 1.0, "{kind}: once per window");
    }
    server.stop().await;
}

/// Batches of every awkward length (below, at and past the insert's chunk,
/// SQLite's padded shapes included) are written once each, counted exactly;
/// the same events again write nothing.
async fn every_batch_length_is_written_once(kind: Db) {
    let db = TestDb::create(kind).await;
    let store = db.store().await;
    let mut total = 0;
    for len in [1, 3, 255, 256, 257, 511, 512, 513, 1300] {
        let events: Vec<AuditEvent> = (0..len)
            .map(|i| crate::common::fixture::audit_event("lengths", &format!("{len}-{i}")))
            .collect();
        assert_eq!(
            store.insert_audit(&events).await.unwrap(),
            len as u64,
            "a batch of {len}"
        );
        assert_eq!(
            store.insert_audit(&events).await.unwrap(),
            0,
            "the batch of {len} again"
        );
        total += len;
    }
    assert_eq!(
        db.number("SELECT COUNT(*) FROM audit_log").await,
        total as i64
    );
    assert_eq!(
        db.number("SELECT COUNT(DISTINCT request_id) FROM audit_log")
            .await,
        total as i64,
        "every event is its own row"
    );
    store.close().await;
}
on_both_databases!(
    every_batch_length_written_once,
    every_batch_length_is_written_once
);
