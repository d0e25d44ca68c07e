//! A throwaway PostgreSQL cluster in a temporary directory, started from the installed server
//! binaries. Used by `vamsa-migrate demo` and by the test suite; never by a configured run.

use std::ffi::OsStr;
use std::fs;
use std::io;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// Options for a throwaway cluster.
#[derive(Debug, Clone, Default)]
pub struct ClusterOptions {
    /// `fsync = off` makes tests fast; a benchmark keeps it on to measure real commits.
    pub fsync: bool,
    /// Extra `-c name=value` server settings.
    pub settings: Vec<(String, String)>,
    /// Shell commands run as root in a private mount namespace just before the server starts
    /// there (the server keeps that namespace): e.g. a small tmpfs for a disk-full test.
    pub pre_start: Option<String>,
}

/// A running PostgreSQL server owned by this process; stopped and deleted on drop.
pub struct TempCluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    /// Run the server binaries as `postgres` (needed when we are root).
    as_postgres: Option<(u32, u32)>,
    options: ClusterOptions,
    running: bool,
}

/// The newest installed server version's binary folder (`/usr/lib/postgresql/<v>/bin`), or
/// `$PG_BIN_DIR` when set.
pub fn find_bin_dir() -> io::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("PG_BIN_DIR") {
        return Ok(PathBuf::from(dir));
    }
    let mut best: Option<(u32, PathBuf)> = None;
    for entry in fs::read_dir("/usr/lib/postgresql")? {
        let entry = entry?;
        let Some(version) = entry
            .file_name()
            .to_str()
            .and_then(|v| v.parse::<u32>().ok())
        else {
            continue;
        };
        let bin = entry.path().join("bin");
        if bin.join("initdb").exists() && best.as_ref().is_none_or(|(v, _)| version > *v) {
            best = Some((version, bin));
        }
    }
    best.map(|(_, bin)| bin).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            "no PostgreSQL server binaries under /usr/lib/postgresql/*/bin (apt install postgresql)",
        )
    })
}

fn postgres_ids() -> Option<(u32, u32)> {
    // SAFETY: getpwnam returns a pointer to static storage or null; we copy the ids at once.
    unsafe {
        let pw = libc::getpwnam(c"postgres".as_ptr());
        if pw.is_null() {
            None
        } else {
            Some(((*pw).pw_uid, (*pw).pw_gid))
        }
    }
}

fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn check(what: &str, output: Output) -> io::Result<Output> {
    if output.status.success() {
        Ok(output)
    } else {
        Err(io::Error::other(format!(
            "{what} failed ({}): {}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )))
    }
}

impl TempCluster {
    pub fn start() -> io::Result<TempCluster> {
        TempCluster::start_with(ClusterOptions::default())
    }

    pub fn start_with(options: ClusterOptions) -> io::Result<TempCluster> {
        let mut cluster = TempCluster::unstarted(options)?;
        check(
            "initdb",
            cluster
                .server_command("initdb")
                .args([
                    "-A",
                    "trust",
                    "-U",
                    "postgres",
                    "-E",
                    "UTF8",
                    "--locale=C",
                    "--no-sync",
                    "-D",
                ])
                .arg(cluster.data_dir())
                .output()?,
        )?;
        cluster.start_on_free_port()?;
        Ok(cluster)
    }

    /// A streaming replica of `primary` (`pg_basebackup -R`), started and following it.
    pub fn replica_of(primary: &TempCluster) -> io::Result<TempCluster> {
        let mut cluster = TempCluster::unstarted(ClusterOptions::default())?;
        check(
            "pg_basebackup",
            cluster
                .server_command("pg_basebackup")
                .args([
                    "-R",
                    "-X",
                    "stream",
                    "-c",
                    "fast",
                    "-h",
                    "127.0.0.1",
                    "-U",
                    "postgres",
                    "-p",
                ])
                .arg(primary.port.to_string())
                .arg("-D")
                .arg(cluster.data_dir())
                .output()?,
        )?;
        cluster.start_on_free_port()?;
        Ok(cluster)
    }

    fn start_on_free_port(&mut self) -> io::Result<()> {
        let mut last = None;
        for _ in 0..5 {
            self.port = free_port()?;
            match self.pg_ctl_start() {
                Ok(()) => return Ok(()),
                // Another process may have taken the port between our probe and the bind.
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| io::Error::other("could not start PostgreSQL")))
    }

    fn unstarted(options: ClusterOptions) -> io::Result<TempCluster> {
        let bin = find_bin_dir()?;
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        let as_postgres = if root {
            Some(postgres_ids().ok_or_else(|| {
                io::Error::other(
                    "running as root but there is no `postgres` user to run the server as",
                )
            })?)
        } else {
            None
        };
        let dir = tempfile::Builder::new().prefix("vamsa-pg-").tempdir()?;
        if let Some((uid, gid)) = as_postgres {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))?;
        }
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o700))?;
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
        let path = self.bin.join(program);
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

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn bin_dir(&self) -> &Path {
        &self.bin
    }

    /// Starts the server again after [`stop`](Self::stop) or a crash.
    pub fn pg_ctl_start(&mut self) -> io::Result<()> {
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
        let mut cmd = match &self.options.pre_start {
            Some(pre) => {
                let mut c = Command::new("unshare");
                c.args(["--mount", "--propagation", "private", "sh", "-c"])
                    .arg(format!("{pre} && exec \"$@\""))
                    .arg("sh")
                    .arg(pg_ctl.get_program())
                    .args(pg_ctl.get_args());
                c
            }
            None => pg_ctl,
        };
        check(
            "pg_ctl start",
            cmd.stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .output()?,
        )?;
        self.running = true;
        Ok(())
    }

    /// Stops the server; `mode` is pg_ctl's `-m` (`fast`, `immediate`).
    pub fn stop(&mut self, mode: &str) -> io::Result<()> {
        check(
            "pg_ctl stop",
            self.server_command("pg_ctl")
                .arg("-D")
                .arg(self.data_dir())
                .args(["-w", "-m", mode, "stop"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .output()?,
        )?;
        self.running = false;
        Ok(())
    }

    /// A key=value connection string for `dbname` (no password: the cluster trusts local users).
    pub fn url(&self, dbname: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname={dbname} sslmode=disable",
            self.port
        )
    }

    /// Runs `psql -XAt` with one SQL text and returns its output; fails on any error.
    pub fn psql(&self, dbname: &str, sql: &str) -> io::Result<String> {
        let out = check(
            "psql",
            self.psql_command(dbname)
                .args(["-XAtq", "-v", "ON_ERROR_STOP=1", "-c", sql])
                .output()?,
        )?;
        Ok(String::from_utf8_lossy(&out.stdout).trim_end().to_string())
    }

    pub fn psql_command(&self, dbname: &str) -> Command {
        let mut cmd = Command::new(self.bin.join("psql"));
        cmd.args([
            "-h",
            "127.0.0.1",
            "-p",
            &self.port.to_string(),
            "-U",
            "postgres",
            "-d",
            dbname,
        ]);
        cmd.stdin(Stdio::null());
        cmd
    }

    pub fn create_database(&self, name: &str) -> io::Result<()> {
        self.psql("postgres", &format!("CREATE DATABASE \"{name}\""))
            .map(|_| ())
    }

    /// The server's log so far (for diagnosing a failed test).
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    pub fn program<S: AsRef<OsStr>>(&self, name: S) -> PathBuf {
        self.bin.join(name.as_ref())
    }
}

impl Drop for TempCluster {
    fn drop(&mut self) {
        if self.running {
            let _ = self.stop("immediate");
        }
    }
}
