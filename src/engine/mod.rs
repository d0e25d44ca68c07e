//! The engine: plan against the database and apply. The CLI and the daemon both drive it and
//! see its progress only as [`Event`]s, so there is one code path for applying migrations.

pub mod error;
mod rehearsal;
mod stop;

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::libpq::ConnParams;
use tokio_postgres::Client;

use crate::config::{SchemaDrift, Settings, TransactionMode, UnknownRows};
use crate::db::history::Recorded;
use crate::db::{
    self, Commit, DbError, Limits, StatementFailure, TableVersion, Tracking, TrackingTable, Txn,
};
use crate::history::RunLog;
use crate::plan::{self, AppliedRow, Plan, PlanOptions, State};
use crate::protocol::{Event, PendingMigration};
use crate::source::{Layout, Migration, MigrationSet, SourceError};
use crate::summary::summarize;

pub use error::{ApplyError, EngineError, NewerDatabase};
pub use stop::{StopPoint, StopRequest, StopSignal};

fn pending_migration(m: &Migration, drizzle_would_skip: bool) -> PendingMigration {
    PendingMigration {
        migration: m.file_name.clone(),
        statements: m.statements.iter().map(|s| summarize(s.sql)).collect(),
        no_transaction: m.no_transaction,
        drizzle_would_skip,
    }
}

/// What the admin asked for, beyond the settings.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub plan: PlanOptions,
    pub dry_run: bool,
    /// Skip the backup for this run even when `backup_enabled` (`--no-backup`).
    pub no_backup: bool,
    /// Who started the run, for the run history.
    pub origin: crate::protocol::Origin,
    /// The daemon's stop requests (SIGTERM/SIGINT), honoured at every phase boundary.
    pub stop: StopSignal,
}

/// The engine's view of one target database.
pub struct Engine<'a> {
    pub settings: &'a Settings,
    pub pg: &'a ConnParams,
    pub tracking: Tracking,
}

/// The result of a finished run.
#[derive(Debug, Clone, Default)]
pub struct RunSummary {
    pub applied: Vec<String>,
    pub pending_before: usize,
    /// Rows named by upgrading the tracking table to Drizzle 1.0's shape (0: no upgrade).
    pub upgraded_rows: usize,
}

/// What `status` reports.
pub struct Status<'s> {
    pub plan: Plan<'s>,
    pub table_exists: bool,
    /// What the next run will do beyond applying: the table's upgrade to Drizzle 1.0's
    /// shape, out-of-order folders applied as Drizzle 1.0 does.
    pub notes: Vec<String>,
}

/// A run's plan, checked: what [`Engine::change`] applies.
struct Prepared<'s> {
    plan: Plan<'s>,
    table: Table,
    to_apply: Vec<&'s Migration>,
    /// The `name` of each new row, by tag (see [`Table::row_names`]).
    names: Option<HashMap<String, String>>,
}

/// The tracking table as a plan must see it.
struct Table {
    /// Rows in id order; a 0.x table read for a folder-layout folder has each row's name as
    /// Drizzle 1.0's upgrade would give it.
    rows: Vec<AppliedRow>,
    version: Option<TableVersion>,
    /// `(id, name)` to write when upgrading a 0.x table for a folder-layout folder.
    upgrade: Vec<(i64, String)>,
}

impl Table {
    /// Matches a 0.x table's rows to a folder-layout folder as Drizzle 1.0 would; refuses
    /// rows that match no folder.
    fn new(
        set: &MigrationSet,
        found: Option<TrackingTable>,
    ) -> Result<Table, crate::upgrade::UnmatchedRows> {
        let Some(found) = found else {
            return Ok(Table {
                rows: Vec::new(),
                version: None,
                upgrade: Vec::new(),
            });
        };
        let mut rows = found.rows;
        let mut upgrade = Vec::new();
        if set.layout == Layout::Folders && found.version == TableVersion::V0 {
            let names = crate::upgrade::names_for_rows(set, &rows)?;
            for (row, name) in rows.iter_mut().zip(names) {
                row.name = Some(name.clone());
                upgrade.push((row.id, name));
            }
        }
        Ok(Table {
            rows,
            version: Some(found.version),
            upgrade,
        })
    }

