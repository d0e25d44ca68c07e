//! `restore [FILE | --latest | --before MIGRATION]`: Vamsa's guide's "Step 3" as one command.
//! Only a dump vamsa-migrate made of this database, read back with `pg_restore --list` before
//! anything is dropped; under the run lock (so no run applies meanwhile); refused while other
//! sessions are connected unless `--force`; confirmed on a terminal or with `--yes`. Then the
//! objects the dump does not hold are dropped and `pg_restore --clean --if-exists
//! --single-transaction --exit-on-error` restores it; the tracking table then says which
//! migrations are pending and which code matches.

use std::collections::HashMap;
use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;

use tokio_postgres::Client;

use crate::backup::{self, BackupError, Listed};
use crate::config::Settings;
use crate::db;
use crate::db::restore::{self as dbr, Session};
use crate::engine::{Engine, EngineError};
use crate::exit::Outcome;
use crate::plan::{PlanOptions, State};
use crate::protocol::ErrorKind;

/// Which dump (neither `file` nor `before`: the newest, `--latest`), and how far to go.
#[derive(Debug, Clone, Default)]
pub(crate) struct RestoreArgs {
    pub(crate) file: Option<PathBuf>,
    /// A migration's tag or file name: the dump taken before it.
    pub(crate) before: Option<String>,
    pub(crate) force: bool,
    pub(crate) yes: bool,
}

#[derive(Debug, thiserror::Error)]
enum RestoreError {
    #[error("{0}")]
    Engine(#[from] Box<EngineError>),
    #[error("no dump to restore: {0}")]
    NoDump(String),
    #[error("{} is not a dump vamsa-migrate made (its name is not <database>-<time>-before-<migration>.dump or -manual.dump)", .0.display())]
    NotOurs(PathBuf),
    #[error("{} is a dump of database {dump}, not of {database}", .path.display())]
    OtherDatabase {
        path: PathBuf,
        dump: String,
        database: String,
    },
    #[error("{} cannot be restored: {source}", .path.display())]
    Corrupt { path: PathBuf, source: BackupError },
    #[error("{} other session(s) are connected to the database:\n{}", .0.len(), .0.iter().map(describe).collect::<Vec<_>>().join("\n"))]
    Sessions(Vec<Session>),
    #[error("could not terminate the session(s) with pid {0:?}")]
    NotTerminated(Vec<i32>),
    #[error("not confirmed")]
    NotConfirmed,
    #[error("standard input is not a terminal, so the restore cannot be confirmed")]
    NoTerminal,
    #[error("restoring failed: {0}")]
    Restore(BackupError),
}

fn boxed(e: impl Into<EngineError>) -> RestoreError {
    RestoreError::Engine(Box::new(e.into()))
}

fn describe(s: &Session) -> String {
    format!(
        "  pid {}  user {}  application {:?}  client {}",
        s.pid,
        crate::plan::printable(&s.user),
        crate::plan::printable(&s.application),
        s.client
    )
}

impl RestoreError {
    fn kind(&self) -> ErrorKind {
        match self {
            RestoreError::Engine(e) => e.kind(),
            RestoreError::Sessions(_) | RestoreError::NotTerminated(_) => ErrorKind::Database,
            RestoreError::Restore(_) => ErrorKind::Backup,
            _ => ErrorKind::Usage,
        }
    }

    /// A refusal before anything was dropped or restored (no run history row).
    fn changed_nothing(&self) -> bool {
        matches!(
            self,
            RestoreError::Sessions(_)
                | RestoreError::NotTerminated(_)
                | RestoreError::NotConfirmed
                | RestoreError::NoTerminal
        )
    }

    /// For the run history.
    fn report(&self) -> crate::protocol::ErrorReport {
        crate::protocol::ErrorReport {
            kind: self.kind(),
            message: self.to_string(),
            migration: None,
            sqlstate: match self {
                RestoreError::Engine(e) => e.sqlstate().map(str::to_string),
                _ => None,
            },
            cause: None,
            hint: self.next_step(),
        }
    }

