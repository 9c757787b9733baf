//! A private PostgreSQL server: found on the machine, initialised on first use, started
//! as a child process (as the `postgres` OS user when running as root), and always
//! stopped again, also when its owner is dropped during a panic.
//!
//! It listens on a Unix socket inside its data directory and, optionally, on
//! 127.0.0.1 with TLS and SCRAM passwords; the settings that keep it private are given on
//! the `postgres` command line, which nothing written later (`ALTER SYSTEM`,
//! `postgresql.conf`) overrides. With `dsql_mimic` it behaves like Aurora DSQL: `admin` is
//! a role that is no superuser (the bootstrap superuser is [`INTERNAL_SUPERUSER`]),
//! `CREATE EXTENSION` is refused, transactions are repeatable read by default and
//! `sys.current_session_id()` exists.

use std::ffi::CString;
use std::fs;
use std::io::Read as _;
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::{Gid, Pid, Uid, User};
use tokio_postgres::error::SqlState;

use super::files;
use crate::settings::ConfigError;

/// How long to wait for the server to accept connections, or to stop.
const START_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// Socket port used when there is no TCP listener (only the socket file name uses it).
pub(crate) const DEFAULT_UNIX_PORT: u16 = 5432;

/// The bootstrap superuser of a DSQL-like server (`dsql_mimic`), the one initdb creates. Only
/// the endpoint reaches it, over the Unix socket: the endpoint refuses client startups for
/// this name, and clients log in as `admin`, which is no superuser.
pub const INTERNAL_SUPERUSER: &str = "dsql_pgx_internal";

/// Client connections a server takes at most ([`PgOptions::max_connections`] is capped
/// here): every slot costs shared memory (500 slots: about 45 MB) and a busy one a process.
pub const MAX_CLIENT_CONNECTIONS: u32 = 500;

/// Slots PostgreSQL keeps for the superuser above the client connections
/// (`superuser_reserved_connections`), so the endpoint's own connection and
/// [`PgServer::admin_client`] get in when clients have taken the rest.
const SUPERUSER_RESERVED_CONNECTIONS: u32 = 3;

/// The server's `max_connections` for `clients` client connections: a client backend may
/// take a moment to exit after the endpoint has let its client go, so there is headroom
/// (a quarter, at least 2) before the superuser's reserved slots.
fn server_max_connections(clients: u32) -> u32 {
    let clients = clients.clamp(1, MAX_CLIENT_CONNECTIONS);
    clients + (clients / 4).max(2) + SUPERUSER_RESERVED_CONNECTIONS
}

/// PostgreSQL server binaries could not be found.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "PostgreSQL server binaries not found (looked on PATH, pg_config --bindir, /usr/lib/postgresql/*/bin); install them, e.g. apt-get install postgresql"
)]
pub struct PostgresNotFound;

/// The private server's Unix socket, and the postmaster that must be listening on it.
///
/// The socket lives in `pgdata/`, which the server's OS user owns: whatever is at that path
/// when we connect could be another listener that user put there. [`Upstream::connect`]
/// accepts only a socket whose peer (`SO_PEERCRED`, the process that called `listen`) is our
/// postmaster.
#[derive(Debug, Clone)]
pub struct Upstream {
    path: PathBuf,
    pid: u32,
}

impl Upstream {
    /// The socket at `path`, served by process `pid`.
    pub fn new(path: impl Into<PathBuf>, pid: u32) -> Self {
        Self {
            path: path.into(),
            pid,
        }
    }

    /// Connects and checks that our postmaster is the peer.
    pub async fn connect(&self) -> std::io::Result<tokio::net::UnixStream> {
        let stream = tokio::net::UnixStream::connect(&self.path).await?;
        let peer = stream.peer_cred()?.pid();
        if peer != i32::try_from(self.pid).ok() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                format!(
                    "{} is served by process {}, not by our PostgreSQL (pid {}); refusing it",
                    self.path.display(),
                    peer.map_or_else(|| "unknown".to_string(), |p| p.to_string()),
                    self.pid
                ),
            ));
        }
        Ok(stream)
    }
}

/// TCP listener settings: 127.0.0.1 only, TLS required, SCRAM password for every role.
#[derive(Clone)]
pub struct TcpTls {
    /// TCP port; 0 picks a free one.
    pub port: u16,
    /// Server certificate, PEM.
    pub cert_pem: String,
    /// Server private key, PEM.
    pub key_pem: String,
    /// Password of the role clients log in as: `admin` with `dsql_mimic`, else the superuser.
    pub password: String,
}

impl std::fmt::Debug for TcpTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpTls")
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

