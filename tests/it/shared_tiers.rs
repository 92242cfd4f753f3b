//! The shared tiers: Redis against the machine's real Redis (each test under its own
//! key prefix, removed afterwards) and the database tier: a cold replica
//! answers from them, a write outdates them; and a Redis that stalls or is
//! gone: answers stay correct and never wait for it.

use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use velro_authz::{proto, support::duration::HumanDuration};

use crate::common::{
    Db, TestDb, TestServer,
    fixture::{World, authorize},
    redis::{Prefix, redis_url},
    settings,
};

async fn seeded() -> (TestDb, World) {
    let db = TestDb::create(Db::Postgres).await;
    let w = World::new();
    db.store().await.insert_dataset(&w.data).await.unwrap();
    (db, w)
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Tier {
    Redis,
    Database,
}

/// A replica that starts next to a warm one answers from the shared tier;
/// a write outdates the shared entry for every replica.
async fn cold_replica_uses_the_shared_tier(tier: Tier) {
    let prefix = Prefix::new().await;
    let (db, w) = seeded().await;
    let with_redis = || {
        let mut s = settings(&db.url);
        match tier {
            Tier::Redis => {
                s.redis_url = Some(redis_url());
                s.redis_prefix = prefix.0.clone();
            }
            Tier::Database => s.db_cache = true,
        }
        s
    };
    let stored = || async {
        match tier {
            Tier::Redis => prefix.keys().await.len(),
            Tier::Database => {
                let store = db.store().await;
                let key = format!("{}:generation:{}", w.viewer, w.team.generation);
                usize::from(store.cached_set(&key, 0).await.unwrap().is_some())
            }
        }
    };
    let shared_source = match tier {
        Tier::Redis => proto::PermissionSource::RedisCache,
        Tier::Database => proto::PermissionSource::DatabaseCache,
    };
    let warm = TestServer::start(with_redis()).await;
    let request = authorize(w.viewer, "read", "generation", w.team.generation);
    let first = warm.decide(request.clone()).await;
    assert_eq!(first.source(), proto::PermissionSource::Computed);
    // The write to the shared tier happens in the background.
    for _ in 0..100 {
        if stored().await > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(stored().await, 1, "{tier:?}");

    let cold = TestServer::start(with_redis()).await;
    let shared = cold.decide(request.clone()).await;
    assert_eq!(shared.source(), shared_source, "{shared:?}");
    assert_eq!(
        (shared.decision(), &shared.permissions),
        (first.decision(), &first.permissions)
    );
    let again = cold.decide(request.clone()).await;
    assert_eq!(again.source(), proto::PermissionSource::InProcessCache);

    // A write outdates the Redis entry too: a third replica must not use it.
    db.execute(&format!(
        "DELETE FROM team_members WHERE user_id = '{}'",
        w.viewer
    ))
    .await;
    let third = TestServer::start(with_redis()).await;
    let r = third.decide(request.clone()).await;
    assert_eq!(r.decision(), proto::Decision::Deny, "{r:?}");
    assert_eq!(r.source(), proto::PermissionSource::Computed);
    for server in [warm, cold, third] {
        server.stop().await;
    }
    prefix.remove().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_replica_answers_from_redis() {
    cold_replica_uses_the_shared_tier(Tier::Redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_replica_answers_from_the_database_tier() {
    cold_replica_uses_the_shared_tier(Tier::Database).await;
}

/// A listener that accepts connections and never answers: a stalled Redis.
async fn stalled_redis() -> (String, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    (format!("redis://{addr}"), task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_or_missing_redis_is_skipped() {
    let (db, w) = seeded().await;
    let (stalled, holder) = stalled_redis().await;
    let gone = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("redis://{}", l.local_addr().unwrap())
    };
    for url in [stalled, gone] {
        let mut s = settings(&db.url);
        s.redis_url = Some(url.clone());
        s.redis_timeout = HumanDuration(Duration::from_millis(100));
        let server = TestServer::start(s).await;
        let cases = [
            (
                authorize(w.viewer, "read", "project", w.team.project),
                proto::Decision::Allow,
            ),
            (
                authorize(w.viewer, "write", "project", w.team.project),
                proto::Decision::Deny,
            ),
            (
                authorize(w.outsider, "read", "media", w.public.media),
                proto::Decision::Allow,
            ),
            (
                authorize(w.outsider, "read", "project", w.private.project),
                proto::Decision::Deny,
            ),
        ];
        for round in 0..3 {
            for (request, expected) in &cases {
                let started = Instant::now();
                let r = server.decide(request.clone()).await;
                // The Redis deadline plus the database's time, with room for a busy CI machine.
                assert!(
                    started.elapsed() < Duration::from_millis(1_000),
                    "{url}: waited {:?}",
                    started.elapsed()
                );
                assert_eq!(r.decision(), *expected, "{url} round {round}: {r:?}");
            }
        }
        let skipped = server
            .metric("velro_authz_cache_lookups_total{tier=\"redis\",result=\"skipped\"}")
            .await;
        let errors = server
            .metric("velro_authz_cache_lookups_total{tier=\"redis\",result=\"error\"}")
            .await;
        assert!(errors >= 1.0, "{url}: failures are counted");
        assert!(
            skipped >= 1.0,
            "{url}: the breaker opened and skipped Redis"
        );
        server.stop().await;
    }
    holder.abort();
}
