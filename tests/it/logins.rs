//! Login storms are shed by expected wait: a login whose hash could not
//! start within `password_max_wait` is refused at once with the time to
//! retry (and audited as shed); one that fits is served. Warming waits
//! for logins in progress.

use std::{collections::HashMap, time::Duration};

use futures::future::join_all;
use opentelemetry_proto::tonic::trace::v1::Span;
use tonic::Code;
use tonic_types::StatusExt;
use uuid::Uuid;
use velro_authz::{
    audit::AuditFilter,
    auth::password::{HashWorkers, PasswordHashing},
    proto::{self, authenticate_request::Credentials},
    support::duration::HumanDuration,
};

use crate::common::{
    Db, TestDb, eventually,
    fixture::World,
    login::{PASSWORD, auth_server},
    otlp::Collector,
    process::Process,
    settings,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_that_cannot_start_in_time_is_refused_at_once_and_audited() {
    let w = auth_server(Db::Sqlite, |s| {
        // A hash slow enough to queue behind, one hashing thread, and a
        // budget smaller than one hash: only a login that finds the thread
        // free fits.
        s.argon2_memory_kib = 32 * 1024;
        s.argon2_iterations = 2;
        s.password_workers = 1;
        s.password_max_wait = HumanDuration(Duration::from_millis(1));
    })
    .await;
    let users = [
        w.world.viewer,
        w.world.editor,
        w.world.admin,
        w.world.owner,
        w.world.creator,
        w.world.outsider,
    ];
    let answers = join_all(users.iter().map(|u| w.login(*u, PASSWORD))).await;
    let served = answers.iter().filter(|a| a.is_ok()).count();
    let shed: Vec<_> = answers.iter().filter_map(|a| a.as_ref().err()).collect();
    assert!(served >= 1, "a login that fits is served");
    assert!(
        !shed.is_empty(),
        "six logins at once cannot all start within 1 ms"
    );
    for status in &shed {
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
        assert!(
            status.message().contains("password_max_wait"),
            "{}",
            status.message()
        );
        let retry = status.get_details_retry_info().and_then(|r| r.retry_delay);
        assert!(
            retry.is_some_and(|d| d > Duration::ZERO),
            "RetryInfo: {status:?}"
        );
    }
    // A small burst that fits the budget queues instead of failing.
    let one = w.login(w.world.viewer, PASSWORD).await;
    assert!(one.is_ok(), "{one:?}");
    let store = w.db.store().await;
    eventually(
        Duration::from_secs(10),
        "the shed logins audited",
        || async {
            let events = store
                .audit_events(&AuditFilter {
                    limit: 1_000,
                    ..AuditFilter::default()
                })
                .await
                .unwrap();
            let n = events.iter().filter(|e| e.decision == "login_shed").count();
            match n == shed.len() {
                true => Ok(()),
                false => Err(format!("{n} of {} shed logins audited", shed.len())),
            }
        },
    )
    .await;
    w.server.stop().await;
}

/// A client that asks again before the retry time it was given (a retry
/// loop without backoff) gets its next refusal held; a client on a
/// connection of its own is still refused at once. Judged by the server's
/// own counter, not by wall time (how long a hold lasts is the unit test's,
/// on a paused clock).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_to_an_early_retry_is_held_and_another_connections_is_not() {
    let w = auth_server(Db::Sqlite, |s| {
        // One hashing thread busy for several budgets with one hash.
        s.argon2_memory_kib = 64 * 1024;
        s.argon2_iterations = 16;
        s.password_workers = 1;
        s.password_max_wait = HumanDuration(Duration::from_millis(150));
    })
    .await;
    let addr = w.server.server.as_ref().map(|s| s.grpc_addr).unwrap();
    let mut other = crate::common::TestServer::connect(addr).await;
    let password = |user| proto::AuthenticateRequest {
        credentials: Some(Credentials::Password(proto::PasswordCredentials {
            email: w.email(user),
            password: PASSWORD.into(),
        })),
        context: None,
    };
    let retries = async {
        // Let the first login take the thread.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let first = w.login(w.world.editor, PASSWORD).await;
        let (early, elsewhere) = tokio::join!(
            w.login(w.world.admin, PASSWORD),
            other.authenticate(password(w.world.owner)),
        );
        (first, early, elsewhere.map(|r| r.into_inner()))
    };
    let (busy, (first, early, elsewhere)) =
        tokio::join!(w.login(w.world.viewer, PASSWORD), retries);
    assert!(
        busy.is_ok(),
        "the login that found the thread free: {busy:?}"
    );
    for refused in [&first, &early, &elsewhere] {
        let status = refused
            .as_ref()
            .err()
            .unwrap_or_else(|| panic!("a login while a long hash runs is refused: {refused:?}"));
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
        assert!(status.get_details_retry_info().is_some(), "{status:?}");
    }
    assert_eq!(
        w.server
            .metric("velro_authz_early_retries_held_total")
            .await,
        1.0,
        "the early retry is held; the first refusal and the other connection's are not"
    );
    w.server.stop().await;
}

