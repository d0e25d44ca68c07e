//! Server versions: the suite runs against PostgreSQL 15 (Debian's) and 18 (`./dev test-pg18`).
//! Backups take the `pg_dump` of the server's major version (`/usr/lib/postgresql/<major>/bin`,
//! as Debian's pg_wrapper does) before the one on PATH, and a `pg_dump` older than the server
//! is refused with what to install.

use std::path::Path;

use crate::support::*;

fn backup(db: &Db) -> Cli {
    let mut cli = cli();
    cli.database_url(&db.url())
        .backup_dir(db.backups.path())
        .arg("backup");
    cli
}

#[test]
fn a_backup_takes_the_servers_pg_dump_before_path_or_says_it_is_too_old() {
    let db = Db::new();
    let major = db.psql("SELECT current_setting('server_version_num')::int / 10000");
    let own = format!("/usr/lib/postgresql/{major}/bin/pg_dump");
    if Path::new(&own).exists() {
        // Nothing on PATH: the server's own pg_dump is found all the same.
        let empty = tempfile::tempdir().expect("an empty PATH folder");
        let run = backup(&db).env("PATH", empty.path()).run();
        run.ok();
        assert!(run.stdout.starts_with("Backup: "), "{}", run.stdout);
        assert_eq!(
            std::fs::read_dir(db.backups.path())
                .expect("backup_dir")
                .count(),
            1
        );
    } else {
        // PostgreSQL 18 from npm: only Debian 12's pg_dump 15 on PATH.
        let run = backup(&db).run();
        assert_eq!(run.code, 1, "{}", run.stderr);
        assert!(
            run.stderr.contains("pg_dump is older than the server (pg_dump: error: aborting because of server version mismatch"),
            "{}",
            run.stderr
        );
        assert!(
            run.stderr
                .contains("install the postgresql-client of the server's version"),
            "{}",
            run.stderr
        );
        let left = std::fs::read_dir(db.backups.path()).map_or(0, |d| d.count());
        assert_eq!(left, 0, "a dump or a partial file stayed");
    }
}
