//! The checks of one login's store and of the login in it: `store` (there, readable, well
//! formed, owned by this user, mode 0600, in a directory this user can write in) and `login`
//! (signed in, refreshable, not near or past its end, not refused). One read of the store and
//! one peek at the program's lock file; nothing is locked, written or created.

use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokend_core::credentials::OAuthView;
use tokend_core::store::{FILE_MODE, Kind, Records, Snapshot, Store, StoreError};

use super::{Check, Findings, sh};
use crate::show::{relative, when};

/// How close to its end a login is worth a warning (as `status` and the notices count it).
const ENDING_SOON_MS: i64 = 3 * 86_400_000;

/// What doctor learned about one login's store.
pub struct Facts {
    /// What messages call it (a path, or the Keychain item).
    pub place: String,
    pub kind: Kind,
    /// The file that holds the bytes (the credentials path, links followed).
    pub target: PathBuf,
    /// One read, settled like `status`'s (a half-written file gets a second look).
    pub read: Result<Snapshot, StoreError>,
    /// The file's owner, when it could be looked at.
    pub owner: Option<u32>,
    /// This process's effective user.
    pub me: u32,
    /// The directory new versions are written in (the target's), and whether this user may
    /// create and rename files there.
    pub dir: PathBuf,
    pub dir_writable: bool,
    /// The program's own records about this login (peeked at, not locked).
    pub records: Records,
}

impl Facts {
    pub fn gather(store: &Store) -> Facts {
        let target = store.target();
        let dir = target.parent().unwrap_or(Path::new("/")).to_path_buf();
        let is_file = store.kind() == Kind::File;
        Facts {
            place: store.place().to_string(),
            kind: store.kind(),
            read: read_settled(store),
            owner: is_file
                .then(|| std::fs::metadata(&target).ok().map(|m| m.uid()))
                .flatten(),
            // SAFETY: geteuid has no preconditions and cannot fail.
            me: unsafe { libc::geteuid() },
            dir_writable: !is_file || writable(&dir),
            dir,
            target,
            records: store.peek_records(),
        }
    }
}

/// A read that gives a half-written file (a writer mid-way) a few more looks over a second.
fn read_settled(store: &Store) -> Result<Snapshot, StoreError> {
    let mut tries = 1;
    loop {
        match store.read() {
            Err(e) if e.may_be_mid_write() && tries < 5 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(200));
            }
            other => return other,
        }
    }
}

/// Whether this user may create files in `dir` (access(2): as the kernel would judge it,
/// read-only mounts and immutable directories included).
fn writable(dir: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: a valid NUL-terminated path; access only checks.
    unsafe { libc::access(c.as_ptr(), libc::W_OK | libc::X_OK) == 0 }
}

/// A user's name for a uid, when the system knows it.
pub fn user_name(uid: u32) -> Option<String> {
    let mut buf = vec![0 as libc::c_char; 4096];
    // SAFETY: zeroed is a valid passwd to be filled in.
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call; the buffer outlives the result's use.
    let rc = unsafe { libc::getpwuid_r(uid, &mut pw, buf.as_mut_ptr(), buf.len(), &mut found) };
    if rc != 0 || found.is_null() {
        return None;
    }
    // SAFETY: getpwuid_r set pw_name to a NUL-terminated string inside `buf`.
    let name = unsafe { std::ffi::CStr::from_ptr(pw.pw_name) };
    Some(name.to_string_lossy().into_owned())
}

/// `uid 0 (root)`.
fn describe_user(uid: u32) -> String {
    match user_name(uid) {
        Some(name) => format!("{name} (uid {uid})"),
        None => format!("uid {uid}"),
    }
}

