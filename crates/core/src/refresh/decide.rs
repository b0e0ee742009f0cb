//! Deciding from a fresh read whether a refresh is needed: due (half-lifetime rule), held back
//! by the 60 s floor or (for `token` and `--once`) by the pause a transient failure recorded,
//! already done by another process, or impossible (no login, blank, no refresh token). Read
//! under the lock, before and after Claude Code's locks are taken.

use std::time::{Duration, SystemTime};

use super::budget::format_duration_precise;
use super::{Floor, Mode, Outcome, Policy, RefreshError};
use crate::credentials::OAuthView;
use crate::schedule::{GrantRecord, boot_millis, epoch_millis, next_refresh_at};
use crate::store::{FileLock, Place, Snapshot, Store};

/// The client id a refresh must use, and where it came from: the store's, when it names one
/// (the token belongs to that client), else the setting.
pub(super) fn client_id_for<'a>(
    view: &'a OAuthView,
    policy: &'a Policy,
    place: &Place,
) -> (&'a str, String) {
    match view.client_id.as_deref().filter(|c| !c.trim().is_empty()) {
        Some(id) => (id, format!("clientId in {place}")),
        None => (&policy.client_id, policy.client_id_origin.clone()),
    }
}

/// Why an access-only login (an access token and no, or a blank, refresh token: a mirror's
/// copy, a long-lived token) that is due cannot be refreshed: the `why` of its
/// [`RefreshError::LoginNeeded`], which callers compare against to tell it from a logout.
pub const ACCESS_ONLY: &str = "the login has no refresh token (an access-only copy, or a \
                               long-lived token), so it cannot be refreshed here";

/// Why a login whose refresh token the server has already refused (a `refused` record in the
/// lock file) is not sent again: the `why` of its [`RefreshError::LoginNeeded`].
pub const ALREADY_REFUSED: &str = "the server already refused this refresh token, so it is not \
                                   sent again";
/// An access token with this little left is not handed out by `token` (a script could not
/// finish a request with it), and with more than this a pause recorded after a transient
/// failure holds back a refresh (see [`Policy::honour_pause`]).
pub const MIN_LEFT_MS: i64 = 60_000;

/// What the store says to do, read under the lock.
pub(super) enum Decision {
    Done(Outcome),
    Refresh(Box<OAuthView>),
}

/// The record of our last grant, when the store still holds that grant.
fn our_record(lock: &FileLock, view: &OAuthView) -> Option<GrantRecord> {
    lock.grant_record()
        .filter(|r| r.matches(view.refresh_token.as_ref()))
}

/// When the login in `view` is next due, given what the lock file records. A blank access
/// token beside a live refresh token is a login without an access token: due now (the floor
/// permitting), whatever `expiresAt` says.
pub fn next_at(view: &OAuthView, record: Option<&GrantRecord>, lead: Duration) -> i64 {
    next_refresh_at(
        view.expires_at.filter(|_| !view.access_token.is_blank()),
        view.refresh_token.as_ref(),
        record,
        lead,
        epoch_millis(SystemTime::now()),
        boot_millis(),
    )
}

/// When the login in `snapshot` is next due, reading our grant record when the lock is free
/// right now (the daemon's scheduling; never waits). A busy lock means someone is refreshing:
/// the lead alone is used, and the attempt that follows reads the record under the lock.
pub fn next_at_unlocked(store: &Store, view: &OAuthView, lead: Duration) -> i64 {
    let record = match store.try_lock() {
        Ok(Some(lock)) => lock.grant_record(),
        _ => None,
    };
    next_at(view, record.as_ref(), lead)
}

