//! The `locks` check of one login: Claude Code's lock directories (`.oauth_refresh.lock`,
//! `<config dir>.lock`, `.storage-write.lock`) judged by their mtime alone, never taken; one
//! untouched for more than a minute was left by a holder that is gone. Also says when a
//! claude-tokend is spending a refresh token right now (the program's own record, peeked at).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use tokend_core::claude_locks::{REFRESH_STALE, lock_paths};
use tokend_core::schedule::epoch_millis;
use tokend_core::settings::format_duration;
use tokend_core::store::{Store, process};

use super::store::user_name;
use super::{Check, Findings, sh};

/// A lock directory that exists.
pub struct Held {
    pub path: PathBuf,
    /// Its mtime (epoch ms): its holder touches it every 5 s.
    pub touched: i64,
    pub owner: u32,
    /// A directory, as a lock is; a plain file there is no lock, and blocks every one.
    pub is_dir: bool,
    /// Whether this user may remove entries of the directory it is in (then `rmdir` works
    /// whoever owns the lock itself).
    pub parent_writable: bool,
}

pub struct Facts {
    pub held: Vec<Held>,
    /// Lock paths that could not be looked at, with why (not "no lock held").
    pub unseen: Vec<(PathBuf, String)>,
    pub me: u32,
    /// The pid of a live claude-tokend that sent a refresh token and has not saved the answer
    /// yet.
    pub spending: Option<u32>,
}

impl Facts {
    pub fn gather(store: &Store) -> Facts {
        let paths = lock_paths(store.path());
        let mut held = Vec::new();
        let mut unseen = Vec::new();
        for path in [paths.oauth_refresh, paths.config, paths.storage_write] {
            let meta = match std::fs::symlink_metadata(&path) {
                Ok(meta) => meta,
                // Nothing there (or no directory to hold it): no lock.
                Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR)) => {
                    continue;
                }
                Err(e) => {
                    unseen.push((path, e.to_string()));
                    continue;
                }
            };
            let touched = epoch_millis(meta.modified().unwrap_or(SystemTime::UNIX_EPOCH));
            let parent = path.parent().unwrap_or(Path::new("/"));
            held.push(Held {
                is_dir: meta.is_dir(),
                parent_writable: writable(parent),
                path,
                touched,
                owner: meta.uid(),
            });
        }
        let spending = store
            .peek_records()
            .spent
            .filter(|s| process::runs_this_program(s.pid, s.started))
            .map(|s| s.pid);
        Facts {
            held,
            unseen,
            // SAFETY: geteuid has no preconditions and cannot fail.
            me: unsafe { libc::geteuid() },
            spending,
        }
    }
}

/// Whether this user may create and remove entries in `dir` (access(2)).
fn writable(dir: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: a valid NUL-terminated path; access only checks.
    unsafe { libc::access(c.as_ptr(), libc::W_OK | libc::X_OK) == 0 }
}

/// `locks`: warn for each lock directory untouched for more than 60 s (stale), for a plain
/// file where a lock directory belongs, and for a lock path that could not be looked at.
pub fn check(f: &Facts, now: i64) -> Check {
    let stale_after = i64::try_from(REFRESH_STALE.as_millis()).unwrap_or(i64::MAX);
    let mut found = Findings::default();
    let mut live = Vec::new();
    for h in &f.held {
        let age = now.saturating_sub(h.touched);
        let ago = format_duration(Duration::from_millis(age.max(0).unsigned_abs()));
        if h.is_dir && age <= stale_after {
            live.push(format!("{} (touched {ago} ago)", h.path.display()));
            continue;
        }
        // Removing an entry takes write permission on its parent, not ownership of it.
        let sudo = if h.parent_writable { "" } else { "sudo " };
        let parent = h.path.parent().unwrap_or(Path::new("/"));
        if !h.is_dir {
            found.warn(
                format!(
                    "{} is a file where Claude Code makes its lock directory: no refresh can \
                     take the lock while it is there",
                    h.path.display()
                ),
                format!("remove it: {sudo}rm {}", sh(&h.path)),
            );
            continue;
        }
        let whose = if h.owner == f.me {
            String::new()
        } else {
            format!(
                " (it belongs to {}: made by `sudo claude`?)",
                user_name(h.owner).unwrap_or_else(|| format!("uid {}", h.owner))
            )
        };
        let stuck = if h.parent_writable {
            String::new()
        } else {
            format!(
                ", and you cannot remove entries of {}, so only root can clear it",
                parent.display()
            )
        };
        found.warn(
            format!(
                "Claude Code's lock directory {} was last touched {ago} ago: its holder is \
                 gone{whose}{stuck}",
                h.path.display(),
            ),
            format!("remove it: {sudo}rmdir {}", sh(&h.path)),
        );
    }
    for (path, why) in &f.unseen {
        found.warn(
            format!(
                "could not look for Claude Code's lock at {}: {why}",
                path.display()
            ),
            format!(
                "check that the config directory {} is a directory you can read",
                sh(path.parent().unwrap_or(Path::new("/")))
            ),
        );
    }
    let mut ok = if live.is_empty() {
        "no Claude Code lock is held".to_owned()
    } else {
        format!("a refresh is under way: {} held", live.join(", "))
    };
    if let Some(pid) = f.spending {
        ok.push_str(&format!(
            "; claude-tokend pid {pid} is refreshing this login now"
        ));
    }
    found.into_check("locks", ok)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::Verdict;

    #[test]
    fn a_lock_untouched_for_a_minute_is_stale() {
        let now = 1_800_000_000_000;
        let held = |age_s: i64, owner: u32| Held {
            path: PathBuf::from("/h/.claude/.oauth_refresh.lock"),
            touched: now - age_s * 1000,
            owner,
            is_dir: true,
            parent_writable: true,
        };
        let facts = |held: Vec<Held>| Facts {
            held,
            unseen: vec![],
            me: 1000,
            spending: None,
        };
        assert_eq!(check(&facts(vec![]), now).verdict, Verdict::Ok);
        assert_eq!(check(&facts(vec![held(5, 1000)]), now).verdict, Verdict::Ok);
        let c = check(&facts(vec![held(61, 1000)]), now);
        assert_eq!(c.verdict, Verdict::Warn);
        assert_eq!(
            c.fix.as_deref(),
            Some("remove it: rmdir /h/.claude/.oauth_refresh.lock")
        );
        // Root's lock in a directory of yours: rmdir works without sudo.
        let c = check(&facts(vec![held(3600, 0)]), now);
        assert!(c.detail.contains("sudo claude"), "{}", c.detail);
        assert!(!c.detail.contains("cannot"), "{}", c.detail);
        assert_eq!(
            c.fix.as_deref(),
            Some("remove it: rmdir /h/.claude/.oauth_refresh.lock")
        );
        // In a directory you cannot change: sudo.
        let c = check(
            &facts(vec![Held {
                parent_writable: false,
                ..held(3600, 0)
            }]),
            now,
        );
        assert!(c.fix.unwrap().contains("sudo rmdir"));
        // A plain file is no lock directory: rm, whatever its age.
        let c = check(
            &facts(vec![Held {
                is_dir: false,
                ..held(1, 1000)
            }]),
            now,
        );
        assert_eq!(c.verdict, Verdict::Warn);
        assert_eq!(
            c.fix.as_deref(),
            Some("remove it: rm /h/.claude/.oauth_refresh.lock")
        );
    }
}
