//! Test harness: one real PostgreSQL cluster per test binary (started with initdb + pg_ctl in a
//! temp dir), a fresh database per test, and helpers to run the real binary.
#![allow(dead_code)]

pub mod daemon;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

pub use vamsa_migrate::pgcluster::TempCluster;

static CLUSTER: OnceLock<TempCluster> = OnceLock::new();
static NEXT_DB: AtomicUsize = AtomicUsize::new(0);

/// The shared cluster of this test binary. Statics are never dropped, so a watcher process
/// stops the server and removes its directory once this process is gone (even after SIGKILL).
pub fn cluster() -> &'static TempCluster {
    CLUSTER.get_or_init(|| {
        let cluster = TempCluster::start().expect("start a throwaway PostgreSQL");
        reap_after_exit(&cluster);
        cluster
    })
}

pub fn reap_after_exit(cluster: &TempCluster) {
    let script = format!(
        "while kill -0 {pid} 2>/dev/null; do sleep 0.3; done; \
         {ctl} -D {data} -m immediate stop >/dev/null 2>&1 || runuser -u postgres -- {ctl} -D {data} -m immediate stop >/dev/null 2>&1; \
         rm -rf {dir}",
        pid = std::process::id(),
        ctl = cluster.program("pg_ctl").display(),
        data = cluster.data_dir().display(),
        dir = cluster.dir().display(),
    );
    // Never waited for on purpose: the reaper's job starts when this process is gone.
    #[allow(clippy::zombie_processes)]
    Command::new("setsid")
        .args(["sh", "-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn the cluster reaper");
}

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
            backups: tempfile::tempdir().unwrap(),
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
                let (h, c) = l.split_once(' ').unwrap();
                (h.to_string(), c.parse().unwrap())
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

    /// `vamsa-migrate ARGS` against this database and `dir`.
    pub fn run(&self, dir: &Path, args: &[&str]) -> Run {
        let mut cmd = bin();
        cmd.args(args)
            .arg("--database-url")
            .arg(self.url())
            .arg("--migrations-dir")
            .arg(dir)
            .arg("--backup-dir")
            .arg(self.backups.path());
        Run::from(cmd.output().expect("run vamsa-migrate"))
    }
}

/// Runs `cmd` as uid/gid 65534 (nobody), with no supplementary groups.
pub fn as_nobody(cmd: &mut Command) {
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(cmd, || {
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setgid(65534) != 0
                || libc::setuid(65534) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// `vamsa-migrate migrate EXTRA --database-url URL --migrations-dir DIR`, run to completion.
pub fn run_migrate(url: &str, dir: &Path, extra: &[&str]) -> Run {
    Run::from(
        bin()
            .arg("migrate")
            .args(extra)
            .arg("--database-url")
            .arg(url)
            .arg("--migrations-dir")
            .arg(dir)
            .output()
            .expect("run vamsa-migrate"),
    )
}

/// The binary under test, with an environment that cannot leak settings in.
pub fn bin() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vamsa-migrate"));
    for (k, _) in std::env::vars() {
        if k.starts_with("VAMSA_MIGRATE") || k == "DATABASE_URL" || k == "CREDENTIALS_DIRECTORY" {
            cmd.env_remove(k);
        }
    }
    // Never read the host's packaged config, nor write to its backup folder, during tests.
    cmd.env("VAMSA_MIGRATE_CONFIG", empty_config());
    cmd.env(
        "VAMSA_MIGRATE_BACKUP_DIR",
        std::env::temp_dir().join(format!("vamsa-migrate-test-backups-{}", std::process::id())),
    );
    cmd.stdin(Stdio::null());
    cmd
}

fn empty_config() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let path =
            std::env::temp_dir().join(format!("vamsa-migrate-empty-{}.toml", std::process::id()));
        std::fs::write(&path, "# empty\n").unwrap();
        path
    })
    .clone()
}

#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(o: Output) -> Run {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

impl Run {
    #[track_caller]
    pub fn ok(&self) -> &Run {
        assert_eq!(self.code, 0, "expected success:\n{self:#?}");
        self
    }

    #[track_caller]
    pub fn code(&self, code: i32) -> &Run {
        assert_eq!(self.code, code, "expected exit {code}:\n{self:#?}");
        self
    }
}

/// A Drizzle folder written from (tag, when, sql) triples.
pub struct Folder {
    pub dir: tempfile::TempDir,
}

impl Folder {
    pub fn new(entries: &[(&str, i64, &str)]) -> Folder {
        let dir = tempfile::tempdir().unwrap();
        let f = Folder { dir };
        f.write(entries);
        f
    }

    pub fn write(&self, entries: &[(&str, i64, &str)]) {
        std::fs::create_dir_all(self.path().join("meta")).unwrap();
        let journal: Vec<String> = entries
            .iter()
            .enumerate()
            .map(|(i, (tag, when, _))| {
                format!(
                    "{{\"idx\":{i},\"version\":\"7\",\"when\":{when},\"tag\":\"{tag}\",\"breakpoints\":true}}"
                )
            })
            .collect();
        std::fs::write(
            self.path().join("meta/_journal.json"),
            format!(
                "{{\"version\":\"7\",\"dialect\":\"postgresql\",\"entries\":[{}]}}",
                journal.join(",")
            ),
        )
        .unwrap();
        for (tag, _, sql) in entries {
            std::fs::write(self.path().join(format!("{tag}.sql")), sql).unwrap();
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A copy of a folder from the repository (e.g. `tests/data/vamsa-drizzle`).
    pub fn copy_of(rel: &str) -> Folder {
        let dir = tempfile::tempdir().unwrap();
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
        let status = Command::new("cp")
            .arg("-r")
            .arg(format!("{}/.", src.display()))
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(status.success());
        Folder { dir }
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}
