//! The daemon end to end: a real PostgreSQL, real sockets, real signals, and a test-owned
//! NOTIFY_SOCKET standing in for systemd.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use serde_json::Value;

use crate::support::{
    cli, eventually, own_cluster, request, root_or_skip, ClusterOptions, Daemon, Db, Folder,
    Signal, StopMode, GATED, GATED_ACTIVITY,
};

const A: &str = "CREATE TABLE \"persons\" (\"id\" serial PRIMARY KEY, \"name\" text);\n";
const B: &str = "CREATE TABLE \"media\" (\"id\" serial PRIMARY KEY);--> statement-breakpoint\nALTER TABLE \"persons\" ADD COLUMN \"born\" date;\n";
const C: &str = "CREATE INDEX \"persons_name_idx\" ON \"persons\" (\"name\");\n";

#[test]
fn ready_only_after_pending_migrations_are_in_the_database() {
    let db = Db::new();
    let f = Folder::new(&[("0000_a", 1000, A), ("0001_b", 2000, B)]);
    let mut d = Daemon::start(cli(), &db.url(), f.path(), "");
    let ready = d.ready();
    // The daemon's rows are there at the moment READY=1 arrives.
    assert_eq!(db.rows().len(), 2);
    assert!(
        ready.contains("STATUS=Up to date: 2 migrations applied"),
        "{ready}"
    );
    let log = d.log();
    assert!(
        log.contains("Applied: 0000_a.sql") && log.contains("Applied: 0001_b.sql"),
        "{log}"
    );
    assert!(
        log.contains("MIGRATION=") || log.contains("MIGRATION"),
        "{log}"
    );

    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(), 0);
    d.wait_notify(|m| m.contains("STOPPING=1"));
    assert!(!d.socket.exists(), "the socket file is removed on exit");
}

#[test]
fn start_up_failure_exits_non_zero_without_ready() {
    let db = Db::new();
    let f = Folder::new(&[
        ("0000_a", 1000, A),
        ("0001_bad", 2000, "SELECT * FROM nope;"),
    ]);
    let mut d = Daemon::start(cli(), &db.url(), f.path(), "");
    assert_eq!(d.wait_exit(), 3, "exit 3: the start-up migration failed");
    assert!(
        !d.messages().iter().any(|m| m.contains("READY=1")),
        "{:?}",
        d.messages()
    );
    let log = d.log();
    assert!(
        log.contains("relation \"nope\" does not exist (SQLSTATE 42P01)"),
        "{log}"
    );
    assert!(log.contains("start-up migration failed"), "{log}");
    assert_eq!(db.rows().len(), 1);
}

#[test]
fn a_database_that_cannot_work_ends_the_start_instead_of_waiting_for_ever() {
    let db = Db::new();
    let f = Folder::new(&[("0000_a", 1000, A)]);
    let url = db
        .url()
        .replace(&format!("dbname={}", db.name), "dbname=no_such_database");
    let mut d = Daemon::start(cli(), &url, f.path(), "");
    assert_eq!(d.wait_exit(), 2);
    let log = d.log();
    assert!(
        log.contains("SQLSTATE=\"3D000\"") || log.contains("3D000"),
        "{log}"
    );
    assert!(
        log.contains("Create the database (createdb -O <user> <database>), or correct its name in database_url"),
        "{log}"
    );
    assert!(!d.messages().iter().any(|m| m.contains("READY=1")));
}

