//! `status`: every migration's state; read-only.

use std::collections::HashMap;
use std::io::{self, Write};

use crate::config::Settings;
use crate::engine::{Engine, EngineError};
use crate::exit::Outcome;
use crate::plan::PlanOptions;
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
        let status = engine
            .status(&client, &set, &PlanOptions::default())
            .await?;
        Ok::<_, EngineError>((client, status))
    }
    .await;
    let (client, status) = match result {
        Ok(s) => s,
        Err(e) => return show_error(&e, format),
    };
    let mut warnings: Vec<String> = set.warnings.iter().map(|w| w.to_string()).collect();
    warnings.extend(status.notes.iter().cloned());
    let mut status = report::status_report(&status, &warnings);
    status.last_run = crate::db::history::last(&client).await;
    match engine.schema_drift(&client).await {
        Ok(drift) => report::add_schema_drift(&mut status, drift),
        Err(e) => return show_error(&e.into(), format),
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
