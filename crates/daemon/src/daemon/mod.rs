//! The daemon: one event loop on a current-thread runtime that keeps every configured login
//! fresh.
//!
//! Each login is a value ([`LoginState`]) in one list, not a task or a thread: the loop sleeps
//! until the earliest of every login's refresh time or pending re-read, the watchdog, and
//! [`plan::MAX_SLEEP`], and wakes for a closed set of events ([`Event`]): a login's store
//! changed, the timer fired, a signal came, or a refresh attempt finished. Attempts of
//! different logins run side by side as futures the loop polls, so a login waiting for a
//! lock or a slow server never delays another. One file watcher serves all logins. Idle, it
//! uses no CPU between wake-ups and holds no HTTP client. Every refresh goes through
//! `tokend_core::refresh::Refresher::attempt`, the same sequence `--once` uses.
//!
//! Nothing that can block runs on the loop: a read of a login's store, and asking `security`
//! where a Keychain item lives, are operations the loop polls like attempts (a file answers at
//! once and is applied at once; a `security` run goes to the blocking pool and is applied when
//! it finishes), so a hung keychain delays only its own login, and a signal is always heard.

mod login_state;
mod notify_systemd;
pub mod notify_user;
pub mod plan;
mod told;
mod trim;
mod watch;

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::rc::Rc;
use std::task::Poll;
use std::time::{Duration, Instant, SystemTime};

use tokend_core::refresh::{Floor, Mode, Outcome, Policy, RefreshError, Refresher, Step};
use tokend_core::schedule::{Backoff, epoch_millis, random_unit};
use tokend_core::store::{Snapshot, Store, StoreError};
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::mpsc::UnboundedReceiver;
use tracing::Instrument;

use crate::exit;
use login_state::{LoginState, ReadHow};
use notify_systemd::Notifier;
use notify_user::UserNotifier;
use plan::Next;
use watch::{Ping, Watch};

/// The wall clock, behind one seam so tests can jump it (a suspended laptop) without sleeping.
/// Each login holds a copy.
pub trait Clock: Clone {
    /// Unix epoch milliseconds.
    fn now(&self) -> i64;
}

#[derive(Clone)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> i64 {
        epoch_millis(SystemTime::now())
    }
}

