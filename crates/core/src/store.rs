//! The credentials file on disk. It owns locating the file, resolving a symlink so the link stays
//! a link, the cross-process lock, reading, and the atomic write. Nothing else in the program
//! opens the credentials file for writing, and nothing here ever opens it for truncation: a new
//! version is written to a temp file beside the target, synced, and renamed over it.

use std::ffi::OsString;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::hash::{Hash, Hasher};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::credentials::{Credentials, ParseError};
use crate::schedule::GrantRecord;

/// The file mode the credentials file always has.
pub const FILE_MODE: u32 = 0o600;
/// The mode of a directory this program creates.
pub const DIR_MODE: u32 = 0o700;
/// The file name inside a config directory.
pub const FILE_NAME: &str = ".credentials.json";

/// Where the credentials path came from, for messages that say how to change it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// `--credentials` or `CLAUDE_TOKEND_CREDENTIALS`.
    Explicit,
    /// `$CLAUDE_CONFIG_DIR/.credentials.json`.
    ConfigDir,
    /// `$HOME/.claude/.credentials.json`.
    Home,
}

/// Neither an explicit path, `CLAUDE_CONFIG_DIR` nor `HOME` is set.
#[derive(Debug, PartialEq, Eq)]
pub struct NoHomeError;

impl fmt::Display for NoHomeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(
            "cannot find the credentials file: HOME is not set; \
             set HOME, CLAUDE_CONFIG_DIR, or pass --credentials PATH",
        )
    }
}

impl std::error::Error for NoHomeError {}

/// The contract's lookup order: explicit path, then `CLAUDE_CONFIG_DIR`, then `HOME`.
/// Empty values count as unset, as a shell's `VAR=` usually means "not this".
///
/// The path is made absolute lexically (see [`absolute_lexically`]), as Claude Code makes its
/// config directory absolute: the lock directories are named after that directory, so
/// `CLAUDE_CONFIG_DIR=.` must lock `<working dir>.lock` as Claude Code does, not `..lock`. Every
/// later use (locks, messages, the daemon's watch) takes the path from here.
pub fn locate(
    explicit: Option<&Path>,
    config_dir: Option<OsString>,
    home: Option<OsString>,
) -> Result<(PathBuf, Origin), NoHomeError> {
    let non_empty = |v: Option<OsString>| v.filter(|v| !v.is_empty());
    let (path, origin) = if let Some(p) = explicit.filter(|p| !p.as_os_str().is_empty()) {
        (p.to_path_buf(), Origin::Explicit)
    } else if let Some(dir) = non_empty(config_dir) {
        (PathBuf::from(dir).join(FILE_NAME), Origin::ConfigDir)
    } else if let Some(home) = non_empty(home) {
        (
            PathBuf::from(home).join(".claude").join(FILE_NAME),
            Origin::Home,
        )
    } else {
        return Err(NoHomeError);
    };
    Ok((absolute_lexically(&path), origin))
}

/// `path` made absolute the way Node's `path.resolve` does it (which is how Claude Code makes
/// its config directory absolute): relative to the working directory, `.` and `..` collapsed
/// by name, symlinks not resolved. Without a working directory (it was deleted), the path is
/// returned as it is.
pub fn absolute_lexically(path: &Path) -> PathBuf {
    if path.is_absolute() {
        return absolute_from(Path::new("/"), path);
    }
    match std::env::current_dir() {
        Ok(cwd) => absolute_from(&cwd, path),
        Err(_) => path.to_path_buf(),
    }
}

/// [`absolute_lexically`] against a given working directory (absolute).
fn absolute_from(cwd: &Path, path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::from("/");
    for part in cwd.components().chain(path.components()) {
        match part {
            Component::RootDir => out = PathBuf::from("/"),
            Component::CurDir | Component::Prefix(_) => {}
            // `pop` at the root leaves the root, as `/..` is `/`.
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(name) => out.push(name),
        }
    }
    out
}

