//! Stopping with new tokens in hand: the old refresh token is spent, so these are the login.
//! An answer already in gets the 10 s of "never waste" for its save (a `security` write that
//! hangs is cut there), then the daemon exits 1 saying the login may be lost.

use std::time::{Duration, Instant};

use tokend_core::refresh::{Mode, Refresher};
use tokend_core::schedule::{Backoff, random_unit};
use tracing::Instrument;

use super::{Clock, Daemon};
use crate::exit;

/// On SIGTERM with new tokens not yet saved, saving is retried for this long before giving up.
pub(super) const UNSAVED_GRACE: Duration = Duration::from_secs(10);

impl<C: Clock> Daemon<C> {
    /// Stopping: an attempt whose answer came more than [`UNSAVED_GRACE`] ago and is still
    /// saving (a `security` write that hangs) is given up; its tokens stay in hand for the
    /// last tries of [`Daemon::save_before_exit`], within the same deadline.
    pub(super) fn give_up_stuck_saves(&mut self) {
        let now = Instant::now();
        let mut grace = self.grace_until;
        self.in_flight.retain(|f| match f.meta.answered.get() {
            Some(at) if now >= at + UNSAVED_GRACE => {
                grace = Some(grace.map_or(at + UNSAVED_GRACE, |g| g.min(at + UNSAVED_GRACE)));
                false
            }
            _ => true,
        });
        self.grace_until = grace;
    }

    /// Stopping with new tokens in hand: the old refresh token is spent, so these are the
    /// login. Their save is retried until `deadline` (a save that hangs in `security` is cut
    /// there); giving up is an error the user must see.
    pub(super) async fn save_before_exit(&mut self, deadline: Instant) -> u8 {
        let unsaved = |d: &Self| -> Vec<usize> {
            (0..d.logins.len())
                .filter(|&i| d.logins[i].refresher.borrow().has_unsaved_grant())
                .collect()
        };
        if unsaved(self).is_empty() {
            return exit::OK;
        }
        tracing::warn!("new tokens are not saved yet; retrying the save before stopping");
        let mut retries = 0;
        loop {
            for i in unsaved(self) {
                let login = &self.logins[i];
                // Taken out for the attempt and put back after: nothing else runs while stopping,
                // and this attempt is awaited to its end, never dropped half-way.
                let mut refresher = login.refresher.replace(Refresher::new());
                let mut mode = Mode::IfDue;
                let attempt = refresher
                    .attempt(
                        &login.store,
                        &login.policy,
                        &mut mode,
                        Some(deadline),
                        &tokend_core::refresh::unobserved,
                    )
                    .instrument(self.spans[i].clone());
                // Cut at the deadline: the tokens stay in hand (they are taken out of the
                // refresher only once saved), and the error below says the login may be lost.
                let _ = tokio::time::timeout_at(deadline.into(), attempt).await;
                *login.refresher.borrow_mut() = refresher;
            }
            if unsaved(self).is_empty() {
                return exit::OK;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match Backoff::SAVE.delay_within(retries, random_unit(), None, left) {
                Some(d) => tokio::time::sleep(d).await,
                None => break,
            }
            retries += 1;
        }
        for i in unsaved(self) {
            tracing::error!(
                "stopping with new tokens that could not be saved to {}: the old refresh token \
                 is spent, so the login may be lost; if Claude Code reports that you are logged \
                 out, run `claude-tokend login`",
                self.logins[i].store.place()
            );
        }
        exit::FAILURE
    }
}
