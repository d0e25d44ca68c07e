//! TLS for the connection as libpq does it (PostgreSQL 16, "SSL Support", and libpq's
//! `initialize_SSL`), with rustls (ring): which roots the server's certificate must lead to,
//! when its host name is checked, the client certificate and its key, and why a handshake
//! failed (from rustls's error values, never their text).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};

use super::ConnectCause;
use crate::libpq::{RootCert, SslMode, TlsParams};

/// A TLS file that cannot be used (libpq's checks and, where libpq has one, its wording).
/// Shows paths and modes, never a key's content.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TlsFileError {
    #[error("root certificate file \"{}\" does not exist, and sslmode={} verifies the server's certificate: provide the file, use the system's trusted roots with sslrootcert=system, or change sslmode to disable server certificate verification", path.display(), mode.as_str())]
    NoRootCert { path: PathBuf, mode: SslMode },
    #[error("no home directory to find the root certificate file ~/.postgresql/root.crt, and sslmode={} verifies the server's certificate: give sslrootcert", mode.as_str())]
    NoHome { mode: SslMode },
    #[error("sslrootcert=system: no system certificate bundle found where OpenSSL looks (SSL_CERT_FILE names another)")]
    NoSystemRoots,
    #[error("cannot read the {what} \"{}\": {source}", path.display())]
    Unreadable {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the {what} \"{}\" holds no usable PEM certificate (-----BEGIN CERTIFICATE-----)", path.display())]
    NoCertificate { what: &'static str, path: PathBuf },
    #[error("certificate present, but not private key file \"{}\" (sslcert \"{}\"; give sslkey)", key.display(), cert.display())]
    NoKey { cert: PathBuf, key: PathBuf },
    #[error("private key file \"{}\" is not a regular file", path.display())]
    KeyNotFile { path: PathBuf },
    #[error("private key file \"{}\" has group or world access (mode {mode:04o}); file must have permissions u=rw (0600) or less if owned by the current user, or permissions u=rw,g=r (0640) or less if owned by root", path.display())]
    KeyAccess { path: PathBuf, mode: u32 },
    #[error("private key file \"{}\" holds no unencrypted PEM private key (PKCS#8, PKCS#1 or SEC1; an encrypted key needs sslpassword, which vamsa-migrate does not support)", path.display())]
    NoKeyInFile { path: PathBuf },
    #[error("the client certificate \"{}\" and its key \"{}\" cannot be used: {reason}", cert.display(), key.display())]
    BadClientCert {
        cert: PathBuf,
        key: PathBuf,
        reason: rustls::Error,
    },
    #[error("cannot set up TLS: {0}")]
    Setup(String),
}

/// The system's CA bundle for `sslrootcert=system`: where OpenSSL (hence libpq 16's
/// `SSL_CTX_set_default_verify_paths`) looks, `SSL_CERT_FILE` first; on Debian
/// `/usr/lib/ssl/cert.pem`, a link to `/etc/ssl/certs/ca-certificates.crt`.
pub(crate) fn system_bundle() -> Option<PathBuf> {
    openssl_probe::probe().cert_file
}

/// The rustls client set-up for `tls`: the roots (if any) the server's certificate is checked
/// against, whether its host name is checked (`verify-full`), the client certificate.
///
/// Errors: [`TlsFileError`] for a file libpq would also refuse.
pub(super) fn client_config(tls: &TlsParams) -> Result<rustls::ClientConfig, TlsFileError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = match roots(tls)? {
        Some(store) => Some(
            WebPkiServerVerifier::builder_with_provider(Arc::new(store), provider.clone())
                .build()
                .map_err(|e| TlsFileError::Setup(e.to_string()))?,
        ),
        None => None,
    };
    let verifier = Verifier {
        chain,
        check_name: tls.mode == SslMode::VerifyFull,
        provider: provider.clone(),
    };
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsFileError::Setup(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier));
    match client_identity(tls)? {
        None => Ok(builder.with_no_client_auth()),
        Some((cert, key, chain, private)) => builder
            .with_client_auth_cert(chain, private)
            .map_err(|reason| TlsFileError::BadClientCert { cert, key, reason }),
    }
}

/// libpq's rule: the roots of `sslrootcert` (else `~/.postgresql/root.crt`) when that file
/// exists, whatever the mode (so `require` then checks the chain as `verify-ca` does); a
/// missing file is an error only under `verify-ca`/`verify-full`.
fn roots(tls: &TlsParams) -> Result<Option<rustls::RootCertStore>, TlsFileError> {
    const WHAT: &str = "root certificate file (sslrootcert)";
    let path = match &tls.root_cert {
        Some(RootCert::System) => system_bundle().ok_or(TlsFileError::NoSystemRoots)?,
        Some(RootCert::File(path)) if std::fs::metadata(path).is_ok() => path.clone(),
        Some(RootCert::File(path)) if tls.mode.verifies() => {
            return Err(TlsFileError::NoRootCert {
                path: path.clone(),
                mode: tls.mode,
            })
        }
        None if tls.mode.verifies() => return Err(TlsFileError::NoHome { mode: tls.mode }),
        _ => return Ok(None),
    };
    let mut store = rustls::RootCertStore::empty();
    let (added, _) = store.add_parsable_certificates(read_certs(&path, WHAT)?);
    if added == 0 {
        return Err(TlsFileError::NoCertificate { what: WHAT, path });
    }
    Ok(Some(store))
}

