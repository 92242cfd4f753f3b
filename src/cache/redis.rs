//! The Redis tier: permission sets shared by all replicas, never on the
//! critical path. Every call has a deadline; failures open a circuit
//! breaker that skips Redis until a probe after the cool-off succeeds.
//! Entries carry the revision they were computed at, and each replica
//! checks them against the change log like its own (versioned entries, no
//! deletes needed: a stale entry is simply not used and is overwritten).

use std::{sync::Arc, time::Duration};

use crate::{
    engine::{permissions::PermissionSet, resolver::Resolver},
    error::AuthzError,
    model::PermissionKey,
    support::redis_conn::{Miss, RedisConn, RedisEndpoint},
    support::{metrics::Metrics, saturation::Saturation},
};

pub struct RedisTier {
    redis: RedisConn,
    prefix: String,
    ttl: Duration,
    metrics: Arc<Metrics>,
}

impl RedisTier {
    /// Parses the URL; connects lazily (a Redis that is down at start-up is
    /// skipped like one that goes down later).
    pub fn new(
        endpoint: &RedisEndpoint,
        prefix: &str,
        deadline: Duration,
        ttl: Duration,
        metrics: Arc<Metrics>,
        saturation: Arc<Saturation>,
    ) -> Result<RedisTier, AuthzError> {
        Ok(RedisTier {
            redis: RedisConn::new(
                endpoint,
                deadline,
                "redis_cache",
                metrics.clone(),
                saturation,
            )?,
            prefix: prefix.to_owned(),
            ttl,
            metrics,
        })
    }

    /// `prefix` + `perm:{user:resource}`: the whole permission key is the
    /// hash tag, so in a cluster each entry has its own slot and a hot user
    /// spreads over the shards. Every command touches one key, so a batch
    /// never needs a cross-slot command.
    fn key(&self, key: &PermissionKey) -> String {
        format!("{}perm:{{{}}}", self.prefix, key)
    }

    /// Runs one command within the deadline, through the breaker; `None`
    /// when Redis was skipped or failed (already counted).
    async fn call<T: redis::FromRedisValue>(&self, command: redis::Cmd) -> Option<T> {
        let outcome = self
            .redis
            .call(|mut c| async move { command.query_async::<T>(&mut c).await })
            .await;
        match outcome {
            Ok(value) => Some(value),
            Err(Miss::Skipped) => {
                self.metrics.record_tier("redis", "skipped");
                None
            }
            Err(Miss::Failed) => {
                self.metrics.record_tier("redis", "error");
                None
            }
        }
    }

    /// The set and its revision, if Redis has them and answers in time.
    pub async fn get(
        &self,
        key: &PermissionKey,
        resolver: &Resolver,
    ) -> Option<(PermissionSet, i64)> {
        let mut command = redis::cmd("GET");
        command.arg(self.key(key));
        let text: Option<String> = self.call::<Option<String>>(command).await?;
        // An entry this build cannot read counts as a miss, never an answer.
        let decoded = text.as_deref().and_then(|t| {
            let (revision, set) = t.split_once('@')?;
            Some((resolver.decode(set)?, revision.parse().ok()?))
        });
        self.metrics
            .record_tier("redis", if decoded.is_some() { "hit" } else { "miss" });
        decoded
    }

    /// Stores a set in the background; a slow Redis only loses the write.
    pub fn put(self: &Arc<Self>, key: &PermissionKey, set: &PermissionSet, revision: i64) {
        let mut command = redis::cmd("SET");
        command
            .arg(self.key(key))
            .arg(format!("{revision}@{}", set.encode()))
            .arg("PX")
            .arg(self.ttl.as_millis() as u64);
        let tier = self.clone();
        tokio::spawn(async move {
            let _: Option<()> = tier.call(command).await;
        });
    }
}
