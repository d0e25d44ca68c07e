//! Drizzle migrations folders written for a test.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A Drizzle folder (`meta/_journal.json` and one `<tag>.sql` per entry, drizzle-kit's layout
/// with journal version 7) in a temporary directory, removed on drop.
pub struct Folder {
    dir: tempfile::TempDir,
}

impl Folder {
    /// A folder written from (tag, when, sql) triples, in journal order (`idx` 0, 1, ...;
    /// `when` in Unix milliseconds, as drizzle-kit writes it).
    pub fn new(entries: &[(&str, i64, &str)]) -> Folder {
        let f = Folder {
            dir: tempfile::tempdir().expect("create a folder"),
        };
        f.write(entries);
        f
    }

    /// Rewrites the journal to exactly `entries` and writes their files (others stay).
    pub fn write(&self, entries: &[(&str, i64, &str)]) {
        std::fs::create_dir_all(self.path().join("meta")).expect("create meta/");
        let journal: Vec<String> = entries
            .iter()
            .enumerate()
            .map(|(i, (tag, when, _))| {
                format!(
                    "{{\"idx\":{i},\"version\":\"7\",\"when\":{when},\"tag\":\"{tag}\",\"breakpoints\":true}}"
                )
            })
            .collect();
        let text = format!(
            "{{\"version\":\"7\",\"dialect\":\"postgresql\",\"entries\":[{}]}}",
            journal.join(",")
        );
        std::fs::write(self.path().join("meta/_journal.json"), text).expect("write the journal");
        for (tag, _, sql) in entries {
            std::fs::write(self.path().join(format!("{tag}.sql")), sql).expect("write a migration");
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A copy of the folder at `src` (`cp -r`), e.g. a corpus kept in the repository.
    pub fn copy_of(src: &Path) -> Folder {
        let dir = tempfile::tempdir().expect("create a folder");
        let status = Command::new("cp")
            .arg("-r")
            .arg(src.join("."))
            .arg(dir.path())
            .status()
            .expect("run cp");
        assert!(status.success(), "cp -r {} failed", src.display());
        Folder { dir }
    }

    /// Keeps the directory on disk (the caller moves or removes it) and returns its path.
    pub fn keep(self) -> PathBuf {
        self.dir.keep()
    }
}
