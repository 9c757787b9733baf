//! DSQL's optimistic concurrency through the real endpoint (`../shared/reference/dsql-dialect.md`
//! §8): real concurrent sessions (tokio-postgres over IAM), where no statement waits for
//! another transaction and a lost write-write conflict fails at `COMMIT` with 40001 OC000.
//! Every step is bounded by [`STEP`], far above its normal time: a statement that waited
//! for another transaction's lock would wait for good (each session waits for the test's
//! next step), so a wait fails the test instead of hanging it.

mod common;

use std::future::Future;
use std::time::Duration;

use common::TestEndpoint;
use dsql_pgx::Pool;
use dsql_pgx::local::Limits;
use dsql_pgx::retry::{ConflictKind, RetryEvent, RetryPolicy};
use tokio_postgres::{Client, SimpleQueryMessage};

const OC000: &str = "change conflicts with another transaction (OC000)";
const OC001: &str = "schema has been updated by another transaction (OC001)";
/// The bound on one step.
const STEP: Duration = Duration::from_secs(60);

async fn step<F: Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(STEP, f)
        .await
        .unwrap_or_else(|_| panic!("{what}: waited over {STEP:?} (blocked on another session?)"))
}

/// Runs `sql` (simple Query), which must succeed; returns the rows its last command reports.
async fn run(c: &Client, sql: &str) -> u64 {
    let messages = step(sql, c.simple_query(sql))
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    messages
        .iter()
        .rev()
        .find_map(|m| match m {
            SimpleQueryMessage::CommandComplete(n) => Some(*n),
            _ => None,
        })
        .unwrap_or(0)
}

/// Runs `sql` (simple Query), which must fail; returns SQLSTATE and message.
async fn fails(c: &Client, sql: &str) -> (String, String) {
    let e = step(sql, c.simple_query(sql))
        .await
        .err()
        .unwrap_or_else(|| panic!("{sql}: succeeded"));
    let db = e
        .as_db_error()
        .unwrap_or_else(|| panic!("{sql}: not a database error: {e}"));
    (db.code().code().to_owned(), db.message().to_owned())
}

fn conflict(message: &str) -> (String, String) {
    ("40001".to_owned(), message.to_owned())
}

async fn value(c: &Client, id: i32) -> i32 {
    step(
        "reading",
        c.query_one("SELECT v FROM t WHERE id = $1", &[&id]),
    )
    .await
    .unwrap()
    .get(0)
}

/// An endpoint with `t (id, v)` holding rows 1..=3 (v = 0), and `n` sessions.
async fn setup(n: usize) -> (TestEndpoint, Vec<Client>) {
    let ep = TestEndpoint::start().await;
    let mut sessions = Vec::new();
    for _ in 0..n {
        sessions.push(ep.connect("admin").await.unwrap());
    }
    run(&sessions[0], "CREATE TABLE t (id int PRIMARY KEY, v int)").await;
    run(&sessions[0], "INSERT INTO t VALUES (1, 0), (2, 0), (3, 0)").await;
    (ep, sessions)
}

#[tokio::test]
async fn two_writers_of_a_row_the_second_committer_fails_at_commit() {
    let (ep, s) = setup(2).await;
    let (a, b) = (&s[0], &s[1]);
    run(a, "BEGIN").await;
    run(b, "BEGIN -- a comment ends at the end of the line").await;
    assert_eq!(run(a, "UPDATE t SET v = 1 WHERE id = 1").await, 1);
    // Holds no lock wait: on PostgreSQL this UPDATE waits for `a`.
    run(b, "UPDATE t SET v = 2 WHERE id = 1").await;
    // Later statements of the conflicted transaction still run.
    assert_eq!(run(b, "UPDATE t SET v = 2 WHERE id = 2").await, 1);
    run(a, "COMMIT").await;
    assert_eq!(fails(b, "COMMIT").await, conflict(OC000));
    // Nothing of `b` committed, and its session goes on.
    assert_eq!((value(a, 1).await, value(a, 2).await), (1, 0));
    run(b, "BEGIN").await;
    assert_eq!(run(b, "UPDATE t SET v = 3 WHERE id = 1").await, 1);
    run(b, "COMMIT").await;
    assert_eq!(value(a, 1).await, 3);
    ep.stop().await;
}

