//! What goes over the wire: the JSON lines of `--format json` and of the daemon's trigger
//! socket, shared by the daemon (which writes replies) and the `trigger` client (which writes
//! requests and reads replies). Modelled on ntpd-rs's typed control protocol: every line is a
//! value of a type here, never hand-written bytes or a prefix sniffed from text.
//!
//! A conversation is one request line, answered by zero or more lines tagged by `event` and
//! ending with exactly one `done` event.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// A request on the trigger socket: one JSON line such as `{"command":"apply"}`. Other fields
/// are ignored, as they always were.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "kebab-case")]
pub enum Request {
    /// Back up and apply what is pending (only root, the service user and `allowed_users` /
    /// `allowed_groups` may send it).
    Apply,
    /// Plan and show what `apply` would do; change nothing.
    DryRun,
    /// The object of `status --format json`.
    Status,
    /// Answered at once, even during a run.
    Ping,
}

/// Why a request line is not a [`Request`].
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("not a JSON request: {0}")]
    NotJson(serde_json::Error),
    #[error("unknown command {0:?}")]
    UnknownCommand(String),
}

impl Request {
    /// Every request, in the order the hints list them.
    pub const ALL: [Request; 4] = [
        Request::Apply,
        Request::DryRun,
        Request::Status,
        Request::Ping,
    ];

    /// The `command` value of this request on the wire.
    pub fn command(self) -> &'static str {
        match self {
            Request::Apply => "apply",
            Request::DryRun => "dry-run",
            Request::Status => "status",
            Request::Ping => "ping",
        }
    }

    /// Parses one request line (without its newline).
    ///
    /// # Errors
    /// [`RequestError::NotJson`] when the line is not a JSON object with a string `command`,
    /// [`RequestError::UnknownCommand`] when the command is none of [`Request::ALL`].
    pub fn parse(line: &str) -> Result<Request, RequestError> {
        #[derive(Deserialize)]
        struct Envelope {
            command: String,
        }
        let envelope: Envelope = serde_json::from_str(line).map_err(RequestError::NotJson)?;
        // The line is an object with a string `command`: only an unknown command fails here.
        serde_json::from_str(line).map_err(|_| RequestError::UnknownCommand(envelope.command))
    }

    /// The request as one line, newline included, ready to send: `{"command":"dry-run"}\n`.
    ///
    /// # Errors
    /// Only if serde_json fails to write a unit variant, which it does not.
    pub fn to_line(self) -> serde_json::Result<Vec<u8>> {
        let mut line = serde_json::to_vec(&self)?;
        line.push(b'\n');
        Ok(line)
    }
}

/// Progress of an engine run, in the order it happens. Serialised as the JSON lines of
/// `--format json` and of the trigger socket.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum Event {
    Warning {
        message: String,
    },
    WaitingForLock {
        /// The PostgreSQL backend pid holding the migration lock, when known.
        holder_pid: Option<i32>,
        /// `lock_wait`, in milliseconds.
        max_wait_ms: u64,
    },
    /// What this run is about to apply (or, in a dry run, would apply).
    Pending {
        migrations: Vec<PendingMigration>,
        dry_run: bool,
    },
    AcceptedEdit {
        migration: String,
    },
    /// A backup is being taken before `migrations` migrations are applied.
    BackingUp {
        migrations: usize,
    },
    /// The verified dump: its path, size in bytes, and how long it took in milliseconds.
    BackedUp {
        path: PathBuf,
        bytes: u64,
        ms: u64,
    },
    /// The release is being rehearsed: `migrations` migrations applied to `database`, a
    /// scratch copy restored from the run's dump, before the database itself is touched.
    Rehearsing {
        database: String,
        migrations: usize,
    },
    /// The rehearsal succeeded (the scratch copy is dropped), in `ms` milliseconds: restore
    /// and apply.
    Rehearsed {
        migrations: usize,
        ms: u64,
    },
    /// One migration committed (under `transaction = "all"`: the run committed), with its
    /// wall time in milliseconds.
    Applied {
        migration: String,
        ms: u64,
    },
    /// The last line of every answer. Built only by [`Event::done_ok`] and
    /// [`Event::done_failed`].
    Done {
        ok: bool,
        applied: usize,
        dry_run: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<ErrorReport>,
    },
}

impl Event {
    /// The `done` of an answer that succeeded, after `applied` migrations (0 for a dry run and
    /// for answers that apply nothing).
    pub fn done_ok(applied: usize, dry_run: bool) -> Event {
        Event::Done {
            ok: true,
            applied,
            dry_run,
            error: None,
        }
    }

