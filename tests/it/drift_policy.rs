//! When a run compares the live schema with the recorded one: a run that applies something
//! follows `schema_drift`; with nothing to apply `migrate` changes nothing and does not compare
//! (under "refuse" it is not refused either); the daemon's start-up with nothing to apply warns
//! in the journal and still sends READY.

use nix::sys::signal::Signal;

use crate::support::*;

const PERSONS: &str =
    "CREATE TABLE \"persons\" (\"id\" serial PRIMARY KEY, \"name\" text NOT NULL);\n";
const MEDIA: &str = "CREATE TABLE \"media\" (\"id\" serial PRIMARY KEY);\n";
const HAND: &str = "ALTER TABLE persons ADD COLUMN nickname text";

#[test]
fn with_nothing_to_apply_migrate_is_not_refused_for_a_hand_change_but_a_release_is() {
    let db = Db::new();
    let f = Folder::new(&[("0000_persons", 1000, PERSONS)]);
    db.run(f.path(), &["migrate"]).ok();
    db.psql(HAND);

    let mut up_to_date = db.cli(f.path());
    up_to_date
        .env("VAMSA_MIGRATE_SCHEMA_DRIFT", "refuse")
        .arg("migrate");
    let run = up_to_date.run();
    run.ok();
    assert!(
        !run.stderr.contains("outside migrations"),
        "nothing to apply, nothing compared: {}",
        run.stderr
    );
    db.run(f.path(), &["status"]).code(4);

    f.write(&[("0000_persons", 1000, PERSONS), ("0001_media", 2000, MEDIA)]);
    let mut release = db.cli(f.path());
    release
        .env("VAMSA_MIGRATE_SCHEMA_DRIFT", "refuse")
        .arg("migrate");
    let run = release.run();
    run.code(4);
    assert!(
        run.stderr.contains("+ column public.persons.nickname text"),
        "{}",
        run.stderr
    );
    assert_eq!(db.rows().len(), 1, "the release was not applied");
}

#[test]
fn the_daemons_start_up_with_nothing_to_apply_warns_of_a_hand_change_and_is_ready() {
    let db = Db::new();
    let f = Folder::new(&[("0000_persons", 1000, PERSONS)]);
    db.run(f.path(), &["migrate"]).ok();
    db.psql(HAND);

    let mut d = Daemon::start(cli(), &db.url(), f.path(), "schema_drift = \"refuse\"");
    let ready = d.ready();
    assert!(ready.contains("STATUS=Up to date"), "{ready}");
    let log = d.log();
    assert!(
        log.contains("the schema was changed outside migrations")
            && log.contains("+ column public.persons.nickname text"),
        "{log}"
    );
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(), 0);
}
