//! The command line: parses the arguments (clap), resolves the settings, and hands each
//! command to its body in `commands`; the `Outcome` it returns becomes the exit
//! code. Each subcommand offers only the flags it uses (the groups in [`flags`]); a flag
//! overrides the environment, which overrides the config file (see `config`).

pub mod flags;

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::commands;
use crate::config::{ConfigError, Settings};
use crate::engine::{EngineError, RunOptions};
use crate::exit::{self, Outcome, Program};
use crate::plan::PlanOptions;
use crate::protocol::Request;
use crate::report::Format;
use flags::{
    BackupDirFlag, ConfigFlag, DatabaseFlag, FolderFlag, LockFlags, LockWaitFlag, SocketFlag,
    VerboseFlag,
};

#[derive(Parser, Debug)]
#[command(
    name = "vamsa-migrate",
    version,
    about = "Applies Vamsa's Drizzle migrations to PostgreSQL, safely",
    long_about = "Applies Vamsa's Drizzle ORM migrations (the folder holding meta/_journal.json) \
        to PostgreSQL, with Drizzle's own tracking table: as a command, or as a systemd service \
        that a deploy hook triggers. Settings come from the config file, then the environment \
        (VAMSA_MIGRATE_<KEY>, DATABASE_URL), then the flags; each command has its own --help.",
    after_help = exit::help_text(exit::Program::Any)
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Apply pending migrations (or, with --dry-run, show them).
    #[command(after_help = exit::help_text(exit::Program::Migrate))]
    Migrate(MigrateArgs),
    /// Show every migration's state; read-only.
    #[command(after_help = exit::help_text(exit::Program::Status))]
    Status(StatusArgs),
    /// Show the run history: each run that changed the database or failed, newest first
    /// (when, who started it, from which git commit, what it applied, how it ended).
    #[command(after_help = exit::help_text(exit::Program::History))]
    History(HistoryArgs),
    /// Check, read-only: the folder against the tracking table (as status), the live schema
    /// against the recorded one, and that the newest backup reads back (with --deep: restores
    /// into a scratch database, dropped afterwards). One line per check; for a timer.
    #[command(after_help = exit::help_text(exit::Program::Verify))]
    Verify(VerifyArgs),
    /// Create the next numbered migration file and its journal entry.
    #[command(after_help = exit::help_text(exit::Program::New))]
    New(NewArgs),
    /// Convert a journal folder (drizzle-kit 0.x) to Drizzle 1.0's folder layout, keeping the
    /// journal's order. Shows the plan; changes files only with --write. Never connects.
    #[command(after_help = exit::help_text(exit::Program::Convert))]
    Convert(ConvertArgs),
    /// Take a backup now (pg_dump --format=custom into backup_dir).
    #[command(after_help = exit::help_text(exit::Program::Backup))]
    Backup(BackupArgs),
    /// List the backups vamsa-migrate made, newest first.
    #[command(after_help = exit::help_text(exit::Program::Backups))]
    Backups(BackupsArgs),
    /// Restore a dump vamsa-migrate made (FILE, the newest, or the one taken before a
    /// migration), under the run lock; then show the last applied migration and what is
    /// pending. Refused while other sessions are connected, unless --force.
    #[command(after_help = exit::help_text(exit::Program::Restore))]
    Restore(RestoreArgs),
    /// Start a throwaway PostgreSQL, apply the bundled migrations, show the output, clean up.
    /// Reads no configuration.
    #[command(after_help = exit::help_text(exit::Program::Demo))]
    Demo(DemoArgs),
    /// Run as the systemd service: apply at start-up, watch the folder, serve the trigger socket.
    #[command(after_help = exit::help_text(exit::Program::Daemon))]
    Daemon(DaemonArgs),
    /// Ask the running daemon to apply (the deploy hook); prints the same lines as migrate.
    #[command(after_help = exit::help_text(exit::Program::Trigger))]
    Trigger(TriggerArgs),
    /// Write the manual pages (section 1) into DIR; used by the package build.
    #[command(hide = true)]
    Manpage {
        /// The folder to write vamsa-migrate.1 and vamsa-migrate-<command>.1 into.
        dir: PathBuf,
    },
}