/// On SIGTERM with new tokens not yet saved, saving is retried for this long before giving up.
const UNSAVED_GRACE: Duration = Duration::from_secs(10);

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
enum Event {
    FileChanged(Ping),
    Timer,
    Reload,
    /// SIGUSR1: refresh every login now even if not due (the 60 s floor still holds).
    ForceRefresh,
    /// A login's attempt finished.
    Done {
        index: usize,
        forced: bool,
        result: Result<Outcome, RefreshError>,
    },
    /// A read of a login's store that went off the loop finished.
    Read {
        index: usize,
        how: ReadHow,
        epoch: u64,
        result: Result<Snapshot, StoreError>,
    },
    /// `security` said where a Keychain login's item lives.
    Located {
        index: usize,
        files: Option<Vec<PathBuf>>,
    },
    Shutdown(&'static str),
}

/// One operation of login `index` the loop polls beside everything else: an attempt, a read,
/// asking where an item lives. `meta` is what its answer needs besides its output.
struct Op<T, M> {
    index: usize,
    meta: M,
    run: Pin<Box<dyn Future<Output = T>>>,
}

/// What an attempt carries. It shares the login's [`Refresher`] (so new tokens in hand outlive
/// a cancelled attempt), knows whether its request went out (after which it is never cancelled:
/// the answer must be saved) and when the answer came (from then on its save has the 10 s of
/// "never waste" once the daemon is stopping).
struct Attempt {
    forced: bool,
    sent: Rc<Cell<bool>>,
    answered: Rc<Cell<Option<Instant>>>,
}

type InFlight = Op<Result<Outcome, RefreshError>, Attempt>;

/// Waits for the first operation of `ops` to finish and takes it out of the list.
async fn first_done<T, M>(ops: &mut Vec<Op<T, M>>) -> (usize, M, T) {
    std::future::poll_fn(|cx| {
        for i in 0..ops.len() {
            if let Poll::Ready(out) = ops[i].run.as_mut().poll(cx) {
                let done = ops.swap_remove(i);
                return Poll::Ready((done.index, done.meta, out));
            }
        }
        Poll::Pending
    })
    .await
}

/// Polls `run` once: a file's read has its answer at once, a `security` run has not.
fn poll_now<T>(run: &mut Pin<Box<dyn Future<Output = T>>>) -> Poll<T> {
    run.as_mut()
        .poll(&mut std::task::Context::from_waker(std::task::Waker::noop()))
}

pub struct Daemon<C: Clock> {
    logins: Vec<LoginState<C>>,
    /// Each login's log context (empty with a single login, so its log lines stay as they were).
    spans: Vec<tracing::Span>,
    in_flight: Vec<InFlight>,
    /// Reads of a store that did not answer at once (a Keychain item): at most one per login,
    /// never for a login in flight.
    reads: Vec<Op<Result<Snapshot, StoreError>, (ReadHow, u64)>>,
    /// Asking `security` where a Keychain login's item lives: at most one per login.
    locates: Vec<Op<Option<Vec<PathBuf>>, ()>>,
    /// Stopping: when the saves of answers already in gave up (see [`UNSAVED_GRACE`]).
    grace_until: Option<Instant>,
    /// One watcher for every login's files.
    watch: Option<Watch>,
    /// The watcher's pings. `None` while no watch is armed.
    pings: Option<UnboundedReceiver<Ping>>,
    notifier: Notifier,
    /// Where notices for a person go (`--notify-cmd`, `--notify desktop`).
    user: UserNotifier,
    /// The watch's last failure, logged once.
    watch_error: Option<String>,
    /// What the watch was last said to watch (or wait for), logged once.
    watch_said: Option<String>,
}

impl<C: Clock> Daemon<C> {
    /// A daemon for `stores` (at least one), sharing `policy` and `clock`.
    pub fn new(stores: Vec<Store>, policy: Policy, clock: C, user: UserNotifier) -> Self {
        let many = stores.len() > 1;
        let spans = stores
            .iter()
            .map(|s| {
                if many {
                    tracing::info_span!("login", store = %s.place())
                } else {
                    tracing::Span::none()
                }
            })
            .collect();
        Daemon {
            logins: stores
                .into_iter()
                .map(|s| LoginState::new(s, policy.clone(), clock.clone()))
                .collect(),
            spans,
            in_flight: Vec::new(),
            reads: Vec::new(),
            locates: Vec::new(),
            grace_until: None,
            watch: None,
            pings: None,
            notifier: Notifier::from_env(),
            user,
            watch_error: None,
            watch_said: None,
        }
    }

