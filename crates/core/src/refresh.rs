//! The refresh sequence, shared line for line by `--once`, `refresh` and the daemon:
//! lock → re-read → decide → create the temp file → request → re-read → merge → rename.
//!
//! It owns the rules that keep a single-use refresh token from being wasted: no request is made
//! without the lock, without a fresh read under it, or without a temp file ready to take the
//! answer; a refusal is checked against the file before it is believed (another process may have
//! rotated the token). One call of [`attempt`] makes at most one request; [`refresh_with_budget`]
//! retries transient failures with backoff until a deadline, for the one-shot commands.

use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use crate::claude_locks::{self, RefreshLocks};
use crate::credentials::{Credentials, OAuthView};
use crate::oauth::{ClientConfig, OAuthError, RefreshRequest, TokenClient};
use crate::schedule::{Backoff, epoch_millis, is_due, random_unit};
use crate::seams;
use crate::secret::Secret;
use crate::settings::format_duration;
use crate::store::{FileLock, PendingWrite, Snapshot, Store, StoreError};

/// What the sequence needs to know besides the file.
#[derive(Clone, Debug)]
pub struct Policy {
    /// Refresh when `now + lead >= expiresAt`.
    pub lead: Duration,
    /// Used when the file has no `claudeAiOauth.clientId`.
    pub client_id: String,
    pub client: ClientConfig,
}

/// Whether to refresh a token that is not yet due.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Only when due (`--once`, the daemon's timer).
    IfDue,
    /// Now, even if not due (`refresh`, SIGUSR1). Remembers the refresh token it meant to spend:
    /// if, by the time it holds the lock, the file has another one, someone else refreshed and
    /// the job is done.
    Force { expected: Option<Secret> },
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
    /// Not due; nothing was sent.
    Fresh { expires_at: Option<i64> },
    /// New tokens were fetched and saved.
    Refreshed {
        access_token: String,
        expires_at: i64,
        /// Fingerprint of the bytes written, so a watcher can tell this write from others.
        fingerprint: u64,
    },
    /// Another process rotated the token while this one waited or was refused: adopt its result.
    Adopted { expires_at: Option<i64> },
}

/// How an attempt or a run ended badly.
#[derive(Debug)]
pub enum RefreshError {
    /// The file is missing, unreadable or malformed, or the lock could not be taken.
    Store(StoreError),
    /// No usable login in the file: no `claudeAiOauth`, blank tokens, or no refresh token.
    LoginNeeded { path: PathBuf, why: &'static str },
    /// The server refused the grant, and no other process has a newer token.
    Rejected { path: PathBuf, error: OAuthError },
    /// The endpoint redirected or the client could not be set up: a setting must change.
    Endpoint { error: OAuthError },
    /// A transient failure. From [`attempt`]: worth retrying. From [`refresh_with_budget`]: the
    /// budget ran out.
    Transient { error: OAuthError, attempts: u32 },
    /// The server issued new tokens but they could not be saved.
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
            RefreshError::LoginNeeded { path, why } => write!(
                f,
                "{}: {why}; a new login is needed: run `claude-tokend login` (or sign in with Claude Code)",
                path.display()
            ),
            RefreshError::Rejected { path, error } => write!(
                f,
                "{error}. The refresh token in {} no longer works; a new login is needed: \
                 run `claude-tokend login` (or sign in with Claude Code)",
                path.display()
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
                 refresh token may be spent; if Claude Code reports that you are logged out, \
                 run `claude-tokend login`"
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

/// The client id a refresh must use: the file's, when it names one (the token belongs to that
/// client), else the setting.
fn client_id_for<'a>(view: &'a OAuthView, policy: &'a Policy) -> &'a str {
    view.client_id
        .as_deref()
        .filter(|c| !c.trim().is_empty())
        .unwrap_or(&policy.client_id)
}

/// What the file says to do, read under the lock.
enum Decision {
    Done(Outcome),
    Refresh(Box<OAuthView>),
}

/// Decides from a fresh read whether to refresh. Called again after waiting for Claude Code's
/// locks, since whoever held them may have refreshed meanwhile.
fn decide(
    snapshot: &Snapshot,
    mode: &mut Mode,
    policy: &Policy,
    path: &std::path::Path,
) -> Result<Decision, RefreshError> {
    let view = snapshot
        .doc
        .oauth()
        .expect("Credentials::parse validated the owned fields")
        .ok_or(RefreshError::LoginNeeded {
            path: path.to_path_buf(),
            why: "the file has no claudeAiOauth login",
        })?;
    if view.is_logged_out() {
        return Err(RefreshError::LoginNeeded {
            path: path.to_path_buf(),
            why: "the login in the file is blank (logged out)",
        });
    }
    match mode {
        Mode::IfDue => {
            if !is_due(
                epoch_millis(SystemTime::now()),
                view.expires_at,
                policy.lead,
            ) {
                return Ok(Decision::Done(Outcome::Fresh {
                    expires_at: view.expires_at,
                }));
            }
        }
        Mode::Force { expected } => match expected {
            Some(sent) if view.refresh_token.as_ref() != Some(sent) => {
                tracing::info!("another process refreshed the token meanwhile; using its result");
                return Ok(Decision::Done(Outcome::Adopted {
                    expires_at: view.expires_at,
                }));
            }
            Some(_) => {}
            None => *expected = view.refresh_token.clone(),
        },
    }
    if view.usable_refresh_token().is_none() {
        return Err(RefreshError::LoginNeeded {
            path: path.to_path_buf(),
            why: "the login has no refresh token, so it cannot be renewed",
        });
    }
    Ok(Decision::Refresh(Box::new(view)))
}

/// Removes what a claude-tokend that died mid-refresh left behind: its temp file, and the
/// Claude Code lock directories its ledger (in the flock file) lists. Call with the flock held.
pub fn tidy(store: &Store, lock: &FileLock) {
    store.remove_stale_temps(lock);
    let note = lock.read_note();
    if !note.is_empty() {
        claude_locks::remove_orphans(&note);
        lock.write_note("");
    }
}

/// Clears the ledger when dropped, that is on every way out of an attempt except a crash, which
/// is exactly when the ledger must survive. A ledger left behind would otherwise outlive the
/// directories it names; on a filesystem without birth times, an inode reused by a later lock
/// of Claude Code's could then look like our orphan.
struct LedgerCleared<'a>(&'a FileLock);

impl Drop for LedgerCleared<'_> {
    fn drop(&mut self) {
        self.0.write_note("");
    }
}

/// Puts the ledger back as it was when dropped (the same reasoning, for one write's lock).
struct NoteRestored<'a>(&'a FileLock, String);