/// `store`: fail when it is missing, unreadable, malformed, owned by another user or in a
/// directory this user cannot write in; warn when its mode is not 0600.
pub fn store_check(f: &Facts) -> Check {
    let mut found = Findings::default();
    let place = &f.place;
    if let Some(owner) = f.owner.filter(|o| *o != f.me) {
        found.fail(
            format!(
                "{place} belongs to {}, not to you ({}): a file left by `sudo claude`? Neither \
                 Claude Code nor claude-tokend running as you can replace it",
                describe_user(owner),
                describe_user(f.me)
            ),
            format!("give it back: sudo chown $(id -un): {}", sh(&f.target)),
        );
    }
    match &f.read {
        Err(StoreError::Missing { .. }) => found.fail(
            format!("no login is stored: {place} does not exist"),
            "sign in: run `claude` and /login (or `claude-tokend login`)",
        ),
        Err(e @ StoreError::Malformed { .. }) => found.fail(
            e.to_string(),
            format!(
                "look at it (the program never rewrites a file it cannot parse); if it holds \
                 nothing you need, move it away (mv {0} {0}.broken) and sign in again",
                sh(&f.target)
            ),
        ),
        Err(e) if f.kind == Kind::Keychain => found.fail(
            e.to_string(),
            "unlock the keychain (security unlock-keychain) and run doctor again",
        ),
        Err(e) if f.owner.is_none_or(|o| o == f.me) => found.fail(
            e.to_string(),
            format!("make it readable to you: chmod 600 {}", sh(&f.target)),
        ),
        // Someone else's file: the ownership finding above says what to do.
        Err(_) => {}
        Ok(snapshot) => {
            if f.kind == Kind::File && snapshot.mode & 0o777 != FILE_MODE {
                found.warn(
                    format!(
                        "{place} has mode {:04o}; a login should be readable by you alone \
                         (0600)",
                        snapshot.mode
                    ),
                    format!("chmod 600 {}", sh(&f.target)),
                );
            }
        }
    }
    if !f.dir_writable && !matches!(f.read, Err(StoreError::Missing { .. })) {
        found.fail(
            format!(
                "you cannot write in {}, where every new version of the login is written (a \
                 temp file, renamed over it), so no refresh can be saved",
                f.dir.display()
            ),
            format!(
                "make it yours and writable: sudo chown $(id -un): {0} && chmod 700 {0}",
                sh(&f.dir)
            ),
        );
    }
    let ok = match f.kind {
        Kind::File => {
            format!("{place}: a file of yours, mode 0600, in a directory you can write in")
        }
        Kind::Keychain => format!("{place}: readable"),
    };
    found.into_check("store", ok)
}

/// `login` (when the store could be read): fail when there is no login, it is blanked, or its
/// refresh token's life is over; warn when it cannot be refreshed here, ends within 3 days,
/// its access token has expired, or the server refused its refresh token.
pub fn login_check(f: &Facts, now: i64) -> Option<Check> {
    let snapshot = f.read.as_ref().ok()?;
    let view = match snapshot.doc.oauth() {
        Ok(Some(v)) => v,
        // Credentials::parse checked the owned fields; a document without the key has no login.
        _ => {
            return Some(Check::fail(
                "login",
                format!("{} holds no Claude login (no claudeAiOauth)", f.place),
                "sign in: run `claude` and /login (or `claude-tokend login`)",
            ));
        }
    };
    Some(judge(&view, &f.records, now))
}

