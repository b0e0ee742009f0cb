//! The refresh sequence, shared line for line by `--once`, `refresh` and the daemon:
//! lock → re-read → decide → create the temp file → request → compare-and-swap → merge → rename.
//!
//! It owns the rules that keep a single-use refresh token from being wasted: no request is made
//! without the lock, without a fresh read under it, or without a temp file ready to take the
//! answer; no request replaces a grant this program obtained less than a minute ago (the floor),
//! and a short grant is refreshed at half its lifetime; a refusal is checked against the store
//! before it is believed (another process may have rotated the token); and new tokens that could
//! not be saved are kept in the [`Refresher`] and only their save is retried, never the request.
//! One call of [`Refresher::attempt`] makes at most one request; [`refresh_with_budget`] retries
//! transient failures with backoff until a deadline, for the one-shot commands.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use crate::claude_locks::{self, RefreshLocks};
use crate::credentials::{Credentials, OAuthView, TokenUpdate};
use crate::oauth::{ClientConfig, OAuthError, RefreshRequest, TokenClient};
use crate::save::{self, Change, Saved};
use crate::schedule::{
    Backoff, GrantRecord, boot_millis, epoch_millis, is_short_grant, next_refresh_at, random_unit,
    token_fingerprint,
};
use crate::seams;
use crate::secret::Secret;
use crate::settings::format_duration;
use crate::store::{FileLock, Place, Snapshot, Store, StoreError};

/// What the sequence needs to know besides the store.
#[derive(Clone, Debug)]
pub struct Policy {
    /// Refresh when `now + lead >= expiresAt` (or at half the lifetime of a shorter grant).
    pub lead: Duration,
    /// Used when the store has no `claudeAiOauth.clientId`.
    pub client_id: String,
    /// Where `client_id` came from, for messages (`the --client-id setting`, ...).
    pub client_id_origin: String,
    pub client: ClientConfig,
}

/// Whether a forced refresh honours the 60 s floor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Floor {
    /// SIGUSR1: now, or when the floor ends.
    Honour,
    /// The explicit `refresh` command, the one thing the contract exempts.
    Exempt,
}

/// Whether to refresh a token that is not yet due.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Only when due (`--once`, the daemon's timer).
    IfDue,
    /// Now, even if not due (`refresh`, SIGUSR1). Remembers the refresh token it meant to spend:
    /// if, by the time it holds the lock, the store has another one, someone else refreshed and
    /// the job is done.
    Force {
        expected: Option<Secret>,
        floor: Floor,
    },
}

/// The points of an attempt an observer is told about, in order. The daemon uses
/// `RequestSent` to know that a shutdown must wait for the answer (the server may already have
/// spent the old refresh token); tests use the steps to inject faults.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// The cross-process lock is held.
    Locked,
    /// The temp file for the answer exists; the request is next.
    TempCreated,
    /// The request is about to go out: from here on, its answer must be saved.
    RequestSent,
    /// The answer is in (whatever it says).
    ResponseReceived,
    /// The new file has been renamed into place.
    Written,
}

/// An observer that ignores every step.
pub fn unobserved(_: Step) {}

/// How an attempt ended well.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Not due, or held back by the floor; nothing was sent. `next_at`: when (epoch ms, wall
    /// clock) a refresh may be due, for a scheduler.
    Fresh {
        expires_at: Option<i64>,
        next_at: i64,
    },
    /// New tokens were fetched and saved.
    Refreshed {
        access_token: String,
        expires_at: i64,
        /// When the next refresh is due (half the lifetime for a short grant, never inside the
        /// floor).
        next_at: i64,
        /// Fingerprint of the bytes written, so a watcher can tell this write from others.
        fingerprint: u64,
        /// The grant lives no longer than the lead: it is refreshed at half its lifetime.
        short_grant: bool,
        /// The store did not parse at the write; its bytes were copied here first.
        malformed_copy: Option<PathBuf>,
    },
    /// Another process rotated the token (while this one waited, was refused, or was in
    /// flight): its result stands.
    Adopted { expires_at: Option<i64> },
}

