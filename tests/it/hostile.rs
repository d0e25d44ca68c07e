//! Hostile neighbours (issue 11): each test performs an attack a local user (`nobody`) or an
//! interruption could mount on the same host, and checks that it fails. The README's
//! "Guarantees" links each to its item.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use nix::sys::signal::kill;
use nix::unistd::Pid;

use crate::support::{cli, eventually, root_or_skip, Daemon, Db, Folder, Run, Signal};

const A: &str = "CREATE TABLE persons (id serial PRIMARY KEY, name text NOT NULL);\n";
const B: &str = "ALTER TABLE persons ADD COLUMN born date;\n";
const SECRET: &str = "Sup3r-s3cret";

fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// A URL with a password (the test cluster trusts local connections, so it is only carried).
fn url_with_password(db: &Db) -> String {
    format!(
        "postgres://postgres:{SECRET}@127.0.0.1:{}/{}?sslmode=disable",
        db.cluster.port(),
        db.name
    )
}

fn pid_gone(pid: u32) -> bool {
    // A zombie has ended; only its parent's wait is missing.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z')),
    }
}

fn signal(child: &Child, signal: Signal) {
    let pid = i32::try_from(child.id()).expect("a pid fits in pid_t");
    kill(Pid::from_raw(pid), signal).expect("signal our child");
}

/// Runs `cmd` as uid and gid 65534 (`nobody`); std drops the supplementary groups.
fn as_nobody(cmd: &mut Command) -> &mut Command {
    cmd.uid(65534).gid(65534)
}

// ---- Item 7: a backup_dir others may change -------------------------------------------------

