//! Putting an install's files in place all or nothing. Every new file is first written to a
//! temp file in its own directory (0644 whatever the umask, on disk), and every file to be
//! removed is checked to be removable; only when all of that has worked is anything renamed
//! into place or removed. A failure before that point takes the temps (and the directories
//! made for them) away again and changes nothing; a failure after it (a rename in a directory
//! a temp was just written in: very unlikely) says which files are in place, which are not,
//! and what to run. SIGINT, SIGTERM and SIGHUP are caught meanwhile: one that comes before the
//! first rename undoes it all, one that comes later lets the renames finish; either way no temp
//! is left, and the command says what is in place and stops with 128 + the signal. Temps a
//! killed run left (`kill -9`, a crash) are swept by the next install or uninstall. It knows
//! nothing of units or plists.

use std::ffi::{CString, OsStr, OsString};
use std::io::{self, Write as _};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::files::FILE_MODE;
use super::found::Found;
use super::home::parent;
use super::step::{Catch, by_hand, shell_quote};
use crate::{exit, interrupt};
use libc::c_int;

/// A directory this command creates: 0755, less what the umask takes away from group and
/// others (0700 under umask 077), never writable by them whatever the umask.
const DIR_MODE: u32 = 0o755;

/// One file to put in place: `content` goes to `dest`; `shown` names it in messages (the path,
/// and where its link leads).
pub(super) struct NewFile<'a> {
    pub(super) dest: &'a Path,
    pub(super) shown: String,
    pub(super) content: &'a [u8],
}

