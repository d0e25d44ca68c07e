//! The engine: plan against the database and apply. The CLI and the daemon both drive it and
//! see its progress only as [`Event`]s, so there is one code path for applying migrations.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio_postgres::{Client, Config};

use crate::config::{Settings, TransactionMode};
use crate::db::{self, Commit, DbError, Limits, PgFailure, StatementFailure, Tracking, Txn};
use crate::plan::{self, AppliedRow, Blocker, Plan, PlanOptions, State};
use crate::source::{Migration, MigrationSet, SourceError};
use crate::summary::summarize;

/// Progress of a run, in the order it happens. Serialised as the JSON lines of `--format json`
/// and of the daemon's trigger socket.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum Event {
    Warning {
        message: String,
    },
    WaitingForLock {
        holder_pid: Option<i32>,
        max_wait_ms: u64,
    },
    /// What this run is about to apply (or, in a dry run, would apply).
    Pending {
        migrations: Vec<PendingMigration>,
        dry_run: bool,
    },
    AcceptedEdit {
        migration: String,
    },
    /// A backup is being taken before `migrations` migrations are applied.
    BackingUp {
        migrations: usize,
    },
    BackedUp {
        path: std::path::PathBuf,
        bytes: u64,
        ms: u64,
    },
    Applied {
        migration: String,
        ms: u64,
    },
    Done {
        ok: bool,
        applied: usize,
        dry_run: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<ErrorReport>,
    },
    /// The daemon's answer to `ping`.
    Pong {
        busy: bool,
    },
    /// The daemon's answer to `status`: the same object as `status --format json`.
    Status {
        status: serde_json::Value,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PendingMigration {
    pub migration: String,
    pub statements: Vec<String>,
    pub no_transaction: bool,
    /// Drizzle's own migrator would skip this one (its `when` is older than the newest row).
    pub drizzle_would_skip: bool,
}

impl PendingMigration {
    fn new(m: &Migration, drizzle_would_skip: bool) -> Self {
        PendingMigration {
            migration: m.file_name.clone(),
            statements: m.statements.iter().map(|s| summarize(&s.sql)).collect(),
            no_transaction: m.no_transaction,
            drizzle_would_skip,
        }
    }
}

/// Everything a person (or a script) needs to act on a failure.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorReport {
    pub message: String,
    /// The migration file that failed, when one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migration: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sqlstate: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<String>,
    pub hint: String,
}

