//! A throwaway PgBouncer (Debian's `pgbouncer` package, 1.18) in front of a [`TempCluster`]:
//! its own configuration in a temporary directory, a free port on 127.0.0.1, trust
//! authentication for `postgres`, every database of the cluster under its own name.

use std::fs;
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use crate::cluster::{free_port, ClusterError, TempCluster};

/// PgBouncer's `pool_mode` (PgBouncer 1.x, pgbouncer.ini).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolMode {
    /// A server connection per client connection, for as long as it stays connected.
    Session,
    /// A server connection per transaction: back to the pool when it ends.
    Transaction,
    /// A server connection per statement; multi-statement transactions are refused.
    Statement,
}

impl PoolMode {
    fn as_ini(self) -> &'static str {
        match self {
            PoolMode::Session => "session",
            PoolMode::Transaction => "transaction",
            PoolMode::Statement => "statement",
        }
    }
}

/// A running PgBouncer owned by this process; killed and its directory removed on drop, or
/// by a watcher once this process is gone.
pub struct PgBouncer {
    dir: tempfile::TempDir,
    port: u16,
    child: Child,
}

fn io_error(what: &str) -> impl FnOnce(std::io::Error) -> ClusterError + '_ {
    move |source| ClusterError::Io {
        what: what.to_string(),
        source,
    }
}

impl PgBouncer {
    /// Starts PgBouncer in `mode` in front of `cluster` and waits until it accepts TCP
    /// connections. As root it runs as `postgres` (`-u`; PgBouncer refuses to run as root).
    ///
    /// Errors: [`ClusterError::Io`] when it cannot be written or started (`apt install
    /// pgbouncer`), [`ClusterError::Failed`] when it exits before it listens.
    pub fn start(cluster: &TempCluster, mode: PoolMode) -> Result<PgBouncer, ClusterError> {
        let dir = tempfile::Builder::new()
            .prefix("vamsa-pgbouncer-")
            .tempdir()
            .map_err(io_error("creating the PgBouncer directory"))?;
        let port = free_port()?;
        write_config(dir.path(), cluster.port(), port, mode)?;
        let mut command = Command::new(program());
        if crate::is_root() {
            give_to_postgres(dir.path())?;
            command.args(["-u", "postgres"]);
        }
        let child = command
            .arg(dir.path().join("pgbouncer.ini"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(io_error("starting pgbouncer (apt install pgbouncer)"))?;
        let mut bouncer = PgBouncer { dir, port, child };
        bouncer.reap_after_exit()?;
        bouncer.wait_listening()?;
        Ok(bouncer)
    }

    /// The TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A libpq key=value connection string for `dbname` through this pool (user `postgres`,
    /// no password, `sslmode=disable`).
    pub fn url(&self, dbname: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname={dbname} sslmode=disable",
            self.port
        )
    }

    /// PgBouncer's log so far (for diagnosing a failed test); empty when unreadable.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("pgbouncer.log")).unwrap_or_default()
    }

    fn wait_listening(&mut self) -> Result<(), ClusterError> {
        let mut exited = None;
        crate::wait::eventually("PgBouncer to listen", || {
            if let Ok(Some(status)) = self.child.try_wait() {
                exited = Some(status);
                return true;
            }
            TcpStream::connect(("127.0.0.1", self.port)).is_ok()
        });
        match exited {
            None => Ok(()),
            Some(status) => Err(ClusterError::Failed {
                program: "pgbouncer".into(),
                status,
                output: self.log(),
            }),
        }
    }

    /// A detached watcher (`setsid sh`, as [`crate::reaper`] does for clusters) that kills
    /// PgBouncer once this process is gone, even after SIGKILL.
    fn reap_after_exit(&self) -> Result<(), ClusterError> {
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 0.3; done; kill {child} 2>/dev/null; rm -rf {dir}",
            pid = std::process::id(),
            child = self.child.id(),
            dir = self.dir.path().display(),
        );
        // Never waited for on purpose: its job starts when this process is gone.
        #[allow(clippy::zombie_processes)]
        Command::new("setsid")
            .args(["sh", "-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(io_error("starting the PgBouncer reaper (setsid)"))?;
        Ok(())
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `/usr/sbin/pgbouncer` (Debian), else the one on `PATH`.
fn program() -> &'static str {
    if Path::new("/usr/sbin/pgbouncer").exists() {
        "/usr/sbin/pgbouncer"
    } else {
        "pgbouncer"
    }
}

/// pgbouncer.ini and its auth_file (PgBouncer 1.18: trust still needs the user listed).
/// No Unix socket: it would need a directory of its own per instance.
fn write_config(
    dir: &Path,
    server_port: u16,
    port: u16,
    mode: PoolMode,
) -> Result<(), ClusterError> {
    let ini = format!(
        "[databases]\n\
         * = host=127.0.0.1 port={server_port}\n\
         [pgbouncer]\n\
         listen_addr = 127.0.0.1\n\
         listen_port = {port}\n\
         unix_socket_dir =\n\
         auth_type = trust\n\
         auth_file = {dir}/userlist.txt\n\
         pool_mode = {mode}\n\
         logfile = {dir}/pgbouncer.log\n\
         pidfile = {dir}/pgbouncer.pid\n",
        dir = dir.display(),
        mode = mode.as_ini(),
    );
    fs::write(dir.join("pgbouncer.ini"), ini).map_err(io_error("writing pgbouncer.ini"))?;
    fs::write(dir.join("userlist.txt"), "\"postgres\" \"\"\n")
        .map_err(io_error("writing PgBouncer's auth_file"))
}

/// Makes the directory and its files the `postgres` user's, for PgBouncer started with `-u`.
fn give_to_postgres(dir: &Path) -> Result<(), ClusterError> {
    let user = nix::unistd::User::from_name("postgres")
        .map_err(ClusterError::UserLookup)?
        .ok_or(ClusterError::NoPostgresUser)?;
    let (uid, gid) = (Some(user.uid.as_raw()), Some(user.gid.as_raw()));
    for path in [
        dir.to_path_buf(),
        dir.join("pgbouncer.ini"),
        dir.join("userlist.txt"),
    ] {
        std::os::unix::fs::chown(&path, uid, gid)
            .map_err(io_error("giving PgBouncer's files to postgres"))?;
    }
    Ok(())
}
