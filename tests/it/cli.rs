//! The command line as a newcomer uses it: help, migrate, seed, config.

use std::{process::Command, time::Duration};

use crate::common::{Db, TestDb, eventually};

fn velro(args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_velro-authz"));
    command.args(args).env_remove("RUST_LOG");
    for (k, v) in env {
        command.env(k, v);
    }
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("run velro-authz: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn help_documents_every_option() {
    let (ok, text) = velro(&["--help"], &[]);
    assert!(ok, "{text}");
    for option in [
        "--config",
        "--listen",
        "--ops-listen",
        "--database-url",
        "--cache-capacity",
        "--cache-ttl",
        "--max-batch-items",
        "--request-timeout",
        "serve",
        "migrate",
        "seed",
    ] {
        assert!(text.contains(option), "--help lacks {option}: {text}");
    }
}

#[tokio::test]
async fn migrate_then_seed_then_refuse_to_seed_twice() {
    let db = TestDb::create(Db::Sqlite).await;
    let url = db.url.as_str();
    let (ok, text) = velro(&["migrate", "--database-url", url], &[]);
    assert!(ok, "{text}");
    let (ok, text) = velro(
        &[
            "seed",
            "--scale",
            "0.01",
            "--seed",
            "7",
            "--database-url",
            url,
        ],
        &[],
    );
    assert!(ok, "{text}");
    assert!(text.contains("seeded 100 users, 10 teams"), "{text}");
    assert!(
        text.contains("# expect ALLOW") && text.contains("# expect DENY"),
        "{text}"
    );
    let (ok, text) = velro(&["seed", "--scale", "0.01", "--database-url", url], &[]);
    assert!(!ok, "{text}");
    assert!(text.contains("already holds users"), "{text}");
}

#[test]
fn config_file_env_and_flags_in_rising_precedence() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let file = dir.path().join("velro.toml");
    std::fs::write(
        &file,
        "cache_ttl = \"7s\"\nmax_batch_items = 77\nlisten = \"127.0.0.1:1111\"\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let path = file.to_string_lossy().to_string();
    let (ok, text) = velro(
        &["config", "--config", &path, "--max-batch-items", "99"],
        &[("VELRO_LISTEN", "127.0.0.1:2222")],
    );
    assert!(ok, "{text}");
    assert!(
        text.contains("cache_ttl = \"7s\""),
        "file beats default: {text}"
    );
    assert!(
        text.contains("listen = \"127.0.0.1:2222\""),
        "env beats file: {text}"
    );
    assert!(
        text.contains("max_batch_items = 99"),
        "flag beats file: {text}"
    );

    // TOML-only sections: ext_authz routes and external issuers; secrets masked.
    std::fs::write(
        &file,
        concat!(
            "admin_token = \"s3cret\"\n",
            "[ext_authz]\nunmatched = \"allow\"\n",
            "[[ext_authz.routes]]\nmethods = [\"GET\"]\npath = \"/v2/media/{id}\"\nresource = \"media\"\n",
            "[[external_issuers]]\nissuer = \"https://a.example/\"\naudience = \"v\"\n",
            "algorithms = [\"HS256\"]\nhs256_secret = \"shh\"\n",
        ),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let (ok, text) = velro(&["config", "--config", &path], &[]);
    assert!(ok, "{text}");
    assert!(
        text.contains("/v2/media/{id}") && text.contains("unmatched = \"allow\""),
        "{text}"
    );
    assert!(text.contains("https://a.example/"), "{text}");
    assert!(
        !text.contains("s3cret") && !text.contains("shh"),
        "secrets are masked: {text}"
    );

    std::fs::write(&file, "cache_tll = \"7s\"\n").unwrap_or_else(|e| panic!("{e}"));
    let (ok, text) = velro(&["config", "--config", &path], &[]);
    assert!(!ok, "a misspelt key must be an error: {text}");
    assert!(text.contains("cache_tll"), "{text}");
}

/// Operators without gRPC tooling: the CLI sets a kill switch a running
/// server honours, lists and lifts it, and reads the audit trail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_switches_and_audit_from_the_command_line() {
    use velro_authz::proto::Decision;

    use crate::common::{fixture::authorize, world_server};
    let (db, w, server) = world_server(Db::Postgres, |_| {}).await;
    let url = db.url.as_str();
    let user = format!("user:{}", w.viewer);
    let request = authorize(w.viewer, "read", "project", w.team.project);
    assert_eq!(
        server.decide(request.clone()).await.decision(),
        Decision::Allow
    );

    let (ok, text) = velro(
        &[
            "kill-switch",
            "set",
            "--scope",
            &user,
            "--reason",
            "stolen laptop",
            "--set-by",
            "alice",
            "--database-url",
            url,
        ],
        &[],
    );
    assert!(ok && text.contains("set"), "{text}");
    eventually(Duration::from_secs(5), "the switch seen", || async {
        match server.decide(request.clone()).await.reason.as_str() {
            "LOCKDOWN_USER" => Ok(()),
            other => Err(other.to_owned()),
        }
    })
    .await;
    let (ok, text) = velro(&["kill-switch", "list", "--database-url", url], &[]);
    assert!(
        ok && text.contains(&user) && text.contains("stolen laptop"),
        "{text}"
    );
    let (ok, text) = velro(
        &[
            "kill-switch",
            "clear",
            "--scope",
            &user,
            "--database-url",
            url,
        ],
        &[],
    );
    assert!(ok && text.contains("lifted"), "{text}");
    let (ok, text) = velro(
        &[
            "kill-switch",
            "set",
            "--scope",
            "team:nope",
            "--database-url",
            url,
        ],
        &[],
    );
    assert!(!ok && text.contains("team:<uuid>"), "{text}");

    // The lockdown denial is in the audit trail, and so is the operator's act.
    let subject = w.viewer.to_string();
    let text = eventually(Duration::from_secs(5), "the lockdown audited", || async {
        let (ok, text) = velro(
            &["audit", "--subject", &subject, "--database-url", url],
            &[],
        );
        assert!(ok, "{text}");
        match text.contains("LOCKDOWN_USER") {
            true => Ok(text),
            false => Err(text),
        }
    })
    .await;
    let line = text.lines().find(|l| l.starts_with('{')).unwrap();
    let newest: serde_json::Value = serde_json::from_str(line).unwrap();
    assert_eq!(newest["subject"], subject.as_str());
    assert_eq!(newest["resource_id"], w.team.project.to_string().as_str());
    let (ok, text) = velro(&["audit", "--subject", "alice", "--database-url", url], &[]);
    assert!(ok && text.contains("kill_switch_set"), "{text}");
    let (ok, text) = velro(&["audit", "--database-url", url], &[]);
    assert!(!ok && text.contains("give subject"), "{text}");
    server.stop().await;
}

/// Secrets never print: `config`, `--help`, `migrate` and the errors of a
/// database that cannot be reached show URLs and tokens masked.
#[tokio::test]
async fn secrets_never_print() {
    let secrets = ["hunter2", "hunter3", "hunter4", "hunter5"];
    let env = [
        (
            "VELRO_DATABASE_URL",
            "postgres://app:hunter2@127.0.0.1:1/velro?sslmode=disable&password=hunter3",
        ),
        ("VELRO_REDIS_URL", "redis://:hunter4@127.0.0.1:6379"),
        ("VELRO_ADMIN_TOKEN", "hunter5"),
    ];
    let clean = |what: &str, text: &str| {
        for secret in secrets {
            assert!(!text.contains(secret), "{what} printed {secret}: {text}");
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("velro.toml");
    std::fs::write(
        &file,
        "[db_pools]\nreplica_url = \"postgres://app:hunter2@replica:5432/velro\"\n",
    )
    .unwrap();
    let file = file.display().to_string();
    let (ok, text) = velro(&["config", "--config", &file], &env);
    assert!(ok, "{text}");
    clean("config", &text);
    assert!(
        text.contains("replica_url = \"postgres://app:***@replica:5432/velro\""),
        "{text}"
    );
    assert!(
        text.contains("postgres://app:***@127.0.0.1:1/velro?sslmode=disable&password=***"),
        "{text}"
    );
    assert!(text.contains("redis://:***@127.0.0.1:6379"), "{text}");
    let (ok, text) = velro(&["--help"], &env);
    assert!(ok, "{text}");
    clean("--help", &text);
    // An unreachable database: the error names it, masked.
    let (ok, text) = velro(&["migrate"], &env);
    assert!(!ok, "{text}");
    clean("a failed migrate", &text);
    assert!(text.contains("app:***@127.0.0.1:1"), "{text}");
    // A reachable one, with a password the server ignores (trust).
    let db = TestDb::create(Db::Postgres).await;
    let url = db
        .url
        .replacen("postgres://postgres@", "postgres://postgres:hunter2@", 1);
    let url = format!("{url}?password=hunter3");
    let (ok, text) = velro(&["migrate", "--database-url", &url], &[]);
    assert!(ok, "{text}");
    clean("migrate", &text);
    assert!(
        text.contains("migrations applied to postgres://postgres:***@"),
        "{text}"
    );
}

/// A reader that closes early (`| head -1`) ends the command quietly.
#[tokio::test]
async fn a_closed_stdout_is_not_a_panic() {
    use std::io::{BufRead, BufReader};
    let db = TestDb::create(Db::Sqlite).await;
    let mut child = Command::new(env!("CARGO_BIN_EXE_velro-authz"))
        .args(["seed", "--scale", "0.01", "--database-url", &db.url])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut first = String::new();
    BufReader::new(stdout).read_line(&mut first).unwrap();
    assert!(first.starts_with("seeded"), "{first}");
    // The reader is gone now.
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(out.status.success(), "{:?} {stderr}", out.status);
}
