//! Operator commands that work on the database directly (no server needed):
//! add and disable users, revoke sessions, make signing keys, sign and
//! verify media URLs.

use std::{io::BufRead, net::IpAddr, path::Path, sync::Arc, time::Duration};

use uuid::Uuid;

use crate::app::output::say;
use crate::{
    app::{config::Settings, demo},
    auth::{
        keys,
        password::{HashWorkers, PasswordHashing},
    },
    error::AuthzError,
    layers::media_access::signer::{SignedUrl, UrlSigner, Verified},
    model::workload,
    store::{self, Store},
    support::{clock::now_unix, secrets::redact_url},
};

/// A command hashes one password at a time and may wait for it.
const CLI_HASH_WAIT: Duration = Duration::from_secs(60);
/// A one-shot command hashes on one thread at its own priority.
const CLI_HASHING: HashWorkers = HashWorkers {
    threads: 1,
    nice: 0,
};

/// The configured database, migrated.
pub async fn open(settings: &Settings) -> Result<Arc<dyn Store>, AuthzError> {
    let store = store::connect(&settings.database_url, &settings.command_pool()).await?;
    store.migrate().await?;
    Ok(store)
}

/// The password from a prompt on a terminal, else the first line of stdin;
/// never from the command line, where other users could read it.
pub fn read_password() -> Result<String, AuthzError> {
    let io = |e: std::io::Error| AuthzError::invalid(format!("cannot read the password: {e}"));
    let password = if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        rpassword::prompt_password("password: ").map_err(io)?
    } else {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line).map_err(io)?;
        line.trim_end_matches(['\r', '\n']).to_owned()
    };
    if password.len() < 8 {
        return Err(AuthzError::invalid(
            "the password must have at least 8 characters",
        ));
    }
    Ok(password)
}

pub async fn add_user(
    settings: &Settings,
    email: &str,
    password: String,
) -> Result<Uuid, AuthzError> {
    if !email.contains('@') || email.len() > 320 {
        return Err(AuthzError::invalid(format!(
            "{email:?} is not an email address"
        )));
    }
    let store = open(settings).await?;
    let hashing =
        PasswordHashing::new(settings.hash_params(), CLI_HASHING, 1, CLI_HASH_WAIT).await?;
    let hash = hashing.hash(password).await?;
    let id = Uuid::now_v7();
    store.add_user(id, email, &hash).await?;
    store.close().await;
    Ok(id)
}

/// Disables (or enables) a user; disabling ends every session (a database
/// trigger does it, so plain SQL writers get the same).
pub async fn set_disabled(
    settings: &Settings,
    email: &str,
    disabled: bool,
) -> Result<Uuid, AuthzError> {
    let store = open(settings).await?;
    let user = store.set_disabled(email, disabled).await?;
    store.close().await;
    user.ok_or_else(|| AuthzError::invalid(format!("no user has the email {email:?}")))
}

/// Revokes one session or all of a user's; running replicas stop accepting
/// their tokens within `token_cache_ttl` (the admin RPC acts at once).
pub async fn revoke(
    settings: &Settings,
    session: Option<Uuid>,
    user: Option<Uuid>,
) -> Result<usize, AuthzError> {
    let store = open(settings).await?;
    let now = now_unix() as i64;
    let reason = "revoked from the command line";
    let revoked = match (session, user) {
        (Some(s), None) => usize::from(store.revoke_session(s, now, reason).await?),
        (None, Some(u)) => store.revoke_user_sessions(u, now, reason).await?.len(),
        _ => {
            return Err(AuthzError::invalid(
                "give exactly one of --session and --user",
            ));
        }
    };
    store.close().await;
    Ok(revoked)
}

/// Writes a new Ed25519 key (PKCS#8 PEM, mode 0600); refuses to overwrite.
pub fn generate_key(path: &Path) -> Result<(), AuthzError> {
    let pem = keys::generate_pem()?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(path)
        .map_err(|e| AuthzError::invalid(format!("cannot create {}: {e}", path.display())))?;
    std::io::Write::write_all(&mut file, pem.as_bytes())
        .map_err(|e| AuthzError::Internal(format!("cannot write {}: {e}", path.display())))
}

