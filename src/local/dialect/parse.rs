//! Statement text → DSQL's verdict on each statement in it, with PostgreSQL 16's own parser
//! (libpg_query, through the `pg_query` crate), bounded and cached.
//!
//! **Bounds.** libpg_query ships PostgreSQL's stack-depth guard disabled, so a deeply nested
//! statement would overflow the stack and take the endpoint down. Before parsing, the
//! statement's tokens (a flat scan) give an upper estimate of its nesting; past
//! [`MAX_NESTING`] the statement is refused as PostgreSQL refuses one too deep for its
//! stack (54001 `stack depth limit exceeded`). Parses run on [`PARSER_THREADS`] threads of
//! their own with [`PARSER_STACK`] stacks, and texts over [`BIG_TEXT`] on one more thread
//! of their own, so a big statement neither stalls the runtime nor holds up the ordinary
//! statements of other sessions; parsing is linear in the text (the tree is searched
//! through libpg_query's JSON, not the `pg_query` crate's quadratic walk); the text itself is bounded by the relay's
//! message limit. Verdicts are cached per text, at most [`CACHE_ENTRIES`] texts of at most
//! [`CACHE_MAX_TEXT`] bytes each (the cache is emptied when full).

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use pg_query::protobuf::{ScanToken, Token};
use tokio::sync::oneshot;

use super::ffi;
use super::iam::{IamOp, IamStatement};
use super::rules::{self, Kind, Refusal, TokenFacts, Verdict};

/// Most nesting (estimated from tokens) a statement may have.
pub(crate) const MAX_NESTING: usize = 1000;
/// Parser threads.
pub(crate) const PARSER_THREADS: usize = 2;
/// Stack of a parser thread: ample for [`MAX_NESTING`] even in a debug build (at most about
/// 64 KiB of stack per nesting level there, so 4 times the limit; reserved, not committed).
pub(crate) const PARSER_STACK: usize = 256 << 20;
/// Texts whose verdicts are kept.
pub(crate) const CACHE_ENTRIES: usize = 2048;
/// Longest text whose verdict is kept.
pub(crate) const CACHE_MAX_TEXT: usize = 8192;

/// One statement of a text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Statement {
    /// Byte offset where it starts in [`Classified::text`].
    pub(crate) start: usize,
    /// DSQL's verdict.
    pub(crate) verdict: Verdict,
    /// It was a `CREATE INDEX ASYNC` / `ALTER TABLE ASYNC`.
    pub(crate) is_async: bool,
    /// It was an `AWS IAM GRANT` / `AWS IAM REVOKE` (run as [`IamStatement::call`]).
    pub(crate) iam: Option<IamCall>,
    /// It ends its transaction `AND CHAIN`: the next one begins at once (the parse tree's
    /// `TransactionStmt.chain`).
    pub(crate) chains: bool,
    /// It calls a function that may be the client's own (a SQL function may modify rows):
    /// the row check follows it as it follows DML ([`super::rows`]).
    pub(crate) user_code: bool,
}

/// Where an `AWS IAM` statement's call stands in its statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct IamCall {
    pub(crate) op: IamOp,
    /// Byte offsets of the call, from the statement's start.
    pub(crate) from: usize,
    pub(crate) to: usize,
}

/// Whether `text` holds nothing but comments, blanks and `;`.
fn only_comments(text: &str) -> bool {
    pg_query::scan(text).is_ok_and(|scan| {
        scan.tokens
            .iter()
            .all(|t| matches!(tok(t), Token::SqlComment | Token::CComment | Token::Ascii59))
    })
}

/// A text, classified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Classified {
    /// The text PostgreSQL is to run (`ASYNC` removed); `None`: the client's text as sent.
    pub(crate) rewritten: Option<String>,
    /// Its statements, in order. Empty when it does not parse: PostgreSQL then answers it
    /// with its own syntax error.
    pub(crate) statements: Vec<Statement>,
}

impl Classified {
    fn refused(r: Refusal) -> Self {
        Self {
            rewritten: None,
            statements: vec![Statement {
                start: 0,
                verdict: Err(r),
                is_async: false,
                iam: None,
                chains: false,
                user_code: false,
            }],
        }
    }
}

fn tok(t: &ScanToken) -> Token {
    Token::from_i32(t.token).unwrap_or(Token::Nul)
}

