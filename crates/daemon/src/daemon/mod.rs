//! The daemon: one event loop on a current-thread runtime that keeps the file fresh.
//!
//! Events form a closed set ([`Event`]): the file changed, the timer fired, or a signal came.
//! Each has one handler. The loop sleeps until the earliest of: the refresh due time, a pending
//! re-read, the watchdog, and [`plan::MAX_SLEEP`]; idle, it uses no CPU between wake-ups and
//! holds no HTTP client. Every refresh goes through `tokend_core::refresh::attempt`, the same
//! sequence `--once` uses.

mod notify_systemd;
pub mod plan;
mod watch;

use std::cell::Cell;
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant, SystemTime};

use tokend_core::oauth::TokenClient;
use tokend_core::refresh::{self, Mode, Outcome, Policy, RefreshError, Step};
use tokend_core::schedule::{Backoff, due_at, epoch_millis, random_unit};
use tokend_core::store::{Store, StoreError};
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::mpsc::UnboundedReceiver;

use crate::commands::{local_time, when};
use notify_systemd::Notifier;
use plan::{Next, State, Waiting};
use watch::{Ping, Watch};

/// The wall clock, behind one seam so tests can jump it (a suspended laptop) without sleeping.
pub trait Clock {
    /// Unix epoch milliseconds.
    fn now(&self) -> i64;
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> i64 {
        epoch_millis(SystemTime::now())
    }
}

/// Bursts of events (a writer's create + write + rename) are coalesced for this long.
const COALESCE: Duration = Duration::from_millis(150);
/// A file that does not parse is re-read this often, this many times, before it counts as
/// malformed: a writer may be half-way through it.
const MALFORMED_RETRY: Duration = Duration::from_millis(250);
const MALFORMED_TRIES: u32 = 5;
/// From this long before `refreshTokenExpiresAt`, the daemon warns that a new login is needed.
const LOGIN_EXPIRY_WARNING_MS: i64 = 3 * 24 * 3600 * 1000;

/// Sleeps until `at`, or forever when there is nothing to wait for.
async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// The signals the daemon handles, created once the runtime is up.
pub struct Signals {
    term: Signal,
    int: Signal,
    hup: Signal,
    usr1: Signal,
}

impl Signals {
    pub fn new() -> std::io::Result<Self> {
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
            usr1: signal(SignalKind::user_defined1())?,
        })
    }
}

/// The closed set of things the loop reacts to.
#[derive(Debug, PartialEq, Eq)]
enum Event {
    FileChanged(Ping),
    Timer,
    Reload,
    /// The refresh is due (from the plan, not the outside).
    RefreshNow,
    /// SIGUSR1: refresh now even if not due.
    ForceRefresh,
    Shutdown(&'static str),
}

/// Whether the loop goes on.
#[derive(Debug, PartialEq, Eq)]
enum Flow {
    Continue,
    Stop,
}

/// A cheap identity of the file for the once-a-minute check that catches changes a watch
/// missed (network filesystems, an overflowed queue).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime_ns: i128,
}

fn stamp(store: &Store) -> Option<Stamp> {
    let m = std::fs::metadata(store.target()).ok()?;
    Some(Stamp {
        dev: m.dev(),
        ino: m.ino(),
        len: m.len(),
        mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
    })
}

pub struct Daemon<C: Clock> {
    store: Store,
    policy: Policy,
    clock: C,
    state: State,
    /// Fingerprint of the bytes last read or written: an event for a file whose bytes did not
    /// change (our own write, a touch) is not news.
    known: Option<u64>,
    /// File identity at the last read, for the periodic check.
    last_stamp: Option<Stamp>,
    /// When a coalesced or retried re-read is due.
    reread_at: Option<Instant>,
    malformed_tries: u32,
    /// Built on the first refresh attempt and dropped after success, so the idle daemon holds
    /// no TLS state and no connection pool.
    client: Option<TokenClient>,
    /// The last "waiting for ..." message logged, so each is logged once.
    said: Option<String>,
    watch: Option<Watch>,
    /// `refreshTokenExpiresAt`: the login itself ends then, whatever is refreshed.
    login_expires_at: Option<i64>,
    /// The login expiry already warned about, so the warning is logged once per login.
    warned_login_expiry: Option<i64>,
    /// The watcher's pings. `None` while no watch is armed.
    pings: Option<UnboundedReceiver<Ping>>,
    notifier: Notifier,
}

