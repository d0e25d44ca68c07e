//! The safety net: a verified `pg_dump --format=custom` before every run that applies
//! something, kept in `backup_dir` with simple retention. A failed or partial dump leaves no
//! file behind, and without a good dump nothing is migrated.

use std::ffi::OsString;
use std::fs;
use std::io::{self, Seek, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Instant, SystemTime};

use rustix::fs::{AtFlags, FlockOperation, Mode, OFlags};

use crate::libpq::ConnParams;
use tokio::process::Command;
use tokio_postgres::config::Host;
use tokio_postgres::Client;

/// Where and how many.
#[derive(Debug, Clone, PartialEq)]
pub struct BackupSettings {
    pub enabled: bool,
    pub dir: PathBuf,
    pub keep: usize,
}

impl Default for BackupSettings {
    fn default() -> Self {
        BackupSettings {
            enabled: true,
            dir: PathBuf::from("/var/lib/vamsa-migrate/backups"),
            keep: 5,
        }
    }
}

/// A finished, verified dump.
#[derive(Debug, Clone)]
pub struct Backup {
    pub path: PathBuf,
    /// The database it is a dump of (`current_database()`), for the restore steps.
    pub database: String,
    pub bytes: u64,
    pub ms: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("backup_dir {dir}: {source}")]
    Dir { dir: PathBuf, source: io::Error },
    /// A folder another local user may change: they could swap the dump's temporary name
    /// for a link and redirect root's writes or read the dump.
    #[error("backup_dir {dir} is {problem}, so another local user could redirect or read the dump; nothing was written: {fix}")]
    UnsafeDir {
        dir: PathBuf,
        problem: String,
        fix: String,
    },
    #[error("not enough free space in {dir} for a backup: {free} free, the database is {needed}")]
    DiskSpace {
        dir: PathBuf,
        free: String,
        needed: String,
    },
    #[error("{}", no_pg_dump(.program))]
    NoPgDump {
        /// The program run: a path ([`client_program`]), or `pg_dump` looked up on PATH.
        program: PathBuf,
    },
    #[error("pg_dump is older than the server ({detail}); install the postgresql-client of the server's version")]
    VersionMismatch { detail: String },
    #[error("pg_dump failed ({status}): {stderr}")]
    Dump { status: String, stderr: String },
    #[error("the dump does not read back (pg_restore --list failed: {reason}); it was removed")]
    Verify {
        /// pg_restore's stderr, or how it ended when it printed nothing (killed by a signal).
        reason: String,
    },
    #[error(transparent)]
    Query(Box<crate::db::DbError>),
    #[error("pg_restore failed ({status}); its transaction was rolled back: {stderr}")]
    Restore { status: String, stderr: String },
    #[error("cannot hand the password to pg_dump: {0}")]
    PassFile(io::Error),
    #[error("cannot run pg_dump: {0}")]
    Spawn(io::Error),
}

/// `vamsa-20261129T214001.123Z-before-0004_media_tags.dump`: sortable by time (to the
/// millisecond, so two runs in one second do not collide), and recognisable as ours
/// (retention never touches any other file). The database part is [`encode_name`]'s.
fn file_name(dbname: &str, when: SystemTime, label: &str) -> String {
    let stamp: String = humantime::format_rfc3339_millis(when)
        .to_string()
        .chars()
        .filter(|c| *c != '-' && *c != ':')
        .collect();
    format!("{}-{stamp}-{label}.dump", encode_name(dbname))
}

/// The database name as it appears in a dump's name: ASCII letters, digits, `_` and `.` as
/// they are, every other byte of its UTF-8 as `%XX` (upper-case hex). Injective, so databases
/// `c-d` and `c_d` (or `a b` and `a_b`) never share a dump name, and the name holds no `-`
/// (the separator before the time stamp).
pub(crate) fn encode_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'.' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The inverse of [`encode_name`]; `None` unless `text` is exactly what it makes of a name
/// (so one database has one spelling, and another file's name is not taken for ours).
fn decode_name(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    let name = String::from_utf8(out).ok()?;
    (encode_name(&name) == text).then_some(name)
}

/// One of our dumps, parsed back from its name.
#[derive(Debug, Clone)]
pub struct Listed {
    pub path: PathBuf,
    /// The database's name, decoded from the file name ([`encode_name`]).
    pub database: String,
    /// `20261129T214001.123Z`
    pub stamp: String,
    /// `before-0004_media_tags` or `manual`.
    pub label: String,
    pub bytes: u64,
}

