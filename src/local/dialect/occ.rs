//! DSQL's optimistic concurrency (`../shared/reference/dsql-dialect.md` §8) on top of
//! PostgreSQL's REPEATABLE READ: no statement waits for another transaction, and a
//! transaction that lost a write-write conflict fails at `COMMIT` with 40001 OC000.
//!
//! **How.** Every DSQL-dialect session runs with a short `lock_timeout`
//! ([`LOCK_TIMEOUT_OPTION`]), so a write (or `FOR UPDATE`) on a row another open
//! transaction holds fails at once with 55P03 instead of waiting; a row another transaction
//! changed and committed after the snapshot fails with PostgreSQL's own 40001. Both are
//! conflicts. A simple-Query `BEGIN` is sent on as `BEGIN; SELECT 1; SAVEPOINT …`: the
//! `SELECT` takes the snapshot at `BEGIN` as DSQL does, and the savepoint is where a
//! conflicted transaction goes back to. On a conflict inside such a transaction the error
//! is answered as the statement's success (`UPDATE 0`), the transaction is *doomed*, the
//! relay sends `ROLLBACK TO SAVEPOINT` before the client's next message (so later
//! statements run and nothing is left half-written), and the `COMMIT` is sent on as
//! `ROLLBACK`, answered with 40001 OC000. The answers to everything the relay added are
//! dropped on the way back.
//!
//! **OC001.** The endpoint counts committed schema changes ([`SchemaVersion`]); a statement
//! or `COMMIT` in an explicit transaction that began before another session's schema
//! change fails with 40001 OC001.
//!
//! **Where this approximates DSQL** (the README says so too): the first *writer* of a row
//! among open transactions keeps it — a later writer is doomed even if it commits first;
//! a doomed statement reports 0 rows (and no `RETURNING` rows), not its count under its
//! snapshot, and the doomed transaction no longer sees its own earlier writes; statements
//! after the conflicted one in the same Query string or before the same `Sync` are
//! skipped; in autocommit the conflicted statement fails with 40001 OC000 (the reference's
//! inference). The transaction an end `AND CHAIN` begins gets the savepoint too (sent after
//! the row baseline, [`super::jobs::rewrite_in_query`]).
//!
//! **The extended protocol.** After an Execute of `BEGIN` (or of an end `AND CHAIN`) the
//! relay sends, before the client's `Sync`, the row baseline (a `DO`, which takes the
//! snapshot) and [`SAVEPOINT_SQL`], each as its own Close/Parse/Bind/Execute; the filter
//! drops their answers (every `SAVEPOINT` tag is the relay's: clients cannot make
//! savepoints in DSQL's dialect).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::rules::{Kind, Refusal};

/// The startup option that makes a locked row fail a statement (55P03) instead of making
/// it wait.
pub(crate) const LOCK_TIMEOUT_OPTION: &str = "-c lock_timeout=10ms";
/// The savepoint a conflicted transaction is rolled back to (clients cannot make
/// savepoints in DSQL's dialect, so it is never theirs).
const SAVEPOINT: &str = "dsql_pgx_occ";
/// The statement that makes it (sent after an extended-protocol `BEGIN`).
pub(crate) const SAVEPOINT_SQL: &str = "SAVEPOINT dsql_pgx_occ";
/// SQLSTATE of both OCC failures.
const SERIALIZATION_FAILURE: &str = "40001";
/// DSQL's words for a lost write-write conflict.
pub(crate) const OC000: &str = "change conflicts with another transaction (OC000)";
/// DSQL's words for a schema changed under a transaction.
pub(crate) const OC001: &str = "schema has been updated by another transaction (OC001)";

/// Committed schema changes on the endpoint, shared by all its connections.
#[derive(Debug, Default)]
pub(crate) struct SchemaVersion(AtomicU64);

impl SchemaVersion {
    fn get(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }

    fn bump(&self) {
        self.0.fetch_add(1, Ordering::AcqRel);
    }
}

/// A conflict's refusal with `message` (OC000 or OC001).
pub(crate) fn conflict(message: &str) -> Refusal {
    Refusal::new(SERIALIZATION_FAILURE, message)
}

