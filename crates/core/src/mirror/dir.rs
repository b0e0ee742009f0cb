//! A mirror directory as an open descriptor, and every file operation this program makes in it,
//! relative to that descriptor and never following a link. The directory belongs to its
//! consumer (a container can write in it), so a name there is never trusted: the directory is
//! opened `O_DIRECTORY|O_NOFOLLOW`, the mirror file is looked at with `fstatat(...,
//! AT_SYMLINK_NOFOLLOW)` before it is opened (a FIFO or a device is never even opened), opened
//! `O_NOFOLLOW|O_NONBLOCK` and checked again with `fstat`, and the new version is created
//! `O_EXCL|O_NOFOLLOW` and renamed with `renameat`, which replaces a link rather than its target.

use std::ffi::{CStr, CString};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::SystemTime;

/// The most of a mirror file ever read: a login document is a few KiB; anything larger is not
/// one of ours and is replaced, not read.
pub const MAX_READ: u64 = 1024 * 1024;

/// The mirror file's name in its directory (Claude Code's, with `CLAUDE_CONFIG_DIR` = the
/// directory).
pub const FILE: &CStr = c".credentials.json";
/// The one temp file name this program uses there: fixed, so a write cut short by a crash
/// leaves at most one, which the next write removes.
pub const TEMP: &CStr = c".credentials.json.tokend-tmp";