/// How an attempt or a run ended badly.
#[derive(Debug)]
pub enum RefreshError {
    /// The store is missing, unreadable or malformed, or the lock could not be taken.
    Store(StoreError),
    /// No usable login in the store: no `claudeAiOauth`, blank tokens, no refresh token, or a
    /// logout while the request was in flight.
    LoginNeeded { place: Place, why: &'static str },
    /// The server refused the grant, and no other process has a newer token.
    Rejected { place: Place, error: OAuthError },
    /// The server refused the client (`invalid_client`, `unauthorized_client`,
    /// `invalid_scope`): a setting, not the login, is wrong.
    ClientRefused {
        client_id: String,
        origin: String,
        error: OAuthError,
    },
    /// The endpoint redirected or the client could not be set up: a setting must change.
    Endpoint { error: OAuthError },
    /// A transient failure. From an attempt: worth retrying. From [`refresh_with_budget`]: the
    /// budget ran out.
    Transient { error: OAuthError, attempts: u32 },
    /// The server issued new tokens but they could not be saved (yet). The [`Refresher`] keeps
    /// them; its next attempt retries the save, never the request.
    SaveFailed { source: StoreError },
}

impl RefreshError {
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            RefreshError::Transient { error, .. } => error.retry_after(),
            _ => None,
        }
    }
}

impl fmt::Display for RefreshError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RefreshError::Store(e) => e.fmt(f),
            RefreshError::LoginNeeded { place, why } => write!(
                f,
                "{place}: {why}; a new login is needed: run `claude-tokend login` (or sign in with Claude Code)"
            ),
            RefreshError::Rejected { place, error } => write!(
                f,
                "{error}. The refresh token in {place} no longer works; a new login is needed: \
                 run `claude-tokend login` (or sign in with Claude Code)"
            ),
            RefreshError::ClientRefused {
                client_id,
                origin,
                error,
            } => write!(
                f,
                "{error}. The server refused the OAuth client `{client_id}` (from {origin}), not \
                 the login: check that client id, or the scopes stored with the login; a new \
                 login will not help"
            ),
            RefreshError::Endpoint { error } => write!(f, "{error}"),
            RefreshError::Transient { error, attempts } if *attempts > 1 => {
                write!(
                    f,
                    "{error} (gave up after {attempts} attempts; try again later)"
                )
            }
            RefreshError::Transient { error, .. } => error.fmt(f),
            RefreshError::SaveFailed { source } => write!(
                f,
                "the server issued new tokens, but they could not be saved: {source}. The old \
                 refresh token is spent, so the login may be lost: fix the problem (disk space, \
                 permissions) and, if Claude Code then reports that you are logged out, run \
                 `claude-tokend login`"
            ),
        }
    }
}

impl std::error::Error for RefreshError {}

impl From<StoreError> for RefreshError {
    fn from(e: StoreError) -> Self {
        RefreshError::Store(e)
    }
}

/// How long a file that fails to parse is re-read before it counts as malformed: a writer that
/// rewrites in place (older Claude Code) may be half-way through.
const SETTLE_TRIES: u32 = 5;
const SETTLE_PAUSE: Duration = Duration::from_millis(200);

/// Reads the file, re-reading a few times over about a second while it looks half-written.
pub async fn read_settled(store: &Store) -> Result<Snapshot, StoreError> {
    let mut tries = 1;
    loop {
        match store.read() {
            Err(e) if e.may_be_mid_write() && tries < SETTLE_TRIES => {
                tries += 1;
                tokio::time::sleep(SETTLE_PAUSE).await;
            }
            other => return other,
        }
    }
}

/// The client id a refresh must use, and where it came from: the store's, when it names one
/// (the token belongs to that client), else the setting.
fn client_id_for<'a>(view: &'a OAuthView, policy: &'a Policy, place: &Place) -> (&'a str, String) {
    match view.client_id.as_deref().filter(|c| !c.trim().is_empty()) {
        Some(id) => (id, format!("clientId in {place}")),
        None => (&policy.client_id, policy.client_id_origin.clone()),
    }
}

/// What the store says to do, read under the lock.
enum Decision {
    Done(Outcome),
    Refresh(Box<OAuthView>),
}

/// The record of our last grant, when the store still holds that grant.
fn our_record(lock: &FileLock, view: &OAuthView) -> Option<GrantRecord> {
    lock.grant_record()
        .filter(|r| r.matches(view.refresh_token.as_ref()))
}