/// A failed migration, with its place in the file.
#[derive(Debug, Clone)]
pub struct ApplyError {
    pub file: String,
    pub statement: Option<usize>,
    pub statement_count: usize,
    pub statement_summary: Option<String>,
    pub line: Option<usize>,
    pub failure: PgFailure,
    pub during_commit: bool,
    pub no_transaction_completed: Option<usize>,
    /// Migrations of this run that are committed and stay.
    pub committed: usize,
    /// The whole run was one transaction (`transaction = "all"`).
    pub all_rolled_back: bool,
    /// The dump taken before this run, and the database it is of: for the restore steps.
    pub backup: Option<(std::path::PathBuf, String)>,
    pub lock_timeout: Duration,
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
    #[error("{}", apply_headline(.0))]
    Apply(Box<ApplyError>),
    #[error("backup before migrating failed: {0}")]
    Backup(#[from] crate::backup::BackupError),
    #[error("{file} must run outside a transaction (-- vamsa-migrate: no-transaction), but transaction = \"all\" runs the whole run in one")]
    NeedsOwnTransaction { file: String },
}

fn apply_headline(e: &ApplyError) -> String {
    let place = match (e.statement, &e.statement_summary, e.line) {
        (Some(n), Some(summary), Some(line)) => format!(
            " at statement {n} of {} (line {line}): {summary}",
            e.statement_count
        ),
        _ if e.during_commit => " at COMMIT".to_string(),
        _ => " while recording it in the tracking table".to_string(),
    };
    format!("migration {} failed{place}\n  {}", e.file, e.failure)
}

impl EngineError {
    /// The process exit code documented in the README.
    pub fn exit_code(&self) -> i32 {
        match self {
            EngineError::Source(_)
            | EngineError::Config(_)
            | EngineError::NeedsOwnTransaction { .. }
            | EngineError::Db(DbError::TrackingRow(_)) => 2,
            EngineError::Drift(_) => 4,
            EngineError::Backup(_) => 1,
            EngineError::Db(_) | EngineError::Apply(_) => 1,
        }
    }

    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            EngineError::Apply(e) => e.failure.sqlstate.as_deref(),
            EngineError::Db(DbError::Query { failure, .. } | DbError::Connect { failure, .. }) => {
                failure.sqlstate.as_deref()
            }
            _ => None,
        }
    }

    /// The likely cause, from the user document's table, when we can tell.
    pub fn cause(&self) -> Option<String> {
        match self {
            EngineError::Apply(e) => Some(likely_cause(e)),
            EngineError::Db(DbError::Connect { .. }) => Some(
                "PostgreSQL is not running or not reachable at that address, or the credentials are wrong.".into(),
            ),
            EngineError::Db(DbError::LockWait { .. }) => Some(
                "Another vamsa-migrate (a deploy hook, the service, or an admin) is applying migrations right now.".into(),
            ),
            _ => None,
        }
    }

    /// What to do next.
    pub fn hint(&self) -> String {
        match self {
            EngineError::Source(_) => "Fix the file named above (or pull a complete release); nothing was changed in the database.".into(),
            EngineError::Config(_) => "Fix the setting named above; nothing was changed in the database.".into(),
            EngineError::Drift(_) => "Nothing was applied. See `vamsa-migrate status` for the full picture.".into(),
            EngineError::NeedsOwnTransaction { .. } => "Nothing was applied. Run with transaction = \"per-migration\" (the default).".into(),
            EngineError::Db(DbError::ReadOnly { .. }) => "Point database_url at the primary, or list several hosts with target_session_attrs=read-write.".into(),
            EngineError::Db(DbError::LockWait { .. }) => "Wait for the other run to finish and try again, or raise lock_wait.".into(),
            EngineError::Db(DbError::TrackingRow(e)) => e.next_step(),
            EngineError::Db(_) => "Check database_url and that PostgreSQL is running; nothing was changed.".into(),
            EngineError::Apply(e) => next_step(e),
            EngineError::Backup(e) => e.hint().into(),
        }
    }

    pub fn report(&self) -> ErrorReport {
        ErrorReport {
            message: self.to_string(),
            migration: match self {
                EngineError::Apply(e) => Some(e.file.clone()),
                _ => None,
            },
            sqlstate: self.sqlstate().map(str::to_string),
            cause: self.cause(),
            hint: self.hint(),
        }
    }
}

fn likely_cause(e: &ApplyError) -> String {
    let code = e.failure.sqlstate.as_deref().unwrap_or("");
    let statement = e
        .statement_summary
        .as_deref()
        .map(|s| format!(" ({s})"))
        .unwrap_or_default();
    if e.failure.connection_lost || code.starts_with("08") {
        return if e.during_commit {
            "The connection to PostgreSQL was lost during COMMIT: the migration may or may not be committed; `vamsa-migrate status` tells which, and a new run continues from there.".into()
        } else {
            "The connection to PostgreSQL was lost (server restarted or network failure): nothing of this migration was committed.".into()
        };
    }
    match code {
        "42P07" | "42710" | "42701" | "42P06" | "42723" => "An object it creates already exists: the migration was partially applied before (perhaps after a crash), or the object was made by hand.".into(),
        "42703" | "42P01" | "42704" | "3F000" | "42883" => "Something it uses does not exist: a previous migration was skipped or failed silently, or the object was removed by hand.".into(),
        "42501" => format!("The database user lacks a permission needed by statement {}{statement}: grant it, or run as the schema's owner.", e.statement.map_or("?".into(), |n| n.to_string())),
        "53100" => "Disk full: the database server ran out of storage space.".into(),
        "53200" => "The database server ran out of memory.".into(),
        "55P03" => format!("Lock timeout: the statement waited longer than lock_timeout ({}) for a lock held by another session, probably the running application.", humantime::format_duration(e.lock_timeout)),
        "57014" => "The statement was cancelled: it ran longer than statement_timeout, or the run was stopped.".into(),
        "42601" => "The migration file has an SQL syntax error.".into(),
        "25001" => "This statement cannot run inside a transaction block: make `-- vamsa-migrate: no-transaction` the first line of the file.".into(),
        "23505" | "23503" | "23502" | "23514" => "The existing data violates a constraint this migration adds.".into(),
        _ => "The migration could not be applied to this database as it is.".into(),
    }
}

