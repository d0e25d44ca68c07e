//! A driver for `vamsa-migrate daemon`: a test-owned NOTIFY_SOCKET standing in for systemd
//! (sd_notify(3) datagrams), the daemon's stderr, both recorded with their arrival times, and
//! helpers for the trigger socket (one JSON request line in, JSON event lines out until the
//! `done` event, as README.md documents).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixDatagram, UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use command_fds::{CommandFdExt, FdMapping};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

use crate::cli::{Cli, Run};
use crate::wait::{eventually, lazy};

/// Where a recorded line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// One sd_notify datagram (e.g. `READY=1\nSTATUS=...`).
    Notify,
    /// One line of the daemon's stderr (its log with `log_target = "stderr"`).
    Log,
}

/// A notification or log line, stamped when the reader thread received it.
#[derive(Debug, Clone)]
pub struct Event {
    pub at: Instant,
    pub source: Source,
    pub text: String,
}

impl Event {
    pub fn is_notify_with(&self, needle: &str) -> bool {
        self.source == Source::Notify && self.text.contains(needle)
    }

    pub fn is_log_with(&self, needle: &str) -> bool {
        self.source == Source::Log && self.text.contains(needle)
    }
}

/// What the reader threads have received so far.
#[derive(Default)]
struct Record {
    events: Mutex<Vec<Event>>,
    /// Reads of the notify socket that found nothing within their 100 ms timeout.
    quiet_reads: AtomicUsize,
    /// The daemon's stderr reached end of file.
    log_closed: AtomicBool,
}

