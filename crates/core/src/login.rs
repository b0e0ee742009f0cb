//! Signing in and out. It owns PKCE (verifier, challenge, and a separate `state`), the authorize
//! URL, reading what the user pastes back, and saving a login or removing it under the same lock
//! and atomic write as a refresh. A login is made the way Claude Code makes one: its scopes, and
//! the plan from the account's profile ([`crate::profile`]) saved with the tokens. Before the
//! browser step it checks that the store could take the login ([`check_store`]). It does no
//! terminal or browser I/O: the binary does.

use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

use crate::claude_locks;
use crate::credentials::LoginGrant;
use crate::oauth::{
    ClientConfig, CodeExchange, ExchangeError, OAuthError, TokenClient, TokenGrant,
};
use crate::profile::{self, Profile, ProfileError};
use crate::refresh::{RunControl, STOP_SAVE_GRACE};
use crate::save::{self, Change};
use crate::schedule::{
    Backoff, GrantRecord, boot_millis, epoch_millis, random_unit, token_fingerprint,
};
use crate::secret::Secret;
use crate::settings::Url;
use crate::store::{AccountRecord, Store, StoreError};

/// The scopes a normal login asks for: Claude Code 2.1.332's own. A login with fewer (the seed's
/// three) works for inference, but Claude Code then finds no plan for it and treats it as a
/// lesser login than its own.
pub const DEFAULT_SCOPE: &str = "org:create_api_key user:profile user:inference \
                                 user:sessions:claude_code user:mcp_servers user:file_upload";
/// The one scope a long-lived login asks for: least privilege for a token that lives a year.
pub const LONG_LIVED_SCOPE: &str = "user:inference";
/// A long-lived login asks for a year.
pub const LONG_LIVED_SECONDS: u64 = 31_536_000;

/// A PKCE pair and the separate, random `state`. The verifier never leaves this process except
/// in the code exchange's body; the `state` is what travels through the browser.
pub struct Pkce {
    pub verifier: Secret,
    pub challenge: String,
    pub state: String,
}

fn random_b64(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).expect("the OS random source is available");
    URL_SAFE_NO_PAD.encode(buf)
}

/// base64url(SHA-256(verifier)), the S256 challenge.
pub fn challenge_for(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

impl Pkce {
    pub fn generate() -> Self {
        let verifier = random_b64(32);
        Pkce {
            challenge: challenge_for(&verifier),
            verifier: Secret::new(verifier),
            state: random_b64(32),
        }
    }
}

/// The authorize URL, with `code=true` (the page shows a code to paste back).
pub fn authorize_url(
    endpoint: &Url,
    client_id: &str,
    redirect_uri: &str,
    scope: &str,
    pkce: &Pkce,
) -> Url {
    let mut url = endpoint.clone();
    url.query_pairs_mut()
        .append_pair("code", "true")
        .append_pair("client_id", client_id)
        .append_pair("response_type", "code")
        .append_pair("redirect_uri", redirect_uri)
        .append_pair("scope", scope)
        .append_pair("code_challenge", &pkce.challenge)
        .append_pair("code_challenge_method", "S256")
        .append_pair("state", &pkce.state);
    url
}

/// What the user pasted: the code, and the state when the paste carried one.
#[derive(Debug, PartialEq, Eq)]
pub struct Pasted {
    pub code: Secret,
    pub state: Option<String>,
}

/// Why a paste was refused. Never echoes the paste (it holds a code).
#[derive(Debug, PartialEq, Eq)]
pub enum PasteError {
    Empty,
    NoCode,
    StateMismatch,
}

impl fmt::Display for PasteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PasteError::Empty => "nothing was pasted; run `claude-tokend login` again and paste the code the page shows",
            PasteError::NoCode => "the pasted text has no authorization code; paste the code the page shows (CODE#STATE)",
            PasteError::StateMismatch => {
                "the pasted code belongs to a different login attempt (its state does not match this one); \
                 nothing was sent. Run `claude-tokend login` again and use the URL it prints"
            }
        })
    }
}

impl std::error::Error for PasteError {}

