//! Refusing a connection pooler that does not keep a session. The run lock is a session-level
//! advisory lock and each migration is a transaction of the session that holds it, so a run
//! needs one PostgreSQL session from start to end. PgBouncer (1.x, `pool_mode`) keeps it only
//! in `session` mode: in `transaction` and `statement` mode it hands the server connection to
//! other clients as soon as a transaction ends (PgBouncer, "Features": "Transaction pooling").
//!
//! Decided from behaviour, never from a message's text, before any named prepared statement
//! (which such a pool mixes up between clients, 42P05/26000) and before anything is changed:
//! - A session opened on PostgreSQL itself announces its own backend in BackendKeyData
//!   (protocol 3.0, "Start-up"): the cancel key's process id is `pg_backend_pid()`. A pooler
//!   announces a key of its own, because it must route cancel requests itself; only then is
//!   the second check needed.
//! - Through a pooler: after one autocommit statement on our connection, a second client asks
//!   for a backend. A pool that keeps sessions gives it another one; a transaction or
//!   statement pool gives it ours, which it has just taken back (PgBouncer reuses idle server
//!   connections last-in first-out unless `server_round_robin = 1`). Our next statement must
//!   then also run in the same backend as the first.

use tokio::io::AsyncReadExt;
use tokio_postgres::{Client, SimpleQueryMessage};

use super::{describe_target, DbError};
use crate::libpq::ConnParams;

/// One PostgreSQL backend: its process id and its server's start time (a process id is unique
/// only within one server at one time).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Backend {
    pid: i32,
    server_started: String,
}

/// What showed that the pooler does not keep our session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Evidence {
    /// Another client was served by our session's backend between two of our transactions.
    ServedAnother { pid: i32 },
    /// Our next transaction ran in another backend.
    Moved { from: i32, to: i32 },
}

impl std::fmt::Display for Evidence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Evidence::ServedAnother { pid } => write!(
                f,
                "between two transactions of this connection, its PostgreSQL backend (pid {pid}) served another connection"
            ),
            Evidence::Moved { from, to } => write!(
                f,
                "two transactions of this connection ran in two PostgreSQL backends (pid {from}, then pid {to})"
            ),
        }
    }
}

/// Opens a session as [`super::connect::connect`] does, then refuses it when `database_url`
/// leads to a pooler that does not keep it ([`DbError::SessionNotKept`]).
pub async fn connect(params: &ConnParams) -> Result<Client, DbError> {
    let client = super::connect::connect(params).await?;
    keeps_session(&client, params).await?;
    Ok(client)
}

/// Checks that the session of `client` stays one PostgreSQL session (see the module's rules).
/// Opens a second connection only when something other than PostgreSQL announced the session.
/// Errors: [`DbError::SessionNotKept`], or [`DbError::Query`] when the checks' queries fail.
async fn keeps_session(client: &Client, params: &ConnParams) -> Result<(), DbError> {
    let first = backend(client).await?;
    if announced_pid(client).await == Some(first.pid) {
        return Ok(());
    }
    let refuse = |evidence| DbError::SessionNotKept {
        target: describe_target(&params.driver),
        evidence,
    };
    match other_clients_backend(params).await {
        Some(other) if other == first => {
            return Err(refuse(Evidence::ServedAnother { pid: first.pid }))
        }
        _ => {}
    }
    let next = backend(client).await?;
    if next != first {
        return Err(refuse(Evidence::Moved {
            from: first.pid,
            to: next.pid,
        }));
    }
    Ok(())
}

/// The backend a second client gets, or `None` (logged) when it cannot connect: the pool may
/// be full; the check of our next transaction still applies.
async fn other_clients_backend(params: &ConnParams) -> Option<Backend> {
    let other = match super::connect::connect(params).await {
        Ok(other) => other,
        Err(e) => {
            tracing::warn!("checking that the connection pooler keeps sessions: {e}");
            return None;
        }
    };
    backend(&other).await.ok()
}

/// The backend that runs this autocommit statement (simple query protocol: no named
/// prepared statement is left behind on a pooled server connection).
async fn backend(client: &Client) -> Result<Backend, DbError> {
    const WHAT: &str = "checking that the connection keeps one PostgreSQL session";
    let messages = client
        .simple_query("SELECT pg_backend_pid(), pg_postmaster_start_time()")
        .await
        .map_err(DbError::query(WHAT))?;
    let row = messages.iter().find_map(|m| match m {
        SimpleQueryMessage::Row(row) => Some((row.get(0), row.get(1))),
        _ => None,
    });
    match row {
        Some((Some(pid), Some(started))) => match pid.parse() {
            Ok(pid) => Ok(Backend {
                pid,
                server_started: started.to_string(),
            }),
            Err(_) => Err(unreadable(WHAT)),
        },
        _ => Err(unreadable(WHAT)),
    }
}

fn unreadable(what: &'static str) -> DbError {
    DbError::Query {
        what,
        failure: super::PgFailure {
            sqlstate: None,
            message: "the server's answer has no backend process id".into(),
            detail: None,
            hint: None,
            position: None,
            connection_lost: false,
        },
    }
}

/// The process id in the cancel key announced at start-up (BackendKeyData), read from the
/// CancelRequest (protocol 3.0: length 16, code 80877102, process id, secret key) that
/// tokio-postgres writes into an in-memory stream. The token never negotiates TLS: the session
/// was started over a stream set up by [`super::connect`].
async fn announced_pid(client: &Client) -> Option<i32> {
    let (ours, theirs) = tokio::io::duplex(64);
    let token = client.cancel_token();
    let (sent, request) = tokio::join!(
        token.cancel_query_raw(theirs, tokio_postgres::NoTls),
        read_request(ours)
    );
    sent.ok()?;
    let request = request?;
    let code = i32::from_be_bytes(request[4..8].try_into().ok()?);
    if code != 80_877_102 {
        return None;
    }
    Some(i32::from_be_bytes(request[8..12].try_into().ok()?))
}

async fn read_request(mut stream: tokio::io::DuplexStream) -> Option<[u8; 16]> {
    let mut request = [0u8; 16];
    stream.read_exact(&mut request).await.ok()?;
    Some(request)
}
