//! SIGTERM while the daemon's start-up run takes its backup (issue 11, item 9): the stop is
//! honoured at the next phase boundary, and once `stop_grace` runs out `pg_dump` itself is
//! stopped. The dump is made slow for real: a session holds an ACCESS EXCLUSIVE lock on a
//! table, so `pg_dump` waits for it; a shim named `pg_dump` in `PG_BIN_DIR` records its pid and
//! `exec`s the real one.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use crate::support::{cli, eventually, Daemon, Db, Folder, Signal};

const A: &str = "CREATE TABLE persons (id serial PRIMARY KEY, name text NOT NULL);\n";
const B: &str = "ALTER TABLE persons ADD COLUMN born date;\n";

/// `0000_a` applied, `0001_b` pending, a lock that holds up `pg_dump`, and the daemon started
/// with `extra` config lines, its start-up backup waiting for the lock.
struct SlowBackup {
    db: Db,
    _folder: Folder,
    shim: tempfile::TempDir,
    lock: Child,
    daemon: Daemon,
}

impl SlowBackup {
    fn start(extra: &str) -> SlowBackup {
        let db = Db::new();
        let folder = Folder::new(&[("0000_a", 1000, A)]);
        db.run(folder.path(), &["migrate", "--no-backup"]).ok();
        folder.write(&[("0000_a", 1000, A), ("0001_b", 2000, B)]);
        let shim = pg_dump_shim(&db);
        let lock = hold_persons(&db);
        let mut daemon_cli = cli();
        daemon_cli
            .backup_dir(db.backups.path())
            .env("PG_BIN_DIR", shim.path());
        let extra = format!("apply_on_start = true\n{extra}");
        let daemon = Daemon::start(daemon_cli, &db.url(), folder.path(), &extra);
        eventually("pg_dump waiting for the lock", || {
            db.has_activity(
                "application_name = 'vamsa-migrate backup' AND wait_event_type = 'Lock'",
            )
        });
        SlowBackup {
            db,
            _folder: folder,
            shim,
            lock,
            daemon,
        }
    }

    fn release(&mut self) {
        drop(self.lock.stdin.take());
        self.lock.wait().unwrap();
    }

    fn pg_dump_pid(&self) -> u32 {
        let text = std::fs::read_to_string(self.shim.path().join("pid")).unwrap();
        text.trim().parse().unwrap()
    }

    /// The backup folder's files: (dumps, partial dumps).
    fn backups(&self) -> (Vec<String>, Vec<String>) {
        let names: Vec<String> = std::fs::read_dir(self.db.backups.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.into_iter().partition(|n| !n.ends_with(".partial"))
    }
}

/// A folder to use as PG_BIN_DIR: `pg_dump` records its pid and execs the real one (so the
/// pid is pg_dump's own); `pg_restore` is the cluster's.
fn pg_dump_shim(db: &Db) -> tempfile::TempDir {
    let shim = tempfile::tempdir().unwrap();
    let real = db.cluster.program("pg_dump");
    let script = format!(
        "#!/bin/sh\necho $$ > {dir}/pid\nexec {real} \"$@\"\n",
        dir = shim.path().display(),
        real = real.display()
    );
    let path = shim.path().join("pg_dump");
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::symlink(
        db.cluster.program("pg_restore"),
        shim.path().join("pg_restore"),
    )
    .unwrap();
    shim
}

/// A session holding an ACCESS EXCLUSIVE lock on persons until its stdin closes.
fn hold_persons(db: &Db) -> Child {
    let mut cmd: Command = db.cluster.psql_command(&db.name);
    cmd.stdin(Stdio::piped()).stdout(Stdio::null());
    let mut child = cmd.spawn().unwrap();
    let stdin = child.stdin.as_mut().unwrap();
    stdin
        .write_all(b"BEGIN;\nLOCK TABLE persons IN ACCESS EXCLUSIVE MODE;\n")
        .unwrap();
    stdin.flush().unwrap();
    eventually("the lock on persons", || {
        db.has_activity("query LIKE 'LOCK TABLE persons%' AND state = 'idle in transaction'")
    });
    child
}

fn pid_gone(pid: u32) -> bool {
    // A zombie has ended; only its parent's wait is missing.
    match std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z')),
    }
}

#[test]
fn sigterm_during_the_backup_with_a_short_grace_stops_pg_dump_and_applies_nothing() {
    let mut t = SlowBackup::start("stop_grace = \"1s\"");
    assert_eq!(t.backups().1.len(), 1, "the dump is being written");
    let rows_before = t.db.rows();
    t.daemon.signal(Signal::SIGTERM);
    t.daemon.wait_log("stop_grace elapsed");
    // Stopped by the daemon itself, while the lock still holds it up.
    let pid = t.pg_dump_pid();
    eventually("pg_dump to be stopped", || pid_gone(pid));
    assert_eq!(t.daemon.wait_exit(), 0, "a requested stop is a clean exit");
    t.release();
    assert_eq!(t.db.rows(), rows_before, "no migration applied");
    assert_eq!(t.backups(), (vec![], vec![]), "no dump, no partial dump");
    let log = t.daemon.log();
    assert!(
        log.contains("stopped on request during the backup (pg_dump was stopped): no migration of this run was applied"),
        "{log}"
    );
}

#[test]
fn sigterm_during_the_backup_with_a_long_grace_lets_it_finish_and_applies_nothing() {
    let mut t = SlowBackup::start("stop_grace = \"10min\"");
    let rows_before = t.db.rows();
    t.daemon.signal(Signal::SIGTERM);
    t.daemon.wait_log("stopping: waiting up to");
    t.release();
    assert_eq!(t.daemon.wait_exit(), 0, "a requested stop is a clean exit");
    assert_eq!(
        t.db.rows(),
        rows_before,
        "no migration applied after the backup"
    );
    let (dumps, partials) = t.backups();
    assert_eq!(
        (dumps.len(), partials.len()),
        (1, 0),
        "{dumps:?} {partials:?}"
    );
    let log = t.daemon.log();
    assert!(
        log.contains("stopped on request after the backup: no migration of this run was applied"),
        "{log}"
    );
}
