//! A mirror directory as an open descriptor, and every file operation this program makes in it,
//! relative to that descriptor and never following a link. The directory belongs to its
//! consumer (a container can write in it), so a name there is never trusted: the directory is
//! opened `O_DIRECTORY|O_NOFOLLOW`, the mirror file is looked at with `fstatat(...,
//! AT_SYMLINK_NOFOLLOW)` before it is opened (a FIFO or a device is never even opened), opened
//! `O_NOFOLLOW|O_NONBLOCK` and checked again with `fstat`, and the new version is created
//! `O_EXCL|O_NOFOLLOW` and renamed with `renameat`, which replaces a link rather than its target.
//! The directory is reached from its parent, whose real path is checked on the opened
//! descriptor against the one fixed at start, so a link the consumer plants above it (when it
//! owns the parent too) is not followed either. Where the system can, the rename is a
//! compare-and-swap: the file is exchanged with the new version and the old one checked to be
//! what was read (else it is swapped back: a consumer signing in meanwhile keeps its login).

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

/// What [`Dir::look`] found, as [`Dir::replace`] needs it to tell whether the file changed
/// between the look and the rename.
#[derive(Debug, PartialEq, Eq)]
pub enum Seen {
    Absent,
    Bytes(Vec<u8>),
    Foreign,
}

impl From<&Current> for Seen {
    fn from(c: &Current) -> Seen {
        match c {
            Current::Absent => Seen::Absent,
            Current::Bytes(b) => Seen::Bytes(b.clone()),
            Current::Foreign(_) => Seen::Foreign,
        }
    }
}

/// The rename found the file changed since it was looked at (and put it back as it was).
pub fn raced() -> io::Error {
    io::Error::other("the mirror file changed while it was being written")
}

/// Whether `e` is [`raced`].
pub fn is_raced(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::Other && e.to_string() == raced().to_string()
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

/// The parent of a mirror directory, opened and checked to be the directory fixed at start.
pub struct Parent {
    fd: OwnedFd,
}

impl Parent {
    /// Opens `parent` and checks that the directory opened is `parent` itself (its real path,
    /// asked of the descriptor, so no rename between a check and the open can fool it): a
    /// symlink planted on the way since start makes it another directory, which is refused.
    pub fn open(parent: &Path) -> io::Result<Parent> {
        let c = cstr(parent)?;
        // SAFETY: a valid NUL-terminated path and plain flags.
        let fd = check(unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        })?;
        // SAFETY: `fd` was just returned by open and is owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        match real_path(&fd) {
            Ok(real) if real == parent => Ok(Parent { fd }),
            Ok(real) => Err(io::Error::other(format!(
                "the directory that holds it is now {} (a symlink on the way was changed since \
                 start), and a mirror is only written where it was at start",
                real.display()
            ))),
            // No way to ask (an unusual system): the open itself is all there is.
            Err(_) => Ok(Parent { fd }),
        }
    }

    /// Opens `name` in it as a directory, without following a symlink: a directory the
    /// consumer replaced by a link is refused (`ELOOP`/`ENOTDIR`), not followed.
    pub fn open_dir(&self, name: &CStr) -> io::Result<Dir> {
        // SAFETY: a valid descriptor, a NUL-terminated name and plain flags.
        let fd = check(unsafe {
            libc::openat(
                self.fd.as_raw_fd(),
                name.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            )
        })?;
        // SAFETY: `fd` was just returned by openat and is owned by nobody else.
        Ok(Dir {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// Creates `name` in it, 0700 whatever the umask and, when run as root, owned like the
    /// parent (a container user's directory stays theirs). A directory someone else created
    /// meanwhile is fine.
    pub fn create_dir(&self, name: &CStr) -> io::Result<Dir> {
        // SAFETY: a valid descriptor and NUL-terminated name.
        match check(unsafe { libc::mkdirat(self.fd.as_raw_fd(), name.as_ptr(), 0o700) }) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return self.open_dir(name),
            Err(e) => return Err(e),
        }
        let dir = self.open_dir(name)?;
        // SAFETY: a valid descriptor and plain integers.
        check(unsafe { libc::fchmod(dir.fd.as_raw_fd(), 0o700) })?;
        if is_root() {
            let st = fstat(&self.fd)?;
            // SAFETY: as above.
            check(unsafe { libc::fchown(dir.fd.as_raw_fd(), st.st_uid, st.st_gid) })?;
        }
        Ok(dir)
    }
}

fn fstat(fd: &impl AsRawFd) -> io::Result<libc::stat> {
    // SAFETY: zeroed is a valid `stat` to be filled in.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: a valid descriptor and a stat to fill.
    check(unsafe { libc::fstat(fd.as_raw_fd(), &mut st) })?;
    Ok(st)
}

/// The real path of an open directory, asked of the system.
#[cfg(target_os = "linux")]
fn real_path(fd: &OwnedFd) -> io::Result<std::path::PathBuf> {
    std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

#[cfg(target_os = "macos")]
fn real_path(fd: &OwnedFd) -> io::Result<std::path::PathBuf> {
    use std::os::unix::ffi::OsStringExt;
    let mut buf = vec![0u8; libc::PATH_MAX as usize];
    // SAFETY: F_GETPATH writes at most PATH_MAX bytes, NUL-terminated, into the buffer.
    check(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETPATH, buf.as_mut_ptr()) })?;
    let len = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    buf.truncate(len);
    Ok(std::ffi::OsString::from_vec(buf).into())
}