fn judge(view: &OAuthView, records: &Records, now: i64) -> Check {
    let mut found = Findings::default();
    let sign_in = "sign in again: run `claude` and /login (or `claude-tokend login`)";
    if view.is_logged_out() {
        found.fail(
            "the login's tokens are blank: Claude Code blanks them when the server refuses its \
             refresh token, so this login is lost",
            sign_in,
        );
        return found.into_check("login", "");
    }
    let ends = view.refresh_token_expires_at;
    match ends {
        Some(at) if at <= now => found.fail(
            format!(
                "the login ended {} ({}): its refresh token is no longer accepted",
                crate::show::local_time(at),
                relative(at)
            ),
            sign_in,
        ),
        Some(at) if at.saturating_sub(now) <= ENDING_SOON_MS => found.warn(
            format!(
                "the login itself ends {}, and no refresh can extend it",
                when(at)
            ),
            format!("{sign_in} before then"),
        ),
        _ => {}
    }
    let refresh = view.usable_refresh_token();
    if refresh.is_none() {
        found.warn(
            format!(
                "no refresh token: an access-only copy or a long-lived token, which nothing can \
                 refresh; it works until its access token expires ({})",
                view.expires_at
                    .map_or_else(|| "when is not recorded".to_owned(), when)
            ),
            "for a login that stays fresh, sign in with Claude Code (/login) or `claude-tokend \
             login`; for a mirror, nothing to do",
        );
    }
    match view.expires_at {
        Some(at) if at <= now && refresh.is_some() => found.warn(
            format!("the access token expired {}", relative(at)),
            "nothing refreshed it in time (see the keeper check); `claude-tokend refresh` \
             refreshes it now",
        ),
        None => found.warn(
            "the access token's expiry is not recorded (no expiresAt)",
            "`claude-tokend refresh` stores a new token with its expiry",
        ),
        _ => {}
    }
    if let (Some(refused), Some(token)) = (&records.refused, refresh)
        && refused.refuses(token)
    {
        found.warn(
            format!(
                "the token endpoint refused this login's refresh token {} \
                 (claude-tokend will not send it again)",
                when(refused.at)
            ),
            sign_in,
        );
    }
    let mut ok = String::from("signed in");
    if let Some(at) = view.expires_at {
        ok.push_str(&format!("; the access token expires {}", when(at)));
    }
    match ends {
        Some(at) => ok.push_str(&format!("; the login lasts until {}", when(at))),
        None => ok.push_str("; the login's end is not recorded"),
    }
    found.into_check("login", ok)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::Verdict;
    use tokend_core::secret::Secret;
    use tokend_core::store::RefusedRecord;

    const HOUR: i64 = 3_600_000;
    const NOW: i64 = 1_800_000_000_000;

    fn view(refresh: &str, expires: Option<i64>, ends: Option<i64>) -> OAuthView {
        OAuthView {
            access_token: Secret::new("sk-ant-oat01-a"),
            refresh_token: Some(Secret::new(refresh)),
            expires_at: expires,
            refresh_token_expires_at: ends,
            scopes: None,
            client_id: None,
            subscription_type: None,
            rate_limit_tier: None,
        }
    }

    #[test]
    fn the_login_by_table() {
        let none = Records::default();
        let cases: Vec<(OAuthView, Verdict, &str)> = vec![
            (
                view("r", Some(NOW + HOUR), Some(NOW + 20 * 24 * HOUR)),
                Verdict::Ok,
                "signed in",
            ),
            (
                view("r", Some(NOW - HOUR), Some(NOW + 20 * 24 * HOUR)),
                Verdict::Warn,
                "expired",
            ),
            (
                view("r", Some(NOW + HOUR), Some(NOW + 2 * 24 * HOUR)),
                Verdict::Warn,
                "ends",
            ),
            (
                view("r", Some(NOW + HOUR), Some(NOW - HOUR)),
                Verdict::Fail,
                "ended",
            ),
            (
                view("", Some(NOW + HOUR), None),
                Verdict::Warn,
                "no refresh token",
            ),
            (view("r", None, None), Verdict::Warn, "not recorded"),
        ];
        for (v, want, word) in cases {
            let c = judge(&v, &none, NOW);
            assert_eq!(c.verdict, want, "{}", c.detail);
            assert!(c.detail.contains(word), "{word}: {}", c.detail);
        }
        let mut blank = view("", Some(0), None);
        blank.access_token = Secret::new("");
        assert_eq!(judge(&blank, &none, NOW).verdict, Verdict::Fail);
        let refused = Records {
            refused: Some(RefusedRecord::new(&Secret::new("r"), NOW - HOUR)),
            ..Records::default()
        };
        let ok_view = view("r", Some(NOW + HOUR), None);
        let c = judge(&ok_view, &refused, NOW);
        assert_eq!(c.verdict, Verdict::Warn);
        assert!(c.detail.contains("refused"), "{}", c.detail);
        // A refusal of an older token says nothing about this one.
        assert_eq!(
            judge(&view("r2", Some(NOW + HOUR), None), &refused, NOW).verdict,
            Verdict::Ok
        );
    }
}
