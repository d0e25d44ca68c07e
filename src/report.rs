//! Reporting: turns engine events into the human lines of the user document, or JSON lines.

use std::io::{self, IsTerminal, Write};

use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::engine::Status;
use crate::plan::{Item, State};
use crate::protocol::{
    ErrorReport, Event, MigrationState, MissingRow, PendingMigration, StatusReport, StatusRow,
};

/// Like `eprintln!`, but a closed stderr must not abort a migration run (`eprintln!` panics).
macro_rules! warn_line {
    ($($arg:tt)*) => {{
        let _ = writeln!(io::stderr(), $($arg)*);
    }};
}

/// Show a progress bar from this many pending migrations on (on a terminal only).
const PROGRESS_FROM: usize = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum Format {
    #[default]
    Human,
    Json,
}

/// How the command was invoked, for the "Run '...' to apply." line.
#[derive(Debug, Clone)]
pub struct HumanOptions {
    pub quiet: bool,
    pub apply_command: String,
    pub progress: bool,
}

impl Default for HumanOptions {
    fn default() -> Self {
        HumanOptions {
            quiet: false,
            apply_command: "vamsa-migrate migrate".into(),
            // The bar draws on stderr: only when both streams are a terminal, so that
            // `2>log` never swallows the `Applied:` lines.
            progress: io::stdout().is_terminal() && io::stderr().is_terminal(),
        }
    }
}

/// Prints events as they arrive.
pub struct Reporter<W: Write> {
    out: W,
    format: Format,
    options: HumanOptions,
    pending: usize,
    bar: Option<ProgressBar>,
}

impl<W: Write> Reporter<W> {
    pub fn new(out: W, format: Format, options: HumanOptions) -> Self {
        Reporter {
            out,
            format,
            options,
            pending: 0,
            bar: None,
        }
    }

    pub fn event(&mut self, event: &Event) {
        // Output is best effort: a closed stdout (`| head`) must never abort a migration.
        let _ = match self.format {
            Format::Json => write_json_line(&mut self.out, event),
            Format::Human => self.human(event),
        };
    }

    fn line(&mut self, text: &str) -> io::Result<()> {
        match &self.bar {
            Some(bar) => {
                let out = &mut self.out;
                bar.suspend(|| writeln!(out, "{text}"))
            }
            None => writeln!(self.out, "{text}"),
        }
    }

    fn human(&mut self, event: &Event) -> io::Result<()> {
        match event {
            Event::Warning { message } => self.warning(message),
            Event::WaitingForLock {
                holder_pid,
                max_wait_ms,
            } => waiting_for_lock(*holder_pid, *max_wait_ms),
            Event::Pending {
                migrations,
                dry_run: true,
            } => self.would_apply(migrations)?,
            Event::Pending {
                migrations,
                dry_run: false,
            } => self.running(migrations)?,
            Event::BackingUp { migrations } => {
                if !self.options.quiet {
                    warn_line!("Backing up the database before {migrations} migration(s)...");
                }
            }
            Event::BackedUp { path, bytes, ms } => {
                if !self.options.quiet {
                    warn_line!(
                        "Backup: {} ({}, {:.1} s)",
                        path.display(),
                        crate::backup::human_bytes(*bytes),
                        *ms as f64 / 1000.0
                    );
                }
            }
            Event::Rehearsing {
                database,
                migrations,
            } => {
                if !self.options.quiet {
                    warn_line!(
                        "Rehearsing {migrations} migration(s) on a scratch copy ({database})..."
                    );
                }
            }
            Event::Rehearsed { ms, .. } => {
                if !self.options.quiet {
                    warn_line!(
                        "Rehearsal passed ({:.1} s); the copy was dropped",
                        *ms as f64 / 1000.0
                    );
                }
            }
            Event::AcceptedEdit { migration } => self.line(&format!(
                "Accepted the edited {migration}: recorded its new hash."
            ))?,
            Event::Applied { migration, .. } => self.applied(migration)?,
            Event::Done {
                ok,
                applied,
                dry_run,
                error,
            } => self.done(*ok, *applied, *dry_run, error.as_ref())?,
        }
        self.out.flush()
    }

    fn warning(&self, message: &str) {
        match &self.bar {
            Some(bar) => bar.suspend(|| warn_line!("warning: {message}")),
            None => warn_line!("warning: {message}"),
        }
    }

