//! The run history (`vamsa_migrate.runs`): one row per run that changed something or failed,
//! written after the run whatever its outcome; `history` prints it, `status` (CLI JSON and the
//! daemon's answer) carries the last run; without the privilege the run works and says so;
//! Drizzle's own migrators (0.45, 1.0) keep working on such a database.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

use crate::interop_v1::Drizzle;
use crate::support::*;

const PERSONS: &str =
    "CREATE TABLE \"persons\" (\"id\" serial PRIMARY KEY, \"name\" text NOT NULL);\n";
const MEDIA: &str = "CREATE TABLE \"media\" (\"id\" serial PRIMARY KEY);\n";
const BROKEN: &str = "ALTER TABLE \"persons\" ADD COLUMN \"name\" text;\n";

/// `vamsa-migrate history ARGS` on this database (it reads no folder).
fn history_cli(db: &Db, args: &[&str]) -> Run {
    let mut c = cli();
    c.database_url(&db.url()).arg("history").args(args);
    c.run()
}

/// `history --format json`, newest first.
fn history(db: &Db) -> Vec<Value> {
    let run = history_cli(db, &["--format", "json"]);
    run.ok();
    run.stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(["-c", "user.name=t", "-c", "user.email=t@example.org", "-C"])
        .arg(dir)
        .args(args)
        .output()
        .expect("run git");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn each_run_that_changes_or_fails_is_recorded_with_commit_timings_backup_and_sqlstate() {
    let db = Db::new();
    let f = Folder::new(&[("0000_persons", 1000, PERSONS), ("0001_media", 2000, MEDIA)]);
    git(f.path(), &["init", "-q"]);
    git(f.path(), &["add", "."]);
    git(f.path(), &["commit", "-q", "-m", "first"]);
    let commit = git(f.path(), &["rev-parse", "HEAD"]);

    assert_eq!(
        history_cli(&db, &[]).ok().stdout,
        "No runs recorded (the history starts with the first run that changes the database).\n"
    );
    db.run(f.path(), &["migrate"]).ok();
    // Nothing to do: no row.
    db.run(f.path(), &["migrate"]).ok();
    let runs = history(&db);
    assert_eq!(runs.len(), 1, "{runs:?}");
    let run = &runs[0];
    assert_eq!(run["origin"]["kind"], "cli");
    assert_eq!(run["ok"], true);
    assert_eq!(run["role"], "postgres");
    assert_eq!(run["source_commit"], commit.as_str());
    let applied: Vec<&str> = run["migrations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["migration"].as_str().unwrap())
        .collect();
    assert_eq!(applied, ["0000_persons.sql", "0001_media.sql"]);
    assert!(run["migrations"][0]["ms"].is_u64());
    let backup = run["backup"].as_str().expect("the backup path");
    assert!(Path::new(backup).is_file(), "{backup}");
    assert!(Path::new(backup).starts_with(db.backups.path()));

    f.write(&[
        ("0000_persons", 1000, PERSONS),
        ("0001_media", 2000, MEDIA),
        ("0002_broken", 3000, BROKEN),
    ]);
    db.run(f.path(), &["migrate", "--transaction", "all"])
        .code(1);
    let runs = history(&db);
    assert_eq!(runs.len(), 2, "{runs:?}");
    let failed = &runs[0];
    assert_eq!(failed["ok"], false);
    assert_eq!(failed["error"]["kind"], "apply");
    assert_eq!(failed["error"]["sqlstate"], "42701");
    assert_eq!(failed["error"]["migration"], "0002_broken.sql");
    assert_eq!(failed["migrations"], serde_json::json!([]));
    assert!(failed["id"].as_i64() > runs[1]["id"].as_i64());

    let human = history_cli(&db, &["--limit", "1"]);
    human.ok();
    let first = human.stdout.lines().next().unwrap_or_default();
    assert!(
        first.starts_with(&format!("Run {}: ", failed["id"])),
        "{}",
        human.stdout
    );
    assert!(
        first.ends_with(", command line, FAILED in 0002_broken.sql (SQLSTATE 42701)"),
        "{}",
        human.stdout
    );
    assert!(
        human.stdout.contains(&format!("  source: git {commit}\n")),
        "{}",
        human.stdout
    );
    assert!(
        !human.stdout.contains("0001_media.sql ("),
        "one run only: {}",
        human.stdout
    );

    let status = db.run(f.path(), &["status", "--format", "json"]);
    let status: Value = serde_json::from_str(&status.stdout).expect("status JSON");
    assert_eq!(status["last_run"]["id"], failed["id"]);
}

#[test]
fn a_role_without_the_privilege_migrates_and_is_told_history_is_off() {
    let db = Db::new();
    let role = format!("{}_app", db.name);
    // The role owns Drizzle's schema but may not create schemas in the database.
    db.psql(&format!(
        "CREATE ROLE \"{role}\" LOGIN; GRANT USAGE, CREATE ON SCHEMA public TO \"{role}\"; \
         CREATE SCHEMA drizzle AUTHORIZATION \"{role}\""
    ));
    let f = Folder::new(&[("0000_persons", 1000, PERSONS)]);
    let url = db.url().replace("user=postgres", &format!("user={role}"));
    let mut cli = db.cli(f.path());
    cli.database_url(&url).arg("migrate");
    let run = cli.run();
    run.ok();
    assert!(
        run.stderr.contains(&format!(
            "run history is off: the role may not create schemas in this database; to keep it, an admin runs: CREATE SCHEMA \"vamsa_migrate\" AUTHORIZATION \"{role}\";"
        )),
        "{}",
        run.stderr
    );
    assert!(db.table_exists("persons"));
    assert!(!db.table_exists("vamsa_migrate.runs"));

    // With the schema given to it, the next run is recorded.
    db.psql(&format!(
        "CREATE SCHEMA vamsa_migrate AUTHORIZATION \"{role}\""
    ));
    f.write(&[("0000_persons", 1000, PERSONS), ("0001_media", 2000, MEDIA)]);
    let run = cli.run();
    run.ok();
    assert!(!run.stderr.contains("run history"), "{}", run.stderr);
    let runs = history(&db);
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0]["role"], role.as_str());
}

