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
    use super::summarize;

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
