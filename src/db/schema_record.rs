//! Whether a schema is recorded for a tracking table, read without the description: what
//! `verify` needs to tell "compared, no change" from "nothing to compare with". The record
//! itself is [`super::schema`]'s (`vamsa_migrate.schema_record`, one row per tracking table).

use tokio_postgres::Client;

use super::history::{RUNS, SCHEMA};
use super::preflight::{history_access, HistoryAccess};
use super::{value, DbError};

/// What is recorded for one tracking table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RecordState {
    /// A record `Engine::schema_drift` compares with (with the catalogs' fingerprint and the
    /// tracking rows' identities), made at `YYYY-MM-DD HH:MM:SS` UTC.
    At(String),
    /// A record of an earlier version (without the fingerprint or the rows' identities): not
    /// compared with; the next run records it again.
    EarlierFormat,
    /// No record. `history_off`: why runs cannot record one with this role, and the
    /// statement an admin runs (the run history's privilege check, [`history_access`]).
    None {
        history_off: Option<(String, String)>,
    },
}

/// The catalogs: whether the record table exists and has its latest column,
/// `catalog_fingerprint` (added after `tracking_row_ids`).
/// `to_regclass` raises 42501 when the role has no USAGE on schema `vamsa_migrate`.
const FACTS: &str = "SELECT to_regclass($1) IS NOT NULL, EXISTS (SELECT 1 FROM pg_attribute \
    WHERE attrelid = to_regclass($1) AND attname = 'catalog_fingerprint' AND NOT attisdropped)";

/// The state of the schema record of `tracking` (the tracking table, as
/// [`super::Tracking::qualified`] writes it): catalog queries and at most two short columns of
/// one row, never the description (megabytes for a large schema). Read-only.
///
/// Errors: [`DbError::Query`] when the catalogs or the record cannot be read (42501 without
/// USAGE on schema `vamsa_migrate` or SELECT on its table).
pub(crate) async fn record_state(client: &Client, tracking: &str) -> Result<RecordState, DbError> {
    const WHAT: &str = "looking for the recorded schema";
    let table = super::schema::record_table();
    let facts = client
        .query_one(FACTS, &[&table])
        .await
        .map_err(DbError::query(WHAT))?;
    if !value::<bool>(&facts, 0, WHAT)? {
        return none(client).await;
    }
    if !value::<bool>(&facts, 1, WHAT)? {
        return Ok(RecordState::EarlierFormat);
    }
    let row = client
        .query_opt(
            &format!(
                "SELECT tracking_row_ids IS NOT NULL AND catalog_fingerprint IS NOT NULL, \
                 to_char(recorded_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') \
                 FROM {table} WHERE tracking_table = $1"
            ),
            &[&tracking],
        )
        .await
        .map_err(DbError::query(WHAT))?;
    match row {
        None => none(client).await,
        Some(row) if !value::<bool>(&row, 0, WHAT)? => Ok(RecordState::EarlierFormat),
        Some(row) => Ok(RecordState::At(
            value::<Option<String>>(&row, 1, WHAT)?.unwrap_or_default(),
        )),
    }
}

/// No record: whether the run history (after which runs record the schema) is off for this
/// role.
async fn none(client: &Client) -> Result<RecordState, DbError> {
    let history_off = match history_access(client, SCHEMA, RUNS, true).await? {
        HistoryAccess::Off { reason, fix } => Some((reason, fix)),
        _ => None,
    };
    Ok(RecordState::None { history_off })
}
