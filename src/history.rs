//! What a run leaves in the run history (`db::history`): the run as its [`Event`]s show it
//! ([`RunLog`]), and the `git` commit of the migrations folder ([`source_commit`]).

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::db::history::NewRun;
use crate::protocol::{AppliedTiming, ErrorKind, ErrorReport, Event, Origin, RunFailure};

/// A run as its events show it, collected while it runs.
#[derive(Debug, Clone)]
pub(crate) struct RunLog {
    origin: Origin,
    started: SystemTime,
    migrations: Vec<AppliedTiming>,
    backup: Option<PathBuf>,
    accepted_edits: usize,
    /// The rehearsal's outcome so far: `started`, then `passed` (`failed` comes from the error).
    rehearsal: Option<&'static str>,
    /// The run got as far as the tracking table (a non-dry `pending` event comes after
    /// `db::ensure_table`): the database is one this tool migrates.
    reached_table: bool,
    /// Rows named by the tracking table's upgrade to Drizzle 1.0's shape.
    upgraded_rows: usize,
    /// A `restore`: it replaced the database (with the dump in `backup`).
    restored: bool,
}

impl RunLog {
    pub(crate) fn start(origin: Origin) -> RunLog {
        RunLog {
            origin,
            started: SystemTime::now(),
            migrations: Vec::new(),
            backup: None,
            accepted_edits: 0,
            rehearsal: None,
            reached_table: false,
            upgraded_rows: 0,
            restored: false,
        }
    }

    /// A `restore` of `dump`, started now: origin `restore`, the dump as the row's backup.
    pub(crate) fn restore(dump: PathBuf) -> RunLog {
        RunLog {
            backup: Some(dump),
            restored: true,
            reached_table: true,
            ..RunLog::start(Origin::Restore)
        }
    }

    /// The run upgraded the tracking table to Drizzle 1.0's shape, naming `rows` rows.
    pub(crate) fn upgraded_table(&mut self, rows: usize) {
        self.upgraded_rows += rows;
    }

    /// Takes note of one event of the run.
    pub(crate) fn see(&mut self, event: &Event) {
        match event {
            Event::Applied { migration, ms } => self.migrations.push(AppliedTiming {
                migration: migration.clone(),
                ms: *ms,
            }),
            Event::BackedUp { path, .. } => self.backup = Some(path.clone()),
            Event::AcceptedEdit { .. } => self.accepted_edits += 1,
            Event::Rehearsing { .. } => self.rehearsal = Some("started"),
            Event::Rehearsed { .. } => self.rehearsal = Some("passed"),
            Event::Pending { dry_run: false, .. } => self.reached_table = true,
            _ => {}
        }
    }

    /// Whether the run gets a row: it changed something (applied, accepted an edit, upgraded
    /// the tracking table, restored), or it failed.
    pub(crate) fn worth_recording(&self, failed: bool) -> bool {
        failed
            || !self.migrations.is_empty()
            || self.accepted_edits > 0
            || self.upgraded_rows > 0
            || self.restored
    }

    /// Whether the run may create the history table: it reached the tracking table (a run
    /// refused before that leaves the database untouched).
    pub(crate) fn creates_table(&self) -> bool {
        self.reached_table
    }

    /// The row, ended now.
    pub(crate) fn finish(
        self,
        error: Option<&ErrorReport>,
        tracking_table: String,
        source_commit: Option<String>,
    ) -> NewRun {
        NewRun {
            started: self.started,
            finished: SystemTime::now(),
            origin: self.origin,
            tracking_table,
            source_commit,
            migrations: self.migrations,
            backup: self.backup,
            rehearsal: match error {
                Some(e) if e.kind == ErrorKind::Rehearsal => Some("failed".to_string()),
                _ => self.rehearsal.map(str::to_string),
            },
            error: error.map(|e| RunFailure {
                kind: e.kind,
                message: e.message.clone(),
                migration: e.migration.clone(),
                sqlstate: e.sqlstate.clone(),
            }),
        }
    }
}

