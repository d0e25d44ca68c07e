//! Drizzle ORM 1.0's folder layout and tracking table (issue 12), against a real PostgreSQL.

use std::path::Path;

use crate::support::{cli, repo_folder, sha256_hex, Db, Folder};

const A: &str = "CREATE TABLE \"persons\" (\"id\" serial PRIMARY KEY);\n";
const B: &str = "ALTER TABLE \"persons\" ADD COLUMN \"born\" date;\n";
const C: &str = "CREATE TABLE \"media\" (\"id\" serial PRIMARY KEY);\n";

/// A folder in Drizzle 1.0's layout from (folder name, sql) pairs.
fn folders(entries: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    add(dir.path(), entries);
    dir
}

fn add(dir: &Path, entries: &[(&str, &str)]) {
    for (name, sql) in entries {
        std::fs::create_dir_all(dir.join(name)).unwrap();
        std::fs::write(dir.join(name).join("migration.sql"), sql).unwrap();
    }
}

/// Rows as `id|hash|created_at|name|applied_at is null`, in id order.
fn v1_rows(db: &Db) -> Vec<String> {
    db.psql(
        "SELECT id || '|' || hash || '|' || created_at || '|' || coalesce(name, 'NULL') || '|' || (applied_at IS NULL) \
         FROM drizzle.__drizzle_migrations ORDER BY id",
    )
    .lines()
    .map(str::to_string)
    .collect()
}

/// The application's schema (`public`): relations, columns with types, constraints, indexes.
fn app_schema(db: &Db) -> String {
    db.psql(
        "SELECT string_agg(x, E'\\n' ORDER BY x) FROM ( \
           SELECT 'c:' || relname || ':' || relkind::text AS x FROM pg_class WHERE relnamespace = 'public'::regnamespace \
           UNION ALL SELECT 'a:' || attrelid::regclass || '.' || attname || ' ' || format_type(atttypid, atttypmod) \
             || ' ' || attnotnull FROM pg_attribute JOIN pg_class c ON c.oid = attrelid \
             WHERE c.relnamespace = 'public'::regnamespace AND attnum > 0 AND NOT attisdropped \
           UNION ALL SELECT 'k:' || conname || ' ' || pg_get_constraintdef(oid) FROM pg_constraint \
             WHERE connamespace = 'public'::regnamespace \
           UNION ALL SELECT 'i:' || indexdef FROM pg_indexes WHERE schemaname = 'public') s",
    )
}

#[test]
fn a_folder_layout_gets_drizzle_1_table_and_named_rows() {
    let db = Db::new();
    let dir = folders(&[
        ("20250102093015_add_born", B),
        ("20250101120000_create_persons", A),
    ]);
    let run = db.run(dir.path(), &["migrate"]);
    run.ok();
    assert_eq!(
        run.stdout,
        "Running migrations...\nApplied: 20250101120000_create_persons/migration.sql\n\
         Applied: 20250102093015_add_born/migration.sql\nMigration complete.\n"
    );
    // drizzle-orm 1.0.0-rc.5's DDL, column by column.
    assert_eq!(
        db.psql(
            "SELECT string_agg(attname || ' ' || format_type(atttypid, atttypmod) || ' ' || attnotnull \
             || ' ' || coalesce(pg_get_expr(adbin, adrelid), ''), ', ' ORDER BY attnum) \
             FROM pg_attribute LEFT JOIN pg_attrdef ON adrelid = attrelid AND adnum = attnum \
             WHERE attrelid = 'drizzle.__drizzle_migrations'::regclass AND attnum > 0"
        ),
        "id integer true nextval('drizzle.__drizzle_migrations_id_seq'::regclass), hash text true , \
         created_at bigint false , name text false , applied_at timestamp with time zone false now()"
    );
    let hash_a = sha256_hex(A.as_bytes());
    let hash_b = sha256_hex(B.as_bytes());
    assert_eq!(
        v1_rows(&db),
        [
            format!("1|{hash_a}|1735732800000|20250101120000_create_persons|false"),
            format!("2|{hash_b}|1735810215000|20250102093015_add_born|false"),
        ]
    );
    db.run(dir.path(), &["migrate"]).ok();
    assert_eq!(v1_rows(&db).len(), 2, "nothing applied twice");
}

