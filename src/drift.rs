//! Live-schema drift: the difference between the schema description recorded after the last
//! successful run (`db::schema`) and the live one. Pure.

use std::fmt;

use crate::db::schema::Description;

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
        let with = |d: &str| {
            if d.is_empty() {
                String::new()
            } else {
                format!(" {d}")
            }
        };
        match self {
            Change::Added { object, definition } => write!(f, "+ {object}{}", with(definition)),
            Change::Removed { object, definition } => write!(f, "- {object}{}", with(definition)),
            Change::Changed { object, was, now } => write!(f, "~ {object}: {was} -> {now}"),
        }
    }
}

/// What changed from `recorded` to `live`, in object order (both are sorted maps).
pub fn diff(recorded: &Description, live: &Description) -> Vec<Change> {
    let mut changes = Vec::new();
    for (object, was) in recorded {
        match live.get(object) {
            None => changes.push(Change::Removed {
                object: object.clone(),
                definition: was.clone(),
            }),
            Some(now) if now != was => changes.push(Change::Changed {
                object: object.clone(),
                was: was.clone(),
                now: now.clone(),
            }),
            Some(_) => {}
        }
    }
    for (object, definition) in live {
        if !recorded.contains_key(object) {
            changes.push(Change::Added {
                object: object.clone(),
                definition: definition.clone(),
            });
        }
    }
    changes.sort_by(|a, b| key(a).cmp(key(b)));
    changes
}

fn key(c: &Change) -> &str {
    match c {
        Change::Added { object, .. }
        | Change::Removed { object, .. }
        | Change::Changed { object, .. } => object,
    }
}

/// The schema was changed outside migrations: the changes, and when the description they
/// are against was recorded (`YYYY-MM-DD HH:MM:SS` UTC).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaDrift {
    pub changes: Vec<Change>,
    pub recorded_at: String,
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
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn additions_removals_and_changes_are_told_apart_in_object_order() {
        let recorded: Description = [
            ("column public.persons.name", "text NOT NULL"),
            ("index public.persons_name_idx", "CREATE INDEX ..."),
            ("table public.persons", ""),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let mut live = recorded.clone();
        live.remove("index public.persons_name_idx");
        live.insert("column public.persons.name".into(), "text".into());
        live.insert("column public.persons.nickname".into(), "text".into());
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
