//! The database side: connecting, Drizzle's tracking table, the advisory lock that keeps runs
//! from overlapping, and applying one migration atomically with its tracking row.

pub(crate) mod restore;
pub(crate) mod scratch;

use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio_postgres::types::{FromSql, Type};
use tokio_postgres::{Client, Row, SimpleQueryMessage};

pub(crate) use crate::config::describe_target;

mod connect;
pub(crate) mod history;
mod pooler;
pub(crate) mod preflight;
pub(crate) mod schema;
pub(crate) mod schema_record;
mod tls;
pub use crate::libpq::{ConnParams, TlsParams};
use crate::plan::AppliedRow;
use crate::source::{Migration, Statement};
pub use connect::ConnectCause;
pub use pooler::{connect, Evidence};
pub use preflight::PreflightError;
pub(crate) use tls::system_bundle;

/// Drizzle's tracking table, `"schema"."table"`.
#[derive(Debug, Clone)]
pub struct Tracking {
    pub schema: String,
    pub table: String,
}

impl Tracking {
    pub fn qualified(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.table))
    }

    /// A fixed advisory-lock key per tracking table, so runs against different tables (or
    /// different applications' tables) in one database never wait on each other.
    pub fn lock_key(&self) -> i64 {
        let digest = Sha256::digest(format!("vamsa-migrate\0{}\0{}", self.schema, self.table));
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(&digest[..8]);
        i64::from_be_bytes(bytes)
    }
}

pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// A PostgreSQL error reduced to what a person needs.
#[derive(Debug, Clone)]
pub struct PgFailure {
    pub sqlstate: Option<String>,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
    /// 1-based character position in the statement, when PostgreSQL gave one.
    pub position: Option<u32>,
    /// The connection broke: the server never confirmed anything after this point.
    pub connection_lost: bool,
}

impl PgFailure {
    pub fn from_error(e: &tokio_postgres::Error) -> PgFailure {
        match e.as_db_error() {
            Some(db) => PgFailure {
                sqlstate: Some(db.code().code().to_string()),
                message: db.message().to_string(),
                detail: db.detail().map(str::to_string),
                hint: db.hint().map(str::to_string),
                position: match db.position() {
                    Some(tokio_postgres::error::ErrorPosition::Original(p)) => Some(*p),
                    _ => None,
                },
                connection_lost: db.code().code().starts_with("08")
                    || db.code().code().starts_with("57P"),
            },
            None => PgFailure {
                sqlstate: None,
                message: e.to_string(),
                detail: None,
                hint: None,
                position: None,
                connection_lost: e.is_closed() || std::error::Error::source(e).is_some(),
            },
        }
    }
}

impl std::fmt::Display for PgFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.sqlstate {
            Some(code) => write!(f, "{} (SQLSTATE {code})", self.message)?,
            None => write!(f, "{}", self.message)?,
        }
        if let Some(detail) = &self.detail {
            write!(f, "\n  detail: {detail}")?;
        }
        if let Some(hint) = &self.hint {
            write!(f, "\n  hint from PostgreSQL: {hint}")?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("cannot connect to PostgreSQL at {target}: {failure}")]
    Connect {
        target: String,
        cause: ConnectCause,
        failure: PgFailure,
    },
    #[error("{what}: {failure}")]
    Query {
        what: &'static str,
        failure: PgFailure,
    },
    #[error("{target} is a read-only server (a standby?); migrations must run on the primary")]
    ReadOnly { target: String },
    /// `database_url` leads to a connection pooler that hands our PostgreSQL session to other
    /// clients between transactions (PgBouncer's `pool_mode = transaction` or `statement`).
    #[error("{target} is a connection pool that does not keep a session (PgBouncer's pool_mode = transaction or statement): {evidence}")]
    SessionNotKept { target: String, evidence: Evidence },
    #[error("another vamsa-migrate run held the migration lock for longer than lock_wait ({}){}", humantime::format_duration(Duration::from_secs(waited.as_secs().max(1))), holder.map(|p| format!(" (PostgreSQL backend pid {p})")).unwrap_or_default())]
    LockWait {
        waited: Duration,
        holder: Option<i32>,
    },
    #[error(transparent)]
    Value(#[from] ValueError),
    #[error(transparent)]
    Preflight(#[from] Box<PreflightError>),
    #[error(transparent)]
    TrackingRow(#[from] TrackingRowError),
}

impl DbError {
    fn query(what: &'static str) -> impl FnOnce(tokio_postgres::Error) -> DbError {
        move |e| DbError::Query {
            what,
            failure: PgFailure::from_error(&e),
        }
    }
}

/// A value answering one of our own queries did not convert (a server or driver we do not
/// know): a bug to report, not something the admin can fix.
#[derive(Debug, thiserror::Error)]
#[error("{what}: column {column} of the answer cannot be read: {source}")]
pub struct ValueError {
    what: &'static str,
    /// 0-based, in the query's select list.
    column: usize,
    source: tokio_postgres::Error,
}

/// Column `column` of a row answering our own query `what`, converted with a check.
fn value<'a, T: FromSql<'a>>(
    row: &'a Row,
    column: usize,
    what: &'static str,
) -> Result<T, ValueError> {
    row.try_get(column).map_err(|source| ValueError {
        what,
        column,
        source,
    })
}

/// A value in the tracking table that we cannot interpret: the table was made or edited by
/// hand or by another tool (Drizzle's own is `id serial, hash text NOT NULL, created_at
/// bigint`, as drizzle-orm 0.45's PostgreSQL migrator creates it). Nothing was changed when
/// this is returned.
#[derive(Debug, thiserror::Error)]
#[error("the tracking table {table}: {row}, column {column}: {problem}")]
pub struct TrackingRowError {
    /// `"schema"."table"`, as quoted in SQL.
    pub table: String,
    pub row: RowRef,
    /// `id`, `hash`, `created_at`, `applied_at` or `name`.
    pub column: &'static str,
    pub problem: ValueProblem,
}

/// Which row of the tracking table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowRef {
    Id(i64),
    /// 1-based position in `ORDER BY id`, when the id itself cannot be read.
    Position(usize),
}

impl std::fmt::Display for RowRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RowRef::Id(id) => write!(f, "row id {id}"),
            RowRef::Position(n) => write!(f, "row {n} in id order (its id cannot be read)"),
        }
    }
}