fn parse_name(name: &str) -> Option<(String, String, String)> {
    let stem = name.strip_suffix(".dump")?;
    // <db>-<YYYYMMDD>T<HHMMSS>.<mmm>Z-<label>: find the stamp, whatever the db part holds.
    const STAMP: usize = 20;
    let bytes = stem.as_bytes();
    for i in 0..bytes.len() {
        if bytes[i] != b'-' || i + STAMP + 2 > bytes.len() || !stem.is_char_boundary(i + 1) {
            continue;
        }
        let Some(stamp) = stem.get(i + 1..i + 1 + STAMP) else {
            continue;
        };
        let b = stamp.as_bytes();
        let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
        let ok = digits(0..8)
            && b[8] == b'T'
            && digits(9..15)
            && b[15] == b'.'
            && digits(16..19)
            && b[19] == b'Z'
            && bytes.get(i + 1 + STAMP) == Some(&b'-');
        if ok {
            let label = &stem[i + STAMP + 2..];
            if label == "manual" || label.starts_with("before-") {
                let database = decode_name(&stem[..i])?;
                return Some((database, stamp.to_string(), label.to_string()));
            }
        }
    }
    None
}

/// `path` parsed as one of our dumps (by its name), when it is one.
pub(crate) fn ours(path: &Path) -> Option<Listed> {
    let name = path.file_name()?.to_str()?;
    let (database, stamp, label) = parse_name(name)?;
    let meta = fs::metadata(path).ok()?;
    meta.is_file().then(|| Listed {
        path: path.to_path_buf(),
        database,
        stamp,
        label,
        bytes: meta.len(),
    })
}

/// Whether a dump named with `listed` is of the database `name`.
pub(crate) fn is_of(listed: &Listed, name: &str) -> bool {
    listed.database == name
}

/// Our dumps in `dir`, oldest first.
pub fn list(dir: &Path) -> io::Result<Vec<Listed>> {
    let mut found = Vec::new();
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(found),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            continue;
        };
        let Some((database, stamp, label)) = parse_name(&name) else {
            continue;
        };
        let meta = entry.metadata()?;
        if !meta.is_file() {
            continue;
        }
        found.push(Listed {
            path: entry.path(),
            database,
            stamp,
            label,
            bytes: meta.len(),
        });
    }
    found.sort_by(|a, b| (&a.stamp, &a.path).cmp(&(&b.stamp, &b.path)));
    Ok(found)
}

/// Keeps the newest `keep` of our dumps of `database` (a shared folder keeps each database's
/// own), never `just_made` whatever its name says (a clock set back would sort it first);
/// returns what it removed.
pub fn prune(
    dir: &Path,
    database: &str,
    keep: usize,
    just_made: &Path,
) -> io::Result<Vec<PathBuf>> {
    let ours: Vec<Listed> = list(dir)?
        .into_iter()
        .filter(|b| b.database == database && b.path != just_made)
        .collect();
    let excess = ours.len().saturating_sub(keep.saturating_sub(1));
    let mut removed = Vec::new();
    for old in ours.into_iter().take(excess) {
        fs::remove_file(&old.path)?;
        removed.push(old.path);
    }
    Ok(removed)
}

/// Takes a verified dump of the database `client` is connected to, named after `label`
/// (`before-<tag>` or `manual`), then applies retention.
///
/// Errors: [`BackupError::UnsafeDir`] when a user other than this one or root owns
/// `backup_dir` or group or others may write to it; the other variants name the phase that
/// failed. No file is left behind on an error, nor when the future is dropped (the CLI on
/// SIGINT/SIGTERM): `pg_dump` is killed and the temporary file removed.
pub async fn take(
    settings: &BackupSettings,
    pg: &ConnParams,
    client: &Client,
    label: &str,
) -> Result<Backup, BackupError> {
    let started = Instant::now();
    let dir = BackupDir::open(&settings.dir)?;
    dir.remove_stale_partials();
    let db = crate::db::database(client)
        .await
        .map_err(|e| BackupError::Query(Box::new(e)))?;
    let free = dir.free_bytes().map_err(dir_error(&dir.path))?;
    // The custom format is compressed, so the database's size is a safe upper bound.
    if free < db.bytes {
        return Err(BackupError::DiskSpace {
            dir: dir.path.clone(),
            free: human_bytes(free),
            needed: human_bytes(db.bytes),
        });
    }
    let final_name = file_name(&db.name, SystemTime::now(), label);
    let mut partial = PartialFile::create(&dir, &final_name).map_err(dir_error(&dir.path))?;
    pg_dump(pg, &db, &partial.file).await?;
    verify(&partial.file, db.server_major).await?;
    let bytes = partial.persist().map_err(dir_error(&dir.path))?;
    let final_path = dir.path.join(&final_name);
    if let Err(e) = prune(&dir.path, &db.name, settings.keep.max(1), &final_path) {
        tracing::warn!("backup retention in {}: {e}", dir.path.display());
    }
    Ok(Backup {
        path: final_path,
        database: db.name,
        bytes,
        ms: started.elapsed().as_millis() as u64,
    })
}