    /// The `name` each new row gets, by tag: the folder name in the folder layout; in the
    /// journal layout with Drizzle 1.0's table, the folder `convert` will give it (a row
    /// without a name would make Drizzle 1.0 apply its migration again). `None`: a 0.x table.
    fn row_names(
        &self,
        set: &MigrationSet,
    ) -> Result<Option<HashMap<String, String>>, crate::convert::ConvertError> {
        match (set.layout, self.version) {
            (Layout::Folders, _) => Ok(Some(
                set.migrations
                    .iter()
                    .map(|m| (m.tag.clone(), m.tag.clone()))
                    .collect(),
            )),
            (Layout::Journal, Some(TableVersion::V1)) => {
                let renamed = crate::convert::plan(set)?;
                Ok(Some(
                    set.migrations
                        .iter()
                        .zip(renamed)
                        .map(|(m, r)| (m.tag.clone(), r.folder))
                        .collect(),
                ))
            }
            (Layout::Journal, _) => Ok(None),
        }
    }

    /// Notes for `status` and the run's output.
    fn notes(&self, plan: &Plan<'_>) -> Vec<String> {
        let mut notes = Vec::new();
        if !self.upgrade.is_empty() {
            notes.push(format!(
                "the tracking table has Drizzle 0.x's shape; the next run upgrades it to Drizzle 1.0's \
                 (adds name and applied_at, names its {} rows) as Drizzle 1.0 would",
                self.upgrade.len()
            ));
        }
        notes.extend(line_ending_notes(plan));
        notes.extend(out_of_order_notes(plan));
        notes.extend(applied_order_notes(plan));
        notes
    }
}

/// Files applied with other line endings (see [`plan::same_but_line_endings`]).
fn line_ending_notes(plan: &Plan<'_>) -> Vec<String> {
    plan.line_endings_differ
        .iter()
        .map(|file| plan::line_endings_warning(file))
        .collect()
}

/// Folder-layout migrations whose name order differs from the order their rows were written
/// in (row ids): a fresh database would apply them in another order than this one saw.
fn applied_order_notes(plan: &Plan<'_>) -> Vec<String> {
    if plan.layout != Layout::Folders {
        return Vec::new();
    }
    let mut notes = Vec::new();
    let mut newest: Option<(&str, i64)> = None;
    for item in &plan.items {
        let (State::Applied(row) | State::Edited { row, .. }) = &item.state else {
            continue;
        };
        match newest {
            Some((name, id)) if row.id < id => notes.push(format!(
                "{} sorts after {name} but was applied before it (row id {} < {id}); \
                 a fresh database applies them in name order",
                item.migration.tag, row.id
            )),
            _ => newest = Some((item.migration.tag.as_str(), row.id)),
        }
    }
    notes
}

/// Folder-layout migrations older (in name order) than an applied one.
fn out_of_order_notes(plan: &Plan<'_>) -> Vec<String> {
    if plan.layout != Layout::Folders {
        return Vec::new();
    }
    let later = plan
        .items
        .iter()
        .rev()
        .find(|i| matches!(i.state, State::Applied(_) | State::Edited { .. }));
    let later = later.map_or("", |i| i.migration.tag.as_str());
    plan.items
        .iter()
        .filter(|i| matches!(i.state, State::OutOfOrder { .. }))
        .map(|i| {
            format!(
                "{} sorts before {later}, which is already applied; it is applied now, \
                 as Drizzle 1.0 does (folders are tracked by name)",
                i.migration.tag
            )
        })
        .collect()
}