/// Follows a chain of symlinks at the last path component to the file that holds the data.
/// Directories on the way are left as they are: a rename inside a symlinked directory is still
/// a rename inside one directory. The target need not exist yet.
pub fn resolve_symlinks(path: &Path) -> io::Result<PathBuf> {
    let mut current = path.to_path_buf();
    // The same bound as the kernel's ELOOP.
    for _ in 0..40 {
        match fs::symlink_metadata(&current) {
            Ok(meta) if meta.file_type().is_symlink() => {
                let link = fs::read_link(&current)?;
                current = if link.is_absolute() {
                    link
                } else {
                    current.parent().unwrap_or(Path::new(".")).join(link)
                };
            }
            _ => return Ok(current),
        }
    }
    Err(io::Error::other(format!(
        "{}: too many levels of symbolic links",
        path.display()
    )))
}

/// What went wrong with the file. Every variant names the path; none carries file content.
#[derive(Debug)]
pub enum StoreError {
    Missing {
        path: PathBuf,
    },
    Unreadable {
        path: PathBuf,
        source: io::Error,
    },
    Malformed {
        path: PathBuf,
        reason: ParseError,
    },
    Lock {
        path: PathBuf,
        source: io::Error,
    },
    LockTimeout {
        path: PathBuf,
        waited: Duration,
    },
    Write {
        path: PathBuf,
        stage: &'static str,
        source: io::Error,
    },
}

impl StoreError {
    /// A parse failure that may only mean a writer is half-way through the file.
    pub fn may_be_mid_write(&self) -> bool {
        matches!(
            self,
            StoreError::Malformed {
                reason: ParseError::Syntax(_),
                ..
            }
        )
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Missing { path } => write!(
                f,
                "no credentials file at {}: sign in with Claude Code first, \
                 or point --credentials or CLAUDE_CONFIG_DIR at the file",
                path.display()
            ),
            StoreError::Unreadable { path, source } => {
                write!(f, "cannot read {}: {source}", path.display())
            }
            StoreError::Malformed { path, reason } => write!(
                f,
                "{} is not a usable credentials file: {reason}; it was left untouched",
                path.display()
            ),
            StoreError::Lock { path, source } => {
                write!(f, "cannot take the lock {}: {source}", path.display())
            }
            StoreError::LockTimeout { path, waited } => write!(
                f,
                "another process held the lock {} for {}s; try again later",
                path.display(),
                waited.as_secs()
            ),
            StoreError::Write {
                path,
                stage,
                source,
            } => write!(f, "cannot write {} ({stage}): {source}", path.display()),
        }
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StoreError::Unreadable { source, .. }
            | StoreError::Lock { source, .. }
            | StoreError::Write { source, .. } => Some(source),
            StoreError::Malformed { reason, .. } => Some(reason),
            _ => None,
        }
    }
}

/// One read of the file.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub doc: Credentials,
    /// A hash of the exact bytes, so the daemon can tell its own write from someone else's.
    pub fingerprint: u64,
    /// The permission bits the file had.
    pub mode: u32,
}

/// A hash of file bytes. Not cryptographic: it only tells "the bytes we wrote" from others.
pub fn fingerprint(bytes: &[u8]) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

/// The credentials file, as given (`path`) and as resolved through symlinks (`target()`).
#[derive(Clone, Debug)]
pub struct Store {
    path: PathBuf,
}

