//! One corpus per N for the side-by-side workloads: the generated Drizzle folder (0.x journal
//! layout) and its exact equivalents, generated from it: Drizzle 1.0's folder layout (our
//! `convert --write` on a copy) and dbmate's `<version>_<name>.sql` files.

use std::fs;
use std::path::{Path, PathBuf};

use crate::ctx::{expect_code, Ctx};
use crate::folders::{tag, Folder};
use crate::{err, Res};

pub(crate) struct Corpus {
    pub(crate) folder: Folder,
    /// Drizzle 1.0's folder layout: `<timestamp>_<name>/migration.sql`.
    pub(crate) v1: PathBuf,
    /// dbmate's migrations dir.
    pub(crate) dbmate: PathBuf,
}

pub(crate) fn build(ctx: &mut Ctx, folder: Folder) -> Res<Corpus> {
    let dbmate = folder.dir.with_extension("dbmate");
    write_dbmate(&folder, &dbmate)?;
    let v1 = folder.dir.with_extension("v1");
    write_v1(ctx, &folder.dir, &v1)?;
    Ok(Corpus { folder, v1, dbmate })
}

/// dbmate (2.x) format: `<version>_<name>.sql`, the version being the leading digits (here the
/// journal's `idx`, zero-padded as in the tag, so the order is the journal's), an
/// `-- migrate:up` section with the migration's bytes unchanged (drizzle-kit's
/// `--> statement-breakpoint` lines are SQL comments) and an empty `-- migrate:down`. dbmate
/// runs each file in its own transaction, as we do.
fn write_dbmate(folder: &Folder, out: &Path) -> Res<()> {
    fs::create_dir_all(out).map_err(err("creating the dbmate folder"))?;
    for i in 0..folder.n {
        let name = format!("{}.sql", tag(i));
        let sql = fs::read_to_string(folder.dir.join(&name)).map_err(err("reading a migration"))?;
        let text = format!("-- migrate:up\n{sql}\n-- migrate:down\n");
        fs::write(out.join(&name), text).map_err(err("writing a dbmate migration"))?;
    }
    Ok(())
}

/// A copy of the journal folder turned into Drizzle 1.0's layout by `vamsa-migrate convert
/// --write` (the `.sql` bytes unchanged).
fn write_v1(ctx: &mut Ctx, journal: &Path, out: &Path) -> Res<()> {
    copy_dir(journal, out)?;
    let (r, text) = ctx.ours(None, out, &["convert", "--write"])?;
    expect_code("vamsa-migrate convert --write", &r, &text, &[0])
}

fn copy_dir(from: &Path, to: &Path) -> Res<()> {
    fs::create_dir_all(to).map_err(err("creating a folder copy"))?;
    for entry in fs::read_dir(from).map_err(err("reading a folder"))? {
        let entry = entry.map_err(err("reading a folder"))?;
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            fs::copy(entry.path(), target).map_err(err("copying a file"))?;
        }
    }
    Ok(())
}
