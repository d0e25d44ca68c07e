//! Workload 1: apply N migrations to an empty database, side by side: the psql floor,
//! vamsa-migrate and each peer, each into a fresh database.
//!
//! The order of the tools inside a repetition changed results by up to 40% (the disk's work
//! after `CREATE DATABASE` and earlier runs lands on whoever comes next), so repetition r starts
//! at tool r mod k and goes round, every run is preceded by a `CHECKPOINT`, and each tool's
//! figure is the median of its per-repetition ratios to the floor of the same repetition.

use crate::corpus::Corpus;
use crate::ctx::Ctx;
use crate::sidebyside;
use crate::spawn::RunResult;
use crate::table::{fmt_n, Table};
use crate::tools::{check_applied, Tool};
use crate::{progress, Res};

/// Measures each corpus; returns, per tool (in `tools`' order), the database it applied in the
/// last repetition at the up-to-date N (everything applied), kept for workloads 2 and 4 (none
/// for the floor, which has no tracking table).
pub(crate) fn bench_apply(
    ctx: &mut Ctx,
    corpora: &[Corpus],
    tools: &[Tool],
    table: &mut Table,
) -> Res<Vec<Option<String>>> {
    let mut kept = vec![None; tools.len()];
    for corpus in corpora {
        let keep = corpus.folder.n == ctx.p.uptodate_n;
        let runs = measure(ctx, corpus, tools, keep.then_some(&mut kept))?;
        sidebyside::report_apply(ctx, table, corpus, &runs);
    }
    Ok(kept)
}

/// Per tool, its run of each repetition (index r: repetition r).
fn measure(
    ctx: &mut Ctx,
    corpus: &Corpus,
    tools: &[Tool],
    mut kept: Option<&mut Vec<Option<String>>>,
) -> Res<Vec<Vec<RunResult>>> {
    let k = tools.len();
    let mut runs = vec![Vec::new(); k];
    for rep in 0..ctx.p.reps {
        progress(&format!(
            "apply N={} ({} statements): repetition {}/{}",
            fmt_n(corpus.folder.n),
            fmt_n(corpus.folder.statements),
            rep + 1,
            ctx.p.reps
        ));
        for j in 0..k {
            let t = (rep + j) % k;
            let db = ctx.new_db(&format!("apply{}", corpus.folder.n))?;
            ctx.checkpoint()?;
            runs[t].push(tools[t].run(ctx, corpus, &db)?);
            if rep == 0 {
                check_applied(ctx, &tools[t], &db, corpus.folder.n)?;
            }
            match kept.as_deref_mut() {
                Some(kept) if rep + 1 == ctx.p.reps && !matches!(tools[t], Tool::Floor) => {
                    kept[t] = Some(db)
                }
                _ => ctx.drop_db(&db)?,
            }
        }
    }
    Ok(runs)
}
