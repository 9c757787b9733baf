//! Client-side helpers: the dsql-pgx binary as a test runs it, and library settings that
//! reach a [`TestEndpoint`] or a [`TestPg`].

use std::process::Output;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_credential_types::provider::error::CredentialsError;
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider, future};

use dsql_pgx::ConnSettings;
use dsql_pgx::auth::{CredentialSource, Secret};

use super::{TestEndpoint, TestPg};

/// Variables a developer's shell may set that would change what the binary does.
const AMBIENT: &[&str] = &[
    "CLUSTER_ENDPOINT",
    "CLUSTER_USER",
    "REGION",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_PROFILE",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "DB_HOST",
    "DB_PORT",
    "DB_USER",
    "DB_NAME",
    "DB_USE_IAM",
    "DB_MAX_CONNS",
    "DB_MIN_CONNS",
    "DB_REFRESH_TOKEN",
    "TOKEN_REFRESH_INTERVAL",
    "TOKEN_EXPIRES_IN",
    "PGSSLMODE",
    "PGSSLROOTCERT",
    "PGSSLNEGOTIATION",
    "PGPASSWORD",
    "DSQL_LOCAL_SECRET_ACCESS_KEY",
    "RUST_LOG",
    "RUST_BACKTRACE",
];

/// The built binary with a clean environment: no ambient AWS or PG settings, no colour.
/// The one way tests launch it: as this, as [`dsql_pgx_std`] (for tests that wire its stdio
/// themselves, or as `tokio::process::Command::from(dsql_pgx_std())`), or, for a copy of the
/// binary, as [`scrubbed`].
pub fn dsql_pgx() -> assert_cmd::Command {
    assert_cmd::Command::from_std(dsql_pgx_std())
}

/// [`dsql_pgx`] as a plain `std` command.
pub fn dsql_pgx_std() -> std::process::Command {
    scrubbed(env!("CARGO_BIN_EXE_dsql-pgx"))
}

/// `program` (the binary, or a copy of it) with [`dsql_pgx`]'s clean environment.
pub fn scrubbed(program: impl AsRef<std::ffi::OsStr>) -> std::process::Command {
    let mut cmd = std::process::Command::new(program);
    for var in AMBIENT {
        cmd.env_remove(var);
    }
    // Keep the AWS SDK away from a developer's ~/.aws and from instance metadata.
    cmd.env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("NO_COLOR", "1");
    cmd
}

/// Runs a prepared command off the async runtime and returns what it printed.
pub async fn output(mut cmd: assert_cmd::Command) -> Output {
    tokio::task::spawn_blocking(move || cmd.output().expect("running dsql-pgx"))
        .await
        .expect("joining the command")
}

/// Runs `dsql-pgx ARGS` against the endpoint (its environment, IAM on).
pub async fn run_at(endpoint: &TestEndpoint, args: &[&str]) -> Output {
    let mut cmd = dsql_pgx();
    cmd.envs(endpoint.env()).args(args);
    output(cmd).await
}

/// The flags that reach the plain PostgreSQL without IAM (its password and CA come from
/// `PGPASSWORD` and `PGSSLROOTCERT`, or whatever the test sets instead). No region: only
/// signing needs one.
pub fn plain_flags(pg: &TestPg) -> Vec<String> {
    ["--endpoint", "localhost", "--no-iam", "--port"]
        .iter()
        .map(|s| s.to_string())
        .chain([pg.port().to_string()])
        .collect()
}

/// Runs `dsql-pgx ARGS` against the plain PostgreSQL with `--no-iam` and its CA.
pub async fn run_plain(pg: &TestPg, args: &[&str]) -> Output {
    let mut cmd = dsql_pgx();
    cmd.env("PGPASSWORD", pg.password())
        .env("PGSSLROOTCERT", pg.ca_path())
        .args(args)
        .args(plain_flags(pg));
    output(cmd).await
}

