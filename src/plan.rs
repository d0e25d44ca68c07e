//! Planning: from the migrations on disk and the rows in the tracking table, decide what is
//! applied, what is pending and what has drifted. Pure: no I/O, so every rule is unit-tested.

use crate::source::{Layout, Migration, MigrationSet};

/// One row of Drizzle's tracking table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedRow {
    /// Drizzle's `id serial`; hand-made tables may use bigint.
    pub id: i64,
    /// Drizzle writes the file's SHA-256 in hex; a row made by hand may hold any text, so
    /// print it through `printable`.
    pub hash: String,
    /// The journal `when` of the migration, as Drizzle records it. NULL in hand-made rows.
    pub created_at: Option<i64>,
    /// When the row was written, if the table has our optional `applied_at` column.
    pub applied_at: Option<String>,
    /// The migration's folder name, in Drizzle 1.0's table (column `name`); `None` in a 0.x
    /// table and in rows Drizzle 0.x wrote into a 1.0 table.
    pub name: Option<String>,
}

/// `text` with its control characters escaped as Rust's `char::escape_debug` does (`\u{1b}`,
/// `\n`), everything else as is: text read from the database may come from anyone, and raw
/// control characters would drive the terminal it is printed on.
pub(crate) fn printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_debug());
        } else {
            out.push(c);
        }
    }
    out
}

/// A tracking row for messages: `row 3 (name 0002_index, created_at 3000, hash 1f2e3d4c5b6a,
/// applied 2026-11-29 22:28:24)`, the name and time only when the table has them, text from
/// the table escaped.
pub(crate) fn describe_row(row: &AppliedRow) -> String {
    let mut facts = Vec::with_capacity(4);
    if let Some(name) = &row.name {
        facts.push(format!("name {}", printable(name)));
    }
    let created = row.created_at.map_or("NULL".into(), |c| c.to_string());
    facts.push(format!("created_at {created}"));
    facts.push(format!("hash {}", crate::engine::short_hash(&row.hash)));
    if let Some(at) = &row.applied_at {
        facts.push(format!("applied {}", printable(at)));
    }
    format!("row {} ({})", row.id, facts.join(", "))
}

/// What the admin allowed for this run.
#[derive(Debug, Clone, Default)]
pub struct PlanOptions {
    pub allow_out_of_order: bool,
    /// Tags whose edited file should be accepted: their row gets the file's new hash.
    pub accept_edited: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    Applied(AppliedRow),
    /// Applied, but the file changed since: its hash no longer matches the row.
    Edited {
        row: AppliedRow,
        accepted: bool,
    },
    Pending {
        /// Drizzle's migrator compares `when` with the newest `created_at` and would silently
        /// skip this one forever.
        drizzle_would_skip: bool,
    },
    /// Pending, but a later migration in journal order is already applied (a hole).
    OutOfOrder {
        allowed: bool,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item<'a> {
    pub migration: &'a Migration,
    pub state: State,
}

#[derive(Debug, Clone)]
pub struct Plan<'a> {
    /// Every migration of the journal, in journal order.
    pub items: Vec<Item<'a>>,
    /// Rows that match no migration on disk (for example after `git checkout` of older code).
    pub missing: Vec<AppliedRow>,
    /// The folder's layout: in the folder layout an out-of-order migration is applied (as
    /// Drizzle 1.0 does), not drift.
    pub layout: Layout,
    /// Applied files whose recorded hash is that of the same text with other line endings
    /// (see [`same_but_line_endings`]): applied, not edited; the admin should pin them.
    pub line_endings_differ: Vec<String>,
}

/// Whether the recorded `hash` is that of `m`'s file with only its line endings changed (CR LF
/// made LF, or LF made CR LF, as git's `core.autocrlf` does): the same migration, not an edit.
pub fn same_but_line_endings(m: &Migration, hash: &str) -> bool {
    m.line_ending_hashes.iter().any(|h| h == hash)
}

/// The warning for a file in [`Plan::line_endings_differ`].
pub fn line_endings_warning(file: &str) -> String {
    format!(
        "{file} has other line endings (CR LF / LF) than when it was applied; it counts as \
         applied. Pin them with the line `*.sql text eol=lf` in the migrations' .gitattributes"
    )
}

/// Files applied with a hash that differs from theirs only by line endings.
fn line_endings_differ(items: &[Item<'_>]) -> Vec<String> {
    items
        .iter()
        .filter_map(|item| match &item.state {
            State::Applied(row) if row.hash != item.migration.hash => {
                Some(item.migration.file_name.clone())
            }
            _ => None,
        })
        .collect()
}

/// Drift that stops a run until the admin decides.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Blocker {
    #[error("{file} was edited after it was applied (hash in database {recorded}, on disk {current}); if the edit is intended, run again with --accept-edited {tag}")]
    Edited {
        file: String,
        tag: String,
        recorded: String,
        current: String,
    },
    #[error("{file} is pending but {later} after it is already applied; apply it anyway with --allow-out-of-order")]
    OutOfOrder { file: String, later: String },
}

