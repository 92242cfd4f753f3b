//! Pools by kind of work: an audit writer stuck on the database and a login
//! storm hold every connection of their own pools, and decisions keep
//! theirs (never waiting for a connection). A read replica answers only
//! where it has caught up.

use std::time::Duration;

use futures::future::join_all;
use sqlx::{Connection, PgConnection};
use velro_authz::{
    proto::{self, Decision},
    store::pools::PoolSize,
    support::duration::HumanDuration,
};

use crate::common::{
    Db, TestDb, TestServer, eventually,
    fixture::{World, authorize},
    login::{PASSWORD, auth_server},
    settings,
};

fn pool(max_connections: u32, acquire_ms: u64) -> PoolSize {
    PoolSize {
        max_connections,
        acquire_timeout: HumanDuration(Duration::from_millis(acquire_ms)),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_audit_writer_and_a_login_storm_leave_decisions_their_connections() {
    let w = auth_server(Db::Postgres, |s| {
        s.db_max_connections = 4;
        s.db_pools.audit = pool(1, 5_000);
        s.db_pools.auth = pool(1, 300);
    })
    .await;
    let sample = |pool: &str, state: &str| {
        format!("velro_authz_db_pool_connections{{pool=\"{pool}\",state=\"{state}\"}}")
    };
    assert_eq!(
        w.server
            .metric("velro_authz_db_pool_max_connections{pool=\"decisions\"}")
            .await,
        4.0
    );
    assert_eq!(
        w.server
            .metric("velro_authz_db_pool_max_connections{pool=\"audit\"}")
            .await,
        1.0
    );

    // Another client holds the tables the audit writer and logins write:
    // their statements wait, each holding its pool's only connection.
    let mut locker = PgConnection::connect(&w.db.url).await.unwrap();
    let mut tx = locker.begin().await.unwrap();
    sqlx::raw_sql(
        "LOCK TABLE audit_log IN EXCLUSIVE MODE; LOCK TABLE refresh_tokens IN EXCLUSIVE MODE",
    )
    .execute(&mut *tx)
    .await
    .unwrap();

    let mut storm = Box::pin({
        let users = [
            w.world.viewer,
            w.world.editor,
            w.world.admin,
            w.world.owner,
            w.world.creator,
            w.world.outsider,
        ];
        let logins: Vec<_> = users.iter().map(|u| w.login(*u, PASSWORD)).collect();
        join_all(logins)
    });

    // Decisions read the database (FULLY_CONSISTENT: no cache) while the
    // storm runs and the audit writer is stuck.
    let asks = [
        (w.world.owner, w.world.private.project, "project", true),
        (w.world.viewer, w.world.team.project, "project", true),
        (w.world.outsider, w.world.private.project, "project", false),
        (w.world.creator, w.world.team.generation, "generation", true),
    ];
    let mut decided = 0;
    let decisions = async {
        for round in 0..5 {
            for (user, id, kind, allowed) in asks {
                let mut request = authorize(user, "read", kind, id);
                request.consistency = proto::Consistency::FullyConsistent as i32;
                let answer = w.server.decide(request).await;
                let expected = match allowed {
                    true => Decision::Allow,
                    false => Decision::Deny,
                };
                assert_eq!(answer.decision(), expected, "round {round}: {answer:?}");
                decided += 1;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::select! {
        () = decisions => {}
        _ = &mut storm => panic!("the logins finished while their table was locked"),
    }
    for pool in ["audit", "auth"] {
        let what = format!("the {pool} pool's only connection in use");
        eventually(Duration::from_secs(10), &what, || async {
            match w.server.metric(&sample(pool, "in_use")).await {
                1.0 => Ok(()),
                seen => Err(format!("{seen} in use")),
            }
        })
        .await;
    }
    // No decision waited for work of another kind: every acquire took at
    // most what opening a connection takes (here, well under 400 ms; a
    // shared pool makes them wait out the acquire timeout, then fail).
    let acquires = w
        .server
        .metric("velro_authz_db_pool_acquire_seconds_count")
        .await;
    let quick = w
        .server
        .metric("velro_authz_db_pool_acquire_seconds_bucket{le=\"0.4096\"}")
        .await;
    assert!(
        acquires >= 20.0,
        "{acquires} acquires for {decided} decisions"
    );
    assert_eq!(quick, acquires, "a decision waited for a pooled connection");

    // Released: the logins finish (or were told to retry), and the audit
    // writer writes every queued event.
    tx.rollback().await.unwrap();
    let answers = tokio::time::timeout(Duration::from_secs(30), &mut storm)
        .await
        .unwrap_or_else(|_| panic!("the logins never finished"));
    let served = answers.iter().filter(|a| a.is_ok()).count();
    assert!(served >= 1, "{answers:?}");
    for refused in answers.iter().filter_map(|a| a.as_ref().err()) {
        assert_eq!(
            refused.code(),
            tonic::Code::ResourceExhausted,
            "a login that found its pool busy is told to retry: {refused:?}"
        );
    }
    let decided = i64::from(decided);
    eventually(
        Duration::from_secs(15),
        "every decision audited",
        || async {
            let written =
                w.db.number("SELECT COUNT(*) FROM audit_log WHERE kind = 'decision'")
                    .await;
            match written >= decided {
                true => Ok(()),
                false => Err(format!("{written} of {decided}")),
            }
        },
    )
    .await;
    drop(storm);
    w.server.stop().await;
}

/// A read replica serves decision reads at MINIMIZE_LATENCY only once it
/// has applied the revision this replica knows; FULLY_CONSISTENT reads the
/// primary always.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_replica_serves_only_where_it_has_caught_up() {
    let primary = TestDb::create(Db::Postgres).await;
    let replica = TestDb::create(Db::Postgres).await;
    let world = World::new();
    for db in [&primary, &replica] {
        db.store().await.insert_dataset(&world.data).await.unwrap();
    }
    // The primary moves on: the viewer leaves the team. The "replica"
    // has not replayed it.
    primary
        .execute(&format!(
            "DELETE FROM team_members WHERE user_id = '{}'",
            world.viewer
        ))
        .await;
    let ahead = primary.number("SELECT velro_authz_revision()").await;
    let mut s = settings(&primary.url);
    s.db_pools.replica_url = Some(replica.url.clone());
    s.change_poll = HumanDuration(Duration::from_millis(20));
    let server = TestServer::start(s).await;
    let ask = |kind: &str, id, consistency: proto::Consistency| {
        let mut request = authorize(world.viewer, "read", kind, id);
        request.consistency = consistency as i32;
        request
    };
    let behind = replica.number("SELECT velro_authz_revision()").await;
    assert!(behind < ahead, "{behind} < {ahead}");
    server
        .metric_reaches("velro_authz_db_replica_revision", behind as f64)
        .await;
    // Behind: the primary answers (the viewer is no longer in the team).
    let answer = server
        .decide(ask(
            "project",
            world.team.project,
            proto::Consistency::MinimizeLatency,
        ))
        .await;
    assert_eq!(answer.decision(), Decision::Deny, "{answer:?}");

    // The replica's change log catches up (its data, in this test, does
    // not: that shows who answered).
    for _ in behind..ahead {
        replica
            .execute("INSERT INTO authz_changes (scope) VALUES ('user')")
            .await;
    }
    server
        .metric_reaches("velro_authz_db_replica_revision", ahead as f64)
        .await;
    let answer = server
        .decide(ask(
            "generation",
            world.team.generation,
            proto::Consistency::MinimizeLatency,
        ))
        .await;
    assert_eq!(
        answer.decision(),
        Decision::Allow,
        "a caught-up replica answers MINIMIZE_LATENCY: {answer:?}"
    );
    let answer = server
        .decide(ask(
            "media",
            world.team.media,
            proto::Consistency::FullyConsistent,
        ))
        .await;
    assert_eq!(
        answer.decision(),
        Decision::Deny,
        "FULLY_CONSISTENT reads the primary: {answer:?}"
    );
    assert_eq!(
        server
            .metric("velro_authz_db_pool_max_connections{pool=\"replica\"}")
            .await,
        8.0
    );
    server.stop().await;
}

/// The decisions pool opens `db_min_connections` at start-up, before any
/// request, so the first misses do not wait for a new PostgreSQL backend.
#[tokio::test]
async fn the_decisions_pool_opens_its_minimum_at_start_up() {
    let db = TestDb::create(Db::Postgres).await;
    let mut s = settings(&db.url);
    s.db_max_connections = 8;
    s.db_min_connections = 6;
    let server = TestServer::start(s).await;
    let open = || async {
        let sample = |state| {
            format!("velro_authz_db_pool_connections{{pool=\"decisions\",state=\"{state}\"}}")
        };
        server.metric(&sample("idle")).await + server.metric(&sample("in_use")).await
    };
    eventually(
        Duration::from_secs(5),
        "six decision connections open before any request",
        || async {
            match open().await {
                n if n >= 6.0 => Ok(()),
                n => Err(format!("{n} open")),
            }
        },
    )
    .await;
    server.stop().await;
}