    fn next_step(&self) -> String {
        match self {
            RestoreError::Engine(e) => crate::diagnosis::next_step(e),
            RestoreError::NoDump(_) | RestoreError::NotOurs(_) | RestoreError::OtherDatabase { .. } =>
                "Pick one of `vamsa-migrate backups` (FILE, --latest or --before MIGRATION). Nothing was changed in the database.".into(),
            RestoreError::Corrupt { .. } => "Pick an older dump from `vamsa-migrate backups`. Nothing was changed in the database.".into(),
            RestoreError::Sessions(_) => "Stop the application first (systemctl stop vamsa), or pass --force to terminate these sessions. Nothing was changed in the database.".into(),
            RestoreError::NotTerminated(_) => "Stop those clients (or run as a role that may terminate them), then run again. Nothing was changed in the database.".into(),
            RestoreError::NotConfirmed | RestoreError::NoTerminal => "Pass --yes to restore without asking. Nothing was changed in the database.".into(),
            RestoreError::Restore(_) => "pg_restore's transaction was rolled back; the objects the dump does not hold were already dropped (listed above). Fix the cause and run restore again.".into(),
        }
    }
}

/// The command: picks, checks and restores the dump, then reports the tracking table.
pub(crate) async fn run(
    settings: &Settings,
    env: &HashMap<String, String>,
    args: &RestoreArgs,
) -> Outcome {
    match restore(settings, env, args).await {
        Ok(()) => Outcome::Success,
        Err(e) => {
            eprintln!("Error: {e}\nNext step: {}", e.next_step());
            Outcome::Failed(e.kind())
        }
    }
}

async fn restore(
    settings: &Settings,
    env: &HashMap<String, String>,
    args: &RestoreArgs,
) -> Result<(), RestoreError> {
    let pg = settings.pg_config(env).map_err(boxed)?;
    let client = db::connect(&pg).await.map_err(boxed)?;
    let target = db::database(&client).await.map_err(boxed)?;
    let database = target.name.clone();
    let dump = pick(settings, args, &database)?;
    let corrupt = |source| RestoreError::Corrupt {
        path: dump.path.clone(),
        source,
    };
    // One open file for the check and the restore: what was checked is what is restored.
    let file = std::fs::File::open(&dump.path).map_err(|e| corrupt(BackupError::Spawn(e)))?;
    let toc = backup::table_of_contents(&file, target.server_major)
        .await
        .map_err(corrupt)?;
    // The name can be renamed; the dump's own header cannot: refuse another database's dump
    // whatever its file is called (an explicit FILE too, --force only concerns sessions).
    match backup::toc_database(&toc) {
        Some(of) if of == database => {}
        of => {
            return Err(RestoreError::OtherDatabase {
                path: dump.path.clone(),
                dump: of.unwrap_or("(none named in its header)").to_string(),
                database,
            })
        }
    }
    let engine = Engine::new(settings, &pg);
    let lock_wait = settings.lock_wait;
    db::acquire_lock(&client, &engine.tracking, lock_wait, |pid| {
        eprintln!("Waiting for another vamsa-migrate run to finish (backend pid {pid:?})...");
    })
    .await
    .map_err(boxed)?;
    let log = crate::history::RunLog::restore(dump.path.clone());
    let result = restore_locked(&client, &pg, args, (&dump, &file), &toc, &target).await;
    if !result.as_ref().is_err_and(RestoreError::changed_nothing) {
        let error = result.as_ref().err().map(RestoreError::report);
        for w in engine.record_restore(&client, log, error.as_ref()).await {
            eprintln!("warning: {w}");
        }
    }
    let _ = db::release_lock(&client, &engine.tracking).await;
    result?;
    report_state(&engine, &client, settings).await
}

/// The dump the arguments name, of this database.
fn pick(settings: &Settings, args: &RestoreArgs, database: &str) -> Result<Listed, RestoreError> {
    let dump = if let Some(file) = &args.file {
        backup::ours(file).ok_or_else(|| RestoreError::NotOurs(file.clone()))?
    } else {
        let dir = &settings.backup.dir;
        let listed = backup::list(dir)
            .map_err(|e| RestoreError::NoDump(format!("backup_dir {}: {e}", dir.display())))?;
        let mut mine = listed.into_iter().filter(|b| backup::is_of(b, database));
        let found = match &args.before {
            Some(m) => {
                let label = format!("before-{}", m.trim_end_matches(".sql"));
                mine.rev().find(|b| b.label == label)
            }
            None => mine.next_back(),
        };
        let what = match &args.before {
            Some(m) => format!("none taken before {m} in {}", dir.display()),
            None => format!("none of database {database} in {}", dir.display()),
        };
        found.ok_or(RestoreError::NoDump(what))?
    };
    if !backup::is_of(&dump, database) {
        return Err(RestoreError::OtherDatabase {
            path: dump.path,
            dump: dump.database,
            database: database.into(),
        });
    }
    Ok(dump)
}

async fn restore_locked(
    client: &Client,
    pg: &crate::libpq::ConnParams,
    args: &RestoreArgs,
    (dump, file): (&Listed, &std::fs::File),
    toc: &str,
    target: &db::Database,
) -> Result<(), RestoreError> {
    let database = target.name.as_str();
    let sessions = dbr::other_sessions(client).await.map_err(boxed)?;
    if !sessions.is_empty() && !args.force {
        return Err(RestoreError::Sessions(sessions));
    }
    confirm(args, dump, database, sessions.len())?;
    if !sessions.is_empty() {
        let left = dbr::terminate(client, &sessions).await.map_err(boxed)?;
        if !left.is_empty() {
            return Err(RestoreError::NotTerminated(left));
        }
        crate::report::outln!("Terminated {} other session(s) (--force):", sessions.len());
        for s in &sessions {
            crate::report::outln!("{}", describe(s));
        }
    }
    let dropped = dbr::drop_objects_not_in(client, &dbr::objects_in(toc))
        .await
        .map_err(boxed)?;
    for (kind, schema, name) in &dropped {
        let schema = if schema.is_empty() {
            String::new()
        } else {
            format!("{schema}.")
        };
        crate::report::outln!(
            "Dropped {} {schema}{name} (not in the dump)",
            kind.to_lowercase()
        );
    }
    backup::restore(pg, target, file)
        .await
        .map_err(RestoreError::Restore)?;
    crate::report::outln!("Restored {} into {database}.", dump.path.display());
    Ok(())
}

/// Asks on a terminal; `--yes` skips the question, and without a terminal it is required.
fn confirm(
    args: &RestoreArgs,
    dump: &Listed,
    database: &str,
    sessions: usize,
) -> Result<(), RestoreError> {
    if args.yes {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        return Err(RestoreError::NoTerminal);
    }
    let ending = match sessions {
        0 => String::new(),
        n => format!(", terminating {n} other session(s)"),
    };
    eprint!(
        "Replace database {database} with {}{ending}? Everything changed since is lost. [y/N] ",
        dump.path.display()
    );
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    let _ = std::io::stdin().lock().read_line(&mut answer);
    match answer.trim() {
        "y" | "Y" | "yes" => Ok(()),
        _ => Err(RestoreError::NotConfirmed),
    }
}

/// After the restore: the last applied migration (the code that matches) and what is pending
/// for the code on disk.
async fn report_state(
    engine: &Engine<'_>,
    client: &Client,
    settings: &Settings,
) -> Result<(), RestoreError> {
    let rows = db::read_rows(client, &engine.tracking)
        .await
        .map_err(boxed)?;
    let last = rows
        .as_ref()
        .and_then(|t| t.rows.last())
        .map(crate::plan::describe_row);
    match last {
        Some(row) => {
            crate::report::outln!("Last applied migration: {row}; deploy the code of that release.")
        }
        None => crate::report::outln!(
            "No migration is applied (the tracking table is empty or absent)."
        ),
    }
    let Ok(set) = crate::source::MigrationSet::load(&settings.migrations_dir) else {
        crate::report::outln!(
            "(The migrations folder {} cannot be read: pending migrations not shown.)",
            settings.migrations_dir.display()
        );
        return Ok(());
    };
    let status = engine
        .status(client, &set, &PlanOptions::default())
        .await
        .map_err(boxed)?;
    let pending: Vec<&str> = status
        .plan
        .items
        .iter()
        .filter(|i| !matches!(i.state, State::Applied(_) | State::Edited { .. }))
        .map(|i| i.migration.file_name.as_str())
        .collect();
    match pending.len() {
        0 => crate::report::outln!(
            "Pending for the code in {}: none.",
            settings.migrations_dir.display()
        ),
        n => crate::report::outln!(
            "Pending for the code in {} ({n}): {}",
            settings.migrations_dir.display(),
            pending.join(", ")
        ),
    }
    Ok(())
}
