//! TLS for the coordinator's gRPC port (rustls, ring provider): a certificate chain and its
//! private key, both PEM files.
//!
//! The files are checked when the coordinator starts, not at the first handshake, so that a
//! mistake stops the run at once with the file named: missing or unreadable, not PEM (or no
//! certificate / key inside), a key that rustls cannot use, or a key that does not belong to the
//! certificate. Workers then verify the certificate against a CA (`evalfleet-worker --tls-ca`) or
//! the system's roots.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tonic::transport::{Identity, ServerTlsConfig};

/// A client that opens a TCP connection must finish its TLS handshake within this time, so
/// half-open handshakes cannot pile up.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The certificate and key files given on the command line (`--tls-cert`, `--tls-key`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificate chain, the server's own certificate first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of the first certificate.
    pub key: PathBuf,
}

/// Why the TLS files cannot be used. Every message names the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("TLS {what} {}: cannot read it: {source}", .path.display())]
    Read {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("TLS {what} {}: not a PEM file ({detail}); expected {expected}", .path.display())]
    NotPem {
        what: &'static str,
        path: PathBuf,
        detail: String,
        expected: &'static str,
    },
    #[error("TLS key {}: rustls cannot use it: {message}", .path.display())]
    BadKey { path: PathBuf, message: String },
    #[error(
        "TLS key {} does not match the certificate in {} (the key's public half differs from the certificate's)",
        .key.display(), .cert.display()
    )]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    #[error("TLS certificate {}: {message}", .path.display())]
    BadCertificate { path: PathBuf, message: String },
}

/// A checked server identity, ready for tonic's server.
#[derive(Debug, Clone)]
pub struct ServerTls {
    config: ServerTlsConfig,
}

impl ServerTls {
    /// Reads and checks `files` (see the module docs).
    pub fn load(files: &TlsFiles) -> Result<ServerTls, TlsError> {
        let cert_pem = read("certificate", &files.cert)?;
        let key_pem = read("key", &files.key)?;
        check_pair(&cert_pem, &key_pem, files)?;
        let identity = Identity::from_pem(cert_pem, key_pem);
        Ok(ServerTls {
            config: ServerTlsConfig::new()
                .identity(identity)
                .timeout(HANDSHAKE_TIMEOUT),
        })
    }

    /// The configuration for `tonic::transport::Server::tls_config`.
    pub fn config(&self) -> ServerTlsConfig {
        self.config.clone()
    }
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })
}

/// The certificates of a PEM chain (at least one), or why not.
pub fn parse_certificates(
    pem_bytes: &[u8],
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let not_pem = |detail: String| TlsError::NotPem {
        what: "certificate",
        path: path.to_path_buf(),
        detail,
        expected: "one or more -----BEGIN CERTIFICATE----- blocks",
    };
    let certs = CertificateDer::pem_slice_iter(pem_bytes)
        .collect::<Result<Vec<_>, pem::Error>>()
        .map_err(|e| not_pem(e.to_string()))?;
    if certs.is_empty() {
        return Err(not_pem("no CERTIFICATE block found".into()));
    }
    Ok(certs)
}

/// Checks that the certificate chain and the key parse and belong together.
fn check_pair(cert_pem: &[u8], key_pem: &[u8], files: &TlsFiles) -> Result<(), TlsError> {
    let certs = parse_certificates(cert_pem, &files.cert)?;
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| TlsError::NotPem {
        what: "key",
        path: files.key.clone(),
        detail: match e {
            pem::Error::NoItemsFound => "no PRIVATE KEY block found".to_string(),
            other => other.to_string(),
        },
        expected: "a -----BEGIN PRIVATE KEY----- (or RSA / EC PRIVATE KEY) block",
    })?;
    let provider = rustls::crypto::ring::default_provider();
    match rustls::sign::CertifiedKey::from_der(certs, key, &provider) {
        Ok(_) => Ok(()),
        Err(rustls::Error::InconsistentKeys(_)) => Err(TlsError::KeyMismatch {
            cert: files.cert.clone(),
            key: files.key.clone(),
        }),
        Err(rustls::Error::InvalidCertificate(e)) => Err(TlsError::BadCertificate {
            path: files.cert.clone(),
            message: format!("{e:?}"),
        }),
        Err(e) => Err(TlsError::BadKey {
            path: files.key.clone(),
            message: e.to_string(),
        }),
    }
}

/// Makes ring rustls' process-wide provider, once, so that rustls code that asks for the
/// default (tonic's server side does) finds one even if another crate enabled a second provider.
pub fn install_crypto_provider() {
    // Fails only if a provider is already installed, which is what we want either way.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(dir: &Path, cert: &str, key: &str) -> TlsFiles {
        let (c, k) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&c, cert).unwrap();
        std::fs::write(&k, key).unwrap();
        TlsFiles { cert: c, key: k }
    }

    fn self_signed() -> (String, String) {
        let c = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        (c.cert.pem(), c.signing_key.serialize_pem())
    }

    #[test]
    fn a_matching_pair_loads() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = self_signed();
        ServerTls::load(&files(dir.path(), &cert, &key)).unwrap();
    }

    #[test]
    fn a_missing_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let f = TlsFiles {
            cert: dir.path().join("nope.pem"),
            key: dir.path().join("key.pem"),
        };
        let err = ServerTls::load(&f).unwrap_err().to_string();
        assert!(
            err.contains("nope.pem") && err.contains("cannot read"),
            "{err}"
        );
    }

    #[test]
    fn a_file_that_is_not_pem_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let (_, key) = self_signed();
        let err = ServerTls::load(&files(dir.path(), "hello", &key))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("cert.pem") && err.contains("not a PEM file"),
            "{err}"
        );
        let (cert, _) = self_signed();
        let err = ServerTls::load(&files(dir.path(), &cert, &cert))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("key.pem") && err.contains("no PRIVATE KEY"),
            "{err}"
        );
    }

    #[test]
    fn a_key_of_another_certificate_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, _) = self_signed();
        let (_, other_key) = self_signed();
        let err = ServerTls::load(&files(dir.path(), &cert, &other_key))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("does not match the certificate") && err.contains("cert.pem"),
            "{err}"
        );
    }
}
