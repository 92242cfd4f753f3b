//! The monitoring that ships, checked against a real Prometheus: it scrapes
//! a running server while the test drives load, evaluates the shipped rule
//! file, and every query of the Grafana dashboard and every recording rule
//! returns data.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use futures::future::join_all;
use tonic::Request;
use velro_authz::{
    layers::rate_limit::limiter::Tier,
    proto::{self, authenticate_request::Credentials},
};

use crate::common::{
    Db, eventually,
    fixture::authorize,
    http_get,
    login::{PASSWORD, auth_server},
    process::free_port,
    redis::{Prefix, redis_url},
};

fn repository() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

struct Prometheus {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A private Prometheus scraping `target` every second, with the shipped
/// rules evaluated every second.
async fn prometheus(target: SocketAddr, rules: &Path) -> Prometheus {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global: {{ scrape_interval: 1s, evaluation_interval: 1s }}\n\
             rule_files: [{rules:?}]\n\
             scrape_configs:\n  - job_name: velro-authz\n    static_configs:\n      - targets: [\"{target}\"]\n",
        ),
    )
    .unwrap();
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let child = Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address={addr}"))
        .args(["--log.level=warn"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "prometheus is needed for this test and could not be started ({e}); \
                 `bash scripts/test.sh` installs it (Debian package prometheus)"
            )
        });
    let server = Prometheus {
        child,
        addr,
        _dir: dir,
    };
    eventually(Duration::from_secs(30), "Prometheus ready", || async {
        match tokio::net::TcpStream::connect(addr).await {
            Ok(_) => match http_get(addr, "/-/ready").await {
                (200, _) => Ok(()),
                (status, body) => Err(format!("{status} {body}")),
            },
            Err(e) => Err(e.to_string()),
        }
    })
    .await;
    server
}

fn encode(query: &str) -> String {
    query
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// How many series a PromQL query returns now.
async fn series(prometheus: SocketAddr, query: &str) -> Result<usize, String> {
    let (status, body) = http_get(
        prometheus,
        &format!("/api/v1/query?query={}", encode(query)),
    )
    .await;
    if status != 200 {
        return Err(format!("{status}: {body}"));
    }
    let json: serde_json::Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
    Ok(json["data"]["result"].as_array().map_or(0, Vec::len))
}

/// Every query of the dashboard, and every recording rule's name.
fn queries() -> Vec<String> {
    let root = repository().join("monitoring");
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("velro-authz.dashboard.json")).unwrap(),
    )
    .expect("the dashboard is JSON");
    let mut queries: Vec<String> = dashboard["panels"]
        .as_array()
        .expect("the dashboard has panels")
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .map(|t| t["expr"].as_str().unwrap().to_owned())
        .collect();
    let rules = std::fs::read_to_string(root.join("velro-authz.rules.yaml")).unwrap();
    queries.extend(
        rules
            .lines()
            .filter_map(|l| l.trim().strip_prefix("- record: "))
            .map(str::to_owned),
    );
    queries
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_and_recording_rule_has_data_in_a_real_prometheus() {
    let prefix = Prefix::new().await;
    let redis_prefix = prefix.0.clone();
    let w = auth_server(Db::Postgres, move |s| {
        s.redis_url = Some(redis_url());
        s.redis_prefix = redis_prefix;
        s.rate_limit.enabled = true;
        s.rate_limit.tiers = vec![Tier {
            name: "free".into(),
            per_second: 20,
            burst: 20,
        }];
        s.audit.burst_denials = 3;
    })
    .await;
    let world = &w.world;
    let prometheus = prometheus(
        w.server.ops_addr(),
        &repository().join("monitoring/velro-authz.rules.yaml"),
    )
    .await;
    let token = w.tokens(world.viewer).await.access_token;
    let queries = queries();
    assert!(queries.len() >= 20, "{queries:?}");

    let drive = async {
        let mut client = w.server.client.clone();
        let users = [
            world.owner,
            world.viewer,
            world.editor,
            world.admin,
            world.outsider,
        ];
        let sites = [world.private, world.team, world.public];
        for round in 0..60u32 {
            // Decisions of every kind (allows, denials, misses, batches).
            let calls = users
                .iter()
                .flat_map(|u| sites.iter().map(move |s| (*u, *s)))
                .map(|(user, site)| {
                    let mut client = client.clone();
                    async move {
                        let _ = client
                            .authorize(authorize(user, "write", "project", site.project))
                            .await;
                        let _ = client
                            .authorize(authorize(user, "read", "generation", site.generation))
                            .await;
                    }
                });
            join_all(calls).await;
            // By token, a login, a burst over the quota.
            let mut by_token = authorize(world.viewer, "read", "project", world.team.project);
            by_token.user_id.clear();
            by_token.subject_token = token.clone();
            let _ = client.authorize(Request::new(by_token)).await;
            let _ = w
                .authenticate(Credentials::Password(proto::PasswordCredentials {
                    email: w.email(world.editor),
                    password: PASSWORD.into(),
                }))
                .await;
            if round % 10 == 0 {
                join_all((0..30).map(|_| {
                    let mut client = client.clone();
                    async move {
                        let _ = client
                            .authorize(authorize(
                                world.outsider,
                                "read",
                                "project",
                                world.public.project,
                            ))
                            .await;
                    }
                }))
                .await;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        client
            .get_revision(proto::GetRevisionRequest {})
            .await
            .unwrap();
    };
    let check = async {
        let mut empty = Vec::new();
        for _ in 0..60 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            empty.clear();
            for query in &queries {
                match series(prometheus.addr, query).await {
                    Ok(0) => empty.push(query.clone()),
                    Ok(_) => {}
                    Err(e) => panic!("Prometheus refused the query {query}: {e}"),
                }
            }
            if empty.is_empty() {
                return empty;
            }
        }
        empty
    };
    let ((), empty) = tokio::join!(drive, check);
    assert!(
        empty.is_empty(),
        "queries without data after load: {empty:#?}"
    );
    // The shipped rules loaded and evaluate (no rule in error).
    let (_, rules) = http_get(prometheus.addr, "/api/v1/rules").await;
    assert!(rules.contains("velro-authz-alerts"), "{rules}");
    assert!(
        !rules.contains("\"health\":\"err\""),
        "a rule failed to evaluate: {rules}"
    );
    w.server.stop().await;
    prefix.remove().await;
}

/// The shipped rules pass `promtool check rules`, and every alert's unit
/// test passes `promtool test rules`.
#[test]
fn the_rules_pass_promtool() {
    let root = repository().join("monitoring");
    for args in [
        vec!["check", "rules", "velro-authz.rules.yaml"],
        vec!["test", "rules", "velro-authz.rules.test.yaml"],
    ] {
        let out = Command::new("promtool")
            .args(&args)
            .current_dir(&root)
            .output()
            .unwrap_or_else(|e| {
                panic!("promtool is needed ({e}); `bash scripts/test.sh` installs it (Debian package prometheus)")
            });
        assert!(
            out.status.success(),
            "promtool {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
