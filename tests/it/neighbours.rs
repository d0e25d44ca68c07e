//! Hostile neighbours on the trigger socket (issue 11, items 1-5 and 9): each test performs an
//! attack a local user (`nobody`, uid 65534) could mount on the same host against the daemon
//! or the `trigger` client, and checks that it fails. The README's "Guarantees" links each to
//! its item.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use crate::support::{cli, eventually, root_or_skip, Daemon, Db, Folder, Run};

const A: &str = "CREATE TABLE persons (id serial PRIMARY KEY, name text NOT NULL);\n";

/// Runs `cmd` as uid and gid 65534 (`nobody`); std drops the supplementary groups.
fn as_nobody(cmd: &mut Command) -> &mut Command {
    cmd.uid(65534).gid(65534)
}

/// A neighbour's process, killed and reaped when the test ends, however it ends.
struct Neighbour(Child);

impl Drop for Neighbour {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A daemon whose `socket_path` is `socket` (the environment overrides its config file).
fn daemon_at(db: &Db, folder: &Folder, socket: &Path, extra: &str) -> Daemon {
    let mut c = cli();
    c.env("VAMSA_MIGRATE_SOCKET_PATH", socket);
    Daemon::start(c, &db.url(), folder.path(), extra)
}

/// `vamsa-migrate trigger ARGS` (as root) against the socket at `socket`.
fn trigger_at(socket: &Path, args: &[&str]) -> Run {
    let mut c = cli();
    c.arg("trigger")
        .args(args)
        .env("VAMSA_MIGRATE_SOCKET_PATH", socket);
    c.run()
}

/// Waits for the daemon to exit; its exit code and log.
fn start_failure(mut d: Daemon) -> (i32, String) {
    let code = d.wait_exit();
    (code, d.log())
}

// ---- Item 4: socket_path replaces only a stale socket ----------------------------------------

#[test]
fn socket_path_replaces_only_a_stale_socket_never_a_file_directory_or_link() {
    let db = Db::new();
    let f = Folder::new(&[("0000_a", 1000, A)]);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("precious.conf");
    std::fs::write(&file, "keep me\n").unwrap();
    let sub = dir.path().join("a-directory");
    std::fs::create_dir(&sub).unwrap();
    let link = dir.path().join("a-link");
    std::os::unix::fs::symlink(&file, &link).unwrap();
    for (path, what) in [
        (&file, "a regular file"),
        (&sub, "a directory"),
        (&link, "a symbolic link"),
    ] {
        let (code, log) = start_failure(daemon_at(&db, &f, path, "apply_on_start = false"));
        assert_eq!(code, 1, "{log}");
        let expected = format!(
            "{} exists and is {what}, not a stale socket",
            path.display()
        );
        assert!(log.contains(&expected), "{log}");
    }
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me\n");
    assert!(sub.is_dir());
    assert!(std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());

    // A stale socket (nobody listens) is replaced, and the daemon then answers there.
    let stale = dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    let mut d = daemon_at(&db, &f, &stale, "apply_on_start = false");
    d.ready();
    trigger_at(&stale, &["--dry-run"]).ok();
    let mode = std::fs::metadata(&stale).unwrap().permissions().mode();
    assert_eq!(mode & 0o7777, 0o660);
}

// ---- Item 3: the socket's mode and group set through a swapped-in link ------------------------

/// The daemon under strace(1), each chmod held for 0.3 s at its entry: the scheduling that
/// gives a neighbour all the time it needs between bind(2) and chmod(2).
fn slow_chmod_daemon(db: &Db, folder: &Folder, socket: &Path, extra: &str) -> Daemon {
    let mut c = vamsa_testkit::cli::Cli::new("strace");
    c.args(["-f", "-qq", "-o", "/dev/null", "-e"])
        .arg("inject=chmod,fchmodat:delay_enter=300000")
        .arg(env!("CARGO_BIN_EXE_vamsa-migrate"))
        .env("VAMSA_MIGRATE_SOCKET_PATH", socket);
    Daemon::start(c, &db.url(), folder.path(), extra)
}

/// As nobody: replaces the socket by a link to `victim` as soon as it appears.
fn swap_socket_for_link(socket: &Path, victim: &Path) -> Neighbour {
    let script = "import os,stat,sys,time\n\
        sock,victim=sys.argv[1],sys.argv[2]\n\
        while True:\n    try:\n        \
        if stat.S_ISSOCK(os.lstat(sock).st_mode):\n            \
        os.symlink(victim, sock+'.x'); os.rename(sock+'.x', sock); break\n    \
        except FileNotFoundError: pass\n    time.sleep(0.0005)\n";
    let mut cmd = Command::new("python3");
    cmd.args(["-c", script]).arg(socket).arg(victim);
    as_nobody(&mut cmd);
    Neighbour(cmd.spawn().unwrap())
}

#[test]
fn the_socket_mode_and_group_never_follow_a_link_swapped_in_while_binding() {
    if !root_or_skip("race the daemon as nobody") {
        return;
    }
    let db = Db::new();
    let f = Folder::new(&[("0000_a", 1000, A)]);
    let secrets = tempfile::tempdir().unwrap();
    std::fs::set_permissions(secrets.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let victim = secrets.path().join("shadow");
    std::fs::write(&victim, "root's secret\n").unwrap();
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o600)).unwrap();
    let dir = open_dir();
    let socket = dir.path().join("trigger.sock");
    let attacker = swap_socket_for_link(&socket, &victim);
    let mut d = slow_chmod_daemon(&db, &f, &socket, "socket_group = \"65534\"");