impl<C: Clock> Daemon<C> {
    pub fn new(store: Store, policy: Policy, clock: C) -> Self {
        Daemon {
            store,
            policy,
            clock,
            state: State::Unknown,
            known: None,
            last_stamp: None,
            reread_at: None,
            malformed_tries: 0,
            client: None,
            said: None,
            watch: None,
            login_expires_at: None,
            warned_login_expiry: None,
            pings: None,
            notifier: Notifier::from_env(),
        }
    }

    /// Runs until SIGTERM or SIGINT. Returns normally: a clean stop is exit 0.
    pub async fn run(mut self, mut signals: Signals) {
        tracing::info!(
            "claude-tokend {} started; credentials at {}",
            env!("CARGO_PKG_VERSION"),
            self.store.path().display()
        );
        self.arm_watch();
        self.reread(true);
        self.notifier.ready();
        loop {
            let event = match self.next_step() {
                Next::RefreshNow => Event::RefreshNow,
                Next::Sleep(sleep) => self.wait(sleep, &mut signals).await,
            };
            let flow = match event {
                Event::FileChanged(ping) => self.on_file_changed(ping),
                Event::Timer => self.on_timer(),
                Event::Reload => self.on_reload(),
                Event::RefreshNow => self.on_refresh(Mode::IfDue, &mut signals).await,
                Event::ForceRefresh => {
                    tracing::info!("SIGUSR1: refreshing now");
                    self.on_refresh(Mode::Force { expected: None }, &mut signals)
                        .await
                }
                Event::Shutdown(why) => {
                    tracing::info!("{why}: stopping");
                    Flow::Stop
                }
            };
            self.publish_status();
            if flow == Flow::Stop {
                break;
            }
        }
        self.notifier.stopping();
    }

    /// What to do next, by the wall clock (read through the seam).
    fn next_step(&self) -> Next {
        plan::next(&self.state, self.clock.now(), self.policy.lead)
    }

    /// Sleeps until the next deadline or an event, whichever is first.
    async fn wait(&mut self, sleep: Duration, signals: &mut Signals) -> Event {
        let now = Instant::now();
        let mut until = now + sleep;
        if let Some(at) = self.reread_at {
            until = until.min(at);
        }
        if let Some(at) = self.notifier.next_ping() {
            until = until.min(at);
        }
        let pings = self.pings.as_mut();
        tokio::select! {
            _ = tokio::time::sleep_until(until.into()) => Event::Timer,
            Some(ping) = async { match pings { Some(rx) => rx.recv().await, None => std::future::pending().await } } => {
                Event::FileChanged(ping)
            }
            _ = signals.term.recv() => Event::Shutdown("SIGTERM"),
            _ = signals.int.recv() => Event::Shutdown("SIGINT"),
            _ = signals.hup.recv() => Event::Reload,
            _ = signals.usr1.recv() => Event::ForceRefresh,
        }
    }

    fn on_file_changed(&mut self, ping: Ping) -> Flow {
        if ping == Ping::Rearm {
            self.arm_watch();
        }
        // Coalesce: the first ping of a burst sets the re-read time; later ones ride along.
        if self.reread_at.is_none() {
            self.reread_at = Some(Instant::now() + COALESCE);
        }
        Flow::Continue
    }

    fn on_timer(&mut self) -> Flow {
        self.check_login_expiry();
        let now = Instant::now();
        self.notifier.ping_if_due(now);
        if self.reread_at.is_some_and(|at| now >= at) {
            self.reread_at = None;
            self.reread(false);
        } else if stamp(&self.store) != self.last_stamp {
            // A change the watch did not report.
            self.reread(false);
        }
        if self
            .watch
            .as_ref()
            .is_none_or(|w| !w.complete || !w.still_valid())
        {
            self.arm_watch();
        }
        Flow::Continue
    }

