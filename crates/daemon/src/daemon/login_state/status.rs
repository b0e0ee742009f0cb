//! One login's line for `systemctl status` and its short name among several.

use std::time::Instant;

use tokend_core::store::Kind;

use super::LoginState;
use crate::daemon::Clock;
use crate::daemon::plan::{State, Waiting};
use crate::show::local_time;

impl<C: Clock> LoginState<C> {
    /// A short name for this login in a one-line status: its config directory's name, or
    /// `keychain:<service>`.
    pub(in crate::daemon) fn short_name(&self) -> String {
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
    pub(in crate::daemon) fn status_text(&self) -> String {
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
