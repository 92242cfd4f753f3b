//! The audit stream on NATS JetStream, for a SIEM to read: every event is
//! published as its JSON (the spill file's format) on `<subject>.<kind>`
//! with a publish acknowledgement, its id as `Nats-Msg-Id`, so the server
//! drops a retry it already has (within the stream's duplicate window).
//! The client is built once at start-up and reconnects by itself; a broker
//! that is down at start-up or later is an outage like a database one: the
//! writer spills and replays.

use std::{path::PathBuf, time::Duration};

use async_nats::jetstream::{self, context::PublishAckFuture, message::PublishMessage, stream};
use serde::{Deserialize, Serialize};
use tokio::sync::OnceCell;

use super::AuditEvent;
use crate::support::duration::HumanDuration;

/// `[audit.jetstream]` in the TOML file.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JetStreamConfig {
    /// `nats://host:port` (or `tls://`).
    pub url: String,
    /// The stream; created with the limits below when it does not exist
    /// (an existing stream is used as it is).
    pub stream: String,
    /// Events go to `<subject>.<kind>` (`decision`, `error`, `alert`,
    /// `admin`); the stream takes `<subject>.>`.
    pub subject: String,
    /// A NATS credentials file (JWT and NKey seed), if the server needs one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credentials_file: Option<PathBuf>,
    /// How long the stream keeps an event.
    pub max_age: HumanDuration,
    /// The most the stream holds; beyond it the oldest events go.
    pub max_bytes: i64,
    /// Within this window the server drops a message whose id it has seen.
    pub duplicate_window: HumanDuration,
    /// How long a batch's acknowledgements may take before it is spilled.
    pub publish_timeout: HumanDuration,
}

impl Default for JetStreamConfig {
    fn default() -> Self {
        JetStreamConfig {
            url: "nats://127.0.0.1:4222".into(),
            stream: "VELRO_AUDIT".into(),
            subject: "velro.audit".into(),
            credentials_file: None,
            max_age: HumanDuration(Duration::from_secs(7 * 24 * 3600)),
            max_bytes: 10 << 30,
            duplicate_window: HumanDuration(Duration::from_secs(600)),
            publish_timeout: HumanDuration(Duration::from_secs(2)),
        }
    }
}

impl JetStreamConfig {
    /// The stream as this service creates it.
    pub fn stream_config(&self) -> stream::Config {
        stream::Config {
            name: self.stream.clone(),
            subjects: vec![format!("{}.>", self.subject)],
            retention: stream::RetentionPolicy::Limits,
            storage: stream::StorageType::File,
            max_age: self.max_age.0,
            max_bytes: self.max_bytes,
            discard: stream::DiscardPolicy::Old,
            duplicate_window: self.duplicate_window.0,
            ..Default::default()
        }
    }

    /// A client for this server, connecting in the background (a broker
    /// that is down now is retried, not fatal).
    pub async fn connect(&self) -> Result<async_nats::Client, String> {
        let mut options = async_nats::ConnectOptions::new()
            .name("velro-authz")
            .retry_on_initial_connect()
            .connection_timeout(self.publish_timeout.0)
            .request_timeout(Some(self.publish_timeout.0));
        if let Some(path) = &self.credentials_file {
            options = options
                .credentials_file(path)
                .await
                .map_err(|e| format!("audit.jetstream.credentials_file {}: {e}", path.display()))?;
        }
        options
            .connect(self.url.as_str())
            .await
            .map_err(|e| format!("audit.jetstream.url {}: {e}", self.url))
    }
}

/// What a batch's publish came to.
pub struct Published {
    /// Events the stream stored now (not duplicates of earlier publishes).
    pub stored: u64,
    /// Events without an acknowledgement, in their order; empty when all
    /// were acknowledged.
    pub unacknowledged: Vec<usize>,
    /// Why the first unacknowledged one failed.
    pub why: Option<String>,
}

pub struct JetStreamSink {
    context: jetstream::Context,
    config: JetStreamConfig,
    /// The stream exists (checked once, on the first batch that reaches the
    /// broker).
    ready: OnceCell<()>,
}

impl JetStreamSink {
    pub async fn start(config: &JetStreamConfig) -> Result<JetStreamSink, String> {
        let client = config.connect().await?;
        let context = jetstream::ContextBuilder::new()
            .timeout(config.publish_timeout.0)
            .build(client);
        Ok(JetStreamSink {
            context,
            config: config.clone(),
            ready: OnceCell::new(),
        })
    }

