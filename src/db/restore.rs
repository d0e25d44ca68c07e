//! What `restore` sends to PostgreSQL besides pg_restore itself: the other sessions of the
//! database (listed, or terminated with `--force`), and the objects a newer release created
//! that the dump does not hold. `pg_restore --clean` drops only the objects in the dump
//! (PostgreSQL 15, pg_restore), so without dropping those first a table a failed release
//! created would stay, and one holding a foreign key to a dumped table would even make its
//! DROP fail.

use std::collections::HashSet;

use tokio_postgres::Client;

use super::{quote_ident, value, DbError};

/// Another session connected to the database (`pg_stat_activity`, PostgreSQL 15).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Session {
    pub(crate) pid: i32,
    pub(crate) user: String,
    pub(crate) application: String,
    /// `10.0.0.5:51234`, or `local socket`.
    pub(crate) client: String,
}

/// Client sessions of this database other than ours, by pid.
pub(crate) async fn other_sessions(client: &Client) -> Result<Vec<Session>, DbError> {
    const WHAT: &str = "listing the sessions connected to the database";
    let rows = client
        .query(
            "SELECT pid, coalesce(usename::text, ''), coalesce(application_name, ''), \
             coalesce(host(client_addr) || ':' || client_port, 'local socket') \
             FROM pg_stat_activity WHERE datname = current_database() \
             AND pid <> pg_backend_pid() AND backend_type = 'client backend' ORDER BY pid",
            &[],
        )
        .await
        .map_err(DbError::query(WHAT))?;
    let mut sessions = Vec::with_capacity(rows.len());
    for row in &rows {
        sessions.push(Session {
            pid: value(row, 0, WHAT)?,
            user: value(row, 1, WHAT)?,
            application: value(row, 2, WHAT)?,
            client: value(row, 3, WHAT)?,
        });
    }
    Ok(sessions)
}

/// `pg_terminate_backend` of each session (it needs the role to be a superuser, the
/// sessions' role or a member of `pg_signal_backend`); the pids it could not end.
pub(crate) async fn terminate(client: &Client, sessions: &[Session]) -> Result<Vec<i32>, DbError> {
    const WHAT: &str = "terminating the other sessions";
    let mut left = Vec::new();
    for s in sessions {
        let row = client
            .query_one("SELECT pg_terminate_backend($1, 5000)", &[&s.pid])
            .await
            .map_err(DbError::query(WHAT))?;
        if !value::<bool>(&row, 0, WHAT)? {
            left.push(s.pid);
        }
    }
    Ok(left)
}

/// An object of the database: `("TABLE", "public", "media")`, `("SCHEMA", "", "audit")`, with
/// pg_restore's names for the kinds.
pub(crate) type Object = (String, String, String);

/// The schemas, relations and types of `toc` (`pg_restore --list` output). An entry is
/// `<id>; <catalog oid> <oid> <KIND> <schema> <name> <owner>`, the schema `-` for a schema;
/// entries of more words (`TABLE DATA`, `SEQUENCE SET`, names with spaces) are not objects
/// or cannot be told apart and are left out, which at worst drops an object that pg_restore
/// then re-creates.
pub(crate) fn objects_in(toc: &str) -> HashSet<Object> {
    const KINDS: [&str; 8] = [
        "MATERIALIZED VIEW",
        "FOREIGN TABLE",
        "TABLE",
        "VIEW",
        "SEQUENCE",
        "TYPE",
        "DOMAIN",
        "SCHEMA",
    ];
    let mut found = HashSet::new();
    for line in toc.lines().filter(|l| !l.starts_with(';')) {
        let Some((_, entry)) = line.split_once("; ") else {
            continue;
        };
        let rest: String = entry.splitn(3, ' ').nth(2).unwrap_or_default().into();
        for kind in KINDS {
            let Some(words) = rest.strip_prefix(kind).and_then(|r| r.strip_prefix(' ')) else {
                continue;
            };
            let words: Vec<&str> = words.split(' ').collect();
            if let [schema, name, _owner] = words[..] {
                let schema = if schema == "-" { "" } else { schema };
                found.insert((kind.to_string(), schema.to_string(), name.to_string()));
            }
            break;
        }
    }
    found
}