/// OCC state both directions of a connection share (inside the relay's `Refusals`).
#[derive(Debug)]
pub(crate) struct Occ {
    schema: Arc<SchemaVersion>,
    /// Schema version when the explicit transaction began.
    began_at: u64,
    /// Rewritten `BEGIN`s whose extra answers are still to come.
    begins: u32,
    /// The transaction has its savepoint.
    savepoint: bool,
    /// The transaction lost a conflict: its `COMMIT` fails.
    doomed: bool,
    /// `ROLLBACK TO SAVEPOINT` is to be sent before the client's next message.
    rollback_due: Arc<AtomicBool>,
    /// Sent `ROLLBACK TO SAVEPOINT`s whose answers (CommandComplete, ReadyForQuery) are
    /// still to come.
    rollbacks: u32,
    /// A sent-on `COMMIT` (now a `ROLLBACK`) is to be answered with this error; `true`:
    /// its ReadyForQuery is dropped (the client's `Sync` brings its own).
    failing_commit: Option<(Refusal, bool)>,
    /// The command tag of the client's statement running now (for a doomed statement).
    verb: &'static str,
    /// A DDL statement ran in the current transaction.
    ddl: bool,
}

impl Occ {
    /// State for a connection of the endpoint whose schema changes `schema` counts.
    pub(crate) fn new(schema: Arc<SchemaVersion>) -> Self {
        Self {
            began_at: schema.get(),
            schema,
            begins: 0,
            savepoint: false,
            doomed: false,
            rollback_due: Arc::default(),
            rollbacks: 0,
            failing_commit: None,
            verb: "SELECT 0",
            ddl: false,
        }
    }
}

/// The command tag a statement's text completes with when it reports no rows.
fn empty_tag(sql: &str) -> &'static str {
    let first = sql
        .trim_start_matches(|c: char| c.is_whitespace() || c == '(')
        .split(|c: char| !c.is_ascii_alphabetic())
        .next()
        .unwrap_or("");
    match first.to_ascii_uppercase().as_str() {
        "INSERT" => "INSERT 0 0",
        "UPDATE" => "UPDATE 0",
        "DELETE" => "DELETE 0",
        "MERGE" => "MERGE 0",
        _ => "SELECT 0",
    }
}

fn is_rollback(sql: &str) -> bool {
    let first = sql.trim_start().get(..5).unwrap_or("");
    first.eq_ignore_ascii_case("rollb") || first.eq_ignore_ascii_case("abort")
}

/// What OCC needs to know of a prepared statement: the command tag it completes with when
/// it reports no rows, and whether it is a `ROLLBACK`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Verb {
    pub(crate) empty_tag: &'static str,
    pub(crate) rollback: bool,
}

impl Verb {
    /// The verb of a statement whose text is `sql`.
    pub(crate) fn of(sql: &str) -> Self {
        Self {
            empty_tag: empty_tag(sql),
            rollback: is_rollback(sql),
        }
    }
}

impl Default for Verb {
    fn default() -> Self {
        Self {
            empty_tag: "SELECT 0",
            rollback: false,
        }
    }
}

/// A message `tag` whose body is the one string `text`.
fn with_string(tag: u8, text: &str) -> Vec<u8> {
    let mut out = vec![tag];
    out.extend_from_slice(&(text.len() as u32 + 5).to_be_bytes());
    out.extend_from_slice(text.as_bytes());
    out.push(0);
    out
}

/// A simple Query message carrying `sql`.
fn query(sql: &str) -> Vec<u8> {
    with_string(b'Q', sql)
}

/// The savepoint sent after an extended-protocol `BEGIN` was made.
pub(crate) fn savepoint_made(occ: &mut Occ) {
    occ.savepoint = true;
}

/// Before any client message: the `ROLLBACK TO SAVEPOINT` a conflict left due.
pub(crate) fn before_message(occ: &mut Occ) -> Option<Vec<u8>> {
    if !occ.rollback_due.swap(false, Ordering::AcqRel) {
        return None;
    }
    occ.rollbacks = occ.rollbacks.saturating_add(1);
    Some(query(&format!("ROLLBACK TO SAVEPOINT {SAVEPOINT}")))
}

/// The transaction ended or the client left it (the relay's state is reset).
fn reset(occ: &mut Occ) {
    occ.savepoint = false;
    occ.doomed = false;
    occ.rollback_due.store(false, Ordering::Release);
}

/// The flag that says a `ROLLBACK TO SAVEPOINT` is due: the client side reads it without
/// the lock, on every message.
pub(crate) fn rollback_due_flag(occ: &Occ) -> Arc<AtomicBool> {
    Arc::clone(&occ.rollback_due)
}

