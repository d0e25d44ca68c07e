//! The peers: the tools an admin would run instead of vamsa-migrate, installed by the bench
//! itself from pinned npm packages into a cache reused across runs (`target/bench-peers/`, or
//! `$CARGO_TARGET_DIR/bench-peers/`), and the command line that applies a corpus with each.
//!
//! A peer whose install fails (no node or npm, registry unreachable) is not measured: the table
//! says why. `cargo test` never gets here (the bench does nothing without `--bench`).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::corpus::Corpus;
use crate::progress;

/// The migrator of drizzle-orm 0.x (journal layout), as the interop tests drive it.
const DRIZZLE_SCRIPT: &str = include_str!("../tests/interop/drizzle-migrate.mjs");
/// The migrator of drizzle-orm 1.0 (folder layout), as the interop tests drive it.
const DRIZZLE_V1_SCRIPT: &str = include_str!("../tests/interop/v1/drizzle-migrate.mjs");

/// What a peer reads and how it is started.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Kind {
    /// drizzle-orm 0.x's `migrate()` (node-postgres), on the journal folder: one transaction.
    Drizzle,
    /// drizzle-orm 1.0's `migrate()` (node-postgres), on the folder layout.
    DrizzleV1,
    /// dbmate's Go binary (`migrate`): each file in its own transaction.
    Dbmate,
}

/// One peer: its column name, its pinned npm packages, its kind.
pub(crate) struct Spec {
    pub(crate) name: &'static str,
    packages: &'static [&'static str],
    kind: Kind,
}

/// The pinned peers (the versions of tests/interop and tests/interop/v1 for Drizzle).
pub(crate) const SPECS: [Spec; 3] = [
    Spec {
        name: "drizzle-orm 0.45.4",
        packages: &["drizzle-orm@0.45.4", "pg@8.23.1"],
        kind: Kind::Drizzle,
    },
    Spec {
        name: "drizzle-orm 1.0.0-rc.5",
        packages: &["drizzle-orm@1.0.0-rc.5-ab785fc", "pg@8.23.1"],
        kind: Kind::DrizzleV1,
    },
    Spec {
        name: "dbmate 2.36.0",
        packages: &["dbmate@2.36.0"],
        kind: Kind::Dbmate,
    },
];

/// An installed peer: the program and the first arguments that run it.
pub(crate) struct Peer {
    pub(crate) name: &'static str,
    pub(crate) kind: Kind,
    program: PathBuf,
    script: Option<PathBuf>,
}

/// Each spec installed, or the reason it is not measured ("not measured: ...").
pub(crate) fn install_all() -> Vec<Result<Peer, (&'static str, String)>> {
    let cache = cache_dir();
    SPECS
        .iter()
        .map(|spec| {
            install(spec, &cache).map_err(|why| (spec.name, format!("not measured: {why}")))
        })
        .collect()
}

fn cache_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(t) => PathBuf::from(t).join("bench-peers"),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-peers"),
    }
}

fn install(spec: &Spec, cache: &Path) -> Result<Peer, String> {
    let dir = cache.join(spec.packages[0]);
    let marker = dir.join(".installed");
    let wanted = spec.packages.join(" ");
    if fs::read_to_string(&marker).ok().as_deref() != Some(wanted.as_str()) {
        progress(&format!("installing {wanted} into {}", dir.display()));
        npm_install(&dir, spec.packages)?;
        fs::write(&marker, &wanted).map_err(|e| format!("writing {}: {e}", marker.display()))?;
    }
    let (program, script) = match spec.kind {
        Kind::Dbmate => (dbmate_binary(&dir)?, None),
        Kind::Drizzle | Kind::DrizzleV1 => (node()?, Some(write_script(&dir, spec.kind)?)),
    };
    Ok(Peer {
        name: spec.name,
        kind: spec.kind,
        program,
        script,
    })
}

