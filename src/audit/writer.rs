//! The one task that writes audit events: batches from the queue go to the
//! JSON lines sink and the database. When the database cannot be reached
//! the writer spills at once, the whole queue included, and keeps spilling
//! until a replay of the spill file gets through. A batch the database
//! refuses for its content is split until the bad events are isolated: they
//! are dead-lettered with the reason, the others written. Nothing waits
//! behind one bad event.

use std::{io::Write, sync::Arc, sync::Mutex, time::Duration};

use tokio::{
    io::AsyncBufReadExt,
    sync::{mpsc, watch},
    time::Instant,
};
use tracing::Instrument;
use uuid::Uuid;

use super::{AuditEvent, Spill, bursts::Bursts, spill};
use crate::{
    error::AuthzError,
    store::Store,
    support::{clock::now_ms, metrics::Metrics},
};

/// How long one insert may take before the batch is spilled instead.
const INSERT_DEADLINE: Duration = Duration::from_secs(5);

/// Where JSON lines go, if anywhere. Shared with the queue's overflow path.
pub enum JsonLines {
    Off,
    Stdout(Mutex<std::io::Stdout>),
    File(Mutex<std::fs::File>),
}

impl JsonLines {
    pub fn open(target: Option<&str>) -> Result<JsonLines, String> {
        Ok(match target {
            None | Some("") => JsonLines::Off,
            Some("stdout") => JsonLines::Stdout(Mutex::new(std::io::stdout())),
            Some(path) => JsonLines::File(Mutex::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|e| format!("cannot open the audit JSON lines file {path}: {e}"))?,
            )),
        })
    }

    pub fn write(&self, events: &[AuditEvent]) {
        if matches!(self, JsonLines::Off) || events.is_empty() {
            return;
        }
        let mut text = Vec::with_capacity(events.len() * 400);
        for event in events {
            if serde_json::to_writer(&mut text, event).is_ok() {
                text.push(b'\n');
            }
        }
        let written = match self {
            JsonLines::Off => Ok(()),
            JsonLines::Stdout(out) => out
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .write_all(&text),
            JsonLines::File(file) => file
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .write_all(&text),
        };
        if let Err(e) = written {
            tracing::error!("cannot write audit JSON lines: {e}");
        }
    }
}

pub struct Writer {
    pub receiver: mpsc::Receiver<AuditEvent>,
    pub store: Arc<dyn Store>,
    pub spill: Arc<Spill>,
    pub sink: Arc<JsonLines>,
    pub bursts: Bursts,
    pub batch: usize,
    pub replay_every: Duration,
    pub fsync_every: Duration,
    /// The database is unreachable: events go straight to the spill file
    /// until a replay gets through.
    pub outage: bool,
    /// The outage was logged (once, until the database is back).
    pub outage_announced: bool,
    pub metrics: Arc<Metrics>,
}

/// Why an insert did not happen.
enum Refused {
    /// The database refused these events' content (e.g. a byte its
    /// encoding cannot hold): retrying will never help.
    Content(String),
    /// The database was unreachable, busy or slow: retry later.
    Unreachable(String),
}

fn classify(
    outcome: Result<Result<u64, AuthzError>, tokio::time::error::Elapsed>,
) -> Result<u64, Refused> {
    match outcome {
        Ok(Ok(written)) => Ok(written),
        Ok(Err(e @ AuthzError::Internal(_))) => Err(Refused::Content(e.to_string())),
        Ok(Err(e)) => Err(Refused::Unreachable(e.to_string())),
        Err(_) => Err(Refused::Unreachable("the insert timed out".into())),
    }
}