/// A simple Query whose first statement is of kind `first` (`only`: its one statement;
/// `ddl`: one of them is DDL), with `explicit` the transaction state before it. Returns
/// the message to send instead, if any.
pub(crate) fn on_query(
    occ: &mut Occ,
    sql: &str,
    first: Kind,
    only: bool,
    ddl: bool,
    explicit: bool,
) -> Result<Option<Vec<u8>>, Refusal> {
    occ.verb = empty_tag(sql);
    occ.ddl |= ddl;
    match first {
        Kind::Begin if only && !explicit => {
            reset(occ);
            occ.ddl = false;
            occ.began_at = occ.schema.get();
            occ.begins = occ.begins.saturating_add(1);
            // On a line of its own: a `--` comment at the end of the client's text ends.
            let begin = sql.trim_end().trim_end_matches(';');
            Ok(Some(query(&format!(
                "{begin}\n; SELECT 1; SAVEPOINT {SAVEPOINT}"
            ))))
        }
        Kind::End if explicit => Ok(end(occ, is_rollback(sql), false)),
        Kind::Begin | Kind::End => Ok(None),
        _ if explicit => statement(occ).map(|()| None),
        _ => Ok(None),
    }
}

/// An Execute of a portal of `verb`, a statement of `kind`, with `explicit` the transaction state
/// before it. Returns the messages to send instead, if any.
pub(crate) fn on_execute(
    occ: &mut Occ,
    verb: Verb,
    kind: Kind,
    explicit: bool,
) -> Result<Option<Vec<u8>>, Refusal> {
    let Verb {
        empty_tag: verb,
        rollback,
    } = verb;
    occ.verb = verb;
    occ.ddl |= kind == Kind::Ddl;
    match kind {
        Kind::Begin if !explicit => {
            reset(occ);
            occ.began_at = occ.schema.get();
            Ok(None)
        }
        Kind::End if explicit => Ok(end(occ, rollback, true)),
        Kind::Begin | Kind::End => Ok(None),
        _ if explicit => statement(occ).map(|()| None),
        _ => Ok(None),
    }
}

/// A statement inside an explicit transaction: OC001 when the schema changed since it
/// began.
fn statement(occ: &mut Occ) -> Result<(), Refusal> {
    if occ.schema.get() != occ.began_at {
        occ.began_at = occ.schema.get();
        return Err(conflict(OC001));
    }
    Ok(())
}

/// `COMMIT` (or `ROLLBACK`) of an explicit transaction: a doomed one, or one whose schema
/// changed, is rolled back and its `COMMIT` answered with the conflict.
fn end(occ: &mut Occ, rollback: bool, extended: bool) -> Option<Vec<u8>> {
    let stale = occ.schema.get() != occ.began_at;
    let doomed = occ.doomed;
    reset(occ);
    if rollback || !(doomed || stale) {
        return None;
    }
    let message = if doomed { OC000 } else { OC001 };
    occ.failing_commit = Some((conflict(message), extended));
    Some(query("ROLLBACK"))
}

/// What to do with a message from PostgreSQL.
pub(crate) enum Answer {
    /// Pass it on.
    Pass,
    /// Drop it.
    Drop,
    /// Send this instead.
    Replace(Vec<u8>),
}

/// Whether an error is one of PostgreSQL's conflicts: a locked row (55P03) or a row
/// changed since the snapshot (40001).
fn is_conflict(code: &[u8]) -> bool {
    code == b"55P03" || code == b"40001"
}

/// The SQLSTATE of an ErrorResponse body.
pub(crate) fn error_code(body: &[u8]) -> Option<&[u8]> {
    let mut fields = body;
    while let Some((&field, rest)) = fields.split_first() {
        let end = rest.iter().position(|&b| b == 0)?;
        if field == b'C' {
            return Some(&rest[..end]);
        }
        fields = &rest[end + 1..];
    }
    None
}

fn command_complete(tag: &str) -> Vec<u8> {
    with_string(b'C', tag)
}

/// Filter state for OCC on the response side.
#[derive(Debug, Default)]
pub(crate) struct OccFilter {
    /// Dropping the extra answers of a rewritten `BEGIN` (up to its `SAVEPOINT`).
    skipping_begin: bool,
    /// Drop the next ReadyForQuery (of a sent `ROLLBACK` or `ROLLBACK TO`).
    drop_ready: bool,
    /// The next ReadyForQuery says the transaction is fine (a conflict was absorbed).
    ready_fine: bool,
    /// An error since the last ReadyForQuery.
    errored: bool,
}

impl OccFilter {
    /// Whether every message is to be dropped now (also ones the relay does not hold).
    pub(crate) fn skipping(&self) -> bool {
        self.skipping_begin
    }

