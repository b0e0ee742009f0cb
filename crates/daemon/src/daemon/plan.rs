//! The daemon's pure decisions: what it knows about the login, and what to do next given the
//! clocks. No I/O and no clock of its own, so every case is a table row in the tests.
//!
//! Two clocks, on purpose: the refresh time is a wall-clock moment (`expiresAt` is one, and a
//! laptop that slept past it must refresh on waking), while a backoff is a length of time (a
//! wall clock stepped back an hour must not stretch a 3 s retry into an hour), so it runs on
//! the monotonic clock.

use std::time::{Duration, Instant};

/// The longest the daemon sleeps in one go. A laptop that slept through the deadline, or a
/// wall clock that jumped, is noticed within this long of waking (pizauth wakes every 37 s for
/// the same reason).
pub const MAX_SLEEP: Duration = Duration::from_secs(60);

/// Why the daemon is waiting for the store to change rather than for a time.
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
    /// The endpoint redirected, or refused the client: only a setting change helps.
    Misconfigured(String),
}

/// What the daemon knows, which decides what it does next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum State {
    /// Starting up: nothing read yet.
    Unknown,
    Waiting(Waiting),
    /// A usable login: refresh at `at` (epoch ms, wall clock). `force`: SIGUSR1 asked for a
    /// refresh that the 60 s floor held back until `at`.
    Scheduled {
        expires_at: Option<i64>,
        at: i64,
        force: bool,
    },
    /// The last attempt failed (or its save did); try again at `until` (monotonic).
    BackingOff {
        until: Instant,
        retries: u32,
        reason: String,
    },
}

/// The next step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// Make a refresh attempt now; `force`: a SIGUSR1 whose time has come.
    RefreshNow { force: bool },
    /// Nothing to do before this long has passed (already capped at `MAX_SLEEP`).
    Sleep(Duration),
}

/// Decides the next step from the state and the clocks (`now`: wall, epoch ms).
pub fn next(state: &State, now: i64, mono: Instant) -> Next {
    match state {
        State::Unknown | State::Waiting(_) => Next::Sleep(MAX_SLEEP),
        State::Scheduled { at, force, .. } => {
            if now >= *at {
                Next::RefreshNow { force: *force }
            } else {
                let ms = u64::try_from(at.saturating_sub(now)).unwrap_or(u64::MAX);
                Next::Sleep(Duration::from_millis(ms).min(MAX_SLEEP))
            }
        }
        State::BackingOff { until, .. } => match until.checked_duration_since(mono) {
            Some(left) if !left.is_zero() => Next::Sleep(left.min(MAX_SLEEP)),
            _ => Next::RefreshNow { force: false },
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn next_by_table() {
        let at = 100_000_000;
        let sched = State::Scheduled {
            expires_at: Some(at + 900_000),
            at,
            force: false,
        };
        let forced = State::Scheduled {
            expires_at: Some(at + 900_000),
            at,
            force: true,
        };
        let mono = Instant::now();
        let backoff = State::BackingOff {
            until: mono + Duration::from_secs(1),
            retries: 2,
            reason: "HTTP 503".into(),
        };
        let now_force = Next::RefreshNow { force: false };
        let cases = [
            (&sched, at - 10_000_000, mono, Next::Sleep(MAX_SLEEP)),
            (
                &sched,
                at - 1_500,
                mono,
                Next::Sleep(Duration::from_millis(1_500)),
            ),
            (&sched, at, mono, now_force),
            (&sched, at + 1, mono, now_force),
            (&forced, at, mono, Next::RefreshNow { force: true }),
            (&forced, at - 1, mono, Next::Sleep(Duration::from_millis(1))),
            (&backoff, 0, mono, Next::Sleep(Duration::from_secs(1))),
            (&backoff, 0, mono + Duration::from_secs(1), now_force),
            (&backoff, 0, mono + Duration::from_secs(9), now_force),
            (&State::Unknown, 0, mono, Next::Sleep(MAX_SLEEP)),
            (
                &State::Waiting(Waiting::Missing),
                i64::MAX,
                mono,
                Next::Sleep(MAX_SLEEP),
            ),
            (
                &State::Waiting(Waiting::LoginNeeded("invalid_grant".into())),
                at + 1,
                mono,
                Next::Sleep(MAX_SLEEP),
            ),
        ];
        for (state, now, mono_now, want) in cases {
            assert_eq!(
                next(state, now, mono_now),
                want,
                "state={state:?} now={now}"
            );
        }
    }

    #[test]
    fn a_backoff_ignores_the_wall_clock() {
        let mono = Instant::now();
        let backoff = State::BackingOff {
            until: mono + Duration::from_secs(3),
            retries: 0,
            reason: "HTTP 503".into(),
        };
        // The wall clock steps back an hour (or forward a year): a 3 s retry stays 3 s away.
        for wall in [0, 1_800_000_000_000 - 3_600_000, i64::MAX, i64::MIN] {
            assert_eq!(
                next(&backoff, wall, mono),
                Next::Sleep(Duration::from_secs(3))
            );
        }
    }

    proptest! {
        #[test]
        fn never_panics_and_never_oversleeps(at in any::<i64>(), now in any::<i64>(), force: bool) {
            let s = State::Scheduled { expires_at: Some(at), at, force };
            match next(&s, now, Instant::now()) {
                Next::Sleep(d) => prop_assert!(d <= MAX_SLEEP && now < at),
                Next::RefreshNow { .. } => prop_assert!(now >= at),
            }
        }
    }
}
