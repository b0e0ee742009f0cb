//! Telling the user about one login: the notices the telling rules (`told.rs`) say are due,
//! with their messages, and the log warning that the login itself ends soon.

use std::time::Instant;

use super::LoginState;
use crate::daemon::Clock;
use crate::daemon::notify_user::{Notice, UserEvent};
use crate::daemon::plan::State;
use crate::daemon::told::Need;
use crate::show::when;

/// From this long before `refreshTokenExpiresAt`, the daemon warns that a new login is needed.
const LOGIN_EXPIRY_WARNING_MS: i64 = 3 * 24 * 3600 * 1000;

impl<C: Clock> LoginState<C> {
    /// `CLAUDE_TOKEND_LOGIN`: the credentials path as located, or `keychain:<service>`.
    pub(super) fn login_id(&self) -> String {
        crate::daemon::notify_user::login_id(&self.store)
    }

    pub(super) fn tell(&mut self, event: UserEvent, message: String, deadline: Option<i64>) {
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
    pub(super) fn tick_told(&mut self) {
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
    pub(in crate::daemon) fn next_tell_at(&self) -> Option<Instant> {
        self.told.next_at()
    }

    pub(super) fn failure_reason(&self) -> String {
        match &self.state {
            State::BackingOff { reason, .. } => reason.clone(),
            _ => "temporary failures".to_owned(),
        }
    }

    /// The login (or its whole store) is gone: a logout, by anyone. Told once, and only when
    /// there was a login to lose.
    pub(super) fn removed(&mut self) {
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

    /// The login's end, when it is within [`LOGIN_EXPIRY_WARNING_MS`].
    pub(super) fn login_ending(&self) -> Option<i64> {
        self.login_expires_at
            .filter(|at| at.saturating_sub(self.clock.now()) <= LOGIN_EXPIRY_WARNING_MS)
    }

    /// Warns, once per login, that no refresh can extend it past `refreshTokenExpiresAt`.
    pub(super) fn check_login_expiry(&mut self) {
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
}