impl<'a> Plan<'a> {
    /// Migrations to apply, in journal order.
    pub fn to_apply(&self) -> impl Iterator<Item = &'a Migration> + '_ {
        self.items.iter().filter_map(|item| match item.state {
            State::Pending { .. } | State::OutOfOrder { allowed: true } => Some(item.migration),
            _ => None,
        })
    }

    pub fn pending_count(&self) -> usize {
        self.items
            .iter()
            .filter(|i| matches!(i.state, State::Pending { .. } | State::OutOfOrder { .. }))
            .count()
    }

    pub fn applied_count(&self) -> usize {
        self.items
            .iter()
            .filter(|i| matches!(i.state, State::Applied(_) | State::Edited { .. }))
            .count()
    }

    /// Edited files whose new hash the admin accepted, with the row to update.
    pub fn accepted_edits(&self) -> impl Iterator<Item = (&Migration, &AppliedRow)> + '_ {
        self.items.iter().filter_map(|item| match &item.state {
            State::Edited {
                row,
                accepted: true,
            } => Some((item.migration, row)),
            _ => None,
        })
    }

    /// Pending migrations that Drizzle's own migrator would never apply.
    pub fn drizzle_would_skip(&self) -> impl Iterator<Item = &Migration> + '_ {
        self.items.iter().filter_map(|item| match item.state {
            State::Pending {
                drizzle_would_skip: true,
            } => Some(item.migration),
            _ => None,
        })
    }

    /// Drift that must stop a run, in journal order.
    pub fn blockers(&self) -> Vec<Blocker> {
        // For each position, the first applied migration after it: one backward pass, so that
        // a long run of holes stays linear.
        let mut next_applied: Vec<Option<&str>> = vec![None; self.items.len()];
        let mut next = None;
        for (i, item) in self.items.iter().enumerate().rev() {
            next_applied[i] = next;
            if matches!(item.state, State::Applied(_) | State::Edited { .. }) {
                next = Some(item.migration.file_name.as_str());
            }
        }
        let mut blockers = Vec::new();
        for (i, item) in self.items.iter().enumerate() {
            match &item.state {
                State::Edited {
                    row,
                    accepted: false,
                } => blockers.push(Blocker::Edited {
                    file: item.migration.file_name.clone(),
                    tag: item.migration.tag.clone(),
                    recorded: printable(&row.hash),
                    current: item.migration.hash.clone(),
                }),
                State::OutOfOrder { allowed: false } => {
                    let later = next_applied[i].unwrap_or_default().to_string();
                    blockers.push(Blocker::OutOfOrder {
                        file: item.migration.file_name.clone(),
                        later,
                    });
                }
                _ => {}
            }
        }
        blockers
    }

    pub fn has_drift(&self) -> bool {
        let journal = self.layout == Layout::Journal;
        !self.missing.is_empty()
            || self.items.iter().any(|i| match i.state {
                State::Edited { .. } => true,
                State::OutOfOrder { .. } => journal,
                _ => false,
            })
    }
}

/// Computes the plan. Rows are matched to journal entries by `created_at` = `when` (the key
/// Drizzle itself uses), then, for rows left over, by hash (a row written with another `when`).
///
/// In the folder layout rows are matched by `name` only, as Drizzle 1.0 does
/// (drizzle-orm 1.0.0-rc.5 `migrator.utils.js`): see [`plan_by_name`].
pub fn plan<'a>(set: &'a MigrationSet, rows: &[AppliedRow], options: &PlanOptions) -> Plan<'a> {
    if set.layout == Layout::Folders {
        return plan_by_name(set, rows, options);
    }
    let (matched, used) = match_rows(set, rows);
    let newest_created = rows.iter().filter_map(|r| r.created_at).max();
    let last_applied = matched.iter().rposition(Option::is_some);
    let items: Vec<Item<'_>> = set
        .migrations
        .iter()
        .zip(&matched)
        .enumerate()
        .map(|(pos, (m, row))| {
            let state = match row {
                Some(i) if rows[*i].hash == m.hash || same_but_line_endings(m, &rows[*i].hash) => {
                    State::Applied(rows[*i].clone())
                }
                Some(i) => State::Edited {
                    row: rows[*i].clone(),
                    accepted: options.accept_edited.contains(&m.tag),
                },
                None if last_applied.is_some_and(|last| last > pos) => State::OutOfOrder {
                    allowed: options.allow_out_of_order,
                },
                None => State::Pending {
                    drizzle_would_skip: newest_created.is_some_and(|newest| m.when <= newest),
                },
            };
            Item {
                migration: m,
                state,
            }
        })
        .collect();
    let missing = rows
        .iter()
        .zip(&used)
        .filter(|(_, used)| !**used)
        .map(|(row, _)| row.clone())
        .collect();
    Plan {
        line_endings_differ: line_endings_differ(&items),
        items,
        missing,
        layout: set.layout,
    }
}

