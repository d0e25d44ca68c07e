//! Drizzle ORM 1.0's folder layout: one directory per migration,
//! `<YYYYMMDDHHMMSS>_<name>/migration.sql` (plus drizzle-kit's `snapshot.json`), no journal.
//!
//! The rules are those of drizzle-orm 1.0.0-rc.5 `migrator.js` (l.8-20) and `migrator.utils.js`:
//! every directory entry holding a `migration.sql` is a migration named after the directory;
//! migrations run in `String.prototype.localeCompare` order of their names; `created_at` is
//! `Date.UTC` of the name's first 14 digits (whole seconds, in milliseconds).

use std::cmp::Ordering;
use std::fs;
use std::io;
use std::path::Path;

use super::SourceError;

/// The file holding a migration's SQL inside its folder.
pub const MIGRATION_FILE: &str = "migration.sql";

/// The names of `dir`'s migration folders (directories holding `migration.sql`), in Drizzle
/// 1.0's apply order. Empty when `dir` does not exist. A folder that is a symlink must lead to
/// a directory inside `dir`; a name Drizzle 1.0 cannot date (no 14-digit prefix) is refused,
/// since its migrator would fail on it with `invalid input syntax for type bigint: "NaN"`.
pub(crate) fn folder_names(dir: &Path) -> Result<Vec<String>, SourceError> {
    let io_err = |source| SourceError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(io_err(source)),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io_err)?;
        let path = entry.path();
        // Node's existsSync follows symlinks, so a symlinked folder counts; we check below
        // that it stays inside the migrations folder. Whatever is named `migration.sql` makes
        // a migration (a FIFO, a directory, a dangling link included): reading it then refuses
        // what is not a regular file, by name, instead of skipping the migration silently.
        // Only a directory (or a link, maybe to one) can hold it: the entry's type comes with
        // the directory listing, so a journal folder's files cost no probe each.
        let may_hold = entry
            .file_type()
            .map_or(true, |t| t.is_dir() || t.is_symlink());
        if !may_hold || fs::symlink_metadata(path.join(MIGRATION_FILE)).is_err() {
            continue;
        }
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            return Err(SourceError::FolderName {
                path,
                problem: NameProblem::NotUtf8,
            });
        };
        if created_at(&name).is_none() {
            return Err(SourceError::FolderName {
                path,
                problem: NameProblem::NoTimestamp,
            });
        }
        check_symlinked_folder(dir, &path, &entry)?;
        names.push(name);
    }
    names.sort_by(|a, b| locale_compare(a, b));
    Ok(names)
}

/// What is wrong with a migration folder's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NameProblem {
    #[error("the name is not valid UTF-8")]
    NotUtf8,
    #[error("the name does not start with a 14-digit UTC time (YYYYMMDDHHMMSS), from which Drizzle 1.0 takes created_at")]
    NoTimestamp,
}

fn check_symlinked_folder(
    dir: &Path,
    path: &Path,
    entry: &fs::DirEntry,
) -> Result<(), SourceError> {
    let io_err = |source| SourceError::Io {
        path: path.to_path_buf(),
        source,
    };
    if !entry.file_type().map_err(io_err)?.is_symlink() {
        return Ok(());
    }
    let target = fs::canonicalize(path).map_err(io_err)?;
    let canonical_dir = fs::canonicalize(dir).map_err(io_err)?;
    if target.parent() == Some(canonical_dir.as_path()) {
        return Ok(());
    }
    Err(SourceError::OutsideFolder {
        path: path.to_path_buf(),
        file_name: entry.file_name().to_string_lossy().into_owned(),
        target,
    })
}

/// The path of migration `name`'s SQL file relative to the migrations folder.
pub(crate) fn file_name(name: &str) -> String {
    format!("{name}/{MIGRATION_FILE}")
}

