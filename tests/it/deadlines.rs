//! Request deadlines: the client's `grpc-timeout` is honoured when shorter
//! than the server's, an expired request gets DEADLINE_EXCEEDED at once,
//! and nothing of it goes on in the background.

use std::time::{Duration, Instant};

use sqlx::Connection;
use tonic::Code;
use velro_authz::proto::{self, Decision};

use crate::common::{Db, fixture::authorize, raw_grpc, world_server};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_millisecond_deadline_is_exceeded_quickly_and_leaves_no_work() {
    let (db, w, server) = world_server(Db::Postgres, |_| {}).await;
    // A writer holds the projects table: any facts query would wait.
    let mut writer = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let mut tx = writer.begin().await.unwrap();
    sqlx::query("LOCK TABLE projects IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *tx)
        .await
        .unwrap();
    let computations = "velro_authz_permission_computations_total";
    let before = server.metric(computations).await;

    let query = authorize(w.viewer, "read", "project", w.team.project);
    // Deadlines as any gRPC client sends them, in the `grpc-timeout` header;
    // the answer is the server's own, not a client timer's.
    for (timeout, header) in [(1, "1m"), (50, "50m")] {
        let started = Instant::now();
        let (code, message) = raw_grpc::call(
            server.server.as_ref().unwrap().grpc_addr,
            "/velro.authz.v1.AuthorizationService/Authorize",
            &query,
            header,
        )
        .await;
        assert_eq!(code, Code::DeadlineExceeded as i32, "{message}");
        assert!(
            started.elapsed() < Duration::from_millis(timeout + 400),
            "a {timeout} ms deadline answered after {:?}",
            started.elapsed()
        );
    }
    let started = server.metric(computations).await - before;
    assert!(started <= 2.0, "{started}");
    tx.rollback().await.unwrap();
    // Nothing abandoned finished later: no answer was cached by it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(server.metric(computations).await - before, started);
    let r = server.decide(query).await;
    assert_eq!(r.decision(), Decision::Allow);
    assert_eq!(
        r.source(),
        proto::PermissionSource::Computed,
        "an expired request must not fill the cache afterwards"
    );
    server.stop().await;
}