fn next_step(e: &ApplyError) -> String {
    let code = e.failure.sqlstate.as_deref().unwrap_or("");
    let kept = if e.all_rolled_back {
        "The whole run was rolled back (transaction = \"all\"): the database is as it was before."
            .to_string()
    } else {
        let earlier = match e.committed {
            0 => String::new(),
            1 => " 1 earlier migration of this run is committed and stays.".into(),
            n => format!(" {n} earlier migrations of this run are committed and stay."),
        };
        match e.no_transaction_completed {
            Some(done) => format!(
                "{} ran outside a transaction: its first {done} statement(s) stayed applied and it is not recorded; make its statements safe to re-run (IF NOT EXISTS) before retrying.{earlier}",
                e.file
            ),
            None => format!("Nothing of {} was committed.{earlier}", e.file),
        }
    };
    let action = match code {
        "55P03" => "Run again at a quieter time, or raise lock_timeout, or set lock_retries to try again automatically.",
        "53100" => "Free space on the database server, then run `vamsa-migrate migrate` again.",
        "42501" => "Grant the permission (or set database_url to the owner role), then run `vamsa-migrate migrate` again.",
        _ if e.failure.connection_lost => "Once PostgreSQL is reachable, run `vamsa-migrate migrate` again: it continues from the last committed migration.",
        _ => "Fix the cause and run `vamsa-migrate migrate` again.",
    };
    let restore = match &e.backup {
        Some((path, db)) => format!(
            "\nTo go back to where you were before this run:\n  1. stop the application (e.g. systemctl stop vamsa)\n  2. pg_restore --clean --if-exists -d {db} {}\n  3. roll the code back: git checkout HEAD~1, then rebuild and restart it",
            path.display()
        ),
        None => "\nIf you cannot fix it, restore the backup you made before updating (pg_restore --clean --if-exists -d <database> <backup-file>) and roll the code back with `git checkout HEAD~1`.".into(),
    };
    format!("{kept} {action}{restore}")
}

/// What the admin asked for, beyond the settings.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub plan: PlanOptions,
    pub dry_run: bool,
    /// Skip the backup for this run even when `backup_enabled` (`--no-backup`).
    pub no_backup: bool,
}

/// The engine's view of one target database.
pub struct Engine<'a> {
    pub settings: &'a Settings,
    pub pg: &'a Config,
    pub tracking: Tracking,
}

/// The result of a finished run.
#[derive(Debug, Clone, Default)]
pub struct RunSummary {
    pub applied: Vec<String>,
    pub pending_before: usize,
}

/// What `status` reports.
pub struct Status<'s> {
    pub plan: Plan<'s>,
    pub table_exists: bool,
}

impl<'a> Engine<'a> {
    pub fn new(settings: &'a Settings, pg: &'a Config) -> Self {
        Engine {
            settings,
            pg,
            tracking: Tracking {
                schema: settings.migrations_schema.clone(),
                table: settings.migrations_table.clone(),
            },
        }
    }

    pub async fn connect(&self) -> Result<Client, DbError> {
        db::connect(self.pg).await
    }

