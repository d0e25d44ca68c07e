//! What a failure means: the likely cause and the next step a person reads (the README's
//! "Errors and likely causes" table, the user document's "What if a migration fails?"), and the
//! decisions made from the same facts (retry or give up, is the connection gone). Pure
//! functions of an error's kind, its SQLSTATE (PostgreSQL 15, Appendix A) and where it
//! happened; the exit codes derive from the kind in [`crate::exit`].

use crate::db::{ConnectCause, DbError, StatementFailure};
#[cfg(test)]
use crate::engine::error::NewerDatabase;
use crate::engine::error::{ApplyError, EngineError};
use crate::protocol::{ErrorKind, ErrorReport, Request};

/// The report of an engine error, as `done` carries it and the CLI prints it.
pub(crate) fn report(e: &EngineError) -> ErrorReport {
    ErrorReport {
        kind: e.kind(),
        message: e.to_string(),
        migration: failed_migration(e),
        sqlstate: e.sqlstate().map(str::to_string),
        cause: cause(e),
        hint: next_step(e),
    }
}

/// The migration file that failed, when one did (also in a rehearsal).
fn failed_migration(e: &EngineError) -> Option<String> {
    match e {
        EngineError::Apply(a) => Some(a.file.clone()),
        EngineError::LockReleased { file, .. } => Some(file.clone()),
        EngineError::Rehearsal(caught) => failed_migration(caught),
        _ => None,
    }
}

/// The report of a failure the daemon itself decides (a refusal, a bad request, stopping),
/// with the next step for its kind.
pub(crate) fn daemon_report(kind: ErrorKind, message: String) -> ErrorReport {
    let hint = match kind {
        ErrorKind::Refused => "Run the trigger as root or the vamsa-migrate user, or add the user or its group to allowed_users / allowed_groups.".into(),
        ErrorKind::Stopping => "Run the trigger again once the service is back.".into(),
        ErrorKind::Overloaded => "Try again in a moment.".into(),
        ErrorKind::Database => "Check that PostgreSQL is reachable.".into(),
        _ => {
            let commands: Vec<&str> = Request::ALL.iter().map(|r| r.command()).collect();
            format!(
                "Send one JSON line such as {{\"command\":\"apply\"}} (commands: {}).",
                commands.join(", ")
            )
        }
    };
    ErrorReport {
        kind,
        message,
        migration: None,
        sqlstate: None,
        cause: None,
        hint,
    }
}

/// Waiting cannot fix it: bad settings, credentials PostgreSQL refuses (28000, 28P01, or none
/// given), a database that does not exist (3D000), TLS the server refuses or whose certificate
/// or files fail libpq's checks. The daemon then stops waiting for the database.
pub(crate) fn is_permanent(e: &EngineError) -> bool {
    use ConnectCause::*;
    match e {
        EngineError::Config(_) | EngineError::Db(DbError::SessionNotKept { .. }) => true,
        EngineError::Db(DbError::Connect { cause, .. }) => matches!(
            cause,
            PasswordRequired
                | PasswordWrong
                | RoleRefused
                | NoDatabase
                | TlsRefused
                | CertificateUntrusted
                | HostNameMismatch
                | TlsFiles
        ),
        _ => false,
    }
}

/// The connection broke during a query or a migration: it must not be used again.
pub(crate) fn connection_lost(e: &EngineError) -> bool {
    match e {
        EngineError::Apply(a) => a.failure.connection_lost,
        EngineError::Db(DbError::Query { failure, .. }) => failure.connection_lost,
        _ => false,
    }
}

/// A lock timeout (55P03) that left nothing behind (the migration rolled back): trying again
/// is safe.
pub(crate) fn is_retryable_lock_timeout(f: &StatementFailure) -> bool {
    f.failure.sqlstate.as_deref() == Some("55P03") && f.completed_outside_transaction == 0
}

/// The likely cause, when we can tell.
pub(crate) fn cause(e: &EngineError) -> Option<String> {
    match e {
        EngineError::Apply(a) => Some(apply_cause(a)),
        EngineError::Rehearsal(caught) => cause(caught),
        EngineError::Db(DbError::Connect { cause, .. }) => Some(connect_cause(*cause).into()),
        EngineError::Db(DbError::Preflight(p)) => Some(format!(
            "The database role {:?} lacks a privilege the run needs on the tracking table, or (as a superuser) must not write to a table another role controls.",
            p.role
        )),
        EngineError::Db(DbError::SessionNotKept { .. }) => Some(SESSION_NOT_KEPT_CAUSE.into()),
        EngineError::Db(DbError::LockWait { .. }) => Some(
            "Another vamsa-migrate (a deploy hook, the service, or an admin) is applying migrations right now.".into(),
        ),
        EngineError::NewerDatabase(_) => Some(
            "The code was rolled back (e.g. git checkout of an older release) without restoring the database: newer migrations are applied, and this code does not know the schema they made.".into(),
        ),
        EngineError::Unmatched(_) => Some(
            "Migrations were applied to this database from a folder that is not here (another branch or a newer release), or the folder was converted without them.".into(),
        ),
        EngineError::LockReleased { .. } => Some(
            "The migration releases advisory locks it did not take: pg_advisory_unlock_all() also releases vamsa-migrate's run lock.".into(),
        ),
        _ => None,
    }
}