/// The folder layout's plan: a migration is applied when a row carries its name (the first
/// such row by id; its hash still tells an edited file), else it is to apply. One older (in
/// name order) than an applied one is `OutOfOrder { allowed: true }`: Drizzle 1.0 applies it,
/// and so do we, with a note. Rows whose name is NULL or names no folder are `missing`.
pub fn plan_by_name<'a>(
    set: &'a MigrationSet,
    rows: &[AppliedRow],
    options: &PlanOptions,
) -> Plan<'a> {
    use std::collections::HashMap;
    let mut by_name: HashMap<&str, &AppliedRow> = HashMap::new();
    for row in rows.iter().rev() {
        if let Some(name) = &row.name {
            by_name.insert(name.as_str(), row);
        }
    }
    let last_applied = set
        .migrations
        .iter()
        .rposition(|m| by_name.contains_key(m.tag.as_str()));
    let items: Vec<Item<'_>> = set
        .migrations
        .iter()
        .enumerate()
        .map(|(pos, m)| {
            let state = match by_name.get(m.tag.as_str()) {
                Some(row) if row.hash == m.hash || same_but_line_endings(m, &row.hash) => {
                    State::Applied((*row).clone())
                }
                Some(row) => State::Edited {
                    row: (*row).clone(),
                    accepted: options.accept_edited.contains(&m.tag),
                },
                None if last_applied.is_some_and(|last| last > pos) => {
                    State::OutOfOrder { allowed: true }
                }
                None => State::Pending {
                    drizzle_would_skip: false,
                },
            };
            Item {
                migration: m,
                state,
            }
        })
        .collect();
    let names: std::collections::HashSet<&str> =
        set.migrations.iter().map(|m| m.tag.as_str()).collect();
    let missing = rows
        .iter()
        .filter(|r| !r.name.as_deref().is_some_and(|n| names.contains(n)))
        .cloned()
        .collect();
    Plan {
        line_endings_differ: line_endings_differ(&items),
        items,
        missing,
        layout: set.layout,
    }
}

