//! Saving a login and removing one, under the same lock and atomic write as a refresh: the
//! check before the browser step ([`check_store`]), the code exchange with its profile lookup
//! and lossless save ([`save_login`]), and `logout`.

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use super::error::LoginError;
use super::pkce::Pkce;
use crate::claude_locks;
use crate::credentials::LoginGrant;
use crate::oauth::{ClientConfig, CodeExchange, ExchangeError, TokenClient, TokenGrant};
use crate::profile::{self, Profile, ProfileError};
use crate::refresh::{RunControl, STOP_SAVE_GRACE};
use crate::save::{self, Change};
use crate::schedule::{
    Backoff, GrantRecord, boot_millis, epoch_millis, random_unit, token_fingerprint,
};
use crate::secret::Secret;
use crate::settings::Url;
use crate::store::{AccountRecord, Store, StoreError};

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
    /// Where `client_id` came from, for the message when the server refuses it.
    pub client_id_origin: &'a str,
    /// Whether the login records its client (`clientId`), so that its refreshes name it
    /// whatever the settings say then. Claude Code records a client it was given, not its
    /// built-in one.
    pub store_client_id: bool,
    pub redirect_uri: &'a str,
    pub pkce: &'a Pkce,
    pub code: &'a Secret,
    /// `Some(year)` for a long-lived login.
    pub expires_in: Option<u64>,
    /// The scopes asked for (space-separated): what was granted when the answer does not say.
    pub scope: &'a str,
    /// The API base the profile is looked up under.
    pub api_url: &'a Url,
    /// How the user names the token URL setting (`--token-url`, or the variable that set it),
    /// for a message that asks them to check it.
    pub token_url_setting: &'a str,
    /// How the user names the redirect URI setting of the paste flow; `None` for the loopback
    /// flow, whose redirect URI this program made.
    pub redirect_uri_setting: Option<&'a str>,
}

/// The steps of [`save_login`] once the code is in hand, told to its caller as each begins, so
/// a slow one (the profile lookup) can be named while the user waits or interrupts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoginStep {
    /// The code exchange is being sent (or retried): the code may be spent from here.
    Exchange,
    /// The tokens are in hand; the account's profile (its plan) is being looked up.
    ProfileLookup,
    /// The new login is being written to the store.
    Save,
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
    step: &dyn Fn(LoginStep),
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
    let client = TokenClient::new(req.client).map_err(LoginError::Endpoint)?;
    let exchange = CodeExchange {
        code: req.code,
        state: &req.pkce.state,
        client_id: req.client_id,
        redirect_uri: req.redirect_uri,
        verifier: &req.pkce.verifier,
        expires_in: req.expires_in,
    };
    let mut retries = 0;
    step(LoginStep::Exchange);
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
            Err(ExchangeError { error, .. }) => return Err(LoginError::of_exchange(error, req)),
        }
    };
    // The login is in hand from here: a stop skips what is left of the profile lookup, never
    // the save.
    let lookup = lookup_profile(req, &grant, control, step).await;
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
        client_id: req.store_client_id.then(|| req.client_id.to_owned()),
    };
    let change = || Change::Login {
        grant: &login,
        base: base.as_ref(),
    };
    // The code is spent: these tokens are the login. A failed save is retried for a while
    // (the daemon's rule on SIGTERM), with a new temp file each time.
    step(LoginStep::Save);
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
    step: &dyn Fn(LoginStep),
) -> ProfileLookup {
    let allowed = match &grant.scopes {
        Some(granted) => profile::scopes_allow_lookup(granted),
        None => profile::scopes_allow_lookup(&req.scope.split_whitespace().collect::<Vec<_>>()),
    };
    if !allowed {
        return ProfileLookup::Skipped;
    }
    step(LoginStep::ProfileLookup);
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
    let saved = save::save(store, &lock, &lock_paths, &|| {}, pending, Change::Logout).await?;
    if matches!(saved, save::Saved::Written { .. }) {
        // The login is gone, and with it what this program remembered of it: the account's
        // email (personal data) and the records about its tokens.
        lock.set_account_record(None);
        lock.set_refused_record(None);
    }
    match saved {
        save::Saved::Written {
            fingerprint: None, ..
        } => Ok(LoggedOut::Deleted),
        save::Saved::Written { .. } => Ok(LoggedOut::Removed),
        _ => Ok(LoggedOut::NothingToDo),
    }
}
