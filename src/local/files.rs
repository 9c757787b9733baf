//! The endpoint's state on disk: its data directory and the files in it, handled so that
//! nobody else on the machine can redirect them, also when we run as root.
//!
//! The data directory is opened once (`O_DIRECTORY | O_NOFOLLOW`) and judged through the
//! open descriptor: it must be ours (root counts as itself) and writable by nobody else.
//! Every state file is then reached relative to that descriptor without following a
//! symbolic link, and checked the same way: a regular file with one link, ours, writable
//! by nobody else, and, when it holds a secret, readable by nobody else. New contents go to
//! a fresh temporary name (`O_CREAT | O_EXCL`), get their mode and owner on the open
//! descriptor (`fchmod`/`fchown`, never by path) and are renamed into place. A refusal is
//! a [`ConfigError`] (exit 2) naming the path, its owner and mode, and the fix.
//!
//! Layout of a data directory (see README, `dsql-pgx local`): the directory itself 0700,
//! or 0711 as root so that the `postgres` OS user may traverse it but not list or write
//! it; the lock, `credentials`, `ca.key` and `postgres.log` 0600, `ca.pem` and
//! `pg_hba.conf` 0644, all ours; `pgdata/` 0700, the only thing `postgres` owns.
//!
//! This module also finds the default data directory of `local --persist`, sweeps the
//! temporary directories of runs that died (SIGKILL) without removing theirs, and writes
//! `local --env-file` ([`PrivateFile`]): 0600, atomically, in a directory nobody else can
//! change.

use std::ffi::{CStr, CString, OsStr};
use std::fs::File;
use std::io::Read as _;
use std::io::Write as _;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::DirBuilderExt as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use nix::errno::Errno;
use nix::fcntl::{AtFlags, FcntlArg, Flock, FlockArg, OFlag, fcntl, openat, renameat};
use nix::sys::stat::{FileStat, Mode, SFlag, fchmod, fstat, fstatat, mkdirat};
use nix::unistd::{Gid, Uid, UnlinkatFlags, User, fchown, geteuid, unlinkat};
use rand::RngExt as _;

use crate::settings::ConfigError;

/// The most we read of a state file: they are all small.
const MAX_READ: u64 = 1 << 20;
/// Name of the cluster directory, the one thing the PostgreSQL OS user owns.
pub const PGDATA: &str = "pgdata";
/// The hba file, next to `pgdata/` where PostgreSQL can read but not write it.
pub const HBA_FILE: &str = "pg_hba.conf";
/// The deepest directory tree the stale-directory sweep descends.
const MAX_DEPTH: usize = 64;

/// A directory opened without following links; files in it are reached relative to it.
#[derive(Debug)]
pub struct Dir {
    fd: OwnedFd,
    path: PathBuf,
}

/// What is wrong with a file or directory we were about to trust.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Problem {
    Link,
    NotRegular,
    NotOurs,
    Links(u64),
    Writable,
    Readable,
}

/// Who the refused path belongs to, for the fix a message names.
#[derive(Clone, Copy)]
enum Role<'a> {
    /// A file in the data directory.
    State,
    /// A file given on the command line by this flag.
    Given(&'a str),
}

fn user_name(uid: u32) -> String {
    match User::from_uid(Uid::from_raw(uid)) {
        Ok(Some(user)) => user.name,
        _ => format!("uid {uid}"),
    }
}

fn permissions(st: &FileStat) -> u32 {
    st.st_mode & 0o7777
}

fn is_kind(st: &FileStat, kind: SFlag) -> bool {
    SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == kind
}

/// The mode of a data directory: 0700, or 0711 as root, where PostgreSQL runs as the
/// `postgres` OS user, which must traverse it to reach `pgdata/` and `pg_hba.conf`.
pub fn data_dir_mode() -> u32 {
    if geteuid().is_root() { 0o711 } else { 0o700 }
}

fn check_file(st: &FileStat, secret: bool) -> Result<(), Problem> {
    if !is_kind(st, SFlag::S_IFREG) {
        return Err(Problem::NotRegular);
    }
    if st.st_uid != geteuid().as_raw() {
        return Err(Problem::NotOurs);
    }
    #[allow(clippy::useless_conversion)] // nlink_t is not u64 everywhere
    let links = u64::from(st.st_nlink);
    if links != 1 {
        return Err(Problem::Links(links));
    }
    if permissions(st) & 0o022 != 0 {
        return Err(Problem::Writable);
    }
    if secret && permissions(st) & 0o077 != 0 {
        return Err(Problem::Readable);
    }
    Ok(())
}

