//! `new` with 1 / small / large journals: the journal rewrite must be linear.

use std::fs;

use crate::ctx::{expect_code, Ctx};
use crate::folders::Folder;
use crate::growth::{report_growth, Point};
use crate::table::{fmt_n, Table};
use crate::{err, progress, Res};

pub(crate) fn bench_new(ctx: &mut Ctx, folders: &[Folder], table: &mut Table) -> Res<()> {
    let mut points = Vec::new();
    for f in folders {
        progress(&format!("new with {} journal entries", fmt_n(f.n)));
        // Only the journal matters to `new`; work on a copy of it.
        let dir = ctx.path(&format!("new-{}", f.n));
        fs::create_dir_all(dir.join("meta")).map_err(err("new folder"))?;
        let journal = fs::read(f.dir.join("meta/_journal.json")).map_err(err("journal"))?;
        let created = dir.join(format!("{}.sql", tag_for_new(f.n)));
        let mut runs = Vec::new();
        for rep in 0..=ctx.p.reps * 2 {
            fs::write(dir.join("meta/_journal.json"), &journal).map_err(err("journal"))?;
            let _ = fs::remove_file(&created);
            let (r, out) = ctx.ours(None, &dir, &["new", "bench new"])?;
            expect_code("new", &r, &out, &[0])?;
            if !created.exists() {
                return Err(format!("new did not create {}: {out}", created.display()));
            }
            if rep > 0 {
                runs.push(r);
            }
        }
        points.push(Point::of(f.n, &runs));
    }
    report_growth(table, "new (journal rewrite, fsync)", &points, None);
    Ok(())
}

fn tag_for_new(n: usize) -> String {
    format!("{n:04}_bench_new")
}