/// For each migration, the index of its row in `rows`; and for each row, whether a migration
/// took it. Each row goes to one migration at most, the lowest id first.
fn match_rows(set: &MigrationSet, rows: &[AppliedRow]) -> (Vec<Option<usize>>, Vec<bool>) {
    use std::collections::HashMap;

    let mut by_when: HashMap<i64, Vec<usize>> = HashMap::new();
    let mut by_hash: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, row) in rows.iter().enumerate().rev() {
        if let Some(when) = row.created_at {
            by_when.entry(when).or_default().push(i);
        }
        by_hash.entry(row.hash.as_str()).or_default().push(i);
    }
    let mut used = vec![false; rows.len()];
    // Candidates are stacked newest-id-last reversed, so `pop` yields the lowest id first.
    fn take(candidates: Option<&mut Vec<usize>>, used: &mut [bool]) -> Option<usize> {
        let candidates = candidates?;
        while let Some(i) = candidates.pop() {
            if !used[i] {
                used[i] = true;
                return Some(i);
            }
        }
        None
    }

    let mut matched: Vec<Option<usize>> = Vec::with_capacity(set.migrations.len());
    for m in &set.migrations {
        matched.push(take(by_when.get_mut(&m.when), &mut used));
    }
    for (m, slot) in set.migrations.iter().zip(matched.iter_mut()) {
        for hash in std::iter::once(&m.hash).chain(&m.line_ending_hashes) {
            if slot.is_none() {
                *slot = take(by_hash.get_mut(hash.as_str()), &mut used);
            }
        }
    }
    (matched, used)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::{drizzle_hash, split_statements};
    use std::path::PathBuf;

    fn set(entries: &[(&str, i64)]) -> MigrationSet {
        MigrationSet {
            dir: PathBuf::from("/x"),
            layout: Default::default(),
            warnings: Vec::new(),
            migrations: entries
                .iter()
                .enumerate()
                .map(|(i, (tag, when))| {
                    let sql = format!("SELECT {i};");
                    Migration {
                        idx: i as u64,
                        tag: tag.to_string(),
                        when: *when,
                        file_name: format!("{tag}.sql"),
                        hash: drizzle_hash(&sql),
                        line_ending_hashes: Vec::new(),
                        bom: false,
                        statements: split_statements(&sql),
                        no_transaction: false,
                        stamp: None,
                    }
                })
                .collect(),
        }
    }

    fn row(set: &MigrationSet, tag: &str, id: i64) -> AppliedRow {
        let m = set.get(tag).unwrap();
        AppliedRow {
            id,
            hash: m.hash.clone(),
            created_at: Some(m.when),
            applied_at: None,
            name: None,
        }
    }

    fn tags<'a>(it: impl Iterator<Item = &'a Migration>) -> Vec<&'a str> {
        it.map(|m| m.tag.as_str()).collect()
    }

    #[test]
    fn fresh_database_applies_everything_in_journal_order() {
        let s = set(&[("a", 1), ("b", 2), ("c", 3)]);
        let p = plan(&s, &[], &PlanOptions::default());
        assert_eq!(tags(p.to_apply()), ["a", "b", "c"]);
        assert!(p.blockers().is_empty());
        assert!(!p.has_drift());
    }

    #[test]
    fn up_to_date() {
        let s = set(&[("a", 1), ("b", 2)]);
        let rows = [row(&s, "a", 1), row(&s, "b", 2)];
        let p = plan(&s, &rows, &PlanOptions::default());
        assert_eq!(p.to_apply().count(), 0);
        assert_eq!(p.applied_count(), 2);
    }

    #[test]
    fn edited_file_blocks_until_accepted() {
        let s = set(&[("a", 1), ("b", 2)]);
        let mut edited = row(&s, "a", 1);
        edited.hash = "0".repeat(64);
        let p = plan(&s, &[edited.clone()], &PlanOptions::default());
        assert!(matches!(
            p.blockers().as_slice(),
            [Blocker::Edited { file, .. }] if file == "a.sql"
        ));
        let accept = PlanOptions {
            accept_edited: vec!["a".into()],
            ..Default::default()
        };
        let p = plan(&s, &[edited], &accept);
        assert!(p.blockers().is_empty());
        assert_eq!(p.accepted_edits().count(), 1);
        assert_eq!(tags(p.to_apply()), ["b"]);
    }

    #[test]
    fn hole_is_out_of_order_and_blocks_unless_allowed() {
        let s = set(&[("a", 1), ("b", 2), ("c", 3)]);
        let rows = [row(&s, "a", 1), row(&s, "c", 2)];
        let p = plan(&s, &rows, &PlanOptions::default());
        assert_eq!(
            p.blockers(),
            [Blocker::OutOfOrder {
                file: "b.sql".into(),
                later: "c.sql".into()
            }]
        );
        assert_eq!(p.to_apply().count(), 0);
        let allow = PlanOptions {
            allow_out_of_order: true,
            ..Default::default()
        };
        let p = plan(&s, &rows, &allow);
        assert!(p.blockers().is_empty());
        assert_eq!(tags(p.to_apply()), ["b"]);
        assert!(p.has_drift());
    }

    #[test]
    fn older_entry_at_the_end_is_pending_not_a_hole() {
        // Vamsa's real journal: the second entry's `when` is older than the first one's.
        let s = set(&[
            ("0000_initial", 1769236042522),
            ("0001_grandfather", 1707528000000),
        ]);
        let rows = [row(&s, "0000_initial", 1)];
        let p = plan(&s, &rows, &PlanOptions::default());
        assert!(p.blockers().is_empty());
        assert_eq!(tags(p.to_apply()), ["0001_grandfather"]);
        assert_eq!(tags(p.drizzle_would_skip()), ["0001_grandfather"]);
    }

    #[test]
    fn rows_without_a_file_are_missing_not_fatal() {
        let s = set(&[("a", 1)]);
        let rows = [
            row(&s, "a", 1),
            AppliedRow {
                id: 2,
                hash: "f".repeat(64),
                created_at: Some(99),
                applied_at: None,
                name: None,
            },
        ];
        let p = plan(&s, &rows, &PlanOptions::default());
        assert_eq!(p.missing.len(), 1);
        assert!(p.blockers().is_empty());
        assert!(p.has_drift());
        assert_eq!(p.to_apply().count(), 0);
    }

    #[test]
    fn printable_escapes_control_characters_only() {
        assert_eq!(
            printable("\u{1b}[2Jé\u{7}\n\u{9b}x"),
            "\\u{1b}[2Jé\\u{7}\\n\\u{9b}x"
        );
        let hash = drizzle_hash("SELECT 1;");
        assert_eq!(printable(&hash), hash);
    }

    #[test]
    fn row_with_other_when_but_same_hash_counts_as_applied() {
        let s = set(&[("a", 1), ("b", 2)]);
        let mut r = row(&s, "a", 1);
        r.created_at = None;
        let p = plan(&s, &[r], &PlanOptions::default());
        assert_eq!(tags(p.to_apply()), ["b"]);
        assert!(p.missing.is_empty());
    }
}
