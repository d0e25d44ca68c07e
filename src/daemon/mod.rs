//! `vamsa-migrate daemon`: a long-running systemd service (`Type=notify`) that applies pending
//! migrations at start-up, watches the folder, and serves the trigger socket. It drives the
//! same [`Engine`](crate::engine::Engine) as the CLI through the [`runner`].

pub mod peer;
pub mod runner;
pub mod socket;
pub mod systemd;
pub mod watch;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;

use futures_util::StreamExt;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::config::{describe_target, Settings};
use crate::exit::daemon as exit;
use crate::protocol::{Event, Reply};
use runner::{Job, JobKind, Shared};
use systemd::Notifier;

pub fn main(config: Option<PathBuf>) -> u8 {
    let env: HashMap<String, String> = std::env::vars().collect();
    let settings = match Settings::load(config.as_deref(), &env) {
        Ok(s) => s,
        Err(e) => {
            crate::logging::init(Default::default(), "info");
            tracing::error!("invalid configuration: {e}");
            return exit::BAD_CONFIG;
        }
    };
    crate::logging::init(settings.daemon.log_target, &settings.daemon.log_level);
    warn_of_readable_secrets(config.as_deref(), &settings);
    raise_fd_limit();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("cannot start the async runtime: {e}");
            return exit::START_FAILED;
        }
    };
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, run(config, settings, env))
}

async fn run(config: Option<PathBuf>, settings: Settings, env: HashMap<String, String>) -> u8 {
    let notifier = Notifier;
    let mut signals = match signal_hook_tokio::Signals::new([SIGTERM, SIGINT, SIGHUP]) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("cannot install signal handlers: {e}");
            return exit::START_FAILED;
        }
    };
    let trigger = match socket::acquire(&settings.daemon) {
        Ok(t) => t,
        Err(e) => {
            tracing::error!("trigger socket: {e}");
            return exit::START_FAILED;
        }
    };
    let bound_path = trigger.bound_path.clone();
    let _socket_cleanup = RemoveOnDrop(bound_path.clone());
    tracing::info!(
        SOCKET = %settings.daemon.socket_path.display(),
        "vamsa-migrate {} starting: migrations in {}, trigger socket {}",
        env!("CARGO_PKG_VERSION"),
        settings.migrations_dir.display(),
        bound_path.as_deref().map_or("from systemd".to_string(), |p| p.display().to_string()),
    );

    let shared = Rc::new(Shared::new(settings.clone(), env, notifier));
    let (jobs, job_rx) = mpsc::unbounded_channel();
    let mut runner_task = tokio::task::spawn_local(runner::run(shared.clone(), job_rx));

    // Wait for PostgreSQL (it may still be booting), unless we are told to stop.
    tokio::select! {
        connected = wait_for_database(&shared) => if let Err(code) = connected { return code },
        _ = signals.next() => {
            notifier.stopping("Stopped while waiting for the database");
            return exit::OK;
        }
    }

    // Watch before the start-up run, so a change made during it is not missed.
    let (changed_tx, mut changed) = mpsc::unbounded_channel();
    let mut watch = start_watch(&settings.migrations_dir, &changed_tx);

    let kind = if settings.daemon.apply_on_start {
        JobKind::Apply
    } else {
        JobKind::FolderChanged
    };
    // Until READY, systemd's start timeout runs: keep extending it while the start-up job
    // works (a long migration, a lock held elsewhere), and still obey SIGTERM.
    let extender = {
        let shared = shared.clone();
        tokio::task::spawn_local(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(10)).await;
                if shared.busy.get() {
                    shared.notifier.extend_timeout(Duration::from_secs(30));
                }
            }
        })
    };
    let started = tokio::select! {
        result = run_and_wait(&jobs, kind, "start-up") => Some(result),
        _ = signals.next() => None,
    };
    extender.abort();
    let Some((ok, error)) = started else {
        stop(&shared).await;
        return exit::OK;
    };
    shared.starting.set(false);
    if !ok && settings.daemon.exit_on_start_failure {
        notifier.status(&format!(
            "Start-up migration failed: {}",
            error.unwrap_or_default()
        ));
        tracing::error!(
            "start-up migration failed; exiting so that units requiring vamsa-migrate do not start"
        );
        return exit::MIGRATION_FAILED;
    }
    // The start-up job left its STATUS; compute one only if it did not get that far.
    let last = shared.last_status.borrow().clone();
    let status = match last {
        Some(s) => s,
        None => current_status(&shared).await,
    };
    tracing::info!("ready: {status}");
    notifier.ready(&status);

    let server = tokio::task::spawn_local(socket::serve(
        trigger.listener,
        shared.clone(),
        jobs.clone(),
    ));
    let mut settle_deadline: Option<Instant> = None;
    let mut watchdog = systemd::watchdog_interval().map(tokio::time::interval);

    loop {
        tokio::select! {
            signal = signals.next() => match signal {
                Some(SIGHUP) => {
                    reload(&shared, config.as_deref()).await;
                    watch = start_watch(&shared.settings.borrow().migrations_dir, &changed_tx);
                }
                _ => break,
            },
            Some(()) = changed.recv() => {
                settle_deadline = Some(Instant::now() + shared.settings.borrow().daemon.settle);
            }
            _ = sleep_until(settle_deadline), if settle_deadline.is_some() => {
                settle_deadline = None;
                // Follow a replaced folder: watch the new inodes from now on.
                watch = start_watch(&shared.settings.borrow().migrations_dir, &changed_tx);
                folder_settled(&shared, &jobs);
            }
            _ = tick(&mut watchdog), if watchdog.is_some() => notifier.watchdog(),
            _ = &mut runner_task => {
                // Only a bug ends the runner: do not pretend to be a working service.
                tracing::error!("the migration runner stopped unexpectedly; exiting");
                return exit::START_FAILED;
            }
        }
    }
    drop(watch);
    server.abort();
    stop(&shared).await;
    exit::OK
}

