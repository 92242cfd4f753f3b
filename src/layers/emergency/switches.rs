//! Layer 9's state: the kill switches, kept in the database (so they
//! survive restarts and reach every replica) and mirrored in memory (so the
//! hot path reads them without I/O). A trigger records every change in the
//! change log; each replica reloads the switches as soon as it reads that
//! change (a notification on PostgreSQL, `change_poll` at worst).

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc, RwLock,
        atomic::{AtomicBool, AtomicI64, Ordering},
    },
    time::Duration,
};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{
    cache::freshness::Freshness,
    error::AuthzError,
    store::{Store, control::KillSwitch},
    support::metrics::Metrics,
};

/// `[emergency]` in the TOML file.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EmergencyConfig {
    /// Users a global lockdown does not stop (break-glass administrators).
    pub break_glass: Vec<Uuid>,
}

/// What a switch covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SwitchScope {
    Global,
    Team(Uuid),
    User(Uuid),
}

impl SwitchScope {
    /// `global`, `team:<uuid>` or `user:<uuid>`.
    pub fn parse(text: &str) -> Result<SwitchScope, AuthzError> {
        let bad = || {
            AuthzError::invalid(format!(
                "scope must be `global`, `team:<uuid>` or `user:<uuid>`, got {text:?}"
            ))
        };
        match text.split_once(':') {
            None if text == "global" => Ok(SwitchScope::Global),
            Some(("team", id)) => Uuid::parse_str(id)
                .map(SwitchScope::Team)
                .map_err(|_| bad()),
            Some(("user", id)) => Uuid::parse_str(id)
                .map(SwitchScope::User)
                .map_err(|_| bad()),
            _ => Err(bad()),
        }
    }

    /// The stored (scope, target) pair.
    pub fn columns(self) -> (&'static str, String) {
        match self {
            SwitchScope::Global => ("global", String::new()),
            SwitchScope::Team(id) => ("team", id.to_string()),
            SwitchScope::User(id) => ("user", id.to_string()),
        }
    }
}

/// The switches in force, as one immutable snapshot.
#[derive(Debug, Default)]
pub struct SwitchSet {
    pub global: Option<KillSwitch>,
    pub teams: HashMap<Uuid, KillSwitch>,
    pub users: HashMap<Uuid, KillSwitch>,
}

impl SwitchSet {
    fn from_rows(rows: Vec<KillSwitch>) -> SwitchSet {
        let mut set = SwitchSet::default();
        for row in rows {
            let id = Uuid::parse_str(&row.target).ok();
            match (row.scope.as_str(), id) {
                ("global", _) => set.global = Some(row),
                ("team", Some(id)) => drop(set.teams.insert(id, row)),
                ("user", Some(id)) => drop(set.users.insert(id, row)),
                _ => tracing::error!(?row, "unreadable kill switch ignored"),
            }
        }
        set
    }

    fn is_empty(&self) -> bool {
        self.global.is_none() && self.teams.is_empty() && self.users.is_empty()
    }

    fn len(&self) -> usize {
        usize::from(self.global.is_some()) + self.teams.len() + self.users.len()
    }
}

pub struct KillSwitches {
    /// Whether any switch is set: the hot path reads only this in the
    /// usual case, no lock.
    any: AtomicBool,
    current: RwLock<Arc<SwitchSet>>,
    /// The kill-switch change (log revision) the snapshot reflects.
    loaded: AtomicI64,
    pub break_glass: HashSet<Uuid>,
    metrics: Arc<Metrics>,
}

impl KillSwitches {
    /// Loads the switches at start-up: a replica that cannot read them does
    /// not start (it could not honour a lockdown).
    pub async fn load(
        store: &dyn Store,
        config: &EmergencyConfig,
        metrics: Arc<Metrics>,
    ) -> Result<KillSwitches, AuthzError> {
        let switches = KillSwitches {
            any: AtomicBool::new(false),
            current: RwLock::new(Arc::new(SwitchSet::default())),
            loaded: AtomicI64::new(0),
            break_glass: config.break_glass.iter().copied().collect(),
            metrics,
        };
        switches.reload(store, 0).await?;
        Ok(switches)
    }

    /// The snapshot in force; `None` when no switch is set.
    pub fn current(&self) -> Option<Arc<SwitchSet>> {
        if !self.any.load(Ordering::Acquire) {
            return None;
        }
        let set = self.current.read().unwrap_or_else(|p| p.into_inner());
        Some(set.clone())
    }

    async fn reload(&self, store: &dyn Store, revision: i64) -> Result<(), AuthzError> {
        let set = SwitchSet::from_rows(store.kill_switches().await?);
        self.metrics.ops.kill_switches_active.set(set.len() as i64);
        if !set.is_empty() {
            tracing::warn!(?set, "kill switches in force");
        }
        let any = !set.is_empty();
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(set);
        self.any.store(any, Ordering::Release);
        self.loaded.fetch_max(revision, Ordering::AcqRel);
        Ok(())
    }
}

/// Reloads the switches whenever the change log shows they changed. Runs
/// until the task is aborted.
pub async fn follow(
    switches: Arc<KillSwitches>,
    freshness: Arc<Freshness>,
    store: Arc<dyn Store>,
    poll: Duration,
) {
    loop {
        let wanted = freshness.kill_revision();
        if wanted > switches.loaded.load(Ordering::Acquire)
            && let Err(e) = switches.reload(store.as_ref(), wanted).await
        {
            tracing::warn!("cannot reload the kill switches: {e}");
        }
        freshness.next_sync(poll).await;
    }
}
