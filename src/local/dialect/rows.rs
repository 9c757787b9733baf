//! DSQL's limit of 3,000 modified rows per transaction (`../shared/reference/dsql-dialect.md`
//! §7): the statement that takes the count past the limit fails with 54000 `transaction row
//! limit exceeded`, the transaction is failed and nothing of it commits (in autocommit the
//! statement fails and nothing commits).
//!
//! **PostgreSQL counts, and fails the transaction itself.** Right after every statement that
//! may modify rows (`INSERT`, `UPDATE`, `DELETE`, a `SELECT` with a data-modifying `WITH`,
//! `EXPLAIN ANALYZE` of one), the relay runs [`CHECK`] in the client's session, in the same
//! flight: in a simple Query it is a statement of the same string, in the extended protocol a
//! Close/Parse/Bind/Execute of its own after the client's Execute. The check counts the rows
//! the transaction modified so far with PostgreSQL's own per-transaction counters
//! (`pg_stat_get_xact_tuples_inserted` / `_updated` / `_deleted` of every user table, so rows
//! changed by `ON DELETE CASCADE`, by a CTE or by a function called from the statement count
//! too) and raises 54000 past the limit. The statement and everything it did are then inside
//! a failed (implicit or explicit) transaction of PostgreSQL's, so the session's state is
//! exactly DSQL's whatever the client pipelined: later statements of the string, or up to
//! `Sync`, are skipped; inside `BEGIN` later statements get 25P02 and `COMMIT` answers
//! `ROLLBACK`; in autocommit nothing commits, because the check runs before the implicit
//! transaction ends (before `Sync`, or before the end of the Query string). This is why a
//! `COMMIT` in the same string as the crossing statement, a pipelined batch or a
//! multi-statement implicit transaction can no longer let rows past the limit: the command
//! tags the relay sees come too late to stop any of them.
//!
//! The response filter ([`super::relay`]) drops the check's answers (its `DO` tag — clients
//! cannot run `DO` in DSQL's dialect, so every `DO` tag is the relay's — and, in the extended
//! protocol, the CloseComplete, CloseComplete, ParseComplete and BindComplete before it), and when it fails
//! drops the crossing statement's own command tag and answers DSQL's error in its place.
//!
//! **Counters of earlier transactions.** PostgreSQL keeps those counters per backend until it
//! flushes them to the shared statistics, at most once a second, when the session is idle: a
//! count can include earlier transactions of the session. The check therefore asks for a
//! flush at the next idle moment (`pg_stat_force_next_flush`), so every transaction that ends
//! before a ReadyForQuery starts from zero; a transaction that begins without one in between
//! (after a `COMMIT` in the middle of a Query string or of a pipelined batch, or after `COMMIT
//! AND CHAIN` / `ROLLBACK AND CHAIN`) first records the counters as its baseline ([`BASELINE`],
//! run right after the ending statement), and the check counts from there.
//!
//! A statement that calls a function that may be the client's own (a SQL function may write
//! rows) is checked as well: the scanner's `name(` tokens, unless the name is a common
//! built-in called without a schema (a list, and prefixes such as `pg_`), or the schema is
//! `pg_catalog` or `sys` ([`super::parse`]).
//!
//! **Cost.** Nothing is added for statements that cannot modify rows (plain `SELECT`s pay
//! nothing); a modifying statement pays the check in the same round trip: a `DO` block and an
//! index scan of the user relations in `pg_class`.
//!
//! Approximations: a row changed twice counts twice (as in the command tags); rows a
//! subtransaction rolled back still count (only OCC's savepoint rolls back, in a transaction
//! that then fails at `COMMIT` anyway); a client's function named like one of the common
//! built-ins is not followed by a check, so its rows are counted only by the next check of
//! its transaction (if any); a Query string whose statement after a `COMMIT` is DML counts from
//! the baseline taken after that `COMMIT`. The extended-protocol check runs in a portal of
//! its own, so a client's suspended unnamed portal (an Execute with a row limit) survives it.
//!
//! **Why not the command tags.** Counting `INSERT n` / `UPDATE n` tags on the way back costs
//! nothing, but the tag arrives after the statement ran and, in autocommit or with a `COMMIT`
//! in the same string or pipeline, after it committed: the relay could only rewrite the
//! answer, never undo the rows, and its idea of which transaction a tag belongs to would be
//! a guess. A data-modifying CTE completes as `SELECT n`, and cascaded rows are in no tag.

/// Rows one transaction may modify (DSQL: 3,000).
pub(crate) const MAX_TRANSACTION_ROWS: u64 = 3000;
/// DSQL's message when a statement takes its transaction past [`MAX_TRANSACTION_ROWS`].
pub(crate) const ROW_MESSAGE: &str = "transaction row limit exceeded";

