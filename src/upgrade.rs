//! Drizzle 1.0's upgrade of a 0.x tracking table (`id, hash, created_at`) to its v1 shape (plus
//! `name`, `applied_at`): which folder each existing row belongs to. Pure; `db::upgrade_table`
//! writes the result.
//!
//! The rule is drizzle-orm 1.0.0-rc.5 `up-migrations/pg.js` l.10-48: local migrations sorted by
//! (`created_at`, name); per row, `created_at` truncated to the whole second (text truncation:
//! toward zero, NULL matches no time); exactly one folder of that second matches regardless of
//! hash; several: the first with the row's hash; none: the last folder with the row's hash. A row
//! that matches nothing stops the upgrade with nothing changed.

use std::collections::HashMap;

use crate::plan::AppliedRow;
use crate::source::{v1::locale_compare, Migration, MigrationSet};

/// Rows of a 0.x tracking table that match no local folder: Drizzle 1.0 refuses to upgrade
/// (and so do we), since those migrations were applied but are missing here.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the tracking table cannot be upgraded to Drizzle 1.0's shape: no migration folder matches {}", describe(.rows))]
pub struct UnmatchedRows {
    pub rows: Vec<AppliedRow>,
}

fn describe(rows: &[AppliedRow]) -> String {
    rows.iter()
        .map(|r| {
            format!(
                "id {} (created_at {}, hash {})",
                r.id,
                r.created_at.map_or("NULL".into(), |c| c.to_string()),
                crate::engine::short_hash(&r.hash)
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// For each row of a 0.x table (in id order), the folder name Drizzle 1.0 would give it.
pub fn names_for_rows(
    set: &MigrationSet,
    rows: &[AppliedRow],
) -> Result<Vec<String>, UnmatchedRows> {
    let mut locals: Vec<&Migration> = set.migrations.iter().collect();
    locals.sort_by(|a, b| {
        a.when
            .cmp(&b.when)
            .then_with(|| locale_compare(&a.tag, &b.tag))
    });
    let mut by_millis: HashMap<i64, Vec<&Migration>> = HashMap::new();
    let mut by_hash: HashMap<&str, &Migration> = HashMap::new();
    for m in &locals {
        by_millis.entry(m.when).or_default().push(m);
        by_hash.insert(m.hash.as_str(), m);
    }
    let mut names = Vec::with_capacity(rows.len());
    let mut unmatched = Vec::new();
    for row in rows {
        let candidates = row
            .created_at
            .and_then(|c| by_millis.get(&(c / 1000 * 1000)));
        let matched = match candidates.map(Vec::as_slice) {
            Some([only]) => Some(*only),
            Some(several) if !several.is_empty() => {
                several.iter().copied().find(|m| m.hash == row.hash)
            }
            _ => by_hash.get(row.hash.as_str()).copied(),
        };
        match matched {
            Some(m) => names.push(m.tag.clone()),
            None => unmatched.push(row.clone()),
        }
    }
    if unmatched.is_empty() {
        Ok(names)
    } else {
        Err(UnmatchedRows { rows: unmatched })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::{drizzle_hash, split_statements, Layout};
    use std::path::PathBuf;

    fn folders(names: &[(&str, &str)]) -> MigrationSet {
        MigrationSet {
            dir: PathBuf::from("/x"),
            layout: Layout::Folders,
            warnings: Vec::new(),
            migrations: names
                .iter()
                .enumerate()
                .map(|(i, (name, sql))| Migration {
                    idx: i as u64,
                    tag: name.to_string(),
                    when: crate::source::v1::created_at(name).unwrap(),
                    file_name: format!("{name}/migration.sql"),
                    hash: drizzle_hash(sql),
                    line_ending_hashes: Vec::new(),
                    bom: false,
                    statements: split_statements(sql),
                    no_transaction: false,
                    stamp: None,
                })
                .collect(),
        }
    }

    fn row(id: i64, sql: &str, created_at: Option<i64>) -> AppliedRow {
        AppliedRow {
            id,
            hash: drizzle_hash(sql),
            created_at,
            applied_at: None,
            name: None,
        }
    }

    #[test]
    fn vamsa_rows_match_by_second_then_by_hash() {
        // Vamsa's rows as 0.45.4 wrote them, against our converted folder.
        let set = folders(&[
            ("20260124062722_initial", "CREATE TABLE u();"),
            ("20260124062723_grandfather_verified_users", "UPDATE u;"),
        ]);
        let rows = [
            row(1, "CREATE TABLE u();", Some(1_769_236_042_522)),
            row(2, "UPDATE u;", Some(1_707_528_000_000)),
        ];
        assert_eq!(
            names_for_rows(&set, &rows).unwrap(),
            [
                "20260124062722_initial",
                "20260124062723_grandfather_verified_users"
            ]
        );
    }

    #[test]
    fn a_single_folder_of_the_second_wins_whatever_the_hash() {
        let set = folders(&[
            ("20250101000000_a", "SELECT 1;"),
            ("20250101000001_b", "SELECT 2;"),
        ]);
        // The row's hash is b's, but its second is a's: Drizzle 1.0 names it a.
        let rows = [row(1, "SELECT 2;", Some(1_735_689_600_999))];
        assert_eq!(names_for_rows(&set, &rows).unwrap(), ["20250101000000_a"]);
    }

    #[test]
    fn several_folders_of_one_second_are_told_apart_by_hash_or_not_at_all() {
        let set = folders(&[
            ("20250101000000_a", "SELECT 1;"),
            ("20250101000000_b", "SELECT 2;"),
        ]);
        let rows = [row(7, "SELECT 2;", Some(1_735_689_600_000))];
        assert_eq!(names_for_rows(&set, &rows).unwrap(), ["20250101000000_b"]);
        let rows = [row(7, "SELECT 3;", Some(1_735_689_600_000))];
        let err = names_for_rows(&set, &rows).unwrap_err();
        assert_eq!(err.rows[0].id, 7);
    }

    #[test]
    fn an_unmatched_row_is_named_with_its_time_and_hash() {
        let set = folders(&[("20250101000000_a", "SELECT 1;")]);
        let rows = [row(1, "SELECT 1;", Some(1)), row(2, "SELECT 9;", None)];
        let err = names_for_rows(&set, &rows).unwrap_err();
        assert_eq!(err.rows.len(), 1);
        let message = err.to_string();
        assert!(
            message.contains("no migration folder matches id 2 (created_at NULL, hash "),
            "{message}"
        );
    }
}