impl<'a> Engine<'a> {
    pub fn new(settings: &'a Settings, pg: &'a ConnParams) -> Self {
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
        let table = Table::new(set, db::read_rows(client, &self.tracking).await?)?;
        let plan = plan::plan(set, &table.rows, options);
        Ok(Status {
            notes: table.notes(&plan),
            plan,
            table_exists: table.version.is_some(),
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
        let mut log = RunLog::start(options.origin.clone());
        let result = {
            let mut tap = |event: Event| {
                log.see(&event);
                emit(event)
            };
            if options.dry_run {
                self.dry_run(client, set, options, &mut tap).await
            } else {
                self.apply(client, set, options, &mut tap).await
            }
        };
        let error = result.as_ref().err().map(crate::diagnosis::report);
        if let Ok(summary) = &result {
            log.upgraded_table(summary.upgraded_rows);
        }
        if !options.dry_run && log.worth_recording(error.is_some()) {
            self.record(client, log, error.as_ref(), emit).await;
        }
        emit(match error {
            None => Event::done_ok(
                result.as_ref().map_or(0, |s| s.applied.len()),
                options.dry_run,
            ),
            Some(error) => Event::done_failed(error, options.dry_run),
        });
        result
    }

    /// The live schema against the one recorded after the last successful run: `None` when
    /// none was recorded or every difference is accounted for by migrations another tool
    /// (Drizzle's own migrator) applied since, by the rule of [`crate::drift`]; the next run
    /// records the schema again. Otherwise the hand changes, with notes on those migrations.
    ///
    /// Errors: [`DbError::Query`] when the catalogs, the record or the tracking table cannot
    /// be read.
    pub(crate) async fn schema_drift(
        &self,
        client: &Client,
    ) -> Result<Option<crate::drift::SchemaDrift>, DbError> {
        let tracking = self.tracking.qualified();
        // No record, or one of an earlier format (without a fingerprint, described under the
        // session's search_path): nothing to compare with; the next run records it again.
        let Some(recorded) = db::schema::recorded_fingerprint(client, &tracking).await? else {
            return Ok(None);
        };
        // Nothing in the catalogs changed since the record: nothing to read or describe.
        if recorded == db::schema::fingerprint(client).await? {
            return Ok(None);
        }
        let Some(recorded) = db::schema::recorded(client, &tracking).await? else {
            return Ok(None);
        };
        let live = db::schema::describe(client, &self.tracking.schema).await?;
        let changes = crate::drift::diff(&recorded.description, &live);
        if changes.is_empty() {
            return Ok(None);
        }
        let rows = db::read_rows(client, &self.tracking).await?;
        let since =
            crate::drift::rows_since(&recorded.rows, rows.as_ref().map_or(&[], |t| &t.rows));
        let (changes, notes) = if since.is_empty() {
            (changes, Vec::new())
        } else {
            let other = self.other_tool(&since).await;
            let (by_hand, theirs) =
                crate::drift::attribute(changes, &recorded.description, &live, &other.named);
            let notes = crate::drift::SchemaDrift::notes(&other, since.len(), theirs);
            (by_hand, notes)
        };
        if changes.is_empty() {
            return Ok(None);
        }
        Ok(Some(crate::drift::SchemaDrift {
            changes,
            recorded_at: recorded.recorded_at,
            notes,
        }))
    }

    /// Warns of (or under `policy` "refuse" refuses) a schema changed outside migrations;
    /// under "refuse" a run the check cannot judge fails closed.
    async fn check_schema_drift(
        &self,
        client: &Client,
        policy: SchemaDrift,
        emit: &mut dyn FnMut(Event),
    ) -> Result<(), EngineError> {
        match self.schema_drift(client).await {
            Ok(None) => {}
            Ok(Some(drift)) => match policy {
                SchemaDrift::Warn => emit(Event::Warning {
                    message: drift.to_string(),
                }),
                SchemaDrift::Refuse => return Err(EngineError::SchemaDrift(drift)),
            },
            Err(e) if policy == SchemaDrift::Refuse => {
                return Err(EngineError::SchemaDriftUnchecked {
                    reason: e.to_string(),
                })
            }
            Err(e) => emit(Event::Warning {
                message: format!("the live schema was not compared with the recorded one: {e}"),
            }),
        }
        Ok(())
    }

    /// The migrations of the tracking `rows` another tool wrote, read from the folder (on the
    /// blocking pool); when it cannot be read, every row is unattributable.
    async fn other_tool(&self, rows: &[crate::plan::AppliedRow]) -> crate::drift::OtherTool {
        let dir = self.settings.migrations_dir.clone();
        let set = tokio::task::spawn_blocking(move || MigrationSet::load(&dir)).await;
        let why = match set {
            Ok(Ok(set)) => return crate::drift::other_tool(&set, rows),
            Ok(Err(e)) => e.to_string(),
            Err(e) => e.to_string(),
        };
        crate::drift::OtherTool {
            unattributable: rows
                .iter()
                .map(|r| {
                    format!(
                        "{} was written by another tool, and the migrations folder cannot be read ({why})",
                        crate::plan::describe_row(r)
                    )
                })
                .collect(),
            ..Default::default()
        }
    }

    /// Records the live schema as the one this run left, with the tracking rows it left.
    async fn record_schema(&self, client: &Client) -> Result<(), DbError> {
        // The fingerprint before the description: a change made in between is then described
        // and makes the next fingerprint differ, never the other way round.
        db::schema::prepare_record(client).await?;
        let fingerprint = db::schema::fingerprint(client).await?;
        let rows = db::read_rows(client, &self.tracking).await?;
        let ids: Vec<_> = rows
            .iter()
            .flat_map(|t| &t.rows)
            .map(crate::drift::RowIdentity::of)
            .collect();
        let tracking = self.tracking.qualified();
        db::schema::record(
            client,
            (&tracking, &self.tracking.schema),
            &fingerprint,
            &ids,
        )
        .await
    }

    /// Writes the run's row in the run history, after the run (its own transaction), or warns
    /// why it could not.
    async fn record(
        &self,
        client: &Client,
        log: RunLog,
        error: Option<&crate::protocol::ErrorReport>,
        emit: &mut dyn FnMut(Event),
    ) {
        let dir = self.settings.migrations_dir.clone();
        let commit = tokio::task::spawn_blocking(move || crate::history::source_commit(&dir))
            .await
            .ok()
            .flatten();
        let create = log.creates_table();
        let run = log.finish(error, self.tracking.qualified(), commit);
        // A failed run that committed migrations first also leaves the schema at a migration
        // boundary: recorded, its rows are not later taken for another tool's.
        let changed = error.is_none() || !run.migrations.is_empty();
        let message = match db::history::record(client, &run, create).await {
            Ok(Recorded::Written) if changed => match self.record_schema(client).await {
                Ok(()) => return,
                Err(e) => format!("the schema after this run was not recorded: {e}"),
            },
            other => match history_warning(other) {
                Some(message) => message,
                None => return,
            },
        };
        emit(Event::Warning { message });
    }

    /// After `restore` from `dump` (`error`: how it failed): its row in the run history
    /// (origin `restore`), and on success the restored schema recorded as the one to compare
    /// with (or, when it cannot be, the record forgotten), so the restore is not reported as
    /// drift. The warnings, for the caller to show.
    pub(crate) async fn record_restore(
        &self,
        client: &Client,
        log: RunLog,
        error: Option<&crate::protocol::ErrorReport>,
    ) -> Vec<String> {
        let mut warnings = Vec::new();
        if error.is_none() {
            if let Err(e) = self.record_schema(client).await {
                let forgot = db::schema::forget(client, &self.tracking.qualified()).await;
                warnings.push(match forgot {
                    Ok(()) => format!("the restored schema was not recorded ({e}); the next run records it"),
                    Err(f) => format!("the restored schema was not recorded ({e}) nor the old record removed ({f}): status may report the restore as drift until the next run"),
                });
            }
        }
        let run = log.finish(error, self.tracking.qualified(), None);
        let written = db::history::record(client, &run, true).await;
        warnings.extend(history_warning(written));
        warnings
    }

    async fn dry_run(
        &self,
        client: &Client,
        set: &MigrationSet,
        options: &RunOptions,
        emit: &mut dyn FnMut(Event),
    ) -> Result<RunSummary, EngineError> {
        let mut status = self.status(client, set, &options.plan).await?;
        let reread = texts_to_apply(set, &status.plan)?;
        if let Some(set) = &reread {
            status = self.status(client, set, &options.plan).await?;
        }
        self.check_unknown_rows(&status.plan.missing, emit)?;
        for message in status.notes.iter().cloned() {
            emit(Event::Warning { message });
        }
        let blockers = status.plan.blockers();
        if !blockers.is_empty() {
            return Err(EngineError::Drift(blockers));
        }
        refuse_transaction_control(&status.plan.to_apply().collect::<Vec<_>>()).map_err(|e| *e)?;
        let pending = pending_events(&status.plan);
        let count = pending.len();
        emit(Event::Pending {
            migrations: pending,
            dry_run: true,
        });
        if self.settings.rehearse == crate::config::Rehearse::Always && count > 0 {
            self.dry_run_rehearsal(client, set, options, emit).await?;
        }
        Ok(RunSummary {
            applied: Vec::new(),
            pending_before: count,
            upgraded_rows: 0,
        })
    }

    /// `migrate --dry-run --rehearse`: the release on a scratch copy of a temporary dump,
    /// under the run lock (no other run may drop the copy as a leftover meanwhile).
    async fn dry_run_rehearsal(
        &self,
        client: &Client,
        set: &MigrationSet,
        options: &RunOptions,
        emit: &mut dyn FnMut(Event),
    ) -> Result<(), EngineError> {
        let lock_wait = self.settings.lock_wait;
        db::acquire_lock(client, &self.tracking, lock_wait, |holder_pid| {
            emit(Event::WaitingForLock {
                holder_pid,
                max_wait_ms: lock_wait.as_millis() as u64,
            })
        })
        .await?;
        let mut unseen = |_: Event| {};
        let result = match self.prepare(client, set, options, &mut unseen).await {
            Ok(prepared) => {
                self.rehearse_before(client, set, options, &prepared, None, emit)
                    .await
            }
            Err(e) => Err(e),
        };
        let unlocked = db::release_lock(client, &self.tracking).await;
        result?;
        if let Err(e) = unlocked {
            tracing::warn!("{e}");
        }
        Ok(())
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
        let reread = self.texts_for_run(client, set, options).await?;
        let set = reread.as_ref().unwrap_or(set);
        let prepared = self.prepare(client, set, options, emit).await?;
        let upgrading = !prepared.table.upgrade.is_empty();
        let backup = self
            .backup_before(client, &prepared.to_apply, upgrading, options, emit)
            .await?;
        if let Some(stopped) = options.stop.stopped_at(StopPoint::AfterBackup) {
            return Err(stopped);
        }
        // Then the release on a scratch copy restored from that very dump.
        let dump = backup.as_ref().map(|(path, _)| path.as_path());
        self.rehearse_before(client, set, options, &prepared, dump, emit)
            .await?;
        if let Some(stopped) = options.stop.stopped_at(StopPoint::AfterRehearsal) {
            return Err(stopped);
        }
        // Only now change anything: the backup shows the database exactly as it was.
        let applied = self
            .change(client, set, &prepared, &options.stop, emit)
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
            pending_before: prepared.to_apply.len(),
            upgraded_rows: prepared.table.upgrade.len(),
        })
    }

