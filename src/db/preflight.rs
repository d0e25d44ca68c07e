//! Before the backup and the first change: can this role do what the run needs with Drizzle's
//! tracking table, and is it safe to? Read from the catalogs (PostgreSQL 15: `pg_namespace`,
//! `pg_class`, `pg_trigger`, `pg_rewrite`, the `has_*_privilege` functions), so that a missing
//! grant is named with the statement that fixes it instead of failing half-way.

use tokio_postgres::Client;

use super::{quote_ident, value, DbError, Tracking, ValueError};

/// One thing the run needs and does not have, or a tracking table unsafe to write as superuser.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// The schema does not exist and the role may not create schemas in this database.
    NoCreateOnDatabase { database: String },
    /// The schema exists, but the role may not look into it.
    NoSchemaUsage { owner: String },
    /// The table does not exist, and the role may not create it in the schema.
    NoSchemaCreate { owner: String },
    /// The table exists, and the role lacks these privileges on it.
    NoTablePrivileges {
        owner: String,
        missing: Vec<&'static str>,
    },
    /// The table's `id` sequence cannot be used (INSERT needs USAGE for nextval; the backup,
    /// pg_dump, needs SELECT to read its value).
    NoSequenceUsage { sequence: String },
    /// Migrating as a superuser into a table that another role owns, or that has triggers or
    /// rules: their code would run with superuser rights.
    UnsafeForSuperuser {
        owner: String,
        triggers: Vec<String>,
        rules: Vec<String>,
    },
}

/// The role cannot (or, as superuser, must not) run the migration; nothing was changed.
#[derive(Debug, thiserror::Error)]
#[error("role {role:?} cannot use the tracking table {table}: {}", problems.iter().map(|p| p.describe()).collect::<Vec<_>>().join("; "))]
pub struct PreflightError {
    pub role: String,
    /// `"schema"."table"`, as quoted in SQL.
    pub table: String,
    pub schema: String,
    pub problems: Vec<Problem>,
}

impl Problem {
    fn describe(&self) -> String {
        match self {
            Problem::NoCreateOnDatabase { database } => format!("the schema does not exist and the role has no CREATE privilege on database {database:?}"),
            Problem::NoSchemaUsage { owner } => format!("the role has no USAGE privilege on the schema (owned by {owner:?})"),
            Problem::NoSchemaCreate { owner } => format!("the table does not exist and the role has no CREATE privilege on the schema (owned by {owner:?})"),
            Problem::NoTablePrivileges { owner, missing } => format!("the role lacks {} on the table (owned by {owner:?})", missing.join(", ")),
            Problem::NoSequenceUsage { sequence } => format!("the role lacks USAGE or SELECT on its id sequence {sequence}"),
            Problem::UnsafeForSuperuser { owner, triggers, rules } => format!(
                "the run is a superuser's, and the table is owned by {owner:?}{}{}: their code would run with superuser rights",
                if triggers.is_empty() { String::new() } else { format!(", has triggers {}", triggers.join(", ")) },
                if rules.is_empty() { String::new() } else { format!(", has rules {}", rules.join(", ")) },
            ),
        }
    }
}

impl PreflightError {
    /// The statements an admin (a superuser, or the owner named) runs, one a line.
    pub(crate) fn statements(&self) -> Vec<String> {
        let role = quote_ident(&self.role);
        let schema = quote_ident(&self.schema);
        let table = &self.table;
        self.problems
            .iter()
            .map(|p| match p {
                Problem::NoCreateOnDatabase { .. } => format!("CREATE SCHEMA {schema} AUTHORIZATION {role};"),
                Problem::NoSchemaUsage { .. } => format!("GRANT USAGE ON SCHEMA {schema} TO {role};"),
                Problem::NoSchemaCreate { .. } => format!("GRANT CREATE ON SCHEMA {schema} TO {role};"),
                Problem::NoTablePrivileges { missing, .. } => format!("GRANT {} ON {table} TO {role};", missing.join(", ")),
                Problem::NoSequenceUsage { sequence } => format!("GRANT USAGE, SELECT ON SEQUENCE {sequence} TO {role};"),
                Problem::UnsafeForSuperuser { triggers, rules, .. } => {
                    let mut fix: Vec<String> = triggers.iter().map(|t| format!("DROP TRIGGER {} ON {table};", quote_ident(t))).collect();
                    fix.extend(rules.iter().map(|r| format!("DROP RULE {} ON {table};", quote_ident(r))));
                    fix.push(format!("ALTER TABLE {table} OWNER TO {role};  -- after reading what the triggers did"));
                    fix.join("\n  ")
                }
            })
            .collect()
    }
}

