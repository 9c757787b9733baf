//! DSQL's async jobs through the real endpoint and tokio-postgres
//! (`../shared/reference/dsql-dialect.md` §6): `CREATE INDEX ASYNC` answers a `job_id` row
//! at once and the index is built in the background; `sys.jobs` follows the job to its end;
//! `CALL sys.wait_for_job` waits, and refuses what DSQL refuses; `sys` gives clients no
//! more than DSQL does; the environment (§10: version, `sys` functions, one database) is
//! DSQL's.

mod common;

use std::time::Duration;

use common::TestEndpoint;
use tokio_postgres::{Client, SimpleQueryMessage};

/// A bound for a loaded machine, not an expectation of speed.
const WITHIN: Duration = Duration::from_secs(60);

/// The rows of `sql`'s results as text, and the number each CommandComplete carries (a
/// tag without a number, such as `CREATE INDEX`, carries 0), in order.
async fn results(client: &Client, sql: &str) -> Vec<Result<Vec<String>, u64>> {
    let mut out = Vec::new();
    for m in client.simple_query(sql).await.expect(sql) {
        match m {
            SimpleQueryMessage::RowDescription(cols) => {
                out.push(Ok(cols.iter().map(|c| c.name().to_owned()).collect()));
            }
            SimpleQueryMessage::Row(row) => {
                out.push(Ok((0..row.len())
                    .map(|i| row.get(i).unwrap_or("NULL").to_owned())
                    .collect()));
            }
            SimpleQueryMessage::CommandComplete(n) => out.push(Err(n)),
            _ => {}
        }
    }
    out
}

fn is_job_id(id: &str) -> bool {
    id.len() == 26
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || (b'2'..=b'7').contains(&b))
}

async fn status(client: &Client, id: &str) -> String {
    client
        .query_one("SELECT status FROM sys.jobs WHERE job_id = $1", &[&id])
        .await
        .unwrap()
        .get(0)
}

/// Polls `sys.jobs` until the job is `completed` or `failed`; its status then.
async fn finished(client: &Client, id: &str) -> String {
    common::eventually("the job ends", WITHIN, || async {
        matches!(status(client, id).await.as_str(), "completed" | "failed")
    })
    .await;
    status(client, id).await
}