/// What is wrong with one value of the tracking table.
#[derive(Debug, thiserror::Error)]
pub enum ValueProblem {
    #[error("is NULL; {why}")]
    Null { why: &'static str },
    #[error("has the type {}; expected {expected}", crate::plan::printable(found))]
    Type {
        /// PostgreSQL's name of the column's type.
        found: String,
        expected: &'static str,
    },
    #[error("cannot be read: {source}")]
    Unreadable { source: tokio_postgres::Error },
}

impl TrackingRowError {
    /// The next step for the admin.
    pub(crate) fn next_step(&self) -> String {
        let fix = match self.problem {
            ValueProblem::Type { expected, .. } => format!(
                "Change column {} of {} to {expected}, the type Drizzle creates",
                self.column, self.table
            ),
            ValueProblem::Null { .. } | ValueProblem::Unreadable { .. } => format!(
                "Correct that value of {} by hand, or delete the row if its migration was never applied",
                self.table
            ),
        };
        format!("{fix}, then run again. Nothing was changed in the database.")
    }
}

/// The shape of the tracking table, as Drizzle 1.0 tells it (drizzle-orm 1.0.0-rc.5
/// `up-migrations/utils.js`): version 1 iff a column `name` exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableVersion {
    /// drizzle-orm 0.x: `id serial, hash text NOT NULL, created_at bigint` (ours adds
    /// `applied_at`).
    V0,
    /// drizzle-orm 1.0: also `name text, applied_at timestamptz DEFAULT now()`.
    V1,
}

/// The tracking table as read: its version and its rows in id order.
#[derive(Debug, Clone)]
pub struct TrackingTable {
    pub version: TableVersion,
    pub rows: Vec<AppliedRow>,
}

/// Reads the tracking rows in id order; `None` when the table does not exist yet. Read-only,
/// so a dry run or `status` never changes the database. A value we cannot interpret is a
/// [`TrackingRowError`] naming its row and column, never a panic.
pub async fn read_rows(
    client: &Client,
    tracking: &Tracking,
) -> Result<Option<TrackingTable>, DbError> {
    const LOOKING: &str = "looking for the tracking table";
    // Whether the table exists, whether it has the optional `applied_at` column (a table
    // Drizzle 0.x created does not), and whether it has Drizzle 1.0's `name`.
    let found = client
        .query_one(
            "SELECT to_regclass($1) IS NOT NULL, \
             EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass($1) \
               AND attname = 'applied_at' AND attnum > 0 AND NOT attisdropped), \
             EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass($1) \
               AND attname = 'name' AND attnum > 0 AND NOT attisdropped)",
            &[&tracking.qualified()],
        )
        .await
        .map_err(DbError::query(LOOKING))?;
    if !value::<bool>(&found, 0, LOOKING)? {
        return Ok(None);
    }
    let applied_at = if value::<bool>(&found, 1, LOOKING)? {
        "to_char(applied_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS')"
    } else {
        "NULL::text"
    };
    let (version, name) = if value::<bool>(&found, 2, LOOKING)? {
        (TableVersion::V1, "name")
    } else {
        (TableVersion::V0, "NULL::text")
    };
    let sql = format!(
        "SELECT id, hash, created_at, {applied_at}, {name} FROM {} ORDER BY id",
        tracking.qualified()
    );
    let rows = client
        .query(&sql, &[])
        .await
        .map_err(DbError::query("reading the tracking table"))?;
    let table = tracking.qualified();
    let rows = rows
        .iter()
        .enumerate()
        .map(|(i, row)| tracking_row(row, i + 1, &table))
        .collect::<Result<_, _>>()?;
    Ok(Some(TrackingTable { version, rows }))
}

