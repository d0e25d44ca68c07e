//! One-line summaries of SQL statements for the dry run: `CREATE TABLE "media_tags" (...)`.

/// Longest summary before it is cut with ` ...`.
const MAX_CHARS: usize = 96;

/// Drops comments, folds whitespace, shows each top-level parenthesised body as `(...)`, drops
/// the final `;`, and cuts a long statement at a word boundary with ` ...`.
pub fn summarize(sql: &str) -> String {
    let mut out = String::new();
    let mut depth = 0usize;
    let mut quote: Option<char> = None;
    let mut pending_space = false;
    'lines: for line in sql.lines() {
        let code = strip_line_comment(line);
        for c in code.chars() {
            // More than MAX_CHARS characters are known to be there: the summary will be cut
            // anyway, so the rest of a long statement need not be read.
            if out.len() > MAX_CHARS * 4 {
                break 'lines;
            }
            if let Some(q) = quote {
                if depth == 0 {
                    out.push(c);
                }
                if c == q {
                    quote = None;
                }
                continue;
            }
            match c {
                '(' => {
                    if depth == 0 {
                        flush_space(&mut out, &mut pending_space);
                        out.push_str("(...)");
                    }
                    depth += 1;
                }
                ')' => depth = depth.saturating_sub(1),
                _ if depth > 0 => {
                    if c == '\'' || c == '"' {
                        quote = Some(c);
                    }
                }
                c if c.is_whitespace() => pending_space = !out.is_empty(),
                c => {
                    flush_space(&mut out, &mut pending_space);
                    if c == '\'' || c == '"' {
                        quote = Some(c);
                    }
                    out.push(c);
                }
            }
        }
        pending_space = !out.is_empty();
    }
    let out = out.trim_end().trim_end_matches(';').trim_end();
    cut(out)
}

/// `summary` with the text of every string constant replaced by `…`: `'…'`, `E'…'`, and
/// dollar-quoted `$tag$…$tag$` (PostgreSQL 15 docs, 4.1.2 "Constants"); identifiers in double
/// quotes stay. What a peer that may not apply sees of a statement (a role's `PASSWORD '...'`).
/// A constant the summary cut is masked to the end.
pub fn without_literals(summary: &str) -> String {
    let mut out = String::with_capacity(summary.len());
    let mut rest = summary;
    while let Some(i) = rest.find(['\'', '"', '$', '/']) {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        let (kept, skipped) = match tail.as_bytes()[0] {
            b'"' => quoted_identifier(tail),
            // A block comment is masked whole: a quote inside it opens no constant, and its
            // text may hold anything.
            b'/' if tail.starts_with("/*") => (String::from("/*…*/"), block_comment(tail)),
            b'/' => (String::from("/"), 1),
            // E'...' takes backslash escapes (PostgreSQL 15 docs, 4.1.2.2).
            b'\'' => {
                let escapes = out.ends_with(['E', 'e']);
                (String::from("'…'"), closing(tail, '\'', escapes))
            }
            _ => match dollar_tag(tail) {
                Some(tag) => dollar_quoted(tail, tag),
                None => (String::from("$"), 1),
            },
        };
        out.push_str(&kept);
        rest = &tail[skipped.min(tail.len())..];
    }
    out.push_str(rest);
    out
}

/// The length of the block comment `tail` starts with; nested ones count, as in PostgreSQL
/// (15 docs, 4.1.5); to the end when unterminated.
fn block_comment(tail: &str) -> usize {
    let bytes = tail.as_bytes();
    let (mut depth, mut i) = (0usize, 0usize);
    while i + 1 < bytes.len() {
        match (bytes[i], bytes[i + 1]) {
            (b'/', b'*') => {
                depth += 1;
                i += 2;
            }
            (b'*', b'/') => {
                depth -= 1;
                i += 2;
                if depth == 0 {
                    return i;
                }
            }
            _ => i += 1,
        }
    }
    tail.len()
}

/// `"ident"` (with `""` inside) kept as it is.
fn quoted_identifier(tail: &str) -> (String, usize) {
    let len = closing(tail, '"', false);
    (tail[..len].to_string(), len)
}

/// The length of the quoted text `tail` starts with, a doubled quote inside (and, with
/// `escapes`, a backslash and the character after it); to the end when unterminated.
fn closing(tail: &str, quote: char, escapes: bool) -> usize {
    let mut chars = tail.char_indices().skip(1).peekable();
    while let Some((i, c)) = chars.next() {
        if escapes && c == '\\' {
            chars.next();
            continue;
        }
        if c == quote {
            if chars.peek().is_some_and(|&(_, next)| next == quote) {
                chars.next();
                continue;
            }
            return i + c.len_utf8();
        }
    }
    tail.len()
}

