//! Growth checks: medians of one command's repetitions at each N, and whether the cost grows
//! linearly from the small to the large folder.

use crate::ctx::median;
use crate::spawn::RunResult;
use crate::table::{fmt_n, mib, ms, Table};

/// Medians of one command's repetitions at one N.
#[derive(Clone, Copy)]
pub(crate) struct Point {
    pub(crate) n: usize,
    pub(crate) wall: f64,
    pub(crate) rss: f64,
    /// user + sys, ms (median).
    pub(crate) cpu: f64,
    /// user + sys, ms (minimum: the least disturbed run, for the growth check).
    pub(crate) cpu_min: f64,
}

impl Point {
    pub(crate) fn of(n: usize, runs: &[RunResult]) -> Point {
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

/// `b` over `a`, each net of the fixed cost `base` (measured at N = 1).
fn net(a: f64, b: f64, base: f64) -> f64 {
    (b - base) / (a - base).max(0.05)
}

/// Rows for a small/large pair; `points` holds (N, wall ms, peak RSS MiB) with N = 1 first.
pub(crate) fn report_growth(
    table: &mut Table,
    what: &str,
    points: &[Point],
    target_ms: Option<f64>,
) {
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
    growth_row(table, what, base, p1, p2);
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
    note_growth(table, what, base, p1, p2);
}

/// Growth, judged on CPU time (user + sys; the minimum over the repetitions, as noise only
/// adds to it) net of the fixed cost measured at N = 1 (start-up, TLS, connect): wall time
/// on a shared machine also counts time spent waiting for a core.
fn growth_row(table: &mut Table, what: &str, base: Point, p1: Point, p2: Point) {
    let scale = p2.n as f64 / p1.n as f64;
    let limit = scale * 1.2;
    let cpu_net = net(p1.cpu_min, p2.cpu_min, base.cpu_min);
    table.row(
        &format!("{what}, growth"),
        &format!("{}->{}", fmt_n(p1.n), fmt_n(p2.n)),
        format!("wall {:.1}x raw", p2.wall / p1.wall),
        &format!("linear: CPU net of N=1 <= {limit:.0}x"),
        format!("CPU {cpu_net:.1}x net"),
        Some(cpu_net <= limit),
    );
}

fn note_growth(table: &mut Table, what: &str, base: Point, p1: Point, p2: Point) {
    let (n1, n2) = (fmt_n(p1.n), fmt_n(p2.n));
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