/// `created_at` as Drizzle 1.0 records it for folder `name`: milliseconds since the Unix epoch
/// of `Date.UTC(YYYY, MM - 1, DD, hh, mm, ss)` over the name's first 14 characters (always whole
/// seconds). `Date.UTC`'s rules are kept: out-of-range fields carry over (month 13 is January
/// of the next year) and years 0-99 mean 1900-1999. `None` unless the first 14 characters are
/// ASCII digits (Drizzle would compute NaN).
pub fn created_at(name: &str) -> Option<i64> {
    let digits = name.get(..14)?;
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let field = |from: usize, to: usize| digits[from..to].parse::<i64>().ok();
    let mut year = field(0, 4)?;
    if (0..=99).contains(&year) {
        year += 1900;
    }
    let month = field(4, 6)? - 1;
    let day =
        days_from_civil(year + month.div_euclid(12), month.rem_euclid(12) + 1) + field(6, 8)? - 1;
    let seconds = day * 86_400 + field(8, 10)? * 3_600 + field(10, 12)? * 60 + field(12, 14)?;
    Some(seconds * 1_000)
}

/// Days from 1970-01-01 to the first of `month` (1-12) of `year`, proleptic Gregorian
/// (Howard Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((month + 9) % 12) + 2) / 5;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The order of `a.localeCompare(b)` in Node (ICU root collation), for the names Drizzle
/// writes: ASCII punctuation and symbols before digits before letters, letters compared without
/// case first, then lowercase before uppercase. Characters outside ASCII sort after ASCII
/// letters by code point (ICU would interleave accented letters; folder names made by
/// drizzle-kit are ASCII).
pub fn locale_compare(a: &str, b: &str) -> Ordering {
    let primary = |s: &str| s.chars().map(primary_weight).collect::<Vec<u32>>();
    let tertiary = |s: &str| {
        s.chars()
            .map(|c| c.is_ascii_uppercase())
            .collect::<Vec<bool>>()
    };
    primary(a)
        .cmp(&primary(b))
        .then_with(|| tertiary(a).cmp(&tertiary(b)))
        .then_with(|| a.cmp(b))
}

/// ASCII whitespace, punctuation and symbols in CLDR root order.
const SYMBOLS: &str = "\t\n\u{b}\u{c}\r _-,;:!?.'\"()[]{}@*/\\&#%`^+<=>|~$";

fn primary_weight(c: char) -> u32 {
    if let Some(i) = SYMBOLS.find(c) {
        return i as u32;
    }
    if c.is_ascii_digit() {
        return 100 + c as u32 - '0' as u32;
    }
    if c.is_ascii_alphabetic() {
        return 200 + c.to_ascii_lowercase() as u32 - 'a' as u32;
    }
    1_000 + c as u32
}

/// Top-level `.sql` files of a folder-layout folder: Drizzle 1.0 ignores them.
pub(crate) fn loose_sql_files(dir: &Path) -> Result<Vec<String>, SourceError> {
    let io_err = |source| SourceError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut loose = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err)? {
        let entry = entry.map_err(io_err)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(".sql") && entry.path().is_file() {
            loose.push(name);
        }
    }
    loose.sort();
    Ok(loose)
}

/// A folder holding both layouts: what the journal layout left behind.
pub(crate) fn left_behind(dir: &Path, journal: &Path) -> Result<Vec<String>, SourceError> {
    let mut left = vec![journal
        .strip_prefix(dir)
        .unwrap_or(journal)
        .display()
        .to_string()];
    left.extend(loose_sql_files(dir)?);
    Ok(left)
}

#[cfg(test)]
mod tests {
    use super::super::{drizzle_hash, Layout, MigrationSet, SourceWarning};
    use super::*;

