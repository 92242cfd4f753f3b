//! The `velro-authz` command: serve (the default), migrate, seed.

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use tracing_subscriber::EnvFilter;
use velro_authz::{config::Settings, demo, error::AuthzError, server, store, workload};

#[derive(Parser)]
#[command(
    name = "velro-authz",
    version,
    about = "Velro's gRPC authorization service (policy decision point)"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    settings: Settings,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gRPC service and the ops HTTP port (what a bare `velro-authz` does).
    Serve,
    /// Apply the database migrations and exit.
    Migrate,
    /// Print the effective settings (defaults < file < environment < flags) as TOML.
    Config,
    /// Generate the reference workload into an empty database and print ids to try.
    Seed {
        /// Multiplies every count of the reference workload (1 = 10,000 users).
        #[arg(long, default_value_t = 1.0)]
        scale: f64,
        /// The same seed always gives the same data.
        #[arg(long, default_value_t = 42)]
        seed: u64,
    },
}

fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let settings = match cli.settings.apply_file(&matches) {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&settings.log));
    tracing_subscriber::fmt().with_env_filter(filter).init();

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
    let result = runtime.block_on(async {
        match cli.command.unwrap_or(Command::Serve) {
            Command::Serve => serve(&settings).await,
            Command::Migrate => migrate(&settings).await,
            Command::Config => print_config(&settings),
            Command::Seed { scale, seed } => seed_workload(&settings, scale, seed).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(settings: &Settings) -> Result<(), AuthzError> {
    // Each client connection holds a descriptor: take what the hard limit allows.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::info!(limit, "open file limit"),
        Err(e) => tracing::warn!("cannot raise the open file limit: {e}"),
    }
    let running = server::start(settings).await?;
    shutdown_signal().await;
    tracing::info!("shutdown signal received");
    running.shutdown().await
}

fn print_config(settings: &Settings) -> Result<(), AuthzError> {
    let text = toml::to_string(settings)
        .map_err(|e| AuthzError::Internal(format!("cannot print settings: {e}")))?;
    print!("{text}");
    Ok(())
}

async fn migrate(settings: &Settings) -> Result<(), AuthzError> {
    let store = store::connect(&settings.database_url, &settings.pool()).await?;
    store.migrate().await?;
    store.close().await;
    println!(
        "migrations applied to {}",
        store::redact(&settings.database_url)
    );
    Ok(())
}

async fn seed_workload(settings: &Settings, scale: f64, seed: u64) -> Result<(), AuthzError> {
    if !(scale > 0.0 && scale <= 100.0) {
        return Err(AuthzError::invalid(format!(
            "--scale {scale} must be above 0 and at most 100"
        )));
    }
    let store = store::connect(&settings.database_url, &settings.pool()).await?;
    store.migrate().await?;
    if !store.is_empty().await? {
        return Err(AuthzError::invalid(format!(
            "{} already holds users: seed into an empty database",
            store::redact(&settings.database_url)
        )));
    }
    let data = workload::generate(scale, seed);
    store.insert_dataset(&data).await?;
    store.close().await;
    println!(
        "seeded {} users, {} teams, {} memberships, {} projects, {} generations, {} media (scale {scale}, seed {seed})",
        data.users.len(),
        data.teams.len(),
        data.members.len(),
        data.projects.len(),
        data.generations.len(),
        data.media.len()
    );
    for example in demo::examples(&data) {
        let expect = if example.allow { "ALLOW" } else { "DENY" };
        println!(
            "\n# expect {expect}\n{}",
            demo::grpcurl(&example.query, settings.listen.port())
        );
    }
    println!("\nsome ids:");
    for user in data.users.iter().take(3) {
        println!("  user {} ({})", user.id, user.email);
    }
    for project in data.projects.iter().take(3) {
        println!("  project {} ({})", project.id, project.visibility.as_str());
    }
    for generation in data.generations.iter().take(3) {
        println!("  generation {}", generation.id);
    }
    Ok(())
}

async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(e) => {
                    tracing::warn!("cannot listen for SIGTERM: {e}; only Ctrl-C stops the server");
                    let _ = interrupt.await;
                    return;
                }
            };
        tokio::select! {
            _ = interrupt => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}
