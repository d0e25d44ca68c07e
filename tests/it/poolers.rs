//! Connection poolers (Debian's PgBouncer 1.18, started by each test in front of the shared
//! cluster): a pool that does not keep a session (`pool_mode = transaction` or `statement`)
//! is refused before anything is changed, with what to do; through a session pool everything
//! works.

use vamsa_testkit::pooler::{PgBouncer, PoolMode};

use crate::support::*;

const PERSONS: &str =
    "CREATE TABLE \"persons\" (\"id\" serial PRIMARY KEY, \"name\" text NOT NULL);\n";
const MEDIA: &str = "CREATE TABLE \"media\" (\"id\" serial PRIMARY KEY);--> statement-breakpoint\nALTER TABLE \"persons\" ADD COLUMN \"born\" date;\n";

fn folder() -> Folder {
    Folder::new(&[("0000_persons", 1000, PERSONS), ("0001_media", 2000, MEDIA)])
}

fn bouncer(db: &Db, mode: PoolMode) -> PgBouncer {
    PgBouncer::start(db.cluster, mode).expect("start PgBouncer (apt install pgbouncer)")
}

/// `vamsa-migrate ARGS` against `db` through `pool`.
fn through(pool: &PgBouncer, db: &Db, dir: &Folder, args: &[&str]) -> Run {
    let mut cli = db.cli(dir.path());
    cli.database_url(&pool.url(&db.name)).args(args).run()
}

fn assert_refused_unchanged(run: &Run, db: &Db, before: &str, pool: &PgBouncer) {
    assert_eq!(run.code, 1, "{}\n{}", run.stderr, pool.log());
    assert!(
        run.stderr.contains(&format!(
            "127.0.0.1:{}/{} is a connection pool that does not keep a session (PgBouncer's pool_mode = transaction or statement)",
            pool.port(),
            db.name
        )),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains("Likely cause: database_url leads to a connection pooler"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("Nothing was changed. Point database_url at PostgreSQL itself (its host and port, usually 5432), or at a pool in session mode"),
        "{}",
        run.stderr
    );
    assert_eq!(db.catalog_fingerprint(), before, "the catalog changed");
    assert!(!db.table_exists("drizzle.__drizzle_migrations"));
    assert!(!db.table_exists("persons"));
    assert_eq!(
        std::fs::read_dir(db.backups.path())
            .expect("backup_dir")
            .count(),
        0,
        "a backup was taken"
    );
}

#[test]
fn a_transaction_pool_is_refused_before_anything_is_changed_on_every_run() {
    let db = Db::new();
    let pool = bouncer(&db, PoolMode::Transaction);
    let dir = folder();
    let before = db.catalog_fingerprint();
    // A fresh pool, then one whose server connections other clients have used.
    for _ in 0..2 {
        let run = through(&pool, &db, &dir, &["migrate"]);
        assert_refused_unchanged(&run, &db, &before, &pool);
    }
    let status = through(&pool, &db, &dir, &["status"]);
    assert_refused_unchanged(&status, &db, &before, &pool);
    // The same database straight from PostgreSQL migrates.
    db.run(dir.path(), &["migrate"]).ok();
    assert_eq!(db.rows().len(), 2);
}

#[test]
fn a_statement_pool_is_refused_before_anything_is_changed() {
    let db = Db::new();
    let pool = bouncer(&db, PoolMode::Statement);
    let dir = folder();
    let before = db.catalog_fingerprint();
    let run = through(&pool, &db, &dir, &["migrate"]);
    assert_refused_unchanged(&run, &db, &before, &pool);
}

#[test]
fn through_a_session_pool_migrate_backup_and_status_work() {
    let db = Db::new();
    let pool = bouncer(&db, PoolMode::Session);
    let dir = folder();
    let run = through(&pool, &db, &dir, &["migrate"]);
    assert_eq!(run.code, 0, "{}\n{}", run.stderr, pool.log());
    assert_eq!(
        run.stdout,
        "Running migrations...\nApplied: 0000_persons.sql\nApplied: 0001_media.sql\nMigration complete.\n"
    );
    assert_eq!(
        db.rows(),
        vec![
            (sha256_hex(PERSONS.as_bytes()), 1000),
            (sha256_hex(MEDIA.as_bytes()), 2000)
        ]
    );
    // The pool's server connections are reused by the next runs.
    cli()
        .database_url(&pool.url(&db.name))
        .backup_dir(db.backups.path())
        .arg("backup")
        .run()
        .ok();
    let again = through(&pool, &db, &dir, &["migrate"]);
    again.ok();
    assert_eq!(again.stdout, "No pending migrations.\n");
    through(&pool, &db, &dir, &["status"]).ok();
}
