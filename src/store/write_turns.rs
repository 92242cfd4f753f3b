//! SQLite has one writer per database file. Left to SQLite, a writer that
//! finds the file locked sleeps and polls (1, 2, 5, 10, 15, 20, 25 … ms), so
//! a login's session insert behind a run of audit batches waited tens of
//! milliseconds for locks that were free most of the time. Writes on the
//! hot paths (sessions, audit batches) take their turn here instead, first
//! come first served, so a write waits for the writes ahead of it and no
//! longer.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{Arc, LazyLock, Mutex, Weak},
};

/// The turn to write one database file; every pool of a process on that
/// file shares it.
pub type WriteTurns = Arc<tokio::sync::Mutex<()>>;

/// One entry per database file open in this process (held weakly: a file
/// whose stores are all gone is forgotten).
static BY_FILE: LazyLock<Mutex<HashMap<PathBuf, Weak<tokio::sync::Mutex<()>>>>> =
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
    let turns: WriteTurns = Arc::new(tokio::sync::Mutex::new(()));
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
