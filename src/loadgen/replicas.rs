//! `report --replicas N`: for n = 1..=N, n servers started on one
//! PostgreSQL (and Redis), each on its own ports. Authorize hot, uniform
//! and BatchAuthorize(50) run across them (closed loop, the same requests
//! in flight per replica), the connections spread round robin;
//! for each: the aggregate, each replica's decisions, hit rate and CPU per
//! 1,000 decisions (from /proc), and the staleness of plain SQL writes made
//! while the load runs (the time until every replica answers the new
//! decision).

use std::{
    collections::BTreeMap,
    path::Path,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use sqlx::Connection;
use tonic::transport::Channel;

use super::{
    LoadError, RunOptions,
    replica_report::{Cost, ReplicaReport, ReplicaRow},
    report::RunReport,
    run_scenario,
    servers::{self, Server, StandardOptions},
    staleness::{Prober, staleness},
};
use crate::proto::authorization_service_client::AuthorizationServiceClient;

/// The scenarios, each as a closed loop with this many requests in flight
/// per replica: every replica is kept busy whatever N is, so that a
/// decision's measured cost is what the replica spends on it, not how often
/// the replica wakes from idle (at a fixed rate, the idler the shared cores,
/// the more a wakeup costs a request; so at the same rate per replica three
/// replicas looked as cheap as 0.63 of one, and at the same total rate as
/// dear as 1.61: docs/scaling.md). Uniform keeps only 4 in flight: with 16
/// the one database on the same cores was the bottleneck at every n.
pub const SCENARIOS: [(&str, usize); 3] = [
    ("authorize_hot.json", 16),
    ("authorize_uniform.json", 4),
    ("batch_authorize_50.json", 4),
];
/// The scenarios whose keys repeat: every replica gets one whole pass over
/// their file just before each run, so every n starts from the same warm
/// cache (the in-process tier's entries live `cache_ttl`, 30 s, so a warm-up
/// at the start would have expired for the later runs).
const WARMED: [&str; 2] = ["authorize_hot.json", "batch_authorize_50.json"];
/// Connections per replica, whatever n is: with a fixed total instead, a
/// replica of three got three times the requests per connection of a
/// replica alone, and h2 then reads and writes several of them at once
/// (one of the reasons three replicas looked cheaper than one).
const CONNECTIONS_PER_REPLICA: usize = 2;
/// The longest wait for the replicas' audit backlog after a scenario.
const AUDIT_SETTLE_AT_MOST: Duration = Duration::from_secs(180);
/// /proc reports CPU time in USER_HZ ticks, 100 a second on Linux.
const TICKS_PER_SECOND: f64 = 100.0;

/// A replica's counters at one moment.
#[derive(Clone, Default)]
struct Sample {
    cpu_seconds: f64,
    decisions: f64,
    lookups: f64,
    cached: f64,
    computations: f64,
    db_queries: f64,
    /// Requests shed so far, by signal (the metric's `reason` label).
    shed: BTreeMap<String, f64>,
}

/// The signal of a `velro_authz_requests_shed_total{reason="…"}` sample.
fn shed_signal(name: &str) -> Option<&str> {
    let labels = name.strip_prefix("velro_authz_requests_shed_total{")?;
    let (_, rest) = labels.split_once("reason=\"")?;
    rest.split_once('"').map(|(reason, _)| reason)
}

/// User + system CPU of a process, from /proc/<pid>/stat.
fn cpu_seconds(pid: Option<u32>) -> f64 {
    let Some(stat) = pid.and_then(|p| std::fs::read_to_string(format!("/proc/{p}/stat")).ok())
    else {
        return 0.0;
    };
    // Fields after the command name (which may hold spaces): state is the
    // 3rd field of the line, utime the 14th, stime the 15th.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok());
    match (ticks(11), ticks(12)) {
        (Some(user), Some(system)) => (user + system) / TICKS_PER_SECOND,
        _ => 0.0,
    }
}

async fn sample(server: &Server) -> Sample {
    let metrics = servers::scrape(&server.ops).await;
    let sum = |wanted: &dyn Fn(&str) -> bool| -> f64 {
        metrics
            .iter()
            .filter(|(name, _)| wanted(name))
            .map(|(_, v)| v)
            .sum()
    };
    let lookup = |name: &str| name.starts_with("velro_authz_cache_lookups_total{");
    Sample {
        cpu_seconds: cpu_seconds(server.child.id()),
        decisions: sum(&|n| n.starts_with("velro_authz_decisions_total")),
        lookups: sum(&|n| lookup(n) && n.contains("tier=\"in_process\"")),
        cached: sum(&|n| {
            lookup(n)
                && n.contains("result=\"hit\"")
                && ["in_process", "redis", "database"]
                    .iter()
                    .any(|t| n.contains(&format!("tier=\"{t}\"")))
        }),
        computations: sum(&|n| n.starts_with("velro_authz_permission_computations_total")),
        db_queries: sum(&|n| n == "velro_authz_db_pool_acquire_seconds_count"),
        shed: metrics
            .iter()
            .filter_map(|(name, v)| Some((shed_signal(name)?.to_owned(), *v)))
            .collect(),
    }
}

/// Whether a replica has written every audit event it queued or spilled.
async fn audit_settled(server: &Server) -> bool {
    let metrics = servers::scrape(&server.ops).await;
    let value = |name: &str| {
        metrics
            .iter()
            .find(|(n, _)| n == name)
            .map_or(0.0, |(_, v)| *v)
    };
    value("velro_authz_audit_queue_depth") == 0.0
        && value("velro_authz_audit_events_replayed_total")
            >= value("velro_authz_audit_events_spilled_total")
}

/// Waits until every replica has caught up with its audit (at most
/// `AUDIT_SETTLE_AT_MOST`): a scenario's own audit writing is its cost,
/// not the next scenario's.
async fn settle_audit(servers: &[Server]) {
    let started = Instant::now();
    while started.elapsed() < AUDIT_SETTLE_AT_MOST {
        let settled = futures::future::join_all(servers.iter().map(audit_settled)).await;
        if settled.into_iter().all(|s| s) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("the replicas' audit had not caught up after {AUDIT_SETTLE_AT_MOST:?}");
}

/// A connection to the run's Redis, opened once, for its counters.
async fn redis_connection(url: Option<&str>) -> Option<redis::aio::MultiplexedConnection> {
    let client = redis::Client::open(url?).ok()?;
    client.get_multiplexed_async_connection().await.ok()
}

/// Commands the Redis server has processed so far (`INFO stats`).
async fn redis_commands(connection: &mut Option<redis::aio::MultiplexedConnection>) -> Option<f64> {
    let info: String = redis::cmd("INFO")
        .arg("stats")
        .query_async(connection.as_mut()?)
        .await
        .ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix("total_commands_processed:"))
        .and_then(|v| v.trim().parse().ok())
}

/// The audit table's size on disk per row (table, indexes and TOAST).
async fn audit_bytes_per_row(url: &str) -> Option<f64> {
    let mut conn = sqlx::PgConnection::connect(url).await.ok()?;
    let (bytes, rows): (i64, i64) = sqlx::query_as(
        "SELECT pg_total_relation_size('audit_log'), (SELECT count(*) FROM audit_log)",
    )
    .fetch_one(&mut conn)
    .await
    .ok()?;
    (rows > 0).then(|| bytes as f64 / rows as f64)
}

/// CPU per second of idle replicas (what following the change log and the
/// background tasks cost), over `window`.
async fn idle_cpu_ms_per_second(servers: &[Server], window: Duration) -> f64 {
    let before: Vec<f64> = servers.iter().map(|s| cpu_seconds(s.child.id())).collect();
    tokio::time::sleep(window).await;
    let spent: f64 = servers
        .iter()
        .zip(before)
        .map(|(s, b)| cpu_seconds(s.child.id()) - b)
        .sum();
    spent * 1e3 / window.as_secs_f64() / servers.len().max(1) as f64
}

async fn client(addr: &str) -> Result<AuthorizationServiceClient<Channel>, LoadError> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| LoadError(format!("{addr}: {e}")))?
        .connect()
        .await
        .map_err(|e| LoadError(format!("{addr}: {e}")))?;
    Ok(AuthorizationServiceClient::new(channel))
}

