//! Interoperability with Drizzle's own migrator (drizzle-orm pinned in tests/interop), both ways.
//! The first test to need it runs `npm ci` there (the lockfile pins the versions).

use std::path::Path;
use std::process::Command;
use std::sync::Mutex;

use crate::support::{repo_folder, Db, Folder};

/// Installs the pinned node modules once per test run.
pub(crate) fn ensure_node_modules(interop: &Path) {
    static INSTALL: Mutex<()> = Mutex::new(());
    let _guard = INSTALL.lock().unwrap_or_else(|e| e.into_inner());
    if interop.join("node_modules/drizzle-orm").exists() {
        return;
    }
    let out = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
        .current_dir(interop)
        .output()
        .expect("run npm (is Node.js installed?)");
    assert!(
        out.status.success(),
        "npm ci in tests/interop failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// drizzle-orm 0.45.4's own migrator on `dir` (the one runner, in `interop_v1`).
fn drizzle_migrate(db: &Db, dir: &Path) {
    if let Err(output) = crate::interop_v1::Drizzle::V045.migrate(db, dir) {
        panic!("drizzle migrate failed: {output}");
    }
}

fn all_rows(db: &Db) -> String {
    db.psql("SELECT string_agg(id || ':' || hash || ':' || created_at, ',' ORDER BY id) FROM drizzle.__drizzle_migrations")
}

fn schema_dump(db: &Db) -> String {
    let out = Command::new(db.cluster.program("pg_dump"))
        .args([
            "--schema-only",
            "--no-owner",
            "-N",
            "drizzle",
            // Our run history: Drizzle does not create it.
            "-N",
            "vamsa_migrate",
            "-h",
            "127.0.0.1",
            "-p",
        ])
        .arg(db.cluster.port().to_string())
        .args(["-U", "postgres", &db.name])
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.starts_with("\\restrict") && !l.starts_with("\\unrestrict"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn folders() -> Vec<Folder> {
    vec![
        repo_folder("tests/data/vamsa-drizzle"),
        repo_folder("migrations"),
    ]
}

#[test]
fn a_database_migrated_by_drizzle_is_up_to_date_for_us() {
    for f in folders() {
        let db = Db::new();
        drizzle_migrate(&db, f.path());
        let rows = all_rows(&db);
        let status = db.run(f.path(), &["status"]);
        status.ok();
        assert!(
            status.stdout.contains("Database is up to date."),
            "{}",
            status.stdout
        );
        let run = db.run(f.path(), &["migrate"]);
        run.ok();
        assert_eq!(run.stdout, "No pending migrations.\n");
        assert_eq!(all_rows(&db), rows, "we must not touch Drizzle's rows");
    }
}

#[test]
fn a_database_migrated_by_us_is_up_to_date_for_drizzle_with_the_same_schema() {
    for f in folders() {
        let ours = Db::new();
        ours.run(f.path(), &["migrate"]).ok();
        let rows = all_rows(&ours);
        let schema = schema_dump(&ours);
        let fingerprint = ours.catalog_fingerprint();
        drizzle_migrate(&ours, f.path());
        assert_eq!(all_rows(&ours), rows, "Drizzle re-ran something");
        assert_eq!(
            ours.catalog_fingerprint(),
            fingerprint,
            "Drizzle changed the schema"
        );

        let theirs = Db::new();
        drizzle_migrate(&theirs, f.path());
        assert_eq!(
            schema_dump(&theirs),
            schema,
            "Drizzle and we built different schemas"
        );
        // Same hash and created_at values, row for row.
        let strip_ids = |s: String| {
            s.split(',')
                .map(|r| r.split_once(':').unwrap().1.to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(strip_ids(all_rows(&theirs)), strip_ids(rows));
    }
}
