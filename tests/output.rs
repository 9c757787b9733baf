//! Golden output through the built binary against a real PostgreSQL (`--no-iam`): what
//! `--format json` makes of each column type, and how tables and csv/tsv print what is
//! awkward to print (tabs, zero columns); and through the local endpoint (26-character
//! session IDs), what `connect`, `refresh-demo` and `query` show on an 80-column terminal.

mod common;

use common::dsql::{
    assert_code, assert_fits, on_terminal, plain_flags, run_plain, stderr, stdout, whole_ids,
};
use common::{TestEndpoint, TestPg};

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

#[tokio::test(flavor = "multi_thread")]
async fn expanded_prints_records_as_psql_x_does() {
    let pg = TestPg::start().await;
    let out = run_plain(
        &pg,
        &[
            "query",
            "-q",
            "-x",
            "select g as n, repeat('x', g * 10) as longer_name, E'one\\ntwo' as m, null as z \
             from generate_series(1, 2) g; select 1 as a where false",
        ],
    )
    .await;
    assert_code(&out, 0);
    assert_eq!(
        stdout(&out),
        concat!(
            "-[ RECORD 1 ]---------------------\n",
            "n           | 1\n",
            "longer_name | xxxxxxxxxx\n",
            "m           | one\n",
            "            | two\n",
            "z           | \n",
            "-[ RECORD 2 ]---------------------\n",
            "n           | 2\n",
            "longer_name | xxxxxxxxxxxxxxxxxxxx\n",
            "m           | one\n",
            "            | two\n",
            "z           | \n",
            "SELECT 2\n",
            "SELECT 0\n",
        )
    );

    // Records are a table layout: with another format the flag is a usage error.
    let out = run_plain(&pg, &["query", "-x", "--format", "csv", "select 1"]).await;
    assert_code(&out, 2);
    assert!(
        stderr(&out).contains("--expanded lays out tables only"),
        "{}",
        stderr(&out)
    );
}

/// `dsql-pgx query -q ARGS` with stdout on an 80-column pseudo-terminal: what it shows.
async fn query_on_terminal(pg: &TestPg, args: &[&str]) -> String {
    let mut cmd = common::dsql::dsql_pgx_std();
    cmd.env("PGPASSWORD", pg.password())
        .env("PGSSLROOTCERT", pg.ca_path())
        .args(["query", "-q"])
        .args(args)
        .args(plain_flags(pg));
    let (out, shown) = common::dsql::on_terminal(cmd, 80).await;
    assert_code(&out, 0);
    shown
}

