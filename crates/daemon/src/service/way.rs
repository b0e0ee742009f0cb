//! Whose directories the service files are reached through. Whoever may write a directory on
//! the way to a file (by owning it, or through its mode) can rename what is below it and put
//! another unit, drop-in or agent in place, which the service manager then runs as this user:
//! so `install` and `uninstall` refuse root with another user's HOME outright (it would fill
//! that user's home with root's files, through links that user controls), refuse any directory
//! on the way that belongs to someone else, and warn about those group or others may write.
//! "On the way" is every real directory passed while the path is resolved, each link followed
//! hop by hop: a linked `~/.config` leads through directories of its own. It reads the file
//! system and writes nothing.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use super::step::shell_quote;
use crate::exit;

/// The kernel's bound on the links followed in one resolution (ELOOP past it).
const MAX_LINKS: usize = 40;

/// Every real directory passed while `path` is resolved (links followed at every step, the
/// last name's too), outermost first, each once. The walk ends at the first name that does not
/// exist: what this command creates below it is its own.
pub(super) fn passed(path: &Path) -> Vec<PathBuf> {
    let mut dirs = vec![PathBuf::from("/")];
    let mut at = PathBuf::from("/");
    let mut left: VecDeque<OsString> = names(path);
    let mut links = 0;
    while let Some(name) = left.pop_front() {
        if name == ".." {
            // `at` holds no link, so its parent is the real one.
            at.pop();
            continue;
        }
        let next = at.join(&name);
        let Ok(meta) = std::fs::symlink_metadata(&next) else {
            break;
        };
        if meta.file_type().is_symlink() {
            links += 1;
            let Ok(target) = std::fs::read_link(&next) else {
                break;
            };
            if links > MAX_LINKS {
                break;
            }
            if target.is_absolute() {
                at = PathBuf::from("/");
            }
            for n in names(&target).into_iter().rev() {
                left.push_front(n);
            }
        } else if meta.is_dir() {
            at = next;
            if !dirs.contains(&at) {
                dirs.push(at.clone());
            }
        } else {
            break;
        }
    }
    dirs
}

/// The names of `path`, `.` dropped, `..` kept (it is resolved against what the walk has
/// reached, links and all).
fn names(path: &Path) -> VecDeque<OsString> {
    path.components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            _ => None,
        })
        .collect()
}

fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Who owns `path` (links followed), or its nearest existing ancestor when it is not there.
fn owner(path: &Path) -> Option<u32> {
    path.ancestors()
        .find_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.uid())
}

/// Refuses (exit 2) root with a HOME that belongs to another user (`sudo -E`, `su -m`, macOS's
/// sudo, which keeps HOME): the service is per-user, and root would put root-owned files in
/// that user's home (their own programs then fail on them) through links that user controls.
/// Exit 2: it is how the command was started that is wrong, as with a HOME that is not
/// absolute, and nothing on disk needs fixing.
pub(super) fn refuse_root_with_anothers_home(home: &Path) -> Result<(), u8> {
    if euid() != 0 {
        return Ok(());
    }
    match owner(home) {
        Some(0) | None => Ok(()),
        Some(uid) => {
            tell!(
                "claude-tokend: HOME is {}, which belongs to uid {uid}, but this runs as root. \
                 The service is per-user: run `claude-tokend service …` as the user who owns \
                 {0}, without sudo; for root's own service, with HOME set to root's home \
                 (`sudo -H`, `sudo -i`). Nothing was changed.",
                home.display()
            );
            Err(exit::USAGE)
        }
    }
}

/// Refuses (exit 1) when a directory on the way to any of `paths` belongs to someone other
/// than this user or root: its owner could put another file in place, or lead a link where
/// they like. The directories above HOME are HOME's own business (who owns `/home` owns every
/// home below it already), not the service's.
pub(super) fn refuse_others_dirs(paths: &[&Path], home: &Path, doing: &str) -> Result<(), u8> {
    let me = euid();
    let above_home: Vec<PathBuf> = {
        let real_home = std::fs::canonicalize(home).ok();
        passed(home)
            .into_iter()
            .filter(|d| Some(d) != real_home.as_ref())
            .collect()
    };
    let mut refused = false;
    let mut said: Vec<PathBuf> = Vec::new();
    for path in paths {
        for dir in passed(path) {
            if above_home.contains(&dir) || said.contains(&dir) {
                continue;
            }
            let Ok(meta) = std::fs::metadata(&dir) else {
                continue;
            };
            if meta.uid() == me || meta.uid() == 0 {
                continue;
            }
            tell!(
                "claude-tokend: {} belongs to uid {}, neither to you (uid {me}) nor to root, and \
                 it is on the way to {}: whoever owns it can put another file there, which the \
                 service would run as you. Keep the service files out of it, or make it yours \
                 first (`ls -ld {}` shows whose it is).",
                dir.display(),
                meta.uid(),
                path.display(),
                shell_quote(&dir.to_string_lossy())
            );
            said.push(dir);
            refused = true;
        }
    }
    if refused {
        tell!("claude-tokend: nothing was {doing}.");
        return Err(exit::FAILURE);
    }
    Ok(())
}

/// Warns about each directory on the way to `paths` (up to `/`: whoever may rename `~` itself
/// can swap the whole tree) that its group or everyone may write without the sticky bit (a
/// sticky one, as /tmp is, lets only an entry's owner rename it). A warning and not a fix: the
/// directory was there before this command, made by the user or another tool, perhaps shared
/// on purpose, and a mode changed behind their back is a surprise of its own.
pub(super) fn warn_if_others_write(paths: &[&Path]) {
    let mut dirs: Vec<PathBuf> = Vec::new();
    for path in paths {
        for d in passed(path) {
            if !dirs.contains(&d) {
                dirs.push(d);
            }
        }
    }
    for dir in dirs {
        let Ok(meta) = std::fs::metadata(&dir) else {
            continue;
        };
        let mode = meta.mode();
        if mode & 0o022 != 0 && mode & 0o1000 == 0 {
            tell!(
                "claude-tokend: warning: {} is writable by {} (mode {:o}): whoever can write there \
                 can change what the service runs. Unless that is what you want: chmod go-w {}",
                dir.display(),
                if mode & 0o002 != 0 {
                    "everyone"
                } else {
                    "its group"
                },
                mode & 0o7777,
                shell_quote(&dir.to_string_lossy()),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn every_directory_a_link_leads_through_is_passed() {
        let root = std::env::temp_dir().join(format!("way-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let root = {
            std::fs::create_dir_all(&root).unwrap();
            std::fs::canonicalize(&root).unwrap()
        };
        std::fs::create_dir_all(root.join("s/cfg/sub")).unwrap();
        std::fs::create_dir_all(root.join("h")).unwrap();
        std::fs::create_dir_all(root.join("x")).unwrap();
        // h/.config -> x/hop -> ../s/cfg (relative, through a second link)
        symlink("../s/cfg", root.join("x/hop")).unwrap();
        symlink(root.join("x/hop"), root.join("h/.config")).unwrap();
        let got = passed(&root.join("h/.config/sub/missing/file"));
        for want in ["h", "x", "s", "s/cfg", "s/cfg/sub"] {
            assert!(got.contains(&root.join(want)), "{want}: {got:?}");
        }
        assert!(!got.iter().any(|d| d.ends_with("missing")));
        assert_eq!(got[0], PathBuf::from("/"));
        // A loop ends the walk.
        symlink("loop", root.join("loop")).unwrap();
        assert!(passed(&root.join("loop/x")).contains(&root));
        std::fs::remove_dir_all(&root).unwrap();
    }
}