impl Store {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Store { path: path.into() }
    }

    /// The path as given (possibly a symlink).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file that holds the data, resolved anew on every call so a re-pointed link is followed.
    pub fn target(&self) -> PathBuf {
        resolve_symlinks(&self.path).unwrap_or_else(|_| self.path.clone())
    }

    /// `<resolved target>.lock`: the sibling lock file, never renamed and never removed, so every
    /// process that opens it locks the same inode.
    pub fn lock_path(&self) -> PathBuf {
        let mut name = self.target().into_os_string();
        name.push(".lock");
        PathBuf::from(name)
    }

    pub fn read(&self) -> Result<Snapshot, StoreError> {
        let target = self.target();
        let bytes = fs::read(&target).map_err(|source| match source.kind() {
            io::ErrorKind::NotFound => StoreError::Missing {
                path: self.path.clone(),
            },
            _ => StoreError::Unreadable {
                path: self.path.clone(),
                source,
            },
        })?;
        let mode = fs::metadata(&target)
            .map(|m| m.permissions().mode() & 0o7777)
            .unwrap_or(FILE_MODE);
        let doc = Credentials::parse(&bytes).map_err(|reason| StoreError::Malformed {
            path: self.path.clone(),
            reason,
        })?;
        Ok(Snapshot {
            doc,
            fingerprint: fingerprint(&bytes),
            mode,
        })
    }

    /// Copies the store's bytes, unchanged, to `<target>.malformed-<UTC yyyymmddThhmmssZ>`
    /// (0600, synced), before new tokens in hand are written over a file that does not parse:
    /// nothing the file held is lost. Returns the copy's path.
    pub fn copy_aside(&self) -> Result<PathBuf, StoreError> {
        let target = self.target();
        let bytes =
            fs::read(&target).map_err(write_error("reading the malformed file", &target))?;
        let stamp = utc_stamp(std::time::SystemTime::now());
        let mut n = 1;
        loop {
            let mut name = target.clone().into_os_string();
            name.push(format!(".malformed-{stamp}"));
            if n > 1 {
                name.push(format!("-{n}"));
            }
            let copy = PathBuf::from(name);
            let created = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(FILE_MODE)
                .open(&copy);
            let mut file = match created {
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && n < 100 => {
                    n += 1;
                    continue;
                }
                other => other.map_err(write_error(
                    "creating the copy of the malformed file",
                    &copy,
                ))?,
            };
            let err = write_error("writing the copy of the malformed file", &copy);
            file.set_permissions(fs::Permissions::from_mode(FILE_MODE))
                .and_then(|()| file.write_all(&bytes))
                .and_then(|()| file.sync_all())
                .map_err(err)?;
            tracing::warn!(
                "{} did not parse; its bytes were copied unchanged to {} before the new tokens \
                 were written",
                self.path.display(),
                copy.display()
            );
            return Ok(copy);
        }
    }

    /// Creates the target's directory (0700, and any missing parents) when it does not exist:
    /// a first login on a machine where Claude Code never ran.
    pub fn ensure_dir(&self) -> Result<(), StoreError> {
        let target = self.target();
        let Some(dir) = target.parent().filter(|d| !d.as_os_str().is_empty()) else {
            return Ok(());
        };
        if dir.is_dir() {
            return Ok(());
        }
        fs::DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE)
            .create(dir)
            .map_err(|source| StoreError::Write {
                path: dir.to_path_buf(),
                stage: "creating the directory",
                source,
            })
    }

    /// Deletes the file (the target; a symlink pointing at it stays, so the next login writes
    /// through it again). Call with the lock held.
    pub fn remove(&self) -> Result<(), StoreError> {
        let target = self.target();
        fs::remove_file(&target).map_err(|source| StoreError::Write {
            path: target.clone(),
            stage: "removing the file",
            source,
        })?;
        if let Some(dir) = target.parent().filter(|d| !d.as_os_str().is_empty()) {
            let _ = File::open(dir).and_then(|d| d.sync_all());
        }
        Ok(())
    }

    /// Takes the exclusive lock without waiting; `None` when another process holds it.
    pub fn try_lock(&self) -> Result<Option<FileLock>, StoreError> {
        let path = self.lock_path();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(FILE_MODE)
            .open(&path)
            .map_err(|source| match source.kind() {
                // No directory, so certainly no credentials file; and creating the directory
                // is a login's job, not a lock's.
                io::ErrorKind::NotFound => StoreError::Missing {
                    path: self.path.clone(),
                },
                _ => StoreError::Lock {
                    path: path.clone(),
                    source,
                },
            })?;
        match file.try_lock() {
            Ok(()) => Ok(Some(FileLock { file })),
            Err(fs::TryLockError::WouldBlock) => Ok(None),
            Err(fs::TryLockError::Error(source)) => Err(StoreError::Lock { path, source }),
        }
    }

    /// Takes the exclusive lock, polling until `deadline` (`None`: wait as long as it takes).
    /// Polling rather than a blocking `flock` keeps the wait cancellable: a signal can end the
    /// daemon while it waits, and no thread is left stuck in the kernel.
    pub async fn lock(&self, deadline: Option<Instant>) -> Result<FileLock, StoreError> {
        let started = Instant::now();
        let mut pause = Duration::from_millis(5);
        loop {
            if let Some(lock) = self.try_lock()? {
                return Ok(lock);
            }
            if deadline.is_some_and(|d| Instant::now() + pause > d) {
                return Err(StoreError::LockTimeout {
                    path: self.lock_path(),
                    waited: started.elapsed(),
                });
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(100));
        }
    }

    /// The target, its directory, and the name prefix of this program's temp files there.
    fn temp_location(&self) -> (PathBuf, PathBuf, OsString) {
        let target = self.target();
        let dir = target
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_path_buf();
        let file_name = target
            .file_name()
            .map(|n| n.to_os_string())
            .unwrap_or_else(|| FILE_NAME.into());
        let mut prefix = OsString::from(".");
        prefix.push(&file_name);
        prefix.push(".tmp.");
        (target, dir, prefix)
    }

    /// Removes temp files a crashed writer left. Taking the held lock as an argument is the
    /// proof that no live writer's temp file can be among them.
    pub fn remove_stale_temps(&self, _held: &FileLock) {
        let (_, dir, prefix) = self.temp_location();
        remove_stale_temps(&dir, &prefix);
    }

    /// Creates the temp file for the next version of the file, in the target's directory, mode
    /// 0600, with room reserved. Called *before* the request that spends a refresh token: if
    /// this fails, nothing is sent.
    pub fn begin_write(&self) -> Result<PendingWrite, StoreError> {
        let (target, dir, prefix) = self.temp_location();
        remove_stale_temps(&dir, &prefix);
        let mut temp_name = prefix.clone();
        temp_name.push(format!("{}.{:08x}", std::process::id(), random_u32()));
        let temp = dir.join(temp_name);
        let err = |stage: &'static str| write_error(stage, &temp);
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(FILE_MODE)
            .open(&temp)
            .map_err(err("creating the temp file"))?;
        let pending = PendingWrite {
            file,
            temp: temp.clone(),
            target,
            dir,
            done: false,
        };
        // The umask may have taken bits away; the contract says 0600 exactly.
        pending
            .file
            .set_permissions(fs::Permissions::from_mode(FILE_MODE))
            .map_err(err("setting the temp file's mode"))?;
        pending
            .keep_owner()
            .map_err(err("keeping the file's owner"))?;
        reserve_space(&pending.file, RESERVE_BYTES).map_err(err("reserving disk space"))?;
        Ok(pending)
    }
}

