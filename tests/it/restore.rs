//! `vamsa-migrate restore`: a failed release goes back to exactly the state its dump shows
//! (objects it created included), other sessions stop it unless --force, and a dump that does
//! not read back is refused before anything is dropped.

use crate::support::{eventually, Db, Folder, Run};

const A: &str = "CREATE TABLE \"persons\" (\"id\" serial PRIMARY KEY, \"name\" text NOT NULL);\n";
const B: &str = "CREATE TABLE \"media\" (\"id\" serial PRIMARY KEY, \"person_id\" integer REFERENCES \"persons\" (\"id\"));\n\
--> statement-breakpoint\nCREATE TYPE \"mood\" AS ENUM ('happy');\n\
--> statement-breakpoint\nALTER TABLE \"persons\" ADD COLUMN \"mood\" \"mood\";\n";
const BAD: &str = "SELECT * FROM \"nope\";\n";

/// The database as a plain pg_dump shows it: schema and rows, no OIDs.
fn plain_dump(db: &Db) -> String {
    let out = std::process::Command::new(db.cluster.program("pg_dump"))
        .args(["-h", "127.0.0.1", "-p", &db.cluster.port().to_string()])
        .args(["-U", "postgres", "--no-owner", &db.name])
        // The run history: dumps leave it out, a restore keeps it (and records itself).
        .arg("--exclude-schema=vamsa_migrate")
        .output()
        .expect("run pg_dump");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("pg_dump writes UTF-8");
    // pg_dump 15.14 and later fence the script with a random key (`\restrict KEY`).
    text.lines()
        .filter(|l| !l.starts_with("\\restrict") && !l.starts_with("\\unrestrict"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// 0000 applied with rows; then a release of 0001 (a table with a foreign key to persons, a
/// type, a column) and a failing 0002: 0001 stays committed.
fn failed_release() -> (Db, Folder, String) {
    let db = Db::new();
    let first = Folder::new(&[("0000_init", 1000, A)]);
    db.run(first.path(), &["migrate"]).ok();
    db.psql("INSERT INTO persons (name) VALUES ('Asha'), ('Ravi')");
    let before = plain_dump(&db);
    let release = Folder::new(&[
        ("0000_init", 1000, A),
        ("0001_media", 2000, B),
        ("0002_bad", 3000, BAD),
    ]);
    db.run(release.path(), &["migrate"]).code(1);
    assert!(
        db.table_exists("media"),
        "0001_media should have stayed committed"
    );
    (db, release, before)
}

fn restore(db: &Db, dir: &Folder, args: &[&str]) -> Run {
    db.cli(dir.path()).arg("restore").args(args).run()
}

#[test]
fn a_failed_release_is_restored_to_its_exact_pre_state() {
    let (db, release, before) = failed_release();
    let run = restore(&db, &release, &["--before", "0001_media", "--yes"]);
    run.ok();
    assert_eq!(
        plain_dump(&db),
        before,
        "the database differs from the dump taken before"
    );
    for line in [
        "Dropped table public.media (not in the dump)",
        "Last applied migration: row 1 (",
        "Pending for the code in ",
        "(2): 0001_media.sql, 0002_bad.sql",
    ] {
        assert!(
            run.stdout.contains(line),
            "{line:?} missing in:\n{}",
            run.stdout
        );
    }
}

#[test]
fn other_sessions_refuse_the_restore_unless_force_terminates_them() {
    let (db, release, before) = failed_release();
    let mut app = db
        .cluster
        .psql_command(&db.name)
        .args(["-c", "SELECT pg_sleep(600)"])
        .env("PGAPPNAME", "vamsa-app")
        .spawn()
        .expect("start a client");
    eventually("the client to connect", || {
        db.has_activity("application_name = 'vamsa-app'")
    });
    let refused = restore(&db, &release, &["--latest", "--yes"]);
    refused.code(1);
    assert!(
        refused.stderr.contains("1 other session(s) are connected"),
        "{}",
        refused.stderr
    );
    assert!(
        refused.stderr.contains(&format!(
            "pid {}",
            db.psql("SELECT pid FROM pg_stat_activity WHERE application_name = 'vamsa-app'")
        )),
        "{}",
        refused.stderr
    );
    assert!(
        refused.stderr.contains("application \"vamsa-app\""),
        "{}",
        refused.stderr
    );
    assert!(
        db.table_exists("media"),
        "the refused restore changed the database"
    );
    // Without a terminal and without --yes: not confirmed, nothing changed.
    restore(&db, &release, &["--latest", "--force"]).code(2);
    assert!(db.has_activity("application_name = 'vamsa-app'"));

    let forced = restore(
        &db,
        &release,
        &["--before", "0001_media", "--force", "--yes"],
    );
    forced.ok();
    assert!(
        forced
            .stdout
            .contains("Terminated 1 other session(s) (--force):"),
        "{}",
        forced.stdout
    );
    assert!(
        forced.stdout.contains("application \"vamsa-app\""),
        "{}",
        forced.stdout
    );
    assert!(!app.wait().expect("wait for the client").success());
    assert_eq!(plain_dump(&db), before);
}

#[test]
fn a_corrupt_dump_is_refused_before_anything_is_dropped() {
    let (db, release, _) = failed_release();
    let dump = std::fs::read_dir(db.backups.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().contains("before-0001_media"))
        .expect("the dump taken before 0001_media");
    let bytes = std::fs::read(&dump).unwrap();
    std::fs::write(&dump, &bytes[..bytes.len() / 2]).unwrap();
    let after_release = plain_dump(&db);
    let run = restore(&db, &release, &[dump.to_str().unwrap(), "--yes"]);
    run.code(2);
    assert!(run.stderr.contains("cannot be restored"), "{}", run.stderr);
    assert!(
        run.stderr.contains("Nothing was changed in the database."),
        "{}",
        run.stderr
    );
    assert_eq!(
        plain_dump(&db),
        after_release,
        "the refused restore changed the database"
    );
}
