//! The audit writer's sustained rate into SQLite (the embedded default),
//! PostgreSQL and NATS JetStream alone: events are queued as fast as the
//! caller can, and the time runs until the last one is a row (or an
//! acknowledged message). Needs the PostgreSQL of `VELRO_TEST_POSTGRES_URL`
//! (default the local one; a database of its own is created and dropped)
//! and `nats-server` (a private one is started on a free port).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{sync::Arc, time::Duration};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sqlx::Connection;
use uuid::Uuid;
use velro_authz::{
    audit::{AuditConfig, AuditEvent, AuditLog, jetstream::JetStreamConfig},
    store::{self, PoolConfig},
    support::clock::now_ms,
    support::foreground::Foreground,
    support::metrics::Metrics,
};

fn event(subject: &str, resource: &str) -> AuditEvent {
    AuditEvent {
        id: Uuid::now_v7(),
        at_ms: now_ms(),
        kind: "decision".into(),
        subject: subject.to_owned(),
        action: "read".into(),
        resource_type: "project".into(),
        resource_id: resource.to_owned(),
        decision: "allow".into(),
        layer: "team".into(),
        reason: "TEAM_ROLE".into(),
        message: format!("{subject} may read project:{resource}: granted by the team layer"),
        cache_tier: "in_process".into(),
        latency_us: 3,
        request_id: "req-1".into(),
        client_ip: "192.0.2.7".into(),
        ..AuditEvent::default()
    }
}

/// An audit log over `url` (or, with `jetstream`, over the stream alone),
/// its queue large enough never to overflow here.
async fn start_log(
    url: &str,
    (spill, jetstream): (std::path::PathBuf, Option<JetStreamConfig>),
    metrics: Arc<Metrics>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Arc<AuditLog> {
    let pool = PoolConfig {
        max_connections: 4,
        min_connections: 0,
        acquire_timeout: Duration::from_secs(5),
    };
    let store = store::connect(url, &pool)
        .await
        .unwrap_or_else(|e| panic!("database at {url}: {e}"));
    store.migrate().await.unwrap();
    let config = AuditConfig {
        queue: 2_000_000,
        spill_path: spill,
        database: jetstream.is_none(),
        jetstream,
        ..AuditConfig::default()
    };
    AuditLog::start(&config, store, (metrics, Foreground::new()), stop)
        .await
        .unwrap()
        .0
}

/// Times `iters` events from the queue to rows.
fn bench_writer(
    c: &mut Criterion,
    runtime: &tokio::runtime::Runtime,
    name: &str,
    log: &Arc<AuditLog>,
    metrics: &Arc<Metrics>,
) {
    let (subject, resource) = (Uuid::new_v4().to_string(), Uuid::new_v4().to_string());
    let mut group = c.benchmark_group("audit");
    group.throughput(Throughput::Elements(1));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(20));
    group.bench_function(name, |b| {
        b.to_async(runtime).iter_custom(|iters| {
            let (log, metrics) = (log.clone(), metrics.clone());
            let (subject, resource) = (subject.clone(), resource.clone());
            async move {
                let target = metrics.ops.audit_written.get() + iters;
                let started = std::time::Instant::now();
                for _ in 0..iters {
                    log.record(event(&subject, &resource));
                }
                while metrics.ops.audit_written.get() < target {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                started.elapsed()
            }
        })
    });
    group.finish();
    assert_eq!(
        metrics.ops.audit_spilled.get(),
        0,
        "the queue never overflowed"
    );
}

fn audit_writer_bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (_stop, stop_rx) = tokio::sync::watch::channel(false);

    // The embedded default: a SQLite file of its own.
    let metrics = Arc::new(Metrics::new());
    let url = format!("sqlite://{}", dir.path().join("audit.db").display());
    let log = runtime.block_on(start_log(
        &url,
        (dir.path().join("sqlite.spill"), None),
        metrics.clone(),
        stop_rx.clone(),
    ));
    bench_writer(c, &runtime, "writer_into_sqlite", &log, &metrics);

    // Production: a PostgreSQL database of its own, created and dropped.
    let admin = std::env::var("VELRO_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let name = format!("velro_bench_{}", Uuid::new_v4().simple());
    let base = admin.rsplit_once('/').map(|(b, _)| b.to_owned()).unwrap();
    let url = format!("{base}/{name}");
    runtime.block_on(async {
        let mut conn = sqlx::PgConnection::connect(&admin)
            .await
            .unwrap_or_else(|e| panic!("PostgreSQL at {admin}: {e}"));
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .unwrap();
    });
    let metrics = Arc::new(Metrics::new());
    let log = runtime.block_on(start_log(
        &url,
        (dir.path().join("pg.spill"), None),
        metrics.clone(),
        stop_rx.clone(),
    ));
    bench_writer(c, &runtime, "writer_into_postgres", &log, &metrics);
    runtime.block_on(async {
        let mut conn = sqlx::PgConnection::connect(&admin).await.unwrap();
        let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
        )))
        .execute(&mut conn)
        .await;
    });

    // The stream alone (`database = false`): a private nats-server.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let mut nats = std::process::Command::new("nats-server")
        .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
        .arg(dir.path().join("nats"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("nats-server is needed for this bench ({e})"));
    let metrics = Arc::new(Metrics::new());
    let jetstream = JetStreamConfig {
        url: format!("nats://127.0.0.1:{port}"),
        ..JetStreamConfig::default()
    };
    let url = format!("sqlite://{}", dir.path().join("unused.db").display());
    let log = runtime.block_on(start_log(
        &url,
        (dir.path().join("js.spill"), Some(jetstream)),
        metrics.clone(),
        stop_rx,
    ));
    bench_writer(c, &runtime, "writer_into_jetstream", &log, &metrics);
    let _ = nats.kill();
    let _ = nats.wait();
}

criterion_group!(benches, audit_writer_bench);
criterion_main!(benches);
