//! The `clock` check: is this machine's clock right? Token expiry is computed and judged on the
//! local clock, so a clock minutes off makes a fresh token look expired (or an expired one
//! fresh). One `HEAD /` to the token endpoint's host (no body, no redirects, 5 s, the
//! configured User-Agent, no secret) and its `Date` header; `--offline` leaves it out.

use std::time::Duration;

use tokend_core::oauth::{self, ServerDate};
use tokend_core::settings::format_duration;

use super::Check;
use crate::cli::Settings;

/// How far off the local clock may be before it is worth a warning.
const TOLERANCE: Duration = Duration::from_secs(60);

pub struct Facts {
    /// The host asked (`platform.claude.com`), for messages.
    pub host: String,
    pub probe: Result<ServerDate, String>,
}

impl Facts {
    pub fn gather(settings: &Settings) -> Facts {
        let url = oauth::probe_url(&settings.token_url);
        let host = match (url.host_str(), url.port()) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            (Some(h), None) => h.to_owned(),
            (None, _) => url.to_string(),
        };
        let probe = bounded(
            oauth::server_date(&settings.token_url, &settings.user_agent),
            oauth::PROBE_TIMEOUT + GRACE,
        )
        .unwrap_or_else(|| {
            Err(format!(
                "{host} did not answer within {}s",
                oauth::PROBE_TIMEOUT.as_secs()
            ))
        });
        Facts { host, probe }
    }
}

/// Time past the probe's own timeout before doctor stops waiting for it (the probe's timeout
/// should have fired first; this only catches what it does not cover).
const GRACE: Duration = Duration::from_millis(500);

/// `work` run to its end or for `limit`, whichever comes first (`None`: the limit). The runtime
/// is shut down without waiting for its blocking threads: a name lookup (getaddrinfo, run on
/// one) cannot be cancelled, and a resolver that never answers would otherwise hold doctor
/// long after the probe gave up.
fn bounded<T>(work: impl std::future::Future<Output = T>, limit: Duration) -> Option<T> {
    let rt = crate::commands::runtime();
    let done = rt.block_on(async { tokio::time::timeout(limit, work).await.ok() });
    rt.shutdown_background();
    done
}

/// `clock`: warn when the local clock is more than 60 s off the server's `Date`, or when the
/// probe failed.
pub fn check(f: &Facts) -> Check {
    let date = match &f.probe {
        Ok(date) => date,
        Err(why) => {
            return Check::warn(
                "clock",
                format!(
                    "could not compare this machine's clock with {}'s: {why}",
                    f.host
                ),
                "check the network (or the proxy in HTTPS_PROXY); `claude-tokend doctor \
                 --offline` leaves this check out",
            );
        }
    };
    let (ahead, off) = match date.local.duration_since(date.server) {
        Ok(d) => (true, d),
        Err(e) => (false, e.duration()),
    };
    // The Date header counts whole seconds.
    let shown = format_duration(Duration::from_secs(off.as_secs()));
    if off > TOLERANCE {
        return Check::warn(
            "clock",
            format!(
                "this machine's clock is {shown} {} {}'s: token expiry is judged by it, so a \
                 fresh token can look expired (or an expired one fresh)",
                if ahead { "ahead of" } else { "behind" },
                f.host
            ),
            "turn on network time (Linux: `timedatectl set-ntp true`; macOS: System Settings, \
             General, Date & Time, Set time automatically)",
        );
    }
    Check::ok("clock", format!("within {shown} of {}'s clock", f.host))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::Verdict;
    use std::time::SystemTime;

    #[test]
    fn a_lookup_that_never_ends_does_not_hold_doctor() {
        // A blocking thread stuck as a getaddrinfo with a silent resolver is.
        let started = std::time::Instant::now();
        let stuck = async {
            let _ =
                tokio::task::spawn_blocking(|| std::thread::sleep(Duration::from_secs(5))).await;
        };
        assert_eq!(bounded(stuck, Duration::from_millis(100)), None);
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "doctor waited {:?} for a stuck lookup",
            started.elapsed()
        );
        // A lookup whose thread outlives the probe's own timeout: the answer comes at once.
        let started = std::time::Instant::now();
        let gave_up = async {
            let lookup = tokio::task::spawn_blocking(|| std::thread::sleep(Duration::from_secs(5)));
            tokio::time::timeout(Duration::from_millis(50), lookup)
                .await
                .is_err()
        };
        assert_eq!(bounded(gave_up, Duration::from_secs(3)), Some(true));
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn a_minute_off_is_tolerated_more_is_not() {
        let now = SystemTime::now();
        let facts = |off: i64| Facts {
            host: "h".into(),
            probe: Ok(ServerDate {
                server: if off >= 0 {
                    now - Duration::from_secs(off as u64)
                } else {
                    now + Duration::from_secs((-off) as u64)
                },
                local: now,
            }),
        };
        assert_eq!(check(&facts(0)).verdict, Verdict::Ok);
        assert_eq!(check(&facts(59)).verdict, Verdict::Ok);
        assert_eq!(check(&facts(-59)).verdict, Verdict::Ok);
        let ahead = check(&facts(300));
        assert_eq!(ahead.verdict, Verdict::Warn);
        assert!(
            ahead.detail.contains("5m 0s ahead of h"),
            "{}",
            ahead.detail
        );
        let behind = check(&facts(-300));
        assert!(behind.detail.contains("behind h"), "{}", behind.detail);
        let failed = Facts {
            host: "h".into(),
            probe: Err("no route".into()),
        };
        assert_eq!(check(&failed).verdict, Verdict::Warn);
    }
}
