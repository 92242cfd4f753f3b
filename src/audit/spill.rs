//! The local spill file: audit events that could not reach the database
//! (queue full, database down), as JSON lines, replayed later. Replay first
//! renames the file aside, so events spilled meanwhile start a new file; a
//! replay cut short leaves the renamed file for the next try (the database
//! ignores rows it already has).

use std::{
    io::Write,
    path::{Path, PathBuf},
    sync::Mutex,
};

use super::AuditEvent;

pub struct Spill {
    path: PathBuf,
    replaying: PathBuf,
    lock: Mutex<()>,
}

impl Spill {
    /// Checks that the file can be written (a bad path fails at start-up,
    /// not when an event needs it).
    pub fn open(path: &Path) -> Result<Spill, String> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| format!("cannot open the audit spill file {}: {e}", path.display()))?;
        // Writable: that was the point. An empty file is not left behind.
        if file.metadata().is_ok_and(|m| m.len() == 0) {
            let _ = std::fs::remove_file(path);
        }
        let mut replaying = path.as_os_str().to_owned();
        replaying.push(".replaying");
        Ok(Spill {
            path: path.to_owned(),
            replaying: PathBuf::from(replaying),
            lock: Mutex::new(()),
        })
    }

    /// Appends events (small writes, rare path: queue full or database down).
    /// Events here have been written to the JSON lines sink already.
    pub fn append(&self, events: &[AuditEvent]) -> Result<(), String> {
        let mut text = Vec::with_capacity(events.len() * 400);
        for event in events {
            serde_json::to_writer(&mut text, event).map_err(|e| e.to_string())?;
            text.push(b'\n');
        }
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .and_then(|mut f| f.write_all(&text))
            .map_err(|e| format!("{}: {e}", self.path.display()))
    }

    /// The file to replay now, if any: a replay left over from before, or
    /// the current spill file moved aside.
    pub fn take(&self) -> Result<Option<PathBuf>, String> {
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        if self.replaying.exists() {
            return Ok(Some(self.replaying.clone()));
        }
        match std::fs::metadata(&self.path) {
            Ok(m) if m.len() > 0 => {
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

/// Parses a spill file's lines; a line that does not parse (a torn write
/// at a crash) is reported and skipped.
pub fn parse(text: &str) -> Vec<AuditEvent> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .filter_map(|line| match serde_json::from_str(line) {
            Ok(record) => Some(record),
            Err(e) => {
                tracing::error!("unreadable audit spill line skipped ({e}): {line}");
                None
            }
        })
        .collect()
}
