//! What the loop polls beside the timer, the watcher and the signals: each login's refresh
//! attempt, reads of its store, and asking `security` where a Keychain item lives, as futures
//! in lists (never tasks or threads of their own). A file's read answers at once and is
//! applied at once; a `security` run goes to the blocking pool and is applied when it finishes,
//! so a hung keychain delays only its own login.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::Poll;
use std::time::Instant;

use tokend_core::refresh::{Floor, Mode, Outcome, RefreshError, Refresher, Step};
use tracing::Instrument;

use super::plan::Next;
use super::{Clock, Daemon};

/// One operation of login `index` the loop polls beside everything else: an attempt, a read,
/// asking where an item lives. `meta` is what its answer needs besides its output.
pub(super) struct Op<T, M> {
    pub(super) index: usize,
    pub(super) meta: M,
    pub(super) run: Pin<Box<dyn Future<Output = T>>>,
}

/// What an attempt carries. It shares the login's [`Refresher`] (so new tokens in hand outlive
/// a cancelled attempt), knows whether its request went out (after which it is never cancelled:
/// the answer must be saved) and when the answer came (from then on its save has the 10 s of
/// "never waste" once the daemon is stopping).
pub(super) struct Attempt {
    pub(super) forced: bool,
    pub(super) sent: Rc<Cell<bool>>,
    pub(super) answered: Rc<Cell<Option<Instant>>>,
}

pub(super) type InFlight = Op<Result<Outcome, RefreshError>, Attempt>;

/// Waits for the first operation of `ops` to finish and takes it out of the list.
pub(super) async fn first_done<T, M>(ops: &mut Vec<Op<T, M>>) -> (usize, M, T) {
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

impl<C: Clock> Daemon<C> {
    /// Starts what the logins want done with their stores: a read, and for a Keychain login
    /// asking `security` where its item lives. What answers at once (a file) is applied at
    /// once; the rest is polled by the loop and applied when it finishes. A login in flight
    /// reads nothing (its attempt reads under the lock; its wish waits for the attempt's end).
    pub(super) fn pump(&mut self) {
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

    /// The logins with no attempt in flight.
    pub(super) fn idle_logins(&self) -> Vec<usize> {
        (0..self.logins.len())
            .filter(|i| !self.in_flight.iter().any(|f| f.index == *i))
            .collect()
    }

    /// Starts an attempt for every idle login whose plan says "now".
    pub(super) fn start_due_attempts(&mut self) {
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
    pub(super) fn start(&mut self, index: usize, mut mode: Mode) {
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
}
