//! Every clap type: the command line as the user types it.
//!
//! These structs hold raw, syntactically valid values only. [`resolve`] adds the environment
//! fallbacks with more than one variable and turns them into validated settings
//! ([`crate::ConnSettings`] and friends) once, through the library's builder, which checks
//! every rule. The `ValueEnum`s here map onto the library's plain enums.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use clap_complete::Shell;

pub mod resolve;

pub use crate::settings::parse_duration;

/// Reach Amazon Aurora DSQL from a shell, a script or a Rust program.
///
/// dsql-pgx signs short-lived IAM auth tokens, opens verified TLS connections, keeps a pool that
/// replaces its connections before DSQL's one-hour limit, and retries optimistic-concurrency
/// conflicts. With `--local` every command runs against a local DSQL-compatible endpoint that
/// checks IAM tokens for real, so nothing needs an AWS account.
#[derive(Debug, Parser)]
#[command(
    name = "dsql-pgx",
    version,
    propagate_version = true,
    max_term_width = 100,
    // -h and -V are among the global options (GlobalArgs), under their heading.
    disable_help_flag = true,
    disable_version_flag = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,

    #[command(flatten)]
    pub global: GlobalArgs,
}

impl Cli {
    /// Parses the process's arguments with [`command`]'s rules.
    pub fn parse_env() -> Result<Cli, clap::Error> {
        use clap::FromArgMatches;
        Cli::from_arg_matches(&command().try_get_matches()?)
    }
}

/// The command line's definition. A variable set to the empty string counts as unset, as
/// for an unset one: `PGSSLROOTCERT= dsql-pgx ...` uses the default roots.
pub fn command() -> clap::Command {
    fn unset_empty(cmd: clap::Command) -> clap::Command {
        cmd.mut_args(|arg| {
            let empty = arg
                .get_env()
                .and_then(std::env::var_os)
                .is_some_and(|value| value.is_empty());
            if empty { arg.env(None) } else { arg }
        })
        .mut_subcommands(unset_empty)
    }
    unset_empty(<Cli as clap::CommandFactory>::command())
}

/// Options every command understands, shown under their own heading.
#[derive(Debug, Args)]
#[command(next_help_heading = "Global options")]
pub struct GlobalArgs {
    /// Print more on stderr: `-v` timing and info, `-vv` debug tracing. RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count, conflicts_with = "quiet")]
    pub verbose: u8,

    /// Print results only: no statistics or notices on stderr, errors still shown.
    #[arg(short, long, global = true)]
    pub quiet: bool,

    /// Print help (a summary with -h).
    #[arg(short, long, global = true, action = clap::ArgAction::Help)]
    pub help: Option<bool>,

    /// Print the version.
    #[arg(short = 'V', long, global = true, action = clap::ArgAction::Version)]
    pub version: Option<bool>,
}

/// The output formats for data. Each command takes the ones that mean something for it
/// (`query` all but `text`; `connect`, `refresh-demo`, `bench` table or json; `token` and
/// `local` text or json), each described in that command's help.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Aligned table (boxed on a terminal, plain when piped).
    Table,
    /// Comma-separated values (RFC 4180), header row first.
    Csv,
    /// Tab-separated values, tabs and newlines in values escaped as \t and \n.
    Tsv,
    /// JSON.
    Json,
    /// Plain text: the token (`token`), shell lines (`local`).
    Text,
}

/// A `--format` parser taking only `allowed` (name, help) of [`Format`]'s values, so help
/// and completions offer only what the command can print.
fn formats(
    allowed: &'static [(&'static str, &'static str)],
) -> impl clap::builder::TypedValueParser<Value = Format> {
    use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser as _};
    let values = allowed
        .iter()
        .map(|(name, help)| PossibleValue::new(*name).help(*help));
    PossibleValuesParser::new(values).try_map(|name| Format::from_str(&name, false))
}

/// The formats of a command that prints a report.
const REPORT_FORMATS: &[(&str, &str)] = &[
    (
        "table",
        "Aligned tables (boxed on a terminal, plain when piped)",
    ),
    ("json", "One JSON document"),
];