#[test]
fn a_drizzle_0_table_is_upgraded_as_drizzle_1_does_and_nothing_reruns() {
    let db = Db::new();
    let old = repo_folder("tests/data/vamsa-drizzle");
    db.run(old.path(), &["migrate"]).ok();
    let before = db.rows();
    // The folder converted to Drizzle 1.0's layout, keeping the journal's order, plus a new one.
    let new = tempfile::tempdir().unwrap();
    for (tag, folder) in [
        ("0000_initial", "20260124062722_initial"),
        (
            "0001_grandfather_verified_users",
            "20260124062723_grandfather_verified_users",
        ),
    ] {
        let sql = std::fs::read_to_string(old.path().join(format!("{tag}.sql"))).unwrap();
        add(new.path(), &[(folder, &sql)]);
    }
    add(new.path(), &[("20260301000000_media", C)]);
    let status = db.run(new.path(), &["status"]);
    status.code(3);
    assert!(
        status
            .stderr
            .contains("the next run upgrades it to Drizzle 1.0's"),
        "{status:#?}"
    );
    let run = db.run(new.path(), &["migrate"]);
    run.ok();
    assert!(
        run.stdout
            .contains("Applied: 20260301000000_media/migration.sql\n")
            && !run.stdout.contains("initial/"),
        "{run:#?}"
    );
    let rows = v1_rows(&db);
    assert_eq!(
        rows[..2],
        [
            format!(
                "1|{}|{}|20260124062722_initial|true",
                before[0].0, before[0].1
            ),
            format!(
                "2|{}|{}|20260124062723_grandfather_verified_users|true",
                before[1].0, before[1].1
            ),
        ]
    );
    assert!(rows[2].ends_with("|20260301000000_media|false"), "{rows:?}");
}

#[test]
fn a_row_matching_no_folder_stops_the_upgrade_naming_it() {
    let db = Db::new();
    let old = Folder::new(&[
        ("0000_a", 1_735_732_800_000, A),
        ("0001_b", 1_735_810_215_000, B),
    ]);
    db.run(old.path(), &["migrate"]).ok();
    let new = folders(&[("20250101120000_a", A)]);
    let run = db.run(new.path(), &["migrate"]);
    run.code(2);
    let hash = &sha256_hex(B.as_bytes())[..12];
    assert!(
        run.stderr.contains(&format!(
            "no migration folder matches id 2 (created_at 1735810215000, hash {hash})"
        )),
        "{run:#?}"
    );
    assert_eq!(
        db.psql("SELECT count(*) FROM pg_attribute WHERE attrelid = 'drizzle.__drizzle_migrations'::regclass AND attname = 'name'"),
        "0",
        "nothing changed"
    );
}

#[test]
fn an_older_folder_is_applied_after_newer_ones_with_a_note() {
    let db = Db::new();
    let dir = folders(&[
        ("20250101120000_create_persons", A),
        ("20250301000000_media", C),
    ]);
    db.run(dir.path(), &["migrate"]).ok();
    add(dir.path(), &[("20250201000000_add_born", B)]);
    let status = db.run(dir.path(), &["status"]);
    status.code(3);
    assert!(
        status.stderr.contains(
            "20250201000000_add_born sorts before 20250301000000_media, which is already applied"
        ),
        "{status:#?}"
    );
    let run = db.run(dir.path(), &["migrate"]);
    run.ok();
    assert!(
        run.stdout
            .contains("Applied: 20250201000000_add_born/migration.sql"),
        "{run:#?}"
    );
    assert!(v1_rows(&db)[2].contains("|20250201000000_add_born|"));
}

#[test]
fn a_half_converted_folder_is_refused_naming_what_is_left() {
    let db = Db::new();
    let dir = Folder::new(&[("0000_a", 1000, A), ("0001_b", 2000, B)]);
    add(dir.path(), &[("19700101000001_a", A)]);
    std::fs::remove_file(dir.path().join("0000_a.sql")).unwrap();
    let run = db.run(dir.path(), &["migrate"]);
    run.code(2);
    assert!(
        run.stderr.contains("holds both migrations layouts")
            && run
                .stderr
                .contains("left behind of the journal layout: meta/_journal.json, 0001_b.sql")
            && run.stderr.contains("vamsa-migrate convert --write"),
        "{run:#?}"
    );
    assert!(!db.table_exists("persons"));
}