/// What to do next.
pub(crate) fn next_step(e: &EngineError) -> String {
    match e {
        EngineError::Unmatched(_) => "Nothing was changed. Deploy the release whose migrations folder holds those migrations; if they were never applied, delete those rows; then run again.".into(),
        EngineError::Convert(_) => "Fix meta/_journal.json as said above; nothing was changed in the database.".into(),
        EngineError::Source(_) => "Fix the file named above (or pull a complete release); nothing was changed in the database.".into(),
        EngineError::Config(_) => "Fix the setting named above; nothing was changed in the database.".into(),
        EngineError::Drift(_) => "Nothing was applied. See `vamsa-migrate status` for the full picture.".into(),
        EngineError::SchemaDriftUnchecked { .. } => "Nothing was applied. Let this role read schema vamsa_migrate (GRANT USAGE ON SCHEMA vamsa_migrate and SELECT ON ALL TABLES IN SCHEMA vamsa_migrate TO it), or run when no other session holds a lock on the application's tables, or set schema_drift = \"warn\".".into(),
        EngineError::SchemaDrift(_) => "Nothing was applied. Put the hand change into a migration (or undo it), or set schema_drift = \"warn\" to apply anyway; the run then records the schema as it is.".into(),
        EngineError::NewerDatabase(_) => "Two ways out: restore the dump taken before they were applied (`vamsa-migrate backups` lists the dumps, `vamsa-migrate restore FILE` restores one), or check out (deploy) the newer code whose migrations folder has them. To run this code anyway, set unknown_rows = \"warn\".".into(),
        EngineError::NeedsOwnTransaction { .. } => "Nothing was applied. Run with transaction = \"per-migration\" (the default).".into(),
        EngineError::TransactionControl { .. } => "Nothing was applied. Remove the statement (vamsa-migrate commits each migration itself), or, if the migration must control its transactions, make `-- vamsa-migrate: no-transaction` its first line: it then runs statement by statement.".into(),
        EngineError::Db(DbError::ReadOnly { .. }) => "Point database_url at the primary, or list several hosts with target_session_attrs=read-write.".into(),
        EngineError::Db(DbError::SessionNotKept { .. }) => SESSION_NOT_KEPT_NEXT_STEP.into(),
        EngineError::Db(DbError::LockWait { .. }) => "Wait for the other run to finish and try again, or raise lock_wait.".into(),
        EngineError::Db(DbError::TrackingRow(e)) => e.next_step(),
        EngineError::Db(DbError::Connect { cause, .. }) => connect_next_step(*cause).into(),
        EngineError::Db(DbError::Preflight(p)) => format!(
            "Nothing was changed (no backup was taken). As a superuser or the owner, run:\n  {}\nthen run again. README \"The database role\" lists the minimal grants.",
            p.statements().join("\n  ")
        ),
        // A permission error is never a server that is down (SQLSTATE 42501, PostgreSQL 15
        // Appendix A).
        EngineError::Db(DbError::Query { failure, .. }) if failure.sqlstate.as_deref() == Some("42501") => PERMISSION_NEXT_STEP.into(),
        EngineError::Db(_) => "Check database_url and that PostgreSQL is running; nothing was changed.".into(),
        EngineError::Apply(a) => apply_next_step(a),
        EngineError::Rehearsal(caught) => rehearsal_next_step(caught),
        EngineError::RehearsalUnavailable { .. } => "Nothing was changed. Fix the cause above, or set rehearse = \"auto\" (rehearse when possible) or run with --no-rehearse.".into(),
        EngineError::LockReleased { file, committed, all_rolled_back: false } => format!("{file} and the migrations before it in this run are applied ({committed} in all); none after it ran. In later migrations release only the locks they take (pg_advisory_unlock(key)), then run again to apply the rest."),
        EngineError::LockReleased { file, .. } => format!("Nothing was applied: the run's transaction was rolled back. Remove the unlock from {file} (release only the locks it takes, with pg_advisory_unlock(key)), then run again."),
        EngineError::ManualBackup(_) => "Fix the cause above, then run `vamsa-migrate backup` again; nothing was changed in the database.".into(),
        EngineError::Stopped { .. } => "The service stopped between two steps of the run; the next run (the service's start-up run, or a trigger) applies the rest.".into(),
        EngineError::Backup(_) => "Nothing was migrated. Fix the cause above, or run without a backup (--no-backup, or backup_enabled = false) if you have one of your own.".into(),
    }
}

/// The next step for a query refused for a missing permission (SQLSTATE 42501).
pub(crate) const PERMISSION_NEXT_STEP: &str = "Nothing was changed. As a superuser or the object's owner, grant the role in database_url the permission named above (for vamsa-migrate's own schema: GRANT USAGE ON SCHEMA vamsa_migrate TO <role>; GRANT SELECT ON ALL TABLES IN SCHEMA vamsa_migrate TO <role>;), then run again.";

/// A pooler that hands our session to other clients between transactions (`db::pooler`).
const SESSION_NOT_KEPT_CAUSE: &str = "database_url leads to a connection pooler (PgBouncer with pool_mode = transaction or statement, or a proxy like it) that gives this connection's PostgreSQL session to other clients between transactions; the migration lock (a session-level advisory lock) and the transaction of each migration need one session for the whole run.";

const SESSION_NOT_KEPT_NEXT_STEP: &str = "Nothing was changed. Point database_url at PostgreSQL itself (its host and port, usually 5432), or at a pool in session mode (PgBouncer: pool_mode = session, e.g. a [databases] entry of its own for vamsa-migrate), then run again.";