/// A verified dump of the database `client` is connected to, in an unnamed temporary file
/// (`O_TMPFILE` in `$TMPDIR`, gone when the file is closed): for a rehearsal when the run
/// takes no backup of its own (a dry run, `--no-backup`). Never in `backup_dir`, so it never
/// counts against retention.
pub(crate) async fn take_temporary(
    pg: &ConnParams,
    client: &Client,
) -> Result<fs::File, BackupError> {
    let db = crate::db::database(client)
        .await
        .map_err(|e| BackupError::Query(Box::new(e)))?;
    let file = tempfile::tempfile().map_err(dir_error(&std::env::temp_dir()))?;
    pg_dump(pg, &db, &file).await?;
    verify(&file, db.server_major).await?;
    Ok(file)
}

/// Restores `dump` (read from its start on pg_restore's standard input) into the new, empty
/// database `dbname` with `pg_restore --exit-on-error --no-owner --no-privileges` (PostgreSQL 15;
/// the server's major version's, see [`client_program`]): every object ends up owned by our role, which created the database, so
/// no other role's membership is needed. pg_restore's stderr on failure, in
/// [`BackupError::Restore`].
pub(crate) async fn restore_into_new(
    pg: &ConnParams,
    server_major: u32,
    dbname: &str,
    dump: &fs::File,
) -> Result<(), BackupError> {
    let options = ["--exit-on-error", "--no-owner", "--no-privileges"];
    run_pg_restore(pg, server_major, dbname, dump, &options).await
}

fn dir_error(dir: &Path) -> impl Fn(io::Error) -> BackupError + '_ {
    move |source| BackupError::Dir {
        dir: dir.to_path_buf(),
        source,
    }
}

/// `backup_dir`, opened once and checked; every name in it is then resolved relative to this
/// descriptor (`openat`, `renameat`, `unlinkat`), so a path replaced after the check changes
/// nothing.
struct BackupDir {
    path: PathBuf,
    fd: OwnedFd,
}

impl BackupDir {
    /// Creates the folder (mode 0700) when missing, opens it and checks who may change it.
    fn open(path: &Path) -> Result<BackupDir, BackupError> {
        let io_error = dir_error(path);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(path)
            .map_err(&io_error)?;
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let fd = rustix::fs::open(path, flags, Mode::empty()).map_err(|e| io_error(e.into()))?;
        let stat = rustix::fs::fstat(&fd).map_err(|e| io_error(e.into()))?;
        let dir = BackupDir {
            path: path.to_path_buf(),
            fd,
        };
        dir.check(stat.st_uid, stat.st_mode)?;
        Ok(dir)
    }

    /// Refuses a folder owned by a user other than this one or root, or one that group or
    /// others may write to (they could replace the temporary name by a link); warns when
    /// others may read it.
    fn check(&self, owner: u32, mode: u32) -> Result<(), BackupError> {
        let me = rustix::process::geteuid().as_raw();
        let shown = self.path.display();
        let refuse = |problem: String, fix: String| BackupError::UnsafeDir {
            dir: self.path.clone(),
            problem,
            fix,
        };
        if owner != me && owner != 0 {
            return Err(refuse(
                format!("owned by uid {owner}, neither this user (uid {me}) nor root"),
                format!("run as uid {owner}, or `chown {me} {shown}` and `chmod 700 {shown}`"),
            ));
        }
        if mode & 0o022 != 0 {
            return Err(refuse(
                format!("writable by other users (mode {:o})", mode & 0o7777),
                format!("`chmod 700 {shown}`"),
            ));
        }
        if mode & 0o055 != 0 {
            tracing::warn!(
                "backup_dir {shown} is readable by other users; the dumps hold all the family data: chmod 700 it"
            );
        }
        Ok(())
    }

    /// Bytes available to an unprivileged user on the file system holding the folder: POSIX
    /// `fstatvfs`'s `f_bavail` blocks of `f_frsize` bytes.
    fn free_bytes(&self) -> io::Result<u64> {
        let stat = rustix::fs::fstatvfs(&self.fd)?;
        Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
    }

    /// Runs `f` holding the folder's `flock`, which orders creating (and locking) a temporary
    /// file against removing stale ones, between processes.
    fn locked<T>(&self, f: impl FnOnce() -> T) -> io::Result<T> {
        rustix::fs::flock(&self.fd, FlockOperation::LockExclusive)?;
        let out = f();
        rustix::fs::flock(&self.fd, FlockOperation::Unlock)?;
        Ok(out)
    }

