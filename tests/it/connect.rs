//! Connecting as libpq does: every failure named with its own cause within connect_timeout
//! (real servers and small fake ones), and the settings libpq reads (defaults, `PG*`
//! variables, the service and password files), refused with the part at fault named.

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;

use crate::support::*;

fn status(url: &str) -> Run {
    let folder = Folder::new(&[]);
    cli()
        .database_url(url)
        .migrations_dir(folder.path())
        .arg("status")
        .run()
}

/// A TCP server on 127.0.0.1 that accepts every connection and then either holds it without a
/// word or closes it at once; its port.
fn fake_server(answer: bool) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a fake server");
    let port = listener.local_addr().expect("its address").port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().flatten() {
            if answer {
                held.push(stream);
            }
        }
    });
    port
}

fn assert_failed(run: &Run, error: &str, cause: &str) {
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.contains(error), "{}", run.stderr);
    assert!(
        run.stderr.contains(&format!("Likely cause: {cause}")),
        "{}",
        run.stderr
    );
}

#[test]
fn a_server_that_never_answers_ends_status_within_connect_timeout_naming_it() {
    let port = fake_server(true);
    let url = format!("host=127.0.0.1 port={port} user=u dbname=d connect_timeout=2");
    assert_failed(
        &status(&url),
        &format!("cannot connect to PostgreSQL at 127.0.0.1:{port}/d: timed out after 2 s (connect_timeout) waiting for the server to answer the TLS request"),
        "The server (or something in between",
    );
    let run = status(&format!("{url} sslmode=disable"));
    assert_failed(
        &run,
        "timed out after 2 s (connect_timeout) waiting for the server during start-up and authentication",
        "The server (or something in between",
    );
}

#[test]
fn a_server_that_closes_at_once_is_named_so() {
    let port = fake_server(false);
    let url = format!("host=127.0.0.1 port={port} user=u dbname=d password=x");
    assert_failed(
        &status(&url),
        "the server closed the connection before answering the TLS request",
        "The server closed the connection before the session was ready",
    );
    assert_failed(
        &status(&format!("{url} sslmode=disable")),
        "the server closed the connection during start-up",
        "The server closed the connection before the session was ready",
    );
}

#[test]
fn refused_unknown_host_and_missing_socket_each_say_so() {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    assert_failed(
        &status(&format!("host=127.0.0.1 port={port} user=u dbname=d")),
        &format!("connection refused (127.0.0.1:{port})"),
        "Nothing accepts connections at that address",
    );
    assert_failed(
        &status("host=no-such-host.invalid user=u dbname=d"),
        "cannot resolve the host name \"no-such-host.invalid\"",
        "The host name in database_url (or PGHOST) is not known",
    );
    let empty = tempfile::tempdir().expect("a directory");
    assert_failed(
        &status(&format!("host={} user=u dbname=d", empty.path().display())),
        "no such socket file",
        "No PostgreSQL socket in that directory",
    );
}

#[test]
fn missing_database_and_role_tls_off_and_connection_limit_are_told_apart() {
    let db = Db::new();
    let port = db.cluster.port();
    let base = format!("host=127.0.0.1 port={port}");
    assert_failed(
        &status(&format!("{base} user=postgres dbname=no_such_db")),
        "database \"no_such_db\" does not exist (SQLSTATE 3D000)",
        "The database named in database_url does not exist on that server (SQLSTATE 3D000).",
    );
    assert_failed(
        &status(&format!("{base} user=no_such_role dbname={}", db.name)),
        "(SQLSTATE 28000)",
        "The user does not exist, or pg_hba.conf has no entry",
    );
    assert_failed(
        &status(&format!(
            "{base} user=postgres dbname={} sslmode=require",
            db.name
        )),
        "sslmode=require, but the server does not accept TLS connections",
        "The server does not accept TLS connections",
    );
    let role = format!("{}_limited", db.name);
    db.psql(&format!("CREATE ROLE {role} LOGIN CONNECTION LIMIT 0"));
    assert_failed(
        &status(&format!("{base} user={role} dbname={}", db.name)),
        "(SQLSTATE 53300)",
        "The server has reached max_connections (SQLSTATE 53300).",
    );
}

