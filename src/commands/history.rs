//! `history`: the run history (`vamsa_migrate.runs`), newest first; read-only.

use std::collections::HashMap;
use std::io::{self, Write};

use crate::config::Settings;
use crate::engine::{Engine, EngineError};
use crate::exit::Outcome;
use crate::protocol::RunRecord;
use crate::report::{self, Format};

use super::show_error;

/// Shows the newest `limit` runs: a block per run, or one JSON object per line.
pub(crate) async fn run(
    settings: &Settings,
    env: &HashMap<String, String>,
    limit: u32,
    format: Format,
) -> Outcome {
    let pg = match settings.pg_config(env) {
        Ok(pg) => pg,
        Err(e) => return show_error(&e.into(), format),
    };
    let engine = Engine::new(settings, &pg);
    let result = async {
        let client = engine.connect().await?;
        crate::db::history::read(&client, i64::from(limit)).await
    }
    .await;
    let runs = match result {
        Ok(runs) => runs,
        Err(e) => return show_error(&EngineError::from(e), format),
    };
    let mut out = io::BufWriter::new(io::stdout().lock());
    let written = match format {
        Format::Json => runs
            .iter()
            .try_for_each(|r| report::write_json_line(&mut out, r)),
        Format::Human if runs.is_empty() => writeln!(
            out,
            "No runs recorded (the history starts with the first run that changes the database)."
        ),
        // Text from the table may come from anyone (a role's or a migration's name): each
        // line with its control characters escaped.
        Format::Human => runs.iter().try_for_each(|r| {
            render(r)
                .lines()
                .try_for_each(|l| writeln!(out, "{}", crate::plan::printable(l)))
        }),
    };
    match written.and_then(|()| out.flush()) {
        Ok(()) => Outcome::Success,
        Err(_) => Outcome::OtherFailure,
    }
}

/// One run as a block of lines:
///
/// ```text
/// Run 3: 2026-11-30 04:31:02 UTC, 245 ms, trigger from uid 1000 (pid 4242), ok
///   by deploy (unit deploy.service), role vamsa, vamsa-migrate 0.1.0
///   source: git 3f2a9c1d0e4b...
///   backup: /var/lib/vamsa-migrate/backups/vamsa-....dump
///   applied: 0004_media_tags.sql (120 ms), 0005_x.sql (3 ms)
/// ```
pub(crate) fn render(r: &RunRecord) -> String {
    let result = match &r.error {
        None => "ok".to_string(),
        Some(e) => {
            let mut failed = "FAILED".to_string();
            if let Some(m) = &e.migration {
                failed.push_str(&format!(" in {m}"));
            }
            if let Some(code) = &e.sqlstate {
                failed.push_str(&format!(" (SQLSTATE {code})"));
            }
            failed
        }
    };
    let mut text = format!(
        "Run {}: {} UTC, {} ms, {}, {result}\n",
        r.id, r.started_at, r.ms, r.origin
    );
    if let crate::protocol::Origin::Trigger(peer) = &r.origin {
        let user = peer.user.as_deref().unwrap_or("an unnamed user");
        let unit = peer
            .unit
            .as_deref()
            .map(|u| format!(" (unit {u})"))
            .unwrap_or_default();
        text.push_str(&format!("  by {user}{unit}\n"));
    }
    text.push_str(&format!(
        "  role {}, vamsa-migrate {}\n",
        r.role, r.tool_version
    ));
    if let Some(commit) = &r.source_commit {
        text.push_str(&format!("  source: git {commit}\n"));
    }
    if let Some(backup) = &r.backup {
        text.push_str(&format!("  backup: {}\n", backup.display()));
    }
    if let Some(rehearsal) = &r.rehearsal {
        text.push_str(&format!("  rehearsal: {rehearsal}\n"));
    }
    if !r.migrations.is_empty() {
        let applied: Vec<String> = r
            .migrations
            .iter()
            .map(|m| format!("{} ({} ms)", m.migration, m.ms))
            .collect();
        text.push_str(&format!("  applied: {}\n", applied.join(", ")));
    }
    if let Some(e) = &r.error {
        text.push_str(&format!("  error: {}\n", e.message.replace('\n', "\n    ")));
    }
    text
}
