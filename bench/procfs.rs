//! Figures of a running process from Linux's /proc (proc(5)).

use std::fs;

/// A `kB` field of /proc/PID/status (e.g. `VmRSS`, `VmHWM`), in KiB; `pid` may be `self`.
pub(crate) fn proc_status_kib(pid: &str, field: &str) -> Option<u64> {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// utime + stime of a process, in clock ticks (see [`clock_ticks_per_second`]).
pub(crate) fn proc_cpu_ticks(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 of stat(5); `after` starts at field 3.
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// The number of process "Threads" (/proc/PID/status).
pub(crate) fn proc_threads(pid: u32) -> Option<String> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("Threads:"))?;
    Some(line["Threads:".len()..].trim().to_string())
}

/// sysconf(_SC_CLK_TCK): the unit of the /proc CPU times (100 on Linux), at least 1.
pub(crate) fn clock_ticks_per_second() -> f64 {
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK);
    ticks.ok().flatten().unwrap_or(100).max(1) as f64
}
