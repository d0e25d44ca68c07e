//! `new NAME`: the next migration, in the layout the folder uses (see `newfile::create`).

use crate::config::Settings;
use crate::exit::Outcome;
use crate::newfile::NewError;
use crate::protocol::ErrorKind;

pub(crate) fn run(settings: &Settings, name: &str) -> Outcome {
    match crate::newfile::create(&settings.migrations_dir, name) {
        Ok(path) => {
            crate::report::outln!("Created {}", path.display());
            Outcome::Success
        }
        Err(e) => {
            eprintln!("Error: {e}");
            Outcome::Failed(kind(&e))
        }
    }
}

fn kind(e: &NewError) -> ErrorKind {
    match e {
        NewError::Io { .. }
        | NewError::Journal { .. }
        | NewError::Source(_)
        | NewError::NoLaterName { .. } => ErrorKind::Folder,
        NewError::BadName { .. } => ErrorKind::Usage,
    }
}
