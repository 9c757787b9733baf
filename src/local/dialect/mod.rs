//! DSQL's SQL dialect in front of the private PostgreSQL: every statement a client sends (a
//! simple Query or an extended-protocol Parse) is classified with PostgreSQL 16's own parser
//! and refused as DSQL refuses it, with its SQLSTATE and words
//! (`../shared/reference/dsql-dialect.md`), including DSQL's transaction rules (one DDL
//! statement per transaction, no DDL with DML).
//!
//! - [`rules`]: DSQL's verdict on one parsed statement.
//! - [`parse`]: text → statements and verdicts, bounded and cached ([`Classifier`]).
//! - [`env`]: the server version, `sys` functions and the one database DSQL shows.
//! - [`jobs`]: `CREATE INDEX ASYNC` as background jobs, `sys.jobs`, `sys.wait_for_job`.
//! - [`iam`]: `AWS IAM GRANT`/`REVOKE`, `sys.iam_pg_role_mappings`, the grant checked at login.
//! - [`size`]: DSQL's 10 MiB per transaction, measured at COMMIT.
//! - [`rows`]: DSQL's 3,000 modified rows per transaction, counted by PostgreSQL after every
//!   statement that may modify rows.
//! - [`occ`]: optimistic concurrency: no statement waits, conflicts fail at `COMMIT`.
//! - [`relay`]: the hook in the relay: refused statements fail in PostgreSQL itself, and
//!   the errors are rewritten into DSQL's.

pub(crate) mod env;
mod ffi;
pub(crate) mod iam;
pub(crate) mod jobs;
pub(crate) mod occ;
pub(crate) mod parse;
#[cfg(test)]
mod props;
pub(crate) mod relay;
pub(crate) mod rows;
pub(crate) mod rules;
pub(crate) mod size;

pub(crate) use parse::Classifier;

/// Which SQL `local` speaks behind IAM.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Dialect {
    /// DSQL's: statements DSQL refuses are refused as DSQL refuses them.
    #[default]
    Dsql,
    /// Plain PostgreSQL, statements relayed as they are.
    Postgres,
}
