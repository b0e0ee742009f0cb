//! How times and command output reach the user: local times with a countdown, and stdout
//! writes that end quietly when the reader has gone (`claude-tokend status | head -1`).
//! Shared by the one-shot commands, login and the daemon's log lines; it knows nothing of them.

use std::io::{self, Write};
use std::time::{Duration, SystemTime};

use tokend_core::schedule::epoch_millis;
use tokend_core::settings::format_duration;

use crate::exit;

/// `expires 2026-11-27 11:02:03 CET (in 7h 12m)`.
pub fn describe_expiry(expires_at: Option<i64>) -> String {
    match expires_at {
        None => "expiry unknown".into(),
        Some(ms) => format!("expires {}", when(ms)),
    }
}

/// A moment as local time plus how far away it is: `2026-11-27 11:02:03 CET (in 7h 12m)`.
pub fn when(ms: i64) -> String {
    format!("{} ({})", local_time(ms), relative(ms))
}

/// A moment (epoch ms) in the local time zone; a number jiff cannot place is shown as such.
pub fn local_time(ms: i64) -> String {
    match jiff::Timestamp::from_millisecond(ms) {
        Ok(ts) => ts
            .to_zoned_datetime(jiff::tz::TimeZone::system())
            .strftime("%Y-%m-%d %H:%M:%S %Z")
            .to_string(),
        Err(_) => format!("{ms} ms after the epoch"),
    }
}

/// `in 7h 12m` or `3m 5s ago`, saturating for any `ms`.
pub fn relative(ms: i64) -> String {
    let now = epoch_millis(SystemTime::now());
    let delta = ms.saturating_sub(now);
    let d = Duration::from_millis(delta.unsigned_abs());
    if delta >= 0 {
        format!("in {}", format_duration(d))
    } else {
        format!("{} ago", format_duration(d))
    }
}

/// Writes `text` to stdout. A reader that has gone (a closed pipe) is no error: the command's
/// exit code stands and nothing is printed about it. Any other write error is exit 1.
pub fn emit(text: &[u8]) -> Result<(), u8> {
    let mut stdout = io::stdout().lock();
    match stdout.write_all(text).and_then(|()| stdout.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => {
            eprintln!("claude-tokend: cannot write to stdout: {e}");
            Err(exit::FAILURE)
        }
    }
}

/// Writes one line to stdout, and goes on whatever becomes of it: for a command whose output
/// only reports work it does all the same (`service install --now | head -1`: a closed pipe
/// must end the output, never the renames or `systemctl` steps between two lines).
pub fn say(line: std::fmt::Arguments<'_>) {
    let mut stdout = io::stdout().lock();
    let _ = stdout
        .write_fmt(line)
        .and_then(|()| stdout.write_all(b"\n"))
        .and_then(|()| stdout.flush());
}

/// `CLAUDE_TOKEND_LOGIN` for a login (notifications and `--mirror-cmd`): the credentials path
/// as located, or `keychain:<service>`.
pub fn login_id(store: &tokend_core::store::Store) -> String {
    match store.keychain_item() {
        Some(item) => format!("keychain:{}", item.service),
        None => store.path().display().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn any_moment_can_be_shown(ms in any::<i64>()) {
            let _ = when(ms);
            let _ = describe_expiry(Some(ms));
        }
    }

    #[test]
    fn extremes_are_shown_without_panicking() {
        for ms in [i64::MIN, -1, 0, i64::MAX] {
            assert!(!when(ms).is_empty());
        }
        assert!(relative(i64::MIN).ends_with("ago"));
        assert!(relative(i64::MAX).starts_with("in "));
    }
}
