//! Decision reads from a read replica, only where that cannot make an
//! answer older than what this replica already knows: the replica must have
//! applied at least the change-log revision the answer is stamped with.

use std::{
    sync::{
        Arc,
        atomic::{AtomicI64, Ordering},
    },
    time::Duration,
};

use prometheus_client::metrics::gauge::Gauge;

use crate::store::Store;

/// A read replica and the newest revision it was seen to have applied.
pub struct ReplicaReads {
    store: Arc<dyn Store>,
    /// A lower bound of the replica's revision (replication only moves it
    /// forward, and this is read before the query it vouches for).
    applied: AtomicI64,
    /// Where operators see it.
    gauge: Gauge,
}

impl ReplicaReads {
    pub fn new(store: Arc<dyn Store>, gauge: Gauge) -> Arc<Self> {
        gauge.set(-1);
        Arc::new(ReplicaReads {
            store,
            applied: AtomicI64::new(-1),
            gauge,
        })
    }

    /// The replica's store if it has applied `revision`, else `None` (read
    /// the primary).
    pub fn serving(&self, revision: i64) -> Option<&dyn Store> {
        (self.applied.load(Ordering::Acquire) >= revision).then_some(self.store.as_ref())
    }

    /// Reads the replica's revision every `every`; a failed read makes every
    /// decision read the primary until the replica answers again.
    pub async fn follow(self: Arc<Self>, every: Duration) {
        loop {
            match self.store.current_revision().await {
                Ok(revision) => {
                    let seen = self.applied.fetch_max(revision, Ordering::AcqRel);
                    self.gauge.set(seen.max(revision));
                }
                Err(e) => {
                    self.applied.store(-1, Ordering::Release);
                    self.gauge.set(-1);
                    tracing::warn!("read replica unavailable, reading the primary: {e}");
                }
            }
            tokio::time::sleep(every).await;
        }
    }
}
