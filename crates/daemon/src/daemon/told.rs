//! What a person has been told about one login, and the rules for telling more (CONTRACT.md
//! "Telling the user before a login dies"): `login-needed` when a login is refused or blanked
//! (again every 12 hours while it lasts) or removed (once); `login-expiring` from 3 days before
//! `refreshTokenExpiresAt` (then once a day); `refresh-failing` after 30 minutes of failures, or
//! when the token expired while failing; `recovered` once, when a login that needed a person
//! works again. Pure: the caller passes the clocks and turns the answers into notices.

use std::time::{Duration, Instant};

use super::notify_user::UserEvent;

/// The window before `refreshTokenExpiresAt` in which `login-expiring` is sent.
pub(super) const EXPIRING_WINDOW_MS: i64 = 3 * 24 * 3600 * 1000;

/// An event to send now, with its deadline (epoch ms) when it has one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Due {
    pub event: UserEvent,
    pub deadline: Option<i64>,
}

/// Why a login needs a person.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Need {
    /// Refused or blanked: repeated every 12 hours.
    Refused,
    /// Removed (a logout, by anyone): said once.
    Removed,
}

#[derive(Debug)]
pub(super) struct Told {
    /// How long an hour is (a test seam shortens it; see `seams::notify_hour`).
    hour: Duration,
    /// When login-needed was last sent, and why.
    needed: Option<(Instant, Need)>,
    /// The deadline login-expiring was last sent for, and when.
    expiring: Option<(i64, Instant)>,
    /// Since when refreshes have been failing (cleared by a success).
    failing_since: Option<Instant>,
    /// refresh-failing was sent for the current run of failures.
    failing_told: bool,
}

impl Told {
    pub(super) fn new(hour: Duration) -> Self {
        Told {
            hour,
            needed: None,
            expiring: None,
            failing_since: None,
            failing_told: false,
        }
    }

    /// The login needs a person. Returns whether to send login-needed now (not when it was
    /// already sent for this episode: the 12-hour repeat is `tick`'s).
    pub(super) fn needs_login(&mut self, now: Instant, why: Need) -> bool {
        if self.needed.is_some() {
            return false;
        }
        self.needed = Some((now, why));
        true
    }

    /// A refresh failed in a way that may pass (network, 5xx, a save that failed).
    pub(super) fn failing(&mut self, now: Instant) {
        self.failing_since.get_or_insert(now);
    }

    /// The server refused the client or the endpoint misbehaves: a setting, not the login, needs
    /// a person. Returns whether to send refresh-failing now (once per episode).
    pub(super) fn misconfigured(&mut self, now: Instant) -> bool {
        self.failing_since.get_or_insert(now);
        !std::mem::replace(&mut self.failing_told, true)
    }

    /// The login works (a usable login in the store, or a refresh that succeeded). Returns
    /// whether to send recovered: only after login-needed or refresh-failing was sent.
    pub(super) fn works(&mut self, refreshed: bool) -> bool {
        let needed = self.needed.take().is_some();
        // A usable login in the store ends a login-needed episode; only an attempt that worked
        // ends a run of failures.
        let failing = refreshed && self.failing_told;
        if refreshed {
            self.failing_since = None;
            self.failing_told = false;
        }
        needed || failing
    }

    /// When `tick` may next have something to say (so the loop wakes for it).
    pub(super) fn next_at(&self) -> Option<Instant> {
        let repeat = match self.needed {
            Some((at, Need::Refused)) => at.checked_add(self.hour.saturating_mul(12)),
            _ => None,
        };
        let failing = self
            .failing_since
            .filter(|_| !self.failing_told)
            .and_then(|since| since.checked_add(self.hour / 2));
        let expiring = self
            .expiring
            .and_then(|(_, at)| at.checked_add(self.hour.saturating_mul(24)));
        [repeat, failing, expiring].into_iter().flatten().min()
    }

