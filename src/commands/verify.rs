//! `verify`: read-only checks, for a person or the daily `vamsa-migrate-verify.timer`:
//!
//! 1. `migrations`: the folder against the tracking table, as `status` reads them
//!    ([`super::status::folder_report`]): nothing pending, no edited file, hole or row
//!    matching no file;
//! 2. `schema`: the live schema against the one recorded after the last run
//!    ([`Engine::schema_drift`]); skipped when none is recorded
//!    ([`db::schema_record::record_state`]), saying why;
//! 3. `backup`: the newest of this database's dumps in `backup_dir` (as `backups` lists them)
//!    reads back (`pg_restore --list`, PostgreSQL 15: its table of contents is not empty), its
//!    header names this database (as `restore` checks), and it holds data (`TABLE DATA`
//!    entries); with `--deep` it is restored into a scratch database
//!    ([`scratch::Purpose::Verify`]), whose tracking table is checked against the dump's name
//!    and the live table, and which is dropped (also when the command is stopped: a
//!    [`scratch::Guard`]).
//!
//! It writes nothing to the database: no lock (the scratch database's advisory lock is not
//! the run lock and writes nothing), no history row, no schema record.

use std::collections::HashMap;
use std::fs;
use std::io;

use serde::Serialize;
use tokio_postgres::Client;

use crate::backup::{human_bytes, BackupError, Listed};
use crate::config::Settings;
use crate::db::schema_record::RecordState;
use crate::db::{self, scratch, Tracking};
use crate::engine::{Engine, EngineError};
use crate::exit::Outcome;
use crate::libpq::ConnParams;
use crate::protocol::{ErrorKind, ErrorReport, MigrationState};
use crate::report::{self, outln, Format};
use crate::source::MigrationSet;

use super::show_error;

/// One check's result, as a line (`schema: FAILED: ...`) or a JSON object.
#[derive(Debug, Serialize)]
pub(crate) struct Check {
    /// `migrations`, `schema` or `backup`.
    check: &'static str,
    #[serde(flatten)]
    verdict: Verdict,
    /// Lines under the check: the migrations at fault, the schema's changes.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    details: Vec<String>,
    /// The error report (kind, message, SQLSTATE, cause, next step) of an error that kept
    /// every check from running: the folder, the configuration, the connection.
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<ErrorReport>,
}

/// `result`: `ok`, `skipped` or `failed`.
#[derive(Debug, Serialize)]
#[serde(tag = "result", rename_all = "lowercase")]
enum Verdict {
    Ok {
        summary: String,
    },
    Skipped {
        reason: String,
    },
    Failed {
        why: String,
        next_step: String,
        #[serde(skip)]
        fault: Fault,
    },
}

/// What a failed check means for the exit code; the most serious decides it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Fault {
    /// Migrations pending (exit 3, as `status`).
    Pending,
    /// The backup is missing or does not restore, or a check could not read what it checks
    /// (exit 1).
    Failed,
    /// An edited file, a hole, a row matching no file, or the schema changed by hand (exit 4).
    Drift,
}

/// Why a check failed, and what to do.
struct Fail {
    why: String,
    next_step: String,
}

impl From<EngineError> for Fail {
    fn from(e: EngineError) -> Fail {
        let report = crate::diagnosis::report(&e);
        Fail {
            why: report.message,
            next_step: report.hint,
        }
    }
}

impl From<db::DbError> for Fail {
    fn from(e: db::DbError) -> Fail {
        Fail::from(EngineError::from(e))
    }
}

/// The whole report of `--format json`: one line.
#[derive(Serialize)]
struct VerifyReport<'a> {
    ok: bool,
    checks: &'a [Check],
}