    /// Removes temporary dumps no process writes any more: a writer holds its file's `flock`
    /// from creation (and an orphaned `pg_dump` after a SIGKILL shares it until it ends).
    fn remove_stale_partials(&self) {
        let Ok(entries) = fs::read_dir(&self.path) else {
            return;
        };
        let names: Vec<String> = entries
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| is_partial_name(n))
            .collect();
        let _ = self.locked(|| {
            for name in names {
                if self.remove_if_unlocked(&name).unwrap_or(false) {
                    tracing::info!(
                        "removed {name} in {}, left by an interrupted backup",
                        self.path.display()
                    );
                }
            }
        });
    }

    fn remove_if_unlocked(&self, name: &str) -> io::Result<bool> {
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
        let fd = rustix::fs::openat(&self.fd, name, flags, Mode::empty())?;
        let regular = rustix::fs::FileType::from_raw_mode(rustix::fs::fstat(&fd)?.st_mode)
            == rustix::fs::FileType::RegularFile;
        if !regular || rustix::fs::flock(&fd, FlockOperation::NonBlockingLockExclusive).is_err() {
            return Ok(false);
        }
        rustix::fs::unlinkat(&self.fd, name, AtFlags::empty())?;
        Ok(true)
    }
}

/// `.<dump name>.partial`, the temporary name of one of our dumps.
fn is_partial_name(name: &str) -> bool {
    name.strip_prefix('.')
        .and_then(|n| n.strip_suffix(".partial"))
        .is_some_and(|n| parse_name(n).is_some())
}

/// The dump while it is written: `.<final name>.partial` in the folder, created exclusively
/// without following links, locked (`flock`) while we live, removed on drop unless
/// [`persist`](Self::persist) renamed it.
struct PartialFile<'d> {
    dir: &'d BackupDir,
    name: String,
    final_name: String,
    file: fs::File,
    done: bool,
}

impl<'d> PartialFile<'d> {
    /// Fails early (and clearly) on a read-only or full backup_dir. Mode 0600: the dump holds
    /// all the family data.
    fn create(dir: &'d BackupDir, final_name: &str) -> io::Result<PartialFile<'d>> {
        let name = format!(".{final_name}.partial");
        let flags =
            OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let file = dir.locked(|| -> io::Result<fs::File> {
            let fd = rustix::fs::openat(&dir.fd, name.as_str(), flags, Mode::from_raw_mode(0o600))?;
            rustix::fs::flock(&fd, FlockOperation::LockExclusive)?;
            Ok(fs::File::from(fd))
        })??;
        Ok(PartialFile {
            dir,
            name,
            final_name: final_name.to_string(),
            file,
            done: false,
        })
    }

    /// Makes the complete dump durable under its final name; returns its size in bytes.
    fn persist(&mut self) -> io::Result<u64> {
        self.file.sync_all()?;
        let fd = &self.dir.fd;
        rustix::fs::renameat(fd, self.name.as_str(), fd, self.final_name.as_str())?;
        self.done = true;
        rustix::fs::fsync(fd)?;
        Ok(self.file.metadata()?.len())
    }
}

impl Drop for PartialFile<'_> {
    fn drop(&mut self) {
        if !self.done {
            let _ = rustix::fs::unlinkat(&self.dir.fd, self.name.as_str(), AtFlags::empty());
        }
    }
}

/// The password as a libpq password file (PostgreSQL 15 docs, "The Password File") that
/// exists only in memory: a `memfd_create(2)` file of mode 0600, named to `pg_dump` as
/// `/dev/fd/N`. It has no name in any file system, so nothing holds the password once the last
/// process holding it ends, whatever ends it (SIGKILL included). Chosen over `PGPASSWORD`,
/// which PostgreSQL's docs advise against and anything `pg_dump` started would inherit.
struct PassFile {
    fd: OwnedFd,
}

impl PassFile {
    /// An empty file without a password, so that `pg_dump` never reads `~/.pgpass` either.
    fn new(password: Option<&[u8]>) -> io::Result<PassFile> {
        // Without CLOEXEC, as pg_dump must inherit it; dropped right after pg_dump is spawned
        // (no await in between), so no other child inherits it.
        let fd = rustix::fs::memfd_create("vamsa-migrate-pgpass", rustix::fs::MemfdFlags::empty())?;
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(0o600))?;
        let mut file = fs::File::from(fd);
        if let Some(password) = password {
            let line = format!(
                "*:*:*:*:{}\n",
                escape_pgpass(&String::from_utf8_lossy(password))
            );
            file.write_all(line.as_bytes())?;
        }
        Ok(PassFile { fd: file.into() })
    }

    fn path(&self) -> PathBuf {
        PathBuf::from(format!("/dev/fd/{}", self.fd.as_fd().as_raw_fd()))
    }
}

