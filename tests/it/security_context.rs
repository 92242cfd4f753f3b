//! Layer 4: network, country, user-agent and session rules deny (never
//! grant), each naming the rule that fired.

use std::time::Duration;

use uuid::Uuid;
use velro_authz::{
    app::config::Settings,
    layers::security_context::{ChangePolicy, GeoEntry, IpRules, TeamRules},
    proto::{self, Decision},
    store::auth::NewSession,
    support::clock::now_unix,
    support::duration::HumanDuration,
};

use crate::{
    common::{
        Db, TestDb, TestServer, eventually, fixture::World, fixture::authorize, settings,
        world_server,
    },
    on_both_databases,
};

fn net(text: &str) -> ipnet::IpNet {
    text.parse().unwrap()
}

fn geo(cidr: &str, country: &str) -> GeoEntry {
    GeoEntry {
        cidr: net(cidr),
        country: country.to_owned(),
    }
}

/// A request from `ip` with `agent` and, when given, `session`.
fn from(
    mut request: proto::AuthorizeRequest,
    ip: &str,
    agent: &str,
    session: &str,
) -> proto::AuthorizeRequest {
    request.context = Some(proto::RequestContext {
        ip: ip.into(),
        user_agent: agent.into(),
        session_id: session.into(),
        ..Default::default()
    });
    request
}