    /// Reads the rows and plans, without writing anything or taking any lock.
    pub async fn status<'s>(
        &self,
        client: &Client,
        set: &'s MigrationSet,
        options: &PlanOptions,
    ) -> Result<Status<'s>, EngineError> {
        let rows = db::read_rows(client, &self.tracking).await?;
        let table_exists = rows.is_some();
        let rows = rows.unwrap_or_default();
        Ok(Status {
            plan: plan::plan(set, &rows, options),
            table_exists,
        })
    }

    /// The whole run: lock, plan, apply, report. Emits `Done` itself on every path.
    pub async fn run(
        &self,
        client: &Client,
        set: &MigrationSet,
        options: &RunOptions,
        emit: &mut dyn FnMut(Event),
    ) -> Result<RunSummary, EngineError> {
        for w in &set.warnings {
            emit(Event::Warning {
                message: w.to_string(),
            });
        }
        let result = if options.dry_run {
            self.dry_run(client, set, options, emit).await
        } else {
            self.apply(client, set, options, emit).await
        };
        emit(Event::Done {
            ok: result.is_ok(),
            applied: result.as_ref().map_or(0, |s| s.applied.len()),
            dry_run: options.dry_run,
            error: result.as_ref().err().map(EngineError::report),
        });
        result
    }

    async fn dry_run(
        &self,
        client: &Client,
        set: &MigrationSet,
        options: &RunOptions,
        emit: &mut dyn FnMut(Event),
    ) -> Result<RunSummary, EngineError> {
        let status = self.status(client, set, &options.plan).await?;
        warn_missing(&status.plan.missing, emit);
        let blockers = status.plan.blockers();
        if !blockers.is_empty() {
            return Err(EngineError::Drift(blockers));
        }
        let pending = pending_events(&status.plan);
        let count = pending.len();
        emit(Event::Pending {
            migrations: pending,
            dry_run: true,
        });
        Ok(RunSummary {
            applied: Vec::new(),
            pending_before: count,
        })
    }

    async fn apply(
        &self,
        client: &Client,
        set: &MigrationSet,
        options: &RunOptions,
        emit: &mut dyn FnMut(Event),
    ) -> Result<RunSummary, EngineError> {
        let lock_wait = self.settings.lock_wait;
        db::acquire_lock(client, &self.tracking, lock_wait, |holder_pid| {
            emit(Event::WaitingForLock {
                holder_pid,
                max_wait_ms: lock_wait.as_millis() as u64,
            })
        })
        .await?;
        let result = self.apply_locked(client, set, options, emit).await;
        // A broken connection drops the lock with the session; only report other failures.
        let unlocked = db::release_lock(client, &self.tracking).await;
        let summary = result?;
        if let Err(e) = unlocked {
            tracing::warn!("{e}");
        }
        Ok(summary)
    }

    async fn apply_locked(
        &self,
        client: &Client,
        set: &MigrationSet,
        options: &RunOptions,
        emit: &mut dyn FnMut(Event),
    ) -> Result<RunSummary, EngineError> {
        // Read after the lock is held: another run may have applied migrations meanwhile.
        let rows = db::read_rows(client, &self.tracking)
            .await?
            .unwrap_or_default();
        let plan = plan::plan(set, &rows, &options.plan);
        warn_missing(&plan.missing, emit);
        let blockers = plan.blockers();
        if !blockers.is_empty() {
            return Err(EngineError::Drift(blockers));
        }
        let to_apply: Vec<&Migration> = plan.to_apply().collect();
        // Refuse before the backup and before any change, not half-way.
        if self.settings.transaction == TransactionMode::All {
            if let Some(m) = to_apply.iter().find(|m| m.no_transaction) {
                return Err(EngineError::NeedsOwnTransaction {
                    file: m.file_name.clone(),
                });
            }
        }
        let backup = match to_apply.first() {
            Some(first) if self.settings.backup.enabled && !options.no_backup => {
                emit(Event::BackingUp {
                    migrations: to_apply.len(),
                });
                let label = format!("before-{}", first.tag);
                let b = crate::backup::take(&self.settings.backup, self.pg, client, &label).await?;
                emit(Event::BackedUp {
                    path: b.path.clone(),
                    bytes: b.bytes,
                    ms: b.ms,
                });
                let db = b.database.clone();
                Some((b.path, db))
            }
            _ => None,
        };
        // Only now change anything: the backup shows the database exactly as it was.
        db::ensure_table(client, &self.tracking).await?;
        for (m, row) in plan.accepted_edits() {
            db::accept_edit(client, &self.tracking, row.id, &m.hash).await?;
            emit(Event::AcceptedEdit {
                migration: m.file_name.clone(),
            });
        }
        emit(Event::Pending {
            migrations: pending_events(&plan),
            dry_run: false,
        });
        let applied = self
            .apply_all(client, &to_apply, emit)
            .await
            .map_err(|e| match e {
                EngineError::Apply(mut a) => {
                    a.backup = backup;
                    EngineError::Apply(a)
                }
                other => other,
            })?;
        Ok(RunSummary {
            applied,
            pending_before: to_apply.len(),
        })
    }

    /// Applies in order, each migration in its own transaction with its tracking row.
    ///
    /// Durability: every commit but the last of a run uses `synchronous_commit = off`, which
    /// skips the WAL flush and so one disk sync per migration. This never breaks atomicity (a
    /// commit is all-or-nothing either way) and never reorders: WAL is replayed in order, so a
    /// crash can only lose a suffix of the run's commits, which leaves the database at a
    /// migration boundary and the next run applies the rest. The last commit is synchronous
    /// and its flush covers every earlier one, so once we report the run complete it is all on
    /// disk; on failure we flush explicitly before reporting.
    async fn apply_all(
        &self,
        client: &Client,
        to_apply: &[&Migration],
        emit: &mut dyn FnMut(Event),
    ) -> Result<Vec<String>, EngineError> {
        let limits = Limits {
            lock_timeout: self.settings.lock_timeout,
            statement_timeout: self.settings.statement_timeout,
        };
        // `apply_locked` has refused no-transaction files under `transaction = "all"`.
        let all = self.settings.transaction == TransactionMode::All;
        if all && !to_apply.is_empty() {
            db::batch_transaction(client, "BEGIN", "opening the run's transaction").await?;
        }
        let mut applied = Vec::with_capacity(to_apply.len());
        let mut timings = Vec::with_capacity(to_apply.len());
        for (i, m) in to_apply.iter().enumerate() {
            let started = Instant::now();
            let commit = if i + 1 == to_apply.len() {
                Commit::Flushed
            } else {
                Commit::Deferred
            };
            let txn = if all { Txn::Outer } else { Txn::Own(commit) };
            let mut attempt = 0;
            let result = loop {
                let result = db::apply_migration(client, &self.tracking, m, limits, txn).await;
                match result {
                    Err(f) if self.may_retry(&f, all, attempt) => {
                        attempt += 1;
                        // 1 s, 2 s, 4 s, ... capped at 30 s: the application's transaction that
                        // holds the lock usually ends quickly.
                        let delay = Duration::from_secs(1 << (attempt - 1).min(5))
                            .min(Duration::from_secs(30));
                        emit(Event::Warning {
                            message: format!(
                                "{}: lock timeout (another session holds a lock it needs); retry {attempt} of {} in {}",
                                m.file_name,
                                self.settings.lock_retries,
                                humantime::format_duration(delay)
                            ),
                        });
                        tokio::time::sleep(delay).await;
                    }
                    other => break other,
                }
            };
            if let Err(failure) = result {
                if all {
                    let _ = db::batch_transaction(client, "ROLLBACK", "rolling back").await;
                } else if !applied.is_empty() && !failure.failure.connection_lost {
                    // Make the earlier asynchronous commits durable before we say they stay.
                    let _ = db::flush_commits(client).await;
                }
                return Err(self.apply_error(m, failure, if all { 0 } else { applied.len() }, all));
            }
            let ms = started.elapsed().as_millis() as u64;
            if all {
                timings.push((m.file_name.clone(), ms));
            } else {
                emit(Event::Applied {
                    migration: m.file_name.clone(),
                    ms,
                });
            }
            applied.push(m.file_name.clone());
        }
        if all && !to_apply.is_empty() {
            db::batch_transaction(client, "COMMIT", "committing the run's transaction").await?;
            for (migration, ms) in timings {
                emit(Event::Applied { migration, ms });
            }
        }
        Ok(applied)
    }

    /// A lock timeout leaves nothing behind (the migration rolled back), so it is safe to try
    /// again, up to `lock_retries` times. Not in `transaction = "all"`, where the whole run's
    /// transaction is already aborted.
    fn may_retry(&self, f: &StatementFailure, all: bool, attempt: u32) -> bool {
        !all && attempt < self.settings.lock_retries
            && f.failure.sqlstate.as_deref() == Some("55P03")
            && f.completed_outside_transaction == 0
    }

    fn apply_error(
        &self,
        m: &Migration,
        f: StatementFailure,
        committed: usize,
        all: bool,
    ) -> EngineError {
        let statement = f.statement.and_then(|n| m.statements.get(n - 1));
        EngineError::Apply(Box::new(ApplyError {
            file: m.file_name.clone(),
            statement: f.statement,
            statement_count: m.statements.len(),
            statement_summary: statement.map(|s| summarize(&s.sql)),
            line: statement.map(|s| db::line_of_position(s, f.failure.position)),
            no_transaction_completed: m.no_transaction.then_some(f.completed_outside_transaction),
            failure: f.failure,
            during_commit: f.during_commit,
            committed,
            all_rolled_back: all,
            backup: None,
            lock_timeout: self.settings.lock_timeout,
        }))
    }
}

fn pending_events(plan: &Plan<'_>) -> Vec<PendingMigration> {
    plan.items
        .iter()
        .filter_map(|item| match item.state {
            State::Pending { drizzle_would_skip } => {
                Some(PendingMigration::new(item.migration, drizzle_would_skip))
            }
            State::OutOfOrder { allowed: true } => {
                Some(PendingMigration::new(item.migration, true))
            }
            _ => None,
        })
        .collect()
}

fn warn_missing(missing: &[AppliedRow], emit: &mut dyn FnMut(Event)) {
    for row in missing {
        emit(Event::Warning {
            message: format!(
                "the tracking table has row {} (created_at {}, hash {}) that matches no migration on disk; \
                 was the code rolled back?",
                row.id,
                row.created_at.map_or("NULL".into(), |c| c.to_string()),
                short_hash(&row.hash),
            ),
        });
    }
}

/// The first 12 characters of a hash from the tracking table (any text: rows can be made by
/// hand), for messages, control characters escaped.
pub fn short_hash(hash: &str) -> String {
    crate::plan::printable(&hash.chars().take(12).collect::<String>())
}
