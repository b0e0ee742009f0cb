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
    command: Option<String>,
    every: Duration,
    next_check: Instant,
}

impl Keeper {
    /// The keeper of `mirrors` (one list per login, in the logins' order) and `command`.
    pub(super) fn new(mirrors: Vec<Vec<Mirror>>, command: Option<String>) -> Keeper {
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
                        command: command.clone(),
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
                let c = &mut login.command;
                c.busy = false;
                match result {
                    Ok(()) => {
                        if std::mem::take(&mut c.said) {
                            tracing::info!("--mirror-cmd for {login_id} works again");
                        }
                        c.sent = Some(want);
                        c.retry.worked();
                    }
                    Err(why) => {
                        let pause = c.retry.failed(now);
                        if !std::mem::replace(&mut c.said, true) {
                            tracing::warn!(
                                "--mirror-cmd for {login_id} failed: {why}; trying again in \
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
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn login(token: &str) -> Want {
        let mut m = serde_json::Map::new();
        m.insert("accessToken".into(), token.into());
        Want::Login(m)
    }

    fn keeper(mirrors: usize, command: bool) -> Keeper {
        let list = (0..mirrors)
            .map(|i| Mirror::new(PathBuf::from(format!("/m{i}"))))
            .collect();
        Keeper::new(vec![list], command.then(|| "true".to_owned()))
    }

    /// The jobs due now, as (slot or command, the token they carry, replace_unparsable).
    fn due(k: &mut Keeper, now: Instant) -> Vec<(JobKind, Option<String>, bool)> {
        k.due_jobs(now, |_| "login".to_owned())
            .into_iter()
            .map(|(_, job)| {
                let kind = job.kind();
                let (want, replace) = match job {
                    Job::Sync {
                        want,
                        replace_unparsable,
                        ..
                    } => (want, replace_unparsable),
                    Job::Command { want, .. } => (want, false),
                };
                let token = match want {
                    Want::Login(m) => m["accessToken"].as_str().map(str::to_owned),
                    Want::NoLogin => None,
                };
                (kind, token, replace)
            })
            .collect()
    }

    fn synced(k: &mut Keeper, slot: usize, want: &Want, result: Result<Synced, MirrorError>) {
        let done = Done::Sync {
            slot,
            want: want.clone(),
            result,
        };
        k.finished(0, done, "login");
    }

    fn failure() -> Result<Synced, MirrorError> {
        Err(MirrorError {
            dir: PathBuf::from("/m0"),
            stage: "writing",
            source: std::io::Error::other("read-only"),
        })
    }

    #[test]
    fn nothing_is_written_before_the_source_is_read_and_each_change_once() {
        let mut k = keeper(2, false);
        let now = Instant::now();
        assert!(due(&mut k, now).is_empty(), "no read yet: nothing to hold");
        k.want(0, login("a"));
        let jobs = due(&mut k, now);
        assert_eq!(
            jobs,
            [
                (JobKind::Sync(0), Some("a".into()), false),
                (JobKind::Sync(1), Some("a".into()), false)
            ]
        );
        assert!(due(&mut k, now).is_empty(), "busy slots start nothing more");
        synced(
            &mut k,
            0,
            &login("a"),
            Ok(Synced::Written { replaced: None }),
        );
        synced(&mut k, 1, &login("a"), Ok(Synced::Unchanged));
        assert!(due(&mut k, now).is_empty(), "up to date");
        k.want(0, login("a"));
        assert!(
            due(&mut k, now).is_empty(),
            "the same want again is no change"
        );
        k.want(0, Want::NoLogin);
        assert_eq!(due(&mut k, now).len(), 2, "a logout reaches every mirror");
    }

    #[test]
    fn the_check_and_sighup_compare_again_and_a_failure_backs_off_until_the_source_changes() {
        let mut k = keeper(1, false);
        let now = Instant::now();
        k.want(0, login("a"));
        due(&mut k, now);
        synced(&mut k, 0, &login("a"), Ok(Synced::Unchanged));
        k.check_all();
        assert_eq!(due(&mut k, now).len(), 1, "the check looks again");
        synced(&mut k, 0, &login("a"), failure());
        assert!(due(&mut k, Instant::now()).is_empty(), "backing off");
        let wake = k.next_wake().expect("a retry time");
        assert!(wake > now && wake <= Instant::now() + Duration::from_secs(2));
        assert_eq!(due(&mut k, wake).len(), 1, "retried when the pause is over");
        synced(&mut k, 0, &login("a"), failure());
        k.want(0, login("b"));
        assert_eq!(
            due(&mut k, Instant::now()),
            [(JobKind::Sync(0), Some("b".into()), false)],
            "a new token is tried at once, backoff or not"
        );
    }

    #[test]
    fn an_unparsable_file_gets_a_second_look_a_second_later_that_may_replace_it() {
        let mut k = keeper(1, false);
        let now = Instant::now();
        k.want(0, login("a"));
        due(&mut k, now);
        synced(&mut k, 0, &login("a"), Ok(Synced::Unparsable));
        assert!(due(&mut k, Instant::now()).is_empty());
        let later = Instant::now() + UNPARSABLE_PAUSE;
        assert_eq!(
            due(&mut k, later),
            [(JobKind::Sync(0), Some("a".into()), true)]
        );
        synced(
            &mut k,
            0,
            &login("a"),
            Ok(Synced::Written {
                replaced: Some("x"),
            }),
        );
        k.check_all();
        assert_eq!(
            due(&mut k, later),
            [(JobKind::Sync(0), Some("a".into()), false)],
            "the next look is a first look again"
        );
    }

    #[test]
    fn the_command_runs_once_per_document_one_at_a_time_with_the_newest() {
        let mut k = keeper(0, true);
        let now = Instant::now();
        k.want(0, login("a"));
        assert_eq!(
            due(&mut k, now),
            [(JobKind::Command, Some("a".into()), false)]
        );
        k.want(0, login("b"));
        k.want(0, login("c"));
        assert!(due(&mut k, now).is_empty(), "one run at a time");
        let done = Done::Command {
            want: login("a"),
            result: Ok(()),
        };
        k.finished(0, done, "login");
        assert_eq!(
            due(&mut k, now),
            [(JobKind::Command, Some("c".into()), false)],
            "then one more, with the newest document"
        );
        let done = Done::Command {
            want: login("c"),
            result: Err("exit 1".into()),
        };
        k.finished(0, done, "login");
        assert!(
            due(&mut k, Instant::now()).is_empty(),
            "a failure backs off"
        );
        let wake = k.next_wake().expect("a retry time");
        assert_eq!(
            due(&mut k, wake),
            [(JobKind::Command, Some("c".into()), false)]
        );
        let done = Done::Command {
            want: login("c"),
            result: Ok(()),
        };
        k.finished(0, done, "login");
        k.check_all();
        assert!(
            due(&mut k, now).is_empty(),
            "the check never re-runs the command"
        );
        k.want(0, Want::NoLogin);
        assert_eq!(due(&mut k, now), [(JobKind::Command, None, false)]);
    }

    #[test]
    fn a_consumers_login_is_looked_at_again_only_at_the_check_or_a_change_and_a_race_soon() {
        let mut k = keeper(1, false);
        let now = Instant::now();
        k.want(0, login("a"));
        due(&mut k, now);
        synced(&mut k, 0, &login("a"), Ok(Synced::HoldsRefreshToken));
        assert!(
            due(&mut k, now).is_empty(),
            "skipped: no look at once (that spun)"
        );
        assert_eq!(k.next_wake(), None, "and no wake-up for it");
        k.check_all();
        assert_eq!(due(&mut k, now).len(), 1, "the check looks again");
        synced(&mut k, 0, &login("a"), Ok(Synced::HoldsRefreshToken));
        k.want(0, login("b"));
        assert_eq!(due(&mut k, now).len(), 1, "so does a change of the source");
        synced(&mut k, 0, &login("b"), Ok(Synced::Raced));
        assert!(due(&mut k, Instant::now()).is_empty());
        assert_eq!(
            due(&mut k, Instant::now() + UNPARSABLE_PAUSE),
            [(JobKind::Sync(0), Some("b".into()), false)],
            "a race is looked at again a second later"
        );
    }

    #[test]
    fn the_minute_check_rides_the_loops_own_wake_up() {
        let mut k = keeper(1, false);
        k.want(0, login("a"));
        let now = Instant::now();
        due(&mut k, now);
        synced(&mut k, 0, &login("a"), Ok(Synced::Unchanged));
        assert_eq!(k.next_wake(), None, "no wake-up of its own");
        k.on_timer(now + Duration::from_secs(30));
        assert!(due(&mut k, now).is_empty(), "not due half a minute in");
        k.on_timer(now + Duration::from_secs(57));
        assert_eq!(
            due(&mut k, now).len(),
            1,
            "a wake-up near the minute does it"
        );
    }

    #[test]
    fn with_nothing_to_keep_the_loop_is_never_woken() {
        let mut k = keeper(0, false);
        k.want(0, login("a"));
        k.on_timer(Instant::now() + Duration::from_secs(3600));
        assert_eq!(k.next_wake(), None);
        assert!(due(&mut k, Instant::now()).is_empty());
    }
}
