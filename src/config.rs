//! Layered settings: defaults < config file < environment (`VAMSA_MIGRATE_*`, `DATABASE_URL`) <
//! command-line flags. Each layer is checked on its own, so an unknown key or a bad value is
//! reported with the file (or variable) it came from.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;

/// Where the packaged service reads its settings; used only when it exists.
pub const DEFAULT_CONFIG_FILE: &str = "/etc/vamsa-migrate/config.toml";
const ENV_PREFIX: &str = "VAMSA_MIGRATE";
/// Names of `VAMSA_MIGRATE_*` variables that are not settings (the file to read; the log filter).
const ENV_NOT_SETTINGS: &[&str] = &["VAMSA_MIGRATE_CONFIG", "VAMSA_MIGRATE_LOG"];
/// The file systemd's `LoadCredential=database_password:...` puts in `$CREDENTIALS_DIRECTORY`.
const CREDENTIAL_NAME: &str = "database_password";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum TransactionMode {
    /// Each migration commits with its tracking row; earlier ones stay if a later one fails.
    #[default]
    PerMigration,
    /// Drizzle's behaviour: the whole run in one transaction.
    All,
}

impl FromStr for TransactionMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "per-migration" => Ok(TransactionMode::PerMigration),
            "all" => Ok(TransactionMode::All),
            other => Err(format!(
                "unknown transaction mode {other:?}: expected \"per-migration\" or \"all\""
            )),
        }
    }
}

/// When the daemon applies migrations it finds pending.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum ApplyPolicy {
    /// Wait for the deploy hook (`vamsa-migrate trigger`).
    #[default]
    OnTrigger,
    /// Apply once the folder has settled after a change.
    OnChange,
    /// Only report what is pending.
    Manual,
}

/// What a peer of the trigger socket that may not apply (not root, the service user, or in
/// `allowed_users`/`allowed_groups`) may ask.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum PeerView {
    /// `ping` only: whether the daemon runs and is busy.
    #[default]
    Ping,
    /// Also `status` and `dry-run`: file names, states, and statement summaries without their
    /// string constants.
    Status,
}

/// What a run does when the tracking table has rows that match no migration on disk: the
/// database is newer than the code (it was rolled back without a restore).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum UnknownRows {
    /// Name the rows and apply anyway (Drizzle's own migrator ignores such rows silently).
    Warn,
    /// Name the rows and stop before any change: `migrate` exits 4, the daemon does not send
    /// READY (so the old application does not start on a schema it does not know).
    #[default]
    Refuse,
}

/// Whether a run rehearses its migrations on a scratch copy of the database first (restored
/// from the run's dump) and touches the database only when that succeeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Rehearse {
    /// Rehearse when the database is at most `rehearse_max_size` and the role may create
    /// databases (CREATEDB); otherwise say why not and apply without.
    #[default]
    Auto,
    /// Rehearse every run (a dry run too); fail before any change when it cannot.
    Always,
    /// Never rehearse.
    Never,
}

/// The default `rehearse_max_size`: 4 GiB, a large Vamsa database (a family tree is megabytes
/// to a few GiB); restoring it takes about as long as dumping it.
pub const DEFAULT_REHEARSE_MAX_SIZE: u64 = 4 << 30;

/// A size in bytes, given as a number of bytes or as text with a unit (`"512MiB"`, `"4 GiB"`,
/// `"100MB"`; B, kB/MB/GB/TB powers of 1000, KiB/MiB/GiB/TiB powers of 1024).
fn byte_size<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Size {
        Bytes(u64),
        Text(String),
    }
    match Size::deserialize(d)? {
        Size::Bytes(n) => Ok(Some(n)),
        Size::Text(t) => parse_size(&t).map(Some).map_err(serde::de::Error::custom),
    }
}

/// See [`byte_size`].
pub(crate) fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a size (a number of bytes, or e.g. \"4GiB\")"))?;
    let factor: u64 = match unit.trim() {
        "" | "B" => 1,
        "kB" | "KB" => 1000,
        "MB" => 1000_u64.pow(2),
        "GB" => 1000_u64.pow(3),
        "TB" => 1000_u64.pow(4),
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        other => {
            return Err(format!(
                "unknown size unit {other:?} (B, kB, MB, GB, TB, KiB, MiB, GiB, TiB)"
            ))
        }
    };
    number
        .checked_mul(factor)
        .ok_or_else(|| format!("{text:?} is too large"))
}

