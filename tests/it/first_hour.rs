//! A new admin's first hour, the rough edges: what an interrupted command says and returns,
//! files the config names that are not regular files, the environment's own variables,
//! warnings in a file, `new`'s name rule, `backups` of a folder that does not exist, and the
//! words used for a migrations folder that is missing or is a file.

use std::process::{Child, Command, Stdio};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::support::{cli, eventually, Daemon, Db, Folder, Run, GATED, GATED_ACTIVITY};

const A: &str = "CREATE TABLE \"persons\" (\"id\" serial PRIMARY KEY, \"name\" text);\n";

fn spawn(mut cmd: Command) -> Child {
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start vamsa-migrate")
}

fn interrupt(child: Child, signal: Signal) -> Run {
    let pid = i32::try_from(child.id()).expect("a pid fits in pid_t");
    kill(Pid::from_raw(pid), signal).expect("signal our child");
    Run::from(child.wait_with_output().expect("wait for vamsa-migrate"))
}

#[test]
fn every_command_that_stops_on_a_signal_lists_130_and_143() {
    let commands = [
        "migrate", "status", "new", "convert", "backup", "backups", "restore", "demo", "trigger",
    ];
    for command in commands {
        let run = cli().args([command, "--help"]).run();
        run.ok();
        let status = run.stdout.split("Exit status:").nth(1).unwrap_or_default();
        for code in ["130", "143"] {
            assert!(
                status.lines().any(|l| l.trim_start().starts_with(code)),
                "{command} --help lists no {code}:\n{}",
                run.stdout
            );
        }
    }
    let run = cli().args(["daemon", "--help"]).run();
    assert!(!run.stdout.contains("130"), "{}", run.stdout);
}

#[test]
fn sigint_on_trigger_returns_130_and_says_the_daemons_run_goes_on() {
    let db = Db::new();
    let f = Folder::new(&[("0000_a", 1000, A), ("0001_gated", 2000, GATED)]);
    db.close_gate();
    let mut d = Daemon::start(cli(), &db.url(), f.path(), "apply_on_start = false");
    d.ready();
    let mut c = cli();
    c.arg("trigger").env("VAMSA_MIGRATE_SOCKET_PATH", &d.socket);
    let child = spawn(c.command());
    eventually("the gated migration runs", || {
        db.has_activity(GATED_ACTIVITY)
    });
    let run = interrupt(child, Signal::SIGINT);
    run.code(130);
    assert!(
        run.stderr
            .contains("stopped by SIGINT; the daemon's run goes on")
            && run.stderr.contains("journalctl -u vamsa-migrate -f")
            && !run.stderr.contains("rolls back"),
        "{}",
        run.stderr
    );
    db.open_gate();
    eventually("the daemon's run ends applied", || db.rows().len() == 2);
}

#[test]
fn sigint_on_status_says_nothing_was_changed() {
    // A database that never answers: status waits on its connection until the signal.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("local address").port();
    let f = Folder::new(&[("0000_a", 1000, A)]);
    let mut c = cli();
    c.arg("status")
        .database_url(&format!(
            "postgres://u@127.0.0.1:{port}/db?connect_timeout=600"
        ))
        .migrations_dir(f.path());
    let child = spawn(c.command());
    listener.set_nonblocking(true).expect("nonblocking");
    let _held = eventually("status connects", || listener.accept().ok());
    let run = interrupt(child, Signal::SIGINT);
    run.code(130);
    assert!(
        run.stderr
            .contains("stopped by SIGINT; nothing was changed")
            && !run.stderr.contains("rolls back"),
        "{}",
        run.stderr
    );
}

#[test]
fn the_daemon_warns_of_a_password_in_database_url() {
    let db = Db::new();
    let f = Folder::new(&[("0000_a", 1000, A)]);
    let mut flags = cli();
    flags.database_url(&format!("{} password=pw", db.url()));
    let mut d = Daemon::start(flags, &db.url(), f.path(), "apply_on_start = false");
    d.ready();
    d.wait_log("--database-url holds a password");
}

#[test]
fn warnings_into_a_file_are_plain_lines() {
    let f = Folder::new(&[("0000_a", 1000, A)]);
    // Nothing listens on port 1: status fails after the warning.
    let run = cli()
        .args(["status", "--database-url", "postgres://u:pw@127.0.0.1:1/db"])
        .migrations_dir(f.path())
        .run();
    let line = run
        .stderr
        .lines()
        .find(|l| l.contains("--database-url holds a password"))
        .unwrap_or_else(|| panic!("no warning: {}", run.stderr));
    assert!(
        line.starts_with("warning: --database-url holds a password"),
        "{line:?}"
    );
    assert!(!run.stderr.contains('\u{1b}'), "{:?}", run.stderr);
}

