//! `dsql-pgx local`'s data dir, through the real binary: a dir or state file someone else
//! could have planted or changed is refused with one line (exit 2) and never followed,
//! written or chowned; after a start only `pgdata/` belongs to the PostgreSQL OS user and
//! secrets and the log are 0600; temporary dirs left by killed runs are swept.

mod common;

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::dsql::{assert_code, dsql_pgx, dsql_pgx_std, output, stderr, stdout};
use nix::unistd::{User, geteuid};

/// How long a refused `local` may take: it must exit, not serve (the old code served).
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(60);

fn me() -> String {
    User::from_uid(geteuid()).unwrap().unwrap().name
}

fn user(name: &str) -> User {
    User::from_name(name)
        .unwrap()
        .unwrap_or_else(|| panic!("the {name} OS user (Debian has it)"))
}

fn set_mode(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path).unwrap().mode() & 0o7777
}

/// A fresh directory (0755) to point TMPDIR at, inside a temporary dir kept alive by the guard.
fn fresh_tmpdir() -> (tempfile::TempDir, PathBuf) {
    let (tmp, _) = fresh();
    let temp = tmp.path().join("tmp");
    std::fs::create_dir(&temp).unwrap();
    set_mode(&temp, 0o755);
    (tmp, temp)
}

/// A data dir `tmp/data` (0700) in a fresh temporary dir that `postgres` can traverse.
fn fresh() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    set_mode(tmp.path(), 0o755);
    let data = tmp.path().join("data");
    std::fs::create_dir(&data).unwrap();
    set_mode(&data, 0o700);
    (tmp, data)
}

