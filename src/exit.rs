//! Exit codes of every program in this binary, as the README's "Exit codes" table documents
//! them, and the one mapping from how a command ended ([`Outcome`]) to its code. The numbers
//! above 4 are the BSD `sysexits.h` codes (EX_UNAVAILABLE, EX_TEMPFAIL, EX_NOPERM).

use crate::protocol::ErrorKind;

pub(crate) const OK: u8 = 0;
/// A migration or the database failed (also: anything else that went wrong).
pub(crate) const FAILED: u8 = 1;
/// Invalid input: configuration, migrations folder, usage.
pub(crate) const BAD_INPUT: u8 = 2;
/// `status`: migrations are pending, no drift.
pub(crate) const PENDING: u8 = 3;
/// Drift: an edited file, a hole, a row matching no file (`status`); refused (`migrate`,
/// also for rows matching no file under `unknown_rows = "refuse"`).
pub(crate) const DRIFT: u8 = 4;
/// `migrate`: the release failed in its rehearsal on a scratch copy; the database was not
/// changed.
pub(crate) const REHEARSAL_FAILED: u8 = 5;
/// `trigger`: no daemon listens on the socket (EX_UNAVAILABLE).
pub(crate) const NOT_RUNNING: u8 = 69;
/// `trigger`: no `done` within --timeout, or the daemon hung up mid-run (EX_TEMPFAIL).
pub(crate) const TIMED_OUT: u8 = 75;
/// `trigger`: the socket is served by a user other than root, `daemon_user` or this user:
/// not the daemon; nothing was sent (EX_PROTOCOL).
pub(crate) const UNTRUSTED_SERVER: u8 = 76;
/// `trigger`: this user may not apply (EX_NOPERM).
pub(crate) const REFUSED: u8 = 77;

/// Exit codes of `vamsa-migrate daemon`; the unit's `RestartPreventExitStatus=2 3 4` names
/// the three that restarting cannot fix.
pub(crate) mod daemon {
    /// Stopped by SIGTERM/SIGINT.
    pub(crate) const OK: u8 = super::OK;
    /// The socket, signals or runtime could not be set up (or the runner died).
    pub(crate) const START_FAILED: u8 = super::FAILED;
    /// The configuration cannot work (also: a database that refuses our credentials or does
    /// not exist). Retrying will not help.
    pub(crate) const BAD_CONFIG: u8 = super::BAD_INPUT;
    /// The start-up migration failed; retrying the same migration fails the same way.
    pub(crate) const MIGRATION_FAILED: u8 = 3;
    /// At start-up the database was newer than the code (tracking rows matching no file)
    /// under `unknown_rows = "refuse"`: READY was not sent, so the application does not start
    /// on a schema it does not know. Restore, or deploy the newer code, then start.
    pub(crate) const DATABASE_NEWER: u8 = 4;
    /// The start-up migration failed in its rehearsal (exit_on_start_failure): the database
    /// was not changed, READY was not sent; the same release fails the same way.
    pub(crate) const REHEARSAL_FAILED: u8 = super::REHEARSAL_FAILED;
}

/// How a command (`migrate`, `status`, `verify`, `new`, `backup`, `backups`, `demo`, `trigger`) ended,
/// after it showed whatever it had to show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Done; `status`: up to date; `verify`: every check passed.
    Success,
    /// `status`, `verify`: migrations are pending, no drift.
    Pending,
    /// `status`, `verify`: drift found.
    Drift,
    /// This process failed with an error of this kind.
    Failed(ErrorKind),
    /// `trigger`: the daemon answered with a failure of this kind.
    DaemonFailed(ErrorKind),
    /// `trigger`: no daemon listens on the socket.
    NotRunning,
    /// `trigger`: no `done` in time, or the daemon hung up before it.
    NoAnswer,
    /// `trigger`: the socket's server runs as a user we do not trust to be the daemon.
    UntrustedServer,
    /// Something outside the error kinds: the runtime or a worker task, the demo's throwaway
    /// cluster, a conversation with the daemon that made no sense.
    OtherFailure,
    /// Stopped by this signal (SIGINT 2, SIGTERM 15) before it ended: 128 + the signal's
    /// number, as a shell reports a process a signal ended.
    Stopped { signal: u8 },
}