/// Each trigger connection is a descriptor: lift the soft limit (often 1024) towards the hard
/// one, as systemd recommends for services that do not use select(2).
fn raise_fd_limit() {
    // SAFETY: getrlimit/setrlimit on a struct we own.
    unsafe {
        let mut limit: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max.min(65536);
            let _ = libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
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

/// The folder has been quiet for `settle`: plan only if it is consistent, never from a
/// half-written state.
fn folder_settled(shared: &Shared, jobs: &mpsc::UnboundedSender<Job>) {
    // The runner's own read right after this one reuses every file read here.
    match shared.load_folder() {
        Ok(_) => {
            let _ = jobs.send(Job {
                kind: JobKind::FolderChanged,
                origin: "folder change".into(),
                reply: None,
            });
        }
        Err(e) => tracing::info!(
            "migrations folder changed but is not consistent yet ({e}); waiting for more changes"
        ),
    }
}

/// Connects with capped exponential backoff while the server is unreachable, keeping systemd
/// informed. Errors that waiting cannot fix (bad settings, wrong credentials, no such
/// database) end the wait with `BAD_CONFIG`, or the unit would hang in "activating" forever.
async fn wait_for_database(shared: &Shared) -> Result<(), u8> {
    let settings = shared.settings.borrow().clone();
    let pg = match settings.pg_config(&shared.env) {
        Ok(pg) => pg,
        Err(e) => {
            tracing::error!("{e}");
            return Err(exit::BAD_CONFIG);
        }
    };
    let target = describe_target(&pg);
    let connect_timeout = pg
        .get_connect_timeout()
        .copied()
        .unwrap_or(Duration::from_secs(10));
    let mut delay = Duration::from_millis(250);
    for attempt in 1u64.. {
        shared
            .notifier
            .extend_timeout(connect_timeout + delay + Duration::from_secs(5));
        match shared.client().await {
            Ok(_) => return Ok(()),
            Err(e) if crate::diagnosis::is_permanent(&e) => {
                tracing::error!(
                    SQLSTATE = e.sqlstate().unwrap_or(""),
                    "{e}; fix database_url (or the password) and start again"
                );
                shared
                    .notifier
                    .status(&format!("Cannot use the database at {target}: {e}"));
                return Err(exit::BAD_CONFIG);
            }
            Err(e) => {
                let text = format!("Waiting for database at {target} (attempt {attempt})");
                shared.notifier.status(&text);
                tracing::warn!(ATTEMPT = attempt, "{text}: {e}");
            }
        }
        shared
            .notifier
            .extend_timeout(delay + connect_timeout + Duration::from_secs(5));
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(settings.daemon.db_retry_max.max(Duration::from_millis(250)));
    }
    Err(exit::START_FAILED)
}

/// Queues a job and waits for its `done`; returns whether it succeeded and its error text.
async fn run_and_wait(
    jobs: &mpsc::UnboundedSender<Job>,
    kind: JobKind,
    origin: &str,
) -> (bool, Option<String>) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    if jobs
        .send(Job {
            kind,
            origin: origin.into(),
            reply: Some(tx),
        })
        .is_err()
    {
        return (false, Some("the runner stopped".into()));
    }
    // No `done` means the runner died mid-job: that is a failure, never a success.
    let mut result = (
        false,
        Some("the migration runner stopped before answering".into()),
    );
    while let Some(event) = rx.recv().await {
        if let Reply::Event(Event::Done { ok, error, .. }) = event {
            result = (ok, error.map(|e| e.message));
        }
    }
    result
}

async fn current_status(shared: &Shared) -> String {
    let settings = shared.settings.borrow().clone();
    let Ok(set) = shared.load_folder() else {
        return "Migrations folder unreadable; see the journal".into();
    };
    let (Ok(pg), Ok(client)) = (settings.pg_config(&shared.env), shared.client().await) else {
        return "Database unreachable; see the journal".into();
    };
    let engine = crate::engine::Engine::new(&settings, &pg);
    runner::status_text(shared, &engine, &client, &set).await
}

/// Logs [`crate::config::secret_warnings`]; the file is `--config`, else `VAMSA_MIGRATE_CONFIG`
/// (which clap already folded into it), else the packaged one.
fn warn_of_readable_secrets(config: Option<&Path>, settings: &Settings) {
    for warning in crate::config::secret_warnings(config, settings) {
        tracing::warn!("{warning}");
    }
}

/// SIGHUP: re-read the configuration; an invalid one is logged and the old one kept.
async fn reload(shared: &Shared, config: Option<&Path>) {
    shared.notifier.reloading();
    let env: HashMap<String, String> = std::env::vars().collect();
    match Settings::load(config, &env) {
        Ok(new) => {
            let old = shared.settings.borrow().clone();
            if new.daemon.socket_path != old.daemon.socket_path {
                tracing::warn!("socket_path changed; the new path takes effect after a restart");
            }
            if new.database_url != old.database_url
                || new.database_password_file != old.database_password_file
            {
                *shared.client.borrow_mut() = None;
            }
            warn_of_readable_secrets(config, &new);
            *shared.settings.borrow_mut() = new;
            tracing::info!("configuration reloaded");
        }
        Err(e) => tracing::error!("configuration reload failed, keeping the previous one: {e}"),
    }
    // While a run is in progress the connection is busy with it: do not queue a query behind
    // it (the main loop would stall, and with it the watchdog); reuse the last STATUS.
    let last = shared.last_status.borrow().clone();
    let status = match last {
        Some(s) if shared.busy.get() => s,
        _ => current_status(shared).await,
    };
    shared.notifier.ready(&status);
}

/// SIGTERM/SIGINT: accept nothing new; give a migration in progress `stop_grace` to finish,
/// then cancel it server-side so it rolls back, and exit.
async fn stop(shared: &Shared) {
    shared.stopping.set(true);
    let grace = shared.settings.borrow().daemon.stop_grace;
    if !shared.busy.get() {
        shared.notifier.stopping("Stopping");
        tracing::info!("stopping");
        return;
    }
    shared
        .notifier
        .stopping("Stopping: waiting for the migration in progress");
    shared
        .notifier
        .extend_timeout(grace + Duration::from_secs(15));
    tracing::info!(
        "stopping: waiting up to {} for the migration in progress",
        humantime::format_duration(grace)
    );
    if wait_idle(shared, grace).await {
        return;
    }
    let token = shared.cancel.borrow().clone();
    if let Some(token) = token {
        tracing::warn!("stop_grace elapsed: cancelling the migration in progress; it rolls back");
        let settings = shared.settings.borrow().clone();
        if let Ok(pg) = settings.pg_config(&shared.env) {
            crate::db::cancel(&token, &pg).await;
        }
    }
    if !wait_idle(shared, Duration::from_secs(10)).await {
        tracing::error!("the migration did not stop after cancellation; exiting anyway (PostgreSQL rolls it back when the connection closes)");
    }
}

async fn wait_idle(shared: &Shared, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while shared.busy.get() {
        let idle = shared.idle.notified();
        if tokio::time::timeout_at(deadline, idle).await.is_err() {
            return !shared.busy.get();
        }
    }
    true
}