/// nobody replaces every temporary dump name with a link to `target` as soon as it appears.
fn swap_partials_for_links(dir: &Path, target: &Path) -> Child {
    let script = format!(
        "while :; do for f in {dir}/.*.partial; do \
           [ -f \"$f\" ] && [ ! -L \"$f\" ] && ln -sfn {target} \"$f\"; \
         done; done",
        dir = dir.display(),
        target = target.display()
    );
    let mut cmd = Command::new("sh");
    cmd.args(["-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    as_nobody(&mut cmd);
    cmd.spawn().unwrap()
}

fn migrate_into(db: &Db, folder: &Path, backups: &Path) -> Run {
    let mut cli = db.cli(folder);
    cli.arg("migrate").backup_dir(backups);
    cli.run()
}

#[test]
fn a_backup_dir_others_may_write_is_refused_while_nobody_swaps_its_temporary_names() {
    if !root_or_skip("attack as nobody and chown a folder to it") {
        return;
    }
    let db = Db::new();
    let f = Folder::new(&[("0000_a", 1000, A)]);
    let root = tempfile::tempdir().unwrap();
    std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    // A root-owned file the attacker wants overwritten.
    let victim = root.path().join("victim");
    std::fs::write(&victim, "precious\n").unwrap();
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o600)).unwrap();
    let shared = root.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();

    let mut attacker = swap_partials_for_links(&shared, &victim);
    let run = migrate_into(&db, f.path(), &shared);
    attacker.kill().unwrap();
    attacker.wait().unwrap();

    run.code(1);
    assert!(
        run.stderr.contains(&format!(
            "backup_dir {} is writable by other users (mode 777)",
            shared.display()
        )) && run
            .stderr
            .contains(&format!("`chmod 700 {}`", shared.display())),
        "{}",
        run.stderr
    );
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");
    assert!(names_in(&shared).is_empty(), "{:?}", names_in(&shared));
    assert!(!db.table_exists("persons"), "migrated without a backup");

    // A folder another user owns is refused too, whatever its mode.
    let theirs = root.path().join("theirs");
    std::fs::create_dir(&theirs).unwrap();
    std::fs::set_permissions(&theirs, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
    let run = migrate_into(&db, f.path(), &theirs);
    run.code(1);
    assert!(
        run.stderr
            .contains("is owned by uid 65534, neither this user"),
        "{}",
        run.stderr
    );
    assert!(names_in(&theirs).is_empty());
    assert!(!db.table_exists("persons"));
}

// ---- Item 8: an interrupted backup ----------------------------------------------------------

/// A migration applied, one pending, and a pg_dump that records its pid and environment.
struct Interrupted {
    db: Db,
    folder: Folder,
    shim: tempfile::TempDir,
    tmp: tempfile::TempDir,
    lock: Child,
}

impl Interrupted {
    fn new() -> Interrupted {
        let db = Db::new();
        let folder = Folder::new(&[("0000_a", 1000, A)]);
        db.run(folder.path(), &["migrate"]).ok();
        folder.write(&[("0000_a", 1000, A), ("0001_b", 2000, B)]);
        let shim = tempfile::tempdir().unwrap();
        let real = Command::new("sh")
            .args(["-c", "command -v pg_dump"])
            .output()
            .unwrap();
        let real = String::from_utf8_lossy(&real.stdout).trim().to_string();
        let script = format!(
            "#!/bin/sh\necho $$ > {dir}/pid\ntr '\\0' '\\n' < /proc/$$/environ > {dir}/environ\nexec {real} \"$@\"\n",
            dir = shim.path().display()
        );
        std::fs::write(shim.path().join("pg_dump"), script).unwrap();
        std::fs::set_permissions(
            shim.path().join("pg_dump"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        // The shim's folder is PG_BIN_DIR: the backup's pg_restore comes from there too.
        std::os::unix::fs::symlink(
            db.cluster.program("pg_restore"),
            shim.path().join("pg_restore"),
        )
        .unwrap();
        let lock = Interrupted::hold_persons(&db);
        Interrupted {
            db,
            folder,
            shim,
            tmp: tempfile::tempdir().unwrap(),
            lock,
        }
    }

    /// A session holding an ACCESS EXCLUSIVE lock on persons: pg_dump waits for it.
    fn hold_persons(db: &Db) -> Child {
        let mut cmd = db.cluster.psql_command(&db.name);
        cmd.stdin(Stdio::piped()).stdout(Stdio::null());
        let mut child = cmd.spawn().unwrap();
        let stdin = child.stdin.as_mut().unwrap();
        stdin
            .write_all(b"BEGIN;\nLOCK TABLE persons IN ACCESS EXCLUSIVE MODE;\n")
            .unwrap();
        stdin.flush().unwrap();
        eventually("the lock on persons", || {
            db.psql("SELECT count(*) FROM pg_locks WHERE relation = 'persons'::regclass AND mode = 'AccessExclusiveLock' AND granted") == "1"
        });
        child
    }

    fn release(&mut self) {
        drop(self.lock.stdin.take());
        self.lock.wait().unwrap();
    }

    /// `migrate` with the password in DATABASE_URL, PGPASSWORD set, TMPDIR of our own, and the
    /// shim's folder as PG_BIN_DIR (where backups take pg_dump from first).
    fn spawn_migrate(&self) -> Child {
        let mut cmd = cli();
        cmd.arg("migrate")
            .migrations_dir(self.folder.path())
            .backup_dir(self.db.backups.path())
            .env("DATABASE_URL", url_with_password(&self.db))
            .env("PGPASSWORD", "leak-me-not")
            .env("TMPDIR", self.tmp.path())
            .env("PG_BIN_DIR", self.shim.path());
        let child = cmd
            .command()
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        eventually("pg_dump waiting for the lock", || {
            self.db.psql("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'vamsa-migrate backup' AND wait_event_type = 'Lock'") == "1"
        });
        child
    }

    fn pg_dump_pid(&self) -> u32 {
        let text = std::fs::read_to_string(self.shim.path().join("pid")).unwrap();
        text.trim().parse().unwrap()
    }

    fn partials(&self) -> Vec<String> {
        names_in(self.db.backups.path())
            .into_iter()
            .filter(|n| n.ends_with(".partial"))
            .collect()
    }
}

#[test]
fn sigterm_during_a_backup_stops_pg_dump_and_leaves_neither_password_nor_partial_dump() {
    let mut t = Interrupted::new();
    let dumps_before = names_in(t.db.backups.path());
    let migrate = t.spawn_migrate();
    // While pg_dump runs: the password is in no file and not in its environment.
    assert_eq!(names_in(t.tmp.path()), Vec::<String>::new());
    let environ = std::fs::read_to_string(t.shim.path().join("environ")).unwrap();
    for leak in [SECRET, "leak-me-not", "DATABASE_URL=", "PGPASSWORD="] {
        assert!(
            !environ.contains(leak),
            "pg_dump inherits {leak}:\n{environ}"
        );
    }
    assert_eq!(t.partials().len(), 1, "the dump is being written");

    signal(&migrate, Signal::SIGTERM);
    let run = Run::from(migrate.wait_with_output().unwrap());
    run.code(143);
    assert!(run.stderr.contains("stopped by SIGTERM"), "{}", run.stderr);
    let pid = t.pg_dump_pid();
    eventually("pg_dump to end", || pid_gone(pid));
    assert_eq!(names_in(t.db.backups.path()), dumps_before);
    assert_eq!(names_in(t.tmp.path()), Vec::<String>::new());
    assert!(!run.stdout.contains(SECRET) && !run.stderr.contains(SECRET));
    t.release();
    assert_eq!(t.db.rows().len(), 1, "nothing applied after the stop");
}

#[test]
fn sigkill_during_a_backup_leaves_a_partial_dump_that_the_next_run_removes() {
    let mut t = Interrupted::new();
    let mut migrate = t.spawn_migrate();
    migrate.kill().unwrap();
    migrate.wait().unwrap();
    // The orphaned pg_dump still writes (and holds) its file: nobody removes it meanwhile.
    assert_eq!(t.partials().len(), 1);
    assert_eq!(
        names_in(t.tmp.path()),
        Vec::<String>::new(),
        "no password file"
    );
    t.release();
    let pid = t.pg_dump_pid();
    eventually("the orphaned pg_dump to end", || pid_gone(pid));
    assert_eq!(t.partials().len(), 1, "what a SIGKILL leaves");

    t.db.run(t.folder.path(), &["migrate"]).ok();
    assert_eq!(t.partials(), Vec::<String>::new(), "the next run cleans up");
    assert_eq!(names_in(t.db.backups.path()).len(), 2);
    assert_eq!(t.db.rows().len(), 2);
}

// ---- Item 10: the password in configuration errors ------------------------------------------

const BAD_LINE: &str = "database_url = postgres://vamsa:Sup3r-s3cret@db.example/vamsa\n";

#[track_caller]
fn names_the_place_not_the_secret(text: &str, file: &Path) {
    assert!(!text.contains(SECRET), "the password is shown:\n{text}");
    assert!(
        text.contains(&format!(
            "{}: line 1, column 16: TOML syntax: ",
            file.display()
        )),
        "{text}"
    );
}

#[test]
fn config_errors_never_show_the_password_in_the_cli_at_daemon_start_or_on_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, BAD_LINE).unwrap();

    let run = cli().arg("status").env("VAMSA_MIGRATE_CONFIG", &bad).run();
    run.code(2);
    names_the_place_not_the_secret(&run.stderr, &bad);

    // A password where a value of another type belongs, from the environment.
    let run = cli()
        .arg("status")
        .env(
            "VAMSA_MIGRATE_LOCK_WAIT",
            format!("host=h password={SECRET}"),
        )
        .run();
    run.code(2);
    assert!(
        run.stderr.contains("lock_wait") && !run.stderr.contains(SECRET),
        "{}",
        run.stderr
    );

    let run = cli()
        .arg("daemon")
        .env("VAMSA_MIGRATE_CONFIG", &bad)
        .env_remove("JOURNAL_STREAM")
        .env_remove("NOTIFY_SOCKET")
        .run();
    run.code(2);
    names_the_place_not_the_secret(&run.stderr, &bad);

    let db = Db::new();
    let f = Folder::new(&[("0000_a", 1000, A)]);
    let mut d = Daemon::start(cli(), &db.url(), f.path(), "");
    d.ready();
    std::fs::write(&d.config, BAD_LINE).unwrap();
    d.signal(Signal::SIGHUP);
    d.wait_log("configuration reload failed, keeping the previous one");
    names_the_place_not_the_secret(&d.log(), &d.config);
}

// ---- Item 11: secret files other users may read ---------------------------------------------

/// Whether nobody can read `path` (the attack itself).
fn nobody_reads(path: &Path) -> bool {
    let mut cat = Command::new("cat");
    cat.arg(path).stdout(Stdio::piped()).stderr(Stdio::null());
    as_nobody(&mut cat);
    let out = cat.output().unwrap();
    out.status.success() && String::from_utf8_lossy(&out.stdout).contains(SECRET)
}

fn status_with_config(config: &Path, extra: &[&str]) -> Run {
    cli()
        .arg("status")
        .args(extra)
        .env("VAMSA_MIGRATE_CONFIG", config)
        .run()
}

#[test]
fn a_password_other_users_may_read_is_named_with_the_chmod_that_fixes_it() {
    if !root_or_skip("read the files as nobody") {
        return;
    }
    let db = Db::new();
    let f = Folder::new(&[("0000_a", 1000, A)]);
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let config = dir.path().join("config.toml");
    let url = format!("{} password={SECRET}", db.url());
    std::fs::write(
        &config,
        format!("database_url = {url:?}\nmigrations_dir = {:?}\n", f.path()),
    )
    .unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert!(nobody_reads(&config), "the attack");
    let run = status_with_config(&config, &[]);
    run.code(3);
    let warning = format!(
        "config file {p} holds the database password and every local user may read it (mode 644): `chmod o-rwx {p}`",
        p = config.display()
    );
    assert!(run.stderr.contains(&warning), "{}", run.stderr);
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o640)).unwrap();
    assert!(!nobody_reads(&config));
    let run = status_with_config(&config, &[]);
    assert!(!run.stderr.contains("every local user"), "{}", run.stderr);

    // database_password_file, the same way.
    let password = dir.path().join("password");
    std::fs::write(&password, format!("{SECRET}\n")).unwrap();
    std::fs::set_permissions(&password, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::write(
        &config,
        format!(
            "database_url = {:?}\ndatabase_password_file = {password:?}\nmigrations_dir = {:?}\n",
            db.url(),
            f.path()
        ),
    )
    .unwrap();
    assert!(nobody_reads(&password), "the attack");
    let run = status_with_config(&config, &[]);
    run.code(3);
    assert!(
        run.stderr.contains(&format!(
            "database_password_file {p} may be read by every local user (mode 644): `chmod o-rwx {p}`",
            p = password.display()
        )),
        "{}",
        run.stderr
    );

    // A password on the command line: every user sees it in ps while the command runs.
    let run = status_with_config(&config, &["--database-url", &url]);
    run.code(3);
    assert!(
        run.stderr
            .contains("--database-url holds a password, which every local user can see (ps"),
        "{}",
        run.stderr
    );
}