/// How to start a [`PgServer`].
#[derive(Debug, Clone)]
pub struct PgOptions {
    /// Parent directory; the cluster lives in `data_dir/pgdata` (created on first use), the
    /// only thing the server's OS user owns. The directory must be ours and writable by
    /// nobody else (see `files::open_data_dir`); as root it is made 0711 so that `postgres`
    /// may traverse it, and every directory above it must let that user in (see
    /// [`check_data_dir`]).
    pub data_dir: PathBuf,
    /// Bootstrap superuser name given to initdb; a data dir initialised with another one is
    /// refused. Must not be `admin` with `dsql_mimic`.
    pub superuser: String,
    /// Optional TCP+TLS listener; `None` means Unix socket only.
    pub tcp: Option<TcpTls>,
    /// Make the server DSQL-like, as the endpoint needs: `admin` is a LOGIN, NOSUPERUSER,
    /// CREATEROLE role owning database `postgres` and schema `public`; the predefined roles
    /// that reach the OS (`pg_execute_server_program`, `pg_read_server_files`,
    /// `pg_write_server_files`) can be granted by a superuser only; `CREATE EXTENSION` is
    /// refused as DSQL refuses it; repeatable read by default; `sys.current_session_id()`.
    pub dsql_mimic: bool,
    /// Client (non-superuser) connections the server takes, at most
    /// [`MAX_CLIENT_CONNECTIONS`]; its `max_connections` adds headroom and the superuser's
    /// reserved slots.
    pub max_connections: u32,
}

impl PgOptions {
    /// Options for a Unix-socket-only server with superuser [`INTERNAL_SUPERUSER`] and 100
    /// client connections in `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            superuser: INTERNAL_SUPERUSER.into(),
            tcp: None,
            dsql_mimic: false,
            max_connections: 100,
        }
    }
}

/// A running private PostgreSQL server. Stopped by [`PgServer::stop`] or on drop.
#[derive(Debug)]
pub struct PgServer {
    child: Option<Child>,
    bin_dir: PathBuf,
    pgdata: PathBuf,
    superuser: String,
    tcp_port: Option<u16>,
    unix_port: u16,
}

fn is_executable(p: &Path) -> bool {
    fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn has_server_binaries(dir: &Path) -> bool {
    ["initdb", "pg_ctl", "postgres"]
        .iter()
        .all(|b| is_executable(&dir.join(b)))
}

/// Finds the directory holding `initdb`, `pg_ctl` and `postgres`: on `PATH`, else
/// `pg_config --bindir`, else the newest `/usr/lib/postgresql/*/bin`.
pub fn find_bin_dir() -> Result<PathBuf, PostgresNotFound> {
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            if has_server_binaries(&dir) {
                // Resolve symlinks (e.g. /usr/local/bin/initdb -> /usr/lib/postgresql/15/bin)
                // so the binaries of one installation are used together.
                let real = fs::canonicalize(dir.join("postgres"))
                    .ok()
                    .and_then(|p| p.parent().map(Path::to_path_buf))
                    .filter(|d| has_server_binaries(d));
                return Ok(real.unwrap_or(dir));
            }
        }
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output()
        && out.status.success()
    {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if has_server_binaries(&dir) {
            return Ok(dir);
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            has_server_binaries(&bin).then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, dir)| dir).ok_or(PostgresNotFound)
}

/// The OS user PostgreSQL must run as: `postgres` when we are root, else ourselves (`None`).
fn server_user() -> anyhow::Result<Option<User>> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(None);
    }
    let user = User::from_name("postgres")
        .context("looking up the postgres OS user")?
        .context(
            "running as root, PostgreSQL must run as the `postgres` OS user, which does not exist; create it (e.g. useradd --system postgres) or run as a normal user",
        )?;
    Ok(Some(user))
}

/// Longest path of a Unix socket (`sun_path` holds 108 bytes, the last one a NUL).
const MAX_SOCKET_PATH: usize = 107;

/// Refuses a data dir whose server socket (`<data_dir>/pgdata/.s.PGSQL.<port>`) would be
/// too long for a Unix socket path, with one short line; `what` names it for the user
/// (`--data-dir`, the temporary directory). Call it before anything is made there.
pub fn check_socket_path(data_dir: &Path, port: u16, what: &str) -> anyhow::Result<()> {
    let socket = data_dir
        .join(files::PGDATA)
        .join(format!(".s.PGSQL.{port}"));
    let length = socket.as_os_str().len();
    if length <= MAX_SOCKET_PATH {
        return Ok(());
    }
    Err(ConfigError(format!(
        "{what} {} is too long: PostgreSQL's socket there, pgdata/.s.PGSQL.{port}, would take {length} bytes of a Unix socket path's {MAX_SOCKET_PATH}; choose a shorter path",
        crate::settings::shown(&data_dir.to_string_lossy())
    ))
    .into())
}

