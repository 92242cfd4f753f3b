//! The `velro-authz` command line: serve (the default), migrate, seed and
//! the operator commands.

use std::process::ExitCode;

use crate::app::output::say;
use crate::{
    app::{commands, config::Settings, server},
    error::AuthzError,
    support::telemetry,
};
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use tracing_subscriber::{
    EnvFilter, Layer as _, layer::SubscriberExt as _, util::SubscriberInitExt as _,
};

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
    /// Add, disable or enable users.
    #[command(subcommand)]
    User(UserCommand),
    /// Revoke sessions (running replicas notice within token_cache_ttl).
    #[command(subcommand)]
    Session(SessionCommand),
    /// Token signing keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Sign or verify a signed media URL by hand, with the `[media_urls]` keys.
    #[command(subcommand)]
    MediaUrl(MediaUrlCommand),
    /// Kill switches (layer 9): every replica honours a change within
    /// change_poll; each change is audited.
    #[command(subcommand)]
    KillSwitch(KillSwitchCommand),
    /// Recent audit events of a subject or a resource, newest first, as JSON lines.
    Audit {
        /// A user id, or ip:<address> for anonymous clients.
        #[arg(long, conflicts_with = "resource")]
        subject: Option<String>,
        /// `type:id`, e.g. project:1d1d52ce-….
        #[arg(long)]
        resource: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Only events at or after this time (unix milliseconds).
        #[arg(long, default_value_t = 0)]
        since_ms: i64,
        /// Read the `[audit.jetstream]` stream instead, oldest first (what a
        /// SIEM consumes): every event as it was published.
        #[arg(long, conflicts_with_all = ["subject", "resource", "since_ms"])]
        jetstream: bool,
        /// With --jetstream: start at this stream sequence.
        #[arg(long, default_value_t = 1, requires = "jetstream")]
        from_sequence: u64,
        /// With --jetstream: keep printing new events as they arrive.
        #[arg(long, requires = "jetstream")]
        follow: bool,
    },
    /// Prune the change log (below what every live replica has read), audit
    /// events older than `audit_retention`, ended sessions, expired refresh
    /// tokens and expired database-tier rows; what a server does every
    /// `prune_every`.
    Prune,
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

#[derive(Subcommand)]
enum UserCommand {
    /// Add a user; the password is read from a prompt or stdin, never argv.
    Add {
        #[arg(long)]
        email: String,
    },
    /// Disable a user: their logins fail and every session ends.
    Disable {
        #[arg(long)]
        email: String,
    },
    /// Enable a disabled user again.
    Enable {
        #[arg(long)]
        email: String,
    },
}

#[derive(Subcommand)]
enum SessionCommand {
    /// Revoke one session (--session) or every session of a user (--user).
    Revoke {
        #[arg(long)]
        session: Option<uuid::Uuid>,
        #[arg(long)]
        user: Option<uuid::Uuid>,
    },
}

#[derive(Subcommand)]
enum MediaUrlCommand {
    /// Print a URL for a media object, signed with the current key.
    Sign {
        #[arg(long)]
        media_id: uuid::Uuid,
        #[arg(long)]
        object_key: String,
        /// Bind the URL to this client IP.
        #[arg(long)]
        ip: Option<std::net::IpAddr>,
        /// Instead of `media_urls.lifetime`, e.g. 10m.
        #[arg(long)]
        lifetime: Option<crate::support::duration::HumanDuration>,
    },
    /// Check a URL (signature, key id, expiry, IP binding); exits 1 when refused.
    Verify {
        #[arg(long)]
        url: String,
        /// The client IP the URL is used from.
        #[arg(long)]
        ip: Option<std::net::IpAddr>,
    },
}

#[derive(Subcommand)]
enum KillSwitchCommand {
    /// Deny everything in scope: `global`, `team:<uuid>` or `user:<uuid>`.
    Set {
        #[arg(long)]
        scope: String,
        /// Shown in every denial it causes.
        #[arg(long, default_value = "")]
        reason: String,
        #[arg(long, default_value = "cli")]
        set_by: String,
    },
    /// Lift a switch.
    Clear {
        #[arg(long)]
        scope: String,
        #[arg(long, default_value = "cli")]
        set_by: String,
    },
    /// The switches in force.
    List,
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Write a new Ed25519 signing key (PEM) for `signing_keys`.
    Generate {
        #[arg(long)]
        out: std::path::PathBuf,
    },
}

