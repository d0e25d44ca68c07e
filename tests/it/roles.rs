//! Least-privilege roles: the preflight names the statement an admin runs before the backup
//! and before any change; the README's minimal grants ("The database role") are enough; as a
//! superuser, a tracking table another role controls is refused.

use std::path::Path;

use crate::support::*;

const PERSONS: &str = "CREATE TABLE persons (id serial PRIMARY KEY, name text NOT NULL);";

/// A login role of this test's own, with the README's grant on schema `public` (PostgreSQL 15
/// gives PUBLIC no CREATE there).
fn app_role(db: &Db) -> String {
    let role = format!("{}_app", db.name);
    db.psql(&format!(
        "CREATE ROLE \"{role}\" LOGIN; GRANT USAGE, CREATE ON SCHEMA public TO \"{role}\""
    ));
    role
}

fn migrate_as(db: &Db, role: &str, folder: &Path) -> Run {
    let url = db.url().replace("user=postgres", &format!("user={role}"));
    let mut c = db.cli(folder);
    c.database_url(&url).arg("migrate");
    c.run()
}

fn dumps(db: &Db) -> usize {
    std::fs::read_dir(db.backups.path()).map_or(0, |d| d.count())
}

fn assert_refused_before_backup(db: &Db, run: &Run, statement: &str) {
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.contains(statement), "{}", run.stderr);
    assert!(
        run.stderr.contains(
            "Nothing was changed (no backup was taken). As a superuser or the owner, run:"
        ),
        "{}",
        run.stderr
    );
    assert_eq!(dumps(db), 0, "{}", run.stderr);
    assert!(!db.table_exists("persons"));
}

#[test]
fn without_create_on_the_database_the_admin_is_told_to_create_the_schema_for_the_role() {
    let db = Db::new();
    let role = app_role(&db);
    let f = Folder::new(&[("0000_persons", 1000, PERSONS)]);
    let run = migrate_as(&db, &role, f.path());
    assert_refused_before_backup(
        &db,
        &run,
        &format!("CREATE SCHEMA \"drizzle\" AUTHORIZATION \"{role}\";"),
    );
    assert!(
        run.stderr
            .contains(&format!("no CREATE privilege on database \"{}\"", db.name)),
        "{}",
        run.stderr
    );
    db.psql(&format!("CREATE SCHEMA drizzle AUTHORIZATION \"{role}\""));
    migrate_as(&db, &role, f.path()).ok();
    assert!(db.table_exists("persons"));
}

#[test]
fn a_schema_and_table_of_another_role_need_exactly_the_readmes_grants() {
    let db = Db::new();
    let role = app_role(&db);
    db.psql("CREATE SCHEMA drizzle");
    let f = Folder::new(&[("0000_persons", 1000, PERSONS)]);
    let grant_usage = format!("GRANT USAGE ON SCHEMA \"drizzle\" TO \"{role}\";");
    assert_refused_before_backup(&db, &migrate_as(&db, &role, f.path()), &grant_usage);
    db.psql(&grant_usage);
    db.psql("CREATE TABLE drizzle.__drizzle_migrations (id SERIAL PRIMARY KEY, hash text NOT NULL, created_at bigint)");
    let run = migrate_as(&db, &role, f.path());
    let grant_table =
        format!("GRANT SELECT, INSERT ON \"drizzle\".\"__drizzle_migrations\" TO \"{role}\";");
    let grant_sequence = format!(
        "GRANT USAGE, SELECT ON SEQUENCE drizzle.__drizzle_migrations_id_seq TO \"{role}\";"
    );
    assert_refused_before_backup(&db, &run, &grant_table);
    assert!(run.stderr.contains(&grant_sequence), "{}", run.stderr);
    assert!(
        run.stderr.contains("(owned by \"postgres\")"),
        "{}",
        run.stderr
    );
    db.psql(&format!("{grant_table} {grant_sequence}"));
    migrate_as(&db, &role, f.path()).ok();
    assert!(db.table_exists("persons"));
    assert_eq!(db.rows().len(), 1);
}

#[test]
fn a_superuser_refuses_a_tracking_table_another_role_owns_or_with_a_trigger() {
    let db = Db::new();
    let role = app_role(&db);
    db.psql(&format!(
        "CREATE SCHEMA drizzle; CREATE TABLE drizzle.__drizzle_migrations (id SERIAL PRIMARY KEY, hash text NOT NULL, created_at bigint); \
         ALTER TABLE drizzle.__drizzle_migrations OWNER TO \"{role}\""
    ));
    let f = Folder::new(&[("0000_persons", 1000, PERSONS)]);
    let run = db.run(f.path(), &["migrate"]);
    assert_refused_before_backup(
        &db,
        &run,
        "ALTER TABLE \"drizzle\".\"__drizzle_migrations\" OWNER TO \"postgres\";",
    );
    assert!(
        run.stderr.contains(&format!(
            "the run is a superuser's, and the table is owned by \"{role}\""
        )),
        "{}",
        run.stderr
    );
    db.psql(
        "ALTER TABLE drizzle.__drizzle_migrations OWNER TO postgres; \
         CREATE FUNCTION drizzle.grab() RETURNS trigger LANGUAGE plpgsql AS 'BEGIN RETURN NEW; END'; \
         CREATE TRIGGER grab BEFORE INSERT ON drizzle.__drizzle_migrations FOR EACH ROW EXECUTE FUNCTION drizzle.grab()",
    );
    let run = db.run(f.path(), &["migrate"]);
    assert_refused_before_backup(
        &db,
        &run,
        "DROP TRIGGER \"grab\" ON \"drizzle\".\"__drizzle_migrations\";",
    );
    db.psql("DROP TRIGGER grab ON drizzle.__drizzle_migrations");
    db.run(f.path(), &["migrate"]).ok();
    assert!(db.table_exists("persons"));
}

/// A migration that switches role (`SET ROLE`) leaves the run unable to record it: the cause
/// names that, never a placeholder statement number ("statement ?").
#[test]
fn a_migration_that_sets_another_role_is_told_apart_from_a_missing_grant() {
    let db = Db::new();
    let role = format!("{}_switch", db.name);
    let sql = format!(
        "CREATE ROLE \"{role}\" NOLOGIN;\n--> statement-breakpoint\nSET ROLE \"{role}\";\n"
    );
    let folder = Folder::new(&[("0000_switch", 1000, sql.as_str())]);
    let run = db.run(folder.path(), &["migrate", "--no-backup", "--no-rehearse"]);
    run.code(1);
    assert!(!run.stderr.contains("statement ?"), "{}", run.stderr);
    assert!(
        run.stderr.contains("may have changed the role (SET ROLE"),
        "{}",
        run.stderr
    );
}