/// The likely cause of a connection that could not be set up.
fn connect_cause(cause: ConnectCause) -> &'static str {
    use ConnectCause::*;
    match cause {
        Refused => "Nothing accepts connections at that address: PostgreSQL is not running, or listens on another port or address (listen_addresses, port).",
        NoSuchHost => "The host name in database_url (or PGHOST) is not known to the DNS or /etc/hosts.",
        NoSocket => "No PostgreSQL socket in that directory: the server is not running on this machine, uses another port, or another socket directory (unix_socket_directories).",
        TimedOut => "The server (or something in between: a firewall dropping packets, a proxy, a hung server) did not answer within connect_timeout.",
        Closed => "The server closed the connection before the session was ready: something other than PostgreSQL listens there, a proxy refused it, or the server wants a password that was not given.",
        TlsRefused => "The server does not accept TLS connections (ssl = off in postgresql.conf), and sslmode=require forbids an unencrypted one.",
        TlsFailed => "The TLS handshake with the server failed.",
        CertificateUntrusted => "The server's certificate does not lead to a root certificate that sslrootcert names (checked under sslmode=verify-ca and verify-full, and under weaker modes when a root certificate file exists, as libpq does): another CA issued it, it has expired, or sslrootcert holds the wrong CA.",
        HostNameMismatch => "The server's certificate does not name the host in database_url (sslmode=verify-full checks the host against the certificate's DNS and IP subject alternative names).",
        TlsFiles => "A root certificate, client certificate or private key file named by sslrootcert, sslcert or sslkey (or libpq's default under ~/.postgresql/) is missing, unreadable, not PEM, or its key is readable by others.",
        PasswordRequired => "The server asks for a password (pg_hba.conf: scram-sha-256 or md5) and none was given.",
        PasswordWrong => "PostgreSQL refused the password for that user (SQLSTATE 28P01), or the user does not exist.",
        RoleRefused => "The user does not exist, or pg_hba.conf has no entry allowing it to connect to that database from here (SQLSTATE 28000).",
        NoDatabase => "The database named in database_url does not exist on that server (SQLSTATE 3D000).",
        TooManyConnections => "The server has reached max_connections (SQLSTATE 53300).",
        NotAccepting => "The server is starting up, shutting down or recovering, and accepts no connections yet (SQLSTATE 57P03).",
        Other => "PostgreSQL could not be reached at that address, or refused the connection.",
    }
}

/// The next step for a connection that could not be set up.
fn connect_next_step(cause: ConnectCause) -> &'static str {
    use ConnectCause::*;
    match cause {
        Refused | NoSocket => "Start PostgreSQL (systemctl start postgresql), or correct the host and port in database_url; nothing was changed.",
        NoSuchHost => "Correct the host name in database_url (or PGHOST); nothing was changed.",
        TimedOut => "Check that the host and port are PostgreSQL's and reachable (firewall), or raise connect_timeout in database_url; nothing was changed.",
        Closed => "Check that the port is PostgreSQL's (not a proxy or another service), and give the password (in database_url, PGPASSWORD, ~/.pgpass or database_password_file); nothing was changed.",
        TlsRefused => "Enable ssl in postgresql.conf, or set sslmode=prefer (or disable) in database_url if the network is trusted; nothing was changed.",
        TlsFailed => "Check the server's TLS set-up (certificate, ssl_min_protocol_version), or set sslmode=disable if the network is trusted; nothing was changed.",
        CertificateUntrusted => "Point sslrootcert at the CA that issued the server's certificate (the root of its ssl_cert_file chain), or renew the server's certificate; nothing was changed.",
        HostNameMismatch => "Connect by a name the certificate holds (listed above), or reissue the server's certificate for this host; nothing was changed.",
        TlsFiles => "Correct the file named above (chmod 0600 for a private key), or the setting in database_url; nothing was changed.",
        PasswordRequired => "Put the password in database_password_file (or PGPASSWORD, ~/.pgpass, or percent-encoded in database_url); nothing was changed.",
        PasswordWrong => "Correct the user or the password (database_password_file, PGPASSWORD, ~/.pgpass or database_url); nothing was changed.",
        RoleRefused => "Create the role (CREATE ROLE ... LOGIN), or add a pg_hba.conf line for it and reload PostgreSQL; nothing was changed.",
        NoDatabase => "Create the database (createdb -O <user> <database>), or correct its name in database_url; nothing was changed.",
        TooManyConnections => "Close idle connections, or raise max_connections, then run again; nothing was changed.",
        NotAccepting => "Wait until the server has started (pg_isready), then run again; nothing was changed.",
        Other => "Check database_url and that PostgreSQL is running; nothing was changed.",
    }
}

fn apply_cause(e: &ApplyError) -> String {
    let code = e.failure.sqlstate.as_deref().unwrap_or("");
    if e.failure.connection_lost || code.starts_with("08") {
        return if e.during_commit {
            "The connection to PostgreSQL was lost during COMMIT: the migration may or may not be committed; `vamsa-migrate status` tells which, and a new run continues from there.".into()
        } else {
            "The connection to PostgreSQL was lost (server restarted or network failure): nothing of this migration was committed.".into()
        };
    }
    if !e.invalid_indexes.is_empty() && e.failure.sqlstate.is_none() {
        return "A concurrent index build failed (in this run or an earlier one) and left the index INVALID; IF NOT EXISTS does not rebuild it.".into();
    }
    match code {
        "42P07" | "42710" | "42701" | "42P06" | "42723" => "An object it creates already exists: the migration was partially applied before (perhaps after a crash), or the object was made by hand.".into(),
        "42703" | "42P01" | "42704" | "3F000" | "42883" => "Something it uses does not exist: a previous migration was skipped or failed silently, or the object was removed by hand.".into(),
        "42501" => permission_cause(e),
        "53100" => "Disk full: the database server ran out of storage space.".into(),
        "53200" => "The database server ran out of memory.".into(),
        "55P03" => format!("Lock timeout: the statement waited longer than lock_timeout ({}) for a lock held by another session, probably the running application.", humantime::format_duration(e.lock_timeout)),
        "57014" => cancelled_cause(e),
        "42601" => "The migration file has an SQL syntax error.".into(),
        "25001" => "This statement cannot run inside a transaction block: make `-- vamsa-migrate: no-transaction` the first line of the file.".into(),
        "23505" | "23503" | "23502" | "23514" => "The existing data violates a constraint this migration adds.".into(),
        _ => "The migration could not be applied to this database as it is.".into(),
    }
}

