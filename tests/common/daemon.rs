//! A driver for `vamsa-migrate daemon` in tests: a test-owned NOTIFY_SOCKET standing in for
//! systemd, the daemon's stderr in a file, and helpers for the trigger socket.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::Run;

pub struct Daemon {
    pub child: Child,
    /// Filled by a thread that reads the notify socket at once, as systemd does.
    inbox: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    /// What has been taken from the inbox so far (see `pump`).
    pub messages: Vec<String>,
    pub socket: PathBuf,
    pub log: PathBuf,
    pub config: PathBuf,
    _dir: tempfile::TempDir,
}

pub fn config_text(url: &str, folder: &Path, socket: &Path, extra: &str) -> String {
    format!(
        "database_url = {url:?}\nmigrations_dir = {:?}\nsocket_path = {:?}\nsettle = \"200ms\"\nlog_target = \"stderr\"\n{extra}\n",
        folder.display().to_string(),
        socket.display().to_string()
    )
}

impl Daemon {
    pub fn start(url: &str, folder: &Path, extra: &str) -> Daemon {
        Daemon::start_with(url, folder, extra, |_| {})
    }

    pub fn start_with(
        url: &str,
        folder: &Path,
        extra: &str,
        tweak: impl FnOnce(&mut std::process::Command),
    ) -> Daemon {
        Daemon::spawn(url, folder, extra, None, tweak)
    }

    /// Starts the daemon; with `activation_fd`, as systemd would: that listening socket as fd 3
    /// with LISTEN_FDS=1 and LISTEN_PID set to the daemon's own pid.
    pub fn spawn(
        url: &str,
        folder: &Path,
        extra: &str,
        activation_fd: Option<i32>,
        tweak: impl FnOnce(&mut std::process::Command),
    ) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("trigger.sock");
        let notify_path = dir.path().join("notify.sock");
        let notify = UnixDatagram::bind(&notify_path).unwrap();
        notify
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let config = dir.path().join("config.toml");
        std::fs::write(&config, config_text(url, folder, &socket, extra)).unwrap();
        let log = dir.path().join("daemon.log");
        let mut cmd = super::bin();
        if let Some(fd) = activation_fd {
            // `exec` keeps the shell's pid, which is what LISTEN_PID must name.
            let mut sh = std::process::Command::new("sh");
            sh.arg("-c")
                .arg("LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES=trigger exec \"$0\" daemon")
                .arg(cmd.get_program());
            for (k, v) in cmd.get_envs() {
                match v {
                    Some(v) => sh.env(k, v),
                    None => sh.env_remove(k),
                };
            }
            // SAFETY: only async-signal-safe calls between fork and exec.
            unsafe {
                std::os::unix::process::CommandExt::pre_exec(&mut sh, move || {
                    if fd == 3 {
                        if libc::fcntl(3, libc::F_SETFD, 0) < 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                    } else if libc::dup2(fd, 3) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            cmd = sh;
        } else {
            cmd.arg("daemon");
        }
        cmd.env("VAMSA_MIGRATE_CONFIG", &config)
            .env("NOTIFY_SOCKET", &notify_path)
            .env_remove("JOURNAL_STREAM")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        tweak(&mut cmd);
        let child = cmd.spawn().unwrap();
        let inbox = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let reader_inbox = std::sync::Arc::downgrade(&inbox);
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 4096];
            // Ends once the Daemon (and with it the inbox) is gone.
            while let Some(inbox) = reader_inbox.upgrade() {
                if let Ok(n) = notify.recv(&mut buf) {
                    inbox
                        .lock()
                        .unwrap()
                        .push(String::from_utf8_lossy(&buf[..n]).into_owned());
                }
            }
        });
        Daemon {
            child,
            inbox,
            messages: Vec::new(),
            socket,
            log,
            config,
            _dir: dir,
        }
    }

    /// Lets any user connect, so that the daemon itself must decide who may apply.
    pub fn open_socket_to_everyone(&self) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&self.socket, std::fs::Permissions::from_mode(0o666)).unwrap();
        let dir = self.socket.parent().unwrap();
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    /// Moves what the reader thread received into `messages`.
    pub fn pump(&mut self) {
        let mut inbox = self.inbox.lock().unwrap();
        self.messages.append(&mut inbox);
    }

    /// Waits for a notification matching `pred`; returns it. Keeps all messages for later.
    #[track_caller]
    pub fn wait_notify(&mut self, pred: impl Fn(&str) -> bool, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            self.pump();
            if let Some(m) = self.messages.iter().find(|m| pred(m)) {
                return m.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no matching notification; got {:?}\nlog:\n{}",
                self.messages,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
            if let Ok(Some(status)) = self.child.try_wait() {
                // Take what is left before giving up.
                std::thread::sleep(Duration::from_millis(200));
                self.pump();
                if let Some(m) = self.messages.iter().find(|m| pred(m)) {
                    return m.clone();
                }
                panic!(
                    "daemon exited ({status}) before the notification; got {:?}\nlog:\n{}",
                    self.messages,
                    self.log()
                );
            }
        }
    }

    pub fn ready(&mut self) -> String {
        self.wait_notify(|m| m.contains("READY=1"), Duration::from_secs(30))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    #[track_caller]
    pub fn wait_log(&self, needle: &str, within: Duration) {
        let deadline = Instant::now() + within;
        while !self.log().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "{needle:?} not logged within {within:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: sending a signal to our own child.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    pub fn wait_exit(&mut self, within: Duration) -> i32 {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code().unwrap_or(-1);
            }
            assert!(
                Instant::now() < deadline,
                "daemon did not exit:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn trigger(&self, args: &[&str]) -> Run {
        Run::from(
            super::bin()
                .arg("trigger")
                .args(args)
                .env("VAMSA_MIGRATE_SOCKET_PATH", &self.socket)
                .output()
                .unwrap(),
        )
    }

    /// Sends one raw request line and reads events until `done`.
    pub fn request(&self, line: &[u8]) -> Vec<Value> {
        request(&self.socket, line)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn request(socket: &Path, line: &[u8]) -> Vec<Value> {
    let mut stream = connect(socket);
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    stream.write_all(line).unwrap();
    let mut events = Vec::new();
    let mut reader = BufReader::new(stream);
    loop {
        let mut l = String::new();
        if reader.read_line(&mut l).unwrap() == 0 {
            break;
        }
        let v: Value = serde_json::from_str(&l).unwrap();
        let done = v["event"] == "done";
        events.push(v);
        if done {
            break;
        }
    }
    events
}

/// Connects, retrying while the listen backlog is full (EAGAIN), as a real client should.
pub fn connect(socket: &Path) -> UnixStream {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match UnixStream::connect(socket) {
            Ok(s) => return s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Err(e) => panic!("connect {}: {e}", socket.display()),
        }
    }
}
