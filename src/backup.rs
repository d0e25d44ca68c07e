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
    #[error("measuring the database: {0}")]
    Query(String),
}

impl BackupError {
    pub fn hint(&self) -> &'static str {
        "Nothing was migrated. Fix the cause above, or run without a backup (--no-backup, or backup_enabled = false) if you have one of your own."
    }
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

/// Removes the temporary file unless the dump completed.
struct PartialFile(Option<PathBuf>);

impl Drop for PartialFile {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let _ = fs::remove_file(path);
        }
    }
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
    let dir_err = |source| BackupError::Dir {
        dir: dir.clone(),
        source,
    };
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(dir_err)?;
    if let Ok(meta) = fs::metadata(dir) {
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(
                "backup_dir {} is readable by other users; the dumps hold all the family data: chmod 700 it",
                dir.display()
            );
        }
    }

    let row = client
        .query_one(
            "SELECT current_database(), pg_database_size(current_database())",
            &[],
        )
        .await
        .map_err(|e| BackupError::Query(e.to_string()))?;
    let (dbname, size): (String, i64) = (row.get(0), row.get(1));
    let free = free_bytes(dir).map_err(dir_err)?;
    // The custom format is compressed, so the database's size is a safe upper bound.
    if free < size as u64 {
        return Err(BackupError::DiskSpace {
            dir: dir.clone(),
            free: human_bytes(free),
            needed: human_bytes(size as u64),
        });
    }

    let final_path = dir.join(file_name(&dbname, SystemTime::now(), label));
    let tmp_path = dir.join(format!(
        ".{}.partial",
        final_path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("backup")
    ));
    let mut partial = PartialFile(Some(tmp_path.clone()));
    // Fails early (and clearly) on a read-only or full backup_dir. Mode 0600: the dump holds
    // all the family data, and pg_dump keeps the mode of the file it is given.
    {
        use std::os::unix::fs::OpenOptionsExt;
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp_path)
            .map_err(dir_err)?;
    }

    let pgpass = tempfile::Builder::new()
        .prefix("vamsa-migrate-pgpass")
        .tempfile()
        .map_err(dir_err)?;
    let mut cmd = Command::new("pg_dump");
    cmd.arg("--format=custom")
        .arg("--file")
        .arg(&tmp_path)
        .arg("--no-password")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    libpq_env(&mut cmd, pg, &dbname, pgpass.path())?;
    if let Some(password) = pg.get_password() {
        // The password reaches pg_dump through a 0600 file, never its command line.
        let mut file = pgpass.as_file();
        fs::set_permissions(pgpass.path(), fs::Permissions::from_mode(0o600)).map_err(dir_err)?;
        let line = format!(
            "*:*:*:*:{}\n",
            escape_pgpass(&String::from_utf8_lossy(password))
        );
        file.write_all(line.as_bytes()).map_err(dir_err)?;
    }
    let output = match cmd.output().await {
        Ok(o) => o,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(BackupError::NoPgDump),
        Err(e) => return Err(dir_err(e)),
    };
    drop(pgpass);
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr).trim().to_string();
        if stderr.contains("server version mismatch") {
            return Err(BackupError::VersionMismatch { detail: stderr });
        }
        return Err(BackupError::Dump {
            status: output.status.to_string(),
            stderr,
        });
    }

    let verify = Command::new("pg_restore")
        .arg("--list")
        .arg(&tmp_path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .await;
    match verify {
        Ok(o) if o.status.success() => {}
        Ok(o) => {
            return Err(BackupError::Verify {
                stderr: String::from_utf8_lossy(&o.stderr).trim().to_string(),
            })
        }
        Err(e) => {
            return Err(BackupError::Verify {
                stderr: e.to_string(),
            })
        }
    }
    fs::File::open(&tmp_path)
        .and_then(|f| f.sync_all())
        .map_err(dir_err)?;
    fs::rename(&tmp_path, &final_path).map_err(dir_err)?;
    partial.0 = None;
    let bytes = fs::metadata(&final_path).map(|m| m.len()).unwrap_or(0);
    if let Err(e) = prune(dir, &dbname, settings.keep.max(1), &final_path) {
        tracing::warn!("backup retention in {}: {e}", dir.display());
    }
    Ok(Backup {
        path: final_path,
        database: dbname,
        bytes,
        ms: started.elapsed().as_millis() as u64,
    })
}

/// The connection for pg_dump, as libpq environment variables (never on its command line).
fn libpq_env(
    cmd: &mut Command,
    pg: &Config,
    dbname: &str,
    pgpass: &Path,
) -> Result<(), BackupError> {
    let hosts: Vec<String> = pg
        .get_hosts()
        .iter()
        .map(|h| match h {
            Host::Tcp(name) => name.clone(),
            Host::Unix(path) => path.display().to_string(),
        })
        .collect();
    let ports: Vec<String> = pg.get_ports().iter().map(u16::to_string).collect();
    let mut vars: Vec<(&str, OsString)> = vec![
        ("PGDATABASE", dbname.into()),
        ("PGPASSFILE", pgpass.into()),
        ("PGAPPNAME", "vamsa-migrate backup".into()),
    ];
    if !hosts.is_empty() {
        vars.push(("PGHOST", hosts.join(",").into()));
    }
    // Always set: an inherited PGPORT must never point pg_dump at another cluster than the
    // one we migrate (a key=value database_url may name no port; we then use 5432).
    let ports = if ports.is_empty() {
        "5432".to_string()
    } else {
        ports.join(",")
    };
    vars.push(("PGPORT", ports.into()));
    let hostaddrs: Vec<String> = pg.get_hostaddrs().iter().map(|a| a.to_string()).collect();
    if !hostaddrs.is_empty() {
        vars.push(("PGHOSTADDR", hostaddrs.join(",").into()));
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
    for (k, v) in vars {
        cmd.env(k, v);
    }
    Ok(())
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
    fn pgpass_escaping() {
        assert_eq!(escape_pgpass("a:b\\c"), "a\\:b\\\\c");
    }
}
