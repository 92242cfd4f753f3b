//! TLS on the gRPC port (rustls with ring; TLS 1.2 and 1.3; h2 by ALPN),
//! optionally mutual: with a client CA every client must present a
//! certificate from it, and its identity (a SPIFFE id in a URI SAN, else the
//! first DNS SAN, else the subject's common name) names the caller. The
//! certificate, key and client CA are read again when their files change
//! (cert-manager rotates them): new handshakes use the new ones, open
//! connections are not dropped.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
    time::SystemTime,
};

use tokio_rustls::{
    TlsAcceptor,
    rustls::{
        RootCertStore, ServerConfig,
        crypto::ring,
        pki_types::{CertificateDer, PrivateKeyDer},
        server::WebPkiClientVerifier,
        version::{TLS12, TLS13},
    },
};

use crate::error::AuthzError;

/// Where the port's certificate, key and (for mutual TLS) client CA are.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
}

impl TlsFiles {
    fn paths(&self) -> Vec<&Path> {
        let mut paths = vec![self.cert.as_path(), self.key.as_path()];
        paths.extend(self.client_ca.as_deref());
        paths
    }
}

fn bad(what: &Path, e: impl std::fmt::Display) -> AuthzError {
    AuthzError::invalid(format!("TLS file {}: {e}", what.display()))
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, AuthzError> {
    let text = std::fs::read(path).map_err(|e| bad(path, e))?;
    let certs = rustls_pemfile::certs(&mut text.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(path, e))?;
    if certs.is_empty() {
        return Err(bad(path, "no PEM certificate in it"));
    }
    Ok(certs)
}

fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, AuthzError> {
    let text = std::fs::read(path).map_err(|e| bad(path, e))?;
    rustls_pemfile::private_key(&mut text.as_slice())
        .map_err(|e| bad(path, e))?
        .ok_or_else(|| bad(path, "no PEM private key in it"))
}

/// Builds the server configuration from the files.
pub fn server_config(files: &TlsFiles) -> Result<Arc<ServerConfig>, AuthzError> {
    let provider = Arc::new(ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&TLS12, &TLS13])
        .map_err(|e| AuthzError::invalid(format!("TLS: {e}")))?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for cert in certificates(ca)? {
                roots.add(cert).map_err(|e| bad(ca, e))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| bad(ca, e))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(certificates(&files.cert)?, private_key(&files.key)?)
        .map_err(|e| AuthzError::invalid(format!("TLS certificate and key: {e}")))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// The TLS configuration in force, reloaded when its files change.
pub struct TlsServer {
    files: TlsFiles,
    config: RwLock<Arc<ServerConfig>>,
    seen: RwLock<Vec<Option<SystemTime>>>,
}

fn modified(paths: &[&Path]) -> Vec<Option<SystemTime>> {
    paths
        .iter()
        .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .collect()
}

impl TlsServer {
    pub fn load(files: TlsFiles) -> Result<Arc<TlsServer>, AuthzError> {
        let config = server_config(&files)?;
        let seen = modified(&files.paths());
        Ok(Arc::new(TlsServer {
            files,
            config: RwLock::new(config),
            seen: RwLock::new(seen),
        }))
    }

    /// Whether clients must present a certificate.
    pub fn mutual(&self) -> bool {
        self.files.client_ca.is_some()
    }

    /// An acceptor with the configuration in force now.
    pub fn acceptor(&self) -> TlsAcceptor {
        let config = self
            .config
            .read()
            .map(|c| c.clone())
            .unwrap_or_else(|p| p.into_inner().clone());
        TlsAcceptor::from(config)
    }

    /// Reads the files again if one changed; a broken set keeps the old one.
    pub fn reload_if_changed(&self) {
        let stamps = modified(&self.files.paths());
        if self.seen.read().is_ok_and(|seen| *seen == stamps) {
            return;
        }
        match server_config(&self.files) {
            Ok(config) => {
                if let Ok(mut current) = self.config.write() {
                    *current = config;
                }
                tracing::info!("TLS certificate reloaded");
            }
            Err(e) => {
                tracing::error!("TLS files changed but cannot be used (the old ones stay): {e}")
            }
        }
        if let Ok(mut seen) = self.seen.write() {
            *seen = stamps;
        }
    }
}

/// The identity a client certificate names: a SPIFFE id (URI SAN) first,
/// else the first DNS SAN, else the subject's common name.
pub fn peer_identity(cert: &CertificateDer<'_>) -> Option<String> {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let (_, parsed) = X509Certificate::from_der(cert.as_ref()).ok()?;
    let names: Vec<GeneralName<'_>> = parsed
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| san.value.general_names.clone())
        .unwrap_or_default();
    let uri = names.iter().find_map(|n| match n {
        GeneralName::URI(uri) => Some((*uri).to_owned()),
        _ => None,
    });
    let dns = || {
        names.iter().find_map(|n| match n {
            GeneralName::DNSName(dns) => Some((*dns).to_owned()),
            _ => None,
        })
    };
    let common_name = || {
        parsed
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_owned)
    };
    uri.or_else(dns).or_else(common_name)
}
