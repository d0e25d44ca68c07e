//! The bench context: the parameters, the cluster, the binary and a work folder; running a
//! measured command.

use std::fs;
use std::path::{Path, PathBuf};

use vamsa_testkit::TempCluster;

use crate::params::Params;
use crate::spawn::{measure, RunRequest, RunResult};
use crate::{err, Res};

pub(crate) struct Ctx {
    pub(crate) p: Params,
    pub(crate) cluster: TempCluster,
    pub(crate) bin: PathBuf,
    work: tempfile::TempDir,
    empty_config: PathBuf,
    /// Whether the binary has automatic backups (then they are turned off, see the header).
    pub(crate) has_backup: bool,
    /// Whether the binary rehearses each release on a scratch copy (then it is turned off too).
    pub(crate) has_rehearsal: bool,
    next_db: usize,
    /// The highest peak RSS of a runner so far (see `spawn`), in KiB.
    pub(crate) runner_hwm_kib: Option<u64>,
}

impl Ctx {
    pub(crate) fn new(p: Params, cluster: TempCluster, bin: PathBuf) -> Res<Ctx> {
        let work = tempfile::Builder::new()
            .prefix("vamsa-bench-")
            .tempdir()
            .map_err(err("temp dir"))?;
        let empty_config = work.path().join("empty.toml");
        fs::write(&empty_config, "").map_err(err("writing the empty config"))?;
        let mut ctx = Ctx {
            p,
            cluster,
            bin,
            work,
            empty_config,
            has_backup: false,
            has_rehearsal: false,
            next_db: 0,
            runner_hwm_kib: None,
        };
        let help = vec![
            ctx.bin.display().to_string(),
            "migrate".into(),
            "--help".into(),
        ];
        let (_, help) = ctx.run(help)?;
        ctx.has_backup = help.contains("--no-backup");
        ctx.has_rehearsal = help.contains("--no-rehearse");
        Ok(ctx)
    }

    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.work.path().join(name)
    }

    fn child_env(&self) -> Vec<(String, String)> {
        vec![
            ("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into()),
            ("LANG".into(), "C.UTF-8".into()),
            (
                "VAMSA_MIGRATE_CONFIG".into(),
                self.empty_config.display().to_string(),
            ),
        ]
    }

    /// Runs `argv` through a runner; its figures and its stdout (then stderr, marked).
    pub(crate) fn run(&mut self, argv: Vec<String>) -> Res<(RunResult, String)> {
        self.run_env(argv, Vec::new())
    }

    /// `run` with `extra` added to the child's environment.
    pub(crate) fn run_env(
        &mut self,
        argv: Vec<String>,
        extra: Vec<(String, String)>,
    ) -> Res<(RunResult, String)> {
        let stdout = self.path("child.out");
        let stderr = self.path("child.err");
        let mut env = self.child_env();
        env.extend(extra);
        let req = RunRequest {
            argv,
            env,
            stdout: stdout.clone(),
            stderr: stderr.clone(),
        };
        let result = measure(&req)?;
        self.runner_hwm_kib = self.runner_hwm_kib.max(result.runner_hwm_kib);
        let mut text = fs::read_to_string(&stdout).unwrap_or_default();
        let e = fs::read_to_string(&stderr).unwrap_or_default();
        if !e.is_empty() {
            text.push_str("\n[stderr]\n");
            text.push_str(&e);
        }
        Ok((result, text))
    }

    /// `vamsa-migrate <args> --database-url URL --migrations-dir DIR`.
    pub(crate) fn ours(
        &mut self,
        db: Option<&str>,
        dir: &Path,
        args: &[&str],
    ) -> Res<(RunResult, String)> {
        let url = db.map(|db| self.url(db));
        self.ours_at(url, dir, args)
    }

    pub(crate) fn ours_at(
        &mut self,
        url: Option<String>,
        dir: &Path,
        args: &[&str],
    ) -> Res<(RunResult, String)> {
        // The subcommand first: each takes its own flags.
        let mut argv = vec![self.bin.display().to_string()];
        argv.extend(args.iter().map(|s| s.to_string()));
        if let Some(url) = url {
            argv.push("--database-url".into());
            argv.push(url);
        }
        argv.push("--migrations-dir".into());
        argv.push(dir.display().to_string());
        self.run(argv)
    }

    /// The URL a user would write: no `sslmode`, so the default (`prefer`) applies, as in
    /// production. (The server has no TLS, so `prefer` ends up in plain text after the probe.)
    pub(crate) fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.cluster.port())
    }

    pub(crate) fn migrate_args(&self) -> Vec<&'static str> {
        let mut a = vec!["migrate", "-q"];
        if self.has_backup {
            a.push("--no-backup");
        }
        if self.has_rehearsal {
            a.push("--no-rehearse");
        }
        a
    }

    pub(crate) fn psql(&self, db: &str, sql: &str) -> Res<String> {
        self.cluster
            .psql(db, sql)
            .map_err(|e| format!("psql {sql}: {e}"))
    }

    /// A fresh database name (not created).
    pub(crate) fn new_db_name(&mut self, label: &str) -> String {
        self.next_db += 1;
        format!("b{}_{label}", self.next_db)
    }

    pub(crate) fn new_db(&mut self, label: &str) -> Res<String> {
        let name = self.new_db_name(label);
        self.cluster
            .create_database(&name)
            .map_err(err("CREATE DATABASE"))?;
        Ok(name)
    }

    pub(crate) fn drop_db(&self, name: &str) -> Res<()> {
        self.psql("postgres", &format!("DROP DATABASE \"{name}\""))
            .map(|_| ())
    }

    /// Flush dirty buffers now, so no checkpoint from earlier work lands inside a measurement.
    pub(crate) fn checkpoint(&self) -> Res<()> {
        self.psql("postgres", "CHECKPOINT").map(|_| ())
    }
}

pub(crate) fn expect_code(what: &str, r: &RunResult, out: &str, codes: &[i32]) -> Res<()> {
    if codes.contains(&r.code) {
        Ok(())
    } else {
        Err(format!(
            "{what} exited with {} (expected {codes:?}):\n{}",
            r.code,
            tail(out, 3000)
        ))
    }
}

fn tail(s: &str, max: usize) -> &str {
    let mut start = s.len().saturating_sub(max);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

pub(crate) fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}
