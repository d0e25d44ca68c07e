//! `vamsa-migrate manpage DIR` (hidden; run by debian/rules): the manual pages, section 1,
//! rendered by `clap_mangen` from the same clap definitions as `--help`: `vamsa-migrate.1`
//! (every command, ENVIRONMENT, FILES) and one `vamsa-migrate-<command>.1` per command (its
//! options). Every page has EXIT STATUS (from `exit::documented`), EXAMPLES and SEE ALSO.
//!
//! A subcommand of the shipped binary rather than a separate generator: the pages describe
//! exactly the binary that is installed, and the test renders them from the binary under test.

use std::fs;
use std::io::{self, Write};
use std::path::Path;

use clap::CommandFactory;
use clap_mangen::Man;
use roff::{bold, italic, roman, Roff};

use crate::cli::Cli;
use crate::exit::{self, Outcome, Program};

/// Writes the pages into `dir` (created when missing).
pub(crate) fn write(dir: &Path) -> Outcome {
    match write_all(dir) {
        Ok(()) => Outcome::Success,
        Err(e) => {
            eprintln!(
                "Error: cannot write the manual pages into {}: {e}",
                dir.display()
            );
            Outcome::OtherFailure
        }
    }
}

fn write_all(dir: &Path) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    let mut top = Cli::command().disable_help_subcommand(true);
    top.build();
    for sub in top.get_subcommands().filter(|s| !s.is_hide_set()) {
        let program = program(sub.get_name());
        page(dir, sub.clone(), program)?;
    }
    page(dir, top, Program::Any)
}

fn program(name: &str) -> Program {
    match name {
        "migrate" => Program::Migrate,
        "status" => Program::Status,
        "history" => Program::History,
        "verify" => Program::Verify,
        "new" => Program::New,
        "convert" => Program::Convert,
        "backup" => Program::Backup,
        "backups" => Program::Backups,
        "restore" => Program::Restore,
        "demo" => Program::Demo,
        "daemon" => Program::Daemon,
        "trigger" => Program::Trigger,
        _ => Program::Any,
    }
}

/// One page: clap_mangen's NAME, SYNOPSIS, DESCRIPTION, OPTIONS (and COMMANDS), then ours.
fn page(dir: &Path, cmd: clap::Command, program: Program) -> io::Result<()> {
    // The exit codes of --help's epilogue become EXIT STATUS here.
    let cmd = cmd.after_help(None::<&str>).after_long_help(None::<&str>);
    let has_args = cmd.get_arguments().any(|a| !a.is_hide_set());
    let has_commands = cmd.get_subcommands().any(|s| !s.is_hide_set());
    let man = Man::new(cmd).manual("vamsa-migrate manual");
    let path = dir.join(man.get_filename());
    let mut out = io::BufWriter::new(fs::File::create(&path)?);
    man.render_title(&mut out)?;
    man.render_name_section(&mut out)?;
    man.render_synopsis_section(&mut out)?;
    man.render_description_section(&mut out)?;
    if has_args {
        man.render_options_section(&mut out)?;
    }
    if has_commands {
        man.render_subcommands_section(&mut out)?;
    }
    let mut roff = Roff::new();
    exit_status(&mut roff, program);
    if program == Program::Any {
        environment(&mut roff);
        files(&mut roff);
    }
    examples(&mut roff, program);
    see_also(&mut roff, program);
    roff.to_writer(&mut out)?;
    out.flush()
}

fn exit_status(roff: &mut Roff, program: Program) {
    roff.control("SH", ["EXIT STATUS"]);
    for (code, meaning) in exit::documented(program) {
        roff.control("TP", []);
        roff.text([bold(code.to_string())]);
        roff.text([roman(meaning)]);
    }
}

fn environment(roff: &mut Roff) {
    roff.control("SH", ["ENVIRONMENT"]);
    let vars = [
        ("VAMSA_MIGRATE_CONFIG", "The config file to read instead of /etc/vamsa-migrate/config.toml (as --config)."),
        ("VAMSA_MIGRATE_<KEY>", "Any key of the config file, e.g. VAMSA_MIGRATE_MIGRATIONS_DIR, VAMSA_MIGRATE_SOCKET_PATH; over the file, under the flags."),
        ("DATABASE_URL", "The database, when neither --database-url nor VAMSA_MIGRATE_DATABASE_URL is given; over the file."),
        ("VAMSA_MIGRATE_LOG", "A full log filter (tracing's EnvFilter syntax), instead of -v."),
        ("PG_BIN_DIR", "The folder of the PostgreSQL programs to use: demo's server (default: the newest /usr/lib/postgresql/<version>/bin); pg_dump and pg_restore for backups (default: /usr/lib/postgresql/<server's major version>/bin, else PATH)."),
        ("CREDENTIALS_DIRECTORY", "daemon: systemd's credentials; the file database_password there is the database password."),
    ];
    for (name, meaning) in vars {
        roff.control("TP", []);
        roff.text([bold(name)]);
        roff.text([roman(meaning)]);
    }
}