/// Maps an I/O error at `stage` of writing `path` to a [`StoreError::Write`].
fn write_error(stage: &'static str, path: &Path) -> impl FnOnce(io::Error) -> StoreError {
    let path = path.to_path_buf();
    move |source| StoreError::Write {
        path,
        stage,
        source,
    }
}

/// `20261202T041233Z`: a UTC time for file names (civil date from days, Howard Hinnant's
/// algorithm, so no time-zone crate is needed in the library).
pub fn utc_stamp(t: std::time::SystemTime) -> String {
    let secs = t
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}{month:02}{day:02}T{:02}{:02}{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// Removes temp files a crashed writer left behind. Called with the lock held: every writer
/// holds it for as long as its temp file exists, so any temp file found now is an orphan.
fn remove_stale_temps(dir: &Path, prefix: &std::ffi::OsStr) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let prefix = prefix.as_encoded_bytes();
    for entry in entries.flatten() {
        let name = entry.file_name();
        if name.as_encoded_bytes().starts_with(prefix) {
            tracing::info!(
                "removing {}, left by a writer that did not finish",
                entry.path().display()
            );
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// EBUSY (Linux) or EXDEV: the target is a mount point, which rename cannot replace.
fn is_mount_point(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EBUSY) | Some(libc::EXDEV))
}

/// `rename`, through the test seam that can make it fail like a bind-mounted target.
fn rename(from: &Path, to: &Path) -> io::Result<()> {
    if let Some(e) = crate::seams::rename_error() {
        return Err(e);
    }
    fs::rename(from, to)
}

/// Room reserved for the new file before the request: credentials files are a few KiB, and a
/// full disk must be found out before the refresh token is spent, not after.
const RESERVE_BYTES: i64 = 64 * 1024;

#[cfg(target_os = "linux")]
fn reserve_space(file: &File, len: i64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // KEEP_SIZE: reserve blocks without changing the file's length.
    // SAFETY: a valid open descriptor and plain integers.
    let rc = unsafe { libc::fallocate(file.as_raw_fd(), libc::FALLOC_FL_KEEP_SIZE, 0, len) };
    if rc == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        // Filesystems without fallocate (tmpfs on old kernels, some network filesystems):
        // nothing to reserve with, and nothing wrong.
        Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) | Some(libc::EINVAL) => Ok(()),
        _ => Err(err),
    }
}

