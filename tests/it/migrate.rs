//! The engine and CLI end to end, against a real PostgreSQL.

use std::path::Path;

use crate::support::{self, eventually, Db, Folder};

const A: &str =
    "CREATE TABLE \"persons\" (\n\t\"id\" serial PRIMARY KEY,\n\t\"name\" text NOT NULL\n);\n";
const B: &str = "CREATE TABLE \"media\" (\"id\" serial PRIMARY KEY);--> statement-breakpoint\nALTER TABLE \"persons\" ADD COLUMN \"born\" date;\n";
const C: &str = "CREATE INDEX \"persons_name_idx\" ON \"persons\" (\"name\");\n";

fn abc() -> Folder {
    Folder::new(&[
        ("0000_init", 1000, A),
        ("0001_media", 2000, B),
        ("0002_index", 3000, C),
    ])
}

#[test]
fn migrate_prints_the_documented_lines_and_records_drizzle_rows() {
    let db = Db::new();
    let f = abc();
    let run = db.run(f.path(), &["migrate"]);
    run.ok();
    assert_eq!(
        run.stdout,
        "Running migrations...\nApplied: 0000_init.sql\nApplied: 0001_media.sql\nApplied: 0002_index.sql\nMigration complete.\n"
    );
    assert_eq!(
        db.rows(),
        vec![
            (support::sha256_hex(A.as_bytes()), 1000),
            (support::sha256_hex(B.as_bytes()), 2000),
            (support::sha256_hex(C.as_bytes()), 3000)
        ]
    );
    assert!(db.table_exists("persons_name_idx"));
    assert_eq!(db.psql("SELECT count(*) FROM information_schema.columns WHERE table_name = 'persons' AND column_name = 'born'"), "1");

    let again = db.run(f.path(), &["migrate"]);
    again.ok();
    assert_eq!(again.stdout, "No pending migrations.\n");
    assert_eq!(db.rows().len(), 3);
}

#[test]
fn dry_run_shows_statements_and_changes_nothing_in_the_catalog() {
    let db = Db::new();
    let f = abc();
    let before = db.catalog_fingerprint();
    let run = db.run(f.path(), &["migrate", "--dry-run"]);
    run.ok();
    assert_eq!(
        run.stdout,
        "Pending migrations:\n  0000_init.sql\n    - CREATE TABLE \"persons\" (...)\n  0001_media.sql\n    - CREATE TABLE \"media\" (...)\n    - ALTER TABLE \"persons\" ADD COLUMN \"born\" date\n  0002_index.sql\n    - CREATE INDEX \"persons_name_idx\" ON \"persons\" (...)\n\nNo changes were applied. Run 'vamsa-migrate migrate' to apply.\n"
    );
    assert_eq!(
        db.catalog_fingerprint(),
        before,
        "dry run changed the catalog"
    );
    assert_eq!(
        db.psql("SELECT count(*) FROM pg_namespace WHERE nspname = 'drizzle'"),
        "0"
    );

    db.run(f.path(), &["migrate"]).ok();
    let run = db.run(f.path(), &["migrate", "--dry-run"]);
    run.ok();
    assert_eq!(
        run.stdout,
        "No pending migrations. Database is up to date.\n"
    );
}

#[test]
fn vamsa_corpus_applies_in_journal_order() {
    let db = Db::new();
    let f = support::repo_folder("tests/data/vamsa-drizzle");
    db.psql("SELECT 1");
    let run = db.run(f.path(), &["migrate"]);
    run.ok();
    assert_eq!(
        run.stdout,
        "Running migrations...\nApplied: 0000_initial.sql\nApplied: 0001_grandfather_verified_users.sql\nMigration complete.\n"
    );
    let files = ["0000_initial.sql", "0001_grandfather_verified_users.sql"];
    let expected: Vec<(String, i64)> = files
        .iter()
        .zip([1769236042522_i64, 1707528000000])
        .map(|(file, when)| {
            (
                support::sha256_hex(&std::fs::read(f.path().join(file)).unwrap()),
                when,
            )
        })
        .collect();
    assert_eq!(db.rows(), expected);
    assert_eq!(
        db.psql("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"),
        "28"
    );
    // The journal's second `when` is older than the first: shown as a warning, not an error.
    assert!(
        run.stderr
            .contains("0001_grandfather_verified_users.sql has an older \"when\""),
        "{}",
        run.stderr
    );
}

