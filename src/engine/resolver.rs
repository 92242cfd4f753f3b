//! The resolver: computes a permission set on a cache miss with one
//! database round trip, through the relationship layers' grants.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use tracing::Instrument;

use crate::{
    engine::{
        layer::Layer,
        permissions::{Absence, Deps, Grant, PermissionSet},
        replica::ReplicaReads,
    },
    error::{AuthzError, OVERLOAD_RETRY},
    model::PermissionKey,
    store::{Chain, Facts, Store},
    support::{
        admission::ExpectedWait, breaker::Breaker, deadline, metrics::Metrics,
        saturation::Saturation,
    },
};

/// The service time assumed for a facts query before one is measured.
const INITIAL_QUERY_TIME: Duration = Duration::from_millis(2);

/// Computes permission sets from stored facts through the relationship
/// layers, in stack order.
pub struct Resolver {
    store: Arc<dyn Store>,
    layers: Vec<Arc<dyn Layer>>,
    /// Every layer's grant, to read cached sets back.
    grants: Vec<Grant>,
    metrics: Arc<Metrics>,
    /// Parent links walked for generation inheritance.
    max_chain_depth: u32,
    /// Open while the database keeps failing: misses fail fast (layer 9).
    database: Arc<Breaker>,
    /// Computations admitted to the pool; more are shed at once.
    queue: Arc<ExpectedWait>,
    acquire_timeout: Duration,
    saturation: Arc<Saturation>,
    /// A read replica for cache fills, where it has caught up.
    replica: Option<Arc<ReplicaReads>>,
}

/// The longest a facts query may take when the request carries no deadline.
const FACTS_DEADLINE: Duration = Duration::from_secs(5);

impl Resolver {
    pub fn new(
        store: Arc<dyn Store>,
        layers: Vec<Arc<dyn Layer>>,
        metrics: Arc<Metrics>,
        max_chain_depth: u32,
        database: Arc<Breaker>,
        saturation: Arc<Saturation>,
    ) -> Self {
        let pool = store.pool_config();
        let queue = ExpectedWait::new(pool.max_connections as usize, INITIAL_QUERY_TIME);
        let grants = layers
            .iter()
            .map(|layer| Grant {
                layer: layer.id(),
                reason: layer.grant_reason(),
            })
            .collect();
        Resolver {
            store,
            layers,
            grants,
            metrics,
            max_chain_depth,
            database,
            queue,
            acquire_timeout: pool.acquire_timeout,
            saturation,
            replica: None,
        }
    }

    /// Reads cache fills from a replica once it has caught up.
    pub fn with_replica(mut self, replica: Arc<ReplicaReads>) -> Self {
        self.replica = Some(replica);
        self
    }

    pub fn store(&self) -> &dyn Store {
        self.store.as_ref()
    }

    /// Reads a set written by `PermissionSet::encode` (by any replica
    /// running the same stack).
    pub fn decode(&self, text: &str) -> Option<PermissionSet> {
        PermissionSet::decode(text, &self.grants)
    }

    /// One database round trip, then pure evaluation. Admitted only if the
    /// pool can start it within the request's budget; the breaker counts
    /// what the database did, never time spent in our own queues.
    pub async fn compute(&self, key: PermissionKey) -> Result<PermissionSet, AuthzError> {
        self.compute_on(self.store.as_ref(), key).await
    }

    /// As `compute`, for a set stamped with `revision`: from the read
    /// replica when it has applied that revision, else from the primary.
    pub async fn compute_at(
        &self,
        key: PermissionKey,
        revision: i64,
    ) -> Result<PermissionSet, AuthzError> {
        let replica = self.replica.as_ref().and_then(|r| r.serving(revision));
        self.compute_on(replica.unwrap_or(self.store.as_ref()), key)
            .await
    }