/// `--format`: how a command prints.
#[derive(Args, Debug, Clone)]
pub struct FormatFlag {
    /// Output: human-readable lines, or one JSON object per line (see the README).
    #[arg(long, value_enum, default_value_t = Format::Human)]
    pub format: Format,
}

#[derive(Args, Debug, Clone)]
pub struct MigrateArgs {
    /// Show what would be applied; change nothing (takes no lock, writes nothing).
    #[arg(long)]
    pub dry_run: bool,
    /// Do not take the automatic backup before applying.
    #[arg(long)]
    pub no_backup: bool,
    /// Apply pending migrations even when a later one is already applied.
    #[arg(long)]
    pub allow_out_of_order: bool,
    /// Accept the edited file of this applied migration (record its new hash). Repeatable.
    #[arg(long, value_name = "TAG")]
    pub accept_edited: Vec<String>,
    /// Print only errors and warnings (no progress lines).
    #[arg(short, long)]
    pub quiet: bool,
    #[command(flatten)]
    pub format: FormatFlag,
    #[command(flatten)]
    pub config: ConfigFlag,
    #[command(flatten)]
    pub database: DatabaseFlag,
    #[command(flatten)]
    pub folder: FolderFlag,
    #[command(flatten)]
    pub locks: LockFlags,
    #[command(flatten)]
    pub backup_dir: BackupDirFlag,
    #[command(flatten)]
    pub rehearse: flags::RehearseFlags,
    #[command(flatten)]
    pub verbose: VerboseFlag,
}

#[derive(Args, Debug, Clone)]
pub struct StatusArgs {
    #[command(flatten)]
    pub format: FormatFlag,
    #[command(flatten)]
    pub config: ConfigFlag,
    #[command(flatten)]
    pub database: DatabaseFlag,
    #[command(flatten)]
    pub folder: FolderFlag,
    #[command(flatten)]
    pub verbose: VerboseFlag,
}

#[derive(Args, Debug, Clone)]
pub struct HistoryArgs {
    #[command(flatten)]
    pub limit: flags::LimitFlag,
    #[command(flatten)]
    pub format: FormatFlag,
    #[command(flatten)]
    pub config: ConfigFlag,
    #[command(flatten)]
    pub database: DatabaseFlag,
    #[command(flatten)]
    pub verbose: VerboseFlag,
}

#[derive(Args, Debug, Clone)]
pub struct VerifyArgs {
    /// Also restore the newest backup into a scratch database (needs CREATEDB) and check its
    /// tracking table; the scratch database is dropped afterwards.
    #[arg(long)]
    pub deep: bool,
    #[command(flatten)]
    pub format: FormatFlag,
    #[command(flatten)]
    pub config: ConfigFlag,
    #[command(flatten)]
    pub database: DatabaseFlag,
    #[command(flatten)]
    pub folder: FolderFlag,
    #[command(flatten)]
    pub backup_dir: BackupDirFlag,
    #[command(flatten)]
    pub verbose: VerboseFlag,
}

#[derive(Args, Debug, Clone)]
pub struct NewArgs {
    /// Short name, e.g. add_media_tags. Written in lowercase; every character other than an
    /// ASCII letter or digit becomes an underscore ("Add media-tags" gives add_media_tags);
    /// refused when nothing is left.
    pub name: String,
    /// Create the migrations folder and its journal when they do not exist (a new history).
    #[arg(long)]
    pub init: bool,
    #[command(flatten)]
    pub config: ConfigFlag,
    #[command(flatten)]
    pub folder: FolderFlag,
    #[command(flatten)]
    pub verbose: VerboseFlag,
}

#[derive(Args, Debug, Clone)]
pub struct ConvertArgs {
    /// Do the conversion. Default: only show it.
    #[arg(long)]
    pub write: bool,
    #[command(flatten)]
    pub config: ConfigFlag,
    #[command(flatten)]
    pub folder: FolderFlag,
    #[command(flatten)]
    pub verbose: VerboseFlag,
}

