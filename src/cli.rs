//! The command line: parses the arguments (clap), resolves the settings, and hands each
//! command to its body in `commands`; the `Outcome` it returns becomes the exit
//! code.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::commands;
use crate::config::{ConfigError, Layer, Settings, TransactionMode};
use crate::engine::{EngineError, RunOptions};
use crate::exit::Outcome;
use crate::plan::PlanOptions;
use crate::protocol::Request;
use crate::report::Format;

#[derive(Parser, Debug)]
#[command(
    name = "vamsa-migrate",
    version,
    about = "Applies Vamsa's Drizzle migrations to PostgreSQL, safely"
)]
pub struct Cli {
    /// Config file (default: /etc/vamsa-migrate/config.toml when it exists).
    #[arg(long, global = true, env = "VAMSA_MIGRATE_CONFIG")]
    pub config: Option<PathBuf>,
    /// PostgreSQL URL or key=value string (overrides the config file and DATABASE_URL).
    #[arg(long, global = true)]
    pub database_url: Option<String>,
    /// The Drizzle migrations folder (holding meta/_journal.json, or Drizzle 1.0's migration
    /// folders).
    #[arg(long, global = true)]
    pub migrations_dir: Option<PathBuf>,
    /// `per-migration` (default) or `all` (one transaction for the whole run, like Drizzle).
    #[arg(long, global = true)]
    pub transaction: Option<String>,
    /// lock_timeout for each migration's statements, e.g. 10s.
    #[arg(long, global = true, value_parser = humantime::parse_duration)]
    pub lock_timeout: Option<Duration>,
    /// How long to wait for another run to finish, e.g. 5m.
    #[arg(long, global = true, value_parser = humantime::parse_duration)]
    pub lock_wait: Option<Duration>,
    /// Where backups go (default /var/lib/vamsa-migrate/backups).
    #[arg(long, global = true)]
    pub backup_dir: Option<PathBuf>,
    /// Print only errors and warnings.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// Log more (repeat for more).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Apply pending migrations (or, with --dry-run, show them).
    Migrate(MigrateArgs),
    /// Show every migration's state. Exit 0: up to date, 3: pending, 4: drift.
    Status {
        #[arg(long, value_enum, default_value_t = Format::Human)]
        format: Format,
    },
    /// Create the next numbered migration file and its journal entry.
    New {
        /// Short name, e.g. add_media_tags.
        name: String,
    },
    /// Convert a journal folder (drizzle-kit 0.x) to Drizzle 1.0's folder layout, keeping the
    /// journal's order. Shows the plan; changes files only with --write.
    Convert {
        /// Do the conversion (default: only show it).
        #[arg(long)]
        write: bool,
    },
    /// Take a backup now (pg_dump --format=custom into backup_dir).
    Backup,
    /// List the backups vamsa-migrate made.
    Backups,
    /// Restore a dump vamsa-migrate made (FILE, the newest, or the one taken before a
    /// migration), under the run lock; then show the last applied migration and what is
    /// pending. Refused while other sessions are connected, unless --force.
    Restore(RestoreCli),
    /// Start a throwaway PostgreSQL, apply the bundled migrations, show the output, clean up.
    Demo,
    /// Run as a service: apply at start-up, watch the folder, serve the trigger socket.
    Daemon,
    /// Ask the running daemon to apply (the deploy hook). Exit 0 ok, 1 failed, 69 not running.
    Trigger {
        /// Ask for a dry run instead.
        #[arg(long)]
        dry_run: bool,
        /// Give up waiting after this long (e.g. 10m); the daemon's run is not cancelled.
        #[arg(long, value_parser = humantime::parse_duration)]
        timeout: Option<Duration>,
        #[arg(long, value_enum, default_value_t = Format::Human)]
        format: Format,
    },
}

#[derive(Args, Debug, Clone)]
pub struct MigrateArgs {
    /// Show what would be applied; change nothing.
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
    #[arg(long, value_enum, default_value_t = Format::Human)]
    pub format: Format,
}

#[derive(Args, Debug, Clone)]
pub struct RestoreCli {
    /// A dump from `vamsa-migrate backups`.
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
}

impl Cli {
    fn flags_layer(&self) -> Result<Layer, ConfigError> {
        Ok(Layer {
            database_url: self.database_url.clone(),
            migrations_dir: self.migrations_dir.clone(),
            transaction: self
                .transaction
                .as_deref()
                .map(str::parse::<TransactionMode>)
                .transpose()
                .map_err(|message| ConfigError::BadValue {
                    key: "transaction",
                    message,
                })?,
            lock_timeout: self.lock_timeout,
            lock_wait: self.lock_wait,
            backup_dir: self.backup_dir.clone(),
            ..Layer::default()
        })
    }