/// Runs `pg_dump --format=custom` of `db` with `out` as its standard output: it never opens a
/// path of ours. The password reaches it through a [`PassFile`], never its command line or
/// environment.
async fn pg_dump(
    pg: &ConnParams,
    db: &crate::db::Database,
    out: &fs::File,
) -> Result<(), BackupError> {
    let stdout = out.try_clone().map_err(BackupError::Spawn)?;
    let program = client_program("pg_dump", db.server_major);
    let mut cmd = Command::new(&program);
    cmd.arg("--format=custom").arg("--no-password");
    // The run history is not the application's: a restore keeps it as it is (and records
    // itself in it), and a role that may not read it could not dump it.
    cmd.arg(format!("--exclude-schema={}", crate::db::history::SCHEMA));
    cmd.stdin(Stdio::null())
        .stdout(Stdio::from(stdout))
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let pass = PassFile::new(pg.driver.get_password()).map_err(BackupError::PassFile)?;
    libpq_env(&mut cmd, pg, &db.name, &pass.path());
    let child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(BackupError::NoPgDump { program })
        }
        Err(e) => return Err(BackupError::Spawn(e)),
    };
    drop(pass);
    let output = child.wait_with_output().await.map_err(BackupError::Spawn)?;
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr).trim().to_string();
    // pg_dump refuses a server of a newer major version (PostgreSQL docs, pg_dump); its
    // message may be translated, so compare the versions themselves.
    if pg_dump_major(&program)
        .await
        .is_some_and(|major| major < db.server_major)
    {
        return Err(BackupError::VersionMismatch { detail: stderr });
    }
    Err(BackupError::Dump {
        status: output.status.to_string(),
        stderr,
    })
}

/// The major version of `program` (a `pg_dump`), from `pg_dump --version`
/// (`pg_dump (PostgreSQL) 15.10 (Debian 15.10-0+deb12u1)`).
async fn pg_dump_major(program: &Path) -> Option<u32> {
    let mut cmd = Command::new(program);
    inherit_only_locale_and_path(&mut cmd);
    let output = cmd
        .arg("--version")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .await
        .ok()?;
    major_of_version_line(&String::from_utf8_lossy(&output.stdout))
}

fn no_pg_dump(program: &Path) -> String {
    let place = match program.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => {
            format!("at {} (PG_BIN_DIR)", program.display())
        }
        _ => "on PATH".into(),
    };
    format!("pg_dump was not found {place} (install postgresql-client matching the server version)")
}

/// The client program (`pg_dump`, `pg_restore`) for a server of major version `server_major`:
/// in `$PG_BIN_DIR` when set (as for `demo`); else `/usr/lib/postgresql/<major>/bin/<name>`
/// when installed (Debian's layout, several versions side by side; the choice Debian's
/// `pg_wrapper` makes, postgresql-common); else `name` on `PATH`.
pub(crate) fn client_program(name: &str, server_major: u32) -> PathBuf {
    if let Some(dir) = std::env::var_os("PG_BIN_DIR") {
        return PathBuf::from(dir).join(name);
    }
    client_program_under(Path::new("/usr/lib/postgresql"), name, server_major)
}

fn client_program_under(root: &Path, name: &str, server_major: u32) -> PathBuf {
    let versioned = root.join(server_major.to_string()).join("bin").join(name);
    if versioned.is_file() {
        versioned
    } else {
        PathBuf::from(name)
    }
}

fn major_of_version_line(line: &str) -> Option<u32> {
    let version = line.split_whitespace().nth(2)?;
    let digits = version.split(|c: char| !c.is_ascii_digit()).next()?;
    digits.parse().ok()
}

/// Checks that the dump reads back: `pg_restore --list` parses its table of contents, read
/// from its standard input (our descriptor, from the start).
async fn verify(dump: &fs::File, server_major: u32) -> Result<(), BackupError> {
    table_of_contents(dump, server_major).await.map(|_| ())
}