/// One row of `SELECT id, hash, created_at, applied_at, name`, checked value by value. `id` may be
/// any integer type (Drizzle creates `serial`; hand-made tables vary), `created_at` an integer
/// or NULL (rows made by hand), `hash` any non-NULL text.
fn tracking_row(row: &Row, position: usize, table: &str) -> Result<AppliedRow, TrackingRowError> {
    let fail = |row, column, problem| TrackingRowError {
        table: table.to_string(),
        row,
        column,
        problem,
    };
    let at = RowRef::Position(position);
    let id = integer(row, 0, "integer (serial) or bigint")
        .and_then(|id| {
            id.ok_or(ValueProblem::Null {
                why: "every row needs an id",
            })
        })
        .map_err(|p| fail(at, "id", p))?;
    let at = RowRef::Id(id);
    let hash = text(row, 1)
        .and_then(|hash| {
            hash.ok_or(ValueProblem::Null {
                why: "every row needs the SHA-256 of its migration file",
            })
        })
        .map_err(|p| fail(at, "hash", p))?;
    Ok(AppliedRow {
        id,
        hash,
        created_at: integer(row, 2, "bigint").map_err(|p| fail(at, "created_at", p))?,
        applied_at: text(row, 3).map_err(|p| fail(at, "applied_at", p))?,
        name: text(row, 4).map_err(|p| fail(at, "name", p))?,
    })
}

/// An integer column of any width (smallint, integer, bigint), or NULL; `expected` names the
/// type to use instead of another one.
fn integer(row: &Row, column: usize, expected: &'static str) -> Result<Option<i64>, ValueProblem> {
    let read = match column_type(row, column) {
        Some(&Type::INT4) => row
            .try_get::<_, Option<i32>>(column)
            .map(|v| v.map(i64::from)),
        Some(&Type::INT2) => row
            .try_get::<_, Option<i16>>(column)
            .map(|v| v.map(i64::from)),
        Some(found) if *found != Type::INT8 => {
            return Err(ValueProblem::Type {
                found: found.name().to_string(),
                expected,
            })
        }
        // bigint, or no such column: `try_get` tells which.
        _ => row.try_get::<_, Option<i64>>(column),
    };
    read.map_err(|source| ValueProblem::Unreadable { source })
}

/// A text column (text, varchar, char, name), or NULL.
fn text(row: &Row, column: usize) -> Result<Option<String>, ValueProblem> {
    if let Some(found) = column_type(row, column).filter(|t| !<String as FromSql>::accepts(t)) {
        return Err(ValueProblem::Type {
            found: found.name().to_string(),
            expected: "text",
        });
    }
    row.try_get(column)
        .map_err(|source| ValueProblem::Unreadable { source })
}

fn column_type(row: &Row, column: usize) -> Option<&Type> {
    row.columns().get(column).map(|c| c.type_())
}

/// The database a connection is to, as a backup needs it.
#[derive(Debug, Clone)]
pub(crate) struct Database {
    /// `current_database()`.
    pub name: String,
    /// `pg_database_size(current_database())`, in bytes.
    pub bytes: u64,
    /// The server's major version: `server_version_num` / 10000 (PostgreSQL 10 and later).
    pub server_major: u32,
}

/// Reads [`Database`] for the connection of `client`.
pub(crate) async fn database(client: &Client) -> Result<Database, DbError> {
    const WHAT: &str = "measuring the database";
    let row = client
        .query_one(
            "SELECT current_database()::text, pg_database_size(current_database()), \
             current_setting('server_version_num')::int / 10000",
            &[],
        )
        .await
        .map_err(DbError::query(WHAT))?;
    Ok(Database {
        name: value(&row, 0, WHAT)?,
        bytes: u64::try_from(value::<i64>(&row, 1, WHAT)?).unwrap_or(0),
        server_major: u32::try_from(value::<i32>(&row, 2, WHAT)?).unwrap_or(0),
    })
}

