//! One login the daemon keeps fresh, as a value: its store, what was last read from it, its
//! schedule or backoff, the new tokens in hand, the messages already logged. The loop in
//! `daemon/mod.rs` holds one per configured login and calls these handlers; nothing here waits
//! for anything, so a broken login never delays another (the one `await`, the refresh attempt,
//! is run by the loop beside the others').
//!
//! This file owns the value and what happens to its schedule (timers, signals, an attempt's
//! result, backoff); `read.rs` owns reading the store into it, `tell.rs` telling the user,
//! `status.rs` the one-line status.

mod read;
mod status;
mod tell;

use std::cell::RefCell;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use tokend_core::refresh::{Outcome, Policy, RefreshError, Refresher};
use tokend_core::schedule::{Backoff, random_unit};
use tokend_core::store::{Store, StoreError};

use super::Clock;
use super::notify_user::{Notice, UserEvent};
use super::plan::{self, Next, State, Waiting};
use super::told::{Need, Told};
use crate::show::{local_time, when};
pub(super) use read::ReadHow;
use read::Stamp;

/// Bursts of events (a writer's create + write + rename) are coalesced for this long.
const COALESCE: Duration = Duration::from_millis(150);
/// The shortest pause between two attempts that sent nothing (the store said "not due" or
/// another process had refreshed): a guard against a scheduling mistake turning into a loop.
const IDLE_ATTEMPT_GAP: Duration = Duration::from_secs(1);

/// One login the daemon keeps fresh: its store and everything known about it.
pub(super) struct LoginState<C: Clock> {
    pub(super) store: Store,
    pub(super) policy: Policy,
    clock: C,
    pub(super) state: State,
    /// Fingerprint of the bytes last read or written: an event for a file whose bytes did not
    /// change (our own write, a touch) is not news.
    known: Option<u64>,
    /// File identity at the last read, for the periodic check.
    last_stamp: Option<Stamp>,
    /// For a Keychain login: the keychain file that holds the item (found once per watch, so
    /// the minute check is a `stat`, not a `security` run), and whether it was only assumed
    /// because the item did not exist yet.
    keychain_file: Option<(PathBuf, bool)>,
    /// Consecutive reads that found the Keychain locked or busy: they are retried with a
    /// growing pause, never taken for a logout.
    unavailable_tries: u32,
    /// When a coalesced or retried re-read is due.
    pub(super) reread_at: Option<Instant>,
    malformed_tries: u32,
    /// The HTTP client (built on the first attempt and dropped after success, so the idle
    /// daemon holds no TLS state and no connection pool) and new tokens not saved yet.
    pub(super) refresher: Rc<RefCell<Refresher>>,
    /// [`own_fields_key`](tokend_core::credentials::OAuthView::own_fields_key) of the login
    /// last read: a rewrite that leaves the login's own fields as they were (an MCP token, a
    /// setting) neither re-sends a refused refresh token nor cuts a backoff short.
    login_key: Option<u64>,
    /// The short-grant warning is logged once.
    warned_short_grant: bool,
    /// The last "waiting for ..." message logged, so each is logged once.
    said: Option<String>,
    /// `refreshTokenExpiresAt`: the login itself ends then, whatever is refreshed.
    pub(super) login_expires_at: Option<i64>,
    /// The login expiry already warned about, so the warning is logged once per login.
    pub(super) warned_login_expiry: Option<i64>,
    /// What the user was told, and the rules for telling more.
    told: Told,
    /// Notices for the user, taken and delivered by the loop.
    pub(super) outbox: Vec<Notice>,
    /// A login was seen in the store: its disappearance is a removal worth telling.
    seen_login: bool,
    /// The access token's expiry as last read.
    expires_at: Option<i64>,
    /// The store changed kind (`--store auto` found the file): the loop must watch anew.
    pub(super) needs_rearm: bool,
    /// The read of the store the login wants the loop to run (see `read.rs`).
    wanted: Option<ReadHow>,
    /// For a Keychain login: where `security` last said the item lives (`None`: not asked
    /// yet, or it could not say), and whether to ask it again.
    located: Option<Vec<PathBuf>>,
    want_locate: bool,
    /// The login's own fields (as `login_key`) when the server refused it (or its client),
    /// with the wait that followed: that login read again, even after the store was malformed
    /// or gone meanwhile, waits again instead of being sent.
    refused: Option<(u64, Waiting)>,
    /// Moves on whenever an attempt starts or ends: a read begun before is stale by then (the
    /// loop discards its answer and reads again).
    pub(super) epoch: u64,
    /// What the login's mirrors should hold, from the last read of its store, until the loop
    /// takes it (see `daemon/mirrors.rs`).
    pub(super) mirror_want: Option<tokend_core::mirror::Want>,
    /// This daemon is recorded as the login's keeper in its lock file (see `daemon/keeper.rs`),
    /// or wants to be: set by a good read until the loop starts the registration.
    pub(super) registered: bool,
    pub(super) want_register: bool,
    /// The store was found gone once, and is looked at again before the mirrors follow.
    gone_once: bool,
}

