//! dsql-pgx: reach Amazon Aurora DSQL from a shell, a script or a Rust program.

pub mod local;
