//! The rehearsal: before the first change, the run restores its fresh dump into a scratch
//! database, applies the release there with the same engine and settings, and drops it; the
//! database is touched only when that succeeded. A failure there exits 5 with "caught in
//! rehearsal: production was not changed" and the diagnosis a production failure gets.

use std::process::Child;

use nix::sys::signal::kill;
use nix::unistd::Pid;

use crate::support::{cli, eventually, rehearsing, Cli, Daemon, Db, Folder, Run, Signal};

const PERSONS: &str =
    "CREATE TABLE \"persons\" (\"id\" serial PRIMARY KEY, \"email\" text, \"born\" text);\n";

/// A database with `0000_persons` applied and `rows` inserted, and the folder of the release
/// `0000_persons` + `release` (tag, SQL) pairs.
fn with_release(rows: &str, release: &[(&str, &str)]) -> (Db, Folder) {
    let db = Db::new();
    let first = Folder::new(&[("0000_persons", 1000, PERSONS)]);
    db.run(first.path(), &["migrate", "--no-backup"]).ok();
    db.psql(&format!("INSERT INTO persons (email, born) VALUES {rows}"));
    let mut entries = vec![("0000_persons", 1000, PERSONS)];
    for (i, (tag, sql)) in release.iter().enumerate() {
        entries.push((tag, 2000 + i as i64, sql));
    }
    (db, Folder::new(&entries))
}

/// This database's scratch databases (by its oid, as the engine names them).
fn own_scratch_databases(db: &Db) -> String {
    db.psql("SELECT coalesce(string_agg(datname, ','), '') FROM pg_database \
             WHERE starts_with(datname, 'vamsa_rehearsal_' || (SELECT oid FROM pg_database WHERE datname = current_database()) || '_')")
}

/// `vamsa-migrate ARGS` against `db` and `folder`, rehearsing as by default.
fn migrate(db: &Db, folder: &Folder, args: &[&str]) -> Run {
    rehearsing(&mut db.cli(folder.path())).args(args).run()
}

fn dumps(db: &Db) -> usize {
    std::fs::read_dir(db.backups.path()).map_or(0, |d| d.count())
}

/// Exit 5, the headline, the failed file, its SQLSTATE and cause, and production as it was.
#[track_caller]
fn assert_caught(db: &Db, run: &Run, before: &str, file: &str, needles: &[&str]) {
    run.code(5);
    for needle in [
        "caught in rehearsal: production was not changed",
        &format!("migration {file} failed at statement 1 of 1 (line 1)"),
        "Production was not changed: the release failed on a scratch copy",
    ]
    .iter()
    .chain(needles)
    {
        assert!(
            run.stderr.contains(needle),
            "{needle:?} missing in:\n{}",
            run.stderr
        );
    }
    assert_eq!(
        db.catalog_fingerprint(),
        before,
        "production's catalog changed"
    );
    assert_eq!(
        db.rows().len(),
        1,
        "a tracking row was written in production"
    );
    assert_eq!(
        own_scratch_databases(db),
        "",
        "the scratch database was left"
    );
}

#[test]
fn a_unique_constraint_over_duplicates_is_caught_in_rehearsal() {
    let (db, release) = with_release(
        "('a@x', '1950'), ('a@x', '1951')",
        &[(
            "0001_unique_email",
            "ALTER TABLE \"persons\" ADD CONSTRAINT \"persons_email_key\" UNIQUE (\"email\");\n",
        )],
    );
    let before = db.catalog_fingerprint();
    let run = migrate(&db, &release, &["migrate"]);
    assert_caught(
        &db,
        &run,
        &before,
        "0001_unique_email.sql",
        &[
            "SQLSTATE 23505",
            "The existing data violates a constraint this migration adds.",
        ],
    );
    assert_eq!(
        dumps(&db),
        1,
        "one dump serves the backup and the rehearsal"
    );
    let json = migrate(&db, &release, &["migrate", "--format", "json"]);
    json.code(5);
    let done: serde_json::Value =
        serde_json::from_str(json.stdout.lines().last().unwrap_or_default()).unwrap();
    assert_eq!(done["error"]["kind"], "rehearsal", "{done}");
    assert_eq!(done["error"]["sqlstate"], "23505", "{done}");
    // The run history records the set-up run (no rehearsal) and each failed run's as failed.
    assert_eq!(
        db.psql("SELECT string_agg(coalesce(rehearsal, 'none'), ',' ORDER BY id) FROM vamsa_migrate.runs"),
        "none,failed,failed"
    );
    assert_eq!(
        done["error"]["migration"], "0001_unique_email.sql",
        "{done}"
    );
}

