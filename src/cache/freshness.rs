//! What this replica knows about changes: the change log (`authz_changes`,
//! fed by triggers on every relationship table, whoever writes) is read
//! after each notification and on a timer, and each change marks the scope
//! it touches with its revision. A cached permission set remembers the
//! revision this replica had applied when it was computed, and is trusted
//! only while no scope it depends on changed after that, and only while the
//! replica has heard from the log recently (`max_lag`): a replica that
//! cannot read the log stops answering from cache rather than serve stale
//! allows.

use std::{
    collections::HashMap,
    sync::{
        Arc, RwLock,
        atomic::{AtomicI64, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::sync::Notify;
use uuid::Uuid;

use crate::{
    engine::permissions::Deps, error::AuthzError, model::PermissionKey, store::Store,
    support::metrics::Metrics,
};

/// How long a missing revision is waited for before it is taken for a
/// rolled-back transaction.
const GAP_TIMEOUT: Duration = Duration::from_secs(2);
/// Changes read per query.
const BATCH: i64 = 10_000;
/// Scopes remembered before the replica forgets them all (and trusts only
/// sets computed afterwards).
const MAX_SCOPES: usize = 1_000_000;

/// What a change can affect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Everything in a project.
    Project(Uuid),
    /// Answers about one resource id (created or removed).
    Resource(Uuid),
    /// A user's standing in a team.
    Member { team: Uuid, user: Uuid },
    /// Everything of a user.
    User(Uuid),
    /// The kill switches (no cached set depends on them; layer 9 reloads).
    KillSwitches,
    /// A change this build cannot read: trust nothing older.
    Everything,
}

impl Scope {
    fn parse(
        scope: &str,
        subject: Option<&str>,
        team: Option<&str>,
        target: Option<&str>,
    ) -> Scope {
        let id = |text: Option<&str>| text.and_then(|t| Uuid::parse_str(t).ok());
        match (scope, id(subject), id(team), id(target)) {
            ("project", _, _, Some(p)) => Scope::Project(p),
            ("resource", _, _, Some(r)) => Scope::Resource(r),
            ("member", Some(user), Some(team), _) => Scope::Member { team, user },
            ("user", Some(u), _, _) => Scope::User(u),
            ("kill", _, _, _) => Scope::KillSwitches,
            _ => Scope::Everything,
        }
    }
}

#[derive(Default)]
struct Scopes {
    /// Sets computed before this revision are not trusted.
    floor: i64,
    projects: HashMap<Uuid, i64>,
    resources: HashMap<Uuid, i64>,
    members: HashMap<(Uuid, Uuid), i64>,
    users: HashMap<Uuid, i64>,
}

impl Scopes {
    fn len(&self) -> usize {
        self.projects.len() + self.resources.len() + self.members.len() + self.users.len()
    }

    fn apply(&mut self, revision: i64, scope: Scope) {
        match scope {
            Scope::Project(p) => drop(self.projects.insert(p, revision)),
            Scope::Resource(r) => drop(self.resources.insert(r, revision)),
            Scope::Member { team, user } => drop(self.members.insert((team, user), revision)),
            Scope::User(u) => drop(self.users.insert(u, revision)),
            Scope::KillSwitches => {}
            Scope::Everything => self.forget(revision),
        }
        if self.len() > MAX_SCOPES {
            self.forget(revision);
        }
    }

    fn forget(&mut self, revision: i64) {
        *self = Scopes {
            floor: revision,
            ..Scopes::default()
        };
    }

    /// The newest change among the scopes an answer depends on.
    fn newest(&self, key: &PermissionKey, deps: Deps) -> i64 {
        let mut newest = self.floor;
        let mut see = |rev: Option<&i64>| newest = newest.max(rev.copied().unwrap_or(0));
        see(self.users.get(&key.subject));
        see(self.resources.get(&key.resource.id));
        if let Some(p) = deps.project {
            see(self.projects.get(&p));
        }
        if let Some(t) = deps.team {
            see(self.members.get(&(t, key.subject)));
        }
        newest
    }
}

pub struct Freshness {
    scopes: RwLock<Scopes>,
    /// The last revision up to which every change has been applied (no
    /// gaps): what a set computed now is stamped with.
    applied: AtomicI64,
    /// Since when a revision below newer ones has been missing. A gap is a
    /// transaction that took its revision but has not committed yet (or
    /// rolled back); past `GAP_TIMEOUT` it is taken for a rollback.
    gap_since: std::sync::Mutex<Option<Instant>>,
    /// The newest revision any scope (or the floor) carries: a set stamped
    /// at least this new is valid without looking at the scopes.
    newest_scope: AtomicI64,
    gap_timeout: Duration,
    started: Instant,
    /// Milliseconds since `started` of the last successful read of the log.
    last_sync_ms: AtomicU64,
    max_lag: Duration,
    advanced: Notify,
    /// The newest change of the kill switches seen.
    kill_revision: AtomicI64,
    metrics: Arc<Metrics>,
}

impl Freshness {
    /// Starts at the log's current revision: earlier sets were never cached here.
    pub fn new(start: i64, max_lag: Duration, metrics: Arc<Metrics>) -> Freshness {
        Freshness {
            scopes: RwLock::new(Scopes {
                floor: start,
                ..Scopes::default()
            }),
            applied: AtomicI64::new(start),
            gap_since: std::sync::Mutex::new(None),
            newest_scope: AtomicI64::new(start),
            gap_timeout: GAP_TIMEOUT,
            started: Instant::now(),
            last_sync_ms: AtomicU64::new(0),
            max_lag,
            advanced: Notify::new(),
            kill_revision: AtomicI64::new(0),
            metrics,
        }
    }

    /// The newest revision applied: the revision a set computed now is stamped with.
    pub fn applied(&self) -> i64 {
        self.applied.load(Ordering::Acquire)
    }

    /// How long since the change log was last read.
    pub fn lag(&self) -> Duration {
        let last = Duration::from_millis(self.last_sync_ms.load(Ordering::Acquire));
        self.started.elapsed().saturating_sub(last)
    }

    /// Whether the log was read recently enough to answer from cache.
    pub fn trusted(&self) -> bool {
        let last = Duration::from_millis(self.last_sync_ms.load(Ordering::Acquire));
        self.started.elapsed().saturating_sub(last) <= self.max_lag
    }

    /// The newest kill-switch change read from the log (0: none since start).
    pub fn kill_revision(&self) -> i64 {
        self.kill_revision.load(Ordering::Acquire)
    }

    /// Waits until the log has been read again, at most `at_most`.
    pub async fn next_sync(&self, at_most: Duration) {
        let _ = tokio::time::timeout(at_most, self.advanced.notified()).await;
    }

    /// Whether a set stamped `revision` is still good for `key`.
    pub fn valid(&self, key: &PermissionKey, deps: Deps, revision: i64) -> bool {
        // Fast path: nothing changed since the set was computed.
        if revision >= self.newest_scope.load(Ordering::Acquire) {
            return true;
        }
        match self.scopes.read() {
            Ok(scopes) => scopes.newest(key, deps) <= revision,
            Err(_) => false,
        }
    }

    /// Whether something read at `revision` about record `id` of `user`
    /// (a session, say) is still good: neither changed since.
    pub fn record_valid(&self, user: Uuid, id: Uuid, revision: i64) -> bool {
        if revision >= self.newest_scope.load(Ordering::Acquire) {
            return true;
        }
        match self.scopes.read() {
            Ok(scopes) => {
                let newest = |map: &HashMap<Uuid, i64>, k: &Uuid| map.get(k).copied().unwrap_or(0);
                scopes
                    .floor
                    .max(newest(&scopes.users, &user))
                    .max(newest(&scopes.resources, &id))
                    <= revision
            }
            Err(_) => false,
        }
    }

    /// Waits (up to `wait`) until `revision` has been applied.
    pub async fn reached(&self, revision: i64, wait: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let advanced = self.advanced.notified();
            if self.applied() >= revision {
                return true;
            }
            if tokio::time::timeout_at(deadline, advanced).await.is_err() {
                return self.applied() >= revision;
            }
        }
    }

    /// Applies rows (oldest first) and advances `applied` over the
    /// contiguous run only; rows past a gap are applied to the scopes now
    /// and read again until the gap fills or times out.
    fn apply(&self, rows: Vec<crate::store::ChangeRow>) {
        let Some(last) = rows.last().map(|r| r.0) else {
            return;
        };
        let mut contiguous = self.applied();
        {
            // A poisoned lock still holds sound data (writers never panic
            // half-way); skipping changes here would leave stale sets trusted.
            let mut scopes = self.scopes.write().unwrap_or_else(|p| p.into_inner());
            for (revision, scope, subject, team, target) in &rows {
                let scope = Scope::parse(
                    scope,
                    subject.as_deref(),
                    team.as_deref(),
                    target.as_deref(),
                );
                if scope == Scope::KillSwitches {
                    self.kill_revision.fetch_max(*revision, Ordering::AcqRel);
                }
                scopes.apply(*revision, scope);
                self.newest_scope.fetch_max(*revision, Ordering::AcqRel);
                if *revision == contiguous + 1 {
                    contiguous = *revision;
                }
            }
        }
        let mut gap = self.gap_since.lock().unwrap_or_else(|p| p.into_inner());
        if contiguous < last {
            let since = *gap.get_or_insert_with(Instant::now);
            if since.elapsed() >= self.gap_timeout {
                tracing::warn!(
                    missing = contiguous + 1,
                    "a change-log revision never appeared; taking it for a rollback"
                );
                contiguous = last;
                *gap = None;
            }
        } else {
            *gap = None;
        }
        self.applied.fetch_max(contiguous, Ordering::AcqRel);
        self.metrics.invalidations.inc_by(rows.len() as u64);
        self.metrics.seen_revision.set(last);
        self.metrics.applied_revision.set(self.applied());
    }

    /// Reads the log past what was applied; marks the replica in sync.
    pub async fn sync(&self, store: &dyn Store) -> Result<(), AuthzError> {
        loop {
            let before = self.applied();
            let rows = store.changes_since(before, BATCH).await?;
            let full = rows.len() as i64 == BATCH;
            self.apply(rows);
            // Stop at a gap too: the rows past it are read again next time.
            if !full || self.applied() == before {
                break;
            }
        }
        let now = self.started.elapsed().as_millis() as u64;
        self.last_sync_ms.fetch_max(now, Ordering::AcqRel);
        self.advanced.notify_waiters();
        Ok(())
    }
}

/// Keeps `freshness` in step with the log: on every PostgreSQL notification
/// and every `poll` (the bound when notifications are lost or the store has
/// none, like SQLite). Runs until the task is aborted.
pub async fn follow(
    freshness: Arc<Freshness>,
    store: Arc<dyn Store>,
    poll: Duration,
    listen_url: Option<String>,
    database: Arc<crate::support::breaker::Breaker>,
) {
    let mut listener = match listen_url {
        Some(url) => listen(&url).await,
        None => None,
    };
    loop {
        // The log is read whatever the breaker says: it is the probe that
        // tells when the database is back.
        match freshness.sync(store.as_ref()).await {
            Ok(()) => database.success(),
            // Every pooled connection busy with our own work: overload, not
            // a database failure (the breaker would turn it into an outage).
            Err(e @ AuthzError::Overloaded { .. }) => {
                tracing::debug!("change log read waits for the pool: {e}");
            }
            Err(e) => {
                database.failure();
                tracing::warn!("cannot read the change log: {e}");
            }
        }
        match listener.as_mut() {
            Some(l) => match tokio::time::timeout(poll, l.recv()).await {
                Ok(Ok(_)) | Err(_) => {}
                Ok(Err(e)) => {
                    tracing::warn!("change notifications lost ({e}); polling until they return");
                    tokio::time::sleep(poll).await;
                }
            },
            None => tokio::time::sleep(poll).await,
        }
    }
}

async fn listen(url: &str) -> Option<sqlx::postgres::PgListener> {
    let mut listener = match sqlx::postgres::PgListener::connect(url).await {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!("cannot listen for changes ({e}); polling only");
            return None;
        }
    };
    match listener.listen("velro_authz_changes").await {
        Ok(()) => Some(listener),
        Err(e) => {
            tracing::warn!("cannot listen for changes ({e}); polling only");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(revision: i64) -> crate::store::ChangeRow {
        (
            revision,
            "user".into(),
            Some(Uuid::new_v4().to_string()),
            None,
            None,
        )
    }

    #[test]
    fn applied_stops_at_a_gap_until_it_fills_or_times_out() {
        let metrics = Arc::new(Metrics::new());
        let mut f = Freshness::new(0, Duration::from_secs(5), metrics);
        f.apply(vec![row(1), row(2), row(4)]);
        assert_eq!(f.applied(), 2, "3 is missing: not past it");
        f.apply(vec![row(3), row(4)]);
        assert_eq!(f.applied(), 4, "the late transaction committed");
        f.gap_timeout = Duration::ZERO;
        f.apply(vec![row(6)]);
        assert_eq!(f.applied(), 6, "5 never came: a rollback");
    }

    #[test]
    fn a_set_is_valid_until_a_scope_it_depends_on_changes() {
        let metrics = Arc::new(Metrics::new());
        let f = Freshness::new(10, Duration::from_secs(5), metrics);
        let (user, project, team) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let key = PermissionKey {
            subject: user,
            resource: crate::model::ResourceRef {
                kind: crate::model::ResourceKind::Project,
                id: project,
            },
        };
        let deps = Deps {
            project: Some(project),
            team: Some(team),
        };
        assert!(f.valid(&key, deps, 10));
        assert!(!f.valid(&key, deps, 9), "older than the floor");
        let text = |u: Uuid| Some(u.to_string());
        f.apply(vec![(
            11,
            "member".into(),
            text(Uuid::new_v4()),
            text(team),
            None,
        )]);
        assert!(f.valid(&key, deps, 10), "another user's membership");
        f.apply(vec![(12, "member".into(), text(user), text(team), None)]);
        assert!(!f.valid(&key, deps, 11));
        assert!(f.valid(&key, deps, 12));
        f.apply(vec![(13, "project".into(), None, None, text(project))]);
        assert!(!f.valid(&key, deps, 12));
        f.apply(vec![(14, "bogus".into(), None, None, None)]);
        assert!(
            !f.valid(&key, deps, 13),
            "an unreadable change trusts nothing older"
        );
    }
}
