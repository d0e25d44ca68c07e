//! A stop request (the daemon's SIGTERM/SIGINT) as a run sees it. The engine checks it at
//! every phase boundary (after the backup, after the rehearsal, before each migration) and
//! ends the run there with [`EngineError::Stopped`], which says exactly what is committed; a
//! stop that must not wait any longer (`stop_grace` ran out) also ends the backup in
//! progress: the dump's future is dropped, which kills `pg_dump` and removes the `.partial`
//! file (`crate::backup`).

use std::fmt;

use tokio::sync::watch;

use super::EngineError;

/// What the owner of the run asks for; it only ever moves forward.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub enum StopRequest {
    /// Run to the end.
    #[default]
    Running,
    /// Finish the phase in progress, start no other.
    AfterPhase,
    /// Also abandon the phase in progress (the backup; a migration's statement is cancelled
    /// server-side by the daemon and rolls back).
    Now,
}

/// The receiving end of the stop requests of one run; the CLI's runs have none (Ctrl-C ends
/// the process, and PostgreSQL rolls back what was not committed).
#[derive(Debug, Clone, Default)]
pub struct StopSignal(Option<watch::Receiver<StopRequest>>);

impl StopSignal {
    pub fn new(requests: watch::Receiver<StopRequest>) -> StopSignal {
        StopSignal(Some(requests))
    }

    /// Whether a stop was asked for: the run must not start another phase.
    pub(crate) fn requested(&self) -> bool {
        self.0
            .as_ref()
            .is_some_and(|r| *r.borrow() != StopRequest::Running)
    }

    /// Resolves once the run must stop at once; never without a sender, or once the sender
    /// is gone without asking.
    pub(crate) async fn now(&self) {
        if let Some(requests) = &self.0 {
            let mut requests = requests.clone();
            if requests.wait_for(|r| *r == StopRequest::Now).await.is_ok() {
                return;
            }
        }
        std::future::pending::<()>().await
    }

    /// The error ending the run at a phase boundary before any migration of it ran, when a
    /// stop was asked for.
    pub(crate) fn stopped_at(&self, at: StopPoint) -> Option<EngineError> {
        self.requested()
            .then_some(EngineError::Stopped { at, committed: 0 })
    }
}

/// Where a run stopped on request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopPoint {
    /// `stop_grace` ran out while `pg_dump` ran: it was killed, its partial file removed.
    DuringBackup,
    AfterBackup,
    AfterRehearsal,
    /// Before this migration (file name) ran; the ones before it in the run are committed.
    BeforeMigration(String),
}

impl fmt::Display for StopPoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StopPoint::DuringBackup => f.write_str("during the backup (pg_dump was stopped)"),
            StopPoint::AfterBackup => f.write_str("after the backup"),
            StopPoint::AfterRehearsal => f.write_str("after the rehearsal"),
            StopPoint::BeforeMigration(file) => write!(f, "before {file}"),
        }
    }
}
