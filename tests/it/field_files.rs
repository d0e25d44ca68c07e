//! Migration files as the field writes them, against a real PostgreSQL: line endings changed by
//! a checkout, byte-order marks, and Drizzle's comment-only custom migrations.

use std::path::Path;
use std::process::Command;

use crate::support::{cli, sha256_hex, Db, Folder};

const A: &str = "CREATE TABLE \"users\" (\n  \"id\" serial PRIMARY KEY\n);\n";
const B: &str =
    "ALTER TABLE \"users\" ADD COLUMN \"name\" text;\n--> statement-breakpoint\nSELECT 1;\n";
const C: &str = "ALTER TABLE \"users\" ADD COLUMN \"email\" text;\n";

fn crlf(text: &str) -> String {
    text.replace('\n', "\r\n")
}

/// Applied from one checkout, deployed from a checkout with the other line endings plus a new
/// migration: applied, a warning naming the file and the `.gitattributes` fix, never
/// `--accept-edited`, and the recorded hashes left as they were.
#[test]
fn a_file_whose_only_change_is_its_line_endings_counts_as_applied() {
    for (applied, checked_out) in [(A.to_string(), crlf(A)), (crlf(A), A.to_string())] {
        let db = Db::new();
        let f = Folder::new(&[("0000_init", 1000, &applied), ("0001_more", 2000, B)]);
        db.run(f.path(), &["migrate", "--no-backup"]).ok();
        let before = db.rows();
        f.write(&[
            ("0000_init", 1000, &checked_out),
            ("0001_more", 2000, &crlf(B)),
            ("0002_email", 3000, C),
        ]);
        let status = db.run(f.path(), &["status"]);
        status.code(3);
        for run in [status, db.run(f.path(), &["migrate", "--no-backup"])] {
            assert!(!run.stderr.contains("--accept-edited"), "{}", run.stderr);
            assert!(
                run.stderr.contains("0000_init.sql has other line endings")
                    && run.stderr.contains("*.sql text eol=lf"),
                "{}",
                run.stderr
            );
        }
        let after = db.rows();
        assert_eq!(after[..2], before[..], "recorded hashes are left alone");
        assert_eq!(after.len(), 3, "0002 applied");
        assert_eq!(
            db.psql("SELECT count(*) FROM information_schema.columns WHERE column_name = 'email'"),
            "1"
        );
    }
}

/// Line endings do not hide a real edit.
#[test]
fn an_edit_with_other_line_endings_is_still_an_edit() {
    let db = Db::new();
    let f = Folder::new(&[("0000_init", 1000, A)]);
    db.run(f.path(), &["migrate", "--no-backup"]).ok();
    f.write(&[("0000_init", 1000, &crlf(&A.replace("id", "uid")))]);
    let run = db.run(f.path(), &["migrate", "--no-backup"]);
    run.code(4);
    assert!(
        run.stderr.contains("--accept-edited 0000_init"),
        "{}",
        run.stderr
    );
}

/// A BOM at the start of a migration (and of the journal) is never sent to the server; the
/// recorded hash is Drizzle's, over the exact bytes; a warning names each file.
#[test]
fn a_byte_order_mark_is_skipped_hashed_as_drizzle_does_and_named() {
    let db = Db::new();
    let with_bom = format!("\u{feff}{C}");
    let f = Folder::new(&[("0000_init", 1000, A), ("0001_bom", 2000, &with_bom)]);
    let journal = f.path().join("meta/_journal.json");
    let json = std::fs::read_to_string(&journal).unwrap();
    std::fs::write(&journal, format!("\u{feff}{json}")).unwrap();
    let dry = db.run(f.path(), &["migrate", "--dry-run"]);
    dry.ok();
    let run = db.run(f.path(), &["migrate", "--no-backup"]);
    run.ok();
    for file in ["0001_bom.sql", "meta/_journal.json"] {
        assert!(
            run.stderr
                .contains(&format!("{file} starts with a UTF-8 byte-order mark")),
            "{file}: {}",
            run.stderr
        );
    }
    let rows = db.rows();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[1].0, sha256_hex(with_bom.as_bytes()));
    assert_eq!(
        db.psql("SELECT count(*) FROM information_schema.columns WHERE column_name = 'email'"),
        "1"
    );
}

