//! The daemon's pure decisions: what it knows about the login, and what to do next given the
//! wall clock. No I/O and no clock of its own, so every case is a table row in the tests.

use std::time::Duration;

use tokend_core::schedule::due_at;

/// The longest the daemon sleeps in one go. A laptop that slept through the deadline, or a
/// wall clock that jumped, is noticed within this long of waking (pizauth wakes every 37 s for
/// the same reason).
pub const MAX_SLEEP: Duration = Duration::from_secs(60);

/// Why the daemon is waiting for the file to change rather than for a time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Waiting {
    /// No file yet (not logged in).
    Missing,
    /// The file does not parse; it is read again when it changes.
    Malformed(String),
    /// The file cannot be read (permissions, I/O).
    Unreadable(String),
    /// The file has no `claudeAiOauth`, or blank tokens.
    LoggedOut,
    /// The server refused the refresh token, or there is none: only a new login helps.
    LoginNeeded(String),
    /// The endpoint redirected (or the client cannot be set up): only a setting change helps.
    Misconfigured(String),
}

/// What the daemon knows, which decides what it does next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum State {
    /// Starting up: nothing read yet.
    Unknown,
    Waiting(Waiting),
    /// A usable login that expires at `expires_at` (epoch ms; `None`: unknown, refresh now).
    Scheduled {
        expires_at: Option<i64>,
    },
    /// The last attempt failed transiently; try again at `until` (epoch ms).
    BackingOff {
        until: i64,
        retries: u32,
        reason: String,
    },
}

/// The next step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// Make a refresh attempt now.
    RefreshNow,
    /// Nothing to do before this long has passed (already capped at `MAX_SLEEP`).
    Sleep(Duration),
}

/// Decides the next step from the state and the wall clock.
pub fn next(state: &State, now: i64, lead: Duration) -> Next {
    let target = match state {
        State::Unknown | State::Waiting(_) => return Next::Sleep(MAX_SLEEP),
        State::Scheduled { expires_at: None } => return Next::RefreshNow,
        State::Scheduled {
            expires_at: Some(at),
        } => due_at(*at, lead),
        State::BackingOff { until, .. } => *until,
    };
    if now >= target {
        Next::RefreshNow
    } else {
        let ms = u64::try_from(target - now).unwrap_or(u64::MAX);
        Next::Sleep(Duration::from_millis(ms).min(MAX_SLEEP))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEAD: Duration = Duration::from_secs(15 * 60);
    const LEAD_MS: i64 = 15 * 60 * 1000;

    #[test]
    fn next_by_table() {
        let at = 100_000_000;
        let sched = State::Scheduled {
            expires_at: Some(at),
        };
        let backoff = State::BackingOff {
            until: 5_000,
            retries: 2,
            reason: "HTTP 503".into(),
        };
        let cases = [
            (&sched, at - LEAD_MS - 10_000_000, Next::Sleep(MAX_SLEEP)),
            (
                &sched,
                at - LEAD_MS - 1_500,
                Next::Sleep(Duration::from_millis(1_500)),
            ),
            (&sched, at - LEAD_MS, Next::RefreshNow),
            (&sched, at + 1, Next::RefreshNow),
            (&backoff, 4_000, Next::Sleep(Duration::from_secs(1))),
            (&backoff, 5_000, Next::RefreshNow),
            (&State::Scheduled { expires_at: None }, 0, Next::RefreshNow),
            (&State::Unknown, 0, Next::Sleep(MAX_SLEEP)),
            (
                &State::Waiting(Waiting::Missing),
                i64::MAX,
                Next::Sleep(MAX_SLEEP),
            ),
            (
                &State::Waiting(Waiting::LoginNeeded("invalid_grant".into())),
                at + 1,
                Next::Sleep(MAX_SLEEP),
            ),
        ];
        for (state, now, want) in cases {
            assert_eq!(next(state, now, LEAD), want, "state={state:?} now={now}");
        }
    }
}
