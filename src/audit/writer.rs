//! The one task that writes audit events: batches from the queue go to the
//! JSON lines sink, the database and/or the JetStream stream. When a sink
//! cannot be reached the writer spills at once, the whole queue included,
//! and keeps spilling until a replay of the spill file gets through. A
//! replay goes one chunk at a time between live batches, and only while
//! the live queue is empty and logins have paused, so catching up never
//! starves the live queue (which would spill again) nor takes a core from
//! a login's hash. A batch the database refuses for its content is split
//! until the bad events are isolated: they are dead-lettered with the
//! reason, the others written. Nothing waits behind one bad event.

use std::{io::Write, path::PathBuf, sync::Arc, sync::Mutex, time::Duration};

use tokio::{
    io::{AsyncBufReadExt, BufReader, Lines},
    sync::{mpsc, watch},
    time::Instant,
};
use tracing::Instrument;
use uuid::Uuid;

use super::{AuditEvent, Spill, bursts::Bursts, jetstream::JetStreamSink, spill};
use crate::{
    error::AuthzError,
    store::Store,
    support::{clock::now_ms, foreground::Foreground, metrics::Metrics},
};

/// How long a short batch waits for more events before it is written: a
/// SIGKILL can lose what is queued in memory, and this adds at most this
/// much to that window.
const LINGER: Duration = Duration::from_millis(5);

/// How long one insert may take before the batch is spilled instead.
const INSERT_DEADLINE: Duration = Duration::from_secs(5);

/// The longest an insert waits for password logins in progress to end:
/// about one login, so a login storm slows the writer (its queue and the
/// spill file absorb the rest) but never stops it.
const YIELD_AT_MOST: Duration = Duration::from_millis(50);

/// A replay chunk waits until logins have paused this long...
const REPLAY_SETTLE: Duration = Duration::from_millis(100);
/// ...or this long at most (then one chunk goes anyway, so a steady stream
/// of logins slows a replay but never stops it). Only back-to-back logins
/// never pause for `REPLAY_SETTLE`. One-at-a-time login p99 in the full
/// report with 1 s: 43 ms (SQLite), 50 ms (PostgreSQL), one run each; with
/// 5 s: 36 ms (one run), 32-40 ms (two runs). Runs vary by 10-30 %.
const REPLAY_DEFER_AT_MOST: Duration = Duration::from_secs(5);
/// How often a deferred replay looks again.
const REPLAY_RECHECK: Duration = Duration::from_millis(20);

/// A replay in progress: the spill file being read, chunk by chunk.
pub struct Replay {
    path: PathBuf,
    lines: Lines<BufReader<tokio::fs::File>>,
    /// `audit_written` when it started (what it wrote is counted at the end).
    written_before: u64,
    /// Whether the writer was in an outage when it started.
    outage_before: bool,
    /// Since when the next chunk has been waiting for logins to pause.
    deferred_since: Option<Instant>,
}

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
    /// The `audit_log` table, unless the stream alone carries the audit.
    pub store: Option<Arc<dyn Store>>,
    pub stream: Option<JetStreamSink>,
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
    /// Password logins in progress: an insert waits for them (at most
    /// `YIELD_AT_MOST`), since it would take a core from the login's hash
    /// and, on SQLite, hold the write lock its session insert needs.
    pub yields_to: Arc<Foreground>,
    /// The spill file being replayed, if any.
    pub replaying: Option<Replay>,
}

/// Why an insert did not happen.
enum Refused {
    /// The database refused these events' content (e.g. a byte its
    /// encoding cannot hold): retrying will never help.
    Content(String),
    /// A sink was unreachable, busy or slow: retry later. `Some`: only
    /// these events (indexes) are still to write (the database took the
    /// batch, the stream acknowledged the others).
    Unreachable(String, Option<Vec<usize>>),
}

