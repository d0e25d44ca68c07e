//! A lexer for migration SQL, as far as vamsa-migrate must understand it: where the top-level
//! statements of a piece start, which words they start with, and what `CREATE INDEX` builds.
//! It follows PostgreSQL 15's lexical rules (`scan.l`): `--` and nested `/* */` comments,
//! `'...'` strings (with `''`, and backslash escapes in `E'...'`), `"..."` identifiers (with
//! `""`), and `$tag$...$tag$` dollar quotes; everything inside them is skipped. It never
//! allocates per token, so a 200 MB data migration is scanned in one pass.

/// One token outside comments and quotes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Token<'a> {
    /// A keyword or unquoted identifier, as written (compare with `eq_ignore_ascii_case`).
    Word(&'a str),
    /// A `"quoted"` identifier, without its quotes (`""` inside is left doubled).
    Quoted(&'a str),
    /// A string literal or dollar-quoted text (its content does not matter here).
    Literal,
    /// Any other character: `;`, `(`, `.`, operators, digits.
    Punct(char),
}

/// Tokens of `sql`, each with its byte offset.
pub(crate) struct Tokens<'a> {
    sql: &'a str,
    at: usize,
}

pub(crate) fn tokens(sql: &str) -> Tokens<'_> {
    Tokens { sql, at: 0 }
}

impl<'a> Iterator for Tokens<'a> {
    type Item = (usize, Token<'a>);

    fn next(&mut self) -> Option<(usize, Token<'a>)> {
        loop {
            let start = self.at;
            let rest = &self.sql[start..];
            let c = rest.chars().next()?;
            if c.is_whitespace() {
                self.at += c.len_utf8();
            } else if rest.starts_with("--") {
                self.at += rest.find('\n').unwrap_or(rest.len());
            } else if rest.starts_with("/*") {
                self.at += block_comment_len(rest);
            } else if c == '\'' {
                self.at += quoted_len(rest, b'\'', false);
                return Some((start, Token::Literal));
            } else if c == '"' {
                let len = quoted_len(rest, b'"', false);
                self.at += len;
                let inner = &rest[1..len.saturating_sub(1).max(1)];
                return Some((start, Token::Quoted(inner)));
            } else if let Some(len) = (c == '$').then(|| dollar_quote_len(rest)).flatten() {
                self.at += len;
                return Some((start, Token::Literal));
            } else if c.is_alphabetic() || c == '_' {
                let len = rest
                    .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == '$'))
                    .unwrap_or(rest.len());
                self.at += len;
                // `E'...'` (backslash escapes), `B'...'`, `X'...'`: the prefix belongs to the
                // literal.
                if rest[len..].starts_with('\'') {
                    let escapes = rest[..len].eq_ignore_ascii_case("e");
                    self.at += quoted_len(&rest[len..], b'\'', escapes);
                    return Some((start, Token::Literal));
                }
                return Some((start, Token::Word(&rest[..len])));
            } else {
                self.at += c.len_utf8();
                return Some((start, Token::Punct(c)));
            }
        }
    }
}

/// Length of the nested `/* ... */` comment at the start of `text` (to the end if unclosed).
fn block_comment_len(text: &str) -> usize {
    let bytes = text.as_bytes();
    let (mut depth, mut i) = (0usize, 0usize);
    while i < bytes.len() {
        if bytes[i..].starts_with(b"/*") {
            depth += 1;
            i += 2;
        } else if bytes[i..].starts_with(b"*/") {
            depth -= 1;
            i += 2;
            if depth == 0 {
                return i;
            }
        } else {
            i += 1;
        }
    }
    bytes.len()
}

/// Length of the quoted text at the start of `text` (quote char `quote`, doubled inside),
/// quotes included; with `escapes`, a backslash escapes the next byte.
fn quoted_len(text: &str, quote: u8, escapes: bool) -> usize {
    let bytes = text.as_bytes();
    let mut i = 1;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' if escapes => i += 2,
            b if b == quote && bytes.get(i + 1) == Some(&quote) => i += 2,
            b if b == quote => return i + 1,
            _ => i += 1,
        }
    }
    bytes.len()
}

/// Length of the `$tag$ ... $tag$` text at the start of `text`, or `None` when the `$` does
/// not open one (a parameter such as `$1`).
fn dollar_quote_len(text: &str) -> Option<usize> {
    let tag_end = 1 + text[1..].find(|c: char| !(c.is_alphanumeric() || c == '_'))?;
    if !text[tag_end..].starts_with('$') || text[1..].starts_with(|c: char| c.is_ascii_digit()) {
        return None;
    }
    let tag = &text[..=tag_end];
    let body = tag.len();
    Some(
        text[body..]
            .find(tag)
            .map_or(text.len(), |end| body + end + tag.len()),
    )
}