/// The one-line refusal of a file: path, owner, mode, fix.
fn refuse_file(path: &Path, st: &FileStat, problem: Problem, role: Role<'_>) -> anyhow::Error {
    let (prefix, p) = match role {
        Role::State => (String::new(), path.display()),
        Role::Given(flag) => (format!("{flag} "), path.display()),
    };
    let (owner, mode) = (user_name(st.st_uid), permissions(st));
    let me = user_name(geteuid().as_raw());
    let given = matches!(role, Role::Given(_));
    let line = match problem {
        Problem::Link if given => format!(
            "{prefix}{p} is a symbolic link (owner {owner}, mode {mode:o}), which dsql-pgx does not follow; give the file itself"
        ),
        Problem::Link => format!(
            "{p} is a symbolic link (owner {owner}, mode {mode:o}), which dsql-pgx does not follow in its data dir; remove it"
        ),
        Problem::NotRegular => format!(
            "{prefix}{p} is not a regular file (owner {owner}, mode {mode:o}); {}",
            if given { "give a file" } else { "remove it" }
        ),
        Problem::NotOurs => format!(
            "{prefix}{p} is owned by {owner}, not {me} (mode {mode:o}); {}",
            if given {
                "use a file of your own"
            } else {
                "remove it or choose another --data-dir"
            }
        ),
        Problem::Links(n) => format!(
            "{prefix}{p} has {n} hard links (owner {owner}, mode {mode:o}); {}",
            if given {
                "give a file with one link"
            } else {
                "remove it"
            }
        ),
        Problem::Writable => format!(
            "{prefix}{p} is writable by group or others (owner {owner}, mode {mode:o}); {}",
            if given {
                format!("run chmod 600 {p}")
            } else {
                format!("remove it or run chmod go-w {p}")
            }
        ),
        Problem::Readable => format!(
            "{prefix}{p} holds a secret but is readable by group or others (owner {owner}, mode {mode:o}); run chmod 600 {p}"
        ),
    };
    ConfigError(line).into()
}

/// The refusal of a data directory.
fn refuse_dir(path: &Path, st: &FileStat, problem: Problem) -> anyhow::Error {
    let p = path.display();
    let (owner, mode) = (user_name(st.st_uid), permissions(st));
    let me = user_name(geteuid().as_raw());
    let line = match problem {
        Problem::Link => format!(
            "--data-dir {p} is a symbolic link (owner {owner}, mode {mode:o}); give the directory it points to"
        ),
        Problem::NotOurs => format!(
            "--data-dir {p} is owned by {owner}, not {me} (mode {mode:o}); choose another --data-dir (one you own)"
        ),
        Problem::Writable => format!(
            "--data-dir {p} is writable by group or others (owner {owner}, mode {mode:o}); run chmod {:o} {p} or choose another --data-dir",
            data_dir_mode()
        ),
        _ => format!(
            "--data-dir {p} is not a directory (owner {owner}, mode {mode:o}); choose another --data-dir"
        ),
    };
    ConfigError(line).into()
}

/// `lstat` of a path we refused to follow, for the message.
fn lstat(path: &Path) -> anyhow::Result<FileStat> {
    nix::sys::stat::lstat(path).with_context(|| format!("reading {}", path.display()))
}

/// Who other than root and `me` can change the entries of the directory (or link) `st`:
/// its owner, or others when group or others may write it and it is not sticky (in a
/// sticky directory, as /tmp is, nobody else can rename or replace our entries).
fn changeable_by(st: &FileStat, me: u32) -> Option<&'static str> {
    let mode = permissions(st);
    if st.st_uid != 0 && st.st_uid != me {
        return Some("its owner");
    }
    let link = is_kind(st, SFlag::S_IFLNK);
    (!link && mode & 0o022 != 0 && mode & 0o1000 == 0).then_some("others")
}

/// Refuses a data dir below a directory (or a link) that someone other than root or us could
/// change: they could move the data dir away and put their own in its place between two of
/// our path-based steps (PostgreSQL's `-D`, its socket, `hba_file`). A directory others may
/// write is fine when it is sticky (as /tmp is): there nobody else can rename our entries.
fn check_ancestors(path: &Path) -> anyhow::Result<()> {
    let me = geteuid().as_raw();
    let absolute =
        std::path::absolute(path).with_context(|| format!("resolving {}", path.display()))?;
    let Some(existing) = absolute.ancestors().skip(1).find(|dir| dir.is_dir()) else {
        return Ok(());
    };
    let canonical = std::fs::canonicalize(existing)
        .with_context(|| format!("resolving {}", existing.display()))?;
    // The path as given (links included, each checked where it is) and where it leads.
    let literal = existing.ancestors().map(|p| (p, false));
    let resolved = canonical.ancestors().map(|p| (p, true));
    for (dir, follow) in literal.chain(resolved) {
        let st = if follow {
            nix::sys::stat::stat(dir)
        } else {
            nix::sys::stat::lstat(dir)
        }
        .with_context(|| format!("reading {}", dir.display()))?;
        if let Some(who) = changeable_by(&st, me) {
            return Err(ConfigError(format!(
                "--data-dir {}: {} (owner {}, mode {:o}) can be changed by {who}, who could swap the data dir; choose a data dir whose parent directories only you or root can change",
                path.display(),
                dir.display(),
                user_name(st.st_uid),
                permissions(&st),
            ))
            .into());
        }
    }
    Ok(())
}

