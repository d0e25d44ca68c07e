//! Live-schema drift: after each successful run the application's schema is recorded from the
//! catalogs; `status` reports what was added, removed or changed by hand since (exit 4), `migrate`
//! warns (or, with `schema_drift = "refuse"`, stops before any change), and a change made by
//! Drizzle's own migrator (new tracking rows) is not drift.

use std::path::Path;

use crate::interop_v1::Drizzle;
use crate::support::*;

const SCHEMA: &str = "CREATE TYPE \"mood\" AS ENUM ('happy');\n--> statement-breakpoint\n\
    CREATE TABLE \"persons\" (\"id\" serial PRIMARY KEY, \"name\" text NOT NULL, \"mood\" \"mood\");\n--> statement-breakpoint\n\
    CREATE INDEX \"persons_name_idx\" ON \"persons\" (\"name\");\n--> statement-breakpoint\n\
    CREATE VIEW \"named\" AS SELECT \"id\" FROM \"persons\";\n--> statement-breakpoint\n\
    CREATE FUNCTION \"touch\"() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$;\n";
const MEDIA: &str = "CREATE TABLE \"media\" (\"id\" serial PRIMARY KEY);\n";
const TAGS: &str = "CREATE TABLE \"tags\" (\"id\" serial PRIMARY KEY);\n";

