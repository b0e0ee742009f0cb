//! Signals in the one-shot commands (`--once`, `refresh`, `token`, and `login` once its code
//! exchange may be sent): CONTRACT.md "Interrupted, slow or absent". A refresh token (or an
//! authorization code) is spent the moment the server receives it, so a signal may end a
//! command at once only while nothing is at stake; once a request is out, its answer is waited
//! for and saved first, and the command then exits with 128 + the signal number (an exit, not
//! a re-raised signal: the answer was handled). A second SIGINT (a person pressing Ctrl-C
//! twice) abandons that wait; a repeated SIGTERM or SIGHUP (a service manager insisting) does
//! not.
//!
//! It owns the handlers (installed only on the path that may take locks, so the fast path of
//! `--once` and `token` stays a read and an exit) and the race between a run and the signals.
//! The run itself decides nothing here: it reports through `tokend_core`'s `RunControl` whether
//! its answer is at stake, and obeys its stop. Dropping a run that has nothing at stake
//! releases its locks and temp file through their `Drop`s.

use std::future::{Future, poll_fn};
use std::pin::pin;
use std::task::Poll;

use libc::c_int;
use tokend_core::refresh::RunControl;
use tokio::runtime::Runtime;
use tokio::signal::unix::{Signal, SignalKind, signal};

/// How a run under a [`Session`] ended.
pub enum Ran<T> {
    /// No signal came: the run's own result.
    Done(T),
    /// A signal came while nothing was at stake: the run was dropped (no request was out).
    Stopped { signal: c_int },
    /// A signal came while the run's answer was at stake: the run was finished first (its
    /// answer saved, or the save given up), and the command now stops with the signal.
    Finished { signal: c_int, result: T },
    /// A second SIGINT abandoned the wait for the answer (the message is printed).
    Abandoned { signal: c_int },
}

/// Writes `claude-tokend: <line>` to stderr, ignoring failure. After SIGHUP (a terminal that
/// hung up), or with stderr on a closed pipe, every write there fails, and `eprintln!` would
/// then panic (abort, in a release build) before the answer in flight is saved.
pub fn tell(line: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "claude-tokend: {line}");
}

/// The exit status of a command a signal ended: 128 + its number, as a shell reports one.
pub fn exit_code(signal: c_int) -> u8 {
    u8::try_from(128 + signal).unwrap_or(u8::MAX)
}

pub fn name(signal: c_int) -> &'static str {
    match signal {
        libc::SIGINT => "SIGINT",
        libc::SIGTERM => "SIGTERM",
        libc::SIGHUP => "SIGHUP",
        _ => "a signal",
    }
}

/// The runtime of a one-shot command that may take locks, and its signal handlers. Built at the
/// first login that needs it and kept for the others, so a signal between two logins is not
/// lost.
pub struct Session {
    /// Always `Some` until dropped (taken to shut it down without waiting).
    rt: Option<Runtime>,
    /// SIGINT, SIGTERM and SIGHUP, except any ignored when the command started.
    signals: Vec<(c_int, Signal)>,
}

