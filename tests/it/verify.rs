//! `verify`: the folder against the tracking table, the live schema against the recorded one,
//! and the newest backup (`pg_restore --list`; `--deep`: restored into a scratch database that
//! is dropped), one line per check, read-only; exit 0, 1 (backup), 3 (pending), 4 (drift).

use std::path::{Path, PathBuf};

use nix::sys::signal::kill;
use nix::unistd::Pid;

use crate::support::*;

const PERSONS: &str =
    "CREATE TABLE \"persons\" (\"id\" serial PRIMARY KEY, \"name\" text NOT NULL);\n";
const MEDIA: &str = "CREATE TABLE \"media\" (\"id\" serial PRIMARY KEY);\n";
const TAGS: &str = "CREATE TABLE \"tags\" (\"id\" serial PRIMARY KEY);\n";

/// A database with two migrations applied in two runs, so that its newest backup (taken before
/// the second) holds the tracking table with the first one's row.
fn migrated() -> (Db, Folder) {
    let db = Db::new();
    let f = Folder::new(&[("0000_persons", 1000, PERSONS)]);
    db.run(f.path(), &["migrate"]).ok();
    f.write(&[("0000_persons", 1000, PERSONS), ("0001_media", 2000, MEDIA)]);
    db.run(f.path(), &["migrate"]).ok();
    (db, f)
}

fn verify(db: &Db, dir: &Path, extra: &[&str]) -> Run {
    let mut args = vec!["verify"];
    args.extend_from_slice(extra);
    db.run(dir, &args)
}

