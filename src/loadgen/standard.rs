//! The standard report: seed the reference workload into a fresh database,
//! start the release server on it, run every scenario of `ghz_bench/`
//! (always with the health-check ceiling first), write the results, and
//! stop every process it started.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Stdio,
    time::SystemTime,
};

use sqlx::Connection;
use tokio::process::Command;

pub use super::servers::StandardOptions;
use super::servers::{scrape, start_server, wait_serving};
use super::{
    LoadError, RunOptions,
    data::{self, Sizes, WorkloadId},
    report::{RunReport, ScenarioResult},
    run_scenario, tokens,
};

/// Scenarios in the order they run; the first is the ceiling. `login_storm`
/// is Authorize hot while password logins run at the same time.
pub const SCENARIOS: &[&str] = &[
    "health_check.json",
    "authorize_hot.json",
    "authorize_uniform.json",
    "batch_authorize_50.json",
    "authenticate_token.json",
    "ext_authz_check.json",
    "authenticate_password.json",
    "authenticate_password_4.json",
    LOGIN_STORM,
    "ramp",
];
const LOGIN_STORM: &str = "login_storm";
/// Users whose tokens the bearer-token scenario cycles through.
const TOKEN_USERS: usize = 50;

/// Seconds since the epoch as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn utc_timestamp(now: SystemTime) -> String {
    let secs = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// A database for one report run, removed when the run ends.
enum BenchDb {
    Sqlite(PathBuf),
    Postgres { admin: String, name: String },
}

impl BenchDb {
    async fn create(
        options: &StandardOptions,
        stamp: &str,
    ) -> Result<(BenchDb, String), LoadError> {
        let Some(admin) = &options.postgres_url else {
            // Absolute: the server runs in a directory of its own.
            let file = std::path::absolute(options.out.join(format!("bench-{stamp}.db")))
                .map_err(|e| LoadError(format!("{}: {e}", options.out.display())))?;
            let url = format!("sqlite://{}", file.display());
            return Ok((BenchDb::Sqlite(file), url));
        };
        let name = format!("velro_bench_{}", uuid::Uuid::new_v4().simple());
        let mut conn = sqlx::PgConnection::connect(admin)
            .await
            .map_err(|e| LoadError(format!("PostgreSQL at {admin}: {e}")))?;
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .map_err(|e| LoadError(format!("cannot create database {name}: {e}")))?;
        let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b);
        let url = format!("{base}/{name}");
        Ok((
            BenchDb::Postgres {
                admin: admin.clone(),
                name,
            },
            url,
        ))
    }

    async fn remove(self) {
        match self {
            BenchDb::Sqlite(file) => {
                for suffix in ["", "-wal", "-shm"] {
                    let _ = std::fs::remove_file(format!("{}{suffix}", file.display()));
                }
            }
            BenchDb::Postgres { admin, name } => {
                if let Ok(mut conn) = sqlx::PgConnection::connect(&admin).await {
                    let drop = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                    let _ = sqlx::query(sqlx::AssertSqlSafe(drop))
                        .execute(&mut conn)
                        .await;
                }
            }
        }
    }
}

async fn seed(bin: &Path, url: &str, id: WorkloadId) -> Result<(), LoadError> {
    let status = Command::new(bin)
        .args([
            "seed",
            "--scale",
            &id.scale.to_string(),
            "--seed",
            &id.seed.to_string(),
        ])
        .args(["--database-url", url, "--log", "warn"])
        .stdout(Stdio::null())
        .status()
        .await
        .map_err(|e| LoadError(format!("cannot run {}: {e}", bin.display())))?;
    match status.success() {
        true => Ok(()),
        false => Err(LoadError(format!("seeding failed ({status})"))),
    }
}

