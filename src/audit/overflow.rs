//! The queue's overflow, written off the runtime. When the writer's queue
//! is full (a batch scenario makes 70,000 events a second), each event used
//! to be appended to the spill file by the request that made it: a write
//! system call per event, on a runtime thread, behind one mutex. Now such
//! an event goes to one thread of its own, which appends whatever has
//! gathered in one write. Its channel is bounded too; when it is full as
//! well, the request appends the event itself, as before, so nothing is
//! ever dropped and memory stays bounded. Like the queue, what waits in the
//! channel (a few milliseconds of events) is lost to a SIGKILL.

use std::sync::{
    Arc,
    mpsc::{self, Receiver, SyncSender, TrySendError},
};

use super::{AuditEvent, Spill, writer::JsonLines};
use crate::support::metrics::Metrics;

/// Events waiting for the overflow thread (boxed: the channel allocates
/// its slots up front).
const CHANNEL: usize = 65_536;
/// The most events one append carries.
const APPEND_AT_MOST: usize = 4_096;

enum Message {
    Event(Box<AuditEvent>),
    /// Everything sent before it is in the file: answer on this.
    Flushed(tokio::sync::oneshot::Sender<()>),
}

/// Where the overflow goes: the spill file, with the JSON lines sink too.
#[derive(Clone)]
pub struct Targets {
    pub spill: Arc<Spill>,
    pub sink: Arc<JsonLines>,
    pub metrics: Arc<Metrics>,
}

impl Targets {
    /// Appends `events` now, on the calling thread (JSON lines too).
    pub fn append(&self, events: &[AuditEvent]) {
        if events.is_empty() {
            return;
        }
        self.sink.write(events);
        self.spill.append_counted(events, &self.metrics);
    }
}

pub struct Overflow {
    sender: SyncSender<Message>,
    targets: Targets,
}

impl Overflow {
    /// Starts the overflow thread; it ends once every `Overflow` is gone
    /// and it has written what was sent.
    pub fn start(targets: Targets) -> Result<Overflow, String> {
        let (sender, receiver) = mpsc::sync_channel(CHANNEL);
        let thread_targets = targets.clone();
        std::thread::Builder::new()
            .name("audit-overflow".into())
            .spawn(move || drain(&receiver, &thread_targets))
            .map_err(|e| format!("cannot start the audit overflow thread: {e}"))?;
        Ok(Overflow { sender, targets })
    }

    /// Hands an event to the overflow thread without waiting; when its
    /// channel is full too, appends it here.
    pub fn spill(&self, event: AuditEvent) {
        let refused = match self.sender.try_send(Message::Event(Box::new(event))) {
            Ok(()) => return,
            Err(TrySendError::Full(message) | TrySendError::Disconnected(message)) => message,
        };
        if let Message::Event(event) = refused {
            self.targets.append(&[*event]);
        }
    }

    /// Waits until every event handed over before this call is in the
    /// file, and synced (the server's last step, once the last request is
    /// answered).
    pub async fn flushed(&self) {
        let (done, wait) = tokio::sync::oneshot::channel();
        let sender = self.sender.clone();
        // `send` waits for room in a full channel: off the runtime.
        let sent = tokio::task::spawn_blocking(move || sender.send(Message::Flushed(done))).await;
        if matches!(sent, Ok(Ok(()))) {
            let _ = wait.await;
        }
    }
}

/// The thread: takes what has gathered (at most `APPEND_AT_MOST`), appends
/// it in one write, answers flush requests once what came before is in
/// (and synced).
fn drain(receiver: &Receiver<Message>, targets: &Targets) {
    let mut events = Vec::with_capacity(APPEND_AT_MOST);
    let mut flushes = Vec::new();
    while let Ok(first) = receiver.recv() {
        let mut next = Some(first);
        while let Some(message) = next.take() {
            match message {
                Message::Event(event) => events.push(*event),
                Message::Flushed(done) => flushes.push(done),
            }
            if events.len() < APPEND_AT_MOST {
                next = receiver.try_recv().ok();
            }
        }
        targets.append(&events);
        events.clear();
        if !flushes.is_empty() {
            targets.spill.sync();
        }
        for done in flushes.drain(..) {
            let _ = done.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::FsyncPolicy;

    #[tokio::test]
    async fn what_was_handed_over_is_in_the_file_once_flushed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.spill");
        let metrics = Arc::new(Metrics::new());
        let spill = Arc::new(Spill::open(&path, FsyncPolicy::Off).unwrap());
        let overflow = Overflow::start(Targets {
            spill,
            sink: Arc::new(JsonLines::open(None).unwrap()),
            metrics: metrics.clone(),
        })
        .unwrap();
        const N: usize = 10_000;
        for i in 0..N {
            overflow.spill(AuditEvent {
                subject: format!("user-{i}"),
                ..AuditEvent::default()
            });
        }
        overflow.flushed().await;
        let text = std::fs::read_to_string(&path).unwrap();
        let subjects: std::collections::BTreeSet<String> = text
            .lines()
            .map(|line| super::super::spill::parse(line).unwrap().subject)
            .collect();
        assert_eq!(text.lines().count(), N, "each event once");
        assert_eq!(subjects.len(), N);
        assert_eq!(metrics.ops.audit_spilled.get(), N as u64);
        assert_eq!(metrics.ops.audit_lost.get(), 0);
    }
}