#[test]
fn the_daemon_records_start_up_and_trigger_runs_and_status_carries_the_last() {
    let db = Db::new();
    let f = Folder::new(&[("0000_persons", 1000, PERSONS)]);
    let mut d = Daemon::start(cli(), &db.url(), f.path(), "apply = \"on-trigger\"");
    d.ready();
    f.write(&[("0000_persons", 1000, PERSONS), ("0001_media", 2000, MEDIA)]);
    d.trigger(&[]).ok();
    let runs = history(&db);
    assert_eq!(runs.len(), 2, "{runs:?}");
    assert_eq!(runs[1]["origin"], serde_json::json!({"kind": "startup"}));
    let trigger = &runs[0]["origin"];
    assert_eq!(trigger["kind"], "trigger");
    assert_eq!(trigger["uid"], 0);
    assert_eq!(trigger["user"], "root");
    assert!(trigger["pid"].is_i64(), "{trigger}");

    let answer = d.request(b"{\"command\":\"status\"}\n");
    let status = answer
        .iter()
        .find(|e| e["event"] == "status")
        .expect("a status line");
    assert_eq!(status["status"]["last_run"]["id"], runs[0]["id"]);
    assert_eq!(status["status"]["last_run"]["origin"], *trigger);
}

#[test]
fn drizzles_migrators_045_and_1_0_keep_working_on_a_database_with_history() {
    let full = [("0000_persons", 1000, PERSONS), ("0001_media", 2000, MEDIA)];
    for drizzle in [Drizzle::V045, Drizzle::V1] {
        let f = Folder::new(&full[..1]);
        if let Drizzle::V1 = drizzle {
            db_less_convert(f.path());
        }
        let db = Db::new();
        db.run(f.path(), &["migrate"]).ok();
        let recorded = db.psql("SELECT count(*) FROM vamsa_migrate.runs");
        assert_eq!(recorded, "1");
        // Drizzle applies the next migration, then finds nothing to do.
        let f = Folder::new(&full);
        if let Drizzle::V1 = drizzle {
            db_less_convert(f.path());
        }
        for _ in 0..2 {
            if let Err(e) = drizzle.migrate(&db, f.path()) {
                panic!("{drizzle:?}: {e}");
            }
        }
        assert!(db.table_exists("media"), "{drizzle:?}");
        assert_eq!(
            db.psql("SELECT count(*) FROM drizzle.__drizzle_migrations"),
            "2"
        );
        assert_eq!(db.psql("SELECT count(*) FROM vamsa_migrate.runs"), recorded);
        let status = db.run(f.path(), &["status"]);
        status.ok();
    }
}

/// Our `convert --write`: the folder in Drizzle 1.0's layout.
fn db_less_convert(dir: &Path) {
    let mut c = cli();
    c.migrations_dir(dir).args(["convert", "--write"]);
    c.run().ok();
}

