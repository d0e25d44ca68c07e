//! Reading a Drizzle migrations folder from disk, in either layout (detected, see [`Layout`]):
//! `meta/_journal.json` plus one `.sql` file per journal entry (drizzle-kit 0.x), or one folder
//! per migration holding `migration.sql` (Drizzle 1.0, module `v1`). Everything here is
//! read-only and validated before anything touches a database, so a bad folder is always
//! reported with nothing changed.

pub mod v1;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use sha2::{Digest, Sha256};

/// The separator Drizzle writes between statements; its migrator splits on exactly this text.
pub const BREAKPOINT: &str = "--> statement-breakpoint";

/// First line that opts a migration out of the surrounding transaction (for statements such as
/// `CREATE INDEX CONCURRENTLY` that PostgreSQL refuses to run inside one).
pub const NO_TRANSACTION_MARKER: &str = "-- vamsa-migrate: no-transaction";

/// A line of ours in the file `vamsa-migrate new` writes: a file holding it is refused until
/// the line is deleted, so a placeholder is never applied by accident (a file with no
/// statement at all is a valid no-op migration, as in Drizzle).
pub const PLACEHOLDER_MARKER: &str =
    "-- vamsa-migrate: placeholder; delete this line once the SQL below is written";

/// The UTF-8 byte-order mark some editors put at the start of a file.
const BOM: char = '\u{feff}';

pub(crate) const JOURNAL: &str = "meta/_journal.json";

/// One statement of a migration, exactly as Drizzle would send it to the server: a slice of
/// the file's one shared text (see [`Statements`]), never a copy of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Statement<'a> {
    /// The text between breakpoints, untouched: Drizzle executes it as is.
    pub sql: &'a str,
    /// 1-based line in the file where the statement's first non-blank character is.
    pub line: usize,
    /// 1-based line in the file where `sql` begins (PostgreSQL error positions count from here).
    pub sql_start_line: usize,
}

/// The statements of one migration file: its text (read once, shared by every clone of the
/// [`Migration`]) and how many statements it splits into. Statements are split on demand as
/// slices of that text, so a file of N bytes costs N bytes, however many statements it holds.
///
/// The text may be dropped ([`MigrationSet::without_texts`]): the daemon keeps only the hashes
/// and stamps of the files it read, and a migration without its text must be read again
/// ([`MigrationSet::with_texts`]) before it is shown or applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statements {
    /// The whole file and the byte where its code starts (after a BOM); `None` once dropped.
    text: Option<(Arc<String>, usize)>,
    count: usize,
}

impl Statements {
    /// `text[start..]` split at Drizzle's breakpoints; `text` is moved, not copied.
    fn new(text: String, start: usize) -> Statements {
        let count = Iter::new(&text[start..]).count();
        Statements {
            text: Some((Arc::new(text), start)),
            count,
        }
    }

    /// The number of statements (also known once the text is dropped).
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Whether the text is here; without it [`iter`](Self::iter) yields nothing.
    pub fn has_text(&self) -> bool {
        self.text.is_some()
    }

    /// The statements in file order (none when the text was dropped).
    pub fn iter(&self) -> Iter<'_> {
        Iter::new(
            self.text
                .as_ref()
                .map_or("", |(text, start)| &text[*start..]),
        )
    }

    /// The statement at 0-based `index`.
    pub fn get(&self, index: usize) -> Option<Statement<'_>> {
        self.iter().nth(index)
    }

    fn without_text(&self) -> Statements {
        Statements {
            text: None,
            count: self.count,
        }
    }
}

impl<'a> IntoIterator for &'a Statements {
    type Item = Statement<'a>;
    type IntoIter = Iter<'a>;

    fn into_iter(self) -> Iter<'a> {
        self.iter()
    }
}

/// The statements of a text, split like Drizzle's migrator does (on every breakpoint, whatever
/// the journal's `breakpoints` flag says), skipping pieces that hold nothing but whitespace and
/// `--` comments.
#[derive(Debug, Clone)]
pub struct Iter<'a> {
    pieces: std::str::Split<'a, &'static str>,
    /// The 1-based line where the next piece starts.
    line: usize,
}

impl<'a> Iter<'a> {
    fn new(text: &'a str) -> Iter<'a> {
        Iter {
            pieces: text.split(BREAKPOINT),
            line: 1,
        }
    }
}

impl<'a> Iterator for Iter<'a> {
    type Item = Statement<'a>;

    fn next(&mut self) -> Option<Statement<'a>> {
        loop {
            let piece = self.pieces.next()?;
            let sql_start_line = self.line;
            self.line += newlines(piece);
            if let Some(offset) = first_code_offset(piece) {
                let lead = &piece[..offset];
                let blank_start = lead.rfind('\n').map_or(0, |i| i + 1);
                return Some(Statement {
                    sql: piece,
                    line: sql_start_line + newlines(&piece[..blank_start]),
                    sql_start_line,
                });
            }
        }
    }
}