/// Runs the three checks and shows them; exit 0 when none failed (a skipped one did not).
pub(crate) async fn run(
    settings: &Settings,
    env: &HashMap<String, String>,
    deep: bool,
    format: Format,
) -> Outcome {
    let set = match MigrationSet::load(&settings.migrations_dir) {
        Ok(set) => set,
        Err(e) => return cannot_check("migrations", e.into(), format),
    };
    let pg = match settings.pg_config(env) {
        Ok(pg) => pg,
        Err(e) => return cannot_check("connection", e.into(), format),
    };
    let engine = Engine::new(settings, &pg);
    let client = match engine.connect().await {
        Ok(client) => client,
        Err(e) => return cannot_check("connection", e.into(), format),
    };
    let backups = Backups {
        settings,
        pg: &pg,
        tracking: &engine.tracking,
        set: &set,
    };
    let checks = [
        folder_check(&engine, &client, &set).await,
        schema_check(&engine, &client).await,
        backup_check(&backups, &client, deep).await,
    ];
    show(&checks, format);
    outcome(&checks)
}

/// An error that keeps every check from running (`check`: what it kept from being read). In
/// JSON the documented [`VerifyReport`], with that one check failed and carrying the error
/// report; for a person the error block. The exit code is the error's, as for other commands.
fn cannot_check(check: &'static str, e: EngineError, format: Format) -> Outcome {
    if format == Format::Human {
        return show_error(&e, format);
    }
    let report = crate::diagnosis::report(&e);
    let verdict = Verdict::Failed {
        why: report.message.clone(),
        next_step: report.hint.clone(),
        fault: Fault::Failed,
    };
    let checks = [Check {
        check,
        verdict,
        details: Vec::new(),
        error: Some(report),
    }];
    show(&checks, format);
    Outcome::Failed(e.kind())
}

fn outcome(checks: &[Check]) -> Outcome {
    let worst = checks
        .iter()
        .filter_map(|c| match c.verdict {
            Verdict::Failed { fault, .. } => Some(fault),
            _ => None,
        })
        .max();
    match worst {
        None => Outcome::Success,
        Some(Fault::Pending) => Outcome::Pending,
        Some(Fault::Failed) => Outcome::Failed(ErrorKind::Backup),
        Some(Fault::Drift) => Outcome::Drift,
    }
}

/// Human: a line per check (failed ones and their details on stderr, so the journal has them
/// at priority "err"), then a summary. JSON: one [`VerifyReport`] line.
fn show(checks: &[Check], format: Format) {
    let failed = checks
        .iter()
        .filter(|c| matches!(c.verdict, Verdict::Failed { .. }))
        .count();
    if format == Format::Json {
        let ok = failed == 0;
        let _ = report::write_json_line(&mut io::stdout(), &VerifyReport { ok, checks });
        return;
    }
    for c in checks {
        match &c.verdict {
            Verdict::Ok { summary } => outln!("{}: ok ({summary})", c.check),
            Verdict::Skipped { reason } => outln!("{}: skipped: {reason}", c.check),
            Verdict::Failed { why, next_step, .. } => {
                eprintln!("{}: FAILED: {why}; next step: {next_step}", c.check);
                for d in &c.details {
                    eprintln!("  {d}");
                }
            }
        }
    }
    match failed {
        0 => outln!("Verified: all checks passed."),
        n => eprintln!("Verify: {n} of {} checks failed.", checks.len()),
    }
}

fn ok(check: &'static str, summary: String) -> Check {
    Check {
        check,
        verdict: Verdict::Ok { summary },
        details: Vec::new(),
        error: None,
    }
}

fn skipped(check: &'static str, reason: String) -> Check {
    Check {
        check,
        verdict: Verdict::Skipped { reason },
        details: Vec::new(),
        error: None,
    }
}

fn failed(check: &'static str, fault: Fault, fail: Fail, details: Vec<String>) -> Check {
    let verdict = Verdict::Failed {
        why: fail.why,
        next_step: fail.next_step,
        fault,
    };
    Check {
        check,
        verdict,
        details,
        error: None,
    }
}