/// Creates Drizzle's schema and table when missing, with the exact shape Drizzle creates: for
/// [`TableVersion::V1`] drizzle-orm 1.0.0-rc.5's DDL (`pg-core/async/session.js` l.152-160),
/// for `V0` 0.45's plus an `applied_at` column Drizzle ignores. Existence is checked first:
/// `CREATE SCHEMA IF NOT EXISTS` needs CREATE on the database even when the schema is there,
/// which an app role that only owns its schema lacks.
pub async fn ensure_table(
    client: &Client,
    tracking: &Tracking,
    version: TableVersion,
) -> Result<(), DbError> {
    const LOOKING: &str = "looking for the tracking table";
    let row = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1), to_regclass($2) IS NOT NULL",
            &[&tracking.schema, &tracking.qualified()],
        )
        .await
        .map_err(DbError::query(LOOKING))?;
    let schema_exists: bool = value(&row, 0, LOOKING)?;
    let table_exists: bool = value(&row, 1, LOOKING)?;
    if !schema_exists {
        client
            .batch_execute(&format!(
                "CREATE SCHEMA IF NOT EXISTS {}",
                quote_ident(&tracking.schema)
            ))
            .await
            .map_err(DbError::query("creating the tracking schema"))?;
    }
    let columns = match version {
        TableVersion::V0 => {
            "id SERIAL PRIMARY KEY, hash text NOT NULL, created_at bigint, \
             applied_at timestamptz DEFAULT now()"
        }
        TableVersion::V1 => {
            "id SERIAL PRIMARY KEY, hash text NOT NULL, created_at bigint, name text, \
             applied_at timestamp with time zone DEFAULT now()"
        }
    };
    if !table_exists {
        client
            .batch_execute(&format!(
                "CREATE TABLE IF NOT EXISTS {} ({columns})",
                tracking.qualified()
            ))
            .await
            .map_err(DbError::query("creating the tracking table"))?;
    }
    Ok(())
}

/// Upgrades a [`TableVersion::V0`] table as drizzle-orm 1.0.0-rc.5 does
/// (`up-migrations/pg.js` l.36-46), in one transaction: adds `name` and `applied_at` when
/// missing, then gives each row `(id, name)` its name and a NULL `applied_at`. The caller holds
/// the migration lock and has matched every row (`upgrade::names_for_rows`).
pub async fn upgrade_table(
    client: &Client,
    tracking: &Tracking,
    names: &[(i64, String)],
) -> Result<(), DbError> {
    const WHAT: &str = "upgrading the tracking table to Drizzle 1.0's shape";
    let table = tracking.qualified();
    let mut sql = format!(
        "BEGIN; ALTER TABLE {table} ADD COLUMN IF NOT EXISTS \"name\" text; \
         ALTER TABLE {table} ADD COLUMN IF NOT EXISTS \"applied_at\" timestamp with time zone DEFAULT now();"
    );
    for (id, name) in names {
        sql.push_str(&format!(
            " UPDATE {table} SET \"name\" = {}, \"applied_at\" = NULL WHERE \"id\" = {id};",
            quote_literal(name)
        ));
    }
    sql.push_str(" COMMIT");
    if let Err(e) = client.batch_execute(&sql).await {
        let _ = client.batch_execute("ROLLBACK").await;
        return Err(DbError::query(WHAT)(e));
    }
    Ok(())
}

/// The session-level advisory lock that serialises runs. Released when the connection closes,
/// so a killed process never leaves it behind.
///
/// A run that must wait tries again every [`LOCK_POLL`] with `pg_try_advisory_lock` and holds
/// no open statement between tries: a session blocked in `pg_advisory_lock` holds a snapshot,
/// and PostgreSQL 15's `CREATE INDEX CONCURRENTLY` in the run holding the lock waits for every
/// snapshot older than its own, until `deadlock_timeout` aborts the build (40P01) and leaves an
/// INVALID index. Gives up with [`DbError::LockWait`] after `wait`.
pub async fn acquire_lock(
    client: &Client,
    tracking: &Tracking,
    wait: Duration,
    mut on_wait: impl FnMut(Option<i32>),
) -> Result<(), DbError> {
    let key = tracking.lock_key();
    if try_lock(client, key).await? {
        return Ok(());
    }
    let holder = lock_holder(client, key).await;
    on_wait(holder);
    let started = Instant::now();
    loop {
        let left = wait.saturating_sub(started.elapsed());
        if left.is_zero() {
            return Err(DbError::LockWait {
                waited: started.elapsed(),
                holder,
            });
        }
        tokio::time::sleep(left.min(LOCK_POLL)).await;
        if try_lock(client, key).await? {
            return Ok(());
        }
    }
}

/// How often a waiting run tries the run lock again.
const LOCK_POLL: Duration = Duration::from_millis(200);

/// One `pg_try_advisory_lock`: whether this session now holds the run lock.
async fn try_lock(client: &Client, key: i64) -> Result<bool, DbError> {
    const TAKING: &str = "taking the migration lock";
    let row = client
        .query_one("SELECT pg_try_advisory_lock($1)", &[&key])
        .await
        .map_err(DbError::query(TAKING))?;
    Ok(value::<bool>(&row, 0, TAKING)?)
}