    async fn compute_on(
        &self,
        store: &dyn Store,
        key: PermissionKey,
    ) -> Result<PermissionSet, AuthzError> {
        if !self.database.allows() {
            return Err(AuthzError::Unavailable(
                "the database is unreachable (circuit breaker open) and no cached answer is \
                 usable; retry shortly"
                    .into(),
            ));
        }
        let budget = deadline::budget(FACTS_DEADLINE);
        let ticket = match self.queue.admit(budget.min(self.acquire_timeout)) {
            Ok(ticket) => ticket,
            Err(too_long) => {
                self.metrics.transport.shed("database_queue");
                return Err(AuthzError::Overloaded {
                    message: format!(
                        "this replica's database queue is full ({} computations ahead, about \
                         {} ms of work): retry shortly",
                        too_long.ahead,
                        too_long.expected_wait.as_millis()
                    ),
                    retry_after: too_long.retry_after.clamp(OVERLOAD_RETRY, FACTS_DEADLINE),
                });
            }
        };
        self.metrics.permission_computations.inc();
        let started = Instant::now();
        let span = tracing::debug_span!(
            "db.permission_facts",
            otel.kind = "client",
            db.operation = "SELECT",
            resource = %key.resource
        );
        let facts = tokio::time::timeout(
            budget,
            store
                .permission_facts(key.subject, key.resource, self.max_chain_depth)
                .instrument(span),
        )
        .await;
        let facts = match facts {
            Ok(Ok(facts)) => {
                self.database.success();
                ticket.done();
                facts
            }
            Ok(Err(e)) => return Err(self.failed(e)),
            Err(_) if budget < FACTS_DEADLINE => return Err(deadline::expired()),
            Err(_) => return Err(self.timed_out(store, started)),
        };
        let set = self.evaluate(facts.as_ref());
        if let Some(fault @ (Absence::ChainCycle | Absence::ChainTooDeep)) = set.absence {
            let kind = match fault {
                Absence::ChainCycle => "generation_chain_cycle",
                _ => "generation_chain_too_deep",
            };
            self.metrics.record_security_alert(kind);
            tracing::error!(
                alert = kind,
                resource = %key.resource,
                max_depth = self.max_chain_depth,
                "security alert: data-integrity fault in a generation's parent chain; \
                 every request on it is denied until the data is repaired"
            );
        }
        Ok(set)
    }

    /// Judges a facts query the store refused: the breaker hears of it only
    /// when the database is to blame. A wait for a pooled connection is our
    /// own queue (RESOURCE_EXHAUSTED).
    fn failed(&self, error: AuthzError) -> AuthzError {
        match error {
            // No pooled connection in time: our own queue. (A database that
            // went away fails the connections in use first, and those count.)
            AuthzError::Overloaded { .. } => error,
            // Refused, reset or closed connections: the database's doing.
            AuthzError::Unavailable(_) => {
                self.database.failure();
                error
            }
            other => other,
        }
    }

    /// A facts query that ran out of time: the database's fault unless this
    /// replica's own queues (a busy pool, a starved runtime) took the time.
    fn timed_out(&self, store: &dyn Store, started: Instant) -> AuthzError {
        if store.pool_busy() || self.saturation.starved_since(started, FACTS_DEADLINE / 2) {
            return AuthzError::overloaded(
                "this replica is too busy to finish the database query in time; retry shortly",
            );
        }
        self.database.failure();
        AuthzError::Unavailable(format!(
            "the database did not answer within {} s",
            FACTS_DEADLINE.as_secs()
        ))
    }

    /// What the layers grant given the facts (`None`: resource not found).
    pub fn evaluate(&self, facts: Option<&Facts>) -> PermissionSet {
        let Some(facts) = facts else {
            return PermissionSet::absent(Absence::ResourceNotFound);
        };
        let deps = Deps {
            project: Some(facts.project_id),
            team: facts.team_id,
        };
        let object_key: Option<Arc<str>> = facts.object_key.as_deref().map(Arc::from);
        let fault = match facts.chain {
            Chain::Sound => None,
            Chain::Cycle => Some(Absence::ChainCycle),
            Chain::TooDeep => Some(Absence::ChainTooDeep),
        };
        if let Some(why) = fault.or(facts.subject_disabled.then_some(Absence::SubjectDisabled)) {
            return PermissionSet {
                deps,
                object_key,
                ..PermissionSet::absent(why)
            };
        }
        let mut granted = [None; 4];
        for layer in &self.layers {
            for action in layer.grants(facts).iter() {
                granted[action.index()].get_or_insert(Grant {
                    layer: layer.id(),
                    reason: layer.grant_reason(),
                });
            }
        }
        PermissionSet {
            granted,
            absence: None,
            deps,
            object_key,
        }
    }
}
