//! Layer 10: quotas per principal and tier, in process and shared through
//! Redis; a stalled Redis falls back within its deadline and comes back by
//! itself; a principal bursting far above its baseline is tightened and
//! alerted, a steady one is not.

use std::time::{Duration, Instant};

use tonic::Code;
use uuid::Uuid;
use velro_authz::{
    app::config::Settings,
    layers::rate_limit::limiter::Tier,
    proto::{self, Decision},
    support::duration::HumanDuration,
};

use crate::common::{
    Db, TestServer, eventually,
    fixture::{authorize, item},
    proxy::Proxy,
    redis::{Prefix, redis_url},
    settings, world_server,
};
use crate::on_both_databases;

/// Quotas small enough to reach in a test: `free` bursts 3, `pro` 10, and
/// both refill one a second, slower than the tests ask.
fn limited(s: &mut Settings) {
    s.rate_limit.enabled = true;
    s.rate_limit.default_tier = "free".into();
    let tier = |name: &str, burst| Tier {
        name: name.into(),
        per_second: 1,
        burst,
    };
    s.rate_limit.tiers = vec![tier("free", 3), tier("pro", 10)];
    s.rate_limit.anomaly.enabled = false;
}

/// How many of `n` Authorize calls pass the limiter; checks the refusals.
async fn passes(server: &TestServer, request: &proto::AuthorizeRequest, n: usize) -> usize {
    let mut client = server.client.clone();
    let mut passed = 0;
    for _ in 0..n {
        match client.authorize(request.clone()).await {
            Ok(_) => passed += 1,
            Err(status) => {
                assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                assert!(
                    status.message().contains("retry in"),
                    "{}",
                    status.message()
                );
                let retry_ms: u64 = status
                    .metadata()
                    .get("retry-after-ms")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| panic!("retry-after-ms: {:?}", status.metadata()));
                assert!((1..=10_000).contains(&retry_ms), "{retry_ms}");
                use tonic_types::StatusExt;
                let retry = status
                    .get_details_retry_info()
                    .expect("RetryInfo in the details");
                assert!(retry.retry_delay.is_some_and(|d| d > Duration::ZERO));
            }
        }
    }
    passed
}