#[test]
fn trigger_applies_and_prints_the_migrate_lines() {
    let db = Db::new();
    let f = Folder::new(&[("0000_a", 1000, A)]);
    let mut d = Daemon::start(cli(), &db.url(), f.path(), "apply_on_start = true");
    d.ready();
    f.write(&[
        ("0000_a", 1000, A),
        ("0001_b", 2000, B),
        ("0002_c", 3000, C),
    ]);

    let dry = d.trigger(&["--dry-run"]);
    dry.ok();
    assert!(
        dry.stdout
            .starts_with("Pending migrations:\n  0001_b.sql\n"),
        "{}",
        dry.stdout
    );
    assert!(
        dry.stdout
            .ends_with("\nNo changes were applied. Run 'vamsa-migrate trigger' to apply.\n"),
        "{}",
        dry.stdout
    );
    assert_eq!(db.rows().len(), 1);

    let run = d.trigger(&[]);
    run.ok();
    assert_eq!(
        run.stdout,
        "Running migrations...\nApplied: 0001_b.sql\nApplied: 0002_c.sql\nMigration complete.\n"
    );
    assert_eq!(db.rows().len(), 3);
    let again = d.trigger(&[]);
    again.ok();
    assert_eq!(again.stdout, "No pending migrations.\n");

    // A broken migration: exit 1 and the full error on stderr.
    f.write(&[
        ("0000_a", 1000, A),
        ("0001_b", 2000, B),
        ("0002_c", 3000, C),
        (
            "0003_bad",
            4000,
            "ALTER TABLE persons ADD COLUMN name text;",
        ),
    ]);
    let bad = d.trigger(&["--format", "human"]);
    bad.code(1);
    assert!(bad.stderr.contains("SQLSTATE 42701"), "{}", bad.stderr);
    assert!(bad.stderr.contains("Likely cause:"), "{}", bad.stderr);
    d.wait_log("SQLSTATE");

    let json = d.trigger(&["--format", "json"]);
    json.code(1);
    let last: Value = serde_json::from_str(json.stdout.lines().last().unwrap()).unwrap();
    assert_eq!(last["event"], "done");
    assert_eq!(last["ok"], false);
    assert_eq!(last["error"]["sqlstate"], "42701");
    assert_eq!(last["error"]["migration"], "0003_bad.sql");
}

#[test]
fn trigger_without_a_daemon_says_how_to_start_it() {
    let dir = tempfile::tempdir().unwrap();
    let run = cli()
        .arg("trigger")
        .env("VAMSA_MIGRATE_SOCKET_PATH", dir.path().join("none.sock"))
        .run();
    run.code(69);
    assert!(run.stderr.contains("vamsa-migrate is not running: start it with `systemctl start vamsa-migrate` or run `vamsa-migrate migrate`"), "{}", run.stderr);
}

#[test]
fn socket_protocol_ping_status_dry_run_and_bad_input() {
    let db = Db::new();
    let f = Folder::new(&[("0000_a", 1000, A)]);
    let mut d = Daemon::start(cli(), &db.url(), f.path(), "apply_on_start = false");
    let ready = d.ready();
    assert!(
        ready.contains("STATUS=1 pending; waiting for trigger"),
        "{ready}"
    );
    assert_eq!(
        db.psql("SELECT count(*) FROM pg_namespace WHERE nspname = 'drizzle'"),
        "0"
    );

    let pong = d.request(b"{\"command\":\"ping\"}\n");
    assert_eq!(pong[0]["event"], "pong");
    assert_eq!(pong[1]["ok"], true);

    let status = d.request(b"{\"command\":\"status\"}\n");
    assert_eq!(status[0]["event"], "status");
    assert_eq!(status[0]["status"]["pending"], 1);

    let dry = d.request(b"{\"command\":\"dry-run\"}\n");
    assert_eq!(dry[0]["event"], "pending");
    assert_eq!(dry[0]["migrations"][0]["migration"], "0000_a.sql");
    assert_eq!(dry.last().unwrap()["ok"], true);

    for (bad, expect) in [
        (&b"hello\n"[..], "not a JSON request"),
        (b"{\"command\":\"drop-database\"}\n", "unknown command"),
        (b"{\"cmd\":1}\n", "not a JSON request"),
    ] {
        let reply = d.request(bad);
        assert_eq!(reply.last().unwrap()["ok"], false);
        assert!(
            reply.last().unwrap()["error"]["message"]
                .as_str()
                .unwrap()
                .contains(expect),
            "{reply:?}"
        );
    }
    // A line over 64 KiB.
    let mut huge = vec![b'x'; 70 * 1024];
    huge.push(b'\n');
    let reply = d.request(&huge);
    assert!(
        reply[0]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("longer than 64 KiB"),
        "{reply:?}"
    );

    // Several requests on one connection.
    let mut stream = UnixStream::connect(&d.socket).unwrap();
    stream
        .write_all(b"{\"command\":\"ping\"}\n{\"command\":\"apply\"}\n")
        .unwrap();
    stream.shutdown(std::net::Shutdown::Write).unwrap();
    let mut all = String::new();
    stream.read_to_string(&mut all).unwrap();
    assert!(
        all.contains("\"event\":\"pong\"") && all.contains("\"event\":\"applied\""),
        "{all}"
    );
    assert_eq!(db.rows().len(), 1);
}

