//! `statement_timeout` against a real PostgreSQL: our `0` means no limit (as `lock_timeout = 0`
//! does), and a cancelled statement's report names the value in force, where it came from and
//! the key that changes it.

use crate::support::{Db, Folder};

/// Issue 18 item 7: the database sets a short `statement_timeout`; a slow migration is
/// cancelled with a report naming it and its source, and applies with our `statement_timeout
/// = 0`.
#[test]
fn statement_timeout_zero_means_no_limit_and_a_cancel_names_the_source() {
    let db = Db::new();
    db.psql(&format!(
        "ALTER DATABASE \"{}\" SET statement_timeout = '200ms'",
        db.name
    ));
    let f = Folder::new(&[(
        "0000_slow",
        1000,
        "CREATE TABLE \"t\" (\"id\" int);\n--> statement-breakpoint\nSELECT pg_sleep(1);\n",
    )]);
    let cancelled = db.run(f.path(), &["migrate", "--no-backup"]);
    cancelled.code(1);
    assert!(
        cancelled.stderr.contains(
            "statement_timeout (200ms, from the database's setting (ALTER DATABASE ... SET statement_timeout))"
        ) && cancelled.stderr.contains("Set statement_timeout in vamsa-migrate's configuration"),
        "{}",
        cancelled.stderr
    );
    assert!(!db.table_exists("t"));
    let applied = db
        .cli(f.path())
        .env("VAMSA_MIGRATE_STATEMENT_TIMEOUT", "0")
        .args(["migrate", "--no-backup"])
        .run();
    applied.ok();
    assert!(db.table_exists("t"));
    assert_eq!(db.rows().len(), 1);
}
