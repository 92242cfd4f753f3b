//! A private Redis Cluster: three `redis-server --cluster-enabled yes`
//! processes on free loopback ports, joined by `redis-cli --cluster create`
//! (no replicas). A node can be killed and started again on the same port
//! and directory (its `nodes.conf` keeps its slots). The machine's shared
//! Redis is never touched.

use std::{
    process::{Child, Command, Stdio},
    time::Duration,
};

use redis::aio::MultiplexedConnection;

use super::process::free_port;

struct Node {
    port: u16,
    bus_port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Node {
    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--cluster-port", &self.bus_port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--cluster-enabled", "yes"])
            .args(["--cluster-config-file", "nodes.conf"])
            .args(["--cluster-node-timeout", "1000"])
            // The live nodes keep serving their slots while one is down.
            .args(["--cluster-require-full-coverage", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("redis-server is needed for this test ({e})"));
        self.child = Some(child);
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub struct RedisCluster {
    nodes: Vec<Node>,
}

async fn listening(port: u16) {
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the private Redis node did not listen on {port}");
}

impl RedisCluster {
    pub async fn start() -> RedisCluster {
        let mut nodes: Vec<Node> = (0..3)
            .map(|_| Node {
                port: free_port(),
                bus_port: free_port(),
                dir: tempfile::tempdir().unwrap(),
                child: None,
            })
            .collect();
        for node in &mut nodes {
            node.spawn();
        }
        let cluster = RedisCluster { nodes };
        for node in &cluster.nodes {
            listening(node.port).await;
        }
        let addresses: Vec<String> = cluster
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addresses)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .unwrap_or_else(|e| panic!("redis-cli is needed for this test ({e})"));
        assert!(
            out.status.success(),
            "redis-cli --cluster create: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        for i in 0..cluster.nodes.len() {
            cluster.wait_ok(i).await;
        }
        cluster
    }

    /// The seed URLs, as `redis_cluster_urls` takes them.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(Node::url).collect()
    }

    async fn connect(&self, i: usize) -> MultiplexedConnection {
        redis::Client::open(self.nodes[i].url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }

    /// Waits until node `i` sees the whole cluster as served.
    async fn wait_ok(&self, i: usize) {
        for _ in 0..200 {
            if let Ok(client) = redis::Client::open(self.nodes[i].url())
                && let Ok(mut c) = client.get_multiplexed_async_connection().await
            {
                let info: String = redis::cmd("CLUSTER")
                    .arg("INFO")
                    .query_async(&mut c)
                    .await
                    .unwrap_or_default();
                if info.contains("cluster_state:ok") {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the private Redis Cluster did not reach cluster_state:ok");
    }

    /// The keys node `i` holds under `prefix`.
    pub async fn keys_on(&self, i: usize, prefix: &str) -> Vec<String> {
        redis::cmd("KEYS")
            .arg(format!("{prefix}*"))
            .query_async(&mut self.connect(i).await)
            .await
            .unwrap()
    }

    /// The node holding a key under `prefix` that contains `part`.
    pub async fn holder_of(&self, prefix: &str, part: &str) -> usize {
        for i in 0..self.nodes.len() {
            if self
                .keys_on(i, prefix)
                .await
                .iter()
                .any(|k| k.contains(part))
            {
                return i;
            }
        }
        panic!("no node holds a key containing {part:?}");
    }

    /// Kills node `i` (SIGKILL): its slots have no server until it is back.
    pub fn kill(&mut self, i: usize) {
        self.nodes[i].stop();
    }

    /// Starts node `i` again on its port and directory, and waits until the
    /// cluster is whole.
    pub async fn restart(&mut self, i: usize) {
        self.nodes[i].spawn();
        listening(self.nodes[i].port).await;
        for j in 0..self.nodes.len() {
            self.wait_ok(j).await;
        }
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            node.stop();
        }
    }
}
