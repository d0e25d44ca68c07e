//! Workload 2: `migrate` when everything is applied.

use crate::ctx::{expect_code, Ctx};
use crate::folders::Folder;
use crate::growth::Point;
use crate::spawn::RunResult;
use crate::table::{fmt_n, mib, ms, Table};
use crate::{progress, Res};

pub(crate) fn bench_uptodate(
    ctx: &mut Ctx,
    folder: &Folder,
    db: &str,
    table: &mut Table,
) -> Res<()> {
    let runs = measure(ctx, folder, db)?;
    report(table, folder.n, &runs);
    Ok(())
}

/// The runs with the URL a user writes (TLS probed, `prefer`), then with `sslmode=disable`.
fn measure(ctx: &mut Ctx, folder: &Folder, db: &str) -> Res<[Vec<RunResult>; 2]> {
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
    Ok(runs)
}

fn report(table: &mut Table, n: usize, runs: &[Vec<RunResult>; 2]) {
    let p = Point::of(n, &runs[0]);
    let plain = Point::of(n, &runs[1]);
    let n = fmt_n(n);
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
}