impl<C: Clock> LoginState<C> {
    pub(super) fn new(store: Store, policy: Policy, clock: C) -> Self {
        LoginState {
            store,
            policy,
            clock,
            state: State::Unknown,
            known: None,
            last_stamp: None,
            keychain_file: None,
            unavailable_tries: 0,
            reread_at: None,
            malformed_tries: 0,
            refresher: Rc::new(RefCell::new(Refresher::new())),
            login_key: None,
            warned_short_grant: false,
            said: None,
            login_expires_at: None,
            warned_login_expiry: None,
            told: Told::new(tokend_core::seams::notify_hour(Duration::from_secs(3600))),
            outbox: Vec::new(),
            seen_login: false,
            expires_at: None,
            needs_rearm: false,
            wanted: None,
            located: None,
            want_locate: true,
            refused: None,
            epoch: 0,
            mirror_want: None,
            registered: false,
            want_register: false,
            gone_once: false,
        }
    }

    /// What to do next, by the wall clock (read through the seam).
    pub(super) fn next_step(&self) -> Next {
        plan::next(&self.state, self.clock.now(), Instant::now())
    }

    /// Something changed where this login is kept: read it again shortly, and ask where the
    /// item lives when its keychain file was only assumed (the item may exist now).
    pub(super) fn on_file_changed(&mut self) {
        // Coalesce: the first ping of a burst sets the re-read time; later ones ride along.
        if self.reread_at.is_none() {
            self.reread_at = Some(Instant::now() + COALESCE);
        }
        if self
            .keychain_file
            .as_ref()
            .is_some_and(|(_, guessed)| *guessed)
        {
            self.want_locate = true;
        }
    }

    /// A wake-up: a due re-read, a change the watch did not report, the login's end drawing
    /// near. Never called while an attempt of this login is in flight.
    pub(super) fn on_timer(&mut self) {
        self.check_login_expiry();
        self.tick_told();
        let now = Instant::now();
        if self.reread_at.is_some_and(|at| now >= at) {
            self.reread_at = None;
            self.reread(false);
        } else if self.stamp() != self.last_stamp {
            // A change the watch did not report.
            self.reread(false);
        }
    }

    /// SIGHUP: read the store again, whatever was known.
    pub(super) fn on_reload(&mut self) {
        tracing::info!("SIGHUP: re-reading {}", self.store.place());
        self.said = None;
        self.want_locate = true;
        self.reread(true);
    }

    /// Schedules the next refresh at `at` (wall clock) and says so.
    fn schedule(&mut self, expires_at: Option<i64>, at: i64, force: bool) {
        self.state = State::Scheduled {
            expires_at,
            at,
            force,
        };
        let now = self.clock.now();
        match expires_at {
            Some(exp) if at <= now => {
                tracing::info!("token expires {}; refreshing now", when(exp))
            }
            Some(exp) => tracing::info!(
                "token expires {}; next refresh at {}",
                when(exp),
                local_time(at)
            ),
            None if at <= now => tracing::info!("token has no expiry time; refreshing now"),
            None => tracing::info!("token has no expiry time; refreshing at {}", local_time(at)),
        }
    }

    /// A refresh (ours or an adopted one) worked: a failing run or a needed login is over,
    /// and `recovered` is sent if the user was told of either.
    fn refreshing_works(&mut self) {
        if self.told.works() {
            let place = self.store.place();
            self.tell(
                UserEvent::Recovered,
                format!("{place}: refreshing works again"),
                None,
            );
        }
    }