/// The server's peak resident set, from /proc (Linux).
fn peak_rss_mib(pid: Option<u32>) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{}/status", pid?)).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// The server's own counters after the run: shed requests, breakers,
/// connections it closed (from its ops port).
async fn server_counters(ops: &str) -> BTreeMap<String, String> {
    let wanted = [
        "velro_authz_requests_shed_total",
        "velro_authz_breaker_state",
        "velro_authz_connections_closed_by_server_total",
        "velro_authz_audit_events_spilled_total",
    ];
    scrape(ops)
        .await
        .into_iter()
        .filter(|(name, _)| wanted.iter().any(|w| name.starts_with(w)))
        .map(|(name, value)| (format!("server {name}"), value.to_string()))
        .collect()
}

/// Runs Authorize hot on a second, cold replica next to the warm one: what
/// the shared tiers give a replica that just started.
async fn cold_replica(
    options: &StandardOptions,
    url: &str,
    run: &RunOptions,
) -> Result<ScenarioResult, LoadError> {
    let mut cold = start_server(options, url)?;
    let addr = cold.addr.clone();
    let result = async {
        wait_serving(&addr, &mut cold.child).await?;
        let run = RunOptions {
            host: Some(addr.clone()),
            ..run.clone()
        };
        let mut scenario = run_scenario(&options.configs.join("authorize_hot.json"), &run).await?;
        scenario.name = "authorize_hot, cold replica".into();
        Ok(scenario)
    }
    .await;
    cold.stop().await;
    result
}

async fn run_against(
    options: &StandardOptions,
    url: &str,
    data_dir: &Path,
    report: &mut RunReport,
) -> Result<(), LoadError> {
    let mut server = start_server(options, url)?;
    let (addr, ops) = (server.addr.clone(), server.ops.clone());
    let result = async {
        wait_serving(&addr, &mut server.child).await?;
        let run = RunOptions {
            host: Some(addr.clone()),
            data_dir: Some(data_dir.to_path_buf()),
            duration_factor: options.duration_factor,
            ..RunOptions::default()
        };
        let mut tokens_written = false;
        for (i, name) in SCENARIOS.iter().enumerate() {
            let stem = name.trim_end_matches(".json");
            if i > 0 && !options.only.is_empty() && !options.only.iter().any(|o| o == stem) {
                continue;
            }
            eprintln!("running {stem} …");
            let needs_tokens = matches!(*name, "authenticate_token.json" | "ext_authz_check.json");
            if needs_tokens && !tokens_written {
                tokens_written = true;
                let data = crate::model::workload::generate(options.scale, options.seed);
                tokens::write_token_files(&addr, &data, TOKEN_USERS, data_dir).await?;
            }
            if *name == "ramp" {
                let data = std::sync::Arc::new(crate::model::workload::generate(
                    options.scale,
                    options.seed,
                ));
                report.scenarios.push(
                    super::run_user_ramp(
                        &options.configs.join("ramp"),
                        &addr,
                        data,
                        options.stage_seconds,
                        options.duration_factor,
                        options.ramp_logins,
                    )
                    .await?,
                );
                continue;
            }
            if *name == LOGIN_STORM {
                let (hot_config, login_config) = (
                    options.configs.join("authorize_hot.json"),
                    options.configs.join("login_storm.json"),
                );
                let (hot, storm) = tokio::join!(
                    run_scenario(&hot_config, &run),
                    run_scenario(&login_config, &run),
                );
                let (mut hot, mut storm) = (hot?, storm?);
                hot.name = "authorize_hot during logins".into();
                storm.name = "  the 64 concurrent logins".into();
                storm.overall.verdicts = super::verdict::login_storm(&storm.overall);
                report.scenarios.extend([hot, storm]);
                continue;
            }
            let mut scenario = run_scenario(&options.configs.join(name), &run).await?;
            if *name == "authenticate_password.json" {
                scenario.overall.verdicts = super::verdict::one_login_at_a_time(&scenario.overall);
            }
            report.scenarios.push(scenario);
        }
        if options.redis_url.is_some() || options.db_cache {
            eprintln!("running authorize_hot on a cold replica …");
            report
                .scenarios
                .push(cold_replica(options, url, &run).await?);
        }
        report.setup.extend(server_counters(&ops).await);
        if let Some(rss) = peak_rss_mib(server.child.id()) {
            report
                .setup
                .insert("server_peak_rss_mib".into(), format!("{rss:.0}"));
        }
        Ok(())
    }
    .await;
    server.stop().await;
    result
}

