//! One login the daemon keeps fresh, as a value: its store, what was last read from it, its
//! schedule or backoff, the new tokens in hand, the messages already logged. The loop in
//! `mod.rs` holds one per configured login and calls these handlers; nothing here waits for
//! anything, so a broken login never delays another (the one `await`, the refresh attempt, is
//! run by the loop beside the others').

use std::cell::RefCell;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

use tokend_core::credentials::OAuthView;
use tokend_core::refresh::{self, Outcome, Policy, RefreshError, Refresher};
use tokend_core::schedule::{Backoff, random_unit};
use tokend_core::store::{Kind, Store, StoreError};

use super::notify_user::{Notice, UserEvent};
use super::plan::{self, Next, State, Waiting};
use super::told::{Need, Told};
use super::{Clock, watch};
use crate::show::{local_time, when};

/// Bursts of events (a writer's create + write + rename) are coalesced for this long.
const COALESCE: Duration = Duration::from_millis(150);
/// A file that does not parse is re-read this often, this many times, before it counts as
/// malformed: a writer may be half-way through it.
const MALFORMED_RETRY: Duration = Duration::from_millis(250);
const MALFORMED_TRIES: u32 = 5;
/// From this long before `refreshTokenExpiresAt`, the daemon warns that a new login is needed.
pub(super) const LOGIN_EXPIRY_WARNING_MS: i64 = 3 * 24 * 3600 * 1000;
/// The first pause before reading a locked or busy Keychain again, doubled on each failure up
/// to [`UNAVAILABLE_RETRY_MAX`].
const UNAVAILABLE_RETRY: Duration = Duration::from_secs(5);
const UNAVAILABLE_RETRY_MAX: Duration = Duration::from_secs(300);
/// The shortest pause between two attempts that sent nothing (the store said "not due" or
/// another process had refreshed): a guard against a scheduling mistake turning into a loop.
const IDLE_ATTEMPT_GAP: Duration = Duration::from_secs(1);

/// A cheap identity of the file for the once-a-minute check that catches changes a watch
/// missed (network filesystems, an overflowed queue).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime_ns: i128,
}

