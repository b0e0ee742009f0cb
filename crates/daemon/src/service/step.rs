//! The command runner for the service managers: each step is printed before it runs, in a form
//! the user can paste (`shell_quote`), every call is bounded in time (a manager waiting on a
//! stuck bus would otherwise hang `service` forever) and ends with the command when the user
//! interrupts it (SIGINT, SIGTERM, SIGHUP: the call, in a process group of its own, would
//! otherwise run on orphaned), what the call says comes back on pipes (never the terminal,
//! where `stty tostop` would stop it) and is relayed, and a failure says which command failed
//! and what to run by hand from there. It knows no manager's meaning of an exit code; `systemd`
//! and `launchd` read those.

use std::ffi::OsStr;
use std::io::{self, Read, Write};
use std::os::unix::process::CommandExt;
use std::process::{Command as Process, ExitStatus, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

use libc::c_int;

use crate::exit;
use crate::interrupt;

/// How long one `systemctl`/`launchctl` call may take. They answer in well under a second
/// when the manager is there; 30 s leaves room for a loaded machine and still ends a hang
/// while the user is waiting.
const CALL_LIMIT: Duration = Duration::from_secs(30);

/// How long the command's pipes may stay open after it exited (a child it left behind holds
/// them): what it had to say is complete by then.
const PIPE_GRACE: Duration = Duration::from_millis(500);

/// How soon a signal that came while a call runs is acted on.
const SIGNAL_POLL: Duration = Duration::from_millis(50);

/// The bound on one call (the test seam shortens it in debug builds).
pub(super) fn call_limit() -> Duration {
    tokend_core::seams::service_call_limit(CALL_LIMIT)
}

/// A duration as a person reads it: `30 s`, `300 ms`.
pub(super) fn spoken(d: Duration) -> String {
    if d.subsec_millis() == 0 && d.as_secs() > 0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{} ms", d.as_millis())
    }
}

