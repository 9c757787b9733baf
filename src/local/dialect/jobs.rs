//! `CREATE INDEX ASYNC` and `ALTER TABLE ASYNC ... VALIDATE CONSTRAINT` as DSQL runs them:
//! the statement answers at once with a `job_id` row, and the work is done in the
//! background by a job runner with connections of its own to the private PostgreSQL;
//! `sys.jobs` shows the jobs, `CALL sys.wait_for_job('<id>')` waits for one
//! (`../shared/reference/dsql-dialect.md` §6).
//!
//! **What a client sees is real PostgreSQL.** [`JOBS_SQL`], run by the superuser at every
//! start, keeps the jobs in `dsql_pgx.jobs` (a schema nobody else may use), shows them
//! through the view `sys.jobs` (SELECT only, DSQL's columns in order) and defines the
//! procedure `sys.wait_for_job(text)`; `sys` belongs to the superuser, clients have USAGE on
//! it and nothing else, so they can read jobs and wait, never write a job or create an
//! object in `sys`. PostgreSQL itself then answers `SELECT sys.wait_for_job(..)` with 42809
//! and a subquery argument with 0A000, as on DSQL.
//!
//! **Waiting without snapshots.** A transaction's snapshot could hide a job's end from the
//! waiter, so the state the procedure waits on is in advisory locks, which no snapshot
//! hides: the runner's control session holds `(JOB_LOCK, hashtext(id))` from submission to
//! the job's end, and from a failure on holds `(FAILED_LOCK, hashtext(id))` until the job
//! is purged. The waiter takes and drops the first in shared mode, then tries the second.
//! The runner only ever *tries* its locks: a client holding one of these keys itself (any
//! role may take advisory locks) can make a waiter wait or misread that one job, never
//! stall the runner.
//!
//! **The build runs as the client's role**, on a connection the runner opens for the job as
//! that role (trust over the private socket, as the endpoint's own relayed connections), so
//! a job can do nothing its submitter could not; its text is the one statement PostgreSQL's
//! parser delimited, `ASYNC` removed.
//!
//! **Bounded.** At most [`MAX_QUEUED_JOBS`] jobs wait for the runner (one more is refused
//! with 54000), one builds at a time; jobs `completed` or `failed` for 30 minutes are purged
//! when a new one is submitted, as DSQL does.
//!
//! Approximations: the job is submitted when the statement runs, even if its transaction
//! later rolls back, and in the extended protocol when it is prepared (Parse), not executed;
//! PostgreSQL's `CREATE INDEX` blocks writes to the table while it builds (DSQL's does not),
//! and a failed build leaves no INVALID index behind; a well-formed id no job has answers
//! 42704 (DSQL's answer was never seen).

use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;
use tokio_postgres::Client;

use super::parse::Classified;
use super::relay::Refusals;
use super::rules::{Kind, Refusal};
use crate::local::postgres::{PgServer, Upstream};

/// Jobs waiting for the runner; one more is refused.
pub(crate) const MAX_QUEUED_JOBS: usize = 16;
/// Advisory lock class held while a job is queued or running.
const JOB_LOCK: i32 = 0x6a6f_6273;
/// Advisory lock class held once a job failed.
const FAILED_LOCK: i32 = 0x6661_696c;
/// `details` of a unique build that found duplicates (DSQL's words).
const DUPLICATE_DETAILS: &str = "Found duplicate key while validating index for UCVs";