    /// `None` when `set` has every file's text (the CLI's); else (the daemon keeps hashes and
    /// stamps only) the folder read again if a migration this run applies lacks its text.
    async fn texts_for_run(
        &self,
        client: &Client,
        set: &MigrationSet,
        options: &RunOptions,
    ) -> Result<Option<MigrationSet>, EngineError> {
        if !MigrationSet::lacks_texts(set.migrations.iter()) {
            return Ok(None);
        }
        let table = Table::new(set, db::read_rows(client, &self.tracking).await?)?;
        let plan = plan::plan(set, &table.rows, &options.plan);
        Ok(texts_to_apply(set, &plan)?)
    }

    /// The checks of a run, before the backup and any change: the role's rights, the plan
    /// (read under the lock: another run may have applied migrations meanwhile), rows of a
    /// newer database, drift, transaction control.
    async fn prepare<'s>(
        &self,
        client: &Client,
        set: &'s MigrationSet,
        options: &RunOptions,
        emit: &mut dyn FnMut(Event),
    ) -> Result<Prepared<'s>, EngineError> {
        // Before reading (which needs USAGE on the schema), the backup and any change.
        db::preflight::check(client, &self.tracking).await?;
        let table = Table::new(set, db::read_rows(client, &self.tracking).await?)?;
        let plan = plan::plan(set, &table.rows, &options.plan);
        self.check_unknown_rows(&plan.missing, emit)?;
        for message in line_ending_notes(&plan)
            .into_iter()
            .chain(out_of_order_notes(&plan))
            .chain(applied_order_notes(&plan))
        {
            emit(Event::Warning { message });
        }
        let blockers = plan.blockers();
        if !blockers.is_empty() {
            return Err(EngineError::Drift(blockers));
        }
        let to_apply: Vec<&Migration> = plan.to_apply().collect();
        // Refuse before the backup and before any change, not half-way.
        refuse_transaction_control(&to_apply).map_err(|e| *e)?;
        if let Some(policy) = drift_policy(self.settings.schema_drift, &to_apply, options) {
            self.check_schema_drift(client, policy, emit).await?;
        }
        if self.settings.transaction == TransactionMode::All {
            if let Some(m) = to_apply.iter().find(|m| m.no_transaction) {
                return Err(EngineError::NeedsOwnTransaction {
                    file: m.file_name.clone(),
                });
            }
        }
        let names = table.row_names(set)?;
        Ok(Prepared {
            plan,
            table,
            to_apply,
            names,
        })
    }

    /// Everything a run changes: the tracking table's upgrade and creation, accepted edits,
    /// the migrations. The migrations applied.
    async fn change(
        &self,
        client: &Client,
        set: &MigrationSet,
        prepared: &Prepared<'_>,
        stop: &StopSignal,
        emit: &mut dyn FnMut(Event),
    ) -> Result<Vec<String>, EngineError> {
        let table = &prepared.table;
        if !table.upgrade.is_empty() {
            db::upgrade_table(client, &self.tracking, &table.upgrade).await?;
            emit(Event::Warning {
                message: format!(
                    "upgraded the tracking table to Drizzle 1.0's shape (name, applied_at); named its {} rows",
                    table.upgrade.len()
                ),
            });
        }
        let version = match set.layout {
            Layout::Folders => TableVersion::V1,
            Layout::Journal => TableVersion::V0,
        };
        db::ensure_table(client, &self.tracking, version).await?;
        for (m, row) in prepared.plan.accepted_edits() {
            db::accept_edit(client, &self.tracking, row.id, &m.hash).await?;
            emit(Event::AcceptedEdit {
                migration: m.file_name.clone(),
            });
        }
        emit(Event::Pending {
            migrations: pending_events(&prepared.plan),
            dry_run: false,
        });
        let names = prepared.names.as_ref();
        self.apply_all(client, &prepared.to_apply, names, stop, emit)
            .await
    }

    /// Rows that match no migration on disk: the database is newer than this code. Warned
    /// about, or (`unknown_rows = "refuse"`) refused with [`NewerDatabase`] before any change.
    pub fn check_unknown_rows(
        &self,
        missing: &[AppliedRow],
        emit: &mut dyn FnMut(Event),
    ) -> Result<(), NewerDatabase> {
        match self.settings.unknown_rows {
            _ if missing.is_empty() => Ok(()),
            UnknownRows::Warn => {
                warn_missing(missing, emit);
                Ok(())
            }
            UnknownRows::Refuse => Err(NewerDatabase {
                rows: missing.to_vec(),
            }),
        }
    }

    /// The dump before a run that applies something (unless backups are off), and the
    /// database it is of.
    async fn backup_before(
        &self,
        client: &Client,
        to_apply: &[&Migration],
        upgrading: bool,
        options: &RunOptions,
        emit: &mut dyn FnMut(Event),
    ) -> Result<Option<(PathBuf, String)>, EngineError> {
        let label = match to_apply.first() {
            Some(first) => format!("before-{}", first.tag),
            None if upgrading => "before-table-upgrade".to_string(),
            None => return Ok(None),
        };
        if !self.settings.backup.enabled || options.no_backup {
            return Ok(None);
        }
        emit(Event::BackingUp {
            migrations: to_apply.len(),
        });
        // Dropping the dump's future kills pg_dump and removes its partial file.
        let dump = crate::backup::take(&self.settings.backup, self.pg, client, &label);
        let b = tokio::select! {
            taken = dump => taken?,
            () = options.stop.now() => return Err(EngineError::Stopped {
                at: StopPoint::DuringBackup,
                committed: 0,
            }),
        };
        emit(Event::BackedUp {
            path: b.path.clone(),
            bytes: b.bytes,
            ms: b.ms,
        });
        Ok(Some((b.path, b.database)))
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
        names: Option<&HashMap<String, String>>,
        stop: &StopSignal,
        emit: &mut dyn FnMut(Event),
    ) -> Result<Vec<String>, EngineError> {
        // `apply_locked` has refused no-transaction files under `transaction = "all"`.
        let all = self.settings.transaction == TransactionMode::All;
        if all && !to_apply.is_empty() {
            db::batch_transaction(client, "BEGIN", "opening the run's transaction").await?;
        }
        let mut applied = Vec::with_capacity(to_apply.len());
        let mut timings = Vec::with_capacity(to_apply.len());
        for (i, m) in to_apply.iter().enumerate() {
            if stop.requested() {
                return Err(self.stopped_before(client, m, applied.len(), all).await);
            }
            let started = Instant::now();
            let commit = if i + 1 == to_apply.len() {
                Commit::Flushed
            } else {
                Commit::Deferred
            };
            let txn = if all { Txn::Outer } else { Txn::Own(commit) };
            let name = names.and_then(|n| n.get(&m.tag)).map(String::as_str);
            let result = self.apply_one(client, m, name, txn, emit).await;
            if let Err(failure) = result {
                return Err(self.failed(client, m, failure, applied.len(), all).await);
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
            self.check_lock_kept(client, m, all, applied.len()).await?;
        }
        if all && !to_apply.is_empty() {
            db::batch_transaction(client, "COMMIT", "committing the run's transaction").await?;
            for (migration, ms) in timings {
                emit(Event::Applied { migration, ms });
            }
        }
        Ok(applied)
    }

    /// The error for migration `m` failing after `applied` migrations of this run: rolls back
    /// the run's transaction under `transaction = "all"`, makes committed work durable, and
    /// finds out what is committed (never less than is) and the timeout of a cancel.
    async fn failed(
        &self,
        client: &Client,
        m: &Migration,
        mut failure: StatementFailure,
        applied: usize,
        all: bool,
    ) -> EngineError {
        if all {
            let _ = db::batch_transaction(client, "ROLLBACK", "rolling back").await;
            failure.check_committed(client).await;
        }
        // A migration that committed the run's transaction itself committed the earlier
        // migrations of the run (and their rows) with it.
        let rolled_back = all && failure.transaction_ended != Some(true);
        if !rolled_back && applied > 0 && !failure.failure.connection_lost {
            // Make the earlier asynchronous commits durable before we say they stay.
            let _ = db::flush_commits(client).await;
        }
        let committed = if rolled_back { 0 } else { applied };
        let timeout = self.timeout_in_force(client, &failure).await;
        let mut e = self.apply_error(m, failure, committed, rolled_back);
        if let EngineError::Apply(a) = &mut e {
            a.statement_timeout = timeout;
        }
        e
    }

    /// The stop before migration `m`, after `applied` migrations of this run: rolls back the
    /// run's transaction under `transaction = "all"` (then nothing of the run stays), else
    /// makes the committed ones durable.
    async fn stopped_before(
        &self,
        client: &Client,
        m: &Migration,
        applied: usize,
        all: bool,
    ) -> EngineError {
        if all {
            let _ = db::batch_transaction(client, "ROLLBACK", "rolling back").await;
        } else if applied > 0 {
            let _ = db::flush_commits(client).await;
        }
        EngineError::Stopped {
            at: StopPoint::BeforeMigration(m.file_name.clone()),
            committed: if all { 0 } else { applied },
        }
    }

    /// Stops the run when the migration just applied released our run lock: another run may
    /// already hold it, and must never apply at the same time as this one.
    async fn check_lock_kept(
        &self,
        client: &Client,
        m: &Migration,
        all: bool,
        applied: usize,
    ) -> Result<(), EngineError> {
        if db::holds_lock(client, &self.tracking).await? {
            return Ok(());
        }
        if all {
            let _ = db::batch_transaction(client, "ROLLBACK", "rolling back").await;
        } else {
            // Make the asynchronous commits durable before we say they stay.
            let _ = db::flush_commits(client).await;
        }
        Err(EngineError::LockReleased {
            file: m.file_name.clone(),
            committed: if all { 0 } else { applied },
            all_rolled_back: all,
        })
    }

    /// Applies one migration, trying again after a lock timeout that left nothing behind.
    async fn apply_one(
        &self,
        client: &Client,
        m: &Migration,
        name: Option<&str>,
        txn: Txn,
        emit: &mut dyn FnMut(Event),
    ) -> Result<(), StatementFailure> {
        let limits = Limits {
            lock_timeout: self.settings.lock_timeout,
            statement_timeout: self.settings.statement_timeout,
        };
        let mut attempt = 0;
        loop {
            match db::apply_migration(client, &self.tracking, m, name, limits, txn).await {
                Err(f) if self.may_retry(&f, txn, attempt) => {
                    attempt += 1;
                    // 1 s, 2 s, 4 s, ... capped at 30 s: the application's transaction that
                    // holds the lock usually ends quickly.
                    let delay =
                        Duration::from_secs(1 << (attempt - 1).min(5)).min(Duration::from_secs(30));
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
                other => return other,
            }
        }
    }

    /// A lock timeout leaves nothing behind (the migration rolled back), so it is safe to try
    /// again, up to `lock_retries` times. Not in `transaction = "all"`, where the whole run's
    /// transaction is already aborted.
    fn may_retry(&self, f: &StatementFailure, txn: Txn, attempt: u32) -> bool {
        matches!(txn, Txn::Own(_))
            && attempt < self.settings.lock_retries
            && crate::diagnosis::is_retryable_lock_timeout(f)
    }

    /// For a statement cancelled by the server (57014): the `statement_timeout` it ran under,
    /// ours when configured, else the session's as PostgreSQL reports it.
    async fn timeout_in_force(
        &self,
        client: &Client,
        f: &StatementFailure,
    ) -> Option<db::TimeoutInForce> {
        if f.failure.sqlstate.as_deref() != Some("57014") || f.failure.connection_lost {
            return None;
        }
        match self.settings.statement_timeout {
            Some(t) => Some(db::TimeoutInForce {
                value: if t.is_zero() {
                    "0".into()
                } else {
                    humantime::format_duration(t).to_string()
                },
                source: "vamsa-migrate".into(),
            }),
            None => db::statement_timeout_in_force(client).await,
        }
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
            statement_summary: statement.map(|s| summarize(s.sql)),
            line: statement.map(|s| db::line_of_position(&s, f.failure.position)),
            no_transaction_completed: m.no_transaction.then_some(f.completed_outside_transaction),
            failure: f.failure,
            during_commit: f.during_commit,
            committed,
            all_rolled_back: all,
            backup: None,
            lock_timeout: self.settings.lock_timeout,
            transaction_ended: f.transaction_ended,
            invalid_indexes: f.invalid_indexes,
            statement_timeout: None,
        }))
    }
}

