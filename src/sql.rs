//! Splitting SQL text into statements, running them, and naming what they did.
//!
//! Statements are split on `;` outside quotes, dollar quotes and comments, and each runs
//! with the simple protocol, so every column type arrives as text. tokio-postgres reports a
//! statement's row count but not its command tag, so the tag (`INSERT 0 3`, `CREATE TABLE`)
//! is rebuilt from the statement's leading keywords and that count.

use std::sync::Arc;

use tokio_postgres::error::SqlState;
use tokio_postgres::types::Type;
use tokio_postgres::{Client, SimpleQueryMessage};

/// Splits SQL text into statements, dropping empty ones and comment-only ones.
pub fn split(sql: &str) -> Vec<String> {
    let bytes = sql.as_bytes();
    let mut statements = Vec::new();
    let mut start = 0;
    let mut has_code = false;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'\'' | b'"' => {
                has_code = true;
                i = skip_quoted(bytes, i, b);
                continue;
            }
            b'-' if bytes.get(i + 1) == Some(&b'-') => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
                continue;
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                i = skip_block_comment(bytes, i);
                continue;
            }
            b'$' => {
                has_code = true;
                if let Some(end) = skip_dollar_quoted(bytes, i) {
                    i = end;
                    continue;
                }
            }
            b';' => {
                if has_code {
                    statements.push(sql[start..i].trim().to_string());
                }
                start = i + 1;
                has_code = false;
            }
            b if !b.is_ascii_whitespace() => has_code = true,
            _ => {}
        }
        i += 1;
    }
    if has_code {
        statements.push(sql[start..].trim().to_string());
    }
    statements
}

fn skip_quoted(bytes: &[u8], open: usize, quote: u8) -> usize {
    let mut i = open + 1;
    while i < bytes.len() {
        if bytes[i] == quote {
            if bytes.get(i + 1) == Some(&quote) {
                i += 2;
                continue;
            }
            return i + 1;
        }
        // E'...' strings may escape a quote with a backslash.
        if bytes[i] == b'\\'
            && quote == b'\''
            && open > 0
            && bytes[open - 1].eq_ignore_ascii_case(&b'e')
        {
            i += 2;
            continue;
        }
        i += 1;
    }
    bytes.len()
}

