//! The flag groups subcommands take: each overrides one or a few config keys (the top layer
//! of the settings, over the environment and the config file). A subcommand flattens only the
//! groups whose settings it reads, so its `--help` never offers a flag it would ignore.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;

use crate::config::{ConfigError, Layer, Settings, TransactionMode, DEFAULT_CONFIG_FILE};

/// A flag group: writes the keys its flags set into the flags' layer.
pub trait Flags {
    fn set(&self, layer: &mut Layer) -> Result<(), ConfigError>;
}

/// The layer of the given flag groups.
pub fn layer(groups: &[&dyn Flags]) -> Result<Layer, ConfigError> {
    let mut layer = Layer::default();
    for group in groups {
        group.set(&mut layer)?;
    }
    Ok(layer)
}

/// Defaults < config file < environment < these flags.
pub fn settings(
    config: &ConfigFlag,
    groups: &[&dyn Flags],
    env: &HashMap<String, String>,
) -> Result<Settings, ConfigError> {
    let mut settings = Settings::load(config.config.as_deref(), env)?;
    let flags = layer(groups)?;
    // A password on the command line is visible to every local user.
    warn_of_password_flag(&flags);
    settings.apply(flags);
    // clap folded VAMSA_MIGRATE_CONFIG into `config`.
    for warning in crate::config::secret_warnings(config.config.as_deref(), &settings) {
        tracing::warn!("{warning}");
    }
    Ok(settings)
}

/// Warns when `--database-url` (in the flags' layer) holds a password; the daemon calls it
/// once its own logging is set up.
pub fn warn_of_password_flag(flags: &Layer) {
    if flags
        .database_url
        .as_deref()
        .is_some_and(crate::config::has_password)
    {
        tracing::warn!("--database-url holds a password, which every local user can see (ps, /proc/<pid>/cmdline) while this runs: put it in database_password_file (mode 0600), or in DATABASE_URL, or in a config file other users cannot read");
    }
}

/// `--config`: the file every command but `demo` reads. `[env: ...]` never shows the
/// variable's value (it would leak into the manual page generated at build time).
#[derive(Args, Debug, Clone, Default)]
pub struct ConfigFlag {
    /// The config file (TOML; every key is listed in the packaged one).
    /// Default: /etc/vamsa-migrate/config.toml, read only when it exists.
    #[arg(
        long,
        value_name = "FILE",
        env = "VAMSA_MIGRATE_CONFIG",
        hide_env_values = true
    )]
    pub config: Option<PathBuf>,
}

#[derive(Args, Debug, Clone, Default)]
pub struct DatabaseFlag {
    /// PostgreSQL to migrate: a URL (postgres://...) or a libpq key=value string. Overrides
    /// database_url of the config file, VAMSA_MIGRATE_DATABASE_URL and DATABASE_URL. No default.
    #[arg(long, value_name = "URL")]
    pub database_url: Option<String>,
}

impl Flags for DatabaseFlag {
    fn set(&self, layer: &mut Layer) -> Result<(), ConfigError> {
        layer.database_url.clone_from(&self.database_url);
        Ok(())
    }
}

#[derive(Args, Debug, Clone, Default)]
pub struct FolderFlag {
    /// The Drizzle migrations folder (holding meta/_journal.json, or Drizzle 1.0's migration
    /// folders), relative to the working directory. Overrides migrations_dir and VAMSA_MIGRATE_MIGRATIONS_DIR.
    /// Default: drizzle.
    #[arg(long, value_name = "DIR")]
    pub migrations_dir: Option<PathBuf>,
}

impl Flags for FolderFlag {
    fn set(&self, layer: &mut Layer) -> Result<(), ConfigError> {
        layer.migrations_dir.clone_from(&self.migrations_dir);
        Ok(())
    }
}

impl FolderFlag {
    /// Fails when the resolved `migrations_dir` is not a folder, naming the working directory
    /// and the setting that gave the path.
    pub fn check(
        &self,
        settings: &Settings,
        config: &ConfigFlag,
        env: &HashMap<String, String>,
    ) -> Result<(), ConfigError> {
        let path = &settings.migrations_dir;
        if path.is_dir() {
            return Ok(());
        }
        let mut problem = match std::fs::metadata(path) {
            Ok(_) => "is not a folder (it is a file)".to_string(),
            Err(_) => "does not exist".to_string(),
        };
        if path.is_relative() {
            let cwd = std::env::current_dir().unwrap_or_default();
            problem += &format!(" (relative to the working directory {})", cwd.display());
        }
        Err(ConfigError::NoMigrationsDir {
            path: path.clone(),
            problem,
            origin: self.origin(path, config, env),
        })
    }