/// Opens the data directory at `path`, creating it (and missing parents, mode
/// [`data_dir_mode`]) when it does not exist, and sets its mode to [`data_dir_mode`].
///
/// Refused (exit 2): a symbolic link, not a directory, not ours, writable by group or
/// others, or made by an earlier dsql-pgx, whose layout let the `postgres` OS user own it.
pub fn open_data_dir(path: &Path) -> anyhow::Result<Dir> {
    check_ancestors(path)?;
    let mode = data_dir_mode();
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let mut opened = nix::fcntl::open(path, flags, Mode::empty());
    if matches!(opened, Err(Errno::ENOENT)) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(mode)
            .create(path)
            .with_context(|| format!("creating {}", path.display()))?;
        opened = nix::fcntl::open(path, flags, Mode::empty());
    }
    let fd = match opened {
        Ok(fd) => fd,
        // O_NOFOLLOW | O_DIRECTORY on a link: ELOOP or ENOTDIR, depending on the kernel.
        Err(Errno::ELOOP | Errno::ENOTDIR) => {
            return match nix::sys::stat::lstat(path) {
                Ok(st) if is_kind(&st, SFlag::S_IFLNK) => Err(refuse_dir(path, &st, Problem::Link)),
                Ok(st) => Err(refuse_dir(path, &st, Problem::NotRegular)),
                Err(_) => Err(ConfigError(format!(
                    "--data-dir {} is not below a directory; choose another --data-dir",
                    path.display()
                ))
                .into()),
            };
        }
        Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
    };
    let st = fstat(&fd).with_context(|| format!("reading {}", path.display()))?;
    let dir = Dir {
        fd,
        path: path.to_path_buf(),
    };
    if dir.is_old_layout() {
        return Err(ConfigError(format!(
            "--data-dir {} was made by an earlier dsql-pgx (owner {}, mode {:o}), whose layout cannot be trusted; remove it or choose another --data-dir",
            path.display(),
            user_name(st.st_uid),
            permissions(&st)
        ))
        .into());
    }
    if st.st_uid != geteuid().as_raw() {
        return Err(refuse_dir(path, &st, Problem::NotOurs));
    }
    if permissions(&st) & 0o022 != 0 {
        return Err(refuse_dir(path, &st, Problem::Writable));
    }
    if permissions(&st) != mode {
        fchmod(&dir.fd, Mode::from_bits_truncate(mode))
            .with_context(|| format!("chmod {}", path.display()))?;
    }
    Ok(dir)
}

impl Dir {
    /// The path the directory was opened at.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether `name` exists here (a link counts, and is not followed).
    pub fn exists(&self, name: &str) -> bool {
        fstatat(&self.fd, name, AtFlags::AT_SYMLINK_NOFOLLOW).is_ok()
    }

    /// A cluster initialised (`pgdata/PG_VERSION`) without the hba file this version
    /// writes before anything else uses the cluster: an earlier dsql-pgx's layout.
    fn is_old_layout(&self) -> bool {
        self.exists(&format!("{PGDATA}/PG_VERSION")) && !self.exists(HBA_FILE)
    }