/// Tokens that never deepen the tree: names, constants, parameters and `.`. Every other
/// token (keywords, operators) may nest once more: a list of the ones that do would miss
/// some (`ISNULL`, `JOIN`, ... build left-deep trees without a bracket or operator).
fn is_flat(t: Token) -> bool {
    use Token as T;
    matches!(
        t,
        T::Ident
            | T::Uident
            | T::Fconst
            | T::Sconst
            | T::Usconst
            | T::Bconst
            | T::Xconst
            | T::Iconst
            | T::Param
            | T::Ascii46
            | T::SqlComment
            | T::CComment
    )
}

/// A bracket level of [`nesting_estimate`]: the chain since the last comma, and the set
/// operations, whose left-deep chain a comma (in a select list) does not end.
#[derive(Default)]
struct Level {
    chain: usize,
    set_ops: usize,
}

/// An upper estimate of the parse tree's nesting: brackets open a level, and within a level
/// every token but names and constants may nest once more until a comma starts a sibling
/// (set operations chain across commas too).
pub(crate) fn nesting_estimate(tokens: &[ScanToken]) -> usize {
    let mut levels: Vec<Level> = vec![Level::default()];
    // The levels' chains and set operations, summed as they change (not per token).
    let mut counted = 0;
    let mut worst = 0;
    for t in tokens {
        let top = levels.len() - 1;
        match tok(t) {
            Token::Ascii40 | Token::Ascii91 => levels.push(Level::default()),
            Token::Ascii41 | Token::Ascii93 if levels.len() > 1 => {
                let closed = levels.pop().expect("more than one");
                counted -= closed.chain + closed.set_ops;
            }
            Token::Ascii44 => {
                counted -= levels[top].chain;
                levels[top].chain = 0;
            }
            Token::Ascii59 => {
                levels = vec![Level::default()];
                counted = 0;
            }
            Token::Union | Token::Intersect | Token::Except => {
                levels[top].set_ops += 1;
                counted += 1;
            }
            t if is_flat(t) => {}
            _ => {
                levels[top].chain += 1;
                counted += 1;
            }
        }
        worst = worst.max(levels.len() + counted);
    }
    worst
}

/// Where in the text facts hold that the tree does not show, and the `ASYNC` words to drop.
#[derive(Debug, Default)]
struct Facts {
    /// Byte ranges of `ASYNC` keywords in the original text.
    async_words: Vec<(usize, usize)>,
    /// `AWS IAM` statements, which PostgreSQL's parser does not know.
    iam: Vec<IamStatement>,
    /// Original offsets of `CREATE INDEX ... USING` statements.
    index_using: Vec<usize>,
    /// Original offsets of `TABLESAMPLE` keywords.
    tablesample: Vec<usize>,
    /// Original offsets of words that may name a refused function, and of `FOR SHARE` /
    /// `FOR NO KEY UPDATE`: their statements' trees are searched (the rest need not be).
    suspects: Vec<usize>,
    /// Original offsets of calls of functions that may be the client's own.
    calls: Vec<usize>,
}

/// Functions of PostgreSQL's that read queries call most, called without a schema: calls
/// of these, and of names with a prefix of [`BUILTIN_PREFIXES`], are not followed by the row
/// check. Any other name may be the client's own SQL function, which may modify rows (a false
/// guess costs one check in the same round trip).
const COMMON_FUNCTIONS: &[&str] = &[
    "abs",
    "age",
    "array_agg",
    "array_length",
    "ascii",
    "avg",
    "bit_length",
    "bool_and",
    "bool_or",
    "btrim",
    "cardinality",
    "ceil",
    "char_length",
    "chr",
    "clock_timestamp",
    "col_description",
    "concat",
    "concat_ws",
    "count",
    "cume_dist",
    "current_setting",
    "date",
    "date_part",
    "date_trunc",
    "decode",
    "dense_rank",
    "digest",
    "encode",
    "every",
    "exp",
    "first_value",
    "floor",
    "format",
    "gen_random_uuid",
    "generate_series",
    "initcap",
    "json_agg",
    "json_build_object",
    "jsonb_agg",
    "jsonb_build_object",
    "lag",
    "last_value",
    "lead",
    "left",
    "length",
    "ln",
    "log",
    "lower",
    "lpad",
    "ltrim",
    "max",
    "md5",
    "min",
    "mod",
    "now",
    "ntile",
    "obj_description",
    "octet_length",
    "percent_rank",
    "power",
    "random",
    "rank",
    "regexp_replace",
    "repeat",
    "replace",
    "reverse",
    "right",
    "round",
    "row_number",
    "rpad",
    "rtrim",
    "sha256",
    "shobj_description",
    "sign",
    "split_part",
    "sqrt",
    "statement_timestamp",
    "string_agg",
    "strpos",
    "substr",
    "sum",
    "to_char",
    "to_date",
    "to_number",
    "to_timestamp",
    "transaction_timestamp",
    "translate",
    "trunc",
    "unnest",
    "upper",
    "version",
];

