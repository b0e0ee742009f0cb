//! Pure timing decisions: when a token is due for refresh, how long to back off after a
//! transient failure, and what a `Retry-After` header asks for. No clock is read here: every
//! function takes "now" as an argument, so tests can put time wherever they like.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch, the unit of `expiresAt`. Times before 1970 count as 0.
pub fn epoch_millis(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The moment a token expiring at `expires_at` (epoch ms) should be refreshed.
pub fn due_at(expires_at: i64, lead: Duration) -> i64 {
    let lead = i64::try_from(lead.as_millis()).unwrap_or(i64::MAX);
    expires_at.saturating_sub(lead)
}

/// The contract's rule: due when `now + lead >= expiresAt`. A token without `expiresAt` has an
/// unknown lifetime and is treated as due, so it gets a known one.
pub fn is_due(now: i64, expires_at: Option<i64>, lead: Duration) -> bool {
    match expires_at {
        None => true,
        Some(at) => now >= due_at(at, lead),
    }
}

/// Exponential backoff with full jitter: the n-th retry waits a uniformly random time in
/// `[floor, min(cap, base * 2^n)]`. Full jitter spreads many clients hitting the same
/// overloaded endpoint; the small floor keeps a retry from being an instant hammer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub cap: Duration,
    pub floor: Duration,
}

impl Backoff {
    /// The daemon's and the one-shot commands' policy: about 1 s, doubling, at most 5 minutes.
    pub const STANDARD: Backoff = Backoff {
        base: Duration::from_secs(1),
        cap: Duration::from_secs(300),
        floor: Duration::from_millis(100),
    };

    /// The ceiling for retry number `attempt` (0 for the first retry).
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// The delay for retry number `attempt`, given `unit`, a random number in `[0, 1)`, and the
    /// server's `Retry-After`, which is honoured as a minimum.
    pub fn delay(&self, attempt: u32, unit: f64, retry_after: Option<Duration>) -> Duration {
        let ceiling = self.ceiling(attempt);
        let jittered = ceiling
            .mul_f64(unit.clamp(0.0, 1.0))
            .max(self.floor.min(ceiling));
        match retry_after {
            Some(ra) => jittered.max(ra),
            None => jittered,
        }
    }
}

impl Backoff {
    /// [`delay`](Self::delay), or `None` when waiting that long would overrun `remaining`:
    /// the one-shot commands then give up rather than sleep past their budget.
    pub fn delay_within(
        &self,
        attempt: u32,
        unit: f64,
        retry_after: Option<Duration>,
        remaining: Duration,
    ) -> Option<Duration> {
        let d = self.delay(attempt, unit, retry_after);
        (d <= remaining).then_some(d)
    }
}

/// A uniformly random number in `[0, 1)` from the OS. Jitter needs no more than that.
pub fn random_unit() -> f64 {
    let mut b = [0u8; 8];
    if getrandom::fill(&mut b).is_err() {
        // Without randomness, fall back to the ceiling's midpoint: still bounded, still fine.
        return 0.5;
    }
    (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64
}

/// Parses a `Retry-After` value: delay-seconds, or an HTTP date (a date in the past means now).
/// Anything else is ignored, as the RFC allows.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // An absurd number of seconds is still "a long time", not an error.
        return Some(Duration::from_secs(value.parse().unwrap_or(u64::MAX / 2)));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MIN: Duration = Duration::from_secs(60);

    #[test]
    fn due_by_table() {
        let lead = 15 * MIN;
        let exp = 10_000_000;
        let lead_ms = 15 * 60 * 1000;
        let cases = [
            (exp - lead_ms - 1, Some(exp), false),
            (exp - lead_ms, Some(exp), true),
            (exp - 1, Some(exp), true),
            (exp + 5, Some(exp), true),
            (0, None, true),
            (0, Some(0), true),
            (5, Some(i64::MIN), true),
        ];
        for (now, expires_at, want) in cases {
            assert_eq!(
                is_due(now, expires_at, lead),
                want,
                "now={now} exp={expires_at:?}"
            );
        }
        assert_eq!(due_at(exp, Duration::ZERO), exp);
        assert_eq!(due_at(i64::MIN, lead), i64::MIN);
    }

    #[test]
    fn backoff_ceiling_doubles_and_caps() {
        let b = Backoff::STANDARD;
        let secs: Vec<u64> = (0..12).map(|n| b.ceiling(n).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]);
        assert_eq!(b.ceiling(u32::MAX), b.cap);
    }

    #[test]
    fn retry_after_is_a_minimum() {
        let b = Backoff::STANDARD;
        let ra = Some(Duration::from_secs(7));
        assert_eq!(b.delay(0, 0.0, ra), Duration::from_secs(7));
        assert_eq!(
            b.delay(9, 0.99, Some(Duration::from_secs(1))),
            Duration::from_secs(297)
        );
    }

    #[test]
    fn delay_within_a_budget() {
        let b = Backoff::STANDARD;
        let ra = Some(Duration::from_secs(30));
        assert_eq!(b.delay_within(0, 0.5, ra, Duration::from_secs(29)), None);
        assert_eq!(
            b.delay_within(0, 0.5, ra, Duration::from_secs(30)),
            Some(Duration::from_secs(30))
        );
        assert_eq!(b.delay_within(3, 0.0, None, Duration::ZERO), None);
    }

    #[test]
    fn retry_after_by_table() {
        let now = UNIX_EPOCH + Duration::from_secs(1_445_412_480); // Wed, 21 Oct 2015 07:28:00 GMT
        let cases = [
            ("120", Some(120)),
            (" 3 ", Some(3)),
            ("0", Some(0)),
            ("Wed, 21 Oct 2015 07:28:30 GMT", Some(30)),
            ("Wed, 21 Oct 2015 07:27:00 GMT", Some(0)),
            ("Wednesday, 21-Oct-15 07:29:00 GMT", Some(60)),
            ("-1", None),
            ("1.5", None),
            ("soon", None),
            ("", None),
        ];
        for (value, want) in cases {
            assert_eq!(
                parse_retry_after(value, now).map(|d| d.as_secs()),
                want,
                "Retry-After: {value:?}"
            );
        }
    }

    proptest! {
        #[test]
        fn delay_stays_within_bounds(attempt in 0u32..64, unit in 0.0f64..1.0, ra in proptest::option::of(0u64..1000)) {
            let b = Backoff::STANDARD;
            let ra = ra.map(Duration::from_secs);
            let d = b.delay(attempt, unit, ra);
            prop_assert!(d >= b.floor);
            prop_assert!(d <= b.cap.max(ra.unwrap_or_default()));
            if let Some(ra) = ra { prop_assert!(d >= ra); }
        }

        #[test]
        fn retry_after_never_panics(s in ".{0,40}") {
            let _ = parse_retry_after(&s, SystemTime::now());
        }

        #[test]
        fn random_unit_is_in_range(_x in 0u8..8) {
            let u = random_unit();
            prop_assert!((0.0..1.0).contains(&u));
        }
    }
}
