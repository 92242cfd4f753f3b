//! Access tokens: issued as EdDSA JWTs with our keys, and verified for our
//! issuer or a configured external one (HS256 secret, or RS256/ES256 keys
//! from a JWKS URL or file), each with its own algorithms, audience and leeway.
//! The issuer is read from the unverified payload only to pick the rules;
//! nothing from it is trusted before the signature and claims verify.

use std::{path::PathBuf, sync::Arc};

use jsonwebtoken::{
    Algorithm, DecodingKey, Header, Validation, dangerous, decode, decode_header, encode,
    errors::ErrorKind, jwk::JwkSet,
};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{jwks::RemoteJwks, keys::KeyRing};
use crate::{error::AuthzError, support::duration::HumanDuration};

/// Longest token looked at.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// An external issuer whose tokens are accepted (TOML `[[external_issuers]]`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExternalIssuer {
    /// The `iss` its tokens carry.
    pub issuer: String,
    /// The `aud` its tokens must carry.
    pub audience: String,
    /// Accepted algorithms: HS256 (with `hs256_secret`), RS256 or ES256
    /// (with `jwks_url` or `jwks_file`).
    pub algorithms: Vec<String>,
    #[serde(default = "default_leeway")]
    pub leeway: HumanDuration,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hs256_secret: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_file: Option<PathBuf>,
    /// The identity provider's JWKS, fetched at start and every
    /// `jwks_refresh`, and again for an unknown key id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_url: Option<String>,
    #[serde(default = "default_jwks_refresh")]
    pub jwks_refresh: HumanDuration,
    /// The longest lifetime (`exp - iat`) accepted from this issuer; a
    /// token without `iat` may not expire later than this from now.
    #[serde(default = "default_max_lifetime")]
    pub max_token_lifetime: HumanDuration,
}

fn default_leeway() -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(30))
}

fn default_jwks_refresh() -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(300))
}

fn default_max_lifetime() -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(24 * 3600))
}

/// The claims of the tokens we issue.
#[derive(Debug, Serialize, Deserialize)]
struct IssuedClaims<'a> {
    iss: &'a str,
    aud: &'a str,
    sub: String,
    sid: String,
    iat: u64,
    nbf: u64,
    exp: u64,
    jti: String,
}

/// What a verified token tells.
#[derive(Clone, Debug, Deserialize)]
pub struct VerifiedClaims {
    pub iss: String,
    pub sub: String,
    #[serde(default)]
    pub sid: Option<String>,
    pub exp: u64,
    #[serde(default)]
    pub iat: Option<u64>,
}

enum IssuerKeys {
    Own(Arc<KeyRing>),
    Secret(DecodingKey),
    Jwks(JwkSet),
    Remote(Arc<RemoteJwks>),
}

struct Issuer {
    name: String,
    audience: String,
    algorithms: Vec<Algorithm>,
    leeway: u64,
    keys: IssuerKeys,
    /// Seconds; `None` for our own tokens (we issue them).
    max_lifetime: Option<u64>,
    /// How often a JWKS URL is fetched again.
    jwks_refresh: std::time::Duration,
}

fn unauthenticated(message: impl Into<String>) -> AuthzError {
    AuthzError::unauthenticated(message)
}

impl Issuer {
    fn external(config: &ExternalIssuer) -> Result<Issuer, AuthzError> {
        let bad =
            |m: String| AuthzError::invalid(format!("external issuer {:?}: {m}", config.issuer));
        let algorithms = config
            .algorithms
            .iter()
            .map(|a| match a.as_str() {
                "HS256" => Ok(Algorithm::HS256),
                "RS256" => Ok(Algorithm::RS256),
                "ES256" => Ok(Algorithm::ES256),
                other => Err(bad(format!(
                    "algorithm {other:?} is not one of HS256, RS256, ES256"
                ))),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let asymmetric = !algorithms.contains(&Algorithm::HS256);
        let keys = match (&config.hs256_secret, &config.jwks_file, &config.jwks_url) {
            (Some(secret), None, None) if algorithms == [Algorithm::HS256] => {
                IssuerKeys::Secret(DecodingKey::from_secret(secret.as_bytes()))
            }
            (None, None, Some(url)) if asymmetric => {
                IssuerKeys::Remote(RemoteJwks::new(&config.issuer, url).map_err(bad)?)
            }
            (None, Some(path), None) if asymmetric => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| bad(format!("{}: {e}", path.display())))?;
                IssuerKeys::Jwks(
                    serde_json::from_str(&text)
                        .map_err(|e| bad(format!("{} is not a JWKS: {e}", path.display())))?,
                )
            }
            _ => {
                return Err(bad(
                    "give hs256_secret with algorithms [\"HS256\"], or one of jwks_url and \
                     jwks_file with RS256/ES256"
                        .into(),
                ));
            }
        };
        Ok(Issuer {
            name: config.issuer.clone(),
            audience: config.audience.clone(),
            algorithms,
            leeway: config.leeway.0.as_secs(),
            keys,
            max_lifetime: Some(config.max_token_lifetime.0.as_secs()),
            jwks_refresh: config.jwks_refresh.0,
        })
    }