    /// The `done` of an answer that failed. A failed run reports no migration as applied
    /// (those it committed show in `applied` events and in `status`).
    pub fn done_failed(error: ErrorReport, dry_run: bool) -> Event {
        Event::Done {
            ok: false,
            applied: 0,
            dry_run,
            error: Some(error),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PendingMigration {
    /// The file name, e.g. `0004_media_tags.sql`.
    pub migration: String,
    /// One summary line per statement.
    pub statements: Vec<String>,
    pub no_transaction: bool,
    /// Drizzle's own migrator would skip this one (its `when` is older than the newest row).
    pub drizzle_would_skip: bool,
}

/// What kind of failure an [`ErrorReport`] is: clients decide from it (the exit code of
/// `trigger`, whether to retry), never from the message text. Serialised in kebab-case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorKind {
    /// The settings cannot work: an unknown key, a bad value, no `database_url`, an unreadable
    /// password file, or `transaction = "all"` with a no-transaction migration.
    Config,
    /// The migrations folder: journal missing or invalid, a missing, empty or non-UTF-8 file,
    /// a duplicate idx or tag, a tag or symlink leading outside the folder.
    Folder,
    /// An edited file or a hole: nothing was applied.
    Drift,
    /// The tracking table has rows that match no migration on disk (the code is older than the
    /// database) and `unknown_rows = "refuse"`: nothing was applied.
    NewerDatabase,
    /// The tracking table holds a value we cannot interpret (a row made by hand or by another
    /// tool: a NULL hash, a text id): nothing was applied.
    TrackingTable,
    /// A command-line argument that cannot be used (never sent by the daemon).
    Usage,
    /// PostgreSQL: cannot connect, a read-only server, a failed query, the migration lock not
    /// obtained within `lock_wait`.
    Database,
    /// A migration failed (`migration` and, when PostgreSQL gave one, `sqlstate` say which and
    /// why).
    Apply,
    /// The backup before the run failed: nothing was migrated.
    Backup,
    /// The release failed in its rehearsal on a scratch copy of the database (`migration`
    /// and `sqlstate` say which and why, as for `apply`): the database was not changed.
    Rehearsal,
    /// The daemon refused: this peer may not apply.
    Refused,
    /// The daemon is stopping and takes no more work.
    Stopping,
    /// The request line was not understood (not JSON, an unknown command, too long, too slow).
    BadRequest,
    /// The daemon serves too many connections at once.
    Overloaded,
    /// A kind this version does not know (a daemon of another version), or none at all.
    #[default]
    #[serde(other)]
    Unknown,
}

/// Everything a person (or a script) needs to act on a failure.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorReport {
    /// What clients decide from; `unknown` when a daemon of another version sent none.
    #[serde(default)]
    pub kind: ErrorKind,
    pub message: String,
    /// The migration file that failed, when one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migration: Option<String>,
    /// PostgreSQL's SQLSTATE (five characters, PostgreSQL 15 Appendix A), when it gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sqlstate: Option<String>,
    /// The likely cause, when one can be told.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<String>,
    /// The next step.
    pub hint: String,
}

/// One line the daemon writes on the trigger socket: an engine [`Event`], or an answer only
/// the daemon gives.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Reply {
    Event(Event),
    Daemon(DaemonReply),
}

impl Reply {
    /// This reply as a peer that may not apply sees it: statement summaries without their
    /// string constants ([`crate::summary::without_literals`]); a `status` answer's
    /// `last_run` without its error message (string constants, row data in a constraint's
    /// `Key (...)=(...)` detail) and backup path ([`RunRecord::for_outsider`]).
    pub(crate) fn for_outsider(self) -> Reply {
        match self {
            Reply::Event(Event::Pending {
                mut migrations,
                dry_run,
            }) => {
                for m in &mut migrations {
                    for statement in &mut m.statements {
                        *statement = crate::summary::without_literals(statement);
                    }
                }
                Reply::Event(Event::Pending {
                    migrations,
                    dry_run,
                })
            }
            Reply::Daemon(DaemonReply::Status { mut status }) => {
                if let Some(run) = status.last_run.take() {
                    status.last_run = Some(Box::new(run.for_outsider()));
                }
                Reply::Daemon(DaemonReply::Status { status })
            }
            other => other,
        }
    }
}

/// What replaces a recorded error message for a peer that may not apply.
pub(crate) const HIDDEN_FROM_PEERS: &str = "(hidden from peers that may not apply)";

impl RunRecord {
    /// The record as a peer that may not apply sees it: kind, times, result, migration and
    /// SQLSTATE stay; the error message (which may quote string constants and row data) and
    /// the backup's path do not.
    pub(crate) fn for_outsider(mut self) -> RunRecord {
        self.backup = None;
        if let Some(error) = &mut self.error {
            error.message = HIDDEN_FROM_PEERS.to_string();
        }
        self
    }
}

