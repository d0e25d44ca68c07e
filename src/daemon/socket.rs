//! The trigger socket: a Unix stream socket speaking newline-delimited JSON. A request is one
//! line such as `{"command":"apply"}`; the reply is event lines ending with one `done` event.
//! Clients are untrusted: every read and write is bounded in size and time, and nothing a
//! client does can reach a run in progress except through the job queue.

use std::io;
use std::os::fd::FromRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::config::{DaemonSettings, PeerView, Settings};
use crate::daemon::peer::Peer;
use crate::daemon::runner::{Job, JobKind, RunnerStatus};
use crate::daemon::slots::{Full, Slot, Slots};
use crate::daemon::socket_file::{self, SocketFileError};
use crate::diagnosis::daemon_report;
use crate::protocol::{DaemonReply, ErrorKind, Event, Origin, Reply, Request, TriggerPeer};

/// Longest request line accepted.
pub(crate) const MAX_LINE: usize = 64 * 1024;
/// How long a client may take to send its request line.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client may take to read one reply line.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a connection may stay to send requests, from its accept: requests do not renew it
/// (a run it asked for is still relayed to its end).
const CONNECTION_LIFETIME: Duration = Duration::from_secs(30);

/// The listening socket and, when we created the file ourselves, its path (removed on exit).
pub(crate) struct TriggerSocket {
    pub(crate) listener: UnixListener,
    pub(crate) bound_path: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum SocketError {
    #[error("socket activation: {0}")]
    Activation(io::Error),
    #[error(transparent)]
    File(#[from] SocketFileError),
    #[error("socket_group {0:?} does not exist")]
    NoSuchGroup(String),
}

/// Takes the socket from systemd (`LISTEN_FDS`) or binds `socket_path` itself.
pub(crate) fn acquire(settings: &DaemonSettings) -> Result<TriggerSocket, SocketError> {
    let fds: Vec<(i32, String)> = sd_notify::listen_fds_with_names()
        .map_err(SocketError::Activation)?
        .collect();
    // Our unit passes one socket; with several, prefer the one named "trigger".
    let chosen = fds
        .iter()
        .find(|(_, name)| name == "trigger")
        .or(fds.first())
        .map(|(fd, _)| *fd);
    if let Some(fd) = chosen {
        // SAFETY: systemd passed us this descriptor (LISTEN_PID matched) and nothing else owns it.
        let std_listener = unsafe { std::os::unix::net::UnixListener::from_raw_fd(fd) };
        std_listener
            .set_nonblocking(true)
            .map_err(SocketError::Activation)?;
        let listener = UnixListener::from_std(std_listener).map_err(SocketError::Activation)?;
        return Ok(TriggerSocket {
            listener,
            bound_path: None,
        });
    }
    bind(&settings.socket_path, settings.socket_group.as_deref())
}

fn bind(path: &Path, group: Option<&str>) -> Result<TriggerSocket, SocketError> {
    let gid = match group {
        Some(group) => Some(
            crate::daemon::peer::group_id(group)
                .ok_or_else(|| SocketError::NoSuchGroup(group.into()))?,
        ),
        None => None,
    };
    let listener = socket_file::bind(path, gid)?;
    Ok(TriggerSocket {
        listener,
        bound_path: Some(path.to_path_buf()),
    })
}

/// What a connection may see and do: read the runner's status and the settings, queue jobs.
#[derive(Clone)]
pub(crate) struct Context {
    pub(crate) status: watch::Receiver<RunnerStatus>,
    pub(crate) settings: watch::Receiver<Arc<Settings>>,
    pub(crate) jobs: mpsc::UnboundedSender<Job>,
}

/// Accepts connections until the task is dropped.
pub(crate) async fn serve(listener: UnixListener, context: Context) {
    let slots = Slots::default();
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!("trigger socket accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let slot = slots.accept();
        let context = context.clone();
        tokio::task::spawn_local(async move {
            match slot {
                Ok(slot) => admit_and_handle(stream, slot, &context).await,
                Err(full) => refuse_full(stream, &full).await,
            }
        });
    }
}

async fn refuse_full(mut stream: UnixStream, full: &Full) {
    let _ = write_reply(&mut stream, refusal(ErrorKind::Overloaded, full.message())).await;
}

/// Identifies the peer (its credentials taken now, with the connection: the process may be
/// gone and its pid reused later), admits it within its share, then serves it.
async fn admit_and_handle(stream: UnixStream, mut slot: Slot, context: &Context) {
    let deadline = Instant::now() + CONNECTION_LIFETIME;
    let peer = Peer::of(&stream).ok();
    let applier = may_apply(peer.clone(), &context.settings).await;
    let uid = peer.as_ref().map_or(u32::MAX, |p| p.uid);
    if let Err(full) = slot.admit(uid, applier) {
        return refuse_full(stream, &full).await;
    }
    handle(stream, peer, applier, deadline, context).await;
}

/// The `done` of a request the daemon does not serve.
fn refusal(kind: ErrorKind, message: impl Into<String>) -> Reply {
    Event::done_failed(daemon_report(kind, message.into()), false).into()
}

async fn write_reply(
    stream: &mut (impl AsyncWriteExt + Unpin),
    reply: impl Into<Reply>,
) -> io::Result<()> {
    let mut line = serde_json::to_vec(&reply.into()).map_err(io::Error::other)?;
    line.push(b'\n');
    match tokio::time::timeout(WRITE_TIMEOUT, stream.write_all(&line)).await {
        Ok(result) => result,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "client does not read",
        )),
    }
}