    let victim_changed = || {
        let meta = std::fs::metadata(&victim).unwrap();
        meta.permissions().mode() & 0o777 != 0o600 || meta.gid() != 0
    };
    eventually("the daemon to exit or the victim to change", || {
        victim_changed() || d.has_exited()
    });
    drop(attacker);
    assert!(!victim_changed(), "the victim's mode or group changed");
    let code = d.wait_exit();
    assert_eq!(code, 1, "{}", d.log());
    assert!(
        d.log().contains("is writable by other users"),
        "{}",
        d.log()
    );
}

// ---- Item 2: a squatted socket ---------------------------------------------------------------

/// A directory every user may write (mode 0777, not sticky): the setting under attack.
fn open_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    dir
}

/// As nobody: binds `socket` first and answers every request with a successful `done`.
fn squat(socket: &Path) -> Neighbour {
    let script = "import socket,sys\n\
        s=socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); s.listen(16)\n\
        print('listening', flush=True)\n\
        while True:\n    c,_=s.accept()\n    try:\n        c.makefile().readline()\n        \
        c.sendall(b'{\"event\":\"done\",\"ok\":true,\"applied\":0,\"dry_run\":false}\\n')\n    \
        except OSError: pass\n    c.close()\n";
    let mut cmd = Command::new("python3");
    cmd.args(["-c", script]).arg(socket).stdout(Stdio::piped());
    as_nobody(&mut cmd);
    let mut child = cmd.spawn().unwrap();
    let mut line = String::new();
    let out = child.stdout.as_mut().unwrap();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(out), &mut line).unwrap();
    assert_eq!(line.trim(), "listening", "the squatter binds the path");
    Neighbour(child)
}