fn classify(
    outcome: Result<Result<u64, AuthzError>, tokio::time::error::Elapsed>,
) -> Result<u64, Refused> {
    match outcome {
        Ok(Ok(written)) => Ok(written),
        Ok(Err(e @ AuthzError::Internal(_))) => Err(Refused::Content(e.to_string())),
        Ok(Err(e)) => Err(Refused::Unreachable(e.to_string(), None)),
        Err(_) => Err(Refused::Unreachable("the insert timed out".into(), None)),
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
                    self.linger(&mut buffer).await;
                    let events = std::mem::replace(&mut buffer, Vec::with_capacity(self.batch));
                    self.write(events).await;
                }
                None => {}
            }
            let now = Instant::now();
            if now >= next_sync {
                self.sync_spill().await;
                next_sync = now + self.fsync_every;
            }
            if now >= next_replay {
                next_replay = self.replay_step().await;
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
        // What found the queue full is flushed by the server once every
        // request is answered (`AuditLog::flushed`).
        self.sync_spill().await;
    }

    /// Forces the spill file to disk (`fsync = interval`), off the runtime;
    /// nothing to hand over when nothing was appended since the last sync.
    async fn sync_spill(&self) {
        if !self.spill.needs_sync() {
            return;
        }
        let spill = self.spill.clone();
        if let Err(e) = tokio::task::spawn_blocking(move || spill.sync()).await {
            tracing::error!("the audit spill file's sync did not finish: {e}");
        }
    }

    /// Lets a short batch fill for up to `LINGER` (as a Kafka producer's
    /// `linger.ms` does): under a moderate load the writer would otherwise
    /// wake and insert for every few events, and the cost of an insert is
    /// mostly per statement, not per row.
    async fn linger(&mut self, buffer: &mut Vec<AuditEvent>) {
        let until = Instant::now() + LINGER;
        while buffer.len() < self.batch {
            let wanted = self.batch - buffer.len();
            match tokio::time::timeout_at(until, self.receiver.recv_many(buffer, wanted)).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    }

    /// Starts a replay when the spill file holds events, or takes its next
    /// chunk when the live queue is empty and logins have paused (or the
    /// chunk has waited `REPLAY_DEFER_AT_MOST`). Returns when to come back.
    async fn replay_step(&mut self) -> Instant {
        if self.replaying.is_none() {
            if !self.spill.pending() {
                return Instant::now() + self.replay_every;
            }
            self.replaying = self.open_replay().await;
        }
        let Some(replay) = self.replaying.as_mut() else {
            return Instant::now() + self.replay_every;
        };
        let waited = replay
            .deferred_since
            .get_or_insert_with(Instant::now)
            .elapsed();
        let live_first = !self.receiver.is_empty();
        if waited < REPLAY_DEFER_AT_MOST
            && (live_first || !self.yields_to.paused_for(REPLAY_SETTLE))
        {
            return Instant::now() + REPLAY_RECHECK;
        }
        replay.deferred_since = None;
        match self.replay_chunk().await {
            // More to do: straight on (live batches still come first).
            true => Instant::now(),
            false => Instant::now() + self.replay_every,
        }
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
            self.spill(events).await;
            return;
        }
        self.insert(events, true).await;
    }

    /// Writes to the database, then publishes to the stream: what the
    /// database counted as new (the stream's count without a database).
    async fn try_insert(&self, events: &[AuditEvent]) -> Result<u64, Refused> {
        self.yields_to.idle(YIELD_AT_MOST).await;
        let span = tracing::debug_span!("audit.batch", events = events.len());
        let mut written = 0;
        if let Some(store) = &self.store {
            let insert = store.insert_audit(events).instrument(span.clone());
            written = classify(tokio::time::timeout(INSERT_DEADLINE, insert).await)?;
        }
        let Some(stream) = &self.stream else {
            return Ok(written);
        };
        let published = stream.publish(events).instrument(span).await;
        self.metrics.ops.audit_published.inc_by(published.stored);
        if self.store.is_none() {
            written = published.stored;
        }
        match published.why {
            None => Ok(written),
            Some(why) => {
                self.metrics.ops.audit_written.inc_by(written);
                Err(Refused::Unreachable(why, Some(published.unacknowledged)))
            }
        }
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
                Err(Refused::Unreachable(why, unsent)) => {
                    self.enter_outage(&why);
                    if spill {
                        match unsent {
                            None => self.spill(events).await,
                            Some(unsent) => {
                                let unsent: Vec<AuditEvent> = unsent
                                    .iter()
                                    .filter_map(|i| events.get(*i).cloned())
                                    .collect();
                                self.spill(unsent).await;
                            }
                        }
                        for rest in std::mem::take(&mut work) {
                            self.spill(rest).await;
                        }
                    }
                    self.drain_queue_to_spill().await;
                    return false;
                }
            }
        }
        true
    }

    fn enter_outage(&mut self, why: &str) {
        if !self.outage {
            tracing::warn!("audit events go to the spill file until their sink is back: {why}");
        }
        self.outage = true;
    }

    /// Moves everything queued to the spill file at once: in an outage the
    /// memory queue is the only thing a crash could lose.
    async fn drain_queue_to_spill(&mut self) {
        let mut events = Vec::with_capacity(self.batch);
        while let Ok(event) = self.receiver.try_recv() {
            events.push(event);
            if events.len() == self.batch {
                self.sink.write(&events);
                let full = std::mem::replace(&mut events, Vec::with_capacity(self.batch));
                self.spill(full).await;
            }
        }
        self.sink.write(&events);
        self.spill(events).await;
    }

    /// Appends to the spill file on a blocking thread (with `fsync =
    /// batch` each append is also an fsync), and waits: when this returns
    /// the events are in the file and counted.
    async fn spill(&self, events: Vec<AuditEvent>) {
        if events.is_empty() {
            return;
        }
        let (spill, metrics, count) = (self.spill.clone(), self.metrics.clone(), events.len());
        let appended =
            tokio::task::spawn_blocking(move || spill.append_counted(&events, &metrics)).await;
        if let Err(e) = appended {
            self.metrics.ops.audit_lost.inc_by(count as u64);
            tracing::error!("{count} audit events lost: the spill append did not finish: {e}");
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

    /// Takes the spill file aside for a replay. While it runs the writer
    /// tries the database again (events spilled in an outage included).
    async fn open_replay(&mut self) -> Option<Replay> {
        let path = match self.spill.take() {
            Ok(Some(path)) => path,
            Ok(None) => return None,
            Err(e) => {
                tracing::error!("cannot replay the audit spill file: {e}");
                return None;
            }
        };
        let file = match tokio::fs::File::open(&path).await {
            Ok(f) => f,
            Err(e) => {
                tracing::error!("cannot read {}: {e}", path.display());
                return None;
            }
        };
        let replay = Replay {
            path,
            lines: BufReader::new(file).lines(),
            written_before: self.metrics.ops.audit_written.get(),
            outage_before: self.outage,
            deferred_since: None,
        };
        self.outage = false;
        Some(replay)
    }

    /// Inserts the next chunk of the file being replayed; whether there is
    /// more. At the end the file is removed (every event is in or
    /// dead-lettered); when the database cannot be reached it is kept whole
    /// for the next try (rows already in are skipped then).
    async fn replay_chunk(&mut self) -> bool {
        let Some(mut replay) = self.replaying.take() else {
            return false;
        };
        let mut chunk = Vec::with_capacity(self.batch);
        while chunk.len() < self.batch {
            match replay.lines.next_line().await {
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
                    self.outage = replay.outage_before;
                    tracing::error!("cannot read {}: {e}", replay.path.display());
                    return false;
                }
            }
        }
        if !chunk.is_empty() {
            // Unreachable again: the file stays for a later replay.
            if !self.insert(chunk, false).await {
                return false;
            }
            self.replaying = Some(replay);
            return true;
        }
        // Rows already present (a replay cut short before) are skipped by
        // the database and not counted again.
        let replayed = self.metrics.ops.audit_written.get() - replay.written_before;
        self.metrics.ops.audit_replayed.inc_by(replayed);
        self.outage_announced = false;
        match tokio::fs::remove_file(&replay.path).await {
            Ok(()) => tracing::info!("{replayed} spilled audit events replayed"),
            Err(e) => tracing::error!("cannot remove {}: {e}", replay.path.display()),
        }
        false
    }
}