async fn lock_holder(client: &Client, key: i64) -> Option<i32> {
    // Advisory locks on a bigint key are stored as two 32-bit halves in pg_locks.
    client
        .query_opt(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted \
             AND classid = (($1::bigint >> 32) & 4294967295)::oid AND objid = ($1::bigint & 4294967295)::oid \
             AND objsubid = 1 LIMIT 1",
            &[&key],
        )
        .await
        .ok()
        .flatten()
        .and_then(|r| r.try_get(0).ok())
}

/// Whether this session still holds the run lock. A migration can release it behind our back
/// (`pg_advisory_unlock_all()`, or `pg_advisory_unlock` of our key), and session-level advisory
/// locks are released at once, whatever the transaction does (PostgreSQL 15, "Advisory Locks").
pub async fn holds_lock(client: &Client, tracking: &Tracking) -> Result<bool, DbError> {
    let what = "checking that the migration lock is still held";
    let row = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted \
             AND pid = pg_backend_pid() AND classid = (($1::bigint >> 32) & 4294967295)::oid \
             AND objid = ($1::bigint & 4294967295)::oid AND objsubid = 1)",
            &[&tracking.lock_key()],
        )
        .await
        .map_err(DbError::query(what))?;
    row.try_get(0).map_err(DbError::query(what))
}

/// Returns a reused session to the state of a new connection, so that nothing an earlier run
/// set (a migration's `SET search_path`, `SET ROLE`, `SET SESSION AUTHORIZATION`, other
/// settings, temporary tables, advisory locks, LISTEN) reaches the next run: `DISCARD ALL`
/// without `DEALLOCATE ALL`, which would drop the client library's prepared statements
/// (PostgreSQL 15, DISCARD). It also releases every advisory lock of the session, so call it
/// only between runs, never while a run holds its lock. `RESET ALL` returns each setting to
/// its value at connection start (role and database defaults, startup options); it leaves the
/// role and the session authorisation alone, hence the two statements before it. Errors:
/// [`DbError::Query`], for example when a migration left the session in a failed transaction;
/// the caller then opens a new connection.
pub async fn reset_session(client: &Client) -> Result<(), DbError> {
    client
        .batch_execute(
            "SET SESSION AUTHORIZATION DEFAULT; RESET ROLE; RESET ALL; CLOSE ALL; UNLISTEN *; \
             SELECT pg_advisory_unlock_all(); DISCARD PLANS; DISCARD TEMP; DISCARD SEQUENCES",
        )
        .await
        .map_err(DbError::query("resetting the session before the run"))
}

pub async fn release_lock(client: &Client, tracking: &Tracking) -> Result<(), DbError> {
    client
        .query_one("SELECT pg_advisory_unlock($1)", &[&tracking.lock_key()])
        .await
        .map_err(DbError::query("releasing the migration lock"))?;
    Ok(())
}

/// Records a new hash for an applied migration whose file was edited on purpose: the row
/// whose `id` (integer or bigint) is `row_id`.
pub async fn accept_edit(
    client: &Client,
    tracking: &Tracking,
    row_id: i64,
    hash: &str,
) -> Result<(), DbError> {
    client
        .execute(
            // `$2::bigint`: the id column may be integer or bigint (see `tracking_row`).
            &format!(
                "UPDATE {} SET hash = $1 WHERE id = $2::bigint",
                tracking.qualified()
            ),
            &[&hash, &row_id],
        )
        .await
        .map_err(DbError::query("recording the edited migration's new hash"))?;
    Ok(())
}

/// Timeouts applied to the statements of each migration.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub lock_timeout: Duration,
    pub statement_timeout: Option<Duration>,
}

impl Limits {
    fn set_sql(&self, scope: &str) -> String {
        let mut sql = format!(
            "SET {scope} lock_timeout = {}",
            self.lock_timeout.as_millis()
        );
        // Without a configured statement_timeout the server's (or role's) own setting applies:
        // `DEFAULT` is the value at connection start, never one an earlier migration of this
        // run set. A configured 0 is sent as 0: no limit (PostgreSQL 15).
        match self.statement_timeout {
            Some(t) => sql.push_str(&format!(
                "; SET {scope} statement_timeout = {}",
                t.as_millis()
            )),
            None => sql.push_str(&format!("; SET {scope} statement_timeout TO DEFAULT")),
        }
        sql
    }
}

/// The `statement_timeout` a session runs with and where it was set, as PostgreSQL 15's
/// `pg_settings` tells: for the report of a cancelled statement (57014).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimeoutInForce {
    /// As `SHOW statement_timeout` prints it (`1s`, `0`).
    pub value: String,
    /// `pg_settings.source`: `user` (ALTER ROLE ... SET), `database`, `database user`,
    /// `configuration file`, `client`, `default`, ...; or `vamsa-migrate` for our own key.
    pub source: String,
}