impl Drop for NoteRestored<'_> {
    fn drop(&mut self) {
        self.0.write_note(&self.1);
    }
}

/// Logs, once per wait, that a Claude Code lock is held.
fn announce_wait(path: &std::path::Path, age: Duration) {
    tracing::info!(
        "waiting for {} (another refresher holds it; last touched {}s ago)",
        path.display(),
        age.as_secs()
    );
}

/// One pass of the sequence: at most one request. `client` is built on first need and kept by
/// the caller for the next attempt. `lock_deadline` bounds the waits for other processes' locks
/// (`None`: wait as long as it takes; the daemon can still be stopped meanwhile).
pub async fn attempt(
    store: &Store,
    policy: &Policy,
    mode: &mut Mode,
    client: &mut Option<TokenClient>,
    lock_deadline: Option<Instant>,
    observe: &dyn Fn(Step),
) -> Result<Outcome, RefreshError> {
    let path = store.path().to_path_buf();
    let started = Instant::now();
    let lock = store.lock(lock_deadline).await?;
    observe(Step::Locked);
    seams::crash_point("locked");
    tidy(store, &lock);
    if let Decision::Done(outcome) = decide(&read_settled(store).await?, mode, policy, &path)? {
        return Ok(outcome);
    }
    // Claude Code's refresh locks, for this one attempt only: its sessions wait just seconds.
    let lock_paths = claude_locks::lock_paths(store.path());
    // Declared before the locks, so dropped after them: once they are gone, so is their record.
    let _ledger = LedgerCleared(&lock);
    let record = |held: &claude_locks::DirLock| lock.append_note(&claude_locks::ledger(&[held]));
    let claude_code = RefreshLocks::take(&lock_paths, lock_deadline, &announce_wait, &record)
        .await
        .map_err(|busy| {
            RefreshError::Store(StoreError::LockTimeout {
                path: busy.path,
                waited: started.elapsed(),
            })
        })?;
    let view = match decide(&read_settled(store).await?, mode, policy, &path)? {
        Decision::Done(outcome) => return Ok(outcome),
        Decision::Refresh(view) => view,
    };
    let refresh_token = view
        .usable_refresh_token()
        .expect("decide checked there is one");
    // Before the request: if the new tokens could not be saved, the old refresh token must not
    // be spent.
    let pending = store.begin_write().map_err(RefreshError::Store)?;
    observe(Step::TempCreated);
    seams::crash_point("temp-created");
    if client.is_none() {
        *client = Some(
            TokenClient::new(&policy.client).map_err(|error| RefreshError::Endpoint { error })?,
        );
    }
    let client = client.as_ref().expect("just built");
    let request = RefreshRequest {
        refresh_token,
        client_id: client_id_for(&view, policy),
        scope: view
            .scopes
            .as_ref()
            .filter(|s| !s.is_empty())
            .map(|s| s.join(" ")),
    };
    tracing::info!(refresh_token = %refresh_token, "refreshing");
    observe(Step::RequestSent);
    seams::crash_in_flight("request-sent");
    let answer = claude_code.hold_during(client.refresh(&request)).await;
    observe(Step::ResponseReceived);
    seams::crash_point("response-received");
    match answer {
        Ok(grant) => {
            let fingerprint = save_merged(store, &lock, &lock_paths, pending, false, |doc| {
                doc.apply(&grant)
            })
            .await
            .map_err(|source| RefreshError::SaveFailed { source })?;
            observe(Step::Written);
            seams::crash_point("before-unlock");
            tracing::info!(
                access_token = %grant.access_token,
                expires_in = %format_duration(Duration::from_millis(
                    grant.expires_at.saturating_sub(epoch_millis(SystemTime::now())).max(0) as u64
                )),
                "refreshed"
            );
            Ok(Outcome::Refreshed {
                access_token: grant.access_token.masked(),
                expires_at: grant.expires_at,
                fingerprint,
            })
        }
        Err(error @ OAuthError::Transient { .. }) => {
            Err(RefreshError::Transient { error, attempts: 1 })
        }
        Err(error @ OAuthError::Misdirected { .. }) => Err(RefreshError::Endpoint { error }),
        Err(error @ OAuthError::Permanent { .. }) => {
            drop(pending);
            // Believe a refusal only after checking the file (still under every lock): if
            // another writer put a different refresh token there, ours was simply old, and
            // theirs is the answer.
            if let Ok(now) = read_settled(store).await
                && let Ok(Some(current)) = now.doc.oauth()
                && let Some(theirs) = current.usable_refresh_token()
                && theirs != refresh_token
            {
                tracing::info!(
                    "the refresh token was rotated by another process; using its result"
                );
                return Ok(Outcome::Adopted {
                    expires_at: current.expires_at,
                });
            }
            Err(RefreshError::Rejected { path, error })
        }
    }
}