/// 57014: the `statement_timeout` in force, where it came from and the key that changes it.
fn cancelled_cause(e: &ApplyError) -> String {
    let Some(t) = &e.statement_timeout else {
        return "The statement was cancelled: it ran longer than statement_timeout, or the run was stopped.".into();
    };
    let from = match t.source.as_str() {
        "vamsa-migrate" => "statement_timeout in vamsa-migrate's configuration".to_string(),
        "user" => "the role's setting (ALTER ROLE ... SET statement_timeout)".into(),
        "database" => "the database's setting (ALTER DATABASE ... SET statement_timeout)".into(),
        "database user" => "the role's setting in this database (ALTER ROLE ... IN DATABASE ... SET statement_timeout)".into(),
        "configuration file" => "the server's postgresql.conf".into(),
        "client" => "the connection's options (options= in database_url, or PGOPTIONS)".into(),
        other => format!("PostgreSQL's setting (source: {})", crate::plan::printable(other)),
    };
    format!(
        "The statement was cancelled: it ran longer than statement_timeout ({}, from {from}), or the run was stopped. Set statement_timeout in vamsa-migrate's configuration to change it for migrations (\"0\": no limit).",
        crate::plan::printable(&t.value)
    )
}

fn permission_cause(e: &ApplyError) -> String {
    let statement = e
        .statement_summary
        .as_deref()
        .map(|s| format!(" ({s})"))
        .unwrap_or_default();
    match e.statement {
        Some(n) => format!("The database user lacks a permission needed by statement {n}{statement}: grant it, or run as the schema's owner."),
        // No statement: recording the migration in the tracking table failed, after all its
        // statements ran; with a user that could, the migration itself changed who runs (SET ROLE,
        // SET SESSION AUTHORIZATION) or what it may do.
        None => "The role in effect when the migration was recorded in the tracking table lacks a permission on it: the migration's statements ran, and one of them may have changed the role (SET ROLE, SET SESSION AUTHORIZATION) or revoked a privilege; reset it at the end of the migration (RESET ROLE), or grant that role the permission.".into(),
    }
}

/// A release that failed on the scratch copy: nothing to restore, nothing half-applied.
fn rehearsal_next_step(caught: &EngineError) -> String {
    const UNCHANGED: &str = "Production was not changed: the release failed on a scratch copy of the database (restored from the dump just taken), which was dropped.";
    match caught {
        EngineError::Apply(a) => format!("{UNCHANGED} {}", apply_action(a)),
        other => format!("{UNCHANGED} {}", next_step(other)),
    }
}

fn apply_next_step(e: &ApplyError) -> String {
    let action = apply_action(e);
    let stays = what_stays(e);
    let sep = if stays.ends_with('\n') { "" } else { " " };
    format!("{stays}{sep}{action}{}", restore_steps(e))
}

/// What to do about a failed migration, after what stays of the run.
fn apply_action(e: &ApplyError) -> &'static str {
    match e.failure.sqlstate.as_deref().unwrap_or("") {
        "55P03" => "Run again at a quieter time, or raise lock_timeout, or set lock_retries to try again automatically.",
        "53100" => "Free space on the database server, then run `vamsa-migrate migrate` again.",
        "42501" => "Grant the permission (or set database_url to the owner role), then run `vamsa-migrate migrate` again.",
        _ if e.failure.connection_lost => "Once PostgreSQL is reachable, run `vamsa-migrate migrate` again: it continues from the last committed migration.",
        _ => "Fix the cause and run `vamsa-migrate migrate` again.",
    }
}

/// What of this run is committed and what is not.
fn what_stays(e: &ApplyError) -> String {
    if let Some(committed) = e.transaction_ended {
        return ended_transaction(e, committed);
    }
    if e.all_rolled_back {
        return "The whole run was rolled back (transaction = \"all\"): the database is as it was before.".into();
    }
    let earlier = match e.committed {
        0 => String::new(),
        1 => " 1 earlier migration of this run is committed and stays.".into(),
        n => format!(" {n} earlier migrations of this run are committed and stay."),
    };
    match e.no_transaction_completed {
        Some(done) if !e.invalid_indexes.is_empty() => format!(
            "{} ran outside a transaction: its first {done} statement(s) stayed applied and it is not recorded.{earlier} It left INVALID index(es), which IF NOT EXISTS would skip; drop them before retrying:\n{}",
            e.file,
            e.invalid_indexes
                .iter()
                .map(|i| format!("  DROP INDEX CONCURRENTLY {i};\n"))
                .collect::<String>()
        ),
        Some(done) => format!(
            "{} ran outside a transaction: its first {done} statement(s) stayed applied and it is not recorded; make its statements safe to re-run (IF NOT EXISTS) before retrying.{earlier}",
            e.file
        ),
        None => format!("Nothing of {} was committed.{earlier}", e.file),
    }
}

