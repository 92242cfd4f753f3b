//! Signed media URLs: an HMAC-SHA256 over the media id, the object key, the
//! expiry, an optional client IP and the key id. Verifying one needs only
//! the keys in memory, never the database. Several keys may be configured
//! for rotation: the signing key signs, every listed key verifies, so an
//! old key keeps working until it is removed from the list.

use std::{net::IpAddr, time::Duration};

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use uuid::Uuid;

use crate::support::{duration::HumanDuration, percent::percent_decode};

/// Shortest secret accepted (bytes): a MAC key shorter than the hash's
/// output weakens it.
const MIN_SECRET_BYTES: usize = 32;

/// `[media_urls]` in the TOML file.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MediaUrlConfig {
    /// Where media objects are served; URLs are `{base_url}/{object key}?…`.
    pub base_url: String,
    /// How long a URL stays valid.
    pub lifetime: HumanDuration,
    /// Bind each URL to the client IP of the request that earned it.
    pub bind_ip: bool,
    /// The key id that signs; the last key when unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signing_key: Option<String>,
    pub keys: Vec<UrlKey>,
}

impl Default for MediaUrlConfig {
    fn default() -> Self {
        MediaUrlConfig {
            base_url: "https://media.velro.local".to_owned(),
            lifetime: HumanDuration(Duration::from_secs(300)),
            bind_ip: false,
            signing_key: None,
            keys: Vec::new(),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UrlKey {
    pub id: String,
    /// At least 32 bytes; keep it out of version control.
    pub secret: String,
}

/// A URL issued for an allowed read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedUrl {
    pub url: String,
    pub expires_at: i64,
    pub key_id: String,
}

/// Why a presented URL was refused; each has its own reason code.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rejection {
    Malformed(String),
    UnknownKey(String),
    BadSignature,
    Expired { expired_at: i64 },
    IpMismatch,
}

impl Rejection {
    pub fn reason(&self) -> &'static str {
        match self {
            Rejection::Malformed(_) => "SIGNED_URL_MALFORMED",
            Rejection::UnknownKey(_) => "SIGNED_URL_UNKNOWN_KEY",
            Rejection::BadSignature => "SIGNED_URL_BAD_SIGNATURE",
            Rejection::Expired { .. } => "SIGNED_URL_EXPIRED",
            Rejection::IpMismatch => "SIGNED_URL_IP_MISMATCH",
        }
    }

    pub fn message(&self) -> String {
        match self {
            Rejection::Malformed(why) => format!("the signed URL is malformed: {why}"),
            Rejection::UnknownKey(kid) => {
                format!("the signed URL names key {kid:?}, which is not (or no longer) configured")
            }
            Rejection::BadSignature => {
                "the signed URL's signature does not match its contents (tampered or forged)"
                    .to_owned()
            }
            Rejection::Expired { expired_at } => {
                format!("the signed URL expired at {expired_at} (unix seconds); ask for a new one")
            }
            Rejection::IpMismatch => {
                "the signed URL is bound to another client IP than this request's".to_owned()
            }
        }
    }
}

/// What a valid URL grants: a read of this media object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified {
    pub media_id: Uuid,
    pub object_key: String,
    pub expires_at: i64,
}

/// The keys and settings, built once at start-up.
pub struct UrlSigner {
    base_url: String,
    lifetime: Duration,
    bind_ip: bool,
    keys: Vec<(String, Vec<u8>)>,
    signing: usize,
}