    /// The settings, after warnings (on stderr) about a password other local users may read.
    fn settings(&self, env: &HashMap<String, String>) -> Result<Settings, ConfigError> {
        let mut settings = Settings::load(self.config.as_deref(), env)?;
        settings.apply(self.flags_layer()?);
        // clap folded VAMSA_MIGRATE_CONFIG into `config`.
        for warning in crate::config::secret_warnings(self.config.as_deref(), &settings) {
            tracing::warn!("{warning}");
        }
        if self
            .database_url
            .as_deref()
            .is_some_and(crate::config::has_password)
        {
            tracing::warn!("--database-url holds a password, which every local user can see (ps, /proc/<pid>/cmdline) while this runs: put it in database_password_file (mode 0600), or in DATABASE_URL, or in a config file other users cannot read");
        }
        Ok(settings)
    }

    /// The deploy hook may run as a user who can reach the socket but not read the packaged
    /// config (0640): then only socket_path matters, from the environment.
    fn trigger_settings(&self, env: &HashMap<String, String>) -> Result<Settings, ConfigError> {
        if self.config.is_some() || env.contains_key("VAMSA_MIGRATE_CONFIG") {
            return self.settings(env);
        }
        self.settings(env).or_else(|e| match e {
            ConfigError::Invalid { ref origin, .. }
                if origin == crate::config::DEFAULT_CONFIG_FILE =>
            {
                let mut s = Settings::default();
                if let Some(path) = env.get("VAMSA_MIGRATE_SOCKET_PATH") {
                    s.daemon.socket_path = PathBuf::from(path);
                }
                Ok(s)
            }
            other => Err(other),
        })
    }
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
        }
    }
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let env: HashMap<String, String> = std::env::vars().collect();
    let (verbose, quiet) = (cli.verbose, cli.quiet);
    let outcome = match &cli.command {
        // The daemon sets up its own logging (the journal) and runtime.
        Command::Daemon => return ExitCode::from(crate::daemon::main(cli.config.clone())),
        // The demo ignores the configuration: it brings its own.
        Command::Demo => run(verbose, async { Ok(commands::demo::run().await) }),
        Command::Migrate(args) => run(verbose, async {
            let settings = cli.settings(&env)?;
            let options = args.run_options();
            Ok(commands::migrate::run(&settings, &env, &options, args.format, quiet).await)
        }),
        Command::Status { format } => run(verbose, async {
            Ok(commands::status::run(&cli.settings(&env)?, &env, *format).await)
        }),
        Command::New { name } => run(verbose, async {
            Ok(commands::new::run(&cli.settings(&env)?, name))
        }),
        Command::Convert { write } => run(verbose, async {
            Ok(commands::convert::run(&cli.settings(&env)?, *write))
        }),
        Command::Backup => run(verbose, async {
            Ok(commands::backup::take(&cli.settings(&env)?, &env).await)
        }),
        Command::Backups => run(verbose, async {
            Ok(commands::backup::list(&cli.settings(&env)?))
        }),
        Command::Restore(args) => run(verbose, async {
            let args = commands::restore::RestoreArgs {
                file: args.file.clone(),
                before: args.before.clone(),
                force: args.force,
                yes: args.yes,
            };
            Ok(commands::restore::run(&cli.settings(&env)?, &env, &args).await)
        }),
        Command::Trigger {
            dry_run,
            timeout,
            format,
        } => run(verbose, async {
            let settings = cli.trigger_settings(&env)?;
            let request = if *dry_run {
                Request::DryRun
            } else {
                Request::Apply
            };
            let socket = &settings.daemon.socket_path;
            Ok(commands::trigger::run(socket, request, *timeout, *format).await)
        }),
    };
    ExitCode::from(outcome.code())
}

/// Runs a command on a single-threaded runtime, with logging on stderr. A configuration that
/// cannot be loaded is shown like any error before the engine runs.
fn run(verbose: u8, command: impl Future<Output = Result<Outcome, ConfigError>>) -> Outcome {
    init_logging(verbose);
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
    runtime.block_on(async {
        tokio::select! {
            result = command => match result {
                Ok(outcome) => outcome,
                Err(e) => commands::show_error(&EngineError::Config(e), Format::Human),
            },
            // Leaving the select drops the command: a running pg_dump is killed (kill_on_drop)
            // and the temporary dump removed (its Drop), and the connection closes, so that
            // PostgreSQL rolls back a migration in progress.
            signal = stop_signal() => {
                let name = if signal == 2 { "SIGINT" } else { "SIGTERM" };
                eprintln!("Error: stopped by {name}; a backup in progress was removed, and PostgreSQL rolls back a migration in progress. `vamsa-migrate status` shows where the run stopped.");
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
    let level = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("VAMSA_MIGRATE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(io::stderr)
        .try_init();
}