fn newest_dump(db: &Db) -> PathBuf {
    let mut dumps: Vec<PathBuf> = std::fs::read_dir(db.backups.path())
        .expect("read the backup folder")
        .map(|e| e.expect("an entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "dump"))
        .collect();
    dumps.sort();
    dumps.pop().expect("a backup was taken")
}

/// The scratch databases of `verify --deep` for this test's database, by name.
fn own_scratch_databases(db: &Db) -> String {
    db.psql(
        "SELECT coalesce(string_agg(datname, ','), '') FROM pg_database WHERE starts_with(datname, \
         'vamsa_verify_' || (SELECT oid FROM pg_database WHERE datname = current_database()) || '_')",
    )
}

/// Everything `verify` could write: the catalog, the tracking rows, our history and schema
/// record, and the scratch databases of the cluster.
fn written(db: &Db) -> String {
    let ours = db.psql(
        "SELECT (SELECT count(*) FROM vamsa_migrate.runs) || ' ' || \
         (SELECT md5(string_agg(t::text, ',')) FROM vamsa_migrate.schema_record t)",
    );
    let scratch = own_scratch_databases(db);
    format!(
        "{} {:?} {ours} {scratch}",
        db.catalog_fingerprint(),
        db.rows()
    )
}

#[test]
fn all_checks_pass_for_a_role_that_may_only_read_and_nothing_is_written() {
    let (db, f) = migrated();
    let before = written(&db);
    // A role that may only read: any write of verify's would fail (SQLSTATE 42501).
    let role = format!("{}_reader", db.name);
    db.psql(&format!(
        "CREATE ROLE \"{role}\" LOGIN; \
         GRANT USAGE ON SCHEMA public, drizzle, vamsa_migrate TO \"{role}\"; \
         GRANT SELECT ON ALL TABLES IN SCHEMA public, drizzle, vamsa_migrate TO \"{role}\""
    ));
    let url = db.url().replace("user=postgres", &format!("user={role}"));
    let mut c = db.cli(f.path());
    c.database_url(&url).arg("verify");
    let run = c.run();
    run.ok();
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{}", run.stdout);
    assert_eq!(lines[0], "migrations: ok (2 applied, none pending)");
    // Compared with the record this database has (its time), not skipped.
    let recorded_at = db.psql(
        "SELECT to_char(recorded_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') FROM vamsa_migrate.schema_record",
    );
    assert_eq!(
        lines[1],
        format!("schema: ok (no change outside migrations since the last run recorded it, {recorded_at} UTC)")
    );
    let dump = newest_dump(&db);
    assert!(
        lines[2].starts_with(&format!("backup: ok ({}, ", dump.display())),
        "{}",
        run.stdout
    );
    assert_eq!(lines[3], "Verified: all checks passed.");
    assert_eq!(run.stderr, "");
    assert_eq!(written(&db), before);

    // The same role sees a hand change: its schema check compares, with what it may read.
    db.psql("ALTER TABLE persons ADD COLUMN nickname text");
    let run = c.run();
    run.code(4);
    assert!(
        run.stderr
            .contains("  + column public.persons.nickname text\n"),
        "{}",
        run.stderr
    );
}

#[test]
fn a_hand_change_fails_the_schema_check_with_its_diff_line() {
    let (db, f) = migrated();
    db.psql("ALTER TABLE persons ADD COLUMN nickname text");
    let run = verify(&db, f.path(), &[]);
    run.code(4);
    assert!(
        run.stderr.contains(
            "schema: FAILED: the schema was changed outside migrations since the last run (recorded "
        ) && run.stderr.contains("  + column public.persons.nickname text\n"),
        "{}",
        run.stderr
    );
    assert!(run.stdout.starts_with("migrations: ok ("), "{}", run.stdout);
    assert!(
        run.stderr.ends_with("Verify: 1 of 3 checks failed.\n"),
        "{}",
        run.stderr
    );
}

#[test]
fn a_pending_migration_fails_with_exit_3_and_an_edited_file_with_exit_4() {
    let (db, f) = migrated();
    f.write(&[
        ("0000_persons", 1000, PERSONS),
        ("0001_media", 2000, MEDIA),
        ("0002_tags", 3000, TAGS),
    ]);
    let run = verify(&db, f.path(), &[]);
    run.code(3);
    assert!(
        run.stderr.contains(
            "migrations: FAILED: 1 pending: 0002_tags.sql; next step: apply them: `vamsa-migrate migrate`"
        ),
        "{}",
        run.stderr
    );

    f.write(&[
        ("0000_persons", 1000, "-- edited\n"),
        ("0001_media", 2000, MEDIA),
    ]);
    let run = verify(&db, f.path(), &[]);
    run.code(4);
    assert!(
        run.stderr.contains(
            "migrations: FAILED: the folder and the tracking table disagree (1 at fault); next step: `vamsa-migrate status`"
        ) && run.stderr.contains("\n  edited 0000_persons.sql ("),
        "{}",
        run.stderr
    );
}

#[test]
fn no_backup_fails_with_the_backup_command_as_next_step_unless_backups_are_off() {
    let db = Db::new();
    let f = Folder::new(&[("0000_persons", 1000, PERSONS)]);
    db.run(f.path(), &["migrate", "--no-backup"]).ok();
    let run = verify(&db, f.path(), &[]);
    run.code(1);
    assert!(
        run.stderr.contains(&format!(
            "backup: FAILED: no backup of the database {} in {}; next step: take one: `vamsa-migrate backup`",
            db.name,
            db.backups.path().display()
        )),
        "{}",
        run.stderr
    );

    let mut c = db.cli(f.path());
    c.env("VAMSA_MIGRATE_BACKUP_ENABLED", "false").arg("verify");
    let run = c.run();
    run.ok();
    assert!(
        run.stdout
            .contains("backup: skipped: backups off (backup_enabled = false)\n"),
        "{}",
        run.stdout
    );
}

#[test]
fn a_truncated_backup_fails_naming_pg_restore_list() {
    let (db, f) = migrated();
    let dump = newest_dump(&db);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&dump)
        .expect("open the dump");
    file.set_len(100).expect("truncate the dump");
    let run = verify(&db, f.path(), &[]);
    run.code(1);
    assert!(
        run.stderr.contains(&format!(
            "backup: FAILED: {} does not read back: pg_restore --list failed: pg_restore: error: ",
            dump.display()
        )) && run
            .stderr
            .contains("next step: take a new backup: `vamsa-migrate backup`"),
        "{}",
        run.stderr
    );
}

#[test]
fn deep_restores_the_newest_backup_into_a_scratch_database_and_drops_it() {
    let (db, f) = migrated();
    let run = verify(&db, f.path(), &["--deep"]);
    run.ok();
    assert!(
        run.stdout
            .contains("; restored into a scratch database (dropped since): 1 tracking row)\n"),
        "{}",
        run.stdout
    );
    assert_eq!(own_scratch_databases(&db), "");

    // A dump named as taken before 0001_media (so after 0000_persons) whose tracking table is
    // empty does not hold what its name says: the restored copy is checked, not only the file.
    db.psql("DELETE FROM drizzle.__drizzle_migrations");
    cli()
        .arg("backup")
        .database_url(&db.url())
        .backup_dir(db.backups.path())
        .run()
        .ok();
    let manual = newest_dump(&db);
    let name = manual
        .to_string_lossy()
        .replace("-manual.dump", "-before-0001_media.dump");
    std::fs::rename(&manual, &name).expect("rename the dump");
    let run = verify(&db, f.path(), &["--deep"]);
    run.code(1);
    assert!(
        run.stderr.contains(
            "backup: FAILED: the newest backup restored, but its tracking table \"drizzle\".\"__drizzle_migrations\" is empty, though it was taken before 0001_media"
        ),
        "{}",
        run.stderr
    );
    assert_eq!(own_scratch_databases(&db), "");
}

/// A table whose CHECK waits for ever in `verify`'s scratch copies (and passes elsewhere): the
/// restore's COPY of its row holds there until the scratch database is dropped.
const HELD: &str = "CREATE FUNCTION \"hold_in_copies\"(x integer) RETURNS boolean LANGUAGE plpgsql AS $$ BEGIN \
    WHILE starts_with(current_database(), 'vamsa_verify_') LOOP PERFORM pg_sleep(0.02); END LOOP; RETURN true; END $$;\n\
    --> statement-breakpoint\n\
    CREATE TABLE \"held\" (\"x\" integer CHECK (\"hold_in_copies\"(\"x\")));\n\
    --> statement-breakpoint\n\
    INSERT INTO \"held\" VALUES (1);\n";

#[test]
fn sigterm_during_the_deep_restore_drops_the_scratch_database() {
    let db = Db::new();
    let f = Folder::new(&[("0000_persons", 1000, PERSONS), ("0001_held", 2000, HELD)]);
    db.run(f.path(), &["migrate"]).ok();
    cli()
        .arg("backup")
        .database_url(&db.url())
        .backup_dir(db.backups.path())
        .run()
        .ok();
    let c = {
        let mut c = db.cli(f.path());
        c.args(["verify", "--deep"]);
        c
    };
    let mut child = c
        .command()
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start vamsa-migrate");
    let oid = db.psql("SELECT oid FROM pg_database WHERE datname = current_database()");
    eventually("the restore's COPY held in the scratch database", || {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("verify ended first ({status})");
        }
        db.psql(&format!(
            "SELECT count(*) FROM pg_stat_activity WHERE starts_with(datname, 'vamsa_verify_{oid}_') \
             AND query LIKE 'COPY public.held%'"
        )) != "0"
    });
    assert_ne!(own_scratch_databases(&db), "");
    let pid = i32::try_from(child.id()).expect("a pid fits in pid_t");
    kill(Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM).expect("signal our child");
    let run = Run::from(child.wait_with_output().expect("wait for verify"));
    run.code(143);
    assert!(
        run.stderr
            .contains("Error: stopped by SIGTERM; nothing was changed"),
        "{}",
        run.stderr
    );
    assert_eq!(own_scratch_databases(&db), "", "{}", run.stderr);
}

