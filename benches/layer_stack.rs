//! Decisions per second of the layer stack: on an in-process cache hit, and
//! on a miss that computes the permission set from SQLite.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{sync::Arc, time::Duration};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use velro_authz::{
    cache::PermissionCache,
    engine::{
        Engine,
        stack::{StackParts, layer_stack},
    },
    metrics::Metrics,
    model::{Action, Consistency, Query, RequestFacts, ResourceKind, ResourceRef},
    store::{self, PoolConfig},
    workload,
};

fn layer_stack_bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("bench.db").display());
    let data = workload::generate(0.1, 42);
    let engine = runtime.block_on(async {
        let pool = PoolConfig {
            max_connections: 4,
            acquire_timeout: Duration::from_secs(5),
        };
        let store = store::connect(&url, &pool).await.unwrap();
        store.migrate().await.unwrap();
        store.insert_dataset(&data).await.unwrap();
        let metrics = Arc::new(Metrics::new());
        let cache = Arc::new(PermissionCache::new(
            100_000,
            Duration::from_secs(600),
            metrics.clone(),
        ));
        Arc::new(Engine::new(
            layer_stack(StackParts { cache }),
            store,
            metrics,
        ))
    });
    let team_member = &data.members[0];
    let project = data
        .projects
        .iter()
        .find(|p| p.team_id == Some(team_member.team_id))
        .unwrap_or(&data.projects[0]);
    let query = Query {
        subject: team_member.user_id,
        action: Action::Read,
        resource: ResourceRef {
            kind: ResourceKind::Project,
            id: project.id,
        },
    };
    let facts = RequestFacts::default();

    let mut group = c.benchmark_group("layer_stack");
    group.throughput(Throughput::Elements(1));
    group.bench_function("in_process_cache_hit", |b| {
        b.to_async(&runtime).iter(|| async {
            engine
                .decide(query, Consistency::MinimizeLatency, &facts)
                .await
                .unwrap()
        })
    });
    let media_query = Query {
        resource: ResourceRef {
            kind: ResourceKind::Media,
            id: data.media[7].id,
        },
        ..query
    };
    group.bench_function("miss_computed_from_sqlite_project", |b| {
        b.to_async(&runtime).iter(|| async {
            engine
                .decide(query, Consistency::FullyConsistent, &facts)
                .await
                .unwrap()
        })
    });
    group.bench_function("miss_computed_from_sqlite_media", |b| {
        b.to_async(&runtime).iter(|| async {
            engine
                .decide(media_query, Consistency::FullyConsistent, &facts)
                .await
                .unwrap()
        })
    });
    group.finish();
}

criterion_group!(benches, layer_stack_bench);
criterion_main!(benches);
