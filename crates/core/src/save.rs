//! The write step shared by refresh, login and logout: under Claude Code's
//! `.storage-write.lock`, re-read the store as it is now, decide from what is there
//! (compare-and-swap), change only what this program owns, and commit atomically.
//!
//! It owns the rules that keep a write from losing anything: a change another writer made while
//! a request was in flight (an MCP token, a setting) is kept; a refresh whose token was replaced
//! meanwhile (another refresher won, a new login, a logout) writes nothing; and new tokens in
//! hand are never dropped because the store turned malformed: its bytes are copied aside first.
//! It never sends a request and never decides whether one is needed: `refresh` and `login` do.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::claude_locks::{self, LockPaths};
use crate::credentials::{Credentials, TokenUpdate};
use crate::secret::Secret;
use crate::store::{FileLock, PendingWrite, Store, StoreError};

/// How long a write waits for Claude Code's storage-write lock before going ahead without it.
/// The lock is stale after 15 s, so a live holder is done well before this.
const WRITE_LOCK_WAIT: Duration = Duration::from_secs(20);

/// What a write is for, with what it needs to decide.
pub enum Change<'a> {
    /// New tokens from a refresh that spent `sent`. Written only if the store still holds
    /// `sent` (or blank tokens); `base` is the document read under the locks before the request,
    /// merged into when the store turned malformed meanwhile.
    Refresh {
        sent: &'a Secret,
        grant: &'a TokenUpdate,
        base: &'a Credentials,
    },
    /// A new login: replaces `claudeAiOauth` whole. `base` (the document read before the code
    /// was exchanged, if there was one) plays the same part as for a refresh.
    Login {
        grant: &'a crate::credentials::LoginGrant,
        base: Option<&'a Credentials>,
    },
    /// Removes `claudeAiOauth`; deletes the store when nothing else is in it.
    Logout,
}

/// How a write ended, when nothing failed.
#[derive(Debug, PartialEq, Eq)]
pub enum Saved {
    /// Committed. `fingerprint`: of the bytes written (`None` when the store was deleted).
    Written {
        fingerprint: Option<u64>,
        /// Where the malformed bytes found at the write were copied, when they were.
        malformed_copy: Option<PathBuf>,
    },
    /// Compare-and-swap: the store holds a different refresh token; another writer won and
    /// nothing was written.
    AnotherWriter,
    /// The login (or the whole store) is gone: a logout happened meanwhile; nothing was written.
    LoggedOut,
    /// A logout found no login to remove.
    NothingToRemove,
}

/// Performs `change` under the storage-write lock. `keep_alive` is called while waiting for
/// the lock, so the refresh locks the caller holds stay fresh. `pending` is the temp file
/// created before the request (dropped unused when nothing is written).
pub async fn save(
    store: &Store,
    ledger: &FileLock,
    lock_paths: &LockPaths,
    keep_alive: &dyn Fn(),
    pending: PendingWrite,
    change: Change<'_>,
) -> Result<Saved, StoreError> {
    // Dropped after the write lock (declared before it): the ledger loses its line again.
    let _restore = LedgerRestored(ledger, ledger.ledger());
    let write_lock = match claude_locks::take(
        &lock_paths.storage_write,
        claude_locks::WRITE_STALE,
        Some(Instant::now() + WRITE_LOCK_WAIT),
        &claude_locks::announce_wait,
        keep_alive,
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
    if let Some(held) = &write_lock {
        ledger.append_ledger(&claude_locks::ledger(&[held]));
    }
    let current = store.read_settled().await;
    match change {
        Change::Refresh { sent, grant, base } => {
            let mut doc = match current {
                Ok(snapshot) => snapshot.doc,
                Err(StoreError::Missing { .. }) => return Ok(Saved::LoggedOut),
                Err(StoreError::Malformed { .. }) => {
                    let copy = store.copy_aside_async().await?;
                    let mut doc = base.clone();
                    doc.apply(grant);
                    return commit(pending, &doc, Some(copy)).await;
                }
                Err(e) => return Err(e),
            };
            let view = doc
                .oauth()
                .expect("Credentials::parse validated the owned fields");
            match view {
                None => Ok(Saved::LoggedOut),
                Some(v)
                    if v.refresh_token
                        .as_ref()
                        .is_some_and(|t| t == sent || t.is_blank()) =>
                {
                    doc.apply(grant);
                    commit(pending, &doc, None).await
                }
                Some(_) => Ok(Saved::AnotherWriter),
            }
        }
        Change::Login { grant, base } => {
            let (mut doc, copy) = match current {
                Ok(snapshot) => (snapshot.doc, None),
                Err(StoreError::Missing { .. }) => (Credentials::empty(), None),
                Err(StoreError::Malformed { .. }) => (
                    base.cloned().unwrap_or_else(Credentials::empty),
                    Some(store.copy_aside_async().await?),
                ),
                Err(e) => return Err(e),
            };
            doc.replace_login(grant);
            commit(pending, &doc, copy).await
        }
        Change::Logout => {
            let mut doc = match current {
                Ok(snapshot) => snapshot.doc,
                Err(StoreError::Missing { .. }) => return Ok(Saved::NothingToRemove),
                Err(e) => return Err(e),
            };
            if !doc.remove_login() {
                return Ok(Saved::NothingToRemove);
            }
            if doc.is_empty() {
                drop(pending);
                store.remove_async().await?;
                return Ok(Saved::Written {
                    fingerprint: None,
                    malformed_copy: None,
                });
            }
            commit(pending, &doc, None).await
        }
    }
}

async fn commit(
    pending: PendingWrite,
    doc: &Credentials,
    malformed_copy: Option<PathBuf>,
) -> Result<Saved, StoreError> {
    let fingerprint = pending.commit_async(doc).await?;
    Ok(Saved::Written {
        fingerprint: Some(fingerprint),
        malformed_copy,
    })
}

/// Puts the ledger back as it was when dropped: the storage-write lock's line goes once the
/// lock is released (or on any way out but a crash, when the line must survive).
struct LedgerRestored<'a>(&'a FileLock, String);

impl Drop for LedgerRestored<'_> {
    fn drop(&mut self) {
        self.0.set_ledger(&self.1);
    }
}
