//! Live-schema drift: the difference between the schema description recorded after the last
//! successful run (`db::schema`) and the live one, and which of its changes migrations applied
//! by another tool since (Drizzle's own migrator) account for. Pure.
//!
//! The attribution rule: tracking rows whose identity was not there when the schema was
//! recorded are migrations another tool applied. A change is theirs when one of the changed
//! object's names (its relation, its own name, a sequence's owning table, a type, function,
//! extension or schema name; see `db::schema::DESCRIBE`) is an identifier of their SQL, as
//! PostgreSQL stores it (`sqlscan::identifiers`). Every other change is a hand change. The
//! limit: a hand change to an object that such a migration also names is taken for the
//! migration's.

use std::collections::HashSet;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::db::schema::Description;
use crate::plan::{describe_row, AppliedRow, PlanOptions, State};
use crate::source::MigrationSet;

/// One object added, removed or changed since the description was recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// `+ column public.persons.nickname text`
    Added { object: String, definition: String },
    /// `- index public.persons_name_idx`
    Removed { object: String, definition: String },
    /// `~ column public.persons.name: text NOT NULL -> text`
    Changed {
        object: String,
        was: String,
        now: String,
    },
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Names and definitions come from the catalogs, which anyone who may create an
        // object writes to: control characters escaped, so they cannot drive the terminal.
        let p = crate::plan::printable;
        let with = |d: &str| {
            if d.is_empty() {
                String::new()
            } else {
                format!(" {}", p(d))
            }
        };
        match self {
            Change::Added { object, definition } => {
                write!(f, "+ {}{}", p(object), with(definition))
            }
            Change::Removed { object, definition } => {
                write!(f, "- {}{}", p(object), with(definition))
            }
            Change::Changed { object, was, now } => {
                write!(f, "~ {}: {} -> {}", p(object), p(was), p(now))
            }
        }
    }
}

/// What changed from `recorded` to `live`, in object order: one merge walk over the two
/// sorted maps (linear in their sizes).
pub(crate) fn diff(recorded: &Description, live: &Description) -> Vec<Change> {
    use std::cmp::Ordering;
    let mut changes = Vec::new();
    let (mut was, mut now) = (recorded.iter().peekable(), live.iter().peekable());
    loop {
        let order = match (was.peek(), now.peek()) {
            (None, None) => break,
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some((a, _)), Some((b, _))) => a.cmp(b),
        };
        match order {
            Ordering::Less => {
                if let Some((object, o)) = was.next() {
                    changes.push(Change::Removed {
                        object: object.clone(),
                        definition: o.definition.clone(),
                    });
                }
            }
            Ordering::Greater => {
                if let Some((object, o)) = now.next() {
                    changes.push(Change::Added {
                        object: object.clone(),
                        definition: o.definition.clone(),
                    });
                }
            }
            Ordering::Equal => {
                if let (Some((object, a)), Some((_, b))) = (was.next(), now.next()) {
                    if a.definition != b.definition {
                        changes.push(Change::Changed {
                            object: object.clone(),
                            was: a.definition.clone(),
                            now: b.definition.clone(),
                        });
                    }
                }
            }
        }
    }
    changes
}

fn key(c: &Change) -> &str {
    match c {
        Change::Added { object, .. }
        | Change::Removed { object, .. }
        | Change::Changed { object, .. } => object,
    }
}

/// What identifies a tracking row from one run to the next: the `name` when both rows have one
/// (Drizzle 1.0's table, drizzle-orm 1.0.0-rc.5), else `hash` + `created_at` (what drizzle-orm
/// 0.45 writes; a 0.x table upgraded to 1.0 keeps them, so its rows stay the same rows).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct RowIdentity {
    pub hash: String,
    pub created_at: Option<i64>,
    pub name: Option<String>,
}

impl RowIdentity {
    pub(crate) fn of(row: &AppliedRow) -> RowIdentity {
        RowIdentity {
            hash: row.hash.clone(),
            created_at: row.created_at,
            name: row.name.clone(),
        }
    }
}