#[cfg(not(target_os = "linux"))]
fn reserve_space(_file: &File, _len: i64) -> io::Result<()> {
    Ok(())
}

fn random_u32() -> u32 {
    let mut b = [0u8; 4];
    // A clash only makes create_new fail; the pid already separates processes.
    let _ = getrandom::fill(&mut b);
    u32::from_ne_bytes(b)
}

/// Held while the exclusive lock is held; dropping it closes the file, which releases the lock.
#[derive(Debug)]
pub struct FileLock {
    file: File,
}

impl FileLock {
    /// The lock file's text. Whoever holds the lock may read it: the previous holder is gone.
    /// It holds two things: the [`GrantRecord`] of the last grant this program obtained (one
    /// line), and the ledger of Claude Code lock directories held (see `claude_locks::ledger`):
    /// a ledger the last holder did not clear means it died holding them.
    fn read_raw(&self) -> String {
        use std::io::{Read, Seek};
        let mut text = String::new();
        let mut f = &self.file;
        let _ = f.seek(io::SeekFrom::Start(0));
        let _ = f.take(64 * 1024).read_to_string(&mut text);
        text
    }

    /// Replaces the text. Not synced: it only has to outlive the process, not the machine (a
    /// reboot ends every holder anyway, and a lost grant record only means a lead-based
    /// schedule until the next refresh).
    fn write_raw(&self, text: &str) {
        use std::io::{Seek, Write};
        let mut f = &self.file;
        // Write first, cut the tail after: a process killed in between leaves the new text
        // (plus, at worst, a stale tail that names directories whose identity will not match),
        // never an empty one.
        let _ = f.seek(io::SeekFrom::Start(0));
        let _ = f.write_all(text.as_bytes());
        let _ = f.set_len(text.len() as u64);
    }

    /// Splits the text into the grant record and the ledger lines.
    fn parts(&self) -> (Option<GrantRecord>, String) {
        let mut record = None;
        let mut ledger = String::new();
        for line in self.read_raw().lines() {
            match GrantRecord::from_line(line) {
                Some(r) => record = Some(r),
                None if !line.is_empty() => {
                    ledger.push_str(line);
                    ledger.push('\n');
                }
                None => {}
            }
        }
        (record, ledger)
    }

    fn write_parts(&self, record: Option<&GrantRecord>, ledger: &str) {
        let mut text = record.map(GrantRecord::to_line).unwrap_or_default();
        text.push_str(ledger);
        self.write_raw(&text);
    }

    /// The ledger of Claude Code lock directories the last holder held.
    pub fn ledger(&self) -> String {
        self.parts().1
    }

    /// Replaces the ledger; the grant record stays.
    pub fn set_ledger(&self, ledger: &str) {
        let (record, _) = self.parts();
        self.write_parts(record.as_ref(), ledger);
    }

    /// Adds to the ledger.
    pub fn append_ledger(&self, more: &str) {
        let (record, ledger) = self.parts();
        self.write_parts(record.as_ref(), &(ledger + more));
    }

    /// The record of the last grant this program obtained for this store.
    pub fn grant_record(&self) -> Option<GrantRecord> {
        self.parts().0
    }

    /// Replaces the grant record; the ledger stays.
    pub fn set_grant_record(&self, record: &GrantRecord) {
        let (_, ledger) = self.parts();
        self.write_parts(Some(record), &ledger);
    }
}

/// A temp file waiting to become the credentials file. Dropped without [`commit`], it removes
/// itself, so no failure path leaves a stray file.
///
/// [`commit`]: PendingWrite::commit
#[derive(Debug)]
pub struct PendingWrite {
    file: File,
    temp: PathBuf,
    target: PathBuf,
    dir: PathBuf,
    done: bool,
}

impl PendingWrite {
    /// The temp file's path (tests and fault injection look for it).
    pub fn temp_path(&self) -> &Path {
        &self.temp
    }

