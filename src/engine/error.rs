//! Why a run (or the preparation of one) failed, with the facts the report needs.
//! `diagnosis` turns these into the likely cause, the next step and the decisions
//! made from them.

use std::path::PathBuf;
use std::time::Duration;

use crate::db::{DbError, PgFailure};
use crate::plan::Blocker;
use crate::protocol::ErrorKind;
use crate::source::SourceError;

/// A failed migration, with its place in the file.
#[derive(Debug, Clone)]
pub struct ApplyError {
    /// The migration's file name.
    pub file: String,
    /// 1-based statement number, when the failure was in a statement.
    pub statement: Option<usize>,
    pub statement_count: usize,
    pub statement_summary: Option<String>,
    /// 1-based line in the file, when PostgreSQL gave a position.
    pub line: Option<usize>,
    pub failure: PgFailure,
    pub during_commit: bool,
    /// Statements that stayed applied, for a no-transaction migration.
    pub no_transaction_completed: Option<usize>,
    /// Migrations of this run that are committed and stay.
    pub committed: usize,
    /// The whole run was one transaction (`transaction = "all"`).
    pub all_rolled_back: bool,
    /// The dump taken before this run, and the database it is of: for the restore steps.
    pub backup: Option<(PathBuf, String)>,
    pub lock_timeout: Duration,
    /// The migration ended our transaction itself: `Some(true)` when PostgreSQL reports it
    /// committed (see [`crate::db::StatementFailure::transaction_ended`]).
    pub transaction_ended: Option<bool>,
    /// INVALID indexes the migration's concurrent builds left, as `"schema"."name"`.
    pub invalid_indexes: Vec<String>,
    /// For a cancelled statement (57014): the `statement_timeout` it ran under and its source.
    pub statement_timeout: Option<crate::db::TimeoutInForce>,
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("{}", .0.iter().map(|b| b.to_string()).collect::<Vec<_>>().join("\n"))]
    Drift(Vec<Blocker>),
    /// The live schema was changed by hand since the last run, under `schema_drift = "refuse"`.
    #[error("{0}")]
    SchemaDrift(crate::drift::SchemaDrift),
    /// `schema_drift = "refuse"`, and the live schema could not be compared with the recorded
    /// one (no privilege on our schema, a lock held): the run fails closed.
    #[error("schema_drift = \"refuse\", but the live schema could not be compared with the recorded one: {reason}")]
    SchemaDriftUnchecked { reason: String },
    #[error("{}", apply_headline(.0))]
    Apply(Box<ApplyError>),
    #[error(transparent)]
    NewerDatabase(#[from] NewerDatabase),
    /// The `backup` command's own dump (nothing was being migrated).
    #[error("backup failed: {0}")]
    ManualBackup(crate::backup::BackupError),
    #[error("backup before migrating failed: {0}")]
    Backup(#[from] crate::backup::BackupError),
    #[error(transparent)]
    Unmatched(#[from] crate::upgrade::UnmatchedRows),
    #[error(transparent)]
    Convert(#[from] crate::convert::ConvertError),
    #[error("{file} must run outside a transaction (-- vamsa-migrate: no-transaction), but transaction = \"all\" runs the whole run in one")]
    NeedsOwnTransaction { file: String },
    /// A migration released the run lock (PostgreSQL releases session-level advisory locks at
    /// once, whatever the transaction does); the run stopped right after it.
    #[error("{file} released the migration lock (pg_advisory_unlock_all() or pg_advisory_unlock() of its key); the run stopped before the next migration, so that two runs never apply at once")]
    LockReleased {
        /// The migration's file name.
        file: String,
        /// Migrations of this run that are committed and stay (this one included).
        committed: usize,
        /// The whole run was one transaction (`transaction = "all"`), now rolled back.
        all_rolled_back: bool,
    },
    /// The daemon was asked to stop (SIGTERM/SIGINT) and the run ended at a phase boundary,
    /// or in its backup once `stop_grace` ran out.
    #[error("stopped on request {at}: {}", stopped_summary(*.committed))]
    Stopped {
        at: super::StopPoint,
        /// Migrations of this run that are committed and stay.
        committed: usize,
    },
    /// The release failed on the scratch copy (`engine::rehearsal`): this is that failure;
    /// the database itself was not changed.
    #[error("caught in rehearsal: production was not changed\n{0}")]
    Rehearsal(Box<EngineError>),
    /// `rehearse = "always"`, and the rehearsal cannot run (no CREATEDB, the copy could not
    /// be made).
    #[error("rehearse = \"always\", but the rehearsal cannot run: {reason}")]
    RehearsalUnavailable { reason: String },
    #[error("{file}:{line}: {statement} controls the transaction, but vamsa-migrate runs this migration in a transaction of its own")]
    TransactionControl {
        file: String,
        /// 1-based line of the statement's first word.
        line: usize,
        /// Its first word, upper case (`COMMIT`, `PREPARE TRANSACTION`, ...).
        statement: String,
    },
}

fn stopped_summary(committed: usize) -> String {
    match committed {
        0 => "no migration of this run was applied".to_string(),
        1 => "1 migration of this run is applied, none after it".to_string(),
        n => format!("{n} migrations of this run are applied, none after them"),
    }
}

fn apply_headline(e: &ApplyError) -> String {
    let place = match (e.statement, &e.statement_summary, e.line) {
        (Some(n), Some(summary), Some(line)) => format!(
            " at statement {n} of {} (line {line}): {summary}",
            e.statement_count
        ),
        _ if e.during_commit => " at COMMIT".to_string(),
        _ if e.transaction_ended.is_some() || !e.invalid_indexes.is_empty() => {
            " after its statements ran".to_string()
        }
        _ => " while recording it in the tracking table".to_string(),
    };
    format!("migration {} failed{place}\n  {}", e.file, e.failure)
}

/// Tracking rows that match no migration on disk, under `unknown_rows = "refuse"`: the code
/// was rolled back without a restore, so the database is newer than the code.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}", newer_database_headline(.rows))]
pub struct NewerDatabase {
    /// The rows, in id order.
    pub rows: Vec<crate::plan::AppliedRow>,
}

fn newer_database_headline(rows: &[crate::plan::AppliedRow]) -> String {
    let count = match rows.len() {
        1 => "1 row that matches".to_string(),
        n => format!("{n} rows that match"),
    };
    let rows: Vec<String> = rows.iter().map(crate::plan::describe_row).collect();
    format!(
        "the database is newer than this code: the tracking table has {count} no migration on disk (applied by newer code); nothing was applied\n  {}",
        rows.join("\n  ")
    )
}

impl EngineError {
    /// The kind clients see on the wire and decide from.
    pub fn kind(&self) -> ErrorKind {
        match self {
            EngineError::Source(_)
            | EngineError::Convert(_)
            | EngineError::TransactionControl { .. } => ErrorKind::Folder,
            EngineError::Unmatched(_) => ErrorKind::TrackingTable,
            EngineError::Config(_) | EngineError::NeedsOwnTransaction { .. } => ErrorKind::Config,
            EngineError::Db(DbError::TrackingRow(_)) => ErrorKind::TrackingTable,
            EngineError::Db(_) => ErrorKind::Database,
            EngineError::Drift(_)
            | EngineError::SchemaDrift(_)
            | EngineError::SchemaDriftUnchecked { .. } => ErrorKind::Drift,
            EngineError::NewerDatabase(_) => ErrorKind::NewerDatabase,
            EngineError::Apply(_) | EngineError::LockReleased { .. } => ErrorKind::Apply,
            EngineError::Backup(_) | EngineError::ManualBackup(_) => ErrorKind::Backup,
            EngineError::Rehearsal(_) => ErrorKind::Rehearsal,
            EngineError::RehearsalUnavailable { .. } => ErrorKind::Database,
            EngineError::Stopped { .. } => ErrorKind::Stopping,
        }
    }

    /// What PostgreSQL (or the connection to it) reported, when it did.
    pub fn failure(&self) -> Option<&PgFailure> {
        match self {
            EngineError::Apply(e) => Some(&e.failure),
            EngineError::Rehearsal(caught) => caught.failure(),
            EngineError::Db(DbError::Query { failure, .. } | DbError::Connect { failure, .. }) => {
                Some(failure)
            }
            _ => None,
        }
    }

    /// PostgreSQL's SQLSTATE, when it gave one.
    pub fn sqlstate(&self) -> Option<&str> {
        self.failure().and_then(|f| f.sqlstate.as_deref())
    }
}
