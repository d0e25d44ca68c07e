//! Converting a journal-layout folder (drizzle-kit 0.x) to Drizzle 1.0's folder layout without
//! losing an entry or changing the order the journal gave. Pure planning here; the command in
//! `commands::convert` writes the files.
//!
//! Names follow `drizzle-kit up` (1.0.0-rc.5: `<YYYYMMDDHHMMSS of when, UTC>_<tag without its
//! first _-part>`), except that a name must sort after the previous entry's: Drizzle 1.0 applies
//! folders in name order, so an entry whose `when` goes backwards (a migration merged from a
//! branch, as in Vamsa's journal) gets the first free second after its predecessor instead
//! (`drizzle-kit up` keeps its `when` and so runs it first). Every name is then checked against
//! Drizzle 1.0's upgrade rule (`upgrade::names_for_rows`): a database whose 0.x rows were written
//! from this journal must have each row matched to its own folder.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::plan::AppliedRow;
use crate::source::{Migration, MigrationSet};

/// One journal entry and the folder it becomes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Renamed {
    /// `<tag>.sql`.
    pub file_name: String,
    /// The new folder's name.
    pub folder: String,
    /// The name's time moved after the previous entry's (its `when` goes backwards).
    pub moved: bool,
}

/// Why a journal folder cannot be converted safely.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    #[error("{file_name} would become {folder}, but Drizzle 1.0's upgrade of an existing tracking table would give its row to {matched} instead; two entries are written in the same second or an entry's \"when\" lands on another's. Set that entry's \"when\" in meta/_journal.json to a second of its own, then convert again")]
    Ambiguous {
        file_name: String,
        folder: String,
        matched: String,
    },
    #[error("the folder is already in Drizzle 1.0's folder layout")]
    AlreadyFolders,
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path} is not a regular file (a symlink, a FIFO, a directory, ...); nothing was converted: replace it with the file itself, or remove it")]
    NotRegularFile { path: PathBuf },
    #[error(
        "{path} already exists; nothing was converted: remove it (or rename it) and convert again"
    )]
    FolderExists { path: PathBuf },
    #[error("after converting, {dir} does not read back as planned ({what}); the old files are still there: remove the new folders and try again")]
    ReadBack { dir: PathBuf, what: String },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ConvertError + '_ {
    move |source| ConvertError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes the conversion of `set` planned as `renamed`: each `<tag>.sql` copied byte for byte
/// to `<folder>/migration.sql` (its hash unchanged) with `meta/<idx>_snapshot.json`, when
/// there is one, as `<folder>/snapshot.json`; the new folder read back and checked; only then
/// the old `.sql` files, the journal and the copied snapshots removed (and `meta/` if empty).
pub fn write(set: &MigrationSet, renamed: &[Renamed]) -> Result<(), ConvertError> {
    let dir = &set.dir;
    check_before_writing(set, renamed)?;
    for (m, r) in set.migrations.iter().zip(renamed) {
        let folder = dir.join(&r.folder);
        fs::create_dir(&folder).map_err(io_err(&folder))?;
        let to = folder.join(crate::source::v1::MIGRATION_FILE);
        fs::copy(dir.join(&m.file_name), &to).map_err(io_err(&to))?;
        let snapshot = snapshot_path(dir, m.idx);
        if snapshot.is_file() {
            let to = folder.join("snapshot.json");
            fs::copy(&snapshot, &to).map_err(io_err(&to))?;
        }
    }
    check_read_back(set, renamed)?;
    for m in &set.migrations {
        let old = dir.join(&m.file_name);
        fs::remove_file(&old).map_err(io_err(&old))?;
        let snapshot = snapshot_path(dir, m.idx);
        if snapshot.is_file() {
            fs::remove_file(&snapshot).map_err(io_err(&snapshot))?;
        }
    }
    let journal = dir.join("meta/_journal.json");
    fs::remove_file(&journal).map_err(io_err(&journal))?;
    // Only when nothing else is left in it.
    let _ = fs::remove_dir(dir.join("meta"));
    Ok(())
}