#[test]
fn a_stalled_client_times_out_and_does_not_block_others() {
    let db = Db::new();
    let f = Folder::new(&[("0000_a", 1000, A)]);
    let mut d = Daemon::start(cli(), &db.url(), f.path(), "");
    d.ready();
    let mut stalled = UnixStream::connect(&d.socket).unwrap();
    stalled.write_all(b"{\"command\":\"app").unwrap();
    // Others are served meanwhile: the pong arrives while the stalled connection is still
    // open and unanswered (a serial daemon would first time it out, then answer the ping).
    assert_eq!(d.request(b"{\"command\":\"ping\"}\n")[0]["event"], "pong");
    stalled.set_nonblocking(true).unwrap();
    let unanswered = stalled.read(&mut [0u8; 1]).map_err(|e| e.kind());
    assert_eq!(
        unanswered,
        Err(std::io::ErrorKind::WouldBlock),
        "the stalled connection was answered or closed before the ping"
    );
    stalled.set_nonblocking(false).unwrap();
    stalled
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut reply = String::new();
    BufReader::new(stalled).read_line(&mut reply).unwrap();
    assert!(
        reply.contains("timed out waiting for a request line"),
        "{reply}"
    );
}

#[test]
fn two_hundred_concurrent_clients_and_triggers_during_a_run() {
    let db = Db::new();
    db.close_gate();
    let slow = format!("CREATE TABLE slow (id int);--> statement-breakpoint\n{GATED}");
    let f = Folder::new(&[("0000_a", 1000, A)]);
    let mut d = Daemon::start(cli(), &db.url(), f.path(), "");
    d.ready();
    f.write(&[
        ("0000_a", 1000, A),
        ("0001_slow", 2000, &slow),
        ("0002_c", 3000, C),
    ]);
    let socket = d.socket.clone();
    let applier = std::thread::spawn(move || request(&socket, b"{\"command\":\"apply\"}\n"));
    eventually("the gated migration", || db.has_activity(GATED_ACTIVITY));
    // While the run is in progress (held open until the gate opens): 200 clients at once, and
    // more triggers.
    let (during, after): (Vec<_>, Vec<_>) = (0..200)
        .map(|i| {
            let socket = d.socket.clone();
            let thread = std::thread::spawn(move || {
                let line: &[u8] = match i % 4 {
                    0 => b"{\"command\":\"apply\"}\n",
                    1 => b"{\"command\":\"status\"}\n",
                    2 => b"garbage\n",
                    _ => b"{\"command\":\"ping\"}\n",
                };
                request(&socket, line)
            });
            (i, thread)
        })
        .partition(|(i, _)| i % 4 >= 2);
    // Pings and bad requests are answered by the socket itself, during the run.
    for (i, t) in during {
        let events = t.join().unwrap();
        let done = events.last().unwrap();
        assert_eq!(done["event"], "done", "client {i}: {events:?}");
        if i % 4 == 3 {
            assert_eq!(events[0]["event"], "pong", "client {i}: {events:?}");
            assert_eq!(events[0]["busy"], true, "client {i}: {events:?}");
        } else {
            assert_eq!(done["ok"], false, "client {i}: {events:?}");
        }
    }
    db.open_gate();
    let first = applier.join().unwrap();
    let applied: Vec<&str> = first
        .iter()
        .filter(|e| e["event"] == "applied")
        .map(|e| e["migration"].as_str().unwrap())
        .collect();
    assert_eq!(applied, ["0001_slow.sql", "0002_c.sql"]);
    for (i, t) in after {
        let events = t.join().unwrap();
        let done = events.last().unwrap();
        assert_eq!(done["event"], "done", "client {i}: {events:?}");
        if i % 4 == 0 {
            // Waited for the run, then answered from a fresh plan: nothing left to apply.
            assert_eq!(done["ok"], true, "{events:?}");
            assert_eq!(done["applied"], 0, "{events:?}");
        }
    }
    assert_eq!(db.rows().len(), 3);
}