/// The tracking rows of `now` that none of `recorded` identifies (the rule of
/// [`RowIdentity`]): written since the record, by a tool other than vamsa-migrate (which
/// records again after each of its runs). Hashed: linear in the rows.
pub(crate) fn rows_since(recorded: &[RowIdentity], now: &[AppliedRow]) -> Vec<AppliedRow> {
    let names: HashSet<&str> = recorded.iter().filter_map(|r| r.name.as_deref()).collect();
    let pair = |hash: &str, created_at: Option<i64>| (hash.to_string(), created_at);
    let all: HashSet<_> = recorded
        .iter()
        .map(|r| pair(&r.hash, r.created_at))
        .collect();
    let unnamed: HashSet<_> = recorded
        .iter()
        .filter(|r| r.name.is_none())
        .map(|r| pair(&r.hash, r.created_at))
        .collect();
    now.iter()
        .filter(|row| {
            let key = pair(&row.hash, row.created_at);
            let known = match row.name.as_deref() {
                Some(name) => names.contains(name) || unnamed.contains(&key),
                None => all.contains(&key),
            };
            !known
        })
        .cloned()
        .collect()
}

/// The migrations another tool applied since the record, as the folder has them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct OtherTool {
    /// Their tags, in folder order.
    pub migrations: Vec<String>,
    /// Every identifier their SQL holds ([`crate::sqlscan::identifiers`]).
    pub named: HashSet<String>,
    /// The new rows whose changes cannot be told from hand changes, each with why.
    pub unattributable: Vec<String>,
}

/// Finds the files of the new `rows` in `set` as planning matches rows (journal: `created_at`
/// then hash; folders: name) and collects the identifiers of their SQL. A row with no file, or
/// whose file changed since it was applied, is unattributable.
pub(crate) fn other_tool(set: &MigrationSet, rows: &[AppliedRow]) -> OtherTool {
    let plan = crate::plan::plan(set, rows, &PlanOptions::default());
    let mut found = OtherTool::default();
    for item in &plan.items {
        match &item.state {
            State::Applied(_) => {
                found.migrations.push(item.migration.tag.clone());
                for statement in &item.migration.statements {
                    found
                        .named
                        .extend(crate::sqlscan::identifiers(statement.sql));
                }
            }
            State::Edited { row, .. } => found.unattributable.push(format!(
                "{} was written by another tool, and {} changed since",
                describe_row(row),
                item.migration.file_name
            )),
            _ => {}
        }
    }
    for row in &plan.missing {
        found.unattributable.push(format!(
            "{} was written by another tool, and its migration is not in the folder",
            describe_row(row)
        ));
    }
    found
}

/// `changes` split by the rule of this module: those no new migration names (hand changes),
/// and how many others it does.
pub(crate) fn attribute(
    changes: Vec<Change>,
    recorded: &Description,
    live: &Description,
    named: &HashSet<String>,
) -> (Vec<Change>, usize) {
    let before = changes.len();
    let by_hand: Vec<Change> = changes
        .into_iter()
        .filter(|c| {
            let object = key(c);
            let names = [recorded.get(object), live.get(object)];
            !names
                .into_iter()
                .flatten()
                .flat_map(|o| &o.names)
                .any(|n| named.contains(n))
        })
        .collect();
    let theirs = before - by_hand.len();
    (by_hand, theirs)
}

/// The schema was changed outside migrations: the changes, and when the description they
/// are against was recorded (`YYYY-MM-DD HH:MM:SS` UTC).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaDrift {
    pub changes: Vec<Change>,
    pub recorded_at: String,
    /// About migrations another tool applied since the record (empty when none did): how
    /// many, which, the changes they account for, and rows whose changes cannot be
    /// attributed (`row 3 (...) was written by another tool, and its migration is not in the
    /// folder`).
    pub notes: Vec<String>,
}

impl SchemaDrift {
    /// The notes for `other` (of `rows` new tracking rows), whose SQL accounts for `theirs`
    /// of the changes.
    pub(crate) fn notes(other: &OtherTool, rows: usize, theirs: usize) -> Vec<String> {
        let mut first =
            format!("{rows} migration(s) were applied by another tool since the record");
        if !other.migrations.is_empty() {
            first.push_str(&format!(
                " ({}); the changes above are not named in their SQL",
                other.migrations.join(", ")
            ));
        }
        if theirs > 0 {
            first.push_str(&format!(
                "; {theirs} other change(s) are, and are not drift"
            ));
        }
        let mut notes = vec![first];
        notes.extend(
            other
                .unattributable
                .iter()
                .map(|u| format!("{u}: the changes it made cannot be told from hand changes")),
        );
        notes
    }
}