    /// Runs until SIGTERM or SIGINT, and returns the exit code: 0 for a clean stop, 1 when new
    /// tokens could not be saved before stopping.
    pub async fn run(mut self, mut signals: Signals) -> u8 {
        let places: Vec<String> = self
            .logins
            .iter()
            .map(|l| l.store.place().to_string())
            .collect();
        tracing::info!(
            "claude-tokend {} started; credentials at {}",
            env!("CARGO_PKG_VERSION"),
            places.join(", ")
        );
        self.arm_watch();
        for login in &mut self.logins {
            login.reread(true);
        }
        self.pump();
        self.deliver();
        self.notifier.ready();
        trim::release_startup_pages();
        let mut stopping = false;
        loop {
            if !stopping {
                self.pump();
                self.deliver();
                self.start_due_attempts();
            } else if self.in_flight.is_empty() {
                break;
            }
            match self.wait(&mut signals, stopping).await {
                Event::FileChanged(Ping::Changed(i)) => {
                    if let Some(login) = self.logins.get_mut(i) {
                        login.on_file_changed();
                    }
                }
                Event::FileChanged(Ping::Rearm) => {
                    // A directory on the way appeared: watch it, and look, since the file may
                    // have been written before the new watch was in place.
                    self.arm_watch();
                    for login in &mut self.logins {
                        login.on_file_changed();
                    }
                }
                Event::Timer if stopping => {
                    self.notifier.ping_if_due(Instant::now());
                    self.give_up_stuck_saves();
                }
                Event::Timer => self.on_timer(),
                Event::Reload => {
                    self.arm_watch();
                    for i in self.idle_logins() {
                        let _in = self.spans[i].enter();
                        self.logins[i].on_reload();
                    }
                }
                Event::ForceRefresh => {
                    tracing::info!("refreshing now (SIGUSR1)");
                    for i in self.idle_logins() {
                        let mode = Mode::Force {
                            expected: None,
                            floor: Floor::Honour,
                        };
                        self.start(i, mode);
                    }
                }
                Event::Done {
                    index,
                    forced,
                    result,
                } => {
                    let _in = self.spans[index].enter();
                    let login = &mut self.logins[index];
                    login.epoch += 1;
                    login.handle_result(result, forced);
                }
                Event::Read {
                    index,
                    how,
                    epoch,
                    result,
                } => {
                    let _in = self.spans[index].enter();
                    let busy = self.in_flight.iter().any(|f| f.index == index);
                    let login = &mut self.logins[index];
                    if busy || epoch != login.epoch {
                        // An attempt ran meanwhile: this answer may predate it. Read again.
                        login.want_read(how);
                    } else {
                        login.apply_read(result, how);
                    }
                }
                Event::Located { index, files } => {
                    if self.logins[index].located(files) {
                        self.arm_watch();
                    }
                }
                Event::Shutdown(why) => {
                    stopping = true;
                    // Reads and lookups are only ever for the next decision: there is none.
                    // Their `security` runs end on their own, and the runtime does not wait.
                    self.reads.clear();
                    self.locates.clear();
                    // An attempt whose request has not gone out is dropped (its temp file and
                    // locks go with it); one whose request went out is waited for and its answer
                    // saved, because the server may already have spent the old refresh token.
                    let before = self.in_flight.len();
                    self.in_flight.retain(|f| f.meta.sent.get());
                    if self.in_flight.is_empty() {
                        if before > 0 {
                            tracing::info!("{why}: stopping before the request was sent");
                        }
                        tracing::info!("{why}: stopping");
                    } else {
                        tracing::info!(
                            "{why}: waiting for the refresh request in flight, to save its answer"
                        );
                    }
                }
            }
            self.deliver();
            self.publish_status();
        }
        self.notifier.stopping();
        let deadline = self
            .grace_until
            .unwrap_or_else(|| Instant::now() + UNSAVED_GRACE);
        self.save_before_exit(deadline).await
    }

    /// Starts what the logins want done with their stores: a read, and for a Keychain login
    /// asking `security` where its item lives. What answers at once (a file) is applied at
    /// once; the rest is polled by the loop and applied when it finishes. A login in flight
    /// reads nothing (its attempt reads under the lock; its wish waits for the attempt's end).
    fn pump(&mut self) {
        // A read can want another at once (`--store auto` finding the file): a few rounds.
        for _ in 0..3 {
            let mut applied = false;
            for i in self.idle_logins() {
                if self.reads.iter().any(|r| r.index == i) {
                    continue;
                }
                let _in = self.spans[i].enter();
                let login = &mut self.logins[i];
                let Some(how) = login.take_read() else {
                    continue;
                };
                let store = login.store.clone();
                let mut run: Pin<Box<dyn Future<Output = _>>> =
                    Box::pin(async move { store.read_async().await });
                match poll_now(&mut run) {
                    Poll::Ready(result) => {
                        login.apply_read(result, how);
                        applied = true;
                    }
                    Poll::Pending => self.reads.push(Op {
                        index: i,
                        meta: (how, login.epoch),
                        run,
                    }),
                }
            }
            if !applied {
                break;
            }
        }
        let mut rearm = false;
        for i in 0..self.logins.len() {
            if self.locates.iter().any(|l| l.index == i) || !self.logins[i].take_locate() {
                continue;
            }
            let store = self.logins[i].store.clone();
            let mut run: Pin<Box<dyn Future<Output = _>>> =
                Box::pin(async move { store.watched_files_async().await });
            match poll_now(&mut run) {
                Poll::Ready(files) => rearm |= self.logins[i].located(files),
                Poll::Pending => self.locates.push(Op {
                    index: i,
                    meta: (),
                    run,
                }),
            }
        }
        if rearm {
            self.arm_watch();
        }
    }

