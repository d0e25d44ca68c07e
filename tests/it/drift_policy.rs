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

/// The catalogs' fingerprint lets `status` skip describing an unchanged schema; it must never
/// hide a change. Each kind of hand change alone, right after a run recorded the schema (so the
/// fingerprint is current), is reported: additions, updates in place and drops alike.
#[test]
fn every_single_hand_change_after_a_record_is_reported() {
    const BASE: &str = "CREATE TYPE \"mood\" AS ENUM ('happy');\n--> statement-breakpoint\n\
        CREATE TABLE \"persons\" (\"id\" serial PRIMARY KEY, \"name\" text NOT NULL, \"mood\" \"mood\");\n--> statement-breakpoint\n\
        CREATE INDEX \"persons_name_idx\" ON \"persons\" (\"name\");\n--> statement-breakpoint\n\
        CREATE VIEW \"named\" AS SELECT \"id\" FROM \"persons\";\n--> statement-breakpoint\n\
        CREATE FUNCTION \"touch\"() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$;\n--> statement-breakpoint\n\
        CREATE TRIGGER \"persons_touch\" BEFORE INSERT ON \"persons\" FOR EACH ROW EXECUTE FUNCTION \"touch\"();\n--> statement-breakpoint\n\
        CREATE DOMAIN \"posint\" AS integer CHECK (VALUE > 0);\n--> statement-breakpoint\n\
        CREATE SEQUENCE \"counter\";\n--> statement-breakpoint\n\
        CREATE TABLE \"par\" (\"x\" integer);\n--> statement-breakpoint\n\
        CREATE TABLE \"kid\" (\"x\" integer);\n--> statement-breakpoint\n\
        CREATE COLLATION \"mycoll\" (provider = libc, locale = 'C');\n--> statement-breakpoint\n\
        CREATE TABLE \"ct\" (\"s\" text COLLATE \"mycoll\");\n--> statement-breakpoint\n\
        CREATE TABLE \"owners\" (\"id\" integer PRIMARY KEY);\n--> statement-breakpoint\n\
        CREATE TABLE \"pets\" (\"owner\" integer REFERENCES \"owners\"(\"id\"));\n";
    let cases = [
        ("ALTER TABLE persons ADD COLUMN nickname text", "+ column public.persons.nickname text"),
        ("ALTER TABLE persons ALTER COLUMN name DROP NOT NULL", "~ column public.persons.name: text NOT NULL -> text"),
        ("ALTER TABLE persons ALTER COLUMN name SET DEFAULT 'x'", "~ column public.persons.name: text -> text DEFAULT 'x'::text"),
        ("ALTER TABLE persons ALTER COLUMN name DROP DEFAULT", "~ column public.persons.name: text DEFAULT 'x'::text -> text"),
        ("DROP INDEX persons_name_idx", "- index public.persons_name_idx"),
        ("ALTER TYPE mood ADD VALUE 'sad'", "~ type public.mood: enum ('happy') -> enum ('happy', 'sad')"),
        ("CREATE OR REPLACE VIEW named AS SELECT id AS id FROM persons WHERE id > 0", "~ view public.named:"),
        ("CREATE OR REPLACE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NULL; END $$", "~ function public.touch()"),
        ("ALTER TABLE persons DISABLE TRIGGER persons_touch", "~ trigger public.persons persons_touch"),
        ("DROP TRIGGER persons_touch ON persons", "- trigger public.persons persons_touch"),
        ("DROP VIEW named", "- view public.named"),
        ("ALTER TABLE persons ADD CONSTRAINT name_set CHECK (name <> '')", "+ constraint public.persons name_set"),
        ("ALTER TABLE persons DROP CONSTRAINT name_set", "- constraint public.persons name_set"),
        ("ALTER TABLE persons RENAME COLUMN name TO full_name", "+ column public.persons.full_name"),
        ("ALTER TABLE persons ALTER COLUMN full_name TYPE varchar(200)", "~ column public.persons.full_name: text"),
        // Changes that matter to security or behaviour, not only to shape.
        ("ALTER FUNCTION touch() SECURITY DEFINER", "~ function public.touch()"),
        ("ALTER FUNCTION touch() STRICT", "~ function public.touch()"),
        ("ALTER FUNCTION touch() SET search_path = public", "~ function public.touch()"),
        ("ALTER DOMAIN posint DROP CONSTRAINT posint_check", "~ type public.posint: domain integer CONSTRAINT posint_check CHECK ((VALUE > 0)) -> domain integer"),
        ("ALTER TABLE persons ALTER COLUMN full_name TYPE varchar(200) COLLATE \"C\"", "~ column public.persons.full_name: character varying(200) -> character varying(200) COLLATE pg_catalog.\"C\""),
        ("ALTER SEQUENCE counter MAXVALUE 10 CYCLE", "~ sequence public.counter"),
        ("ALTER TABLE persons SET UNLOGGED", "~ table public.persons:  -> UNLOGGED"),
        ("ALTER TABLE persons SET LOGGED; ALTER TABLE persons ENABLE ROW LEVEL SECURITY", "~ table public.persons: UNLOGGED -> ROW LEVEL SECURITY"),
        ("CREATE POLICY own ON persons USING (true)", "+ policy public.persons own PERMISSIVE FOR ALL TO PUBLIC USING (true)"),
        ("CREATE RULE r AS ON INSERT TO persons DO INSTEAD NOTHING", "+ rule public.persons r"),
        ("ALTER FUNCTION touch() LEAKPROOF", "~ function public.touch()"),
        ("ALTER TABLE persons SET (fillfactor = 70)", "~ table public.persons"),
        ("ALTER TABLE persons REPLICA IDENTITY FULL", "~ table public.persons"),
        ("ALTER TABLE kid INHERIT par", "~ table public.kid:  -> INHERITS (public.par)"),
        ("ALTER COLLATION mycoll RENAME TO othercoll", "~ column public.ct.s: text COLLATE public.mycoll -> text COLLATE public.othercoll"),
        ("ALTER TABLE pets DISABLE TRIGGER ALL", "~ constraint public.pets pets_owner_fkey"),
        ("DROP TABLE persons CASCADE", "- table public.persons"),
    ];
    let db = Db::new();
    let mut files = vec![("0000_base".to_string(), 1000, BASE.to_string())];
    let f = Folder::new(&[("0000_base", 1000, BASE)]);
    for (i, (change, line)) in cases.iter().enumerate() {
        // A run that applies something records the schema (and its fingerprint) as it is.
        let step = i + 1;
        files.push((
            format!("{step:04}_step"),
            1000 + step as i64 * 1000,
            format!("CREATE TABLE \"step{step}\" (\"id\" integer);\n"),
        ));
        let refs: Vec<(&str, i64, &str)> = files
            .iter()
            .map(|(n, w, t)| (n.as_str(), *w, t.as_str()))
            .collect();
        f.write(&refs);
        db.run(f.path(), &["migrate", "--no-backup"]).ok();
        db.run(f.path(), &["status"]).ok();
        db.psql(change);
        let run = db.run(f.path(), &["status"]);
        run.code(4);
        assert!(
            run.stdout.lines().any(|l| l.trim_start().starts_with(line)),
            "after `{change}`, expected a line starting with `{line}`:\n{}",
            run.stdout
        );
        if i == 0 {
            // The record the server wrote reads back as the live description: one change only.
            let changes = run.stdout.lines().filter(|l| {
                l.starts_with("  + ") || l.starts_with("  - ") || l.starts_with("  ~ ")
            });
            assert_eq!(changes.count(), 1, "{}", run.stdout);
        }
    }
}