/// The formats of a command that prints one thing.
const TEXT_FORMATS: &[(&str, &str)] = &[("text", "Plain text"), ("json", "One JSON object")];

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run SQL with tokens handled and print the results.
    ///
    /// Statements come from the argument, from `-f FILE`, or from stdin (`-` or no argument
    /// with stdin not a terminal). Each statement runs in autocommit, or all of them in one
    /// transaction with `--transaction`.
    Query(QueryArgs),

    /// Open the pool and show each connection's session ID, TLS and timing.
    ///
    /// One row per connection: number, session ID, server version, TLS version, connect time
    /// and token age; the pool's statistics in one line on stderr. `-v` splits the connect
    /// time into token, TCP, TLS handshake and auth, and prints every pool counter.
    Connect(ConnectArgs),

    /// Print an IAM auth token, for `PGPASSWORD=$(dsql-pgx token) psql ...`.
    ///
    /// Signing is local: no network is needed once credentials are resolved.
    Token(TokenArgs),

    /// Show that a token refresh replaces every connection while queries keep succeeding.
    ///
    /// `--workers` tasks query through the pool while it refreshes every `--interval`. Each
    /// refresh prints one line: its generation, the connections it retired (those open when
    /// it started; `(+N)`: N of them opened since the refresh before, as busy workers needed
    /// more) → the fresh ones open when it ended, their overlap (must be 0), queries ok and
    /// failed since the refresh before, their latency p50 and p99, and the time it took; `-v`
    /// adds the session IDs. A summary follows at the end. Latency percentiles are exact to
    /// the microsecond below 2 ms and within 0.1 % above (a histogram of 3 significant
    /// digits, constant in memory). Exit code 5 if a connection survived a refresh or a query
    /// failed.
    RefreshDemo(RefreshDemoArgs),

    /// Run a local DSQL-compatible endpoint that checks IAM tokens, in front of PostgreSQL.
    Local(LocalArgs),

    /// Measure throughput and latency of one statement through the pool.
    ///
    /// `--clients` tasks each check a connection out of the pool, run the statement
    /// (prepared once per connection) and return the connection, as fast as they can, for
    /// `--warmup` and then `--duration`. Prints throughput, latency percentiles, errors by
    /// SQLSTATE, connections opened, refreshes and the pool's statistics. Latency percentiles
    /// are exact to the microsecond below 2 ms and within 0.1 % above (a histogram of 3
    /// significant digits, constant in memory).
    Bench(BenchArgs),

    /// Print a shell completion script.
    Completions(CompletionsArgs),
}

impl Command {
    /// The `--format` and `--no-header` given to the subcommand (`completions` has neither).
    pub fn output_format(&self) -> (Format, bool) {
        match self {
            Command::Query(args) => (args.format, args.no_header),
            Command::Connect(args) => (args.format, false),
            Command::Token(args) => (args.format, false),
            Command::RefreshDemo(args) => (args.format, false),
            Command::Local(args) => (args.format, false),
            Command::Bench(args) => (args.format, false),
            Command::Completions(_) => (Format::Text, false),
        }
    }

    /// The subcommand's name, as typed.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Query(_) => "query",
            Command::Connect(_) => "connect",
            Command::Token(_) => "token",
            Command::RefreshDemo(_) => "refresh-demo",
            Command::Local(_) => "local",
            Command::Bench(_) => "bench",
            Command::Completions(_) => "completions",
        }
    }
}