/// Sends every request of `config`'s file once to each replica (all at
/// once), then waits for the audit of it to be written.
async fn warm(replicas: &[Server], config: &Path, data_dir: &Path) -> Result<(), LoadError> {
    let name = config.file_stem().map(|s| s.to_string_lossy());
    eprintln!(
        "warming {} replica(s) with one pass of {} …",
        replicas.len(),
        name.unwrap_or_default()
    );
    let passes = replicas.iter().map(|server| {
        let options = RunOptions {
            host: Some(server.addr.clone()),
            data_dir: Some(data_dir.to_path_buf()),
            check: false,
            one_pass: true,
            ..RunOptions::default()
        };
        async move { run_scenario(config, &options).await }
    });
    for pass in futures::future::join_all(passes).await {
        pass?;
    }
    settle_audit(replicas).await;
    Ok(())
}

/// What stays the same across the replica counts of one report.
struct Measuring<'a> {
    options: &'a StandardOptions,
    data_dir: &'a Path,
    prober: Prober,
    redis: Option<redis::aio::MultiplexedConnection>,
    figures: ReplicaReport,
}

/// Runs the replica scenarios for n = 1..=N, each n on n replicas started
/// for it (and stopped after it), so that no count inherits another's
/// caches, heap or connections.
pub async fn run(
    options: &StandardOptions,
    url: &str,
    data_dir: &Path,
    report: &mut RunReport,
) -> Result<(), LoadError> {
    let mut measuring = Measuring {
        options,
        data_dir,
        prober: Prober::create(url).await?,
        redis: redis_connection(options.redis_url.as_deref()).await,
        figures: ReplicaReport::default(),
    };
    let outcome = async {
        for count in 1..=options.replicas {
            let mut servers: Vec<Server> = Vec::new();
            let result = async {
                for _ in 0..count {
                    let mut server = servers::start_server(options, url)?;
                    servers::wait_serving(&server.addr, &mut server.child).await?;
                    servers.push(server);
                }
                if count == options.replicas {
                    eprintln!("measuring {count} idle replicas for 10 s …");
                    measuring.figures.inputs.insert(
                        "idle replica CPU ms per second (change-log follower and timers)".into(),
                        idle_cpu_ms_per_second(&servers, Duration::from_secs(10)).await,
                    );
                }
                measuring.count(&servers, report).await
            }
            .await;
            for server in servers {
                server.stop().await;
            }
            result?;
        }
        Ok::<(), LoadError>(())
    }
    .await;
    let Measuring {
        prober,
        mut figures,
        ..
    } = measuring;
    prober.remove().await;
    outcome?;
    if let Some(bytes) = audit_bytes_per_row(url).await {
        figures.inputs.insert(
            "audit bytes per decision (PostgreSQL, on disk)".into(),
            bytes,
        );
    }
    figures.relate_to_one_replica();
    report.replicas = Some(figures);
    Ok(())
}

