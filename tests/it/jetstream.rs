//! The audit stream on a private NATS JetStream: each decision is exactly
//! one message with its decision id; a broker outage spills and replays
//! with nothing lost and nothing twice, also across a SIGKILL of the
//! service; with the database sink off, the table stays empty.

use std::{collections::BTreeSet, time::Duration};

use velro_authz::{
    proto::{self, Decision, authorization_service_client::AuthorizationServiceClient},
    support::duration::HumanDuration,
};

use crate::common::{
    Db, TestDb, TestServer, eventually,
    fixture::{World, authorize},
    http_get,
    nats::PrivateNats,
    process::{connect, free_port, serve},
    world_server,
};

/// Requests that vary the subject, so the ids come from real decisions.
fn requests(w: &World, n: usize) -> impl Iterator<Item = proto::AuthorizeRequest> + '_ {
    let users = [w.viewer, w.editor, w.admin, w.owner, w.outsider];
    (0..n).map(move |i| authorize(users[i % users.len()], "read", "project", w.team.project))
}

async fn decide_all(server: &TestServer, w: &World, n: usize) -> BTreeSet<String> {
    let mut ids = BTreeSet::new();
    for request in requests(w, n) {
        ids.insert(server.decide(request).await.decision_id);
    }
    assert_eq!(ids.len(), n, "distinct decision ids");
    ids
}

/// Waits until the stream holds `expected` decisions, then checks that
/// they are exactly those, once each (and stay so a moment later).
async fn stream_holds(nats: &PrivateNats, expected: &BTreeSet<String>) {
    let what = format!("{} decisions in the stream", expected.len());
    eventually(Duration::from_secs(30), &what, || async {
        let seen = nats.events("decision").await;
        match seen.len() >= expected.len() {
            true => Ok(()),
            false => Err(format!("{} of {}", seen.len(), expected.len())),
        }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let seen = nats.events("decision").await;
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "published twice: {twice:?}");
    let ids: BTreeSet<String> = seen.into_keys().collect();
    assert_eq!(
        &ids, expected,
        "the stream holds exactly the decisions made"
    );
}

/// `n` Authorize calls through a plain client; their decision ids go to
/// `ids`.
async fn decide_over_grpc(
    client: &mut AuthorizationServiceClient<tonic::transport::Channel>,
    w: &World,
    n: usize,
    ids: &mut BTreeSet<String>,
) {
    for request in requests(w, n) {
        let answer = client.authorize(request).await.unwrap().into_inner();
        ids.insert(answer.decision_id);
    }
}

async fn rows(db: &TestDb) -> usize {
    let events = db.audit_events().await;
    events.iter().filter(|e| e.kind == "decision").count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_decision_is_one_message_in_the_stream_and_one_row() {
    let nats = PrivateNats::start().await;
    let (db, w, server) = world_server(Db::Sqlite, |s| {
        s.audit.jetstream = Some(nats.config());
    })
    .await;
    const N: usize = 120;
    let ids = decide_all(&server, &w, N).await;
    stream_holds(&nats, &ids).await;
    assert_eq!(rows(&db).await, N, "the database sink kept every event too");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_outage_loses_nothing_and_duplicates_nothing() {
    let mut nats = PrivateNats::start().await;
    let (db, w, server) = world_server(Db::Sqlite, |s| {
        s.audit.jetstream = Some(nats.config());
        s.audit.database = false;
        s.audit.replay_every = HumanDuration(Duration::from_millis(100));
    })
    .await;
    let mut ids = decide_all(&server, &w, 40).await;
    stream_holds(&nats, &ids).await;

    nats.stop();
    const DURING: usize = 200;
    for request in requests(&w, DURING) {
        let r = server.decide(request).await;
        assert_ne!(r.decision(), Decision::Unspecified);
        ids.insert(r.decision_id);
    }
    server
        .metric_reaches("velro_authz_audit_events_spilled_total", DURING as f64)
        .await;
    nats.resume().await;
    stream_holds(&nats, &ids).await;
    assert_eq!(rows(&db).await, 0, "the database carries no audit load");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkill_during_a_broker_outage_loses_nothing_spilled() {
    let mut nats = PrivateNats::start().await;
    let db = TestDb::create(Db::Postgres).await;
    let w = World::new();
    db.store().await.insert_dataset(&w.data).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("velro.toml");
    let spill = dir.path().join("audit.spill");
    std::fs::write(
        &config,
        format!(
            "[audit]\nspill_path = {:?}\nfsync = \"batch\"\nreplay_every = \"100ms\"\n{}",
            spill.display().to_string(),
            nats.toml()
        ),
    )
    .unwrap();
    let (grpc, ops) = (free_port(), free_port());
    let mut server = serve(&config, &db.url, grpc, ops, &[]);
    let mut client = connect(grpc).await;
    let mut ids = BTreeSet::new();
    decide_over_grpc(&mut client, &w, 20, &mut ids).await;
    stream_holds(&nats, &ids).await;
    nats.stop();
    decide_over_grpc(&mut client, &w, 300, &mut ids).await;
    // The writer's failed publish (500 ms) moves its queue to the spill
    // file; once all 300 are there the process dies without any chance to
    // flush.
    let ops = std::net::SocketAddr::from(([127, 0, 0, 1], ops));
    eventually(Duration::from_secs(30), "300 events spilled", || async {
        let (_, body) = http_get(ops, "/metrics").await;
        let spilled: f64 = body
            .lines()
            .find_map(|l| l.strip_prefix("velro_authz_audit_events_spilled_total "))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        match spilled >= 300.0 {
            true => Ok(()),
            false => Err(format!("{spilled} spilled")),
        }
    })
    .await;
    server.kill().await.unwrap();
    nats.resume().await;
    let (grpc, ops) = (free_port(), free_port());
    let mut restarted = serve(&config, &db.url, grpc, ops, &[]);
    stream_holds(&nats, &ids).await;
    restarted.kill().await.unwrap();
}