/// The `$tag$` opening `tail`, if it is one (`$1` parameters are not).
fn dollar_tag(tail: &str) -> Option<&str> {
    let end = tail[1..].find('$')? + 2;
    let tag = &tail[..end];
    let inner = &tag[1..end - 1];
    let valid = inner.chars().all(|c| c.is_alphanumeric() || c == '_')
        && !inner.starts_with(|c: char| c.is_ascii_digit());
    valid.then_some(tag)
}

fn dollar_quoted(tail: &str, tag: &str) -> (String, usize) {
    let body = &tail[tag.len()..];
    let len = body
        .find(tag)
        .map_or(tail.len(), |j| tag.len() + j + tag.len());
    (format!("{tag}…{tag}"), len)
}

fn flush_space(out: &mut String, pending: &mut bool) {
    if *pending && !out.is_empty() {
        out.push(' ');
    }
    *pending = false;
}

/// The part of a line before a `--` comment that is outside quotes.
fn strip_line_comment(line: &str) -> &str {
    let mut quote: Option<char> = None;
    let mut prev = '\0';
    for (i, c) in line.char_indices() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '\'' || c == '"' => quote = Some(c),
            None if c == '-' && prev == '-' => return &line[..i - 1],
            None => {}
        }
        prev = c;
    }
    line
}

fn cut(s: &str) -> String {
    if s.chars().count() <= MAX_CHARS {
        return s.to_string();
    }
    let head: String = s.chars().take(MAX_CHARS).collect();
    let at = head.rfind(' ').unwrap_or(head.len());
    format!("{} ...", head[..at].trim_end())
}

#[cfg(test)]
mod tests {
    use super::{summarize, without_literals};

    #[test]
    fn a_quote_inside_a_block_comment_opens_no_constant() {
        let masked = without_literals("COMMENT ON TABLE t IS 'x' /* ' /* ' */ */ || 'S7SECRET'");
        assert!(!masked.contains("S7SECRET"), "{masked}");
        assert_eq!(masked, "COMMENT ON TABLE t IS '…' /*…*/ || '…'");
        assert_eq!(without_literals("a / b /* 'x"), "a / b /*…*/");
    }

    #[test]
    fn literals_are_masked_for_outsiders() {
        for (summary, masked) in [
            (
                "CREATE ROLE app LOGIN PASSWORD 'hun''ter2'",
                "CREATE ROLE app LOGIN PASSWORD '…'",
            ),
            (
                "UPDATE \"User\" SET \"note\" = E'a\\'b' WHERE \"id\" = $1",
                "UPDATE \"User\" SET \"note\" = E'…' WHERE \"id\" = $1",
            ),
            (
                "DO $body$ BEGIN PERFORM 'x'; END $body$",
                "DO $body$…$body$",
            ),
            (
                "ALTER ROLE app PASSWORD 'cut by the summ ...",
                "ALTER ROLE app PASSWORD '…'",
            ),
            ("CREATE TABLE \"it's\" (...)", "CREATE TABLE \"it's\" (...)"),
        ] {
            assert_eq!(without_literals(summary), masked, "{summary}");
        }
    }

    #[test]
    fn create_table_body_is_folded() {
        assert_eq!(
            summarize("CREATE TABLE \"media_tags\" (\n\t\"id\" text PRIMARY KEY NOT NULL,\n\t\"label\" text\n);\n"),
            "CREATE TABLE \"media_tags\" (...)"
        );
    }

    #[test]
    fn long_statement_is_cut_at_a_word() {
        let s = summarize("ALTER TABLE \"media\" ADD COLUMN \"tag_id\" integer NOT NULL DEFAULT 0 REFERENCES \"public\".\"tags\"(\"id\") ON DELETE cascade ON UPDATE no action;");
        assert!(
            s.starts_with("ALTER TABLE \"media\" ADD COLUMN \"tag_id\""),
            "{s}"
        );
        assert!(s.ends_with(" ..."), "{s}");
        assert!(s.chars().count() <= 100, "{s}");
    }

    #[test]
    fn comments_and_leading_blank_lines_are_dropped() {
        assert_eq!(
            summarize("\n-- grandfather users\nUPDATE \"User\" SET \"x\" = true; -- done\n"),
            "UPDATE \"User\" SET \"x\" = true"
        );
    }

    #[test]
    fn parentheses_inside_quotes_do_not_confuse() {
        assert_eq!(
            summarize("COMMENT ON TABLE t IS 'a (b'; "),
            "COMMENT ON TABLE t IS 'a (b'"
        );
    }
}
