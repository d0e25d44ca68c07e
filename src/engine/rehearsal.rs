//! The rehearsal: before the first change to the database, the run restores its fresh dump
//! (the backup it just took: one dump serves both) into a scratch database on the same
//! server, applies the pending migrations there with this same engine and settings, and
//! drops it. The database is touched only when that succeeded, so a release that fails on
//! the real data (duplicates under a new UNIQUE, NULLs under SET NOT NULL, a value a cast
//! refuses, the third migration of three) changes nothing at all.
//!
//! The scratch database is dropped on every path: explicitly when the rehearsal ends, and by
//! [`scratch::Guard`] when the run is dropped half-way (the CLI on SIGINT/SIGTERM). One left by
//! a SIGKILL is dropped by the next run of the same database (see [`crate::db::scratch`]).

use std::fs;
use std::path::Path;
use std::time::Instant;

use tokio_postgres::Client;

use super::{Engine, EngineError, Prepared, RunOptions};
use crate::backup::human_bytes;
use crate::config::Rehearse;
use crate::db::{self, scratch};
use crate::protocol::Event;
use crate::source::{Migration, MigrationSet};

/// Why a rehearsal could not run (not a failure of the release).
type Unavailable = String;

/// Why a release may not be rehearsed because a statement of it acts outside the database
/// (`sqlscan::outside_the_database`): run in the scratch copy, it would change the real server
/// (create a database or role, alter the production database by name, ...).
fn outside_the_database(to_apply: &[&Migration]) -> Option<Unavailable> {
    to_apply.iter().find_map(|m| {
        m.statements.iter().find_map(|s| {
            let (offset, words) = crate::sqlscan::outside_the_database(s.sql)?;
            let line = s.sql_start_line + s.sql[..offset].matches('\n').count();
            Some(format!(
                "{} line {line} ({words} ...) acts outside the database, so a rehearsal on a \
                 copy would change the real server; rehearse = \"never\" for this release, or move \
                 that statement out of the migrations",
                m.file_name
            ))
        })
    })
}