    /// Writes `doc`, fsyncs it, renames it over the target and fsyncs the directory, so after
    /// a crash the file is either the old version or the new one, whole. Returns the
    /// fingerprint of the bytes written.
    pub fn commit(mut self, doc: &Credentials) -> Result<u64, StoreError> {
        let bytes = doc.to_bytes();
        let err = write_error;
        self.file
            .write_all(&bytes)
            .map_err(err("writing the temp file", &self.temp))?;
        self.file
            .sync_all()
            .map_err(err("syncing the temp file", &self.temp))?;
        crate::seams::crash_point("temp-written");
        match rename(&self.temp, &self.target) {
            Ok(()) => {
                self.done = true;
                crate::seams::crash_point("renamed");
            }
            Err(e) if is_mount_point(&e) => {
                self.write_in_place(&bytes)?;
                // The temp file is removed on drop; the target already holds its bytes.
                return Ok(fingerprint(&bytes));
            }
            Err(e) => return Err(err("renaming over the credentials file", &self.target)(e)),
        }
        // The rename is durable only once the directory entry is on disk.
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(err("syncing the directory", &self.dir))?;
        Ok(fingerprint(&bytes))
    }

    /// The fallback for a file that cannot be replaced by rename because it is itself a mount
    /// point (a container that bind-mounts only `.credentials.json`). The old content goes to a
    /// 0600 `.bak` sibling first, kept until the new content is written and synced, so a crash
    /// half-way leaves a whole copy beside the file. Every lock is still held by the caller.
    fn write_in_place(&self, bytes: &[u8]) -> Result<(), StoreError> {
        static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
        if !WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
            tracing::warn!(
                "{} cannot be replaced by rename (a bind-mounted file?); writing it in place, \
                 with a backup beside it until the write is complete",
                self.target.display()
            );
        }
        let err = write_error;
        let mut backup_name = self
            .target
            .file_name()
            .map(|n| n.to_os_string())
            .unwrap_or_else(|| FILE_NAME.into());
        backup_name.push(".bak");
        let backup = self.dir.join(backup_name);
        let old =
            fs::read(&self.target).map_err(err("reading the file to back it up", &self.target))?;
        let mut b = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(FILE_MODE)
            .open(&backup)
            .map_err(err("creating the backup", &backup))?;
        b.set_permissions(fs::Permissions::from_mode(FILE_MODE))
            .and_then(|()| b.write_all(&old))
            .and_then(|()| b.sync_all())
            .map_err(err("writing the backup", &backup))?;
        let mut f = OpenOptions::new()
            .write(true)
            .open(&self.target)
            .map_err(err("opening the file to write in place", &self.target))?;
        // A renamed file gets the temp file's 0600; one written in place keeps its mode unless
        // it is set here, before the new tokens go in. If it cannot be (a file owned by someone
        // else), saving the tokens still comes first: they are no more exposed than the old ones.
        if let Err(e) = f.set_permissions(fs::Permissions::from_mode(FILE_MODE)) {
            tracing::warn!(
                "cannot make {} mode 0600 ({e}); run `chmod 600 {}`",
                self.target.display(),
                self.target.display()
            );
        }
        f.write_all(bytes)
            .and_then(|()| f.set_len(bytes.len() as u64))
            .and_then(|()| f.sync_all())
            .map_err(err("writing the file in place", &self.target))?;
        let _ = fs::remove_file(&backup);
        Ok(())
    }

    /// When root rewrites a user's file (sudo, a system service), the new file keeps the old
    /// file's owner, or the user could no longer read their own login.
    fn keep_owner(&self) -> io::Result<()> {
        let Ok(meta) = fs::metadata(&self.target) else {
            return Ok(());
        };
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Ok(());
        }
        std::os::unix::fs::fchown(&self.file, Some(meta.uid()), Some(meta.gid()))
    }
}