fn newlines(text: &str) -> usize {
    text.bytes().filter(|b| *b == b'\n').count()
}

/// A migration file together with its journal entry (journal layout) or folder (folder layout).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migration {
    /// The journal's `idx`; in the folder layout the 0-based position in name order.
    pub idx: u64,
    /// The journal's `tag`; in the folder layout the folder's name, which Drizzle 1.0 records
    /// in the tracking table's `name` column.
    pub tag: String,
    /// Milliseconds Drizzle stores as `created_at`: the journal's `when`, or in the folder
    /// layout the UTC time of the name's 14-digit prefix ([`v1::created_at`]).
    pub when: i64,
    /// `<tag>.sql`, or `<tag>/migration.sql` in the folder layout: relative to the folder.
    pub file_name: String,
    /// Lowercase hex SHA-256 of the file's exact bytes (a BOM included): the `hash` column
    /// Drizzle writes.
    pub hash: String,
    /// The SHA-256 of the file with only its line endings changed (see [`line_ending_hashes`]):
    /// a recorded hash equal to one of these is the same migration checked out with other
    /// line endings, not an edit.
    pub line_ending_hashes: Vec<String>,
    /// The file starts with a UTF-8 byte-order mark (never sent to the server).
    pub bom: bool,
    pub statements: Statements,
    pub no_transaction: bool,
    /// The file's identity when it was read, if old enough to be trusted for reuse.
    pub stamp: Option<FileStamp>,
}

/// What identifies a file's content without reading it: device, inode, size, and change
/// times to the nanosecond. Only recorded for files last changed a while before they were
/// read (see [`FileStamp::trusted`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

/// A file changed less than this before we read it may change again within the same
/// timestamp tick, invisibly; such files are read again next time (git's "racy" rule).
const RACY: i128 = 2_000_000_000;

impl FileStamp {
    fn of(meta: &fs::Metadata) -> FileStamp {
        use std::os::unix::fs::MetadataExt;
        FileStamp {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime_ns: meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128,
            ctime_ns: meta.ctime() as i128 * 1_000_000_000 + meta.ctime_nsec() as i128,
        }
    }

    fn trusted(self, now_ns: i128) -> Option<FileStamp> {
        (now_ns - self.ctime_ns.max(self.mtime_ns) > RACY).then_some(self)
    }
}

/// Something odd about the folder that does not stop a run but that an admin should see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceWarning {
    /// A `.sql` file on disk that no journal entry names.
    NotInJournal { file_name: String },
    /// A top-level `.sql` file in the folder layout, which Drizzle 1.0 ignores.
    NotInFolder { file_name: String },
    /// A file starting with a UTF-8 byte-order mark: it is skipped, never sent to the server.
    Bom { file_name: String },
    /// An entry whose `when` is older than an earlier entry's (a migration merged from a branch).
    WhenGoesBack {
        file_name: String,
        when: i64,
        earlier_file: String,
        earlier_when: i64,
    },
}

impl fmt::Display for SourceWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SourceWarning::NotInJournal { file_name } => write!(
                f,
                "{file_name} is not in meta/_journal.json; it will not be applied"
            ),
            SourceWarning::NotInFolder { file_name } => write!(
                f,
                "{file_name} is not in a migration folder (<YYYYMMDDHHMMSS>_<name>/migration.sql); \
                 it will not be applied"
            ),
            SourceWarning::Bom { file_name } => write!(
                f,
                "{file_name} starts with a UTF-8 byte-order mark; it is not sent to the server \
                 (save the file as UTF-8 without BOM)"
            ),
            SourceWarning::WhenGoesBack {
                file_name,
                when,
                earlier_file,
                earlier_when,
            } => write!(
                f,
                "{file_name} has an older \"when\" ({when}) than the earlier {earlier_file} \
                 ({earlier_when}); migrations are applied in journal order"
            ),
        }
    }
}

