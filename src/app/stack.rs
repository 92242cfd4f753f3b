//! The order of the layer stack, declared in one place.
//!
//! A request walks the layers top to bottom; the first layer that allows or
//! denies decides. Guards come first (they can only deny), then the cache,
//! which makes the subject's permission set available, then the relationship
//! layers, which allow what they granted. When nobody allows, the request is
//! denied (`default_deny`). Each layer names its own position in the
//! ten-layer design (`Layer::id`); this function alone decides the order.

use std::sync::Arc;

use crate::{
    audit::AuditLog,
    cache::PermissionCache,
    engine::layer::Layer,
    layers::{
        audit::Audit,
        cache::CacheLayer,
        emergency::{Emergency, switches::KillSwitches},
        inheritance::GenerationInheritance,
        media_access::{MediaAccess, signer::UrlSigner},
        ownership::Ownership,
        rate_limit::RateLimit,
        security_context::SecurityContext,
        team::TeamAccess,
        visibility::Visibility,
    },
};

/// What the layers are built from.
pub struct StackParts {
    /// `None` when `[rate_limit] enabled = false`.
    pub rate_limit: Option<Arc<RateLimit>>,
    pub kill_switches: Arc<KillSwitches>,
    pub security: Arc<SecurityContext>,
    pub cache: Arc<PermissionCache>,
    pub media_urls: Arc<UrlSigner>,
    pub audit: Arc<AuditLog>,
}

/// The stack, in evaluation order.
pub fn layer_stack(parts: StackParts) -> Vec<Arc<dyn Layer>> {
    let mut stack: Vec<Arc<dyn Layer>> = Vec::with_capacity(10);
    // 10 rate limit: first, so an abusive principal costs nothing further
    // (no I/O when the tier is known; one Redis call when shared).
    if let Some(rate_limit) = parts.rate_limit {
        stack.push(rate_limit);
    }
    stack.extend([
        // 9 emergency: a kill switch must win over everything below it,
        // and it is an in-memory read (a team switch needs the set's team).
        Arc::new(Emergency::new(parts.kill_switches, parts.cache.clone())) as Arc<dyn Layer>,
        // 4 security context: network, country, agent and session rules
        // deny before any permission set is loaded.
        parts.security,
        // 7 cache: loads the permission set (moka -> Redis -> database ->
        // computed) that every layer below reads.
        Arc::new(CacheLayer::new(parts.cache)),
        // 1 ownership, 2 team, 3 visibility: the relationship layers, from
        // the strongest grant to the weakest, so `decided_by` names the
        // most specific reason.
        Arc::new(Ownership),
        Arc::new(TeamAccess),
        Arc::new(Visibility),
        // 5 generation inheritance: what ancestors' creators hold; after
        // the direct grants, and it denies broken parent chains.
        Arc::new(GenerationInheritance),
        // 6 media access: decides signed-URL reads and signs URLs for
        // allowed media reads, once the set says who may read.
        Arc::new(MediaAccess::new(parts.media_urls)),
        // 8 audit: last; it decides nothing and records every outcome.
        Arc::new(Audit::new(parts.audit)),
    ]);
    stack
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        app::{assemble::assemble, config::Settings},
        store,
        support::metrics::Metrics,
    };

    #[tokio::test]
    async fn the_ten_layers_follow_the_design_order() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let mut settings = Settings::defaults().unwrap_or_else(|e| panic!("{e}"));
        settings.database_url = "sqlite::memory:".into();
        settings.db_max_connections = 1;
        settings.rate_limit.enabled = true;
        settings.audit.spill_path = dir.path().join("audit.spill");
        let store = store::connect(&settings.database_url, &settings.pool())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        store.migrate().await.unwrap_or_else(|e| panic!("{e}"));
        let (_stop, stop_rx) = tokio::sync::watch::channel(false);
        let assembled = assemble(
            &settings,
            &store::pools::Stores::single(store),
            Arc::new(Metrics::new()),
            stop_rx,
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        let built: Vec<(u8, &str)> = assembled
            .engine
            .layers()
            .iter()
            .map(|l| (l.id().position, l.id().name))
            .collect();
        let design = [
            (10, "rate_limit"),
            (9, "emergency"),
            (4, "security_context"),
            (7, "cache"),
            (1, "ownership"),
            (2, "team"),
            (3, "visibility"),
            (5, "generation_inheritance"),
            (6, "media_access"),
            (8, "audit"),
        ];
        assert_eq!(built, design, "the stack is the design, in order");
    }
}