/// Prefixes PostgreSQL's own function families share (`pg_sleep`, `pg_get_indexdef`,
/// `has_table_privilege`, `jsonb_set`, `array_to_string`, ...), as tools' catalog queries call
/// them.
const BUILTIN_PREFIXES: &[&str] = &[
    "array_", "current_", "format_", "has_", "json_", "jsonb_", "pg_", "quote_", "regexp_",
    "string_", "to_", "txid_",
];

/// Whether an unqualified call of `name` (as PostgreSQL reads it) is one of PostgreSQL's.
fn is_builtin_call(name: &str) -> bool {
    COMMON_FUNCTIONS.binary_search(&name).is_ok()
        || BUILTIN_PREFIXES.iter().any(|p| name.starts_with(p))
}

/// Schemas whose functions are PostgreSQL's or the endpoint's (`sys`), never the client's.
fn is_system_schema(name: &str) -> bool {
    let name = name.trim_matches('"');
    name.eq_ignore_ascii_case("pg_catalog") || name.eq_ignore_ascii_case("sys")
}

fn token_facts(sql: &str, tokens: &[ScanToken]) -> Facts {
    let mut facts = Facts::default();
    let significant: Vec<&ScanToken> = tokens
        .iter()
        .filter(|t| !matches!(tok(t), Token::SqlComment | Token::CComment))
        .collect();
    let text = |t: &ScanToken| sql.get(t.start as usize..t.end as usize).unwrap_or("");
    for (i, t) in significant.iter().enumerate() {
        let at = |k: usize| significant.get(i + k).map(|t| tok(t));
        let starts_statement = i == 0 || tok(significant[i - 1]) == Token::Ascii59;
        if starts_statement && let Some(iam) = IamStatement::at(sql, &significant, i) {
            facts.iam.push(iam);
            continue;
        }
        match tok(t) {
            Token::Tablesample => facts.tablesample.push(t.start as usize),
            Token::For if matches!(at(1), Some(Token::Share | Token::No)) => {
                facts.suspects.push(t.start as usize);
            }
            Token::Sconst | Token::Usconst | Token::Bconst | Token::Xconst | Token::Iconst => {}
            _ if rules::may_name_refused_function(text(t)) => {
                facts.suspects.push(t.start as usize);
            }
            // A name called: `f(`, `s.f(`. A qualified name counts by its schema.
            Token::Ident if at(1) == Some(Token::Ascii40) => {
                let schema = match i
                    .checked_sub(2)
                    .map(|k| (significant[k], significant[k + 1]))
                {
                    Some((s, dot)) if tok(dot) == Token::Ascii46 => Some(text(s)),
                    _ => None,
                };
                let word = text(t);
                let name = match word.strip_prefix('"').and_then(|w| w.strip_suffix('"')) {
                    Some(quoted) => quoted.to_owned(),
                    None => word.to_ascii_lowercase(),
                };
                let ours = match schema {
                    Some(schema) => !is_system_schema(schema),
                    None => !is_builtin_call(&name),
                };
                if ours {
                    facts.calls.push(t.start as usize);
                }
            }
            Token::Create => {
                let index_at = match (at(1), at(2)) {
                    (Some(Token::Index), _) => Some(i + 1),
                    (Some(Token::Unique), Some(Token::Index)) => Some(i + 2),
                    _ => None,
                };
                let Some(index_at) = index_at else { continue };
                let mut next = index_at + 1;
                if let Some(w) = significant.get(next)
                    && tok(w) == Token::Ident
                    && text(w).eq_ignore_ascii_case("async")
                {
                    facts.async_words.push((w.start as usize, w.end as usize));
                    next += 1;
                }
                for w in &significant[next.min(significant.len())..] {
                    match tok(w) {
                        Token::Using => {
                            facts.index_using.push(t.start as usize);
                            break;
                        }
                        Token::Ascii40 | Token::Ascii59 => break,
                        _ => {}
                    }
                }
            }
            Token::Alter if at(1) == Some(Token::Table) => {
                if let Some(w) = significant.get(i + 2)
                    && tok(w) == Token::Ident
                    && text(w).eq_ignore_ascii_case("async")
                {
                    facts.async_words.push((w.start as usize, w.end as usize));
                }
            }
            _ => {}
        }
    }
    facts
}

