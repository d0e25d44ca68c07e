//! `convert [--write]`: a journal-layout folder (drizzle-kit 0.x) to Drizzle 1.0's folder
//! layout, keeping every entry and the journal's order. Shows the plan; changes files only with
//! `--write`. Never touches the database.

use crate::config::Settings;
use crate::convert::{self, ConvertError, Renamed};
use crate::engine::EngineError;
use crate::exit::Outcome;
use crate::protocol::ErrorKind;
use crate::report::Format;
use crate::source::MigrationSet;

use super::show_error;

pub(crate) fn run(settings: &Settings, write: bool) -> Outcome {
    let set = match MigrationSet::load(&settings.migrations_dir) {
        Ok(set) => set,
        Err(e) => return show_error(&e.into(), Format::Human),
    };
    let renamed = match convert::plan(&set) {
        Ok(renamed) => renamed,
        Err(e) => return failed(e),
    };
    crate::report::outln!(
        "Converting {} to Drizzle 1.0's folder layout{}:",
        set.dir.display(),
        if write { "" } else { " (dry run)" }
    );
    show_plan(&renamed);
    if !write {
        crate::report::outln!(
            "\nNothing was changed. Run 'vamsa-migrate convert --write' to convert."
        );
        return Outcome::Success;
    }
    match convert::write(&set, &renamed) {
        Ok(()) => {
            crate::report::outln!("\nConverted {} migrations.", renamed.len());
            Outcome::Success
        }
        Err(e) => failed(e),
    }
}

fn show_plan(renamed: &[Renamed]) {
    let mut previous: Option<&str> = None;
    for r in renamed {
        let note = match (r.moved, previous) {
            (true, Some(p)) => {
                format!(" (its \"when\" goes back: named after {p} to keep the journal's order)")
            }
            _ => String::new(),
        };
        crate::report::outln!("  {} -> {}/migration.sql{note}", r.file_name, r.folder);
        previous = Some(&r.folder);
    }
    crate::report::outln!("  meta/_journal.json: removed (snapshots move into their folders)");
}

fn failed(e: ConvertError) -> Outcome {
    let e = EngineError::Convert(e);
    show_error(&e, Format::Human);
    Outcome::Failed(ErrorKind::Folder)
}