/// `status`'s lines after the heading of the schema's changes.
fn schema_changes(run: &Run) -> Vec<String> {
    run.stdout
        .lines()
        .skip_while(|l| !l.starts_with("The schema was changed outside migrations"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .map(|l| l.trim_start().to_string())
        .collect()
}

fn status(db: &Db, dir: &Path) -> Run {
    db.run(dir, &["status"])
}

#[test]
fn hand_changes_of_every_kind_are_reported_by_status_and_warned_by_the_next_run_which_records_them()
{
    let db = Db::new();
    let f = Folder::new(&[("0000_schema", 1000, SCHEMA)]);
    db.run(f.path(), &["migrate"]).ok();
    status(&db, f.path()).ok();

    db.psql(
        "ALTER TABLE persons ADD COLUMN nickname text; ALTER TABLE persons ALTER COLUMN name DROP NOT NULL; \
         DROP INDEX persons_name_idx; ALTER TYPE mood ADD VALUE 'sad'; \
         CREATE OR REPLACE VIEW named AS SELECT id, name FROM persons; \
         CREATE OR REPLACE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN NEW.name := 'x'; RETURN NEW; END $$; \
         CREATE TRIGGER persons_touch BEFORE INSERT ON persons FOR EACH ROW EXECUTE FUNCTION touch(); \
         CREATE SEQUENCE counter; ALTER TABLE persons ADD CONSTRAINT name_set CHECK (name <> ''); \
         CREATE EXTENSION pgcrypto",
    );
    let run = status(&db, f.path());
    run.code(4);
    let lines = schema_changes(&run);
    for expected in [
        "+ column public.persons.nickname text",
        "~ column public.persons.name: text NOT NULL -> text",
        "- index public.persons_name_idx CREATE INDEX persons_name_idx ON public.persons USING btree (name)",
        "~ type public.mood: enum ('happy') -> enum ('happy', 'sad')",
        "+ column public.named.name text",
        "+ trigger public.persons persons_touch CREATE TRIGGER persons_touch BEFORE INSERT ON public.persons FOR EACH ROW EXECUTE FUNCTION public.touch()",
        "+ sequence public.counter bigint increment 1",
        "+ constraint public.persons name_set CHECK ((name <> ''::text))",
        "+ extension pgcrypto",
    ] {
        assert!(
            lines.iter().any(|l| l.starts_with(expected)),
            "{expected}\n{}",
            run.stdout
        );
    }
    for changed in [
        "~ view public.named: ",
        "~ function public.touch(): returns trigger ",
    ] {
        assert!(
            lines.iter().any(|l| l.starts_with(changed)),
            "{changed}\n{}",
            run.stdout
        );
    }
    assert!(
        run.stdout
            .ends_with("1 migrations: 1 applied, 0 pending, schema changed by hand.\n"),
        "{}",
        run.stdout
    );
    let json = db.run(f.path(), &["status", "--format", "json"]);
    let json: serde_json::Value = serde_json::from_str(&json.stdout).expect("status JSON");
    assert_eq!(
        json["schema_changes"].as_array().map(Vec::len),
        Some(lines.len())
    );
    // The flag scripts read says so too (exit 4).
    assert_eq!(json["drift"], serde_json::json!(true), "{json}");

    // The next run warns, applies, and records the schema as it then is.
    f.write(&[("0000_schema", 1000, SCHEMA), ("0001_media", 2000, MEDIA)]);
    let run = db.run(f.path(), &["migrate"]);
    run.ok();
    assert!(
        run.stderr
            .contains("the schema was changed outside migrations since the last run (recorded ")
            && run
                .stderr
                .contains("  + column public.persons.nickname text"),
        "{}",
        run.stderr
    );
    status(&db, f.path()).ok();
}

#[test]
fn under_schema_drift_refuse_a_hand_change_stops_the_run_before_the_backup() {
    let db = Db::new();
    let f = Folder::new(&[("0000_schema", 1000, SCHEMA)]);
    db.run(f.path(), &["migrate"]).ok();
    let dumps = std::fs::read_dir(db.backups.path()).unwrap().count();
    db.psql("ALTER TABLE persons ADD COLUMN nickname text");
    f.write(&[("0000_schema", 1000, SCHEMA), ("0001_media", 2000, MEDIA)]);
    let mut c = db.cli(f.path());
    c.env("VAMSA_MIGRATE_SCHEMA_DRIFT", "refuse").arg("migrate");
    let run = c.run();
    run.code(4);
    assert!(
        run.stderr.contains("+ column public.persons.nickname text"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("schema_drift = \"warn\""),
        "{}",
        run.stderr
    );
    assert!(!db.table_exists("media"));
    assert_eq!(std::fs::read_dir(db.backups.path()).unwrap().count(), dumps);
}

#[test]
fn a_change_by_drizzles_own_migrator_is_not_drift() {
    let db = Db::new();
    let f = Folder::new(&[("0000_schema", 1000, SCHEMA), ("0001_media", 2000, MEDIA)]);
    db.run(f.path(), &["migrate"]).ok();
    f.write(&[
        ("0000_schema", 1000, SCHEMA),
        ("0001_media", 2000, MEDIA),
        ("0002_tags", 3000, TAGS),
    ]);
    if let Err(e) = Drizzle::V045.migrate(&db, f.path()) {
        panic!("drizzle: {e}");
    }
    assert!(db.table_exists("tags"));
    let run = status(&db, f.path());
    run.ok();
    assert!(!run.stdout.contains("outside migrations"), "{}", run.stdout);
}

/// Under `schema_drift = "refuse"` a run that cannot compare the schema (here: a role without
/// USAGE on `vamsa_migrate`, which another role created) fails closed: exit 4, nothing applied.
#[test]
fn under_refuse_a_run_that_cannot_compare_the_schema_changes_nothing() {
    let db = Db::new();
    let first = Folder::new(&[("0000_media", 1000, MEDIA)]);
    db.run(first.path(), &["migrate", "--no-backup"]).ok();
    let role = format!("{}_app", db.name);
    db.psql(&format!(
        "CREATE ROLE \"{role}\" LOGIN; ALTER DATABASE \"{0}\" OWNER TO \"{role}\"; \
         ALTER SCHEMA public OWNER TO \"{role}\"; ALTER SCHEMA drizzle OWNER TO \"{role}\"; \
         ALTER TABLE media OWNER TO \"{role}\"; ALTER TABLE drizzle.__drizzle_migrations OWNER TO \"{role}\"",
        db.name
    ));
    let url = db.url().replace("user=postgres", &format!("user={role}"));
    let release = Folder::new(&[("0000_media", 1000, MEDIA), ("0001_tags", 2000, TAGS)]);
    let run = db
        .cli(release.path())
        .database_url(&url)
        .env("VAMSA_MIGRATE_SCHEMA_DRIFT", "refuse")
        .args(["migrate", "--no-backup"])
        .run();
    run.code(4);
    assert!(
        run.stderr
            .contains("schema_drift = \"refuse\", but the live schema could not be compared"),
        "{}",
        run.stderr
    );
    assert!(!db.table_exists("tags"));
}