#[cfg(not(any(target_os = "linux", target_os = "macos")))]
fn real_path(_fd: &OwnedFd) -> io::Result<std::path::PathBuf> {
    Err(io::Error::from(io::ErrorKind::Unsupported))
}

impl Dir {
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
        fstat(&self.fd)
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

    /// Replaces `name` with a regular file holding `bytes`, when it is still what `seen` says:
    /// written to [`TEMP`] (0600, owned by the directory's owner when run as root), synced,
    /// put in place of `name` (which replaces a link, a FIFO or a hard link rather than
    /// writing through it; see [`Dir::put_in_place`]) and the directory synced. A `name` that
    /// is a mount point (a bind-mounted file, which rename cannot replace) is written in place,
    /// only when it is a regular file with one link. `Err(`[`raced`]`())`: it changed since
    /// the look, and was left as it is now.
    pub fn replace(&self, name: &CStr, bytes: &[u8], seen: &Seen) -> io::Result<()> {
        let dfd = self.fd.as_raw_fd();
        // A temp file a crashed write left, or anything a consumer put at that name: unlinkat
        // removes the name itself, never what a link points to.
        remove_name(dfd, TEMP);
        // SAFETY: a valid descriptor and NUL-terminated name; O_EXCL with O_CREAT never opens
        // an existing name, link or not.
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
        match self.put_in_place(name, seen, bytes) {
            Ok(()) => temp.renamed = true,
            Err(e) if matches!(e.raw_os_error(), Some(libc::EBUSY) | Some(libc::EXDEV)) => {
                self.write_in_place(name, bytes)?;
            }
            Err(e) => return Err(e),
        }
        // SAFETY: a valid descriptor.
        check(unsafe { libc::fsync(dfd) })?;
        Ok(())
    }

