//! Drift (`BENCH_ONLY=drift`): what comparing the live schema with the recorded one costs —
//! describing it from the catalogs (one query), reading the record, diffing — on Vamsa's real
//! schema (`tests/data/vamsa-drizzle`, the corpus of `../shared/corpora/vamsa-drizzle`) and
//! with 10x and 100x its objects (generated tables, each with columns, a primary key, an index
//! and a sequence, applied as migrations).
//!
//! Our code path end to end, server side included: `status` on an up-to-date database with
//! the record, minus `status` without it (its row renamed away, so `status` stops after
//! reading the record table), interleaved on the same database; medians of each, then the
//! difference. Twice: with the catalogs unchanged since the record (the recorded fingerprint
//! matches: nothing described), and changed (the fingerprint made stale, as any DDL, GRANT or
//! TRUNCATE would: the schema described and diffed).

use std::fs;
use std::path::{Path, PathBuf};

use crate::ctx::{expect_code, median, Ctx};
use crate::folders::journal_text;
use crate::spawn::RunResult;
use crate::table::{fmt_n, ms, Table};
use crate::{err, progress, Res};

/// Described objects per generated table: the table, 4 columns, the primary key constraint
/// and its index, an index, the serial's sequence.
const OBJECTS_PER_TABLE: usize = 9;
/// Tables per generated migration (one transaction each: its locks stay within
/// `max_locks_per_transaction`).
const TABLES_PER_MIGRATION: usize = 400;

/// One scale: the objects described, and the medians of `status` with and without the record
/// (and their minima: the least disturbed runs, for the growth check on a shared machine).
struct Point {
    scale: usize,
    objects: usize,
    /// `status` when the catalogs changed since the record (its fingerprint made stale): the
    /// schema described and diffed.
    with: f64,
    without: f64,
    with_min: f64,
    without_min: f64,
    /// `status` with the record and unchanged catalogs: the fingerprint only.
    unchanged: f64,
    /// Our process's CPU (user + sys), with minus without, ms: the record's JSON and the diff.
    cpu: f64,
}

impl Point {
    fn cost(&self) -> f64 {
        self.with - self.without
    }

    fn cost_min(&self) -> f64 {
        self.with_min - self.without_min
    }
}

pub(crate) fn bench_drift(ctx: &mut Ctx, table: &mut Table) -> Res<()> {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/vamsa-drizzle");
    let mut points: Vec<Point> = Vec::new();
    for scale in ctx.p.drift_scales {
        let base = points.first().map_or(0, |p| p.objects);
        let tables = (scale - 1) * base / OBJECTS_PER_TABLE;
        let dir = folder(ctx, &corpus, scale, tables)?;
        let db = ctx.new_db("drift")?;
        let (r, out) = ctx.ours(Some(&db), &dir, &ctx.migrate_args())?;
        expect_code("vamsa-migrate migrate (drift set-up)", &r, &out, &[0])?;
        let objects = ctx.psql(
            &db,
            "SELECT count(*) FROM vamsa_migrate.schema_record, jsonb_object_keys(description)",
        )?;
        let objects: usize = objects.parse().map_err(err("counting the objects"))?;
        progress(&format!("drift x{scale}: {} objects", fmt_n(objects)));
        ctx.checkpoint()?;
        let (with, without, unchanged) = measure(ctx, &db, &dir)?;
        let least =
            |runs: &[RunResult]| runs.iter().map(RunResult::ms).fold(f64::INFINITY, f64::min);
        let cpu_of = |runs: &[RunResult]| {
            median(
                &runs
                    .iter()
                    .map(|r| (r.utime_us + r.stime_us) as f64 / 1000.0)
                    .collect::<Vec<_>>(),
            )
        };
        points.push(Point {
            scale,
            objects,
            with: median(&with.iter().map(RunResult::ms).collect::<Vec<_>>()),
            without: median(&without.iter().map(RunResult::ms).collect::<Vec<_>>()),
            unchanged: median(&unchanged.iter().map(RunResult::ms).collect::<Vec<_>>()),
            with_min: least(&with),
            without_min: least(&without),
            cpu: cpu_of(&with) - cpu_of(&without),
        });
        ctx.drop_db(&db)?;
    }
    report(table, &points);
    Ok(())
}

