//! Test harness: a private database per test (PostgreSQL or SQLite), a real
//! server on loopback ports, a real gRPC client, and a TCP proxy for faults.

#![allow(dead_code)]

pub mod certs;
pub mod cluster;
pub mod fixture;
pub mod login;
pub mod nats;
pub mod otlp;
pub mod private;
pub mod process;
pub mod proxy;
pub mod raw_grpc;
pub mod redis;

use std::time::Duration;

use sqlx::Connection;
use tonic::transport::Channel;
use uuid::Uuid;
use velro_authz::{
    app::config::Settings,
    app::server::{self, RunningServer},
    proto::authorization_service_client::AuthorizationServiceClient,
    store::{self, PoolConfig, Store},
    support::duration::HumanDuration,
};

/// PostgreSQL administrative URL; each test creates its own database there.
pub fn postgres_admin_url() -> String {
    std::env::var("VELRO_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Db {
    Postgres,
    Sqlite,
}

/// A database that exists for one test and is dropped with it.
pub struct TestDb {
    pub url: String,
    kind: Db,
    name: String,
    _dir: Option<tempfile::TempDir>,
}

impl TestDb {
    /// Every stored audit event (any kind), newest first.
    pub async fn audit_events(&self) -> Vec<velro_authz::audit::AuditEvent> {
        let store = self.store().await;
        let events = store
            .audit_events(&velro_authz::audit::AuditFilter {
                limit: 100_000,
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        store.close().await;
        events
    }

    pub async fn create(kind: Db) -> TestDb {
        let name = format!("velro_test_{}", Uuid::new_v4().simple());
        match kind {
            Db::Postgres => {
                let admin = postgres_admin_url();
                let mut conn = sqlx::PgConnection::connect(&admin).await.unwrap_or_else(|e| {
                    panic!(
                        "PostgreSQL is not reachable at {admin} ({e}); start it or point VELRO_TEST_POSTGRES_URL at one"
                    )
                });
                sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                    .execute(&mut conn)
                    .await
                    .unwrap_or_else(|e| panic!("cannot create test database {name}: {e}"));
                let base = admin
                    .rsplit_once('/')
                    .map(|(base, _)| base.to_owned())
                    .unwrap_or(admin);
                TestDb {
                    url: format!("{base}/{name}"),
                    kind,
                    name,
                    _dir: None,
                }
            }
            Db::Sqlite => {
                let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
                let url = format!(
                    "sqlite://{}",
                    dir.path().join(format!("{name}.db")).display()
                );
                TestDb {
                    url,
                    kind,
                    name,
                    _dir: Some(dir),
                }
            }
        }
    }

    /// A migrated store on this database, for inserting fixtures.
    pub async fn store(&self) -> std::sync::Arc<dyn Store> {
        let pool = PoolConfig {
            max_connections: 4,
            min_connections: 0,
            acquire_timeout: Duration::from_secs(5),
        };
        let store = store::connect(&self.url, &pool)
            .await
            .unwrap_or_else(|e| panic!("connect {}: {e}", self.url));
        store
            .migrate()
            .await
            .unwrap_or_else(|e| panic!("migrate: {e}"));
        store
    }

    /// The one number a query returns (e.g. a COUNT).
    pub async fn number(&self, sql: &str) -> i64 {
        let sql = sqlx::AssertSqlSafe(sql.to_owned());
        match self.kind {
            Db::Postgres => {
                let mut conn = sqlx::PgConnection::connect(&self.url)
                    .await
                    .unwrap_or_else(|e| panic!("{e}"));
                sqlx::query_scalar(sql)
                    .fetch_one(&mut conn)
                    .await
                    .unwrap_or_else(|e| panic!("{e}"))
            }
            Db::Sqlite => {
                let mut conn = sqlx::SqliteConnection::connect(&self.url)
                    .await
                    .unwrap_or_else(|e| panic!("{e}"));
                sqlx::query_scalar(sql)
                    .fetch_one(&mut conn)
                    .await
                    .unwrap_or_else(|e| panic!("{e}"))
            }
        }
    }

    /// Runs raw SQL against this database (as an application writer would).
    pub async fn execute(&self, sql: &str) {
        match self.kind {
            Db::Postgres => {
                let mut conn = sqlx::PgConnection::connect(&self.url)
                    .await
                    .unwrap_or_else(|e| panic!("{e}"));
                sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
                    .execute(&mut conn)
                    .await
                    .unwrap_or_else(|e| panic!("{sql}: {e}"));
            }
            Db::Sqlite => {
                let mut conn = sqlx::SqliteConnection::connect(&self.url)
                    .await
                    .unwrap_or_else(|e| panic!("{e}"));
                sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
                    .execute(&mut conn)
                    .await
                    .unwrap_or_else(|e| panic!("{sql}: {e}"));
            }
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if self.kind != Db::Postgres {
            return;
        }
        let name = self.name.clone();
        // Drop runs outside any runtime guarantee: use a private one.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                if let Ok(mut conn) = sqlx::PgConnection::connect(&postgres_admin_url()).await {
                    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                    )))
                    .execute(&mut conn)
                    .await;
                }
            });
        })
        .join();
    }
}