/// The sys schema's jobs, run by the superuser at every start (idempotent).
pub(crate) fn jobs_sql() -> String {
    format!(
        r#"
SET search_path = pg_catalog;
CREATE SCHEMA IF NOT EXISTS dsql_pgx;
REVOKE ALL ON SCHEMA dsql_pgx FROM PUBLIC;
CREATE TABLE IF NOT EXISTS dsql_pgx.jobs (
  job_id text PRIMARY KEY,
  status text NOT NULL,
  details text,
  job_type text NOT NULL,
  class_id oid,
  object_id oid,
  object_name text,
  start_time timestamptz NOT NULL,
  update_time timestamptz NOT NULL
);
REVOKE ALL ON dsql_pgx.jobs FROM PUBLIC;
-- Jobs of an earlier run that never finished: their runner is gone.
UPDATE dsql_pgx.jobs SET status = 'failed', details = 'the local endpoint restarted',
  update_time = date_trunc('second', now()) WHERE status IN ('submitted', 'processing');
CREATE SCHEMA IF NOT EXISTS sys;
REVOKE CREATE ON SCHEMA sys FROM PUBLIC;
GRANT USAGE ON SCHEMA sys TO PUBLIC;
CREATE OR REPLACE VIEW sys.jobs AS
  SELECT job_id, status, details, job_type, class_id, object_id, object_name, start_time,
         update_time
    FROM dsql_pgx.jobs;
REVOKE ALL ON sys.jobs FROM PUBLIC;
GRANT SELECT ON sys.jobs TO PUBLIC;
-- Waiting is its purpose: not bound by the session's short lock_timeout (OCC's).
CREATE OR REPLACE PROCEDURE sys.wait_for_job(job_id text, INOUT succeeded boolean DEFAULT NULL)
LANGUAGE plpgsql
-- It waits for the job's lock: not subject to the sessions' short OCC lock_timeout.
SET lock_timeout = 0
AS $fn$
DECLARE
  k integer;
BEGIN
  IF wait_for_job.job_id IS NULL
     OR wait_for_job.job_id OPERATOR(pg_catalog.!~) '^[a-z2-7]{{25}}[aeimquy4]$' THEN
    RAISE EXCEPTION 'Unable to convert text to UUID' USING ERRCODE = 'invalid_text_representation';
  END IF;
  IF NOT EXISTS (SELECT FROM sys.jobs j WHERE j.job_id OPERATOR(pg_catalog.=) wait_for_job.job_id) THEN
    RAISE EXCEPTION 'job % does not exist', wait_for_job.job_id USING ERRCODE = 'undefined_object';
  END IF;
  k := pg_catalog.hashtext(wait_for_job.job_id);
  PERFORM pg_catalog.pg_advisory_lock_shared({JOB_LOCK}, k);
  PERFORM pg_catalog.pg_advisory_unlock_shared({JOB_LOCK}, k);
  succeeded := pg_catalog.pg_try_advisory_lock_shared({FAILED_LOCK}, k);
  IF succeeded THEN
    PERFORM pg_catalog.pg_advisory_unlock_shared({FAILED_LOCK}, k);
  END IF;
END
$fn$;
REVOKE ALL ON PROCEDURE sys.wait_for_job(text, boolean) FROM PUBLIC;
GRANT EXECUTE ON PROCEDURE sys.wait_for_job(text, boolean) TO PUBLIC;
"#
    )
}

/// What a job does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum JobKind {
    /// `CREATE INDEX ASYNC`.
    IndexBuild,
    /// `ALTER TABLE ASYNC ... VALIDATE CONSTRAINT`.
    Validate,
}

impl JobKind {
    /// The command tag DSQL answers the statement with.
    pub(crate) fn tag(self) -> &'static str {
        match self {
            Self::IndexBuild => "CREATE INDEX",
            Self::Validate => "ALTER TABLE",
        }
    }

    /// `sys.jobs.job_type` (DSQL's for an index; the validation type was never seen).
    fn job_type(self) -> &'static str {
        match self {
            Self::IndexBuild => "INDEX_BUILD",
            Self::Validate => "VALIDATE_CONSTRAINT",
        }
    }

    /// The kind of the statement `ddl` (ASYNC follows `CREATE [UNIQUE] INDEX` or `ALTER
    /// TABLE`).
    pub(crate) fn of(ddl: &str) -> Self {
        if first_word(ddl).eq_ignore_ascii_case("alter") {
            Self::Validate
        } else {
            Self::IndexBuild
        }
    }
}

/// The first word of `sql`, past whitespace and comments.
fn first_word(mut sql: &str) -> &str {
    loop {
        sql = sql.trim_start();
        if let Some(rest) = sql.strip_prefix("--") {
            sql = rest.split_once('\n').map_or("", |(_, r)| r);
        } else if let Some(rest) = sql.strip_prefix("/*") {
            sql = rest.split_once("*/").map_or("", |(_, r)| r);
        } else {
            let end = sql
                .find(|c: char| !c.is_ascii_alphabetic())
                .unwrap_or(sql.len());
            return &sql[..end];
        }
    }
}