/// The first words of each top-level statement of `sql`, with the byte offset of the first:
/// what PostgreSQL would run as separate commands. `BEGIN ATOMIC ... END` bodies of SQL
/// functions (PostgreSQL 14+) are part of their `CREATE` statement.
pub(crate) fn statement_starts(sql: &str) -> Vec<(usize, &str)> {
    let mut starts = Vec::new();
    let mut at_start = true;
    let mut atomic_depth = 0usize;
    let mut previous: Option<&str> = None;
    for (offset, token) in tokens(sql) {
        match token {
            Token::Punct(';') if atomic_depth == 0 => at_start = true,
            Token::Word(word) => {
                if at_start {
                    starts.push((offset, word));
                    at_start = false;
                }
                let is = |w: &str| word.eq_ignore_ascii_case(w);
                let opens_atomic =
                    is("ATOMIC") && previous.is_some_and(|p| p.eq_ignore_ascii_case("BEGIN"));
                if opens_atomic || (atomic_depth > 0 && is("CASE")) {
                    atomic_depth += 1;
                } else if atomic_depth > 0 && is("END") {
                    atomic_depth -= 1;
                }
                previous = Some(word);
                continue;
            }
            _ => at_start = false,
        }
        previous = None;
    }
    starts
}

/// Statements that end or open a transaction, by their first word (PostgreSQL 15: `BEGIN`,
/// `START TRANSACTION`, `COMMIT`/`END` (also `AND CHAIN`, `COMMIT PREPARED`), `ROLLBACK`/`ABORT`
/// (also `TO SAVEPOINT`, `ROLLBACK PREPARED`), `SAVEPOINT`, `RELEASE`); `PREPARE` only as
/// `PREPARE TRANSACTION`, checked by the caller.
const TRANSACTION_CONTROL: [&str; 8] = [
    "BEGIN",
    "START",
    "COMMIT",
    "END",
    "ROLLBACK",
    "ABORT",
    "SAVEPOINT",
    "RELEASE",
];

/// The first top-level transaction-control statement of `sql`: its byte offset and its
/// first word (two words for `PREPARE TRANSACTION`).
pub(crate) fn transaction_control(sql: &str) -> Option<(usize, String)> {
    statement_starts(sql).into_iter().find_map(|(offset, word)| {
        if TRANSACTION_CONTROL.iter().any(|k| word.eq_ignore_ascii_case(k)) {
            return Some((offset, word.to_ascii_uppercase()));
        }
        let mut next = tokens(&sql[offset..]).skip(1);
        let prepare_transaction = word.eq_ignore_ascii_case("PREPARE")
            && matches!(next.next(), Some((_, Token::Word(w))) if w.eq_ignore_ascii_case("TRANSACTION"));
        prepare_transaction.then(|| (offset, "PREPARE TRANSACTION".to_string()))
    })
}

/// Objects that live outside the current database: shared by the whole server (roles,
/// tablespaces, databases themselves; PostgreSQL 15 "Shared objects": `pg_authid`,
/// `pg_database`, `pg_tablespace`, `pg_subscription`'s replication slot, `ALTER SYSTEM`).
const SHARED_OBJECTS: [&str; 6] = [
    "DATABASE",
    "ROLE",
    "USER",
    "GROUP",
    "TABLESPACE",
    "SUBSCRIPTION",
];

/// The first top-level statement of `sql` that acts outside the database it runs in: `CREATE`/
/// `ALTER`/`DROP` of a database, role (`USER`, `GROUP`), tablespace or subscription (not
/// `USER MAPPING`), `ALTER SYSTEM`, `COMMENT ON`/`SECURITY LABEL ... ON` one of those,
/// `REASSIGN OWNED`, `DROP OWNED`, `GRANT`/`REVOKE` of a role or on a database or tablespace.
/// Its byte offset and its first words. Run in a scratch copy, such a statement would change
/// the real server (a rehearsal must not run it). SQL run by `EXECUTE` inside a function or
/// `DO` body is not seen.
pub(crate) fn outside_the_database(sql: &str) -> Option<(usize, String)> {
    statement_starts(sql)
        .into_iter()
        .find_map(|(offset, first)| {
            let words: Vec<&str> = tokens(&sql[offset..])
                .take_while(|(_, t)| !matches!(t, Token::Punct(';')))
                .filter_map(|(_, t)| match t {
                    Token::Word(w) => Some(w),
                    _ => None,
                })
                .take(64)
                .collect();
            let is = |i: usize, k: &str| words.get(i).is_some_and(|w| w.eq_ignore_ascii_case(k));
            let shared =
                |i: usize| SHARED_OBJECTS.iter().any(|k| is(i, k)) && !is(i + 1, "MAPPING");
            let on_at = words.iter().position(|w| w.eq_ignore_ascii_case("ON"));
            let hit = match first.to_ascii_uppercase().as_str() {
                "CREATE" | "ALTER" | "DROP" => {
                    shared(1)
                        || (is(0, "ALTER") && is(1, "SYSTEM"))
                        || (is(0, "DROP") && is(1, "OWNED"))
                }
                "REASSIGN" => true,
                "COMMENT" | "SECURITY" => on_at.is_some_and(|i| shared(i + 1)),
                "GRANT" | "REVOKE" => {
                    on_at.is_none_or(|i| is(i + 1, "DATABASE") || is(i + 1, "TABLESPACE"))
                }
                _ => false,
            };
            hit.then(|| {
                (
                    offset,
                    words
                        .iter()
                        .take(2)
                        .map(|w| w.to_ascii_uppercase())
                        .collect::<Vec<_>>()
                        .join(" "),
                )
            })
        })
}