/// The folder against the tracking table, as `status` reads them.
async fn folder_check(engine: &Engine<'_>, client: &Client, set: &MigrationSet) -> Check {
    const CHECK: &str = "migrations";
    let report = match super::status::folder_report(engine, client, set).await {
        Ok(report) => report,
        Err(e) => return failed(CHECK, Fault::Failed, e.into(), Vec::new()),
    };
    let mut at_fault: Vec<String> = report
        .migrations
        .iter()
        .filter(|r| !matches!(r.state, MigrationState::Applied | MigrationState::Pending))
        .map(|r| {
            let note = r
                .note
                .as_deref()
                .map_or(String::new(), |n| format!(" ({n})"));
            format!("{} {}{note}", r.state.name(), r.migration)
        })
        .collect();
    at_fault.extend(
        report
            .missing_on_disk
            .iter()
            .map(|r| format!("missing: row {} matches no migration on disk", r.id)),
    );
    if report.drift {
        let fail = Fail {
            why: format!(
                "the folder and the tracking table disagree ({} at fault)",
                at_fault.len()
            ),
            next_step: "`vamsa-migrate status` shows each with what to do".into(),
        };
        return failed(CHECK, Fault::Drift, fail, at_fault);
    }
    if report.pending > 0 {
        let pending: Vec<&str> = report
            .migrations
            .iter()
            .filter(|r| r.state == MigrationState::Pending)
            .map(|r| r.migration.as_str())
            .collect();
        let fail = Fail {
            why: format!("{} pending: {}", pending.len(), pending.join(", ")),
            next_step:
                "apply them: `vamsa-migrate migrate` (or `vamsa-migrate trigger` with the daemon)"
                    .into(),
        };
        return failed(CHECK, Fault::Pending, fail, Vec::new());
    }
    ok(CHECK, format!("{} applied, none pending", report.applied))
}

/// The live schema against the one recorded after the last run; skipped when none is recorded
/// (nothing to compare with: before the first run that records it, with the run history off,
/// or on a database only Drizzle's migrator ran on).
async fn schema_check(engine: &Engine<'_>, client: &Client) -> Check {
    const CHECK: &str = "schema";
    let tracking = engine.tracking.qualified();
    let recorded_at = match db::schema_record::record_state(client, &tracking).await {
        Ok(RecordState::At(at)) => at,
        Ok(state) => return skipped(CHECK, not_recorded(state)),
        Err(e) => return not_compared(client, e).await,
    };
    match engine.schema_drift(client).await {
        Ok(None) => ok(
            CHECK,
            format!(
                "no change outside migrations since the last run recorded it, {recorded_at} UTC"
            ),
        ),
        Ok(Some(drift)) => {
            let fail = Fail {
                why: format!(
                    "the schema was changed outside migrations since the last run (recorded {} UTC): {}",
                    drift.recorded_at,
                    counted(drift.changes.len(), "change")
                ),
                next_step: "put the hand change into a migration (the next run records it), or undo it".into(),
            };
            let details = drift
                .changes
                .iter()
                .map(ToString::to_string)
                .chain(drift.notes.iter().map(|n| format!("note: {n}")))
                .collect();
            failed(CHECK, Fault::Drift, fail, details)
        }
        Err(e) => not_compared(client, e).await,
    }
}

/// Why there is nothing to compare the live schema with, and what records it.
fn not_recorded(state: RecordState) -> String {
    const NOTHING: &str = "nothing was compared";
    match state {
        RecordState::EarlierFormat => format!(
            "the schema was recorded by an earlier version of vamsa-migrate, so {NOTHING} (the next run that applies a migration records it again)"
        ),
        RecordState::None { history_off: Some((reason, fix)) } => format!(
            "no schema recorded, so {NOTHING} (runs record it with the run history, which is off for this role: {reason}; once an admin runs {fix} the next run that applies a migration records it)"
        ),
        _ => format!(
            "no schema recorded, so {NOTHING} (a run by vamsa-migrate that applies a migration, or a restore, records it; none has here yet, e.g. only Drizzle's migrator ran)"
        ),
    }
}