fn url_signer(settings: &Settings) -> Result<UrlSigner, AuthzError> {
    if settings.media_urls.keys.is_empty() {
        return Err(AuthzError::invalid(
            "no [media_urls] keys configured: give the service's config file (--config)",
        ));
    }
    UrlSigner::new(&settings.media_urls).map_err(AuthzError::invalid)
}

/// Signs a media URL as the service would for an allowed read.
pub fn sign_media_url(
    settings: &Settings,
    media_id: Uuid,
    object_key: &str,
    ip: Option<IpAddr>,
    lifetime: Option<Duration>,
) -> Result<SignedUrl, AuthzError> {
    if object_key.is_empty() {
        return Err(AuthzError::invalid("--object-key must not be empty"));
    }
    Ok(url_signer(settings)?.sign(media_id, object_key, ip, now_unix() as i64, lifetime))
}

/// Verifies a media URL as the service would; a refusal is an error naming
/// its reason.
pub fn verify_media_url(
    settings: &Settings,
    url: &str,
    ip: Option<IpAddr>,
) -> Result<Verified, AuthzError> {
    url_signer(settings)?
        .verify(url, ip, now_unix() as i64)
        .map_err(|r| AuthzError::PermissionDenied(format!("{}: {}", r.reason(), r.message())))
}

/// Recent audit events as JSON lines (the fields of the `audit_log` table).
pub async fn query_audit(
    settings: &Settings,
    subject: Option<String>,
    resource: Option<String>,
    limit: u32,
    since_ms: i64,
) -> Result<Vec<String>, AuthzError> {
    use crate::proto::query_audit_request::Target;
    let target = match (subject, resource) {
        (Some(subject), _) => Some(Target::Subject(subject)),
        (None, Some(resource)) => {
            let (kind, id) = resource.split_once(':').ok_or_else(|| {
                AuthzError::invalid(format!("--resource must be type:id, got {resource:?}"))
            })?;
            Some(Target::Resource(crate::proto::Resource {
                r#type: kind.to_owned(),
                id: id.to_owned(),
            }))
        }
        (None, None) => None,
    };
    let filter = crate::api::admin::audit_filter(&crate::proto::QueryAuditRequest {
        target,
        since_ms,
        limit,
    })?;
    let store = open(settings).await?;
    let events = store.audit_events(&filter).await;
    store.close().await;
    events?
        .iter()
        .map(|e| serde_json::to_string(e).map_err(|e| AuthzError::Internal(e.to_string())))
        .collect()
}

/// Sets a kill switch and audits it; what to tell the operator.
pub async fn set_kill_switch(
    settings: &Settings,
    scope: &str,
    reason: &str,
    set_by: &str,
) -> Result<Vec<String>, AuthzError> {
    let store = open(settings).await?;
    let event = crate::api::admin::set_switch(store.as_ref(), scope, reason, set_by).await?;
    store.insert_audit(&[event]).await?;
    store.close().await;
    Ok(vec![format!(
        "kill switch {scope} set; every replica denies within change_poll"
    )])
}

/// Lifts a kill switch and audits it.
pub async fn clear_kill_switch(
    settings: &Settings,
    scope: &str,
    set_by: &str,
) -> Result<Vec<String>, AuthzError> {
    let store = open(settings).await?;
    let done = crate::api::admin::clear_switch(store.as_ref(), scope, set_by).await?;
    let line = match done {
        Some(event) => {
            store.insert_audit(&[event]).await?;
            format!("kill switch {scope} lifted")
        }
        None => format!("no kill switch {scope} was set"),
    };
    store.close().await;
    Ok(vec![line])
}