/// Every identifier of `sql` (keywords too: the lexer cannot tell them apart), as PostgreSQL
/// 15 stores it (`scan.l`, `downcase_identifier`): unquoted words folded to lower case (ASCII
/// only, as in a UTF-8 database), `"quoted"` ones as written with `""` undoubled. Comments,
/// string literals and dollar-quoted bodies are not read.
pub(crate) fn identifiers(sql: &str) -> std::collections::HashSet<String> {
    tokens(sql)
        .filter_map(|(_, t)| match t {
            Token::Word(w) => Some(w.to_ascii_lowercase()),
            Token::Quoted(q) => Some(q.replace("\"\"", "\"")),
            Token::Literal | Token::Punct(_) => None,
        })
        .collect()
}

/// An index a `CREATE INDEX` statement builds: its name and the table as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BuiltIndex {
    /// The index name as PostgreSQL stores it (unquoted names folded to lower case).
    pub name: String,
    /// The table, as written in the statement (quoted, possibly schema-qualified): for
    /// `to_regclass`.
    pub table: String,
}

/// The named indexes that the top-level `CREATE [UNIQUE] INDEX [CONCURRENTLY] [IF NOT
/// EXISTS] name ON [ONLY] table` statements of `sql` build.
pub(crate) fn built_indexes(sql: &str) -> Vec<BuiltIndex> {
    statement_starts(sql)
        .into_iter()
        .filter(|(_, word)| word.eq_ignore_ascii_case("CREATE"))
        .filter_map(|(offset, _)| built_index(&sql[offset..]))
        .collect()
}

/// Takes the next token if it is the keyword `w`; whether it was.
fn word(toks: &mut std::iter::Peekable<Tokens<'_>>, w: &str) -> bool {
    let hit = matches!(toks.peek(), Some((_, Token::Word(x))) if x.eq_ignore_ascii_case(w));
    if hit {
        toks.next();
    }
    hit
}

