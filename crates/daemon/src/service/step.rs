//! The command runner for the service managers: each step is printed before it runs, in a form
//! the user can paste (`shell_quote`), and a failure says which command failed and how to go on.
//! It knows no manager's meaning of an exit code; `systemd` and `launchd` read those.

use std::ffi::OsStr;
use std::io::{self, Write};
use std::process::{Command as Process, ExitStatus, Stdio};

use crate::exit;

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
/// collected, then written to ours as it was, and returned.
pub(super) fn run(program: &str, args: &[&OsStr]) -> Ran {
    println!("Running `{}`", shown(program, args));
    match Process::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::inherit())
        .stderr(Stdio::piped())
        .output()
    {
        Ok(out) => {
            let _ = io::stderr().write_all(&out.stderr);
            if out.status.success() {
                Ran::Success
            } else {
                Ran::Failed(
                    out.status,
                    String::from_utf8_lossy(&out.stderr).into_owned(),
                )
            }
        }
        Err(e) => Ran::NotRun(e),
    }
}

/// Runs one step, printing it first; on failure says which command failed and how to go on.
pub(super) fn run_step(program: &str, args: &[&OsStr], hint: &str) -> Result<(), u8> {
    let ran = run(program, args);
    step_result(program, args, ran, hint)
}

/// A step's outcome as the user hears it: nothing on success, else what failed and how to go on.
pub(super) fn step_result(program: &str, args: &[&OsStr], ran: Ran, hint: &str) -> Result<(), u8> {
    let shown = shown(program, args);
    match ran {
        Ran::Success => Ok(()),
        Ran::Failed(s, _) => {
            eprintln!(
                "claude-tokend: `{shown}` failed ({s}); {hint}. Run it by hand to see why, then go on from there."
            );
            Err(exit::FAILURE)
        }
        Ran::NotRun(e) => {
            eprintln!(
                "claude-tokend: cannot run `{program}`: {e} (is it installed and on PATH?); {hint}. \
                 The step was: {shown}"
            );
            Err(exit::FAILURE)
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
}