#[test]
fn json_is_one_object_with_each_checks_result() {
    let (db, f) = migrated();
    db.psql("ALTER TABLE persons ADD COLUMN nickname text");
    let run = verify(&db, f.path(), &["--format", "json"]);
    run.code(4);
    let json: serde_json::Value = serde_json::from_str(&run.stdout).expect("one JSON object");
    assert_eq!(json["ok"], false);
    let checks = json["checks"].as_array().expect("checks");
    let names: Vec<&str> = checks.iter().filter_map(|c| c["check"].as_str()).collect();
    assert_eq!(names, ["migrations", "schema", "backup"]);
    assert_eq!(checks[0]["result"], "ok");
    assert_eq!(checks[1]["result"], "failed");
    assert!(checks[1]["next_step"]
        .as_str()
        .is_some_and(|s| !s.is_empty()));
    assert_eq!(
        checks[1]["details"][0],
        "+ column public.persons.nickname text"
    );
    assert_eq!(checks[2]["result"], "ok");
    assert!(checks[2]["summary"].as_str().is_some());
}

/// A folder to use as PG_BIN_DIR whose `pg_restore` dies of SIGSEGV, as pg_restore 15 did on a
/// corrupted dump, printing nothing.
fn crashing_pg_restore() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("a folder for the shim");
    let shim = dir.path().join("pg_restore");
    std::fs::write(&shim, "#!/bin/sh\nulimit -c 0\nkill -SEGV $$\n").expect("write the shim");
    std::fs::set_permissions(&shim, std::fs::Permissions::from_mode(0o755))
        .expect("make the shim executable");
    dir
}

