//! The release server processes a report starts: each on free loopback
//! ports, in a working directory of its own, with the run's database and
//! shared tiers; and what they show on their ops port.

use std::{net::TcpListener, path::PathBuf, time::Duration};

use tokio::process::{Child, Command};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use super::LoadError;

/// The replicas' `cache_max_lag` in a replica report: the staleness bound
/// they promise.
pub const REPLICA_CACHE_MAX_LAG: Duration = Duration::from_secs(5);

pub struct StandardOptions {
    pub scale: f64,
    pub seed: u64,
    /// A PostgreSQL server URL; a fresh database is created there and
    /// dropped afterwards. SQLite in a temporary file when absent.
    pub postgres_url: Option<String>,
    pub configs: PathBuf,
    pub out: PathBuf,
    pub server_bin: PathBuf,
    /// Redis for the shared tier (keys under `redis_prefix`, removed after).
    pub redis_url: Option<String>,
    pub redis_prefix: String,
    /// Turn the database cache tier on.
    pub db_cache: bool,
    /// Scenario names to run (all when empty); the ceiling always runs.
    pub only: Vec<String>,
    pub duration_factor: f64,
    /// Every ramp stage lasts this long (seconds) instead of its config's
    /// duration times `duration_factor`.
    pub stage_seconds: Option<f64>,
    /// Ramp users log in (password) before they authorize by token.
    pub ramp_logins: bool,
    /// More than 1: start this many replicas and run the replica scenarios
    /// (`replicas`) instead of the standard ones.
    pub replicas: usize,
}

pub(super) fn free_port() -> Result<u16, LoadError> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| LoadError(format!("no free loopback port: {e}")))
}

pub(super) async fn wait_serving(addr: &str, server: &mut Child) -> Result<(), LoadError> {
    for _ in 0..600 {
        if let Ok(Some(status)) = server.try_wait() {
            return Err(LoadError(format!("the server exited early ({status})")));
        }
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| LoadError(format!("{addr}: {e}")))?
            .connect()
            .await;
        if let Ok(channel) = channel {
            let request = HealthCheckRequest::default();
            let answer = HealthClient::new(channel).check(request).await;
            if answer.is_ok_and(|r| r.into_inner().status() == ServingStatus::Serving) {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(LoadError(
        "the server did not report SERVING within 60 s".into(),
    ))
}

/// Every sample a server's ops port shows at `/metrics` (name with
/// labels, value); empty when it cannot be read.
pub(super) async fn scrape(ops: &str) -> Vec<(String, f64)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut stream) = tokio::net::TcpStream::connect(ops).await else {
        return Vec::new();
    };
    let request = format!("GET /metrics HTTP/1.0\r\nHost: {ops}\r\n\r\n");
    let mut text = String::new();
    if stream.write_all(request.as_bytes()).await.is_err()
        || stream.read_to_string(&mut text).await.is_err()
    {
        return Vec::new();
    }
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter_map(|(name, value)| Some((name.to_owned(), value.parse().ok()?)))
        .collect()
}

/// A server of the run, in a working directory of its own (its audit spill
/// file is there, so an earlier run's unreplayed events never reach this
/// run's database); `stop` removes the directory after the server.
pub(super) struct Server {
    pub(super) child: Child,
    pub(super) addr: String,
    pub(super) ops: String,
    dir: PathBuf,
}

impl Server {
    pub(super) async fn stop(mut self) {
        let _ = self.child.kill().await;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Starts `velro-authz serve` on free loopback ports with the run's
/// database and shared tiers.
pub(super) fn start_server(options: &StandardOptions, url: &str) -> Result<Server, LoadError> {
    let (grpc, ops) = (free_port()?, free_port()?);
    let addr = format!("127.0.0.1:{grpc}");
    let dir = std::env::temp_dir().join(format!("velro-report-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).map_err(|e| LoadError(format!("{}: {e}", dir.display())))?;
    let mut command = Command::new(&options.server_bin);
    command.current_dir(&dir);
    if let Some(config) = std::env::var_os("VELRO_CONFIG") {
        let config = std::path::absolute(&config)
            .map_err(|e| LoadError(format!("VELRO_CONFIG {}: {e}", config.display())))?;
        command.env("VELRO_CONFIG", config);
    }
    command
        .args([
            "serve",
            "--listen",
            &addr,
            "--ops-listen",
            &format!("127.0.0.1:{ops}"),
        ])
        .args([
            "--database-url",
            url,
            "--demo-data",
            "false",
            "--log",
            "warn",
        ])
        .args([
            "--db-cache",
            if options.db_cache { "true" } else { "false" },
        ]);
    if options.replicas > 1 {
        let lag = format!("{}ms", REPLICA_CACHE_MAX_LAG.as_millis());
        command.args(["--cache-max-lag", &lag]);
        // One runtime worker each, as a one-CPU pod would run: N replicas
        // with a worker per core of this machine would measure how the
        // kernel shares two cores among them, not what a decision costs.
        command.env("TOKIO_WORKER_THREADS", "1");
    }
    if let Some(redis) = &options.redis_url {
        command.args([
            "--redis-url",
            redis,
            "--redis-prefix",
            &options.redis_prefix,
        ]);
    }
    let child = command.kill_on_drop(true).spawn().map_err(|e| {
        LoadError(format!(
            "cannot start {}: {e}",
            options.server_bin.display()
        ))
    })?;
    Ok(Server {
        child,
        addr,
        ops: format!("127.0.0.1:{ops}"),
        dir,
    })
}
