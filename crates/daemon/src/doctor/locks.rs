//! The `locks` check of one login: Claude Code's lock directories (`.oauth_refresh.lock`,
//! `<config dir>.lock`, `.storage-write.lock`) judged by their mtime alone, never taken; one
//! untouched for more than a minute was left by a holder that is gone. Also says when a
//! claude-tokend is spending a refresh token right now (the program's own record, peeked at).

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
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
}

pub struct Facts {
    pub held: Vec<Held>,
    pub me: u32,
    /// The pid of a live claude-tokend that sent a refresh token and has not saved the answer
    /// yet.
    pub spending: Option<u32>,
}

impl Facts {
    pub fn gather(store: &Store) -> Facts {
        let paths = lock_paths(store.path());
        let held = [paths.oauth_refresh, paths.config, paths.storage_write]
            .into_iter()
            .filter_map(|path| {
                let meta = std::fs::symlink_metadata(&path).ok()?;
                let touched = epoch_millis(meta.modified().unwrap_or(SystemTime::UNIX_EPOCH));
                Some(Held {
                    path,
                    touched,
                    owner: meta.uid(),
                })
            })
            .collect();
        let spending = store
            .peek_records()
            .spent
            .filter(|s| process::runs_this_program(s.pid, s.started))
            .map(|s| s.pid);
        Facts {
            held,
            // SAFETY: geteuid has no preconditions and cannot fail.
            me: unsafe { libc::geteuid() },
            spending,
        }
    }
}

/// `locks`: warn for each lock directory untouched for more than 60 s (stale).
pub fn check(f: &Facts, now: i64) -> Check {
    let stale_after = i64::try_from(REFRESH_STALE.as_millis()).unwrap_or(i64::MAX);
    let mut found = Findings::default();
    let mut live = Vec::new();
    for h in &f.held {
        let age = now.saturating_sub(h.touched);
        let ago = format_duration(Duration::from_millis(age.max(0).unsigned_abs()));
        if age <= stale_after {
            live.push(format!("{} (touched {ago} ago)", h.path.display()));
            continue;
        }
        let theirs = h.owner != f.me;
        found.warn(
            format!(
                "Claude Code's lock directory {} was last touched {ago} ago: its holder is \
                 gone{}",
                h.path.display(),
                if theirs {
                    format!(
                        ", and it belongs to {}, so neither Claude Code nor claude-tokend can \
                         take it over",
                        user_name(h.owner).unwrap_or_else(|| format!("uid {}", h.owner))
                    )
                } else {
                    String::new()
                }
            ),
            format!(
                "remove it: {}rmdir {}",
                if theirs { "sudo " } else { "" },
                sh(&h.path)
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
        };
        let facts = |held: Vec<Held>| Facts {
            held,
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
        let c = check(&facts(vec![held(3600, 0)]), now);
        assert!(c.fix.unwrap().contains("sudo rmdir"));
    }
}
