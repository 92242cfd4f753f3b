//! The in-process hot paths: the layer stack on an in-process cache hit, a
//! miss that computes the permission set from SQLite, and decoding plus
//! validating a wire request.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{sync::Arc, time::Duration};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use velro_authz::{
    cache::PermissionCache,
    engine::{
        Engine,
        stack::{StackParts, layer_stack},
    },
    freshness::Freshness,
    metrics::Metrics,
    model::{Action, Consistency, Query, RequestFacts, ResourceKind, ResourceRef},
    proto,
    store::{self, PoolConfig},
    validate, workload,
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
        // Following the change log is the server's job; here the replica is
        // simply in sync at the start and stays trusted for the whole run.
        let freshness = Arc::new(Freshness::new(
            0,
            Duration::from_secs(3600),
            metrics.clone(),
        ));
        freshness.sync(store.as_ref()).await.unwrap();
        let cache = Arc::new(PermissionCache::new(
            100_000,
            Duration::from_secs(600),
            freshness,
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

/// Protobuf decoding and validation of one Authorize request, as the
/// handler does before the stack sees it.
fn decode_and_validate_bench(c: &mut Criterion) {
    use prost::Message;
    let request = proto::AuthorizeRequest {
        user_id: "0192f0c1-7a4e-7cc3-9d0a-5b1f3e8a2c44".into(),
        action: "read".into(),
        resource: Some(proto::Resource {
            r#type: "generation".into(),
            id: "0192f0c1-7a4e-7cc3-9d0a-5b1f3e8a2c45".into(),
        }),
        context: Some(proto::RequestContext {
            ip: "203.0.113.9".into(),
            user_agent: "velro-web/1.0".into(),
            request_id: "req-1".into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let bytes = request.encode_to_vec();
    let mut group = c.benchmark_group("request");
    group.throughput(Throughput::Elements(1));
    group.bench_function("decode_and_validate_authorize", |b| {
        b.iter(|| {
            let r = proto::AuthorizeRequest::decode(bytes.as_slice()).unwrap();
            let query = validate::query("", &r.user_id, &r.action, r.resource.as_ref()).unwrap();
            let facts = validate::context(r.context.as_ref()).unwrap();
            let consistency = validate::consistency(r.consistency, r.at_least_revision).unwrap();
            (query, facts, consistency)
        })
    });
    group.finish();
}

criterion_group!(benches, layer_stack_bench, decode_and_validate_bench);
criterion_main!(benches);