/// What a run does when the live schema differs from the one recorded after the last run:
/// objects were added, removed or changed by hand (not by migrations, not by Drizzle's own
/// migrator).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum SchemaDrift {
    /// Name the changes and apply anyway; the run records the schema as it then is.
    #[default]
    Warn,
    /// Name the changes and stop before any change: `migrate` exits 4.
    Refuse,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum LogTarget {
    /// The journal when stderr is connected to it (`JOURNAL_STREAM`), else stderr.
    #[default]
    Auto,
    Journald,
    Stderr,
}

/// Every setting, resolved.
#[derive(Clone)]
pub struct Settings {
    pub database_url: Option<String>,
    pub database_password_file: Option<PathBuf>,
    pub migrations_dir: PathBuf,
    pub migrations_schema: String,
    pub migrations_table: String,
    /// How long to wait for another run's advisory lock.
    pub lock_wait: Duration,
    /// `lock_timeout` for each migration's statements; zero disables it.
    pub lock_timeout: Duration,
    /// `statement_timeout` for each statement; `None` (unset) leaves the server's setting
    /// (postgresql.conf, `ALTER DATABASE/ROLE ... SET`); `Some(0)` means no limit, as
    /// PostgreSQL 15 reads `statement_timeout = 0`.
    pub statement_timeout: Option<Duration>,
    pub transaction: TransactionMode,
    /// How often a migration that hit lock_timeout is tried again (with backoff).
    pub lock_retries: u32,
    /// Tracking rows that match no file: warn, or refuse to run.
    pub unknown_rows: UnknownRows,
    /// Rehearse on a scratch copy before touching the database.
    pub rehearse: Rehearse,
    /// `rehearse = "auto"` skips the rehearsal above this database size, in bytes
    /// (`pg_database_size`).
    pub rehearse_max_size: u64,
    /// The live schema changed by hand since the last run: warn, or refuse to run.
    pub schema_drift: SchemaDrift,
    pub daemon: DaemonSettings,
    pub backup: crate::backup::BackupSettings,
}

/// Settings only the daemon (and the `trigger` client) read.
#[derive(Debug, Clone, PartialEq)]
pub struct DaemonSettings {
    pub socket_path: PathBuf,
    /// Group owning the socket when the daemon binds it itself (socket activation sets its own).
    pub socket_group: Option<String>,
    /// The user the daemon runs as (a name or uid): `trigger` believes only a socket served by
    /// root, this user or its own user (SO_PEERCRED of the server, unix(7)).
    pub daemon_user: String,
    /// Users, besides root and the service user, that may send `apply`.
    pub allowed_users: Vec<String>,
    pub allowed_groups: Vec<String>,
    /// What peers that may not apply may ask.
    pub peer_view: PeerView,
    pub apply_on_start: bool,
    pub apply: ApplyPolicy,
    /// Quiet time after the last change in the folder before it is read.
    pub settle: Duration,
    /// How long a migration in progress may finish after SIGTERM before it is cancelled.
    pub stop_grace: Duration,
    pub exit_on_start_failure: bool,
    /// Cap of the exponential backoff between connection attempts.
    pub db_retry_max: Duration,
    pub log_target: LogTarget,
    pub log_level: String,
}

impl Default for DaemonSettings {
    fn default() -> Self {
        DaemonSettings {
            socket_path: PathBuf::from("/run/vamsa-migrate/trigger.sock"),
            socket_group: None,
            daemon_user: "vamsa-migrate".into(),
            allowed_users: Vec::new(),
            allowed_groups: Vec::new(),
            peer_view: PeerView::Ping,
            apply_on_start: true,
            apply: ApplyPolicy::OnTrigger,
            settle: Duration::from_millis(500),
            stop_grace: Duration::from_secs(30),
            exit_on_start_failure: true,
            db_retry_max: Duration::from_secs(30),
            log_target: LogTarget::Auto,
            log_level: "info".into(),
        }
    }
}