#[test]
fn set_not_null_over_nulls_is_caught_in_rehearsal() {
    let (db, release) = with_release(
        "('a@x', '1950'), (NULL, '1951')",
        &[(
            "0001_email_required",
            "ALTER TABLE \"persons\" ALTER COLUMN \"email\" SET NOT NULL;\n",
        )],
    );
    let before = db.catalog_fingerprint();
    let run = migrate(&db, &release, &["migrate"]);
    assert_caught(
        &db,
        &run,
        &before,
        "0001_email_required.sql",
        &["SQLSTATE 23502"],
    );
}

#[test]
fn a_cast_the_data_refuses_is_caught_in_rehearsal() {
    let (db, release) = with_release(
        "('a@x', '1950'), ('b@x', 'n/a')",
        &[(
            "0001_born_integer",
            "ALTER TABLE \"persons\" ALTER COLUMN \"born\" TYPE integer USING \"born\"::integer;\n",
        )],
    );
    let before = db.catalog_fingerprint();
    let run = migrate(&db, &release, &["migrate"]);
    assert_caught(
        &db,
        &run,
        &before,
        "0001_born_integer.sql",
        &["SQLSTATE 22P02", "\"n/a\""],
    );
}

const THREE: [(&str, &str); 3] = [
    (
        "0001_media",
        "CREATE TABLE \"media\" (\"id\" serial PRIMARY KEY);\n",
    ),
    (
        "0002_notes",
        "CREATE TABLE \"notes\" (\"id\" serial PRIMARY KEY);\n",
    ),
    (
        "0003_unique_email",
        "ALTER TABLE \"persons\" ADD CONSTRAINT \"persons_email_key\" UNIQUE (\"email\");\n",
    ),
];

#[test]
fn a_release_whose_third_migration_fails_commits_none_of_it() {
    let (db, release) = with_release("('a@x', '1950'), ('a@x', '1951')", &THREE);
    let before = db.catalog_fingerprint();
    let run = migrate(&db, &release, &["migrate"]);
    assert_caught(
        &db,
        &run,
        &before,
        "0003_unique_email.sql",
        &["SQLSTATE 23505"],
    );
    assert!(!db.table_exists("media") && !db.table_exists("notes"));
    // Without the rehearsal the same release is a half release: the first two stay.
    let unrehearsed = migrate(&db, &release, &["migrate", "--no-rehearse"]);
    unrehearsed.code(1);
    assert!(db.table_exists("media") && db.table_exists("notes"));
    assert_eq!(db.rows().len(), 3);
}

#[test]
fn a_release_that_passes_its_rehearsal_is_applied_from_one_dump() {
    let (db, release) = with_release("('a@x', '1950'), ('b@x', '1951')", &THREE);
    let run = migrate(&db, &release, &["migrate"]);
    run.ok();
    for needle in [
        "Rehearsing 3 migration(s) on a scratch copy (vamsa_rehearsal_",
        "Rehearsal passed (",
    ] {
        assert!(
            run.stderr.contains(needle),
            "{needle:?} missing in:\n{}",
            run.stderr
        );
    }
    assert_eq!(db.rows().len(), 4);
    assert_eq!(
        dumps(&db),
        1,
        "one dump serves the backup and the rehearsal"
    );
    assert_eq!(own_scratch_databases(&db), "");
    assert_eq!(
        db.psql("SELECT rehearsal FROM vamsa_migrate.runs ORDER BY id DESC LIMIT 1"),
        "passed"
    );
}

