//! Opening a session the way libpq 15 does (`PQconnectdb`): each host in turn, its socket
//! opened here (so a refused port, an unknown host name or a missing socket file is known by
//! where it failed, never by a message's text), TLS negotiated here (`SSLRequest`, protocol
//! 3.0), then tokio-postgres's start-up and authentication over that stream, then the first
//! query. All of it for one host must finish within `connect_timeout`.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_postgres::config::Host;
use tokio_postgres::{Client, Config};

use super::{DbError, PgFailure};
use crate::libpq::{ConnParams, SslMode, TlsParams};

/// Why a connection could not be set up; each has its own likely cause and next step
/// (`diagnosis`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectCause {
    /// Nothing listens there (ECONNREFUSED), or a stale Unix socket file.
    Refused,
    /// The host name has no address (getaddrinfo(3) failed).
    NoSuchHost,
    /// No `.s.PGSQL.<port>` socket file in that directory.
    NoSocket,
    /// `connect_timeout` passed before the session was ready.
    TimedOut,
    /// The server closed the connection before the session was ready.
    Closed,
    /// `sslmode=require` or stricter, and the server answered that it does not do TLS.
    TlsRefused,
    /// The TLS handshake failed.
    TlsFailed,
    /// The server's certificate chain does not lead to a root of `sslrootcert`.
    CertificateUntrusted,
    /// `sslmode=verify-full`: the server's certificate does not name the host.
    HostNameMismatch,
    /// A root certificate, client certificate or key file cannot be used.
    TlsFiles,
    /// The server asked for a password and none was given anywhere.
    PasswordRequired,
    /// 28P01: the password (or the role under password authentication) was refused.
    PasswordWrong,
    /// 28000: no such role, or no pg_hba.conf entry lets it in.
    RoleRefused,
    /// 3D000: no such database.
    NoDatabase,
    /// 53300: max_connections reached.
    TooManyConnections,
    /// 57P03: the server is starting up, shutting down or in recovery.
    NotAccepting,
    /// Anything else the server or the network said.
    Other,
}

/// What one host's attempt was doing when it ended: named in a time-out.
#[derive(Debug, Clone, Copy)]
enum Phase {
    Opening,
    TlsRequest,
    Authentication,
    FirstQuery,
}

impl Phase {
    fn describe(self) -> &'static str {
        match self {
            Phase::Opening => "opening the connection",
            Phase::TlsRequest => "waiting for the server to answer the TLS request",
            Phase::Authentication => "waiting for the server during start-up and authentication",
            Phase::FirstQuery => "waiting for the answer to the first query",
        }
    }
}

/// One host as libpq tries it: the name (or socket directory), its address if given, its port.
struct Endpoint {
    host: Option<Host>,
    addr: Option<IpAddr>,
    port: u16,
}

impl Endpoint {
    fn describe(&self, config: &Config) -> String {
        let host = match (&self.host, self.addr) {
            (Some(Host::Tcp(name)), _) => name.clone(),
            (Some(Host::Unix(dir)), _) => dir.display().to_string(),
            (None, Some(addr)) => addr.to_string(),
            (None, None) => "localhost".into(),
        };
        let db = config.get_dbname().unwrap_or("");
        format!("{host}:{}/{db}", self.port)
    }
}

/// The end of one host's attempt.
enum Failed {
    Cause(ConnectCause, PgFailure),
    ReadOnly,
}

impl Failed {
    fn new(cause: ConnectCause, message: String) -> Failed {
        Failed::Cause(
            cause,
            PgFailure {
                sqlstate: None,
                message,
                detail: None,
                hint: None,
                position: None,
                connection_lost: false,
            },
        )
    }
}

/// Opens a session to the first host that accepts it and is writable (libpq's order; a
/// read-only server is skipped, so with several hosts only a primary is migrated), and drives
/// it on the current runtime.
///
/// Errors: [`DbError::Connect`] with the [`ConnectCause`] of the last host tried, or
/// [`DbError::ReadOnly`] when every reachable host was read-only.
pub async fn connect(params: &ConnParams) -> Result<Client, DbError> {
    let config = &params.driver;
    let mut last = match Failed::new(ConnectCause::Other, "no host to connect to".into()) {
        Failed::Cause(cause, failure) => DbError::Connect {
            target: super::describe_target(config),
            cause,
            failure,
        },
        Failed::ReadOnly => DbError::ReadOnly {
            target: super::describe_target(config),
        },
    };
    for endpoint in endpoints(config) {
        let target = endpoint.describe(config);
        match within_deadline(params, &endpoint).await {
            Ok(client) => return Ok(client),
            Err(Failed::ReadOnly) => last = DbError::ReadOnly { target },
            Err(Failed::Cause(cause, failure)) => {
                last = DbError::Connect {
                    target,
                    cause,
                    failure,
                }
            }
        }
    }
    Err(last)
}