#[test]
fn environment_variables_are_named_in_warnings_and_errors() {
    let f = Folder::new(&[("0000_a", 1000, A)]);
    let status = |name: &str, value: &str| {
        cli()
            .args(["status", "--database-url", "postgres://u@127.0.0.1:1/db"])
            .migrations_dir(f.path())
            .env(name, value)
            .run()
    };
    // Not a setting (the package's own variable): a warning, and status goes on (to connect).
    let run = status("VAMSA_MIGRATE_BIN", "/x");
    run.code(1);
    assert!(
        run.stderr
            .contains("warning: VAMSA_MIGRATE_BIN is not a vamsa-migrate setting; ignored"),
        "{}",
        run.stderr
    );
    let run = status("VAMSA_MIGRATE_TRANSACTION", "bogus");
    run.code(2);
    assert!(
        run.stderr
            .contains("VAMSA_MIGRATE_TRANSACTION: \"bogus\" is not one of: per-migration, all"),
        "{}",
        run.stderr
    );
    let run = status("VAMSA_MIGRATE_LOCK_WAIT", "soon");
    run.code(2);
    assert!(
        run.stderr.contains("VAMSA_MIGRATE_LOCK_WAIT: "),
        "{}",
        run.stderr
    );
    // Empty: unset, so the run goes on to connect.
    status("VAMSA_MIGRATE_CONFIG", "").code(1);
    let run = status("VAMSA_MIGRATE_CONFIG", "/nonexistent/c.toml");
    run.code(2);
    assert!(
        run.stderr.contains(
            "config file /nonexistent/c.toml does not exist (set by VAMSA_MIGRATE_CONFIG)"
        ),
        "{}",
        run.stderr
    );
}

#[test]
fn files_the_config_names_must_be_small_regular_files() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let big = dir.path().join("big.toml");
    std::fs::write(&big, vec![b'#'; 2 << 20]).unwrap();
    let f = Folder::new(&[("0000_a", 1000, A)]);
    let with_config = |config: &std::path::Path| {
        cli()
            .args(["status", "--database-url", "postgres://u@127.0.0.1:1/db"])
            .migrations_dir(f.path())
            .arg("--config")
            .arg(config)
            .run()
    };
    let cases = [
        (
            fifo.clone(),
            "it is a FIFO (named pipe), not a regular file",
        ),
        (
            "/dev/zero".into(),
            "it is a character device, not a regular file",
        ),
        (big, "it holds more than 1048576 bytes"),
    ];
    for (path, says) in cases {
        let run = with_config(&path);
        run.code(2);
        let line = format!("{}: cannot read: {says}", path.display());
        assert!(run.stderr.contains(&line), "{}", run.stderr);
    }
    let config = dir.path().join("c.toml");
    std::fs::write(&config, format!("database_password_file = {fifo:?}\n")).unwrap();
    let run = with_config(&config);
    run.code(2);
    let line = format!(
        "database_password_file {}: cannot read: it is a FIFO",
        fifo.display()
    );
    assert!(run.stderr.contains(&line), "{}", run.stderr);
}

#[test]
fn new_says_what_it_makes_of_a_name_and_does_it() {
    let help = cli().args(["new", "--help"]).run();
    assert!(
        help.stdout.contains("every character other than an")
            && help
                .stdout
                .contains("(\"Add media-tags\" gives add_media_tags)"),
        "{}",
        help.stdout
    );
    let f = Folder::new(&[("0000_a", 1000, A)]);
    let run = cli()
        .args(["new", "Add media-tags"])
        .migrations_dir(f.path())
        .run();
    run.ok();
    assert!(
        f.path().join("0001_add_media_tags.sql").is_file(),
        "{run:?}"
    );
    cli()
        .args(["new", "--", "!!"])
        .migrations_dir(f.path())
        .run()
        .code(2);
}

#[test]
fn backups_of_a_missing_folder_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nonexist");
    let run = cli().arg("backups").backup_dir(&missing).run();
    run.code(2);
    let says = format!("Error: backup_dir {} does not exist", missing.display());
    assert!(run.stderr.contains(&says), "{run:?}");
    // An existing empty folder: nothing to list, fine.
    let run = cli().arg("backups").backup_dir(dir.path()).run();
    run.ok();
    assert!(run.stdout.contains("No backups in"), "{run:?}");
}

#[test]
fn a_migrations_dir_that_is_no_folder_is_described_as_it_is() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nonexist");
    let run = cli().arg("status").migrations_dir(&missing).run();
    run.code(2);
    let says = format!(
        "migrations_dir {} does not exist; it was set by --migrations-dir",
        missing.display()
    );
    assert!(run.stderr.contains(&says), "{}", run.stderr);
    let file = dir.path().join("file");
    std::fs::write(&file, "").unwrap();
    let run = cli().arg("status").migrations_dir(&file).run();
    run.code(2);
    let says = format!(
        "migrations_dir {} is not a folder (it is a file)",
        file.display()
    );
    assert!(run.stderr.contains(&says), "{}", run.stderr);
}

/// Needs root, so that it can run this test binary as `nobody`.
#[test]
fn a_root_test_run_as_nobody_prints_why_it_is_skipped() {
    if !crate::support::root_or_skip("run this test binary as nobody") {
        return;
    }
    let me = std::env::current_exe().expect("this test binary");
    let test =
        "hostile::a_backup_dir_others_may_write_is_refused_while_nobody_swaps_its_temporary_names";
    let mut cmd = Command::new(me);
    cmd.args(["--exact", test]);
    std::os::unix::process::CommandExt::uid(&mut cmd, 65534);
    std::os::unix::process::CommandExt::gid(&mut cmd, 65534);
    let run = Run::from(cmd.output().expect("run the test binary as nobody"));
    run.ok();
    assert!(
        run.stderr
            .contains("skipped: not root, and this test needs root to"),
        "{run:?}"
    );
}