/// Why a migrations folder could not be read. Each variant names the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{path}: no migrations journal; is migrations_dir the Drizzle folder (the one holding meta/_journal.json, or with Drizzle 1.0 one folder per migration holding migration.sql)?")]
    NoJournal { path: PathBuf },
    #[error("{path}: {problem}; Drizzle 1.0 could not apply this folder either")]
    FolderName {
        path: PathBuf,
        problem: v1::NameProblem,
    },
    #[error("{path}: holds both migrations layouts, a conversion stopped half-way: left behind of the journal layout: {}; already in the folder layout: {}. Restore the old layout (for example `git checkout -- {}` and remove the new folders) and run `vamsa-migrate convert --write`, which converts every entry; or make `drizzle-kit up` finish (it needs meta/<idx>_snapshot.json for every entry)", left_behind.join(", "), folders_shown(folders), path.display())]
    MixedLayout {
        path: PathBuf,
        /// `meta/_journal.json` and the top-level `.sql` files.
        left_behind: Vec<String>,
        /// Folders already holding `migration.sql`, in name order.
        folders: Vec<String>,
    },
    #[error("{path}: cannot read: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}:{line}:{column}: invalid journal: {message}")]
    InvalidJournal {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{path}: journal entry {idx} ({tag}) names {file_name}, which does not exist")]
    MissingFile {
        path: PathBuf,
        idx: u64,
        tag: String,
        file_name: String,
    },
    #[error("{path}: journal has two entries with idx {idx}")]
    DuplicateIdx { path: PathBuf, idx: u64 },
    #[error("{path}: journal has two entries with tag {tag:?}")]
    DuplicateTag { path: PathBuf, tag: String },
    #[error("{path}: journal entry {idx} has tag {tag:?}, which would name a file outside the migrations folder")]
    UnsafeTag {
        path: PathBuf,
        idx: u64,
        tag: String,
    },
    #[error("{path}: {file_name} resolves to {target}, outside the migrations folder")]
    OutsideFolder {
        path: PathBuf,
        file_name: String,
        target: PathBuf,
    },
    #[error("{path}:{line}: not valid UTF-8 (byte {byte}); save the file as UTF-8")]
    NotUtf8 {
        path: PathBuf,
        line: usize,
        byte: usize,
    },
    #[error("{path}: is {kind}, not a regular file; a migration file and the journal must be regular files (or symlinks to one)")]
    NotRegularFile { path: PathBuf, kind: &'static str },
    #[error("{path}:{line}: still the placeholder `vamsa-migrate new` wrote; write the migration's SQL, then delete the line {PLACEHOLDER_MARKER:?}")]
    Placeholder { path: PathBuf, line: usize },
}

impl SourceError {
    /// The file the error is about.
    pub fn path(&self) -> &Path {
        match self {
            SourceError::NoJournal { path }
            | SourceError::FolderName { path, .. }
            | SourceError::MixedLayout { path, .. }
            | SourceError::Io { path, .. }
            | SourceError::InvalidJournal { path, .. }
            | SourceError::MissingFile { path, .. }
            | SourceError::DuplicateIdx { path, .. }
            | SourceError::DuplicateTag { path, .. }
            | SourceError::UnsafeTag { path, .. }
            | SourceError::OutsideFolder { path, .. }
            | SourceError::NotUtf8 { path, .. }
            | SourceError::NotRegularFile { path, .. }
            | SourceError::Placeholder { path, .. } => path,
        }
    }
}

/// The first few folder names, for a message.
fn folders_shown(folders: &[String]) -> String {
    let mut shown = folders
        .iter()
        .take(3)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if folders.len() > 3 {
        shown.push_str(&format!(" and {} more", folders.len() - 3));
    }
    shown
}

/// How a migrations folder is laid out; detected from what is on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Layout {
    /// drizzle-kit 0.x: `meta/_journal.json` and `<tag>.sql` files, applied in journal order.
    #[default]
    Journal,
    /// Drizzle 1.0: `<YYYYMMDDHHMMSS>_<name>/migration.sql`, applied in name order, tracked by
    /// name.
    Folders,
}

impl Layout {
    /// The path of migration `tag`'s SQL file relative to the migrations folder.
    fn file_name(self, tag: &str) -> String {
        match self {
            Layout::Journal => format!("{tag}.sql"),
            Layout::Folders => v1::file_name(tag),
        }
    }
}

/// A whole migrations folder, validated, in apply order (journal order, or name order in the
/// folder layout).
#[derive(Debug, Clone)]
pub struct MigrationSet {
    pub dir: PathBuf,
    pub layout: Layout,
    pub migrations: Vec<Migration>,
    pub warnings: Vec<SourceWarning>,
}

#[derive(Deserialize)]
struct Journal {
    entries: Vec<JournalEntry>,
}

#[derive(Deserialize)]
struct JournalEntry {
    idx: u64,
    when: i64,
    tag: String,
}

impl MigrationSet {
    /// Reads and validates `dir`. Nothing is written anywhere.
    pub fn load(dir: &Path) -> Result<MigrationSet, SourceError> {
        MigrationSet::load_reusing(dir, None)
    }