/// Decides from a fresh read whether to refresh. Called again after waiting for Claude Code's
/// locks, since whoever held them may have refreshed meanwhile.
pub(super) fn decide(
    snapshot: &Snapshot,
    mode: &mut Mode,
    policy: &Policy,
    lock: &FileLock,
    place: &Place,
) -> Result<Decision, RefreshError> {
    let view = snapshot
        .doc
        .oauth()
        .expect("Credentials::parse validated the owned fields")
        .ok_or(RefreshError::LoginNeeded {
            place: place.clone(),
            why: "the file has no claudeAiOauth login",
        })?;
    if view.is_logged_out() {
        return Err(RefreshError::LoginNeeded {
            place: place.clone(),
            why: "the login in the file is blank (logged out)",
        });
    }
    let record = our_record(lock, &view);
    let now = epoch_millis(SystemTime::now());
    match mode {
        Mode::IfDue => {
            let next_at = next_at(&view, record.as_ref(), policy.lead);
            if now < next_at {
                return Ok(Decision::Done(Outcome::Fresh {
                    expires_at: view.expires_at,
                    next_at,
                }));
            }
        }
        Mode::Force { expected, floor } => {
            match expected {
                Some(sent) if view.refresh_token.as_ref() != Some(sent) => {
                    tracing::info!(
                        "another process refreshed the token meanwhile; using its result"
                    );
                    return Ok(Decision::Done(Outcome::Adopted {
                        expires_at: view.expires_at,
                    }));
                }
                Some(_) => {}
                None => *expected = view.refresh_token.clone(),
            }
            let left = record
                .as_ref()
                .map(|r| r.floor_left(boot_millis()))
                .unwrap_or_default();
            if *floor == Floor::Honour && !left.is_zero() {
                tracing::info!(
                    "the current tokens were obtained less than a minute ago; refreshing in {}",
                    format_duration_precise(left)
                );
                return Ok(Decision::Done(Outcome::Fresh {
                    expires_at: view.expires_at,
                    next_at: now.saturating_add(crate::schedule::millis_i64(left)),
                }));
            }
        }
    }
    let Some(refresh_token) = view.usable_refresh_token() else {
        return Err(RefreshError::LoginNeeded {
            place: place.clone(),
            why: ACCESS_ONLY,
        });
    };
    // A refusal is final for that token: no process of this program sends it again (a cron job
    // or a status bar would otherwise send the dead token on every run).
    if lock
        .refused_record()
        .is_some_and(|r| r.refuses(refresh_token))
    {
        return Err(RefreshError::LoginNeeded {
            place: place.clone(),
            why: ALREADY_REFUSED,
        });
    }
    // ---- pause: the server asked the last request with this refresh token to wait ----
    // Read under the flock, so a run that waited for the lock sees the pause its holder just
    // recorded. Never when the stored token does not last: then the usual sequence runs.
    if policy.honour_pause
        && view.access_token_lasts(now, MIN_LEFT_MS)
        && let Some(pause) = lock.pause_record()
        && pause.holds(view.refresh_token.as_ref(), now, boot_millis())
    {
        return Err(RefreshError::Paused {
            place: place.clone(),
            until: pause.until,
            left: pause.left(now, boot_millis()),
            why: pause.why,
        });
    }
    // ---- end of the pause ----
    Ok(Decision::Refresh(Box::new(view)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;

    fn view(access: &str, refresh: Option<&str>, expires_at: Option<i64>) -> OAuthView {
        OAuthView {
            access_token: Secret::new(access),
            refresh_token: refresh.map(Secret::new),
            expires_at,
            refresh_token_expires_at: None,
            scopes: None,
            client_id: None,
            subscription_type: None,
            rate_limit_tier: None,
        }
    }

    /// The rules the one-shot commands and `decide` build on: which token is missing, and
    /// whether the access token lasts past a minute.
    #[test]
    fn which_token_is_missing_by_table() {
        const NOW: i64 = 1_000_000_000;
        let (hour, half_minute, past) = (Some(NOW + 3_600_000), Some(NOW + 30_000), Some(NOW - 1));
        // (access, refresh, expiresAt, logged out?, access-only?, lasts past a minute?)
        let cases = [
            ("a", Some("r"), hour, false, false, true),
            ("a", Some("r"), half_minute, false, false, false),
            ("a", Some("r"), past, false, false, false),
            // No expiresAt: nothing says it still works (status calls it expired).
            ("a", Some("r"), None, false, false, false),
            ("a", None, None, false, true, false),
            ("", Some("r"), hour, false, false, false),
            (" ", Some("r"), hour, false, false, false),
            ("a", None, hour, false, true, true),
            ("a", Some(""), hour, false, true, true),
            ("a", None, half_minute, false, true, false),
            ("", Some(""), Some(0), true, false, false),
            ("", None, hour, true, false, false),
        ];
        for (access, refresh, expires_at, logged_out, access_only, lasts) in cases {
            let v = view(access, refresh, expires_at);
            let case = format!("{access:?} {refresh:?} {expires_at:?}");
            assert_eq!(v.is_logged_out(), logged_out, "logged out: {case}");
            assert_eq!(v.is_access_only(), access_only, "access-only: {case}");
            assert_eq!(v.access_token_lasts(NOW, 60_000), lasts, "lasts: {case}");
        }
    }

    #[test]
    fn a_blank_access_token_is_due_now_whatever_expires_at_says() {
        let lead = Duration::from_secs(15 * 60);
        let hours = epoch_millis(SystemTime::now()) + 8 * 3_600_000;
        // (access token, expiresAt, due now?)
        let cases = [
            ("sk-ant-oat01-live", Some(hours), false),
            ("sk-ant-oat01-live", None, true),
            ("", Some(hours), true),
            ("   ", Some(hours), true),
            ("", None, true),
        ];
        for (access, expires_at, due) in cases {
            let before = epoch_millis(SystemTime::now());
            let at = next_at(
                &view(access, Some("sk-ant-ort01-r"), expires_at),
                None,
                lead,
            );
            assert_eq!(
                at <= before.max(epoch_millis(SystemTime::now())),
                due,
                "{access:?} {expires_at:?}"
            );
        }
    }
}