#[tokio::test]
async fn the_snapshot_is_taken_at_begin_so_an_earlier_committer_wins() {
    let (ep, s) = setup(2).await;
    let (a, b) = (&s[0], &s[1]);
    run(a, "BEGIN").await;
    run(b, "BEGIN").await;
    run(a, "UPDATE t SET v = 1 WHERE id = 1").await;
    run(a, "COMMIT").await;
    // `b`'s snapshot is from its BEGIN, before `a` committed: on PostgreSQL (snapshot at the
    // first statement) this would succeed.
    run(b, "UPDATE t SET v = 2 WHERE id = 1").await;
    assert_eq!(fails(b, "COMMIT").await, conflict(OC000));
    assert_eq!(value(a, 1).await, 1);
    ep.stop().await;
}

#[tokio::test]
async fn plain_reads_and_disjoint_writes_never_conflict() {
    let (ep, s) = setup(2).await;
    let (a, b) = (&s[0], &s[1]);
    run(a, "BEGIN").await;
    run(b, "BEGIN").await;
    run(a, "UPDATE t SET v = 1 WHERE id = 1").await;
    assert_eq!(run(b, "UPDATE t SET v = 2 WHERE id = 2").await, 1);
    assert_eq!(run(b, "SELECT * FROM t WHERE id = 1").await, 1);
    run(b, "INSERT INTO t VALUES (4, 2)").await;
    run(b, "COMMIT").await;
    run(a, "COMMIT").await;
    let values = (value(a, 1).await, value(a, 2).await, value(a, 4).await);
    assert_eq!(values, (1, 2, 2));
    ep.stop().await;
}

/// Three sessions, one of them on the extended protocol (statements with parameters, its
/// `COMMIT` a prepared statement): the first committer wins, the others fail at `COMMIT`.
#[tokio::test]
async fn three_writers_of_a_row_the_first_committer_wins() {
    let (ep, s) = setup(3).await;
    let (a, b, c) = (&s[0], &s[1], &s[2]);
    for x in [a, b, c] {
        run(x, "BEGIN").await;
    }
    run(a, "UPDATE t SET v = 1 WHERE id = 1").await;
    run(b, "UPDATE t SET v = 2 WHERE id = 1").await;
    let update = c.execute("UPDATE t SET v = $1 WHERE id = $2", &[&3i32, &1i32]);
    step("extended UPDATE", update).await.unwrap();
    let read = c.query_one("SELECT v FROM t WHERE id = $1", &[&3i32]);
    assert_eq!(
        step("extended read", read).await.unwrap().get::<_, i32>(0),
        0
    );
    run(a, "COMMIT").await;
    assert_eq!(fails(b, "COMMIT").await, conflict(OC000));
    let commit = step("extended COMMIT", c.execute("COMMIT", &[])).await;
    let e = commit.expect_err("the third committer fails");
    let db = e.as_db_error().expect("a database error");
    assert_eq!((db.code().code(), db.message()), ("40001", OC000));
    assert_eq!(value(c, 1).await, 1);
    ep.stop().await;
}

