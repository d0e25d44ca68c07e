//! Workload 1: apply N migrations to an empty database, against psql --single-transaction.

use crate::ctx::{expect_code, median, Ctx};
use crate::folders::Folder;
use crate::table::{fmt_n, ms, Table};
use crate::{progress, Res};

/// Measures each folder; returns the database of the last run of ours at the up-to-date N
/// (everything applied), kept for workloads 2 and 4.
pub(crate) fn bench_apply(ctx: &mut Ctx, folders: &[Folder], table: &mut Table) -> Res<String> {
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
            for is_ours in [rep % 2 == 0, rep % 2 != 0] {
                let db = ctx.new_db(&format!("apply{}", folder.n))?;
                ctx.checkpoint()?;
                if is_ours {
                    ours.push(apply_ours(ctx, folder, &db, rep == 0)?);
                } else {
                    floor.push(apply_floor(ctx, folder, &db)?);
                }
                let last_big = is_ours && rep + 1 == ctx.p.reps && folder.n == ctx.p.uptodate_n;
                if last_big {
                    keep = Some(db);
                } else {
                    ctx.drop_db(&db)?;
                }
            }
        }
        report(ctx, table, folder, &ours, &floor);
    }
    keep.ok_or_else(|| "no database kept for the up-to-date workload".into())
}

/// `vamsa-migrate migrate` into the empty `db`; its wall time in ms. The first repetition also
/// checks that every migration and table is there.
fn apply_ours(ctx: &mut Ctx, folder: &Folder, db: &str, check: bool) -> Res<f64> {
    let args = ctx.migrate_args();
    let (r, out) = ctx.ours(Some(db), &folder.dir, &args)?;
    expect_code("vamsa-migrate migrate", &r, &out, &[0])?;
    if check {
        let rows = ctx.psql(db, "SELECT count(*) FROM drizzle.__drizzle_migrations")?;
        let tables = ctx.psql(
            db,
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'",
        )?;
        if rows != folder.n.to_string() || tables != folder.n.to_string() {
            return Err(format!(
                "after migrate: {rows} rows and {tables} tables, expected {}",
                folder.n
            ));
        }
    }
    Ok(r.ms())
}

/// The floor: all of the folder's SQL through `psql --single-transaction`; its wall time in ms.
fn apply_floor(ctx: &mut Ctx, folder: &Folder, db: &str) -> Res<f64> {
    let mut argv = vec![ctx.cluster.program("psql").display().to_string()];
    argv.extend(
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
    argv.extend([
        "-p".into(),
        ctx.cluster.port().to_string(),
        "-d".into(),
        db.to_string(),
        "-f".into(),
        folder.all_sql.display().to_string(),
    ]);
    let (r, out) = ctx.run(argv)?;
    expect_code("psql --single-transaction", &r, &out, &[0])?;
    Ok(r.ms())
}

fn report(ctx: &Ctx, table: &mut Table, folder: &Folder, ours: &[f64], floor: &[f64]) {
    let (o, f) = (median(ours), median(floor));
    // The disk's fsync latency drifts (and other work may share the machine): the ratio is
    // the median of the ratios of each repetition's adjacent pair, not of the two medians.
    let pairs: Vec<f64> = ours.iter().zip(floor).map(|(o, f)| o / f).collect();
    let ratio = median(&pairs);
    let big = ctx.p.apply_ns.last() == Some(&folder.n);
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
