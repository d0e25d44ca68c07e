//! Workload 5: what the rehearsal (the release applied to a scratch copy restored from the run's
//! dump, before production) adds to a run, on databases of 10 MB and 100 MB (1 GB with
//! `BENCH_REHEARSAL_1GB=1`), next to the dump time and the production apply time.
//!
//! Per size, a template database holds a `people` table filled up to the size
//! (`pg_database_size`); each measured run gets its own copy (`CREATE DATABASE ... TEMPLATE`).
//! The release is one migration that adds a column and builds an index over the table, so its
//! apply time grows with the data. Per repetition, each on a fresh copy:
//! - dump: `vamsa-migrate backup` (pg_dump --format=custom, verified with pg_restore --list);
//! - apply: `migrate --no-backup --no-rehearse` (production's apply alone);
//! - plain: `migrate --no-rehearse` (dump + apply, the run without a rehearsal);
//! - rehearsed: `migrate --rehearse` (dump + restore + apply on the copy + drop + apply);
//! - restore: `pg_restore --no-owner --no-privileges` of that dump into an empty database.
//!
//! The rehearsal's extra time is rehearsed - plain; the target is at most restore + apply (no
//! redundant work: the one dump serves the backup and the rehearsal).

use std::fs;
use std::path::Path;

use crate::ctx::{expect_code, median, Ctx};
use crate::folders::journal_text;
use crate::table::{ms, Table};
use crate::{err, progress, Res};

const MB: u64 = 1_000_000;

/// The release's folders: `base` (the table) and `release` (the table, then the pending one).
struct Folders {
    base: std::path::PathBuf,
    release: std::path::PathBuf,
}

/// The sizes measured, in bytes.
pub(crate) fn sizes(quick: bool) -> Vec<u64> {
    let mut sizes = if quick {
        vec![10 * MB]
    } else {
        vec![10 * MB, 100 * MB]
    };
    if std::env::var("BENCH_REHEARSAL_1GB").is_ok_and(|v| !v.is_empty() && v != "0") {
        sizes.push(1_000 * MB);
    }
    sizes
}

pub(crate) fn bench_rehearse(ctx: &mut Ctx, table: &mut Table) -> Res<()> {
    let folders = write_folders(&ctx.path("rehearse"))?;
    for size in sizes(ctx.p.quick) {
        let template = fill_template(ctx, &folders, size)?;
        let bytes: u64 = ctx
            .psql(
                "postgres",
                &format!("SELECT pg_database_size('{template}')"),
            )?
            .parse()
            .map_err(err("pg_database_size"))?;
        let mut runs = Runs::default();
        for rep in 0..ctx.p.reps.min(3) {
            progress(&format!(
                "rehearsal, {} MB database: repetition {}/{}",
                size / MB,
                rep + 1,
                ctx.p.reps.min(3)
            ));
            runs.push(measure_once(ctx, &folders, &template)?);
        }
        ctx.drop_db(&template)?;
        report(table, size, bytes, &runs);
    }
    Ok(())
}

fn write_folders(dir: &Path) -> Res<Folders> {
    let table = "CREATE TABLE \"people\" (\n\t\"id\" bigserial PRIMARY KEY NOT NULL,\n\
                 \t\"given_name\" text NOT NULL,\n\t\"family_name\" text NOT NULL,\n\
                 \t\"notes\" text\n);\n";
    let release = "ALTER TABLE \"people\" ADD COLUMN \"title\" text DEFAULT 'none' NOT NULL;\
                   \n--> statement-breakpoint\n\
                   CREATE INDEX \"people_family_name_given_name_idx\" ON \"people\" USING btree (\"family_name\",\"given_name\");\n";
    let entry = |i: usize, tag: &str| {
        serde_json::json!({
            "idx": i, "version": "7", "when": 1_700_000_000_000i64 + i as i64, "tag": tag,
            "breakpoints": true
        })
    };
    let base = dir.join("base");
    let full = dir.join("release");
    for (folder, n) in [(&base, 1), (&full, 2)] {
        fs::create_dir_all(folder.join("meta")).map_err(err("creating a folder"))?;
        fs::write(folder.join("0000_people.sql"), table).map_err(err("writing 0000"))?;
        let mut entries = vec![entry(0, "0000_people")];
        if n == 2 {
            fs::write(folder.join("0001_title_index.sql"), release).map_err(err("writing 0001"))?;
            entries.push(entry(1, "0001_title_index"));
        }
        fs::write(folder.join("meta/_journal.json"), journal_text(&entries))
            .map_err(err("writing the journal"))?;
    }
    Ok(Folders {
        base,
        release: full,
    })
}