/// The corpus, plus `tables` generated tables in migrations after it.
fn folder(ctx: &Ctx, corpus: &Path, scale: usize, tables: usize) -> Res<PathBuf> {
    let dir = ctx.path(&format!("drift-x{scale}"));
    fs::create_dir_all(dir.join("meta")).map_err(err("creating a folder"))?;
    let journal: serde_json::Value = serde_json::from_str(
        &fs::read_to_string(corpus.join("meta/_journal.json")).map_err(err("the corpus"))?,
    )
    .map_err(err("the corpus journal"))?;
    let mut entries = journal["entries"].as_array().cloned().unwrap_or_default();
    let newest = entries.iter().filter_map(|e| e["when"].as_i64()).max();
    for e in &entries {
        let tag = e["tag"].as_str().ok_or("a corpus entry without a tag")?;
        fs::copy(
            corpus.join(format!("{tag}.sql")),
            dir.join(format!("{tag}.sql")),
        )
        .map_err(err("copying the corpus"))?;
    }
    for (k, first) in (0..tables).step_by(TABLES_PER_MIGRATION).enumerate() {
        let idx = entries.len();
        let tag = format!("{idx:04}_bench_objects_{k}");
        let sql: Vec<String> = (first..tables.min(first + TABLES_PER_MIGRATION))
            .map(generated_table)
            .collect();
        fs::write(
            dir.join(format!("{tag}.sql")),
            sql.join("\n--> statement-breakpoint\n"),
        )
        .map_err(err("writing a migration"))?;
        entries.push(serde_json::json!({
            "idx": idx, "version": "7", "when": newest.unwrap_or(0) + 60_000 * (k as i64 + 1),
            "tag": tag, "breakpoints": true
        }));
    }
    fs::write(dir.join("meta/_journal.json"), journal_text(&entries))
        .map_err(err("writing the journal"))?;
    Ok(dir)
}

/// One generated table, as drizzle-kit writes it: [`OBJECTS_PER_TABLE`] objects.
fn generated_table(i: usize) -> String {
    format!(
        "CREATE TABLE \"bench_{i}\" (\n\t\"id\" serial PRIMARY KEY NOT NULL,\n\t\"name\" text NOT NULL,\n\
         \t\"parent_id\" integer,\n\t\"created_at\" timestamp DEFAULT now() NOT NULL\n);\n\
         --> statement-breakpoint\nCREATE INDEX \"bench_{i}_name_idx\" ON \"bench_{i}\" USING btree (\"name\");"
    )
}

/// How `status` finds the record in one measured run.
#[derive(Clone, Copy, PartialEq)]
enum Record {
    /// The catalogs unchanged since: the fingerprint matches, nothing described.
    Unchanged,
    /// The fingerprint made stale (as any DDL, GRANT or TRUNCATE since would): described, diffed.
    Changed,
    /// No record (its row renamed away): the baseline.
    Hidden,
}

/// `status` in each [`Record`] state, in turn, after one warm-up round: (changed, hidden,
/// unchanged) runs.
type Runs = (Vec<RunResult>, Vec<RunResult>, Vec<RunResult>);

fn measure(ctx: &mut Ctx, db: &str, dir: &Path) -> Res<Runs> {
    let (mut changed, mut hidden, mut unchanged) = (Vec::new(), Vec::new(), Vec::new());
    for rep in 0..=ctx.p.reps {
        for state in [Record::Unchanged, Record::Changed, Record::Hidden] {
            let r = status_with(ctx, db, dir, state)?;
            if rep == 0 {
                continue;
            }
            match state {
                Record::Unchanged => unchanged.push(r),
                Record::Changed => changed.push(r),
                Record::Hidden => hidden.push(r),
            }
        }
    }
    Ok((changed, hidden, unchanged))
}

