//! Why a login could not be saved, sorted by what the user must do next: [`LoginError`], and
//! for a refusal that is not about the code, what to check (a wrong token URL, a proxy, a
//! refused redirect URI).

use std::fmt;

use super::save::LoginRequest;
use crate::oauth::{OAuthError, Refusal};
use crate::store::StoreError;

/// Why a login could not be saved. Each says whether running `login` again can help: only
/// after [`Refused`](Self::Refused) (a new code), [`MaybeSpent`](Self::MaybeSpent) and
/// [`Unavailable`](Self::Unavailable) (later); never after a refused client, a misdirected
/// endpoint or another refusal that is not about the code, where a setting must change first.
#[derive(Debug)]
pub enum LoginError {
    /// The existing file cannot be merged into (malformed, unreadable), or the lock could not
    /// be taken; nothing was sent.
    Store(StoreError),
    /// The server refused the code (`invalid_grant`, flat or nested: expired, used, or another
    /// attempt's): a new login, with a new code, can help. The only refusal that says so.
    Refused(OAuthError),
    /// The server refused the exchange for a reason a new code does not change (a 404 from a
    /// wrong `--token-url`, a proxy's page, a refused redirect URI, an unsupported grant), or
    /// without saying why: `check` says what to look at.
    NotTheCode { error: OAuthError, check: String },
    /// The server refused the client (`invalid_client`, `unauthorized_client`) or the scopes
    /// asked for (`invalid_scope`): a setting is wrong, and a new login with it fails the same.
    ClientRefused {
        client_id: String,
        /// Where the client id came from (a flag, a variable, the built-in default).
        origin: String,
        /// The scopes asked for, named when the server refused them.
        scope: String,
        error: OAuthError,
    },
    /// The endpoint redirected (never followed: the body carries the code), or the HTTP client
    /// could not be set up: a setting must change.
    Endpoint(OAuthError),
    /// A transient failure after the code was sent (5xx, a dropped connection, a timeout, a 200
    /// without a token): the server may have used the code, so it was not sent again.
    MaybeSpent(OAuthError),
    /// Transient failures that left the code unspent, until the budget ran out.
    Unavailable(OAuthError),
    /// The server issued the login, but it could not be saved, retried for a while: the code
    /// is spent, so the login is lost.
    SaveFailed(StoreError),
}

impl LoginError {
    /// Sorts a failed exchange, the code possibly spent, by what the user must do next.
    pub(super) fn of_exchange(error: OAuthError, req: &LoginRequest<'_>) -> LoginError {
        match &error {
            OAuthError::Transient { .. } => LoginError::MaybeSpent(error),
            OAuthError::Misdirected { .. } => LoginError::Endpoint(error),
            OAuthError::Permanent { code, refusal, .. } => match code.as_deref() {
                // What the server says of a code that expired, was used, or belongs to another
                // attempt (Anthropic's: `invalid_grant`, "Invalid 'code' in request").
                Some("invalid_grant") => LoginError::Refused(error),
                Some("invalid_client" | "unauthorized_client" | "invalid_scope") => {
                    LoginError::ClientRefused {
                        client_id: req.client_id.to_owned(),
                        origin: req.client_id_origin.to_owned(),
                        scope: req.scope.to_owned(),
                        error,
                    }
                }
                other => {
                    let check = what_to_check(other, refusal, req);
                    LoginError::NotTheCode { error, check }
                }
            },
        }
    }
}

