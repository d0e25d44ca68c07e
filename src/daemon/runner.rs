//! The runner: the one task that talks to the database. Jobs (start-up apply, triggers, folder
//! changes) queue here and run one at a time, each from a fresh read of the folder and a fresh
//! plan, so runs never overlap and a trigger that waited is answered with current facts.

use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio_postgres::{CancelToken, Client};

use crate::config::{describe_target, ApplyPolicy, Settings};
use crate::daemon::systemd::Notifier;
use crate::diagnosis::{self, daemon_report};
use crate::engine::{Engine, EngineError, RunOptions, StopRequest, StopSignal};
use crate::exit::daemon as exit;
use crate::plan::PlanOptions;
use crate::protocol::{DaemonReply, ErrorKind, ErrorReport, Event, Origin, Reply};
use crate::report::status_report;
use crate::source::{MigrationSet, SourceError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum JobKind {
    Apply,
    DryRun,
    Status,
    /// The folder changed: report what is pending, and apply it under `apply = "on-change"`.
    FolderChanged,
    /// The folder has been quiet for `settle`: a `FolderChanged` job only if the folder reads
    /// as consistent, never from a half-written state (otherwise logged and dropped).
    FolderSettled,
}

pub(crate) struct Job {
    pub(crate) kind: JobKind,
    /// Who asked, for the log ("start-up", "trigger from uid 1000", "folder change") and the
    /// run history.
    pub(crate) origin: Origin,
    /// Where to send the replies of this job; dropped after the `done` event.
    pub(crate) reply: Option<mpsc::UnboundedSender<Reply>>,
}

/// Messages that overtake queued jobs: they are handled before the next job starts.
pub(crate) enum Control {
    /// A new configuration was published on the settings channel: a connection made with
    /// other connection settings is dropped; with `reply`, the STATUS text for READY is sent
    /// back (computed from the folder and the database as they are now).
    Reload {
        reply: Option<oneshot::Sender<String>>,
    },
    /// SIGTERM/SIGINT: every job from now on is answered "stopping".
    Stop,
}

/// What the runner publishes (on a `watch` channel); everyone else only reads it.
#[derive(Clone, Default)]
pub(crate) struct RunnerStatus {
    /// A job is running.
    pub(crate) busy: bool,
    /// Set while a job uses the database, so SIGTERM can cancel it server-side.
    pub(crate) cancel: Option<CancelToken>,
    /// The STATUS text last sent, for READY after start-up and reloads.
    pub(crate) line: Option<String>,
}

/// The open connection and the settings it was made with.
struct Connection {
    client: Rc<Client>,
    made_with: Arc<Settings>,
}

/// The job runner's state, owned by its task alone (an actor): fed by [`Job`]s and
/// [`Control`] messages, publishing [`RunnerStatus`]. Blocking work (reading the folder) runs
/// on tokio's blocking pool, never on the runtime thread.
pub(crate) struct Runner {
    settings: watch::Receiver<Arc<Settings>>,
    /// SIGTERM/SIGINT, passed to each run (`Control::Stop` only reaches us between jobs).
    stop: watch::Receiver<StopRequest>,
    env: HashMap<String, String>,
    notifier: Notifier,
    connection: Option<Connection>,
    /// Before READY=1 (the first job): long work extends systemd's start timeout.
    starting: bool,
    stopping: bool,
    /// Pending file names last reported, to log only changes.
    last_pending: Option<Vec<String>>,
    /// The STATUS of the last run when its release failed in rehearsal: kept at the head of
    /// STATUS until the next run, so a folder change does not hide it.
    release_failed: Option<String>,
    /// The folder as last read, without the files' texts: unchanged files are not read again
    /// (see `load_reusing`); the engine reads again those it must show or apply.
    last_set: Option<Arc<MigrationSet>>,
    status: watch::Sender<RunnerStatus>,
}

impl Runner {
    /// A runner and the receiving end of its status channel.
    pub(crate) fn new(
        settings: watch::Receiver<Arc<Settings>>,
        stop: watch::Receiver<StopRequest>,
        env: HashMap<String, String>,
        notifier: Notifier,
    ) -> (Runner, watch::Receiver<RunnerStatus>) {
        let (status, status_rx) = watch::channel(RunnerStatus::default());
        let runner = Runner {
            settings,
            stop,
            env,
            notifier,
            connection: None,
            starting: true,
            stopping: false,
            last_pending: None,
            release_failed: None,
            last_set: None,
            status,
        };
        (runner, status_rx)
    }

    /// Runs jobs until the job channel closes; control messages go first.
    pub(crate) async fn run(
        mut self,
        mut jobs: mpsc::UnboundedReceiver<Job>,
        mut control: mpsc::UnboundedReceiver<Control>,
    ) {
        loop {
            tokio::select! {
                biased;
                Some(message) = control.recv() => self.control(message).await,
                job = jobs.recv() => match job {
                    Some(job) => self.serve(job).await,
                    None => return,
                },
            }
        }
    }

    async fn control(&mut self, message: Control) {
        match message {
            Control::Stop => self.stopping = true,
            Control::Reload { reply } => {
                let settings = self.settings.borrow().clone();
                if let Some(c) = &self.connection {
                    if c.made_with.database_url != settings.database_url
                        || c.made_with.database_password_file != settings.database_password_file
                    {
                        self.connection = None;
                    }
                }
                if let Some(reply) = reply {
                    let _ = reply.send(self.current_status().await);
                }
            }
        }
    }

    async fn serve(&mut self, job: Job) {
        if self.stopping {
            let error = daemon_report(ErrorKind::Stopping, "vamsa-migrate is stopping".into());
            send(&job, Event::done_failed(error, job.kind == JobKind::DryRun));
            return;
        }
        self.status.send_modify(|s| s.busy = true);
        self.run_job(&job).await;
        self.starting = false;
        self.status.send_modify(|s| {
            s.busy = false;
            s.cancel = None;
        });
    }

    /// Reads the folder on the blocking pool, reusing what did not change since the last read.
    async fn load_folder(&mut self, settings: &Settings) -> Result<Arc<MigrationSet>, SourceError> {
        let dir = settings.migrations_dir.clone();
        let previous = self.last_set.clone();
        let read = {
            let dir = dir.clone();
            tokio::task::spawn_blocking(move || {
                MigrationSet::load_reusing(&dir, previous.as_deref())
            })
        };
        let set = match read.await {
            Ok(result) => Arc::new(result?),
            Err(e) => {
                return Err(SourceError::Io {
                    path: dir,
                    source: std::io::Error::other(e),
                })
            }
        };
        // Hashes and stamps only: an idle daemon must not hold the text of every file it read.
        self.last_set = Some(Arc::new(set.without_texts()));
        Ok(set)
    }

    fn set_status(&self, text: String) {
        self.notifier.status(&text);
        self.status.send_modify(|s| s.line = Some(text));
    }

    /// The open connection, or a new one. A connection that broke (PostgreSQL restarted while
    /// we were idle) is replaced here, on next use: no polling while idle.
    async fn client(&mut self) -> Result<Rc<Client>, EngineError> {
        if let Some(c) = &self.connection {
            if !c.client.is_closed() {
                return Ok(c.client.clone());
            }
        }
        let settings = self.settings.borrow().clone();
        let pg = settings.pg_config(&self.env)?;
        match crate::db::connect(&pg).await {
            Ok(client) => {
                let client = Rc::new(client);
                self.connection = Some(Connection {
                    client: client.clone(),
                    made_with: settings,
                });
                Ok(client)
            }
            Err(e) => {
                self.notifier.status(&format!(
                    "Database unreachable at {}: {e}",
                    describe_target(&pg.driver)
                ));
                Err(e.into())
            }
        }
    }

    /// The connection for a job, in the state of a new one: the daemon keeps its connection,
    /// and nothing an earlier run set may change what this one does (the CLI gets the same
    /// from its own new connection). A session that cannot be reset is replaced.
    async fn clean_session(&mut self) -> Result<Rc<Client>, EngineError> {
        let client = self.client().await?;
        match crate::db::reset_session(&client).await {
            Ok(()) => Ok(client),
            Err(e) => {
                tracing::warn!("{e}; opening a new connection");
                self.connection = None;
                self.client().await
            }
        }
    }

    /// Connects with capped exponential backoff while the server is unreachable, keeping
    /// systemd informed. Errors that waiting cannot fix (bad settings, wrong credentials, no
    /// such database) end the wait with `BAD_CONFIG`, or the unit would hang in "activating"
    /// for ever.
    pub(crate) async fn wait_for_database(&mut self) -> Result<(), u8> {
        let settings = self.settings.borrow().clone();
        let pg = settings.pg_config(&self.env).map_err(|e| {
            crate::logging::fatal(&e.to_string());
            exit::BAD_CONFIG
        })?;
        let target = describe_target(&pg.driver);
        let connect_timeout = pg
            .driver
            .get_connect_timeout()
            .copied()
            .unwrap_or(Duration::from_secs(10));
        let mut delay = Duration::from_millis(250);
        for attempt in 1u64.. {
            let allowance = connect_timeout + delay + Duration::from_secs(5);
            self.notifier.extend_timeout(allowance);
            match self.client().await {
                Ok(_) => return Ok(()),
                Err(e) if diagnosis::is_permanent(&e) => {
                    crate::logging::fatal(&format!("{e}; {}", diagnosis::next_step(&e)));
                    self.notifier
                        .status(&format!("Cannot use the database at {target}: {e}"));
                    return Err(exit::BAD_CONFIG);
                }
                Err(e) => {
                    let text = format!("Waiting for database at {target} (attempt {attempt})");
                    self.notifier.status(&text);
                    let cause = diagnosis::cause(&e).unwrap_or_default();
                    tracing::warn!(
                        ATTEMPT = attempt,
                        SQLSTATE = e.sqlstate(),
                        "{text}: {e}. {cause}"
                    );
                }
            }
            self.notifier.extend_timeout(allowance);
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(settings.daemon.db_retry_max.max(Duration::from_millis(250)));
        }
        Err(exit::START_FAILED)
    }

    async fn run_job(&mut self, job: &Job) {
        let settings = self.settings.borrow().clone();
        tracing::debug!(ORIGIN = %job.origin, "job {:?}", job.kind);
        let set = match self.load_folder(&settings).await {
            Ok(set) => set,
            Err(e) if job.kind == JobKind::FolderSettled => {
                return tracing::info!(
                    "migrations folder changed but is not consistent yet ({e}); waiting for more changes"
                )
            }
            Err(e) => return self.fail(job, &e.into()),
        };
        let client = match self.clean_session().await {
            Ok(c) => c,
            Err(e) => return self.fail(job, &e),
        };
        let cancel = client.cancel_token();
        self.status.send_modify(|s| s.cancel = Some(cancel));
        let pg = match settings.pg_config(&self.env) {
            Ok(pg) => pg,
            Err(e) => return self.fail(job, &e.into()),
        };
        let engine = Engine::new(&settings, &pg);
        let apply = match job.kind {
            JobKind::Apply => true,
            JobKind::DryRun => false,
            JobKind::Status => return self.answer_status(job, &engine, &client, &set).await,
            JobKind::FolderChanged | JobKind::FolderSettled => {
                match self.folder_changed(job, &engine, &client, &set).await {
                    Some(apply) => apply,
                    None => return,
                }
            }
        };
        self.run_engine(job, apply, &engine, &client, &set).await;
    }

    /// After a folder change: log what is newly pending; `Some(true)` when the policy is to
    /// apply it now, `None` when the job is answered already.
    async fn folder_changed(
        &mut self,
        job: &Job,
        engine: &Engine<'_>,
        client: &Client,
        set: &MigrationSet,
    ) -> Option<bool> {
        if let Err(e) = self.report_pending(engine, client, set).await {
            let error = match e {
                // The database is newer than the code: the same refusal as a run's.
                EngineError::NewerDatabase(_) => diagnosis::report(&e),
                _ => {
                    let message = "cannot read the tracking table (see the log)".into();
                    daemon_report(ErrorKind::Database, message)
                }
            };
            let event = Event::done_failed(error, true);
            log_event(&event, &job.origin.to_string());
            send(job, event);
            return None;
        }
        if engine.settings.daemon.apply != ApplyPolicy::OnChange {
            send(job, Event::done_ok(0, true));
            return None;
        }
        Some(true)
    }

    async fn run_engine(
        &mut self,
        job: &Job,
        apply: bool,
        engine: &Engine<'_>,
        client: &Client,
        set: &MigrationSet,
    ) {
        let options = RunOptions {
            plan: PlanOptions::default(),
            dry_run: !apply,
            no_backup: false,
            origin: job.origin.clone(),
            stop: StopSignal::new(self.stop.clone()),
        };
        let (notifier, starting) = (self.notifier, self.starting);
        let origin = job.origin.to_string();
        let mut emit = |event: Event| {
            log_event(&event, &origin);
            notify_progress(notifier, starting, &event);
            send(job, event);
        };
        let result = engine.run(client, set, &options, &mut emit).await;
        if let Err(e) = &result {
            self.forget_broken_connection(e);
        }
        let (text, failed) = match result {
            // Until the next run: the release is known to fail on this database.
            Err(EngineError::Rehearsal(caught)) => (rehearsal_status(&caught), true),
            _ => (self.status_text(engine, client, set).await, false),
        };
        self.release_failed = failed.then(|| text.clone());
        self.set_status(text);
    }

    /// Answers `status`: the report, then `done`.
    async fn answer_status(
        &mut self,
        job: &Job,
        engine: &Engine<'_>,
        client: &Client,
        set: &MigrationSet,
    ) {
        match engine.status(client, set, &PlanOptions::default()).await {
            Ok(status) => {
                let warnings: Vec<String> = set.warnings.iter().map(|w| w.to_string()).collect();
                let mut status = status_report(&status, &warnings);
                status.last_run = crate::db::history::last(client).await;
                match engine.schema_drift(client).await {
                    Ok(drift) => crate::report::add_schema_drift(&mut status, drift),
                    Err(e) => tracing::warn!("{e}"),
                }
                send(job, DaemonReply::Status { status });
                send(job, Event::done_ok(0, false));
            }
            Err(e) => self.fail(job, &e),
        }
    }

    /// Reports an error that stopped a job before the engine ran.
    fn fail(&mut self, job: &Job, e: &EngineError) {
        self.forget_broken_connection(e);
        let event = Event::done_failed(diagnosis::report(e), job.kind == JobKind::DryRun);
        log_event(&event, &job.origin.to_string());
        send(job, event);
    }

    fn forget_broken_connection(&mut self, e: &EngineError) {
        if diagnosis::connection_lost(e) {
            self.connection = None;
        }
    }

    /// Logs newly pending migrations and sets STATUS, from one plan; an error when the
    /// database could not be read, or is newer than the code under `unknown_rows = "refuse"`.
    async fn report_pending(
        &mut self,
        engine: &Engine<'_>,
        client: &Client,
        set: &MigrationSet,
    ) -> Result<(), EngineError> {
        let status = match engine.status(client, set, &PlanOptions::default()).await {
            Ok(status) => status,
            Err(e) => {
                tracing::warn!("cannot read the tracking table after a folder change: {e}");
                self.forget_broken_connection(&e);
                return Err(e);
            }
        };
        engine
            .check_unknown_rows(&status.plan.missing, &mut |event| {
                log_event(&event, "folder change")
            })
            .map_err(EngineError::from)?;
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
        if self.last_pending.as_ref() != Some(&pending) && !pending.is_empty() {
            tracing::info!(
                PENDING = pending.len(),
                "{} pending migration{} detected: {}",
                pending.len(),
                if pending.len() == 1 { "" } else { "s" },
                pending.join(", ")
            );
        }
        self.last_pending = Some(pending);
        let line = status_line_for(&status.plan, engine.settings.daemon.apply);
        self.set_status(match &self.release_failed {
            Some(failed) => format!("{failed}; now {line}"),
            None => line,
        });
        Ok(())
    }

    /// The STATUS text for the database as it is now.
    async fn status_text(
        &self,
        engine: &Engine<'_>,
        client: &Client,
        set: &MigrationSet,
    ) -> String {
        match engine.status(client, set, &PlanOptions::default()).await {
            Ok(status) => status_line_for(&status.plan, engine.settings.daemon.apply),
            Err(e) => format!("Cannot read the tracking table: {e}"),
        }
    }

    /// The STATUS text from a fresh read of the folder and the database.
    async fn current_status(&mut self) -> String {
        let settings = self.settings.borrow().clone();
        let Ok(set) = self.load_folder(&settings).await else {
            return "Migrations folder unreadable; see the journal".into();
        };
        let (Ok(pg), Ok(client)) = (settings.pg_config(&self.env), self.client().await) else {
            return "Database unreachable; see the journal".into();
        };
        let engine = Engine::new(&settings, &pg);
        self.status_text(&engine, &client, &set).await
    }
}

fn send(job: &Job, reply: impl Into<Reply>) {
    if let Some(to) = &job.reply {
        // The client may be gone; the run goes on regardless.
        let _ = to.send(reply.into());
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
        Event::Rehearsing { migrations, .. } => {
            notifier.status(&format!(
                "Rehearsing {migrations} migrations on a scratch copy..."
            ));
            if starting {
                // Restoring the dump takes about as long as taking it.
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

/// The STATUS after a release failed in its rehearsal.
fn rehearsal_status(caught: &EngineError) -> String {
    let headline = caught.to_string();
    let headline = headline.lines().next().unwrap_or_default();
    format!("Rehearsal failed, database not changed: {headline}")
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
pub(crate) fn log_event(event: &Event, origin: &str) {
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
        Event::Rehearsing {
            database,
            migrations,
        } => tracing::info!(
            ORIGIN = origin,
            REHEARSAL = "started",
            "Rehearsing {migrations} migration(s) on a scratch copy ({database})"
        ),
        Event::Rehearsed { ms, .. } => tracing::info!(
            ORIGIN = origin,
            REHEARSAL = "passed",
            DURATION_MS = ms,
            "Rehearsal passed; the scratch copy was dropped"
        ),
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
        Some(e) if e.kind == ErrorKind::Rehearsal => tracing::error!(
            ORIGIN = origin,
            REHEARSAL = "failed",
            MIGRATION = e.migration.as_deref().unwrap_or(""),
            SQLSTATE = e.sqlstate.as_deref().unwrap_or(""),
            HINT = %e.hint,
            CAUSE = e.cause.as_deref().unwrap_or(""),
            "{}",
            e.message
        ),
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