/// Sends the cancel request for `token` (PostgreSQL's `CancelRequest`) on a new connection to
/// each host of `config`, the way the session was opened: a server whose session does not
/// carry that key ignores it. Failures are logged; there is nothing else to do about them.
pub(crate) async fn cancel(token: &tokio_postgres::CancelToken, params: &ConnParams) {
    let config = &params.driver;
    for endpoint in endpoints(config) {
        let mode = match endpoint_mode(params, &endpoint) {
            // `allow` opened the session without TLS unless the server refused that.
            SslMode::Allow => SslMode::Disable,
            mode => mode,
        };
        let sent = match open(&endpoint).await {
            Ok(socket) => match negotiate_tls(socket, mode, &endpoint, &params.tls).await {
                Ok(stream) => token
                    .cancel_query_raw(stream, tokio_postgres::NoTls)
                    .await
                    .map_err(|e| e.to_string()),
                Err(Failed::Cause(_, f)) => Err(f.message),
                Err(Failed::ReadOnly) => Ok(()),
            },
            Err(Failed::Cause(_, f)) => Err(f.message),
            Err(Failed::ReadOnly) => Ok(()),
        };
        if let Err(e) = sent {
            tracing::warn!(
                "cancel request to {} failed: {e}",
                endpoint.describe(config)
            );
        }
    }
}

/// libpq's host list: hosts (or addresses) with one port each.
fn endpoints(config: &Config) -> Vec<Endpoint> {
    let (hosts, addrs, ports) = (
        config.get_hosts(),
        config.get_hostaddrs(),
        config.get_ports(),
    );
    let count = hosts.len().max(addrs.len());
    (0..count)
        .map(|i| Endpoint {
            host: hosts.get(i).cloned(),
            addr: addrs.get(i).copied(),
            port: ports.get(i).or(ports.first()).copied().unwrap_or(5432),
        })
        .collect()
}

/// One host's whole set-up (socket, TLS, authentication, first query) within `connect_timeout`.
async fn within_deadline(params: &ConnParams, endpoint: &Endpoint) -> Result<Client, Failed> {
    let phase = Arc::new(Mutex::new(Phase::Opening));
    let attempt = session(params, endpoint, phase.clone());
    let Some(limit) = params.driver.get_connect_timeout().copied() else {
        return attempt.await;
    };
    match tokio::time::timeout(limit, attempt).await {
        Ok(result) => result,
        Err(_) => {
            let during = phase.lock().map_or(Phase::Opening, |p| *p).describe();
            Err(Failed::new(
                ConnectCause::TimedOut,
                format!(
                    "timed out after {} s (connect_timeout) {during}",
                    limit.as_secs()
                ),
            ))
        }
    }
}

fn set(phase: &Mutex<Phase>, now: Phase) {
    if let Ok(mut p) = phase.lock() {
        *p = now;
    }
}

/// A byte stream to the server: TCP, a Unix socket, or TLS over TCP.
trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// libpq never uses TLS on a Unix socket, whatever sslmode says.
fn endpoint_mode(params: &ConnParams, endpoint: &Endpoint) -> SslMode {
    match endpoint.host {
        Some(Host::Unix(_)) => SslMode::Disable,
        _ => params.tls.mode,
    }
}

/// libpq's two tries (`PQconnectPoll`): `allow` tries again with TLS when the server refuses
/// the session without it; `prefer` tries again without TLS when the handshake fails.
async fn session(
    params: &ConnParams,
    endpoint: &Endpoint,
    phase: Arc<Mutex<Phase>>,
) -> Result<Client, Failed> {
    use ConnectCause::{CertificateUntrusted, TlsFailed, TlsFiles};
    match endpoint_mode(params, endpoint) {
        SslMode::Allow => match attempt(params, endpoint, &phase, SslMode::Disable).await {
            // The server answered the session with an error (a password request counts).
            Err(Failed::Cause(cause, f))
                if f.sqlstate.is_some() || cause == ConnectCause::PasswordRequired =>
            {
                attempt(params, endpoint, &phase, SslMode::Require).await
            }
            other => other,
        },
        SslMode::Prefer => match attempt(params, endpoint, &phase, SslMode::Prefer).await {
            Err(Failed::Cause(CertificateUntrusted | TlsFailed | TlsFiles, _)) => {
                attempt(params, endpoint, &phase, SslMode::Disable).await
            }
            other => other,
        },
        mode => attempt(params, endpoint, &phase, mode).await,
    }
}

