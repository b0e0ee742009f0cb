//! The file store: Claude Code's `.credentials.json`. It owns reading it, the atomic write
//! (a temp file beside the target, created before the request, synced and renamed over it; a
//! bind-mounted file is written in place with a backup), copying malformed bytes aside, and
//! tidying temp files a crashed writer left. Nothing here opens the target for truncation
//! except that in-place fallback.

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::{DIR_MODE, FILE_MODE, FILE_NAME, Place, StoreError};

/// The file's bytes and permission bits.
pub(super) fn read(path: &Path, target: &Path) -> Result<(Vec<u8>, u32), StoreError> {
    let place = || Place::File(path.to_path_buf());
    let unreadable = |source: io::Error| match source.kind() {
        io::ErrorKind::NotFound => StoreError::Missing { place: place() },
        _ => StoreError::Unreadable {
            place: place(),
            source,
        },
    };
    // Opened without blocking and checked to be a regular file before it is read: a FIFO (or
    // a device) put where the credentials belong would otherwise block the open, and with it
    // the daemon's loop or a command that a signal must be able to stop.
    let mut file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(target)
        .map_err(unreadable)?;
    if !file.metadata().map_err(unreadable)?.is_file() {
        return Err(unreadable(io::Error::other(
            "not a regular file (a credentials file must be one)",
        )));
    }
    let mut bytes = Vec::new();
    io::Read::read_to_end(&mut file, &mut bytes).map_err(unreadable)?;
    let mode = fs::metadata(target)
        .map(|m| m.permissions().mode() & 0o7777)
        .unwrap_or(FILE_MODE);
    Ok((bytes, mode))
}

/// Copies `bytes`, unchanged, to `<base>.malformed-<UTC yyyymmddThhmmssZ>` (0600, synced; a
/// `-N` suffix when that name is taken). Returns the copy's path.
pub(super) fn copy_aside(base: &Path, bytes: &[u8]) -> Result<PathBuf, StoreError> {
    let stamp = utc_stamp(std::time::SystemTime::now());
    let mut n = 1;
    loop {
        let mut name = base.as_os_str().to_os_string();
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
                "creating the copy of the malformed login",
                &copy,
            ))?,
        };
        let err = write_error("writing the copy of the malformed login", &copy);
        file.set_permissions(fs::Permissions::from_mode(FILE_MODE))
            .and_then(|()| file.write_all(bytes))
            .and_then(|()| file.sync_all())
            .map_err(err)?;
        return Ok(copy);
    }
}

/// Creates `dir` (0700, and any missing parents) when it does not exist: a first login on a
/// machine where Claude Code never ran.
pub(super) fn ensure_dir(dir: &Path) -> Result<(), StoreError> {
    if dir.as_os_str().is_empty() || dir.is_dir() {
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

/// Deletes the target (a symlink pointing at it stays, so the next login writes through it
/// again), and syncs the directory.
pub(super) fn remove(target: &Path) -> Result<(), StoreError> {
    fs::remove_file(target).map_err(|source| StoreError::Write {
        path: target.to_path_buf(),
        stage: "removing the file",
        source,
    })?;
    if let Some(dir) = target.parent().filter(|d| !d.as_os_str().is_empty()) {
        let _ = File::open(dir).and_then(|d| d.sync_all());
    }
    Ok(())
}

/// The target's directory, and the name prefix of this program's temp files there.
pub(super) fn temp_location(target: &Path) -> (PathBuf, OsString) {
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
    (dir, prefix)
}

/// Creates the temp file for the next version of `target`, in its directory, mode 0600, with
/// room reserved. Called *before* the request that spends a refresh token: if this fails,
/// nothing is sent.
pub(super) fn begin_write(target: &Path) -> Result<FileWrite, StoreError> {
    let (dir, prefix) = temp_location(target);
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
    let pending = FileWrite {
        file,
        temp: temp.clone(),
        target: target.to_path_buf(),
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

/// Maps an I/O error at `stage` of writing `path` to a [`StoreError::Write`].
pub(super) fn write_error(
    stage: &'static str,
    path: &Path,
) -> impl FnOnce(io::Error) -> StoreError {
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
pub(super) fn remove_stale_temps(dir: &Path, prefix: &std::ffi::OsStr) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let prefix = prefix.as_encoded_bytes();
    for entry in entries.flatten() {
        let name = entry.file_name();
        if name.as_encoded_bytes().starts_with(prefix) {
            tracing::info!(
                "removing {}, the temp file of a write that did not finish (nothing reads it)",
                entry.path().display()
            );
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// EBUSY (Linux) or EXDEV: the target is a mount point, which rename cannot replace.
pub(super) fn is_mount_point(e: &io::Error) -> bool {
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

pub(super) fn random_u32() -> u32 {
    let mut b = [0u8; 4];
    // A clash only makes create_new fail; the pid already separates processes.
    let _ = getrandom::fill(&mut b);
    u32::from_ne_bytes(b)
}

/// A temp file waiting to become the credentials file. Dropped without [`commit`], it removes
/// itself, so no failure path leaves a stray file.
///
/// [`commit`]: FileWrite::commit
#[derive(Debug)]
pub struct FileWrite {
    file: File,
    temp: PathBuf,
    target: PathBuf,
    dir: PathBuf,
    done: bool,
}

impl FileWrite {
    /// The temp file's path (tests and fault injection look for it).
    pub fn temp_path(&self) -> &Path {
        &self.temp
    }

    /// Writes `doc`, fsyncs it, renames it over the target and fsyncs the directory, so after
    /// a crash the file is either the old version or the new one, whole.
    pub fn commit(mut self, bytes: &[u8]) -> Result<(), StoreError> {
        let err = write_error;
        self.file
            .write_all(bytes)
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
                self.write_in_place(bytes)?;
                // The temp file is removed on drop; the target already holds its bytes.
                return Ok(());
            }
            Err(e) => return Err(err("renaming over the credentials file", &self.target)(e)),
        }
        // The rename is durable only once the directory entry is on disk.
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(err("syncing the directory", &self.dir))?;
        Ok(())
    }

    /// The fallback for a file that cannot be replaced by rename because it is itself a mount
    /// point (a container that bind-mounts only `.credentials.json`). The old content goes to a
    /// 0600 `.bak` sibling first, kept until the new content is written and synced, so a crash
    /// half-way leaves a whole copy beside the file. Every lock is still held by the caller.
    pub(super) fn write_in_place(&self, bytes: &[u8]) -> Result<(), StoreError> {
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

impl Drop for FileWrite {
    fn drop(&mut self) {
        if !self.done {
            let _ = fs::remove_file(&self.temp);
        }
    }
}
