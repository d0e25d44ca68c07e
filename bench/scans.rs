//! Workload 3: dry run (everything pending) and status (everything applied) over 1 / small /
//! large folders; growth from small to large must be linear.

use std::fs;

use crate::ctx::{expect_code, Ctx};
use crate::folders::{tag, when, Folder};
use crate::growth::{report_growth, Point};
use crate::table::{fmt_n, Table};
use crate::{err, progress, Res};

pub(crate) fn bench_scans(ctx: &mut Ctx, folders: &[Folder], table: &mut Table) -> Res<()> {
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

/// The tracking table of `db` filled as a real run of `f` would leave it (same hash and
/// created_at), written directly.
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