/// Checks that PostgreSQL, when it runs as another OS user (as root: `postgres`), can enter
/// every existing directory above `data_dir`. Call it before creating or chowning anything
/// there: a home directory such as /root (0700) would otherwise fail initdb halfway.
pub fn check_data_dir(data_dir: &Path) -> anyhow::Result<()> {
    match server_user()? {
        Some(user) => check_reachable(data_dir, &user),
        None => Ok(()),
    }
}

/// Checks, as [`check_data_dir`] does, that PostgreSQL can reach a temporary data dir made in
/// `parent` (the system's temporary directory, `$TMPDIR`), before one is made there.
pub fn check_temp_parent(parent: &Path) -> anyhow::Result<()> {
    let Some(user) = server_user()? else {
        return Ok(());
    };
    match unreachable_dir(&parent.join("dsql-pgx-local"), &user)? {
        None => Ok(()),
        Some((dir, mode)) => Err(ConfigError(format!(
            "the temporary directory {} (TMPDIR): PostgreSQL runs as user {}, which cannot enter {} (mode {mode:o}); set TMPDIR to a directory it can reach, such as /tmp",
            parent.display(),
            user.name,
            dir.display(),
        ))
        .into()),
    }
}

fn check_reachable(data_dir: &Path, user: &User) -> anyhow::Result<()> {
    match unreachable_dir(data_dir, user)? {
        None => Ok(()),
        Some((dir, mode)) => Err(ConfigError(format!(
            "--data-dir {}: PostgreSQL runs as user {}, which cannot enter {} (mode {mode:o}); choose a directory it can reach, such as /var/lib/dsql-pgx/local (what --persist uses)",
            data_dir.display(),
            user.name,
            dir.display(),
        ))
        .into()),
    }
}

/// The first directory above `data_dir` that `user` may not enter, with its mode.
fn unreachable_dir(data_dir: &Path, user: &User) -> anyhow::Result<Option<(PathBuf, u32)>> {
    let absolute = std::path::absolute(data_dir)
        .with_context(|| format!("resolving {}", data_dir.display()))?;
    // The deepest existing directory above the data dir (which itself is chowned later);
    // canonical, so the directories checked are the ones the server really passes through.
    let Some(existing) = absolute.ancestors().skip(1).find(|dir| dir.is_dir()) else {
        return Ok(None);
    };
    let existing =
        fs::canonicalize(existing).with_context(|| format!("resolving {}", existing.display()))?;
    let groups = CString::new(user.name.as_str())
        .ok()
        .and_then(|name| nix::unistd::getgrouplist(&name, user.gid).ok())
        .unwrap_or_else(|| vec![user.gid]);
    for dir in existing.ancestors() {
        let meta = fs::metadata(dir).with_context(|| format!("reading {}", dir.display()))?;
        if !may_search(meta.uid(), meta.gid(), meta.mode(), user.uid, &groups) {
            return Ok(Some((dir.to_path_buf(), meta.mode() & 0o7777)));
        }
    }
    Ok(None)
}

/// Whether a user (`uid`, member of `groups`) may search a directory with this owner, group
/// and mode: the owner, group or other execute bit, whichever class the user falls in.
fn may_search(owner: u32, group: u32, mode: u32, uid: Uid, groups: &[Gid]) -> bool {
    let bit = if owner == uid.as_raw() {
        0o100
    } else if groups.iter().any(|g| g.as_raw() == group) {
        0o010
    } else {
        0o001
    };
    mode & bit != 0
}

/// Kills a process group (a child started with `process_group(0)` and what it started) when
/// dropped, and waits (briefly) until it is gone.
struct KillGroupOnDrop(Option<i32>);