impl Measuring<'_> {
    /// The scenarios across `targets` (fresh replicas, all of them).
    async fn count(&mut self, targets: &[Server], report: &mut RunReport) -> Result<(), LoadError> {
        let (options, data_dir, count) = (self.options, self.data_dir, targets.len());
        let mut polled = Vec::new();
        for server in targets {
            polled.push(client(&server.addr).await?);
        }
        let host: Vec<&str> = targets.iter().map(|s| s.addr.as_str()).collect();
        let run = RunOptions {
            host: Some(host.join(",")),
            data_dir: Some(data_dir.to_path_buf()),
            duration_factor: options.duration_factor,
            connections: Some(count * CONNECTIONS_PER_REPLICA),
            // Each count reads its own part of the uniform file, so its keys
            // are new to every tier (hot keys repeat by design).
            start_at: (count - 1) as f64 / options.replicas as f64,
            ..RunOptions::default()
        };
        for (name, in_flight) in SCENARIOS {
            let stem = name.trim_end_matches(".json");
            let run = RunOptions {
                concurrency: Some(in_flight * count),
                ..run.clone()
            };
            if WARMED.contains(&name) {
                warm(targets, &options.configs.join(name), data_dir).await?;
            }
            eprintln!("running {stem} across {count} replica(s) …");
            let before = futures::future::join_all(targets.iter().map(sample)).await;
            let commands_before = redis_commands(&mut self.redis).await;
            let stop = AtomicBool::new(false);
            let (scenario, seen) = tokio::join!(
                async {
                    let result = run_scenario(&options.configs.join(name), &run).await;
                    stop.store(true, Ordering::Release);
                    result
                },
                self.prober.probe(&polled, &stop)
            );
            let (mut scenario, seen) = (scenario?, seen?);
            settle_audit(targets).await;
            let after = futures::future::join_all(targets.iter().map(sample)).await;
            let commands = match (commands_before, redis_commands(&mut self.redis).await) {
                (Some(b), Some(a)) => Some(a - b),
                _ => None,
            };
            let figures = &mut self.figures;
            let first_row = figures.rows.len();
            for (i, (b, a)) in before.iter().zip(&after).enumerate() {
                let decisions = (a.decisions - b.decisions).max(0.0);
                let cpu = (a.cpu_seconds - b.cpu_seconds).max(0.0);
                let lookups = a.lookups - b.lookups;
                figures.rows.push(ReplicaRow {
                    replicas: count,
                    scenario: stem.to_owned(),
                    replica: i + 1,
                    decisions: decisions as u64,
                    cpu_seconds: cpu,
                    cpu_ms_per_1000_decisions: (decisions > 0.0).then(|| cpu * 1e6 / decisions),
                    hit_rate: (lookups > 0.0).then(|| (a.cached - b.cached) / lookups),
                    computations: (a.computations - b.computations).max(0.0) as u64,
                    db_queries: (a.db_queries - b.db_queries).max(0.0) as u64,
                    shed: a
                        .shed
                        .iter()
                        .map(|(signal, n)| {
                            let before = b.shed.get(signal).copied().unwrap_or(0.0);
                            (signal.clone(), (n - before).max(0.0) as u64)
                        })
                        .filter(|(_, n)| *n > 0)
                        .collect(),
                });
            }
            let seconds = scenario.overall.seconds;
            if let Some(cost) = Cost::of(&figures.rows[first_row..], seconds, commands) {
                figures.cost.push(cost);
            }
            figures.staleness.push(staleness(count, stem, &seen));
            scenario.name = format!("{stem} x{count}");
            report.scenarios.push(scenario);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::shed_signal;

    #[test]
    fn shed_samples_are_read_by_signal() {
        let lag = r#"velro_authz_requests_shed_total{reason="runtime_lag"}"#;
        assert_eq!(shed_signal(lag), Some("runtime_lag"));
        assert_eq!(shed_signal("velro_authz_requests_shed_total"), None);
        assert_eq!(
            shed_signal(r#"velro_authz_decisions_total{reason="x"}"#),
            None
        );
    }
}
