//! The runner: the one task that talks to the database. Jobs (start-up apply, triggers, folder
//! changes) queue here and run one at a time, each from a fresh read of the folder and a fresh
//! plan, so runs never overlap and a trigger that waited is answered with current facts.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use tokio::sync::{mpsc, Notify};
use tokio_postgres::{CancelToken, Client};

use crate::config::{describe_target, ApplyPolicy, Settings};
use crate::daemon::systemd::Notifier;
use crate::diagnosis::{self, daemon_report};
use crate::engine::{Engine, EngineError, RunOptions};
use crate::plan::PlanOptions;
use crate::protocol::{DaemonReply, ErrorKind, ErrorReport, Event, Reply};
use crate::report::status_report;
use crate::source::MigrationSet;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobKind {
    Apply,
    DryRun,
    Status,
    /// The folder changed: report what is pending, and apply it under `apply = "on-change"`.
    FolderChanged,
}

pub struct Job {
    pub kind: JobKind,
    /// Who asked, for the log ("start-up", "trigger from uid 1000", "folder change").
    pub origin: String,
    /// Where to send the replies of this job; dropped after the `done` event.
    pub reply: Option<mpsc::UnboundedSender<Reply>>,
}

/// State shared by the daemon's tasks (all on one thread).
pub struct Shared {
    pub settings: RefCell<Settings>,
    pub env: HashMap<String, String>,
    pub notifier: Notifier,
    pub client: RefCell<Option<Rc<Client>>>,
    /// Set while a job uses the database, so SIGTERM can cancel it server-side.
    pub cancel: RefCell<Option<CancelToken>>,
    pub busy: Cell<bool>,
    pub stopping: Cell<bool>,
    /// Woken whenever a job finishes.
    pub idle: Notify,
    /// Still starting (before READY=1): long work extends systemd's start timeout.
    pub starting: Cell<bool>,
    /// Pending file names last reported, to log only changes.
    last_pending: RefCell<Option<Vec<String>>>,
    /// The folder as last read: unchanged files are not read again (see `load_reusing`).
    last_set: RefCell<Option<Rc<MigrationSet>>>,
    /// The STATUS text last sent, for READY after start-up and reloads.
    pub last_status: RefCell<Option<String>>,
}

impl Shared {
    pub fn new(settings: Settings, env: HashMap<String, String>, notifier: Notifier) -> Shared {
        Shared {
            settings: RefCell::new(settings),
            env,
            notifier,
            client: RefCell::new(None),
            cancel: RefCell::new(None),
            busy: Cell::new(false),
            stopping: Cell::new(false),
            idle: Notify::new(),
            starting: Cell::new(true),
            last_pending: RefCell::new(None),
            last_set: RefCell::new(None),
            last_status: RefCell::new(None),
        }
    }

    /// Reads the folder, reusing what did not change since the last read.
    pub fn load_folder(&self) -> Result<Rc<MigrationSet>, crate::source::SourceError> {
        let dir = self.settings.borrow().migrations_dir.clone();
        let previous = self.last_set.borrow().clone();
        let set = Rc::new(MigrationSet::load_reusing(&dir, previous.as_deref())?);
        *self.last_set.borrow_mut() = Some(set.clone());
        Ok(set)
    }

    fn set_status(&self, text: String) {
        self.notifier.status(&text);
        *self.last_status.borrow_mut() = Some(text);
    }

    /// The open connection, or a new one. A connection that broke (PostgreSQL restarted while
    /// we were idle) is replaced here, on next use: no polling while idle.
    pub async fn client(&self) -> Result<Rc<Client>, EngineError> {
        if let Some(client) = self.client.borrow().as_ref() {
            if !client.is_closed() {
                return Ok(client.clone());
            }
        }
        let settings = self.settings.borrow().clone();
        let pg = settings.pg_config(&self.env)?;
        match crate::db::connect(&pg).await {
            Ok(client) => {
                let client = Rc::new(client);
                *self.client.borrow_mut() = Some(client.clone());
                Ok(client)
            }
            Err(e) => {
                self.notifier.status(&format!(
                    "Database unreachable at {}: {e}",
                    describe_target(&pg)
                ));
                Err(e.into())
            }
        }
    }
}

/// Runs jobs until the channel closes.
pub async fn run(shared: Rc<Shared>, mut jobs: mpsc::UnboundedReceiver<Job>) {
    while let Some(job) = jobs.recv().await {
        if shared.stopping.get() {
            let error = daemon_report(ErrorKind::Stopping, "vamsa-migrate is stopping".into());
            send(&job, Event::done_failed(error, job.kind == JobKind::DryRun));
            continue;
        }
        shared.busy.set(true);
        run_job(&shared, &job).await;
        *shared.cancel.borrow_mut() = None;
        shared.busy.set(false);
        shared.idle.notify_waiters();
    }
}

fn send(job: &Job, reply: impl Into<Reply>) {
    if let Some(to) = &job.reply {
        // The client may be gone; the run goes on regardless.
        let _ = to.send(reply.into());
    }
}