/// A database with `0000_people` applied and `people` filled until the database is `size`
/// bytes.
fn fill_template(ctx: &mut Ctx, folders: &Folders, size: u64) -> Res<String> {
    progress(&format!("filling a {} MB database", size / MB));
    let db = ctx.new_db(&format!("rehearse_tpl_{}mb", size / MB))?;
    let (r, out) = ctx.ours(
        Some(&db),
        &folders.base,
        &["migrate", "-q", "--no-backup", "--no-rehearse"],
    )?;
    expect_code("migrate (base)", &r, &out, &[0])?;
    // About 250 bytes per row with its primary key; a tenth of the size per statement.
    let rows = (size / 250 / 10).max(1_000);
    let mut next = 0u64;
    loop {
        let current: u64 = ctx
            .psql("postgres", &format!("SELECT pg_database_size('{db}')"))?
            .parse()
            .map_err(err("pg_database_size"))?;
        if current >= size {
            break;
        }
        ctx.psql(
            &db,
            &format!(
                "INSERT INTO people (given_name, family_name, notes) \
                 SELECT 'given ' || i, 'family ' || (i % 5000), repeat(md5(i::text), 5) \
                 FROM generate_series({}, {}) AS i",
                next,
                next + rows - 1
            ),
        )?;
        next += rows;
        ctx.psql(&db, "CHECKPOINT")?;
    }
    ctx.psql(&db, "VACUUM ANALYZE people")?;
    Ok(db)
}

#[derive(Default)]
struct Runs {
    dump: Vec<f64>,
    apply: Vec<f64>,
    plain: Vec<f64>,
    rehearsed: Vec<f64>,
    restore: Vec<f64>,
}

impl Runs {
    fn push(&mut self, one: [f64; 5]) {
        let [dump, apply, plain, rehearsed, restore] = one;
        self.dump.push(dump);
        self.apply.push(apply);
        self.plain.push(plain);
        self.rehearsed.push(rehearsed);
        self.restore.push(restore);
    }
}

/// One repetition: dump, apply, plain, rehearsed, restore, in ms (see the module's header).
fn measure_once(ctx: &mut Ctx, folders: &Folders, template: &str) -> Res<[f64; 5]> {
    let backups = ctx.path("rehearse-backups");
    let bk = backups.display().to_string();
    let copy = copy_of(ctx, template)?;
    ctx.checkpoint()?;
    let argv = vec![
        ctx.bin.display().to_string(),
        "backup".into(),
        "--database-url".into(),
        ctx.url(&copy),
        "--backup-dir".into(),
        bk.clone(),
    ];
    let (r, out) = ctx.run(argv)?;
    expect_code("vamsa-migrate backup", &r, &out, &[0])?;
    let dump = r.ms();
    ctx.drop_db(&copy)?;
    let migrate = |ctx: &mut Ctx, args: &[&str]| -> Res<(f64, String)> {
        let copy = copy_of(ctx, template)?;
        ctx.checkpoint()?;
        let (r, out) = ctx.ours(Some(&copy), &folders.release, args)?;
        expect_code(&format!("migrate {args:?}"), &r, &out, &[0])?;
        let rows = ctx.psql(&copy, "SELECT count(*) FROM drizzle.__drizzle_migrations")?;
        if rows != "2" {
            return Err(format!(
                "migrate {args:?}: {rows} tracking rows, expected 2"
            ));
        }
        ctx.drop_db(&copy)?;
        Ok((r.ms(), out))
    };
    let (apply, _) = migrate(ctx, &["migrate", "--no-backup", "--no-rehearse"])?;
    let (plain, _) = migrate(ctx, &["migrate", "--no-rehearse", "--backup-dir", &bk])?;
    let (rehearsed, out) = migrate(ctx, &["migrate", "--rehearse", "--backup-dir", &bk])?;
    if !out.contains("Rehearsal passed") {
        return Err(format!("migrate --rehearse did not rehearse:\n{out}"));
    }
    let restore = restore_floor(ctx, &backups)?;
    fs::remove_dir_all(&backups).map_err(err("removing the bench's backups"))?;
    Ok([dump, apply, plain, rehearsed, restore])
}