impl UrlSigner {
    /// Checks the configuration; with no keys, a random key for this
    /// process (URLs then verify only here and until restart).
    pub fn new(config: &MediaUrlConfig) -> Result<UrlSigner, String> {
        let mut keys = Vec::new();
        for key in &config.keys {
            let id_ok = !key.id.is_empty()
                && key.id.len() <= 64
                && key
                    .id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
            if !id_ok {
                return Err(format!(
                    "media_urls key id {:?}: use 1-64 letters, digits, '-', '_' or '.'",
                    key.id
                ));
            }
            if key.secret.len() < MIN_SECRET_BYTES {
                return Err(format!(
                    "media_urls key {:?}: the secret needs at least {MIN_SECRET_BYTES} bytes",
                    key.id
                ));
            }
            if keys.iter().any(|(id, _)| id == &key.id) {
                return Err(format!("media_urls key id {:?} is listed twice", key.id));
            }
            keys.push((key.id.clone(), key.secret.as_bytes().to_vec()));
        }
        if keys.is_empty() {
            tracing::warn!(
                "no [media_urls] keys configured: signing media URLs with a throw-away key \
                 (they verify only on this replica until it restarts)"
            );
            keys.push(("ephemeral".to_owned(), rand::random::<[u8; 32]>().to_vec()));
        }
        let signing = match &config.signing_key {
            None => keys.len() - 1,
            Some(id) => keys.iter().position(|(k, _)| k == id).ok_or_else(|| {
                format!("media_urls.signing_key {id:?} is not among media_urls.keys")
            })?,
        };
        let base_url = config.base_url.trim_end_matches('/').to_owned();
        if base_url.is_empty() || base_url.contains(['?', '#']) {
            return Err(format!(
                "media_urls.base_url {:?} must be a non-empty URL prefix without '?' or '#'",
                config.base_url
            ));
        }
        Ok(UrlSigner {
            base_url,
            lifetime: config.lifetime.0,
            bind_ip: config.bind_ip,
            keys,
            signing,
        })
    }

    /// Whether URLs are bound to the client IP when one is known.
    pub fn binds_ip(&self) -> bool {
        self.bind_ip
    }

    /// A URL for `object_key` of `media_id`, valid from `now` for the
    /// configured lifetime (or `lifetime`), bound to `ip` when given.
    pub fn sign(
        &self,
        media_id: Uuid,
        object_key: &str,
        ip: Option<IpAddr>,
        now: i64,
        lifetime: Option<Duration>,
    ) -> SignedUrl {
        let lifetime = lifetime.unwrap_or(self.lifetime).as_secs() as i64;
        let expires_at = now.saturating_add(lifetime);
        let (kid, secret) = &self.keys[self.signing.min(self.keys.len() - 1)];
        let ip = ip.map(|ip| ip.to_string()).unwrap_or_default();
        let sig = mac(secret, media_id, object_key, expires_at, &ip, kid);
        let mut url = format!(
            "{}/{}?media={media_id}&exp={expires_at}&kid={kid}",
            self.base_url,
            percent_encode(object_key)
        );
        if !ip.is_empty() {
            url.push_str("&ip=");
            url.push_str(&percent_encode(&ip));
        }
        url.push_str("&sig=");
        url.push_str(&URL_SAFE_NO_PAD.encode(sig));
        SignedUrl {
            url,
            expires_at,
            key_id: kid.clone(),
        }
    }

