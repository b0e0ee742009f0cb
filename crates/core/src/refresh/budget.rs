//! The one-shot commands' loop (`--once`, `refresh`, `token`): attempts until success, a
//! permanent failure, or the retry budget runs out, with backoff between transient failures
//! and a grant in hand only re-saved.

use std::time::{Duration, Instant};

use super::{Mode, Outcome, Policy, RefreshError, Refresher, unobserved};
use crate::schedule::{Backoff, random_unit};
use crate::seams;
use crate::settings::format_duration;
use crate::store::Store;

/// Waits for other processes' locks of one login end after this long, whatever the retry budget:
/// a fresh Claude Code lock is outwaited to its takeover (60 s untouched), but a holder that
/// keeps its lock alive longer than this is not waited for by a one-shot command.
pub const LOCK_WAIT_LIMIT: Duration = Duration::from_secs(120);

/// The one-shot commands' loop: attempts until success, a permanent failure, or `budget` runs
/// out (then the last transient error, which the CLI reports as exit 75). New tokens that could
/// not be saved are kept and only their save is retried, within the same budget.
pub async fn refresh_with_budget(
    store: &Store,
    policy: &Policy,
    mut mode: Mode,
    budget: Duration,
) -> Result<Outcome, RefreshError> {
    let started = Instant::now();
    let deadline = started.checked_add(budget);
    let lock_deadline = started.checked_add(seams::lock_wait_limit(LOCK_WAIT_LIMIT));
    let mut refresher = Refresher::new();
    let mut retries = 0u32;
    loop {
        let result = refresher
            .attempt(store, policy, &mut mode, lock_deadline, &unobserved)
            .await;
        let remaining = deadline.map_or(Duration::MAX, |d| {
            d.saturating_duration_since(Instant::now())
        });
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
            // A locked or busy Keychain: like a network error, it may pass.
            Err(RefreshError::Store(e)) if e.is_transient() => (
                Backoff::STANDARD.delay_within(retries, random_unit(), None, remaining),
                RefreshError::Store(e),
            ),
            other => return other,
        };
        retries += 1;
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
        tokio::time::sleep(delay).await;
    }
}

/// `0.4s`, `3s`, `2m 5s`: sub-second precision where it matters for short backoffs.
pub(super) fn format_duration_precise(d: Duration) -> String {
    if d < Duration::from_secs(10) {
        format!("{:.1}s", d.as_secs_f64())
    } else {
        format_duration(d)
    }
}