/// `BEGIN` through the extended protocol (as pgJDBC and `Client::execute` send it): the
/// conflict still surfaces at `COMMIT`, not at the statement, and the loser's session goes on.
#[tokio::test]
async fn an_extended_protocol_begin_fails_at_commit_too() {
    let (ep, s) = setup(2).await;
    let (a, b) = (&s[0], &s[1]);
    for x in [a, b] {
        step("extended BEGIN", x.execute("BEGIN", &[]))
            .await
            .unwrap();
    }
    let update = "UPDATE t SET v = $1 WHERE id = $2";
    let n = step("UPDATE", a.execute(update, &[&1i32, &1i32])).await;
    assert_eq!(n.unwrap(), 1);
    // On PostgreSQL this waits for `a`; before the savepoint it failed here with OC000.
    let n = step("conflicting UPDATE", b.execute(update, &[&2i32, &1i32])).await;
    assert_eq!(n.unwrap(), 0);
    let n = step("later UPDATE", b.execute(update, &[&2i32, &2i32])).await;
    assert_eq!(
        n.unwrap(),
        1,
        "later statements of the doomed transaction run"
    );
    step("COMMIT", a.execute("COMMIT", &[])).await.unwrap();
    let e = step("COMMIT", b.execute("COMMIT", &[]))
        .await
        .expect_err("the loser fails");
    let db = e.as_db_error().expect("a database error");
    assert_eq!((db.code().code(), db.message()), ("40001", OC000));
    assert_eq!((value(a, 1).await, value(a, 2).await), (1, 0));
    // The savepoint's answers never reach the client: the next transaction is plain.
    step("BEGIN", b.execute("BEGIN", &[])).await.unwrap();
    let n = step("UPDATE", b.execute(update, &[&3i32, &1i32])).await;
    assert_eq!(n.unwrap(), 1);
    step("COMMIT", b.execute("COMMIT", &[])).await.unwrap();
    assert_eq!(value(a, 1).await, 3);
    ep.stop().await;
}

/// The transaction `COMMIT AND CHAIN` begins: its conflicts surface at `COMMIT` too.
#[tokio::test]
async fn a_chained_transaction_fails_at_commit_too() {
    let (ep, s) = setup(2).await;
    let (a, b) = (&s[0], &s[1]);
    run(a, "BEGIN").await;
    run(b, "BEGIN").await;
    assert_eq!(run(b, "UPDATE t SET v = 5 WHERE id = 3").await, 1);
    run(b, "COMMIT AND CHAIN").await;
    run(a, "UPDATE t SET v = 1 WHERE id = 1").await;
    // Before the chained transaction had a savepoint, this failed at once with OC000.
    run(b, "UPDATE t SET v = 2 WHERE id = 1").await;
    run(a, "COMMIT").await;
    assert_eq!(fails(b, "COMMIT").await, conflict(OC000));
    assert_eq!((value(a, 1).await, value(a, 3).await), (1, 5));
    ep.stop().await;
}

#[tokio::test]
async fn for_update_conflicts_with_a_write() {
    let (ep, s) = setup(2).await;
    let (a, b) = (&s[0], &s[1]);
    // FOR UPDATE first: the writer loses.
    run(a, "BEGIN").await;
    run(b, "BEGIN").await;
    assert_eq!(run(a, "SELECT * FROM t WHERE id = 1 FOR UPDATE").await, 1);
    run(b, "UPDATE t SET v = 2 WHERE id = 1").await;
    run(a, "COMMIT").await;
    assert_eq!(fails(b, "COMMIT").await, conflict(OC000));
    // The write first: FOR UPDATE does not wait, and its transaction loses.
    run(a, "BEGIN").await;
    run(b, "BEGIN").await;
    run(a, "UPDATE t SET v = 1 WHERE id = 2").await;
    run(b, "SELECT * FROM t WHERE id = 2 FOR UPDATE").await;
    run(a, "COMMIT").await;
    assert_eq!(fails(b, "COMMIT").await, conflict(OC000));
    assert_eq!((value(a, 1).await, value(a, 2).await), (0, 1));
    ep.stop().await;
}

#[tokio::test]
async fn autocommit_writes_conflict_on_the_statement_itself() {
    let (ep, s) = setup(2).await;
    let (a, b) = (&s[0], &s[1]);
    // A row an open transaction wrote: the autocommit UPDATE fails at once.
    run(a, "BEGIN").await;
    run(a, "UPDATE t SET v = 1 WHERE id = 1").await;
    assert_eq!(
        fails(b, "UPDATE t SET v = 2 WHERE id = 1").await,
        conflict(OC000)
    );
    run(a, "COMMIT").await;
    assert_eq!(value(b, 1).await, 1);
    // An autocommit UPDATE commits before the transaction that began earlier: it wins.
    run(a, "BEGIN").await;
    assert_eq!(run(b, "UPDATE t SET v = 5 WHERE id = 1").await, 1);
    run(a, "UPDATE t SET v = 6 WHERE id = 1").await;
    assert_eq!(fails(a, "COMMIT").await, conflict(OC000));
    assert_eq!(value(a, 1).await, 5);
    ep.stop().await;
}

