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
    layers::{cache::CacheLayer, ownership::Ownership, team::TeamAccess, visibility::Visibility},
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
}

/// The stack, in evaluation order. Positions not built yet are named so the
/// whole design stays visible.
pub fn layer_stack(parts: StackParts) -> Vec<Arc<dyn Layer>> {
    vec![
        // 10 rate limiting: not built yet.
        // 9 emergency and recovery: not built yet.
        // 4 security context: not built yet.
        Arc::new(CacheLayer::new(parts.cache)),
        Arc::new(Ownership),
        Arc::new(TeamAccess),
        Arc::new(Visibility),
        // 5 generation inheritance: not built yet (generations take their project's grants).
        // 6 media access: not built yet (media take their project's grants).
        // 8 audit: not built yet.
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;

    #[test]
    fn built_layers_follow_the_design_order() {
        let metrics = Arc::new(Metrics::new());
        let freshness = Arc::new(crate::freshness::Freshness::new(
            0,
            std::time::Duration::from_secs(1),
            metrics.clone(),
        ));
        let cache = Arc::new(PermissionCache::new(
            16,
            std::time::Duration::from_secs(1),
            freshness,
            metrics,
        ));
        let built: Vec<(u8, &str)> = layer_stack(StackParts { cache })
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
    }
}