/// When the login in `view` is next due, given what the lock file records.
pub fn next_at(view: &OAuthView, record: Option<&GrantRecord>, lead: Duration) -> i64 {
    next_refresh_at(
        view.expires_at,
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
fn decide(
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
    if view.usable_refresh_token().is_none() {
        return Err(RefreshError::LoginNeeded {
            place: place.clone(),
            why: "the login has no refresh token, so it cannot be renewed",
        });
    }
    Ok(Decision::Refresh(Box::new(view)))
}

/// Removes what a claude-tokend that died mid-refresh left behind: its temp file, and the
/// Claude Code lock directories its ledger (in the flock file) lists. Call with the flock held.
pub fn tidy(store: &Store, lock: &FileLock) {
    store.remove_stale_temps(lock);
    let ledger = lock.ledger();
    if !ledger.is_empty() {
        claude_locks::remove_orphans(&ledger);
        lock.set_ledger("");
    }
}

/// Clears the ledger when dropped, that is on every way out of an attempt except a crash, which
/// is exactly when the ledger must survive. A ledger left behind would otherwise outlive the
/// directories it names; on a filesystem without birth times, an inode reused by a later lock
/// of Claude Code's could then look like our orphan.
struct LedgerCleared<'a>(&'a FileLock);

impl Drop for LedgerCleared<'_> {
    fn drop(&mut self) {
        self.0.set_ledger("");
    }
}

/// Logs, once per wait, that a Claude Code lock is held.
pub(crate) fn announce_wait(path: &Path, age: Duration) {
    tracing::info!(
        "waiting for {} (another refresher holds it; last touched {}s ago)",
        path.display(),
        age.as_secs()
    );
}

/// New tokens the server issued that are not saved yet, with what their save needs. While a
/// [`Refresher`] holds one, it never sends a request: the refresh token in the store is spent.
#[derive(Debug)]
pub struct InHand {
    grant: TokenUpdate,
    /// The refresh token the request spent: the save writes only over this one (or blanks).
    sent: Secret,
    /// The document read under the locks before the request.
    base: Credentials,
    record: GrantRecord,
}

/// The state one login's refreshes carry from attempt to attempt: the HTTP client (built on
/// first need) and new tokens still to be saved.
#[derive(Default)]
pub struct Refresher {
    client: Option<TokenClient>,
    in_hand: Option<InHand>,
}

impl Refresher {
    pub fn new() -> Self {
        Self::default()
    }

    /// True while new tokens wait to be saved: the next attempt only retries their save.
    pub fn has_unsaved_grant(&self) -> bool {
        self.in_hand.is_some()
    }

    /// Drops the HTTP client (an idle daemon keeps no TLS state or connection pool).
    pub fn drop_client(&mut self) {
        self.client = None;
    }