fn status_with(ctx: &mut Ctx, db: &str, dir: &Path, state: Record) -> Res<RunResult> {
    const TABLE: &str = "UPDATE vamsa_migrate.schema_record SET ";
    let (before, after) = match state {
        Record::Unchanged => (None, None),
        Record::Changed => (
            Some("catalog_fingerprint = 'stale ' || catalog_fingerprint"),
            Some("catalog_fingerprint = substr(catalog_fingerprint, 7)"),
        ),
        Record::Hidden => (
            Some("tracking_table = '-' || tracking_table"),
            Some("tracking_table = substr(tracking_table, 2)"),
        ),
    };
    if let Some(set) = before {
        ctx.psql(db, &format!("{TABLE}{set}"))?;
    }
    let (r, out) = ctx.ours(Some(db), dir, &["status"])?;
    if let Some(set) = after {
        ctx.psql(db, &format!("{TABLE}{set}"))?;
    }
    expect_code("vamsa-migrate status (drift)", &r, &out, &[0])?;
    Ok(r)
}

fn report(table: &mut Table, points: &[Point]) {
    let Some(vamsa) = points.first() else { return };
    table.row(
        "drift: catalogs unchanged, fingerprint only (status with record - without), wall",
        &format!("Vamsa, {} objects", fmt_n(vamsa.objects)),
        ms(vamsa.unchanged - vamsa.without),
        "(info)",
        String::new(),
        None,
    );
    for p in &points[1..] {
        table.row(
            "drift: catalogs unchanged, fingerprint only (status with record - without), wall",
            &format!("x{}, {} objects", p.scale, fmt_n(p.objects)),
            ms(p.unchanged - p.without),
            "",
            String::new(),
            None,
        );
    }
    table.row(
        "drift: catalogs changed, describe + diff (status with record - without), wall",
        &format!("Vamsa, {} objects", fmt_n(vamsa.objects)),
        ms(vamsa.cost()),
        "< 50 ms",
        format!("{:.2}x", vamsa.cost() / 50.0),
        Some(vamsa.cost() < 50.0),
    );
    for p in &points[1..] {
        table.row(
            "drift: catalogs changed, describe + diff (status with record - without), wall",
            &format!("x{}, {} objects", p.scale, fmt_n(p.objects)),
            ms(p.cost()),
            "",
            String::new(),
            None,
        );
    }
    if let [base, mid, large] = points {
        // Net of the cost at Vamsa's size (the fixed part: one more round trip, the record's
        // row): cost per added object at the middle and the largest scale, from the minima
        // (noise on a shared machine only adds).
        let per =
            |p: &Point| (p.cost_min() - base.cost_min()) / (p.objects - base.objects).max(1) as f64;
        let ratio = per(large) / per(mid).max(1e-9);
        table.row(
            "drift: growth, cost per added object (minima)",
            &format!("x{} -> x{}", mid.scale, large.scale),
            format!(
                "{:.1} -> {:.1} us/object",
                per(mid) * 1000.0,
                per(large) * 1000.0
            ),
            "linear: <= 1.2x",
            format!("{ratio:.2}x"),
            Some(ratio <= 1.2),
        );
    }
    table.notes.push(format!(
        "drift: status with the record (catalogs changed / unchanged) / without it, medians: {}; our process's CPU for the changed case (record JSON + diff): {}.",
        points
            .iter()
            .map(|p| format!("x{} {} / {} / {}", p.scale, ms(p.with), ms(p.unchanged), ms(p.without)))
            .collect::<Vec<_>>()
            .join(", "),
        points
            .iter()
            .map(|p| format!("x{} {:.1} ms", p.scale, p.cpu))
            .collect::<Vec<_>>()
            .join(", "),
    ));
}
