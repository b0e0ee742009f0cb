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

mod attempt;
mod budget;
mod decide;

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::claude_locks;
use crate::oauth::{ClientConfig, OAuthError};
use crate::secret::Secret;
use crate::store::{FileLock, Place, Store, StoreError};

pub use attempt::{InHand, Refresher};
pub use budget::Retry;
pub use budget::{
    LOCK_WAIT_LIMIT, RunControl, STOP_SAVE_GRACE, refresh_controlled, refresh_with_budget,
};
pub use decide::MIN_LEFT_MS;
pub use decide::{ACCESS_ONLY, ALREADY_REFUSED, next_at, next_at_unlocked};

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
    /// Honour the pause a transient failure recorded in the lock file (see
    /// [`PauseRecord`](crate::store::PauseRecord)) while the stored access token still lasts:
    /// `token` and `--once`, never the daemon or `refresh`.
    pub honour_pause: bool,
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
    /// Another live claude-tokend (`pid`) sent the store's refresh token and has not saved
    /// the answer yet: nothing was sent. Temporary: that process saves it, or dies and its
    /// record no longer holds.
    SpentElsewhere { place: Place, pid: u32 },
    /// A pause recorded after a transient failure still holds for the store's refresh token
    /// (the server's `Retry-After`, or a short standard pause), and the stored access token
    /// still lasts: nothing was sent. Only for a [`Policy`] that honours pauses.
    Paused {
        place: Place,
        /// When the pause ends, epoch ms (wall clock).
        until: i64,
        /// How much of it was left when it was found.
        left: Duration,
        /// What failed, as recorded.
        why: String,
    },
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
                 refresh token is spent, so the login may be lost: fix the problem ({}) and, if \
                 Claude Code then reports that you are logged out, run `claude-tokend login`",
                match source.concerns_keychain() {
                    true =>
                        "for the Keychain: unlock it with `security unlock-keychain`, \
                             or make the item smaller",
                    false => "disk space, permissions",
                }
            ),
            RefreshError::SpentElsewhere { place, pid } => write!(
                f,
                "another claude-tokend (pid {pid}) spent the refresh token in {place} and has \
                 not saved the answer yet, so it was not sent again (that would be a reuse the \
                 server may punish with a logout); nothing was sent: try again later, once that \
                 process has saved the new tokens or has ended"
            ),
            RefreshError::Paused {
                place, left, why, ..
            } => write!(
                f,
                "refreshing {place} is paused for {} more, since the last attempt failed ({why}); \
                 nothing was sent",
                budget::format_duration_precise(*left)
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