/// A command line as the user would type it.
pub(super) fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+,:@=%".contains(c))
    {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// How a command went. Its stderr is kept (after being shown) so a manager's module can tell
/// "could not reach the service manager" from the manager's own answer.
pub(super) enum Ran {
    Success,
    Failed(ExitStatus, String),
    /// It could not be started at all (not installed, not on PATH).
    NotRun(io::Error),
    /// It did not finish within the bound, and was killed with whatever it started.
    TimedOut(Duration),
    /// The user (or a service manager) sent this signal while it ran: it was killed with
    /// whatever it started, and the command stops with 128 + the signal.
    Interrupted(c_int),
}

/// The command as the user would type it.
pub(super) fn shown(program: &str, args: &[&OsStr]) -> String {
    let mut shown = program.to_owned();
    for a in args {
        shown.push(' ');
        shown.push_str(&shell_quote(&a.to_string_lossy()));
    }
    shown
}

/// Runs one command, printing it first. What it writes to stdout and stderr is written to ours
/// (`systemctl enable` says on stderr which links it made, `status` answers on stdout), and
/// its stderr is returned when it failed.
pub(super) fn run(program: &str, args: &[&OsStr]) -> Ran {
    say!("Running `{}`", shown(program, args));
    bounded(program, args, true)
}

/// Runs one command quietly (a question whose answer is its exit status), bounded too.
pub(super) fn ask(program: &str, args: &[&OsStr]) -> Ran {
    bounded(program, args, false)
}

/// Runs `program args` in a process group of its own and waits at most [`call_limit`]; past
/// it, the group is killed, so neither the command nor anything it started is left hanging.
/// Its stdout and stderr are pipes, never our terminal: in a group of its own it is a
/// background job there, which `stty tostop` stops (SIGTTOU) at its first write, until the
/// bound. `shown`: what it wrote is written to ours once it ends; else it is kept quiet.
fn bounded(program: &str, args: &[&OsStr], shown: bool) -> Ran {
    let limit = call_limit();
    let deadline = Instant::now() + limit;
    // Caught from before the child starts, so none is missed; the default comes back after.
    let catch = Catch::install();
    let mut child = match Process::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
    {
        Ok(child) => child,
        Err(e) => return Ran::NotRun(e),
    };
    let group = child.id() as libc::pid_t;
    let kill_group = || {
        // SAFETY: kill(2) on the process group made for this call; its id stays reserved
        // while any member lives, so it names no one else's processes.
        unsafe { libc::kill(-group, libc::SIGKILL) };
    };
    let said = Said {
        out: drain(child.stdout.take()),
        err: drain(child.stderr.take()),
    };
    let (exit_tx, exited) = channel();
    std::thread::spawn(move || {
        let _ = exit_tx.send(child.wait());
    });
    // Once the group is killed its pipes close at once, unless something it started left the
    // group: what was said by then is shown all the same.
    let killed = |said: Said| {
        kill_group();
        let (_, stderr) = said.collect(Instant::now() + KILLED_GRACE, shown);
        stderr
    };
    let status = loop {
        if let Some(signal) = catch.caught() {
            killed(said);
            return Ran::Interrupted(signal);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match exited.recv_timeout(left.min(SIGNAL_POLL)) {
            Ok(Ok(status)) => break status,
            Ok(Err(e)) => {
                killed(said);
                return Ran::NotRun(e);
            }
            Err(RecvTimeoutError::Timeout) if !left.is_zero() => {}
            Err(_) => {
                killed(said);
                return Ran::TimedOut(limit);
            }
        }
    };
    if let Some(signal) = catch.caught() {
        // It ended as the signal came: the user asked to stop all the same.
        if !said.collect(Instant::now() + KILLED_GRACE, shown).0 {
            kill_group();
        }
        return Ran::Interrupted(signal);
    }
    let grace = Instant::now()
        + deadline
            .saturating_duration_since(Instant::now())
            .min(PIPE_GRACE);
    let (complete, stderr) = said.collect(grace, shown);
    if !complete {
        // Something it started holds a pipe: that is ended too, and what was said is kept.
        kill_group();
    }
    if status.success() {
        Ran::Success
    } else {
        Ran::Failed(status, stderr)
    }
}

/// How long the pipes may stay open once the call's group is killed.
const KILLED_GRACE: Duration = Duration::from_millis(200);

/// What a call says: each of its pipes read to the end by a thread of its own, so it never
/// blocks on a full one.
struct Said {
    out: Receiver<Vec<u8>>,
    err: Receiver<Vec<u8>>,
}

impl Said {
    /// What it said on each pipe by `until` (whatever came, when one is still open then: see
    /// the first value, whether both were read to the end), written to ours when `shown`;
    /// its stderr, as text.
    fn collect(self, until: Instant, shown: bool) -> (bool, String) {
        let mut complete = true;
        let mut read = |rx: Receiver<Vec<u8>>| {
            rx.recv_timeout(until.saturating_duration_since(Instant::now()))
                .unwrap_or_else(|_| {
                    complete = false;
                    Vec::new()
                })
        };
        let (out, err) = (read(self.out), read(self.err));
        if shown {
            let _ = io::stdout()
                .write_all(&out)
                .and_then(|()| io::stdout().flush());
            let _ = io::stderr().write_all(&err);
        }
        (complete, String::from_utf8_lossy(&err).into_owned())
    }
}

/// Reads `pipe` to its end in a thread; the first [`KEPT`] bytes come back when it closes.
fn drain(pipe: Option<impl Read + Send + 'static>) -> Receiver<Vec<u8>> {
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        let mut kept = Vec::new();
        if let Some(mut pipe) = pipe {
            let mut buf = [0u8; 8192];
            loop {
                match pipe.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        let room = KEPT.saturating_sub(kept.len());
                        kept.extend_from_slice(&buf[..n.min(room)]);
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
        }
        let _ = tx.send(kept);
    });
    rx
}

/// What a manager says is a few KiB; past this much, the rest is read and dropped.
const KEPT: usize = 1 << 20;

/// Runs `steps` of `program` in order, each printed first; at the first that does not
/// succeed, says what failed, what is `done` already, `why` it may have failed, and what to
/// run by hand from there.
pub(super) fn run_steps(
    program: &str,
    steps: &[Vec<&OsStr>],
    done: &str,
    why: &str,
) -> Result<(), u8> {
    for (i, args) in steps.iter().enumerate() {
        let ran = run(program, args);
        let rest: Vec<String> = steps[i + 1..].iter().map(|a| shown(program, a)).collect();
        step_result(program, args, ran, done, why, &rest)?;
    }
    Ok(())
}

/// A step's outcome as the user hears it: nothing on success, else what failed, what is `done`
/// already, `why` it may have failed (not said when the user stopped it), and how to go on:
/// that command, then `rest`, the commands that were to follow it. The exit code is 1, or 128 +
/// the signal that interrupted it.
pub(super) fn step_result(
    program: &str,
    args: &[&OsStr],
    ran: Ran,
    done: &str,
    why: &str,
    rest: &[String],
) -> Result<(), u8> {
    let shown = shown(program, args);
    let hint = if why.is_empty() {
        done.to_owned()
    } else {
        format!("{done}; {why}")
    };
    let mut code = exit::FAILURE;
    match ran {
        Ran::Success => return Ok(()),
        Ran::Failed(s, _) => interrupt::tell(format_args!(
            "`{shown}` failed ({s}); {hint}. Run it by hand to see why, then go on from there."
        )),
        Ran::NotRun(e) => interrupt::tell(format_args!(
            "cannot run `{program}`: {e} (is it installed and on PATH?); {hint}. \
             The step was: {shown}"
        )),
        Ran::TimedOut(limit) => interrupt::tell(format_args!(
            "`{shown}` did not finish within {} and was stopped; {hint}.",
            spoken(limit)
        )),
        Ran::Interrupted(signal) => {
            interrupt::tell(format_args!("{}", interrupted(signal, &shown, done)));
            code = interrupt::exit_code(signal);
        }
    }
    by_hand(std::iter::once(shown).chain(rest.iter().cloned()));
    Err(code)
}

/// What to say when `signal` stopped the call `shown`; `done`: what is done already.
pub(super) fn interrupted(signal: c_int, shown: &str, done: &str) -> String {
    format!(
        "{}: stopped `{shown}` (killed, with whatever it started; what it asked of the service \
         manager may be done or not); {done}.",
        interrupt::name(signal)
    )
}

/// Prints the commands that finish the job, one a line, ready to paste.
pub(super) fn by_hand(commands: impl IntoIterator<Item = String>) {
    let mut text = String::from("claude-tokend: to finish, run by hand:\n");
    for c in commands {
        text.push_str("  ");
        text.push_str(&c);
        text.push('\n');
    }
    let _ = io::stderr().write_all(text.as_bytes());
}

/// The signal that came while a call ran, set by [`on_signal`].
static CAUGHT: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(signal: c_int) {
    // An atomic store: async-signal-safe.
    CAUGHT.store(signal, Ordering::SeqCst);
}

/// SIGINT, SIGTERM and SIGHUP caught (not acted on by default: the command would die and leave
/// the call's process group running, or its temp files behind) from its making until it is
/// dropped, which puts the actions back as they were. A signal ignored when the command started
/// (`nohup`) stays ignored. Around each call, and around `commit`'s writes and renames.
pub(super) struct Catch {
    old: Vec<(c_int, libc::sigaction)>,
}

impl Catch {
    pub(super) fn install() -> Catch {
        CAUGHT.store(0, Ordering::SeqCst);
        let mut old = Vec::new();
        for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            if interrupt::ignored(signal) {
                continue;
            }
            // SAFETY: a zeroed sigaction is valid; the handler only stores to an atomic;
            // SA_RESTART keeps other system calls from failing with EINTR because of it.
            unsafe {
                let mut action: libc::sigaction = std::mem::zeroed();
                action.sa_sigaction = on_signal as extern "C" fn(c_int) as libc::sighandler_t;
                action.sa_flags = libc::SA_RESTART;
                libc::sigemptyset(&mut action.sa_mask);
                let mut previous: libc::sigaction = std::mem::zeroed();
                if libc::sigaction(signal, &action, &mut previous) == 0 {
                    old.push((signal, previous));
                }
            }
        }
        Catch { old }
    }

    pub(super) fn caught(&self) -> Option<c_int> {
        Some(CAUGHT.load(Ordering::SeqCst)).filter(|&s| s != 0)
    }
}

impl Drop for Catch {
    fn drop(&mut self) {
        for (signal, previous) in &self.old {
            // SAFETY: puts back the action sigaction(2) reported for this signal.
            unsafe { libc::sigaction(*signal, previous, std::ptr::null_mut()) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_quoted_only_when_needed() {
        assert_eq!(shell_quote("/a/b"), "/a/b");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }

    #[test]
    fn durations_are_spoken_plainly() {
        assert_eq!(spoken(Duration::from_secs(30)), "30 s");
        assert_eq!(spoken(Duration::from_millis(300)), "300 ms");
    }
}
