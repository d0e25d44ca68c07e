//! The command line. Thin: it loads settings and the folder, then drives the engine.

use std::collections::HashMap;
use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::config::{ConfigError, Layer, Settings, TransactionMode};
use crate::engine::{Engine, EngineError, Event, RunOptions};
use crate::plan::PlanOptions;
use crate::report::{self, Format, HumanOptions, Reporter};
use crate::source::MigrationSet;

/// Exit codes, documented in the README.
pub mod exit {
    pub const OK: u8 = 0;
    pub const FAILED: u8 = 1;
    pub const BAD_INPUT: u8 = 2;
    pub const PENDING: u8 = 3;
    pub const DRIFT: u8 = 4;
}

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
    /// The Drizzle migrations folder (the one holding meta/_journal.json).
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
    /// Take a backup now (pg_dump --format=custom into backup_dir).
    Backup,
    /// List the backups vamsa-migrate made.
    Backups,
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

#[derive(Args, Debug, Clone, Default)]
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

    fn settings(&self, env: &HashMap<String, String>) -> Result<Settings, ConfigError> {
        let mut settings = Settings::load(self.config.as_deref(), env)?;
        settings.apply(self.flags_layer()?);
        Ok(settings)
    }
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Daemon = cli.command {
        // The daemon sets up its own logging (the journal) and runtime.
        return ExitCode::from(crate::daemon::main(cli.config));
    }
    init_logging(cli.verbose);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("Error: cannot start the async runtime: {e}");
            return ExitCode::from(exit::FAILED);
        }
    };
    ExitCode::from(runtime.block_on(run(cli)))
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