impl Engine<'_> {
    /// The rehearsal of a run, when the settings ask for one: `Ok` when it succeeded or was
    /// skipped (saying why), [`EngineError::Rehearsal`] when the release failed on the copy,
    /// [`EngineError::RehearsalUnavailable`] when `rehearse = "always"` and it cannot run.
    /// `dump`: the run's backup, or `None` to take a temporary dump for it.
    pub(super) async fn rehearse_before(
        &self,
        client: &Client,
        set: &MigrationSet,
        options: &RunOptions,
        prepared: &Prepared<'_>,
        dump: Option<&Path>,
        emit: &mut dyn FnMut(Event),
    ) -> Result<(), EngineError> {
        if prepared.to_apply.is_empty() || self.settings.rehearse == Rehearse::Never {
            return Ok(());
        }
        let outcome = match outside_the_database(&prepared.to_apply) {
            Some(reason) => Err(reason),
            None => {
                self.may_rehearse_on(client, set, options, prepared, dump, emit)
                    .await?
            }
        };
        match outcome {
            Ok(()) => Ok(()),
            Err(reason) if self.settings.rehearse == Rehearse::Always => {
                Err(EngineError::RehearsalUnavailable { reason })
            }
            Err(reason) => {
                emit(Event::Warning {
                    message: format!("rehearsal skipped: {reason}"),
                });
                Ok(())
            }
        }
    }

    /// Checks the role and size, then rehearses: `Ok(Err)` when it cannot run.
    async fn may_rehearse_on(
        &self,
        client: &Client,
        set: &MigrationSet,
        options: &RunOptions,
        prepared: &Prepared<'_>,
        dump: Option<&Path>,
        emit: &mut dyn FnMut(Event),
    ) -> Result<Result<(), Unavailable>, EngineError> {
        Ok(match self.may_rehearse(client).await? {
            Ok(source) => {
                self.rehearse(
                    client,
                    set,
                    options,
                    &source,
                    dump,
                    prepared.to_apply.len(),
                    emit,
                )
                .await?
            }
            Err(reason) => Err(reason),
        })
    }

    /// The database to copy, or why it may not be rehearsed: the role lacks CREATEDB, or
    /// (under `auto`) the database is over `rehearse_max_size`.
    async fn may_rehearse(
        &self,
        client: &Client,
    ) -> Result<Result<scratch::Source, Unavailable>, EngineError> {
        let source = scratch::source(client).await?;
        if !source.may_create {
            return Ok(Err(format!(
                "the role {} may not create databases; grant it CREATEDB (ALTER ROLE {} CREATEDB) \
                 to rehearse each release on a scratch copy first, or set rehearse = \"never\"",
                source.role,
                db::quote_ident(&source.role)
            )));
        }
        let size = db::database(client).await?.bytes;
        let max = self.settings.rehearse_max_size;
        if self.settings.rehearse == Rehearse::Auto && size > max {
            return Ok(Err(format!(
                "the database is {}, over rehearse_max_size ({}); raise it, or set rehearse = \"always\"",
                human_bytes(size),
                human_bytes(max)
            )));
        }
        Ok(Ok(source))
    }

    /// Drops leftovers, creates the scratch database, rehearses in it and drops it.
    #[allow(clippy::too_many_arguments)]
    async fn rehearse(
        &self,
        client: &Client,
        set: &MigrationSet,
        options: &RunOptions,
        source: &scratch::Source,
        dump: Option<&Path>,
        migrations: usize,
        emit: &mut dyn FnMut(Event),
    ) -> Result<Result<(), Unavailable>, EngineError> {
        drop_leftovers(client, source.oid, emit).await;
        let started = Instant::now();
        let dump = match dump {
            Some(path) => fs::File::open(path).map_err(|e| format!("{}: {e}", path.display())),
            None => crate::backup::take_temporary(self.pg, client)
                .await
                .map_err(|e| format!("the dump for it failed: {e}")),
        };
        let dump = match dump {
            Ok(dump) => dump,
            Err(reason) => return Ok(Err(reason)),
        };
        let name = match scratch::create(client, source, scratch::Purpose::Rehearsal).await {
            Ok(name) => name,
            Err(e) => return Ok(Err(e.to_string())),
        };
        let guard = scratch::Guard::new(self.pg, &name);
        emit(Event::Rehearsing {
            database: name.clone(),
            migrations,
        });
        let server_major = db::database(client).await?.server_major;
        let result = self
            .rehearse_in(&name, server_major, set, options, &dump)
            .await;
        match scratch::drop(client, &name).await {
            Ok(()) => guard.disarm(),
            Err(e) => tracing::warn!("{e}; trying once more from a new connection"),
        }
        match result {
            Ok(Ok(())) => {
                let ms = started.elapsed().as_millis() as u64;
                emit(Event::Rehearsed { migrations, ms });
                Ok(Ok(()))
            }
            Ok(Err(reason)) => Ok(Err(reason)),
            Err(caught) => Err(EngineError::Rehearsal(Box::new(caught))),
        }
    }

    /// Restores `dump` into the scratch database `name` and runs the release there, its
    /// events unseen: `Ok(Err)` when the copy could not be made, `Err` when the release failed.
    async fn rehearse_in(
        &self,
        name: &str,
        server_major: u32,
        set: &MigrationSet,
        options: &RunOptions,
        dump: &fs::File,
    ) -> Result<Result<(), Unavailable>, EngineError> {
        if let Err(e) = crate::backup::restore_into_new(self.pg, server_major, name, dump).await {
            return Ok(Err(format!(
                "the dump does not restore into a scratch database: {e}"
            )));
        }
        let mut pg = self.pg.clone();
        pg.driver.dbname(name);
        let client = match db::connect(&pg).await {
            Ok(c) => c,
            Err(e) => return Ok(Err(format!("cannot connect to the scratch database: {e}"))),
        };
        // The same engine and settings; the scratch database's own run lock, which the
        // engine checks after each migration.
        let copy = Engine::new(self.settings, &pg);
        let mut unseen = |_: Event| {};
        db::acquire_lock(&client, &copy.tracking, self.settings.lock_wait, |_| {}).await?;
        let prepared = copy.prepare(&client, set, options, &mut unseen).await?;
        // The scratch copy runs to its end: the stop is checked right after the rehearsal.
        let stop = super::StopSignal::default();
        copy.change(&client, set, &prepared, &stop, &mut unseen)
            .await?;
        Ok(Ok(()))
    }
}

/// Drops the scratch databases a killed run left (this run holds the database's run lock, so
/// no other run of it is rehearsing), saying so; a failure to drop one is only a warning.
async fn drop_leftovers(client: &Client, oid: u32, emit: &mut dyn FnMut(Event)) {
    let names = match scratch::leftovers(client, scratch::Purpose::Rehearsal, oid).await {
        Ok(names) => names,
        Err(e) => return tracing::warn!("{e}"),
    };
    for name in names {
        let message = match scratch::drop(client, &name).await {
            Ok(()) => format!("dropped the scratch database {name}, left by an earlier run that was killed during its rehearsal"),
            Err(e) => format!("{e} ({name}, left by an earlier run); drop it by hand: DROP DATABASE {} WITH (FORCE)", db::quote_ident(&name)),
        };
        emit(Event::Warning { message });
    }
}