/// A new job id: 16 random bytes in lowercase unpadded RFC 4648 base32 (26 characters).
pub(crate) fn new_job_id() -> String {
    let bytes: [u8; 16] = rand::random();
    data_encoding::BASE32_NOPAD
        .encode(&bytes)
        .to_ascii_lowercase()
}

/// One job handed to the runner.
#[derive(Debug)]
struct Build {
    id: String,
    ddl: String,
    role: String,
}

/// The endpoint's job runner: submission (on the control session) and the queue.
pub(crate) struct Jobs {
    control: Arc<Client>,
    queue: mpsc::Sender<Build>,
}

impl std::fmt::Debug for Jobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jobs").finish_non_exhaustive()
    }
}

fn too_many_jobs() -> Refusal {
    Refusal::new(
        "54000",
        format!("more than {MAX_QUEUED_JOBS} asynchronous jobs are queued; wait for one"),
    )
}

fn runner_failed() -> Refusal {
    Refusal::new("58000", "the local endpoint's job runner is not available")
}

impl Jobs {
    /// Creates the sys schema's jobs in `pg` and starts the runner (on the current Tokio
    /// runtime); it ends when the returned value is dropped.
    pub(crate) async fn start(pg: &PgServer) -> anyhow::Result<Self> {
        let control = Arc::new(pg.admin_client().await?);
        control.batch_execute(&jobs_sql()).await?;
        control.batch_execute(super::iam::IAM_SQL).await?;
        control.batch_execute(&super::rows::rows_sql()).await?;
        for sql in super::env::ENV_SQL {
            control.batch_execute(sql).await?;
        }
        // The failed jobs of an earlier run stay failed for their waiters.
        control
            .execute(
                "SELECT pg_try_advisory_lock($1, hashtext(job_id)) FROM dsql_pgx.jobs
                  WHERE status = 'failed'",
                &[&FAILED_LOCK],
            )
            .await?;
        let upstream = pg
            .upstream()
            .ok_or_else(|| anyhow::anyhow!("the private PostgreSQL is not running"))?;
        let (queue, rx) = mpsc::channel(MAX_QUEUED_JOBS);
        tokio::spawn(run(control.clone(), upstream, rx));
        Ok(Self { control, queue })
    }

    /// Submits `ddl` (one statement, `ASYNC` removed) to run as `role`; the job's id once
    /// `sys.jobs` shows it as submitted.
    pub(crate) async fn submit(&self, ddl: &str, role: &str) -> Result<String, Refusal> {
        let permit = self.queue.try_reserve().map_err(|_| too_many_jobs())?;
        let id = new_job_id();
        let kind = JobKind::of(ddl);
        let submitted = self
            .control
            .execute(
                "WITH purged AS (
                   DELETE FROM dsql_pgx.jobs
                    WHERE status IN ('completed', 'failed')
                      AND update_time < now() - interval '30 minutes'
                   RETURNING job_id, status)
                 SELECT pg_advisory_unlock($1, hashtext(job_id)) FROM purged
                  WHERE status = 'failed'",
                &[&FAILED_LOCK],
            )
            .await
            .and(Ok(()));
        let submitted = match submitted {
            Ok(()) => {
                self.control
                    .execute(
                        "SELECT pg_try_advisory_lock($1, hashtext($2::text))",
                        &[&JOB_LOCK, &id],
                    )
                    .await
            }
            Err(e) => Err(e),
        };
        let submitted = match submitted {
            Ok(_) => {
                self.control
                    .execute(
                        "INSERT INTO dsql_pgx.jobs
                           (job_id, status, job_type, class_id, start_time, update_time)
                         VALUES ($1, 'submitted', $2, 1259, date_trunc('second', now()),
                                 date_trunc('second', now()))",
                        &[&id, &kind.job_type()],
                    )
                    .await
            }
            Err(e) => Err(e),
        };
        if let Err(e) = submitted {
            tracing::warn!("submitting a job: {e}");
            return Err(runner_failed());
        }
        permit.send(Build {
            id: id.clone(),
            ddl: ddl.to_owned(),
            role: role.to_owned(),
        });
        Ok(id)
    }
}

/// Which text [`rewrite_in_query`] rewrites.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rewrite {
    /// A simple Query's; `measure`: its `COMMIT` ends a transaction whose size is checked;
    /// `flight`: the number of the ReadyForQuery that will answer it.
    Query { measure: bool, flight: u64 },
    /// A Parse's one statement (the row check runs after its Execute instead).
    Parse,
}