/// Settings for a test server on free loopback ports.
pub fn settings(database_url: &str) -> Settings {
    let mut s = Settings::defaults().unwrap_or_else(|e| panic!("{e}"));
    s.listen = "127.0.0.1:0".parse().unwrap_or_else(|e| panic!("{e}"));
    s.ops_listen = "127.0.0.1:0".parse().unwrap_or_else(|e| panic!("{e}"));
    s.database_url = database_url.to_owned();
    s.demo_data = false;
    s.db_max_connections = 8;
    // Dozens of servers share one PostgreSQL during a test run: the other
    // kinds of work get a connection or two each.
    for pool in [&mut s.db_pools.audit, &mut s.db_pools.auth] {
        pool.max_connections = 2;
    }
    s.db_pools.follower.max_connections = 1;
    s.db_pools.admin.max_connections = 1;
    s.drain_delay = HumanDuration(Duration::ZERO);
    // Cheap password hashing: tests check behaviour, not hash strength.
    s.argon2_memory_kib = 1024;
    s.argon2_iterations = 1;
    // Dozens of servers share this machine's cores during a test run: a
    // runtime that lags is the norm here, not overload (the overload tests
    // set their own bound).
    s.max_runtime_lag = HumanDuration(Duration::from_secs(10));
    // Each server spills audit events to a file of its own.
    s.audit.spill_path =
        std::env::temp_dir().join(format!("velro-test-audit-{}.spill", uuid::Uuid::new_v4()));
    s
}

pub struct TestServer {
    pub server: Option<RunningServer>,
    pub client: AuthorizationServiceClient<Channel>,
    pub channel: Channel,
}

impl TestServer {
    pub async fn start(settings: Settings) -> TestServer {
        let server = server::start(&settings)
            .await
            .unwrap_or_else(|e| panic!("server start: {e}"));
        let endpoint = Channel::from_shared(format!("http://{}", server.grpc_addr))
            .unwrap_or_else(|e| panic!("{e}"));
        // A TLS server is reached by the test's own TLS clients; the
        // plaintext harness client is then never connected.
        let channel = match settings.tls_cert {
            Some(_) => endpoint.connect_lazy(),
            None => endpoint
                .connect()
                .await
                .unwrap_or_else(|e| panic!("connect to test server: {e}")),
        };
        TestServer {
            client: AuthorizationServiceClient::new(channel.clone()),
            channel,
            server: Some(server),
        }
    }

    /// A client on a connection of its own to `addr`.
    pub async fn connect(addr: std::net::SocketAddr) -> AuthorizationServiceClient<Channel> {
        let channel = Channel::from_shared(format!("http://{addr}"))
            .unwrap_or_else(|e| panic!("{e}"))
            .connect()
            .await
            .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
        AuthorizationServiceClient::new(channel)
    }

    /// Authorize over gRPC, expecting an answer (not an error).
    pub async fn decide(
        &self,
        request: velro_authz::proto::AuthorizeRequest,
    ) -> velro_authz::proto::AuthorizeResponse {
        self.client
            .clone()
            .authorize(request)
            .await
            .unwrap_or_else(|e| panic!("Authorize failed: {e}"))
            .into_inner()
    }

