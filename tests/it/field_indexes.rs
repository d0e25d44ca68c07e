//! Concurrent index builds against a real PostgreSQL: a run waiting for our run lock must not
//! break the build of the run holding it, and an INVALID index is never hidden.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::support::{eventually, Db, Folder};

const ITEMS: &str = "CREATE TABLE \"items\" (\"id\" serial PRIMARY KEY, \"n\" int);\n\
--> statement-breakpoint\n\
INSERT INTO \"items\" (\"n\") SELECT g FROM generate_series(1, 5000) g;\n";

/// A psql session holding advisory lock `key` until dropped: a gate a migration waits at.
struct Gate {
    psql: Child,
    stdin: Option<ChildStdin>,
}

impl Gate {
    fn close(db: &Db, key: i64) -> Gate {
        let mut psql = db
            .cluster
            .psql_command(&db.name)
            .args(["-XAtq"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let mut stdin = psql.stdin.take().unwrap();
        writeln!(stdin, "SELECT pg_advisory_lock({key});").unwrap();
        stdin.flush().unwrap();
        eventually("the gate is closed", || {
            db.psql(&format!(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = {key} AND granted"
            )) == "1"
        });
        Gate {
            psql,
            stdin: Some(stdin),
        }
    }

    /// Ends the session, which releases the lock.
    fn open(mut self) {
        drop(self.stdin.take());
        self.psql.wait().unwrap();
    }
}

/// Issue 18 item 6 (b): while one run builds an index concurrently on a table with rows, a
/// second run that waits for the run lock holds no snapshot, so the build completes and both
/// runs succeed (on PostgreSQL 15, a waiter blocked in `pg_advisory_lock` made the build fail
/// with 40P01 after `deadlock_timeout`, leaving an INVALID index).
#[test]
fn a_run_waiting_for_the_lock_does_not_break_a_concurrent_index_build() {
    let db = Db::new();
    let f = Folder::new(&[("0000_items", 1000, ITEMS)]);
    db.run(f.path(), &["migrate", "--no-backup"]).ok();
    f.write(&[
        ("0000_items", 1000, ITEMS),
        (
            "0001_index",
            2000,
            "-- vamsa-migrate: no-transaction\n\
             SELECT pg_advisory_lock(4242);\n\
             --> statement-breakpoint\n\
             SELECT pg_advisory_unlock(4242);\n\
             --> statement-breakpoint\n\
             CREATE INDEX CONCURRENTLY \"items_n_idx\" ON \"items\" (\"n\");\n",
        ),
    ]);
    let gate = Gate::close(&db, 4242);
    let migrate = db.cli(f.path()).args(["migrate", "--no-backup"]).clone();
    let first = migrate.spawn();
    eventually("the first run waits at the gate", || {
        db.psql(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = 4242 AND NOT granted",
        ) == "1"
    });
    // Its stderr read line by line, to see it start waiting.
    let mut second = migrate
        .command()
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let stderr = second.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(stderr).lines() {
            let line = line.unwrap();
            if line.contains("Waiting for another vamsa-migrate run") {
                let _ = tx.send(());
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    rx.recv_timeout(Duration::from_secs(60))
        .expect("the second run says it waits for the lock");
    // And it has gone on to wait (blocked, or between tries): its session's latest query is
    // the run lock's.
    eventually("the second run waits for the run lock", || {
        db.psql(&format!(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = '{}' \
             AND query ~ 'pg_(try_)?advisory_lock\\(\\$1\\)'",
            db.name
        )) == "1"
    });
    gate.open();
    let first = first.wait();
    let second_out = second.wait_with_output().unwrap();
    let second_stderr = reader.join().unwrap();
    first.ok();
    assert_eq!(second_out.status.code(), Some(0), "{second_stderr}");
    assert_eq!(
        db.psql("SELECT indisvalid FROM pg_index WHERE indexrelid = 'items_n_idx'::regclass"),
        "t"
    );
    assert_eq!(db.rows().len(), 2);
}
/// Issue 18 item 6 (a): a unique index built concurrently fails on duplicates and leaves an
/// INVALID index: the report names it with the exact DROP statement and does not advise IF NOT
/// EXISTS; after the duplicate is gone, the retry with IF NOT EXISTS (which would skip the
/// invalid index) is not recorded as applied while the index is invalid.
#[test]
fn an_invalid_index_left_by_a_concurrent_build_is_named_and_never_recorded_as_applied() {
    let db = Db::new();
    let users = "CREATE TABLE \"users\" (\"id\" serial PRIMARY KEY, \"email\" text);\n\
                 --> statement-breakpoint\n\
                 INSERT INTO \"users\" (\"email\") VALUES ('a@x'), ('a@x');\n";
    let index = "-- vamsa-migrate: no-transaction\n\
                 CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS \"users_email_uq\" ON \"users\" (\"email\");\n";
    let f = Folder::new(&[("0000_users", 1000, users), ("0001_email_uq", 2000, index)]);
    let run = db.run(f.path(), &["migrate", "--no-backup"]);
    run.code(1);
    assert!(
        run.stderr
            .contains("DROP INDEX CONCURRENTLY \"public\".\"users_email_uq\";"),
        "{}",
        run.stderr
    );
    assert!(
        !run.stderr.contains("safe to re-run (IF NOT EXISTS)"),
        "{}",
        run.stderr
    );
    db.psql("DELETE FROM users WHERE id = 2");
    let retry = db.run(f.path(), &["migrate", "--no-backup"]);
    retry.code(1);
    assert!(
        retry.stderr.contains("users_email_uq") && retry.stderr.contains("INVALID"),
        "{}",
        retry.stderr
    );
    assert_eq!(db.rows().len(), 1, "0001 is not recorded");
    db.psql("DROP INDEX CONCURRENTLY \"public\".\"users_email_uq\"");
    db.run(f.path(), &["migrate", "--no-backup"]).ok();
    assert_eq!(
        db.psql("SELECT indisvalid FROM pg_index WHERE indexrelid = 'users_email_uq'::regclass"),
        "t"
    );
    assert_eq!(db.rows().len(), 2);
}
