//! Access tokens: issued as EdDSA JWTs with our keys, and verified for our
//! issuer or a configured external one (HS256 secret, or RS256/ES256 keys
//! from a JWKS file), each with its own algorithms, audience and leeway.
//! The issuer is read from the unverified payload only to pick the rules;
//! nothing from it is trusted before the signature and claims verify.

use std::{path::PathBuf, sync::Arc};

use jsonwebtoken::{
    Algorithm, DecodingKey, Header, Validation, dangerous, decode, decode_header, encode,
    errors::ErrorKind, jwk::JwkSet,
};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::keys::KeyRing;
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
    /// Accepted algorithms: HS256 (with `hs256_secret`), RS256 or ES256 (with `jwks_file`).
    pub algorithms: Vec<String>,
    #[serde(default = "default_leeway")]
    pub leeway: HumanDuration,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hs256_secret: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_file: Option<PathBuf>,
    /// The longest lifetime (`exp - iat`) accepted from this issuer; a
    /// token without `iat` may not expire later than this from now.
    #[serde(default = "default_max_lifetime")]
    pub max_token_lifetime: HumanDuration,
}

fn default_leeway() -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(30))
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
}

struct Issuer {
    name: String,
    audience: String,
    algorithms: Vec<Algorithm>,
    leeway: u64,
    keys: IssuerKeys,
    /// Seconds; `None` for our own tokens (we issue them).
    max_lifetime: Option<u64>,
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
        let keys = match (&config.hs256_secret, &config.jwks_file) {
            (Some(secret), None) if algorithms == [Algorithm::HS256] => {
                IssuerKeys::Secret(DecodingKey::from_secret(secret.as_bytes()))
            }
            (None, Some(path)) if !algorithms.contains(&Algorithm::HS256) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| bad(format!("{}: {e}", path.display())))?;
                IssuerKeys::Jwks(
                    serde_json::from_str(&text)
                        .map_err(|e| bad(format!("{} is not a JWKS: {e}", path.display())))?,
                )
            }
            _ => {
                return Err(bad(
                    "give hs256_secret with algorithms [\"HS256\"], or jwks_file with RS256/ES256"
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
            IssuerKeys::Jwks(set) => {
                let jwk = match kid {
                    Some(kid) => set.find(kid),
                    None if set.keys.len() == 1 => set.keys.first(),
                    None => None,
                }
                .ok_or_else(|| {
                    unauthenticated("the token's key id (kid) is not in the issuer's JWKS")
                })?;
                DecodingKey::from_jwk(jwk)
                    .map_err(|e| AuthzError::Internal(format!("issuer key: {e}")))
            }
        }
    }
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

    /// Verifies signature, algorithm, issuer, audience, expiry and not-before.
    pub fn verify(&self, token: &str) -> Result<VerifiedClaims, AuthzError> {
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
        #[derive(Deserialize)]
        struct Peek {
            iss: Option<String>,
        }
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