    fn origin(&self, path: &Path, config: &ConfigFlag, env: &HashMap<String, String>) -> String {
        if self.migrations_dir.is_some() {
            return "--migrations-dir".into();
        }
        if env.contains_key("VAMSA_MIGRATE_MIGRATIONS_DIR") {
            return "VAMSA_MIGRATE_MIGRATIONS_DIR".into();
        }
        let file = config
            .config
            .as_deref()
            .unwrap_or(Path::new(DEFAULT_CONFIG_FILE));
        // The file alone, without the environment: does it set the key?
        let from_file = Settings::load(Some(file), &HashMap::new()).ok();
        if from_file.is_some_and(|s| s.migrations_dir == path) && file.exists() {
            let default = Settings::default().migrations_dir;
            if path != default {
                return format!("migrations_dir in {}", file.display());
            }
        }
        "the default (set migrations_dir in the config file, VAMSA_MIGRATE_MIGRATIONS_DIR or --migrations-dir)".into()
    }
}

/// How migrations run: the transaction mode and the two lock waits.
#[derive(Args, Debug, Clone, Default)]
pub struct LockFlags {
    /// per-migration: each migration commits with its tracking row; all: the whole run in one
    /// transaction, like Drizzle. Overrides transaction. Default: per-migration.
    #[arg(long, value_name = "MODE", value_parser = ["per-migration", "all"])]
    pub transaction: Option<String>,
    /// PostgreSQL lock_timeout for each migration's statements (0 disables it). Overrides
    /// lock_timeout. Default: 10s.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub lock_timeout: Option<Duration>,
    /// How long to wait for another run's migration lock before failing. Overrides
    /// lock_wait. Default: 5m.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub lock_wait: Option<Duration>,
}

impl Flags for LockFlags {
    fn set(&self, layer: &mut Layer) -> Result<(), ConfigError> {
        layer.transaction = self
            .transaction
            .as_deref()
            .map(str::parse::<TransactionMode>)
            .transpose()
            .map_err(|message| ConfigError::BadValue {
                key: "transaction",
                message,
            })?;
        layer.lock_timeout = self.lock_timeout;
        layer.lock_wait = self.lock_wait;
        Ok(())
    }
}

#[derive(Args, Debug, Clone, Default)]
pub struct BackupDirFlag {
    /// Where backups (pg_dump --format=custom) go. Overrides backup_dir and
    /// VAMSA_MIGRATE_BACKUP_DIR. Default: /var/lib/vamsa-migrate/backups.
    #[arg(long, value_name = "DIR")]
    pub backup_dir: Option<PathBuf>,
}

impl Flags for BackupDirFlag {
    fn set(&self, layer: &mut Layer) -> Result<(), ConfigError> {
        layer.backup_dir.clone_from(&self.backup_dir);
        Ok(())
    }
}

#[derive(Args, Debug, Clone, Default)]
pub struct SocketFlag {
    /// The daemon's trigger socket. Overrides socket_path and VAMSA_MIGRATE_SOCKET_PATH.
    /// Default: /run/vamsa-migrate/trigger.sock.
    #[arg(long, value_name = "PATH")]
    pub socket_path: Option<PathBuf>,
}

impl Flags for SocketFlag {
    fn set(&self, layer: &mut Layer) -> Result<(), ConfigError> {
        layer.socket_path.clone_from(&self.socket_path);
        Ok(())
    }
}

#[derive(Args, Debug, Clone, Copy, Default)]
pub struct VerboseFlag {
    /// Log more on stderr: -v info, -vv debug (VAMSA_MIGRATE_LOG takes a full filter).
    /// Default: warnings only.
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

/// Whether this run rehearses on a scratch copy first (`rehearse` for one run).
#[derive(Args, Debug, Clone, Default)]
pub struct RehearseFlags {
    /// Rehearse on a scratch copy of the database first, whatever its size (also with
    /// --dry-run: shows whether the release applies to the real data). Sets rehearse =
    /// "always" for this run.
    #[arg(long, conflicts_with = "no_rehearse")]
    pub rehearse: bool,
    /// Do not rehearse this run. Sets rehearse = "never" for this run. Default: rehearse =
    /// "auto".
    #[arg(long)]
    pub no_rehearse: bool,
}

impl Flags for RehearseFlags {
    fn set(&self, layer: &mut Layer) -> Result<(), ConfigError> {
        use crate::config::Rehearse;
        layer.rehearse = match (self.rehearse, self.no_rehearse) {
            (true, _) => Some(Rehearse::Always),
            (_, true) => Some(Rehearse::Never),
            _ => None,
        };
        Ok(())
    }
}

/// `--limit`: how many of the newest entries a listing shows.
#[derive(Args, Debug, Clone, Copy)]
pub struct LimitFlag {
    /// Show the newest N runs (N >= 1). Default: 20.
    #[arg(long, value_name = "N", default_value_t = 20,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub limit: u32,
}

/// `--lock-wait` alone, for a command that takes the run lock but applies no migration
/// (`restore`).
#[derive(Args, Debug, Clone, Default)]
pub struct LockWaitFlag {
    /// How long to wait for another run's migration lock before failing. Overrides
    /// lock_wait. Default: 5m.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub lock_wait: Option<Duration>,
}

impl Flags for LockWaitFlag {
    fn set(&self, layer: &mut Layer) -> Result<(), ConfigError> {
        layer.lock_wait = self.lock_wait;
        Ok(())
    }
}