#[test]
fn a_dry_run_rehearses_on_request_and_changes_nothing() {
    let (db, release) = with_release("('a@x', '1950'), ('a@x', '1951')", &THREE);
    let before = db.catalog_fingerprint();
    let plain = migrate(&db, &release, &["migrate", "--dry-run"]);
    plain.ok();
    assert!(!plain.stderr.contains("Rehearsing"), "{}", plain.stderr);
    let run = migrate(&db, &release, &["migrate", "--dry-run", "--rehearse"]);
    assert!(
        run.stdout.contains("0003_unique_email.sql"),
        "{}",
        run.stdout
    );
    assert_caught(
        &db,
        &run,
        &before,
        "0003_unique_email.sql",
        &["SQLSTATE 23505"],
    );
    assert_eq!(
        dumps(&db),
        0,
        "a dry run's dump is temporary, never in backup_dir"
    );
}

#[test]
fn without_createdb_the_run_says_the_rehearsal_was_skipped_and_why() {
    let (db, release) = with_release("('a@x', '1950')", &THREE[..1]);
    let role = format!("{}_app", db.name);
    db.psql(&format!(
        "CREATE ROLE \"{role}\" LOGIN; ALTER DATABASE \"{}\" OWNER TO \"{role}\"; \
         ALTER SCHEMA public OWNER TO \"{role}\"; ALTER SCHEMA drizzle OWNER TO \"{role}\"; \
         ALTER TABLE persons OWNER TO \"{role}\"; ALTER TABLE drizzle.__drizzle_migrations OWNER TO \"{role}\"",
        db.name
    ));
    let url = db.url().replace("user=postgres", &format!("user={role}"));
    let always = db
        .cli(release.path())
        .database_url(&url)
        .args(["migrate", "--rehearse"])
        .run();
    always.code(1);
    assert!(
        always
            .stderr
            .contains("rehearse = \"always\", but the rehearsal cannot run"),
        "{}",
        always.stderr
    );
    assert!(!db.table_exists("media"));
    let run = rehearsing(&mut db.cli(release.path()))
        .database_url(&url)
        .arg("migrate")
        .run();
    run.ok();
    let expected = format!(
        "warning: rehearsal skipped: the role {role} may not create databases; grant it CREATEDB"
    );
    assert!(run.stderr.contains(&expected), "{}", run.stderr);
    assert!(db.table_exists("media"));
}

#[test]
fn over_rehearse_max_size_auto_skips_and_says_why() {
    let (db, release) = with_release("('a@x', '1950')", &THREE[..1]);
    let run = rehearsing(&mut db.cli(release.path()))
        .env("VAMSA_MIGRATE_REHEARSE_MAX_SIZE", "1MiB")
        .arg("migrate")
        .run();
    run.ok();
    assert!(
        run.stderr
            .contains("warning: rehearsal skipped: the database is ")
            && run.stderr.contains("over rehearse_max_size (1.0 MiB)"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("Rehearsing"), "{}", run.stderr);
}

#[test]
fn a_scratch_database_left_by_a_sigkill_is_dropped_by_the_next_run() {
    let (db, release) = with_release("('a@x', '1950')", &THREE[..1]);
    let oid = db.psql("SELECT oid FROM pg_database WHERE datname = current_database()");
    let leftover = format!("vamsa_rehearsal_{oid}_00000000deadbeef");
    db.psql(&format!("CREATE DATABASE \"{leftover}\""));
    let run = migrate(&db, &release, &["migrate"]);
    run.ok();
    assert!(
        run.stderr.contains(&format!(
            "dropped the scratch database {leftover}, left by an earlier run"
        )),
        "{}",
        run.stderr
    );
    assert_eq!(own_scratch_databases(&db), "");
}

/// `vamsa-migrate ARGS` started, with the `Cli` that must outlive it (it owns its config).
fn spawn(db: &Db, folder: &Folder, args: &[&str]) -> (Cli, Child) {
    let mut c = db.cli(folder.path());
    rehearsing(&mut c).args(args);
    let child = c
        .command()
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start vamsa-migrate");
    (c, child)
}

#[test]
fn sigterm_during_the_rehearsal_drops_the_scratch_database() {
    let gated = format!("{}\n", crate::support::GATED);
    let (db, release) = with_release("('a@x', '1950')", &[("0001_gated", gated.as_str())]);
    // The gate is closed in the dump, so the rehearsal's copy of the migration waits.
    db.close_gate();
    let oid = db.psql("SELECT oid FROM pg_database WHERE datname = current_database()");
    let (_cli, mut migrate) = spawn(&db, &release, &["migrate"]);
    eventually("the rehearsal running the gated migration", || {
        if let Ok(Some(status)) = migrate.try_wait() {
            let mut stderr = String::new();
            if let Some(mut e) = migrate.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut stderr);
            }
            panic!("vamsa-migrate ended first ({status}): {stderr}");
        }
        db.psql(&format!(
            "SELECT count(*) FROM pg_stat_activity WHERE starts_with(datname, 'vamsa_rehearsal_{oid}_') AND {}",
            crate::support::GATED_ACTIVITY
        )) != "0"
    });
    assert_ne!(own_scratch_databases(&db), "");
    let pid = i32::try_from(migrate.id()).expect("a pid fits in pid_t");
    kill(Pid::from_raw(pid), Signal::SIGTERM).expect("signal our child");
    let run = Run::from(migrate.wait_with_output().expect("wait for vamsa-migrate"));
    run.code(143);
    assert_eq!(own_scratch_databases(&db), "", "{}", run.stderr);
    assert_eq!(db.rows().len(), 1, "production was changed");
}

