//! Proof under faults: kill -9, a dying server, concurrency, locks, a full disk, abusive socket
//! clients and replicas. Each case checks the invariant: the database sits exactly at a
//! migration boundary, the tracking table matches the schema, and the next run finishes the job.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use crate::support::{
    self, cli, eventually, misbehave, own_cluster, request, root_or_skip, Cli, ClusterOptions,
    Daemon, Db, Folder, Signal, Spawned, StopMode, TempCluster, GATED, GATED_ACTIVITY,
};

const SLEEP: &str = "2";

fn m0() -> String {
    "CREATE TABLE a (id int PRIMARY KEY);\n".into()
}
fn m1() -> String {
    format!("SELECT pg_sleep({SLEEP});--> statement-breakpoint\nCREATE TABLE b (id int);--> statement-breakpoint\nSELECT pg_sleep({SLEEP}) AS second_sleep;--> statement-breakpoint\nALTER TABLE a ADD COLUMN c int;--> statement-breakpoint\nINSERT INTO a (id) VALUES (1);\n")
}
fn m2() -> String {
    "CREATE INDEX a_c_idx ON a (c);\n".into()
}

fn entries() -> Vec<(String, i64, String)> {
    vec![
        ("0000_a".into(), 1000, m0()),
        ("0001_slow".into(), 2000, m1()),
        ("0002_idx".into(), 3000, m2()),
    ]
}

fn folder_of(entries: &[(String, i64, String)]) -> Folder {
    let refs: Vec<(&str, i64, &str)> = entries
        .iter()
        .map(|(t, w, s)| (t.as_str(), *w, s.as_str()))
        .collect();
    Folder::new(&refs)
}

/// The user-visible schema (all but our tracking schema and the test's own `slow` trigger), as
/// a fingerprint.
fn schema_of(db: &Db) -> String {
    db.psql(
        "SELECT coalesce(md5(string_agg(x, ',' ORDER BY x)), 'empty') FROM ( \
           SELECT 'col:' || table_schema || '.' || table_name || '.' || column_name || ':' || data_type AS x \
             FROM information_schema.columns WHERE table_schema NOT IN ('pg_catalog', 'information_schema', 'drizzle') \
           UNION ALL SELECT 'idx:' || schemaname || '.' || indexname FROM pg_indexes WHERE schemaname NOT IN ('pg_catalog', 'drizzle') \
           UNION ALL SELECT 'con:' || conname FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace \
             WHERE nspname NOT IN ('pg_catalog', 'information_schema', 'drizzle') AND conname <> 'slow') s",
    )
}

fn tracked_hashes(db: &Db) -> Vec<String> {
    if db.psql("SELECT to_regclass('drizzle.__drizzle_migrations') IS NULL") == "t" {
        return Vec::new();
    }
    db.rows().into_iter().map(|(h, _)| h).collect()
}

/// The invariant. `entries` are the migrations in journal order.
#[track_caller]
fn assert_boundary_then_complete(
    db: &Db,
    entries: &[(String, i64, String)],
    folder: &Path,
) -> usize {
    // The killed client's backend runs on until it next talks to the client: a COMMIT it was
    // in still commits. The boundary is the state once that session is gone.
    eventually("the killed run's session to end", || {
        !db.has_activity("backend_type = 'client backend'")
    });
    let hashes = tracked_hashes(db);
    let k = hashes.len();
    let expected: Vec<String> = entries[..k]
        .iter()
        .map(|(_, _, s)| support::sha256_hex(s.as_bytes()))
        .collect();
    assert_eq!(
        hashes, expected,
        "the tracking rows must be a prefix of the journal, each once"
    );
    // The schema is exactly that of the first k migrations applied cleanly.
    let reference = Db::new();
    let prefix = folder_of(&entries[..k]);
    if k > 0 {
        reference
            .run(prefix.path(), &["migrate", "--no-backup"])
            .ok();
    }
    assert_eq!(
        schema_of(db),
        schema_of(&reference),
        "schema is not at the boundary of {k} migrations"
    );
    // The next run finishes the job, exactly once.
    db.run(folder, &["migrate", "--no-backup"]).ok();
    let all: Vec<String> = entries
        .iter()
        .map(|(_, _, s)| support::sha256_hex(s.as_bytes()))
        .collect();
    assert_eq!(tracked_hashes(db), all);
    let full = Db::new();
    full.run(folder, &["migrate", "--no-backup"]).ok();
    assert_eq!(schema_of(db), schema_of(&full));
    k
}