    /// Decides on a held message (`tag`, body); `code` is an error's SQLSTATE.
    pub(crate) fn answer(
        &mut self,
        occ: &mut Occ,
        explicit: bool,
        tag: u8,
        body: &[u8],
        code: Option<&[u8]>,
        error: impl Fn(&Refusal) -> Vec<u8>,
    ) -> Answer {
        let command = || body.split(|&b| b == 0).next().unwrap_or(b"");
        match tag {
            b'C' if self.skipping_begin => {
                if command() == b"SAVEPOINT" {
                    self.skipping_begin = false;
                    occ.savepoint = true;
                }
                Answer::Drop
            }
            b'C' if command() == b"BEGIN" && occ.begins > 0 => {
                occ.begins -= 1;
                self.skipping_begin = true;
                Answer::Pass
            }
            b'C' if command() == b"ROLLBACK" && occ.rollbacks > 0 => {
                // A `ROLLBACK TO SAVEPOINT` the relay sent.
                occ.rollbacks -= 1;
                self.drop_ready = true;
                Answer::Drop
            }
            b'C' if command() == b"ROLLBACK" && occ.failing_commit.is_some() => {
                let (r, drop_ready) = occ
                    .failing_commit
                    .take()
                    .unwrap_or((conflict(OC000), false));
                self.drop_ready = drop_ready;
                self.errored = true;
                Answer::Replace(error(&r))
            }
            b'E' if self.skipping() => {
                // One of ours failed: the client sees it, and the transaction's state.
                self.skipping_begin = false;
                self.errored = true;
                Answer::Pass
            }
            b'E' if code.is_some_and(is_conflict) => {
                if explicit && occ.savepoint {
                    occ.doomed = true;
                    occ.rollback_due.store(true, Ordering::Release);
                    self.ready_fine = true;
                    Answer::Replace(command_complete(occ.verb))
                } else {
                    self.errored = true;
                    Answer::Replace(error(&conflict(OC000)))
                }
            }
            b'E' => {
                self.errored = true;
                Answer::Pass
            }
            b'Z' => self.ready(occ, body),
            _ => Answer::Pass,
        }
    }

    fn ready(&mut self, occ: &mut Occ, body: &[u8]) -> Answer {
        // A rewritten `BEGIN` that did not get to its `SAVEPOINT`: no savepoint.
        self.skipping_begin = false;
        if std::mem::take(&mut self.drop_ready) {
            return Answer::Drop;
        }
        let status = body.first().copied().unwrap_or(b'I');
        let errored = std::mem::take(&mut self.errored);
        if status == b'I' {
            if std::mem::take(&mut occ.ddl) && !errored {
                occ.schema.bump();
            }
            reset(occ);
        }
        if std::mem::take(&mut self.ready_fine) && status == b'E' {
            return Answer::Replace(vec![b'Z', 0, 0, 0, 5, b'T']);
        }
        Answer::Pass
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_doomed_statement_completes_with_its_command_and_no_rows() {
        assert_eq!(empty_tag("  update t set v = 1"), "UPDATE 0");
        assert_eq!(empty_tag("INSERT INTO t VALUES (1)"), "INSERT 0 0");
        assert_eq!(empty_tag("delete from t"), "DELETE 0");
        assert_eq!(empty_tag("(select 1) for update"), "SELECT 0");
        assert_eq!(empty_tag(""), "SELECT 0");
    }

    #[test]
    fn the_extended_savepoint_is_the_one_rolled_back_to() {
        assert_eq!(SAVEPOINT_SQL, format!("SAVEPOINT {SAVEPOINT}"));
    }

    #[test]
    fn rollback_is_told_from_commit() {
        assert!(is_rollback(" ROLLBACK"));
        assert!(is_rollback("abort"));
        assert!(!is_rollback("COMMIT"));
        assert!(!is_rollback("end"));
    }

    #[test]
    fn the_sqlstate_is_found_among_the_fields() {
        let body = b"SERROR\0C55P03\0Mcould not obtain lock\0\0";
        assert_eq!(error_code(body), Some(&b"55P03"[..]));
        assert_eq!(error_code(b"SERROR\0\0"), None);
        assert_eq!(error_code(b"SERR"), None);
        assert_eq!(query("ROLLBACK"), b"Q\0\0\0\x0dROLLBACK\0");
    }

    #[test]
    fn a_doomed_commit_is_rolled_back_and_fails_a_rollback_is_not() {
        let mut occ = Occ::new(Arc::default());
        occ.doomed = true;
        assert_eq!(end(&mut occ, true, false), None);
        occ.doomed = true;
        assert_eq!(end(&mut occ, false, false), Some(query("ROLLBACK")));
        let (r, _) = occ.failing_commit.take().unwrap();
        assert_eq!((r.code, r.message.as_str()), ("40001", OC000));
        assert!(!occ.doomed);
    }
}
