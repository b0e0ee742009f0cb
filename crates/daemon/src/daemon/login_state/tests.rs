//! Unit tests of one login's state: scheduling across a suspend, the login-expiry warning,
//! backoff growth and the Retry-After cap, through a wall clock the test moves by hand.

use super::*;
use std::cell::Cell;
use tokend_core::oauth::{ClientConfig, OAuthError};
use tokend_core::settings::parse_endpoint_url;

/// A wall clock the test moves by hand.
#[derive(Clone)]
struct FakeClock(Rc<Cell<i64>>);

impl Clock for FakeClock {
    fn now(&self) -> i64 {
        self.0.get()
    }
}

fn daemon(clock: FakeClock) -> LoginState<FakeClock> {
    let policy = Policy {
        lead: Duration::from_secs(15 * 60),
        client_id: "test-client".into(),
        client_id_origin: "the test".into(),
        client: ClientConfig {
            token_url: parse_endpoint_url("http://127.0.0.1:9/token").unwrap(),
            user_agent: "test".into(),
        },
        honour_pause: false,
    };
    LoginState::new(Store::new("/nonexistent/.credentials.json"), policy, clock)
}

#[test]
fn a_suspend_past_the_deadline_refreshes_on_wake() {
    const HOUR: i64 = 3_600_000;
    let start = 1_800_000_000_000;
    let clock = FakeClock(Rc::new(Cell::new(start)));
    let mut d = daemon(clock.clone());
    d.state = State::Scheduled {
        expires_at: Some(start + 8 * HOUR),
        at: start + 8 * HOUR - HOUR / 4,
        force: false,
    };
    // Hours before the deadline, the loop sleeps no longer than a minute at a time.
    assert_eq!(d.next_step(), Next::Sleep(plan::MAX_SLEEP));
    // The laptop sleeps for nine hours; on waking, the first look at the clock says "now".
    clock.0.set(start + 9 * HOUR);
    assert_eq!(d.next_step(), Next::RefreshNow { force: false });
    // A clock set backwards moves the deadline away again rather than firing early.
    clock.0.set(start - 24 * HOUR);
    assert_eq!(d.next_step(), Next::Sleep(plan::MAX_SLEEP));
}

#[test]
fn the_login_expiry_warning_starts_three_days_before() {
    const DAY: i64 = 86_400_000;
    let clock = FakeClock(Rc::new(Cell::new(100 * DAY)));
    let mut d = daemon(clock.clone());
    d.login_expires_at = Some(104 * DAY);
    assert_eq!(d.login_ending(), None, "four days ahead: quiet");
    clock.0.set(101 * DAY);
    assert_eq!(d.login_ending(), Some(104 * DAY), "three days ahead: warn");
    d.check_login_expiry();
    assert_eq!(d.warned_login_expiry, Some(104 * DAY));
    clock.0.set(105 * DAY);
    assert_eq!(d.login_ending(), Some(104 * DAY), "past it: still says so");
}

fn transient(ra: Option<u64>) -> RefreshError {
    RefreshError::Transient {
        error: OAuthError::Transient {
            reason: "HTTP 503".into(),
            retry_after: ra.map(Duration::from_secs),
        },
        attempts: 1,
    }
}

fn left(d: &LoginState<FakeClock>) -> Duration {
    let State::BackingOff { until, .. } = &d.state else {
        panic!("expected backoff, got {:?}", d.state)
    };
    until.saturating_duration_since(Instant::now())
}

#[test]
fn backoff_grows_and_honours_retry_after() {
    let clock = FakeClock(Rc::new(Cell::new(1_000_000)));
    let mut d = daemon(clock.clone());
    d.back_off(&transient(Some(30)), Backoff::STANDARD);
    assert!(
        left(&d) >= Duration::from_secs(29),
        "Retry-After is a minimum"
    );
    for _ in 0..12 {
        d.back_off(&transient(None), Backoff::STANDARD);
    }
    let State::BackingOff { retries, .. } = d.state.clone() else {
        panic!("expected backoff")
    };
    assert_eq!(retries, 12);
    assert!(left(&d) <= Duration::from_secs(300), "capped at 5 minutes");
}

#[test]
fn a_huge_retry_after_is_capped_and_the_wall_clock_does_not_matter() {
    let clock = FakeClock(Rc::new(Cell::new(i64::MAX - 5)));
    let mut d = daemon(clock.clone());
    for secs in [31_536_000, 9_223_372_036_854_775, u64::MAX] {
        d.back_off(&transient(Some(secs)), Backoff::STANDARD);
        let l = left(&d);
        assert!(
            l <= Duration::from_secs(3600) && l >= Duration::from_secs(3590),
            "Retry-After {secs} gives {l:?}"
        );
    }
    // A wall clock stepped back by an hour (or to anything) leaves the backoff as it is.
    clock.0.set(i64::MIN);
    assert!(matches!(d.next_step(), Next::Sleep(s) if s == plan::MAX_SLEEP));
}