/// Runs `local` on `data` and expects exit 2 with exactly `line`, nothing on stdout.
async fn assert_refused(data: &Path, line: &str) {
    let mut cmd = dsql_pgx();
    cmd.args(["local", "--port", "0", "--data-dir"])
        .arg(data)
        .timeout(REFUSAL_TIMEOUT);
    let out = output(cmd).await;
    assert_eq!(stderr(&out), format!("dsql-pgx: error: {line}\n"));
    assert_code(&out, 2);
    assert_eq!(stdout(&out), "");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_data_dir_owned_by_another_user_is_refused() {
    let (_tmp, data) = fresh();
    let other = if geteuid().is_root() {
        let nobody = user("nobody");
        nix::unistd::chown(&data, Some(nobody.uid), Some(nobody.gid)).unwrap();
        nobody.name
    } else {
        // Without root we cannot give a dir away: one root owns will do.
        return assert_refused(
            Path::new("/usr"),
            &format!(
                "--data-dir /usr is owned by root, not {} (mode {:o}); choose another --data-dir (one you own)",
                me(),
                mode(Path::new("/usr"))
            ),
        )
        .await;
    };
    assert_refused(
        &data,
        &format!(
            "--data-dir {} is owned by {other}, not {} (mode 700); choose another --data-dir (one you own)",
            data.display(),
            me()
        ),
    )
    .await;
    assert_eq!(
        std::fs::read_dir(&data).unwrap().count(),
        0,
        "nothing created"
    );
    assert_eq!(mode(&data), 0o700, "nothing chmodded");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_data_dir_others_can_write_is_refused() {
    let want = if geteuid().is_root() { "711" } else { "700" };
    for bits in [0o770, 0o707, 0o1777] {
        let (_tmp, data) = fresh();
        set_mode(&data, bits);
        assert_refused(
            &data,
            &format!(
                "--data-dir {p} is writable by group or others (owner {}, mode {bits:o}); run chmod {want} {p} or choose another --data-dir",
                me(),
                p = data.display()
            ),
        )
        .await;
        assert_eq!(
            std::fs::read_dir(&data).unwrap().count(),
            0,
            "nothing created"
        );
        assert_eq!(mode(&data), bits, "nothing chmodded");
    }
}

/// A data dir where an earlier dsql-pgx initialised its cluster (pgdata/ without the
/// pg_hba.conf this version keeps next to it) is refused, not migrated.
#[tokio::test(flavor = "multi_thread")]
async fn a_data_dir_of_an_earlier_version_is_refused() {
    let (_tmp, data) = fresh();
    std::fs::create_dir(data.join("pgdata")).unwrap();
    std::fs::write(data.join("pgdata/PG_VERSION"), "15\n").unwrap();
    let mut owner = me();
    let mut bits = 0o700;
    if geteuid().is_root() {
        // As earlier versions left it as root: the data dir given to postgres, 0755.
        let pg = user("postgres");
        nix::unistd::chown(&data, Some(pg.uid), Some(pg.gid)).unwrap();
        set_mode(&data, 0o755);
        (owner, bits) = (pg.name, 0o755);
    }
    assert_refused(
        &data,
        &format!(
            "--data-dir {} was made by an earlier dsql-pgx (owner {owner}, mode {bits:o}), whose layout cannot be trusted; remove it or choose another --data-dir",
            data.display()
        ),
    )
    .await;
}

/// A state file that is a symbolic link is refused, and what it points to is neither read,
/// truncated, appended to, nor created.
#[tokio::test(flavor = "multi_thread")]
async fn symlinked_state_files_are_refused_and_never_followed() {
    let valid_credentials =
        "aws_access_key_id = AKIAAAAAAAAAAAAAAAAA\naws_secret_access_key = s3cr3t\n";
    for (name, target_exists) in [
        ("dsql-pgx-local.lock", true),
        ("dsql-pgx-local.lock", false),
        ("credentials", true),
        ("ca.key", true),
        ("postgres.log", true),
        ("postgres.log", false),
    ] {
        let (tmp, data) = fresh();
        let target = tmp.path().join("elsewhere");
        if target_exists {
            std::fs::write(&target, valid_credentials).unwrap();
            set_mode(&target, 0o600);
        }
        let link = data.join(name);
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert_refused(
            &data,
            &format!(
                "{} is a symbolic link (owner {}, mode 777), which dsql-pgx does not follow in its data dir; remove it",
                link.display(),
                me()
            ),
        )
        .await;
        if target_exists {
            assert_eq!(
                std::fs::read_to_string(&target).unwrap(),
                valid_credentials,
                "{name}: the file it points to was changed"
            );
            assert_eq!(mode(&target), 0o600, "{name}");
        } else {
            assert!(!target.exists(), "{name}: created through the link");
        }
    }
}

/// `credentials` (and `ca.key`) others can read, or that are not ours, are refused.
#[tokio::test(flavor = "multi_thread")]
async fn credentials_that_are_not_private_and_ours_are_refused() {
    let text = "aws_access_key_id = AKIAAAAAAAAAAAAAAAAA\naws_secret_access_key = s3cr3t\n";
    for bits in [0o644, 0o640, 0o604] {
        let (_tmp, data) = fresh();
        let path = data.join("credentials");
        std::fs::write(&path, text).unwrap();
        set_mode(&path, bits);
        assert_refused(
            &data,
            &format!(
                "{p} holds a secret but is readable by group or others (owner {}, mode {bits:o}); run chmod 600 {p}",
                me(),
                p = path.display()
            ),
        )
        .await;
    }
    let (_tmp, data) = fresh();
    let path = data.join("credentials");
    std::fs::write(&path, text).unwrap();
    set_mode(&path, 0o666);
    assert_refused(
        &data,
        &format!(
            "{p} is writable by group or others (owner {}, mode 666); remove it or run chmod go-w {p}",
            me(),
            p = path.display()
        ),
    )
    .await;
    if geteuid().is_root() {
        let (_tmp, data) = fresh();
        let path = data.join("credentials");
        std::fs::write(&path, text).unwrap();
        set_mode(&path, 0o600);
        let nobody = user("nobody");
        nix::unistd::chown(&path, Some(nobody.uid), Some(nobody.gid)).unwrap();
        assert_refused(
            &data,
            &format!(
                "{} is owned by nobody, not root (mode 600); remove it or choose another --data-dir",
                path.display()
            ),
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_secret_access_key_file_must_be_private_and_not_a_link() {
    let tmp = tempfile::tempdir().unwrap();
    let key = tmp.path().join("key");
    std::fs::write(&key, "s3cr3t\n").unwrap();
    set_mode(&key, 0o644);
    let link = tmp.path().join("link");
    std::os::unix::fs::symlink(&key, &link).unwrap();
    for (path, line) in [
        (
            &key,
            format!(
                "--secret-access-key-file {p} holds a secret but is readable by group or others (owner {}, mode 644); run chmod 600 {p}",
                me(),
                p = key.display()
            ),
        ),
        (
            &link,
            format!(
                "--secret-access-key-file {} is a symbolic link (owner {}, mode 777), which dsql-pgx does not follow; give the file itself",
                link.display(),
                me()
            ),
        ),
    ] {
        let mut cmd = dsql_pgx();
        cmd.args([
            "local",
            "--port",
            "0",
            "--access-key-id",
            "AKIAAAAAAAAAAAAAAAAA",
        ])
        .arg("--secret-access-key-file")
        .arg(path)
        .timeout(REFUSAL_TIMEOUT);
        let out = output(cmd).await;
        assert_eq!(stderr(&out), format!("dsql-pgx: error: {line}\n"));
        assert_code(&out, 2);
        assert!(!stderr(&out).contains("s3cr3t"));
    }
}

/// Starts `local` with `args` and waits for the exports it prints.
async fn spawn_local(args: &[&std::ffi::OsStr]) -> (tokio::process::Child, String) {
    let mut cmd = tokio::process::Command::from(dsql_pgx_std());
    cmd.arg("local").args(args).stderr(Stdio::null());
    common::dsql::spawn_local(cmd).await
}

async fn stop(child: &mut tokio::process::Child) {
    common::dsql::stop_with_sigterm(child).await;
}

/// After a start: the data dir is ours (0700, 0711 as root), every state file ours with
/// the mode of the layout, and only pgdata/ belongs to the PostgreSQL OS user. The secret
/// given in a file is the one served.
#[tokio::test(flavor = "multi_thread")]
async fn after_a_start_only_pgdata_belongs_to_postgres_and_secrets_are_private() {
    let (tmp, data) = fresh();
    let key = tmp.path().join("key");
    std::fs::write(&key, "fr0m-a-f1le\n").unwrap();
    set_mode(&key, 0o600);
    let (mut child, exports) = spawn_local(&[
        "--port".as_ref(),
        "0".as_ref(),
        "--data-dir".as_ref(),
        data.as_os_str(),
        "--access-key-id".as_ref(),
        "AKIAAAAAAAAAAAAAAAAA".as_ref(),
        "--secret-access-key-file".as_ref(),
        key.as_os_str(),
    ])
    .await;
    assert!(
        exports.contains(" AWS_SECRET_ACCESS_KEY=fr0m-a-f1le\n"),
        "{exports}"
    );
    let root = geteuid().is_root();
    let me = geteuid().as_raw();
    let server = if root {
        user("postgres").uid
    } else {
        geteuid()
    };
    let meta = std::fs::metadata(&data).unwrap();
    assert_eq!(meta.uid(), me);
    assert_eq!(meta.mode() & 0o7777, if root { 0o711 } else { 0o700 });
    let mut found: Vec<(String, u32, u32)> = std::fs::read_dir(&data)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let m = std::fs::symlink_metadata(e.path()).unwrap();
            (
                e.file_name().into_string().unwrap(),
                m.uid(),
                m.mode() & 0o7777,
            )
        })
        .collect();
    found.sort();
    let expected = [
        ("ca.key", me, 0o600),
        ("ca.pem", me, 0o644),
        ("dsql-pgx-local.lock", me, 0o600),
        ("pg_hba.conf", me, 0o644),
        ("pgdata", server.as_raw(), 0o700),
        ("postgres.log", me, 0o600),
    ]
    .map(|(n, u, m)| (n.to_owned(), u, m));
    // Credentials were given, so none were generated.
    assert_eq!(
        found,
        expected.to_vec(),
        "owner and mode of {}",
        data.display()
    );
    // It serves with the key from the file (and has set up its signal handling by then).
    let env: Vec<(String, String)> = exports
        .lines()
        .find_map(|l| l.strip_prefix("export "))
        .unwrap()
        .split(' ')
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap();
            (k.to_owned(), v.trim_matches('\'').to_owned())
        })
        .collect();
    let mut query = dsql_pgx();
    query
        .envs(env)
        .args(["query", "-q", "--format", "csv", "--no-header", "select 1"]);
    let out = output(query).await;
    assert_code(&out, 0);
    stop(&mut child).await;
}

/// `--local` in a temporary dir sweeps what killed runs left there: only dirs with our
/// prefix, ours, not links, whose lock holds a pid and is free; never following a link
/// inside them. Everything else stays.
#[tokio::test(flavor = "multi_thread")]
async fn local_removes_temporary_dirs_left_by_killed_runs() {
    let tmp = tempfile::tempdir().unwrap();
    set_mode(tmp.path(), 0o755);
    let base = tmp.path().join("tmp");
    std::fs::create_dir(&base).unwrap();
    set_mode(&base, 0o1777);
    let outside = tmp.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("precious"), "keep me\n").unwrap();
    let plant = |name: &str, lock: Option<&str>| -> PathBuf {
        let dir = base.join(name);
        std::fs::create_dir(&dir).unwrap();
        set_mode(&dir, 0o711);
        if let Some(text) = lock {
            std::fs::write(dir.join("dsql-pgx-local.lock"), text).unwrap();
            set_mode(&dir.join("dsql-pgx-local.lock"), 0o600);
        }
        dir
    };
    // Dead: a pid in a lock nobody holds, a cluster below, links out of it.
    let dead = plant("dsql-pgx-local-dead01", Some("4194304\n"));
    std::fs::create_dir_all(dead.join("pgdata/base/1")).unwrap();
    std::fs::write(dead.join("pgdata/base/1/1259"), "rel").unwrap();
    std::os::unix::fs::symlink(outside.join("precious"), dead.join("pgdata/file-link")).unwrap();
    std::os::unix::fs::symlink(&outside, dead.join("pgdata/dir-link")).unwrap();
    if geteuid().is_root() {
        let pg = user("postgres");
        for p in [
            "pgdata",
            "pgdata/base",
            "pgdata/base/1",
            "pgdata/base/1/1259",
        ] {
            nix::unistd::chown(&dead.join(p), Some(pg.uid), Some(pg.gid)).unwrap();
        }
    }
    // Alive: its lock is held (here by the test).
    let alive = plant("dsql-pgx-local-alive1", Some("1\n"));
    let held = nix::fcntl::Flock::lock(
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(alive.join("dsql-pgx-local.lock"))
            .unwrap(),
        nix::fcntl::FlockArg::LockExclusiveNonblock,
    )
    .unwrap();
    // Being created: no lock yet, or a lock without a pid yet.
    let no_lock = plant("dsql-pgx-local-nolock", None);
    // Left long ago without a lock (a run stopped while its PostgreSQL still wrote there).
    let old_unlocked = plant("dsql-pgx-local-oldnol", None);
    std::fs::create_dir_all(old_unlocked.join("pgdata/base")).unwrap();
    let hour_ago = nix::sys::time::TimeSpec::from_duration(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            - Duration::from_secs(3600),
    );
    nix::sys::stat::utimensat(
        nix::fcntl::AT_FDCWD,
        &old_unlocked,
        &hour_ago,
        &hour_ago,
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    )
    .unwrap();
    let no_pid = plant("dsql-pgx-local-nopid1", Some(""));
    // Not ours to judge: another prefix; a link to a dead-looking dir.
    let other = plant("other-prefix-dead01", Some("4194304\n"));
    let target = plant("target-of-a-link", Some("4194304\n"));
    let link = base.join("dsql-pgx-local-link01");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let foreign = geteuid().is_root().then(|| {
        let dir = plant("dsql-pgx-local-nobody", Some("4194304\n"));
        let nobody = user("nobody");
        nix::unistd::chown(&dir, Some(nobody.uid), Some(nobody.gid)).unwrap();
        dir
    });

    let mut cmd = dsql_pgx();
    cmd.env("TMPDIR", &base)
        .args(["query", "--local", "-q", "--format", "csv", "--no-header"])
        .arg("select 1")
        .timeout(Duration::from_secs(120));
    let out = output(cmd).await;
    assert_code(&out, 0);
    assert_eq!(stdout(&out), "1\n");

    assert!(!dead.exists(), "the dead run's dir was not removed");
    assert!(
        !old_unlocked.exists(),
        "a dir without a lock for an hour was not removed"
    );
    assert_eq!(
        std::fs::read_to_string(outside.join("precious")).unwrap(),
        "keep me\n"
    );
    for kept in [&alive, &no_lock, &no_pid, &other, &target, &link] {
        assert!(kept.exists(), "{} was removed", kept.display());
    }
    assert!(std::fs::symlink_metadata(&link).unwrap().is_symlink());
    assert!(target.join("dsql-pgx-local.lock").exists());
    if let Some(foreign) = &foreign {
        assert!(foreign.join("dsql-pgx-local.lock").exists());
    }
    // And the run removed its own dir.
    let mut left: Vec<String> = std::fs::read_dir(&base)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    left.sort();
    let mut expected = vec![
        "dsql-pgx-local-alive1",
        "dsql-pgx-local-link01",
        "dsql-pgx-local-nolock",
        "dsql-pgx-local-nopid1",
        "other-prefix-dead01",
        "target-of-a-link",
    ];
    if foreign.is_some() {
        expected.push("dsql-pgx-local-nobody");
        expected.sort();
    }
    assert_eq!(left, expected);
    drop(held);
}