fn fixture() -> Vec<u8> {
    std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data/drizzle-kit-custom/0000_seed_data.sql"),
    )
    .unwrap()
}

/// drizzle-kit 0.31.11's `generate --custom` file is a valid no-op migration: shown as
/// "(no statements)", recorded with Drizzle's hash and `when`, and later migrations apply.
#[test]
fn a_drizzle_kit_custom_migration_is_a_recorded_no_op() {
    let custom = String::from_utf8(fixture()).unwrap();
    let db = Db::new();
    let f = Folder::new(&[
        ("0000_init", 1000, A),
        ("0001_seed_data", 2000, &custom),
        ("0002_email", 3000, C),
    ]);
    let dry = db.run(f.path(), &["migrate", "--dry-run"]);
    dry.ok();
    assert!(
        dry.stdout
            .contains("  0001_seed_data.sql\n    (no statements)\n"),
        "{}",
        dry.stdout
    );
    db.run(f.path(), &["migrate", "--no-backup"]).ok();
    let rows = db.rows();
    assert_eq!(
        rows[1],
        (
            "b3cc75fa802f8a5b333c480eb0d77f3d2185602e108f36fb33d3ade3c6939413".to_string(),
            2000
        )
    );
    assert_eq!(rows.len(), 3);
    db.run(f.path(), &["status"]).ok();
}

/// The placeholder `new` writes is refused, even with SQL below it, until its marker line is
/// deleted; then the file applies.
#[test]
fn the_placeholder_of_new_is_refused_until_its_marker_line_is_deleted() {
    let f = Folder::new(&[("0000_init", 1000, A)]);
    cli()
        .args(["new", "seed"])
        .migrations_dir(f.path())
        .run()
        .ok();
    let file = f.path().join("0001_seed.sql");
    let placeholder = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, format!("{placeholder}{C}")).unwrap();
    let db = Db::new();
    let refused = db.run(f.path(), &["migrate", "--no-backup"]);
    refused.code(2);
    assert!(
        refused
            .stderr
            .contains("0001_seed.sql:1: still the placeholder `vamsa-migrate new` wrote"),
        "{}",
        refused.stderr
    );
    assert!(!db.table_exists("users"), "nothing applied");
    let marker_gone: String = placeholder
        .lines()
        .skip(1)
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&file, format!("{marker_gone}{C}")).unwrap();
    db.run(f.path(), &["migrate", "--no-backup"]).ok();
    assert_eq!(db.rows().len(), 2);
}

/// The committed fixture is byte for byte what the pinned drizzle-kit writes (run when npm is
/// installed; the lockfile in tests/interop pins the version).
#[test]
fn the_custom_fixture_is_what_the_pinned_drizzle_kit_writes() {
    if Command::new("npm").arg("--version").output().is_err() {
        eprintln!("npm not installed: not regenerating the drizzle-kit fixture");
        return;
    }
    let interop = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop");
    if !interop.join("node_modules/drizzle-kit").exists() {
        let out = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(&interop)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out_dir = tempfile::tempdir().unwrap();
    let out = Command::new(interop.join("node_modules/.bin/drizzle-kit"))
        .args([
            "generate",
            "--dialect",
            "postgresql",
            "--schema",
            "./custom-schema.ts",
        ])
        .arg("--out")
        .arg(out_dir.path())
        .args(["--custom", "--name", "seed_data"])
        .current_dir(&interop)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let generated = std::fs::read(out_dir.path().join("0000_seed_data.sql")).unwrap();
    assert_eq!(generated, fixture());
}
