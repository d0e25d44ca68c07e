//! `migrate` and `migrate --dry-run`.

use std::collections::HashMap;
use std::io;

use crate::config::Settings;
use crate::engine::{Engine, RunOptions};
use crate::exit::Outcome;
use crate::report::{Format, HumanOptions, Reporter};
use crate::source::MigrationSet;

use super::show_error;

/// Reads the folder, connects, and runs the engine, printing its events as they come.
pub(crate) async fn run(
    settings: &Settings,
    env: &HashMap<String, String>,
    options: &RunOptions,
    format: Format,
    quiet: bool,
) -> Outcome {
    let pg = match settings.pg_config(env) {
        Ok(pg) => pg,
        Err(e) => return show_error(&e.into(), format),
    };
    let engine = Engine::new(settings, &pg);
    // Read the folder on another core while the server starts a backend for us. A bad folder
    // is still reported first, and connecting changes nothing.
    let dir = settings.migrations_dir.clone();
    let loading = tokio::task::spawn_blocking(move || MigrationSet::load(&dir));
    let (set, client) = tokio::join!(loading, engine.connect());
    let set = match set {
        Ok(Ok(set)) => set,
        Ok(Err(e)) => return show_error(&e.into(), format),
        Err(e) => {
            eprintln!("Error: reading the migrations folder: {e}");
            return Outcome::OtherFailure;
        }
    };
    let client = match client {
        Ok(c) => c,
        Err(e) => return show_error(&e.into(), format),
    };
    let mut reporter = Reporter::new(
        io::BufWriter::new(io::stdout()),
        format,
        HumanOptions {
            quiet,
            ..HumanOptions::default()
        },
    );
    // The engine reported a failure itself, in its `done` event.
    match engine
        .run(&client, &set, options, &mut |e| reporter.event(&e))
        .await
    {
        Ok(_) => Outcome::Success,
        Err(e) => Outcome::Failed(e.kind()),
    }
}
