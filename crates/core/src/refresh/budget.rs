//! The one-shot commands' loop (`--once`, `refresh`, `token`): attempts until success, a
//! permanent failure, or the retry budget runs out, with backoff between transient failures
//! and a grant in hand only re-saved (or, for `token` with a stored token that lasts, one
//! request and no retry: see [`Retry`]). It also owns [`RunControl`], what such a run shares
//! with the code that handles its signals: whether dropping the run now could lose the login,
//! and the request to stop.

use std::cell::Cell;
use std::future::Future;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use super::{Mode, Outcome, Policy, RefreshError, Refresher, Step};
use crate::schedule::{Backoff, random_unit};
use crate::seams;
use crate::settings::format_duration;
use crate::store::Store;

/// Waits for other processes' locks of one login end after this long, whatever the retry budget:
/// a fresh Claude Code lock is outwaited to its takeover (60 s untouched), but a holder that
/// keeps its lock alive longer than this is not waited for by a one-shot command.
pub const LOCK_WAIT_LIMIT: Duration = Duration::from_secs(120);

/// Asked to stop with new tokens not saved yet, a run keeps retrying their save this long (the
/// daemon's rule on SIGTERM): the old refresh token is spent, so these tokens are the login.
pub const STOP_SAVE_GRACE: Duration = Duration::from_secs(10);

/// Whether a one-shot run retries after a transient failure with nothing in hand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retry {
    /// With backoff (honouring `Retry-After`) until the budget runs out.
    WithinBudget,
    /// Never: one request at most, and no backoff sleep. For `token` while the stored access
    /// token still lasts: it prints that token at once rather than keep a status bar (run
    /// under `timeout 2`) waiting past its end. Waits for locks are as long as ever, and new
    /// tokens in hand are still re-saved within the budget (the old refresh token is spent).
    Never,
}

/// What a one-shot run (a refresh, or a login's exchange) shares with whoever handles its
/// signals. Single-threaded: the run and the handler are polled by one task, so plain cells.
#[derive(Default)]
pub struct RunControl {
    /// From just before a request goes out until its answer is settled (saved, or known to
    /// carry nothing to save): the server may already have spent the old refresh token (or the
    /// authorization code), so dropping the run now could lose the login.
    at_stake: Cell<bool>,
    /// The caller asked the run to stop: no new request, a grant in hand saved within
    /// [`STOP_SAVE_GRACE`], a login's profile lookup skipped.
    stopping: Cell<bool>,
    /// The one task waiting in [`stopped`](Self::stopped), woken by [`stop`](Self::stop).
    waker: Cell<Option<Waker>>,
}

impl RunControl {
    pub fn new() -> Self {
        Self::default()
    }

    /// True while dropping the run could lose the login (see the field). False: it may be
    /// dropped, and its locks and temp file go with it.
    pub fn at_stake(&self) -> bool {
        self.at_stake.get()
    }

    /// Asks the run to stop as soon as nothing is at stake.
    pub fn stop(&self) {
        self.stopping.set(true);
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
    }

    pub fn is_stopping(&self) -> bool {
        self.stopping.get()
    }

    pub(crate) fn set_at_stake(&self, at_stake: bool) {
        self.at_stake.set(at_stake);
    }

    /// The observer an attempt reports to: from [`Step::RequestSent`] on, its answer is at
    /// stake.
    pub(crate) fn observe(&self, step: Step) {
        if step == Step::RequestSent {
            self.at_stake.set(true);
        }
    }

    /// Resolves once [`stop`](Self::stop) is called (at once if it was). One waiter at a time:
    /// the run itself.
    pub(crate) fn stopped(&self) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(move |cx| {
            if self.stopping.get() {
                Poll::Ready(())
            } else {
                self.waker.set(Some(cx.waker().clone()));
                Poll::Pending
            }
        })
    }
}

/// The one-shot commands' loop: attempts until success, a permanent failure, or `budget` runs
/// out (then the last transient error, which the CLI reports as exit 75). New tokens that could
/// not be saved are kept and only their save is retried, within the same budget.
pub async fn refresh_with_budget(
    store: &Store,
    policy: &Policy,
    mode: Mode,
    budget: Duration,
) -> Result<Outcome, RefreshError> {
    refresh_controlled(
        store,
        policy,
        mode,
        budget,
        Retry::WithinBudget,
        &RunControl::new(),
    )
    .await
}