/// What the catalogs say about the role, the schema and the table, in one query.
const FACTS: &str = "SELECT current_user::text, r.rolsuper, has_database_privilege(current_database(), 'CREATE'), \
       current_database()::text, n.oid IS NOT NULL, pg_get_userbyid(n.nspowner)::text, \
       coalesce(has_schema_privilege(n.oid, 'USAGE'), false), coalesce(has_schema_privilege(n.oid, 'CREATE'), false), \
       c.oid IS NOT NULL, pg_get_userbyid(c.relowner)::text, coalesce(pg_has_role(c.relowner, 'USAGE'), false), \
       coalesce(has_table_privilege(c.oid, 'SELECT'), false), coalesce(has_table_privilege(c.oid, 'INSERT'), false), \
       ARRAY(SELECT t.tgname::text FROM pg_trigger t WHERE t.tgrelid = c.oid AND NOT t.tgisinternal ORDER BY 1), \
       ARRAY(SELECT w.rulename::text FROM pg_rewrite w WHERE w.ev_class = c.oid ORDER BY 1), \
       s.seq::text, coalesce(has_sequence_privilege(s.seq, 'USAGE') AND has_sequence_privilege(s.seq, 'SELECT'), true) \
     FROM pg_roles r \
     LEFT JOIN pg_namespace n ON n.nspname = $1 \
     LEFT JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = $2 \
     LEFT JOIN LATERAL (SELECT CASE WHEN c.oid IS NOT NULL AND has_schema_privilege(n.oid, 'USAGE') \
       THEN pg_get_serial_sequence($3, 'id')::regclass END AS seq) s ON true \
     WHERE r.rolname = current_user";

/// Checks what the run needs: CREATE on the database when the schema is missing, USAGE (and
/// CREATE when the table is missing) on the schema, SELECT and INSERT on the table and USAGE on
/// its sequence; as a superuser, a table owned by the role itself without triggers or rules.
///
/// Errors: [`DbError::Preflight`] listing every problem; [`DbError::Query`] when the catalogs
/// cannot be read.
pub async fn check(client: &Client, tracking: &Tracking) -> Result<(), DbError> {
    const WHAT: &str = "checking the role's privileges on the tracking table";
    let row = client
        .query_one(
            FACTS,
            &[&tracking.schema, &tracking.table, &tracking.qualified()],
        )
        .await
        .map_err(DbError::query(WHAT))?;
    let text = |i| value::<Option<String>>(&row, i, WHAT).map(Option::unwrap_or_default);
    let flag = |i| value::<bool>(&row, i, WHAT);
    let role = text(0)?;
    let mut problems = Vec::new();
    if !flag(4)? {
        if !flag(2)? && !flag(1)? {
            problems.push(Problem::NoCreateOnDatabase { database: text(3)? });
        }
    } else if !flag(6)? {
        problems.push(Problem::NoSchemaUsage { owner: text(5)? });
    } else if !flag(8)? {
        if !flag(7)? {
            problems.push(Problem::NoSchemaCreate { owner: text(5)? });
        }
    } else {
        table_problems(&row, &mut problems, WHAT)?;
    }
    if problems.is_empty() {
        return Ok(());
    }
    Err(DbError::Preflight(Box::new(PreflightError {
        role,
        table: tracking.qualified(),
        schema: tracking.schema.clone(),
        problems,
    })))
}

/// The problems of an existing table: privileges, its sequence, and (superuser) its owner,
/// triggers and rules.
fn table_problems(
    row: &tokio_postgres::Row,
    problems: &mut Vec<Problem>,
    what: &'static str,
) -> Result<(), ValueError> {
    let owner = value::<Option<String>>(row, 9, what)?.unwrap_or_default();
    let superuser = value::<bool>(row, 1, what)?;
    let missing: Vec<&'static str> = [(11, "SELECT"), (12, "INSERT")]
        .into_iter()
        .filter_map(|(i, name)| match value::<bool>(row, i, what) {
            Ok(true) => None,
            _ => Some(name),
        })
        .collect();
    if !missing.is_empty() {
        problems.push(Problem::NoTablePrivileges {
            owner: owner.clone(),
            missing,
        });
    }
    if !value::<bool>(row, 16, what)? {
        let sequence = value::<Option<String>>(row, 15, what)?.unwrap_or_default();
        problems.push(Problem::NoSequenceUsage { sequence });
    }
    let triggers: Vec<String> = value(row, 13, what)?;
    let rules: Vec<String> = value(row, 14, what)?;
    let own = value::<bool>(row, 10, what)? && owner == value::<String>(row, 0, what)?;
    if superuser && (!own || !triggers.is_empty() || !rules.is_empty()) {
        problems.push(Problem::UnsafeForSuperuser {
            owner,
            triggers,
            rules,
        });
    }
    Ok(())
}

