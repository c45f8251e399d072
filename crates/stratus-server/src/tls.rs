//! TLS settings: the certificate chain and private key named in the config, loaded into a
//! rustls server config at startup, so a missing file, a file with no PEM item in it or a
//! key that does not belong to the certificate stops the server with the reason before
//! it listens (and `stratus config check` reports the same).
//!
//! rustls with the `ring` provider: no C toolchain beyond `cc` (aws-lc-rs would need
//! cmake), TLS 1.2 and 1.3, no client certificates.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// A certificate chain and its private key, as PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain, leaf first (PEM `CERTIFICATE` blocks).
    pub cert: PathBuf,
    /// The leaf certificate's private key (PEM PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// Why a certificate and key could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The certificate file holds no certificate, or a malformed one.
    #[error("{path}: no usable PEM certificate ({reason})")]
    Certificate {
        /// The file.
        path: PathBuf,
        /// What the PEM parser said.
        reason: String,
    },
    /// The key file holds no private key, or a malformed one.
    #[error("{path}: no usable PEM private key ({reason})")]
    Key {
        /// The file.
        path: PathBuf,
        /// What the PEM parser said.
        reason: String,
    },
    /// rustls refused the pair (a key that does not match the certificate, an
    /// unsupported key type).
    #[error("certificate {cert} and key {key} do not go together: {source}")]
    Rejected {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// rustls's reason.
        source: rustls::Error,
    },
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

impl TlsFiles {
    /// Reads both files and builds the server config (the provider is `ring`).
    pub fn load(&self) -> Result<Arc<ServerConfig>, TlsError> {
        let cert_pem = read(&self.cert)?;
        let certificate = |reason: String| TlsError::Certificate {
            path: self.cert.clone(),
            reason,
        };
        let chain = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| certificate(e.to_string()))?;
        if chain.is_empty() {
            return Err(certificate("no CERTIFICATE block".into()));
        }
        let key = PrivateKeyDer::from_pem_slice(&read(&self.key)?).map_err(|e| TlsError::Key {
            path: self.key.clone(),
            reason: e.to_string(),
        })?;
        let rejected = |source| TlsError::Rejected {
            cert: self.cert.clone(),
            key: self.key.clone(),
            source,
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(rejected)?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(rejected)?;
        Ok(Arc::new(config))
    }
}