async fn attempt(
    params: &ConnParams,
    endpoint: &Endpoint,
    phase: &Mutex<Phase>,
    mode: SslMode,
) -> Result<Client, Failed> {
    set(phase, Phase::Opening);
    let socket = open(endpoint).await?;
    set(phase, Phase::TlsRequest);
    let stream = negotiate_tls(socket, mode, endpoint, &params.tls).await?;
    set(phase, Phase::Authentication);
    let password_given = params.driver.get_password().is_some();
    let mut start = params.driver.clone();
    start.ssl_mode(tokio_postgres::config::SslMode::Disable);
    if !password_given {
        // tokio-postgres refuses a password request without a password only with an untyped
        // "invalid configuration"; an empty one lets the server refuse it (28P01, or a closed
        // connection for md5), which we then read as "a password is required".
        start.password("");
    }
    let (client, connection) = start
        .connect_raw(stream, tokio_postgres::NoTls)
        .await
        .map_err(|e| classify(&e, password_given))?;
    tokio::spawn(connection);
    set(phase, Phase::FirstQuery);
    first_query(&client, password_given).await?;
    Ok(client)
}

/// Refuses a read-only server (a standby, or `default_transaction_read_only`). In the simple
/// query protocol: a named prepared statement would be left on a pooled server connection
/// that another client then gets (see `db::pooler`), before the pooler check could run.
async fn first_query(client: &Client, password_given: bool) -> Result<(), Failed> {
    let messages = client
        .simple_query("SHOW transaction_read_only")
        .await
        .map_err(|e| classify(&e, password_given))?;
    let setting = messages.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0),
        _ => None,
    });
    // With `any` too (libpq would take it): migrations must never go to a read-only server.
    match setting {
        Some("off") => Ok(()),
        Some("on") => Err(Failed::ReadOnly),
        other => Err(Failed::new(
            ConnectCause::Other,
            format!("checking whether the server is read-only: transaction_read_only is {other:?}, not on or off"),
        )),
    }
}

/// Opens the socket: the Unix socket file in a directory, or TCP to the address (given, or
/// each one the name resolves to, in order).
async fn open(endpoint: &Endpoint) -> Result<Box<dyn Stream>, Failed> {
    let port = endpoint.port;
    if let Some(Host::Unix(dir)) = &endpoint.host {
        let path: PathBuf = dir.join(format!(".s.PGSQL.{port}"));
        return match tokio::net::UnixStream::connect(&path).await {
            Ok(s) => Ok(Box::new(s)),
            Err(e) => Err(io_failure(&e, &path.display().to_string())),
        };
    }
    let addrs: Vec<SocketAddr> = match (endpoint.addr, &endpoint.host) {
        (Some(ip), _) => vec![SocketAddr::new(ip, port)],
        (None, Some(Host::Tcp(name))) => match tokio::net::lookup_host((name.as_str(), port)).await
        {
            Ok(found) => found.collect(),
            Err(e) => {
                return Err(Failed::new(
                    ConnectCause::NoSuchHost,
                    format!("cannot resolve the host name {name:?}: {e}"),
                ))
            }
        },
        _ => vec![SocketAddr::new(IpAddr::from([127, 0, 0, 1]), port)],
    };
    let mut last = Failed::new(
        ConnectCause::NoSuchHost,
        "the host name has no address".into(),
    );
    for addr in addrs {
        match tokio::net::TcpStream::connect(addr).await {
            Ok(s) => {
                let _ = s.set_nodelay(true);
                return Ok(Box::new(s));
            }
            Err(e) => last = io_failure(&e, &addr.to_string()),
        }
    }
    Err(last)
}

/// An I/O error while opening the socket, by its kind.
fn io_failure(e: &std::io::Error, at: &str) -> Failed {
    use std::io::ErrorKind;
    let cause = match e.kind() {
        ErrorKind::ConnectionRefused => ConnectCause::Refused,
        ErrorKind::NotFound => ConnectCause::NoSocket,
        ErrorKind::TimedOut => ConnectCause::TimedOut,
        _ => ConnectCause::Other,
    };
    let what = match cause {
        ConnectCause::Refused => "connection refused".to_string(),
        ConnectCause::NoSocket => "no such socket file".to_string(),
        _ => e.to_string(),
    };
    Failed::new(cause, format!("{what} ({at})"))
}

