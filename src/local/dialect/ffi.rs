//! libpg_query's two parse entry points, called directly: the `pg_query` crate's `parse`
//! also walks the whole tree to list tables and functions, with a queue that costs time
//! quadratic in the tree's width (a 300 KB statement took seconds of a parser thread), and
//! a stranger who has logged in chooses the width.
//!
//! The library is the one the `pg_query` crate builds and links; these are its C functions
//! as `pg_query.h` declares them.

use std::ffi::{CStr, CString, c_char, c_int};

use pg_query::protobuf;
use prost::Message as _;

#[repr(C)]
struct PgQueryError {
    message: *mut c_char,
    funcname: *mut c_char,
    filename: *mut c_char,
    lineno: c_int,
    cursorpos: c_int,
    context: *mut c_char,
}

#[repr(C)]
struct PgQueryProtobuf {
    len: usize,
    data: *mut c_char,
}

#[repr(C)]
struct PgQueryProtobufParseResult {
    parse_tree: PgQueryProtobuf,
    stderr_buffer: *mut c_char,
    error: *mut PgQueryError,
}

#[repr(C)]
struct PgQueryParseResult {
    parse_tree: *mut c_char,
    stderr_buffer: *mut c_char,
    error: *mut PgQueryError,
}

unsafe extern "C" {
    fn pg_query_parse_protobuf(input: *const c_char) -> PgQueryProtobufParseResult;
    fn pg_query_free_protobuf_parse_result(result: PgQueryProtobufParseResult);
    fn pg_query_parse(input: *const c_char) -> PgQueryParseResult;
    fn pg_query_free_parse_result(result: PgQueryParseResult);
}

/// Why a text did not parse: PostgreSQL's message, or a NUL byte in the text.
#[derive(Debug)]
pub(crate) struct ParseError(pub(crate) String);

fn c_text(sql: &str) -> Result<CString, ParseError> {
    CString::new(sql).map_err(|_| ParseError("the statement contains a NUL byte".into()))
}

/// # Safety
/// `error` is null or points at libpg_query's error of a result not yet freed.
unsafe fn error_message(error: *const PgQueryError) -> Option<String> {
    // SAFETY: the caller's contract; `message` is a NUL-terminated string libpg_query made.
    unsafe {
        let error = error.as_ref()?;
        Some(if error.message.is_null() {
            "syntax error".to_string()
        } else {
            CStr::from_ptr(error.message).to_string_lossy().into_owned()
        })
    }
}

/// The parse tree of `sql` (every statement in it).
pub(crate) fn parse_tree(sql: &str) -> Result<protobuf::ParseResult, ParseError> {
    let input = c_text(sql)?;
    // SAFETY: `input` is NUL-terminated and outlives the call; the result is read before
    // it is freed, once, and its buffer is `len` bytes that libpg_query allocated.
    unsafe {
        let result = pg_query_parse_protobuf(input.as_ptr());
        let parsed = match error_message(result.error) {
            Some(message) => Err(ParseError(message)),
            None => {
                let tree = &result.parse_tree;
                let bytes: &[u8] = if tree.data.is_null() {
                    &[]
                } else {
                    std::slice::from_raw_parts(tree.data.cast::<u8>(), tree.len)
                };
                protobuf::ParseResult::decode(bytes).map_err(|e| ParseError(e.to_string()))
            }
        };
        pg_query_free_protobuf_parse_result(result);
        parsed
    }
}

/// The parse tree of `sql` as libpg_query's JSON: every node an object keyed by its type,
/// every field by its name; the text's own strings only ever appear escaped, as values.
pub(crate) fn parse_json(sql: &str) -> Result<String, ParseError> {
    let input = c_text(sql)?;
    // SAFETY: as in `parse_tree`; `parse_tree` here is a NUL-terminated string.
    unsafe {
        let result = pg_query_parse(input.as_ptr());
        let parsed = match error_message(result.error) {
            Some(message) => Err(ParseError(message)),
            None if result.parse_tree.is_null() => Ok(String::new()),
            None => Ok(CStr::from_ptr(result.parse_tree)
                .to_string_lossy()
                .into_owned()),
        };
        pg_query_free_parse_result(result);
        parsed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_forms_parse_and_errors_come_back() {
        let tree = parse_tree("SELECT 1; SELECT 2").unwrap();
        assert_eq!(tree.stmts.len(), 2);
        let json = parse_json("SELECT pg_backend_pid() FOR SHARE").unwrap();
        assert!(
            json.contains(r#""FuncCall":{"funcname":[{"String":{"sval":"pg_backend_pid"}}]"#),
            "{json}"
        );
        assert!(json.contains(r#""strength":"LCS_FORSHARE""#), "{json}");
        assert!(
            parse_tree("SELEC 1")
                .unwrap_err()
                .0
                .contains("syntax error")
        );
        assert!(parse_json("SELECT '\0'").is_err());
    }
}
