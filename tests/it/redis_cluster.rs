//! Redis Cluster as the shared tier and the rate limiter's store, on a
//! private 3-node cluster: keys spread over the nodes, a killed node's
//! slots fall through to the database (answers stay right, the breaker
//! shows it), and everything recovers when the node is back.

use std::time::Duration;

use velro_authz::{
    app::config::Settings,
    layers::rate_limit::limiter::Tier,
    proto::{AuthorizeRequest, Decision},
    support::duration::HumanDuration,
};

use crate::common::{
    Db, TestServer, cluster::RedisCluster, eventually, fixture::authorize, settings, world_server,
};

/// The cluster as the shared tier, the limiter distributed through it with
/// a burst no test reaches; the slow refill keeps each principal's key alive
/// (about a second per request), so the test can see where it lives.
pub fn on_cluster(s: &mut Settings, cluster: &RedisCluster, prefix: &str) {
    s.redis_cluster_urls = cluster.urls();
    s.redis_prefix = prefix.to_owned();
    s.redis_timeout = HumanDuration(Duration::from_millis(200));
    s.rate_limit.enabled = true;
    s.rate_limit.distributed = true;
    s.rate_limit.anomaly.enabled = false;
    s.rate_limit.default_tier = "free".into();
    s.rate_limit.tiers = vec![Tier {
        name: "free".into(),
        per_second: 1,
        burst: 100_000,
    }];
}

async fn check(server: &TestServer, cases: &[(AuthorizeRequest, Decision)], what: &str) {
    for (request, expected) in cases {
        let r = server.decide(request.clone()).await;
        assert_eq!(r.decision(), *expected, "{what}: {request:?} -> {r:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_node_falls_through_to_the_database_and_the_tier_recovers() {
    let mut cluster = RedisCluster::start().await;
    let prefix = format!("velro-test-{}:", uuid::Uuid::new_v4().simple());
    let (db, w, a) = world_server(Db::Sqlite, |s| on_cluster(s, &cluster, &prefix)).await;
    let cases = [
        (
            authorize(w.viewer, "read", "project", w.team.project),
            Decision::Allow,
        ),
        (
            authorize(w.viewer, "write", "project", w.team.project),
            Decision::Deny,
        ),
        (
            authorize(w.viewer, "read", "project", w.private.project),
            Decision::Deny,
        ),
        (
            authorize(w.viewer, "read", "media", w.public.media),
            Decision::Allow,
        ),
        (
            authorize(w.outsider, "read", "project", w.private.project),
            Decision::Deny,
        ),
        (
            authorize(w.editor, "write", "project", w.team.project),
            Decision::Allow,
        ),
    ];
    check(&a, &cases, "on the whole cluster").await;

    let mut holders = std::collections::BTreeSet::new();
    for i in 0..3 {
        if !cluster.keys_on(i, &prefix).await.is_empty() {
            holders.insert(i);
        }
    }
    assert!(
        holders.len() >= 2,
        "keys spread over the nodes: {holders:?}"
    );

    // The node that holds the viewer's quota: every viewer request needs it.
    let lost = cluster
        .holder_of(&prefix, &format!("rl:free:{{{}", w.viewer))
        .await;
    cluster.kill(lost);
    let limiter = "velro_authz_breaker_state{dependency=\"redis_rate_limit\"}";
    for _ in 0..4 {
        check(&a, &cases, "with a node down").await;
    }
    a.metric_reaches(limiter, 1.0).await;
    assert!(
        a.metric("velro_authz_rate_limit_fallbacks_total").await >= 3.0,
        "the limiter fell back in process"
    );
    // A cold replica: its misses go to Redis (partly down) and then the
    // database.
    let mut s = settings(&db.url);
    on_cluster(&mut s, &cluster, &prefix);
    let b = TestServer::start(s).await;
    check(&b, &cases, "a cold replica with a node down").await;

    cluster.restart(lost).await;
    eventually(
        Duration::from_secs(20),
        "the limiter's breaker closing",
        || {
            let (a, cases) = (&a, &cases);
            async move {
                check(a, cases, "while the node comes back").await;
                match a.metric(limiter).await {
                    0.0 => Ok(()),
                    state => Err(format!("breaker state {state}")),
                }
            }
        },
    )
    .await;
    eventually(
        Duration::from_secs(10),
        "the quota back on its node",
        || {
            let (a, cases, cluster, prefix) = (&a, &cases, &cluster, &prefix);
            async move {
                check(a, cases, "after the node came back").await;
                let keys = cluster.keys_on(lost, prefix).await;
                match keys.iter().any(|k| k.contains("rl:")) {
                    true => Ok(()),
                    false => Err(format!("node {lost} holds {keys:?}")),
                }
            }
        },
    )
    .await;
    // A third replica reads what the others wrote: the cache tier serves.
    let mut s = settings(&db.url);
    on_cluster(&mut s, &cluster, &prefix);
    let c = TestServer::start(s).await;
    check(&c, &cases, "a cold replica after recovery").await;
    let hits = c
        .metric("velro_authz_cache_lookups_total{tier=\"redis\",result=\"hit\"}")
        .await;
    assert!(hits >= 1.0, "the cold replica answered from the cluster");
    for server in [a, b, c] {
        server.stop().await;
    }
}

/// Decisions through the cluster tier agree with the reference model.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_on_a_cluster_agree_with_the_model() {
    let cluster = RedisCluster::start().await;
    let prefix = format!("velro-test-{}:", uuid::Uuid::new_v4().simple());
    crate::reference_model::agree_under_writes(|s| on_cluster(s, &cluster, &prefix)).await;
    let mut kinds = (false, false);
    for i in 0..3 {
        for key in cluster.keys_on(i, &prefix).await {
            kinds.0 |= key.contains("perm:{");
            kinds.1 |= key.contains("rl:free:{");
        }
    }
    assert_eq!(
        kinds,
        (true, true),
        "permission sets and quotas in the cluster"
    );
}
