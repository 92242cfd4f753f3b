//! The service around the decisions: health, reflection, metrics, draining,
//! and failing closed when the database goes away.

use std::time::Duration;

use tokio_stream::StreamExt;
use tonic::Code;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use tonic_reflection::pb::v1::{
    ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
    server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
};
use velro_authz::{
    proto::{self, Decision},
    support::duration::HumanDuration,
};

use crate::common::{
    Db, TestDb, TestServer,
    fixture::{World, authorize},
    proxy::Proxy,
    settings, world_server,
};

const SERVICE: &str = "velro.authz.v1.AuthorizationService";

async fn health_of(server: &TestServer, service: &str) -> Result<ServingStatus, tonic::Status> {
    let mut health = HealthClient::new(server.channel.clone());
    let r = health
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await?;
    Ok(r.into_inner().status())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reflection_and_metrics() {
    let (_db, w, mut server) = world_server(Db::Postgres, |_| {}).await;

    for service in ["", SERVICE] {
        assert_eq!(
            health_of(&server, service).await.ok(),
            Some(ServingStatus::Serving)
        );
    }
    assert_eq!(server.ops_get("/health").await.0, 200);
    assert_eq!(server.ops_get("/ready").await.0, 200);

    // Reflection lists our service with no proto file at hand.
    let mut reflection = ServerReflectionClient::new(server.channel.clone());
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = reflection
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap_or_else(|e| panic!("reflection: {e}"))
        .into_inner();
    let first = responses
        .next()
        .await
        .unwrap_or_else(|| panic!("no reflection answer"));
    let Some(MessageResponse::ListServicesResponse(list)) =
        first.unwrap_or_else(|e| panic!("{e}")).message_response
    else {
        panic!("unexpected reflection answer");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(names.iter().any(|n| n == SERVICE), "{names:?}");
    assert!(
        names.iter().any(|n| n == "grpc.health.v1.Health"),
        "{names:?}"
    );

    // Counters move with traffic.
    let allow_sample = r#"velro_authz_rpc_requests_total{rpc="Authorize",outcome="allow"}"#;
    let hits = r#"velro_authz_cache_lookups_total{tier="in_process",result="hit"}"#;
    let misses = r#"velro_authz_cache_lookups_total{tier="in_process",result="miss"}"#;
    let (allows0, hits0, misses0) = (
        server.metric(allow_sample).await,
        server.metric(hits).await,
        server.metric(misses).await,
    );
    for _ in 0..5 {
        server
            .client
            .authorize(authorize(w.owner, "read", "project", w.team.project))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
    assert_eq!(server.metric(allow_sample).await - allows0, 5.0);
    assert_eq!(server.metric(misses).await - misses0, 1.0);
    assert_eq!(server.metric(hits).await - hits0, 4.0);
    let (_, text) = server.ops_get("/metrics").await;
    assert!(
        text.contains(r#"velro_authz_rpc_duration_seconds_bucket{le="#),
        "{text}"
    );
    assert!(
        text.contains(r#"velro_authz_decisions_total{decision="allow",decided_by="ownership",reason="OWNER"} 5"#),
        "{text}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_reports_not_serving_then_stops() {
    let db = TestDb::create(Db::Sqlite).await;
    let mut s = settings(&db.url);
    s.drain_delay = HumanDuration(Duration::from_millis(1500));
    let mut server = TestServer::start(s).await;
    let ops = server.ops_addr();
    assert_eq!(
        health_of(&server, SERVICE).await.ok(),
        Some(ServingStatus::Serving)
    );
    let running = server.server.take().unwrap_or_else(|| panic!("running"));
    let stopping = tokio::spawn(running.shutdown());
    let mut seen_not_serving = false;
    for _ in 0..100 {
        if health_of(&server, SERVICE).await.ok() == Some(ServingStatus::NotServing) {
            seen_not_serving = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        seen_not_serving,
        "health must say NOT_SERVING while draining"
    );
    assert_eq!(crate::common::http_get(ops, "/ready").await.0, 503);
    let stopped = tokio::time::timeout(Duration::from_secs(20), stopping).await;
    assert!(matches!(stopped, Ok(Ok(Ok(())))), "{stopped:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_database_fails_closed() {
    let db = TestDb::create(Db::Postgres).await;
    let w = World::new();
    db.store()
        .await
        .insert_dataset(&w.data)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let proxy = Proxy::postgres().await;
    let via_proxy = proxy.route(&db.url);
    assert_ne!(via_proxy, db.url, "the URL goes through the proxy");
    let mut s = settings(&via_proxy);
    s.db_acquire_timeout = HumanDuration(Duration::from_millis(500));
    let mut server = TestServer::start(s).await;

    let cached = authorize(w.owner, "read", "project", w.team.project);
    let r = server
        .client
        .authorize(cached.clone())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.into_inner().decision(), Decision::Allow);

    proxy.cut();
    let mut consistent = cached.clone();
    consistent.consistency = proto::Consistency::FullyConsistent as i32;
    let uncached = authorize(w.admin, "delete", "project", w.private.project);
    for request in [consistent.clone(), uncached.clone()] {
        for _ in 0..3 {
            match server.client.authorize(request.clone()).await {
                Ok(r) => panic!("with the database gone, {request:?} was answered {r:?}"),
                Err(status) => {
                    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
                    assert!(status.message().contains("database"), "{status:?}");
                }
            }
        }
    }
    // An answer already in the in-process tier is still served.
    let r = server
        .client
        .authorize(cached)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        r.get_ref().source(),
        proto::PermissionSource::InProcessCache
    );

    proxy.restore();
    let mut recovered = false;
    for _ in 0..50 {
        if let Ok(r) = server.client.authorize(uncached.clone()).await {
            assert_eq!(r.into_inner().decision(), Decision::Allow);
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        recovered,
        "the service must recover once the database is back"
    );
    server.stop().await;
}