impl Record {
    fn push(&self, source: Source, text: String) {
        let event = Event {
            at: Instant::now(),
            source,
            text,
        };
        self.lock().push(event);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Event>> {
        // A reader thread that panicked left whole events behind; keep them.
        self.events.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn texts(&self, source: Source) -> Vec<String> {
        let events = self.lock();
        let of_source = events.iter().filter(|e| e.source == source);
        of_source.map(|e| e.text.clone()).collect()
    }

    fn log(&self) -> String {
        self.texts(Source::Log)
            .into_iter()
            .map(|line| line + "\n")
            .collect()
    }

    fn describe(&self) -> String {
        format!(
            "notifications so far: {:?}\nlog:\n{}",
            self.texts(Source::Notify),
            self.log()
        )
    }
}

fn config_text(url: &str, folder: &Path, socket: &Path, extra: &str) -> String {
    format!(
        "database_url = {url:?}\nmigrations_dir = {:?}\nsocket_path = {:?}\nsettle = \"200ms\"\nlog_target = \"stderr\"\n{extra}\n",
        folder.display().to_string(),
        socket.display().to_string()
    )
}

/// A running `vamsa-migrate daemon`; killed (SIGKILL) and reaped on drop.
pub struct Daemon {
    child: Child,
    /// The trigger socket (`socket_path`), in the daemon's temporary directory.
    pub socket: PathBuf,
    /// Its config file: `database_url`, `migrations_dir`, `socket_path`, `settle = "200ms"`,
    /// `log_target = "stderr"`, then the caller's extra lines.
    pub config: PathBuf,
    /// Just before the process was started.
    pub started: Instant,
    record: Arc<Record>,
    cli: Cli,
    _dir: tempfile::TempDir,
}

impl Daemon {
    /// Starts `cli` as `daemon` against `url` and `folder`; `extra` is appended to the config
    /// (TOML lines, e.g. `apply_on_start = false`; a setting given there must not be one of
    /// the config's own keys: set `settle` with `VAMSA_MIGRATE_SETTLE` on `cli` instead).
    pub fn start(cli: Cli, url: &str, folder: &Path, extra: &str) -> Daemon {
        Daemon::spawn(cli, url, folder, extra, None)
    }

    /// As systemd's socket activation would (sd_listen_fds(3)): `listener` as fd 3, with
    /// LISTEN_FDS=1 and LISTEN_PID naming the daemon's own pid.
    pub fn start_activated(
        cli: Cli,
        url: &str,
        folder: &Path,
        extra: &str,
        listener: &UnixListener,
    ) -> Daemon {
        Daemon::spawn(cli, url, folder, extra, Some(listener))
    }

    fn spawn(
        cli: Cli,
        url: &str,
        folder: &Path,
        extra: &str,
        activation: Option<&UnixListener>,
    ) -> Daemon {
        let dir = tempfile::tempdir().expect("create the daemon's directory");
        let socket = dir.path().join("trigger.sock");
        let notify_path = dir.path().join("notify.sock");
        let notify = UnixDatagram::bind(&notify_path).expect("bind the NOTIFY_SOCKET");
        notify
            .set_read_timeout(Some(Duration::from_millis(100)))
            .expect("set the NOTIFY_SOCKET's read timeout");
        let config = dir.path().join("config.toml");
        std::fs::write(&config, config_text(url, folder, &socket, extra))
            .expect("write the daemon's config");
        let mut cmd = match activation {
            Some(listener) => activated_command(&cli, listener),
            // The subcommand before the builder's flags: each subcommand takes its own.
            None => {
                let mut daemon = cli.clone();
                daemon.arg("daemon");
                daemon.command()
            }
        };
        cmd.env("VAMSA_MIGRATE_CONFIG", &config)
            .env("NOTIFY_SOCKET", &notify_path)
            .env_remove("JOURNAL_STREAM")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let started = Instant::now();
        let mut child = cmd.spawn().expect("start the daemon");
        let record = Arc::new(Record::default());
        record_notifications(notify, Arc::downgrade(&record));
        let stderr = child.stderr.take().expect("the daemon's stderr is piped");
        record_log(stderr, record.clone());
        Daemon {
            child,
            socket,
            config,
            started,
            record,
            cli,
            _dir: dir,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything received so far, in arrival order.
    pub fn events(&self) -> Vec<Event> {
        self.record.lock().clone()
    }

    /// The notifications received so far, in arrival order.
    pub fn messages(&self) -> Vec<String> {
        self.record.texts(Source::Notify)
    }

    /// The daemon's stderr so far, one `\n`-terminated line per log line.
    pub fn log(&self) -> String {
        self.record.log()
    }

    /// Waits for the first event from index `from` on that matches; returns its index and it.
    /// Fails at once when the daemon exits without it.
    #[track_caller]
    pub fn wait_event(&mut self, from: usize, pred: impl Fn(&Event) -> bool) -> (usize, Event) {
        let record = self.record.clone();
        let what = lazy(move || format!("a matching event; {}", record.describe()));
        let find = |events: &[Event]| {
            let mut later = events.iter().enumerate().skip(from);
            later.find(|(_, e)| pred(e)).map(|(i, e)| (i, e.clone()))
        };
        eventually(what, || {
            if let Some(found) = find(&self.events()) {
                return Some(found);
            }
            let status = self.finished()?;
            let found = find(&self.events());
            let describe = || self.record.describe();
            Some(found.unwrap_or_else(|| panic!("daemon exited ({status}); {}", describe())))
        })
    }

    /// Waits for a notification matching `pred` (among all received); returns it.
    #[track_caller]
    pub fn wait_notify(&mut self, pred: impl Fn(&str) -> bool) -> String {
        let matches = |e: &Event| e.source == Source::Notify && pred(&e.text);
        self.wait_event(0, matches).1.text
    }

    /// Waits for `READY=1`; returns that notification.
    #[track_caller]
    pub fn ready(&mut self) -> String {
        self.wait_notify(|m| m.contains("READY=1"))
    }

    /// Waits until the log contains `needle`.
    #[track_caller]
    pub fn wait_log(&self, needle: &str) {
        let record = self.record.clone();
        let what = lazy(move || format!("{needle:?} in the log:\n{}", record.log()));
        eventually(what, || self.log().contains(needle));
    }

    /// Sends `signal` to the daemon.
    pub fn signal(&self, signal: Signal) {
        let pid = i32::try_from(self.child.id()).expect("a pid fits in pid_t");
        kill(Pid::from_raw(pid), signal).expect("signal the daemon");
    }

    /// SIGKILL (`kill -9`) and reap it.
    /// Whether the daemon has exited (without waiting).
    pub fn has_exited(&mut self) -> bool {
        self.child.try_wait().expect("poll the daemon").is_some()
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits for the daemon to exit and for all it sent to be recorded; its exit code (-1 when
    /// killed by a signal).
    #[track_caller]
    pub fn wait_exit(&mut self) -> i32 {
        let record = self.record.clone();
        let what = lazy(move || format!("the daemon to exit; {}", record.describe()));
        let status = eventually(what, || self.finished());
        status.code().unwrap_or(-1)
    }

    /// The exit status once the daemon has exited and all it sent is recorded: its stderr is
    /// closed, and a whole quiet read of the notify socket began after the exit was seen.
    fn finished(&mut self) -> Option<ExitStatus> {
        let status = self.child.try_wait().expect("poll the daemon")?;
        let record = self.record.clone();
        let mark = record.quiet_reads.load(Ordering::SeqCst) + 2;
        eventually("the daemon's last notifications and log lines", || {
            record.quiet_reads.load(Ordering::SeqCst) >= mark
                && record.log_closed.load(Ordering::SeqCst)
        });
        Some(status)
    }

    /// `vamsa-migrate trigger ARGS` against this daemon's socket.
    pub fn trigger(&self, args: &[&str]) -> Run {
        let mut cli = self.cli.clone();
        cli.arg("trigger")
            .args(args)
            .env("VAMSA_MIGRATE_SOCKET_PATH", &self.socket);
        cli.run()
    }

    /// Sends one raw request line and reads events until `done`.
    pub fn request(&self, line: &[u8]) -> Vec<Value> {
        request(&self.socket, line)
    }

    /// Lets any user connect, so that the daemon itself must decide who may apply.
    pub fn open_socket_to_everyone(&self) {
        let everyone = std::fs::Permissions::from_mode(0o666);
        std::fs::set_permissions(&self.socket, everyone).expect("chmod the socket");
        let dir = self.socket.parent().expect("the socket is in a directory");
        let searchable = std::fs::Permissions::from_mode(0o755);
        std::fs::set_permissions(dir, searchable).expect("chmod the socket's directory");
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `sh -c` setting LISTEN_PID to its own pid, then `exec`ing the daemon (which keeps that pid),
/// with `listener` as fd 3.
fn activated_command(cli: &Cli, listener: &UnixListener) -> Command {
    let mut daemon = cli.clone();
    daemon.arg("daemon");
    let daemon = daemon.command();
    let mut sh = Command::new("sh");
    sh.arg("-c")
        .arg("LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES=trigger exec \"$0\" \"$@\"")
        .arg(daemon.get_program())
        .args(daemon.get_args());
    for (name, value) in daemon.get_envs() {
        match value {
            Some(value) => sh.env(name, value),
            None => sh.env_remove(name),
        };
    }
    let fd = listener
        .try_clone()
        .expect("duplicate the listening socket");
    let mapping = FdMapping {
        parent_fd: fd.into(),
        child_fd: 3,
    };
    sh.fd_mappings(vec![mapping]).expect("one mapping");
    sh.stdin(Stdio::null());
    sh
}

/// Reads the notify socket at once, as systemd does, until the [`Daemon`] is gone.
fn record_notifications(socket: UnixDatagram, record: Weak<Record>) {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 8192];
        while let Some(record) = record.upgrade() {
            match socket.recv(&mut buf) {
                Ok(n) => {
                    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                    record.push(Source::Notify, text);
                }
                Err(_) => {
                    record.quiet_reads.fetch_add(1, Ordering::SeqCst);
                }
            }
        }
    });
}

/// Records the daemon's stderr line by line until it is closed.
fn record_log(stderr: ChildStderr, record: Arc<Record>) {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stderr);
        let mut line = Vec::new();
        while reader.read_until(b'\n', &mut line).is_ok_and(|n| n > 0) {
            let text = String::from_utf8_lossy(&line);
            record.push(Source::Log, text.trim_end_matches('\n').to_string());
            line.clear();
        }
        record.log_closed.store(true, Ordering::SeqCst);
    });
}

/// Sends one raw request line to the trigger socket at `socket` and reads events (one JSON
/// object per line) until the `done` event or end of stream.
pub fn request(socket: &Path, line: &[u8]) -> Vec<Value> {
    let mut stream = connect(socket);
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("set the read timeout");
    stream.write_all(line).expect("send the request");
    let mut events = Vec::new();
    let mut reader = BufReader::new(stream);
    loop {
        let mut l = String::new();
        if reader.read_line(&mut l).expect("read an event") == 0 {
            break;
        }
        let v: Value = serde_json::from_str(&l).unwrap_or_else(|e| panic!("event {l:?}: {e}"));
        let done = v["event"] == "done";
        events.push(v);
        if done {
            break;
        }
    }
    events
}

/// One misbehaving client on `s`, by kind (`i % 4`): 512 bytes of binary garbage, an
/// unfinished request trickled a byte every 100 ms, a 70 KiB line (over the request limit), or
/// a well-formed `status`; then it waits up to 15 s for one line of answer. Shared by the fault
/// tests and the benchmark's "ping under abuse".
pub fn misbehave(mut s: UnixStream, i: usize) {
    match i % 4 {
        0 => {
            let bytes: Vec<u8> = (0..512).map(|j| ((i * 31 + j * 7) % 256) as u8).collect();
            let _ = s.write_all(&bytes);
        }
        1 => {
            for _ in 0..20 {
                if s.write_all(b"{").is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        2 => {
            let _ = s.write_all(&vec![b'a'; 70 * 1024]);
        }
        _ => {
            let _ = s.write_all(b"{\"command\":\"status\"}\n");
        }
    }
    let _ = s.set_read_timeout(Some(Duration::from_secs(15)));
    let _ = BufReader::new(s).read_line(&mut String::new());
}

/// Connects, retrying while the listen backlog is full (EAGAIN), as a real client should.
pub fn connect(socket: &Path) -> UnixStream {
    let what = format!("room in the listen backlog of {}", socket.display());
    eventually(what, || match UnixStream::connect(socket) {
        Ok(s) => Some(s),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => None,
        Err(e) => panic!("connect {}: {e}", socket.display()),
    })
}
