//! Shadow mode and gradual rollout of the guards, and ext_authz's dry run:
//! a would-deny is let through and recorded in the metric, the response's
//! flags and the audit log; a share of subjects is enforced, always the same
//! ones, and the share changes with the config file, without a restart.

use std::{collections::BTreeSet, time::Duration};

use uuid::Uuid;
use velro_authz::{
    audit::AuditFilter,
    engine::rollout::{Mode, RolloutConfig},
    proto::{self, Decision},
};

use crate::{
    common::{Db, eventually, fixture::authorize, login::auth_server, world_server},
    ext_authz::{ask, check},
};

/// A request from a client whose user agent the security context refuses.
fn from_curl(mut request: proto::AuthorizeRequest) -> proto::AuthorizeRequest {
    request.context = Some(proto::RequestContext {
        ip: "192.0.2.1".into(),
        user_agent: "curl/8.5".into(),
        ..Default::default()
    });
    request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guard_in_shadow_mode_lets_the_request_through_and_records_the_would_deny() {
    let (db, w, server) = world_server(Db::Postgres, |s| {
        s.security_context.user_agent_deny = vec!["^curl/".into()];
        s.rollout.security_context = Mode::Shadow;
    })
    .await;
    let owner_from_curl = || from_curl(authorize(w.owner, "read", "project", w.team.project));
    let r = server.decide(owner_from_curl()).await;
    assert_eq!(r.decision(), Decision::Allow, "{r:?}");
    assert_eq!(r.decided_by, "ownership");
    assert_eq!(r.flags, ["would_deny:security_context"], "{r:?}");
    server
        .metric_reaches(
            "velro_authz_shadow_denials_total{layer=\"security_context\",reason=\"USER_AGENT_DENIED\"}",
            1.0,
        )
        .await;
    let store = db.store().await;
    let owner = w.owner.to_string();
    let events = eventually(Duration::from_secs(10), "the audit event", || async {
        let filter = AuditFilter {
            subject: Some(owner.clone()),
            limit: 10,
            ..Default::default()
        };
        match store.audit_events(&filter).await {
            Ok(events) if !events.is_empty() => Ok(events),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert_eq!(events[0].decision, "allow");
    assert_eq!(events[0].flags, "would_deny:security_context");

    // A rule enforced on its own wins over its layer's shadow mode.
    server.stop().await;
    let mut s = crate::common::settings(&db.url);
    s.security_context.user_agent_deny = vec!["^curl/".into()];
    s.rollout.security_context = Mode::Shadow;
    s.rollout
        .rules
        .insert("USER_AGENT_DENIED".into(), Mode::Enforce);
    let server = crate::common::TestServer::start(s).await;
    let r = server.decide(owner_from_curl()).await;
    assert_eq!(r.decision(), Decision::Deny, "{r:?}");
    assert_eq!(r.reason, "USER_AGENT_DENIED");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_share_of_subjects_is_enforced_always_the_same_and_grows_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("velro.toml");
    let write = |mode: &str| {
        std::fs::write(&file, format!("[rollout]\nsecurity_context = \"{mode}\"\n")).unwrap();
    };
    write("10%");
    let text = std::fs::read_to_string(&file).unwrap();
    let (_db, w, server) = world_server(Db::Sqlite, |s| {
        s.security_context.user_agent_deny = vec!["^curl/".into()];
        s.rollout = RolloutConfig::from_settings_toml(&text).unwrap();
        s.config = Some(file.clone());
    })
    .await;
    // A fixed set of subjects: who is enforced on is a property of each.
    let subjects: Vec<Uuid> = (1..=200u128).map(Uuid::from_u128).collect();
    let enforced = || async {
        let mut enforced = BTreeSet::new();
        for subject in &subjects {
            let r = server
                .decide(from_curl(authorize(
                    *subject,
                    "read",
                    "project",
                    w.team.project,
                )))
                .await;
            if r.decided_by == "security_context" {
                assert_eq!(r.reason, "USER_AGENT_DENIED");
                enforced.insert(*subject);
            } else {
                assert_eq!(r.flags, ["would_deny:security_context"], "{r:?}");
            }
        }
        enforced
    };
    let at_ten = enforced().await;
    // About 10 % (binomial, n = 200: 20 expected, within 3 sigma).
    assert!(
        (8..=33).contains(&at_ten.len()),
        "{} of 200 enforced at 10 %",
        at_ten.len()
    );
    assert_eq!(enforced().await, at_ten, "the same subjects every time");

    write("50%");
    let at_fifty = eventually(Duration::from_secs(15), "the 50 % rollout", || async {
        // Two passes that agree: the reload did not land halfway through.
        let (now, again) = (enforced().await, enforced().await);
        match now.len() > at_ten.len() && now == again {
            true => Ok(now),
            false => Err(format!("{} then {} enforced", now.len(), again.len())),
        }
    })
    .await;
    assert!(
        (80..=120).contains(&at_fifty.len()),
        "{} of 200 enforced at 50 %",
        at_fifty.len()
    );
    assert!(
        at_ten.is_subset(&at_fifty),
        "raising the share only adds subjects"
    );
    let shadowed = server
        .metric(
            "velro_authz_shadow_denials_total{layer=\"security_context\",reason=\"USER_AGENT_DENIED\"}",
        )
        .await;
    assert!(shadowed >= (400 - 2 * at_ten.len()) as f64, "{shadowed}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ext_authz_dry_run_allows_and_says_what_it_would_have_answered() {
    let w = auth_server(Db::Sqlite, |s| {
        s.rollout.ext_authz_dry_run = true;
    })
    .await;
    let path = format!("/v1/generations/{}", w.world.private.generation);
    // No credentials: a 401 without the dry run.
    let answer = ask(&w, check("GET", &path, &[])).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    let header = answer.header("x-velro-authz-dry-run");
    assert!(header.is_some_and(|h| h.starts_with("401 ")), "{answer:?}");
    w.server
        .metric_reaches(
            "velro_authz_shadow_denials_total{layer=\"ext_authz\",reason=\"UNAUTHENTICATED\"}",
            1.0,
        )
        .await;
    let store = w.db.store().await;
    let events = eventually(Duration::from_secs(10), "the dry-run event", || async {
        let filter = AuditFilter {
            resource: Some(("http".into(), path.clone())),
            limit: 10,
            ..Default::default()
        };
        match store.audit_events(&filter).await {
            Ok(events) if !events.is_empty() => Ok(events),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert_eq!(events[0].kind, "ext_authz_dry_run");
    assert_eq!(events[0].resource_id, path);
    assert!(
        events[0].message.contains("would have answered 401"),
        "{:?}",
        events[0]
    );
    w.server.stop().await;
}
