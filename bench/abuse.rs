//! The trigger socket under abuse: ping round trips (connect, request, pong, `done`) of an idle
//! daemon, then while a run is held in progress and 800 clients misbehave at once (garbage,
//! one byte every 100 ms, lines over 64 KiB, status requests queued behind the run). The tests
//! assert that every ping is answered during such a run; how fast is measured here.

use std::path::{Path, PathBuf};
use std::time::Instant;

use vamsa_testkit::daemon::{connect, misbehave, request, Daemon};
use vamsa_testkit::folder::Folder;
use vamsa_testkit::wait::eventually;

use crate::ctx::{median, Ctx};
use crate::table::{ms, Table};
use crate::{progress, Res};

/// Misbehaving clients at once, and pings timed among them.
const ABUSERS: usize = 800;
const PINGS: usize = 200;

/// A statement that runs until `public.gate` has a row: the run lasts as long as we measure.
const GATED: &str = "DO $$ BEGIN WHILE NOT EXISTS (SELECT FROM public.gate) LOOP PERFORM pg_sleep(0.02); END LOOP; END $$;";

pub(crate) fn bench_abuse(ctx: &mut Ctx, table: &mut Table) -> Res<()> {
    progress(&format!(
        "trigger socket: {PINGS} pings idle, then among {ABUSERS} abusive clients during a run"
    ));
    let db = ctx.new_db("abuse")?;
    ctx.psql(&db, "CREATE TABLE public.gate ()")?;
    let f = Folder::new(&[("0000_a", 1000, "CREATE TABLE a (id int);")]);
    let mut d = crate::daemon::start(ctx, &db, f.path());
    d.wait_event(0, |e| e.is_notify_with("READY=1"));
    let idle = pings(&d.socket)?;
    let slow = format!("CREATE TABLE slow (id int);--> statement-breakpoint\n{GATED}");
    f.write(&[
        ("0000_a", 1000, "CREATE TABLE a (id int);"),
        ("0001_slow", 2000, &slow),
    ]);
    let socket = d.socket.clone();
    let applier = std::thread::spawn(move || request(&socket, b"{\"command\":\"apply\"}\n"));
    eventually("the gated migration", || {
        ctx.psql(&db, "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE '%WHILE NOT EXISTS (SELECT FROM public.gate)%' AND pid <> pg_backend_pid()")
            .is_ok_and(|n| n != "0")
    });
    let abusers: Vec<_> = (0..ABUSERS).map(|i| abuse(d.socket.clone(), i)).collect();
    let abused = pings(&d.socket);
    ctx.psql(&db, "INSERT INTO public.gate DEFAULT VALUES")?;
    let done = applier.join().map_err(|_| "the apply client panicked")?;
    for a in abusers {
        let _ = a.join();
    }
    stop(d)?;
    ctx.drop_db(&db)?;
    if done.last().is_none_or(|e| e["ok"] != true) {
        return Err(format!("the run under abuse failed: {done:?}"));
    }
    report(table, &idle, &abused?);
    Ok(())
}

fn stop(mut d: Daemon) -> Res<()> {
    d.signal(vamsa_testkit::Signal::SIGTERM);
    match d.wait_exit() {
        0 => Ok(()),
        code => Err(format!("daemon exited with {code}")),
    }
}

/// One misbehaving client, by kind (`i % 4`), as in the fault tests.
fn abuse(socket: PathBuf, i: usize) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || misbehave(connect(&socket), i))
}

/// Round trips of `PINGS` pings one after another, in ms; an error if one is not a pong.
fn pings(socket: &Path) -> Res<Vec<f64>> {
    let mut times = Vec::with_capacity(PINGS);
    for _ in 0..PINGS {
        let started = Instant::now();
        let events = request(socket, b"{\"command\":\"ping\"}\n");
        times.push(started.elapsed().as_secs_f64() * 1000.0);
        if events.first().is_none_or(|e| e["event"] != "pong") {
            return Err(format!("a ping was not answered with pong: {events:?}"));
        }
    }
    times.sort_by(|a, b| a.total_cmp(b));
    Ok(times)
}

/// The `q` quantile (0..=1) of sorted `values`, nearest rank.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    let rank = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn report(table: &mut Table, idle: &[f64], abused: &[f64]) {
    let n = PINGS.to_string();
    table.row(
        "socket: ping round trip, idle daemon (median)",
        &n,
        ms(median(idle)),
        "",
        String::new(),
        None,
    );
    let p99 = quantile(abused, 0.99);
    table.row(
        &format!("socket: ping round trip during a run, {ABUSERS} abusive clients (p99)"),
        &n,
        ms(p99),
        "< 100 ms",
        format!("{:.2}x", p99 / 100.0),
        Some(p99 < 100.0),
    );
    table.notes.push(format!(
        "socket: ping round trips idle p50 {} / p99 {}; under abuse during a run p50 {} / p99 {} / max {}",
        ms(quantile(idle, 0.5)),
        ms(quantile(idle, 0.99)),
        ms(quantile(abused, 0.5)),
        ms(p99),
        ms(quantile(abused, 1.0)),
    ));
}