    fn key(&self, kid: Option<&str>) -> Result<DecodingKey, AuthzError> {
        match &self.keys {
            IssuerKeys::Own(keys) => {
                let kid = kid.ok_or_else(|| unauthenticated("the token has no key id (kid)"))?;
                keys.current()
                    .find(kid)
                    .map(|k| k.decoding.clone())
                    .ok_or_else(|| unauthenticated("the token's key id (kid) is not one of ours"))
            }
            IssuerKeys::Secret(key) => Ok(key.clone()),
            IssuerKeys::Jwks(set) => Issuer::from_set(set, kid),
            IssuerKeys::Remote(remote) => Issuer::from_set(&remote.current(), kid),
        }
    }

    fn from_set(set: &JwkSet, kid: Option<&str>) -> Result<DecodingKey, AuthzError> {
        let jwk = match kid {
            Some(kid) => set.find(kid),
            None if set.keys.len() == 1 => set.keys.first(),
            None => None,
        }
        .ok_or_else(|| unauthenticated("the token's key id (kid) is not in the issuer's JWKS"))?;
        DecodingKey::from_jwk(jwk).map_err(|e| AuthzError::Internal(format!("issuer key: {e}")))
    }
}

/// The unverified payload's issuer: only to pick the rules.
#[derive(Deserialize)]
struct Peek {
    iss: Option<String>,
}

fn peek_issuer(token: &str) -> Option<String> {
    dangerous::insecure_decode_claims::<Peek>(token).ok()?.iss
}

/// Issues and verifies access tokens.
pub struct TokenService {
    own: Issuer,
    external: Vec<Issuer>,
    keys: Arc<KeyRing>,
    ttl: u64,
}

fn describe(kind: &ErrorKind) -> String {
    match kind {
        ErrorKind::ExpiredSignature => "the token has expired".into(),
        ErrorKind::ImmatureSignature => "the token is not valid yet (nbf is in the future)".into(),
        ErrorKind::InvalidAudience => "the token is meant for another audience (aud)".into(),
        ErrorKind::InvalidIssuer => "the token's issuer (iss) is not accepted".into(),
        ErrorKind::InvalidSignature => "the token's signature does not verify".into(),
        ErrorKind::InvalidAlgorithm => "the token's algorithm is not accepted".into(),
        ErrorKind::MissingRequiredClaim(c) => format!("the token lacks the {c} claim"),
        ErrorKind::InvalidClaimFormat(c) => format!("the token's {c} claim is malformed"),
        _ => "the token is malformed".into(),
    }
}

impl TokenService {
    pub fn new(
        keys: Arc<KeyRing>,
        issuer: &str,
        audience: &str,
        leeway: u64,
        ttl: u64,
        external: &[ExternalIssuer],
    ) -> Result<TokenService, AuthzError> {
        Ok(TokenService {
            own: Issuer {
                name: issuer.to_owned(),
                audience: audience.to_owned(),
                algorithms: vec![Algorithm::EdDSA],
                leeway,
                keys: IssuerKeys::Own(keys.clone()),
                max_lifetime: None,
                jwks_refresh: std::time::Duration::ZERO,
            },
            external: external
                .iter()
                .map(Issuer::external)
                .collect::<Result<_, _>>()?,
            keys,
            ttl,
        })
    }

    pub fn keys(&self) -> &Arc<KeyRing> {
        &self.keys
    }

    /// The `iss` of the tokens this service issues.
    pub fn own_issuer(&self) -> &str {
        &self.own.name
    }

    /// A new access token for `user` in `session`; returns it and its expiry.
    pub fn issue(&self, user: Uuid, session: Uuid, now: u64) -> Result<(String, u64), AuthzError> {
        let keys = self.keys.current();
        let key = keys.current()?;
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(key.kid.clone());
        let exp = now + self.ttl;
        let claims = IssuedClaims {
            iss: &self.own.name,
            aud: &self.own.audience,
            sub: user.to_string(),
            sid: session.to_string(),
            iat: now,
            nbf: now,
            exp,
            jti: Uuid::new_v4().to_string(),
        };
        let token = encode(&header, &claims, &key.encoding)
            .map_err(|e| AuthzError::Internal(format!("cannot sign a token: {e}")))?;
        Ok((token, exp))
    }

