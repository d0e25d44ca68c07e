//! The scratch databases of rehearsals (see `engine::rehearsal`): what the role may do, and
//! creating, finding and dropping them. A scratch database is named
//! `vamsa_rehearsal_<oid>_<16 hex digits>`, `<oid>` being the oid of the database it copies:
//! a run holds that database's run lock while it rehearses, so any other scratch database of
//! the same oid is a leftover of a run that was killed (SIGKILL) and may be dropped.

use tokio_postgres::Client;

use super::{quote_ident, quote_literal, value, DbError};

/// What the rehearsal needs to know of the database it copies.
#[derive(Debug, Clone)]
pub(crate) struct Source {
    /// `pg_database.oid` of `current_database()`.
    pub(crate) oid: u32,
    /// `rolcreatedb OR rolsuper` of `current_user` (PostgreSQL 15, CREATE DATABASE).
    pub(crate) may_create: bool,
    /// `current_user`, for messages.
    pub(crate) role: String,
    /// The encoding, LC_COLLATE and LC_CTYPE the scratch database is created with.
    encoding: String,
    collate: String,
    ctype: String,
}

/// Reads [`Source`] for the connection of `client`.
pub(crate) async fn source(client: &Client) -> Result<Source, DbError> {
    const WHAT: &str = "reading the database's oid, encoding and the role's CREATEDB";
    let row = client
        .query_one(
            "SELECT d.oid::bigint, coalesce(r.rolcreatedb OR r.rolsuper, false), current_user::text, \
             pg_encoding_to_char(d.encoding)::text, d.datcollate::text, d.datctype::text \
             FROM pg_database d LEFT JOIN pg_roles r ON r.rolname = current_user \
             WHERE d.datname = current_database()",
            &[],
        )
        .await
        .map_err(DbError::query(WHAT))?;
    Ok(Source {
        oid: u32::try_from(value::<i64>(&row, 0, WHAT)?).unwrap_or(0),
        may_create: value(&row, 1, WHAT)?,
        role: value(&row, 2, WHAT)?,
        encoding: value(&row, 3, WHAT)?,
        collate: value(&row, 4, WHAT)?,
        ctype: value(&row, 5, WHAT)?,
    })
}

/// The name prefix of the scratch databases of the database `oid`.
pub(crate) fn prefix(oid: u32) -> String {
    format!("vamsa_rehearsal_{oid}_")
}

/// Creates an empty scratch database for `source` (from `template0`, with its encoding and
/// locale) under a name no other database has: 64 random bits, and on the unlikely
/// duplicate (42P04) another draw. Its name.
pub(crate) async fn create(client: &Client, source: &Source) -> Result<String, DbError> {
    let mut attempt = 0;
    loop {
        let name = format!("{}{:016x}", prefix(source.oid), random_u64());
        let sql = format!(
            "CREATE DATABASE {} TEMPLATE template0 ENCODING {} LC_COLLATE {} LC_CTYPE {}",
            quote_ident(&name),
            quote_literal(&source.encoding),
            quote_literal(&source.collate),
            quote_literal(&source.ctype)
        );
        match client.batch_execute(&sql).await {
            Ok(()) => return Ok(name),
            Err(e)
                if e.code() == Some(&tokio_postgres::error::SqlState::DUPLICATE_DATABASE)
                    && attempt < 3 =>
            {
                attempt += 1;
            }
            Err(e) => {
                return Err(DbError::query("creating the rehearsal's scratch database")(
                    e,
                ))
            }
        }
    }
}

/// 64 bits from the kernel's random source (`getrandom(2)`); the time as a fallback (a
/// duplicate name is still refused by the server).
fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    match rustix::rand::getrandom(&mut bytes, rustix::rand::GetRandomFlags::empty()) {
        Ok(8) => u64::from_le_bytes(bytes),
        _ => {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
                ^ u64::from(std::process::id())
        }
    }
}

/// `DROP DATABASE IF EXISTS name WITH (FORCE)` (PostgreSQL 13 and later): also ends the
/// sessions still connected to it (a killed pg_restore's, our own being closed).
pub(crate) async fn drop(client: &Client, name: &str) -> Result<(), DbError> {
    client
        .batch_execute(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            quote_ident(name)
        ))
        .await
        .map_err(DbError::query("dropping the rehearsal's scratch database"))
}

/// Scratch databases of the database `oid` that exist now: under its run lock, leftovers.
pub(crate) async fn leftovers(client: &Client, oid: u32) -> Result<Vec<String>, DbError> {
    const WHAT: &str = "listing scratch databases left by earlier rehearsals";
    let rows = client
        .query(
            "SELECT datname::text FROM pg_database WHERE starts_with(datname, $1) ORDER BY 1",
            &[&prefix(oid)],
        )
        .await
        .map_err(DbError::query(WHAT))?;
    let mut names = Vec::with_capacity(rows.len());
    for row in &rows {
        names.push(value(row, 0, WHAT)?);
    }
    Ok(names)
}