// A hand-written Debug, so that a URL with a password never reaches a log by accident.
impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("database_url", &self.database_url.as_ref().map(|_| "<set>"))
            .field("database_password_file", &self.database_password_file)
            .field("migrations_dir", &self.migrations_dir)
            .field("migrations_schema", &self.migrations_schema)
            .field("migrations_table", &self.migrations_table)
            .field("lock_wait", &self.lock_wait)
            .field("lock_timeout", &self.lock_timeout)
            .field("statement_timeout", &self.statement_timeout)
            .field("transaction", &self.transaction)
            .field("lock_retries", &self.lock_retries)
            .field("unknown_rows", &self.unknown_rows)
            .field("rehearse", &self.rehearse)
            .field("rehearse_max_size", &self.rehearse_max_size)
            .field("schema_drift", &self.schema_drift)
            .field("daemon", &self.daemon)
            .field("backup", &self.backup)
            .finish()
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            database_url: None,
            database_password_file: None,
            migrations_dir: PathBuf::from("drizzle"),
            migrations_schema: "drizzle".into(),
            migrations_table: "__drizzle_migrations".into(),
            lock_wait: Duration::from_secs(300),
            lock_timeout: Duration::from_secs(10),
            statement_timeout: None,
            transaction: TransactionMode::PerMigration,
            lock_retries: 0,
            unknown_rows: UnknownRows::Refuse,
            rehearse: Rehearse::Auto,
            rehearse_max_size: DEFAULT_REHEARSE_MAX_SIZE,
            schema_drift: SchemaDrift::Warn,
            daemon: DaemonSettings::default(),
            backup: crate::backup::BackupSettings::default(),
        }
    }
}

/// One layer of settings: every key optional, unknown keys refused.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Layer {
    pub database_url: Option<String>,
    pub database_password_file: Option<PathBuf>,
    pub migrations_dir: Option<PathBuf>,
    pub migrations_schema: Option<String>,
    pub migrations_table: Option<String>,
    #[serde(default, with = "humantime_serde")]
    pub lock_wait: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub lock_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub statement_timeout: Option<Duration>,
    pub transaction: Option<TransactionMode>,
    pub lock_retries: Option<u32>,
    pub unknown_rows: Option<UnknownRows>,
    pub rehearse: Option<Rehearse>,
    #[serde(default, deserialize_with = "byte_size")]
    pub rehearse_max_size: Option<u64>,
    pub schema_drift: Option<SchemaDrift>,
    pub socket_path: Option<PathBuf>,
    pub socket_group: Option<String>,
    pub daemon_user: Option<String>,
    #[serde(default, deserialize_with = "string_list")]
    pub allowed_users: Option<Vec<String>>,
    #[serde(default, deserialize_with = "string_list")]
    pub allowed_groups: Option<Vec<String>>,
    pub peer_view: Option<PeerView>,
    pub apply_on_start: Option<bool>,
    pub apply: Option<ApplyPolicy>,
    #[serde(default, with = "humantime_serde")]
    pub settle: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub stop_grace: Option<Duration>,
    pub exit_on_start_failure: Option<bool>,
    #[serde(default, with = "humantime_serde")]
    pub db_retry_max: Option<Duration>,
    pub log_target: Option<LogTarget>,
    pub log_level: Option<String>,
    pub backup_enabled: Option<bool>,
    pub backup_dir: Option<PathBuf>,
    pub backup_keep: Option<usize>,
}