/// The function behind the check, created by the superuser at every start (idempotent).
/// `baseline`: record the counters as the transaction's starting point instead of checking.
pub(crate) fn rows_sql() -> String {
    format!(
        r#"
CREATE SCHEMA IF NOT EXISTS dsql_pgx_rows;
REVOKE ALL ON SCHEMA dsql_pgx_rows FROM PUBLIC;
GRANT USAGE ON SCHEMA dsql_pgx_rows TO PUBLIC;
CREATE OR REPLACE FUNCTION dsql_pgx_rows.modified(baseline boolean) RETURNS void
LANGUAGE plpgsql AS $fn$
DECLARE
  n bigint;
BEGIN
  PERFORM pg_catalog.pg_stat_force_next_flush();
  SELECT coalesce(pg_catalog.sum(
           pg_catalog.pg_stat_get_xact_tuples_inserted(c.oid)
           OPERATOR(pg_catalog.+) pg_catalog.pg_stat_get_xact_tuples_updated(c.oid)
           OPERATOR(pg_catalog.+) pg_catalog.pg_stat_get_xact_tuples_deleted(c.oid)), 0)
    INTO n
    FROM pg_catalog.pg_class c
   WHERE c.oid OPERATOR(pg_catalog.>=) 16384::pg_catalog.oid
     AND c.relkind OPERATOR(pg_catalog.=) 'r';
  IF baseline THEN
    PERFORM pg_catalog.set_config('dsql_pgx.rows_base', n::text, true);
  ELSIF n OPERATOR(pg_catalog.-) coalesce(nullif(
          pg_catalog.current_setting('dsql_pgx.rows_base', true), ''), '0')::bigint
        OPERATOR(pg_catalog.>) {MAX_TRANSACTION_ROWS} THEN
    RAISE EXCEPTION '{ROW_MESSAGE}' USING ERRCODE = '54000';
  END IF;
END
$fn$;
REVOKE ALL ON FUNCTION dsql_pgx_rows.modified(boolean) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION dsql_pgx_rows.modified(boolean) TO PUBLIC;
"#
    )
}

/// The check run after a statement that may modify rows.
pub(crate) const CHECK: &str =
    "DO $dsql_pgx_rows$BEGIN PERFORM dsql_pgx_rows.modified(false); END$dsql_pgx_rows$";
/// Run after an end of transaction that another transaction follows before the session is
/// idle: the new transaction's starting point.
pub(crate) const BASELINE: &str =
    "DO $dsql_pgx_rows$BEGIN PERFORM dsql_pgx_rows.modified(true); END$dsql_pgx_rows$";

/// How many bodiless answers come before the tag (or error) of [`extended`]'s messages.
pub(crate) const EXTENDED_ANSWERS: usize = 4;

/// The extended-protocol messages that run `sql` (a [`CHECK`], a [`BASELINE`], OCC's
/// savepoint) as statement and portal `name` (not the unnamed portal, which may be a
/// client's suspended one): Close of both, Parse, Bind, Execute (answered with
/// [`EXTENDED_ANSWERS`] CloseComplete, CloseComplete, ParseComplete, BindComplete and the tag, or the error).
pub(crate) fn extended(name: &str, sql: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let mut msg = |tag: u8, body: &[u8]| out.extend(crate::local::wire::message(tag, body));
    let mut portal = name.as_bytes().to_vec();
    portal.push(0);
    for what in [b'P', b'S'] {
        let mut close = vec![what];
        close.extend_from_slice(&portal);
        msg(b'C', &close);
    }
    let mut parse = name.as_bytes().to_vec();
    parse.push(0);
    parse.extend_from_slice(sql.as_bytes());
    parse.extend_from_slice(&[0, 0, 0]);
    msg(b'P', &parse);
    let mut bind = portal.clone();
    bind.extend_from_slice(&portal);
    bind.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    msg(b'B', &bind);
    let mut execute = portal;
    execute.extend_from_slice(&[0, 0, 0, 0]);
    msg(b'E', &execute);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_extended_form_is_four_well_formed_messages() {
        let m = extended("s", "DO x");
        let mut rest = &m[..];
        let mut tags = Vec::new();
        while let [tag, a, b, c, d, ..] = *rest {
            let len = u32::from_be_bytes([a, b, c, d]) as usize;
            tags.push(tag);
            rest = &rest[1 + len..];
        }
        assert_eq!(tags, b"CCPBE");
        assert_eq!(tags.len(), EXTENDED_ANSWERS + 1);
    }
}