/// The kill switches stored, one line each.
pub async fn list_kill_switches(settings: &Settings) -> Result<Vec<String>, AuthzError> {
    let store = open(settings).await?;
    let switches = crate::api::admin::list_switches(store.as_ref()).await;
    store.close().await;
    let lines: Vec<String> = switches?
        .into_iter()
        .map(|s| {
            format!(
                "{}\tset by {} at {} (unix ms)\t{}",
                s.scope, s.set_by, s.set_at_ms, s.reason
            )
        })
        .collect();
    Ok(match lines.is_empty() {
        true => vec!["no kill switch is set".to_owned()],
        false => lines,
    })
}

/// Prints the effective settings as TOML, secrets masked.
pub fn print_config(settings: &Settings) -> Result<(), AuthzError> {
    // Secrets are shown as set, never printed.
    let mut shown = settings.clone();
    let hide = |secret: &mut Option<String>| {
        if secret.is_some() {
            *secret = Some("***".into());
        }
    };
    hide(&mut shown.admin_token);
    shown.database_url = redact_url(&shown.database_url);
    shown.redis_url = shown.redis_url.as_deref().map(redact_url);
    for url in &mut shown.redis_cluster_urls {
        *url = redact_url(url);
    }
    shown.db_pools.replica_url = shown.db_pools.replica_url.as_deref().map(redact_url);
    for issuer in &mut shown.external_issuers {
        hide(&mut issuer.hs256_secret);
    }
    for key in &mut shown.media_urls.keys {
        key.secret = "***".into();
    }
    let text = toml::to_string(&shown)
        .map_err(|e| AuthzError::Internal(format!("cannot print settings: {e}")))?;
    say!("{}", text.trim_end());
    Ok(())
}

/// Applies the migrations and exits.
pub async fn migrate(settings: &Settings) -> Result<(), AuthzError> {
    let store = store::connect(&settings.database_url, &settings.command_pool()).await?;
    store.migrate().await?;
    store.close().await;
    say!(
        "migrations applied to {}",
        store::redact(&settings.database_url)
    );
    Ok(())
}

/// Generates the reference workload into an empty database.
pub async fn seed_workload(settings: &Settings, scale: f64, seed: u64) -> Result<(), AuthzError> {
    if !(scale > 0.0 && scale <= 100.0) {
        return Err(AuthzError::invalid(format!(
            "--scale {scale} must be above 0 and at most 100"
        )));
    }
    let store = store::connect(&settings.database_url, &settings.command_pool()).await?;
    store.migrate().await?;
    if !store.is_empty().await? {
        return Err(AuthzError::invalid(format!(
            "{} already holds users: seed into an empty database",
            store::redact(&settings.database_url)
        )));
    }
    let mut data = workload::generate(scale, seed);
    // Every generated user gets the same argon2id hash of one known password
    // (hashing 10,000 passwords would take minutes and measure nothing).
    let hashing = crate::auth::password::PasswordHashing::new(
        settings.hash_params(),
        CLI_HASHING,
        1,
        CLI_HASH_WAIT,
    )
    .await?;
    data.password_hash = Some(hashing.hash(workload::WORKLOAD_PASSWORD.to_owned()).await?);
    store.insert_dataset(&data).await?;
    store.close().await;
    say!(
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
        say!(
            "\n# expect {expect}\n{}",
            demo::grpcurl(&example.query, settings.listen.port())
        );
    }
    say!("\nevery user's password: {}", workload::WORKLOAD_PASSWORD);
    say!("\nsome ids:");
    for user in data.users.iter().take(3) {
        say!("  user {} ({})", user.id, user.email);
    }
    for project in data.projects.iter().take(3) {
        say!("  project {} ({})", project.id, project.visibility.as_str());
    }
    for generation in data.generations.iter().take(3) {
        say!("  generation {}", generation.id);
    }
    Ok(())
}

/// Prunes once and prints what went.
pub async fn prune(settings: &Settings) -> Result<(), AuthzError> {
    let store = open(settings).await?;
    let limits = settings.prune_limits(crate::support::clock::now_ms());
    let report = store.prune(&limits).await;
    store.close().await;
    match report? {
        Some(report) => say!("{report}"),
        None => say!("another replica is pruning right now; nothing done"),
    }
    Ok(())
}
