//! Reading one login's store into its state: what a read (or a failed one) means for the
//! schedule, the messages logged once while waiting, and the cheap identity of the file the
//! minute check compares.
//!
//! The login never reads its store itself: it says what read it wants ([`ReadHow`]), the loop
//! runs it (inline for a file, on the blocking pool for a Keychain item, whose `security` run
//! may take up to 30 s or hang while a keychain asks a person) and hands the answer back to
//! [`LoginState::apply_read`]. Asking `security` where the item lives (for the watch) goes the
//! same way.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokend_core::credentials::OAuthView;
use tokend_core::refresh;
use tokend_core::store::{Kind, Snapshot, StoreError};

use super::LoginState;
use crate::daemon::notify_user::UserEvent;
use crate::daemon::plan::{State, Waiting};
use crate::daemon::told::Need;
use crate::daemon::{Clock, watch};

/// What a wanted read is for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(in crate::daemon) struct ReadHow {
    /// Even if the bytes are the ones already known (startup, SIGHUP, after an attempt that
    /// adopted another process's refresh).
    pub force: bool,
    /// After an attempt: when the store holds what is known (our own write, or what the
    /// attempt found), record the login's own fields and its end from it, leaving the schedule
    /// as the attempt set it.
    pub note: bool,
}

impl ReadHow {
    fn merge(self, other: ReadHow) -> ReadHow {
        ReadHow {
            force: self.force || other.force,
            note: self.note || other.note,
        }
    }
}

/// A file that does not parse is re-read this often, this many times, before it counts as
/// malformed: a writer may be half-way through it.
const MALFORMED_RETRY: Duration = Duration::from_millis(250);
const MALFORMED_TRIES: u32 = 5;
/// The first pause before reading a locked or busy Keychain again, doubled on each failure up
/// to [`UNAVAILABLE_RETRY_MAX`].
const UNAVAILABLE_RETRY: Duration = Duration::from_secs(5);
const UNAVAILABLE_RETRY_MAX: Duration = Duration::from_secs(300);
use tokend_core::mirror::GONE_RECHECK;

/// A cheap identity of the file for the once-a-minute check that catches changes a watch
/// missed (network filesystems, an overflowed queue).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Stamp {
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

impl<C: Clock> LoginState<C> {
    /// The identity of the file whose change means "read again".
    pub(super) fn stamp(&self) -> Option<Stamp> {
        match self.store.kind() {
            Kind::File => stamp(&self.store.target()),
            Kind::Keychain => stamp(&self.keychain_file.as_ref()?.0),
        }
    }

    /// The files to watch for this login (see `watch::watched_files`): for a Keychain login
    /// from where `security` last said the item lives (or the guess until it has), remembered
    /// so the minute check can `stat` the keychain file without running `security`.
    pub(in crate::daemon) fn watched_files(&mut self) -> Vec<PathBuf> {
        let located = match self.store.kind() {
            // Paths only: no `security` run.
            Kind::File => self.store.watched_files(),
            Kind::Keychain => self.located.clone(),
        };
        let (files, guessed) = watch::watched_files(&self.store, located);
        if self.store.kind() == Kind::Keychain {
            self.keychain_file = files.first().map(|f| (f.clone(), guessed));
        }
        files
    }

    /// Whether the loop should ask `security` where the item lives (a Keychain login only:
    /// at start, on SIGHUP, and when a guessed keychain file changed).
    pub(in crate::daemon) fn take_locate(&mut self) -> bool {
        std::mem::take(&mut self.want_locate) && self.store.kind() == Kind::Keychain
    }

    /// Where `security` said the item lives (`None`: it could not say, e.g. no item yet).
    /// Returns whether the files to watch changed, so the watch must be armed anew.
    pub(in crate::daemon) fn located(&mut self, files: Option<Vec<PathBuf>>) -> bool {
        if self.store.kind() != Kind::Keychain {
            return false;
        }
        let before = self.watched_files();
        self.located = files;
        self.watched_files() != before
    }

    /// Asks for a read of the store. `force`: even if the bytes are the ones already known.
    /// With new tokens in hand nothing is read: the save of the tokens is retried instead.
    pub(in crate::daemon) fn reread(&mut self, force: bool) {
        self.want_read(ReadHow { force, note: false });
    }

    pub(in crate::daemon) fn want_read(&mut self, how: ReadHow) {
        if self.refresher.borrow().has_unsaved_grant() {
            // The store changed (or is looked at anew): the save of the tokens in hand may
            // work now. What a read says would change nothing (a store unreadable for a while
            // must not park the login in a wait): the save reads it under the lock.
            return self.retry_save_now();
        }
        self.wanted = Some(self.wanted.map_or(how, |w| w.merge(how)));
    }

    /// The read the loop should run now, if one is wanted, after the quick local chores that
    /// go with a read (the file's identity for the minute check; lock directories a crashed
    /// claude-tokend left, cleared when our flock is free, never waited for).
    pub(in crate::daemon) fn take_read(&mut self) -> Option<ReadHow> {
        let how = self.wanted.take()?;
        self.last_stamp = self.stamp();
        if let Ok(Some(lock)) = self.store.try_lock() {
            tokend_core::refresh::tidy(&self.store, &lock);
        }
        Some(how)
    }

