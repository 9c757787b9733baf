//! A local, DSQL-compatible endpoint: a TLS front that checks IAM auth tokens exactly as
//! Aurora DSQL does and enforces its connection limits, in front of a private PostgreSQL.
//!
//! - [`certs`]: a local CA and server certificates.
//! - [`verify`]: SigV4 auth-token verification.
//! - [`postgres`]: the private PostgreSQL server.

pub mod certs;
pub mod postgres;
pub mod verify;
