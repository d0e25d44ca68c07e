//! Defects a review found on main: dump names of different databases that collided, ...

use crate::support::{cli, cluster, Folder};

/// A database named `name` on the shared cluster (its own backup folder is the test's).
fn database(name: &str) -> String {
    cluster().create_database(name).expect("create database");
    cluster().url(name)
}

fn has_table(db: &str, table: &str) -> bool {
    let sql = format!("SELECT to_regclass('{table}') IS NOT NULL");
    cluster().psql(db, &sql).expect("psql") == "t"
}

#[test]
fn databases_whose_names_differ_only_in_punctuation_keep_and_restore_their_own_dumps() {
    let id = std::process::id();
    let (under, dash) = (format!("c_d{id}"), format!("c-d{id}"));
    let dir = tempfile::tempdir().expect("backup folder");
    let empty = Folder::new(&[]);
    for (name, table) in [(&under, "mine"), (&dash, "theirs")] {
        let url = database(name);
        cluster()
            .psql(name, &format!("CREATE TABLE {table} ()"))
            .expect("psql");
        cli()
            .database_url(&url)
            .backup_dir(dir.path())
            .env("VAMSA_MIGRATE_BACKUP_KEEP", "1")
            .arg("backup")
            .run()
            .ok();
    }
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .expect("read backup folder")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names.len(),
        2,
        "keep=1 of one database removed the other's: {names:?}"
    );
    assert!(names[0].starts_with(&format!("c%2Dd{id}-")), "{names:?}");
    assert!(names[1].starts_with(&format!("c_d{id}-")), "{names:?}");
    cluster().psql(&under, "DROP TABLE mine").expect("psql");
    let run = cli()
        .database_url(&cluster().url(&under))
        .migrations_dir(empty.path())
        .backup_dir(dir.path())
        .args(["restore", "--latest", "--yes"])
        .run();
    run.ok();
    assert!(
        has_table(&under, "mine"),
        "c_d's own dump was not restored: {}",
        run.stdout
    );
    assert!(
        !has_table(&under, "theirs"),
        "c-d's dump was restored into c_d"
    );
}

#[test]
fn a_dump_of_another_database_is_refused_by_its_header_whatever_its_name() {
    let id = std::process::id();
    let (one, other) = (format!("hdr_a{id}"), format!("hdr_b{id}"));
    let dir = tempfile::tempdir().expect("backup folder");
    let empty = Folder::new(&[]);
    let url = database(&one);
    database(&other);
    cli()
        .database_url(&url)
        .backup_dir(dir.path())
        .arg("backup")
        .run()
        .ok();
    let dump = std::fs::read_dir(dir.path())
        .expect("read backup folder")
        .next()
        .expect("one dump")
        .expect("entry")
        .path();
    let name = dump
        .file_name()
        .expect("name")
        .to_string_lossy()
        .into_owned();
    let renamed = dir.path().join(name.replacen(&one, &other, 1));
    std::fs::rename(&dump, &renamed).expect("rename");
    let run = cli()
        .database_url(&cluster().url(&other))
        .migrations_dir(empty.path())
        .backup_dir(dir.path())
        .args(["restore", "--yes"])
        .arg(&renamed)
        .run();
    assert_ne!(run.code, 0, "{}", run.stdout);
    assert!(
        run.stderr
            .contains(&format!("is a dump of database {one}, not of {other}")),
        "{}",
        run.stderr
    );
}

const SECRET: &str = "Sup3r-s3cret";

