//! Transaction control inside a migration, against a real PostgreSQL: refused at planning time
//! before any backup or change, and noticed at run time as a second line of defence, so a
//! report never says less was committed than was.

use std::str::FromStr;

use crate::support::{Db, Folder};
use vamsa_migrate::db::{self, Limits, Tracking, Txn};
use vamsa_migrate::source::{split_statements, Migration};

const A: &str = "CREATE TABLE \"users\" (\"id\" serial PRIMARY KEY);\n";

/// Issue 18 item 4: every spelling of top-level transaction control in a transactional
/// migration is refused before the backup and before any change, naming file and line.
#[test]
fn transaction_control_is_refused_before_any_backup_or_change() {
    let db = Db::new();
    for (sql, line, word) in [
        (
            "CREATE TABLE \"a\" (\"id\" int);\ncommit;\nBEGIN;\nSELECT * FROM missing;\n",
            2,
            "COMMIT",
        ),
        (
            "SELECT 1;\n--> statement-breakpoint\n/* a /* nested */ note */ Rollback Work;\n",
            3,
            "ROLLBACK",
        ),
        ("SELECT 1;\n\n  END TRANSACTION AND CHAIN;\n", 3, "END"),
        ("PREPARE TRANSACTION 'x';\n", 1, "PREPARE TRANSACTION"),
    ] {
        let f = Folder::new(&[("0000_users", 1000, A), ("0001_x", 2000, sql)]);
        let before = db.catalog_fingerprint();
        for args in [&["migrate", "--dry-run"][..], &["migrate"]] {
            let run = db.run(f.path(), args);
            run.code(2);
            let expected = format!("0001_x.sql:{line}: {word} controls the transaction");
            assert!(run.stderr.contains(&expected), "{expected}\n{}", run.stderr);
            assert!(
                run.stderr.contains("-- vamsa-migrate: no-transaction"),
                "{}",
                run.stderr
            );
        }
        assert_eq!(db.catalog_fingerprint(), before, "nothing changed");
        assert_eq!(
            std::fs::read_dir(db.backups.path()).unwrap().count(),
            0,
            "no backup taken"
        );
    }
}

/// Transaction control inside quotes, comments, DO blocks and function bodies is fine, and so
/// is a no-transaction migration that controls its own transactions.
#[test]
fn quoted_and_function_body_transaction_words_and_no_transaction_files_apply() {
    let db = Db::new();
    let body = "CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; END;\n\
        --> statement-breakpoint\n\
        DO $$ BEGIN PERFORM 1; END $$;\n\
        --> statement-breakpoint\n\
        SELECT 'COMMIT; BEGIN;' AS \"commit\"; -- ROLLBACK;\n";
    let own =
        "-- vamsa-migrate: no-transaction\nBEGIN;\nCREATE TABLE \"b\" (\"id\" int);\nCOMMIT;\n";
    let f = Folder::new(&[
        ("0000_users", 1000, A),
        ("0001_f", 2000, body),
        ("0002_own", 3000, own),
    ]);
    db.run(f.path(), &["migrate", "--no-backup"]).ok();
    assert_eq!(db.rows().len(), 3);
    assert!(db.table_exists("b"));
}

fn migration(statements: &[&str]) -> Migration {
    let text = statements.join("\n--> statement-breakpoint\n");
    Migration {
        idx: 1,
        tag: "0001_x".into(),
        when: 2000,
        file_name: "0001_x.sql".into(),
        hash: "h".into(),
        line_ending_hashes: Vec::new(),
        bom: false,
        statements: split_statements(&text),
        no_transaction: false,
        stamp: None,
    }
}

/// The run-time check behind the planning check: a migration that ended our transaction
/// itself is a failure that says what is committed, and is never recorded.
#[test]
fn a_migration_that_ends_our_transaction_is_noticed_at_run_time() {
    let db = Db::new();
    let config = db::ConnParams {
        driver: tokio_postgres::Config::from_str(&db.url()).unwrap(),
        tls: db::TlsParams::disabled(),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client = db::connect(&config).await.unwrap();
        let tracking = Tracking {
            schema: "drizzle".into(),
            table: "__drizzle_migrations".into(),
        };
        db::ensure_table(&client, &tracking, db::TableVersion::V0)
            .await
            .unwrap();
        let limits = Limits {
            lock_timeout: std::time::Duration::from_secs(5),
            statement_timeout: None,
        };
        let apply = |m: Migration| {
            let (client, tracking) = (&client, &tracking);
            async move {
                db::apply_migration(
                    client,
                    tracking,
                    &m,
                    None,
                    limits,
                    Txn::Own(db::Commit::Flushed),
                )
                .await
            }
        };
        // COMMIT then a failure: the part before COMMIT is committed and the report says so.
        let committed = apply(migration(&[
            "CREATE TABLE \"c1\" (\"id\" int);",
            "COMMIT;",
            "CREATE TABLE \"c2\" (\"id\" int);",
            "SELECT * FROM \"missing\";",
        ]))
        .await
        .unwrap_err();
        assert_eq!(committed.transaction_ended, Some(true));
        // ROLLBACK then success: not recorded as applied.
        let rolled_back = apply(migration(&[
            "CREATE TABLE \"r1\" (\"id\" int);",
            "ROLLBACK;",
            "CREATE TABLE \"r2\" (\"id\" int);",
        ]))
        .await
        .unwrap_err();
        assert_eq!(rolled_back.transaction_ended, Some(false));
    });
    assert!(db.table_exists("c1") && db.table_exists("c2"));
    assert!(!db.table_exists("r1") && db.table_exists("r2"));
    assert_eq!(
        db.psql("SELECT count(*) FROM drizzle.__drizzle_migrations"),
        "0",
        "neither is recorded"
    );
}