/// libpq's `SSLRequest`: length 8, code 80877103.
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

/// Asks for TLS unless `sslmode=disable`; the server answers one byte, `S` or `N`. `N`
/// ends the attempt from `require` on; `allow` and `prefer` go on without TLS.
async fn negotiate_tls(
    mut socket: Box<dyn Stream>,
    mode: SslMode,
    endpoint: &Endpoint,
    tls: &TlsParams,
) -> Result<Box<dyn Stream>, Failed> {
    if mode == SslMode::Disable {
        return Ok(socket);
    }
    let closed = |e: std::io::Error| {
        Failed::new(
            ConnectCause::Closed,
            format!("the server closed the connection before answering the TLS request ({e})"),
        )
    };
    socket.write_all(&SSL_REQUEST).await.map_err(closed)?;
    let answer = socket.read_u8().await.map_err(closed)?;
    match (answer, mode) {
        (b'S', _) => tls_handshake(socket, endpoint, tls).await,
        (b'N', SslMode::Allow | SslMode::Prefer) => Ok(socket),
        (b'N', _) => Err(Failed::new(
            ConnectCause::TlsRefused,
            format!("sslmode={}, but the server does not accept TLS connections (ssl = off)", mode.as_str()),
        )),
        (other, _) => Err(Failed::new(
            ConnectCause::Other,
            format!("the server answered the TLS request with {:?}, not a PostgreSQL answer: is this port a PostgreSQL server?", char::from(other)),
        )),
    }
}

/// The handshake, checking the server's certificate as `tls` says; the name checked (and sent
/// as SNI) is `host`, else `hostaddr`, as in libpq.
async fn tls_handshake(
    socket: Box<dyn Stream>,
    endpoint: &Endpoint,
    tls: &TlsParams,
) -> Result<Box<dyn Stream>, Failed> {
    let tls_failed = |message: String| Failed::new(ConnectCause::TlsFailed, message);
    let config = super::tls::client_config(tls)
        .map_err(|e| Failed::new(ConnectCause::TlsFiles, e.to_string()))?;
    let name = match (&endpoint.host, endpoint.addr) {
        (Some(Host::Tcp(name)), _) => name.clone(),
        (_, Some(ip)) => ip.to_string(),
        _ => "localhost".into(),
    };
    let server_name = rustls::pki_types::ServerName::try_from(name)
        .map_err(|e| tls_failed(format!("the host name cannot be used for TLS: {e}")))?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    match connector.connect(server_name, socket).await {
        Ok(stream) => Ok(Box::new(stream)),
        Err(e) => {
            let (cause, message) = super::tls::handshake_failure(&e, tls);
            Err(Failed::new(cause, message))
        }
    }
}

/// A tokio-postgres error during start-up or the first query, by its SQLSTATE (PostgreSQL 15,
/// Appendix A) or its kind (closed, I/O).
fn classify(e: &tokio_postgres::Error, password_given: bool) -> Failed {
    let failure = PgFailure::from_error(e);
    let cause = match failure.sqlstate.as_deref() {
        Some("28P01") if !password_given => ConnectCause::PasswordRequired,
        Some("28P01") => ConnectCause::PasswordWrong,
        Some("28000") => ConnectCause::RoleRefused,
        Some("3D000") => ConnectCause::NoDatabase,
        Some("53300") => ConnectCause::TooManyConnections,
        Some("57P03") => ConnectCause::NotAccepting,
        Some(_) => ConnectCause::Other,
        None if e.is_closed() || io_kind(e).is_some_and(is_closed_kind) => ConnectCause::Closed,
        None => ConnectCause::Other,
    };
    match cause {
        ConnectCause::PasswordRequired => Failed::new(cause, "the server asks for a password and none was given (not in database_url, PGPASSWORD, the password file, or database_password_file)".into()),
        ConnectCause::Closed if !password_given => Failed::new(cause, "the server closed the connection during start-up; no password was given, and a server using md5 or password authentication closes it so".into()),
        ConnectCause::Closed => Failed::new(cause, "the server closed the connection during start-up".into()),
        _ => Failed::Cause(cause, failure),
    }
}

fn io_kind(e: &tokio_postgres::Error) -> Option<std::io::ErrorKind> {
    std::error::Error::source(e)
        .and_then(|s| s.downcast_ref::<std::io::Error>())
        .map(std::io::Error::kind)
}

fn is_closed_kind(kind: std::io::ErrorKind) -> bool {
    use std::io::ErrorKind;
    matches!(
        kind,
        ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset | ErrorKind::BrokenPipe
    )
}
