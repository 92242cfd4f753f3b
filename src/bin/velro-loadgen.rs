//! `velro-loadgen`: ghz configs run from this machine (see ghz_bench/README.md).

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use velro_authz::loadgen::{
    self, LoadError, RunOptions,
    data::{self, Sizes, WorkloadId},
    report::RunReport,
    standard::{self, StandardOptions},
};

#[derive(Parser)]
#[command(
    name = "velro-loadgen",
    version,
    about = "Load generator for velro-authz that reads ghz config files"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run ghz configs (files, or directories of stage configs run in order).
    Run {
        #[arg(required = true)]
        configs: Vec<PathBuf>,
        /// Target address, replacing each config's `host`; several,
        /// comma-separated (replicas), get the connections round robin.
        #[arg(long)]
        host: Option<String>,
        /// Read data files by name from this directory instead.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Do not compare answers with the expected decisions.
        #[arg(long)]
        no_check: bool,
        /// Compare every n-th answer.
        #[arg(long, default_value_t = 4)]
        check_every: u64,
        /// Multiply every duration by this factor.
        #[arg(long, default_value_t = 1.0)]
        duration_factor: f64,
        /// Where the JSON results and SVG chart go.
        #[arg(long, default_value = "ghz_bench/results")]
        out: PathBuf,
    },
    /// Run a ramp directory with virtual users against a running server:
    /// each logs in once as a workload user, then authorizes by token at its
    /// rate; prints each stage's verdicts against the seed's targets.
    Ramp {
        #[arg(default_value = "ghz_bench/ramp")]
        dir: PathBuf,
        #[arg(long, default_value = "127.0.0.1:50051")]
        host: String,
        /// The workload the server was seeded with.
        #[arg(long, default_value_t = 42)]
        seed: u64,
        #[arg(long, default_value_t = 1.0)]
        scale: f64,
        #[arg(long)]
        stage_seconds: Option<f64>,
        #[arg(long, default_value_t = 1.0)]
        duration_factor: f64,
        #[arg(long)]
        no_logins: bool,
        #[arg(long, default_value = "ghz_bench/results")]
        out: PathBuf,
    },
    /// Draw the ghz data files (and workload.json) from the reference workload.
    Data {
        #[arg(long, default_value_t = 42)]
        seed: u64,
        #[arg(long, default_value_t = 1.0)]
        scale: f64,
        /// Entries in the Zipf (hot) Authorize data file.
        #[arg(long, default_value_t = 5_000)]
        hot: usize,
        /// Entries in the uniform Authorize data file.
        #[arg(long, default_value_t = 5_000)]
        uniform: usize,
        /// Requests in the BatchAuthorize data file (50 items each).
        #[arg(long, default_value_t = 100)]
        batches: usize,
        #[arg(long, default_value = "ghz_bench/data")]
        out: PathBuf,
    },
    /// Log in as the workload's users on a running server and write their
    /// access tokens (and Envoy checks made with them) as data files; tokens
    /// expire, 15 min by default.
    Tokens {
        #[arg(long, default_value = "127.0.0.1:50051")]
        host: String,
        #[arg(long, default_value_t = 42)]
        seed: u64,
        #[arg(long, default_value_t = 1.0)]
        scale: f64,
        #[arg(long, default_value_t = 50)]
        users: usize,
        #[arg(long, default_value = "ghz_bench/data")]
        out: PathBuf,
    },
    /// The standard report: build first (ghz_bench/report.sh does), then seed,
    /// serve, run every scenario with the health-check ceiling, stop.
    Report {
        #[arg(long, default_value_t = 1.0)]
        scale: f64,
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Run on PostgreSQL: a fresh database is created on this server and dropped after.
        #[arg(long)]
        postgres_url: Option<String>,
        /// Give the server this Redis for its shared tier (and run a cold replica too).
        #[arg(long)]
        redis_url: Option<String>,
        /// Turn the server's database cache tier on (and run a cold replica too).
        #[arg(long)]
        db_cache: bool,
        /// Only these scenarios (e.g. authorize_hot,ramp); the ceiling always runs.
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
        #[arg(long, default_value_t = 1.0)]
        duration_factor: f64,
        /// Every ramp stage lasts this many seconds (e.g. 60).
        #[arg(long)]
        stage_seconds: Option<f64>,
        /// Ramp users authorize by user id without logging in first.
        #[arg(long)]
        no_ramp_logins: bool,
        #[arg(long, default_value = "ghz_bench")]
        configs: PathBuf,
        #[arg(long, default_value = "ghz_bench/results")]
        out: PathBuf,
        /// The server binary; by default `velro-authz` beside this one.
        #[arg(long)]
        server_bin: Option<PathBuf>,
        /// Start this many replicas on the same PostgreSQL (and Redis) and
        /// run Authorize hot, uniform and BatchAuthorize(50) across 1..=N
        /// of them: aggregate, per-replica CPU and hit rate, staleness.
        #[arg(long, default_value_t = 1)]
        replicas: usize,
    },
}