/// The schema check failed because the record or the catalogs could not be read.
async fn not_compared(client: &Client, e: db::DbError) -> Check {
    let e = EngineError::from(e);
    let denied = e.sqlstate() == Some("42501");
    let mut fail = Fail::from(e);
    fail.why = format!(
        "the live schema was not compared with the recorded one: {}",
        fail.why
    );
    if denied {
        // As `status` says it: the role may not read our schema.
        fail.next_step = format!(
            "an admin runs: {}",
            db::history::read_grants(&db::quote_ident(&super::status::current_user(client).await))
        );
    }
    failed("schema", Fault::Failed, fail, Vec::new())
}

/// `1 change`, `2 changes`.
fn counted(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// What the backup check reads besides the connection.
struct Backups<'a> {
    settings: &'a Settings,
    pg: &'a ConnParams,
    tracking: &'a Tracking,
    set: &'a MigrationSet,
}

/// The newest backup of this database: reads back, and with `deep` restores.
async fn backup_check(b: &Backups<'_>, client: &Client, deep: bool) -> Check {
    const CHECK: &str = "backup";
    if !b.settings.backup.enabled {
        return skipped(CHECK, "backups off (backup_enabled = false)".into());
    }
    match newest_backup(b, client, deep).await {
        Ok(summary) => ok(CHECK, summary),
        Err(fail) => failed(CHECK, Fault::Failed, fail, Vec::new()),
    }
}

fn take_a_new_one(why: String) -> Fail {
    Fail {
        why,
        next_step:
            "take a new backup: `vamsa-migrate backup` (keep this file to find out what damaged it)"
                .into(),
    }
}

async fn newest_backup(b: &Backups<'_>, client: &Client, deep: bool) -> Result<String, Fail> {
    let db = db::database(client).await?;
    let newest = find_newest(b, &db.name)?;
    let path = newest.path.display();
    let file = fs::File::open(&newest.path)
        .map_err(|e| take_a_new_one(format!("{path} cannot be opened: {e}")))?;
    let toc = match crate::backup::table_of_contents(&file, db.server_major).await {
        Ok(toc) => toc,
        Err(BackupError::Verify { reason }) => {
            let why = format!("{path} does not read back: pg_restore --list failed: {reason}");
            return Err(take_a_new_one(why));
        }
        Err(e) => return Err(take_a_new_one(format!("{path}: {e}"))),
    };
    let first = b.set.migrations.first().map(|m| m.tag.as_str());
    let of_empty = first.is_some_and(|tag| newest.label.strip_prefix("before-") == Some(tag));
    let entries = check_toc(&path.to_string(), &toc, (&db.name, of_empty), b.tracking)?;
    let mut summary = format!("{path}, {}, {entries} entries", human_bytes(newest.bytes));
    if deep {
        let restored = restore_check(b, client, db.server_major, &newest, &file, &toc).await?;
        summary.push_str(&format!("; {restored}"));
    }
    Ok(summary)
}

/// The newest of `database`'s dumps in backup_dir, as `backups` lists them.
fn find_newest(b: &Backups<'_>, database: &str) -> Result<Listed, Fail> {
    let dir = &b.settings.backup.dir;
    let listed = crate::backup::list(dir).map_err(|e| Fail {
        why: format!("backup_dir {} cannot be read: {e}", dir.display()),
        next_step: "let this user read backup_dir (the units run as vamsa-migrate)".into(),
    })?;
    listed
        .into_iter()
        .rfind(|l| crate::backup::is_of(l, database))
        .ok_or_else(|| Fail {
            why: format!("no backup of the database {database} in {}", dir.display()),
            next_step: "take one: `vamsa-migrate backup`".into(),
        })
}

/// The entries of a table of contents (`215; 1259 16386 TABLE public persons postgres`), each
/// from its description on (`TABLE public persons postgres`); comments left out.
fn toc_entries(toc: &str) -> Vec<&str> {
    toc.lines()
        .filter(|l| !l.starts_with(';') && !l.trim().is_empty())
        .map(|l| l.splitn(4, ' ').nth(3).unwrap_or(l))
        .collect()
}

