//! The TLS parameters as libpq reads them (PostgreSQL 16, "Parameter Key Words" and "SSL
//! Support"): `sslmode`, `sslrootcert` (a file, or `system`), `sslcert` and `sslkey`, with
//! libpq's defaults under `~/.postgresql/`. Only paths are resolved here; the files are read
//! when connecting (`db::tls`), as libpq reads them.

use std::path::{Path, PathBuf};

use super::{bad_value, ConnInfoError, Params};

/// libpq's `sslmode` (PostgreSQL 16, "SSL Support", Table 34.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Never TLS.
    Disable,
    /// Without TLS first; TLS if the server refuses that session.
    Allow,
    /// TLS first; without TLS if the server does not do TLS or the handshake fails.
    Prefer,
    /// TLS or nothing; the certificate is verified only when a root certificate file exists.
    Require,
    /// TLS, and the server's certificate chain must lead to a root of `sslrootcert`.
    VerifyCa,
    /// As `VerifyCa`, and the certificate must name the host (DNS or IP subject alternative
    /// names).
    VerifyFull,
}

impl SslMode {
    /// The value as libpq spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    /// `verify-ca` or `verify-full`: a missing root certificate file is an error.
    pub fn verifies(self) -> bool {
        matches!(self, SslMode::VerifyCa | SslMode::VerifyFull)
    }
}

/// Where the roots that the server's certificate must lead to come from (`sslrootcert`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootCert {
    /// A PEM file of CA certificates (`sslrootcert`, else `~/.postgresql/root.crt`).
    File(PathBuf),
    /// `sslrootcert=system` (libpq 16+): the operating system's trusted roots.
    System,
}

/// The TLS part of a connection's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsParams {
    pub mode: SslMode,
    /// `None` only when neither `sslrootcert` nor a home directory is known.
    pub root_cert: Option<RootCert>,
    /// `sslcert`, else `~/.postgresql/postgresql.crt`: sent when the file exists.
    pub cert: Option<PathBuf>,
    /// `sslkey`, else `~/.postgresql/postgresql.key`: the key of `cert`.
    pub key: Option<PathBuf>,
}

impl TlsParams {
    /// `sslmode=disable`, nothing else.
    pub fn disabled() -> TlsParams {
        TlsParams {
            mode: SslMode::Disable,
            root_cert: None,
            cert: None,
            key: None,
        }
    }
}

/// The TLS parameters from `params`; `home` gives libpq's defaults under `~/.postgresql/`.
///
/// Errors: [`ConnInfoError::BadValue`] for an unknown `sslmode`, or a mode weaker than
/// `verify-full` with `sslrootcert=system` (libpq 16's rule and wording).
pub(super) fn tls_params(params: &Params, home: Option<&Path>) -> Result<TlsParams, ConnInfoError> {
    let get = |name: &str| params.get(name).map(|(v, o)| (v.as_str(), o.as_str()));
    let dot = |file: &str| home.map(|h| h.join(".postgresql").join(file));
    let root_cert = match get("sslrootcert") {
        Some(("system", _)) => Some(RootCert::System),
        Some((path, _)) => Some(RootCert::File(PathBuf::from(path))),
        None => dot("root.crt").map(RootCert::File),
    };
    let system = root_cert == Some(RootCert::System);
    // libpq 16: with sslrootcert=system the default sslmode is verify-full.
    let (text, origin) = get("sslmode").unwrap_or(match system {
        true => ("verify-full", "libpq's default with sslrootcert=system"),
        false => ("prefer", "libpq's default"),
    });
    let mode = match text {
        "disable" => SslMode::Disable,
        "allow" => SslMode::Allow,
        "prefer" => SslMode::Prefer,
        "require" => SslMode::Require,
        "verify-ca" => SslMode::VerifyCa,
        "verify-full" => SslMode::VerifyFull,
        other => {
            return Err(bad_value(
                "sslmode",
                origin,
                format!(
                "{other:?} is not one of disable, allow, prefer, require, verify-ca, verify-full"
            ),
            ))
        }
    };
    if system && mode != SslMode::VerifyFull {
        return Err(bad_value("sslmode", origin, format!("weak sslmode {text:?} may not be used with sslrootcert=system (use \"verify-full\")")));
    }
    Ok(TlsParams {
        mode,
        root_cert,
        cert: get("sslcert")
            .map(|(p, _)| PathBuf::from(p))
            .or_else(|| dot("postgresql.crt")),
        key: get("sslkey")
            .map(|(p, _)| PathBuf::from(p))
            .or_else(|| dot("postgresql.key")),
    })
}