fn sibling_server() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("velro-authz")))
        .unwrap_or_else(|| PathBuf::from("velro-authz"))
}

async fn execute(command: Command) -> Result<(), LoadError> {
    match command {
        Command::Run {
            configs,
            host,
            data_dir,
            no_check,
            check_every,
            duration_factor,
            out,
        } => {
            let options = RunOptions {
                host,
                data_dir,
                check: !no_check,
                check_every,
                duration_factor,
                connections: None,
                start_at: 0.0,
                rps: None,
                concurrency: None,
                one_pass: false,
            };
            let mut report = RunReport {
                started_at: standard::utc_timestamp(std::time::SystemTime::now()),
                setup: Default::default(),
                scenarios: Vec::new(),
                replicas: None,
            };
            for config in &configs {
                report
                    .scenarios
                    .push(loadgen::run_scenario(config, &options).await?);
            }
            report.relate_to_ceiling();
            report.print();
            let stem = format!("run-{}", report.started_at.replace([':', '-'], ""));
            for path in report.write(&out, &stem)? {
                println!("wrote {}", path.display());
            }
            fail_on_mismatch(&report)
        }
        Command::Ramp {
            dir,
            host,
            seed,
            scale,
            stage_seconds,
            duration_factor,
            no_logins,
            out,
        } => {
            let data = std::sync::Arc::new(velro_authz::model::workload::generate(scale, seed));
            let scenario = loadgen::run_user_ramp(
                &dir,
                &host,
                data,
                stage_seconds,
                duration_factor,
                !no_logins,
            )
            .await?;
            let report = RunReport {
                started_at: standard::utc_timestamp(std::time::SystemTime::now()),
                setup: Default::default(),
                scenarios: vec![scenario],
                replicas: None,
            };
            report.print();
            let stem = format!("ramp-{}", report.started_at.replace([':', '-'], ""));
            for path in report.write(&out, &stem)? {
                println!("wrote {}", path.display());
            }
            fail_on_mismatch(&report)
        }
        Command::Data {
            seed,
            scale,
            hot,
            uniform,
            batches,
            out,
        } => {
            let sizes = Sizes {
                hot,
                uniform,
                batches,
                ..Sizes::default()
            };
            for path in data::write_files(&out, WorkloadId { seed, scale }, sizes)? {
                println!("wrote {}", path.display());
            }
            Ok(())
        }
        Command::Tokens {
            host,
            seed,
            scale,
            users,
            out,
        } => {
            let data = velro_authz::model::workload::generate(scale, seed);
            for path in loadgen::tokens::write_token_files(&host, &data, users, &out).await? {
                println!("wrote {}", path.display());
            }
            Ok(())
        }
        Command::Report {
            scale,
            seed,
            postgres_url,
            redis_url,
            db_cache,
            only,
            duration_factor,
            stage_seconds,
            no_ramp_logins,
            configs,
            out,
            server_bin,
            replicas,
        } => {
            let report = standard::run(StandardOptions {
                scale,
                seed,
                postgres_url,
                redis_prefix: format!("velro-bench-{}:", std::process::id()),
                redis_url,
                db_cache,
                configs,
                out,
                server_bin: server_bin.unwrap_or_else(sibling_server),
                only,
                duration_factor,
                stage_seconds,
                ramp_logins: !no_ramp_logins,
                replicas,
            })
            .await?;
            fail_on_mismatch(&report)
        }
    }
}

fn fail_on_mismatch(report: &RunReport) -> Result<(), LoadError> {
    match report.mismatches() {
        0 => Ok(()),
        n => Err(LoadError(format!(
            "{n} answers differed from the expected decisions: the run fails"
        ))),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(execute(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
