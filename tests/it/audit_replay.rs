//! The replay of spilled audit events is background work: it goes a chunk
//! at a time between live batches, so a long replay never holds live events
//! back, and it waits while password logins keep coming (one chunk every
//! five seconds at most), then catches up once they pause. Nothing is lost either
//! way.

use std::{sync::Arc, time::Duration};

use velro_authz::{
    audit::{AuditConfig, AuditEvent, AuditLog, FsyncPolicy, Spill},
    store::Store,
    support::{
        duration::HumanDuration,
        foreground::{Foreground, InProgress},
        metrics::Metrics,
    },
};

use crate::common::{Db, TestDb, eventually, fixture::audit_event};

/// Spilled events waiting when the writer starts: a replay of many chunks.
const SPILLED: usize = 20_000;
const BATCH: usize = 500;

struct Writer {
    db: TestDb,
    store: Arc<dyn Store>,
    log: Arc<AuditLog>,
    metrics: Arc<Metrics>,
    logins: Arc<Foreground>,
    _stop: tokio::sync::watch::Sender<bool>,
    _dir: tempfile::TempDir,
}

/// A SQLite database, a spill file holding `SPILLED` events, and the writer
/// started on both (with a login in progress from the start when `login`).
async fn writer_with_a_backlog(login: bool) -> (Writer, Option<InProgress>) {
    let db = TestDb::create(Db::Sqlite).await;
    let store = db.store().await;
    let dir = tempfile::tempdir().unwrap();
    let config = AuditConfig {
        batch: BATCH,
        spill_path: dir.path().join("audit.spill"),
        replay_every: HumanDuration(Duration::from_millis(50)),
        fsync: FsyncPolicy::Off,
        ..AuditConfig::default()
    };
    let backlog: Vec<AuditEvent> = (0..SPILLED).map(|_| audit_event("spilled", "")).collect();
    Spill::open(&config.spill_path, FsyncPolicy::Off)
        .unwrap()
        .append(&backlog)
        .unwrap();
    let (metrics, logins) = (Arc::new(Metrics::new()), Foreground::new());
    let in_progress = login.then(|| logins.enter());
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let (log, _task) = AuditLog::start(
        &config,
        store.clone(),
        (metrics.clone(), logins.clone()),
        stop_rx,
    )
    .await
    .unwrap();
    let writer = Writer {
        db,
        store,
        log,
        metrics,
        logins,
        _stop: stop,
        _dir: dir,
    };
    (writer, in_progress)
}

impl Writer {
    /// Waits until every spilled event is in, none lost; closes the store.
    async fn replay_finished(self) {
        eventually(Duration::from_secs(60), "the replay finished", || async {
            match self.rows("spilled").await as usize {
                SPILLED => Ok(()),
                n => Err(format!("{n} of {SPILLED}")),
            }
        })
        .await;
        assert_eq!(self.metrics.ops.audit_lost.get(), 0);
        self.store.close().await;
    }

    async fn rows(&self, subject: &str) -> i64 {
        self.db
            .number(&format!(
                "SELECT COUNT(*) FROM audit_log WHERE subject = '{subject}'"
            ))
            .await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_events_are_written_while_a_long_replay_is_under_way() {
    let (w, _) = writer_with_a_backlog(false).await;
    eventually(Duration::from_secs(20), "the replay under way", || async {
        match w.metrics.ops.audit_written.get() {
            0 => Err("nothing written yet".to_owned()),
            _ => Ok(()),
        }
    })
    .await;
    w.log.record(audit_event("live", ""));
    eventually(
        Duration::from_secs(20),
        "the live event written",
        || async {
            match w.rows("live").await {
                1 => Ok(()),
                n => Err(format!("{n} live rows")),
            }
        },
    )
    .await;
    let replayed = w.rows("spilled").await;
    assert!(
        (replayed as usize) < SPILLED,
        "the live event waited for the whole replay ({replayed} of {SPILLED} rows were in first)"
    );
    w.replay_finished().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_gives_way_to_logins_and_catches_up_when_they_pause() {
    let (w, login) = writer_with_a_backlog(true).await;
    // A login in progress throughout: the first chunk goes only after
    // waiting its longest (five seconds), so none is in after 2.5 s.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert_eq!(
        w.rows("spilled").await,
        0,
        "rows replayed while a login was in progress"
    );
    assert_eq!(w.logins.active(), 1);
    drop(login);
    w.replay_finished().await;
}