#[test]
fn an_entry_older_than_the_newest_row_is_applied_and_flagged_where_drizzle_would_skip_it() {
    let db = Db::new();
    let full = support::repo_folder("tests/data/vamsa-drizzle");
    // First release: only 0000 in the journal.
    let first = support::repo_folder("tests/data/vamsa-drizzle");
    let journal = std::fs::read_to_string(first.path().join("meta/_journal.json")).unwrap();
    let cut = journal
        .find(",\n    {\n      \"idx\": 1")
        .expect("second entry");
    std::fs::write(
        first.path().join("meta/_journal.json"),
        format!("{}\n  ]\n}}\n", &journal[..cut]),
    )
    .unwrap();
    std::fs::remove_file(first.path().join("0001_grandfather_verified_users.sql")).unwrap();
    db.run(first.path(), &["migrate"]).ok();
    db.psql("INSERT INTO \"User\" (id, email, \"emailVerified\", \"passwordHash\", \"createdAt\", \"updatedAt\") SELECT 'u1', 'a@b.c', false, 'x', now(), now() WHERE EXISTS (SELECT 1 FROM information_schema.columns WHERE table_name='User' AND column_name='passwordHash')");

    let dry = db.run(full.path(), &["migrate", "--dry-run"]);
    dry.ok();
    assert!(dry.stdout.contains("0001_grandfather_verified_users.sql (older than the newest applied migration: Drizzle's own migrator would skip it)"), "{}", dry.stdout);
    let run = db.run(full.path(), &["migrate"]);
    run.ok();
    assert!(run.stdout.contains("Note: 0001_grandfather_verified_users.sql is older than the newest applied migration; Drizzle's own migrator would have skipped it silently."), "{}", run.stdout);
    assert!(run
        .stdout
        .contains("Applied: 0001_grandfather_verified_users.sql"));
    assert_eq!(db.rows().len(), 2);
}

fn assert_untouched(db: &Db) {
    assert_eq!(
        db.psql("SELECT count(*) FROM pg_namespace WHERE nspname = 'drizzle'"),
        "0",
        "the database was changed"
    );
    assert!(!db.table_exists("persons"));
}

#[test]
fn bad_folders_are_refused_with_the_file_named_and_nothing_changed() {
    let db = Db::new();
    let outside_dir = tempfile::tempdir().unwrap();
    let outside = outside_dir.path().join("outside.sql");
    type Breaker<'a> = Box<dyn Fn(&Path) + 'a>;
    let cases: Vec<(&str, Breaker, &str)> = vec![
        (
            "no journal",
            Box::new(|p: &Path| std::fs::remove_file(p.join("meta/_journal.json")).unwrap()),
            "meta/_journal.json: no migrations journal",
        ),
        (
            "invalid JSON",
            Box::new(|p: &Path| {
                std::fs::write(
                    p.join("meta/_journal.json"),
                    "{\"entries\": [\n  {\"idx\": 0,\n",
                )
                .unwrap()
            }),
            "meta/_journal.json:3:1: invalid journal",
        ),
        (
            "missing file",
            Box::new(|p: &Path| std::fs::remove_file(p.join("0001_media.sql")).unwrap()),
            "names 0001_media.sql, which does not exist",
        ),
        (
            "duplicate idx",
            Box::new(|p: &Path| rewrite_journal(p, "\"idx\":1", "\"idx\":0")),
            "two entries with idx 0",
        ),
        (
            "duplicate tag",
            Box::new(|p: &Path| rewrite_journal(p, "0001_media", "0000_init")),
            "two entries with tag \"0000_init\"",
        ),
        (
            "tag outside the folder",
            Box::new(|p: &Path| rewrite_journal(p, "0001_media", "../0001_media")),
            "would name a file outside the migrations folder",
        ),
        (
            "not UTF-8",
            Box::new(|p: &Path| {
                std::fs::write(p.join("0001_media.sql"), b"SELECT 1;\nSELECT '\xff';\n").unwrap()
            }),
            "0001_media.sql:2: not valid UTF-8",
        ),
        (
            "placeholder of new",
            Box::new(|p: &Path| {
                std::fs::write(
                    p.join("0001_media.sql"),
                    "-- vamsa-migrate: placeholder; delete this line once the SQL below is written\nSELECT 1;\n",
                )
                .unwrap()
            }),
            "0001_media.sql:1: still the placeholder",
        ),
        (
            "symlink outside",
            Box::new(|p: &Path| {
                std::fs::write(&outside, "SELECT 1;").unwrap();
                std::fs::remove_file(p.join("0001_media.sql")).unwrap();
                std::os::unix::fs::symlink(&outside, p.join("0001_media.sql")).unwrap();
            }),
            "outside the migrations folder",
        ),
    ];
    for (name, break_it, expected) in cases {
        let f = abc();
        break_it(f.path());
        for args in [&["migrate"][..], &["migrate", "--dry-run"], &["status"]] {
            let run = db.run(f.path(), args);
            assert_eq!(run.code, 2, "{name} {args:?}: {run:#?}");
            assert!(
                run.stderr.contains(expected),
                "{name}: expected {expected:?} in\n{}",
                run.stderr
            );
            assert!(run.stderr.contains("Next step:"), "{name}: {}", run.stderr);
            assert!(!run.stderr.contains("panicked"), "{name}");
        }
        assert_untouched(&db);
    }
}