    /// Like [`load`](Self::load), but a file whose stamp is unchanged since `previous` read it
    /// is not read, hashed and split again. The daemon re-reads the folder for every run; this
    /// keeps that cheap for thousands of migrations while every file is still checked.
    pub fn load_reusing(
        dir: &Path,
        previous: Option<&MigrationSet>,
    ) -> Result<MigrationSet, SourceError> {
        let now_ns = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i128);
        MigrationSet::load_at(dir, previous, now_ns)
    }

    /// [`load_reusing`](Self::load_reusing) at `now_ns` (nanoseconds since the Unix epoch):
    /// the time that decides which files are old enough for their stamps to be trusted.
    fn load_at(
        dir: &Path,
        previous: Option<&MigrationSet>,
        now_ns: i128,
    ) -> Result<MigrationSet, SourceError> {
        let journal_path = dir.join(JOURNAL);
        let folders = v1::folder_names(dir)?;
        if !folders.is_empty() {
            return MigrationSet::load_folders(dir, folders, &journal_path, previous, now_ns);
        }
        let (journal, journal_bom) = read_journal(&journal_path)?;
        let reader = FolderReader::new(dir, &journal_path, Layout::Journal, previous, now_ns)?;
        let mut seen_idx = BTreeSet::new();
        let mut seen_tag = BTreeSet::new();
        let mut migrations = Vec::with_capacity(journal.entries.len());
        for entry in journal.entries {
            check_entry(&entry, &mut seen_idx, &mut seen_tag, &journal_path)?;
            migrations.push(reader.migration(entry)?);
        }
        let mut warnings: Vec<SourceWarning> = journal_bom
            .then(|| SourceWarning::Bom {
                file_name: JOURNAL.to_string(),
            })
            .into_iter()
            .chain(bom_warnings(&migrations))
            .collect();
        warnings.extend(when_goes_back(&migrations));
        warnings.extend(not_in_journal(dir, &migrations)?);
        Ok(MigrationSet {
            dir: dir.to_path_buf(),
            layout: Layout::Journal,
            migrations,
            warnings,
        })
    }

    /// The folder layout: `folders` are the migration folders in Drizzle 1.0's order. A journal
    /// next to them is a half-done conversion, refused.
    fn load_folders(
        dir: &Path,
        folders: Vec<String>,
        journal_path: &Path,
        previous: Option<&MigrationSet>,
        now_ns: i128,
    ) -> Result<MigrationSet, SourceError> {
        if journal_path.exists() {
            return Err(SourceError::MixedLayout {
                path: dir.to_path_buf(),
                left_behind: v1::left_behind(dir, journal_path)?,
                folders,
            });
        }
        let reader = FolderReader::new(dir, journal_path, Layout::Folders, previous, now_ns)?;
        let mut migrations = Vec::with_capacity(folders.len());
        for (idx, tag) in folders.into_iter().enumerate() {
            let when = v1::created_at(&tag).unwrap_or_default();
            let idx = idx as u64;
            migrations.push(reader.migration(JournalEntry { idx, when, tag })?);
        }
        let loose = v1::loose_sql_files(dir)?;
        let warnings = bom_warnings(&migrations)
            .chain(
                loose
                    .into_iter()
                    .map(|file_name| SourceWarning::NotInFolder { file_name }),
            )
            .collect();
        Ok(MigrationSet {
            dir: dir.to_path_buf(),
            layout: Layout::Folders,
            migrations,
            warnings,
        })
    }

    pub fn get(&self, tag: &str) -> Option<&Migration> {
        self.migrations.iter().find(|m| m.tag == tag)
    }

    /// This set with every file's text dropped: hashes, stamps and statement counts only.
    /// What the daemon keeps between runs (see [`load_reusing`](Self::load_reusing)), so that
    /// an idle daemon does not hold the text of every file it applied.
    pub fn without_texts(&self) -> MigrationSet {
        let migrations = self
            .migrations
            .iter()
            .map(|m| Migration {
                statements: m.statements.without_text(),
                ..m.clone()
            })
            .collect();
        MigrationSet {
            migrations,
            ..self.clone_empty()
        }
    }

    /// Whether some migration's text was dropped ([`without_texts`](Self::without_texts)).
    pub fn lacks_texts<'a>(mut migrations: impl Iterator<Item = &'a Migration>) -> bool {
        migrations.any(|m| !m.statements.has_text())
    }

    /// The folder read again, reusing only the migrations whose text is here: every file whose
    /// text was dropped is read, hashed and split anew. Errors as [`load`](Self::load).
    pub fn with_texts(&self) -> Result<MigrationSet, SourceError> {
        let kept = MigrationSet {
            migrations: self
                .migrations
                .iter()
                .filter(|m| m.statements.has_text())
                .cloned()
                .collect(),
            ..self.clone_empty()
        };
        MigrationSet::load_reusing(&self.dir, Some(&kept))
    }

    fn clone_empty(&self) -> MigrationSet {
        MigrationSet {
            dir: self.dir.clone(),
            layout: self.layout,
            migrations: Vec::new(),
            warnings: self.warnings.clone(),
        }
    }
}