/// A list given as a TOML array or, from the environment, as `a,b,c`.
fn string_list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum List {
        Many(Vec<String>),
        One(String),
    }
    Ok(Some(match List::deserialize(d)? {
        List::Many(v) => v,
        List::One(s) => s
            .split(',')
            .map(str::trim)
            .filter(|x| !x.is_empty())
            .map(str::to_string)
            .collect(),
    }))
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{origin}: {message}")]
    Invalid { origin: String, message: String },
    /// `--config` (or `VAMSA_MIGRATE_CONFIG`, then `by_env`) names no file.
    #[error("config file {path} does not exist{}", if *by_env { " (set by VAMSA_MIGRATE_CONFIG)" } else { "" })]
    MissingFile { path: PathBuf, by_env: bool },
    #[error("database_password_file {path}: cannot read: {source}")]
    PasswordFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("database_url is not set: set it in {DEFAULT_CONFIG_FILE}, or in DATABASE_URL, or pass --database-url")]
    NoDatabase,
    /// A connection setting (in database_url, a `PG*` variable, a service file) is wrong.
    #[error(transparent)]
    ConnInfo(#[from] crate::libpq::ConnInfoError),
    #[error("{key}: {message}")]
    BadValue { key: &'static str, message: String },
    /// `migrations_dir` names no folder; `problem` says what is there instead ("does not
    /// exist", "is a file, not a folder", with the working directory a relative path is
    /// relative to), `origin` is the setting that gave it (a flag, a variable, a config file
    /// or the default).
    #[error("migrations_dir {path} {problem}; it was set by {origin}")]
    NoMigrationsDir {
        path: PathBuf,
        problem: String,
        origin: String,
    },
}

impl Settings {
    /// Applies one layer over these settings.
    pub fn apply(&mut self, layer: Layer) {
        macro_rules! set {
            ($($field:ident),*) => {$(
                if let Some(v) = layer.$field { self.$field = v; }
            )*};
        }
        set!(
            migrations_dir,
            migrations_schema,
            migrations_table,
            lock_wait,
            lock_timeout,
            transaction,
            lock_retries,
            unknown_rows,
            rehearse,
            rehearse_max_size,
            schema_drift
        );
        let d = &mut self.daemon;
        macro_rules! set_daemon {
            ($($field:ident),*) => {$(
                if let Some(v) = layer.$field { d.$field = v; }
            )*};
        }
        set_daemon!(
            socket_path,
            daemon_user,
            allowed_users,
            allowed_groups,
            peer_view,
            apply_on_start,
            apply,
            settle,
            stop_grace,
            exit_on_start_failure,
            db_retry_max,
            log_target,
            log_level
        );
        if layer.socket_group.is_some() {
            d.socket_group = layer.socket_group;
        }
        let b = &mut self.backup;
        if let Some(v) = layer.backup_enabled {
            b.enabled = v;
        }
        if let Some(v) = layer.backup_dir {
            b.dir = v;
        }
        if let Some(v) = layer.backup_keep {
            b.keep = v;
        }
        if layer.database_url.is_some() {
            self.database_url = layer.database_url;
        }
        if layer.database_password_file.is_some() {
            self.database_password_file = layer.database_password_file;
        }
        if let Some(t) = layer.statement_timeout {
            self.statement_timeout = Some(t);
        }
    }

    /// Loads defaults < file < environment. `file` is `--config`; without it the packaged
    /// path is read when it exists.
    pub fn load(
        file: Option<&Path>,
        env: &HashMap<String, String>,
    ) -> Result<Settings, ConfigError> {
        let mut settings = Settings::default();
        match file {
            Some(path) if !path.exists() => {
                return Err(ConfigError::MissingFile {
                    path: path.to_path_buf(),
                    by_env: env
                        .get("VAMSA_MIGRATE_CONFIG")
                        .is_some_and(|v| Path::new(v) == path),
                })
            }
            Some(path) => settings.apply(read_file(path)?),
            None => {
                let path = Path::new(DEFAULT_CONFIG_FILE);
                if path.exists() {
                    settings.apply(read_file(path)?);
                }
            }
        }
        if let Some(url) = env.get("DATABASE_URL") {
            settings.database_url = Some(url.clone());
        }
        settings.apply(read_env(env)?);
        settings.validate()?;
        Ok(settings)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.backup.keep == 0 {
            return Err(ConfigError::BadValue {
                key: "backup_keep",
                message: "must be at least 1 (set backup_enabled = false to take no backups)"
                    .into(),
            });
        }
        for (key, value) in [
            ("migrations_schema", &self.migrations_schema),
            ("migrations_table", &self.migrations_table),
        ] {
            if value.is_empty() || value.len() > 63 || value.contains('\0') {
                return Err(ConfigError::BadValue {
                    key,
                    message: format!("{value:?} is not a valid PostgreSQL identifier (1-63 bytes)"),
                });
            }
        }
        Ok(())
    }

    /// The PostgreSQL connection settings, with the password from `database_password_file` or
    /// systemd's credential when one is configured.
    pub fn pg_config(
        &self,
        env: &HashMap<String, String>,
    ) -> Result<crate::libpq::ConnParams, ConfigError> {
        let url = self
            .database_url
            .as_deref()
            .ok_or(ConfigError::NoDatabase)?;
        let credential = env
            .get("CREDENTIALS_DIRECTORY")
            .map(|dir| Path::new(dir).join(CREDENTIAL_NAME))
            .filter(|p| p.exists());
        let password_override = match self.database_password_file.clone().or(credential) {
            Some(path) => {
                let text = crate::smallfile::read_to_string(&path)
                    .map_err(|source| ConfigError::PasswordFile { path, source })?;
                Some(text.trim_end_matches(['\n', '\r']).to_string())
            }
            None => None,
        };
        let inputs = crate::libpq::Inputs {
            env,
            os_user: crate::libpq::os_user(env),
            password_override,
        };
        crate::libpq::resolve(url, &inputs).map_err(ConfigError::ConnInfo)
    }
}

/// Reads one TOML file as a [`Layer`]. A syntax error names file, line, column and the problem
/// but never the line itself: it may be a `database_url` holding a password.
fn read_file(path: &Path) -> Result<Layer, ConfigError> {
    let origin = path.display().to_string();
    let text = crate::smallfile::read_to_string(path).map_err(|e| ConfigError::Invalid {
        origin: origin.clone(),
        message: format!("cannot read: {e}"),
    })?;
    if let Err(e) = toml::de::DeTable::parse(&text) {
        return Err(ConfigError::Invalid {
            message: syntax_error(&text, &e),
            origin,
        });
    }
    let source = config::File::from_str(&text, config::FileFormat::Toml);
    deserialize_layer(config::Config::builder().add_source(source), &origin)
}

/// `line 1, column 16: TOML syntax: string values must be quoted, expected literal string`:
/// where (1-based, columns in characters) and toml's message, without the source text.
fn syntax_error(text: &str, e: &toml::de::Error) -> String {
    let problem = mask_secrets(&e.message().replace('\n', "; "));
    let Some(at) = e.span().map(|s| s.start.min(text.len())) else {
        return format!("TOML syntax: {problem}");
    };
    let before = text.get(..at).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
    format!("line {line}, column {column}: TOML syntax: {problem}")
}

/// `text` with the passwords of connection strings replaced by `***`: the part after the
/// user in `scheme://user:password@` (libpq URI) and the value of `password=` (libpq
/// key/value form, PostgreSQL 15 docs 34.1.1), quoted or not.
pub(crate) fn mask_secrets(text: &str) -> String {
    let masked = mask_uri_passwords(text);
    mask_keyword_passwords(&masked)
}

fn mask_uri_passwords(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        let end = tail
            .find(|c: char| c.is_whitespace() || matches!(c, '/' | '"' | '\'' | '`' | '?'))
            .unwrap_or(tail.len());
        let authority = &tail[..end];
        match authority.rfind('@').and_then(|at| {
            let colon = authority[..at].find(':')?;
            Some((colon, at))
        }) {
            Some((colon, at)) => {
                out.push_str(&authority[..=colon]);
                out.push_str("***");
                out.push_str(&authority[at..]);
            }
            None => out.push_str(authority),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

fn mask_keyword_passwords(text: &str) -> String {
    let lower = text.to_ascii_lowercase();
    let mut out = String::with_capacity(text.len());
    let mut from = 0;
    while let Some(found) = lower[from..].find("password") {
        let key_end = from + found + "password".len();
        let after = &text[key_end..];
        let spaces = after.len() - after.trim_start().len();
        if !after.trim_start().starts_with('=') {
            out.push_str(&text[from..key_end]);
            from = key_end;
            continue;
        }
        let value_start = key_end + spaces + 1;
        let value = text[value_start..].trim_start();
        let value_start = text.len() - value.len();
        let value_len = match value.strip_prefix('\'') {
            Some(quoted) => quoted.find('\'').map_or(value.len(), |q| q + 2),
            None => value
                .find(|c: char| c.is_whitespace() || matches!(c, '"' | '`'))
                .unwrap_or(value.len()),
        };
        out.push_str(&text[from..value_start]);
        out.push_str("***");
        from = value_start + value_len;
    }
    out.push_str(&text[from..]);
    out
}

/// The `VAMSA_MIGRATE_<KEY>` variables as one layer. A variable naming no key is warned of and
/// ignored (other tools, such as the package's scripts, share the prefix); a bad value fails
/// naming its variable and, for a key of a fixed set of values, those values.
fn read_env(env: &HashMap<String, String>) -> Result<Layer, ConfigError> {
    let keys = names::<Layer>();
    let mut vars: HashMap<String, String> = HashMap::new();
    for (name, value) in env {
        let Some(key) = name.strip_prefix(&format!("{ENV_PREFIX}_")) else {
            continue;
        };
        if ENV_NOT_SETTINGS.contains(&name.as_str()) {
            continue;
        }
        if !keys.contains(&key.to_ascii_lowercase().as_str()) {
            tracing::warn!("{name} is not a vamsa-migrate setting; ignored (the settings are VAMSA_MIGRATE_<KEY> for a key of the config file)");
            continue;
        }
        let one = HashMap::from([(name.clone(), value.clone())]);
        env_layer(one).map_err(|e| bad_variable(name, value, &key.to_ascii_lowercase(), e))?;
        vars.insert(name.clone(), value.clone());
    }
    env_layer(vars).map_err(|e| ConfigError::Invalid {
        origin: "environment (VAMSA_MIGRATE_*)".into(),
        message: mask_secrets(&e.to_string()),
    })
}

fn env_layer(vars: HashMap<String, String>) -> Result<Layer, config::ConfigError> {
    let source = config::Environment::with_prefix(ENV_PREFIX)
        .prefix_separator("_")
        .source(Some(vars));
    config::Config::builder()
        .add_source(source)
        .build()?
        .try_deserialize()
}

/// The error of variable `name` (setting `key`): its own message, or the values allowed.
fn bad_variable(name: &str, value: &str, key: &str, e: config::ConfigError) -> ConfigError {
    let allowed = match key {
        "transaction" => names::<TransactionMode>(),
        "unknown_rows" => names::<UnknownRows>(),
        "peer_view" => names::<PeerView>(),
        "apply" => names::<ApplyPolicy>(),
        "log_target" => names::<LogTarget>(),
        _ => &[],
    };
    let message = if allowed.is_empty() {
        // A value in the message (`invalid type: string "..."`) may be a misplaced password.
        mask_secrets(&e.to_string())
    } else {
        format!("{value:?} is not one of: {}", allowed.join(", "))
    };
    ConfigError::Invalid {
        origin: name.to_string(),
        message,
    }
}

/// The names serde's derive gives `T`: a struct's field names or an enum's variant names (as
/// written in the file, after `rename_all`).
fn names<'de, T: Deserialize<'de>>() -> &'static [&'static str] {
    let mut names: &'static [&'static str] = &[];
    let _ = T::deserialize(NameCatcher(&mut names));
    names
}

/// A deserializer that only records the field or variant names it is asked for.
struct NameCatcher<'a>(&'a mut &'static [&'static str]);