impl From<Event> for Reply {
    fn from(event: Event) -> Reply {
        Reply::Event(event)
    }
}

impl From<DaemonReply> for Reply {
    fn from(reply: DaemonReply) -> Reply {
        Reply::Daemon(reply)
    }
}

/// The daemon's own answers, tagged by `event` like the engine's.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum DaemonReply {
    /// The answer to `ping`: whether a run is in progress.
    Pong { busy: bool },
    /// The answer to `status`.
    Status { status: StatusReport },
}

/// The object of `status --format json` and of the daemon's `status` answer.
#[derive(Debug, Clone, Serialize)]
pub struct StatusReport {
    /// Every migration on disk, in journal order.
    pub migrations: Vec<StatusRow>,
    /// Rows of the tracking table that match no file on disk.
    pub missing_on_disk: Vec<MissingRow>,
    pub applied: usize,
    pub pending: usize,
    /// Drift of any kind: an edited file, a hole, a row matching no file, or the schema
    /// changed outside migrations (`schema_changes`); `status` then exits 4.
    pub drift: bool,
    /// The folder's warnings, as printed on stderr.
    pub warnings: Vec<String>,
    /// The live schema changed outside migrations since the last run (`+ column
    /// public.persons.nickname text`, `- ...`, `~ object: was -> now`); empty when it did not,
    /// or when no schema was recorded.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub schema_changes: Vec<String>,
    /// When the schema the changes are against was recorded (`YYYY-MM-DD HH:MM:SS` UTC).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schema_recorded_at: Option<String>,
    /// About migrations another tool (Drizzle's migrator) applied since the record: which,
    /// how many changes they account for, rows whose changes cannot be attributed.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub schema_notes: Vec<String>,
    /// The newest run of the run history, when it has one and can be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_run: Option<Box<RunRecord>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct StatusRow {
    pub migration: String,
    pub state: MigrationState,
    /// `YYYY-MM-DD HH:MM:SS` in UTC, when the tracking table records it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub applied_at: Option<String>,
    /// What to do about this state, when something can be done.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// A migration's state as `status` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum MigrationState {
    Applied,
    Edited,
    Pending,
    OutOfOrder,
}

impl MigrationState {
    /// The name shown in `status` (the same as on the wire).
    pub fn name(self) -> &'static str {
        match self {
            MigrationState::Applied => "applied",
            MigrationState::Edited => "edited",
            MigrationState::Pending => "pending",
            MigrationState::OutOfOrder => "out-of-order",
        }
    }
}

/// A tracking-table row that matches no migration on disk.
#[derive(Debug, Clone, Serialize)]
pub struct MissingRow {
    pub id: i64,
    pub hash: String,
    /// Drizzle's `created_at`: the journal's `when` in milliseconds since the epoch.
    pub created_at: Option<i64>,
    /// The migration's folder name, in Drizzle 1.0's table (column `name`); absent in a 0.x
    /// table and for rows whose `name` is NULL.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// Who started a run, as the run history records it (`origin` of [`RunRecord`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Origin {
    /// `vamsa-migrate migrate` on the command line.
    #[default]
    Cli,
    /// The daemon's apply at start-up.
    Startup,
    /// A trigger on the daemon's socket, from this peer (SO_PEERCRED, Linux unix(7)).
    Trigger(TriggerPeer),
    /// The daemon saw the migrations folder change (`apply = "on-change"`).
    FolderChange,
    /// `vamsa-migrate restore`.
    Restore,
}

/// The peer of a trigger: its uid and pid at connect time, the user name of that uid (when
/// the user database has one), and the systemd unit its process runs in (from
/// `/proc/<pid>/cgroup`, cgroup v2), when systemd tells.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TriggerPeer {
    pub uid: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
}

impl std::fmt::Display for Origin {
    /// The origin as the journal's `ORIGIN` field shows it: `start-up`, `folder change`,
    /// `trigger from uid 1000 (pid 4242)` (the history keeps the user and unit too).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Cli => f.write_str("command line"),
            Origin::Startup => f.write_str("start-up"),
            Origin::FolderChange => f.write_str("folder change"),
            Origin::Restore => f.write_str("restore"),
            Origin::Trigger(peer) => {
                let pid = peer.pid.map_or("?".into(), |p| p.to_string());
                write!(f, "trigger from uid {} (pid {pid})", peer.uid)
            }
        }
    }
}