impl Writer {
    /// Writes batches until `stop`; then writes what is still queued (new
    /// events go to the spill file from then on) and returns.
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let mut buffer = Vec::with_capacity(self.batch);
        let mut next_replay = Instant::now();
        let mut next_sync = Instant::now() + self.fsync_every;
        loop {
            let received = tokio::select! {
                received = self.receiver.recv_many(&mut buffer, self.batch) => Some(received),
                _ = tokio::time::sleep_until(next_replay.min(next_sync)) => None,
                _ = async { let _ = stop.wait_for(|stop| *stop).await; } => break,
            };
            match received {
                // Every sender is gone.
                Some(0) => break,
                Some(_) => {
                    let events = std::mem::replace(&mut buffer, Vec::with_capacity(self.batch));
                    self.write(events).await;
                }
                None => {}
            }
            let now = Instant::now();
            if now >= next_sync {
                self.spill.sync();
                next_sync = now + self.fsync_every;
            }
            if now >= next_replay {
                if self.spill.pending() {
                    self.replay().await;
                }
                next_replay = Instant::now() + self.replay_every;
            }
        }
        self.receiver.close();
        loop {
            let mut events = Vec::with_capacity(self.batch);
            if self.receiver.recv_many(&mut events, self.batch).await == 0 {
                break;
            }
            self.write(events).await;
        }
        self.spill.sync();
    }

    async fn write(&mut self, mut events: Vec<AuditEvent>) {
        let mut alerts = Vec::new();
        for event in &events {
            for burst in self.bursts.observe(event) {
                self.metrics.record_security_alert(burst.kind);
                alerts.push(AuditEvent {
                    id: Uuid::now_v7(),
                    at_ms: now_ms(),
                    kind: "alert".into(),
                    subject: burst.key.clone(),
                    decision: "alert".into(),
                    reason: burst.kind.to_ascii_uppercase().into(),
                    message: format!(
                        "{} denials for {} within the burst window",
                        burst.denials, burst.key
                    ),
                    ..AuditEvent::default()
                });
            }
        }
        // One log line per window with counts, however many bursts.
        if let Some(summary) = self.bursts.summary(now_ms()) {
            tracing::warn!("{summary}");
        }
        events.extend(alerts);
        self.sink.write(&events);
        if self.outage {
            self.spill(&events);
            return;
        }
        self.insert(events, true).await;
    }

    async fn try_insert(&self, events: &[AuditEvent]) -> Result<u64, Refused> {
        let span = tracing::debug_span!("audit.batch", events = events.len());
        let insert = self.store.insert_audit(events).instrument(span);
        classify(tokio::time::timeout(INSERT_DEADLINE, insert).await)
    }

    /// Inserts; isolates events refused for their content; enters the
    /// outage when the database cannot be reached, spilling what was not
    /// written (unless it comes from the spill file: it is still there).
    /// Returns whether the database was reachable throughout.
    async fn insert(&mut self, events: Vec<AuditEvent>, spill: bool) -> bool {
        let mut work = vec![events];
        while let Some(events) = work.pop() {
            match self.try_insert(&events).await {
                Ok(written) => {
                    self.metrics.ops.audit_written.inc_by(written);
                }
                Err(Refused::Content(why)) if events.len() == 1 => self.dead_letter(&events, &why),
                Err(Refused::Content(_)) => {
                    let mut first = events;
                    let second = first.split_off(first.len() / 2);
                    work.push(second);
                    work.push(first);
                }
                Err(Refused::Unreachable(why)) => {
                    self.enter_outage(&why);
                    if spill {
                        self.spill(&events);
                        for rest in work.drain(..) {
                            self.spill(&rest);
                        }
                    }
                    self.drain_queue_to_spill();
                    return false;
                }
            }
        }
        true
    }

    fn enter_outage(&mut self, why: &str) {
        if !self.outage {
            tracing::warn!("audit events go to the spill file until the database is back: {why}");
        }
        self.outage = true;
    }

    /// Moves everything queued to the spill file at once: in an outage the
    /// memory queue is the only thing a crash could lose.
    fn drain_queue_to_spill(&mut self) {
        let mut events = Vec::with_capacity(self.batch);
        while let Ok(event) = self.receiver.try_recv() {
            events.push(event);
            if events.len() == self.batch {
                self.sink.write(&events);
                self.spill(&events);
                events.clear();
            }
        }
        self.sink.write(&events);
        self.spill(&events);
    }

    fn spill(&self, events: &[AuditEvent]) {
        if events.is_empty() {
            return;
        }
        self.metrics.ops.audit_spilled.inc_by(events.len() as u64);
        if let Err(e) = self.spill.append(events) {
            self.metrics.ops.audit_lost.inc_by(events.len() as u64);
            tracing::error!("{} audit events lost: {e}", events.len());
        }
    }

    fn dead_letter(&self, events: &[AuditEvent], why: &str) {
        self.metrics
            .ops
            .audit_dead_lettered
            .inc_by(events.len() as u64);
        let path = self.spill.dead_letter_path().display().to_string();
        for event in events {
            tracing::error!(
                event = %event.id,
                "audit event refused by the database, kept in {path}: {why}"
            );
        }
        if let Err(e) = self.spill.dead_letter(events, why) {
            self.metrics.ops.audit_lost.inc_by(events.len() as u64);
            tracing::error!("{} audit events lost: {e}", events.len());
        }
    }

    /// Inserts the spill file's events (in batches); removes the file when
    /// every event is in or dead-lettered, keeps it for the next try when
    /// the database cannot be reached.
    async fn replay(&mut self) {
        let path = match self.spill.take() {
            Ok(Some(path)) => path,
            Ok(None) => return,
            Err(e) => return tracing::error!("cannot replay the audit spill file: {e}"),
        };
        let file = match tokio::fs::File::open(&path).await {
            Ok(f) => f,
            Err(e) => return tracing::error!("cannot read {}: {e}", path.display()),
        };
        let mut lines = tokio::io::BufReader::new(file).lines();
        let before = self.metrics.ops.audit_written.get();
        let outage = self.outage;
        self.outage = false;
        loop {
            let mut chunk = Vec::with_capacity(self.batch);
            while chunk.len() < self.batch {
                match lines.next_line().await {
                    Ok(Some(line)) if line.trim().is_empty() => {}
                    Ok(Some(line)) => match spill::parse(&line) {
                        Ok(event) => chunk.push(event),
                        Err(why) => {
                            self.metrics.ops.audit_dead_lettered.inc();
                            tracing::error!("{why}; kept in the dead-letter file");
                            if let Err(e) = self.spill.dead_letter_line(&line, &why) {
                                self.metrics.ops.audit_lost.inc();
                                tracing::error!("an unreadable audit line is lost: {e}");
                            }
                        }
                    },
                    Ok(None) => break,
                    Err(e) => {
                        self.outage = outage;
                        return tracing::error!("cannot read {}: {e}", path.display());
                    }
                }
            }
            if chunk.is_empty() {
                break;
            }
            // Unreachable again: this file is tried again whole later (rows
            // already in are skipped).
            if !self.insert(chunk, false).await {
                return;
            }
        }
        // Rows already present (a replay cut short before) are skipped by
        // the database and not counted again.
        let replayed = self.metrics.ops.audit_written.get() - before;
        self.metrics.ops.audit_replayed.inc_by(replayed);
        self.outage_announced = false;
        match tokio::fs::remove_file(&path).await {
            Ok(()) => tracing::info!("{replayed} spilled audit events replayed"),
            Err(e) => tracing::error!("cannot remove {}: {e}", path.display()),
        }
    }
}