/// Whether this role can keep the run history (`vamsa_migrate.runs`, see `db::history`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HistoryAccess {
    /// The table exists and the role may insert into it.
    Ready,
    /// The table does not exist, and the role may create it (and the schema, when missing).
    Creatable,
    /// The table does not exist; nothing to write into, nothing checked.
    Absent,
    /// History is off for this role: why, and the statement an admin runs to turn it on.
    Off { reason: String, fix: String },
}

/// What the catalogs say about the history schema and table, in one query.
const HISTORY_FACTS: &str = "SELECT current_user::text, r.rolsuper, \
       has_database_privilege(current_database(), 'CREATE'), n.oid IS NOT NULL, \
       coalesce(has_schema_privilege(n.oid, 'USAGE'), false), coalesce(has_schema_privilege(n.oid, 'CREATE'), false), \
       c.oid IS NOT NULL, coalesce(has_table_privilege(c.oid, 'INSERT'), false), \
       coalesce(pg_get_userbyid(c.relowner) = current_user, true), \
       EXISTS (SELECT 1 FROM pg_trigger t WHERE t.tgrelid = c.oid AND NOT t.tgisinternal) \
     FROM pg_roles r \
     LEFT JOIN pg_namespace n ON n.nspname = $1 \
     LEFT JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = $2 \
     WHERE r.rolname = current_user";

/// Checks the privileges the run history needs, as [`check`] does for the tracking table:
/// CREATE on the database (schema missing) or on the schema (table missing), USAGE on the
/// schema and INSERT on the table; as a superuser, a table the role owns without triggers.
/// `create`: whether this run would create the table when it is missing.
///
/// Errors: [`DbError::Query`] when the catalogs cannot be read.
pub(crate) async fn history_access(
    client: &Client,
    schema: &str,
    table: &str,
    create: bool,
) -> Result<HistoryAccess, DbError> {
    const WHAT: &str = "checking the role's privileges on the run history";
    let row = client
        .query_one(HISTORY_FACTS, &[&schema, &table])
        .await
        .map_err(DbError::query(WHAT))?;
    let flag = |i| value::<bool>(&row, i, WHAT);
    let role = quote_ident(&value::<String>(&row, 0, WHAT)?);
    let quoted = quote_ident(schema);
    let off = |reason: &str, fix: String| HistoryAccess::Off {
        reason: reason.to_string(),
        fix,
    };
    Ok(if !flag(6)? && !create {
        HistoryAccess::Absent
    } else if !flag(3)? && !flag(2)? {
        off(
            "the role may not create schemas in this database",
            format!("CREATE SCHEMA {quoted} AUTHORIZATION {role};"),
        )
    } else if flag(3)? && !flag(4)? {
        off(
            "the role has no USAGE privilege on the history schema",
            format!("GRANT USAGE ON SCHEMA {quoted} TO {role};"),
        )
    } else if !flag(6)? {
        if flag(3)? && !flag(5)? {
            off(
                "the role has no CREATE privilege on the history schema",
                format!("GRANT CREATE ON SCHEMA {quoted} TO {role};"),
            )
        } else {
            HistoryAccess::Creatable
        }
    } else if !flag(7)? {
        off(
            "the role has no INSERT privilege on the history table",
            format!(
                "GRANT SELECT, INSERT ON {quoted}.{} TO {role};",
                quote_ident(table)
            ),
        )
    } else if flag(1)? && (!flag(8)? || flag(9)?) {
        off(
            "the run is a superuser's, and the history table is another role's or has triggers",
            format!(
                "ALTER TABLE {quoted}.{} OWNER TO {role};  -- after checking its triggers",
                quote_ident(table)
            ),
        )
    } else {
        HistoryAccess::Ready
    })
}
