//! The in-process hot paths: the layer stack on an in-process cache hit, a
//! miss that computes the permission set from SQLite, and decoding plus
//! validating a wire request.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{sync::Arc, time::Duration};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use uuid::Uuid;
use velro_authz::{
    api::validate,
    app::assemble::assemble,
    app::config::Settings,
    audit::AuditLog,
    engine::Engine,
    layers::rate_limit::limiter::Tier,
    layers::security_context::{GeoEntry, IpRules, SecurityContextConfig, TeamRules},
    model::workload,
    model::{Action, Consistency, Query, RequestFacts, ResourceKind, ResourceRef},
    proto,
    store::{self, auth::NewSession, pools::Stores},
    support::duration::HumanDuration,
    support::metrics::Metrics,
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

/// Engines over one assembled stack, each keeping only the listed layer
/// positions, so the cost of a layer is the difference between two.
struct Engines {
    relationship_only: Arc<Engine>,
    with_security_context: Arc<Engine>,
    with_inheritance_and_media: Arc<Engine>,
    with_emergency: Arc<Engine>,
    with_rate_limit: Arc<Engine>,
    with_audit: Arc<Engine>,
    full: Arc<Engine>,
    /// All but audit, the rate limiter shared through Redis.
    redis_limiter: Option<Arc<Engine>>,
    audit: Arc<AuditLog>,
}

/// Settings for a stack whose guards all pass the benchmark's requests:
/// quotas far above what one caller reaches, an anomaly model that never
/// fires but still keeps its books, a large audit queue.
fn bench_settings(url: &str, team: Uuid, dir: &std::path::Path) -> Settings {
    let mut s = Settings::defaults().unwrap();
    s.database_url = url.to_owned();
    s.db_max_connections = 4;
    s.cache_capacity = 100_000;
    s.cache_ttl = HumanDuration(Duration::from_secs(600));
    // Following the change log is the server's job; the replica must stay
    // trusted for the whole run even if the follower falls behind.
    s.cache_max_lag = HumanDuration(Duration::from_secs(3600));
    s.security_context = security_rules(team);
    s.rate_limit.enabled = true;
    s.rate_limit.tiers = vec![Tier {
        name: "free".into(),
        per_second: 100_000_000,
        burst: 1_000_000,
    }];
    s.rate_limit.anomaly.rate_factor = 1e12;
    s.audit.queue = 1_000_000;
    s.audit.spill_path = dir.join("audit.spill");
    s
}

/// Every layer but the audit (whose writer competes for the CPU).
const ALL_BUT_AUDIT: [u8; 9] = [10, 9, 4, 7, 1, 2, 3, 5, 6];

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
    let (_stop, stop_rx) = tokio::sync::watch::channel(false);
    let engines = runtime.block_on(async {
        let settings = bench_settings(&url, team_member.team_id, dir.path());
        let store = store::connect(&url, &settings.pool()).await.unwrap();
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
        let assembled = assemble(
            &settings,
            &Stores::single(store.clone()),
            Arc::new(Metrics::new()),
            stop_rx.clone(),
        )
        .await
        .unwrap();
        let full = assembled.engine.clone();
        let keep_of = |engine: &Arc<Engine>, positions: &[u8]| {
            let layers = engine
                .layers()
                .iter()
                .filter(|l| positions.contains(&l.id().position))
                .cloned()
                .collect();
            Arc::new(Engine::new(
                layers,
                store.clone(),
                Arc::new(Metrics::new()),
                16,
                assembled.database.clone(),
                assembled.saturation.clone(),
            ))
        };
        let keep = |positions: &[u8]| keep_of(&full, positions);
        let redis_url = std::env::var("VELRO_TEST_REDIS_URL")
            .unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
        let redis_reachable = redis::Client::open(redis_url.as_str())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .is_ok();
        let redis_limiter = match redis_reachable {
            true => {
                let mut s = bench_settings(&url, team_member.team_id, dir.path());
                s.audit.spill_path = dir.path().join("audit-redis.spill");
                s.redis_url = Some(redis_url);
                s.redis_prefix = format!("velro-bench-{}:", Uuid::new_v4());
                let assembled = assemble(
                    &s,
                    &Stores::single(store.clone()),
                    Arc::new(Metrics::new()),
                    stop_rx.clone(),
                )
                .await
                .unwrap();
                Some(keep_of(&assembled.engine, &ALL_BUT_AUDIT))
            }
            false => {
                eprintln!("no Redis at {redis_url}: the Redis limiter case is left out");
                None
            }
        };
        Engines {
            relationship_only: keep(&[7, 1, 2, 3]),
            with_security_context: keep(&[4, 7, 1, 2, 3]),
            with_inheritance_and_media: keep(&[4, 7, 1, 2, 3, 5, 6]),
            with_emergency: keep(&[9, 4, 7, 1, 2, 3, 5, 6]),
            with_rate_limit: keep(&ALL_BUT_AUDIT),
            with_audit: keep(&[9, 4, 7, 1, 2, 3, 5, 6, 8]),
            full,
            redis_limiter,
            audit: assembled.audit,
        }
    });
    // A team-visible project of the member's team with a media object: the
    // member may read both (checked below, so every "hit" case is an allow).
    let project = data
        .projects
        .iter()
        .find(|p| {
            p.team_id == Some(team_member.team_id)
                && p.visibility == velro_authz::model::Visibility::Team
                && data.generations.iter().any(|g| {
                    g.project_id == p.id && data.media.iter().any(|m| m.generation_id == g.id)
                })
        })
        .unwrap();
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
    let media_in_project = data
        .media
        .iter()
        .find(|m| {
            data.generations
                .iter()
                .any(|g| g.id == m.generation_id && g.project_id == project.id)
        })
        .unwrap();
    let media_read = Query {
        resource: ResourceRef {
            kind: ResourceKind::Media,
            id: media_in_project.id,
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

    runtime.block_on(async {
        let ask = |query| {
            engines
                .full
                .decide(query, Consistency::MinimizeLatency, &facts)
        };
        assert!(
            ask(query).await.unwrap().verdict.allow,
            "the hit cases allow"
        );
        assert!(!ask(denied).await.unwrap().verdict.allow);
        let media = ask(media_read).await.unwrap();
        assert!(
            media.verdict.allow && !media.obligations.is_empty(),
            "a signed URL"
        );
    });
    let mut group = c.benchmark_group("layer_stack");
    group.throughput(Throughput::Elements(1));
    let mut cases: Vec<(&str, &Arc<Engine>, Query, &RequestFacts)> = vec![
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
        (
            "hit_with_layers_4_5_6",
            &engines.with_inheritance_and_media,
            query,
            &facts,
        ),
        (
            "hit_with_layers_4_5_6_9",
            &engines.with_emergency,
            query,
            &facts,
        ),
        (
            "hit_with_layers_4_5_6_9_10",
            &engines.with_rate_limit,
            query,
            &facts,
        ),
        (
            "deny_hit_relationship_only",
            &engines.relationship_only,
            denied,
            &plain,
        ),
        (
            "deny_hit_with_layers_4_5_6_9_10",
            &engines.with_rate_limit,
            denied,
            &facts,
        ),
        (
            "media_read_hit_relationship_only",
            &engines.relationship_only,
            media_read,
            &plain,
        ),
        (
            "media_read_hit_with_signed_url",
            &engines.with_inheritance_and_media,
            media_read,
            &facts,
        ),
    ];
    if let Some(engine) = &engines.redis_limiter {
        cases.push((
            "hit_with_layers_4_5_6_9_10_redis_limiter",
            engine,
            query,
            &facts,
        ));
    }
    for (name, engine, query, facts) in cases {
        let run = decide(engine, query, facts);
        group.bench_function(name, |b| b.to_async(&runtime).iter(&run));
    }
    // Layer 8 hands every decision to the audit writer, which cannot insert
    // as fast as the stack decides: time the decisions only, and let the
    // writer catch up between samples so its queue never overflows.
    group.sample_size(30);
    for (name, engine) in [
        ("hit_with_layers_4_5_6_9_8", &engines.with_audit),
        ("hit_full_stack_audited", &engines.full),
    ] {
        let run = decide(engine, query, &facts);
        let audit = engines.audit.clone();
        group.bench_function(name, |b| {
            b.to_async(&runtime).iter_custom(|iters| {
                let run = run.clone();
                let audit = audit.clone();
                async move {
                    let started = std::time::Instant::now();
                    for _ in 0..iters {
                        run().await;
                    }
                    let elapsed = started.elapsed();
                    while audit.queued() > 0 {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    elapsed
                }
            })
        });
    }
    group.sample_size(100);
    let media_query = Query {
        resource: ResourceRef {
            kind: ResourceKind::Media,
            id: data.media[7].id,
        },
        ..query
    };
    for (name, query) in [
        ("miss_computed_from_sqlite_project", query),
        ("miss_computed_from_sqlite_media", media_query),
    ] {
        group.bench_function(name, |b| {
            b.to_async(&runtime).iter(|| async {
                engines
                    .relationship_only
                    .decide(query, Consistency::FullyConsistent, &plain)
                    .await
                    .unwrap()
            })
        });
    }
    group.finish();
    // A BatchAuthorize of 50 hits (allows, denials and media reads mixed)
    // through every layer, each item audited; per decision.
    let items: Vec<Query> = [query, denied, media_read]
        .into_iter()
        .cycle()
        .take(50)
        .collect();
    let full = engines.full.clone();
    let audit = engines.audit.clone();
    let batch_facts = facts.clone();
    let mut batch = c.benchmark_group("batch");
    batch.throughput(Throughput::Elements(items.len() as u64));
    batch.sample_size(30);
    batch.bench_function("batch_of_50_full_stack_audited", |b| {
        b.to_async(&runtime).iter_custom(|iters| {
            let (full, audit, facts, items) = (
                full.clone(),
                audit.clone(),
                batch_facts.clone(),
                items.clone(),
            );
            async move {
                let started = std::time::Instant::now();
                for _ in 0..iters {
                    let decisions = full
                        .decide_batch(
                            items.iter().map(|q| Ok(*q)).collect(),
                            Consistency::MinimizeLatency,
                            &facts,
                        )
                        .await;
                    assert!(decisions.iter().all(Result::is_ok));
                }
                let elapsed = started.elapsed();
                while audit.queued() > 0 {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                elapsed
            }
        })
    });
    batch.finish();
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