/// What the dump's table of contents must show for `restore` to take it and for it to hold
/// the data: taken of `database` (its header, the check `restore` makes), not empty, and with
/// data (`TABLE DATA`) for its tables and for the tracking table when it lists them (a
/// `pg_dump --schema-only` lists none, PostgreSQL 15). Empty is right for a dump taken before
/// the folder's first migration (`of_empty`: the first run's backup of a new, empty database).
/// The number of entries.
fn check_toc(
    path: &str,
    toc: &str,
    (database, of_empty): (&str, bool),
    tracking: &Tracking,
) -> Result<usize, Fail> {
    match crate::backup::toc_database(toc) {
        Some(of) if of == database => {}
        of => {
            return Err(Fail {
                why: format!(
                    "{path} is a dump of the database {}, not of {database} (its header says so, whatever its file is called): `vamsa-migrate restore` refuses it",
                    of.unwrap_or("(none named in its header)")
                ),
                next_step: "move it out of backup_dir, and take a backup of this database: `vamsa-migrate backup`".into(),
            })
        }
    }
    let entries = toc_entries(toc);
    if entries.is_empty() && !of_empty {
        let why = format!("{path} holds nothing: its table of contents is empty");
        return Err(take_a_new_one(why));
    }
    let has = |prefix: &str| entries.iter().any(|e| e.starts_with(prefix));
    let (schema, table) = (&tracking.schema, &tracking.table);
    let no_data = if has(&format!("TABLE {schema} {table} "))
        && !has(&format!("TABLE DATA {schema} {table} "))
    {
        Some(format!(
            "it lists the tracking table {} but not its data",
            tracking.qualified()
        ))
    } else if entries
        .iter()
        .any(|e| e.starts_with("TABLE ") && !e.starts_with("TABLE DATA "))
        && !has("TABLE DATA ")
    {
        Some("it lists tables but no TABLE DATA".to_string())
    } else {
        None
    };
    match no_data {
        Some(what) => Err(Fail {
            why: format!("{path} holds no data (taken with --schema-only?): {what}"),
            next_step: "take a backup with the data: `vamsa-migrate backup`".into(),
        }),
        None => Ok(entries.len()),
    }
}

/// Restores the dump into a new scratch database, reads its tracking table, drops it.
async fn restore_check(
    b: &Backups<'_>,
    client: &Client,
    server_major: u32,
    newest: &Listed,
    file: &fs::File,
    toc: &str,
) -> Result<String, Fail> {
    let source = scratch::source(client).await?;
    if !source.may_create {
        return Err(Fail {
            why: format!(
                "--deep restores into a scratch database, and the role {} may not create databases",
                source.role
            ),
            next_step: format!(
                "ALTER ROLE {} CREATEDB, or verify without --deep",
                db::quote_ident(&source.role)
            ),
        });
    }
    if !scratch::try_lock(client, scratch::Purpose::Verify, b.tracking).await? {
        return Err(Fail {
            why: "another `verify --deep` of this database is restoring its backup now".into(),
            next_step: "run it again once that one is done".into(),
        });
    }
    drop_leftovers(client, source.oid).await;
    let name = scratch::create(client, &source, scratch::Purpose::Verify).await?;
    let guard = scratch::Guard::new(b.pg, &name);
    let rows = restore_and_count(b, server_major, &name, file).await;
    match scratch::drop(client, &name).await {
        Ok(()) => guard.disarm(),
        Err(e) => tracing::warn!("{e}; trying once more from a new connection"),
    }
    let rows = rows?;
    let live = db::read_rows(client, b.tracking)
        .await?
        .map_or(0, |t| t.rows.len());
    expected_rows(b, newest, toc, RowCounts { rows, live })
}

/// The tracking rows of the restored copy (`None`: no tracking table) and of the live
/// database.
struct RowCounts {
    rows: Option<i64>,
    live: usize,
}