fn built_index(statement: &str) -> Option<BuiltIndex> {
    let mut toks = tokens(statement).peekable();
    word(&mut toks, "CREATE");
    word(&mut toks, "UNIQUE");
    if !word(&mut toks, "INDEX") {
        return None;
    }
    word(&mut toks, "CONCURRENTLY");
    if word(&mut toks, "IF") {
        word(&mut toks, "NOT");
        word(&mut toks, "EXISTS");
    }
    let name = match toks.next()? {
        (_, Token::Word(w)) if !w.eq_ignore_ascii_case("ON") => w.to_lowercase(),
        (_, Token::Quoted(q)) => q.replace("\"\"", "\""),
        _ => return None,
    };
    word(&mut toks, "ON");
    word(&mut toks, "ONLY");
    let (start, _) = *toks.peek()?;
    let mut end = start;
    for (o, t) in toks {
        match t {
            Token::Word(w) if !w.eq_ignore_ascii_case("USING") => end = o + w.len(),
            Token::Quoted(q) => end = o + q.len() + 2,
            Token::Punct('.') => end = o + 1,
            _ => break,
        }
    }
    Some(BuiltIndex {
        name,
        table: statement[start..end].to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn control(sql: &str) -> Option<String> {
        transaction_control(sql).map(|(_, w)| w)
    }

    #[test]
    fn identifiers_are_folded_as_postgresql_stores_them() {
        let ids = identifiers(
            "ALTER TABLE \"Persons\" ADD \"say \"\"hi\"\"\" text; -- nickname\n\
             CREATE INDEX Idx ON persons (lower(Name)); SELECT 'media', $b$ tags $b$;",
        );
        for id in ["Persons", "say \"hi\"", "idx", "persons", "name", "alter"] {
            assert!(ids.contains(id), "{id}: {ids:?}");
        }
        for absent in ["persons\"", "nickname", "media", "tags", "Idx"] {
            assert!(!ids.contains(absent), "{absent}: {ids:?}");
        }
    }

    #[test]
    fn transaction_control_in_any_spelling_is_found() {
        for (sql, word) in [
            ("CREATE TABLE a (id int);\nCOMMIT;\nBEGIN;", "COMMIT"),
            ("select 1; commit work", "COMMIT"),
            (
                "SELECT 1;\n  begin transaction isolation level serializable;",
                "BEGIN",
            ),
            ("Start Transaction;", "START"),
            ("END TRANSACTION", "END"),
            ("ROLLBACK AND CHAIN", "ROLLBACK"),
            ("abort", "ABORT"),
            ("SAVEPOINT s1; RELEASE s1", "SAVEPOINT"),
            (
                "/* a /* nested */ comment */ RELEASE SAVEPOINT s",
                "RELEASE",
            ),
            ("PREPARE TRANSACTION 'x'", "PREPARE TRANSACTION"),
            ("COMMIT PREPARED 'x'", "COMMIT"),
        ] {
            assert_eq!(control(sql).as_deref(), Some(word), "{sql}");
        }
    }

    #[test]
    fn quoted_commented_and_function_bodies_are_not_transaction_control() {
        for sql in [
            "SELECT 'COMMIT'; SELECT E'it\\'s; COMMIT';",
            "-- COMMIT;\nSELECT 1;",
            "/* outer /* inner */ ; COMMIT; */ SELECT 1",
            "DO $$ BEGIN PERFORM 1; COMMIT; END $$;",
            "CREATE FUNCTION f() RETURNS int AS $body$ BEGIN; END; $body$ LANGUAGE sql;",
            "CREATE FUNCTION g() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT CASE WHEN true THEN 1 END; SELECT 2; END;",
            "SELECT \"commit\" FROM t; PREPARE q AS SELECT $1::int;",
            "ALTER TABLE t ADD COLUMN \"begin\" int; UPDATE t SET x = 1 WHERE y = $1",
        ] {
            assert_eq!(control(sql), None, "{sql}");
        }
    }

    #[test]
    fn the_offset_is_the_keyword_s() {
        let sql = "SELECT 1;\n-- why\n  COMMIT;";
        let (offset, _) = transaction_control(sql).unwrap();
        assert!(sql[offset..].starts_with("COMMIT"));
    }

    #[test]
    fn built_indexes_are_named_with_their_table() {
        let sql = "CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS \"users_email_uq\" ON \"users\" (\"email\");\n\
                   create index concurrently Items_N on only app.items using btree (n);\n\
                   CREATE INDEX ON t (x); CREATE TABLE i (x int);";
        assert_eq!(
            built_indexes(sql),
            [
                BuiltIndex {
                    name: "users_email_uq".into(),
                    table: "\"users\"".into()
                },
                BuiltIndex {
                    name: "items_n".into(),
                    table: "app.items".into()
                },
            ]
        );
    }

    #[test]
    fn statements_acting_outside_the_database_are_found() {
        for (sql, found) in [
            ("CREATE DATABASE evil;", Some("CREATE DATABASE")),
            (
                "ALTER DATABASE vamsa SET work_mem = '7MB';",
                Some("ALTER DATABASE"),
            ),
            ("create role app login password 'x';", Some("CREATE ROLE")),
            ("ALTER USER app PASSWORD 'y';", Some("ALTER USER")),
            ("DROP TABLESPACE t;", Some("DROP TABLESPACE")),
            ("ALTER SYSTEM SET work_mem = '1MB';", Some("ALTER SYSTEM")),
            ("COMMENT ON DATABASE vamsa IS 'x';", Some("COMMENT ON")),
            (
                "SECURITY LABEL FOR p ON ROLE app IS 'x';",
                Some("SECURITY LABEL"),
            ),
            ("GRANT app TO other;", Some("GRANT APP")),
            (
                "GRANT CONNECT ON DATABASE vamsa TO app;",
                Some("GRANT CONNECT"),
            ),
            ("REASSIGN OWNED BY a TO b;", Some("REASSIGN OWNED")),
            ("DROP OWNED BY a;", Some("DROP OWNED")),
            (
                "CREATE TABLE t (id int);\nCREATE DATABASE x;",
                Some("CREATE DATABASE"),
            ),
            ("GRANT SELECT ON TABLE persons TO app;", None),
            ("CREATE USER MAPPING FOR app SERVER s;", None),
            ("COMMENT ON TABLE persons IS 'CREATE DATABASE x';", None),
            ("CREATE TABLE role (database text);", None),
            ("-- CREATE ROLE x;\nSELECT 1;", None),
            ("DO $$ BEGIN CREATE ROLE x; END $$;", None),
        ] {
            assert_eq!(
                outside_the_database(sql).map(|(_, w)| w),
                found.map(str::to_string),
                "{sql}"
            );
        }
        assert_eq!(
            outside_the_database("SELECT 1;\nCREATE DATABASE x;").map(|(o, _)| o),
            Some(10)
        );
    }
}
