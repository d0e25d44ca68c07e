//! Automatic backups with the real pg_dump and pg_restore.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::{cli, root_or_skip, Cli, Db, Folder, Run};

const A: &str = "CREATE TABLE persons (id serial PRIMARY KEY, name text NOT NULL);\n";
const B: &str = "ALTER TABLE persons ADD COLUMN born date;--> statement-breakpoint\nCREATE TABLE media (id serial PRIMARY KEY, person_id int REFERENCES persons(id));\n";

fn dumps(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| rd.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

fn schema(db: &Db, name: &str) -> String {
    let out = Command::new(db.cluster.program("pg_dump"))
        .args([
            "--schema-only",
            "--no-owner",
            // The run history: dumps leave it out, a restore keeps it.
            "--exclude-schema=vamsa_migrate",
            "-h",
            "127.0.0.1",
            "-p",
            &db.cluster.port().to_string(),
            "-U",
            "postgres",
            name,
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.starts_with("\\restrict") && !l.starts_with("\\unrestrict"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn a_backup_precedes_a_run_with_pending_migrations_and_restores_the_old_state() {
    let db = Db::new();
    let f = Folder::new(&[("0000_a", 1000, A)]);
    // Let vamsa-migrate create the folder itself.
    std::fs::remove_dir(db.backups.path()).unwrap();
    db.run(f.path(), &["migrate"]).ok();
    db.psql("INSERT INTO persons (name) SELECT 'p' || g FROM generate_series(1, 250) g");
    let before = schema(&db, &db.name);
    assert_eq!(
        dumps(db.backups.path()).len(),
        1,
        "the first run took one too"
    );
    let mode = std::fs::metadata(db.backups.path())
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o700);

    f.write(&[("0000_a", 1000, A), ("0001_b", 2000, B)]);
    let run = db.run(f.path(), &["migrate"]);
    run.ok();
    assert!(
        run.stderr
            .contains("Backing up the database before 1 migration(s)..."),
        "{}",
        run.stderr
    );
    let files = dumps(db.backups.path());
    assert_eq!(files.len(), 2);
    let newest = files
        .iter()
        .find(|p| p.to_str().unwrap().ends_with("-before-0001_b.dump"))
        .expect("named after the first pending tag");
    assert!(
        run.stderr
            .contains(&format!("Backup: {}", newest.display())),
        "{}",
        run.stderr
    );
    assert!(newest
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .starts_with(&format!("{}-", db.name)));
    assert_eq!(
        std::fs::metadata(newest).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // Nothing pending: no backup.
    db.run(f.path(), &["migrate"]).ok();
    assert_eq!(dumps(db.backups.path()).len(), 2);

    // Restoring it gives the pre-migration schema and data.
    let restored = format!("{}_restored", db.name);
    db.cluster.create_database(&restored).unwrap();
    let out = Command::new(db.cluster.program("pg_restore"))
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &db.cluster.port().to_string(),
            "-U",
            "postgres",
            "-d",
            &restored,
        ])
        .arg(newest)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(schema(&db, &restored), before);
    assert_eq!(
        db.cluster
            .psql(&restored, "SELECT count(*) FROM persons")
            .unwrap(),
        "250"
    );
    assert_eq!(
        db.cluster
            .psql(
                &restored,
                "SELECT count(*) FROM drizzle.__drizzle_migrations"
            )
            .unwrap(),
        "1"
    );
}

#[test]
fn retention_keeps_the_newest_n_and_never_touches_other_files() {
    let db = Db::new();
    std::fs::write(db.backups.path().join("nightly.dump"), "not ours").unwrap();
    // Another database's dump in the same folder is that database's business.
    std::fs::write(
        db.backups
            .path()
            .join("otherdb-20200101T000000.000Z-before-0000_x.dump"),
        "x",
    )
    .unwrap();
    std::fs::write(db.backups.path().join("notes.txt"), "keep me").unwrap();
    let mut entries: Vec<(String, i64, String)> = Vec::new();
    for i in 0..4 {
        entries.push((
            format!("000{i}_t{i}"),
            1000 + i as i64,
            format!("CREATE TABLE t{i} (id int);"),
        ));
        let refs: Vec<(&str, i64, &str)> = entries
            .iter()
            .map(|(t, w, s)| (t.as_str(), *w, s.as_str()))
            .collect();
        let f = Folder::new(&refs);
        db.cli(f.path())
            .arg("migrate")
            .env("VAMSA_MIGRATE_BACKUP_KEEP", "2")
            .run()
            .ok();
        // Distinct timestamps (second resolution).
        std::thread::sleep(std::time::Duration::from_millis(1100));
    }
    let names: Vec<String> = dumps(db.backups.path())
        .iter()
        .map(|p| p.file_name().unwrap().to_str().unwrap().to_string())
        .collect();
    let ours: Vec<&String> = names
        .iter()
        .filter(|n| n.starts_with(&db.name) && n.contains("-before-"))
        .collect();
    assert_eq!(ours.len(), 2, "{names:?}");
    assert!(
        ours[0].ends_with("-before-0002_t2.dump") && ours[1].ends_with("-before-0003_t3.dump"),
        "{names:?}"
    );
    assert!(
        names.contains(&"nightly.dump".to_string()) && names.contains(&"notes.txt".to_string())
    );
    assert!(names.contains(&"otherdb-20200101T000000.000Z-before-0000_x.dump".to_string()));

    let list = cli().arg("backups").backup_dir(db.backups.path()).run();
    list.ok();
    assert_eq!(list.stdout.lines().count(), 3, "{}", list.stdout);
    assert!(
        list.stdout
            .lines()
            .next()
            .unwrap()
            .contains("before 0003_t3"),
        "{}",
        list.stdout
    );

    let manual = cli()
        .arg("backup")
        .database_url(&db.url())
        .backup_dir(db.backups.path())
        .env("VAMSA_MIGRATE_BACKUP_KEEP", "3")
        .run();
    manual.ok();
    assert!(manual.stdout.contains("-manual.dump"), "{}", manual.stdout);
}

/// Runs `migrate` inside a private mount namespace where `prepare` (shell) has run first.
fn migrate_in_namespace(db: &Db, folder: &Path, backup_dir: &Path, prepare: &str) -> Run {
    let mut migrate = cli();
    migrate
        .arg("migrate")
        .database_url(&db.url())
        .migrations_dir(folder)
        .backup_dir(backup_dir);
    let cmd = migrate.command();
    let mut unshare = Command::new("unshare");
    unshare
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(format!("{prepare} && exec \"$0\" \"$@\""))
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => unshare.env(k, v),
            None => unshare.env_remove(k),
        };
    }
    Run::from(unshare.output().unwrap())
}

fn assert_nothing_applied_and_no_partial(db: &Db, dir: &Path) {
    assert!(
        !db.table_exists("persons"),
        "no migration may run without a backup"
    );
    assert_eq!(
        db.psql("SELECT count(*) FROM pg_namespace WHERE nspname = 'drizzle'"),
        "0"
    );
    assert_eq!(
        dumps(dir),
        Vec::<PathBuf>::new(),
        "a failed backup leaves no file"
    );
}

#[test]
fn a_read_only_backup_dir_stops_the_run() {
    if !root_or_skip("bind-mount the backup folder read-only in a private mount namespace") {
        return;
    }
    let db = Db::new();
    let f = Folder::new(&[("0000_a", 1000, A)]);
    let dir = db.backups.path();
    let run = migrate_in_namespace(
        &db,
        f.path(),
        dir,
        &format!(
            "mount --bind {0} {0} && mount -o remount,bind,ro {0}",
            dir.display()
        ),
    );
    run.code(1);
    assert!(
        run.stderr
            .contains("backup before migrating failed: backup_dir"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("Read-only file system"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("--no-backup"), "{}", run.stderr);
    assert_nothing_applied_and_no_partial(&db, dir);
}

#[test]
fn a_too_small_filesystem_stops_the_run_before_dumping() {
    if !root_or_skip("mount a small tmpfs in a private mount namespace") {
        return;
    }
    let db = Db::new();
    let f = Folder::new(&[("0000_a", 1000, A)]);
    let dir = db.backups.path();
    let run = migrate_in_namespace(
        &db,
        f.path(),
        dir,
        &format!(
            "mount -t tmpfs -o size=64k,mode=0700 tmpfs {}",
            dir.display()
        ),
    );
    run.code(1);
    assert!(
        run.stderr.contains("not enough free space in"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("backup_enabled = false"),
        "{}",
        run.stderr
    );
    assert_nothing_applied_and_no_partial(&db, dir);
}

#[test]
fn a_missing_pg_dump_stops_the_run_and_no_backup_skips_it() {
    let db = Db::new();
    let f = Folder::new(&[("0000_a", 1000, A)]);
    let run = migrate_cli(&db, f.path())
        .env("PATH", "/nonexistent")
        .env("PG_BIN_DIR", "/nonexistent")
        .run();
    run.code(1);
    assert!(
        run.stderr.contains("pg_dump was not found at /nonexistent/pg_dump (PG_BIN_DIR) (install postgresql-client matching the server version)"),
        "{}",
        run.stderr
    );
    assert_nothing_applied_and_no_partial(&db, db.backups.path());

    let run = migrate_cli(&db, f.path())
        .arg("--no-backup")
        .env("PATH", "/nonexistent")
        .run();
    run.ok();
    assert!(db.table_exists("persons"));
}

/// `migrate` against `db` and `folder`, backing up into the test's backup folder.
fn migrate_cli(db: &Db, folder: &Path) -> Cli {
    let mut migrate = db.cli(folder);
    migrate.arg("migrate");
    migrate
}

#[test]
fn the_password_reaches_pg_dump_through_a_private_file_not_its_command_line() {
    let db = Db::new();
    let f = Folder::new(&[("0000_a", 1000, A)]);
    // A pg_dump in front of the real one that records what it was given.
    let shim = tempfile::tempdir().unwrap();
    let record = shim.path().join("record");
    let real = Command::new("sh")
        .args(["-c", "command -v pg_dump"])
        .output()
        .unwrap();
    let real = String::from_utf8_lossy(&real.stdout).trim().to_string();
    std::fs::write(
        shim.path().join("pg_dump"),
        format!(
            "#!/bin/sh\n{{ tr '\\0' ' ' < /proc/$$/cmdline; echo; stat -L -c %a \"$PGPASSFILE\"; cat \"$PGPASSFILE\"; }} > {rec}\nexec {real} \"$@\"\n",
            rec = record.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        shim.path().join("pg_dump"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    let url = format!(
        "postgres://postgres:Sup3r-s3cret@127.0.0.1:{}/{}?sslmode=disable",
        db.cluster.port(),
        db.name
    );
    // The backup's pg_restore (checking the dump) from the same folder: the real one.
    std::os::unix::fs::symlink(
        db.cluster.program("pg_restore"),
        shim.path().join("pg_restore"),
    )
    .unwrap();
    let run = cli()
        .arg("migrate")
        .database_url(&url)
        .migrations_dir(f.path())
        .backup_dir(db.backups.path())
        .env("PG_BIN_DIR", shim.path())
        .run();
    run.ok();
    let recorded = std::fs::read_to_string(&record).unwrap();
    let mut lines = recorded.lines();
    let cmdline = lines.next().unwrap();
    assert!(cmdline.contains("--format=custom"), "{cmdline}");
    assert!(
        !cmdline.contains("Sup3r-s3cret"),
        "the password is on pg_dump's command line: {cmdline}"
    );
    assert_eq!(lines.next(), Some("600"), "{recorded}");
    assert_eq!(lines.next(), Some("*:*:*:*:Sup3r-s3cret"), "{recorded}");
    assert!(!run.stdout.contains("Sup3r-s3cret") && !run.stderr.contains("Sup3r-s3cret"));
}

#[test]
fn a_failed_migration_ends_with_the_restore_steps_for_this_backup() {
    let db = Db::new();
    let f = Folder::new(&[
        ("0000_a", 1000, A),
        ("0001_bad", 2000, "ALTER TABLE nope ADD COLUMN x int;"),
    ]);
    let run = db.run(f.path(), &["migrate"]);
    run.code(1);
    let dump = dumps(db.backups.path()).pop().expect("a backup was taken");
    let steps = format!(
        "pg_restore --clean --if-exists -d {} {}",
        db.name,
        dump.display()
    );
    assert!(
        run.stderr.contains(&steps),
        "expected {steps:?} in\n{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("stop the application") && run.stderr.contains("git checkout HEAD~1"),
        "{}",
        run.stderr
    );
}

#[test]
fn the_callers_libpq_environment_cannot_send_pg_dump_elsewhere() {
    let db = Db::new();
    let f = Folder::new(&[("0000_a", 1000, A)]);
    // Were these passed through, pg_dump would try another server and the run would stop.
    // (The URL sets host and port; what it leaves out, such as PGHOSTADDR or PGSERVICE, applies
    // to the whole run as to psql: tests/it/connect.rs.)
    let run = migrate_cli(&db, f.path())
        .env("PGPORT", "1")
        .env("PGHOST", "/nonexistent")
        .run();
    run.ok();
    assert_eq!(dumps(db.backups.path()).len(), 1, "{}", run.stderr);
    assert!(db.table_exists("persons"));
}

/// The `backup` command's failure is its own, not a migration's: it says the backup failed and
/// how to retry it, never "before migrating" or `--no-backup`.
#[test]
fn a_failed_backup_command_says_so_without_migration_advice() {
    let db = Db::new();
    let dir = db.backups.path();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let run = cli()
        .arg("backup")
        .database_url(&db.url())
        .backup_dir(dir)
        .run();
    run.code(1);
    assert!(
        run.stderr.contains("Error: backup failed: backup_dir"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("run `vamsa-migrate backup` again")
            && !run.stderr.contains("before migrating")
            && !run.stderr.contains("--no-backup"),
        "{}",
        run.stderr
    );
    assert!(dumps(dir).is_empty(), "{:?}", dumps(dir));
}