#[test]
fn a_squatted_socket_is_refused_by_the_daemon_and_its_answer_by_trigger() {
    if !root_or_skip("squat the socket as nobody") {
        return;
    }
    let db = Db::new();
    let f = Folder::new(&[("0000_a", 1000, A)]);
    let dir = open_dir();
    let socket = dir.path().join("trigger.sock");
    let squatter = squat(&socket);

    let (code, log) = start_failure(daemon_at(&db, &f, &socket, ""));
    assert_eq!(code, 1, "{log}");
    let expected = format!(
        "socket directory {} is writable by other users (mode 777)",
        dir.path().display()
    );
    assert!(log.contains(&expected), "{log}");

    let run = trigger_at(&socket, &[]);
    run.code(76);
    assert!(
        run.stderr
            .contains("is served by uid 65534 (nobody), not by root, daemon_user \"vamsa-migrate\" or this user"),
        "{}",
        run.stderr
    );
    assert!(
        !run.stdout.contains("No pending migrations"),
        "{}",
        run.stdout
    );
    assert!(!db.table_exists("persons"));

    // The admin who names the server's user in daemon_user is believed.
    let mut trusting = cli();
    trusting
        .arg("trigger")
        .env("VAMSA_MIGRATE_SOCKET_PATH", &socket)
        .env("VAMSA_MIGRATE_DAEMON_USER", "nobody");
    trusting.run().ok();
    drop(squatter);

    // A directory another user owns is refused too, even when only its owner may write.
    let theirs = tempfile::tempdir().unwrap();
    std::os::unix::fs::chown(theirs.path(), Some(65534), Some(65534)).unwrap();
    std::fs::set_permissions(theirs.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let socket = theirs.path().join("trigger.sock");
    let (code, log) = start_failure(daemon_at(&db, &f, &socket, ""));
    assert_eq!(code, 1, "{log}");
    assert!(
        log.contains("is owned by uid 65534, neither this user (uid 0) nor root"),
        "{log}"
    );
}

// ---- Item 5: allowed_groups satisfied by another process -------------------------------------

/// The group `allowed_groups` names in the test below; no user is in it.
const ALLOWED_GID: &str = "4242";

/// `setpriv` running `program ARGS` as nobody with the supplementary group [`ALLOWED_GID`].
fn in_allowed_group() -> vamsa_testkit::cli::Cli {
    let mut c = vamsa_testkit::cli::Cli::new("setpriv");
    c.args([
        "--reuid",
        "65534",
        "--regid",
        "65534",
        "--groups",
        ALLOWED_GID,
    ]);
    c
}

/// As nobody: connects to `socket`, hands the connection to a child and exits (its pid is
/// returned). The child sends `apply` once it reads a line on stdin, then prints the reply's first
/// line.
fn connect_and_leave(socket: &Path) -> (ChildStdin, ChildStdout, u32) {
    let script = "import os,socket,sys\n\
        s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])\n\
        if os.fork() == 0:\n    sys.stdin.readline(); s.sendall(b'{\"command\":\"apply\"}\\n')\n    \
        print(s.makefile().readline(), flush=True)\n\
        else:\n    pass\n";
    let mut cmd = Command::new("python3");
    cmd.args(["-c", script])
        .arg(socket)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    as_nobody(&mut cmd);
    let mut parent = cmd.spawn().unwrap();
    let (stdin, stdout) = (parent.stdin.take().unwrap(), parent.stdout.take().unwrap());
    let pid = parent.id();
    parent.wait().unwrap();
    (stdin, stdout, pid)
}

/// A process of the allowed group that gets `pid` (ns_last_pid, proc(5)), retried while
/// other forks on the host take it first.
fn reuse_pid(pid: u32) -> Neighbour {
    let mut c = in_allowed_group();
    c.args(["sleep", "600"]);
    eventually(
        format!("a process of group {ALLOWED_GID} with pid {pid}"),
        || {
            std::fs::write("/proc/sys/kernel/ns_last_pid", (pid - 1).to_string()).unwrap();
            let child = Neighbour(c.command().spawn().unwrap());
            (child.0.id() == pid).then_some(child)
        },
    )
}

#[test]
fn allowed_groups_are_the_connecting_process_groups_not_those_of_a_reused_pid() {
    if !root_or_skip("reuse a pid and run as nobody") {
        return;
    }
    let db = Db::new();
    let f = Folder::new(&[("0000_a", 1000, A)]);
    let extra = format!("apply_on_start = false\nallowed_groups = [\"{ALLOWED_GID}\"]");
    let mut d = Daemon::start(cli(), &db.url(), f.path(), &extra);
    d.ready();
    d.open_socket_to_everyone();

    let (mut stdin, stdout, pid) = connect_and_leave(&d.socket);
    let reuser = reuse_pid(pid);
    std::io::Write::write_all(&mut stdin, b"go\n").unwrap();
    let mut reply = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut reply).unwrap();
    drop(reuser);
    assert!(
        reply.contains("permission denied: uid 65534"),
        "{reply}\n{}",
        d.log()
    );
    assert!(!db.table_exists("persons"));

    // A process that is in the group when it connects may apply.
    let mut member = in_allowed_group();
    member
        .arg(env!("CARGO_BIN_EXE_vamsa-migrate"))
        .arg("trigger")
        .env("VAMSA_MIGRATE_SOCKET_PATH", &d.socket);
    member.run().ok();
    assert!(db.table_exists("persons"));
}

// ---- Item 1: connection slots held forever ---------------------------------------------------

/// As nobody: opens `count` connections and pings on each; prints how many got `pong`, then
/// pings on those every 2 s (each line used to renew the connection's timeout) until killed.
fn hold_connections(socket: &Path, count: usize) -> (Neighbour, usize) {
    let script = "import socket,sys,time\n\
        held=[]\n\
        for _ in range(int(sys.argv[2])):\n    \
        s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); f=s.makefile()\n    \
        try:\n        s.sendall(b'{\"command\":\"ping\"}\\n')\n        \
        if 'pong' in f.readline(): f.readline(); held.append((s,f)); continue\n    \
        except OSError: pass\n    \
        s.close()\n\
        print(len(held), flush=True)\n\
        while True:\n    time.sleep(2)\n    \
        for s,f in held:\n        \
        try: s.sendall(b'{\"command\":\"ping\"}\\n'); f.readline(); f.readline()\n        \
        except OSError: pass\n";
    let mut cmd = Command::new("python3");
    cmd.args(["-c", script])
        .arg(socket)
        .arg(count.to_string())
        .stdout(Stdio::piped());
    as_nobody(&mut cmd);
    let mut child = cmd.spawn().unwrap();
    let mut line = String::new();
    let out = child.stdout.as_mut().unwrap();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(out), &mut line).unwrap();
    let held = line
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("{line:?}: {e}"));
    (Neighbour(child), held)
}

#[test]
fn nobody_holding_connections_and_pinging_never_locks_roots_trigger_out() {
    if !root_or_skip("connect to the socket as nobody") {
        return;
    }
    let db = Db::new();
    let f = Folder::new(&[("0000_a", 1000, A)]);
    let mut d = Daemon::start(cli(), &db.url(), f.path(), "apply_on_start = false");
    d.ready();
    d.open_socket_to_everyone();

    let (holder, held) = hold_connections(&d.socket, 600);
    let run = d.trigger(&[]);
    run.ok();
    assert!(db.table_exists("persons"));
    assert_eq!(held, 8, "nobody holds at most 8 connections");
    drop(holder);
}