    /// Opens `name` without following a link and checks it; `None` if it does not exist
    /// (and `flags` does not create it).
    fn open_checked(&self, name: &str, flags: OFlag, secret: bool) -> anyhow::Result<Option<File>> {
        let path = self.path.join(name);
        let fd = match openat(
            &self.fd,
            name,
            flags | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK,
            Mode::from_bits_truncate(0o600),
        ) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) if !flags.contains(OFlag::O_CREAT) => return Ok(None),
            Err(Errno::ELOOP) => {
                let st = fstatat(&self.fd, name, AtFlags::AT_SYMLINK_NOFOLLOW)
                    .with_context(|| format!("reading {}", path.display()))?;
                return Err(refuse_file(&path, &st, Problem::Link, Role::State));
            }
            Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
        };
        let st = fstat(&fd).with_context(|| format!("reading {}", path.display()))?;
        check_file(&st, secret).map_err(|p| refuse_file(&path, &st, p, Role::State))?;
        // Only to open a planted FIFO without hanging; regular files ignore it.
        fcntl(&fd, FcntlArg::F_SETFL(flags & OFlag::O_APPEND))
            .with_context(|| format!("opening {}", path.display()))?;
        Ok(Some(File::from(fd)))
    }

    /// The contents of `name`, checked first (`secret`: readable by us alone); `None` if it
    /// does not exist.
    pub fn read(&self, name: &str, secret: bool) -> anyhow::Result<Option<String>> {
        let Some(file) = self.open_checked(name, OFlag::O_RDONLY, secret)? else {
            return Ok(None);
        };
        let mut text = String::new();
        file.take(MAX_READ)
            .read_to_string(&mut text)
            .with_context(|| format!("reading {}", self.path.join(name).display()))?;
        Ok(Some(text))
    }

    /// Replaces `name` atomically with `contents`, mode `mode`, owned by `owner` (default:
    /// us): written to a fresh name (`O_EXCL`), chmodded and chowned on its descriptor,
    /// then renamed over `name` (a link there is replaced, never followed).
    pub fn write(
        &self,
        name: &str,
        contents: &[u8],
        mode: u32,
        owner: Option<(Uid, Gid)>,
    ) -> anyhow::Result<()> {
        self.write_file(name, contents, mode, owner).map(drop)
    }

    /// [`Dir::write`], returning the written file's device and inode numbers.
    fn write_file(
        &self,
        name: &str,
        contents: &[u8],
        mode: u32,
        owner: Option<(Uid, Gid)>,
    ) -> anyhow::Result<(u64, u64)> {
        let path = self.path.join(name);
        let tmp = format!(".{name}.{:016x}.tmp", rand::rng().random::<u64>());
        let fd = openat(
            &self.fd,
            tmp.as_str(),
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        )
        .with_context(|| format!("creating {}", self.path.join(&tmp).display()))?;
        let mut file = File::from(fd);
        let written = (|| -> anyhow::Result<(u64, u64)> {
            fchmod(&file, Mode::from_bits_truncate(mode)).context("chmod")?;
            if let Some((uid, gid)) = owner {
                fchown(&file, Some(uid), Some(gid)).context("chown")?;
            }
            file.write_all(contents).context("write")?;
            let st = fstat(&file).context("stat")?;
            renameat(&self.fd, tmp.as_str(), &self.fd, name).context("rename")?;
            #[allow(clippy::useless_conversion)] // dev_t and ino_t are not u64 everywhere
            Ok((u64::from(st.st_dev), u64::from(st.st_ino)))
        })();
        if written.is_err() {
            let _ = unlinkat(&self.fd, tmp.as_str(), UnlinkatFlags::NoRemoveDir);
        }
        written.with_context(|| format!("writing {}", path.display()))
    }

    /// Opens (creating, 0600) the lock file `name` for reading and writing.
    pub fn open_lock(&self, name: &str) -> anyhow::Result<File> {
        let file = self
            .open_checked(name, OFlag::O_RDWR | OFlag::O_CREAT, false)?
            .context("the lock file vanished")?;
        self.set_private(&file, name)?;
        Ok(file)
    }

    /// Opens (creating, 0600) the log `name` for appending.
    pub fn open_log(&self, name: &str) -> anyhow::Result<File> {
        let file = self
            .open_checked(
                name,
                OFlag::O_WRONLY | OFlag::O_APPEND | OFlag::O_CREAT,
                false,
            )?
            .context("the log file vanished")?;
        self.set_private(&file, name)?;
        Ok(file)
    }

    fn set_private(&self, file: &File, name: &str) -> anyhow::Result<()> {
        fchmod(file, Mode::from_bits_truncate(0o600))
            .with_context(|| format!("chmod {}", self.path.join(name).display()))
    }

    /// The subdirectory `name` (0700), created when missing and then given to `owner`
    /// (default: us) on its descriptor; an existing one must not be a link and must
    /// belong to `owner` already.
    pub fn subdir(&self, name: &str, owner: Option<(Uid, Gid)>) -> anyhow::Result<Dir> {
        let path = self.path.join(name);
        let created = match mkdirat(&self.fd, name, Mode::from_bits_truncate(0o700)) {
            Ok(()) => true,
            Err(Errno::EEXIST) => false,
            Err(e) => return Err(e).with_context(|| format!("creating {}", path.display())),
        };
        let fd = match openat(
            &self.fd,
            name,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(Errno::ELOOP | Errno::ENOTDIR) => {
                let st = fstatat(&self.fd, name, AtFlags::AT_SYMLINK_NOFOLLOW)
                    .with_context(|| format!("reading {}", path.display()))?;
                return Err(ConfigError(format!(
                    "{} is not a directory (owner {}, mode {:o}); remove it",
                    path.display(),
                    user_name(st.st_uid),
                    permissions(&st)
                ))
                .into());
            }
            Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
        };
        let want = owner.map_or_else(geteuid, |(uid, _)| uid);
        if created {
            if let Some((uid, gid)) = owner {
                fchown(&fd, Some(uid), Some(gid))
                    .with_context(|| format!("chown {}", path.display()))?;
            }
            fchmod(&fd, Mode::from_bits_truncate(0o700))
                .with_context(|| format!("chmod {}", path.display()))?;
        } else {
            let st = fstat(&fd).with_context(|| format!("reading {}", path.display()))?;
            if st.st_uid != want.as_raw() {
                return Err(ConfigError(format!(
                    "{} is owned by {}, not {} (mode {:o}); remove it or choose another --data-dir",
                    path.display(),
                    user_name(st.st_uid),
                    user_name(want.as_raw()),
                    permissions(&st)
                ))
                .into());
            }
        }
        Ok(Dir { fd, path })
    }
}

/// Where [`PrivateFile::write`] puts a file (`local --env-file`): its directory, opened and
/// judged before anything is written, and its name there.
#[derive(Debug)]
pub struct PrivateFile {
    dir: Dir,
    name: String,
    flag: &'static str,
}

/// A file [`PrivateFile::write`] wrote, removed again by [`WrittenFile::remove`] only while
/// it is still the file written.
#[derive(Debug)]
pub struct WrittenFile {
    dir: Dir,
    name: String,
    id: (u64, u64),
}

