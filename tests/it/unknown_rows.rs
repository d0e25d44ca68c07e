//! Never old code on a newer schema: tracking rows that match no file (the code was rolled
//! back without a restore) stop `migrate` (exit 4) and the daemon's start-up (exit 4, no
//! READY) under the default `unknown_rows = "refuse"`, naming the rows and both ways out;
//! `unknown_rows = "warn"` applies anyway.

use crate::support::{cli, Daemon, Db, Folder};

const A: &str = "CREATE TABLE \"persons\" (\"id\" serial PRIMARY KEY);\n";
const B: &str = "CREATE TABLE \"media\" (\"id\" serial PRIMARY KEY);\n";
const C: &str = "CREATE INDEX \"media_id\" ON \"media\" (\"id\");\n";
const D: &str = "CREATE TABLE \"notes\" (\"id\" serial PRIMARY KEY);\n";

/// A database migrated by the release with 0000..0002, and the older code that has only
/// 0000 and 0001 plus a new pending 0003 of its own (a hotfix branch), so that a run that
/// does not refuse changes something.
fn rolled_back() -> (Db, Folder) {
    let db = Db::new();
    let newer = Folder::new(&[
        ("0000_init", 1000, A),
        ("0001_media", 2000, B),
        ("0002_index", 3000, C),
    ]);
    db.run(newer.path(), &["migrate", "--no-backup"]).ok();
    let older = Folder::new(&[
        ("0000_init", 1000, A),
        ("0001_media", 2000, B),
        ("0003_notes", 4000, D),
    ]);
    (db, older)
}

#[track_caller]
fn assert_refusal(text: &str) {
    for needle in [
        "the database is newer than this code",
        "row 3 (created_at 3000, hash ",
        "vamsa-migrate restore",
        "check out (deploy) the newer code",
        "unknown_rows = \"warn\"",
    ] {
        assert!(text.contains(needle), "{needle:?} missing in:\n{text}");
    }
}

#[test]
fn migrate_refuses_a_database_newer_than_the_code_with_exit_4_and_changes_nothing() {
    let (db, older) = rolled_back();
    for args in [&["migrate"][..], &["migrate", "--dry-run"]] {
        let run = db.run(older.path(), args);
        run.code(4);
        assert_refusal(&run.stderr);
    }
    assert!(!db.table_exists("notes"), "0003_notes was applied");
    assert_eq!(db.rows().len(), 3);
    assert_eq!(
        std::fs::read_dir(db.backups.path()).unwrap().count(),
        0,
        "a backup was taken for a refused run"
    );
    let json = db.run(older.path(), &["migrate", "--format", "json"]);
    json.code(4);
    let done: serde_json::Value =
        serde_json::from_str(json.stdout.lines().last().unwrap_or_default()).unwrap();
    assert_eq!(done["error"]["kind"], "newer-database", "{done}");
}

#[test]
fn unknown_rows_warn_names_the_rows_and_applies_anyway() {
    let (db, older) = rolled_back();
    let run = db
        .cli(older.path())
        .env("VAMSA_MIGRATE_UNKNOWN_ROWS", "warn")
        .args(["migrate", "--no-backup"])
        .run();
    run.ok();
    assert!(
        run.stderr.contains("matches no migration on disk"),
        "{}",
        run.stderr
    );
    assert!(db.table_exists("notes"));
}

#[test]
fn the_daemon_exits_4_without_ready_on_a_database_newer_than_the_code() {
    // Both start-up jobs: applying, and only reporting (apply_on_start = false), which would
    // otherwise send READY without touching the database.
    for extra in ["", "apply_on_start = false"] {
        let (db, older) = rolled_back();
        let mut d = Daemon::start(cli(), &db.url(), older.path(), extra);
        assert_eq!(d.wait_exit(), 4, "{extra:?}: {}", d.log());
        let messages = d.messages();
        assert!(
            !messages.iter().any(|m| m.contains("READY=1")),
            "{messages:?}"
        );
        assert!(
            messages
                .iter()
                .any(|m| m.contains("STATUS=Refused: the database is newer than this code")),
            "{messages:?}"
        );
        assert_refusal(&d.log());
        assert!(
            !db.table_exists("notes"),
            "{extra:?}: 0003_notes was applied"
        );
    }
}

#[test]
fn the_daemon_under_unknown_rows_warn_starts_and_applies() {
    let (db, older) = rolled_back();
    let mut d = Daemon::start(cli(), &db.url(), older.path(), "unknown_rows = \"warn\"");
    d.ready();
    assert!(db.table_exists("notes"));
}

/// In Drizzle 1.0's table a row has the folder's name: the admin is told which migration the
/// database has that the code lacks, by name (status in text and JSON, and the refusal).
#[test]
fn rows_of_a_drizzle_1_table_that_match_no_folder_are_named() {
    let db = Db::new();
    let dir = tempfile::tempdir().unwrap();
    for (name, sql) in [("20250101120000_init", A), ("20250102120000_media", B)] {
        std::fs::create_dir_all(dir.path().join(name)).unwrap();
        std::fs::write(dir.path().join(name).join("migration.sql"), sql).unwrap();
    }
    db.run(dir.path(), &["migrate", "--no-backup"]).ok();
    std::fs::remove_dir_all(dir.path().join("20250102120000_media")).unwrap();
    let status = db.run(dir.path(), &["status"]);
    assert!(
        status
            .stdout
            .contains("row 2 (name 20250102120000_media, created_at 1735819200000, hash "),
        "{}",
        status.stdout
    );
    let json = db.run(dir.path(), &["status", "--format", "json"]);
    let report: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(
        report["missing_on_disk"][0]["name"], "20250102120000_media",
        "{report}"
    );
    let refused = db.run(dir.path(), &["migrate"]);
    refused.code(4);
    assert!(
        refused.stderr.contains("name 20250102120000_media"),
        "{}",
        refused.stderr
    );
}