async fn run_job(shared: &Shared, job: &Job) {
    let settings = shared.settings.borrow().clone();
    tracing::debug!(ORIGIN = %job.origin, "job {:?}", job.kind);
    let set = match shared.load_folder() {
        Ok(set) => set,
        Err(e) => return fail(shared, job, &e.into()),
    };
    let client = match clean_session(shared).await {
        Ok(c) => c,
        Err(e) => return fail(shared, job, &e),
    };
    *shared.cancel.borrow_mut() = Some(client.cancel_token());
    let pg = match settings.pg_config(&shared.env) {
        Ok(pg) => pg,
        Err(e) => return fail(shared, job, &e.into()),
    };
    let engine = Engine::new(&settings, &pg);

    let apply = match job.kind {
        JobKind::Apply => true,
        JobKind::DryRun => false,
        JobKind::Status => return answer_status(shared, job, &engine, &client, &set).await,
        JobKind::FolderChanged => {
            let read = report_pending(shared, &engine, &client, &set).await;
            if !read {
                let message = "cannot read the tracking table (see the log)".into();
                send(
                    job,
                    Event::done_failed(daemon_report(ErrorKind::Database, message), true),
                );
                return;
            }
            if settings.daemon.apply != ApplyPolicy::OnChange {
                send(job, Event::done_ok(0, true));
                return;
            }
            true
        }
    };

    let options = RunOptions {
        plan: PlanOptions::default(),
        dry_run: !apply,
        no_backup: false,
    };
    let notifier = shared.notifier;
    let starting = shared.starting.get();
    let mut emit = |event: Event| {
        log_event(&event, &job.origin);
        notify_progress(notifier, starting, &event);
        send(job, event);
    };
    if let Err(e) = engine.run(&client, &set, &options, &mut emit).await {
        forget_broken_connection(shared, &e);
    }
    update_status(shared, &engine, &client, &set).await;
}

/// The connection for a job, in the state of a new one: the daemon keeps its connection, and
/// nothing an earlier run set may change what this one does (the CLI gets the same from its
/// own new connection). A session that cannot be reset is replaced.
async fn clean_session(shared: &Shared) -> Result<Rc<Client>, EngineError> {
    let client = shared.client().await?;
    match crate::db::reset_session(&client).await {
        Ok(()) => Ok(client),
        Err(e) => {
            tracing::warn!("{e}; opening a new connection");
            *shared.client.borrow_mut() = None;
            shared.client().await
        }
    }
}

/// STATUS (and, before READY, a longer start timeout) for the steps of a run.
fn notify_progress(notifier: Notifier, starting: bool, event: &Event) {
    match event {
        Event::Pending {
            migrations,
            dry_run: false,
        } if !migrations.is_empty() => {
            notifier.status(&format!("Applying {} migrations...", migrations.len()));
        }
        Event::BackingUp { migrations } => {
            notifier.status(&format!(
                "Backing up database before {migrations} migrations..."
            ));
            if starting {
                // A large database takes a while to dump: keep the start timeout ahead.
                notifier.extend_timeout(Duration::from_secs(3600));
            }
        }
        Event::Applied { migration, .. } => {
            notifier.status(&format!("Applied {migration}"));
            if starting {
                // Each migration may take a while: keep systemd's start timeout ahead.
                notifier.extend_timeout(Duration::from_secs(120));
            }
        }
        _ => {}
    }
}

/// Answers `status`: the report, then `done`.
async fn answer_status(
    shared: &Shared,
    job: &Job,
    engine: &Engine<'_>,
    client: &Client,
    set: &MigrationSet,
) {
    match engine.status(client, set, &PlanOptions::default()).await {
        Ok(status) => {
            let warnings: Vec<String> = set.warnings.iter().map(|w| w.to_string()).collect();
            let status = status_report(&status, &warnings);
            send(job, DaemonReply::Status { status });
            send(job, Event::done_ok(0, false));
        }
        Err(e) => fail(shared, job, &e),
    }
}

/// Reports an error that stopped a job before the engine ran.
fn fail(shared: &Shared, job: &Job, e: &EngineError) {
    forget_broken_connection(shared, e);
    let event = Event::done_failed(diagnosis::report(e), job.kind == JobKind::DryRun);
    log_event(&event, &job.origin);
    send(job, event);
}

fn forget_broken_connection(shared: &Shared, e: &EngineError) {
    if diagnosis::connection_lost(e) {
        *shared.client.borrow_mut() = None;
    }
}

