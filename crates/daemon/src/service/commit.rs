//! Putting an install's files in place all or nothing. Every new file is first written to a
//! temp file in its own directory (0644 whatever the umask, on disk), and every file to be
//! removed is checked to be removable; only when all of that has worked is anything renamed
//! into place or removed. A failure before that point takes the temps (and the directories
//! made for them) away again and changes nothing; a failure after it (a rename in a directory
//! a temp was just written in: very unlikely) says which files are in place, which are not,
//! and what to run. It knows nothing of units or plists.

use std::ffi::{CString, OsString};
use std::io::{self, Write as _};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::files::FILE_MODE;
use super::found::Found;
use super::home::parent;
use super::step::shell_quote;
use crate::exit;

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
/// `again` is the command to run once the cause of a late failure is fixed.
pub(super) fn put_in_place(
    files: &[NewFile<'_>],
    removing: &[&Found],
    again: &str,
) -> Result<(), u8> {
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
    Ok(())
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
fn removable(path: &Path) -> io::Result<()> {
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
