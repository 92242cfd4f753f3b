//! Layer 8's machinery: every decision becomes an audit event that never
//! slows the decision path. A bounded queue feeds one batched writer into
//! the `audit_log` table and/or a NATS JetStream stream (and, when
//! configured, JSON lines for a SIEM). When the queue is full or a sink is
//! down, events go to a local spill file, replayed when it is back. Rows
//! are keyed by the event id and inserted with "on conflict do nothing",
//! and stream messages carry it as `Nats-Msg-Id`, so a replay never writes
//! an event twice.

mod bursts;
pub mod jetstream;
mod overflow;
mod spill;
mod writer;

use std::{path::PathBuf, sync::Arc, time::Duration};

use serde::{Deserialize, Serialize};
use tokio::{sync::mpsc, task::JoinHandle};
use uuid::Uuid;

pub use crate::store::audit_event::{AuditEvent, AuditFilter, Text};
use crate::{
    store::Store,
    support::{clock::now_ms, duration::HumanDuration, foreground::Foreground, metrics::Metrics},
};
use overflow::Overflow;
pub use spill::Spill;

/// `[audit]` in the TOML file.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// Events waiting for the writer; beyond this they go to the spill file.
    pub queue: usize,
    /// Rows per insert.
    pub batch: usize,
    /// Where events go when the queue is full or the database is down.
    pub spill_path: PathBuf,
    /// How often the spill file is replayed while it holds events.
    pub replay_every: HumanDuration,
    /// `stdout`, or a file path: also write every event as one JSON line.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub json_lines: Option<String>,
    /// This many denials of one principal (or on one resource) within
    /// `burst_window` raise a security alert; 0 turns detection off.
    pub burst_denials: u32,
    pub burst_window: HumanDuration,
    /// When spilled events are forced to disk: `batch` (each append),
    /// `interval` (every `fsync_interval`) or `off` (the kernel decides; a
    /// killed process loses nothing written, a crashed machine may).
    pub fsync: FsyncPolicy,
    pub fsync_interval: HumanDuration,
    /// Write events to the `audit_log` table; off only with a JetStream
    /// stream (which then carries the whole audit).
    pub database: bool,
    /// Publish every event to NATS JetStream as well (or alone).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jetstream: Option<jetstream::JetStreamConfig>,
}

/// When the spill file is forced to disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FsyncPolicy {
    Batch,
    Interval,
    Off,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            queue: 65_536,
            batch: 500,
            spill_path: PathBuf::from("velro-authz-audit.spill"),
            replay_every: HumanDuration(Duration::from_secs(1)),
            json_lines: None,
            burst_denials: 20,
            burst_window: HumanDuration(Duration::from_secs(10)),
            fsync: FsyncPolicy::Interval,
            fsync_interval: HumanDuration(Duration::from_millis(100)),
            database: true,
            jetstream: None,
        }
    }
}

/// The sending side, shared by every layer and RPC that records events.
pub struct AuditLog {
    queue: mpsc::Sender<AuditEvent>,
    /// Where an event goes when the queue is full.
    overflow: Overflow,
    metrics: Arc<Metrics>,
}

impl AuditLog {
    /// Starts the writer; it runs until `stop` turns true, then writes what
    /// is queued and ends. Its inserts give way to the work counted in
    /// `yields_to` (password logins in progress).
    pub async fn start(
        config: &AuditConfig,
        store: Arc<dyn Store>,
        (metrics, yields_to): (Arc<Metrics>, Arc<Foreground>),
        stop: tokio::sync::watch::Receiver<bool>,
    ) -> Result<(Arc<AuditLog>, JoinHandle<()>), String> {
        let stream = match &config.jetstream {
            Some(js) => Some(jetstream::JetStreamSink::start(js).await?),
            None if !config.database => {
                return Err("audit.database = false needs an [audit.jetstream] stream: \
                     the audit must go somewhere"
                    .into());
            }
            None => None,
        };
        let (queue, receiver) = mpsc::channel(config.queue.max(1));
        let spill = Arc::new(Spill::open(&config.spill_path, config.fsync)?);
        let sink = Arc::new(writer::JsonLines::open(config.json_lines.as_deref())?);
        let overflow = Overflow::start(overflow::Targets {
            spill: spill.clone(),
            sink: sink.clone(),
            metrics: metrics.clone(),
        })?;
        let log = Arc::new(AuditLog {
            queue,
            overflow,
            metrics: metrics.clone(),
        });
        let task = tokio::spawn(
            writer::Writer {
                receiver,
                store: config.database.then_some(store),
                stream,
                spill,
                sink,
                bursts: bursts::Bursts::new(config.burst_denials, config.burst_window.0),
                batch: config.batch.max(1),
                replay_every: config.replay_every.0,
                fsync_every: config.fsync_interval.0,
                outage: false,
                outage_announced: false,
                metrics,
                yields_to,
                replaying: None,
            }
            .run(stop),
        );
        Ok((log, task))
    }

    /// Hands an event to the writer without waiting; when the queue is full
    /// the event goes to the spill file instead, by the overflow thread
    /// (never dropped).
    pub fn record(&self, event: AuditEvent) {
        match self.queue.try_send(event) {
            Ok(()) => {}
            Err(
                mpsc::error::TrySendError::Full(event) | mpsc::error::TrySendError::Closed(event),
            ) => self.overflow.spill(event),
        }
    }

    /// Waits until the events that found the queue full are in the spill
    /// file: the server's last step, once every request is answered (the
    /// writer stops beside them, so the last ones may overflow).
    pub async fn flushed(&self) {
        self.overflow.flushed().await;
    }

    /// Events queued and not yet taken by the writer.
    pub fn queued(&self) -> usize {
        self.queue.max_capacity() - self.queue.capacity()
    }

    /// Records a security alert (anomaly, denial burst) and counts it.
    pub fn alert(&self, kind: &'static str, subject: &str, message: String) {
        self.metrics.record_security_alert(kind);
        tracing::warn!(kind, subject, "{message}");
        self.record(AuditEvent {
            id: Uuid::now_v7(),
            at_ms: now_ms(),
            kind: "alert".into(),
            subject: subject.to_owned(),
            decision: "alert".into(),
            reason: kind.to_ascii_uppercase().into(),
            message,
            ..AuditEvent::default()
        });
    }
}