/// `npm install` of exactly `packages` into `dir/node_modules` (no package.json written).
fn npm_install(dir: &Path, packages: &[&str]) -> Result<(), String> {
    fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let out = Command::new("npm")
        .args(["install", "--no-save", "--no-audit", "--no-fund"])
        .args(["--fetch-retries=1", "--fetch-timeout=30000", "--prefix"])
        .arg(dir)
        .args(packages)
        .output()
        .map_err(|e| format!("npm not found: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    Err(format!("npm unreachable: {}", npm_reason(&stderr)))
}

/// The telling line of npm's error output (npm 7+ writes `npm error <text>`, older `npm ERR!`):
/// the first that is not one of the `code` / `errno` / `syscall` fields, e.g. `FetchError:
/// request to ... failed, reason: getaddrinfo ENOTFOUND registry.npmjs.org`.
fn npm_reason(stderr: &str) -> &str {
    let fields = ["code ", "errno ", "syscall "];
    stderr
        .lines()
        .filter_map(|l| {
            l.strip_prefix("npm error ")
                .or_else(|| l.strip_prefix("npm ERR! "))
        })
        .map(str::trim)
        .find(|l| !l.is_empty() && !fields.iter().any(|f| l.starts_with(f)))
        .or_else(|| stderr.lines().last())
        .unwrap_or("no output")
}

fn node() -> Result<PathBuf, String> {
    let out = Command::new("node")
        .arg("--version")
        .output()
        .map_err(|e| format!("node not found: {e}"))?;
    if !out.status.success() {
        return Err("node --version failed".into());
    }
    Ok(PathBuf::from("node"))
}

fn write_script(dir: &Path, kind: Kind) -> Result<PathBuf, String> {
    let text = if kind == Kind::DrizzleV1 {
        DRIZZLE_V1_SCRIPT
    } else {
        DRIZZLE_SCRIPT
    };
    let path = dir.join("drizzle-migrate.mjs");
    fs::write(&path, text).map_err(|e| format!("writing {}: {e}", path.display()))?;
    Ok(path)
}

/// The Go binary from the platform's optional dependency (`@dbmate/linux-x64`, ...), run
/// directly rather than through the package's node wrapper (`dist/cli.js`).
fn dbmate_binary(dir: &Path) -> Result<PathBuf, String> {
    let scope = dir.join("node_modules/@dbmate");
    let entries = fs::read_dir(&scope).map_err(|e| format!("{}: {e}", scope.display()))?;
    entries
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("bin/dbmate"))
        .find(|p| p.is_file())
        .ok_or_else(|| format!("no bin/dbmate under {}", scope.display()))
}

impl Peer {
    /// The argv and extra environment that apply `corpus` to the database at `url` (the URL a
    /// user writes, `sslmode` left to each tool's default: dbmate's lib/pq wants TLS by default,
    /// so it gets `sslmode=disable`, as a dbmate user with this server would write).
    pub(crate) fn command(
        &self,
        corpus: &Corpus,
        url: &str,
    ) -> (Vec<String>, Vec<(String, String)>) {
        let mut argv = vec![self.program.display().to_string()];
        match self.kind {
            Kind::Dbmate => {
                argv.extend(["--url".into(), format!("{url}?sslmode=disable")]);
                argv.extend([
                    "--migrations-dir".into(),
                    corpus.dbmate.display().to_string(),
                ]);
                argv.extend(["--no-dump-schema".into(), "migrate".into()]);
                (argv, Vec::new())
            }
            Kind::Drizzle | Kind::DrizzleV1 => {
                let folder = match self.kind {
                    Kind::DrizzleV1 => &corpus.v1,
                    _ => &corpus.folder.dir,
                };
                argv.extend(self.script.iter().map(|s| s.display().to_string()));
                argv.push(folder.display().to_string());
                (argv, vec![("DATABASE_URL".into(), url.to_string())])
            }
        }
    }
}