/// Schemas, relations and types in the database that are not system objects, not part of
/// an extension, and not owned by a column (serial and identity sequences).
const OBJECTS: &str = "\
WITH ours AS (SELECT oid, nspname FROM pg_namespace WHERE nspname NOT LIKE 'pg\\_%' \
  AND nspname <> 'information_schema'), \
ext AS (SELECT objid FROM pg_depend WHERE deptype IN ('e', 'a', 'i')) \
SELECT 'SCHEMA', '', nspname FROM ours WHERE nspname <> 'public' AND oid NOT IN (SELECT objid FROM ext) \
UNION ALL SELECT CASE c.relkind WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW' \
  WHEN 'S' THEN 'SEQUENCE' WHEN 'f' THEN 'FOREIGN TABLE' ELSE 'TABLE' END, o.nspname, c.relname \
  FROM pg_class c JOIN ours o ON o.oid = c.relnamespace \
  WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f') AND c.oid NOT IN (SELECT objid FROM ext) \
UNION ALL SELECT CASE t.typtype WHEN 'd' THEN 'DOMAIN' ELSE 'TYPE' END, o.nspname, t.typname \
  FROM pg_type t JOIN ours o ON o.oid = t.typnamespace \
  WHERE (t.typtype IN ('e', 'd', 'r', 'm') OR (t.typtype = 'c' AND (SELECT relkind FROM pg_class \
  WHERE oid = t.typrelid) = 'c')) AND t.oid NOT IN (SELECT objid FROM ext)";

/// Drops, in one transaction and with CASCADE, every object of the database the dump does
/// not hold (in a schema the dump holds, or a whole schema it does not); what it dropped.
pub(crate) async fn drop_objects_not_in(
    client: &Client,
    dump: &HashSet<Object>,
) -> Result<Vec<Object>, DbError> {
    const WHAT: &str = "listing the objects the dump does not hold";
    let rows = client
        .query(OBJECTS, &[])
        .await
        .map_err(DbError::query(WHAT))?;
    let mut extra = Vec::new();
    for row in &rows {
        let object: Object = (
            value(row, 0, WHAT)?,
            value(row, 1, WHAT)?,
            value(row, 2, WHAT)?,
        );
        if !dump.contains(&object) {
            extra.push(object);
        }
    }
    // The run history is kept as it is when the dump leaves it out (every dump `backup` makes
    // now does); an older dump that holds it restores it as it was.
    let history = super::history::SCHEMA;
    if !dump.contains(&("SCHEMA".into(), String::new(), history.into())) {
        extra.retain(|(kind, schema, name)| {
            schema != history && !(kind == "SCHEMA" && name == history)
        });
    }
    let dropped_schemas: HashSet<String> = extra
        .iter()
        .filter(|(kind, _, _)| kind == "SCHEMA")
        .map(|(_, _, name)| name.clone())
        .collect();
    extra.retain(|(kind, schema, _)| kind == "SCHEMA" || !dropped_schemas.contains(schema));
    let mut sql = String::from("BEGIN;\n");
    for (kind, schema, name) in &extra {
        let target = match schema.as_str() {
            "" => quote_ident(name),
            s => format!("{}.{}", quote_ident(s), quote_ident(name)),
        };
        sql.push_str(&format!("DROP {kind} IF EXISTS {target} CASCADE;\n"));
    }
    sql.push_str("COMMIT;");
    if let Err(e) = client.batch_execute(&sql).await {
        let _ = client.batch_execute("ROLLBACK").await;
        return Err(DbError::query(
            "dropping the objects the dump does not hold",
        )(e));
    }
    Ok(extra)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_objects_of_a_table_of_contents() {
        let toc = ";\n; Archive created at 2026-11-30\n\
            6; 2615 16390 SCHEMA - drizzle postgres\n\
            215; 1259 16386 TABLE public persons postgres\n\
            216; 1259 16385 SEQUENCE public persons_id_seq postgres\n\
            3330; 0 16386 TABLE DATA public persons postgres\n\
            3337; 0 0 SEQUENCE SET public persons_id_seq postgres\n\
            850; 1247 16400 TYPE public mood postgres\n";
        let found = objects_in(toc);
        let o = |k: &str, s: &str, n: &str| (k.to_string(), s.to_string(), n.to_string());
        let expected: HashSet<Object> = [
            o("SCHEMA", "", "drizzle"),
            o("TABLE", "public", "persons"),
            o("SEQUENCE", "public", "persons_id_seq"),
            o("TYPE", "public", "mood"),
        ]
        .into_iter()
        .collect();
        assert_eq!(found, expected);
    }
}
