//! The environment a client of DSQL sees (`../shared/reference/dsql-dialect.md` §10), where
//! the private PostgreSQL 15 would answer otherwise: the server version (startup
//! ParameterStatus, `SHOW server_version[_num]`, `current_setting(..)` of them, `version()`),
//! `sys.dsql_major_version()`, and `postgres` as the only database.
//!
//! PostgreSQL's `server_version` cannot be set, so the answers are the endpoint's: the
//! ParameterStatus is rewritten on its way to the client, and a statement that is exactly
//! one of the version questions (compared without whitespace and case, after PostgreSQL's
//! parser delimited it) is run as a `SELECT` of DSQL's answer under PostgreSQL's column
//! name. The version inside a larger expression (`SELECT version() LIKE ..`) is still
//! PostgreSQL's, and the tag of an answered `SHOW` is `SELECT 1` (DSQL's is `SHOW`).

/// DSQL's `server_version` (recorded 2026-09).
pub(crate) const SERVER_VERSION: &str = "16.15";
/// DSQL's `server_version_num` (recorded 2026-09).
pub(crate) const SERVER_VERSION_NUM: &str = "160015";
/// DSQL's `version()`, the whole string (recorded 2026-09).
pub(crate) const VERSION: &str = "PostgreSQL 16";

/// The sys schema's functions and the single database, run by the superuser at every start
/// (idempotent), one statement at a time (`DROP DATABASE` runs outside a transaction).
pub(crate) const ENV_SQL: &[&str] = &[
    "CREATE SCHEMA IF NOT EXISTS sys",
    "CREATE OR REPLACE FUNCTION sys.dsql_major_version() RETURNS integer
     LANGUAGE sql IMMUTABLE PARALLEL SAFE AS 'SELECT 1'",
    "REVOKE ALL ON FUNCTION sys.dsql_major_version() FROM PUBLIC",
    "GRANT EXECUTE ON FUNCTION sys.dsql_major_version() TO PUBLIC",
    // DSQL has one database; nothing here needs the templates (CREATE DATABASE is refused).
    "UPDATE pg_catalog.pg_database SET datistemplate = false
      WHERE datname IN ('template0', 'template1')",
    "DROP DATABASE IF EXISTS template1",
    "DROP DATABASE IF EXISTS template0",
];

/// The startup ParameterStatus `body` (tag `S`) with DSQL's `server_version`; other
/// messages as they are.
pub(crate) fn parameter_status(tag: u8, body: Vec<u8>) -> Vec<u8> {
    if tag == b'S' && body.starts_with(b"server_version\0") {
        return format!("server_version\0{SERVER_VERSION}\0").into_bytes();
    }
    body
}

/// DSQL's answer to `statement` (one statement, as the parser delimited it) when it asks
/// only for the server's version: a `SELECT` under PostgreSQL's column name.
pub(crate) fn answer(statement: &str) -> Option<String> {
    let trimmed = statement.trim_end();
    let trimmed = trimmed.strip_suffix(';').unwrap_or(trimmed);
    let squeezed: String = trimmed
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect::<String>()
        .to_ascii_lowercase();
    let (value, column) = match squeezed.as_str() {
        "showserver_version" => (SERVER_VERSION, "server_version"),
        "showserver_version_num" => (SERVER_VERSION_NUM, "server_version_num"),
        "selectversion()" | "selectpg_catalog.version()" => (VERSION, "version"),
        "selectcurrent_setting('server_version')"
        | "selectpg_catalog.current_setting('server_version')" => {
            (SERVER_VERSION, "current_setting")
        }
        "selectcurrent_setting('server_version_num')"
        | "selectpg_catalog.current_setting('server_version_num')" => {
            (SERVER_VERSION_NUM, "current_setting")
        }
        _ => return None,
    };
    Some(format!("SELECT '{value}'::text AS {column}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_whole_version_questions_are_answered() {
        assert_eq!(
            answer("SHOW  server_version ;").as_deref(),
            Some("SELECT '16.15'::text AS server_version")
        );
        assert_eq!(
            answer("select VERSION ( )").as_deref(),
            Some("SELECT 'PostgreSQL 16'::text AS version")
        );
        assert!(answer("SELECT current_setting('server_version_num')").is_some());
        assert_eq!(answer("SELECT version() LIKE 'P%'"), None);
        assert_eq!(answer("SHOW search_path"), None);
    }

    #[test]
    fn the_startup_server_version_is_dsql_s() {
        let body = parameter_status(b'S', b"server_version\x0015.8\0".to_vec());
        assert_eq!(body, b"server_version\x0016.15\0");
        let other = b"TimeZone\0UTC\0".to_vec();
        assert_eq!(parameter_status(b'S', other.clone()), other);
    }
}
