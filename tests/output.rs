//! Golden output through the built binary against a real PostgreSQL (`--no-iam`): what
//! `--format json` makes of each column type, and how tables and csv/tsv print what is
//! awkward to print (tabs, zero columns).

mod common;

use common::TestPg;
use common::dsql::{assert_code, run_plain, stdout};

/// `query -q --format FORMAT SQL`'s stdout, asserting exit 0.
async fn query(pg: &TestPg, format: &str, sql: &str) -> String {
    let out = run_plain(pg, &["query", "-q", "--format", format, sql]).await;
    assert_code(&out, 0);
    stdout(&out)
}

/// `query --format json SQL`'s stdout.
async fn json(pg: &TestPg, sql: &str) -> String {
    query(pg, "json", sql).await
}

#[tokio::test(flavor = "multi_thread")]
async fn json_keys_follow_column_order() {
    let pg = TestPg::start().await;
    // Keys in column order, not sorted.
    assert_eq!(
        json(&pg, "select 3 as z, 2 as y").await,
        "{\"z\":3,\"y\":2}\n"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn json_keeps_every_repeated_column() {
    let pg = TestPg::start().await;
    // A repeated name is kept as name_2, name_3, ..., never shadowing a real column.
    assert_eq!(
        json(&pg, "select 1 as a, 2 as a").await,
        "{\"a\":1,\"a_2\":2}\n"
    );
    assert_eq!(
        json(&pg, "select 1 as a, 2 as a, 3 as a_2, 4 as a").await,
        "{\"a\":1,\"a_3\":2,\"a_2\":3,\"a_4\":4}\n"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn json_values_are_the_servers_text() {
    let pg = TestPg::start().await;
    // json and jsonb are the server's text: duplicate keys, key order and digits survive;
    // line breaks between tokens become spaces so each row stays one line.
    assert_eq!(
        json(&pg, r#"select '{"b":1,"a":2,"b":3}'::json as j"#).await,
        "{\"j\":{\"b\":1,\"a\":2,\"b\":3}}\n"
    );
    assert_eq!(
        json(
            &pg,
            r#"select '{"n": 18446744073709551617, "f": 1.0000000000000000001}'::jsonb as j"#
        )
        .await,
        "{\"j\":{\"f\": 1.0000000000000000001, \"n\": 18446744073709551617}}\n"
    );
    assert_eq!(
        json(
            &pg,
            "select E'[1,\\n\"a\\\\nb\"]'::json as j, null::jsonb as k"
        )
        .await,
        "{\"j\":[1, \"a\\nb\"],\"k\":null}\n"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn json_numbers_keep_every_digit() {
    let pg = TestPg::start().await;
    // Integers and numeric keep every digit; what JSON has no number for is a string.
    assert_eq!(
        json(
            &pg,
            "select 18446744073709551617::numeric as a, 1.0000000000000000001::numeric as b, \
             9223372036854775807::int8 as c, (-32768)::int2 as d, 1.50::numeric as e, \
             'NaN'::numeric as f, '-Infinity'::numeric as g"
        )
        .await,
        "{\"a\":18446744073709551617,\"b\":1.0000000000000000001,\"c\":9223372036854775807,\
         \"d\":-32768,\"e\":1.50,\"f\":\"NaN\",\"g\":\"-Infinity\"}\n"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn json_floats_are_the_servers_shortest_text() {
    let pg = TestPg::start().await;
    // Floats are the server's shortest round-trip text.
    assert_eq!(
        json(
            &pg,
            "select 0.1::float4 as a, 0.1::float8 as b, 1e20::float8 as c, 1e-7::float8 as c2, '-0'::float8 as c3, \
             1.7976931348623157e308::float8 as d, 'NaN'::float8 as e, '-Infinity'::float4 as f"
        )
        .await,
        "{\"a\":0.1,\"b\":0.1,\"c\":1e+20,\"c2\":1e-07,\"c3\":-0,\"d\":1.7976931348623157e+308,\"e\":\"NaN\",\
         \"f\":\"-Infinity\"}\n"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn tables_escape_tabs_like_other_control_characters() {
    let pg = TestPg::start().await;
    // A tab would break the columns; it shows as \x09 like ESC (\x1b); a newline stays a
    // line of the cell.
    assert_eq!(
        query(
            &pg,
            "table",
            "select E'a\\tb' as \"t\tx\", E'c\\x1b[31md' as e, E'one\\ntwo' as n"
        )
        .await,
        concat!(
            "| t\\x09x | e          | n   |\n",
            "|--------|------------|-----|\n",
            "| a\\x09b | c\\x1b[31md | one |\n",
            "|        |            | two |\n",
            "SELECT 1\n",
        )
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn zero_column_results_print_as_psql_does() {
    let pg = TestPg::start().await;
    // psql prints `--` (an empty header's rule) for zero columns; the tag follows as for any
    // result.
    assert_eq!(query(&pg, "table", "select").await, "--\nSELECT 1\n");
    assert_eq!(
        query(&pg, "table", "select from generate_series(1, 3)").await,
        "--\nSELECT 3\n"
    );
    // csv and tsv: an empty header line and an empty line per row, not `""`.
    for format in ["csv", "tsv"] {
        assert_eq!(
            query(&pg, format, "select from generate_series(1, 2)").await,
            "\n\n\n",
            "{format}"
        );
        assert_eq!(
            query(&pg, format, "select 1 as a; select; select 2 as b").await,
            "a\n1\n\n\n\n\nb\n2\n",
            "{format}: results apart by one blank line as usual"
        );
    }
    let out = run_plain(
        &pg,
        &[
            "query",
            "-q",
            "--format",
            "csv",
            "--no-header",
            "select from generate_series(1, 2)",
        ],
    )
    .await;
    assert_code(&out, 0);
    assert_eq!(stdout(&out), "\n\n");
}