impl Drop for Session {
    /// A run dropped on a signal may leave a Keychain call's `security` running on a blocking
    /// thread (bounded by its own 30 s timeout); a stopping command must not wait for it.
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl Session {
    /// Installs the handlers on `rt`. A signal ignored at start (`nohup`: SIG_IGN inherited)
    /// stays ignored, so it gets no handler. A handler that cannot be installed leaves that
    /// signal's default action (the command dies, as before), with a warning.
    pub fn start(rt: Runtime) -> Session {
        ignore_user_signals();
        let kinds = [
            (libc::SIGINT, SignalKind::interrupt()),
            (libc::SIGTERM, SignalKind::terminate()),
            (libc::SIGHUP, SignalKind::hangup()),
        ];
        let signals = {
            let _in = rt.enter();
            kinds
                .into_iter()
                .filter(|(number, _)| !ignored(*number))
                .filter_map(|(number, kind)| match signal(kind) {
                    Ok(s) => Some((number, s)),
                    Err(e) => {
                        tracing::warn!("cannot handle {}: {e}", name(number));
                        None
                    }
                })
                .collect()
        };
        Session {
            rt: Some(rt),
            signals,
        }
    }

    /// The runtime and the handlers, borrowed apart.
    fn parts(&mut self) -> (&Runtime, &mut Vec<(c_int, Signal)>) {
        let rt = self
            .rt
            .as_ref()
            .expect("the runtime lives as long as the session");
        (rt, &mut self.signals)
    }

    /// Runs `run` to its end, unless a signal ends it first: while `control` says nothing is
    /// at stake, the run is dropped at once; otherwise the user is told what is awaited (`what`,
    /// asked when the signal comes), `control` is asked to stop, and the run is finished.
    pub fn run<F: Future>(
        &mut self,
        control: &RunControl,
        what: impl InFlight,
        run: F,
    ) -> Ran<F::Output> {
        let (rt, signals) = self.parts();
        rt.block_on(async move {
            let mut run = pin!(run);
            let signal = tokio::select! {
                out = &mut run => return Ran::Done(out),
                signal = next(signals) => signal,
            };
            if !control.at_stake() {
                tell(format_args!(
                    "{}: stopped; no request was in flight",
                    name(signal)
                ));
                return Ran::Stopped { signal };
            }
            tell(format_args!("{}: {}", name(signal), what.awaited()));
            control.stop();
            loop {
                tokio::select! {
                    out = &mut run => return Ran::Finished { signal, result: out },
                    again = next(signals) => if again == libc::SIGINT {
                        tell(format_args!("SIGINT again: {}", what.abandoned()));
                        return Ran::Abandoned { signal: again };
                    },
                }
            }
        })
    }

    /// A signal that came since the last run ended (it was busy finishing, or between two
    /// logins), if any: the command stops with it.
    pub fn pending(&mut self) -> Option<c_int> {
        let (rt, signals) = self.parts();
        rt.block_on(async move {
            // One turn of the runtime's driver delivers a signal that has arrived.
            tokio::task::yield_now().await;
            poll_fn(|cx| Poll::Ready(ready(signals, cx))).await
        })
    }
}

/// What a run under a [`Session`] has at stake, named when a signal comes. A `&str` names a
/// request in flight (`"refresh"`); a caller whose run has steps (`login`) names the step it is
/// in when the signal comes.
pub trait InFlight {
    /// What the command does before it stops: "waiting for the refresh in flight, then
    /// stopping".
    fn awaited(&self) -> String;
    /// What a second SIGINT leaves behind, said when it abandons the wait.
    fn abandoned(&self) -> String;
}

impl InFlight for &str {
    fn awaited(&self) -> String {
        format!("waiting for the {self} in flight, then stopping")
    }

    fn abandoned(&self) -> String {
        format!(
            "stopped without the answer to the {self} in flight, so nothing was saved and the \
             login may be lost (the server may have spent it): if Claude Code then reports that \
             you are logged out, run `claude-tokend login`"
        )
    }
}

/// The next of the handled signals (pending forever when none is handled).
fn next(signals: &mut [(c_int, Signal)]) -> impl Future<Output = c_int> + '_ {
    poll_fn(move |cx| match ready(signals, cx) {
        Some(signal) => Poll::Ready(signal),
        None => Poll::Pending,
    })
}

fn ready(signals: &mut [(c_int, Signal)], cx: &mut std::task::Context<'_>) -> Option<c_int> {
    signals
        .iter_mut()
        .find_map(|(number, s)| matches!(s.poll_recv(cx), Poll::Ready(Some(()))).then_some(*number))
}

/// One-shot commands ignore SIGUSR1 and SIGUSR2, meant for the daemon: their default action
/// would kill a command with a request in flight. A handler that does nothing, rather than
/// SIG_IGN, so a program the command starts (`security`) gets the default back at exec.
/// Left alone when ignored already. Two system calls each: cheap enough for the fast path.
pub fn ignore_user_signals() {
    extern "C" fn nothing(_: c_int) {}
    for number in [libc::SIGUSR1, libc::SIGUSR2] {
        if disposition(number) != Some(libc::SIG_DFL) {
            continue;
        }
        // SAFETY: a zeroed sigaction is valid; the handler is async-signal-safe (it does
        // nothing); SA_RESTART keeps system calls from failing with EINTR because of it.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = nothing as extern "C" fn(c_int) as libc::sighandler_t;
            action.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(number, &action, std::ptr::null_mut());
        }
    }
}

/// Whether `number` was ignored when the command started (SIG_IGN inherited, as `nohup` does
/// for SIGHUP). Also `service`'s, whose calls catch these signals only while they run.
pub fn ignored(number: c_int) -> bool {
    disposition(number) == Some(libc::SIG_IGN)
}

/// The current action for a signal (SIG_DFL, SIG_IGN or a handler), without changing it.
fn disposition(number: c_int) -> Option<libc::sighandler_t> {
    // SAFETY: a null new action only reads the current one into a zeroed, valid struct.
    unsafe {
        let mut current: libc::sigaction = std::mem::zeroed();
        (libc::sigaction(number, std::ptr::null(), &mut current) == 0)
            .then_some(current.sa_sigaction)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_are_128_plus_the_signal() {
        assert_eq!(exit_code(libc::SIGHUP), 129);
        assert_eq!(exit_code(libc::SIGINT), 130);
        assert_eq!(exit_code(libc::SIGTERM), 143);
    }
}
