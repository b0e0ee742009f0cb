//! `claude-tokend token [--json]`: a valid access token on stdout, for status bars, proxies and
//! scripts that would otherwise read the credentials and refresh on their own (racing Claude
//! Code and spending single-use refresh tokens). When the token is due it is refreshed first,
//! by the same sequence and under the same locks as `--once`, so any number of concurrent
//! `token` and `--once` runs send one request. This is the one place a whole token is printed,
//! on purpose, and only on stdout; like `--once`, it says nothing on stderr when it succeeds.

use std::time::SystemTime;

use serde_json::json;
use tokend_core::credentials::OAuthView;
use tokend_core::refresh::{self, Mode, RefreshError};
use tokend_core::schedule::{epoch_millis, is_due};

use crate::cli::Settings;
use crate::commands::{exit_code, one_store_for, policy_for, runtime};
use crate::exit;
use crate::show::emit;

/// A token with less than this left is not handed out when its refresh failed: a script could
/// not finish a request with it.
const MIN_LEFT_MS: i64 = 60_000;

pub fn token(settings: &Settings, as_json: bool) -> u8 {
    let store = match one_store_for(settings, "token") {
        Ok(s) => s,
        Err(code) => return code,
    };
    let now = || epoch_millis(SystemTime::now());
    // The fast path, as `--once` has it: a fresh token from one unlocked read, no runtime, no
    // HTTP client, no lock.
    if let Ok(snapshot) = store.read()
        && let Ok(Some(view)) = snapshot.doc.oauth()
        && !view.is_logged_out()
        && !is_due(now(), view.expires_at, settings.refresh_before)
    {
        return print(&view, as_json);
    }
    let policy = policy_for(settings);
    let result = runtime().block_on(refresh::refresh_with_budget(
        &store,
        &policy,
        Mode::IfDue,
        settings.retry_budget,
    ));
    // Whatever the outcome, the token printed is the one in the store now: after a refresh (ours
    // or another process's) that is the new one.
    let current = store
        .read()
        .ok()
        .and_then(|s| s.doc.oauth().ok().flatten())
        .filter(|v| !v.is_logged_out());
    match (result, current) {
        (Ok(_), Some(view)) if view.expires_at.is_some_and(|at| at > now()) => {
            print(&view, as_json)
        }
        (Ok(_), Some(_)) => {
            // Only a grant that lives less than the 60 s floor gets here: the refresh is held
            // back and the stored token has run out.
            eprintln!(
                "claude-tokend: the access token in {} has expired and may not be refreshed again \
                 yet (no refresh within a minute of the last); try again shortly",
                store.place()
            );
            exit::TEMPFAIL
        }
        (Ok(_), None) => {
            let e = RefreshError::LoginNeeded {
                place: store.place(),
                why: "the login was removed meanwhile",
            };
            eprintln!("claude-tokend: {e}");
            exit_code(&e)
        }
        (Err(e), Some(view))
            if exit_code(&e) == exit::TEMPFAIL
                && view
                    .expires_at
                    .is_some_and(|at| at.saturating_sub(now()) > MIN_LEFT_MS) =>
        {
            eprintln!(
                "claude-tokend: warning: {e}; printing the stored token, which is still valid \
                 until {}",
                crate::show::when(view.expires_at.unwrap_or_default())
            );
            print(&view, as_json)
        }
        (Err(e), _) => {
            eprintln!("claude-tokend: {e}");
            exit_code(&e)
        }
    }
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
