//! A short run of the load generator against a real server: counts, zero
//! errors, zero decision mismatches, open and closed loop, and a run whose
//! expectations come from another data set must report mismatches.

use std::path::Path;

use velro_authz::{
    loadgen::{
        RunOptions,
        data::{self, Sizes, WorkloadId},
        ghz::{Call, DataSource},
        messages,
        report::ScenarioResult,
        run_scenario,
    },
    model::workload,
};

use crate::common::{Db, TestDb, TestServer, settings};

fn write_config(dir: &Path, name: &str, body: &str) -> std::path::PathBuf {
    let path = dir.join(format!("{name}.json"));
    std::fs::write(
        &path,
        format!(r#"{{"host": "127.0.0.1:1", "insecure": true, {body}}}"#),
    )
    .unwrap();
    path
}

fn assert_clean(r: &ScenarioResult, requests: u64, decisions: u64) {
    let all = &r.overall;
    assert_eq!(all.requests, requests, "{r:#?}");
    assert_eq!(all.decisions, decisions, "{r:#?}");
    assert_eq!(all.error_count(), 0, "{:?}", all.errors);
    assert_eq!(all.mismatches, 0, "{:?}", all.mismatch_samples);
    assert_eq!(
        all.checked, requests,
        "every answer is checked with check_every 1"
    );
    assert!(all.latency_ms.max > 0.0);
}

/// A PostgreSQL database holding a small reference workload.
async fn seeded() -> (TestDb, WorkloadId) {
    let db = TestDb::create(Db::Postgres).await;
    let id = WorkloadId {
        seed: 11,
        scale: 0.01,
    };
    db.store()
        .await
        .insert_dataset(&workload::generate(id.scale, id.seed))
        .await
        .unwrap();
    (db, id)
}

#[tokio::test]
async fn short_runs_open_and_closed_loop() {
    let (db, id) = seeded().await;
    let server = TestServer::start(settings(&db.url)).await;
    let addr = server.server.as_ref().unwrap().grpc_addr.to_string();
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let sizes = Sizes {
        hot: 300,
        uniform: 10,
        batches: 10,
        batch_items: 50,
    };
    data::write_files(&data_dir, id, sizes).unwrap();

    // The drawn requests get both answers, about half each.
    let hot = messages::load(
        Call::Authorize,
        &DataSource::File(data_dir.join("authorize_hot.json")),
        true,
    )
    .unwrap();
    let allowed = hot.expected.iter().flatten().filter(|d| d[0]).count();
    assert!(
        (90..=210).contains(&allowed),
        "{allowed} of 300 expected to allow"
    );

    let options = RunOptions {
        host: Some(addr),
        check_every: 1,
        ..RunOptions::default()
    };
    let authorize = r#""call": "velro.authz.v1.AuthorizationService.Authorize", "data-file": "data/authorize_hot.json""#;
    let closed = write_config(
        dir.path(),
        "closed",
        &format!(r#"{authorize}, "total": 300, "concurrency": 8, "connections": 2"#),
    );
    let open = write_config(
        dir.path(),
        "open",
        &format!(r#"{authorize}, "total": 200, "rps": 400, "concurrency": 16, "connections": 4"#),
    );
    let batch = write_config(
        dir.path(),
        "batch",
        r#""call": "velro.authz.v1.AuthorizationService.BatchAuthorize", "data-file": "data/batch_authorize_50.json", "total": 20, "concurrency": 4, "connections": 2"#,
    );
    let health = write_config(
        dir.path(),
        "health",
        r#""call": "grpc.health.v1.Health.Check", "total": 100, "concurrency": 4"#,
    );

    let r = run_scenario(&closed, &options).await.unwrap();
    assert_eq!(r.mode, "closed-loop");
    assert_clean(&r, 300, 300);
    let hits = r
        .overall
        .sources
        .get("IN_PROCESS_CACHE")
        .copied()
        .unwrap_or(0);
    assert!(
        hits > 0,
        "repeated keys are served from the cache: {:?}",
        r.overall.sources
    );

    // One pass sends every request of the file once, whatever the config's
    // duration or rate says.
    let timed = write_config(
        dir.path(),
        "timed",
        &format!(r#"{authorize}, "duration": "600s", "rps": 5, "concurrency": 8"#),
    );
    let one_pass = RunOptions {
        one_pass: true,
        ..options.clone()
    };
    let r = run_scenario(&timed, &one_pass).await.unwrap();
    assert_eq!(r.mode, "closed-loop");
    assert_clean(&r, 300, 300);

    // The replica report's override: this many in flight instead of the
    // config's; the kind of load stays the config's (a rate stays a rate).
    let three_in_flight = RunOptions {
        concurrency: Some(3),
        ..options.clone()
    };
    let r = run_scenario(&open, &three_in_flight).await.unwrap();
    assert_eq!(r.mode, "open-loop", "a rate in the config stays a rate");
    assert_clean(&r, 200, 200);
    let r = run_scenario(&closed, &three_in_flight).await.unwrap();
    assert_eq!(r.mode, "closed-loop");
    let labels: Vec<&str> = r.steps.iter().map(|s| s.label.as_str()).collect();
    assert_eq!(labels, ["c=3"], "the config's 8 in flight replaced");
    assert_clean(&r, 300, 300);

    let r = run_scenario(&open, &options).await.unwrap();
    assert_eq!(r.mode, "open-loop");
    assert_clean(&r, 200, 200);

    let r = run_scenario(&batch, &options).await.unwrap();
    assert_clean(&r, 20, 1_000);

    let r = run_scenario(&health, &options).await.unwrap();
    assert_eq!(
        (
            r.overall.requests,
            r.overall.decisions,
            r.overall.error_count()
        ),
        (100, 0, 0)
    );

    // Expectations drawn from another seed's data set disagree with the server.
    let other = dir.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::copy(
        data_dir.join("authorize_hot.json"),
        other.join("authorize_hot.json"),
    )
    .unwrap();
    std::fs::write(
        other.join("workload.json"),
        r#"{"seed": 12, "scale": 0.01}"#,
    )
    .unwrap();
    let wrong = RunOptions {
        data_dir: Some(other),
        ..options.clone()
    };
    let r = run_scenario(&closed, &wrong).await.unwrap();
    assert!(
        r.overall.mismatches > 0,
        "a wrong expectation must be caught: {r:#?}"
    );
    assert!(!r.overall.mismatch_samples.is_empty());
    server.stop().await;
}

/// Several targets (replicas) share the run's connections round robin:
/// each replica decides its share, every answer right.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_spread_over_several_targets() {
    let (db, id) = seeded().await;
    let replicas = [
        TestServer::start(settings(&db.url)).await,
        TestServer::start(settings(&db.url)).await,
        TestServer::start(settings(&db.url)).await,
    ];
    let hosts: Vec<String> = replicas
        .iter()
        .map(|r| r.server.as_ref().unwrap().grpc_addr.to_string())
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let sizes = Sizes {
        hot: 300,
        uniform: 10,
        batches: 10,
        batch_items: 50,
    };
    data::write_files(&dir.path().join("data"), id, sizes).unwrap();
    let closed = write_config(
        dir.path(),
        "closed",
        r#""call": "velro.authz.v1.AuthorizationService.Authorize", "data-file": "data/authorize_hot.json", "total": 600, "concurrency": 6, "connections": 6"#,
    );
    let options = RunOptions {
        host: Some(hosts.join(",")),
        check_every: 1,
        ..RunOptions::default()
    };
    let r = run_scenario(&closed, &options).await.unwrap();
    assert_clean(&r, 600, 600);
    let mut total = 0.0;
    for replica in &replicas {
        let decided = replica.metric_sum("velro_authz_decisions_total").await;
        assert!(decided >= 100.0, "each replica got its share: {decided}");
        total += decided;
    }
    assert_eq!(total, 600.0, "every request went to one of the replicas");
    for replica in replicas {
        replica.stop().await;
    }
}
