//! `vamsa-migrate daemon`: a long-running systemd service (`Type=notify`) that applies pending
//! migrations at start-up, watches the folder, and serves the trigger socket. It drives the
//! same [`Engine`](crate::engine::Engine) as the CLI through the runner, an actor that owns the
//! connection and the job state; the main loop (signals, watch, watchdog) and the socket only
//! send it messages and read what it publishes.

pub(crate) mod peer;
pub(crate) mod runner;
pub(crate) mod slots;
pub(crate) mod socket;
pub(crate) mod socket_file;
pub(crate) mod systemd;
pub(crate) mod watch;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook_tokio::Signals;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::config::{ConfigError, Layer, Settings};
use crate::diagnosis::daemon_report;
use crate::engine::StopRequest;
use crate::exit::daemon as exit;
use crate::protocol::{ErrorKind, ErrorReport, Event, Origin, Reply};
use runner::{Control, Job, JobKind, Runner, RunnerStatus};
use systemd::Notifier;

/// Runs the service until SIGTERM/SIGINT; the exit code (`exit::daemon`). `config` is
/// `--config`; `flags` the layer of the command-line flags, applied over the file and the
/// environment at start-up and again on every SIGHUP reload.
pub fn main(config: Option<PathBuf>, flags: Layer) -> u8 {
    let env: HashMap<String, String> = std::env::vars().collect();
    let source = Source { config, flags };
    let settings = match source.load(&env) {
        Ok(s) => s,
        Err(e) => {
            crate::logging::init(Default::default(), "info");
            crate::logging::fatal(&format!("invalid configuration: {e}"));
            return exit::BAD_CONFIG;
        }
    };
    crate::logging::init(settings.daemon.log_target, &settings.daemon.log_level);
    warn_of_readable_secrets(source.config.as_deref(), &settings);
    // The command line's checks ran before this logging existed.
    crate::cli::flags::warn_of_password_flag(&source.flags);
    raise_fd_limit();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            crate::logging::fatal(&format!("cannot start the async runtime: {e}"));
            return exit::START_FAILED;
        }
    };
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, run(source, settings, env))
}

/// Where the daemon's settings come from, at the start and on every reload.
#[derive(Clone)]
struct Source {
    config: Option<PathBuf>,
    flags: Layer,
}

impl Source {
    fn load(&self, env: &HashMap<String, String>) -> Result<Settings, ConfigError> {
        let mut settings = Settings::load(self.config.as_deref(), env)?;
        settings.apply(self.flags.clone());
        Ok(settings)
    }
}

/// The main loop's handles: it publishes the settings, reads the runner's status, and sends
/// the runner jobs and control messages.
struct Service {
    source: Source,
    notifier: Notifier,
    env: HashMap<String, String>,
    settings: tokio::sync::watch::Sender<Arc<Settings>>,
    status: tokio::sync::watch::Receiver<RunnerStatus>,
    jobs: mpsc::UnboundedSender<Job>,
    control: mpsc::UnboundedSender<Control>,
    /// SIGTERM/SIGINT as the engine sees it: stop at the next phase boundary, then (once
    /// `stop_grace` ran out) at once.
    stop: tokio::sync::watch::Sender<StopRequest>,
}