/// Refuses, before anything is written, what would leave a half-converted folder or copy a
/// file from outside it: a target folder that exists, a snapshot that is a symlink (a hostile
/// commit could point it at /etc/shadow, which root's conversion would copy into the checkout)
/// or anything but a regular file.
fn check_before_writing(set: &MigrationSet, renamed: &[Renamed]) -> Result<(), ConvertError> {
    for (m, r) in set.migrations.iter().zip(renamed) {
        let folder = set.dir.join(&r.folder);
        if fs::symlink_metadata(&folder).is_ok() {
            return Err(ConvertError::FolderExists { path: folder });
        }
        let snapshot = snapshot_path(&set.dir, m.idx);
        match fs::symlink_metadata(&snapshot) {
            Ok(md) if md.file_type().is_file() => {}
            Ok(_) => return Err(ConvertError::NotRegularFile { path: snapshot }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(ConvertError::Io {
                    path: snapshot,
                    source,
                })
            }
        }
    }
    Ok(())
}

/// drizzle-kit 0.x's snapshot of journal entry `idx`.
fn snapshot_path(dir: &Path, idx: u64) -> PathBuf {
    dir.join(format!("meta/{idx:04}_snapshot.json"))
}

/// The new folders, read as Drizzle 1.0 reads them, hold exactly the planned migrations.
fn check_read_back(set: &MigrationSet, renamed: &[Renamed]) -> Result<(), ConvertError> {
    let expected = converted_set(set, renamed);
    let mut got = Vec::new();
    for name in crate::source::v1::folder_names(&set.dir).map_err(|e| ConvertError::ReadBack {
        dir: set.dir.clone(),
        what: e.to_string(),
    })? {
        let path = set.dir.join(crate::source::v1::file_name(&name));
        let text = fs::read(&path).map_err(io_err(&path))?;
        got.push((
            name,
            crate::source::drizzle_hash(&String::from_utf8_lossy(&text)),
        ));
    }
    let want: Vec<_> = expected
        .migrations
        .iter()
        .map(|m| (m.tag.clone(), m.hash.clone()))
        .collect();
    if got != want {
        return Err(ConvertError::ReadBack {
            dir: set.dir.clone(),
            what: format!("expected {want:?}, found {got:?}"),
        });
    }
    Ok(())
}

/// The folder name of each entry of a journal-layout `set`, in journal order.
pub fn plan(set: &MigrationSet) -> Result<Vec<Renamed>, ConvertError> {
    if set.layout == crate::source::Layout::Folders {
        return Err(ConvertError::AlreadyFolders);
    }
    let mut renamed = Vec::with_capacity(set.migrations.len());
    let mut previous: Option<i64> = None;
    for m in &set.migrations {
        let own = m.when.div_euclid(1000);
        let second = previous.map_or(own, |p| own.max(p + 1));
        previous = Some(second);
        renamed.push(Renamed {
            file_name: m.file_name.clone(),
            folder: format!("{}_{}", timestamp(second), suffix(&m.tag)),
            moved: second != own,
        });
    }
    check_upgrade_matches(set, &renamed)?;
    Ok(renamed)
}

/// `drizzle-kit up`'s suffix: the tag without its first `_`-separated part (the index).
fn suffix(tag: &str) -> &str {
    tag.split_once('_').map_or(tag, |(_, rest)| rest)
}

/// `YYYYMMDDHHMMSS` of `second` (seconds since the Unix epoch, UTC).
pub fn timestamp(second: i64) -> String {
    let days = second.div_euclid(86_400);
    let rest = second.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}{m:02}{d:02}{:02}{:02}{:02}",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// (year, month 1-12, day 1-31) of a day count from 1970-01-01 (Howard Hinnant's
