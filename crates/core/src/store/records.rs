//! The records this program keeps in its own lock file besides the grant record (which
//! `schedule` owns): the refresh token being spent and by which process, the account of
//! this program's own login, and the pause a transient failure asks of the next requests.
//! Each is one line starting with its tag, holding a fingerprint of a token (never a token).

use std::time::Duration;

use super::process;
use crate::schedule::{RETRY_AFTER_CAP, cap_retry_after, millis_i64, token_fingerprint};
use crate::secret::Secret;
use crate::settings::format_duration;

fn is_fingerprint(s: &str) -> bool {
    s.len() == 16 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A refresh token on its way to the server, or spent with its answer not saved yet: from just
/// before the request until the answer is saved (or the request failed), the lock file names
/// its fingerprint and the process that sent it. The store still shows that token meanwhile (a
/// save that failed leaves it there), and no other process may send it while that process
/// lives: it holds the only answer the server will give. A dead sender's record holds nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpentRecord {
    /// [`token_fingerprint`] of the refresh token sent.
    pub token: String,
    pub pid: u32,
    /// The sender's start time (Linux: clock ticks after boot, from `/proc/<pid>/stat`), so a
    /// pid reused by another process is not taken for the sender; `None` where unknown.
    pub started: Option<u64>,
}

impl SpentRecord {
    const TAG: &'static str = "spent";

    /// This process, about to send `token`.
    pub fn this_process(token: &Secret) -> SpentRecord {
        let pid = std::process::id();
        SpentRecord {
            token: token_fingerprint(token),
            pid,
            started: process::start_time(pid),
        }
    }

    /// The pid of another live claude-tokend that spent `token` and has not saved the answer:
    /// `token` must not be sent. `None`: nothing holds it back (another token, this very
    /// process, or a sender that is gone).
    pub fn holder_of(&self, token: &Secret) -> Option<u32> {
        (self.token == token_fingerprint(token)
            && self.pid != std::process::id()
            && process::runs_this_program(self.pid, self.started))
        .then_some(self.pid)
    }

    pub fn to_line(&self) -> String {
        let started = self.started.map_or("-".to_owned(), |s| s.to_string());
        format!("{} {} {} {started}\n", Self::TAG, self.token, self.pid)
    }

    pub fn from_line(line: &str) -> Option<SpentRecord> {
        let mut f = line.split(' ');
        if f.next()? != Self::TAG {
            return None;
        }
        let token = f.next().filter(|t| is_fingerprint(t))?.to_owned();
        let pid = f.next()?.parse().ok().filter(|p| *p > 0)?;
        let started = match f.next()? {
            "-" => None,
            s => Some(s.parse().ok()?),
        };
        f.next().is_none().then_some(SpentRecord {
            token,
            pid,
            started,
        })
    }
}

/// A daemon keeping this login fresh: one line per live daemon, added when it starts keeping
/// the login and removed when it stops. A daemon that crashed leaves its line, which holds
/// nothing: a keeper is a live process running this program (the start time tells a reused
/// pid apart), so a dead one's line is ignored and dropped by the next daemon's write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeeperRecord {
    pub pid: u32,
    /// As [`SpentRecord::started`].
    pub started: Option<u64>,
}

impl KeeperRecord {
    const TAG: &'static str = "keeper";

    /// This process.
    pub fn this_process() -> KeeperRecord {
        let pid = std::process::id();
        KeeperRecord {
            pid,
            started: process::start_time(pid),
        }
    }

    /// Whether the daemon it names still runs.
    pub fn is_live(&self) -> bool {
        process::runs_this_program(self.pid, self.started)
    }

    pub fn to_line(&self) -> String {
        let started = self.started.map_or("-".to_owned(), |s| s.to_string());
        format!("{} {} {started}\n", Self::TAG, self.pid)
    }

    pub fn from_line(line: &str) -> Option<KeeperRecord> {
        let mut f = line.split(' ');
        if f.next()? != Self::TAG {
            return None;
        }
        let pid = f.next()?.parse().ok().filter(|p| *p > 0)?;
        let started = match f.next()? {
            "-" => None,
            s => Some(s.parse().ok()?),
        };
        f.next().is_none().then_some(KeeperRecord { pid, started })
    }
}