/// As root, a `$TMPDIR` PostgreSQL cannot enter is named as TMPDIR (the user gave no
/// `--data-dir`), before anything is made in it; as anyone else, PostgreSQL runs as the user
/// and the same TMPDIR works.
#[tokio::test(flavor = "multi_thread")]
async fn a_tmpdir_postgres_cannot_enter_is_named_as_tmpdir() {
    let (tmp, _) = fresh();
    let private = tmp.path().join("private");
    std::fs::create_dir(&private).unwrap();
    set_mode(&private, 0o700);
    let inner = private.join("tmp");
    std::fs::create_dir(&inner).unwrap();
    let mut cmd = dsql_pgx();
    cmd.env("TMPDIR", &inner)
        .args(["query", "--local", "-q", "--format", "csv", "select 1"])
        .timeout(REFUSAL_TIMEOUT);
    let out = output(cmd).await;
    if geteuid().is_root() {
        assert_eq!(
            stderr(&out),
            format!(
                "dsql-pgx: error: the temporary directory {} (TMPDIR): PostgreSQL runs as user postgres, which cannot enter {} (mode 700); set TMPDIR to a directory it can reach, such as /tmp\n",
                inner.display(),
                private.display()
            )
        );
        assert_code(&out, 2);
    } else {
        assert_code(&out, 0);
        assert_eq!(stdout(&out), "?column?\n1\n");
    }
    assert_eq!(
        std::fs::read_dir(&inner).unwrap().count(),
        0,
        "nothing left"
    );
}

