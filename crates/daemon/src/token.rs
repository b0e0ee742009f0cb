//! `claude-tokend token [--json]`: a valid access token on stdout, for status bars, proxies and
//! scripts that would otherwise read the credentials and refresh on their own (racing Claude
//! Code and spending single-use refresh tokens). When the token is due it is refreshed first,
//! by the same sequence and under the same locks as `--once`, so any number of concurrent
//! `token` and `--once` runs send one request. It never prints an empty, blank or expired
//! token, nor one with under a minute to live (it refreshes first, the floor permitting); an
//! access-only login is served while it lasts. Interrupted by a signal, it prints no token.
//! While the stored token still lasts, a due refresh is one request and no retry, and a pause
//! recorded by an earlier run's transient failure (the server's Retry-After) is kept: on either,
//! the stored token is printed at once with a warning, so a status bar under `timeout 2` gets
//! it and the server is not asked again by every run.
//! This is the one place a whole token is printed, on purpose, and only on stdout; like
//! `--once`, it says nothing on stderr when it succeeds.

use std::time::SystemTime;

use serde_json::json;
use tokend_core::credentials::OAuthView;
use tokend_core::refresh::{
    ACCESS_ONLY, Floor, MIN_LEFT_MS, Mode, Outcome, Policy, RefreshError, Retry,
};
use tokend_core::schedule::{epoch_millis, is_due};
use tokend_core::store::Store;

use crate::cli::Settings;
use crate::commands::{exit_code, held_back, policy_for, refresh_interruptibly, report, started};
use crate::exit;
use crate::interrupt;
use crate::logins::one_store_for;
use crate::show::{emit, when};

pub fn token(settings: &Settings, as_json: bool) -> u8 {
    interrupt::ignore_user_signals();
    let store = match one_store_for(settings, "token") {
        Ok(s) => s,
        Err(code) => return code,
    };
    let now = || epoch_millis(SystemTime::now());
    let seen = store.read().ok().and_then(|s| s.doc.oauth().ok().flatten());
    // The fast path, as `--once` has it: a usable token from one unlocked read, no runtime, no
    // HTTP client, no lock, no signal handler.
    if let Some(view) = &seen
        && view.access_token_lasts(now(), MIN_LEFT_MS)
    {
        if !is_due(now(), view.expires_at, settings.refresh_before) {
            return print(view, as_json);
        }
        // Nothing could make an access-only token fresher: served while it lasts.
        if view.is_access_only() {
            warn_access_only(&store, view);
            return print(view, as_json);
        }
    }
    // Due by the lead: the usual decision under the lock (which also sees the half-lifetime
    // rule and the floor). Not due by the lead but too close to the end to hand out (a lead
    // under a minute): refreshed now, unless the floor holds it back or another process
    // already replaced the refresh token seen here.
    let mode = match &seen {
        Some(v)
            if !v.access_token.is_blank()
                && !is_due(now(), v.expires_at, settings.refresh_before) =>
        {
            match v.usable_refresh_token() {
                Some(rt) => Mode::Force {
                    expected: Some(rt.clone()),
                    floor: Floor::Honour,
                },
                None => Mode::IfDue,
            }
        }
        _ => Mode::IfDue,
    };
    // A stored token that still lasts is printed if refreshing fails: one request then (a
    // status bar's `timeout 2` would end a retry loop with nothing printed), and a pause an
    // earlier run's transient failure recorded is kept (checked under the lock, and only
    // while the token still lasts there). Otherwise the usual retries within the budget.
    let retry = match &seen {
        Some(v) if v.access_token_lasts(now(), MIN_LEFT_MS) => Retry::Never,
        _ => Retry::WithinBudget,
    };
    let policy = Policy {
        honour_pause: true,
        ..policy_for(settings)
    };
    let mut session = None;
    let result = match started(&mut session)
        .and_then(|s| refresh_interruptibly(s, &store, &policy, mode, settings.retry_budget, retry))
    {
        Ok(result) => result,
        // Interrupted: no token on stdout.
        Err(code) => return code,
    };
    if let Some(signal) = session.as_mut().and_then(interrupt::Session::pending) {
        return interrupt::exit_code(signal);
    }
    // Whatever the outcome, the token printed is the one in the store now: after a refresh (ours
    // or another process's) that is the new one.
    let current = store
        .read()
        .ok()
        .and_then(|s| s.doc.oauth().ok().flatten())
        .filter(|v| !v.is_logged_out());
    let lasts = |v: &OAuthView| v.access_token_lasts(now(), MIN_LEFT_MS);
    match (result, current) {
        (Ok(_), Some(view)) if lasts(&view) => print(&view, as_json),
        (Ok(_), Some(view)) if view.is_access_only() => report(&access_only(&store)),
        (Ok(outcome), Some(view)) => {
            // The floor held the refresh back (or the server grants tokens that live under a
            // minute).
            let next_at = match outcome {
                Outcome::Fresh { next_at, .. } => Some(next_at),
                _ => None,
            };
            held_back(&store, &view, next_at)
        }
        (Ok(_), None) => report(&RefreshError::LoginNeeded {
            place: store.place(),
            why: "the login was removed meanwhile",
        }),
        (Err(RefreshError::Paused { until, why, .. }), Some(view)) if lasts(&view) => {
            interrupt::tell(format_args!(
                "warning: refreshing is paused until {}, since the last attempt failed ({why}); \
                 nothing was sent; printing the stored token, which is still valid until {}",
                when(until),
                when(view.expires_at.unwrap_or_default())
            ));
            print(&view, as_json)
        }
        (Err(e), Some(view)) if exit_code(&e) == exit::TEMPFAIL && lasts(&view) => {
            interrupt::tell(format_args!(
                "warning: {e}; printing the stored token, which is still valid until {}",
                when(view.expires_at.unwrap_or_default())
            ));
            print(&view, as_json)
        }
        // Became access-only since the first read (a mirror rewritten meanwhile).
        (Err(RefreshError::LoginNeeded { why, .. }), Some(view))
            if why == ACCESS_ONLY && lasts(&view) =>
        {
            warn_access_only(&store, &view);
            print(&view, as_json)
        }
        (Err(e), _) => report(&e),
    }
}

/// The refusal of an access-only login that does not last long enough to hand out.
fn access_only(store: &Store) -> RefreshError {
    RefreshError::LoginNeeded {
        place: store.place(),
        why: ACCESS_ONLY,
    }
}

/// An access-only token handed out although it is due: it cannot be refreshed here, and it
/// stops working when it expires.
fn warn_access_only(store: &Store, view: &OAuthView) {
    let until = match view.expires_at {
        Some(at) => format!("valid until {}", when(at)),
        None => "of unknown expiry".to_owned(),
    };
    interrupt::tell(format_args!(
        "warning: {}: {ACCESS_ONLY}; printing its access token, {until}",
        store.place()
    ));
}

/// The token (or `{"accessToken":…,"expiresAt":…}`) and a newline, in one write.
fn print(view: &OAuthView, as_json: bool) -> u8 {
    let token = view.access_token.expose();
    let mut out = if as_json {
        json!({"accessToken": token, "expiresAt": view.expires_at}).to_string()
    } else {
        token.to_owned()
    };
    out.push('\n');
    match emit(out.as_bytes()) {
        Ok(()) => exit::OK,
        Err(code) => code,
    }
}