/// The session's `statement_timeout` outside any migration (our `SET LOCAL` gone): the
/// server's, role's or database's. `None` when it cannot be read.
pub(crate) async fn statement_timeout_in_force(client: &Client) -> Option<TimeoutInForce> {
    let row = client
        .query_opt(
            "SELECT current_setting('statement_timeout'), source::text FROM pg_settings \
             WHERE name = 'statement_timeout'",
            &[],
        )
        .await
        .ok()??;
    Some(TimeoutInForce {
        value: row.try_get(0).ok()?,
        source: row.try_get(1).ok()?,
    })
}

/// Where in a migration a failure happened.
#[derive(Debug, Clone)]
pub struct StatementFailure {
    /// 1-based statement number, or `None` when the failure was outside the statements
    /// (opening the transaction, writing the tracking row, COMMIT).
    pub statement: Option<usize>,
    pub failure: PgFailure,
    /// Statements that ran and stayed (only in a `no-transaction` migration).
    pub completed_outside_transaction: usize,
    /// The failure hit COMMIT itself: if the connection broke there, the server may have
    /// committed; the next run's plan tells.
    pub during_commit: bool,
    /// The migration ended our transaction itself (its own COMMIT, ROLLBACK, ...): `Some(true)`
    /// when PostgreSQL reports that transaction committed (`txid_status`), `Some(false)` when
    /// not; statements after that point ran outside it and may be committed one by one.
    pub transaction_ended: Option<bool>,
    /// INVALID indexes (`pg_index.indisvalid`) among those the migration builds, as
    /// `"schema"."name"`: a failed `CREATE INDEX CONCURRENTLY` leaves one behind.
    pub invalid_indexes: Vec<String>,
    /// The transaction the migration ran in (`txid_current()`), to ask after the rollback
    /// whether the migration had committed it.
    pub xid: Option<String>,
}

/// Who owns the transaction around a migration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Txn {
    /// This call opens and commits its own transaction.
    Own(Commit),
    /// The caller holds one transaction open around several migrations (`transaction = "all"`).
    Outer,
}

/// Whether a COMMIT waits for its WAL flush (PostgreSQL's `synchronous_commit`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Commit {
    /// The server's setting (on by default): durable once COMMIT returns.
    Flushed,
    /// `SET LOCAL synchronous_commit = off`. Safe: see `engine::apply_all` on why only the
    /// last commit of a run must be flushed.
    Deferred,
}

/// Applies one migration and writes its tracking row: `(hash, created_at)`, and with `name`
/// (Drizzle 1.0's table) `(hash, created_at, name)` as drizzle-orm 1.0 inserts it. In the
/// normal case both happen in one transaction: either the migration and its row are committed,
/// or neither is.
pub async fn apply_migration(
    client: &Client,
    tracking: &Tracking,
    migration: &Migration,
    name: Option<&str>,
    limits: Limits,
    txn: Txn,
) -> Result<(), StatementFailure> {
    let insert = match name {
        None => format!(
            "INSERT INTO {} (hash, created_at) VALUES ({}, {})",
            tracking.qualified(),
            quote_literal(&migration.hash),
            migration.when
        ),
        Some(name) => format!(
            "INSERT INTO {} (hash, created_at, name) VALUES ({}, {}, {})",
            tracking.qualified(),
            quote_literal(&migration.hash),
            migration.when,
            quote_literal(name)
        ),
    };
    // Second line of defence behind `engine::texts_to_apply`: a migration whose text was
    // dropped would apply nothing and be recorded.
    if !migration.statements.has_text() {
        return Err(found(
            None,
            format!("the text of {} was not read", migration.file_name),
            0,
        ));
    }
    if migration.no_transaction {
        return apply_outside_transaction(client, migration, limits, &insert).await;
    }
    let mut begin = String::new();
    if let Txn::Own(_) = txn {
        begin.push_str("BEGIN; ");
    }
    begin.push_str(&limits.set_sql("LOCAL"));
    if txn == Txn::Own(Commit::Deferred) {
        begin.push_str("; SET LOCAL synchronous_commit = off");
    }
    let result = run_in_transaction(client, migration, &begin, &insert).await;
    match (result, txn) {
        (Ok(()), Txn::Own(_)) => {
            client
                .batch_execute("COMMIT")
                .await
                .map_err(|e| StatementFailure {
                    during_commit: true,
                    ..failure(None, &e, 0)
                })
        }
        (Ok(()), Txn::Outer) => Ok(()),
        (Err(mut failure), Txn::Own(_)) => {
            // Best effort: if the connection is gone, the server rolls back by itself.
            let _ = client.batch_execute("ROLLBACK").await;
            failure.check_committed(client).await;
            Err(failure)
        }
        (Err(failure), Txn::Outer) => Err(failure),
    }
}