/// SIGTERM while `local` is still starting (its temporary data dir made, the exports not yet
/// printed) stops it cleanly: exit 0, PostgreSQL stopped, the temporary dir removed. Before,
/// the signal handler came only after the exports, and such a SIGTERM killed the process,
/// leaving the dir (credentials, CA key) behind.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_during_the_start_of_local_stops_it_cleanly() {
    let (_tmp, temp) = fresh_tmpdir();
    let mut cmd = tokio::process::Command::from(dsql_pgx_std());
    cmd.env("TMPDIR", &temp)
        .args(["local", "--port", "0"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    let mut child = cmd.spawn().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while std::fs::read_dir(&temp).unwrap().count() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "no temporary data dir appeared"
        );
        assert!(child.try_wait().unwrap().is_none(), "local exited early");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop(&mut child).await;
    assert_eq!(
        std::fs::read_dir(&temp).unwrap().count(),
        0,
        "the temporary data dir is removed"
    );
}

/// PostgreSQL runs as another OS user (as root) who can read its environment: it gets only
/// PATH and the locale, never the secret access key or AWS credentials of the caller.
#[tokio::test(flavor = "multi_thread")]
async fn postgres_does_not_inherit_secrets_from_the_environment() {
    let (_tmp, data) = fresh();
    let mut cmd = tokio::process::Command::from(dsql_pgx_std());
    cmd.env(
        "DSQL_LOCAL_SECRET_ACCESS_KEY",
        "s3cret-from-the-environment",
    )
    .env("AWS_SESSION_TOKEN", "session-token-of-the-caller")
    .args([
        "local",
        "--port",
        "0",
        "--access-key-id",
        "AKIDEXAMPLE",
        "--data-dir",
    ])
    .arg(&data)
    .stderr(Stdio::null());
    let (mut child, _) = common::dsql::spawn_local(cmd).await;
    let pid_file = std::fs::read_to_string(data.join("pgdata/postmaster.pid")).unwrap();
    let pid = pid_file.lines().next().unwrap().trim();
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let environ = String::from_utf8_lossy(&environ);
    assert!(!environ.contains("s3cret"), "{environ}");
    assert!(!environ.contains("session-token"), "{environ}");
    assert!(!environ.contains("AWS_"), "{environ}");
    stop(&mut child).await;
}