    fn on_reload(&mut self) -> Flow {
        tracing::info!("SIGHUP: re-reading {}", self.store.path().display());
        self.said = None;
        self.arm_watch();
        self.reread(true);
        Flow::Continue
    }

    /// (Re)arms the directory watch. A failure is logged once; the minute timer tries again.
    fn arm_watch(&mut self) {
        match Watch::arm(&self.store) {
            Ok((watch, rx)) => {
                let dirs: Vec<_> = watch.dirs().map(|d| d.display().to_string()).collect();
                if watch.complete {
                    tracing::info!("watching {}", dirs.join(" and "));
                } else {
                    tracing::info!(
                        "waiting for the directory of {} to appear (watching {})",
                        self.store.path().display(),
                        dirs.join(" and ")
                    );
                }
                self.watch = Some(watch);
                self.pings = Some(rx);
            }
            Err(e) => {
                self.say_once(
                    tracing::Level::WARN,
                    format!(
                        "cannot watch for changes ({e}); checking the file every minute instead"
                    ),
                );
                self.watch = None;
                self.pings = None;
            }
        }
    }

    /// Reads the file and updates the state from it. `force`: even if the bytes are the ones
    /// already known (startup, SIGHUP).
    fn reread(&mut self, force: bool) {
        self.last_stamp = stamp(&self.store);
        // A claude-tokend that crashed mid-refresh may have left lock directories that make
        // Claude Code wait; clear them when the lock is free (never waiting for it here).
        if let Ok(Some(lock)) = self.store.try_lock() {
            tokend_core::refresh::tidy(&self.store, &lock);
        }
        match self.store.read() {
            Ok(snapshot) => {
                self.malformed_tries = 0;
                if !force && Some(snapshot.fingerprint) == self.known {
                    return;
                }
                self.known = Some(snapshot.fingerprint);
                let view = snapshot.doc.oauth().ok().flatten();
                match view {
                    Some(v) if !v.is_logged_out() => {
                        self.said = None;
                        self.login_expires_at = v.refresh_token_expires_at;
                        self.check_login_expiry();
                        self.state = State::Scheduled {
                            expires_at: v.expires_at,
                        };
                        self.log_schedule(v.expires_at);
                    }
                    _ => self.wait_for(Waiting::LoggedOut),
                }
            }
            Err(e) if e.may_be_mid_write() && self.malformed_tries + 1 < MALFORMED_TRIES => {
                self.malformed_tries += 1;
                self.reread_at = Some(Instant::now() + MALFORMED_RETRY);
            }
            Err(StoreError::Missing { .. }) => self.wait_for(Waiting::Missing),
            Err(e @ StoreError::Malformed { .. }) => {
                self.malformed_tries = 0;
                self.known = None;
                self.wait_for(Waiting::Malformed(e.to_string()));
            }
            Err(e) => self.wait_for(Waiting::Unreadable(e.to_string())),
        }
    }