/// The description does not depend on the session's `search_path`: a migration that ends with
/// `SET search_path`, or a role whose path differs (here `PGOPTIONS`), sees the same schema.
#[test]
fn the_schema_reads_the_same_under_any_search_path() {
    const TYPED: &str = "CREATE TYPE \"mood\" AS ENUM ('happy', 'sad');\n--> statement-breakpoint\n\
        CREATE TABLE \"persons\" (\"id\" serial PRIMARY KEY, \"mood\" \"mood\" DEFAULT 'happy' NOT NULL);\n--> statement-breakpoint\n\
        CREATE TABLE \"media\" (\"id\" serial PRIMARY KEY, \"person_id\" integer REFERENCES \"persons\"(\"id\"));\n--> statement-breakpoint\n\
        CREATE VIEW \"happy\" AS SELECT \"id\" FROM \"persons\" WHERE \"mood\" = 'happy';\n--> statement-breakpoint\n\
        SET search_path TO pg_catalog;\n";
    let db = Db::new();
    let f = Folder::new(&[("0000_typed", 1000, TYPED)]);
    db.run(f.path(), &["migrate"]).ok();
    // A catalog change that is not drift: the recorded fingerprint no longer matches, so each
    // `status` below describes the schema rather than trusting the fingerprint.
    db.psql("GRANT SELECT ON persons TO PUBLIC");
    let run = db.run(f.path(), &["status"]);
    run.ok();
    for path in ["pg_catalog", "public", "nowhere"] {
        let mut status = db.cli(f.path());
        status
            .env("PGOPTIONS", format!("-c search_path={path}"))
            .arg("status");
        let run = status.run();
        run.ok();
        assert!(
            !run.stdout.contains("outside migrations"),
            "search_path={path}: {}",
            run.stdout
        );
    }
    // A hand change is still seen under another path.
    db.psql("ALTER TABLE persons ADD COLUMN nickname text");
    let mut status = db.cli(f.path());
    status
        .env("PGOPTIONS", "-c search_path=pg_catalog")
        .arg("status");
    let run = status.run();
    run.code(4);
    assert!(
        run.stdout.contains("+ column public.persons.nickname text"),
        "{}",
        run.stdout
    );
}

/// Privileges are not the schema: an admin's GRANT to a reporting role is not drift.
#[test]
fn a_grant_is_not_a_schema_change() {
    let db = Db::new();
    let f = Folder::new(&[("0000_persons", 1000, PERSONS)]);
    db.run(f.path(), &["migrate"]).ok();
    db.psql("GRANT SELECT ON persons TO PUBLIC; GRANT USAGE ON SEQUENCE persons_id_seq TO PUBLIC");
    let run = db.run(f.path(), &["status"]);
    run.ok();
    assert!(!run.stdout.contains("outside migrations"), "{}", run.stdout);
}

/// A run that commits a migration and then fails leaves the schema at a migration boundary and
/// records it: the committed migration is ours, not "applied by another tool".
#[test]
fn a_partly_failed_run_records_the_schema_it_left() {
    let db = Db::new();
    let f = Folder::new(&[("0000_persons", 1000, PERSONS)]);
    db.run(f.path(), &["migrate"]).ok();
    f.write(&[
        ("0000_persons", 1000, PERSONS),
        ("0001_media", 2000, MEDIA),
        ("0002_broken", 3000, "SELECT * FROM \"nope\";\n"),
    ]);
    db.run(f.path(), &["migrate", "--no-backup"]).code(1);
    assert_eq!(db.rows().len(), 2, "0001 committed, 0002 not");
    db.psql(HAND);
    let run = db.run(f.path(), &["status"]);
    run.code(4);
    assert!(
        run.stdout.contains("+ column public.persons.nickname text")
            && !run.stdout.contains("another tool"),
        "{}",
        run.stdout
    );
}
