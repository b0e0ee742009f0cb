//! `locks`: a Claude Code lock directory untouched for more than 60 s is stale (warn, with the
//! `rmdir` to run); one its holder keeps touching is a refresh under way (ok). Doctor only
//! looks at their mtimes: it never takes, touches or removes one.

use std::path::PathBuf;
use std::time::Duration;

use claude_tokend_e2e::*;

use super::support::*;

fn report(home: &TempHome) -> Report {
    Report::run(doctor(home, &["--json", "--offline"]))
}

#[test]
fn a_stale_lock_directory_is_a_warning_and_a_live_one_is_not() {
    let home = TempHome::new();
    home.write_creds(&Login::fresh().doc());
    report(&home).expect("locks", "ok", "no Claude Code lock is held");
    let refresh_lock = home.claude_dir().join(".oauth_refresh.lock");
    let config_lock = PathBuf::from(format!("{}.lock", home.claude_dir().display()));
    for stale in [&refresh_lock, &config_lock] {
        abandoned_lock(stale, 120);
        let before = everything(home.path());
        let r = report(&home);
        r.out.expect_code(0);
        r.expect("locks", "warn", &stale.display().to_string());
        r.out.check_eq(
            "the fix",
            r.fix("locks"),
            format!("remove it: rmdir {}", stale.display()),
        );
        r.out.check_eq(
            "the lock directory and everything else, untouched",
            everything(home.path()),
            before,
        );
        std::fs::remove_dir(stale).unwrap();
    }
    // A Claude Code session holding the lock right now: nothing wrong.
    let live = LiveLock::hold_every(&refresh_lock, Duration::from_millis(200));
    let r = report(&home);
    r.expect("locks", "ok", "a refresh is under way");
    live.release();
    // Just under a minute is not stale yet.
    abandoned_lock(&refresh_lock, 50);
    report(&home).expect("locks", "ok", "held");
}

/// A config directory whose entries cannot be looked at (here a link that loops, which root
/// cannot see through either) is not "no lock held": doctor says it could not look.
#[test]
fn a_config_directory_that_cannot_be_looked_in_is_a_warning_not_ok() {
    let home = TempHome::new();
    let dir = home.claude_dir();
    std::os::unix::fs::symlink(&dir, &dir).unwrap();
    let r = report(&home);
    r.expect("locks", "warn", "could not look");
    r.out.check(
        r.check("locks")["detail"]
            .as_str()
            .unwrap_or("")
            .contains(&dir.display().to_string()),
        "it names where it could not look",
    );
}