fn stamp(path: &Path) -> Option<Stamp> {
    let m = std::fs::metadata(path).ok()?;
    Some(Stamp {
        dev: m.dev(),
        ino: m.ino(),
        len: m.len(),
        mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
    })
}

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
    /// [`OAuthView::own_fields_key`] of the login last read: a rewrite that leaves the login's
    /// own fields as they were (an MCP token, a setting) neither re-sends a refused refresh
    /// token nor cuts a backoff short.
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
        }
    }

    /// `CLAUDE_TOKEND_LOGIN`: the credentials path as located, or `keychain:<service>`.
    fn login_id(&self) -> String {
        match self.store.keychain_item() {
            Some(item) => format!("keychain:{}", item.service),
            None => self.store.path().display().to_string(),
        }
    }

    fn tell(&mut self, event: UserEvent, message: String, deadline: Option<i64>) {
        let login = self.login_id();
        self.outbox.push(Notice {
            event,
            login,
            message,
            deadline,
        });
    }

    /// Sends what the telling rules say is due now (repeats, a run of failures grown long, the
    /// login's end drawing near).
    fn tick_told(&mut self) {
        let place = self.store.place();
        for due in self.told.tick(
            Instant::now(),
            self.clock.now(),
            self.expires_at,
            self.login_expires_at,
        ) {
            let message = match due.event {
                UserEvent::LoginNeeded => {
                    format!(
                        "{place}: a new login is still needed (claude-tokend login, or sign in with Claude Code)"
                    )
                }
                UserEvent::RefreshFailing => match self.expires_at {
                    Some(at) if at <= self.clock.now() => format!(
                        "{place}: the access token expired while refreshes were failing ({})",
                        self.failure_reason()
                    ),
                    _ => format!(
                        "{place}: refreshing has been failing for 30 minutes ({})",
                        self.failure_reason()
                    ),
                },
                UserEvent::LoginExpiring => format!(
                    "{place}: the login itself ends {}; no refresh can extend it: sign in again before then",
                    due.deadline.map(when).unwrap_or_default()
                ),
                UserEvent::Recovered => format!("{place} works again"),
            };
            self.tell(due.event, message, due.deadline);
        }
    }

    /// When the telling rules may next have something to send.
    pub(super) fn next_tell_at(&self) -> Option<Instant> {
        self.told.next_at()
    }

    fn failure_reason(&self) -> String {
        match &self.state {
            State::BackingOff { reason, .. } => reason.clone(),
            _ => "temporary failures".to_owned(),
        }
    }

    /// What to do next, by the wall clock (read through the seam).
    pub(super) fn next_step(&self) -> Next {
        plan::next(&self.state, self.clock.now(), Instant::now())
    }

    /// The identity of the file whose change means "read again".
    fn stamp(&self) -> Option<Stamp> {
        match self.store.kind() {
            Kind::File => stamp(&self.store.target()),
            Kind::Keychain => stamp(&self.keychain_file.as_ref()?.0),
        }
    }

    /// Something changed where this login is kept: read it again shortly. Returns true when
    /// the watch must be armed again (the item's keychain file was only assumed).
    pub(super) fn on_file_changed(&mut self) -> bool {
        // Coalesce: the first ping of a burst sets the re-read time; later ones ride along.
        if self.reread_at.is_none() {
            self.reread_at = Some(Instant::now() + COALESCE);
        }
        self.keychain_file
            .as_ref()
            .is_some_and(|(_, guessed)| *guessed)
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
        self.reread(true);
    }

    /// The files to watch for this login (see `watch::watched_files`), remembered so the
    /// minute check can `stat` the keychain file without running `security`.
    pub(super) fn watched_files(&mut self) -> Vec<PathBuf> {
        let (files, guessed) = watch::watched_files(&self.store);
        if self.store.kind() == Kind::Keychain {
            self.keychain_file = files.first().map(|f| (f.clone(), guessed));
        }
        files
    }

    /// Reads the file and updates the state from it. `force`: even if the bytes are the ones
    /// already known (startup, SIGHUP).
    pub(super) fn reread(&mut self, force: bool) {
        self.last_stamp = self.stamp();
        // A claude-tokend that crashed mid-refresh may have left lock directories that make
        // Claude Code wait; clear them when the lock is free (never waiting for it here).
        if let Ok(Some(lock)) = self.store.try_lock() {
            tokend_core::refresh::tidy(&self.store, &lock);
        }
        match self.store.read() {
            Ok(snapshot) => {
                self.malformed_tries = 0;
                self.unavailable_tries = 0;
                if !force && Some(snapshot.fingerprint) == self.known {
                    return;
                }
                self.known = Some(snapshot.fingerprint);
                let view = snapshot.doc.oauth().ok().flatten();
                let key = view.as_ref().map(OAuthView::own_fields_key);
                let same_login = key.is_some() && key == self.login_key;
                self.login_key = key;
                // Only the login's own fields re-arm: a refused token is not sent again, and a
                // backoff (or the retried save of tokens in hand) is not cut short, because an
                // MCP token or a setting changed.
                let settled = matches!(
                    self.state,
                    State::Waiting(Waiting::LoginNeeded(_) | Waiting::Misconfigured(_))
                        | State::BackingOff { .. }
                        | State::Scheduled { .. }
                );
                if (same_login && settled) || self.refresher.borrow_mut().has_unsaved_grant() {
                    return;
                }
                let place = self.store.place();
                match view {
                    Some(v) if !v.is_logged_out() => {
                        self.said = None;
                        self.seen_login = true;
                        self.expires_at = v.expires_at;
                        self.login_expires_at = v.refresh_token_expires_at;
                        if self.told.works(false) {
                            self.tell(
                                UserEvent::Recovered,
                                format!("{place}: a usable login is back"),
                                None,
                            );
                        }
                        self.check_login_expiry();
                        self.tick_told();
                        let at = refresh::next_at_unlocked(&self.store, &v, self.policy.lead);
                        self.schedule(v.expires_at, at, false);
                    }
                    Some(_) => {
                        self.seen_login = true;
                        if self.told.needs_login(Instant::now(), Need::Refused) {
                            self.tell(
                                UserEvent::LoginNeeded,
                                format!("{place}: the login was blanked (logged out after a refused refresh); sign in again"),
                                None,
                            );
                        }
                        self.wait_for(Waiting::LoggedOut);
                    }
                    None => {
                        self.removed();
                        self.wait_for(Waiting::LoggedOut);
                    }
                }
            }
            Err(e) if e.may_be_mid_write() && self.malformed_tries + 1 < MALFORMED_TRIES => {
                self.malformed_tries += 1;
                self.reread_at = Some(Instant::now() + MALFORMED_RETRY);
            }
            Err(e) if e.is_transient() => {
                // A locked or busy Keychain: read again later, with a growing pause; the state
                // (a scheduled refresh, say) stands.
                let pause = UNAVAILABLE_RETRY
                    .saturating_mul(1 << self.unavailable_tries.min(6))
                    .min(UNAVAILABLE_RETRY_MAX);
                self.unavailable_tries = self.unavailable_tries.saturating_add(1);
                self.say_once(
                    tracing::Level::WARN,
                    format!("{e}; reading it again in {}s", pause.as_secs()),
                );
                self.reread_at = Some(Instant::now() + pause);
            }
            Err(StoreError::Missing { .. }) => {
                // `--store auto` waiting for either store: a file that appears is the login.
                if let Some(file) = self.store.file_appeared() {
                    tracing::info!(
                        "the login appeared in {}; using the file (--store auto)",
                        file.place()
                    );
                    self.store = file;
                    self.needs_rearm = true;
                    self.known = None;
                    return self.reread(true);
                }
                self.removed();
                self.wait_for(Waiting::Missing);
            }
            Err(e @ StoreError::Malformed { .. }) => {
                self.malformed_tries = 0;
                self.known = None;
                self.wait_for(Waiting::Malformed(e.to_string()));
            }
            Err(e) => self.wait_for(Waiting::Unreadable(e.to_string())),
        }
    }

    /// The login (or its whole store) is gone: a logout, by anyone. Told once, and only when
    /// there was a login to lose.
    fn removed(&mut self) {
        if std::mem::take(&mut self.seen_login)
            && self.told.needs_login(Instant::now(), Need::Removed)
        {
            let place = self.store.place();
            self.tell(
                UserEvent::LoginNeeded,
                format!("{place}: the login was removed (a logout); sign in again to use it"),
                None,
            );
        }
    }

    fn wait_for(&mut self, why: Waiting) {
        let path = self.store.place().to_string();
        let (level, text) = match &why {
            Waiting::Missing => (
                tracing::Level::INFO,
                format!(
                    "waiting for {path} to appear (sign in with `claude-tokend login` or Claude Code)"
                ),
            ),
            Waiting::Malformed(e) => (
                tracing::Level::WARN,
                format!("{e}; waiting for it to be fixed"),
            ),
            Waiting::Unreadable(e) => (
                tracing::Level::WARN,
                format!("{e}; waiting for it to change"),
            ),
            Waiting::LoggedOut => (
                tracing::Level::INFO,
                format!(
                    "no login in {path}; waiting for a login (`claude-tokend login` or Claude Code)"
                ),
            ),
            Waiting::LoginNeeded(e) => (
                tracing::Level::ERROR,
                format!(
                    "{e}; no more requests will be made with this refresh token until the file changes"
                ),
            ),
            Waiting::Misconfigured(e) => (
                tracing::Level::ERROR,
                format!(
                    "{e}; no more requests until the file changes or the daemon restarts with a corrected setting"
                ),
            ),
        };
        self.say_once(level, text);
        self.state = State::Waiting(why);
    }

    fn say_once(&mut self, level: tracing::Level, text: String) {
        if self.said.as_ref() == Some(&text) {
            return;
        }
        match level {
            tracing::Level::ERROR => tracing::error!("{text}"),
            tracing::Level::WARN => tracing::warn!("{text}"),
            _ => tracing::info!("{text}"),
        }
        self.said = Some(text);
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

    /// Re-reads the store after an attempt and schedules from it, whatever was known before
    /// (the attempt has just looked at it under the lock).
    fn rearm_from_store(&mut self) {
        self.login_key = None;
        self.state = State::Unknown;
        self.reread(true);
    }

    pub(super) fn handle_result(&mut self, result: Result<Outcome, RefreshError>, forced: bool) {
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
                if self.told.works(true) {
                    let place = self.store.place();
                    self.tell(
                        UserEvent::Recovered,
                        format!("{place}: refreshing works again"),
                        None,
                    );
                }
                if let Ok(Some(v)) = self.store.read().map(|s| s.doc.oauth().ok().flatten()) {
                    self.login_expires_at = v.refresh_token_expires_at;
                    self.login_key = Some(v.own_fields_key());
                }
                self.last_stamp = self.stamp();
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
                if self.told.works(true) {
                    let place = self.store.place();
                    self.tell(
                        UserEvent::Recovered,
                        format!("{place}: refreshing works again"),
                        None,
                    );
                }
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
                self.wait_for(why);
            }
            Err(RefreshError::Store(StoreError::Missing { .. })) => self.wait_for(Waiting::Missing),
            Err(RefreshError::Store(e @ StoreError::Malformed { .. })) => {
                self.known = None;
                self.wait_for(Waiting::Malformed(e.to_string()));
            }
            // Too big to write back, found before any request: it stays so until the store
            // changes, so wait for that rather than retry.
            Err(RefreshError::Store(e @ StoreError::TooBig { .. })) => {
                self.note_store();
                self.wait_for(Waiting::Unreadable(e.to_string()));
            }
            Err(e @ RefreshError::SaveFailed { .. }) => {
                tracing::error!("{e}");
                self.back_off(&e, Backoff::SAVE);
            }
            Err(e) => self.back_off(&e, Backoff::STANDARD),
        }
    }

    /// Records the store as it is now (bytes, identity, the login's own fields) without
    /// changing the schedule.
    fn note_store(&mut self) {
        if let Ok(s) = self.store.read() {
            self.known = Some(s.fingerprint);
            if let Ok(Some(v)) = s.doc.oauth() {
                self.login_key = Some(v.own_fields_key());
                self.login_expires_at = v.refresh_token_expires_at;
            }
        }
        self.last_stamp = self.stamp();
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

    /// The login's end, when it is within [`LOGIN_EXPIRY_WARNING_MS`].
    fn login_ending(&self) -> Option<i64> {
        self.login_expires_at
            .filter(|at| at.saturating_sub(self.clock.now()) <= LOGIN_EXPIRY_WARNING_MS)
    }

    /// Warns, once per login, that no refresh can extend it past `refreshTokenExpiresAt`.
    fn check_login_expiry(&mut self) {
        if let Some(at) = self.login_ending()
            && self.warned_login_expiry != Some(at)
        {
            tracing::warn!(
                "the login itself ends {}: no refresh can extend it; log in again before then \
                 (claude-tokend login, or sign in with Claude Code)",
                when(at)
            );
            self.warned_login_expiry = Some(at);
        }
    }

    /// A short name for this login in a one-line status: its config directory's name, or
    /// `keychain:<service>`.
    pub(super) fn short_name(&self) -> String {
        match self.store.kind() {
            Kind::Keychain => format!(
                "keychain:{}",
                self.store
                    .keychain_item()
                    .map_or("", |i| i.service.as_str())
            ),
            Kind::File => self
                .store
                .path()
                .parent()
                .and_then(|d| d.file_name())
                .map_or_else(
                    || self.store.path().display().to_string(),
                    |n| n.to_string_lossy().into_owned(),
                ),
        }
    }

    /// One line for `systemctl status` about this login.
    pub(super) fn status_text(&self) -> String {
        let text = match &self.state {
            State::Unknown => "starting".to_owned(),
            State::Scheduled {
                expires_at: Some(exp),
                at,
                ..
            } => format!(
                "next refresh at {}; token expires {}",
                local_time(*at),
                local_time(*exp)
            ),
            State::Scheduled {
                expires_at: None, ..
            } => "refreshing".to_owned(),
            State::BackingOff { until, reason, .. } => format!(
                "retrying in {}s; last error: {reason}",
                until.saturating_duration_since(Instant::now()).as_secs()
            ),
            State::Waiting(Waiting::Missing) => {
                format!("waiting for {}", self.store.place())
            }
            State::Waiting(Waiting::LoggedOut) => "waiting for a login".to_owned(),
            State::Waiting(Waiting::LoginNeeded(e)) => format!("login needed: {e}"),
            State::Waiting(Waiting::Misconfigured(e)) => format!("setting needs fixing: {e}"),
            State::Waiting(Waiting::Malformed(e) | Waiting::Unreadable(e)) => e.clone(),
        };
        match self.login_ending() {
            Some(at) => format!("{text}; log in again before {}", local_time(at)),
            None => text,
        }
    }
}

#[cfg(test)]
#[path = "login_state_tests.rs"]
mod tests;
