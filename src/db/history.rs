//! The run history: `vamsa_migrate.runs`, a table of our own outside Drizzle's schema, one row
//! per run that changed something or failed. Drizzle's migrators (0.45, 1.0) only read their
//! own schema, so they never see it. Each row is written in its own transaction after the run
//! (never inside a migration's), so it commits whatever the run's outcome.

use std::path::PathBuf;
use std::time::SystemTime;

use tokio_postgres::{Client, Row};

use super::preflight::{history_access, HistoryAccess};
use super::{quote_ident, value, DbError, ValueError};
use crate::protocol::{AppliedTiming, Origin, RunFailure, RunRecord};

/// The schema of our own tables (the history, the recorded schema description).
pub(crate) const SCHEMA: &str = "vamsa_migrate";

/// What an admin runs so that `role` (quoted) may read the run history and the schema record
/// (`status`, `history`, `verify`): USAGE on the schema alone still leaves its tables unreadable.
pub(crate) fn read_grants(role: &str) -> String {
    format!(
        "GRANT USAGE ON SCHEMA {SCHEMA} TO {role}; GRANT SELECT ON ALL TABLES IN SCHEMA {SCHEMA} TO {role};"
    )
}
/// The history table in [`SCHEMA`].
pub(crate) const RUNS: &str = "runs";

/// Its columns; `rehearsal` is the outcome of a rehearsal before the run, when one ran.
const COLUMNS: &str = "id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, \
    started_at timestamptz NOT NULL, finished_at timestamptz NOT NULL, \
    origin jsonb NOT NULL, role text NOT NULL DEFAULT current_user, tool_version text NOT NULL, \
    tracking_table text NOT NULL, source_commit text, migrations jsonb NOT NULL, \
    backup text, rehearsal text, ok boolean NOT NULL, error_kind text, error_message text, \
    sqlstate text, failed_migration text";

/// A run to record, as the engine saw it.
#[derive(Debug, Clone)]
pub(crate) struct NewRun {
    pub started: SystemTime,
    pub finished: SystemTime,
    pub origin: Origin,
    /// `"schema"."table"` of the tracking table.
    pub tracking_table: String,
    pub source_commit: Option<String>,
    pub migrations: Vec<AppliedTiming>,
    pub backup: Option<PathBuf>,
    pub rehearsal: Option<String>,
    pub error: Option<RunFailure>,
}

/// What became of a run's row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Recorded {
    Written,
    /// No table, and this run does not create one (it changed nothing).
    NoTable,
    /// The role may not keep the history: why, and the statement that turns it on.
    Off {
        reason: String,
        fix: String,
    },
}

fn qualified() -> String {
    format!("{}.{}", quote_ident(SCHEMA), quote_ident(RUNS))
}

/// Writes `run`'s row in its own transaction; creates the schema and table first when missing
/// and `create` (the run reached the database's tracking table). The session must not be in a
/// transaction.
///
/// Errors: [`DbError::Query`] when a statement fails.
pub(crate) async fn record(
    client: &Client,
    run: &NewRun,
    create: bool,
) -> Result<Recorded, DbError> {
    match history_access(client, SCHEMA, RUNS, create).await? {
        HistoryAccess::Absent => return Ok(Recorded::NoTable),
        HistoryAccess::Off { reason, fix } => return Ok(Recorded::Off { reason, fix }),
        HistoryAccess::Creatable => ensure(client).await?,
        HistoryAccess::Ready => {}
    }
    let origin = serde_json::to_string(&run.origin).unwrap_or_else(|_| "{}".into());
    let migrations = serde_json::to_string(&run.migrations).unwrap_or_else(|_| "[]".into());
    let backup = run.backup.as_ref().map(|p| p.display().to_string());
    let error = run.error.as_ref();
    let kind = error
        .and_then(|e| serde_json::to_value(e.kind).ok())
        .and_then(|v| v.as_str().map(str::to_string));
    client
        .execute(
            &format!(
                "INSERT INTO {} (started_at, finished_at, origin, tool_version, tracking_table, \
                 source_commit, migrations, backup, rehearsal, ok, error_kind, error_message, sqlstate, \
                 failed_migration) VALUES ($1, $2, $3::text::jsonb, $4, $5, $6, $7::text::jsonb, $8, $9, $10, \
                 $11, $12, $13, $14)",
                qualified()
            ),
            &[
                &run.started,
                &run.finished,
                &origin,
                &env!("CARGO_PKG_VERSION"),
                &run.tracking_table,
                &run.source_commit,
                &migrations,
                &backup,
                &run.rehearsal,
                &error.is_none(),
                &kind,
                &error.map(|e| kept_message(&e.message, e.sqlstate.as_deref())),
                &error.and_then(|e| e.sqlstate.as_deref()),
                &error.and_then(|e| e.migration.as_deref()),
            ],
        )
        .await
        .map_err(DbError::query("recording the run in the run history"))?;
    Ok(Recorded::Written)
}

