//! The safety net: a verified `pg_dump --format=custom` before every run that applies
//! something, kept in `backup_dir` with simple retention. A failed or partial dump leaves no
//! file behind, and without a good dump nothing is migrated.

use std::ffi::OsString;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Instant, SystemTime};

use tokio::process::Command;
use tokio_postgres::config::Host;
use tokio_postgres::{Client, Config};

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
    #[error("not enough free space in {dir} for a backup: {free} free, the database is {needed}")]
    DiskSpace {
        dir: PathBuf,
        free: String,
        needed: String,
    },
    #[error(
        "pg_dump was not found on PATH (install postgresql-client matching the server version)"
    )]
    NoPgDump,
    #[error("pg_dump is older than the server ({detail}); install the postgresql-client of the server's version")]
    VersionMismatch { detail: String },
    #[error("pg_dump failed ({status}): {stderr}")]
    Dump { status: String, stderr: String },
    #[error("the dump does not read back (pg_restore --list failed: {stderr}); it was removed")]
    Verify { stderr: String },
    #[error(transparent)]
    Query(Box<crate::db::DbError>),
    #[error("cannot write the password file for pg_dump: {0}")]
    PassFile(io::Error),
    #[error("cannot run pg_dump: {0}")]
    Spawn(io::Error),
}

/// `vamsa-20261129T214001.123Z-before-0004_media_tags.dump`: sortable by time (to the
/// millisecond, so two runs in one second do not collide), and recognisable as ours
/// (retention never touches any other file).
fn file_name(dbname: &str, when: SystemTime, label: &str) -> String {
    let stamp: String = humantime::format_rfc3339_millis(when)
        .to_string()
        .chars()
        .filter(|c| *c != '-' && *c != ':')
        .collect();
    format!("{}-{stamp}-{label}.dump", sanitize(dbname))
}

fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// One of our dumps, parsed back from its name.
#[derive(Debug, Clone)]
pub struct Listed {
    pub path: PathBuf,
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
                return Some((stem[..i].to_string(), stamp.to_string(), label.to_string()));
            }
        }
    }
    None
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
        .filter(|b| b.database == sanitize(database) && b.path != just_made)
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
pub async fn take(
    settings: &BackupSettings,
    pg: &Config,
    client: &Client,
    label: &str,
) -> Result<Backup, BackupError> {
    let started = Instant::now();
    let dir = &settings.dir;
    prepare_dir(dir)?;
    let db = crate::db::database(client)
        .await
        .map_err(|e| BackupError::Query(Box::new(e)))?;
    let free = free_bytes(dir).map_err(dir_error(dir))?;
    // The custom format is compressed, so the database's size is a safe upper bound.
    if free < db.bytes {
        return Err(BackupError::DiskSpace {
            dir: dir.clone(),
            free: human_bytes(free),
            needed: human_bytes(db.bytes),
        });
    }
    let final_path = dir.join(file_name(&db.name, SystemTime::now(), label));
    let mut partial = PartialFile::create(&final_path).map_err(dir_error(dir))?;
    pg_dump(pg, &db, &partial.path).await?;
    verify(&partial.path).await?;
    partial.persist(&final_path).map_err(dir_error(dir))?;
    let bytes = fs::metadata(&final_path).map(|m| m.len()).unwrap_or(0);
    if let Err(e) = prune(dir, &db.name, settings.keep.max(1), &final_path) {
        tracing::warn!("backup retention in {}: {e}", dir.display());
    }
    Ok(Backup {
        path: final_path,
        database: db.name,
        bytes,
        ms: started.elapsed().as_millis() as u64,
    })
}

fn dir_error(dir: &Path) -> impl Fn(io::Error) -> BackupError + '_ {
    move |source| BackupError::Dir {
        dir: dir.to_path_buf(),
        source,
    }
}

/// Creates `dir` (mode 0700) when missing; warns when others may read it.
fn prepare_dir(dir: &Path) -> Result<(), BackupError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(dir_error(dir))?;
    if let Ok(meta) = fs::metadata(dir) {
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(
                "backup_dir {} is readable by other users; the dumps hold all the family data: chmod 700 it",
                dir.display()
            );
        }
    }
    Ok(())
}

/// The dump while it is written: `.<final name>.partial` beside the final file, removed on
/// drop unless [`persist`](Self::persist) renamed it.
struct PartialFile {
    path: PathBuf,
    done: bool,
}

impl PartialFile {
    /// Fails early (and clearly) on a read-only or full backup_dir. Mode 0600: the dump holds
    /// all the family data, and pg_dump keeps the mode of the file it is given.
    fn create(final_path: &Path) -> io::Result<PartialFile> {
        use std::os::unix::fs::OpenOptionsExt;
        let name = final_path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("backup");
        let path = final_path.with_file_name(format!(".{name}.partial"));
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?;
        Ok(PartialFile { path, done: false })
    }

    /// Makes the complete dump durable under its final name.
    fn persist(&mut self, final_path: &Path) -> io::Result<()> {
        fs::File::open(&self.path)?.sync_all()?;
        fs::rename(&self.path, final_path)?;
        self.done = true;
        Ok(())
    }
}