impl Outcome {
    /// The process exit code (README "Exit codes").
    pub(crate) fn code(self) -> u8 {
        match self {
            Outcome::Success => OK,
            Outcome::Pending => PENDING,
            Outcome::Drift => DRIFT,
            Outcome::Failed(kind) => for_kind(kind),
            // The daemon's configuration or folder is not this user's input: only a refusal
            // has a code of its own.
            Outcome::DaemonFailed(ErrorKind::Refused) => REFUSED,
            // Nothing was changed: a deploy hook must tell that apart from a half release.
            Outcome::DaemonFailed(ErrorKind::Rehearsal) => REHEARSAL_FAILED,
            Outcome::DaemonFailed(_) => FAILED,
            Outcome::NotRunning => NOT_RUNNING,
            Outcome::NoAnswer => TIMED_OUT,
            Outcome::UntrustedServer => UNTRUSTED_SERVER,
            Outcome::OtherFailure => FAILED,
            Outcome::Stopped { signal } => 128u8.saturating_add(signal),
        }
    }
}

fn for_kind(kind: ErrorKind) -> u8 {
    match kind {
        ErrorKind::Config
        | ErrorKind::Folder
        | ErrorKind::TrackingTable
        | ErrorKind::Usage
        | ErrorKind::BadRequest => BAD_INPUT,
        ErrorKind::Drift | ErrorKind::NewerDatabase => DRIFT,
        ErrorKind::Refused => REFUSED,
        ErrorKind::Rehearsal => REHEARSAL_FAILED,
        ErrorKind::Database
        | ErrorKind::Apply
        | ErrorKind::Backup
        | ErrorKind::Stopping
        | ErrorKind::Overloaded
        | ErrorKind::Unknown => FAILED,
    }
}

/// A program of this binary whose exit codes are documented (its `--help` and manual page).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Program {
    /// The binary as a whole: usage errors.
    Any,
    Migrate,
    Status,
    History,
    Verify,
    New,
    Convert,
    Backup,
    Backups,
    Restore,
    Demo,
    Daemon,
    Trigger,
}

const USAGE: (u8, &str) = (BAD_INPUT, "invalid configuration or usage");

/// The exit codes `program` can end with, and what each means (the README's "Exit codes").
pub(crate) fn documented(program: Program) -> Vec<(u8, &'static str)> {
    let mut codes = own_codes(program);
    codes.extend(signal_codes(program));
    codes.sort_by_key(|(code, _)| *code);
    codes
}

