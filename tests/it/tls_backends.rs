//! TLS to the dependencies: PostgreSQL with `sslmode=require` and
//! `verify-full`, Redis by `rediss://`, against private servers the test
//! starts (the machine's shared ones are never reconfigured).

use velro_authz::proto;

use crate::common::{
    TestServer,
    certs::Ca,
    fixture::{World, authorize},
    private::{PrivatePostgres, PrivateRedis},
    settings,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_over_tls_and_a_refusal_without_it() {
    let ca = Ca::new("velro test CA");
    let tls = PrivatePostgres::start(Some(&ca.server()));
    let plain = PrivatePostgres::start(None);
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();

    for url in [
        format!("{}?sslmode=require", tls.url()),
        format!(
            "{}?sslmode=verify-full&sslrootcert={}",
            tls.url(),
            ca_file.display()
        ),
    ] {
        let server = TestServer::start(settings(&url)).await;
        let revision = server.revision().await;
        assert!(revision >= 0, "{url}");
        server.stop().await;
    }
    // The same requirement against a server without TLS: refused at start.
    let refused =
        velro_authz::app::server::start(&settings(&format!("{}?sslmode=require", plain.url())))
            .await;
    let error = refused
        .err()
        .expect("sslmode=require refuses a server without TLS");
    assert!(
        error.to_string().contains("cannot open database"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_over_tls() {
    let ca = Ca::new("velro test CA");
    let redis = PrivateRedis::start_tls(&ca.server(), &ca.pem()).await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let db = crate::common::TestDb::create(crate::common::Db::Sqlite).await;
    let w = World::new();
    db.store().await.insert_dataset(&w.data).await.unwrap();
    let with_redis = || {
        let mut s = settings(&db.url);
        s.redis_url = Some(format!("rediss://localhost:{}", redis.port));
        s.redis_ca_file = Some(ca_file.clone());
        s
    };
    let request = authorize(w.viewer, "read", "project", w.team.project);
    let warm = TestServer::start(with_redis()).await;
    assert_eq!(
        warm.decide(request.clone()).await.source(),
        proto::PermissionSource::Computed
    );
    // The set is in Redis (read over TLS with the same CA)...
    let client = redis::Client::build_with_tls(
        format!("rediss://localhost:{}", redis.port).as_str(),
        redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(ca.pem().into_bytes()),
        },
    )
    .unwrap();
    crate::common::eventually(
        std::time::Duration::from_secs(10),
        "the set in Redis",
        || async {
            let mut conn = client
                .get_multiplexed_async_connection()
                .await
                .map_err(|e| e.to_string())?;
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg("*")
                .query_async(&mut conn)
                .await
                .map_err(|e| e.to_string())?;
            match keys.is_empty() {
                false => Ok(()),
                true => Err("no keys yet".to_owned()),
            }
        },
    )
    .await;
    // ...and a cold replica answers from it.
    let cold = TestServer::start(with_redis()).await;
    assert_eq!(
        cold.decide(request).await.source(),
        proto::PermissionSource::RedisCache
    );
    warm.stop().await;
    cold.stop().await;
}