#[test]
fn pg_restore_killed_by_a_signal_is_named_with_the_signal() {
    let (db, f) = migrated();
    let shim = crashing_pg_restore();
    let mut c = db.cli(f.path());
    c.env("PG_BIN_DIR", shim.path()).arg("verify");
    let run = c.run();
    run.code(1);
    assert!(
        run.stderr.contains(&format!(
            "backup: FAILED: {} does not read back: pg_restore --list failed: pg_restore was killed by signal 11 (SIGSEGV); next step: take a new backup",
            newest_dump(&db).display()
        )),
        "{}",
        run.stderr
    );
}

/// Takes a `backup` of `db` (so its newest dump, by name), then writes in its place what
/// `pg_dump -Fc ARGS` of the database `of` writes.
fn replace_newest_with(db: &Db, of: &Db, args: &[&str]) -> PathBuf {
    cli()
        .arg("backup")
        .database_url(&db.url())
        .backup_dir(db.backups.path())
        .run()
        .ok();
    let dump = newest_dump(db);
    let out = std::process::Command::new(db.cluster.program("pg_dump"))
        .arg("-Fc")
        .arg("-f")
        .arg(&dump)
        .args(args)
        .args(["-d", &of.url()])
        .output()
        .expect("run pg_dump");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    dump
}

#[test]
fn a_dump_of_another_database_under_this_ones_name_fails_as_restore_refuses_it() {
    let (db, f) = migrated();
    let other = Db::new();
    other.psql("CREATE TABLE elsewhere (id integer); INSERT INTO elsewhere VALUES (1)");
    let dump = replace_newest_with(&db, &other, &[]);
    for extra in [&[][..], &["--deep"][..]] {
        let run = verify(&db, f.path(), extra);
        run.code(1);
        assert!(
            run.stderr.contains(&format!(
                "backup: FAILED: {} is a dump of the database {}, not of {} (its header says so, whatever its file is called): `vamsa-migrate restore` refuses it; next step: move it out of backup_dir",
                dump.display(),
                other.name,
                db.name
            )),
            "{}",
            run.stderr
        );
    }
    assert_eq!(own_scratch_databases(&db), "");
}

#[test]
fn a_schema_only_dump_fails_as_holding_no_data() {
    let (db, f) = migrated();
    let dump = replace_newest_with(&db, &db, &["--schema-only"]);
    for extra in [&[][..], &["--deep"][..]] {
        let run = verify(&db, f.path(), extra);
        run.code(1);
        assert!(
            run.stderr.contains(&format!(
                "backup: FAILED: {} holds no data (taken with --schema-only?): it lists the tracking table \"drizzle\".\"__drizzle_migrations\" but not its data; next step: take a backup with the data: `vamsa-migrate backup`",
                dump.display()
            )),
            "{}",
            run.stderr
        );
    }
    // Without the tracking table (only the application's schema), no data at all still fails.
    let dump = replace_newest_with(&db, &db, &["--schema-only", "--schema", "public"]);
    let run = verify(&db, f.path(), &[]);
    run.code(1);
    assert!(
        run.stderr.contains(&format!(
            "backup: FAILED: {} holds no data (taken with --schema-only?): it lists tables but no TABLE DATA;",
            dump.display()
        )),
        "{}",
        run.stderr
    );
    assert_eq!(own_scratch_databases(&db), "");
}

#[test]
fn deep_fails_a_dump_without_tracking_rows_when_the_live_table_has_them() {
    let (db, f) = migrated();
    // A manual dump taken while the tracking table was empty; its rows are back since.
    db.psql(
        "CREATE TABLE public.saved AS SELECT * FROM drizzle.__drizzle_migrations; \
         DELETE FROM drizzle.__drizzle_migrations",
    );
    cli()
        .arg("backup")
        .database_url(&db.url())
        .backup_dir(db.backups.path())
        .run()
        .ok();
    db.psql(
        "INSERT INTO drizzle.__drizzle_migrations SELECT * FROM public.saved; \
         DROP TABLE public.saved",
    );
    // It reads back and lists the tracking table's data: only the restored copy tells.
    verify(&db, f.path(), &[]).ok();
    let run = verify(&db, f.path(), &["--deep"]);
    run.code(1);
    assert!(
        run.stderr.contains(
            "backup: FAILED: the newest backup restored, but it has no tracking rows while the live table \"drizzle\".\"__drizzle_migrations\" has 2: restoring it would undo every applied migration; next step: take a new backup"
        ),
        "{}",
        run.stderr
    );
    assert_eq!(own_scratch_databases(&db), "");
}

