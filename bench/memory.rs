//! Memory of a big data migration (issue 18, item 10): one `.sql` backfill of `big_mib` MiB
//! (multi-row `INSERT`s between breakpoints, as a generated data migration is written). Peak RSS
//! of `migrate --dry-run` and of `migrate` (the runner's `ru_maxrss`), and the daemon's VmRSS
//! once idle after applying it at start-up (/proc/PID/status).
//!
//! Targets: a peak of at most one copy of the file plus 20 MiB (the text is read once and every
//! statement is a slice of it), and an idle daemon under 20 MiB (it keeps the hashes and stamps
//! of the files it read, not their text).

use std::fs;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::ctx::{expect_code, Ctx};
use crate::procfs::proc_status_kib;
use crate::table::{mib, Table};
use crate::{daemon, err, progress, Res};

/// The margin over one copy of the file that a peak may take (the issue's target).
const PEAK_MARGIN_MIB: f64 = 20.0;
/// The idle daemon's target.
const IDLE_TARGET_MIB: f64 = 20.0;
/// Rows per `INSERT` statement, and the filler that makes a row about 1 KiB (few rows: the
/// server's time per row is not what is measured here).
const ROWS_PER_STATEMENT: usize = 100;

pub(crate) fn bench_memory(ctx: &mut Ctx, table: &mut Table) -> Res<()> {
    let dir = ctx.path("big-migration");
    let size = write_folder(&dir, ctx.p.big_mib)?;
    let file_mib = size as f64 / 1048576.0;
    let n = format!("{file_mib:.0} MiB");
    let target = format!("<= {:.0} MiB", file_mib + PEAK_MARGIN_MIB);
    let peak_ok = |v: f64| Some(v <= file_mib + PEAK_MARGIN_MIB);
    progress(&format!("memory: dry run of one {n} migration"));
    let db = ctx.new_db("big")?;
    let (r, out) = ctx.ours(Some(&db), &dir, &["migrate", "--dry-run", "-q"])?;
    expect_code("the dry run of the big migration", &r, &out, &[0])?;
    let dry = r.rss_mib();
    table.row(
        "memory: dry run, peak RSS",
        &n,
        mib(dry),
        &target,
        String::new(),
        peak_ok(dry),
    );
    progress(&format!("memory: migrate of one {n} migration"));
    ctx.checkpoint()?;
    let args = ctx.migrate_args();
    let (r, out) = ctx.ours(Some(&db), &dir, &args)?;
    expect_code("migrate of the big migration", &r, &out, &[0])?;
    let applied = r.rss_mib();
    table.row(
        "memory: migrate, peak RSS",
        &n,
        mib(applied),
        &target,
        String::new(),
        peak_ok(applied),
    );
    ctx.drop_db(&db)?;
    progress(&format!("memory: the daemon applying one {n} migration"));
    let idle = idle_daemon_rss(ctx, &dir)?;
    table.row(
        "memory: daemon idle after applying it, VmRSS",
        &n,
        mib(idle),
        &format!("< {IDLE_TARGET_MIB:.0} MiB"),
        String::new(),
        Some(idle < IDLE_TARGET_MIB),
    );
    Ok(())
}

/// The daemon started on a fresh database applies the folder before READY=1; its VmRSS once it
/// has been idle for the bench's idle window (the lowest seen: memory only goes back down).
fn idle_daemon_rss(ctx: &mut Ctx, dir: &Path) -> Res<f64> {
    let db = ctx.new_db("big_daemon")?;
    ctx.checkpoint()?;
    let mut d = daemon::start(ctx, &db, dir);
    d.ready();
    let pid = d.pid().to_string();
    let until = Instant::now() + ctx.p.idle.min(Duration::from_secs(5));
    let mut lowest = u64::MAX;
    while Instant::now() < until {
        if let Some(kib) = proc_status_kib(&pid, "VmRSS") {
            lowest = lowest.min(kib);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    daemon::stop(d)?;
    ctx.drop_db(&db)?;
    if lowest == u64::MAX {
        return Err(format!("no VmRSS in /proc/{pid}/status"));
    }
    Ok(lowest as f64 / 1024.0)
}

/// A journal folder: `0000` creates the table, `0001` fills it with about `mib` MiB of
/// statements. Returns the size of `0001` in bytes.
fn write_folder(dir: &Path, mib: usize) -> Res<u64> {
    fs::create_dir_all(dir.join("meta")).map_err(err("big migration folder"))?;
    fs::write(
        dir.join("meta/_journal.json"),
        r#"{"version":"7","dialect":"postgresql","entries":[{"idx":0,"version":"7","when":1,"tag":"0000_notes","breakpoints":true},{"idx":1,"version":"7","when":2,"tag":"0001_backfill","breakpoints":true}]}"#,
    )
    .map_err(err("big migration journal"))?;
    fs::write(
        dir.join("0000_notes.sql"),
        "CREATE TABLE \"notes\" (\"id\" integer PRIMARY KEY, \"body\" text NOT NULL);\n",
    )
    .map_err(err("big migration 0000"))?;
    let file =
        fs::File::create(dir.join("0001_backfill.sql")).map_err(err("big migration 0001"))?;
    let mut out = std::io::BufWriter::new(file);
    let filler = "a backfilled note, long enough to make each row about one KiB. ".repeat(16);
    let (mut written, mut id) = (0u64, 0usize);
    while written < mib as u64 * 1048576 {
        let rows: Vec<String> = (0..ROWS_PER_STATEMENT)
            .map(|k| format!("({}, '{filler}')", id + k))
            .collect();
        id += ROWS_PER_STATEMENT;
        let statement = format!(
            "INSERT INTO \"notes\" VALUES\n{};\n--> statement-breakpoint\n",
            rows.join(",\n")
        );
        out.write_all(statement.as_bytes())
            .map_err(err("big migration 0001"))?;
        written += statement.len() as u64;
    }
    out.flush().map_err(err("big migration 0001"))?;
    Ok(written)
}