/// Who to sign a token for: shared by `token` and every connecting command.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Connection options")]
pub struct TargetArgs {
    /// Cluster endpoint to sign for, or a bare 26-character cluster id.
    #[arg(
        long,
        visible_alias = "hostname",
        env = "CLUSTER_ENDPOINT",
        value_name = "HOST"
    )]
    pub endpoint: Option<String>,

    /// AWS region to sign for [env: REGION; default: parsed from the endpoint, else
    /// AWS_REGION or AWS_DEFAULT_REGION]. Not needed with --no-iam.
    #[arg(long, value_name = "REGION")]
    pub region: Option<String>,

    /// Database role [env: DB_USER, CLUSTER_USER; default: admin].
    ///
    /// `admin` gets a DbConnectAdmin token, any other role a DbConnect token.
    #[arg(long, value_name = "ROLE")]
    pub user: Option<String>,

    /// AWS profile for credentials (default: the AWS default chain).
    #[arg(long, env = "AWS_PROFILE", value_name = "NAME")]
    pub profile: Option<String>,

    /// Token lifetime: humantime (`90s`, `15m`, `1h`) or bare seconds, 1 s to 1 week.
    #[arg(
        long,
        visible_alias = "expires-in",
        env = "TOKEN_EXPIRES_IN",
        value_name = "DURATION",
        default_value = "15m"
    )]
    pub token_expires_in: String,
}

/// How to connect: the target plus TLS, pool and IAM options.
#[derive(Debug, Clone, Args)]
pub struct ConnArgs {
    /// Run against an ephemeral local endpoint (needs PostgreSQL server binaries).
    ///
    /// Starts `dsql-pgx local` in-process on a free port, connects with its credentials and
    /// CA, and tears it down afterwards. Endpoint, region, port and TLS flags are ignored.
    #[arg(long, help_heading = "Connection options")]
    pub local: bool,

    #[command(flatten)]
    pub target: TargetArgs,

    #[command(flatten)]
    pub address: AddressArgs,

    /// Authenticate with IAM tokens: the default, DSQL accepts nothing else [env: DB_USE_IAM].
    #[arg(long, overrides_with = "no_iam", help_heading = "Connection options")]
    pub iam: bool,

    /// Use the password from PGPASSWORD instead of IAM tokens (plain PostgreSQL).
    #[arg(long, overrides_with = "iam", help_heading = "Connection options")]
    pub no_iam: bool,

    /// TLS mode.
    #[arg(long, env = "PGSSLMODE", value_enum, default_value_t = SslMode::VerifyFull,
          help_heading = "TLS options")]
    pub sslmode: SslMode,

    /// How TLS is negotiated [default: direct for *.dsql.REGION.on.aws endpoints (and
    /// --local), postgres for other hosts].
    ///
    /// DSQL accepts PostgreSQL 17 direct TLS, which saves the SSLRequest's round trip on every
    /// connection; a server that predates PostgreSQL 17 needs `postgres`.
    #[arg(
        long,
        env = "PGSSLNEGOTIATION",
        value_enum,
        help_heading = "TLS options"
    )]
    pub ssl_negotiation: Option<SslNegotiation>,

    /// Maximum connections in the pool.
    #[arg(
        long,
        env = "DB_MAX_CONNS",
        default_value_t = 10,
        value_name = "N",
        help_heading = "Pool options"
    )]
    pub max_conns: u32,

    /// Idle connections the pool keeps open [default: 2, or --max-conns if that is less].
    #[arg(
        long,
        env = "DB_MIN_CONNS",
        value_name = "N",
        help_heading = "Pool options"
    )]
    pub min_idle: Option<u32>,

    /// Close connections older than this (must stay below DSQL's 60-minute limit).
    #[arg(
        long,
        default_value = "55m",
        value_name = "DURATION",
        help_heading = "Pool options"
    )]
    pub max_lifetime: String,

    /// Close connections idle longer than this.
    #[arg(
        long,
        default_value = "10m",
        value_name = "DURATION",
        help_heading = "Pool options"
    )]
    pub idle_timeout: String,

    /// Give up on a new connection (token, TCP, TLS, auth) after this long.
    #[arg(
        long,
        default_value = "10s",
        value_name = "DURATION",
        help_heading = "Pool options"
    )]
    pub connect_timeout: String,
}

/// Where a client connects, beside the endpoint it signs for: shared by every connecting
/// command and `token --url`.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Connection options")]
pub struct AddressArgs {
    /// Host to connect to, when it differs from the endpoint signed for (tunnels, PrivateLink).
    #[arg(long, env = "DB_HOST", value_name = "HOST")]
    pub host: Option<String>,