/// The account of a login this program made (`claude-tokend login`): the email the profile gave
/// and the fingerprint of the refresh token the store holds while the login descends from it.
/// Each of this program's own refreshes moves the fingerprint on; anyone else's refresh (or a
/// new login by Claude Code) leaves the store holding another token, and the record no longer
/// speaks for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccountRecord {
    /// [`token_fingerprint`] of the refresh token of the login's latest grant.
    pub token: String,
    pub email: String,
}

impl AccountRecord {
    const TAG: &'static str = "account";

    /// The record for a login whose refresh token is `token`; `None` for an email that cannot
    /// sit on one line.
    pub fn new(token: &Secret, email: &str) -> Option<AccountRecord> {
        let email = email.trim();
        (!email.is_empty() && !email.chars().any(char::is_control)).then(|| AccountRecord {
            token: token_fingerprint(token),
            email: email.to_owned(),
        })
    }

    /// Whether the store's refresh token is the one recorded: the login still descends from
    /// ours.
    pub fn matches(&self, refresh_token: Option<&Secret>) -> bool {
        refresh_token.is_some_and(|t| token_fingerprint(t) == self.token)
    }

    pub fn to_line(&self) -> String {
        format!("{} {} {}\n", Self::TAG, self.token, self.email)
    }

    pub fn from_line(line: &str) -> Option<AccountRecord> {
        let rest = line.strip_prefix(Self::TAG)?.strip_prefix(' ')?;
        let (token, email) = rest.split_once(' ')?;
        (is_fingerprint(token)
            && !email.trim().is_empty()
            && !email.contains('\t')
            && !email.chars().any(char::is_control))
        .then(|| AccountRecord {
            token: token.to_owned(),
            email: email.trim().to_owned(),
        })
    }
}

/// A refresh token the server refused (`invalid_grant` or another 4xx that is not about the
/// client): it is never sent again by any process of this program, so a cron job or a status bar
/// does not send a dead token on every run. Only its fingerprint is kept; any other token in the
/// store (a new login, another writer's refresh) is not held back by it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefusedRecord {
    /// [`token_fingerprint`] of the refused refresh token.
    pub token: String,
    /// When the refusal came (epoch ms, wall clock), for messages.
    pub at: i64,
}

impl RefusedRecord {
    const TAG: &'static str = "refused";

    pub fn new(token: &Secret, at: i64) -> RefusedRecord {
        RefusedRecord {
            token: token_fingerprint(token),
            at,
        }
    }

    /// Whether `token` is the refused one.
    pub fn refuses(&self, token: &Secret) -> bool {
        self.token == token_fingerprint(token)
    }

    pub fn to_line(&self) -> String {
        format!("{} {} {}\n", Self::TAG, self.token, self.at)
    }

    pub fn from_line(line: &str) -> Option<RefusedRecord> {
        let mut f = line.split(' ');
        if f.next()? != Self::TAG {
            return None;
        }
        let token = f.next().filter(|t| is_fingerprint(t))?.to_owned();
        let at = f.next()?.parse().ok()?;
        f.next().is_none().then_some(RefusedRecord { token, at })
    }
}

// ---- pause record (a transient failure's wait, shared by every process) ----

/// After a transient failure of a refresh request: the moment before which no request should
/// be sent with that refresh token, so that processes started one after another (a status bar
/// running `token` every second) know what the last one was told. It is the server's
/// `Retry-After` (capped at [`RETRY_AFTER_CAP`]), else [`PauseRecord::STANDARD`]. Only `token`
/// and `--once` honour it, and only while the stored access token still lasts (they print it,
/// or exit 0, instead); it never holds back a token that does not last, the daemon's schedule,
/// or another refresh token (a new login).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PauseRecord {
    /// Wall clock, epoch ms: no request with [`token`](Self::token) before this.
    pub until: i64,
    /// The same moment on the boot clock ([`boot_millis`](crate::schedule::boot_millis)). The
    /// pause holds only while both clocks say so: a wall clock set back cannot stretch it,
    /// and a reboot (the boot clock starting again) cannot revive it.
    pub until_boot: i64,
    /// [`token_fingerprint`] of the refresh token the failed request carried.
    pub token: String,
    /// What failed, on one line (already scrubbed of secrets, like every error message), for
    /// the warning of the runs it holds back.
    pub why: String,
}

