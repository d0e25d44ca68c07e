//! What a run starts from and what it reads: things in the folder that are not regular files
//! (never blocking the CLI or the daemon), and the session each run gets (nothing an earlier
//! run set survives into a later one; our run lock is ours until the run ends).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;

use vamsa_testkit::wait::PATIENCE;

use crate::support::{cli, eventually, request, Cli, Daemon, Db, Folder, Run, Signal};

const A: &str = "CREATE TABLE \"persons\" (\"id\" serial PRIMARY KEY, \"name\" text);\n";
const B: &str = "CREATE TABLE \"media\" (\"id\" serial PRIMARY KEY);\n";

/// Kills and reaps the child when dropped, so a hung run never outlives its failed test.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `cli` to completion, failing (and killing it) if it does not finish in the patience of
/// `eventually`: a blocked run fails its test instead of hanging the suite. Its output must fit
/// in the pipes (a few error lines here): it is read after the exit.
#[track_caller]
fn run_bounded(cli: &Cli) -> Run {
    let child = cli
        .command()
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start vamsa-migrate");
    let mut child = Reaped(child);
    eventually("vamsa-migrate to finish without blocking", || {
        child.0.try_wait().expect("poll vamsa-migrate").is_some()
    });
    let mut output = std::process::Output {
        status: child.0.wait().expect("reap vamsa-migrate"),
        stdout: Vec::new(),
        stderr: Vec::new(),
    };
    use std::io::Read;
    if let Some(mut out) = child.0.stdout.take() {
        out.read_to_end(&mut output.stdout).expect("read stdout");
    }
    if let Some(mut err) = child.0.stderr.take() {
        err.read_to_end(&mut output.stderr).expect("read stderr");
    }
    Run::from(output)
}

/// Sends one request line from another thread; `None` when no `done` came in time.
fn request_bounded(socket: &Path, line: &'static [u8]) -> Option<Vec<serde_json::Value>> {
    let socket = socket.to_path_buf();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(request(&socket, line));
    });
    rx.recv_timeout(PATIENCE).ok()
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
    let mut cli = db.cli(f.path());
    cli.args(["migrate", "--dry-run"]);
    let run = run_bounded(&cli);
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
    let as_directory = |p: &Path| {
        std::fs::remove_file(p).unwrap_or_else(|_| std::fs::remove_dir(p).expect("remove"));
        std::fs::create_dir(p).expect("create a directory");
    };
    for (make, kind) in [
        (&mkfifo as &dyn Fn(&Path), "a FIFO (named pipe)"),
        (&as_directory, "a directory"),
    ] {
        make(&journal);
        let mut cli = cli();
        cli.arg("status")
            .database_url("postgres://nobody@127.0.0.1:1/none")
            .migrations_dir(f.path());
        let run = run_bounded(&cli);
        run.code(2);
        let expected = format!("_journal.json: is {kind}, not a regular file");
        assert!(run.stderr.contains(&expected), "{run:#?}");
    }
}

#[test]
fn the_daemon_answers_ping_and_obeys_sigterm_while_the_folder_has_a_fifo() {
    let db = Db::new();
    let f = Folder::new(&[("0000_a", 1000, A)]);
    let mut d = Daemon::start(cli(), &db.url(), f.path(), "");
    d.ready();
    f.write(&[("0000_a", 1000, A), ("0001_b", 2000, B)]);
    mkfifo(&f.path().join("0001_b.sql"));
    d.wait_log("is a FIFO (named pipe)");

    let pong = request_bounded(&d.socket, b"{\"command\":\"ping\"}\n")
        .expect("the daemon answers ping while the folder holds a FIFO");
    assert_eq!(pong[0]["event"], "pong", "{pong:?}");
    let applied = request_bounded(&d.socket, b"{\"command\":\"apply\"}\n")
        .expect("an apply request is answered");
    let done = applied.last().expect("a done event");
    assert_eq!(done["ok"], false, "{applied:?}");
    assert!(
        done["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("0001_b.sql: is a FIFO (named pipe)")),
        "{applied:?}"
    );
    assert_eq!(db.rows().len(), 1);

    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(), 0);
}

#[test]
fn a_search_path_set_by_one_daemon_run_does_not_reach_the_next() {
    let db = Db::new();
    let set_path =
        "CREATE SCHEMA \"app\";--> statement-breakpoint\nSET search_path TO app, public;\n";
    let f = Folder::new(&[("0000_app", 1000, set_path)]);
    let mut d = Daemon::start(cli(), &db.url(), f.path(), "apply = \"on-trigger\"");
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