    /// Port to connect to.
    #[arg(long, env = "DB_PORT", default_value_t = 5432)]
    pub port: u16,

    /// Database name (DSQL has only `postgres`).
    #[arg(long, env = "DB_NAME", default_value = "postgres", value_name = "NAME")]
    pub database: String,

    /// PEM file of CA certificates to trust instead of the Mozilla/webpki roots.
    #[arg(
        long,
        env = "PGSSLROOTCERT",
        value_name = "FILE",
        help_heading = "TLS options"
    )]
    pub ca_file: Option<PathBuf>,
}

/// TLS modes, as in libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SslMode {
    /// Encrypt and verify the certificate chain and host name (DSQL's production setting).
    VerifyFull,
    /// Encrypt without verifying the certificate (testing only).
    Require,
    /// No TLS: refused with IAM on, since DSQL rejects plaintext.
    Disable,
}

/// How the TLS session is started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SslNegotiation {
    /// Classic SSLRequest, then TLS.
    Postgres,
    /// PostgreSQL 17 direct TLS with ALPN `postgresql`: one round trip less.
    Direct,
}

/// The SQL `local` speaks behind IAM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LocalDialect {
    /// Aurora DSQL's: what DSQL refuses is refused as DSQL refuses it.
    Dsql,
    /// Plain PostgreSQL, statements relayed as they are.
    Postgres,
}

impl From<LocalDialect> for crate::local::Dialect {
    fn from(d: LocalDialect) -> Self {
        match d {
            LocalDialect::Dsql => Self::Dsql,
            LocalDialect::Postgres => Self::Postgres,
        }
    }
}

/// Arguments of `query`.
#[derive(Debug, Args)]
pub struct QueryArgs {
    /// SQL to run; `-` reads stdin.
    #[arg(value_name = "SQL", conflicts_with = "file")]
    pub sql: Option<String>,

    /// Read SQL from a file.
    #[arg(short, long, value_name = "FILE")]
    pub file: Option<PathBuf>,

    /// Run all statements in one transaction (BEGIN ... COMMIT), retried as a whole.
    #[arg(long)]
    pub transaction: bool,

    /// Print each row as a record of `column | value` lines, as psql's `\x` does.
    ///
    /// Tables only. Without it, a result wider than the terminal is printed so too, rather
    /// than wrapped.
    #[arg(short = 'x', long)]
    pub expanded: bool,

    /// Format of the results on stdout.
    #[arg(long, default_value = "table", value_parser = formats(&[
        ("table", "Aligned tables (boxed on a terminal, plain when piped), command tags after"),
        ("csv", "Comma-separated values (RFC 4180), header row first"),
        ("tsv", "Tab-separated values; tabs, newlines and backslashes escaped as \\t, \\n, \\\\"),
        ("json", "One JSON object per row, keys in column order, numbers with every digit"),
    ]))]
    pub format: Format,

    /// Omit the header row in csv and tsv output.
    #[arg(long)]
    pub no_header: bool,

    #[command(flatten)]
    pub retry: RetryArgs,

    #[command(flatten)]
    pub conn: ConnArgs,
}

/// Optimistic-concurrency retry flags.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Retry options")]
pub struct RetryArgs {
    /// Retries after an optimistic-concurrency conflict (SQLSTATE 40001, OC000, OC001).
    #[arg(long, default_value_t = 3, value_name = "N")]
    pub retries: u32,

    /// Backoff ceiling of the first retry; doubles each retry, with full jitter.
    #[arg(long, default_value = "10ms", value_name = "DURATION")]
    pub retry_base: String,

    /// Largest backoff ceiling.
    #[arg(long, default_value = "1s", value_name = "DURATION")]
    pub retry_max: String,

    /// Never retry conflicts.
    #[arg(long, conflicts_with = "retries")]
    pub no_retry: bool,
}

/// Arguments of `connect`.
#[derive(Debug, Args)]
pub struct ConnectArgs {
    /// Connections to open at once (default: --min-idle, at least 1).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub count: Option<u32>,

