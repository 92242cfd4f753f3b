//! Which callers may call which RPCs (`[[callers]]`). A caller is known by
//! the identity of its client certificate (mutual TLS: a SPIFFE id or DNS
//! name) or by a preshared key it presents as `authorization: Bearer
//! <key>` (stored as its SHA-256, compared in constant time). With the
//! table empty every caller may call everything (the embedded default);
//! otherwise a request without credentials is UNAUTHENTICATED and one whose
//! caller may not call the RPC is PERMISSION_DENIED, counted per caller and
//! audited. Health checks and reflection are open to all.

use std::sync::Arc;

use http::Request;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tonic::Status;
use uuid::Uuid;

use super::{
    around::{Answer, Around, Inner},
    connections::ConnInfo,
};
use crate::{
    audit::{AuditEvent, AuditLog},
    error::AuthzError,
    support::{clock::now_ms, metrics::Metrics},
};

/// Paths open to every caller.
const OPEN: [&str; 2] = ["/grpc.health.", "/grpc.reflection."];
/// The path prefix whose refusals are answered as explicit denies by the
/// handler (a gRPC error would let Envoy's `failure_mode_allow` pass them).
const EXT_AUTHZ: &str = "/envoy.service.auth.v3.Authorization/";

/// One caller of the TOML `[[callers]]` table.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallerConfig {
    pub name: String,
    /// Client-certificate identities of this caller (SPIFFE ids, DNS names).
    #[serde(default)]
    pub identities: Vec<String>,
    /// The SHA-256 (hex) of the preshared key this caller presents as
    /// `authorization: Bearer <key>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_sha256: Option<String>,
    /// RPCs it may call: `velro.authz.v1.AuthorizationService/Authorize`,
    /// `velro.authz.v1.AuthorizationService/*`, or `*`.
    pub rpcs: Vec<String>,
}

/// A caller let through, in the request's extensions (admin RPCs accept an
/// operator identity instead of the admin token).
#[derive(Clone, Debug)]
pub struct Caller(pub Arc<str>);

/// A caller refused on the ext_authz path: the handler answers it with an
/// explicit deny.
#[derive(Clone, Debug)]
pub struct CallerRefused(pub AuthzError);

struct Entry {
    name: Arc<str>,
    identities: Vec<String>,
    key: Option<[u8; 32]>,
    rpcs: Vec<String>,
}

impl Entry {
    fn allows(&self, path: &str) -> bool {
        let rpc = path.trim_start_matches('/');
        self.rpcs.iter().any(|r| {
            r == "*"
                || r == rpc
                || r.strip_suffix('*')
                    .is_some_and(|prefix| rpc.starts_with(prefix))
        })
    }
}

/// The table, ready to answer.
pub struct Callers {
    entries: Vec<Entry>,
    audit: Option<Arc<AuditLog>>,
    metrics: Arc<Metrics>,
}

/// Compares digests without an early exit.
fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn digest_of(hex: &str) -> Result<[u8; 32], String> {
    let bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2).unwrap_or("zz"), 16))
        .collect::<Result<_, _>>()
        .map_err(|_| "key_sha256 must be 64 hex digits".to_owned())?;
    bytes
        .try_into()
        .map_err(|_| "key_sha256 must be 64 hex digits".to_owned())
}