#[tokio::test]
async fn a_schema_change_fails_open_transactions_with_oc001() {
    let (ep, s) = setup(2).await;
    let (a, b) = (&s[0], &s[1]);
    // At the next statement.
    run(a, "BEGIN").await;
    run(a, "SELECT * FROM t").await;
    run(b, "CREATE TABLE u (id int PRIMARY KEY)").await;
    assert_eq!(fails(a, "SELECT * FROM t").await, conflict(OC001));
    run(a, "ROLLBACK").await;
    // The retry succeeds.
    run(a, "BEGIN").await;
    run(a, "SELECT * FROM t").await;
    run(a, "COMMIT").await;
    // At COMMIT, and nothing of the transaction commits.
    run(a, "BEGIN").await;
    run(a, "INSERT INTO t VALUES (9, 9)").await;
    run(b, "CREATE TABLE w (id int PRIMARY KEY)").await;
    assert_eq!(fails(a, "COMMIT").await, conflict(OC001));
    assert_eq!(run(a, "SELECT * FROM t WHERE id = 9").await, 0);
    // A schema change that failed changes nothing.
    run(a, "BEGIN").await;
    fails(b, "CREATE TABLE w (id int PRIMARY KEY)").await;
    run(a, "SELECT * FROM t").await;
    run(a, "COMMIT").await;
    ep.stop().await;
}

/// The library's retry re-runs a unit whose `COMMIT` lost a conflict on `local`.
#[tokio::test]
async fn the_library_retry_reruns_a_conflict_at_commit() {
    let (ep, s) = setup(1).await;
    let other = &s[0];
    let pool = Pool::new(&ep.settings("admin")).await.unwrap();
    run(other, "BEGIN").await;
    run(other, "UPDATE t SET v = 10 WHERE id = 1").await;
    let mut attempts = 0;
    let mut seen = Vec::new();
    let mut on_retry = |e: &RetryEvent| seen.push(e.conflict.kind);
    let policy = RetryPolicy::default();
    let unit = dsql_pgx::retry::run(&pool, &policy, true, &mut on_retry, async |tx| {
        attempts += 1;
        tx.execute("UPDATE t SET v = v + 1 WHERE id = 1", &[])
            .await?;
        if attempts == 1 {
            // The other transaction wrote the row first and commits first.
            run(other, "COMMIT").await;
        }
        Ok(())
    });
    step("the retried unit", unit).await.unwrap();
    assert_eq!(attempts, 2);
    assert_eq!(seen, [ConflictKind::Data]);
    assert_eq!(value(other, 1).await, 11);
    ep.stop().await;
}

/// DSQL's transaction age limit is read on the endpoint's clock: stepping it past 300 s
/// fails the transaction's next statement.
#[tokio::test]
async fn the_transaction_age_limit_follows_the_endpoint_clock() {
    let ep = TestEndpoint::start_stepped(Limits::default()).await;
    let c = ep.connect("admin").await.unwrap();
    run(&c, "BEGIN").await;
    run(&c, "SELECT 1").await;
    ep.advance(Duration::from_secs(300));
    run(&c, "SELECT 1").await;
    ep.advance(Duration::from_secs(2));
    let (code, message) = fails(&c, "SELECT 1").await;
    assert_eq!(
        (code.as_str(), message.as_str()),
        ("54000", "transaction age limit of 300s exceeded")
    );
    run(&c, "ROLLBACK").await;
    run(&c, "BEGIN").await;
    run(&c, "SELECT 1").await;
    run(&c, "COMMIT").await;
    ep.stop().await;
}