async fn run(source: Source, settings: Settings, env: HashMap<String, String>) -> u8 {
    let notifier = Notifier;
    let mut signals = match Signals::new([SIGTERM, SIGINT, SIGHUP]) {
        Ok(s) => s,
        Err(e) => {
            crate::logging::fatal(&format!("cannot install signal handlers: {e}"));
            return exit::START_FAILED;
        }
    };
    let trigger = match socket::acquire(&settings.daemon) {
        Ok(t) => t,
        Err(e) => {
            crate::logging::fatal(&format!("trigger socket: {e}"));
            return exit::START_FAILED;
        }
    };
    let _socket_cleanup = RemoveOnDrop(trigger.bound_path.clone());
    tracing::info!(
        SOCKET = %settings.daemon.socket_path.display(),
        "vamsa-migrate {} starting: migrations in {}, trigger socket {}",
        env!("CARGO_PKG_VERSION"),
        settings.migrations_dir.display(),
        trigger.bound_path.as_deref().map_or("from systemd".to_string(), |p| p.display().to_string()),
    );
    let (settings, settings_rx) = tokio::sync::watch::channel(Arc::new(settings));
    let (stop, stop_rx) = tokio::sync::watch::channel(StopRequest::Running);
    let (mut runner, status) = Runner::new(settings_rx, stop_rx, env.clone(), notifier);
    // Wait for PostgreSQL (it may still be booting), unless we are told to stop.
    tokio::select! {
        connected = runner.wait_for_database() => if let Err(code) = connected { return code },
        _ = signals.next() => {
            notifier.stopping("Stopped while waiting for the database");
            return exit::OK;
        }
    }
    let (jobs, job_rx) = mpsc::unbounded_channel();
    let (control, control_rx) = mpsc::unbounded_channel();
    let runner_task = tokio::task::spawn_local(runner.run(job_rx, control_rx));
    let service = Service {
        source,
        notifier,
        env,
        settings,
        status,
        jobs,
        control,
        stop,
    };
    service.serve(signals, trigger.listener, runner_task).await
}

impl Service {
    /// Start-up run, READY, then the main loop until a signal stops the service.
    async fn serve(
        self,
        mut signals: Signals,
        listener: tokio::net::UnixListener,
        mut runner_task: JoinHandle<()>,
    ) -> u8 {
        // Watch before the start-up run, so a change made during it is not missed.
        let (changed_tx, changed) = mpsc::unbounded_channel();
        let dir = self.settings.borrow().migrations_dir.clone();
        let watch = start_watch(&dir, &changed_tx);
        if let Some(code) = self.start_up(&mut signals).await {
            return code;
        }
        let server = tokio::task::spawn_local(socket::serve(
            listener,
            socket::Context {
                status: self.status.clone(),
                settings: self.settings.subscribe(),
                jobs: self.jobs.clone(),
            },
        ));
        let runner_alive = self
            .main_loop(&mut signals, changed, changed_tx, watch, &mut runner_task)
            .await;
        server.abort();
        if !runner_alive {
            // Only a bug ends the runner: do not pretend to be a working service.
            crate::logging::fatal("the migration runner stopped unexpectedly; exiting");
            return exit::START_FAILED;
        }
        self.stop().await;
        exit::OK
    }

    /// The start-up job, then READY=1; `Some(code)` when the service must exit instead.
    async fn start_up(&self, signals: &mut Signals) -> Option<u8> {
        let settings = self.settings.borrow().clone();
        let kind = if settings.daemon.apply_on_start {
            JobKind::Apply
        } else {
            JobKind::FolderChanged
        };
        // Until READY, systemd's start timeout runs: keep extending it while the start-up job
        // works (a long migration, a lock held elsewhere), and still obey SIGTERM.
        let extender = {
            let (status, notifier) = (self.status.clone(), self.notifier);
            tokio::task::spawn_local(async move {
                loop {
                    tokio::time::sleep(Duration::from_secs(10)).await;
                    if status.borrow().busy {
                        notifier.extend_timeout(Duration::from_secs(30));
                    }
                }
            })
        };
        let started = tokio::select! {
            result = run_and_wait(&self.jobs, kind, Origin::Startup) => Some(result),
            _ = signals.next() => None,
        };
        extender.abort();
        let Some(result) = started else {
            self.stop().await;
            return Some(exit::OK);
        };
        match result {
            // The application must never start on a schema newer than its code, whatever
            // exit_on_start_failure says.
            Err(error) if error.kind == ErrorKind::NewerDatabase => {
                let headline = error.message.lines().next().unwrap_or_default();
                self.notifier.status(&format!("Refused: {headline}"));
                crate::logging::fatal(
                    "the database is newer than this code; exiting without READY so that the application does not start on it",
                );
                return Some(exit::DATABASE_NEWER);
            }
            Err(error)
                if error.kind == ErrorKind::Rehearsal && settings.daemon.exit_on_start_failure =>
            {
                crate::logging::fatal(
                    "the start-up release failed in its rehearsal (the database was not changed); exiting without READY so that units requiring vamsa-migrate do not start",
                );
                return Some(exit::REHEARSAL_FAILED);
            }
            Err(error) if settings.daemon.exit_on_start_failure => {
                self.notifier
                    .status(&format!("Start-up migration failed: {}", error.message));
                crate::logging::fatal(
                    "start-up migration failed; exiting so that units requiring vamsa-migrate do not start",
                );
                return Some(exit::MIGRATION_FAILED);
            }
            _ => {}
        }
        // The start-up job left its STATUS; compute one only if it did not get that far.
        let last = self.status.borrow().line.clone();
        let status = match last {
            Some(s) => s,
            None => self.ask_status().await,
        };
        tracing::info!("ready: {status}");
        self.notifier.ready(&status);
        None
    }