    /// Puts [`TEMP`] in place of `name`. On Linux this is a compare-and-swap: with nothing seen
    /// there, a rename that fails if something appeared meanwhile (`RENAME_NOREPLACE`); else an
    /// exchange (`RENAME_EXCHANGE`), after which the old file, now at the temp name, is checked
    /// to be what was seen (the same bytes; or, for something foreign, still not a file of
    /// ours) and removed, or exchanged back when it changed. Where that is not available (an
    /// older kernel, a filesystem without it, another system), a plain rename.
    fn put_in_place(&self, name: &CStr, seen: &Seen, ours: &[u8]) -> io::Result<()> {
        #[cfg(not(target_os = "linux"))]
        let _ = (seen, ours);
        #[cfg(target_os = "linux")]
        {
            let dfd = self.fd.as_raw_fd();
            let rename2 = |flags: libc::c_uint| {
                // SAFETY: a valid descriptor and NUL-terminated names, both relative to it.
                check(unsafe { libc::renameat2(dfd, TEMP.as_ptr(), dfd, name.as_ptr(), flags) })
            };
            let unsupported = |e: &io::Error| {
                matches!(
                    e.raw_os_error(),
                    Some(libc::EINVAL) | Some(libc::ENOSYS) | Some(libc::EOPNOTSUPP)
                )
            };
            let swapped = match seen {
                Seen::Absent => match rename2(libc::RENAME_NOREPLACE) {
                    Ok(_) => return Ok(()),
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Err(raced()),
                    Err(e) if unsupported(&e) => None,
                    Err(e) => return Err(e),
                },
                Seen::Bytes(_) | Seen::Foreign => match rename2(libc::RENAME_EXCHANGE) {
                    Ok(_) => Some(()),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(raced()),
                    Err(e) if unsupported(&e) => None,
                    Err(e) => return Err(e),
                },
            };
            if swapped.is_some() {
                let old = self.look(TEMP);
                let same = match (&old, seen) {
                    (Ok(Current::Bytes(now)), Seen::Bytes(then)) => now == then,
                    (Ok(Current::Foreign(_)), Seen::Foreign) => true,
                    _ => false,
                };
                if same && remove_name(dfd, TEMP) {
                    return Ok(());
                }
                // Changed since the look (a consumer signed in, say), or a directory with
                // something in it: back as it was. If the consumer wrote once more meanwhile
                // (over our file, now at `name`), the exchange back moved its newest file to
                // the temp name: exchanged once more, its newest stays and the older one it
                // replaced itself goes with the temp name.
                rename2(libc::RENAME_EXCHANGE)?;
                if !matches!(self.look(TEMP), Ok(Current::Bytes(b)) if b == ours) {
                    rename2(libc::RENAME_EXCHANGE)?;
                }
                return Err(match same {
                    true => io::Error::other(
                        "a directory with something in it is where the mirror file belongs",
                    ),
                    false => raced(),
                });
            }
        }
        self.plain_rename(name)
    }

    /// `renameat` of [`TEMP`] over `name`; an empty directory at `name` is taken away first, a
    /// non-empty one is the consumer's and stays (the write fails).
    fn plain_rename(&self, name: &CStr) -> io::Result<()> {
        let dfd = self.fd.as_raw_fd();
        let rename = || {
            // SAFETY: a valid descriptor and NUL-terminated names, both relative to it.
            check(unsafe { libc::renameat(dfd, TEMP.as_ptr(), dfd, name.as_ptr()) })
        };
        match rename() {
            Err(e) if matches!(e.raw_os_error(), Some(libc::EISDIR) | Some(libc::ENOTEMPTY)) => {
                // SAFETY: a valid descriptor and NUL-terminated name.
                if unsafe { libc::unlinkat(dfd, name.as_ptr(), libc::AT_REMOVEDIR) } == 0 {
                    rename().map(|_| ())
                } else {
                    Err(e)
                }
            }
            other => other.map(|_| ()),
        }
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

/// Removes `name` from the directory: the name itself (a file, a link, a FIFO), or an empty
/// directory. Whether it is gone.
fn remove_name(dfd: libc::c_int, name: &CStr) -> bool {
    let unlink = |flags: libc::c_int| {
        // SAFETY: a valid descriptor and NUL-terminated name.
        unsafe { libc::unlinkat(dfd, name.as_ptr(), flags) == 0 }
    };
    let gone = || io::Error::last_os_error().kind() == io::ErrorKind::NotFound;
    unlink(0) || gone() || unlink(libc::AT_REMOVEDIR) || gone()
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
