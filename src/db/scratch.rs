//! The scratch databases of rehearsals (see `engine::rehearsal`) and of `verify --deep`: what
//! the role may do, and creating, finding and dropping them. A scratch database is named
//! `vamsa_rehearsal_<oid>_<16 hex digits>` (`vamsa_verify_...` for `verify`), `<oid>` being the
//! oid of the database it copies: a run holds that database's run lock while it rehearses
//! (`verify` its own lock, [`Purpose::lock_key`]), so any other scratch database of the same
//! purpose and oid is a leftover of a process that was killed (SIGKILL) and may be dropped.

use tokio_postgres::Client;

use super::{quote_ident, quote_literal, value, DbError, Tracking};
use crate::libpq::ConnParams;

/// Who makes a scratch database: each has its own names, so neither drops the other's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Purpose {
    /// A run's rehearsal, under the run lock.
    Rehearsal,
    /// `verify --deep`'s restore of the newest backup, under [`Purpose::lock_key`].
    Verify,
}

impl Purpose {
    fn word(self) -> &'static str {
        match self {
            Purpose::Rehearsal => "rehearsal",
            Purpose::Verify => "verify",
        }
    }

    /// The advisory-lock key held while a scratch database of this purpose may exist: the run
    /// lock's for a rehearsal; for `verify`, another key of the same tracking table, so that a
    /// verification never makes a run wait.
    pub(crate) fn lock_key(self, tracking: &Tracking) -> i64 {
        match self {
            Purpose::Rehearsal => tracking.lock_key(),
            Purpose::Verify => tracking.lock_key() ^ 0x7665_7269_6679,
        }
    }
}

/// What the rehearsal needs to know of the database it copies.
#[derive(Debug, Clone)]
pub(crate) struct Source {
    /// `pg_database.oid` of `current_database()`.
    pub(crate) oid: u32,
    /// `rolcreatedb OR rolsuper` of `current_user` (PostgreSQL 15, CREATE DATABASE).
    pub(crate) may_create: bool,
    /// `current_user`, for messages.
    pub(crate) role: String,
    /// The encoding, LC_COLLATE and LC_CTYPE the scratch database is created with.
    encoding: String,
    collate: String,
    ctype: String,
}

/// Reads [`Source`] for the connection of `client`.
pub(crate) async fn source(client: &Client) -> Result<Source, DbError> {
    const WHAT: &str = "reading the database's oid, encoding and the role's CREATEDB";
    let row = client
        .query_one(
            "SELECT d.oid::bigint, coalesce(r.rolcreatedb OR r.rolsuper, false), current_user::text, \
             pg_encoding_to_char(d.encoding)::text, d.datcollate::text, d.datctype::text \
             FROM pg_database d LEFT JOIN pg_roles r ON r.rolname = current_user \
             WHERE d.datname = current_database()",
            &[],
        )
        .await
        .map_err(DbError::query(WHAT))?;
    Ok(Source {
        oid: u32::try_from(value::<i64>(&row, 0, WHAT)?).unwrap_or(0),
        may_create: value(&row, 1, WHAT)?,
        role: value(&row, 2, WHAT)?,
        encoding: value(&row, 3, WHAT)?,
        collate: value(&row, 4, WHAT)?,
        ctype: value(&row, 5, WHAT)?,
    })
}

/// The name prefix of the scratch databases of `purpose` for the database `oid`.
pub(crate) fn prefix(purpose: Purpose, oid: u32) -> String {
    format!("vamsa_{}_{oid}_", purpose.word())
}

/// Creates an empty scratch database for `source` (from `template0`, with its encoding and
/// locale) under a name no other database has: 64 random bits, and on the unlikely
/// duplicate (42P04) another draw. Its name.
pub(crate) async fn create(
    client: &Client,
    source: &Source,
    purpose: Purpose,
) -> Result<String, DbError> {
    let mut attempt = 0;
    loop {
        let name = format!("{}{:016x}", prefix(purpose, source.oid), random_u64());
        let sql = format!(
            "CREATE DATABASE {} TEMPLATE template0 ENCODING {} LC_COLLATE {} LC_CTYPE {}",
            quote_ident(&name),
            quote_literal(&source.encoding),
            quote_literal(&source.collate),
            quote_literal(&source.ctype)
        );
        match client.batch_execute(&sql).await {
            Ok(()) => return Ok(name),
            Err(e)
                if e.code() == Some(&tokio_postgres::error::SqlState::DUPLICATE_DATABASE)
                    && attempt < 3 =>
            {
                attempt += 1;
            }
            Err(e) => return Err(DbError::query("creating a scratch database")(e)),
        }
    }
}

