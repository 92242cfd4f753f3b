//! An audit trail that loses nothing: text that could not be stored is
//! refused at the edge, an event the database refuses is dead-lettered
//! while every other one lands, events answered during a database outage
//! survive a SIGKILL, and security events are audit events.

use std::{path::PathBuf, time::Duration};

use tonic::{Code, Request};
use uuid::Uuid;
use velro_authz::{
    audit::AuditEvent,
    proto::{self, Decision, authenticate_request::Credentials},
    support::duration::HumanDuration,
};

use crate::common::{
    Db, TestDb, eventually,
    fixture::{World, audit_event, authorize, item},
    login::{ADMIN_TOKEN, PASSWORD, auth_server},
    process::{connect, free_port, serve},
    proxy::Proxy,
    world_server,
};
use crate::ext_authz::{ask, check};

fn with_context(
    mut request: proto::AuthorizeRequest,
    context: proto::RequestContext,
) -> proto::AuthorizeRequest {
    request.context = Some(context);
    request
}

/// An admin RPC's request with the admin token.
fn admin<T>(message: T) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("x-velro-admin-token", ADMIN_TOKEN.parse().unwrap());
    request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_that_cannot_be_stored_is_refused_at_the_edge() {
    let w = auth_server(Db::Postgres, |_| {}).await;
    let world = &w.world;
    let mut client = w.server.client.clone();
    let query = || authorize(world.viewer, "read", "project", world.team.project);
    let contexts = [
        (
            "context.request_id",
            proto::RequestContext {
                request_id: "req\0poison".into(),
                ..Default::default()
            },
        ),
        (
            "context.session_id",
            proto::RequestContext {
                session_id: "s\0".into(),
                ..Default::default()
            },
        ),
        (
            "context.user_agent",
            proto::RequestContext {
                user_agent: "agent\u{1b}[31m".into(),
                ..Default::default()
            },
        ),
        (
            "context.attributes",
            proto::RequestContext {
                attributes: [("k".to_owned(), "v\nforged".to_owned())].into(),
                ..Default::default()
            },
        ),
    ];
    for (field, context) in contexts {
        let e = client
            .authorize(with_context(query(), context.clone()))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{field}: {e:?}");
        assert!(e.message().starts_with(field), "{field}: {}", e.message());
        let e = client
            .batch_authorize(proto::BatchAuthorizeRequest {
                items: vec![item(world.viewer, "read", "project", world.team.project)],
                context: Some(context),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "batch {field}: {e:?}");
    }
    let e = w
        .authenticate(Credentials::Password(proto::PasswordCredentials {
            email: "user\0@velro.test".into(),
            password: PASSWORD.into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().starts_with("password.email"), "{}", e.message());
    let e = client
        .set_kill_switch(admin(proto::SetKillSwitchRequest {
            scope: "global".into(),
            reason: "drill\0".into(),
            set_by: "ops".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    let e = client
        .query_audit(admin(proto::QueryAuditRequest {
            target: Some(proto::query_audit_request::Target::Subject("a\0".into())),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(
        !e.message().contains("invalid byte sequence"),
        "no database text: {}",
        e.message()
    );
    let path = format!("/v1/projects/{}", world.team.project);
    let answer = ask(&w, check("GET", &path, &[("x-request-id", "r\0")])).await;
    assert_eq!(answer.status, 400);

    // What was answered is stored, and nothing was refused later.
    for _ in 0..3 {
        let r = w.server.decide(query()).await;
        assert_eq!(r.decision(), Decision::Allow);
    }
    let decisions = eventually(Duration::from_secs(10), "3 decision rows", || async {
        let events = w.db.audit_events().await;
        let n = events.iter().filter(|e| e.kind == "decision").count();
        match n {
            3 => Ok(n),
            n => Err(format!("{n} rows")),
        }
    })
    .await;
    assert_eq!(decisions, 3);
    assert_eq!(
        w.server
            .metric("velro_authz_audit_events_dead_lettered_total")
            .await,
        0.0
    );
    w.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poisoned_spill_file_is_dead_lettered_and_every_other_event_lands() {
    let dir = tempfile::tempdir().unwrap();
    let spill = dir.path().join("audit.spill");
    // A spill file left by an earlier run: good events, one the database
    // refuses (a NUL in its text), one line torn by a crash.
    let good: Vec<AuditEvent> = (0..5)
        .map(|i| audit_event("spilled", &format!("ok-{i}")))
        .collect();
    let poisoned = audit_event("spilled", "poison\0here");
    let mut text = String::new();
    for e in &good[..3] {
        text.push_str(&serde_json::to_string(e).unwrap());
        text.push('\n');
    }
    text.push_str(&serde_json::to_string(&poisoned).unwrap());
    text.push('\n');
    text.push_str("{\"id\": \"torn");
    text.push('\n');
    for e in &good[3..] {
        text.push_str(&serde_json::to_string(e).unwrap());
        text.push('\n');
    }
    std::fs::write(&spill, text).unwrap();

    let path = spill.clone();
    let (db, _w, server) = world_server(Db::Postgres, move |s| {
        s.audit.spill_path = path;
        s.audit.replay_every = HumanDuration(Duration::from_millis(100));
    })
    .await;
    let landed = eventually(Duration::from_secs(10), "5 replayed rows", || async {
        let events = db.audit_events().await;
        let spilled: Vec<AuditEvent> = events
            .into_iter()
            .filter(|e| e.subject == "spilled")
            .collect();
        match spilled.len() {
            5 => Ok(spilled),
            n => Err(format!("{n} rows")),
        }
    })
    .await;
    let mut ids: Vec<Uuid> = landed.iter().map(|e| e.id).collect();
    ids.sort();
    let mut expected: Vec<Uuid> = good.iter().map(|e| e.id).collect();
    expected.sort();
    assert_eq!(ids, expected, "every good event, once");
    server
        .metric_reaches("velro_authz_audit_events_dead_lettered_total", 2.0)
        .await;
    let dead = std::fs::read_to_string(dir.path().join("audit.spill.dead")).unwrap();
    let lines: Vec<serde_json::Value> = dead
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{dead}");
    assert!(
        lines
            .iter()
            .any(|l| l["event"]["id"] == poisoned.id.to_string())
    );
    assert!(
        lines
            .iter()
            .any(|l| l["line"].as_str().is_some_and(|t| t.contains("torn")))
    );
    assert!(
        lines
            .iter()
            .all(|l| l["reason"].as_str().is_some_and(|r| !r.is_empty()))
    );
    // The replay is done: nothing stays stuck for the next one.
    eventually(Duration::from_secs(5), "spill files gone", || async {
        let left: Vec<PathBuf> = ["audit.spill", "audit.spill.replaying"]
            .iter()
            .map(|n| dir.path().join(n))
            .filter(|p| p.exists())
            .collect();
        match left.is_empty() {
            true => Ok(()),
            false => Err(format!("{left:?}")),
        }
    })
    .await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_answered_during_an_outage_survive_a_sigkill() {
    let db = TestDb::create(Db::Postgres).await;
    let world = World::new();
    db.store().await.insert_dataset(&world.data).await.unwrap();
    let proxy = Proxy::postgres().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("velro.toml");
    let spill = dir.path().join("audit.spill");
    std::fs::write(
        &config,
        format!(
            "[audit]\nspill_path = {:?}\nfsync = \"batch\"\nreplay_every = \"100ms\"\n",
            spill.display().to_string()
        ),
    )
    .unwrap();
    let url = proxy.route(&db.url);
    let (grpc, ops) = (free_port(), free_port());
    let mut server = serve(&config, &url, grpc, ops, &[]);
    let mut client = connect(grpc).await;
    let users = [
        world.viewer,
        world.editor,
        world.admin,
        world.owner,
        world.creator,
    ];
    let request = |i: usize| {
        authorize(
            users[i % users.len()],
            "read",
            "project",
            world.team.project,
        )
    };
    // Warm: these answers are cached, so they are served through the outage.
    for i in 0..users.len() {
        client.authorize(request(i)).await.unwrap();
    }
    proxy.cut();
    const DURING: usize = 300;
    for i in 0..DURING {
        let r = client.authorize(request(i)).await.unwrap().into_inner();
        assert_eq!(r.decision(), Decision::Allow);
    }
    // The writer has moved its queue to the spill file by now; then the
    // process dies without any chance to flush.
    tokio::time::sleep(Duration::from_millis(500)).await;
    server.kill().await.unwrap();
    proxy.restore();
    let (grpc, ops) = (free_port(), free_port());
    let mut restarted = serve(&config, &url, grpc, ops, &[]);
    let total = users.len() + DURING;
    let rows = eventually(Duration::from_secs(30), "every decision stored", || async {
        let n = db
            .audit_events()
            .await
            .iter()
            .filter(|e| e.kind == "decision")
            .count();
        match n {
            n if n >= total => Ok(n),
            n => Err(format!("{n} of {total} rows")),
        }
    })
    .await;
    assert_eq!(rows, total, "each decision exactly once");
    restarted.kill().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn security_events_are_audit_events() {
    let w = auth_server(Db::Postgres, |s| {
        s.login_free_failures = 1;
    })
    .await;
    let world = &w.world;
    let ok = w.login(world.viewer, PASSWORD).await.unwrap();
    let pair = ok.tokens.clone().unwrap();
    let session = ok.principal.clone().unwrap().session_id;
    // Wrong passwords until the account is throttled.
    let mut failed = 0;
    let throttled = loop {
        let e = w.login(world.editor, "wrong password").await.unwrap_err();
        match e.code() {
            Code::Unauthenticated if failed < 5 => failed += 1,
            _ => break e,
        }
    };
    assert_eq!(throttled.code(), Code::ResourceExhausted, "{throttled:?}");
    assert!(failed >= 1);
    assert_eq!(
        w.login(world.disabled, PASSWORD).await.unwrap_err().code(),
        Code::PermissionDenied
    );
    // A refresh, then the same refresh token again (long after the grace):
    // a stolen copy, its session revoked.
    let refreshed = w
        .authenticate(Credentials::RefreshToken(pair.refresh_token.clone()))
        .await
        .unwrap();
    assert!(refreshed.tokens.is_some());
    tokio::time::sleep(Duration::from_millis(2_200)).await;
    let reused = w
        .authenticate(Credentials::RefreshToken(pair.refresh_token.clone()))
        .await
        .unwrap_err();
    assert_eq!(reused.code(), Code::Unauthenticated);
    // Bad bearer tokens wherever they are presented.
    let mut client = w.server.client.clone();
    let mut bad = authorize(world.viewer, "read", "project", world.team.project);
    bad.user_id.clear();
    bad.subject_token = "not-a-token".into();
    assert_eq!(
        client.authorize(bad).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    let mut bad_item = item(world.viewer, "read", "project", world.team.project);
    bad_item.user_id.clear();
    bad_item.subject_token = "not-a-token-either".into();
    client
        .batch_authorize(proto::BatchAuthorizeRequest {
            items: vec![bad_item],
            ..Default::default()
        })
        .await
        .unwrap();
    let path = format!("/v1/projects/{}", world.team.project);
    let answer = ask(
        &w,
        check("GET", &path, &[("authorization", "Bearer forged")]),
    )
    .await;
    assert_eq!(answer.status, 401);

    let expected = [
        ("login_succeeded", 1),
        ("login_failed", failed),
        ("login_throttled", 1),
        ("login_disabled", 1),
        ("token_refreshed", 1),
        ("refresh_reused", 1),
        ("token_rejected", 3),
    ];
    let events = eventually(Duration::from_secs(10), "every security event", || async {
        let events: Vec<AuditEvent> =
            w.db.audit_events()
                .await
                .into_iter()
                .filter(|e| e.kind == "auth")
                .collect();
        let counts: Vec<(&str, usize)> = expected
            .iter()
            .map(|(d, _)| (*d, events.iter().filter(|e| e.decision == *d).count()))
            .collect();
        match counts
            .iter()
            .zip(&expected)
            .all(|((_, n), (_, want))| n == want)
        {
            true => Ok(events),
            false => Err(format!("{counts:?}")),
        }
    })
    .await;
    let success = events
        .iter()
        .find(|e| e.decision == "login_succeeded")
        .unwrap();
    assert_eq!(success.subject, world.viewer.to_string());
    assert_eq!(success.session_id, session);
    assert_eq!(success.client_ip, "192.0.2.10");
    assert_eq!(success.user_agent, "velro-tests/1");
    let failed = events
        .iter()
        .find(|e| e.decision == "login_failed")
        .unwrap();
    assert_eq!(failed.subject, w.email(world.editor), "the email as given");
    let reuse = events
        .iter()
        .find(|e| e.decision == "refresh_reused")
        .unwrap();
    assert_eq!(reuse.session_id, session, "names the session it revoked");
    assert_eq!(reuse.reason, "SESSION_REVOKED");
    w.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_rpcs_are_audited() {
    let (db, _w, server) = world_server(Db::Sqlite, |s| {
        s.admin_token = Some(ADMIN_TOKEN.into());
    })
    .await;
    let mut client = server.client.clone();
    client
        .list_kill_switches(admin(proto::ListKillSwitchesRequest {}))
        .await
        .unwrap();
    client
        .query_audit(admin(proto::QueryAuditRequest {
            target: Some(proto::query_audit_request::Target::Subject(
                "someone".into(),
            )),
            ..Default::default()
        }))
        .await
        .unwrap();
    let mut wrong = Request::new(proto::ListKillSwitchesRequest {});
    wrong
        .metadata_mut()
        .insert("x-velro-admin-token", "guess".parse().unwrap());
    assert_eq!(
        client.list_kill_switches(wrong).await.unwrap_err().code(),
        Code::PermissionDenied
    );
    let verbs = ["kill_switches_listed", "audit_queried", "admin_refused"];
    eventually(Duration::from_secs(10), "admin events", || async {
        let events = db.audit_events().await;
        let seen: Vec<usize> = verbs
            .iter()
            .map(|v| {
                events
                    .iter()
                    .filter(|e| e.kind == "admin" && e.decision == *v)
                    .count()
            })
            .collect();
        match seen == [1, 1, 1] {
            true => Ok(()),
            false => Err(format!("{seen:?}")),
        }
    })
    .await;
    server.stop().await;
}
