//! The order of the layer stack, declared in one place.
//!
//! A request walks the layers top to bottom; the first layer that allows or
//! denies decides. Guards come first (they can only deny), then the cache,
//! which makes the subject's permission set available, then the relationship
//! layers, which allow what they granted. When nobody allows, the request is
//! denied (`default_deny`).

use std::sync::Arc;

use crate::{
    cache::PermissionCache,
    engine::layer::Layer,
    layers::{
        cache::CacheLayer, inheritance::GenerationInheritance, media_access::MediaAccess,
        ownership::Ownership, security_context::SecurityContext, team::TeamAccess,
        visibility::Visibility,
    },
    media_url::UrlSigner,
};

/// The ten positions of the finished design, in evaluation order.
pub const DESIGN_ORDER: [(u8, &str); 10] = [
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

/// What the layers are built from.
pub struct StackParts {
    pub cache: Arc<PermissionCache>,
    pub security: Arc<SecurityContext>,
    pub media_urls: Arc<UrlSigner>,
}

/// The stack, in evaluation order. Positions not built yet are named so the
/// whole design stays visible.
pub fn layer_stack(parts: StackParts) -> Vec<Arc<dyn Layer>> {
    vec![
        // 10 rate limiting: not built yet.
        // 9 emergency and recovery: not built yet.
        parts.security,
        Arc::new(CacheLayer::new(parts.cache)),
        Arc::new(Ownership),
        Arc::new(TeamAccess),
        Arc::new(Visibility),
        Arc::new(GenerationInheritance),
        Arc::new(MediaAccess::new(parts.media_urls)),
        // 8 audit: not built yet.
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        freshness::Freshness,
        layers::security_context::SecurityContextConfig,
        media_url::MediaUrlConfig,
        metrics::Metrics,
        store::{self, PoolConfig},
    };
    use std::time::Duration;

    #[tokio::test]
    async fn built_layers_follow_the_design_order() {
        let metrics = Arc::new(Metrics::new());
        let freshness = Arc::new(Freshness::new(0, Duration::from_secs(1), metrics.clone()));
        let cache = Arc::new(PermissionCache::new(
            16,
            Duration::from_secs(1),
            freshness.clone(),
            metrics,
        ));
        let pool = PoolConfig {
            max_connections: 1,
            acquire_timeout: Duration::from_secs(1),
        };
        let store = store::connect("sqlite::memory:", &pool)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let security = SecurityContext::new(
            &SecurityContextConfig::default(),
            store,
            freshness,
            cache.clone(),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let media_urls =
            UrlSigner::new(&MediaUrlConfig::default()).unwrap_or_else(|e| panic!("{e}"));
        let built: Vec<(u8, &str)> = layer_stack(StackParts {
            cache,
            security: Arc::new(security),
            media_urls: Arc::new(media_urls),
        })
        .iter()
        .map(|l| (l.id().position, l.id().name))
        .collect();
        let mut design = DESIGN_ORDER.iter();
        for layer in &built {
            assert!(
                design.any(|d| d == layer),
                "layer {layer:?} is out of the design order {DESIGN_ORDER:?}"
            );
        }
        assert_eq!(built.len(), 7, "{built:?}");
    }
}