impl Drop for PartialFile {
    fn drop(&mut self) {
        if !self.done {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// Runs `pg_dump --format=custom` of `db` into `file`. The password reaches it through a
/// 0600 `PGPASSFILE`, never its command line or environment.
async fn pg_dump(pg: &Config, db: &crate::db::Database, file: &Path) -> Result<(), BackupError> {
    let pgpass = tempfile::Builder::new()
        .prefix("vamsa-migrate-pgpass")
        .tempfile()
        .map_err(BackupError::PassFile)?;
    if let Some(password) = pg.get_password() {
        fs::set_permissions(pgpass.path(), fs::Permissions::from_mode(0o600))
            .map_err(BackupError::PassFile)?;
        let line = format!(
            "*:*:*:*:{}\n",
            escape_pgpass(&String::from_utf8_lossy(password))
        );
        pgpass
            .as_file()
            .write_all(line.as_bytes())
            .map_err(BackupError::PassFile)?;
    }
    let mut cmd = Command::new("pg_dump");
    cmd.arg("--format=custom")
        .arg("--file")
        .arg(file)
        .arg("--no-password")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    libpq_env(&mut cmd, pg, &db.name, pgpass.path());
    let output = match cmd.output().await {
        Ok(o) => o,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(BackupError::NoPgDump),
        Err(e) => return Err(BackupError::Spawn(e)),
    };
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr).trim().to_string();
    // pg_dump refuses a server of a newer major version (PostgreSQL docs, pg_dump); its
    // message may be translated, so compare the versions themselves.
    if pg_dump_major()
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

/// The major version of the `pg_dump` on PATH, from `pg_dump --version`
/// (`pg_dump (PostgreSQL) 15.10 (Debian 15.10-0+deb12u1)`).
async fn pg_dump_major() -> Option<u32> {
    let output = Command::new("pg_dump")
        .arg("--version")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .await
        .ok()?;
    major_of_version_line(&String::from_utf8_lossy(&output.stdout))
}

fn major_of_version_line(line: &str) -> Option<u32> {
    let version = line.split_whitespace().nth(2)?;
    let digits = version.split(|c: char| !c.is_ascii_digit()).next()?;
    digits.parse().ok()
}

/// Checks that the dump reads back: `pg_restore --list` parses its table of contents.
async fn verify(file: &Path) -> Result<(), BackupError> {
    let verify = Command::new("pg_restore")
        .arg("--list")
        .arg(file)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .await;
    match verify {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(BackupError::Verify {
            stderr: String::from_utf8_lossy(&o.stderr).trim().to_string(),
        }),
        Err(e) => Err(BackupError::Verify {
            stderr: e.to_string(),
        }),
    }
}

/// The connection for pg_dump, as libpq environment variables (never on its command line);
/// the caller's own libpq variables that could send it elsewhere are removed.
fn libpq_env(cmd: &mut Command, pg: &Config, dbname: &str, pgpass: &Path) {
    // Settings of the caller's shell must not redirect the dump elsewhere.
    for name in [
        "PGPASSWORD",
        "PGSERVICE",
        "PGSERVICEFILE",
        "PGOPTIONS",
        "PGHOSTADDR",
        "PGHOST",
        "PGREQUIRESSL",
        "PGSSLCERT",
        "PGSSLKEY",
    ] {
        cmd.env_remove(name);
    }
    for (k, v) in libpq_vars(pg, dbname, pgpass) {
        cmd.env(k, v);
    }
}

/// libpq's environment variables (PostgreSQL docs, "Environment Variables") for `pg`.
fn libpq_vars(pg: &Config, dbname: &str, pgpass: &Path) -> Vec<(&'static str, OsString)> {
    let join = |items: Vec<String>| items.join(",");
    let mut vars: Vec<(&str, OsString)> = vec![
        ("PGDATABASE", dbname.into()),
        ("PGPASSFILE", pgpass.into()),
        ("PGAPPNAME", "vamsa-migrate backup".into()),
    ];
    let hosts: Vec<String> = pg
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
    let ports: Vec<String> = pg.get_ports().iter().map(u16::to_string).collect();
    let ports = if ports.is_empty() {
        "5432".to_string()
    } else {
        join(ports)
    };
    vars.push(("PGPORT", ports.into()));
    let hostaddrs: Vec<String> = pg.get_hostaddrs().iter().map(|a| a.to_string()).collect();
    if !hostaddrs.is_empty() {
        vars.push(("PGHOSTADDR", join(hostaddrs).into()));
    }
    if let Some(user) = pg.get_user() {
        vars.push(("PGUSER", user.into()));
    }
    let sslmode = match pg.get_ssl_mode() {
        tokio_postgres::config::SslMode::Disable => "disable",
        tokio_postgres::config::SslMode::Require => "require",
        _ => "prefer",
    };
    vars.push(("PGSSLMODE", sslmode.into()));
    if pg.get_target_session_attrs() == tokio_postgres::config::TargetSessionAttrs::ReadWrite {
        vars.push(("PGTARGETSESSIONATTRS", "read-write".into()));
    }
    if let Some(t) = pg.get_connect_timeout() {
        vars.push(("PGCONNECT_TIMEOUT", t.as_secs().max(2).to_string().into()));
    }
    vars
}

fn escape_pgpass(s: &str) -> String {
    s.replace('\\', "\\\\").replace(':', "\\:")
}

/// Bytes available to an unprivileged user on the file system holding `dir`: POSIX
/// `statvfs`'s `f_bavail` blocks of `f_frsize` bytes.
fn free_bytes(dir: &Path) -> io::Result<u64> {
    let stat = rustix::fs::statvfs(dir)?;
    Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
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
    fn names_round_trip_and_foreign_files_are_not_ours() {
        let when = SystemTime::UNIX_EPOCH + Duration::from_secs(1_764_452_401);
        let name = file_name("vamsa-prod", when, "before-0004_media_tags");
        assert_eq!(
            name,
            "vamsa_prod-20251129T214001.000Z-before-0004_media_tags.dump"
        );
        assert_eq!(
            parse_name(&name),
            Some((
                "vamsa_prod".into(),
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
}
