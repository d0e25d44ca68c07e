//! Interoperability with Drizzle ORM 1.0 (drizzle-orm and drizzle-kit 1.0.0-rc.5-ab785fc, pinned
//! in tests/interop/v1) and, for the old layout, drizzle-orm 0.45.4 (tests/interop): the folder
//! layout written half by one and finished by the other, and old-layout databases whose folder is
//! converted (by our `convert --write` and by `drizzle-kit up`). Each package dir gets one
//! `npm ci` per test run (see `interop::ensure_node_modules`).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::interop::ensure_node_modules;
use crate::support::{cli, repo_folder, Db, Folder};

/// Drizzle's own migrator of one version.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Drizzle {
    /// drizzle-orm 0.45.4 (journal layout), tests/interop.
    V045,
    /// drizzle-orm 1.0.0-rc.5-ab785fc (folder layout), tests/interop/v1.
    V1,
}

impl Drizzle {
    fn package_dir(self) -> PathBuf {
        let interop = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop");
        match self {
            Drizzle::V045 => interop,
            Drizzle::V1 => interop.join("v1"),
        }
    }

    /// Runs its migrator on `dir`; the output when it fails.
    pub(crate) fn migrate(self, db: &Db, dir: &Path) -> Result<(), String> {
        let package = self.package_dir();
        ensure_node_modules(&package);
        let tmp = tempfile::tempdir().expect("a TMPDIR for node");
        let out = Command::new("node")
            .arg(package.join("drizzle-migrate.mjs"))
            .arg(dir)
            .env("TMPDIR", tmp.path())
            .env(
                "DATABASE_URL",
                format!(
                    "postgres://postgres@127.0.0.1:{}/{}",
                    db.cluster.port(),
                    db.name
                ),
            )
            .output()
            .expect("run node");
        if out.status.success() {
            return Ok(());
        }
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }

    fn migrate_ok(self, db: &Db, dir: &Path) {
        if let Err(e) = self.migrate(db, dir) {
            panic!("{self:?} migrate {} failed: {e}", dir.display());
        }
    }
}

/// `drizzle-kit up` (1.0) on `dir`, with a relative `--out` (an absolute one makes it fail
/// half-way, see /work/notes) and TZ=UTC (it takes the folder's year in local time).
fn drizzle_kit_up(dir: &Path) -> std::process::Output {
    let package = Drizzle::V1.package_dir();
    ensure_node_modules(&package);
    let parent = dir.parent().expect("a temporary folder has a parent");
    let out = format!("./{}", dir.file_name().unwrap().to_string_lossy());
    // drizzle-kit's tsx keeps a compile cache under os.tmpdir(): a TMPDIR of its own, removed after.
    let tmp = tempfile::tempdir().expect("a TMPDIR for drizzle-kit");
    Command::new(package.join("node_modules/.bin/drizzle-kit"))
        .args(["up", "--dialect", "postgresql", "--out", &out])
        .current_dir(parent)
        .env("TZ", "UTC")
        .env("TMPDIR", tmp.path())
        .output()
        .expect("run drizzle-kit")
}

/// A copy of `rel` converted by our `convert --write`.
fn converted_by_us(rel: &str) -> Folder {
    let f = repo_folder(rel);
    cli()
        .args(["convert", "--write"])
        .migrations_dir(f.path())
        .run()
        .ok();
    f
}

/// A copy of `rel` converted by `drizzle-kit up`.
fn converted_by_drizzle_kit(rel: &str) -> Folder {
    let f = repo_folder(rel);
    let out = drizzle_kit_up(f.path());
    assert!(
        out.status.success() && !f.path().join("meta").exists(),
        "drizzle-kit up: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    f
}

/// The files of `dir` below it, sorted, with each one's bytes.
fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if path.is_dir() {
            let inner = files(&path).into_iter();
            found.extend(inner.map(|(n, b)| (format!("{name}/{n}"), b)));
        } else {
            found.push((name, std::fs::read(&path).unwrap()));
        }
    }
    found.sort();
    found
}

