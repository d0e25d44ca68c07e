//! `vamsa-migrate demo`: the real code path against a throwaway PostgreSQL, with no set-up.

use std::collections::HashMap;
use std::path::PathBuf;

use crate::config::Settings;
use crate::engine::RunOptions;
use crate::exit::Outcome;
use crate::report::Format;
use vamsa_testkit::TempCluster;

/// The bundled migrations: `./migrations` when run from a checkout, else the copy the build
/// was made from, else the packaged copy.
fn bundled_migrations() -> Option<PathBuf> {
    [
        PathBuf::from("migrations"),
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("migrations"),
        PathBuf::from("/usr/share/vamsa-migrate/demo-migrations"),
    ]
    .into_iter()
    .find(|p| p.join("meta/_journal.json").exists())
}

/// Runs the set-up demo; the outcome is the first step that failed, else that of `status`.
pub(crate) async fn run() -> Outcome {
    let Some(dir) = bundled_migrations() else {
        eprintln!(
            "Error: the bundled migrations folder was not found (run from the source checkout)"
        );
        return Outcome::OtherFailure;
    };
    println!("Starting a throwaway PostgreSQL cluster in a temporary directory...");
    let cluster = match TempCluster::start().and_then(|c| c.create_database("vamsa").map(|_| c)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("Error: cannot start a throwaway PostgreSQL: {e}");
            return Outcome::OtherFailure;
        }
    };
    println!(
        "PostgreSQL is up on 127.0.0.1:{} (binaries: {}); migrations: {}\n",
        cluster.port(),
        cluster.bin_dir().display(),
        dir.display()
    );
    let settings = Settings {
        database_url: Some(cluster.url("vamsa")),
        migrations_dir: dir,
        backup: crate::backup::BackupSettings {
            dir: cluster.dir().join("backups"),
            ..Default::default()
        },
        ..Settings::default()
    };
    // Only the demo's own values: the caller's DATABASE_URL or credentials must not leak in.
    let env = HashMap::new();
    let steps: [(&str, bool); 3] = [
        ("migrate --dry-run", true),
        ("migrate", false),
        ("migrate --dry-run", true),
    ];
    for (title, dry_run) in steps {
        println!("$ vamsa-migrate {title}");
        let options = RunOptions {
            dry_run,
            ..RunOptions::default()
        };
        let outcome = super::migrate::run(&settings, &env, &options, Format::Human, false).await;
        println!();
        if outcome != Outcome::Success {
            return outcome;
        }
    }
    println!("$ vamsa-migrate status");
    let outcome = super::status::run(&settings, &env, Format::Human).await;
    println!("\nStopping and removing the throwaway cluster.");
    drop(cluster);
    outcome
}