/// Reads `CODE#STATE`, `CODE`, or a whole callback URL (`…?code=…&state=…`), with any
/// surrounding whitespace.
pub fn parse_paste(input: &str) -> Result<Pasted, PasteError> {
    let text = input.trim();
    if text.is_empty() {
        return Err(PasteError::Empty);
    }
    if text.contains("://") || text.starts_with('?') || text.contains("code=") {
        let query_url = if text.contains("://") {
            Url::parse(text).ok()
        } else {
            Url::parse(&format!("http://x/?{}", text.trim_start_matches('?'))).ok()
        };
        if let Some(url) = query_url {
            let mut code = None;
            let mut state = None;
            // The code may also come in the fragment (`#code=…`) on some callback pages.
            let fragment_pairs = url
                .fragment()
                .map(|f| {
                    url::form_urlencoded::parse(f.as_bytes())
                        .into_owned()
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default();
            for (k, v) in url.query_pairs().into_owned().chain(fragment_pairs) {
                match k.as_str() {
                    "code" if code.is_none() => code = Some(v),
                    "state" if state.is_none() => state = Some(v),
                    _ => {}
                }
            }
            // `…?code=CODE#STATE`: a bare fragment is the state, as in a `CODE#STATE` paste.
            if state.is_none()
                && let Some(f) = url.fragment().filter(|f| !f.is_empty() && !f.contains('='))
            {
                state = Some(f.to_owned());
            }
            let code = code.map(|c| c.trim().to_owned()).filter(|c| !c.is_empty());
            return match code {
                Some(code) => {
                    // A code of the form CODE#STATE inside the query is split as a paste would be.
                    let (code, inner_state) = split_hash(&code);
                    Ok(Pasted {
                        code: Secret::new(code),
                        state: state.or(inner_state).filter(|s| !s.is_empty()),
                    })
                }
                None => Err(PasteError::NoCode),
            };
        }
    }
    let (code, state) = split_hash(text);
    if code.is_empty() {
        return Err(PasteError::NoCode);
    }
    Ok(Pasted {
        code: Secret::new(code),
        state,
    })
}

fn split_hash(text: &str) -> (String, Option<String>) {
    match text.split_once('#') {
        Some((c, s)) => (
            c.trim().to_owned(),
            Some(s.trim().to_owned()).filter(|s| !s.is_empty()),
        ),
        None => (text.trim().to_owned(), None),
    }
}

/// Checks a pasted state against ours. A paste without one is accepted (some pages show only
/// the code); a different one is refused before anything is sent.
pub fn check_state(pasted: &Pasted, ours: &str) -> Result<(), PasteError> {
    match &pasted.state {
        Some(s) if s != ours => Err(PasteError::StateMismatch),
        _ => Ok(()),
    }
}

/// Why a login could not be saved.
#[derive(Debug)]
pub enum LoginError {
    /// The existing file cannot be merged into (malformed, unreadable), or the lock could not
    /// be taken; nothing was sent.
    Store(StoreError),
    /// The server refused the code, or a failure after which the code may be spent.
    Refused(OAuthError),
    /// Transient failures that left the code unspent, until the budget ran out.
    Unavailable(OAuthError),
    /// The server issued the login, but it could not be saved, retried for a while: the code
    /// is spent, so the login is lost.
    SaveFailed(StoreError),
}

impl fmt::Display for LoginError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoginError::Store(e) => e.fmt(f),
            LoginError::Refused(e) => write!(
                f,
                "{e}. Authorization codes work once: run `claude-tokend login` again for a new one"
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

/// What a finished login saved.
#[derive(Debug)]
pub struct Saved {
    pub path: PathBuf,
    pub access_token: String,
    pub expires_at: i64,
    pub has_refresh_token: bool,
    pub profile: ProfileLookup,
}

/// How the profile lookup after the exchange went. Only `Read` put a plan into the login.
#[derive(Debug, PartialEq, Eq)]
pub enum ProfileLookup {
    Read(Profile),
    /// The granted scopes lack `user:profile` (a long-lived login): not asked.
    Skipped,
    /// It failed: the login was saved without a plan, and the caller warns.
    Failed(ProfileError),
    /// A stop (a signal) came first: the login was saved without a plan, as after a failure.
    Interrupted,
}

/// The exchange parameters the binary collected.
pub struct LoginRequest<'a> {
    pub client: &'a ClientConfig,
    pub client_id: &'a str,
    pub redirect_uri: &'a str,
    pub pkce: &'a Pkce,
    pub code: &'a Secret,
    /// `Some(year)` for a long-lived login.
    pub expires_in: Option<u64>,
    /// The scopes asked for (space-separated): what was granted when the answer does not say.
    pub scope: &'a str,
    /// The API base the profile is looked up under.
    pub api_url: &'a Url,
}

/// Checks, before the user is sent to sign in, that a login could be saved in `store`, so that
/// nobody goes through the browser for a login that is then refused (CONTRACT.md: "`login`
/// refuses a store it could not write before the browser step"). A missing config directory is
/// created (0700); then, under the lock as a save would take it, the store is read (a malformed
/// or unreadable one, or a locked keychain, fails here) and a temp file is made and removed (a
/// directory that takes no file fails here). Nothing of the store changes. The same checks run
/// again when the login is saved, in case something changed meanwhile.
pub async fn check_store(store: &Store, budget: Duration) -> Result<(), StoreError> {
    store.ensure_dir()?;
    let lock = store.lock(Instant::now().checked_add(budget)).await?;
    match store.read_settled().await {
        // A Keychain item too big for `security` could not take the new login either.
        Ok(snapshot) => store.check_room(&snapshot.doc)?,
        Err(StoreError::Missing { .. }) => {}
        Err(e) => return Err(e),
    }
    // Under the lock: no other writer's temp file is touched by its tidying.
    drop(store.begin_write()?);
    drop(lock);
    Ok(())
}

/// Exchanges the code and merges the new login into the file, keeping every other key. The
/// directory is created (0700) when missing. Under the lock, the file is read (a malformed one
/// is refused before the code is spent) and the temp file created before the exchange.
///
/// `control` is told when the exchange is at stake (from the moment it is sent: the code may be
/// spent) and may ask the login to stop: before the exchange is sent, the caller drops the
/// future; after, a stop ends the retries of an unspent code, skips or cuts short the profile
/// lookup, and leaves the save [`STOP_SAVE_GRACE`] to succeed.
pub async fn save_login(
    store: &Store,
    req: &LoginRequest<'_>,
    budget: Duration,
    control: &RunControl,
) -> Result<Saved, LoginError> {
    store.ensure_dir().map_err(LoginError::Store)?;
    let deadline = Instant::now().checked_add(budget);
    let lock = store.lock(deadline).await.map_err(LoginError::Store)?;
    crate::refresh::tidy(store, &lock);
    // A malformed file is refused here, before the code is spent.
    let base = match store.read_settled().await {
        Ok(snapshot) => Some(snapshot.doc),
        Err(StoreError::Missing { .. }) => None,
        Err(e) => return Err(LoginError::Store(e)),
    };
    // Nor is a code spent on a login the store could not take (a Keychain item too big).
    if let Some(doc) = &base {
        store.check_room(doc).map_err(LoginError::Store)?;
    }
    let mut pending = Some(store.begin_write().map_err(LoginError::Store)?);
    let client = TokenClient::new(req.client).map_err(LoginError::Refused)?;
    let exchange = CodeExchange {
        code: req.code,
        state: &req.pkce.state,
        client_id: req.client_id,
        redirect_uri: req.redirect_uri,
        verifier: &req.pkce.verifier,
        expires_in: req.expires_in,
    };
    let mut retries = 0;
    let (sent_wall, sent_boot) = (epoch_millis(SystemTime::now()), boot_millis());
    let grant = loop {
        control.set_at_stake(true);
        match client.exchange_code(&exchange).await {
            Ok(grant) => break grant,
            Err(ExchangeError {
                error,
                code_unspent: true,
            }) => {
                // The code was not spent: nothing is at stake until the next try.
                control.set_at_stake(false);
                let Some(delay) = Backoff::STANDARD.delay_within(
                    retries,
                    random_unit(),
                    error.retry_after(),
                    deadline.map_or(Duration::MAX, |d| {
                        d.saturating_duration_since(Instant::now())
                    }),
                ) else {
                    return Err(LoginError::Unavailable(error));
                };
                if control.is_stopping() {
                    return Err(LoginError::Unavailable(error));
                }
                retries += 1;
                tracing::warn!("{error}; retrying in {:.1}s", delay.as_secs_f64());
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = control.stopped() => return Err(LoginError::Unavailable(error)),
                }
            }
            Err(ExchangeError { error, .. }) => return Err(LoginError::Refused(error)),
        }
    };
    // The login is in hand from here: a stop skips what is left of the profile lookup, never
    // the save.
    let lookup = lookup_profile(req, &grant, control).await;
    let plan = match &lookup {
        ProfileLookup::Read(p) => p.clone(),
        _ => Profile::default(),
    };
    // A login is a grant this program obtained: the floor holds for it too.
    if let Some(rt) = &grant.refresh_token {
        lock.set_grant_record(&GrantRecord {
            obtained_at: sent_wall,
            obtained_boot: sent_boot,
            lifetime_ms: grant.expires_at.saturating_sub(sent_wall),
            token: token_fingerprint(rt),
        });
    }
    let lock_paths = claude_locks::lock_paths(store.path());
    let login = LoginGrant {
        tokens: grant,
        subscription_type: plan.subscription_type,
        rate_limit_tier: plan.rate_limit_tier,
    };
    let change = || Change::Login {
        grant: &login,
        base: base.as_ref(),
    };
    // The code is spent: these tokens are the login. A failed save is retried for a while
    // (the daemon's rule on SIGTERM), with a new temp file each time.
    let mut save_until: Option<Instant> = None;
    let mut retries = 0;
    loop {
        let attempt = match pending.take() {
            Some(p) => Ok(p),
            None => store.begin_write(),
        };
        let result = match attempt {
            Ok(p) => save::save(store, &lock, &lock_paths, &|| {}, p, change()).await,
            Err(e) => Err(e),
        };
        let error = match result {
            Ok(_) => break,
            Err(e) => e,
        };
        let now = Instant::now();
        let until =
            *save_until.get_or_insert_with(|| now.checked_add(STOP_SAVE_GRACE).unwrap_or(now));
        let Some(delay) = Backoff::SAVE.delay_within(
            retries,
            random_unit(),
            None,
            until.saturating_duration_since(now),
        ) else {
            return Err(LoginError::SaveFailed(error));
        };
        retries += 1;
        tracing::warn!(
            "the new login could not be saved ({error}); retrying in {:.1}s",
            delay.as_secs_f64()
        );
        tokio::time::sleep(delay).await;
    }
    // The account `status` shows for as long as the stored login descends from this one (a
    // login without an email or a refresh token clears the last login's).
    let account = match (&login.tokens.refresh_token, &lookup) {
        (Some(rt), ProfileLookup::Read(p)) => {
            p.email.as_deref().and_then(|e| AccountRecord::new(rt, e))
        }
        _ => None,
    };
    lock.set_account_record(account.as_ref());
    control.set_at_stake(false);
    Ok(Saved {
        path: store.path().to_path_buf(),
        access_token: login.tokens.access_token.masked(),
        expires_at: login.tokens.expires_at,
        has_refresh_token: login.tokens.refresh_token.is_some(),
        profile: lookup,
    })
}

/// Reads the new login's profile, as Claude Code does right after its own exchange, so the
/// login saved carries its plan. Skipped when the granted scopes (the asked ones when the answer
/// names none) do not allow it. Made before the save, with the grant in hand, because the login
/// is written once, whole; it is one attempt bounded by the client's timeouts, cut short by a
/// stop (the login is then saved without its plan, as after a failed lookup).
async fn lookup_profile(
    req: &LoginRequest<'_>,
    grant: &TokenGrant,
    control: &RunControl,
) -> ProfileLookup {
    let allowed = match &grant.scopes {
        Some(granted) => profile::scopes_allow_lookup(granted),
        None => profile::scopes_allow_lookup(&req.scope.split_whitespace().collect::<Vec<_>>()),
    };
    if !allowed {
        return ProfileLookup::Skipped;
    }
    tokio::select! {
        biased;
        _ = control.stopped() => ProfileLookup::Interrupted,
        fetched = profile::fetch(req.api_url, &req.client.user_agent, &grant.access_token) => {
            match fetched {
                Ok(p) => ProfileLookup::Read(p),
                Err(e) => ProfileLookup::Failed(e),
            }
        }
    }
}

/// What `logout` did.
#[derive(Debug, PartialEq, Eq)]
pub enum LoggedOut {
    /// `claudeAiOauth` was removed; other keys remain in the file.
    Removed,
    /// `claudeAiOauth` was the only key: the file was deleted.
    Deleted,
    /// There was no login to remove.
    NothingToDo,
}

/// Whether `store` holds a login for `logout` to remove: a `claudeAiOauth` (blank or not). A
/// missing store holds none. Read without the lock, to decide whether to ask at all; `logout`
/// decides again under it.
pub async fn has_login(store: &Store) -> Result<bool, StoreError> {
    match store.read_settled().await {
        Ok(snapshot) => Ok(snapshot
            .doc
            .root()
            .contains_key(crate::credentials::OAUTH_KEY)),
        Err(StoreError::Missing { .. }) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Removes `claudeAiOauth` only, under the lock, atomically; deletes the file when nothing
/// else remains in it. The decision is made on the store as re-read under Claude Code's
/// storage-write lock, so a write Claude Code made a moment before is neither lost nor undone.
/// A missing store is nothing to do (a second logout): no directory or lock file is made for it.
pub async fn logout(store: &Store, budget: Duration) -> Result<LoggedOut, StoreError> {
    if !has_login(store).await? {
        return Ok(LoggedOut::NothingToDo);
    }
    let lock = store.lock(Instant::now().checked_add(budget)).await?;
    crate::refresh::tidy(store, &lock);
    // Refused early, with nothing taken: a malformed file is not rewritten, and a store removed
    // meanwhile has no login to remove.
    match store.read_settled().await {
        Ok(_) => {}
        Err(StoreError::Missing { .. }) => return Ok(LoggedOut::NothingToDo),
        Err(e) => return Err(e),
    }
    let lock_paths = claude_locks::lock_paths(store.path());
    let pending = store.begin_write()?;
    match save::save(store, &lock, &lock_paths, &|| {}, pending, Change::Logout).await? {
        save::Saved::Written {
            fingerprint: None, ..
        } => Ok(LoggedOut::Deleted),
        save::Saved::Written { .. } => Ok(LoggedOut::Removed),
        _ => Ok(LoggedOut::NothingToDo),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn pkce_matches_rfc7636_and_state_is_separate() {
        // The example from RFC 7636, appendix B.
        assert_eq!(
            challenge_for("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
        let p = Pkce::generate();
        assert_eq!(
            p.verifier.expose().len(),
            43,
            "32 bytes, base64url without padding"
        );
        assert_eq!(p.challenge, challenge_for(p.verifier.expose()));
        assert_ne!(p.state, p.verifier.expose());
        assert!(!p.verifier.expose().contains('='));
    }

    #[test]
    fn authorize_url_has_every_parameter() {
        let p = Pkce::generate();
        let url = authorize_url(
            &Url::parse("https://claude.ai/oauth/authorize").unwrap(),
            "cid",
            "https://platform.claude.com/oauth/code/callback",
            DEFAULT_SCOPE,
            &p,
        );
        let q: std::collections::HashMap<_, _> = url.query_pairs().into_owned().collect();
        assert_eq!(
            url.query_pairs().next().unwrap(),
            ("code".into(), "true".into())
        );
        assert_eq!(q["client_id"], "cid");
        assert_eq!(q["response_type"], "code");
        assert_eq!(
            q["redirect_uri"],
            "https://platform.claude.com/oauth/code/callback"
        );
        assert_eq!(q["scope"], DEFAULT_SCOPE);
        assert_eq!(q["code_challenge"], p.challenge);
        assert_eq!(q["code_challenge_method"], "S256");
        assert_eq!(q["state"], p.state);
        assert!(
            !url.as_str().contains(p.verifier.expose()),
            "the verifier never goes in the URL"
        );
    }

    #[test]
    fn pastes_by_table() {
        let ok = |code: &str, state: Option<&str>| {
            Ok(Pasted {
                code: Secret::new(code),
                state: state.map(str::to_owned),
            })
        };
        let cases = [
            ("abc#xyz", ok("abc", Some("xyz"))),
            ("  abc#xyz \n", ok("abc", Some("xyz"))),
            ("abc", ok("abc", None)),
            ("abc#", ok("abc", None)),
            (
                "https://platform.claude.com/oauth/code/callback?code=abc&state=xyz",
                ok("abc", Some("xyz")),
            ),
            (
                "http://localhost:5/callback?state=xyz&code=a%2Bb",
                ok("a+b", Some("xyz")),
            ),
            (
                "https://x.example/cb#code=abc&state=xyz",
                ok("abc", Some("xyz")),
            ),
            ("?code=abc&state=xyz", ok("abc", Some("xyz"))),
            ("code=abc#xyz", ok("abc", Some("xyz"))),
            ("", Err(PasteError::Empty)),
            ("   ", Err(PasteError::Empty)),
            ("#xyz", Err(PasteError::NoCode)),
            ("https://x.example/cb?state=xyz", Err(PasteError::NoCode)),
        ];
        for (input, want) in cases {
            assert_eq!(parse_paste(input), want, "paste {input:?}");
        }
    }

    #[test]
    fn state_check() {
        let p = parse_paste("abc#theirs").unwrap();
        assert_eq!(check_state(&p, "ours"), Err(PasteError::StateMismatch));
        assert_eq!(check_state(&p, "theirs"), Ok(()));
        assert_eq!(check_state(&parse_paste("abc").unwrap(), "ours"), Ok(()));
        assert!(!PasteError::StateMismatch.to_string().contains("theirs"));
    }

    proptest! {
        #[test]
        fn paste_never_panics(s in ".{0,80}") {
            let _ = parse_paste(&s);
        }

        #[test]
        fn code_hash_state_round_trips(code in "[A-Za-z0-9_-]{1,40}", state in "[A-Za-z0-9_-]{1,40}") {
            let p = parse_paste(&format!("{code}#{state}")).unwrap();
            prop_assert_eq!(p.code.expose(), code.as_str());
            prop_assert_eq!(p.state.as_deref(), Some(state.as_str()));
        }
    }
}