/// A warning for each migration file that starts with a BOM.
fn bom_warnings(migrations: &[Migration]) -> impl Iterator<Item = SourceWarning> + '_ {
    migrations
        .iter()
        .filter(|m| m.bom)
        .map(|m| SourceWarning::Bom {
            file_name: m.file_name.clone(),
        })
}

/// The journal, and whether it started with a UTF-8 BOM (skipped: JSON does not allow one).
fn read_journal(journal_path: &Path) -> Result<(Journal, bool), SourceError> {
    let text = match read_regular_file(journal_path, Follow::Yes) {
        Ok(bytes) => bytes,
        Err(SourceError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
            return Err(SourceError::NoJournal {
                path: journal_path.to_path_buf(),
            })
        }
        Err(e) => return Err(e),
    };
    let (json, bom) = match text.strip_prefix(BOM.to_string().as_bytes()) {
        Some(rest) => (rest, true),
        None => (text.as_slice(), false),
    };
    let journal = serde_json::from_slice(json).map_err(|e| SourceError::InvalidJournal {
        path: journal_path.to_path_buf(),
        line: e.line(),
        column: e.column().max(1),
        message: strip_serde_position(&e.to_string()),
    })?;
    Ok((journal, bom))
}

/// Refuses a duplicate idx, a tag that would name a file outside the folder, and a duplicate
/// tag, in that order.
fn check_entry(
    entry: &JournalEntry,
    seen_idx: &mut BTreeSet<u64>,
    seen_tag: &mut BTreeSet<String>,
    journal_path: &Path,
) -> Result<(), SourceError> {
    let path = journal_path.to_path_buf();
    if !seen_idx.insert(entry.idx) {
        return Err(SourceError::DuplicateIdx {
            path,
            idx: entry.idx,
        });
    }
    if !is_safe_tag(&entry.tag) {
        return Err(SourceError::UnsafeTag {
            path,
            idx: entry.idx,
            tag: entry.tag.clone(),
        });
    }
    if !seen_tag.insert(entry.tag.clone()) {
        return Err(SourceError::DuplicateTag {
            path,
            tag: entry.tag.clone(),
        });
    }
    Ok(())
}

/// Reads the migration files of one folder, reusing what a previous read of it still holds.
struct FolderReader<'a> {
    dir: &'a Path,
    /// Canonical form of `dir`, so that a symlinked file can be checked against it.
    canonical_dir: PathBuf,
    journal_path: &'a Path,
    layout: Layout,
    known: HashMap<&'a str, &'a Migration>,
    now_ns: i128,
}

impl<'a> FolderReader<'a> {
    fn new(
        dir: &'a Path,
        journal_path: &'a Path,
        layout: Layout,
        previous: Option<&'a MigrationSet>,
        now_ns: i128,
    ) -> Result<FolderReader<'a>, SourceError> {
        let canonical_dir = fs::canonicalize(dir).map_err(|source| SourceError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let known = previous
            .map(|p| p.migrations.iter().map(|m| (m.tag.as_str(), m)).collect())
            .unwrap_or_default();
        Ok(FolderReader {
            dir,
            canonical_dir,
            journal_path,
            layout,
            known,
            now_ns,
        })
    }

