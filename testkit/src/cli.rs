//! Running the binary under test: the one builder for every run of it in the tests.

use std::ffi::{OsStr, OsString};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;

/// Settings that the environment of the test process must not pass on to the binary.
fn leaks_settings(name: &OsStr) -> bool {
    let name = name.to_string_lossy();
    // PG*: libpq's variables, which vamsa-migrate reads as psql does.
    name.starts_with("VAMSA_MIGRATE")
        || name.starts_with("PG")
        || name == "DATABASE_URL"
        || name == "CREDENTIALS_DIRECTORY"
}

/// How to run the binary once (or several times): arguments, environment, user.
///
/// Every run starts from an environment that cannot leak settings in: no `VAMSA_MIGRATE_*`,
/// `PG*`, `DATABASE_URL` or `CREDENTIALS_DIRECTORY` of the caller, an empty config file instead of the
/// packaged one, and a default `backup_dir` inside a scratch directory that is removed when the
/// last run (or spawned process) of this builder is gone. Stdin is closed.
#[derive(Clone)]
pub struct Cli {
    program: PathBuf,
    args: Vec<OsString>,
    envs: Vec<(OsString, Option<OsString>)>,
    database_url: Option<String>,
    migrations_dir: Option<PathBuf>,
    as_nobody: bool,
    pub(crate) scratch: Arc<tempfile::TempDir>,
}

impl Cli {
    /// The binary at `program` (in a test of its own package: `env!("CARGO_BIN_EXE_<name>")`).
    pub fn new(program: impl Into<PathBuf>) -> Cli {
        let scratch = tempfile::Builder::new()
            .prefix("vamsa-cli-")
            .tempdir()
            .expect("create the scratch directory of a run");
        // Readable by every user: a run as `nobody` reads the empty config too.
        std::fs::set_permissions(scratch.path(), std::fs::Permissions::from_mode(0o755))
            .expect("open the scratch directory to other users");
        let config = scratch.path().join("empty.toml");
        std::fs::write(&config, "# empty\n").expect("write the empty config");
        std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644))
            .expect("make the empty config readable");
        let backups = scratch.path().join("backups");
        let mut envs: Vec<(OsString, Option<OsString>)> = vec![
            ("VAMSA_MIGRATE_CONFIG".into(), Some(config.into())),
            ("VAMSA_MIGRATE_BACKUP_DIR".into(), Some(backups.into())),
        ];
        // `./dev test-pg18` runs with backups off: a server without the client programs of its
        // version (PostgreSQL 18 from npm; Debian 12 has pg_dump 15) cannot be dumped.
        if let Some(enabled) = std::env::var_os("VAMSA_TEST_BACKUP_ENABLED") {
            envs.push(("VAMSA_MIGRATE_BACKUP_ENABLED".into(), Some(enabled)));
        }
        Cli {
            program: program.into(),
            args: Vec::new(),
            envs,
            database_url: None,
            migrations_dir: None,
            as_nobody: false,
            scratch: Arc::new(scratch),
        }
    }

    pub fn program(&self) -> &Path {
        &self.program
    }

    pub fn arg(&mut self, arg: impl AsRef<OsStr>) -> &mut Cli {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    pub fn args<S: AsRef<OsStr>>(&mut self, args: impl IntoIterator<Item = S>) -> &mut Cli {
        for arg in args {
            self.arg(arg);
        }
        self
    }

    /// Sets one environment variable (after the cleaning, so it may set a setting).
    pub fn env(&mut self, name: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> &mut Cli {
        let value = Some(value.as_ref().to_owned());
        self.envs.push((name.as_ref().to_owned(), value));
        self
    }

    pub fn env_remove(&mut self, name: impl AsRef<OsStr>) -> &mut Cli {
        self.envs.push((name.as_ref().to_owned(), None));
        self
    }

    /// `--database-url URL`, placed after the arguments.
    pub fn database_url(&mut self, url: &str) -> &mut Cli {
        self.database_url = Some(url.to_string());
        self
    }

    /// `--migrations-dir DIR`, placed after `--database-url`.
    pub fn migrations_dir(&mut self, dir: &Path) -> &mut Cli {
        self.migrations_dir = Some(dir.to_path_buf());
        self
    }

    /// `backup_dir` as VAMSA_MIGRATE_BACKUP_DIR: not every command takes `--backup-dir`
    /// (each offers only the flags it uses), every one reads the environment.
    pub fn backup_dir(&mut self, dir: &Path) -> &mut Cli {
        self.env("VAMSA_MIGRATE_BACKUP_DIR", dir)
    }

    /// Runs as uid and gid 65534 (`nobody`) with no supplementary groups: std drops them
    /// (`setgroups(0)`) when a root process sets the uid. Needs root.
    pub fn as_nobody(&mut self) -> &mut Cli {
        self.as_nobody = true;
        self
    }

    /// The command as it would run; for what the builder does not cover.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(&self.program);
        for (name, _) in std::env::vars_os() {
            if leaks_settings(&name) {
                cmd.env_remove(name);
            }
        }
        for (name, value) in &self.envs {
            match value {
                Some(value) => cmd.env(name, value),
                None => cmd.env_remove(name),
            };
        }
        cmd.args(&self.args);
        let options = [
            ("--database-url", self.database_url.as_ref().map(OsStr::new)),
            (
                "--migrations-dir",
                self.migrations_dir.as_deref().map(Path::as_os_str),
            ),
        ];
        for (flag, value) in options {
            if let Some(value) = value {
                cmd.arg(flag).arg(value);
            }
        }
        if self.as_nobody {
            cmd.uid(65534).gid(65534);
        }
        cmd.stdin(Stdio::null());
        cmd
    }

    /// Runs to completion and collects the exit code and output.
    pub fn run(&self) -> Run {
        let output = self.command().output();
        Run::from(output.unwrap_or_else(|e| panic!("run {}: {e}", self.program.display())))
    }

    /// Starts it with stdout and stderr piped; see [`Spawned`].
    pub fn spawn(&self) -> Spawned {
        let child = self
            .command()
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", self.program.display()));
        Spawned {
            child: Some(child),
            _scratch: self.scratch.clone(),
        }
    }
}

/// The outcome of a run: exit code (-1 when killed by a signal) and the output, lossily decoded.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(o: Output) -> Run {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

impl Run {
    /// Asserts exit code 0.
    #[track_caller]
    pub fn ok(&self) -> &Run {
        assert_eq!(self.code, 0, "expected success:\n{self:#?}");
        self
    }

    /// Asserts exit code `code`.
    #[track_caller]
    pub fn code(&self, code: i32) -> &Run {
        assert_eq!(self.code, code, "expected exit {code}:\n{self:#?}");
        self
    }
}

/// A run in progress. Dropped before [`wait`](Self::wait), it is killed (SIGKILL) and reaped,
/// so a failing test leaves no process behind.
pub struct Spawned {
    child: Option<Child>,
    _scratch: Arc<tempfile::TempDir>,
}

impl Spawned {
    /// Waits for the end and collects the exit code and output.
    pub fn wait(mut self) -> Run {
        let child = self.child.take().expect("a Spawned is waited for once");
        Run::from(child.wait_with_output().expect("wait for the binary"))
    }

    /// SIGKILL (`kill -9`) and reap it.
    pub fn kill(mut self) {
        self.kill_and_reap();
    }

    fn kill_and_reap(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        self.kill_and_reap();
    }
}