    /// Signals, folder changes and the watchdog, until SIGTERM/SIGINT (true) or the runner
    /// ended (false).
    async fn main_loop(
        &self,
        signals: &mut Signals,
        mut changed: mpsc::UnboundedReceiver<()>,
        changed_tx: mpsc::UnboundedSender<()>,
        mut watch: Option<watch::FolderWatch>,
        runner_task: &mut JoinHandle<()>,
    ) -> bool {
        let mut settle_deadline: Option<Instant> = None;
        let mut watchdog = systemd::watchdog_interval().map(tokio::time::interval);
        let dir = || self.settings.borrow().migrations_dir.clone();
        loop {
            tokio::select! {
                signal = signals.next() => match signal {
                    Some(SIGHUP) => {
                        self.reload().await;
                        watch = start_watch(&dir(), &changed_tx);
                    }
                    _ => break,
                },
                Some(()) = changed.recv() => {
                    settle_deadline = Some(Instant::now() + self.settings.borrow().daemon.settle);
                }
                _ = sleep_until(settle_deadline), if settle_deadline.is_some() => {
                    settle_deadline = None;
                    // Follow a replaced folder: watch the new inodes from now on.
                    watch = start_watch(&dir(), &changed_tx);
                    let _ = self.jobs.send(Job {
                        kind: JobKind::FolderSettled,
                        origin: Origin::FolderChange,
                        reply: None,
                    });
                }
                _ = tick(&mut watchdog), if watchdog.is_some() => self.notifier.watchdog(),
                _ = &mut *runner_task => return false,
            }
        }
        drop(watch);
        true
    }

    /// The STATUS text from the runner, computed from the folder and the database now.
    async fn ask_status(&self) -> String {
        let (reply, answer) = oneshot::channel();
        let _ = self.control.send(Control::Reload { reply: Some(reply) });
        answer
            .await
            .unwrap_or_else(|_| "the migration runner stopped; see the journal".into())
    }

    /// SIGHUP: re-read the configuration (off the runtime thread); an invalid one is logged
    /// and the old one kept.
    async fn reload(&self) {
        self.notifier.reloading();
        let source = self.source.clone();
        let loaded = tokio::task::spawn_blocking(move || {
            let env: HashMap<String, String> = std::env::vars().collect();
            let new = source.load(&env).map_err(|e| e.to_string())?;
            let warnings = crate::config::secret_warnings(source.config.as_deref(), &new);
            Ok((new, warnings))
        })
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
        match loaded {
            Ok((new, warnings)) => {
                if new.daemon.socket_path != self.settings.borrow().daemon.socket_path {
                    tracing::warn!(
                        "socket_path changed; the new path takes effect after a restart"
                    );
                }
                for warning in warnings {
                    tracing::warn!("{warning}");
                }
                self.settings.send_replace(Arc::new(new));
                tracing::info!("configuration reloaded");
            }
            Err(e) => {
                tracing::error!("configuration reload failed, keeping the previous one: {e}")
            }
        }
        // While a run is in progress the connection is busy with it: do not wait behind it
        // (the main loop would stall, and with it the watchdog); reuse the last STATUS.
        let (busy, last) = {
            let status = self.status.borrow();
            (status.busy, status.line.clone())
        };
        let status = match last {
            Some(s) if busy => {
                let _ = self.control.send(Control::Reload { reply: None });
                s
            }
            _ => self.ask_status().await,
        };
        self.notifier.ready(&status);
    }