#[track_caller]
fn denied_by_rule(r: &proto::AuthorizeResponse, reason: &str, names: &str) {
    assert_eq!(r.decision(), Decision::Deny, "{r:?}");
    assert_eq!(r.reason, reason, "{r:?}");
    assert_eq!(r.decided_by, "security_context");
    assert_eq!(r.decided_by_layer, 4);
    assert!(
        r.message.contains(names),
        "{:?} should name {names}",
        r.message
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_country_and_agent_rules_name_the_rule_that_fired() {
    let (_db, w, server) = world_server(Db::Sqlite, |s| {
        let rules = &mut s.security_context;
        rules.ip.ip_allow = vec![
            net("192.0.2.0/24"),
            net("198.51.100.0/24"),
            net("203.0.113.0/24"),
        ];
        rules.ip.ip_deny = vec![net("198.51.100.0/24")];
        rules.geo_table = vec![geo("203.0.113.0/25", "FR"), geo("203.0.113.128/25", "KP")];
        rules.country_allow = vec!["FR".into(), "KP".into()];
        rules.country_deny = vec!["KP".into()];
        rules.user_agent_deny = vec!["(?i)sqlmap".into(), "^curl/".into()];
        rules.deny_empty_user_agent = true;
    })
    .await;
    // The project's owner, who would be allowed everything.
    let ask = |ip: &'static str, agent: &'static str| {
        server.decide(from(
            authorize(w.owner, "read", "project", w.team.project),
            ip,
            agent,
            "",
        ))
    };
    let r = ask("203.0.113.5", "velro-web/2").await;
    assert_eq!(r.decision(), Decision::Allow, "{r:?}");
    assert_eq!(r.decided_by, "ownership");
    denied_by_rule(
        &ask("198.51.100.7", "velro-web/2").await,
        "IP_DENIED",
        "198.51.100.0/24",
    );
    denied_by_rule(
        &ask("10.1.2.3", "velro-web/2").await,
        "IP_NOT_ALLOWED",
        "ip_allow",
    );
    denied_by_rule(&ask("", "velro-web/2").await, "IP_UNKNOWN", "no client ip");
    denied_by_rule(
        &ask("203.0.113.200", "velro-web/2").await,
        "COUNTRY_DENIED",
        "KP",
    );
    denied_by_rule(
        &ask("192.0.2.1", "velro-web/2").await,
        "COUNTRY_UNKNOWN",
        "country_allow",
    );
    denied_by_rule(
        &ask("203.0.113.5", "SQLMap/1.7").await,
        "USER_AGENT_DENIED",
        "(?i)sqlmap",
    );
    denied_by_rule(
        &ask("203.0.113.5", "curl/8.1").await,
        "USER_AGENT_DENIED",
        "^curl/",
    );
    denied_by_rule(
        &ask("203.0.113.5", "").await,
        "USER_AGENT_EMPTY",
        "deny_empty_user_agent",
    );
    let counted = server
        .metric(
            "velro_authz_decisions_total{decision=\"deny\",decided_by=\"security_context\",reason=\"USER_AGENT_DENIED\"}",
        )
        .await;
    assert_eq!(counted, 2.0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn country_allow_lists_refuse_other_countries() {
    let (_db, w, server) = world_server(Db::Sqlite, |s| {
        s.security_context.geo_table = vec![geo("203.0.113.0/24", "FR"), geo("192.0.2.0/24", "DE")];
        s.security_context.country_allow = vec!["FR".into()];
    })
    .await;
    let request = |ip| {
        from(
            authorize(w.viewer, "read", "project", w.team.project),
            ip,
            "app",
            "",
        )
    };
    assert_eq!(
        server.decide(request("203.0.113.9")).await.decision(),
        Decision::Allow
    );
    denied_by_rule(
        &server.decide(request("192.0.2.9")).await,
        "COUNTRY_NOT_ALLOWED",
        "DE",
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn team_network_rules_cover_the_team_projects_only() {
    let db = TestDb::create(Db::Sqlite).await;
    let w = World::new();
    db.store().await.insert_dataset(&w.data).await.unwrap();
    // A project of the outsider's own team, which has no rules.
    let elsewhere = Uuid::new_v4();
    let team_b = w.data.teams[1].id;
    db.execute(&format!(
        "INSERT INTO projects (id, owner_id, team_id, visibility) VALUES ('{elsewhere}', '{}', '{team_b}', 'team')",
        w.outsider
    ))
    .await;
    let mut s = settings(&db.url);
    s.security_context.teams = vec![TeamRules {
        team: w.data.teams[0].id,
        ip: IpRules {
            ip_allow: vec![net("192.0.2.0/24")],
            ip_deny: vec![net("192.0.2.66/32")],
        },
    }];
    let server = TestServer::start(s).await;
    let ask = |user, project, ip| {
        server.decide(from(
            authorize(user, "read", "project", project),
            ip,
            "app",
            "",
        ))
    };
    for _ in 0..2 {
        // Twice: the second answer comes from the cache, and still obeys.
        assert_eq!(
            ask(w.viewer, w.team.project, "192.0.2.9").await.decision(),
            Decision::Allow
        );
        let r = ask(w.viewer, w.team.project, "10.0.0.1").await;
        denied_by_rule(&r, "TEAM_IP_NOT_ALLOWED", "ip_allow");
        assert!(r.message.contains(&w.data.teams[0].id.to_string()), "{r:?}");
        denied_by_rule(
            &ask(w.owner, w.public.project, "192.0.2.66").await,
            "TEAM_IP_DENIED",
            "192.0.2.66/32",
        );
        denied_by_rule(
            &ask(w.owner, w.public.project, "").await,
            "TEAM_IP_UNKNOWN",
            "no client ip",
        );
        // Generations and media of the team's projects are covered too.
        let r = server
            .decide(from(
                authorize(w.creator, "read", "media", w.team.media),
                "10.0.0.1",
                "app",
                "",
            ))
            .await;
        denied_by_rule(&r, "TEAM_IP_NOT_ALLOWED", "ip_allow");
        // Another team's project is not.
        let r = ask(w.outsider, elsewhere, "10.0.0.1").await;
        assert_eq!(r.decision(), Decision::Allow, "{r:?}");
    }
    server.stop().await;
}

/// Creates a session for `user` started `age` ago from `ip` with `agent`.
async fn session(db: &TestDb, user: Uuid, ip: &str, agent: &str, age: Duration) -> Uuid {
    let id = Uuid::new_v4();
    db.store()
        .await
        .create_session(NewSession {
            id,
            user_id: user,
            client_ip: ip,
            user_agent: agent,
            now: now_unix() as i64 - age.as_secs() as i64,
            refresh_hash: &format!("test-{id}"),
            refresh_expires_at: i64::MAX,
        })
        .await
        .unwrap();
    id
}

fn with_policies(network: ChangePolicy, agent: ChangePolicy) -> impl FnOnce(&mut Settings) {
    move |s| {
        s.security_context.session_network_change = network;
        s.security_context.session_user_agent_change = agent;
        s.change_poll = HumanDuration(Duration::from_millis(50));
    }
}

async fn sessions(kind: Db) {
    let (db, w, server) =
        world_server(kind, with_policies(ChangePolicy::Flag, ChangePolicy::Flag)).await;
    let s1 = session(&db, w.viewer, "192.0.2.10", "app/1", Duration::ZERO).await;
    let ask = |user, ip: &'static str, agent: &'static str, session: String| {
        server.decide(from(
            authorize(user, "read", "project", w.team.project),
            ip,
            agent,
            &session,
        ))
    };
    let r = ask(w.viewer, "192.0.2.77", "app/1", s1.to_string()).await;
    assert_eq!(r.decision(), Decision::Allow, "same /24, same agent: {r:?}");
    assert!(r.flags.is_empty(), "{r:?}");
    let unknown = Uuid::new_v4();
    denied_by_rule(
        &ask(w.viewer, "192.0.2.77", "app/1", unknown.to_string()).await,
        "SESSION_UNKNOWN",
        &unknown.to_string(),
    );
    denied_by_rule(
        &ask(w.viewer, "192.0.2.77", "app/1", "not-a-session".into()).await,
        "SESSION_UNKNOWN",
        "not a session id",
    );
    denied_by_rule(
        &ask(w.editor, "192.0.2.77", "app/1", s1.to_string()).await,
        "SESSION_FOREIGN",
        "another user",
    );
    // Under `flag`, changes pass and say so.
    let r = ask(w.viewer, "198.51.100.1", "app/1", s1.to_string()).await;
    assert_eq!(r.decision(), Decision::Allow, "{r:?}");
    assert_eq!(r.flags, ["session_network_changed"]);
    let r = ask(w.viewer, "192.0.2.10", "app/2", s1.to_string()).await;
    assert_eq!(r.flags, ["session_user_agent_changed"]);
    assert!(
        server
            .metric("velro_authz_request_flags_total{kind=\"session_network_changed\"}")
            .await
            >= 1.0
    );

    // Revoked with plain SQL: every replica notices through the change log.
    db.execute(&format!(
        "UPDATE sessions SET revoked_at = 1 WHERE id = '{s1}'"
    ))
    .await;
    let r = eventually(
        Duration::from_secs(5),
        "a revoked session denied",
        || async {
            let r = ask(w.viewer, "192.0.2.10", "app/1", s1.to_string()).await;
            match r.decision() {
                Decision::Deny => Ok(r),
                _ => Err(format!("{r:?}")),
            }
        },
    )
    .await;
    denied_by_rule(&r, "SESSION_REVOKED", &s1.to_string());
    server.stop().await;

    // The other policies, on the same data.
    let s2 = session(&db, w.viewer, "192.0.2.10", "app/1", Duration::ZERO).await;
    for (policy, expect) in [
        (ChangePolicy::Deny, Decision::Deny),
        (ChangePolicy::Allow, Decision::Allow),
    ] {
        let mut s = settings(&db.url);
        with_policies(policy, policy)(&mut s);
        let server = TestServer::start(s).await;
        for (ip, agent, reason) in [
            ("198.51.100.1", "app/1", "SESSION_NETWORK_CHANGED"),
            ("192.0.2.10", "app/2", "SESSION_USER_AGENT_CHANGED"),
        ] {
            let r = server
                .decide(from(
                    authorize(w.viewer, "read", "project", w.team.project),
                    ip,
                    agent,
                    &s2.to_string(),
                ))
                .await;
            assert_eq!(r.decision(), expect, "{policy:?}: {r:?}");
            assert!(r.flags.is_empty(), "{r:?}");
            if expect == Decision::Deny {
                denied_by_rule(&r, reason, &s2.to_string());
            }
        }
        server.stop().await;
    }
}
on_both_databases!(sessions_must_be_live_own_and_consistent, sessions);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn impossible_travel_is_denied() {
    let geo_rules = |s: &mut Settings| {
        s.security_context.geo_table = vec![
            geo("192.0.2.0/24", "DE"),
            geo("198.51.100.0/24", "US"),
            geo("203.0.113.0/24", "FR"),
        ];
        s.security_context.session_network_change = ChangePolicy::Allow;
        s.security_context.impossible_travel = HumanDuration(Duration::from_secs(3600));
    };
    let (db, w, server) = world_server(Db::Sqlite, geo_rules).await;
    let fresh = session(&db, w.viewer, "192.0.2.10", "app", Duration::ZERO).await;
    let old = session(
        &db,
        w.viewer,
        "192.0.2.10",
        "app",
        Duration::from_secs(7200),
    )
    .await;
    let ask = |ip: &'static str, session: Uuid| {
        server.decide(from(
            authorize(w.viewer, "read", "project", w.team.project),
            ip,
            "app",
            &session.to_string(),
        ))
    };
    assert_eq!(ask("192.0.2.11", fresh).await.decision(), Decision::Allow);
    denied_by_rule(&ask("198.51.100.5", fresh).await, "IMPOSSIBLE_TRAVEL", "DE");
    // Two hours after the start, the hop to the US is plausible...
    assert_eq!(ask("198.51.100.5", old).await.decision(), Decision::Allow);
    // ...but not a second hop to France right after it.
    let r = ask("203.0.113.5", old).await;
    denied_by_rule(&r, "IMPOSSIBLE_TRAVEL", "US");
    assert!(r.message.contains("FR"), "{r:?}");
    server.stop().await;

    // The rule can be switched off.
    let mut s = settings(&db.url);
    geo_rules(&mut s);
    s.security_context.impossible_travel = HumanDuration(Duration::ZERO);
    let server = TestServer::start(s).await;
    let r = server
        .decide(from(
            authorize(w.viewer, "read", "project", w.team.project),
            "198.51.100.5",
            "app",
            &fresh.to_string(),
        ))
        .await;
    assert_eq!(r.decision(), Decision::Allow, "{r:?}");
    server.stop().await;
}