#[test]
fn the_daemon_does_not_send_ready_when_the_start_up_release_fails_in_rehearsal() {
    let (db, release) = with_release("('a@x', '1950'), ('a@x', '1951')", &THREE);
    let mut d = Daemon::start(
        rehearsing(&mut cli()).clone(),
        &db.url(),
        release.path(),
        "",
    );
    assert_eq!(d.wait_exit(), 5, "{}", d.log());
    let messages = d.messages();
    assert!(
        !messages.iter().any(|m| m.contains("READY=1")),
        "{messages:?}"
    );
    assert!(
        messages.iter().any(|m| m.contains(
            "STATUS=Rehearsal failed, database not changed: migration 0003_unique_email.sql failed"
        )),
        "{messages:?}"
    );
    let log = d.log();
    assert!(
        log.contains("REHEARSAL=\"failed\"") || log.contains("REHEARSAL=failed"),
        "{log}"
    );
    assert!(
        log.contains("caught in rehearsal: production was not changed"),
        "{log}"
    );
    assert!(!db.table_exists("media"), "production was changed");
}

/// A statement that acts outside the database (here `ALTER DATABASE <production> SET`) would,
/// run in the scratch copy, change the real server: such a release is not rehearsed (`auto`
/// says why, naming file and line) and `always` refuses it before any change.
#[test]
fn a_release_acting_outside_the_database_is_never_rehearsed() {
    let (db, _) = with_release("('a@x', '1950')", &[]);
    let sql = format!(
        "CREATE TABLE \"notes\" (\"id\" serial PRIMARY KEY);\n--> statement-breakpoint\n\
         ALTER DATABASE \"{}\" SET work_mem = '7MB';\n",
        db.name
    );
    let release = Folder::new(&[
        ("0000_persons", 1000, PERSONS),
        ("0001_settings", 2000, &sql),
    ]);
    let before = db.catalog_fingerprint();
    let always = migrate(&db, &release, &["migrate", "--rehearse"]);
    always.code(1);
    assert!(
        always
            .stderr
            .contains("0001_settings.sql line 3 (ALTER DATABASE ...) acts outside the database"),
        "{}",
        always.stderr
    );
    assert_eq!(db.catalog_fingerprint(), before);
    assert_eq!(db.psql("SELECT count(*) FROM pg_db_role_setting WHERE setdatabase = (SELECT oid FROM pg_database WHERE datname = current_database())"), "0");
    let auto = migrate(&db, &release, &["migrate"]);
    auto.ok();
    assert!(
        auto.stderr
            .contains("rehearsal skipped: 0001_settings.sql line 3 (ALTER DATABASE ...)"),
        "{}",
        auto.stderr
    );
    assert!(!auto.stderr.contains("Rehearsing"), "{}", auto.stderr);
    assert!(db.table_exists("notes"));
}