#[cfg(test)]
#[test]
fn common_functions_are_sorted_for_binary_search() {
    assert!(COMMON_FUNCTIONS.windows(2).all(|w| w[0] < w[1]));
    assert!(is_builtin_call("count") && is_builtin_call("pg_sleep"));
    assert!(!is_builtin_call("my_func") && !is_builtin_call("Count"));
}

/// How deep SQL function bodies are classified inside one another (each level parses its
/// body again, so the work stays linear in the text times this).
const MAX_BODY_DEPTH: usize = 4;

/// Classifies `sql`. Runs the parser: call it on a parser thread.
pub(crate) fn classify_text(sql: &str) -> Classified {
    classify_in_body(sql, 0)
}

/// Classifies `sql`, a function body `depth` levels down (0: a client's text).
fn classify_in_body(sql: &str, depth: usize) -> Classified {
    let tokens = match pg_query::scan(sql) {
        Ok(scan) => scan.tokens,
        Err(_) => {
            return Classified {
                rewritten: None,
                statements: Vec::new(),
            };
        }
    };
    if nesting_estimate(&tokens) > MAX_NESTING {
        return Classified::refused(Refusal::new("54001", "stack depth limit exceeded"));
    }
    let facts = token_facts(sql, &tokens);
    drop(tokens);
    // Remove the ASYNC words and put calls in the place of `AWS IAM` statements; `shift`
    // maps an original offset into the new text.
    let mut edits: Vec<(usize, usize, String)> = facts
        .async_words
        .iter()
        .map(|&(s, e)| (s, e, String::new()))
        .chain(facts.iam.iter().map(|st| (st.start, st.end, st.call())))
        .collect();
    edits.sort_by_key(|&(s, _, _)| s);
    let (text, rewritten) = if edits.is_empty() {
        (sql.to_owned(), None)
    } else {
        let mut out = String::with_capacity(sql.len());
        let mut from = 0;
        for (s, e, with) in &edits {
            out.push_str(&sql[from..*s]);
            out.push_str(with);
            from = *e;
        }
        out.push_str(&sql[from..]);
        (out.clone(), Some(out))
    };
    let shift = |pos: usize| {
        let (grown, shrunk) = edits
            .iter()
            .filter(|(_, e, _)| *e <= pos)
            .fold((0, 0), |(g, s), (a, b, with)| (g + with.len(), s + (b - a)));
        pos + grown - shrunk
    };
    let parsed = match ffi::parse_tree(&text) {
        Ok(p) => p,
        Err(ffi::ParseError(m)) if m.contains("stack depth") => {
            return Classified::refused(Refusal::new("54001", "stack depth limit exceeded"));
        }
        // PostgreSQL answers the client's own text with its own syntax error.
        Err(_) => {
            return Classified {
                rewritten: None,
                statements: Vec::new(),
            };
        }
    };
    let stmts = &parsed.stmts;
    let mut statements = Vec::with_capacity(stmts.len());
    for (i, raw) in stmts.iter().enumerate() {
        let start = usize::try_from(raw.stmt_location).unwrap_or(0);
        let end = stmts
            .get(i + 1)
            .and_then(|n| usize::try_from(n.stmt_location).ok())
            .unwrap_or(text.len());
        let inside = |orig: usize| (start..end).contains(&shift(orig));
        let is_async = facts.async_words.iter().any(|&(s, _)| inside(s));
        let token_facts = TokenFacts {
            is_async,
            index_using: facts.index_using.iter().any(|&p| inside(p)),
            tablesample: facts.tablesample.iter().any(|&p| inside(p)),
        };
        // Only a statement with a suspect word has its whole tree searched.
        let nested = || {
            let suspect = facts.suspects.iter().any(|&p| inside(p));
            let json = suspect.then(|| ffi::parse_json(&text[start..end]).ok())??;
            rules::nested_refusal(&json)
        };
        // An `AWS IAM` statement is one only when it is the whole statement: inside another
        // (a rule's or a BEGIN ATOMIC body's `;`) its words are a syntax error, as to DSQL.
        let iam_here = facts.iam.iter().find(|st| inside(st.start));
        let iam = iam_here.and_then(|st| {
            let from = shift(st.start).checked_sub(start)?;
            let to = from + st.call().len();
            let whole = only_comments(text.get(start..start + from)?)
                && only_comments(text.get(start + to..end)?);
            whole.then_some(IamCall {
                op: st.op,
                from,
                to,
            })
        });
        let verdict = match raw.stmt.as_deref().and_then(|n| n.node.as_ref()) {
            Some(_) if iam_here.is_some() && iam.is_none() => {
                Err(Refusal::new("42601", "syntax error at or near \"AWS\""))
            }
            // A change of the catalog, as GRANT and REVOKE are.
            Some(_) if iam.is_some() => Ok(Kind::Ddl),
            Some(_) if token_facts.tablesample => {
                Err(Refusal::unsupported("TABLESAMPLE clause not supported"))
            }
            Some(node) => match nested() {
                Some(refusal) => Err(refusal),
                None => rules::classify(node, token_facts).and_then(|kind| {
                    // A SQL function's body: its first refused statement refuses it (the
                    // body is shorter than the text, so this ends).
                    let Some(body) = rules::sql_function_body(node) else {
                        return Ok(kind);
                    };
                    if depth >= MAX_BODY_DEPTH {
                        return Err(Refusal::new("54001", "stack depth limit exceeded"));
                    }
                    let refused = classify_in_body(&body, depth + 1)
                        .statements
                        .into_iter()
                        .find_map(|st| st.verdict.err());
                    refused.map_or(Ok(kind), Err)
                }),
            },
            None => Ok(rules::Kind::Other),
        };
        let chains = matches!(
            raw.stmt.as_deref().and_then(|n| n.node.as_ref()),
            Some(pg_query::NodeEnum::TransactionStmt(t)) if t.chain
        );
        statements.push(Statement {
            start,
            verdict,
            is_async,
            iam,
            chains,
            user_code: facts.calls.iter().any(|&p| inside(p)),
        });
    }
    Classified {
        rewritten,
        statements,
    }
}