/// A pseudo-terminal of `columns` columns (the system's default size when `None`): the side
/// to give a child as stdout or stderr, and a thread collecting everything the terminal
/// shows until the last process holding that side is gone.
pub fn terminal(columns: Option<u16>) -> (std::os::fd::OwnedFd, std::thread::JoinHandle<String>) {
    use std::io::Read;
    let size = columns.map(|ws_col| nix::pty::Winsize {
        ws_row: 24,
        ws_col,
        ws_xpixel: 0,
        ws_ypixel: 0,
    });
    let pty = nix::pty::openpty(size.as_ref(), None).expect("a pseudo-terminal");
    let mut master = std::fs::File::from(pty.master);
    let reader = std::thread::spawn(move || {
        let mut shown = Vec::new();
        let mut buf = [0u8; 4096];
        // Linux reports EIO on the master once no process holds the other side.
        while let Ok(n @ 1..) = master.read(&mut buf) {
            shown.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&shown).into_owned()
    });
    (pty.slave, reader)
}

/// Runs a prepared command with stdout on a pseudo-terminal of `columns` columns and returns
/// what it printed (stderr captured as usual) and what the terminal showed (`\r\n` as `\n`).
pub async fn on_terminal(mut cmd: std::process::Command, columns: u16) -> (Output, String) {
    use std::os::unix::process::CommandExt;
    let (side, reader) = terminal(Some(columns));
    cmd.stdout(std::process::Stdio::from(side));
    // SAFETY: setsid is async-signal-safe. In a session of its own the child has no
    // controlling terminal, so its terminal size is its stdout's, not that of whatever
    // terminal runs the tests.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid()
                .map(drop)
                .map_err(std::io::Error::from)
        });
    }
    let (out, shown) = run_on_terminal(cmd, reader).await;
    (out, shown.replace("\r\n", "\n"))
}

/// Runs a command wired to a [`terminal`] and returns what it printed and what the terminal
/// showed.
pub async fn run_on_terminal(
    mut cmd: std::process::Command,
    reader: std::thread::JoinHandle<String>,
) -> (Output, String) {
    let out = tokio::task::spawn_blocking(move || cmd.output().expect("running dsql-pgx"))
        .await
        .unwrap();
    let shown = tokio::task::spawn_blocking(move || reader.join().unwrap())
        .await
        .unwrap();
    (out, shown)
}

/// Asserts that no line of `text` is wider than `columns` (so a terminal wraps none).
pub fn assert_fits(text: &str, columns: usize) {
    for line in text.lines() {
        assert!(
            line.chars().count() <= columns,
            "a line wider than {columns} columns:\n{line}\nin\n{text}"
        );
    }
}

/// The session IDs (26 letters and digits) `text` shows whole; one cut over two lines
/// shows as pieces, which are not counted.
pub fn whole_ids(text: &str) -> Vec<&str> {
    text.split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|word| word.len() == 26)
        .collect()
}

/// stdout as text.
pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// stderr as text.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Asserts the exit code, showing both streams when it differs.
pub fn assert_code(out: &Output, code: i32) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "exit code\n--- stdout\n{}\n--- stderr\n{}",
        stdout(out),
        stderr(out)
    );
}

impl TestEndpoint {
    /// Library settings that reach this endpoint as `user` with IAM tokens.
    pub fn settings(&self, user: &str) -> ConnSettings {
        self.settings_with(
            user,
            CredentialSource::Static {
                access_key_id: self.access_key_id().to_string(),
                secret_access_key: Secret::new(self.secret_access_key()),
            },
        )
    }

    /// Library settings with a credential source of the test's choosing.
    pub fn settings_with(&self, user: &str, credentials: CredentialSource) -> ConnSettings {
        let mut settings = self.endpoint().conn_settings(user);
        settings.target.credentials = credentials;
        settings
    }
}