    /// One pass of the sequence: at most one request, and none while a grant is in hand.
    /// `lock_deadline` bounds the waits for other processes' locks (`None`: wait as long as it
    /// takes; the daemon can still be stopped meanwhile).
    pub async fn attempt(
        &mut self,
        store: &Store,
        policy: &Policy,
        mode: &mut Mode,
        lock_deadline: Option<Instant>,
        observe: &dyn Fn(Step),
    ) -> Result<Outcome, RefreshError> {
        let place = store.place();
        let started = Instant::now();
        let lock = store.lock(lock_deadline).await?;
        observe(Step::Locked);
        seams::crash_point("locked");
        tidy(store, &lock);
        let mut view = None;
        if self.in_hand.is_none() {
            let snapshot = read_settled(store).await?;
            if let Decision::Done(outcome) = decide(&snapshot, mode, policy, &lock, &place)? {
                return Ok(outcome);
            }
        }
        // Claude Code's refresh locks, for this one attempt only: its sessions wait just seconds.
        let lock_paths = claude_locks::lock_paths(store.path());
        // Declared before the locks, so dropped after them: once they are gone, so is their record.
        let _ledger = LedgerCleared(&lock);
        let record =
            |held: &claude_locks::DirLock| lock.append_ledger(&claude_locks::ledger(&[held]));
        let claude_code = RefreshLocks::take(&lock_paths, lock_deadline, &announce_wait, &record)
            .await
            .map_err(|busy| {
                RefreshError::Store(StoreError::LockTimeout {
                    path: busy.path,
                    waited: started.elapsed(),
                })
            })?;
        let snapshot = if self.in_hand.is_none() {
            let snapshot = read_settled(store).await?;
            match decide(&snapshot, mode, policy, &lock, &place)? {
                Decision::Done(outcome) => return Ok(outcome),
                Decision::Refresh(v) => view = Some(v),
            }
            Some(snapshot)
        } else {
            None
        };
        // Before the request: if the new tokens could not be saved, the old refresh token must
        // not be spent. (With a grant in hand, a failure here is one more failed save.)
        let pending = store.begin_write().map_err(|e| match self.in_hand {
            Some(_) => RefreshError::SaveFailed { source: e },
            None => RefreshError::Store(e),
        })?;
        observe(Step::TempCreated);
        seams::crash_point("temp-created");
        if let (Some(view), Some(snapshot)) = (view, snapshot) {
            let refresh_token = view
                .usable_refresh_token()
                .expect("decide checked there is one")
                .clone();
            if self.client.is_none() {
                self.client = Some(
                    TokenClient::new(&policy.client)
                        .map_err(|error| RefreshError::Endpoint { error })?,
                );
            }
            let client = self.client.as_ref().expect("just built");
            let (client_id, origin) = client_id_for(&view, policy, &place);
            let request = RefreshRequest {
                refresh_token: &refresh_token,
                client_id,
                scope: view
                    .scopes
                    .as_ref()
                    .filter(|s| !s.is_empty())
                    .map(|s| s.join(" ")),
            };
            tracing::info!(refresh_token = %refresh_token, "refreshing");
            let (sent_wall, sent_boot) = (epoch_millis(SystemTime::now()), boot_millis());
            observe(Step::RequestSent);
            seams::crash_in_flight("request-sent");
            let answer = claude_code.hold_during(client.refresh(&request)).await;
            observe(Step::ResponseReceived);
            seams::crash_point("response-received");
            let grant = match answer {
                Ok(grant) => grant,
                Err(error) => {
                    drop(pending);
                    return failed(store, &place, error, &refresh_token, client_id, origin).await;
                }
            };
            let kept = grant.refresh_token.as_ref().unwrap_or(&refresh_token);
            self.in_hand = Some(InHand {
                record: GrantRecord {
                    obtained_at: sent_wall,
                    obtained_boot: sent_boot,
                    lifetime_ms: grant.expires_at.saturating_sub(sent_wall),
                    token: token_fingerprint(kept),
                },
                sent: refresh_token.clone(),
                base: snapshot.doc,
                grant,
            });
        }
        let in_hand = self.in_hand.as_ref().expect("a grant is in hand here");
        // Written before the tokens: a crash between the two leaves a record of a token the
        // store does not hold, which matches nothing; the other order would leave a fresh grant
        // with no floor.
        lock.set_grant_record(&in_hand.record);
        let change = Change::Refresh {
            sent: &in_hand.sent,
            grant: &in_hand.grant,
            base: &in_hand.base,
        };
        let saved = save::save(
            store,
            &lock,
            &lock_paths,
            &|| claude_code.touch(),
            pending,
            change,
        )
        .await
        .map_err(|source| RefreshError::SaveFailed { source })?;
        let in_hand = self.in_hand.take().expect("a grant is in hand here");
        match saved {
            Saved::Written {
                fingerprint,
                malformed_copy,
            } => {
                observe(Step::Written);
                seams::crash_point("before-unlock");
                let grant = &in_hand.grant;
                tracing::info!(
                    access_token = %grant.access_token,
                    expires_in = %format_duration(Duration::from_millis(
                        grant.expires_at.saturating_sub(epoch_millis(SystemTime::now())).max(0) as u64
                    )),
                    "refreshed"
                );
                let short_grant = is_short_grant(policy.lead, Some(in_hand.record.lifetime_ms));
                Ok(Outcome::Refreshed {
                    access_token: grant.access_token.masked(),
                    expires_at: grant.expires_at,
                    next_at: next_refresh_at(
                        Some(grant.expires_at),
                        grant.refresh_token.as_ref().or(Some(&in_hand.sent)),
                        Some(&in_hand.record),
                        policy.lead,
                        epoch_millis(SystemTime::now()),
                        boot_millis(),
                    ),
                    fingerprint: fingerprint.expect("a refresh never deletes the store"),
                    short_grant,
                    malformed_copy,
                })
            }
            Saved::AnotherWriter => {
                tracing::info!(
                    "another writer replaced the login while the request was in flight; \
                     its tokens stand and ours were not written"
                );
                let expires_at = store
                    .read()
                    .ok()
                    .and_then(|s| s.doc.oauth().ok().flatten())
                    .and_then(|v| v.expires_at);
                Ok(Outcome::Adopted { expires_at })
            }
            Saved::LoggedOut | Saved::NothingToRemove => Err(RefreshError::LoginNeeded {
                place,
                why: "the login was removed (a logout) while the refresh was in flight, and that \
                      logout was not undone",
            }),
        }
    }
}

