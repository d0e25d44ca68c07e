//! Watching the migrations folder (inotify through `notify`). The folder itself is watched
//! recursively (files and `meta/`), and each ancestor directory non-recursively, so that a
//! folder replaced by a rename, a `git checkout` or a symlink swap of a release is noticed.
//! The daemon re-creates the watch after each settled change, to follow the new inodes.

use std::path::{Path, PathBuf};

use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::mpsc;

/// Keeps the watch alive; dropping it stops watching.
pub(crate) struct FolderWatch {
    _watcher: notify::RecommendedWatcher,
}

/// Sends `()` on `changed` for every change that may affect `dir`.
pub(crate) fn watch(dir: &Path, changed: mpsc::UnboundedSender<()>) -> notify::Result<FolderWatch> {
    let target = absolute(dir);
    let filter = target.clone();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let relevant = match event {
            Ok(event) => {
                !is_read_only(&event.kind) && event.paths.iter().any(|p| affects(p, &filter))
            }
            // An overflowed queue means we missed something: re-read to be safe.
            Err(_) => true,
        };
        if relevant {
            let _ = changed.send(());
        }
    })?;
    if target.exists() {
        watcher.watch(&target, RecursiveMode::Recursive)?;
    }
    for ancestor in target.ancestors().skip(1) {
        if ancestor.exists() {
            // Best effort: an unreadable ancestor only means a rename there goes unseen.
            let _ = watcher.watch(ancestor, RecursiveMode::NonRecursive);
        }
    }
    Ok(FolderWatch { _watcher: watcher })
}

fn absolute(dir: &Path) -> PathBuf {
    if dir.is_absolute() {
        dir.to_path_buf()
    } else {
        std::env::current_dir().map_or_else(|_| dir.to_path_buf(), |cwd| cwd.join(dir))
    }
}

/// Our own reads of the folder must not count as changes, or we would loop.
fn is_read_only(kind: &EventKind) -> bool {
    matches!(kind, EventKind::Access(access) if *access != AccessKind::Close(AccessMode::Write))
}

/// A path inside the folder, or an ancestor on the way to it (a rename of a parent).
fn affects(path: &Path, dir: &Path) -> bool {
    path.starts_with(dir) || dir.starts_with(path)
}