/// How long a write waits for Claude Code's storage-write lock before going ahead without it.
/// The lock is stale after 15 s, so a live holder is done well before this.
const WRITE_LOCK_WAIT: Duration = Duration::from_secs(20);

/// The write step shared by refresh, login and logout: under Claude Code's storage-write lock,
/// re-read the file as it is now, change only what `change` changes, and rename into place.
/// Anything another writer changed while a request was in flight (an MCP token, a setting) is
/// kept. A malformed file is never written over. A missing file starts from an empty document
/// when `create` (a login); otherwise (a refresh, after someone logged out meanwhile) it is an
/// error: a logout is not undone.
pub async fn save_merged(
    store: &Store,
    ledger: &FileLock,
    lock_paths: &claude_locks::LockPaths,
    pending: PendingWrite,
    create: bool,
    change: impl FnOnce(&mut Credentials),
) -> Result<u64, StoreError> {
    // Dropped after the write lock (declared before it): the ledger loses its line again.
    let _restore = NoteRestored(ledger, ledger.read_note());
    let _write_lock = match claude_locks::take(
        &lock_paths.storage_write,
        claude_locks::WRITE_STALE,
        Some(Instant::now() + WRITE_LOCK_WAIT),
        &announce_wait,
    )
    .await
    {
        Ok(lock) => lock,
        Err(busy) => {
            // New tokens in hand must be saved; a lock that outlives its own staleness rule
            // is not worth losing them over.
            tracing::warn!("{} stayed held; writing without it", busy.path.display());
            None
        }
    };
    if let Some(held) = &_write_lock {
        ledger.append_note(&claude_locks::ledger(&[held]));
    }
    let mut doc = match read_settled(store).await {
        Ok(s) => s.doc,
        Err(StoreError::Missing { .. }) if create => Credentials::empty(),
        Err(e) => return Err(e),
    };
    change(&mut doc);
    pending.commit(&doc)
}

/// The one-shot commands' loop: attempts until success, a permanent failure, or `budget` runs
/// out (then the last transient error, which the CLI reports as exit 75).
pub async fn refresh_with_budget(
    store: &Store,
    policy: &Policy,
    mut mode: Mode,
    budget: Duration,
) -> Result<Outcome, RefreshError> {
    let deadline = Instant::now() + budget;
    let mut client = None;
    let mut retries = 0u32;
    loop {
        let result = attempt(
            store,
            policy,
            &mut mode,
            &mut client,
            Some(deadline),
            &unobserved,
        )
        .await;
        let error = match result {
            Err(RefreshError::Transient { error, .. }) => error,
            other => return other,
        };
        let delay = Backoff::STANDARD.delay_within(
            retries,
            random_unit(),
            error.retry_after(),
            deadline.saturating_duration_since(Instant::now()),
        );
        retries += 1;
        let Some(delay) = delay else {
            return Err(RefreshError::Transient {
                error,
                attempts: retries,
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