impl StatementFailure {
    /// After the rollback: whether the migration had committed our transaction itself before
    /// the failing statement (PostgreSQL then reports it committed), recorded in
    /// `transaction_ended`.
    pub(crate) async fn check_committed(&mut self, client: &Client) {
        if self.transaction_ended.is_none()
            && !self.failure.connection_lost
            && xact_committed(client, &self.xid).await
        {
            self.transaction_ended = Some(true);
        }
    }
}

fn failure(
    statement: Option<usize>,
    e: &tokio_postgres::Error,
    completed_outside_transaction: usize,
) -> StatementFailure {
    StatementFailure {
        statement,
        failure: PgFailure::from_error(e),
        completed_outside_transaction,
        during_commit: false,
        transaction_ended: None,
        invalid_indexes: Vec::new(),
        xid: None,
    }
}

/// A failure PostgreSQL did not report but we found by checking (no SQLSTATE).
fn found(statement: Option<usize>, message: String, completed: usize) -> StatementFailure {
    StatementFailure {
        statement,
        failure: PgFailure {
            sqlstate: None,
            message,
            detail: None,
            hint: None,
            position: None,
            connection_lost: false,
        },
        completed_outside_transaction: completed,
        during_commit: false,
        transaction_ended: None,
        invalid_indexes: Vec::new(),
        xid: None,
    }
}

/// The one value of a single-row answer of `simple_query`, as text (NULL as `None`).
async fn simple_value(client: &Client, sql: &str) -> Result<Option<String>, tokio_postgres::Error> {
    let messages = client.simple_query(sql).await?;
    Ok(messages
        .iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(row) => Some(row.get(0).map(str::to_string)),
            _ => None,
        })
        .flatten())
}

/// The id of the transaction a migration runs in (`txid_current()`, which assigns one: PostgreSQL
/// 10+), so that the end of the migration can tell whether it is still the one open.
async fn our_xid(client: &Client) -> Result<Option<String>, StatementFailure> {
    simple_value(client, "SELECT txid_current()")
        .await
        .map_err(|e| failure(None, &e, 0))
}

/// After the statements ran without error: a failure when the session is no longer in the
/// transaction `xid` (the migration committed or rolled it back itself), with whether it
/// committed.
async fn check_still_in(client: &Client, xid: &Option<String>) -> Result<(), StatementFailure> {
    let current = simple_value(client, "SELECT txid_current_if_assigned()")
        .await
        .map_err(|e| failure(None, &e, 0))?;
    if current == *xid {
        return Ok(());
    }
    Err(ended_transaction(client, xid).await)
}

/// The failure for a migration that ended our transaction `xid` itself.
async fn ended_transaction(client: &Client, xid: &Option<String>) -> StatementFailure {
    let committed = xact_committed(client, xid).await;
    StatementFailure {
        transaction_ended: Some(committed),
        ..found(
            None,
            "the migration ended vamsa-migrate's transaction itself (a COMMIT, ROLLBACK or similar \
             statement in it)"
                .into(),
            0,
        )
    }
}

/// Whether PostgreSQL reports transaction `xid` committed (`txid_status`, PostgreSQL 10+); false
/// when it cannot tell.
async fn xact_committed(client: &Client, xid: &Option<String>) -> bool {
    let Some(xid) = xid
        .as_deref()
        .filter(|x| x.bytes().all(|b| b.is_ascii_digit()))
    else {
        return false;
    };
    let status = simple_value(client, &format!("SELECT txid_status({xid})")).await;
    matches!(status.ok().flatten().as_deref(), Some("committed"))
}

/// After a statement of a transactional migration failed: whether the session was still in a
/// transaction block (ours, now aborted). A query that succeeds shows it was not: the
/// migration had ended our transaction before the failing statement.
async fn still_in_block(client: &Client) -> bool {
    match client.simple_query("SELECT 1").await {
        Ok(_) => false,
        Err(e) => e.code() == Some(&tokio_postgres::error::SqlState::IN_FAILED_SQL_TRANSACTION),
    }
}

/// The INVALID indexes among those `migration` builds (by name, on the table it names), as
/// `"schema"."name"`. Best effort: a query that fails yields none.
pub(crate) async fn invalid_indexes(client: &Client, migration: &Migration) -> Vec<String> {
    let mut invalid = Vec::new();
    for statement in &migration.statements {
        for index in crate::sqlscan::built_indexes(statement.sql) {
            let rows = client
                .query(
                    "SELECT n.nspname::text, c.relname::text FROM pg_index i \
                     JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
                     WHERE NOT i.indisvalid AND c.relname = $1 AND i.indrelid = to_regclass($2)",
                    &[&index.name, &index.table],
                )
                .await
                .unwrap_or_default();
            invalid.extend(rows.iter().filter_map(|r| {
                let schema: String = r.try_get(0).ok()?;
                let name: String = r.try_get(1).ok()?;
                Some(format!("{}.{}", quote_ident(&schema), quote_ident(&name)))
            }));
        }
    }
    invalid
}