#[test]
fn an_unauthorised_peer_may_not_apply() {
    // Only meaningful as root: otherwise every uid is "another user" already.
    if !root_or_skip("run the trigger as another user (nobody)") {
        return;
    }
    let db = Db::new();
    let f = Folder::new(&[("0000_a", 1000, A)]);
    let mut d = Daemon::start(cli(), &db.url(), f.path(), "apply_on_start = false");
    d.ready();
    // Let anyone connect, so that the daemon itself must refuse.
    d.open_socket_to_everyone();
    let mut cmd = cli();
    cmd.arg("trigger")
        .env("VAMSA_MIGRATE_SOCKET_PATH", &d.socket)
        .as_nobody();
    let run = cmd.run();
    run.code(77);
    assert!(
        run.stderr.contains("permission denied: uid 65534"),
        "{}",
        run.stderr
    );
    d.wait_log("refused an apply request from uid 65534");
    assert_eq!(
        db.psql("SELECT count(*) FROM pg_namespace WHERE nspname = 'drizzle'"),
        "0"
    );

    // allowed_users lets it through after a reload.
    let text = std::fs::read_to_string(&d.config).unwrap();
    std::fs::write(&d.config, format!("{text}allowed_users = [\"65534\"]\n")).unwrap();
    d.signal(Signal::SIGHUP);
    d.wait_log("configuration reloaded");
    let run = cmd.run();
    run.ok();
    assert_eq!(db.rows().len(), 1);
}

#[test]
fn watched_folder_reports_new_migrations_and_ignores_half_written_state() {
    let db = Db::new();
    let f = Folder::new(&[("0000_a", 1000, A)]);
    let mut d = Daemon::start(cli(), &db.url(), f.path(), "");
    d.ready();
    // Half-written: the journal names a file that is not there yet.
    let journal = f.path().join("meta/_journal.json");
    let text = std::fs::read_to_string(&journal).unwrap();
    std::fs::write(&journal, text.replace("}]}", "},{\"idx\":1,\"version\":\"7\",\"when\":2000,\"tag\":\"0001_b\",\"breakpoints\":true}]}")).unwrap();
    d.wait_log("not consistent yet");
    // Noticed from the file's own event (how fast is measured by `cargo bench`: "file copied ->
    // pending migration detected").
    std::fs::write(f.path().join("0001_b.sql"), B).unwrap();
    d.wait_log("1 pending migration detected: 0001_b.sql");
    d.wait_notify(|m| m.contains("STATUS=1 pending; waiting for trigger"));
    assert_eq!(
        db.rows().len(),
        1,
        "on-trigger: nothing applied by the watcher"
    );
}