fn skip_block_comment(bytes: &[u8], open: usize) -> usize {
    let mut depth = 0;
    let mut i = open;
    while i + 1 < bytes.len() {
        if bytes[i] == b'/' && bytes[i + 1] == b'*' {
            depth += 1;
            i += 2;
        } else if bytes[i] == b'*' && bytes[i + 1] == b'/' {
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

fn skip_dollar_quoted(bytes: &[u8], open: usize) -> Option<usize> {
    // $tag$ ... $tag$ where tag is empty or an identifier not starting with a digit.
    if open > 0 && (bytes[open - 1].is_ascii_alphanumeric() || bytes[open - 1] == b'_') {
        return None;
    }
    let mut j = open + 1;
    while j < bytes.len() && (bytes[j].is_ascii_alphanumeric() || bytes[j] == b'_') {
        j += 1;
    }
    if j >= bytes.len() || bytes[j] != b'$' || bytes.get(open + 1).is_some_and(u8::is_ascii_digit) {
        return None;
    }
    let tag = &bytes[open..=j];
    let body = j + 1;
    let end = bytes[body..]
        .windows(tag.len())
        .position(|w| w == tag)
        .map_or(bytes.len(), |p| body + p + tag.len());
    Some(end)
}

/// The leading keywords of a statement, upper-cased, skipping comments.
fn keywords(statement: &str, count: usize) -> Vec<String> {
    let mut words = Vec::new();
    let mut rest = statement;
    while words.len() < count {
        rest = rest.trim_start();
        if let Some(after) = rest.strip_prefix("--") {
            rest = after.split_once('\n').map_or("", |(_, r)| r);
            continue;
        }
        if rest.starts_with("/*") {
            let end = skip_block_comment(rest.as_bytes(), 0);
            rest = &rest[end..];
            continue;
        }
        let word: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if word.is_empty() {
            break;
        }
        rest = &rest[word.len()..];
        words.push(word.to_ascii_uppercase());
    }
    words
}

/// Rebuilds the command tag psql would print for a statement and its row count.
pub fn command_tag(statement: &str, rows: u64, returned_rows: bool) -> String {
    let words = keywords(statement, 6);
    let first = words.first().map_or("", String::as_str);
    match first {
        _ if returned_rows && !matches!(first, "INSERT" | "UPDATE" | "DELETE" | "MERGE") => {
            format!("SELECT {rows}")
        }
        "SELECT" | "VALUES" | "TABLE" | "WITH" => format!("SELECT {rows}"),
        "INSERT" => format!("INSERT 0 {rows}"),
        "UPDATE" | "DELETE" | "MERGE" | "COPY" | "FETCH" | "MOVE" => format!("{first} {rows}"),
        "BEGIN" | "START" => "BEGIN".to_string(),
        "COMMIT" | "END" => "COMMIT".to_string(),
        "ROLLBACK" | "ABORT" => "ROLLBACK".to_string(),
        "CREATE" | "DROP" | "ALTER" => {
            let object: Vec<&str> = words[1..]
                .iter()
                .map(String::as_str)
                .filter(|w| {
                    !matches!(
                        *w,
                        "OR" | "REPLACE" | "UNIQUE" | "ASYNC" | "IF" | "NOT" | "EXISTS"
                    )
                })
                .take(1)
                .collect();
            match object.first() {
                Some(object) => format!("{first} {object}"),
                None => first.to_string(),
            }
        }
        "" => String::new(),
        other => other.to_string(),
    }
}

/// How a column's text is typed in JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JsonKind {
    /// A JSON string.
    Text,
    /// A JSON number written with the server's digits: an integer or a numeric (NaN and
    /// ±Infinity, which JSON has no number for, stay strings).
    Number,
    /// A JSON number from float4/float8, written with the server's shortest round-trip
    /// text; NaN and ±Infinity stay strings.
    Float,
    /// `true` / `false`.
    Bool,
    /// Embedded JSON (json, jsonb), written as the server's text.
    Json,
}

impl JsonKind {
    /// The kind for a PostgreSQL type.
    pub fn of(ty: &Type) -> JsonKind {
        match *ty {
            Type::BOOL => JsonKind::Bool,
            Type::INT2 | Type::INT4 | Type::INT8 | Type::OID | Type::NUMERIC => JsonKind::Number,
            Type::FLOAT4 | Type::FLOAT8 => JsonKind::Float,
            Type::JSON | Type::JSONB => JsonKind::Json,
            _ => JsonKind::Text,
        }
    }
}

/// One statement's outcome.
#[derive(Debug, Clone, Default)]
pub struct StatementResult {
    /// Column names (empty if the statement returned no rows).
    pub columns: Vec<String>,
    /// JSON typing of each column (filled when asked for).
    pub kinds: Vec<JsonKind>,
    /// Rows of text values; `None` is NULL.
    pub rows: Vec<Vec<Option<String>>>,
    /// Rebuilt command tag.
    pub tag: String,
    /// Whether a row description came back (a row-returning statement).
    pub returned_rows: bool,
}

/// Runs one statement with the simple protocol. With `typed`, the statement is also
/// described, pipelined ahead of the run in the same round trip, so JSON can type its
/// columns.
pub async fn execute(
    client: &Client,
    statement: &str,
    typed: bool,
) -> Result<StatementResult, tokio_postgres::Error> {
    let started = std::time::Instant::now();
    // For JSON the statement is also described, for its column types. The Describe goes
    // out pipelined just ahead of the run, so both take one round trip.
    let (described, ran) = if typed {
        let (described, ran) =
            futures_util::future::join(client.prepare(statement), client.simple_query(statement))
                .await;
        (Some(described), ran)
    } else {
        (None, client.simple_query(statement).await)
    };
    let (messages, described) = match (ran, described) {
        (Ok(messages), described) => (messages, described.and_then(Result::ok)),
        // Inside a transaction block a statement that cannot even be described aborts the
        // block, and the run then only reports that (25P02): the real error is the
        // Describe's.
        (Err(run), Some(Err(describe)))
            if run.code() == Some(&SqlState::IN_FAILED_SQL_TRANSACTION)
                && describe.as_db_error().is_some() =>
        {
            return Err(describe);
        }
        (Err(run), _) => return Err(run),
    };
    let mut kinds: Vec<JsonKind> = described.map_or_else(Vec::new, |prepared| {
        prepared
            .columns()
            .iter()
            .map(|c| JsonKind::of(c.type_()))
            .collect()
    });
    let mut result = StatementResult::default();
    let mut count = 0;
    let mut columns: Option<Arc<[tokio_postgres::SimpleColumn]>> = None;
    for message in messages {
        match message {
            SimpleQueryMessage::RowDescription(desc) => columns = Some(desc),
            SimpleQueryMessage::Row(row) => {
                result.rows.push(
                    (0..row.len())
                        .map(|i| row.get(i).map(str::to_string))
                        .collect(),
                );
            }
            SimpleQueryMessage::CommandComplete(n) => count = n,
            _ => {}
        }
    }
    if let Some(columns) = columns {
        result.returned_rows = true;
        result.columns = columns.iter().map(|c| c.name().to_string()).collect();
    }
    if kinds.len() != result.columns.len() {
        kinds = vec![JsonKind::Text; result.columns.len()];
    }
    result.kinds = kinds;
    result.tag = command_tag(statement, count, result.returned_rows);
    tracing::info!(
        query_ms = (started.elapsed().as_secs_f64() * 1e6).round() / 1e3,
        rows = result.rows.len(),
        "{}",
        result.tag
    );
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_on_semicolons_outside_quotes_and_comments() {
        let sql = "select 'a;b'; select \"x;y\" from t -- c;d\n; /* e; /* nested; */ f; */ select $$g;h$$;\nselect $tag$ i; $$ j $tag$; select E'k\\';l'";
        let got = split(sql);
        assert_eq!(
            got,
            vec![
                "select 'a;b'",
                "select \"x;y\" from t -- c;d",
                "/* e; /* nested; */ f; */ select $$g;h$$",
                "select $tag$ i; $$ j $tag$",
                "select E'k\\';l'",
            ]
        );
    }

    #[test]
    fn drops_empty_and_comment_only_statements() {
        assert_eq!(
            split(" ; ;\n-- only a comment\n;select 1;;"),
            vec!["select 1"]
        );
        assert!(split("").is_empty());
        assert!(split("/* unterminated").is_empty());
        assert_eq!(split("select $1"), vec!["select $1"]);
    }

    proptest::proptest! {
        /// Any text, weighted towards the characters the splitter cares about: no panic,
        /// and every statement is a non-empty, trimmed piece of the input.
        #[test]
        fn splitting_any_text_gives_pieces_of_it(
            text in "[;'\"$a-zE_ \\/*\n\t\u{e9}\u{20ac}\u{1f600}-]{0,120}|\\PC{0,120}"
        ) {
            for statement in split(&text) {
                proptest::prop_assert!(!statement.is_empty());
                proptest::prop_assert_eq!(statement.trim(), statement.as_str());
                proptest::prop_assert!(text.contains(statement.as_str()));
            }
        }
    }

    #[test]
    fn never_panics_on_odd_input() {
        for text in [
            "'",
            "\"",
            "$",
            "$a",
            "$a$",
            "E'\\",
            "/*",
            "--",
            "$$;",
            "é;ü$ä$;",
        ] {
            let _ = split(text);
        }
    }

    #[test]
    fn command_tags_follow_psql() {
        assert_eq!(command_tag("select 1", 1, true), "SELECT 1");
        assert_eq!(
            command_tag("insert into t values (1),(2)", 2, false),
            "INSERT 0 2"
        );
        assert_eq!(command_tag("  update t set a = 1", 5, false), "UPDATE 5");
        assert_eq!(command_tag("delete from t", 0, false), "DELETE 0");
        assert_eq!(
            command_tag("create table t (a int)", 0, false),
            "CREATE TABLE"
        );
        assert_eq!(
            command_tag("create unique index async i on t(a)", 0, false),
            "CREATE INDEX"
        );
        assert_eq!(
            command_tag("drop table if exists t", 0, false),
            "DROP TABLE"
        );
        assert_eq!(command_tag("-- c\nbegin", 0, false), "BEGIN");
        assert_eq!(
            command_tag("insert into t values (1) returning a", 1, true),
            "INSERT 0 1"
        );
    }
}