/// Writes `files` and removes `removing`, all or nothing as the module's comment says.
/// `again` is the command to run once the cause of a late failure is fixed. `Ok(Some(signal))`:
/// all is in place, and `signal` came meanwhile (said already): the command is to stop after
/// the work that is left on disk, with `rest` to run by hand (see [`stopped`]).
pub(super) fn put_in_place(
    files: &[NewFile<'_>],
    removing: &[&Found],
    again: &str,
) -> Result<Option<c_int>, u8> {
    let catch = Catch::install();
    let mut created = Vec::new();
    let mut temps: Vec<PathBuf> = Vec::new();
    let undo = |temps: &[PathBuf], created: &[PathBuf]| {
        for t in temps {
            let _ = std::fs::remove_file(t);
        }
        // Innermost first; one that is not empty (someone else's file appeared) stays.
        for d in created.iter().rev() {
            let _ = std::fs::remove_dir(d);
        }
    };
    for f in files {
        match stage(f, &mut created) {
            Ok(tmp) => temps.push(tmp),
            Err(e) => {
                undo(&temps, &created);
                tell!(
                    "claude-tokend: cannot write {} ({e}); nothing was changed",
                    f.shown
                );
                return Err(exit::FAILURE);
            }
        }
    }
    for r in removing {
        if let Err(e) = removable(&r.path) {
            undo(&temps, &created);
            tell!(
                "claude-tokend: cannot remove {} ({e}); nothing was changed",
                r.named()
            );
            return Err(exit::FAILURE);
        }
    }

    tokend_core::seams::pause_at("service-commit-staged");
    if let Some(signal) = catch.caught() {
        undo(&temps, &created);
        interrupt::tell(format_args!(
            "{}: stopped before any file was put in place; nothing was changed",
            interrupt::name(signal)
        ));
        return Err(interrupt::exit_code(signal));
    }
    // From here on a signal lets the renames finish: a half-done install is the one state
    // this module never leaves by choice.
    let mut done: Vec<String> = Vec::new();
    for (i, (f, tmp)) in files.iter().zip(&temps).enumerate() {
        if i == 1 {
            tokend_core::seams::pause_at("service-commit-renaming");
        }
        if let Err(e) = rename(tmp, f.dest) {
            for t in &temps[i..] {
                let _ = std::fs::remove_file(t);
            }
            let left: Vec<String> = files[i..]
                .iter()
                .map(|f| format!("{} (not written)", f.shown))
                .chain(
                    removing
                        .iter()
                        .map(|r| format!("{} (not removed)", r.named())),
                )
                .collect();
            half_done(
                &format!("cannot put {} in place: {e}", f.shown),
                &done,
                &left,
                again,
            );
            return Err(exit::FAILURE);
        }
        done.push(format!("{} (written)", f.shown));
    }
    for (i, r) in removing.iter().enumerate() {
        match std::fs::remove_file(&r.path) {
            Ok(()) => done.push(format!("{} (removed)", r.named())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                let left: Vec<String> = removing[i..]
                    .iter()
                    .map(|r| format!("{} (not removed)", r.named()))
                    .collect();
                half_done(
                    &format!("cannot remove {}: {e}", r.named()),
                    &done,
                    &left,
                    again,
                );
                return Err(exit::FAILURE);
            }
        }
    }
    let signal = catch.caught();
    if let Some(signal) = signal {
        let mut text = format!(
            "claude-tokend: {}: it came while the files were put in place; they all are, and \
             nothing more is done:\n",
            interrupt::name(signal)
        );
        for d in &done {
            text.push_str(&format!("  {d}\n"));
        }
        let _ = io::stderr().write_all(text.as_bytes());
    }
    Ok(signal)
}

/// Ends a command a signal stopped once its files were in place ([`put_in_place`] said so):
/// what is left to run by hand, and the exit code (128 + the signal).
pub(super) fn stopped(signal: c_int, rest: Vec<String>) -> u8 {
    if !rest.is_empty() {
        by_hand(rest);
    }
    interrupt::exit_code(signal)
}

/// Whether `name` is exactly a temp file's name as [`stage`] makes them for `of`:
/// `.<of>.tmp<pid>`; the pid when it is.
fn temp_pid(name: &OsStr, of: &OsStr) -> Option<libc::pid_t> {
    let name = name.as_bytes();
    let rest = name.strip_prefix(b".")?.strip_prefix(of.as_bytes())?;
    let digits = rest.strip_prefix(b".tmp")?;
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// Whether process `pid`, which made a temp file, may still be running (this process, or one
/// that is there: another install at work right now, whose temp is not stale).
fn live(pid: libc::pid_t) -> bool {
    // SAFETY: kill(2) with signal 0 only asks whether the process exists.
    pid == std::process::id() as libc::pid_t
        || unsafe { libc::kill(pid, 0) } == 0
        || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Removes the temp files an install that was killed left beside each file of `files` (a file's
/// path: the temps are `.<name>.tmp<pid>` in its directory), and says so: only regular files
/// named exactly so, whose process is gone. Whatever cannot be removed stays, unsaid: it is
/// in no one's way.
pub(super) fn sweep_temps(files: &[&Path]) {
    let mut seen: Vec<(PathBuf, &OsStr)> = Vec::new();
    for file in files {
        let (dir, Some(name)) = (parent(file), file.file_name()) else {
            continue;
        };
        if seen.iter().any(|(d, n)| *d == dir && *n == name) {
            continue;
        }
        seen.push((dir.clone(), name));
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Some(pid) = temp_pid(&entry.file_name(), name) else {
                continue;
            };
            let regular = entry.file_type().is_ok_and(|t| t.is_file());
            if regular && !live(pid) && std::fs::remove_file(entry.path()).is_ok() {
                say!(
                    "Removed: {} (a temp file that an interrupted `service install` left)",
                    entry.path().display()
                );
            }
        }
    }
}

/// Whether `entry` (a name in `dir`) is a temp file of one of `files` (see [`sweep_temps`]).
pub(super) fn is_temp_of(entry: &OsStr, files: &[&Path]) -> bool {
    files
        .iter()
        .filter_map(|f| f.file_name())
        .any(|name| temp_pid(entry, name).is_some())
}

/// Says exactly how far a commit got.
fn half_done(what: &str, done: &[String], left: &[String], again: &str) {
    let mut text = format!("claude-tokend: {what}; this install is half done.\n");
    text.push_str("claude-tokend: already changed:\n");
    for d in done {
        text.push_str(&format!("  {d}\n"));
    }
    text.push_str("claude-tokend: not changed:\n");
    for l in left {
        text.push_str(&format!("  {l}\n"));
    }
    text.push_str(&format!(
        "claude-tokend: fix the cause, then run again:\n  {again}\n"
    ));
    let _ = io::stderr().write_all(text.as_bytes());
}

/// Writes `f`'s temp file beside its destination (creating the missing directories, each
/// recorded in `created`); its path.
fn stage(f: &NewFile<'_>, created: &mut Vec<PathBuf>) -> io::Result<PathBuf> {
    let dir = parent(f.dest);
    create_dirs(&dir, created)?;
    let mut name = OsString::from(".");
    name.push(f.dest.file_name().unwrap_or_default());
    name.push(format!(".tmp{}", std::process::id()));
    let tmp = dir.join(name);
    if let Err(e) = write_new(&tmp, f.content) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(tmp)
}

/// The rename that puts a file in place (a debug-build test seam can make it fail).
fn rename(tmp: &Path, dest: &Path) -> io::Result<()> {
    if let Some(e) = tokend_core::seams::rename_error() {
        return Err(e);
    }
    std::fs::rename(tmp, dest)
}

/// Whether this process may remove `path`'s entry: write and search permission on its
/// directory (as the kernel checks them for this process's effective ids), and in a sticky
/// directory, owning the file or the directory.
pub(super) fn removable(path: &Path) -> io::Result<()> {
    let dir = parent(path);
    let c = CString::new(dir.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // SAFETY: faccessat(2) with a valid NUL-terminated path and no pointers kept.
    let r = unsafe {
        libc::faccessat(
            libc::AT_FDCWD,
            c.as_ptr(),
            libc::W_OK | libc::X_OK,
            libc::AT_EACCESS,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    let dir_meta = std::fs::metadata(&dir)?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if dir_meta.mode() & 0o1000 != 0 && me != 0 {
        let owner = std::fs::symlink_metadata(path)?.uid();
        if owner != me && dir_meta.uid() != me {
            return Err(io::Error::from_raw_os_error(libc::EPERM));
        }
    }
    Ok(())
}

/// A new file at `tmp` holding `bytes`, [`FILE_MODE`] whatever the umask (which only takes
/// bits away, so the mode is set again once the file is there), on disk before it is renamed.
fn write_new(tmp: &Path, bytes: &[u8]) -> io::Result<()> {
    let _ = std::fs::remove_file(tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .open(tmp)?;
    file.set_permissions(std::fs::Permissions::from_mode(FILE_MODE))?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// Creates `dir` and whatever of its parents is missing, each [`DIR_MODE`] less the umask's
/// group and other bits, never less than the owner's own `rwx` (a umask of 0277 would leave a
/// directory nobody can write the file into); each one it made is added to `made`, outermost
/// first. Directories that are there are left as they are.
pub(super) fn create_dirs(dir: &Path, made: &mut Vec<PathBuf>) -> io::Result<()> {
    let missing: Vec<&Path> = dir
        .ancestors()
        .take_while(|d| std::fs::symlink_metadata(d).is_err())
        .collect();
    for d in missing.into_iter().rev() {
        match std::fs::DirBuilder::new().mode(DIR_MODE).create(d) {
            Ok(()) => made.push(d.to_path_buf()),
            // Made meanwhile by someone else: theirs, left as it is.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
        let mode = std::fs::metadata(d)?.mode() & DIR_MODE | 0o700;
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}

/// This command line, as the user would type it again.
pub(super) fn this_command() -> String {
    let mut args = std::env::args_os();
    let program = args.next().map_or_else(
        || "claude-tokend".to_owned(),
        |a| shell_quote(&a.to_string_lossy()),
    );
    std::iter::once(program)
        .chain(args.map(|a| shell_quote(&a.to_string_lossy())))
        .collect::<Vec<String>>()
        .join(" ")
}
