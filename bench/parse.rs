//! Parsing one huge migration file (in process: `MigrationSet::load`): split at Drizzle's
//! `--> statement-breakpoint` and every statement's line counted. Must grow linearly.

use std::fs;
use std::path::Path;
use std::time::Instant;

use vamsa_migrate::source::MigrationSet;

use crate::ctx::{median, Ctx};
use crate::table::{fmt_n, ms, Table};
use crate::{err, progress, Res};

const STATEMENT: &str =
    "INSERT INTO t VALUES (1, 'some text that makes the line longer');--> statement-breakpoint\n";

pub(crate) fn bench_parse(ctx: &Ctx, table: &mut Table) -> Res<()> {
    let [small, large] = ctx.p.parse_ns;
    let mut points = Vec::new();
    for n in [small, large] {
        progress(&format!("parse: one migration of {} statements", fmt_n(n)));
        let dir = ctx.path(&format!("parse-{n}"));
        write_folder(&dir, n)?;
        let mut times = Vec::new();
        for _ in 0..ctx.p.reps {
            let started = Instant::now();
            let set = MigrationSet::load(&dir).map_err(err("loading the folder"))?;
            times.push(started.elapsed().as_secs_f64() * 1000.0);
            let count = set.migrations.first().map_or(0, |m| m.statements.len());
            if count != n {
                return Err(format!("parsed {count} statements, wrote {n}"));
            }
        }
        points.push((n, times));
    }
    report(table, &points);
    Ok(())
}

/// A journal folder with one migration of `n` statements.
fn write_folder(dir: &Path, n: usize) -> Res<()> {
    fs::create_dir_all(dir.join("meta")).map_err(err("parse folder"))?;
    fs::write(
        dir.join("meta/_journal.json"),
        r#"{"version":"7","dialect":"postgresql","entries":[{"idx":0,"version":"7","when":1,"tag":"0000_huge","breakpoints":true}]}"#,
    )
    .map_err(err("parse journal"))?;
    fs::write(dir.join("0000_huge.sql"), STATEMENT.repeat(n)).map_err(err("parse file"))
}

fn report(table: &mut Table, points: &[(usize, Vec<f64>)]) {
    let least = |t: &[f64]| t.iter().copied().fold(f64::INFINITY, f64::min);
    for (n, times) in points {
        table.row(
            "parse: one migration of N statements, wall",
            &fmt_n(*n),
            ms(median(times)),
            "",
            String::new(),
            None,
        );
    }
    let [(n1, t1), (n2, t2)] = points else {
        return;
    };
    // The least disturbed repetition of each: noise only adds time.
    let scale = *n2 as f64 / *n1 as f64;
    let limit = scale * 1.2;
    let growth = least(t2) / least(t1);
    table.row(
        "parse: one migration of N statements, growth",
        &format!("{}->{}", fmt_n(*n1), fmt_n(*n2)),
        format!("{growth:.1}x"),
        &format!("linear: <= {limit:.0}x"),
        String::new(),
        Some(growth <= limit),
    );
}
