//! The command runner for the service managers: each step is printed before it runs, in a form
//! the user can paste (`shell_quote`), every call is bounded in time (a manager waiting on a
//! stuck bus would otherwise hang `service` forever), and a failure says which command failed
//! and what to run by hand from there. It knows no manager's meaning of an exit code;
//! `systemd` and `launchd` read those.

use std::ffi::OsStr;
use std::io::{self, Read, Write};
use std::os::unix::process::CommandExt;
use std::process::{Command as Process, ExitStatus, Stdio};
use std::sync::mpsc::channel;
use std::time::{Duration, Instant};

use crate::exit;

/// How long one `systemctl`/`launchctl` call may take. They answer in well under a second
/// when the manager is there; 30 s leaves room for a loaded machine and still ends a hang
/// while the user is waiting.
const CALL_LIMIT: Duration = Duration::from_secs(30);

/// How long the command's stderr may stay open after it exited (a child it left behind holds
/// it): what it had to say is complete by then.
const PIPE_GRACE: Duration = Duration::from_millis(500);

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

/// Runs one command, printing it first. Its stdout goes straight to ours; its stderr is
/// collected, then written to ours as it was (`systemctl enable` says there which links it
/// made), and returned when it failed.
pub(super) fn run(program: &str, args: &[&OsStr]) -> Ran {
    println!("Running `{}`", shown(program, args));
    bounded(program, args, true)
}

/// Runs one command quietly (a question whose answer is its exit status), bounded too.
pub(super) fn ask(program: &str, args: &[&OsStr]) -> Ran {
    bounded(program, args, false)
}

/// Runs `program args` in a process group of its own and waits at most [`call_limit`]; past
/// it, the group is killed, so neither the command nor anything it started is left hanging.
/// `shown`: its stdout is ours and its stderr is written to ours; else both are kept quiet.
fn bounded(program: &str, args: &[&OsStr], shown: bool) -> Ran {
    let limit = call_limit();
    let deadline = Instant::now() + limit;
    let mut child = match Process::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(if shown {
            Stdio::inherit()
        } else {
            Stdio::null()
        })
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
    let (err_tx, err_rx) = channel();
    let stderr = child.stderr.take();
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        if let Some(pipe) = stderr {
            // What a manager says is a few KiB; more is not worth keeping.
            let _ = pipe.take(1 << 20).read_to_end(&mut bytes);
        }
        let _ = err_tx.send(String::from_utf8_lossy(&bytes).into_owned());
    });
    let (exit_tx, exited) = channel();
    std::thread::spawn(move || {
        let _ = exit_tx.send(child.wait());
    });
    let status = match exited.recv_timeout(limit) {
        Ok(Ok(status)) => status,
        Ok(Err(e)) => {
            kill_group();
            return Ran::NotRun(e);
        }
        Err(_) => {
            kill_group();
            return Ran::TimedOut(limit);
        }
    };
    let grace = deadline
        .saturating_duration_since(Instant::now())
        .min(PIPE_GRACE);
    let stderr = err_rx.recv_timeout(grace).unwrap_or_else(|_| {
        // Something it started holds the pipe: that is ended too, and what was said kept.
        kill_group();
        err_rx
            .recv_timeout(Duration::from_millis(200))
            .unwrap_or_default()
    });
    if shown {
        let _ = io::stderr().write_all(stderr.as_bytes());
    }
    if status.success() {
        Ran::Success
    } else {
        Ran::Failed(status, stderr)
    }
}

/// Runs `steps` of `program` in order, each printed first; at the first that does not
/// succeed, says what failed and what to run by hand from there.
pub(super) fn run_steps(program: &str, steps: &[Vec<&OsStr>], hint: &str) -> Result<(), u8> {
    for (i, args) in steps.iter().enumerate() {
        let ran = run(program, args);
        let rest: Vec<String> = steps[i + 1..].iter().map(|a| shown(program, a)).collect();
        step_result(program, args, ran, hint, &rest)?;
    }
    Ok(())
}

/// A step's outcome as the user hears it: nothing on success, else what failed and how to go
/// on: that command, then `rest`, the commands that were to follow it.
pub(super) fn step_result(
    program: &str,
    args: &[&OsStr],
    ran: Ran,
    hint: &str,
    rest: &[String],
) -> Result<(), u8> {
    let shown = shown(program, args);
    match ran {
        Ran::Success => return Ok(()),
        Ran::Failed(s, _) => eprintln!(
            "claude-tokend: `{shown}` failed ({s}); {hint}. Run it by hand to see why, then go on from there."
        ),
        Ran::NotRun(e) => eprintln!(
            "claude-tokend: cannot run `{program}`: {e} (is it installed and on PATH?); {hint}. \
             The step was: {shown}"
        ),
        Ran::TimedOut(limit) => eprintln!(
            "claude-tokend: `{shown}` did not finish within {} and was stopped; {hint}.",
            spoken(limit)
        ),
    }
    by_hand(std::iter::once(shown).chain(rest.iter().cloned()));
    Err(exit::FAILURE)
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