    /// Format of the report on stdout.
    #[arg(long, default_value = "table", value_parser = formats(REPORT_FORMATS))]
    pub format: Format,

    #[command(flatten)]
    pub conn: ConnArgs,
}

/// Arguments of `token`.
#[derive(Debug, Args)]
pub struct TokenArgs {
    /// Sign a DbConnectAdmin token whatever the user.
    #[arg(long)]
    pub admin: bool,

    /// Print a libpq connection URL instead, the token as its password (percent-encoded):
    /// `psql "$(dsql-pgx token --url)"`.
    ///
    /// It names the endpoint, --port, --database, sslmode=verify-full and --ca-file (else
    /// `sslrootcert=system`, which needs libpq 16 or later); an IP address in --host becomes
    /// `hostaddr`.
    #[arg(long)]
    pub url: bool,

    /// Format of the output: the token (or URL) alone, or JSON with its hostname, region,
    /// action and expiry.
    #[arg(long, default_value = "text", value_parser = formats(TEXT_FORMATS))]
    pub format: Format,

    #[command(flatten)]
    pub target: TargetArgs,

    #[command(flatten)]
    pub address: AddressArgs,
}

/// Arguments of `refresh-demo`.
#[derive(Debug, Args)]
pub struct RefreshDemoArgs {
    /// Time between refreshes [default: the refresh interval].
    #[arg(long, value_name = "DURATION")]
    pub interval: Option<String>,

    /// Stop after this long [default: until Ctrl-C or SIGTERM].
    #[arg(long, value_name = "DURATION", conflicts_with = "refreshes")]
    pub duration: Option<String>,

    /// Stop after this many refreshes [default: until Ctrl-C or SIGTERM].
    #[arg(long, value_name = "N")]
    pub refreshes: Option<u32>,

    /// Tasks querying continuously through the pool.
    #[arg(long, default_value_t = 4, value_name = "N")]
    pub workers: u32,

    /// Format of the output on stdout.
    #[arg(long, default_value = "table", value_parser = formats(&[
        ("table", "A line per refresh, then a summary table"),
        ("json", "A JSON object per refresh, then a summary object, one per line"),
    ]))]
    pub format: Format,

    #[command(flatten)]
    pub refresh: RefreshArgs,

    #[command(flatten)]
    pub conn: ConnArgs,
}

/// Periodic token refresh, for long-running commands.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Refresh options")]
pub struct RefreshArgs {
    /// Refresh tokens and replace connections periodically (`--refresh false` to turn off).
    #[arg(long, env = "DB_REFRESH_TOKEN", value_name = "BOOL", default_value = "true",
          action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true",
          value_parser = clap::builder::BoolishValueParser::new())]
    pub refresh: bool,

    /// Refresh period: humantime (`15m`, `1h`) or bare seconds (`900`).
    #[arg(
        long,
        env = "TOKEN_REFRESH_INTERVAL",
        default_value = "15m",
        value_name = "DURATION"
    )]
    pub refresh_interval: String,
}

/// Arguments of `bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// SQL to run repeatedly: one statement without parameters, prepared once per connection.
    #[arg(value_name = "SQL", default_value = "select 1")]
    pub sql: String,

    /// Tasks querying concurrently, each checking a connection out of the pool per query.
    ///
    /// The pool opens this many connections up front (at most --max-conns; clients beyond
    /// that wait for a free connection), and keeps as many spare while they are busy, up to
    /// --max-conns in all: spares take a refresh's new connections without a wait. With
    /// --threads, each thread's pool does so for its share of the clients.
    #[arg(long, default_value_t = 8, value_name = "N")]
    pub clients: u32,

    /// How long to measure, after the warm-up.
    #[arg(long, default_value = "10s", value_name = "DURATION")]
    pub duration: String,

    /// How long to run before measuring (statements prepared, caches warm); `0s` for none.
    ///
    /// Errors during the warm-up are counted too; latencies and throughput are not.
    #[arg(long, default_value = "2s", value_name = "DURATION")]
    pub warmup: String,

    /// Refresh tokens and replace every connection this often while measuring.
    #[arg(long, value_name = "DURATION")]
    pub refresh_every: Option<String>,

    /// Queries each client keeps in flight on its connection (tokio-postgres pipelining).
    ///
    /// 1 is one query per round trip, as `pgbench -M prepared`; more sends the next queries
    /// before the first answer arrives.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub pipeline: u32,

    /// Threads, as pgbench's -j: each runs its share of the clients on a pool of its own,
    /// with no wake-ups crossing threads. 1 (the default) runs everything on one thread.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub threads: u32,

    /// Format of the report on stdout.
    #[arg(long, default_value = "table", value_parser = formats(REPORT_FORMATS))]
    pub format: Format,

    #[command(flatten)]
    pub conn: ConnArgs,
}

