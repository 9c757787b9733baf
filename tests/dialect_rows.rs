//! DSQL's 3,000 modified rows per transaction through the real endpoint and tokio-postgres
//! (`../shared/reference/dsql-dialect.md` §1, §7): the statement that takes the count past
//! 3,000 fails with 54000 `transaction row limit exceeded`, inside `BEGIN` the transaction is
//! then failed (25P02 afterwards, and nothing of it survives its `COMMIT`), in autocommit
//! nothing of the statement commits; every way of sending the rows counts (one Query string
//! with its `COMMIT`, a multi-statement implicit transaction, a data-modifying CTE, `AND
//! CHAIN`, pipelined extended-protocol statements), and committed rows never count again.

mod common;

use common::TestEndpoint;
use tokio_postgres::Client;

/// What DSQL answers a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Ok,
    Err(&'static str, &'static str),
}

use Expect::{Err as E, Ok as OK};

const OVER: Expect = E("54000", "transaction row limit exceeded");
const ABORTED: Expect = E(
    "25P02",
    "current transaction is aborted, commands ignored until end of transaction block",
);

/// A case: simple-Query steps on a fresh connection and table (`{r}` in a step), each with
/// DSQL's answer, and the rows the table holds afterwards.
struct Case {
    name: &'static str,
    steps: Vec<(String, Expect)>,
    rows_after: i64,
}

/// `INSERT` of `n` rows starting at id `from`.
fn insert(n: i64, from: i64) -> String {
    format!(
        "INSERT INTO {{r}} SELECT g FROM generate_series({from}, {}) g",
        from + n - 1
    )
}

fn step(sql: &str, expect: Expect) -> (String, Expect) {
    (sql.to_owned(), expect)
}