    /// The migration of one checked journal entry: the previous read's when the file's stamp
    /// is unchanged, else read, checked, hashed and split.
    fn migration(&self, entry: JournalEntry) -> Result<Migration, SourceError> {
        let file_name = self.layout.file_name(&entry.tag);
        let path = self.dir.join(&file_name);
        let meta = match fs::symlink_metadata(&path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(self.missing(&entry, file_name))
            }
            Err(source) => return Err(SourceError::Io { path, source }),
        };
        // Symlinks always take the full path below (it checks where they lead).
        let stamp = meta.file_type().is_file().then(|| FileStamp::of(&meta));
        if let Some(known) = self.known.get(entry.tag.as_str()) {
            if stamp.is_some() && known.stamp == stamp {
                return Ok(Migration {
                    idx: entry.idx,
                    when: entry.when,
                    ..(*known).clone()
                });
            }
        }
        let bytes = self.read(&path, meta.file_type(), &file_name, &entry)?;
        let text = utf8_text(bytes, &path)?;
        if let Some(line) = placeholder_line(&text) {
            return Err(SourceError::Placeholder { path, line });
        }
        // Drizzle hashes the bytes as they are, BOM included; the server must never see it.
        let bom = text.starts_with(BOM);
        Ok(Migration {
            idx: entry.idx,
            no_transaction: has_no_transaction_marker(&text),
            hash: drizzle_hash(&text),
            line_ending_hashes: line_ending_hashes(&text),
            bom,
            tag: entry.tag,
            when: entry.when,
            file_name,
            statements: Statements::new(text, if bom { BOM.len_utf8() } else { 0 }),
            stamp: stamp.and_then(|s| s.trusted(self.now_ns)),
        })
    }

    /// Reads a migration file that exists (`file_type` from its `lstat`).
    fn read(
        &self,
        path: &Path,
        file_type: fs::FileType,
        file_name: &str,
        entry: &JournalEntry,
    ) -> Result<Vec<u8>, SourceError> {
        let io_err = |source| SourceError::Io {
            path: path.to_path_buf(),
            source,
        };
        // The tag is one plain name, so only a symlink can lead out of the folder; resolving
        // every path would cost two readlink calls per file for nothing.
        if !file_type.is_symlink() {
            return read_regular_file(path, Follow::No);
        }
        let target = match fs::canonicalize(path) {
            Ok(target) => target,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(self.missing(entry, file_name.to_string()))
            }
            Err(source) => return Err(io_err(source)),
        };
        // A symlink that leaves the folder could make a release apply SQL nobody reviewed with
        // it.
        let home = match self.layout {
            Layout::Journal => self.canonical_dir.clone(),
            Layout::Folders => self.canonical_dir.join(&entry.tag),
        };
        if target.parent() != Some(home.as_path()) {
            return Err(SourceError::OutsideFolder {
                path: path.to_path_buf(),
                file_name: file_name.to_string(),
                target,
            });
        }
        // `target` is canonical: no symlink left to swap between the check and the open.
        read_regular_file(&target, Follow::No).map_err(|e| match e {
            SourceError::NotRegularFile { kind, .. } => SourceError::NotRegularFile {
                path: path.to_path_buf(),
                kind,
            },
            other => other,
        })
    }

    fn missing(&self, entry: &JournalEntry, file_name: String) -> SourceError {
        SourceError::MissingFile {
            path: self.journal_path.to_path_buf(),
            idx: entry.idx,
            tag: entry.tag.clone(),
            file_name,
        }
    }
}

/// Whether opening follows a symlink in the last component of the path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Follow {
    Yes,
    /// `O_NOFOLLOW`: a symlink there fails the open (`ELOOP`) instead of being followed.
    No,
}

/// Reads a file that must be a regular file, without ever blocking on one that is not.
///
/// Opened with `O_NONBLOCK`, so that `open(2)` of a FIFO with no writer or of a device returns
/// at once (POSIX open(2), Linux fifo(7)); the type is then checked with `fstat` on the opened
/// descriptor, so nothing can be swapped in between the check and the read. A Unix socket
/// cannot be opened at all (`ENXIO`, Linux unix(7)). Errors: [`SourceError::NotRegularFile`]
/// naming what it is, or [`SourceError::Io`].
fn read_regular_file(path: &Path, follow: Follow) -> Result<Vec<u8>, SourceError> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let io_err = |source| SourceError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut flags = libc::O_NONBLOCK;
    if follow == Follow::No {
        flags |= libc::O_NOFOLLOW;
    }
    let opened = fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags)
        .open(path);
    let mut file = match opened {
        Ok(file) => file,
        Err(e) if e.raw_os_error() == Some(libc::ENXIO) => {
            return Err(SourceError::NotRegularFile {
                path: path.to_path_buf(),
                kind: "a socket",
            })
        }
        Err(e) => return Err(io_err(e)),
    };
    let meta = file.metadata().map_err(io_err)?;
    if !meta.is_file() {
        return Err(SourceError::NotRegularFile {
            path: path.to_path_buf(),
            kind: file_kind(&meta.file_type()),
        });
    }
    // O_NONBLOCK has no effect on reads of a regular file (Linux open(2)).
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    file.read_to_end(&mut bytes).map_err(io_err)?;
    Ok(bytes)
}

/// What a file that is not a regular file is, for the error.
fn file_kind(file_type: &fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if file_type.is_fifo() {
        "a FIFO (named pipe)"
    } else if file_type.is_dir() {
        "a directory"
    } else if file_type.is_socket() {
        "a socket"
    } else if file_type.is_block_device() || file_type.is_char_device() {
        "a device"
    } else {
        "a special file"
    }
}

/// The file's text, or the line and byte of its first invalid UTF-8 sequence.
fn utf8_text(bytes: Vec<u8>, path: &Path) -> Result<String, SourceError> {
    String::from_utf8(bytes).map_err(|e| {
        let bytes = e.as_bytes();
        let at = e.utf8_error().valid_up_to();
        SourceError::NotUtf8 {
            path: path.to_path_buf(),
            line: 1 + bytes[..at].iter().filter(|b| **b == b'\n').count(),
            byte: at,
        }
    })
}

