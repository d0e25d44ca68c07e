//! The suite's harness: one real PostgreSQL cluster for the whole test binary (initdb + pg_ctl
//! in a temporary directory, removed once the process is gone, however it ends), a fresh
//! database per test, and the binary under test. The tests of this binary run in parallel on
//! that cluster: whatever a test counts (sessions, locks, rows) it counts in its own database.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

pub use vamsa_testkit::cli::{Cli, Run, Spawned};
pub use vamsa_testkit::daemon::{misbehave, request, Daemon};
pub use vamsa_testkit::folder::Folder;
pub use vamsa_testkit::wait::eventually;
pub use vamsa_testkit::{root_or_skip, ClusterOptions, Signal, StopMode, TempCluster};

static CLUSTER: OnceLock<TempCluster> = OnceLock::new();
static NEXT_DB: AtomicUsize = AtomicUsize::new(0);

/// The binary under test; see [`Cli`] for the environment it gets. Without a rehearsal
/// (`VAMSA_MIGRATE_REHEARSE=never`): the suite's tests assert what a run does to the database
/// itself (a failure half-way included), which a rehearsal would catch first and which would
/// double each run's time; `rehearsal.rs` sets it back with [`rehearsing`].
pub fn cli() -> Cli {
    let mut cli = Cli::new(env!("CARGO_BIN_EXE_vamsa-migrate"));
    cli.env("VAMSA_MIGRATE_REHEARSE", "never");
    cli
}

/// `cli` with the default `rehearse = "auto"` (or whatever its config file says).
pub fn rehearsing(cli: &mut Cli) -> &mut Cli {
    cli.env_remove("VAMSA_MIGRATE_REHEARSE")
}

/// The shared cluster of this test binary. Statics are never dropped, so the reaper stops the
/// server and removes its directory once this process is gone (even after SIGKILL).
pub fn cluster() -> &'static TempCluster {
    CLUSTER.get_or_init(|| own_cluster(ClusterOptions::default()))
}

/// A cluster of the test's own (its own settings, stops and restarts, replicas): removed when
/// dropped, or by the reaper if the process dies first.
pub fn own_cluster(options: ClusterOptions) -> TempCluster {
    let cluster = TempCluster::start_with(options).expect("start a throwaway PostgreSQL");
    vamsa_testkit::reaper::reap_after_exit(&cluster).expect("start the cluster reaper");
    cluster
}

/// A copy of a folder of this repository, e.g. `tests/data/vamsa-drizzle`.
pub fn repo_folder(rel: &str) -> Folder {
    Folder::copy_of(&Path::new(env!("CARGO_MANIFEST_DIR")).join(rel))
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// A migration statement that runs until the test calls [`Db::open_gate`] (after
/// [`Db::close_gate`]): it polls `public.gate` every 20 ms. Under READ COMMITTED each poll takes
/// a new snapshot (PostgreSQL 15, "Transaction Isolation"), so it sees the commit that opens it.
/// Find it running with `db.has_activity(GATED_ACTIVITY)`.
pub const GATED: &str =
    "DO $$ BEGIN WHILE NOT EXISTS (SELECT FROM public.gate) LOOP PERFORM pg_sleep(0.02); END LOOP; END $$;";

/// The `pg_stat_activity` condition of a [`GATED`] statement in progress.
pub const GATED_ACTIVITY: &str =
    "state = 'active' AND query LIKE '%DO $$ BEGIN WHILE NOT EXISTS (SELECT FROM public.gate)%'";

/// A fresh database on the shared cluster.
pub struct Db {
    pub name: String,
    pub cluster: &'static TempCluster,
    /// This test's backup_dir.
    pub backups: tempfile::TempDir,
}

impl Db {
    pub fn new() -> Db {
        let cluster = cluster();
        let name = format!(
            "t{}_{}",
            std::process::id(),
            NEXT_DB.fetch_add(1, Ordering::SeqCst)
        );
        cluster.create_database(&name).expect("create database");
        Db {
            name,
            cluster,
            backups: tempfile::tempdir().expect("create a backup folder"),
        }
    }

    pub fn url(&self) -> String {
        self.cluster.url(&self.name)
    }

    pub fn psql(&self, sql: &str) -> String {
        self.cluster
            .psql(&self.name, sql)
            .unwrap_or_else(|e| panic!("psql {sql}: {e}"))
    }

    /// Tracking rows as (hash, created_at), in id order.
    pub fn rows(&self) -> Vec<(String, i64)> {
        let out = self
            .psql("SELECT hash || ' ' || created_at FROM drizzle.__drizzle_migrations ORDER BY id");
        out.lines()
            .map(|l| {
                let (h, c) = l.split_once(' ').expect("hash and created_at");
                (h.to_string(), c.parse().expect("created_at is a number"))
            })
            .collect()
    }

    pub fn table_exists(&self, name: &str) -> bool {
        self.psql(&format!("SELECT to_regclass('{name}') IS NOT NULL")) == "t"
    }

    /// A fingerprint of the catalog: schemas, relations, types, columns and constraints.
    pub fn catalog_fingerprint(&self) -> String {
        self.psql(
            "SELECT md5(string_agg(x, ',' ORDER BY x)) FROM ( \
               SELECT 'n:' || nspname AS x FROM pg_namespace \
               UNION ALL SELECT 'c:' || oid::regclass::text || ':' || relkind::text FROM pg_class \
               UNION ALL SELECT 't:' || oid::regtype::text FROM pg_type \
               UNION ALL SELECT 'a:' || attrelid::regclass::text || '.' || attname FROM pg_attribute WHERE attnum > 0 \
               UNION ALL SELECT 'k:' || conname FROM pg_constraint) s",
        )
    }

    /// Creates the closed gate that [`GATED`] waits on: a migration running it stays in
    /// progress until [`Db::open_gate`], however loaded the machine is.
    pub fn close_gate(&self) {
        self.psql("CREATE TABLE public.gate ()");
    }

    /// Lets a [`GATED`] statement (and so its migration) finish.
    pub fn open_gate(&self) {
        self.psql("INSERT INTO public.gate DEFAULT VALUES");
    }

    /// Whether another session of this database matches `condition` (on pg_stat_activity).
    pub fn has_activity(&self, condition: &str) -> bool {
        self.psql(&format!(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid() AND {condition}"
        )) != "0"
    }

    /// The binary with `--database-url` (this database), `--migrations-dir DIR` and
    /// `backup_dir` (this test's backup folder, by the environment) after its arguments.
    pub fn cli(&self, dir: &Path) -> Cli {
        let mut cli = cli();
        cli.database_url(&self.url())
            .migrations_dir(dir)
            .backup_dir(self.backups.path());
        cli
    }

    /// `vamsa-migrate ARGS` against this database and `dir`, run to completion.
    pub fn run(&self, dir: &Path, args: &[&str]) -> Run {
        self.cli(dir).args(args).run()
    }
}