impl PauseRecord {
    const TAG: &'static str = "pause";

    /// The pause after a transient failure that carried no `Retry-After`: long enough that a
    /// status bar polling every second sends a request every few seconds at most, short enough
    /// that a server back on its feet is tried again soon (and only while the stored token
    /// still lasts: then nothing is lost by waiting).
    pub const STANDARD: Duration = Duration::from_secs(5);

    /// A `why` longer than this (in characters) is cut: the line is a note, not a log.
    const WHY_MAX: usize = 300;

    /// The pause after a request with `token` failed transiently because of `why`, the server
    /// having asked to wait `retry_after` (if it did), at `now` (wall, epoch ms) and `now_boot`
    /// (boot clock, ms).
    pub fn after(
        token: &Secret,
        retry_after: Option<Duration>,
        why: &str,
        now: i64,
        now_boot: i64,
    ) -> PauseRecord {
        let wait = retry_after.map_or(Self::STANDARD, |asked| cap_retry_after(asked).0);
        let why = match retry_after {
            Some(_) => format!(
                "{why}; it asked to wait {} (Retry-After)",
                format_duration(wait)
            ),
            None => why.to_owned(),
        };
        PauseRecord {
            until: now.saturating_add(millis_i64(wait)),
            until_boot: now_boot.saturating_add(millis_i64(wait)),
            token: token_fingerprint(token),
            why: one_line(&why, Self::WHY_MAX),
        }
    }

    /// Whether it holds back a request with `refresh_token` at `now` (wall) and `now_boot`: the
    /// same token, and before the end by both clocks. An end further ahead than the cap on
    /// either clock is not believed (a clock set back, a reboot): nothing is held.
    pub fn holds(&self, refresh_token: Option<&Secret>, now: i64, now_boot: i64) -> bool {
        refresh_token.is_some_and(|t| token_fingerprint(t) == self.token)
            && [(self.until, now), (self.until_boot, now_boot)]
                .into_iter()
                .all(|(until, now)| {
                    now < until && until.saturating_sub(now) <= millis_i64(RETRY_AFTER_CAP)
                })
    }

    /// How long it still holds (zero once over), by the clock that ends it first.
    pub fn left(&self, now: i64, now_boot: i64) -> Duration {
        let ms = self
            .until
            .saturating_sub(now)
            .min(self.until_boot.saturating_sub(now_boot));
        Duration::from_millis(u64::try_from(ms).unwrap_or(0))
    }

    /// `pause <until, wall ms> <until, boot ms> <fingerprint> <why>`: `why` is the rest of the
    /// line.
    pub fn to_line(&self) -> String {
        format!(
            "{} {} {} {} {}\n",
            Self::TAG,
            self.until,
            self.until_boot,
            self.token,
            self.why
        )
    }

    pub fn from_line(line: &str) -> Option<PauseRecord> {
        let rest = line.strip_prefix(Self::TAG)?.strip_prefix(' ')?;
        let (until, rest) = rest.split_once(' ')?;
        let (until_boot, rest) = rest.split_once(' ')?;
        let (token, why) = rest.split_once(' ')?;
        let (until, until_boot) = (until.parse().ok()?, until_boot.parse().ok()?);
        (is_fingerprint(token)
            && !why.trim().is_empty()
            && why.trim() == why
            && !why.chars().any(char::is_control))
        .then(|| PauseRecord {
            until,
            until_boot,
            token: token.to_owned(),
            why: why.to_owned(),
        })
    }
}