impl Drop for KillGroupOnDrop {
    fn drop(&mut self) {
        let Some(pgid) = self.0 else {
            return;
        };
        let group = Pid::from_raw(pgid);
        let _ = nix::sys::signal::killpg(group, Signal::SIGKILL);
        let deadline = Instant::now() + Duration::from_secs(1);
        while nix::sys::signal::killpg(group, None).is_ok() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

fn command_as(program: PathBuf, user: Option<(Uid, Gid)>, cwd: &Path) -> Command {
    let mut cmd = Command::new(program);
    // The server's OS user can read its environment (/proc/<pid>/environ): pass on only what
    // PostgreSQL needs, never our secrets or AWS credentials.
    cmd.env_clear();
    for var in ["PATH", "LANG", "LC_ALL", "LC_CTYPE", "LC_MESSAGES", "TZ"] {
        if let Some(value) = std::env::var_os(var) {
            cmd.env(var, value);
        }
    }
    cmd.current_dir(cwd);
    // A process group of its own: a terminal's Ctrl-C goes to dsql-pgx, which stops the
    // server itself, not to initdb or the server halfway through.
    cmd.process_group(0);
    if let Some((uid, gid)) = user {
        cmd.uid(uid.as_raw()).gid(gid.as_raw());
    }
    cmd
}

/// Makes the server stop (fast shutdown) when the thread that started it dies, even by
/// SIGKILL, so a killed endpoint or test leaves no postmaster holding its data directory.
/// Linux clears the parent-death signal when credentials change, so it is set here, after
/// `Command` has switched to the server's user.
fn stop_with_parent(command: &mut Command) {
    let parent = nix::unistd::getpid();
    // SAFETY: the closure runs in the forked child before exec and calls only prctl(2) and
    // getppid(2), both async-signal-safe; it allocates nothing and takes no lock.
    unsafe {
        command.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGINT)?;
            // The parent may have died before prctl: then no signal will ever come.
            if nix::unistd::getppid() != parent {
                return Err(nix::errno::Errno::ESRCH.into());
            }
            Ok(())
        });
    }
}

/// Whether PostgreSQL refused the login itself (no such role, no hba entry): SQLSTATE 28000.
fn refused_login(err: &anyhow::Error) -> bool {
    err.chain()
        .filter_map(|e| e.downcast_ref::<tokio_postgres::Error>())
        .any(|e| e.code() == Some(&SqlState::INVALID_AUTHORIZATION_SPECIFICATION))
}

fn log_tail(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free TCP port")?;
    Ok(l.local_addr()?.port())
}

/// Quotes a SQL string literal.
fn sql_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Quotes a SQL identifier.
fn sql_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Run first on the superuser's own connection: nothing the database owner may set for its
/// database (`ALTER DATABASE postgres SET role`, `search_path`) applies to what follows, and
/// no object `admin` put in `public` can stand in for a built-in one.
/// Startup options of the endpoint's own sessions: settings a database owner could have
/// made the default for its database must not stop the setup or hang it.
const SUPERUSER_SESSION_OPTIONS: &str = "-c default_transaction_read_only=off -c statement_timeout=0 -c lock_timeout=0 -c idle_in_transaction_session_timeout=0 -c idle_session_timeout=0";

const SUPERUSER_SESSION_SQL: &str = "SET ROLE NONE; SET search_path = pg_catalog";

/// Makes `admin` DSQL's administrator, no superuser, and closes the paths a CREATEROLE
/// database owner would otherwise have to the OS. Idempotent: run at every start.
///
/// PostgreSQL 15 lets a CREATEROLE role grant any role that is no superuser, the predefined
/// roles that run programs or read and write server files included; marked as superusers,
/// they can be granted (also with `CREATE ROLE .. IN ROLE`) by a superuser only, and nobody
/// is a member of them. A database owner may create trusted extensions (pgcrypto, ...):
/// an event trigger owned by the superuser refuses `CREATE EXTENSION` with DSQL's answer.
/// Its function lives in schema `dsql_pgx`, which nobody else may use; not named after the
/// superuser, whose `"$user"` search path entry would then catch the tables it creates.
const ADMIN_SQL: &str = r#"
DO $do$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'admin') THEN
    CREATE ROLE admin;
  END IF;
END $do$;
ALTER ROLE admin WITH LOGIN NOSUPERUSER CREATEROLE NOCREATEDB NOREPLICATION NOBYPASSRLS
  CONNECTION LIMIT -1 VALID UNTIL 'infinity';
ALTER DATABASE postgres OWNER TO admin;
ALTER SCHEMA public OWNER TO admin;
UPDATE pg_authid SET rolsuper = true
 WHERE rolname IN ('pg_execute_server_program', 'pg_read_server_files', 'pg_write_server_files')
   AND NOT rolsuper;
CREATE SCHEMA IF NOT EXISTS dsql_pgx;
REVOKE ALL ON SCHEMA dsql_pgx FROM PUBLIC;
CREATE OR REPLACE FUNCTION dsql_pgx.refuse_create_extension() RETURNS event_trigger
LANGUAGE plpgsql SET search_path = pg_catalog AS $fn$
BEGIN
  RAISE EXCEPTION 'unsupported statement: CreateExtension' USING ERRCODE = 'feature_not_supported';
