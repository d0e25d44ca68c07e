//! What a run starts from and what it reads: things in the folder that are not regular files
//! (never blocking the CLI or the daemon), and the session each run gets (nothing an earlier
//! run set survives into a later one; our run lock is ours until the run ends).

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::daemon::{request, Daemon};
use common::{Db, Folder, Run};
use serde_json::Value;

const A: &str = "CREATE TABLE \"persons\" (\"id\" serial PRIMARY KEY, \"name\" text);\n";
const B: &str = "CREATE TABLE \"media\" (\"id\" serial PRIMARY KEY);\n";

/// Runs `cmd` to completion, or kills it and fails after `within`: a hang fails the test
/// instead of the suite.
#[track_caller]
fn run_bounded(cmd: &mut Command, within: Duration) -> Run {
    let child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn vamsa-migrate");
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(within) {
        Ok(output) => Run::from(output.expect("wait for vamsa-migrate")),
        Err(_) => {
            // SAFETY (test): our own child, still unreaped (its waiter has not returned).
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            panic!("vamsa-migrate did not finish within {within:?}");
        }
    }
}

/// Sends one request line from another thread; `None` when no `done` came within `within`.
fn request_bounded(socket: &Path, line: &'static [u8], within: Duration) -> Option<Vec<Value>> {
    let socket = socket.to_path_buf();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(request(&socket, line));
    });
    rx.recv_timeout(within).ok()
}

fn mkfifo(path: &Path) {
    let _ = std::fs::remove_file(path);
    let status = Command::new("mkfifo").arg(path).status().expect("mkfifo");
    assert!(status.success());
}

#[test]
fn a_fifo_under_a_migration_name_is_refused_by_the_dry_run_without_blocking() {
    let db = Db::new();
    let f = Folder::new(&[("0000_a", 1000, A), ("0001_b", 2000, B)]);
    mkfifo(&f.path().join("0001_b.sql"));
    let mut cmd = common::bin();
    cmd.args(["migrate", "--dry-run", "--database-url", &db.url()])
        .arg("--migrations-dir")
        .arg(f.path());
    let run = run_bounded(&mut cmd, Duration::from_secs(30));
    run.code(2);
    assert!(
        run.stderr
            .contains("0001_b.sql: is a FIFO (named pipe), not a regular file"),
        "{run:#?}"
    );
}

#[test]
fn a_directory_or_a_fifo_as_the_journal_is_refused_naming_it() {
    let f = Folder::new(&[("0000_a", 1000, A)]);
    let journal = f.path().join("meta/_journal.json");
    for (make, kind) in [
        (mkfifo as fn(&Path), "a FIFO (named pipe)"),
        (
            |p: &Path| {
                std::fs::remove_file(p).unwrap_or_else(|_| std::fs::remove_dir(p).unwrap());
                std::fs::create_dir(p).unwrap();
            },
            "a directory",
        ),
    ] {
        make(&journal);
        let mut cmd = common::bin();
        cmd.args([
            "status",
            "--database-url",
            "postgres://nobody@127.0.0.1:1/none",
        ])
        .arg("--migrations-dir")
        .arg(f.path());
        let run = run_bounded(&mut cmd, Duration::from_secs(30));
        run.code(2);
        assert!(
            run.stderr
                .contains(&format!("_journal.json: is {kind}, not a regular file")),
            "{run:#?}"
        );
    }
}

#[test]
fn the_daemon_answers_ping_and_obeys_sigterm_while_the_folder_has_a_fifo() {
    let db = Db::new();
    let f = Folder::new(&[("0000_a", 1000, A)]);
    let mut d = Daemon::start(&db.url(), f.path(), "");
    d.ready();
    f.write(&[("0000_a", 1000, A), ("0001_b", 2000, B)]);
    mkfifo(&f.path().join("0001_b.sql"));
    d.wait_log("is a FIFO (named pipe)", Duration::from_secs(20));

    let pong = request_bounded(
        &d.socket,
        b"{\"command\":\"ping\"}\n",
        Duration::from_secs(20),
    )
    .expect("the daemon answers ping while the folder holds a FIFO");
    assert_eq!(pong[0]["event"], "pong", "{pong:?}");
    let applied = request_bounded(
        &d.socket,
        b"{\"command\":\"apply\"}\n",
        Duration::from_secs(20),
    )
    .expect("an apply request is answered");
    let done = applied.last().unwrap();
    assert_eq!(done["ok"], false, "{applied:?}");
    assert!(
        done["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("0001_b.sql: is a FIFO (named pipe)")),
        "{applied:?}"
    );
    assert_eq!(db.rows().len(), 1);

    let asked = Instant::now();
    d.signal(libc::SIGTERM);
    assert_eq!(d.wait_exit(Duration::from_secs(20)), 0);
    assert!(asked.elapsed() < Duration::from_secs(20));
}

#[test]
fn a_search_path_set_by_one_daemon_run_does_not_reach_the_next() {
    let db = Db::new();
    let set_path =
        "CREATE SCHEMA \"app\";--> statement-breakpoint\nSET search_path TO app, public;\n";
    let f = Folder::new(&[("0000_app", 1000, set_path)]);
    let mut d = Daemon::start(&db.url(), f.path(), "apply = \"on-trigger\"");
    d.ready();
    assert_eq!(db.rows().len(), 1);
    f.write(&[
        ("0000_app", 1000, set_path),
        (
            "0001_audit",
            2000,
            "CREATE TABLE \"audit_log\" (\"id\" int);\n",
        ),
    ]);
    d.trigger(&[]).ok();
    // Where two CLI runs (or two Drizzle runs) put it.
    assert!(db.table_exists("public.audit_log"), "{}", d.log());
    assert!(!db.table_exists("app.audit_log"));
}

#[test]
fn a_statement_timeout_set_by_a_migration_does_not_reach_the_next_in_the_run() {
    let db = Db::new();
    let f = Folder::new(&[
        ("0000_short", 1000, "SET statement_timeout = '150ms';\n"),
        ("0001_slow", 2000, "SELECT pg_sleep(0.6);\n"),
    ]);
    db.run(f.path(), &["migrate", "--no-backup"]).ok();
    assert_eq!(db.rows().len(), 2);
}

#[test]
fn a_migration_that_releases_the_run_lock_stops_the_run_naming_it() {
    for transaction in ["per-migration", "all"] {
        let db = Db::new();
        let f = Folder::new(&[
            ("0000_a", 1000, A),
            ("0001_unlock", 2000, "SELECT pg_advisory_unlock_all();\n"),
            ("0002_b", 3000, B),
        ]);
        let run = db.run(
            f.path(),
            &["migrate", "--no-backup", "--transaction", transaction],
        );
        run.code(1);
        assert!(
            run.stderr
                .contains("0001_unlock.sql released the migration lock"),
            "{run:#?}"
        );
        assert!(!db.table_exists("media"), "nothing after it may run");
        if transaction == "all" {
            assert!(
                !db.table_exists("persons"),
                "the run's transaction rolls back"
            );
        } else {
            assert!(db.table_exists("persons"));
            assert_eq!(db.rows().len(), 2, "it and the one before it stay applied");
        }
    }
}
