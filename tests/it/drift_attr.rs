//! Drift attribution: a schema change made by migrations that Drizzle's own migrator applied
//! since the record (tracking rows whose identities were not recorded) is not drift when their
//! SQL names the changed object; a hand change made before such a run still is, and a new row
//! whose migration is not in the folder is named as the reason its changes cannot be told.

use std::path::Path;

use crate::interop_v1::Drizzle;
use crate::support::*;

const PERSONS: &str =
    "CREATE TABLE \"persons\" (\"id\" serial PRIMARY KEY, \"name\" text NOT NULL);\n";
const MEDIA: &str = "CREATE TABLE \"media\" (\"id\" serial PRIMARY KEY);\n";
const AGE: &str = "ALTER TABLE \"persons\" ADD COLUMN \"age\" integer;\n";

/// `status`'s lines after the heading of the schema's changes, and its `note:` lines.
fn report(run: &Run) -> (Vec<String>, Vec<String>) {
    let after: Vec<&str> = run
        .stdout
        .lines()
        .skip_while(|l| !l.starts_with("The schema was changed outside migrations"))
        .skip(1)
        .collect();
    let changes = after
        .iter()
        .take_while(|l| l.starts_with("  "))
        .map(|l| l.trim_start().to_string())
        .collect();
    let notes = after
        .iter()
        .filter_map(|l| l.strip_prefix("note: "))
        .map(str::to_string)
        .collect();
    (changes, notes)
}

fn drizzle(version: Drizzle, db: &Db, dir: &Path) {
    if let Err(e) = version.migrate(db, dir) {
        panic!("{version:?}: {e}");
    }
}

/// A folder of `files`, in Drizzle 1.0's layout for `Drizzle::V1` (our `convert --write`).
fn folder(version: Drizzle, files: &[(&str, i64, &str)]) -> Folder {
    let f = Folder::new(files);
    if let Drizzle::V1 = version {
        let mut c = cli();
        c.migrations_dir(f.path()).args(["convert", "--write"]);
        c.run().ok();
    }
    f
}

/// The reviewer's case, through each of Drizzle's migrators: a hand `ALTER TABLE persons ADD
/// nickname`, then Drizzle applies an unrelated migration. The hand change is drift; the
/// migration's table is not.
#[test]
fn a_hand_change_before_drizzles_migrator_ran_an_unrelated_migration_is_drift() {
    for version in [Drizzle::V045, Drizzle::V1] {
        let db = Db::new();
        let first = folder(version, &[("0000_persons", 1000, PERSONS)]);
        db.run(first.path(), &["migrate"]).ok();
        db.psql("ALTER TABLE persons ADD COLUMN nickname text");
        let f = folder(
            version,
            &[("0000_persons", 1000, PERSONS), ("0001_media", 2000, MEDIA)],
        );
        drizzle(version, &db, f.path());
        assert!(db.table_exists("media"), "{version:?}");
        // media: its table, column, primary key constraint and index, sequence (5 changes).

        let run = db.run(f.path(), &["status"]);
        run.code(4);
        let (changes, notes) = report(&run);
        assert_eq!(
            changes,
            ["+ column public.persons.nickname text"],
            "{version:?}\n{}",
            run.stdout
        );
        assert_eq!(notes.len(), 1, "{}", run.stdout);
        assert!(
            notes[0].starts_with("1 migration(s) were applied by another tool since the record (")
                && notes[0].contains("_media); ")
                && notes[0].ends_with(
                    "the changes above are not named in their SQL; 5 other change(s) are, and are not drift"
                ),
            "{version:?}: {}",
            notes[0]
        );
    }
}

/// The fair case: Drizzle's migrator adds a column to a table we created; nothing else
/// changed. Not drift, and our next run records the schema again.
#[test]
fn a_column_drizzles_migrator_added_is_not_drift() {
    for version in [Drizzle::V045, Drizzle::V1] {
        let db = Db::new();
        let first = folder(version, &[("0000_persons", 1000, PERSONS)]);
        db.run(first.path(), &["migrate"]).ok();
        let f = folder(
            version,
            &[("0000_persons", 1000, PERSONS), ("0001_age", 2000, AGE)],
        );
        drizzle(version, &db, f.path());
        let run = db.run(f.path(), &["status"]);
        run.ok();
        assert!(
            !run.stdout.contains("outside migrations"),
            "{version:?}\n{}",
            run.stdout
        );
        // Still told apart after our next run recorded the schema: a hand change is drift.
        let next = folder(
            version,
            &[
                ("0000_persons", 1000, PERSONS),
                ("0001_age", 2000, AGE),
                ("0002_media", 3000, MEDIA),
            ],
        );
        db.run(next.path(), &["migrate"]).ok();
        db.psql("ALTER TABLE persons DROP COLUMN age");
        let run = db.run(next.path(), &["status"]);
        run.code(4);
        assert_eq!(report(&run).0, ["- column public.persons.age integer"]);
    }
}

/// A row Drizzle wrote for a migration that is not in our folder: its changes cannot be
/// attributed, so they are drift, and the note names the row.
#[test]
fn changes_of_a_migration_missing_from_the_folder_are_drift_naming_its_row() {
    let db = Db::new();
    let first = Folder::new(&[("0000_persons", 1000, PERSONS)]);
    db.run(first.path(), &["migrate"]).ok();
    let theirs = Folder::new(&[("0000_persons", 1000, PERSONS), ("0001_media", 2000, MEDIA)]);
    drizzle(Drizzle::V045, &db, theirs.path());
    let run = db.run(first.path(), &["status"]);
    run.code(4);
    let (changes, notes) = report(&run);
    assert!(
        changes.iter().any(|c| c == "+ table public.media"),
        "{}",
        run.stdout
    );
    assert_eq!(
        notes[0],
        "1 migration(s) were applied by another tool since the record"
    );
    assert!(
        notes.iter().any(|n| n.starts_with("row 2 (created_at 2000, hash ")
            && n.ends_with("was written by another tool, and its migration is not in the folder: the changes it made cannot be told from hand changes")),
        "{}",
        run.stdout
    );
}