/// What stays when the migration ended our transaction itself: never less than is committed.
fn ended_transaction(e: &ApplyError, committed: bool) -> String {
    let ours = if committed {
        let earlier = match e.committed {
            0 => String::new(),
            n => format!(" and the {n} earlier migration(s) of this run"),
        };
        format!("its statements before that point{earlier} are committed")
    } else {
        "its statements before that point were rolled back".into()
    };
    format!(
        "{} ended vamsa-migrate's transaction itself (COMMIT, ROLLBACK or the like): {ours}; statements after that point ran on their own and may be committed. It is not recorded: check the database before running again, and move transaction control to a `-- vamsa-migrate: no-transaction` migration.",
        e.file
    )
}

/// The way back to before this run: the dump it took, or the admin's own.
fn restore_steps(e: &ApplyError) -> String {
    match &e.backup {
        Some((path, db)) => format!(
            "\nTo go back to where you were before this run:\n  1. stop the application (e.g. systemctl stop vamsa)\n  2. pg_restore --clean --if-exists -d {db} {}\n  3. roll the code back: git checkout HEAD~1, then rebuild and restart it",
            path.display()
        ),
        None => "\nIf you cannot fix it, restore the backup you made before updating (pg_restore --clean --if-exists -d <database> <backup-file>) and roll the code back with `git checkout HEAD~1`.".into(),
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::time::Duration;

    use super::*;
    use crate::db::PgFailure;

    fn failure(sqlstate: Option<&str>, connection_lost: bool) -> PgFailure {
        PgFailure {
            sqlstate: sqlstate.map(str::to_string),
            message: "m".into(),
            detail: None,
            hint: None,
            position: None,
            connection_lost,
        }
    }

    /// Statement 2 of 2 of `0001_add_media_tags.sql` failed, after one committed migration.
    fn apply_error(sqlstate: Option<&str>, connection_lost: bool) -> ApplyError {
        ApplyError {
            file: "0001_add_media_tags.sql".into(),
            statement: Some(2),
            statement_count: 2,
            statement_summary: Some("ALTER TABLE \"media\" ADD COLUMN \"tag_id\" uuid".into()),
            line: Some(6),
            failure: failure(sqlstate, connection_lost),
            during_commit: false,
            no_transaction_completed: None,
            committed: 1,
            all_rolled_back: false,
            backup: None,
            lock_timeout: Duration::from_secs(10),
            transaction_ended: None,
            invalid_indexes: Vec::new(),
            statement_timeout: None,
        }
    }

    fn cause_of(sqlstate: &str) -> String {
        apply_cause(&apply_error(Some(sqlstate), false))
    }

    const EXISTS: &str = "An object it creates already exists: the migration was partially applied before (perhaps after a crash), or the object was made by hand.";
    const MISSING: &str = "Something it uses does not exist: a previous migration was skipped or failed silently, or the object was removed by hand.";
    const VIOLATES: &str = "The existing data violates a constraint this migration adds.";
    const LOST: &str = "The connection to PostgreSQL was lost (server restarted or network failure): nothing of this migration was committed.";

    #[test]
    fn a_pool_that_does_not_keep_the_session_says_where_to_point_database_url() {
        let e = EngineError::Db(DbError::SessionNotKept {
            target: "127.0.0.1:6432/vamsa".into(),
            evidence: crate::db::Evidence::ServedAnother { pid: 4242 },
        });
        let report = report(&e);
        assert_eq!(report.kind, ErrorKind::Database);
        assert_eq!(report.message, "127.0.0.1:6432/vamsa is a connection pool that does not keep a session (PgBouncer's pool_mode = transaction or statement): between two transactions of this connection, its PostgreSQL backend (pid 4242) served another connection");
        assert_eq!(report.cause.as_deref(), Some("database_url leads to a connection pooler (PgBouncer with pool_mode = transaction or statement, or a proxy like it) that gives this connection's PostgreSQL session to other clients between transactions; the migration lock (a session-level advisory lock) and the transaction of each migration need one session for the whole run."));
        assert_eq!(report.hint, "Nothing was changed. Point database_url at PostgreSQL itself (its host and port, usually 5432), or at a pool in session mode (PgBouncer: pool_mode = session, e.g. a [databases] entry of its own for vamsa-migrate), then run again.");
        // Waiting cannot fix it: the daemon stops waiting for the database.
        assert!(is_permanent(&e));
    }

    #[test]
    fn a_released_run_lock_names_the_file_and_what_stays() {
        let kept = EngineError::LockReleased {
            file: "0001_unlock.sql".into(),
            committed: 2,
            all_rolled_back: false,
        };
        let report = report(&kept);
        assert_eq!(report.kind, ErrorKind::Apply);
        assert_eq!(report.migration.as_deref(), Some("0001_unlock.sql"));
        assert_eq!(report.hint, "0001_unlock.sql and the migrations before it in this run are applied (2 in all); none after it ran. In later migrations release only the locks they take (pg_advisory_unlock(key)), then run again to apply the rest.");
        let rolled_back = EngineError::LockReleased {
            file: "0001_unlock.sql".into(),
            committed: 0,
            all_rolled_back: true,
        };
        assert!(next_step(&rolled_back).starts_with("Nothing was applied"));
    }

    #[test]
    fn a_release_caught_in_rehearsal_keeps_the_diagnosis_and_says_production_was_not_changed() {
        let caught = EngineError::Rehearsal(Box::new(EngineError::Apply(Box::new(apply_error(
            Some("23505"),
            false,
        )))));
        let report = report(&caught);
        assert_eq!(report.kind, ErrorKind::Rehearsal);
        assert_eq!(report.migration.as_deref(), Some("0001_add_media_tags.sql"));
        assert_eq!(report.sqlstate.as_deref(), Some("23505"));
        assert_eq!(report.cause.as_deref(), Some(VIOLATES));
        assert!(report
            .message
            .starts_with("caught in rehearsal: production was not changed\nmigration 0001_add_media_tags.sql failed at statement 2 of 2 (line 6)"));
        assert_eq!(report.hint, "Production was not changed: the release failed on a scratch copy of the database (restored from the dump just taken), which was dropped. Fix the cause and run `vamsa-migrate migrate` again.");
    }

    #[test]
    fn duplicate_table_42p07_already_exists() {
        assert_eq!(cause_of("42P07"), EXISTS);
    }

    #[test]
    fn duplicate_object_42710_already_exists() {
        assert_eq!(cause_of("42710"), EXISTS);
    }

    #[test]
    fn duplicate_column_42701_already_exists() {
        assert_eq!(cause_of("42701"), EXISTS);
    }

    #[test]
    fn duplicate_schema_42p06_already_exists() {
        assert_eq!(cause_of("42P06"), EXISTS);
    }

    #[test]
    fn duplicate_function_42723_already_exists() {
        assert_eq!(cause_of("42723"), EXISTS);
    }

    #[test]
    fn undefined_column_42703_does_not_exist() {
        assert_eq!(cause_of("42703"), MISSING);
    }

    #[test]
    fn undefined_table_42p01_does_not_exist() {
        assert_eq!(cause_of("42P01"), MISSING);
    }

    #[test]
    fn undefined_object_42704_does_not_exist() {
        assert_eq!(cause_of("42704"), MISSING);
    }

    #[test]
    fn invalid_schema_name_3f000_does_not_exist() {
        assert_eq!(cause_of("3F000"), MISSING);
    }

    #[test]
    fn undefined_function_42883_does_not_exist() {
        assert_eq!(cause_of("42883"), MISSING);
    }

    #[test]
    fn insufficient_privilege_42501_names_the_statement() {
        assert_eq!(
            cause_of("42501"),
            "The database user lacks a permission needed by statement 2 (ALTER TABLE \"media\" ADD COLUMN \"tag_id\" uuid): grant it, or run as the schema's owner."
        );
        assert!(next_step(&EngineError::Apply(Box::new(apply_error(Some("42501"), false))))
            .contains(" Grant the permission (or set database_url to the owner role), then run `vamsa-migrate migrate` again."));
    }

    #[test]
    fn disk_full_53100_says_so_and_to_free_space() {
        assert_eq!(
            cause_of("53100"),
            "Disk full: the database server ran out of storage space."
        );
        assert!(next_step(&EngineError::Apply(Box::new(apply_error(
            Some("53100"),
            false
        ))))
        .contains(" Free space on the database server, then run `vamsa-migrate migrate` again."));
    }

    #[test]
    fn lock_not_available_55p03_names_lock_timeout_and_lock_retries() {
        assert_eq!(
            cause_of("55P03"),
            "Lock timeout: the statement waited longer than lock_timeout (10s) for a lock held by another session, probably the running application."
        );
        assert!(next_step(&EngineError::Apply(Box::new(apply_error(Some("55P03"), false))))
            .contains(" Run again at a quieter time, or raise lock_timeout, or set lock_retries to try again automatically."));
    }

    #[test]
    fn query_canceled_57014_names_statement_timeout_or_stop() {
        assert_eq!(
            cause_of("57014"),
            "The statement was cancelled: it ran longer than statement_timeout, or the run was stopped."
        );
    }

    #[test]
    fn syntax_error_42601() {
        assert_eq!(
            cause_of("42601"),
            "The migration file has an SQL syntax error."
        );
    }

    #[test]
    fn active_sql_transaction_25001_points_at_the_no_transaction_line() {
        assert_eq!(
            cause_of("25001"),
            "This statement cannot run inside a transaction block: make `-- vamsa-migrate: no-transaction` the first line of the file."
        );
    }

    #[test]
    fn unique_violation_23505_is_existing_data() {
        assert_eq!(cause_of("23505"), VIOLATES);
    }

    #[test]
    fn foreign_key_violation_23503_is_existing_data() {
        assert_eq!(cause_of("23503"), VIOLATES);
    }

    #[test]
    fn not_null_violation_23502_is_existing_data() {
        assert_eq!(cause_of("23502"), VIOLATES);
    }

    #[test]
    fn check_violation_23514_is_existing_data() {
        assert_eq!(cause_of("23514"), VIOLATES);
    }

    #[test]
    fn connection_exception_08xxx_is_a_lost_connection() {
        // Class 08 means lost whether or not the failure was marked so.
        assert_eq!(cause_of("08006"), LOST);
        assert_eq!(apply_cause(&apply_error(Some("08003"), true)), LOST);
    }

    #[test]
    fn operator_intervention_57pxx_is_a_lost_connection() {
        // PgFailure marks 57P01..57P05 (admin shutdown, crash shutdown, ...) as lost.
        assert_eq!(apply_cause(&apply_error(Some("57P01"), true)), LOST);
        assert!(
            next_step(&EngineError::Apply(Box::new(apply_error(Some("57P01"), true)))).contains(
                " Once PostgreSQL is reachable, run `vamsa-migrate migrate` again: it continues from the last committed migration."
            )
        );
    }

    #[test]
    fn broken_connection_without_sqlstate_is_lost_and_at_commit_may_be_committed() {
        assert_eq!(apply_cause(&apply_error(None, true)), LOST);
        let mut at_commit = apply_error(None, true);
        at_commit.during_commit = true;
        assert_eq!(
            apply_cause(&at_commit),
            "The connection to PostgreSQL was lost during COMMIT: the migration may or may not be committed; `vamsa-migrate status` tells which, and a new run continues from there."
        );
    }

    #[test]
    fn the_user_documents_causes_are_what_a_person_reads() {
        // seed-migrations.md, "Step 2 -- Read the error message".
        let promised = [
            (
                "42P07",
                "the migration was partially applied before (perhaps after a crash)",
            ),
            (
                "42703",
                "a previous migration was skipped or failed silently",
            ),
            ("42501", "The database user lacks a permission"),
            ("53100", "ran out of storage space"),
        ];
        for (sqlstate, text) in promised {
            assert!(
                cause_of(sqlstate).contains(text),
                "{sqlstate}: {}",
                cause_of(sqlstate)
            );
        }
    }

    #[test]
    fn the_readme_failure_sample_reads_exactly_so() {
        let mut e = apply_error(Some("42P01"), false);
        e.backup = Some((
            PathBuf::from(
                "/srv/demo/backups/vamsa-20261129T222819.288Z-before-0000_create_persons.dump",
            ),
            "vamsa".into(),
        ));
        let report = report(&EngineError::Apply(Box::new(e)));
        assert_eq!(report.kind, ErrorKind::Apply);
        assert_eq!(report.sqlstate.as_deref(), Some("42P01"));
        assert_eq!(report.migration.as_deref(), Some("0001_add_media_tags.sql"));
        assert_eq!(report.cause.as_deref(), Some(MISSING));
        assert_eq!(
            report.hint,
            "Nothing of 0001_add_media_tags.sql was committed. 1 earlier migration of this run is committed and stays. Fix the cause and run `vamsa-migrate migrate` again.\n\
             To go back to where you were before this run:\n  \
             1. stop the application (e.g. systemctl stop vamsa)\n  \
             2. pg_restore --clean --if-exists -d vamsa /srv/demo/backups/vamsa-20261129T222819.288Z-before-0000_create_persons.dump\n  \
             3. roll the code back: git checkout HEAD~1, then rebuild and restart it"
        );
    }

    #[test]
    fn what_stays_counts_commits_and_no_transaction_statements() {
        let mut e = apply_error(Some("42601"), false);
        e.committed = 3;
        e.no_transaction_completed = Some(2);
        assert_eq!(
            what_stays(&e),
            "0001_add_media_tags.sql ran outside a transaction: its first 2 statement(s) stayed applied and it is not recorded; make its statements safe to re-run (IF NOT EXISTS) before retrying. 3 earlier migrations of this run are committed and stay."
        );
        e.all_rolled_back = true;
        assert_eq!(
            what_stays(&e),
            "The whole run was rolled back (transaction = \"all\"): the database is as it was before."
        );
    }

    fn connect_error(cause: ConnectCause) -> EngineError {
        EngineError::Db(DbError::Connect {
            target: "127.0.0.1:5432/vamsa".into(),
            cause,
            failure: failure(None, false),
        })
    }

    #[test]
    fn waiting_helps_only_when_the_server_may_come_back() {
        use ConnectCause::*;
        for cause in [
            PasswordRequired,
            PasswordWrong,
            RoleRefused,
            NoDatabase,
            TlsRefused,
            CertificateUntrusted,
            HostNameMismatch,
            TlsFiles,
        ] {
            assert!(is_permanent(&connect_error(cause)), "{cause:?}");
        }
        for cause in [
            Refused,
            NoSuchHost,
            NoSocket,
            TimedOut,
            Closed,
            TooManyConnections,
            NotAccepting,
        ] {
            assert!(!is_permanent(&connect_error(cause)), "{cause:?}");
        }
        assert!(is_permanent(&EngineError::Config(
            crate::config::ConfigError::NoDatabase
        )));
    }

    #[test]
    fn a_cancelled_statement_names_the_timeout_its_source_and_our_key() {
        let mut e = apply_error(Some("57014"), false);
        e.statement_timeout = Some(crate::db::TimeoutInForce {
            value: "1s".into(),
            source: "user".into(),
        });
        assert_eq!(
            apply_cause(&e),
            "The statement was cancelled: it ran longer than statement_timeout (1s, from the role's setting (ALTER ROLE ... SET statement_timeout)), or the run was stopped. Set statement_timeout in vamsa-migrate's configuration to change it for migrations (\"0\": no limit)."
        );
    }

    #[test]
    fn each_connection_failure_has_its_own_cause_and_next_step() {
        use ConnectCause::*;
        let all = [
            Refused,
            NoSuchHost,
            NoSocket,
            TimedOut,
            Closed,
            TlsRefused,
            TlsFailed,
            CertificateUntrusted,
            HostNameMismatch,
            TlsFiles,
            PasswordRequired,
            PasswordWrong,
            RoleRefused,
            NoDatabase,
            TooManyConnections,
            NotAccepting,
            Other,
        ];
        let causes: std::collections::BTreeSet<_> = all.iter().map(|c| connect_cause(*c)).collect();
        assert_eq!(causes.len(), all.len());
        let report = report(&connect_error(PasswordWrong));
        assert_eq!(report.cause.as_deref(), Some("PostgreSQL refused the password for that user (SQLSTATE 28P01), or the user does not exist."));
        assert_eq!(report.hint, "Correct the user or the password (database_password_file, PGPASSWORD, ~/.pgpass or database_url); nothing was changed.");
        assert_eq!(
            next_step(&connect_error(NoDatabase)),
            "Create the database (createdb -O <user> <database>), or correct its name in database_url; nothing was changed."
        );
    }

    #[test]
    fn invalid_indexes_are_named_with_their_drop_statement_not_if_not_exists() {
        let mut e = apply_error(Some("23505"), false);
        e.no_transaction_completed = Some(0);
        e.committed = 0;
        e.invalid_indexes = vec!["\"public\".\"users_email_uq\"".into()];
        assert_eq!(
            what_stays(&e),
            "0001_add_media_tags.sql ran outside a transaction: its first 0 statement(s) stayed applied and it is not recorded. It left INVALID index(es), which IF NOT EXISTS would skip; drop them before retrying:\n  DROP INDEX CONCURRENTLY \"public\".\"users_email_uq\";\n"
        );
    }

    #[test]
    fn a_migration_that_ended_our_transaction_never_reports_less_committed() {
        let mut e = apply_error(Some("42P01"), false);
        e.transaction_ended = Some(true);
        e.committed = 2;
        assert_eq!(
            what_stays(&e),
            "0001_add_media_tags.sql ended vamsa-migrate's transaction itself (COMMIT, ROLLBACK or the like): its statements before that point and the 2 earlier migration(s) of this run are committed; statements after that point ran on their own and may be committed. It is not recorded: check the database before running again, and move transaction control to a `-- vamsa-migrate: no-transaction` migration."
        );
        e.transaction_ended = Some(false);
        assert!(what_stays(&e).contains(": its statements before that point were rolled back; statements after that point ran on their own and may be committed."));
        let refused = EngineError::TransactionControl {
            file: "0001_x.sql".into(),
            line: 3,
            statement: "COMMIT".into(),
        };
        assert_eq!(refused.kind(), ErrorKind::Folder);
        assert!(
            next_step(&refused).contains("make `-- vamsa-migrate: no-transaction` its first line")
        );
    }

    #[test]
    fn a_missing_privilege_names_the_statement_to_run() {
        use crate::db::preflight::Problem;
        let e = EngineError::Db(DbError::Preflight(Box::new(crate::db::PreflightError {
            role: "vamsa".into(),
            table: "\"drizzle\".\"__drizzle_migrations\"".into(),
            schema: "drizzle".into(),
            problems: vec![
                Problem::NoCreateOnDatabase {
                    database: "vamsa".into(),
                },
                Problem::UnsafeForSuperuser {
                    owner: "app".into(),
                    triggers: vec!["t".into()],
                    rules: vec![],
                },
            ],
        })));
        assert_eq!(
            next_step(&e),
            "Nothing was changed (no backup was taken). As a superuser or the owner, run:\n  \
             CREATE SCHEMA \"drizzle\" AUTHORIZATION \"vamsa\";\n  \
             DROP TRIGGER \"t\" ON \"drizzle\".\"__drizzle_migrations\";\n  \
             ALTER TABLE \"drizzle\".\"__drizzle_migrations\" OWNER TO \"vamsa\";  -- after reading what the triggers did\n\
             then run again. README \"The database role\" lists the minimal grants."
        );
        assert!(!is_permanent(&e));
    }

    #[test]
    fn a_lost_connection_is_one_that_broke_under_a_query_or_migration() {
        assert!(connection_lost(&EngineError::Apply(Box::new(apply_error(
            None, true
        )))));
        assert!(!connection_lost(&EngineError::Apply(Box::new(
            apply_error(Some("42P01"), false)
        ))));
        let query = |lost| {
            EngineError::Db(DbError::Query {
                what: "reading the tracking table",
                failure: failure(None, lost),
            })
        };
        assert!(connection_lost(&query(true)));
        assert!(!connection_lost(&query(false)));
        // Connecting never had a connection to lose.
        assert!(!connection_lost(&connect_error(ConnectCause::Closed)));
    }

    #[test]
    fn only_a_lock_timeout_that_left_nothing_is_retried() {
        let f = |sqlstate, completed| StatementFailure {
            statement: Some(1),
            failure: failure(Some(sqlstate), false),
            completed_outside_transaction: completed,
            during_commit: false,
            transaction_ended: None,
            invalid_indexes: Vec::new(),
            xid: None,
        };
        assert!(is_retryable_lock_timeout(&f("55P03", 0)));
        assert!(!is_retryable_lock_timeout(&f("55P03", 1)));
        assert!(!is_retryable_lock_timeout(&f("57014", 0)));
    }

    #[test]
    fn a_bad_request_is_told_the_commands() {
        let r = daemon_report(ErrorKind::BadRequest, "unknown command \"x\"".into());
        assert_eq!(
            r.hint,
            "Send one JSON line such as {\"command\":\"apply\"} (commands: apply, dry-run, status, ping)."
        );
        assert_eq!(r.kind, ErrorKind::BadRequest);
    }

    #[test]
    fn a_database_newer_than_the_code_names_its_rows_and_both_ways_out() {
        let row = crate::plan::AppliedRow {
            id: 3,
            hash: "1f2e3d4c5b6a79880000".into(),
            created_at: Some(3000),
            applied_at: None,
            name: Some("0002_index".into()),
        };
        let r = report(&EngineError::NewerDatabase(NewerDatabase {
            rows: vec![row],
        }));
        assert_eq!(r.kind, ErrorKind::NewerDatabase);
        assert_eq!(
            r.message,
            "the database is newer than this code: the tracking table has 1 row that matches no migration on disk (applied by newer code); nothing was applied\n  row 3 (name 0002_index, created_at 3000, hash 1f2e3d4c5b6a)"
        );
        assert_eq!(
            r.hint,
            "Two ways out: restore the dump taken before they were applied (`vamsa-migrate backups` lists the dumps, `vamsa-migrate restore FILE` restores one), or check out (deploy) the newer code whose migrations folder has them. To run this code anyway, set unknown_rows = \"warn\"."
        );
    }
}