/// One row of the run history (`vamsa_migrate.runs`): the object of `history --format json`
/// and the `last_run` of a `status` answer. Times are `YYYY-MM-DD HH:MM:SS` in UTC.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunRecord {
    /// The row's id: runs in the order they ended.
    pub id: i64,
    pub started_at: String,
    pub finished_at: String,
    /// Wall time of the run, in milliseconds.
    pub ms: i64,
    pub origin: Origin,
    /// The PostgreSQL role the run used (`current_user`).
    pub role: String,
    /// The vamsa-migrate version that ran it (Cargo's package version).
    pub tool_version: String,
    /// The migrations folder's `git` commit, when the folder is in a git work tree.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_commit: Option<String>,
    /// Each migration this run committed, in order, with its wall time.
    pub migrations: Vec<AppliedTiming>,
    /// The dump taken before the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<PathBuf>,
    /// The outcome of the rehearsal before the run, when one ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rehearsal: Option<String>,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<RunFailure>,
}

/// A migration a run committed and how long it took, in milliseconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedTiming {
    pub migration: String,
    pub ms: u64,
}

/// Why a recorded run failed: its [`ErrorKind`], message, and, for a failed migration, the
/// file and PostgreSQL's SQLSTATE.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunFailure {
    #[serde(default)]
    pub kind: ErrorKind,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migration: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sqlstate: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_as_the_socket_always_accepted_them() {
        assert_eq!(
            Request::parse(r#"{"command":"apply"}"#).ok(),
            Some(Request::Apply)
        );
        assert_eq!(
            Request::parse(r#"{"x":[1],"command":"dry-run"}"#).ok(),
            Some(Request::DryRun)
        );
        let unknown = Request::parse(r#"{"command":"drop-database"}"#);
        assert_eq!(
            unknown.map_err(|e| e.to_string()).err().as_deref(),
            Some("unknown command \"drop-database\"")
        );
        for line in ["hello", r#"{"cmd":1}"#, r#"{"command":5}"#] {
            let e = Request::parse(line).map_err(|e| e.to_string()).err();
            assert!(
                e.as_deref()
                    .is_some_and(|e| e.starts_with("not a JSON request: ")),
                "{line}: {e:?}"
            );
        }
    }

    #[test]
    fn request_lines_round_trip_and_names_match_serde() {
        for request in Request::ALL {
            let line = request.to_line().ok();
            let expected = format!("{{\"command\":\"{}\"}}\n", request.command());
            assert_eq!(line.as_deref(), Some(expected.as_bytes()));
            assert_eq!(
                Request::parse(expected.trim_end()).ok(),
                Some(request),
                "{expected}"
            );
        }
    }

    #[test]
    fn state_names_match_the_wire() {
        for state in [
            MigrationState::Applied,
            MigrationState::Edited,
            MigrationState::Pending,
            MigrationState::OutOfOrder,
        ] {
            let wire = serde_json::to_value(state).ok();
            assert_eq!(wire.as_ref().and_then(|v| v.as_str()), Some(state.name()));
        }
    }

    #[test]
    fn an_error_report_carries_its_kind_and_tolerates_unknown_or_missing_ones() {
        let done = Event::done_failed(
            ErrorReport {
                kind: ErrorKind::BadRequest,
                message: "m".into(),
                migration: None,
                sqlstate: None,
                cause: None,
                hint: "h".into(),
            },
            false,
        );
        assert_eq!(
            serde_json::to_string(&done).ok().as_deref(),
            Some(
                r#"{"event":"done","ok":false,"applied":0,"dry_run":false,"error":{"kind":"bad-request","message":"m","hint":"h"}}"#
            )
        );
        for (line, kind) in [
            (
                r#"{"kind":"refused","message":"m","hint":"h"}"#,
                ErrorKind::Refused,
            ),
            (
                r#"{"kind":"from-the-future","message":"m","hint":"h"}"#,
                ErrorKind::Unknown,
            ),
            (r#"{"message":"m","hint":"h"}"#, ErrorKind::Unknown),
        ] {
            let report: Option<ErrorReport> = serde_json::from_str(line).ok();
            assert_eq!(report.map(|r| r.kind), Some(kind), "{line}");
        }
    }

    #[test]
    fn daemon_replies_share_the_event_tag() {
        let pong = Reply::from(DaemonReply::Pong { busy: false });
        assert_eq!(
            serde_json::to_string(&pong).ok().as_deref(),
            Some(r#"{"event":"pong","busy":false}"#)
        );
        let done = Reply::from(Event::done_ok(0, false));
        assert_eq!(
            serde_json::to_string(&done).ok().as_deref(),
            Some(r#"{"event":"done","ok":true,"applied":0,"dry_run":false}"#)
        );
    }
}
