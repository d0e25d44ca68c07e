//! `vamsa-migrate trigger`: the deploy-hook client of the daemon's trigger socket. It prints the
//! same lines as `vamsa-migrate migrate` as the daemon's events arrive.

use std::io::{self, Write};
use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use crate::engine::Event;
use crate::report::{Format, HumanOptions, Reporter};

/// Exit codes of `trigger`, documented in the README.
pub mod exit {
    pub const OK: u8 = 0;
    pub const FAILED: u8 = 1;
    /// No daemon listens on the socket (EX_UNAVAILABLE).
    pub const NOT_RUNNING: u8 = 69;
    /// The daemon refused: this user may not apply (EX_NOPERM).
    pub const REFUSED: u8 = 77;
    /// No `done` within --timeout, or the daemon hung up mid-run (EX_TEMPFAIL).
    pub const TIMED_OUT: u8 = 75;
}

pub async fn run(socket: &Path, dry_run: bool, timeout: Option<Duration>, format: Format) -> u8 {
    let stream = match UnixStream::connect(socket).await {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            eprintln!(
                "Error: permission denied on {}: run as root, or add this user to the vamsa-migrate group (adduser $USER vamsa-migrate, then log in again)",
                socket.display()
            );
            return exit::REFUSED;
        }
        Err(e) => {
            eprintln!(
                "vamsa-migrate is not running: start it with `systemctl start vamsa-migrate` or run `vamsa-migrate migrate` ({}: {e})",
                socket.display()
            );
            return exit::NOT_RUNNING;
        }
    };
    let conversation = converse(stream, dry_run, format);
    match timeout {
        Some(limit) => match tokio::time::timeout(limit, conversation).await {
            Ok(code) => code,
            Err(_) => {
                eprintln!(
                    "Error: no answer from vamsa-migrate within {}; the run may still be going on: see `journalctl -u vamsa-migrate`",
                    humantime::format_duration(limit)
                );
                exit::TIMED_OUT
            }
        },
        None => conversation.await,
    }
}

async fn converse(stream: UnixStream, dry_run: bool, format: Format) -> u8 {
    let (read, mut write) = stream.into_split();
    let request: &[u8] = if dry_run {
        b"{\"command\":\"dry-run\"}\n"
    } else {
        b"{\"command\":\"apply\"}\n"
    };
    if let Err(e) = write.write_all(request).await {
        eprintln!("Error: cannot send the request to vamsa-migrate: {e}");
        return exit::FAILED;
    }
    let mut reporter = Reporter::new(io::stdout(), Format::Human, HumanOptions::default());
    let mut lines = BufReader::new(read).lines();
    loop {
        let line = match lines.next_line().await {
            Ok(Some(line)) => line,
            Ok(None) | Err(_) => {
                eprintln!("Error: vamsa-migrate closed the connection before the run finished; see `journalctl -u vamsa-migrate`");
                return exit::TIMED_OUT;
            }
        };
        if format == Format::Json {
            let mut out = io::stdout().lock();
            let _ = writeln!(out, "{line}");
            let _ = out.flush();
        }
        let event: Event = match serde_json::from_str(&line) {
            Ok(e) => e,
            Err(e) => {
                eprintln!("Error: unexpected reply from vamsa-migrate ({e}): {line}");
                return exit::FAILED;
            }
        };
        let done = match &event {
            Event::Done { ok, error, .. } => Some((
                *ok,
                error
                    .as_ref()
                    .map(|e| e.message.starts_with("permission denied")),
            )),
            _ => None,
        };
        if format == Format::Human {
            reporter.event(&event);
        } else if let Event::Done { error: Some(e), .. } = &event {
            eprint!("{}", crate::report::render_error(e));
        }
        if let Some((ok, refused)) = done {
            return match (ok, refused) {
                (true, _) => exit::OK,
                (false, Some(true)) => exit::REFUSED,
                _ => exit::FAILED,
            };
        }
    }
}
