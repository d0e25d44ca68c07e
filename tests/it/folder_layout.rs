//! `new` and the daemon with Drizzle 1.0's folder layout (issue 12, item 6): `new` writes the
//! layout the folder uses, and the daemon follows a folder converted in place.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::support::{cli, Daemon, Db, Folder};

const PERSONS: &str = "CREATE TABLE \"persons\" (\"id\" serial PRIMARY KEY);\n";
const BORN: &str = "ALTER TABLE \"persons\" ADD COLUMN \"born\" date;\n";
const MEDIA: &str = "CREATE TABLE \"media\" (\"id\" serial PRIMARY KEY);\n";

fn add(dir: &Path, name: &str, sql: &str) {
    std::fs::create_dir_all(dir.join(name)).unwrap();
    std::fs::write(dir.join(name).join("migration.sql"), sql).unwrap();
}

/// The entries of `dir`, sorted, each directory with its own entries (`a/`, `a/migration.sql`).
fn tree(dir: &Path) -> Vec<String> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        if entry.path().is_dir() {
            names.push(format!("{name}/"));
            names.extend(
                tree(&entry.path())
                    .into_iter()
                    .map(|n| format!("{name}/{n}")),
            );
        } else {
            names.push(name);
        }
    }
    names.sort();
    names
}

fn new(dir: &Path, name: &str) -> crate::support::Run {
    cli().args(["new", name]).migrations_dir(dir).run()
}

fn utc_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[test]
fn new_in_a_folder_layout_makes_a_dated_folder_that_sorts_last_and_waits_for_sql() {
    let dir = tempfile::tempdir().unwrap();
    add(dir.path(), "20250101120000_create_persons", PERSONS);
    let before = utc_now();
    let run = new(dir.path(), "Add media tags");
    let after = utc_now();
    run.ok();
    let created = tree(dir.path());
    assert_eq!(created.len(), 4, "{created:?}");
    let folder = created[2].trim_end_matches('/').to_string();
    assert!(folder.ends_with("_add_media_tags"), "{created:?}");
    assert_eq!(created[3], format!("{folder}/migration.sql"));
    // Named after the UTC second it was made in, as drizzle-kit 1.0 `generate` names folders.
    let second = vamsa_migrate::source::v1::created_at(&folder).unwrap() / 1000;
    assert!((before..=after).contains(&second), "{folder}");
    assert_eq!(
        run.stdout,
        format!(
            "Created {}\n",
            dir.path().join(&folder).join("migration.sql").display()
        )
    );
    assert!(!dir.path().join("meta").exists(), "no journal is made");

    // The placeholder is refused and nothing is recorded, until it holds SQL.
    let db = Db::new();
    let refused = db.run(dir.path(), &["migrate"]);
    refused.code(2);
    assert!(
        refused
            .stderr
            .contains("still the placeholder `vamsa-migrate new` wrote"),
        "{}",
        refused.stderr
    );
    assert!(!db.table_exists("persons"));
    let sql = dir.path().join(&folder).join("migration.sql");
    std::fs::write(&sql, "CREATE TABLE \"tags\" (\"id\" int);\n").unwrap();
    db.run(dir.path(), &["migrate"]).ok();
    assert_eq!(
        db.psql("SELECT string_agg(name, ',' ORDER BY id) FROM drizzle.__drizzle_migrations"),
        format!("20250101120000_create_persons,{folder}")
    );
}

#[test]
fn new_is_never_older_than_the_newest_folder() {
    let dir = tempfile::tempdir().unwrap();
    add(dir.path(), "29991231235959_from_the_future", PERSONS);
    add(dir.path(), "20250101120000_create_persons", PERSONS);
    new(dir.path(), "next").ok();
    assert!(
        dir.path()
            .join("30000101000000_next/migration.sql")
            .is_file(),
        "{:?}",
        tree(dir.path())
    );
    // A second one in the same second still sorts after it.
    new(dir.path(), "after").ok();
    assert!(
        dir.path()
            .join("30000101000001_after/migration.sql")
            .is_file(),
        "{:?}",
        tree(dir.path())
    );
}

/// Drizzle 1.0 dates `99999999999999_x` by `Date.UTC`'s carry-over (year 10007): a next name
/// would need 15 digits, which Drizzle would date from its first 14 and sort wrongly.
#[test]
fn new_refuses_when_the_newest_folder_is_dated_after_the_year_9999() {
    let dir = tempfile::tempdir().unwrap();
    add(dir.path(), "99999999999999_far_future", PERSONS);
    let before = tree(dir.path());
    let run = new(dir.path(), "next");
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr
            .contains("\"99999999999999_far_future\" is dated after the year 9999"),
        "{}",
        run.stderr
    );
    assert_eq!(tree(dir.path()), before);
}

#[test]
fn new_refuses_a_folder_holding_both_layouts_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    add(dir.path(), "20250101120000_create_persons", PERSONS);
    std::fs::create_dir(dir.path().join("meta")).unwrap();
    std::fs::write(
        dir.path().join("meta/_journal.json"),
        r#"{"version":"7","dialect":"postgresql","entries":[]}"#,
    )
    .unwrap();
    std::fs::write(dir.path().join("0001_old.sql"), PERSONS).unwrap();
    let before = tree(dir.path());
    let run = new(dir.path(), "next");
    run.code(2);
    assert!(
        run.stderr.contains("holds both migrations layouts")
            && run.stderr.contains("meta/_journal.json, 0001_old.sql"),
        "{}",
        run.stderr
    );
    assert_eq!(tree(dir.path()), before);
}

#[test]
fn the_daemon_follows_a_folder_converted_in_place_and_applies_a_new_migration_folder() {
    let db = Db::new();
    // 2025-01-01T12:00:00Z and 2025-01-02T12:00:00Z.
    let f = Folder::new(&[
        ("0000_create_persons", 1_735_732_800_000, PERSONS),
        ("0001_add_born", 1_735_819_200_000, BORN),
    ]);
    let mut d = Daemon::start(cli(), &db.url(), f.path(), "apply = \"on-change\"");
    d.ready();
    assert_eq!(db.rows().len(), 2);

    // A `git pull` bringing the converted folder: the layout changes in place.
    cli()
        .args(["convert", "--write"])
        .migrations_dir(f.path())
        .run()
        .ok();
    assert!(!f.path().join("meta").exists());
    // Then a new migration, in a new subdirectory: first the placeholder `new` writes, which
    // the daemon must refuse, then its SQL, written into that subdirectory.
    let created = new(f.path(), "add media").ok().stdout.clone();
    let sql = created
        .trim_start_matches("Created ")
        .trim_end()
        .to_string();
    let folder = Path::new(&sql)
        .parent()
        .and_then(Path::file_name)
        .unwrap()
        .to_string_lossy()
        .into_owned();
    d.wait_log("still the placeholder");
    std::fs::write(&sql, MEDIA).unwrap();
    d.wait_log(&format!("Applied: {folder}/migration.sql"));
    // The 0.x table was upgraded as Drizzle 1.0 does, and every row carries its folder's name.
    assert_eq!(
        db.psql("SELECT string_agg(name, ',' ORDER BY id) FROM drizzle.__drizzle_migrations"),
        format!("20250101120000_create_persons,20250102120000_add_born,{folder}")
    );
    assert!(db.table_exists("media"));
}