    /// Stopping: an attempt whose answer came more than [`UNSAVED_GRACE`] ago and is still
    /// saving (a `security` write that hangs) is given up; its tokens stay in hand for the
    /// last tries of [`Daemon::save_before_exit`], within the same deadline.
    fn give_up_stuck_saves(&mut self) {
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

    /// The logins with no attempt in flight.
    fn idle_logins(&self) -> Vec<usize> {
        (0..self.logins.len())
            .filter(|i| !self.in_flight.iter().any(|f| f.index == *i))
            .collect()
    }

    /// Starts an attempt for every idle login whose plan says "now".
    fn start_due_attempts(&mut self) {
        for i in self.idle_logins() {
            match self.logins[i].next_step() {
                Next::RefreshNow { force: false } => self.start(i, Mode::IfDue),
                Next::RefreshNow { force: true } => {
                    let mode = Mode::Force {
                        expected: None,
                        floor: Floor::Honour,
                    };
                    self.start(i, mode);
                }
                Next::Sleep(_) => {}
            }
        }
    }

    /// Puts one attempt of login `index` in flight. It owns copies of the store and the policy
    /// and shares the login's refresher; the lock waits inside have no deadline (the daemon can
    /// be stopped meanwhile).
    fn start(&mut self, index: usize, mut mode: Mode) {
        let login = &mut self.logins[index];
        login.epoch += 1;
        let store = login.store.clone();
        let policy = login.policy.clone();
        let refresher: Rc<RefCell<Refresher>> = login.refresher.clone();
        let sent = Rc::new(Cell::new(false));
        let answered = Rc::new(Cell::new(None));
        let forced = matches!(mode, Mode::Force { .. });
        let (observed, observed_answer) = (sent.clone(), answered.clone());
        // The refresher stays borrowed for the whole attempt, across its awaits, on purpose:
        // while a login is in flight the loop calls none of its handlers (see `idle_logins`),
        // and a cancelled attempt (SIGTERM before its request) releases the borrow with the
        // future, leaving any new tokens in hand to `save_before_exit`.
        #[allow(clippy::await_holding_refcell_ref)]
        let attempt = async move {
            let observe = move |step: Step| match step {
                Step::RequestSent => observed.set(true),
                Step::ResponseReceived => observed_answer.set(Some(Instant::now())),
                _ => {}
            };
            let mut refresher = refresher.borrow_mut();
            refresher
                .attempt(&store, &policy, &mut mode, None, &observe)
                .await
        };
        self.in_flight.push(Op {
            index,
            meta: Attempt {
                forced,
                sent,
                answered,
            },
            run: Box::pin(attempt.instrument(self.spans[index].clone())),
        });
    }

    /// Sleeps until the next deadline or an event, whichever is first. While stopping, only
    /// the attempts being finished and the watchdog matter.
    async fn wait(&mut self, signals: &mut Signals, stopping: bool) -> Event {
        let now = Instant::now();
        let mut until = now + plan::MAX_SLEEP;
        if !stopping {
            for i in self.idle_logins() {
                let login = &self.logins[i];
                if let Next::Sleep(d) = login.next_step() {
                    until = until.min(now + d);
                }
                if let Some(at) = login.reread_at {
                    until = until.min(at);
                }
                if let Some(at) = login.next_tell_at() {
                    until = until.min(at);
                }
            }
        }
        if let Some(at) = self.notifier.next_ping() {
            until = until.min(at);
        }
        if stopping {
            // An answer already in is saved within the grace, or given up. One that comes
            // while this sleeps is noticed within a second: stopping, the loop looks every
            // second (nothing else wakes it when an attempt's answer comes).
            until = until.min(now + Duration::from_secs(1));
            for f in &self.in_flight {
                if let Some(at) = f.meta.answered.get() {
                    until = until.min(at + UNSAVED_GRACE);
                }
            }
        }
        let pings = self.pings.as_mut().filter(|_| !stopping);
        let in_flight = &mut self.in_flight;
        let busy = !in_flight.is_empty();
        let (reads, locates) = (&mut self.reads, &mut self.locates);
        let reading = !stopping && !reads.is_empty();
        let locating = !stopping && !locates.is_empty();
        tokio::select! {
            _ = tokio::time::sleep_until(until.into()) => Event::Timer,
            (index, attempt, result) = first_done(in_flight), if busy => {
                Event::Done { index, forced: attempt.forced, result }
            }
            (index, (how, epoch), result) = first_done(reads), if reading => {
                Event::Read { index, how, epoch, result }
            }
            (index, (), files) = first_done(locates), if locating => {
                Event::Located { index, files }
            }
            Some(ping) = async { match pings { Some(rx) => rx.recv().await, None => std::future::pending().await } } => {
                Event::FileChanged(ping)
            }
            _ = signals.term.recv(), if !stopping => Event::Shutdown("SIGTERM"),
            _ = signals.int.recv(), if !stopping => Event::Shutdown("SIGINT"),
            _ = signals.hup.recv(), if !stopping => Event::Reload,
            _ = signals.usr1.recv(), if !stopping => Event::ForceRefresh,
        }
    }

    fn on_timer(&mut self) {
        self.notifier.ping_if_due(Instant::now());
        for i in self.idle_logins() {
            let _in = self.spans[i].enter();
            self.logins[i].on_timer();
        }
        if self.watch.as_ref().is_none_or(Watch::outdated) {
            self.arm_watch();
        }
    }

    /// (Re)arms the one watcher over every login's files. A failure is logged once; the minute
    /// timer tries again.
    fn arm_watch(&mut self) {
        // A directory a stand-in waits for can appear while the watch is armed (`mkdir -p`
        // makes the whole path at once): then its event came before the watch, so arm again.
        for _ in 0..8 {
            self.arm_watch_once();
            if !self.watch.as_ref().is_some_and(Watch::outdated) {
                break;
            }
        }
    }

    fn arm_watch_once(&mut self) {
        let files: Vec<Vec<PathBuf>> = self
            .logins
            .iter_mut()
            .map(LoginState::watched_files)
            .collect();
        match Watch::arm(&files) {
            Ok((watch, rx)) => {
                let dirs: Vec<_> = watch.dirs().map(|d| d.display().to_string()).collect();
                let text = if watch.complete {
                    format!("watching {}", dirs.join(" and "))
                } else {
                    format!(
                        "waiting for a credentials directory to appear (watching {})",
                        dirs.join(" and ")
                    )
                };
                // Said once, and again only when it changes: a watch armed anew over the same
                // directories is no news.
                if self.watch_said.as_ref() != Some(&text) {
                    tracing::info!("{text}");
                    self.watch_said = Some(text);
                }
                self.watch = Some(watch);
                self.pings = Some(rx);
                self.watch_error = None;
            }
            Err(e) => {
                let text = format!(
                    "cannot watch for changes ({e}); checking the store every minute instead"
                );
                if self.watch_error.as_ref() != Some(&text) {
                    tracing::warn!("{text}");
                    self.watch_error = Some(text);
                }
                self.watch = None;
                self.pings = None;
                self.watch_said = None;
            }
        }
    }

    /// Stopping with new tokens in hand: the old refresh token is spent, so these are the
    /// login. Their save is retried until `deadline` (a save that hangs in `security` is cut
    /// there); giving up is an error the user must see.
    async fn save_before_exit(&mut self, deadline: Instant) -> u8 {
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

    /// Hands every login's notices to the user notifier (which never waits), and watches anew
    /// when a login's store changed kind.
    fn deliver(&mut self) {
        if self.logins.iter().any(|l| l.needs_rearm) {
            for login in &mut self.logins {
                login.needs_rearm = false;
            }
            self.arm_watch();
        }
        for login in &mut self.logins {
            for notice in login.outbox.drain(..) {
                self.user.send(&notice);
            }
        }
    }

    /// `STATUS=` for systemd: the login's line, or one line per login.
    fn publish_status(&mut self) {
        let text = match self.logins.as_slice() {
            [one] => one.status_text(),
            many => many
                .iter()
                .map(|l| format!("{}: {}", l.short_name(), l.status_text()))
                .collect::<Vec<_>>()
                .join(" | "),
        };
        self.notifier.status(&text);
    }
}