/// The error message as the history keeps it: its headline's statement summary without
/// string constants ([`crate::summary::without_literals`]), so that a failed `CREATE ROLE ...
/// PASSWORD '...'` leaves no password in a table others may read; and, for the SQLSTATE
/// classes whose server text echoes the statement's values (42601 syntax errors, class 22
/// data exceptions, class 23 integrity violations with their `Key (...)=(...)` detail), the
/// headline alone. The journal and the terminal still show it whole.
fn kept_message(message: &str, sqlstate: Option<&str>) -> String {
    let (headline, rest) = message.split_once('\n').unwrap_or((message, ""));
    let headline = crate::summary::without_literals(headline);
    let echoes =
        sqlstate.is_some_and(|s| s == "42601" || s.starts_with("22") || s.starts_with("23"));
    match (rest.is_empty(), echoes) {
        (true, _) => headline,
        (false, true) => format!(
            "{headline}\n  (SQLSTATE {}: the server's text, which may echo the statement's values, is in the journal)",
            sqlstate.unwrap_or_default()
        ),
        (false, false) => format!("{headline}\n{rest}"),
    }
}

/// Creates the schema (when missing: `CREATE SCHEMA IF NOT EXISTS` needs CREATE on the
/// database even when the schema exists) and the table, serialised by a transaction-level
/// advisory lock so that two first runs at once do not both create them (`IF NOT EXISTS` is
/// not safe against a concurrent create, PostgreSQL 15).
async fn ensure(client: &Client) -> Result<(), DbError> {
    const WHAT: &str = "creating the run history table";
    let row = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1), to_regclass($2) IS NOT NULL",
            &[&SCHEMA, &qualified()],
        )
        .await
        .map_err(DbError::query(WHAT))?;
    // Made already (the common case): no DDL, so no "already exists, skipping" NOTICE in the
    // journal at every run.
    if value::<bool>(&row, 1, WHAT)? {
        return Ok(());
    }
    let create_schema = if value::<bool>(&row, 0, WHAT)? {
        String::new()
    } else {
        format!("CREATE SCHEMA IF NOT EXISTS {};", quote_ident(SCHEMA))
    };
    let created = client
        .batch_execute(&format!(
            "BEGIN; SELECT pg_advisory_xact_lock(hashtext('vamsa_migrate.history')); \
             {create_schema} CREATE TABLE IF NOT EXISTS {} ({COLUMNS}); COMMIT",
            qualified()
        ))
        .await;
    if created.is_err() {
        // A failed statement leaves the batch's transaction open and aborted.
        let _ = client.batch_execute("ROLLBACK").await;
    }
    created.map_err(DbError::query(WHAT))
}

const SELECT: &str = "SELECT id, to_char(started_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS'), \
    to_char(finished_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS'), \
    (extract(epoch FROM finished_at - started_at) * 1000)::bigint, origin::text, role, tool_version, \
    source_commit, migrations::text, backup, rehearsal, ok, error_kind, error_message, sqlstate, \
    failed_migration";

/// The newest `limit` runs, newest first; empty when there is no history table.
///
/// Errors: [`DbError::Query`] when the table cannot be read (no privilege), [`DbError::Value`]
/// when a row does not convert.
pub(crate) async fn read(client: &Client, limit: i64) -> Result<Vec<RunRecord>, DbError> {
    const WHAT: &str = "reading the run history";
    let exists = client
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&qualified()])
        .await
        .map_err(DbError::query(WHAT))?;
    if !value::<bool>(&exists, 0, WHAT)? {
        return Ok(Vec::new());
    }
    let rows = client
        .query(
            &format!("{SELECT} FROM {} ORDER BY id DESC LIMIT $1", qualified()),
            &[&limit],
        )
        .await
        .map_err(DbError::query(WHAT))?;
    rows.iter()
        .map(|r| run_record(r, WHAT))
        .collect::<Result<_, _>>()
        .map_err(DbError::from)
}

/// The newest run, for `status`; `None` without a history or when it cannot be read (logged:
/// `status` reports the migrations all the same).
pub(crate) async fn last(client: &Client) -> Option<Box<RunRecord>> {
    match read(client, 1).await {
        Ok(mut runs) => runs.pop().map(Box::new),
        Err(e) => {
            tracing::info!("{e}");
            None
        }
    }
}

fn run_record(row: &Row, what: &'static str) -> Result<RunRecord, ValueError> {
    let text = |i| value::<Option<String>>(row, i, what);
    let origin: Origin = text(4)?
        .and_then(|o| serde_json::from_str(&o).ok())
        .unwrap_or_default();
    let migrations = text(8)?
        .and_then(|m| serde_json::from_str(&m).ok())
        .unwrap_or_default();
    let ok = value::<bool>(row, 11, what)?;
    let error = if ok {
        None
    } else {
        Some(RunFailure {
            kind: text(12)?
                .and_then(|k| serde_json::from_value(k.into()).ok())
                .unwrap_or_default(),
            message: text(13)?.unwrap_or_default(),
            sqlstate: text(14)?,
            migration: text(15)?,
        })
    };
    Ok(RunRecord {
        id: value(row, 0, what)?,
        started_at: text(1)?.unwrap_or_default(),
        finished_at: text(2)?.unwrap_or_default(),
        ms: value::<Option<i64>>(row, 3, what)?.unwrap_or(0),
        origin,
        role: text(5)?.unwrap_or_default(),
        tool_version: text(6)?.unwrap_or_default(),
        source_commit: text(7)?,
        migrations,
        backup: text(9)?.map(PathBuf::from),
        rehearsal: text(10)?,
        ok,
        error,
    })
}
