//! DSQL's 10 MiB limit on the data one transaction modifies (`../shared/reference/
//! dsql-dialect.md` §7): checked at `COMMIT`, as reported, answering 54000
//! `transaction size limit 10mb exceeded` with DETAIL `Current transaction size <n>mb >
//! 10mb`.
//!
//! **How the size is measured.** PostgreSQL keeps no byte count per transaction, so at the
//! `COMMIT` of an explicit transaction that ran DML, the relay runs [`check_sql`] in the
//! client's session just before it (its `DO` tag is dropped on the way back): for every
//! table the transaction changed (`pg_stat_xact_user_tables`), the rows this transaction
//! wrote are summed (visible rows whose `xmin` is its xid or later: its subtransactions', as
//! OCC's savepoint makes them; any other transaction's rows with such an xmin are not in its
//! snapshot; xid wraparound is not handled) with `pg_column_size` plus 24 bytes of row header and
//! 16 bytes per index entry; a deleted row counts 24 bytes. It is an approximation: a table
//! the client may not read counts nothing, TOASTed values count compressed, and the changed
//! tables are scanned (cheap at DSQL's 3,000 rows for the tables a local test has, not for
//! big ones). Over the limit, the error fails the transaction (later statements 25P02 until
//! `ROLLBACK`; a second `COMMIT` answers `ROLLBACK`), and nothing is committed. A COMMIT sent
//! as an extended-protocol Parse, and autocommit statements, are not measured.

/// Bytes of modified data one transaction may have (DSQL: 10 MiB).
pub(crate) const MAX_TRANSACTION_BYTES: u64 = 10 << 20;
/// DSQL's message when a transaction is over [`MAX_TRANSACTION_BYTES`].
pub(crate) const SIZE_MESSAGE: &str = "transaction size limit 10mb exceeded";

/// Whether `statement` (an end of transaction) commits: `COMMIT` or `END`, not `ROLLBACK`
/// nor `COMMIT PREPARED`.
pub(crate) fn commits(statement: &str) -> bool {
    let words: Vec<String> = statement
        .trim_end()
        .trim_end_matches(';')
        .split_whitespace()
        .map(str::to_ascii_lowercase)
        .collect();
    match words.first().map(String::as_str) {
        Some("commit") | Some("end") => {
            words.len() == 1
                || matches!(
                    words.get(1).map(String::as_str),
                    Some("work" | "transaction")
                )
        }
        _ => false,
    }
}

/// The `DO` block that fails with DSQL's error when the transaction is over the limit.
pub(crate) fn check_sql() -> String {
    format!(
        r#"DO $dsql_pgx_size$
DECLARE
  r record;
  n bigint;
  total bigint := 0;
  xid text := (pg_catalog.pg_current_xact_id()::text::numeric % 4294967296)::text;
BEGIN
  FOR r IN SELECT s.relid, s.n_tup_del,
                  (SELECT count(*) FROM pg_catalog.pg_index i WHERE i.indrelid = s.relid) AS idx
             FROM pg_catalog.pg_stat_xact_user_tables s
            WHERE s.n_tup_ins + s.n_tup_upd + s.n_tup_del > 0 LOOP
    BEGIN
      EXECUTE pg_catalog.format(
        'SELECT coalesce(sum(pg_catalog.pg_column_size(t.*) + 24 + 16 * %s), 0)
           FROM %s t WHERE t.xmin::text::bigint >= %s', r.idx, r.relid::regclass, xid) INTO n;
    EXCEPTION WHEN insufficient_privilege THEN
      n := 0;
    END;
    total := total + n + 24 * r.n_tup_del;
  END LOOP;
  IF total > {MAX_TRANSACTION_BYTES} THEN
    RAISE EXCEPTION '{SIZE_MESSAGE}' USING ERRCODE = '54000',
      DETAIL = pg_catalog.format('Current transaction size %smb > 10mb',
                                 pg_catalog.ceil(total / 1048576.0));
  END IF;
END
$dsql_pgx_size$; "#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_commits_are_measured() {
        for yes in [
            "COMMIT",
            "commit;",
            "END",
            "COMMIT WORK",
            "end transaction ;",
        ] {
            assert!(commits(yes), "{yes}");
        }
        for no in [
            "ROLLBACK",
            "COMMIT PREPARED 'x'",
            "ABORT",
            "COMMIT AND CHAIN",
        ] {
            assert!(!commits(no), "{no}");
        }
    }
}