    /// Verifies a token; a key id unknown to an issuer with a JWKS URL
    /// fetches its keys again first (rate limited), so a rotation at the
    /// identity provider is seen at the first token signed with the new key.
    pub async fn verify(&self, token: &str) -> Result<VerifiedClaims, AuthzError> {
        match self.verify_now(token) {
            Err(refused) => match self.remote_missing_kid(token) {
                Some(remote) if remote.fetch_for_unknown_kid().await => self.verify_now(token),
                _ => Err(refused),
            },
            verified => verified,
        }
    }

    /// The JWKS URL issuer of `token`, if it names a key id that issuer's
    /// keys lack.
    fn remote_missing_kid(&self, token: &str) -> Option<&Arc<RemoteJwks>> {
        let header = decode_header(token).ok()?;
        let iss = peek_issuer(token)?;
        self.external.iter().find_map(|issuer| match &issuer.keys {
            IssuerKeys::Remote(remote)
                if issuer.name == iss && !remote.knows(header.kid.as_deref()) =>
            {
                Some(remote)
            }
            _ => None,
        })
    }

    /// Each JWKS URL issuer's keys: fetched now (a failure is logged and
    /// its tokens refused until a fetch succeeds), then refreshed in the
    /// background for as long as this service lives.
    pub async fn start_jwks_refresh(&self) {
        for issuer in &self.external {
            if let IssuerKeys::Remote(remote) = &issuer.keys {
                let _ = remote.fetch().await;
                tokio::spawn(RemoteJwks::follow(
                    Arc::downgrade(remote),
                    issuer.jwks_refresh,
                ));
            }
        }
    }

    /// Verifies signature, algorithm, issuer, audience, expiry and not-before.
    pub fn verify_now(&self, token: &str) -> Result<VerifiedClaims, AuthzError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(unauthenticated(format!(
                "the token is {} bytes long; at most {MAX_TOKEN_BYTES} are accepted",
                token.len()
            )));
        }
        let header = decode_header(token).map_err(|e| {
            unauthenticated(format!(
                "the token is not a well-formed JWT: {}",
                describe(e.kind())
            ))
        })?;
        let peek: Peek = dangerous::insecure_decode_claims(token)
            .map_err(|_| unauthenticated("the token's payload is not readable JSON"))?;
        let iss = peek
            .iss
            .ok_or_else(|| unauthenticated("the token names no issuer (iss)"))?;
        let issuer = std::iter::once(&self.own)
            .chain(&self.external)
            .find(|i| i.name == iss)
            .ok_or_else(|| unauthenticated("tokens of this issuer are not accepted"))?;
        if !issuer.algorithms.contains(&header.alg) {
            return Err(unauthenticated(format!(
                "algorithm {:?} is not accepted for this issuer",
                header.alg
            )));
        }
        let key = issuer.key(header.kid.as_deref())?;
        let mut validation = Validation::new(header.alg);
        validation.algorithms = issuer.algorithms.clone();
        validation.leeway = issuer.leeway;
        validation.validate_nbf = true;
        validation.set_issuer(&[&issuer.name]);
        validation.set_audience(&[&issuer.audience]);
        let own = std::ptr::eq(issuer, &self.own);
        let required: &[&str] = match own {
            true => &["exp", "nbf", "iss", "aud", "sub"],
            false => &["exp", "iss", "aud", "sub"],
        };
        validation.set_required_spec_claims(required);
        let claims = decode::<VerifiedClaims>(token, &key, &validation)
            .map_err(|e| unauthenticated(describe(e.kind())))?
            .claims;
        if own && claims.sid.is_none() {
            return Err(unauthenticated("the token has no session (sid)"));
        }
        if let Some(max) = issuer.max_lifetime {
            let from = claims.iat.unwrap_or_else(crate::support::clock::now_unix);
            let lifetime = claims.exp.saturating_sub(from);
            if lifetime > max + issuer.leeway {
                return Err(unauthenticated(format!(
                    "the token lives {lifetime} s; this issuer's tokens may live at most {max} s \
                     (setting max_token_lifetime)"
                )));
            }
        }
        Ok(claims)
    }

    /// Whether the claims come from our own issuer (and so carry a session).
    pub fn is_own(&self, claims: &VerifiedClaims) -> bool {
        claims.iss == self.own.name
    }
}