/// `pg_dump` of the application's schema `public` (`--schema-only` or `--data-only`).
fn dump(db: &Db, what: &str) -> String {
    let out = Command::new(db.cluster.program("pg_dump"))
        .args([what, "--no-owner", "-n", "public", "-h", "127.0.0.1", "-p"])
        .arg(db.cluster.port().to_string())
        .args(["-U", "postgres", &db.name])
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.starts_with("\\restrict") && !l.starts_with("\\unrestrict"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Tracking rows as `id|hash|created_at|name`, in id order (`applied_at` left out).
fn rows(db: &Db) -> Vec<String> {
    db.psql(
        "SELECT id || '|' || hash || '|' || created_at || '|' || coalesce(name, 'NULL') \
         FROM drizzle.__drizzle_migrations ORDER BY id",
    )
    .lines()
    .map(str::to_string)
    .collect()
}

fn row_count(db: &Db) -> String {
    db.psql("SELECT count(*) FROM drizzle.__drizzle_migrations")
}

/// Tracking rows as `id|hash|created_at`, in id order: the columns of both table versions.
fn v0_rows(db: &Db) -> Vec<String> {
    db.psql(
        "SELECT id || '|' || hash || '|' || created_at FROM drizzle.__drizzle_migrations ORDER BY id",
    )
    .lines()
    .map(str::to_string)
    .collect()
}

/// The names of the migration folders of `dir`, in name order.
fn folder_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| dir.join(n).join("migration.sql").is_file())
        .collect();
    names.sort();
    names
}

/// `dir` without its migration folders after the first `keep`.
fn first_folders(dir: &Path, keep: usize) -> Folder {
    let half = Folder::copy_of(dir);
    for name in folder_names(half.path()).iter().skip(keep) {
        std::fs::remove_dir_all(half.path().join(name)).unwrap();
    }
    half
}

/// Our `migrate`, which must apply nothing.
fn up_to_date_for_us(db: &Db, dir: &Path) {
    let status = db.run(dir, &["status"]);
    status.ok();
    assert!(
        status.stdout.contains("Database is up to date."),
        "{}",
        status.stdout
    );
    let run = db.run(dir, &["migrate"]);
    run.ok();
    assert_eq!(run.stdout, "No pending migrations.\n");
}

/// Drizzle 1.0's migrator, which must change neither the schema nor the rows (apart from the
/// 0.x table's upgrade, which names rows: compared by the caller).
fn up_to_date_for_drizzle_1(db: &Db, dir: &Path) {
    let schema = dump(db, "--schema-only");
    let data = dump(db, "--data-only");
    let count = row_count(db);
    Drizzle::V1.migrate_ok(db, dir);
    assert_eq!(row_count(db), count, "Drizzle 1.0 applied something");
    assert_eq!(dump(db, "--schema-only"), schema);
    assert_eq!(dump(db, "--data-only"), data);
}

const GENERATED: &str = "tests/data/kit031-generated";

/// Who migrated a database under the old (journal) layout.
#[derive(Clone, Copy, Debug)]
enum Writer {
    Us,
    Drizzle045,
}

impl Writer {
    fn migrate(self, db: &Db, dir: &Path) {
        match self {
            Writer::Us => {
                db.run(dir, &["migrate"]).ok();
            }
            Writer::Drizzle045 => Drizzle::V045.migrate_ok(db, dir),
        }
    }
}

/// Schema, application rows and tracking rows (apart from `applied_at`) are those of `reference`.
fn same_as(db: &Db, reference: &Db) {
    assert_eq!(rows(db), rows(reference), "tracking rows differ");
    assert_eq!(dump(db, "--schema-only"), dump(reference, "--schema-only"));
    assert_eq!(dump(db, "--data-only"), dump(reference, "--data-only"));
}

#[test]
fn a_folder_half_applied_by_drizzle_1_is_finished_by_us_and_the_reverse() {
    let full = converted_by_drizzle_kit(GENERATED);
    let names = folder_names(full.path());
    assert_eq!(names.len(), 3, "{names:?}");
    let half = first_folders(full.path(), 2);
    let reference = Db::new();
    Drizzle::V1.migrate_ok(&reference, full.path());

    // Drizzle 1.0 applies the first two, we apply the third (and only it).
    let db = Db::new();
    Drizzle::V1.migrate_ok(&db, half.path());
    let run = db.run(full.path(), &["migrate"]);
    run.ok();
    assert_eq!(
        run.stdout,
        format!(
            "Running migrations...\nApplied: {}/migration.sql\nMigration complete.\n",
            names[2]
        )
    );
    same_as(&db, &reference);
    up_to_date_for_drizzle_1(&db, full.path());

    // We apply the first two, Drizzle 1.0 the third: re-running one would fail (CREATE TABLE)
    // or duplicate the seed rows (INSERT), which `same_as` compares.
    let db = Db::new();
    db.run(half.path(), &["migrate"]).ok();
    Drizzle::V1.migrate_ok(&db, full.path());
    same_as(&db, &reference);
    up_to_date_for_us(&db, full.path());
}