impl PrivateFile {
    /// Opens the directory of `path` (named by `flag`) for a file only we may read.
    ///
    /// Refused (exit 2): a directory that is not ours or root's, or that group or others
    /// may write unless it is sticky (as /tmp is, where nobody else can rename or replace
    /// our file); a `path` without a file name.
    pub fn at(path: &Path, flag: &'static str) -> anyhow::Result<PrivateFile> {
        let shown = path.display();
        let name = path.file_name().and_then(OsStr::to_str).ok_or_else(|| {
            ConfigError(format!("{flag} {shown} does not name a file (in UTF-8)"))
        })?;
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let fd = nix::fcntl::open(
            parent,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| {
            ConfigError(format!(
                "{flag} {shown}: cannot open its directory {} ({})",
                parent.display(),
                e.desc()
            ))
        })?;
        let st = fstat(&fd).with_context(|| format!("reading {}", parent.display()))?;
        if let Some(who) = changeable_by(&st, geteuid().as_raw()) {
            return Err(ConfigError(format!(
                "{flag} {shown}: its directory {} (owner {}, mode {:o}) can be changed by {who}, who could replace the file; choose a directory only you or root can change, or a sticky one such as /tmp",
                parent.display(),
                user_name(st.st_uid),
                permissions(&st),
            ))
            .into());
        }
        Ok(PrivateFile {
            dir: Dir {
                fd,
                path: parent.to_path_buf(),
            },
            name: name.to_owned(),
            flag,
        })
    }

    /// Writes `contents`, readable and writable by us alone (0600), atomically: to a fresh
    /// name in the same directory (`O_CREAT | O_EXCL`, no link followed), then renamed
    /// into place, so a reader sees nothing or all of it, and a link there is replaced,
    /// never followed.
    pub fn write(self, contents: &[u8]) -> anyhow::Result<WrittenFile> {
        let id = self
            .dir
            .write_file(&self.name, contents, 0o600, None)
            .with_context(|| {
                format!("{} {}", self.flag, self.dir.path.join(&self.name).display())
            })?;
        Ok(WrittenFile {
            dir: self.dir,
            name: self.name,
            id,
        })
    }
}

impl WrittenFile {
    /// Removes the file, unless another file has taken its name since it was written (a
    /// different device or inode: a second `local` with the same `--env-file` renamed its
    /// own over it). Only we or root can change the directory, or it is sticky, so nobody
    /// else can delete and re-create the name to reuse the inode.
    pub fn remove(self) {
        #[allow(clippy::useless_conversion)] // dev_t and ino_t are not u64 everywhere
        let ours = fstatat(
            &self.dir.fd,
            self.name.as_str(),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .is_ok_and(|st| (u64::from(st.st_dev), u64::from(st.st_ino)) == self.id);
        if ours {
            let _ = unlinkat(&self.dir.fd, self.name.as_str(), UnlinkatFlags::NoRemoveDir);
        }
    }
}

/// Reads a secret from a file named on the command line by `flag`, with the rules of a
/// data directory's `credentials`: not a link, a regular file of ours with one link,
/// readable by us alone. Surrounding whitespace (the final newline) is dropped.
pub fn read_secret_file(path: &Path, flag: &str) -> anyhow::Result<String> {
    let fd = match nix::fcntl::open(
        path,
        OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(Errno::ELOOP) => {
            return Err(refuse_file(
                path,
                &lstat(path)?,
                Problem::Link,
                Role::Given(flag),
            ));
        }
        Err(e) => {
            return Err(ConfigError(format!(
                "{flag} {}: cannot open it ({})",
                path.display(),
                e.desc()
            ))
            .into());
        }
    };
    let st = fstat(&fd).with_context(|| format!("reading {}", path.display()))?;
    check_file(&st, true).map_err(|p| refuse_file(path, &st, p, Role::Given(flag)))?;
    let mut text = String::new();
    File::from(fd)
        .take(MAX_READ)
        .read_to_string(&mut text)
        .with_context(|| format!("reading {}", path.display()))?;
    let secret = text.trim();
    if secret.is_empty() {
        return Err(ConfigError(format!("{flag} {} is empty", path.display())).into());
    }
    Ok(secret.to_owned())
}

/// The data directory of `local --persist`: `/var/lib/dsql-pgx/local` as root (made 0711,
/// so that `postgres` may traverse it), else `$XDG_STATE_HOME/dsql-pgx/local`, else
/// `~/.local/state/dsql-pgx/local`.
pub fn default_data_dir() -> anyhow::Result<PathBuf> {
    default_data_dir_for(
        geteuid().is_root(),
        std::env::var_os("XDG_STATE_HOME").as_deref(),
        std::env::var_os("HOME").as_deref(),
    )
}

fn default_data_dir_for(
    root: bool,
    xdg_state_home: Option<&OsStr>,
    home: Option<&OsStr>,
) -> anyhow::Result<PathBuf> {
    if root {
        return Ok(PathBuf::from("/var/lib/dsql-pgx/local"));
    }
    // The XDG spec: a relative (or empty) path is to be ignored.
    fn absolute(v: Option<&OsStr>) -> Option<&Path> {
        v.map(Path::new).filter(|p| p.is_absolute())
    }
    if let Some(state) = absolute(xdg_state_home) {
        return Ok(state.join("dsql-pgx").join("local"));
    }
    if let Some(home) = absolute(home) {
        return Ok(home.join(".local/state/dsql-pgx/local"));
    }
    Err(ConfigError(
        "--persist needs a home: set HOME or XDG_STATE_HOME, or give --data-dir".into(),
    )
    .into())
}

/// Removes the temporary data directories `<parent>/<prefix>*` that runs which died
/// without cleaning up (SIGKILL) left behind; returns the paths removed. Failures are
/// skipped: sweeping is a courtesy, never a reason not to start.
///
/// A directory is dead when its lock file holds a pid (its run wrote it once it held the
/// lock) and the lock can be taken. Only directories that are ours, not links, with a lock
/// file that is ours are considered, and each is removed while we hold its lock, through
/// descriptors only (`openat`/`unlinkat`, never following a link), so a world-writable
/// `parent` such as /tmp cannot steer the removal elsewhere, also when we are root.
pub fn sweep_stale_temp_dirs(parent: &Path, prefix: &str, lock_name: &str) -> Vec<PathBuf> {
    let Ok(parent_fd) = nix::fcntl::open(
        parent,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    ) else {
        return Vec::new();
    };
    let Ok(names) = list(&parent_fd) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for name in names
        .iter()
        .filter(|n| n.to_bytes().starts_with(prefix.as_bytes()))
    {
        let path = parent.join(OsStr::from_bytes(name.to_bytes()));
        match remove_if_dead(&parent_fd, name, lock_name) {
            Ok(true) => removed.push(path),
            Ok(false) => {}
            Err(e) => tracing::debug!("not sweeping {}: {e}", path.display()),
        }
    }
    removed
}

fn list(dir: &OwnedFd) -> nix::Result<Vec<CString>> {
    let mut entries = nix::dir::Dir::from_fd(nix::unistd::dup(dir)?)?;
    Ok(entries
        .iter()
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_owned())
        .filter(|n| n.to_bytes() != b"." && n.to_bytes() != b"..")
        .collect())
}

