//! Workload 4: the daemon, driven by the test kit's daemon driver (a test-owned NOTIFY_SOCKET,
//! stderr and notifications stamped on arrival): exec -> READY=1, a new migration noticed, a
//! triggered apply against its psql floor, and the idle daemon's memory and CPU.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use vamsa_testkit::cli::Cli;
use vamsa_testkit::daemon::{connect, Daemon};
use vamsa_testkit::Signal;

use crate::ctx::{median, Ctx};
use crate::folders::{journal_entry, journal_text, migration_sql, tag, Folder};
use crate::procfs::{clock_ticks_per_second, proc_cpu_ticks, proc_status_kib, proc_threads};
use crate::table::{fmt_n, mib, ms, Table};
use crate::{err, progress, Res};

/// What the repetitions measured, in ms, one value per repetition.
#[derive(Default)]
struct Samples {
    ready: Vec<f64>,
    pending_log: Vec<f64>,
    pending_status: Vec<f64>,
    applied: Vec<f64>,
    done: Vec<f64>,
    floors: Vec<f64>,
    idle: Option<Idle>,
}

/// The daemon over the idle window of the last repetition (/proc figures; KiB and ticks).
struct Idle {
    cpu_before: Option<u64>,
    cpu_after: Option<u64>,
    rss_before: Option<u64>,
    rss_after: Option<u64>,
    hwm: Option<u64>,
    threads: Option<String>,
}

/// `folder` is applied in `db`; each repetition starts the daemon on a copy of it and adds one
/// migration.
pub(crate) fn bench_daemon(ctx: &mut Ctx, folder: &Folder, db: &str, table: &mut Table) -> Res<()> {
    let copy = vamsa_testkit::folder::Folder::copy_of(&folder.dir);
    // The floor of a triggered apply: the same migration's statements, BEGIN to COMMIT, timed by
    // psql (\\timing) over its open connection, in a database holding the table it builds on.
    let floor_db = ctx.new_db("trigger_floor")?;
    let base_table = migration_sql(folder.n - 1);
    let base_table = base_table
        .split("--> statement-breakpoint")
        .next()
        .unwrap_or_default();
    ctx.psql(&floor_db, base_table)?;
    let mut entries: Vec<serde_json::Value> = (0..folder.n).map(journal_entry).collect();
    let mut samples = Samples::default();
    for rep in 0..ctx.p.reps {
        progress(&format!(
            "daemon (N={} applied): repetition {}/{}",
            fmt_n(folder.n),
            rep + 1,
            ctx.p.reps
        ));
        ctx.checkpoint()?;
        let mut d = start(ctx, db, copy.path());
        measure(
            ctx,
            &mut d,
            copy.path(),
            &mut entries,
            &floor_db,
            &mut samples,
        )?;
        if rep + 1 == ctx.p.reps {
            samples.idle = Some(idle(ctx, &d));
        }
        stop(d)?;
    }
    ctx.drop_db(&floor_db)?;
    report_latencies(ctx, table, folder.n, &samples);
    if let Some(idle) = &samples.idle {
        report_idle(ctx, table, folder.n, idle, &samples);
    }
    Ok(())
}

/// The daemon on `db` and `dir`, with the bench's settle time (and no backups).
pub(crate) fn start(ctx: &Ctx, db: &str, dir: &Path) -> Daemon {
    let mut cli = Cli::new(&ctx.bin);
    cli.env(
        "VAMSA_MIGRATE_SETTLE",
        format!("{}ms", ctx.p.settle.as_millis()),
    );
    let mut extra = String::new();
    if ctx.has_backup {
        extra.push_str("backup_enabled = false\n");
    }
    if ctx.has_rehearsal {
        extra.push_str("rehearse = \"never\"\n");
    }
    Daemon::start(cli, &ctx.url(db), dir, &extra)
}

pub(crate) fn stop(mut d: Daemon) -> Res<()> {
    d.signal(Signal::SIGTERM);
    match d.wait_exit() {
        0 => Ok(()),
        code => Err(format!("daemon exited with {code}:\n{}", log_tail(&d))),
    }
}