/// The dump's table of contents as `pg_restore --list` prints it (one line per entry:
/// `215; 1259 16386 TABLE public persons postgres`), read from `dump` from its start;
/// [`BackupError::Verify`] when it does not read back. `pg_restore` is the one for
/// `server_major` ([`client_program`]), as is the `pg_dump` that wrote it.
pub(crate) async fn table_of_contents(
    dump: &fs::File,
    server_major: u32,
) -> Result<String, BackupError> {
    let failed = |reason: String| BackupError::Verify { reason };
    let mut stdin = dump.try_clone().map_err(|e| failed(e.to_string()))?;
    stdin
        .seek(io::SeekFrom::Start(0))
        .map_err(|e| failed(e.to_string()))?;
    let mut cmd = Command::new(client_program("pg_restore", server_major));
    inherit_only_locale_and_path(&mut cmd);
    let verify = cmd
        .arg("--list")
        .stdin(Stdio::from(stdin))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output()
        .await;
    match verify {
        Ok(o) if o.status.success() => Ok(String::from_utf8_lossy(&o.stdout).into_owned()),
        Ok(o) => Err(failed(failure_reason("pg_restore", o.status, &o.stderr))),
        Err(e) => Err(failed(e.to_string())),
    }
}

/// Why `program` failed, as a person reads it: its stderr, after "killed by signal 11
/// (SIGSEGV)" when a signal ended it (a crash prints nothing), or its exit status when it
/// printed nothing.
fn failure_reason(program: &str, status: std::process::ExitStatus, stderr: &[u8]) -> String {
    use std::os::unix::process::ExitStatusExt;
    let stderr = String::from_utf8_lossy(stderr).trim().to_string();
    let ended = match (status.signal(), status.code()) {
        (Some(n), _) => {
            let name = nix::sys::signal::Signal::try_from(n).map_or("unknown", |s| s.as_str());
            format!("{program} was killed by signal {n} ({name})")
        }
        (None, _) if !stderr.is_empty() => return stderr,
        (None, Some(code)) => format!("{program} exited with status {code} and printed nothing"),
        (None, None) => format!("{program} ended ({status}) and printed nothing"),
    };
    if stderr.is_empty() {
        ended
    } else {
        format!("{ended}: {stderr}")
    }
}

/// The database a dump was taken of, from the header `pg_restore --list` prints
/// (`;     dbname: vamsa`, PostgreSQL 15's pg_backup_archiver.c `PrintTOCSummary`).
pub(crate) fn toc_database(toc: &str) -> Option<&str> {
    toc.lines()
        .take_while(|l| l.starts_with(';'))
        .find_map(|l| {
            l.trim_start_matches(';')
                .trim_start()
                .strip_prefix("dbname: ")
        })
}

/// Restores `dump` (read from its start on pg_restore's standard input) into `dbname` with
/// `pg_restore --clean --if-exists --single-transaction --exit-on-error` (PostgreSQL 15):
/// every object the dump holds is dropped and re-created in one transaction, so a failure
/// changes nothing. pg_restore's stderr on failure, in [`BackupError::Restore`]. `db` is the
/// target database (its name, and its server's major version for [`client_program`]).
pub(crate) async fn restore(
    pg: &ConnParams,
    db: &crate::db::Database,
    dump: &fs::File,
) -> Result<(), BackupError> {
    let options = [
        "--clean",
        "--if-exists",
        "--single-transaction",
        "--exit-on-error",
    ];
    run_pg_restore(pg, db.server_major, &db.name, dump, &options).await
}

/// Runs the server's major version's `pg_restore OPTIONS --dbname DBNAME` with `dump` (from its
/// start) on its standard input and the password in a [`PassFile`]; its stderr on failure, in
/// [`BackupError::Restore`].
async fn run_pg_restore(
    pg: &ConnParams,
    server_major: u32,
    dbname: &str,
    dump: &fs::File,
    options: &[&str],
) -> Result<(), BackupError> {
    let mut stdin = dump.try_clone().map_err(BackupError::Spawn)?;
    stdin
        .seek(io::SeekFrom::Start(0))
        .map_err(BackupError::Spawn)?;
    let mut cmd = Command::new(client_program("pg_restore", server_major));
    cmd.args(options)
        .args(["--no-password", "--dbname", dbname])
        .stdin(Stdio::from(stdin))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let pass = PassFile::new(pg.driver.get_password()).map_err(BackupError::PassFile)?;
    libpq_env(&mut cmd, pg, dbname, &pass.path());
    let child = cmd.spawn().map_err(BackupError::Spawn)?;
    drop(pass);
    let output = child.wait_with_output().await.map_err(BackupError::Spawn)?;
    if output.status.success() {
        return Ok(());
    }
    Err(BackupError::Restore {
        status: output.status.to_string(),
        stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
    })
}

