//! The server binary as a process of its own, on free loopback ports: what
//! an operator runs, with its real start-up (config file, telemetry, logs),
//! and no state shared with the other tests of this binary.

use std::{net::TcpListener, path::Path, process::Stdio, time::Duration};

use tonic::transport::Channel;
use velro_authz::proto::authorization_service_client::AuthorizationServiceClient;

use super::eventually;

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `velro-authz serve` on a config file and database, with no demo data
/// and cheap hashing unless `extra` (more flags) sets the Argon2 cost.
pub fn serve(
    config: &Path,
    database_url: &str,
    grpc: u16,
    ops: u16,
    extra: &[&str],
) -> tokio::process::Child {
    let cheap: &[&str] = match extra.iter().any(|a| a.starts_with("--argon2")) {
        true => &[],
        false => &["--argon2-memory-kib", "1024", "--argon2-iterations", "1"],
    };
    tokio::process::Command::new(env!("CARGO_BIN_EXE_velro-authz"))
        .args(["serve", "--config"])
        .arg(config)
        .args(["--database-url", database_url])
        .args(["--listen", &format!("127.0.0.1:{grpc}")])
        .args(["--ops-listen", &format!("127.0.0.1:{ops}")])
        .args(["--demo-data", "false", "--log", "warn"])
        .args(cheap)
        .args(["--cache-max-lag", "60s"])
        .args(extra)
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start the velro-authz binary: {e}"))
}

/// A client of the process on `grpc`, once it answers (30 s at most).
pub async fn connect(grpc: u16) -> AuthorizationServiceClient<Channel> {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], grpc));
    eventually(
        Duration::from_secs(30),
        "the server answering",
        || async move {
            match Channel::from_shared(format!("http://{addr}"))
                .unwrap()
                .connect()
                .await
            {
                Ok(channel) => Ok(AuthorizationServiceClient::new(channel)),
                Err(e) => Err(e.to_string()),
            }
        },
    )
    .await
}

/// A server process on an empty config file, and a client of it.
pub struct Process {
    pub child: tokio::process::Child,
    pub client: AuthorizationServiceClient<Channel>,
    _dir: tempfile::TempDir,
}

impl Process {
    /// Starts `serve` on `database_url` with `extra` flags; returns once it
    /// answers.
    pub async fn start(database_url: &str, extra: &[&str]) -> Process {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("velro.toml");
        std::fs::write(&config, "").unwrap();
        let (grpc, ops) = (free_port(), free_port());
        let child = serve(&config, database_url, grpc, ops, extra);
        let client = connect(grpc).await;
        Process {
            child,
            client,
            _dir: dir,
        }
    }
}