END
$fn$;
DROP EVENT TRIGGER IF EXISTS dsql_pgx_refuse_create_extension;
CREATE EVENT TRIGGER dsql_pgx_refuse_create_extension ON ddl_command_start
  WHEN TAG IN ('CREATE EXTENSION')
  EXECUTE FUNCTION dsql_pgx.refuse_create_extension();
ALTER EVENT TRIGGER dsql_pgx_refuse_create_extension ENABLE ALWAYS;
"#;

const MIMIC_SQL: &str = r#"
CREATE SCHEMA IF NOT EXISTS sys;
CREATE OR REPLACE FUNCTION sys.current_session_id() RETURNS text
LANGUAGE sql STABLE PARALLEL RESTRICTED AS $fn$
  SELECT left(md5(pg_backend_pid()::text || '/' ||
                  coalesce((SELECT backend_start::text FROM pg_stat_activity
                            WHERE pid = pg_backend_pid()), '') || '/' ||
                  pg_postmaster_start_time()::text), 26)
$fn$;
GRANT USAGE ON SCHEMA sys TO PUBLIC;
GRANT EXECUTE ON FUNCTION sys.current_session_id() TO PUBLIC;
"#;

impl PgServer {
    /// Initialises (first use) and starts the server, waiting until it accepts connections.
    ///
    /// The server also stops (fast shutdown) when the thread that started it exits, however
    /// it exits: start it from a thread that outlives it, such as the one running
    /// `block_on` or a Tokio worker, not from a short-lived `spawn_blocking` thread.
    pub async fn start(opts: PgOptions) -> anyhow::Result<PgServer> {
        if opts.dsql_mimic && opts.superuser == crate::auth::ADMIN_USER {
            bail!("a DSQL-like server needs a bootstrap superuser other than admin");
        }
        let bin_dir = find_bin_dir()?;
        let account = server_user()?;
        if let Some(account) = &account {
            check_reachable(&opts.data_dir, account)?;
        }
        let user = account.map(|u| (u.uid, u.gid));
        let socket_port = opts.tcp.as_ref().map_or(DEFAULT_UNIX_PORT, |tcp| {
            if tcp.port == 0 { u16::MAX } else { tcp.port }
        });
        check_socket_path(
            &std::path::absolute(&opts.data_dir).unwrap_or_else(|_| opts.data_dir.clone()),
            socket_port,
            "data dir",
        )?;
        // Ours (0700, or 0711 as root); only pgdata/ in it belongs to the server's user.
        let dir = files::open_data_dir(&opts.data_dir)?;
        let data_dir = fs::canonicalize(dir.path())
            .with_context(|| format!("resolving {}", dir.path().display()))?;
        let pgdata_dir = dir.subdir(files::PGDATA, user)?;
        let pgdata = data_dir.join(files::PGDATA);
        if !pgdata_dir.exists("PG_VERSION") {
            let data_dir2 = data_dir.clone();
            let bin2 = bin_dir.clone();
            let pgdata2 = pgdata.clone();
            let superuser = opts.superuser.clone();
            // Killed, with the server processes it runs, if this start is dropped (a signal
            // during `local`'s start), so nothing writes into a data dir being removed.
            let mut initdb =
                tokio::process::Command::from(command_as(bin2.join("initdb"), user, &data_dir2));
            let child = initdb
                .arg("-D")
                .arg(&pgdata2)
                .args(["-U", &superuser, "--auth-local=trust", "--auth-host=reject"])
                .args(["-E", "UTF8", "--locale=C", "--no-sync"])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .context("running initdb")?;
            let mut group = KillGroupOnDrop(child.id().and_then(|id| i32::try_from(id).ok()));
            let out = child.wait_with_output().await.context("running initdb")?;
            group.0 = None; // initdb is done: nothing left to kill
            if !out.status.success() {
                bail!(
                    "initdb failed ({}): {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
        }

        let (tcp_port, unix_port) = match &opts.tcp {
            Some(tcp) => {
                let port = if tcp.port == 0 {
                    free_port()?
                } else {
                    tcp.port
                };
                (Some(port), port)
            }
            None => (None, DEFAULT_UNIX_PORT),
        };

        // On the command line, so that postgresql.conf and postgresql.auto.conf (which
        // `ALTER SYSTEM` writes) cannot override them.
        let hba_path = data_dir.join(files::HBA_FILE);
        let mut settings: Vec<(&str, String)> = vec![
            ("port", unix_port.to_string()),
            (
                "unix_socket_directories",
                sql_ident(&pgdata.to_string_lossy()),
            ),
            ("unix_socket_permissions", "0700".into()),
            ("hba_file", hba_path.to_string_lossy().into_owned()),
            (
                "max_connections",
                server_max_connections(opts.max_connections).to_string(),
            ),
            (
                "superuser_reserved_connections",
                SUPERUSER_RESERVED_CONNECTIONS.to_string(),
            ),
            ("shared_preload_libraries", String::new()),
            ("session_preload_libraries", String::new()),
            ("local_preload_libraries", String::new()),
            ("fsync", "off".into()),
            ("synchronous_commit", "off".into()),
            ("full_page_writes", "off".into()),
            ("shared_buffers", "16MB".into()),
            ("logging_collector", "off".into()),
            ("log_min_messages", "warning".into()),
        ];
        let mut hba = String::from("# written by dsql-pgx at every start\nlocal all all trust\n");
        if let Some(tcp) = &opts.tcp {
            settings.extend([
                ("listen_addresses", "127.0.0.1".into()),
                ("ssl", "on".into()),
                ("ssl_cert_file", "server.crt".into()),
                ("ssl_key_file", "server.key".into()),
                ("password_encryption", "scram-sha-256".into()),
            ]);
            pgdata_dir.write("server.crt", tcp.cert_pem.as_bytes(), 0o600, user)?;
            pgdata_dir.write("server.key", tcp.key_pem.as_bytes(), 0o600, user)?;
            if opts.dsql_mimic {
                hba.push_str(&format!(
                    "hostssl all {} 127.0.0.1/32 reject\n",
                    sql_ident(&opts.superuser)
                ));
            }
            hba.push_str("hostssl all all 127.0.0.1/32 scram-sha-256\n");
        } else {
            settings.extend([("listen_addresses", String::new()), ("ssl", "off".into())]);
        }
        if opts.dsql_mimic {
            settings.push(("default_transaction_isolation", "repeatable read".into()));
        }
        // Ours, outside pgdata/: the server reads it and cannot rewrite it.
        dir.write(files::HBA_FILE, hba.as_bytes(), 0o644, None)?;

        // Ours and 0600; the server writes to the descriptor it inherits.
        let log_path = data_dir.join("postgres.log");
        let log = dir.open_log("postgres.log")?;
        let mut command = command_as(bin_dir.join("postgres"), user, &data_dir);
        stop_with_parent(&mut command);
        command.arg("-D").arg(&pgdata);
        for (name, value) in &settings {
            command.arg("-c").arg(format!("{name}={value}"));
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("duplicating the log handle")?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", bin_dir.join("postgres").display()))?;

        let mut server = PgServer {
            child: Some(child),
            bin_dir,
            pgdata,
            superuser: opts.superuser.clone(),
            tcp_port,
            unix_port,
        };
        server.wait_ready(&log_path).await?;

        let client = server.admin_client().await?;
        client
            .batch_execute(SUPERUSER_SESSION_SQL)
            .await
            .context("preparing the superuser's session")?;
        let bootstrap: String = client
            .query_one("SELECT rolname::text FROM pg_roles WHERE oid = 10", &[])
            .await
            .context("reading the bootstrap superuser")?
            .get(0);
        if bootstrap != server.superuser {
            return Err(server.foreign_cluster(&bootstrap));
        }
        if opts.dsql_mimic {
            client
                .batch_execute(ADMIN_SQL)
                .await
                .context("creating the admin role")?;
            client
                .batch_execute(MIMIC_SQL)
                .await
                .context("creating sys.current_session_id()")?;
        }
        if let Some(tcp) = &opts.tcp {
            let login = if opts.dsql_mimic {
                "admin"
            } else {
                &opts.superuser
            };
            client
                .batch_execute(&format!(
                    "ALTER ROLE {} PASSWORD {}",
                    sql_ident(login),
                    sql_literal(&tcp.password)
                ))
                .await
                .with_context(|| format!("setting the password of {login}"))?;
        }
        Ok(server)
    }

    async fn wait_ready(&mut self, log_path: &Path) -> anyhow::Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait().context("checking on postgres")?
            {
                self.child = None;
                bail!(
                    "PostgreSQL exited during startup ({status}); see {}, which ends:\n{}",
                    log_path.display(),
                    log_tail(log_path)
                );
            }
            // Another postmaster on this data directory answers on the same socket: only ours
            // counts, and ours exits (caught above) once it finds that one's postmaster.pid.
            let answered = self.admin_client().await;
            if answered.is_ok() && self.owns_pid_file() {
                return Ok(());
            }
            // Our server answers but has no such role: the cluster was made with another
            // bootstrap superuser (by an earlier dsql-pgx: `admin`).
            if let Err(e) = &answered
                && refused_login(e)
                && self.owns_pid_file()
            {
                let found = self.bootstrap_superuser_as("admin").await;
                return Err(self.foreign_cluster(found.as_deref().unwrap_or("unknown")));
            }
            if Instant::now() >= deadline {
                let why = match answered {
                    Err(e) => format!("{e:#}"),
                    Ok(_) => "another server holds its data directory".to_string(),
                };
                bail!(
                    "PostgreSQL did not accept connections within {START_TIMEOUT:?} ({why}); see {}, which ends:\n{}",
                    log_path.display(),
                    log_tail(log_path)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The name of the bootstrap superuser (oid 10), asked as `user`, if that role may log in.
    async fn bootstrap_superuser_as(&self, user: &str) -> Option<String> {
        let client = self.client_as(user).await.ok()?;
        let row = client
            .query_one("SELECT rolname::text FROM pg_roles WHERE oid = 10", &[])
            .await
            .ok()?;
        row.try_get(0).ok()
    }

    /// The refusal of a cluster whose bootstrap superuser is `found`, not ours.
    fn foreign_cluster(&self, found: &str) -> anyhow::Error {
        let data_dir = self.pgdata.parent().unwrap_or(&self.pgdata);
        ConfigError(format!(
            "{} was made by an earlier dsql-pgx: its PostgreSQL superuser is \"{found}\", not \"{}\"; remove it or choose another --data-dir",
            data_dir.display(),
            self.superuser
        ))
        .into()
    }

    /// Whether `postmaster.pid` names our child (its first line is the postmaster's pid).
    /// The server's user can write the file, so it is only compared, read through a
    /// no-follow, non-blocking open and at most 64 bytes of it.
    fn owns_pid_file(&self) -> bool {
        let Some(pid) = self.pid() else {
            return false;
        };
        let Ok(file) = fs::OpenOptions::new()
            .read(true)
            .custom_flags((nix::fcntl::OFlag::O_NOFOLLOW | nix::fcntl::OFlag::O_NONBLOCK).bits())
            .open(self.pgdata.join("postmaster.pid"))
        else {
            return false;
        };
        if !file.metadata().is_ok_and(|m| m.is_file()) {
            return false;
        }
        let mut text = String::new();
        if file.take(64).read_to_string(&mut text).is_err() {
            return false;
        }
        text.lines().next().and_then(|l| l.trim().parse().ok()) == Some(pid)
    }

    /// Directory of the Unix socket (the cluster's data directory).
    pub fn socket_dir(&self) -> &Path {
        &self.pgdata
    }

    /// Path of the Unix socket file, `.s.PGSQL.<unix_port>`.
    pub fn socket_path(&self) -> PathBuf {
        self.pgdata.join(format!(".s.PGSQL.{}", self.unix_port))
    }

    /// TCP port, when the TCP listener is enabled.
    pub fn port(&self) -> Option<u16> {
        self.tcp_port
    }

    /// Port number in the Unix socket's file name.
    pub fn unix_port(&self) -> u16 {
        self.unix_port
    }

    /// Directory of the PostgreSQL binaries in use.
    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    /// The cluster's data directory (`data_dir/pgdata`).
    pub fn pgdata(&self) -> &Path {
        &self.pgdata
    }

    /// The bootstrap superuser's name ([`INTERNAL_SUPERUSER`] behind the endpoint).
    pub fn superuser(&self) -> &str {
        &self.superuser
    }

    /// The socket and postmaster to connect to, while running.
    pub fn upstream(&self) -> Option<Upstream> {
        self.pid().map(|pid| Upstream::new(self.socket_path(), pid))
    }

    /// PID of the postmaster, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Connects as the bootstrap superuser ([`PgServer::superuser`]) over the Unix socket
    /// (trust auth); with `dsql_mimic` that is not `admin`, which is no superuser there. The
    /// connection task is spawned on the current Tokio runtime.
    pub async fn admin_client(&self) -> anyhow::Result<tokio_postgres::Client> {
        self.client_as(&self.superuser).await
    }

    async fn client_as(&self, user: &str) -> anyhow::Result<tokio_postgres::Client> {
        let upstream = self
            .upstream()
            .context("the private PostgreSQL is not running")?;
        let stream = upstream
            .connect()
            .await
            .context("connecting to the private PostgreSQL over its Unix socket")?;
        // Startup options outrank what the database owner may set for its database
        // (`ALTER DATABASE postgres SET default_transaction_read_only = on`, ...).
        let (client, conn) = tokio_postgres::Config::new()
            .user(user)
            .dbname("postgres")
            .options(SUPERUSER_SESSION_OPTIONS)
            .connect_raw(stream, tokio_postgres::NoTls)
            .await
            .context("connecting to the private PostgreSQL over its Unix socket")?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!("admin connection ended: {e}");
            }
        });
        Ok(client)
    }

    /// Fast shutdown: disconnects clients, waits until the postmaster has exited.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let pid = Pid::from_raw(i32::try_from(child.id()).context("postmaster pid")?);
        let _ = kill(pid, Signal::SIGINT);
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            if child.try_wait().context("waiting for postgres")?.is_some() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("PostgreSQL did not stop within {STOP_TIMEOUT:?}; killed it");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A future that resolves once the postmaster has exited (checked every 100 ms, so
    /// within a second), or at once when there is none. It does not reap the process:
    /// [`PgServer::stop`] and drop still do, and the pid cannot be reused meanwhile.
    pub fn exited(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid};
        let pid = self
            .pid()
            .and_then(|p| i32::try_from(p).ok())
            .map(Pid::from_raw);
        async move {
            let Some(pid) = pid else { return };
            let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
            // Anything but "still running" (an exit, or no such child any more) is an exit.
            while let Ok(WaitStatus::StillAlive) = waitid(Id::Pid(pid), flags) {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(raw) = i32::try_from(child.id()) {
            let _ = kill(Pid::from_raw(raw), Signal::SIGINT);
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if matches!(child.try_wait(), Ok(Some(_)) | Err(_)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_found_error_is_one_line_and_names_the_fix() {
        let msg = PostgresNotFound.to_string();
        assert!(!msg.contains('\n'));
        assert!(msg.contains("apt-get install postgresql"));
    }

    #[test]
    fn search_permission_follows_the_owner_group_other_class() {
        let (me, mine, other) = (Uid::from_raw(101), Gid::from_raw(104), Gid::from_raw(7));
        let groups = [mine, Gid::from_raw(103)];
        // /root: owner-only.
        assert!(!may_search(0, 0, 0o40700, me, &groups));
        assert!(may_search(101, 0, 0o40700, me, &groups));
        // Group bit for a supplementary group; the other bit does not help a group member.
        assert!(may_search(0, 103, 0o40710, me, &groups));
        assert!(!may_search(0, 103, 0o40701, me, &groups));
        assert!(may_search(0, other.as_raw(), 0o40701, me, &groups));
        // Nor does it help the owner.
        assert!(!may_search(101, 0, 0o40011, me, &groups));
        assert!(may_search(0, 0, 0o41777, me, &groups));
    }

    #[test]
    fn max_connections_leave_headroom_and_the_superusers_slots() {
        assert_eq!(server_max_connections(3), 3 + 2 + 3);
        assert_eq!(server_max_connections(100), 100 + 25 + 3);
        assert_eq!(server_max_connections(0), 1 + 2 + 3);
        assert_eq!(
            server_max_connections(10_000),
            server_max_connections(MAX_CLIENT_CONNECTIONS)
        );
    }

    #[test]
    fn quoting() {
        assert_eq!(sql_literal("a'b"), "'a''b'");
        assert_eq!(sql_ident("a\"b"), "\"a\"\"b\"");
    }

    #[tokio::test]
    async fn a_second_server_on_the_same_data_dir_fails_to_start() {
        let dir = tempfile::tempdir().unwrap();
        let first = PgServer::start(PgOptions::new(dir.path())).await.unwrap();
        // The second postmaster exits on the first one's postmaster.pid, while the first
        // answers on the shared socket: that must not count as the second one being ready.
        let err = PgServer::start(PgOptions::new(dir.path()))
            .await
            .expect_err("a second server on a data dir in use");
        assert!(
            format!("{err:#}").contains("PostgreSQL exited during startup"),
            "{err:#}"
        );
        let one: i32 = first
            .admin_client()
            .await
            .unwrap()
            .query_one("SELECT 1", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(one, 1);
        first.stop().await.unwrap();
    }

    #[tokio::test]
    async fn starts_mimics_dsql_and_stops() {
        let dir = tempfile::tempdir().unwrap();
        let mut opts = PgOptions::new(dir.path());
        opts.dsql_mimic = true;
        let pg = PgServer::start(opts).await.unwrap();
        let client = pg.admin_client().await.unwrap();
        let iso: String = client
            .query_one("SHOW default_transaction_isolation", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(iso, "repeatable read");
        let id: String = client
            .query_one("SELECT sys.current_session_id()", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(id.len(), 26);
        let pid = pg.pid().unwrap();
        pg.stop().await.unwrap();
        assert!(kill(Pid::from_raw(pid as i32), None).is_err());
    }
}