/// Arguments of `local`.
#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("secret_key").args(["secret_access_key", "secret_access_key_file"]))]
pub struct LocalArgs {
    /// Address to listen on for TLS clients.
    #[arg(long, default_value = "127.0.0.1:5432", value_name = "ADDR")]
    pub listen: String,

    /// Port to listen on, overriding the one in --listen (0 picks a free port).
    #[arg(long)]
    pub port: Option<u16>,

    /// Directory for the PostgreSQL cluster, CA and credentials (default: a fresh temp dir).
    ///
    /// It must be yours and writable by nobody else, as must every file in it; it is made
    /// 0700 (0711 as root, so the `postgres` OS user, which owns only its pgdata/, can
    /// traverse it). Anything else, or a dir made by an earlier dsql-pgx, is refused (exit 2).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    /// Keep state in your own default data dir instead of a temp dir.
    ///
    /// $XDG_STATE_HOME/dsql-pgx/local (default ~/.local/state/dsql-pgx/local), or
    /// /var/lib/dsql-pgx/local as root.
    #[arg(long, conflicts_with = "data_dir")]
    pub persist: bool,

    /// Host name clients sign tokens for and send as TLS SNI.
    ///
    /// Default: `dsqlpgxlocal00000000000000.dsql.<region>.on.aws`, shaped like a DSQL
    /// endpoint, so that AWS's connectors and ORM dialects take it as one (they expand a
    /// name without a dot, such as localhost, into a cluster id). It resolves nowhere:
    /// clients connect to DB_HOST / PGHOSTADDR with this name for TLS (see README).
    #[arg(long, value_name = "HOST")]
    pub hostname: Option<String>,

    /// Region clients sign tokens for.
    #[arg(long, default_value = "us-east-1")]
    pub region: String,

    /// Access key id to accept (default: generated and kept in the data dir).
    #[arg(long, requires = "secret_key", value_name = "ID")]
    pub access_key_id: Option<String>,