/// Sorts a failed request. A refusal is believed only after checking the store (still under
/// every lock): if another writer put a different refresh token there, ours was simply old,
/// and theirs is the answer.
async fn failed(
    store: &Store,
    place: &Place,
    error: OAuthError,
    sent: &Secret,
    client_id: &str,
    origin: String,
) -> Result<Outcome, RefreshError> {
    let code = match &error {
        OAuthError::Transient { .. } => {
            return Err(RefreshError::Transient { error, attempts: 1 });
        }
        OAuthError::Misdirected { .. } => return Err(RefreshError::Endpoint { error }),
        OAuthError::Permanent { code, .. } => code.clone(),
    };
    if let Ok(now) = read_settled(store).await
        && let Ok(Some(current)) = now.doc.oauth()
        && let Some(theirs) = current.usable_refresh_token()
        && theirs != sent
    {
        tracing::info!("the refresh token was rotated by another process; using its result");
        return Ok(Outcome::Adopted {
            expires_at: current.expires_at,
        });
    }
    Err(match code.as_deref() {
        Some("invalid_client" | "unauthorized_client" | "invalid_scope") => {
            RefreshError::ClientRefused {
                client_id: client_id.to_owned(),
                origin,
                error,
            }
        }
        _ => RefreshError::Rejected {
            place: place.clone(),
            error,
        },
    })
}

/// Waits for other processes' locks of one login end after this long, whatever the retry budget:
/// a fresh Claude Code lock is outwaited to its takeover (60 s untouched), but a holder that
/// keeps its lock alive longer than this is not waited for by a one-shot command.
pub const LOCK_WAIT_LIMIT: Duration = Duration::from_secs(120);

/// The one-shot commands' loop: attempts until success, a permanent failure, or `budget` runs
/// out (then the last transient error, which the CLI reports as exit 75). New tokens that could
/// not be saved are kept and only their save is retried, within the same budget.
pub async fn refresh_with_budget(
    store: &Store,
    policy: &Policy,
    mut mode: Mode,
    budget: Duration,
) -> Result<Outcome, RefreshError> {
    let started = Instant::now();
    let deadline = started.checked_add(budget);
    let lock_deadline = started.checked_add(seams::lock_wait_limit(LOCK_WAIT_LIMIT));
    let mut refresher = Refresher::new();
    let mut retries = 0u32;
    loop {
        let result = refresher
            .attempt(store, policy, &mut mode, lock_deadline, &unobserved)
            .await;
        let remaining = deadline.map_or(Duration::MAX, |d| {
            d.saturating_duration_since(Instant::now())
        });
        let (delay, error) = match result {
            Err(RefreshError::Transient { error, .. }) => (
                Backoff::STANDARD.delay_within(
                    retries,
                    random_unit(),
                    error.retry_after(),
                    remaining,
                ),
                RefreshError::Transient {
                    error,
                    attempts: retries + 1,
                },
            ),
            Err(e @ RefreshError::SaveFailed { .. }) => (
                Backoff::SAVE.delay_within(retries, random_unit(), None, remaining),
                e,
            ),
            // A locked or busy Keychain: like a network error, it may pass.
            Err(RefreshError::Store(e)) if e.is_transient() => (
                Backoff::STANDARD.delay_within(retries, random_unit(), None, remaining),
                RefreshError::Store(e),
            ),
            other => return other,
        };
        retries += 1;
        let Some(delay) = delay else {
            return Err(match error {
                RefreshError::Transient { error, .. } => RefreshError::Transient {
                    error,
                    attempts: retries,
                },
                e => e,
            });
        };
        tracing::warn!(
            "{error}; retrying in {} (attempt {})",
            format_duration_precise(delay),
            retries + 1
        );
        tokio::time::sleep(delay).await;
    }
}

/// `0.4s`, `3s`, `2m 5s`: sub-second precision where it matters for short backoffs.
fn format_duration_precise(d: Duration) -> String {
    if d < Duration::from_secs(10) {
        format!("{:.1}s", d.as_secs_f64())
    } else {
        format_duration(d)
    }
}
