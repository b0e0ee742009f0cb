//! The daemon's side of mirrors (access-only copies) and `--mirror-cmd`: keeping each login's
//! copies in step with what its store was last read to hold. The loop tells this module what
//! each login's mirrors should hold after every read ([`Keeper::want`]); this module decides
//! which writes and command runs to start, and the loop runs them on the blocking pool beside
//! everything else (a slow or hung mirror never delays a refresh, a save or a signal) and hands
//! each result back ([`Keeper::finished`]).
//!
//! Timing: a write starts as soon as what a mirror should hold changes (so within a second of
//! the source's change: the store's read is coalesced for 150 ms), at start, on SIGHUP, and at
//! the once-a-minute check that rewrites a mirror a consumer removed or spoiled. A failed write
//! or command run is retried with the standard backoff and logged once until it works; a new
//! source token is tried at once even during a backoff.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokend_core::mirror::{Mirror, MirrorError, Synced, UNPARSABLE_PAUSE, Want};
use tokend_core::schedule::{Backoff, random_unit};

/// How often every mirror is compared with what it should hold.
fn check_every() -> Duration {
    let minute = Duration::from_secs(60);
    #[cfg(debug_assertions)]
    if let Some(ms) = std::env::var("CLAUDE_TOKEND_TEST_MIRROR_CHECK_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        return Duration::from_millis(ms.max(10));
    }
    minute
}

/// A check due within this long is done at a wake-up that happens anyway, so the minute check
/// rides the loop's own once-a-minute wake-up instead of adding one.
const CHECK_SLACK: Duration = Duration::from_secs(5);

/// A piece of work for the blocking pool.
pub(super) enum Job {
    /// Bring mirror `slot` of the login up to date with `want`.
    Sync {
        slot: usize,
        mirror: Arc<Mirror>,
        want: Want,
        replace_unparsable: bool,
    },
    /// Run `--mirror-cmd` with `want`.
    Command {
        command: String,
        login: String,
        want: Want,
    },
}

/// Which piece of a login's work a job is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum JobKind {
    Sync(usize),
    Command,
}

/// What a job gives back, with what it was started for.
pub(super) enum Done {
    Sync {
        slot: usize,
        want: Want,
        result: Result<Synced, MirrorError>,
    },
    Command {
        want: Want,
        result: Result<(), String>,
    },
}

impl Job {
    pub(super) fn kind(&self) -> JobKind {
        match self {
            Job::Sync { slot, .. } => JobKind::Sync(*slot),
            Job::Command { .. } => JobKind::Command,
        }
    }

    /// Runs the job (blocking: on the pool).
    pub(super) fn run(self) -> Done {
        match self {
            Job::Sync {
                slot,
                mirror,
                want,
                replace_unparsable,
            } => {
                let result = mirror.sync(&want, replace_unparsable);
                Done::Sync { slot, want, result }
            }
            Job::Command {
                command,
                login,
                want,
            } => {
                // The daemon never stops waiting early: a run is on the pool, and the loop
                // does not wait for it when it stops.
                let result = crate::mirror_cmd::run(&command, &login, &want, &mut || false);
                Done::Command { want, result }
            }
        }
    }
}

/// Retrying after failures: when, and how many in a row.
#[derive(Default)]
struct Retry {
    at: Option<Instant>,
    failures: u32,
}

impl Retry {
    fn waiting(&self, now: Instant) -> bool {
        self.at.is_some_and(|at| now < at)
    }

    /// One more failure: the next try after the standard backoff. Returns the pause.
    fn failed(&mut self, now: Instant) -> Duration {
        let pause = Backoff::STANDARD.delay(self.failures, random_unit(), None);
        self.failures = self.failures.saturating_add(1);
        self.at = Some(now + pause);
        pause
    }

    fn worked(&mut self) {
        *self = Retry::default();
    }
}

/// One mirror of a login.
struct Slot {
    mirror: Arc<Mirror>,
    /// What it was last found or made to hold (`None`: not known, or not ours to know).
    holds: Option<Want>,
    busy: bool,
    /// Compare it again even if it is known to hold what it should (the minute check, SIGHUP).
    check: bool,
    /// After an unparsable look: the next one may replace the file.
    replace_unparsable: bool,
    retry: Retry,
    /// The failure last logged, so each is logged once until it works.
    said: Option<String>,
}