/// Waits until a statement of the slow migration is running on `cluster`'s database `app`.
fn wait_for_sleep(cluster: &TempCluster) {
    eventually("the slow statement", || {
        cluster
            .psql(
                "app",
                "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(%'",
            )
            .unwrap()
            != "0"
    });
}

/// `vamsa-migrate migrate --no-backup` against `url` and `folder`.
fn migrate_no_backup(url: &str, folder: &Path) -> Cli {
    let mut migrate = cli();
    migrate
        .args(["migrate", "--no-backup"])
        .database_url(url)
        .migrations_dir(folder);
    migrate
}

fn spawn_migrate(db: &Db, folder: &Path) -> Spawned {
    migrate_no_backup(&db.url(), folder).spawn()
}

/// Makes the COMMIT of migration 0001_slow (its last statement inserts into `a`) pause inside
/// the server, after its tracking row is written: a deferred constraint trigger runs at COMMIT
/// time. On `a`, not on the tracking table, which a superuser's run refuses to write while it
/// has triggers (tests/it/roles.rs).
fn slow_commit_of_0001(db: &Db) {
    db.psql(&format!(
        "CREATE FUNCTION public.slow_commit() RETURNS trigger LANGUAGE plpgsql AS $$ \
         BEGIN PERFORM pg_sleep({SLEEP}); RETURN NULL; END $$; \
         CREATE CONSTRAINT TRIGGER slow AFTER INSERT ON public.a \
         DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION public.slow_commit()"
    ));
}

const KILL_POINTS: [(&str, &str); 3] = [
    (
        "before the first statement",
        "query LIKE 'SELECT pg_sleep(%' AND query NOT LIKE '%second_sleep%'",
    ),
    ("between statements", "query LIKE '%second_sleep%'"),
    (
        "after the tracking insert, before COMMIT",
        "query = 'COMMIT' AND wait_event = 'PgSleep'",
    ),
];

#[test]
fn kill_9_of_migrate_at_each_point_leaves_a_boundary() {
    let entries = entries();
    for (point, condition) in KILL_POINTS {
        let db = Db::new();
        let first = folder_of(&entries[..1]);
        db.run(first.path(), &["migrate", "--no-backup"]).ok();
        slow_commit_of_0001(&db);
        let f = folder_of(&entries);
        let child = spawn_migrate(&db, f.path());
        eventually(point, || db.has_activity(condition));
        child.kill();
        let k = assert_boundary_then_complete(&db, &entries, f.path());
        eprintln!("kill -9 {point}: boundary after {k} migration(s)");
    }
}

#[test]
fn kill_9_of_the_daemon_mid_migration_leaves_a_boundary() {
    let entries = entries();
    for (point, condition) in KILL_POINTS {
        let db = Db::new();
        let first = folder_of(&entries[..1]);
        db.run(first.path(), &["migrate", "--no-backup"]).ok();
        slow_commit_of_0001(&db);
        let f = folder_of(&entries);
        let mut d = Daemon::start(
            cli(),
            &db.url(),
            f.path(),
            "apply_on_start = false\nbackup_enabled = false",
        );
        d.ready();
        let socket = d.socket.clone();
        let client = std::thread::spawn(move || request(&socket, b"{\"command\":\"apply\"}\n"));
        eventually(point, || db.has_activity(condition));
        d.kill();
        let _ = client.join();
        assert_boundary_then_complete(&db, &entries, f.path());
    }
}