/// Warming never delays a login: a warm-up computes nothing while a login
/// is in progress. Six logins at once on one hashing thread: the first
/// one's warm-up (deferred 50 ms after it) would otherwise run while the
/// others still hash. Judged by the order of the server's own spans (every
/// warm-up's work starts after the last hash ended), not by wall time; the
/// server is the binary, so its trace exporter is its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warming_waits_until_no_login_is_in_progress() {
    let (collector, endpoint) = Collector::start().await;
    let db = TestDb::create(Db::Postgres).await;
    let mut world = World::new();
    let mut s = settings(&db.url);
    // A hash of tens of milliseconds: five of them queued outlast the
    // warm-up's deferral.
    s.argon2_memory_kib = 32 * 1024;
    s.argon2_iterations = 2;
    let hashing = PasswordHashing::new(
        s.hash_params(),
        HashWorkers {
            threads: 1,
            nice: 0,
        },
        1,
        Duration::from_secs(60),
    )
    .await
    .unwrap();
    world.data.password_hash = Some(hashing.hash(PASSWORD.into()).await.unwrap());
    db.store().await.insert_dataset(&world.data).await.unwrap();
    let mut server = Process::start(
        &db.url,
        &[
            "--otlp-endpoint",
            &endpoint,
            "--argon2-memory-kib",
            "32768",
            "--argon2-iterations",
            "2",
            "--password-workers",
            "1",
            "--password-max-wait",
            "60s",
        ],
    )
    .await;
    let client = server.client.clone();
    let users = [
        world.viewer,
        world.editor,
        world.admin,
        world.owner,
        world.creator,
        world.outsider,
    ];
    let email = |user: Uuid| {
        world
            .data
            .users
            .iter()
            .find(|u| u.id == user)
            .map(|u| u.email.clone())
            .unwrap()
    };
    let logins = users.iter().map(|user| {
        let mut client = client.clone();
        let email = email(*user);
        async move {
            client
                .authenticate(proto::AuthenticateRequest {
                    credentials: Some(Credentials::Password(proto::PasswordCredentials {
                        email,
                        password: PASSWORD.into(),
                    })),
                    context: None,
                })
                .await
        }
    });
    for answer in join_all(logins).await {
        assert!(answer.is_ok(), "{answer:?}");
    }
    // Wait for the warm-ups' work to be exported.
    let spans = eventually(
        Duration::from_secs(20),
        "warm-up work in the traces",
        || async {
            let spans = collector.spans();
            let hashes = spans.iter().filter(|s| s.name == "password.hash").count();
            let warm_work = warm_work(&spans).len();
            match hashes >= users.len() && warm_work > 0 {
                true => Ok(spans),
                false => Err(format!(
                    "{hashes} hashes, {warm_work} warm-up spans with work under them"
                )),
            }
        },
    )
    .await;
    let last_hash_end = spans
        .iter()
        .filter(|s| s.name == "password.hash")
        .map(|s| s.end_time_unix_nano)
        .max()
        .unwrap();
    for work in warm_work(&spans) {
        assert!(
            work.start_time_unix_nano >= last_hash_end,
            "{} of a warm-up started {} µs before the last login's hash ended",
            work.name,
            (last_hash_end - work.start_time_unix_nano) / 1_000
        );
    }
    server.child.kill().await.unwrap();
}

/// The spans under a `cache.warm` span (the warm-up's own work).
fn warm_work(spans: &[Span]) -> Vec<&Span> {
    let by_id: HashMap<&[u8], &Span> = spans.iter().map(|s| (s.span_id.as_slice(), s)).collect();
    let under_warm = |span: &Span| {
        let mut parent = by_id.get(span.parent_span_id.as_slice());
        for _ in 0..16 {
            match parent {
                Some(p) if p.name == "cache.warm" => return true,
                Some(p) => parent = by_id.get(p.parent_span_id.as_slice()),
                None => return false,
            }
        }
        false
    };
    spans.iter().filter(|s| under_warm(s)).collect()
}
