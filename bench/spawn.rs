//! Running one command for a measurement: its wall time and the rusage of that command alone.
//!
//! Linux gives a child the high-water RSS of the process that spawned it (execve(2) keeps the
//! old memory's peak in the new program's `ru_maxrss`), so spawning from this (large) process
//! would inflate every peak-RSS figure. Each command is therefore started by a runner: this
//! program re-executed, small, which waits for that one child and reports
//! getrusage(RUSAGE_CHILDREN) (Linux: `ru_maxrss` in KiB). With one child, that is exactly its
//! figures, including the children it waited for, as wait4(2) would give them.

use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Instant;

use nix::sys::resource::{getrusage, UsageWho};
use nix::sys::time::TimeVal;
use serde::{Deserialize, Serialize};

use crate::procfs::proc_status_kib;
use crate::{err, Res};

/// Set in the runner's environment: this process serves one request instead of benchmarking.
pub(crate) const RUNNER_ENV: &str = "VAMSA_BENCH_RUNNER";

/// One command: its argv, its whole environment, and files for its stdout and stderr.
#[derive(Serialize, Deserialize)]
pub(crate) struct RunRequest {
    pub(crate) argv: Vec<String>,
    pub(crate) env: Vec<(String, String)>,
    pub(crate) stdout: PathBuf,
    pub(crate) stderr: PathBuf,
}

#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub(crate) struct RunResult {
    pub(crate) wall_us: u64,
    pub(crate) maxrss_kib: i64,
    /// Exit code, or 128 + signal.
    pub(crate) code: i32,
    pub(crate) utime_us: u64,
    pub(crate) stime_us: u64,
    /// The runner's own peak RSS (VmHWM) when it started the command: a floor under `maxrss_kib`.
    pub(crate) runner_hwm_kib: Option<u64>,
    pub(crate) error: Option<String>,
}

impl RunResult {
    pub(crate) fn ms(&self) -> f64 {
        self.wall_us as f64 / 1000.0
    }

    pub(crate) fn rss_mib(&self) -> f64 {
        self.maxrss_kib as f64 / 1024.0
    }
}

/// Runs `req` through a fresh runner; an error when the command could not be run at all.
pub(crate) fn measure(req: &RunRequest) -> Res<RunResult> {
    let exe = std::env::current_exe().map_err(err("finding this program"))?;
    let mut runner = Command::new(exe)
        .env(RUNNER_ENV, "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(err("starting the runner"))?;
    let line = serde_json::to_string(req).map_err(err("encoding a request"))?;
    if let Some(mut stdin) = runner.stdin.take() {
        stdin
            .write_all(line.as_bytes())
            .map_err(err("sending the request"))?;
    }
    let output = runner
        .wait_with_output()
        .map_err(err("waiting for the runner"))?;
    let result: RunResult =
        serde_json::from_slice(&output.stdout).map_err(err("the runner's answer"))?;
    match &result.error {
        Some(e) => Err(e.clone()),
        None => Ok(result),
    }
}

/// The runner: reads one request from stdin, runs it, writes the result to stdout.
pub(crate) fn serve() {
    let mut line = String::new();
    let result = match io::stdin().read_to_string(&mut line) {
        Err(e) => failed(format!("reading the request: {e}")),
        Ok(_) => match serde_json::from_str::<RunRequest>(&line) {
            Ok(req) => run_one(&req),
            Err(e) => failed(format!("bad request: {e}")),
        },
    };
    let text = serde_json::to_string(&result).unwrap_or_default();
    let _ = io::stdout().write_all(text.as_bytes());
}

fn failed(error: String) -> RunResult {
    RunResult {
        error: Some(error),
        ..RunResult::default()
    }
}

fn run_one(req: &RunRequest) -> RunResult {
    let (Ok(stdout), Ok(stderr)) = (fs::File::create(&req.stdout), fs::File::create(&req.stderr))
    else {
        return failed("cannot create the output files".into());
    };
    let Some((program, args)) = req.argv.split_first() else {
        return failed("an empty command".into());
    };
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env_clear()
        .envs(req.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr);
    let runner_hwm_kib = proc_status_kib("self", "VmHWM");
    let started = Instant::now();
    let status = match cmd.spawn().and_then(|mut child| child.wait()) {
        Ok(status) => status,
        Err(e) => return failed(format!("cannot run {program}: {e}")),
    };
    let wall = started.elapsed();
    let usage = match getrusage(UsageWho::RUSAGE_CHILDREN) {
        Ok(usage) => usage,
        Err(e) => return failed(format!("getrusage: {e}")),
    };
    let micros = |t: TimeVal| t.tv_sec() as u64 * 1_000_000 + t.tv_usec() as u64;
    RunResult {
        wall_us: wall.as_micros() as u64,
        maxrss_kib: usage.max_rss(),
        code: status
            .code()
            .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)),
        utime_us: micros(usage.user_time()),
        stime_us: micros(usage.system_time()),
        runner_hwm_kib,
        error: None,
    }
}