async fn run_admin(settings: &Settings, command: Command) -> Result<(), AuthzError> {
    match command {
        Command::User(UserCommand::Add { email }) => {
            let password = commands::read_password()?;
            let id = commands::add_user(settings, &email, password).await?;
            say!("added user {id} ({email})");
        }
        Command::User(UserCommand::Disable { email }) => {
            let id = commands::set_disabled(settings, &email, true).await?;
            say!("disabled user {id} ({email}); their sessions have ended");
        }
        Command::User(UserCommand::Enable { email }) => {
            let id = commands::set_disabled(settings, &email, false).await?;
            say!("enabled user {id} ({email})");
        }
        Command::Session(SessionCommand::Revoke { session, user }) => {
            let n = commands::revoke(settings, session, user).await?;
            say!("revoked {n} session(s)");
        }
        Command::Keys(KeysCommand::Generate { out }) => {
            commands::generate_key(&out)?;
            say!(
                "wrote a new Ed25519 signing key to {}; add it to signing_keys",
                out.display()
            );
        }
        Command::MediaUrl(MediaUrlCommand::Sign {
            media_id,
            object_key,
            ip,
            lifetime,
        }) => {
            let signed = commands::sign_media_url(
                settings,
                media_id,
                &object_key,
                ip,
                lifetime.map(|l| l.0),
            )?;
            say!("{}", signed.url);
            eprintln!(
                "key {}, expires at {} (unix seconds)",
                signed.key_id, signed.expires_at
            );
        }
        Command::MediaUrl(MediaUrlCommand::Verify { url, ip }) => {
            let verified = commands::verify_media_url(settings, &url, ip)?;
            say!(
                "valid: read of media {} ({}) until {} (unix seconds)",
                verified.media_id,
                verified.object_key,
                verified.expires_at
            );
        }
        Command::KillSwitch(command) => kill_switch(settings, command).await?,
        Command::Audit {
            jetstream: true,
            limit,
            from_sequence,
            follow,
            ..
        } => {
            let config = settings.audit.jetstream.as_ref().ok_or_else(|| {
                AuthzError::invalid("--jetstream needs an [audit.jetstream] section in the config")
            })?;
            let limit = (!follow).then_some(u64::from(limit));
            crate::audit::jetstream::tail(config, from_sequence, limit, follow, |_, event| {
                say!("{event}")
            })
            .await
            .map_err(AuthzError::Unavailable)?;
        }
        Command::Audit {
            subject,
            resource,
            limit,
            since_ms,
            ..
        } => {
            for event in commands::query_audit(settings, subject, resource, limit, since_ms).await?
            {
                say!("{event}");
            }
        }
        _ => {}
    }
    Ok(())
}

async fn kill_switch(settings: &Settings, command: KillSwitchCommand) -> Result<(), AuthzError> {
    let lines = match command {
        KillSwitchCommand::Set {
            scope,
            reason,
            set_by,
        } => commands::set_kill_switch(settings, &scope, &reason, &set_by).await?,
        KillSwitchCommand::Clear { scope, set_by } => {
            commands::clear_kill_switch(settings, &scope, &set_by).await?
        }
        KillSwitchCommand::List => commands::list_kill_switches(settings).await?,
    };
    for line in lines {
        say!("{line}");
    }
    Ok(())
}

/// Parses the command line, sets up logging and the runtime, runs the
/// command; what `velro-authz` does.
pub fn main() -> ExitCode {
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
    // The trace exporter's task runs on this runtime.
    let _runtime = runtime.enter();
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&settings.log));
    // Logs go to stderr: stdout carries command output (and audit JSON lines).
    let logs = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_filter(filter);
    let traces = match (&cli.command, settings.trace_settings()) {
        (None | Some(Command::Serve), Some(trace)) => match telemetry::layer(&trace) {
            Ok((provider, layer)) => Some((provider, layer)),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        },
        _ => None,
    };
    let (provider, traces) = match traces {
        Some((provider, layer)) => (Some(provider), Some(layer)),
        None => (None, None),
    };
    tracing_subscriber::registry()
        .with(logs)
        .with(traces)
        .init();
    let result = runtime.block_on(async {
        match cli.command.unwrap_or(Command::Serve) {
            Command::Serve => server::serve(&settings).await,
            Command::Migrate => commands::migrate(&settings).await,
            Command::Config => commands::print_config(&settings),
            Command::Prune => commands::prune(&settings).await,
            Command::Seed { scale, seed } => commands::seed_workload(&settings, scale, seed).await,
            other => run_admin(&settings, other).await,
        }
    });
    if let Some(provider) = provider {
        let _ = provider.shutdown();
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