/// Rewrites the statements of a simple Query that run (those starting before `ran` in
/// `text`, the text PostgreSQL is to run): an `ASYNC` one is submitted and replaced by the
/// row of its job id, under the marker the response filter renames `job_id` (or, if it
/// cannot be submitted, by a refusal's stand-in); a question for the server version is
/// replaced by DSQL's answer ([`super::env::answer`]); with `measure`, a `COMMIT` is
/// preceded by the check of the transaction's size ([`super::size`]); a statement that may
/// modify rows is followed by the row check, and an end of transaction that another one
/// follows before the session is idle by the row baseline ([`super::rows`]). Without `jobs`
/// (job runner and role), an `ASYNC` statement is left as it is. An `AWS IAM` statement's
/// call gets the marker the filter answers DSQL's tag for, or in a Parse becomes a `CALL`
/// (no rows; its tag stays `CALL`).
pub(crate) async fn rewrite_in_query(
    jobs: Option<(&Jobs, &str)>,
    c: &Classified,
    mut text: String,
    ran: usize,
    refusals: &Mutex<Refusals>,
    what: Rewrite,
) -> String {
    let (simple, measure, flight) = match what {
        Rewrite::Query { measure, flight } => (true, measure, flight),
        Rewrite::Parse => (false, false, 0),
    };
    // The open transaction ends at the first end of transaction.
    let commit_at = c
        .statements
        .iter()
        .position(|s| s.verdict == Ok(Kind::End))
        .filter(|_| measure);
    let lock = || refusals.lock().unwrap_or_else(|p| p.into_inner());
    // The statements that run.
    let running = c.statements.iter().take_while(|s| s.start < ran).count();
    // Last first, so the offsets of the earlier ones hold.
    for (i, st) in c.statements.iter().enumerate().rev() {
        if st.verdict.is_err() || st.start >= ran {
            continue;
        }
        let end = c
            .statements
            .get(i + 1)
            .map_or(text.len(), |next| next.start)
            .min(ran);
        let Some(span) = text.get(st.start..end) else {
            continue;
        };
        let trimmed = span.trim_end();
        let ddl = trimmed.strip_suffix(';').unwrap_or(trimmed).to_owned();
        // After the statement (on a line of its own: the statement may end in a comment).
        let after = match st.verdict {
            _ if !simple => None,
            Ok(Kind::Dml) => Some(super::rows::CHECK),
            Ok(Kind::Other) if st.user_code => Some(super::rows::CHECK),
            Ok(Kind::End) if i + 1 < running || st.chains => Some(super::rows::BASELINE),
            _ => None,
        };
        if let Some(after) = after {
            lock().expect_check(flight);
            let mut insert = format!("\n;{after};\n");
            if st.chains {
                // The transaction `AND CHAIN` begins gets OCC's savepoint, as a `BEGIN` does
                // (its tag is the relay's too).
                lock().expect_check(flight);
                insert.push_str(super::occ::SAVEPOINT_SQL);
                insert.push_str(";\n");
            }
            text.insert_str(end, &insert);
        }
        if commit_at == Some(i) && super::size::commits(&ddl) {
            text.insert_str(st.start, &super::size::check_sql());
            continue;
        }
        if let Some(call) = st.iam {
            let (from, to) = (st.start + call.from, st.start + call.to);
            let Some(sql) = text.get(from..to) else {
                continue;
            };
            let replacement = if simple {
                Some(format!("{sql} AS \"{}\"", lock().iam_marker(call.op)))
            } else {
                super::iam::as_procedure_call(sql)
            };
            if let Some(replacement) = replacement {
                text.replace_range(from..to, &replacement);
            }
            continue;
        }
        if !st.is_async {
            if let Some(answer) = super::env::answer(&ddl) {
                text.replace_range(st.start..st.start + ddl.len(), &answer);
            }
            continue;
        }
        let Some((jobs, role)) = jobs else {
            continue;
        };
        let replacement = match jobs.submit(&ddl, role).await {
            Ok(id) => {
                let marker = lock().job_marker(JobKind::of(&ddl));
                format!("SELECT '{id}'::text AS \"{marker}\"")
            }
            Err(r) => lock().stand_in(r),
        };
        text.replace_range(st.start..st.start + ddl.len(), &replacement);
    }
    text
}

