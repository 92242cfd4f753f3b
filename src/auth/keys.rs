//! Ed25519 signing keys for access tokens: loaded once at start-up from PEM
//! files (the last one listed signs, all verify, so a new key is rolled in
//! by appending it), published as a JWKS.

use std::path::{Path, PathBuf};

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

/// The service's own keys, oldest first; the last signs.
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
    pub fn load(paths: &[PathBuf]) -> Result<SigningKeys, AuthzError> {
        if paths.is_empty() {
            return Ok(SigningKeys {
                keys: vec![KeyPair::from_signing_key(&random_key())?],
                ephemeral: true,
            });
        }
        Ok(SigningKeys {
            keys: paths.iter().map(|p| load(p)).collect::<Result<_, _>>()?,
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