#[test]
fn on_change_applies_and_a_replaced_folder_is_still_watched() {
    let db = Db::new();
    let root = tempfile::tempdir().unwrap();
    let live = root.path().join("drizzle");
    let first = Folder::new(&[("0000_a", 1000, A)]);
    std::fs::rename(first.keep(), &live).unwrap();
    let mut d = Daemon::start(cli(), &db.url(), &live, "apply = \"on-change\"");
    d.ready();
    assert_eq!(db.rows().len(), 1);

    // A release replaces the whole folder by a rename, as rsync/git/symlink swaps do.
    let next = Folder::new(&[("0000_a", 1000, A), ("0001_b", 2000, B)]);
    let staged = root.path().join("drizzle.new");
    std::fs::rename(next.keep(), &staged).unwrap();
    std::fs::rename(&live, root.path().join("drizzle.old")).unwrap();
    std::fs::rename(&staged, &live).unwrap();
    d.wait_log("Applied: 0001_b.sql");
    assert_eq!(db.rows().len(), 2);

    // And the new folder's own changes are seen too.
    let third = Folder::new(&[
        ("0000_a", 1000, A),
        ("0001_b", 2000, B),
        ("0002_c", 3000, C),
    ]);
    std::fs::write(live.join("0002_c.sql"), C).unwrap();
    std::fs::copy(
        third.path().join("meta/_journal.json"),
        live.join("meta/_journal.json"),
    )
    .unwrap();
    d.wait_log("Applied: 0002_c.sql");
    assert_eq!(db.rows().len(), 3);
}

#[test]
fn sigterm_during_a_long_migration_rolls_it_back_and_the_next_start_applies_it() {
    let db = Db::new();
    let slow = "CREATE TABLE slow (id int);--> statement-breakpoint\nSELECT pg_sleep(60);";
    let f = Folder::new(&[("0000_a", 1000, A)]);
    let mut d = Daemon::start(cli(), &db.url(), f.path(), "stop_grace = \"1s\"");
    d.ready();
    f.write(&[("0000_a", 1000, A), ("0001_slow", 2000, slow)]);
    let socket = d.socket.clone();
    let applier = std::thread::spawn(move || request(&socket, b"{\"command\":\"apply\"}\n"));
    eventually("the slow statement", || {
        db.psql("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND query LIKE '%pg_sleep(60)%' AND pid <> pg_backend_pid()") == "1"
    });
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(), 0);
    // Cancelled on the server, not abandoned: once the daemon is gone the statement no longer
    // runs (a dropped connection would leave it sleeping out its minute), and the client saw
    // PostgreSQL's query_canceled.
    assert!(
        !db.has_activity("state = 'active' AND query LIKE '%pg_sleep(60)%'"),
        "the slow statement still runs after the daemon exited"
    );
    d.wait_notify(|m| m.contains("STOPPING=1"));
    let events = applier.join().unwrap();
    let done = events.last().unwrap();
    assert_eq!(done["ok"], false, "{events:?}");
    assert_eq!(done["error"]["sqlstate"], "57014", "{events:?}");
    assert!(
        !db.table_exists("slow"),
        "the cancelled migration must be rolled back"
    );
    assert_eq!(db.rows().len(), 1);
    assert!(
        d.log().contains("cancelling the migration in progress"),
        "{}",
        d.log()
    );

    // The next start applies it (a fast version of the same file would be "edited": use it as is
    // but with a short sleep by accepting a new file? No: keep the file, start with apply_on_start).
    f.write(&[
        ("0000_a", 1000, A),
        (
            "0001_slow",
            2000,
            "CREATE TABLE slow (id int);--> statement-breakpoint\nSELECT pg_sleep(0.1);",
        ),
    ]);
    let mut d2 = Daemon::start(cli(), &db.url(), f.path(), "");
    d2.ready();
    assert!(db.table_exists("slow"));
    assert_eq!(db.rows().len(), 2);
}

#[test]
fn sighup_reloads_with_reloading_then_ready_and_keeps_a_bad_config_out() {
    let db = Db::new();
    let f = Folder::new(&[("0000_a", 1000, A)]);
    let mut d = Daemon::start(cli(), &db.url(), f.path(), "");
    d.ready();
    let before = d.events().len();
    d.signal(Signal::SIGHUP);
    let (reloading, _) = d.wait_event(before, |e| {
        e.is_notify_with("RELOADING=1") && e.text.contains("MONOTONIC_USEC=")
    });
    d.wait_event(reloading + 1, |e| e.is_notify_with("READY=1"));
    // A broken config is refused and the daemon keeps working with the old one.
    std::fs::write(&d.config, "this is = = not toml").unwrap();
    d.signal(Signal::SIGHUP);
    d.wait_log("configuration reload failed, keeping the previous one");
    assert_eq!(d.request(b"{\"command\":\"ping\"}\n")[0]["event"], "pong");
    let run = d.trigger(&["--dry-run"]);
    run.ok();
}

