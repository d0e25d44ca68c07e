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
/// `trigger`: no daemon listens on the socket (EX_UNAVAILABLE).
pub(crate) const NOT_RUNNING: u8 = 69;
/// `trigger`: no `done` within --timeout, or the daemon hung up mid-run (EX_TEMPFAIL).
pub(crate) const TIMED_OUT: u8 = 75;
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
}

/// How a command (`migrate`, `status`, `new`, `backup`, `backups`, `demo`, `trigger`) ended,
/// after it showed whatever it had to show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Done; `status`: up to date.
    Success,
    /// `status`: migrations are pending, no drift.
    Pending,
    /// `status`: drift found.
    Drift,
    /// This process failed with an error of this kind.
    Failed(ErrorKind),
    /// `trigger`: the daemon answered with a failure of this kind.
    DaemonFailed(ErrorKind),
    /// `trigger`: no daemon listens on the socket.
    NotRunning,
    /// `trigger`: no `done` in time, or the daemon hung up before it.
    NoAnswer,
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
            Outcome::DaemonFailed(_) => FAILED,
            Outcome::NotRunning => NOT_RUNNING,
            Outcome::NoAnswer => TIMED_OUT,
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
        ErrorKind::Database
        | ErrorKind::Apply
        | ErrorKind::Backup
        | ErrorKind::Stopping
        | ErrorKind::Overloaded
        | ErrorKind::Unknown => FAILED,
    }
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
            (Outcome::DaemonFailed(ErrorKind::NewerDatabase), 1),
            (Outcome::NotRunning, 69),
            (Outcome::NoAnswer, 75),
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
        ];
        let expected: Vec<String> = codes.iter().map(u8::to_string).collect();
        assert_eq!(listed, expected.join(" "));
    }
}
