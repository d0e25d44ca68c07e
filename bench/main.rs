//! `cargo bench --bench migrate`: the performance figures of vamsa-migrate, measured side by side
//! in one run against a real PostgreSQL (fsync on) that this program starts and removes itself.
//!
//! Run it with `cargo bench --bench migrate` (it does nothing without `--bench`, so that
//! `cargo test --all-targets` skips it). Environment: `BENCH_REPS` (default 5) repetitions, medians reported; `BENCH_QUICK=1` for
//! smaller N (a smoke run, not the figures of record); `BENCH_ONLY=memory,parse` to run only
//! those workloads (`apply` (with up to date and the daemon), `abuse`, `scans`, `parse`,
//! `memory`, `rehearsal`, `drift`); `VAMSA_MIGRATE_BIN` to measure another
//! binary than the one Cargo builds for this bench; `PG_BIN_DIR` as for the tests;
//! `BENCH_PEERS=0` to leave the peers out of workloads 1 and 2.
//!
//! Workloads 1 and 2 are side by side with the peers an admin would run instead (Drizzle's own
//! migrator 0.45.4 and 1.0 rc, dbmate 2.36.0), installed by this program from pinned npm
//! packages into `target/bench-peers/` (reused across runs; a peer that cannot be installed is a
//! "not measured" column saying why).
//!
//! Every measured child process (vamsa-migrate, psql, the peers) is started by a small runner process
//! (this program re-executed) that reports its rusage: see `spawn`.
//!
//! Modules, in the order of a run: `params`, `spawn` (the runner), `ctx` (the cluster and the
//! binary), `folders` (generated Drizzle folders), `peers` (installing and running each peer),
//! `corpus` (each folder in Drizzle 1.0's and dbmate's formats), `tools` (one run of the floor,
//! ours or a peer), the workloads `apply` (1) and `sidebyside` (its figures, and 2 side by side),
//! `uptodate` (2, ours with and without TLS),
//! `daemon` (4), `abuse` (the trigger socket's pings under abuse), `scans` (3), `new` and
//! `parse` (one huge migration file), `memory` (a big data
//! migration: peak and idle RSS), `rehearse` (5: the rehearsal's cost on 10 MB and 100 MB
//! databases; `BENCH_REHEARSAL_1GB=1` adds 1 GB), `drift` (comparing the live schema with the
//! recorded one, on Vamsa's schema and 10x and 100x its objects), with `growth` for the linearity checks, and
//! `table` for the result table.

mod abuse;
mod apply;
mod corpus;
mod ctx;
mod daemon;
mod drift;
mod folders;
mod growth;
mod memory;
mod new;
mod params;
mod parse;
mod peers;
mod procfs;
mod rehearse;
mod scans;
mod sidebyside;
mod spawn;
mod table;
mod tools;
mod uptodate;

use std::fs;
use std::path::PathBuf;
use std::time::Instant;

use ctx::Ctx;
use folders::Folder;
use params::Params;
use table::{fmt_n, Table};
use vamsa_testkit::{ClusterOptions, TempCluster};

fn main() {
    if std::env::var_os(spawn::RUNNER_ENV).is_some() {
        spawn::serve();
        return;
    }
    // `cargo bench` passes `--bench`; `cargo test --benches` (or `--all-targets`) does not, and a
    // five-minute run has no place in a test run.
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("bench: not run (no --bench argument); use `cargo bench --bench migrate`");
        return;
    }
    if let Err(e) = run() {
        eprintln!("bench: {e}");
        std::process::exit(1);
    }
}

type Res<T> = Result<T, String>;

fn err<E: std::fmt::Display>(what: &str) -> impl FnOnce(E) -> String + '_ {
    move |e| format!("{what}: {e}")
}

fn progress(msg: &str) {
    eprintln!("[bench] {msg}");
}

