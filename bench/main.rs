//! `cargo bench --bench migrate`: the performance figures of vamsa-migrate, measured side by side
//! in one run against a real PostgreSQL (fsync on) that this program starts and removes itself.
//!
//! Run it with `cargo bench --bench migrate` (it does nothing without `--bench`, so that
//! `cargo test --all-targets` skips it). Environment: `BENCH_REPS` (default 5) repetitions, medians reported; `BENCH_QUICK=1` for
//! smaller N (a smoke run, not the figures of record); `VAMSA_MIGRATE_BIN` to measure another
//! binary than the one Cargo builds for this bench; `PG_BIN_DIR` as for the tests.
//!
//! Every child process (vamsa-migrate, psql) is started by a small helper process (this program
//! re-executed) and reaped with `wait4`: Linux gives a child the high-water RSS of the process
//! that spawned it, so spawning from this (large) process would inflate every peak-RSS figure.

use std::fs;
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use vamsa_migrate::pgcluster::{ClusterOptions, TempCluster};

const HELPER_ENV: &str = "VAMSA_BENCH_SPAWN_HELPER";

fn main() {
    if std::env::var_os(HELPER_ENV).is_some() {
        helper::serve();
        return;
    }
    // `cargo bench` passes `--bench`; `cargo test --benches` (or `--all-targets`) does not, and a
    // five-minute run has no place in a test run.
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("bench: not run (no --bench argument); use `cargo bench --bench migrate`");
        return;
    }
    // First thing, while this process is still small: the helper inherits our high-water RSS.
    let spawner = match Spawner::start() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("bench: cannot start the spawn helper: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = run(spawner) {
        eprintln!("bench: {e}");
        std::process::exit(1);
    }
}

type Res<T> = Result<T, String>;

fn err<E: std::fmt::Display>(what: &str) -> impl FnOnce(E) -> String + '_ {
    move |e| format!("{what}: {e}")
}

// ---------------------------------------------------------------------------------------------
// Parameters

struct Params {
    quick: bool,
    reps: usize,
    /// Workload 1: applied to an empty database.
    apply_ns: [usize; 2],
    /// Workload 2 and the daemon: this many already applied.
    uptodate_n: usize,
    /// Workload 3 and `new`: small and large folder (plus N = 1 as the fixed-cost baseline).
    scan_ns: [usize; 2],
    idle: Duration,
    settle: Duration,
}

