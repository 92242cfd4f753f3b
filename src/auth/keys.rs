//! Ed25519 signing keys for access tokens, from PEM files: the last of
//! `signing_keys` signs, every key of `signing_keys` and `verify_keys`
//! verifies, and all are published as a JWKS. The files are read again
//! when they change (or on SIGHUP), so keys rotate without a restart:
//! add the new key everywhere as verify-only, then make it the signer,
//! then drop the old one a token lifetime later.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
    time::SystemTime,
};

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use ed25519_dalek::{
    SigningKey,
    pkcs8::{DecodePrivateKey, EncodePrivateKey, spki::der::pem::LineEnding},
};
use jsonwebtoken::{DecodingKey, EncodingKey};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::error::AuthzError;

/// One key: its id, and the forms jsonwebtoken wants.
pub struct KeyPair {
    pub kid: String,
    pub encoding: EncodingKey,
    pub decoding: DecodingKey,
    /// The public key, base64url (the JWK `x`).
    pub public_x: String,
}

impl KeyPair {
    fn from_signing_key(key: &SigningKey) -> Result<KeyPair, AuthzError> {
        let der = key
            .to_pkcs8_der()
            .map_err(|e| AuthzError::Internal(format!("cannot encode a signing key: {e}")))?;
        let public = key.verifying_key().to_bytes();
        // RFC 7638-style thumbprint, shortened: stable for the same key.
        let digest = Sha256::digest(public);
        Ok(KeyPair {
            kid: URL_SAFE_NO_PAD.encode(&digest[..12]),
            encoding: EncodingKey::from_ed_der(der.as_bytes()),
            decoding: DecodingKey::from_ed_der(&public),
            public_x: URL_SAFE_NO_PAD.encode(public),
        })
    }
}

/// The service's own keys: the verify-only ones, then the signing ones;
/// the last signs.
pub struct SigningKeys {
    keys: Vec<KeyPair>,
    /// True when no key file was configured and a throw-away key was made.
    pub ephemeral: bool,
}

fn random_key() -> SigningKey {
    let bytes: [u8; 32] = rand::random();
    SigningKey::from_bytes(&bytes)
}

/// A new key as a PKCS#8 PEM document (what `velro-authz keys generate` writes).
pub fn generate_pem() -> Result<String, AuthzError> {
    random_key()
        .to_pkcs8_pem(LineEnding::LF)
        .map(|pem| pem.to_string())
        .map_err(|e| AuthzError::Internal(format!("cannot encode a new key: {e}")))
}

fn load(path: &Path) -> Result<KeyPair, AuthzError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| AuthzError::invalid(format!("signing key {}: {e}", path.display())))?;
    let key = SigningKey::from_pkcs8_pem(&text).map_err(|e| {
        AuthzError::invalid(format!(
            "signing key {} is not an Ed25519 PKCS#8 PEM key ({e}); make one with `velro-authz keys generate`",
            path.display()
        ))
    })?;
    KeyPair::from_signing_key(&key)
}

impl SigningKeys {
    /// Loads the key files, or makes one throw-away key when none is named.
    pub fn load(signing: &[PathBuf], verify_only: &[PathBuf]) -> Result<SigningKeys, AuthzError> {
        if signing.is_empty() {
            if !verify_only.is_empty() {
                return Err(AuthzError::invalid(
                    "verify_keys needs signing_keys too: the last signing key signs",
                ));
            }
            return Ok(SigningKeys {
                keys: vec![KeyPair::from_signing_key(&random_key())?],
                ephemeral: true,
            });
        }
        // A verify-only file may be absent or empty: the slot where the
        // next key arrives, or where the previous one is dropped.
        let present = verify_only
            .iter()
            .filter(|p| std::fs::metadata(p).is_ok_and(|m| m.len() > 0));
        Ok(SigningKeys {
            keys: present
                .chain(signing)
                .map(|p| load(p))
                .collect::<Result<_, _>>()?,
            ephemeral: false,
        })
    }

    /// The key that signs new tokens.
    pub fn current(&self) -> Result<&KeyPair, AuthzError> {
        self.keys
            .last()
            .ok_or_else(|| AuthzError::Internal("no signing key".into()))
    }

    pub fn find(&self, kid: &str) -> Option<&KeyPair> {
        self.keys.iter().find(|k| k.kid == kid)
    }

    /// The public keys as a JSON Web Key Set.
    pub fn jwks(&self) -> Value {
        let keys: Vec<Value> = self
            .keys
            .iter()
            .map(|k| {
                json!({"kty": "OKP", "crv": "Ed25519", "x": k.public_x, "kid": k.kid,
                       "use": "sig", "alg": "EdDSA"})
            })
            .collect();
        json!({ "keys": keys })
    }
}

/// The keys in force, read again from their files when they change.
pub struct KeyRing {
    signing: Vec<PathBuf>,
    verify_only: Vec<PathBuf>,
    keys: RwLock<Arc<SigningKeys>>,
    /// The files' modification times when last read.
    seen: RwLock<Vec<Option<SystemTime>>>,
}

fn modified(paths: &[PathBuf]) -> Vec<Option<SystemTime>> {
    paths
        .iter()
        .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .collect()
}

impl KeyRing {
    pub fn load(signing: &[PathBuf], verify_only: &[PathBuf]) -> Result<KeyRing, AuthzError> {
        let keys = SigningKeys::load(signing, verify_only)?;
        let all: Vec<PathBuf> = verify_only.iter().chain(signing).cloned().collect();
        Ok(KeyRing {
            signing: signing.to_vec(),
            verify_only: verify_only.to_vec(),
            keys: RwLock::new(Arc::new(keys)),
            seen: RwLock::new(modified(&all)),
        })
    }

    /// The keys in force now.
    pub fn current(&self) -> Arc<SigningKeys> {
        self.keys
            .read()
            .map(|k| k.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    /// Reads the key files again; on any error the keys in force stay.
    pub fn reload(&self) -> Result<(), AuthzError> {
        if self.signing.is_empty() {
            return Ok(());
        }
        let all: Vec<PathBuf> = self
            .verify_only
            .iter()
            .chain(&self.signing)
            .cloned()
            .collect();
        let stamps = modified(&all);
        let keys = SigningKeys::load(&self.signing, &self.verify_only)?;
        let kids: Vec<String> = keys.keys.iter().map(|k| k.kid.clone()).collect();
        if let Ok(mut current) = self.keys.write() {
            *current = Arc::new(keys);
        }
        if let Ok(mut seen) = self.seen.write() {
            *seen = stamps;
        }
        tracing::info!(?kids, "signing keys loaded");
        Ok(())
    }

    /// Reloads when a key file changed since it was last read.
    pub fn reload_if_changed(&self) {
        let all: Vec<PathBuf> = self
            .verify_only
            .iter()
            .chain(&self.signing)
            .cloned()
            .collect();
        let changed = self
            .seen
            .read()
            .map_or(true, |seen| *seen != modified(&all));
        if changed && let Err(e) = self.reload() {
            tracing::error!("signing keys not reloaded (the old ones stay in force): {e}");
        }
    }
}