/// What the mirror file is now, as far as this program may look at it.
#[derive(Debug)]
pub enum Current {
    Absent,
    /// A regular file with one link, at most [`MAX_READ`] bytes: its bytes.
    Bytes(Vec<u8>),
    /// Something that is not a file of ours (a symlink, a FIFO, a directory, a hard-linked or
    /// oversized file): never read; replaced by a new regular file. The text says what.
    Foreign(&'static str),
}

/// An open mirror directory.
pub struct Dir {
    fd: OwnedFd,
}

fn cstr(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL byte in the path"))
}

fn check(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Whether this process runs as root (and so must hand what it creates to the directory's
/// owner).
fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

impl Dir {
    /// Opens `path` as a directory without following a symlink at its last component: a
    /// directory the consumer replaced by a link is refused (`ELOOP`/`ENOTDIR`), not followed.
    pub fn open(path: &Path) -> io::Result<Dir> {
        let c = cstr(path)?;
        // SAFETY: a valid NUL-terminated path and plain flags.
        let fd = check(unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            )
        })?;
        // SAFETY: `fd` was just returned by open and is owned by nobody else.
        Ok(Dir {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// Creates `path` (one level: its parent must exist), 0700 whatever the umask and, when run
    /// as root, owned like its parent (a container user's directory stays theirs). A directory
    /// someone else created meanwhile is fine.
    pub fn create(path: &Path) -> io::Result<Dir> {
        let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
        let parent_meta = std::fs::metadata(parent.unwrap_or(Path::new(".")))?;
        let c = cstr(path)?;
        // SAFETY: a valid NUL-terminated path.
        match check(unsafe { libc::mkdir(c.as_ptr(), 0o700) }) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Dir::open(path),
            Err(e) => return Err(e),
        }
        let dir = Dir::open(path)?;
        // SAFETY: a valid descriptor and plain integers.
        check(unsafe { libc::fchmod(dir.fd.as_raw_fd(), 0o700) })?;
        if is_root() {
            use std::os::unix::fs::MetadataExt;
            // SAFETY: as above.
            check(unsafe {
                libc::fchown(dir.fd.as_raw_fd(), parent_meta.uid(), parent_meta.gid())
            })?;
        }
        Ok(dir)
    }

    /// `fstatat` of `name` in this directory, not following a link.
    fn stat_at(&self, name: &CStr) -> io::Result<libc::stat> {
        // SAFETY: zeroed is a valid `stat` to be filled in.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: a valid descriptor, NUL-terminated name and a stat to fill.
        check(unsafe {
            libc::fstatat(
                self.fd.as_raw_fd(),
                name.as_ptr(),
                &mut st,
                libc::AT_SYMLINK_NOFOLLOW,
            )
        })?;
        Ok(st)
    }

    fn own_stat(&self) -> io::Result<libc::stat> {
        // SAFETY: zeroed is a valid `stat` to be filled in.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: a valid descriptor and a stat to fill.
        check(unsafe { libc::fstat(self.fd.as_raw_fd(), &mut st) })?;
        Ok(st)
    }

    /// What is at `name`, judged without opening anything that is not a regular file with one
    /// link, and read (at most [`MAX_READ`] bytes) only when it is one.
    pub fn look(&self, name: &CStr) -> io::Result<Current> {
        let st = match self.stat_at(name) {
            Ok(st) => st,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Current::Absent),
            Err(e) => return Err(e),
        };
        if let Some(what) = foreign(&st) {
            return Ok(Current::Foreign(what));
        }
        // SAFETY: a valid descriptor and NUL-terminated name; the flags never follow a link
        // and never wait for a writer.
        let fd = match check(unsafe {
            libc::openat(
                self.fd.as_raw_fd(),
                name.as_ptr(),
                libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC,
            )
        }) {
            Ok(fd) => fd,
            // Swapped for a link between the look and the open.
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                return Ok(Current::Foreign("a symlink"));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Current::Absent),
            Err(e) => return Err(e),
        };
        // SAFETY: `fd` was just returned by openat and is owned by nobody else.
        let file = unsafe { File::from_raw_fd(fd) };
        // Checked again on what was opened: the name may have been swapped meanwhile.
        // SAFETY: zeroed is a valid `stat` to be filled in.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: a valid descriptor and a stat to fill.
        check(unsafe { libc::fstat(file.as_raw_fd(), &mut st) })?;
        if let Some(what) = foreign(&st) {
            return Ok(Current::Foreign(what));
        }
        let mut bytes = Vec::new();
        file.take(MAX_READ + 1).read_to_end(&mut bytes)?;
        if bytes.len() as u64 > MAX_READ {
            return Ok(Current::Foreign("larger than 1 MiB"));
        }
        Ok(Current::Bytes(bytes))
    }

    /// The modification time of the mirror file, when it is a regular file (a link or anything
    /// else was not written by this program).
    pub fn modified(&self, name: &CStr) -> Option<SystemTime> {
        let st = self.stat_at(name).ok()?;
        if st.st_mode & libc::S_IFMT != libc::S_IFREG {
            return None;
        }
        let secs = u64::try_from(st.st_mtime).ok()?;
        let nanos = u32::try_from(st.st_mtime_nsec).ok()?;
        Some(SystemTime::UNIX_EPOCH + std::time::Duration::new(secs, nanos))
    }

    /// Replaces `name` with a regular file holding `bytes`: written to [`TEMP`] (0600, owned by
    /// the directory's owner when run as root), synced, renamed over `name` (which replaces a
    /// link, a FIFO or a hard link rather than writing through it) and the directory synced.
    /// A `name` that is a mount point (a bind-mounted file, which rename cannot replace) is
    /// written in place, only when it is a regular file with one link.
    pub fn replace(&self, name: &CStr, bytes: &[u8]) -> io::Result<()> {
        let dfd = self.fd.as_raw_fd();
        // A temp file a crashed write left, or anything a consumer put at that name: unlinkat
        // removes the name itself, never what a link points to.
        // SAFETY: a valid descriptor and NUL-terminated name.
        let _ = unsafe { libc::unlinkat(dfd, TEMP.as_ptr(), 0) };
        // SAFETY: as above; O_EXCL with O_CREAT never opens an existing name, link or not.
        let fd = check(unsafe {
            libc::openat(
                dfd,
                TEMP.as_ptr(),
                libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                0o600 as libc::c_uint,
            )
        })?;
        // SAFETY: `fd` was just returned by openat and is owned by nobody else.
        let mut temp = Temp {
            dir: dfd,
            file: Some(unsafe { File::from_raw_fd(fd) }),
            renamed: false,
        };
        let file = temp.file.as_mut().expect("just set");
        // SAFETY: a valid descriptor and plain integers.
        check(unsafe { libc::fchmod(file.as_raw_fd(), 0o600) })?;
        if is_root() {
            let st = self.own_stat()?;
            // SAFETY: as above.
            check(unsafe { libc::fchown(file.as_raw_fd(), st.st_uid, st.st_gid) })?;
        }
        file.write_all(bytes)?;
        file.sync_all()?;
        let rename = || {
            // SAFETY: a valid descriptor and NUL-terminated names, both relative to it.
            check(unsafe { libc::renameat(dfd, TEMP.as_ptr(), dfd, name.as_ptr()) })
        };
        let mut renamed = rename();
        if let Err(e) = &renamed
            && matches!(e.raw_os_error(), Some(libc::EISDIR) | Some(libc::ENOTEMPTY))
        {
            // A directory at the file's name: an empty one is taken away; one with something
            // in it is the consumer's, and stays (the write fails, and is logged).
            // SAFETY: a valid descriptor and NUL-terminated name.
            if unsafe { libc::unlinkat(dfd, name.as_ptr(), libc::AT_REMOVEDIR) } == 0 {
                renamed = rename();
            }
        }
        match renamed {
            Ok(_) => temp.renamed = true,
            Err(e) if matches!(e.raw_os_error(), Some(libc::EBUSY) | Some(libc::EXDEV)) => {
                self.write_in_place(name, bytes)?;
            }
            Err(e) => return Err(e),
        }
        // SAFETY: a valid descriptor.
        check(unsafe { libc::fsync(dfd) })?;
        Ok(())
    }

    /// The bind-mounted file's fallback: written in place, only when it is a regular file with
    /// one link (checked on the opened descriptor).
    fn write_in_place(&self, name: &CStr, bytes: &[u8]) -> io::Result<()> {
        // SAFETY: a valid descriptor and NUL-terminated name; never follows a link, never waits.
        let fd = check(unsafe {
            libc::openat(
                self.fd.as_raw_fd(),
                name.as_ptr(),
                libc::O_WRONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC,
            )
        })?;
        // SAFETY: `fd` was just returned by openat and is owned by nobody else.
        let mut file = unsafe { File::from_raw_fd(fd) };
        // SAFETY: zeroed is a valid `stat` to be filled in.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: a valid descriptor and a stat to fill.
        check(unsafe { libc::fstat(file.as_raw_fd(), &mut st) })?;
        if let Some(what) = foreign(&st) {
            return Err(io::Error::other(format!(
                "it is a mount point that is {what}, which is not written"
            )));
        }
        // SAFETY: a valid descriptor and plain integers.
        check(unsafe { libc::fchmod(file.as_raw_fd(), 0o600) })?;
        file.write_all(bytes)?;
        file.set_len(bytes.len() as u64)?;
        file.sync_all()
    }
}

/// Removes the temp file unless it became the mirror file.
struct Temp {
    dir: libc::c_int,
    file: Option<File>,
    renamed: bool,
}

impl Drop for Temp {
    fn drop(&mut self) {
        drop(self.file.take());
        if !self.renamed {
            // SAFETY: the directory descriptor outlives this guard (both live in `replace`).
            let _ = unsafe { libc::unlinkat(self.dir, TEMP.as_ptr(), 0) };
        }
    }
}

/// Why a file found in a mirror directory is not one of ours, or `None` when it may be: a
/// regular file with one link, at most [`MAX_READ`] bytes.
fn foreign(st: &libc::stat) -> Option<&'static str> {
    match st.st_mode & libc::S_IFMT {
        libc::S_IFREG if st.st_nlink > 1 => Some("hard-linked to another file"),
        libc::S_IFREG if st.st_size as u64 > MAX_READ => Some("larger than 1 MiB"),
        libc::S_IFREG => None,
        libc::S_IFLNK => Some("a symlink"),
        libc::S_IFIFO => Some("a FIFO"),
        libc::S_IFDIR => Some("a directory"),
        _ => Some("not a regular file"),
    }
}
