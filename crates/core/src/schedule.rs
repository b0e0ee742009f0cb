//! Pure timing decisions: when a token is due for refresh, the floor under the refresh rate,
//! how long to back off after a transient failure, and what a `Retry-After` header asks for.
//! No clock is read here for a decision: every function takes "now" as an argument, so tests can
//! put time wherever they like. All arithmetic on server-supplied numbers and settings
//! saturates: no input makes it panic or wrap.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

use crate::secret::Secret;

/// Milliseconds since the Unix epoch, the unit of `expiresAt`. Times before 1970 count as 0.
pub fn epoch_millis(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Milliseconds of a duration, saturated into an `i64`.
pub fn millis_i64(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// The moment a token expiring at `expires_at` (epoch ms) should be refreshed.
pub fn due_at(expires_at: i64, lead: Duration) -> i64 {
    expires_at.saturating_sub(millis_i64(lead))
}

/// The contract's rule: due when `now + lead >= expiresAt`. A token without `expiresAt` has an
/// unknown lifetime and is treated as due, so it gets a known one.
pub fn is_due(now: i64, expires_at: Option<i64>, lead: Duration) -> bool {
    match expires_at {
        None => true,
        Some(at) => now >= due_at(at, lead),
    }
}

/// The lead actually used for a grant of lifetime `lifetime_ms` (when known): the setting, or
/// half the lifetime when the grant lives no longer than twice that. A grant that lives no
/// longer than the lead would otherwise be due the moment it arrives, and refreshed without
/// pause.
pub fn effective_lead(lead: Duration, lifetime_ms: Option<i64>) -> Duration {
    match lifetime_ms {
        Some(l) => lead.min(Duration::from_millis(u64::try_from(l / 2).unwrap_or(0))),
        None => lead,
    }
}

/// True when a grant of this lifetime is shorter than the lead would need (half-lifetime rule).
pub fn is_short_grant(lead: Duration, lifetime_ms: Option<i64>) -> bool {
    effective_lead(lead, lifetime_ms) < lead
}

/// No request replaces a grant this program obtained within this long of obtaining it.
pub const FLOOR: Duration = Duration::from_secs(60);

/// What this program remembers of the last grant it obtained for a login, kept in its own lock
/// file (under the flock) so the floor and the half-lifetime rule hold across processes. It
/// holds a fingerprint of the grant's refresh token, never the token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrantRecord {
    /// Wall clock when the request was sent, epoch ms.
    pub obtained_at: i64,
    /// A clock that counts through suspend and is not set by anyone (`CLOCK_BOOTTIME` on Linux,
    /// `CLOCK_MONOTONIC` on macOS), ms, when the request was sent: the floor is measured on it,
    /// so a wall clock stepped backwards cannot stretch it.
    pub obtained_boot: i64,
    /// `expiresAt` minus the time the request was sent, ms.
    pub lifetime_ms: i64,
    /// [`token_fingerprint`] of the refresh token the store holds after the grant.
    pub token: String,
}

/// A short, non-reversible fingerprint of a refresh token: 16 hex digits of its SHA-256.
pub fn token_fingerprint(token: &Secret) -> String {
    let digest = Sha256::digest(token.expose().as_bytes());
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

impl GrantRecord {
    const TAG: &'static str = "grant";

    /// Whether the store still holds this grant: its refresh token is the one recorded.
    pub fn matches(&self, refresh_token: Option<&Secret>) -> bool {
        refresh_token.is_some_and(|t| token_fingerprint(t) == self.token)
    }

    /// How long ago, by the boot clock, the grant was obtained. A boot clock behind the record
    /// means a reboot: the floor is long over.
    pub fn age(&self, now_boot: i64) -> Duration {
        match now_boot.checked_sub(self.obtained_boot) {
            Some(ms) if ms >= 0 => Duration::from_millis(ms as u64),
            _ => Duration::MAX,
        }
    }

    /// How much of the floor is left (zero when it is over). (Debug test builds can shorten
    /// the floor through a seam; everywhere else it is [`FLOOR`].)
    pub fn floor_left(&self, now_boot: i64) -> Duration {
        crate::seams::floor(FLOOR).saturating_sub(self.age(now_boot))
    }

    /// One line of text (no tab: the lock file's other lines are tab-separated).
    pub fn to_line(&self) -> String {
        format!(
            "{} {} {} {} {}\n",
            Self::TAG,
            self.obtained_at,
            self.obtained_boot,
            self.lifetime_ms,
            self.token
        )
    }

    /// Reads a line written by [`to_line`](Self::to_line); anything else is `None`.
    pub fn from_line(line: &str) -> Option<GrantRecord> {
        let mut f = line.split(' ');
        if f.next()? != Self::TAG {
            return None;
        }
        let record = GrantRecord {
            obtained_at: f.next()?.parse().ok()?,
            obtained_boot: f.next()?.parse().ok()?,
            lifetime_ms: f.next()?.parse().ok()?,
            token: f.next()?.to_owned(),
        };
        let hex_ok =
            record.token.len() == 16 && record.token.bytes().all(|b| b.is_ascii_hexdigit());
        (f.next().is_none() && hex_ok).then_some(record)
    }
}

/// The boot clock of [`GrantRecord::obtained_boot`], in ms.
// `time_t` and `c_long` are i64 on the 64-bit targets, not on every target.
#[allow(clippy::useless_conversion)]
pub fn boot_millis() -> i64 {
    #[cfg(target_os = "linux")]
    const CLOCK: libc::clockid_t = libc::CLOCK_BOOTTIME;
    #[cfg(not(target_os = "linux"))]
    const CLOCK: libc::clockid_t = libc::CLOCK_MONOTONIC;
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid clock id and a valid pointer to a timespec.
    if unsafe { libc::clock_gettime(CLOCK, &mut ts) } != 0 {
        return 0;
    }
    i64::from(ts.tv_sec)
        .saturating_mul(1000)
        .saturating_add(i64::from(ts.tv_nsec) / 1_000_000)
}

/// When the next refresh of a login may happen, by the wall clock (epoch ms): its due time
/// (with the half-lifetime rule when `record` is the stored grant's), but never inside the
/// floor of a grant this program obtained. `None` from `expires_at` means "due now".
pub fn next_refresh_at(
    expires_at: Option<i64>,
    refresh_token: Option<&Secret>,
    record: Option<&GrantRecord>,
    lead: Duration,
    now: i64,
    now_boot: i64,
) -> i64 {
    let ours = record.filter(|r| r.matches(refresh_token));
    let due = match expires_at {
        Some(at) => due_at(at, effective_lead(lead, ours.map(|r| r.lifetime_ms))),
        None => now,
    };
    match ours.map(|r| r.floor_left(now_boot)) {
        Some(left) if !left.is_zero() => due.max(now.saturating_add(millis_i64(left))),
        _ => due,
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

    /// Retrying the save of new tokens already in hand: quick, because until they are saved the
    /// store holds a refresh token the server has already spent.
    pub const SAVE: Backoff = Backoff {
        base: Duration::from_millis(500),
        cap: Duration::from_secs(10),
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
            Some(ra) => jittered.max(cap_retry_after(ra).0),
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

/// The longest `Retry-After` honoured: a server asking for more (a year, or 2^63 seconds) gets
/// this, so a hostile or broken answer cannot park the daemon for good.
pub const RETRY_AFTER_CAP: Duration = Duration::from_secs(3600);

/// Parses a `Retry-After` value: delay-seconds, or an HTTP date (a date in the past means now).
/// Anything else is ignored, as the RFC allows. Not capped: see [`cap_retry_after`].
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // An absurd number of seconds is still "a long time", not an error.
        return Some(Duration::from_secs(value.parse().unwrap_or(u64::MAX)));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// [`RETRY_AFTER_CAP`] applied; the flag says whether it cut the value.
pub fn cap_retry_after(asked: Duration) -> (Duration, bool) {
    (asked.min(RETRY_AFTER_CAP), asked > RETRY_AFTER_CAP)
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

    fn record(token: &Secret, lifetime_ms: i64, obtained_boot: i64) -> GrantRecord {
        GrantRecord {
            obtained_at: 1_000_000,
            obtained_boot,
            lifetime_ms,
            token: token_fingerprint(token),
        }
    }

    #[test]
    fn short_grants_are_due_at_half_their_lifetime() {
        let lead = 15 * MIN;
        let cases = [
            (Some(8 * 3_600_000), lead),
            (Some(30 * 60_000), lead),
            (Some(10 * 60_000), 5 * MIN),
            (Some(5_000), Duration::from_millis(2_500)),
            (Some(0), Duration::ZERO),
            (Some(-5), Duration::ZERO),
            (Some(i64::MIN), Duration::ZERO),
            (Some(i64::MAX), lead),
            (None, lead),
        ];
        for (lifetime, want) in cases {
            assert_eq!(
                effective_lead(lead, lifetime),
                want,
                "lifetime {lifetime:?}"
            );
        }
        assert!(is_short_grant(lead, Some(10 * 60_000)));
        assert!(!is_short_grant(lead, Some(8 * 3_600_000)));
    }

    #[test]
    fn the_floor_and_the_half_lifetime_apply_only_to_the_grant_recorded() {
        let ours = Secret::new("sk-ant-ort01-ours");
        let theirs = Secret::new("sk-ant-ort01-theirs");
        let lead = 15 * MIN;
        let now = 10_000_000;
        // A 10-minute grant of ours, obtained 2 s ago (boot clock 100 s → 102 s).
        let r = record(&ours, 600_000, 100_000);
        let exp = now + 598_000;
        let next = |token: &Secret, boot: i64| {
            next_refresh_at(Some(exp), Some(token), Some(&r), lead, now, boot)
        };
        assert_eq!(next(&ours, 102_000), exp - 300_000, "half its lifetime");
        assert_eq!(
            next(&theirs, 102_000),
            exp - 900_000,
            "someone else's grant: the lead"
        );
        // A 5-second grant of ours: due long before the floor ends; the floor wins.
        let short = record(&ours, 5_000, 100_000);
        let at = next_refresh_at(
            Some(now + 3_000),
            Some(&ours),
            Some(&short),
            lead,
            now,
            102_000,
        );
        assert_eq!(at, now + 58_000, "not before 60 s after it was obtained");
        // Expired long ago, still held back by the floor...
        let at = next_refresh_at(
            Some(i64::MIN),
            Some(&ours),
            Some(&short),
            lead,
            now,
            159_999,
        );
        assert_eq!(at, now + 1);
        // ...until it ends; and a reboot (boot clock behind the record) ends it too.
        for boot in [160_000, 5] {
            let at = next_refresh_at(Some(i64::MIN), Some(&ours), Some(&short), lead, now, boot);
            assert_eq!(at, i64::MIN);
        }
        // A wall clock stepped back an hour changes nothing: the floor runs on the boot clock.
        let at = next_refresh_at(
            Some(0),
            Some(&ours),
            Some(&short),
            lead,
            now - 3_600_000,
            130_000,
        );
        assert_eq!(at, now - 3_600_000 + 30_000);
    }

    #[test]
    fn grant_records_round_trip_and_refuse_garbage() {
        let r = record(&Secret::new("x"), 28_800_000, -3);
        let line = r.to_line();
        assert!(!line.contains('\t') && !line.contains("x "), "{line}");
        assert_eq!(GrantRecord::from_line(line.trim_end()), Some(r));
        for bad in [
            "",
            "grant",
            "grant 1 2 3",
            "grant 1 2 3 nothex0123456789",
            "grant 1 2 3 0123456789abcdef extra",
            "grant a 2 3 0123456789abcdef",
            "/home/u/.claude/.oauth_refresh.lock\t1\t2\t3",
        ] {
            assert_eq!(GrantRecord::from_line(bad), None, "{bad:?}");
        }
        assert_eq!(token_fingerprint(&Secret::new("x")).len(), 16);
    }

    #[test]
    fn retry_after_is_capped_at_an_hour() {
        let now = SystemTime::now();
        for (value, want) in [
            ("31536000", 3600),
            ("9223372036854775", 3600),
            ("99999999999999999999999", 3600),
            ("3599", 3599),
        ] {
            let asked = parse_retry_after(value, now).unwrap();
            assert_eq!(cap_retry_after(asked).0.as_secs(), want, "{value}");
        }
        let b = Backoff::STANDARD;
        assert_eq!(b.delay(0, 0.5, Some(Duration::MAX)), RETRY_AFTER_CAP);
    }

    proptest! {
        #[test]
        fn timing_arithmetic_never_panics(
            expires_at in any::<i64>(),
            now in any::<i64>(),
            boot in any::<i64>(),
            obtained_boot in any::<i64>(),
            lifetime in any::<i64>(),
            lead_ms in any::<u64>(),
            ra in any::<u64>(),
            attempt in any::<u32>(),
        ) {
            let token = Secret::new("t");
            let lead = Duration::from_millis(lead_ms);
            let r = record(&token, lifetime, obtained_boot);
            let at = next_refresh_at(Some(expires_at), Some(&token), Some(&r), lead, now, boot);
            // Never later than the floor allows, never earlier than the lead alone.
            prop_assert!(at >= due_at(expires_at, lead));
            let _ = is_due(now, Some(expires_at), lead);
            let d = Backoff::STANDARD.delay(attempt, 0.5, Some(Duration::from_secs(ra)));
            prop_assert!(d <= RETRY_AFTER_CAP.max(Backoff::STANDARD.cap));
            let _ = r.floor_left(boot);
        }

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