impl fmt::Display for SchemaDrift {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the schema was changed outside migrations since the last run (recorded {} UTC):",
            self.recorded_at
        )?;
        for c in &self.changes {
            write!(f, "\n  {c}")?;
        }
        for n in &self.notes {
            write!(f, "\nnote: {n}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_in_names_are_escaped() {
        let c = Change::Added {
            object: "table public.\"ok\u{1b}[1A\u{1b}[2K\"".into(),
            definition: "\u{7}".into(),
        };
        assert_eq!(
            c.to_string(),
            "+ table public.\"ok\\u{1b}[1A\\u{1b}[2K\" \\u{7}"
        );
    }
    use crate::db::schema::Object;

    fn object(definition: &str, names: &[&str]) -> Object {
        Object {
            definition: definition.into(),
            names: names.iter().map(|n| n.to_string()).collect(),
        }
    }

    fn row(hash: &str, created_at: i64, name: Option<&str>) -> AppliedRow {
        AppliedRow {
            id: created_at,
            hash: hash.into(),
            created_at: Some(created_at),
            applied_at: None,
            name: name.map(Into::into),
        }
    }

    #[test]
    fn rows_since_are_those_no_recorded_identity_names() {
        let recorded =
            [row("a", 1, None), row("b", 2, Some("0002_b"))].map(|r| RowIdentity::of(&r));
        let now = [
            // The 0.x row, upgraded to 1.0 (named) since: the same row.
            row("a", 1, Some("0001_a")),
            // The same name with another hash: the same row (1.0 identifies by name).
            row("b2", 2, Some("0002_b")),
            row("c", 3, None),
            row("a", 4, None),
        ];
        let since: Vec<i64> = rows_since(&recorded, &now).iter().map(|r| r.id).collect();
        assert_eq!(since, [3, 4]);
    }

    #[test]
    fn a_change_is_attributed_when_one_of_its_names_is_named() {
        let recorded: Description = [("table public.persons", object("", &["persons"]))]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        let mut live = recorded.clone();
        live.insert(
            "column public.persons.nickname".into(),
            object("text", &["persons"]),
        );
        live.insert("table public.tags".into(), object("", &["tags"]));
        live.insert(
            "sequence public.tags_id_seq".into(),
            object("integer increment 1", &["tags_id_seq", "tags"]),
        );
        let named = crate::sqlscan::identifiers("CREATE TABLE \"tags\" (\"id\" serial)");
        let (by_hand, theirs) = attribute(diff(&recorded, &live), &recorded, &live, &named);
        let by_hand: Vec<String> = by_hand.iter().map(|c| c.to_string()).collect();
        assert_eq!(by_hand, ["+ column public.persons.nickname text"]);
        assert_eq!(theirs, 2);
    }

    #[test]
    fn additions_removals_and_changes_are_told_apart_in_object_order() {
        let recorded: Description = [
            ("column public.persons.name", "text NOT NULL"),
            ("index public.persons_name_idx", "CREATE INDEX ..."),
            ("table public.persons", ""),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), object(v, &["persons"])))
        .collect();
        let mut live = recorded.clone();
        live.remove("index public.persons_name_idx");
        live.insert(
            "column public.persons.name".into(),
            object("text", &["persons"]),
        );
        live.insert(
            "column public.persons.nickname".into(),
            object("text", &["persons"]),
        );
        let lines: Vec<String> = diff(&recorded, &live)
            .iter()
            .map(|c| c.to_string())
            .collect();
        assert_eq!(
            lines,
            [
                "~ column public.persons.name: text NOT NULL -> text",
                "+ column public.persons.nickname text",
                "- index public.persons_name_idx CREATE INDEX ...",
            ]
        );
        assert!(diff(&live, &live).is_empty());
    }
}