    /// SIGTERM/SIGINT: accept nothing new; the run in progress starts no further phase
    /// (backup, rehearsal, migration); give its current one `stop_grace` to finish, then stop
    /// it (kill `pg_dump`, or cancel the migration server-side so it rolls back), and exit.
    async fn stop(&self) {
        let _ = self.control.send(Control::Stop);
        self.stop.send_replace(StopRequest::AfterPhase);
        let settings = self.settings.borrow().clone();
        let grace = settings.daemon.stop_grace;
        let mut status = self.status.clone();
        if !status.borrow().busy {
            self.notifier.stopping("Stopping");
            tracing::info!("stopping");
            return;
        }
        self.notifier
            .stopping("Stopping: waiting for the migration in progress");
        self.notifier
            .extend_timeout(grace + Duration::from_secs(15));
        tracing::info!(
            "stopping: waiting up to {} for the migration in progress",
            humantime::format_duration(grace)
        );
        if wait_idle(&mut status, grace).await {
            return;
        }
        tracing::warn!("stop_grace elapsed: stopping the run in progress");
        self.stop.send_replace(StopRequest::Now);
        // A backup ends at once (its pg_dump is killed); a migration's statement needs a
        // server-side cancel, which must not hit the run's own bookkeeping after a backup.
        if wait_idle(&mut status, Duration::from_secs(2)).await {
            return;
        }
        let token = status.borrow().cancel.clone();
        if let Some(token) = token {
            tracing::warn!("cancelling the migration in progress; it rolls back");
            if let Ok(pg) = settings.pg_config(&self.env) {
                crate::db::cancel(&token, &pg).await;
            }
        }
        if !wait_idle(&mut status, Duration::from_secs(10)).await {
            tracing::error!("the migration did not stop after cancellation; exiting anyway (PostgreSQL rolls it back when the connection closes)");
        }
    }
}

/// Each trigger connection is a descriptor: lift the soft limit (often 1024) towards the hard
/// one, as systemd recommends for services that do not use select(2).
fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, hard.min(65536), hard);
        }
    }
}

struct RemoveOnDrop(Option<PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(path) = &self.0 {
            let _ = std::fs::remove_file(path);
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

async fn tick(interval: &mut Option<tokio::time::Interval>) {
    match interval {
        Some(i) => {
            i.tick().await;
        }
        None => std::future::pending().await,
    }
}

fn start_watch(dir: &Path, tx: &mpsc::UnboundedSender<()>) -> Option<watch::FolderWatch> {
    match watch::watch(dir, tx.clone()) {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(
                "cannot watch {}: {e}; changes are noticed on trigger only",
                dir.display()
            );
            None
        }
    }
}

/// Queues a job and waits for its `done`; returns whether it succeeded and its error text.
async fn run_and_wait(
    jobs: &mpsc::UnboundedSender<Job>,
    kind: JobKind,
    origin: Origin,
) -> Result<(), ErrorReport> {
    let stopped = |message: &str| daemon_report(ErrorKind::Unknown, message.into());
    let (tx, mut rx) = mpsc::unbounded_channel();
    if jobs
        .send(Job {
            kind,
            origin,
            reply: Some(tx),
        })
        .is_err()
    {
        return Err(stopped("the runner stopped"));
    }
    // No `done` means the runner died mid-job: that is a failure, never a success.
    let mut result = Err(stopped("the migration runner stopped before answering"));
    while let Some(event) = rx.recv().await {
        if let Reply::Event(Event::Done { ok, error, .. }) = event {
            result = match (ok, error) {
                (true, _) => Ok(()),
                (false, Some(error)) => Err(error),
                (false, None) => Err(stopped("the run failed without a report")),
            };
        }
    }
    result
}

/// Waits until the runner is idle, at most `limit`; whether it is. A runner that is gone is
/// idle.
async fn wait_idle(
    status: &mut tokio::sync::watch::Receiver<RunnerStatus>,
    limit: Duration,
) -> bool {
    tokio::time::timeout(limit, status.wait_for(|s| !s.busy))
        .await
        .is_ok()
}

/// Logs [`crate::config::secret_warnings`]; the file is `--config`, else `VAMSA_MIGRATE_CONFIG`
/// (which clap already folded into it), else the packaged one.
fn warn_of_readable_secrets(config: Option<&Path>, settings: &Settings) {
    for warning in crate::config::secret_warnings(config, settings) {
        tracing::warn!("{warning}");
    }
}
