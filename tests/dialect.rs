//! DSQL's dialect through the real endpoint: statements with the answers DSQL gives
//! (`../shared/reference/dsql-dialect.md`), replayed with tokio-postgres, once against
//! `local` speaking DSQL and once against `local --dialect postgres` (plain PostgreSQL
//! behind IAM, the "before"); the figure "answers like DSQL N of M" is printed for both.

mod common;

use common::TestEndpoint;
use dsql_pgx::local::Dialect;
use tokio_postgres::Client;

/// What DSQL answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// Success.
    Ok,
    /// An error with this SQLSTATE and exact message.
    Err(&'static str, &'static str),
}

use Expect::{Err as E, Ok as OK};

const ABORTED: Expect = E(
    "25P02",
    "current transaction is aborted, commands ignored until end of transaction block",
);

/// Tables every case may use, made before the cases run.
const SETUP: &[&str] = &[
    "CREATE TABLE t (id int PRIMARY KEY, v text)",
    "CREATE TABLE parent (id int PRIMARY KEY)",
    "INSERT INTO t VALUES (1, 'a'), (2, 'b')",
];

/// A case: statements run in order on one fresh connection (simple Query protocol), each
/// with DSQL's answer.
struct Case {
    name: &'static str,
    steps: &'static [(&'static str, Expect)],
}