/// What to look at after a refusal that is not about the code, from what the answer shows.
/// A refusal that shows nothing (a bare 400) is not taken for a spent code either: the real
/// server names a bad code (`invalid_grant`), so a new login is offered only as one possibility.
fn what_to_check(code: Option<&str>, r: &Refusal, req: &LoginRequest<'_>) -> String {
    let url = req.client.token_url.as_str();
    let setting = req.token_url_setting;
    let says = |word: &str| {
        r.detail
            .as_deref()
            .is_some_and(|d| d.to_ascii_lowercase().contains(word))
    };
    let endpoint = format!("{setting} (now {url})");
    if matches!(r.status, 404 | 405 | 410) {
        return format!(
            "no token endpoint answers there (HTTP {}): check {endpoint}",
            r.status
        );
    }
    if r.status == 407 {
        return "a proxy asks for its credentials (HTTP 407): give them in the proxy setting \
                (HTTPS_PROXY=http://user:password@host:port)"
            .to_owned();
    }
    if r.html {
        return format!(
            "the answer is a web page, not the token endpoint's: a proxy or firewall between \
             this machine and the endpoint turned the request away, or the URL is not the token \
             endpoint. Check the proxy (HTTPS_PROXY, ALL_PROXY, NO_PROXY) and {endpoint}"
        );
    }
    if matches!(code, Some("invalid_request" | "invalid_request_error")) && says("redirect") {
        return match req.redirect_uri_setting {
            Some(name) => format!(
                "the server refused the redirect URI `{}`: check {name}; it must be the one \
                 the client is registered with (the default is Claude Code's own)",
                req.redirect_uri
            ),
            None => format!(
                "the server refused the loopback redirect URI `{}`: sign in with the paste flow \
                 instead (`claude-tokend login` without --loopback)",
                req.redirect_uri
            ),
        };
    }
    if code == Some("unsupported_grant_type") {
        return format!("the endpoint does not exchange authorization codes: check {endpoint}");
    }
    if matches!(r.status, 401 | 403) {
        return format!(
            "the server refused access (HTTP {}), not the code, as an API address does and the \
             OAuth token endpoint does not: check {endpoint} and any proxy between",
            r.status
        );
    }
    // Another error may still name the code ("Invalid 'code' in request"): then a new code is
    // offered as one possibility, never promised (exit 1, not 77).
    let names_the_code = r.detail.as_deref().is_some_and(|d| {
        d.to_ascii_lowercase()
            .replace("code_verifier", "")
            .replace("code_challenge", "")
            .contains("code")
    });
    if code.is_some() && names_the_code {
        return format!(
            "the server refused the request without calling the code expired or used (it says \
             so with `invalid_grant`), though it names the code. If the code was more than a few \
             minutes old or had been used already, run `claude-tokend login` again; otherwise \
             check {endpoint}"
        );
    }
    if code.is_some() {
        return format!(
            "the server refused the request itself, not the code: check {endpoint}; if that is the \
             right endpoint, it may expect a request this version does not make (an update of \
             claude-tokend may help)"
        );
    }
    format!(
        "the server did not say why (no OAuth error, such as the `invalid_grant` it sends for an \
         expired or used code): check {endpoint}. If the code was more than a few minutes old or had \
         been used already, run `claude-tokend login` again"
    )
}

impl fmt::Display for LoginError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoginError::Store(e) => e.fmt(f),
            LoginError::Refused(e) => write!(
                f,
                "{e}. Nothing was saved. Authorization codes expire within minutes and work once: \
                 run `claude-tokend login` again for a new one"
            ),
            LoginError::ClientRefused {
                client_id,
                origin,
                scope,
                error,
            } if matches!(error, OAuthError::Permanent { code: Some(c), .. } if c == "invalid_scope") =>
            {
                write!(
                    f,
                    "{error}. The server refused the scopes asked for (`{scope}`) for the OAuth \
                     client `{client_id}` (from {origin}), not the code, and nothing was saved: \
                     check --scope (or the client id); signing in with the same settings fails \
                     the same way"
                )
            }
            LoginError::ClientRefused {
                client_id,
                origin,
                error,
                ..
            } => write!(
                f,
                "{error}. The server refused the OAuth client `{client_id}` (from {origin}), \
                 not the code, and nothing was saved: check that client id, or pass the right \
                 one with --client-id; signing in with the same client fails the same way"
            ),
            LoginError::NotTheCode { error, check } => {
                write!(f, "{error}. Nothing was saved: {check}")
            }
            LoginError::Endpoint(e) => write!(
                f,
                "{e}. Nothing was saved: once the setting is fixed, run `claude-tokend login` again"
            ),
            LoginError::MaybeSpent(e) => write!(
                f,
                "{e}. The server may have used the authorization code, so it was not sent again, \
                 and nothing was saved: run `claude-tokend login` again for a new one (later, if \
                 the server is having trouble)"
            ),
            LoginError::Unavailable(e) => write!(f, "{e}; try `claude-tokend login` again later"),
            LoginError::SaveFailed(e) => write!(
                f,
                "the server issued the new login, but it could not be saved: {e}. The \
                 authorization code is spent, so this login may be lost: fix the problem (disk \
                 space, permissions) and run `claude-tokend login` again"
            ),
        }
    }
}

impl std::error::Error for LoginError {}