impl TestPg {
    /// Library settings that reach this PostgreSQL as its superuser with the password, TLS
    /// verified against its CA.
    pub fn settings(&self) -> ConnSettings {
        ConnSettings::builder(self.host())
            .region("us-east-1")
            .user(self.user())
            .host("127.0.0.1")
            .port(self.port())
            .password(Some(Secret::new(self.password())))
            .ca_file(self.ca_path())
            .build()
            .expect("the test server's settings are valid")
    }
}

/// The endpoint's credentials, switchable off and on, as when a role's session ends and
/// comes back. They expire within the signer's refresh margin, so every signature resolves
/// them again: while off, no new connection can be signed.
#[derive(Debug, Clone)]
pub struct FlakyCredentials {
    access_key_id: String,
    secret_access_key: String,
    /// Whether credentials resolve.
    pub on: Arc<AtomicBool>,
}

impl FlakyCredentials {
    /// Credentials for `endpoint`, on.
    pub fn new(endpoint: &TestEndpoint) -> FlakyCredentials {
        FlakyCredentials {
            access_key_id: endpoint.access_key_id().to_string(),
            secret_access_key: endpoint.secret_access_key().to_string(),
            on: Arc::new(AtomicBool::new(true)),
        }
    }

    /// Turns resolution off (`false`) or back on.
    pub fn set(&self, on: bool) {
        self.on.store(on, Ordering::SeqCst);
    }

    /// As a credential source for [`TestEndpoint::settings_with`].
    pub fn source(&self) -> CredentialSource {
        CredentialSource::Provider(SharedCredentialsProvider::new(self.clone()))
    }
}

impl ProvideCredentials for FlakyCredentials {
    fn provide_credentials<'a>(&'a self) -> future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        future::ProvideCredentials::ready(if self.on.load(Ordering::SeqCst) {
            Ok(Credentials::new(
                &self.access_key_id,
                &self.secret_access_key,
                None,
                Some(SystemTime::now() + Duration::from_secs(60)),
                "flaky",
            ))
        } else {
            Err(CredentialsError::not_loaded("credentials went away"))
        })
    }
}

/// Spawns a prepared `dsql-pgx local` command (stdout piped here; stderr as the caller set
/// it) and waits, at most 60 s, for the lines it prints up to the `export` line.
pub async fn spawn_local(mut cmd: tokio::process::Command) -> (tokio::process::Child, String) {
    use tokio::io::AsyncBufReadExt as _;
    cmd.stdout(std::process::Stdio::piped()).kill_on_drop(true);
    // A freshly copied binary can be briefly "busy": a process another test forks at that
    // moment holds the copy's write descriptor until it execs. Linux's answer is to retry.
    let mut tries = 0;
    let mut child = loop {
        match cmd.spawn() {
            Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy && tries < 50 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            spawned => break spawned.unwrap(),
        }
    };
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap());
    let mut exports = String::new();
    while !exports.contains("export ") {
        let mut line = String::new();
        let n = tokio::time::timeout(Duration::from_secs(60), lines.read_line(&mut line))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "local exited early");
        exports.push_str(&line);
    }
    (child, exports)
}

/// The variables of the `export` line `local` prints.
pub fn exported(exports: &str) -> Vec<(String, String)> {
    exports
        .lines()
        .find(|l| l.starts_with("export "))
        .unwrap()
        .trim_start_matches("export ")
        .split(' ')
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap();
            (k.to_string(), v.trim_matches('\'').to_string())
        })
        .collect()
}

/// Sends SIGTERM and returns how the process ended, within 30 s.
pub async fn sigterm(child: &mut tokio::process::Child) -> std::process::ExitStatus {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id().unwrap() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("the process ends within 30 s of SIGTERM")
        .unwrap()
}

/// Sends SIGTERM and expects a clean exit (0) within 30 s.
pub async fn stop_with_sigterm(child: &mut tokio::process::Child) {
    let status = sigterm(child).await;
    assert!(status.success(), "{status:?}");
}