/// `--mirror-cmd` for one login.
#[derive(Default)]
struct CommandSlot {
    /// The document of its last successful run.
    sent: Option<Want>,
    busy: bool,
    retry: Retry,
    said: bool,
}

/// One login's mirrors and command.
struct LoginMirrors {
    /// What its mirrors should hold, from the last read of its store (`None`: not read yet, or
    /// the store could not say).
    want: Option<Want>,
    slots: Vec<Slot>,
    command: CommandSlot,
}

/// Every login's mirrors and `--mirror-cmd`.
pub(super) struct Keeper {
    logins: Vec<LoginMirrors>,
    command: Option<crate::mirror_cmd::MirrorCmd>,
    every: Duration,
    next_check: Instant,
}

impl Keeper {
    /// The keeper of `mirrors` (one list per login, in the logins' order) and `command`.
    pub(super) fn new(
        mirrors: Vec<Vec<Mirror>>,
        command: Option<crate::mirror_cmd::MirrorCmd>,
    ) -> Keeper {
        let every = check_every();
        Keeper {
            logins: mirrors
                .into_iter()
                .map(|list| LoginMirrors {
                    want: None,
                    slots: list
                        .into_iter()
                        .map(|m| Slot {
                            mirror: Arc::new(m),
                            holds: None,
                            busy: false,
                            check: false,
                            replace_unparsable: false,
                            retry: Retry::default(),
                            said: None,
                        })
                        .collect(),
                    command: CommandSlot::default(),
                })
                .collect(),
            command,
            every,
            next_check: Instant::now() + every,
        }
    }

    /// Whether there is anything to keep at all (no mirror, no command: the loop pays nothing).
    fn idle(&self) -> bool {
        self.command.is_none() && self.logins.iter().all(|l| l.slots.is_empty())
    }

    /// What login `index`'s mirrors should hold now, after a read of its store. A change ends
    /// any backoff: the new token is tried at once.
    pub(super) fn want(&mut self, index: usize, want: Want) {
        let Some(login) = self.logins.get_mut(index) else {
            return;
        };
        if login.want.as_ref() == Some(&want) {
            return;
        }
        login.want = Some(want);
        for slot in &mut login.slots {
            slot.retry.at = None;
        }
        login.command.retry.at = None;
    }

    /// SIGHUP, or the minute check: compare every mirror with what it should hold.
    pub(super) fn check_all(&mut self) {
        for slot in self.logins.iter_mut().flat_map(|l| &mut l.slots) {
            slot.check = true;
        }
        self.next_check = Instant::now() + self.every;
    }

    /// A wake-up: the minute check, when it is (nearly) due.
    pub(super) fn on_timer(&mut self, now: Instant) {
        if !self.idle() && now + CHECK_SLACK >= self.next_check {
            self.check_all();
        }
    }

    /// The next time this module needs the loop awake for (a retry, the check).
    ///
    /// The minute check adds no wake-up of its own: the loop wakes at least once a minute
    /// anyway (`plan::MAX_SLEEP`), and [`Keeper::on_timer`] does the check at the wake-up
    /// nearest its time. Only a check more frequent than that (the test seam) asks for its own.
    pub(super) fn next_wake(&self) -> Option<Instant> {
        if self.idle() {
            return None;
        }
        let own_check =
            self.every < super::plan::MAX_SLEEP && self.logins.iter().any(|l| !l.slots.is_empty());
        let retries = self.logins.iter().flat_map(|l| {
            l.slots
                .iter()
                .filter(|s| !s.busy)
                .filter_map(|s| s.retry.at)
                .chain(l.command.retry.at.filter(|_| !l.command.busy))
        });
        retries.chain(own_check.then_some(self.next_check)).min()
    }

    /// The jobs to start now, as (login index, job), each marked busy.
    pub(super) fn due_jobs(
        &mut self,
        now: Instant,
        login_id: impl Fn(usize) -> String,
    ) -> Vec<(usize, Job)> {
        let mut jobs = Vec::new();
        for (index, login) in self.logins.iter_mut().enumerate() {
            let Some(want) = &login.want else {
                continue;
            };
            for (slot_index, slot) in login.slots.iter_mut().enumerate() {
                let stale = slot.holds.as_ref() != Some(want);
                if slot.busy || slot.retry.waiting(now) || !(stale || slot.check) {
                    continue;
                }
                slot.busy = true;
                slot.check = false;
                jobs.push((
                    index,
                    Job::Sync {
                        slot: slot_index,
                        mirror: Arc::clone(&slot.mirror),
                        want: want.clone(),
                        replace_unparsable: slot.replace_unparsable,
                    },
                ));
            }
            let cmd = &mut login.command;
            if let Some(command) = &self.command
                && !cmd.busy
                && !cmd.retry.waiting(now)
                && cmd.sent.as_ref() != Some(want)
            {
                cmd.busy = true;
                jobs.push((
                    index,
                    Job::Command {
                        command: command.command.clone(),
                        login: login_id(index),
                        want: want.clone(),
                    },
                ));
            }
        }
        jobs
    }

