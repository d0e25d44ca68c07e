//! `backup` (a dump now) and `backups` (the dumps vamsa-migrate made).

use std::collections::HashMap;

use crate::backup::{human_bytes, Listed};
use crate::config::Settings;
use crate::engine::EngineError;
use crate::exit::Outcome;
use crate::protocol::ErrorKind;
use crate::report::Format;

use super::show_error;

/// Takes a verified dump labelled `manual`.
pub(crate) async fn take(settings: &Settings, env: &HashMap<String, String>) -> Outcome {
    let result = async {
        let pg = settings.pg_config(env)?;
        let client = crate::db::connect(&pg).await?;
        crate::backup::take(&settings.backup, &pg, &client, "manual")
            .await
            .map_err(EngineError::ManualBackup)
    }
    .await;
    match result {
        Ok(b) => {
            crate::report::outln!("Backup: {} ({})", b.path.display(), human_bytes(b.bytes));
            Outcome::Success
        }
        Err(e) => show_error(&e, Format::Human),
    }
}

/// One line per dump, newest first: time, size, what it preceded, path.
pub(crate) fn list(settings: &Settings) -> Outcome {
    let dir = &settings.backup.dir;
    if !dir.exists() {
        // The packaged default is created at the first backup; any other folder was named by
        // the user, and a missing one is a typo or the wrong machine.
        if *dir == Settings::default().backup.dir {
            println!(
                "No backups yet: {} does not exist yet (the first backup creates it).",
                dir.display()
            );
            return Outcome::Success;
        }
        let cwd = std::env::current_dir().unwrap_or_default();
        eprintln!(
            "Error: backup_dir {} does not exist (the working directory is {}).",
            dir.display(),
            cwd.display()
        );
        return Outcome::Failed(ErrorKind::Config);
    }
    match crate::backup::list(dir) {
        Ok(list) if list.is_empty() => {
            crate::report::outln!("No backups in {}.", settings.backup.dir.display());
            Outcome::Success
        }
        Ok(list) => {
            for b in list.iter().rev() {
                crate::report::outln!(
                    "{}  {:>9}  {:<32}  {}",
                    when(b),
                    human_bytes(b.bytes),
                    what(b),
                    b.path.display()
                );
            }
            Outcome::Success
        }
        Err(e) => {
            eprintln!("Error: backup_dir {}: {e}", settings.backup.dir.display());
            Outcome::Failed(ErrorKind::Backup)
        }
    }
}

/// `2026-11-29 22:28:29 UTC` from the name's `20261129T222829.074Z`.
fn when(b: &Listed) -> String {
    let s = &b.stamp;
    format!(
        "{}-{}-{} {}:{}:{} UTC",
        &s[0..4],
        &s[4..6],
        &s[6..8],
        &s[9..11],
        &s[11..13],
        &s[13..15]
    )
}

fn what(b: &Listed) -> String {
    b.label
        .strip_prefix("before-")
        .map_or("taken by hand".to_string(), |tag| format!("before {tag}"))
}
