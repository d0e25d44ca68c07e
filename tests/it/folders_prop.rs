//! Property tests over generated migrations folders: whatever is on disk, reading it never
//! panics, and a folder that loads never names a file outside itself.

use std::fs;
use std::path::Path;

use proptest::prelude::*;
use vamsa_migrate::plan::{plan, AppliedRow, PlanOptions};
use vamsa_migrate::source::MigrationSet;

#[derive(Debug, Clone)]
enum Content {
    Sql(String),
    Bytes(Vec<u8>),
    Missing,
    SymlinkOutside,
    SymlinkInside,
}

fn tag() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[0-9]{4}_[a-z_]{1,10}",
        1 => "\\PC{0,12}",
        1 => Just("../escape".to_string()),
        1 => Just("..".to_string()),
        1 => Just("a/b".to_string()),
        1 => Just("/etc/passwd".to_string()),
        1 => Just(String::new()),
        1 => "[./\\\\a-z]{1,6}",
    ]
}

fn content() -> impl Strategy<Value = Content> {
    prop_oneof![
        4 => "(CREATE TABLE t[a-z]{1,4} \\(id int\\);(--> statement-breakpoint\n)?){1,4}".prop_map(Content::Sql),
        2 => prop::collection::vec(any::<u8>(), 0..300).prop_map(Content::Bytes),
        1 => Just(Content::Missing),
        1 => Just(Content::SymlinkOutside),
        1 => Just(Content::SymlinkInside),
    ]
}

#[derive(Debug, Clone)]
enum Journal {
    Valid,
    Truncated(usize),
    Random(Vec<u8>),
    DeepNesting(usize),
}

fn journal() -> impl Strategy<Value = Journal> {
    prop_oneof![
        6 => Just(Journal::Valid),
        2 => (0usize..400).prop_map(Journal::Truncated),
        1 => prop::collection::vec(any::<u8>(), 0..200).prop_map(Journal::Random),
        1 => (100usize..100_000).prop_map(Journal::DeepNesting),
    ]
}

fn write_folder(
    dir: &Path,
    outside: &Path,
    entries: &[(u64, i64, String, Content)],
    journal: &Journal,
) {
    fs::create_dir_all(dir.join("meta")).unwrap();
    let items: Vec<serde_json::Value> = entries
        .iter()
        .map(|(idx, when, tag, _)| serde_json::json!({"idx": idx, "version": "7", "when": when, "tag": tag, "breakpoints": true}))
        .collect();
    let valid = serde_json::to_vec(
        &serde_json::json!({"version": "7", "dialect": "postgresql", "entries": items}),
    )
    .unwrap();
    let bytes = match journal {
        Journal::Valid => valid,
        Journal::Truncated(n) => valid[..(*n).min(valid.len())].to_vec(),
        Journal::Random(b) => b.clone(),
        Journal::DeepNesting(n) => format!("{}{}", "[".repeat(*n), "]".repeat(*n)).into_bytes(),
    };
    fs::write(dir.join("meta/_journal.json"), bytes).unwrap();
    for (_, _, tag, content) in entries {
        // Only plain names are written; a hostile tag must be caught by the reader, not by us.
        if tag.is_empty()
            || tag.contains(['/', '\\', '\0'])
            || tag.starts_with('.')
            || tag.len() > 200
        {
            continue;
        }
        let path = dir.join(format!("{tag}.sql"));
        let _ = fs::remove_file(&path);
        let _ = match content {
            Content::Sql(s) => fs::write(&path, s),
            Content::Bytes(b) => fs::write(&path, b),
            Content::Missing => Ok(()),
            Content::SymlinkOutside => std::os::unix::fs::symlink(outside, &path),
            Content::SymlinkInside => {
                fs::write(dir.join("real.sql.txt"), "SELECT 1;").unwrap();
                std::os::unix::fs::symlink(dir.join("real.sql.txt"), &path)
            }
        };
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn reading_any_folder_never_panics_and_never_leaves_it(
        entries in prop::collection::vec((0u64..6, 0i64..5000, tag(), content()), 0..6),
        journal in journal(),
        rows in prop::collection::vec((0i64..5000, "[0-9a-f]{4}"), 0..6),
    ) {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("drizzle");
        let outside = root.path().join("outside.sql");
        fs::write(&outside, "DROP TABLE everything;").unwrap();
        write_folder(&dir, &outside, &entries, &journal);

        let Ok(set) = MigrationSet::load(&dir) else { return Ok(()) };
        let canonical = fs::canonicalize(&dir).unwrap();
        for m in &set.migrations {
            prop_assert_eq!(&m.file_name, &format!("{}.sql", m.tag));
            let target = fs::canonicalize(dir.join(&m.file_name)).unwrap();
            prop_assert_eq!(target.parent(), Some(canonical.as_path()), "{} leaves the folder", m.file_name);
        }
        let rows: Vec<AppliedRow> = rows
            .into_iter()
            .enumerate()
            .map(|(i, (when, hash))| AppliedRow { id: i as i64 + 1, hash, created_at: Some(when), applied_at: None, name: None })
            .collect();
        let p = plan(&set, &rows, &PlanOptions::default());
        prop_assert_eq!(p.items.len(), set.migrations.len());
        prop_assert!(p.to_apply().count() <= p.pending_count());
        prop_assert_eq!(p.applied_count() + p.pending_count(), set.migrations.len());
    }
}

/// Every statement of a huge file, each with its line. How fast (and that it grows linearly) is
/// measured by `cargo bench`: "parse: one migration of N statements".
#[test]
fn a_huge_migration_loads_every_statement_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir_all(dir.path().join("meta")).unwrap();
    fs::write(
        dir.path().join("meta/_journal.json"),
        r#"{"version":"7","dialect":"postgresql","entries":[{"idx":0,"version":"7","when":1,"tag":"0000_huge","breakpoints":true}]}"#,
    )
    .unwrap();
    let statement = "INSERT INTO t VALUES (1, 'some text that makes the line longer');--> statement-breakpoint\n";
    let body = statement.repeat(200_000);
    fs::write(dir.path().join("0000_huge.sql"), &body).unwrap();
    let set = MigrationSet::load(dir.path()).unwrap();
    let all = &set.migrations[0].statements;
    assert_eq!(all.len(), 200_000);
    let statements: Vec<_> = all.iter().collect();
    assert_eq!(statements[199_999].line, 200_000);
    assert_eq!(statements[123_456].line, 123_457);
    assert_eq!(
        statements[123_456].sql.trim(),
        statement
            .split("--> statement-breakpoint")
            .next()
            .unwrap()
            .trim()
    );
}