/// `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// Rows as drizzle-orm 0.x wrote them from this journal must each match their own new folder.
fn check_upgrade_matches(set: &MigrationSet, renamed: &[Renamed]) -> Result<(), ConvertError> {
    let converted = converted_set(set, renamed);
    let rows: Vec<AppliedRow> = set
        .migrations
        .iter()
        .enumerate()
        .map(|(i, m)| AppliedRow {
            id: i as i64 + 1,
            hash: m.hash.clone(),
            created_at: Some(m.when),
            applied_at: None,
            name: None,
        })
        .collect();
    let names = crate::upgrade::names_for_rows(&converted, &rows).map_err(|e| {
        let i = e.rows.first().map_or(0, |r| r.id as usize - 1);
        ConvertError::Ambiguous {
            file_name: renamed[i].file_name.clone(),
            folder: renamed[i].folder.clone(),
            matched: "no folder".into(),
        }
    })?;
    for (r, name) in renamed.iter().zip(&names) {
        if &r.folder != name {
            return Err(ConvertError::Ambiguous {
                file_name: r.file_name.clone(),
                folder: r.folder.clone(),
                matched: name.clone(),
            });
        }
    }
    Ok(())
}

/// `set` as Drizzle 1.0 would read it after the conversion.
pub fn converted_set(set: &MigrationSet, renamed: &[Renamed]) -> MigrationSet {
    let migrations = set
        .migrations
        .iter()
        .zip(renamed)
        .map(|(m, r)| Migration {
            tag: r.folder.clone(),
            when: crate::source::v1::created_at(&r.folder).unwrap_or_default(),
            file_name: crate::source::v1::file_name(&r.folder),
            ..m.clone()
        })
        .collect();
    MigrationSet {
        dir: set.dir.clone(),
        layout: crate::source::Layout::Folders,
        migrations,
        warnings: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::{drizzle_hash, split_statements, Layout};

    fn journal(entries: &[(&str, i64, &str)]) -> MigrationSet {
        MigrationSet {
            dir: "/x".into(),
            layout: Layout::Journal,
            warnings: Vec::new(),
            migrations: entries
                .iter()
                .enumerate()
                .map(|(i, (tag, when, sql))| Migration {
                    idx: i as u64,
                    tag: tag.to_string(),
                    when: *when,
                    file_name: format!("{tag}.sql"),
                    hash: drizzle_hash(sql),
                    line_ending_hashes: Vec::new(),
                    bom: false,
                    statements: split_statements(sql),
                    no_transaction: false,
                    stamp: None,
                })
                .collect(),
        }
    }

    #[test]
    fn vamsa_keeps_its_journal_order() {
        let set = journal(&[
            ("0000_initial", 1_769_236_042_522, "CREATE TABLE u();"),
            (
                "0001_grandfather_verified_users",
                1_707_528_000_000,
                "UPDATE u;",
            ),
        ]);
        let folders: Vec<_> = plan(&set)
            .unwrap()
            .into_iter()
            .map(|r| (r.folder, r.moved))
            .collect();
        assert_eq!(
            folders,
            [
                ("20260124062722_initial".to_string(), false),
                (
                    "20260124062723_grandfather_verified_users".to_string(),
                    true
                )
            ]
        );
    }

    #[test]
    fn an_entry_moved_onto_another_entrys_second_is_refused() {
        // b goes back and moves to 11 s, where c's row (11.5 s) would then be matched.
        let set = journal(&[
            ("0000_a", 10_000, "SELECT 1;"),
            ("0001_b", 5_000, "SELECT 2;"),
            ("0002_c", 11_500, "SELECT 3;"),
        ]);
        assert!(matches!(plan(&set), Err(ConvertError::Ambiguous { .. })));
    }

    #[test]
    fn timestamps_are_utc() {
        assert_eq!(timestamp(1_769_236_042), "20260124062722");
        assert_eq!(timestamp(0), "19700101000000");
        assert_eq!(timestamp(951_782_400), "20000229000000");
    }
}
