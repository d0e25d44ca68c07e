//! `status`: every migration's state; read-only.

use std::collections::HashMap;
use std::io::{self, Write};

use crate::config::Settings;
use crate::engine::{Engine, EngineError};
use crate::exit::Outcome;
use crate::plan::PlanOptions;
use crate::protocol::StatusReport;
use crate::report::{self, Format};
use crate::source::MigrationSet;

use super::show_error;

/// Shows the report; the outcome says whether the database is up to date, behind, or drifted.
pub(crate) async fn run(
    settings: &Settings,
    env: &HashMap<String, String>,
    format: Format,
) -> Outcome {
    let set = match MigrationSet::load(&settings.migrations_dir) {
        Ok(set) => set,
        Err(e) => return show_error(&e.into(), format),
    };
    let pg = match settings.pg_config(env) {
        Ok(pg) => pg,
        Err(e) => return show_error(&e.into(), format),
    };
    let engine = Engine::new(settings, &pg);
    let result = async {
        let client = engine.connect().await?;
        let status = folder_report(&engine, &client, &set).await?;
        Ok::<_, EngineError>((client, status))
    }
    .await;
    let (client, mut status) = match result {
        Ok(s) => s,
        Err(e) => return show_error(&e, format),
    };
    status.last_run = crate::db::history::last(&client).await;
    match engine.schema_drift(&client).await {
        Ok(drift) => report::add_schema_drift(&mut status, drift),
        Err(e) => {
            let e = EngineError::from(e);
            if e.sqlstate() != Some("42501") {
                return show_error(&e, format);
            }
            // As `migrate` does: a check it may not read does not stop the report.
            status.warnings.push(format!(
                "the live schema was not compared with the recorded one: {e}; an admin runs: {}",
                crate::db::history::read_grants(&crate::db::quote_ident(
                    &current_user(&client).await
                ))
            ));
        }
    }
    let mut out = io::BufWriter::new(io::stdout().lock());
    let _ = report::write_status(&mut out, &status, format);
    let _ = out.flush();
    if status.drift || !status.schema_changes.is_empty() {
        Outcome::Drift
    } else if status.pending > 0 {
        Outcome::Pending
    } else {
        Outcome::Success
    }
}

/// The folder against the tracking table (without the live schema): each migration's state,
/// the rows matching no file, the folder's warnings and the plan's notes. Read-only; also
/// `verify`'s first check.
pub(crate) async fn folder_report(
    engine: &Engine<'_>,
    client: &tokio_postgres::Client,
    set: &MigrationSet,
) -> Result<StatusReport, EngineError> {
    let status = engine.status(client, set, &PlanOptions::default()).await?;
    let mut warnings: Vec<String> = set.warnings.iter().map(|w| w.to_string()).collect();
    warnings.extend(status.notes.iter().cloned());
    Ok(report::status_report(&status, &warnings))
}

/// The role of the session (`current_user`), for a GRANT to print; `<role>` when unreadable.
pub(crate) async fn current_user(client: &tokio_postgres::Client) -> String {
    match client.query_one("SELECT current_user::text", &[]).await {
        Ok(row) => row.try_get(0).unwrap_or_else(|_| "<role>".into()),
        Err(_) => "<role>".into(),
    }
}
