//! A private NATS server with JetStream (`nats-server -js`) on a free
//! loopback port, its store in a temp dir; it can be stopped and started
//! again on the same port and store. The machine's shared server on 4222
//! is never touched.

use std::{
    collections::BTreeMap,
    process::{Child, Command, Stdio},
    time::Duration,
};

use velro_authz::{audit::jetstream::JetStreamConfig, support::duration::HumanDuration};

use super::process::free_port;

pub struct PrivateNats {
    pub port: u16,
    store: tempfile::TempDir,
    child: Option<Child>,
}

impl PrivateNats {
    pub async fn start() -> PrivateNats {
        let mut nats = PrivateNats {
            port: free_port(),
            store: tempfile::tempdir().unwrap(),
            child: None,
        };
        nats.resume().await;
        nats
    }

    /// Starts the server (again), on the same port and store.
    pub async fn resume(&mut self) {
        let child = Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string(), "-js"])
            .arg("-sd")
            .arg(self.store.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("nats-server is needed for this test ({e})"));
        self.child = Some(child);
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the private nats-server did not listen on {}", self.port);
    }

    /// Stops the server (SIGKILL: an outage, not a shutdown).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// `[audit.jetstream]` for this server, with short timeouts.
    pub fn config(&self) -> JetStreamConfig {
        JetStreamConfig {
            url: format!("nats://127.0.0.1:{}", self.port),
            publish_timeout: HumanDuration(Duration::from_millis(500)),
            ..JetStreamConfig::default()
        }
    }

    /// The TOML section for a config file.
    pub fn toml(&self) -> String {
        format!(
            "[audit.jetstream]\nurl = \"nats://127.0.0.1:{}\"\npublish_timeout = \"500ms\"\n",
            self.port
        )
    }

    /// Every message of `kind` in the stream: event id -> how many times.
    pub async fn events(&self, kind: &str) -> BTreeMap<String, usize> {
        let mut seen = BTreeMap::new();
        let read =
            velro_authz::audit::jetstream::tail(&self.config(), 1, None, false, |_, json| {
                let event: serde_json::Value = serde_json::from_str(json).unwrap();
                if event["kind"] == kind {
                    *seen
                        .entry(event["id"].as_str().unwrap().to_owned())
                        .or_insert(0) += 1;
                }
            })
            .await;
        match read {
            Ok(_) => seen,
            // No event yet: the stream is created with the first batch.
            Err(e) if e.contains("not found") => seen,
            Err(e) => panic!("reading the stream: {e}"),
        }
    }
}

impl Drop for PrivateNats {
    fn drop(&mut self) {
        self.stop();
    }
}