/// `begin` (which opens the transaction or only sets its limits), the statements, then the
/// tracking row; the caller commits or rolls back.
async fn run_in_transaction(
    client: &Client,
    migration: &Migration,
    begin: &str,
    insert: &str,
) -> Result<(), StatementFailure> {
    client
        .batch_execute(begin)
        .await
        .map_err(|e| failure(None, &e, 0))?;
    let xid = our_xid(client).await?;
    for (i, statement) in migration.statements.iter().enumerate() {
        if let Err(e) = client.batch_execute(statement.sql).await {
            let mut f = failure(Some(i + 1), &e, 0);
            // Second line of defence behind the planning check (`sqlscan`): a migration that
            // ended our transaction must never be reported as rolled back.
            if !f.failure.connection_lost && !still_in_block(client).await {
                f.transaction_ended = Some(xact_committed(client, &xid).await);
            }
            f.xid = xid;
            return Err(f);
        }
    }
    check_still_in(client, &xid).await?;
    client
        .batch_execute(insert)
        .await
        .map_err(|e| failure(None, &e, 0))
}

/// A `no-transaction` migration: statement by statement, each committed on its own, then the
/// tracking row once all succeeded.
async fn apply_outside_transaction(
    client: &Client,
    migration: &Migration,
    limits: Limits,
    insert: &str,
) -> Result<(), StatementFailure> {
    client
        .batch_execute(&limits.set_sql("SESSION"))
        .await
        .map_err(|e| failure(None, &e, 0))?;
    for (i, statement) in migration.statements.iter().enumerate() {
        if let Err(e) = client.batch_execute(statement.sql).await {
            // The session outlives this migration (the daemon keeps it): do not leave its
            // timeouts behind. Best effort: a broken connection has none left anyway.
            let _ = client
                .batch_execute("RESET lock_timeout; RESET statement_timeout")
                .await;
            let mut f = failure(Some(i + 1), &e, i);
            if !f.failure.connection_lost {
                f.invalid_indexes = invalid_indexes(client, migration).await;
            }
            return Err(f);
        }
    }
    let n = migration.statements.len();
    // `IF NOT EXISTS` skips an index an earlier failed build left INVALID: never record a
    // migration whose index is not usable.
    let invalid = invalid_indexes(client, migration).await;
    if !invalid.is_empty() {
        let _ = client
            .batch_execute("RESET lock_timeout; RESET statement_timeout")
            .await;
        return Err(StatementFailure {
            invalid_indexes: invalid.clone(),
            ..found(
                None,
                format!(
                    "index {} is INVALID after the migration's statements (pg_index.indisvalid): \
                     a concurrent build of it failed, in this run or an earlier one",
                    invalid.join(", ")
                ),
                n,
            )
        });
    }
    client
        .batch_execute(&format!(
            "{insert}; RESET lock_timeout; RESET statement_timeout"
        ))
        .await
        .map_err(|e| failure(None, &e, n))
}

/// Opens, commits or rolls back the single transaction of `transaction = "all"`.
pub async fn batch_transaction(
    client: &Client,
    sql: &str,
    what: &'static str,
) -> Result<(), DbError> {
    client
        .batch_execute(sql)
        .await
        .map_err(DbError::query(what))
}

/// Forces every earlier asynchronous commit of this session to disk: a transaction that has
/// an xid commits with a WAL flush, and the flush covers everything written before it.
pub async fn flush_commits(client: &Client) -> Result<(), PgFailure> {
    let messages = client
        .simple_query("BEGIN; SET LOCAL synchronous_commit = on; SELECT txid_current(); COMMIT")
        .await
        .map_err(|e| PgFailure::from_error(&e))?;
    debug_assert!(messages
        .iter()
        .any(|m| matches!(m, SimpleQueryMessage::Row(_))));
    Ok(())
}

/// The line of the file that a PostgreSQL error position points at.
pub fn line_of_position(statement: &Statement<'_>, position: Option<u32>) -> usize {
    match position {
        Some(p) => {
            let before: String = statement
                .sql
                .chars()
                .take(p.saturating_sub(1) as usize)
                .collect();
            statement.sql_start_line + before.matches('\n').count()
        }
        None => statement.line,
    }
}

/// Asks the server to cancel the query running on another connection (PostgreSQL's cancel
/// request); the cancelled statement fails and its transaction rolls back.
pub async fn cancel(token: &tokio_postgres::CancelToken, params: &crate::libpq::ConnParams) {
    connect::cancel(token, params).await
}