fn cases() -> Vec<Case> {
    let mut cases = vec![
        Case {
            name: "exactly 3,000 rows in a transaction commit",
            steps: vec![
                step("BEGIN", OK),
                (insert(1000, 1), OK),
                (insert(2000, 1001), OK),
                step("COMMIT", OK),
            ],
            rows_after: 3000,
        },
        Case {
            name: "the 3,001st row fails its statement and the transaction",
            steps: vec![
                step("BEGIN", OK),
                (insert(2000, 1), OK),
                (insert(1001, 2001), OVER),
                step("SELECT 1", ABORTED),
                (insert(1, 9000), ABORTED),
                step("COMMIT", OK),
                step("SELECT 1", OK),
            ],
            rows_after: 0,
        },
        Case {
            name: "BEGIN, 3,001 rows and COMMIT in one Query string",
            steps: vec![
                (format!("BEGIN; {}; COMMIT", insert(3001, 1)), OVER),
                step("SELECT 1", ABORTED),
                step("COMMIT", OK),
            ],
            rows_after: 0,
        },
        Case {
            name: "a crossing statement between others in one Query string",
            steps: vec![
                (
                    format!(
                        "BEGIN; {}; {}; {}; COMMIT",
                        insert(2000, 1),
                        insert(1001, 2001),
                        insert(1, 5000)
                    ),
                    OVER,
                ),
                step("SELECT 1", ABORTED),
                step("ROLLBACK", OK),
            ],
            rows_after: 0,
        },
        Case {
            name: "a multi-statement Query is one implicit transaction",
            steps: vec![
                (format!("{}; {}", insert(2000, 1), insert(2000, 2001)), OVER),
                step("SELECT 1", OK),
            ],
            rows_after: 0,
        },
        Case {
            name: "DML inside a CTE, in a transaction",
            steps: vec![
                step("BEGIN", OK),
                (
                    "WITH x AS (INSERT INTO {r} SELECT g FROM generate_series(1, 3001) g \
                     RETURNING 1) SELECT count(*) FROM x"
                        .to_owned(),
                    OVER,
                ),
                step("SELECT 1", ABORTED),
                step("COMMIT", OK),
            ],
            rows_after: 0,
        },
        Case {
            name: "DML inside a CTE, in autocommit",
            steps: vec![(
                "WITH x AS (INSERT INTO {r} SELECT g FROM generate_series(1, 3001) g \
                 RETURNING 1) SELECT count(*) FROM x"
                    .to_owned(),
                OVER,
            )],
            rows_after: 0,
        },
        Case {
            name: "one autocommit statement of 3,001 rows commits nothing",
            steps: vec![(insert(3001, 1), OVER), step("SELECT 1", OK)],
            rows_after: 0,
        },
        Case {
            name: "COMMIT AND CHAIN starts the count again, and the chained one is limited",
            steps: vec![
                step("BEGIN", OK),
                (insert(2000, 1), OK),
                step("COMMIT AND CHAIN", OK),
                (insert(2000, 2001), OK),
                (insert(1001, 4001), OVER),
                step("SELECT 1", ABORTED),
                step("COMMIT", OK),
            ],
            rows_after: 2000,
        },
        Case {
            name: "ROLLBACK AND CHAIN starts the count again, and the chained one is limited",
            steps: vec![
                step("BEGIN", OK),
                (insert(2000, 1), OK),
                step("ROLLBACK AND CHAIN", OK),
                (insert(3000, 1), OK),
                (insert(1, 5000), OVER),
                step("COMMIT", OK),
            ],
            rows_after: 0,
        },
        Case {
            name: "COMMIT right after the crossing statement answers ROLLBACK",
            steps: vec![
                step("BEGIN", OK),
                (insert(3001, 1), OVER),
                step("COMMIT", OK),
                (insert(3000, 1), OK),
            ],
            rows_after: 3000,
        },
        Case {
            name: "rows deleted by ON DELETE CASCADE count",
            steps: vec![
                step("CREATE TABLE {r}_p (id int PRIMARY KEY)", OK),
                step(
                    "CREATE TABLE {r}_c (id int PRIMARY KEY, \
                     p int REFERENCES {r}_p ON DELETE CASCADE)",
                    OK,
                ),
                step("INSERT INTO {r}_p VALUES (1)", OK),
                step(
                    "INSERT INTO {r}_c SELECT g, 1 FROM generate_series(1, 2000) g",
                    OK,
                ),
                step("BEGIN", OK),
                (insert(1000, 1), OK),
                step("DELETE FROM {r}_p", OVER),
                step("COMMIT", OK),
                step("SELECT 1 FROM {r}_c WHERE id = 2000", OK),
            ],
            rows_after: 0,
        },
        Case {
            name: "two transactions in one Query string are counted apart",
            steps: vec![(
                format!(
                    "BEGIN; {}; COMMIT; BEGIN; {}; COMMIT",
                    insert(2000, 1),
                    insert(2000, 2001)
                ),
                OK,
            )],
            rows_after: 4000,
        },
        Case {
            name: "a statement after a COMMIT in the same string is its own transaction",
            steps: vec![(
                format!("BEGIN; {}; COMMIT; {}", insert(2000, 1), insert(2000, 2001)),
                OK,
            )],
            rows_after: 4000,
        },
        Case {
            name: "rows a SQL function writes, called by a plain SELECT",
            steps: vec![
                step(
                    "CREATE FUNCTION {r}_f() RETURNS int LANGUAGE sql AS \
                     'INSERT INTO {r} SELECT g FROM generate_series(1, 3001) g RETURNING 1'",
                    OK,
                ),
                step("SELECT {r}_f()", OVER),
                step("SELECT x FROM public.{r}_f() x", OVER),
                step("BEGIN", OK),
                step("SELECT {r}_f()", OVER),
                step("COMMIT", OK),
            ],
            rows_after: 0,
        },
    ];
    // Many autocommit statements of 2,000 rows each, back to back, never reach the limit.
    let mut steps = Vec::new();
    for i in 0..6 {
        steps.push((insert(2000, 1 + i * 2000), OK));
        steps.push(("UPDATE {r} SET id = -id WHERE id > 0".to_owned(), OK));
        steps.push(("DELETE FROM {r} WHERE id < 0".to_owned(), OK));
    }
    cases.push(Case {
        name: "autocommit statements of 2,000 rows each, many in a row",
        steps,
        rows_after: 0,
    });
    cases
}

async fn run_step(client: &Client, sql: &str) -> Expect {
    match client.batch_execute(sql).await {
        Ok(()) => OK,
        Err(e) => match e.as_db_error() {
            Some(db) => {
                let code: &'static str = Box::leak(db.code().code().to_owned().into_boxed_str());
                let msg: &'static str = Box::leak(db.message().to_owned().into_boxed_str());
                Expect::Err(code, msg)
            }
            None => panic!("{sql}: not a database error: {e}"),
        },
    }
}

async fn count(client: &Client, table: &str) -> i64 {
    client
        .query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await
        .unwrap()
        .get(0)
}

/// Every case through the simple Query protocol.
#[tokio::test]
async fn the_row_limit_holds_however_the_rows_are_sent() {
    let ep = TestEndpoint::start().await;
    let setup = ep.connect("admin").await.unwrap();
    let cases = cases();
    let mut unlike = Vec::new();
    for (i, c) in cases.iter().enumerate() {
        let table = format!("r{i}");
        setup
            .batch_execute(&format!("CREATE TABLE {table} (id int PRIMARY KEY)"))
            .await
            .unwrap();
        let client = ep.connect("admin").await.unwrap();
        for (sql, want) in &c.steps {
            let sql = sql.replace("{r}", &table);
            let got = run_step(&client, &sql).await;
            if got != *want {
                unlike.push(format!("{}: {sql}: got {got:?}, want {want:?}", c.name));
                break;
            }
        }
        let n = count(&setup, &table).await;
        if n != c.rows_after {
            unlike.push(format!("{}: {n} rows after, want {}", c.name, c.rows_after));
        }
    }
    ep.stop().await;
    assert!(unlike.is_empty(), "{}", unlike.join("\n"));
}