/// [`refresh_with_budget`], telling `control` when its answer is at stake and obeying its stop,
/// and retrying transient failures as `retry` says. Once stopping, it sends no new request:
/// after the attempt in progress it returns that attempt's result, unless new tokens are in
/// hand and unsaved; then it retries their save for up to [`STOP_SAVE_GRACE`] (within the
/// budget) and returns `SaveFailed` if that never works.
pub async fn refresh_controlled(
    store: &Store,
    policy: &Policy,
    mut mode: Mode,
    budget: Duration,
    retry: Retry,
    control: &RunControl,
) -> Result<Outcome, RefreshError> {
    let started = Instant::now();
    let deadline = started.checked_add(budget);
    let lock_deadline = started.checked_add(seams::lock_wait_limit(LOCK_WAIT_LIMIT));
    let mut refresher = Refresher::new();
    let mut retries = 0u32;
    // Set when a stop finds new tokens unsaved: their save is retried until then.
    let mut save_until: Option<Instant> = None;
    let observe = |step: Step| control.observe(step);
    // A pause (see `decide`) holds this run back only until it has sent a request itself:
    // from then on its own backoff rules, which honour the server's Retry-After (else the
    // pause its own first failure records would end its retries).
    let mut past_pause: Option<Policy> = None;
    loop {
        let policy = past_pause.as_ref().unwrap_or(policy);
        // Stopping with new tokens in hand, an attempt only re-saves them: its waits for locks
        // end with the grace too.
        let waits_end = match save_until {
            Some(until) => Some(lock_deadline.map_or(until, |d| d.min(until))),
            None => lock_deadline,
        };
        let result = refresher
            .attempt(store, policy, &mut mode, waits_end, &observe)
            .await;
        let in_hand = refresher.has_unsaved_grant();
        control.set_at_stake(in_hand);
        if control.is_stopping() {
            if !in_hand {
                return result;
            }
            save_until.get_or_insert_with(|| grace_end(Instant::now()));
        }
        let now = Instant::now();
        let remaining = [deadline, save_until]
            .into_iter()
            .flatten()
            .map(|d| d.saturating_duration_since(now))
            .min()
            .unwrap_or(Duration::MAX);
        if policy.honour_pause && matches!(result, Err(RefreshError::Transient { .. })) {
            past_pause = Some(Policy {
                honour_pause: false,
                ..policy.clone()
            });
        }
        let (delay, error) = match result {
            Err(RefreshError::Transient { error, .. }) => (
                Backoff::STANDARD.delay_within(
                    retries,
                    random_unit(),
                    error.retry_after(),
                    remaining,
                ),
                RefreshError::Transient {
                    error,
                    attempts: retries + 1,
                },
            ),
            Err(e @ RefreshError::SaveFailed { .. }) => (
                Backoff::SAVE.delay_within(retries, random_unit(), None, remaining),
                e,
            ),
            // With new tokens in hand, a lock not had in time is one more failed save: retried
            // like one, and reported as one (the login may be lost) when time runs out.
            Err(RefreshError::Store(source)) if in_hand => (
                Backoff::SAVE.delay_within(retries, random_unit(), None, remaining),
                RefreshError::SaveFailed { source },
            ),
            // A locked or busy Keychain: like a network error, it may pass.
            Err(RefreshError::Store(e)) if e.is_transient() => (
                Backoff::STANDARD.delay_within(retries, random_unit(), None, remaining),
                RefreshError::Store(e),
            ),
            other => return other,
        };
        retries += 1;
        // One request only: with nothing in hand, the first failure is the answer.
        let delay = delay.filter(|_| retry == Retry::WithinBudget || in_hand);
        let Some(delay) = delay else {
            return Err(match error {
                RefreshError::Transient { error, .. } => RefreshError::Transient {
                    error,
                    attempts: retries,
                },
                e => e,
            });
        };
        tracing::warn!(
            "{error}; retrying in {} (attempt {})",
            format_duration_precise(delay),
            retries + 1
        );
        // A stop during the sleep: with nothing in hand the run ends with the error it has;
        // with new tokens in hand their save is retried at once, under the grace period.
        let stopped = tokio::select! {
            _ = tokio::time::sleep(delay) => false,
            _ = control.stopped(), if save_until.is_none() => true,
        };
        if stopped {
            if !in_hand {
                return Err(error);
            }
            save_until = Some(grace_end(Instant::now()));
        }
    }
}

/// The end of the grace a stop gives new tokens in hand.
fn grace_end(now: Instant) -> Instant {
    now.checked_add(STOP_SAVE_GRACE).unwrap_or(now)
}

/// `0.4s`, `3s`, `2m 5s`: sub-second precision where it matters for short backoffs.
pub(super) fn format_duration_precise(d: Duration) -> String {
    if d < Duration::from_secs(10) {
        format!("{:.1}s", d.as_secs_f64())
    } else {
        format_duration(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::pin::pin;
    use std::task::Context;

    #[test]
    fn a_request_sent_is_at_stake_and_stopping_wakes_the_waiter() {
        let control = RunControl::new();
        assert!(!control.at_stake());
        control.observe(Step::Locked);
        control.observe(Step::TempCreated);
        assert!(
            !control.at_stake(),
            "nothing is at stake before the request"
        );
        control.observe(Step::RequestSent);
        assert!(control.at_stake());
        control.set_at_stake(false);

        let waker = Waker::noop();
        let mut cx = Context::from_waker(waker);
        let mut stopped = pin!(control.stopped());
        assert!(stopped.as_mut().poll(&mut cx).is_pending());
        assert!(!control.is_stopping());
        control.stop();
        assert!(control.is_stopping());
        assert!(stopped.as_mut().poll(&mut cx).is_ready());
    }
}
