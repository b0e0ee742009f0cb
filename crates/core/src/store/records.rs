//! The records this program keeps in its own lock file besides the grant record (which
//! `schedule` owns): the refresh token being spent and by which process, and the account of
//! this program's own login. Each is one line starting with its tag, holding a fingerprint of a
//! token (never a token).

use super::process;
use crate::schedule::token_fingerprint;
use crate::secret::Secret;

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
}