type Job = (String, oneshot::Sender<Arc<Classified>>);

/// The parser threads and the verdict cache, shared by all connections of an endpoint.
pub(crate) struct Classifier {
    /// Texts up to [`BIG_TEXT`] bytes, for [`PARSER_THREADS`] threads.
    jobs: Mutex<mpsc::Sender<Job>>,
    /// Longer texts, for a thread of their own: however many a client sends, they never
    /// hold up the ordinary statements of other sessions.
    big_jobs: Mutex<mpsc::Sender<Job>>,
    cache: Mutex<HashMap<String, Arc<Classified>>>,
}

/// Texts longer than this are parsed on the big-text thread.
pub(crate) const BIG_TEXT: usize = 64 << 10;

/// Starts `count` parser threads named `name-<i>` serving `rx`.
fn parser_threads(name: &str, count: usize, rx: mpsc::Receiver<Job>) -> std::io::Result<()> {
    let rx = Arc::new(Mutex::new(rx));
    for i in 0..count {
        let rx = rx.clone();
        std::thread::Builder::new()
            .name(format!("{name}-{i}"))
            .stack_size(PARSER_STACK)
            .spawn(move || {
                loop {
                    let job = rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
                    let Ok((sql, reply)) = job else { return };
                    let verdict =
                        std::panic::catch_unwind(AssertUnwindSafe(|| classify_text(&sql)))
                            .unwrap_or_else(|_| Classified::refused(unclassified()));
                    let _ = reply.send(Arc::new(verdict));
                }
            })?;
    }
    Ok(())
}

fn unclassified() -> Refusal {
    Refusal::new(
        "XX000",
        "the local endpoint could not classify this statement",
    )
}

