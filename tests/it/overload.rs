//! Overload is not failure: a replica whose own queues are full sheds at
//! once (RESOURCE_EXHAUSTED with retry information) and keeps its breakers
//! closed, while a cut database still opens them; every connection has a
//! bounded cost (silent ones are closed, a full port keeps serving, a client
//! that never reads cannot make the server hold more than its bound).

use std::{net::SocketAddr, time::Duration};

use futures::future::join_all;
use sqlx::Connection;
use tokio::{io::AsyncReadExt, net::TcpStream};
use tonic::Code;
use tonic_types::StatusExt;
use velro_authz::{proto, support::duration::HumanDuration};

use crate::common::{Db, TestServer, eventually, fixture::authorize, proxy::Proxy, world_server};

const DATABASE_BREAKER: &str = "velro_authz_breaker_state{dependency=\"database\"}";

fn ms(n: u64) -> HumanDuration {
    HumanDuration(Duration::from_millis(n))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_pool_is_shed_while_a_cut_database_opens_the_breaker() {
    let proxy = Proxy::postgres().await;
    let (db, w, server) = world_server(Db::Postgres, |s| {
        s.database_url = proxy.route(&s.database_url);
        s.db_max_connections = 2;
        s.db_acquire_timeout = ms(300);
        s.request_timeout = ms(1_500);
        s.change_poll = ms(50);
    })
    .await;
    // A writer holds the projects table: the facts queries that get a
    // connection wait, and every other request queues for the pool.
    let mut writer = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let mut tx = writer.begin().await.unwrap();
    sqlx::query("LOCK TABLE projects IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *tx)
        .await
        .unwrap();
    let users = [w.owner, w.creator, w.viewer, w.editor, w.admin, w.outsider];
    let sites = [w.private, w.team, w.public];
    let calls = users.iter().flat_map(|user| {
        sites.iter().map(|site| {
            let mut client = server.client.clone();
            let request = authorize(*user, "read", "project", site.project);
            async move { client.authorize(request).await }
        })
    });
    let answers = join_all(calls).await;
    let mut shed = 0;
    for answer in &answers {
        let status = answer.as_ref().expect_err("nothing can be computed now");
        match status.code() {
            Code::ResourceExhausted => {
                shed += 1;
                let retry = status.get_details_retry_info().and_then(|r| r.retry_delay);
                assert!(retry.is_some(), "shed with RetryInfo: {status:?}");
                assert!(status.metadata().get("retry-after-ms").is_some());
            }
            Code::DeadlineExceeded => {}
            other => panic!("overload answered {other:?}, not shed: {status:?}"),
        }
    }
    assert!(shed >= 10, "{shed} of {} shed", answers.len());
    assert_eq!(
        server.metric(DATABASE_BREAKER).await,
        0.0,
        "busy is not down"
    );
    tx.rollback().await.unwrap();
    drop(writer);
    let after = authorize(w.viewer, "read", "project", w.team.project);
    eventually(Duration::from_secs(10), "answering again", || async {
        match server.client.clone().authorize(after.clone()).await {
            Ok(r) => Ok(r.into_inner()),
            Err(e) => Err(format!("{e:?}")),
        }
    })
    .await;
    assert_eq!(server.metric(DATABASE_BREAKER).await, 0.0);

    proxy.cut();
    let uncached = authorize(w.outsider, "read", "project", w.public.project);
    let e = server.client.clone().authorize(uncached).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "a cut database: {e:?}");
    server.metric_reaches(DATABASE_BREAKER, 1.0).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_the_in_flight_bound_requests_are_shed_at_once() {
    let (db, w, server) = world_server(Db::Postgres, |s| {
        s.max_in_flight = 2;
        s.request_timeout = ms(1_500);
    })
    .await;
    let mut writer = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let mut tx = writer.begin().await.unwrap();
    sqlx::query("LOCK TABLE projects IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *tx)
        .await
        .unwrap();
    // Two requests hold the two places...
    let held: Vec<_> = [w.owner, w.viewer]
        .into_iter()
        .map(|user| {
            let mut client = server.client.clone();
            let request = authorize(user, "read", "project", w.team.project);
            tokio::spawn(async move { client.authorize(request).await })
        })
        .collect();
    let places = "velro_authz_in_flight_requests";
    server.metric_reaches(places, 2.0).await;
    // ...so the next ones are refused without waiting for them.
    for user in [w.editor, w.admin, w.creator] {
        let request = authorize(user, "read", "project", w.team.project);
        let e = server.client.clone().authorize(request).await.unwrap_err();
        assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
        assert!(e.message().contains("max_in_flight"), "{}", e.message());
        assert!(e.get_details_retry_info().is_some());
    }
    assert_eq!(
        server
            .metric("velro_authz_requests_shed_total{reason=\"in_flight\"}")
            .await,
        3.0
    );
    // Health checks are never shed.
    let mut health = tonic_health::pb::health_client::HealthClient::new(server.channel.clone());
    health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    for h in held {
        let _ = h.await.unwrap();
    }
    server
        .metric_reaches("velro_authz_in_flight_requests", 0.0)
        .await;
    let r = server
        .decide(authorize(w.editor, "read", "project", w.team.project))
        .await;
    assert_eq!(r.decision(), proto::Decision::Allow);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_starved_runtime_sheds_new_requests() {
    let (_db, w, server) = world_server(Db::Sqlite, |s| {
        s.max_runtime_lag = ms(20);
    })
    .await;
    let request = authorize(w.viewer, "read", "project", w.team.project);
    assert_eq!(
        server.decide(request.clone()).await.decision(),
        proto::Decision::Allow
    );
    let addr = server.server.as_ref().unwrap().grpc_addr;
    // A client on a runtime of its own, connected first, sends while every
    // worker thread of the server's runtime is kept busy (what a saturated
    // CPU looks like from inside): the request is read once they are free,
    // while the lag they caused is still above the bound.
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let client = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let mut client = TestServer::connect(addr).await;
            ready_tx.send(()).unwrap();
            go_rx.recv().unwrap();
            client.authorize(request).await
        })
    });
    ready_rx.recv().unwrap();
    let blockers: Vec<_> = (0..2)
        .map(|_| tokio::spawn(async { std::thread::sleep(Duration::from_millis(600)) }))
        .collect();
    // The test's own body runs on this thread, not on a worker.
    std::thread::sleep(Duration::from_millis(100));
    go_tx.send(()).unwrap();
    for b in blockers {
        b.await.unwrap();
    }
    let answer = tokio::task::spawn_blocking(move || client.join().unwrap())
        .await
        .unwrap();
    let e = answer.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("runtime lags"), "{}", e.message());
    assert!(
        server
            .metric("velro_authz_requests_shed_total{reason=\"runtime_lag\"}")
            .await
            >= 1.0
    );
    server.stop().await;
}