fn files(roff: &mut Roff) {
    roff.control("SH", ["FILES"]);
    let files = [
        (
            "/etc/vamsa-migrate/config.toml",
            "The settings; every key is listed there, commented, with its default.",
        ),
        (
            "/run/vamsa-migrate/trigger.sock",
            "The daemon's trigger socket (socket_path), passed by vamsa-migrate.socket.",
        ),
        (
            "/var/lib/vamsa-migrate/backups",
            "The backups (backup_dir), pg_dump --format=custom, the newest backup_keep kept.",
        ),
        (
            "/usr/share/vamsa-migrate/hooks/post-merge",
            "The git hook for the Vamsa checkout: runs vamsa-migrate trigger after git pull.",
        ),
        (
            "/usr/share/vamsa-migrate/systemd/vamsa-app-dropin.conf",
            "A drop-in for the application's unit: start it only after the migrations.",
        ),
        (
            "/etc/credstore/vamsa-migrate.database_password",
            "Optional: the database password, passed to the service as a systemd credential.",
        ),
    ];
    for (path, meaning) in files {
        roff.control("TP", []);
        roff.text([italic(path)]);
        roff.text([roman(meaning)]);
    }
}

fn examples(roff: &mut Roff, program: Program) {
    let examples: &[(&str, &str)] = match program {
        Program::Any | Program::Migrate => &[
            (
                "vamsa-migrate migrate --dry-run",
                "Show the pending migrations, one line per statement; change nothing.",
            ),
            (
                "vamsa-migrate migrate --migrations-dir /srv/vamsa/drizzle",
                "Back up, then apply what is pending in that folder.",
            ),
            (
                "vamsa-migrate migrate --accept-edited 0000_create_persons",
                "Record the new hash of a file edited on purpose, then apply.",
            ),
        ],
        Program::Status => &[(
            "vamsa-migrate status --format json",
            "Every migration's state as one JSON object.",
        )],
        Program::History => &[(
            "vamsa-migrate history --limit 5",
            "The last five runs: when, who started them, from which commit, what they applied.",
        )],
        Program::Verify => &[(
            "vamsa-migrate verify --deep",
            "Check the migrations, the schema and the newest backup, restoring it into a scratch database.",
        )],
        Program::New => &[(
            "vamsa-migrate new add_media_tags",
            "Create the next NNNN_add_media_tags.sql and its journal entry.",
        )],
        Program::Convert => &[(
            "vamsa-migrate convert --write",
            "Move a drizzle-kit 0.x journal folder to Drizzle 1.0's layout.",
        )],
        Program::Backup => &[(
            "vamsa-migrate backup --backup-dir /srv/backups",
            "Take a verified dump now.",
        )],
        Program::Backups => &[(
            "vamsa-migrate backups",
            "List the dumps: time, size, the migration each preceded, path.",
        )],
        Program::Restore => &[(
            "vamsa-migrate restore --latest",
            "Put the database back as the newest dump shows it (asks first; --yes for scripts).",
        )],
        Program::Demo => &[(
            "vamsa-migrate demo",
            "The whole path against a throwaway PostgreSQL.",
        )],
        Program::Daemon => &[(
            "systemctl start vamsa-migrate",
            "Start the service (it runs vamsa-migrate daemon).",
        )],
        Program::Trigger => &[
            (
                "vamsa-migrate trigger",
                "Ask the daemon to apply; waits until it is done.",
            ),
            (
                "vamsa-migrate trigger --dry-run --timeout 10m",
                "Show what it would apply; give up waiting after 10 minutes.",
            ),
        ],
    };
    roff.control("SH", ["EXAMPLES"]);
    for (command, meaning) in examples {
        roff.control("TP", []);
        roff.text([bold(*command)]);
        roff.text([roman(*meaning)]);
    }
}

fn see_also(roff: &mut Roff, program: Program) {
    roff.control("SH", ["SEE ALSO"]);
    let pages = if program == Program::Any {
        "systemctl(1), journalctl(1), pg_dump(1), pg_restore(1)"
    } else {
        "vamsa-migrate(1)"
    };
    roff.text([roman(pages)]);
}