/// `None` when every migration `plan` would apply has its text; else the folder read again with
/// the texts (the daemon keeps only hashes and stamps between runs: `MigrationSet::without_texts`),
/// to plan again: a file may have changed since.
/// What to tell about a run history row that was not written (`None`: nothing to tell).
fn history_warning(written: Result<Recorded, DbError>) -> Option<String> {
    match written {
        Ok(Recorded::Written | Recorded::NoTable) => None,
        Ok(Recorded::Off { reason, fix }) => Some(format!(
            "run history is off: {reason}; to keep it, an admin runs: {fix}"
        )),
        Err(e) => Some(format!("run history: this run was not recorded: {e}")),
    }
}

fn texts_to_apply(set: &MigrationSet, plan: &Plan) -> Result<Option<MigrationSet>, SourceError> {
    if !MigrationSet::lacks_texts(plan.to_apply()) {
        return Ok(None);
    }
    Ok(Some(set.with_texts()?))
}

/// Refuses a transactional migration with a top-level transaction-control statement (it would
/// end the transaction vamsa-migrate runs it in, so a failure later in it could not be rolled
/// back): the first one found, with its line.
fn refuse_transaction_control(to_apply: &[&Migration]) -> Result<(), Box<EngineError>> {
    for m in to_apply.iter().filter(|m| !m.no_transaction) {
        for s in &m.statements {
            if let Some((offset, statement)) = crate::sqlscan::transaction_control(s.sql) {
                return Err(Box::new(EngineError::TransactionControl {
                    file: m.file_name.clone(),
                    line: s.sql_start_line + s.sql[..offset].matches('\n').count(),
                    statement,
                }));
            }
        }
    }
    Ok(())
}

