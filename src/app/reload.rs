//! What changes without a restart: signing keys, the TLS certificate and
//! the `[rollout]` section of the config file, re-read when their files
//! change (polled) or on SIGHUP. A file that cannot be read or parsed
//! leaves what is in force, and says so.

use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use crate::{
    api::transport::tls::TlsServer,
    auth::keys::KeyRing,
    engine::rollout::{Rollout, RolloutConfig},
};

/// How often the files are checked for changes.
const POLL: Duration = Duration::from_secs(2);

/// The config file's `[rollout]` section, followed.
pub struct RolloutFile {
    path: PathBuf,
    seen: Mutex<Option<SystemTime>>,
    rollout: Arc<Rollout>,
}

impl RolloutFile {
    pub fn new(path: PathBuf, rollout: Arc<Rollout>) -> RolloutFile {
        let seen = Mutex::new(modified(&path));
        RolloutFile {
            path,
            seen,
            rollout,
        }
    }

    fn reload_if_changed(&self) {
        let now = modified(&self.path);
        let changed = match self.seen.lock() {
            Ok(mut seen) if *seen != now => {
                *seen = now;
                true
            }
            _ => false,
        };
        if changed {
            self.reload();
        }
    }

    fn reload(&self) {
        let parsed = std::fs::read_to_string(&self.path)
            .map_err(|e| e.to_string())
            .and_then(|text| RolloutConfig::from_settings_toml(&text));
        match parsed {
            Ok(config) => self.rollout.replace(config),
            Err(e) => tracing::error!(
                path = %self.path.display(),
                "[rollout] not reloaded (the modes in force stay): {e}"
            ),
        }
    }
}

fn modified(path: &PathBuf) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Follows the files until the task is aborted.
pub async fn watch(keys: Arc<KeyRing>, tls: Option<Arc<TlsServer>>, rollout: Option<RolloutFile>) {
    #[cfg(unix)]
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    loop {
        #[cfg(unix)]
        {
            let signal = async {
                match hangup.as_mut() {
                    Some(h) => h.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = signal => {
                    tracing::info!("SIGHUP: reading the signing keys and [rollout] again");
                    if let Err(e) = keys.reload() {
                        tracing::error!("signing keys not reloaded (the old ones stay in force): {e}");
                    }
                    if let Some(rollout) = &rollout {
                        rollout.reload();
                    }
                    continue;
                }
                _ = tokio::time::sleep(POLL) => {}
            }
        }
        #[cfg(not(unix))]
        tokio::time::sleep(POLL).await;
        keys.reload_if_changed();
        if let Some(tls) = &tls {
            tls.reload_if_changed();
        }
        if let Some(rollout) = &rollout {
            rollout.reload_if_changed();
        }
    }
}