#[test]
fn watchdog_pings_when_systemd_asks_for_them() {
    let db = Db::new();
    let f = Folder::new(&[("0000_a", 1000, A)]);
    let mut watched = cli();
    watched.env("WATCHDOG_USEC", "400000");
    let mut d = Daemon::start(watched, &db.url(), f.path(), "");
    d.ready();
    let pings = |d: &Daemon| {
        d.messages()
            .iter()
            .filter(|m| m.contains("WATCHDOG=1"))
            .count()
    };
    // It keeps pinging ...
    eventually("ten watchdog pings", || pings(&d) >= 10);
    // ... every 200 ms (half of WATCHDOG_USEC, as sd_watchdog_enabled(3) of systemd 252 advises),
    // never more often: a loaded machine can only delay pings, never add any.
    let count = pings(&d);
    let lived = d.started.elapsed();
    assert!(
        count as u128 <= lived.as_millis() / 200 + 1,
        "{count} pings in {lived:?}: more often than every 200 ms"
    );
}

#[test]
fn socket_activation_serves_on_the_passed_descriptor() {
    let db = Db::new();
    let f = Folder::new(&[("0000_a", 1000, A)]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("activated.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let mut d = Daemon::start_activated(cli(), &db.url(), f.path(), "", &listener);
    d.ready();
    assert!(
        !d.socket.exists(),
        "with socket activation the daemon must not bind socket_path"
    );
    let events = request(&path, b"{\"command\":\"status\"}\n");
    assert_eq!(events[0]["event"], "status");
    assert_eq!(events[0]["status"]["applied"], 1);
    drop(listener);
}

#[test]
fn database_down_at_start_extends_the_timeout_then_becomes_ready() {
    let mut cluster = own_cluster(ClusterOptions::default());
    cluster.create_database("app").unwrap();
    cluster.stop(StopMode::Fast).unwrap();
    let f = Folder::new(&[("0000_a", 1000, A)]);
    let mut d = Daemon::start(
        cli(),
        &cluster.url("app"),
        f.path(),
        "db_retry_max = \"500ms\"",
    );
    let waiting = d.wait_notify(|m| m.contains("STATUS=Waiting for database at 127.0.0.1:"));
    assert!(waiting.contains("(attempt "), "{waiting}");
    d.wait_notify(|m| m.contains("EXTEND_TIMEOUT_USEC="));
    assert!(!d.messages().iter().any(|m| m.contains("READY=1")));
    cluster.pg_ctl_start().unwrap();
    let ready = d.ready();
    assert!(
        ready.contains("Up to date: 1 migrations applied"),
        "{ready}"
    );

    // PostgreSQL restarted while the daemon is idle: the next trigger reconnects.
    cluster.stop(StopMode::Fast).unwrap();
    cluster.pg_ctl_start().unwrap();
    let run = d.trigger(&[]);
    run.ok();
    assert_eq!(run.stdout, "No pending migrations.\n");
}

#[test]
fn logs_go_to_stderr_without_a_journal() {
    let db = Db::new();
    let f = Folder::new(&[("0000_a", 1000, A)]);
    let mut journal_less = cli();
    // `auto` follows JOURNAL_STREAM only; make sure there is none.
    journal_less.env_remove("JOURNAL_STREAM");
    let mut d = Daemon::start(journal_less, &db.url(), f.path(), "");
    d.ready();
    let log = d.log();
    assert!(
        log.contains("INFO") && log.contains("Applied: 0000_a.sql"),
        "{log}"
    );
    assert!(
        log.contains("ready: Up to date: 1 migrations applied"),
        "{log}"
    );
}