/// One request line on the socket from a process running as nobody; its first reply line.
fn nobody_asks(socket: &std::path::Path, line: &str) -> String {
    use std::os::unix::process::CommandExt;
    let script = "import socket,sys\ns=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); s.sendall(sys.argv[2].encode()+b'\\n'); print(s.makefile().readline())";
    let out = std::process::Command::new("python3")
        .args(["-c", script])
        .arg(socket)
        .arg(line)
        .uid(65534)
        .gid(65534)
        .output()
        .expect("run python3 as nobody");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn an_outsiders_status_shows_no_message_row_data_or_backup_path_of_the_last_run() {
    if !crate::support::root_or_skip("connect to the socket as nobody") {
        return;
    }
    let db = crate::support::Db::new();
    let sql = format!(
        "CREATE TABLE u (email text UNIQUE);\n--> statement-breakpoint\nINSERT INTO u VALUES ('{SECRET}'), ('{SECRET}');\n"
    );
    let f = Folder::new(&[("0000_dup", 1000, sql.as_str())]);
    let config = "apply_on_start = false\npeer_view = \"status\"";
    let mut d = crate::support::Daemon::start(cli(), &db.url(), f.path(), config);
    d.ready();
    d.open_socket_to_everyone();
    d.trigger(&[]).code(1);
    let own = format!("{:?}", d.request(b"{\"command\":\"status\"}\n"));
    // The history keeps the headline of a unique violation, not the server's text with the
    // row's values (SQLSTATE class 23): even a peer that may apply sees no row data there.
    assert!(
        own.contains("0000_dup.sql failed at statement 2 of 2") && !own.contains(SECRET),
        "a peer that may apply sees the message, without the row's values: {own}"
    );
    assert!(
        own.contains(".dump"),
        "a peer that may apply sees the backup: {own}"
    );
    let status = nobody_asks(&d.socket, "{\"command\":\"status\"}");
    assert!(status.contains("\"last_run\""), "{status}");
    assert!(status.contains("\"sqlstate\":\"23505\""), "{status}");
    assert!(status.contains("0000_dup"), "{status}");
    assert!(
        !status.contains(SECRET),
        "row data shown to an outsider: {status}"
    );
    assert!(
        !status.contains(".dump"),
        "backup path shown to an outsider: {status}"
    );
}

#[test]
fn a_role_without_usage_on_vamsa_migrate_gets_status_with_a_warning_and_history_names_the_grant() {
    let db = crate::support::Db::new();
    let f = Folder::new(&[("0000_init", 1000, "CREATE TABLE t (id int);\n")]);
    db.run(f.path(), &["migrate", "--no-backup"]).ok();
    let role = format!("reader{}", std::process::id());
    db.psql(&format!(
        "CREATE ROLE {role} LOGIN; GRANT USAGE ON SCHEMA drizzle TO {role}; \
         GRANT SELECT ON ALL TABLES IN SCHEMA drizzle TO {role}; \
         GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}"
    ));
    let url = db.url().replace("user=postgres", &format!("user={role}"));
    let as_role = |args: &[&str]| {
        cli()
            .database_url(&url)
            .migrations_dir(f.path())
            .args(args)
            .run()
    };
    let status = as_role(&["status"]);
    status.ok();
    let grant = format!("GRANT USAGE ON SCHEMA vamsa_migrate TO \"{role}\";");
    assert!(status.stderr.contains("not compared") || status.stdout.contains("not compared"));
    assert!(
        status.stderr.contains(&grant) || status.stdout.contains(&grant),
        "{status:?}"
    );
    let history = cli().database_url(&url).arg("history").run();
    assert_ne!(history.code, 0);
    assert!(
        history
            .stderr
            .contains("GRANT USAGE ON SCHEMA vamsa_migrate"),
        "{}",
        history.stderr
    );
    assert!(
        !history.stderr.contains("PostgreSQL is running"),
        "{}",
        history.stderr
    );

    // Following the advice word for word is enough: status compares, history reads.
    let text = format!("{}{}", status.stdout, status.stderr);
    let advice = text
        .lines()
        .find_map(|l| l.split("an admin runs: ").nth(1))
        .expect("the advice");
    db.psql(advice);
    let status = as_role(&["status"]);
    status.ok();
    assert!(
        !format!("{}{}", status.stdout, status.stderr).contains("not compared"),
        "{status:?}"
    );
    cli().database_url(&url).arg("history").run().ok();
}

/// `cli ARGS` with standard output a pipe whose reading end is already closed (`| head -0`).
fn into_closed_pipe(cli: &crate::support::Cli) -> (Option<i32>, String) {
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    let out = cli
        .command()
        .stdin(std::process::Stdio::null())
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()
        .expect("run vamsa-migrate");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn commands_writing_into_a_closed_pipe_do_not_panic() {
    let db = crate::support::Db::new();
    let f = Folder::new(&[("0000_init", 1000, "CREATE TABLE t (id int);\n")]);
    db.run(f.path(), &["migrate"]).ok();
    let mut status = db.cli(f.path());
    status.arg("status");
    let mut backups = cli();
    backups.backup_dir(db.backups.path()).arg("backups");
    let mut restore = db.cli(f.path());
    restore.args(["restore", "--latest", "--yes"]);
    for (what, cli, expected) in [
        ("status", status, 0),
        ("backups", backups, 0),
        ("restore", restore, 0),
    ] {
        let (code, stderr) = into_closed_pipe(&cli);
        assert!(!stderr.contains("panicked"), "{what}: {stderr}");
        assert_eq!(code, Some(expected), "{what}: {stderr}");
    }
}