/// The codes of `program`'s own outcomes, before the signals'.
fn own_codes(program: Program) -> Vec<(u8, &'static str)> {
    let db_failed = (FAILED, "a migration or the database failed (cannot connect, read-only server, migration lock not obtained within lock_wait, backup failed)");
    match program {
        Program::Any => vec![(OK, "success"), USAGE],
        Program::Migrate => vec![
            (OK, "applied, or nothing pending; --dry-run: shown"),
            db_failed,
            (BAD_INPUT, "invalid configuration, migrations folder (journal, files) or usage"),
            (DRIFT, "refused because of an edited file or a hole, the database is newer than this code (unknown_rows = \"refuse\"), or the schema was changed outside migrations (schema_drift = \"refuse\"); nothing applied"),
            (REHEARSAL_FAILED, "caught in rehearsal: the release failed on a scratch copy of the database; production was not changed"),
        ],
        Program::Status => vec![
            (OK, "up to date"),
            (FAILED, "a database error"),
            (BAD_INPUT, "invalid configuration, migrations folder or usage"),
            (PENDING, "migrations pending, no drift"),
            (DRIFT, "drift: an edited file, an out-of-order migration, a row matching no file, or the schema changed outside migrations"),
        ],
        Program::History => vec![
            (OK, "listed (also: no history yet)"),
            (FAILED, "a database error (cannot connect, no SELECT privilege on vamsa_migrate.runs)"),
            USAGE,
        ],
        Program::Verify => vec![
            (OK, "every check passed (a skipped one, e.g. backups off or no schema recorded, did not fail)"),
            (FAILED, "the newest backup is missing, does not read back, is another database's dump, holds no data or (--deep) does not restore, or a check could not read what it checks (cannot connect: the error block; in JSON a failed connection check)"),
            (BAD_INPUT, "invalid configuration, migrations folder or usage"),
            (PENDING, "migrations pending, and no check found drift"),
            (DRIFT, "drift: an edited file, an out-of-order migration, a row matching no file, or the schema changed outside migrations"),
        ],
        Program::New => vec![
            (OK, "created"),
            (BAD_INPUT, "invalid name, configuration or journal; the folder does not exist (without --init)"),
        ],
        Program::Convert => vec![
            (OK, "converted, or (without --write) the plan shown"),
            (BAD_INPUT, "invalid configuration, migrations folder or usage; the folder cannot be converted"),
        ],
        Program::Backup => vec![(OK, "taken and verified"), (FAILED, "the database or pg_dump failed"), USAGE],
        Program::Backups => vec![
            (OK, "listed (also: the default backup_dir, not yet created)"),
            (FAILED, "backup_dir cannot be read"),
            (BAD_INPUT, "invalid configuration or usage; backup_dir does not exist"),
        ],
        Program::Restore => vec![
            (OK, "restored"),
            (FAILED, "other sessions are connected (without --force), or the database or pg_restore failed"),
            (BAD_INPUT, "no such dump, not one vamsa-migrate made of this database, corrupt, or not confirmed; nothing changed"),
        ],
        Program::Demo => vec![(OK, "the demo ran"), (FAILED, "the throwaway PostgreSQL or a step failed"), USAGE],
        Program::Daemon => vec![
            (daemon::OK, "stopped by SIGTERM or SIGINT"),
            (daemon::START_FAILED, "the socket, signals or runtime could not be set up"),
            (daemon::BAD_CONFIG, "the configuration cannot work (also: wrong credentials, no such database)"),
            (daemon::MIGRATION_FAILED, "the start-up migration failed (exit_on_start_failure)"),
            (daemon::DATABASE_NEWER, "the database is newer than this code (unknown_rows = \"refuse\"): READY never sent"),
            (daemon::REHEARSAL_FAILED, "the start-up release failed in its rehearsal (exit_on_start_failure): database not changed, READY never sent"),
        ],
        Program::Trigger => vec![
            (OK, "applied, or nothing pending"),
            (FAILED, "a migration (or the daemon's run) failed"),
            (REHEARSAL_FAILED, "caught in the daemon's rehearsal: the release failed on a scratch copy; production was not changed"),
            USAGE,
            (NOT_RUNNING, "no daemon listens on socket_path"),
            (TIMED_OUT, "no answer within --timeout, or the daemon hung up mid-run"),
            (UNTRUSTED_SERVER, "the socket is served by a user other than root, daemon_user or this user: not the daemon; nothing was sent"),
            (REFUSED, "this user may not apply"),
        ],
    }
}

/// The codes `program` ends with on SIGINT/SIGTERM.
fn signal_codes(program: Program) -> Vec<(u8, &'static str)> {
    match program {
        // The daemon exits 0 on SIGTERM/SIGINT; `Any` lists the codes of the binary itself.
        Program::Any | Program::Daemon => Vec::new(),
        // Their file work runs to its end in one go: the signal's default action ends them,
        // and a shell reports 128 + the signal's number.
        Program::New | Program::Convert => vec![
            (130, "killed by SIGINT (as a shell reports it)"),
            (143, "killed by SIGTERM (as a shell reports it)"),
        ],
        _ => vec![(130, "stopped by SIGINT"), (143, "stopped by SIGTERM")],
    }
}