    /// Secret access key to accept (default: generated and kept in the data dir).
    ///
    /// Prefer DSQL_LOCAL_SECRET_ACCESS_KEY or --secret-access-key-file: a value on the
    /// command line is visible to every user of the machine (`ps`).
    #[arg(
        long,
        requires = "access_key_id",
        env = "DSQL_LOCAL_SECRET_ACCESS_KEY",
        hide_env_values = true,
        value_name = "SECRET"
    )]
    pub secret_access_key: Option<String>,

    /// Read the secret access key from this file (yours, mode 0600, not a symbolic link).
    #[arg(
        long,
        requires = "access_key_id",
        conflicts_with = "secret_access_key",
        value_name = "PATH"
    )]
    pub secret_access_key_file: Option<PathBuf>,

    /// Write the exports to this file instead of stdout, once the endpoint accepts
    /// connections.
    ///
    /// Written atomically (a fresh file, mode 0600, renamed into place), so a script can
    /// wait for the file to appear and then source it; removed when local stops cleanly.
    /// Its directory must be yours or root's and writable by nobody else, unless sticky.
    #[arg(long, value_name = "PATH")]
    pub env_file: Option<PathBuf>,

    /// SQL spoken behind IAM: DSQL's (statements DSQL refuses are refused with its SQLSTATEs
    /// and words, CREATE INDEX ASYNC builds in the background), or plain PostgreSQL.
    #[arg(long, value_enum, default_value_t = LocalDialect::Dsql)]
    pub dialect: LocalDialect,

    /// Fail transactions older than this, as DSQL does at 5 minutes (with --dialect dsql).
    #[arg(long, default_value = "5m", value_name = "DURATION")]
    pub max_transaction_age: String,

    /// The IAM identity the endpoint's keys stand for (exported as DSQL_IAM_ARN).
    ///
    /// As on DSQL, a role other than admin logs in only once admin ran `AWS IAM GRANT <role>
    /// TO '<this ARN>'` (with --dialect dsql); `SELECT * FROM sys.iam_pg_role_mappings` shows
    /// the grants. An IAM role's or user's ARN: arn:aws:iam::<12 digits>:role/<name>.
    #[arg(long, default_value = crate::local::DEFAULT_IAM_ARN, value_name = "ARN")]
    pub iam_arn: String,

    /// Close client connections older than this, as DSQL does at one hour.
    #[arg(long, default_value = "1h", value_name = "DURATION")]
    pub max_connection_age: String,

    /// Refuse connections beyond this many (SQLSTATE 53300).
    ///
    /// DSQL allows 10,000; the local endpoint at most 500 (a larger value, or 0, is capped with
    /// a warning): the private PostgreSQL is sized for this limit, so a client beyond it gets
    /// DSQL's 53300 from the endpoint, never PostgreSQL's own refusal.
    #[arg(long, default_value_t = 500, value_name = "N")]
    pub max_connections: u32,

    /// New connections per second before refusing (SQLSTATE 53400).
    #[arg(long, default_value_t = 100, value_name = "N")]
    pub rate: u32,

    /// Burst of new connections allowed above the rate.
    #[arg(long, default_value_t = 1000, value_name = "N")]
    pub burst: u32,

    /// Runtime worker threads for TLS and relaying (0 = one per core).
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub threads: u32,

    /// Format of what is printed once the endpoint is ready: `unset`/`export` lines for a
    /// shell to eval, or the same variables as one JSON object.
    #[arg(long, default_value = "text", value_parser = formats(TEXT_FORMATS))]
    pub format: Format,
}

/// Arguments of `completions`.
#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// Shell to generate completions for.
    #[arg(value_enum)]
    pub shell: Shell,
}

/// Parses `argv` as [`command`] does, with no environment variable read: unit tests do not
/// depend on the shell they run in.
#[cfg(test)]
pub(crate) fn parse_isolated(argv: &[&str]) -> Result<Cli, clap::Error> {
    use clap::FromArgMatches;
    fn no_env(cmd: clap::Command) -> clap::Command {
        cmd.mut_args(|arg| arg.env(None)).mut_subcommands(no_env)
    }
    let cmd = no_env(<Cli as clap::CommandFactory>::command());
    Cli::from_arg_matches(&cmd.try_get_matches_from(argv)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn command_names_are_what_the_user_types() {
        for sub in command().get_subcommands() {
            let name = sub.get_name();
            let extra: &[&str] = if name == "completions" {
                &["bash"]
            } else {
                &[]
            };
            let argv = ["dsql-pgx", name].into_iter().chain(extra.iter().copied());
            let argv: Vec<&str> = argv.collect();
            let cli = parse_isolated(&argv).unwrap();
            assert_eq!(cli.command.name(), name);
        }
    }

    #[test]
    fn local_dialect_defaults_to_dsql_and_can_be_switched_off() {
        let dialect = |extra: &[&str]| {
            let argv: Vec<&str> = ["dsql-pgx", "local"].iter().chain(extra).copied().collect();
            match parse_isolated(&argv).unwrap().command {
                Command::Local(a) => crate::local::Dialect::from(a.dialect),
                _ => unreachable!(),
            }
        };
        assert_eq!(dialect(&[]), crate::local::Dialect::Dsql);
        assert_eq!(
            dialect(&["--dialect", "postgres"]),
            crate::local::Dialect::Postgres
        );
        assert!(parse_isolated(&["dsql-pgx", "local", "--dialect", "mysql"]).is_err());
    }
}