fn copy_of(ctx: &mut Ctx, template: &str) -> Res<String> {
    let name = ctx.new_db_name("rehearse_copy");
    ctx.psql(
        "postgres",
        &format!("CREATE DATABASE \"{name}\" TEMPLATE \"{template}\""),
    )?;
    Ok(name)
}

/// `pg_restore --no-owner --no-privileges` of the newest dump in `backups` into an empty
/// database: the floor of the rehearsal's restore; its wall time in ms.
fn restore_floor(ctx: &mut Ctx, backups: &Path) -> Res<f64> {
    let mut dumps: Vec<_> = fs::read_dir(backups)
        .map_err(err("reading the backups"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "dump"))
        .collect();
    dumps.sort_by_key(|p| fs::metadata(p).and_then(|m| m.modified()).ok());
    let dump = dumps
        .last()
        .ok_or("no dump in the bench's backup folder")?
        .clone();
    let db = ctx.new_db("rehearse_restore")?;
    ctx.checkpoint()?;
    let argv = vec![
        ctx.cluster.program("pg_restore").display().to_string(),
        "--no-owner".into(),
        "--no-privileges".into(),
        "--exit-on-error".into(),
        "-h".into(),
        "127.0.0.1".into(),
        "-U".into(),
        "postgres".into(),
        "-p".into(),
        ctx.cluster.port().to_string(),
        "-d".into(),
        db.clone(),
        dump.display().to_string(),
    ];
    let (r, out) = ctx.run(argv)?;
    expect_code("pg_restore", &r, &out, &[0])?;
    ctx.drop_db(&db)?;
    Ok(r.ms())
}

fn report(table: &mut Table, size: u64, bytes: u64, runs: &Runs) {
    let [dump, apply, plain, rehearsed, restore] = [
        &runs.dump,
        &runs.apply,
        &runs.plain,
        &runs.rehearsed,
        &runs.restore,
    ]
    .map(|v| median(v));
    let extras: Vec<f64> = runs
        .rehearsed
        .iter()
        .zip(&runs.plain)
        .map(|(r, p)| r - p)
        .collect();
    let extra = median(&extras);
    let target = restore + apply;
    let n = format!("{} MB", size / MB);
    table.row(
        "5. rehearsal: extra time of migrate (vs --no-rehearse)",
        &n,
        ms(extra),
        &format!("<= restore {} + apply {}", ms(restore), ms(apply)),
        format!("{:.2}x", extra / target),
        Some(extra <= target),
    );
    table.row(
        "5. rehearsal: dump (vamsa-migrate backup)",
        &n,
        ms(dump),
        "(info)",
        String::new(),
        None,
    );
    table.notes.push(format!(
        "rehearsal, {n} database ({:.1} MiB by pg_database_size): medians dump {dump:.0} ms, production apply {apply:.0} ms, migrate without rehearsal (dump + apply) {plain:.0} ms, with rehearsal {rehearsed:.0} ms, pg_restore of the dump {restore:.0} ms; extra per repetition {:?} ms",
        bytes as f64 / (1024.0 * 1024.0),
        extras.iter().map(|v| v.round() as i64).collect::<Vec<_>>(),
    ));
}