    async fn ensure_stream(&self) -> Result<(), String> {
        self.ready
            .get_or_try_init(|| async {
                self.context
                    .get_or_create_stream(self.config.stream_config())
                    .await
                    .map(|_| ())
                    .map_err(|e| format!("JetStream stream {}: {e}", self.config.stream))
            })
            .await
            .map(|_| ())
    }

    /// Publishes every event (all sent before any acknowledgement is
    /// awaited) and reports which were acknowledged, within the publish
    /// timeout as a whole.
    pub async fn publish(&self, events: &[AuditEvent]) -> Published {
        let everything = || Published {
            stored: 0,
            unacknowledged: (0..events.len()).collect(),
            why: None,
        };
        let deadline = self.config.publish_timeout.0;
        match tokio::time::timeout(deadline, self.ensure_stream()).await {
            Ok(Ok(())) => {}
            Ok(Err(why)) => {
                return Published {
                    why: Some(why),
                    ..everything()
                };
            }
            Err(_) => {
                return Published {
                    why: Some("the JetStream server did not answer in time".into()),
                    ..everything()
                };
            }
        }
        match tokio::time::timeout(deadline, self.publish_all(events)).await {
            Ok(published) => published,
            Err(_) => Published {
                why: Some("JetStream acknowledgements did not come in time".into()),
                ..everything()
            },
        }
    }

    async fn publish_all(&self, events: &[AuditEvent]) -> Published {
        let mut pending: Vec<(usize, Result<PublishAckFuture, String>)> =
            Vec::with_capacity(events.len());
        for (i, event) in events.iter().enumerate() {
            let sent = match serde_json::to_vec(event) {
                Ok(json) => {
                    let subject = format!("{}.{}", self.config.subject, event.kind);
                    let message = PublishMessage::build()
                        .message_id(event.id.to_string())
                        .payload(json.into());
                    self.context
                        .send_publish(subject, message)
                        .await
                        .map_err(|e| e.to_string())
                }
                Err(e) => Err(e.to_string()),
            };
            pending.push((i, sent));
        }
        let mut published = Published {
            stored: 0,
            unacknowledged: Vec::new(),
            why: None,
        };
        for (i, sent) in pending {
            let acknowledged = match sent {
                Ok(ack) => ack.await.map_err(|e| e.to_string()),
                Err(e) => Err(e),
            };
            match acknowledged {
                Ok(ack) if !ack.duplicate => published.stored += 1,
                Ok(_) => {}
                Err(why) => {
                    published.unacknowledged.push(i);
                    published.why.get_or_insert(why);
                }
            }
        }
        published
    }
}

/// Reads the stream as a SIEM would: an ordered consumer from sequence
/// `from` (1: the oldest kept), each event's JSON handed to `out` with its
/// stream sequence. Without `follow` it stops at what the stream held when
/// it started, or after `limit` events.
pub async fn tail(
    config: &JetStreamConfig,
    from: u64,
    limit: Option<u64>,
    follow: bool,
    mut out: impl FnMut(u64, &str),
) -> Result<u64, String> {
    use futures::StreamExt;
    let client = config.connect().await?;
    let context = jetstream::ContextBuilder::new()
        .timeout(config.publish_timeout.0)
        .build(client);
    let failed = |e: &dyn std::fmt::Display| format!("JetStream stream {}: {e}", config.stream);
    let stream = context
        .get_stream(&config.stream)
        .await
        .map_err(|e| failed(&e))?;
    let last = stream
        .get_info()
        .await
        .map_err(|e| failed(&e))?
        .state
        .last_sequence;
    if !follow && last < from {
        return Ok(0);
    }
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::OrderedConfig {
            deliver_policy: jetstream::consumer::DeliverPolicy::ByStartSequence {
                start_sequence: from.max(1),
            },
            ..Default::default()
        })
        .await
        .map_err(|e| failed(&e))?;
    let mut messages = consumer.messages().await.map_err(|e| failed(&e))?;
    let mut shown = 0;
    while limit.is_none_or(|limit| shown < limit) {
        let Some(message) = messages.next().await else {
            break;
        };
        let message = message.map_err(|e| failed(&e))?;
        let sequence = message.info().map_err(|e| failed(&e))?.stream_sequence;
        out(sequence, &String::from_utf8_lossy(&message.payload));
        shown += 1;
        if !follow && sequence >= last {
            break;
        }
    }
    Ok(shown)
}