enum Line {
    Request(String),
    Eof,
    TooLong,
    TimedOut,
    /// The connection's lifetime is over.
    Expired,
    Broken,
}

/// One line, within [`REQUEST_TIMEOUT`] and before `deadline` (the connection's end).
async fn read_line(reader: &mut BufReader<OwnedReadHalf>, deadline: Instant) -> Line {
    let mut buf = Vec::new();
    let read = async {
        loop {
            let available = match reader.fill_buf().await {
                Ok(b) => b,
                Err(_) => return Line::Broken,
            };
            if available.is_empty() {
                return if buf.is_empty() {
                    Line::Eof
                } else {
                    Line::Request(String::from_utf8_lossy(&buf).into_owned())
                };
            }
            let (chunk, done) = match available.iter().position(|b| *b == b'\n') {
                Some(i) => (&available[..i], Some(i + 1)),
                None => (available, None),
            };
            if buf.len() + chunk.len() > MAX_LINE {
                return Line::TooLong;
            }
            buf.extend_from_slice(chunk);
            let used = done.unwrap_or(chunk.len());
            reader.consume(used);
            if done.is_some() {
                return Line::Request(String::from_utf8_lossy(&buf).into_owned());
            }
        }
    };
    let line_deadline = Instant::now() + REQUEST_TIMEOUT;
    let (limit, expired) = if deadline < line_deadline {
        (deadline, Line::Expired)
    } else {
        (line_deadline, Line::TimedOut)
    };
    tokio::time::timeout_at(limit, read)
        .await
        .unwrap_or(expired)
}

/// Serves one connection: requests one after another until the client hangs up.
async fn handle(
    stream: UnixStream,
    peer: Option<Peer>,
    applier: bool,
    deadline: Instant,
    context: &Context,
) {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    loop {
        let request = match next_request(&mut reader, &mut write, deadline).await {
            Next::Request(request) => request,
            Next::Skip => continue,
            Next::Close => return,
        };
        let kind = match request {
            Request::Ping => {
                let pong = DaemonReply::Pong {
                    busy: context.status.borrow().busy,
                };
                if write_reply(&mut write, pong).await.is_err()
                    || write_reply(&mut write, Event::done_ok(0, false))
                        .await
                        .is_err()
                {
                    return;
                }
                continue;
            }
            Request::Apply => JobKind::Apply,
            Request::DryRun => JobKind::DryRun,
            Request::Status => JobKind::Status,
        };
        let who = describe_peer(peer.as_ref());
        let outsider = !applier;
        if outsider && kind == JobKind::Apply {
            tracing::warn!(PEER = %who, "refused an apply request from {who}: not root, the service user, or in allowed_users/allowed_groups");
            let message = format!("permission denied: {who} may not apply migrations");
            let _ = write_reply(&mut write, refusal(ErrorKind::Refused, message)).await;
            return;
        }
        let peer_view = context.settings.borrow().daemon.peer_view;
        if outsider && peer_view == PeerView::Ping {
            let message = format!("permission denied: {who} may not apply migrations, so it may only ping (peer_view = \"ping\")");
            let _ = write_reply(&mut write, refusal(ErrorKind::Refused, message)).await;
            return;
        }
        let origin = Origin::Trigger(trigger_peer(peer.clone()).await);
        if !relay_job(kind, origin, outsider, &context.jobs, &mut write).await {
            return;
        }
    }
}