fn rewrite_journal(dir: &Path, from: &str, to: &str) {
    let path = dir.join("meta/_journal.json");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains(from));
    std::fs::write(&path, text.replacen(from, to, 1)).unwrap();
}

#[test]
fn stray_sql_file_is_a_warning_on_every_command() {
    let db = Db::new();
    let f = abc();
    std::fs::write(f.path().join("0003_forgotten.sql"), "SELECT 1;").unwrap();
    for args in [&["migrate", "--dry-run"][..], &["migrate"], &["status"]] {
        let run = db.run(f.path(), args);
        run.ok();
        assert!(
            run.stderr.contains(
                "warning: 0003_forgotten.sql is not in meta/_journal.json; it will not be applied"
            ),
            "{args:?}: {}",
            run.stderr
        );
    }
    assert_eq!(db.rows().len(), 3);
}

#[test]
fn edited_migration_blocks_the_run_until_accepted() {
    let db = Db::new();
    let f = Folder::new(&[("0000_init", 1000, A), ("0001_media", 2000, B)]);
    db.run(f.path(), &["migrate"]).ok();
    let edited = format!("{A}-- reformatted\n");
    f.write(&[
        ("0000_init", 1000, &edited),
        ("0001_media", 2000, B),
        ("0002_index", 3000, C),
    ]);

    let run = db.run(f.path(), &["migrate"]);
    run.code(4);
    assert!(
        run.stderr
            .contains("0000_init.sql was edited after it was applied"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("--accept-edited 0000_init"),
        "{}",
        run.stderr
    );
    assert!(
        !db.table_exists("persons_name_idx"),
        "nothing may be applied while drift blocks"
    );
    db.run(f.path(), &["status"]).code(4);

    let run = db.run(f.path(), &["migrate", "--accept-edited", "0000_init"]);
    run.ok();
    assert!(
        run.stdout.contains("Accepted the edited 0000_init.sql"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("Applied: 0002_index.sql"));
    assert_eq!(db.rows()[0].0, support::sha256_hex(edited.as_bytes()));
    db.run(f.path(), &["status"]).ok();
}

#[test]
fn hole_in_the_applied_sequence_needs_allow_out_of_order() {
    let db = Db::new();
    let f = Folder::new(&[("0000_init", 1000, A), ("0002_index", 3000, C)]);
    db.run(f.path(), &["migrate"]).ok();
    // A branch merged 0001 in between.
    f.write(&[
        ("0000_init", 1000, A),
        ("0001_media", 2000, B),
        ("0002_index", 3000, C),
    ]);
    let run = db.run(f.path(), &["migrate"]);
    run.code(4);
    assert!(
        run.stderr
            .contains("0001_media.sql is pending but 0002_index.sql after it is already applied"),
        "{}",
        run.stderr
    );
    assert!(!db.table_exists("media"));
    let status = db.run(f.path(), &["status"]);
    status.code(4);
    assert!(
        status.stdout.contains("out-of-order 0001_media.sql"),
        "{}",
        status.stdout
    );

    db.run(f.path(), &["migrate", "--allow-out-of-order"]).ok();
    assert!(db.table_exists("media"));
    assert_eq!(db.rows().len(), 3);
}

#[test]
fn applied_row_without_a_file_is_a_warning() {
    let db = Db::new();
    let f = abc();
    db.run(f.path(), &["migrate"]).ok();
    // Code rolled back: 0002 is gone from disk.
    f.write(&[("0000_init", 1000, A), ("0001_media", 2000, B)]);
    std::fs::remove_file(f.path().join("0002_index.sql")).unwrap();
    // unknown_rows = "refuse" (the default) is tests/it/unknown_rows.rs.
    let run = db
        .cli(f.path())
        .env("VAMSA_MIGRATE_UNKNOWN_ROWS", "warn")
        .arg("migrate")
        .run();
    run.ok();
    assert!(
        run.stderr.contains("matches no migration on disk"),
        "{}",
        run.stderr
    );
    let status = db.run(f.path(), &["status"]);
    status.code(4);
    assert!(
        status
            .stdout
            .contains("missing      row 3 (created_at 3000"),
        "{}",
        status.stdout
    );
}

#[test]
fn status_exit_codes_and_json() {
    let db = Db::new();
    let f = abc();
    let run = db.run(f.path(), &["status"]);
    run.code(3);
    assert!(
        run.stdout.contains("pending      0000_init.sql"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("3 migrations: 0 applied, 3 pending."),
        "{}",
        run.stdout
    );
    db.run(f.path(), &["migrate"]).ok();
    let run = db.run(f.path(), &["status", "--format", "json"]);
    run.ok();
    let v: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(v["applied"], 3);
    assert_eq!(v["pending"], 0);
    assert_eq!(v["drift"], false);
    assert_eq!(v["migrations"][1]["migration"], "0001_media.sql");
    assert_eq!(v["migrations"][1]["state"], "applied");
    assert!(v["migrations"][1]["applied_at"].is_string());
}

#[test]
fn json_events_for_migrate_and_dry_run() {
    let db = Db::new();
    let f = abc();
    let run = db.run(f.path(), &["migrate", "--dry-run", "--format", "json"]);
    run.ok();
    let events: Vec<serde_json::Value> = run
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events[0]["event"], "pending");
    assert_eq!(
        events[0]["migrations"][1]["statements"][1],
        "ALTER TABLE \"persons\" ADD COLUMN \"born\" date"
    );
    assert_eq!(events.last().unwrap()["event"], "done");

    let run = db.run(f.path(), &["migrate", "--format", "json"]);
    run.ok();
    let events: Vec<serde_json::Value> = run
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let applied: Vec<&str> = events
        .iter()
        .filter(|e| e["event"] == "applied")
        .map(|e| e["migration"].as_str().unwrap())
        .collect();
    assert_eq!(
        applied,
        ["0000_init.sql", "0001_media.sql", "0002_index.sql"]
    );
    assert_eq!(events.last().unwrap()["ok"], true);
    assert_eq!(events.last().unwrap()["applied"], 3);
}

#[test]
fn failing_migration_in_the_middle_keeps_earlier_ones_and_runs_no_later_one() {
    let db = Db::new();
    let bad = "CREATE TABLE \"events\" (\"id\" serial PRIMARY KEY);--> statement-breakpoint\nALTER TABLE \"events\" ADD COLUMN \"x\" int;--> statement-breakpoint\n\nALTER TABLE \"nope\"\n  ADD COLUMN \"y\" int;\n";
    let f = Folder::new(&[
        ("0000_init", 1000, A),
        ("0001_bad", 2000, bad),
        ("0002_index", 3000, C),
    ]);
    let run = db.run(f.path(), &["migrate"]);
    run.code(1);
    assert_eq!(
        run.stdout,
        "Running migrations...\nApplied: 0000_init.sql\n"
    );
    assert!(run.stderr.contains("Error: migration 0001_bad.sql failed at statement 3 of 3 (line 4): ALTER TABLE \"nope\" ADD COLUMN \"y\" int"), "{}", run.stderr);
    assert!(
        run.stderr
            .contains("relation \"nope\" does not exist (SQLSTATE 42P01)"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("Likely cause: Something it uses does not exist: a previous migration was skipped or failed silently"), "{}", run.stderr);
    assert!(run.stderr.contains("Nothing of 0001_bad.sql was committed. 1 earlier migration of this run is committed and stays."), "{}", run.stderr);
    assert!(run.stderr.contains("pg_restore"), "{}", run.stderr);
    assert_eq!(db.rows().len(), 1);
    assert!(db.table_exists("persons"));
    assert!(
        !db.table_exists("events"),
        "the failed migration's first statements must be rolled back"
    );
    assert!(
        !db.table_exists("persons_name_idx"),
        "no later migration may run"
    );
}

#[test]
fn transaction_all_rolls_back_the_whole_run() {
    let db = Db::new();
    let f = Folder::new(&[("0000_init", 1000, A), ("0001_bad", 2000, "SELECT 1/0;")]);
    let run = db.run(f.path(), &["migrate", "--transaction", "all"]);
    run.code(1);
    assert!(run.stderr.contains("SQLSTATE 22012"), "{}", run.stderr);
    assert!(
        run.stderr.contains("The whole run was rolled back"),
        "{}",
        run.stderr
    );
    assert!(!run.stdout.contains("Applied:"), "{}", run.stdout);
    assert!(!db.table_exists("persons"));
    assert_eq!(db.rows().len(), 0);
}

fn failing_run(db: &Db, sql: &str) -> support::Run {
    let f = Folder::new(&[("0000_bad", 1000, sql)]);
    let run = db.run(f.path(), &["migrate", "--lock-timeout", "1s"]);
    run.code(1);
    assert_eq!(db.rows().len(), 0, "nothing may be recorded");
    run
}

#[test]
fn already_exists_errors_point_at_a_partial_earlier_run() {
    let db = Db::new();
    db.psql("CREATE TABLE persons (id int)");
    let run = failing_run(&db, A);
    assert!(run.stderr.contains("SQLSTATE 42P07"), "{}", run.stderr);
    assert!(
        run.stderr
            .contains("partially applied before (perhaps after a crash)"),
        "{}",
        run.stderr
    );
    let run = failing_run(&db, "ALTER TABLE persons ADD COLUMN id int;");
    assert!(run.stderr.contains("SQLSTATE 42701"), "{}", run.stderr);
}

#[test]
fn missing_column_points_at_a_skipped_migration() {
    let db = Db::new();
    db.psql("CREATE TABLE persons (id int)");
    let run = failing_run(&db, "CREATE INDEX i ON persons (\"born\");");
    assert!(run.stderr.contains("SQLSTATE 42703"), "{}", run.stderr);
    assert!(
        run.stderr
            .contains("a previous migration was skipped or failed silently"),
        "{}",
        run.stderr
    );
}

#[test]
fn syntax_error_names_the_line() {
    let db = Db::new();
    let run = failing_run(
        &db,
        "SELECT 1;--> statement-breakpoint\nCREATE TABLE t (\n  id int,\n  oops oops oops\n);\n",
    );
    assert!(run.stderr.contains("SQLSTATE 42601"), "{}", run.stderr);
    assert!(
        run.stderr.contains("statement 2 of 2 (line 4)"),
        "{}",
        run.stderr
    );
}

#[test]
fn permission_denied_says_which_statement_needs_it() {
    let db = Db::new();
    db.psql(&format!("CREATE ROLE app_{0} LOGIN; GRANT CONNECT ON DATABASE {0} TO app_{0}; CREATE SCHEMA drizzle; GRANT ALL ON SCHEMA drizzle TO app_{0}; REVOKE CREATE ON SCHEMA public FROM PUBLIC", db.name));
    let f = Folder::new(&[("0000_init", 1000, A)]);
    let url = db
        .url()
        .replace("user=postgres", &format!("user=app_{}", db.name));
    let run = support::cli()
        .arg("migrate")
        .database_url(&url)
        .migrations_dir(f.path())
        .run();
    run.code(1);
    assert!(run.stderr.contains("SQLSTATE 42501"), "{}", run.stderr);
    assert!(
        run.stderr
            .contains("lacks a permission needed by statement 1 (CREATE TABLE \"persons\" (...))"),
        "{}",
        run.stderr
    );
    assert!(!db.table_exists("persons"));
    assert_eq!(db.rows().len(), 0);
}

#[test]
fn lock_timeout_fails_fast_with_a_hint() {
    let db = Db::new();
    db.psql("CREATE TABLE persons (id int)");
    // Another session (the "application") holds a lock on the table.
    let mut holder = db
        .cluster
        .psql_command(&db.name)
        .args([
            "-XAtq",
            "-c",
            "BEGIN; LOCK TABLE persons IN ACCESS SHARE MODE; SELECT pg_sleep(20);",
        ])
        .spawn()
        .unwrap();
    eventually("the other session's lock on persons", || {
        db.psql("SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation WHERE c.relname = 'persons' AND l.granted AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())") != "0"
    });
    // The holder keeps its lock for 20 s: only lock_timeout (SQLSTATE 55P03) ends the wait.
    let run = failing_run(&db, "ALTER TABLE persons ADD COLUMN born date;");
    let _ = holder.kill();
    let _ = holder.wait();
    assert!(run.stderr.contains("SQLSTATE 55P03"), "{}", run.stderr);
    assert!(
        run.stderr.contains("waited longer than lock_timeout (1s)"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("quieter time"), "{}", run.stderr);
}

#[test]
fn lost_connection_says_nothing_was_committed() {
    let db = Db::new();
    let f = Folder::new(&[
        ("0000_init", 1000, A),
        (
            "0001_slow",
            2000,
            "CREATE TABLE slow (id int);--> statement-breakpoint\nSELECT pg_sleep(30);",
        ),
    ]);
    let child = support::cli()
        .arg("migrate")
        .database_url(&db.url())
        .migrations_dir(f.path())
        .spawn();
    eventually("the slow statement", || {
        db.psql(&format!("SELECT count(*) FROM pg_stat_activity WHERE datname = '{}' AND query LIKE '%pg_sleep(30)%' AND pid <> pg_backend_pid()", db.name)) == "1"
    });
    db.psql(&format!("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{}' AND query LIKE '%pg_sleep(30)%' AND pid <> pg_backend_pid()", db.name));
    let run = child.wait();
    run.code(1);
    assert!(
        run.stderr.contains("connection to PostgreSQL was lost"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains("nothing of this migration was committed"),
        "{}",
        run.stderr
    );
    assert_eq!(db.rows().len(), 1);
    assert!(!db.table_exists("slow"));
}

#[test]
fn concurrent_runs_apply_each_migration_exactly_once() {
    let db = Db::new();
    let slow = "CREATE TABLE slow (id int);--> statement-breakpoint\nSELECT pg_sleep(1);";
    let f = Folder::new(&[
        ("0000_init", 1000, A),
        ("0001_slow", 2000, slow),
        ("0002_index", 3000, C),
    ]);
    let children: Vec<_> = (0..4)
        .map(|_| {
            support::cli()
                .arg("migrate")
                .database_url(&db.url())
                .migrations_dir(f.path())
                .spawn()
        })
        .collect();
    let runs: Vec<support::Run> = children.into_iter().map(|c| c.wait()).collect();
    for run in &runs {
        run.ok();
    }
    let applied: usize = runs
        .iter()
        .map(|r| r.stdout.matches("Applied:").count())
        .sum();
    assert_eq!(applied, 3, "{runs:#?}");
    assert!(
        runs.iter().any(|r| r
            .stderr
            .contains("Waiting for another vamsa-migrate run to finish")),
        "{runs:#?}"
    );
    assert_eq!(db.rows().len(), 3);
}

#[test]
fn lock_wait_is_bounded() {
    let db = Db::new();
    let f = abc();
    db.run(f.path(), &["migrate", "--dry-run"]).ok();
    let key_holder = db
        .cluster
        .psql_command(&db.name)
        .args([
            "-XAtq",
            "-c",
            &format!(
                "SELECT pg_advisory_lock({}); SELECT pg_sleep(20);",
                vamsa_migrate::db::Tracking {
                    schema: "drizzle".into(),
                    table: "__drizzle_migrations".into()
                }
                .lock_key()
            ),
        ])
        .spawn();
    let mut holder = key_holder.unwrap();
    eventually("the other session's advisory lock", || {
        db.psql("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND database = (SELECT oid FROM pg_database WHERE datname = current_database())") != "0"
    });
    let run = db.run(f.path(), &["migrate", "--lock-wait", "1s"]);
    let _ = holder.kill();
    let _ = holder.wait();
    run.code(1);
    assert!(
        run.stderr
            .contains("held the migration lock for longer than lock_wait"),
        "{}",
        run.stderr
    );
    assert_eq!(
        db.psql("SELECT count(*) FROM pg_namespace WHERE nspname = 'drizzle'"),
        "0"
    );
}

#[test]
fn no_transaction_migration_runs_statement_by_statement() {
    let db = Db::new();
    let concurrently = "-- vamsa-migrate: no-transaction\nCREATE INDEX CONCURRENTLY \"persons_name_idx\" ON \"persons\" (\"name\");\n";
    let f = Folder::new(&[("0000_init", 1000, A), ("0001_idx", 2000, concurrently)]);
    let dry = db.run(f.path(), &["migrate", "--dry-run"]);
    assert!(
        dry.stdout
            .contains("0001_idx.sql (runs outside a transaction)"),
        "{}",
        dry.stdout
    );
    db.run(f.path(), &["migrate"]).ok();
    assert!(db.table_exists("persons_name_idx"));
    assert_eq!(db.rows().len(), 2);

    let half = "-- vamsa-migrate: no-transaction\nCREATE INDEX CONCURRENTLY \"a_idx\" ON \"persons\" (\"id\");--> statement-breakpoint\nCREATE INDEX CONCURRENTLY \"b_idx\" ON \"nope\" (\"id\");\n";
    f.write(&[
        ("0000_init", 1000, A),
        ("0001_idx", 2000, concurrently),
        ("0002_half", 3000, half),
    ]);
    let run = db.run(f.path(), &["migrate"]);
    run.code(1);
    assert!(run.stderr.contains("0002_half.sql ran outside a transaction: its first 1 statement(s) stayed applied and it is not recorded"), "{}", run.stderr);
    assert!(db.table_exists("a_idx"));
    assert_eq!(db.rows().len(), 2);
}

#[test]
fn new_creates_the_next_file_and_journal_entry() {
    let f = abc();
    let run = support::cli()
        .args(["new", "Add media tags"])
        .migrations_dir(f.path())
        .run();
    run.ok();
    assert!(
        f.path().join("0003_add_media_tags.sql").exists(),
        "{run:#?}"
    );
    let journal: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(f.path().join("meta/_journal.json")).unwrap(),
    )
    .unwrap();
    let last = &journal["entries"][3];
    assert_eq!(last["tag"], "0003_add_media_tags");
    assert_eq!(last["idx"], 3);
    assert!(last["when"].as_i64().unwrap() > 3000);
    assert_eq!(journal["dialect"], "postgresql");
    // The placeholder is refused until it holds SQL.
    let db = Db::new();
    db.run(f.path(), &["migrate"]).code(2);
    std::fs::write(
        f.path().join("0003_add_media_tags.sql"),
        "CREATE TABLE tags (id int);\n",
    )
    .unwrap();
    db.run(f.path(), &["migrate"]).ok();
    assert!(db.table_exists("tags"));
}

#[test]
fn config_errors_name_the_key_and_file_and_passwords_never_show() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.toml");
    std::fs::write(&file, "migrations_dir = \"/x\"\nlock_timout = \"5s\"\n").unwrap();
    let run = support::cli().args(["status", "--config"]).arg(&file).run();
    run.code(2);
    assert!(
        run.stderr.contains("lock_timout") && run.stderr.contains(&file.display().to_string()),
        "{}",
        run.stderr
    );

    let f = abc();
    // Nothing listens on port 1: the connection error must not echo the password.
    let run = support::cli()
        .arg("migrate")
        .database_url("postgres://vamsa:hunter2secret@127.0.0.1:1/vamsa")
        .migrations_dir(f.path())
        .run();
    run.code(1);
    assert!(
        run.stderr
            .contains("cannot connect to PostgreSQL at 127.0.0.1:1/vamsa"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("hunter2secret") && !run.stdout.contains("hunter2secret"));
}

#[test]
fn settings_come_from_the_environment_and_the_file() {
    let db = Db::new();
    let f = abc();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.toml");
    std::fs::write(
        &file,
        format!(
            "migrations_dir = {:?}\nmigrations_schema = \"meta\"\n",
            f.path().display().to_string()
        ),
    )
    .unwrap();
    let run = support::cli()
        .args(["migrate", "--config"])
        .arg(&file)
        .env("DATABASE_URL", db.url())
        .env("VAMSA_MIGRATE_MIGRATIONS_TABLE", "applied")
        .run();
    run.ok();
    assert_eq!(db.psql("SELECT count(*) FROM meta.applied"), "3");
}

#[test]
fn several_hosts_with_read_write_migrate_only_the_primary() {
    let db = Db::new();
    let f = abc();
    // The first host refuses connections; target_session_attrs picks a writable one.
    let url = format!(
        "host=127.0.0.1,127.0.0.1 port=1,{} user=postgres dbname={} target_session_attrs=read-write sslmode=prefer",
        db.cluster.port(),
        db.name
    );
    let run = support::cli()
        .arg("migrate")
        .database_url(&url)
        .migrations_dir(f.path())
        .run();
    run.ok();
    assert_eq!(db.rows().len(), 3);
}

#[test]
fn sslmode_require_encrypts_the_connection() {
    let certs = tempfile::tempdir().unwrap();
    let (key, crt) = (
        certs.path().join("server.key"),
        certs.path().join("server.crt"),
    );
    let out = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-keyout",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&crt)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let readable = |p: &Path| {
        std::fs::set_permissions(p, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        if vamsa_testkit::is_root() {
            std::process::Command::new("chown")
                .arg("postgres")
                .arg(p)
                .status()
                .unwrap();
        }
    };
    readable(&key);
    readable(&crt);
    std::fs::set_permissions(
        certs.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let cluster = support::own_cluster(support::ClusterOptions {
        settings: vec![
            ("ssl".into(), "on".into()),
            ("ssl_cert_file".into(), crt.display().to_string()),
            ("ssl_key_file".into(), key.display().to_string()),
        ],
        ..Default::default()
    });
    cluster.create_database("app").unwrap();
    // The migration itself checks that its own connection is encrypted.
    let check = "DO $$ BEGIN IF NOT (SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()) THEN RAISE EXCEPTION 'not encrypted'; END IF; END $$;";
    let f = Folder::new(&[("0000_tls", 1000, check)]);
    let url = cluster
        .url("app")
        .replace("sslmode=disable", "sslmode=require");
    let run = support::cli()
        .args(["migrate", "--no-backup"])
        .database_url(&url)
        .migrations_dir(f.path())
        .run();
    run.ok();
    let plain = cluster.url("app");
    let f2 = Folder::new(&[("0000_tls", 1000, check), ("0001_again", 2000, check)]);
    let run = support::cli()
        .args(["migrate", "--no-backup"])
        .database_url(&plain)
        .migrations_dir(f2.path())
        .run();
    run.code(1);
    assert!(run.stderr.contains("not encrypted"), "{}", run.stderr);
}

#[test]
fn a_hand_made_row_with_any_text_as_hash_is_reported_not_a_crash() {
    let db = Db::new();
    let f = Folder::new(&[("0000_init", 1000, A)]);
    db.run(f.path(), &["migrate"]).ok();
    // 'ó' straddles byte 12: slicing the hash by bytes would panic.
    db.psql("INSERT INTO drizzle.__drizzle_migrations (hash, created_at) VALUES ('004_migración_a_mano', 5)");
    let run = db
        .cli(f.path())
        .env("VAMSA_MIGRATE_UNKNOWN_ROWS", "warn")
        .arg("migrate")
        .run();
    run.ok();
    assert!(run.stderr.contains("hash 004_migració)"), "{}", run.stderr);
    let status = db.run(f.path(), &["status"]);
    status.code(4);
    assert!(
        status.stdout.contains("hash 004_migració)"),
        "{}",
        status.stdout
    );
}