    /// Updates the state from a read the loop ran for [`LoginState::take_read`].
    pub(in crate::daemon) fn apply_read(
        &mut self,
        result: Result<Snapshot, StoreError>,
        how: ReadHow,
    ) {
        if self.refresher.borrow().has_unsaved_grant() {
            return self.retry_save_now();
        }
        // What the mirrors should hold follows every read that says something about the
        // access token, our own write included (the read after a refresh finds known bytes).
        // A store found gone is looked at once more before the mirrors (and `--mirror-cmd`'s
        // remote copies) lose the login: a file moved away and back (an editor's save) is not
        // a logout.
        let gone = matches!(result, Err(StoreError::Missing { .. }));
        match tokend_core::mirror::want_of_read(&result) {
            Some(_) if gone && !self.gone_once => {
                self.gone_once = true;
                self.reread_at = Some(Instant::now() + GONE_RECHECK);
            }
            Some(want) => self.mirror_want = Some(want),
            None => {}
        }
        if !gone {
            self.gone_once = false;
        }
        self.check_registration();
        match result {
            Ok(snapshot) => {
                self.malformed_tries = 0;
                self.unavailable_tries = 0;
                if !how.force && Some(snapshot.fingerprint) == self.known {
                    if how.note
                        && let Ok(Some(v)) = snapshot.doc.oauth()
                    {
                        self.login_key = Some(v.own_fields_key());
                        self.login_expires_at = v.refresh_token_expires_at;
                        self.check_login_expiry();
                        self.tick_told();
                    }
                    return;
                }
                self.known = Some(snapshot.fingerprint);
                let view = snapshot.doc.oauth().ok().flatten();
                let key = view.as_ref().map(OAuthView::own_fields_key);
                let same_login = key.is_some() && key == self.login_key;
                // The login the server refused: the same own fields, or (only its expiry
                // rewritten) the same refresh token that the lock file records as refused.
                let refused = self.refused.as_ref().is_some_and(|(k, _)| key == Some(*k))
                    || view
                        .as_ref()
                        .and_then(|v| v.usable_refresh_token())
                        .is_some_and(|t| {
                            self.store
                                .peek_records()
                                .refused
                                .is_some_and(|r| r.refuses(t))
                        });
                self.login_key = key;
                if let Some(v) = &view
                    && !v.is_logged_out()
                {
                    // A new usable login shows the login works: it ends a run of failures (told
                    // or not) and a login-needed episode. The same login read again (after a
                    // malformed spell, say), or the one the server refused, shows nothing.
                    if !same_login && !refused && self.told.works() {
                        let place = self.store.place();
                        self.tell(
                            UserEvent::Recovered,
                            format!("{place}: a usable login is back"),
                            None,
                        );
                    }
                    // The login's own end is not one of its own fields: a change of it alone
                    // (or a SIGHUP) is still news for the warning and login-expiring.
                    self.login_expires_at = v.refresh_token_expires_at;
                    self.check_login_expiry();
                    self.tick_told();
                }
                // Only the login's own fields re-arm: a refused token is not sent again, and a
                // backoff (or the retried save of tokens in hand) is not cut short, because an
                // MCP token or a setting changed.
                let settled = matches!(
                    self.state,
                    State::Waiting(Waiting::LoginNeeded(_) | Waiting::Misconfigured(_))
                        | State::BackingOff { .. }
                        | State::Scheduled { .. }
                );
                if same_login && settled {
                    return;
                }
                let place = self.store.place();
                match view {
                    Some(v) if !v.is_logged_out() => {
                        self.seen_login = true;
                        // The login the server refused, back unchanged after the store was
                        // malformed or gone for a while: still refused, never sent again.
                        match (&self.refused, refused) {
                            (Some((_, why)), true) => return self.wait_for(why.clone()),
                            _ => self.refused = None,
                        }
                        self.said = None;
                        self.expires_at = v.expires_at;
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
                // Whatever comes back (even these very bytes: a backup restored, a file moved
                // away and back) is read as a new login.
                self.known = None;
                self.login_key = None;
                self.removed();
                self.wait_for(Waiting::Missing);
            }
            Err(e @ StoreError::Malformed { .. }) => {
                self.malformed_tries = 0;
                self.known = None;
                self.wait_for(Waiting::Malformed(e.to_string()));
            }
            Err(e) => {
                // The same bytes readable again (a permission fixed) must re-arm the schedule.
                self.known = None;
                self.wait_for(Waiting::Unreadable(e.to_string()));
            }
        }
    }

    /// Whether this daemon should record itself as the login's keeper (again): at a read,
    /// when the directory of the lock file is there (nothing is made for a login whose
    /// directory does not exist), and the record is not there, or went away (the lock file or
    /// the whole directory removed and made again: a reset of Claude Code).
    fn check_registration(&mut self) {
        let lock = self.store.lock_path();
        if !lock.parent().is_some_and(std::path::Path::is_dir) {
            return;
        }
        if self.registered {
            let me = std::process::id();
            let listed = self
                .store
                .peek_records()
                .keepers
                .iter()
                .any(|k| k.pid == me);
            if listed {
                return;
            }
            self.registered = false;
        }
        self.want_register = true;
    }

    pub(super) fn wait_for(&mut self, why: Waiting) {
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

    pub(super) fn say_once(&mut self, level: tracing::Level, text: String) {
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

    /// Re-reads the store after an attempt and schedules from it, whatever was known before
    /// (the attempt has just looked at it under the lock).
    pub(super) fn rearm_from_store(&mut self) {
        self.login_key = None;
        self.state = State::Unknown;
        self.reread(true);
    }

    /// After an attempt: reads the store to record the login as it is now (its own fields, its
    /// end) without changing the schedule the attempt set; a store that changed meanwhile is
    /// read as news instead.
    pub(super) fn note_store(&mut self) {
        self.want_read(ReadHow {
            force: false,
            note: true,
        });
    }
}
