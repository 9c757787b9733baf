//! Property tests of the classifier: whatever a client sends — random bytes, a soup of SQL
//! tokens, nesting far past [`MAX_NESTING`](super::parse::MAX_NESTING) — classifying it
//! returns (no panic, no hang), on a thread with a parser thread's stack as in the endpoint.
//! The cases are bounded (256 each) so the suite runs in seconds.

use proptest::prelude::*;

use super::parse::{PARSER_STACK, classify_text};

/// Classifies `sql` on a parser thread's stack; a panic fails the case.
fn classify_on_parser_stack(sql: String) -> usize {
    std::thread::Builder::new()
        .stack_size(PARSER_STACK)
        .spawn(move || classify_text(&sql).statements.len())
        .expect("parser thread")
        .join()
        .expect("the classifier panicked")
}

/// Words and punctuation the rules look at, to make random text reach deep into them.
const TOKENS: &[&str] = &[
    "SELECT",
    "CREATE",
    "UNIQUE",
    "INDEX",
    "ASYNC",
    "IF",
    "NOT",
    "EXISTS",
    "ON",
    "TABLE",
    "ALTER",
    "ADD",
    "COLUMN",
    "DROP",
    "TYPE",
    "BEGIN",
    "COMMIT",
    "ROLLBACK",
    "SET",
    "TRANSACTION",
    "ISOLATION",
    "LEVEL",
    "SERIALIZABLE",
    "SAVEPOINT",
    "TRUNCATE",
    "INSERT",
    "INTO",
    "VALUES",
    "UPDATE",
    "DELETE",
    "WHERE",
    "FROM",
    "USING",
    "btree",
    "DESC",
    "INCLUDE",
    "NULLS",
    "DISTINCT",
    "GENERATED",
    "ALWAYS",
    "AS",
    "IDENTITY",
    "CACHE",
    "serial",
    "money",
    "int",
    "text",
    "FUNCTION",
    "LANGUAGE",
    "plpgsql",
    "$$",
    "CALL",
    "sys.wait_for_job",
    "VALIDATE",
    "CONSTRAINT",
    "WITH",
    "RECURSIVE",
    "(",
    ")",
    "[",
    "]",
    ",",
    ";",
    ".",
    "'x'",
    "\"q\"",
    "1",
    "-1",
    "::",
    "*",
    "=",
    "--",
    "/*",
    "*/",
    "E'\\",
    "\0",
    "é",
    "\u{FEFF}",
];

fn token_soup() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(TOKENS), 0..60).prop_map(|t| t.join(" "))
}

/// `depth` levels of one kind of nesting around a statement, closed or not.
fn nested() -> impl Strategy<Value = String> {
    let open = prop::sample::select(&["(", "ARRAY[", "(SELECT ", "/*", "-(", "ROW("][..]);
    (open, 0usize..3000, any::<bool>()).prop_map(|(open, depth, close)| {
        let mut sql = String::from("SELECT ");
        for _ in 0..depth {
            sql.push_str(open);
        }
        sql.push('1');
        if close {
            let closing = match open {
                "ARRAY[" => "]",
                "/*" => "*/",
                "-(" | "(" | "(SELECT " | "ROW(" => ")",
                _ => "",
            };
            for _ in 0..depth {
                sql.push_str(closing);
            }
        }
        sql
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        classify_on_parser_stack(String::from_utf8_lossy(&bytes).into_owned());
    }

    #[test]
    fn token_soup_never_panics(sql in token_soup()) {
        classify_on_parser_stack(sql);
    }

    #[test]
    fn deep_nesting_never_panics(sql in nested()) {
        classify_on_parser_stack(sql);
    }
}