const fn case(name: &'static str, steps: &'static [(&'static str, Expect)]) -> Case {
    Case { name, steps }
}

macro_rules! one {
    ($sql:expr, $expect:expr) => {
        Case {
            name: $sql,
            steps: &[($sql, $expect)],
        }
    };
}

const UNSUP: &str = "0A000";

fn cases() -> Vec<Case> {
    vec![
        // §2a: unsupported statement: <Node>.
        one!("TRUNCATE t", E(UNSUP, "unsupported statement: Truncate")),
        one!(
            "CREATE EXTENSION pgcrypto",
            E(UNSUP, "unsupported statement: CreateExtension")
        ),
        one!(
            "CREATE DATABASE d2",
            E(UNSUP, "unsupported statement: Createdb")
        ),
        one!(
            "CREATE TABLE t2 AS SELECT * FROM t",
            E(UNSUP, "unsupported statement: CreateTableAs")
        ),
        one!(
            "CREATE MATERIALIZED VIEW mv AS SELECT 1",
            E(UNSUP, "unsupported statement: CreateTableAs")
        ),
        one!(
            "CREATE TYPE pair AS (a int, b int)",
            E(UNSUP, "unsupported statement: CompositeType")
        ),
        one!(
            "CREATE TYPE r AS RANGE (subtype = int4)",
            E(UNSUP, "unsupported statement: CreateRange")
        ),
        one!(
            "CREATE TABLESPACE ts LOCATION '/tmp'",
            E(UNSUP, "unsupported statement: CreateTableSpace")
        ),
        one!("LISTEN c", E(UNSUP, "unsupported statement: Listen")),
        one!("NOTIFY c", E(UNSUP, "unsupported statement: Notify")),
        one!("UNLISTEN c", E(UNSUP, "unsupported statement: Unlisten")),
        one!(
            "ALTER SYSTEM SET work_mem = '1MB'",
            E(UNSUP, "unsupported statement: AlterSystem")
        ),
        one!(
            "LOCK TABLE t IN ACCESS SHARE MODE",
            E(UNSUP, "unsupported statement: Lock")
        ),
        one!(
            "PREPARE p AS SELECT 1",
            E(UNSUP, "unsupported statement: Prepare")
        ),
        one!("DO $$ BEGIN END $$", E(UNSUP, "unsupported statement: Do")),
        // §2b: own wording.
        one!(
            "CREATE TRIGGER tr BEFORE INSERT ON t FOR EACH ROW EXECUTE FUNCTION f()",
            E(UNSUP, "CREATE TRIGGER not supported")
        ),
        one!(
            "CREATE TYPE m AS ENUM ('a', 'b')",
            E(UNSUP, "CREATE TYPE not supported")
        ),
        one!(
            "ALTER TYPE never_created ADD VALUE 'x'",
            E(UNSUP, "ALTER TYPE not supported")
        ),
        one!(
            "ALTER TYPE m RENAME TO m2",
            E(UNSUP, "unsupported object in RENAME statement")
        ),
        one!(
            "DROP TYPE IF EXISTS nothing_here",
            E(UNSUP, "unsupported object in DROP statement")
        ),
        one!(
            "CREATE TEMP TABLE tt (a int)",
            E(
                UNSUP,
                "TEMPORARY or TEMP table not supported for CREATE TABLE"
            )
        ),
        one!(
            "CREATE UNLOGGED TABLE ut (a int)",
            E(UNSUP, "UNLOGGED table not supported for CREATE TABLE")
        ),
        one!(
            "CREATE TABLE pt (a int) PARTITION BY RANGE (a)",
            E(UNSUP, "PARTITION BY clause not supported for CREATE TABLE")
        ),
        one!(
            "CREATE FUNCTION f() RETURNS int LANGUAGE plpgsql AS $$ BEGIN RETURN 1; END $$",
            E(UNSUP, "CREATE FUNCTION with language plpgsql not supported")
        ),
        one!(
            "CREATE PROCEDURE p() LANGUAGE sql AS $$ SELECT 1 $$",
            E(UNSUP, "PROCEDURE is not supported")
        ),
        one!("VACUUM t", E(UNSUP, "unsupported VACUUM statement")),
        one!("ANALYZE t", OK),
        one!(
            "MERGE INTO t USING parent p ON t.id = p.id WHEN MATCHED THEN DELETE",
            E(UNSUP, "unsupported statement type: MERGE")
        ),
        one!(
            "SAVEPOINT s",
            E(UNSUP, "unsupported transaction statement: SAVEPOINT")
        ),
        one!(
            "CREATE INDEX t_v ON t (v)",
            E(UNSUP, "unsupported mode. please use CREATE INDEX ASYNC.")
        ),
        one!(
            "CREATE INDEX CONCURRENTLY t_v ON t (v)",
            E(UNSUP, "CONCURRENTLY not supported for CREATE INDEX")
        ),
        one!(
            "CREATE INDEX ASYNC t_v2 ON t USING btree (v)",
            E(UNSUP, "USING not supported for CREATE INDEX")
        ),
        one!(
            "CREATE INDEX ASYNC t_v3 ON t (v DESC)",
            E(UNSUP, "specifying sort order not supported for index keys")
        ),
        one!(
            "CREATE INDEX ASYNC t_v4 ON t (v text_pattern_ops)",
            E(UNSUP, "opclass not supported for index keys")
        ),
        // §3: supported.
        one!("CREATE DOMAIN dm AS text CHECK (VALUE IN ('a', 'b'))", OK),
        one!(
            "CREATE FUNCTION sq(int) RETURNS int LANGUAGE sql AS $$ SELECT $1 * $1 $$",
            OK
        ),
        one!("CREATE VIEW vw AS SELECT * FROM t", OK),
        one!("CREATE SEQUENCE s1 CACHE 1", OK),
        one!("CREATE SEQUENCE s2 CACHE 65536", OK),
        one!(
            "CREATE SEQUENCE s3",
            E(
                UNSUP,
                "CREATE SEQUENCE is not supported without an explicit cache size. please define CACHE greater than or equal to 65536 or equal to 1"
            )
        ),
        one!("BEGIN ISOLATION LEVEL REPEATABLE READ", OK),
        one!("BEGIN READ ONLY", OK),
        one!("EXPLAIN SELECT * FROM t", OK),
        one!(
            "INSERT INTO t VALUES (3, 'c') ON CONFLICT (id) DO NOTHING RETURNING id",
            OK
        ),
        // §4: column types.
        one!(
            "CREATE TABLE ty1 (a smallint, b integer, c bigint, d real, e double precision, f numeric(10,2), g decimal, h char(3), i varchar(9), j text, k date, l time, m timetz, n timestamp, o timestamptz, p interval, q boolean, r bytea, s uuid, u json, w jsonb)",
            OK
        ),
        one!(
            "CREATE TABLE ty2 (a money)",
            E(UNSUP, "datatype money not supported")
        ),
        one!(
            "CREATE TABLE ty3 (a inet)",
            E(UNSUP, "datatype inet not supported")
        ),
        one!(
            "CREATE TABLE ty4 (a bit(8))",
            E(UNSUP, "datatype bit not supported")
        ),
        one!(
            "CREATE TABLE ty5 (a varbit(8))",
            E(UNSUP, "datatype bit varying not supported")
        ),
        one!(
            "CREATE TABLE ty6 (a int[])",
            E(UNSUP, "datatype integer[] not supported")
        ),
        one!(
            "CREATE TABLE ty7 (a text[])",
            E(UNSUP, "datatype text[] not supported")
        ),
        one!(
            "CREATE TABLE ty8 (a serial)",
            E("42704", "type \"serial\" does not exist")
        ),
        one!(
            "ALTER TABLE t ADD COLUMN c money",
            E(UNSUP, "datatype money not supported")
        ),
        one!(
            "ALTER TABLE t ADD COLUMN c serial",
            E("42704", "type \"serial\" does not exist")
        ),
        one!(
            "CREATE TABLE id1 (a bigint GENERATED ALWAYS AS IDENTITY (CACHE 1))",
            OK
        ),
        one!(
            "CREATE TABLE id2 (a bigint GENERATED ALWAYS AS IDENTITY)",
            E(
                UNSUP,
                "identity column is not supported without an explicit cache size. please define CACHE greater than or equal to 65536 or equal to 1"
            )
        ),
        one!(
            "CREATE TABLE id3 (a integer GENERATED ALWAYS AS IDENTITY (CACHE 1))",
            E(
                UNSUP,
                "datatype integer not supported, identity column type must be bigint"
            )
        ),
        one!(
            "SELECT line('{1,2,3}')",
            E(UNSUP, "datatype line not supported")
        ),
        // §5: ALTER TABLE.
        one!("ALTER TABLE t ADD COLUMN c1 int", OK),
        one!(
            "ALTER TABLE t ADD COLUMN c2 int DEFAULT 0",
            E(
                UNSUP,
                "ALTER TABLE ADD COLUMN with constraint not supported"
            )
        ),
        one!(
            "ALTER TABLE t ADD COLUMN c3 int NOT NULL",
            E(
                UNSUP,
                "ALTER TABLE ADD COLUMN with constraint not supported"
            )
        ),
        one!(
            "ALTER TABLE t ALTER COLUMN v TYPE varchar(10)",
            E(
                UNSUP,
                "unsupported ALTER TABLE ALTER COLUMN ... SET DATA TYPE statement"
            )
        ),
        one!("ALTER TABLE t ALTER COLUMN v SET DEFAULT 'x'", OK),
        one!(
            "ALTER TABLE t ADD CONSTRAINT ck CHECK (id > 0) NOT VALID",
            OK
        ),
        one!(
            "ALTER TABLE t ADD CONSTRAINT ck2 CHECK (id > 0)",
            E(UNSUP, "unsupported ALTER TABLE ADD CONSTRAINT statement")
        ),
        one!(
            "ALTER TABLE t ADD CONSTRAINT uq UNIQUE (v)",
            E(UNSUP, "unsupported ALTER TABLE ADD CONSTRAINT statement")
        ),
        one!(
            "ALTER TABLE t VALIDATE CONSTRAINT ck",
            E(
                UNSUP,
                "unsupported ALTER TABLE VALIDATE CONSTRAINT statement"
            )
        ),
        one!(
            "ALTER TABLE t ENABLE ROW LEVEL SECURITY",
            E(
                UNSUP,
                "unsupported ALTER TABLE ENABLE ROW SECURITY statement"
            )
        ),
        // §7: transactions.
        one!(
            "BEGIN ISOLATION LEVEL SERIALIZABLE",
            E(UNSUP, "Unsupported isolation level: SERIALIZABLE")
        ),
        case(
            "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
            &[
                ("BEGIN", OK),
                (
                    "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
                    E(UNSUP, "Unsupported isolation level: SERIALIZABLE"),
                ),
                ("SELECT 1", ABORTED),
                ("ROLLBACK", OK),
                ("SELECT 1", OK),
            ],
        ),
        case(
            "SET TRANSACTION READ ONLY",
            &[
                ("BEGIN", OK),
                (
                    "SET TRANSACTION READ ONLY",
                    E(
                        UNSUP,
                        "setting configuration parameter \"TRANSACTION\" not supported",
                    ),
                ),
                ("ROLLBACK", OK),
            ],
        ),
        one!(
            "SET default_transaction_isolation = 'repeatable read'",
            E(
                UNSUP,
                "setting configuration parameter \"default_transaction_isolation\" not supported"
            )
        ),
        one!(
            "SET statement_timeout = 0",
            E(
                UNSUP,
                "setting configuration parameter \"statement_timeout\" not supported"
            )
        ),
        one!("SET search_path = public", OK),
        one!("SET TIME ZONE 'UTC'", OK),
        one!("RESET ALL", OK),
        case(
            "a refusal fails the transaction",
            &[
                ("BEGIN", OK),
                ("TRUNCATE t", E(UNSUP, "unsupported statement: Truncate")),
                ("TRUNCATE t", ABORTED),
                ("COMMIT", OK),
                ("SELECT 1", OK),
            ],
        ),
        case(
            "two DDL statements in one transaction",
            &[
                ("BEGIN", OK),
                ("CREATE TABLE d1 (a int PRIMARY KEY)", OK),
                (
                    "CREATE TABLE d2 (a int PRIMARY KEY)",
                    E(
                        UNSUP,
                        "multiple ddl statements not supported in a transaction",
                    ),
                ),
                ("SELECT 1", ABORTED),
                ("ROLLBACK", OK),
            ],
        ),
        case(
            "DML after DDL",
            &[
                ("BEGIN", OK),
                ("CREATE TABLE d3 (a int PRIMARY KEY)", OK),
                (
                    "INSERT INTO t VALUES (10, 'x')",
                    E(
                        UNSUP,
                        "ddl and dml are not supported in the same transaction",
                    ),
                ),
                ("ROLLBACK", OK),
            ],
        ),
        case(
            "DDL after DML",
            &[
                ("BEGIN", OK),
                ("INSERT INTO t VALUES (11, 'x')", OK),
                (
                    "CREATE TABLE d4 (a int PRIMARY KEY)",
                    E(
                        UNSUP,
                        "ddl and dml are not supported in the same transaction",
                    ),
                ),
                ("ROLLBACK", OK),
            ],
        ),
        one!(
            "CREATE TABLE d5 (a int PRIMARY KEY); CREATE TABLE d6 (a int PRIMARY KEY)",
            E(
                UNSUP,
                "multiple ddl statements not supported in a transaction"
            )
        ),
        case(
            "one DDL per autocommit statement is fine",
            &[
                ("CREATE TABLE d7 (a int PRIMARY KEY)", OK),
                ("CREATE TABLE d8 (a int PRIMARY KEY)", OK),
                ("INSERT INTO d8 VALUES (1)", OK),
            ],
        ),
        one!(
            "INSERT INTO t SELECT g, 'r' FROM generate_series(100, 3099) g",
            OK
        ),
        // §9: queries.
        one!(
            "SELECT * FROM t TABLESAMPLE SYSTEM (10)",
            E(UNSUP, "TABLESAMPLE clause not supported")
        ),
        one!(
            "SELECT * FROM t FOR SHARE",
            E(
                UNSUP,
                "locking clauses other than FOR UPDATE/FOR KEY SHARE are not supported"
            )
        ),
        one!("SELECT * FROM t FOR UPDATE", OK),
        one!(
            "WITH x AS (SELECT 1 AS a) SELECT * FROM x, LATERAL (SELECT a) y",
            OK
        ),
        // §10: environment.
        one!(
            "SHOW lc_collate",
            E(
                "42704",
                "unrecognized configuration parameter \"lc_collate\""
            )
        ),
    ]
}

async fn run_step(client: &Client, sql: &str) -> Expect {
    match client.simple_query(sql).await {
        Ok(_) => Expect::Ok,
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

/// Replays every case; returns the names of those answered unlike DSQL, with the step.
async fn replay(ep: &TestEndpoint) -> (usize, Vec<String>) {
    let setup = ep.connect("admin").await.expect("connect");
    for sql in SETUP {
        setup.batch_execute(sql).await.expect(sql);
    }
    let cases = cases();
    let mut unlike = Vec::new();
    for c in &cases {
        let client = ep.connect("admin").await.expect("connect");
        for (sql, want) in c.steps {
            let got = run_step(&client, sql).await;
            if got != *want {
                unlike.push(format!("{}: {sql}: got {got:?}, DSQL {want:?}", c.name));
                break;
            }
        }
    }
    (cases.len(), unlike)
}

#[tokio::test]
async fn local_answers_like_dsql() {
    let before = TestEndpoint::start_dialect(Dialect::Postgres).await;
    let (m, unlike_before) = replay(&before).await;
    before.stop().await;
    let ep = TestEndpoint::start().await;
    let (total, unlike) = replay(&ep).await;
    ep.stop().await;
    eprintln!(
        "answers like DSQL: plain PostgreSQL {} of {m}; local {} of {total}",
        m - unlike_before.len(),
        total - unlike.len()
    );
    assert!(unlike.is_empty(), "unlike DSQL:\n{}", unlike.join("\n"));
    assert!(
        unlike_before.len() > total / 3,
        "the table should tell DSQL from PostgreSQL"
    );
}

fn db_error(e: &tokio_postgres::Error) -> (String, String) {
    let db = e
        .as_db_error()
        .unwrap_or_else(|| panic!("not a database error: {e}"));
    (db.code().code().to_owned(), db.message().to_owned())
}

/// The extended protocol: a refused statement fails at Parse (the prepare), a rule broken at
/// Execute fails there, and everything up to Sync is skipped, as PostgreSQL does.
#[tokio::test]
async fn extended_protocol_refusals_fail_where_postgres_would() {
    let ep = TestEndpoint::start().await;
    let mut client = ep.connect("admin").await.unwrap();
    client
        .batch_execute("CREATE TABLE e (id int PRIMARY KEY)")
        .await
        .unwrap();
    let err = client.prepare("TRUNCATE e").await.unwrap_err();
    assert_eq!(
        db_error(&err),
        ("0A000".into(), "unsupported statement: Truncate".into())
    );
    // The connection goes on.
    assert_eq!(
        client
            .execute("INSERT INTO e VALUES ($1)", &[&1i32])
            .await
            .unwrap(),
        1
    );
    // A second DDL fails at its Execute; the transaction is failed; COMMIT rolls back.
    let tx = client.transaction().await.unwrap();
    tx.execute("CREATE TABLE e2 (id int PRIMARY KEY)", &[])
        .await
        .unwrap();
    let err = tx
        .execute("CREATE TABLE e3 (id int PRIMARY KEY)", &[])
        .await
        .unwrap_err();
    assert_eq!(
        db_error(&err),
        (
            "0A000".into(),
            "multiple ddl statements not supported in a transaction".into()
        )
    );
    let err = tx.execute("SELECT 1", &[]).await.unwrap_err();
    assert_eq!(db_error(&err).0, "25P02");
    tx.commit().await.unwrap();
    let err = client.execute("SELECT * FROM e2", &[]).await.unwrap_err();
    assert_eq!(
        db_error(&err).0,
        "42P01",
        "the failed transaction left nothing"
    );
    // DML then DDL in one transaction, all in the extended protocol.
    let tx = client.transaction().await.unwrap();
    tx.execute("INSERT INTO e VALUES (2)", &[]).await.unwrap();
    let err = tx
        .execute("ALTER TABLE e ADD COLUMN v text", &[])
        .await
        .unwrap_err();
    assert_eq!(
        db_error(&err).1,
        "ddl and dml are not supported in the same transaction"
    );
    tx.rollback().await.unwrap();
    // Prepared once, refused each time its rule is broken, fine otherwise.
    let ddl = client
        .prepare("CREATE TABLE IF NOT EXISTS e4 (id int PRIMARY KEY)")
        .await
        .unwrap();
    client.execute(&ddl, &[]).await.unwrap();
    let tx = client.transaction().await.unwrap();
    tx.execute("INSERT INTO e VALUES (3)", &[]).await.unwrap();
    assert!(tx.execute(&ddl, &[]).await.is_err());
    tx.rollback().await.unwrap();
    assert_eq!(client.execute("SELECT 1", &[]).await.unwrap(), 1);
    ep.stop().await;
}

/// §7: 3,000 rows per transaction; the statement that crosses the line fails with 54000,
/// the transaction is failed and nothing survives.
#[tokio::test]
async fn the_row_limit_fails_the_statement_that_crosses_it() {
    let ep = TestEndpoint::start().await;
    let client = ep.connect("admin").await.unwrap();
    client
        .batch_execute("CREATE TABLE r (id int PRIMARY KEY)")
        .await
        .unwrap();
    let values: Vec<String> = (0..3001).map(|i| format!("({i})")).collect();
    let err = client
        .batch_execute(&format!("INSERT INTO r VALUES {}", values.join(",")))
        .await
        .unwrap_err();
    assert_eq!(
        db_error(&err),
        ("54000".into(), "transaction row limit exceeded".into())
    );
    client.batch_execute("BEGIN").await.unwrap();
    client
        .batch_execute("INSERT INTO r SELECT g FROM generate_series(1, 3000) g")
        .await
        .unwrap();
    let err = client
        .batch_execute("INSERT INTO r VALUES (5000)")
        .await
        .unwrap_err();
    assert_eq!(db_error(&err).0, "54000");
    let err = client.batch_execute("SELECT 1").await.unwrap_err();
    assert_eq!(db_error(&err).0, "25P02");
    client.batch_execute("COMMIT").await.unwrap();
    let n: i64 = client
        .query_one("SELECT count(*) FROM r", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0, "no rows survive");
    ep.stop().await;
}