#[test]
fn without_a_recorded_schema_the_schema_check_is_skipped_saying_why() {
    let (db, f) = migrated();
    // A record an earlier version wrote (without the catalogs' fingerprint) is not compared with.
    db.psql("UPDATE vamsa_migrate.schema_record SET catalog_fingerprint = NULL");
    let run = verify(&db, f.path(), &[]);
    run.ok();
    assert!(
        run.stdout.contains(
            "\nschema: skipped: the schema was recorded by an earlier version of vamsa-migrate, so nothing was compared (the next run that applies a migration records it again)\n"
        ),
        "{}",
        run.stdout
    );
    // As on a database only Drizzle's migrator ran on: no schema vamsa_migrate.
    db.psql("DROP SCHEMA vamsa_migrate CASCADE");
    let run = verify(&db, f.path(), &[]);
    run.ok();
    assert!(
        run.stdout.contains(
            "\nschema: skipped: no schema recorded, so nothing was compared (a run by vamsa-migrate that applies a migration, or a restore, records it; none has here yet, e.g. only Drizzle's migrator ran)\n"
        ),
        "{}",
        run.stdout
    );
    let run = verify(&db, f.path(), &["--format", "json"]);
    run.ok();
    let json: serde_json::Value = serde_json::from_str(&run.stdout).expect("one JSON object");
    assert_eq!(json["ok"], true);
    assert_eq!(json["checks"][1]["check"], "schema");
    assert_eq!(json["checks"][1]["result"], "skipped");
    assert!(
        json["checks"][1]["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("no schema recorded, so nothing was compared")),
        "{json}"
    );

    // A role that may not create schema vamsa_migrate: its runs record nothing (history off).
    let role = format!("{}_nocreate", db.name);
    db.psql(&format!(
        "CREATE ROLE \"{role}\" LOGIN; GRANT USAGE ON SCHEMA drizzle TO \"{role}\"; \
         GRANT SELECT ON ALL TABLES IN SCHEMA drizzle TO \"{role}\""
    ));
    let url = db.url().replace("user=postgres", &format!("user={role}"));
    let mut c = db.cli(f.path());
    c.database_url(&url).arg("verify");
    let run = c.run();
    run.ok();
    assert!(
        run.stdout.contains(&format!(
            "\nschema: skipped: no schema recorded, so nothing was compared (runs record it with the run history, which is off for this role: the role may not create schemas in this database; once an admin runs CREATE SCHEMA \"vamsa_migrate\" AUTHORIZATION \"{role}\"; the next run that applies a migration records it)\n"
        )),
        "{}",
        run.stdout
    );
}

#[test]
fn json_when_it_cannot_connect_is_the_documented_object_with_the_error_report() {
    let db = Db::new();
    let f = Folder::new(&[("0000_persons", 1000, PERSONS)]);
    let url = db.url().replace(
        &format!("dbname={}", db.name),
        &format!("dbname={}_missing", db.name),
    );
    let run_with = |extra: &[&str]| {
        let mut c = db.cli(f.path());
        c.database_url(&url).arg("verify").args(extra);
        c.run()
    };
    let human = run_with(&[]);
    assert!(human.stderr.contains("does not exist"), "{}", human.stderr);
    let run = run_with(&["--format", "json"]);
    assert_eq!(run.code, human.code, "{}", run.stdout);
    assert_ne!(run.code, 0);
    let json: serde_json::Value = serde_json::from_str(&run.stdout).expect("one JSON object");
    assert_eq!(json["ok"], false, "{json}");
    let checks = json["checks"].as_array().expect("checks");
    assert_eq!(checks.len(), 1, "{json}");
    assert_eq!(checks[0]["check"], "connection");
    assert_eq!(checks[0]["result"], "failed");
    assert!(
        checks[0]["why"]
            .as_str()
            .is_some_and(|w| w.contains("does not exist")),
        "{json}"
    );
    assert_eq!(checks[0]["error"]["message"], checks[0]["why"]);
    assert!(checks[0]["error"]["kind"].is_string(), "{json}");
}

/// A fresh install: the first run's backup is of an empty database (taken before the folder's
/// first migration), so its table of contents is empty, and that is right: the daily timer
/// must not fail until the next release.
#[test]
fn the_first_runs_backup_of_an_empty_database_passes() {
    let db = Db::new();
    let f = Folder::new(&[("0000_persons", 1000, PERSONS)]);
    db.run(f.path(), &["migrate"]).ok();
    for extra in [&[][..], &["--deep"][..]] {
        let run = verify(&db, f.path(), extra);
        run.ok();
        assert!(
            run.stdout.contains("backup: ok ("),
            "{extra:?}: {}",
            run.stdout
        );
    }
}
