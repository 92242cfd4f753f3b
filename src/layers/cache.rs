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
        Check::Later(Box::pin(async move {
            let key = ctx.query.key();
            let resolver = ctx.resolver;
            let consistency = ctx.consistency;
            let lookup = async move {
                match consistency {
                    Consistency::FullyConsistent => {
                        Ok((resolver.compute(key).await?, PermissionSource::Computed))
                    }
                    Consistency::MinimizeLatency => {
                        self.cache
                            .get_or_compute(key, || resolver.compute(key))
                            .await
                    }
                    Consistency::AtLeastAsFresh(revision) => {
                        if self.cache.reached(revision).await {
                            self.cache
                                .get_or_compute(key, || resolver.compute(key))
                                .await
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
            Ok(Step::Pass)
        }))
    }
}
