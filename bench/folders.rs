//! Generated Drizzle folders: N migrations as drizzle-kit writes them, and their journal.

use std::fs;
use std::path::{Path, PathBuf};

use crate::{err, Res};

const WHEN_BASE: i64 = 1_700_000_000_000;

pub(crate) fn tag(i: usize) -> String {
    format!("{i:04}_bench_step_{i}")
}

pub(crate) fn when(i: usize) -> i64 {
    WHEN_BASE + i as i64 * 60_000
}

/// Migration `i`, as drizzle-kit writes it: 3 to 5 statements (tables, indexes, columns,
/// foreign keys) separated by `--> statement-breakpoint`.
pub(crate) fn migration_sql(i: usize) -> String {
    let mut statements = vec![format!(
        "CREATE TABLE \"t{i}\" (\n\t\"id\" serial PRIMARY KEY NOT NULL,\n\t\"name\" text NOT NULL,\n\
         \t\"parent_id\" integer,\n\t\"created_at\" timestamp DEFAULT now() NOT NULL\n);\n"
    )];
    statements.push(format!(
        "CREATE INDEX \"t{i}_name_idx\" ON \"t{i}\" USING btree (\"name\");"
    ));
    if i > 0 {
        let p = i - 1;
        statements.push(format!(
            "ALTER TABLE \"t{i}\" ADD CONSTRAINT \"t{i}_parent_id_t{p}_id_fk\" FOREIGN KEY (\"parent_id\") \
             REFERENCES \"public\".\"t{p}\"(\"id\") ON DELETE cascade ON UPDATE no action;"
        ));
    }
    if i % 2 == 1 {
        statements.push(format!(
            "ALTER TABLE \"t{}\" ADD COLUMN \"c{i}\" integer DEFAULT 0 NOT NULL;",
            i - 1
        ));
    }
    if i.is_multiple_of(3) {
        statements.push(format!(
            "CREATE INDEX \"t{i}_created_at_idx\" ON \"t{i}\" USING btree (\"created_at\");"
        ));
    }
    let mut text = statements.join("\n--> statement-breakpoint\n");
    text.push('\n');
    text
}

pub(crate) fn journal_entry(i: usize) -> serde_json::Value {
    serde_json::json!({
        "idx": i, "version": "7", "when": when(i), "tag": tag(i), "breakpoints": true
    })
}

pub(crate) fn journal_text(entries: &[serde_json::Value]) -> String {
    let journal = serde_json::json!({
        "version": "7", "dialect": "postgresql", "entries": entries
    });
    let mut text = serde_json::to_string_pretty(&journal).expect("journal");
    text.push('\n');
    text
}

pub(crate) struct Folder {
    pub(crate) dir: PathBuf,
    pub(crate) n: usize,
    pub(crate) statements: usize,
    /// Everything in journal order, for the psql floor.
    pub(crate) all_sql: PathBuf,
}

pub(crate) fn generate(dir: &Path, n: usize) -> Res<Folder> {
    fs::create_dir_all(dir.join("meta")).map_err(err("creating a folder"))?;
    let mut all = String::new();
    let mut statements = 0;
    let mut entries = Vec::with_capacity(n);
    for i in 0..n {
        let sql = migration_sql(i);
        statements += sql.matches("--> statement-breakpoint").count() + 1;
        fs::write(dir.join(format!("{}.sql", tag(i))), &sql).map_err(err("writing a migration"))?;
        all.push_str(&sql);
        all.push('\n');
        entries.push(journal_entry(i));
    }
    fs::write(dir.join("meta/_journal.json"), journal_text(&entries))
        .map_err(err("writing the journal"))?;
    let all_sql = dir.with_extension("all.sql");
    fs::write(&all_sql, all).map_err(err("writing the floor SQL"))?;
    Ok(Folder {
        dir: dir.to_path_buf(),
        n,
        statements,
        all_sql,
    })
}