fn run() -> Res<()> {
    let started = Instant::now();
    let mut ctx = setup(Params::from_env())?;
    let mut table = Table::default();
    let machine = machine_info(&ctx)?;
    run_workloads(&mut ctx, &mut table)?;
    if let Some(hwm) = ctx.runner_hwm_kib {
        table.notes.push(format!(
            "Peak RSS is the child's ru_maxrss (getrusage RUSAGE_CHILDREN of its runner); children are spawned by a runner whose own peak RSS is at most {:.1} MiB (a floor under every figure).",
            hwm as f64 / 1024.0
        ));
    }
    if ctx.has_rehearsal {
        table.notes.push(
            "This binary rehearses each release on a scratch copy first by default; it is turned off here (--no-rehearse, rehearse = \"never\") so that the engine is measured against the psql floor, except in workload 5, which measures it."
                .into(),
        );
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

/// Finds the binary, starts PostgreSQL and the work folder.
fn setup(p: Params) -> Res<Ctx> {
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
    // Stops the server and removes its folder once this process is gone, even after Ctrl-C or
    // SIGKILL.
    vamsa_testkit::reaper::reap_after_exit(&cluster).map_err(err("the cluster reaper"))?;
    Ctx::new(p, cluster, bin)
}

fn run_workloads(ctx: &mut Ctx, table: &mut Table) -> Res<()> {
    let phase = |name: &str, since: Instant| {
        progress(&format!(
            "{name} took {:.1} s",
            since.elapsed().as_secs_f64()
        ))
    };
    if ctx.p.runs("apply") {
        let t = Instant::now();
        run_apply_chain(ctx, table)?;
        phase("workloads 1, 2, 4 (apply, up to date, daemon)", t);
    }
    if ctx.p.runs("abuse") {
        let t = Instant::now();
        abuse::bench_abuse(ctx, table)?;
        phase("trigger socket under abuse", t);
    }
    if ctx.p.runs("scans") {
        let t = Instant::now();
        let mut scan_ns = vec![1];
        scan_ns.extend(ctx.p.scan_ns);
        let scan_folders = generate_folders(ctx, &scan_ns, "scan")?;
        scans::bench_scans(ctx, &scan_folders, table)?;
        new::bench_new(ctx, &scan_folders, table)?;
        phase("workload 3 (dry run, status) and new", t);
    }
    if ctx.p.runs("parse") {
        let t = Instant::now();
        parse::bench_parse(ctx, table)?;
        phase("parse", t);
    }
    if ctx.p.runs("memory") {
        let t = Instant::now();
        memory::bench_memory(ctx, table)?;
        phase("memory of a big data migration", t);
    }
    if ctx.p.runs("drift") {
        let t = Instant::now();
        drift::bench_drift(ctx, table)?;
        phase("drift (describe + diff)", t);
    }
    if ctx.p.runs("rehearsal") && ctx.has_rehearsal {
        let t = Instant::now();
        rehearse::bench_rehearse(ctx, table)?;
        phase("workload 5 (rehearsal)", t);
    }
    Ok(())
}

/// Workload 1 (apply, side by side with the peers), then 2 (up to date, side by side, then ours
/// alone with and without TLS) and 4 (the daemon) on its largest result.
fn run_apply_chain(ctx: &mut Ctx, table: &mut Table) -> Res<()> {
    let peers = install_peers(ctx, table);
    let tools = tools::all(&peers);
    table.side.tools = tools.iter().map(|t| t.name().to_string()).collect();
    let mut corpora = Vec::new();
    for folder in generate_folders(ctx, &ctx.p.apply_ns.clone(), "apply")? {
        corpora.push(corpus::build(ctx, folder)?);
    }
    let kept = apply::bench_apply(ctx, &corpora, &tools, table)?;
    let big = corpora
        .iter()
        .find(|c| c.folder.n == ctx.p.uptodate_n)
        .ok_or("the up-to-date N is not one of the apply Ns")?;
    sidebyside::bench_uptodate(ctx, big, &tools, &kept, table)?;
    let ours_db = kept[1]
        .clone()
        .ok_or("no database kept for the up-to-date workload")?;
    uptodate::bench_uptodate(ctx, &big.folder, &ours_db, table)?;
    daemon::bench_daemon(ctx, &big.folder, &ours_db, table)
}

/// The peers that could be installed; the others become "not measured" columns.
fn install_peers(ctx: &Ctx, table: &mut Table) -> Vec<peers::Peer> {
    if !ctx.p.peers {
        table.side.skipped = peers::SPECS
            .iter()
            .map(|s| {
                (
                    s.name.to_string(),
                    "not measured: BENCH_PEERS=0".to_string(),
                )
            })
            .collect();
        return Vec::new();
    }
    let mut installed = Vec::new();
    for result in peers::install_all() {
        match result {
            Ok(peer) => installed.push(peer),
            Err((name, why)) => {
                progress(&format!("{name}: {why}"));
                table.side.skipped.push((name.to_string(), why));
            }
        }
    }
    installed
}

fn generate_folders(ctx: &Ctx, ns: &[usize], label: &str) -> Res<Vec<Folder>> {
    ns.iter()
        .map(|&n| {
            progress(&format!("generating {} migrations ({label})", fmt_n(n)));
            folders::generate(&ctx.path(&format!("{label}-{n}")), n)
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
