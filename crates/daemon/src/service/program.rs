//! Which path the service runs the program by. The path the user ran (`~/bin/claude-tokend`, a
//! link into a versioned directory as Homebrew, Nix or an unpacked archive make it) outlives
//! the version it points at today, where the resolved path (`…/1.0/bin/claude-tokend`) dies
//! with the next upgrade; so the path the user ran is kept whenever it leads to the program
//! that is running, and the resolved path is used only when it does not (a stale link, a
//! `PATH` that finds another copy first, an `argv[0]` a caller made up, a path systemd refuses
//! to run). It reads `argv[0]`, `PATH` and the file system; it writes nothing.

use std::ffi::OsStr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::files::same_file;
use super::home::normalize;
use super::render::systemd_refuses_program;
use crate::cli::Manager;
use crate::exit;

/// The program the service will run: see the module's comment. Under systemd, a path it
/// refuses to run (a quote, a backslash or a tab in it) gives way to the resolved path when
/// that one is plain; with none it takes, the install is refused (exit 2) before anything is
/// written. A path inside a cargo build directory works but moves with the next `cargo clean`,
/// so it earns a note.
pub(super) fn program_path(manager: Manager) -> Result<PathBuf, u8> {
    let running = std::env::current_exe().map_err(|e| {
        tell!("claude-tokend: cannot tell where this program is: {e}");
        exit::FAILURE
    })?;
    let as_run = std::env::args_os()
        .next()
        .and_then(|arg0| as_run(&arg0, std::env::var_os("PATH").as_deref()))
        .filter(|ran| !fleeting(ran) && same_file(ran, &running));
    let mut candidates: Vec<PathBuf> = as_run.into_iter().collect();
    if !candidates.contains(&running) {
        candidates.push(running.clone());
    }
    let program = if manager == Manager::Systemd {
        let refused = |p: &Path| match p.to_str() {
            Some(s) => systemd_refuses_program(s),
            // Refused by `utf8` later, with its own message.
            None => None,
        };
        let Some(usable) = candidates.iter().find(|p| refused(p).is_none()) else {
            let first = &candidates[0];
            tell!(
                "claude-tokend: systemd cannot run the program by its path, {}: {}{}. Install \
                 the program under a plain path (as `cargo install --locked claude-tokend` does, \
                 or copy it to ~/.local/bin) and run `service install` from there; nothing was \
                 written",
                first.display(),
                refused(first).unwrap_or_default(),
                if candidates.len() > 1 {
                    format!(
                        ", and its resolved path, {}, has one too",
                        running.display()
                    )
                } else {
                    String::new()
                }
            );
            return Err(exit::USAGE);
        };
        if usable != &candidates[0] {
            tell!(
                "claude-tokend: note: the service will run {}, the file {} leads to: systemd \
                 cannot run the path you ran ({}), so the service does not follow where that \
                 path leads after an upgrade",
                usable.display(),
                candidates[0].display(),
                refused(&candidates[0]).unwrap_or_default()
            );
        }
        usable.clone()
    } else {
        candidates.swap_remove(0)
    };
    let in_build_dir = |path: &Path| {
        let parts: Vec<&OsStr> = path.iter().collect();
        parts
            .windows(2)
            .any(|w| w[0] == "target" && (w[1] == "debug" || w[1] == "release"))
    };
    // A link into the build directory moves (dangles) with it just the same.
    if in_build_dir(&program) || in_build_dir(&running) {
        tell!(
            "claude-tokend: note: the service will run {}, inside a cargo build directory; for a path that \
             stays put, `cargo install --locked --path crates/daemon` and run `~/.cargo/bin/claude-tokend service install`",
            program.display()
        );
    }
    Ok(program)
}

/// The absolute path `arg0` names, as the shell found it: itself when absolute, made absolute
/// (lexically) when it has a `/`, else the first executable file of that name in `path`'s
/// absolute directories (as `execvp` searches; a relative `PATH` entry would not name the
/// same file from the service's directory). `None` when there is no such path.
fn as_run(arg0: &OsStr, path: Option<&OsStr>) -> Option<PathBuf> {
    let named = Path::new(arg0);
    if arg0.is_empty() {
        return None;
    }
    if named.components().count() > 1 || named.is_absolute() {
        return std::path::absolute(named).ok().map(|p| normalize(&p));
    }
    std::env::split_paths(path?)
        .filter(|dir| dir.is_absolute())
        .map(|dir| normalize(&dir.join(named)))
        .find(|candidate| is_executable_file(candidate))
}

/// A path that names the running file only for this process (`/proc/self/exe`, a descriptor
/// the program was started from): the same file now, nothing once the process is gone.
fn fleeting(path: &Path) -> bool {
    path.starts_with("/proc") || path.starts_with("/dev/fd")
}

fn is_executable_file(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsString;

    #[test]
    fn argv0_is_read_as_the_shell_ran_it() {
        let sh = Path::new("/bin/sh");
        assert_eq!(as_run(OsStr::new("/bin/./sh"), None), Some(sh.into()));
        assert_eq!(as_run(OsStr::new(""), None), None);
        // A relative PATH entry is skipped; an absolute one is searched.
        let path = OsString::from("relative:/nonexistent:/bin");
        assert_eq!(as_run(OsStr::new("sh"), Some(&path)), Some(sh.into()));
        assert_eq!(as_run(OsStr::new("sh"), None), None);
        assert!(fleeting(Path::new("/proc/self/exe")) && fleeting(Path::new("/dev/fd/3")));
        assert!(!fleeting(Path::new("/usr/bin/claude-tokend")));
        assert!(same_file(sh, sh));
        assert!(!same_file(sh, Path::new("/nonexistent")));
    }
}
