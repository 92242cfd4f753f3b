//! Layer 9: kill switches reach every replica at once and lift cleanly;
//! with the database gone, cached answers are served up to the staleness
//! limit, everything else fails closed, readiness says so, and all recovers.

use std::time::Duration;

use tonic::{Code, Request};
use uuid::Uuid;
use velro_authz::{
    proto::{self, Decision},
    support::duration::HumanDuration,
};

use crate::common::{
    Db, TestServer, eventually, fixture::authorize, proxy::Proxy, settings, world_server,
};
use crate::on_both_databases;

const ADMIN: &str = "emergency-admin-token";

fn admin<T>(message: T) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("x-velro-admin-token", ADMIN.parse().unwrap());
    request
}

async fn set(server: &TestServer, scope: &str, reason: &str) -> proto::KillSwitchesResponse {
    server
        .client
        .clone()
        .set_kill_switch(admin(proto::SetKillSwitchRequest {
            scope: scope.into(),
            reason: reason.into(),
            set_by: "oncall@velro.test".into(),
        }))
        .await
        .unwrap_or_else(|e| panic!("SetKillSwitch {scope}: {e}"))
        .into_inner()
}

async fn clear(server: &TestServer, scope: &str) -> bool {
    server
        .client
        .clone()
        .clear_kill_switch(admin(proto::ClearKillSwitchRequest {
            scope: scope.into(),
            set_by: "oncall@velro.test".into(),
        }))
        .await
        .unwrap_or_else(|e| panic!("ClearKillSwitch {scope}: {e}"))
        .into_inner()
        .changed
}

/// Waits (up to 5 s) until `request` gets `reason` on every replica.
async fn until_reason(replicas: &[&TestServer], request: &proto::AuthorizeRequest, reason: &str) {
    for server in replicas {
        eventually(Duration::from_secs(5), reason, || async {
            let r = server.decide(request.clone()).await;
            match r.reason == reason {
                true => Ok(()),
                false => Err(format!("{} ({})", r.reason, r.message)),
            }
        })
        .await;
    }
}

