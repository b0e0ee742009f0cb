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

mod keeper;
mod login_state;
mod mirrors;
mod notify_systemd;
pub mod notify_user;
mod ops;
pub mod plan;
mod stop;
mod told;
mod trim;
mod watch;

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use tokend_core::refresh::{Floor, Mode, Outcome, Policy, RefreshError};
use tokend_core::schedule::epoch_millis;
use tokend_core::store::{Snapshot, Store, StoreError};
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::mpsc::UnboundedReceiver;

use login_state::{LoginState, ReadHow};
use mirrors::{Done as MirrorDone, JobKind, Keeper};
use notify_systemd::Notifier;
use notify_user::UserNotifier;
use ops::{InFlight, Op, first_done};
use plan::Next;
use stop::UNSAVED_GRACE;
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
    /// This daemon was recorded as a login's keeper (with the other live keepers' pids).
    Registered {
        index: usize,
        result: Result<Vec<u32>, StoreError>,
    },
    /// A read of a login's store that went off the loop finished.
    Read {
        index: usize,
        how: ReadHow,
        epoch: u64,
        result: Result<Snapshot, StoreError>,
    },
    /// A mirror write or `--mirror-cmd` run of a login finished (`None`: its task died).
    Mirror {
        index: usize,
        kind: JobKind,
        done: Option<MirrorDone>,
    },
    /// `security` said where a Keychain login's item lives.
    Located {
        index: usize,
        files: Option<Vec<PathBuf>>,
    },
    Shutdown(&'static str),
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
    /// Every login's mirrors and `--mirror-cmd`, and their writes and runs on the blocking pool.
    mirrors: Keeper,
    mirror_jobs: Vec<Op<Option<MirrorDone>, JobKind>>,
    /// Recording this daemon as a login's keeper in its lock file: at most one per login.
    registrations: Vec<keeper::Registration>,
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
    /// A daemon for `stores` (at least one) and each one's `mirrors`, sharing `policy` and
    /// `clock`.
    pub fn new(
        stores: Vec<Store>,
        mirrors: (
            Vec<Vec<tokend_core::mirror::Mirror>>,
            Option<crate::mirror_cmd::MirrorCmd>,
        ),
        policy: Policy,
        clock: C,
        user: UserNotifier,
    ) -> Self {
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
            mirrors: Keeper::new(mirrors.0, mirrors.1),
            mirror_jobs: Vec::new(),
            registrations: Vec::new(),
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
        self.start_mirror_jobs();
        self.start_registrations();
        self.notifier.ready();
        trim::release_startup_pages();
        let mut stopping = false;
        loop {
            if !stopping {
                self.pump();
                self.deliver();
                self.start_due_attempts();
                self.start_mirror_jobs();
                self.start_registrations();
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
                    self.mirrors.check_all();
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
                Event::Mirror { index, kind, done } => {
                    let _in = self.spans[index].enter();
                    let login = crate::show::login_id(&self.logins[index].store);
                    match done {
                        Some(done) => self.mirrors.finished(index, done, &login),
                        None => self.mirrors.lost(index, kind),
                    }
                }
                Event::Registered { index, result } => self.registered(index, result),
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
                    // A mirror write or command run already on the pool finishes there (a
                    // command is never killed by the daemon's exit); none is started any more.
                    self.mirror_jobs.clear();
                    self.registrations.clear();
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
        self.unregister();
        let deadline = self
            .grace_until
            .unwrap_or_else(|| Instant::now() + UNSAVED_GRACE);
        self.save_before_exit(deadline).await
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
        if !stopping && let Some(at) = self.mirrors.next_wake() {
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
        let mirror_jobs = &mut self.mirror_jobs;
        let mirroring = !stopping && !mirror_jobs.is_empty();
        let registrations = &mut self.registrations;
        let registering = !stopping && !registrations.is_empty();
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
            (index, kind, done) = first_done(mirror_jobs), if mirroring => {
                Event::Mirror { index, kind, done }
            }
            (index, (), result) = first_done(registrations), if registering => {
                Event::Registered { index, result }
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
        self.mirrors.on_timer(Instant::now());
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

    /// Starts the mirror writes and `--mirror-cmd` runs that are due, after handing the keeper
    /// what each login's last read says its mirrors should hold. Each runs on the blocking
    /// pool; the loop polls it like a read.
    fn start_mirror_jobs(&mut self) {
        for (i, login) in self.logins.iter_mut().enumerate() {
            if let Some(want) = login.mirror_want.take() {
                self.mirrors.want(i, want);
            }
        }
        let logins = &self.logins;
        let jobs = self
            .mirrors
            .due_jobs(Instant::now(), |i| crate::show::login_id(&logins[i].store));
        for (index, job) in jobs {
            let kind = job.kind();
            let span = self.spans[index].clone();
            let handle = tokio::task::spawn_blocking(move || span.in_scope(|| job.run()));
            self.mirror_jobs.push(Op {
                index,
                meta: kind,
                run: Box::pin(async move { handle.await.ok() }),
            });
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