/// A data dir below a directory someone else owns (who could move it away and put their own
/// in its place), or below one others may write that is not sticky, is refused before
/// anything is made; below a sticky world-writable one (as in /tmp) it is fine.
#[tokio::test(flavor = "multi_thread")]
async fn a_data_dir_below_a_directory_others_control_is_refused() {
    let (tmp, _) = fresh();
    let parent = tmp.path().join("theirs");
    std::fs::create_dir(&parent).unwrap();
    set_mode(&parent, 0o777);
    let data = parent.join("data");
    assert_refused(
        &data,
        &format!(
            "--data-dir {}: {} (owner {}, mode 777) can be changed by others, who could swap the data dir; choose a data dir whose parent directories only you or root can change",
            data.display(),
            parent.display(),
            me()
        ),
    )
    .await;
    assert!(!data.exists(), "nothing created");
    if geteuid().is_root() {
        set_mode(&parent, 0o755);
        let nobody = user("nobody");
        nix::unistd::chown(&parent, Some(nobody.uid), Some(nobody.gid)).unwrap();
        assert_refused(
            &data,
            &format!(
                "--data-dir {}: {} (owner nobody, mode 755) can be changed by its owner, who could swap the data dir; choose a data dir whose parent directories only you or root can change",
                data.display(),
                parent.display()
            ),
        )
        .await;
        assert!(!data.exists(), "nothing created");
    }
}