/// `restore` is a run that changes the database: one row, origin `restore`, the dump restored
/// as its backup. The schema it leaves is recorded again, so `status` does not take the
/// restore for a hand change (the dump holds no `vamsa_migrate` schema: its record was the
/// release's).
#[test]
fn a_restore_is_recorded_with_origin_restore_and_is_not_reported_as_drift() {
    let db = Db::new();
    let f = Folder::new(&[("0000_persons", 1000, PERSONS)]);
    db.run(f.path(), &["migrate"]).ok();
    f.write(&[("0000_persons", 1000, PERSONS), ("0001_media", 2000, MEDIA)]);
    db.run(f.path(), &["migrate"]).ok();
    let restore = db
        .cli(f.path())
        .args(["restore", "--before", "0001_media", "--yes"])
        .run();
    restore.ok();
    assert!(!db.table_exists("media"));
    let runs = history(&db);
    assert_eq!(runs.len(), 3, "{runs:?}");
    assert_eq!(runs[0]["origin"], serde_json::json!({"kind": "restore"}));
    assert_eq!(runs[0]["ok"], true);
    let dump = runs[0]["backup"].as_str().expect("the dump restored");
    assert!(dump.ends_with("-before-0001_media.dump"), "{dump}");

    let status = db.run(f.path(), &["status"]);
    status.code(3);
    assert!(
        !status.stdout.contains("outside migrations"),
        "{}",
        status.stdout
    );
}

/// A run whose only change is the tracking table's upgrade to Drizzle 1.0's shape (the folder
/// converted, nothing pending) gets its row.
#[test]
fn a_run_that_only_upgrades_the_tracking_table_is_recorded() {
    let db = Db::new();
    let f = Folder::new(&[("0000_persons", 1000, PERSONS)]);
    db.run(f.path(), &["migrate"]).ok();
    db_less_convert(f.path());
    db.run(f.path(), &["migrate"]).ok();
    assert_eq!(
        db.psql("SELECT count(*) FROM drizzle.__drizzle_migrations WHERE name IS NOT NULL"),
        "1"
    );
    let runs = history(&db);
    assert_eq!(runs.len(), 2, "{runs:?}");
    assert_eq!(runs[0]["ok"], true);
    assert_eq!(runs[0]["migrations"], serde_json::json!([]));
    // Nothing more to do: no row.
    db.run(f.path(), &["migrate"]).ok();
    assert_eq!(history(&db).len(), 2);
}

/// A failed statement's summary is kept without its string constants: a `CREATE ROLE ...
/// PASSWORD '...'` that fails leaves no password in the history table or in `history`.
#[test]
fn a_failed_statements_password_is_not_kept_in_the_history() {
    let db = Db::new();
    let f = Folder::new(&[(
        "0000_role",
        1000,
        "CREATE ROLE \"leaky\" LOGIN PASSWORD 'TopSecret123' IN ROLE \"no_such_role_here\";\n",
    )]);
    let run = db.run(f.path(), &["migrate", "--no-backup"]);
    run.code(1);
    let rows = history(&db);
    assert_eq!(rows.len(), 1, "{rows:?}");
    let message = rows[0]["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("PASSWORD '…'"), "{message}");
    // A typo leaves the literal outside any PASSWORD: the server's syntax error echoes it.
    f.write(&[(
        "0000_role",
        1000,
        "CREATE ROLE \"leaky\" LOGIN ENCRYPTED 'TopSecret456';\n",
    )]);
    db.run(f.path(), &["migrate", "--no-backup"]).code(1);
    let shown = history_cli(&db, &[]);
    let stored = db.psql("SELECT string_agg(error_message, ' ') FROM vamsa_migrate.runs");
    assert!(stored.contains("SQLSTATE 42601"), "{stored}");
    for text in [&shown.stdout, &shown.stderr, &stored, &message.to_string()] {
        assert!(
            !text.contains("TopSecret123") && !text.contains("TopSecret456"),
            "{text}"
        );
    }
}

#[test]
fn a_limit_of_0_is_refused_as_usage_before_connecting() {
    // No database: the argument is refused at parse time (exit 2), before any connection,
    // rather than answered "No runs recorded", which would be untrue.
    let mut c = cli();
    c.args(["history", "--limit", "0"]);
    let run = c.run();
    run.code(2);
    assert!(
        run.stderr
            .contains("invalid value '0' for '--limit <N>': 0 is not in 1..=4294967295"),
        "{}",
        run.stderr
    );
    assert_eq!(run.stdout, "");
}