fn read_certs(
    path: &Path,
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TlsFileError> {
    let bytes = crate::smallfile::read(path).map_err(|source| TlsFileError::Unreadable {
        what,
        path: path.to_path_buf(),
        source,
    })?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&bytes)
        .filter_map(Result::ok)
        .collect();
    if certs.is_empty() {
        return Err(TlsFileError::NoCertificate {
            what,
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

/// The certificate and key paths with their contents.
type Identity = (
    PathBuf,
    PathBuf,
    Vec<CertificateDer<'static>>,
    PrivateKeyDer<'static>,
);

/// libpq: the client certificate is sent when its file exists (`sslcert`, else
/// `~/.postgresql/postgresql.crt`); then its key must exist and be private.
fn client_identity(tls: &TlsParams) -> Result<Option<Identity>, TlsFileError> {
    const WHAT: &str = "client certificate (sslcert)";
    let Some(cert) = &tls.cert else {
        return Ok(None);
    };
    if let Err(source) = std::fs::metadata(cert) {
        use std::io::ErrorKind::{NotADirectory, NotFound};
        return match source.kind() {
            NotFound | NotADirectory => Ok(None),
            _ => Err(TlsFileError::Unreadable {
                what: WHAT,
                path: cert.clone(),
                source,
            }),
        };
    }
    let chain = read_certs(cert, WHAT)?;
    let key = tls.key.clone().unwrap_or_default();
    check_key_file(cert, &key)?;
    let bytes = crate::smallfile::read(&key).map_err(|source| TlsFileError::Unreadable {
        what: "private key file (sslkey)",
        path: key.clone(),
        source,
    })?;
    let private = PrivateKeyDer::from_pem_slice(&bytes)
        .map_err(|_| TlsFileError::NoKeyInFile { path: key.clone() })?;
    Ok(Some((cert.clone(), key, chain, private)))
}

/// libpq 15's rule for the key file: a regular file; owned by us, no group or world access
/// (0600 or less); owned by root, at most group read (0640 or less).
fn check_key_file(cert: &Path, key: &Path) -> Result<(), TlsFileError> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(key).map_err(|_| TlsFileError::NoKey {
        cert: cert.to_path_buf(),
        key: key.to_path_buf(),
    })?;
    if !meta.is_file() {
        return Err(TlsFileError::KeyNotFile {
            path: key.to_path_buf(),
        });
    }
    let mode = meta.mode() & 0o7777;
    let ours = meta.uid() == rustix::process::geteuid().as_raw();
    let roots = meta.uid() == 0;
    if (ours && mode & 0o077 != 0) || (roots && mode & 0o037 != 0) {
        return Err(TlsFileError::KeyAccess {
            path: key.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

/// Why a handshake failed, from rustls's error inside the I/O error: the chain (against which
/// roots), the host name (and the names the certificate holds), or anything else.
pub(super) fn handshake_failure(e: &std::io::Error, tls: &TlsParams) -> (ConnectCause, String) {
    let inner = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>());
    let Some(rustls::Error::InvalidCertificate(cert)) = inner else {
        return match inner {
            Some(rustls::Error::AlertReceived(alert)) => (ConnectCause::TlsFailed, format!("the server ended the TLS handshake with the alert {alert:?} (it may require a client certificate it trusts: sslcert, sslkey)")),
            _ => (ConnectCause::TlsFailed, format!("the TLS handshake failed: {e}")),
        };
    };
    match cert {
        CertificateError::NotValidForNameContext { expected, presented } => (
            ConnectCause::HostNameMismatch,
            format!(
                "sslmode=verify-full: the host-name check failed: the server's certificate is not valid for {:?}; it holds {}",
                expected.to_str(),
                match presented.as_slice() {
                    [] => "no DNS or IP subject alternative name".to_string(),
                    names => names.join(", "),
                }
            ),
        ),
        CertificateError::NotValidForName => (
            ConnectCause::HostNameMismatch,
            "sslmode=verify-full: the host-name check failed: the server's certificate is not valid for that host name".into(),
        ),
        other => (
            ConnectCause::CertificateUntrusted,
            format!(
                "the server's certificate chain could not be verified against {} ({}): {}",
                roots_source(tls),
                why_checked(tls),
                chain_problem(other)
            ),
        ),
    }
}

fn roots_source(tls: &TlsParams) -> String {
    match &tls.root_cert {
        Some(RootCert::File(path)) => format!("the root certificates in {}", path.display()),
        _ => "the system's trusted roots".into(),
    }
}

fn why_checked(tls: &TlsParams) -> String {
    let mode = tls.mode;
    if tls.root_cert == Some(RootCert::System) {
        return format!("sslrootcert=system, sslmode={}", mode.as_str());
    }
    match mode {
        SslMode::VerifyCa | SslMode::VerifyFull => format!("sslmode={}", mode.as_str()),
        _ => format!(
            "sslmode={} checks the chain when a root certificate file exists, as libpq does",
            mode.as_str()
        ),
    }
}

fn chain_problem(e: &CertificateError) -> String {
    match e {
        CertificateError::UnknownIssuer => {
            "it was not issued by any of them (unknown issuer)".into()
        }
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
            "the certificate has expired".into()
        }
        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
            "the certificate is not valid yet".into()
        }
        CertificateError::BadSignature => "a signature in the chain is invalid".into(),
        other => format!("{other:?}"),
    }
}

/// Checks the chain when there are roots; the host name only under `verify-full` (webpki
/// checks it after the chain, so a name error means the chain was good). Without roots
/// (libpq's `require` with no root file) nothing is checked, but the handshake signatures
/// still prove that the server holds the certificate's key.
#[derive(Debug)]
struct Verifier {
    chain: Option<Arc<WebPkiServerVerifier>>,
    check_name: bool,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if !self.check_name => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
