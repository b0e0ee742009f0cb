//! One attempt of the sequence ([`Refresher::attempt`]): lock, re-read, decide, Claude Code's
//! locks, temp file, at most one request, compare-and-swap and write; and the grant in hand
//! ([`InHand`]) that a failed save leaves for the next attempt, which only re-saves it.

use std::time::{Duration, Instant, SystemTime};

use super::decide::{Decision, client_id_for, decide};
use super::{LedgerCleared, Mode, Outcome, Policy, RefreshError, Step, tidy};
use crate::claude_locks::{self, RefreshLocks, announce_wait};
use crate::credentials::{Credentials, TokenUpdate};
use crate::oauth::{OAuthError, RefreshRequest, TokenClient};
use crate::save::{self, Change, Saved};
use crate::schedule::{
    GrantRecord, boot_millis, epoch_millis, is_short_grant, next_refresh_at, token_fingerprint,
};
use crate::seams;
use crate::secret::Secret;
use crate::settings::format_duration;
use crate::store::{
    AccountRecord, FileLock, PauseRecord, Place, RefusedRecord, SpentRecord, Store, StoreError,
};

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
            let snapshot = store.read_settled().await?;
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
            let snapshot = store.read_settled().await?;
            match decide(&snapshot, mode, policy, &lock, &place)? {
                Decision::Done(outcome) => return Ok(outcome),
                Decision::Refresh(v) => view = Some(v),
            }
            Some(snapshot)
        } else {
            None
        };
        // A spent token is spent for every process: another claude-tokend that sent this very
        // refresh token and still lives holds the only answer the server gives for it (a save
        // that failed leaves the store showing the old token meanwhile). Sending it again
        // would be a reuse. Read under the flock, so the record is the sender's last word.
        if let Some(view) = &view
            && let Some(token) = view.usable_refresh_token()
            && let Some(pid) = lock.spent_record().and_then(|r| r.holder_of(token))
        {
            return Err(RefreshError::SpentElsewhere { place, pid });
        }
        // The Keychain: check before spending. A document `security` could not be given
        // whole would fail every save after the token is spent.
        if let Some(snapshot) = &snapshot {
            store.check_room(&snapshot.doc)?;
        }
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
            // From here until the answer is saved (or the request failed), the lock file says
            // which process spent this token (see the check above).
            lock.set_spent_record(Some(&SpentRecord::this_process(&refresh_token)));
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
                    // No grant came back, so this process holds no answer that another
                    // could spoil: whether or not the server spent the token, this process
                    // would send it again itself, and so may another.
                    lock.set_spent_record(None);
                    // ---- pause: what the server told this request, for the next process ----
                    // Until its Retry-After (or a short standard pause), `token` and `--once`
                    // runs that find a stored token still lasting send nothing with this
                    // refresh token; written under the flock, so a run waiting for it sees it.
                    if error.is_transient() {
                        lock.set_pause_record(Some(&PauseRecord::after(
                            &refresh_token,
                            error.retry_after(),
                            &error.to_string(),
                            epoch_millis(SystemTime::now()),
                            boot_millis(),
                        )));
                    }
                    // ---- end of the pause ----
                    let result =
                        failed(store, &place, error, &refresh_token, client_id, origin).await;
                    if let Err(RefreshError::Rejected { .. }) = &result {
                        lock.set_refused_record(Some(&RefusedRecord::new(
                            &refresh_token,
                            epoch_millis(SystemTime::now()),
                        )));
                    }
                    return result;
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
        // The answer is saved, or the store no longer holds the token it answers (another
        // writer, a logout): either way the spent token is nobody's to protect any more.
        lock.set_spent_record(None);
        let in_hand = self.in_hand.take().expect("a grant is in hand here");
        match saved {
            Saved::Written {
                fingerprint,
                malformed_copy,
            } => {
                follow_account(&lock, &in_hand);
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
                    .read_async()
                    .await
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

/// The account of this program's own login follows each of this program's own refreshes:
/// the record named the refresh token just spent, so it now names the one saved. (Anyone
/// else's refresh leaves it naming a token the store no longer holds: the descent ends.)
fn follow_account(lock: &FileLock, in_hand: &InHand) {
    if let Some(account) = lock.account_record()
        && account.matches(Some(&in_hand.sent))
        && let Some(new) = &in_hand.grant.refresh_token
    {
        lock.set_account_record(Some(&AccountRecord {
            token: token_fingerprint(new),
            ..account
        }));
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
    if let Ok(now) = store.read_settled().await
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
