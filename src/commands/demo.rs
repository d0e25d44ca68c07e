//! `vamsa-migrate demo`: the real code path against a throwaway PostgreSQL, with no set-up.

use std::collections::HashMap;
use std::path::PathBuf;

use crate::config::Settings;
use crate::engine::RunOptions;
use crate::exit::Outcome;
use crate::report::Format;
use vamsa_testkit::TempCluster;

/// The packaged copy of the bundled migrations (the `.deb` installs it; see `packaging/build-deb`).
const PACKAGED_MIGRATIONS: &str = "/usr/share/vamsa-migrate/demo-migrations";

/// The bundled migrations: `./migrations` when run from a checkout; then, for an installed
/// binary (under `/usr`), the packaged copy before the checkout the build was made from (which
/// may still exist on the build machine), and the other way round for a binary in a checkout.
fn bundled_migrations() -> Option<PathBuf> {
    let packaged = PathBuf::from(PACKAGED_MIGRATIONS);
    let build_checkout = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("migrations");
    let installed = std::env::current_exe().is_ok_and(|exe| exe.starts_with("/usr"));
    let (first, second) = if installed {
        (packaged, build_checkout)
    } else {
        (build_checkout, packaged)
    };
    [PathBuf::from("migrations"), first, second]
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
    crate::report::outln!("Starting a throwaway PostgreSQL cluster in a temporary directory...");
    let start = || TempCluster::start().and_then(|c| c.create_database("vamsa").map(|_| c));
    let started = match start() {
        Err(vamsa_testkit::ClusterError::NoServerBinaries) => match install_postgresql() {
            Ok(()) => start(),
            Err(e) => {
                eprintln!("Error: {e}");
                return Outcome::OtherFailure;
            }
        },
        other => other,
    };
    let cluster = match started {
        Ok(c) => c,
        Err(e) => {
            eprintln!("Error: cannot start a throwaway PostgreSQL: {e}");
            return Outcome::OtherFailure;
        }
    };
    crate::report::outln!(
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
        crate::report::outln!("$ vamsa-migrate {title}");
        let options = RunOptions {
            dry_run,
            ..RunOptions::default()
        };
        let outcome = super::migrate::run(&settings, &env, &options, Format::Human, false).await;
        crate::report::outln!();
        if outcome != Outcome::Success {
            return outcome;
        }
    }
    crate::report::outln!("$ vamsa-migrate status");
    let outcome = super::status::run(&settings, &env, Format::Human).await;
    crate::report::outln!("\nStopping and removing the throwaway cluster.");
    drop(cluster);
    outcome
}

/// The README's first command works on a fresh Debian machine: without PostgreSQL's server
/// binaries, install Debian's `postgresql` package with apt-get (through `sudo` when not
/// root), saying so first. Debian's package starts a system cluster on port 5432, which the
/// demo never uses: it is stopped again.
fn install_postgresql() -> Result<(), String> {
    use std::process::Command;
    let root = nix::unistd::geteuid().is_root();
    let sudo = if root { "" } else { "sudo " };
    crate::report::outln!(
        "PostgreSQL's server is not installed: installing Debian's postgresql package ({sudo}apt-get install postgresql)..."
    );
    let run = |args: &[&str]| -> Result<(), String> {
        let mut cmd = if root {
            Command::new(args[0])
        } else {
            // sudo resets the environment: the variable goes as an argument.
            let mut c = Command::new("sudo");
            c.arg("DEBIAN_FRONTEND=noninteractive").arg(args[0]);
            c
        };
        cmd.args(&args[1..])
            .env("DEBIAN_FRONTEND", "noninteractive");
        match cmd.status() {
            Ok(s) if s.success() => Ok(()),
            Ok(s) => Err(format!("`{sudo}{}` failed ({s}): install PostgreSQL's server yourself (apt install postgresql), then run the demo again", args.join(" "))),
            Err(e) => Err(format!("cannot run `{sudo}{}`: {e}; install PostgreSQL's server yourself (apt install postgresql)", args[0])),
        }
    };
    run(&["apt-get", "update", "-q"])?;
    run(&[
        "apt-get",
        "install",
        "-y",
        "-q",
        "--no-install-recommends",
        "postgresql",
    ])?;
    let _ = run(&["systemctl", "stop", "postgresql"]);
    Ok(())
}