/// `text` on one line of at most `max` characters: control characters (newlines, tabs: the
/// ledger's separator) become spaces; never empty.
fn one_line(text: &str, max: usize) -> String {
    let line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(max)
        .collect();
    match line.trim() {
        "" => "a transient failure".to_owned(),
        line => line.to_owned(),
    }
}

// ---- end of the pause record ----

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_lines_by_table() {
        let fp = token_fingerprint(&Secret::new("t"));
        let spent = |l: &str| SpentRecord::from_line(l);
        assert_eq!(
            spent(&format!("spent {fp} 12 -")),
            Some(SpentRecord {
                token: fp.clone(),
                pid: 12,
                started: None
            })
        );
        assert_eq!(
            spent(&format!("spent {fp} 12 99")).unwrap().started,
            Some(99)
        );
        for bad in [
            String::new(),
            "spent".into(),
            format!("spent {fp} 0 -"),
            format!("spent {fp} -3 -"),
            format!("spent {fp} 12"),
            format!("spent {fp} 12 - extra"),
            format!("spent {fp} 12 x"),
            "spent 0123 12 -".into(),
            format!("grant 1 2 3 {fp}"),
        ] {
            assert_eq!(spent(&bad), None, "{bad:?}");
        }
        let account = |l: &str| AccountRecord::from_line(l);
        assert_eq!(
            account(&format!("account {fp} ada@example.test")).map(|a| a.email),
            Some("ada@example.test".into())
        );
        for bad in [
            format!("account {fp}"),
            format!("account {fp} "),
            "account nothex ada@example.test".to_owned(),
            format!("accounts {fp} ada@example.test"),
            format!("account {fp} a\tb"),
        ] {
            assert_eq!(account(&bad), None, "{bad:?}");
        }
        assert_eq!(AccountRecord::new(&Secret::new("t"), " \u{1b}[31m "), None);
        assert_eq!(AccountRecord::new(&Secret::new("t"), "  "), None);
        let refused = |l: &str| RefusedRecord::from_line(l);
        let r = RefusedRecord::new(&Secret::new("t"), 1_765_000_000_000);
        assert_eq!(refused(r.to_line().trim_end()), Some(r.clone()));
        assert!(r.refuses(&Secret::new("t")));
        assert!(
            !r.refuses(&Secret::new("u")),
            "another token is not refused"
        );
        for bad in [
            format!("refused {fp}"),
            format!("refused {fp} x"),
            format!("refused {fp} 1 2"),
            "refused nothex 1".to_owned(),
            format!("refusal {fp} 1"),
        ] {
            assert_eq!(refused(&bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_record_holds_only_the_token_it_names_for_a_live_other_process() {
        let token = Secret::new("rt");
        let ours = SpentRecord::this_process(&token);
        assert_eq!(
            ours.holder_of(&token),
            None,
            "this very process is not held back"
        );
        // A live claude-tokend is hard to come by in a unit test; a dead pid is easy.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let gone = SpentRecord {
            pid: dead,
            ..ours.clone()
        };
        assert_eq!(gone.holder_of(&token), None, "a dead sender holds nothing");
        assert!(!process::runs_this_program(dead, None));
        assert!(!process::runs_this_program(0, None));
        assert!(!process::runs_this_program(u32::MAX, None));
    }

    // ---- pause record ----

    #[test]
    fn pause_lines_by_table() {
        let fp = token_fingerprint(&Secret::new("t"));
        let pause = |l: &str| PauseRecord::from_line(l);
        assert_eq!(
            pause(&format!("pause 1700000003000 -5 {fp} HTTP 429: slow down")),
            Some(PauseRecord {
                until: 1_700_000_003_000,
                until_boot: -5,
                token: fp.clone(),
                why: "HTTP 429: slow down".into(),
            })
        );
        for bad in [
            String::new(),
            "pause".into(),
            format!("pause 1 2 {fp}"),
            format!("pause 1 2 {fp} "),
            format!("pause 1 2 {fp}  why"),
            format!("pause 1 {fp} why"),
            format!("pause x 2 {fp} why"),
            format!("pause 1 2.5 {fp} why"),
            format!("pause 1 2 {fp} a\tb"),
            "pause 1 2 nothex why".into(),
            format!("pauses 1 2 {fp} why"),
            format!("spent {fp} 12 -"),
        ] {
            assert_eq!(pause(&bad), None, "{bad:?}");
        }
        // What `after` makes round-trips, whatever the reason holds (a tab would make the line
        // look like the ledger's; a newline would split it).
        let token = Secret::new("rt");
        for why in ["HTTP 503", "a\tb\nc", "", " \u{1b}[31m ", &"x".repeat(1000)] {
            for retry_after in [None, Some(Duration::from_secs(3))] {
                let r = PauseRecord::after(&token, retry_after, why, 1_000, 2_000);
                let line = r.to_line();
                assert_eq!(line.matches('\n').count(), 1, "{line:?}");
                assert!(line.ends_with('\n') && !line.contains('\t'), "{line:?}");
                assert_eq!(pause(line.trim_end_matches('\n')), Some(r), "{why:?}");
            }
        }
    }

    #[test]
    fn a_pause_lasts_the_retry_after_capped_or_the_standard_pause_for_its_token_only() {
        const NOW: i64 = 1_700_000_000_000;
        const BOOT: i64 = 50_000_000;
        let token = Secret::new("rt");
        let other = Secret::new("another login");
        // (Retry-After, how long the pause lasts)
        let cases = [
            (None, 5_000),
            (Some(Duration::from_secs(3)), 3_000),
            (Some(Duration::ZERO), 0),
            (Some(Duration::from_secs(7_200)), 3_600_000),
            (Some(Duration::MAX), 3_600_000),
        ];
        for (retry_after, lasts) in cases {
            let p = PauseRecord::after(&token, retry_after, "why", NOW, BOOT);
            assert_eq!(
                (p.until, p.until_boot),
                (NOW + lasts, BOOT + lasts),
                "{retry_after:?}"
            );
        }
        let p = PauseRecord::after(&token, Some(Duration::from_secs(3)), "why", NOW, BOOT);
        assert!(
            p.why.ends_with("it asked to wait 3s (Retry-After)"),
            "{}",
            p.why
        );
        // (refresh token, ms since the failure by the wall clock, by the boot clock, held?)
        let cases = [
            (Some(&token), 0, 0, true),
            (Some(&token), 2_999, 2_999, true),
            (Some(&token), 3_000, 3_000, false),
            (Some(&other), 0, 0, false),
            (None, 0, 0, false),
            // The wall clock set back by 2 h, or by 30 min: the boot clock ends it on time.
            (Some(&token), -7_200_000, 1_000, false),
            (Some(&token), -1_800_000, 1_000, true),
            (Some(&token), -1_800_000, 3_000, false),
            // The wall clock set forward: it ends early, which holds nothing back wrongly.
            (Some(&token), 3_600_000, 1_000, false),
            // A reboot: the boot clock starts again near zero.
            (Some(&token), 60_000, -BOOT + 1_000, false),
            (Some(&token), 1_000, -BOOT + 1_000, false),
            (Some(&token), i64::MAX - NOW, i64::MAX - BOOT, false),
        ];
        for (rt, wall, boot, held) in cases {
            assert_eq!(
                p.holds(rt, NOW + wall, BOOT + boot),
                held,
                "{rt:?} {wall} {boot}"
            );
        }
        assert_eq!(p.left(NOW + 1_000, BOOT + 500), Duration::from_secs(2));
        assert_eq!(p.left(NOW + 500, BOOT + 1_000), Duration::from_secs(2));
        assert_eq!(p.left(NOW + 9_000, BOOT + 9_000), Duration::ZERO);
        let far = PauseRecord {
            until: i64::MAX,
            until_boot: i64::MAX,
            ..p.clone()
        };
        assert!(
            !far.holds(Some(&token), NOW, BOOT),
            "an absurd end is not believed"
        );
        let end = PauseRecord::after(&token, None, "why", i64::MAX, i64::MAX);
        assert_eq!((end.until, end.until_boot), (i64::MAX, i64::MAX));
    }

    // ---- end of the pause record ----
}