    /// BatchAuthorize over gRPC, expecting an answer for the call.
    pub async fn batch(
        &self,
        items: Vec<velro_authz::proto::BatchItem>,
    ) -> Vec<velro_authz::proto::BatchResult> {
        self.client
            .clone()
            .batch_authorize(velro_authz::proto::BatchAuthorizeRequest {
                items,
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("BatchAuthorize failed: {e}"))
            .into_inner()
            .results
    }

    /// The change log's newest revision, through GetRevision.
    pub async fn revision(&self) -> i64 {
        self.client
            .clone()
            .get_revision(velro_authz::proto::GetRevisionRequest {})
            .await
            .unwrap_or_else(|e| panic!("GetRevision failed: {e}"))
            .into_inner()
            .revision
    }

    pub fn ops_addr(&self) -> std::net::SocketAddr {
        self.server
            .as_ref()
            .map(|s| s.ops_addr)
            .unwrap_or_else(|| panic!("server stopped"))
    }

    /// GET on the ops port; returns (status code, body).
    pub async fn ops_get(&self, path: &str) -> (u16, String) {
        http_get(self.ops_addr(), path).await
    }

    /// The value of one metric sample (0 when absent), e.g.
    /// `velro_authz_permission_computations_total`.
    pub async fn metric(&self, sample: &str) -> f64 {
        let (_, body) = self.ops_get("/metrics").await;
        body.lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.rsplit_once(' '))
            .filter(|(name, _)| *name == sample)
            .map(|(_, v)| v.parse::<f64>().unwrap_or_else(|e| panic!("{sample}: {e}")))
            .sum()
    }

    /// The sum of every sample of a metric, whatever its labels.
    pub async fn metric_sum(&self, name: &str) -> f64 {
        let (_, body) = self.ops_get("/metrics").await;
        body.lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit_once(' '))
            .filter(|(sample, _)| sample.starts_with(&format!("{name}{{")) || *sample == name)
            .map(|(_, v)| v.parse::<f64>().unwrap_or_else(|e| panic!("{name}: {e}")))
            .sum()
    }

    /// Waits (up to 10 s) until a metric sample reaches `at_least`.
    pub async fn metric_reaches(&self, sample: &str, at_least: f64) {
        let what = format!("{sample} reaching {at_least}");
        eventually(Duration::from_secs(10), &what, || async {
            match self.metric(sample).await {
                value if value >= at_least => Ok(()),
                value => Err(format!("{value}")),
            }
        })
        .await
    }

    pub async fn stop(mut self) {
        if let Some(server) = self.server.take() {
            server
                .shutdown()
                .await
                .unwrap_or_else(|e| panic!("shutdown: {e}"));
        }
    }
}

/// Polls `probe` every 20 ms until it succeeds, for what other tasks or
/// replicas do in their own time (change log, writer, breaker); fails once
/// `within` has passed, saying what was awaited and what was seen last.
pub async fn eventually<T, F, Fut>(within: Duration, what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match probe().await {
            Ok(value) => return value,
            Err(seen) => assert!(
                tokio::time::Instant::now() < deadline,
                "after {within:?} still not {what}: {seen}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A fresh database holding the hand-made `World`, and a server on it whose
/// settings `tweak` may adjust.
pub async fn world_server(
    kind: Db,
    tweak: impl FnOnce(&mut Settings),
) -> (TestDb, fixture::World, TestServer) {
    let db = TestDb::create(kind).await;
    let world = fixture::World::new();
    db.store()
        .await
        .insert_dataset(&world.data)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut s = settings(&db.url);
    tweak(&mut s);
    let server = TestServer::start(s).await;
    (db, world, server)
}

/// A minimal HTTP/1.0 GET, enough for the ops port.
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut raw = String::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_string(&mut raw))
        .await
        .unwrap_or_else(|_| panic!("GET {path} timed out"))
        .unwrap_or_else(|e| panic!("{e}"));
    let status = raw
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad HTTP response: {raw}"));
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// Expands one async test body into a PostgreSQL and a SQLite test.
#[macro_export]
macro_rules! on_both_databases {
    ($name:ident, $body:path) => {
        mod $name {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                $body($crate::common::Db::Postgres).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                $body($crate::common::Db::Sqlite).await;
            }
        }
    };
}
