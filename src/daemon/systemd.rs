//! systemd notifications (`sd_notify`). Every call is a no-op without `NOTIFY_SOCKET`, so the
//! daemon runs the same under systemd, in a terminal, and in tests.

use std::io;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

use sd_notify::NotifyState;

#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Notifier;

/// How long a state change (READY, STOPPING, ...) may wait for a busy service manager.
const STATE_SEND_TIMEOUT: Duration = Duration::from_secs(10);

impl Notifier {
    /// State changes (READY, RELOADING, STOPPING) must arrive: they are sent with a bounded
    /// wait when the manager's queue is full. STATUS, EXTEND_TIMEOUT_USEC and WATCHDOG are sent
    /// often, also while a run holds the migration lock, so they go without waiting: a manager
    /// slow to read must never stall a run that other runs are queued behind.
    fn send(&self, states: &[NotifyState<'_>]) {
        let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
            return;
        };
        let informational = states.iter().all(|s| {
            matches!(
                s,
                NotifyState::Status(_) | NotifyState::ExtendTimeoutUsec(_) | NotifyState::Watchdog
            )
        });
        let message: String = states.iter().map(|s| format!("{s}\n")).collect();
        let wait = (!informational).then_some(STATE_SEND_TIMEOUT);
        if let Err(e) = send_datagram(&path, message.as_bytes(), wait) {
            tracing::debug!("sd_notify failed: {e}");
        }
    }

    pub(crate) fn ready(&self, status: &str) {
        self.send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    pub(crate) fn status(&self, status: &str) {
        self.send(&[NotifyState::Status(status)]);
    }

    /// `RELOADING=1` with the `MONOTONIC_USEC` that `Type=notify-reload` requires.
    pub(crate) fn reloading(&self) {
        match NotifyState::monotonic_usec_now() {
            Ok(now) => self.send(&[
                NotifyState::Reloading,
                now,
                NotifyState::Status("Reloading configuration"),
            ]),
            Err(_) => self.send(&[NotifyState::Reloading]),
        }
    }

    pub(crate) fn stopping(&self, status: &str) {
        self.send(&[NotifyState::Stopping, NotifyState::Status(status)]);
    }

    pub(crate) fn watchdog(&self) {
        self.send(&[NotifyState::Watchdog]);
    }

    /// Asks systemd for more time in the current start/stop/reload phase.
    pub(crate) fn extend_timeout(&self, by: Duration) {
        let usec = by.as_micros().min(u32::MAX as u128) as u32;
        self.send(&[NotifyState::ExtendTimeoutUsec(usec)]);
    }
}

/// How often to ping the watchdog: half of `WATCHDOG_USEC`, when systemd set one for us.
pub(crate) fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled().map(|d| d / 2)
}

fn send_datagram(path: &std::ffi::OsStr, message: &[u8], wait: Option<Duration>) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = path.as_bytes();
    let address = match bytes.strip_prefix(b"@") {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(name)?
        }
        None => SocketAddr::from_pathname(path)?,
    };
    let socket = UnixDatagram::unbound()?;
    match wait {
        Some(limit) => socket.set_write_timeout(Some(limit))?,
        None => socket.set_nonblocking(true)?,
    }
    socket.send_to_addr(message, &address)?;
    Ok(())
}
