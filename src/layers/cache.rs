//! Layer 7: makes the subject's permission set on the resource available,
//! read-through the cache tiers (unless the request asks for full
//! consistency). It never decides by itself.

use std::sync::Arc;

use crate::{
    cache::PermissionCache,
    engine::{
        layer::{Check, Context, Layer, LayerId, Step},
        permissions::PermissionSource,
    },
    error::AuthzError,
    model::Consistency,
};

pub struct CacheLayer {
    cache: Arc<PermissionCache>,
}

impl CacheLayer {
    pub fn new(cache: Arc<PermissionCache>) -> Self {
        CacheLayer { cache }
    }
}

impl Layer for CacheLayer {
    fn id(&self) -> LayerId {
        LayerId {
            position: 7,
            name: "cache",
        }
    }

    fn check<'a>(&'a self, ctx: &'a mut Context<'_>) -> Check<'a> {
        // A signed media URL is the whole credential (layer 6): nothing to load.
        if ctx.permissions.is_some() || !ctx.request.signed_url.is_empty() {
            return Check::Ready(Ok(Step::Pass));
        }
        Check::Later(Box::pin(async move {
            load_permissions(&self.cache, ctx).await?;
            Ok(Step::Pass)
        }))
    }
}

/// Reads the subject's permission set through the tiers into the context
/// (also used by guards that need the resource's team before layer 7).
pub async fn load_permissions(
    cache: &PermissionCache,
    ctx: &mut Context<'_>,
) -> Result<(), AuthzError> {
    let key = ctx.query.key();
    let resolver = ctx.resolver;
    let consistency = ctx.consistency;
    let lookup = async move {
        match consistency {
            Consistency::FullyConsistent => {
                Ok((resolver.compute(key).await?, PermissionSource::Computed))
            }
            Consistency::MinimizeLatency => cache.get_or_compute(key, resolver).await,
            Consistency::AtLeastAsFresh(revision) => {
                if cache.reached(revision).await {
                    cache.get_or_compute(key, resolver).await
                } else {
                    Ok((resolver.compute(key).await?, PermissionSource::Computed))
                }
            }
        }
    };
    let (set, source) = match ctx.batch {
        Some(memo) => memo.get_or_resolve(key, lookup).await?,
        None => lookup.await?,
    };
    ctx.permissions = Some(set);
    ctx.source = source;
    Ok(())
}