/// Whether `program` stops itself on SIGINT/SIGTERM (exit 128 + the signal's number) and says
/// what it leaves behind ([`stopped_note`]); `new` and `convert` do not (their file work runs to
/// its end in one go, the signal's default action ends them).
pub(crate) fn stops_on_signal(program: Program) -> bool {
    !matches!(
        program,
        Program::Any | Program::Daemon | Program::New | Program::Convert
    )
}

/// What is true after SIGINT/SIGTERM stopped `program`: what it left behind, what to do next.
pub(crate) fn stopped_note(program: Program) -> &'static str {
    match program {
        Program::Migrate => "a backup in progress was removed, and PostgreSQL rolls back a migration in progress. `vamsa-migrate status` shows where the run stopped.",
        Program::Backup => "pg_dump was stopped and its temporary dump removed; no backup was taken.",
        Program::Restore => "pg_restore was stopped; it restores in one transaction, which PostgreSQL rolls back, so the database is as it was.",
        Program::Trigger => "the daemon's run goes on: follow it with `journalctl -u vamsa-migrate -f`, wait for it with `vamsa-migrate trigger` again, or see where it is with `vamsa-migrate status`.",
        Program::Demo => "the throwaway PostgreSQL is stopped and its directory removed.",
        Program::Status | Program::Backups | Program::History => {
            "nothing was changed (it only reads)."
        }
        Program::Verify => {
            "nothing was changed (it only reads; the scratch database of --deep is dropped)."
        }
        Program::Any | Program::Daemon | Program::New | Program::Convert => "",
    }
}

/// The "Exit status" block of a `--help`.
pub(crate) fn help_text(program: Program) -> String {
    let lines: Vec<String> = documented(program)
        .iter()
        .map(|(code, meaning)| format!("  {code:>3}  {meaning}"))
        .collect();
    format!("Exit status:\n{}", lines.join("\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_the_readme_table() {
        let cases = [
            (Outcome::Success, 0),
            (Outcome::Failed(ErrorKind::Apply), 1),
            (Outcome::Failed(ErrorKind::Database), 1),
            (Outcome::Failed(ErrorKind::Backup), 1),
            (Outcome::Failed(ErrorKind::Config), 2),
            (Outcome::Failed(ErrorKind::Folder), 2),
            (Outcome::Failed(ErrorKind::Usage), 2),
            (Outcome::Pending, 3),
            (Outcome::Drift, 4),
            (Outcome::Failed(ErrorKind::Drift), 4),
            (Outcome::Failed(ErrorKind::NewerDatabase), 4),
            (Outcome::Failed(ErrorKind::Rehearsal), 5),
            (Outcome::DaemonFailed(ErrorKind::Rehearsal), 5),
            (Outcome::DaemonFailed(ErrorKind::NewerDatabase), 1),
            (Outcome::NotRunning, 69),
            (Outcome::NoAnswer, 75),
            (Outcome::UntrustedServer, 76),
            (Outcome::Failed(ErrorKind::Refused), 77),
            (Outcome::DaemonFailed(ErrorKind::Refused), 77),
            (Outcome::DaemonFailed(ErrorKind::Config), 1),
            (Outcome::DaemonFailed(ErrorKind::Drift), 1),
            (Outcome::OtherFailure, 1),
            (Outcome::Stopped { signal: 2 }, 130),
            (Outcome::Stopped { signal: 15 }, 143),
        ];
        for (outcome, code) in cases {
            assert_eq!(outcome.code(), code, "{outcome:?}");
        }
    }

    #[test]
    fn the_unit_does_not_restart_on_the_codes_restarting_cannot_fix() {
        let unit = include_str!("../systemd/vamsa-migrate.service");
        let listed = unit
            .lines()
            .find_map(|l| l.strip_prefix("RestartPreventExitStatus="))
            .expect("the unit sets RestartPreventExitStatus=");
        let codes = [
            daemon::BAD_CONFIG,
            daemon::MIGRATION_FAILED,
            daemon::DATABASE_NEWER,
            daemon::REHEARSAL_FAILED,
        ];
        let expected: Vec<String> = codes.iter().map(u8::to_string).collect();
        assert_eq!(listed, expected.join(" "));
    }
}
