//! The command runner for the service managers: each step is printed before it runs, in a form
//! the user can paste (`shell_quote`), and a failure says which command failed and how to go on.
//! It knows no manager's meaning of an exit code; `systemd` and `launchd` read those.

use std::ffi::OsStr;
use std::process::{Command as Process, Stdio};

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

/// Runs one step, printing it first; on failure says which command failed and how to go on.
pub(super) fn run_step(program: &str, args: &[&OsStr], hint: &str) -> Result<(), u8> {
    let mut shown = program.to_owned();
    for a in args {
        shown.push(' ');
        shown.push_str(&shell_quote(&a.to_string_lossy()));
    }
    println!("Running: {shown}");
    match Process::new(program)
        .args(args)
        .stdin(Stdio::null())
        .status()
    {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => {
            eprintln!(
                "claude-tokend: `{shown}` failed ({s}); {hint}. Run it by hand to see why, then go on from there."
            );
            Err(exit::FAILURE)
        }
        Err(e) => {
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