impl Params {
    fn from_env() -> Params {
        let quick = std::env::var("BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
        let reps = std::env::var("BENCH_REPS")
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .filter(|r| *r > 0)
            .unwrap_or(if quick { 3 } else { 5 });
        if quick {
            Params {
                quick,
                reps,
                apply_ns: [100, 500],
                uptodate_n: 500,
                scan_ns: [100, 1_000],
                idle: Duration::from_secs(3),
                settle: Duration::from_millis(500),
            }
        } else {
            Params {
                quick,
                reps,
                apply_ns: [200, 2_000],
                uptodate_n: 2_000,
                scan_ns: [1_000, 10_000],
                idle: Duration::from_secs(10),
                settle: Duration::from_millis(500),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The spawn helper: runs one command at a time, reports wall time and rusage from wait4.

#[derive(Serialize, Deserialize)]
struct RunRequest {
    argv: Vec<String>,
    env: Vec<(String, String)>,
    stdout: PathBuf,
    stderr: PathBuf,
}

#[derive(Serialize, Deserialize, Debug, Clone, Default)]
struct RunResult {
    wall_us: u64,
    maxrss_kib: i64,
    /// Exit code, or 128 + signal.
    code: i32,
    utime_us: u64,
    stime_us: u64,
    error: Option<String>,
}

impl RunResult {
    fn ms(&self) -> f64 {
        self.wall_us as f64 / 1000.0
    }
    fn rss_mib(&self) -> f64 {
        self.maxrss_kib as f64 / 1024.0
    }
}

mod helper {
    use super::*;

    pub fn serve() {
        let stdin = io::stdin();
        let mut out = io::stdout().lock();
        for line in stdin.lock().lines() {
            let Ok(line) = line else { return };
            let result = match serde_json::from_str::<RunRequest>(&line) {
                Ok(req) => run_one(&req),
                Err(e) => RunResult {
                    error: Some(format!("bad request: {e}")),
                    ..RunResult::default()
                },
            };
            let mut text = serde_json::to_string(&result).unwrap_or_default();
            text.push('\n');
            if out
                .write_all(text.as_bytes())
                .and_then(|_| out.flush())
                .is_err()
            {
                return;
            }
        }
    }

    fn run_one(req: &RunRequest) -> RunResult {
        let fail = |e: String| RunResult {
            error: Some(e),
            ..RunResult::default()
        };
        let (Ok(stdout), Ok(stderr)) =
            (fs::File::create(&req.stdout), fs::File::create(&req.stderr))
        else {
            return fail("cannot create the output files".into());
        };
        let mut cmd = Command::new(&req.argv[0]);
        cmd.args(&req.argv[1..])
            .env_clear()
            .envs(req.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        let started = Instant::now();
        let child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => return fail(format!("cannot run {}: {e}", req.argv[0])),
        };
        let mut status = 0;
        // SAFETY: rusage is plain data; wait4 fills it for our own child.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        loop {
            // SAFETY: waiting for our own child with valid out-pointers.
            let r = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
            if r >= 0 || io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
                break;
            }
        }
        let wall = started.elapsed();
        let code = if libc::WIFEXITED(status) {
            libc::WEXITSTATUS(status)
        } else {
            128 + libc::WTERMSIG(status)
        };
        let tv = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
        RunResult {
            wall_us: wall.as_micros() as u64,
            maxrss_kib: usage.ru_maxrss,
            code,
            utime_us: tv(usage.ru_utime),
            stime_us: tv(usage.ru_stime),
            error: None,
        }
    }
}

struct Spawner {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Spawner {
    fn start() -> io::Result<Spawner> {
        let mut child = Command::new(std::env::current_exe()?)
            .env(HELPER_ENV, "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        Ok(Spawner {
            child,
            stdin,
            stdout,
        })
    }

    fn run(&mut self, req: &RunRequest) -> Res<RunResult> {
        let mut line = serde_json::to_string(req).map_err(err("encoding a request"))?;
        line.push('\n');
        self.stdin
            .write_all(line.as_bytes())
            .and_then(|_| self.stdin.flush())
            .map_err(err("spawn helper"))?;
        let mut answer = String::new();
        self.stdout
            .read_line(&mut answer)
            .map_err(err("spawn helper"))?;
        let result: RunResult =
            serde_json::from_str(&answer).map_err(err("spawn helper answer"))?;
        match &result.error {
            Some(e) => Err(e.clone()),
            None => Ok(result),
        }
    }

    /// The helper's own peak RSS: a floor under every child's ru_maxrss.
    fn own_hwm_kib(&self) -> Option<u64> {
        proc_status_kib(self.child.id() as i32, "VmHWM")
    }
}

impl Drop for Spawner {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// Generated Drizzle folders

const WHEN_BASE: i64 = 1_700_000_000_000;

fn tag(i: usize) -> String {
    format!("{i:04}_bench_step_{i}")
}

fn when(i: usize) -> i64 {
    WHEN_BASE + i as i64 * 60_000
}

/// Migration `i`, as drizzle-kit writes it: 3 to 5 statements (tables, indexes, columns,
/// foreign keys) separated by `--> statement-breakpoint`.
fn migration_sql(i: usize) -> String {
    let mut statements = vec![format!(
        "CREATE TABLE \"t{i}\" (\n\t\"id\" serial PRIMARY KEY NOT NULL,\n\t\"name\" text NOT NULL,\n\
         \t\"parent_id\" integer,\n\t\"created_at\" timestamp DEFAULT now() NOT NULL\n);\n"
    )];
    statements.push(format!(
        "CREATE INDEX \"t{i}_name_idx\" ON \"t{i}\" USING btree (\"name\");"
    ));
    if i > 0 {
        let p = i - 1;
        statements.push(format!(
            "ALTER TABLE \"t{i}\" ADD CONSTRAINT \"t{i}_parent_id_t{p}_id_fk\" FOREIGN KEY (\"parent_id\") \
             REFERENCES \"public\".\"t{p}\"(\"id\") ON DELETE cascade ON UPDATE no action;"
        ));
    }
    if i % 2 == 1 {
        statements.push(format!(
            "ALTER TABLE \"t{}\" ADD COLUMN \"c{i}\" integer DEFAULT 0 NOT NULL;",
            i - 1
        ));
    }
    if i.is_multiple_of(3) {
        statements.push(format!(
            "CREATE INDEX \"t{i}_created_at_idx\" ON \"t{i}\" USING btree (\"created_at\");"
        ));
    }
    let mut text = statements.join("\n--> statement-breakpoint\n");
    text.push('\n');
    text
}

fn journal_entry(i: usize) -> serde_json::Value {
    serde_json::json!({
        "idx": i, "version": "7", "when": when(i), "tag": tag(i), "breakpoints": true
    })
}

fn journal_text(entries: &[serde_json::Value]) -> String {
    let journal = serde_json::json!({
        "version": "7", "dialect": "postgresql", "entries": entries
    });
    let mut text = serde_json::to_string_pretty(&journal).expect("journal");
    text.push('\n');
    text
}

struct Folder {
    dir: PathBuf,
    n: usize,
    statements: usize,
    /// Everything in journal order, for the psql floor.
    all_sql: PathBuf,
}

fn generate(dir: &Path, n: usize) -> Res<Folder> {
    fs::create_dir_all(dir.join("meta")).map_err(err("creating a folder"))?;
    let mut all = String::new();
    let mut statements = 0;
    let mut entries = Vec::with_capacity(n);
    for i in 0..n {
        let sql = migration_sql(i);
        statements += sql.matches("--> statement-breakpoint").count() + 1;
        fs::write(dir.join(format!("{}.sql", tag(i))), &sql).map_err(err("writing a migration"))?;
        all.push_str(&sql);
        all.push('\n');
        entries.push(journal_entry(i));
    }
    fs::write(dir.join("meta/_journal.json"), journal_text(&entries))
        .map_err(err("writing the journal"))?;
    let all_sql = dir.with_extension("all.sql");
    fs::write(&all_sql, all).map_err(err("writing the floor SQL"))?;
    Ok(Folder {
        dir: dir.to_path_buf(),
        n,
        statements,
        all_sql,
    })
}

fn copy_folder(from: &Path, to: &Path) -> Res<()> {
    fs::create_dir_all(to.join("meta")).map_err(err("copying a folder"))?;
    for entry in fs::read_dir(from).map_err(err("copying a folder"))? {
        let entry = entry.map_err(err("copying a folder"))?;
        if entry
            .file_type()
            .map_err(err("copying a folder"))?
            .is_file()
        {
            fs::copy(entry.path(), to.join(entry.file_name())).map_err(err("copying a file"))?;
        }
    }
    fs::copy(
        from.join("meta/_journal.json"),
        to.join("meta/_journal.json"),
    )
    .map_err(err("copying the journal"))?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The bench context

struct Ctx {
    p: Params,
    spawner: Spawner,
    cluster: TempCluster,
    bin: PathBuf,
    work: tempfile::TempDir,
    empty_config: PathBuf,
    /// Whether the binary has automatic backups (then they are turned off, see the header).
    has_backup: bool,
    next_db: usize,
}

impl Ctx {
    fn path(&self, name: &str) -> PathBuf {
        self.work.path().join(name)
    }

    fn child_env(&self) -> Vec<(String, String)> {
        vec![
            ("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into()),
            ("LANG".into(), "C.UTF-8".into()),
            (
                "VAMSA_MIGRATE_CONFIG".into(),
                self.empty_config.display().to_string(),
            ),
        ]
    }

    fn run(&mut self, argv: Vec<String>) -> Res<(RunResult, String)> {
        let stdout = self.path("child.out");
        let stderr = self.path("child.err");
        let req = RunRequest {
            argv,
            env: self.child_env(),
            stdout: stdout.clone(),
            stderr: stderr.clone(),
        };
        let result = self.spawner.run(&req)?;
        let mut text = fs::read_to_string(&stdout).unwrap_or_default();
        let e = fs::read_to_string(&stderr).unwrap_or_default();
        if !e.is_empty() {
            text.push_str("\n[stderr]\n");
            text.push_str(&e);
        }
        Ok((result, text))
    }

    /// `vamsa-migrate --database-url URL --migrations-dir DIR <args>`.
    fn ours(&mut self, db: Option<&str>, dir: &Path, args: &[&str]) -> Res<(RunResult, String)> {
        let url = db.map(|db| self.url(db));
        self.ours_at(url, dir, args)
    }

    fn ours_at(
        &mut self,
        url: Option<String>,
        dir: &Path,
        args: &[&str],
    ) -> Res<(RunResult, String)> {
        let mut argv = vec![self.bin.display().to_string()];
        if let Some(url) = url {
            argv.push("--database-url".into());
            argv.push(url);
        }
        argv.push("--migrations-dir".into());
        argv.push(dir.display().to_string());
        argv.extend(args.iter().map(|s| s.to_string()));
        self.run(argv)
    }

    /// The URL a user would write: no `sslmode`, so the default (`prefer`) applies, as in
    /// production. (The server has no TLS, so `prefer` ends up in plain text after the probe.)
    fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.cluster.port())
    }

    fn migrate_args(&self) -> Vec<&'static str> {
        let mut a = vec!["migrate", "-q"];
        if self.has_backup {
            a.push("--no-backup");
        }
        a
    }

    fn psql(&self, db: &str, sql: &str) -> Res<String> {
        self.cluster
            .psql(db, sql)
            .map_err(|e| format!("psql {sql}: {e}"))
    }

    fn new_db(&mut self, label: &str) -> Res<String> {
        self.next_db += 1;
        let name = format!("b{}_{label}", self.next_db);
        self.cluster
            .create_database(&name)
            .map_err(err("CREATE DATABASE"))?;
        Ok(name)
    }

    fn drop_db(&self, name: &str) -> Res<()> {
        self.psql("postgres", &format!("DROP DATABASE \"{name}\""))
            .map(|_| ())
    }

    /// Flush dirty buffers now, so no checkpoint from earlier work lands inside a measurement.
    fn checkpoint(&self) -> Res<()> {
        self.psql("postgres", "CHECKPOINT").map(|_| ())
    }
}

fn expect_code(what: &str, r: &RunResult, out: &str, codes: &[i32]) -> Res<()> {
    if codes.contains(&r.code) {
        Ok(())
    } else {
        Err(format!(
            "{what} exited with {} (expected {codes:?}):\n{}",
            r.code,
            tail(out, 3000)
        ))
    }
}

fn tail(s: &str, max: usize) -> &str {
    let mut start = s.len().saturating_sub(max);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn progress(msg: &str) {
    eprintln!("[bench] {msg}");
}

// ---------------------------------------------------------------------------------------------
// The result table

struct Row {
    workload: String,
    n: String,
    ours: String,
    target: String,
    ratio: String,
    met: String,
}

#[derive(Default)]
struct Table {
    rows: Vec<Row>,
    notes: Vec<String>,
}

impl Table {
    fn row(
        &mut self,
        workload: &str,
        n: &str,
        ours: String,
        target: &str,
        ratio: String,
        met: Option<bool>,
    ) {
        self.rows.push(Row {
            workload: workload.into(),
            n: n.into(),
            ours,
            target: target.into(),
            ratio,
            met: match met {
                Some(true) => "yes".into(),
                Some(false) => "NO".into(),
                None => "-".into(),
            },
        });
    }

    fn print(&self) {
        let header = Row {
            workload: "workload".into(),
            n: "N".into(),
            ours: "ours".into(),
            target: "floor/target".into(),
            ratio: "ratio".into(),
            met: "met?".into(),
        };
        let all: Vec<&Row> = std::iter::once(&header).chain(&self.rows).collect();
        let w = |f: fn(&Row) -> &str| all.iter().map(|r| f(r).chars().count()).max().unwrap_or(0);
        let widths = [
            w(|r| &r.workload),
            w(|r| &r.n),
            w(|r| &r.ours),
            w(|r| &r.target),
            w(|r| &r.ratio),
            w(|r| &r.met),
        ];
        let line = |r: &Row| {
            format!(
                "| {:<a$} | {:>b$} | {:>c$} | {:<d$} | {:>e$} | {:<f$} |",
                r.workload,
                r.n,
                r.ours,
                r.target,
                r.ratio,
                r.met,
                a = widths[0],
                b = widths[1],
                c = widths[2],
                d = widths[3],
                e = widths[4],
                f = widths[5]
            )
        };
        println!("{}", line(&header));
        println!(
            "|{}|",
            widths
                .iter()
                .map(|w| "-".repeat(w + 2))
                .collect::<Vec<_>>()
                .join("|")
        );
        for r in &self.rows {
            println!("{}", line(r));
        }
        if !self.notes.is_empty() {
            println!();
            for n in &self.notes {
                println!("- {n}");
            }
        }
    }
}

fn fmt_n(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn ms(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0} ms")
    } else {
        format!("{v:.1} ms")
    }
}

fn mib(v: f64) -> String {
    format!("{v:.1} MiB")
}

// ---------------------------------------------------------------------------------------------

fn run(spawner: Spawner) -> Res<()> {
    let p = Params::from_env();
    let started = Instant::now();
    let bin = match std::env::var_os("VAMSA_MIGRATE_BIN") {
        Some(b) => PathBuf::from(b),
        None => PathBuf::from(env!("CARGO_BIN_EXE_vamsa-migrate")),
    };
    if !bin.exists() {
        return Err(format!(
            "{} does not exist: build it with `cargo build --release` (or run `cargo bench --bench migrate`, \
             which builds it), or point VAMSA_MIGRATE_BIN at a vamsa-migrate binary",
            bin.display()
        ));
    }
    progress(&format!(
        "binary {}; {} repetitions{}",
        bin.display(),
        p.reps,
        if p.quick {
            "; QUICK mode (smaller N)"
        } else {
            ""
        }
    ));

    progress("starting PostgreSQL (fsync on)...");
    let cluster = TempCluster::start_with(ClusterOptions {
        fsync: true,
        // One transaction holding every lock of 2,000 migrations (the psql floor, and Drizzle's
        // own migrator) needs more than the default 64 x max_connections lock slots.
        settings: vec![("max_locks_per_transaction".into(), "1024".into())],
        ..ClusterOptions::default()
    })
    .map_err(err("starting PostgreSQL"))?;
    reap_after_exit(&cluster);

    let work = tempfile::Builder::new()
        .prefix("vamsa-bench-")
        .tempdir()
        .map_err(err("temp dir"))?;
    let empty_config = work.path().join("empty.toml");
    fs::write(&empty_config, "").map_err(err("writing the empty config"))?;
    let mut ctx = Ctx {
        p,
        spawner,
        cluster,
        bin,
        work,
        empty_config,
        has_backup: false,
        next_db: 0,
    };
    let (_, help) = ctx.run(vec![
        ctx.bin.display().to_string(),
        "migrate".into(),
        "--help".into(),
    ])?;
    ctx.has_backup = help.contains("--no-backup");

    let mut table = Table::default();
    let machine = machine_info(&ctx)?;

    let phase = |name: &str, since: Instant| {
        progress(&format!(
            "{name} took {:.1} s",
            since.elapsed().as_secs_f64()
        ))
    };
    let t = Instant::now();
    let apply_folders = generate_folders(&ctx, &ctx.p.apply_ns.clone(), "apply")?;
    let uptodate_db = bench_apply(&mut ctx, &apply_folders, &mut table)?;
    phase("workload 1 (apply)", t);
    let big = apply_folders
        .iter()
        .find(|f| f.n == ctx.p.uptodate_n)
        .expect("the up-to-date N is one of the apply Ns");
    let t = Instant::now();
    bench_uptodate(&mut ctx, big, &uptodate_db, &mut table)?;
    phase("workload 2 (up to date)", t);
    let t = Instant::now();
    bench_daemon(&mut ctx, big, &uptodate_db, &mut table)?;
    phase("workload 4 (daemon)", t);
    let t = Instant::now();
    let mut scan_ns = vec![1];
    scan_ns.extend(ctx.p.scan_ns);
    let scan_folders = generate_folders(&ctx, &scan_ns, "scan")?;
    bench_scans(&mut ctx, &scan_folders, &mut table)?;
    phase("workload 3 (dry run, status)", t);
    let t = Instant::now();
    bench_new(&mut ctx, &scan_folders, &mut table)?;
    phase("new", t);

    if let Some(hwm) = ctx.spawner.own_hwm_kib() {
        table.notes.push(format!(
            "Peak RSS is the child's ru_maxrss from wait4; children are spawned by a helper whose own peak RSS is {:.1} MiB (a floor under every figure).",
            hwm as f64 / 1024.0
        ));
    }
    if ctx.has_backup {
        table.notes.push(
            "This binary takes a pg_dump backup before applying by default; it is turned off here (--no-backup, backup_enabled = false) so that the engine is measured against the psql floor."
                .into(),
        );
    }
    println!();
    println!(
        "vamsa-migrate benchmark{}",
        if ctx.p.quick {
            " (QUICK: smaller N; targets are for the full N, growth verdicts need the full N)"
        } else {
            ""
        }
    );
    for line in &machine {
        println!("  {line}");
    }
    println!(
        "  {} repetitions, medians; whole run {:.0} s",
        ctx.p.reps,
        started.elapsed().as_secs_f64()
    );
    println!();
    table.print();
    Ok(())
}

fn generate_folders(ctx: &Ctx, ns: &[usize], label: &str) -> Res<Vec<Folder>> {
    ns.iter()
        .map(|&n| {
            progress(&format!("generating {} migrations ({label})", fmt_n(n)));
            generate(&ctx.path(&format!("{label}-{n}")), n)
        })
        .collect()
}

fn machine_info(ctx: &Ctx) -> Res<Vec<String>> {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown".to_string(), |(_, m)| m.trim().to_string());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .nth(1)
        .and_then(|k| k.parse::<u64>().ok())
        .map_or("?".into(), |k| format!("{:.1} GiB", k as f64 / 1048576.0));
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let version = ctx.psql("postgres", "SHOW server_version")?;
    let bin = ctx.cluster.bin_dir().display().to_string();
    Ok(vec![
        format!("CPU: {model}, {cores} cores, {mem} RAM, Linux {}", kernel.trim()),
        format!(
            "PostgreSQL {version} ({bin}), fsync=on, synchronous_commit=on, max_locks_per_transaction=1024, data in {}",
            ctx.cluster.dir().display()
        ),
        format!("vamsa-migrate: {}", ctx.bin.display()),
    ])
}

/// A watcher that stops the server and removes its folder once this process is gone, even
/// after Ctrl-C or SIGKILL (the tests' harness does the same).
fn reap_after_exit(cluster: &TempCluster) {
    let script = format!(
        "while kill -0 {pid} 2>/dev/null; do sleep 0.5; done; \
         {ctl} -D {data} -m immediate stop >/dev/null 2>&1 || runuser -u postgres -- {ctl} -D {data} -m immediate stop >/dev/null 2>&1; \
         rm -rf {dir}",
        pid = std::process::id(),
        ctl = cluster.program("pg_ctl").display(),
        data = cluster.data_dir().display(),
        dir = cluster.dir().display(),
    );
    #[allow(clippy::zombie_processes)]
    let _ = Command::new("setsid")
        .args(["sh", "-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
}

// ---------------------------------------------------------------------------------------------
// Workload 1: apply N migrations to an empty database, against psql --single-transaction.

fn bench_apply(ctx: &mut Ctx, folders: &[Folder], table: &mut Table) -> Res<String> {
    let mut keep = None;
    for folder in folders {
        let mut ours = Vec::new();
        let mut floor = Vec::new();
        for rep in 0..ctx.p.reps {
            progress(&format!(
                "apply N={} ({} statements): repetition {}/{}",
                fmt_n(folder.n),
                fmt_n(folder.statements),
                rep + 1,
                ctx.p.reps
            ));
            // Alternate which goes first, so slow drift of the machine hits both alike.
            for which in if rep % 2 == 0 { [0, 1] } else { [1, 0] } {
                let db = ctx.new_db(&format!("apply{}", folder.n))?;
                ctx.checkpoint()?;
                if which == 0 {
                    let args = ctx.migrate_args();
                    let (r, out) = ctx.ours(Some(&db), &folder.dir, &args)?;
                    expect_code("vamsa-migrate migrate", &r, &out, &[0])?;
                    ours.push(r.ms());
                    if rep == 0 {
                        let rows =
                            ctx.psql(&db, "SELECT count(*) FROM drizzle.__drizzle_migrations")?;
                        let tables = ctx.psql(
                            &db,
                            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'",
                        )?;
                        if rows != folder.n.to_string() || tables != folder.n.to_string() {
                            return Err(format!(
                                "after migrate: {rows} rows and {tables} tables, expected {}",
                                folder.n
                            ));
                        }
                    }
                } else {
                    let argv = {
                        let mut a = vec![ctx.cluster.program("psql").display().to_string()];
                        a.extend(
                            [
                                "-X",
                                "-q",
                                "-v",
                                "ON_ERROR_STOP=1",
                                "--single-transaction",
                                "-h",
                                "127.0.0.1",
                                "-U",
                                "postgres",
                            ]
                            .map(String::from),
                        );
                        a.extend([
                            "-p".into(),
                            ctx.cluster.port().to_string(),
                            "-d".into(),
                            db.clone(),
                            "-f".into(),
                            folder.all_sql.display().to_string(),
                        ]);
                        a
                    };
                    let (r, out) = ctx.run(argv)?;
                    expect_code("psql --single-transaction", &r, &out, &[0])?;
                    floor.push(r.ms());
                }
                let last_big = which == 0 && rep + 1 == ctx.p.reps && folder.n == ctx.p.uptodate_n;
                if last_big {
                    keep = Some(db);
                } else {
                    ctx.drop_db(&db)?;
                }
            }
        }
        let (o, f) = (median(&ours), median(&floor));
        // The disk's fsync latency drifts (and other work may share the machine): the ratio is
        // the median of the ratios of each repetition's adjacent pair, not of the two medians.
        let pairs: Vec<f64> = ours.iter().zip(&floor).map(|(o, f)| o / f).collect();
        let ratio = median(&pairs);
        let big = folder.n == *ctx.p.apply_ns.last().unwrap();
        table.row(
            "1. apply to empty DB (vs psql --single-transaction)",
            &fmt_n(folder.n),
            ms(o),
            &format!("floor {}{}", ms(f), if big { "; <= 1.25x" } else { "" }),
            format!("{ratio:.2}x"),
            big.then_some(ratio <= 1.25),
        );
        table.notes.push(format!(
            "apply N={}: {} statements; per migration ours {:.2} ms, floor {:.2} ms; ratio = median of per-repetition pairs {:?} (ratio of medians {:.2}x); runs ours {:?} ms, floor {:?} ms",
            fmt_n(folder.n),
            fmt_n(folder.statements),
            o / folder.n as f64,
            f / folder.n as f64,
            pairs.iter().map(|v| (v * 100.0).round() / 100.0).collect::<Vec<_>>(),
            o / f,
            ours.iter().map(|v| v.round() as i64).collect::<Vec<_>>(),
            floor.iter().map(|v| v.round() as i64).collect::<Vec<_>>(),
        ));
    }
    keep.ok_or_else(|| "no database kept for the up-to-date workload".into())
}

// ---------------------------------------------------------------------------------------------
// Workload 2: `migrate` when everything is applied.

fn bench_uptodate(ctx: &mut Ctx, folder: &Folder, db: &str, table: &mut Table) -> Res<()> {
    let args = ctx.migrate_args();
    let urls = [ctx.url(db), format!("{}?sslmode=disable", ctx.url(db))];
    let mut runs: [Vec<RunResult>; 2] = Default::default();
    // One warm-up, then the measured runs (cheap, so twice as many), the two URLs alternating.
    for rep in 0..=ctx.p.reps * 2 {
        for (which, url) in urls.iter().enumerate() {
            let (r, out) = ctx.ours_at(Some(url.clone()), &folder.dir, &args)?;
            expect_code("vamsa-migrate migrate (up to date)", &r, &out, &[0])?;
            if rep == 0 {
                if which == 0 {
                    progress(&format!("up to date N={}: {}", fmt_n(folder.n), out.trim()));
                }
                continue;
            }
            runs[which].push(r);
        }
    }
    let p = Point::of(folder.n, &runs[0]);
    let plain = Point::of(folder.n, &runs[1]);
    let n = fmt_n(folder.n);
    table.row(
        "2. up to date: migrate, wall",
        &n,
        ms(p.wall),
        "< 30 ms",
        format!("{:.2}x", p.wall / 30.0),
        Some(p.wall < 30.0),
    );
    table.row(
        "2. up to date: migrate, peak RSS",
        &n,
        mib(p.rss),
        "< 15 MiB",
        format!("{:.2}x", p.rss / 15.0),
        Some(p.rss < 15.0),
    );
    table.row(
        "2. up to date, sslmode=disable (no TLS set-up), wall",
        &n,
        ms(plain.wall),
        "(info)",
        format!("{:.2}x", plain.wall / 30.0),
        None,
    );
    table.notes.push(format!(
        "up to date N={n}: CPU (user+sys) {:.1} ms of {:.1} ms wall, {:.1} ms with sslmode=disable (peak RSS {:.1} MiB); walls {:?} ms",
        p.cpu,
        p.wall,
        plain.cpu,
        plain.rss,
        runs[0]
            .iter()
            .map(|r| (r.ms() * 10.0).round() / 10.0)
            .collect::<Vec<_>>()
    ));
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Workload 3: dry run (everything pending) and status (everything applied) over 1 / small /
// large folders; growth from small to large must be linear.

fn bench_scans(ctx: &mut Ctx, folders: &[Folder], table: &mut Table) -> Res<()> {
    // Dry run: an empty database, so every migration is pending and summarised.
    let empty = ctx.new_db("dryrun")?;
    let mut dry = Vec::new();
    for f in folders {
        dry.push(measure_cli(
            ctx,
            Some(&empty),
            f,
            &["migrate", "--dry-run"],
            &[0],
            "dry run",
        )?);
    }
    // Status: the tracking rows written directly (same hash and created_at as a real run).
    let mut stat = Vec::new();
    for f in folders {
        let db = ctx.new_db(&format!("status{}", f.n))?;
        fill_tracking(ctx, &db, f)?;
        stat.push(measure_cli(ctx, Some(&db), f, &["status"], &[0], "status")?);
        ctx.drop_db(&db)?;
    }
    ctx.drop_db(&empty)?;
    report_growth(table, "3. dry run (all pending)", &dry, Some(200.0));
    report_growth(table, "3. status (all applied)", &stat, None);
    Ok(())
}

/// Median wall and peak RSS of one CLI command over the repetitions (after a warm-up).
fn measure_cli(
    ctx: &mut Ctx,
    db: Option<&str>,
    f: &Folder,
    args: &[&str],
    codes: &[i32],
    what: &str,
) -> Res<Point> {
    progress(&format!("{what} N={}", fmt_n(f.n)));
    let mut runs = Vec::new();
    // Cheap: twice the repetitions, after one warm-up.
    for rep in 0..=ctx.p.reps * 2 {
        let (r, out) = ctx.ours(db, &f.dir, args)?;
        expect_code(what, &r, &out, codes)?;
        if rep > 0 {
            runs.push(r);
        }
    }
    Ok(Point::of(f.n, &runs))
}

/// Medians of one command's repetitions at one N.
#[derive(Clone, Copy)]
struct Point {
    n: usize,
    wall: f64,
    rss: f64,
    /// user + sys, ms (median).
    cpu: f64,
    /// user + sys, ms (minimum: the least disturbed run, for the growth check).
    cpu_min: f64,
}

impl Point {
    fn of(n: usize, runs: &[RunResult]) -> Point {
        let pick = |f: fn(&RunResult) -> f64| median(&runs.iter().map(f).collect::<Vec<_>>());
        Point {
            n,
            wall: pick(RunResult::ms),
            rss: pick(RunResult::rss_mib),
            cpu: pick(|r| (r.utime_us + r.stime_us) as f64 / 1000.0),
            cpu_min: runs
                .iter()
                .map(|r| (r.utime_us + r.stime_us) as f64 / 1000.0)
                .fold(f64::INFINITY, f64::min),
        }
    }
}

fn fill_tracking(ctx: &Ctx, db: &str, f: &Folder) -> Res<()> {
    let mut sql = String::from(
        "CREATE SCHEMA drizzle;\nCREATE TABLE drizzle.__drizzle_migrations (id SERIAL PRIMARY KEY, hash text NOT NULL, \
         created_at bigint, applied_at timestamptz DEFAULT now());\n",
    );
    for chunk in (0..f.n).collect::<Vec<_>>().chunks(1000) {
        sql.push_str("INSERT INTO drizzle.__drizzle_migrations (hash, created_at) VALUES\n");
        let values: Vec<String> = chunk
            .iter()
            .map(|&i| {
                let text =
                    fs::read_to_string(f.dir.join(format!("{}.sql", tag(i)))).unwrap_or_default();
                format!(
                    "('{}', {})",
                    vamsa_migrate::source::drizzle_hash(&text),
                    when(i)
                )
            })
            .collect();
        sql.push_str(&values.join(",\n"));
        sql.push_str(";\n");
    }
    let file = ctx.path("tracking.sql");
    fs::write(&file, sql).map_err(err("writing tracking rows"))?;
    let out = ctx
        .cluster
        .psql_command(db)
        .args(["-XAtq", "-v", "ON_ERROR_STOP=1", "-f"])
        .arg(&file)
        .output()
        .map_err(err("psql"))?;
    if !out.status.success() {
        return Err(format!(
            "filling the tracking table: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
}

/// Rows for a small/large pair; `points` holds (N, wall ms, peak RSS MiB) with N = 1 first.
fn report_growth(table: &mut Table, what: &str, points: &[Point], target_ms: Option<f64>) {
    let (base, p1, p2) = (points[0], points[1], points[2]);
    let (n1, n2) = (fmt_n(p1.n), fmt_n(p2.n));
    table.row(
        &format!("{what}, wall"),
        &n1,
        ms(p1.wall),
        "",
        String::new(),
        None,
    );
    match target_ms {
        Some(t) => table.row(
            &format!("{what}, wall"),
            &n2,
            ms(p2.wall),
            &format!("< {t:.0} ms"),
            format!("{:.2}x", p2.wall / t),
            Some(p2.wall < t),
        ),
        None => table.row(
            &format!("{what}, wall"),
            &n2,
            ms(p2.wall),
            "",
            String::new(),
            None,
        ),
    }
    // Growth, judged on CPU time (user + sys; the minimum over the repetitions, as noise only
    // adds to it) net of the fixed cost measured at N = 1 (start-up, TLS, connect): wall time
    // on a shared machine also counts time spent waiting for a core.
    let scale = p2.n as f64 / p1.n as f64;
    let limit = scale * 1.2;
    let net = |a: f64, b: f64, base: f64| (b - base) / (a - base).max(0.05);
    let cpu_net = net(p1.cpu_min, p2.cpu_min, base.cpu_min);
    table.row(
        &format!("{what}, growth"),
        &format!("{n1}->{n2}"),
        format!("wall {:.1}x raw", p2.wall / p1.wall),
        &format!("linear: CPU net of N=1 <= {limit:.0}x"),
        format!("CPU {cpu_net:.1}x net"),
        Some(cpu_net <= limit),
    );
    table.row(
        &format!("{what}, peak RSS"),
        &n1,
        mib(p1.rss),
        "",
        String::new(),
        None,
    );
    table.row(
        &format!("{what}, peak RSS"),
        &n2,
        mib(p2.rss),
        "",
        format!("{:.1}x", p2.rss / p1.rss),
        None,
    );
    let per = |p: Point| (p.cpu_min - base.cpu_min) * 1000.0 / p.n as f64;
    table.notes.push(format!(
        "{what}: N=1 wall {} (min CPU {:.1} ms); min CPU {:.1} / {:.1} ms at N={n1} / {n2} = {:.1} / {:.1} us per migration net of N=1; \
         wall net ratio {:.1}x; peak RSS {:.1} KiB per migration",
        ms(base.wall),
        base.cpu_min,
        p1.cpu_min,
        p2.cpu_min,
        per(p1),
        per(p2),
        net(p1.wall, p2.wall, base.wall),
        (p2.rss - p1.rss) * 1024.0 / (p2.n - p1.n) as f64,
    ));
}

// ---------------------------------------------------------------------------------------------
// `new` with 1 / small / large journals: the journal rewrite must be linear.

fn bench_new(ctx: &mut Ctx, folders: &[Folder], table: &mut Table) -> Res<()> {
    let mut points = Vec::new();
    for f in folders {
        progress(&format!("new with {} journal entries", fmt_n(f.n)));
        // Only the journal matters to `new`; work on a copy of it.
        let dir = ctx.path(&format!("new-{}", f.n));
        fs::create_dir_all(dir.join("meta")).map_err(err("new folder"))?;
        let journal = fs::read(f.dir.join("meta/_journal.json")).map_err(err("journal"))?;
        let created = dir.join(format!("{}.sql", tag_for_new(f.n)));
        let mut runs = Vec::new();
        for rep in 0..=ctx.p.reps * 2 {
            fs::write(dir.join("meta/_journal.json"), &journal).map_err(err("journal"))?;
            let _ = fs::remove_file(&created);
            let (r, out) = ctx.ours(None, &dir, &["new", "bench new"])?;
            expect_code("new", &r, &out, &[0])?;
            if !created.exists() {
                return Err(format!("new did not create {}: {out}", created.display()));
            }
            if rep > 0 {
                runs.push(r);
            }
        }
        points.push(Point::of(f.n, &runs));
    }
    report_growth(table, "new (journal rewrite, fsync)", &points, None);
    Ok(())
}

fn tag_for_new(n: usize) -> String {
    format!("{n:04}_bench_new")
}

// ---------------------------------------------------------------------------------------------
// Workload 4: the daemon.

enum Ev {
    Notify(Instant, String),
    Stderr(Instant, String),
}

struct DaemonProc {
    child: Child,
    started: Instant,
    log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl DaemonProc {
    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    fn log_tail(&self) -> String {
        let log = self.log.lock().unwrap();
        let start = log.len().saturating_sub(30);
        log[start..].join("\n")
    }

    fn stop(mut self) -> Res<()> {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.pid(), libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self
                .child
                .try_wait()
                .map_err(err("waiting for the daemon"))?
            {
                return if status.success() {
                    Ok(())
                } else {
                    Err(format!("daemon exited with {status}:\n{}", self.log_tail()))
                };
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return Err(format!(
                    "daemon did not stop on SIGTERM:\n{}",
                    self.log_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

fn start_daemon(ctx: &Ctx, config: &Path, notify: &Path, tx: &mpsc::Sender<Ev>) -> Res<DaemonProc> {
    let mut cmd = Command::new(&ctx.bin);
    cmd.arg("daemon")
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("VAMSA_MIGRATE_CONFIG", config)
        .env("NOTIFY_SOCKET", notify)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let mut child = cmd.spawn().map_err(err("starting the daemon"))?;
    let stderr = child.stderr.take().expect("piped stderr");
    let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let (tx, log2) = (tx.clone(), log.clone());
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            let now = Instant::now();
            log2.lock().unwrap().push(line.clone());
            let _ = tx.send(Ev::Stderr(now, line));
        }
    });
    Ok(DaemonProc {
        child,
        started,
        log,
    })
}

/// Waits for an event matching `pred`; its arrival time.
fn wait_event(
    rx: &mpsc::Receiver<Ev>,
    within: Duration,
    mut pred: impl FnMut(&Ev) -> bool,
) -> Option<Instant> {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        match rx.recv_timeout(left) {
            Ok(ev) => {
                if pred(&ev) {
                    return Some(match ev {
                        Ev::Notify(t, _) | Ev::Stderr(t, _) => t,
                    });
                }
            }
            Err(_) => return None,
        }
    }
}

fn drain(rx: &mpsc::Receiver<Ev>) {
    while rx.try_recv().is_ok() {}
}

/// Sends `{"command":"apply"}` and reads the reply; the time of the first `applied` and of `done`.
fn trigger_apply(socket: &Path) -> Res<(Duration, Duration)> {
    let started = Instant::now();
    let mut stream =
        UnixStream::connect(socket).map_err(err("connecting to the trigger socket"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .map_err(err("socket"))?;
    stream
        .write_all(b"{\"command\":\"apply\"}\n")
        .map_err(err("sending the trigger"))?;
    let mut reader = BufReader::new(stream.try_clone().map_err(err("socket"))?);
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

fn proc_status_kib(pid: i32, field: &str) -> Option<u64> {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// utime + stime of a process, in clock ticks.
fn proc_cpu_ticks(pid: i32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 of stat(5); `after` starts at field 3.
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

fn bench_daemon(ctx: &mut Ctx, folder: &Folder, db: &str, table: &mut Table) -> Res<()> {
    let dir = ctx.path("daemon-folder");
    copy_folder(&folder.dir, &dir)?;
    let socket = ctx.path("trigger.sock");
    let notify = ctx.path("notify.sock");
    let config = ctx.path("daemon.toml");
    let mut text = format!(
        "database_url = {:?}\nmigrations_dir = {:?}\nsocket_path = {:?}\nlog_target = \"stderr\"\nsettle = \"{}ms\"\n",
        ctx.url(db),
        dir.display().to_string(),
        socket.display().to_string(),
        ctx.p.settle.as_millis()
    );
    if ctx.has_backup {
        text.push_str("backup_enabled = false\n");
    }
    fs::write(&config, text).map_err(err("writing the daemon config"))?;

    let (tx, rx) = mpsc::channel();
    let notify_sock = UnixDatagram::bind(&notify).map_err(err("binding NOTIFY_SOCKET"))?;
    notify_sock
        .set_read_timeout(Some(Duration::from_millis(200)))
        .map_err(err("notify socket"))?;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let notify_thread = {
        let (tx, stop) = (tx.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 8192];
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok(n) = notify_sock.recv(&mut buf) {
                    let _ = tx.send(Ev::Notify(
                        Instant::now(),
                        String::from_utf8_lossy(&buf[..n]).into_owned(),
                    ));
                }
            }
        })
    };

    // The floor of a triggered apply: the same migration's statements, BEGIN to COMMIT, timed by
    // psql (\\timing) over its open connection, in a database holding the table it builds on.
    let floor_db = ctx.new_db("trigger_floor")?;
    let base_table = migration_sql(folder.n - 1);
    let base_table = base_table
        .split("--> statement-breakpoint")
        .next()
        .unwrap_or_default();
    ctx.psql(&floor_db, base_table)?;
    let mut floors = Vec::new();

    let mut entries: Vec<serde_json::Value> = (0..folder.n).map(journal_entry).collect();
    let mut ready = Vec::new();
    let mut pending_log = Vec::new();
    let mut pending_status = Vec::new();
    let mut applied = Vec::new();
    let mut done = Vec::new();
    let mut idle = None;
    for rep in 0..ctx.p.reps {
        progress(&format!(
            "daemon (N={} applied): repetition {}/{}",
            fmt_n(folder.n),
            rep + 1,
            ctx.p.reps
        ));
        drain(&rx);
        ctx.checkpoint()?;
        let d = start_daemon(ctx, &config, &notify, &tx)?;
        let Some(t) = wait_event(
            &rx,
            Duration::from_secs(60),
            |e| matches!(e, Ev::Notify(_, m) if m.contains("READY=1")),
        ) else {
            let tail = d.log_tail();
            let _ = d.stop();
            return Err(format!("no READY=1 from the daemon within 60 s:\n{tail}"));
        };
        ready.push((t - d.started).as_secs_f64() * 1000.0);

        // A new migration arrives: the .sql file, then the journal rewritten in place (as
        // drizzle-kit does).
        let i = entries.len();
        let copy_started = Instant::now();
        fs::write(dir.join(format!("{}.sql", tag(i))), migration_sql(i))
            .map_err(err("new migration"))?;
        entries.push(journal_entry(i));
        fs::write(dir.join("meta/_journal.json"), journal_text(&entries))
            .map_err(err("journal"))?;
        let (mut log_at, mut status_at) = (None, None);
        let deadline = Instant::now() + ctx.p.settle + Duration::from_secs(10);
        while log_at.is_none() || status_at.is_none() {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                break;
            };
            match rx.recv_timeout(left) {
                Ok(Ev::Stderr(t, line)) if line.contains("pending migration detected") => {
                    log_at = Some(t)
                }
                Ok(Ev::Notify(t, m)) if m.contains("STATUS=1 pending") => status_at = Some(t),
                Ok(_) => {}
                Err(_) => break,
            }
        }
        let (Some(l), Some(s)) = (log_at, status_at) else {
            let tail = d.log_tail();
            let _ = d.stop();
            return Err(format!(
                "the new migration was not reported within settle + 10 s (log: {log_at:?}, STATUS: {status_at:?}):\n{tail}"
            ));
        };
        pending_log.push((l - copy_started).as_secs_f64() * 1000.0);
        pending_status.push((s - copy_started).as_secs_f64() * 1000.0);

        let (first, all) = match trigger_apply(&socket) {
            Ok(v) => v,
            Err(e) => {
                let tail = d.log_tail();
                let _ = d.stop();
                return Err(format!("{e}\n{tail}"));
            }
        };
        applied.push(first.as_secs_f64() * 1000.0);
        done.push(all.as_secs_f64() * 1000.0);
        floors.push(timed_transaction(ctx, &floor_db, &migration_sql(i))?);

        if rep + 1 == ctx.p.reps {
            progress(&format!("daemon idle for {} s", ctx.p.idle.as_secs()));
            std::thread::sleep(Duration::from_secs(1));
            let pid = d.pid();
            let before = proc_cpu_ticks(pid);
            let rss_before = proc_status_kib(pid, "VmRSS");
            std::thread::sleep(ctx.p.idle);
            let after = proc_cpu_ticks(pid);
            let rss_after = proc_status_kib(pid, "VmRSS");
            let hwm = proc_status_kib(pid, "VmHWM");
            let threads = fs::read_to_string(format!("/proc/{pid}/status"))
                .ok()
                .and_then(|s| {
                    s.lines()
                        .find(|l| l.starts_with("Threads:"))
                        .map(|l| l[8..].trim().to_string())
                });
            idle = Some((before, after, rss_before, rss_after, hwm, threads));
        }
        d.stop()?;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = notify_thread.join();
    ctx.drop_db(&floor_db)?;

    let n = fmt_n(folder.n);
    let settle_ms = ctx.p.settle.as_secs_f64() * 1000.0;
    let r = median(&ready);
    table.row(
        "4. daemon: exec -> READY=1 (nothing pending)",
        &n,
        ms(r),
        "",
        String::new(),
        None,
    );
    let pl = median(&pending_log);
    let ps = median(&pending_status);
    let target = settle_ms + 100.0;
    table.row(
        "4. daemon: file copied -> \"pending migration detected\"",
        &n,
        ms(pl),
        &format!("< settle {settle_ms:.0} + 100 ms"),
        format!("{:.2}x", pl / target),
        Some(pl < target),
    );
    table.row(
        "4. daemon: file copied -> STATUS \"1 pending\"",
        &n,
        ms(ps),
        &format!("< settle {settle_ms:.0} + 100 ms"),
        format!("{:.2}x", ps / target),
        Some(ps < target),
    );
    let a = median(&applied);
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
        ms(median(&floors)),
        "psql: BEGIN..COMMIT",
        format!("{:.2}x", a / median(&floors)),
        None,
    );
    table.row(
        "4. daemon: trigger -> done event",
        &n,
        ms(median(&done)),
        "",
        String::new(),
        None,
    );
    if let Some((before, after, rss_before, rss_after, hwm, threads)) = idle {
        let rss = rss_after.unwrap_or(0) as f64 / 1024.0;
        table.row(
            "4. daemon: idle RSS (VmRSS)",
            &n,
            mib(rss),
            "< 15 MiB",
            format!("{:.2}x", rss / 15.0),
            Some(rss < 15.0),
        );
        let ticks = after.zip(before).map(|(a, b)| a.saturating_sub(b));
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
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
            rss_before.unwrap_or(0),
            rss_after.unwrap_or(0),
            hwm.unwrap_or(0),
            threads.unwrap_or_default(),
            ready.iter().map(|v| v.round() as i64).collect::<Vec<_>>(),
            pending_log.iter().map(|v| v.round() as i64).collect::<Vec<_>>(),
            applied.iter().map(|v| (v * 10.0).round() / 10.0).collect::<Vec<_>>(),
        ));
    }
    Ok(())
}
