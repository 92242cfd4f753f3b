//! Password logins, refresh rotation, sessions, throttling, isolation of
//! logins from decisions, Authorize by bearer token, JWKS, and the CLI.

use std::time::Duration;

use futures::future::join_all;
use tonic::Code;
use velro_authz::proto::{
    self, Decision, authenticate_request::Credentials, revoke_sessions_request::Target,
};

use crate::{
    common::{
        Db,
        login::{AuthWorld, PASSWORD, auth_server},
    },
    on_both_databases,
};

async fn login_and_sessions(kind: Db) {
    let w = auth_server(kind, |s| {
        s.refresh_reuse_grace =
            velro_authz::support::duration::HumanDuration(Duration::from_millis(300));
    })
    .await;
    let world = &w.world;

    // Success: a principal with the user's teams, and a token pair.
    let ok = w.login(world.viewer, PASSWORD).await.unwrap();
    let principal = ok.principal.unwrap();
    assert_eq!(principal.user_id, world.viewer.to_string());
    assert_eq!(principal.email, w.email(world.viewer));
    assert!(!principal.session_id.is_empty());
    assert_eq!(principal.teams.len(), 1);
    assert_eq!(principal.teams[0].role, "viewer");
    let tokens = ok.tokens.unwrap();
    assert!(tokens.refresh_token.starts_with("vrt_"));
    let verified = w.verify(&tokens.access_token).await.unwrap();
    assert_eq!(verified.session_id, principal.session_id);

    // Wrong password and unknown email: the same status and message.
    let wrong = w.login(world.viewer, "not the password").await.unwrap_err();
    let unknown = w
        .authenticate(Credentials::Password(proto::PasswordCredentials {
            email: "nobody@velro.test".into(),
            password: PASSWORD.into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(wrong.code(), Code::Unauthenticated);
    assert_eq!(
        (wrong.code(), wrong.message()),
        (unknown.code(), unknown.message())
    );

    // A disabled user cannot log in; no credentials at all is invalid.
    let disabled = w.login(world.disabled, PASSWORD).await.unwrap_err();
    assert_eq!(disabled.code(), Code::PermissionDenied, "{disabled:?}");
    let none = w
        .server
        .client
        .clone()
        .authenticate(proto::AuthenticateRequest::default())
        .await
        .unwrap_err();
    assert_eq!(none.code(), Code::InvalidArgument);

    // Refresh: the old token dies, a new pair works.
    let second = w
        .authenticate(Credentials::RefreshToken(tokens.refresh_token.clone()))
        .await
        .unwrap();
    let second_tokens = second.tokens.unwrap();
    assert_ne!(second_tokens.refresh_token, tokens.refresh_token);
    assert_eq!(second.principal.unwrap().session_id, principal.session_id);
    w.verify(&second_tokens.access_token).await.unwrap();

    // Reuse of the old refresh token (after the race grace) revokes the
    // whole session at once.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let reuse = w
        .authenticate(Credentials::RefreshToken(tokens.refresh_token.clone()))
        .await
        .unwrap_err();
    assert_eq!(reuse.code(), Code::Unauthenticated);
    assert!(reuse.message().contains("already used"), "{reuse:?}");
    let dead = w.verify(&second_tokens.access_token).await.unwrap_err();
    assert_eq!(dead.code(), Code::Unauthenticated, "{dead:?}");
    let dead = w
        .authenticate(Credentials::RefreshToken(second_tokens.refresh_token))
        .await
        .unwrap_err();
    assert_eq!(dead.code(), Code::Unauthenticated);

    // Two concurrent refreshes with one token: exactly one wins.
    let fresh = w.tokens(world.editor).await;
    let twice = join_all(
        (0..2).map(|_| w.authenticate(Credentials::RefreshToken(fresh.refresh_token.clone()))),
    )
    .await;
    let wins: Vec<_> = twice.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(wins.len(), 1, "{twice:?}");
    let lost = twice.iter().find_map(|r| r.as_ref().err()).unwrap();
    assert_eq!(lost.code(), Code::Unauthenticated);
    // A race within the grace does not revoke the winner's session.
    let winner = wins[0].tokens.as_ref().unwrap();
    w.verify(&winner.access_token).await.unwrap();

    // Admin revocation of one session and of all of a user's.
    let a = w.tokens(world.admin).await;
    let b = w.tokens(world.admin).await;
    let sid = w.verify(&a.access_token).await.unwrap().session_id;
    assert_eq!(w.revoke(Target::SessionId(sid.clone())).await.unwrap(), 1);
    assert_eq!(
        w.verify(&a.access_token).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    w.verify(&b.access_token).await.unwrap();
    assert_eq!(
        w.revoke(Target::UserId(world.admin.to_string()))
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        w.verify(&b.access_token).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    w.server.stop().await;
}
on_both_databases!(login_refresh_and_sessions, login_and_sessions);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_rpc_needs_the_admin_token() {
    let w = auth_server(Db::Sqlite, |_| {}).await;
    let request = proto::RevokeSessionsRequest {
        target: Some(Target::UserId(w.world.owner.to_string())),
    };
    let missing = w
        .server
        .client
        .clone()
        .revoke_sessions(request.clone())
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::Unauthenticated);
    let mut wrong = tonic::Request::new(request);
    wrong
        .metadata_mut()
        .insert("x-velro-admin-token", "guess".parse().unwrap());
    let wrong = w
        .server
        .client
        .clone()
        .revoke_sessions(wrong)
        .await
        .unwrap_err();
    assert_eq!(wrong.code(), Code::PermissionDenied);
    w.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rehash_on_parameter_change_and_disabling_ends_sessions() {
    // Stored hashes use m=1024; this server wants m=2048.
    let w = auth_server(Db::Postgres, |s| {
        s.argon2_memory_kib = 2048;
        s.token_cache_ttl =
            velro_authz::support::duration::HumanDuration(Duration::from_millis(300));
    })
    .await;
    let store = w.db.store().await;
    let email = w.email(w.world.owner);
    let stored_hash = || async {
        let credentials = store.credentials(&email).await.unwrap().unwrap();
        credentials.password_hash.unwrap()
    };
    let before = stored_hash().await;
    assert!(before.contains("m=1024"), "{before}");
    let tokens = w.tokens(w.world.owner).await;
    let after = stored_hash().await;
    assert!(after.contains("m=2048"), "rehashed on login: {after}");
    w.login(w.world.owner, PASSWORD).await.unwrap();

    // Disabling by plain SQL (as the application's backend would) ends the
    // sessions through the trigger; the cached token lapses within the TTL.
    w.verify(&tokens.access_token).await.unwrap();
    w.db.execute(&format!(
        "UPDATE users SET disabled = TRUE WHERE id = '{}'",
        w.world.owner
    ))
    .await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let denied = w.verify(&tokens.access_token).await.unwrap_err();
    assert_eq!(denied.code(), Code::Unauthenticated, "{denied:?}");
    let session = uuid::Uuid::parse_str(
        &w.verify(&w.tokens(w.world.viewer).await.access_token)
            .await
            .unwrap()
            .session_id,
    )
    .unwrap();
    assert!(!store.session_state(session).await.unwrap().unwrap().revoked);
    w.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_are_throttled_then_the_user_gets_in() {
    let w = auth_server(Db::Sqlite, |s| {
        s.login_free_failures = 3;
        s.login_base_delay =
            velro_authz::support::duration::HumanDuration(Duration::from_millis(500));
    })
    .await;
    let user = w.world.editor;
    for _ in 0..4 {
        let e = w.login(user, "wrong password").await.unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated);
    }
    // Now even the right password waits for the delay.
    let throttled = w.login(user, PASSWORD).await.unwrap_err();
    assert_eq!(throttled.code(), Code::ResourceExhausted, "{throttled:?}");
    assert!(throttled.message().contains("retry in"), "{throttled:?}");
    // Another account from elsewhere is not affected.
    w.login(w.world.viewer, PASSWORD).await.unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    w.login(user, PASSWORD).await.unwrap();
    w.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_storm_does_not_stop_decisions() {
    let w = auth_server(Db::Postgres, |s| {
        s.argon2_memory_kib = 8 * 1024;
        s.password_workers = 1;
        s.password_queue = 8;
    })
    .await;
    let token = w.tokens(w.world.viewer).await.access_token;
    let storm = join_all((0..300).map(|_| w.login(w.world.creator, PASSWORD)));
    let decisions = async {
        let mut client = w.server.client.clone();
        let mut answered = 0;
        for _ in 0..300 {
            let r = client
                .authorize(proto::AuthorizeRequest {
                    subject_token: token.clone(),
                    action: "read".into(),
                    resource: Some(proto::Resource {
                        r#type: "project".into(),
                        id: w.world.team.project.to_string(),
                    }),
                    ..Default::default()
                })
                .await
                .unwrap_or_else(|e| panic!("Authorize during a login storm: {e}"));
            assert_eq!(r.into_inner().decision(), Decision::Allow);
            answered += 1;
        }
        answered
    };
    let (logins, answered) = tokio::join!(storm, decisions);
    assert_eq!(answered, 300);
    let ok = logins.iter().filter(|r| r.is_ok()).count();
    let shed = logins
        .iter()
        .filter(|r| {
            r.as_ref()
                .is_err_and(|e| e.code() == Code::ResourceExhausted)
        })
        .count();
    assert_eq!(ok + shed, 300, "only successes or RESOURCE_EXHAUSTED");
    assert!(
        ok >= 1 && shed >= 1,
        "{ok} logged in, {shed} shed: the queue is bounded"
    );
    w.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorize_by_bearer_token_and_jwks() {
    let w = auth_server(Db::Sqlite, |_| {}).await;
    let token = w.tokens(w.world.viewer).await.access_token;
    let request =
        |subject_token: &str, user_id: &str, kind: &str, id: uuid::Uuid| proto::AuthorizeRequest {
            subject_token: subject_token.into(),
            user_id: user_id.into(),
            action: "read".into(),
            resource: Some(proto::Resource {
                r#type: kind.into(),
                id: id.to_string(),
            }),
            ..Default::default()
        };
    let mut client = w.server.client.clone();
    for (site, allow) in [(w.world.team, true), (w.world.private, false)] {
        let by_token = client
            .authorize(request(&token, "", "project", site.project))
            .await
            .unwrap()
            .into_inner();
        let by_id = client
            .authorize(request(
                "",
                &w.world.viewer.to_string(),
                "project",
                site.project,
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(by_token.decision() == Decision::Allow, allow);
        assert_eq!(by_token.permissions, by_id.permissions);
    }
    let both = client
        .authorize(request(
            &token,
            &w.world.viewer.to_string(),
            "project",
            w.world.team.project,
        ))
        .await
        .unwrap_err();
    assert_eq!(both.code(), Code::InvalidArgument);
    let bad = client
        .authorize(request("not.a.token", "", "project", w.world.team.project))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::Unauthenticated);

    // Batch items may carry tokens; a bad one fails only its item.
    let item = |t: &str| proto::BatchItem {
        subject_token: t.into(),
        action: "read".into(),
        resource: Some(proto::Resource {
            r#type: "generation".into(),
            id: w.world.team.generation.to_string(),
        }),
        ..Default::default()
    };
    let results = client
        .batch_authorize(proto::BatchAuthorizeRequest {
            items: vec![item(&token), item("garbage")],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .results;
    match (&results[0].outcome, &results[1].outcome) {
        (
            Some(proto::batch_result::Outcome::Response(r)),
            Some(proto::batch_result::Outcome::Error(e)),
        ) => {
            assert_eq!(r.decision(), Decision::Allow);
            assert_eq!(e.code, Code::Unauthenticated as i32);
        }
        other => panic!("{other:?}"),
    }

    // The JWKS publishes the key that verifies our tokens.
    let (status, body) = w.server.ops_get("/.well-known/jwks.json").await;
    assert_eq!(status, 200);
    let set: jsonwebtoken::jwk::JwkSet = serde_json::from_str(&body).unwrap();
    let header = jsonwebtoken::decode_header(&token).unwrap();
    let jwk = set.find(header.kid.as_deref().unwrap()).unwrap();
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::EdDSA);
    validation.set_audience(&["velro"]);
    jsonwebtoken::decode::<serde_json::Value>(
        &token,
        &jsonwebtoken::DecodingKey::from_jwk(jwk).unwrap(),
        &validation,
    )
    .unwrap();
    w.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_adds_and_disables_users_and_makes_keys() {
    let w: AuthWorld = auth_server(Db::Sqlite, |_| {}).await;
    let bin = env!("CARGO_BIN_EXE_velro-authz");
    let run = |args: &[&str], stdin: &str| {
        use std::io::Write;
        let mut child = std::process::Command::new(bin)
            .args(args)
            .args([
                "--database-url",
                &w.db.url,
                "--argon2-memory-kib",
                "1024",
                "--argon2-iterations",
                "1",
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    };
    let out = run(
        &["user", "add", "--email", "new@velro.test"],
        "a new password\n",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let login = |password: &str| {
        w.authenticate(Credentials::Password(proto::PasswordCredentials {
            email: "new@velro.test".into(),
            password: password.into(),
        }))
    };
    let tokens = login("a new password").await.unwrap().tokens.unwrap();
    let again = run(
        &["user", "add", "--email", "new@velro.test"],
        "another password\n",
    );
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));

    let out = run(&["user", "disable", "--email", "new@velro.test"], "");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        login("a new password").await.unwrap_err().code(),
        Code::PermissionDenied
    );
    let refresh = w
        .authenticate(Credentials::RefreshToken(tokens.refresh_token))
        .await
        .unwrap_err();
    assert_eq!(
        refresh.code(),
        Code::Unauthenticated,
        "disabling ended the session"
    );

    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("k.pem");
    let out = run(&["keys", "generate", "--out", key.to_str().unwrap()], "");
    assert!(out.status.success());
    assert!(
        std::fs::read_to_string(&key)
            .unwrap()
            .contains("BEGIN PRIVATE KEY")
    );
    let refuse = run(&["keys", "generate", "--out", key.to_str().unwrap()], "");
    assert!(!refuse.status.success(), "never overwrites a key");
    w.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_warms_the_cache_for_the_first_requests() {
    let w = auth_server(Db::Postgres, |_| {}).await;
    let warmed = "velro_authz_cache_lookups_total{tier=\"warming\",result=\"warmed\"}";
    assert_eq!(w.server.metric(warmed).await, 0.0);
    w.tokens(w.world.viewer).await;
    // Warming computes its sets one after another: wait until it has
    // warmed some and then stopped (the count steady for three polls).
    let (mut done, mut last, mut steady) = (false, 0.0, 0);
    for _ in 0..100 {
        let now = w.server.metric(warmed).await;
        steady = if now == last { steady + 1 } else { 0 };
        last = now;
        if now >= 1.0 && steady >= 3 {
            done = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        done,
        "warming ran after the login and finished ({last} sets)"
    );
    let first = w
        .server
        .decide(crate::common::fixture::authorize(
            w.world.viewer,
            "read",
            "project",
            w.world.team.project,
        ))
        .await;
    assert_eq!(first.decision(), Decision::Allow);
    assert_eq!(
        first.source(),
        proto::PermissionSource::InProcessCache,
        "the first request after login hits"
    );
    assert!(
        w.server
            .metric("velro_authz_change_log_applied_revision")
            .await
            > 0.0
    );
    assert_eq!(
        w.server
            .metric("velro_authz_breaker_state{dependency=\"database\"}")
            .await,
        0.0,
        "the database breaker stayed closed"
    );
    w.server.stop().await;
}

/// With a bearer token and no `context.session_id`, the security context layer
/// checks the token's own session (started from 192.0.2.10 by the login).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_session_is_checked_by_the_security_context() {
    let w = auth_server(Db::Sqlite, |s| {
        s.security_context.session_network_change =
            velro_authz::layers::security_context::ChangePolicy::Deny;
    })
    .await;
    let token = w.tokens(w.world.viewer).await.access_token;
    let from = |ip: &str| proto::AuthorizeRequest {
        subject_token: token.clone(),
        action: "read".into(),
        resource: Some(proto::Resource {
            r#type: "project".into(),
            id: w.world.team.project.to_string(),
        }),
        context: Some(proto::RequestContext {
            ip: ip.into(),
            user_agent: "velro-tests/1".into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let same = w.server.decide(from("192.0.2.99")).await;
    assert_eq!(same.decision(), Decision::Allow, "{same:?}");
    let moved = w.server.decide(from("198.51.100.7")).await;
    assert_eq!(moved.decision(), Decision::Deny, "{moved:?}");
    assert_eq!(moved.reason, "SESSION_NETWORK_CHANGED");
    w.server.stop().await;
}