/// A cluster of its own that asks every role but `postgres` for a SCRAM password, with role
/// `vamsa` (password `s3cret`) owning database `vamsa`.
fn password_cluster() -> TempCluster {
    let hba = tempfile::NamedTempFile::new()
        .expect("an hba file")
        .into_temp_path();
    std::fs::write(
        &hba,
        "local all all trust\nhost all postgres 127.0.0.1/32 trust\nhost all all 127.0.0.1/32 scram-sha-256\n",
    )
    .expect("write pg_hba.conf");
    std::fs::set_permissions(&hba, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    // The postmaster reads hba_file at start (and on SIGHUP, which no test sends): the file is
    // removed when `hba` is dropped at the end of this function, leaving nothing in $TMPDIR.
    let cluster = own_cluster(ClusterOptions {
        settings: vec![("hba_file".into(), hba.display().to_string())],
        ..ClusterOptions::default()
    });
    cluster
        .psql("postgres", "CREATE ROLE vamsa LOGIN PASSWORD 's3cret'")
        .expect("create role");
    cluster.create_database("vamsa").expect("create database");
    cluster
}

#[test]
fn a_password_required_wrong_or_given_by_pgpassword_or_pgpass() {
    let cluster = password_cluster();
    let url = format!("postgresql://vamsa@127.0.0.1:{}/vamsa", cluster.port());
    assert_failed(
        &status(&url),
        "the server asks for a password and none was given",
        "The server asks for a password (pg_hba.conf: scram-sha-256 or md5) and none was given.",
    );
    let wrong = status(&url.replace("vamsa@", "vamsa:hunter2@"));
    assert_failed(
        &wrong,
        "(SQLSTATE 28P01)",
        "PostgreSQL refused the password for that user (SQLSTATE 28P01)",
    );
    assert!(!wrong.stderr.contains("hunter2"), "{}", wrong.stderr);
    let folder = Folder::new(&[]);
    let mut run = cli();
    run.database_url(&url)
        .migrations_dir(folder.path())
        .arg("status");
    run.clone().env("PGPASSWORD", "s3cret").run().ok();
    let home = tempfile::tempdir().expect("a home");
    let pgpass = home.path().join(".pgpass");
    std::fs::write(
        &pgpass,
        format!(
            "# comment\nother:*:*:*:no\n127.0.0.1:{}:*:vamsa:s3cret\n",
            cluster.port()
        ),
    )
    .expect("write .pgpass");
    std::fs::set_permissions(&pgpass, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    run.env("HOME", home.path()).run().ok();
    // libpq ignores a password file others may read.
    std::fs::set_permissions(&pgpass, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    assert_failed(
        &run.run(),
        "the server asks for a password and none was given",
        "The server asks for a password",
    );
}

#[test]
fn parts_left_out_come_from_pg_variables_then_libpq_defaults() {
    let db = Db::new();
    let dir = db.cluster.dir().display().to_string();
    let port = db.cluster.port().to_string();
    let folder = Folder::new(&[]);
    let run = |url: &str, env: &[(&str, &str)]| {
        let mut c = cli();
        c.database_url(url)
            .migrations_dir(folder.path())
            .arg("status");
        for (k, v) in env {
            c.env(k, v);
        }
        c.run()
    };
    // No host: PGHOST (a socket directory); no port: PGPORT; the URL's own parts win.
    run(
        &format!("postgresql://postgres@/{}", db.name),
        &[("PGHOST", &dir), ("PGPORT", &port)],
    )
    .ok();
    run(
        &format!("postgresql:///{}?user=postgres", db.name),
        &[
            ("PGHOST", &dir),
            ("PGPORT", &port),
            ("PGUSER", "no_such_role"),
        ],
    )
    .ok();
    run(
        "",
        &[
            ("PGHOST", "127.0.0.1"),
            ("PGPORT", &port),
            ("PGUSER", "postgres"),
            ("PGDATABASE", &db.name),
        ],
    )
    .ok();
    // Nothing at all: the Unix socket in /var/run/postgresql, port 5432, the OS user.
    let none = run("postgresql://", &[]);
    assert!(
        none.stderr.contains("at /var/run/postgresql:5432/")
            || none.stderr.contains("at /tmp:5432/"),
        "{}",
        none.stderr
    );
}

#[test]
fn a_service_file_fills_what_the_url_leaves_out() {
    let db = Db::new();
    let dir = tempfile::tempdir().expect("a directory");
    let file = dir.path().join("pg_service.conf");
    std::fs::write(
        &file,
        format!(
            "[other]\nhost=/nowhere\n\n[vamsa]\n# the test cluster\nhost={}\nport={}\nuser=postgres\n",
            db.cluster.dir().display(),
            db.cluster.port()
        ),
    )
    .expect("write the service file");
    let folder = Folder::new(&[]);
    let mut c = cli();
    c.migrations_dir(folder.path())
        .env("PGSERVICEFILE", &file)
        .arg("status");
    c.clone()
        .database_url(&format!("service=vamsa dbname={}", db.name))
        .run()
        .ok();
    c.clone()
        .database_url(&format!("postgresql:///{}", db.name))
        .env("PGSERVICE", "vamsa")
        .run()
        .ok();
    let missing = c.database_url("service=nope").run();
    assert_eq!(missing.code, 2, "{}", missing.stderr);
    assert!(
        missing.stderr.contains(&format!(
            "service \"nope\" is not defined in {}",
            file.display()
        )),
        "{}",
        missing.stderr
    );
}

#[test]
fn a_malformed_setting_is_refused_naming_the_part_never_the_password() {
    let refused = |url: &str, env: &[(&str, &str)], says: &str| {
        let folder = Folder::new(&[]);
        let mut c = cli();
        c.database_url(url)
            .migrations_dir(folder.path())
            .arg("status");
        for (k, v) in env {
            c.env(k, v);
        }
        let run = c.run();
        assert_eq!(run.code, 2, "{url}: {}", run.stderr);
        assert!(run.stderr.contains(says), "{url}: {}", run.stderr);
        assert!(!run.stderr.contains("pa55"), "{url}: {}", run.stderr);
    };
    refused(
        "postgresql://vamsa:pa55@rd@db/vamsa",
        &[],
        "the password in database_url contains an unescaped '@': write it as %40",
    );
    refused(
        "postgresql://vamsa:pa55/rd@db/vamsa",
        &[],
        "the password in database_url contains an unescaped '/': write it as %2F",
    );
    refused(
        "postgresql://vamsa:pa55%zz@db/vamsa",
        &[],
        "the password in database_url contains an unescaped '%': write it as %25",
    );
    refused(
        "postgresql://db/vamsa?sslmod=require",
        &[],
        "unknown parameter \"sslmod\" in database_url",
    );
    refused(
        "host=db dbname=vamsa password=pa55 colour=blue",
        &[],
        "unknown parameter \"colour\" in database_url",
    );
    refused(
        "host=db dbname=vamsa",
        &[("PGPORT", "fifty")],
        "port in PGPORT: \"fifty\" is not a port number",
    );
    refused(
        "host=db dbname=vamsa",
        &[("PGSSLMODE", "verify")],
        "sslmode in PGSSLMODE: \"verify\" is not one of disable, allow, prefer, require, verify-ca, verify-full",
    );
    refused(
        "host=db dbname=vamsa password='pa55",
        &[],
        "the value of \"password\" has no closing quote",
    );
}

#[test]
fn the_daemon_keeps_waiting_and_logs_why_each_attempt_failed() {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let folder = Folder::new(&[]);
    let url = format!("host=127.0.0.1 port={port} user=u dbname=d");
    let mut d = Daemon::start(cli(), &url, folder.path(), "db_retry_max = \"1s\"");
    d.wait_log("(attempt 2)");
    let log = d.log();
    assert!(
        log.contains(&format!("connection refused (127.0.0.1:{port})")),
        "{log}"
    );
    assert!(
        log.contains("Nothing accepts connections at that address"),
        "{log}"
    );
    assert!(!log.contains("SQLSTATE=\"\""), "{log}");
    assert!(!d.has_exited());
    d.kill();
}
