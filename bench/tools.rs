//! The tools measured side by side: the psql floor, vamsa-migrate and the installed peers; one
//! run of one tool on one corpus and database.

use crate::corpus::Corpus;
use crate::ctx::{expect_code, Ctx};
use crate::peers::Peer;
use crate::spawn::RunResult;
use crate::Res;

pub(crate) enum Tool<'a> {
    /// All of the corpus's SQL through `psql --single-transaction`.
    Floor,
    Ours,
    Peer(&'a Peer),
}

impl Tool<'_> {
    pub(crate) fn name(&self) -> &str {
        match self {
            Tool::Floor => "psql --single-transaction (floor)",
            Tool::Ours => "vamsa-migrate",
            Tool::Peer(p) => p.name,
        }
    }

    /// Runs the tool's `migrate` (the floor: its script) on `db`; an error unless it exits 0.
    pub(crate) fn run(&self, ctx: &mut Ctx, corpus: &Corpus, db: &str) -> Res<RunResult> {
        let (r, out) = match self {
            Tool::Floor => ctx.run(floor_argv(ctx, corpus, db))?,
            Tool::Ours => {
                let args = ctx.migrate_args();
                ctx.ours(Some(db), &corpus.folder.dir, &args)?
            }
            Tool::Peer(p) => {
                let (argv, env) = p.command(corpus, &ctx.url(db));
                ctx.run_env(argv, env)?
            }
        };
        expect_code(self.name(), &r, &out, &[0])?;
        Ok(r)
    }
}

/// The tools in the order of the columns: the floor, ours, then each peer.
pub(crate) fn all(peers: &[Peer]) -> Vec<Tool<'_>> {
    let mut tools = vec![Tool::Floor, Tool::Ours];
    tools.extend(peers.iter().map(Tool::Peer));
    tools
}

fn floor_argv(ctx: &Ctx, corpus: &Corpus, db: &str) -> Vec<String> {
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
        corpus.folder.all_sql.display().to_string(),
    ]);
    argv
}

/// Checks that `db` holds the corpus's `n` tables (each tool's own tracking table aside).
pub(crate) fn check_applied(ctx: &Ctx, tool: &Tool, db: &str, n: usize) -> Res<()> {
    let tables = ctx.psql(
        db,
        "SELECT count(*) FROM pg_tables WHERE schemaname = 'public' AND tablename ~ '^t[0-9]+$'",
    )?;
    if tables != n.to_string() {
        return Err(format!(
            "after {}: {tables} tables, expected {n}",
            tool.name()
        ));
    }
    Ok(())
}
