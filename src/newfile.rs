//! `vamsa-migrate new NAME`: the next migration, in the layout the folder uses: a numbered
//! file and its journal entry (drizzle-kit 0.x), or a `<YYYYMMDDHHMMSS>_<name>/migration.sql`
//! folder (Drizzle 1.0).

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::source::{v1, SourceError, JOURNAL};

#[derive(Debug, thiserror::Error)]
pub enum NewError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: invalid journal: {message}")]
    Journal { path: PathBuf, message: String },
    #[error("{name:?} is not a usable migration name: use letters, digits and underscores")]
    BadName { name: String },
    #[error(transparent)]
    Source(#[from] SourceError),
    /// The newest folder is dated after 9999-12-31T23:59:58Z (Drizzle 1.0's `Date.UTC` carries
    /// out-of-range fields over, so `99999999999999_x` is year 10007): no 14-digit name sorts after it.
    #[error("{path}: folder {newest:?} is dated after the year 9999, so no new folder name (YYYYMMDDHHMMSS_...) can sort after it: rename that folder to its real date")]
    NoLaterName { path: PathBuf, newest: String },
}

/// Creates the next migration in the layout `dir` uses and returns the path of its SQL file.
///
/// - Folder layout (Drizzle 1.0, `dir` holds `<YYYYMMDDHHMMSS>_<name>/migration.sql` folders and
///   no journal): `<UTC now>_<name>/migration.sql`, never older than the newest folder (one
///   second after it when the clock is behind), so it sorts last in Drizzle 1.0's name order.
/// - Otherwise (a journal, or an empty or missing folder): `<NNNN>_<name>.sql` and its journal
///   entry, as drizzle-kit 0.31 `generate --custom` writes them.
///
/// Errors: a bad name, a folder holding both layouts ([`SourceError::MixedLayout`]) or a folder
/// name Drizzle 1.0 cannot date, a newest folder dated after 9999 ([`NewError::NoLaterName`]), I/O.
pub fn create(dir: &Path, name: &str) -> Result<PathBuf, NewError> {
    let slug = slug(name)?;
    let folders = v1::folder_names(dir)?;
    let journal_path = dir.join(JOURNAL);
    if folders.is_empty() {
        return create_journal_entry(dir, &slug);
    }
    if journal_path.exists() {
        return Err(SourceError::MixedLayout {
            path: dir.to_path_buf(),
            left_behind: v1::left_behind(dir, &journal_path)?,
            folders,
        }
        .into());
    }
    create_folder(dir, &slug, &folders)
}

/// `<dir>/<YYYYMMDDHHMMSS>_<slug>/migration.sql` with the placeholder. The directory is made
/// with `mkdir` (fails if it exists) and the file with `O_EXCL`, so nothing is overwritten.
fn create_folder(dir: &Path, slug: &str, folders: &[String]) -> Result<PathBuf, NewError> {
    let newest = folders
        .iter()
        .filter_map(|name| v1::created_at(name))
        .max()
        .map_or(i64::MIN, |millis| millis.div_euclid(1_000));
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let second = now.max(newest.saturating_add(1));
    let stamp = crate::convert::timestamp(second);
    if stamp.len() != 14 {
        let newest = folders.iter().max_by_key(|name| v1::created_at(name));
        return Err(NewError::NoLaterName {
            path: dir.to_path_buf(),
            newest: newest.cloned().unwrap_or_default(),
        });
    }
    let folder = dir.join(format!("{stamp}_{slug}"));
    fs::create_dir(&folder).map_err(io_error(&folder))?;
    let sql_path = folder.join(v1::MIGRATION_FILE);
    write_new(&sql_path)?;
    Ok(sql_path)
}

fn write_new(sql_path: &Path) -> Result<(), NewError> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(sql_path)
        .map_err(io_error(sql_path))?;
    file.write_all(placeholder().as_bytes())
        .map_err(io_error(sql_path))
}