/// 64 bits from the kernel's random source (`getrandom(2)`); the time as a fallback (a
/// duplicate name is still refused by the server).
fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    match rustix::rand::getrandom(&mut bytes, rustix::rand::GetRandomFlags::empty()) {
        Ok(8) => u64::from_le_bytes(bytes),
        _ => {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
                ^ u64::from(std::process::id())
        }
    }
}

/// `DROP DATABASE IF EXISTS name WITH (FORCE)` (PostgreSQL 13 and later): also ends the
/// sessions still connected to it (a killed pg_restore's, our own being closed).
pub(crate) async fn drop(client: &Client, name: &str) -> Result<(), DbError> {
    client
        .batch_execute(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            quote_ident(name)
        ))
        .await
        .map_err(DbError::query("dropping a scratch database"))
}

/// Scratch databases of `purpose` for the database `oid` that exist now: under the purpose's
/// lock, leftovers.
pub(crate) async fn leftovers(
    client: &Client,
    purpose: Purpose,
    oid: u32,
) -> Result<Vec<String>, DbError> {
    const WHAT: &str = "listing scratch databases left by earlier processes";
    let rows = client
        .query(
            "SELECT datname::text FROM pg_database WHERE starts_with(datname, $1) ORDER BY 1",
            &[&prefix(purpose, oid)],
        )
        .await
        .map_err(DbError::query(WHAT))?;
    let mut names = Vec::with_capacity(rows.len());
    for row in &rows {
        names.push(value(row, 0, WHAT)?);
    }
    Ok(names)
}

/// Drops the scratch database when its user (a rehearsal, `verify --deep`) is dropped before it
/// could (the CLI drops a command on SIGINT/SIGTERM): from a thread of its own with its own connection, as a `Drop`
/// cannot await. Blocking the dropping thread that long is the price of never leaving a
/// copy of the data behind; the normal path drops it itself and disarms the guard.
pub(crate) struct Guard {
    pg: ConnParams,
    name: Option<String>,
}

impl Guard {
    pub(crate) fn new(pg: &ConnParams, name: &str) -> Guard {
        Guard {
            pg: pg.clone(),
            name: Some(name.to_string()),
        }
    }

    pub(crate) fn disarm(mut self) {
        self.name = None;
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let Some(name) = self.name.take() else {
            return;
        };
        let pg = self.pg.clone();
        let dropper = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            runtime.block_on(async {
                let client = super::connect(&pg).await.map_err(|e| e.to_string())?;
                drop(&client, &name).await.map_err(|e| e.to_string())
            })
        });
        match dropper.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!("{e}; the next run of its kind drops it"),
            Err(_) => tracing::warn!(
                "dropping the scratch database failed; the next run of its kind drops it"
            ),
        }
    }
}

/// Takes [`Purpose::lock_key`] for this session (`pg_try_advisory_lock`, PostgreSQL 15: held
/// until released or the session ends; writes nothing): whether it got it.
pub(crate) async fn try_lock(
    client: &Client,
    purpose: Purpose,
    tracking: &Tracking,
) -> Result<bool, DbError> {
    const WHAT: &str = "taking the scratch database's lock";
    let row = client
        .query_one(
            "SELECT pg_try_advisory_lock($1)",
            &[&purpose.lock_key(tracking)],
        )
        .await
        .map_err(DbError::query(WHAT))?;
    Ok(value(&row, 0, WHAT)?)
}

/// The rows of the tracking table `tracking` in the database `client` is connected to (a
/// restored copy), or `None` when it has no such table.
pub(crate) async fn tracking_rows(
    client: &Client,
    tracking: &Tracking,
) -> Result<Option<i64>, DbError> {
    const WHAT: &str = "reading the restored copy's tracking table";
    let qualified = tracking.qualified();
    let found = client
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&qualified])
        .await
        .map_err(DbError::query(WHAT))?;
    if !value::<bool>(&found, 0, WHAT)? {
        return Ok(None);
    }
    let count = client
        .query_one(&format!("SELECT count(*) FROM {qualified}"), &[])
        .await
        .map_err(DbError::query(WHAT))?;
    Ok(Some(value(&count, 0, WHAT)?))
}