fn same_file(a: &FileStat, b: &FileStat) -> bool {
    (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)
}

fn remove_if_dead(parent: &OwnedFd, name: &CStr, lock_name: &str) -> nix::Result<bool> {
    let me = geteuid().as_raw();
    let st = fstatat(parent, name, AtFlags::AT_SYMLINK_NOFOLLOW)?;
    if !is_kind(&st, SFlag::S_IFDIR) || st.st_uid != me {
        return Ok(false);
    }
    let dir = openat(
        parent,
        name,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    let opened = fstat(&dir)?;
    if !same_file(&st, &opened) || opened.st_uid != me {
        return Ok(false);
    }
    let lock_fd = match openat(
        &dir,
        lock_name,
        OFlag::O_RDWR | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        // Being created (the lock comes right after the directory), unless that was long
        // ago: then a run was stopped while its PostgreSQL still wrote in it, and the lock
        // went before the rest.
        Err(Errno::ENOENT) if unlocked_for_long(&opened) => {
            remove_tree(&dir, 0)?;
            if fstatat(parent, name, AtFlags::AT_SYMLINK_NOFOLLOW)
                .is_ok_and(|now| same_file(&st, &now))
            {
                unlinkat(parent, name, UnlinkatFlags::RemoveDir)?;
            }
            return Ok(true);
        }
        Err(Errno::ENOENT | Errno::ELOOP) => return Ok(false),
        Err(e) => return Err(e),
    };
    let lock_st = fstat(&lock_fd)?;
    if !is_kind(&lock_st, SFlag::S_IFREG) || lock_st.st_uid != me {
        return Ok(false);
    }
    let lock = match Flock::lock(File::from(lock_fd), FlockArg::LockExclusiveNonblock) {
        Ok(lock) => lock,
        Err((_, Errno::EWOULDBLOCK)) => return Ok(false),
        Err((_, e)) => return Err(e),
    };
    let mut text = String::new();
    if (&*lock).take(64).read_to_string(&mut text).is_err() || text.trim().parse::<u32>().is_err() {
        // No pid yet: its run opened the lock but has not taken it yet.
        return Ok(false);
    }
    remove_tree(&dir, 0)?;
    // Only the directory we emptied, should the name have been reused meanwhile.
    if fstatat(parent, name, AtFlags::AT_SYMLINK_NOFOLLOW).is_ok_and(|now| same_file(&st, &now)) {
        unlinkat(parent, name, UnlinkatFlags::RemoveDir)?;
    }
    drop(lock);
    Ok(true)
}

/// How long a temporary data dir may go without its lock file before it counts as dead.
const UNLOCKED_GRACE: std::time::Duration = std::time::Duration::from_secs(600);

/// Whether a directory was last changed longer than [`UNLOCKED_GRACE`] ago.
fn unlocked_for_long(st: &FileStat) -> bool {
    let changed = std::time::UNIX_EPOCH
        + std::time::Duration::from_secs(u64::try_from(st.st_mtime).unwrap_or(0));
    std::time::SystemTime::now()
        .duration_since(changed)
        .is_ok_and(|age| age > UNLOCKED_GRACE)
}

/// Empties the directory `dir` through descriptors, never following a link.
fn remove_tree(dir: &OwnedFd, depth: usize) -> nix::Result<()> {
    if depth > MAX_DEPTH {
        return Err(Errno::ELOOP);
    }
    for name in list(dir)? {
        let st = match fstatat(dir, name.as_c_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::ENOENT) => continue,
            Err(e) => return Err(e),
        };
        if is_kind(&st, SFlag::S_IFDIR) {
            let sub = openat(
                dir,
                name.as_c_str(),
                OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::empty(),
            )?;
            remove_tree(&sub, depth + 1)?;
            unlinkat(dir, name.as_c_str(), UnlinkatFlags::RemoveDir)?;
        } else {
            match unlinkat(dir, name.as_c_str(), UnlinkatFlags::NoRemoveDir) {
                Ok(()) | Err(Errno::ENOENT) => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _, symlink};

    use super::*;

    fn fresh() -> (tempfile::TempDir, Dir) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = open_data_dir(&tmp.path().join("data")).unwrap();
        (tmp, dir)
    }

    fn refusal(err: anyhow::Error) -> String {
        assert!(
            err.is::<ConfigError>(),
            "not a configuration error: {err:#}"
        );
        err.to_string()
    }

    #[test]
    fn a_private_file_goes_in_a_sticky_directory_and_is_removed_only_while_it_is_ours() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
        let path = tmp.path().join("env");
        let written = PrivateFile::at(&path, "--env-file")
            .unwrap()
            .write(b"export A=1\n")
            .unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "export A=1\n");
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o7777, 0o600);
        // Replaced since, as a second local with the same --env-file does (a new file
        // renamed over it): not ours to remove.
        let theirs = tmp.path().join("theirs");
        std::fs::write(&theirs, "theirs").unwrap();
        std::fs::rename(&theirs, &path).unwrap();
        written.remove();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "theirs");
        let written = PrivateFile::at(&path, "--env-file")
            .unwrap()
            .write(b"again")
            .unwrap();
        written.remove();
        assert!(!path.exists());
    }

    #[test]
    fn a_private_file_in_a_directory_others_may_write_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o770)).unwrap();
        let err = refusal(PrivateFile::at(&tmp.path().join("env"), "--env-file").unwrap_err());
        assert!(err.contains("mode 770) can be changed by others"), "{err}");
        let err = refusal(PrivateFile::at(Path::new("/"), "--env-file").unwrap_err());
        assert!(err.contains("does not name a file"), "{err}");
    }

    #[test]
    fn a_new_data_dir_is_ours_and_private() {
        let (_tmp, dir) = fresh();
        let meta = std::fs::metadata(dir.path()).unwrap();
        assert_eq!(meta.uid(), geteuid().as_raw());
        assert_eq!(meta.mode() & 0o7777, data_dir_mode());
    }

    #[test]
    fn a_data_dir_that_is_a_link_or_a_file_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let real = tmp.path().join("real");
        std::fs::create_dir(&real).unwrap();
        let link = tmp.path().join("link");
        symlink(&real, &link).unwrap();
        let msg = refusal(open_data_dir(&link).unwrap_err());
        assert!(msg.contains("is a symbolic link"), "{msg}");
        let file = tmp.path().join("file");
        std::fs::write(&file, "").unwrap();
        let msg = refusal(open_data_dir(&file).unwrap_err());
        assert!(msg.contains("is not a directory"), "{msg}");
    }

    #[test]
    fn reads_refuse_links_and_files_others_may_change() {
        let (tmp, dir) = fresh();
        let outside = tmp.path().join("outside");
        std::fs::write(&outside, "secret").unwrap();
        std::fs::set_permissions(&outside, std::fs::Permissions::from_mode(0o600)).unwrap();
        symlink(&outside, dir.path().join("credentials")).unwrap();
        let msg = refusal(dir.read("credentials", true).unwrap_err());
        assert!(msg.contains("is a symbolic link"), "{msg}");

        std::fs::write(dir.path().join("ca.pem"), "pem").unwrap();
        assert_eq!(dir.read("ca.pem", false).unwrap().as_deref(), Some("pem"));
        std::fs::set_permissions(
            dir.path().join("ca.pem"),
            std::fs::Permissions::from_mode(0o664),
        )
        .unwrap();
        let msg = refusal(dir.read("ca.pem", false).unwrap_err());
        assert!(msg.contains("is writable by group or others"), "{msg}");

        // A second name for a file elsewhere is refused too.
        std::fs::hard_link(&outside, dir.path().join("ca.key")).unwrap();
        let msg = refusal(dir.read("ca.key", true).unwrap_err());
        assert!(msg.contains("has 2 hard links"), "{msg}");

        // A FIFO neither hangs the open nor counts as a file.
        nix::unistd::mkfifo(&dir.path().join("fifo"), Mode::from_bits_truncate(0o600)).unwrap();
        let msg = refusal(dir.read("fifo", false).unwrap_err());
        assert!(msg.contains("is not a regular file"), "{msg}");
        assert_eq!(dir.read("missing", false).unwrap(), None);
    }

    #[test]
    fn lock_and_log_are_never_opened_through_a_link() {
        let (tmp, dir) = fresh();
        let outside = tmp.path().join("outside");
        std::fs::write(&outside, "keep").unwrap();
        symlink(&outside, dir.path().join("lock")).unwrap();
        symlink(tmp.path().join("absent"), dir.path().join("log")).unwrap();
        assert!(dir.open_lock("lock").is_err());
        assert!(dir.open_log("log").is_err());
        assert_eq!(std::fs::read_to_string(&outside).unwrap(), "keep");
        assert!(!tmp.path().join("absent").exists());

        let mut log = dir.open_log("postgres.log").unwrap();
        writeln!(log, "one").unwrap();
        let meta = std::fs::metadata(dir.path().join("postgres.log")).unwrap();
        assert_eq!(meta.mode() & 0o7777, 0o600);
        // Appending, also when the file was there before (and a little too open).
        std::fs::set_permissions(
            dir.path().join("postgres.log"),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        let mut log = dir.open_log("postgres.log").unwrap();
        writeln!(log, "two").unwrap();
        let meta = std::fs::metadata(dir.path().join("postgres.log")).unwrap();
        assert_eq!(meta.mode() & 0o7777, 0o600);
        assert_eq!(
            std::fs::read_to_string(dir.path().join("postgres.log")).unwrap(),
            "one\ntwo\n"
        );
    }

    #[test]
    fn writes_replace_a_link_without_following_it() {
        let (tmp, dir) = fresh();
        let outside = tmp.path().join("outside");
        std::fs::write(&outside, "keep").unwrap();
        symlink(&outside, dir.path().join("ca.pem")).unwrap();
        dir.write("ca.pem", b"new", 0o644, None).unwrap();
        assert_eq!(std::fs::read_to_string(&outside).unwrap(), "keep");
        let meta = std::fs::symlink_metadata(dir.path().join("ca.pem")).unwrap();
        assert!(meta.is_file());
        assert_eq!(meta.mode() & 0o7777, 0o644);
        assert_eq!(dir.read("ca.pem", false).unwrap().as_deref(), Some("new"));
        // No temporary file is left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["ca.pem"]);
    }

    #[test]
    fn a_subdir_is_created_private_and_a_link_there_refused() {
        let (tmp, dir) = fresh();
        let sub = dir.subdir(PGDATA, None).unwrap();
        let meta = std::fs::metadata(sub.path()).unwrap();
        assert_eq!(meta.mode() & 0o7777, 0o700);
        sub.write("f", b"x", 0o600, None).unwrap();
        assert!(sub.exists("f"));
        // Opened again, as at a restart.
        dir.subdir(PGDATA, None).unwrap();
        symlink(tmp.path(), dir.path().join("other")).unwrap();
        let msg = refusal(dir.subdir("other", None).unwrap_err());
        assert!(msg.contains("is not a directory"), "{msg}");
    }

    #[test]
    fn the_persist_default_is_per_user() {
        let os = |s: &'static str| Some(OsStr::new(s));
        assert_eq!(
            default_data_dir_for(true, os("/x"), os("/root")).unwrap(),
            Path::new("/var/lib/dsql-pgx/local")
        );
        assert_eq!(
            default_data_dir_for(false, os("/state"), os("/home/a")).unwrap(),
            Path::new("/state/dsql-pgx/local")
        );
        assert_eq!(
            default_data_dir_for(false, os("relative"), os("/home/a")).unwrap(),
            Path::new("/home/a/.local/state/dsql-pgx/local")
        );
        assert_eq!(
            default_data_dir_for(false, None, os("/home/a")).unwrap(),
            Path::new("/home/a/.local/state/dsql-pgx/local")
        );
        assert!(default_data_dir_for(false, None, None).is_err());
    }

    #[test]
    fn the_sweep_removes_only_dead_dirs_of_ours() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tmp.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("keep"), "keep").unwrap();
        let base = tmp.path().join("base");
        std::fs::create_dir(&base).unwrap();
        let plant = |name: &str, lock: Option<&str>| {
            let dir = base.join(name);
            std::fs::create_dir(&dir).unwrap();
            if let Some(text) = lock {
                std::fs::write(dir.join("l"), text).unwrap();
            }
            dir
        };
        let dead = plant("p-dead", Some("123\n"));
        std::fs::create_dir_all(dead.join("a/b/c")).unwrap();
        std::fs::write(dead.join("a/b/c/f"), "x").unwrap();
        symlink(&outside, dead.join("a/link")).unwrap();
        symlink(outside.join("keep"), dead.join("a/b/file-link")).unwrap();
        let empty = plant("p-empty", Some(""));
        let none = plant("p-none", None);
        let other = plant("q-dead", Some("123\n"));
        let alive = plant("p-alive", Some("1\n"));
        let held = Flock::lock(
            std::fs::OpenOptions::new()
                .write(true)
                .open(alive.join("l"))
                .unwrap(),
            FlockArg::LockExclusiveNonblock,
        )
        .unwrap();
        let lock_link = plant("p-locklink", None);
        symlink(dead.join("l"), lock_link.join("l")).unwrap();
        symlink(&other, base.join("p-link")).unwrap();

        let removed = sweep_stale_temp_dirs(&base, "p-", "l");
        assert_eq!(removed, std::slice::from_ref(&dead));
        assert!(!dead.exists());
        for kept in [&empty, &none, &other, &alive, &lock_link] {
            assert!(kept.exists(), "{}", kept.display());
        }
        assert!(base.join("p-link").exists());
        assert_eq!(
            std::fs::read_to_string(outside.join("keep")).unwrap(),
            "keep"
        );
        drop(held);
        // Once its holder is gone, the other one is dead too.
        assert_eq!(sweep_stale_temp_dirs(&base, "p-", "l"), [alive]);
    }
}