async fn run(cli: Cli) -> u8 {
    let env: HashMap<String, String> = std::env::vars().collect();
    let settings = match &cli.command {
        Command::Demo => return crate::demo::run().await,
        // The deploy hook may run as a user who can reach the socket but not read the
        // packaged config (0640): then only socket_path matters, from the environment.
        Command::Trigger { .. }
            if cli.config.is_none() && !env.contains_key("VAMSA_MIGRATE_CONFIG") =>
        {
            cli.settings(&env).or_else(|e| match e {
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
        _ => cli.settings(&env),
    };
    let settings = match settings {
        Ok(s) => s,
        Err(e) => return fail(&EngineError::Config(e), Format::Human),
    };
    match &cli.command {
        Command::Migrate(args) => migrate(&settings, &env, args, cli.quiet).await,
        Command::Status { format } => status(&settings, &env, *format).await,
        Command::New { name } => match crate::newfile::create(&settings.migrations_dir, name) {
            Ok(path) => {
                println!("Created {}", path.display());
                exit::OK
            }
            Err(e) => {
                eprintln!("Error: {e}");
                exit::BAD_INPUT
            }
        },
        Command::Demo => crate::demo::run().await,
        Command::Backup => backup_now(&settings, &env).await,
        Command::Backups => list_backups(&settings),
        // Handled in `main` before the runtime starts (the daemon builds its own).
        Command::Daemon => exit::FAILED,
        Command::Trigger {
            dry_run,
            timeout,
            format,
        } => crate::trigger::run(&settings.daemon.socket_path, *dry_run, *timeout, *format).await,
    }
}

/// Prints an error that happened before the engine reported anything.
fn fail(e: &EngineError, format: Format) -> u8 {
    match format {
        Format::Human => eprint!("{}", report::render_error(&e.report())),
        Format::Json => {
            let _ = report::write_json_line(
                &mut io::stdout(),
                &Event::Done {
                    ok: false,
                    applied: 0,
                    dry_run: false,
                    error: Some(e.report()),
                },
            );
        }
    }
    e.exit_code() as u8
}

/// `migrate` and `migrate --dry-run`; the demo calls it too.
pub async fn migrate(
    settings: &Settings,
    env: &HashMap<String, String>,
    args: &MigrateArgs,
    quiet: bool,
) -> u8 {
    let pg = match settings.pg_config(env) {
        Ok(pg) => pg,
        Err(e) => return fail(&e.into(), args.format),
    };
    let engine = Engine::new(settings, &pg);
    // Read the folder on another core while the server starts a backend for us. A bad folder
    // is still reported first, and connecting changes nothing.
    let dir = settings.migrations_dir.clone();
    let loading = tokio::task::spawn_blocking(move || MigrationSet::load(&dir));
    let (set, client) = tokio::join!(loading, engine.connect());
    let set = match set {
        Ok(Ok(set)) => set,
        Ok(Err(e)) => return fail(&e.into(), args.format),
        Err(e) => {
            eprintln!("Error: reading the migrations folder: {e}");
            return exit::FAILED;
        }
    };
    let client = match client {
        Ok(c) => c,
        Err(e) => return fail(&e.into(), args.format),
    };
    let options = RunOptions {
        plan: PlanOptions {
            allow_out_of_order: args.allow_out_of_order,
            accept_edited: args.accept_edited.clone(),
        },
        dry_run: args.dry_run,
        no_backup: args.no_backup,
    };
    let mut reporter = Reporter::new(
        io::BufWriter::new(io::stdout()),
        args.format,
        HumanOptions {
            quiet,
            ..HumanOptions::default()
        },
    );
    match engine
        .run(&client, &set, &options, &mut |e| reporter.event(&e))
        .await
    {
        Ok(_) => exit::OK,
        Err(e) => e.exit_code() as u8,
    }
}

/// `status`; the demo calls it too.
pub async fn status(settings: &Settings, env: &HashMap<String, String>, format: Format) -> u8 {
    let set = match MigrationSet::load(&settings.migrations_dir) {
        Ok(set) => set,
        Err(e) => return fail(&e.into(), format),
    };
    let pg = match settings.pg_config(env) {
        Ok(pg) => pg,
        Err(e) => return fail(&e.into(), format),
    };
    let engine = Engine::new(settings, &pg);
    let result = async {
        let client = engine.connect().await?;
        engine.status(&client, &set, &PlanOptions::default()).await
    }
    .await;
    let status = match result {
        Ok(s) => s,
        Err(e) => return fail(&e, format),
    };
    let warnings: Vec<String> = set.warnings.iter().map(|w| w.to_string()).collect();
    let mut out = io::BufWriter::new(io::stdout().lock());
    let _ = report::write_status(&mut out, &status, &warnings, format);
    let _ = out.flush();
    if status.plan.has_drift() {
        exit::DRIFT
    } else if status.plan.pending_count() > 0 {
        exit::PENDING
    } else {
        exit::OK
    }
}

async fn backup_now(settings: &Settings, env: &HashMap<String, String>) -> u8 {
    let result = async {
        let pg = settings.pg_config(env)?;
        let client = crate::db::connect(&pg).await?;
        Ok::<_, EngineError>(crate::backup::take(&settings.backup, &pg, &client, "manual").await?)
    }
    .await;
    match result {
        Ok(b) => {
            println!(
                "Backup: {} ({})",
                b.path.display(),
                crate::backup::human_bytes(b.bytes)
            );
            exit::OK
        }
        Err(e) => fail(&e, Format::Human),
    }
}

fn list_backups(settings: &Settings) -> u8 {
    match crate::backup::list(&settings.backup.dir) {
        Ok(list) if list.is_empty() => {
            println!("No backups in {}.", settings.backup.dir.display());
            exit::OK
        }
        Ok(list) => {
            for b in list.iter().rev() {
                let s = &b.stamp;
                let when = format!(
                    "{}-{}-{} {}:{}:{} UTC",
                    &s[0..4],
                    &s[4..6],
                    &s[6..8],
                    &s[9..11],
                    &s[11..13],
                    &s[13..15]
                );
                let what = b
                    .label
                    .strip_prefix("before-")
                    .map_or("taken by hand".to_string(), |tag| format!("before {tag}"));
                println!(
                    "{when}  {:>9}  {:<32}  {}",
                    crate::backup::human_bytes(b.bytes),
                    what,
                    b.path.display()
                );
            }
            exit::OK
        }
        Err(e) => {
            eprintln!("Error: backup_dir {}: {e}", settings.backup.dir.display());
            exit::FAILED
        }
    }
}
