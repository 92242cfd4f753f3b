//! Writes made with plain SQL reach every replica's cache through the change
//! log: two servers on one database stop allowing within the bound; a
//! replica cut off from the log stops answering from cache; AT_LEAST_AS_FRESH
//! reflects a write at once; one cold key under a stampede is computed once.

use std::time::{Duration, Instant};

use futures::future::join_all;
use tonic::Code;
use velro_authz::{proto, support::duration::HumanDuration};

use crate::{
    common::{
        Db, TestDb, TestServer,
        fixture::{World, authorize},
        proxy::Proxy,
        settings,
    },
    on_both_databases,
};

/// The bound this suite holds the replicas to (change_poll is 250 ms).
const BOUND: Duration = Duration::from_secs(3);

async fn seeded(kind: Db) -> (TestDb, World) {
    let db = TestDb::create(kind).await;
    let w = World::new();
    db.store().await.insert_dataset(&w.data).await.unwrap();
    (db, w)
}

fn allowed(r: &Result<tonic::Response<proto::AuthorizeResponse>, tonic::Status>) -> bool {
    r.as_ref()
        .is_ok_and(|r| r.get_ref().decision() == proto::Decision::Allow)
}

/// Warms `request` into both replicas' caches (allowed), runs `sql`, then
/// waits until both deny; returns how long that took.
async fn write_reaches_both(
    db: &TestDb,
    replicas: &[&TestServer],
    request: proto::AuthorizeRequest,
    sql: &str,
) -> Duration {
    for server in replicas {
        for _ in 0..2 {
            let r = server.client.clone().authorize(request.clone()).await;
            assert!(allowed(&r), "before the write: {r:?}");
        }
        let r = server.decide(request.clone()).await;
        assert_eq!(r.source(), proto::PermissionSource::InProcessCache, "warm");
    }
    db.execute(sql).await;
    let written = Instant::now();
    for server in replicas {
        loop {
            let r = server.client.clone().authorize(request.clone()).await;
            if !allowed(&r) {
                break;
            }
            assert!(
                written.elapsed() < BOUND,
                "{sql}: a replica still allows after {BOUND:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    written.elapsed()
}

async fn replicas_follow_writes(kind: Db) {
    let (db, w) = seeded(kind).await;
    let a = TestServer::start(settings(&db.url)).await;
    let b = TestServer::start(settings(&db.url)).await;
    let both = [&a, &b];
    // Each write, and a request it must turn from allow to deny.
    let writes = [
        (
            authorize(w.viewer, "read", "project", w.team.project),
            format!("DELETE FROM team_members WHERE user_id = '{}'", w.viewer),
        ),
        (
            authorize(w.editor, "write", "generation", w.team.generation),
            format!(
                "UPDATE projects SET visibility = 'private' WHERE id = '{}'",
                w.team.project
            ),
        ),
        (
            authorize(w.outsider, "read", "media", w.public.media),
            format!(
                "DELETE FROM generations WHERE id = '{}'",
                w.public.generation
            ),
        ),
        (
            authorize(w.admin, "delete", "project", w.private.project),
            format!("UPDATE users SET disabled = TRUE WHERE id = '{}'", w.admin),
        ),
    ];
    let mut took = Vec::new();
    for (request, sql) in writes {
        took.push(write_reaches_both(&db, &both, request, &sql).await);
    }
    eprintln!("{kind:?}: writes reached both replicas after {took:?}");
    assert!(a.metric("velro_authz_invalidations_total").await >= 4.0);
    a.stop().await;
    b.stop().await;
}
on_both_databases!(two_replicas_follow_plain_sql_writes, replicas_follow_writes);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_cut_off_from_the_log_stops_answering_from_cache() {
    let (db, w) = seeded(Db::Postgres).await;
    let proxy = Proxy::postgres().await;
    let mut s = settings(&proxy.route(&db.url));
    s.cache_max_lag = HumanDuration(Duration::from_secs(1));
    s.db_acquire_timeout = HumanDuration(Duration::from_millis(300));
    let server = TestServer::start(s).await;
    let request = authorize(w.viewer, "read", "project", w.team.project);
    assert!(allowed(
        &server.client.clone().authorize(request.clone()).await
    ));

    proxy.cut();
    db.execute(&format!(
        "DELETE FROM team_members WHERE user_id = '{}'",
        w.viewer
    ))
    .await;
    let cut = Instant::now();
    // Within the lag the cached allow may still be served; after it, never.
    tokio::time::sleep(Duration::from_millis(1_300)).await;
    for _ in 0..5 {
        let r = server.client.clone().authorize(request.clone()).await;
        assert!(
            !allowed(&r),
            "stale allow {:?} after the log was lost",
            cut.elapsed()
        );
        if let Err(status) = &r {
            assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        }
    }
    proxy.restore();
    let mut denied = false;
    for _ in 0..100 {
        let r = server.client.clone().authorize(request.clone()).await;
        if r.as_ref()
            .is_ok_and(|r| r.get_ref().decision() == proto::Decision::Deny)
        {
            denied = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        denied,
        "after the log is back the replica answers from fresh data"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_least_as_fresh_reflects_a_write_at_once() {
    // SQLite has no notifications, and this replica polls only every 10 s:
    // a plain request may be stale, an AT_LEAST_AS_FRESH one may not.
    let (db, w) = seeded(Db::Sqlite).await;
    let mut s = settings(&db.url);
    s.change_poll = HumanDuration(Duration::from_secs(10));
    let server = TestServer::start(s).await;
    let request = authorize(w.viewer, "read", "generation", w.team.generation);
    for _ in 0..2 {
        assert!(allowed(
            &server.client.clone().authorize(request.clone()).await
        ));
    }
    db.execute(&format!(
        "DELETE FROM team_members WHERE user_id = '{}'",
        w.viewer
    ))
    .await;
    let revision = server.revision().await;
    assert!(revision > 0);
    let stale = server.decide(request.clone()).await;
    assert_eq!(stale.source(), proto::PermissionSource::InProcessCache);

    let mut fresh = request.clone();
    fresh.consistency = proto::Consistency::AtLeastAsFresh as i32;
    fresh.at_least_revision = revision;
    let r = server.decide(fresh.clone()).await;
    assert_eq!(r.decision(), proto::Decision::Deny, "{r:?}");
    fresh.at_least_revision = 0;
    let e = server.client.clone().authorize(fresh).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);

    let mut full = request;
    full.consistency = proto::Consistency::FullyConsistent as i32;
    for _ in 0..3 {
        let r = server.decide(full.clone()).await;
        assert_eq!(r.source(), proto::PermissionSource::Computed);
        assert_eq!(r.decision(), proto::Decision::Deny);
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stampede_on_one_cold_key_computes_once() {
    let (db, w) = seeded(Db::Postgres).await;
    let server = TestServer::start(settings(&db.url)).await;
    let before = server
        .metric("velro_authz_permission_computations_total")
        .await;
    let request = authorize(w.editor, "read", "media", w.team.media);
    let answers = join_all((0..500).map(|_| {
        let mut client = server.client.clone();
        let request = request.clone();
        async move { client.authorize(request).await }
    }))
    .await;
    assert!(answers.iter().all(allowed));
    let after = server
        .metric("velro_authz_permission_computations_total")
        .await;
    assert_eq!(
        after - before,
        1.0,
        "500 concurrent requests for one cold key"
    );
    server.stop().await;
}