#[tokio::test(flavor = "multi_thread")]
async fn a_table_wider_than_the_terminal_prints_as_records() {
    let pg = TestPg::start().await;
    // Fits in 80 columns: boxed, as before.
    let shown = query_on_terminal(&pg, &["select 1 as n, E'a\\tb' as s"]).await;
    assert_eq!(
        shown,
        concat!(
            "╭───┬────────╮\n",
            "│ n ┆ s      │\n",
            "╞═══╪════════╡\n",
            "│ 1 ┆ a\\x09b │\n",
            "╰───┴────────╯\n",
            "SELECT 1\n",
        )
    );
    // 157 columns boxed: records instead of every cell wrapped, the rule cut at 80.
    let shown =
        query_on_terminal(&pg, &["select repeat('x', 60) as a, repeat('y', 90) as b"]).await;
    assert_eq!(
        shown,
        format!(
            "-[ RECORD 1 ]{}\na | {}\nb | {}\nSELECT 1\n",
            "-".repeat(80 - 13),
            "x".repeat(60),
            "y".repeat(90)
        )
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn json_on_a_terminal_escapes_every_control_character() {
    let pg = TestPg::start().await;
    // serde_json escapes ESC; DEL and C1 (U+009B is CSI to some terminals) it writes raw.
    let shown = query_on_terminal(
        &pg,
        &[
            "--format",
            "json",
            "select E'a\\x1b[31m' || chr(155) || '2J' || chr(127) as s, \
             ('{\"k\": \"' || chr(155) || '\"}')::json as j",
        ],
    )
    .await;
    assert_eq!(
        shown,
        "{\"s\":\"a\\u001b[31m\\u009b2J\\u007f\",\"j\":{\"k\": \"\\u009b\"}}\n"
    );
}

/// `dsql-pgx ARGS` against the endpoint, stdout on an 80-column pseudo-terminal: what it
/// printed (stderr) and what the terminal showed, asserting exit 0.
async fn at_on_terminal(ep: &TestEndpoint, args: &[&str]) -> (std::process::Output, String) {
    let mut cmd = common::dsql::dsql_pgx_std();
    cmd.envs(ep.env()).args(args);
    let (out, shown) = on_terminal(cmd, 80).await;
    assert_code(&out, 0);
    (out, shown)
}

#[tokio::test(flavor = "multi_thread")]
async fn connect_fits_80_columns_with_every_id_whole() {
    let ep = TestEndpoint::start().await;
    let (out, shown) = at_on_terminal(&ep, &["connect", "--count", "3"]).await;
    assert_fits(&shown, 80);
    assert_eq!(whole_ids(&shown).len(), 3, "{shown}");
    // A boxed table, one line per connection: top, header, rule, 3 rows, bottom.
    assert!(shown.starts_with('╭'), "{shown}");
    assert_eq!(shown.lines().count(), 7, "{shown}");
    for head in ["session id", "server", "tls", "connect", "token age"] {
        assert!(shown.contains(head), "{head} in {shown}");
    }
    // The pool in one line on stderr.
    let diag = stderr(&out);
    assert_eq!(diag.lines().count(), 1, "{diag}");
    assert!(diag.starts_with("pool gen 1: 3 open, 0 closed, "), "{diag}");

    // -v adds the parts of the connect time: too wide for 80 columns, so records, not
    // wrapped cells, then every pool counter.
    let (_, shown) = at_on_terminal(&ep, &["connect", "--count", "3", "-v"]).await;
    assert_fits(&shown, 80);
    assert_eq!(whole_ids(&shown).len(), 3, "{shown}");
    for line in ["-[ RECORD 3 ]", "\ntls hs     | ", "\nauth       | "] {
        assert!(shown.contains(line), "{line:?} in {shown}");
    }
    assert!(
        shown.contains("closed: lifetime / idle / broken / retired"),
        "{shown}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn refresh_demo_prints_one_line_per_refresh_in_80_columns() {
    let ep = TestEndpoint::start().await;
    let demo = [
        "refresh-demo",
        "--interval",
        "1s",
        "--refreshes",
        "2",
        "--workers",
        "2",
    ];
    let (out, shown) = at_on_terminal(&ep, &demo).await;
    assert_fits(&shown, 80);
    assert!(whole_ids(&shown).is_empty(), "IDs only with -v: {shown}");
    let lines: Vec<&str> = shown.lines().collect();
    assert_eq!(
        lines[0],
        " gen    retired → opened  overlap         ok  failed  p50 ms  p99 ms  took ms"
    );
    for (line, generation) in lines[1..3].iter().zip([2, 3]) {
        let cells: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(cells[0], generation.to_string(), "{line}");
        assert_eq!(cells[cells.len() - 6], "0", "overlap 0: {line}");
        assert_eq!(cells[cells.len() - 4], "0", "no query failed: {line}");
    }
    // Then the summary table, and nothing per refresh beyond its line.
    assert!(lines[3].starts_with('╭'), "{shown}");
    assert!(shown.contains("queries ok / failed"), "{shown}");
    assert_eq!(lines.len(), 3 + 9, "{shown}");
    let diag = stderr(&out);
    assert!(
        diag.contains("(+N) of them opened since the last one"),
        "{diag}"
    );

    // -v: the session IDs under each line, whole, as many to a line as fit.
    let verbose: Vec<&str> = demo.iter().copied().chain(["-v"]).collect();
    let (_, shown) = at_on_terminal(&ep, &verbose).await;
    assert_fits(&shown, 80);
    let retired = shown
        .lines()
        .filter(|l| l.starts_with("      retired "))
        .count();
    assert_eq!(retired, 2, "{shown}");
    let ids = whole_ids(&shown);
    assert!(ids.len() >= 4, "{shown}");
    let pieces = shown
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| w.len() > 12 && w.len() != 26)
        .count();
    assert_eq!(pieces, 0, "no ID cut: {shown}");
}

#[tokio::test(flavor = "multi_thread")]
async fn query_statistics_are_one_line_on_stderr() {
    let ep = TestEndpoint::start().await;
    let (out, shown) = at_on_terminal(&ep, &["query", "select 1 as a"]).await;
    assert!(shown.ends_with("SELECT 1\n"), "{shown}");
    let diag = stderr(&out);
    assert_eq!(diag.lines().count(), 1, "{diag}");
    let (session, pool) = diag.trim_end().split_once("; ").expect("session; pool");
    assert_eq!(whole_ids(session).len(), 1, "{diag}");
    assert!(pool.starts_with("pool gen 1: 1 open, 0 closed, "), "{diag}");
    assert!(diag.trim_end().chars().count() <= 80, "{diag}");
    // -v: every counter.
    let (out, _) = at_on_terminal(&ep, &["query", "-v", "select 1 as a"]).await;
    assert!(
        stderr(&out).contains("gets (waited, timed out)"),
        "{}",
        stderr(&out)
    );
}