#[test]
fn postgres_dying_mid_migration_loses_nothing_and_the_daemon_recovers() {
    let mut cluster = own_cluster(ClusterOptions::default());
    cluster.create_database("app").unwrap();
    let url = cluster.url("app");
    let entries = entries();
    let f = folder_of(&entries[..1]);
    // The CLI: the error says the connection was lost and nothing of that migration committed.
    migrate_no_backup(&url, f.path()).run().ok();
    let f = folder_of(&entries);
    let child = migrate_no_backup(&url, f.path()).spawn();
    wait_for_sleep(&cluster);
    cluster.stop(StopMode::Immediate).unwrap();
    let run = child.wait();
    run.code(1);
    assert!(
        run.stderr.contains("The connection to PostgreSQL was lost"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains("nothing of this migration was committed"),
        "{}",
        run.stderr
    );
    cluster.pg_ctl_start().unwrap();
    assert_eq!(
        cluster
            .psql("app", "SELECT count(*) FROM drizzle.__drizzle_migrations")
            .unwrap(),
        "1"
    );
    assert_eq!(
        cluster
            .psql("app", "SELECT to_regclass('b') IS NULL")
            .unwrap(),
        "t"
    );

    // The daemon: the trigger fails, PostgreSQL comes back, the next trigger applies it once.
    let mut d = Daemon::start(
        cli(),
        &url,
        f.path(),
        "apply_on_start = false\nbackup_enabled = false",
    );
    d.ready();
    let socket = d.socket.clone();
    let client = std::thread::spawn(move || request(&socket, b"{\"command\":\"apply\"}\n"));
    wait_for_sleep(&cluster);
    cluster.stop(StopMode::Immediate).unwrap();
    let events = client.join().unwrap();
    let done = events.last().unwrap();
    assert_eq!(done["ok"], false);
    assert!(
        done["error"]["cause"]
            .as_str()
            .unwrap_or("")
            .contains("connection to PostgreSQL was lost"),
        "{done}"
    );
    cluster.pg_ctl_start().unwrap();
    let events = request(&d.socket, b"{\"command\":\"apply\"}\n");
    assert_eq!(events.last().unwrap()["ok"], true, "{events:?}");
    assert_eq!(
        cluster
            .psql(
                "app",
                "SELECT count(*), count(DISTINCT hash) FROM drizzle.__drizzle_migrations"
            )
            .unwrap(),
        "3|3"
    );
    assert_eq!(
        cluster
            .psql("app", "SELECT to_regclass('a_c_idx') IS NOT NULL")
            .unwrap(),
        "t"
    );
}

#[test]
fn eight_clis_and_two_daemons_at_once_apply_fifty_migrations_exactly_once() {
    let db = Db::new();
    let entries: Vec<(String, i64, String)> = (0..50)
        .map(|i| (format!("{i:04}_t{i}"), 1000 + i as i64, format!("CREATE TABLE t{i} (id int);--> statement-breakpoint\nCREATE INDEX t{i}_idx ON t{i} (id);\n")))
        .collect();
    let f = folder_of(&entries);
    let mut daemons: Vec<Daemon> = (0..2)
        .map(|_| Daemon::start(cli(), &db.url(), f.path(), "backup_enabled = false"))
        .collect();
    let clis: Vec<Spawned> = (0..8)
        .map(|_| migrate_no_backup(&db.url(), f.path()).spawn())
        .collect();
    let mut applied = 0;
    for c in clis {
        let run = c.wait();
        run.ok();
        applied += run.stdout.matches("Applied:").count();
    }
    for d in &mut daemons {
        d.ready();
        d.signal(Signal::SIGTERM);
        assert_eq!(d.wait_exit(), 0);
        applied += d.log().matches("Applied: ").count();
    }
    assert_eq!(applied, 50, "each migration applied by exactly one process");
    assert_eq!(
        db.psql("SELECT count(*), count(DISTINCT hash) FROM drizzle.__drizzle_migrations"),
        "50|50"
    );
}

/// An interactive psql session on `db` named `name` (application_name): its stdin and stdout.
fn session(db: &Db, name: &str) -> (Child, ChildStdin, BufReader<ChildStdout>) {
    let mut child = db
        .cluster
        .psql_command(&db.name)
        .args(["-XAtq", "-v", "ON_ERROR_STOP=1"])
        .env("PGAPPNAME", name)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdin = child.stdin.take().unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    (child, stdin, stdout)
}

/// Whether the session named `app` holds a lock on `persons`.
fn app_holds_its_lock(db: &Db) -> bool {
    db.psql("SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation JOIN pg_stat_activity a ON a.pid = l.pid WHERE c.relname = 'persons' AND l.granted AND a.application_name = 'app' AND a.datname = current_database()") != "0"
}

/// The session named `waiter` waits for a lock that the migration's `ALTER TABLE` holds or
/// queues for (pg_blocking_pids, PostgreSQL 15).
fn blocked_by_the_migration(db: &Db, waiter: &str) -> bool {
    db.psql(&format!("SELECT count(*) FROM pg_stat_activity w, pg_stat_activity m WHERE w.application_name = '{waiter}' AND m.query LIKE 'ALTER TABLE persons%' AND m.datname = current_database() AND m.pid = ANY (pg_blocking_pids(w.pid))")) != "0"
}

/// When the migration's `ALTER TABLE` started waiting for its lock, if it waits now.
fn migration_lock_wait(db: &Db) -> Option<String> {
    let since = db.psql("SELECT query_start FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock' AND query LIKE 'ALTER TABLE persons%'");
    (!since.is_empty()).then_some(since)
}

#[test]
fn lock_timeout_protects_the_application_and_lock_retries_wait_it_out() {
    let db = Db::new();
    db.psql("CREATE TABLE persons (id int); INSERT INTO persons VALUES (1)");
    let f = Folder::new(&[(
        "0000_alter",
        1000,
        "ALTER TABLE persons ADD COLUMN born date;",
    )]);
    // The application holds a lock on the table in an open transaction, until the test ends it.
    let (mut app, mut app_in, _app_out) = session(&db, "app");
    app_in
        .write_all(b"BEGIN; SELECT * FROM persons;\n")
        .unwrap();
    app_in.flush().unwrap();
    eventually("the app's lock", || app_holds_its_lock(&db));
    // Another application session: its query comes once the migration queues for its lock, so
    // it waits behind it. Without lock_timeout it would wait as long as the app holds its lock
    // (for ever here); its statement_timeout of a minute turns that into an error.
    let (_reader, mut reader_in, mut reader_out) = session(&db, "reader");
    reader_in
        .write_all(b"SET statement_timeout = '60s';\n")
        .unwrap();
    let migrate = cli()
        .args(["migrate", "--no-backup", "--lock-timeout", "5s"])
        .database_url(&db.url())
        .migrations_dir(f.path())
        .spawn();
    eventually("the migration to queue for its lock", || {
        migration_lock_wait(&db).is_some()
    });
    reader_in
        .write_all(b"SELECT count(*), clock_timestamp() - statement_timestamp() FROM persons;\n")
        .unwrap();
    reader_in.flush().unwrap();
    eventually("the application query to wait behind the migration", || {
        blocked_by_the_migration(&db, "reader")
    });
    // The application query goes through while the app still holds its lock: the migration
    // gave up its place in the queue at lock_timeout.
    let mut answer = String::new();
    reader_out.read_line(&mut answer).unwrap();
    let (count, waited) = answer.trim().split_once('|').unwrap_or(("", ""));
    assert_eq!(count, "1", "the application query failed: {answer:?}");
    assert!(app_holds_its_lock(&db));
    eprintln!("the application query waited {waited} (server time) behind the migration");
    let run = migrate.wait();
    run.code(1);
    assert!(run.stderr.contains("SQLSTATE 55P03"), "{}", run.stderr);
    assert!(
        run.stderr.contains("lock_timeout (5s)") && run.stderr.contains("lock_retries"),
        "{}",
        run.stderr
    );
    assert_eq!(tracked_hashes(&db).len(), 0);

    // With lock_retries, the migration succeeds once the application lets go: after its first
    // lock timeout, while it waits for its lock again.
    let retrying = cli()
        .args(["migrate", "--no-backup", "--lock-timeout", "500ms"])
        .database_url(&db.url())
        .migrations_dir(f.path())
        .env("VAMSA_MIGRATE_LOCK_RETRIES", "4")
        .spawn();
    let first = eventually("the first lock wait", || migration_lock_wait(&db));
    eventually("a second lock wait, after a lock timeout", || {
        migration_lock_wait(&db).is_some_and(|since| since != first)
    });
    app_in.write_all(b"COMMIT;\n").unwrap();
    drop(app_in);
    let _ = app.wait();
    let run = retrying.wait();
    run.ok();
    assert!(
        run.stderr
            .contains("lock timeout (another session holds a lock it needs); retry 1 of 4"),
        "{}",
        run.stderr
    );
    assert_eq!(tracked_hashes(&db).len(), 1);
}

#[test]
fn a_full_disk_fails_with_53100_rolls_back_and_the_next_run_succeeds() {
    if !root_or_skip("mount a small tmpfs in the server's own mount namespace") {
        return;
    }
    let ts = tempfile::tempdir().unwrap();
    std::os::unix::fs::chown(ts.path(), Some(postgres_uid()), None).unwrap_or(());
    let options = ClusterOptions {
        pre_start: Some(format!(
            "mount -t tmpfs -o size=24m,mode=0700 tmpfs {0} && chown postgres {0}",
            ts.path().display()
        )),
        ..Default::default()
    };
    let cluster = own_cluster(options);
    cluster.create_database("app").unwrap();
    cluster
        .psql(
            "app",
            &format!("CREATE TABLESPACE small LOCATION '{}'", ts.path().display()),
        )
        .unwrap();
    // Something else already uses half of the space.
    cluster.psql("app", "CREATE TABLE filler TABLESPACE small AS SELECT repeat(md5(g::text), 30) AS x FROM generate_series(1, 12000) g").unwrap();
    let big = "CREATE TABLE big (x text) TABLESPACE small;--> statement-breakpoint\nINSERT INTO big SELECT repeat(md5(g::text), 30) FROM generate_series(1, 16000) g;\n";
    let f = Folder::new(&[
        ("0000_a", 1000, "CREATE TABLE a (id int);"),
        ("0001_big", 2000, big),
    ]);
    let url = cluster.url("app");
    let migrate = || migrate_no_backup(&url, f.path()).run();
    let run = migrate();
    run.code(1);
    assert!(run.stderr.contains("SQLSTATE 53100"), "{}", run.stderr);
    assert!(run.stderr.contains("Disk full"), "{}", run.stderr);
    assert!(
        run.stderr.contains("Free space on the database server"),
        "{}",
        run.stderr
    );
    assert_eq!(
        cluster
            .psql("app", "SELECT count(*) FROM drizzle.__drizzle_migrations")
            .unwrap(),
        "1"
    );
    assert_eq!(
        cluster
            .psql("app", "SELECT to_regclass('big') IS NULL")
            .unwrap(),
        "t"
    );
    // Space freed: the same migration now goes through.
    cluster.psql("app", "DROP TABLE filler").unwrap();
    migrate().ok();
    assert_eq!(
        cluster.psql("app", "SELECT count(*) FROM big").unwrap(),
        "16000"
    );
    assert_eq!(
        cluster
            .psql("app", "SELECT count(*) FROM drizzle.__drizzle_migrations")
            .unwrap(),
        "2"
    );
}

fn postgres_uid() -> u32 {
    let out = Command::new("id")
        .args(["-u", "postgres"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0)
}

#[test]
fn the_trigger_socket_under_abuse_while_a_migration_runs() {
    if !root_or_skip("connect as another user (nobody)") {
        return;
    }
    let db = Db::new();
    db.close_gate();
    let slow = format!("CREATE TABLE slow (id int);--> statement-breakpoint\n{GATED}");
    let f = Folder::new(&[("0000_a", 1000, "CREATE TABLE a (id int);")]);
    let mut d = Daemon::start(cli(), &db.url(), f.path(), "backup_enabled = false");
    d.ready();
    f.write(&[
        ("0000_a", 1000, "CREATE TABLE a (id int);"),
        ("0001_slow", 2000, &slow),
    ]);
    let socket = d.socket.clone();
    let applier = std::thread::spawn(move || request(&socket, b"{\"command\":\"apply\"}\n"));
    eventually("the gated migration", || db.has_activity(GATED_ACTIVITY));
    // Unauthorised peers, from a process running as nobody.
    d.open_socket_to_everyone();
    let mut nobody = Command::new("python3");
    nobody.args(["-c", "import socket,sys\nrefused=0\nfor i in range(200):\n s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); s.sendall(b'{\"command\":\"apply\"}\\n'); r=s.makefile().readline(); refused+=('permission denied' in r); s.close()\nprint(refused)", d.socket.to_str().unwrap()]);
    // As uid and gid 65534; std drops the supplementary groups of root.
    nobody.uid(65534).gid(65534);
    let nobody = nobody.stdout(Stdio::piped()).spawn().unwrap();

    let mut abusers = Vec::new();
    for i in 0..800 {
        let socket = d.socket.clone();
        abusers.push(std::thread::spawn(move || {
            if let Ok(s) = UnixStream::connect(&socket) {
                misbehave(s, i);
            }
        }));
    }
    // The daemon stays responsive while all of that goes on and the run is held open: every
    // ping is answered (`request` fails on a refusal or after 30 s without a reply), and says
    // the run is in progress. How fast: `cargo bench`, "ping under abuse".
    for n in 0..100 {
        let events = request(&d.socket, b"{\"command\":\"ping\"}\n");
        assert_eq!(events[0]["event"], "pong", "ping {n}: {events:?}");
        assert_eq!(events[0]["busy"], true, "ping {n}: {events:?}");
        assert_eq!(events.last().unwrap()["ok"], true, "ping {n}: {events:?}");
    }
    db.open_gate();
    let events = applier.join().unwrap();
    assert_eq!(events.last().unwrap()["ok"], true, "{events:?}");
    for a in abusers {
        let _ = a.join();
    }
    let out = nobody.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "200");
    assert_eq!(tracked_hashes(&db).len(), 2);
    assert_eq!(
        request(&d.socket, b"{\"command\":\"ping\"}\n")[0]["event"],
        "pong"
    );
}

#[test]
fn replicas_only_the_primary_is_migrated() {
    let primary = own_cluster(ClusterOptions::default());
    primary.create_database("app").unwrap();
    let replica = TempCluster::replica_of(&primary).unwrap();
    vamsa_testkit::reaper::reap_after_exit(&replica).unwrap();
    let f = Folder::new(&[("0000_a", 1000, "CREATE TABLE a (id int);")]);
    let both = format!(
        "host=127.0.0.1,127.0.0.1 port={},{} user=postgres dbname=app target_session_attrs=read-write sslmode=disable",
        replica.port(),
        primary.port()
    );
    let run = cli()
        .arg("migrate")
        .database_url(&both)
        .migrations_dir(f.path())
        .run();
    run.ok();
    assert_eq!(
        primary
            .psql("app", "SELECT count(*) FROM drizzle.__drizzle_migrations")
            .unwrap(),
        "1"
    );
    assert_eq!(
        primary.psql("app", "SELECT pg_is_in_recovery()").unwrap(),
        "f"
    );

    let only_replica = replica.url("app");
    let run = cli()
        .arg("migrate")
        .database_url(&only_replica)
        .migrations_dir(f.path())
        .run();
    run.code(1);
    assert!(
        run.stderr.contains(&format!(
            "127.0.0.1:{}/app is a read-only server (a standby?)",
            replica.port()
        )),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("target_session_attrs=read-write"),
        "{}",
        run.stderr
    );
}