    /// A job of login `index` finished (or its task died: `None`).
    pub(super) fn finished(&mut self, index: usize, done: Done, login_id: &str) {
        let now = Instant::now();
        let login = &mut self.logins[index];
        match done {
            Done::Sync { slot, want, result } => {
                let s = &mut login.slots[slot];
                s.busy = false;
                let dir = s.mirror.dir().display().to_string();
                match result {
                    Ok(Synced::Unparsable) => {
                        // A consumer may be half-way through writing it: one more look in a
                        // second, which replaces it if it still does not parse.
                        s.replace_unparsable = true;
                        s.check = true;
                        s.retry.at = Some(now + UNPARSABLE_PAUSE);
                    }
                    Ok(Synced::Raced) => {
                        // A consumer wrote it meanwhile: look again in a second.
                        s.check = true;
                        s.retry.at = Some(now + UNPARSABLE_PAUSE);
                    }
                    Ok(Synced::HoldsRefreshToken) => {
                        // Skipped until it is gone: looked at again only at the next check or
                        // when the source changes, never at once (which would spin).
                        s.holds = Some(want);
                        s.replace_unparsable = false;
                        s.retry.worked();
                        let text = s.mirror.holds_refresh_token_text();
                        if s.said.as_ref() != Some(&text) {
                            tracing::warn!("{text}");
                            s.said = Some(text);
                        }
                    }
                    Ok(synced) => {
                        if let Synced::Written {
                            replaced: Some(what),
                        } = synced
                        {
                            tracing::warn!(
                                "mirror {dir}: replaced {what} at .credentials.json with the \
                                 access-only copy"
                            );
                        } else if let Synced::Written { replaced: None } = synced {
                            tracing::info!("mirror {dir}: written");
                        }
                        if s.said.take().is_some() {
                            tracing::info!("mirror {dir}: up to date again");
                        }
                        s.holds = Some(want);
                        s.replace_unparsable = false;
                        s.retry.worked();
                    }
                    Err(e) => {
                        s.holds = None;
                        let pause = s.retry.failed(now);
                        let text = e.to_string();
                        if s.said.as_ref() != Some(&text) {
                            tracing::warn!(
                                "{text}; trying again in {:.1}s (the login itself is not \
                                 affected)",
                                pause.as_secs_f64()
                            );
                            s.said = Some(text);
                        }
                    }
                }
            }
            Done::Command { want, result } => {
                let named = self.command.as_ref().map_or("--mirror-cmd", |c| &c.named);
                let c = &mut login.command;
                c.busy = false;
                match result {
                    Ok(()) => {
                        if std::mem::take(&mut c.said) {
                            tracing::info!("{named} for {login_id} works again");
                        }
                        c.sent = Some(want);
                        c.retry.worked();
                    }
                    Err(why) => {
                        let pause = c.retry.failed(now);
                        if !std::mem::replace(&mut c.said, true) {
                            tracing::warn!(
                                "{named} for {login_id} failed: {why}; trying again in \
                                 {:.1}s, and logging it again only once it works",
                                pause.as_secs_f64()
                            );
                        }
                    }
                }
            }
        }
    }

    /// A job's task died (a panic on the pool): try again later, as after a failure.
    pub(super) fn lost(&mut self, index: usize, kind: JobKind) {
        let now = Instant::now();
        let login = &mut self.logins[index];
        let retry = match kind {
            JobKind::Sync(slot) => {
                login.slots[slot].busy = false;
                &mut login.slots[slot].retry
            }
            JobKind::Command => {
                login.command.busy = false;
                &mut login.command.retry
            }
        };
        retry.failed(now);
        tracing::warn!("a mirror job stopped unexpectedly; trying again later");
    }
}

#[cfg(test)]
mod tests;
