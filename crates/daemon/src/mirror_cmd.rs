//! One run of `--mirror-cmd`: `sh -c CMD` with the access-only document on its stdin (never in
//! its arguments or environment: those are visible to every local user in `ps` and /proc),
//! `CLAUDE_TOKEND_EVENT` (`update`, or `logout` with empty stdin) and `CLAUDE_TOKEND_LOGIN`;
//! its own process group (a timeout kills what it started; a Ctrl-C in the daemon's terminal
//! does not reach it); output discarded, never logged (it may echo the document). Blocking: the
//! daemon runs it on the blocking pool, a one-shot command in line.

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tokend_core::mirror::Want;

/// The command, and the name it was set by (`--mirror-cmd`, or `CLAUDE_TOKEND_MIRROR_CMD` when
/// the variable set it), for messages that name the setting the way it was given.
#[derive(Clone, Debug)]
pub struct MirrorCmd {
    pub command: String,
    pub named: String,
}

/// How long a run may take before its process group is killed.
pub const RUN_LIMIT: Duration = Duration::from_secs(30);

/// Runs `command` for `login` with `want`'s document, waiting up to [`RUN_LIMIT`] (or until
/// `stop` says to stop waiting: the command then goes on by itself). `Err` says why it failed,
/// for a log line (never with the document).
pub fn run(
    command: &str,
    login: &str,
    want: &Want,
    stop: &mut dyn FnMut() -> bool,
) -> Result<(), String> {
    let document = want.document();
    let event = if document.is_some() {
        "update"
    } else {
        "logout"
    };
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(command)
        .env("CLAUDE_TOKEND_EVENT", event)
        .env("CLAUDE_TOKEND_LOGIN", login)
        // Variables of the notification command, which mean nothing here.
        .env_remove("CLAUDE_TOKEND_MESSAGE")
        .env_remove("CLAUDE_TOKEND_DEADLINE")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0);
    let mut child = cmd.spawn().map_err(|e| format!("cannot start it: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        // Written from a thread of its own, so a command that does not read a document larger
        // than a pipe holds cannot stall the wait below (and its timeout): killing it ends the
        // write with EPIPE. A command that does not read it (or exits first) is its own
        // business: its exit status is what counts.
        if let Some(bytes) = document {
            let _ = std::thread::Builder::new()
                .name("mirror-cmd stdin".into())
                .spawn(move || {
                    let _ = stdin.write_all(&bytes);
                });
        }
    }
    let started = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => return Ok(()),
            Ok(Some(status)) => return Err(format!("it exited with {status}")),
            Ok(None) if started.elapsed() >= RUN_LIMIT => {
                // SAFETY: kill(2) on the process group of a child not yet reaped.
                unsafe {
                    libc::kill(-(child.id() as libc::pid_t), libc::SIGKILL);
                }
                let _ = child.wait();
                return Err(format!(
                    "it ran longer than {}s and was killed",
                    RUN_LIMIT.as_secs()
                ));
            }
            Ok(None) if stop() => {
                return Err(
                    "stopped waiting for it (a signal came); it goes on by itself".to_owned(),
                );
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => return Err(format!("cannot wait for it: {e}")),
        }
    }
}