fn pending_events(plan: &Plan<'_>) -> Vec<PendingMigration> {
    plan.items
        .iter()
        .filter_map(|item| match item.state {
            State::Pending { drizzle_would_skip } => {
                Some(pending_migration(item.migration, drizzle_would_skip))
            }
            State::OutOfOrder { allowed: true } => Some(pending_migration(
                item.migration,
                plan.layout == Layout::Journal,
            )),
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

/// How a run treats a schema changed outside migrations, or `None` when it does not compare:
/// a run that applies something follows `schema_drift` (a release must not go on top of a hand
/// change unnoticed); the daemon's start-up with nothing to apply only warns (the journal says
/// so once per boot, and refusing would keep the application down over a change nothing would
/// touch). Any other run with nothing to apply changes nothing and does not compare: the
/// description is a catalog walk that grows with the schema (about 0.5 s at 2,000 tables), so
/// `migrate` when up to date leaves it to `status` and `verify`.
fn drift_policy(
    setting: SchemaDrift,
    to_apply: &[&Migration],
    options: &RunOptions,
) -> Option<SchemaDrift> {
    if !to_apply.is_empty() {
        Some(setting)
    } else if options.origin == crate::protocol::Origin::Startup {
        Some(SchemaDrift::Warn)
    } else {
        None
    }
}