    /// A dry run's list: each pending migration with one line per statement.
    fn would_apply(&mut self, migrations: &[PendingMigration]) -> io::Result<()> {
        self.pending = migrations.len();
        if migrations.is_empty() {
            return writeln!(self.out, "No pending migrations. Database is up to date.");
        }
        writeln!(self.out, "Pending migrations:")?;
        for m in migrations {
            let mut notes = Vec::new();
            if m.no_transaction {
                notes.push("runs outside a transaction");
            }
            if m.drizzle_would_skip {
                notes.push(
                    "older than the newest applied migration: Drizzle's own migrator would skip it",
                );
            }
            if notes.is_empty() {
                writeln!(self.out, "  {}", m.migration)?;
            } else {
                writeln!(self.out, "  {} ({})", m.migration, notes.join("; "))?;
            }
            if m.statements.is_empty() {
                // A comment-only file (drizzle-kit's `generate --custom`): a no-op, recorded.
                writeln!(self.out, "    (no statements)")?;
            }
            for s in &m.statements {
                writeln!(self.out, "    - {s}")?;
            }
        }
        Ok(())
    }

    /// The start of a real run: the notes, and the progress bar for long runs.
    fn running(&mut self, migrations: &[PendingMigration]) -> io::Result<()> {
        self.pending = migrations.len();
        if migrations.is_empty() || self.options.quiet {
            return Ok(());
        }
        writeln!(self.out, "Running migrations...")?;
        for m in migrations.iter().filter(|m| m.drizzle_would_skip) {
            writeln!(
                self.out,
                "Note: {} is older than the newest applied migration; Drizzle's own migrator \
                 would have skipped it silently. Applying it in journal order.",
                m.migration
            )?;
        }
        if self.options.progress && migrations.len() >= PROGRESS_FROM {
            let bar = ProgressBar::new(migrations.len() as u64);
            if let Ok(style) = ProgressStyle::with_template("{bar:40} {pos}/{len} {msg}") {
                bar.set_style(style);
            }
            self.bar = Some(bar);
        }
        Ok(())
    }

    fn applied(&mut self, migration: &str) -> io::Result<()> {
        if !self.options.quiet {
            self.line(&format!("Applied: {migration}"))?;
        }
        if let Some(bar) = &self.bar {
            bar.inc(1);
        }
        Ok(())
    }

    /// The closing line, and the error block on stderr.
    fn done(
        &mut self,
        ok: bool,
        applied: usize,
        dry_run: bool,
        error: Option<&ErrorReport>,
    ) -> io::Result<()> {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        match (ok, dry_run) {
            (true, true) if self.pending > 0 => writeln!(
                self.out,
                "\nNo changes were applied. Run '{}' to apply.",
                self.options.apply_command
            )?,
            (true, false) if self.options.quiet => {}
            (true, false) if applied > 0 => writeln!(self.out, "Migration complete.")?,
            (true, false) => writeln!(self.out, "No pending migrations.")?,
            _ => {}
        }
        if let Some(error) = error {
            self.out.flush()?;
            let _ = write!(io::stderr(), "{}", render_error(error));
        }
        Ok(())
    }
}

fn waiting_for_lock(holder_pid: Option<i32>, max_wait_ms: u64) {
    let who = holder_pid
        .map(|p| format!(" (PostgreSQL backend pid {p} holds the migration lock)"))
        .unwrap_or_default();
    warn_line!(
        "Waiting for another vamsa-migrate run to finish{who}; waiting up to {}...",
        humantime::format_duration(std::time::Duration::from_millis(max_wait_ms))
    );
}

pub fn write_json_line(out: &mut impl Write, value: &impl Serialize) -> io::Result<()> {
    serde_json::to_writer(&mut *out, value)?;
    out.write_all(b"\n")?;
    out.flush()
}

/// The error block shown to a person: what failed, why it probably failed, what to do.
pub fn render_error(e: &ErrorReport) -> String {
    let mut text = format!("Error: {}\n", e.message);
    if let Some(cause) = &e.cause {
        text.push_str(&format!("Likely cause: {cause}\n"));
    }
    text.push_str(&format!("Next step: {}\n", e.hint));
    text
}

/// The report of `status`, from its plan and the folder's warnings.
/// Adds the live schema's drift to a status report.
pub fn add_schema_drift(report: &mut StatusReport, drift: Option<crate::drift::SchemaDrift>) {
    if let Some(drift) = drift {
        // The same drift that makes `status` exit 4: scripts reading `drift` see it too.
        report.drift |= !drift.changes.is_empty();
        report.schema_changes = drift.changes.iter().map(|c| c.to_string()).collect();
        report.schema_recorded_at = Some(drift.recorded_at);
        report.schema_notes = drift.notes;
    }
}