/// Drops the scratch databases a killed `verify --deep` left (this session holds the lock of
/// `verify`'s scratch databases); a failure to drop one is only a warning.
async fn drop_leftovers(client: &Client, oid: u32) {
    let names = match scratch::leftovers(client, scratch::Purpose::Verify, oid).await {
        Ok(names) => names,
        Err(e) => return tracing::warn!("{e}"),
    };
    for name in names {
        match scratch::drop(client, &name).await {
            Ok(()) => {
                tracing::info!("dropped the scratch database {name}, left by a killed verify")
            }
            Err(e) => tracing::warn!("{e} ({name}, left by a killed verify)"),
        }
    }
}

/// Restores `file` into the scratch database `name`: the number of rows of its tracking
/// table, or `None` when it has none.
async fn restore_and_count(
    b: &Backups<'_>,
    server_major: u32,
    name: &str,
    file: &fs::File,
) -> Result<Option<i64>, Fail> {
    if let Err(e) = crate::backup::restore_into_new(b.pg, server_major, name, file).await {
        let why = match e {
            BackupError::Restore { status, stderr } => {
                format!("pg_restore failed ({status}): {stderr}")
            }
            e => e.to_string(),
        };
        let why = format!("the newest backup does not restore into a scratch database: {why}");
        return Err(take_a_new_one(why));
    }
    let mut pg = b.pg.clone();
    pg.driver.dbname(name);
    let copy = db::connect(&pg).await?;
    Ok(scratch::tracking_rows(&copy, b.tracking).await?)
}

/// Whether the restored copy's tracking table is what the dump says: present when its table
/// of contents lists it, with rows when the dump was taken before a migration other than the
/// folder's first (so after earlier ones), and with rows when the live table has some, unless
/// the dump was taken before the first migration (restoring it would undo every migration).
fn expected_rows(
    b: &Backups<'_>,
    newest: &Listed,
    toc: &str,
    copy: RowCounts,
) -> Result<String, Fail> {
    let table = format!(" TABLE {} {} ", b.tracking.schema, b.tracking.table);
    let listed = toc.lines().any(|l| l.contains(&table));
    let before = newest.label.strip_prefix("before-");
    let later = before.filter(|tag| {
        b.set
            .migrations
            .first()
            .is_some_and(|first| first.tag != *tag)
    });
    let tracking = b.tracking.qualified();
    let wrong = |what: String| {
        Err(take_a_new_one(format!(
            "the newest backup restored, but {what}"
        )))
    };
    let dropped = "restored into a scratch database (dropped since)";
    match copy.rows {
        None if listed || later.is_some() => wrong(format!("the copy has no tracking table {tracking}")),
        Some(0) if later.is_some() => wrong(format!(
            "its tracking table {tracking} is empty, though it was taken before {}, after earlier migrations",
            later.unwrap_or_default()
        )),
        None | Some(0) if copy.live > 0 && before.is_none() => wrong(format!(
            "it has no tracking rows while the live table {tracking} has {}: restoring it would undo every applied migration",
            copy.live
        )),
        None => Ok(format!("{dropped}: no tracking table, taken before the first migration")),
        Some(0) if before.is_some() => Ok(format!("{dropped}: 0 tracking rows, taken before the first migration")),
        Some(0) => Ok(format!("{dropped}: 0 tracking rows, as the live table")),
        Some(n) => Ok(format!(
            "{dropped}: {}",
            counted(usize::try_from(n).unwrap_or(0), "tracking row")
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failing(fault: Fault) -> Check {
        let fail = Fail {
            why: "why".into(),
            next_step: "next".into(),
        };
        failed("x", fault, fail, Vec::new())
    }

    #[test]
    fn the_most_serious_failure_decides_the_exit_code() {
        let code = |checks: Vec<Check>| outcome(&checks).code();
        assert_eq!(code(vec![ok("a", String::new())]), 0);
        assert_eq!(code(vec![failing(Fault::Pending)]), 3);
        assert_eq!(
            code(vec![failing(Fault::Pending), failing(Fault::Failed)]),
            1
        );
        assert_eq!(
            code(vec![
                failing(Fault::Failed),
                failing(Fault::Drift),
                failing(Fault::Pending)
            ]),
            4
        );
    }
}