    pub(super) fn handle_result(&mut self, result: Result<Outcome, RefreshError>, forced: bool) {
        let result = match result {
            // New tokens are in hand, whatever failed (their save, a lock, the store): the old
            // refresh token is spent, so only their save is retried, on the save's quick
            // backoff and at once when the store changes; never a wait for a change.
            Err(e) if self.refresher.borrow().has_unsaved_grant() => {
                self.say_once(tracing::Level::ERROR, e.to_string());
                return self.back_off(&e, Backoff::SAVE);
            }
            other => other,
        };
        match result {
            Ok(Outcome::Refreshed {
                expires_at,
                next_at,
                fingerprint,
                short_grant,
                ..
            }) => {
                self.refresher.borrow_mut().drop_client();
                self.known = Some(fingerprint);
                self.expires_at = Some(expires_at);
                self.refreshing_works();
                // The login's own fields and its end, from what was written.
                self.note_store();
                self.said = None;
                if short_grant && !self.warned_short_grant {
                    self.warned_short_grant = true;
                    tracing::warn!(
                        "the server's tokens live no longer than --refresh-before ({}); they are \
                         refreshed at half their lifetime instead, and never twice within a minute",
                        tokend_core::settings::format_duration(self.policy.lead)
                    );
                }
                self.schedule(Some(expires_at), next_at, false);
            }
            Ok(Outcome::Fresh {
                expires_at,
                next_at,
            }) => {
                self.refresher.borrow_mut().drop_client();
                let earliest = self
                    .clock
                    .now()
                    .saturating_add(IDLE_ATTEMPT_GAP.as_millis() as i64);
                self.note_store();
                self.schedule(expires_at, next_at.max(earliest), forced);
            }
            Ok(Outcome::Adopted { .. }) => {
                self.refresher.borrow_mut().drop_client();
                self.refreshing_works();
                self.rearm_from_store();
            }
            Err(
                e @ (RefreshError::LoginNeeded { .. }
                | RefreshError::Rejected { .. }
                | RefreshError::ClientRefused { .. }
                | RefreshError::Endpoint { .. }),
            ) => {
                self.refresher.borrow_mut().drop_client();
                // Remember the login as it is now: only a change to its own fields ends the wait.
                self.note_store();
                let now = Instant::now();
                let why = match e {
                    RefreshError::Endpoint { .. } | RefreshError::ClientRefused { .. } => {
                        if self.told.misconfigured(now) {
                            self.tell(UserEvent::RefreshFailing, e.to_string(), self.expires_at);
                        }
                        Waiting::Misconfigured(e.to_string())
                    }
                    _ => {
                        if self.told.needs_login(now, Need::Refused) {
                            self.tell(UserEvent::LoginNeeded, e.to_string(), None);
                        }
                        Waiting::LoginNeeded(e.to_string())
                    }
                };
                if let Some(key) = self.login_key {
                    self.refused = Some((key, why.clone()));
                }
                self.wait_for(why);
            }
            Err(RefreshError::Store(StoreError::Missing { .. })) => self.wait_for(Waiting::Missing),
            Err(RefreshError::Store(e @ StoreError::Malformed { .. })) => {
                self.known = None;
                self.wait_for(Waiting::Malformed(e.to_string()));
            }
            // Too big to write back, found before any request: it stays so until the store
            // changes, so wait for that rather than retry. (With new tokens in hand the save
            // keeps being retried like any other failed save.)
            Err(RefreshError::Store(e @ StoreError::TooBig { .. }))
                if !self.refresher.borrow().has_unsaved_grant() =>
            {
                self.note_store();
                self.wait_for(Waiting::Unreadable(e.to_string()));
            }
            Err(e) => self.back_off(&e, Backoff::STANDARD),
        }
    }

    /// With new tokens in hand: retry their save now (the store changed, so it may work).
    fn retry_save_now(&mut self) {
        let now = Instant::now();
        match &mut self.state {
            State::BackingOff { until, .. } => *until = now,
            _ => {
                self.state = State::BackingOff {
                    until: now,
                    retries: 0,
                    reason: "new tokens are not saved yet".to_owned(),
                }
            }
        }
    }

    fn back_off(&mut self, e: &RefreshError, policy: Backoff) {
        let retries = match &self.state {
            State::BackingOff { retries, .. } => retries.saturating_add(1),
            _ => 0,
        };
        let delay = policy.delay(retries, random_unit(), e.retry_after());
        let now = Instant::now();
        // `delay` is at most an hour (Retry-After is capped), so this cannot overflow; if it
        // somehow did, a minute is a safe answer.
        let until = now.checked_add(delay).unwrap_or(now + plan::MAX_SLEEP);
        if !self.refresher.borrow_mut().has_unsaved_grant() {
            tracing::warn!("backing off for {:.1}s because {e}", delay.as_secs_f64());
        }
        self.state = State::BackingOff {
            until,
            retries,
            reason: e.to_string(),
        };
        self.told.failing(now);
        self.tick_told();
    }
}

#[cfg(test)]
mod tests;
