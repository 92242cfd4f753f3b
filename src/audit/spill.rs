//! The local spill file: audit events that could not reach the database
//! (queue full, database down), as JSON lines, replayed later. Replay first
//! renames the file aside, so events spilled meanwhile start a new file; a
//! replay cut short leaves the renamed file for the next try (the database
//! ignores rows it already has). Events the database refuses for their
//! content, and lines that cannot be read, go to the dead-letter file
//! (`<spill>.dead`) with the reason, so nothing blocks the replay.

use std::{
    fs::File,
    io::Write,
    path::{Path, PathBuf},
    sync::{
        Mutex,
        atomic::{AtomicBool, Ordering},
    },
};

use serde_json::json;

use super::{AuditEvent, FsyncPolicy};
use crate::support::metrics::Metrics;

pub struct Spill {
    path: PathBuf,
    replaying: PathBuf,
    dead: PathBuf,
    fsync: FsyncPolicy,
    /// The open spill file (appends), if one is open.
    file: Mutex<Option<File>>,
    /// Written since the last fsync.
    dirty: AtomicBool,
}

fn suffixed(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

impl Spill {
    /// Checks that the file can be written (a bad path fails at start-up,
    /// not when an event needs it).
    pub fn open(path: &Path, fsync: FsyncPolicy) -> Result<Spill, String> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| format!("cannot open the audit spill file {}: {e}", path.display()))?;
        // Writable: that was the point. An empty file is not left behind.
        if file.metadata().is_ok_and(|m| m.len() == 0) {
            let _ = std::fs::remove_file(path);
        }
        Ok(Spill {
            path: path.to_owned(),
            replaying: suffixed(path, ".replaying"),
            dead: suffixed(path, ".dead"),
            fsync,
            file: Mutex::new(None),
            dirty: AtomicBool::new(false),
        })
    }

    /// Where refused and unreadable events go.
    pub fn dead_letter_path(&self) -> &Path {
        &self.dead
    }

    /// Appends events as JSON lines (the writer's outage path, or a full
    /// queue); with `fsync = batch` they are on disk when this returns.
    pub fn append(&self, events: &[AuditEvent]) -> Result<(), String> {
        let mut text = Vec::with_capacity(events.len() * 400);
        for event in events {
            serde_json::to_writer(&mut text, event).map_err(|e| e.to_string())?;
            text.push(b'\n');
        }
        let mut slot = self.file.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            let opened = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)
                .map_err(|e| format!("{}: {e}", self.path.display()))?;
            *slot = Some(opened);
        }
        let Some(file) = slot.as_mut() else {
            return Err("the spill file is not open".into());
        };
        file.write_all(&text)
            .map_err(|e| format!("{}: {e}", self.path.display()))?;
        match self.fsync {
            FsyncPolicy::Batch => file
                .sync_data()
                .map_err(|e| format!("{}: {e}", self.path.display()))?,
            FsyncPolicy::Interval => self.dirty.store(true, Ordering::Release),
            FsyncPolicy::Off => {}
        }
        Ok(())
    }

    /// Appends and counts: `audit_events_spilled` once the events are in
    /// the file (a reader of the counter may rely on that), or
    /// `audit_events_lost`, logged, when the file cannot be written.
    pub fn append_counted(&self, events: &[AuditEvent], metrics: &Metrics) {
        if events.is_empty() {
            return;
        }
        match self.append(events) {
            Ok(()) => {
                metrics.ops.audit_spilled.inc_by(events.len() as u64);
            }
            Err(e) => {
                metrics.ops.audit_lost.inc_by(events.len() as u64);
                tracing::error!(
                    "{} audit events lost: cannot write the spill file: {e}",
                    events.len()
                );
            }
        }
    }

    /// Forces what was appended to disk (`fsync = interval`, on its timer).
    pub fn sync(&self) {
        if !self.dirty.swap(false, Ordering::AcqRel) {
            return;
        }
        let slot = self.file.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(file) = slot.as_ref()
            && let Err(e) = file.sync_data()
        {
            tracing::error!("cannot sync the audit spill file: {e}");
        }
    }

    /// Something was appended since the last sync (a sync would write).
    pub fn needs_sync(&self) -> bool {
        self.dirty.load(Ordering::Acquire)
    }

    /// Records events the database refused for their content, and why.
    pub fn dead_letter(&self, events: &[AuditEvent], reason: &str) -> Result<(), String> {
        let lines: Vec<String> = events
            .iter()
            .map(|e| json!({"reason": reason, "event": e}).to_string())
            .collect();
        self.append_dead(&lines)
    }

    /// Records a spill line that could not be read, as it was.
    pub fn dead_letter_line(&self, line: &str, reason: &str) -> Result<(), String> {
        self.append_dead(&[json!({"reason": reason, "line": line}).to_string()])
    }

    fn append_dead(&self, lines: &[String]) -> Result<(), String> {
        let mut text = lines.join("\n");
        text.push('\n');
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.dead)
            .map_err(|e| format!("{}: {e}", self.dead.display()))?;
        file.write_all(text.as_bytes())
            .and_then(|()| file.sync_data())
            .map_err(|e| format!("{}: {e}", self.dead.display()))
    }

    /// The file to replay now, if any: a replay left over from before, or
    /// the current spill file moved aside.
    pub fn take(&self) -> Result<Option<PathBuf>, String> {
        let mut slot = self.file.lock().unwrap_or_else(|p| p.into_inner());
        if self.replaying.exists() {
            return Ok(Some(self.replaying.clone()));
        }
        match std::fs::metadata(&self.path) {
            Ok(m) if m.len() > 0 => {
                // What was appended is flushed with the handle; new events
                // start a new file.
                if let Some(file) = slot.take() {
                    let _ = file.sync_data();
                }
                std::fs::rename(&self.path, &self.replaying)
                    .map_err(|e| format!("{}: {e}", self.path.display()))?;
                Ok(Some(self.replaying.clone()))
            }
            _ => Ok(None),
        }
    }

    /// Whether anything waits for replay.
    pub fn pending(&self) -> bool {
        self.replaying.exists() || std::fs::metadata(&self.path).is_ok_and(|m| m.len() > 0)
    }
}

/// One spill line: the event, or why it cannot be read (a torn write at a
/// crash, a hand edit): such a line is dead-lettered, never retried.
pub fn parse(line: &str) -> Result<AuditEvent, String> {
    serde_json::from_str(line).map_err(|e| format!("unreadable spill line: {e}"))
}
