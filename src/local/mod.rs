//! A local, DSQL-compatible endpoint: a TLS front that checks IAM auth tokens exactly as
//! Aurora DSQL does and enforces its connection limits, in front of a private PostgreSQL.
//!
//! - [`certs`]: a local CA and server certificates.
//! - [`clock`]: the time source of every decision the endpoint makes (a manual one for tests).
//! - `files`: the data directory and its state files, opened so nobody else can redirect
//!   them; the default `--persist` directory; sweeping temporary directories left behind;
//!   the private, atomically written `--env-file`.
//! - [`verify`]: SigV4 auth-token verification.
//! - [`postgres`]: the private PostgreSQL server.
//! - `dialect`: DSQL's SQL — statements classified with PostgreSQL's parser and refused
//!   as DSQL refuses them ([`Dialect`]).
//! - [`proxy`]: the endpoint ([`LocalEndpoint`]); per-connection work lives in `session`,
//!   the wire-protocol pieces in [`wire`].

pub mod certs;
pub mod clock;
mod dialect;
// Some helpers serve only `dsql-pgx local` (the `cli` feature).
#[cfg_attr(not(feature = "cli"), allow(dead_code))]
pub(crate) mod files;
pub mod postgres;
pub mod proxy;
mod session;
pub mod verify;
pub mod wire;

pub use clock::{Clock, ManualClock};
pub use dialect::Dialect;
pub use dialect::iam::{DEFAULT_ARN as DEFAULT_IAM_ARN, is_iam_arn};
pub use postgres::{PgOptions, PgServer, PostgresNotFound, TcpTls, find_bin_dir};
pub use proxy::{EndpointOptions, LOCAL_CLUSTER_ID, Limits, LocalEndpoint, default_hostname};
pub use verify::{TokenVerifier, VerifyError};