/// What `pg_dump` and `pg_restore` inherit of our environment: the search path, the home
/// folder (libpq's `~/.postgresql/` certificates) and the locale, nothing else. libpq reads
/// every `PG*` variable (`PGPASSWORD`, `PGSERVICE`, `PGHOST`...), and our `DATABASE_URL` or
/// `VAMSA_MIGRATE_DATABASE_URL` may carry the password.
fn inherit_only_locale_and_path(cmd: &mut Command) {
    const INHERITED: &[&str] = &[
        "PATH",
        "HOME",
        "LANG",
        "LANGUAGE",
        "LC_ALL",
        "LC_CTYPE",
        "LC_MESSAGES",
        "TZ",
    ];
    cmd.env_clear();
    for name in INHERITED {
        if let Some(value) = std::env::var_os(name) {
            cmd.env(name, value);
        }
    }
}

/// The connection for pg_dump, as libpq environment variables (never on its command line),
/// in an environment that holds nothing else of ours.
fn libpq_env(cmd: &mut Command, pg: &ConnParams, dbname: &str, pgpass: &Path) {
    inherit_only_locale_and_path(cmd);
    for (k, v) in libpq_vars(pg, dbname, pgpass) {
        cmd.env(k, v);
    }
}

/// libpq's environment variables (PostgreSQL docs, "Environment Variables") for `pg`.
fn libpq_vars(pg: &ConnParams, dbname: &str, pgpass: &Path) -> Vec<(&'static str, OsString)> {
    let join = |items: Vec<String>| items.join(",");
    let driver = &pg.driver;
    let mut vars: Vec<(&str, OsString)> = vec![
        ("PGDATABASE", dbname.into()),
        ("PGPASSFILE", pgpass.into()),
        ("PGAPPNAME", "vamsa-migrate backup".into()),
    ];
    let hosts: Vec<String> = driver
        .get_hosts()
        .iter()
        .map(|h| match h {
            Host::Tcp(name) => name.clone(),
            Host::Unix(path) => path.display().to_string(),
        })
        .collect();
    if !hosts.is_empty() {
        vars.push(("PGHOST", join(hosts).into()));
    }
    // Always set: an inherited PGPORT must never point pg_dump at another cluster than the
    // one we migrate (a key=value database_url may name no port; we then use 5432).
    let ports: Vec<String> = driver.get_ports().iter().map(u16::to_string).collect();
    let ports = if ports.is_empty() {
        "5432".to_string()
    } else {
        join(ports)
    };
    vars.push(("PGPORT", ports.into()));
    let hostaddrs: Vec<String> = driver
        .get_hostaddrs()
        .iter()
        .map(|a| a.to_string())
        .collect();
    if !hostaddrs.is_empty() {
        vars.push(("PGHOSTADDR", join(hostaddrs).into()));
    }
    if let Some(user) = driver.get_user() {
        vars.push(("PGUSER", user.into()));
    }
    vars.extend(tls_vars(&pg.tls));
    if driver.get_target_session_attrs() == tokio_postgres::config::TargetSessionAttrs::ReadWrite {
        vars.push(("PGTARGETSESSIONATTRS", "read-write".into()));
    }
    if let Some(t) = driver.get_connect_timeout() {
        vars.push(("PGCONNECT_TIMEOUT", t.as_secs().max(2).to_string().into()));
    }
    vars
}

/// The TLS settings for pg_dump/pg_restore: the same mode and the same files, as paths (its
/// HOME is not ours). `sslrootcert=system` is given as the system bundle's path with
/// `verify-full`, which means the same to libpq 16 and is also understood by libpq 15.
fn tls_vars(tls: &crate::libpq::TlsParams) -> Vec<(&'static str, OsString)> {
    use crate::libpq::RootCert;
    let mut vars: Vec<(&str, OsString)> = vec![("PGSSLMODE", tls.mode.as_str().into())];
    let root = match &tls.root_cert {
        Some(RootCert::File(path)) => Some(path.clone()),
        // No bundle: libpq 16 understands `system` (and then fails as we do).
        Some(RootCert::System) => {
            Some(crate::db::system_bundle().unwrap_or_else(|| PathBuf::from("system")))
        }
        None => None,
    };
    for (name, path) in [
        ("PGSSLROOTCERT", root),
        ("PGSSLCERT", tls.cert.clone()),
        ("PGSSLKEY", tls.key.clone()),
    ] {
        if let Some(path) = path {
            vars.push((name, path.into_os_string()));
        }
    }
    vars
}

fn escape_pgpass(s: &str) -> String {
    s.replace('\\', "\\\\").replace(':', "\\:")
}

pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_program_killed_by_a_signal_is_told_by_the_signals_number_and_name() {
        use std::os::unix::process::ExitStatusExt;
        use std::process::ExitStatus;
        // Raw wait statuses: a signal in the low 7 bits, an exit code in the next byte.
        let segv = ExitStatus::from_raw(11);
        assert_eq!(
            failure_reason("pg_restore", segv, b""),
            "pg_restore was killed by signal 11 (SIGSEGV)"
        );
        assert_eq!(
            failure_reason("pg_restore", segv, b"pg_restore: partial\n"),
            "pg_restore was killed by signal 11 (SIGSEGV): pg_restore: partial"
        );
        let exit1 = ExitStatus::from_raw(1 << 8);
        assert_eq!(
            failure_reason("pg_restore", exit1, b"pg_restore: error: x\n"),
            "pg_restore: error: x"
        );
        assert_eq!(
            failure_reason("pg_restore", exit1, b""),
            "pg_restore exited with status 1 and printed nothing"
        );
    }

    #[test]
    fn names_round_trip_and_foreign_files_are_not_ours() {
        let when = SystemTime::UNIX_EPOCH + Duration::from_secs(1_764_452_401);
        let name = file_name("vamsa-prod", when, "before-0004_media_tags");
        // '-' separates the parts, so the name's own '-' is percent-encoded (and read back).
        assert_eq!(
            name,
            "vamsa%2Dprod-20251129T214001.000Z-before-0004_media_tags.dump"
        );
        assert_eq!(
            parse_name(&name),
            Some((
                "vamsa-prod".into(),
                "20251129T214001.000Z".into(),
                "before-0004_media_tags".into()
            ))
        );
        assert_eq!(parse_name("nightly.dump"), None);
        assert_eq!(parse_name("é-20251129T214001.5Z-manual.dump"), None);
        assert_eq!(parse_name("vamsa-20251129T214001.000Z-other.dump"), None);
        assert_eq!(
            parse_name("vamsa-20251129T214001.250Z-manual.dump")
                .unwrap()
                .2,
            "manual"
        );
    }

    #[test]
    fn the_client_program_of_the_servers_major_version_comes_before_path() {
        let root = tempfile::tempdir().expect("tempdir");
        let bin = root.path().join("18").join("bin");
        fs::create_dir_all(&bin).expect("mkdir");
        fs::write(bin.join("pg_dump"), "").expect("write");
        assert_eq!(
            client_program_under(root.path(), "pg_dump", 18),
            bin.join("pg_dump")
        );
        // Another major version, or a program not installed there: the one on PATH.
        assert_eq!(
            client_program_under(root.path(), "pg_dump", 17),
            PathBuf::from("pg_dump")
        );
        assert_eq!(
            client_program_under(root.path(), "pg_restore", 18),
            PathBuf::from("pg_restore")
        );
    }

    #[test]
    fn pg_dump_major_version_from_its_version_line() {
        for (line, major) in [
            (
                "pg_dump (PostgreSQL) 15.10 (Debian 15.10-0+deb12u1)\n",
                Some(15),
            ),
            ("pg_dump (PostgreSQL) 17devel", Some(17)),
            ("pg_dump (PostgreSQL) 9.6.24", Some(9)),
            ("pg_dump", None),
        ] {
            assert_eq!(major_of_version_line(line), major, "{line}");
        }
    }

    #[test]
    fn pgpass_escaping() {
        assert_eq!(escape_pgpass("a:b\\c"), "a\\:b\\\\c");
    }

    #[test]
    fn pg_dump_gets_the_tls_settings_as_paths_in_its_environment() {
        use crate::libpq::{RootCert, SslMode, TlsParams};
        let tls = TlsParams {
            mode: SslMode::VerifyCa,
            root_cert: Some(RootCert::File("/etc/vamsa/ca.crt".into())),
            cert: Some("/etc/vamsa/c.crt".into()),
            key: Some("/etc/vamsa/c.key".into()),
        };
        let vars: Vec<(&str, String)> = tls_vars(&tls)
            .into_iter()
            .map(|(k, v)| (k, v.to_string_lossy().into_owned()))
            .collect();
        assert_eq!(
            vars,
            [
                ("PGSSLMODE", "verify-ca".into()),
                ("PGSSLROOTCERT", "/etc/vamsa/ca.crt".into()),
                ("PGSSLCERT", "/etc/vamsa/c.crt".into()),
                ("PGSSLKEY", "/etc/vamsa/c.key".into()),
            ]
        );
        // `system` is given as the bundle's path (libpq 15 does not know `system`).
        let system = TlsParams {
            mode: SslMode::VerifyFull,
            root_cert: Some(RootCert::System),
            cert: None,
            key: None,
        };
        let vars = tls_vars(&system);
        assert_eq!(vars[0], ("PGSSLMODE", "verify-full".into()));
        assert_eq!(
            vars[1].1,
            crate::db::system_bundle().map_or_else(|| "system".into(), |p| p.into_os_string())
        );
    }
}
