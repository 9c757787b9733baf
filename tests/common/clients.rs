//! Other people's clients against `dsql-pgx local`, the way README tells a user to run
//! them: `local --env-file` started as a process, the file awaited, then each client run
//! by a shell that sources the file. The client libraries are the pinned ones `.ci/run`
//! installs under `target/` (and Debian's pgJDBC); a missing one fails the test, saying
//! how to install it.

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use super::dsql::{dsql_pgx_std, sigterm};

/// How long `local` may take to write its env file on a loaded machine.
const READY_TIMEOUT: Duration = Duration::from_secs(90);
/// How long one client program may run (a JVM compiling a source file is the slowest).
const CLIENT_TIMEOUT: Duration = Duration::from_secs(120);
/// What a developer runs to get the clients.
const INSTALL: &str = "run `bash .ci/run install-clients` (it installs the pinned clients into target/ci-py and target/ci-node, and Debian's libpostgresql-jdbc-java)";

/// A file or directory a client needs, or a loud failure naming how to install it.
fn installed(path: PathBuf, what: &str) -> PathBuf {
    assert!(
        path.exists(),
        "{what} is missing ({}): {INSTALL}",
        path.display()
    );
    path
}

/// A program on PATH, or a loud failure naming how to install it.
fn on_path(program: &str, what: &str) {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&path).any(|dir| dir.join(program).is_file());
    assert!(found, "{what} ({program}) is not on PATH: {INSTALL}");
}

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The venv's Python, with AWS's Python connector and psycopg.
pub fn python() -> PathBuf {
    installed(
        repo().join("target/ci-py/bin/python"),
        "the client venv's Python",
    )
}

/// node_modules with AWS's Node connector and node-postgres (and node on PATH).
pub fn node_modules() -> PathBuf {
    on_path("node", "Node.js");
    installed(
        repo().join("target/ci-node/node_modules/@aws/aurora-dsql-node-postgres-connector"),
        "AWS's Node connector",
    );
    repo().join("target/ci-node/node_modules")
}

/// Debian's pgJDBC jar (and java on PATH).
pub fn pgjdbc_jar() -> PathBuf {
    on_path("java", "a JDK (Debian package default-jdk-headless)");
    installed(
        PathBuf::from("/usr/share/java/postgresql.jar"),
        "pgJDBC (Debian package libpostgresql-jdbc-java)",
    )
}

/// A client program in tests/clients/.
pub fn program(name: &str) -> PathBuf {
    repo().join("tests/clients").join(name)
}

/// A running `dsql-pgx local --port 0 --env-file DIR/env`, its exports written.
pub struct EnvFileLocal {
    child: tokio::process::Child,
    dir: tempfile::TempDir,
}

impl EnvFileLocal {
    /// Starts `local` with `args` added and waits, polling with a bound, for the env file
    /// to appear (README's recipe); panics with `local`'s stderr if it exits first.
    pub async fn start(args: &[&str]) -> EnvFileLocal {
        let dir = tempfile::tempdir().unwrap();
        let log = std::fs::File::create(dir.path().join("local.log")).unwrap();
        let mut cmd = tokio::process::Command::from(dsql_pgx_std());
        cmd.args(["local", "--port", "0", "--env-file"])
            .arg(dir.path().join("env"))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(log)
            .kill_on_drop(true);
        let child = cmd.spawn().expect("spawning dsql-pgx local");
        EnvFileLocal { child, dir }.wait_ready().await
    }

    async fn wait_ready(mut self) -> EnvFileLocal {
        let deadline = Instant::now() + READY_TIMEOUT;
        while !self.env_file().exists() {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "local exited ({status}) before writing its env file:\n{}",
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "no env file within {READY_TIMEOUT:?}:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self
    }

    /// The env file.
    pub fn env_file(&self) -> PathBuf {
        self.dir.path().join("env")
    }

    /// A private directory for the test's own files (next to the env file).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// What `local` wrote on stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("local.log")).unwrap_or_default()
    }

    /// A variable from the env file.
    pub fn var(&self, name: &str) -> String {
        let text = std::fs::read_to_string(self.env_file()).unwrap();
        super::dsql::exported(&text)
            .into_iter()
            .find(|(k, _)| k == name)
            .unwrap_or_else(|| panic!("{name} is not in the env file"))
            .1
    }

    /// Runs `script` with bash, after `. $ENV_FILE` (as README's recipes do), with no
    /// ambient AWS or PostgreSQL settings and `DSQL_PGX` naming the built binary.
    pub async fn run(&self, script: &str, envs: &[(&str, &Path)]) -> Output {
        // The binary's clean environment, for bash and the clients instead.
        let base = dsql_pgx_std();
        let mut bash = tokio::process::Command::new("bash");
        for (k, v) in base.get_envs() {
            match v {
                Some(v) => bash.env(k, v),
                None => bash.env_remove(k),
            };
        }
        bash.env_remove("PGHOST")
            .env_remove("PGHOSTADDR")
            .env_remove("PGPORT")
            .env_remove("PGUSER")
            .env_remove("PGDATABASE")
            .env("DSQL_PGX", base.get_program())
            .env("ENV_FILE", self.env_file())
            .envs(envs.iter().copied())
            .arg("-c")
            .arg(format!("set -eu; . \"$ENV_FILE\"; {script}"))
            .stdin(Stdio::null())
            .kill_on_drop(true);
        tokio::time::timeout(CLIENT_TIMEOUT, bash.output())
            .await
            .unwrap_or_else(|_| panic!("{script} ran over {CLIENT_TIMEOUT:?}"))
            .expect("running bash")
    }

    /// Stops `local` with SIGTERM: it must exit 0 and remove its env file.
    pub async fn stop(mut self) {
        let status = sigterm(&mut self.child).await;
        assert!(status.success(), "{status:?}\n{}", self.log());
        assert!(
            !self.env_file().exists(),
            "local removes its env file when it stops"
        );
    }
}
