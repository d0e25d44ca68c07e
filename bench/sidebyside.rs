//! The side-by-side rows of workloads 1 (apply) and 2 (up to date): a column per tool, ratios
//! as the median of per-repetition ratios (min-max shown: the machine's noise), peak RSS per
//! tool, the "faster than every peer?" verdict, and the targets in the main table.

use crate::corpus::Corpus;
use crate::ctx::{median, Ctx};
use crate::spawn::RunResult;
use crate::table::{fmt_n, mib, ms, Table};
use crate::tools::Tool;
use crate::{progress, Res};

/// Column of the floor and of ours in `tools::all`; the peers follow.
const FLOOR: usize = 0;
const OURS: usize = 1;
/// Target: apply at the largest N within this factor of the floor.
const APPLY_VS_FLOOR: f64 = 1.10;
/// Target: up to date at least this many times faster than every peer.
const UPTODATE_VS_PEERS: f64 = 3.0;

/// Per tool, per repetition: wall time in ms.
fn walls(runs: &[Vec<RunResult>]) -> Vec<Vec<f64>> {
    runs.iter()
        .map(|rs| rs.iter().map(RunResult::ms).collect())
        .collect()
}

/// `a[r] / b[r]` for each repetition r.
fn per_rep(a: &[f64], b: &[f64]) -> Vec<f64> {
    a.iter().zip(b).map(|(a, b)| a / b).collect()
}

/// "1.09x (1.02-1.15)": median (min-max); "-" when empty.
fn spread(ratios: &[f64]) -> String {
    let min = ratios.iter().copied().fold(f64::INFINITY, f64::min);
    let max = ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if ratios.is_empty() {
        return "-".into();
    }
    format!("{:.2}x ({min:.2}-{max:.2})", median(ratios))
}

fn cells(values: &[Vec<f64>], show: impl Fn(f64) -> String) -> Vec<String> {
    values
        .iter()
        .map(|v| {
            if v.is_empty() {
                "-".into()
            } else {
                show(median(v))
            }
        })
        .collect()
}

/// Per peer: its name and the median of per-repetition `ours / peer` wall ratios (`peer / ours`
/// with `inverse`).
fn vs_peers(table: &Table, walls: &[Vec<f64>], inverse: bool) -> Vec<(String, f64)> {
    (OURS + 1..walls.len())
        .map(|t| {
            let name = table.side.tools.get(t).cloned().unwrap_or_default();
            let ratios = if inverse {
                per_rep(&walls[t], &walls[OURS])
            } else {
                per_rep(&walls[OURS], &walls[t])
            };
            (name, median(&ratios))
        })
        .collect()
}

/// The peer with the largest `ours / peer` ratio (the one closest to beating us).
fn closest(vs: &[(String, f64)]) -> Option<&(String, f64)> {
    vs.iter().max_by(|a, b| a.1.total_cmp(&b.1))
}

pub(crate) fn report_apply(ctx: &Ctx, table: &mut Table, corpus: &Corpus, runs: &[Vec<RunResult>]) {
    let n = fmt_n(corpus.folder.n);
    let w = walls(runs);
    let ratios: Vec<Vec<f64>> = w.iter().map(|t| per_rep(t, &w[FLOOR])).collect();
    let rss: Vec<Vec<f64>> = runs
        .iter()
        .map(|rs| rs.iter().map(RunResult::rss_mib).collect())
        .collect();
    let vs = vs_peers(table, &w, false);
    let worst = closest(&vs);
    let verdict = match worst {
        None => "- (no peer measured)".to_string(),
        Some((name, r)) if *r < 1.0 => format!("yes (ours/peer <= {r:.2}x, {name})"),
        Some((name, r)) => format!("NO (ours/peer {r:.2}x, {name})"),
    };
    table
        .side
        .row("1. apply, wall (median)", &n, cells(&w, ms), "");
    let x_floor: Vec<String> = ratios.iter().map(|r| spread(r)).collect();
    table
        .side
        .row("1. apply, x floor: median (min-max)", &n, x_floor, &verdict);
    table
        .side
        .row("1. apply, peak RSS (median)", &n, cells(&rss, mib), "");
    apply_targets(ctx, table, corpus.folder.n, &w, &ratios[OURS], worst);
    table.notes.push(format!(
        "apply N={n}: {} statements; runs in ms per tool (repetition order): {}",
        fmt_n(corpus.folder.statements),
        runs_note(table, &w)
    ));
}