pub fn status_report(status: &Status<'_>, warnings: &[String]) -> StatusReport {
    let plan = &status.plan;
    StatusReport {
        migrations: plan.items.iter().map(status_row).collect(),
        missing_on_disk: plan
            .missing
            .iter()
            .map(|r| MissingRow {
                id: r.id,
                hash: r.hash.clone(),
                created_at: r.created_at,
                name: r.name.clone(),
            })
            .collect(),
        applied: plan.applied_count(),
        pending: plan.pending_count(),
        drift: plan.has_drift(),
        warnings: warnings.to_vec(),
        schema_changes: Vec::new(),
        schema_recorded_at: None,
        schema_notes: Vec::new(),
        last_run: None,
    }
}

fn status_row(item: &Item<'_>) -> StatusRow {
    let (state, applied_at, note) = match &item.state {
        State::Applied(row) => (MigrationState::Applied, row.applied_at.clone(), None),
        State::Edited { row, .. } => (
            MigrationState::Edited,
            row.applied_at.clone(),
            Some(format!(
                "file changed since it was applied; accept with --accept-edited {}",
                item.migration.tag
            )),
        ),
        State::Pending {
            drizzle_would_skip: true,
        } => (
            MigrationState::Pending,
            None,
            Some(
                "older than the newest applied migration: Drizzle's own migrator would skip it"
                    .into(),
            ),
        ),
        State::Pending { .. } => (MigrationState::Pending, None, None),
        State::OutOfOrder { allowed: true } => (
            MigrationState::Pending,
            None,
            Some("sorts before an applied migration; applied next run, as Drizzle 1.0 does".into()),
        ),
        State::OutOfOrder { .. } => (
            MigrationState::OutOfOrder,
            None,
            Some("a later migration is applied; apply with --allow-out-of-order".into()),
        ),
    };
    StatusRow {
        migration: item.migration.file_name.clone(),
        state,
        applied_at,
        note,
    }
}

/// `status` as a person reads it (warnings on stderr), or as one JSON line.
pub fn write_status(out: &mut impl Write, report: &StatusReport, format: Format) -> io::Result<()> {
    if format == Format::Json {
        return write_json_line(out, report);
    }
    for w in &report.warnings {
        warn_line!("warning: {w}");
    }
    let width = report
        .migrations
        .iter()
        .map(|r| r.migration.len())
        .max()
        .unwrap_or(0);
    for row in &report.migrations {
        let mut line = format!("  {:<12} {:<width$}", row.state.name(), row.migration);
        if let Some(at) = &row.applied_at {
            line.push_str(&format!("  {at} UTC"));
        }
        if let Some(note) = &row.note {
            line.push_str(&format!("  ({note})"));
        }
        writeln!(out, "{}", line.trim_end())?;
    }
    for r in &report.missing_on_disk {
        let name = r.name.as_deref().map_or(String::new(), |n| {
            format!("name {}, ", crate::plan::printable(n))
        });
        writeln!(
            out,
            "  {:<12} row {} ({name}created_at {}, hash {}): no such migration on disk",
            "missing",
            r.id,
            r.created_at.map_or("NULL".into(), |c| c.to_string()),
            crate::engine::short_hash(&r.hash)
        )?;
    }
    if let Some(at) = &report.schema_recorded_at {
        writeln!(
            out,
            "The schema was changed outside migrations since the last run (recorded {at} UTC):"
        )?;
        for change in &report.schema_changes {
            writeln!(out, "  {change}")?;
        }
        for note in &report.schema_notes {
            writeln!(out, "note: {note}")?;
        }
    }
    let mut summary = format!(
        "{} migrations: {} applied, {} pending",
        report.migrations.len(),
        report.applied,
        report.pending
    );
    // `drift` also covers the schema's changes, named just below.
    if report.drift && report.schema_changes.is_empty() {
        summary.push_str(", drift found");
    }
    if !report.schema_changes.is_empty() {
        summary.push_str(", schema changed by hand");
    }
    writeln!(out, "{summary}.")?;
    if report.pending == 0 && !report.drift && report.schema_changes.is_empty() {
        writeln!(out, "Database is up to date.")?;
    }
    Ok(())
}

/// `println!` on standard output that never panics: a closed pipe (`vamsa-migrate backups |
/// head -2`, EPIPE; Rust ignores SIGPIPE) or a full disk drops the line, so nothing more is
/// printed and the command still exits as its outcome says.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}
pub(crate) use outln;