    /// What is due at `now` (monotonic) and `wall` (epoch ms), given the token's expiry and the
    /// login's own end.
    pub(super) fn tick(
        &mut self,
        now: Instant,
        wall: i64,
        expires_at: Option<i64>,
        login_ends: Option<i64>,
    ) -> Vec<Due> {
        let mut due = Vec::new();
        if let Some((at, Need::Refused)) = self.needed
            && now.saturating_duration_since(at) >= self.hour.saturating_mul(12)
        {
            self.needed = Some((now, Need::Refused));
            due.push(Due {
                event: UserEvent::LoginNeeded,
                deadline: None,
            });
        }
        if let Some(since) = self.failing_since
            && !self.failing_told
        {
            let long = now.saturating_duration_since(since) >= self.hour / 2;
            let expired = expires_at.is_some_and(|at| at <= wall);
            if long || expired {
                self.failing_told = true;
                due.push(Due {
                    event: UserEvent::RefreshFailing,
                    deadline: expires_at,
                });
            }
        }
        if let Some(end) = login_ends
            && end.saturating_sub(wall) <= EXPIRING_WINDOW_MS
            && self.needed.is_none()
        {
            let again = match self.expiring {
                Some((deadline, at)) if deadline == end => {
                    now.saturating_duration_since(at) >= self.hour.saturating_mul(24)
                }
                _ => true,
            };
            if again {
                self.expiring = Some((end, now));
                due.push(Due {
                    event: UserEvent::LoginExpiring,
                    deadline: Some(end),
                });
            }
        }
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: Duration = Duration::from_secs(3600);
    const DAY_MS: i64 = 86_400_000;

    fn events(d: &[Due]) -> Vec<UserEvent> {
        d.iter().map(|d| d.event).collect()
    }

    #[test]
    fn login_needed_repeats_every_12_hours_but_a_removal_is_said_once() {
        let t0 = Instant::now();
        let mut t = Told::new(H);
        assert!(t.needs_login(t0, Need::Refused));
        assert!(
            !t.needs_login(t0 + H, Need::Refused),
            "not twice in one episode"
        );
        assert!(t.tick(t0 + 11 * H, 0, None, None).is_empty());
        assert_eq!(
            events(&t.tick(t0 + 12 * H, 0, None, None)),
            [UserEvent::LoginNeeded]
        );
        assert!(
            t.tick(t0 + 13 * H, 0, None, None).is_empty(),
            "12 h from the repeat"
        );
        assert_eq!(
            events(&t.tick(t0 + 24 * H, 0, None, None)),
            [UserEvent::LoginNeeded]
        );
        assert!(t.works(false), "a usable login appearing is recovered");
        assert!(!t.works(false), "once");

        let mut t = Told::new(H);
        assert!(t.needs_login(t0, Need::Removed));
        assert!(
            t.tick(t0 + 100 * H, 0, None, None).is_empty(),
            "a removal is not repeated"
        );
    }

    #[test]
    fn refresh_failing_after_30_minutes_or_when_the_token_expired_and_recovered_after_success() {
        let t0 = Instant::now();
        let mut t = Told::new(H);
        t.failing(t0);
        t.failing(t0 + H / 4);
        assert!(t.tick(t0 + H / 4, 0, Some(10), None).is_empty());
        let due = t.tick(t0 + H / 2, 0, Some(10), None);
        assert_eq!(
            due,
            [Due {
                event: UserEvent::RefreshFailing,
                deadline: Some(10)
            }]
        );
        assert!(
            t.tick(t0 + 2 * H, 0, Some(10), None).is_empty(),
            "once per run of failures"
        );
        assert!(!t.works(false), "a store read is not a refresh that worked");
        assert!(
            t.works(true),
            "a refresh after refresh-failing is recovered"
        );
        assert!(!t.works(true));

        // Expired while failing: at once, with the token's expiry as the deadline.
        let mut t = Told::new(H);
        t.failing(t0);
        let due = t.tick(t0 + H / 60, 1_000, Some(999), None);
        assert_eq!(
            due,
            [Due {
                event: UserEvent::RefreshFailing,
                deadline: Some(999)
            }]
        );
        // Failures that end before anyone was told need no "recovered".
        let mut t = Told::new(H);
        t.failing(t0);
        assert!(!t.works(true));
    }

    #[test]
    fn login_expiring_from_three_days_before_then_daily_and_again_for_a_new_deadline() {
        let t0 = Instant::now();
        let wall = 100 * DAY_MS;
        let mut t = Told::new(H);
        assert!(
            t.tick(t0, wall, None, Some(wall + 4 * DAY_MS)).is_empty(),
            "4 days: quiet"
        );
        let end = wall + 3 * DAY_MS;
        assert_eq!(
            t.tick(t0, wall, None, Some(end)),
            [Due {
                event: UserEvent::LoginExpiring,
                deadline: Some(end)
            }]
        );
        assert!(t.tick(t0 + 23 * H, wall, None, Some(end)).is_empty());
        assert_eq!(
            events(&t.tick(t0 + 24 * H, wall, None, Some(end))),
            [UserEvent::LoginExpiring]
        );
        // A new login with a new deadline, itself inside the window: told at once.
        assert_eq!(
            events(&t.tick(t0 + 25 * H, wall, None, Some(end - 1))),
            [UserEvent::LoginExpiring]
        );
        // Past its end the login is dead anyway; a dead login is told as login-needed instead.
        t.needs_login(t0 + 26 * H, Need::Refused);
        assert!(
            t.tick(t0 + 60 * H, wall, None, Some(end - 1))
                .iter()
                .all(|d| d.event != UserEvent::LoginExpiring)
        );
    }
}