/// Opens `n` TCP connections that never send a byte.
async fn silent_connections(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut held = Vec::with_capacity(n);
    for _ in 0..n {
        held.push(TcpStream::connect(addr).await.unwrap());
    }
    held
}

/// Whether the server closed the connection (EOF or reset) within `within`;
/// what it sent first (its HTTP/2 settings) is read and ignored.
async fn closed_by_server(mut stream: TcpStream, within: Duration) -> bool {
    let mut sink = Vec::new();
    tokio::time::timeout(within, stream.read_to_end(&mut sink))
        .await
        .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_never_speak_are_closed_while_new_clients_are_served() {
    let (_db, w, server) = world_server(Db::Sqlite, |s| {
        s.handshake_timeout = ms(1_000);
    })
    .await;
    let addr = server.server.as_ref().unwrap().grpc_addr;
    let held = silent_connections(addr, 2_000).await;
    let open = "velro_authz_connections{port=\"grpc\"}";
    server.metric_reaches(open, 2_000.0).await;
    // Meanwhile a new client connects and is served, and so is /health.
    let mut fresh = TestServer::connect(addr).await;
    let r = fresh
        .authorize(authorize(w.viewer, "read", "project", w.team.project))
        .await
        .unwrap();
    assert_eq!(r.into_inner().decision(), proto::Decision::Allow);
    assert_eq!(server.ops_get("/health").await.0, 200);
    // Every silent connection is closed by the server.
    let closed = join_all(
        held.into_iter()
            .map(|s| closed_by_server(s, Duration::from_secs(15))),
    )
    .await;
    assert!(
        closed.iter().all(|c| *c),
        "{} of 2000 still open",
        closed.iter().filter(|c| !**c).count()
    );
    assert!(
        server
            .metric("velro_authz_connections_closed_by_server_total{port=\"grpc\",reason=\"handshake_timeout\"}")
            .await
            >= 2_000.0
    );
    // Connections that spoke stay.
    assert!(server.metric(open).await >= 1.0);
    assert!(server.metric(open).await < 10.0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_port_makes_room_for_health_checks_and_new_clients() {
    let (_db, w, server) = world_server(Db::Sqlite, |s| {
        s.max_connections = 100;
        s.ops_max_connections = 16;
        s.handshake_timeout = HumanDuration(Duration::from_secs(60));
    })
    .await;
    let addr = server.server.as_ref().unwrap().grpc_addr;
    let _grpc_held = silent_connections(addr, 100).await;
    let _ops_held = silent_connections(server.ops_addr(), 16).await;
    server
        .metric_reaches("velro_authz_connections{port=\"ops\"}", 15.0)
        .await;
    assert_eq!(
        server.ops_get("/health").await.0,
        200,
        "the ops port made room"
    );
    let mut fresh = TestServer::connect(addr).await;
    let r = fresh
        .authorize(authorize(w.viewer, "read", "project", w.team.project))
        .await
        .unwrap();
    assert_eq!(r.into_inner().decision(), proto::Decision::Allow);
    for port in ["grpc", "ops"] {
        let evicted = format!(
            "velro_authz_connections_closed_by_server_total{{port=\"{port}\",reason=\"evicted\"}}"
        );
        assert!(server.metric(&evicted).await >= 1.0, "{port}");
    }
    assert!(
        server
            .metric("velro_authz_connections{port=\"grpc\"}")
            .await
            <= 100.0
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_cannot_make_the_server_hold_more_than_its_bound() {
    const BOUND: usize = 64 * 1024;
    let (_db, w, server) = world_server(Db::Sqlite, |s| {
        s.max_pending_response_bytes = BOUND;
        s.stuck_timeout = ms(2_000);
    })
    .await;
    let addr = server.server.as_ref().unwrap().grpc_addr;
    let users = [
        w.owner, w.creator, w.viewer, w.editor, w.admin, w.outsider, w.disabled,
    ];
    let sites = [w.private, w.team, w.public];
    let items: Vec<proto::BatchItem> = (0..4)
        .flat_map(|_| users)
        .flat_map(|user| {
            sites.iter().flat_map(move |site| {
                [
                    ("project", site.project),
                    ("generation", site.generation),
                    ("media", site.media),
                ]
                .map(|(kind, id)| proto::BatchItem {
                    user_id: user.to_string(),
                    action: "read".into(),
                    resource: Some(proto::Resource {
                        r#type: kind.into(),
                        id: id.to_string(),
                    }),
                    ..Default::default()
                })
            })
        })
        .collect();
    let batch = proto::BatchAuthorizeRequest {
        items,
        ..Default::default()
    };
    // A client that grants no flow-control window: no response body can
    // ever be sent to it.
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (client, connection) = h2::client::Builder::new()
        .initial_window_size(0)
        .handshake::<_, bytes::Bytes>(tcp)
        .await
        .unwrap();
    let connection = tokio::spawn(connection);
    let mut statuses = Vec::new();
    for _ in 0..100 {
        let mut client = client.clone().ready().await.unwrap();
        let request = http::Request::post(format!(
            "http://{addr}/velro.authz.v1.AuthorizationService/BatchAuthorize"
        ))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
        let (response, mut stream) = client.send_request(request, false).unwrap();
        let payload = prost::Message::encode_to_vec(&batch);
        let mut frame = vec![0];
        frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        frame.extend_from_slice(&payload);
        stream.send_data(bytes::Bytes::from(frame), true).unwrap();
        statuses.push(response);
    }
    // Refusals are headers only (no window needed); answers wait for a
    // window that never comes.
    let mut refused = 0;
    // Kept: dropping an answer's stream would reset it, freeing the server.
    let mut unread = Vec::new();
    for response in statuses {
        let head = response.await.unwrap();
        if head
            .headers()
            .get("grpc-status")
            .and_then(|v| v.to_str().ok())
            == Some("8")
        {
            refused += 1;
        }
        unread.push(head);
    }
    let pending = "velro_authz_response_bytes_pending";
    let held = server.metric(pending).await;
    assert!(
        held > 0.0,
        "answers are held for the client ({refused} refused)"
    );
    assert!(
        held <= (2 * BOUND) as f64,
        "{held} bytes held for one connection; the bound is {BOUND} plus one response"
    );
    assert!(refused >= 50, "{refused} of 100 refused at the bound");
    // The connection completes nothing: it is closed and its bytes freed.
    server
        .metric_reaches(
            "velro_authz_connections_closed_by_server_total{port=\"grpc\",reason=\"stuck_response\"}",
            1.0,
        )
        .await;
    eventually(Duration::from_secs(5), "bytes freed", || async {
        match server.metric(pending).await {
            0.0 => Ok(()),
            left => Err(format!("{left} bytes still held")),
        }
    })
    .await;
    let _ = connection.await;
    drop(unread);
    server.stop().await;
}