/// Removes the run's keys from Redis (SCAN, never KEYS, on a shared server).
async fn clear_redis(url: &str, prefix: &str) -> Result<(), LoadError> {
    let fail = |e: redis::RedisError| LoadError(format!("cleaning Redis at {url}: {e}"));
    let client = redis::Client::open(url).map_err(fail)?;
    let mut connection = client
        .get_multiplexed_async_connection()
        .await
        .map_err(fail)?;
    let mut cursor: u64 = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut connection)
            .await
            .map_err(fail)?;
        if !keys.is_empty() {
            let _: () = redis::cmd("DEL")
                .arg(keys)
                .query_async(&mut connection)
                .await
                .map_err(fail)?;
        }
        if next == 0 {
            return Ok(());
        }
        cursor = next;
    }
}

/// Runs the standard report; returns it (already printed and written).
pub async fn run(options: StandardOptions) -> Result<RunReport, LoadError> {
    let now = SystemTime::now();
    let started_at = utc_timestamp(now);
    let stamp = started_at.replace([':', '-'], "");
    let id = WorkloadId {
        seed: options.seed,
        scale: options.scale,
    };
    let data_dir = options
        .out
        .join(format!("data-seed{}-scale{}", id.seed, id.scale));
    // The hot file is cycled, as ghz does; the uniform one is longer than
    // any run so that nearly every request asks for a new key.
    let sizes = Sizes {
        hot: 20_000,
        uniform: 300_000,
        ..Sizes::default()
    };
    eprintln!("drawing request data into {} …", data_dir.display());
    data::write_files(&data_dir, id, sizes)?;

    if options.replicas > 1 && options.postgres_url.is_none() {
        return Err(LoadError(
            "--replicas needs --postgres-url: replicas share one database server".into(),
        ));
    }
    let (db, url) = BenchDb::create(&options, &stamp).await?;
    let mut setup = BTreeMap::new();
    setup.insert(
        "database".into(),
        if options.postgres_url.is_some() {
            "postgresql"
        } else {
            "sqlite"
        }
        .into(),
    );
    let tiers = [
        Some("in-process"),
        options.redis_url.as_ref().map(|_| "redis"),
        options.db_cache.then_some("database"),
    ];
    setup.insert(
        "cache tiers".into(),
        tiers.into_iter().flatten().collect::<Vec<_>>().join(", "),
    );
    setup.insert(
        "workload".into(),
        format!("seed {} scale {}", id.seed, id.scale),
    );
    setup.insert(
        "cpus".into(),
        std::thread::available_parallelism()
            .map_or(0, |n| n.get())
            .to_string(),
    );
    let mut report = RunReport {
        started_at,
        setup,
        scenarios: Vec::new(),
        replicas: None,
    };
    eprintln!("seeding the reference workload (scale {}) …", id.scale);
    report
        .setup
        .insert("replicas".into(), options.replicas.max(1).to_string());
    let result = match seed(&options.server_bin, &url, id).await {
        Ok(()) if options.replicas > 1 => {
            super::replicas::run(&options, &url, &data_dir, &mut report).await
        }
        Ok(()) => run_against(&options, &url, &data_dir, &mut report).await,
        Err(e) => Err(e),
    };
    db.remove().await;
    if let Some(redis) = &options.redis_url {
        clear_redis(redis, &options.redis_prefix).await?;
    }
    result?;
    report.relate_to_ceiling();
    report.print();
    let written = report.write(&options.out, &format!("report-{stamp}"))?;
    for path in written {
        println!("wrote {}", path.display());
    }
    Ok(report)
}