#[test]
fn an_old_layout_database_whose_folder_is_converted_is_up_to_date_for_us_and_drizzle_1() {
    let old = repo_folder(GENERATED);
    let by_us = converted_by_us(GENERATED);
    let by_kit = converted_by_drizzle_kit(GENERATED);
    // Both name the folders after each entry's `when` and copy the SQL byte for byte.
    let sql_files = |dir: &Path| {
        files(dir)
            .into_iter()
            .filter(|(name, _)| name.ends_with("/migration.sql"))
            .collect::<Vec<_>>()
    };
    assert_eq!(sql_files(by_us.path()), sql_files(by_kit.path()));
    let names = folder_names(by_us.path());
    // Every writer and every conversion, each order of the two readers once per writer and per
    // conversion (a run takes seconds: node, pg_dump for our backup).
    let cases = [
        (Writer::Us, &by_us, true),
        (Writer::Us, &by_kit, false),
        (Writer::Drizzle045, &by_us, false),
        (Writer::Drizzle045, &by_kit, true),
    ];
    for (writer, converted, drizzle_first) in cases {
        let db = Db::new();
        writer.migrate(&db, old.path());
        let before = v0_rows(&db);
        if drizzle_first {
            up_to_date_for_drizzle_1(&db, converted.path());
            up_to_date_for_us(&db, converted.path());
        } else {
            up_to_date_for_us(&db, converted.path());
            up_to_date_for_drizzle_1(&db, converted.path());
        }
        // The 0.x rows kept their hash and created_at and got their folder's name.
        assert_eq!(v0_rows(&db), before, "{writer:?}");
        assert_eq!(
            db.psql("SELECT string_agg(name, ',' ORDER BY id) FROM drizzle.__drizzle_migrations"),
            names.join(","),
            "{writer:?}, Drizzle 1.0 first: {drizzle_first}"
        );
    }
}

const VAMSA: &str = "tests/data/vamsa-drizzle";

#[test]
fn vamsa_converted_by_us_gives_drizzle_1_the_old_schema_and_existing_databases_stay_up_to_date() {
    let old = repo_folder(VAMSA);
    let converted = converted_by_us(VAMSA);
    let ours = Db::new();
    ours.run(old.path(), &["migrate"]).ok();
    // A fresh database, migrated by Drizzle 1.0's own migrator from our conversion.
    let fresh = Db::new();
    Drizzle::V1.migrate_ok(&fresh, converted.path());
    assert_eq!(dump(&fresh, "--schema-only"), dump(&ours, "--schema-only"));
    assert_eq!(dump(&fresh, "--data-only"), dump(&ours, "--data-only"));

    // Existing databases: migrated under the old layout by us, and by Drizzle 0.45.4.
    up_to_date_for_us(&ours, converted.path());
    up_to_date_for_drizzle_1(&ours, converted.path());
    let theirs = Db::new();
    Drizzle::V045.migrate_ok(&theirs, old.path());
    up_to_date_for_drizzle_1(&theirs, converted.path());
    up_to_date_for_us(&theirs, converted.path());
    for db in [&ours, &theirs] {
        assert_eq!(
            db.psql("SELECT string_agg(name, ',' ORDER BY id) FROM drizzle.__drizzle_migrations"),
            folder_names(converted.path()).join(",")
        );
    }
}

#[test]
fn drizzle_kit_up_refuses_vamsa_folder_without_snapshots_and_changes_nothing() {
    let f = repo_folder(VAMSA);
    let before = files(f.path());
    let out = drizzle_kit_up(f.path());
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{said}");
    assert!(said.contains("No snapshot was found"), "{said}");
    assert_eq!(files(f.path()), before);
}