/// The commit checked out in the git work tree holding `dir`, read from the repository's
/// files (`.git` directory or `gitdir:` file, `HEAD`, the loose ref, `packed-refs`, and a
/// linked work tree's `commondir`; gitrepository-layout(5), Git 2.x), never by running `git`:
/// as root on a checkout another user owns, `git` refuses (safe.directory) and its
/// configuration could run programs. `None` outside a work tree or for a HEAD we cannot
/// resolve. Blocking: reads files.
pub(crate) fn source_commit(dir: &Path) -> Option<String> {
    let dir = dir.canonicalize().ok()?;
    let git_dir = dir.ancestors().find_map(git_dir_at)?;
    let head = std::fs::read_to_string(git_dir.join("HEAD")).ok()?;
    let head = head.trim();
    let Some(reference) = head.strip_prefix("ref:").map(str::trim) else {
        return object_id(head);
    };
    let common = std::fs::read_to_string(git_dir.join("commondir"))
        .ok()
        .map(|c| git_dir.join(c.trim()))
        .unwrap_or_else(|| git_dir.clone());
    let found = [&git_dir, &common].into_iter().find_map(|d| {
        let loose = std::fs::read_to_string(d.join(reference)).ok();
        loose
            .and_then(|l| object_id(l.trim()))
            .or_else(|| packed_ref(d, reference))
    });
    found
}

/// The repository directory of a work tree rooted at `dir`: `dir/.git` itself, or the
/// directory a `.git` file names (`gitdir: PATH`, relative to `dir`).
fn git_dir_at(dir: &Path) -> Option<PathBuf> {
    let dot_git = dir.join(".git");
    let meta = std::fs::symlink_metadata(&dot_git).ok()?;
    if meta.is_dir() {
        return Some(dot_git);
    }
    let text = std::fs::read_to_string(&dot_git).ok()?;
    let target = text.trim().strip_prefix("gitdir:")?.trim();
    Some(dir.join(target))
}

fn packed_ref(git_dir: &Path, reference: &str) -> Option<String> {
    let packed = std::fs::read_to_string(git_dir.join("packed-refs")).ok()?;
    packed.lines().find_map(|line| {
        let (id, name) = line.split_once(' ')?;
        (name == reference).then(|| object_id(id)).flatten()
    })
}

/// A SHA-1 (40) or SHA-256 (64) object id in lowercase hex.
fn object_id(text: &str) -> Option<String> {
    let ok = matches!(text.len(), 40 | 64)
        && text
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase());
    ok.then(|| text.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, text: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    #[test]
    fn the_commit_is_read_from_loose_packed_and_linked_work_tree_refs() {
        let a = "a".repeat(40);
        let b = "b".repeat(40);
        let repo = tempfile::tempdir().unwrap();
        let root = repo.path();
        write(&root.join(".git/HEAD"), "ref: refs/heads/main\n");
        write(&root.join(".git/refs/heads/main"), &format!("{a}\n"));
        write(&root.join("app/drizzle/meta/_journal.json"), "{}");
        assert_eq!(source_commit(&root.join("app/drizzle")), Some(a.clone()));
        std::fs::remove_file(root.join(".git/refs/heads/main")).unwrap();
        write(
            &root.join(".git/packed-refs"),
            &format!("# pack-refs\n{b} refs/heads/main\n"),
        );
        assert_eq!(source_commit(&root.join("app")), Some(b.clone()));
        // A linked work tree: `.git` is a file; its HEAD is detached.
        let linked = tempfile::tempdir().unwrap();
        let wt = root.join(".git/worktrees/x");
        write(&wt.join("HEAD"), &format!("{a}\n"));
        write(&wt.join("commondir"), "../..\n");
        write(
            &linked.path().join(".git"),
            &format!("gitdir: {}\n", wt.display()),
        );
        assert_eq!(source_commit(linked.path()), Some(a));
        write(&wt.join("HEAD"), "ref: refs/heads/main\n");
        assert_eq!(source_commit(linked.path()), Some(b));
        let plain = tempfile::tempdir().unwrap();
        assert_eq!(source_commit(plain.path()), None);
    }
}