impl Classifier {
    /// Starts the parser threads; they end when the classifier is dropped.
    pub(crate) fn start() -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel::<Job>();
        parser_threads("dsql-parser", PARSER_THREADS, rx)?;
        let (big_tx, big_rx) = mpsc::channel::<Job>();
        parser_threads("dsql-parser-big", 1, big_rx)?;
        Ok(Self {
            jobs: Mutex::new(tx),
            big_jobs: Mutex::new(big_tx),
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// DSQL's verdict on `sql`, from the cache or a parser thread.
    pub(crate) async fn classify(&self, sql: &str) -> Arc<Classified> {
        if let Some(hit) = self.lock_cache().get(sql) {
            return hit.clone();
        }
        let (reply, answer) = oneshot::channel();
        let queue = if sql.len() > BIG_TEXT {
            &self.big_jobs
        } else {
            &self.jobs
        };
        let sent = queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send((sql.to_owned(), reply));
        let classified = match (sent, answer.await) {
            (Ok(()), Ok(c)) => c,
            _ => Arc::new(Classified::refused(unclassified())),
        };
        if sql.len() <= CACHE_MAX_TEXT {
            let mut cache = self.lock_cache();
            if cache.len() >= CACHE_ENTRIES {
                cache.clear();
            }
            cache.insert(sql.to_owned(), classified.clone());
        }
        classified
    }

    fn lock_cache(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Classified>>> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Texts cached.
    #[cfg(test)]
    pub(crate) fn cached(&self) -> usize {
        self.lock_cache().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Runs `f` on a thread with a parser thread's stack, as the endpoint does.
    fn on_parser_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        std::thread::Builder::new()
            .stack_size(PARSER_STACK)
            .spawn(f)
            .unwrap()
            .join()
            .unwrap()
    }

    fn verdicts(sql: &'static str) -> Vec<Verdict> {
        on_parser_stack(move || classify_text(sql))
            .statements
            .into_iter()
            .map(|s| s.verdict)
            .collect()
    }

    #[test]
    fn statements_and_offsets() {
        let c =
            on_parser_stack(|| classify_text("SELECT 1; TRUNCATE t;  INSERT INTO t VALUES (1)"));
        assert_eq!(c.rewritten, None);
        let starts: Vec<_> = c.statements.iter().map(|s| s.start).collect();
        assert_eq!(starts, [0, 9, 21]);
        assert_eq!(c.statements[0].verdict, Ok(rules::Kind::Other));
        assert_eq!(
            c.statements[1].verdict.as_ref().unwrap_err().message,
            "unsupported statement: Truncate"
        );
        assert_eq!(c.statements[2].verdict, Ok(rules::Kind::Dml));
        // A syntax error is left to PostgreSQL.
        assert!(
            on_parser_stack(|| classify_text("SELEC 1"))
                .statements
                .is_empty()
        );
    }

    #[test]
    fn async_is_a_keyword_after_index_and_is_removed() {
        let c =
            on_parser_stack(|| classify_text("CREATE UNIQUE INDEX ASYNC IF NOT EXISTS i ON t (a)"));
        assert_eq!(
            c.rewritten.as_deref(),
            Some("CREATE UNIQUE INDEX  IF NOT EXISTS i ON t (a)")
        );
        assert!(c.statements[0].is_async);
        assert_eq!(c.statements[0].verdict, Ok(rules::Kind::Ddl));
        // Unquoted, `async` right after INDEX is the keyword (the index is unnamed).
        let c = on_parser_stack(|| classify_text("create index async on t (a)"));
        assert!(c.statements[0].is_async);
        // Quoted, it is a name, and the index is synchronous.
        let v = verdicts("CREATE INDEX \"async\" ON t (a)");
        assert_eq!(
            v[0].as_ref().unwrap_err().message,
            "unsupported mode. please use CREATE INDEX ASYNC."
        );
        // The word only counts in its own statement.
        let c = on_parser_stack(|| {
            classify_text("CREATE INDEX ASYNC i ON t (a); CREATE INDEX j ON t (b)")
        });
        assert!(c.statements[0].is_async && !c.statements[1].is_async);
        assert!(c.statements[1].verdict.is_err());
    }

    #[test]
    fn nesting_is_bounded_before_the_parser_runs() {
        // Just under the limit every shape parses on the parser's stack (none overflows it);
        // far past it each is refused, also the ones no bracket or operator deepens.
        let shapes: [fn(usize) -> String; 8] = [
            |n| format!("SELECT 1{}", "+1".repeat(n)),
            |n| format!("SELECT {}1{}", "(".repeat(n), ")".repeat(n)),
            |n| format!("SELECT {}1{}", "(SELECT ".repeat(n), ")".repeat(n)),
            |n| format!("SELECT true{}", " ISNULL".repeat(n)),
            |n| format!("SELECT 1 FROM t{}", " JOIN t ON true".repeat(n)),
            |n| format!("SELECT 1, 2{}", " UNION SELECT 1, 2".repeat(n)),
            |n| format!("SELECT 1{}", "::int".repeat(n)),
            |n| {
                format!(
                    "SELECT {}1{}",
                    "CASE WHEN true THEN ".repeat(n),
                    " END".repeat(n)
                )
            },
        ];
        for shape in shapes {
            let estimate = |sql: &str| nesting_estimate(&pg_query::scan(sql).unwrap().tokens);
            // The deepest n whose estimate is within the limit (estimates grow with n).
            let (mut n, mut over) = (1, MAX_NESTING);
            while over - n > 1 {
                let mid = (n + over) / 2;
                if estimate(&shape(mid)) <= MAX_NESTING {
                    n = mid;
                } else {
                    over = mid;
                }
            }
            assert!(n * 6 >= MAX_NESTING, "{n}: {}", &shape(2));
            for (sql, deep) in [(shape(n), false), (shape(MAX_NESTING * 50), true)] {
                let shown = sql[..40].to_string();
                let c = on_parser_stack(move || classify_text(&sql));
                let refused = c.statements[0]
                    .verdict
                    .as_ref()
                    .is_err_and(|r| r.code == "54001");
                assert_eq!(refused, deep, "{shown}... (n = {n})");
            }
        }
        // Siblings do not add up: a long VALUES list is shallow.
        let rows: Vec<String> = (0..3000).map(|i| format!("({i}, 'v{i}' || 'w')")).collect();
        let sql = format!("INSERT INTO t VALUES {}", rows.join(", "));
        let tokens = pg_query::scan(&sql).unwrap().tokens;
        assert!(nesting_estimate(&tokens) < 10);
    }

    #[test]
    fn refused_calls_and_locks_are_found_anywhere_in_the_tree() {
        // (statement, accepted)
        let cases = [
            ("SELECT ARRAY[pg_backend_pid()]", false),
            ("VALUES (1), (pg_backend_pid())", false),
            ("INSERT INTO t VALUES (pg_backend_pid())", false),
            (
                "UPDATE t SET a = 1 RETURNING pg_catalog.pg_backend_pid()",
                false,
            ),
            ("SELECT 1 LIMIT pg_backend_pid()", false),
            (
                "SELECT count(*) FILTER (WHERE a = pg_backend_pid()) FROM t",
                false,
            ),
            (
                "SELECT rank() OVER w FROM t WINDOW w AS (ORDER BY pg_backend_pid())",
                false,
            ),
            (
                "WITH x AS (SELECT pg_try_advisory_lock(1)) SELECT * FROM x",
                false,
            ),
            ("SELECT * FROM (SELECT * FROM t FOR SHARE) s", false),
            ("EXPLAIN SELECT * FROM t FOR NO KEY UPDATE", false),
            ("SELECT \"pg_backend_pid\"()", false),
            ("SELECT 'pg_backend_pid()'", true),
            ("SELECT 1 AS pg_backend_pid", true),
            ("CREATE TABLE point (a int)", true),
            ("SELECT * FROM t FOR UPDATE", true),
            // A SQL function's body runs when it is called: judged at CREATE.
            (
                "CREATE FUNCTION f() RETURNS text LANGUAGE sql AS 'SELECT pg_backend_pid()::text'",
                false,
            ),
            (
                "CREATE FUNCTION f() RETURNS void LANGUAGE sql AS $$ TRUNCATE t $$",
                false,
            ),
            (
                "CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT pg_backend_pid(); END",
                false,
            ),
            (
                "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT ''pg_backend_pid()''::int'",
                true,
            ),
            (
                "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS $$ SELECT 1 FROM t FOR UPDATE $$",
                true,
            ),
            ("SELECT $$ FOR SHARE $$", true),
            // set_config() only as SET may: allow-listed names, client_encoding only UTF-8.
            ("SELECT set_config('search_path', 'public', false)", true),
            ("SELECT set_config('client_encoding', 'UTF8', false)", true),
            ("SELECT set_config('client_encoding', 'SJIS', false)", false),
            (
                "SELECT set_config('standard_conforming_strings', 'off', false)",
                false,
            ),
            (
                "SELECT set_config('client_encoding', lower('SJIS'), false), concat('x', 'utf8')",
                false,
            ),
            ("SELECT set_config(current_user, 'x', false)", false),
            ("SET client_encoding = 'LATIN1'", false),
            ("SET client_encoding TO 'UTF8'", true),
            ("ALTER ROLE admin SET client_encoding = 'SJIS'", false),
            ("ALTER ROLE admin SET work_mem = '1GB'", false),
            ("ALTER ROLE admin SET search_path = public", true),
        ];
        for (sql, ok) in cases {
            let c = on_parser_stack(move || classify_text(sql));
            assert_eq!(c.statements[0].verdict.is_ok(), ok, "{sql}: {c:?}");
        }
    }

    #[test]
    fn only_and_chain_chains() {
        let chains = |sql: &'static str| on_parser_stack(move || classify_text(sql)).statements;
        for yes in [
            "COMMIT AND CHAIN",
            "rollback and chain;",
            "END AND CHAIN",
            "commit work and chain -- x",
            "COMMIT /* and no chain */ AND CHAIN",
        ] {
            assert!(chains(yes)[0].chains, "{yes}");
        }
        for no in [
            "COMMIT",
            "ROLLBACK AND NO CHAIN",
            "end",
            "SELECT 'and chain'",
        ] {
            assert!(!chains(no)[0].chains, "{no}");
        }
        let two = chains("commit; -- and chain");
        assert!(!two[0].chains);
    }

    #[test]
    fn function_bodies_are_judged_to_a_bounded_depth() {
        // `levels` functions, each creating the next; the innermost body is `inner`.
        fn nested(levels: usize, inner: &str) -> String {
            (0..levels).rev().fold(inner.to_owned(), |body, i| {
                format!("CREATE FUNCTION f{i}() RETURNS void LANGUAGE sql AS $b{i}$ {body} $b{i}$")
            })
        }
        let verdict = |sql: String| {
            on_parser_stack(move || classify_text(&sql)).statements[0]
                .verdict
                .clone()
        };
        assert_eq!(verdict(nested(3, "SELECT 1")), Ok(Kind::Ddl));
        let refused = verdict(nested(3, "TRUNCATE t")).unwrap_err();
        assert_eq!(refused.message, "unsupported statement: Truncate");
        let deep = verdict(nested(MAX_BODY_DEPTH + 2, "SELECT 1")).unwrap_err();
        assert_eq!(deep.code, "54001");
    }

    #[tokio::test]
    async fn the_cache_is_bounded() {
        let c = Classifier::start().unwrap();
        for i in 0..CACHE_ENTRIES + 10 {
            c.classify(&format!("SELECT {i}")).await;
        }
        assert!(c.cached() <= CACHE_ENTRIES);
        let big = format!("SELECT '{}'", "x".repeat(CACHE_MAX_TEXT));
        let before = c.cached();
        assert_eq!(c.classify(&big).await.statements.len(), 1);
        assert_eq!(c.cached(), before, "long texts are not kept");
        assert!(Arc::ptr_eq(
            &c.classify("SELECT 1").await,
            &c.classify("SELECT 1").await
        ));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]
        /// Random text, and random cuts and splices of real statements, never panic (the
        /// classifier runs `catch_unwind` too, but must not need it) and never hang.
        #[test]
        fn random_sql_never_panics(
            noise in "[ -~]{0,200}",
            cut in 0usize..120,
            pick in 0usize..6,
        ) {
            const REAL: [&str; 6] = [
                "CREATE TABLE t (a int GENERATED ALWAYS AS IDENTITY (CACHE 1), b money[])",
                "ALTER TABLE t ADD COLUMN c int DEFAULT 0, ALTER COLUMN c TYPE text",
                "CREATE UNIQUE INDEX ASYNC IF NOT EXISTS i ON t USING btree (a DESC)",
                "BEGIN ISOLATION LEVEL SERIALIZABLE; SET TRANSACTION READ ONLY",
                "SELECT * FROM t TABLESAMPLE SYSTEM (1) FOR SHARE",
                "CREATE FUNCTION f() RETURNS int LANGUAGE plpgsql AS $$ BEGIN END $$",
            ];
            let real = REAL[pick];
            let cut = cut.min(real.len());
            let mut sql = real.get(..cut).unwrap_or(real).to_owned();
            sql.push_str(&noise);
            let _ = on_parser_stack(move || classify_text(&sql));
        }
    }
}