    fn wait_for(&mut self, why: Waiting) {
        let path = self.store.path().display().to_string();
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

    fn log_schedule(&self, expires_at: Option<i64>) {
        match expires_at {
            Some(at) => {
                let due = due_at(at, self.policy.lead);
                if due <= self.clock.now() {
                    tracing::info!("token expires {}; refreshing now", when(at));
                } else {
                    tracing::info!(
                        "token expires {}; next refresh at {}",
                        when(at),
                        local_time(due)
                    );
                }
            }
            None => tracing::info!("token has no expiry time; refreshing now"),
        }
    }

    /// One refresh attempt, racing shutdown signals: a shutdown before the request went out
    /// cancels it (dropping the attempt removes its temp file and releases the lock); after,
    /// the answer is waited for and saved first, because the server may already have spent
    /// the old refresh token.
    async fn on_refresh(&mut self, mut mode: Mode, signals: &mut Signals) -> Flow {
        let sent = Cell::new(false);
        let observe = |step: Step| {
            if step == Step::RequestSent {
                sent.set(true);
            }
        };
        let mut stop_after = None;
        let result = {
            let attempt = refresh::attempt(
                &self.store,
                &self.policy,
                &mut mode,
                &mut self.client,
                None,
                &observe,
            );
            tokio::pin!(attempt);
            loop {
                // An attempt may wait a long time for another refresher's lock: keep feeding
                // the watchdog meanwhile, so systemd does not kill a healthy daemon.
                let ping_at = self.notifier.next_ping();
                tokio::select! {
                    r = &mut attempt => break r,
                    _ = signals.term.recv(), if stop_after.is_none() => stop_after = Some("SIGTERM"),
                    _ = signals.int.recv(), if stop_after.is_none() => stop_after = Some("SIGINT"),
                    _ = sleep_until_opt(ping_at) => {
                        self.notifier.ping_if_due(Instant::now());
                        continue;
                    }
                }
                if let Some(why) = stop_after {
                    if !sent.get() {
                        tracing::info!("{why}: stopping before the request was sent");
                        return Flow::Stop;
                    }
                    tracing::info!(
                        "{why}: waiting for the refresh request in flight, to save its answer"
                    );
                }
            }
        };
        self.handle_result(result);
        match stop_after {
            Some(why) => {
                tracing::info!("{why}: stopping");
                Flow::Stop
            }
            None => Flow::Continue,
        }
    }

    fn handle_result(&mut self, result: Result<Outcome, RefreshError>) {
        match result {
            Ok(Outcome::Refreshed {
                expires_at,
                fingerprint,
                ..
            }) => {
                self.client = None;
                self.known = Some(fingerprint);
                if let Ok(Some(v)) = self.store.read().map(|s| s.doc.oauth().ok().flatten()) {
                    self.login_expires_at = v.refresh_token_expires_at;
                }
                self.last_stamp = stamp(&self.store);
                self.said = None;
                self.state = State::Scheduled {
                    expires_at: Some(expires_at),
                };
                self.log_schedule(Some(expires_at));
            }
            Ok(Outcome::Fresh { .. } | Outcome::Adopted { .. }) => {
                self.client = None;
                self.reread(true);
            }
            Err(
                e @ (RefreshError::LoginNeeded { .. }
                | RefreshError::Rejected { .. }
                | RefreshError::Endpoint { .. }),
            ) => {
                self.client = None;
                // Remember the file as it is now: only a change to it (a new login) ends the wait.
                if let Ok(s) = self.store.read() {
                    self.known = Some(s.fingerprint);
                }
                self.last_stamp = stamp(&self.store);
                let why = match e {
                    RefreshError::Endpoint { .. } => Waiting::Misconfigured(e.to_string()),
                    _ => Waiting::LoginNeeded(e.to_string()),
                };
                self.wait_for(why);
            }
            Err(RefreshError::Store(StoreError::Missing { .. })) => self.wait_for(Waiting::Missing),
            Err(RefreshError::Store(e @ StoreError::Malformed { .. })) => {
                self.known = None;
                self.wait_for(Waiting::Malformed(e.to_string()));
            }
            Err(e) => self.back_off(&e),
        }
    }

    fn back_off(&mut self, e: &RefreshError) {
        let retries = match &self.state {
            State::BackingOff { retries, .. } => retries + 1,
            _ => 0,
        };
        let delay = Backoff::STANDARD.delay(retries, random_unit(), e.retry_after());
        let until = self.clock.now() + i64::try_from(delay.as_millis()).unwrap_or(i64::MAX / 2);
        tracing::warn!("backing off for {:.1}s because {e}", delay.as_secs_f64());
        self.state = State::BackingOff {
            until,
            retries,
            reason: e.to_string(),
        };
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

    fn publish_status(&mut self) {
        let text = match &self.state {
            State::Unknown => "starting".to_owned(),
            State::Scheduled {
                expires_at: Some(at),
            } => format!(
                "next refresh at {}; token expires {}",
                local_time(due_at(*at, self.policy.lead)),
                local_time(*at)
            ),
            State::Scheduled { expires_at: None } => "refreshing".to_owned(),
            State::BackingOff { until, reason, .. } => {
                format!("retrying at {}; last error: {reason}", local_time(*until))
            }
            State::Waiting(Waiting::Missing) => {
                format!("waiting for {}", self.store.path().display())
            }
            State::Waiting(Waiting::LoggedOut) => "waiting for a login".to_owned(),
            State::Waiting(Waiting::LoginNeeded(e)) => format!("login needed: {e}"),
            State::Waiting(Waiting::Misconfigured(e)) => format!("setting needs fixing: {e}"),
            State::Waiting(Waiting::Malformed(e) | Waiting::Unreadable(e)) => e.clone(),
        };
        let text = match self.login_ending() {
            Some(at) => format!("{text}; log in again before {}", local_time(at)),
            None => text,
        };
        self.notifier.status(&text);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::rc::Rc;
    use tokend_core::oauth::ClientConfig;
    use tokend_core::settings::parse_endpoint_url;

    /// A wall clock the test moves by hand.
    #[derive(Clone)]
    struct FakeClock(Rc<Cell<i64>>);

    impl Clock for FakeClock {
        fn now(&self) -> i64 {
            self.0.get()
        }
    }

    fn daemon(clock: FakeClock) -> Daemon<FakeClock> {
        let policy = Policy {
            lead: Duration::from_secs(15 * 60),
            client_id: "test-client".into(),
            client: ClientConfig {
                token_url: parse_endpoint_url("http://127.0.0.1:9/token").unwrap(),
                user_agent: "test".into(),
            },
        };
        Daemon::new(Store::new("/nonexistent/.credentials.json"), policy, clock)
    }

    #[test]
    fn a_suspend_past_the_deadline_refreshes_on_wake() {
        const HOUR: i64 = 3_600_000;
        let start = 1_800_000_000_000;
        let clock = FakeClock(Rc::new(Cell::new(start)));
        let mut d = daemon(clock.clone());
        d.state = State::Scheduled {
            expires_at: Some(start + 8 * HOUR),
        };
        // Hours before the deadline, the loop sleeps no longer than a minute at a time.
        assert_eq!(d.next_step(), Next::Sleep(plan::MAX_SLEEP));
        // The laptop sleeps for nine hours; on waking, the first look at the clock says "now".
        clock.0.set(start + 9 * HOUR);
        assert_eq!(d.next_step(), Next::RefreshNow);
        // A clock set backwards moves the deadline away again rather than firing early.
        clock.0.set(start - 24 * HOUR);
        assert_eq!(d.next_step(), Next::Sleep(plan::MAX_SLEEP));
    }

    #[test]
    fn the_login_expiry_warning_starts_three_days_before() {
        const DAY: i64 = 86_400_000;
        let clock = FakeClock(Rc::new(Cell::new(100 * DAY)));
        let mut d = daemon(clock.clone());
        d.login_expires_at = Some(104 * DAY);
        assert_eq!(d.login_ending(), None, "four days ahead: quiet");
        clock.0.set(101 * DAY);
        assert_eq!(d.login_ending(), Some(104 * DAY), "three days ahead: warn");
        d.check_login_expiry();
        assert_eq!(d.warned_login_expiry, Some(104 * DAY));
        clock.0.set(105 * DAY);
        assert_eq!(d.login_ending(), Some(104 * DAY), "past it: still says so");
    }

    #[test]
    fn backoff_grows_and_honours_retry_after() {
        let clock = FakeClock(Rc::new(Cell::new(1_000_000)));
        let mut d = daemon(clock.clone());
        let transient = |ra: Option<u64>| RefreshError::Transient {
            error: tokend_core::oauth::OAuthError::Transient {
                reason: "HTTP 503".into(),
                retry_after: ra.map(Duration::from_secs),
            },
            attempts: 1,
        };
        d.back_off(&transient(Some(30)));
        let State::BackingOff { until, retries, .. } = d.state.clone() else {
            panic!("expected backoff, got {:?}", d.state)
        };
        assert_eq!(retries, 0);
        assert!(until >= 1_000_000 + 30_000, "Retry-After is a minimum");
        for _ in 0..12 {
            d.back_off(&transient(None));
        }
        let State::BackingOff { until, retries, .. } = d.state.clone() else {
            panic!("expected backoff")
        };
        assert_eq!(retries, 12);
        assert!(until <= 1_000_000 + 300_000, "capped at 5 minutes");
        assert_eq!(
            d.next_step(),
            Next::Sleep(plan::MAX_SLEEP.min(Duration::from_millis((until - 1_000_000) as u64)))
        );
    }
}