async fn per_principal_and_tier(kind: Db) {
    let (db, w, server) = world_server(kind, limited).await;
    db.execute(&format!(
        "UPDATE users SET tier = 'pro' WHERE id = '{}'",
        w.editor
    ))
    .await;
    let read = |user| authorize(user, "read", "project", w.team.project);
    assert_eq!(
        passes(&server, &read(w.viewer), 6).await,
        3,
        "free: burst 3"
    );
    assert_eq!(
        passes(&server, &read(w.admin), 5).await,
        3,
        "another principal, its own quota"
    );
    assert_eq!(
        passes(&server, &read(w.editor), 12).await,
        10,
        "pro: burst 10"
    );
    // Anonymous callers are limited per client IP.
    let anonymous = |ip: &str| proto::AuthorizeRequest {
        user_id: Uuid::nil().to_string(),
        context: Some(proto::RequestContext {
            ip: ip.into(),
            ..Default::default()
        }),
        ..authorize(Uuid::nil(), "read", "project", w.public.project)
    };
    assert_eq!(passes(&server, &anonymous("192.0.2.1"), 5).await, 3);
    assert_eq!(passes(&server, &anonymous("192.0.2.2"), 5).await, 3);
    let limited = server
        .metric("velro_authz_rate_limited_total{tier=\"free\",limiter=\"in_process\"}")
        .await;
    assert_eq!(limited, 3.0 + 2.0 + 2.0 + 2.0);

    // A batch takes one cell per item: 3 answered, the rest refused alone.
    let items = (0..5)
        .map(|_| item(w.outsider, "read", "project", w.public.project))
        .collect();
    let results = server.batch(items).await;
    let codes: Vec<i32> = results
        .iter()
        .map(|r| match &r.outcome {
            Some(proto::batch_result::Outcome::Response(r)) => {
                assert_eq!(r.decision(), Decision::Allow);
                0
            }
            Some(proto::batch_result::Outcome::Error(e)) => {
                assert!(e.message.contains("retry in"), "{}", e.message);
                e.code
            }
            None => panic!("no outcome"),
        })
        .collect();
    let exhausted = Code::ResourceExhausted as i32;
    assert_eq!(codes.iter().filter(|c| **c == 0).count(), 3, "{codes:?}");
    assert_eq!(
        codes.iter().filter(|c| **c == exhausted).count(),
        2,
        "{codes:?}"
    );
    server.stop().await;
}
on_both_databases!(limits_hold_per_principal_and_tier, per_principal_and_tier);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_one_limit_through_redis() {
    let prefix = Prefix::new().await;
    let (db, w, a) = world_server(Db::Postgres, |s| {
        limited(s);
        s.redis_url = Some(redis_url());
        s.redis_prefix = prefix.0.clone();
    })
    .await;
    let mut s = settings(&db.url);
    limited(&mut s);
    s.redis_url = Some(redis_url());
    s.redis_prefix = prefix.0.clone();
    let b = TestServer::start(s).await;
    let read = authorize(w.viewer, "read", "project", w.team.project);
    let mut passed = 0;
    for _ in 0..3 {
        passed += passes(&a, &read, 1).await + passes(&b, &read, 1).await;
    }
    assert_eq!(passed, 3, "one quota of 3 across both replicas");
    let redis_refusals = a
        .metric("velro_authz_rate_limited_total{tier=\"free\",limiter=\"redis\"}")
        .await
        + b.metric("velro_authz_rate_limited_total{tier=\"free\",limiter=\"redis\"}")
            .await;
    assert_eq!(redis_refusals, 3.0);
    assert!(
        prefix.keys().await.iter().any(|k| k.contains("rl:free:")),
        "the quota lives in Redis under the prefix"
    );
    a.stop().await;
    b.stop().await;
    prefix.remove().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_redis_falls_back_in_process_and_recovers() {
    let prefix = Prefix::new().await;
    let upstream = redis_url()
        .trim_start_matches("redis://")
        .trim_end_matches('/')
        .parse()
        .unwrap();
    let proxy = Proxy::start(upstream).await;
    let (_db, w, server) = world_server(Db::Sqlite, |s| {
        limited(s);
        s.rate_limit.tiers[0].burst = 1_000;
        s.redis_url = Some(format!("redis://{}", proxy.addr));
        s.redis_prefix = prefix.0.clone();
    })
    .await;
    let read = authorize(w.viewer, "read", "project", w.team.project);
    let breaker = "velro_authz_breaker_state{dependency=\"redis_rate_limit\"}";
    let fallbacks = "velro_authz_rate_limit_fallbacks_total";
    assert_eq!(passes(&server, &read, 3).await, 3);
    assert_eq!(server.metric(fallbacks).await, 0.0, "Redis answered");

    proxy.stall();
    let stalled_at = Instant::now();
    let mut calls = Vec::new();
    for _ in 0..10 {
        let started = Instant::now();
        assert_eq!(passes(&server, &read, 1).await, 1);
        calls.push(started.elapsed());
    }
    let slowest = calls.iter().max().copied().unwrap_or_default();
    eprintln!(
        "Redis stalled: calls took {calls:?}; all 10 answered {:?} after the stall",
        stalled_at.elapsed()
    );
    // Each call waits at most the 100 ms Redis deadline (plus scheduling on
    // a busy machine), then the in-process limiter answers.
    assert!(slowest < Duration::from_millis(600), "slowest {slowest:?}");
    assert!(server.metric(fallbacks).await >= 10.0);
    assert_eq!(server.metric(breaker).await, 1.0, "the breaker opened");
    // While open, Redis is not even asked: answers come at once.
    let started = Instant::now();
    assert_eq!(passes(&server, &read, 5).await, 5);
    assert!(
        started.elapsed() < Duration::from_millis(200),
        "{:?}",
        started.elapsed()
    );

    proxy.restore();
    eventually(Duration::from_secs(10), "the breaker closed", || async {
        passes(&server, &read, 1).await;
        match server.metric(breaker).await {
            0.0 => Ok(()),
            state => Err(format!("state {state}")),
        }
    })
    .await;
    let before = server.metric(fallbacks).await;
    assert_eq!(passes(&server, &read, 3).await, 3);
    assert_eq!(server.metric(fallbacks).await, before, "back on Redis");
    server.stop().await;
    prefix.remove().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_far_above_the_baseline_is_tightened_and_alerted() {
    let (db, w, server) = world_server(Db::Sqlite, |s| {
        s.rate_limit.enabled = true;
        s.rate_limit.tiers = vec![Tier {
            name: "free".into(),
            per_second: 10_000,
            burst: 10_000,
        }];
        let anomaly = &mut s.rate_limit.anomaly;
        anomaly.enabled = true;
        anomaly.window = HumanDuration(Duration::from_millis(200));
        anomaly.warmup_windows = 5;
        anomaly.rate_factor = 8.0;
        anomaly.min_requests = 30;
        // Tightened: 10,000 / 5,000 = 2 a second, burst 2.
        anomaly.tighten_factor = 5_000;
    })
    .await;
    let steady = authorize(w.viewer, "read", "project", w.team.project);
    let bursty = authorize(w.admin, "read", "project", w.team.project);
    // A baseline of 3 requests per window for both.
    for _ in 0..8 {
        assert_eq!(passes(&server, &steady, 3).await, 3);
        assert_eq!(passes(&server, &bursty, 3).await, 3);
        tokio::time::sleep(Duration::from_millis(210)).await;
    }
    // One bursts to ~100 in a window; the tightened quota then refuses.
    let passed = passes(&server, &bursty, 100).await;
    assert!((24..100).contains(&passed), "passed {passed}");
    assert!(
        server
            .metric("velro_authz_rate_limited_total{tier=\"free\",limiter=\"tightened\"}")
            .await
            >= 1.0
    );
    assert_eq!(
        server
            .metric("velro_authz_security_alerts_total{kind=\"rate_anomaly\"}")
            .await,
        1.0,
        "one alert per anomaly"
    );
    // The steady principal keeps its quota.
    assert_eq!(passes(&server, &steady, 3).await, 3);
    // The alert is in the audit log, naming the principal.
    let store = db.store().await;
    let alerts = |subject: Uuid| {
        let store = store.clone();
        async move {
            let filter = velro_authz::audit::AuditFilter {
                subject: Some(subject.to_string()),
                limit: 1_000,
                ..Default::default()
            };
            let events = store.audit_events(&filter).await.unwrap();
            events
                .into_iter()
                .filter(|e| e.kind == "alert")
                .collect::<Vec<_>>()
        }
    };
    let alert = eventually(Duration::from_secs(5), "one anomaly alert", || async {
        match alerts(w.admin).await.as_slice() {
            [alert] => Ok(alert.clone()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert_eq!(alert.reason, "RATE_ANOMALY");
    assert!(
        alerts(w.viewer).await.is_empty(),
        "a steady principal is not alerted"
    );
    server.stop().await;
}