// ---- Item 6: what a peer that may not apply learns -------------------------------------------

const ROLE_WITH_PASSWORD: &str = "CREATE ROLE app_reader LOGIN PASSWORD 'Sup3r-s3cret';\n";

/// One request line on the socket from a process running as nobody; its first reply line.
fn nobody_asks(socket: &Path, line: &str) -> String {
    let script = "import socket,sys\ns=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); s.sendall(sys.argv[2].encode()+b'\\n'); print(s.makefile().readline())";
    let mut cmd = Command::new("python3");
    cmd.args(["-c", script])
        .arg(socket)
        .arg(line)
        .stdout(Stdio::piped());
    as_nobody(&mut cmd);
    let out = cmd.output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_peer_that_may_not_apply_only_pings_by_default_and_never_sees_string_constants() {
    if !root_or_skip("connect to the socket as nobody") {
        return;
    }
    let db = Db::new();
    let f = Folder::new(&[("0000_role", 1000, ROLE_WITH_PASSWORD)]);
    let mut d = Daemon::start(cli(), &db.url(), f.path(), "apply_on_start = false");
    d.ready();
    d.open_socket_to_everyone();
    let mut nobody = cli();
    nobody
        .args(["trigger", "--dry-run"])
        .env("VAMSA_MIGRATE_SOCKET_PATH", &d.socket)
        .as_nobody();

    // The default, peer_view = "ping".
    let run = nobody.run();
    run.code(77);
    assert!(
        run.stderr.contains("may only ping (peer_view = \"ping\")"),
        "{}",
        run.stderr
    );
    assert!(!run.stdout.contains(SECRET) && !run.stderr.contains(SECRET));
    let status = nobody_asks(&d.socket, "{\"command\":\"status\"}");
    assert!(status.contains("may only ping"), "{status}");
    assert!(nobody_asks(&d.socket, "{\"command\":\"ping\"}").contains("pong"));

    // peer_view = "status": the dry run, with every string constant masked.
    let text = std::fs::read_to_string(&d.config).unwrap();
    std::fs::write(&d.config, format!("{text}peer_view = \"status\"\n")).unwrap();
    d.signal(Signal::SIGHUP);
    d.wait_log("configuration reloaded");
    let run = nobody.run();
    run.ok();
    assert!(
        run.stdout
            .contains("CREATE ROLE app_reader LOGIN PASSWORD '…'"),
        "{}",
        run.stdout
    );
    assert!(!run.stdout.contains(SECRET) && !run.stderr.contains(SECRET));

    // A peer that may apply sees the statement as it is.
    let run = d.trigger(&["--dry-run"]);
    run.ok();
    assert!(run.stdout.contains(SECRET), "{}", run.stdout);
}