/// What the connection holds next.
enum Next {
    Request(Request),
    /// An empty line, or one answered with an error: read on.
    Skip,
    Close,
}

/// Reads one request line; answers what is not a request (too long, too slow, not
/// understood) itself.
async fn next_request(
    reader: &mut BufReader<OwnedReadHalf>,
    write: &mut OwnedWriteHalf,
    deadline: Instant,
) -> Next {
    let line = match read_line(reader, deadline).await {
        Line::Request(line) => line,
        Line::Eof | Line::Broken => return Next::Close,
        Line::TooLong => {
            let message = format!("request line longer than {} KiB", MAX_LINE / 1024);
            let _ = write_reply(write, refusal(ErrorKind::BadRequest, message)).await;
            return Next::Close;
        }
        Line::Expired => {
            let message = format!(
                "this connection's lifetime ({}) is over; connect again",
                humantime::format_duration(CONNECTION_LIFETIME)
            );
            let _ = write_reply(write, refusal(ErrorKind::BadRequest, message)).await;
            return Next::Close;
        }
        Line::TimedOut => {
            let message = "timed out waiting for a request line";
            let _ = write_reply(write, refusal(ErrorKind::BadRequest, message)).await;
            return Next::Close;
        }
    };
    let line = line.trim();
    if line.is_empty() {
        return Next::Skip;
    }
    match Request::parse(line) {
        Ok(request) => Next::Request(request),
        Err(e) => match write_reply(write, refusal(ErrorKind::BadRequest, e.to_string())).await {
            Ok(()) => Next::Skip,
            Err(_) => Next::Close,
        },
    }
}

/// `uid 1000 (pid 4242)`, for the log and refusals.
fn describe_peer(peer: Option<&Peer>) -> String {
    peer.map_or("an unknown peer".to_string(), |p| {
        format!(
            "uid {} (pid {})",
            p.uid,
            p.pid.map_or("?".into(), |p| p.to_string())
        )
    })
}

/// Asks `peer::may_apply` on the blocking pool: it reads the user and group databases.
async fn may_apply(peer: Option<Peer>, settings: &watch::Receiver<Arc<Settings>>) -> bool {
    let Some(peer) = peer else {
        return false;
    };
    // Root and the service user need no look-up: never queue them behind the blocking pool.
    if peer.uid == 0 || peer.uid == nix::unistd::geteuid().as_raw() {
        return true;
    }
    let daemon: DaemonSettings = settings.borrow().daemon.clone();
    tokio::task::spawn_blocking(move || crate::daemon::peer::may_apply(&peer, &daemon))
        .await
        .unwrap_or(false)
}

/// Asks `peer::trigger_peer` on the blocking pool: it reads the user database and /proc.
async fn trigger_peer(peer: Option<Peer>) -> TriggerPeer {
    let unknown = TriggerPeer {
        uid: u32::MAX,
        user: None,
        pid: None,
        unit: None,
    };
    let Some(peer) = peer else {
        return unknown;
    };
    tokio::task::spawn_blocking(move || crate::daemon::peer::trigger_peer(&peer))
        .await
        .unwrap_or(unknown)
}

/// Queues the job and writes its replies, to an `outsider` (a peer that may not apply) as
/// [`Reply::for_outsider`] shows them; false when the connection is done for.
async fn relay_job(
    kind: JobKind,
    origin: Origin,
    outsider: bool,
    jobs: &mpsc::UnboundedSender<Job>,
    write: &mut OwnedWriteHalf,
) -> bool {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let job = Job {
        kind,
        origin,
        reply: Some(tx),
    };
    if jobs.send(job).is_err() {
        let _ = write_reply(
            write,
            refusal(ErrorKind::Stopping, "vamsa-migrate is stopping"),
        )
        .await;
        return false;
    }
    let mut client_gone = false;
    while let Some(reply) = rx.recv().await {
        let reply = if outsider {
            reply.for_outsider()
        } else {
            reply
        };
        // A client that went away does not stop the run: keep draining its replies.
        if !client_gone && write_reply(write, reply).await.is_err() {
            client_gone = true;
        }
    }
    !client_gone
}