fn code(e: &tokio_postgres::Error) -> (String, String) {
    let db = e
        .as_db_error()
        .unwrap_or_else(|| panic!("not a database error: {e}"));
    (db.code().code().to_owned(), db.message().to_owned())
}

fn over() -> (String, String) {
    ("54000".into(), "transaction row limit exceeded".into())
}

/// The extended protocol, statements pipelined (sent before the answers to the earlier ones
/// came): the crossing one fails, later ones of its transaction get 25P02, and committed
/// autocommit rows never count again.
#[tokio::test]
async fn the_row_limit_holds_for_pipelined_extended_statements() {
    let ep = TestEndpoint::start().await;
    let mut client = ep.connect("admin").await.unwrap();
    client
        .batch_execute("CREATE TABLE x (id int PRIMARY KEY)")
        .await
        .unwrap();
    let ins = client
        .prepare("INSERT INTO x SELECT g FROM generate_series($1::int, $2::int) g")
        .await
        .unwrap();
    // Autocommit, 2,000 rows each, pipelined: every one commits.
    let bounds: Vec<[i32; 2]> = (0..5).map(|i| [1 + i * 2000, 2000 + i * 2000]).collect();
    let params: Vec<[&(dyn tokio_postgres::types::ToSql + Sync); 2]> = bounds
        .iter()
        .map(|[from, to]| [from as _, to as _])
        .collect();
    let runs: Vec<_> = params.iter().map(|p| client.execute(&ins, p)).collect();
    for r in futures_util::future::join_all(runs).await {
        assert_eq!(r.unwrap(), 2000);
    }
    assert_eq!(count(&client, "x").await, 10_000);
    // Autocommit, one statement of 3,001 rows: nothing commits.
    let err = client
        .execute(&ins, &[&20_001i32, &23_001i32])
        .await
        .unwrap_err();
    assert_eq!(code(&err), over());
    assert_eq!(count(&client, "x").await, 10_000);
    // In a transaction, pipelined: the second crosses, the third is aborted.
    let tx = client.transaction().await.unwrap();
    let (a, b, c) = tokio::join!(
        tx.execute(&ins, &[&30_001i32, &32_000i32]),
        tx.execute(&ins, &[&32_001i32, &33_001i32]),
        tx.execute(&ins, &[&40_001i32, &40_001i32]),
    );
    assert_eq!(a.unwrap(), 2000);
    assert_eq!(code(&b.unwrap_err()), over());
    assert_eq!(code(&c.unwrap_err()).0, "25P02");
    tx.commit().await.unwrap();
    assert_eq!(count(&client, "x").await, 10_000, "no rows survive");
    // Exactly 3,000 in a transaction commit.
    let tx = client.transaction().await.unwrap();
    let (a, b) = tokio::join!(
        tx.execute(&ins, &[&50_001i32, &51_000i32]),
        tx.execute(&ins, &[&51_001i32, &53_000i32]),
    );
    assert_eq!((a.unwrap(), b.unwrap()), (1000, 2000));
    tx.commit().await.unwrap();
    assert_eq!(count(&client, "x").await, 13_000);
    // A data-modifying CTE, prepared.
    let cte = client
        .prepare("WITH w AS (DELETE FROM x WHERE id > 50000 RETURNING 1) SELECT count(*) FROM w")
        .await
        .unwrap();
    let tx = client.transaction().await.unwrap();
    tx.execute(&ins, &[&60_001i32, &60_001i32]).await.unwrap();
    let err = tx.query(&cte, &[]).await.unwrap_err();
    assert_eq!(code(&err), over());
    tx.rollback().await.unwrap();
    let n: i64 = client.query_one(&cte, &[]).await.unwrap().get(0);
    assert_eq!(n, 3000, "3,000 in autocommit are fine");
    ep.stop().await;
}

/// A function that writes rows, called through the extended protocol: its rows count too.
#[tokio::test]
async fn rows_a_function_writes_count_in_the_extended_protocol() {
    let ep = TestEndpoint::start().await;
    let c = ep.connect("admin").await.unwrap();
    c.batch_execute("CREATE TABLE w (id int PRIMARY KEY)")
        .await
        .unwrap();
    c.batch_execute(
        "CREATE FUNCTION w_f(n int) RETURNS int LANGUAGE sql AS \
         'INSERT INTO w SELECT g FROM generate_series(1, n) g RETURNING 1'",
    )
    .await
    .unwrap();
    let e = c.query("SELECT w_f($1)", &[&3001i32]).await.unwrap_err();
    assert_eq!(code(&e), over());
    assert_eq!(count(&c, "w").await, 0);
    c.query("SELECT w_f($1)", &[&3000i32]).await.unwrap();
    assert_eq!(count(&c, "w").await, 3000);
    ep.stop().await;
}