/// SIGTERM while initdb runs in a `--local` start stops initdb and the server processes it
/// runs before the temporary dir is removed, so nothing is left (before, initdb went on
/// writing into the removed dir and left a `pgdata/` behind that no later run removed).
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_during_initdb_leaves_no_temporary_dir() {
    let (_tmp, temp) = fresh_tmpdir();
    let mut cmd = tokio::process::Command::from(dsql_pgx_std());
    cmd.env("TMPDIR", &temp)
        .args(["query", "--local", "select 1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    let mut child = cmd.spawn().unwrap();
    // initdb's bootstrap server is at work once pgdata/base/1 (template1) exists, and
    // initdb is done once postgres.log appears (the server proper starts).
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let initdb_running = loop {
        assert!(std::time::Instant::now() < deadline, "initdb never ran");
        assert!(child.try_wait().unwrap().is_none(), "exited early");
        let dirs: Vec<_> = std::fs::read_dir(&temp).unwrap().flatten().collect();
        if let Some(dir) = dirs.first()
            && dir.path().join("pgdata/base/1").exists()
        {
            break !dir.path().join("postgres.log").exists();
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    let status = common::dsql::sigterm(&mut child).await;
    assert_eq!(status.code(), Some(130), "{status:?}");
    // No initdb or server process of that start outlives it (they would write on).
    let survivors: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains(&*temp.to_string_lossy()))
        .collect();
    assert!(survivors.is_empty(), "still running: {survivors:?}");
    let left: Vec<_> = std::fs::read_dir(&temp)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(
        left.is_empty(),
        "left behind: {left:?} (initdb was running: {initdb_running})"
    );
}

/// A relative `--data-dir` is made absolute, so the printed exports (PGSSLROOTCERT) work from
/// any directory; a `--max-connections` above what the endpoint takes is capped with a warning.
#[tokio::test(flavor = "multi_thread")]
async fn a_relative_data_dir_prints_absolute_paths() {
    use tokio::io::AsyncBufReadExt as _;
    let (tmp, _) = fresh();
    let mut cmd = tokio::process::Command::from(dsql_pgx_std());
    cmd.current_dir(tmp.path())
        .args([
            "local",
            "--port",
            "0",
            "--max-connections",
            "9000",
            "--data-dir",
            "rel/dd",
        ])
        .stderr(Stdio::piped());
    let (mut child, exports) = common::dsql::spawn_local(cmd).await;
    let real = std::fs::canonicalize(tmp.path()).unwrap();
    let want = format!("PGSSLROOTCERT={}/rel/dd/ca.pem ", real.display());
    assert!(exports.contains(&want), "{exports}");
    let mut err = tokio::io::BufReader::new(child.stderr.take().unwrap());
    let mut first = String::new();
    err.read_line(&mut first).await.unwrap();
    assert_eq!(
        first,
        "dsql-pgx local: warning: --max-connections 9000 is capped at 500, what the private PostgreSQL is sized for\n"
    );
    stop(&mut child).await;
}
