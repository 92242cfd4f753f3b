//! Layer 6: media access with signed URLs.
//!
//! An allowed `read` of a media object carries an obligation: a signed URL
//! for the object (see `signer`). A request that presents a signed URL
//! (`context.signed_url`) is decided by the URL alone: it grants `read` of
//! the media object it names, checked against the keys in memory, with no
//! database round trip (the cache layer loads nothing for such requests).

pub mod signer;

use std::sync::Arc;

use crate::{
    engine::layer::{Check, Context, Layer, LayerId, Obligation, Step, Verdict},
    layers::media_access::signer::UrlSigner,
    model::{Action, ResourceKind},
    support::clock::now_unix,
};

pub struct MediaAccess {
    signer: Arc<UrlSigner>,
}

impl MediaAccess {
    pub fn new(signer: Arc<UrlSigner>) -> Self {
        MediaAccess { signer }
    }

    fn judge_url(&self, ctx: &Context<'_>) -> Verdict {
        let query = &ctx.query;
        let deny = |reason, message| Verdict {
            allow: false,
            reason,
            message,
        };
        let verified =
            match self
                .signer
                .verify(&ctx.request.signed_url, ctx.request.ip, now_unix() as i64)
            {
                Ok(verified) => verified,
                Err(rejection) => return deny(rejection.reason(), rejection.message()),
            };
        if query.resource.kind != ResourceKind::Media || query.resource.id != verified.media_id {
            return deny(
                "SIGNED_URL_WRONG_RESOURCE",
                format!(
                    "the signed URL is for media:{}, not {}",
                    verified.media_id, query.resource
                ),
            );
        }
        if query.action != Action::Read {
            return deny(
                "SIGNED_URL_READ_ONLY",
                format!("a signed URL grants read, not {}", query.action),
            );
        }
        Verdict {
            allow: true,
            reason: "SIGNED_URL",
            message: format!(
                "a valid signed URL grants read of {} until {}",
                query.resource, verified.expires_at
            ),
        }
    }
}

impl Layer for MediaAccess {
    fn id(&self) -> LayerId {
        LayerId {
            position: 6,
            name: "media_access",
        }
    }

    fn check<'a>(&'a self, ctx: &'a mut Context<'_>) -> Check<'a> {
        if ctx.request.signed_url.is_empty() {
            return Check::Ready(Ok(Step::Pass));
        }
        Check::Ready(Ok(Step::Decide(self.judge_url(ctx))))
    }

    fn obligation(&self, ctx: &Context<'_>) -> Option<Obligation> {
        if ctx.query.action != Action::Read || ctx.query.resource.kind != ResourceKind::Media {
            return None;
        }
        let object_key = ctx.permissions.as_ref()?.object_key()?;
        let ip = ctx.request.ip.filter(|_| self.signer.binds_ip());
        let signed = self.signer.sign(
            ctx.query.resource.id,
            object_key,
            ip,
            now_unix() as i64,
            None,
        );
        Some(Obligation::SignedMediaUrl {
            url: signed.url,
            expires_at: signed.expires_at,
            key_id: signed.key_id,
        })
    }
}
