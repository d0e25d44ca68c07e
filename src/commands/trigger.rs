//! `vamsa-migrate trigger`: the deploy-hook client of the daemon's trigger socket. It prints the
//! same lines as `vamsa-migrate migrate` as the daemon's events arrive.

use std::io::{self, Write};
use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use crate::exit::Outcome;
use crate::protocol::{ErrorKind, Event, Request};
use crate::report::{Format, HumanOptions, Reporter};

/// Sends `request` and shows the answer until its `done`, or until `timeout`; first checks
/// that the socket's server runs as root, `daemon_user` or this user (else
/// [`Outcome::UntrustedServer`], nothing sent).
pub(crate) async fn run(
    socket: &Path,
    daemon_user: &str,
    request: Request,
    timeout: Option<Duration>,
    format: Format,
) -> Outcome {
    let stream = match connect(socket).await {
        Ok(s) => s,
        Err(outcome) => return outcome,
    };
    if let Err(outcome) = check_server(&stream, socket, daemon_user) {
        return outcome;
    }
    let conversation = converse(stream, request, format);
    match timeout {
        Some(limit) => match tokio::time::timeout(limit, conversation).await {
            Ok(outcome) => outcome,
            Err(_) => {
                eprintln!(
                    "Error: no answer from vamsa-migrate within {}; the run may still be going on: see `journalctl -u vamsa-migrate`",
                    humantime::format_duration(limit)
                );
                Outcome::NoAnswer
            }
        },
        None => conversation.await,
    }
}

async fn connect(socket: &Path) -> Result<UnixStream, Outcome> {
    UnixStream::connect(socket).await.map_err(|e| {
        if e.kind() == io::ErrorKind::PermissionDenied {
            eprintln!(
                "Error: permission denied on {}: run as root, or add this user to the vamsa-migrate group (adduser $USER vamsa-migrate, then log in again)",
                socket.display()
            );
            Outcome::Failed(ErrorKind::Refused)
        } else {
            eprintln!(
                "vamsa-migrate is not running: start it with `systemctl start vamsa-migrate` or run `vamsa-migrate migrate` ({}: {e})",
                socket.display()
            );
            Outcome::NotRunning
        }
    })
}

/// Whoever binds the path first answers on it: believe only a server running as root,
/// `daemon_user` or this user (SO_PEERCRED gives the listener's credentials, unix(7)).
fn check_server(stream: &UnixStream, socket: &Path, daemon_user: &str) -> Result<(), Outcome> {
    let server = match stream.peer_cred() {
        Ok(cred) => cred.uid(),
        Err(e) => {
            eprintln!(
                "Error: cannot tell who serves {} ({e}); nothing was sent",
                socket.display()
            );
            return Err(Outcome::UntrustedServer);
        }
    };
    let me = nix::unistd::geteuid().as_raw();
    let service = crate::daemon::peer::user_id(daemon_user);
    if server == 0 || server == me || Some(server) == service {
        return Ok(());
    }
    let name = nix::unistd::User::from_uid(server.into())
        .ok()
        .flatten()
        .map_or(String::new(), |u| format!(" ({})", u.name));
    eprintln!(
        "Error: {} is served by uid {server}{name}, not by root, daemon_user {daemon_user:?} or this user: another local user may have taken the daemon's place; nothing was sent. Check the socket's directory (`ls -ld {}`) and daemon_user.",
        socket.display(),
        socket.parent().unwrap_or(socket).display()
    );
    Err(Outcome::UntrustedServer)
}

async fn converse(stream: UnixStream, request: Request, format: Format) -> Outcome {
    let (read, mut write) = stream.into_split();
    let sent = match request.to_line() {
        Ok(line) => write.write_all(&line).await,
        Err(e) => Err(io::Error::other(e)),
    };
    if let Err(e) = sent {
        eprintln!("Error: cannot send the request to vamsa-migrate: {e}");
        return Outcome::OtherFailure;
    }
    let options = HumanOptions {
        apply_command: "vamsa-migrate trigger".into(),
        ..HumanOptions::default()
    };
    let mut reporter = Reporter::new(io::stdout(), Format::Human, options);
    let mut lines = BufReader::new(read).lines();
    loop {
        let line = match lines.next_line().await {
            Ok(Some(line)) => line,
            Ok(None) | Err(_) => {
                eprintln!("Error: vamsa-migrate closed the connection before the run finished; see `journalctl -u vamsa-migrate`");
                return Outcome::NoAnswer;
            }
        };
        if let Some(outcome) = show(&mut reporter, &line, format) {
            return outcome;
        }
    }
}

/// Shows one reply line; after the `done` event, the outcome it reports.
fn show(reporter: &mut Reporter<io::Stdout>, line: &str, format: Format) -> Option<Outcome> {
    if format == Format::Json {
        let mut out = io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }
    let event: Event = match serde_json::from_str(line) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("Error: unexpected reply from vamsa-migrate ({e}): {line}");
            return Some(Outcome::OtherFailure);
        }
    };
    if format == Format::Human {
        reporter.event(&event);
    } else if let Event::Done { error: Some(e), .. } = &event {
        eprint!("{}", crate::report::render_error(e));
    }
    match event {
        Event::Done { ok: true, .. } => Some(Outcome::Success),
        Event::Done { error, .. } => Some(Outcome::DaemonFailed(
            error.map_or(ErrorKind::Unknown, |e| e.kind),
        )),
        _ => None,
    }
}