/// Creates `<dir>/<NNNN>_<name>.sql` and appends its entry to the journal, which is rewritten
/// atomically (temporary file, fsync, rename): a crash leaves the old or the new journal.
fn create_journal_entry(dir: &Path, slug: &str) -> Result<PathBuf, NewError> {
    let meta = dir.join("meta");
    let journal_path = meta.join("_journal.json");
    let mut journal = read_journal(&journal_path)?;
    let tag = append_entry(&mut journal, &journal_path, slug)?;
    let sql_path = dir.join(format!("{tag}.sql"));
    write_new(&sql_path)?;
    write_journal(&journal_path, &journal)?;
    Ok(sql_path)
}

/// The new file's text: our placeholder marker first (a file holding it is refused, so it is
/// never applied by accident: a file with no statement is a valid no-op migration), then how
/// to write statements.
fn placeholder() -> String {
    format!(
        "{}\n\
         -- Write the migration's SQL below. Separate statements with a line holding only\n\
         -- the marker --> statement-breakpoint\n",
        crate::source::PLACEHOLDER_MARKER
    )
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> NewError {
    let path = path.to_path_buf();
    move |source| NewError::Io { path, source }
}

/// `name` in lowercase ASCII letters and digits, every other character as `_`, without a
/// leading or trailing `_`.
fn slug(name: &str) -> Result<String, NewError> {
    let slug: String = name
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    let slug = slug.trim_matches('_').to_string();
    if slug.is_empty() {
        return Err(NewError::BadName { name: name.into() });
    }
    Ok(slug)
}

/// The journal as JSON (every key kept, in its order), or a new empty one (creating `meta/`).
fn read_journal(journal_path: &Path) -> Result<Value, NewError> {
    match fs::read(journal_path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| NewError::Journal {
            path: journal_path.to_path_buf(),
            message: e.to_string(),
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let meta = journal_path.parent().unwrap_or(Path::new("."));
            fs::create_dir_all(meta).map_err(io_error(meta))?;
            Ok(json!({"version": "7", "dialect": "postgresql", "entries": []}))
        }
        Err(e) => Err(io_error(journal_path)(e)),
    }
}

/// Appends the next entry (Drizzle's journal format, version 7) and returns its tag.
fn append_entry(journal: &mut Value, journal_path: &Path, slug: &str) -> Result<String, NewError> {
    let entries = journal
        .get_mut("entries")
        .and_then(Value::as_array_mut)
        .ok_or_else(|| NewError::Journal {
            path: journal_path.to_path_buf(),
            message: "no \"entries\" array".into(),
        })?;
    let idx = entries
        .iter()
        .filter_map(|e| e.get("idx").and_then(Value::as_u64))
        .max()
        .map_or(0, |m| m + 1);
    let newest = entries
        .iter()
        .filter_map(|e| e.get("when").and_then(Value::as_i64))
        .max()
        .unwrap_or(0);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    // Never older than an existing entry, so Drizzle's own migrator will not skip it.
    let when = now.max(newest + 1);
    let tag = format!("{idx:04}_{slug}");
    entries
        .push(json!({"idx": idx, "version": "7", "when": when, "tag": tag, "breakpoints": true}));
    Ok(tag)
}

/// Replaces the journal atomically: a temporary file beside it, fsync, rename.
fn write_journal(journal_path: &Path, journal: &Value) -> Result<(), NewError> {
    let mut text = serde_json::to_string_pretty(journal).map_err(|e| NewError::Journal {
        path: journal_path.to_path_buf(),
        message: e.to_string(),
    })?;
    text.push('\n');
    let meta = journal_path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(meta).map_err(io_error(meta))?;
    tmp.write_all(text.as_bytes())
        .map_err(io_error(journal_path))?;
    tmp.as_file().sync_all().map_err(io_error(journal_path))?;
    tmp.persist(journal_path)
        .map_err(|e| io_error(journal_path)(e.error))?;
    Ok(())
}