    fn write(dir: &Path, rel: &str, text: &str) {
        let path = dir.join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, text).unwrap();
    }

    #[test]
    fn folder_layout_is_read_in_name_order_with_drizzle_1_values() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "20250102093015_add_email/migration.sql",
            "SELECT 2;",
        );
        write(
            dir.path(),
            "20250101120000_create_people/migration.sql",
            "SELECT 1;",
        );
        write(
            dir.path(),
            "20250101120000_create_people/snapshot.json",
            "{}",
        );
        write(dir.path(), "notes/README.md", "not a migration");
        write(dir.path(), "stray.sql", "SELECT 3;");
        let set = MigrationSet::load(dir.path()).unwrap();
        assert_eq!(set.layout, Layout::Folders);
        let got: Vec<_> = set
            .migrations
            .iter()
            .map(|m| {
                (
                    m.idx,
                    m.tag.as_str(),
                    m.when,
                    m.file_name.as_str(),
                    m.hash.clone(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                (
                    0,
                    "20250101120000_create_people",
                    1_735_732_800_000,
                    "20250101120000_create_people/migration.sql",
                    drizzle_hash("SELECT 1;")
                ),
                (
                    1,
                    "20250102093015_add_email",
                    1_735_810_215_000,
                    "20250102093015_add_email/migration.sql",
                    drizzle_hash("SELECT 2;")
                ),
            ]
        );
        assert_eq!(
            set.warnings,
            [SourceWarning::NotInFolder {
                file_name: "stray.sql".into()
            }]
        );
    }

    #[test]
    fn both_layouts_in_one_folder_are_refused_naming_what_is_left() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "meta/_journal.json", r#"{"entries":[]}"#);
        write(dir.path(), "0001_b.sql", "SELECT 2;");
        write(dir.path(), "20250101120000_a/migration.sql", "SELECT 1;");
        let err = MigrationSet::load(dir.path()).unwrap_err();
        let message = err.to_string();
        assert!(
            matches!(&err, crate::source::SourceError::MixedLayout { left_behind, folders, .. }
                if left_behind == &["meta/_journal.json", "0001_b.sql"] && folders == &["20250101120000_a"]),
            "{err:?}"
        );
        assert!(
            message.contains("vamsa-migrate convert --write"),
            "{message}"
        );
    }

    #[test]
    fn a_folder_name_without_a_time_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "initial/migration.sql", "SELECT 1;");
        let err = MigrationSet::load(dir.path()).unwrap_err();
        assert!(
            matches!(
                err,
                crate::source::SourceError::FolderName {
                    problem: NameProblem::NoTimestamp,
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn a_symlinked_folder_leading_outside_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        write(outside.path(), "x/migration.sql", "SELECT 1;");
        std::os::unix::fs::symlink(
            outside.path().join("x"),
            dir.path().join("20250101120000_x"),
        )
        .unwrap();
        let err = MigrationSet::load(dir.path()).unwrap_err();
        assert!(
            matches!(err, crate::source::SourceError::OutsideFolder { .. }),
            "{err:?}"
        );
    }

    #[test]
    fn created_at_is_date_utc_of_the_prefix() {
        // Vamsa's converted initial migration: 2026-01-24T06:27:22Z.
        assert_eq!(
            created_at("20260124062722_initial"),
            Some(1_769_236_042_000)
        );
        assert_eq!(
            created_at("20250101120000_create_people"),
            Some(1_735_732_800_000)
        );
        assert_eq!(created_at("19700101000000"), Some(0));
        // Date.UTC carries over: month 13 of 2024 is January 2025.
        assert_eq!(
            created_at("20241301120000_x"),
            created_at("20250101120000_x")
        );
        // Date.UTC maps years 0-99 to 1900-1999.
        assert_eq!(
            created_at("00990101000000_x"),
            created_at("19990101000000_x")
        );
        assert_eq!(created_at("2025010112000_x"), None);
        assert_eq!(created_at("initial"), None);
    }

    #[test]
    fn locale_order_of_drizzle_names() {
        // The order verified with Node's localeCompare in the research note.
        let mut names = vec!["1-z", "1_B", "1_b", "1_ab", "1_a"];
        names.sort_by(|a, b| locale_compare(a, b));
        assert_eq!(names, ["1_a", "1_ab", "1_b", "1_B", "1-z"]);
        assert_eq!(
            locale_compare("20240210012000_z", "20260124062722_a"),
            Ordering::Less
        );
    }
}