impl<'de> serde::Deserializer<'de> for NameCatcher<'_> {
    type Error = serde::de::value::Error;

    fn deserialize_any<V: serde::de::Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
        Err(serde::de::Error::custom("names only"))
    }

    fn deserialize_struct<V: serde::de::Visitor<'de>>(
        self,
        _: &'static str,
        fields: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, Self::Error> {
        *self.0 = fields;
        Err(serde::de::Error::custom("names only"))
    }

    fn deserialize_enum<V: serde::de::Visitor<'de>>(
        self,
        _: &'static str,
        variants: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, Self::Error> {
        *self.0 = variants;
        Err(serde::de::Error::custom("names only"))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map identifier ignored_any
    }
}

fn deserialize_layer(
    builder: config::ConfigBuilder<config::builder::DefaultState>,
    origin: &str,
) -> Result<Layer, ConfigError> {
    // A value in the message (`invalid type: string "..."`) may be a misplaced password.
    let invalid = |e: config::ConfigError| ConfigError::Invalid {
        origin: origin.to_string(),
        message: mask_secrets(&e.to_string()),
    };
    builder
        .build()
        .map_err(invalid)?
        .try_deserialize()
        .map_err(invalid)
}

/// Warnings about the password where other local users may read it, each naming the file and
/// the `chmod` that fixes it: the config file (`file`, else the packaged one when it exists)
/// when its `database_url` holds a password, and `database_password_file`. "Other users" are
/// those outside the file's owner and group (mode bit `o+r`); a group-readable file is how the
/// package shares it with the service user.
pub fn secret_warnings(file: Option<&Path>, settings: &Settings) -> Vec<String> {
    let mut warnings = Vec::new();
    let config_file = file
        .map(Path::to_path_buf)
        .or_else(|| Some(PathBuf::from(DEFAULT_CONFIG_FILE)).filter(|p| p.exists()));
    if let Some(path) = config_file {
        let holds_password = read_file(&path)
            .ok()
            .and_then(|layer| layer.database_url)
            .is_some_and(|url| has_password(&url));
        if let Some(mode) = holds_password.then(|| others_may_read(&path)).flatten() {
            warnings.push(format!(
                "config file {p} holds the database password and every local user may read it (mode {mode:o}): `chmod o-rwx {p}`",
                p = path.display()
            ));
        }
    }
    if let Some(path) = &settings.database_password_file {
        if let Some(mode) = others_may_read(path) {
            warnings.push(format!(
                "database_password_file {p} may be read by every local user (mode {mode:o}): `chmod o-rwx {p}`",
                p = path.display()
            ));
        }
    }
    warnings
}