/// Entries whose `when` is older than that of an earlier entry.
fn when_goes_back(migrations: &[Migration]) -> Vec<SourceWarning> {
    let mut warnings = Vec::new();
    let mut newest: Option<&Migration> = None;
    for m in migrations {
        match newest {
            Some(prev) if m.when < prev.when => warnings.push(SourceWarning::WhenGoesBack {
                file_name: m.file_name.clone(),
                when: m.when,
                earlier_file: prev.file_name.clone(),
                earlier_when: prev.when,
            }),
            Some(prev) if prev.when >= m.when => {}
            _ => newest = Some(m),
        }
    }
    warnings
}

/// `.sql` files in `dir` that no journal entry names, sorted by name.
fn not_in_journal(dir: &Path, migrations: &[Migration]) -> Result<Vec<SourceWarning>, SourceError> {
    let io_err = |source| SourceError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let named: HashSet<&str> = migrations.iter().map(|m| m.file_name.as_str()).collect();
    let mut strays = Vec::new();
    for item in fs::read_dir(dir).map_err(io_err)? {
        let name = item.map_err(io_err)?.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.ends_with(".sql") && !named.contains(name) {
            strays.push(name.to_string());
        }
    }
    strays.sort();
    Ok(strays
        .into_iter()
        .map(|file_name| SourceWarning::NotInJournal { file_name })
        .collect())
}

/// A tag must be one plain file-name component, so `<tag>.sql` stays inside the folder.
fn is_safe_tag(tag: &str) -> bool {
    !tag.is_empty()
        && tag != "."
        && tag != ".."
        && !tag.starts_with('.')
        && !tag.contains(['/', '\\', '\0'])
        && !tag.chars().any(char::is_control)
}

/// serde_json appends " at line L column C"; we report the position in our own format.
fn strip_serde_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(at) => message[..at].to_string(),
        None => message.to_string(),
    }
}