#[derive(Args, Debug, Clone)]
pub struct BackupArgs {
    #[command(flatten)]
    pub config: ConfigFlag,
    #[command(flatten)]
    pub database: DatabaseFlag,
    #[command(flatten)]
    pub backup_dir: BackupDirFlag,
    #[command(flatten)]
    pub verbose: VerboseFlag,
}

#[derive(Args, Debug, Clone)]
pub struct RestoreArgs {
    /// A dump that vamsa-migrate backups lists.
    #[arg(required_unless_present_any = ["latest", "before"], conflicts_with_all = ["latest", "before"])]
    pub file: Option<PathBuf>,
    /// The newest dump of this database.
    #[arg(long, conflicts_with = "before")]
    pub latest: bool,
    /// The dump taken before this migration was applied (its tag, e.g. 0004_media_tags).
    #[arg(long, value_name = "MIGRATION")]
    pub before: Option<String>,
    /// Terminate the other sessions connected to the database (it says which).
    #[arg(long)]
    pub force: bool,
    /// Do not ask for confirmation (for scripts; required without a terminal).
    #[arg(long)]
    pub yes: bool,
    #[command(flatten)]
    pub config: ConfigFlag,
    #[command(flatten)]
    pub database: DatabaseFlag,
    #[command(flatten)]
    pub folder: FolderFlag,
    #[command(flatten)]
    pub backup_dir: BackupDirFlag,
    #[command(flatten)]
    pub lock_wait: LockWaitFlag,
    #[command(flatten)]
    pub verbose: VerboseFlag,
}

#[derive(Args, Debug, Clone)]
pub struct BackupsArgs {
    #[command(flatten)]
    pub config: ConfigFlag,
    #[command(flatten)]
    pub backup_dir: BackupDirFlag,
    #[command(flatten)]
    pub verbose: VerboseFlag,
}

#[derive(Args, Debug, Clone)]
pub struct DemoArgs {
    #[command(flatten)]
    pub verbose: VerboseFlag,
}

/// The daemon logs at `log_level` (config), not by `-v`.
#[derive(Args, Debug, Clone)]
pub struct DaemonArgs {
    #[command(flatten)]
    pub config: ConfigFlag,
    #[command(flatten)]
    pub database: DatabaseFlag,
    #[command(flatten)]
    pub folder: FolderFlag,
    #[command(flatten)]
    pub locks: LockFlags,
    #[command(flatten)]
    pub backup_dir: BackupDirFlag,
    #[command(flatten)]
    pub socket: SocketFlag,
}

#[derive(Args, Debug, Clone)]
pub struct TriggerArgs {
    /// Ask for a dry run instead: show what the daemon would apply.
    #[arg(long)]
    pub dry_run: bool,
    /// Give up waiting after this long (e.g. 10m; exit 75); the daemon's run is not cancelled.
    /// Default: wait until the run is done, however long it takes.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub timeout: Option<Duration>,
    #[command(flatten)]
    pub format: FormatFlag,
    #[command(flatten)]
    pub config: ConfigFlag,
    #[command(flatten)]
    pub socket: SocketFlag,
    #[command(flatten)]
    pub verbose: VerboseFlag,
}

impl MigrateArgs {
    fn run_options(&self) -> RunOptions {
        RunOptions {
            plan: PlanOptions {
                allow_out_of_order: self.allow_out_of_order,
                accept_edited: self.accept_edited.clone(),
            },
            dry_run: self.dry_run,
            no_backup: self.no_backup,
            origin: crate::protocol::Origin::Cli,
            stop: Default::default(),
        }
    }
}