async fn kill_switches(kind: Db) {
    let break_glass = Uuid::new_v4();
    let (db, w, a) = world_server(kind, |s| {
        s.admin_token = Some(ADMIN.into());
        s.change_poll = HumanDuration(Duration::from_millis(50));
    })
    .await;
    let mut s = settings(&db.url);
    s.admin_token = Some(ADMIN.into());
    s.change_poll = HumanDuration(Duration::from_millis(50));
    s.emergency.break_glass = vec![w.admin, break_glass];
    let b = TestServer::start(s).await;
    let replicas = [&a, &b];
    let viewer_reads = authorize(w.viewer, "read", "project", w.team.project);
    let admin_reads = authorize(w.admin, "read", "project", w.team.project);
    let outsider_public = authorize(w.outsider, "read", "project", w.public.project);
    for server in replicas {
        assert_eq!(
            server.decide(viewer_reads.clone()).await.reason,
            "TEAM_ROLE"
        );
    }

    // Global lockdown: every replica denies, the break-glass list of each
    // replica's own configuration excepted.
    let stored = set(&a, "global", "incident 42").await;
    assert_eq!(stored.switches.len(), 1);
    assert_eq!(stored.switches[0].scope, "global");
    until_reason(&replicas, &viewer_reads, "LOCKDOWN_GLOBAL").await;
    let r = b.decide(viewer_reads.clone()).await;
    assert_eq!(r.decision(), Decision::Deny);
    assert_eq!(r.decided_by, "emergency");
    assert_eq!(r.decided_by_layer, 9);
    assert!(r.message.contains("incident 42"), "{}", r.message);
    assert!(r.message.contains("oncall@velro.test"), "{}", r.message);
    assert_eq!(
        b.decide(admin_reads.clone()).await.decision(),
        Decision::Allow,
        "break glass"
    );
    assert_eq!(
        a.decide(admin_reads.clone()).await.reason,
        "LOCKDOWN_GLOBAL",
        "a has no list"
    );
    assert!(clear(&b, "global").await);
    until_reason(&replicas, &viewer_reads, "TEAM_ROLE").await;
    assert!(!clear(&b, "global").await, "nothing left to lift");

    // A team: its projects are refused. Another team's switch (set first,
    // kept) does not touch them.
    let (team, other) = (w.data.teams[0].id, w.data.teams[1].id);
    set(&b, &format!("team:{other}"), "").await;
    set(&b, &format!("team:{team}"), "").await;
    until_reason(&replicas, &viewer_reads, "LOCKDOWN_TEAM").await;
    assert!(clear(&a, &format!("team:{team}")).await);
    until_reason(&replicas, &viewer_reads, "TEAM_ROLE").await;
    assert!(clear(&a, &format!("team:{other}")).await);

    // A user: everything of theirs, public read included.
    set(&a, &format!("user:{}", w.outsider), "compromised").await;
    until_reason(&replicas, &outsider_public, "LOCKDOWN_USER").await;
    assert_eq!(a.decide(viewer_reads.clone()).await.reason, "TEAM_ROLE");
    clear(&a, &format!("user:{}", w.outsider)).await;
    until_reason(&replicas, &outsider_public, "PUBLIC_VISIBILITY").await;

    // Bad scopes and missing credentials are refused with a reason.
    let bad = a
        .client
        .clone()
        .set_kill_switch(admin(proto::SetKillSwitchRequest {
            scope: "team:not-a-uuid".into(),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(bad.message().contains("team:<uuid>"), "{}", bad.message());
    let anonymous = a
        .client
        .clone()
        .list_kill_switches(proto::ListKillSwitchesRequest {})
        .await
        .unwrap_err();
    assert_eq!(anonymous.code(), Code::Unauthenticated);

    // Every change is in the audit log.
    let events = eventually(Duration::from_secs(5), "8 admin events", || async {
        let events = a
            .client
            .clone()
            .query_audit(admin(proto::QueryAuditRequest {
                target: Some(proto::query_audit_request::Target::Subject(
                    "oncall@velro.test".into(),
                )),
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner()
            .events;
        match events.len() {
            8 => Ok(events),
            n => Err(format!("{n} events")),
        }
    })
    .await;
    let count = |verb: &str| events.iter().filter(|e| e.decision == verb).count();
    assert_eq!(
        (count("kill_switch_set"), count("kill_switch_cleared")),
        (4, 4)
    );
    assert!(events.iter().all(|e| e.kind == "admin"));
    a.stop().await;
    b.stop().await;
}
on_both_databases!(kill_switches_reach_every_replica, kill_switches);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_database_degrades_to_cached_answers_then_recovers() {
    let proxy = Proxy::postgres().await;
    let (_db, w, server) = world_server(Db::Postgres, |s| {
        s.database_url = proxy.route(&s.database_url);
        s.db_acquire_timeout = HumanDuration(Duration::from_millis(300));
        s.change_poll = HumanDuration(Duration::from_millis(50));
        s.cache_max_lag = HumanDuration(Duration::from_secs(2));
    })
    .await;
    let cached = authorize(w.viewer, "read", "project", w.team.project);
    let uncached = authorize(w.editor, "read", "project", w.team.project);
    let mut client = server.client.clone();
    for _ in 0..2 {
        assert_eq!(
            server.decide(cached.clone()).await.decision(),
            Decision::Allow
        );
    }
    assert_eq!(server.ops_get("/ready").await.0, 200);
    let breaker = "velro_authz_breaker_state{dependency=\"database\"}";
    assert_eq!(server.metric(breaker).await, 0.0);

    proxy.cut();
    let cut_at = tokio::time::Instant::now();
    let r = server.decide(cached.clone()).await;
    assert_eq!(
        r.decision(),
        Decision::Allow,
        "a cached answer is still served"
    );
    assert_eq!(r.source(), proto::PermissionSource::InProcessCache);
    let e = client.authorize(uncached.clone()).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    // Readiness flips once the breaker opens (the change-log reads fail).
    let body = eventually(Duration::from_secs(5), "unready", || async {
        match server.ops_get("/ready").await {
            (503, body) => Ok(body),
            (status, body) => Err(format!("{status} {body}")),
        }
    })
    .await;
    assert!(body.contains("degraded"), "{body}");
    assert!(server.metric(breaker).await >= 1.0);
    assert_eq!(server.metric("velro_authz_degraded").await, 1.0);
    // Fail fast while the breaker is open: no waiting on the pool.
    let started = tokio::time::Instant::now();
    let e = client.authorize(uncached.clone()).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable);
    assert!(
        started.elapsed() < Duration::from_millis(250),
        "{:?}",
        started.elapsed()
    );
    // Past the staleness limit even the cached answer is refused.
    tokio::time::sleep_until(cut_at + Duration::from_millis(2_500)).await;
    let e = client.authorize(cached.clone()).await.unwrap_err();
    assert_eq!(
        e.code(),
        Code::Unavailable,
        "stale answers are not served: {e:?}"
    );

    proxy.restore();
    eventually(Duration::from_secs(10), "recovered", || async {
        let ready = server.ops_get("/ready").await;
        let answered = client.clone().authorize(uncached.clone()).await;
        match (ready.0, answered) {
            (200, Ok(_)) => Ok(()),
            (status, answer) => Err(format!("ready {status}, answer {answer:?}")),
        }
    })
    .await;
    assert_eq!(server.metric(breaker).await, 0.0);
    assert_eq!(server.decide(cached).await.decision(), Decision::Allow);
    server.stop().await;
}