#[tokio::test]
async fn an_async_index_is_built_in_the_background_and_followed_in_sys_jobs() {
    let ep = TestEndpoint::start().await;
    let client = ep.connect("admin").await.unwrap();
    client
        .batch_execute("CREATE TABLE j (id int PRIMARY KEY, v text)")
        .await
        .unwrap();
    client
        .batch_execute("INSERT INTO j SELECT g, 'v' || g FROM generate_series(1, 500) g")
        .await
        .unwrap();

    // The row belongs to the CREATE INDEX's own result, between BEGIN's and COMMIT's tags.
    let got = results(&client, "BEGIN; CREATE INDEX ASYNC ON j (v); COMMIT").await;
    assert_eq!(got.len(), 5, "{got:?}");
    assert_eq!(got[0], Err(0));
    assert_eq!(got[1], Ok(vec!["job_id".to_owned()]));
    let id = match &got[2] {
        Ok(row) => row[0].clone(),
        other => panic!("no job id row: {other:?}"),
    };
    assert!(is_job_id(&id), "{id}");
    assert_eq!(got[3], Err(0), "tag CREATE INDEX, not SELECT 1");
    assert_eq!(got[4], Err(0));

    assert_eq!(finished(&client, &id).await, "completed");
    let row = client
        .query_one(
            "SELECT job_type, class_id::int, object_name, details IS NULL,
                    start_time = date_trunc('second', start_time)
               FROM sys.jobs WHERE job_id = $1",
            &[&id],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "INDEX_BUILD");
    assert_eq!(row.get::<_, i32>(1), 1259);
    assert_eq!(row.get::<_, String>(2), "public.j_v_idx");
    assert!(row.get::<_, bool>(3));
    assert!(row.get::<_, bool>(4), "whole seconds");
    let valid: bool = client
        .query_one(
            "SELECT indisvalid FROM pg_index WHERE indexrelid = 'j_v_idx'::regclass",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(valid);
    let waited = results(&client, &format!("CALL sys.wait_for_job('{id}')")).await;
    assert_eq!(
        waited,
        [
            Ok(vec!["succeeded".to_owned()]),
            Ok(vec!["t".to_owned()]),
            Err(0)
        ]
    );

    // The columns of sys.jobs, in DSQL's order.
    let cols = client.prepare("SELECT * FROM sys.jobs").await.unwrap();
    let names: Vec<&str> = cols.columns().iter().map(|c| c.name()).collect();
    assert_eq!(
        names,
        [
            "job_id",
            "status",
            "details",
            "job_type",
            "class_id",
            "object_id",
            "object_name",
            "start_time",
            "update_time"
        ]
    );
    ep.stop().await;
}

#[tokio::test]
async fn a_unique_build_over_duplicates_fails_and_wait_for_job_says_so() {
    let ep = TestEndpoint::start().await;
    let client = ep.connect("admin").await.unwrap();
    client
        .batch_execute("CREATE TABLE d (id int PRIMARY KEY, v int)")
        .await
        .unwrap();
    client
        .batch_execute("INSERT INTO d VALUES (1, 7), (2, 7)")
        .await
        .unwrap();
    let got = results(
        &client,
        "CREATE UNIQUE INDEX ASYNC IF NOT EXISTS d_v ON d (v)",
    )
    .await;
    let id = match &got[..] {
        [Ok(_), Ok(row), Err(0)] => row[0].clone(),
        other => panic!("{other:?}"),
    };
    // Waiting needs no polling: the procedure returns once the job ended.
    let waited = results(&client, &format!("CALL sys.wait_for_job('{id}')")).await;
    assert_eq!(waited[1], Ok(vec!["f".to_owned()]));
    let row = client
        .query_one(
            "SELECT status, details FROM sys.jobs WHERE job_id = $1",
            &[&id],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "failed");
    assert_eq!(
        row.get::<_, String>(1),
        "Found duplicate key while validating index for UCVs"
    );
    ep.stop().await;
}

/// `sys.wait_for_job` and `sys` refuse what DSQL refuses, with its SQLSTATEs and words.
#[tokio::test]
async fn sys_refuses_as_dsql_does() {
    let ep = TestEndpoint::start().await;
    let client = ep.connect("admin").await.unwrap();
    let cases: &[(&str, &str, &str)] = &[
        (
            "CALL sys.wait_for_job('not a job id')",
            "22P02",
            "Unable to convert text to UUID",
        ),
        (
            // 27 characters, and 26 whose last one carries bits past 16 bytes.
            "CALL sys.wait_for_job('jh2gbtx4mzhgfkbimtgwn5j45ya')",
            "22P02",
            "Unable to convert text to UUID",
        ),
        (
            "CALL sys.wait_for_job('jh2gbtx4mzhgfkbimtgwn5j45z')",
            "22P02",
            "Unable to convert text to UUID",
        ),
        (
            "CALL sys.wait_for_job('jh2gbtx4mzhgfkbimtgwn5j45y')",
            "42704",
            "job jh2gbtx4mzhgfkbimtgwn5j45y does not exist",
        ),
        (
            "SELECT sys.wait_for_job('jh2gbtx4mzhgfkbimtgwn5j45y')",
            "42809",
            "sys.wait_for_job(unknown) is a procedure",
        ),
        (
            "CALL sys.wait_for_job((SELECT 'x'))",
            "0A000",
            "cannot use subquery in CALL argument",
        ),
        (
            "INSERT INTO sys.jobs (job_id) VALUES ('x')",
            "42501",
            "permission denied for view jobs",
        ),
        (
            "CREATE TABLE sys.mine (a int)",
            "42501",
            "permission denied for schema sys",
        ),
        (
            "SELECT * FROM dsql_pgx.jobs",
            "42501",
            "permission denied for schema dsql_pgx",
        ),
    ];
    let mut unlike = Vec::new();
    for (sql, code, message) in cases {
        let got = match client.simple_query(sql).await {
            Ok(_) => ("ok".to_owned(), String::new()),
            Err(e) => {
                let db = e.as_db_error().unwrap_or_else(|| panic!("{sql}: {e}"));
                (db.code().code().to_owned(), db.message().to_owned())
            }
        };
        if got != (code.to_string(), message.to_string()) {
            unlike.push(format!("{sql}: got {got:?}, want {code} {message}"));
        }
    }
    assert!(unlike.is_empty(), "{}", unlike.join("\n"));
    ep.stop().await;
}

/// §10: what a client asks of the environment, and DSQL's answer (one row, one column).
#[tokio::test]
async fn the_environment_is_dsql_s() {
    let ep = TestEndpoint::start().await;
    let client = ep.connect("admin").await.unwrap();
    let cases: &[(&str, &str, &str)] = &[
        ("SHOW server_version", "server_version", "16.15"),
        ("show SERVER_VERSION;", "server_version", "16.15"),
        ("SHOW server_version_num", "server_version_num", "160015"),
        (
            "SELECT current_setting('server_version')",
            "current_setting",
            "16.15",
        ),
        (
            "SELECT current_setting('server_version_num')",
            "current_setting",
            "160015",
        ),
        ("SELECT version()", "version", "PostgreSQL 16"),
        ("SELECT sys.dsql_major_version()", "dsql_major_version", "1"),
        (
            "SELECT string_agg(datname, ',') AS dbs FROM pg_database",
            "dbs",
            "postgres",
        ),
        ("SELECT current_database()", "current_database", "postgres"),
        (
            "SHOW transaction_isolation",
            "transaction_isolation",
            "repeatable read",
        ),
    ];
    let mut unlike = Vec::new();
    for (sql, column, value) in cases {
        let got = results(&client, sql).await;
        let want = [Ok(vec![column.to_string()]), Ok(vec![value.to_string()])];
        if got.get(..2) != Some(&want[..]) {
            unlike.push(format!("{sql}: got {got:?}, want {want:?}"));
        }
    }
    // In a multi-statement query, each statement keeps its own answer.
    let got = results(&client, "SELECT 1 AS a; SHOW server_version; SELECT 2 AS b").await;
    assert_eq!(got[4], Ok(vec!["16.15".to_owned()]), "{got:?}");
    // The extended protocol too.
    let v: String = client
        .query_one("SHOW server_version", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(v, "16.15");
    assert!(unlike.is_empty(), "{}", unlike.join("\n"));
    ep.stop().await;
}

/// §7: 10 MiB of modified data per transaction, checked at COMMIT: 54000 with DSQL's
/// message and DETAIL; the transaction is failed and nothing survives. Below the limit,
/// COMMIT answers as ever (the size check leaves no trace).
#[tokio::test]
async fn the_size_limit_fails_the_commit_of_a_transaction_over_10_mib() {
    let ep = TestEndpoint::start().await;
    let client = ep.connect("admin").await.unwrap();
    client
        .batch_execute("CREATE TABLE big (id int PRIMARY KEY, v text)")
        .await
        .unwrap();
    // About 1 MiB of hex per row, which compresses to about half.
    let row = |id: i32| {
        format!(
            "INSERT INTO big SELECT {id}, string_agg(md5(random()::text), '') \
               FROM generate_series(1, 32768)"
        )
    };
    client.batch_execute("BEGIN").await.unwrap();
    client.batch_execute(&row(1)).await.unwrap();
    assert_eq!(results(&client, "COMMIT").await, [Err(0)], "no DO tag");

    client.batch_execute("BEGIN").await.unwrap();
    for id in 2..32 {
        client.batch_execute(&row(id)).await.unwrap();
    }
    let err = client.batch_execute("COMMIT").await.unwrap_err();
    let db = err.as_db_error().expect("a database error");
    assert_eq!(
        (db.code().code(), db.message()),
        ("54000", "transaction size limit 10mb exceeded")
    );
    let detail = db.detail().unwrap_or_default();
    assert!(
        detail.starts_with("Current transaction size ") && detail.ends_with("mb > 10mb"),
        "{detail}"
    );
    assert!(
        db.where_().is_none(),
        "no PL/pgSQL context: {:?}",
        db.where_()
    );
    let err = client.batch_execute("SELECT 1").await.unwrap_err();
    assert_eq!(err.as_db_error().unwrap().code().code(), "25P02");
    client.batch_execute("ROLLBACK").await.unwrap();
    let n: i64 = client
        .query_one("SELECT count(*) FROM big", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1, "only the first transaction's row");
    ep.stop().await;
}

/// The extended protocol (tokio-postgres `query`): the job's row and tag come back too.
#[tokio::test]
async fn an_async_index_through_the_extended_protocol_answers_its_job_id() {
    let ep = TestEndpoint::start().await;
    let client = ep.connect("admin").await.unwrap();
    client
        .batch_execute("CREATE TABLE x (id int PRIMARY KEY, v int)")
        .await
        .unwrap();
    let rows = client
        .query("CREATE INDEX ASYNC x_v ON x (v)", &[])
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].columns()[0].name(), "job_id");
    let id: String = rows[0].get(0);
    assert!(is_job_id(&id), "{id}");
    assert_eq!(finished(&client, &id).await, "completed");
    let object: String = client
        .query_one("SELECT object_name FROM sys.jobs WHERE job_id = $1", &[&id])
        .await
        .unwrap()
        .get(0);
    assert_eq!(object, "public.x_v");
    ep.stop().await;
}