pub fn main() -> ExitCode {
    // An empty VAMSA_MIGRATE_CONFIG counts as unset (clap would take it as an empty value).
    // Still single-threaded here: nothing else reads the environment yet.
    if std::env::var_os("VAMSA_MIGRATE_CONFIG").is_some_and(|v| v.is_empty()) {
        std::env::remove_var("VAMSA_MIGRATE_CONFIG");
    }
    let cli = Cli::parse();
    let env: HashMap<String, String> = std::env::vars().collect();
    let outcome = match cli.command {
        // The daemon sets up its own logging (the journal) and runtime.
        Command::Daemon(args) => return ExitCode::from(daemon(&args, &env)),
        Command::Manpage { dir } => commands::manpage::write(&dir),
        // The demo ignores the configuration: it brings its own.
        Command::Demo(args) => run(Program::Demo, args.verbose, async {
            Ok(commands::demo::run().await)
        }),
        Command::Migrate(args) => run(Program::Migrate, args.verbose, migrate(&args, &env)),
        Command::Status(args) => run(Program::Status, args.verbose, async {
            let flags: [&dyn flags::Flags; 2] = [&args.database, &args.folder];
            let settings = flags::settings(&args.config, &flags, &env)?;
            args.folder.check(&settings, &args.config, &env)?;
            Ok(commands::status::run(&settings, &env, args.format.format).await)
        }),
        Command::History(args) => run(Program::History, args.verbose, async {
            let settings = flags::settings(&args.config, &[&args.database], &env)?;
            let (limit, format) = (args.limit.limit, args.format.format);
            Ok(commands::history::run(&settings, &env, limit, format).await)
        }),
        Command::Verify(args) => run(Program::Verify, args.verbose, async {
            let flags: [&dyn flags::Flags; 3] = [&args.database, &args.folder, &args.backup_dir];
            let settings = flags::settings(&args.config, &flags, &env)?;
            args.folder.check(&settings, &args.config, &env)?;
            let (deep, format) = (args.deep, args.format.format);
            Ok(commands::verify::run(&settings, &env, deep, format).await)
        }),
        Command::New(args) => run(Program::New, args.verbose, async {
            let settings = flags::settings(&args.config, &[&args.folder], &env)?;
            if !args.init {
                args.folder.check(&settings, &args.config, &env)?;
            }
            Ok(commands::new::run(&settings, &args.name))
        }),
        Command::Convert(args) => run(Program::Convert, args.verbose, async {
            let settings = flags::settings(&args.config, &[&args.folder], &env)?;
            args.folder.check(&settings, &args.config, &env)?;
            Ok(commands::convert::run(&settings, args.write))
        }),
        Command::Backup(args) => run(Program::Backup, args.verbose, async {
            let flags: [&dyn flags::Flags; 2] = [&args.database, &args.backup_dir];
            let settings = flags::settings(&args.config, &flags, &env)?;
            Ok(commands::backup::take(&settings, &env).await)
        }),
        Command::Restore(args) => run(Program::Restore, args.verbose, async {
            let flags: [&dyn flags::Flags; 4] = [
                &args.database,
                &args.folder,
                &args.backup_dir,
                &args.lock_wait,
            ];
            let settings = flags::settings(&args.config, &flags, &env)?;
            args.folder.check(&settings, &args.config, &env)?;
            let restore = commands::restore::RestoreArgs {
                file: args.file.clone(),
                before: args.before.clone(),
                force: args.force,
                yes: args.yes,
            };
            Ok(commands::restore::run(&settings, &env, &restore).await)
        }),
        Command::Backups(args) => run(Program::Backups, args.verbose, async {
            let settings = flags::settings(&args.config, &[&args.backup_dir], &env)?;
            Ok(commands::backup::list(&settings))
        }),
        Command::Trigger(args) => run(Program::Trigger, args.verbose, trigger(&args, &env)),
    };
    ExitCode::from(outcome.code())
}

async fn migrate(
    args: &MigrateArgs,
    env: &HashMap<String, String>,
) -> Result<Outcome, ConfigError> {
    let flags: [&dyn flags::Flags; 5] = [
        &args.database,
        &args.folder,
        &args.locks,
        &args.backup_dir,
        &args.rehearse,
    ];
    let settings = flags::settings(&args.config, &flags, env)?;
    args.folder.check(&settings, &args.config, env)?;
    let options = args.run_options();
    let format = args.format.format;
    Ok(commands::migrate::run(&settings, env, &options, format, args.quiet).await)
}

