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
    /// Whom the login should belong to: this user, or, for root looking at a login in someone
    /// else's directory (`sudo -E`, `--config-dir`), the directory's owner.
    pub expected: u32,
    /// What is at the credentials path (links followed).
    pub found: Found,
    /// Whether this user may enter the directory (search permission).
    pub dir_enterable: bool,
    /// The directory's owner, when it could be looked at.
    pub dir_owner: Option<u32>,
    /// The directory new versions are written in (the target's), and whether this user may
    /// create and rename files there.
    pub dir: PathBuf,
    pub dir_writable: bool,
    /// The program's own records about this login (peeked at, not locked).
    pub records: Records,
    /// The home of the user the login belongs to: the only place doctor suggests changing an
    /// owner or a mode in.
    pub home: Option<PathBuf>,
}

/// What is at a credentials path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Found {
    File,
    Directory,
    /// A FIFO, a socket, a device.
    Other,
    /// Nothing, or it could not be looked at (the error says which).
    Unknown,
}

impl Facts {
    pub fn gather(store: &Store) -> Facts {
        let target = store.target();
        let dir = target.parent().unwrap_or(Path::new("/")).to_path_buf();
        let is_file = store.kind() == Kind::File;
        let found = match std::fs::metadata(&target) {
            Ok(m) if m.is_file() => Found::File,
            Ok(m) if m.is_dir() => Found::Directory,
            Ok(_) => Found::Other,
            Err(_) => Found::Unknown,
        };
        let dir_owner = std::fs::metadata(&dir).ok().map(|m| m.uid());
        // SAFETY: geteuid has no preconditions and cannot fail.
        let me = unsafe { libc::geteuid() };
        let home_owner = || {
            let home = std::env::var_os("HOME").filter(|h| !h.is_empty())?;
            std::fs::metadata(home).ok().map(|m| m.uid())
        };
        // Run as root (sudo -E) for a login in a user's home, that user is who it belongs to,
        // even when `sudo claude` left its directory root's; elsewhere (and in root's own
        // home), the directory's owner.
        let in_users_home =
            home().is_some_and(|h| inside(&dir, &h)) && home_owner().is_some_and(|o| o != 0);
        let expected = if me == 0 {
            match in_users_home {
                true => home_owner().or(dir_owner),
                false => dir_owner.or_else(home_owner),
            }
            .unwrap_or(0)
        } else {
            me
        };
        let login_home = if expected == me || me == 0 {
            home()
        } else {
            home_of(expected)
        };
        Facts {
            expected,
            found,
            dir_enterable: access(&dir, libc::X_OK),
            dir_owner,
            place: store.place().to_string(),
            kind: store.kind(),
            read: read_settled(store),
            owner: is_file
                .then(|| std::fs::metadata(&target).ok().map(|m| m.uid()))
                .flatten(),
            me,
            dir_writable: !is_file || access(&dir, libc::W_OK | libc::X_OK),
            dir,
            target,
            records: store.peek_records(),
            home: login_home,
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

/// Whether this user may do `how` (W_OK: create files in it) to `dir` (access(2): as the
/// kernel would judge it, read-only mounts and immutable directories included).
fn access(dir: &Path, how: libc::c_int) -> bool {
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: a valid NUL-terminated path; access only checks.
    unsafe { libc::access(c.as_ptr(), how) == 0 }
}

/// The system's passwd entry of `uid`, read by `field` while it is valid (`None`: no entry).
fn with_passwd<T>(uid: u32, field: impl FnOnce(&libc::passwd) -> T) -> Option<T> {
    let mut buf = vec![0 as libc::c_char; 4096];
    // SAFETY: zeroed is a valid passwd to be filled in.
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call; the buffer outlives `field`'s use of it.
    let rc = unsafe { libc::getpwuid_r(uid, &mut pw, buf.as_mut_ptr(), buf.len(), &mut found) };
    if rc != 0 || found.is_null() {
        return None;
    }
    Some(field(&pw))
}

/// A user's name for a uid, when the system knows it.
pub fn user_name(uid: u32) -> Option<String> {
    // SAFETY: getpwuid_r set pw_name to a NUL-terminated string inside its buffer.
    with_passwd(uid, |pw| {
        unsafe { std::ffi::CStr::from_ptr(pw.pw_name) }
            .to_string_lossy()
            .into_owned()
    })
}

/// `uid 0 (root)`.
fn describe_user(uid: u32) -> String {
    match user_name(uid) {
        Some(name) => format!("{name} (uid {uid})"),
        None => format!("uid {uid}"),
    }
}

/// HOME, as set.
fn home() -> Option<std::path::PathBuf> {
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(std::path::PathBuf::from)
}

/// Whether `path` (its links resolved as far as it exists) is inside `home` (and not `home`
/// itself).
fn inside(path: &Path, home: &Path) -> bool {
    let real = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let (path, home) = (real(path), real(home));
    path != home && path.starts_with(&home)
}

/// Whether doctor may suggest changing the owner or mode of `path`: only inside the home of
/// the user the login belongs to (never `/etc`, `/root` or another user's directory, which a
/// pasted `sudo chown` would hand over).
fn ours_to_fix(f: &Facts, path: &Path) -> bool {
    f.home.as_deref().is_some_and(|h| inside(path, h))
}

/// A user's home directory, when the system knows it.
fn home_of(uid: u32) -> Option<std::path::PathBuf> {
    with_passwd(uid, |pw| {
        // SAFETY: getpwuid_r set pw_dir to a NUL-terminated string inside its buffer.
        let dir = unsafe { std::ffi::CStr::from_ptr(pw.pw_dir) };
        std::path::PathBuf::from(std::ffi::OsStr::from_bytes(dir.to_bytes()))
    })
}

/// What to say instead of a chown or chmod for a directory outside the user's home.
fn not_ours(f: &Facts) -> String {
    format!(
        "{} is outside your home, and may not be yours to change: keep the login in a \
         directory of your own (--config-dir ~/.claude), or ask whoever owns it",
        sh(&f.dir)
    )
}

/// The command that gives `path` back to the login's owner, never to root, and only inside
/// that user's home: `None` otherwise (a chown would hand a file to root, or hand a system
/// directory to a user).
fn give_back(f: &Facts, path: &Path, recursive: bool) -> Option<String> {
    if !ours_to_fix(f, path) {
        return None;
    }
    let to = if f.expected == 0 {
        return None;
    } else if f.expected == f.me {
        "$(id -un)".to_owned()
    } else {
        user_name(f.expected).unwrap_or_else(|| f.expected.to_string())
    };
    let r = if recursive { "-R " } else { "" };
    Some(format!("sudo chown {r}{to}: {}", sh(path)))
}

/// Who the login should belong to, for messages: `you (u, uid 1000)`, or for root looking at
/// another user's login, that user.
fn rightful(f: &Facts) -> String {
    if f.expected == f.me {
        format!("you ({})", describe_user(f.me))
    } else {
        format!(
            "{}, who owns {}",
            describe_user(f.expected),
            f.dir.display()
        )
    }
}

/// `store`: fail when it is missing, unreadable, malformed, not a file, owned by another user
/// or in a directory this user cannot write in; warn when its mode is not 0600. Each fix fits
/// what is there (a directory is named with `--config-dir`, a FIFO moved away, a directory
/// that cannot be entered given back first).
pub fn store_check(f: &Facts) -> Check {
    let mut found = Findings::default();
    let place = &f.place;
    let file = f.kind == Kind::File;
    let shut_out = file && !f.dir_enterable && matches!(f.read, Err(StoreError::Unreadable { .. }));
    if shut_out {
        let owner = f.dir_owner.filter(|o| *o != f.expected);
        found.fail(
            format!(
                "you cannot enter {}{}, so {place} cannot be read or replaced",
                f.dir.display(),
                owner.map_or(String::new(), |o| format!(
                    " (it belongs to {}: a directory left by `sudo claude`?)",
                    describe_user(o)
                ))
            ),
            match (owner, give_back(f, &f.dir, true)) {
                (Some(_), Some(cmd)) => format!("give it back: {cmd}"),
                _ if ours_to_fix(f, &f.dir) => {
                    format!("let yourself in: chmod 700 {}", sh(&f.dir))
                }
                _ => not_ours(f),
            },
        );
    } else if file && f.found == Found::Directory {
        found.fail(
            format!("{place} is a directory, not a credentials file"),
            format!(
                "name a config directory with --config-dir {} (its login is {}); \
                 --credentials names the file itself",
                sh(&f.target),
                sh(&f.target.join(tokend_core::store::FILE_NAME))
            ),
        );
    } else if file && f.found == Found::Other {
        found.fail(
            format!("{place} is not a regular file (a FIFO, socket or device)"),
            format!(
                "move it away (mv {0} {0}.not-a-file), then sign in again: run `claude` and \
                 /login (or `claude-tokend login`)",
                sh(&f.target)
            ),
        );
    } else if let Some(owner) = f.owner.filter(|o| *o != f.expected) {
        // What its rightful owner, running Claude Code or claude-tokend, runs into.
        let who = if f.expected == f.me {
            "you".to_owned()
        } else {
            user_name(f.expected).unwrap_or_else(|| format!("uid {}", f.expected))
        };
        let mut consequences = vec![];
        if f.me == f.expected && matches!(f.read, Err(StoreError::Unreadable { .. })) {
            consequences.push(format!("{who} cannot read it"));
        }
        consequences.push(format!("{who} cannot change its mode"));
        consequences.push("Claude Code's writes to it in place fail".to_owned());
        let replace = if f.dir_writable {
            "; a new version renamed over it still replaces it, as the directory is writable"
        } else {
            "; as the directory is not writable either, nothing can replace it"
        };
        found.fail(
            format!(
                "{place} belongs to {}, not to {}: a file left by `sudo claude`? {}{replace}",
                describe_user(owner),
                rightful(f),
                consequences.join(", ")
            ),
            match give_back(f, &f.target, false) {
                Some(cmd) => format!("give it back: {cmd}"),
                None => format!(
                    "if the login is {}'s, run claude-tokend as that user; else move it \
                     away and sign in again",
                    user_name(owner).unwrap_or_else(|| format!("uid {owner}"))
                ),
            },
        );
    }
    let explained = !found.is_empty();
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
        // What is there (a directory, a FIFO, someone else's file) already says what to do.
        Err(_) if explained => {}
        Err(e) => found.fail(
            e.to_string(),
            format!("make it readable to you: chmod 600 {}", sh(&f.target)),
        ),
        Ok(snapshot) => {
            if file && snapshot.mode & 0o777 != FILE_MODE {
                found.warn(
                    format!(
                        "{place} has mode {:04o}; a login should be readable by its owner \
                         alone (0600)",
                        snapshot.mode
                    ),
                    format!("chmod 600 {}", sh(&f.target)),
                );
            }
        }
    }
    if !f.dir_writable && !shut_out && !matches!(f.read, Err(StoreError::Missing { .. })) {
        found.fail(
            format!(
                "you cannot write in {}, where every new version of the login is written (a \
                 temp file, renamed over it), so no refresh can be saved",
                f.dir.display()
            ),
            match give_back(f, &f.dir, false) {
                Some(cmd) => format!(
                    "make it yours and writable: {cmd} && chmod 700 {}",
                    sh(&f.dir)
                ),
                None if ours_to_fix(f, &f.dir) => {
                    format!("make it writable: chmod 700 {}", sh(&f.dir))
                }
                None => not_ours(f),
            },
        );
    }
    let ok = match f.kind {
        Kind::File if f.expected == f.me => {
            format!("{place}: a file of yours, mode 0600, in a directory you can write in")
        }
        Kind::File => format!(
            "{place}: a file of {}'s, mode 0600, in a directory of theirs",
            user_name(f.expected).unwrap_or_else(|| format!("uid {}", f.expected))
        ),
        Kind::Keychain => format!("{place}: readable"),
    };
    found.into_check("store", ok)
}

/// `login`: fail when there is no login, it is blanked, or its refresh token's life is over;
/// warn when it cannot be refreshed here, ends within 3 days, its access token has expired, or
/// the server refused its refresh token; warn when the store cannot be read, so the login
/// cannot be judged (the `store` line says why). A refused or ended login is lost: it is never
/// told to refresh.
pub fn login_check(f: &Facts, now: i64) -> Option<Check> {
    let snapshot = match f.read.as_ref() {
        Ok(s) => s,
        Err(_) => {
            return Some(Check::warn(
                "login",
                "cannot be judged: the store cannot be read (see the store line)",
                "fix the store first (the store line says how), then run doctor again",
            ));
        }
    };
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
    let refused = match (&records.refused, refresh) {
        (Some(r), Some(token)) if r.refuses(token) => Some(r.at),
        _ => None,
    };
    // A login the server refused, or whose life is over, is lost: no refresh brings it back.
    let lost = refused.is_some() || ends.is_some_and(|at| at <= now);
    if let Some(at) = refused {
        // A warning, as CONTRACT.md's table has it (the refusal is this program's record, not
        // the server's word today), but worded as what it almost surely is: a lost login.
        found.warn(
            format!(
                "the token endpoint refused this login's refresh token {}, so this login is \
                 lost (claude-tokend will not send it again)",
                when(at)
            ),
            sign_in,
        );
    }
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
        Some(at) if at <= now && refresh.is_some() && lost => found.warn(
            format!("the access token expired {}", relative(at)),
            sign_in,
        ),
        Some(at) if at <= now && refresh.is_some() => found.warn(
            format!("the access token expired {}", relative(at)),
            "nothing refreshed it in time (see the keeper check); `claude-tokend refresh` \
             refreshes it now",
        ),
        None if lost => {}
        None => found.warn(
            "the access token's expiry is not recorded (no expiresAt)",
            "`claude-tokend refresh` stores a new token with its expiry",
        ),
        _ => {}
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
#[path = "store_tests.rs"]
mod tests;