    /// Checks a presented URL: shape, key id, signature, expiry (valid
    /// while `now < exp`) and IP binding, in that order.
    pub fn verify(
        &self,
        url: &str,
        client_ip: Option<IpAddr>,
        now: i64,
    ) -> Result<Verified, Rejection> {
        let malformed = |why: &str| Rejection::Malformed(why.to_owned());
        let rest = url
            .strip_prefix(self.base_url.as_str())
            .and_then(|r| r.strip_prefix('/'))
            .ok_or_else(|| malformed("it does not start with the configured media base URL"))?;
        let (path, query) = rest
            .split_once('?')
            .ok_or_else(|| malformed("it has no query (media, exp, kid, sig)"))?;
        let object_key =
            percent_decode(path, b"").map_err(|e| malformed(&format!("its path holds {}", e.0)))?;
        if object_key.is_empty() {
            return Err(malformed("it names no object"));
        }
        let params = Params::parse(query)?;
        let media_id =
            Uuid::parse_str(params.media).map_err(|_| malformed("media is not a UUID"))?;
        let expires_at: i64 = params
            .exp
            .parse()
            .map_err(|_| malformed("exp is not a number"))?;
        let sig = URL_SAFE_NO_PAD
            .decode(params.sig)
            .map_err(|_| malformed("sig is not base64url"))?;
        let ip = match params.ip {
            Some(ip) => percent_decode(ip, b"")
                .ok()
                .and_then(|ip| ip.parse::<IpAddr>().ok())
                .map(Some)
                .ok_or_else(|| malformed("ip is not an IP address"))?,
            None => None,
        };
        let (kid, secret) = self
            .keys
            .iter()
            .find(|(kid, _)| kid == params.kid)
            .ok_or_else(|| Rejection::UnknownKey(params.kid.to_owned()))?;
        let ip_text = ip.map(|ip| ip.to_string()).unwrap_or_default();
        let mut check = keyed(secret);
        feed(&mut check, media_id, &object_key, expires_at, &ip_text, kid);
        check
            .verify_slice(&sig)
            .map_err(|_| Rejection::BadSignature)?;
        if now >= expires_at {
            return Err(Rejection::Expired {
                expired_at: expires_at,
            });
        }
        if ip.is_some() && ip != client_ip {
            return Err(Rejection::IpMismatch);
        }
        Ok(Verified {
            media_id,
            object_key,
            expires_at,
        })
    }
}

/// The query of a signed URL: each parameter exactly once, nothing else.
struct Params<'a> {
    media: &'a str,
    exp: &'a str,
    kid: &'a str,
    ip: Option<&'a str>,
    sig: &'a str,
}

impl<'a> Params<'a> {
    fn parse(query: &'a str) -> Result<Params<'a>, Rejection> {
        let mut slots: [Option<&str>; 5] = [None; 5];
        const NAMES: [&str; 5] = ["media", "exp", "kid", "ip", "sig"];
        for pair in query.split('&') {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let slot = NAMES.iter().position(|n| *n == name).ok_or_else(|| {
                Rejection::Malformed(format!("unexpected query parameter {name:?}"))
            })?;
            if slots[slot].replace(value).is_some() {
                return Err(Rejection::Malformed(format!("{name} is given twice")));
            }
        }
        let need = |i: usize| {
            slots[i].ok_or_else(|| Rejection::Malformed(format!("{} is missing", NAMES[i])))
        };
        Ok(Params {
            media: need(0)?,
            exp: need(1)?,
            kid: need(2)?,
            ip: slots[3],
            sig: need(4)?,
        })
    }
}

fn keyed(secret: &[u8]) -> Hmac<Sha256> {
    // HMAC takes keys of any length; `new_from_slice` cannot fail for it.
    <Hmac<Sha256> as KeyInit>::new_from_slice(secret)
        .unwrap_or_else(|_| <Hmac<Sha256> as KeyInit>::new(&Default::default()))
}

/// The signed fields, length-prefixed so no two inputs read the same.
fn feed(mac: &mut Hmac<Sha256>, media: Uuid, object_key: &str, exp: i64, ip: &str, kid: &str) {
    mac.update(b"velro-media-url-v1");
    for field in [
        media.to_string().as_bytes(),
        object_key.as_bytes(),
        exp.to_string().as_bytes(),
        ip.as_bytes(),
        kid.as_bytes(),
    ] {
        mac.update(&(field.len() as u64).to_be_bytes());
        mac.update(field);
    }
}

fn mac(secret: &[u8], media: Uuid, object_key: &str, exp: i64, ip: &str, kid: &str) -> Vec<u8> {
    let mut m = keyed(secret);
    feed(&mut m, media, object_key, exp, ip, kid);
    m.finalize().into_bytes().to_vec()
}

/// Percent-encodes everything but unreserved characters and `/`.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
#[path = "signer_tests.rs"]
mod tests;