/// Runs the queued jobs one at a time until the queue's sender is dropped.
async fn run(control: Arc<Client>, upstream: Upstream, mut rx: mpsc::Receiver<Build>) {
    while let Some(job) = rx.recv().await {
        let _ = control
            .execute(
                "UPDATE dsql_pgx.jobs SET status = 'processing',
                        update_time = date_trunc('second', now()) WHERE job_id = $1",
                &[&job.id],
            )
            .await;
        let outcome = build(&upstream, &job).await;
        let (status, details, object) = match outcome {
            Ok(object) => ("completed", None, object),
            Err(details) => ("failed", Some(details), None),
        };
        let (object_id, object_name) = object.unzip();
        let ended = control
            .execute(
                "UPDATE dsql_pgx.jobs SET status = $2, details = $3, object_id = $4,
                        object_name = $5, update_time = date_trunc('second', now())
                  WHERE job_id = $1",
                &[&job.id, &status, &details, &object_id, &object_name],
            )
            .await;
        if status == "failed" {
            let _ = control
                .execute(
                    "SELECT pg_try_advisory_lock($1, hashtext($2::text))",
                    &[&FAILED_LOCK, &job.id],
                )
                .await;
        }
        let _ = control
            .execute(
                "SELECT pg_advisory_unlock($1, hashtext($2::text))",
                &[&JOB_LOCK, &job.id],
            )
            .await;
        if let Err(e) = ended {
            tracing::warn!(job = %job.id, "recording the end of a job: {e}");
        }
    }
}

/// Runs one job as its role: the object it made (oid, schema-qualified name), or why it
/// failed (`details`).
async fn build(
    upstream: &Upstream,
    job: &Build,
) -> Result<Option<(tokio_postgres::types::Oid, String)>, String> {
    let stream = upstream
        .connect()
        .await
        .map_err(|e| format!("connecting to build: {e}"))?;
    let (client, conn) = tokio_postgres::Config::new()
        .user(&job.role)
        .dbname("postgres")
        .connect_raw(stream, tokio_postgres::NoTls)
        .await
        .map_err(|e| format!("connecting to build: {e}"))?;
    let conn = tokio::spawn(conn);
    let built = async {
        client.batch_execute("BEGIN").await?;
        client.batch_execute(&job.ddl).await?;
        // The index this transaction created (none when IF NOT EXISTS found one).
        let row = client
            .query_opt(
                "SELECT c.oid, n.nspname || '.' || c.relname
                   FROM pg_catalog.pg_class c
                   JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                  WHERE c.relkind = 'i'
                    AND c.xmin::text = (pg_catalog.pg_current_xact_id()::text::numeric
                                        % 4294967296)::text",
                &[],
            )
            .await?;
        client.batch_execute("COMMIT").await?;
        Ok::<_, tokio_postgres::Error>(row.map(|r| (r.get(0), r.get(1))))
    }
    .await;
    drop(client);
    let _ = conn.await;
    built.map_err(|e| match e.as_db_error() {
        Some(db) if db.code().code() == "23505" => DUPLICATE_DETAILS.to_owned(),
        Some(db) => db.message().to_owned(),
        None => e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_ids_are_26_lowercase_base32_characters_of_16_bytes() {
        let id = new_job_id();
        assert_eq!(id.len(), 26);
        assert!(
            id.bytes()
                .all(|b| b.is_ascii_lowercase() || (b'2'..=b'7').contains(&b))
        );
        let decoded = data_encoding::BASE32_NOPAD
            .decode(id.to_ascii_uppercase().as_bytes())
            .unwrap();
        assert_eq!(decoded.len(), 16);
        assert_ne!(new_job_id(), id);
    }

    #[test]
    fn the_kind_is_the_first_word_past_comments() {
        assert_eq!(JobKind::of("CREATE INDEX i ON t (a)"), JobKind::IndexBuild);
        assert_eq!(
            JobKind::of(" -- x\n /* y */ alter table t validate constraint c"),
            JobKind::Validate
        );
        assert_eq!(JobKind::of("/* unterminated"), JobKind::IndexBuild);
    }
}
