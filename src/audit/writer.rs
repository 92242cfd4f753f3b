//! The one task that writes audit events: batches from the queue go to the
//! JSON lines sink and the database; a batch the database refuses goes to
//! the spill file, and the spill file is replayed on a timer until empty.

use std::{io::Write, sync::Arc, sync::Mutex, time::Duration};

use tokio::{
    io::AsyncBufReadExt,
    sync::{mpsc, watch},
    time::Instant,
};
use uuid::Uuid;

use super::{AuditEvent, Spill, bursts::Bursts, spill};
use crate::{
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
    pub metrics: Arc<Metrics>,
}

impl Writer {
    /// Writes batches until `stop`; then writes what is still queued (new
    /// events go to the spill file from then on) and returns.
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let mut buffer = Vec::with_capacity(self.batch);
        let mut next_replay = Instant::now();
        loop {
            let received = tokio::select! {
                received = self.receiver.recv_many(&mut buffer, self.batch) => Some(received),
                _ = tokio::time::sleep_until(next_replay) => None,
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
            if Instant::now() >= next_replay {
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
    }

    async fn write(&mut self, mut events: Vec<AuditEvent>) {
        let mut alerts = Vec::new();
        for event in &events {
            for burst in self.bursts.observe(event) {
                self.metrics.record_security_alert(burst.kind);
                tracing::warn!(kind = burst.kind, key = %burst.key, "denial burst");
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
        events.extend(alerts);
        self.sink.write(&events);
        self.insert_or_spill(&events).await;
    }

    async fn insert_or_spill(&self, events: &[AuditEvent]) {
        match tokio::time::timeout(INSERT_DEADLINE, self.store.insert_audit(events)).await {
            Ok(Ok(written)) => {
                self.metrics.ops.audit_written.inc_by(written);
            }
            failed => {
                let why = match failed {
                    Ok(Err(e)) => e.to_string(),
                    _ => "the insert timed out".to_owned(),
                };
                tracing::warn!("audit events spilled to disk: {why}");
                self.metrics.ops.audit_spilled.inc_by(events.len() as u64);
                if let Err(e) = self.spill.append(events) {
                    self.metrics.ops.audit_lost.inc_by(events.len() as u64);
                    tracing::error!("{} audit events lost: {e}", events.len());
                }
            }
        }
    }

    /// Inserts the spill file's events (in batches); removes the file when
    /// all are in, keeps it for the next try otherwise.
    async fn replay(&self) {
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
        let mut replayed = 0u64;
        loop {
            let mut chunk = Vec::with_capacity(self.batch);
            while chunk.len() < self.batch {
                match lines.next_line().await {
                    Ok(Some(line)) => chunk.extend(spill::parse(&line)),
                    Ok(None) => break,
                    Err(e) => return tracing::error!("cannot read {}: {e}", path.display()),
                }
            }
            if chunk.is_empty() {
                break;
            }
            match tokio::time::timeout(INSERT_DEADLINE, self.store.insert_audit(&chunk)).await {
                Ok(Ok(written)) => {
                    // Rows already present (a replay cut short before) are
                    // skipped by the database and not counted again.
                    self.metrics.ops.audit_written.inc_by(written);
                    self.metrics.ops.audit_replayed.inc_by(written);
                    replayed += written;
                }
                // Still down: the whole file is tried again later.
                _ => return,
            }
        }
        match tokio::fs::remove_file(&path).await {
            Ok(()) => tracing::info!("{replayed} spilled audit events replayed"),
            Err(e) => tracing::error!("cannot remove {}: {e}", path.display()),
        }
    }
}
