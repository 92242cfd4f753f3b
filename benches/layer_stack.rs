//! The in-process hot paths: the layer stack on an in-process cache hit, a
//! miss that computes the permission set from SQLite, and decoding plus
//! validating a wire request.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{sync::Arc, time::Duration};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use uuid::Uuid;
use velro_authz::{
    cache::PermissionCache,
    engine::{
        Engine,
        stack::{StackParts, layer_stack},
    },
    freshness::Freshness,
    layers::security_context::{
        GeoEntry, IpRules, SecurityContext, SecurityContextConfig, TeamRules,
    },
    media_url::{MediaUrlConfig, UrlSigner},
    metrics::Metrics,
    model::{Action, Consistency, Query, RequestFacts, ResourceKind, ResourceRef},
    proto,
    store::{self, PoolConfig, auth::NewSession},
    validate, workload,
};

/// Rules a deployment might run with: CIDR lists, a geo table, user-agent
/// patterns, team rules, a session check. Nothing matches the benchmark's
/// request, so every rule is evaluated and passes.
fn security_rules(team: Uuid) -> SecurityContextConfig {
    let net = |s: &str| s.parse().unwrap();
    let mut config = SecurityContextConfig::default();
    config.ip.ip_deny = (0..10).map(|i| net(&format!("198.51.{i}.0/24"))).collect();
    config.ip.ip_allow = vec![net("0.0.0.0/0"), net("::/0")];
    config.geo_table = (0..10)
        .map(|i| GeoEntry {
            cidr: net(&format!("203.0.{i}.0/24")),
            country: if i == 9 { "KP" } else { "DE" }.to_owned(),
        })
        .collect();
    config.country_deny = vec!["KP".to_owned()];
    config.user_agent_deny = ["(?i)sqlmap", "(?i)nikto", "(?i)headless", "(?i)masscan"]
        .map(str::to_owned)
        .to_vec();
    config.teams = vec![TeamRules {
        team,
        ip: IpRules {
            ip_allow: vec![net("203.0.113.0/24")],
            ip_deny: Vec::new(),
        },
    }];
    config
}

/// Engines over the same store, each keeping only the listed layer
/// positions, so the cost of a layer is the difference between two.
struct Engines {
    relationship_only: Arc<Engine>,
    with_security_context: Arc<Engine>,
    full: Arc<Engine>,
}

fn layer_stack_bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("bench.db").display());
    let data = workload::generate(0.1, 42);
    let team_member = data.members[0].clone();
    let session = Uuid::new_v4();
    let engines = runtime.block_on(async {
        let pool = PoolConfig {
            max_connections: 4,
            acquire_timeout: Duration::from_secs(5),
        };
        let store = store::connect(&url, &pool).await.unwrap();
        store.migrate().await.unwrap();
        store.insert_dataset(&data).await.unwrap();
        store
            .create_session(NewSession {
                id: session,
                user_id: team_member.user_id,
                client_ip: "203.0.113.9",
                user_agent: "velro-web/1.0",
                now: 0,
                refresh_hash: "bench",
                refresh_expires_at: i64::MAX,
            })
            .await
            .unwrap();
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
            freshness.clone(),
            metrics.clone(),
        ));
        let security = SecurityContext::new(
            &security_rules(team_member.team_id),
            store.clone(),
            freshness,
            cache.clone(),
        )
        .unwrap();
        let stack = layer_stack(StackParts {
            cache,
            security: Arc::new(security),
            media_urls: Arc::new(UrlSigner::new(&MediaUrlConfig::default()).unwrap()),
        });
        let keep = |positions: &[u8]| {
            let layers = stack
                .iter()
                .filter(|l| positions.contains(&l.id().position))
                .cloned()
                .collect();
            Arc::new(Engine::new(layers, store.clone(), metrics.clone(), 16))
        };
        Engines {
            relationship_only: keep(&[7, 1, 2, 3]),
            with_security_context: keep(&[4, 7, 1, 2, 3]),
            full: keep(&[4, 7, 1, 2, 3, 5, 6]),
        }
    });
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
    let plain = RequestFacts::default();
    let facts = RequestFacts {
        ip: Some("203.0.113.9".parse().unwrap()),
        user_agent: "velro-web/1.0".into(),
        session_id: session.to_string(),
        ..RequestFacts::default()
    };
    // A deny walks every layer; a media read earns a signed URL.
    let denied = Query {
        action: Action::Delete,
        ..query
    };
    let generation = data
        .generations
        .iter()
        .position(|g| g.project_id == project.id)
        .unwrap_or(0);
    let media_read = Query {
        resource: ResourceRef {
            kind: ResourceKind::Media,
            id: data.media[generation].id,
        },
        ..query
    };
    let decide = |engine: &Arc<Engine>, query: Query, facts: &RequestFacts| {
        let engine = engine.clone();
        let facts = facts.clone();
        move || {
            let engine = engine.clone();
            let facts = facts.clone();
            async move {
                engine
                    .decide(query, Consistency::MinimizeLatency, &facts)
                    .await
                    .unwrap()
            }
        }
    };

    let mut group = c.benchmark_group("layer_stack");
    group.throughput(Throughput::Elements(1));
    let cases: [(&str, &Arc<Engine>, Query, &RequestFacts); 8] = [
        (
            "in_process_cache_hit",
            &engines.relationship_only,
            query,
            &plain,
        ),
        (
            "hit_with_layer_4",
            &engines.with_security_context,
            query,
            &facts,
        ),
        ("hit_full_stack", &engines.full, query, &facts),
        (
            "deny_hit_relationship_only",
            &engines.relationship_only,
            denied,
            &plain,
        ),
        (
            "deny_hit_with_layer_4",
            &engines.with_security_context,
            denied,
            &facts,
        ),
        ("deny_hit_full_stack", &engines.full, denied, &facts),
        (
            "media_read_hit_relationship_only",
            &engines.relationship_only,
            media_read,
            &plain,
        ),
        (
            "media_read_hit_full_stack_signed_url",
            &engines.full,
            media_read,
            &facts,
        ),
    ];
    for (name, engine, query, facts) in cases {
        let run = decide(engine, query, facts);
        group.bench_function(name, |b| b.to_async(&runtime).iter(&run));
    }
    let media_query = Query {
        resource: ResourceRef {
            kind: ResourceKind::Media,
            id: data.media[7].id,
        },
        ..query
    };
    group.bench_function("miss_computed_from_sqlite_project", |b| {
        b.to_async(&runtime).iter(|| async {
            engines
                .full
                .decide(query, Consistency::FullyConsistent, &plain)
                .await
                .unwrap()
        })
    });
    group.bench_function("miss_computed_from_sqlite_media", |b| {
        b.to_async(&runtime).iter(|| async {
            engines
                .full
                .decide(media_query, Consistency::FullyConsistent, &plain)
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
