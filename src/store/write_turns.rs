//! SQLite has one writer per database file. Left to SQLite, a writer that
//! finds the file locked sleeps and polls (1, 2, 5, 10, 15, 20, 25 … ms), so
//! a login's session insert behind a run of audit batches waited tens of
//! milliseconds for locks that were free most of the time. Writes on the
//! hot paths (sessions, audit batches) take their turn here instead, first
//! come first served, so a write waits for the writes ahead of it and no
//! longer.
//!
//! The same file's WAL is checkpointed here too, in the background: left to
//! SQLite, the commit that crosses 1,000 WAL pages copies them into the
//! database and syncs it, and with the audit log writing several MB a
//! second, a login's session insert was often that commit, or waited for
//! it (the storm's admitted logins on SQLite in short runs: p99 279-288 ms
//! in two with it, 222-285 ms in four without).

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{Arc, LazyLock, Mutex, OnceLock, Weak},
    time::Duration,
};

use sqlx::SqlitePool;

/// How often the WAL is copied into the database (PASSIVE: it waits for
/// no writer and no reader). The WAL holds at most about this much writing.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(500);

/// The one writer of a database file, shared by every pool of the process
/// on it: the turn to write, and the background checkpoints.
#[derive(Default)]
pub struct FileWriter {
    turn: tokio::sync::Mutex<()>,
    checkpoints: OnceLock<Checkpoints>,
}

pub type WriteTurns = Arc<FileWriter>;

impl FileWriter {
    /// Waits for the turn to write.
    pub async fn turn(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.turn.lock().await
    }

    /// Starts the file's background checkpoints on `pool` (once per file;
    /// they stop when the last store on the file is gone). The pool's
    /// connections must have `wal_autocheckpoint` at 0.
    pub fn checkpoint_in_background(&self, pool: &SqlitePool) {
        self.checkpoints.get_or_init(|| {
            let pool = pool.clone();
            Checkpoints(tokio::spawn(async move {
                let mut every = tokio::time::interval(CHECKPOINT_EVERY);
                every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                while !pool.is_closed() {
                    every.tick().await;
                    if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
                        .execute(&pool)
                        .await
                    {
                        tracing::warn!("SQLite WAL checkpoint failed: {e}");
                    }
                }
            }))
        });
    }
}

/// The checkpoint task, stopped with its file's writer.
struct Checkpoints(tokio::task::JoinHandle<()>);

impl Drop for Checkpoints {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One entry per database file open in this process (held weakly: a file
/// whose stores are all gone is forgotten).
static BY_FILE: LazyLock<Mutex<HashMap<PathBuf, Weak<FileWriter>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// The write turns of `file`, shared with every other store on it.
pub fn for_file(file: &Path) -> WriteTurns {
    let mut files = BY_FILE
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    files.retain(|_, turns| turns.strong_count() > 0);
    if let Some(turns) = files.get(file).and_then(Weak::upgrade) {
        return turns;
    }
    let turns: WriteTurns = Arc::new(FileWriter::default());
    files.insert(file.to_path_buf(), Arc::downgrade(&turns));
    turns
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stores_on_one_file_share_their_turns_and_other_files_do_not() {
        let a = for_file(Path::new("/tmp/velro-turns-a.db"));
        let again = for_file(Path::new("/tmp/velro-turns-a.db"));
        let b = for_file(Path::new("/tmp/velro-turns-b.db"));
        assert!(Arc::ptr_eq(&a, &again));
        assert!(!Arc::ptr_eq(&a, &b));
    }
}