async fn trigger(
    args: &TriggerArgs,
    env: &HashMap<String, String>,
) -> Result<Outcome, ConfigError> {
    let settings = trigger_settings(args, env)?;
    let request = if args.dry_run {
        Request::DryRun
    } else {
        Request::Apply
    };
    let daemon = &settings.daemon;
    Ok(commands::trigger::run(
        &daemon.socket_path,
        &daemon.daemon_user,
        request,
        args.timeout,
        args.format.format,
    )
    .await)
}

/// The deploy hook may run as a user who can reach the socket but not read the packaged
/// config (0640): then only socket_path matters, from the environment or the flag.
fn trigger_settings(
    args: &TriggerArgs,
    env: &HashMap<String, String>,
) -> Result<Settings, ConfigError> {
    let settings = flags::settings(&args.config, &[&args.socket], env);
    if args.config.config.is_some() {
        return settings;
    }
    settings.or_else(|e| match e {
        ConfigError::Invalid { ref origin, .. } if origin == crate::config::DEFAULT_CONFIG_FILE => {
            let mut s = Settings::default();
            if let Some(path) = env.get("VAMSA_MIGRATE_SOCKET_PATH") {
                s.daemon.socket_path = PathBuf::from(path);
            }
            if let Some(user) = env.get("VAMSA_MIGRATE_DAEMON_USER") {
                s.daemon.daemon_user = user.clone();
            }
            if let Some(path) = &args.socket.socket_path {
                s.daemon.socket_path = path.clone();
            }
            Ok(s)
        }
        other => Err(other),
    })
}

/// Starts the daemon with the flags as its top layer (also over a SIGHUP reload).
fn daemon(args: &DaemonArgs, env: &HashMap<String, String>) -> u8 {
    let flags: [&dyn flags::Flags; 5] = [
        &args.database,
        &args.folder,
        &args.locks,
        &args.backup_dir,
        &args.socket,
    ];
    let checked = flags::layer(&flags).and_then(|layer| {
        let settings = flags::settings(&args.config, &flags, env)?;
        // The database first: an unconfigured install (the packaged config, nothing set) is
        // told what it lacks most, database_url.
        settings.pg_config(env)?;
        args.folder.check(&settings, &args.config, env)?;
        Ok(layer)
    });
    match checked {
        Ok(layer) => crate::daemon::main(args.config.config.clone(), layer),
        // Before the daemon's logging is set up: stderr reaches the journal under systemd.
        Err(e) => {
            eprintln!("Error: {e}");
            exit::daemon::BAD_CONFIG
        }
    }
}

/// Runs `program` on a single-threaded runtime, with logging on stderr. A configuration that
/// cannot be loaded is shown like any error before the engine runs.
fn run(
    program: Program,
    verbose: VerboseFlag,
    command: impl Future<Output = Result<Outcome, ConfigError>>,
) -> Outcome {
    init_logging(verbose.verbose);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("Error: cannot start the async runtime: {e}");
            return Outcome::OtherFailure;
        }
    };
    let shown = |result: Result<Outcome, ConfigError>| match result {
        Ok(outcome) => outcome,
        Err(e) => commands::show_error(&EngineError::Config(e), Format::Human),
    };
    if !exit::stops_on_signal(program) {
        // Installing a handler would only defer the signal to the end of the file work.
        return shown(runtime.block_on(command));
    }
    runtime.block_on(async {
        tokio::select! {
            result = command => shown(result),
            // Leaving the select drops the command: a running pg_dump or pg_restore is killed
            // (kill_on_drop) and a temporary dump removed (its Drop), and the connection
            // closes, so that PostgreSQL rolls back a migration in progress.
            signal = stop_signal() => {
                let name = if signal == 2 { "SIGINT" } else { "SIGTERM" };
                eprintln!("Error: stopped by {name}; {}", exit::stopped_note(program));
                Outcome::Stopped { signal }
            }
        }
    })
}

/// The number of the first SIGINT or SIGTERM; never, if the handlers cannot be installed (the
/// signal's default action then ends the process as before).
async fn stop_signal() -> u8 {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => 2,
        _ = term.recv() => 15,
    }
}

fn init_logging(verbose: u8) {
    crate::logging::init_cli(match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    });
}
