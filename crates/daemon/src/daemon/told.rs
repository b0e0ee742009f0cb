//! What a person has been told about one login, and the rules for telling more (CONTRACT.md
//! "Telling the user before a login dies"): `login-needed` when a login is refused or blanked
//! (again every 12 hours while it lasts) or removed (once); `login-expiring` from 3 days before
//! `refreshTokenExpiresAt` (once for each distinct deadline entering that window, then once a
//! day); `refresh-failing` after 30 minutes of failures, or when the token expired while failing;
//! `recovered` once, when a login whose login-needed or refresh-failing was actually sent works
//! again. Anything that shows the login works (a refresh that worked, another process's refresh
//! adopted, a new usable login in the store) ends a run of failures, told or not (CONTRACT.md
//! "Notices tell the truth"). Pure: the caller passes the clocks and turns the answers into
//! notices.

use std::time::{Duration, Instant};

use super::notify_user::UserEvent;

/// The window before `refreshTokenExpiresAt` in which `login-expiring` is sent.
pub(super) const EXPIRING_WINDOW_MS: i64 = 3 * 24 * 3600 * 1000;
/// How many `refreshTokenExpiresAt` values login-expiring is remembered for (a login going back
/// and forth between two stores' versions is told once for each, not on every swap).
const EXPIRING_REMEMBERED: usize = 8;

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
    /// The deadlines login-expiring was sent for, each with when it was last sent (newest
    /// last; at most [`EXPIRING_REMEMBERED`]).
    expiring: Vec<(i64, Instant)>,
    /// The deadline login-expiring was last sent for: the one repeated daily.
    expiring_current: Option<i64>,
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
            expiring: Vec::new(),
            expiring_current: None,
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

    /// The login works: a refresh worked, another process's refresh was adopted, or a new
    /// usable login was read from the store. Ends a login-needed episode and a run of failures
    /// alike, and returns whether to send recovered: only when login-needed or refresh-failing
    /// was actually sent.
    pub(super) fn works(&mut self) -> bool {
        let needed = self.needed.take().is_some();
        let failing = std::mem::replace(&mut self.failing_told, false);
        self.failing_since = None;
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
            .expiring_current
            .and_then(|d| self.expiring.iter().find(|(e, _)| *e == d))
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
            // Once for each deadline, then daily for the one in force (a deadline told before
            // that comes back waits for its day).
            let told_at = self
                .expiring
                .iter()
                .find(|(d, _)| *d == end)
                .map(|(_, at)| *at);
            let again = told_at
                .is_none_or(|at| now.saturating_duration_since(at) >= self.hour.saturating_mul(24));
            self.expiring_current = Some(end);
            if again {
                self.expiring.retain(|(d, _)| *d != end);
                self.expiring.push((end, now));
                if self.expiring.len() > EXPIRING_REMEMBERED {
                    self.expiring.remove(0);
                }
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
        assert!(t.works(), "a usable login appearing is recovered");
        assert!(!t.works(), "once");

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
        assert!(t.works(), "a refresh after refresh-failing is recovered");
        assert!(!t.works());

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
        assert!(!t.works());
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

    /// One step of a story told to [`Told`], at a time in "hours" from the start.
    #[derive(Clone, Copy, Debug)]
    enum Step {
        /// A transient failure.
        Fail(u32),
        /// The client or the endpoint refused: returns whether refresh-failing is sent.
        Misconfigured(u32),
        /// Refused, blanked or removed: returns whether login-needed is sent.
        NeedsLogin(u32, Need),
        /// A refresh worked, one was adopted, or a new usable login was read.
        Works,
        /// The loop's tick at this hour, the login ending at this many days from the start.
        Tick(u32, Option<i64>),
    }

    /// Runs `steps` and returns every notice sent, in order.
    fn story(steps: &[Step]) -> Vec<UserEvent> {
        let t0 = Instant::now();
        let at = |h: u32| t0 + H * h;
        let mut t = Told::new(H);
        let mut sent = Vec::new();
        for step in steps {
            match *step {
                Step::Fail(h) => t.failing(at(h)),
                Step::Misconfigured(h) => {
                    if t.misconfigured(at(h)) {
                        sent.push(UserEvent::RefreshFailing);
                    }
                }
                Step::NeedsLogin(h, why) => {
                    if t.needs_login(at(h), why) {
                        sent.push(UserEvent::LoginNeeded);
                    }
                }
                Step::Works => {
                    if t.works() {
                        sent.push(UserEvent::Recovered);
                    }
                }
                Step::Tick(h, ends) => {
                    let wall = 100 * DAY_MS + i64::from(h) * 3_600_000;
                    let ends = ends.map(|d| 100 * DAY_MS + d * DAY_MS);
                    sent.extend(events(&t.tick(at(h), wall, Some(wall + 1), ends)));
                }
            }
        }
        sent
    }

    #[test]
    fn notices_tell_the_truth() {
        use Step::*;
        use UserEvent::*;
        let cases: &[(&str, &[Step], &[UserEvent])] = &[
            (
                "one failure, then a new login from the user: nothing, then or later",
                &[Fail(0), Works, Tick(1, None), Tick(30, None)],
                &[],
            ),
            (
                "one failure, then another process's refresh adopted: nothing",
                &[Fail(0), Works, Fail(2), Tick(2, None)],
                &[],
            ),
            (
                "a run of failures told, then a new login: recovered, once",
                &[Fail(0), Tick(1, None), Works, Works, Tick(40, None)],
                &[RefreshFailing, Recovered],
            ),
            (
                "failures that end before anyone was told: no recovered",
                &[Fail(0), Tick(0, None), Works],
                &[],
            ),
            (
                "a new run of failures after a recovery is told again",
                &[Fail(0), Tick(1, None), Works, Fail(2), Tick(3, None)],
                &[RefreshFailing, Recovered, RefreshFailing],
            ),
            (
                "a refused client, then a new login: recovered",
                &[Misconfigured(0), Misconfigured(1), Works],
                &[RefreshFailing, Recovered],
            ),
            (
                "a refused login, then a new one: recovered",
                &[NeedsLogin(0, Need::Refused), Works, Works],
                &[LoginNeeded, Recovered],
            ),
            (
                "nothing ever told: no recovered",
                &[Works, Tick(1, None), Works],
                &[],
            ),
            (
                "login-expiring: once when the deadline enters the window, not again on a re-read",
                &[
                    Tick(0, Some(5)),
                    Tick(1, Some(2)),
                    Tick(2, Some(2)),
                    Tick(3, Some(2)),
                ],
                &[LoginExpiring],
            ),
            (
                "login-expiring: then daily",
                &[
                    Tick(0, Some(2)),
                    Tick(23, Some(2)),
                    Tick(24, Some(2)),
                    Tick(47, Some(2)),
                ],
                &[LoginExpiring, LoginExpiring],
            ),
            (
                "login-expiring: a new deadline is told at once, an old one back is not",
                &[
                    Tick(0, Some(2)),
                    Tick(1, Some(1)),
                    Tick(2, Some(2)),
                    Tick(3, Some(1)),
                ],
                &[LoginExpiring, LoginExpiring],
            ),
            (
                "login-expiring: the deadline in force is repeated a day after it was told",
                &[
                    Tick(0, Some(2)),
                    Tick(1, Some(1)),
                    Tick(2, Some(2)),
                    Tick(24, Some(2)),
                ],
                &[LoginExpiring, LoginExpiring, LoginExpiring],
            ),
        ];
        for (what, steps, want) in cases {
            assert_eq!(story(steps), *want, "{what}");
        }
    }
}