impl Drop for PendingWrite {
    fn drop(&mut self) {
        if !self.done {
            let _ = fs::remove_file(&self.temp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "tokend-store-{tag}-{}-{:08x}",
            std::process::id(),
            random_u32()
        ));
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn locate_follows_the_contract_order() {
        let os = |s: &str| Some(OsString::from(s));
        type Row<'a> = (
            Option<&'a str>,
            Option<OsString>,
            Option<OsString>,
            Result<(&'a str, Origin), NoHomeError>,
        );
        let cases: &[Row] = &[
            (
                Some("/x/c.json"),
                os("/cfg"),
                os("/home/u"),
                Ok(("/x/c.json", Origin::Explicit)),
            ),
            (
                None,
                os("/cfg"),
                os("/home/u"),
                Ok(("/cfg/.credentials.json", Origin::ConfigDir)),
            ),
            (
                None,
                os(""),
                os("/home/u"),
                Ok(("/home/u/.claude/.credentials.json", Origin::Home)),
            ),
            (
                Some(""),
                None,
                os("/home/u"),
                Ok(("/home/u/.claude/.credentials.json", Origin::Home)),
            ),
            (None, None, None, Err(NoHomeError)),
            (None, None, os(""), Err(NoHomeError)),
        ];
        for (explicit, cfg, home, want) in cases {
            let got = locate(explicit.map(Path::new), cfg.clone(), home.clone());
            let want = want
                .as_ref()
                .map(|(p, o)| (PathBuf::from(p), *o))
                .map_err(|_| NoHomeError);
            assert_eq!(got, want, "explicit={explicit:?} cfg={cfg:?} home={home:?}");
        }
    }

    #[test]
    fn paths_are_made_absolute_lexically_like_node_path_resolve() {
        let cases = [
            ("/home/u/w", ".", "/home/u/w"),
            ("/home/u/w", "..", "/home/u"),
            (
                "/home/u/w",
                "./.credentials.json",
                "/home/u/w/.credentials.json",
            ),
            ("/home/u/w", "a/../b/./c.json", "/home/u/w/b/c.json"),
            ("/home/u/w", "../../../../x", "/x"),
            ("/home/u/w", "/abs/./p/../q", "/abs/q"),
            ("/home/u/w", "a//b/", "/home/u/w/a/b"),
            ("/", "..", "/"),
        ];
        for (cwd, path, want) in cases {
            assert_eq!(
                absolute_from(Path::new(cwd), Path::new(path)),
                PathBuf::from(want),
                "{cwd} + {path}"
            );
        }
        // The lock names follow: `.` in /home/u/.claude locks /home/u/.claude.lock.
        let (path, _) = locate(None, Some(".".into()), None).unwrap();
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(path, cwd.join(FILE_NAME));
        assert!(
            locate(Some(Path::new("rel/x.json")), None, None)
                .unwrap()
                .0
                .is_absolute()
        );
    }

    #[test]
    fn resolves_relative_and_chained_symlinks() {
        let dir = temp_dir("links");
        fs::create_dir(dir.join("real")).unwrap();
        fs::write(dir.join("real/creds.json"), "{}").unwrap();
        std::os::unix::fs::symlink("real/creds.json", dir.join("one")).unwrap();
        std::os::unix::fs::symlink(dir.join("one"), dir.join("two")).unwrap();
        assert_eq!(
            resolve_symlinks(&dir.join("two")).unwrap(),
            dir.join("real/creds.json")
        );
        // A dangling link resolves to where the file would be.
        std::os::unix::fs::symlink("nowhere.json", dir.join("dangling")).unwrap();
        assert_eq!(
            resolve_symlinks(&dir.join("dangling")).unwrap(),
            dir.join("nowhere.json")
        );
        std::os::unix::fs::symlink("loop", dir.join("loop")).unwrap();
        assert!(resolve_symlinks(&dir.join("loop")).is_err());
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn dropped_pending_write_leaves_nothing() {
        let dir = temp_dir("drop");
        let store = Store::new(dir.join(FILE_NAME));
        let pending = store.begin_write().unwrap();
        let temp = pending.temp_path().to_path_buf();
        assert!(temp.exists());
        assert_eq!(
            fs::metadata(&temp).unwrap().permissions().mode() & 0o777,
            0o600
        );
        drop(pending);
        assert!(!temp.exists());
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 0);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn commit_replaces_the_target_and_keeps_the_link() {
        let dir = temp_dir("commit");
        fs::write(dir.join("real.json"), r#"{"keep": true}"#).unwrap();
        std::os::unix::fs::symlink("real.json", dir.join(FILE_NAME)).unwrap();
        let store = Store::new(dir.join(FILE_NAME));
        let mut doc = store.read().unwrap().doc;
        doc.apply(&crate::credentials::TokenUpdate {
            access_token: crate::secret::Secret::new("a"),
            refresh_token: None,
            expires_at: 5,
            refresh_token_expires_at: None,
            scopes: None,
        });
        store.begin_write().unwrap().commit(&doc).unwrap();
        assert!(
            fs::symlink_metadata(dir.join(FILE_NAME))
                .unwrap()
                .file_type()
                .is_symlink()
        );
        let text = fs::read_to_string(dir.join("real.json")).unwrap();
        assert!(text.contains("\"keep\": true") && text.contains("\"expiresAt\": 5"));
        let mode = fs::metadata(dir.join("real.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let names: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 2, "no stray files: {names:?}");
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn in_place_fallback_writes_whole_and_leaves_no_backup() {
        let dir = temp_dir("inplace");
        let target = dir.join(FILE_NAME);
        fs::write(
            &target,
            r#"{"keep": [1, 2, 3], "long": "a much longer document than the new one"}"#,
        )
        .unwrap();
        fs::set_permissions(&target, fs::Permissions::from_mode(0o644)).unwrap();
        let store = Store::new(&target);
        let pending = store.begin_write().unwrap();
        let doc = Credentials::parse(br#"{"keep": 1}"#).unwrap();
        pending.write_in_place(&doc.to_bytes()).unwrap();
        drop(pending);
        assert_eq!(
            fs::read(&target).unwrap(),
            doc.to_bytes(),
            "no tail of the old content"
        );
        assert_eq!(
            fs::metadata(&target).unwrap().permissions().mode() & 0o777,
            FILE_MODE,
            "a file written in place is 0600 too"
        );
        let names: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [FILE_NAME], "no backup or temp file left");
        assert!(is_mount_point(&io::Error::from_raw_os_error(libc::EBUSY)));
        assert!(is_mount_point(&io::Error::from_raw_os_error(libc::EXDEV)));
        assert!(!is_mount_point(&io::Error::from_raw_os_error(libc::EACCES)));
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn utc_stamps_by_table() {
        let at = |secs: u64| utc_stamp(std::time::UNIX_EPOCH + Duration::from_secs(secs));
        assert_eq!(at(0), "19700101T000000Z");
        assert_eq!(at(951_782_400), "20000229T000000Z");
        assert_eq!(at(1_796_184_753), "20261202T041233Z");
        assert_eq!(at(4_102_444_799), "20991231T235959Z");
    }

    #[test]
    fn copy_aside_keeps_the_bytes_and_the_grant_record_survives_the_ledger() {
        let dir = temp_dir("aside");
        let store = Store::new(dir.join(FILE_NAME));
        fs::write(dir.join(FILE_NAME), b"{not json\x00").unwrap();
        let first = store.copy_aside().unwrap();
        let second = store.copy_aside().unwrap();
        assert_ne!(
            first, second,
            "a second copy in the same second gets its own name"
        );
        assert_eq!(fs::read(&first).unwrap(), b"{not json\x00");
        assert_eq!(
            fs::metadata(&first).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let name = first.file_name().unwrap().to_str().unwrap().to_owned();
        assert!(name.starts_with(".credentials.json.malformed-2"), "{name}");

        let lock = store.try_lock().unwrap().unwrap();
        let record = GrantRecord {
            obtained_at: 5,
            obtained_boot: 6,
            lifetime_ms: 600_000,
            token: "0123456789abcdef".into(),
        };
        lock.append_ledger("/x/.oauth_refresh.lock\t1\t2\t3\n");
        lock.set_grant_record(&record);
        lock.set_ledger("");
        assert_eq!(lock.grant_record(), Some(record.clone()));
        lock.append_ledger("/y\t1\t2\t-\n");
        assert_eq!(lock.ledger(), "/y\t1\t2\t-\n");
        assert_eq!(lock.grant_record(), Some(record));
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn lock_is_exclusive_across_handles() {
        let dir = temp_dir("lock");
        let store = Store::new(dir.join(FILE_NAME));
        let held = store.try_lock().unwrap().expect("free lock");
        assert!(
            store.try_lock().unwrap().is_none(),
            "second taker must wait"
        );
        drop(held);
        assert!(store.try_lock().unwrap().is_some());
        fs::remove_dir_all(dir).unwrap();
    }
}