fn apply_targets(
    ctx: &Ctx,
    table: &mut Table,
    n: usize,
    w: &[Vec<f64>],
    ours_x_floor: &[f64],
    worst: Option<&(String, f64)>,
) {
    let big = ctx.p.apply_ns.last() == Some(&n);
    let ratio = median(ours_x_floor);
    table.row(
        "1. apply to empty DB (vs psql --single-transaction)",
        &fmt_n(n),
        ms(median(&w[OURS])),
        &format!(
            "floor {}{}",
            ms(median(&w[FLOOR])),
            if big { "; <= 1.10x" } else { "" }
        ),
        format!("{ratio:.2}x"),
        big.then_some(ratio <= APPLY_VS_FLOOR),
    );
    table.row(
        "1. apply: faster than every peer (ours/peer)",
        &fmt_n(n),
        ms(median(&w[OURS])),
        "< 1.00x vs each peer",
        worst.map_or("-".into(), |(name, r)| format!("{r:.2}x ({name})")),
        worst.map(|(_, r)| *r < 1.0),
    );
}

fn runs_note(table: &Table, w: &[Vec<f64>]) -> String {
    w.iter()
        .enumerate()
        .filter(|(_, runs)| !runs.is_empty())
        .map(|(t, runs)| {
            let name = table.side.tools.get(t).map_or("?", String::as_str);
            let runs: Vec<i64> = runs.iter().map(|v| v.round() as i64).collect();
            format!("{name} {runs:?}")
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Workload 2 side by side: each tool's `migrate` again on the database it applied everything
/// to (`dbs`, per tool), one warm-up round, then `2 x reps` rounds in a rotating order.
pub(crate) fn bench_uptodate(
    ctx: &mut Ctx,
    corpus: &Corpus,
    tools: &[Tool],
    dbs: &[Option<String>],
    table: &mut Table,
) -> Res<()> {
    let present: Vec<usize> = (0..tools.len()).filter(|&t| dbs[t].is_some()).collect();
    let mut runs = vec![Vec::new(); tools.len()];
    for round in 0..=ctx.p.reps * 2 {
        for j in 0..present.len() {
            let t = present[(round + j) % present.len()];
            let db = dbs[t].as_deref().unwrap_or_default();
            let r = tools[t].run(ctx, corpus, db)?;
            if round > 0 {
                runs[t].push(r);
            }
        }
    }
    progress(&format!(
        "up to date N={} side by side: done",
        fmt_n(corpus.folder.n)
    ));
    report_uptodate(table, corpus.folder.n, &runs);
    Ok(())
}

fn report_uptodate(table: &mut Table, n: usize, runs: &[Vec<RunResult>]) {
    let n = fmt_n(n);
    let w = walls(runs);
    let x_ours: Vec<String> = w.iter().map(|t| spread(&per_rep(t, &w[OURS]))).collect();
    let rss: Vec<Vec<f64>> = runs
        .iter()
        .map(|rs| rs.iter().map(RunResult::rss_mib).collect())
        .collect();
    // peer / ours: how many times faster we are; the smallest is the verdict.
    let vs = vs_peers(table, &w, true);
    let least = vs.iter().min_by(|a, b| a.1.total_cmp(&b.1));
    let verdict = match least {
        None => "- (no peer measured)".to_string(),
        Some((name, r)) if *r > 1.0 => format!("yes (peer/ours >= {r:.2}x, {name})"),
        Some((name, r)) => format!("NO (peer/ours {r:.2}x, {name})"),
    };
    table
        .side
        .row("2. up to date, wall (median)", &n, cells(&w, ms), "");
    table.side.row(
        "2. up to date, x ours: median (min-max)",
        &n,
        x_ours,
        &verdict,
    );
    table
        .side
        .row("2. up to date, peak RSS (median)", &n, cells(&rss, mib), "");
    table.row(
        "2. up to date: faster than every peer by >= 3x (peer/ours)",
        &n,
        ms(median(&w[OURS])),
        ">= 3.00x vs each peer",
        least.map_or("-".into(), |(name, r)| format!("{r:.2}x ({name})")),
        least.map(|(_, r)| *r >= UPTODATE_VS_PEERS),
    );
    table.notes.push(format!(
        "up to date N={n} side by side: runs in ms per tool: {}",
        runs_note(table, &w)
    ));
}