#[test]
fn convert_shows_then_writes_vamsa_keeping_its_order_and_existing_databases_up_to_date() {
    let old_db = Db::new();
    let old = repo_folder("tests/data/vamsa-drizzle");
    old_db.run(old.path(), &["migrate"]).ok();
    let f = repo_folder("tests/data/vamsa-drizzle");
    let dry = cli()
        .args(["convert", "--migrations-dir"])
        .arg(f.path())
        .run();
    dry.ok();
    assert!(
        dry.stdout.contains("  0001_grandfather_verified_users.sql -> 20260124062723_grandfather_verified_users/migration.sql (its \"when\" goes back")
            && f.path().join("meta/_journal.json").exists(),
        "{dry:#?}"
    );
    cli()
        .args(["convert", "--write", "--migrations-dir"])
        .arg(f.path())
        .run()
        .ok();
    assert!(!f.path().join("meta").exists());
    for (tag, folder) in [
        ("0000_initial", "20260124062722_initial"),
        (
            "0001_grandfather_verified_users",
            "20260124062723_grandfather_verified_users",
        ),
    ] {
        assert_eq!(
            std::fs::read(old.path().join(format!("{tag}.sql"))).unwrap(),
            std::fs::read(f.path().join(folder).join("migration.sql")).unwrap(),
            "byte for byte"
        );
    }
    // A fresh database gets the old layout's schema (the UPDATE runs after its table exists).
    let fresh = Db::new();
    fresh.run(f.path(), &["migrate"]).ok();
    assert_eq!(app_schema(&fresh), app_schema(&old_db));
    // The existing database is up to date: its rows are matched, nothing runs again.
    let run = old_db.run(f.path(), &["migrate"]);
    run.ok();
    assert!(!run.stdout.contains("Applied:"), "{run:#?}");
    old_db.run(f.path(), &["status"]).ok();
}

#[test]
fn status_warns_when_name_order_differs_from_the_order_applied() {
    let db = Db::new();
    let dir = folders(&[("20250301000000_media", C)]);
    db.run(dir.path(), &["migrate"]).ok();
    add(dir.path(), &[("20250101120000_create_persons", A)]);
    db.run(dir.path(), &["migrate"]).ok();
    let status = db.run(dir.path(), &["status"]);
    status.ok();
    assert!(
        status.stderr.contains(
            "20250301000000_media sorts after 20250101120000_create_persons but was applied before it (row id 1 < 2)"
        ),
        "{status:#?}"
    );
}

/// Whatever is named `migration.sql` in a migration folder makes a migration: one that is not
/// a regular file (a FIFO, a directory, a dangling link) is refused by name, never skipped as if
/// the migration were not there ("up to date" with a migration missing).
#[test]
fn a_migration_sql_that_is_not_a_regular_file_is_refused_not_skipped() {
    let db = Db::new();
    type Make = fn(&Path);
    let cases: [(&str, Make); 3] = [
        ("is a FIFO", |p| {
            nix::unistd::mkfifo(p, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap()
        }),
        ("directory", |p| std::fs::create_dir(p).unwrap()),
        ("does not exist", |p| {
            std::os::unix::fs::symlink("/nonexistent/migration.sql", p).unwrap()
        }),
    ];
    for (what, make) in cases {
        let dir = folders(&[("20250101120000_a", A)]);
        std::fs::create_dir(dir.path().join("20250102120000_b")).unwrap();
        make(&dir.path().join("20250102120000_b/migration.sql"));
        for args in [&["migrate", "--dry-run"][..], &["status"], &["migrate"]] {
            let run = db.run(dir.path(), args);
            run.code(2);
            assert!(
                run.stderr.contains("20250102120000_b/migration.sql") && run.stderr.contains(what),
                "{what}: {args:?}: {}",
                run.stderr
            );
        }
        assert!(!db.table_exists("persons"), "{what}: something was applied");
    }
}

/// `convert --write` copies nothing from outside the folder and leaves no half-converted
/// folder: a snapshot that is a symlink, or a target folder that exists, stops it before
/// anything is written.
#[test]
fn convert_refuses_a_symlinked_snapshot_or_an_existing_target_before_writing() {
    let secret = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(secret.path(), "root:SECRET-HASH:19000::::::\n").unwrap();
    let link = repo_folder("tests/data/vamsa-drizzle");
    std::os::unix::fs::symlink(secret.path(), link.path().join("meta/0001_snapshot.json")).unwrap();
    let clash = repo_folder("tests/data/vamsa-drizzle");
    std::fs::create_dir(
        clash
            .path()
            .join("20260124062723_grandfather_verified_users"),
    )
    .unwrap();
    for (f, problem) in [(&link, "not a regular file"), (&clash, "already exists")] {
        let before: Vec<_> = std::fs::read_dir(f.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        let run = cli()
            .args(["convert", "--write", "--migrations-dir"])
            .arg(f.path())
            .run();
        run.code(2);
        assert!(run.stderr.contains(problem), "{}", run.stderr);
        let after: Vec<_> = std::fs::read_dir(f.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            before.len(),
            after.len(),
            "something was written: {after:?}"
        );
        assert!(f.path().join("meta/_journal.json").is_file());
    }
}