/// Logs newly pending migrations and sets STATUS, from one plan; false when the database
/// could not be read.
async fn report_pending(
    shared: &Shared,
    engine: &Engine<'_>,
    client: &Client,
    set: &MigrationSet,
) -> bool {
    match engine.status(client, set, &PlanOptions::default()).await {
        Ok(status) => {
            let pending: Vec<String> = status
                .plan
                .items
                .iter()
                .filter(|i| {
                    !matches!(
                        i.state,
                        crate::plan::State::Applied(_) | crate::plan::State::Edited { .. }
                    )
                })
                .map(|i| i.migration.file_name.clone())
                .collect();
            let changed = shared.last_pending.borrow().as_ref() != Some(&pending);
            if changed && !pending.is_empty() {
                tracing::info!(
                    PENDING = pending.len(),
                    "{} pending migration{} detected: {}",
                    pending.len(),
                    if pending.len() == 1 { "" } else { "s" },
                    pending.join(", ")
                );
            }
            *shared.last_pending.borrow_mut() = Some(pending);
            shared.set_status(status_line_for(
                &status.plan,
                shared.settings.borrow().daemon.apply,
            ));
            true
        }
        Err(e) => {
            tracing::warn!("cannot read the tracking table after a folder change: {e}");
            forget_broken_connection(shared, &e);
            false
        }
    }
}

/// Sets STATUS from a fresh plan: "Up to date: 42 migrations applied" or "2 pending; ...".
pub async fn update_status(
    shared: &Shared,
    engine: &Engine<'_>,
    client: &Client,
    set: &MigrationSet,
) {
    let text = status_text(shared, engine, client, set).await;
    shared.set_status(text);
}

/// The STATUS text for the database as it is now.
pub async fn status_text(
    shared: &Shared,
    engine: &Engine<'_>,
    client: &Client,
    set: &MigrationSet,
) -> String {
    match engine.status(client, set, &PlanOptions::default()).await {
        Ok(status) => status_line_for(&status.plan, shared.settings.borrow().daemon.apply),
        Err(e) => format!("Cannot read the tracking table: {e}"),
    }
}

fn status_line_for(plan: &crate::plan::Plan<'_>, policy: ApplyPolicy) -> String {
    let pending = plan.pending_count();
    let drift = if plan.has_drift() {
        "; drift found (see vamsa-migrate status)"
    } else {
        ""
    };
    if pending == 0 {
        format!(
            "Up to date: {} migrations applied{drift}",
            plan.applied_count()
        )
    } else {
        let waiting = match policy {
            ApplyPolicy::OnTrigger => "waiting for trigger",
            ApplyPolicy::OnChange => "will apply on change",
            ApplyPolicy::Manual => "apply is manual",
        };
        format!("{pending} pending; {waiting}{drift}")
    }
}

/// The journal entry for each engine event, with structured fields.
pub fn log_event(event: &Event, origin: &str) {
    match event {
        Event::Warning { message } => tracing::warn!(ORIGIN = origin, "{message}"),
        Event::WaitingForLock { holder_pid, .. } => tracing::info!(
            ORIGIN = origin,
            "waiting for another vamsa-migrate run to finish (backend pid {holder_pid:?})"
        ),
        Event::Pending {
            migrations,
            dry_run: false,
        } if !migrations.is_empty() => {
            let names: Vec<&str> = migrations.iter().map(|m| m.migration.as_str()).collect();
            tracing::info!(
                ORIGIN = origin,
                PENDING = migrations.len(),
                "Running migrations ({}): {}",
                origin,
                names.join(", ")
            );
        }
        Event::Pending { .. } => {}
        Event::BackingUp { migrations } => tracing::info!(
            ORIGIN = origin,
            PENDING = migrations,
            "Backing up the database before {migrations} migration(s)"
        ),
        Event::BackedUp { path, bytes, ms } => tracing::info!(
            ORIGIN = origin,
            BACKUP = %path.display(),
            DURATION_MS = ms,
            "Backup: {} ({})",
            path.display(),
            crate::backup::human_bytes(*bytes)
        ),
        Event::AcceptedEdit { migration } => {
            tracing::info!(MIGRATION = %migration, "accepted the edited {migration}")
        }
        Event::Applied { migration, ms } => tracing::info!(
            ORIGIN = origin,
            MIGRATION = %migration,
            DURATION_MS = ms,
            "Applied: {migration}"
        ),
        Event::Done {
            ok,
            applied,
            dry_run,
            error,
        } => log_done(*ok, *applied, *dry_run, error.as_ref(), origin),
    }
}

fn log_done(ok: bool, applied: usize, dry_run: bool, error: Option<&ErrorReport>, origin: &str) {
    match error {
        _ if ok && !dry_run && applied > 0 => {
            tracing::info!(ORIGIN = origin, "Migration complete: {applied} applied.")
        }
        _ if ok => tracing::debug!(ORIGIN = origin, "done, nothing applied"),
        Some(e) => tracing::error!(
            ORIGIN = origin,
            MIGRATION = e.migration.as_deref().unwrap_or(""),
            SQLSTATE = e.sqlstate.as_deref().unwrap_or(""),
            HINT = %e.hint,
            CAUSE = e.cause.as_deref().unwrap_or(""),
            "{}",
            e.message
        ),
        None => {}
    }
}