fn log_tail(d: &Daemon) -> String {
    let log = d.log();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

fn ms_between(from: Instant, to: Instant) -> f64 {
    to.saturating_duration_since(from).as_secs_f64() * 1000.0
}

/// One repetition: READY=1, then a new migration written and noticed, then triggered.
fn measure(
    ctx: &Ctx,
    d: &mut Daemon,
    dir: &Path,
    entries: &mut Vec<serde_json::Value>,
    floor_db: &str,
    s: &mut Samples,
) -> Res<()> {
    let (_, ready) = d.wait_event(0, |e| e.is_notify_with("READY=1"));
    s.ready.push(ms_between(d.started, ready.at));
    // A new migration arrives: the .sql file, then the journal rewritten in place (as
    // drizzle-kit does).
    let i = entries.len();
    let mark = d.events().len();
    let copy_started = Instant::now();
    fs::write(dir.join(format!("{}.sql", tag(i))), migration_sql(i))
        .map_err(err("new migration"))?;
    entries.push(journal_entry(i));
    fs::write(dir.join("meta/_journal.json"), journal_text(entries)).map_err(err("journal"))?;
    let (_, log) = d.wait_event(mark, |e| e.is_log_with("pending migration detected"));
    let (_, status) = d.wait_event(mark, |e| e.is_notify_with("STATUS=1 pending"));
    s.pending_log.push(ms_between(copy_started, log.at));
    s.pending_status.push(ms_between(copy_started, status.at));
    let (first, all) = trigger_apply(&d.socket).map_err(|e| format!("{e}\n{}", log_tail(d)))?;
    s.applied.push(first.as_secs_f64() * 1000.0);
    s.done.push(all.as_secs_f64() * 1000.0);
    s.floors
        .push(timed_transaction(ctx, floor_db, &migration_sql(i))?);
    Ok(())
}

/// The daemon's CPU and memory over the idle window (after a second to settle).
fn idle(ctx: &Ctx, d: &Daemon) -> Idle {
    progress(&format!("daemon idle for {} s", ctx.p.idle.as_secs()));
    std::thread::sleep(Duration::from_secs(1));
    let pid = d.pid();
    let cpu_before = proc_cpu_ticks(pid);
    let rss_before = proc_status_kib(&pid.to_string(), "VmRSS");
    std::thread::sleep(ctx.p.idle);
    Idle {
        cpu_before,
        cpu_after: proc_cpu_ticks(pid),
        rss_before,
        rss_after: proc_status_kib(&pid.to_string(), "VmRSS"),
        hwm: proc_status_kib(&pid.to_string(), "VmHWM"),
        threads: proc_threads(pid),
    }
}

/// Sends `{"command":"apply"}` and reads the reply; the time of the first `applied` and of `done`.
fn trigger_apply(socket: &Path) -> Res<(Duration, Duration)> {
    let started = Instant::now();
    let mut stream = connect(socket);
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .map_err(err("socket"))?;
    stream
        .write_all(b"{\"command\":\"apply\"}\n")
        .map_err(err("sending the trigger"))?;
    let mut reader = BufReader::new(stream);
    let mut first_applied = None;
    let mut line = String::new();
    loop {
        line.clear();
        if reader
            .read_line(&mut line)
            .map_err(err("reading the reply"))?
            == 0
        {
            return Err("the daemon closed the trigger connection before done".into());
        }
        let now = started.elapsed();
        let event: serde_json::Value = serde_json::from_str(&line).map_err(err("trigger reply"))?;
        match event["event"].as_str() {
            Some("applied") if first_applied.is_none() => first_applied = Some(now),
            Some("done") => {
                if event["ok"] != serde_json::Value::Bool(true) {
                    return Err(format!("the triggered run failed: {line}"));
                }
                let first =
                    first_applied.ok_or_else(|| format!("no applied event before done: {line}"))?;
                return Ok((first, now));
            }
            _ => {}
        }
    }
}

/// Runs `sql` as one transaction through psql with `\\timing on`; the sum of the statement
/// times (BEGIN to COMMIT, client-observed, no process start or connection set-up), in ms.
fn timed_transaction(ctx: &Ctx, db: &str, sql: &str) -> Res<f64> {
    let file = ctx.path("timed.sql");
    fs::write(&file, format!("\\timing on\nBEGIN;\n{sql}\nCOMMIT;\n")).map_err(err("timed.sql"))?;
    let out = ctx
        .cluster
        .psql_command(db)
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-f"])
        .arg(&file)
        .output()
        .map_err(err("psql"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "psql (floor): {text}{}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let times: Vec<f64> = text
        .lines()
        .filter_map(|l| l.strip_prefix("Time: "))
        .filter_map(|t| t.split_whitespace().next()?.parse().ok())
        .collect();
    if times.is_empty() {
        return Err(format!("psql printed no timings: {text}"));
    }
    Ok(times.iter().sum())
}

fn report_latencies(ctx: &Ctx, table: &mut Table, n: usize, s: &Samples) {
    let n = fmt_n(n);
    let settle_ms = ctx.p.settle.as_secs_f64() * 1000.0;
    table.row(
        "4. daemon: exec -> READY=1 (nothing pending)",
        &n,
        ms(median(&s.ready)),
        "",
        String::new(),
        None,
    );
    let target = settle_ms + 100.0;
    for (what, values) in [
        (
            "4. daemon: file copied -> \"pending migration detected\"",
            &s.pending_log,
        ),
        (
            "4. daemon: file copied -> STATUS \"1 pending\"",
            &s.pending_status,
        ),
    ] {
        let m = median(values);
        table.row(
            what,
            &n,
            ms(m),
            &format!("< settle {settle_ms:.0} + 100 ms"),
            format!("{:.2}x", m / target),
            Some(m < target),
        );
    }
    let a = median(&s.applied);
    table.row(
        "4. daemon: trigger -> first applied event",
        &n,
        ms(a),
        "< 20 ms",
        format!("{:.2}x", a / 20.0),
        Some(a < 20.0),
    );
    table.row(
        "4. daemon: trigger -> first applied event, floor",
        "1",
        ms(median(&s.floors)),
        "psql: BEGIN..COMMIT",
        format!("{:.2}x", a / median(&s.floors)),
        None,
    );
    table.row(
        "4. daemon: trigger -> done event",
        &n,
        ms(median(&s.done)),
        "",
        String::new(),
        None,
    );
}

fn report_idle(ctx: &Ctx, table: &mut Table, n: usize, idle: &Idle, s: &Samples) {
    let n = fmt_n(n);
    let rss = idle.rss_after.unwrap_or(0) as f64 / 1024.0;
    table.row(
        "4. daemon: idle RSS (VmRSS)",
        &n,
        mib(rss),
        "< 15 MiB",
        format!("{:.2}x", rss / 15.0),
        Some(rss < 15.0),
    );
    let ticks = idle
        .cpu_after
        .zip(idle.cpu_before)
        .map(|(a, b)| a.saturating_sub(b));
    let hz = clock_ticks_per_second();
    let idle_s = ctx.p.idle.as_secs();
    table.row(
        &format!("4. daemon: idle CPU over {idle_s} s (utime+stime)"),
        &n,
        ticks.map_or("?".into(), |t| {
            format!("{t} ticks = {:.0} ms", t as f64 * 1000.0 / hz)
        }),
        "0",
        String::new(),
        ticks.map(|t| t == 0),
    );
    table.notes.push(format!(
        "daemon: VmRSS {} -> {} KiB over the idle window, VmHWM {} KiB, {} threads; READY runs {:?} ms; pending (log) {:?} ms; trigger->applied {:?} ms",
        idle.rss_before.unwrap_or(0),
        idle.rss_after.unwrap_or(0),
        idle.hwm.unwrap_or(0),
        idle.threads.clone().unwrap_or_default(),
        s.ready.iter().map(|v| v.round() as i64).collect::<Vec<_>>(),
        s.pending_log.iter().map(|v| v.round() as i64).collect::<Vec<_>>(),
        s.applied.iter().map(|v| (v * 10.0).round() / 10.0).collect::<Vec<_>>(),
    ));
}