/// The file's permission bits when users outside its owner and group may read it.
fn others_may_read(path: &Path) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o7777;
    (mode & 0o004 != 0).then_some(mode)
}

/// Whether a libpq connection string (URI or key/value) carries a password.
pub fn has_password(url: &str) -> bool {
    tokio_postgres::Config::from_str(url).is_ok_and(|c| c.get_password().is_some())
}

/// What to show of a connection: hosts, ports, database and user; never the password.
pub fn describe_target(config: &tokio_postgres::Config) -> String {
    use tokio_postgres::config::Host;
    let ports = config.get_ports();
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
            match h {
                Host::Tcp(name) => format!("{name}:{port}"),
                Host::Unix(path) => format!("{}:{port}", path.display()),
            }
        })
        .collect();
    let hosts = if hosts.is_empty() {
        "localhost:5432".to_string()
    } else {
        hosts.join(",")
    };
    let db = config
        .get_dbname()
        .or(config.get_user())
        .unwrap_or("postgres");
    format!("{hosts}/{db}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_bytes_or_text_with_a_unit() {
        for (text, bytes) in [
            ("4GiB", 4u64 << 30),
            ("500MB", 500_000_000),
            (" 1 MiB ", 1 << 20),
            ("123", 123),
        ] {
            assert_eq!(parse_size(text), Ok(bytes), "{text}");
        }
        for bad in ["", "GiB", "4 parsecs", "99999999999TiB"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }
    use std::collections::BTreeSet;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn layers_override_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(
            &file,
            "migrations_dir = \"/srv/a\"\nlock_timeout = \"3s\"\ndatabase_url = \"host=file\"\n",
        )
        .unwrap();
        let s = Settings::load(
            Some(&file),
            &env(&[
                ("VAMSA_MIGRATE_LOCK_TIMEOUT", "7s"),
                ("DATABASE_URL", "host=env"),
                ("VAMSA_MIGRATE_CONFIG", "ignored"),
            ]),
        )
        .unwrap();
        assert_eq!(s.migrations_dir, PathBuf::from("/srv/a"));
        assert_eq!(s.lock_timeout, Duration::from_secs(7));
        assert_eq!(s.database_url.as_deref(), Some("host=env"));
        assert_eq!(s.lock_wait, Duration::from_secs(300));
    }

    #[test]
    fn unknown_key_names_key_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "lock_wiat = \"3s\"\n").unwrap();
        let err = Settings::load(Some(&file), &env(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("lock_wiat"), "{err}");
        assert!(err.contains(&file.display().to_string()), "{err}");
    }

    #[test]
    fn bad_value_names_key() {
        let err = Settings::load(None, &env(&[("VAMSA_MIGRATE_TRANSACTION", "some")]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("VAMSA_MIGRATE") && err.contains("some"),
            "{err}"
        );
        let err = Settings::load(None, &env(&[("VAMSA_MIGRATE_LOCK_WAIT", "soon")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("lock_wait"), "{err}");
    }

    #[test]
    fn daemon_keys_and_lists_from_the_environment() {
        let s = Settings::load(
            None,
            &env(&[
                ("VAMSA_MIGRATE_ALLOWED_USERS", "deploy, ci"),
                ("VAMSA_MIGRATE_APPLY", "on-change"),
                ("VAMSA_MIGRATE_SETTLE", "200ms"),
                ("VAMSA_MIGRATE_APPLY_ON_START", "false"),
            ]),
        )
        .unwrap();
        assert_eq!(s.daemon.allowed_users, ["deploy", "ci"]);
        assert_eq!(s.daemon.apply, ApplyPolicy::OnChange);
        assert_eq!(s.daemon.settle, Duration::from_millis(200));
        assert!(!s.daemon.apply_on_start);
    }

    #[test]
    fn password_file_and_credentials_directory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("database_password"), "s3cret\n").unwrap();
        let mut s = Settings {
            database_url: Some("host=/run/postgresql user=vamsa dbname=vamsa".into()),
            ..Settings::default()
        };
        let e = env(&[("CREDENTIALS_DIRECTORY", dir.path().to_str().unwrap())]);
        assert_eq!(
            s.pg_config(&e).unwrap().driver.get_password(),
            Some(&b"s3cret"[..])
        );
        std::fs::write(dir.path().join("other"), "two").unwrap();
        s.database_password_file = Some(dir.path().join("other"));
        assert_eq!(
            s.pg_config(&e).unwrap().driver.get_password(),
            Some(&b"two"[..])
        );
    }

    /// The keys [`Layer`] accepts, as serde's derive hands them to `deserialize_struct`: taken
    /// from the code itself, so the list cannot go stale.
    fn accepted_keys() -> BTreeSet<&'static str> {
        use serde::de::{Error, Visitor};
        struct FieldNames(&'static [&'static str]);
        impl<'de> serde::Deserializer<'de> for &mut FieldNames {
            type Error = serde::de::value::Error;
            fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
                Err(Error::custom("Layer is not a struct"))
            }
            fn deserialize_struct<V: Visitor<'de>>(
                self,
                _name: &'static str,
                fields: &'static [&'static str],
                _: V,
            ) -> Result<V::Value, Self::Error> {
                self.0 = fields;
                Err(Error::custom("field names read; nothing to deserialize"))
            }
            serde::forward_to_deserialize_any! {
                bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
                byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map enum
                identifier ignored_any
            }
        }
        let mut names = FieldNames(&[]);
        let _ = Layer::deserialize(&mut names);
        names.0.iter().copied().collect()
    }

    #[test]
    fn the_packaged_config_documents_every_key_with_a_valid_default() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/config.toml");
        read_file(&path).expect("the packaged config loads as it is");
        let text = std::fs::read_to_string(&path).unwrap();
        let mut documented = BTreeSet::new();
        // `key = value` or `# key = value` (the commented default); indented lines are examples.
        for line in text.lines() {
            let entry = line.strip_prefix('#').unwrap_or(line);
            let entry = entry.strip_prefix(' ').unwrap_or(entry);
            let Some((key, _)) = entry.split_once(" = ") else {
                continue;
            };
            if key.is_empty() || !key.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
                continue;
            }
            let source = config::File::from_str(entry, config::FileFormat::Toml);
            deserialize_layer(config::Config::builder().add_source(source), "config.toml")
                .unwrap_or_else(|e| panic!("packaging/config.toml: {line:?}: {e}"));
            documented.insert(key);
        }
        // A key the program refuses already failed above (unknown field).
        let accepted = accepted_keys();
        assert!(accepted.len() > 20, "{accepted:?}");
        let undocumented: Vec<_> = accepted.difference(&documented).collect();
        assert!(
            undocumented.is_empty(),
            "packaging/config.toml does not document: {undocumented:?}"
        );
    }

    #[test]
    fn secrets_in_messages_are_masked() {
        for (text, masked) in [
            (
                "string \"postgres://u:SECRET@h:5432/db\", expected",
                "string \"postgres://u:***@h:5432/db\", expected",
            ),
            (
                "postgresql://u@h/db postgres://h/db",
                "postgresql://u@h/db postgres://h/db",
            ),
            (
                "host=h password=SECRET user=u",
                "host=h password=*** user=u",
            ),
            ("PASSWORD = 'SE CRET' user=u", "PASSWORD = *** user=u"),
            ("\"host=h password=SECRET\"", "\"host=h password=***\""),
            ("the password is wrong", "the password is wrong"),
        ] {
            assert_eq!(mask_secrets(text), masked, "{text}");
        }
    }

    #[test]
    fn a_toml_syntax_error_names_line_and_column_but_not_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        for (text, at) in [
            (
                "database_url = postgres://u:SECRET@h/db\n",
                "line 1, column 16",
            ),
            (
                "# é\ndatabase_url = \"postgres://u:SECRET@h/db\n",
                "line 2, column 41",
            ),
            (
                "lock_wait = \"1s\"\n[x\npassword=SECRET\n",
                "line 2, column 3",
            ),
        ] {
            std::fs::write(&file, text).unwrap();
            let err = Settings::load(Some(&file), &env(&[]))
                .unwrap_err()
                .to_string();
            assert!(!err.contains("SECRET"), "{err}");
            assert!(err.contains(&file.display().to_string()), "{err}");
            assert!(err.contains(&format!("{at}: TOML syntax: ")), "{err}");
        }
    }

    #[test]
    fn target_description_has_no_password() {
        let c =
            tokio_postgres::Config::from_str("postgres://u:hunter2@db.example:5433/vamsa").unwrap();
        let d = describe_target(&c);
        assert_eq!(d, "db.example:5433/vamsa");
        assert!(!format!(
            "{:?}",
            Settings {
                database_url: Some("postgres://u:hunter2@x/y".into()),
                ..Settings::default()
            }
        )
        .contains("hunter2"));
    }
}