impl Callers {
    pub fn new(
        config: &[CallerConfig],
        audit: Option<Arc<AuditLog>>,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Callers>, String> {
        let entries = config
            .iter()
            .map(|c| {
                Ok(Entry {
                    name: Arc::from(c.name.as_str()),
                    identities: c.identities.clone(),
                    key: c
                        .key_sha256
                        .as_deref()
                        .map(digest_of)
                        .transpose()
                        .map_err(|e| format!("callers {:?}: {e}", c.name))?,
                    rpcs: c.rpcs.clone(),
                })
            })
            .collect::<Result<_, String>>()?;
        Ok(Arc::new(Callers {
            entries,
            audit,
            metrics,
        }))
    }

    pub fn enforced(&self) -> bool {
        !self.entries.is_empty()
    }

    /// The caller of a request, from its certificate or its key.
    fn identify(&self, peer: Option<&str>, key: Option<&str>) -> Option<&Entry> {
        if let Some(peer) = peer
            && let Some(entry) = self
                .entries
                .iter()
                .find(|e| e.identities.iter().any(|i| i == peer))
        {
            return Some(entry);
        }
        let presented: [u8; 32] = Sha256::digest(key?.as_bytes()).into();
        // Every key is compared, so the time does not tell which matched.
        let mut found = None;
        for entry in &self.entries {
            if let Some(stored) = &entry.key
                && same(stored, &presented)
            {
                found = Some(entry);
            }
        }
        found
    }

    /// Judges one request: the caller's name, or why it is refused.
    fn judge(
        &self,
        path: &str,
        peer: Option<&str>,
        key: Option<&str>,
    ) -> Result<Arc<str>, AuthzError> {
        let Some(entry) = self.identify(peer, key) else {
            let why = match (peer, key) {
                (None, None) => "this service needs caller credentials: a client certificate or \
                                 `authorization: Bearer <caller key>`"
                    .to_owned(),
                (Some(peer), _) => format!("{peer} is not a known caller"),
                (None, Some(_)) => "the caller key is not known".to_owned(),
            };
            self.refused("unknown", peer.unwrap_or("unknown"), path, &why);
            return Err(AuthzError::unauthenticated(why));
        };
        if !entry.allows(path) {
            let why = format!("caller {} may not call {path}", entry.name);
            self.refused(&entry.name, &entry.name, path, &why);
            return Err(AuthzError::PermissionDenied(why));
        }
        self.count(&entry.name, "allowed");
        Ok(entry.name.clone())
    }

    fn count(&self, caller: &str, outcome: &'static str) {
        self.metrics.transport.caller(caller, outcome);
    }

    /// `caller` names a configured caller or `unknown` (a bounded metric
    /// label); `subject` is what the audit event names.
    fn refused(&self, caller: &str, subject: &str, path: &str, why: &str) {
        self.count(caller, "refused");
        if let Some(audit) = &self.audit {
            audit.record(AuditEvent {
                id: Uuid::now_v7(),
                at_ms: now_ms(),
                kind: "auth".into(),
                subject: subject.to_owned(),
                action: "call".into(),
                resource_type: "rpc".into(),
                resource_id: path.to_owned(),
                decision: "caller_refused".into(),
                layer: "transport".into(),
                reason: "CALLER_NOT_ALLOWED".into(),
                message: why.to_owned(),
                ..AuditEvent::default()
            });
        }
    }
}

#[derive(Clone)]
pub struct CheckCallers(pub Arc<Callers>);

impl Around for CheckCallers {
    fn around<S: Inner<B>, B>(&self, mut request: Request<B>, inner: &mut S) -> Answer<S::Error> {
        let path = request.uri().path().to_owned();
        if !self.0.enforced() || OPEN.iter().any(|p| path.starts_with(p)) {
            return Box::pin(inner.call(request));
        }
        let peer = request
            .extensions()
            .get::<ConnInfo>()
            .and_then(|c| c.peer.clone());
        let key = request
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::to_owned);
        match self.0.judge(&path, peer.as_deref(), key.as_deref()) {
            Ok(name) => {
                request.extensions_mut().insert(Caller(name));
                Box::pin(inner.call(request))
            }
            Err(refused) if path.starts_with(EXT_AUTHZ) => {
                request.extensions_mut().insert(CallerRefused(refused));
                Box::pin(inner.call(request))
            }
            Err(refused) => Box::pin(std::future::ready(Ok(Status::from(refused).into_http()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn callers() -> Arc<Callers> {
        let key = "s3cret-backend-key";
        let digest: String = Sha256::digest(key.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let config = [
            CallerConfig {
                name: "gateway".into(),
                identities: vec!["spiffe://velro.test/envoy".into()],
                key_sha256: None,
                rpcs: vec!["envoy.service.auth.v3.Authorization/Check".into()],
            },
            CallerConfig {
                name: "backend".into(),
                identities: vec![],
                key_sha256: Some(digest),
                rpcs: vec!["velro.authz.v1.AuthorizationService/*".into()],
            },
        ];
        Callers::new(&config, None, Arc::new(Metrics::new())).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn identities_and_keys_name_callers_and_their_rpcs() {
        let c = callers();
        let check = "/envoy.service.auth.v3.Authorization/Check";
        let authorize = "/velro.authz.v1.AuthorizationService/Authorize";
        let gateway = Some("spiffe://velro.test/envoy");
        assert_eq!(
            c.judge(check, gateway, None).ok().as_deref(),
            Some("gateway")
        );
        let refused = c.judge(authorize, gateway, None).unwrap_err();
        assert!(
            matches!(refused, AuthzError::PermissionDenied(_)),
            "{refused:?}"
        );
        let backend = Some("s3cret-backend-key");
        assert_eq!(
            c.judge(authorize, None, backend).ok().as_deref(),
            Some("backend")
        );
        let wrong = c
            .judge(authorize, None, Some("s3cret-backend-kez"))
            .unwrap_err();
        assert!(matches!(wrong, AuthzError::Unauthenticated(_)), "{wrong:?}");
        let none = c.judge(authorize, None, None).unwrap_err();
        assert!(matches!(none, AuthzError::Unauthenticated(_)), "{none:?}");
    }
}