/// The `hash` column Drizzle writes: SHA-256 over the file's whole text, lowercase hex.
pub fn drizzle_hash(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// The SHA-256 of `text` with every CRLF made LF, and of that with every LF made CRLF (what
/// git's `core.autocrlf` and `eol` conversions produce), leaving out those equal to the hash
/// of `text` itself. Hashed as a stream: no copy of the file is made.
pub fn line_ending_hashes(text: &str) -> Vec<String> {
    let has_cr_lf = text.contains("\r\n");
    let has_bare_lf = text
        .match_indices('\n')
        .any(|(i, _)| i == 0 || text.as_bytes()[i - 1] != b'\r');
    let mut hashes = Vec::new();
    if has_cr_lf {
        hashes.push(hash_with_line_endings(text, "\n"));
    }
    if has_bare_lf {
        hashes.push(hash_with_line_endings(text, "\r\n"));
    }
    hashes
}

/// SHA-256 of `text` with each line ending (LF, or CR LF) written as `eol`.
fn hash_with_line_endings(text: &str, eol: &str) -> String {
    let mut hasher = Sha256::new();
    let mut lines = text.split('\n').peekable();
    while let Some(line) = lines.next() {
        if lines.peek().is_some() {
            hasher.update(line.strip_suffix('\r').unwrap_or(line));
            hasher.update(eol);
        } else {
            hasher.update(line);
        }
    }
    hex::encode(hasher.finalize())
}

/// The 1-based line holding [`PLACEHOLDER_MARKER`], if any.
fn placeholder_line(text: &str) -> Option<usize> {
    text.lines()
        .position(|line| line.trim_matches([BOM, ' ', '\t', '\r']) == PLACEHOLDER_MARKER)
        .map(|i| i + 1)
}

fn has_no_transaction_marker(text: &str) -> bool {
    let first = text.strip_prefix(BOM).unwrap_or(text).lines().next();
    first.is_some_and(|line| line.trim_end() == NO_TRANSACTION_MARKER)
}

/// Splits like Drizzle's migrator does (see [`Iter`]); `text` is copied once into the result.
pub fn split_statements(text: &str) -> Statements {
    Statements::new(text.to_string(), 0)
}

/// Byte offset of the first character that is neither whitespace nor inside a `--` comment.
fn first_code_offset(piece: &str) -> Option<usize> {
    let mut rest = piece;
    let mut offset = 0;
    loop {
        let trimmed = rest.trim_start();
        offset += rest.len() - trimmed.len();
        if trimmed.is_empty() {
            return None;
        }
        if let Some(comment) = trimmed.strip_prefix("--") {
            let skip = comment.find('\n').map_or(comment.len(), |i| i + 1);
            offset += 2 + skip;
            rest = &comment[skip..];
        } else {
            return Some(offset);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_on_breakpoints_and_tracks_lines() {
        let text = "CREATE TABLE a (\n id int\n);\n--> statement-breakpoint\n\n-- why\nCREATE INDEX i ON a(id);--> statement-breakpoint\nSELECT 1;\n";
        let all = split_statements(text);
        let s: Vec<Statement> = all.iter().collect();
        assert_eq!(all.len(), 3);
        assert_eq!(s.len(), 3);
        assert_eq!(s[0].line, 1);
        assert_eq!(s[1].line, 7, "first line of code, after the comment");
        assert_eq!(
            s[1].sql_start_line, 4,
            "the piece starts right after the marker"
        );
        assert_eq!(s[2].line, 8);
        assert_eq!(s[1].sql, "\n\n-- why\nCREATE INDEX i ON a(id);");
    }

    #[test]
    fn comment_only_pieces_are_not_statements() {
        assert!(split_statements("-- nothing here\n\n--> statement-breakpoint\n  \n").is_empty());
    }

    #[test]
    fn hash_matches_sha256sum() {
        // printf 'SELECT 1;\n' | sha256sum
        assert_eq!(
            drizzle_hash("SELECT 1;\n"),
            "b4e0497804e46e0a0b0b8c31975b062152d551bac49c3c2e80932567b4085dcd"
        );
    }

    #[test]
    fn line_ending_hashes_are_those_of_the_lf_and_crlf_texts() {
        let lf = "SELECT 1;\nSELECT 2;\n";
        let crlf = "SELECT 1;\r\nSELECT 2;\r\n";
        assert_eq!(line_ending_hashes(lf), [drizzle_hash(crlf)]);
        assert_eq!(line_ending_hashes(crlf), [drizzle_hash(lf)]);
        let mixed = "a\r\nb\nc\rd";
        assert_eq!(
            line_ending_hashes(mixed),
            [drizzle_hash("a\nb\nc\rd"), drizzle_hash("a\r\nb\r\nc\rd")]
        );
        assert!(line_ending_hashes("SELECT 1;").is_empty());
    }

    #[test]
    fn unsafe_tags_are_refused() {
        for tag in [
            "", ".", "..", "../x", "a/b", "a\\b", ".hidden", "a\0b", "a\nb",
        ] {
            assert!(!is_safe_tag(tag), "{tag:?}");
        }
        for tag in ["0000_init", "0001_añadir_médias", "0002 spaced"] {
            assert!(is_safe_tag(tag), "{tag:?}");
        }
    }

    #[test]
    fn marker_must_be_the_first_line() {
        assert!(has_no_transaction_marker(
            "-- vamsa-migrate: no-transaction\nCREATE INDEX CONCURRENTLY i ON t(x);"
        ));
        assert!(!has_no_transaction_marker(
            "SELECT 1;\n-- vamsa-migrate: no-transaction\n"
        ));
    }

    #[test]
    fn unchanged_files_are_reused_and_changed_ones_read_again() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("meta")).unwrap();
        fs::write(
            dir.path().join("meta/_journal.json"),
            r#"{"entries":[{"idx":0,"when":1,"tag":"a"},{"idx":1,"when":2,"tag":"b"}]}"#,
        )
        .unwrap();
        let now = std::time::SystemTime::now();
        for (name, sql) in [("a.sql", "SELECT 1;"), ("b.sql", "SELECT 2;")] {
            fs::write(dir.path().join(name), sql).unwrap();
            // An mtime well before the rewrite below, whatever the timestamp granularity.
            let file = fs::File::options()
                .write(true)
                .open(dir.path().join(name))
                .unwrap();
            file.set_modified(now - std::time::Duration::from_secs(60))
                .unwrap();
        }
        let fresh = MigrationSet::load(dir.path()).unwrap();
        assert!(
            fresh.migrations.iter().all(|m| m.stamp.is_none()),
            "just changed (ctime): not trusted yet"
        );
        let later = now
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as i128
            + 2 * RACY;
        let first = MigrationSet::load_at(dir.path(), None, later).unwrap();
        assert!(first.migrations.iter().all(|m| m.stamp.is_some()));
        // Same size, new content: the stamp (ctime, mtime) tells.
        fs::write(dir.path().join("b.sql"), "SELECT 3;").unwrap();
        let second = MigrationSet::load_reusing(dir.path(), Some(&first)).unwrap();
        assert_eq!(second.migrations[0], first.migrations[0]);
        assert_eq!(second.migrations[1].hash, drizzle_hash("SELECT 3;"));
        assert!(second.migrations[1].stamp.is_none());
    }
}
