//! TLS for the broker connection: rustls with the ring provider (no OpenSSL), server
//! verification against a CA file or the system's roots, optional client certificate
//! (AWS IoT Core), optional ALPN.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::config::TlsConfig;
use crate::config::ConfigError;

fn invalid(key: &str, path: &Path, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_owned(),
        value: format!("{:?}", path.display().to_string()),
        reason: reason.into(),
    }
}

fn read_certs(key: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let bytes =
        std::fs::read(path).map_err(|e| invalid(key, path, format!("cannot read it: {e}")))?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<_, _>>()
        .map_err(|e| invalid(key, path, format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(invalid(key, path, "holds no PEM certificate"));
    }
    Ok(certs)
}

/// Builds the rustls client configuration from `[mqtt.tls]`.
pub fn client_config(cfg: &TlsConfig) -> Result<Arc<rustls::ClientConfig>, ConfigError> {
    let mut roots = rustls::RootCertStore::empty();
    match &cfg.ca_file {
        Some(path) => {
            for cert in read_certs("mqtt.tls.ca_file", path)? {
                roots.add(cert).map_err(|e| {
                    invalid(
                        "mqtt.tls.ca_file",
                        path,
                        format!("not a usable CA certificate: {e}"),
                    )
                })?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                return Err(ConfigError::Invalid {
                    key: "mqtt.tls.ca_file".into(),
                    value: "(not set)".into(),
                    reason: "the system has no CA certificates (install ca-certificates) and no ca_file is given".into(),
                });
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ConfigError::Invalid {
            key: "mqtt.tls".into(),
            value: "(set)".into(),
            reason: format!("TLS setup failed: {e}"),
        })?
        .with_root_certificates(roots);
    let mut config = match (&cfg.client_cert_file, &cfg.client_key_file) {
        (Some(cert_path), Some(key_path)) => {
            let chain = read_certs("mqtt.tls.client_cert_file", cert_path)?;
            let key_bytes = std::fs::read(key_path).map_err(|e| {
                invalid(
                    "mqtt.tls.client_key_file",
                    key_path,
                    format!("cannot read it: {e}"),
                )
            })?;
            let key = PrivateKeyDer::from_pem_slice(&key_bytes).map_err(|e| {
                invalid(
                    "mqtt.tls.client_key_file",
                    key_path,
                    format!("not a PEM private key: {e}"),
                )
            })?;
            builder.with_client_auth_cert(chain, key).map_err(|e| {
                invalid(
                    "mqtt.tls.client_key_file",
                    key_path,
                    format!("does not fit the client certificate: {e}"),
                )
            })?
        }
        (None, None) => builder.with_no_client_auth(),
        (Some(p), None) => {
            return Err(invalid(
                "mqtt.tls.client_cert_file",
                p,
                "needs mqtt.tls.client_key_file too",
            ))
        }
        (None, Some(p)) => {
            return Err(invalid(
                "mqtt.tls.client_key_file",
                p,
                "needs mqtt.tls.client_cert_file too",
            ))
        }
    };
    config.alpn_protocols = cfg.alpn.iter().map(|a| a.as_bytes().to_vec()).collect();
    Ok(Arc::new(config))
}
